"""Small models and inputs the tests build: random weights with BatchNorm statistics worth folding, random
clips in the model's range, and random weights saved as a registry-style safetensors file."""

from __future__ import annotations

from pathlib import Path

import torch

from i3d_torch.core.model import BatchNorm3dNoScale, InceptionI3d
from i3d_torch.weights.registry import label_list, save_model


def random_model(final_endpoint: str = "Logits", seed: int = 0, **kwargs) -> InceptionI3d:
    """Random weights with non-trivial BatchNorm statistics, so that folding has something to fold."""
    torch.manual_seed(seed)
    model = InceptionI3d(final_endpoint=final_endpoint, **kwargs).eval()
    for unit in model.modules():
        if isinstance(unit, BatchNorm3dNoScale):
            unit.running_mean.uniform_(-0.5, 0.5)
            unit.running_var.uniform_(0.5, 2.0)
            unit.bias.data.uniform_(-0.2, 0.2)
    model.check_values = False
    return model


def random_clip(shape, seed: int = 1) -> torch.Tensor:
    """Uniform values in [-1, 1], the model's input range."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def save_random_weights(path: Path, modality: str = "rgb", seed: int = 0) -> Path:
    """A freshly initialised Kinetics-400 model of ``modality`` saved as ``random_<modality>``."""
    torch.manual_seed(seed)
    model = InceptionI3d(in_channels=3 if modality == "rgb" else 2).eval()
    save_model(model, path, categories=label_list("kinetics400"), name=f"random_{modality}", modality=modality)
    return path
