"""``i3d-torch weights list | fetch NAME``: the registered weights, and fetching one into the cache.

The registry is :mod:`i3d_torch.weights.registry`; this module parses the options and prints the table.
"""

from __future__ import annotations

import argparse
import json

from i3d_torch.weights.registry import cache_dir, fetch_weights, list_weights

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="registered weights: name, modality, classes, present, sha256")
    listing.add_argument("--json", action="store_true")
    fetching = sub.add_parser("fetch", help="fetch and convert registered weights into the cache")
    fetching.add_argument("name")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        print(fetch_weights(args.name))
        return 0
    rows = [
        {
            "name": w.name,
            "modality": w.modality,
            "classes": w.num_classes,
            "present": w.is_present(),
            "fetchable": bool(w.fetch),
            "sha256": w.sha256 or "",
            "path": str(w.path),
        }
        for w in list_weights()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<28} {'modality':<8} {'classes':>7}  {'present':<8} sha256")
    for r in rows:
        present = "yes" if r["present"] else ("fetch" if r["fetchable"] else "no")
        print(f"{r['name']:<28} {r['modality']:<8} {r['classes']:>7}  {present:<8} {r['sha256'] or '(not known)'}")
    print(f"cache: {cache_dir() / 'weights'}")
    return 0
