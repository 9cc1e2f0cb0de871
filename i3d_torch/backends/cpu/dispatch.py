"""When the engine's inference-only kernels may replace the plain modules for one call.

They hold no autograd graph, run only in eager mode on CPU, and never while the model is scripted, traced,
compiled or exported (those see the plain conv, BatchNorm and ReLU graph), so training, gradients and
exports are untouched by an optimized model.
"""

from __future__ import annotations

import torch
from torch import nn

from i3d_torch.backends.cpu.switches import is_enabled

__all__ = ["eager_cpu_inference", "engine_applies"]


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")  # torch >= 2.4
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_cpu_enabled()


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """No autograd, a CPU tensor, no CPU autocast (its casts belong to the plain ops), and eager execution (not
    scripted, traced, compiled or exported)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not _cpu_autocast()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _is_exporting()
    )


def engine_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` takes the engine for input ``x``: engine enabled, eval mode, float32 input and
    float32 weights on CPU, eager inference. Anything else (another dtype or device, a mismatched input)
    takes the plain modules and their usual errors."""
    if not is_enabled() or module.training or x.dtype != torch.float32 or not eager_cpu_inference(x):
        return False
    weight = next(module.parameters(), None)
    return weight is None or (weight.device.type == "cpu" and weight.dtype == torch.float32)
