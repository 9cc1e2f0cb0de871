"""Temporal Winograd for the 3x3x3 stride-1 convolutions and the 7x7x7 stride-2 stem of the CPU inference path.

Why: the 3x3x3 convolutions are 70 % of I3D's 222 GFLOP per 64-frame clip and the stem another 24 %, and
oneDNN already runs them at 70-95 % of these CPUs' float32 matmul rate, so the only way to make them much
faster is to do fewer multiplications. Winograd's minimal filtering algorithm F(m, r) computes m outputs of
an r-tap filter with m + r - 1 multiplications instead of m * r. Applied along time only, it turns the
frame-by-tap spatial products of a tile of m output frames into m + r - 1 spatial convolutions of
transformed frames ("components") with transformed kernels, each done by oneDNN's 2-D convolution on
channels-last tensors:

* 3x3x3, stride 1: F(4, 3), 6 instead of 12 spatial 3x3 convolutions per 4 output frames (half).
* 7x7x7, stride 2 in time (the stem): frames are first paired, even and odd, into twice the channels, which
  makes the 7 taps at stride 2 a 4-tap stride-1 filter over 6 channels (the 8th tap is zero); then F(4, 4),
  7 instead of 16 spatial 7x7 convolutions of 6 channels per 4 output frames (the work of 14 of the original
  3-channel ones against 28 direct: half the multiplications at 8 or 32 output frames).

Applying it along time only keeps the transforms cheap (a small matmul over the frame axis) and the error
small. F(4, 3) uses the interpolation points 0, +-1, +-2 and infinity, so every transformed frame combines
at most 4 frames with coefficients in {+-1, +-2, +-4, -5} and the kernel factors are 1/4, 1/6, 1/12, 1/24;
the stem adds the point 1/2 (coefficients up to 6 in halves). The result differs from a direct float32
convolution by about twice the direct convolution's own rounding (measured against float64: 3-5e-6 against
2e-6 of the output's peak for F(4, 3), 2.0e-6 against 0.9e-6 for the stem). Larger tiles would save more but
need points such as +-3 or +-1/4: F(8, 3) measured 4.6-6.4e-5 of the peak, beyond the project's 2e-5 bound.

Reference: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016. The matrices
are built from the points by the Toom-Cook construction (:func:`transform_matrices`); for F(4, 3) they are
exactly Lavin and Gray's.

Layout: the input is channels-last ``[N, C, T, H, W]`` (memory ``N, T, H, W, C``), read as a ``T x (H*W*C)``
matrix per clip. One matmul with a banded ``(components * tiles) x T`` matrix gives all transformed frames,
grouped by component so that each component is a contiguous channels-last batch of 2-D images. The
components that feed every output frame accumulate into one zeroed buffer (oneDNN's in-place sum; it has no
overwriting form) and one batched matmul with their part of the output transform gives the output frames in
order; the two components that feed only a tile's first or last frame (points 0 and infinity) accumulate
straight into that frame, with the ReLU fused. The stem's input is zero-padded (TF SAME) in the same copy
that pairs its frames.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["transform_matrices", "temporal_winograd_applies", "TemporalWinogradConv"]

#: The finite interpolation points of each filter's Winograd algorithm; infinity is always the last point, so
#: a tile has ``len(points) + 1`` components (transformed frames, spatial products). Point 0 comes first and
#: point 1 second: see ``_FIRST_FRAME_COMPONENT`` and ``_BIAS_COMPONENT``.
F43_POINTS = (0, 1, -1, 2, -2)
F44_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2))

# The component of point 0, whose output-transform column is (1, 0, ..., 0), feeds only a tile's first output
# frame; the last (infinity) only its last. The component of point 1 has an all-ones column: adding the bias to
# it adds it to every output frame. All others feed every output frame.
_FIRST_FRAME_COMPONENT, _BIAS_COMPONENT = 0, 1


def _exact_inverse(matrix: List[List[Fraction]]) -> List[List[Fraction]]:
    """Gauss-Jordan in rational arithmetic, so the transforms carry no rounding of their own."""
    size = len(matrix)
    rows = [list(row) + [Fraction(int(i == j)) for j in range(size)] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = next(r for r in range(col, size) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [value / rows[col][col] for value in rows[col]]
        for r in range(size):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [value - factor * lead for value, lead in zip(rows[r], rows[col])]
    return [row[size:] for row in rows]


def transform_matrices(
    taps: int, points: Sequence = F43_POINTS, dtype: torch.dtype = torch.float64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B^T, G, A^T)`` of F(m, r) with r = ``taps`` over the finite ``points`` and infinity (n = len(points) + 1
    components, m = n + 1 - r outputs), such that the m outputs of the correlation ``y[i] = sum_j g[j] d[i + j]``
    of n input frames ``d`` are ``A^T [(G g) * (B^T d)]``.

    Toom-Cook, by the transposition principle: a correlation is the transpose of a linear convolution, which
    evaluates both factors at the points, multiplies and interpolates. So A^T[i, k] = p_k^i (evaluation of the
    output side), G[k, j] = p_k^j / s_k with s_k = prod_{l != k} (p_k - p_l) (evaluation of the kernel, with
    the Lagrange denominators), and B^T = diag(s) V^-T with V the n x n Vandermonde matrix of the points
    (interpolation); the point at infinity takes the last tap alone into the last output alone. Computed in
    exact rationals: for the points 0, +-1, +-2 these are Lavin & Gray's matrices.
    """
    points = [Fraction(p) for p in points]
    components = len(points) + 1
    outputs = components + 1 - taps
    if len(set(points)) != len(points) or points[:2] != [0, 1]:
        raise ValueError(f"points must be distinct and start with 0, 1; got {points}")
    if not 2 <= taps <= components - 1:
        raise ValueError(f"{components}-point temporal Winograd takes 2 to {components - 1} taps, got {taps}")
    scales = []
    for point in points:
        scale = Fraction(1)
        for other in points:
            if other != point:
                scale *= point - other
        scales.append(scale)
    scales.append(Fraction(1))
    vandermonde = [[p**j for j in range(components)] for p in points] + [[Fraction(0)] * (components - 1) + [Fraction(1)]]
    inverse = _exact_inverse(vandermonde)
    input_transform = [[scales[k] * inverse[l][k] for l in range(components)] for k in range(components)]
    kernel = [[p**j / s for j in range(taps)] for p, s in zip(points, scales)] + [[0] * (taps - 1) + [1]]
    output = [[p**i for p in points] + [int(i == outputs - 1)] for i in range(outputs)]

    def tensor(rows):
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=dtype)

    return tensor(input_transform), tensor(kernel), tensor(output)


#: (temporal kernel, temporal stride) -> the interpolation points of its Winograd algorithm and the largest
#: fraction of the direct multiplications at which it is used. The stem's transforms move more memory per
#: multiplication saved (its products have 6 input channels), so it needs a larger saving.
_ALGORITHMS: Dict[Tuple[int, int], Tuple[Sequence, float]] = {
    (3, 1): (F43_POINTS, 2 / 3),
    (7, 2): (F44_POINTS, 0.6),
}


def _temporal_tiling(
    kernel_frames: int, stride: int, padding: int, frames: int, components: int
) -> Tuple[int, int, int, int]:
    """``(taps, pairing, out_frames, tiles)``: the taps of the stride-1 temporal filter that Winograd computes
    once ``pairing`` (= the time stride) frames are put side by side in the channels, the conv's output
    frames, and the tiles of ``components + 1 - taps`` output frames that cover them."""
    taps = -(-kernel_frames // stride)
    out_frames = (frames + 2 * padding - kernel_frames) // stride + 1
    return taps, stride, out_frames, -(-out_frames // (components + 1 - taps))


def temporal_winograd_applies(
    kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], frames: int
) -> bool:
    """Whether a conv of this kernel, stride and implicit padding over ``frames`` input frames takes Winograd:
    3x3x3 at stride 1 (F(4, 3)) or a 7-frame kernel at time stride 2 without implicit time padding (the stem,
    F(4, 4) on paired frames), where it needs at most the fraction of the direct multiplications that
    :data:`_ALGORITHMS` gives.

    Short clips lose: one tile always costs all its spatial products, however few of its output frames exist
    (at T = 2 with 3x3x3, as many as direct, plus the transforms).
    """
    kernel_frames, time_stride, time_padding = kernel[0], stride[0], padding[0]
    algorithm = _ALGORITHMS.get((kernel_frames, time_stride))
    if algorithm is None or (time_stride == 2 and time_padding != 0):
        return False
    points, max_work = algorithm
    components = len(points) + 1
    _, pairing, out_frames, tiles = _temporal_tiling(kernel_frames, time_stride, time_padding, frames, components)
    if out_frames < 1:
        return False
    # Multiplications per input channel and output pixel: one per component and tile over the paired channels,
    # against one per tap and output frame (a small tolerance so that exactly 2/3 counts as 2/3).
    return components * tiles * pairing <= max_work * kernel_frames * out_frames + 1e-9


class TemporalWinogradConv:
    """A convolution + bias + ReLU for one input shape, as temporal Winograd (see the module docstring).

    Built once per (weights, input shape) by the inference path of :class:`i3d_torch.model.Unit3D` (which
    caches it like the packed weights of the direct path) and called with channels-last float32 input on
    CPU. ``weight`` is ``[C_out, C_in, kT, kH, kW]`` with BatchNorm already folded in; ``bias`` is ``[C_out]``;
    ``input_shape`` is the shape of the input the convolution sees, explicit padding included; ``stride`` and
    ``padding`` (implicit zero padding, per axis) are those of the convolution; see
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
        points, _ = _ALGORITHMS[(kernel_frames, stride[0])]
        self.components = components = len(points) + 1
        self.input_shape = tuple(input_shape)
        self.out_channels = out_channels
        self.frame_padding = padding[0]
        self.spatial_stride, self.spatial_padding = list(stride[1:]), list(padding[1:])
        taps, self.pairing, self.out_frames, self.tiles = _temporal_tiling(
            kernel_frames, stride[0], padding[0], frames, components
        )
        self.tile_frames = components + 1 - taps
        self.filter_frames = -(-frames // self.pairing)  # frames of the (paired) input the filter runs over
        self.out_height = (height + 2 * padding[1] - kernel_height) // stride[1] + 1
        self.out_width = (width + 2 * padding[2] - kernel_width) // stride[2] + 1
        input_transform, kernel_transform, output_transform = transform_matrices(taps, points)

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
        banks = torch.einsum("kj,oijhw->koihw", kernel_transform, paired).float()
        image_shape = [batch * self.tiles, self.pairing * channels, height, width]
        self.packed = [
            torch.ops.mkldnn._reorder_convolution_weight(
                bank.contiguous(memory_format=torch.channels_last), self.spatial_padding, self.spatial_stride,
                [1, 1], 1, image_shape,
            )
            for bank in banks
        ]
        self.bias = None if bias is None else bias.detach().float().contiguous()

        # Banded input transform over the (paired) frame axis: row (k, tile) reads frames from
        # tile * m - padding on. Frames outside the clip are the zero padding: their columns are simply left
        # out, so no padded copy is made.
        banded = torch.zeros(components, self.tiles, self.filter_frames, dtype=torch.float64)
        for tile in range(self.tiles):
            for position in range(components):
                frame = tile * self.tile_frames + position - self.frame_padding
                if 0 <= frame < self.filter_frames:
                    banded[:, tile, frame] = input_transform[:, position]
        self.input_matrix = banded.reshape(components * self.tiles, self.filter_frames).float()
        # Every component but the first and the last feeds every output frame of its tile.
        self.shared_components = list(range(1, components - 1))
        self.shared_output_matrix = output_transform[:, self.shared_components].float()  # m frames x shared

    def __call__(
        self, x: torch.Tensor, explicit_padding: Optional[Sequence[Tuple[int, int]]] = None
    ) -> torch.Tensor:
        """The convolution of ``x``: channels-last of the built input shape, or, with ``explicit_padding``
        ((before, after) zeros per axis T, H, W: the stem's asymmetric TF SAME padding), the unpadded clip in
        any layout, padded in the same copy that pairs its frames."""
        batch, channels, frames, height, width = self.input_shape
        padded_shape = tuple(x.shape[:2]) + tuple(
            size + sum(pads) for size, pads in zip(x.shape[2:], explicit_padding or [(0, 0)] * 3)
        )
        if padded_shape != self.input_shape:
            raise ValueError(f"built for input {self.input_shape}, got {padded_shape}")
        tiles, out_channels, tile_frames, components = self.tiles, self.out_channels, self.tile_frames, self.components
        out_height, out_width = self.out_height, self.out_width
        if self.pairing > 1 or explicit_padding is not None:
            clip = self._paired_frames(x, explicit_padding or [(0, 0)] * 3)
        else:
            clip = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C: a view of the channels-last memory
        clip_rows = clip.reshape(batch, self.filter_frames, -1)
        transformed = torch.matmul(self.input_matrix, clip_rows)  # [N, components * tiles, H*W*C']
        if batch > 1:  # component-major, so each component's N * tiles images are one contiguous batch
            transformed = transformed.view(batch, components, tiles, -1).transpose(0, 1).contiguous()
        transformed = transformed.view(components, batch * tiles, height, width, -1)
        del clip, clip_rows  # the stem's paired frames (44 MB at 64 frames) are not needed past this point

        # The shared components' products go through the output transform.
        shared = len(self.shared_components)
        products = x.new_zeros(shared, batch * tiles, out_height, out_width, out_channels)
        for slot, component in enumerate(self.shared_components):
            self._accumulate(component, transformed[component], products[slot], relu=False)
        per_tile = products.view(shared, batch, tiles, -1).permute(1, 2, 0, 3)  # [N, tiles, shared, ...]
        out = torch.matmul(self.shared_output_matrix, per_tile)  # [N, tiles, m frames, H*W*C_out]
        # The first and last components feed only a tile's first and last frame (their output-transform
        # columns are (1, 0, ..., 0) and (0, ..., 0, 1)): they accumulate straight into it, with the ReLU fused.
        frames_of_tiles = out.view(batch * tiles, tile_frames, out_height, out_width, out_channels)
        self._accumulate(_FIRST_FRAME_COMPONENT, transformed[_FIRST_FRAME_COMPONENT], frames_of_tiles[:, 0], True)
        self._accumulate(
            components - 1, transformed[components - 1], frames_of_tiles[:, tile_frames - 1], True
        )
        frames_of_tiles[:, 1 : tile_frames - 1].relu_()
        out = out.view(batch, tiles * tile_frames, out_height, out_width, out_channels)[:, : self.out_frames]
        return out.permute(0, 4, 1, 2, 3)

    def _paired_frames(self, x: torch.Tensor, explicit_padding: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``[N, C, T, H, W]`` (any layout) -> ``[N, ceil(T' / p), H', W', p * C]``, the clip after its explicit
        zero padding (T', H', W') with frames p*s ... p*s + p - 1 side by side in the channels (p = pairing; a
        missing last frame is zero), in one copy of ``x``: only the padding is written besides."""
        batch, channels = x.shape[:2]
        (frames_before, _), (rows_before, _), (cols_before, _) = explicit_padding
        frames, rows, cols = x.shape[2:]
        height, width = self.input_shape[3:]
        paired = x.new_empty(batch, self.filter_frames, height, width, self.pairing, channels)
        clip = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C (a view)
        for half in range(self.pairing):
            # Padded frame p*s + half is frame p*s + half - frames_before of the clip.
            first = (half - frames_before) % self.pairing  # first clip frame that lands in this half
            start = (first + frames_before - half) // self.pairing
            count = len(range(first, frames, self.pairing))
            target = paired[:, :, :, :, half]
            target[:, :start].zero_()
            target[:, start + count :].zero_()
            inner = target[:, start : start + count]
            inner[:, :, :rows_before].zero_()
            inner[:, :, rows_before + rows :].zero_()
            inner[:, :, rows_before : rows_before + rows, :cols_before].zero_()
            inner[:, :, rows_before : rows_before + rows, cols_before + cols :].zero_()
            inner[:, :, rows_before : rows_before + rows, cols_before : cols_before + cols].copy_(clip[:, first :: self.pairing])
        return paired.view(batch, self.filter_frames, height, width, self.pairing * channels)

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
