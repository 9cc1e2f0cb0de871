"""FVD from sets of videos: embed each set with I3D (sharded over ranks under torchrun), reduce the embeddings
to a set's statistics (read from or written to a cache), and compare two sets' statistics. This module
orchestrates the others (video sets, preprocessing, distances) with a model from the weights registry; it
holds the entry points users call: :func:`fvd`, :func:`compute_stats`, :func:`distance_between`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.apps.fvd.protocols import (
    DEFAULT_PROTOCOL,
    Protocol,
    embeddings_distance,
    get_protocol,
    values_to_model_input,
)
from i3d_torch.apps.fvd.resize import PREPROCESSING, model_input_from_resized, pixels_0_255, resize_bilinear_tf1
from i3d_torch.apps.fvd.stats import SmallSampleWarning, check_set_size, frechet_distance, kernel_distance
from i3d_torch.apps.fvd.videosets import (
    ArrayLike,
    ArrayVideoSet,
    FolderVideoSet,
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
from i3d_torch.core.fileio import atomic_open, check_writable
from i3d_torch.core.transforms import trusted_input
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.running import out_of_memory
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


def protocol_preprocessing(protocol: Protocol) -> Dict[str, Any]:
    """What a statistics cache records as its preprocessing: the TF reference's record for ``tf`` (so caches
    written before protocols existed stay valid), else the protocol's name, hash and spec."""
    if protocol == get_protocol(DEFAULT_PROTOCOL):
        return dict(PREPROCESSING)
    return {"protocol": protocol.name, "protocol_hash": protocol.spec_hash, **protocol.spec()}


def _model_input_batch(
    video_set: VideoSet, indices: Sequence[int], device: torch.device, protocol: Protocol, role: str
) -> torch.Tensor:
    """Model input ``[B, 3, T, 224, 224]`` of videos ``indices`` under ``protocol``: its clip of each video
    (seeded by the video's index in the set), resized and scaled as the protocol does."""
    if protocol == get_protocol(DEFAULT_PROTOCOL):
        return model_input_from_resized(video_set.resized_batch(indices, device))
    if isinstance(video_set, ArrayVideoSet):
        videos = video_set._take(indices).to(device)
        clips = []
        for row, index in enumerate(indices):
            try:
                frames = protocol.clip_indices(int(videos.shape[1]), role, index)
            except InputError as exc:
                raise InputError(f"{video_set.name(index)}: {exc}") from None
            clips.append(videos[row, frames])
        return protocol.model_input(pixels_0_255(torch.stack(clips)))
    if isinstance(video_set, FolderVideoSet):
        clips = [_folder_clip(video_set, index, protocol, role) for index in indices]
        check_same_frames([c.shape[0] for c in clips], [video_set.name(i) for i in indices])
        return values_to_model_input(torch.stack(clips).to(device), protocol.values)
    raise InputError(f"protocol {protocol.name}: cannot read a {type(video_set).__name__}")


def _folder_clip(video_set: FolderVideoSet, index: int, protocol: Protocol, role: str) -> torch.Tensor:
    """One video's clip, each frame resized as decoded (memory: the video's frames at 224x224, not at native size).

    Decoding stops after the clip when it starts at frame 0; a random start needs the video's length first."""
    from i3d_torch.core.video import iter_frames

    path = video_set.paths[index]
    limit = video_set.max_frames
    if role not in protocol.random_start and protocol.clip_span is not None:
        limit = protocol.clip_span if limit is None else min(limit, protocol.clip_span)
    resized = [
        protocol.resized(torch.from_numpy(np.ascontiguousarray(frame)).float())
        for frame in iter_frames(path, fps=None, short_side=None, max_frames=limit)
    ]
    if not resized:
        raise VideoError("no frame decoded", path)
    try:
        frames = protocol.clip_indices(len(resized), role, index)
    except InputError as exc:
        raise InputError(str(exc), path) from None
    return torch.stack([resized[i] for i in frames])


def _prepared_batch(
    video_set: VideoSet, indices: Sequence[int], device: torch.device, protocol: Protocol, role: str
) -> torch.Tensor:
    # Runs on the worker thread, where the caller's inference mode (thread-local) does not reach.
    with torch.inference_mode():
        return _model_input_batch(video_set, indices, device, protocol, role)


class _Inline:
    """An executor that runs each task at once on the calling thread (the ThreadPoolExecutor interface that
    embed_videos uses)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def submit(self, fn, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # raised by result(), where the worker's error would be
            future.set_exception(exc)
        return future


@torch.inference_mode()
def embed_videos(
    video_set: VideoSet,
    model: torch.nn.Module,
    indices: Optional[Sequence[int]] = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    protocol: Union[str, Protocol] = DEFAULT_PROTOCOL,
    role: str = "real",
) -> Tuple[np.ndarray, List[int]]:
    """I3D embeddings (time-averaged logits, float32 ``[len(indices), d]``) and frame counts of videos.

    For videos read from files, the next batch is decoded and resized on a worker thread while the model runs
    on the current one. Videos already in memory are resized on the calling thread between forwards: with
    nothing to decode, the worker only ran torch's resize beside the model, and its second OpenMP team slowed
    the model down (CPU, 2 cores, 16 arrays of 16x128x170 at batch 4: 2.6-5.2 s on the worker, 2.2 s inline).
    ``protocol`` picks each video's clip and its preprocessing; ``role`` (real/fake) its clip sampling.
    """
    protocol = get_protocol(protocol)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    indices = list(range(len(video_set)) if indices is None else indices)
    batches = _batches(indices, batch_size)
    embeddings: List[np.ndarray] = []
    frame_counts: List[int] = []
    names: List[str] = []
    try:
        ahead = _Inline() if isinstance(video_set, ArrayVideoSet) else concurrent.futures.ThreadPoolExecutor(1)
        with trusted_input(), ahead as pool, _progress(
            len(indices), f"embedding {video_set.description}", progress
        ) as bar:
            args = (device, protocol, role)
            pending = pool.submit(_prepared_batch, video_set, batches[0], *args) if batches else None
            for k, batch in enumerate(batches):
                model_input = pending.result()
                if k + 1 < len(batches):
                    pending = pool.submit(_prepared_batch, video_set, batches[k + 1], *args)
                frame_counts.extend([int(model_input.shape[2])] * len(batch))
                names.extend(video_set.name(i) for i in batch)
                check_same_frames(frame_counts, names)
                logits = model(model_input)
                embeddings.append(logits.float().cpu().numpy())
                bar.update(len(batch))
    except torch.cuda.OutOfMemoryError as exc:  # the batch on the device (prepared or in the model) is too big
        raise out_of_memory(exc) from None
    dim = embeddings[0].shape[1] if embeddings else int(getattr(model, "num_classes", 400))
    return (np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)), frame_counts


def _gathered_embeddings(
    video_set: VideoSet,
    model: torch.nn.Module,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
    protocol: Optional[Protocol] = None,
    role: str = "real",
    resume: Optional["ResumeState"] = None,
) -> Tuple[np.ndarray, List[int]]:
    """Embed the whole set; under torchrun each rank embeds items r, r+K, ... and all ranks gather all.

    An error on one rank (a bad video) is gathered too and raised on every rank, so no rank waits forever.
    With ``resume`` each process saves its progress (its own shard under torchrun) and continues after it.
    """
    protocol = get_protocol(protocol)
    cap = protocol.max_videos(role)  # the protocol's first N videos (stylegan-v: 2048 per set)
    everything = list(range(len(video_set) if cap is None else min(cap, len(video_set))))
    options = dict(batch_size=batch_size, device=device, protocol=protocol, role=role)
    if not distributed.is_distributed() or not torch.distributed.is_initialized():
        if resume is not None:
            return _resumable_embeddings(video_set, model, everything, resume, progress=progress, **options)
        return embed_videos(video_set, model, everything, progress=progress, **options)
    mine = distributed.shard(everything)
    options["progress"] = progress and distributed.is_main_process()
    try:
        if resume is not None:
            result = _resumable_embeddings(video_set, model, mine, resume.for_rank(), **options)
        else:
            result = embed_videos(video_set, model, mine, **options)
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
    protocol: Union[str, Protocol] = DEFAULT_PROTOCOL,
    role: str = "real",
) -> VideoSetStats:
    """Statistics of one set of videos (see :func:`open_video_set` for what ``source`` can be).

    With ``cache``: a valid cache (same weights, preprocessing and videos) is read instead of embedding;
    otherwise the statistics are computed and written there (by rank 0 under torchrun). A cache made with
    other weights or preprocessing is refused; one made from other videos is recomputed, with a warning.
    ``protocol`` (default ``tf``) and ``role`` (``real``/``fake``: protocols sample the two sets' clips differently)
    say how each video becomes a clip and model input; a cache made under another protocol is refused.
    """
    protocol = get_protocol(protocol)
    video_set = open_video_set(source, frames=frames)
    sha = model_sha256(model)
    where = f"the model in use ({model_name(model)})"
    if isinstance(video_set, VideoSetStats):
        check_cache_protocol(video_set, sha, protocol, where)
        return video_set
    require_two_videos(video_set)
    fingerprint = video_set.fingerprint()
    if cache is not None and Path(cache).exists():
        cached = VideoSetStats.load(cache)
        check_cache_protocol(cached, sha, protocol, where)
        if cached.source_fingerprint == fingerprint:
            return cached
        warnings.warn(f"{cache}: cached statistics are of other videos than {video_set.description}; recomputing")
    if cache is not None:  # before embedding the set, not after; every rank learns of rank 0's failure
        unwritable: Optional[OSError] = None
        if distributed.is_main_process():
            try:
                check_writable(cache)
            except OSError as exc:
                unwritable = exc
        if not distributed.all_ranks_ok(unwritable is None):
            raise unwritable or InputError("rank 0 cannot write the statistics cache", cache)
    resume = None if cache is None else ResumeState(Path(cache), fingerprint, sha, protocol_preprocessing(protocol))
    embeddings, frame_counts = _gathered_embeddings(
        video_set,
        model,
        batch_size=batch_size,
        device=distributed.device_for_rank(str(device)),
        progress=progress,
        protocol=protocol,
        role=role,
        resume=resume,
    )
    stats = VideoSetStats(
        embeddings=embeddings,
        frames=frame_counts[0] if frame_counts else 0,
        model_name=model_name(model),
        model_sha256=sha,
        preprocessing=protocol_preprocessing(protocol),
        source=video_set.description,
        source_fingerprint=fingerprint,
    )
    if resume is not None:
        if distributed.is_main_process():
            stats.save(cache)
        distributed.barrier()  # the cache is written: the progress files can go, also those of another rank count
        if distributed.is_main_process():
            for path in resume.cache.parent.glob(glob.escape(resume.cache.name) + ".partial.*npz"):
                path.unlink(missing_ok=True)
    return stats


#: Videos embedded between two saves of a resumable run's progress.
RESUME_EVERY = 256


@dataclass(frozen=True)
class ResumeState:
    """Where a statistics run with a cache saves its progress (``<cache>.partial.npz``, or under torchrun one
    ``<cache>.partial.rank<r>of<K>.npz`` per rank), and what must match for a later run to continue from it:
    the same videos (fingerprint), weights and protocol, and under torchrun the same rank and number of ranks
    (a rank's shard is items r, r+K, ...; with another K its progress is of other videos and is not used)."""

    cache: Path
    fingerprint: str
    model_sha256: str
    preprocessing: Dict[str, Any]
    shard: str = ""  # "rank<r>of<K>" under torchrun

    @staticmethod
    def partial_path(cache: Path, shard: str = "") -> Path:
        return cache.with_name(cache.name + (f".partial.{shard}.npz" if shard else ".partial.npz"))

    def progress_path(self) -> Path:
        return self.partial_path(self.cache, self.shard)

    def for_rank(self) -> "ResumeState":
        """This process's own progress under torchrun."""
        return dataclasses.replace(self, shard=f"rank{distributed.rank()}of{distributed.world_size()}")

    def key(self) -> str:
        return json.dumps([self.fingerprint, self.model_sha256, self.preprocessing, self.shard], sort_keys=True)

    def load(self) -> Tuple[np.ndarray, List[int]]:
        """The embeddings and frame counts saved by an interrupted run of the same job; none if there is none."""
        try:
            with np.load(self.progress_path(), allow_pickle=False) as data:
                if str(data["key"]) == self.key():
                    return data["embeddings"], [int(c) for c in data["frames"]]
        except (OSError, KeyError, ValueError, EOFError):
            pass  # absent, unreadable or another job's: start from the first video
        return np.zeros((0, 0), np.float32), []

    def save(self, embeddings: np.ndarray, frame_counts: List[int]) -> None:
        with atomic_open(self.progress_path(), "wb") as fh:  # never a half-written progress file
            np.savez(fh, key=np.array(self.key()), embeddings=embeddings, frames=np.array(frame_counts, np.int64))


def _resumable_embeddings(
    video_set: VideoSet, model: torch.nn.Module, indices: List[int], resume: ResumeState, **options: Any
) -> Tuple[np.ndarray, List[int]]:
    """Embed the videos ``indices`` in chunks of :data:`RESUME_EVERY`, saving progress after each, starting after
    what an interrupted run of the same job saved."""
    done, frame_counts = resume.load()
    parts = [done] if len(done) else []
    for chunk_start in range(len(frame_counts), len(indices), RESUME_EVERY):
        chunk = indices[chunk_start : chunk_start + RESUME_EVERY]
        emb, counts = embed_videos(video_set, model, chunk, **options)
        parts.append(emb)
        frame_counts = frame_counts + counts
        check_same_frames(frame_counts, [video_set.name(i) for i in indices[: len(frame_counts)]])
        if chunk_start + len(chunk) < len(indices):
            resume.save(np.concatenate(parts), frame_counts)
    if not parts:
        dim = int(getattr(model, "num_classes", 400))
        return np.zeros((0, dim), np.float32), []
    return np.concatenate(parts), frame_counts


def check_cache_protocol(stats: VideoSetStats, sha: str, protocol: Protocol, where: str) -> None:
    """Refuse statistics made with other weights, or under another protocol than ``protocol``."""
    if protocol == get_protocol(DEFAULT_PROTOCOL):
        stats.check_compatible(sha, where)  # the TF reference's record, with its own messages
        return
    if stats.model_sha256 != sha:
        raise InputError(
            f"statistics were computed with other weights (sha256 {stats.model_sha256[:12]}...) than {where}; "
            f"recompute them",
            getattr(stats, "cache_path", None),
        )
    if stats.preprocessing != protocol_preprocessing(protocol):
        theirs = stats.preprocessing.get("protocol", DEFAULT_PROTOCOL)
        raise InputError(
            f"statistics were computed under protocol {theirs} "
            f"({stats.preprocessing.get('protocol_hash', 'the TF record')}), not {protocol.name} "
            f"({protocol.spec_hash}); recompute them",
            getattr(stats, "cache_path", None),
        )


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
    protocol: str = DEFAULT_PROTOCOL
    protocol_hash: str = ""
    bootstrap: Optional[Dict[str, Any]] = None  # {"n", "seed", "confidence", "low", "high", "std"} when asked

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
            "protocol": self.protocol,
            "protocol_hash": self.protocol_hash or get_protocol(self.protocol).spec_hash,
        }
        if self.bootstrap is not None:
            out["bootstrap"] = dict(self.bootstrap)
        if self.kvd is not None:
            out["kvd"] = self.kvd
            out["kvd_std"] = None if self.kvd_std is None or np.isnan(self.kvd_std) else self.kvd_std
        return out


def distance_between(
    real: VideoSetStats,
    fake: VideoSetStats,
    *,
    kvd: bool = False,
    protocol: Union[str, Protocol] = DEFAULT_PROTOCOL,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> FVDResult:
    """FVD (and KVD) between two sets' statistics, after checking they are comparable.

    ``protocol`` sets the covariance normalisation and square root (compute the statistics under the same
    protocol: its clips and preprocessing are theirs). ``bootstrap=N`` adds a seeded percentile interval."""
    protocol = get_protocol(protocol)
    if real.model_sha256 != fake.model_sha256:
        raise InputError(
            f"the two sets were embedded with different weights ({real.model_name} {real.model_sha256[:12]}... vs "
            f"{fake.model_name} {fake.model_sha256[:12]}...)"
        )
    if real.preprocessing != fake.preprocessing:
        raise InputError("the two sets were preprocessed differently; recompute the older statistics")
    check_comparable_lengths(real.frames, fake.frames)
    if real.dim != fake.dim:  # statistics of another model's embedding: name both, the message is about files
        raise InputError(
            f"embedding sizes differ: real set ({_where(real)}) has {real.dim}-d embeddings, fake set ({_where(fake)}) "
            f"{fake.dim}-d; compute both with the same weights"
        )
    for stats, name in ((real, "real set"), (fake, "fake set")):
        check_set_size(stats.n, f"{name} ({stats.source})", stats.dim)
        _warn_below_sample_size(stats.n, f"{name} ({stats.source})", protocol)
    if protocol.covariance == "unbiased" and protocol.sqrt == "eigh":
        distance = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)  # the cached float64 statistics
    else:
        distance = embeddings_distance(real.embeddings, fake.embeddings, protocol)
    kvd_value, kvd_std = kernel_distance(real.embeddings, fake.embeddings) if kvd else (None, None)
    interval = None
    if bootstrap:
        from i3d_torch.apps.fvd.bootstrap import bootstrap_fvd

        interval = bootstrap_fvd(
            real.embeddings, fake.embeddings, protocol, n=bootstrap, seed=seed, confidence=confidence
        ).to_dict()
    return FVDResult(
        distance,
        real.n,
        fake.n,
        real.frames,
        real.model_name,
        real.model_sha256,
        kvd_value,
        kvd_std,
        protocol=protocol.name,
        protocol_hash=protocol.spec_hash,
        bootstrap=interval,
    )


def _where(stats: VideoSetStats) -> str:
    """Where a set's statistics came from, for messages: the cache file read, else the videos' source."""
    return getattr(stats, "cache_path", None) or stats.source or "in-memory set"


def _warn_below_sample_size(n: int, name: str, protocol: Protocol) -> None:
    # The tf record's size is the full-rank bound, which check_set_size already warns about.
    if n < protocol.sample_size and protocol.name != DEFAULT_PROTOCOL:
        warnings.warn(
            f"{name}: {n} videos, fewer than the {protocol.sample_size} protocol {protocol.name} states; the FVD is "
            f"not comparable with published {protocol.name} numbers",
            SmallSampleWarning,
            stacklevel=4,
        )


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
    protocol: Union[str, Protocol] = DEFAULT_PROTOCOL,
    bootstrap: int = 0,
    seed: int = 0,
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
        protocol: ``tf`` (the reference, default), ``stylegan-v``, ``videogpt``, ``tats``, ``cd-fvd``, ... (see
            :data:`~i3d_torch.apps.fvd.protocols.PROTOCOLS`): clips, resize, set sizes, covariance, square root.
        bootstrap, seed: ``N > 0`` resamples both sets N times (seeded) for a confidence interval.

    Returns:
        :class:`FVDResult`; ``float(result)`` is the FVD.
    """
    protocol = get_protocol(protocol)  # an unknown name fails before any work
    if bootstrap < 0:
        raise InputError(f"bootstrap takes a number of resamples >= 0, got {bootstrap}")
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
        for stats in sets:
            check_cache_protocol(stats, stats.model_sha256, protocol, "this run")
        return distance_between(sets[0], sets[1], kvd=kvd, protocol=protocol, bootstrap=bootstrap, seed=seed)
    if model is None:
        model = embedding_model(weights, device)
    model.eval()
    options = dict(frames=frames, batch_size=batch_size, device=device, progress=progress, protocol=protocol)
    stats = [compute_stats(s, model, cache=c, role=r, **options) for s, c, r in zip(sets, caches, ("real", "fake"))]
    return distance_between(stats[0], stats[1], kvd=kvd, protocol=protocol, bootstrap=bootstrap, seed=seed)
