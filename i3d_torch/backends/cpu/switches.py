"""The CPU engine's switches: whether it runs at all and whether it uses temporal Winograd, set for a scope.

They are read on every forward of an optimized unit, so a ``with flags(...)`` block changes the path of models
already built; leaving the block restores what it changed, as ``torch.backends.mkldnn.flags()`` does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["is_available", "is_enabled", "winograd_enabled", "flags"]


def is_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution, which the engine is built on."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# Module state behind the public readers; changed only through flags().
_enabled: bool = is_available()
_winograd: bool = True


def is_enabled() -> bool:
    """Whether optimized units and pools take the engine's kernels (for eligible inference calls)."""
    return _enabled


def winograd_enabled() -> bool:
    """Whether the engine computes the 3x3x3 stride-1 convolutions and the stem with temporal Winograd."""
    return _winograd


@contextlib.contextmanager
def flags(enabled: Optional[bool] = None, winograd: Optional[bool] = None) -> Iterator[None]:
    """Set the engine's switches for the ``with`` block (``None`` leaves one as it is), then restore them.

    ``enabled=False`` runs the plain conv, BatchNorm, ReLU and max-pool modules (to compare, or to rule the
    engine out when debugging); ``winograd=False`` keeps the fused units but convolves directly everywhere.
    Asking for ``enabled=True`` where :func:`is_available` is False raises rather than failing later.
    """
    global _enabled, _winograd
    if enabled and not is_available():
        raise RuntimeError("this PyTorch build has no oneDNN fused convolution: the CPU engine cannot be enabled")
    saved = (_enabled, _winograd)
    if enabled is not None:
        _enabled = bool(enabled)
    if winograd is not None:
        _winograd = bool(winograd)
    try:
        yield
    finally:
        _enabled, _winograd = saved
