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
matrix per clip. The input transform of every tile is a small matmul of B^T with the tile's own frames
(the tiles inside the clip in one matmul over an overlapping strided view), written component-major so that
each component is a contiguous channels-last batch of 2-D images. The components that feed every output
frame accumulate into one zeroed buffer (oneDNN's in-place sum; it has no overwriting form) and one batched
matmul with their part of the output transform gives the output frames in order; the two components that
feed only a tile's first or last frame (points 0 and infinity) accumulate straight into that frame, with the
ReLU fused. The stem's input is zero-padded (TF SAME) in the same copy that pairs its frames. A clip's tiles
may mix two algorithms (F(6, 3) and F(4, 3)), each a segment of consecutive tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from i3d_torch.backends.cpu.scratch import Carver, Scratch, aligned_numel

__all__ = ["transform_matrices", "temporal_winograd_applies", "TemporalWinogradConv"]

#: The finite interpolation points of each filter's Winograd algorithm; infinity is always the last point, so
#: a tile has ``len(points) + 1`` components (transformed frames, spatial products). Point 0 comes first and
#: point 1 second: see ``_FIRST_FRAME_COMPONENT`` and ``_BIAS_COMPONENT``.
F43_POINTS = (0, 1, -1, 2, -2)
F44_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2))
F63_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))

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
    infinity_row = [Fraction(0)] * (components - 1) + [Fraction(1)]
    vandermonde = [[p**j for j in range(components)] for p in points] + [infinity_row]
    inverse = _exact_inverse(vandermonde)
    input_transform = [[scales[k] * inverse[row][k] for row in range(components)] for k in range(components)]
    kernel = [[p**j / s for j in range(taps)] for p, s in zip(points, scales)] + [[0] * (taps - 1) + [1]]
    output = [[p**i for p in points] + [int(i == outputs - 1)] for i in range(outputs)]

    def tensor(rows):
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=dtype)

    return tensor(input_transform), tensor(kernel), tensor(output)


@dataclass(frozen=True)
class _Choice:
    """The Winograd algorithms a filter's tiles may use and where Winograd is used at all."""

    #: finite points of each tile algorithm, largest tile first
    tile_points: Tuple[Sequence, ...]
    #: the largest fraction of the direct multiplications at which Winograd is used
    max_work: float
    #: output image size (pixels) from which the largest tile is used
    large_tile_min_pixels: int = 0


#: (temporal kernel, temporal stride) -> its choice. The 3x3x3 convolutions mix F(6, 3) and F(4, 3) tiles
#: where the output images are large: 4 + 2 of them cover 32 frames with 44 products against 48 for 8 of
#: F(4, 3) (F(6, 3) alone needs 6 tiles, 48 products, for 36 frames). That pays on Conv3d_2c's 56x56 images
#: but not on Mixed_3's and Mixed_4's smaller ones, where more and smaller oneDNN calls cost more than the saved
#: products (docs/performance.md, round four). The stem's transforms move more memory per multiplication saved
#: (its products have 6 input channels), so it needs a larger saving.
_CHOICES: Dict[Tuple[int, int], _Choice] = {
    (3, 1): _Choice((F63_POINTS, F43_POINTS), 2 / 3, large_tile_min_pixels=56 * 56),
    (7, 2): _Choice((F44_POINTS,), 0.6),
}


def _tile_plan(
    kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], size: Sequence[int]
) -> Tuple[int, List[Tuple[Sequence, int]]]:
    """``(out_frames, [(points, tiles), ...])`` for a conv over an input of ``size`` (T, H, W): its output
    frames and, in frame order, the tiles of each algorithm that cover them with the fewest spatial products
    (ties: the fewest segments). A tile of an algorithm over n points computes n + 2 - taps output frames with
    n + 1 products, taps = ceil(kT / time stride)."""
    out_size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding)]
    taps = -(-kernel[0] // stride[0])
    choice = _CHOICES[(kernel[0], stride[0])]
    algorithms = list(choice.tile_points)
    if len(algorithms) > 1 and out_size[1] * out_size[2] < choice.large_tile_min_pixels:
        algorithms = algorithms[1:]
    large, small = algorithms[0], algorithms[-1]
    large_frames, small_frames = len(large) + 2 - taps, len(small) + 2 - taps
    out_frames = out_size[0]
    best = None
    for large_tiles in range(-(-max(out_frames, 0) // large_frames) + 1):
        small_tiles = -(-max(out_frames - large_tiles * large_frames, 0) // small_frames)
        segments = [(points, tiles) for points, tiles in ((large, large_tiles), (small, small_tiles)) if tiles]
        products = sum((len(points) + 1) * tiles for points, tiles in segments)
        if best is None or (products, len(segments)) < best[0]:
            best = ((products, len(segments)), segments)
    return out_frames, best[1]


def temporal_winograd_applies(
    kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], size: Sequence[int]
) -> bool:
    """Whether a conv of this kernel, stride and implicit padding over an input of ``size`` (T, H, W) takes
    Winograd: 3x3x3 at stride 1 (F(6, 3) and F(4, 3) tiles) or a 7-frame kernel at time stride 2 without
    implicit time padding (the stem, F(4, 4) on paired frames), where it needs at most the fraction of the
    direct multiplications that :data:`_CHOICES` gives.

    Short clips lose: one tile always costs all its spatial products, however few of its output frames exist
    (at T = 2 with 3x3x3, as many as direct, plus the transforms).
    """
    choice = _CHOICES.get((kernel[0], stride[0]))
    if choice is None or (stride[0] == 2 and padding[0] != 0):
        return False
    out_frames, segments = _tile_plan(kernel, stride, padding, size)
    if out_frames < 1:
        return False
    # Multiplications per input channel and output pixel: one per product over the paired channels, against
    # one per tap and output frame (a small tolerance so that exactly 2/3 counts as 2/3).
    products = sum((len(points) + 1) * tiles for points, tiles in segments)
    return products * stride[0] <= choice.max_work * kernel[0] * out_frames + 1e-9


class _Segment:
    """Consecutive tiles of one algorithm: their transformed kernels, the input frames each tile reads and
    their part of the output."""

    def __init__(self, points: Sequence, taps: int, tiles: int, first_frame: int, frame_padding: int, frames: int):
        self.components = len(points) + 1
        self.tile_frames = self.components + 1 - taps
        self.tiles = tiles
        self.first_frame = first_frame  # output frame of its first tile
        self.transforms = transform_matrices(taps, points)
        self.input_matrix = self.transforms[0].float()
        # Tile t reads `components` (paired) input frames from starts[t]; those outside the clip are the zero
        # padding. Tiles whose frames all lie inside are transformed in one matmul over a strided view.
        self.starts = [first_frame + tile * self.tile_frames - frame_padding for tile in range(tiles)]
        inside = [t for t, start in enumerate(self.starts) if start >= 0 and start + self.components <= frames]
        self.inside = range(inside[0], inside[-1] + 1) if inside else range(0)
        # Every component but the first and the last feeds every output frame of its tile.
        self.shared_components = list(range(1, self.components - 1))
        self.shared_output_matrix = self.transforms[2][:, self.shared_components].float()  # m frames x shared
        self.packed: List[torch.Tensor] = []


class TemporalWinogradConv:
    """A convolution + bias + ReLU for one input shape, as temporal Winograd (see the module docstring).

    Built once per (weights, input shape) by :class:`i3d_torch.backends.cpu.fused_unit.CpuUnit3D` (which
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
        if not temporal_winograd_applies(weight.shape[2:], stride, padding, input_shape[2:]):
            raise ValueError(
                f"temporal Winograd does not take kernel {tuple(weight.shape[2:])}, stride {tuple(stride)}, "
                f"padding {tuple(padding)} over {frames} frames"
            )
        out_channels, _, kernel_frames, kernel_height, kernel_width = weight.shape
        self.input_shape = tuple(input_shape)
        self.out_channels = out_channels
        self.spatial_stride, self.spatial_padding = list(stride[1:]), list(padding[1:])
        self.pairing = stride[0]
        taps = -(-kernel_frames // self.pairing)
        self.filter_frames = -(-frames // self.pairing)  # frames of the (paired) input the filter runs over
        self.out_frames, plan = _tile_plan(weight.shape[2:], stride, padding, input_shape[2:])
        self.segments: List[_Segment] = []
        for points, tiles in plan:
            first = sum(segment.tiles * segment.tile_frames for segment in self.segments)
            self.segments.append(_Segment(points, taps, tiles, first, padding[0], self.filter_frames))
        self.out_height = (height + 2 * padding[1] - kernel_height) // stride[1] + 1
        self.out_width = (width + 2 * padding[2] - kernel_width) // stride[2] + 1

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
        for segment in self.segments:
            kernel_transform = segment.transforms[1]
            # Transformed kernels, one spatial bank per component; float64 so the factors are rounded once.
            banks = torch.einsum("kj,oijhw->koihw", kernel_transform, paired).float()
            image_shape = [batch * segment.tiles, self.pairing * channels, height, width]
            segment.packed = [
                torch.ops.mkldnn._reorder_convolution_weight(
                    bank.contiguous(memory_format=torch.channels_last), self.spatial_padding, self.spatial_stride,
                    [1, 1], 1, image_shape,
                )
                for bank in banks
            ]
        self.bias = None if bias is None else bias.detach().float().contiguous()
        # Working buffers that never leave the call, in this order: the paired frames (the stem only), each
        # segment's transformed frames, then one region for the products of one segment at a time.
        self.paired_shape = (batch, self.filter_frames, height, width, self.pairing, channels)
        self.transformed_shapes = [
            (segment.components, batch, segment.tiles, height * width * self.pairing * channels)
            for segment in self.segments
        ]
        self.products_shapes = [
            (len(segment.shared_components), batch * segment.tiles, self.out_height, self.out_width, out_channels)
            for segment in self.segments
        ]
        self.scratch_numel = (
            (aligned_numel(self.paired_shape) if self.pairing > 1 else 0)
            + sum(aligned_numel(shape) for shape in self.transformed_shapes)
            + max(aligned_numel(shape) for shape in self.products_shapes)
        )

    def __call__(
        self,
        x: torch.Tensor,
        explicit_padding: Optional[Sequence[Tuple[int, int]]] = None,
        scratch: Optional[Scratch] = None,
    ) -> torch.Tensor:
        """The convolution of ``x``: channels-last of the built input shape, or, with ``explicit_padding``
        ((before, after) zeros per axis T, H, W: the stem's asymmetric TF SAME padding), the unpadded clip in
        any layout, padded in the same copy that pairs its frames. The working buffers come from ``scratch``
        where given (and not lent to another call), from ``malloc`` otherwise; the result is the same."""
        padded_shape = tuple(x.shape[:2]) + tuple(
            size + sum(pads) for size, pads in zip(x.shape[2:], explicit_padding or [(0, 0)] * 3)
        )
        if padded_shape != self.input_shape:
            raise ValueError(f"built for input {self.input_shape}, got {padded_shape}")
        if scratch is None:
            return self._convolve(x, explicit_padding, None)
        with scratch.lend(self.scratch_numel) as carver:
            return self._convolve(x, explicit_padding, carver)

    def _buffer(self, carver: Optional[Carver], like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return like.new_empty(shape) if carver is None else carver.take(shape)

    def _convolve(
        self, x: torch.Tensor, explicit_padding: Optional[Sequence[Tuple[int, int]]], carver: Optional[Carver]
    ) -> torch.Tensor:
        batch, _, _, height, width = self.input_shape
        out_channels, out_height, out_width = self.out_channels, self.out_height, self.out_width
        if self.pairing > 1 or explicit_padding is not None:
            paired = self._buffer(carver if self.pairing > 1 else None, x, self.paired_shape)
            clip = self._paired_frames(x, explicit_padding or [(0, 0)] * 3, paired)
            del paired  # clip holds it; freed below where it came from malloc
        else:
            clip = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C: a view of the channels-last memory
        clip_rows = clip.reshape(batch, self.filter_frames, -1)
        transformed_frames = []
        for segment, shape in zip(self.segments, self.transformed_shapes):
            # Component-major, so that each component's N * tiles images are one contiguous batch.
            transformed = self._buffer(carver, x, shape)
            self._transform_frames(segment, clip_rows, transformed)
            transformed_frames.append(transformed.view(segment.components, batch * segment.tiles, height, width, -1))
        del clip, clip_rows  # the stem's paired frames (44 MB at 64 frames) are not needed past this point

        covered = sum(segment.tiles * segment.tile_frames for segment in self.segments)
        # One segment's output is the whole output; with several, each writes its frames of a shared buffer (in
        # place where that slice is contiguous, i.e. for a single clip).
        single = len(self.segments) == 1
        out = None if single else x.new_empty(batch, covered, out_height * out_width * out_channels)
        products_offset = None if carver is None else carver.offset
        for segment, transformed, products_shape in zip(self.segments, transformed_frames, self.products_shapes):
            tiles, components, tile_frames = segment.tiles, segment.components, segment.tile_frames
            # The shared components' products go through the output transform; oneDNN accumulates into them.
            shared = len(segment.shared_components)
            if carver is not None:
                carver.offset = products_offset  # one segment's products at a time
            products = self._buffer(carver, x, products_shape).zero_()
            for slot, component in enumerate(segment.shared_components):
                self._accumulate(segment, component, transformed[component], products[slot], relu=False)
            per_tile = products.view(shared, batch, tiles, -1).permute(1, 2, 0, 3)  # [N, tiles, shared, ...]
            frames = slice(segment.first_frame, segment.first_frame + tiles * tile_frames)
            if out is not None and batch == 1:
                segment_out = out[:, frames].view(batch, tiles, tile_frames, -1)
                torch.matmul(segment.shared_output_matrix, per_tile, out=segment_out)
            else:
                segment_out = torch.matmul(segment.shared_output_matrix, per_tile)  # [N, tiles, m frames, H*W*C]
            # The first and last components feed only a tile's first and last frame (their output-transform
            # columns are (1, 0, ..., 0) and (0, ..., 0, 1)): they accumulate straight into it, with the ReLU
            # fused.
            frames_of_tiles = segment_out.view(batch * tiles, tile_frames, out_height, out_width, out_channels)
            first, last = _FIRST_FRAME_COMPONENT, components - 1
            self._accumulate(segment, first, transformed[first], frames_of_tiles[:, 0], True)
            self._accumulate(segment, last, transformed[last], frames_of_tiles[:, -1], True)
            frames_of_tiles[:, 1 : tile_frames - 1].relu_()
            if single:
                out = segment_out.view(batch, covered, -1)
            elif batch > 1:
                out[:, frames].copy_(segment_out.view(batch, tiles * tile_frames, -1))
        out = out.view(batch, covered, out_height, out_width, out_channels)[:, : self.out_frames]
        return out.permute(0, 4, 1, 2, 3)

    @staticmethod
    def _transform_frames(segment: _Segment, clip_rows: torch.Tensor, into: torch.Tensor) -> None:
        """``into[k, n, t] = sum_p B^T[k, p] frame(starts[t] + p)`` of clip n (``clip_rows`` is ``[N, T, X]``,
        ``into`` ``[components, N, tiles, X]``); frames outside the clip are zero and simply left out. The
        tiles inside the clip are one matmul over an overlapping strided view of the frames (each reads only
        its own frames, unlike one banded matmul over all frames, which did 5x the multiplications)."""
        components, tile_frames, frames = segment.components, segment.tile_frames, clip_rows.shape[1]
        inside = segment.inside
        for clip, rows in enumerate(clip_rows):
            if len(inside):
                span = (len(inside) - 1) * tile_frames + components
                windows = rows.narrow(0, segment.starts[inside[0]], span).unfold(0, components, tile_frames)
                target = into[:, clip, inside.start : inside.stop].transpose(0, 1)  # [tiles, components, X]
                torch.matmul(segment.input_matrix, windows.transpose(1, 2), out=target)
            for tile, start in enumerate(segment.starts):
                if tile in inside:
                    continue
                first, stop = max(start, 0), min(start + components, frames)
                matrix = segment.input_matrix[:, first - start : stop - start]
                torch.mm(matrix, rows[first:stop], out=into[:, clip, tile])

    def _paired_frames(
        self, x: torch.Tensor, explicit_padding: Sequence[Tuple[int, int]], paired: torch.Tensor
    ) -> torch.Tensor:
        """``[N, C, T, H, W]`` (any layout) -> ``[N, ceil(T' / p), H', W', p * C]``, the clip after its explicit
        zero padding (T', H', W') with frames p*s ... p*s + p - 1 side by side in the channels (p = pairing; a
        missing last frame is zero), written into ``paired`` (``[N, ceil(T' / p), H', W', p, C]``) in one copy
        of ``x``: only the padding is written besides."""
        batch, channels = x.shape[:2]
        (frames_before, _), (rows_before, _), (cols_before, _) = explicit_padding
        frames, rows, cols = x.shape[2:]
        height, width = self.input_shape[3:]
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
            interior = inner[:, :, rows_before : rows_before + rows, cols_before : cols_before + cols]
            interior.copy_(clip[:, first :: self.pairing])
        return paired.view(batch, self.filter_frames, height, width, self.pairing * channels)

    def _accumulate(
        self, segment: _Segment, component: int, images: torch.Tensor, into: torch.Tensor, relu: bool
    ) -> None:
        """``into += conv(images, the segment's kernel bank of component)`` (+ bias for the bias component), in
        place; both channels-last ``[images, H, W, C]`` views."""
        torch.ops.mkldnn._convolution_pointwise_(
            into.permute(0, 3, 1, 2),
            images.permute(0, 3, 1, 2),
            segment.packed[component],
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
