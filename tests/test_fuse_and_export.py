"""BatchNorm folding, the fused oneDNN inference path, TF-SAME max-pools, and the deployment exports.

Every comparison is against the plain modules (conv, BatchNorm, ReLU; ``ONEDNN_INFERENCE`` off) of the
same model, whose TF parity is proven elsewhere; the bound is the project's 1e-4 on outputs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from i3d_torch.core import model as model_module
from i3d_torch.core.errors import InputError
from i3d_torch.apps.export import OnnxRunner, export_onnx, save_program
from i3d_torch.core.model import MAX_POOLS, BatchNorm3dNoScale, InceptionI3d, MaxPool3dSame, _same_pad_arg

ATOL = 1e-4


def random_model(final_endpoint: str = "Logits", seed: int = 0, **kwargs) -> InceptionI3d:
    """Random weights with non-trivial BatchNorm statistics, so that folding has something to fold."""
    torch.manual_seed(seed)
    model = InceptionI3d(final_endpoint=final_endpoint, **kwargs).eval()
    for unit in model.modules():
        if isinstance(unit, BatchNorm3dNoScale):
            unit.running_mean.uniform_(-0.5, 0.5)
            unit.running_var.uniform_(0.5, 2.0)
            unit.bias.data.uniform_(-0.2, 0.2)
    model.check_values = False
    return model


def clip(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@contextlib.contextmanager
def plain_ops():
    saved = model_module.ONEDNN_INFERENCE
    model_module.ONEDNN_INFERENCE = False
    try:
        yield
    finally:
        model_module.ONEDNN_INFERENCE = saved


def plain_output(model: InceptionI3d, x: torch.Tensor) -> torch.Tensor:
    with plain_ops(), torch.inference_mode():
        return model(x)


# -- max-pools ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,stride", list(MAX_POOLS.values()) + [((3, 3, 3), (1, 1, 1))])
def test_maxpool_ceil_mode_equals_tf_same_padding_for_every_size(kernel, stride):
    pool = MaxPool3dSame(kernel, stride)
    for n in range(1, 20):
        x = torch.randn(1, 2, n, n + 1, max(1, n - 1), generator=torch.Generator().manual_seed(n))
        padded = F.pad(x, _same_pad_arg(x.shape[-3:], kernel, stride), value=float("-inf"))
        expected = F.max_pool3d(padded, kernel, stride)
        torch.testing.assert_close(pool(x), expected, rtol=0, atol=0)


# -- folding and the oneDNN inference path ----------------------------------------------------------


@pytest.mark.skipif(not model_module.ONEDNN_INFERENCE, reason="this PyTorch build has no oneDNN fused convolution")
@pytest.mark.parametrize("shape", [(1, 3, 8, 64, 64), (2, 3, 7, 45, 51)])
def test_onednn_inference_path_matches_plain_modules_on_every_endpoint(shape):
    model = random_model("Mixed_5c")
    x = clip(shape)
    names = ["Conv3d_1a_7x7", "MaxPool3d_3a_3x3", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4f", "Mixed_5c"]
    with plain_ops(), torch.inference_mode():
        expected = model.extract_endpoints(x, names)
    with torch.inference_mode():
        got = model.extract_endpoints(x, names)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=ATOL, msg=name)
        assert got[name].is_contiguous(), f"{name} is handed out in a non-default memory layout"


def test_default_inference_logits_within_1e4_of_plain_modules():
    model = random_model(strict_tf_pooling=False)
    x = clip((1, 3, 16, 64, 64))
    with torch.inference_mode():
        logits = model(x)
    torch.testing.assert_close(logits, plain_output(model, x), rtol=0, atol=ATOL)


def test_fuse_keeps_outputs_within_1e4_of_the_unfused_model():
    model = random_model(strict_tf_pooling=False)
    x = clip((1, 3, 16, 64, 64))
    expected = plain_output(model, x)
    fused = copy.deepcopy(model).fuse()
    assert not any(isinstance(m, BatchNorm3dNoScale) for m in fused.modules())
    torch.testing.assert_close(plain_output(fused, x), expected, rtol=0, atol=ATOL)
    with torch.inference_mode():  # the fused model on the oneDNN path too
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=ATOL)


def test_fuse_refuses_a_model_in_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        random_model().train().fuse()


def test_inference_weights_follow_in_place_parameter_changes():
    model = random_model("Mixed_3b")
    x = clip((1, 3, 4, 32, 32))
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():  # what an optimizer step or load_state_dict does: in-place updates
        model.Conv3d_1a_7x7.conv_3d.weight.mul_(1.5)
        model.Mixed_3b.Branch_0.Conv3d_0a_1x1.batch_norm.running_mean.add_(0.25)
    with torch.inference_mode():
        after = model(x)
    assert (after - before).abs().max() > 1e-2, "the cached folded weights went stale"
    torch.testing.assert_close(after, plain_output(model, x), rtol=0, atol=ATOL)


def test_model_built_under_inference_mode_follows_in_place_changes_too():
    # Parameters created under inference_mode have no version counter; the path must not cache stale weights.
    x = clip((1, 3, 4, 32, 32))
    with torch.inference_mode():
        model = random_model("Mixed_3b").to(torch.float64).to(torch.float32)
        assert model.Conv3d_1a_7x7.conv_3d.weight.is_inference()
        before = model(x)
        model.Conv3d_1a_7x7.conv_3d.weight.mul_(1.5)
        after = model(x)
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, plain_output(model, x), rtol=0, atol=ATOL)


def test_training_mode_runs_batchnorm_and_reaches_every_parameter():
    model = random_model("Mixed_3b").train()
    x = clip((2, 3, 4, 32, 32))
    model(x).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert model.Conv3d_1a_7x7.batch_norm.num_batches_tracked.item() == 1  # BN ran in training mode


def test_state_dict_keys_unchanged_by_inference():
    model = random_model("Mixed_3b")
    keys = list(model.state_dict())
    with torch.inference_mode():
        model(clip((1, 3, 4, 32, 32)))
    assert list(model.state_dict()) == keys
    copy.deepcopy(model)  # no oneDNN opaque tensors inside the module


# -- exports ------------------------------------------------------------------------------------------

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime/onnxscript not installed (pip install 'i3d-torch[export]')",
)


@pytest.mark.slow
@needs_onnxruntime
def test_onnx_static_export_matches_pytorch_at_the_smallest_valid_clip(tmp_path):
    model = random_model()
    path = export_onnx(model, tmp_path / "i3d.onnx", frames=9, height=224, width=224)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i3d.onnx"], "a temporary file was left behind"
    x = clip((1, 3, 9, 224, 224))
    torch.testing.assert_close(OnnxRunner(path, threads=2)(x), plain_output(model, x), rtol=0, atol=ATOL)


@pytest.mark.slow
@needs_onnxruntime
def test_onnx_dynamic_export_is_exact_at_two_clip_lengths_and_batch_sizes(tmp_path):
    # Up to Mixed_5c so that small frames suffice: every SAME padding of the network is exercised.
    model = random_model("Mixed_5c")
    runner = OnnxRunner(export_onnx(model, tmp_path / "dyn.onnx", frames=16, height=64, width=96, dynamic=True))
    for shape in [(1, 3, 16, 64, 96), (2, 3, 24, 64, 96)]:
        x = clip(shape)
        torch.testing.assert_close(runner(x), plain_output(model, x), rtol=0, atol=ATOL, msg=str(shape))
    with pytest.raises(InputError, match="does not fit"):
        runner(clip((1, 3, 16, 64, 64)))


@pytest.mark.slow
@needs_onnxruntime
def test_onnx_static_export_is_exact_at_odd_sizes(tmp_path):
    # Odd T, H, W: asymmetric TF padding in every strided layer.
    model = random_model("Mixed_5c")
    x = clip((1, 3, 11, 67, 45))
    runner = OnnxRunner(export_onnx(model, tmp_path / "odd.onnx", frames=11, height=67, width=45))
    torch.testing.assert_close(runner(x), plain_output(model, x), rtol=0, atol=ATOL)


def test_dynamic_export_refuses_a_clip_length_that_is_not_a_multiple_of_8(tmp_path):
    with pytest.raises(InputError, match="multiple of 8"):
        export_onnx(random_model(), tmp_path / "x.onnx", frames=20, dynamic=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_saved_torch_export_program_runs_without_the_model_code(tmp_path):
    model = random_model("Mixed_4b")
    path = save_program(model, tmp_path / "i3d.pt2", frames=8, height=48, width=48)
    program = torch.export.load(path)
    x = clip((1, 3, 8, 48, 48))
    with torch.no_grad():
        got = program.module()(x)
    torch.testing.assert_close(got, plain_output(model, x), rtol=0, atol=ATOL)
