"""The network being fine-tuned: where it starts, which part stays fixed, how it runs a training step's forward.

The starting weights come from the one model builder, :func:`i3d_torch.weights.load_model` (or random
initialisation with ``weights="none"``), with a fresh logits layer for the run's classes. Either start
carries the CPU inference engine (:func:`i3d_torch.backends.cpu.optimize`): training runs the plain
modules, and validation on CPU runs as fast as ``predict``. Freezing keeps
the parameters up to an endpoint fixed and that part in eval mode; ``freeze_bn`` puts every BatchNorm in
eval mode. Mixed precision is an autocast around the forward.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional, Sequence

import torch
from torch import nn

from i3d_torch.apps.finetune.config import SCRATCH, FinetuneConfig
from i3d_torch.backends import cpu as cpu_backend
from i3d_torch.core.errors import WeightsError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.pipeline import distributed
from i3d_torch.weights.registry import load_model


def starting_model(config: FinetuneConfig, num_classes: int, device: torch.device) -> InceptionI3d:
    """The network the run starts from, with a fresh logits layer for ``num_classes`` classes, on ``device``."""
    if config.weights == SCRATCH:
        model = InceptionI3d(
            num_classes=num_classes,
            dropout_keep_prob=config.dropout_keep_prob,
            strict_tf_pooling=config.strict_tf_pooling,
        )
        cpu_backend.optimize(model)  # as load_model does, so both starts validate on the same engine
    else:
        model = load_model(
            config.weights,
            dropout_keep_prob=config.dropout_keep_prob,
            strict_tf_pooling=config.strict_tf_pooling,
            progress=config.progress,
        )
        if model.in_channels != 3:
            raise WeightsError(
                "fine-tuning decodes RGB videos; these are optical-flow weights (precomputed flow is not read)",
                config.weights,
            )
    # Always a fresh head, even when the weights already have num_classes outputs: their classes are not ours.
    model.reset_classifier(num_classes)
    model.check_values = False  # the loader produces [-1, 1] by construction; skip the per-batch scan
    return model.to(device)


def frozen_endpoints(model: InceptionI3d, freeze_until: Optional[str]) -> List[str]:
    """The endpoints (in order) whose parameters stay fixed when freezing up to ``freeze_until``."""
    if freeze_until is None:
        return []
    return list(model.endpoints[: model.endpoints.index(freeze_until) + 1])


def freeze(model: InceptionI3d, freeze_until: Optional[str]) -> List[str]:
    """Stop gradients for every parameter up to and including the endpoint ``freeze_until``."""
    names = frozen_endpoints(model, freeze_until)
    for name in names:
        for parameter in getattr(model, name).parameters():
            parameter.requires_grad_(False)
    return names


def set_train_mode(model: InceptionI3d, frozen: Sequence[str], freeze_bn: bool) -> None:
    """``model.train()``, then eval mode where statistics must not move.

    A frozen endpoint runs in eval mode (its BatchNorm uses and keeps its running statistics: the frozen
    part computes exactly what it computed before fine-tuning). With ``freeze_bn`` every BatchNorm does,
    which is what small data sets need (a batch of a few clips gives noisy statistics); the BatchNorm
    offsets outside the frozen part are still trained, like any bias.
    """
    model.train()
    for name in frozen:
        getattr(model, name).eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` becomes this rank's GPU under torchrun."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.device_for_rank(device)


def autocast(device: torch.device, amp: str):
    """The autocast context of ``--amp`` (``none``, ``bf16``, ``fp16``) on ``device``."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def amp_forward(model: nn.Module, clips: torch.Tensor, amp: str) -> torch.Tensor:
    """``model(clips)`` under the ``--amp`` autocast of the clips' device."""
    with autocast(clips.device, amp):
        return model(clips)
