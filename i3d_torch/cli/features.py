"""``i3d-torch features``: I3D features of videos as ``.npy`` files with a JSONL manifest (resumable, torchrun-ready).

Extraction is :func:`i3d_torch.apps.features.extract_features`; this module parses the options and prints
the run's one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import sys

from i3d_torch.apps.features import FORMATS, extract_features
from i3d_torch.cli.common import add_clip_arguments, check_device, clip_options
from i3d_torch.core.defaults import DEFAULT_FLOW_WEIGHTS
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.windows import PAD_POLICIES

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
    sets = parser.add_argument_group(
        "feature sets (localization, anomaly detection)",
        "any of these also writes, per feature, its first/last frame and start/end seconds, and the settings "
        "(fps, window, step, endpoint, crops, streams, weights sha256) into every output; see docs/predict_features.md",
    )
    sets.add_argument(
        "--keep-crops",
        action="store_true",
        help="keep the crops as an axis of the output ([windows, crops, dim]) instead of averaging them; "
        "with --crop ten: four corners, centre and their mirror images",
    )
    sets.add_argument(
        "--window", type=int, default=None, metavar="N", help="dense windows: N frames per feature (instead of "
        "--clip-frames)"
    )
    sets.add_argument("--step", type=int, default=None, metavar="S", help="frames between features (default 1)")
    sets.add_argument(
        "--centre",
        "--center",
        dest="centre",
        action="store_true",
        help="centre each window on its frame (MS-TCN style) instead of starting it there",
    )
    sets.add_argument(
        "--pad",
        default="edge",
        choices=PAD_POLICIES,
        help="windows reaching past the video's ends: repeat the edge frame (default), zeros, or drop them",
    )
    sets.add_argument(
        "--streams",
        default=None,
        help="rgb, flow or rgb,flow (side by side, flow computed once per video; default: the --weights' own)",
    )
    sets.add_argument(
        "--flow-weights",
        default=DEFAULT_FLOW_WEIGHTS,
        help="weights of the flow stream (default: %(default)s)",
    )
    sets.add_argument("--format", default="npy", choices=FORMATS, help="npy (default) or h5 (needs h5py)")
    sets.add_argument(
        "--single-file", action="store_true", help="with --format h5: one features.h5 with a group per video"
    )
    sets.add_argument(
        "--timestamps", action="store_true", help="write the time stamps and settings sidecar with no other option"
    )


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    summary = extract_features(
        args.input,
        args.out,
        **clip_options(args),
        endpoint=args.endpoint,
        pool=not args.no_pool,
        quiet=args.quiet,
        keep_crops=args.keep_crops,
        window=args.window,
        step=args.step,
        centre=args.centre,
        pad=args.pad,
        streams=args.streams,
        flow_weights=args.flow_weights,
        fmt=args.format,
        single_file=args.single_file,
        timestamps=args.timestamps or None,
    )
    rank = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.is_distributed() else ""
    print(
        f"i3d-torch features{rank}: {summary.done} extracted, {summary.skipped} already done, {summary.failed} failed; "
        f"manifest: {summary.manifest}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0
