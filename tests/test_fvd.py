"""FVD and KVD: the preprocessing against TensorFlow, the distances against closed forms and independent
computations, the whole metric against a TensorFlow transcription of the reference pipeline on real
videos, known properties on real clips, the statistics cache, the CLI and its errors.

Real-weight forwards cost seconds each on this CPU, so sets are small (5-6 videos) and embeddings are
shared through module-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i3d_torch.apps.fvd import (
    PREPROCESSING,
    SmallSampleWarning,
    VideoSetStats,
    compute_stats,
    distance_between,
    embedding_model,
    frechet_distance,
    fvd,
    fvd_model_input,
    kernel_distance,
    mean_and_covariance,
    model_sha256,
    resize_bilinear_tf1,
)
from i3d_torch.core.errors import I3DError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from videogen import moving_shapes, write_frame_folder, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _tf():
    return pytest.importorskip("tensorflow", reason="TensorFlow is needed for the TF-side comparison")


# ---------------------------------------------------------------------------------------------------
# Independent references, written from the definitions (never calling the code under test)
# ---------------------------------------------------------------------------------------------------


def tfgan_frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """tensorflow_gan's frechet_classifier_distance_from_activations, transcribed to numpy float64:
    covariances over n - 1, matrix square roots by SVD keeping singular values below 1e-10 unrooted."""

    def sqrtm_svd(matrix):
        u, s, vt = np.linalg.svd(matrix)
        s = np.where(s < 1e-10, s, np.sqrt(s))
        return (u * s) @ vt

    real, fake = real.astype(np.float64), fake.astype(np.float64)
    m, m_w = real.mean(0), fake.mean(0)
    sigma = (real - m).T @ (real - m) / (len(real) - 1)
    sigma_w = (fake - m_w).T @ (fake - m_w) / (len(fake) - 1)
    root = sqrtm_svd(sigma)
    trace_sqrt = np.trace(sqrtm_svd(root @ sigma_w @ root))
    return float(np.trace(sigma + sigma_w) - 2.0 * trace_sqrt + np.sum((m - m_w) ** 2))


def direct_unbiased_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


# ---------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(64, 64), (37, 91), (300, 171), (224, 224), (1, 5)])
def test_resize_equals_tf1_resize_bilinear(height, width):
    tf = _tf()
    images = np.random.default_rng(height * 1000 + width).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    expected = tf.compat.v1.image.resize_bilinear(images, (224, 224)).numpy()  # the reference's op
    ours = resize_bilinear_tf1(torch.from_numpy(images)).numpy()
    # Same float32 operations in the same order: measured bit-exact; 1e-4 of a 0..255 pixel allows for FMA.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_resize_is_not_the_half_pixel_resize_of_tf2_or_torch():
    """Why a custom resize: TF2's tf.image.resize and F.interpolate(align_corners=False) use half-pixel
    centres: for 64 -> 224 their source coordinates are 0.36 source pixels away from the reference's."""
    tf = _tf()
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    reference = tf.compat.v1.image.resize_bilinear(image, (224, 224)).numpy()
    tf2 = tf.image.resize(image, (224, 224), method="bilinear").numpy()
    torch_half_pixel = F.interpolate(
        torch.from_numpy(image).permute(0, 3, 1, 2).float(), size=(224, 224), mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(torch_half_pixel, tf2, rtol=0, atol=1e-3)  # the two half-pixel resizes agree
    assert np.abs(tf2 - reference).max() > 50.0  # and differ from the reference's on a noisy frame


def test_model_input_is_the_reference_scaling_of_resized_frames():
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (2, 9, 20, 30, 3), dtype=np.uint8)
    x = fvd_model_input(videos)
    assert x.shape == (2, 3, 9, 224, 224) and x.dtype == torch.float32
    resized = resize_bilinear_tf1(torch.from_numpy(videos)).numpy()
    expected = 2.0 * resized / 255.0 - 1.0
    np.testing.assert_allclose(x.permute(0, 2, 3, 4, 1).numpy(), expected, rtol=0, atol=1e-6)
    # Floats in [0, 1] are the same pixels: the same input within float32 rounding.
    from_unit = fvd_model_input(videos.astype(np.float32) / 255.0)
    torch.testing.assert_close(from_unit, x, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# The distances
# ---------------------------------------------------------------------------------------------------


def test_frechet_distance_equals_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(2)
    d = 50
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # shared eigenvectors: S1 and S2 commute
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    closed_form = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for c1, c2 in ((np.diag(a), np.diag(b)), ((q * a) @ q.T, (q * b) @ q.T)):
        assert frechet_distance(m1, c1, m2, c2) == pytest.approx(closed_form, rel=1e-10)


def test_frechet_distance_equals_eigenvalues_of_the_product_for_general_covariances():
    rng = np.random.default_rng(3)
    d = 40
    x, y = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 3 * d))
    c1, c2 = x @ x.T / d, y @ y.T / d  # full rank, not commuting
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    # tr sqrt(S1 S2) = sum of square roots of the (real, positive) eigenvalues of S1 S2.
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-9)
    scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy is optional")
    root = scipy_linalg.sqrtm(c1 @ c2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * root)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(4)
    d, n = 8, 20000
    a, b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    real = VideoSetStats(m1 + rng.normal(size=(n, d)) * np.sqrt(a), 16, "test", "0" * 64)
    fake = VideoSetStats(m2 + rng.normal(size=(n, d)) * np.sqrt(b), 16, "test", "0" * 64)
    population = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 20000 >> d: no small-sample warning
        result = distance_between(real, fake)
    assert result.fvd == pytest.approx(population, rel=0.02)  # sampling error of 20000 draws


def test_frechet_distance_matches_tfgan_on_rank_deficient_sets():
    """Eight 400-d embeddings per set: rank-7 covariances, the regime of small FVD evaluations."""
    rng = np.random.default_rng(5)
    real = rng.normal(size=(8, 400)).astype(np.float32) * 3
    fake = (rng.normal(size=(8, 400)) * 2 + 0.5).astype(np.float32)
    real_mean, real_cov = mean_and_covariance(real)
    fake_mean, fake_cov = mean_and_covariance(fake)
    ours = frechet_distance(real_mean, real_cov, fake_mean, fake_cov)
    assert ours == pytest.approx(tfgan_frechet_distance(real, fake), rel=1e-6)
    # Identical sets: the covariance terms (trace ~ 3600 here) cancel to rounding.
    identical = frechet_distance(real_mean, real_cov, real_mean, real_cov)
    assert identical == pytest.approx(0.0, abs=1e-6 * np.trace(real_cov))


def test_kernel_distance_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(9, 12)), rng.normal(size=(7, 12)) + 0.3
    value, std = kernel_distance(x, y)
    assert value == pytest.approx(direct_unbiased_mmd(x, y), rel=1e-10)
    assert np.isnan(std)  # one block: no spread to estimate an error from


def test_kernel_distance_averages_blocks_like_tfgan():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(11, 6)), rng.normal(size=(10, 6))
    value, std = kernel_distance(x, y, max_block_size=4)  # 3 blocks: real 3,4,4 and fake 3,3,4 videos
    real_blocks, fake_blocks = [(0, 3), (3, 7), (7, 11)], [(0, 3), (3, 6), (6, 10)]
    blocks = [direct_unbiased_mmd(x[a:b], y[c:e]) for (a, b), (c, e) in zip(real_blocks, fake_blocks)]
    assert value == pytest.approx(np.mean(blocks), rel=1e-10)
    assert std == pytest.approx(np.std(blocks, ddof=1) / np.sqrt(3), rel=1e-10)


# ---------------------------------------------------------------------------------------------------
# Input checks (no model needed: they fail before any forward)
# ---------------------------------------------------------------------------------------------------


class TinyEmbedder(nn.Module):
    """A cheap stand-in for I3D where the pipeline, not the network, is under test: mean colour of each
    frame third, through a fixed linear map, as an 8-d embedding."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(9, 8)
        with torch.no_grad():
            self.linear.weight.copy_(torch.linspace(-1, 1, 72).reshape(8, 9))
            self.linear.bias.zero_()

    def forward(self, x):  # N x 3 x T x 224 x 224
        thirds = torch.stack([part.mean(dim=(2, 3, 4)) for part in x.chunk(3, dim=2)], dim=2)  # N x 3 x 3
        return self.linear(thirds.flatten(1)) * 10


@pytest.mark.parametrize(
    "videos,message",
    [
        (np.zeros((3, 16, 8, 8, 3), np.float32) + 200.0, "pass them as uint8"),
        (np.zeros((3, 16, 8, 8, 3), np.float32) - 0.5, "[-1, 1]"),
        (np.zeros((3, 16, 8, 8, 3), np.int16), "neither uint8"),
        (np.zeros((16, 8, 8, 3), np.uint8), "one video"),
        (np.zeros((3, 16, 3, 8, 8), np.uint8), "channels look first"),
        (np.zeros((3, 8, 8, 8, 3), np.uint8), "at least 9"),
        (np.full((3, 16, 8, 8, 3), np.nan, np.float32), "NaN"),
    ],
    ids=["float-0-255", "float-minus-1-1", "int16", "one-video", "channels-first", "8-frames", "nan"],
)
def test_ambiguous_or_invalid_arrays_are_refused(videos, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fvd(videos, np.zeros((3, 16, 8, 8, 3), np.uint8), model=TinyEmbedder())


def test_a_set_of_one_video_is_refused_with_the_count_needed():
    with pytest.raises(InputError, match="at least 2"):
        fvd(np.zeros((1, 9, 8, 8, 3), np.uint8), np.zeros((4, 9, 8, 8, 3), np.uint8), model=TinyEmbedder())


def test_sets_with_different_frame_counts_are_refused():
    rng = np.random.default_rng(8)
    with pytest.raises(InputError, match="real videos have 9 frames and the fake ones 12"):
        real = rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8)
        fvd(real, rng.integers(0, 256, (3, 12, 8, 8, 3), dtype=np.uint8), model=TinyEmbedder())


def test_frames_option_takes_the_first_frames_of_each_video():
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (3, 12, 8, 8, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        cut = fvd(a, b, model=TinyEmbedder(), frames=9)
        explicit = fvd(a, b[:, :9], model=TinyEmbedder())
    assert cut.frames == 9 and cut.fvd == explicit.fvd


def test_small_sets_warn_that_the_covariance_is_rank_deficient():
    rng = np.random.default_rng(10)
    with pytest.warns(SmallSampleWarning, match="full rank needs at least 9"):
        real, fake = (rng.integers(0, 256, (4, 9, 8, 8, 3), dtype=np.uint8) for _ in range(2))
        result = fvd(real, fake, model=TinyEmbedder())
    assert result.fvd > 0 and np.isfinite(result.fvd)


def test_distance_is_independent_of_batch_size_and_input_type():
    rng = np.random.default_rng(11)
    a, b = (rng.integers(0, 256, (5, 9, 12, 10, 3), dtype=np.uint8) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        one = fvd(a, b, model=TinyEmbedder(), batch_size=1)
        three = fvd(torch.from_numpy(a), b.astype(np.float32) / 255, model=TinyEmbedder(), batch_size=3)
    assert one.fvd > 0
    assert three.fvd == pytest.approx(one.fvd, rel=1e-5)  # float inputs differ from uint8 by float32 rounding


# ---------------------------------------------------------------------------------------------------
# Statistics cache
# ---------------------------------------------------------------------------------------------------


def test_stats_cache_round_trips_and_is_reused(tmp_path):
    rng = np.random.default_rng(12)
    videos = rng.integers(0, 256, (4, 9, 8, 8, 3), dtype=np.uint8)
    model = TinyEmbedder()
    cache = tmp_path / "real.npz"
    first = compute_stats(videos, model, cache=cache)
    assert cache.exists() and not list(tmp_path.glob("*.tmp"))
    loaded = VideoSetStats.load(cache)
    np.testing.assert_array_equal(loaded.embeddings, first.embeddings)
    np.testing.assert_array_equal(loaded.cov, first.cov)
    assert (loaded.n, loaded.frames, loaded.preprocessing) == (4, 9, PREPROCESSING)
    assert loaded.mean.dtype == np.float64 and loaded.cov.dtype == np.float64

    class Exploding(TinyEmbedder):
        def forward(self, x):
            raise AssertionError("a valid cache must not embed again")

    exploding = Exploding()
    exploding.load_state_dict(model.state_dict())
    reused = compute_stats(videos, exploding, cache=cache)
    np.testing.assert_array_equal(reused.embeddings, first.embeddings)


def test_stats_cache_of_other_weights_is_refused(tmp_path):
    rng = np.random.default_rng(13)
    videos = rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8)
    cache = tmp_path / "real.npz"
    compute_stats(videos, TinyEmbedder(), cache=cache)
    other = TinyEmbedder()
    with torch.no_grad():
        other.linear.bias.fill_(1.0)
    with pytest.raises(InputError, match="other weights"):
        compute_stats(videos, other, cache=cache)
    with pytest.raises(InputError, match="other weights"):
        fvd(cache, videos, model=other)  # a cache passed as a set is checked the same way


def test_stats_cache_of_other_preprocessing_is_refused(tmp_path):
    embeddings = np.random.default_rng(14).normal(size=(3, 8))
    stats = VideoSetStats(embeddings, 9, "TinyEmbedder", model_sha256(TinyEmbedder()))
    stats.preprocessing = {**PREPROCESSING, "half_pixel_centers": True}
    stats.save(tmp_path / "s.npz")
    with pytest.raises(InputError, match="other preprocessing"):
        compute_stats(tmp_path / "s.npz", TinyEmbedder())


def test_stats_cache_of_other_videos_is_recomputed(tmp_path):
    rng = np.random.default_rng(15)
    cache = tmp_path / "real.npz"
    compute_stats(rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8), TinyEmbedder(), cache=cache)
    new_videos = rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="other videos"):
        recomputed = compute_stats(new_videos, TinyEmbedder(), cache=cache)
    np.testing.assert_array_equal(VideoSetStats.load(cache).embeddings, recomputed.embeddings)


def test_a_file_that_is_not_a_stats_cache_is_refused(tmp_path):
    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, something=np.zeros(3))
    with pytest.raises(InputError, match="not an FVD statistics file"):
        VideoSetStats.load(bogus)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match="not a readable .npz"):
        VideoSetStats.load(tmp_path / "text.npz")


# ---------------------------------------------------------------------------------------------------
# Folders of videos (real encoded files)
# ---------------------------------------------------------------------------------------------------


def test_folder_set_equals_the_array_of_its_decoded_frames(tmp_path):
    from i3d_torch.core.video import read_video

    folder = tmp_path / "videos"
    for seed in range(3):
        write_video(folder / f"clip{seed}.mkv", moving_shapes(10, 40, 52, seed=seed), fps=25)  # FFV1, lossless
    write_frame_folder(folder / "frames_clip", moving_shapes(10, 40, 52, seed=7))
    decoded = np.stack([read_video(p, fps=None, short_side=None)[0] for p in sorted(folder.iterdir())])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        from_folder = compute_stats(folder, TinyEmbedder())
        from_array = compute_stats(decoded, TinyEmbedder())
    assert from_folder.n == 4 and from_folder.frames == 10
    np.testing.assert_allclose(from_folder.embeddings, from_array.embeddings, rtol=0, atol=1e-5)


def test_folder_with_mismatched_frame_counts_names_the_video(tmp_path):
    for seed, count in enumerate((10, 10, 12)):
        write_video(tmp_path / f"clip{seed}.mkv", moving_shapes(count, 32, 32, seed=seed), fps=25)
    with pytest.raises(InputError, match=r"clip2\.mkv: 12 frames, but .*clip0\.mkv has 10"):
        compute_stats(tmp_path, TinyEmbedder())


def test_unreadable_video_in_a_folder_is_named(tmp_path):
    write_video(tmp_path / "good.mkv", moving_shapes(10, 32, 32), fps=25)
    (tmp_path / "zbroken.mp4").write_text("not a video")
    with pytest.raises(I3DError, match="zbroken.mp4"):
        compute_stats(tmp_path, TinyEmbedder())


def test_the_frames_of_one_video_given_as_a_set_are_refused(tmp_path):
    write_frame_folder(tmp_path / "frames", moving_shapes(10, 16, 16))
    with pytest.raises(InputError, match="looks like the frames of one video"):
        compute_stats(tmp_path / "frames", TinyEmbedder())


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="no videos found"):
        fvd(tmp_path, tmp_path, model=TinyEmbedder())


# ---------------------------------------------------------------------------------------------------
# Command line (a random-weight I3D saved to a file: the pipeline, not the weights, is under test)
# ---------------------------------------------------------------------------------------------------


#: Offline, and without I3D_TORCH_DEBUG (an empty value is unset for the CLI), so errors are the user's one line.
CLI_ENV = {"I3D_TORCH_OFFLINE": "1", "I3D_TORCH_DEBUG": ""}


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    from i3d_torch.core.model import InceptionI3d
    from i3d_torch.weights.registry import label_list, save_model

    torch.manual_seed(0)
    model = InceptionI3d(num_classes=400).eval()
    for module in model.modules():  # non-trivial BN statistics so that different videos embed differently
        if isinstance(module, nn.BatchNorm3d):
            module.running_var.uniform_(0.5, 1.5)
            module.running_mean.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("weights") / "random_i3d.safetensors"
    save_model(model, path, categories=label_list("kinetics400"), modality="rgb", name="random_i3d")
    return path


@pytest.fixture(scope="module")
def cli_sets(tmp_path_factory):
    """A folder of three H.264 videos and a .npy of three others, 9 frames of 48x64."""
    root = tmp_path_factory.mktemp("cli_sets")
    for seed in range(3):
        write_video(root / "real" / f"v{seed}.mp4", moving_shapes(9, 48, 64, seed=seed), fps=25)
    np.save(root / "fake.npy", np.stack([moving_shapes(9, 48, 64, seed=10 + s) for s in range(3)]))
    return root / "real", root / "fake.npy"


@pytest.fixture(scope="module")
def single_process_cli(cli_sets, random_weights, tmp_path_factory, run_cli):
    cache = tmp_path_factory.mktemp("cli_cache") / "real_stats.npz"
    options = ["--json", "--kvd", "--weights", random_weights, "--cache-stats", cache, "--batch-size", "2"]
    run = run_cli("fvd", *cli_sets, *options, env=CLI_ENV)
    assert run.returncode == 0, run.stderr
    return run, cache


@pytest.mark.slow
def test_cli_folder_against_npy_with_cache_and_kvd(cli_sets, single_process_cli, random_weights, run_cli):
    first, cache = single_process_cli
    result = json.loads(first.stdout)
    assert result["n_real"] == 3 and result["n_fake"] == 3 and result["frames"] == 9
    assert result["fvd"] > 0 and "kvd" in result
    assert "rank-deficient" in first.stderr and "Traceback" not in first.stderr
    # The cache stands in for the folder: same FVD without decoding or embedding it again.
    second = run_cli("fvd", cache, cli_sets[1], "--json", "--weights", random_weights, env=CLI_ENV)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["fvd"] == pytest.approx(result["fvd"], rel=1e-12)


@pytest.mark.slow
def test_cli_under_torchrun_prints_the_single_process_result_once(cli_sets, single_process_cli, random_weights):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(30500 + os.getpid() % 1000), "-m", "i3d_torch", "fvd", *map(str, cli_sets),
               "--json", "--kvd", "--weights", str(random_weights), "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 prints; rank 1 does not
    sharded, single = json.loads(lines[0]), json.loads(single_process_cli[0].stdout)
    assert (sharded["n_real"], sharded["n_fake"]) == (3, 3)
    # Same videos, same order; only the batches differ (rounding of batched convolutions).
    assert sharded["fvd"] == pytest.approx(single["fvd"], rel=1e-5)
    assert sharded["kvd"] == pytest.approx(single["kvd"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "empty", "no videos found"),
        (lambda d: d / "missing", "No such file"),
        (lambda d: _float_npy(d), "pass them as uint8"),
    ],
    ids=["empty-folder", "missing", "float-npy-0-255"],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, make, message, run_cli):
    (tmp_path / "empty").mkdir()
    source = make(tmp_path)
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 9, 8, 8, 3), np.uint8))
    result = run_cli("fvd", source, good, "--weights", "rgb_kinetics400", env=CLI_ENV)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and str(source.name) in lines[0], result.stderr


def _float_npy(directory: Path) -> Path:
    path = directory / "float_pixels.npy"
    np.save(path, np.full((3, 9, 8, 8, 3), 128.0, np.float32))
    return path


# ---------------------------------------------------------------------------------------------------
# Real weights: agreement with a TensorFlow transcription of the reference pipeline
# ---------------------------------------------------------------------------------------------------


def _write_set(folder: Path, seeds, frames=16, height=60, width=84) -> Path:
    for seed in seeds:
        # MPEG-4 part 2 (lossy): libx264 here is not bit-deterministic from run to run, and the FVD measured
        # in docs/fvd.md should be reproducible.
        clip = moving_shapes(frames, height, width, seed=seed)
        write_video(folder / f"video{seed:02d}.mp4", clip, fps=25, codec="mpeg4")
    return folder


@pytest.fixture(scope="module")
def encoded_sets(tmp_path_factory):
    """Two sets of six real MPEG-4 videos, 16 frames of 60x84 (not square: the resize squashes them)."""
    root = tmp_path_factory.mktemp("fvd_sets")
    return _write_set(root / "real", range(0, 6)), _write_set(root / "fake", range(20, 26))


def tf_pipeline_fvd(tf_logits, real_folder: Path, fake_folder: Path):
    """The reference pipeline in TensorFlow: TF1 resize_bilinear of every frame to 224x224, 2x/255-1, the
    I3D logits averaged over time (``tf_logits``: [1, T, 224, 224, 3] in [-1, 1] -> [1, 400]),
    tensorflow_gan's float64 Frechet distance (transcribed)."""
    from i3d_torch.core.video import read_video

    tf = _tf()

    def embed(folder):
        rows = []
        for path in sorted(folder.iterdir()):
            frames, _ = read_video(path, fps=None, short_side=None)  # the same decoded frames as ours
            resized = tf.compat.v1.image.resize_bilinear(frames, (224, 224))
            clip = 2.0 * tf.cast(resized, tf.float32) / 255.0 - 1.0
            rows.append(np.asarray(tf_logits(clip[tf.newaxis].numpy()))[0])
        return np.stack(rows)

    real, fake = embed(real_folder), embed(fake_folder)
    return tfgan_frechet_distance(real, fake), real, fake


@pytest.fixture(scope="module")
def torch_stats_of_encoded_sets(encoded_sets, rgb_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return [compute_stats(folder, rgb_model, batch_size=3) for folder in encoded_sets]


def _assert_fvd_agrees(torch_stats, tf_logits, encoded_sets, label):
    real, fake = torch_stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        ours = distance_between(real, fake)
    expected, tf_real, tf_fake = tf_pipeline_fvd(tf_logits, *encoded_sets)
    embedding_diff = max(np.abs(real.embeddings - tf_real).max(), np.abs(fake.embeddings - tf_fake).max())
    relative = abs(ours.fvd - expected) / expected
    print(f"FVD torch {ours.fvd:.6f} {label} {expected:.6f} rel {relative:.2e}; max |logit diff| {embedding_diff:.2e}")
    np.testing.assert_allclose(real.embeddings, tf_real, rtol=0, atol=1e-3)
    np.testing.assert_allclose(fake.embeddings, tf_fake, rtol=0, atol=1e-3)
    assert ours.fvd > 1.0  # different videos: a distance well above rounding
    assert ours.fvd == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
def test_fvd_equals_the_tensorflow_reference_pipeline(encoded_sets, torch_stats_of_encoded_sets, rgb_model):
    """TF side: the project's TF rendering of DeepMind's graph, built from the same real weights."""
    _tf()
    from i3d_torch.verification.parity import source_for_weights
    from i3d_torch.verification.tf_reference import TFInceptionI3d

    tf_model = TFInceptionI3d(source_for_weights(rgb_model.weights_info).variables)
    tf_logits = lambda clip: tf_model.logits(clip).numpy()  # noqa: E731
    _assert_fvd_agrees(torch_stats_of_encoded_sets, tf_logits, encoded_sets, "TF reference")


@pytest.fixture(scope="module")
def tfhub_handle() -> str:
    handle = os.environ.get("I3D_TFHUB_MODULE")
    if not handle:
        pytest.skip("set I3D_TFHUB_MODULE to the i3d-kinetics-400 TF-Hub handle or a downloaded module directory")
    return handle


@pytest.mark.slow
def test_fvd_equals_the_pipeline_on_the_real_tfhub_module(tfhub_handle, encoded_sets, torch_stats_of_encoded_sets):
    """TF side: the TF-Hub module the reference downloads, when available (opt-in: it needs a download)."""
    from i3d_torch.verification.parity import tfhub_logits_function

    _assert_fvd_agrees(torch_stats_of_encoded_sets, tfhub_logits_function(tfhub_handle), encoded_sets, "TF-Hub module")


# ---------------------------------------------------------------------------------------------------
# Real weights: known properties on real clips
# ---------------------------------------------------------------------------------------------------

CLIP_FRAMES = 10
CLIP_STARTS = (0, 14, 28, 42, 56)


@pytest.fixture(scope="module")
def cricket_clips(cricket_rgb_frames) -> np.ndarray:
    """Five 10-frame windows of the real cricket clip: uint8 [5, 10, 224, 224, 3]."""
    return np.stack([cricket_rgb_frames[s : s + CLIP_FRAMES] for s in CLIP_STARTS])


def _noisy(clips, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, clips.shape)
    return np.clip(clips + noise, 0, 255).round().astype(np.uint8)


def _blurred(clips, sigma):
    import cv2

    return np.stack([[cv2.GaussianBlur(f, (0, 0), sigma) for f in clip] for clip in clips])


def _shuffled(clips, swaps, seed=0):
    """Frames of each clip re-ordered: ``swaps`` random transpositions."""
    rng = np.random.default_rng(seed)
    out = clips.copy()
    for clip in out:
        order = np.arange(len(clip))
        for _ in range(swaps):
            i, j = rng.choice(len(clip), 2, replace=False)
            order[[i, j]] = order[[j, i]]
        clip[:] = clip[order]
    return out


@pytest.fixture(scope="module")
def cricket_stats(cricket_clips, rgb_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return compute_stats(cricket_clips, rgb_model, batch_size=5)


@pytest.mark.slow
def test_fvd_of_a_set_with_itself_is_zero(cricket_clips, cricket_stats, rgb_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        again = compute_stats(cricket_clips, rgb_model, batch_size=2)  # other batches, same videos
        result = distance_between(cricket_stats, again)
    scale = np.trace(cricket_stats.cov)  # the size of the covariance terms that cancel
    assert scale > 1.0
    assert result.fvd == pytest.approx(0.0, abs=1e-6 * scale)


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda c, level: _noisy(c, (8.0, 40.0)[level]), id="noise"),
        pytest.param(lambda c, level: _blurred(c, (1.0, 4.0)[level]), id="blur"),
        pytest.param(lambda c, level: _shuffled(c, (2, 20)[level]), id="frame-shuffle"),
    ],
)
def test_fvd_grows_as_the_set_is_corrupted(corrupt, cricket_clips, cricket_stats, rgb_model):
    distances = [0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        for level in (0, 1):
            corrupted = compute_stats(corrupt(cricket_clips, level), rgb_model, batch_size=5)
            distances.append(distance_between(cricket_stats, corrupted).fvd)
    print("FVD at corruption levels 0, 1, 2:", distances)
    assert distances[0] < distances[1] < distances[2]


# ---------------------------------------------------------------------------------------------------
# Python API entry point and torchrun sharding
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fvd_from_weights_uses_one_model_per_process_and_equals_an_explicit_model(random_weights):
    from i3d_torch.weights.registry import load_model

    rng = np.random.default_rng(21)
    real, fake = (rng.integers(0, 256, (3, 9, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        from_weights = fvd(real, fake, weights=random_weights)
        explicit = fvd(real, fake, model=load_model(random_weights))
    assert embedding_model(random_weights) is embedding_model(random_weights)  # loaded once, then shared
    assert from_weights.model_sha256 == explicit.model_sha256
    # The same weights through the same code: equal but for rounding of identical float32 work.
    torch.testing.assert_close(from_weights.fvd, explicit.fvd, rtol=1e-9, atol=0.0)


PACKAGE_LEVEL_SCRIPT = """
import warnings, numpy as np, torch, i3d_torch
warnings.simplefilter("ignore")
class Mean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(3, 4)).flatten(1)
rng = np.random.default_rng(0)
a, b = (rng.integers(0, 256, (3, 9, 8, 8, 3), dtype=np.uint8) for _ in range(2))
first = i3d_torch.fvd(a, b, model=Mean())  # before the application is imported: the lazy attribute
import i3d_torch.apps.fvd  # noqa: E402
assert i3d_torch.fvd is i3d_torch.apps.fvd.fvd  # the function, never the package that holds it
second = i3d_torch.fvd(a, b, model=Mean())
print(float(first), float(second))
"""


def test_package_level_fvd_is_callable_before_and_after_the_submodule_import():
    result = subprocess.run([sys.executable, "-c", PACKAGE_LEVEL_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, second = map(float, result.stdout.split())
    assert first == second > 0


SHARDED_SCRIPT = """
import sys, warnings
import numpy as np
sys.path.insert(0, {tests!r})
from test_fvd import TinyEmbedder
from i3d_torch.pipeline import distributed
from i3d_torch.apps.fvd import compute_stats, SmallSampleWarning
from i3d_torch.core.errors import I3DError
warnings.simplefilter("ignore", SmallSampleWarning)
with distributed.process_group("cpu"):
    try:
        stats = compute_stats({source!r}, TinyEmbedder(), batch_size=2, cache={cache!r})
    except I3DError as exc:
        print(f"rank {{distributed.rank()}} error: {{exc}}", flush=True)
        sys.exit(3)
    print(f"rank {{distributed.rank()}} of {{distributed.world_size()}}: {{stats.n}} videos", flush=True)
"""


def _torchrun(tmp_path, source, cache):
    script = tmp_path / "sharded.py"
    tests = str(Path(__file__).resolve().parent)
    script.write_text(SHARDED_SCRIPT.format(tests=tests, source=str(source), cache=str(cache)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(29500 + os.getpid() % 1000), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_torchrun_ranks_embed_shards_that_gather_to_the_single_process_result(tmp_path):
    folder = tmp_path / "videos"
    for seed in range(5):  # odd count: rank 0 takes 3 videos, rank 1 takes 2
        write_video(folder / f"clip{seed}.mkv", moving_shapes(9, 24, 32, seed=seed), fps=25)
    result = _torchrun(tmp_path, folder, tmp_path / "sharded.npz")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rank 0 of 2: 5 videos" in result.stdout and "rank 1 of 2: 5 videos" in result.stdout
    sharded = VideoSetStats.load(tmp_path / "sharded.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        single = compute_stats(folder, TinyEmbedder(), batch_size=2)
    # Same rows in the same order. Not bit-identical: a video batched with another one than in the single
    # process (and on one thread instead of two) is summed in another order, 4.8e-7 apart on an AVX2 CPU;
    # the rows of different videos are at least 0.1 apart, so a swapped or missing row still fails.
    rows = single.embeddings
    apart = np.abs(rows[:, None] - rows[None]).max(axis=2) + np.eye(len(rows))  # max-abs distance of each pair
    assert apart.min() > 0.1
    np.testing.assert_allclose(sharded.embeddings, single.embeddings, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_torchrun_error_on_one_rank_stops_every_rank_with_the_file_named(tmp_path):
    folder = tmp_path / "videos"
    for seed in range(3):
        write_video(folder / f"clip{seed}.mkv", moving_shapes(9, 24, 32, seed=seed), fps=25)
    (folder / "clip3.mp4").write_text("not a video")  # index 3: rank 1's shard
    result = _torchrun(tmp_path, folder, tmp_path / "never.npz")
    assert result.returncode != 0
    assert "rank 0 error:" in result.stdout and "rank 1 error:" in result.stdout
    assert result.stdout.count("clip3.mp4") == 2, result.stdout
    assert not (tmp_path / "never.npz").exists()
