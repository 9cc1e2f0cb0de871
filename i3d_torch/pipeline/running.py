"""Running the model on the pipeline's batches: device and dtype, no gradients, float32 results on the CPU.

Also what every application that walks videos through the model shares: which weights entry describes a
model, the default number of windows per forward pass, the one-line error for a dtype the device has no
kernel for, and the progress bar on stderr.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar, Union

import torch

from i3d_torch.core.errors import InputError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.transforms import trusted_input

__all__ = [
    "FATAL_MODEL_ERRORS",
    "default_batch_size",
    "model_error",
    "on_model",
    "out_of_memory",
    "progress_bar",
    "run_model",
    "unsupported_dtype",
    "weights_of",
]

Output = TypeVar("Output", torch.Tensor, Dict[str, torch.Tensor])


def weights_of(model: InceptionI3d, fallback: Any):
    """The weights entry describing ``model`` (attached by load_model), else ``fallback``'s entry."""
    from i3d_torch.weights.registry import get_weights

    return getattr(model, "weights_info", None) or get_weights(fallback)


def on_model(model: InceptionI3d, x: torch.Tensor, compute: Callable[[torch.Tensor], Output]) -> Output:
    """``compute(x)`` without gradients, with ``x`` moved to the model's device and dtype; the result (a
    tensor or a dict of tensors) comes back as float32 on the CPU. ``compute`` is one of the model's own
    methods, e.g. ``model.per_time_logits``; ``x`` is a batch the pipeline made (no value-range warning)."""
    parameter = next(model.parameters())
    with torch.inference_mode(), trusted_input():
        x = x.to(device=parameter.device, dtype=parameter.dtype, non_blocking=True)
        out = compute(x)
        if isinstance(out, dict):
            return {k: v.float().cpu() for k, v in out.items()}
        return out.float().cpu()


def run_model(model: InceptionI3d, x: torch.Tensor, endpoints: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Endpoints of ``model`` on ``x`` in one pass (see :func:`on_model`)."""
    return on_model(model, x, lambda inputs: model.extract_endpoints(inputs, list(endpoints)))


def unsupported_dtype(exc: BaseException) -> InputError:
    """PyTorch lacks some kernels in reduced precision on some devices (CPU avg_pool3d in bfloat16/float16)."""
    return InputError(
        f"the model cannot run in this dtype on this device ({' '.join(str(exc).split())}); "
        f"use --dtype float32, or bfloat16/float16 on a GPU"
    )


def out_of_memory(exc: BaseException) -> InputError:
    """A batch too big for the GPU: one line naming the option that fixes it, instead of PyTorch's paragraph."""
    text = " ".join(str(exc).split())
    tried = re.search(r"Tried to allocate [\d.]+ [KMGT]?i?B", text)
    detail = f" ({tried.group(0).lower()})" if tried else ""
    return InputError(f"the GPU ran out of memory{detail}; use a smaller --batch-size")


#: Errors of a forward pass that every batch would hit (no kernel for the dtype, a batch too big for the GPU):
#: an application stops at the first one rather than failing input after input.
FATAL_MODEL_ERRORS = (NotImplementedError, torch.cuda.OutOfMemoryError)


def model_error(exc: BaseException) -> InputError:
    """The one-line error for one of :data:`FATAL_MODEL_ERRORS`."""
    return out_of_memory(exc) if isinstance(exc, torch.cuda.OutOfMemoryError) else unsupported_dtype(exc)


def default_batch_size(device: Union[str, torch.device]) -> int:
    """Windows per forward pass: 1 on CPU (batching gains nothing there), 8 on a GPU."""
    return 8 if torch.device(device).type == "cuda" else 1


def progress_bar(quiet: bool, desc: str, unit: str, total: Optional[int] = None):
    """A tqdm bar on stderr, off with ``quiet`` or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), leave=False
    )
