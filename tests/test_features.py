"""features / extract_features: values, names, manifest, bad inputs, resume after a real kill.

A random-weights model saved to a temp file stands in for the real weights, and frames are decoded at a
short side of 32 with 32x32 crops: Mixed_5c features accept any size, and the network runs in a fraction
of a second at that size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from videogen import moving_shapes, write_frame_folder, write_video

from i3d_torch.apps.features import MANIFEST, collect_inputs, extract_features, read_records, resolve_endpoint
from i3d_torch.core.errors import InputError
from i3d_torch.core.transforms import rgb_to_model_input
from i3d_torch.core.video import center_crop, read_video
from i3d_torch.weights.registry import cached_model

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(short_side=32, crop_size=32, clip_frames=8, stride=4)
SMALL_ARGS = ["--short-side", "32", "--crop-size", "32", "--clip-frames", "8", "--stride", "4", "--quiet"]
def assert_features_close(got, expected) -> None:
    """Within 1e-4 of the expected values' peak: random-init features are small (about 1e-6 to 1e-2 here), so an
    absolute bound of a fixed size could not fail."""
    expected = np.asarray(expected)
    assert_close(np.asarray(got), expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def weights(rgb_weights) -> Path:
    return rgb_weights


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder of videos: two at the top, one in a subfolder, and a frame folder."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", moving_shapes(12, 40, 48, seed=1), 25)
    write_video(root / "b.avi", moving_shapes(9, 40, 48, seed=2), 25)
    (root / "sub").mkdir()
    write_video(root / "sub" / "a.mp4", moving_shapes(16, 48, 40, seed=3), 25)
    write_frame_folder(root / "frames", moving_shapes(6, 40, 40, seed=4))
    (root / "notes.txt").write_text("not a video")
    return root


def manifest_records(out: Path) -> list:
    records, torn = read_records(out / MANIFEST)
    assert torn == 0
    return records


# -- names -------------------------------------------------------------------------------------------


def test_folder_inputs_are_found_recursively_and_named_by_relative_path(videos):
    items = collect_inputs(videos)
    assert [i.rel for i in items] == ["a.mp4", "b.avi", "frames", "sub/a.mp4"]
    assert items[3].output == "sub/a.mp4.npy" and items[3].windows_output == "sub/a.mp4.windows.npy"


def test_list_file_paths_are_relative_to_the_list_and_named_from_their_common_folder(videos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{videos / 'sub' / 'a.mp4'}\n\n{os.path.relpath(videos / 'a.mp4', tmp_path)}\n")
    assert [i.rel for i in collect_inputs(listing)] == ["a.mp4", "sub/a.mp4"]


def test_symbolic_link_loop_in_the_input_folder_is_walked_once(tmp_path):
    write_video(tmp_path / "sub" / "v.mp4", moving_shapes(2, 16, 16), 25)
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    assert [i.rel for i in collect_inputs(tmp_path)] == ["sub/v.mp4"]


def test_outputs_that_would_collide_are_refused(tmp_path):
    write_frame_folder(tmp_path / "x.mp4.windows", moving_shapes(2, 16, 16))
    write_video(tmp_path / "x.mp4", moving_shapes(2, 16, 16), 25)
    with pytest.raises(InputError, match="would both write"):
        collect_inputs(tmp_path)


def test_endpoint_names_resolve_to_network_endpoints():
    pooled, logits = resolve_endpoint("pooled"), resolve_endpoint("logits")
    assert (pooled.endpoint, pooled.pool) == ("Mixed_5c", True)
    assert (logits.endpoint, logits.pool) == ("Logits", False)
    assert resolve_endpoint("Mixed_4f", pool=False).pool is False
    with pytest.raises(InputError, match="unknown endpoint"):
        resolve_endpoint("Mixed_9z")


# -- values ------------------------------------------------------------------------------------------


def test_features_equal_the_model_endpoint_on_the_same_preprocessed_windows(videos, weights, tmp_path):
    summary = extract_features(videos / "sub" / "a.mp4", tmp_path, weights=weights, **SMALL)
    assert (summary.done, summary.failed) == (1, 0)

    (record,) = manifest_records(tmp_path)
    per_window = np.load(tmp_path / record["windows_output"])
    video = np.load(tmp_path / record["output"])
    frames, _ = read_video(videos / "sub" / "a.mp4", fps=25, short_side=32)
    assert record["windows"] == [[0, 8], [4, 12], [8, 16]] and record["frames"] == len(frames) == 16
    model = cached_model(weights)
    clips = np.stack([center_crop(frames[s:e], 32) for s, e in record["windows"]])
    with torch.no_grad():
        expected = model.pooled_features(rgb_to_model_input(clips)).numpy()
    assert per_window.shape == (3, 1024) and video.shape == (1024,)
    assert_features_close(per_window, expected)
    assert_features_close(video, expected.mean(axis=0))
    assert record["shape"] == [1024] and record["windows_shape"] == [3, 1024]
    assert record["preprocessing"]["crop_size"] == 32 and record["endpoint"] == "pooled"
    assert len(record["weights_sha256"]) == 64 and record["status"] == "ok"


def test_raw_endpoint_maps_are_kept_with_no_pool(videos, weights, tmp_path):
    extract_features(videos / "a.mp4", tmp_path, weights=weights, endpoint="Mixed_3b", pool=False, **SMALL)
    (record,) = manifest_records(tmp_path)
    # 8 frames 32x32 -> Mixed_3b has 256 channels at T/2 x H/8 x W/8
    assert record["windows_shape"] == [2, 256, 4, 4, 4] and record["shape"] == [256, 4, 4, 4]


def test_logits_endpoint_gives_time_averaged_logits(tmp_path, weights):
    video = write_video(tmp_path / "v.mp4", moving_shapes(9, 224, 224), 25)
    extract_features(video, tmp_path / "out", weights=weights, endpoint="logits")
    (record,) = manifest_records(tmp_path / "out")
    frames, _ = read_video(video, fps=25, short_side=256)
    with torch.no_grad():
        expected = cached_model(weights)(rgb_to_model_input(center_crop(frames, 224)))
    assert_features_close(np.load(tmp_path / "out" / record["windows_output"]), expected.numpy())


# -- failures and resume -----------------------------------------------------------------------------


def test_bad_file_is_recorded_and_the_run_goes_on_then_exits_nonzero(videos, weights, tmp_path, run_cli):
    listing = tmp_path / "list.txt"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"garbage" * 20)
    listing.write_text(f"{videos / 'a.mp4'}\n{broken}\n{videos / 'b.avi'}\n")
    out = tmp_path / "out"

    proc = run_cli("features", str(listing), "--out", str(out), "--weights", str(weights), *SMALL_ARGS)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: {broken}:" in proc.stderr
    status = {Path(r["path"]).name: r["status"] for r in manifest_records(out)}
    assert status == {"a.mp4": "ok", "broken.mp4": "error", "b.avi": "ok"}
    error = next(r for r in manifest_records(out) if r["status"] == "error")["error"]
    assert str(broken) in error and "\n" not in error


def test_rerun_skips_complete_outputs_and_redoes_missing_ones_without_duplicate_lines(videos, weights, tmp_path):
    first = extract_features(videos, tmp_path, weights=weights, **SMALL)
    assert (first.done, first.skipped) == (4, 0)
    (tmp_path / "b.avi.npy").unlink()  # a lost output
    with open(tmp_path / MANIFEST, "a") as fh:
        fh.write('{"input": "torn')  # a line cut by a crash

    second = extract_features(videos, tmp_path, weights=weights, **SMALL)

    assert (second.done, second.skipped, second.failed) == (1, 3, 0)
    inputs = [r["input"] for r in manifest_records(tmp_path)]
    assert sorted(inputs) == ["a.mp4", "b.avi", "frames", "sub/a.mp4"]


def test_changed_settings_redo_the_outputs(videos, weights, tmp_path):
    extract_features(videos / "b.avi", tmp_path, weights=weights, **SMALL)
    summary = extract_features(videos / "b.avi", tmp_path, weights=weights, **{**SMALL, "stride": 2})
    assert summary.done == 1
    (record,) = manifest_records(tmp_path)
    assert record["windows"] == [[0, 8], [1, 9]]


def _outputs(out: Path) -> dict:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.rglob("*.npy"))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results_as_an_uninterrupted_run(
    tmp_path, weights, run_cli, kill_features_after_first_record
):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):  # long enough (several windows each) that the kill lands mid-run
        write_video(videos / f"v{i}.mp4", moving_shapes(24, 40, 48, seed=i), 25)
    args = ["--weights", str(weights), *SMALL_ARGS]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_cli("features", str(videos), "--out", str(reference), *args).returncode == 0

    kill_features_after_first_record(videos, resumed, *args)
    lines_at_kill = len(read_records(resumed / MANIFEST)[0])
    assert 1 <= lines_at_kill < 4, "the kill did not land mid-run"
    for path in resumed.rglob("*.npy"):  # whatever exists under a final name is complete
        np.load(path)

    proc = run_cli("features", str(videos), "--out", str(resumed), *args)

    assert proc.returncode == 0, proc.stderr
    assert f"{4 - lines_at_kill} extracted, {lines_at_kill} already done" in proc.stderr
    expected, actual = _outputs(reference), _outputs(resumed)
    assert list(actual) == list(expected)
    for name in expected:
        assert_close(actual[name], expected[name], rtol=0, atol=0)
    strip = lambda records: sorted(json.dumps(r, sort_keys=True) for r in records)  # noqa: E731
    assert strip(manifest_records(resumed)) == strip(manifest_records(reference))
    assert not [p for p in resumed.rglob(".*.tmp")]
