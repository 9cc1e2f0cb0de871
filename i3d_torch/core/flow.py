"""TV-L1 optical flow, computed the way DeepMind computed the input of I3D's flow stream.

DeepMind's recipe (kinetics-i3d README): frames at 25 fps, resized so the short side is 256, converted to
grayscale; TV-L1 optical flow between consecutive frames (OpenCV's Dual TV-L1, default parameters);
displacements clipped to [-20, 20] pixels and divided by 20 (that last step is
:func:`i3d_torch.core.transforms.flow_to_model_input`); then the same centre crop as the RGB stream.

``T`` frames give ``T - 1`` flow fields: flow ``i`` is the motion from frame ``i`` to frame ``i + 1``.

TV-L1 is slow on CPU: about 1-4 s per 256x340 frame pair on one core, i.e. minutes per 10-second clip.
Use it on few videos, or precompute flow once and keep it.
"""

from __future__ import annotations

import cv2
import numpy as np

from i3d_torch.core.errors import InputError

__all__ = ["TVL1Flow", "video_flow"]


class TVL1Flow:
    """Flow between consecutive RGB frames with OpenCV's Dual TV-L1 (default parameters, as DeepMind).

    Keeps the previous grayscale frame, so feeding a stream frame by frame computes each flow once::

        tvl1 = TVL1Flow()
        for frame in frames:          # uint8 [H, W, 3] RGB
            flow = tvl1.push(frame)   # None for the first frame, then float32 [H, W, 2] (u, v) in pixels
    """

    def __init__(self):
        if not hasattr(cv2, "optflow"):
            raise InputError(
                "TV-L1 optical flow needs OpenCV's contrib modules (cv2.optflow): "
                "pip install opencv-contrib-python-headless"
            )
        self._algorithm = cv2.optflow.DualTVL1OpticalFlow_create()
        self._previous = None

    def reset(self) -> None:
        """Forget the previous frame (call between videos)."""
        self._previous = None

    def push(self, frame: np.ndarray):
        """Add the next RGB frame; returns the flow from the previous frame to it (None for the first)."""
        gray = _to_gray(frame)
        previous, self._previous = self._previous, gray
        if previous is None:
            return None
        if previous.shape != gray.shape:
            raise InputError(f"frame size changed mid-video: {previous.shape} then {gray.shape}")
        return self._algorithm.calc(previous, gray, None)  # H x W x 2 float32: (u, v) displacement


def _to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"TV-L1 flow needs uint8 RGB frames [H, W, 3], got {frame.dtype} {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def video_flow(frames: np.ndarray) -> np.ndarray:
    """TV-L1 flow of a clip: uint8 RGB ``[T, H, W, 3]`` to float32 ``[T - 1, H, W, 2]`` pixels (unclipped)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) < 2:
        raise InputError(f"flow needs at least 2 frames [T, H, W, 3], got shape {frames.shape}")
    tvl1 = TVL1Flow()
    tvl1.push(frames[0])
    return np.stack([tvl1.push(frame) for frame in frames[1:]])
