"""Apply the CPU engine to a built model from outside, by swapping modules (as ``torch.utils.mkldnn.to_mkldnn``).

Each :class:`Unit3D` becomes a :class:`CpuUnit3D` holding the same conv and BatchNorm children, and each
3x3x3 stride-1 :class:`MaxPool3dSame` a :class:`CpuMaxPool3dSame`; nothing else changes, so state_dict keys,
parameters (the very same tensors), deepcopy, pickling and training are those of the plain model. The
swapped units share one block of working memory (:mod:`i3d_torch.backends.cpu.scratch`), kept outside the
modules and freed with them.
"""

from __future__ import annotations

from torch import nn

from i3d_torch.backends.cpu.fused_unit import CpuUnit3D, scratch_of, share_scratch
from i3d_torch.backends.cpu.pool import CpuMaxPool3dSame
from i3d_torch.backends.cpu.scratch import Scratch
from i3d_torch.core.model import MaxPool3dSame, Unit3D

__all__ = ["optimize", "is_optimized", "scratch_nbytes", "release_scratch"]


def _swap(module: nn.Module) -> nn.Module:
    if isinstance(module, Unit3D) and not isinstance(module, CpuUnit3D):
        return CpuUnit3D.from_unit(module)
    if (
        isinstance(module, MaxPool3dSame)
        and not isinstance(module, CpuMaxPool3dSame)
        and module.kernel_size == (3, 3, 3)
        and module.stride == (1, 1, 1)
    ):
        return CpuMaxPool3dSame.from_pool(module)
    return module


def optimize(model: nn.Module) -> nn.Module:
    """Give ``model`` (an :class:`InceptionI3d`, or any module holding I3D units) the CPU inference engine,
    in place; returns ``model``. Idempotent.

    The engine runs for float32 CPU inference in eval mode without autograd (``model.eval()`` and
    ``torch.inference_mode()``) while :func:`i3d_torch.backends.cpu.is_enabled`; every other call runs the
    plain modules exactly as before.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            swapped = _swap(child)
            if swapped is not child:
                setattr(parent, name, swapped)
    # One working-memory block for the model's Winograd convolutions, kept between forwards (see
    # i3d_torch.backends.cpu.scratch); a copy of an optimized model gets its own on optimize(copy).
    units = [m for m in model.modules() if isinstance(m, CpuUnit3D)]
    shared = next((scratch_of(unit) for unit in units if scratch_of(unit) is not None), None)
    share_scratch(units, shared or Scratch())
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether ``model`` holds engine modules (:func:`optimize` has been applied to it)."""
    return any(isinstance(m, CpuUnit3D) for m in model.modules())


def _scratches(model: nn.Module):
    found = {id(s): s for s in (scratch_of(m) for m in model.modules() if isinstance(m, CpuUnit3D)) if s is not None}
    return list(found.values())


def scratch_nbytes(model: nn.Module) -> int:
    """Bytes of working memory the engine keeps for ``model`` between forwards (0 before its first forward)."""
    return sum(scratch.nbytes for scratch in _scratches(model))


def release_scratch(model: nn.Module) -> None:
    """Free the working memory kept for ``model`` (its next forward allocates it again)."""
    for scratch in _scratches(model):
        scratch.release()
