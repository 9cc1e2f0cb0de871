"""The fused unit: DeepMind's conv + BatchNorm + ReLU as one oneDNN op for CPU inference.

BatchNorm is folded into the convolution (:meth:`Unit3D.folded_weight_and_bias`), the folded weights are
pre-packed once per input shape into oneDNN's blocked layout, the ReLU is fused, activations stay
channels-last-3d; the 3x3x3 units and the 7x7x7 stride-2 stem compute as temporal Winograd
(:mod:`i3d_torch.backends.cpu.winograd`) where the clip is long enough for it to pay off. The parameters are
not touched: the packed copy (a "plan") is kept outside the module, so state_dict, deepcopy and pickling
never see oneDNN's opaque tensors, and it is rebuilt whenever a parameter or BatchNorm statistic changes.
The Winograd convolutions borrow their working buffers from the model's :class:`Scratch`.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from i3d_torch.backends.cpu.dispatch import engine_applies
from i3d_torch.backends.cpu.scratch import Scratch
from i3d_torch.backends.cpu.switches import winograd_enabled
from i3d_torch.backends.cpu.winograd import TemporalWinogradConv, temporal_winograd_applies
from i3d_torch.core.model import Unit3D, same_padding

__all__ = ["CpuUnit3D", "plan_kind", "share_scratch", "scratch_of"]

# The plan of each unit, keyed by the unit and entries gone with it: (key, plan), the plan either
# (packed weight, bias) for oneDNN's direct convolution or a TemporalWinogradConv.
_PLANS: "weakref.WeakKeyDictionary[Unit3D, tuple]" = weakref.WeakKeyDictionary()

# The working memory each unit borrows for temporal Winograd: one Scratch shared by the units of a model
# (they run one after another), outside the modules for the same reasons as the plans.
_SCRATCH: "weakref.WeakKeyDictionary[Unit3D, Scratch]" = weakref.WeakKeyDictionary()


def share_scratch(units, scratch: Scratch) -> None:
    """Give ``units`` that have none yet ``scratch`` as their Winograd working memory."""
    for unit in units:
        _SCRATCH.setdefault(unit, scratch)


def scratch_of(unit: nn.Module) -> Optional[Scratch]:
    """The unit's Winograd working memory, or None (its buffers then come from ``malloc`` on every call)."""
    return _SCRATCH.get(unit)


def plan_kind(unit: nn.Module) -> Optional[str]:
    """Which engine plan ``unit`` used on its last fused call: ``"winograd"``, ``"direct"`` (oneDNN's
    convolution), or None if it has not run on the engine since its plan was last cleared."""
    cached = _PLANS.get(unit)
    if cached is None:
        return None
    return "winograd" if isinstance(cached[1], TemporalWinogradConv) else "direct"


def _zero_pad_channels_last(x: torch.Tensor, pads: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """``x`` zero-padded by (before, after) on T, H, W, in channels-last-3d memory, with one copy of ``x``."""
    n, c = x.shape[:2]
    padded_size = [size + before + after for size, (before, after) in zip(x.shape[2:], pads)]
    padded = torch.empty([n, c] + padded_size, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    padded.zero_()
    interior = padded[(slice(None), slice(None)) + tuple(slice(b, b + size) for size, (b, _) in zip(x.shape[2:], pads))]
    interior.copy_(x)
    return padded


class CpuUnit3D(Unit3D):
    """A :class:`Unit3D` that runs as one fused oneDNN op in eligible CPU inference calls
    (:func:`i3d_torch.backends.cpu.dispatch.engine_applies`) and as the plain conv, BatchNorm and ReLU
    otherwise. Built from a unit by :meth:`from_unit`, sharing its children, so parameter names and
    training are those of the unit it replaces."""

    @classmethod
    def from_unit(cls, unit: Unit3D) -> "CpuUnit3D":
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.conv_3d = unit.conv_3d
        fused.batch_norm = unit.batch_norm
        fused.train(unit.training)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if engine_applies(self, x):
            return self._fused_forward(x)
        return super().forward(x)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv_3d
        pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[-3:], conv.kernel_size, conv.stride)]
        if all(before == after for before, after in pads):
            x = x.contiguous(memory_format=torch.channels_last_3d)
            padding = [before for before, _ in pads]
            plan = self._plan(tuple(x.shape), padding)
            if isinstance(plan, TemporalWinogradConv):
                return plan(x, scratch=_SCRATCH.get(self))
        else:  # asymmetric TF padding (the strided convs): pad explicitly, in the same copy as the layout change
            padding = [0, 0, 0]
            padded_shape = tuple(x.shape[:2]) + tuple(n + sum(p) for n, p in zip(x.shape[2:], pads))
            plan = self._plan(padded_shape, padding)
            if isinstance(plan, TemporalWinogradConv):  # the stem: pads in the copy that pairs its frames
                return plan(x, explicit_padding=pads, scratch=_SCRATCH.get(self))
            x = _zero_pad_channels_last(x, pads)
        weight, bias = plan
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, padding, list(conv.stride), [1, 1, 1], 1, "relu", [], ""
        )

    def _plan(self, input_shape: Tuple[int, ...], padding: List[int]):
        """The folded weights prepared for one input shape: ``(packed weight, bias)`` for the direct oneDNN
        convolution, or a :class:`TemporalWinogradConv` for the convolutions that take it."""
        # Key: the input shape (oneDNN picks the packed layout for it) and the identity and version of
        # every source tensor, so an optimizer step, load_state_dict or .to() invalidates the copy.
        conv, bn = self.conv_3d, self.batch_norm
        sources = [conv.weight, conv.bias]
        if not isinstance(bn, nn.Identity):  # not yet folded by InceptionI3d.fuse()
            sources += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
        sources = [t for t in sources if t is not None]
        winograd = winograd_enabled() and temporal_winograd_applies(
            conv.kernel_size, conv.stride, padding, input_shape[2:]
        )
        if any(t.is_inference() for t in sources):
            # Parameters made under torch.inference_mode() have no version counter, so an in-place change
            # could not be seen: fold and pack on every call instead of caching (correct, a bit slower).
            key = None
        else:
            key = (input_shape, tuple(padding), winograd, tuple((t.data_ptr(), t._version) for t in sources))
        cached = _PLANS.get(self)
        if key is None or cached is None or cached[0] != key:
            weight, bias = self.folded_weight_and_bias()
            if winograd:
                plan = TemporalWinogradConv(weight, bias, input_shape, conv.stride, padding)
            else:
                weight = weight.contiguous(memory_format=torch.channels_last_3d)
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, padding, list(conv.stride), [1, 1, 1], 1, list(input_shape)
                )
                plan = (packed, None if bias is None else bias.contiguous())
            cached = _PLANS[self] = (key, plan)
        return cached[1]
