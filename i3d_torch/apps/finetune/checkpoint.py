"""The run directory of a fine-tuning run: checkpoints, the checks that make ``--resume`` exact, random states.

A checkpoint (``checkpoints/step-NNNNNNN.pt``) holds only tensors and plain types, so it loads with
``torch.load(path, weights_only=True)``: model, optimizer, gradient scaler, step, epoch, position in the
epoch's data order, and the python/numpy/torch random states of every rank. Resuming refuses changed
settings (except those in :data:`RESUME_MAY_CHANGE`) and a different number of processes, and drops the
metric lines a killed run logged after its last checkpoint, so the run reads as one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from i3d_torch.apps.finetune.config import FinetuneConfig
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_open, atomic_path, write_json

#: Written into every checkpoint and checked on load. A name, not a module path: it stays as released so that
#: checkpoints of earlier versions still resume.
CHECKPOINT_FORMAT = "i3d_torch.finetune/1"
#: Options that may differ between a run and its resumption without changing the result.
RESUME_MAY_CHANGE = {
    "resume", "num_workers", "progress", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every"
}


# ---------------------------------------------------------------------------------------------------
# Random states
# ---------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (the training process owns them)."""
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
    """Restore what :func:`rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> List[Path]:
    """The run's checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*.pt") if p.name[5:-3].isdigit())


def checkpoint_state(
    *,
    step: int,
    epoch: int,
    batches_in_epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: "torch.amp.GradScaler",
    rngs: List[dict],
    classes: Sequence[str],
) -> dict:
    """What a checkpoint holds; ``rngs`` are every rank's :func:`rng_state`, in rank order."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "epoch": epoch,
        "batches_in_epoch": batches_in_epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rngs,
        "classes": list(classes),
    }


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


# ---------------------------------------------------------------------------------------------------
# Starting or resuming a run
# ---------------------------------------------------------------------------------------------------


def resume_mismatches(saved: dict, current: dict) -> List[str]:
    """``"key: saved -> current"`` for every setting that differs and may not change on resume."""
    keys = sorted((set(saved) | set(current)) - RESUME_MAY_CHANGE)
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def prepare_run_dir(config: FinetuneConfig, world: int) -> Optional[dict]:
    """Check the run directory against ``--resume``; return the checkpoint to resume from, if any.

    A fresh run refuses a directory that already holds one; a resumed run needs a checkpoint written with
    the same settings (but :data:`RESUME_MAY_CHANGE`) by the same number of processes (``world``).
    """
    run_dir = Path(config.out)
    checkpoints = list_checkpoints(run_dir)
    current = json.loads(json.dumps(asdict(config)))
    if not config.resume:
        if checkpoints or (run_dir / "model.safetensors").exists():
            raise InputError("already holds a run; pass --resume to continue it, or choose another --out", run_dir)
        return None
    if not checkpoints:
        raise InputError("nothing to resume: no checkpoints/step-*.pt in the run directory", run_dir)
    saved_config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["finetune"]
    mismatches = resume_mismatches(saved_config, current)
    if mismatches:
        raise InputError(f"--resume with different settings: {'; '.join(mismatches[:4])}", run_dir / "config.json")
    state = load_checkpoint(checkpoints[-1])
    if len(state["rng"]) != world:
        raise InputError(
            f"checkpoint was written by {len(state['rng'])} process(es); resume with the same number "
            f"(now {world})",
            checkpoints[-1],
        )
    return state


def write_run_info(run_dir: Path, info: dict, classes: Sequence[str]) -> None:
    """``config.json`` (``info``: the settings and the run's sizes) and ``labels.txt`` (one class a line)."""
    write_json(run_dir / "config.json", info)
    with atomic_open(run_dir / "labels.txt", "w", encoding="utf-8") as fh:
        fh.write("".join(name + "\n" for name in classes))


def start_metrics(path: Path) -> None:
    """An empty ``metrics.jsonl`` for a fresh run."""
    with atomic_open(path, "w", encoding="utf-8"):
        pass


def truncate_metrics(path: Path, step: int) -> None:
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
