#!/usr/bin/env python
"""Run the I3D benchmark from a checkout: ``python tools/bench.py [--short] [--out BENCHMARKS.md] ...``.

The same as ``i3d-torch bench``; see :mod:`i3d_torch.apps.bench` for what is measured.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from i3d_torch.apps.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
