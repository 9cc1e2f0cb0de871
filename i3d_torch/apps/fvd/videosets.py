"""Sets of videos as FVD takes them, and the checks that refuse what it would silently get wrong.

A set is an array ``[N, T, H, W, 3]`` (uint8 0..255, or floats in [0, 1]) or a memory-mapped ``.npy`` of
one (:class:`ArrayVideoSet`), a folder of videos or frame folders (:class:`FolderVideoSet`), or the
statistics of a set computed earlier (:class:`VideoSetStats`, kept in an ``.npz`` that records the weights,
the preprocessing and the videos it was made from). :func:`open_video_set` turns what the user gave into
one of these; every video set hands out batches already resized for FVD.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from i3d_torch.apps.fvd.resize import PREPROCESSING, pixels_0_255, resize_bilinear_tf1
from i3d_torch.apps.fvd.stats import mean_and_covariance
from i3d_torch.core.errors import InputError, VideoError
from i3d_torch.core.fileio import atomic_open

#: Shortest clip the I3D logits head can embed (TF's 2x7x7 VALID average pool over Mixed_5c).
MIN_FRAMES = 9
CACHE_FORMAT = "i3d-torch/fvd-stats/1"

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------


def as_video_tensor(videos: ArrayLike) -> torch.Tensor:
    """A numpy array or a tensor of videos as a tensor (numpy arrays are shared, not copied, when contiguous)."""
    if isinstance(videos, torch.Tensor):
        return videos
    if isinstance(videos, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(videos))
    raise InputError(f"expected a numpy array or torch tensor of videos [N, T, H, W, 3], got {type(videos).__name__}")


def check_video_array(videos: ArrayLike, name: str = "videos") -> None:
    """Refuse what FVD would silently get wrong: shape, dtype, value range, too few frames.

    Accepted: ``[N, T, H, W, 3]`` uint8 (0..255), or floating point with every value in [0, 1]. Floats
    above 1 (0..255 pixels stored as floats) or below 0 (frames already mapped to [-1, 1]) are refused
    rather than guessed at.
    """
    shape = tuple(videos.shape)
    if len(shape) == 4 and shape[-1] == 3:
        raise InputError(f"{name}: shape {shape} is one video [T, H, W, 3]; FVD compares sets [N, T, H, W, 3]")
    if len(shape) != 5 or shape[-1] != 3:
        channels_first = len(shape) == 5 and shape[2] == 3
        hint = " (channels look first: permute [N, T, 3, H, W] to [N, T, H, W, 3])" if channels_first else ""
        raise InputError(f"{name}: expected RGB videos [N, T, H, W, 3], got shape {shape}{hint}")
    if shape[1] < MIN_FRAMES:
        raise InputError(too_few_frames(shape[1], name))
    if shape[2] < 1 or shape[3] < 1:
        raise InputError(f"{name}: empty frames, shape {shape}")
    dtype = videos.dtype
    if dtype in (np.uint8, torch.uint8):
        return
    if isinstance(videos, torch.Tensor):
        is_float = videos.is_floating_point()
    else:
        is_float = np.issubdtype(dtype, np.floating)
    if not is_float:
        raise InputError(f"{name}: dtype {dtype} is neither uint8 pixels (0..255) nor floats in [0, 1]")
    if shape[0] == 0:
        return
    lo, hi = float(videos.min()), float(videos.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{name}: NaN or Inf values")
    if hi > 1.0:
        raise InputError(
            f"{name}: float values up to {hi:.4g}; float frames must be in [0, 1]"
            + (" (these look like 0..255 pixels: pass them as uint8)" if hi > 2.0 else "")
        )
    if lo < 0.0:
        raise InputError(
            f"{name}: float values down to {lo:.4g}; float frames must be in [0, 1]"
            + (" (these look like model input in [-1, 1]: pass the frames before that mapping)" if lo >= -1.0 else "")
        )


def too_few_frames(frames: int, name: str) -> str:
    """The message for clips shorter than :data:`MIN_FRAMES`, with the reason."""
    return (
        f"{name}: {frames} frame(s) per video; FVD needs at least {MIN_FRAMES}: I3D's logits head (a 2x7x7 VALID "
        f"average pool, as in the TF-Hub module the reference embeds with) is undefined for shorter clips, where "
        f"the reference's embeddings come out NaN"
    )


def require_two_videos(video_set: "VideoSet") -> None:
    if len(video_set) < 2:
        raise InputError(
            f"{video_set.description}: {len(video_set)} video(s); FVD needs a covariance, so at least 2 per set"
        )


def check_comparable_lengths(real: Optional[int], fake: Optional[int]) -> None:
    if real is not None and fake is not None and real != fake:
        raise InputError(
            f"the real videos have {real} frames and the fake ones {fake}; FVD compares clips of the same length "
            f"(use --frames T / frames=T to take the first T frames of each)"
        )


def check_same_frames(frame_counts: Sequence[int], names: Sequence[str]) -> None:
    """Every video of a set needs the same number of frames (the reference stacks them in one tensor)."""
    if not frame_counts:
        return
    first = frame_counts[0]
    if first < MIN_FRAMES:
        raise InputError(too_few_frames(first, names[0]))
    for count, name in zip(frame_counts, names):
        if count != first:
            raise InputError(
                f"{name}: {count} frames, but {names[0]} has {first}; all videos of a set need the same frame "
                f"count (use --frames T / frames=T to take the first T frames of each)"
            )


# ---------------------------------------------------------------------------------------------------
# Sets of videos
# ---------------------------------------------------------------------------------------------------


class VideoSet:
    """N videos with the same frame count, readable one batch at a time, already resized for FVD."""

    description: str

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def resized_batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        """Videos ``indices`` resized to 224x224, pixel values 0..255, float32 ``[B, T, 224, 224, 3]``."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes when the videos change: a statistics cache made from other videos is not reused."""
        raise NotImplementedError

    @property
    def frames(self) -> Optional[int]:
        """Frames per video when known without decoding (arrays), else None."""
        return None


class ArrayVideoSet(VideoSet):
    """An in-memory array or tensor, or a memory-mapped ``.npy``, ``[N, T, H, W, 3]``.

    Videos are taken one batch at a time, so a memory-mapped file is never loaded whole.
    """

    def __init__(self, videos: ArrayLike, description: str = "array"):
        if not isinstance(videos, (np.ndarray, torch.Tensor)):
            raise InputError(
                f"expected a numpy array or torch tensor of videos [N, T, H, W, 3], got {type(videos).__name__}"
            )
        check_video_array(videos, description)
        self.videos = videos
        self.description = description

    def __len__(self) -> int:
        return int(self.videos.shape[0])

    @property
    def frames(self) -> Optional[int]:
        return int(self.videos.shape[1])

    def name(self, index: int) -> str:
        return f"{self.description}[{index}]"

    def _take(self, indices: Sequence[int]) -> torch.Tensor:
        if isinstance(self.videos, torch.Tensor):
            return self.videos[list(indices)]
        return torch.from_numpy(np.ascontiguousarray(self.videos[list(indices)]))

    def resized_batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        return resize_bilinear_tf1(pixels_0_255(self._take(indices).to(device)))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{tuple(self.videos.shape)} {self.videos.dtype}".encode())
        item_size = self.videos.element_size() if isinstance(self.videos, torch.Tensor) else self.videos.itemsize
        video_bytes = max(1, int(np.prod(self.videos.shape[1:])) * item_size)
        step = max(1, 2**26 // video_bytes)  # ~64 MB at a time
        for start in range(0, len(self), step):
            chunk = self._take(range(start, min(start + step, len(self))))
            digest.update(chunk.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class FolderVideoSet(VideoSet):
    """Video files and frame folders found under a folder (recursively), in sorted order.

    Each video is decoded with every frame as stored (no temporal resampling, as the reference takes frames
    as given), at native size; each frame is resized to 224x224 as it is decoded, so memory per video is
    ``T x 224 x 224 x 3`` floats whatever the source resolution. ``frames`` takes the first T frames.
    """

    def __init__(self, folder: PathLike, frames: Optional[int] = None):
        from i3d_torch.core.video import is_video_path  # the decoder is only needed for folders

        self.folder = Path(folder)
        self.description = str(folder)
        self.max_frames = frames
        self.paths = self._find_videos(self.folder, is_video_path)

    @staticmethod
    def _find_videos(folder: Path, is_video_path) -> List[Path]:
        if not folder.is_dir():
            raise InputError("not a folder", folder)
        found: List[Path] = []
        loose_images = 0
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if is_video_path(entry):
                found.append(entry)
            elif entry.is_dir():
                found.extend(FolderVideoSet._find_videos(entry, is_video_path))
            elif entry.suffix.lower() in _IMAGE_SUFFIXES:
                loose_images += 1
        if not found and loose_images:
            raise InputError(
                f"holds {loose_images} image(s) but no video: it looks like the frames of one video; a set is a "
                f"folder of videos or of frame folders",
                folder,
            )
        return found

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return str(self.paths[index])

    def read_resized(self, index: int) -> torch.Tensor:
        """One video, every frame resized to 224x224 as decoded: float32 ``[T, 224, 224, 3]`` in 0..255."""
        from i3d_torch.core.video import iter_frames

        path = self.paths[index]
        resized = [
            resize_bilinear_tf1(torch.from_numpy(np.ascontiguousarray(frame)))
            for frame in iter_frames(path, fps=None, short_side=None, max_frames=self.max_frames)
        ]
        if not resized:
            raise VideoError("no frame decoded", path)
        if self.max_frames is not None and len(resized) < self.max_frames:
            raise VideoError(
                f"has {len(resized)} frame(s), fewer than the {self.max_frames} asked for (--frames)", path
            )
        return torch.stack(resized)

    def resized_batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        clips = [self.read_resized(i) for i in indices]
        check_same_frames([c.shape[0] for c in clips], [self.name(i) for i in indices])
        return torch.stack(clips).to(device)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"frames={self.max_frames}".encode())
        for path in self.paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                stat = file.stat()
                digest.update(f"{file.relative_to(self.folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# A set's statistics, and their cache
# ---------------------------------------------------------------------------------------------------


@dataclass
class VideoSetStats:
    """What FVD and KVD need from one set: its embeddings, their mean and covariance (float64), and how
    they were made (model checksum, preprocessing, frame count) so that a cache is never mixed up."""

    embeddings: np.ndarray  # float32 [n, d]: I3D's time-averaged logits, one row per video
    frames: int
    model_name: str
    model_sha256: str
    preprocessing: Dict[str, Any] = field(default_factory=lambda: dict(PREPROCESSING))
    source: str = ""
    source_fingerprint: str = ""
    mean: np.ndarray = field(init=False)
    cov: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings)
        if self.embeddings.ndim != 2:
            raise InputError(f"embeddings must be [n, d], got shape {self.embeddings.shape}")
        self.mean, self.cov = mean_and_covariance(self.embeddings)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def save(self, path: PathLike) -> None:
        """Write an ``.npz`` atomically (never a half-written cache, even on Ctrl-C)."""
        arrays = {
            "format": np.array(CACHE_FORMAT),
            "embeddings": self.embeddings,
            "mean": self.mean,
            "cov": self.cov,
            "n": np.array(self.n, dtype=np.int64),
            "frames": np.array(self.frames, dtype=np.int64),
            "model_name": np.array(self.model_name),
            "model_sha256": np.array(self.model_sha256),
            "preprocessing": np.array(json.dumps(self.preprocessing, sort_keys=True)),
            "source": np.array(self.source),
            "source_fingerprint": np.array(self.source_fingerprint),
            "created": np.array(datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        }
        try:
            with atomic_open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a temp name
                np.savez(fh, **arrays)
        except OSError as exc:  # name the cache the user gave, not the hidden temporary beside it
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from None

    @classmethod
    def load(cls, path: PathLike) -> "VideoSetStats":
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a readable .npz of FVD statistics ({' '.join(str(exc).split())})", path) from None
        required = ("format", "embeddings", "frames", "model_name", "model_sha256", "preprocessing")
        missing = [k for k in required if k not in contents]
        if missing or str(contents["format"]) != CACHE_FORMAT:
            raise InputError(
                f"not an FVD statistics file of this version (expected format {CACHE_FORMAT!r}"
                + (f"; missing {', '.join(missing)})" if missing else f", found {str(contents['format'])!r})"),
                path,
            )
        embeddings = contents["embeddings"]
        if embeddings.dtype.kind != "f" or not np.isfinite(embeddings).all():
            # NaN or Inf would reach the covariance's eigendecomposition as a LinAlgError (or a NaN distance).
            bad = int((~np.isfinite(embeddings)).sum()) if embeddings.dtype.kind == "f" else embeddings.size
            raise InputError(
                f"not usable FVD statistics: {bad} of {embeddings.size} embedding values are NaN, infinite or not "
                f"floating-point ({embeddings.dtype}); recompute them",
                path,
            )
        stats = cls(
            embeddings=embeddings,
            frames=int(contents["frames"]),
            model_name=str(contents["model_name"]),
            model_sha256=str(contents["model_sha256"]),
            preprocessing=json.loads(str(contents["preprocessing"])),
            source=str(contents.get("source", path)),
            source_fingerprint=str(contents.get("source_fingerprint", "")),
        )
        stats.cache_path = str(path)
        return stats

    def check_compatible(self, model_sha256: str, where: str) -> None:
        """Refuse statistics made with other weights or other preprocessing than ``model_sha256`` / ours."""
        if self.model_sha256 != model_sha256:
            raise InputError(
                f"statistics were computed with other weights (sha256 {self.model_sha256[:12]}..., "
                f"{self.model_name}) than {where} (sha256 {model_sha256[:12]}...); recompute them",
                getattr(self, "cache_path", None),
            )
        if self.preprocessing != PREPROCESSING:
            theirs, ours = json.dumps(self.preprocessing, sort_keys=True), json.dumps(PREPROCESSING, sort_keys=True)
            raise InputError(
                f"statistics were computed with other preprocessing ({theirs}); this version uses {ours}; "
                f"recompute them",
                getattr(self, "cache_path", None),
            )


# ---------------------------------------------------------------------------------------------------
# What the user gave -> a set
# ---------------------------------------------------------------------------------------------------


def open_video_set(
    source: Any, *, frames: Optional[int] = None, name: str = "array"
) -> Union[VideoSet, VideoSetStats]:
    """A set of videos from what the user gave: array/tensor, ``.npy``, ``.npz`` statistics, or folder.

    ``frames`` (optional) keeps the first T frames of every video; ``name`` names an in-memory array in
    messages (files are named by their path).
    """
    if isinstance(source, (VideoSetStats, VideoSet)):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        videos = source if frames is None else source[:, :frames]
        return ArrayVideoSet(videos, name)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            f"a set of videos is an array, a .npy, a .npz of statistics or a folder; got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        video_set = FolderVideoSet(path, frames=frames)
        if len(video_set) == 0:
            raise InputError("no videos found (video files or frame folders)", path)
        return video_set
    if path.suffix == ".npz":
        return VideoSetStats.load(path)
    if path.suffix == ".npy":
        try:
            # Copy-on-write mapping: read lazily, writable for torch.from_numpy, never written back.
            videos = np.load(path, mmap_mode="c", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"not a readable .npy array ({' '.join(str(exc).split())})", path) from None
        if frames is not None and videos.ndim == 5:
            videos = videos[:, :frames]
        return ArrayVideoSet(videos, str(path))
    raise InputError("a set of videos is a folder, a .npy [N, T, H, W, 3] or a .npz of cached statistics", path)
