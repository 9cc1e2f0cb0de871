"""The TensorFlow reference: DeepMind's I3D graph written again in TensorFlow 2 with raw ``tf.nn`` ops.

This is the yardstick the PyTorch model is measured against (see :mod:`i3d_torch.verification.parity`). It follows
DeepMind's ``i3d.py`` (deepmind/kinetics-i3d, Apache-2.0) op for op, without Sonnet:

* ``Unit3D``: ``tf.nn.conv3d(padding="SAME")`` without bias, then Sonnet v1's inference BatchNorm as
  ``tf.nn.batch_normalization(x, moving_mean, moving_variance, offset=beta, scale=None, 1e-3)``, then ReLU;
* max-pools ``tf.nn.max_pool3d(padding="SAME")``; Inception blocks concatenate four branches on channels;
* the head: ``tf.nn.avg_pool3d`` 2x7x7 VALID, dropout by keep-probability, a 1x1x1 conv with bias,
  ``tf.squeeze`` of the spatial axes [2, 3], mean over time (axis 1); Predictions is the softmax.

Input: float ``[N, T, H, W, C]`` (channels last, as TF has it) with values in ``[-1, 1]``.

Variables are ``tf.Variable`` objects named exactly as in DeepMind's checkpoints:
``RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w``, ``Flow/inception_i3d/...``, or with no prefix at all for
the Kinetics-600 checkpoint's layout (``Conv3d_1a_7x7/conv_3d/w``). They come from a dict of TF-named
numpy arrays whose names are relative to ``inception_i3d/`` (the ``Source.variables`` format of
:mod:`i3d_torch.weights.convert`), from a TF checkpoint read by TensorFlow itself
(:meth:`TFInceptionI3d.from_checkpoint`), or from a seed (:func:`random_variables`) for random-weight parity.

The reference can be written out the two ways DeepMind's weights exist in the wild: a TF1 name-keyed
checkpoint (:func:`write_tf1_checkpoint`, the layout of DeepMind's ``model.ckpt``) and a TF1-format
SavedModel with a ``default`` signature, like the TF-Hub ``i3d-kinetics-400`` module
(:meth:`TFInceptionI3d.export_hub_module`).

TensorFlow is imported on first use, so importing this module costs nothing until a reference is built.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from i3d_torch.core.fileio import atomic_path
from i3d_torch.core.model import ENDPOINTS, INCEPTION_WIDTHS, LOGITS_POOL, MAX_POOLS

__all__ = [
    "TFInceptionI3d",
    "variable_shapes",
    "random_variables",
    "write_tf1_checkpoint",
    "scope_prefix",
    "logits_computable",
]

BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm's default, used by DeepMind
STREAM_SCOPES = {"rgb": "RGB", "flow": "Flow"}

# (name, output channels, kernel, stride) of the stem units, in graph order.
STEM_UNITS: Tuple[Tuple[str, int, Tuple[int, int, int], Tuple[int, int, int]], ...] = (
    ("Conv3d_1a_7x7", 64, (7, 7, 7), (2, 2, 2)),
    ("Conv3d_2b_1x1", 64, (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", 192, (3, 3, 3), (1, 1, 1)),
)


def _tf():
    import tensorflow as tf  # deferred: TensorFlow is an optional dependency ("i3d-torch[tf]")

    return tf


def scope_prefix(scope: Optional[str]) -> str:
    """Full-name prefix of the variables: ``"RGB/inception_i3d/"``, ``"Flow/inception_i3d/"``, or ``""``.

    ``scope=None`` is the Kinetics-600 checkpoint's layout, whose names carry neither a stream scope nor
    ``inception_i3d/``.
    """
    return "" if scope is None else f"{scope}/inception_i3d/"


def _branch2_conv(block: str) -> str:
    # DeepMind's graph names Mixed_5b's second branch-2 conv "Conv3d_0a_3x3" (a typo kept in every checkpoint).
    return "Conv3d_0a_3x3" if block == "Mixed_5b" else "Conv3d_0b_3x3"


def _inception_units(block: str, in_channels: int) -> List[Tuple[str, int, int, int]]:
    """(unit scope, in channels, out channels, kernel size) of one Inception block's five conv units."""
    b0, b1a, b1b, b2a, b2b, b3 = INCEPTION_WIDTHS[block]
    return [
        (f"{block}/Branch_0/Conv3d_0a_1x1", in_channels, b0, 1),
        (f"{block}/Branch_1/Conv3d_0a_1x1", in_channels, b1a, 1),
        (f"{block}/Branch_1/Conv3d_0b_3x3", b1a, b1b, 3),
        (f"{block}/Branch_2/Conv3d_0a_1x1", in_channels, b2a, 1),
        (f"{block}/Branch_2/{_branch2_conv(block)}", b2a, b2b, 3),
        (f"{block}/Branch_3/Conv3d_0b_1x1", in_channels, b3, 1),
    ]


def _block_out_channels(block: str) -> int:
    b0, _, b1b, _, b2b, b3 = INCEPTION_WIDTHS[block]
    return b0 + b1b + b2b + b3


def variable_shapes(num_classes: int = 400, in_channels: int = 3) -> Dict[str, Tuple[int, ...]]:
    """Every variable of DeepMind's graph (names relative to ``inception_i3d/``) with its TF shape.

    Derived from the graph definition here, independently of the converter's name table, so a test can
    check one against the other. BatchNorm vectors are ``[C]`` as in the Kinetics-400 checkpoints.
    """
    shapes: Dict[str, Tuple[int, ...]] = {}

    def unit(scope: str, cin: int, cout: int, kernel: Sequence[int]) -> None:
        shapes[f"{scope}/conv_3d/w"] = (*kernel, cin, cout)
        for stat in ("beta", "moving_mean", "moving_variance"):
            shapes[f"{scope}/batch_norm/{stat}"] = (cout,)

    channels = in_channels
    for name in ENDPOINTS:
        if name in {s[0] for s in STEM_UNITS}:
            _, cout, kernel, _ = next(s for s in STEM_UNITS if s[0] == name)
            unit(name, channels, cout, kernel)
            channels = cout
        elif name in INCEPTION_WIDTHS:
            for scope, cin, cout, k in _inception_units(name, channels):
                unit(scope, cin, cout, (k, k, k))
            channels = _block_out_channels(name)
    shapes["Logits/Conv3d_0c_1x1/conv_3d/w"] = (1, 1, 1, channels, num_classes)
    shapes["Logits/Conv3d_0c_1x1/conv_3d/b"] = (num_classes,)
    return shapes


def random_variables(seed: int, num_classes: int = 400, in_channels: int = 3) -> Dict[str, np.ndarray]:
    """Random float32 weights in ``Source.variables`` format whose activations stay O(1) at every depth.

    Conv kernels are He-normal (std sqrt(2 / fan_in), which preserves the scale through a ReLU); BatchNorm
    moving variances are uniform in [0.5, 1.5] (positive, so the normalisation is defined), moving means
    and offsets normal with std 0.2; the logits kernel has std sqrt(1 / fan_in) and a small bias. With
    inputs uniform in [-1, 1], every endpoint then peaks in single or low double digits: neither vanishing
    (which would make a parity check vacuous) nor exploding (which would make float32 round-off dominate).
    """
    rng = np.random.default_rng(seed)
    variables: Dict[str, np.ndarray] = {}
    for name, shape in variable_shapes(num_classes, in_channels).items():
        if name.endswith("/conv_3d/w"):
            fan_in = int(np.prod(shape[:4]))
            gain = 1.0 if name.startswith("Logits/") else 2.0
            value = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        elif name.endswith("/moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("/conv_3d/b"):
            value = rng.normal(0.0, 0.1, shape)
        else:  # beta, moving_mean
            value = rng.normal(0.0, 0.2, shape)
        variables[name] = value.astype(np.float32)
    return variables


def logits_computable(t: int, h: int, w: int) -> bool:
    """Whether DeepMind's head is defined for a (T, H, W) clip: Mixed_5c must be at least 2x7x7 (the VALID
    average pool) and the pooled map exactly 1x1 in space (``tf.squeeze`` of axes [2, 3])."""
    t5, h5, w5 = -(-t // 8), -(-h // 32), -(-w // 32)
    kt, kh, kw = LOGITS_POOL
    return t5 >= kt and h5 == kh and w5 == kw


class TFInceptionI3d:
    """DeepMind's I3D as a TF2 eager computation over name-exact ``tf.Variable`` objects.

    Args:
        variables: TF-named numpy arrays, names relative to ``inception_i3d/`` (``Source.variables``).
            Every variable of the graph must be present with its shape (BatchNorm vectors may be ``[C]``
            or ``[1, 1, 1, 1, C]``, as in the Kinetics-600 checkpoint); names the graph does not use
            (optimizer slots, ``global_step``) are ignored, as a TF ``Saver`` restoring the model's
            variables ignores them.
        scope: ``"RGB"``, ``"Flow"``, or ``None`` for the Kinetics-600 layout (no prefix). Default: from
            the input channels (3 -> RGB, 2 -> Flow).
        dropout_keep_prob: keep-probability of the dropout before the logits (1.0 = off, inference).
        dropout_seed: seed of that dropout when ``dropout_keep_prob < 1``.
    """

    def __init__(
        self,
        variables: Mapping[str, np.ndarray],
        *,
        scope: Optional[str] = "",
        dropout_keep_prob: float = 1.0,
        dropout_seed: int = 0,
    ):
        tf = _tf()
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be in (0, 1], got {dropout_keep_prob}")
        self.in_channels, self.num_classes = _architecture(variables)
        if scope == "":
            scope = STREAM_SCOPES["rgb" if self.in_channels == 3 else "flow"]
        self.scope = scope
        self.prefix = scope_prefix(scope)
        self.dropout_keep_prob = dropout_keep_prob
        self.dropout_seed = dropout_seed
        expected = variable_shapes(self.num_classes, self.in_channels)
        _check_variables(variables, expected)
        # The graph's variables, keyed by their name relative to inception_i3d/; each tf.Variable carries
        # its full DeepMind name.
        self.variables: Dict[str, "tf.Variable"] = {
            name: tf.Variable(_initial_value(variables[name]), name=self.prefix + name, trainable=True)
            for name in expected
        }

    # -- construction from TF files ------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, prefix: os.PathLike, *, scope: Optional[str] = "", **kwargs) -> "TFInceptionI3d":
        """Build from a TF1 name-keyed checkpoint (DeepMind's ``model.ckpt``), read by TensorFlow itself.

        ``scope=""`` finds the stream scope from the names (``RGB/``, ``Flow/``, or none). Only the graph's
        variables are read; optimizer slots and ``global_step`` are left, as DeepMind's restore does.
        """
        tf = _tf()
        reader = tf.train.load_checkpoint(os.fspath(prefix))
        names = set(reader.get_variable_to_shape_map())
        if scope == "":
            scope = _detect_scope(names)
        lead = scope_prefix(scope)
        variables = {n[len(lead) :]: reader.get_tensor(n) for n in names if n.startswith(lead) and _is_model_name(n)}
        return cls(variables, scope=scope, **kwargs)

    # -- the graph -----------------------------------------------------------------------------------

    def __call__(self, x, final_endpoint: str = "Predictions", training: bool = False) -> Dict[str, object]:
        """Every endpoint up to ``final_endpoint``, by name, as TF tensors (NTHWC; [N, K] for the head)."""
        tf = _tf()
        if final_endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {final_endpoint!r}; valid: {', '.join(ENDPOINTS)}")
        net = tf.convert_to_tensor(x, dtype=tf.float32)
        if net.shape.rank != 5 or net.shape[-1] != self.in_channels:
            raise ValueError(f"expected [N, T, H, W, {self.in_channels}] (channels last), got {net.shape}")
        endpoints: Dict[str, object] = {}
        for name in ENDPOINTS[: ENDPOINTS.index(final_endpoint) + 1]:
            if name in MAX_POOLS:
                kernel, stride = MAX_POOLS[name]
                net = tf.nn.max_pool3d(net, [1, *kernel, 1], [1, *stride, 1], padding="SAME")
            elif name in INCEPTION_WIDTHS:
                net = self._inception(name, net)
            elif name == "Logits":
                net = self._logits(net, training)
            elif name == "Predictions":
                net = tf.nn.softmax(net)
            else:  # stem conv units
                _, _, _, stride = next(s for s in STEM_UNITS if s[0] == name)
                net = self._unit(name, net, stride)
            endpoints[name] = net
        return endpoints

    def logits(self, x):
        """Time-averaged logits ``[N, K]`` (the TF-Hub module's ``default`` output)."""
        return self(x, "Logits")["Logits"]

    def _unit(self, scope: str, net, stride: Sequence[int] = (1, 1, 1)):
        tf = _tf()
        v = self.variables
        net = tf.nn.conv3d(net, v[f"{scope}/conv_3d/w"], strides=[1, *stride, 1], padding="SAME")
        net = tf.nn.batch_normalization(
            net,
            mean=v[f"{scope}/batch_norm/moving_mean"],
            variance=v[f"{scope}/batch_norm/moving_variance"],
            offset=v[f"{scope}/batch_norm/beta"],
            scale=None,
            variance_epsilon=BN_EPSILON,
        )
        return tf.nn.relu(net)

    def _inception(self, block: str, net):
        tf = _tf()
        units = [scope for scope, *_ in _inception_units(block, 0)]
        branch_0 = self._unit(units[0], net)
        branch_1 = self._unit(units[2], self._unit(units[1], net))
        branch_2 = self._unit(units[4], self._unit(units[3], net))
        branch_3 = tf.nn.max_pool3d(net, [1, 3, 3, 3, 1], [1, 1, 1, 1, 1], padding="SAME")
        branch_3 = self._unit(units[5], branch_3)
        return tf.concat([branch_0, branch_1, branch_2, branch_3], axis=4)

    def _logits(self, net, training: bool):
        tf = _tf()
        t5, h5, w5 = net.shape[1:4]  # None where unknown (a graph-mode placeholder): TF checks at run time
        kt, kh, kw = LOGITS_POOL
        if (t5 is not None and t5 < kt) or any(n is not None and n != k for n, k in ((h5, kh), (w5, kw))):
            # TF itself fails here (VALID pool larger than the map, or a squeeze of a non-1 axis); say why.
            raise ValueError(
                f"DeepMind's Logits head is undefined for Mixed_5c of {t5}x{h5}x{w5} (T'xH'xW'): it needs T' >= {kt} "
                f"and H' = W' = 7 (a clip of at least 9 frames and 193..224 pixels square)"
            )
        net = tf.nn.avg_pool3d(net, [1, kt, kh, kw, 1], [1, 1, 1, 1, 1], padding="VALID")
        if training and self.dropout_keep_prob < 1.0:
            net = tf.nn.dropout(net, rate=1.0 - self.dropout_keep_prob, seed=self.dropout_seed)
        v = self.variables
        logits = tf.nn.conv3d(net, v["Logits/Conv3d_0c_1x1/conv_3d/w"], [1, 1, 1, 1, 1], padding="SAME")
        logits = logits + v["Logits/Conv3d_0c_1x1/conv_3d/b"]
        logits = tf.squeeze(logits, [2, 3])  # N x T'' x K
        return tf.reduce_mean(logits, axis=1)  # N x K

    # -- writing -------------------------------------------------------------------------------------

    def numpy_variables(self, full_names: bool = True) -> Dict[str, np.ndarray]:
        """The variables as numpy arrays, keyed by full DeepMind names (or relative ones)."""
        return {(self.prefix + k if full_names else k): v.numpy() for k, v in self.variables.items()}

    def save_checkpoint(self, prefix: os.PathLike) -> Path:
        """Write a TF1 name-keyed checkpoint of the graph's variables (see :func:`write_tf1_checkpoint`)."""
        return write_tf1_checkpoint(self.numpy_variables(), prefix)

    def export_hub_module(self, directory: os.PathLike) -> Path:
        """Write a TF1-format SavedModel like the TF-Hub ``i3d-kinetics-400`` module.

        One MetaGraph with the empty tag set (what ``hub.load`` picks for TF1 Hub modules), whose ``default``
        signature maps one video input ``default`` ``[batch, frames, height, width, C]`` to
        ``{"default": logits [batch, K]}`` (input placeholder ``input_frames``, logits tensor
        ``RGB/inception_i3d/Mean``). Its ``variables/`` checkpoint is keyed by the DeepMind variable
        names, as in a TF1 Hub module, so :func:`i3d_torch.weights.convert.read_source` reads it as a module directory.
        The directory is built beside ``directory`` and renamed into place when complete.
        """
        tf = _tf()
        final = Path(directory)
        if final.exists():
            raise FileExistsError(17, "SavedModel directory already exists", str(final))
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        build_dir = staging / "module"
        values = self.numpy_variables(full_names=False)
        try:
            graph = tf.Graph()
            with graph.as_default():
                # The same graph code, now in TF1 graph mode: a fresh reference whose tf.Variables become
                # graph variables with the same names. They start as symbolic zeros and get their values
                # through feeds, so the weights are stored once (in variables/), not also as constants in
                # saved_model.pb.
                zeros = {name: tf.zeros(value.shape, tf.float32) for name, value in values.items()}
                twin = TFInceptionI3d(zeros, scope=self.scope, dropout_keep_prob=self.dropout_keep_prob)
                frames = tf.compat.v1.placeholder(
                    tf.float32, [None, None, None, None, self.in_channels], name="input_frames"
                )
                # Ops under the variables' scope, as in the TF-Hub module (its logits are
                # "RGB/inception_i3d/Mean:0", the tensor google-research's FVD code reads).
                with tf.compat.v1.name_scope(twin.prefix or None):
                    logits = twin.logits(frames)
                with tf.compat.v1.Session(graph=graph) as session:
                    session.run(tf.compat.v1.global_variables_initializer())
                    for name, variable in twin.variables.items():
                        variable.load(values[name], session)
                    builder = tf.compat.v1.saved_model.Builder(str(build_dir))
                    signature = tf.compat.v1.saved_model.predict_signature_def(
                        inputs={"default": frames}, outputs={"default": logits}
                    )
                    builder.add_meta_graph_and_variables(
                        session, tags=[], signature_def_map={"default": signature}, strip_default_attrs=True
                    )
                    builder.save()
            os.replace(build_dir, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final


# ---------------------------------------------------------------------------------------------------
# TF1 checkpoints
# ---------------------------------------------------------------------------------------------------


def write_tf1_checkpoint(tensors: Mapping[str, np.ndarray], prefix: os.PathLike) -> Path:
    """Write ``tensors`` (full names -> arrays) as a TF1 name-keyed checkpoint at ``prefix``.

    ``tf.raw_ops.SaveV2`` writes exactly the bundle a TF1 ``Saver`` with a name->variable dict writes
    (``prefix.index`` + ``prefix.data-00000-of-00001``, keyed by the given names), which is the layout of
    DeepMind's checkpoints. Files are written in a scratch directory and renamed into place, data first and
    the index last (a checkpoint is readable only once its index exists), so an interruption leaves no
    readable half checkpoint.
    """
    tf = _tf()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    scratch = Path(tempfile.mkdtemp(prefix=f".{prefix.name}.", dir=prefix.parent))
    try:
        scratch_prefix = scratch / "ckpt"
        tf.raw_ops.SaveV2(
            prefix=str(scratch_prefix),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(np.asarray(tensors[n])) for n in names],
        )
        for suffix in (".data-00000-of-00001", ".index"):
            with atomic_path(Path(str(prefix) + suffix)) as tmp:
                os.replace(str(scratch_prefix) + suffix, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return prefix


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _architecture(variables: Mapping[str, np.ndarray]) -> Tuple[int, int]:
    """(in_channels, num_classes) from the stem and logits kernels."""
    try:
        stem = _shape(variables["Conv3d_1a_7x7/conv_3d/w"])
        head = _shape(variables["Logits/Conv3d_0c_1x1/conv_3d/w"])
    except KeyError as exc:
        raise ValueError(f"not I3D variables: no {exc.args[0]} among {len(variables)} names") from None
    return int(stem[3]), int(head[4])


def _check_variables(variables: Mapping[str, np.ndarray], expected: Mapping[str, Tuple[int, ...]]) -> None:
    problems = []
    for name, shape in expected.items():
        if name not in variables:
            problems.append(f"missing {name}")
            continue
        got = _shape(variables[name])
        vector_ok = len(shape) == 1 and got in ((shape[0],), (1, 1, 1, 1, shape[0]))
        if got != shape and not vector_ok:
            problems.append(f"{name} has shape {got}, the graph needs {shape}")
    if problems:
        raise ValueError(f"{len(problems)} problem(s) with the variables: " + "; ".join(problems))


def _shape(value) -> Tuple[int, ...]:
    """Shape of a numpy array or a TF tensor (the export passes symbolic zeros, see below)."""
    return tuple(int(d) for d in value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def _initial_value(value):
    if hasattr(value, "dtype") and not isinstance(value, np.ndarray):  # a TF tensor: used as it is
        return value
    return np.asarray(value, dtype=np.float32)


def _is_model_name(name: str) -> bool:
    """A model variable, not an optimizer slot (``.../Momentum``) or ``global_step``."""
    leaf = name.split("/")[-1]
    return leaf in ("w", "b", "beta", "moving_mean", "moving_variance")


def _detect_scope(names) -> Optional[str]:
    for scope in STREAM_SCOPES.values():
        if any(n.startswith(scope_prefix(scope)) for n in names):
            return scope
    return None
