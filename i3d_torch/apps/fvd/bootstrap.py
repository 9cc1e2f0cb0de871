"""Error bars for FVD: a seeded bootstrap over both sets, and FVD against the number of videos (with a plot).

The bootstrap resamples the real and the generated embeddings with replacement (each to its own size), computes
the protocol's FVD on every resample, and reports the percentile interval. It measures how much the number moves
with the choice of videos; it does not remove FVD's small-sample bias (a resample has fewer distinct videos, so
its FVD is biased upwards a little more than the full set's: the interval sits slightly above the point value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from i3d_torch.apps.fvd.protocols import Protocol, embeddings_distance, get_protocol
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_open


@dataclass(frozen=True)
class BootstrapInterval:
    n: int
    seed: int
    confidence: float
    low: float
    high: float
    std: float

    def to_dict(self) -> Dict[str, Any]:
        return {
            "n": self.n,
            "seed": self.seed,
            "confidence": self.confidence,
            "low": self.low,
            "high": self.high,
            "std": self.std,
        }


def bootstrap_samples(real: np.ndarray, fake: np.ndarray, protocol: Any, *, n: int, seed: int = 0) -> np.ndarray:
    """``n`` FVDs of resampled sets (both resampled with replacement, from ``numpy.random.default_rng(seed)``)."""
    if n < 1:
        raise InputError(f"bootstrap takes a number of resamples >= 1, got {n}")
    protocol = get_protocol(protocol)
    real = np.asarray(real, np.float64)[: protocol.max_videos("real")]
    fake = np.asarray(fake, np.float64)[: protocol.max_videos("fake")]
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    for k in range(n):
        values[k] = embeddings_distance(
            real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))], protocol
        )
    return values


def bootstrap_fvd(
    real: np.ndarray, fake: np.ndarray, protocol: Any, *, n: int, seed: int = 0, confidence: float = 0.95
) -> BootstrapInterval:
    """Percentile interval of the bootstrap FVDs at ``confidence`` (0.95: the 2.5th and 97.5th percentiles)."""
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be between 0 and 1, got {confidence}")
    values = bootstrap_samples(real, fake, protocol, n=n, seed=seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return BootstrapInterval(n, seed, confidence, float(low), float(high), float(values.std(ddof=1) if n > 1 else 0))


def fvd_by_set_size(
    real: np.ndarray,
    fake: np.ndarray,
    protocol: Any,
    *,
    sizes: Optional[Sequence[int]] = None,
    repeats: int = 5,
    seed: int = 0,
) -> List[Tuple[int, float, float]]:
    """FVD on random subsets of ``k`` videos of each set (without replacement): ``(k, mean, std)`` per size."""
    protocol: Protocol = get_protocol(protocol)
    m = min(len(real), len(fake))
    if sizes is None:
        sizes = sorted({int(s) for s in np.unique(np.geomspace(2, m, num=min(8, max(2, m - 1))).round())})
    rng = np.random.default_rng(seed)
    curve = []
    for k in sizes:
        if not 2 <= k <= m:
            raise InputError(f"subset size {k} is outside 2..{m}")
        vals = [
            embeddings_distance(
                real[rng.choice(len(real), k, replace=False)], fake[rng.choice(len(fake), k, replace=False)], protocol
            )
            for _ in range(repeats)
        ]
        curve.append((int(k), float(np.mean(vals)), float(np.std(vals))))
    return curve


def plot_fvd_by_set_size(curve: Sequence[Tuple[int, float, float]], path: Any, *, title: str = "") -> None:
    """A PNG of FVD against the number of videos per set (needs matplotlib: ``pip install i3d-torch[plot]``)."""
    try:  # a Figure of its own, not pyplot: the caller's backend and figures are left alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("the FVD plot needs matplotlib (pip install 'i3d-torch[plot]')") from None
    sizes, means, stds = (np.array(v) for v in zip(*curve))
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("videos per set")
    ax.set_ylabel("FVD (mean ± std over subsets)")
    ax.set_title(title or "FVD against the number of videos")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
