"""Parity of the PyTorch model with TensorFlow, endpoint by endpoint (``i3d-torch parity``), and the gated
conversion that writes a converted file only when it agrees with TensorFlow (``i3d-torch convert --verify-tf``).

The PyTorch model and the TF reference (:mod:`i3d_torch.verification.tf_reference`, DeepMind's graph in raw ``tf.nn``
ops) are built from the same source variables and run on the same clip; every endpoint both can compute
is compared. With ``--tf-module`` the comparison is instead against a TF-Hub module's ``default``
signature, which exposes only the logits.

Bounds (float32, CPU):

* ``Logits``: max |PyTorch - TF| <= 1e-4 (absolute), the project's parity promise. ``Predictions`` (the
  softmax) has the same bound: softmax is 1/2-Lipschitz in the max norm, so it is implied by the logits.
* Intermediate endpoints: max |PyTorch - TF| <= 2e-5 x max |TF endpoint|. Their magnitudes depend on
  the weights (single to double digits), so an absolute bound would be meaningless (random flow weights
  reach 1.2e-4 absolute at Mixed_4f, at 3.6e-6 of its peak). float32 has a relative precision of 6e-8;
  each endpoint sums thousands of products (fan-in up to 3x3x3x832) through up to 20 layers, in different
  orders in oneDNN and PyTorch, which measured 1e-7 to 4.7e-6 of the peak on random and real weights
  (docs/parity.md). 2e-5 leaves a margin of 4x for other CPUs and libraries while still catching any real
  error: a 1% error in one BatchNorm variance, a transposed kernel, a wrong padding or BN epsilon all give
  1e-3 or more.

"Relative difference" throughout is max |PyTorch - TF| / max |TF|, relative to the endpoint's peak
magnitude: an element-wise ratio is meaningless where ReLU outputs are exactly zero.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from i3d_torch.core.errors import ConversionError, I3DError, InputError, WeightsError, first_line
from i3d_torch.core.model import ENDPOINTS, InceptionI3d

__all__ = [
    "LOGITS_ATOL",
    "ENDPOINT_RTOL",
    "EndpointDiff",
    "comparable_endpoints",
    "compare_arrays",
    "run_both",
    "compare_endpoints",
    "compare_logits",
    "verify_against_tf",
    "convert_and_verify",
    "format_table",
    "tfhub_logits_function",
    "load_tfhub_module",
]

#: Absolute bound on the logits (and the softmax), float32 on CPU.
LOGITS_ATOL = 1e-4
#: Bound on intermediate endpoints, as a fraction of the endpoint's peak |value| (see the module docstring).
ENDPOINT_RTOL = 2e-5
HEAD_ENDPOINTS = ("Logits", "Predictions")


@dataclass(frozen=True)
class EndpointDiff:
    """One row of a parity table."""

    endpoint: str
    shape: Tuple[int, ...]  # TF layout: [N, T, H, W, C] or [N, K]
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / peak
    peak: float  # max |reference|
    bound: float  # the largest max_abs_diff allowed
    ok: bool

    def to_dict(self) -> dict:
        row = asdict(self)
        row["shape"] = list(self.shape)
        return row


def endpoint_bound(endpoint: str, peak: float) -> float:
    """The largest max |diff| allowed for ``endpoint`` whose reference peaks at ``peak``."""
    return LOGITS_ATOL if endpoint in HEAD_ENDPOINTS else ENDPOINT_RTOL * peak


def comparable_endpoints(t: int, h: int, w: int) -> Tuple[str, ...]:
    """Endpoints TF can compute for a (T, H, W) clip: all 18 when DeepMind's head is defined (at least 9
    frames, 193..224 pixels square), otherwise those up to Mixed_5c."""
    from i3d_torch.verification.tf_reference import logits_computable

    last = "Predictions" if logits_computable(t, h, w) else "Mixed_5c"
    return ENDPOINTS[: ENDPOINTS.index(last) + 1]


def compare_arrays(endpoint: str, ours: np.ndarray, reference: np.ndarray) -> EndpointDiff:
    """Compare one endpoint (both in TF layout) and judge it against its bound."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"{endpoint}: shapes differ, PyTorch {ours.shape} vs TF {reference.shape}")
    max_abs = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
    peak = float(np.max(np.abs(reference))) if reference.size else 0.0
    bound = endpoint_bound(endpoint, peak)
    finite = bool(np.isfinite(ours).all() and np.isfinite(reference).all())
    return EndpointDiff(
        endpoint=endpoint,
        shape=tuple(int(d) for d in reference.shape),
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else float("inf")),
        peak=peak,
        bound=bound,
        ok=finite and max_abs <= bound,
    )


def _to_tf_layout(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().float().numpy()
    return array.transpose(0, 2, 3, 4, 1) if array.ndim == 5 else array  # NCTHW -> NTHWC


def run_both(
    torch_model: InceptionI3d,
    tf_model,
    clip: torch.Tensor,
    endpoints: Optional[Sequence[str]] = None,
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """One pass of ``clip`` (``[N, C, T, H, W]`` in [-1, 1]) through each model: (PyTorch, TF) endpoints as
    numpy arrays in TF layout (``[N, T, H, W, C]``; ``[N, K]`` for the head).

    ``tf_model`` is a :class:`~i3d_torch.verification.tf_reference.TFInceptionI3d`. ``endpoints`` defaults to every
    endpoint TF can compute for the clip's size (:func:`comparable_endpoints`).
    """
    if clip.dim() != 5:
        raise InputError(f"expected a clip [N, C, T, H, W], got shape {tuple(clip.shape)}")
    names = list(endpoints or comparable_endpoints(*clip.shape[-3:]))
    last = max(names, key=ENDPOINTS.index)
    clip = clip.detach().float().cpu()
    with torch.no_grad():
        ours = torch_model.eval().extract_endpoints(clip, names)
    theirs = tf_model(clip.permute(0, 2, 3, 4, 1).numpy(), last)
    return {n: _to_tf_layout(ours[n]) for n in names}, {n: theirs[n].numpy() for n in names}


def compare_endpoints(
    torch_model: InceptionI3d,
    tf_model,
    clip: torch.Tensor,
    endpoints: Optional[Sequence[str]] = None,
) -> List[EndpointDiff]:
    """Run ``clip`` through both models (see :func:`run_both`); one row per endpoint, judged against its bound."""
    ours, theirs = run_both(torch_model, tf_model, clip, endpoints)
    return [compare_arrays(name, ours[name], theirs[name]) for name in ours]


def compare_logits(
    torch_model: InceptionI3d, logits_fn: Callable[[np.ndarray], np.ndarray], clip: torch.Tensor
) -> EndpointDiff:
    """Compare the time-averaged logits with any TF logits function of an NTHWC array in [-1, 1]
    (a TF-Hub module's ``default`` signature, see :func:`tfhub_logits_function`)."""
    clip = clip.detach().float().cpu()
    with torch.no_grad():
        ours = torch_model.eval()(clip)
    theirs = np.asarray(logits_fn(clip.permute(0, 2, 3, 4, 1).numpy()))
    return compare_arrays("Logits", ours.numpy(), theirs)


def tfhub_logits_function(handle: str, input_range: str = "symmetric") -> Callable[[np.ndarray], np.ndarray]:
    """The ``default`` signature of a TF-Hub I3D module (handle or directory) as a numpy logits function.

    ``input_range="symmetric"`` feeds the clip as it is, in [-1, 1] (what DeepMind's graph expects; see
    docs/parity.md, "Input range of the TF-Hub module"); ``"unit"`` feeds ``(x + 1) / 2`` in [0, 1], as
    the TF-Hub tutorial does.
    """
    if input_range not in ("symmetric", "unit"):
        raise InputError(f"input_range must be 'symmetric' or 'unit', got {input_range!r}")
    tf = _import_tensorflow("comparing with a TF-Hub module")
    try:
        signature = load_tfhub_module(handle).signatures["default"]
    except I3DError:
        raise
    except Exception as exc:  # missing directory, not a SavedModel, no default signature
        raise WeightsError(f"cannot load the TF-Hub module's default signature: {first_line(exc)}", handle) from None
    input_names = list(signature.structured_input_signature[1])
    if len(input_names) != 1:
        raise WeightsError(f"expected one video input in the default signature, found {input_names}", handle)

    def logits(video: np.ndarray) -> np.ndarray:
        x = video if input_range == "symmetric" else (video + 1.0) / 2.0
        return signature(**{input_names[0]: tf.constant(x, tf.float32)})["default"].numpy()

    return logits


def load_tfhub_module(handle: str):
    """Load a TF-Hub module as ``hub.load`` does: a local directory directly with TensorFlow (TF1 Hub
    modules, marked by ``tfhub_module.pb``, with the empty tag set), a handle through ``tensorflow_hub``
    (which downloads and caches it). Directories do not need ``tensorflow_hub`` at all."""
    tf = _import_tensorflow("loading a TF-Hub module")
    directory = Path(handle)
    if directory.is_dir():
        tags = [] if (directory / "tfhub_module.pb").exists() else None
        return tf.saved_model.load(str(directory), tags=tags)
    try:
        import tensorflow_hub as hub
    except ImportError as exc:
        # tensorflow_hub 0.16 imports pkg_resources, which setuptools >= 81 no longer ships.
        raise I3DError(
            f"resolving a TF-Hub handle needs tensorflow_hub, which failed to import ({exc}); if it is "
            f"pkg_resources: pip install 'setuptools<81'; or download the module and pass its directory"
        ) from None
    return hub.load(handle)


def _import_tensorflow(purpose: str):
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise I3DError(f"{purpose} needs TensorFlow: pip install 'i3d-torch[tf]' ({exc})") from None
    return tf


# ---------------------------------------------------------------------------------------------------
# The conversion gate
# ---------------------------------------------------------------------------------------------------


def verification_clip(in_channels: int, seed: int = 0) -> torch.Tensor:
    """A fixed random clip of the smallest size TF's head accepts (9 x 193 x 193), values in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, in_channels, 9, 193, 193, generator=generator) * 2 - 1


def verify_against_tf(
    model: InceptionI3d, variables: Mapping[str, np.ndarray], clip: Optional[torch.Tensor] = None
) -> List[EndpointDiff]:
    """The conversion gate: every endpoint within bounds of the TF reference built from the same source
    ``variables``, or :class:`ConversionError` naming the failing endpoints."""
    from i3d_torch.verification.tf_reference import TFInceptionI3d

    try:
        reference = TFInceptionI3d(variables)
    except ValueError as exc:
        raise ConversionError(f"cannot build the TF reference from the source: {exc}") from None
    rows = compare_endpoints(model, reference, clip if clip is not None else verification_clip(model.in_channels))
    failed = [r for r in rows if not r.ok]
    if failed:
        raise ConversionError(
            "PyTorch differs from the TF reference: "
            + "; ".join(f"{r.endpoint} max|diff| {r.max_abs_diff:.3g} > {r.bound:.3g}" for r in failed)
        )
    return rows


def convert_and_verify(source: os.PathLike, out: os.PathLike, *, name: Optional[str] = None, log=print) -> Path:
    """Convert ``source`` (:func:`i3d_torch.weights.convert.prepare_conversion`) and write ``out`` only when the
    converted model agrees with the TF reference built from the same source variables: logits within 1e-4,
    every other endpoint within 2e-5 of its peak (see docs/parity.md for why intermediate bounds are relative).
    Needs TensorFlow. Writes nothing on any problem."""
    from i3d_torch.weights.convert import prepare_conversion, write_converted

    converted = prepare_conversion(source, name=name)
    verify_against_tf(converted.model, converted.source.variables)
    return write_converted(converted, out, log=log)


# ---------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------


def format_table(rows: Sequence[EndpointDiff]) -> str:
    lines = [
        f"{'endpoint':<18} {'shape (TF layout)':<26} {'peak':>10} {'max abs diff':>13} {'max rel diff':>13} "
        f"{'bound':>10}  ok"
    ]
    for r in rows:
        shape = "x".join(str(d) for d in r.shape)
        lines.append(
            f"{r.endpoint:<18} {shape:<26} {r.peak:>10.4g} {r.max_abs_diff:>13.3e} {r.max_rel_diff:>13.3e} "
            f"{r.bound:>10.2e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Where the TF side comes from
# ---------------------------------------------------------------------------------------------------


def source_for_weights(weights, explicit: Optional[str] = None):
    """The conversion source (``i3d_torch.weights.convert.Source``) the given weights were converted from.

    An explicit path wins, but must have the sha256 the weights file records (when it records one). A
    registry entry with an automatic fetch (``rgb_kinetics400``) uses its cached, checksummed source archive.
    """
    from i3d_torch.weights.convert import read_source
    from i3d_torch.weights.registry import fetch_source_archive, read_metadata

    recorded = None
    if weights.path.is_file():
        recorded = read_metadata(weights.path).get("source_sha256") or None
    if explicit:
        source = read_source(explicit)
        if recorded and source.sha256 != recorded:
            raise WeightsError(
                f"source sha256 {source.sha256} differs from the {recorded} recorded in {weights.path.name}: "
                f"these weights were not converted from it",
                explicit,
            )
        return source
    if weights.fetch:
        source = read_source(fetch_source_archive(weights.fetch, progress=True))
        if source.sha256 != weights.fetch["member_sha256"]:
            raise WeightsError(
                f"source sha256 {source.sha256} differs from the manifest's {weights.fetch['member_sha256']}"
            )
        return source
    hint = weights.source.get("source") or weights.source.get("deepmind_checkpoint") or "the checkpoint it came from"
    raise WeightsError(
        f"the TF side needs the source {weights.name} was converted from ({hint}); pass it with --source PATH, "
        f"or compare against a TF-Hub module with --tf-module"
    )


def load_clip(path: str, in_channels: int) -> torch.Tensor:
    """A clip for the comparison: ``.npy`` of model input ``[T, H, W, C]`` / ``[N, T, H, W, C]`` in [-1, 1],
    or (RGB) a video, GIF or frame folder, every frame at its stored size (no resampling, resizing or
    cropping: parity compares the networks, not the preprocessing), mapped to [-1, 1]."""
    from i3d_torch.core.transforms import rgb_to_model_input
    from i3d_torch.core.video import read_video

    file = Path(path)
    if file.suffix == ".npy":
        if not file.is_file():
            raise FileNotFoundError(2, "No such clip", str(file))
        array = np.load(file, allow_pickle=False)
        if array.ndim == 4:
            array = array[None]
        if array.ndim != 5 or array.shape[-1] != in_channels:
            raise InputError(
                f"expected [T, H, W, {in_channels}] or [N, T, H, W, {in_channels}], got {array.shape}", file
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 4, 1, 2, 3).contiguous()
    if in_channels != 3:
        raise InputError("a flow model needs a .npy clip of flow model input [T, H, W, 2] in [-1, 1]", file)
    frames, _ = read_video(file, fps=None, short_side=None)
    return rgb_to_model_input(frames)


def random_clip(in_channels: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, in_channels, frames, height, width, generator=generator) * 2 - 1
