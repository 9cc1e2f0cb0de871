"""Fine-tune I3D on your own labelled videos: ``i3d-torch finetune`` and :func:`finetune`.

The default recipe is the paper's (Carreira & Zisserman, CVPR 2017, section 3.5, and DeepMind's training
settings): SGD with momentum 0.9, weight decay 1e-7, dropout keep-probability 0.5 before the logits,
random 224 crops of 256-short-side frames with random left-right flips, a random temporal window (looped
when the video is short), and a learning rate divided by 10 in steps (the paper lowered it when the
validation loss saturated; here at fixed fractions of training, so a run is reproducible). AdamW and a
cosine schedule are options.

A run directory holds ``config.json``, ``labels.txt``, ``metrics.jsonl``, ``checkpoints/step-*.pt``
and, at the end, ``model.safetensors`` (loadable with ``load_model(path)`` and ``predict --weights``),
plus ``confusion_matrix.{json,png}`` when there is a validation set. ``--resume`` continues a run
exactly: model, optimizer, gradient scaler, step, epoch, position in the epoch's data order, and the
python/numpy/torch random states of every rank, so an interrupted run ends with the same weights as an
uninterrupted one (bitwise on CPU).

Distributed: ``torchrun --nproc-per-node K -m i3d_torch finetune ...`` trains with DistributedDataParallel
(NCCL on GPUs, Gloo on CPU); ``--batch-size`` is per process; only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from i3d_torch.pipeline import distributed as ddp_env
from i3d_torch.pipeline.data import VideoClips, VideoList, collate_windows, discover
from i3d_torch.core.errors import I3DError, InputError, WeightsError
from i3d_torch.core.fileio import append_jsonl, atomic_open, atomic_path, write_json
from i3d_torch.core.model import ENDPOINTS, BatchNorm3dNoScale, InceptionI3d

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "EvalResult",
    "finetune",
    "evaluate",
    "freeze",
    "set_train_mode",
    "convert_sync_batchnorm",
    "SyncBatchNorm3dNoScale",
    "lr_at_step",
]

PathLike = Union[str, "os.PathLike[str]"]

CHECKPOINT_FORMAT = "i3d_torch.apps.finetune/1"
#: Starting from random weights instead of a registered/converted file.
SCRATCH = "none"
#: Options that may differ between a run and its resumption without changing the result.
RESUME_MAY_CHANGE = {
    "resume", "num_workers", "progress", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every"
}


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (written to ``config.json``). Defaults are the paper's recipe."""

    data: str
    out: str
    val: Optional[str] = None
    split_files: List[str] = field(default_factory=list)
    val_split_files: List[str] = field(default_factory=list)
    weights: str = "rgb_kinetics400"
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
    fps: float = 25.0
    short_side: int = 256
    crop_size: int = 224
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
        if self.freeze_until is not None and self.freeze_until not in ENDPOINTS[: ENDPOINTS.index("Mixed_5c") + 1]:
            raise InputError(
                f"--freeze-until must be an endpoint up to Mixed_5c ({', '.join(ENDPOINTS[:16])}), "
                f"got {self.freeze_until!r}"
            )
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise InputError(f"--clip-grad must be > 0, got {self.clip_grad}")


@dataclass
class EvalResult:
    """Accuracy of a model on a labelled set of videos."""

    top1: float
    top5: float
    loss: float
    per_class_accuracy: Dict[str, Optional[float]]
    confusion: List[List[int]]  # rows: true class, columns: predicted class
    classes: List[str]
    num_videos: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """Where a finished run put its outputs, and how it ended."""

    run_dir: Path
    model_path: Path
    steps: int
    classes: List[str]
    final_eval: Optional[EvalResult]
    model: InceptionI3d  # the trained network (this rank's copy, eval mode)


# ---------------------------------------------------------------------------------------------------
# Model surgery: freezing, BatchNorm modes, synchronised BatchNorm
# ---------------------------------------------------------------------------------------------------


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


class SyncBatchNorm3dNoScale(BatchNorm3dNoScale):
    """I3D's BatchNorm (no scale, learned offset ``bias``) with batch statistics over all processes.

    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would rebuild these layers without their offset
    (they are ``affine=False`` with a separate ``bias``), and PyTorch's SyncBatchNorm runs on GPUs only.
    This one reduces sums across the process group with autograd-aware collectives, so it works on Gloo
    (CPU) and NCCL (GPU) alike and its gradients flow through the shared statistics. In eval mode, or in a
    single process, it is exactly :class:`BatchNorm3dNoScale`. State-dict keys are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        shape = (1, channels, 1, 1, 1)
        # Statistics in at least float32 (autocast may hand us half precision), as F.batch_norm does.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        local = torch.cat([xf.sum(dim=(0, 2, 3, 4)), xf.new_tensor([x.numel() / channels])])
        total = all_reduce(local)  # sum over ranks of [per-channel sums, count]
        count = total[-1]
        mean = total[:channels] / count
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3, 4))) / count  # biased, as in normalisation
        out = centred * torch.rsqrt(var + self.eps).view(shape) + self.bias.view(shape)
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp(min=1))
            self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(unbiased.detach(), alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return out.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks, differentiable: the gradient of a sum shared by every rank is the sum of the
    ranks' gradients, so the backward pass all-reduces too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`BatchNorm3dNoScale` by :class:`SyncBatchNorm3dNoScale`, keeping offsets and stats."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is BatchNorm3dNoScale:
                synced = SyncBatchNorm3dNoScale(child.num_features).to(child.bias.device, child.bias.dtype)
                synced.load_state_dict(child.state_dict())
                synced.bias.requires_grad_(child.bias.requires_grad)
                synced.train(child.training)
                setattr(parent, child_name, synced)
    return model


# ---------------------------------------------------------------------------------------------------
# Schedule, optimizer, random states
# ---------------------------------------------------------------------------------------------------


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
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's python, numpy and torch random states, as tensors and plain types (``weights_only``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order (a collective; a one-item list in a single process)."""
    if not ddp_env.is_distributed() or not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------
# Checkpoints and the run directory
# ---------------------------------------------------------------------------------------------------


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> List[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*.pt") if p.name[5:-3].isdigit())


def save_checkpoint(path: Path, state: dict, keep: int) -> None:
    """Atomically write ``state``, then drop all but the newest ``keep`` checkpoints."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(path.parent.parent)[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint: {' '.join(str(exc).split())[:200]}", path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not a checkpoint of this fine-tuning code (format {CHECKPOINT_FORMAT})", path)
    return state


def _resume_mismatches(saved: dict, current: dict) -> List[str]:
    keys = sorted((set(saved) | set(current)) - RESUME_MAY_CHANGE)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (work a killed run did after its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step", 0) <= step:
            kept.append(line)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: InceptionI3d,
    videos: VideoList,
    *,
    clip_frames: int = 64,
    batch_size: int = 8,
    eval_windows: str = "center",
    fps: float = 25.0,
    short_side: int = 256,
    crop_size: int = 224,
    num_workers: int = 0,
    device: Union[str, torch.device] = "cpu",
    amp: str = "none",
) -> EvalResult:
    """Top-1, top-5, per-class accuracy and the confusion matrix of ``model`` on ``videos``.

    Each video gives its centre clip (``eval_windows="center"``) or the mean logits of all its windows
    (``"all"``). In a torchrun job every rank scores its share and all ranks get the merged result.
    """
    device = torch.device(device)
    dataset = VideoClips(
        videos, clip_frames, train=False, eval_windows=eval_windows, fps=fps, short_side=short_side, crop_size=crop_size
    )
    mine = ddp_env.shard(list(range(len(dataset))))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size if eval_windows == "center" else 1,
        sampler=mine,
        num_workers=num_workers,
        collate_fn=collate_windows,
        worker_init_fn=_worker_init,
    )
    was_training = model.training
    model.eval()
    scored: List[Tuple[int, np.ndarray]] = []
    try:
        for clips, _, indices, counts in _batches(loader):
            logits = torch.cat(
                [_forward(model, chunk.to(device), amp).float().cpu() for chunk in clips.split(batch_size)]
            )
            per_video = torch.stack([part.mean(0) for part in logits.split(counts.tolist())])
            scored.extend(zip(indices.tolist(), per_video.numpy()))
    finally:
        model.train(was_training)
    merged = sorted((item for part in gather_objects(scored) for item in part), key=lambda item: item[0])
    logits = torch.from_numpy(np.stack([v for _, v in merged])) if merged else torch.zeros(0, len(videos.classes))
    labels = torch.tensor([videos.labels[i] for i, _ in merged], dtype=torch.int64)
    return score(logits, labels, videos.classes)


def score(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> EvalResult:
    """Accuracy figures of ``logits [N, K]`` against integer ``labels [N]``."""
    num_classes = len(classes)
    n = int(labels.numel())
    if n == 0:
        raise InputError("no videos to evaluate")
    k = min(5, num_classes)
    top = logits.topk(k, dim=1).indices
    predicted = top[:, 0]
    top1 = float((predicted == labels).float().mean())
    top5 = float((top == labels[:, None]).any(dim=1).float().mean())
    loss = float(F.cross_entropy(logits, labels))
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for c, name in enumerate(classes):
        total = int(confusion[c].sum())
        per_class[name] = float(confusion[c, c]) / total if total else None
    return EvalResult(top1, top5, loss, per_class, confusion.tolist(), list(classes), n)


def plot_confusion(result: EvalResult, path: PathLike) -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), written atomically."""
    from i3d_torch.apps.plotting import _pyplot

    plt = _pyplot()
    matrix = np.asarray(result.confusion, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    k = len(result.classes)
    size = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
        if k <= 60:  # beyond that the labels overlap; the JSON has the numbers
            ax.set_xticks(range(k), result.classes, rotation=90, fontsize=8)
            ax.set_yticks(range(k), result.classes, fontsize=8)
            if k <= 20:
                for i in range(k):
                    for j in range(k):
                        if matrix[i, j]:
                            colour = "white" if normalised[i, j] > 0.5 else "black"
                            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=colour, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"top-1 {result.top1:.1%} on {result.num_videos} videos")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def _batches(loader: torch.utils.data.DataLoader):
    """Iterate ``loader``; an error raised in a decoding worker comes back as its own one-line message.

    DataLoader re-raises a worker's exception with the worker's whole traceback as the message; the CLI
    would print all of it on one line. The original message ends that traceback.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except I3DError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            # I3DError keeps messages on one line, so the traceback is flattened: cut after its last
            # "module.Class: " marker.
            marker = f"{type(exc).__module__}.{type(exc).__name__}: "
            original = text.rsplit(marker, 1)[-1] if marker in text else text
            raise type(exc)(original) from None
        yield batch


def _worker_init(_worker_id: int) -> None:
    # Decoding is the work of a worker; one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _forward(model: nn.Module, clips: torch.Tensor, amp: str) -> torch.Tensor:
    with _autocast(clips.device, amp):
        return model(clips)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = ddp_env.device_for_rank(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def build_model(config: FinetuneConfig, num_classes: int, device: torch.device) -> InceptionI3d:
    """The starting network with a fresh logits layer for ``num_classes`` classes."""
    if config.weights == SCRATCH:
        model = InceptionI3d(
            num_classes=num_classes,
            dropout_keep_prob=config.dropout_keep_prob,
            strict_tf_pooling=config.strict_tf_pooling,
        )
    else:
        from i3d_torch.weights.registry import load_model

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
    model.reset_classifier(num_classes)
    model.check_values = False  # the loader produces [-1, 1] by construction; skip the per-batch scan
    return model.to(device)


def epoch_order(n: int, epoch: int, seed: int, world: int, rank: int, per_step: int) -> List[int]:
    """This rank's video indices for ``epoch``: a seeded shuffle, split across ranks, cut to whole steps.

    The shuffle is padded by wrapping so every rank gets as many items (as DistributedSampler does), and
    ranks take interleaved items, so one step's global batch is the same set of videos whatever the
    number of processes (given the same global batch size).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    padded = -(-n // world) * world
    order = (order * (padded // n + 1))[:padded]
    mine = order[rank::world]
    return mine[: len(mine) // per_step * per_step]


def _log(run_dir: Path, record: dict) -> None:
    if ddp_env.is_main_process():
        append_jsonl(run_dir / "metrics.jsonl", record)


def finetune(data: PathLike, out: PathLike, **options) -> FinetuneResult:
    """Fine-tune I3D on the videos of ``data`` and write the run to ``out``.

    ``data`` (and ``val``) is a folder of class subfolders, a ``path,label`` CSV, or a data root with
    ``split_files``. Every option of :class:`FinetuneConfig` is a keyword argument, e.g.
    ``finetune("videos/", "runs/a", epochs=5, freeze_until="Mixed_4f", val="val.csv")``. Works the same
    inside a torchrun job (then every rank calls it).
    """
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown finetune option(s): {', '.join(unknown)}")
    for name in ("val", "weights"):  # paths may come as Path objects; the config is plain JSON
        if isinstance(options.get(name), os.PathLike):
            options[name] = os.fspath(options[name])
    config = FinetuneConfig(data=os.fspath(data), out=os.fspath(out), **options)
    config.split_files = [os.fspath(p) for p in config.split_files]
    config.val_split_files = [os.fspath(p) for p in config.val_split_files]
    config.lr_milestones = [float(m) for m in config.lr_milestones]
    config.validate()
    with ddp_env.process_group("cuda" if _resolve_device(config.device).type == "cuda" else "cpu"):
        return _Run(config).train()


class _Run:
    """One fine-tuning run: the state shared by the training loop, checkpoints and evaluation."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.run_dir = Path(config.out)
        self.device = _resolve_device(config.device)
        self.rank, self.world = ddp_env.rank(), ddp_env.world_size()
        if config.amp == "fp16" and self.device.type != "cuda":
            raise InputError("--amp fp16 needs a CUDA device (use bf16 on CPU)")

        self.train_videos = discover(config.data, config.split_files, "train", min_classes=2)
        self.val_videos = self._validation_set()
        self.classes = self.train_videos.classes
        self.per_step = config.batch_size * config.accumulate
        self.steps_per_epoch = len(
            epoch_order(len(self.train_videos), 0, config.seed, self.world, self.rank, self.per_step)
        ) // self.per_step
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{len(self.train_videos)} training videos are fewer than one step "
                f"(batch {config.batch_size} x accumulate {config.accumulate} x {self.world} process(es))",
                config.data,
            )
        self.total_steps = self.steps_per_epoch * config.epochs

    def _validation_set(self) -> Optional[VideoList]:
        config = self.config
        if config.val is None and config.val_split_files:
            config.val = config.data
        if config.val is None:
            return None
        val = discover(config.val, config.val_split_files or None, "test")
        return val.with_classes(self.train_videos.classes)

    # -- setup -------------------------------------------------------------------------------------

    def _prepare_run_dir(self) -> Optional[dict]:
        """Check the run directory against ``--resume``; return the checkpoint to resume from, if any."""
        config, run_dir = self.config, self.run_dir
        checkpoints = list_checkpoints(run_dir)
        current = json.loads(json.dumps(asdict(config)))
        if not config.resume:
            if checkpoints or (run_dir / "model.safetensors").exists():
                raise InputError("already holds a run; pass --resume to continue it, or choose another --out", run_dir)
            return None
        if not checkpoints:
            raise InputError("nothing to resume: no checkpoints/step-*.pt in the run directory", run_dir)
        saved_config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["finetune"]
        mismatches = _resume_mismatches(saved_config, current)
        if mismatches:
            raise InputError(f"--resume with different settings: {'; '.join(mismatches[:4])}", run_dir / "config.json")
        state = load_checkpoint(checkpoints[-1])
        if len(state["rng"]) != self.world:
            raise InputError(
                f"checkpoint was written by {len(state['rng'])} process(es); resume with the same number "
                f"(now {self.world})",
                checkpoints[-1],
            )
        return state

    def _write_run_info(self) -> None:
        if not ddp_env.is_main_process():
            return
        write_json(
            self.run_dir / "config.json",
            {
                "finetune": asdict(self.config),
                "classes": self.classes,
                "train_videos": len(self.train_videos),
                "val_videos": len(self.val_videos) if self.val_videos else 0,
                "world_size": self.world,
                "global_batch_size": self.per_step * self.world,
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "torch": torch.__version__,
            },
        )
        with atomic_open(self.run_dir / "labels.txt", "w", encoding="utf-8") as fh:
            fh.write("".join(name + "\n" for name in self.classes))

    def _build(self) -> None:
        config = self.config
        seed_everything(config.seed + self.rank)
        self.model = build_model(config, len(self.classes), self.device)
        self.frozen = freeze(self.model, config.freeze_until)
        if config.sync_bn:
            convert_sync_batchnorm(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, trainable)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.dataset = VideoClips(
            self.train_videos,
            config.clip_frames,
            train=True,
            fps=config.fps,
            short_side=config.short_side,
            crop_size=config.crop_size,
            seed=config.seed,
            flip=config.flip,
        )

    def _restore(self, state: dict) -> Tuple[int, int, int]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.rank])
        return int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])

    def _checkpoint(self, step: int, epoch: int, batches_in_epoch: int) -> None:
        rngs = gather_objects(rng_state())  # collective: every rank takes part
        if not ddp_env.is_main_process():
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": epoch,
            "batches_in_epoch": batches_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rngs,
            "classes": list(self.classes),
        }
        save_checkpoint(checkpoint_path(self.run_dir, step), state, self.config.keep_checkpoints)

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        config = self.config
        order = epoch_order(len(self.dataset), epoch, config.seed, self.world, self.rank, self.per_step)
        self.dataset.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=order[skip_batches * config.batch_size :],
            num_workers=config.num_workers,
            worker_init_fn=_worker_init,
            # Its own generator, so creating the loader never draws from the global torch stream (which
            # dropout uses): a resumed run creates loaders at different moments than an uninterrupted one.
            generator=torch.Generator().manual_seed(config.seed),
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )

    # -- loop ----------------------------------------------------------------------------------------

    def train(self) -> FinetuneResult:
        config = self.config
        resume_state = self._prepare_run_dir()
        ddp_env.barrier()  # every rank has checked the directory before rank 0 writes to it
        self._build()
        step, start_epoch, skip = 0, 0, 0
        if resume_state is not None:
            step, start_epoch, skip = self._restore(resume_state)
            if ddp_env.is_main_process():
                _truncate_metrics(self.run_dir / "metrics.jsonl", step)
        else:
            self._write_run_info()
            if ddp_env.is_main_process():
                with atomic_open(self.run_dir / "metrics.jsonl", "w", encoding="utf-8"):
                    pass
        del resume_state

        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=step,
            file=sys.stderr,
            disable=not (config.progress and ddp_env.is_main_process()),
            unit="step",
            dynamic_ncols=True,
        )
        last_eval: Optional[EvalResult] = None
        try:
            for epoch in range(start_epoch, config.epochs):
                step = self._train_epoch(epoch, step, skip if epoch == start_epoch else 0, bar)
                due = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
                if self.val_videos is not None and due:
                    last_eval = self._validate(epoch, step)
                self._checkpoint(step, epoch + 1, 0)
        finally:
            bar.close()
        if last_eval is None and self.val_videos is not None:
            last_eval = self._validate(config.epochs - 1, step)  # a resumed run that had already finished
        return self._finish(step, last_eval)

    def _train_epoch(self, epoch: int, step: int, skip_batches: int, bar) -> int:
        config = self.config
        set_train_mode(self.model, self.frozen, config.freeze_bn)
        loader = self._loader(epoch, skip_batches)
        window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
        epoch_loss, epoch_correct, epoch_clips = 0.0, 0, 0
        for batch_index, (clips, labels, _) in enumerate(_batches(loader), start=skip_batches):
            clips = clips.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            last_of_step = (batch_index + 1) % config.accumulate == 0
            # Gradients are all-reduced only on the micro-batch that completes an optimizer step.
            sync = self.net.no_sync() if (self.world > 1 and not last_of_step) else nullcontext()
            with sync:
                logits = _forward(self.net, clips, config.amp).float()
                loss = F.cross_entropy(logits, labels)
                self.scaler.scale(loss / config.accumulate).backward()
            window_loss += float(loss.detach()) * len(labels)
            window_clips += len(labels)
            epoch_loss += float(loss.detach()) * len(labels)
            epoch_correct += int((logits.argmax(1) == labels).sum())
            epoch_clips += len(labels)
            if not last_of_step:
                continue
            self._optimizer_step(step)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step % self.steps_per_epoch == 0:
                elapsed = time.perf_counter() - window_start
                rate = window_clips * self.world / max(elapsed, 1e-9)
                record = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch,
                    "loss": window_loss / window_clips,
                    "lr": lr_at_step(config, step - 1, self.total_steps),
                    "clips_per_s": rate,
                }
                bar.set_postfix(loss=f"{record['loss']:.4f}", clips_per_s=f"{rate:.1f}")
                _log(self.run_dir, record)
                window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step % self.steps_per_epoch:
                self._checkpoint(step, epoch, batch_index + 1)
        if epoch_clips:
            totals = gather_objects((epoch_loss, epoch_correct, epoch_clips))
            loss_sum, correct, count = (sum(t[i] for t in totals) for i in range(3))
            _log(
                self.run_dir,
                {"kind": "train_epoch", "step": step, "epoch": epoch, "loss": loss_sum / count, "accuracy": correct / count},
            )
        return step

    def _optimizer_step(self, step: int) -> None:
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at_step(config, step, self.total_steps)
        if config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], config.clip_grad
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _validate(self, epoch: int, step: int) -> EvalResult:
        config = self.config
        result = evaluate(
            self.model,
            self.val_videos,
            clip_frames=config.clip_frames,
            batch_size=config.batch_size,
            eval_windows=config.eval_windows,
            fps=config.fps,
            short_side=config.short_side,
            crop_size=config.crop_size,
            num_workers=config.num_workers,
            device=self.device,
            amp=config.amp,
        )
        _log(
            self.run_dir,
            {
                "kind": "val",
                "step": step,
                "epoch": epoch,
                "top1": result.top1,
                "top5": result.top5,
                "loss": result.loss,
                "per_class_accuracy": result.per_class_accuracy,
            },
        )
        return result

    def _finish(self, step: int, last_eval: Optional[EvalResult]) -> FinetuneResult:
        model_path = self.run_dir / "model.safetensors"
        if ddp_env.is_main_process():
            from i3d_torch.weights.registry import save_model

            self.model.eval()
            save_model(
                self.model,
                model_path,
                categories=self.classes,
                name=f"finetuned:{self.run_dir.name}",
                modality="rgb",
                metadata={
                    "finetune_config": json.dumps(asdict(self.config), sort_keys=True),
                    "finetune_steps": str(step),
                    "base_weights": str(self.config.weights),
                },
            )
            if last_eval is not None:
                write_json(self.run_dir / "confusion_matrix.json", last_eval.to_dict())
                # matplotlib is optional (the [plot] extra): a finished run must not fail for a picture.
                if importlib.util.find_spec("matplotlib") is not None:
                    plot_confusion(last_eval, self.run_dir / "confusion_matrix.png")
                else:
                    print("i3d-torch finetune: matplotlib not installed, confusion_matrix.png skipped "
                          "(pip install 'i3d-torch[plot]')", file=sys.stderr)
        ddp_env.barrier()
        return FinetuneResult(self.run_dir, model_path, step, list(self.classes), last_eval, self.model.eval())


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig(data="", out="")
    parser.description = (
        "Fine-tune I3D on your labelled videos (a folder of class subfolders, a path,label CSV, or UCF101/"
        "HMDB51 split files). Defaults follow the paper: SGD momentum 0.9, weight decay 1e-7, dropout "
        "keep-probability 0.5, step learning-rate schedule. Multi-GPU: torchrun --nproc-per-node K -m "
        "i3d_torch finetune ..."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="training videos: folder of class subfolders, CSV, or split-file root")
    data.add_argument("--out", required=True, help="run directory (config, labels, metrics, checkpoints, model)")
    data.add_argument("--val", help="validation videos (folder or CSV; with --val-split-file: their root)")
    data.add_argument("--split-file", dest="split_files", nargs="+", default=[], metavar="FILE",
                      help="UCF101 trainlist01.txt or HMDB51 *_test_split1.txt files over the --data root")
    data.add_argument("--val-split-file", dest="val_split_files", nargs="+", default=[], metavar="FILE",
                      help="UCF101 testlist01.txt, or the HMDB51 split files (their code-2 videos)")
    data.add_argument("--clip-frames", type=int, default=d.clip_frames, help="frames per training clip (paper: 64)")
    data.add_argument("--eval-windows", choices=("center", "all"), default=d.eval_windows,
                      help="evaluate the centre clip, or average the logits of all windows")
    data.add_argument("--eval-every", type=int, default=d.eval_every, metavar="EPOCHS",
                      help="validate every N epochs (and always after the last)")
    data.add_argument("--no-flip", dest="flip", action="store_false",
                      help="no random left-right flips (for labels that depend on left/right)")
    data.add_argument("--fps", type=float, default=d.fps)
    data.add_argument("--short-side", type=int, default=d.short_side)
    data.add_argument("--crop-size", type=int, default=d.crop_size)
    data.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader decoding processes")

    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=d.weights,
                       help=f"registered weights name or .safetensors path to start from ('{SCRATCH}': random init)")
    model.add_argument("--freeze-until", choices=ENDPOINTS[:16], metavar="ENDPOINT",
                       help="keep parameters and BatchNorm statistics fixed up to this endpoint (e.g. Mixed_4f)")
    model.add_argument("--freeze-bn", action="store_true",
                       help="BatchNorm layers use their running statistics (eval mode); offsets still train")
    model.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all processes")
    model.add_argument("--dropout-keep-prob", type=float, default=d.dropout_keep_prob)
    model.add_argument("--no-strict-tf-pooling", dest="strict_tf_pooling", action="store_false",
                       help="allow clips smaller than 9x193x193 (clamps the logits pool; departs from TF there)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=d.epochs)
    optim.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per process per micro-batch")
    optim.add_argument("--accumulate", type=int, default=d.accumulate, help="micro-batches per optimizer step")
    optim.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    optim.add_argument("--lr", type=float, default=d.lr)
    optim.add_argument("--momentum", type=float, default=d.momentum)
    optim.add_argument("--weight-decay", type=float, default=d.weight_decay)
    optim.add_argument("--schedule", choices=("step", "cosine", "constant"), default=d.schedule)
    optim.add_argument("--lr-milestones", type=float, nargs="+", default=d.lr_milestones,
                       help="fractions of training where the step schedule multiplies the lr by --lr-gamma")
    optim.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    optim.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    optim.add_argument("--amp", choices=("none", "bf16", "fp16"), default=d.amp, help="mixed precision")
    optim.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    optim.add_argument("--seed", type=int, default=d.seed)
    optim.add_argument("--device", default=d.device, help="auto, cpu, cuda (cuda:LOCAL_RANK under torchrun)")

    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                     help="also checkpoint every N optimizer steps (always at each epoch's end)")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    run.add_argument("--log-every", type=int, default=d.log_every, help="steps between metric lines")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    options = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)}
    data, out = options.pop("data"), options.pop("out")
    result = finetune(data, out, **options)
    if ddp_env.is_main_process():
        summary = f"wrote {result.model_path} ({len(result.classes)} classes, {result.steps} steps)"
        if result.final_eval is not None:
            summary += f"; validation top-1 {result.final_eval.top1:.1%}, top-5 {result.final_eval.top5:.1%}"
        print(summary)
    return 0
