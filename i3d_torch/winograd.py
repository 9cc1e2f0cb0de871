"""Temporal Winograd for the 3x3x3 stride-1 convolutions and the 7x7x7 stride-2 stem of the CPU inference path.

Why: the 3x3x3 convolutions are 70 % of I3D's 222 GFLOP per 64-frame clip and the stem another 24 %, and
oneDNN already runs them at 70-90 % of these CPUs' float32 matmul rate, so the only way to make them much
faster is to do fewer multiplications. Winograd's minimal filtering algorithm F(m, r) computes m outputs of
an r-tap filter with m + r - 1 multiplications instead of m * r. Applied along time only, it turns the
frame-by-tap spatial products of a tile of m output frames into 6 spatial convolutions of transformed
frames with transformed kernels, each done by oneDNN's 2-D convolution on channels-last tensors:

* 3x3x3, stride 1: F(4, 3), 6 instead of 12 spatial 3x3 convolutions per 4 output frames (half).
* 7x7x7, stride 2 in time (the stem): frames are first paired, even and odd, into twice the channels, which
  makes the 7 taps at stride 2 a 4-tap stride-1 filter over 6 channels (the 8th tap is zero); then F(3, 4),
  6 instead of 12 spatial 7x7 convolutions of 6 channels per 3 output frames (the same work as 24 of the
  original 3 channels, against 21 direct: 41 % fewer multiplications at 32 output frames, padding included).

Applying it along time only keeps the transforms cheap (a small matmul over the frame axis) and the error
small: both use the interpolation points 0, +-1, +-2 and infinity, so every transformed value is a
combination of at most 6 frames with coefficients in {0, +-1, +-2, +-4, 5} (inputs) and kernel factors
1/4, 1/6, 1/12, 1/24, 1/3, 1, and the result differs from a direct float32 convolution by about twice the
direct convolution's own rounding (measured: 4-5e-6 against 2e-6 of the output's peak for F(4, 3),
1.7e-6 against 1.3e-6 for the stem, both against float64).

Reference: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016; the input
transform below is theirs for those points, and the kernel and output transforms follow from the points
by their Toom-Cook construction (for F(4, 3) these are exactly their matrices).

Layout: the input is channels-last ``[N, C, T, H, W]`` (memory ``N, T, H, W, C``), read as a ``T x (H*W*C)``
matrix per clip. One matmul with a banded ``(6 * tiles) x T`` matrix gives all transformed frames, grouped
by component so that each component is a contiguous channels-last batch of 2-D images. The four components
that feed every output frame accumulate into one zeroed buffer (oneDNN's in-place sum) and one batched matmul
with their ``m x 4`` part of the output transform gives the output frames in order; the two components that
feed only a tile's first or last frame accumulate straight into that frame, with the ReLU fused.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["COMPONENTS", "transform_matrices", "temporal_winograd_applies", "TemporalWinogradConv"]

#: Transformed frames (and spatial products) per tile: m + r - 1 = 6 for both F(4, 3) and F(3, 4).
COMPONENTS = 6
#: The finite interpolation points; the sixth point is infinity.
_POINTS = (0, 1, -1, 2, -2)

# Lavin & Gray's input transform B^T (6 x 6) for those points; it depends on the points only, not on m or r.
_INPUT_TRANSFORM = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
# The component of point 1, whose output-transform column is all ones: adding the bias to it adds it to every
# output. Points 0 and infinity feed only a tile's first and last output frame; the other four feed all.
_BIAS_COMPONENT = 1
_FIRST_FRAME_COMPONENT, _LAST_FRAME_COMPONENT = 0, COMPONENTS - 1
_SHARED_COMPONENTS = [1, 2, 3, 4]


def transform_matrices(
    taps: int, dtype: torch.dtype = torch.float64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B^T, G, A^T)`` of F(m, r) with r = ``taps`` and m = 7 - r, such that the m outputs of the
    correlation ``y[i] = sum_j g[j] d[i + j]`` of 6 input frames ``d`` are ``A^T [(G g) * (B^T d)]``.

    Toom-Cook: G[k, j] = p_k^j / prod_{l != k} (p_k - p_l) and A^T[i, k] = p_k^i for the finite points p_k;
    the point at infinity takes the last tap alone (G) into the last output alone (A^T).
    """
    outputs = COMPONENTS + 1 - taps
    if not 2 <= taps <= 5:
        raise ValueError(f"6-point temporal Winograd takes 2 to 5 taps, got {taps}")
    kernel = torch.zeros(COMPONENTS, taps, dtype=torch.float64)
    output = torch.zeros(outputs, COMPONENTS, dtype=torch.float64)
    for k, point in enumerate(_POINTS):
        factor = 1.0
        for other in _POINTS:
            if other != point:
                factor *= point - other
        for j in range(taps):
            kernel[k, j] = point**j / factor
        for i in range(outputs):
            output[i, k] = point**i
    kernel[COMPONENTS - 1, taps - 1] = 1.0
    output[outputs - 1, COMPONENTS - 1] = 1.0
    return torch.tensor(_INPUT_TRANSFORM, dtype=dtype), kernel.to(dtype), output.to(dtype)


def _temporal_tiling(kernel_frames: int, stride: int, padding: int, frames: int) -> Tuple[int, int, int, int]:
    """``(taps, pairing, out_frames, tiles)``: the taps of the stride-1 temporal filter that Winograd computes
    once ``pairing`` (= the time stride) frames are put side by side in the channels, the conv's output
    frames, and the tiles of ``7 - taps`` output frames that cover them."""
    taps = -(-kernel_frames // stride)
    out_frames = (frames + 2 * padding - kernel_frames) // stride + 1
    return taps, stride, out_frames, -(-out_frames // (COMPONENTS + 1 - taps))


#: (temporal kernel, temporal stride) -> the largest fraction of the direct multiplications at which Winograd
#: is used. The stem's transforms move more memory per multiplication saved (its products have 6 input
#: channels), so it needs a larger saving: at 8 output frames (0.64 of direct) the 16-frame forward was no
#: faster (416 against 409 ms), at 32 (0.59) the 64-frame forward was 7.6 % faster.
_MAX_WORK = {(3, 1): 2 / 3, (7, 2): 0.6}


def temporal_winograd_applies(
    kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], frames: int
) -> bool:
    """Whether a conv of this kernel, stride and implicit padding over ``frames`` input frames takes Winograd:
    3x3x3 at stride 1 (F(4, 3)) or a 7-frame kernel at time stride 2 without implicit time padding (the stem,
    F(3, 4) on paired frames), where it needs at most :data:`_MAX_WORK` of the direct multiplications.

    Short clips lose: one tile always costs 6 spatial products, however few of its output frames exist (at
    T = 2 with 3x3x3, as many as direct, plus the transforms).
    """
    kernel_frames, time_stride, time_padding = kernel[0], stride[0], padding[0]
    max_work = _MAX_WORK.get((kernel_frames, time_stride))
    if max_work is None or (time_stride == 2 and time_padding != 0):
        return False
    _, pairing, out_frames, tiles = _temporal_tiling(kernel_frames, time_stride, time_padding, frames)
    if out_frames < 1:
        return False
    # Multiplications per input channel and output pixel: 6 per tile over the paired channels, against one
    # per tap and output frame (a small tolerance so that exactly 2/3 counts as 2/3).
    return COMPONENTS * tiles * pairing <= max_work * kernel_frames * out_frames + 1e-9


class TemporalWinogradConv:
    """A convolution + bias + ReLU for one input shape, as temporal Winograd (see the module docstring).

    Built once per (weights, input shape) by the inference path of :class:`i3d_torch.model.Unit3D` (which
    caches it like the packed weights of the direct path) and called with channels-last float32 input on
    CPU. ``weight`` is ``[C_out, C_in, kT, kH, kW]`` with BatchNorm already folded in; ``bias`` is ``[C_out]``;
    ``stride`` and ``padding`` (implicit zero padding, per axis) are those of the convolution; see
    :func:`temporal_winograd_applies` for the ones it takes.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        input_shape: Tuple[int, ...],
        stride: Sequence[int] = (1, 1, 1),
        padding: Sequence[int] = (1, 1, 1),
    ):
        batch, channels, frames, height, width = input_shape
        if not temporal_winograd_applies(weight.shape[2:], stride, padding, frames):
            raise ValueError(
                f"temporal Winograd does not take kernel {tuple(weight.shape[2:])}, stride {tuple(stride)}, "
                f"padding {tuple(padding)} over {frames} frames"
            )
        out_channels, _, kernel_frames, kernel_height, kernel_width = weight.shape
        self.input_shape = tuple(input_shape)
        self.out_channels = out_channels
        self.frame_padding = padding[0]
        self.spatial_stride, self.spatial_padding = list(stride[1:]), list(padding[1:])
        taps, self.pairing, self.out_frames, self.tiles = _temporal_tiling(kernel_frames, stride[0], padding[0], frames)
        self.tile_frames = COMPONENTS + 1 - taps
        self.filter_frames = -(-frames // self.pairing)  # frames of the (paired) input the filter runs over
        self.out_height = (height + 2 * padding[1] - kernel_height) // stride[1] + 1
        self.out_width = (width + 2 * padding[2] - kernel_width) // stride[2] + 1
        input_transform, kernel_transform, output_transform = transform_matrices(taps)

        # Paired frames: tap j of the filter over frame pairs is original taps 2j (first C channels) and
        # 2j + 1 (next C channels) of the kernel; taps past the kernel's end are zero.
        kernel = weight.detach().double()
        paired = torch.zeros(
            out_channels, self.pairing, channels, taps, kernel_height, kernel_width, dtype=torch.float64
        )
        for tap in range(taps):
            for half in range(self.pairing):
                if tap * self.pairing + half < kernel_frames:
                    paired[:, half, :, tap] = kernel[:, :, tap * self.pairing + half]
        paired = paired.reshape(out_channels, self.pairing * channels, taps, kernel_height, kernel_width)
        # Transformed kernels, one spatial kernel bank per component; float64 so the factors are rounded once.
        components = torch.einsum("kj,oijhw->koihw", kernel_transform, paired).float()
        image_shape = [batch * self.tiles, self.pairing * channels, height, width]
        self.packed = [
            torch.ops.mkldnn._reorder_convolution_weight(
                bank.contiguous(memory_format=torch.channels_last), self.spatial_padding, self.spatial_stride,
                [1, 1], 1, image_shape,
            )
            for bank in components
        ]
        self.bias = None if bias is None else bias.detach().float().contiguous()

        # Banded input transform over the (paired) frame axis: row (k, tile) reads frames from
        # tile * m - padding on. Frames outside the clip are the zero padding: their columns are simply left
        # out, so no padded copy is made.
        banded = torch.zeros(COMPONENTS, self.tiles, self.filter_frames, dtype=torch.float64)
        for tile in range(self.tiles):
            for position in range(COMPONENTS):
                frame = tile * self.tile_frames + position - self.frame_padding
                if 0 <= frame < self.filter_frames:
                    banded[:, tile, frame] = input_transform[:, position]
        self.input_matrix = banded.reshape(COMPONENTS * self.tiles, self.filter_frames).float()
        self.shared_output_matrix = output_transform[:, _SHARED_COMPONENTS].float()  # m frames x 4 components

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = self.input_shape
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"built for input {self.input_shape}, got {tuple(x.shape)}")
        tiles, out_channels, tile_frames = self.tiles, self.out_channels, self.tile_frames
        out_height, out_width = self.out_height, self.out_width
        clip = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C: a view of the channels-last memory
        if self.pairing > 1:
            clip = self._paired_frames(clip)
        clip_rows = clip.reshape(batch, self.filter_frames, -1)
        transformed = torch.matmul(self.input_matrix, clip_rows)  # [N, 6 * tiles, H*W*C']
        if batch > 1:  # component-major, so each component's N * tiles images are one contiguous batch
            transformed = transformed.view(batch, COMPONENTS, tiles, -1).transpose(0, 1).contiguous()
        transformed = transformed.view(COMPONENTS, batch * tiles, height, width, -1)
        del clip, clip_rows  # the stem's paired frames (44 MB at 64 frames) are not needed past this point

        # The four shared components' products go through the output transform.
        products = x.new_zeros(len(_SHARED_COMPONENTS), batch * tiles, out_height, out_width, out_channels)
        for slot, component in enumerate(_SHARED_COMPONENTS):
            self._accumulate(component, transformed[component], products[slot], relu=False)
        per_tile = products.view(len(_SHARED_COMPONENTS), batch, tiles, -1).permute(1, 2, 0, 3)  # [N, tiles, 4, ...]
        out = torch.matmul(self.shared_output_matrix, per_tile)  # [N, tiles, m frames, H*W*C_out]
        # The first and last components feed only a tile's first and last frame (their output-transform
        # columns are (1, 0, ..., 0) and (0, ..., 0, 1)): they accumulate straight into it, with the ReLU fused.
        frames_of_tiles = out.view(batch * tiles, tile_frames, out_height, out_width, out_channels)
        self._accumulate(_FIRST_FRAME_COMPONENT, transformed[_FIRST_FRAME_COMPONENT], frames_of_tiles[:, 0], True)
        self._accumulate(
            _LAST_FRAME_COMPONENT, transformed[_LAST_FRAME_COMPONENT], frames_of_tiles[:, tile_frames - 1], True
        )
        frames_of_tiles[:, 1 : tile_frames - 1].relu_()
        out = out.view(batch, tiles * tile_frames, out_height, out_width, out_channels)[:, : self.out_frames]
        return out.permute(0, 4, 1, 2, 3)

    def _paired_frames(self, clip: torch.Tensor) -> torch.Tensor:
        """``[N, T, H, W, C]`` -> ``[N, ceil(T / 2), H, W, 2 * C]``: frames 2s and 2s + 1 side by side in the
        channels (a missing last odd frame is zero), in one copy."""
        batch, frames, height, width, channels = clip.shape
        paired = clip.new_empty(batch, self.filter_frames, height, width, self.pairing, channels)
        for half in range(self.pairing):
            source = clip[:, half :: self.pairing]
            paired[:, : source.shape[1], :, :, half].copy_(source)
            paired[:, source.shape[1] :, :, :, half].zero_()
        return paired

    def _accumulate(self, component: int, images: torch.Tensor, into: torch.Tensor, relu: bool) -> None:
        """``into += conv(images, kernel bank of component)`` (+ bias for the bias component), in place;
        both channels-last ``[images, H, W, C]`` views."""
        torch.ops.mkldnn._convolution_pointwise_(
            into.permute(0, 3, 1, 2),
            images.permute(0, 3, 1, 2),
            self.packed[component],
            self.bias if component == _BIAS_COMPONENT else None,
            self.spatial_padding,
            self.spatial_stride,
            [1, 1],
            1,
            "add",
            None,
            "relu" if relu else None,
            [],
            None,
        )
