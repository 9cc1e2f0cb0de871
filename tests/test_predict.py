"""predict / classify: window scoring, crops, flow fusion, CLI output and errors.

Most tests use a random-weights model saved to a temp file (the arithmetic, not the accuracy, is under
test); only the cricket test uses the real Kinetics-400 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from videogen import moving_shapes, write_video

from i3d_torch.apps.classify import classify
from i3d_torch.core.errors import I3DError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.transforms import flow_to_model_input, rgb_to_model_input
from i3d_torch.core.video import clip_windows, crops
from i3d_torch.pipeline.batches import _with_flow, window_inputs
from i3d_torch.pipeline.settings import ClipSettings, clip_settings
from i3d_torch.pipeline.windows import Windowing, iter_windows, window_spans
from i3d_torch.weights.registry import cached_model, get_weights, label_list, save_model

REPO = Path(__file__).resolve().parents[1]
CRICKET_GIF = REPO / "i3d_torch" / "assets" / "v_CricketShot_g04_c01_rgb.gif"
# Logits of the same clip computed twice on the CPU may differ in the last bits (thread scheduling).
LOGIT_TOL = dict(rtol=1e-5, atol=1e-5)


def _random_model(in_channels: int = 3, seed: int = 0) -> InceptionI3d:
    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=400, in_channels=in_channels).eval()
    # Random BN statistics and offsets, so that the logits differ visibly between classes and windows.
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random_rgb.safetensors"
    save_model(_random_model(), path, categories=label_list("kinetics400"), name="random_rgb", modality="rgb")
    return path


@pytest.fixture(scope="module")
def rgb_model_random(rgb_weights) -> InceptionI3d:
    return cached_model(rgb_weights)


def _reference_logits(model: InceptionI3d, clip: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(rgb_to_model_input(clip)).numpy()


# -- windows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 8, 9, 63, 64, 65, 100, 129])
@pytest.mark.parametrize("clip, stride", [(64, 32), (9, 4), (16, 16), (10, 25)])
def test_streamed_windows_equal_video_clip_windows(num_frames, clip, stride):
    assert window_spans(num_frames, Windowing(clip, stride)) == clip_windows(num_frames, clip, stride)


def test_default_windowing_is_whole_video_up_to_256_frames_then_64_every_32():
    assert window_spans(256, Windowing()) == [(0, 256)]
    assert window_spans(257, Windowing()) == clip_windows(257, 64, 32)
    assert window_spans(1000, Windowing())[-1] == (936, 1000)


def test_stride_defaults_to_half_a_window():
    assert window_spans(40, Windowing(16)) == [(0, 16), (8, 24), (16, 32), (24, 40)]


def test_clip_settings_take_the_weights_preset_unless_the_user_overrides():
    preset = get_weights("rgb_kinetics400").transforms()
    default = clip_settings(preset, streams=["rgb"], min_frames={"rgb": 9})
    assert (default.fps, default.short_side, default.crop_size) == (preset.fps, preset.short_side, preset.crop_size)
    assert default == ClipSettings(min_frames={"rgb": 9})
    custom = clip_settings(
        preset, streams=["rgb"], min_frames={"rgb": 1}, fps=12.5, short_side=64, crop_size=48, clip_frames=16
    )
    assert (custom.fps, custom.short_side, custom.crop_size) == (12.5, 64, 48)
    assert custom.windowing == Windowing(16) and custom.to_dict()["windowing"]["stride"] == 8


# -- scores ------------------------------------------------------------------------------------------


def test_video_logits_are_the_mean_of_window_logits_each_equal_to_the_model(rgb_weights, rgb_model_random):
    frames = moving_shapes(12, 224, 224)
    result = classify(frames, weights=rgb_weights, clip_frames=9, stride=3, top_k=400)

    assert [(w.start, w.end) for w in result.windows] == [(0, 9), (3, 12)]
    for window in result.windows:
        expected = _reference_logits(rgb_model_random, frames[window.start : window.end])[0]
        assert_close(window.logits, expected, **LOGIT_TOL)
    assert_close(result.logits, np.mean([w.logits for w in result.windows], axis=0), rtol=1e-6, atol=1e-6)
    probs = np.array([p.prob for p in sorted(result.top, key=lambda p: p.index)])
    expected_probs = torch.softmax(torch.from_numpy(result.logits).double(), 0).numpy()
    assert_close(probs, expected_probs, rtol=1e-9, atol=1e-12)
    assert [p.prob for p in result.top] == sorted((p.prob for p in result.top), reverse=True)
    assert result.frames == 12 and result.fps == 25.0 and result.windows[1].end_s == pytest.approx(12 / 25)


def test_window_time_logits_average_to_the_window_logits(rgb_weights):
    result = classify(moving_shapes(17, 224, 224), weights=rgb_weights)
    (window,) = result.windows
    assert window.time_logits.shape == (2, 400)  # 17 frames -> Mixed_5c has 3 steps -> 2 after the 2-step pool
    assert_close(window.time_logits.mean(axis=0), window.logits, rtol=1e-6, atol=1e-6)
    assert window.time_points().tolist() == [8, 16]


@pytest.mark.slow
def test_three_crops_average_the_logits_of_left_centre_right(rgb_weights, rgb_model_random):
    frames = moving_shapes(9, 224, 300)
    result = classify(frames, weights=rgb_weights, crop="three")
    views = np.stack(crops(frames, "three", 224))  # 3 x T x 224 x 224 x 3
    with torch.no_grad():
        expected = rgb_model_random(rgb_to_model_input(views)).mean(dim=0).numpy()
    assert_close(result.logits, expected, **LOGIT_TOL)


def test_short_clip_is_looped_to_the_minimum_length(rgb_weights, rgb_model_random):
    frames = moving_shapes(4, 224, 224)
    result = classify(frames, weights=rgb_weights)
    looped = frames[np.arange(9) % 4]
    assert_close(result.logits, _reference_logits(rgb_model_random, looped)[0], **LOGIT_TOL)
    assert result.frames == 4


def test_bfloat16_gives_float32_logits_close_to_float32_or_a_clear_error(rgb_weights, rgb_model_random):
    model = cached_model(rgb_weights, "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    frames = moving_shapes(9, 224, 224)
    try:
        result = classify(frames, weights=rgb_weights, dtype=torch.bfloat16)
    except I3DError as exc:  # PyTorch 2.13 has no CPU bfloat16 avg_pool3d (the logits head)
        assert "use --dtype float32" in str(exc) and "\n" not in str(exc)
        return
    assert result.logits.dtype == np.float32
    expected = _reference_logits(rgb_model_random, frames)[0]
    # bfloat16 keeps 8 bits of mantissa; through 60 layers the logits stay within a few % of their range.
    assert_close(result.logits, expected, rtol=0, atol=0.05 * float(np.abs(expected).max()))


def test_classify_reuses_the_loaded_model(rgb_weights, monkeypatch):
    import i3d_torch.weights.registry

    first = cached_model(rgb_weights, "cpu", torch.float32)
    monkeypatch.setattr(i3d_torch.weights.registry, "load_model", lambda *a, **k: pytest.fail("model loaded twice"))
    assert cached_model(rgb_weights, "cpu", "float32") is first


def test_bad_array_input_is_a_clear_error(rgb_weights):
    with pytest.raises(I3DError, match=r"uint8 \[T, H, W, 3\]"):
        classify(np.zeros((9, 224, 224), np.float32), weights=rgb_weights)


# -- optical flow ------------------------------------------------------------------------------------


def test_tvl1_flow_measures_a_shift_in_pixels_along_x():
    from i3d_torch.core.flow import video_flow

    rng = np.random.default_rng(0)
    texture = (rng.random((48, 48)) * 255).astype(np.uint8)
    texture = np.repeat(np.repeat(texture, 2, 0), 2, 1)[:64, :64]  # blobs of 2x2 px: trackable
    frames = np.stack([np.roll(texture, s, axis=1) for s in (0, 2, 4)])[..., None].repeat(3, -1)
    flow = video_flow(frames)
    assert flow.shape == (2, 64, 64, 2)  # T frames -> T - 1 flows
    inner = flow[:, 8:-8, 8:-8]
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.25)  # u: +2 px to the right
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.25)


def test_flow_window_carries_the_flows_between_its_own_frames():
    from i3d_torch.core.flow import video_flow

    frames = moving_shapes(5, 40, 48)
    settings = ClipSettings(short_side=40, crop_size=32, streams=("flow",), min_frames={"flow": 1})
    items = list(_with_flow(iter(frames)))
    ((start, end, window),) = [w for w in iter_windows(items, Windowing(3, 2))][1:2]
    assert (start, end) == (2, 5)
    inputs = window_inputs([f for f, _ in window], [fl for _, fl in window[1:]], settings, None, "clip")
    expected = flow_to_model_input(crops(video_flow(frames)[2:4], "center", 32)[0])
    assert inputs["flow"].shape == (1, 2, 2, 32, 32)
    assert_close(inputs["flow"], expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_flow_stream_logits_are_added_to_rgb_logits(tmp_path, rgb_weights, rgb_model_random):
    from i3d_torch.core.flow import video_flow

    flow_model = _random_model(in_channels=2, seed=1)
    flow_weights = tmp_path / "random_flow.safetensors"
    save_model(flow_model, flow_weights, categories=label_list("kinetics400"), name="random_flow", modality="flow")
    frames = moving_shapes(3, 224, 224)  # TV-L1 at 224x224 costs seconds per frame pair on a CPU

    result = classify(frames, weights=rgb_weights, flow=True, flow_weights=flow_weights)
    flows = video_flow(frames)[np.arange(9) % 2]  # 2 flows looped to the minimum 9
    with torch.no_grad():
        expected = rgb_model_random(rgb_to_model_input(frames[np.arange(9) % 3])) + flow_model(
            flow_to_model_input(flows)
        )
    assert_close(result.logits, expected[0].numpy(), **LOGIT_TOL)
    assert result.weights == {"rgb": "random_rgb", "flow": "random_flow"}


def test_missing_flow_weights_error_tells_how_to_convert(tmp_path, rgb_weights, run_cli):
    if get_weights("flow_kinetics400").is_present():
        pytest.skip("flow_kinetics400 is converted on this machine")
    video = write_video(tmp_path / "clip.mp4", moving_shapes(3, 32, 32), 25)
    proc = run_cli("predict", str(video), "--weights", str(rgb_weights), "--flow", "--quiet")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "i3d-torch convert" in proc.stderr and "flow_kinetics400" in proc.stderr


# -- command line ------------------------------------------------------------------------------------


def test_bad_files_are_reported_one_line_each_and_the_rest_still_processed(tmp_path, rgb_weights, run_cli):
    good = write_video(tmp_path / "good.mp4", moving_shapes(10, 64, 80), 25)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    missing = tmp_path / "missing.mp4"

    proc = run_cli(
        "predict", str(broken), str(good), str(missing), "--weights", str(rgb_weights), "--json", "--top", "3"
    )

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 2
    assert str(broken) in errors[0] and str(missing) in errors[1]
    (line,) = proc.stdout.splitlines()
    record = json.loads(line)
    assert record["video"] == str(good) and record["frames"] == 10 and len(record["top"]) == 3
    assert set(record["top"][0]) == {"label", "index", "prob", "logit"}
    assert set(record["timing"]) == {"decode_s", "model_s", "wait_s"} and record["timing"]["model_s"] > 0
    assert "2 of 3 video(s) failed" in proc.stderr


def test_per_window_table_lists_every_window(tmp_path, rgb_weights, run_cli):
    video = write_video(tmp_path / "clip.mp4", moving_shapes(14, 64, 80), 25)
    proc = run_cli(
        "predict", str(video), "--weights", str(rgb_weights), "--clip-frames", "9", "--stride", "5", "--per-window"
    )
    assert proc.returncode == 0, proc.stderr
    assert "clip.mp4  (14 frames at 25 fps, 2 windows, 0.56 s)" in proc.stdout
    assert "frames 0-9:" in proc.stdout and "frames 5-14:" in proc.stdout


def test_timeline_averages_overlapping_window_steps_at_the_same_frame_then_softmaxes():
    from i3d_torch.apps.classify import Classification, WindowResult
    from i3d_torch.apps.timeline import timeline

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 3, 5))  # 3 steps x 5 classes per window
    windows = [
        WindowResult(0, 24, 0.0, 0.96, first.mean(0), first),  # steps at frames 8, 16, 24
        WindowResult(8, 32, 0.32, 1.28, second.mean(0), second),  # steps at frames 16, 24, 32
    ]
    result = Classification("v", 32, 25.0, [], np.zeros(5, np.float32), windows, [f"c{i}" for i in range(5)])

    seconds, probs = timeline(result)

    assert_close(seconds, np.array([8, 16, 24, 32]) / 25.0, rtol=0, atol=1e-12)
    expected = np.stack([first[0], (first[1] + second[0]) / 2, (first[2] + second[1]) / 2, second[2]])
    assert_close(probs, torch.softmax(torch.from_numpy(expected), dim=-1).numpy(), rtol=1e-12, atol=1e-12)


def test_plot_names_one_file_per_video():
    from i3d_torch.apps.plotting import plot_paths

    assert plot_paths("out/t.png", ["a/x.mp4"]) == [Path("out/t.png")]
    assert plot_paths("out/t.png", ["a/x.mp4", "b/x.mp4"]) == [Path("out/t.0.x.mp4.png"), Path("out/t.1.x.mp4.png")]


@pytest.mark.slow
def test_cricket_gif_is_playing_cricket_with_json_and_plot(tmp_path, rgb_model, run_cli):
    plot = tmp_path / "timeline.png"
    proc = run_cli("predict", str(CRICKET_GIF), "--json", "--plot", str(plot), "--top", "5")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["top"][0]["label"] == "playing cricket"
    assert record["top"][0]["prob"] > 0.9
    assert record["frames"] == 79 and len(record["windows"]) == 1

    from PIL import Image

    with Image.open(plot) as image:
        image.verify()
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 300
