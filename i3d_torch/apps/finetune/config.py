"""The settings of a fine-tuning run: :class:`FinetuneConfig`, its checks, and how keyword options become one.

A config is plain data (it is written to ``config.json`` and compared on ``--resume``); its defaults are
the paper's recipe and DeepMind's preprocessing (:mod:`i3d_torch.core.defaults`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import List, Optional, Union

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_WEIGHTS, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import ENDPOINTS

PathLike = Union[str, "os.PathLike[str]"]

#: Starting from random weights instead of a registered/converted file.
SCRATCH = "none"

#: The endpoints ``--freeze-until`` accepts: the backbone, up to and including Mixed_5c.
FREEZABLE_ENDPOINTS = ENDPOINTS[: ENDPOINTS.index("Mixed_5c") + 1]


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (written to ``config.json``). Defaults are the paper's recipe."""

    data: str
    out: str
    val: Optional[str] = None
    split_files: List[str] = field(default_factory=list)
    val_split_files: List[str] = field(default_factory=list)
    weights: str = DEFAULT_WEIGHTS
    epochs: int = 10
    clip_frames: int = 64
    batch_size: int = 8  # per process
    accumulate: int = 1
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-7
    schedule: str = "step"
    lr_milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    dropout_keep_prob: float = 0.5
    freeze_until: Optional[str] = None
    freeze_bn: bool = False
    sync_bn: bool = False
    amp: str = "none"
    clip_grad: Optional[float] = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    eval_windows: str = "center"
    eval_every: int = 1  # epochs between validations; the last epoch is always validated
    flip: bool = True
    fps: float = FPS
    short_side: int = SHORT_SIDE
    crop_size: int = CROP_SIZE
    strict_tf_pooling: bool = True
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    progress: bool = True
    resume: bool = False

    def validate(self) -> None:
        positive = ("epochs", "clip_frames", "batch_size", "accumulate", "keep_checkpoints", "log_every", "eval_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0 or self.num_workers < 0 or self.warmup_steps < 0:
            raise InputError("--checkpoint-every, --num-workers and --warmup-steps must be >= 0")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 < self.dropout_keep_prob <= 1.0:
            raise InputError(f"--dropout-keep-prob must be in (0, 1], got {self.dropout_keep_prob}")
        if self.optimizer not in ("sgd", "adamw"):
            raise InputError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine", "constant"):
            raise InputError(f"--schedule must be step, cosine or constant, got {self.schedule!r}")
        if any(not 0.0 < m < 1.0 for m in self.lr_milestones):
            raise InputError(f"--lr-milestones are fractions of training in (0, 1), got {self.lr_milestones}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise InputError(f"--amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.freeze_until is not None and self.freeze_until not in FREEZABLE_ENDPOINTS:
            raise InputError(
                f"--freeze-until must be an endpoint up to Mixed_5c ({', '.join(FREEZABLE_ENDPOINTS)}), "
                f"got {self.freeze_until!r}"
            )
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise InputError(f"--clip-grad must be > 0, got {self.clip_grad}")


def make_config(data: PathLike, out: PathLike, **options) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig` from keyword options; paths become strings (the config is plain JSON).

    Raises ``TypeError`` for an option the config does not have, as a function call would.
    """
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown finetune option(s): {', '.join(unknown)}")
    for name in ("val", "weights"):
        if isinstance(options.get(name), os.PathLike):
            options[name] = os.fspath(options[name])
    config = FinetuneConfig(data=os.fspath(data), out=os.fspath(out), **options)
    config.split_files = [os.fspath(p) for p in config.split_files]
    config.val_split_files = [os.fspath(p) for p in config.val_split_files]
    config.lr_milestones = [float(m) for m in config.lr_milestones]
    config.validate()
    return config
