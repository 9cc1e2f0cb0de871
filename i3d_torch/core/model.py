"""Inflated 3D Inception-v1 (I3D).

Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset", CVPR 2017.
Written from the paper and from the graph DeepMind published in deepmind/kinetics-i3d (``i3d.py``,
Apache-2.0). Module attributes keep DeepMind's TensorFlow scope names (``Conv3d_1a_7x7``, ``Mixed_4f``,
``Branch_1.Conv3d_0b_3x3``, ``conv_3d``, ``batch_norm``) so that the converter's name table is short and
greppable.

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

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from i3d_torch.backends.cpu.allocator import keep_freed_memory
from i3d_torch.core.transforms import check_model_input
from i3d_torch.backends.cpu.winograd import TemporalWinogradConv, temporal_winograd_applies

__all__ = ["ENDPOINTS", "InceptionI3d", "Unit3D", "InceptionBlock", "MaxPool3dSame", "BatchNorm3dNoScale"]

# ---------------------------------------------------------------------------------------------------
# Architecture configuration, from DeepMind's i3d.py and Table 1 / Fig. 3 of the paper.
# ---------------------------------------------------------------------------------------------------

#: All 18 endpoints of the original graph, in order.
ENDPOINTS: Tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
    "Logits",
    "Predictions",
)

# Inception block widths: (branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 1x1).
INCEPTION_WIDTHS: Dict[str, Tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# (kernel, stride) of the four max-pools between stages.
MAX_POOLS: Dict[str, Tuple[Tuple[int, int, int], Tuple[int, int, int]]] = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}

#: Window of the final average pool (VALID) over (T, H, W) of Mixed_5c.
LOGITS_POOL: Tuple[int, int, int] = (2, 7, 7)

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
    size >= 1. The spatial and temporal strides up to Mixed_5c are 8 (time) and 32 (space), and every
    stage rounds up, so Mixed_5c has ceil(T/8) x ceil(H/32) x ceil(W/32) positions.
    """
    if endpoint not in ("Logits", "Predictions"):
        return (1, 1, 1)
    t, h, w = LOGITS_POOL
    return ((t - 1) * 8 + 1, (h - 1) * 32 + 1, (w - 1) * 32 + 1)


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
        if (
            self.kernel_size == (3, 3, 3)
            and self.stride == (1, 1, 1)
            and x.is_contiguous(memory_format=torch.channels_last_3d)
            and eager_cpu_inference(x)
        ):
            return _separable_max_pool_3x3x3(x)
        before = tuple(same_padding(n, k, s)[0] for n, k, s in zip(x.shape[-3:], self.kernel_size, self.stride))
        return F.max_pool3d(x, self.kernel_size, self.stride, padding=before, ceil_mode=True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def _separable_max_pool_3x3x3(x: torch.Tensor) -> torch.Tensor:
    """Stride-1 3x3x3 SAME max-pool of a channels-last clip as three 3-tap maxima, one axis at a time.

    Exact (a max of maxima). Each axis is one pass: the maximum over a 3-frame window (``unfold``, a strided
    view) for the interior, of the two existing neighbours at the ends (the -inf SAME pad never wins there).
    PyTorch's channels-last max_pool3d also computes an index tensor that inference drops: on Mixed_3's
    branch-3 pools (1x256x32x28x28) this is 7 against 17 ms, on Mixed_4's 1.3 against 3.2 ms (a reduction
    over two or three window axes at once is 10-30x slower than one at a time).
    """
    y = x.permute(0, 2, 3, 4, 1)  # N, T, H, W, C: a contiguous view of the channels-last memory
    for axis in (3, 2, 1):
        size = y.shape[axis]
        if size == 1:
            continue
        out = torch.empty_like(y)
        if size > 2:
            torch.amax(y.unfold(axis, 3, 1), dim=-1, out=out.narrow(axis, 1, size - 2))
        for end, neighbour in ((0, 1), (size - 1, size - 2)):
            torch.maximum(y.narrow(axis, end, 1), y.narrow(axis, neighbour, 1), out=out.narrow(axis, end, 1))
        y = out
    return y.permute(0, 4, 1, 2, 3)


def _zero_pad_channels_last(x: torch.Tensor, pads: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """``x`` zero-padded by (before, after) on T, H, W, in channels-last-3d memory, with one copy of ``x``."""
    n, c = x.shape[:2]
    padded_size = [size + before + after for size, (before, after) in zip(x.shape[2:], pads)]
    padded = torch.empty([n, c] + padded_size, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    padded.zero_()
    interior = padded[(slice(None), slice(None)) + tuple(slice(b, b + size) for size, (b, _) in zip(x.shape[2:], pads))]
    interior.copy_(x)
    return padded


def _same_pad_arg(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> List[int]:
    """``F.pad`` argument (last axis first) for TF SAME padding of a (T, H, W) shape."""
    arg: List[int] = []
    for n, k, s in reversed(list(zip(spatial, kernel, stride))):
        arg.extend(same_padding(n, k, s))  # no int(): keeps symbolic sizes symbolic for torch.export
    return arg


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (no scale) + ReLU: DeepMind's ``Unit3D`` with its defaults.

    In eval mode without autograd on CPU float32 (``model.eval()`` and ``torch.inference_mode()``), the unit
    runs as one oneDNN op instead (see :func:`onednn_inference_applies`): BatchNorm folded into the conv
    weights and bias, the weights pre-packed once into oneDNN's blocked layout, the ReLU fused, activations
    channels-last-3d; the 3x3x3 units and the 7x7x7 stride-2 stem compute as temporal Winograd
    (:mod:`i3d_torch.backends.cpu.winograd`) where the clip is long enough for it to pay off. The parameters are not
    touched; the folded copy is cached outside the module and rebuilt whenever a parameter or BN statistic
    changes, so training and fine-tuning see plain BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.conv_3d = Conv3dSame(in_channels, out_channels, tuple(kernel_size), tuple(stride))
        self.batch_norm = BatchNorm3dNoScale(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_inference_applies(self, x):
            return self._onednn_forward(x)
        return F.relu(self.batch_norm(self.conv_3d(x)), inplace=True)

    def folded_weight_and_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Conv weight and bias with the eval-mode BatchNorm folded in: conv(x) * s + (b - m * s),
        s = 1 / sqrt(v + eps). Used by :meth:`InceptionI3d.fuse` and the oneDNN inference path."""
        conv, bn = self.conv_3d, self.batch_norm
        if not isinstance(bn, BatchNorm3dNoScale):  # already fused
            return conv.weight, conv.bias
        scale = torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1, 1), bias

    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        keep_freed_memory()  # once per process: see i3d_torch.backends.cpu.allocator
        conv = self.conv_3d
        pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[-3:], conv.kernel_size, conv.stride)]
        if all(before == after for before, after in pads):
            x = x.contiguous(memory_format=torch.channels_last_3d)
            padding = [before for before, _ in pads]
            plan = self._inference_plan(tuple(x.shape), padding)
            if isinstance(plan, TemporalWinogradConv):
                return plan(x)
        else:  # asymmetric TF padding (the strided convs): pad explicitly, in the same copy as the layout change
            padding = [0, 0, 0]
            padded_shape = tuple(x.shape[:2]) + tuple(n + sum(p) for n, p in zip(x.shape[2:], pads))
            plan = self._inference_plan(padded_shape, padding)
            if isinstance(plan, TemporalWinogradConv):  # the stem: pads in the copy that pairs its frames
                return plan(x, explicit_padding=pads)
            x = _zero_pad_channels_last(x, pads)
        weight, bias = plan
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, list(conv.stride), [1, 1, 1], 1, "relu", [], ""
        )

    def _uses_temporal_winograd(self, size: Sequence[int], padding: List[int]) -> bool:
        conv = self.conv_3d
        return TEMPORAL_WINOGRAD and temporal_winograd_applies(conv.kernel_size, conv.stride, padding, size)

    def _inference_plan(self, input_shape: Tuple[int, ...], padding: List[int]):
        """The folded weights prepared for one input shape: ``(packed weight, bias)`` for the direct oneDNN
        convolution, or a :class:`TemporalWinogradConv` for the 3x3x3 convolutions that take it."""
        # Key: the input shape (oneDNN picks the packed layout for it) and the identity and version of
        # every source tensor, so an optimizer step, load_state_dict or .to() invalidates the copy.
        sources = [t for t in (self.conv_3d.weight, self.conv_3d.bias) if t is not None]
        if isinstance(self.batch_norm, BatchNorm3dNoScale):
            sources += [self.batch_norm.bias, self.batch_norm.running_mean, self.batch_norm.running_var]
        winograd = self._uses_temporal_winograd(input_shape[2:], padding)
        if any(t.is_inference() for t in sources):
            # Parameters made under torch.inference_mode() have no version counter, so an in-place change
            # could not be seen: fold and pack on every call instead of caching (correct, a bit slower).
            key = None
        else:
            key = (input_shape, tuple(padding), winograd, tuple((t.data_ptr(), t._version) for t in sources))
        cached = _ONEDNN_WEIGHTS.get(self)
        if key is None or cached is None or cached[0] != key:
            weight, bias = self.folded_weight_and_bias()
            if winograd:
                plan = TemporalWinogradConv(weight, bias, input_shape, self.conv_3d.stride, padding)
            else:
                weight = weight.contiguous(memory_format=torch.channels_last_3d)
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, padding, list(self.conv_3d.stride), [1, 1, 1], 1, list(input_shape)
                )
                plan = (packed, None if bias is None else bias.contiguous())
            cached = _ONEDNN_WEIGHTS[self] = (key, plan)
        return cached[1]


# Packed inference weights per Unit3D, outside the module so that state_dict, deepcopy and pickling of the
# model never see oneDNN's opaque tensors; entries go away with their module.
_ONEDNN_WEIGHTS: "weakref.WeakKeyDictionary[Unit3D, tuple]" = weakref.WeakKeyDictionary()


def _onednn_ops_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


#: Whether eval-mode inference without autograd on CPU takes the fused oneDNN path of :class:`Unit3D`. True
#: where this PyTorch build has oneDNN's fused convolution; set it to False to run the plain conv, BatchNorm
#: and ReLU modules instead (to compare, or to rule the fast path out when debugging).
ONEDNN_INFERENCE: bool = _onednn_ops_available()

#: Whether that path computes the 3x3x3 stride-1 convolutions and the stem with temporal Winograd (about half
#: the multiplications; see :mod:`i3d_torch.backends.cpu.winograd`) where the clip is long enough for it to pay off.
#: Set it to False for direct oneDNN convolutions everywhere (to compare).
TEMPORAL_WINOGRAD: bool = True


def onednn_inference_applies(unit: "Unit3D", x: torch.Tensor) -> bool:
    """Whether a unit takes the fused oneDNN path: eval mode, no autograd, float32 input and weights on
    CPU, not while being traced or exported (export sees the plain conv + BN + ReLU graph). Anything else
    (another dtype or device, mismatched input) takes the plain modules and their usual errors."""
    weight = unit.conv_3d.weight
    return (
        ONEDNN_INFERENCE
        and not unit.training
        and x.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and eager_cpu_inference(x)
    )


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """No autograd, a CPU tensor, and eager execution (not scripted, traced, compiled or exported): where the
    inference-only CPU kernels of this module (fused oneDNN units, separable pools) may replace the plain ops."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _is_exporting()
    )


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


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
    """Average pool 2x7x7 VALID, dropout, 1x1x1 conv with bias; returns per-time logits [N, K, T']."""

    def __init__(self, in_channels: int, num_classes: int, dropout_keep_prob: float, strict_tf_pooling: bool):
        super().__init__()
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")
        self.strict_tf_pooling = strict_tf_pooling
        # TF's argument is a keep-probability; PyTorch's Dropout takes the drop probability.
        self.dropout = nn.Dropout(p=1.0 - dropout_keep_prob)
        self.Conv3d_0c_1x1 = nn.Module()
        self.Conv3d_0c_1x1.conv_3d = nn.Conv3d(in_channels, num_classes, 1, bias=True)

    def pool_window(self, feature_size: Sequence[int]) -> Tuple[int, int, int]:
        if all(n >= k for n, k in zip(feature_size, LOGITS_POOL)):
            return LOGITS_POOL
        if self.strict_tf_pooling:
            t, h, w = min_input_size("Logits")
            raise ValueError(
                f"input too small for the Logits head: Mixed_5c is {tuple(feature_size)} (T', H', W') but its "
                f"2x7x7 VALID average pool (as in TF) needs at least {LOGITS_POOL}, i.e. a clip of at least "
                f"{t} frames and {h}x{w} pixels; loop the clip to more frames, or build the model with "
                f"strict_tf_pooling=False to clamp the pool (departs from TF)"
            )
        return tuple(min(n, k) for n, k in zip(feature_size, LOGITS_POOL))

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
        for name in self.endpoints:
            if name == "Conv3d_1a_7x7":
                module, channels = Unit3D(channels, 64, (7, 7, 7), (2, 2, 2)), 64
            elif name == "Conv3d_2b_1x1":
                module, channels = Unit3D(channels, 64), 64
            elif name == "Conv3d_2c_3x3":
                module, channels = Unit3D(channels, 192, (3, 3, 3)), 192
            elif name in MAX_POOLS:
                module = MaxPool3dSame(*MAX_POOLS[name])
            elif name in INCEPTION_WIDTHS:
                # DeepMind's graph names Mixed_5b's second branch-2 conv "Conv3d_0a_3x3" (a typo in the
                # original, kept in every checkpoint); we keep it so names map one to one.
                branch2 = "Conv3d_0a_3x3" if name == "Mixed_5b" else "Conv3d_0b_3x3"
                module = InceptionBlock(channels, INCEPTION_WIDTHS[name], branch2)
                channels = module.out_channels
            elif name == "Logits":
                module = LogitsHead(channels, num_classes, dropout_keep_prob, strict_tf_pooling)
            else:  # Predictions: softmax over the time-averaged logits, no parameters
                module = nn.Softmax(dim=1)
            self.add_module(name, module)
        self.num_features = 1024
        # Range/NaN checks on every input (a few ms on a 64-frame clip); off for benchmarks and export.
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
                # The oneDNN inference path runs channels-last; hand out the usual contiguous layout.
                out[name] = x.contiguous()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``final_endpoint``: with the default, the time-averaged logits ``[N, num_classes]``.

        Shapes for a 1x3x64x224x224 clip: Conv3d_1a 64x32x112x112, MaxPool3d_2a 64x32x56x56,
        Conv3d_2c 192x32x56x56, MaxPool3d_3a 192x32x28x28, Mixed_3c 480x32x28x28,
        MaxPool3d_4a 480x16x14x14, Mixed_4f 832x16x14x14, MaxPool3d_5a 832x8x7x7, Mixed_5c 1024x8x7x7,
        Logits 400.
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
        if self.check_values and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
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
            if isinstance(unit, Unit3D) and isinstance(unit.batch_norm, BatchNorm3dNoScale):
                weight, bias = unit.folded_weight_and_bias()
                unit.conv_3d.weight = nn.Parameter(weight)
                unit.conv_3d.bias = nn.Parameter(bias)
                unit.batch_norm = nn.Identity()
        return self


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


