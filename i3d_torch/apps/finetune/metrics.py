"""How well a model does on labelled videos: :func:`evaluate`, the figures of :func:`score`, and the run's
metric records (``metrics.jsonl``, ``confusion_matrix.{json,png}``).

:func:`score` is a pure function of logits and labels; :func:`evaluate` runs the model over a video set
(split across the ranks of a torchrun job, merged on every rank) and scores the merged logits. The
confusion-matrix picture is drawn with matplotlib through :mod:`i3d_torch.apps.plotting`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from i3d_torch.apps.finetune.network import amp_forward
from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import append_jsonl, atomic_path, write_json
from i3d_torch.core.model import InceptionI3d
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.data import VideoClips, VideoList, collate_windows, decoding_worker_init, iterate_batches

PathLike = Union[str, "os.PathLike[str]"]


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


@torch.no_grad()
def evaluate(
    model: InceptionI3d,
    videos: VideoList,
    *,
    clip_frames: int = 64,
    batch_size: int = 8,
    eval_windows: str = "center",
    fps: float = FPS,
    short_side: int = SHORT_SIDE,
    crop_size: int = CROP_SIZE,
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
    mine = distributed.shard(list(range(len(dataset))))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size if eval_windows == "center" else 1,
        sampler=mine,
        num_workers=num_workers,
        collate_fn=collate_windows,
        worker_init_fn=decoding_worker_init,
    )
    was_training = model.training
    model.eval()
    scored: List[Tuple[int, np.ndarray]] = []
    try:
        for clips, _, indices, counts in iterate_batches(loader):
            logits = torch.cat(
                [amp_forward(model, chunk.to(device), amp).float().cpu() for chunk in clips.split(batch_size)]
            )
            per_video = torch.stack([part.mean(0) for part in logits.split(counts.tolist())])
            scored.extend(zip(indices.tolist(), per_video.numpy()))
    finally:
        model.train(was_training)
    merged = sorted((item for part in distributed.gather_objects(scored) for item in part), key=lambda item: item[0])
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


# ---------------------------------------------------------------------------------------------------
# The run's records
# ---------------------------------------------------------------------------------------------------


def log_metrics(run_dir: Path, record: dict) -> None:
    """Append one record to the run's ``metrics.jsonl`` (rank 0 only: one line per event, not per rank)."""
    if distributed.is_main_process():
        append_jsonl(run_dir / "metrics.jsonl", record)


def val_record(result: EvalResult, epoch: int, step: int) -> dict:
    """The ``metrics.jsonl`` line of one validation."""
    return {
        "kind": "val",
        "step": step,
        "epoch": epoch,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "per_class_accuracy": result.per_class_accuracy,
    }


def write_confusion(result: EvalResult, run_dir: Path) -> None:
    """``confusion_matrix.json`` and, when matplotlib is installed, ``confusion_matrix.png``."""
    write_json(run_dir / "confusion_matrix.json", result.to_dict())
    # matplotlib is optional (the [plot] extra): a finished run must not fail for a picture.
    if importlib.util.find_spec("matplotlib") is not None:
        plot_confusion(result, run_dir / "confusion_matrix.png")
    else:
        print("i3d-torch finetune: matplotlib not installed, confusion_matrix.png skipped "
              "(pip install 'i3d-torch[plot]')", file=sys.stderr)


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
