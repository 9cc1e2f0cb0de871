"""Temporal Winograd F(4, 3) of the CPU inference path, and the separable stride-1 max-pool.

Yardsticks: the algebraic identity of the F(4, 3) matrices in float64, and float64 direct convolutions and
max-pools; the model-level bound is the project's 2e-5 x peak on endpoints.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from i3d_torch import model as model_module
from i3d_torch.model import InceptionI3d, MaxPool3dSame, _separable_max_pool_3x3x3
from i3d_torch.winograd import TemporalWinogradConv, transform_matrices, winograd_pays_off

needs_onednn = pytest.mark.skipif(
    not model_module.ONEDNN_INFERENCE, reason="this PyTorch build has no oneDNN fused convolution"
)


def test_f43_matrices_compute_four_outputs_of_a_three_tap_correlation():
    input_transform, kernel_transform, output_transform = transform_matrices()
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        taps = torch.randn(3, dtype=torch.float64, generator=generator)
        frames = torch.randn(6, dtype=torch.float64, generator=generator)
        winograd = output_transform @ ((kernel_transform @ taps) * (input_transform @ frames))
        direct = torch.stack([(taps * frames[i : i + 3]).sum() for i in range(4)])
        torch.testing.assert_close(winograd, direct, rtol=0, atol=1e-12)


def test_winograd_is_used_only_where_it_saves_a_third_of_the_multiplications():
    assert [t for t in range(1, 14) if winograd_pays_off(t)] == [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]


@needs_onednn
@pytest.mark.parametrize(
    "batch,frames,height,width,bias",
    [(1, 3, 5, 7, True), (1, 4, 8, 8, True), (2, 6, 9, 5, False), (1, 13, 6, 11, True), (2, 32, 7, 7, True)],
)
def test_temporal_winograd_equals_a_same_padded_conv_plus_relu(batch, frames, height, width, bias):
    generator = torch.Generator().manual_seed(frames)
    in_channels, out_channels = 24, 40
    weight = torch.randn(out_channels, in_channels, 3, 3, 3, generator=generator) * (2 / (27 * in_channels)) ** 0.5
    offset = torch.randn(out_channels, generator=generator) if bias else None
    x = torch.randn(batch, in_channels, frames, height, width, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = F.relu(F.conv3d(x.double(), weight.double(), None if offset is None else offset.double(), padding=1))
    with torch.inference_mode():
        got = TemporalWinogradConv(weight, offset, tuple(x.shape))(x)
    assert got.shape == expected.shape
    # Direct float32 convolutions land about 2e-6 x peak from float64 here; Winograd about twice that.
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 2e-5, f"{error:.2e} of the output's peak"


@needs_onednn
def test_temporal_winograd_refuses_another_input_shape():
    plan = TemporalWinogradConv(torch.randn(4, 3, 3, 3, 3), None, (1, 3, 8, 5, 5))
    with pytest.raises(ValueError, match="built for input"):
        plan(torch.randn(1, 3, 9, 5, 5).contiguous(memory_format=torch.channels_last_3d))


@needs_onednn
def test_model_inference_takes_winograd_and_stays_within_the_endpoint_bound():
    torch.manual_seed(0)
    model = InceptionI3d(final_endpoint="Mixed_4c").eval()
    model.check_values = False
    x = (torch.rand(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    names = ["Conv3d_2c_3x3", "Mixed_3c", "Mixed_4c"]
    with torch.inference_mode():
        expected = model.double().extract_endpoints(x, names)  # float64: the plain modules
        got = model.float().extract_endpoints(x.float(), names)
    plans = model_module._ONEDNN_WEIGHTS
    assert isinstance(plans[model.Conv3d_2c_3x3][1], TemporalWinogradConv)  # T = 8 there
    assert isinstance(plans[model.Mixed_4c.Branch_1.Conv3d_0b_3x3][1], TemporalWinogradConv)  # T = 4
    for name in names:
        error = (got[name].double() - expected[name]).abs().max() / expected[name].abs().max()
        assert error < 2e-5, f"{name}: {error:.2e} of its peak"


POOL_SHAPES = [(1, 2, 1, 1, 1), (2, 3, 1, 2, 5), (1, 4, 2, 3, 1), (2, 5, 7, 9, 11), (1, 8, 4, 6, 6)]


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_separable_pool_equals_max_pool3d_with_minus_infinity_padding(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).contiguous(
        memory_format=torch.channels_last_3d
    )
    expected = F.max_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), value=float("-inf")), 3, 1)
    torch.testing.assert_close(_separable_max_pool_3x3x3(x), expected, rtol=0, atol=0)
    with torch.inference_mode():  # the module takes the separable path for channels-last inference input
        torch.testing.assert_close(MaxPool3dSame((3, 3, 3), (1, 1, 1))(x), expected, rtol=0, atol=0)
