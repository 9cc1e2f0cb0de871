"""Keep freed CPU memory for reuse, so that each forward does not page-fault its activations in again.

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every block of 32 MB or more with a fresh
``mmap`` and gives it back to the OS on ``free``, so each 64-frame forward (about 1 GB of activations and
Winograd buffers, many of them larger than 32 MB) has the kernel map and zero every page again on first touch.
On our 2-core machines that cost 15-25 % of the forward time and most of its run-to-run spread (measured in
docs/performance.md); TF does not pay it because its BFC allocator keeps its memory. Telling glibc to serve
large blocks from its heap and never to trim the heap makes freed blocks reusable: after the first forward,
the process's memory stays at its high-water mark instead of being returned to the OS between forwards.

It is applied once, on the first CPU inference through the fused path (:mod:`i3d_torch.core.model`), only with
glibc, and not when the environment sets ``I3D_TORCH_KEEP_FREED_MEMORY=0`` (for processes that must give
memory back to the OS between forwards, at the price of the page faults).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

__all__ = ["KEEP_FREED_MEMORY_ENV", "keep_freed_memory"]

KEEP_FREED_MEMORY_ENV = "I3D_TORCH_KEEP_FREED_MEMORY"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

@functools.lru_cache(maxsize=None)  # once per process
def keep_freed_memory() -> bool:
    """Configure glibc malloc, once per process, to keep freed memory for reuse; True if it is in effect."""
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # No mmap for large blocks: they come from the heap (glibc still falls back to mmap if the heap cannot
    # grow). No trimming: freed heap memory stays mapped for the next forward.
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) == 1 and applied
