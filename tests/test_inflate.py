"""ImageNet inflation (i3d_torch.apps.inflate): the paper's "boring video" property, both namings, refusals.

The 2D network is built here: a PyTorch Inception-v1 with I3D's channel counts, TF SAME padding and
BatchNorm with eps 1e-3, random weights and random BatchNorm statistics. Its state dict is written out in
TF-slim or torchvision names by this file's own tables, inflated, and the inflated I3D is run on a video
that repeats one image. Everything runs in float64 so the comparison can be tight.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i3d_torch.apps.inflate import inflate, inflated_model
from i3d_torch.core.errors import ConversionError
from i3d_torch.core.model import ENDPOINTS, INCEPTION_WIDTHS, InceptionI3d, same_padding

BLOCKS = list(INCEPTION_WIDTHS)  # Mixed_3b ... Mixed_5c
TORCHVISION_BLOCKS = ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                      "inception4d", "inception4e", "inception5a", "inception5b"]
# 2D pools between stages: (kernel, stride) in space; I3D gives them these temporal (kernel, stride).
POOLS_2D = {
    "MaxPool3d_2a_3x3": (3, 2), "MaxPool3d_3a_3x3": (3, 2), "MaxPool3d_4a_3x3": (3, 2), "MaxPool3d_5a_2x2": (2, 2)
}  # fmt: skip
POOLS_TIME = {
    "MaxPool3d_2a_3x3": (1, 1), "MaxPool3d_3a_3x3": (1, 1), "MaxPool3d_4a_3x3": (3, 2), "MaxPool3d_5a_2x2": (2, 2)
}  # fmt: skip


def pad_same_2d(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    (top, bottom), (left, right) = (same_padding(n, kernel, stride) for n in x.shape[-2:])
    return F.pad(x, (left, right, top, bottom), value=value)


class Unit2D(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3; scale optional, as torchvision has one) + ReLU, TF SAME."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, scale: bool = False):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, affine=True)
        self.has_scale = scale
        with torch.no_grad():
            nn.init.normal_(self.conv.weight, std=(2.0 / (cin * kernel * kernel)) ** 0.5)
            self.bn.running_mean.normal_(0.0, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.bias.normal_(0.0, 0.1)
            if scale:  # include negative scales: the fold must hold for them too
                signs = torch.where(torch.rand(cout) < 0.2, -1.0, 1.0)
                self.bn.weight.copy_(torch.empty(cout).uniform_(0.5, 1.5) * signs)
            else:
                self.bn.weight.fill_(1.0)

    def forward(self, x):
        return F.relu(self.bn(self.conv(pad_same_2d(x, self.kernel, self.stride))))


class Block2D(nn.Module):
    def __init__(self, cin: int, widths, b2_name: str, scale: bool):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.units = nn.ModuleDict({
            "Branch_0/Conv2d_0a_1x1": Unit2D(cin, b0, 1, scale=scale),
            "Branch_1/Conv2d_0a_1x1": Unit2D(cin, b1a, 1, scale=scale),
            "Branch_1/Conv2d_0b_3x3": Unit2D(b1a, b1b, 3, scale=scale),
            "Branch_2/Conv2d_0a_1x1": Unit2D(cin, b2a, 1, scale=scale),
            f"Branch_2/{b2_name}": Unit2D(b2a, b2b, 3, scale=scale),
            "Branch_3/Conv2d_0b_1x1": Unit2D(cin, b3, 1, scale=scale),
        })
        self.b2_name = b2_name

    def forward(self, x):
        u = self.units
        branch3 = F.max_pool2d(pad_same_2d(x, 3, 1, float("-inf")), 3, 1)
        return torch.cat([
            u["Branch_0/Conv2d_0a_1x1"](x),
            u["Branch_1/Conv2d_0b_3x3"](u["Branch_1/Conv2d_0a_1x1"](x)),
            u[f"Branch_2/{self.b2_name}"](u["Branch_2/Conv2d_0a_1x1"](x)),
            u["Branch_3/Conv2d_0b_1x1"](branch3),
        ], dim=1)


class InceptionV1Twin(nn.Module):
    """2D Inception-v1 with I3D's widths; returns every endpoint under I3D's endpoint names."""

    def __init__(self, scale: bool = False, num_classes: int = 7):
        super().__init__()
        self.stem = nn.ModuleDict({
            "Conv2d_1a_7x7": Unit2D(3, 64, 7, 2, scale=scale),
            "Conv2d_2b_1x1": Unit2D(64, 64, 1, scale=scale),
            "Conv2d_2c_3x3": Unit2D(64, 192, 3, scale=scale),
        })
        channels, blocks = 192, {}
        for name, widths in INCEPTION_WIDTHS.items():
            blocks[name] = Block2D(channels, widths, "Conv2d_0a_3x3" if name == "Mixed_5b" else "Conv2d_0b_3x3", scale)
            channels = widths[0] + widths[2] + widths[4] + widths[5]
        self.blocks = nn.ModuleDict(blocks)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        out = {}
        for name in ENDPOINTS[:16]:
            if name.startswith("Conv3d"):
                x = self.stem[name.replace("Conv3d", "Conv2d")](x)
            elif name in POOLS_2D:
                k, s = POOLS_2D[name]
                x = F.max_pool2d(pad_same_2d(x, k, s, float("-inf")), k, s)
            else:
                x = self.blocks[name](x)
            out[name] = x
        return out

    def units(self):
        """(slim scope, torchvision module, Unit2D) for every unit, by this file's own naming tables."""
        rows = [("Conv2d_1a_7x7", "conv1"), ("Conv2d_2b_1x1", "conv2"), ("Conv2d_2c_3x3", "conv3")]
        for slim, tv in rows:
            yield slim, tv, self.stem[slim]
        tv_branch = {"Branch_0/Conv2d_0a_1x1": "branch1", "Branch_1/Conv2d_0a_1x1": "branch2.0",
                     "Branch_1/Conv2d_0b_3x3": "branch2.1", "Branch_2/Conv2d_0a_1x1": "branch3.0",
                     "Branch_2/Conv2d_0b_3x3": "branch3.1", "Branch_2/Conv2d_0a_3x3": "branch3.1",
                     "Branch_3/Conv2d_0b_1x1": "branch4.1"}
        for block, tv_block in zip(BLOCKS, TORCHVISION_BLOCKS):
            for unit_name, unit in self.blocks[block].units.items():
                yield f"{block}/{unit_name}", f"{tv_block}.{tv_branch[unit_name]}", unit

    def slim_state_dict(self) -> Dict[str, np.ndarray]:
        """TF-slim InceptionV1 variables (HWIO kernels, BatchNorm without gamma)."""
        out = {}
        for slim, _, unit in self.units():
            assert not unit.has_scale, "slim's InceptionV1 BatchNorm has no scale"
            out[f"InceptionV1/{slim}/weights"] = unit.conv.weight.detach().permute(2, 3, 1, 0).numpy()
            out[f"InceptionV1/{slim}/BatchNorm/beta"] = unit.bn.bias.detach().numpy()
            out[f"InceptionV1/{slim}/BatchNorm/moving_mean"] = unit.bn.running_mean.numpy()
            out[f"InceptionV1/{slim}/BatchNorm/moving_variance"] = unit.bn.running_var.numpy()
        out["InceptionV1/Logits/Conv2d_0c_1x1/weights"] = self.fc.weight.detach().t()[None, None].numpy()
        out["InceptionV1/Logits/Conv2d_0c_1x1/biases"] = self.fc.bias.detach().numpy()
        out["global_step"] = np.array(1000, dtype=np.int64)
        return out

    def torchvision_state_dict(self) -> Dict[str, torch.Tensor]:
        """torchvision GoogLeNet names and shapes (BatchNorm with weight = scale), plus an aux head."""
        out = {}
        for _, tv, unit in self.units():
            out[f"{tv}.conv.weight"] = unit.conv.weight.detach().clone()
            for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{tv}.bn.{field}"] = getattr(unit.bn, field).detach().clone()
        out["fc.weight"] = self.fc.weight.detach().clone()
        out["fc.bias"] = self.fc.bias.detach().clone()
        out["aux1.conv.conv.weight"] = torch.zeros(128, 512, 1, 1)
        out["aux1.fc2.weight"] = torch.zeros(1000, 1024)
        return out


# -- where temporal SAME zero-padding leaves the "boring video" equality intact --------------------------


def conv_valid(mask: List[bool], kernel: int, stride: int) -> List[bool]:
    """Output positions of a SAME conv whose whole temporal window lies on valid input (zero padding
    would otherwise enter the sum)."""
    size = len(mask)
    before, _ = same_padding(size, kernel, stride)
    out = []
    for t in range(-(-size // stride)):
        window = range(t * stride - before, t * stride - before + kernel)
        out.append(all(0 <= i < size and mask[i] for i in window))
    return out


def pool_valid(mask: List[bool], kernel: int, stride: int) -> List[bool]:
    """Max-pool with -inf padding: padding never wins, so only in-range inputs must be valid."""
    size = len(mask)
    before, _ = same_padding(size, kernel, stride)
    out = []
    for t in range(-(-size // stride)):
        window = [i for i in range(t * stride - before, t * stride - before + kernel) if 0 <= i < size]
        out.append(all(mask[i] for i in window))
    return out


def valid_times(num_frames: int) -> Dict[str, List[bool]]:
    """Per endpoint, the time steps at which the inflated network must equal the 2D one."""
    mask, out = [True] * num_frames, {}
    for name in ENDPOINTS[:16]:
        if name == "Conv3d_1a_7x7":
            mask = conv_valid(mask, 7, 2)
        elif name == "Conv3d_2c_3x3":
            mask = conv_valid(mask, 3, 1)
        elif name in POOLS_TIME:
            mask = pool_valid(mask, *POOLS_TIME[name])
        elif name in INCEPTION_WIDTHS:
            three = conv_valid(mask, 3, 1)
            pooled = pool_valid(mask, 3, 1)
            mask = [a and b for a, b in zip(three, pooled)]
        out[name] = mask
    return out


def boring_video(image: torch.Tensor, frames: int) -> torch.Tensor:
    return image.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


def assert_boring_video_property(model3d: InceptionI3d, twin: InceptionV1Twin, frames: int, size=(40, 32)):
    torch.manual_seed(1)
    image = torch.rand(1, 3, *size, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ref = twin(image)
        got = model3d.extract_endpoints(boring_video(image, frames), list(ENDPOINTS[:16]))
    valid = valid_times(frames)
    for name in ENDPOINTS[:16]:
        positions = [t for t, ok in enumerate(valid[name]) if ok]
        assert positions, f"{name}: no time step free of border effects with {frames} frames"
        assert got[name].shape[2] == len(valid[name])
        for t in positions:
            torch.testing.assert_close(
                got[name][:, :, t], ref[name], rtol=1e-9, atol=1e-9, msg=lambda m: f"{name} t={t}: {m}"
            )
    # Mixed_5c averaged over space, per valid time step (the pooled descriptor of a boring video).
    positions = [t for t, ok in enumerate(valid["Mixed_5c"]) if ok]
    torch.testing.assert_close(
        got["Mixed_5c"].mean(dim=(3, 4))[:, :, positions],
        ref["Mixed_5c"].mean(dim=(2, 3))[:, :, None].expand(-1, -1, len(positions)),
        rtol=1e-9, atol=1e-9,
    )
    # The border positions really differ: the mask is the exact set, not a loose subset.
    border = [t for t, ok in enumerate(valid["Conv3d_1a_7x7"]) if not ok]
    assert border and not torch.allclose(got["Conv3d_1a_7x7"][:, :, border[0]], ref["Conv3d_1a_7x7"], atol=1e-6)


@pytest.fixture(scope="module")
def slim_twin():
    torch.manual_seed(0)
    return InceptionV1Twin(scale=False).double().eval()


def build_i3d(state, num_classes=7) -> InceptionI3d:
    model = InceptionI3d(num_classes=num_classes).double().eval()
    model.load_state_dict(state, strict=True)
    model.check_values = False
    return model


def test_valid_time_mask_leaves_positions_at_every_endpoint():
    valid = valid_times(128)
    assert sum(valid["Mixed_5c"]) >= 2
    assert not valid["Mixed_5c"][0] and not valid["Mixed_5c"][-1]
    # The first endpoint: a 7-tap temporal kernel at stride 2 loses one output at each end.
    assert valid["Conv3d_1a_7x7"][0] is False and valid["Conv3d_1a_7x7"][1] is True


def test_slim_inflated_network_equals_2d_network_on_a_boring_video(slim_twin):
    state = inflate(slim_twin.slim_state_dict(), naming="auto")
    assert_boring_video_property(build_i3d(state), slim_twin, frames=112)


def test_torchvision_scale_is_folded_exactly_on_a_boring_video():
    torch.manual_seed(2)
    twin = InceptionV1Twin(scale=True).double().eval()
    state = inflate(twin.torchvision_state_dict())
    assert_boring_video_property(build_i3d(state), twin, frames=112)


def test_inflated_kernel_is_the_2d_kernel_repeated_and_divided_by_its_temporal_size(slim_twin):
    state = inflate(slim_twin.slim_state_dict())
    for i3d_name, unit, time in [
        ("Conv3d_1a_7x7", slim_twin.stem["Conv2d_1a_7x7"], 7),
        ("Mixed_4c.Branch_1.Conv3d_0b_3x3", slim_twin.blocks["Mixed_4c"].units["Branch_1/Conv2d_0b_3x3"], 3),
        ("Mixed_5b.Branch_2.Conv3d_0a_3x3", slim_twin.blocks["Mixed_5b"].units["Branch_2/Conv2d_0a_3x3"], 3),
        ("Mixed_3b.Branch_3.Conv3d_0b_1x1", slim_twin.blocks["Mixed_3b"].units["Branch_3/Conv2d_0b_1x1"], 1),
    ]:
        kernel = state[f"{i3d_name}.conv_3d.weight"]
        assert kernel.shape[2] == time
        for t in range(time):
            torch.testing.assert_close(kernel[:, :, t].double(), unit.conv.weight.detach() / time, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(
            state[f"{i3d_name}.batch_norm.running_var"].double(), unit.bn.running_var, rtol=1e-6, atol=0
        )


def test_torchvision_and_slim_namings_give_the_same_state_dict_when_the_scale_is_one(slim_twin):
    from_slim = inflate(slim_twin.slim_state_dict(), naming="tf_slim")
    from_tv = inflate(slim_twin.torchvision_state_dict(), naming="torchvision")
    assert list(from_slim) == list(from_tv)
    for key in from_slim:
        torch.testing.assert_close(from_tv[key], from_slim[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


def test_torchvision_classifier_becomes_the_logits_layer(slim_twin):
    model = inflated_model(slim_twin.torchvision_state_dict())
    assert model.num_classes == 7
    torch.testing.assert_close(
        model.Logits.Conv3d_0c_1x1.conv_3d.weight[:, :, 0, 0, 0].double(),
        slim_twin.fc.weight.detach(),
        rtol=1e-6,
        atol=1e-7,
    )
    fresh = inflated_model(slim_twin.torchvision_state_dict(), num_classes=3, strict_tf_pooling=False)
    assert fresh.num_classes == 3
    torch.testing.assert_close(
        fresh.Conv3d_1a_7x7.conv_3d.weight, model.Conv3d_1a_7x7.conv_3d.weight, rtol=0, atol=0
    )


def test_time_kernels_override_changes_the_temporal_size(slim_twin):
    state = inflate(slim_twin.slim_state_dict(), time_kernels={"Conv3d_1a_7x7": 5})
    assert state["Conv3d_1a_7x7.conv_3d.weight"].shape == (64, 3, 5, 7, 7)
    with pytest.raises(ConversionError, match="names no I3D unit"):
        inflate(slim_twin.slim_state_dict(), time_kernels={"Conv3d_9z": 3})


def test_wrong_channel_counts_are_refused_with_the_layer_named(slim_twin):
    state = slim_twin.torchvision_state_dict()
    state["inception4a.branch3.1.conv.weight"] = torch.zeros(24, 16, 3, 3)  # torchvision 5x5-era width
    with pytest.raises(ConversionError, match=r"inception4a\.branch3\.1.*Mixed_4b"):
        inflate(state)


def test_unknown_2d_tensors_are_refused_not_skipped(slim_twin):
    state = slim_twin.slim_state_dict()
    state["InceptionV1/Mixed_6a/Branch_0/Conv2d_0a_1x1/weights"] = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ConversionError, match="map to nothing.*Mixed_6a"):
        inflate(state)


def test_missing_tensor_and_unknown_naming_are_refused(slim_twin):
    state = slim_twin.slim_state_dict()
    del state["InceptionV1/Mixed_5c/Branch_0/Conv2d_0a_1x1/BatchNorm/moving_mean"]
    with pytest.raises(ConversionError, match="moving_mean"):
        inflate(state)
    with pytest.raises(ConversionError, match="cannot tell the naming"):
        inflate({"features.0.weight": torch.zeros(1)})


def test_package_attribute_calls_inflate(slim_twin):
    import i3d_torch

    state = i3d_torch.inflate(slim_twin.slim_state_dict())
    assert "Mixed_5c.Branch_3.Conv3d_0b_1x1.conv_3d.weight" in state
