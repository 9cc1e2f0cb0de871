"""From embeddings to distances: the mean and covariance of a set's embeddings, the Fréchet distance between
two such Gaussians (tensorflow_gan's ``frechet_classifier_distance_from_activations``) and the kernel distance
(its ``kernel_classifier_distance_and_std_from_activations``), all in float64. Plain functions of numpy arrays
that know nothing of videos, models or files, so that a streaming metric (a torchmetrics ``Metric`` keeping
running sums) can call them as they are.
"""

from __future__ import annotations

import warnings
from typing import List, Tuple

import numpy as np

from i3d_torch.core.errors import InputError

#: Block size of tensorflow_gan's KVD estimator.
KVD_MAX_BLOCK_SIZE = 1024


class SmallSampleWarning(UserWarning):
    """A set too small for a full-rank covariance of the embedding: FVD is defined but strongly biased."""


def check_set_size(n: int, name: str, dim: int) -> None:
    """Refuse a set of fewer than 2 embeddings; warn when ``n`` is too small for a full-rank covariance."""
    if n < 2:
        raise InputError(f"{name}: {n} video(s); a covariance needs at least 2 (and {dim + 1} for full rank)")
    if n <= dim:
        warnings.warn(
            f"{name}: {n} videos give a rank-deficient {dim}x{dim} covariance (full rank needs at least "
            f"{dim + 1}); FVD is still defined but biased upwards, so only compare values computed on sets of "
            f"the same size",
            SmallSampleWarning,
            stacklevel=4,  # the caller of fvd(): fvd -> distance_between -> here
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
        raise InputError(
            f"embedding sizes differ: means {mean1.shape} vs {mean2.shape}, covariances {cov1.shape} vs {cov2.shape}"
        )
    distance = (
        float(np.sum((mean1 - mean2) ** 2))
        + float(np.trace(cov1) + np.trace(cov2))
        - 2.0 * trace_sqrt_product(cov1, cov2)
    )
    return max(distance, 0.0)


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, max_block_size: int = KVD_MAX_BLOCK_SIZE
) -> Tuple[float, float]:
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
