"""FVD from sets of videos: embed each set with I3D (sharded over ranks under torchrun), reduce the embeddings
to a set's statistics (read from or written to a cache), and compare two sets' statistics. This module
orchestrates the others (video sets, preprocessing, distances) with a model from the weights registry; it
holds the entry points users call: :func:`fvd`, :func:`compute_stats`, :func:`distance_between`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.apps.fvd.resize import model_input_from_resized, pixels_0_255, resize_bilinear_tf1
from i3d_torch.apps.fvd.stats import check_set_size, frechet_distance, kernel_distance
from i3d_torch.apps.fvd.videosets import (
    ArrayLike,
    PathLike,
    VideoSet,
    VideoSetStats,
    as_video_tensor,
    check_comparable_lengths,
    check_same_frames,
    check_video_array,
    open_video_set,
    require_two_videos,
)
from i3d_torch.core.defaults import DEFAULT_WEIGHTS
from i3d_torch.core.errors import I3DError, InputError, VideoError
from i3d_torch.pipeline import distributed
from i3d_torch.weights.registry import cached_model

DEFAULT_BATCH_SIZE = 8


def fvd_model_input(videos: ArrayLike) -> torch.Tensor:
    """The reference's preprocessing: ``[N, T, H, W, 3]`` frames to the model input ``[N, 3, T, 224, 224]``.

    ``videos`` are uint8 (0..255) or floats in [0, 1] (checked; see :func:`check_video_array`). Every frame
    is resized to 224x224 with TF1 bilinear resizing, then mapped to [-1, 1] by ``2 * x / 255 - 1``.
    """
    tensor = as_video_tensor(videos)
    check_video_array(tensor, "videos")
    return model_input_from_resized(resize_bilinear_tf1(pixels_0_255(tensor)))


# ---------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------


def model_sha256(model: torch.nn.Module) -> str:
    """The checksum of the weights: the registry's file checksum, or a hash of the state dict."""
    info = getattr(model, "weights_info", None)
    if info is not None and getattr(info, "sha256", None):
        return str(info.sha256)
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_name(model: torch.nn.Module) -> str:
    info = getattr(model, "weights_info", None)
    return str(getattr(info, "name", None) or type(model).__name__)


def embedding_model(weights: Any = DEFAULT_WEIGHTS, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """The process's model for ``weights`` (:func:`~i3d_torch.weights.registry.cached_model`) on this rank's
    device. Under torchrun rank 0 loads first, so a first-use download and conversion happens once rather
    than on every rank at the same time."""
    with distributed.main_process_first():
        return cached_model(weights, distributed.device_for_rank(str(device)))


def _batches(indices: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="video", disable=not enabled, file=sys.stderr, leave=False)


def _prepared_batch(video_set: VideoSet, indices: Sequence[int], device: torch.device) -> torch.Tensor:
    # Runs on the worker thread, where the caller's inference mode (thread-local) does not reach.
    with torch.inference_mode():
        return video_set.resized_batch(indices, device)


@torch.inference_mode()
def embed_videos(
    video_set: VideoSet,
    model: torch.nn.Module,
    indices: Optional[Sequence[int]] = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> Tuple[np.ndarray, List[int]]:
    """I3D embeddings (time-averaged logits, float32 ``[len(indices), d]``) and frame counts of videos.

    The next batch is decoded and resized on a worker thread while the model runs on the current one.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    indices = list(range(len(video_set)) if indices is None else indices)
    batches = _batches(indices, batch_size)
    embeddings: List[np.ndarray] = []
    frame_counts: List[int] = []
    names: List[str] = []
    checking = getattr(model, "check_values", None)
    if checking is not None:
        model.check_values = False  # the input is ours and in [-1, 1] by construction: no false alarms
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, _progress(
            len(indices), f"embedding {video_set.description}", progress
        ) as bar:
            pending = pool.submit(_prepared_batch, video_set, batches[0], device) if batches else None
            for k, batch in enumerate(batches):
                resized = pending.result()
                if k + 1 < len(batches):
                    pending = pool.submit(_prepared_batch, video_set, batches[k + 1], device)
                frame_counts.extend([int(resized.shape[1])] * len(batch))
                names.extend(video_set.name(i) for i in batch)
                check_same_frames(frame_counts, names)
                logits = model(model_input_from_resized(resized))
                embeddings.append(logits.float().cpu().numpy())
                bar.update(len(batch))
    finally:
        if checking is not None:
            model.check_values = checking
    dim = embeddings[0].shape[1] if embeddings else int(getattr(model, "num_classes", 400))
    return (np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)), frame_counts


def _gathered_embeddings(
    video_set: VideoSet, model: torch.nn.Module, *, batch_size: int, device: torch.device, progress: bool
) -> Tuple[np.ndarray, List[int]]:
    """Embed the whole set; under torchrun each rank embeds items r, r+K, ... and all ranks gather all.

    An error on one rank (a bad video) is gathered too and raised on every rank, so no rank waits forever.
    """
    everything = list(range(len(video_set)))
    if not distributed.is_distributed() or not torch.distributed.is_initialized():
        return embed_videos(video_set, model, everything, batch_size=batch_size, device=device, progress=progress)
    mine = distributed.shard(everything)
    try:
        result = embed_videos(
            video_set,
            model,
            mine,
            batch_size=batch_size,
            device=device,
            progress=progress and distributed.is_main_process(),
        )
        part: Tuple[Any, ...] = (mine, result[0], result[1], None)
    except (I3DError, OSError) as exc:
        part = (mine, None, None, (type(exc).__name__, str(exc)))
    parts = distributed.gather_objects(part)
    for _, _, _, error in parts:
        if error is not None:
            raise InputError(error[1]) if error[0] != "VideoError" else VideoError(error[1])
    dim = next(p[1].shape[1] for p in parts if p[1] is not None and len(p[1]))
    embeddings = np.zeros((len(everything), dim), np.float32)
    frame_counts = [0] * len(everything)
    for indices, emb, counts, _ in parts:
        for row, (index, count) in enumerate(zip(indices, counts)):
            embeddings[index] = emb[row]
            frame_counts[index] = count
    check_same_frames(frame_counts, [video_set.name(i) for i in everything])
    return embeddings, frame_counts


def compute_stats(
    source: Any,
    model: torch.nn.Module,
    *,
    frames: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    cache: Optional[PathLike] = None,
) -> VideoSetStats:
    """Statistics of one set of videos (see :func:`open_video_set` for what ``source`` can be).

    With ``cache``: a valid cache (same weights, preprocessing and videos) is read instead of embedding;
    otherwise the statistics are computed and written there (by rank 0 under torchrun). A cache made with
    other weights or preprocessing is refused; one made from other videos is recomputed, with a warning.
    """
    video_set = open_video_set(source, frames=frames)
    sha = model_sha256(model)
    if isinstance(video_set, VideoSetStats):
        video_set.check_compatible(sha, f"the model in use ({model_name(model)})")
        return video_set
    require_two_videos(video_set)
    fingerprint = video_set.fingerprint()
    if cache is not None and Path(cache).exists():
        cached = VideoSetStats.load(cache)
        cached.check_compatible(sha, f"the model in use ({model_name(model)})")
        if cached.source_fingerprint == fingerprint:
            return cached
        warnings.warn(f"{cache}: cached statistics are of other videos than {video_set.description}; recomputing")
    embeddings, frame_counts = _gathered_embeddings(
        video_set, model, batch_size=batch_size, device=distributed.device_for_rank(str(device)), progress=progress
    )
    stats = VideoSetStats(
        embeddings=embeddings,
        frames=frame_counts[0] if frame_counts else 0,
        model_name=model_name(model),
        model_sha256=sha,
        source=video_set.description,
        source_fingerprint=fingerprint,
    )
    if cache is not None and distributed.is_main_process():
        stats.save(cache)
    return stats


# ---------------------------------------------------------------------------------------------------
# FVD
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FVDResult:
    """FVD (and KVD when asked) between two sets; ``float(result)`` is the FVD."""

    fvd: float
    n_real: int
    n_fake: int
    frames: int
    model_name: str
    model_sha256: str
    kvd: Optional[float] = None
    kvd_std: Optional[float] = None  # NaN when the sets fit in one KVD block (<= 1024 videos)

    def __float__(self) -> float:
        return self.fvd

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "fvd": self.fvd,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "frames": self.frames,
            "model": self.model_name,
            "model_sha256": self.model_sha256,
        }
        if self.kvd is not None:
            out["kvd"] = self.kvd
            out["kvd_std"] = None if self.kvd_std is None or np.isnan(self.kvd_std) else self.kvd_std
        return out


def distance_between(real: VideoSetStats, fake: VideoSetStats, *, kvd: bool = False) -> FVDResult:
    """FVD (and KVD) between two sets' statistics, after checking they are comparable."""
    if real.model_sha256 != fake.model_sha256:
        raise InputError(
            f"the two sets were embedded with different weights ({real.model_name} {real.model_sha256[:12]}... vs "
            f"{fake.model_name} {fake.model_sha256[:12]}...)"
        )
    if real.preprocessing != fake.preprocessing:
        raise InputError("the two sets were preprocessed differently; recompute the older statistics")
    check_comparable_lengths(real.frames, fake.frames)
    for stats, name in ((real, "real set"), (fake, "fake set")):
        check_set_size(stats.n, f"{name} ({stats.source})", stats.dim)
    distance = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    kvd_value, kvd_std = kernel_distance(real.embeddings, fake.embeddings) if kvd else (None, None)
    return FVDResult(distance, real.n, fake.n, real.frames, real.model_name, real.model_sha256, kvd_value, kvd_std)


def fvd(
    real: Any,
    fake: Any,
    *,
    weights: str = DEFAULT_WEIGHTS,
    model: Optional[torch.nn.Module] = None,
    frames: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Union[str, torch.device] = "cpu",
    kvd: bool = False,
    cache_stats: Sequence[Optional[PathLike]] = (),
    progress: bool = False,
) -> FVDResult:
    """Fréchet Video Distance between two sets of videos, as the TF reference computes it.

    Args:
        real, fake: each an array/tensor ``[N, T, H, W, 3]`` (uint8 0..255, or floats in [0, 1]; anything
            else is refused), a path to a ``.npy`` of one, a folder of videos / frame folders, an ``.npz``
            of statistics written earlier (``cache_stats``), or a :class:`VideoSetStats`.
        weights: registry name or path of the weights (``rgb_kinetics400``, the TF-Hub module's, is FVD's).
        model: an already loaded model to use instead of ``weights``.
        frames: keep the first T frames of every video (every video needs at least T).
        batch_size, device: videos per forward pass, and where it runs.
        kvd: also compute KVD (polynomial-kernel MMD) and its standard error.
        cache_stats: up to two ``.npz`` paths, for the real and the fake set: read when valid, else written.
        progress: show a progress bar on stderr.

    Returns:
        :class:`FVDResult`; ``float(result)`` is the FVD.
    """
    caches = list(cache_stats) + [None] * (2 - len(cache_stats))
    if len(caches) > 2:
        raise InputError(f"cache_stats takes at most two paths (real, fake), got {len(cache_stats)}")
    sets = [open_video_set(real, frames=frames, name="real"), open_video_set(fake, frames=frames, name="fake")]
    # Everything checkable without the model is checked before loading it.
    for video_set in sets:
        if isinstance(video_set, VideoSet):
            require_two_videos(video_set)
    check_comparable_lengths(sets[0].frames, sets[1].frames)
    if model is None and all(isinstance(s, VideoSetStats) and c is None for s, c in zip(sets, caches)):
        return distance_between(sets[0], sets[1], kvd=kvd)  # both cached: no model needed
    if model is None:
        model = embedding_model(weights, device)
    model.eval()
    stats = [
        compute_stats(s, model, frames=frames, batch_size=batch_size, device=device, progress=progress, cache=c)
        for s, c in zip(sets, caches)
    ]
    return distance_between(stats[0], stats[1], kvd=kvd)
