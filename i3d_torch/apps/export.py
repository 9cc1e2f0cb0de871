"""Export I3D for deployment without this package: ONNX (run by onnxruntime) and ``torch.export`` programs.

Both exports take a copy of the model with BatchNorm folded into the convolutions (:meth:`InceptionI3d.fuse`)
and the input range checks off, so the graph is conv(+bias) -> ReLU, max-pool, concat, the head. A model with
the CPU engine (as :func:`~i3d_torch.weights.load_model` returns it) exports the same graph: the engine stands
aside while a model is traced or exported. TF "SAME" padding is computed from the input shape when the graph
is traced:

* ``dynamic=False`` (default): the graph is for one input shape ``[batch, C, frames, height, width]``.
* ``dynamic=True``: batch and time are free. Time must then be a multiple of 8 (at least 16): the
  padding of the three time-strided layers depends only on T mod 8, and with T = 8k it is the same for
  every k, so one graph is exact for all of them. Other lengths need a static export of their own.

ONNX runs with :class:`OnnxRunner` (onnxruntime, CPU). Every file is written atomically.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.core.defaults import CROP_SIZE
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_path
from i3d_torch.core.model import InceptionI3d

__all__ = ["prepare_for_export", "export_program", "save_program", "export_onnx", "OnnxRunner", "DYNAMIC_T_MULTIPLE"]

PathLike = Union[str, "os.PathLike[str]"]

#: With ``dynamic=True`` the clip length must be a multiple of this (the total time stride up to Mixed_5c).
DYNAMIC_T_MULTIPLE = 8
#: ONNX operator set written by :func:`export_onnx`.
ONNX_OPSET = 18
#: Name of the exported graph's input and output.
INPUT_NAME, OUTPUT_NAME = "clip", "logits"


def prepare_for_export(model: InceptionI3d) -> InceptionI3d:
    """A copy of ``model`` for export: eval mode, BatchNorm folded, input value checks off, on CPU float32."""
    if not isinstance(model, InceptionI3d):
        raise InputError(f"expected an InceptionI3d, got {type(model).__name__}")
    prepared = copy.deepcopy(model).to("cpu", torch.float32).eval()
    prepared.check_values = False
    return prepared.fuse()


def example_input(
    model: InceptionI3d, frames: int = 64, height: int = CROP_SIZE, width: int = CROP_SIZE, batch: int = 1
) -> torch.Tensor:
    """A deterministic input in [-1, 1] of the export shape ``[batch, C, frames, height, width]``."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, model.in_channels, frames, height, width)
    return torch.rand(shape, generator=generator) * 2 - 1


def _check_dynamic_frames(frames: int) -> None:
    if frames % DYNAMIC_T_MULTIPLE or frames < 2 * DYNAMIC_T_MULTIPLE:
        raise InputError(
            f"dynamic export traces with a clip length that is a multiple of {DYNAMIC_T_MULTIPLE} and at least "
            f"{2 * DYNAMIC_T_MULTIPLE}, got frames={frames}"
        )


def _dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=1024)
    # T = 8 * k: every time-strided layer then pads the same way for every k (see the module docstring).
    time_blocks = torch.export.Dim("time_blocks", min=2, max=512)
    return ({0: batch, 2: DYNAMIC_T_MULTIPLE * time_blocks},)


def export_program(
    model: InceptionI3d,
    *,
    frames: int = 64,
    height: int = CROP_SIZE,
    width: int = CROP_SIZE,
    batch: int = 1,
    dynamic: bool = False,
) -> torch.export.ExportedProgram:
    """``torch.export`` of the BN-folded model for ``[batch, C, frames, height, width]`` inputs."""
    prepared = prepare_for_export(model)
    if dynamic:
        _check_dynamic_frames(frames)
    # torch.export specialises a dimension whose example size is 1, so a dynamic batch is traced with 2.
    x = example_input(prepared, frames, height, width, max(batch, 2) if dynamic else batch)
    with torch.no_grad():
        return torch.export.export(prepared, (x,), dynamic_shapes=_dynamic_shapes() if dynamic else None, strict=False)


def save_program(model: InceptionI3d, path: PathLike, **export_kwargs) -> Path:
    """Write :func:`export_program`'s program to ``path`` (``.pt2``; load with ``torch.export.load``)."""
    program = export_program(model, **export_kwargs)
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    return Path(path)


def export_onnx(
    model: InceptionI3d,
    path: PathLike,
    *,
    frames: int = 64,
    height: int = CROP_SIZE,
    width: int = CROP_SIZE,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = ONNX_OPSET,
) -> Path:
    """Write the BN-folded model as one self-contained ONNX file (input ``clip`` NCTHW, output ``logits``)."""
    program = export_program(model, frames=frames, height=height, width=width, batch=batch, dynamic=dynamic)
    onnx_program = torch.onnx.export(
        program,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    with atomic_path(path) as tmp:
        onnx_program.save(tmp, external_data=False)
    return Path(path)


class OnnxRunner:
    """An onnxruntime CPU session of an exported I3D: ``runner(clip)`` -> logits ``[N, K]`` as a tensor.

    Args:
        path: the ``.onnx`` file from :func:`export_onnx`.
        threads: intra-op threads (default: onnxruntime's choice, one per core).
    """

    def __init__(self, path: PathLike, threads: Optional[int] = None):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError("ONNX file not found", path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_shape: Tuple = tuple(spec.shape)

    def __call__(self, clip: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        array = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
        array = np.ascontiguousarray(array, dtype=np.float32)
        self._check_shape(array.shape)
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)

    def _check_shape(self, shape: Sequence[int]) -> None:
        fits = len(shape) == len(self.input_shape) and all(
            not isinstance(want, int) or want == got for want, got in zip(self.input_shape, shape)
        )
        if not fits:
            message = f"clip of shape {tuple(shape)} does not fit the exported input {self.input_shape}"
            raise InputError(message, self.path)
