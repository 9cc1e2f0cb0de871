"""FVD's preprocessing, bit for bit as the reference does it: every frame, whatever its size and aspect, resized
to 224x224 with TF1's ``tf.image.resize_bilinear`` (``align_corners=False, half_pixel_centers=False``: source
coordinate ``i * in / out``, not the half-pixel convention of TF2's ``tf.image.resize`` or of
``F.interpolate``), then pixel values ``x`` in 0..255 mapped to ``2 * x / 255 - 1`` in the reference's float32
order. Only tensor operations: the checks on what users pass live with the video sets.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

#: Frame size the reference resizes every frame to: the whole frame, no crop, aspect not kept. This is the
#: FVD reference's own resize, not DeepMind's classification preset (short side 256, then a 224 crop), so it
#: is not :data:`i3d_torch.core.defaults.CROP_SIZE` even though the number is the same.
FVD_SIZE: Tuple[int, int] = (224, 224)

#: The preprocessing and embedding, recorded in every statistics cache; a cache made otherwise is refused.
PREPROCESSING: Dict[str, Any] = {
    "resize": "tf1_resize_bilinear",
    "align_corners": False,
    "half_pixel_centers": False,
    "size": list(FVD_SIZE),
    "values": "2*x/255-1",
    "embedding": "Logits averaged over time",
    "temporal_resampling": "none",
}


def _tf1_interpolation(in_size: int, out_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (lower, upper) and weight of the upper one for each output row, as TF1 computes them.

    TF1 without half-pixel centres maps output index i to source coordinate ``i * (in / out)`` in float32,
    interpolates between floor and ceil of it, and clamps at the last row.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(source)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    weight = (source - floor).astype(np.float32)
    return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(weight)


def resize_bilinear_tf1(images: torch.Tensor, size: Sequence[int] = FVD_SIZE) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(images, size)`` (align_corners=False, half_pixel_centers=False).

    ``images``: float ``[..., H, W, C]`` (channels last, any leading axes). Returns float32
    ``[..., size[0], size[1], C]``, equal to TF's output bit for bit (same float32 operations in the same
    order: interpolate along x on the two source rows, then along y). No antialiasing, as in TF.
    """
    x = images.float()
    height, width = int(x.shape[-3]), int(x.shape[-2])
    y_lower, y_upper, y_weight = (t.to(x.device) for t in _tf1_interpolation(height, int(size[0])))
    x_lower, x_upper, x_weight = (t.to(x.device) for t in _tf1_interpolation(width, int(size[1])))
    top_rows = x.index_select(-3, y_lower)
    bottom_rows = x.index_select(-3, y_upper)
    x_weight = x_weight[:, None]  # broadcast over channels
    top = top_rows.index_select(-2, x_lower)
    top = top + (top_rows.index_select(-2, x_upper) - top) * x_weight
    bottom = bottom_rows.index_select(-2, x_lower)
    bottom = bottom + (bottom_rows.index_select(-2, x_upper) - bottom) * x_weight
    return top + (bottom - top) * y_weight[:, None, None]


def pixels_0_255(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels, or floats in [0, 1], as float32 pixel values in 0..255 (what the reference takes)."""
    if frames.dtype == torch.uint8:
        return frames.float()
    return frames.float() * 255.0


def model_input_from_resized(resized: torch.Tensor) -> torch.Tensor:
    """Resized frames ``[N, T, 224, 224, 3]`` in 0..255 to ``[N, 3, T, 224, 224]`` in [-1, 1]."""
    # The reference's float32 operations, in its order: 2 * x, / 255, - 1.
    scaled = resized.mul(2.0).div_(255.0).sub_(1.0)
    return scaled.permute(0, 4, 1, 2, 3).contiguous()
