"""i3d-torch: I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, with DeepMind's weights proven equal to TF.

The package exports the model, the weights API and the transforms; the applications (``classify``,
``extract_features``, ``fvd``, ``finetune``, ``inflate``) are imported on first use, so that importing the
model does not import the applications. The layers are described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from i3d_torch.core.model import ENDPOINTS, InceptionI3d
from i3d_torch.core.transforms import Preprocess, VideoClassification, flow_to_model_input, rgb_to_model_input
from i3d_torch.weights.registry import Weights, get_weights, list_weights, load_model, save_model

__version__ = "0.1.0"

#: The applications' stable entry points: name -> module that defines it.
_APPLICATIONS = {
    "classify": "i3d_torch.apps.classify",
    "extract_features": "i3d_torch.apps.features",
    "finetune": "i3d_torch.apps.finetune",
    "fvd": "i3d_torch.apps.fvd",
    "inflate": "i3d_torch.apps.inflate",
}


def __getattr__(name: str) -> Any:
    if name in _APPLICATIONS:
        return getattr(importlib.import_module(_APPLICATIONS[name]), name)
    raise AttributeError(f"module 'i3d_torch' has no attribute {name!r}")


__all__ = [
    "ENDPOINTS",
    "InceptionI3d",
    "Preprocess",
    "VideoClassification",
    "Weights",
    "classify",
    "extract_features",
    "finetune",
    "flow_to_model_input",
    "fvd",
    "get_weights",
    "inflate",
    "list_weights",
    "load_model",
    "rgb_to_model_input",
    "save_model",
]
