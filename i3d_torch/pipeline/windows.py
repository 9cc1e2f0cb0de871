"""Windows: how a video's frames are cut into the clips the network scores.

By default a video of at most :data:`WHOLE_VIDEO_MAX_FRAMES` frames (a 10-second Kinetics clip, the unit
DeepMind evaluated) is one window; a longer one is cut into windows of I3D's training clip length with 50%
overlap, plus a last window ending at the last frame, so memory stays bounded and every frame is covered.
:class:`Windowing` also describes fixed windows (``--clip-frames``/``--stride``); :func:`iter_windows` cuts a
stream of frames accordingly while holding at most one window in memory.

:class:`DenseWindowing` is the dense windowing of feature extraction for temporal localization
(``features --window N --step S``): one window per step, optionally centred on its frame, padded at the
ends of the video by a named policy (see :data:`PAD_POLICIES`).
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from i3d_torch.core.errors import InputError

__all__ = [
    "DenseWindowing",
    "LONG_VIDEO_STRIDE",
    "PAD_POLICIES",
    "LONG_VIDEO_WINDOW",
    "WHOLE_VIDEO_MAX_FRAMES",
    "Windowing",
    "iter_dense_windows",
    "iter_windows",
    "window_spans",
]

#: A video of at most this many frames is scored as one window (DeepMind's whole-video evaluation of
#: 10-second Kinetics clips: 250 frames at 25 fps, plus slack for frame-rate rounding).
WHOLE_VIDEO_MAX_FRAMES = 256
#: Windows for longer videos: I3D's training clip length, with 50% overlap.
LONG_VIDEO_WINDOW = 64
LONG_VIDEO_STRIDE = 32


@dataclass(frozen=True)
class Windowing:
    """How a video is cut into windows.

    ``clip_frames=None`` (the default) means: the whole video as one window when it has at most
    :data:`WHOLE_VIDEO_MAX_FRAMES` frames, else windows of 64 frames every 32. Otherwise windows of
    ``clip_frames`` frames every ``stride`` frames (default: half a window), plus one last window ending at
    the last frame when the regular ones stop short of it; a video shorter than one window is one window.
    """

    clip_frames: Optional[int] = None
    stride: Optional[int] = None

    def __post_init__(self):
        if self.clip_frames is not None and self.clip_frames < 1:
            raise InputError(f"clip_frames must be at least 1, got {self.clip_frames}")
        if self.stride is not None and self.stride < 1:
            raise InputError(f"stride must be at least 1, got {self.stride}")
        if self.stride is not None and self.clip_frames is None:
            raise InputError("stride needs clip_frames (the default whole-video windowing has no stride)")

    def describe(self) -> str:
        if self.clip_frames is None:
            return (
                f"whole video if <= {WHOLE_VIDEO_MAX_FRAMES} frames, else {LONG_VIDEO_WINDOW}-frame windows "
                f"every {LONG_VIDEO_STRIDE}"
            )
        return f"{self.clip_frames}-frame windows every {self.effective_stride} frames"

    @property
    def effective_stride(self) -> Optional[int]:
        if self.clip_frames is None:
            return None
        return self.stride or max(1, self.clip_frames // 2)

    def to_dict(self) -> dict:
        return {"clip_frames": self.clip_frames, "stride": self.effective_stride, "rule": self.describe()}


def iter_windows(items: Iterable[Any], windowing: Windowing) -> Iterator[Tuple[int, int, List[Any]]]:
    """Cut a stream of frames into windows ``(start, end, frames[start:end])``, holding at most one
    window (or :data:`WHOLE_VIDEO_MAX_FRAMES` + 1 frames) in memory."""
    stream = iter(items)
    if windowing.clip_frames is None:
        head = list(itertools.islice(stream, WHOLE_VIDEO_MAX_FRAMES + 1))
        if len(head) <= WHOLE_VIDEO_MAX_FRAMES:
            if head:
                yield 0, len(head), head
            return
        stream = itertools.chain(head, stream)
        clip, stride = LONG_VIDEO_WINDOW, LONG_VIDEO_STRIDE
    else:
        clip, stride = windowing.clip_frames, windowing.effective_stride
    yield from _sliding_windows(stream, clip, stride)


def _sliding_windows(stream: Iterator[Any], clip: int, stride: int) -> Iterator[Tuple[int, int, List[Any]]]:
    recent: collections.deque = collections.deque(maxlen=clip)  # always the last `clip` frames seen
    seen = 0
    next_start = 0
    last_end = 0
    for item in stream:
        recent.append(item)
        seen += 1
        if seen == next_start + clip:
            yield next_start, seen, list(recent)
            last_end = seen
            next_start += stride
    if seen == 0:
        return
    if last_end == 0:  # shorter than one window: the whole video is the window
        yield 0, seen, list(recent)
    elif last_end < seen:  # cover the tail with a window that ends at the last frame
        yield seen - clip, seen, list(recent)


def window_spans(num_frames: int, windowing: Windowing) -> List[Tuple[int, int]]:
    """The ``(start, end)`` spans :func:`iter_windows` produces for a video of ``num_frames`` frames."""
    return [(s, e) for s, e, _ in iter_windows(range(num_frames), windowing)]


#: End-padding policies of dense windows: ``edge`` repeats the first/last frame (so the flow there is zero:
#: a repeated frame does not move), ``zeros`` pads the model input with zeros (mid-grey RGB, no motion),
#: ``drop`` leaves out every window that would need padding (a video shorter than one window is refused).
PAD_POLICIES = ("edge", "zeros", "drop")


@dataclass(frozen=True)
class DenseWindowing:
    """One window of ``window`` frames per ``step`` frames: the features of temporal localization.

    Window ``k`` belongs to frame ``t = k * step`` (``t`` < the number of frames). Not centred it is frames
    ``[t, t + window)``; centred it is ``[t - window // 2, t - window // 2 + window)``, so frame ``t`` is its
    middle frame (for an even window, the later of the two middle frames). Frames outside the video are
    padded by ``pad`` (:data:`PAD_POLICIES`); with ``drop`` only the windows inside the video are kept.

    ``DenseWindowing(16, 4, pad="drop")`` are video_features' stacks of 16 frames every 4 (THUMOS-style
    features); ``DenseWindowing(21, 1, centre=True)`` gives one feature per frame from the 21 frames around
    it, padded with the edge frames (MS-TCN-style features).
    """

    window: int
    step: int = 1
    centre: bool = False
    pad: str = "edge"

    def __post_init__(self):
        if self.window < 1:
            raise InputError(f"--window must be at least 1 frame, got {self.window}")
        if self.step < 1:
            raise InputError(f"--step must be at least 1 frame, got {self.step}")
        if self.pad not in PAD_POLICIES:
            raise InputError(f"--pad must be one of {', '.join(PAD_POLICIES)}, got {self.pad!r}")

    def describe(self) -> str:
        where = "centred on" if self.centre else "starting at"
        return f"{self.window}-frame windows {where} every {self.step}th frame, ends padded: {self.pad}"

    def span(self, anchor: int) -> Tuple[int, int]:
        """The nominal ``[start, end)`` of the window of frame ``anchor`` (may reach outside the video)."""
        start = anchor - self.window // 2 if self.centre else anchor
        return start, start + self.window

    def to_dict(self) -> dict:
        return {
            "window": self.window,
            "step": self.step,
            "centre": self.centre,
            "pad": self.pad,
            "rule": self.describe(),
        }


def iter_dense_windows(items: Iterable[Any], dense: DenseWindowing) -> Iterator[Tuple[int, int, List[Any]]]:
    """Cut a stream of frames into dense windows ``(start, end, frames)``: ``[start, end)`` is the nominal
    span (``start`` < 0 or ``end`` > the number of frames where the window is padded) and ``frames`` are the
    real frames inside it, in order. Holds at most one window in memory. With ``pad="drop"`` a stream
    shorter than one window is an :class:`InputError`."""
    recent: collections.deque = collections.deque(maxlen=dense.window)  # the last `window` frames seen
    seen = 0
    anchor = 0
    for item in items:
        recent.append(item)
        seen += 1
        while anchor < seen:
            start, end = dense.span(anchor)
            if end > seen:
                break  # this window (and every later one) still needs frames
            if start >= 0 or dense.pad != "drop":
                yield start, end, list(recent)[len(recent) - (end - max(start, 0)) :]
            anchor += dense.step
    if seen == 0:
        return
    if dense.pad == "drop":
        if seen < dense.window:
            raise InputError(
                f"the video has {seen} frames, fewer than the {dense.window}-frame window, and --pad drop keeps "
                f"no padded window; use --pad edge or --pad zeros, or a shorter --window"
            )
        return
    frames = list(recent)
    while anchor < seen:  # windows that run past the last frame
        start, end = dense.span(anchor)
        first = max(start, 0)
        yield start, end, frames[len(frames) - (seen - first) :]
        anchor += dense.step
