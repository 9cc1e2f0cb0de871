"""The optimiser and the learning-rate schedule of a fine-tuning run.

The schedule is a pure function of the optimizer step (:func:`lr_at_step`), so a resumed run needs only
the step count to continue it: the paper's steps (the rate times ``lr_gamma`` at fixed fractions of
training), a cosine decay, or a constant rate, each after an optional linear warm-up.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from i3d_torch.apps.finetune.config import FinetuneConfig


def lr_at_step(config: FinetuneConfig, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``: a pure function, so resuming
    needs only the step count."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        drops = sum(step >= round(m * total_steps) for m in config.lr_milestones)
        return config.lr * config.lr_gamma**drops
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(config: FinetuneConfig, parameters: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW, over the trainable ``parameters``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
