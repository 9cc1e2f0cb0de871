"""features for localization and anomaly detection: ten crops kept apart, dense windows with padding, time
stamps, RGB and flow side by side, HDF5 (per video and single file), the output-folder lock, torch.hub.

Random-weights RGB and flow models stand in for the real weights; videos are real encoded files written by
videogen (lossless FFV1 in .mkv where pixel values matter) at sizes where the network runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from videogen import frame_index, index_coded_frames, moving_shapes, write_video

from i3d_torch.apps.features import MANIFEST, SINGLE_FILE, extract_features, read_records
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.transforms import flow_to_model_input, rgb_to_model_input
from i3d_torch.core.video import read_video
from i3d_torch.pipeline.crops import crop_views, mirror
from i3d_torch.pipeline.windows import DenseWindowing, iter_dense_windows
from i3d_torch.weights.registry import cached_model, label_list, save_model

h5py = pytest.importorskip("h5py", reason="HDF5 output needs h5py (pip install 'i3d-torch[h5]')")

REPO = Path(__file__).resolve().parents[1]
#: Random-init features are tiny (about 1e-6), so comparisons are relative to the largest expected value.
RELATIVE_TOL = 1e-4
#: Frames 40x56 stay 40x56 at short side 40; 32x32 crops leave distinct corners.
SMALL = dict(short_side=40, crop_size=32)
SMALL_ARGS = ["--short-side", "40", "--crop-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def flow_weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "random_flow.safetensors"
    model = InceptionI3d(in_channels=2).eval()
    save_model(model, path, categories=label_list("kinetics400"), name="random_flow", modality="flow")
    return path


def corner_clip(count: int = 10, height: int = 40, width: int = 56) -> np.ndarray:
    """Moving shapes tinted per quadrant (red, green, blue, white), so every corner crop differs."""
    frames = moving_shapes(count, height, width, seed=5) // 2
    tints = [(127, 0, 0), (0, 127, 0), (0, 0, 127), (127, 127, 127)]
    h, w = height // 2, width // 2
    for k, (y, x) in enumerate([(0, 0), (0, w), (h, 0), (h, w)]):
        frames[:, y : y + h, x : x + w] += np.array(tints[k], np.uint8)
    return frames


@pytest.fixture(scope="module")
def corners_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("videos") / "corners.mkv", corner_clip(), 25)


def assert_features_close(actual, expected, tol: float = RELATIVE_TOL) -> None:
    """``assert_close`` on features scaled by the largest magnitude expected (tolerance ``tol`` of it)."""
    actual, expected = torch.as_tensor(np.asarray(actual)), torch.as_tensor(np.asarray(expected))
    scale = expected.abs().max().clamp_min(1e-30)
    assert_close(actual / scale, expected / scale, rtol=0, atol=tol)


def records(out: Path) -> list:
    found, torn = read_records(out / MANIFEST)
    assert torn == 0
    return found


def manual_ten_crops(clip: np.ndarray, size: int) -> list:
    """Ten crops written out by hand: corners and centre, then the same of the mirrored clip."""
    height, width = clip.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2

    def five(c):
        return [c[:, :size, :size], c[:, :size, -size:], c[:, -size:, :size], c[:, -size:, -size:],
                c[:, top : top + size, left : left + size]]  # fmt: skip

    return [np.ascontiguousarray(c) for c in five(clip) + five(clip[:, :, ::-1])]


# -- crops -------------------------------------------------------------------------------------------


def test_ten_crops_are_the_corners_centre_and_their_mirror_images_in_torchvision_order():
    clip = corner_clip(2)
    views = crop_views(clip, "ten", 16)
    assert len(views) == 10 and all(v.shape == (2, 16, 16, 3) for v in views)
    colour = [tuple(v[:, :4, :4].reshape(-1, 3).mean(axis=0).round()) for v in views]  # the outer corner
    red, green, blue = colour[0], colour[1], colour[2]
    assert red[0] > red[1] and green[1] > green[0] and blue[2] > blue[0]
    assert len({colour[0], colour[1], colour[2], colour[3]}) == 4
    for k in range(5):
        assert_close(views[5 + k], manual_ten_crops(clip, 16)[5 + k], rtol=0, atol=0)
    assert_close(views[5], views[1][:, :, ::-1].copy(), rtol=0, atol=0)  # mirrored top-left = flipped top-right
    assert_close(views[4], crop_views(clip, "center", 16)[0], rtol=0, atol=0)


def test_mirrored_flow_negates_the_horizontal_displacement_only():
    flow = np.random.default_rng(0).normal(size=(3, 8, 10, 2)).astype(np.float32)
    flipped = mirror(flow, flow=True)
    assert_close(flipped[..., 0], -flow[:, :, ::-1, 0].copy(), rtol=0, atol=0)
    assert_close(flipped[..., 1], flow[:, :, ::-1, 1].copy(), rtol=0, atol=0)
    mirrored_centre = crop_views(flow, "ten", 6, flow=True)[9][..., 0]
    assert_close(mirrored_centre, -flow[:, 1:7, 2:8][:, :, ::-1, 0].copy(), rtol=0, atol=0)


def test_ten_crops_larger_than_the_frame_are_refused_with_the_fix():
    with pytest.raises(InputError, match="smaller than the 64x64 crop of --crop ten"):
        crop_views(corner_clip(2), "ten", 64)


def test_kept_ten_crops_equal_the_model_on_each_hand_made_crop(corners_video, rgb_weights, tmp_path):
    extract_features(corners_video, tmp_path, weights=rgb_weights, crop="ten", keep_crops=True, **SMALL)
    (record,) = records(tmp_path)
    windows = np.load(tmp_path / "corners.mkv.windows.npy")
    assert windows.shape == (1, 10, 1024) and record["windows_shape"] == [1, 10, 1024]
    assert record["crops"]["names"][5] == "mirrored_top_left" and record["crops"]["kept"] is True
    frames, _ = read_video(corners_video, fps=25, short_side=40)
    with torch.inference_mode():  # as the pipeline runs it
        expected = cached_model(rgb_weights).pooled_features(
            rgb_to_model_input(np.stack(manual_ten_crops(frames, 32)))
        )
    assert_features_close(windows[0], expected.numpy())
    difference = np.abs(windows[0, 0] - windows[0, 1]).max() / np.abs(windows[0]).max()
    assert difference > 1e-2  # the corners really differ


def test_averaged_ten_crops_are_the_mean_of_the_kept_ones(corners_video, rgb_weights, tmp_path):
    extract_features(corners_video, tmp_path / "kept", weights=rgb_weights, crop="ten", keep_crops=True, **SMALL)
    extract_features(corners_video, tmp_path / "mean", weights=rgb_weights, crop="ten", **SMALL)
    kept, mean = np.load(tmp_path / "kept/corners.mkv.windows.npy"), np.load(tmp_path / "mean/corners.mkv.windows.npy")
    assert mean.shape == (1, 1024)
    assert_features_close(mean, kept.mean(axis=1))


def test_default_options_write_no_sidecar_and_the_same_manifest_keys_as_before(corners_video, rgb_weights, tmp_path):
    extract_features(corners_video, tmp_path / "plain", weights=rgb_weights, **SMALL)
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == ["corners.mkv.npy", "corners.mkv.windows.npy", MANIFEST]  # no lock file left behind either
    (record,) = records(tmp_path / "plain")
    assert "times" not in record and "layout" not in record
    extract_features(corners_video, tmp_path / "stamped", weights=rgb_weights, timestamps=True, **SMALL)
    (stamped,) = records(tmp_path / "stamped")
    assert stamped["times"]["first_frame"] == [0] and stamped["times"]["last_frame"] == [9]
    assert (tmp_path / "stamped" / "corners.mkv.json").is_file()


# -- dense windows and time stamps ------------------------------------------------------------------


def test_dense_window_spans_for_thumos_and_ms_tcn_settings():
    thumos = DenseWindowing(16, 4, pad="drop")
    assert [(s, e) for s, e, _ in iter_dense_windows(range(30), thumos)] == [(0, 16), (4, 20), (8, 24), (12, 28)]
    ms_tcn = DenseWindowing(21, 1, centre=True)
    spans = [(s, e, f) for s, e, f in iter_dense_windows(range(30), ms_tcn)]
    assert len(spans) == 30  # one feature per frame
    assert spans[0][:2] == (-10, 11) and spans[0][2] == list(range(11))
    assert spans[29][:2] == (19, 40) and spans[29][2] == list(range(19, 30))
    with pytest.raises(InputError, match="fewer than the 16-frame window"):
        list(iter_dense_windows(range(10), thumos))


def test_centred_windows_time_stamps_match_the_decoded_frame_indices(rgb_weights, tmp_path):
    video = write_video(tmp_path / "index.mkv", index_coded_frames(12, 40, 56), 25)
    extract_features(video, tmp_path / "out", weights=rgb_weights, window=5, step=2, centre=True, **SMALL)
    (record,) = records(tmp_path / "out")
    times = record["times"]
    assert record["windows"] == [[t - 2, t + 3] for t in range(0, 12, 2)]
    assert times["first_frame"] == [0, 0, 2, 4, 6, 8] and times["last_frame"] == [2, 4, 6, 8, 10, 11]
    assert_close(times["start_s"], [f / 25 for f in times["first_frame"]])
    assert_close(times["end_s"], [(f + 1) / 25 for f in times["last_frame"]])
    frames, _ = read_video(video, fps=25, short_side=40)
    assert [frame_index(frames[f]) for f in times["first_frame"]] == times["first_frame"]
    sidecar = json.loads((tmp_path / "out" / "index.mkv.json").read_text())
    assert sidecar["times"] == times and sidecar["fps"] == 25 and (sidecar["window"], sidecar["step"]) == (5, 2)
    assert sidecar["weights_sha256"]["rgb"] == record["weights_sha256"] and sidecar["endpoint"] == "pooled"


def test_edge_padding_repeats_the_end_frames_and_zeros_pad_the_model_input(rgb_weights, tmp_path):
    video = write_video(tmp_path / "v.mkv", moving_shapes(7, 40, 56, seed=3), 25)
    extract_features(video, tmp_path / "edge", weights=rgb_weights, window=5, step=3, centre=True, **SMALL)
    extract_features(video, tmp_path / "zero", weights=rgb_weights, window=5, step=3, centre=True, pad="zeros", **SMALL)
    edge, zero = np.load(tmp_path / "edge/v.mkv.windows.npy"), np.load(tmp_path / "zero/v.mkv.windows.npy")
    assert edge.shape == zero.shape == (3, 1024)  # frames 0, 3, 6
    frames, _ = read_video(video, fps=25, short_side=40)
    model = cached_model(rgb_weights)
    crop = frames[:, 4:36, 12:44]
    with torch.inference_mode():  # as the pipeline runs it
        first_edge = model.pooled_features(rgb_to_model_input(crop[[0, 0, 0, 1, 2]]))
        x = rgb_to_model_input(crop[:3])
        first_zero = model.pooled_features(torch.cat([torch.zeros_like(x[:, :, :2]), x], dim=2))
    assert_features_close(edge[0], first_edge[0].numpy())
    assert_features_close(zero[0], first_zero[0].numpy())
    assert_close(edge[1], zero[1], rtol=0, atol=0)  # a window inside the video has nothing to pad


def test_drop_policy_refuses_a_video_shorter_than_the_window_and_goes_on(rgb_weights, tmp_path, run_cli):
    short = write_video(tmp_path / "videos" / "short.mkv", moving_shapes(6, 40, 56), 25)
    write_video(tmp_path / "videos" / "long.mkv", moving_shapes(12, 40, 56), 25)
    proc = run_cli("features", tmp_path / "videos", "--out", tmp_path / "out", "--weights", rgb_weights,
                   "--window", "8", "--step", "4", "--pad", "drop", *SMALL_ARGS)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{short}: the video has 6 frames, fewer than the 8-frame window" in proc.stderr
    status = {r["input"]: r["status"] for r in records(tmp_path / "out")}
    assert status == {"long.mkv": "ok", "short.mkv": "error"}


# -- both streams ------------------------------------------------------------------------------------


def test_rgb_and_flow_side_by_side_with_flow_computed_once_per_video(
    corners_video, rgb_weights, flow_weights, tmp_path, monkeypatch
):
    from i3d_torch.core import flow as flow_module

    pushes = []
    original = flow_module.TVL1Flow.push
    monkeypatch.setattr(flow_module.TVL1Flow, "push", lambda self, frame: pushes.append(1) or original(self, frame))
    extract_features(
        corners_video, tmp_path / "both", weights=rgb_weights, flow_weights=flow_weights, streams="rgb,flow",
        window=6, step=2, crop="ten", keep_crops=True, **SMALL,
    )  # fmt: skip
    assert len(pushes) == 10  # one per frame, although 5 windows of 6 frames overlap
    (record,) = records(tmp_path / "both")
    both = np.load(tmp_path / "both/corners.mkv.windows.npy")
    assert both.shape == (5, 10, 2048) and record["stream_dims"] == {"rgb": [0, 1024], "flow": [1024, 2048]}
    assert [s["stream"] for s in record["streams"]] == ["rgb", "flow"]

    extract_features(corners_video, tmp_path / "rgb", weights=rgb_weights, window=6, step=2, crop="ten",
                     keep_crops=True, **SMALL)  # fmt: skip
    assert_features_close(both[..., :1024], np.load(tmp_path / "rgb/corners.mkv.windows.npy"))

    from i3d_torch.core.flow import video_flow

    frames, _ = read_video(corners_video, fps=25, short_side=40)
    flows = video_flow(frames[:6])  # the first window: frames 0-5, 5 flows
    views = crop_views(flows, "ten", 32, flow=True)
    with torch.inference_mode():  # as the pipeline runs it
        expected = cached_model(flow_weights).pooled_features(flow_to_model_input(np.stack(views)))
    assert_features_close(both[0, :, 1024:], expected.numpy(), tol=1e-3)


def test_flow_alone_with_kept_ten_crops_equals_the_flow_half_of_both_streams(
    corners_video, rgb_weights, flow_weights, tmp_path
):
    options = dict(window=6, step=4, crop="ten", keep_crops=True, **SMALL)
    extract_features(corners_video, tmp_path / "flow", weights=rgb_weights, flow_weights=flow_weights,
                     streams="flow", **options)  # fmt: skip
    extract_features(corners_video, tmp_path / "both", weights=rgb_weights, flow_weights=flow_weights,
                     streams="flow,rgb", **options)  # fmt: skip
    flow, both = np.load(tmp_path / "flow/corners.mkv.windows.npy"), np.load(tmp_path / "both/corners.mkv.windows.npy")
    assert flow.shape == (3, 10, 1024) and both.shape == (3, 10, 2048)
    assert_features_close(both[..., :1024], flow)  # flow first, as asked
    (record,) = records(tmp_path / "both")
    assert record["stream_dims"] == {"flow": [0, 1024], "rgb": [1024, 2048]}


def test_flow_stream_without_flow_weights_is_one_clear_line(corners_video, rgb_weights, tmp_path, run_cli):
    proc = run_cli("features", corners_video, "--out", tmp_path, "--weights", rgb_weights, "--streams", "flow",
                   "--flow-weights", rgb_weights, *SMALL_ARGS)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--streams flow needs flow weights" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- HDF5 --------------------------------------------------------------------------------------------


def test_h5_per_video_holds_the_features_times_and_settings(corners_video, rgb_weights, tmp_path):
    options = dict(weights=rgb_weights, window=6, step=3, **SMALL)
    extract_features(corners_video, tmp_path / "npy", **options)
    extract_features(corners_video, tmp_path / "h5", fmt="h5", **options)
    with h5py.File(tmp_path / "h5" / "corners.mkv.h5", "r") as fh:
        assert_close(fh["windows"][()], np.load(tmp_path / "npy/corners.mkv.windows.npy"), rtol=0, atol=0)
        assert list(fh["first_frame"][()]) == [0, 3, 6, 9] and list(fh["last_frame"][()]) == [5, 8, 9, 9]
        assert_close(fh["end_s"][()], np.array([6, 9, 10, 10]) / 25)
        assert fh.attrs["fps"] == 25 and fh.attrs["window"] == 6 and fh.attrs["step"] == 3
        assert json.loads(fh.attrs["config"])["format"] == "h5"


def test_h5_of_other_settings_is_refused_and_kept(corners_video, rgb_weights, tmp_path, run_cli):
    args = ["features", corners_video, "--out", tmp_path, "--weights", rgb_weights, "--format", "h5", *SMALL_ARGS]
    assert run_cli(*args, "--single-file").returncode == 0
    before = (tmp_path / SINGLE_FILE).read_bytes()

    proc = run_cli(*args, "--single-file", "--window", "4")

    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tmp_path / SINGLE_FILE}: holds features extracted with other settings" in proc.stderr
    assert (tmp_path / SINGLE_FILE).read_bytes() == before


def test_per_video_h5_of_other_settings_fails_that_input_and_is_kept(corners_video, rgb_weights, tmp_path):
    extract_features(corners_video, tmp_path, weights=rgb_weights, fmt="h5", window=6, **SMALL)
    before = (tmp_path / "corners.mkv.h5").read_bytes()
    again = extract_features(corners_video, tmp_path, weights=rgb_weights, fmt="h5", window=6, **SMALL)
    assert (again.skipped, again.failed) == (1, 0)

    summary = extract_features(corners_video, tmp_path, weights=rgb_weights, fmt="h5", window=4, **SMALL)

    assert summary.failed == 1 and "holds features extracted with other settings" in summary.errors["corners.mkv"]
    assert (tmp_path / "corners.mkv.h5").read_bytes() == before


def test_single_file_groups_each_video_and_a_rerun_adds_without_changing_the_rest(rgb_weights, tmp_path):
    videos = tmp_path / "videos"
    for i in range(3):
        write_video(videos / f"v{i}.mkv", moving_shapes(8 + i, 40, 56, seed=i), 25)
    (videos / "v2.mkv").rename(tmp_path / "later.mkv")
    options = dict(weights=rgb_weights, fmt="h5", single_file=True, window=4, step=4, **SMALL)
    extract_features(videos, tmp_path / "out", **options)
    (tmp_path / "later.mkv").rename(videos / "v2.mkv")
    summary = extract_features(videos, tmp_path / "out", **options)
    extract_features(videos, tmp_path / "reference", **options)

    assert (summary.done, summary.skipped) == (1, 2)
    assert not (tmp_path / "out" / ".parts").exists()
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "out" / SINGLE_FILE) == digest(tmp_path / "reference" / SINGLE_FILE)
    with h5py.File(tmp_path / "out" / SINGLE_FILE, "r") as fh:
        assert sorted(fh) == ["v0.mkv", "v1.mkv", "v2.mkv"] and fh["v2.mkv/windows"].shape == (3, 1024)


@pytest.mark.slow
def test_killed_single_file_h5_run_resumes_to_the_same_bytes(
    tmp_path, rgb_weights, run_cli, kill_features_after_first_record
):
    videos = tmp_path / "videos"
    for i in range(4):
        write_video(videos / f"v{i}.mp4", moving_shapes(24, 40, 48, seed=i), 25)
    args = ["--weights", rgb_weights, "--format", "h5", "--single-file", "--window", "8", "--step", "2", *SMALL_ARGS]
    assert run_cli("features", videos, "--out", tmp_path / "reference", *args).returncode == 0
    resumed = tmp_path / "resumed"
    kill_features_after_first_record(videos, resumed, *args)
    assert not (resumed / SINGLE_FILE).exists()  # nothing half-written: the parts wait in .parts

    proc = run_cli("features", videos, "--out", resumed, *args)

    assert proc.returncode == 0, proc.stderr
    assert (resumed / SINGLE_FILE).read_bytes() == (tmp_path / "reference" / SINGLE_FILE).read_bytes()
    assert not list(resumed.rglob(".*.tmp"))


# -- torch.hub ---------------------------------------------------------------------------------------


def test_hub_loads_from_the_local_clone_with_weights_and_transforms(rgb_weights):
    model = torch.hub.load(str(REPO), "i3d", source="local", weights=str(rgb_weights))
    assert model.weights_info.name == "random_rgb" and model.transforms.crop_size == 224
    x = model.transforms(moving_shapes(9, 64, 80))
    assert tuple(x.shape) == (1, 3, 9, 224, 224)
    with torch.inference_mode():  # as the pipeline runs it
        assert_features_close(model(x), cached_model(rgb_weights)(x))


def test_hub_registry_name_gives_the_kinetics_model_when_cached():
    from i3d_torch.weights.registry import get_weights

    if not get_weights("rgb_kinetics400").is_present():
        pytest.skip("the rgb_kinetics400 weights are not cached (i3d-torch weights fetch rgb_kinetics400)")
    model = torch.hub.load(str(REPO), "i3d", source="local", weights="rgb_kinetics400")
    assert model.weights_info.name == "rgb_kinetics400" and model.num_classes == 400
