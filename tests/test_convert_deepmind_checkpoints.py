"""``i3d-torch convert`` on DeepMind's five TF1 checkpoint layouts, and its refusals.

DeepMind's checkpoints themselves are not available here, but their index files are (shared data): exact
names, dtypes and shapes, including the optimizer ``Momentum`` slots and, in the Kinetics-600 one, the
missing ``RGB/inception_i3d/`` prefix and BatchNorm vectors shaped ``[1, 1, 1, 1, C]``. Each test writes a
real TF checkpoint with exactly that layout (random values), converts it through the CLI, and checks the
result against the TF reference restored by TensorFlow from the same checkpoint.

The negative tests need no shared data: they build a checkpoint from the graph's own name table.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow", reason="writing and reading TF checkpoints needs TensorFlow")

from i3d_torch.verification.parity import LOGITS_ATOL, compare_endpoints  # noqa: E402
from i3d_torch.verification.tf_reference import (  # noqa: E402
    TFInceptionI3d,
    random_variables,
    scope_prefix,
    variable_shapes,
    write_tf1_checkpoint,
)

# layout -> (modality, classes, scope of the names; None: no prefix at all)
LAYOUTS = {
    "rgb_imagenet": ("rgb", 400, "RGB"),
    "rgb_scratch": ("rgb", 400, "RGB"),
    "flow_imagenet": ("flow", 400, "Flow"),
    "flow_scratch": ("flow", 400, "Flow"),
    "rgb_scratch_kin600": ("rgb", 600, None),
}


def index_layout(shared_data: Path, layout: str):
    """{name: (shape, dtype)} of a DeepMind checkpoint, read by TensorFlow from its index file."""
    reader = tf.train.load_checkpoint(str(shared_data / "deepmind_checkpoint_index" / f"{layout}.ckpt"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return {name: (tuple(shapes[name]), dtypes[name].as_numpy_dtype) for name in shapes}


def checkpoint_like(layout_map, scope, seed):
    """Random tensors with exactly the names, shapes and dtypes of ``layout_map``: model variables with
    realistic scales (so the parity check means something), optimizer slots with noise."""
    table = {name: shape for name, (shape, _) in layout_map.items()}
    lead = scope_prefix(scope)
    stem = table[lead + "Conv3d_1a_7x7/conv_3d/w"]
    head = table[lead + "Logits/Conv3d_0c_1x1/conv_3d/w"]
    model_values = random_variables(seed, num_classes=head[4], in_channels=stem[3])
    rng = np.random.default_rng(seed + 1000)
    tensors = {}
    for name, (shape, dtype) in layout_map.items():
        relative = name[len(lead) :]
        if name.startswith(lead) and relative in model_values:
            tensors[name] = model_values[relative].reshape(shape).astype(dtype)
        else:  # Momentum slots, global_step: training state the converter must skip
            tensors[name] = rng.normal(0.0, 0.01, shape).astype(dtype)
    return tensors


def run_convert(run_cli, prefix: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("convert", prefix, "--out", out, *extra)


def safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_deepmind_checkpoint_layout_converts_to_a_model_equal_to_tf(layout, shared_data, tmp_path, run_cli):
    import i3d_torch

    modality, num_classes, scope = LAYOUTS[layout]
    layout_map = index_layout(shared_data, layout)
    prefix = write_tf1_checkpoint(checkpoint_like(layout_map, scope, seed=11), tmp_path / layout / "model.ckpt")
    # What we wrote is DeepMind's layout, name for name, shape for shape, dtype for dtype.
    written = tf.train.load_checkpoint(str(prefix))
    assert {n: tuple(s) for n, s in written.get_variable_to_shape_map().items()} == {
        n: s for n, (s, _) in layout_map.items()
    }
    assert {n: d.as_numpy_dtype for n, d in written.get_variable_to_dtype_map().items()} == {
        n: d for n, (_, d) in layout_map.items()
    }

    out = tmp_path / f"{layout}.safetensors"
    result = run_convert(run_cli, prefix, out, "--name", layout, "--verify-tf")  # the converter's own TF gate too
    assert result.returncode == 0, result.stderr
    slots = [n for n in layout_map if n.endswith("/Momentum")]
    if slots:  # the optimizer slots are skipped, and said to be
        assert "skipped" in result.stderr and "Momentum" in result.stderr

    metadata = safetensors_metadata(out)
    assert metadata["modality"] == modality
    assert metadata["num_classes"] == str(num_classes)
    assert metadata["label_set"] == f"kinetics{num_classes}"
    assert metadata["name"] == layout
    assert metadata["source_kind"] == "tf_checkpoint"
    assert metadata["source_scope"] == (scope or "")
    assert metadata["source"] == f"{layout}/model.ckpt"
    assert len(metadata["source_sha256"]) == 64

    model = i3d_torch.load_model(out)
    model.check_values = False
    assert (model.in_channels, model.num_classes) == (3 if modality == "rgb" else 2, num_classes)
    reference = TFInceptionI3d.from_checkpoint(prefix)  # restored by TensorFlow, Momentum slots left out
    assert reference.scope == scope
    clip = torch.rand(1, model.in_channels, 9, 193, 193, generator=torch.Generator().manual_seed(11)) * 2 - 1
    rows = {r.endpoint: r for r in compare_endpoints(model, reference, clip)}
    assert all(r.ok for r in rows.values()), [(r.endpoint, r.max_abs_diff, r.bound) for r in rows.values() if not r.ok]
    assert rows["Logits"].max_abs_diff <= LOGITS_ATOL
    assert rows["Logits"].shape == (1, num_classes)


# ---------------------------------------------------------------------------------------------------
# Refusals: no shared data needed
# ---------------------------------------------------------------------------------------------------

LEAD = "RGB/inception_i3d/"
MISSING = LEAD + "Mixed_4e/Branch_3/Conv3d_0b_1x1/batch_norm/moving_mean"
UNKNOWN = LEAD + "Mixed_6a/Branch_0/Conv3d_0a_1x1/conv_3d/w"
MISSHAPED = LEAD + "Mixed_3c/Branch_1/Conv3d_0b_3x3/conv_3d/w"


def spoil(tensors, problem):
    if problem in ("missing", "all"):
        del tensors[MISSING]
    if problem in ("unknown", "all"):
        tensors[UNKNOWN] = np.zeros((1, 1, 1, 1024, 8), np.float32)
    if problem in ("misshaped", "all"):
        tensors[MISSHAPED] = np.zeros((3, 3, 3, 128, 191), np.float32)
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "unknown", "misshaped", "all"])
def test_converter_refuses_a_checkpoint_that_does_not_fit_and_writes_nothing(problem, tmp_path, run_cli):
    good = {LEAD + name: value for name, value in random_variables(seed=12).items()}
    assert set(good) == {LEAD + name for name in variable_shapes()}
    prefix = write_tf1_checkpoint(spoil(good, problem), tmp_path / "ckpt" / "model.ckpt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_convert(run_cli, prefix, out_dir / "converted.safetensors")

    assert result.returncode != 0
    assert list(out_dir.iterdir()) == [], "the converter left a file behind"
    assert "Traceback" not in result.stderr
    # TensorFlow's own start-up logging may precede it; the converter's verdict is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("i3d-torch convert: error:")]
    assert len(errors) == 1, result.stderr
    message = errors[0]
    offenders = {
        "missing": [MISSING],
        "unknown": [UNKNOWN],
        "misshaped": [MISSHAPED],
        "all": [MISSING, UNKNOWN, MISSHAPED],
    }[problem]
    for name in offenders:
        assert name[len(LEAD) :] in message, f"{name} not named in: {message}"
