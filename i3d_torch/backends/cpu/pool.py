"""The Inception branch-3 max-pool (3x3x3, stride 1, TF SAME) as three one-axis passes for CPU inference.

PyTorch's channels-last max_pool3d also computes an index tensor that inference drops, and reduces over two
or three window axes at once, which is much slower than one axis at a time (docs/performance.md has the
numbers). The separable form is exact: a max of maxima.
"""

from __future__ import annotations

import torch

from i3d_torch.backends.cpu.dispatch import engine_applies
from i3d_torch.core.model import MaxPool3dSame

__all__ = ["CpuMaxPool3dSame", "separable_max_pool_3x3x3"]


def separable_max_pool_3x3x3(x: torch.Tensor) -> torch.Tensor:
    """Stride-1 3x3x3 SAME max-pool of a channels-last clip as three 3-tap maxima, one axis at a time.

    Each axis is one pass: the maximum over a 3-frame window (``unfold``, a strided view) for the interior,
    of the two existing neighbours at the ends (the -inf SAME pad never wins there).
    """
    y = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C: a contiguous view of the channels-last memory
    for axis in (3, 2, 1):
        size = y.shape[axis]
        if size == 1:
            continue
        out = torch.empty_like(y)
        if size > 2:
            torch.amax(y.unfold(axis, 3, 1), dim=-1, out=out.narrow(axis, 1, size - 2))
        for end, neighbour in ((0, 1), (size - 1, size - 2)):
            torch.maximum(y.narrow(axis, end, 1), y.narrow(axis, neighbour, 1), out=out.narrow(axis, end, 1))
        y = out
    return y.permute(0, 4, 1, 2, 3)


class CpuMaxPool3dSame(MaxPool3dSame):
    """A 3x3x3 stride-1 :class:`MaxPool3dSame` that pools separably on channels-last inputs in eligible CPU
    inference calls (the fused units hand it channels-last activations), and as the plain pool otherwise."""

    @classmethod
    def from_pool(cls, pool: MaxPool3dSame) -> "CpuMaxPool3dSame":
        if pool.kernel_size != (3, 3, 3) or pool.stride != (1, 1, 1):
            raise ValueError(f"the separable pool is for 3x3x3 stride 1, got {pool.kernel_size} {pool.stride}")
        separable = cls(pool.kernel_size, pool.stride)
        separable.train(pool.training)
        return separable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last_3d) and engine_applies(self, x):
            return separable_max_pool_3x3x3(x)
        return super().forward(x)
