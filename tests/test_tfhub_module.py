"""TF-Hub modules: the real ``deepmind/i3d-kinetics-400`` module when one is at hand, and a module exported
from the TF reference, which needs no network.

Set ``I3D_TFHUB_MODULE`` to a handle (``https://tfhub.dev/deepmind/i3d-kinetics-400/1``) or a downloaded
module directory to run the real-module tests; they settle the input-range question of docs/parity.md
directly, by matching the module fed [-1, 1] to PyTorch within 1e-4.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow", reason="TF-Hub modules need TensorFlow (pip install 'i3d-torch[tf]')")

from test_tf_reference_parity import published_rgb_scratch  # noqa: E402

from i3d_torch.core.transforms import rgb_to_model_input  # noqa: E402
from i3d_torch.verification.parity import LOGITS_ATOL, compare_logits, load_tfhub_module, tfhub_logits_function  # noqa: E402
from i3d_torch.verification.tf_reference import TFInceptionI3d, random_variables  # noqa: E402
from i3d_torch.weights.convert import convert, read_source  # noqa: E402


def small_clip(in_channels=3, seed=0):
    """The smallest clip DeepMind's head accepts: 9 frames of 193 x 193."""
    return torch.rand(1, in_channels, 9, 193, 193, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------
# The real TF-Hub module (opt-in)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfhub_logits():
    handle = os.environ.get("I3D_TFHUB_MODULE")
    if not handle:
        pytest.skip("set I3D_TFHUB_MODULE to the i3d-kinetics-400 TF-Hub handle or a downloaded module directory")
    return tfhub_logits_function(handle, input_range="symmetric")


@pytest.fixture(scope="module")
def tfhub_cricket(tfhub_logits, rgb_model, cricket_rgb_frames):
    """(PyTorch vs module row, module logits) on the cricket GIF in [-1, 1]."""
    clip = rgb_to_model_input(cricket_rgb_frames)
    row = compare_logits(rgb_model, tfhub_logits, clip)
    return row, tfhub_logits(clip.permute(0, 2, 3, 4, 1).numpy())[0]


@pytest.mark.slow
def test_real_tfhub_module_fed_minus1_1_equals_pytorch_on_the_cricket_clip(tfhub_cricket):
    row, _ = tfhub_cricket
    assert row.max_abs_diff <= LOGITS_ATOL, f"max|diff| {row.max_abs_diff:.3g} (rel {row.max_rel_diff:.3g})"


@pytest.mark.slow
def test_real_tfhub_module_gives_deepminds_published_top5(tfhub_cricket, rgb_model, shared_data):
    _, logits = tfhub_cricket
    labels = rgb_model.weights_info.categories
    assert [labels[i] for i in np.argsort(-logits)[:5]] == [
        label for label, _, _ in published_rgb_scratch(shared_data)[:5]
    ]


# ---------------------------------------------------------------------------------------------------
# A module exported from the TF reference
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(variables, module directory, converted safetensors) for random RGB weights."""
    root = tmp_path_factory.mktemp("hub")
    variables = random_variables(seed=21)
    module = TFInceptionI3d(variables).export_hub_module(root / "i3d-module")
    converted = convert(module, root / "converted.safetensors", name="from_hub", log=lambda _: None)
    return variables, module, converted


def test_exported_module_is_a_savedmodel_keyed_by_deepmind_names(exported):
    variables, module, _ = exported
    # The weights live once, in variables/ (50 MB); the graph itself is small.
    assert (module / "saved_model.pb").stat().st_size < 5_000_000
    keys = tf.train.load_checkpoint(str(module / "variables" / "variables")).get_variable_to_shape_map()
    assert set(keys) == {"RGB/inception_i3d/" + name for name in variables}
    signature = load_tfhub_module(str(module)).signatures["default"]
    assert list(signature.structured_input_signature[1]) == ["default"]
    assert list(signature.structured_outputs) == ["default"]
    assert signature.structured_outputs["default"].name == "RGB/inception_i3d/Mean:0"


def test_convert_reads_the_module_directory_as_tfhub_with_every_value_exact(exported):
    variables, module, _ = exported
    source = read_source(module)
    assert (source.kind, source.scope, source.modality, source.num_classes) == ("tfhub", "RGB", "rgb", 400)
    assert set(source.variables) == set(variables)
    for name, value in variables.items():
        np.testing.assert_array_equal(source.variables[name], value, err_msg=name)


def test_model_converted_from_the_module_equals_the_modules_logits(exported):
    import i3d_torch

    _, module, converted = exported
    model = i3d_torch.load_model(converted)
    model.check_values = False
    assert model.weights_info.source["source_kind"] == "tfhub"
    row = compare_logits(model, tfhub_logits_function(str(module)), small_clip(seed=22))
    assert row.max_abs_diff <= LOGITS_ATOL, row


@pytest.mark.slow
def test_parity_cli_passes_against_the_module_and_against_the_tf_reference(exported, run_cli):
    _, module, converted = exported
    hub_run = run_cli(
        "parity",
        "--model",
        str(converted),
        "--tf-module",
        str(module),
        "--frames",
        "9",
        "--size",
        "193",
        "193",
        "--json",
    )
    assert hub_run.returncode == 0, hub_run.stderr
    report = json.loads(hub_run.stdout)
    assert report["ok"] and [r["endpoint"] for r in report["rows"]] == ["Logits"]
    assert report["rows"][0]["max_abs_diff"] <= LOGITS_ATOL

    ref_run = run_cli(
        "parity", "--model", str(converted), "--source", str(module), "--frames", "9", "--size", "193", "193"
    )
    assert ref_run.returncode == 0, ref_run.stderr
    assert "Mixed_5c" in ref_run.stdout and "Predictions" in ref_run.stdout and " NO" not in ref_run.stdout


@pytest.mark.slow
def test_parity_cli_exits_1_naming_the_endpoints_when_the_model_differs(exported, tmp_path, run_cli):
    import i3d_torch
    from i3d_torch.weights.registry import save_model

    _, module, converted = exported
    model = i3d_torch.load_model(converted)
    with torch.no_grad():
        model.Mixed_5b.Branch_0.Conv3d_0a_1x1.batch_norm.bias.add_(0.05)
    spoiled = save_model(
        model, tmp_path / "spoiled.safetensors", categories=model.weights_info.categories, name="spoiled"
    )
    result = run_cli(
        "parity", "--model", str(spoiled), "--source", str(module), "--frames", "9", "--size", "193", "193"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("i3d-torch parity: FAILED")]
    assert len(failed) == 1 and "Mixed_5b" in failed[0] and "Logits" in failed[0] and "Mixed_4f" not in failed[0]
