"""FVD protocols by name: each one a frozen record of how a published code base turns two sets of videos into an
FVD (which frames, how they are resized and scaled, how many videos, how the covariance is normalised and how its
square root is taken), so that a number can say how it was computed and be recomputed the same way.

The records are transcribed from each code base (repository, file and commit in ``SOURCES`` and docs/fvd.md); the
embedding is always this package's I3D (``rgb_kinetics400`` by default, the TF-Hub model), so two protocols differ
only in what the record says. ``Protocol.spec()`` is the record as a dict and ``Protocol.spec_hash`` a short hash of
it: every result carries both.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from i3d_torch.apps.fvd.resize import resize_bilinear_tf1
from i3d_torch.core.errors import InputError

#: Where each record was transcribed from (repository, file(s), commit read).
SOURCES: Dict[str, str] = {
    "tf": "google-research/google-research frechet_video_distance/frechet_video_distance.py (and tensorflow_gan "
    "classifier_metrics.py); this package's default, equal to that reference (docs/fvd.md)",
    "stylegan-v": "universome/stylegan-v src/metrics/{metric_main,frechet_video_distance,metric_utils}.py, "
    "src/training/dataset.py @ 3fecd69c602e1cda204357201461c0fb0a634909",
    "videogpt": "wilson1yan/VideoGPT videogpt/fvd/fvd.py, videogpt/data.py, scripts/compute_fvd.py "
    "@ 733d2b1541e166d7f29df514c7d196c768011dd2",
    "tats": "songweige/TATS tats/fvd/fvd.py @ 03bbce1daa3da7e9bff8221e9ec433df9484817f",
    "cd-fvd": "songweige/content-debiased-fvd cdfvd/fvd.py, cdfvd/utils/{data_utils,metric_utils}.py, "
    "cdfvd/third_party/i3d/utils.py @ a1e037ab7cb087debd2221d14ae4a001ec054201",
}

RESIZES = ("tf1-bilinear", "bilinear", "short-side-crop")
VALUE_MAPS = ("2*x/255-1", "(x/255-0.5)*2", "x/255*2-1")
COVARIANCES = ("unbiased", "biased")
SQRT_METHODS = ("eigh", "svd", "sqrtm")
CLIP_STARTS = ("first", "random")


@dataclass(frozen=True)
class Protocol:
    """One FVD protocol. Frames are taken per video as ``start + step * arange(frames)``; ``frames=None`` takes every
    frame as given (the TF reference). ``random_start`` says which sets draw ``start`` at random (uniform over every
    start that fits, seeded per video: see :meth:`clip_indices`); the others start at frame 0."""

    name: str
    source: str
    # Frames
    frames: Optional[int]
    step: int
    random_start: Tuple[str, ...]  # subset of ("real", "fake")
    seed: int
    # Pixels
    resize: str  # one of RESIZES
    size: int  # the model's input size (224)
    short_side: Optional[int]  # short-side-crop: resize the short side to this, centre-crop a square of it
    antialias: bool  # short-side-crop: torch's antialiased bilinear (cd-fvd)
    quantize_uint8: bool  # the short-side crop is cast back to uint8 (truncated) before the 224 resize (cd-fvd)
    values: str  # one of VALUE_MAPS, the map from 0..255 to [-1, 1] in the source's float32 order
    # Statistics
    max_real: Optional[int]  # the first N videos of a set are used; None: all
    max_fake: Optional[int]
    sample_size: int  # the set size the protocol states; fewer videos give a warning
    covariance: str  # "unbiased" (n - 1) or "biased" (n)
    sqrt: str  # eigh: tr((S1^1/2 S2 S1^1/2)^1/2) (tensorflow_gan); svd: the same with SVD square roots, eps 1e-10;
    #            sqrtm: tr(sqrtm(S1 S2)) real part (scipy.linalg.sqrtm)
    notes: str = ""

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.resize, RESIZES, "resize"),
            (self.values, VALUE_MAPS, "values"),
            (self.covariance, COVARIANCES, "covariance"),
            (self.sqrt, SQRT_METHODS, "sqrt"),
        ):
            if value not in allowed:
                raise InputError(f"protocol {self.name}: {what} {value!r} is not one of {', '.join(allowed)}")
        if self.frames is not None and self.frames < 1 or self.step < 1:
            raise InputError(f"protocol {self.name}: frames and step must be positive")
        if not set(self.random_start) <= {"real", "fake"}:
            raise InputError(f"protocol {self.name}: random_start takes 'real' and/or 'fake'")

    # -- identity -----------------------------------------------------------------------------------------

    def spec(self) -> Dict[str, Any]:
        """The record as a plain dict (what the hash is of, and what caches record)."""
        out = asdict(self)
        out["random_start"] = list(self.random_start)
        return out

    @property
    def spec_hash(self) -> str:
        """12 hex digits of the sha256 of the spec: a result that states it can be recomputed the same way."""
        text = json.dumps({k: v for k, v in self.spec().items() if k != "notes"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def clip_span(self) -> Optional[int]:
        """Frames a video needs for one clip (``None``: any length)."""
        return None if self.frames is None else (self.frames - 1) * self.step + 1

    # -- frames -------------------------------------------------------------------------------------------

    def clip_indices(self, n_frames: int, role: str, index: int) -> List[int]:
        """Frame indices of the clip taken from video ``index`` (0-based, in the set's order) of ``n_frames``.

        A random start is uniform over every start whose clip fits (stylegan-v's ``randint(0, L - n*s + s - 1)``,
        cd-fvd's ``randint(0, n_clips - 1)`` over torchvision's step-1 clips: the same set for step 1), drawn from
        ``random.Random`` seeded by (seed, role, index): a fixed draw per video, so the clip does not depend on
        batch size, the number of ranks or the order videos are read in.
        """
        if self.frames is None:
            return list(range(n_frames))
        span = self.clip_span
        if n_frames < span:
            raise InputError(
                f"{n_frames} frame(s); protocol {self.name} takes {self.frames} frames every {self.step} "
                f"({span} frames per video)"
            )
        start = 0
        if role in self.random_start:
            start = video_rng(self.seed, role, index).randint(0, n_frames - span)
        return list(range(start, start + span, self.step))

    def max_videos(self, role: str) -> Optional[int]:
        return self.max_real if role == "real" else self.max_fake

    # -- pixels -------------------------------------------------------------------------------------------

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames ``[N, T, H, W, 3]`` as float32 pixel values 0..255 to the model input ``[N, 3, T, 224, 224]``."""
        return values_to_model_input(self.resized(pixels), self.values)

    def resized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames ``[..., H, W, 3]`` (float32, 0..255) resized as the protocol does: ``[..., 224, 224, 3]``."""
        if self.resize == "tf1-bilinear":
            return resize_bilinear_tf1(pixels, (self.size, self.size))
        lead = pixels.shape[:-3]
        nchw = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2).float()
        if self.resize == "bilinear":
            out = F.interpolate(nchw, size=(self.size, self.size), mode="bilinear", align_corners=False)
        else:
            out = _short_side_crop(nchw, self)
        return out.permute(0, 2, 3, 1).reshape(*lead, self.size, self.size, 3)


def video_rng(seed: int, role: str, index: int) -> random.Random:
    """The random stream of one video of one set: seeded by a hash of (seed, role, index), stable across runs."""
    digest = hashlib.sha256(f"{seed}/{role}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _short_side_crop(nchw: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """VideoGPT's / cd-fvd's ``preprocess``: [0, 1], short side to R (long side ``ceil``), centre crop R x R."""
    resolution = protocol.short_side or protocol.size
    frames = nchw / 255.0
    height, width = frames.shape[-2:]
    scale = resolution / min(height, width)
    target = (resolution, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), resolution)
    frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=False, antialias=protocol.antialias)
    height, width = frames.shape[-2:]
    top, left = (height - resolution) // 2, (width - resolution) // 2
    frames = frames[..., top : top + resolution, left : left + resolution]
    if protocol.quantize_uint8:
        # cd-fvd: batch['video'] * 255 -> .byte() (truncation), then its preprocess_i3d resizes to 224 again.
        pixels = (frames * 255).to(torch.uint8).float()
        return F.interpolate(pixels, size=(protocol.size, protocol.size), mode="bilinear", align_corners=False)
    if resolution != protocol.size:
        frames = F.interpolate(frames, size=(protocol.size, protocol.size), mode="bilinear", align_corners=False)
    return frames * 255.0


def values_to_model_input(resized: torch.Tensor, values: str) -> torch.Tensor:
    """Resized frames ``[N, T, 224, 224, 3]`` in 0..255 to ``[N, 3, T, 224, 224]`` in [-1, 1], in the source's
    float32 operation order."""
    if values == "2*x/255-1":
        scaled = resized.mul(2.0).div_(255.0).sub_(1.0)
    elif values == "(x/255-0.5)*2":
        scaled = resized.div(255.0).sub_(0.5).mul_(2.0)
    else:
        scaled = resized.div(255.0).mul_(2.0).sub_(1.0)
    return scaled.permute(0, 4, 1, 2, 3).contiguous()


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------

_COMMON = dict(seed=0, size=224, short_side=None, antialias=False, quantize_uint8=False)


def _stylegan_v(name: str, frames: int, step: int) -> Protocol:
    return Protocol(
        name=name,
        source=SOURCES["stylegan-v"],
        frames=frames,
        step=step,
        random_start=("real",),
        resize="bilinear",
        values="x/255*2-1",
        max_real=2048,
        max_fake=2048,
        sample_size=2048,
        covariance="biased",
        sqrt="sqrtm",
        notes=(
            "metric_main.fvd2048_*: compute_fvd(max_real=2048, num_gen=2048); real clips start at "
            "random.randint(0, L - n*s + s - 1) (dataset.py, load_n_consecutive_random_offset), generated ones at 0; "
            "videos shorter than the clip are discarded from the real set (discard_short_videos) - here refused; "
            "FeatureStats.get_mean_cov: raw sums / n minus the outer mean (biased); scipy.linalg.sqrtm(S_gen S_real). "
            "The resize and the [-1, 1] map live inside the TorchScript detector (rescale=True, resize=True), which is "
            "not in the repository: x/255*2-1 is its author's description; bilinear 224x224 (align_corners=False) is "
            "this record's assumption. stylegan-v's offsets come from unseeded DataLoader workers; here they are "
            "seeded per video."
        ),
        **{**_COMMON},
    )


PROTOCOLS: Dict[str, Protocol] = {
    "tf": Protocol(
        name="tf",
        source=SOURCES["tf"],
        frames=None,
        step=1,
        random_start=(),
        resize="tf1-bilinear",
        values="2*x/255-1",
        max_real=None,
        max_fake=None,
        sample_size=401,
        covariance="unbiased",
        sqrt="eigh",
        notes=(
            "every frame as given, whole frame to 224x224 with TF1 resize_bilinear; tensorflow_gan's float64 "
            "Frechet distance (covariance over n - 1). The reference states no set size: 401 is the smallest for a "
            "full-rank 400x400 covariance."
        ),
        **_COMMON,
    ),
    "stylegan-v": _stylegan_v("stylegan-v", 16, 1),
    "stylegan-v-128f": _stylegan_v("stylegan-v-128f", 128, 1),
    "stylegan-v-128f-subsample8f": _stylegan_v("stylegan-v-128f-subsample8f", 16, 8),
    "videogpt": Protocol(
        name="videogpt",
        source=SOURCES["videogpt"],
        frames=16,
        step=1,
        random_start=(),
        resize="short-side-crop",
        values="(x/255-0.5)*2",
        max_real=None,
        max_fake=None,
        sample_size=256,
        covariance="unbiased",
        sqrt="svd",
        notes=(
            "fvd.preprocess: data.preprocess(video, 224): /255, short side to 224 (bilinear, align_corners=False, "
            "long side ceil), centre crop 224, -0.5, then *2; frechet_distance: cov over n - 1, tensorflow_gan's SVD "
            "square roots (eps 1e-10) in float32 there, float64 here; compute_fvd.py asserts 256 videos per trial. "
            "VideoGPT draws its 16-frame clips from a shuffled loader of all clips; a set given here is taken as the "
            "clips: the first 16 frames of each video."
        ),
        **_COMMON,
    ),
    "tats": Protocol(
        name="tats",
        source=SOURCES["tats"],
        frames=16,
        step=1,
        random_start=(),
        resize="bilinear",
        values="2*x/255-1",
        max_real=None,
        max_fake=None,
        sample_size=2048,
        covariance="unbiased",
        sqrt="svd",
        notes=(
            "fvd.preprocess: whole frame to 224x224 with F.interpolate(bilinear, align_corners=False), 2*x/255-1; "
            "FVD_SAMPLE_SIZE 2048; the same frechet_distance as VideoGPT (float32 there, float64 here)."
        ),
        **_COMMON,
    ),
    "cd-fvd": Protocol(
        name="cd-fvd",
        source=SOURCES["cd-fvd"],
        frames=16,
        step=1,
        random_start=("real", "fake"),
        resize="short-side-crop",
        values="2*x/255-1",
        max_real=None,
        max_fake=2048,
        sample_size=2048,
        covariance="biased",
        sqrt="sqrtm",
        notes=(
            "the I3D path for folders: data_utils.preprocess(resolution=256): /255, short side to 256 (bilinear, "
            "antialias=True, long side ceil), centre crop 256; get_random_clip_from_video: one clip per video, "
            "uniform over torchvision's step-1 clips, seed 42 (seed_everything) - here seeded per video from it; "
            "compute_*_stats: *255 -> .byte(); i3d/utils.preprocess_i3d: bilinear 224x224, 2*x/255-1; "
            "n_real 'full', n_fake 2048; FeatureStats biased covariance; scipy.linalg.sqrtm."
        ),
        **{**_COMMON, "seed": 42, "short_side": 256, "antialias": True, "quantize_uint8": True},
    ),
}

DEFAULT_PROTOCOL = "tf"


def get_protocol(protocol: Any = DEFAULT_PROTOCOL) -> Protocol:
    """A protocol by name (or a :class:`Protocol` itself); an unknown name is an error listing the known ones."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol is None:
        return PROTOCOLS[DEFAULT_PROTOCOL]
    try:
        return PROTOCOLS[str(protocol)]
    except KeyError:
        raise InputError(f"unknown FVD protocol {protocol!r}; known: {', '.join(PROTOCOLS)}") from None


# ---------------------------------------------------------------------------------------------------------
# Statistics as each protocol computes them (float64)
# ---------------------------------------------------------------------------------------------------------


def covariance_from_sums(n: float, total: np.ndarray, outer: np.ndarray, covariance: str) -> Tuple[np.ndarray, ...]:
    """Mean and covariance from running sums ``n``, ``Σx``, ``Σxxᵀ`` (float64): divided by n - 1 or by n."""
    mean = total / n
    scatter = outer - n * np.outer(mean, mean)
    cov = scatter / (n - 1) if covariance == "unbiased" else scatter / n
    return mean, (cov + cov.T) / 2.0


def trace_sqrt(cov1: np.ndarray, cov2: np.ndarray, method: str) -> float:
    """``tr((S1 S2)^1/2)`` the way the protocol computes it."""
    if method == "sqrtm":
        # scipy.linalg.sqrtm(S1 @ S2) then the real part of its trace: the principal square roots of the product's
        # eigenvalues (rounding can make a few slightly complex or negative; their real parts are what it keeps).
        eigenvalues = np.linalg.eigvals(cov1 @ cov2).astype(np.complex128)
        return float(np.sqrt(eigenvalues).real.sum())
    if method == "svd":
        root1 = _svd_sqrt(cov1)
        return float(np.trace(_svd_sqrt(root1 @ cov2 @ root1)))
    from i3d_torch.apps.fvd.stats import trace_sqrt_product

    return trace_sqrt_product(cov1, cov2)


def _svd_sqrt(matrix: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """tensorflow_gan's ``_symmetric_matrix_square_root``: ``U diag(sqrt(s)) Vᵀ``, singular values below eps kept."""
    u, s, vt = np.linalg.svd(matrix)
    root = np.where(s < eps, s, np.sqrt(s))
    return (u * root) @ vt


def protocol_distance(mean1, cov1, mean2, cov2, protocol: Protocol) -> float:
    """``|m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)`` with the protocol's square root, in float64."""
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape:
        raise InputError(f"embedding sizes differ: {mean1.shape} vs {mean2.shape}")
    distance = float(np.sum((mean1 - mean2) ** 2)) + float(np.trace(cov1) + np.trace(cov2))
    distance -= 2.0 * trace_sqrt(cov1, cov2, protocol.sqrt)
    return max(distance, 0.0)


def embeddings_distance(real: np.ndarray, fake: np.ndarray, protocol: Protocol) -> float:
    """FVD between two sets of embeddings ``[n, d]`` under ``protocol`` (the first max_real / max_fake rows)."""
    stats = []
    for emb, role in ((real, "real"), (fake, "fake")):
        x = np.asarray(emb, np.float64)[: protocol.max_videos(role)]
        if x.shape[0] < 2:
            raise InputError(f"{role} set: {x.shape[0]} video(s); FVD needs a covariance, so at least 2 per set")
        stats.append(covariance_from_sums(x.shape[0], x.sum(0), x.T @ x, protocol.covariance))
    return protocol_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1], protocol)
