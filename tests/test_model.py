"""The model's structure and API, on random weights (fast, no TF)."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import i3d_torch.core.model as model_module
from i3d_torch.core.model import (
    ARCHITECTURE,
    ENDPOINTS,
    FEATURE_STRIDE,
    INCEPTION_WIDTHS,
    LOGITS_POOL,
    MAX_POOLS,
    NUM_FEATURES,
    Conv3dSame,
    InceptionI3d,
    MaxPool3dSame,
    min_input_size,
    same_padding,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return InceptionI3d().eval()


def test_endpoints_are_the_18_of_the_original_graph_in_order():
    assert len(ENDPOINTS) == 18
    assert ENDPOINTS[0] == "Conv3d_1a_7x7" and ENDPOINTS[-2:] == ("Logits", "Predictions")
    assert [e for e in ENDPOINTS if e.startswith("Mixed")] == [
        "Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"
    ]


def test_the_table_drives_endpoints_widths_pools_and_head():
    assert ENDPOINTS == tuple(name for name, _ in ARCHITECTURE)
    assert list(INCEPTION_WIDTHS) == [e for e in ENDPOINTS if e.startswith("Mixed")]
    assert INCEPTION_WIDTHS["Mixed_3b"] == (64, 96, 128, 16, 32, 32)  # the paper's Fig. 3 / DeepMind's i3d.py
    assert INCEPTION_WIDTHS["Mixed_5c"] == (384, 192, 384, 48, 128, 128)
    assert MAX_POOLS["MaxPool3d_4a_3x3"] == ((3, 3, 3), (2, 2, 2))
    assert LOGITS_POOL == (2, 7, 7)
    assert (NUM_FEATURES, FEATURE_STRIDE) == (1024, (8, 32, 32))


@pytest.mark.parametrize("final_endpoint", ENDPOINTS)
def test_final_endpoint_builds_the_prefix_of_the_table(final_endpoint):
    model = InceptionI3d(final_endpoint=final_endpoint)
    built = [name for name, _ in model.named_children()]
    last = ENDPOINTS.index("Predictions" if final_endpoint == "Logits" else final_endpoint)
    assert built == list(ENDPOINTS[: last + 1])
    assert model.endpoints == ENDPOINTS[: last + 1]


def test_derived_sizes_match_the_built_network(model):
    x = torch.zeros(1, 3, 9 * FEATURE_STRIDE[0], 2 * FEATURE_STRIDE[1], 3 * FEATURE_STRIDE[2])
    with torch.inference_mode():
        features = model.forward_features(x)
    assert features.shape == (1, model.num_features, 9, 2, 3) and model.num_features == NUM_FEATURES
    assert min_input_size() == tuple((k - 1) * s + 1 for k, s in zip(LOGITS_POOL, FEATURE_STRIDE))
    assert min_input_size("Mixed_5c") == (1, 1, 1)


def test_model_file_imports_no_backend():
    tree = ast.parse(inspect.getsource(model_module))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if "backends" in name or "winograd" in name or "allocator" in name]


@pytest.mark.parametrize(
    "t,h,w",
    [(9, 193, 193), (16, 224, 224), (10, 200, 257)],
)
def test_every_endpoint_has_the_shape_tf_same_padding_gives(model, t, h, w):
    x = torch.rand(1, 3, t, h, w) * 2 - 1
    with torch.inference_mode():
        out = model.extract_endpoints(x, ENDPOINTS)
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    t2, h2, w2 = ceil(t, 2), ceil(h, 2), ceil(w, 2)
    assert out["Conv3d_1a_7x7"].shape == (1, 64, t2, h2, w2)
    assert out["MaxPool3d_2a_3x3"].shape == (1, 64, t2, ceil(h2, 2), ceil(w2, 2))
    assert out["Mixed_3c"].shape == (1, 480, t2, ceil(h, 8), ceil(w, 8))
    assert out["Mixed_4f"].shape == (1, 832, ceil(t, 4), ceil(h, 16), ceil(w, 16))
    assert out["Mixed_5c"].shape == (1, 1024, ceil(t, 8), ceil(h, 32), ceil(w, 32))
    assert out["Logits"].shape == (1, 400)
    torch.testing.assert_close(out["Predictions"], out["Logits"].softmax(1))
    torch.testing.assert_close(out["Predictions"].sum(1), torch.ones(1))


def test_extract_endpoints_stops_after_the_last_requested(model, monkeypatch):
    called = []
    for name in ("Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5c"):
        module = getattr(model, name)
        recording = (lambda f, n: (lambda x: (called.append(n), f(x))[1]))(module.forward, name)
        monkeypatch.setattr(module, "forward", recording)
    with torch.inference_mode():
        out = model.extract_endpoints(torch.zeros(1, 3, 9, 64, 64), ["Mixed_3b", "Mixed_4f"])
    assert set(out) == {"Mixed_3b", "Mixed_4f"}
    assert called == ["Mixed_4f"]


def test_forward_returns_time_averaged_logits_of_per_time_logits(model):
    x = torch.rand(2, 3, 24, 224, 224) * 2 - 1
    with torch.inference_mode():
        per_time = model.per_time_logits(x)
        logits = model(x)
    assert per_time.shape == (2, 400, 2)
    torch.testing.assert_close(logits, per_time.mean(2))


def test_batch_items_are_independent(model):
    x = torch.rand(2, 3, 9, 193, 193) * 2 - 1
    with torch.inference_mode():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_final_endpoint_builds_only_what_it_needs():
    trunk = InceptionI3d(final_endpoint="Mixed_4f")
    assert not hasattr(trunk, "Mixed_5b") and not hasattr(trunk, "Logits")
    out = trunk(torch.zeros(1, 3, 4, 32, 32))
    assert out.shape == (1, 832, 1, 2, 2)


def test_clip_too_short_for_the_logits_pool_is_a_clear_error(model):
    assert min_input_size() == (9, 193, 193)
    with pytest.raises(ValueError, match=r"at least 9 frames and 193x193"):
        model(torch.zeros(1, 3, 8, 224, 224))
    relaxed = InceptionI3d(strict_tf_pooling=False).eval()
    with torch.inference_mode():
        assert relaxed(torch.zeros(1, 3, 4, 112, 112)).shape == (1, 400)


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.zeros(3, 9, 193, 193), "5-D"),
        (torch.zeros(1, 9, 193, 193, 3), "channels look last"),
        (torch.zeros(1, 2, 9, 193, 193), "expected 3 channels"),
        (torch.zeros(1, 3, 9, 193, 193, dtype=torch.uint8), "floating-point"),
    ],
)
def test_wrong_input_rank_channels_or_dtype_is_named(model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model(bad)


def test_nan_input_is_reported(model):
    x = torch.zeros(1, 3, 9, 193, 193)
    x[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        model(x)


def test_pixel_range_input_warns_with_the_likely_cause(model):
    with pytest.warns(UserWarning, match="0-255 pixels"):
        with torch.inference_mode():
            model(torch.full((1, 3, 9, 193, 193), 200.0))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=5).train()
    model(torch.rand(2, 3, 9, 193, 193) * 2 - 1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_batch_norm_is_sonnet_v1():
    bn = InceptionI3d().Conv3d_1a_7x7.batch_norm
    assert bn.eps == 1e-3 and abs(bn.momentum - 0.001) < 1e-12
    assert bn.weight is None and bn.bias.shape == (64,)


def test_dropout_takes_tf_keep_probability():
    assert InceptionI3d(dropout_keep_prob=0.5).Logits.dropout.p == pytest.approx(0.5)
    assert InceptionI3d(dropout_keep_prob=0.8).Logits.dropout.p == pytest.approx(0.2)


def test_reset_classifier_replaces_the_head(model):
    fresh = InceptionI3d().eval()
    fresh.reset_classifier(7)
    assert fresh.num_classes == 7
    with torch.inference_mode():
        assert fresh(torch.zeros(1, 3, 9, 193, 193)).shape == (1, 7)


def test_flow_stream_takes_two_channels():
    flow = InceptionI3d(in_channels=2).eval()
    with torch.inference_mode():
        assert flow(torch.zeros(1, 2, 9, 193, 193)).shape == (1, 400)


def test_same_padding_matches_tf_definition():
    # TF's definition (tensorflow/core/framework/kernel_shape_util.cc, padding "SAME"): out = ceil(n / s),
    # total = max((out - 1) * s + k - n, 0), before = total // 2, after = the rest. Any over- or
    # under-padding changes the pair on some size below.
    for size in range(1, 80):
        for kernel in range(1, 9):
            for stride in range(1, 5):
                out = -(-size // stride)
                total = max((out - 1) * stride + kernel - size, 0)
                assert same_padding(size, kernel, stride) == (total // 2, total - total // 2), (size, kernel, stride)
                before, after = same_padding(size, kernel, stride)
                assert (size + before + after - kernel) // stride + 1 == out  # VALID over the padded axis


def _tf():
    return pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install 'i3d-torch[tf]')")


@pytest.mark.parametrize("shape", [(9, 17, 16), (8, 15, 15), (1, 2, 3)])
def test_dynamic_same_conv_and_pool_equal_tensorflow_at_odd_sizes(shape):
    tf = _tf()
    torch.manual_seed(0)
    x = torch.randn(1, 3, *shape)
    conv = Conv3dSame(3, 4, (7, 7, 7), (2, 2, 2))
    with torch.no_grad():
        ours = conv(x).permute(0, 2, 3, 4, 1).numpy()
    kernel = conv.weight.detach().permute(2, 3, 4, 1, 0).numpy()
    theirs = tf.nn.conv3d(x.permute(0, 2, 3, 4, 1).numpy(), kernel, [1, 2, 2, 2, 1], "SAME").numpy()
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), atol=1e-5, rtol=1e-5)
    for kernel, stride in [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2))]:
        ours = MaxPool3dSame(kernel, stride)(x).permute(0, 2, 3, 4, 1).numpy()
        theirs = tf.nn.max_pool3d(x.permute(0, 2, 3, 4, 1).numpy(), (1, *kernel, 1), (1, *stride, 1), "SAME").numpy()
        torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs))


def test_bfloat16_runs_the_whole_network_on_cpu():
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    x = torch.rand(1, 3, 9, 193, 193) * 2 - 1
    with torch.inference_mode():
        reference = model(x)
        reduced = model.to(torch.bfloat16)(x.bfloat16())
    assert reduced.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: a few percent of the logits' scale.
    torch.testing.assert_close(reduced.float(), reference, atol=0.05 * float(reference.abs().max()), rtol=0)
