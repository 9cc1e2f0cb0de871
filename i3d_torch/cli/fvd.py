"""``i3d-torch fvd``: the command line of :mod:`i3d_torch.apps.fvd`: its options, the torchrun process group,
the warnings shown once each on stderr, and the printed result (one line, or one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Iterator, List

import numpy as np

from i3d_torch.apps.fvd import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PROTOCOL,
    MIN_FRAMES,
    PROTOCOLS,
    SmallSampleWarning,
    VideoSetStats,
    compute_stats,
    embedding_model,
    fvd,
    fvd_by_set_size,
    get_protocol,
    plot_fvd_by_set_size,
)
from i3d_torch.apps.fvd.videosets import too_few_frames
from i3d_torch.cli.common import check_device
from i3d_torch.core.defaults import DEFAULT_WEIGHTS
from i3d_torch.core.errors import InputError
from i3d_torch.pipeline import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Frechet Video Distance between two sets of videos, computed as the TF reference "
        "(google-research frechet_video_distance) does: every frame resized to 224x224 (TF1 bilinear), "
        "I3D Kinetics-400 logits averaged over time, Frechet distance of their Gaussians."
    )
    parser.add_argument(
        "real",
        help="the reference set: a folder of videos or frame folders, a .npy [N,T,H,W,3], or an .npz of statistics",
    )
    parser.add_argument(
        "fake",
        nargs="?",
        help="the set to evaluate (same forms); omit it to only cache REAL's statistics with --cache-stats",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--kvd", action="store_true", help="also compute the Kernel Video Distance (polynomial-kernel MMD)"
    )
    parser.add_argument(
        "--cache-stats",
        nargs="+",
        metavar="FILE.npz",
        default=[],
        help="statistics caches for REAL (and FAKE): read if valid, else written",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="T",
        help=f"use the first T frames of each video (T >= {MIN_FRAMES})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"videos per forward pass (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun, cuda means cuda:LOCAL_RANK)"
    )
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help=f"weights registry name or file (default {DEFAULT_WEIGHTS}, the TF-Hub module's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        metavar="NAME",
        help=f"how FVD is computed: {', '.join(PROTOCOLS)} (default {DEFAULT_PROTOCOL}, the TF reference; "
        f"see docs/fvd.md). Unknown names are refused",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="add a 95%% confidence interval from N resamples of both sets (seeded by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --bootstrap and --plot subsets (default 0)")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="write a PNG of FVD against the number of videos per set (needs matplotlib)",
    )


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    if len(args.cache_stats) > (2 if args.fake is not None else 1):
        raise InputError(f"--cache-stats takes one file per set (REAL, then FAKE), got {len(args.cache_stats)}")
    if args.frames is not None and args.frames < MIN_FRAMES:
        raise InputError(too_few_frames(args.frames, "--frames"))
    get_protocol(args.protocol)  # an unknown name fails before any work
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap takes a number of resamples >= 0, got {args.bootstrap}")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise InputError(f"--plot writes a PNG; give a FILE.png, got {args.plot}")
    progress = not args.quiet and sys.stderr.isatty()
    with warnings.catch_warnings(record=True) as caught, distributed.process_group(args.device):
        warnings.simplefilter("always", SmallSampleWarning)
        if args.fake is None:
            if not args.cache_stats:
                raise InputError("give FAKE, or --cache-stats FILE.npz to only compute REAL's statistics")
            result = _cache_only(args, progress)
        else:
            result = fvd(
                args.real,
                args.fake,
                weights=args.weights,
                frames=args.frames,
                batch_size=args.batch_size,
                device=args.device,
                kvd=args.kvd,
                cache_stats=args.cache_stats,
                progress=progress,
                protocol=args.protocol,
                bootstrap=args.bootstrap,
                seed=args.seed,
            )
            if args.plot is not None:
                _plot(args, progress)  # on every rank: embedding is sharded under torchrun
    if not distributed.is_main_process():
        return 0
    for warning in _unique_messages(caught):
        print(f"i3d-torch fvd: warning: {warning}", file=sys.stderr)
    if isinstance(result, VideoSetStats):
        _print_stats(result, args)
    elif args.json:
        print(json.dumps({**result.to_dict(), "real": str(args.real), "fake": str(args.fake)}, sort_keys=True))
    else:
        line = f"FVD {result.fvd:.4f}"
        if result.bootstrap is not None:
            ci = result.bootstrap
            line += f" [{ci['low']:.4f}, {ci['high']:.4f}] ({ci['confidence']:.0%}, {ci['n']} resamples)"
        if result.kvd is not None:
            no_std = result.kvd_std is None or np.isnan(result.kvd_std)
            line += f"  KVD {result.kvd:.6g}" + ("" if no_std else f" (std {result.kvd_std:.3g})")
        print(
            f"{line}  ({result.n_real} real, {result.n_fake} fake videos of {result.frames} frames; "
            f"{result.model_name}; protocol {result.protocol} {result.protocol_hash})"
        )
    return 0


def _plot(args: argparse.Namespace, progress: bool) -> None:
    """FVD on random subsets of growing size, as a PNG. The statistics come from the caches when given (the
    embeddings are in them), else the sets are embedded again: give --cache-stats to embed once."""
    model = None
    stats = []
    caches = list(args.cache_stats) + [None] * 2
    for source, cache, role in ((args.real, caches[0], "real"), (args.fake, caches[1], "fake")):
        if cache is None and str(source).endswith(".npz"):
            stats.append(VideoSetStats.load(source))
            continue
        if model is None:
            model = embedding_model(args.weights, args.device)
        stats.append(
            compute_stats(
                source,
                model,
                frames=args.frames,
                batch_size=args.batch_size,
                device=args.device,
                progress=progress,
                cache=cache,
                protocol=args.protocol,
                role=role,
            )
        )
    if not distributed.is_main_process():
        return
    curve = fvd_by_set_size(stats[0].embeddings, stats[1].embeddings, args.protocol, seed=args.seed)
    plot_fvd_by_set_size(curve, args.plot, title=f"FVD ({args.protocol}) against the number of videos")


def _cache_only(args: argparse.Namespace, progress: bool) -> VideoSetStats:
    return compute_stats(
        args.real,
        embedding_model(args.weights, args.device),
        frames=args.frames,
        batch_size=args.batch_size,
        device=args.device,
        progress=progress,
        cache=args.cache_stats[0],
        protocol=args.protocol,
    )


def _print_stats(stats: VideoSetStats, args: argparse.Namespace) -> None:
    summary = {
        "stats": str(args.cache_stats[0]),
        "n": stats.n,
        "frames": stats.frames,
        "model": stats.model_name,
        "model_sha256": stats.model_sha256,
        "protocol": get_protocol(args.protocol).name,
        "protocol_hash": get_protocol(args.protocol).spec_hash,
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"statistics of {stats.n} videos of {stats.frames} frames written to {args.cache_stats[0]}")


def _unique_messages(caught: List[warnings.WarningMessage]) -> Iterator[str]:
    seen = set()
    for item in caught:
        message = " ".join(str(item.message).split())
        if message not in seen:
            seen.add(message)
            yield message
