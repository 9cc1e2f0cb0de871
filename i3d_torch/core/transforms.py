"""The model's input convention, defined once, and the helpers that produce it.

**Model input:** a float tensor ``[N, C, T, H, W]`` with values in ``[-1, 1]``.
``C = 3`` is RGB in that order (not OpenCV's BGR); ``C = 2`` is optical flow ``(u, v)``.

* RGB: ``uint8`` pixels ``p`` map to ``p / 255 * 2 - 1``; frames already in ``[0, 1]`` map to ``2x - 1``.
* Flow (DeepMind's TV-L1 recipe): displacement in pixels, clipped to ``[-20, 20]`` and divided by 20.

DeepMind's evaluation preprocessing of a video (what the weights were trained on) is
:class:`VideoClassification`: 25 fps, RGB, short side resized to 256 with bilinear interpolation, centre
crop 224x224, then the value mapping above. Each weights entry returns it from ``weights.transforms()``,
as torchvision's weights do, so ``weights.transforms()(frames)`` turns decoded frames of any size into the
model input without a number written by hand.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import asdict, dataclass
from typing import Union

import numpy as np
import torch

from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Flow values (pixels of displacement) are clipped to +-FLOW_BOUND then divided by it.
FLOW_BOUND = 20.0


def _as_tensor(frames: ArrayLike) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        if frames.dtype == np.uint16:
            raise InputError("16-bit frames: convert to 8-bit (frames >> 8) before preprocessing")
        return torch.from_numpy(np.ascontiguousarray(frames))
    if isinstance(frames, torch.Tensor):
        return frames
    raise InputError(f"expected a numpy array or torch tensor of frames, got {type(frames).__name__}")


def _to_ncthw(x: torch.Tensor, channels: int) -> torch.Tensor:
    """THWC or NTHWC (channels last, as decoders give them) to NCTHW."""
    if x.dim() == 4:
        x = x.unsqueeze(0)
    if x.dim() != 5:
        raise InputError(f"expected frames [T, H, W, C] or [N, T, H, W, C], got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise InputError(f"expected {channels} channels last ([N, T, H, W, {channels}]), got shape {tuple(x.shape)}")
    return x.permute(0, 4, 1, 2, 3)


def rgb_to_model_input(frames: ArrayLike, value_range: str = "uint8") -> torch.Tensor:
    """RGB frames, channels last (``[T, H, W, 3]`` or ``[N, T, H, W, 3]``), to model input.

    ``value_range`` says what the frames hold: ``"uint8"`` (0..255, the dtype must be uint8) or ``"unit"``
    (floats in [0, 1]). Frames must already be RGB, resized and cropped.
    """
    x = _as_tensor(frames)
    if value_range == "uint8":
        if x.dtype != torch.uint8:
            raise InputError(
                f"value_range='uint8' needs uint8 frames, got {x.dtype}; for floats in [0, 1] pass value_range='unit'"
            )
        if isinstance(frames, np.ndarray):
            return _affine_in_numpy(_to_ncthw(x, 3), divisor=127.5, offset=-1.0)
        x = _to_ncthw(x, 3).float().div_(127.5).sub_(1.0)
    elif value_range == "unit":
        if not x.is_floating_point():
            raise InputError(f"value_range='unit' needs floating-point frames in [0, 1], got {x.dtype}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise InputError(
                f"value_range='unit' needs values in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                + (" (looks like 0-255 pixels: pass uint8 frames)" if x.max() > 2 else "")
            )
        if isinstance(frames, np.ndarray):
            return _affine_in_numpy(_to_ncthw(x, 3), divisor=0.5, offset=-1.0)
        x = _to_ncthw(x, 3).float().mul(2.0).sub_(1.0)
    else:
        raise InputError(f"value_range must be 'uint8' or 'unit', got {value_range!r}")
    return x.contiguous()


def _affine_in_numpy(x: torch.Tensor, *, divisor: float, offset: float, bound: float = 0.0) -> torch.Tensor:
    """``clip(x, -bound, bound) / divisor + offset`` in float32, computed by numpy on one thread (``x`` is a
    view of a numpy array), bit for bit what the torch expressions give.

    Why numpy: the pipeline prepares model inputs in its decoding thread while the model runs. Torch ops there
    start a second OpenMP team that competes with the model's on every core; on 2 cores ``features`` ran 1.3x
    slower end to end than with this conversion (docs/predict_features.md, Throughput)."""
    out = np.ascontiguousarray(x.numpy(), dtype=np.float32)  # one pass: gather the NCTHW order and convert
    if bound:
        np.clip(out, -bound, bound, out=out)
    out /= np.float32(divisor)
    if offset:
        out += np.float32(offset)
    return torch.from_numpy(out)


def flow_to_model_input(flow: ArrayLike) -> torch.Tensor:
    """Optical flow in pixels, channels last ``[..., 2]`` (u, v), to model input: clip +-20, divide by 20."""
    x = _as_tensor(flow)
    if not x.is_floating_point():
        raise InputError(f"flow must be floating point (pixels of displacement), got {x.dtype}")
    if isinstance(flow, np.ndarray):
        return _affine_in_numpy(_to_ncthw(x, 2), divisor=FLOW_BOUND, offset=0.0, bound=FLOW_BOUND)
    return _to_ncthw(x, 2).float().clamp(-FLOW_BOUND, FLOW_BOUND).div_(FLOW_BOUND).contiguous()


@dataclass(frozen=True)
class VideoClassification:
    """DeepMind's evaluation preset, bound to a set of weights (``weights.transforms()``).

    Calling it on the frames of one clip, channels last (``[T, H, W, C]``), of any size, resizes the shorter
    side to ``short_side`` (bilinear, as the video reader does), takes the centred ``crop_size`` square and
    maps the values to the model input ``[1, C, T, crop_size, crop_size]``. ``fps`` is the rate the frames
    should be sampled at (the video reader's ``fps=``); a transform on decoded frames cannot resample time.

    Attributes:
        modality: ``"rgb"`` (uint8 frames, or floats in [0, 1] with ``value_range="unit"``) or ``"flow"``
            (float ``(u, v)`` displacement in pixels; resizing scales the displacements with the image).
        fps: frames per second the clip should have.
        short_side: the shorter side after resizing, before the crop.
        crop_size: side of the square crop fed to the network.
        value_range: what RGB frames hold: ``"uint8"`` pixels or ``"unit"`` floats.
        interpolation: ``"bilinear"`` (OpenCV ``INTER_LINEAR``: half-pixel centres, no antialiasing).
    """

    modality: str = "rgb"
    fps: float = FPS
    short_side: int = SHORT_SIDE
    crop_size: int = CROP_SIZE
    value_range: str = "uint8"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.modality not in ("rgb", "flow"):
            raise InputError(f"modality must be 'rgb' or 'flow', got {self.modality!r}")
        if self.interpolation != "bilinear":
            raise InputError(f"interpolation must be 'bilinear', got {self.interpolation!r}")

    def __call__(self, frames: ArrayLike) -> torch.Tensor:
        """Frames ``[T, H, W, C]`` of any size to the model input ``[1, C, T, crop_size, crop_size]``."""
        array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames
        if not isinstance(array, np.ndarray) or array.ndim != 4:
            raise InputError(f"expected the frames of one clip [T, H, W, C], got shape {getattr(array, 'shape', None)}")
        return self.to_model_input(self.resize_and_crop(array))

    def resize_and_crop(self, frames: np.ndarray) -> np.ndarray:
        """The spatial part: short side to ``short_side``, then the centred ``crop_size`` square."""
        from i3d_torch.core.video import center_crop, resize_bilinear

        height, width = frames.shape[1:3]
        if min(height, width) < 1 or len(frames) == 0:
            raise InputError(f"expected at least one frame of at least 1x1 pixels, got shape {frames.shape}")
        short, long = min(height, width), max(height, width)
        scaled_long = max(1, math.floor(long * self.short_side / short + 0.5))
        out_h, out_w = (self.short_side, scaled_long) if height <= width else (scaled_long, self.short_side)
        if self.modality == "flow":
            frames = np.asarray(frames, dtype=np.float32)
        resized = np.stack([resize_bilinear(np.ascontiguousarray(frame), out_h, out_w) for frame in frames])
        if self.modality == "flow" and (out_h, out_w) != (height, width):
            # A displacement measured in pixels grows with the image it is measured on.
            resized = resized * np.array([out_w / width, out_h / height], dtype=np.float32)
        return center_crop(resized, self.crop_size)

    def to_model_input(self, frames: ArrayLike) -> torch.Tensor:
        """The value mapping alone, for frames already resized and cropped: ``[N, C, T, H, W]`` in [-1, 1]."""
        if self.modality == "flow":
            return flow_to_model_input(frames)
        return rgb_to_model_input(frames, self.value_range)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Preprocess(VideoClassification):
    """The value mapping of :class:`VideoClassification` as the call itself, for frames already resized and
    cropped (``weights.preprocess()``; kept for existing callers: new code uses ``weights.transforms()``)."""

    def __call__(self, frames: ArrayLike) -> torch.Tensor:
        """Resized and cropped frames (channels last) to the model input ``[N, C, T, H, W]`` in [-1, 1]."""
        return self.to_model_input(frames)


#: Set by :func:`trusted_input` for the current thread (or asyncio task) only.
_TRUSTED = contextvars.ContextVar("i3d_torch_trusted_input", default=False)


@contextlib.contextmanager
def trusted_input():
    """Within this block, on this thread only, models skip the value-range scan of their inputs.

    The scan (``InceptionI3d.check_values``, :func:`check_model_input`) is for tensors a user builds by hand.
    The pipeline's batches and FVD's clips come from uint8 frames through this module's transforms, so they are
    in [-1, 1] by construction, and the scan's heuristics only raised false alarms on them ("values not mapped
    to [-1, 1]" on a bright or uniform video). A context variable rather than an attribute of the model: a model
    shared between threads (``cached_model``) keeps checking a hand-made tensor of another thread meanwhile."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def input_trusted() -> bool:
    """Whether the current thread is inside :func:`trusted_input`."""
    return _TRUSTED.get()


def check_model_input(x: torch.Tensor, *, source: str = "input") -> list:
    """Problems with the value range of a model input, as a list of one-line warnings (empty if fine).

    Raises on NaN/Inf, which would silently poison every output.
    """
    if x.numel() == 0:  # aminmax() of nothing is a RuntimeError that names no shape
        raise InputError(f"{source}: empty clip of shape {tuple(x.shape)}: an axis has size 0")
    # One pass: the extremes are NaN or infinite exactly when some value is (min and max propagate NaN).
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{source}: {bad} NaN/Inf value(s) in the clip")
    warnings = []
    if hi > 1.0 + 1e-3 or lo < -1.0 - 1e-3:
        cause = "0-255 pixels not rescaled" if hi > 2.0 else "values not mapped to [-1, 1]"
        warnings.append(
            f"{source}: values span [{lo:.3g}, {hi:.3g}], outside the model's [-1, 1] (likely cause: {cause}; "
            f"use i3d_torch.core.transforms.rgb_to_model_input)"
        )
    elif lo >= 0.0 and hi > 0.0 and x.numel() > 1000:
        warnings.append(
            f"{source}: values span [{lo:.3g}, {hi:.3g}], all non-negative: frames in [0, 1] not mapped to "
            f"[-1, 1]? (use i3d_torch.core.transforms.rgb_to_model_input(frames, 'unit'))"
        )
    return warnings
