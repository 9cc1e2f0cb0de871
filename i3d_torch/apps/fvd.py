"""Fréchet Video Distance (FVD) and Kernel Video Distance (KVD), equal to the TensorFlow reference.

Unterthiner et al., "Towards Accurate Generative Models of Video: A New Metric & Challenges", 2018;
reference code: google-research/google-research ``frechet_video_distance/frechet_video_distance.py``
(Apache-2.0), which this module re-implements from its documented behaviour (no code copied):

1. **Preprocess**: every frame, whatever its size and aspect, is resized to 224x224 with TF1's
   ``tf.image.resize_bilinear`` (``align_corners=False, half_pixel_centers=False``: source coordinate
   ``i * in / out``, *not* the half-pixel convention of ``tf.image.resize`` in TF2 or of
   ``F.interpolate``), then pixel values ``x`` in 0..255 become ``2 * x / 255 - 1``.
2. **Embed** with the TF-Hub module ``deepmind/i3d-kinetics-400/1`` on all T frames of each video; the
   embedding is the tensor ``RGB/inception_i3d/Mean:0``: the 400 Kinetics logits averaged over time.
   Here: the ``rgb_kinetics400`` weights (the same TF-Hub model) and ``InceptionI3d.forward``.
3. **Distance**: tensorflow_gan's ``frechet_classifier_distance_from_activations``: means and
   covariances (divided by n - 1) in float64, and
   ``FVD = |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``.

KVD is the unbiased squared MMD with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` on the same
embeddings (tensorflow_gan's ``kernel_classifier_distance_and_std_from_activations``: the block estimator
with blocks of at most 1024 videos, which is the plain unbiased estimator for sets of <= 1024).

A set of videos is an array ``[N, T, H, W, 3]`` (uint8 0..255, or floats in [0, 1]), a ``.npy`` of one,
a folder of videos or frame folders, or an ``.npz`` of statistics cached by an earlier run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.pipeline import distributed
from i3d_torch.core.errors import I3DError, InputError, VideoError
from i3d_torch.core.fileio import atomic_open

__all__ = [
    "fvd",
    "FVDResult",
    "VideoSetStats",
    "compute_stats",
    "frechet_distance",
    "kernel_distance",
    "resize_bilinear_tf1",
    "fvd_model_input",
    "open_video_set",
    "SmallSampleWarning",
]

#: Frame size the reference resizes every frame to (the whole frame: no crop, aspect not kept).
FVD_SIZE: Tuple[int, int] = (224, 224)
#: Shortest clip the I3D logits head can embed (TF's 2x7x7 VALID average pool over Mixed_5c).
MIN_FRAMES = 9
#: Block size of tensorflow_gan's KVD estimator.
KVD_MAX_BLOCK_SIZE = 1024
DEFAULT_WEIGHTS = "rgb_kinetics400"
DEFAULT_BATCH_SIZE = 8
CACHE_FORMAT = "i3d-torch/fvd-stats/1"

#: The preprocessing and embedding, recorded in every statistics cache; a cache made otherwise is refused.
PREPROCESSING: Dict[str, Any] = {
    "resize": "tf1_resize_bilinear",
    "align_corners": False,
    "half_pixel_centers": False,
    "size": list(FVD_SIZE),
    "values": "2*x/255-1",
    "embedding": "Logits averaged over time",
    "temporal_resampling": "none",
}

ArrayLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]


class SmallSampleWarning(UserWarning):
    """A set too small for a full-rank covariance of the embedding: FVD is defined but strongly biased."""


# ---------------------------------------------------------------------------------------------------
# Preprocessing: TF1 resize_bilinear, bit for bit
# ---------------------------------------------------------------------------------------------------


def _tf1_interpolation(in_size: int, out_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows (lower, upper) and weight of the upper one for each output row, as TF1 computes them.

    TF1 without half-pixel centres maps output index i to source coordinate ``i * (in / out)`` in float32,
    interpolates between floor and ceil of it, and clamps at the last row.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(source)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    weight = (source - floor).astype(np.float32)
    return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(weight)


def resize_bilinear_tf1(images: torch.Tensor, size: Sequence[int] = FVD_SIZE) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(images, size)`` (align_corners=False, half_pixel_centers=False).

    ``images``: float ``[..., H, W, C]`` (channels last, any leading axes). Returns float32
    ``[..., size[0], size[1], C]``, equal to TF's output bit for bit (same float32 operations in the same
    order: interpolate along x on the two source rows, then along y). No antialiasing, as in TF.
    """
    x = images.float()
    height, width = int(x.shape[-3]), int(x.shape[-2])
    y_lower, y_upper, y_weight = (t.to(x.device) for t in _tf1_interpolation(height, int(size[0])))
    x_lower, x_upper, x_weight = (t.to(x.device) for t in _tf1_interpolation(width, int(size[1])))
    top_rows = x.index_select(-3, y_lower)
    bottom_rows = x.index_select(-3, y_upper)
    x_weight = x_weight[:, None]  # broadcast over channels
    top = top_rows.index_select(-2, x_lower)
    top = top + (top_rows.index_select(-2, x_upper) - top) * x_weight
    bottom = bottom_rows.index_select(-2, x_lower)
    bottom = bottom + (bottom_rows.index_select(-2, x_upper) - bottom) * x_weight
    return top + (bottom - top) * y_weight[:, None, None]


def _pixels_0_255(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels, or floats in [0, 1], as float32 pixel values in 0..255 (what the reference takes)."""
    if frames.dtype == torch.uint8:
        return frames.float()
    return frames.float() * 255.0


def fvd_model_input(videos: ArrayLike) -> torch.Tensor:
    """The reference's preprocessing: ``[N, T, H, W, 3]`` frames to the model input ``[N, 3, T, 224, 224]``.

    ``videos`` are uint8 (0..255) or floats in [0, 1] (checked; see :func:`check_video_array`). Every frame
    is resized to 224x224 with TF1 bilinear resizing, then mapped to [-1, 1] by ``2 * x / 255 - 1``.
    """
    tensor = _as_video_tensor(videos)
    check_video_array(tensor, "videos")
    return _model_input_from_resized(resize_bilinear_tf1(_pixels_0_255(tensor)))


def _model_input_from_resized(resized: torch.Tensor) -> torch.Tensor:
    """Resized frames ``[N, T, 224, 224, 3]`` in 0..255 to ``[N, 3, T, 224, 224]`` in [-1, 1]."""
    # The reference's float32 operations, in its order: 2 * x, / 255, - 1.
    scaled = resized.mul(2.0).div_(255.0).sub_(1.0)
    return scaled.permute(0, 4, 1, 2, 3).contiguous()


# ---------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------


def _as_video_tensor(videos: ArrayLike) -> torch.Tensor:
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
        hint = " (channels look first: permute [N, T, 3, H, W] to [N, T, H, W, 3])" if len(shape) == 5 and shape[2] == 3 else ""
        raise InputError(f"{name}: expected RGB videos [N, T, H, W, 3], got shape {shape}{hint}")
    if shape[1] < MIN_FRAMES:
        raise InputError(_too_few_frames(shape[1], name))
    if shape[2] < 1 or shape[3] < 1:
        raise InputError(f"{name}: empty frames, shape {shape}")
    dtype = videos.dtype
    if dtype in (np.uint8, torch.uint8):
        return
    is_float = videos.is_floating_point() if isinstance(videos, torch.Tensor) else np.issubdtype(dtype, np.floating)
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


def _too_few_frames(frames: int, name: str) -> str:
    return (
        f"{name}: {frames} frame(s) per video; FVD needs at least {MIN_FRAMES}: I3D's logits head (a 2x7x7 VALID "
        f"average pool, as in the TF-Hub module the reference embeds with) is undefined for shorter clips, where "
        f"the reference's embeddings come out NaN"
    )


def _check_set_size(n: int, name: str, dim: int) -> None:
    if n < 2:
        raise InputError(f"{name}: {n} video(s); a covariance needs at least 2 (and {dim + 1} for full rank)")
    if n <= dim:
        warnings.warn(
            f"{name}: {n} videos give a rank-deficient {dim}x{dim} covariance (full rank needs at least "
            f"{dim + 1}); FVD is still defined but biased upwards, so only compare values computed on sets of "
            f"the same size",
            SmallSampleWarning,
            stacklevel=4,  # the caller of fvd()
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
            raise InputError(f"expected a numpy array or torch tensor of videos [N, T, H, W, 3], got {type(videos).__name__}")
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
        return resize_bilinear_tf1(_pixels_0_255(self._take(indices).to(device)))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{tuple(self.videos.shape)} {self.videos.dtype}".encode())
        item_size = self.videos.element_size() if isinstance(self.videos, torch.Tensor) else self.videos.itemsize
        video_bytes = max(1, int(np.prod(self.videos.shape[1:])) * item_size)
        step = max(1, 2**26 // video_bytes)  # ~64 MB at a time
        for start in range(0, len(self), step):
            digest.update(self._take(range(start, min(start + step, len(self)))).detach().cpu().contiguous().numpy().tobytes())
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
            elif entry.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"):
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
            raise VideoError(f"has {len(resized)} frame(s), fewer than the {self.max_frames} asked for (--frames)", path)
        return torch.stack(resized)

    def resized_batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        clips = [self.read_resized(i) for i in indices]
        _check_same_frames([c.shape[0] for c in clips], [self.name(i) for i in indices])
        return torch.stack(clips).to(device)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"frames={self.max_frames}".encode())
        for path in self.paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                stat = file.stat()
                digest.update(f"{file.relative_to(self.folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _require_two_videos(video_set: VideoSet) -> None:
    if len(video_set) < 2:
        raise InputError(f"{video_set.description}: {len(video_set)} video(s); FVD needs a covariance, so at least 2 per set")


def _check_comparable_lengths(real: Optional[int], fake: Optional[int]) -> None:
    if real is not None and fake is not None and real != fake:
        raise InputError(
            f"the real videos have {real} frames and the fake ones {fake}; FVD compares clips of the same length "
            f"(use --frames T / frames=T to take the first T frames of each)"
        )


def _check_same_frames(frame_counts: Sequence[int], names: Sequence[str]) -> None:
    """Every video of a set needs the same number of frames (the reference stacks them in one tensor)."""
    if not frame_counts:
        return
    first = frame_counts[0]
    if first < MIN_FRAMES:
        raise InputError(_too_few_frames(first, names[0]))
    for count, name in zip(frame_counts, names):
        if count != first:
            raise InputError(
                f"{name}: {count} frames, but {names[0]} has {first}; all videos of a set need the same frame "
                f"count (use --frames T / frames=T to take the first T frames of each)"
            )


def open_video_set(source: Any, *, frames: Optional[int] = None, name: str = "array") -> Union[VideoSet, "VideoSetStats"]:
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
        raise InputError(f"a set of videos is an array, a .npy, a .npz of statistics or a folder; got {type(source).__name__}")
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


# ---------------------------------------------------------------------------------------------------
# Statistics
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
        with atomic_open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a temp name
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: PathLike) -> "VideoSetStats":
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a readable .npz of FVD statistics ({' '.join(str(exc).split())})", path) from None
        missing = [k for k in ("format", "embeddings", "frames", "model_name", "model_sha256", "preprocessing") if k not in contents]
        if missing or str(contents["format"]) != CACHE_FORMAT:
            raise InputError(
                f"not an FVD statistics file of this version (expected format {CACHE_FORMAT!r}"
                + (f"; missing {', '.join(missing)})" if missing else f", found {str(contents['format'])!r})"),
                path,
            )
        stats = cls(
            embeddings=contents["embeddings"],
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
                f"{self.model_name}) than {where} (sha256 {model_sha256[:12]}...); recompute them"
                , getattr(self, "cache_path", None),
            )
        if self.preprocessing != PREPROCESSING:
            raise InputError(
                f"statistics were computed with other preprocessing ({json.dumps(self.preprocessing, sort_keys=True)}); "
                f"this version uses {json.dumps(PREPROCESSING, sort_keys=True)}; recompute them",
                getattr(self, "cache_path", None),
            )


def mean_and_covariance(embeddings: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divided by n - 1, as tensorflow_gan) in float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    mean = x.mean(axis=0)
    centered = x - mean
    if x.shape[0] < 2:
        return mean, np.full((x.shape[1], x.shape[1]), np.nan)
    return mean, centered.T @ centered / (x.shape[0] - 1)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; rounding's tiny negative eigenvalues -> 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((S1 S2)^1/2)``, computed as ``tr((S1^1/2 S2 S1^1/2)^1/2)``: same eigenvalues, but symmetric, so a
    stable eigendecomposition replaces a general matrix square root (no complex parts to discard)."""
    root1 = _symmetric_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(m1, S1) and N(m2, S2), in float64:
    ``|m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``. Rounding can push the exact 0 of identical sets
    a hair below zero; that is reported as 0."""
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != mean1.shape * 2:
        raise InputError(f"embedding sizes differ: means {mean1.shape} vs {mean2.shape}, covariances {cov1.shape} vs {cov2.shape}")
    distance = float(np.sum((mean1 - mean2) ** 2)) + float(np.trace(cov1) + np.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(distance, 0.0)


def kernel_distance(real: np.ndarray, fake: np.ndarray, max_block_size: int = KVD_MAX_BLOCK_SIZE) -> Tuple[float, float]:
    """KVD and its standard error: the unbiased MMD^2 with kernel ``(x.y / d + 1)^3`` (float64).

    As tensorflow_gan: both sets are cut into the same number of blocks of at most ``max_block_size`` (the
    larger blocks last), the unbiased estimate is averaged over blocks, and the standard error is the
    blocks' spread (NaN with one block). Sets of up to ``max_block_size`` give the plain unbiased estimate.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape[1] != fake.shape[1]:
        raise InputError(f"embedding sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    n_blocks = int(np.ceil(max(len(real), len(fake)) / max_block_size))
    dim = real.shape[1]

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / dim + 1.0) ** 3

    estimates = []
    for r, g in zip(_blocks(real, n_blocks), _blocks(fake, n_blocks)):
        m, n = len(r), len(g)
        if m < 2 or n < 2:
            raise InputError(f"KVD needs at least 2 videos per set and block, got {m} and {n}")
        k_rr, k_gg = kernel(r, r), kernel(g, g)
        estimates.append(
            (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
            + (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
            - 2.0 * kernel(r, g).mean()
        )
    estimates = np.array(estimates)
    std = float(np.sqrt(estimates.var(ddof=1) / n_blocks)) if n_blocks > 1 else float("nan")
    return float(estimates.mean()), std


def _blocks(x: np.ndarray, n_blocks: int) -> List[np.ndarray]:
    """``n_blocks`` consecutive blocks whose sizes differ by at most one, the larger ones last."""
    small = len(x) // n_blocks
    n_large = len(x) - small * n_blocks
    sizes = [small] * (n_blocks - n_large) + [small + 1] * n_large
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


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
                pending = pool.submit(_prepared_batch, video_set, batches[k + 1], device) if k + 1 < len(batches) else None
                frame_counts.extend([int(resized.shape[1])] * len(batch))
                names.extend(video_set.name(i) for i in batch)
                _check_same_frames(frame_counts, names)
                logits = model(_model_input_from_resized(resized))
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
        result = embed_videos(video_set, model, mine, batch_size=batch_size, device=device, progress=progress and distributed.is_main_process())
        part: Tuple[Any, ...] = (mine, result[0], result[1], None)
    except (I3DError, OSError) as exc:
        part = (mine, None, None, (type(exc).__name__, str(exc)))
    parts: List[Any] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(parts, part)
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
    _check_same_frames(frame_counts, [video_set.name(i) for i in everything])
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
    _require_two_videos(video_set)
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
    _check_comparable_lengths(real.frames, fake.frames)
    for stats, name in ((real, "real set"), (fake, "fake set")):
        _check_set_size(stats.n, f"{name} ({stats.source})", stats.dim)
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
            _require_two_videos(video_set)
    _check_comparable_lengths(sets[0].frames, sets[1].frames)
    if model is None and all(isinstance(s, VideoSetStats) and c is None for s, c in zip(sets, caches)):
        return distance_between(sets[0], sets[1], kvd=kvd)  # both cached: no model needed
    if model is None:
        model = _load_model_once(weights, device)
    model.eval()
    stats = [
        compute_stats(s, model, frames=frames, batch_size=batch_size, device=device, progress=progress, cache=c)
        for s, c in zip(sets, caches)
    ]
    return distance_between(stats[0], stats[1], kvd=kvd)


def _load_model_once(weights: str, device: Union[str, torch.device]) -> torch.nn.Module:
    """Load the weights; under torchrun rank 0 goes first, so a first-use download and conversion happens
    once rather than on every rank at the same time."""
    from i3d_torch.weights.registry import load_model

    with distributed.main_process_first():
        return load_model(weights, device=str(distributed.device_for_rank(str(device))))


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Frechet Video Distance between two sets of videos, computed as the TF reference "
        "(google-research frechet_video_distance) does: every frame resized to 224x224 (TF1 bilinear), "
        "I3D Kinetics-400 logits averaged over time, Frechet distance of their Gaussians."
    )
    parser.add_argument("real", help="the reference set: a folder of videos or frame folders, a .npy [N,T,H,W,3], or an .npz of statistics")
    parser.add_argument("fake", nargs="?", help="the set to evaluate (same forms); omit it to only cache REAL's statistics with --cache-stats")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--kvd", action="store_true", help="also compute the Kernel Video Distance (polynomial-kernel MMD)")
    parser.add_argument("--cache-stats", nargs="+", metavar="FILE.npz", default=[], help="statistics caches for REAL (and FAKE): read if valid, else written")
    parser.add_argument("--frames", type=int, default=None, metavar="T", help=f"use the first T frames of each video (T >= {MIN_FRAMES})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"videos per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun, cuda means cuda:LOCAL_RANK)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"weights registry name or file (default {DEFAULT_WEIGHTS}, the TF-Hub module's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if len(args.cache_stats) > (2 if args.fake is not None else 1):
        raise InputError(f"--cache-stats takes one file per set (REAL, then FAKE), got {len(args.cache_stats)}")
    if args.frames is not None and args.frames < MIN_FRAMES:
        raise InputError(_too_few_frames(args.frames, "--frames"))
    progress = not args.quiet and sys.stderr.isatty()
    with warnings.catch_warnings(record=True) as caught, distributed.process_group(args.device):
        warnings.simplefilter("always", SmallSampleWarning)
        if args.fake is None:
            if not args.cache_stats:
                raise InputError("give FAKE, or --cache-stats FILE.npz to only compute REAL's statistics")
            result = _cache_only(args, progress)
        else:
            result = fvd(
                args.real,
                args.fake,
                weights=args.weights,
                frames=args.frames,
                batch_size=args.batch_size,
                device=args.device,
                kvd=args.kvd,
                cache_stats=args.cache_stats,
                progress=progress,
            )
    if not distributed.is_main_process():
        return 0
    for warning in _unique_messages(caught):
        print(f"i3d-torch fvd: warning: {warning}", file=sys.stderr)
    if isinstance(result, VideoSetStats):
        _print_stats(result, args)
    elif args.json:
        print(json.dumps({**result.to_dict(), "real": str(args.real), "fake": str(args.fake)}, sort_keys=True))
    else:
        line = f"FVD {result.fvd:.4f}"
        if result.kvd is not None:
            line += f"  KVD {result.kvd:.6g}" + ("" if result.kvd_std is None or np.isnan(result.kvd_std) else f" (std {result.kvd_std:.3g})")
        print(f"{line}  ({result.n_real} real, {result.n_fake} fake videos of {result.frames} frames; {result.model_name})")
    return 0


def _cache_only(args: argparse.Namespace, progress: bool) -> VideoSetStats:
    model = _load_model_once(args.weights, args.device)
    return compute_stats(
        args.real, model, frames=args.frames, batch_size=args.batch_size, device=args.device, progress=progress, cache=args.cache_stats[0]
    )


def _print_stats(stats: VideoSetStats, args: argparse.Namespace) -> None:
    summary = {"stats": str(args.cache_stats[0]), "n": stats.n, "frames": stats.frames, "model": stats.model_name, "model_sha256": stats.model_sha256}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"statistics of {stats.n} videos of {stats.frames} frames written to {args.cache_stats[0]}")


def _unique_messages(caught: List[warnings.WarningMessage]) -> Iterator[str]:
    seen = set()
    for item in caught:
        message = " ".join(str(item.message).split())
        if message not in seen:
            seen.add(message)
            yield message
