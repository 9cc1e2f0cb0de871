"""i3d-torch: I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, with DeepMind's weights proven equal to TF."""

from __future__ import annotations

# The functions are imported eagerly (cheap next to torch itself): a package attribute named like its
# submodule (fvd, finetune, inflate) must be bound to the function after the submodule is imported, or
# ``i3d_torch.fvd`` would turn into the module the first time anything imports ``i3d_torch.fvd``.
from .features import extract_features
from .finetune import finetune
from .fvd import fvd
from .inference import classify
from .inflate import inflate
from .model import ENDPOINTS, InceptionI3d
from .transforms import Preprocess, flow_to_model_input, rgb_to_model_input
from .weights import Weights, get_weights, list_weights, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "InceptionI3d",
    "Preprocess",
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
