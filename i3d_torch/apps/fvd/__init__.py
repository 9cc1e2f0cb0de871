"""Fréchet Video Distance (FVD) and Kernel Video Distance (KVD), equal to the TensorFlow reference.

Unterthiner et al., "Towards Accurate Generative Models of Video: A New Metric & Challenges", 2018;
reference code: google-research/google-research ``frechet_video_distance/frechet_video_distance.py``
(Apache-2.0), which this package re-implements from its documented behaviour (no code copied):

1. **Preprocess** (:mod:`.resize`): every frame, whatever its size and aspect, is resized to 224x224 with
   TF1's ``tf.image.resize_bilinear`` (``align_corners=False, half_pixel_centers=False``), then pixel values
   ``x`` in 0..255 become ``2 * x / 255 - 1``.
2. **Embed** (:mod:`.api`) with the TF-Hub module ``deepmind/i3d-kinetics-400/1`` on all T frames of each
   video; the embedding is the tensor ``RGB/inception_i3d/Mean:0``: the 400 Kinetics logits averaged over
   time. Here: the ``rgb_kinetics400`` weights (the same TF-Hub model) and ``InceptionI3d.forward``.
3. **Distance** (:mod:`.stats`): tensorflow_gan's ``frechet_classifier_distance_from_activations``: means and
   covariances (divided by n - 1) in float64, and
   ``FVD = |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``.

KVD is the unbiased squared MMD with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` on the same
embeddings (tensorflow_gan's ``kernel_classifier_distance_and_std_from_activations``: the block estimator
with blocks of at most 1024 videos, which is the plain unbiased estimator for sets of <= 1024).

Beyond the reference: :class:`FrechetVideoDistance` (:mod:`.metric`), a streaming torchmetrics ``Metric`` for
training and evaluation loops (running float64 sums, summed across ranks); named protocols (:mod:`.protocols`:
``tf`` is the reference above and the default; ``stylegan-v``, ``videogpt``, ``tats``, ``cd-fvd`` transcribe other
published code); bootstrap intervals and FVD-against-set-size curves (:mod:`.bootstrap`). docs/fvd.md has details.

A set of videos (:mod:`.videosets`) is an array ``[N, T, H, W, 3]`` (uint8 0..255, or floats in [0, 1]), a
``.npy`` of one, a folder of videos or frame folders, or an ``.npz`` of statistics cached by an earlier run.
The names below are the package's stable API; ``i3d_torch.fvd`` is :func:`fvd`.
"""

from i3d_torch.apps.fvd.api import (
    DEFAULT_BATCH_SIZE,
    FVDResult,
    compute_stats,
    distance_between,
    embed_videos,
    embedding_model,
    fvd,
    fvd_model_input,
    model_name,
    model_sha256,
)
from i3d_torch.apps.fvd.bootstrap import BootstrapInterval, bootstrap_fvd, fvd_by_set_size, plot_fvd_by_set_size
from i3d_torch.apps.fvd.protocols import DEFAULT_PROTOCOL, PROTOCOLS, Protocol, get_protocol
from i3d_torch.apps.fvd.resize import FVD_SIZE, PREPROCESSING, resize_bilinear_tf1
from i3d_torch.apps.fvd.stats import (
    KVD_MAX_BLOCK_SIZE,
    SmallSampleWarning,
    frechet_distance,
    kernel_distance,
    mean_and_covariance,
    trace_sqrt_product,
)
from i3d_torch.apps.fvd.videosets import (
    CACHE_FORMAT,
    MIN_FRAMES,
    ArrayVideoSet,
    FolderVideoSet,
    VideoSet,
    VideoSetStats,
    check_video_array,
    open_video_set,
)

__all__ = [
    "BootstrapInterval",
    "DEFAULT_PROTOCOL",
    "FrechetVideoDistance",
    "PROTOCOLS",
    "Protocol",
    "bootstrap_fvd",
    "fvd_by_set_size",
    "get_protocol",
    "plot_fvd_by_set_size",
    "CACHE_FORMAT",
    "DEFAULT_BATCH_SIZE",
    "FVD_SIZE",
    "KVD_MAX_BLOCK_SIZE",
    "MIN_FRAMES",
    "PREPROCESSING",
    "ArrayVideoSet",
    "FVDResult",
    "FolderVideoSet",
    "SmallSampleWarning",
    "VideoSet",
    "VideoSetStats",
    "check_video_array",
    "compute_stats",
    "distance_between",
    "embed_videos",
    "embedding_model",
    "frechet_distance",
    "fvd",
    "fvd_model_input",
    "kernel_distance",
    "mean_and_covariance",
    "model_name",
    "model_sha256",
    "open_video_set",
    "resize_bilinear_tf1",
    "trace_sqrt_product",
]


def __getattr__(name: str):
    # torchmetrics is imported only by those who use the streaming metric.
    if name == "FrechetVideoDistance":
        from i3d_torch.apps.fvd.metric import FrechetVideoDistance

        return FrechetVideoDistance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
