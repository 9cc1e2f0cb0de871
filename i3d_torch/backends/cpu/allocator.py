"""Keep freed CPU memory for reuse, so that each forward does not page-fault its activations in again: an opt-in.

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every block of 32 MB or more with a fresh
``mmap`` and gives it back to the OS on ``free``, so each 64-frame forward (about 1 GB of activations and
Winograd buffers, many of them larger than 32 MB) has the kernel map and zero every page again on first touch
(docs/performance.md has what that costs); TF does not pay it because its BFC allocator keeps its memory.
Telling glibc to serve large blocks from its heap and never to trim the heap makes freed blocks reusable:
after the first forward, the process's memory stays at its high-water mark instead of being returned to the
OS between forwards.

That is a process-wide change, so the library never makes it by itself: the caller asks, with
``i3d_torch.backends.cpu.keep_freed_memory()`` (the command line and the benchmark do, for their own
process). It applies once, only with glibc, and not when the environment sets
``I3D_TORCH_KEEP_FREED_MEMORY=0`` (for processes that must give memory back to the OS between forwards, at
the price of the page faults).
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
    """Configure glibc malloc, once per process, to keep freed memory for reuse; True if it is in effect.

    Process-wide and irreversible for the process: the memory the process has used stays mapped at its
    high-water mark. Call it in an application's entry point, not in library code."""
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
