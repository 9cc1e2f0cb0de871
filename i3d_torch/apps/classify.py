"""Classify the actions in videos: ``i3d-torch predict`` and :func:`classify`.

How a video is scored (DeepMind's evaluation, made to scale):

1. Frames are decoded at 25 fps, resized so the short side is 256 (bilinear) and cropped to 224x224
   (``--crop center``, the default; ``three`` averages three crops along the long side; ``full`` feeds the
   whole resized frame, which the fully convolutional network accepts).
2. The video is cut into windows. By default a video of at most 256 frames (a 10-second Kinetics clip at
   25 fps, the unit DeepMind evaluated) is **one window**: exactly DeepMind's whole-video evaluation.
   Longer videos are cut into windows of 64 frames (I3D's training clip length) every 32 frames, plus a
   last window ending at the last frame, so memory stays bounded and every frame is covered.
   ``--clip-frames``/``--stride`` choose fixed windows instead. A window shorter than the model's minimum
   (9 frames for the logits head) is looped to that length.
3. Each window gives logits (time-averaged by the network, averaged over crops; with ``--flow`` the flow
   stream's logits are added, as in DeepMind's two-stream model). The video's logits are the **mean of the
   window logits**, and its probabilities the softmax of that mean.

Decoding runs in a background thread that fills a bounded queue with preprocessed windows while the model
computes; the time the model spent waiting for input is reported (``timing.wait_s``).

The frame-source, windowing and batching machinery here is shared with :mod:`i3d_torch.apps.features`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.weights.registry import DTYPES, cached_model, resolve_dtype
from i3d_torch.core.errors import I3DError, InputError, VideoError
from i3d_torch.core.model import InceptionI3d, min_input_size
from i3d_torch.core.transforms import Preprocess, flow_to_model_input

__all__ = [
    "classify",
    "Classification",
    "Prediction",
    "WindowResult",
    "Windowing",
    "Timing",
    "cached_model",
    "add_arguments",
    "run",
]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, np.ndarray]

#: A video of at most this many frames is scored as one window (DeepMind's whole-video evaluation of
#: 10-second Kinetics clips: 250 frames at 25 fps, plus slack for frame-rate rounding).
WHOLE_VIDEO_MAX_FRAMES = 256
#: Windows for longer videos: I3D's training clip length, with 50% overlap.
LONG_VIDEO_WINDOW = 64
LONG_VIDEO_STRIDE = 32
#: Bounded queue between the decoding thread and the model: enough to hide decode jitter, small enough
#: that a few 64-frame batches (about 40 MB each at 224x224) stay in memory.
PREFETCH_DEPTH = 4

CROP_MODES = ("center", "three", "full")


# ---------------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Frames in, model inputs out
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSettings:
    """Everything that turns a video into model inputs (recorded in the features manifest)."""

    fps: float = 25.0
    short_side: int = 256
    crop: str = "center"
    crop_size: int = 224
    windowing: Windowing = Windowing()
    streams: Tuple[str, ...] = ("rgb",)  # which inputs to build: "rgb" and/or "flow"
    min_frames: Dict[str, int] = field(default_factory=lambda: {"rgb": 9, "flow": 9})

    def __post_init__(self):
        if self.crop not in CROP_MODES:
            raise InputError(f"crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        if self.fps <= 0:
            raise InputError(f"fps must be positive, got {self.fps}")
        if self.crop_size < 1 or self.short_side < 1:
            raise InputError(f"crop size and short side must be positive, got {self.crop_size}, {self.short_side}")
        if self.crop != "full" and self.crop_size > self.short_side:
            raise InputError(f"crop size {self.crop_size} is larger than the short side {self.short_side}")

    def to_dict(self) -> dict:
        return {
            "fps": self.fps,
            "short_side": self.short_side,
            "crop": self.crop,
            "crop_size": self.crop_size,
            "windowing": self.windowing.to_dict(),
            "streams": list(self.streams),
            "flow": "TV-L1 (OpenCV Dual TV-L1, grayscale), clipped to +-20 px, /20" if "flow" in self.streams else None,
            "value_range": "[-1, 1]",
        }


def source_name(source: Source) -> str:
    return "<frames>" if isinstance(source, np.ndarray) else os.fspath(source)


def _frames_of(source: Source, settings: ClipSettings) -> Iterator[np.ndarray]:
    """uint8 RGB frames ``[H, W, 3]`` of a video path (decoded at ``fps``, short side resized) or of an
    array (used as given: already at the target fps and size)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
            raise InputError(f"frames must be uint8 [T, H, W, 3] RGB, got {source.dtype} {tuple(source.shape)}")
        if len(source) == 0:
            raise InputError("frames: the array has no frames")
        return iter(source)
    from i3d_torch.core.video import iter_frames

    return iter_frames(source, fps=settings.fps, short_side=settings.short_side)


def _with_flow(frames: Iterator[np.ndarray]) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Pair each frame with the TV-L1 flow from the previous frame into it (None for the first), so that a
    window of frames ``[s, e)`` carries the ``e - s - 1`` flows between its own frames."""
    from i3d_torch.core.flow import TVL1Flow

    tvl1 = TVL1Flow()
    for frame in frames:
        yield frame, tvl1.push(frame)


def _crop_all(clip: np.ndarray, settings: ClipSettings) -> List[np.ndarray]:
    from i3d_torch.core.video import crops

    return crops(clip, mode=settings.crop, size=settings.crop_size)


def _loop(clip: np.ndarray, min_frames: int) -> np.ndarray:
    if len(clip) >= min_frames:
        return clip
    from i3d_torch.core.video import loop_to_length

    return loop_to_length(clip, min_frames)


def window_inputs(
    frames: Sequence[np.ndarray],
    flows: Optional[Sequence[np.ndarray]],
    settings: ClipSettings,
    preprocess: Preprocess,
    name: str,
) -> Dict[str, torch.Tensor]:
    """One window's model inputs per stream: ``{"rgb": [crops, 3, T, H, W], "flow": [crops, 2, T-1, H, W]}``."""
    inputs = {}
    if "rgb" in settings.streams:
        clip = _loop(np.stack(frames), settings.min_frames["rgb"])
        inputs["rgb"] = preprocess(np.stack(_crop_all(clip, settings)))
    if "flow" in settings.streams:
        if not flows:
            raise VideoError("too short for optical flow: a window needs at least 2 frames", name)
        clip = _loop(np.stack(flows), settings.min_frames["flow"])
        inputs["flow"] = flow_to_model_input(np.stack(_crop_all(clip, settings)))
    return inputs


# -- events from the decoding thread ----------------------------------------------------------------


@dataclass
class WindowBatch:
    """Consecutive windows of one video with equal input shapes, stacked for one forward pass."""

    index: int
    spans: List[Tuple[int, int]]
    inputs: Dict[str, torch.Tensor]  # stream -> [windows * crops, C, T, H, W]
    crops: int


@dataclass
class VideoDone:
    index: int
    frames: int
    decode_s: float


@dataclass
class VideoFailed:
    index: int
    error: I3DError
    decode_s: float


def as_i3d_error(exc: BaseException, name: str) -> I3DError:
    """Any failure while reading one input, as a one-line I3DError naming it (so a batch run goes on)."""
    if isinstance(exc, I3DError):
        return exc if exc.path or name == "<frames>" else type(exc)(str(exc), name)
    if isinstance(exc, OSError):
        return VideoError(exc.strerror or str(exc), exc.filename or name)
    return VideoError(f"{type(exc).__name__}: {exc}", name)


def produce_batches(
    sources: Sequence[Source], settings: ClipSettings, preprocess: Preprocess, batch_size: int
) -> Iterator[Union[WindowBatch, VideoDone, VideoFailed]]:
    """For each source in order: its window batches, then VideoDone, or VideoFailed at the first error.

    Decode time excludes the time spent blocked handing results over (that is the model's time).
    """
    for index, source in enumerate(sources):
        name = source_name(source)
        decode_s = 0.0
        started = time.perf_counter()
        pending: List[Tuple[Tuple[int, int], Dict[str, torch.Tensor]]] = []
        frames_seen = 0
        try:
            frames = _frames_of(source, settings)
            items = _with_flow(frames) if "flow" in settings.streams else ((f, None) for f in frames)
            for start, end, window in iter_windows(items, settings.windowing):
                frames_seen = max(frames_seen, end)
                flows = [flow for _, flow in window[1:]]
                inputs = window_inputs([f for f, _ in window], flows, settings, preprocess, name)
                if pending and _shapes(pending[0][1]) != _shapes(inputs):
                    decode_s += time.perf_counter() - started
                    yield _stack(index, pending)
                    started, pending = time.perf_counter(), []
                pending.append(((start, end), inputs))
                if len(pending) == batch_size:
                    decode_s += time.perf_counter() - started
                    yield _stack(index, pending)
                    started, pending = time.perf_counter(), []
            if frames_seen == 0:
                raise VideoError("no frames decoded", name)
            if pending:
                decode_s += time.perf_counter() - started
                yield _stack(index, pending)
                started = time.perf_counter()
            decode_s += time.perf_counter() - started
            yield VideoDone(index, frames_seen, decode_s)
        except Exception as exc:  # one bad input must not stop the batch
            if os.environ.get("I3D_TORCH_DEBUG") and not isinstance(exc, I3DError):
                raise
            yield VideoFailed(index, as_i3d_error(exc, name), decode_s + time.perf_counter() - started)


def _shapes(inputs: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in inputs.items()}


def _stack(index: int, pending) -> WindowBatch:
    streams = pending[0][1].keys()
    crops = next(iter(pending[0][1].values())).shape[0]
    return WindowBatch(
        index=index,
        spans=[span for span, _ in pending],
        inputs={s: torch.cat([inputs[s] for _, inputs in pending]) for s in streams},
        crops=crops,
    )


class Prefetcher:
    """Iterate ``iterable`` in a background thread through a bounded queue; ``last_wait_s`` is how long
    the latest ``next`` blocked (the consumer starving for input)."""

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int = PREFETCH_DEPTH):
        self._iterable = iterable
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.last_wait_s = 0.0
        self._thread = threading.Thread(target=self._work, name="i3d-decode", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._iterable:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(_Raised(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            waited = time.perf_counter()
            item = self._queue.get()
            self.last_wait_s = time.perf_counter() - waited
            if item is self._END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class _Raised:
    exc: BaseException


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------



def weights_of(model: InceptionI3d, fallback: Any):
    """The weights entry describing ``model`` (attached by load_model), else ``fallback``'s entry."""
    from i3d_torch.weights.registry import get_weights

    return getattr(model, "weights_info", None) or get_weights(fallback)


def run_model(model: InceptionI3d, x: torch.Tensor, endpoints: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Endpoints of ``model`` on ``x`` without gradients, moved to the model's device and dtype; results
    come back as float32 on the CPU."""
    parameter = next(model.parameters())
    with torch.inference_mode():
        x = x.to(device=parameter.device, dtype=parameter.dtype, non_blocking=True)
        out = model.extract_endpoints(x, list(endpoints))
    return {k: v.float().cpu() for k, v in out.items()}


def per_time_logits(model: InceptionI3d, x: torch.Tensor) -> torch.Tensor:
    """Logits before the mean over time ``[N, K, T'']`` (float32, CPU); their mean over T'' is exactly the
    model's ``Logits`` endpoint, so the timeline costs nothing extra."""
    parameter = next(model.parameters())
    with torch.inference_mode():
        x = x.to(device=parameter.device, dtype=parameter.dtype, non_blocking=True)
        features = model.extract_endpoints(x, ["Mixed_5c"])["Mixed_5c"]
        return model.Logits(features).float().cpu()


def unsupported_dtype(exc: BaseException) -> InputError:
    """PyTorch lacks some kernels in reduced precision on some devices (CPU avg_pool3d in bfloat16/float16)."""
    return InputError(
        f"the model cannot run in this dtype on this device ({' '.join(str(exc).split())}); "
        f"use --dtype float32, or bfloat16/float16 on a GPU"
    )


def fuse_streams(time_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum the streams' per-time logits ``[N, K, T'']`` (DeepMind's two-stream fusion adds logits).

    Flow has one frame fewer than RGB, so its timeline can be one step shorter; both are then cut to the
    shorter one and shifted so that each stream's mean over time is unchanged: the window's logits stay
    exactly the sum of the streams' ``Logits`` endpoints.
    """
    steps = min(t.shape[-1] for t in time_logits)
    if any(t.shape[-1] != steps for t in time_logits):
        time_logits = [t[..., :steps] - t[..., :steps].mean(-1, keepdim=True) + t.mean(-1, keepdim=True) for t in time_logits]
    return torch.stack(list(time_logits)).sum(dim=0)


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    label: str
    index: int
    prob: float
    logit: float


@dataclass
class WindowResult:
    """One window: frames ``[start, end)`` (at the target fps), times in seconds, and its logits ``[K]``."""

    start: int
    end: int
    start_s: float
    end_s: float
    logits: np.ndarray
    #: The network's own timeline inside the window, ``[T'', K]``: the logits before the mean over time
    #: (one step per 8 frames); ``logits`` is their mean.
    time_logits: Optional[np.ndarray] = field(default=None, repr=False)

    def top(self, categories: Sequence[str], k: int = 5) -> List[Prediction]:
        return top_predictions(self.logits, categories, k)

    def time_points(self) -> np.ndarray:
        """Video frame at the centre of each step of ``time_logits``: step t pools Mixed_5c positions t and
        t + 1, which cover input frames 8t .. 8t + 15 (clamped to the window for looped short clips)."""
        steps = 0 if self.time_logits is None else len(self.time_logits)
        return self.start + np.minimum(8 * np.arange(steps) + 8, self.end - self.start)


@dataclass
class Timing:
    """Seconds spent decoding/preprocessing (background thread), in the model, and waiting for input."""

    decode_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Classification:
    """The classification of one video. ``logits`` is the mean of the window logits; ``top`` is sorted by
    probability (softmax of ``logits``)."""

    video: str
    frames: int
    fps: float
    top: List[Prediction]
    logits: np.ndarray
    windows: List[WindowResult]
    categories: List[str] = field(repr=False, default_factory=list)
    timing: Timing = field(default_factory=Timing)
    weights: Dict[str, str] = field(default_factory=dict)  # stream ("rgb"/"flow") -> weights name

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)

    def to_dict(self, window_top_k: Optional[int] = None) -> dict:
        """The JSON form printed by ``predict --json``."""
        k = window_top_k or len(self.top)
        return {
            "video": self.video,
            "frames": self.frames,
            "fps": self.fps,
            "top": [dataclasses.asdict(p) for p in self.top],
            "windows": [
                {
                    "start": w.start,
                    "end": w.end,
                    "start_s": round(w.start_s, 4),
                    "end_s": round(w.end_s, 4),
                    "top": [dataclasses.asdict(p) for p in w.top(self.categories, k)],
                }
                for w in self.windows
            ],
            "weights": self.weights,
            "timing": self.timing.to_dict(),
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    e = np.exp(shifted)
    return e / e.sum()


def top_predictions(logits: np.ndarray, categories: Sequence[str], k: int) -> List[Prediction]:
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[: max(0, k)]
    return [Prediction(str(categories[i]), int(i), float(probs[i]), float(logits[i])) for i in order]


# ---------------------------------------------------------------------------------------------------
# Classification engine
# ---------------------------------------------------------------------------------------------------


@dataclass
class Streams:
    """The models that score a window: logits are summed over streams (DeepMind's two-stream fusion)."""

    models: Dict[str, InceptionI3d]  # "rgb" / "flow" -> model
    categories: List[str]
    preprocess: Preprocess
    names: Dict[str, str]  # "rgb" / "flow" -> weights name


def build_streams(
    weights: Any, flow: bool, flow_weights: Any, device, dtype, model: Optional[InceptionI3d] = None
) -> Streams:
    main = model if model is not None else cached_model(weights, device, dtype)
    entry = weights_of(main, weights)
    models = {entry.modality: main}
    names = {entry.modality: entry.name}
    if flow:
        if entry.modality != "rgb":
            raise InputError(f"--flow adds the flow stream to an RGB model, but {entry.name} is already a flow model")
        flow_model = cached_model(flow_weights, device, dtype)
        flow_entry = weights_of(flow_model, flow_weights)
        if flow_entry.num_classes != entry.num_classes:
            raise InputError(
                f"flow weights {flow_entry.name} have {flow_entry.num_classes} classes, RGB weights {entry.name} "
                f"have {entry.num_classes}"
            )
        models["flow"] = flow_model
        names["flow"] = flow_entry.name
    categories = list(entry.categories)
    if len(categories) != main.num_classes:  # a model whose head was replaced after loading
        categories = [f"class_{i}" for i in range(main.num_classes)]
    return Streams(models=models, categories=categories, preprocess=entry.preprocess(), names=names)


def clip_settings(
    streams: Dict[str, InceptionI3d],
    *,
    fps: Optional[float],
    short_side: Optional[int],
    crop: str,
    crop_size: Optional[int],
    windowing: Windowing,
    preprocess: Preprocess,
    min_frames: Dict[str, int],
) -> ClipSettings:
    return ClipSettings(
        fps=float(fps or preprocess.fps),
        short_side=int(short_side or preprocess.short_side),
        crop=crop,
        crop_size=int(crop_size or preprocess.crop_size),
        windowing=windowing,
        streams=tuple(s for s in ("rgb", "flow") if s in streams),
        min_frames=min_frames,
    )


def default_batch_size(device) -> int:
    """Windows per forward pass: 1 on CPU (batching gains nothing there), 8 on a GPU."""
    return 8 if torch.device(device).type == "cuda" else 1


def classify_many(
    sources: Sequence[Source],
    *,
    weights: Any = "rgb_kinetics400",
    top_k: int = 5,
    clip_frames: Optional[int] = None,
    stride: Optional[int] = None,
    crop: str = "center",
    crop_size: Optional[int] = None,
    short_side: Optional[int] = None,
    fps: Optional[float] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype] = torch.float32,
    batch_size: Optional[int] = None,
    flow: bool = False,
    flow_weights: Any = "flow_kinetics400",
    model: Optional[InceptionI3d] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Iterator[Tuple[int, Union[Classification, I3DError]]]:
    """Classify several videos, decoding ahead in a background thread; yields ``(index, result)`` in input
    order, where a result is a :class:`Classification` or the :class:`I3DError` that video raised.
    ``progress(n)`` is called with the number of newly scored frames."""
    streams = build_streams(weights, flow, flow_weights, device, dtype, model)
    batch_size = batch_size or default_batch_size(device)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    min_frames = {s: weights_of(m, weights).min_frames for s, m in streams.models.items()}
    settings = clip_settings(
        streams.models,
        fps=fps,
        short_side=short_side,
        crop=crop,
        crop_size=crop_size,
        windowing=Windowing(clip_frames, stride),
        preprocess=streams.preprocess,
        min_frames=min_frames,
    )
    check_crop_for_logits(settings, "the logits head", "use the default 224")
    prefetcher = Prefetcher(produce_batches(sources, settings, streams.preprocess, batch_size))
    try:
        yield from _score(prefetcher, sources, streams, settings, top_k, progress)
    finally:
        prefetcher.close()


def check_crop_for_logits(settings: ClipSettings, what: str, advice: str) -> None:
    """Refuse, before decoding anything, a crop smaller than TF's logits head accepts (193 pixels)."""
    smallest = min_input_size("Logits")[1]
    if settings.crop != "full" and settings.crop_size < smallest:
        raise InputError(
            f"crop size {settings.crop_size} is too small for {what} (needs >= {smallest} pixels, as in TF); {advice}"
        )


def _score(prefetcher, sources, streams: Streams, settings: ClipSettings, top_k, progress):
    windows: Dict[int, List[WindowResult]] = collections.defaultdict(list)
    timings: Dict[int, Timing] = collections.defaultdict(Timing)
    failed: Dict[int, I3DError] = {}
    covered = collections.Counter()
    for event in prefetcher:
        timing = timings[event.index]
        timing.wait_s += prefetcher.last_wait_s
        if isinstance(event, WindowBatch):
            if event.index in failed:
                continue
            started = time.perf_counter()
            try:
                time_logits = fuse_streams(
                    [per_time_logits(streams.models[s], x) for s, x in event.inputs.items()]
                )  # (windows * crops) x K x T''
            except (I3DError, ValueError) as exc:  # e.g. an input the network cannot take
                failed[event.index] = as_i3d_error(InputError(str(exc)), source_name(sources[event.index]))
                continue
            except NotImplementedError as exc:  # a dtype this device has no kernel for: every video would fail
                raise unsupported_dtype(exc) from None
            finally:
                timing.model_s += time.perf_counter() - started
            time_logits = time_logits.view(len(event.spans), event.crops, *time_logits.shape[1:]).mean(dim=1)
            logits = time_logits.mean(dim=2)  # windows x K: the network's Logits endpoint
            for (start, end), row, steps in zip(event.spans, logits.numpy(), time_logits.numpy()):
                windows[event.index].append(
                    WindowResult(start, end, start / settings.fps, end / settings.fps, row, steps.T.copy())
                )
            if progress is not None:
                new_end = max(end for _, end in event.spans)
                progress(max(0, new_end - covered[event.index]))
                covered[event.index] = max(covered[event.index], new_end)
        elif isinstance(event, VideoFailed):
            timing.decode_s += event.decode_s
            yield event.index, failed.pop(event.index, event.error)
            windows.pop(event.index, None)
        elif isinstance(event, VideoDone):
            timing.decode_s += event.decode_s
            if event.index in failed:
                yield event.index, failed.pop(event.index)
                windows.pop(event.index, None)
                continue
            video_windows = windows.pop(event.index)
            video_logits = np.mean([w.logits for w in video_windows], axis=0).astype(np.float32)
            yield event.index, Classification(
                video=source_name(sources[event.index]),
                frames=event.frames,
                fps=settings.fps,
                top=top_predictions(video_logits, streams.categories, top_k),
                logits=video_logits,
                windows=video_windows,
                categories=streams.categories,
                timing=timings.pop(event.index),
                weights=dict(streams.names),
            )


def classify(
    path_or_frames: Source,
    *,
    weights: Any = "rgb_kinetics400",
    top_k: int = 5,
    clip_frames: Optional[int] = None,
    stride: Optional[int] = None,
    crop: str = "center",
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype] = torch.float32,
    batch_size: Optional[int] = None,
    flow: bool = False,
    flow_weights: Any = "flow_kinetics400",
    fps: Optional[float] = None,
    model: Optional[InceptionI3d] = None,
) -> Classification:
    """Classify one video: a path (decoded at 25 fps, short side 256) or uint8 RGB frames ``[T, H, W, 3]``
    already at the target fps and size (only cropped).

    Args:
        weights: registry name or ``.safetensors`` path; the model is loaded once per
            (weights, device, dtype) and reused by later calls.
        top_k: how many classes ``result.top`` lists (``result.logits`` always has all of them).
        clip_frames, stride: windowing (see :class:`Windowing`; default: whole video up to 256 frames).
        crop: ``"center"`` (224x224), ``"three"`` (three crops along the long side, logits averaged) or
            ``"full"`` (the whole frame).
        batch_size: windows per forward pass (default 1 on CPU, 8 on CUDA).
        flow: add the TV-L1 flow stream's logits (``flow_weights``); slow on CPU.
        model: use this model instead of loading ``weights`` (its ``weights_info``, if any, gives labels).

    Raises:
        I3DError: the video cannot be read, or the weights are missing.
    """
    for _, result in classify_many(
        [path_or_frames],
        weights=weights,
        top_k=top_k,
        clip_frames=clip_frames,
        stride=stride,
        crop=crop,
        fps=fps,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        flow=flow,
        flow_weights=flow_weights,
        model=model,
    ):
        if isinstance(result, I3DError):
            raise result
        return result
    raise VideoError("no result", source_name(path_or_frames))  # pragma: no cover - one source, one result


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``features``: weights, device, decoding, windows, crops."""
    parser.add_argument("--weights", default="rgb_kinetics400", help="registry name or .safetensors path (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model precision (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: 1 on CPU, 8 on CUDA)")
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=None,
        help=f"frames per window (default: the whole video up to {WHOLE_VIDEO_MAX_FRAMES} frames, else "
        f"{LONG_VIDEO_WINDOW}-frame windows every {LONG_VIDEO_STRIDE})",
    )
    parser.add_argument("--stride", type=int, default=None, help="frames between window starts (default: half a window)")
    parser.add_argument("--crop", default="center", choices=CROP_MODES, help="spatial crop(s) (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=None, help="decode at this frame rate (default: the weights', 25)")
    parser.add_argument("--short-side", type=int, default=None, help="resize the short side to this (default: 256)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop size in pixels (default: 224)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Top-k Kinetics labels for each video. Whole-video scores are the mean of the window logits, then a softmax."
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (or frame folders)")
    add_clip_arguments(parser)
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to show (default: %(default)s)")
    parser.add_argument("--per-window", action="store_true", help="also print the top classes of every window")
    parser.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the top classes' probabilities over time; with several videos, one file per video named "
        "FILE.N.VIDEONAME.png",
    )
    parser.add_argument("--flow", action="store_true", help="add the TV-L1 optical-flow stream (slow on CPU)")
    parser.add_argument("--flow-weights", default="flow_kinetics400", help="flow model (default: %(default)s)")


def progress_bar(quiet: bool, desc: str, unit: str, total: Optional[int] = None):
    """A tqdm bar on stderr, off with --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), leave=False)


def format_table(result: Classification, per_window: bool, top_k: int) -> str:
    plural = "s" if len(result.windows) != 1 else ""
    lines = [
        f"{result.video}  ({result.frames} frames at {result.fps:g} fps, {len(result.windows)} window{plural}, "
        f"{result.frames / result.fps:.2f} s)",
        f"  {'prob':>7}  {'logit':>7}  label",
    ]
    lines += [f"  {p.prob:7.4f}  {p.logit:7.3f}  {p.label}" for p in result.top]
    if per_window:
        for w in result.windows:
            tops = ", ".join(f"{p.label} {p.prob:.3f}" for p in w.top(result.categories, min(top_k, 3)))
            lines.append(f"    [{w.start_s:7.2f} - {w.end_s:7.2f} s] frames {w.start}-{w.end}: {tops}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    plot_files = None
    if args.plot:
        from i3d_torch.apps.plotting import plot_paths

        plot_files = plot_paths(args.plot, args.videos)
    failures = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(progress_bar(args.quiet, "predict", "frame"))
        results = classify_many(
            args.videos,
            weights=args.weights,
            top_k=args.top,
            clip_frames=args.clip_frames,
            stride=args.stride,
            crop=args.crop,
            crop_size=args.crop_size,
            short_side=args.short_side,
            fps=args.fps,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            flow=args.flow,
            flow_weights=args.flow_weights,
            progress=bar.update,
        )
        stack.callback(results.close)
        for index, result in results:
            if isinstance(result, I3DError):
                failures += 1
                bar.clear()
                print(f"i3d-torch predict: error: {result}", file=sys.stderr, flush=True)
                continue
            if plot_files is not None:
                from i3d_torch.apps.plotting import plot_timeline

                plot_timeline(result, plot_files[index], top_k=args.top)
            bar.clear()
            if args.json:
                print(json.dumps(result.to_dict()), flush=True)
            else:
                print(format_table(result, args.per_window, args.top) + "\n", flush=True)
    if failures:
        print(f"i3d-torch predict: {failures} of {len(args.videos)} video(s) failed", file=sys.stderr)
        return 1
    return 0
