"""``i3d-torch predict``: the top-k Kinetics labels of each video, as a table or JSON lines, with an optional plot.

Scoring is :func:`i3d_torch.apps.classify.classify_many`; this module parses the options, prints the results
as they come (one video that fails prints one error line and the rest go on) and draws ``--plot``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from i3d_torch.apps.classify import Classification, classify_many
from i3d_torch.cli.common import add_clip_arguments, check_device, clip_options
from i3d_torch.core.defaults import DEFAULT_FLOW_WEIGHTS
from i3d_torch.core.errors import I3DError, InputError
from i3d_torch.pipeline.running import progress_bar

__all__ = ["add_arguments", "format_table", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Top-k Kinetics labels for each video. Whole-video scores are the mean of the window logits, then a softmax."
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (or frame folders)")
    add_clip_arguments(parser)
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to show (default: %(default)s)")
    parser.add_argument("--per-window", action="store_true", help="also print the top classes of every window")
    parser.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the top classes' probabilities over time; with several videos, one file per video named "
        "FILE.N.VIDEONAME.png",
    )
    parser.add_argument("--flow", action="store_true", help="add the TV-L1 optical-flow stream (slow on CPU)")
    parser.add_argument("--flow-weights", default=DEFAULT_FLOW_WEIGHTS, help="flow model (default: %(default)s)")


def format_table(result: Classification, per_window: bool, top_k: int) -> str:
    plural = "s" if len(result.windows) != 1 else ""
    lines = [
        f"{result.video}  ({result.frames} frames at {result.fps:g} fps, {len(result.windows)} window{plural}, "
        f"{result.frames / result.fps:.2f} s)",
        f"  {'prob':>7}  {'logit':>7}  label",
    ]
    lines += [f"  {p.prob:7.4f}  {p.logit:7.3f}  {p.label}" for p in result.top]
    if per_window:
        for w in result.windows:
            tops = ", ".join(f"{p.label} {p.prob:.3f}" for p in w.top(result.categories, min(top_k, 3)))
            lines.append(f"    [{w.start_s:7.2f} - {w.end_s:7.2f} s] frames {w.start}-{w.end}: {tops}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    plot_files = None
    if args.plot:
        from i3d_torch.apps.plotting import plot_paths

        plot_files = plot_paths(args.plot, args.videos)
    failures = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(progress_bar(args.quiet, "predict", "frame"))
        results = classify_many(
            args.videos,
            **clip_options(args),
            top_k=args.top,
            flow=args.flow,
            flow_weights=args.flow_weights,
            progress=bar.update,
        )
        stack.callback(results.close)
        for index, result in results:
            if isinstance(result, I3DError):
                failures += 1
                bar.clear()
                print(f"i3d-torch predict: error: {result}", file=sys.stderr, flush=True)
                continue
            if plot_files is not None:
                from i3d_torch.apps.plotting import plot_timeline

                plot_timeline(result, plot_files[index], top_k=args.top)
            bar.clear()
            if args.json:
                print(json.dumps(result.to_dict()), flush=True)
            else:
                print(format_table(result, args.per_window, args.top) + "\n", flush=True)
    if failures:
        print(f"i3d-torch predict: {failures} of {len(args.videos)} video(s) failed", file=sys.stderr)
        return 1
    return 0
