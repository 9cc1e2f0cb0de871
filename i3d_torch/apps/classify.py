"""Classify the actions in videos: :func:`classify` and :func:`classify_many` (``i3d-torch predict``).

How a video is scored (DeepMind's evaluation, made to scale):

1. Frames are decoded at the weights' frame rate, resized to their short side and cropped to their crop size
   (DeepMind's preset: 25 fps, 256, 224x224; ``crop="three"`` averages three crops along the long side;
   ``"full"`` feeds the whole resized frame, which the fully convolutional network accepts).
2. The video is cut into windows (:mod:`i3d_torch.pipeline.windows`): by default a video of at most 256
   frames is **one window**, exactly DeepMind's whole-video evaluation; longer videos get 64-frame windows
   every 32 frames plus a last window ending at the last frame. A window shorter than the model's minimum
   (9 frames for the logits head) is looped to that length.
3. Each window gives logits (time-averaged by the network, averaged over crops; with ``flow=True`` the flow
   stream's logits are added, as in DeepMind's two-stream model). The video's logits are the **mean of the
   window logits**, and its probabilities the softmax of that mean.

The decoding, windowing and prefetching are the pipeline's (:mod:`i3d_torch.pipeline`); this module holds
the results (:class:`Classification`, :class:`WindowResult`, :class:`Prediction`), the two-stream fusion
and the scoring loop. The time the model spent waiting for input is reported (``timing.wait_s``).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_FLOW_WEIGHTS, DEFAULT_WEIGHTS
from i3d_torch.core.errors import I3DError, InputError, VideoError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.transforms import VideoClassification
from i3d_torch.pipeline.batches import (
    Source,
    VideoDone,
    VideoFailed,
    WindowBatch,
    as_i3d_error,
    produce_batches,
    source_name,
)
from i3d_torch.pipeline.prefetch import Prefetcher
from i3d_torch.pipeline.running import FATAL_MODEL_ERRORS, default_batch_size, model_error, on_model, weights_of
from i3d_torch.pipeline.settings import ClipSettings, check_crop_for_logits, clip_settings
from i3d_torch.weights.registry import cached_model

__all__ = [
    "DEFAULT_FLOW_WEIGHTS",
    "Classification",
    "Prediction",
    "Timing",
    "WindowResult",
    "classify",
    "classify_many",
    "fuse_streams",
    "softmax",
    "top_predictions",
]


def fuse_streams(time_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum the streams' per-time logits ``[N, K, T'']`` (DeepMind's two-stream fusion adds logits).

    Flow has one frame fewer than RGB, so its timeline can be one step shorter; both are then cut to the
    shorter one and shifted so that each stream's mean over time is unchanged: the window's logits stay
    exactly the sum of the streams' ``Logits`` endpoints.
    """
    steps = min(t.shape[-1] for t in time_logits)
    if any(t.shape[-1] != steps for t in time_logits):
        time_logits = [
            t[..., :steps] - t[..., :steps].mean(-1, keepdim=True) + t.mean(-1, keepdim=True) for t in time_logits
        ]
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
    # For a video file: whether decoding delivered its stated length (DecodeReport.to_dict()); None for arrays.
    decode: Optional[dict] = None

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
            **({"decode": self.decode} if self.decode is not None else {}),
            "timing": self.timing.to_dict(),
        }


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities in float64 along ``axis`` (the largest logit subtracted first, so no overflow)."""
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
    transforms: VideoClassification  # the main weights' preset: fps, short side, crop size, value range
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
    return Streams(models=models, categories=categories, transforms=entry.transforms(), names=names)


def classify_many(
    sources: Sequence[Source],
    *,
    weights: Any = DEFAULT_WEIGHTS,
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
    flow_weights: Any = DEFAULT_FLOW_WEIGHTS,
    model: Optional[InceptionI3d] = None,
    progress: Optional[Callable[[int], None]] = None,
    strict: bool = False,
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
        streams.transforms,
        streams=[s for s in ("rgb", "flow") if s in streams.models],
        min_frames=min_frames,
        fps=fps,
        short_side=short_side,
        crop=crop,
        crop_size=crop_size,
        clip_frames=clip_frames,
        stride=stride,
        strict=strict,
    )
    check_crop_for_logits(settings, "the logits head", f"use the default {CROP_SIZE}")
    prefetcher = Prefetcher(produce_batches(sources, settings, streams.transforms.to_model_input, batch_size))
    try:
        yield from _score(prefetcher, sources, streams, settings, top_k, progress)
    finally:
        prefetcher.close()


def _score(prefetcher, sources, streams: Streams, settings: ClipSettings, top_k, progress):
    windows: Dict[int, List[WindowResult]] = collections.defaultdict(list)
    timings: Dict[int, Timing] = collections.defaultdict(Timing)
    failed: Dict[int, I3DError] = {}
    covered = collections.Counter()
    for event in prefetcher:
        if isinstance(event, WindowBatch):
            groups = event.by_video()  # (video index, its rows) for each video in the batch
            if all(index in failed for index, _ in groups):
                continue
            started = time.perf_counter()
            try:
                time_logits = fuse_streams(
                    [on_model(streams.models[s], x, streams.models[s].per_time_logits) for s, x in event.inputs.items()]
                )  # (windows * crops) x K x T''
            except (I3DError, ValueError) as exc:  # e.g. an input the network cannot take: every video of the batch
                for index, _ in groups:  # has that input shape
                    failed.setdefault(index, as_i3d_error(InputError(str(exc)), source_name(sources[index])))
                continue
            except FATAL_MODEL_ERRORS as exc:  # no kernel for the dtype, or out of GPU memory: every video would fail
                raise model_error(exc) from None
            finally:  # the batch's model and wait time, shared by its videos in proportion to their windows
                model_s = time.perf_counter() - started
                for index, rows in groups:
                    share = (rows.stop - rows.start) / len(event.spans)
                    timings[index].model_s += model_s * share
                    timings[index].wait_s += prefetcher.last_wait_s * share
            time_logits = time_logits.view(len(event.spans), event.crops, *time_logits.shape[1:]).mean(dim=1)
            logits = time_logits.mean(dim=2)  # windows x K: the network's Logits endpoint
            for index, rows in groups:
                if index in failed:
                    continue
                spans = event.spans[rows]
                for (start, end), row, steps in zip(spans, logits[rows].numpy(), time_logits[rows].numpy()):
                    windows[index].append(
                        WindowResult(start, end, start / settings.fps, end / settings.fps, row, steps.T.copy())
                    )
                if progress is not None:
                    new_end = max(end for _, end in spans)
                    progress(max(0, new_end - covered[index]))
                    covered[index] = max(covered[index], new_end)
            continue
        timing = timings[event.index]
        timing.wait_s += prefetcher.last_wait_s
        covered.pop(event.index, None)
        if isinstance(event, VideoFailed):
            timing.decode_s += event.decode_s
            yield event.index, failed.pop(event.index, event.error)
            windows.pop(event.index, None)
            timings.pop(event.index, None)
        elif isinstance(event, VideoDone):
            timing.decode_s += event.decode_s
            if event.index in failed:
                yield event.index, failed.pop(event.index)
                windows.pop(event.index, None)
                timings.pop(event.index, None)
                continue
            video_windows = windows.pop(event.index)
            video_logits = np.mean([w.logits for w in video_windows], axis=0).astype(np.float32)
            yield (
                event.index,
                Classification(
                    video=source_name(sources[event.index]),
                    frames=event.frames,
                    fps=settings.fps,
                    top=top_predictions(video_logits, streams.categories, top_k),
                    logits=video_logits,
                    windows=video_windows,
                    categories=streams.categories,
                    timing=timings.pop(event.index),
                    weights=dict(streams.names),
                    decode=event.decode.to_dict() if event.decode is not None else None,
                ),
            )


def classify(
    path_or_frames: Source,
    *,
    weights: Any = DEFAULT_WEIGHTS,
    top_k: int = 5,
    clip_frames: Optional[int] = None,
    stride: Optional[int] = None,
    crop: str = "center",
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype] = torch.float32,
    batch_size: Optional[int] = None,
    flow: bool = False,
    flow_weights: Any = DEFAULT_FLOW_WEIGHTS,
    fps: Optional[float] = None,
    model: Optional[InceptionI3d] = None,
    strict: bool = False,
) -> Classification:
    """Classify one video: a path (decoded with the weights' preset: 25 fps, short side 256) or uint8 RGB
    frames ``[T, H, W, 3]`` already at the target fps and size (only cropped).

    Args:
        weights: registry name or ``.safetensors`` path; the model is loaded once per
            (weights, device, dtype) and reused by later calls.
        top_k: how many classes ``result.top`` lists (``result.logits`` always has all of them).
        clip_frames, stride: windowing (see :class:`~i3d_torch.pipeline.windows.Windowing`; default: the whole
            video up to 256 frames).
        crop: ``"center"`` (224x224), ``"three"`` (three crops along the long side, logits averaged) or
            ``"full"`` (the whole frame).
        batch_size: windows per forward pass (default 1 on CPU, 8 on CUDA).
        flow: add the TV-L1 flow stream's logits (``flow_weights``); slow on CPU.
        model: use this model instead of loading ``weights`` (its ``weights_info``, if any, gives labels).
        strict: a file whose decoding ends well before the length its container states (cut short) raises
            instead of warning; either way ``result.decode`` says how much was decoded.

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
        strict=strict,
    ):
        if isinstance(result, I3DError):
            raise result
        return result
    raise VideoError("no result", source_name(path_or_frames))  # pragma: no cover - one source, one result
