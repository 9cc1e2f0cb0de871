"""Temporal Winograd F(4, 3) for the 3x3x3 stride-1 convolutions of the CPU inference path.

Why: the 3x3x3 convolutions are 70 % of I3D's 222 GFLOP per 64-frame clip, and oneDNN already runs them at
80-90 % of this CPU's float32 matmul rate, so the only way to make them much faster is to do fewer
multiplications. Winograd's minimal filtering algorithm F(m, r) computes m outputs of an r-tap filter with
m + r - 1 multiplications instead of m * r. Applied along time only, F(4, 3) turns every 4 output frames of
a 3x3x3 convolution (12 frame-by-tap 3x3 products) into 6 spatial 3x3 convolutions of transformed frames
with transformed kernels: half the multiply-adds, each done by oneDNN's 2-D convolution on channels-last
tensors. Applying it along time only keeps the transforms cheap (a small matmul over the frame axis) and
the error small: every transformed value is a combination of at most 6 frames with coefficients in
{0, +-1, +-2, +-4, 5} (inputs) and {1/4, 1/6, 1/12, 1/24, 1} (kernels), so the result differs from a direct
float32 convolution by about twice the direct convolution's own rounding (measured: 4-5e-6 against 2e-6 of
the output's peak, both against float64).

Reference: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016; the
matrices below are their F(4, 3) (interpolation points 0, 1, -1, 2, -2 and infinity).

Layout: the input is channels-last ``[N, C, T, H, W]`` (memory ``N, T, H, W, C``), read as a ``T x (H*W*C)``
matrix per clip. One matmul with a banded ``(6 * tiles) x T`` matrix gives all transformed frames, grouped
by component so that each component is a contiguous channels-last batch of 2-D images. The four components
that feed every output frame accumulate into one zeroed buffer (oneDNN's in-place sum) and one batched matmul
with their ``4 x 4`` part of the output transform gives the output frames in order; the two components that
feed only a tile's first or last frame accumulate straight into that frame, with the ReLU fused.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["OUTPUT_FRAMES", "KERNEL_FRAMES", "winograd_pays_off", "TemporalWinogradConv"]

#: Output frames per tile (m) and temporal taps (r) of F(m, r) = F(4, 3); a tile reads m + r - 1 = 6 frames.
OUTPUT_FRAMES = 4
KERNEL_FRAMES = 3
_COMPONENTS = OUTPUT_FRAMES + KERNEL_FRAMES - 1

# Lavin & Gray's F(4, 3): y = A^T [(G g) * (B^T d)] for a 3-tap kernel g and 6 input frames d.
_INPUT_TRANSFORM = (  # B^T, 6 x 6
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_KERNEL_TRANSFORM = (  # G, 6 x 3
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_OUTPUT_TRANSFORM = (  # A^T, 4 x 6
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
# The component whose output-transform column is all ones: adding the bias to it adds it to every output.
_BIAS_COMPONENT = 1
# Components whose output-transform column has a single 1, in output frame 0 or 3, and the others.
_OWN_FRAME_COMPONENTS = {0: 0, 5: OUTPUT_FRAMES - 1}
_SHARED_COMPONENTS = [1, 2, 3, 4]


def transform_matrices(dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B^T, G, A^T)`` of F(4, 3) as tensors."""
    return (
        torch.tensor(_INPUT_TRANSFORM, dtype=dtype),
        torch.tensor(_KERNEL_TRANSFORM, dtype=dtype),
        torch.tensor(_OUTPUT_TRANSFORM, dtype=dtype),
    )


def winograd_pays_off(frames: int) -> bool:
    """Whether F(4, 3) over ``frames`` output frames needs at most 2/3 of the direct multiplications.

    Direct: 3 spatial convolutions per frame. Winograd: 6 per tile of 4 frames, the last tile padded. Short
    clips lose: at T = 2 one tile costs 6 convolutions for 2 frames, the same as direct, plus the transforms.
    """
    tiles = -(-frames // OUTPUT_FRAMES)
    return frames >= KERNEL_FRAMES and _COMPONENTS * tiles * 3 <= 2 * KERNEL_FRAMES * frames


class TemporalWinogradConv:
    """A 3x3x3, stride-1, TF-SAME convolution + bias + ReLU for one input shape, as F(4, 3) along time.

    Built once per (weights, input shape) by the inference path of :class:`i3d_torch.model.Unit3D` (which
    caches it like the packed weights of the direct path) and called with channels-last float32 input on
    CPU. ``weight`` is ``[C_out, C_in, 3, 3, 3]`` with BatchNorm already folded in; ``bias`` is ``[C_out]``.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], input_shape: Tuple[int, ...]):
        if tuple(weight.shape[2:]) != (3, 3, 3):
            raise ValueError(f"temporal Winograd is for 3x3x3 kernels, got {tuple(weight.shape)}")
        batch, channels, frames, height, width = input_shape
        self.input_shape = tuple(input_shape)
        self.out_channels = weight.shape[0]
        self.tiles = -(-frames // OUTPUT_FRAMES)
        input_transform, kernel_transform, output_transform = transform_matrices()

        # Transformed kernels, one 3x3 spatial kernel bank per component; float64 so the 1/6, 1/24 factors
        # are rounded once.
        components = torch.einsum("kj,oijhw->koihw", kernel_transform, weight.detach().double()).float()
        image_shape = [batch * self.tiles, channels, height, width]
        self.packed = [
            torch.ops.mkldnn._reorder_convolution_weight(
                kernel.contiguous(memory_format=torch.channels_last), [1, 1], [1, 1], [1, 1], 1, image_shape
            )
            for kernel in components
        ]
        self.bias = None if bias is None else bias.detach().float().contiguous()

        # Banded input transform over the frame axis: row (k, tile) reads frames tile*4 - 1 ... tile*4 + 4.
        # Frames outside [0, T) are TF's SAME zero padding (1 before, 1 after, more after for the last tile
        # when T is not a multiple of 4): their columns are simply left out, so no padded copy is made.
        banded = torch.zeros(_COMPONENTS, self.tiles, frames, dtype=torch.float64)
        for tile in range(self.tiles):
            for position in range(_COMPONENTS):
                frame = tile * OUTPUT_FRAMES + position - 1
                if 0 <= frame < frames:
                    banded[:, tile, frame] = input_transform[:, position]
        self.input_matrix = banded.reshape(_COMPONENTS * self.tiles, frames).float()
        self.shared_output_matrix = output_transform[:, _SHARED_COMPONENTS].float()  # 4 frames x 4 components

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = self.input_shape
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"built for input {self.input_shape}, got {tuple(x.shape)}")
        tiles, out_channels = self.tiles, self.out_channels
        clip_rows = x.permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width * channels)
        transformed = torch.matmul(self.input_matrix, clip_rows)  # [N, 6 * tiles, H*W*C]
        if batch > 1:  # component-major, so each component's N * tiles images are one contiguous batch
            transformed = transformed.view(batch, _COMPONENTS, tiles, -1).transpose(0, 1).contiguous()
        transformed = transformed.view(_COMPONENTS, batch * tiles, height, width, channels)

        # Components 1-4 feed every output frame of a tile: their products go through the output transform.
        products = x.new_zeros(len(_SHARED_COMPONENTS), batch * tiles, height, width, out_channels)
        for slot, component in enumerate(_SHARED_COMPONENTS):
            self._accumulate(component, transformed[component], products[slot], relu=False)
        per_tile = products.view(len(_SHARED_COMPONENTS), batch, tiles, -1).permute(1, 2, 0, 3)  # [N, tiles, 4, ...]
        out = torch.matmul(self.shared_output_matrix, per_tile)  # [N, tiles, 4 frames, H*W*C_out]
        # Components 0 and 5 feed only the first and the last frame of a tile (their output-transform columns
        # are (1, 0, 0, 0) and (0, 0, 0, 1)): they accumulate straight into those frames, with the ReLU fused.
        frames_of_tiles = out.view(batch * tiles, OUTPUT_FRAMES, height, width, out_channels)
        for component, frame in _OWN_FRAME_COMPONENTS.items():
            self._accumulate(component, transformed[component], frames_of_tiles[:, frame], relu=True)
        frames_of_tiles[:, 1 : OUTPUT_FRAMES - 1].relu_()
        out = out.view(batch, tiles * OUTPUT_FRAMES, height, width, out_channels)[:, :frames]
        return out.permute(0, 4, 1, 2, 3)

    def _accumulate(self, component: int, images: torch.Tensor, into: torch.Tensor, relu: bool) -> None:
        """``into += conv(images, kernel bank of component)`` (+ bias for the bias component), in place;
        both channels-last ``[images, H, W, C]`` views."""
        torch.ops.mkldnn._convolution_pointwise_(
            into.permute(0, 3, 1, 2),
            images.permute(0, 3, 1, 2),
            self.packed[component],
            self.bias if component == _BIAS_COMPONENT else None,
            [1, 1],
            [1, 1],
            [1, 1],
            1,
            "add",
            None,
            "relu" if relu else None,
            [],
            None,
        )
