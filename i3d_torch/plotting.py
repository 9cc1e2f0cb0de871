"""Pictures of results: the timeline of class probabilities over a video (``i3d-torch predict --plot``).

matplotlib is an optional dependency (``pip install i3d-torch[plot]``); it is imported only here, with the
non-interactive Agg backend so plotting works on servers without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from .errors import InputError
from .fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .inference import Classification

PathLike = Union[str, "os.PathLike[str]"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("plotting needs matplotlib: pip install 'i3d-torch[plot]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def plot_timeline(result: "Classification", path: PathLike, top_k: int = 5) -> Path:
    """Draw the probability of the video's ``top_k`` classes in each window over time; write a PNG.

    Each window's softmax is plotted at the window's centre time, with the window spans shaded at the
    bottom so a reader sees what each point covers. Written atomically (a temporary file renamed).
    """
    plt = _pyplot()
    path = Path(path)
    if not result.windows:
        raise InputError("nothing to plot: the result has no windows", path)
    window_logits = np.stack([w.logits for w in result.windows])  # W x K
    window_probs = softmax(window_logits.astype(np.float64))
    centres = np.array([(w.start_s + w.end_s) / 2 for w in result.windows])
    classes = [p.index for p in result.top[:top_k]]
    labels = {p.index: p.label for p in result.top}

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        for index in classes:
            ax.plot(centres, window_probs[:, index], marker="o", markersize=3, label=labels[index])
        for w in result.windows:
            ax.axvspan(w.start_s, w.end_s, ymin=0, ymax=0.02, color="0.6", alpha=0.3, linewidth=0)
        duration = max(w.end_s for w in result.windows)
        ax.set_xlim(0, max(duration, 1e-3))
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s), each point at the centre of its window")
        ax.set_ylabel("probability (per-window softmax)")
        ax.set_title(f"{Path(str(result.video)).name}: top {len(classes)} classes over {len(result.windows)} window(s)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def plot_paths(plot: PathLike, videos: list) -> list:
    """The PNG file for each video: ``plot`` itself for one video; for several, ``STEM.N.VIDEONAME.png``
    beside it (N is the video's position in the command line, so equal video names cannot collide)."""
    plot = Path(plot)
    if len(videos) == 1:
        return [plot]
    stem = plot.name[: -len(plot.suffix)] if plot.suffix else plot.name
    suffix = plot.suffix or ".png"
    return [plot.with_name(f"{stem}.{i}.{Path(str(v)).name}{suffix}") for i, v in enumerate(videos)]
