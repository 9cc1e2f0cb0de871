"""Spatial views of a window: the crop modes of ``predict`` and ``features``, ten crops included.

``center``, ``three`` and ``full`` are :func:`i3d_torch.core.video.crops`. ``ten`` is the ten-crop test of
image and video classification as localization and anomaly-detection feature sets use it (RTFM's
``(T, 10, 2048)`` features): the four corners and the centre of the frame, then the same five crops of the
horizontally mirrored frame, in the order torchvision's ``TenCrop`` gives them (pytorch/vision
``torchvision/transforms/functional.py`` at b6ca3917, ``ten_crop``: ``five_crop(img)`` then
``five_crop(hflip(img))``),
so crop ``5 + k`` is the mirror image of crop ``k`` with left and right corners swapped.

Mirroring optical flow is more than reversing the columns: a displacement to the right becomes one to the
left, so the horizontal component ``u`` changes sign (the vertical ``v`` does not). The centre offset is
``(size_difference) // 2`` as in ``center`` mode, so crop 4 of ``ten`` equals the ``center`` crop.
"""

from __future__ import annotations

from typing import List

import numpy as np

from i3d_torch.core.errors import InputError

__all__ = ["CROP_COUNTS", "TEN_CROP_NAMES", "crop_views", "mirror"]

#: How many views each crop mode gives.
CROP_COUNTS = {"center": 1, "three": 3, "full": 1, "ten": 10}
#: The views of ``ten``, in output order (recorded in the features manifest).
TEN_CROP_NAMES = (
    "top_left",
    "top_right",
    "bottom_left",
    "bottom_right",
    "center",
    "mirrored_top_left",
    "mirrored_top_right",
    "mirrored_bottom_left",
    "mirrored_bottom_right",
    "mirrored_center",
)


def mirror(clip: np.ndarray, flow: bool = False) -> np.ndarray:
    """``clip [T, H, W, C]`` mirrored left to right; for flow (``C == 2``, ``(u, v)``) ``u`` changes sign."""
    flipped = clip[:, :, ::-1]
    if flow:
        flipped = flipped * np.array([-1, 1], dtype=clip.dtype)
    return np.ascontiguousarray(flipped)


def _five(clip: np.ndarray, size: int) -> List[np.ndarray]:
    height, width = clip.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    return [np.ascontiguousarray(clip[:, y : y + size, x : x + size]) for y, x in corners]


def crop_views(clip: np.ndarray, mode: str, size: int, flow: bool = False) -> List[np.ndarray]:
    """The views of ``clip [T, H, W, C]`` for crop ``mode`` (see the module docstring); ``flow`` says the
    channels are ``(u, v)`` displacements, which mirroring must negate."""
    if mode != "ten":
        from i3d_torch.core.video import crops

        return crops(clip, mode=mode, size=size)
    if clip.ndim != 4:
        raise InputError(f"expected a clip [T, H, W, C], got shape {tuple(clip.shape)}")
    height, width = clip.shape[1:3]
    if height < size or width < size:
        raise InputError(
            f"frames {width}x{height} are smaller than the {size}x{size} crop of --crop ten; use a smaller "
            f"--crop-size or a larger --short-side"
        )
    return _five(clip, size) + _five(mirror(clip, flow), size)
