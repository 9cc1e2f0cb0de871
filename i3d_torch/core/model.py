"""Inflated 3D Inception-v1 (I3D).

Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset", CVPR 2017.
Written from the paper and from the graph DeepMind published in deepmind/kinetics-i3d (``i3d.py``,
Apache-2.0). Module attributes keep DeepMind's TensorFlow scope names (``Conv3d_1a_7x7``, ``Mixed_4f``,
``Branch_1.Conv3d_0b_3x3``, ``conv_3d``, ``batch_norm``) so that the converter's name table is short and
greppable.

The architecture is one ordered table, :data:`ARCHITECTURE` (stem units, pools, Inception widths, head),
that drives construction and the truncation at ``final_endpoint``; the other constants derive from it. This
file is the definition only: how the model is run fast is a backend's business (:mod:`i3d_torch.backends`).

Input convention (the one place it is defined): ``[N, C, T, H, W]`` float, values in ``[-1, 1]``,
channels in RGB order (C=3) or (u, v) optical flow (C=2). See :mod:`i3d_torch.core.transforms`.

Fidelity to TensorFlow:

* Convolutions and max-pools use TF "SAME" padding computed from the runtime input size on every axis,
  so any T, H, W gives the TF result (asymmetric split, larger half at the end, when stride > 1).
* BatchNorm is Sonnet v1's: eps 1e-3, moving-average decay 0.999, a learned offset and no learned scale.
* The head is the original: average pool 2x7x7 VALID, dropout, 1x1x1 conv with bias, spatial squeeze,
  mean over time. TF cannot evaluate it when Mixed_5c is smaller than 2x7x7 (T < 9 or H, W < 193 with
  the default stride pattern); by default this model raises a clear error there too. The opt-in
  ``strict_tf_pooling=False`` clamps the pool window to the feature map instead: it departs from TF only
  for those small inputs, and equals it everywhere TF is defined.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from i3d_torch.core.errors import InputError
from i3d_torch.core.transforms import check_model_input, input_trusted

__all__ = [
    "ARCHITECTURE",
    "ENDPOINTS",
    "INCEPTION_WIDTHS",
    "MAX_POOLS",
    "LOGITS_POOL",
    "NUM_FEATURES",
    "FEATURE_STRIDE",
    "BN_EPS",
    "BN_DECAY",
    "same_padding",
    "min_input_size",
    "InceptionI3d",
    "Unit3D",
    "InceptionBlock",
    "LogitsHead",
    "MaxPool3dSame",
    "Conv3dSame",
    "BatchNorm3dNoScale",
    "count_parameters",
]

# ---------------------------------------------------------------------------------------------------
# The architecture: one table, from DeepMind's i3d.py and Table 1 / Fig. 3 of the paper.
# ---------------------------------------------------------------------------------------------------

Triple = Tuple[int, int, int]


class Conv(NamedTuple):
    """A :class:`Unit3D`: conv (TF SAME) + BatchNorm + ReLU."""

    out_channels: int
    kernel: Triple = (1, 1, 1)
    stride: Triple = (1, 1, 1)


class Pool(NamedTuple):
    """A :class:`MaxPool3dSame`."""

    kernel: Triple
    stride: Triple


class Mixed(NamedTuple):
    """An :class:`InceptionBlock`: widths of branch 0 (1x1), branch 1 (1x1, 3x3), branch 2 (1x1, 3x3) and
    branch 3 (3x3x3 max-pool, 1x1); ``branch2_conv`` is the TF scope name of branch 2's 3x3 conv."""

    b0: int
    b1a: int
    b1b: int
    b2a: int
    b2b: int
    b3: int
    branch2_conv: str = "Conv3d_0b_3x3"

    @property
    def widths(self) -> Tuple[int, int, int, int, int, int]:
        return (self.b0, self.b1a, self.b1b, self.b2a, self.b2b, self.b3)

    @property
    def out_channels(self) -> int:
        return self.b0 + self.b1b + self.b2b + self.b3


class Head(NamedTuple):
    """The :class:`LogitsHead`: average pool (VALID) of ``pool``, dropout, 1x1x1 conv with bias."""

    pool: Triple


class Softmax(NamedTuple):
    """Predictions: softmax over the time-averaged logits, no parameters."""


Layer = Union[Conv, Pool, Mixed, Head, Softmax]

#: I3D in order, endpoint by endpoint, with the output shape (C x T x H x W) of a 1x3x64x224x224 clip. A model
#: built up to ``final_endpoint`` is this table's prefix; every other constant below is derived from it.
ARCHITECTURE: Tuple[Tuple[str, Layer], ...] = (
    ("Conv3d_1a_7x7", Conv(64, (7, 7, 7), (2, 2, 2))),  # 64 x 32 x 112 x 112
    ("MaxPool3d_2a_3x3", Pool((1, 3, 3), (1, 2, 2))),  # 64 x 32 x 56 x 56
    ("Conv3d_2b_1x1", Conv(64)),  # 64 x 32 x 56 x 56
    ("Conv3d_2c_3x3", Conv(192, (3, 3, 3))),  # 192 x 32 x 56 x 56
    ("MaxPool3d_3a_3x3", Pool((1, 3, 3), (1, 2, 2))),  # 192 x 32 x 28 x 28
    ("Mixed_3b", Mixed(64, 96, 128, 16, 32, 32)),  # 256 x 32 x 28 x 28
    ("Mixed_3c", Mixed(128, 128, 192, 32, 96, 64)),  # 480 x 32 x 28 x 28
    ("MaxPool3d_4a_3x3", Pool((3, 3, 3), (2, 2, 2))),  # 480 x 16 x 14 x 14
    ("Mixed_4b", Mixed(192, 96, 208, 16, 48, 64)),  # 512 x 16 x 14 x 14
    ("Mixed_4c", Mixed(160, 112, 224, 24, 64, 64)),  # 512 x 16 x 14 x 14
    ("Mixed_4d", Mixed(128, 128, 256, 24, 64, 64)),  # 512 x 16 x 14 x 14
    ("Mixed_4e", Mixed(112, 144, 288, 32, 64, 64)),  # 528 x 16 x 14 x 14
    ("Mixed_4f", Mixed(256, 160, 320, 32, 128, 128)),  # 832 x 16 x 14 x 14
    ("MaxPool3d_5a_2x2", Pool((2, 2, 2), (2, 2, 2))),  # 832 x 8 x 7 x 7
    # DeepMind's graph names this block's branch-2 3x3 conv "Conv3d_0a_3x3" (a typo in the original, kept in
    # every checkpoint); the name is kept so that TF and PyTorch names map one to one.
    ("Mixed_5b", Mixed(256, 160, 320, 32, 128, 128, branch2_conv="Conv3d_0a_3x3")),  # 832 x 8 x 7 x 7
    ("Mixed_5c", Mixed(384, 192, 384, 48, 128, 128)),  # 1024 x 8 x 7 x 7
    ("Logits", Head(pool=(2, 7, 7))),  # 400 (400 x 7 per time step before the mean over time)
    ("Predictions", Softmax()),  # 400
)

#: All 18 endpoints of the original graph, in order.
ENDPOINTS: Tuple[str, ...] = tuple(name for name, _ in ARCHITECTURE)

#: Inception block widths: (branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 1x1).
INCEPTION_WIDTHS: Dict[str, Tuple[int, int, int, int, int, int]] = {
    name: layer.widths for name, layer in ARCHITECTURE if isinstance(layer, Mixed)
}

#: (kernel, stride) of the four max-pools between stages.
MAX_POOLS: Dict[str, Tuple[Triple, Triple]] = {
    name: (layer.kernel, layer.stride) for name, layer in ARCHITECTURE if isinstance(layer, Pool)
}

#: Window of the final average pool (VALID) over (T, H, W) of Mixed_5c.
LOGITS_POOL: Triple = next(layer.pool for _, layer in ARCHITECTURE if isinstance(layer, Head))


def _trunk_geometry() -> Tuple[int, Triple]:
    """Channels and total (T, H, W) stride of the feature map that enters the head (Mixed_5c)."""
    channels, stride = 0, (1, 1, 1)
    for _, layer in ARCHITECTURE:
        if isinstance(layer, (Conv, Pool)):
            stride = tuple(a * b for a, b in zip(stride, layer.stride))
        if isinstance(layer, (Conv, Mixed)):
            channels = layer.out_channels
        if isinstance(layer, Head):
            break
    return channels, stride


#: Channels of Mixed_5c, the clip descriptor's size (1024), and its stride over (T, H, W): (8, 32, 32).
NUM_FEATURES, FEATURE_STRIDE = _trunk_geometry()

# Sonnet v1 BatchNorm defaults used by DeepMind.
BN_EPS = 1e-3
BN_DECAY = 0.999


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis of length ``size``."""
    out = -(-size // stride)  # ceil
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def min_input_size(endpoint: str = "Logits") -> Tuple[int, int, int]:
    """Smallest (T, H, W) for which TF's graph can compute ``endpoint``.

    Only the Logits head has a minimum (its 2x7x7 VALID average pool); the other endpoints accept any
    size >= 1. The strides up to Mixed_5c are :data:`FEATURE_STRIDE` (8 in time, 32 in space), and every
    stage rounds up, so Mixed_5c has ceil(T/8) x ceil(H/32) x ceil(W/32) positions.
    """
    if endpoint not in ("Logits", "Predictions"):
        return (1, 1, 1)
    return tuple((k - 1) * s + 1 for k, s in zip(LOGITS_POOL, FEATURE_STRIDE))


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


class BatchNorm3dNoScale(nn.BatchNorm3d):
    """Sonnet v1 BatchNorm as used by I3D: eps 1e-3, decay 0.999, learned offset, no learned scale.

    ``affine=False`` removes PyTorch's weight; the offset is re-added as ``bias`` so the parent's
    forward (``F.batch_norm(x, mean, var, None, bias)``) computes ``(x - mean) / sqrt(var + eps) + bias``.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=BN_EPS, momentum=1.0 - BN_DECAY, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class Conv3dSame(nn.Conv3d):
    """Conv3d with TF "SAME" padding.

    Stride 1 with an odd kernel pads symmetrically, so the padding is static and fused into the
    convolution. Any other case pads explicitly from the runtime shape, larger half at the end as TF does.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=(1, 1, 1), bias=False):
        static = all(s == 1 and k % 2 == 1 for k, s in zip(kernel_size, stride))
        padding = tuple(k // 2 for k in kernel_size) if static else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.dynamic_padding = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            x = F.pad(x, _same_pad_arg(x.shape[-3:], self.kernel_size, self.stride))
        return super().forward(x)


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding. Padding never wins the max: it is -inf (implicit or explicit)."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TF pads (before, after) with after = before or before + 1. Padding `before` on both sides with
        # ceil_mode=True yields exactly TF's windows: ceil_mode adds the trailing window that TF's extra
        # `after` pad creates, and PyTorch's implicit padding is -inf, never the max. So any input size is
        # exact without an F.pad copy of the activations.
        before = tuple(same_padding(n, k, s)[0] for n, k, s in zip(x.shape[-3:], self.kernel_size, self.stride))
        return F.max_pool3d(x, self.kernel_size, self.stride, padding=before, ceil_mode=True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def _same_pad_arg(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> List[int]:
    """``F.pad`` argument (last axis first) for TF SAME padding of a (T, H, W) shape."""
    arg: List[int] = []
    for n, k, s in reversed(list(zip(spatial, kernel, stride))):
        arg.extend(same_padding(n, k, s))  # no int(): keeps symbolic sizes symbolic for torch.export
    return arg


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (no scale) + ReLU: DeepMind's ``Unit3D`` with its defaults.

    This is the definition, and what training, autograd and export run. A backend may replace the unit with
    a faster one holding the same children (:func:`i3d_torch.backends.cpu.optimize`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.conv_3d = Conv3dSame(in_channels, out_channels, tuple(kernel_size), tuple(stride))
        self.batch_norm = BatchNorm3dNoScale(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.batch_norm(self.conv_3d(x)), inplace=True)

    def folded_weight_and_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Conv weight and bias with the eval-mode BatchNorm folded in: the one place BatchNorm is folded
        (:meth:`InceptionI3d.fuse`, export and the CPU backend use it).

        conv(x) * s + (b - m * s) with s = g / sqrt(v + eps), g the BatchNorm's scale where it has one (I3D's
        has none, so g = 1). After :meth:`InceptionI3d.fuse` the BatchNorm is an identity and the conv's own
        weight and bias are returned.
        """
        conv, bn = self.conv_3d, self.batch_norm
        if isinstance(bn, nn.Identity):  # already fused
            return conv.weight, conv.bias
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:  # a BatchNorm with a learned scale, e.g. after SyncBatchNorm conversion
            scale = scale * bn.weight
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1, 1), bias


class _Branch(nn.Sequential):
    """One Inception branch; a Sequential whose children keep their TF scope names."""


class InceptionBlock(nn.Module):
    """Inception module inflated to 3D: four branches concatenated along channels."""

    def __init__(self, in_channels: int, widths: Sequence[int], branch2_conv_name: str = "Conv3d_0b_3x3"):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.out_channels = b0 + b1b + b2b + b3
        self.Branch_0 = _Branch()
        self.Branch_0.add_module("Conv3d_0a_1x1", Unit3D(in_channels, b0))
        self.Branch_1 = _Branch()
        self.Branch_1.add_module("Conv3d_0a_1x1", Unit3D(in_channels, b1a))
        self.Branch_1.add_module("Conv3d_0b_3x3", Unit3D(b1a, b1b, (3, 3, 3)))
        self.Branch_2 = _Branch()
        self.Branch_2.add_module("Conv3d_0a_1x1", Unit3D(in_channels, b2a))
        self.Branch_2.add_module(branch2_conv_name, Unit3D(b2a, b2b, (3, 3, 3)))
        self.Branch_3 = _Branch()
        # Stride 1, kernel 3: symmetric SAME padding of 1, -inf implicit padding.
        self.Branch_3.add_module("MaxPool3d_0a_3x3", MaxPool3dSame((3, 3, 3), (1, 1, 1)))
        self.Branch_3.add_module("Conv3d_0b_1x1", Unit3D(in_channels, b3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


class LogitsHead(nn.Module):
    """Average pool (2x7x7 VALID), dropout, 1x1x1 conv with bias; returns per-time logits [N, K, T']."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout_keep_prob: float,
        strict_tf_pooling: bool,
        pool: Triple = LOGITS_POOL,
    ):
        super().__init__()
        self.pool = tuple(pool)
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")
        self.strict_tf_pooling = strict_tf_pooling
        # TF's argument is a keep-probability; PyTorch's Dropout takes the drop probability.
        self.dropout = nn.Dropout(p=1.0 - dropout_keep_prob)
        self.Conv3d_0c_1x1 = nn.Module()
        self.Conv3d_0c_1x1.conv_3d = nn.Conv3d(in_channels, num_classes, 1, bias=True)

    def pool_window(self, feature_size: Sequence[int]) -> Tuple[int, int, int]:
        if all(n >= k for n, k in zip(feature_size, self.pool)):
            return self.pool
        if self.strict_tf_pooling:
            t, h, w = ((k - 1) * s + 1 for k, s in zip(self.pool, FEATURE_STRIDE))
            raise ValueError(
                f"input too small for the Logits head: Mixed_5c is {tuple(feature_size)} (T', H', W') but its "
                f"{'x'.join(map(str, self.pool))} VALID average pool (as in TF) needs at least {self.pool}, i.e. a "
                f"clip of at least {t} frames and {h}x{w} pixels; loop the clip to more frames, or build the "
                f"model with strict_tf_pooling=False to clamp the pool (departs from TF)"
            )
        return tuple(min(n, k) for n, k in zip(feature_size, self.pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self.pool_window(x.shape[-3:])
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            # PyTorch has no CPU avg_pool3d kernel in reduced precision: pool in float32 (exact), cast back.
            x = F.avg_pool3d(x.float(), window, stride=1).to(x.dtype)
        else:
            x = F.avg_pool3d(x, window, stride=1)  # N x 1024 x T'-1 x H'-6 x W'-6
        x = self.dropout(x)
        x = self.Conv3d_0c_1x1.conv_3d(x)  # N x K x T'' x H'' x W''
        # DeepMind squeezes the spatial axes; with H, W != 224 they are averaged, which equals the squeeze
        # whenever it is defined and keeps the head usable for larger frames.
        return x.mean(dim=(3, 4))  # N x K x T''


# ---------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------


class InceptionI3d(nn.Module):
    """I3D: Inception-v1 inflated to 3D.

    Args:
        num_classes: size of the logits layer (400 Kinetics-400, 600 Kinetics-600, or your own).
        in_channels: 3 for the RGB stream, 2 for the optical-flow stream.
        final_endpoint: build the network only up to this endpoint (one of :data:`ENDPOINTS`).
        dropout_keep_prob: keep-probability of the dropout before the logits (TF's convention; 1.0 = off).
        strict_tf_pooling: raise, as TF does, when the clip is too small for the 2x7x7 logits pool; if
            False, clamp the pool window instead (departs from TF for those inputs only).
    """

    def __init__(
        self,
        num_classes: int = 400,
        in_channels: int = 3,
        final_endpoint: str = "Logits",
        dropout_keep_prob: float = 1.0,
        strict_tf_pooling: bool = True,
    ):
        super().__init__()
        if final_endpoint not in ENDPOINTS:
            raise ValueError(f"unknown final_endpoint {final_endpoint!r}; valid: {', '.join(ENDPOINTS)}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.final_endpoint = final_endpoint
        # Endpoints this instance can return. Predictions has no parameters, so a model built up to Logits
        # can also return it.
        last = ENDPOINTS.index("Predictions" if final_endpoint == "Logits" else final_endpoint)
        self.endpoints: Tuple[str, ...] = ENDPOINTS[: last + 1]

        channels = in_channels
        for name, layer in ARCHITECTURE[: len(self.endpoints)]:
            if isinstance(layer, Conv):
                module = Unit3D(channels, layer.out_channels, layer.kernel, layer.stride)
                channels = layer.out_channels
            elif isinstance(layer, Pool):
                module = MaxPool3dSame(layer.kernel, layer.stride)
            elif isinstance(layer, Mixed):
                module = InceptionBlock(channels, layer.widths, layer.branch2_conv)
                channels = layer.out_channels
            elif isinstance(layer, Head):
                module = LogitsHead(channels, num_classes, dropout_keep_prob, strict_tf_pooling, layer.pool)
            else:
                module = nn.Softmax(dim=1)
            self.add_module(name, module)
        #: Size of the clip descriptor (:meth:`pooled_features`): the channels of Mixed_5c.
        self.num_features = NUM_FEATURES
        # Range/NaN checks on every input (a few ms on a 64-frame clip); off for benchmarks and export, and
        # skipped inside core.transforms.trusted_input() for inputs the project's own transforms made.
        self.check_values = True

    # -- forward paths ------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, wanted: Iterable[str]) -> Dict[str, torch.Tensor]:
        """Run the network up to the last of ``wanted`` endpoints, returning those endpoints."""
        wanted = list(wanted)
        unknown = [w for w in wanted if w not in self.endpoints]
        if unknown:
            raise ValueError(
                f"unknown or unbuilt endpoint(s) {unknown}; this model has: {', '.join(self.endpoints)}"
            )
        self._check_input(x)
        last = max(self.endpoints.index(w) for w in wanted)
        out: Dict[str, torch.Tensor] = {}
        for name in self.endpoints[: last + 1]:
            if name == "Logits":
                x = getattr(self, name)(x).mean(dim=2)  # N x K: per-time logits averaged over time
            else:
                x = getattr(self, name)(x)
            if name in wanted:
                # A backend may run channels-last inside; hand out the usual contiguous layout.
                out[name] = x.contiguous()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``final_endpoint``: with the default, the time-averaged logits ``[N, num_classes]``.

        Each endpoint's shape for a 1x3x64x224x224 clip is on its line of :data:`ARCHITECTURE`.
        """
        return self._run(x, [self.final_endpoint])[self.final_endpoint]

    def extract_endpoints(self, x: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Any subset of endpoints in one pass, computing nothing past the last one requested."""
        if isinstance(names, str):
            names = [names]
        return self._run(x, names)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c feature map ``[N, 1024, T/8, H/32, W/32]``."""
        return self._run(x, ["Mixed_5c"])["Mixed_5c"]

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1024-d clip descriptor: Mixed_5c averaged over time and space ``[N, 1024]``."""
        return self.forward_features(x).mean(dim=(2, 3, 4))

    def per_time_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits before the mean over time ``[N, num_classes, T'']``."""
        return self.Logits(self.forward_features(x))

    # -- head and input checks ----------------------------------------------------------------------

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits layer with a freshly initialised one for ``num_classes`` classes."""
        if "Logits" not in self.endpoints:
            raise ValueError("this model was built without the Logits head")
        old = self.Logits.Conv3d_0c_1x1.conv_3d
        new = nn.Conv3d(old.in_channels, num_classes, 1, bias=True).to(old.weight.device, old.weight.dtype)
        nn.init.trunc_normal_(new.weight, std=0.01)
        nn.init.zeros_(new.bias)
        self.Logits.Conv3d_0c_1x1.conv_3d = new
        self.num_classes = num_classes

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor [N, C, T, H, W], got {type(x).__name__}")
        if x.dim() != 5:
            hint = " (add a batch axis with clip.unsqueeze(0))" if x.dim() == 4 else ""
            raise ValueError(f"expected a 5-D clip [N, C, T, H, W], got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_channels:
            hint = ""
            if x.shape[-1] == self.in_channels:
                hint = " (channels look last: permute NTHWC to NCTHW with clip.permute(0, 4, 1, 2, 3))"
            raise ValueError(
                f"expected {self.in_channels} channels on axis 1 ({'RGB' if self.in_channels == 3 else 'flow'}), "
                f"got shape {tuple(x.shape)}{hint}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point clip in [-1, 1], got {x.dtype}; convert uint8 frames with "
                f"i3d_torch.core.transforms.rgb_to_model_input"
            )
        if x.numel() == 0:  # N or T (or H, W) of 0: torch would fail deep inside with an aminmax() or conv error
            raise InputError(f"empty clip: shape {tuple(x.shape)} [N, C, T, H, W] has an axis of size 0")
        parameter = next(self.parameters(), None)
        if parameter is not None and x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
            # No silent cast: a float64 clip would lose precision the caller asked for, and a float16 one on a
            # float32 model is usually a forgotten model.half(). Under autocast torch casts per op itself.
            raise InputError(
                f"clip dtype {str(x.dtype).replace('torch.', '')} differs from the model's "
                f"{str(parameter.dtype).replace('torch.', '')}; convert one of them (clip.to(torch.float32) or "
                f"model.to(dtype)), or run under torch.autocast"
            )
        if self.check_values and not (input_trusted() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            for message in check_model_input(x):
                warnings.warn(message, stacklevel=4)

    # -- inference-time BatchNorm folding -----------------------------------------------------------

    @torch.no_grad()
    def fuse(self) -> "InceptionI3d":
        """Fold every eval-mode BatchNorm into its convolution (inference only; returns self).

        conv(x) * s + (b - m * s) with s = 1 / sqrt(v + eps): the conv gains a bias and the BN becomes an
        identity. Irreversible: call on a copy if you will train again.
        """
        if self.training:
            raise RuntimeError("fuse() is for inference: call model.eval() first")
        for unit in self.modules():
            if isinstance(unit, Unit3D) and not isinstance(unit.batch_norm, nn.Identity):
                weight, bias = unit.folded_weight_and_bias()
                unit.conv_3d.weight = nn.Parameter(weight)
                unit.conv_3d.bias = nn.Parameter(bias)
                unit.batch_norm = nn.Identity()
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


