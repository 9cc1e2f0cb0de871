"""i3d-torch: I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, with DeepMind's weights proven equal to TF."""

from __future__ import annotations

import importlib

from .model import ENDPOINTS, InceptionI3d
from .transforms import Preprocess, flow_to_model_input, rgb_to_model_input

__version__ = "0.1.0"

# Heavier entry points load on first use, so ``import i3d_torch`` stays light.
_LAZY = {
    "load_model": "i3d_torch.weights",
    "get_weights": "i3d_torch.weights",
    "list_weights": "i3d_torch.weights",
    "Weights": "i3d_torch.weights",
    "classify": "i3d_torch.inference",
    "extract_features": "i3d_torch.features",
    "fvd": "i3d_torch.fvd",
    "inflate": "i3d_torch.inflate",
    "finetune": "i3d_torch.finetune",
}

__all__ = ["ENDPOINTS", "InceptionI3d", "Preprocess", "rgb_to_model_input", "flow_to_model_input", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'i3d_torch' has no attribute {name!r}")
