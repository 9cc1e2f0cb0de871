"""The training run: :func:`finetune` plans the epochs, builds the network and optimiser, trains, validates,
checkpoints and saves the final model.

A run is one :class:`_Run`. Its pieces, in the order a run meets them: :func:`plan_run` (the data sets
and the number of steps), :meth:`_Run._build` (network, optimiser, DistributedDataParallel, the clip data
set), :meth:`_Run._start` (a fresh run directory, or the state of the checkpoint to resume from), then
per epoch :meth:`_Run._train_epoch` (micro-batches, optimizer steps, metric lines, checkpoints) and
:meth:`_Run._validate`, and :meth:`_Run._finish` (``model.safetensors`` and the confusion matrix).

Every rank of a torchrun job runs the same code; rank r takes items r, r+K, ... of each epoch's shuffled
order (:func:`epoch_order`), so a step's global batch is the same videos whatever the number of processes.
Only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from i3d_torch.apps.finetune import checkpoint
from i3d_torch.apps.finetune.config import FinetuneConfig, make_config
from i3d_torch.apps.finetune.metrics import EvalResult, evaluate, log_metrics, val_record, write_confusion
from i3d_torch.apps.finetune.network import amp_forward, freeze, resolve_device, set_train_mode, starting_model
from i3d_torch.apps.finetune.optim import build_optimizer, lr_at_step
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.data import VideoClips, VideoList, decoding_worker_init, discover, iterate_batches
from i3d_torch.pipeline.running import out_of_memory
from i3d_torch.weights.registry import save_model

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class FinetuneResult:
    """Where a finished run put its outputs, and how it ended."""

    run_dir: Path
    model_path: Path
    steps: int
    classes: List[str]
    final_eval: Optional[EvalResult]
    model: InceptionI3d  # the trained network (this rank's copy, eval mode)


def finetune(data: PathLike, out: PathLike, **options) -> FinetuneResult:
    """Fine-tune I3D on the videos of ``data`` and write the run to ``out``.

    ``data`` (and ``val``) is a folder of class subfolders, a ``path,label`` CSV, or a data root with
    ``split_files``. Every option of :class:`FinetuneConfig` is a keyword argument, e.g.
    ``finetune("videos/", "runs/a", epochs=5, freeze_until="Mixed_4f", val="val.csv")``. Works the same
    inside a torchrun job (then every rank calls it).
    """
    config = make_config(data, out, **options)
    with distributed.process_group("cuda" if resolve_device(config.device).type == "cuda" else "cpu"):
        return _Run(config).train()


# ---------------------------------------------------------------------------------------------------
# What a run trains on, and for how long
# ---------------------------------------------------------------------------------------------------


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


@dataclass
class RunPlan:
    """The data sets of a run and its length in optimizer steps."""

    train_videos: VideoList
    val_videos: Optional[VideoList]
    per_step: int  # clips one rank sees per optimizer step (batch x accumulate)
    world: int
    steps_per_epoch: int

    @property
    def classes(self) -> List[str]:
        return self.train_videos.classes

    @property
    def global_batch_size(self) -> int:
        return self.per_step * self.world

    def total_steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs


def plan_run(config: FinetuneConfig, rank: int, world: int) -> RunPlan:
    """Find the videos and count the steps; a validation split file over the training root implies ``val``."""
    train_videos = discover(config.data, config.split_files, "train", min_classes=2)
    if config.val is None and config.val_split_files:
        config.val = config.data  # recorded in config.json, so a resumed run compares like with like
    val_videos = None
    if config.val is not None:
        val_videos = discover(config.val, config.val_split_files or None, "test").with_classes(train_videos.classes)
    per_step = config.batch_size * config.accumulate
    steps_per_epoch = len(epoch_order(len(train_videos), 0, config.seed, world, rank, per_step)) // per_step
    if steps_per_epoch == 0:
        raise InputError(
            f"{len(train_videos)} training videos are fewer than one step "
            f"(batch {config.batch_size} x accumulate {config.accumulate} x {world} process(es))",
            config.data,
        )
    return RunPlan(train_videos, val_videos, per_step, world, steps_per_epoch)


class _Tally:
    """Clips, summed loss and correct predictions since the last :meth:`reset`, and when that was."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.correct, self.clips, self.since = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, correct: int, clips: int) -> None:
        self.loss += loss * clips
        self.correct += correct
        self.clips += clips


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


class _Run:
    """One fine-tuning run: the state shared by the training loop, checkpoints and evaluation."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.run_dir = Path(config.out)
        self.device = resolve_device(config.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if config.amp == "fp16" and self.device.type != "cuda":
            raise InputError("--amp fp16 needs a CUDA device (use bf16 on CPU)")
        self.plan = plan_run(config, self.rank, self.world)
        self.classes = self.plan.classes
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total_steps = self.plan.total_steps(config.epochs)

    def train(self) -> FinetuneResult:
        config = self.config
        resume_state = checkpoint.prepare_run_dir(config, self.world)
        distributed.barrier()  # every rank has checked the directory before rank 0 writes to it
        self._build()
        step, start_epoch, skip = self._start(resume_state)
        del resume_state

        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=step,
            file=sys.stderr,
            disable=not (config.progress and distributed.is_main_process()),
            unit="step",
            dynamic_ncols=True,
        )
        last_eval: Optional[EvalResult] = None
        try:
            for epoch in range(start_epoch, config.epochs):
                step = self._train_epoch(epoch, step, skip if epoch == start_epoch else 0, bar)
                due = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
                if self.plan.val_videos is not None and due:
                    last_eval = self._validate(epoch, step)
                self._checkpoint(step, epoch + 1, 0)
        except torch.cuda.OutOfMemoryError as exc:  # training or validation: --batch-size sets both
            raise out_of_memory(exc) from None
        finally:
            bar.close()
        if last_eval is None and self.plan.val_videos is not None:
            last_eval = self._validate(config.epochs - 1, step)  # a resumed run that had already finished
        return self._finish(step, last_eval)

    # -- setup -------------------------------------------------------------------------------------

    def _build(self) -> None:
        """Network, optimiser, gradient scaler, DDP wrapper and the training clips, from the run's seed."""
        config = self.config
        checkpoint.seed_everything(config.seed + self.rank)
        self.model = starting_model(config, len(self.classes), self.device)
        self.frozen = freeze(self.model, config.freeze_until)
        if config.sync_bn:
            distributed.convert_sync_batchnorm(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, trainable)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.dataset = VideoClips(
            self.plan.train_videos,
            config.clip_frames,
            train=True,
            fps=config.fps,
            short_side=config.short_side,
            crop_size=config.crop_size,
            seed=config.seed,
            flip=config.flip,
        )

    def _start(self, resume_state: Optional[dict]) -> Tuple[int, int, int]:
        """``(step, epoch, batches into that epoch)`` to start from: a checkpoint's, or zeros for a fresh run
        (whose ``config.json``, ``labels.txt`` and empty ``metrics.jsonl`` are written now)."""
        main = distributed.is_main_process()
        metrics = self.run_dir / "metrics.jsonl"
        if resume_state is not None:
            position = self._restore(resume_state)
            if main:
                checkpoint.truncate_metrics(metrics, position[0])
            return position
        if main:
            checkpoint.write_run_info(self.run_dir, self._run_info(), self.classes)
            checkpoint.start_metrics(metrics)
        return 0, 0, 0

    def _run_info(self) -> dict:
        return {
            "finetune": asdict(self.config),
            "classes": self.classes,
            "train_videos": len(self.plan.train_videos),
            "val_videos": len(self.plan.val_videos) if self.plan.val_videos else 0,
            "world_size": self.world,
            "global_batch_size": self.plan.global_batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "torch": torch.__version__,
        }

    def _restore(self, state: dict) -> Tuple[int, int, int]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"][self.rank])
        return int(state["step"]), int(state["epoch"]), int(state["batches_in_epoch"])

    def _checkpoint(self, step: int, epoch: int, batches_in_epoch: int) -> None:
        rngs = distributed.gather_objects(checkpoint.rng_state())  # collective: every rank takes part
        if not distributed.is_main_process():
            return
        state = checkpoint.checkpoint_state(
            step=step,
            epoch=epoch,
            batches_in_epoch=batches_in_epoch,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            rngs=rngs,
            classes=self.classes,
        )
        checkpoint.save_checkpoint(checkpoint.checkpoint_path(self.run_dir, step), state, self.config.keep_checkpoints)

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        """This rank's batches of ``epoch``, from batch ``skip_batches`` on (a resumed epoch skips those done)."""
        config = self.config
        order = epoch_order(len(self.dataset), epoch, config.seed, self.world, self.rank, self.plan.per_step)
        self.dataset.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=order[skip_batches * config.batch_size :],
            num_workers=config.num_workers,
            worker_init_fn=decoding_worker_init,
            # Its own generator, so creating the loader never draws from the global torch stream (which
            # dropout uses): a resumed run creates loaders at different moments than an uninterrupted one.
            generator=torch.Generator().manual_seed(config.seed),
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )

    # -- training --------------------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, step: int, skip_batches: int, bar) -> int:
        """Train one epoch from batch ``skip_batches``; returns the step count after it."""
        config = self.config
        set_train_mode(self.model, self.frozen, config.freeze_bn)
        window, whole_epoch = _Tally(), _Tally()
        for batch_index, (clips, labels, _) in enumerate(iterate_batches(self._loader(epoch, skip_batches)),
                                                         start=skip_batches):
            last_of_step = (batch_index + 1) % config.accumulate == 0
            loss, correct = self._micro_batch(clips, labels, last_of_step)
            window.add(loss, correct, len(labels))
            whole_epoch.add(loss, correct, len(labels))
            if not last_of_step:
                continue
            self._optimizer_step(step)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step % self.steps_per_epoch == 0:
                self._log_window(window, epoch, step, bar)
                window.reset()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step % self.steps_per_epoch:
                self._checkpoint(step, epoch, batch_index + 1)
        if whole_epoch.clips:
            totals = distributed.gather_objects((whole_epoch.loss, whole_epoch.correct, whole_epoch.clips))
            loss_sum, correct, count = (sum(t[i] for t in totals) for i in range(3))
            record = {"kind": "train_epoch", "step": step, "epoch": epoch}
            log_metrics(self.run_dir, {**record, "loss": loss_sum / count, "accuracy": correct / count})
        return step

    def _micro_batch(self, clips: torch.Tensor, labels: torch.Tensor, last_of_step: bool) -> Tuple[float, int]:
        """Forward and backward of one micro-batch; its mean loss and number of correct top-1 predictions."""
        config = self.config
        clips = clips.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        # Gradients are all-reduced only on the micro-batch that completes an optimizer step.
        sync = self.net.no_sync() if (self.world > 1 and not last_of_step) else nullcontext()
        with sync:
            logits = amp_forward(self.net, clips, config.amp).float()
            loss = F.cross_entropy(logits, labels)
            self.scaler.scale(loss / config.accumulate).backward()
        return float(loss.detach()), int((logits.argmax(1) == labels).sum())

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

    def _log_window(self, window: _Tally, epoch: int, step: int, bar) -> None:
        """The ``train`` metric line of the steps since the last one, and the progress bar's figures."""
        elapsed = time.perf_counter() - window.since
        rate = window.clips * self.world / max(elapsed, 1e-9)
        record = {
            "kind": "train",
            "step": step,
            "epoch": epoch,
            "loss": window.loss / window.clips,
            "lr": lr_at_step(self.config, step - 1, self.total_steps),
            "clips_per_s": rate,
        }
        bar.set_postfix(loss=f"{record['loss']:.4f}", clips_per_s=f"{rate:.1f}")
        log_metrics(self.run_dir, record)

    # -- validation and the end ------------------------------------------------------------------------

    def _validate(self, epoch: int, step: int) -> EvalResult:
        config = self.config
        result = evaluate(
            self.model,
            self.plan.val_videos,
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
        log_metrics(self.run_dir, val_record(result, epoch, step))
        return result

    def _finish(self, step: int, last_eval: Optional[EvalResult]) -> FinetuneResult:
        model_path = self.run_dir / "model.safetensors"
        if distributed.is_main_process():
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
                write_confusion(last_eval, self.run_dir)
        distributed.barrier()
        return FinetuneResult(self.run_dir, model_path, step, list(self.classes), last_eval, self.model.eval())
