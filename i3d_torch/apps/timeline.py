"""The timeline of a classification: class probabilities over the video, from the network's own steps.

I3D's logits head sees the video in steps of 8 frames before it averages over time; each window's
per-time logits (:attr:`~i3d_torch.apps.classify.WindowResult.time_logits`) are placed at the video frames
they cover, averaged where overlapping windows score the same frame, and turned into probabilities.
:mod:`i3d_torch.apps.plotting` draws the result.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from i3d_torch.apps.classify import Classification, softmax

__all__ = ["timeline"]


def timeline(result: Classification) -> Tuple[np.ndarray, np.ndarray]:
    """``(seconds [P], probabilities [P, K])``: the network's per-time logits of every window (one step per
    8 frames), averaged where overlapping windows give the same frame, then softmaxed. Windows without
    per-time logits contribute their logits at their centre."""
    by_frame: dict = {}
    for w in result.windows:
        if w.time_logits is not None and len(w.time_logits):
            points = zip(w.time_points().tolist(), w.time_logits)
        else:
            points = [((w.start + w.end) / 2, w.logits)]
        for frame, logits in points:
            by_frame.setdefault(frame, []).append(np.asarray(logits, dtype=np.float64))
    frames = sorted(by_frame)
    logits = np.stack([np.mean(by_frame[f], axis=0) for f in frames])
    return np.asarray(frames, dtype=np.float64) / result.fps, softmax(logits, axis=-1)
