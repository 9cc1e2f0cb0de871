"""Weights: the registry of DeepMind's models, loading (the one model builder), fetching and conversion."""

from i3d_torch.weights.registry import Weights, get_weights, list_weights, load_model, save_model

__all__ = ["Weights", "get_weights", "list_weights", "load_model", "save_model"]
