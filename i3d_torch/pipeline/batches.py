"""Frames in, batches of model inputs out: the decoding side of ``predict`` and ``features``.

A source (a video path, a frame folder, or a uint8 array already at the target fps and size) is decoded,
cut into windows (:mod:`i3d_torch.pipeline.windows`), looped to the model's minimum length, cropped and
mapped to the model's value range per stream (RGB, and TV-L1 flow between the window's own frames). Windows
with equal input shapes are stacked into :class:`WindowBatch` events, filled across consecutive videos so
that short videos still make full forward passes; each video ends with :class:`VideoDone`, or
:class:`VideoFailed` at its first error, so one bad input never stops a run.

This module runs in the decoding thread, beside the model, so it computes with numpy only (the model-input
mappings of :mod:`i3d_torch.core.transforms` do too for numpy input): torch ops here would start a second
OpenMP team competing with the model's threads on every core (1.3x slower end to end on 2 cores), with one
deliberate exception when the flow stream is on (:func:`_yield_cores_to_opencv`).

With dense windows (:class:`~i3d_torch.pipeline.windows.DenseWindowing`) a window reaching outside the video
is padded to its full length by the settings' policy; the flow of the whole video is still computed once,
frame pair by frame pair, and shared by every window that covers the pair.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.core.errors import I3DError, InputError, VideoError
from i3d_torch.core.transforms import flow_to_model_input
from i3d_torch.core.video import DecodeReport
from i3d_torch.pipeline.settings import ClipSettings
from i3d_torch.pipeline.windows import DenseWindowing, iter_dense_windows, iter_windows

__all__ = [
    "Event",
    "Source",
    "VideoDone",
    "VideoFailed",
    "WindowBatch",
    "as_i3d_error",
    "produce_batches",
    "source_name",
    "window_inputs",
]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, np.ndarray]
#: The value mapping of resized and cropped RGB frames: the weights' ``transforms().to_model_input``.
ToModelInput = Callable[[np.ndarray], torch.Tensor]


def source_name(source: Source) -> str:
    return "<frames>" if isinstance(source, np.ndarray) else os.fspath(source)


def _frames_of(source: Source, settings: ClipSettings, report: Optional[DecodeReport] = None) -> Iterator[np.ndarray]:
    """uint8 RGB frames ``[H, W, 3]`` of a video path (decoded at ``fps``, short side resized) or of an
    array (used as given: already at the target fps and size)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
            raise InputError(f"frames must be uint8 [T, H, W, 3] RGB, got {source.dtype} {tuple(source.shape)}")
        if len(source) == 0:
            raise InputError("frames: the array has no frames")
        return iter(source)
    from i3d_torch.core.video import iter_frames

    return iter_frames(
        source, fps=settings.fps, short_side=settings.short_side, report=report, strict=settings.strict
    )


def _yield_cores_to_opencv() -> None:
    """Make the model's idle OpenMP threads yield their cores to OpenCV's TV-L1 threads instead of spinning.

    Between two kernels, GNU OpenMP (PyTorch's on Linux) keeps its worker threads spinning, unless more OpenMP
    threads exist than cores, in which case it throttles the spin and they yield. TV-L1 runs in this decoding
    thread on OpenCV's own thread pool, beside the model: with the model's workers spinning, each steals the
    other's cores. One parallel torch op here gives this thread an OpenMP team of its own, which tips the
    count over the cores. Measured on 2 cores (docs/predict_features.md, Throughput): RGB+flow with 10 crops,
    17.5 s -> 13.5 s for 2 videos. Without flow the spin pays (RGB alone 1.0 s against 1.28 s throttled), so
    this is done only when the flow stream is on. Harmless with other OpenMP runtimes: one small op."""
    torch.ones(1 << 17).add_(1)  # above torch's grain size (32768), so it runs on the OpenMP team


def _with_flow(frames: Iterator[np.ndarray]) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Pair each frame with the TV-L1 flow from the previous frame into it (None for the first), so that a
    window of frames ``[s, e)`` carries the ``e - s - 1`` flows between its own frames."""
    from i3d_torch.core.flow import TVL1Flow

    tvl1 = TVL1Flow()
    for frame in frames:
        yield frame, tvl1.push(frame)


def _crop_all(clip: np.ndarray, settings: ClipSettings, flow: bool = False) -> List[np.ndarray]:
    from i3d_torch.pipeline.crops import crop_views

    return crop_views(clip, settings.crop, settings.crop_size, flow=flow)


def _loop(clip: np.ndarray, min_frames: int) -> np.ndarray:
    if len(clip) >= min_frames:
        return clip
    from i3d_torch.core.video import loop_to_length

    return loop_to_length(clip, min_frames)


def window_inputs(
    frames: Sequence[np.ndarray],
    flows: Optional[Sequence[np.ndarray]],
    settings: ClipSettings,
    to_model_input: ToModelInput,
    name: str,
    pad: Tuple[int, int] = (0, 0),
) -> Dict[str, torch.Tensor]:
    """One window's model inputs per stream: ``{"rgb": [crops, 3, T, H, W], "flow": [crops, 2, T-1, H, W]}``.

    ``pad`` = (frames before, frames after) that the window lacks at the ends of the video (dense windows);
    they are filled by ``settings.windowing.pad``: the edge frame repeated or zeros for RGB, zero flow for
    both policies (a repeated frame does not move)."""
    if pad != (0, 0):
        return _padded_window_inputs(frames, flows, settings, to_model_input, name, pad)
    inputs = {}
    if "rgb" in settings.streams:
        clip = _loop(np.stack(frames), settings.min_frames["rgb"])
        inputs["rgb"] = to_model_input(np.stack(_crop_all(clip, settings)))
    if "flow" in settings.streams:
        if not flows:
            raise VideoError("too short for optical flow: a window needs at least 2 frames", name)
        clip = _loop(np.stack(flows), settings.min_frames["flow"])
        inputs["flow"] = flow_to_model_input(np.stack(_crop_all(clip, settings, flow=True)))
    return inputs


def _loop_time(x: np.ndarray, min_frames: int) -> np.ndarray:
    """``x [N, C, T, H, W]`` repeated along T from the start up to ``min_frames`` (as :func:`_loop`)."""
    if x.shape[2] >= min_frames:
        return x
    return np.ascontiguousarray(x[:, :, np.arange(min_frames) % x.shape[2]])


def _padded_window_inputs(frames, flows, settings: ClipSettings, to_model_input, name, pad) -> Dict[str, torch.Tensor]:
    before, after = pad
    policy = settings.windowing.pad
    inputs = {}
    if "rgb" in settings.streams:
        clip = np.stack(frames)
        if policy == "edge":
            index = np.clip(np.arange(-before, len(clip) + after), 0, len(clip) - 1)
            x = to_model_input(np.stack(_crop_all(clip[index], settings))).numpy()
        else:  # zeros of the model input, not black pixels: zero is what the network's padding would see
            x = to_model_input(np.stack(_crop_all(clip, settings))).numpy()
            zeros = lambda n: np.zeros((*x.shape[:2], n, *x.shape[3:]), x.dtype)  # noqa: E731
            x = np.concatenate([zeros(before), x, zeros(after)], axis=2)
        inputs["rgb"] = torch.from_numpy(_loop_time(x, settings.min_frames["rgb"]))
    if "flow" in settings.streams:
        count = len(frames) + before + after - 1
        if count < 1:
            raise VideoError("too short for optical flow: a window needs at least 2 frames", name)
        height, width = frames[0].shape[:2]
        still = lambda n: np.zeros((n, height, width, 2), np.float32)  # noqa: E731
        clip = np.concatenate([still(before), *([np.stack(flows)] if flows else []), still(after)])
        x = flow_to_model_input(np.stack(_crop_all(clip, settings, flow=True))).numpy()
        inputs["flow"] = torch.from_numpy(_loop_time(x, settings.min_frames["flow"]))
    return inputs


# -- events from the decoding thread ----------------------------------------------------------------


@dataclass
class WindowBatch:
    """Windows with equal input shapes, stacked for one forward pass. They come from one video or from several
    consecutive ones (``videos[i]`` is the index of window ``i``'s source); one video's windows are contiguous
    and in order."""

    videos: List[int]
    spans: List[Tuple[int, int]]
    inputs: Dict[str, torch.Tensor]  # stream -> [windows * crops, C, T, H, W]
    crops: int

    def by_video(self) -> List[Tuple[int, slice]]:
        """``(video index, rows of that video)`` for each video in the batch, in order."""
        groups: List[Tuple[int, slice]] = []
        start = 0
        for i in range(1, len(self.videos) + 1):
            if i == len(self.videos) or self.videos[i] != self.videos[start]:
                groups.append((self.videos[start], slice(start, i)))
                start = i
        return groups


@dataclass
class VideoDone:
    index: int
    frames: int
    decode_s: float
    decode: Optional[DecodeReport] = None  # frames and seconds decoded against the stated length (files only)


@dataclass
class VideoFailed:
    index: int
    error: I3DError
    decode_s: float


Event = Union[WindowBatch, VideoDone, VideoFailed]


def as_i3d_error(exc: BaseException, name: str) -> I3DError:
    """Any failure while reading one input, as a one-line I3DError naming it (so a batch run goes on)."""
    if isinstance(exc, I3DError):
        return exc if exc.path or name == "<frames>" else type(exc)(str(exc), name)
    if isinstance(exc, OSError):
        return VideoError(exc.strerror or str(exc), exc.filename or name)
    return VideoError(f"{type(exc).__name__}: {exc}", name)


class _Batcher:
    """Gathers windows into batches of ``batch_size`` across video boundaries, so that short videos (one or two
    windows each) still fill a forward pass. A video's end (VideoDone or VideoFailed) is held back until the
    batch holding its last windows has gone out, so that every consumer sees a video's windows before its end
    and the ends in input order. A failed video's windows still waiting are dropped."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._pending: List[Tuple[int, Tuple[int, int], Dict[str, torch.Tensor]]] = []
        self._ends: List[Union[VideoDone, VideoFailed]] = []

    def add(self, index: int, span: Tuple[int, int], inputs: Dict[str, torch.Tensor]) -> Iterator[Event]:
        if self._pending and _shapes(self._pending[0][2]) != _shapes(inputs):
            yield from self.flush()
        self._pending.append((index, span, inputs))
        if len(self._pending) == self.batch_size:
            yield from self.flush()

    def end(self, event: Union[VideoDone, VideoFailed]) -> Iterator[Event]:
        if isinstance(event, VideoFailed):
            self._pending = [p for p in self._pending if p[0] != event.index]
        self._ends.append(event)
        if not self._pending:
            yield from self.flush()

    def flush(self) -> Iterator[Event]:
        if self._pending:
            yield _stack(self._pending)
        ends, self._pending, self._ends = self._ends, [], []
        yield from ends


class _Stopwatch:
    """Seconds spent on one video, without the time the decoding thread is blocked handing events over."""

    def __init__(self):
        self.total = 0.0
        self._since = time.perf_counter()

    def pause(self) -> None:
        self.total += time.perf_counter() - self._since

    def resume(self) -> None:
        self._since = time.perf_counter()

    def seconds(self) -> float:
        return self.total + time.perf_counter() - self._since


def produce_batches(
    sources: Sequence[Source], settings: ClipSettings, to_model_input: ToModelInput, batch_size: int
) -> Iterator[Event]:
    """The window batches of all sources, in order and filled across videos; after a video's last windows, its
    VideoDone, or VideoFailed at its first error (its windows not yet handed over are dropped).

    A video's decode time excludes the time spent blocked handing results over (that is the model's time).
    """
    batcher = _Batcher(batch_size)
    if "flow" in settings.streams:
        _yield_cores_to_opencv()

    def handed_over(events: Iterator[Event], watch: _Stopwatch) -> Iterator[Event]:
        for event in events:
            watch.pause()
            yield event
            watch.resume()

    for index, source in enumerate(sources):
        name = source_name(source)
        watch = _Stopwatch()
        frames_seen = 0
        try:
            report = None if isinstance(source, np.ndarray) else DecodeReport()
            frames = _frames_of(source, settings, report)
            dense = isinstance(settings.windowing, DenseWindowing)
            if dense:
                frames = counter = _Counted(frames)
            items = _with_flow(frames) if "flow" in settings.streams else ((f, None) for f in frames)
            windows = (iter_dense_windows if dense else iter_windows)(items, settings.windowing)
            for start, end, window in windows:
                frames_seen = counter.count if dense else max(frames_seen, end)
                flows = [flow for _, flow in window[1:]]
                pad = (max(0, -start), end - max(start, 0) - len(window)) if dense else (0, 0)
                inputs = window_inputs([f for f, _ in window], flows, settings, to_model_input, name, pad)
                yield from handed_over(batcher.add(index, (start, end), inputs), watch)
            if dense:
                frames_seen = counter.count
            if frames_seen == 0:
                raise VideoError("no frames decoded", name)
            ended: Union[VideoDone, VideoFailed] = VideoDone(index, frames_seen, watch.seconds(), report)
        except Exception as exc:  # one bad input must not stop the batch
            if os.environ.get("I3D_TORCH_DEBUG") and not isinstance(exc, I3DError):
                raise
            ended = VideoFailed(index, as_i3d_error(exc, name), watch.seconds())
        yield from batcher.end(ended)
    yield from batcher.flush()


class _Counted:
    """An iterator that counts what it hands out (the frames of a video, for dense windows whose spans
    reach past the last frame)."""

    def __init__(self, items):
        self._items = iter(items)
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._items)
        self.count += 1
        return item


def _shapes(inputs: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in inputs.items()}


def _stack(pending) -> WindowBatch:
    streams = pending[0][2].keys()
    crops = next(iter(pending[0][2].values())).shape[0]
    return WindowBatch(
        videos=[index for index, _, _ in pending],
        spans=[span for _, span, _ in pending],
        inputs={s: torch.from_numpy(np.concatenate([inputs[s].numpy() for _, _, inputs in pending])) for s in streams},
        crops=crops,
    )
