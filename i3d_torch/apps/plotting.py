"""Pictures of results: the timeline of class probabilities over a video (``i3d-torch predict --plot``).

This module only draws; the numbers come from :func:`i3d_torch.apps.timeline.timeline`. matplotlib is an
optional dependency (``pip install i3d-torch[plot]``); it is imported only here, with the non-interactive Agg
backend so plotting works on servers without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

from i3d_torch.apps.timeline import timeline
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from i3d_torch.apps.classify import Classification

PathLike = Union[str, "os.PathLike[str]"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("plotting needs matplotlib: pip install 'i3d-torch[plot]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_timeline(result: "Classification", path: PathLike, top_k: int = 5) -> Path:
    """Draw the probability of the video's ``top_k`` classes over time; write a PNG atomically.

    The curve follows the network's own per-time predictions (one point per 8 frames, 0.32 s at 25 fps);
    the windows are shaded along the bottom so a reader sees what was scored together.
    """
    plt = _pyplot()
    path = Path(path)
    if not result.windows:
        raise InputError("nothing to plot: the result has no windows", path)
    seconds, probs = timeline(result)
    classes = [p.index for p in result.top[:top_k]]
    labels = {p.index: p.label for p in result.top}

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        for index in classes:
            ax.plot(
                seconds, probs[:, index], marker="o", markersize=3, label=f"{labels[index]} ({result.probs[index]:.2f})"
            )
        for i, w in enumerate(result.windows):
            band = 0.02 + 0.015 * (i % 2)  # alternate heights so overlapping windows stay distinguishable
            ax.axvspan(w.start_s, w.end_s, ymin=band - 0.015, ymax=band, color="0.5", alpha=0.4, linewidth=0)
        ax.set_xlim(0, max(max(w.end_s for w in result.windows), 1e-3))
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"time (s); grey bars: the {len(result.windows)} scored window(s)")
        ax.set_ylabel("probability over time")
        ax.set_title(f"{Path(str(result.video)).name}: top {len(classes)} classes (video probability in brackets)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
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
