"""``i3d-torch bench``: time I3D's forward on the project's engines (and its peers, from a checkout); print the report.

What is measured and how is :mod:`i3d_torch.apps.bench`; this module turns the command line into a
:class:`~i3d_torch.apps.bench.BenchSettings`, checks it, and prints or writes the report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from i3d_torch.apps.bench import BenchSettings, memory_child, run_benchmark
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_open, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Benchmark I3D's forward pass: every engine of this project against TF, in one run."
    parser.add_argument("--short", action="store_true",
                        help="CI smoke run: 9 frames, batch 1, one repeat, cheap engines")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="clip lengths (default 16 64)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per engine (default 5)")
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[1, 8, 32, 64],
                        help="batch sizes of the GPU table (CUDA only; default 1 8 32 64)")
    parser.add_argument("--gpu-frames", type=int, default=64, help="clip length of the GPU table (default 64)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="the GPU table alone: no CPU engines, CPU memory or CPU end-to-end runs")
    parser.add_argument("--gpu-budget", type=float, default=None, metavar="SECONDS",
                        help="start no new GPU measurement after this many seconds (the rest is listed as not run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every engine (torch, TF intra-op, onnxruntime); default: one per core")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per engine before timing (default 2: the first builds, compiles or "
                             "packs; the second still page-faults part of a forward's buffers into the process)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed calls after which an engine stops at two samples")
    parser.add_argument("--weights", default="auto",
                        help="weights name or 'random' (default: rgb_kinetics400 when on disk, else random)")
    parser.add_argument("--skip", nargs="*", default=[], help="skip engines whose name contains any of these")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-engine peak-memory processes")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the encoded-video run")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results as JSON here")
    # The benchmark starts itself with this to measure one engine's peak memory in a fresh process.
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)


def _validate(args: argparse.Namespace) -> None:
    for name in ("frames", "batch"):
        values = getattr(args, name) or []
        if any(v < 1 for v in values):
            raise InputError(f"--{name} values must be positive, got {values}")
    if any(b < 1 for b in args.gpu_batch):
        raise InputError(f"--gpu-batch values must be positive, got {args.gpu_batch}")
    if args.gpu_frames < 9:
        raise InputError(f"--gpu-frames must be at least 9 (the Logits head's 2x7x7 pool), got {args.gpu_frames}")
    if any(f < 9 for f in args.frames or []):
        raise InputError(f"--frames must be at least 9 (the Logits head's 2x7x7 pool), got {args.frames}")
    if args.repeats is not None and args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 1:
        raise InputError(f"--warmup must be at least 1 (the first call builds each engine), got {args.warmup}")


def _command_line() -> str:
    """The command as the user typed it, for the report (also when started as ``python tools/bench.py``)."""
    argv = sys.argv[1:]
    if argv and argv[0] == "bench":
        return "i3d-torch " + " ".join(shlex.quote(a) for a in argv)
    return "i3d-torch bench " + " ".join(shlex.quote(a) for a in argv)


def run(args: argparse.Namespace) -> int:
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.frames[0], args.batch[0])))
        return 0
    _validate(args)
    settings = BenchSettings(
        short=args.short,
        frames=args.frames,
        batch=args.batch,
        repeats=args.repeats,
        gpu_batch=args.gpu_batch,
        gpu_frames=args.gpu_frames,
        gpu_only=args.gpu_only,
        gpu_budget_s=args.gpu_budget,
        threads=args.threads,
        warmup=args.warmup,
        budget_s=args.budget,
        weights=args.weights,
        skip=args.skip,
        memory=not args.no_memory,
        end_to_end=not args.no_end_to_end,
    )
    report = run_benchmark(settings, command=_command_line())
    text = report.markdown()
    print(text)
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    if args.json:
        write_json(args.json, report.to_dict())
    return 0
