"""i3d-torch: I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, with DeepMind's weights proven equal to TF.

The package exports the model, the weights API and the transforms, and the applications' entry points
(``classify``, ``extract_features``, ``fvd``, ``finetune``, ``inflate``). Each is imported on first use
(PEP 562), so that ``import i3d_torch.core.model`` loads the model alone: no backend, no application. The
layers are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ENDPOINTS": "i3d_torch.core.model",
    "InceptionI3d": "i3d_torch.core.model",
    "Preprocess": "i3d_torch.core.transforms",
    "VideoClassification": "i3d_torch.core.transforms",
    "flow_to_model_input": "i3d_torch.core.transforms",
    "rgb_to_model_input": "i3d_torch.core.transforms",
    "Weights": "i3d_torch.weights.registry",
    "get_weights": "i3d_torch.weights.registry",
    "list_weights": "i3d_torch.weights.registry",
    "load_model": "i3d_torch.weights.registry",
    "save_model": "i3d_torch.weights.registry",
    "classify": "i3d_torch.apps.classify",
    "extract_features": "i3d_torch.apps.features",
    "finetune": "i3d_torch.apps.finetune",
    "fvd": "i3d_torch.apps.fvd",
    "inflate": "i3d_torch.apps.inflate",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'i3d_torch' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
