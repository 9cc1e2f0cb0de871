"""Working memory the engine keeps and reuses between forwards, so repeated forwards need no fresh pages.

PyTorch's CPU tensors come from ``malloc``, and glibc gives blocks of 32 MB or more back to the OS when they
are freed, so a buffer of that size allocated on every forward is page-faulted in (mapped and zeroed by the
kernel) every time. The temporal Winograd convolutions' input transforms and products are the largest such
buffers and never leave the convolution, so the engine lends them from one block per optimized model, grown
to the largest need and then reused, as TF's BFC allocator keeps its memory; no process-wide setting is
involved, and the block goes away with the model. Activations that leave a layer still come from ``malloc``
(see :mod:`i3d_torch.backends.cpu.allocator` for the opt-in that keeps those too).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Sequence

import torch

__all__ = ["Scratch", "Carver", "aligned_numel"]

# Views start at multiples of 64 float32 elements (256 bytes), beyond any vector or cache-line alignment.
_ALIGN = 64


def _numel(shape: Sequence[int]) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return numel


def aligned_numel(shape: Sequence[int]) -> int:
    """Elements a view of ``shape`` takes in the block, rounded up to the alignment."""
    return -(-_numel(shape) // _ALIGN) * _ALIGN


class Carver:
    """Hands out consecutive aligned views of a lent block; ``offset`` may be set back to reuse a region."""

    def __init__(self, block: torch.Tensor):
        self.block = block
        self.offset = 0

    def take(self, shape: Sequence[int]) -> torch.Tensor:
        view = self.block[self.offset : self.offset + _numel(shape)].view(*shape)
        self.offset += aligned_numel(shape)
        return view


class Scratch:
    """A float32 block lent to one convolution at a time. A call that finds it already lent (another thread
    running the same model) gets None and allocates its own buffers, so sharing a model stays correct."""

    def __init__(self) -> None:
        self._block: Optional[torch.Tensor] = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self, numel: int) -> Iterator[Optional[Carver]]:
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._block is None or self._block.numel() < numel:
                self._block = None  # free the smaller block before allocating the larger one
                # A normal tensor even when the first forward runs under torch.inference_mode(): an inference
                # tensor could not be written in place by a later forward under torch.no_grad().
                with torch.inference_mode(False):
                    self._block = torch.empty(numel, dtype=torch.float32)
            yield Carver(self._block)
        finally:
            self._lock.release()

    @property
    def nbytes(self) -> int:
        block = self._block
        return 0 if block is None else block.numel() * block.element_size()

    def release(self) -> None:
        """Give the block back to ``malloc`` (the next forward allocates it again)."""
        with self._lock:
            self._block = None
