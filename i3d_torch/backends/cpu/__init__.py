"""The CPU inference engine for I3D, applied to a built model from outside.

``optimize(model)`` swaps the model's units for fused oneDNN conv+BatchNorm+ReLU units (BatchNorm folded,
weights pre-packed per input shape, temporal Winograd for the 3x3x3 convolutions and the stem) and its
branch pools for separable ones; :func:`i3d_torch.weights.load_model` applies it by default, and a model
built by hand gets it with::

    import i3d_torch.backends.cpu
    i3d_torch.backends.cpu.optimize(model)

It runs for float32 CPU inference (``model.eval()`` under ``torch.inference_mode()``); training, autograd,
other dtypes and devices, tracing and export run the plain modules. ``with flags(enabled=False):`` or
``flags(winograd=False)`` switches it for a scope.

Memory: the engine keeps its largest working buffers (the Winograd transforms and products) per model and
reuses them between forwards (:func:`scratch_nbytes`, :func:`release_scratch`), with no process-wide setting.
For the full speed of repeated forwards an application may also opt in, once, to keeping all freed memory
for reuse (a process-wide glibc setting; see :mod:`i3d_torch.backends.cpu.allocator` and
docs/performance.md)::

    i3d_torch.backends.cpu.keep_freed_memory()
"""

from i3d_torch.backends.cpu.allocator import KEEP_FREED_MEMORY_ENV, keep_freed_memory
from i3d_torch.backends.cpu.fused_unit import CpuUnit3D, plan_kind
from i3d_torch.backends.cpu.optimize import is_optimized, optimize, release_scratch, scratch_nbytes
from i3d_torch.backends.cpu.pool import CpuMaxPool3dSame
from i3d_torch.backends.cpu.switches import flags, is_available, is_enabled, winograd_enabled

__all__ = [
    "optimize",
    "is_optimized",
    "flags",
    "is_available",
    "is_enabled",
    "winograd_enabled",
    "scratch_nbytes",
    "release_scratch",
    "keep_freed_memory",
    "KEEP_FREED_MEMORY_ENV",
    "plan_kind",
    "CpuUnit3D",
    "CpuMaxPool3dSame",
]
