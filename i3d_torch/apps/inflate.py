"""ImageNet inflation: I3D weights bootstrapped from a 2D Inception-v1 (GoogLeNet).

Carreira & Zisserman, CVPR 2017, section 2.4: a 3D filter is the 2D filter repeated ``T`` times along
time and divided by ``T``. On a "boring" video (one image repeated in time) every inflated convolution
then gives the 2D response wherever its temporal window lies inside the video, so the network's
activations equal the 2D network's on that image, time step by time step, away from the temporal borders
(where SAME zero-padding enters a window).

What is inflated and how:

* Convolutions: ``Conv3d_1a_7x7`` gets 7 time taps, every 3x3 convolution 3, every 1x1 convolution 1 (the
  temporal sizes of DeepMind's graph; ``time_kernels`` overrides them for other graphs).
* BatchNorm: moving mean, moving variance and offset are copied. I3D's BatchNorm has no scale (as in
  DeepMind's graph and TF-slim's InceptionV1). A 2D BatchNorm *with* a scale ``gamma`` (torchvision) is
  folded exactly: ``gamma * (x - m) / sqrt(v + eps) + beta == (gamma x - gamma m) / sqrt(v + eps) + beta``,
  so the kernel is multiplied by ``gamma`` (per output channel), the moving mean becomes ``gamma * m``,
  and the variance and offset are kept. This is exact with running statistics (inference, or fine-tuning
  with ``--freeze-bn``); with batch statistics the layer re-normalises the scaled output, which only
  differs by the sign of ``gamma`` and an ``eps / gamma**2`` term.
* Pools have no weights; "the same for pooling" means each 2D pool keeps its spatial window and stride
  and gains a temporal extent: the first two max-pools (3x3 stride 2) become 1x3x3 with temporal stride 1
  (no early temporal pooling, as in the paper), ``MaxPool3d_4a`` is 3x3x3 stride 2, ``MaxPool3d_5a``
  2x2x2 stride 2, the branch pools 3x3x3 stride 1, and the 7x7 average pool before the logits 2x7x7. On a
  constant-in-time signal a max or mean over time is the signal itself, so they need no rescaling.
* Logits: a 2D classifier (slim ``Logits/Conv2d_0c_1x1``, torchvision ``fc``) becomes the 1x1x1 logits
  convolution when present; fine-tuning replaces it anyway (``model.reset_classifier``).

Namings understood: TF-slim's ``InceptionV1/Conv2d_1a_7x7/weights`` (HWIO kernels,
``BatchNorm/beta|moving_mean|moving_variance``, Mixed_5b's second branch-2 conv named ``Conv2d_0a_3x3``
as in DeepMind's I3D) and torchvision's ``GoogLeNet`` (``conv1.conv.weight``, ``conv1.bn.*``,
``inception3a.branch1`` / ``branch2.0-1`` / ``branch3.0-1`` / ``branch4.1``, ``fc``; its ``aux1``/``aux2``
heads are ignored). torchvision's branch3 is a 3x3 convolution (not the paper's 5x5), as is I3D's.
torchvision's pretrained GoogLeNet takes ImageNet-normalised input and turns it into ``[-1, 1]`` inside
(``transform_input``); I3D takes ``[-1, 1]`` directly, so the inflated weights see the range they were
trained on. torchvision pools with ``ceil_mode`` and no padding where I3D uses TF SAME padding, so the
spatial alignment of some pooled maps differs by a pixel at the borders.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from i3d_torch.core.errors import ConversionError
from i3d_torch.core.model import INCEPTION_WIDTHS, InceptionI3d

__all__ = ["inflate", "inflated_model", "detect_naming", "unit_table"]

#: The convolution units of the I3D graph, in order, with their TF-slim and torchvision 2D names.
#: (I3D module path, TF-slim scope, torchvision module)
_STEM: List[Tuple[str, str, str]] = [
    ("Conv3d_1a_7x7", "Conv2d_1a_7x7", "conv1"),
    ("Conv3d_2b_1x1", "Conv2d_2b_1x1", "conv2"),
    ("Conv3d_2c_3x3", "Conv2d_2c_3x3", "conv3"),
]
_TORCHVISION_BLOCKS = dict(
    zip(INCEPTION_WIDTHS, ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                           "inception4d", "inception4e", "inception5a", "inception5b"])
)

#: Source keys that are known and deliberately not used.
_IGNORED_PREFIXES = {
    "tf_slim": ("AuxLogits/", "global_step"),
    "torchvision": ("aux1.", "aux2."),
}


def unit_table() -> List[Tuple[str, str, str]]:
    """(I3D module, TF-slim scope, torchvision module) for every conv+BN unit of I3D."""
    table = list(_STEM)
    for block, tv in _TORCHVISION_BLOCKS.items():
        # DeepMind's I3D and TF-slim's InceptionV1 both name Mixed_5b's second branch-2 conv "0a_3x3".
        b2 = "0a_3x3" if block == "Mixed_5b" else "0b_3x3"
        table += [
            (f"{block}.Branch_0.Conv3d_0a_1x1", f"{block}/Branch_0/Conv2d_0a_1x1", f"{tv}.branch1"),
            (f"{block}.Branch_1.Conv3d_0a_1x1", f"{block}/Branch_1/Conv2d_0a_1x1", f"{tv}.branch2.0"),
            (f"{block}.Branch_1.Conv3d_0b_3x3", f"{block}/Branch_1/Conv2d_0b_3x3", f"{tv}.branch2.1"),
            (f"{block}.Branch_2.Conv3d_0a_1x1", f"{block}/Branch_2/Conv2d_0a_1x1", f"{tv}.branch3.0"),
            (f"{block}.Branch_2.Conv3d_{b2}", f"{block}/Branch_2/Conv2d_{b2}", f"{tv}.branch3.1"),
            (f"{block}.Branch_3.Conv3d_0b_1x1", f"{block}/Branch_3/Conv2d_0b_1x1", f"{tv}.branch4.1"),
        ]
    return table


def detect_naming(state_dict_2d: Mapping[str, object]) -> str:
    """``"tf_slim"`` or ``"torchvision"``, from the names of the stem convolution."""
    keys = set(state_dict_2d)
    if any(k.endswith("Conv2d_1a_7x7/weights") for k in keys):
        return "tf_slim"
    if "conv1.conv.weight" in keys:
        return "torchvision"
    raise ConversionError(
        "cannot tell the naming of this 2D state dict: expected TF-slim's 'InceptionV1/Conv2d_1a_7x7/weights' "
        "or torchvision's 'conv1.conv.weight'"
    )


def _tensor(value, key: str) -> torch.Tensor:
    """A CPU float tensor; float64 sources stay float64 (the inflation itself adds no rounding)."""
    if isinstance(value, np.ndarray) or np.isscalar(value):
        value = torch.as_tensor(np.asarray(value))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value if value.dtype == torch.float64 else value.to(torch.float32)
    raise ConversionError(f"{key}: expected an array or tensor, got {type(value).__name__}")


class _Source:
    """The 2D state dict with the keys taken so far, for the one-to-one check at the end."""

    def __init__(self, state_dict_2d: Mapping[str, object], naming: str):
        prefix = "InceptionV1/"
        self.values = {
            (k[len(prefix) :] if naming == "tf_slim" and k.startswith(prefix) else k): v
            for k, v in state_dict_2d.items()
        }
        self.naming = naming
        self.used: set = set()

    def take(self, key: str, required: bool = True) -> Optional[torch.Tensor]:
        if key not in self.values:
            if required:
                raise ConversionError(f"the {self.naming} state dict has no {key!r}")
            return None
        self.used.add(key)
        return _tensor(self.values[key], key)

    def check_all_used(self) -> None:
        ignored = _IGNORED_PREFIXES[self.naming]
        left = sorted(
            k for k in set(self.values) - self.used
            if not k.startswith(ignored) and not k.endswith("num_batches_tracked")
        )
        if left:
            raise ConversionError(
                f"{len(left)} tensor(s) of the 2D state dict map to nothing in I3D: {', '.join(left[:5])}"
                + (" ..." if len(left) > 5 else "")
            )

    # A unit's (kernel OIHW, BN scale or None, offset, mean, variance) in each naming.
    def unit(self, slim: str, tv: str):
        if self.naming == "tf_slim":
            kernel = self.take(f"{slim}/weights")
            if kernel.dim() != 4:
                raise ConversionError(f"{slim}/weights: expected a 4-D HWIO kernel, got shape {tuple(kernel.shape)}")
            kernel = kernel.permute(3, 2, 0, 1)  # HWIO -> OIHW
            bn = f"{slim}/BatchNorm"
            return (kernel, self.take(f"{bn}/gamma", required=False), self.take(f"{bn}/beta"),
                    self.take(f"{bn}/moving_mean"), self.take(f"{bn}/moving_variance"))
        return (self.take(f"{tv}.conv.weight"), self.take(f"{tv}.bn.weight", required=False),
                self.take(f"{tv}.bn.bias"), self.take(f"{tv}.bn.running_mean"), self.take(f"{tv}.bn.running_var"))

    def logits(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if self.naming == "tf_slim":
            weight = self.take("Logits/Conv2d_0c_1x1/weights", required=False)
            if weight is None:
                return None
            weight = weight.reshape(weight.shape[-2], weight.shape[-1]).t()  # [1,1,Cin,K] -> [K, Cin]
            return weight, self.take("Logits/Conv2d_0c_1x1/biases")
        weight = self.take("fc.weight", required=False)
        return None if weight is None else (weight, self.take("fc.bias"))


def _expected_shapes() -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = InceptionI3d(num_classes=1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def inflate(
    state_dict_2d: Mapping[str, object],
    *,
    naming: str = "auto",
    time_kernels: Optional[Mapping[str, int]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """An I3D state dict inflated from a 2D Inception-v1 state dict (see the module docs).

    Args:
        state_dict_2d: TF-slim variables (name -> array, with or without the ``InceptionV1/`` scope) or a
            torchvision GoogLeNet ``state_dict()``.
        naming: ``"auto"`` (detect), ``"tf_slim"`` or ``"torchvision"``.
        time_kernels: temporal kernel size per I3D unit (e.g. ``{"Conv3d_1a_7x7": 5}``) instead of the I3D
            graph's; such a state dict only fits a network built with those sizes.

    Returns the backbone (every conv and BatchNorm of ``InceptionI3d``) and, if the source has a
    classifier, the logits layer. Channel counts are checked against I3D's; any 2D tensor that maps to
    nothing is an error (the auxiliary heads excepted).
    """
    if naming == "auto":
        naming = detect_naming(state_dict_2d)
    if naming not in _IGNORED_PREFIXES:
        raise ConversionError(f"naming must be 'auto', 'tf_slim' or 'torchvision', got {naming!r}")
    source = _Source(state_dict_2d, naming)
    expected = _expected_shapes()
    overrides = dict(time_kernels or {})
    units = unit_table()
    unknown = sorted(set(overrides) - {i3d for i3d, _, _ in units})
    if unknown:
        raise ConversionError(f"time_kernels names no I3D unit: {', '.join(unknown)}")

    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for i3d, slim, tv in units:
        kernel, gamma, beta, mean, var = source.unit(slim, tv)
        name2d = slim if naming == "tf_slim" else tv
        out_c, in_c, t_graph, h, w = expected[f"{i3d}.conv_3d.weight"]
        if tuple(kernel.shape) != (out_c, in_c, h, w):
            raise ConversionError(
                f"{name2d}: kernel {tuple(kernel.shape)} (out, in, h, w) does not match I3D's {i3d} "
                f"({out_c}, {in_c}, {h}, {w}): not an Inception-v1 with I3D's channel counts"
            )
        for what, vector in (("offset", beta), ("moving mean", mean), ("moving variance", var), ("scale", gamma)):
            if vector is not None and tuple(vector.shape) != (out_c,):
                raise ConversionError(
                    f"{name2d}: BatchNorm {what} has shape {tuple(vector.shape)}, expected ({out_c},)"
                )
        if gamma is not None:
            # Fold the 2D BatchNorm's scale into the kernel and mean (exact with running statistics).
            kernel = kernel * gamma.view(-1, 1, 1, 1)
            mean = mean * gamma
        time = int(overrides.get(i3d, t_graph))
        if time < 1:
            raise ConversionError(f"time_kernels[{i3d!r}] must be >= 1, got {time}")
        # The paper's bootstrapping: repeat along time, divide by the temporal size.
        out[f"{i3d}.conv_3d.weight"] = (kernel.unsqueeze(2).repeat(1, 1, time, 1, 1) / time).contiguous()
        out[f"{i3d}.batch_norm.bias"] = beta.clone()
        out[f"{i3d}.batch_norm.running_mean"] = mean.clone()
        out[f"{i3d}.batch_norm.running_var"] = var.clone()
        out[f"{i3d}.batch_norm.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)

    logits = source.logits()
    if logits is not None:
        weight, bias = logits
        if weight.dim() != 2 or weight.shape[1] != 1024 or tuple(bias.shape) != (weight.shape[0],):
            raise ConversionError(
                f"classifier of shape {tuple(weight.shape)} with bias {tuple(bias.shape)}: expected [K, 1024] and [K]"
            )
        out["Logits.Conv3d_0c_1x1.conv_3d.weight"] = weight[:, :, None, None, None].contiguous()
        out["Logits.Conv3d_0c_1x1.conv_3d.bias"] = bias.clone()
    source.check_all_used()
    return out


def inflated_model(
    state_dict_2d: Mapping[str, object],
    *,
    num_classes: Optional[int] = None,
    naming: str = "auto",
    **model_kwargs,
) -> InceptionI3d:
    """An :class:`InceptionI3d` (eval mode) with the inflated weights.

    The classifier is the 2D one when the source has it and ``num_classes`` is None or equal to its size;
    otherwise a fresh logits layer for ``num_classes`` classes (400 when neither is given).
    """
    state = inflate(state_dict_2d, naming=naming)
    head = state.get("Logits.Conv3d_0c_1x1.conv_3d.weight")
    source_classes = head.shape[0] if head is not None else None
    keep_head = source_classes is not None and num_classes in (None, source_classes)
    if not keep_head:
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("Logits."))
    model = InceptionI3d(num_classes=source_classes if keep_head else (num_classes or 400), **model_kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("Logits.") for k in missing):
        raise ConversionError(f"inflated weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
