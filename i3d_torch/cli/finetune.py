"""``i3d-torch finetune``: the command-line options of :func:`i3d_torch.apps.finetune.finetune`, one per
:class:`~i3d_torch.apps.finetune.FinetuneConfig` field, and the one-line summary it prints on rank 0."""

from __future__ import annotations

import argparse
from dataclasses import fields

from i3d_torch.apps.finetune import SCRATCH, FinetuneConfig, finetune
from i3d_torch.apps.finetune.config import FREEZABLE_ENDPOINTS
from i3d_torch.cli.common import check_device
from i3d_torch.pipeline import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig(data="", out="")
    parser.description = (
        "Fine-tune I3D on your labelled videos (a folder of class subfolders, a path,label CSV, or UCF101/"
        "HMDB51 split files). Defaults follow the paper: SGD momentum 0.9, weight decay 1e-7, dropout "
        "keep-probability 0.5, step learning-rate schedule. Multi-GPU: torchrun --nproc-per-node K -m "
        "i3d_torch finetune ..."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True,
                      help="training videos: folder of class subfolders, CSV, or split-file root")
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
    model.add_argument("--freeze-until", choices=FREEZABLE_ENDPOINTS, metavar="ENDPOINT",
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
    check_device(args.device)
    options = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)}
    data, out = options.pop("data"), options.pop("out")
    result = finetune(data, out, **options)
    if distributed.is_main_process():
        summary = f"wrote {result.model_path} ({len(result.classes)} classes, {result.steps} steps)"
        if result.final_eval is not None:
            summary += f"; validation top-1 {result.final_eval.top1:.1%}, top-5 {result.final_eval.top5:.1%}"
        print(summary)
    return 0
