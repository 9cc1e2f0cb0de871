"""Temporal Winograd of the CPU inference path (F(4, 3) for 3x3x3, F(4, 4) on paired frames for the stem),
and the separable stride-1 max-pool.

Yardsticks: the algebraic identity of the transform matrices in float64, and float64 direct convolutions and
max-pools; the model-level bound is the project's 2e-5 x peak on endpoints.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from i3d_torch.backends import cpu
from i3d_torch.backends.cpu.fused_unit import _zero_pad_channels_last
from i3d_torch.backends.cpu.pool import CpuMaxPool3dSame, separable_max_pool_3x3x3
from i3d_torch.backends.cpu.scratch import Scratch
from i3d_torch.backends.cpu.winograd import (
    F43_POINTS,
    F44_POINTS,
    F63_POINTS,
    TemporalWinogradConv,
    _tile_plan,
    temporal_winograd_applies,
    transform_matrices,
)
from i3d_torch.core.model import InceptionI3d, MaxPool3dSame, same_padding

needs_onednn = pytest.mark.skipif(not cpu.is_available(), reason="this PyTorch build has no oneDNN fused convolution")


LAVIN_GRAY_F43 = {  # their published B^T, G and A^T for F(4, 3)
    "input": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "kernel": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "output": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}


def test_toom_cook_construction_gives_lavin_and_grays_f43_matrices():
    input_transform, kernel_transform, output_transform = transform_matrices(3, F43_POINTS)
    torch.testing.assert_close(input_transform, torch.tensor(LAVIN_GRAY_F43["input"], dtype=torch.float64))
    torch.testing.assert_close(kernel_transform, torch.tensor(LAVIN_GRAY_F43["kernel"], dtype=torch.float64))
    torch.testing.assert_close(output_transform, torch.tensor(LAVIN_GRAY_F43["output"], dtype=torch.float64))


@pytest.mark.parametrize(
    "taps,points", [(3, F43_POINTS), (4, F43_POINTS), (3, F63_POINTS), (4, F44_POINTS), (2, F44_POINTS)]
)
def test_matrices_compute_the_outputs_of_a_correlation_over_a_tile(taps, points):
    input_transform, kernel_transform, output_transform = transform_matrices(taps, points)
    components = len(points) + 1
    outputs = components + 1 - taps
    generator = torch.Generator().manual_seed(taps)
    for _ in range(20):
        kernel = torch.randn(taps, dtype=torch.float64, generator=generator)
        frames = torch.randn(components, dtype=torch.float64, generator=generator)
        winograd = output_transform @ ((kernel_transform @ kernel) * (input_transform @ frames))
        direct = torch.stack([(kernel * frames[i : i + taps]).sum() for i in range(outputs)])
        torch.testing.assert_close(winograd, direct, rtol=0, atol=1e-12)


def test_winograd_is_used_only_where_it_saves_a_third_of_the_multiplications():
    same = [1, 1, 1]
    def frames_taking_winograd(image):
        return [t for t in range(1, 14) if temporal_winograd_applies((3, 3, 3), (1, 1, 1), same, (t, image, image))]

    # F(6, 3) tiles where the images are large: one of them does 5 frames with 8 products against 15.
    assert frames_taking_winograd(56) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert frames_taking_winograd(28) == [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]  # F(4, 3) alone: 12 against 15
    # The stem, on its explicitly padded input: 7 products per tile of 4 output frames over paired frames cost
    # 14 of the original 3-channel products, against 7 per output frame direct; it needs a saving of 40 %.
    stem = ((7, 7, 7), (2, 2, 2), [0, 0, 0])
    stem_outputs = {(t - 7) // 2 + 1 for t in range(7, 80) if temporal_winograd_applies(*stem, (t, 229, 229))}
    assert sorted(stem_outputs)[:8] == [4, 7, 8, 10, 11, 12, 14, 15] and {8, 32} <= stem_outputs
    assert not temporal_winograd_applies((7, 7, 7), (2, 2, 2), [3, 3, 3], (64, 224, 224))  # implicit time padding
    assert not temporal_winograd_applies((1, 1, 1), (1, 1, 1), [0, 0, 0], (64, 56, 56))


def test_tiles_mix_f63_and_f43_for_the_fewest_products():
    f63, f43, f44 = F63_POINTS, F43_POINTS, F44_POINTS
    def plan(frames, image):
        return _tile_plan((3, 3, 3), (1, 1, 1), (1, 1, 1), (frames, image, image))

    assert plan(32, 56) == (32, [(f63, 4), (f43, 2)])  # 44 products; 48 with either alone
    assert plan(16, 56) == (16, [(f63, 2), (f43, 1)])  # 22 against 24
    assert plan(12, 56) == (12, [(f63, 2)])
    assert plan(8, 56) == (8, [(f43, 2)])  # 12 against 14 (F(6, 3) + F(4, 3)) or 16
    assert plan(32, 28) == (32, [(f43, 8)])  # smaller images: F(4, 3) alone
    stem = _tile_plan((7, 7, 7), (2, 2, 2), (0, 0, 0), (69, 229, 229))  # a 64-frame clip's padded input
    assert stem == (32, [(f44, 8)])


@needs_onednn
@pytest.mark.parametrize(
    "batch,frames,height,width,bias",
    [(1, 3, 5, 7, True), (1, 4, 8, 8, True), (2, 6, 9, 5, False), (1, 13, 6, 11, True), (2, 32, 7, 7, True),
     # F(6, 3) tiles (images of 56x56 and more): alone, mixed with F(4, 3), for one clip and for two
     (1, 5, 56, 56, True), (1, 16, 56, 56, True), (2, 13, 57, 56, False)],
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
@pytest.mark.parametrize("batch,frames,size", [(1, 21, 37), (2, 19, 21), (1, 69, 23), (1, 26, 15)])
def test_stem_winograd_equals_a_stride_two_conv_plus_relu(batch, frames, size):
    # The stem's input arrives zero-padded (TF SAME at stride 2 is asymmetric), so the convolution is VALID.
    generator = torch.Generator().manual_seed(frames)
    weight = torch.randn(64, 3, 7, 7, 7, generator=generator) * (2 / (343 * 3)) ** 0.5
    offset = torch.randn(64, generator=generator)
    x = torch.randn(batch, 3, frames, size, size + 2, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = F.relu(F.conv3d(x.double(), weight.double(), offset.double(), stride=2))
    with torch.inference_mode():
        got = TemporalWinogradConv(weight, offset, tuple(x.shape), (2, 2, 2), (0, 0, 0))(x)
    assert got.shape == expected.shape
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 2e-5, f"{error:.2e} of the output's peak"


@needs_onednn
@pytest.mark.parametrize("frames", [64, 63, 16])  # TF pads 2 frames before at even lengths, 3 at odd ones
def test_stem_winograd_pads_the_unpadded_clip_in_the_copy_that_pairs_its_frames(frames):
    generator = torch.Generator().manual_seed(frames)
    weight = torch.randn(64, 3, 7, 7, 7, generator=generator) * (2 / (343 * 3)) ** 0.5
    x = torch.randn(1, 3, frames, 20, 17, generator=generator)  # the caller's layout: contiguous NCDHW
    pads = [same_padding(n, 7, 2) for n in x.shape[2:]]
    padded = _zero_pad_channels_last(x, pads)
    plan = TemporalWinogradConv(weight, None, tuple(padded.shape), (2, 2, 2), (0, 0, 0))
    with torch.inference_mode():
        torch.testing.assert_close(plan(x, explicit_padding=pads), plan(padded), rtol=0, atol=0)
        with pytest.raises(ValueError, match="built for input"):
            plan(x, explicit_padding=[(0, 0)] + pads[1:])


@needs_onednn
@pytest.mark.parametrize("stem", [False, True])
def test_borrowed_working_memory_is_fully_rewritten_on_every_call(stem):
    generator = torch.Generator().manual_seed(7)
    if stem:
        weight, stride, x = torch.randn(8, 3, 7, 7, 7, generator=generator), (2, 2, 2), torch.randn(1, 3, 20, 16, 16)
        pads = [same_padding(n, 7, 2) for n in x.shape[2:]]
        plan = TemporalWinogradConv(weight, None, tuple(_zero_pad_channels_last(x, pads).shape), stride, (0, 0, 0))
        call = dict(explicit_padding=pads)
    else:
        weight, x = torch.randn(8, 4, 3, 3, 3, generator=generator), torch.randn(2, 4, 13, 9, 7, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        plan, call = TemporalWinogradConv(weight, torch.randn(8, generator=generator), tuple(x.shape)), {}
    scratch = Scratch()
    with torch.inference_mode():
        expected = plan(x, **call)
        with scratch.lend(plan.scratch_numel) as carver:
            carver.block.fill_(float("nan"))  # stale contents must never reach the result
        torch.testing.assert_close(plan(x, scratch=scratch, **call), expected, rtol=0, atol=0)
        assert scratch.nbytes == 4 * plan.scratch_numel


@needs_onednn
def test_temporal_winograd_refuses_another_input_shape():
    plan = TemporalWinogradConv(torch.randn(4, 3, 3, 3, 3), None, (1, 3, 8, 5, 5))
    with pytest.raises(ValueError, match="built for input"):
        plan(torch.randn(1, 3, 9, 5, 5).contiguous(memory_format=torch.channels_last_3d))


@needs_onednn
def test_model_inference_takes_winograd_and_stays_within_the_endpoint_bound():
    torch.manual_seed(0)
    model = cpu.optimize(InceptionI3d(final_endpoint="Mixed_4c").eval())
    model.check_values = False
    x = (torch.rand(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    names = ["Conv3d_1a_7x7", "Conv3d_2c_3x3", "Mixed_3c", "Mixed_4c"]
    with torch.inference_mode():
        expected = model.double().extract_endpoints(x, names)  # float64: the plain modules
        got = model.float().extract_endpoints(x.float(), names)
    assert cpu.plan_kind(model.Conv3d_1a_7x7) == "winograd"  # stem: 8 output frames, 0.5
    assert cpu.plan_kind(model.Conv3d_2c_3x3) == "winograd"  # T = 8 there
    assert cpu.plan_kind(model.Mixed_4c.Branch_1.Conv3d_0b_3x3) == "winograd"  # T = 4
    for name in names:
        error = (got[name].double() - expected[name]).abs().max() / expected[name].abs().max()
        assert error < 2e-5, f"{name}: {error:.2e} of its peak"


@needs_onednn
def test_model_inference_keeps_the_direct_stem_where_winograd_would_not_pay():
    torch.manual_seed(0)
    model = cpu.optimize(InceptionI3d(final_endpoint="Conv3d_2c_3x3").eval())
    model.check_values = False
    x = (torch.rand(1, 3, 18, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1).double()  # 9 stem outputs
    names = ["Conv3d_1a_7x7", "Conv3d_2c_3x3"]
    with torch.inference_mode():
        expected = model.double().extract_endpoints(x, names)
        got = model.float().extract_endpoints(x.float(), names)
    # 3 tiles of 4 frames for 9 outputs: 42 products of 3 channels against 63 direct (0.67 > 0.6).
    assert cpu.plan_kind(model.Conv3d_1a_7x7) == "direct"
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
    torch.testing.assert_close(separable_max_pool_3x3x3(x), expected, rtol=0, atol=0)
    pool = CpuMaxPool3dSame.from_pool(MaxPool3dSame((3, 3, 3), (1, 1, 1)))
    with torch.inference_mode():  # the engine's pool, on the channels-last input the fused units hand it
        torch.testing.assert_close(pool(x), expected, rtol=0, atol=0)
