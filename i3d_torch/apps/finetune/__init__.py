"""Fine-tune I3D on your own labelled videos: :func:`finetune` (``i3d-torch finetune`` on the command line).

The default recipe is the paper's (Carreira & Zisserman, CVPR 2017, section 3.5, and DeepMind's training
settings): SGD with momentum 0.9, weight decay 1e-7, dropout keep-probability 0.5 before the logits,
random crops of short-side-resized frames (DeepMind's 224 and 256) with random left-right flips, a random
temporal window (looped when the video is short), and a learning rate divided by 10 in steps (the paper
lowered it when the validation loss saturated; here at fixed fractions of training, so a run is
reproducible). AdamW and a cosine schedule are options.

A run directory holds ``config.json``, ``labels.txt``, ``metrics.jsonl``, ``checkpoints/step-*.pt``
and, at the end, ``model.safetensors`` (loadable with ``load_model(path)`` and ``predict --weights``),
plus ``confusion_matrix.{json,png}`` when there is a validation set. ``--resume`` continues a run
exactly: model, optimizer, gradient scaler, step, epoch, position in the epoch's data order, and the
python/numpy/torch random states of every rank, so an interrupted run ends with the same weights as an
uninterrupted one (bitwise on CPU). Distributed: ``torchrun --nproc-per-node K -m i3d_torch finetune ...``
trains with DistributedDataParallel (NCCL on GPUs, Gloo on CPU); ``--batch-size`` is per process; only
rank 0 writes files.

One module per job: :mod:`.config` (the settings), :mod:`.network` (starting model, freezing, BatchNorm
modes, mixed precision), :mod:`.optim` (optimiser and schedule), :mod:`.checkpoint` (checkpoints, resume
checks, random states), :mod:`.metrics` (evaluation, scores, confusion matrix), :mod:`.loop` (the run).
Synchronised BatchNorm and the collectives live in :mod:`i3d_torch.pipeline.distributed`. This package
exports the stable entry points.
"""

from __future__ import annotations

from i3d_torch.apps.finetune.checkpoint import load_checkpoint, rng_state, set_rng_state
from i3d_torch.apps.finetune.config import SCRATCH, FinetuneConfig
from i3d_torch.apps.finetune.loop import FinetuneResult, epoch_order, finetune
from i3d_torch.apps.finetune.metrics import EvalResult, evaluate, plot_confusion, score
from i3d_torch.apps.finetune.network import freeze, set_train_mode
from i3d_torch.apps.finetune.optim import lr_at_step
from i3d_torch.pipeline.distributed import SyncBatchNorm3dNoScale, convert_sync_batchnorm

__all__ = [
    "SCRATCH",
    "EvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "SyncBatchNorm3dNoScale",
    "convert_sync_batchnorm",
    "epoch_order",
    "evaluate",
    "finetune",
    "freeze",
    "load_checkpoint",
    "lr_at_step",
    "plot_confusion",
    "rng_state",
    "score",
    "set_rng_state",
    "set_train_mode",
]
