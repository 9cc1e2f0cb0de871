"""BatchNorm folding, TF-SAME max-pools, and the deployment exports (of plain and CPU-optimized models).

Every comparison is against the plain modules (conv, BatchNorm, ReLU, with the CPU engine switched off) of
the same model, whose TF parity is proven elsewhere; the bound is the project's 1e-4 on outputs. The CPU
engine's own tests are in test_cpu_backend.py.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from models import random_clip as clip
from models import random_model

from i3d_torch.apps.export import OnnxRunner, export_onnx, prepare_for_export, save_program
from i3d_torch.backends import cpu
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import MAX_POOLS, BatchNorm3dNoScale, InceptionI3d, MaxPool3dSame, Unit3D, _same_pad_arg

ATOL = 1e-4




def plain_output(model: InceptionI3d, x: torch.Tensor) -> torch.Tensor:
    with cpu.flags(enabled=False), torch.inference_mode():
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


# -- folding -----------------------------------------------------------------------------------------


def test_fuse_keeps_outputs_within_1e4_of_the_unfused_model():
    model = random_model(strict_tf_pooling=False)
    x = clip((1, 3, 16, 64, 64))
    expected = plain_output(model, x)
    fused = copy.deepcopy(model).fuse()
    assert not any(isinstance(m, BatchNorm3dNoScale) for m in fused.modules())
    torch.testing.assert_close(plain_output(fused, x), expected, rtol=0, atol=ATOL)


def test_batchnorm_is_folded_by_the_one_helper_for_every_user():
    model = random_model("Mixed_3b")
    unit = model.Mixed_3b.Branch_1.Conv3d_0b_3x3
    weight, bias = unit.folded_weight_and_bias()
    x = clip((1, 96, 4, 8, 8))
    with torch.no_grad():
        direct = torch.relu(torch.nn.functional.conv3d(x, weight, bias, padding=1))
        torch.testing.assert_close(direct, unit(x), rtol=0, atol=1e-5)
    prepared = prepare_for_export(cpu.optimize(copy.deepcopy(model)))  # export folds through fuse()
    folded = prepared.Mixed_3b.Branch_1.Conv3d_0b_3x3.conv_3d
    torch.testing.assert_close(folded.weight, weight, rtol=0, atol=0)
    torch.testing.assert_close(folded.bias, bias, rtol=0, atol=0)
    assert all(isinstance(m.batch_norm, torch.nn.Identity) for m in prepared.modules() if isinstance(m, Unit3D))


def test_fuse_refuses_a_model_in_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        random_model().train().fuse()


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
def test_saved_torch_export_program_of_an_optimized_model_runs_without_the_model_code(tmp_path):
    model = random_model("Mixed_4b")
    # load_model's models carry the CPU engine; export traces the plain conv, BatchNorm and ReLU graph.
    path = save_program(cpu.optimize(copy.deepcopy(model)), tmp_path / "i3d.pt2", frames=8, height=48, width=48)
    program = torch.export.load(path)
    x = clip((1, 3, 8, 48, 48))
    with torch.no_grad():
        got = program.module()(x)
    torch.testing.assert_close(got, plain_output(model, x), rtol=0, atol=ATOL)
