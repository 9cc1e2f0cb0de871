"""``i3d-torch features``: I3D features of videos as ``.npy`` files with a JSONL manifest (resumable, torchrun-ready).

Extraction is :func:`i3d_torch.apps.features.extract_features`; this module parses the options and prints
the run's one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import sys

from i3d_torch.apps.features import extract_features
from i3d_torch.cli.common import add_clip_arguments, clip_options
from i3d_torch.pipeline import distributed

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "I3D features of videos as .npy files (per window and averaged over the video) with a JSONL manifest. "
        "Resumable; shard over processes with torchrun."
    )
    parser.add_argument(
        "input", metavar="INPUT", help="a video, a folder (searched recursively) or a text file of paths"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument(
        "--endpoint",
        default="pooled",
        help="pooled (1024-d average of Mixed_5c, default), logits (time-averaged logits) or any endpoint name "
        "(Mixed_4f, ...)",
    )
    parser.add_argument(
        "--no-pool", action="store_true", help="keep raw endpoint maps [C, T, H, W] instead of averaging them"
    )
    add_clip_arguments(parser)


def run(args: argparse.Namespace) -> int:
    summary = extract_features(
        args.input,
        args.out,
        **clip_options(args),
        endpoint=args.endpoint,
        pool=not args.no_pool,
        quiet=args.quiet,
    )
    rank = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.is_distributed() else ""
    print(
        f"i3d-torch features{rank}: {summary.done} extracted, {summary.skipped} already done, {summary.failed} failed; "
        f"manifest: {summary.manifest}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0
