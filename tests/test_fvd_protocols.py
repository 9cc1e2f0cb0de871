"""Named FVD protocols: each one's distance equals an independent transcription of its source's clip sampling,
preprocessing and statistics (repository, file and commit in i3d_torch/apps/fvd/protocols.py SOURCES and
docs/fvd.md), run on the same videos with the same embedding network; results carry the protocol and its hash;
bootstrap intervals are seeded; bad protocol names and mixed-protocol caches are refused.

The transcriptions below are written from the sources' code (float64 where the source is float64; where the source
computes in float32 — VideoGPT/TATS's torch statistics — in float64, which the protocol records as its choice)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fvd import TinyEmbedder, tfgan_frechet_distance

from i3d_torch.apps.fvd import SmallSampleWarning, compute_stats, fvd
from i3d_torch.apps.fvd.bootstrap import bootstrap_fvd, bootstrap_samples, fvd_by_set_size, plot_fvd_by_set_size
from i3d_torch.apps.fvd.protocols import PROTOCOLS, embeddings_distance, get_protocol, video_rng
from i3d_torch.core.errors import InputError

RTOL = 1e-6  # the bound for "the same distance given the same embeddings"


@pytest.fixture(autouse=True)
def _quiet_small_sets():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        yield


# -----------------------------------------------------------------------------------------------------------
# Transcriptions of the sources
# -----------------------------------------------------------------------------------------------------------


def feature_stats_mean_cov(x: np.ndarray):
    """stylegan-v / cd-fvd metric_utils.FeatureStats: append() in float32 -> float64 raw sums; get_mean_cov()."""
    x64 = np.asarray(x, np.float32).astype(np.float64)
    raw_mean, raw_cov = x64.sum(axis=0), x64.T @ x64
    mean = raw_mean / len(x64)
    return mean, raw_cov / len(x64) - np.outer(mean, mean)


def sqrtm_denman_beavers(a: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Principal square root by the Denman-Beavers iteration (stands in for scipy.linalg.sqrtm, absent here)."""
    y, z = a.copy(), np.eye(len(a))
    for _ in range(iterations):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


def stylegan_v_fvd(real_emb, fake_emb, max_real=2048, num_gen=2048):
    """frechet_video_distance.compute_fvd: first max items, FeatureStats, sqrtm(S_gen @ S_real), real part."""
    mu_real, sigma_real = feature_stats_mean_cov(real_emb[:max_real])
    mu_gen, sigma_gen = feature_stats_mean_cov(fake_emb[:num_gen])
    m = np.square(mu_gen - mu_real).sum()
    s = sqrtm_denman_beavers(sigma_gen @ sigma_real)
    return float(np.real(m + np.trace(sigma_gen + sigma_real - s * 2)))


def cd_fvd_fvd(real_emb, fake_emb, n_fake=2048):
    """cdfvd.compute_fvd_from_stats (n_real 'full', n_fake 2048): the same statistics as stylegan-v."""
    return stylegan_v_fvd(real_emb, fake_emb, max_real=None, num_gen=n_fake)


def videogpt_fvd(real_emb, fake_emb):
    """videogpt/fvd/fvd.py frechet_distance(x1, x2) (TATS's is the same), in float64 torch."""
    def svd_sqrt(mat, eps=1e-10):
        u, s, v = torch.svd(mat)
        si = torch.where(s < eps, s, torch.sqrt(s))
        return u @ torch.diag(si) @ v.t()

    def cov(m):
        m = m.t()
        fact = 1.0 / (m.size(1) - 1)
        m = m - m.mean(dim=1, keepdim=True)
        return fact * m.matmul(m.t()).squeeze()

    x1, x2 = torch.from_numpy(np.asarray(fake_emb, np.float64)), torch.from_numpy(np.asarray(real_emb, np.float64))
    m, m_w = x1.mean(dim=0), x2.mean(dim=0)
    sigma, sigma_w = cov(x1), cov(x2)
    root = svd_sqrt(sigma)
    trace = torch.trace(sigma + sigma_w) - 2.0 * torch.trace(svd_sqrt(root @ sigma_w @ root))
    return float(trace + torch.sum((m - m_w) ** 2))


def videogpt_preprocess(videos_uint8: np.ndarray) -> torch.Tensor:
    """videogpt fvd.preprocess -> data.preprocess(video, 224) per video, then * 2."""
    out = []
    for video in torch.from_numpy(videos_uint8):
        v = video.permute(0, 3, 1, 2).float() / 255.0
        _, _, h, w = v.shape
        scale = 224 / min(h, w)
        size = (224, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 224)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        _, _, h, w = v.shape
        w0, h0 = (w - 224) // 2, (h - 224) // 2
        v = v[:, :, h0 : h0 + 224, w0 : w0 + 224].permute(1, 0, 2, 3).contiguous()
        out.append(v - 0.5)
    return torch.stack(out) * 2


def tats_preprocess(videos_uint8: np.ndarray) -> torch.Tensor:
    """tats/fvd/fvd.py preprocess(videos, (224, 224))."""
    b, t, h, w, c = videos_uint8.shape
    frames = torch.FloatTensor(videos_uint8).flatten(end_dim=1).permute(0, 3, 1, 2).contiguous()
    resized = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    return 2.0 * resized.view(b, t, c, 224, 224).transpose(1, 2).contiguous() / 255.0 - 1


def cd_fvd_preprocess(videos_uint8: np.ndarray) -> torch.Tensor:
    """cd-fvd: data_utils.preprocess(resolution=256) per clip, then `*255 .byte()`, then i3d preprocess_i3d."""
    clips = []
    for video in torch.from_numpy(videos_uint8):
        v = video.permute(0, 3, 1, 2).float() / 255.0
        _, _, h, w = v.shape
        scale = 256 / min(h, w)
        size = (256, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 256)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False, antialias=True)
        _, _, h, w = v.shape
        w0, h0 = (w - 256) // 2, (h - 256) // 2
        clips.append(v[:, :, h0 : h0 + 256, w0 : w0 + 256].permute(1, 0, 2, 3).contiguous())
    batch = torch.stack(clips)  # b c t h w in [0, 1]
    as_bytes = (batch * 255).byte().permute(0, 2, 3, 4, 1).numpy()  # rearrange 'b c t h w -> b t h w c'
    return tats_preprocess(as_bytes)  # cdfvd/third_party/i3d/utils.preprocess_i3d is TATS's preprocess


def stylegan_v_clip(n_frames, n, s, role, index, seed):
    """dataset.__getitem__: random offset for the real set, 0 for generated videos."""
    if role == "real":
        offset = video_rng(seed, role, index).randint(0, n_frames - n * s + s - 1)
    else:
        offset = 0
    return list(np.arange(0, n * s, s) + offset)


def cd_fvd_clip(n_frames, length, role, index, seed):
    """VideoClips(step 1) -> n_clip = L - length + 1; get_random_clip_from_video: randint(0, n_clip - 1)."""
    clip_id = video_rng(seed, role, index).randint(0, n_frames - length + 1 - 1)
    return list(range(clip_id, clip_id + length))


def full_rank_embedder() -> torch.nn.Module:
    """TinyEmbedder with a random full-rank map: its own map has rank 2, and a product of singular covariances
    has no well-defined square root to compare (scipy's sqrtm and any iteration disagree there)."""
    model = TinyEmbedder().eval()
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(np.random.default_rng(0).normal(size=(8, 9))).float())
    return model


# -----------------------------------------------------------------------------------------------------------
# Statistics on the same embeddings
# -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(8, 8))
    real = rng.normal(size=(60, 8)) @ mix + 5
    fake = rng.normal(size=(50, 8)) @ (mix * 1.2) + 5.5
    return real.astype(np.float32), fake.astype(np.float32)


@pytest.mark.parametrize(
    "name,transcription",
    [
        ("tf", lambda r, f: tfgan_frechet_distance(r, f)),
        ("stylegan-v", stylegan_v_fvd),
        ("stylegan-v-128f", stylegan_v_fvd),
        ("stylegan-v-128f-subsample8f", stylegan_v_fvd),
        ("videogpt", videogpt_fvd),
        ("tats", videogpt_fvd),
        ("cd-fvd", cd_fvd_fvd),
    ],
)
def test_protocol_distance_equals_its_source_on_the_same_embeddings(name, transcription, embeddings):
    real, fake = embeddings
    ours = embeddings_distance(real, fake, PROTOCOLS[name])
    np.testing.assert_allclose(ours, transcription(real, fake), rtol=RTOL)


def test_set_caps_take_the_first_videos_as_the_source_does(embeddings):
    import dataclasses

    real, fake = embeddings
    capped = dataclasses.replace(PROTOCOLS["stylegan-v"], max_real=40, max_fake=30)
    np.testing.assert_allclose(
        embeddings_distance(real, fake, capped), stylegan_v_fvd(real, fake, max_real=40, num_gen=30), rtol=RTOL
    )


# -----------------------------------------------------------------------------------------------------------
# Clip sampling and preprocessing
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stylegan-v", "stylegan-v-128f-subsample8f"])
def test_stylegan_v_clips_start_at_random_for_real_videos_and_at_zero_for_generated_ones(name):
    protocol = PROTOCOLS[name]
    length = protocol.clip_span + 20
    for index in range(30):
        for role in ("real", "fake"):
            expected = stylegan_v_clip(length, protocol.frames, protocol.step, role, index, protocol.seed)
            assert protocol.clip_indices(length, role, index) == expected
    starts = {protocol.clip_indices(length, "real", i)[0] for i in range(200)}
    assert starts == set(range(0, 21))  # every fitting start is drawn, none beyond


def test_cd_fvd_takes_one_random_clip_of_every_video_of_both_sets():
    protocol = PROTOCOLS["cd-fvd"]
    assert protocol.seed == 42
    for index in range(30):
        for role in ("real", "fake"):
            assert protocol.clip_indices(40, role, index) == cd_fvd_clip(40, 16, role, index, 42)


def test_too_short_videos_are_refused_with_the_clip_length():
    with pytest.raises(InputError, match="protocol stylegan-v-128f-subsample8f takes 16 frames every 8"):
        PROTOCOLS["stylegan-v-128f-subsample8f"].clip_indices(100, "real", 0)


@pytest.mark.parametrize(
    "name,transcription,size",
    [
        ("videogpt", videogpt_preprocess, (37, 64)),
        ("videogpt", videogpt_preprocess, (90, 50)),
        ("tats", tats_preprocess, (37, 64)),
        ("cd-fvd", cd_fvd_preprocess, (300, 400)),
        ("cd-fvd", cd_fvd_preprocess, (64, 48)),
    ],
)
def test_protocol_preprocessing_equals_its_source(name, transcription, size):
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (2, 3, *size, 3), dtype=np.uint8)
    ours = PROTOCOLS[name].model_input(torch.from_numpy(videos).float())
    torch.testing.assert_close(ours, transcription(videos), rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "name,sample,preprocess,statistics",
    [
        ("videogpt", lambda L, role, i: list(range(16)), videogpt_preprocess, videogpt_fvd),
        ("tats", lambda L, role, i: list(range(16)), tats_preprocess, videogpt_fvd),
        ("stylegan-v", lambda L, role, i: stylegan_v_clip(L, 16, 1, role, i, 0), tats_preprocess, stylegan_v_fvd),
        ("cd-fvd", lambda L, role, i: cd_fvd_clip(L, 16, role, i, 42), cd_fvd_preprocess, cd_fvd_fvd),
    ],
)
def test_protocol_fvd_equals_the_transcribed_pipeline_on_the_same_videos(name, sample, preprocess, statistics):
    """Videos -> the source's clips -> its preprocessing -> the same embedder -> its statistics.

    stylegan-v's resize and [-1, 1] map live inside its TorchScript detector; the record's assumption (bilinear
    224, x/255*2-1) is what the transcription uses (the same operations as TATS's preprocess, up to float order).
    """
    rng = np.random.default_rng(7)
    real = rng.integers(0, 256, (12, 24, 30, 40, 3), dtype=np.uint8)
    fake = np.clip(real.astype(np.int64) + rng.integers(-60, 60, real.shape), 0, 255).astype(np.uint8)
    model = full_rank_embedder()

    def embed(videos, role):
        clips = np.stack([v[sample(v.shape[0], role, i)] for i, v in enumerate(videos)])
        with torch.no_grad():
            return model(preprocess(clips)).double().numpy()

    expected = statistics(embed(real, "real"), embed(fake, "fake"))
    result = fvd(real, fake, model=model, protocol=name, batch_size=5)
    np.testing.assert_allclose(result.fvd, expected, rtol=RTOL)


# -----------------------------------------------------------------------------------------------------------
# Identity, results, caches, errors
# -----------------------------------------------------------------------------------------------------------


def test_every_protocol_has_a_distinct_stable_hash_and_a_cited_source():
    hashes = {name: p.spec_hash for name, p in PROTOCOLS.items()}
    assert len(set(hashes.values())) == len(hashes)
    assert all(len(h) == 12 for h in hashes.values())
    for protocol in PROTOCOLS.values():
        assert protocol.name == [k for k, v in PROTOCOLS.items() if v is protocol][0]
        assert protocol.name == "tf" or "@ " in protocol.source  # a commit is cited
        json.dumps(protocol.spec())  # JSON-able, as results and caches record it


def test_results_carry_the_protocol_name_and_hash():
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (4, 16, 8, 8, 3), dtype=np.uint8)
    for name in ("tf", "cd-fvd"):
        out = fvd(real, real[::-1].copy(), model=TinyEmbedder(), protocol=name).to_dict()
        assert out["protocol"] == name and out["protocol_hash"] == PROTOCOLS[name].spec_hash


def test_unknown_protocol_is_refused_before_any_work():
    with pytest.raises(InputError, match="unknown FVD protocol 'styleganv'; known: tf, stylegan-v"):
        fvd("/nonexistent", "/nonexistent", protocol="styleganv")
    with pytest.raises(InputError, match="unknown FVD protocol"):
        get_protocol("fvd2048_16f")


def test_a_cache_made_under_another_protocol_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    videos = rng.integers(0, 256, (4, 16, 8, 8, 3), dtype=np.uint8)
    compute_stats(videos, TinyEmbedder(), protocol="videogpt", cache=tmp_path / "s.npz")
    with pytest.raises(InputError, match="under protocol videogpt .*not cd-fvd"):
        compute_stats(tmp_path / "s.npz", TinyEmbedder(), protocol="cd-fvd")
    with pytest.raises(InputError, match="other preprocessing"):
        compute_stats(tmp_path / "s.npz", TinyEmbedder())  # the default tf protocol


def test_fewer_videos_than_the_protocol_states_warn():
    rng = np.random.default_rng(5)
    videos = rng.integers(0, 256, (4, 16, 8, 8, 3), dtype=np.uint8)
    with pytest.warns(SmallSampleWarning, match="fewer than the 2048 protocol stylegan-v states"):
        fvd(videos, videos[::-1].copy(), model=TinyEmbedder(), protocol="stylegan-v")


# -----------------------------------------------------------------------------------------------------------
# Bootstrap and the FVD-against-N curve
# -----------------------------------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_brackets_the_resampled_values(embeddings):
    real, fake = embeddings
    first = bootstrap_fvd(real, fake, "tf", n=50, seed=1)
    again = bootstrap_fvd(real, fake, "tf", n=50, seed=1)
    other = bootstrap_fvd(real, fake, "tf", n=50, seed=2)
    assert first == again and first != other
    values = bootstrap_samples(real, fake, "tf", n=50, seed=1)
    np.testing.assert_allclose([first.low, first.high], np.percentile(values, [2.5, 97.5]), rtol=1e-12)
    # Resamples repeat videos, and FVD is biased upwards on fewer distinct videos: the interval sits above the
    # full sets' value, as docs/fvd.md says, rather than around it.
    assert embeddings_distance(real, fake, PROTOCOLS["tf"]) < np.median(values) < first.high
    assert first.std > 0


def test_bootstrap_in_the_fvd_result(embeddings):
    rng = np.random.default_rng(6)
    real = rng.integers(0, 256, (6, 10, 8, 8, 3), dtype=np.uint8)
    out = fvd(real, real[::-1].copy() // 2, model=TinyEmbedder(), bootstrap=20, seed=3).to_dict()
    assert set(out["bootstrap"]) == {"n", "seed", "confidence", "low", "high", "std"}
    assert out["bootstrap"]["n"] == 20 and out["bootstrap"]["low"] <= out["bootstrap"]["high"]


def test_fvd_by_set_size_curve_and_png(embeddings, tmp_path):
    pytest.importorskip("matplotlib")
    real, fake = embeddings
    curve = fvd_by_set_size(real, fake, "tf", sizes=[5, 10, 40], repeats=3)
    assert [k for k, _, _ in curve] == [5, 10, 40]
    assert curve[0][1] > curve[-1][1]  # small sets are biased upwards
    plot_fvd_by_set_size(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -----------------------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------------------

from test_fvd import CLI_ENV, random_weights  # noqa: E402,F401  (the random-weight I3D fixture)


@pytest.mark.parametrize(
    "options,message",
    [
        (["--protocol", "styleganv"], "unknown FVD protocol 'styleganv'; known: tf, stylegan-v"),
        (["--bootstrap", "-3"], "--bootstrap takes a number of resamples >= 0"),
        (["--plot", "curve.jpg"], "--plot writes a PNG"),
    ],
)
def test_cli_protocol_errors_are_one_line_without_traceback(tmp_path, options, message, run_cli):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 16, 8, 8, 3), np.uint8))
    result = run_cli("fvd", good, good, *options, env=CLI_ENV)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
def test_cli_protocol_bootstrap_and_plot(tmp_path, random_weights, run_cli):  # noqa: F811
    rng = np.random.default_rng(9)
    real = rng.integers(0, 256, (4, 18, 24, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", real[:, ::-1].copy())
    cache = [tmp_path / "real.npz", tmp_path / "fake.npz"]
    options = ["--weights", random_weights, "--protocol", "cd-fvd", "--bootstrap", "30", "--seed", "4"]
    run = run_cli("fvd", tmp_path / "real.npy", tmp_path / "fake.npy", *options, "--json",
                  "--cache-stats", *cache, "--plot", tmp_path / "curve.png", env=CLI_ENV)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["protocol"] == "cd-fvd" and out["protocol_hash"] == PROTOCOLS["cd-fvd"].spec_hash
    assert out["bootstrap"]["n"] == 30 and out["bootstrap"]["seed"] == 4
    assert "fewer than the 2048 protocol cd-fvd states" in run.stderr
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # The caches reproduce the number without the videos, under the same protocol only.
    again = run_cli("fvd", *cache, "--protocol", "cd-fvd", "--json", "--bootstrap", "30", "--seed", "4", env=CLI_ENV)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["fvd"] == out["fvd"]
    assert json.loads(again.stdout)["bootstrap"] == out["bootstrap"]
    other = run_cli("fvd", *cache, "--protocol", "videogpt", env=CLI_ENV)
    assert other.returncode == 1 and "under protocol cd-fvd" in other.stderr
