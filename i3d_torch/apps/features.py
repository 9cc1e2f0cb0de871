"""Extract I3D features of many videos: ``i3d-torch features`` and :func:`extract_features`.

For each video (decoded, windowed and cropped exactly as ``predict`` does, by :mod:`i3d_torch.pipeline`) the
chosen endpoint is computed per window and written as two ``.npy`` files under the output folder,
mirroring the input's path relative to the input root (so names are deterministic and cannot collide):

* ``REL.windows.npy``: one row per window, ``[num_windows, ...]``;
* ``REL.npy``: the video's feature, the mean over its windows.

``manifest.jsonl`` gets one line per input (ok or error) with the shapes, frame count, weights checksum and
preprocessing. A second run skips every input whose record is ok and whose files are present with the
recorded shapes, and retries the rest; files are written atomically and the manifest is compacted on
start, so an interrupted run can simply be run again. Under ``torchrun`` each rank takes every K-th input
of the sorted list and writes ``manifest.rankR.jsonl``; rank 0 merges the parts after a barrier. One run at
a time owns the output folder (:class:`~i3d_torch.pipeline.folder_lock.FolderLock`): a second run on the
same folder is refused before it touches anything.

The options of localization and anomaly-detection feature sets (``crop="ten"``, ``keep_crops``, dense
windows, ``streams=("rgb", "flow")``, ``fmt="h5"``, ``single_file``, ``timestamps``) switch on the *described*
layout, in which every output also carries, per feature, its first and last frame and its start and end time
in seconds, plus fps, windows, endpoint, crops, streams and the weights' checksums:

* ``fmt="npy"``: ``REL.windows.npy`` ``[windows, (crops,) dim]``, ``REL.npy`` (mean over windows) and the
  sidecar ``REL.json`` (the settings and the per-feature times);
* ``fmt="h5"``: ``REL.h5`` with datasets ``windows``, ``video``, ``first_frame``, ``last_frame``,
  ``start_s``, ``end_s``, ``window_start``, ``window_end`` and the settings as attributes; with
  ``single_file`` one ``features.h5`` holds a group per input (named by its relative path). Its parts are
  written atomically to ``.parts/`` while the run goes and merged, in input order, into ``features.h5``
  (atomically) when it ends, so a killed run resumes to the same file as an uninterrupted one.

Without those options the outputs are exactly those described above (no sidecar, same manifest keys).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_FLOW_WEIGHTS, DEFAULT_WEIGHTS
from i3d_torch.core.errors import I3DError, InputError
from i3d_torch.core.fileio import append_jsonl, atomic_open, atomic_path, sha256_file, write_json
from i3d_torch.core.model import ENDPOINTS
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.batches import VideoDone, VideoFailed, WindowBatch, produce_batches
from i3d_torch.pipeline.crops import CROP_COUNTS, TEN_CROP_NAMES
from i3d_torch.pipeline.folder_lock import FolderLock
from i3d_torch.pipeline.prefetch import Prefetcher
from i3d_torch.pipeline.running import (
    FATAL_MODEL_ERRORS,
    default_batch_size,
    model_error,
    progress_bar,
    run_model,
    weights_of,
)
from i3d_torch.pipeline.settings import check_crop_for_logits, clip_settings
from i3d_torch.pipeline.windows import DenseWindowing
from i3d_torch.weights.registry import cached_model

__all__ = ["extract_features", "collect_inputs", "resolve_endpoint", "ExtractionSummary"]

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST = "manifest.jsonl"
#: Named features besides the raw endpoints: the 1024-d clip descriptor and the time-averaged logits.
ENDPOINT_ALIASES = {"pooled": "Mixed_5c", "logits": "Logits"}
#: Endpoints that are already vectors per clip, so there is nothing to pool.
VECTOR_ENDPOINTS = ("Logits", "Predictions")
#: Record keys that must match for an existing output to count as done in this run.
CONFIG_KEYS = ("endpoint", "pooled", "weights_sha256", "preprocessing", "dtype")
#: Further keys of the described layout (absent from the records of the default layout, so they differ).
LAYOUT_KEYS = ("layout", "format", "crops", "streams")
#: Output formats, and the one file of ``single_file`` runs.
FORMATS = ("npy", "h5")
SINGLE_FILE = "features.h5"
PARTS_DIR = ".parts"
#: Per-feature time stamps, in every described output.
TIME_FIELDS = ("first_frame", "last_frame", "start_s", "end_s", "window_start", "window_end")


@dataclass(frozen=True)
class EndpointSpec:
    """What to extract: ``name`` as asked, the network ``endpoint`` that computes it, and whether the
    result is averaged over T, H, W."""

    name: str
    endpoint: str
    pool: bool

    def reduce(self, output: torch.Tensor) -> torch.Tensor:
        if self.pool and output.dim() == 5:
            return output.mean(dim=(2, 3, 4))
        return output


def resolve_endpoint(name: str, pool: bool = True) -> EndpointSpec:
    """``pooled`` (1024-d mean of Mixed_5c), ``logits`` (time-averaged logits) or a raw endpoint name."""
    if name in ENDPOINT_ALIASES:
        return EndpointSpec(name, ENDPOINT_ALIASES[name], pool=True if name == "pooled" else False)
    if name not in ENDPOINTS:
        raise InputError(f"unknown endpoint {name!r}; use pooled, logits or one of: {', '.join(ENDPOINTS)}")
    return EndpointSpec(name, name, pool=pool and name not in VECTOR_ENDPOINTS)


# ---------------------------------------------------------------------------------------------------
# Inputs and output names
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputItem:
    """One video to process: its path and its name relative to the input root (the output's name)."""

    path: str
    rel: str

    @property
    def output(self) -> str:
        return self.rel + ".npy"

    @property
    def windows_output(self) -> str:
        return self.rel + ".windows.npy"

    @property
    def sidecar(self) -> str:
        return self.rel + ".json"

    @property
    def h5_output(self) -> str:
        return self.rel + ".h5"


def _is_frame_folder(folder: Path) -> bool:
    from i3d_torch.core.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS

    names = [n.lower() for n in os.listdir(folder) if not n.startswith(".")]
    return any(n.endswith(FRAME_EXTENSIONS) for n in names) and not any(n.endswith(VIDEO_EXTENSIONS) for n in names)


def _walk(root: Path) -> List[Path]:
    """Videos under ``root``: video files, and folders of frame images (with no video beside the images)."""
    from i3d_torch.core.video import VIDEO_EXTENSIONS

    found = []
    visited = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symbolic link back up the tree: walking on would never end
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        if here != root and _is_frame_folder(here):
            found.append(here)
            subfolders[:] = []  # a frame folder is one video
            continue
        found += [here / f for f in files if not f.startswith(".") and f.lower().endswith(VIDEO_EXTENSIONS)]
    return found


def _read_list(list_file: Path) -> List[Path]:
    """Paths listed one per line (``#`` comments and blank lines ignored), relative to the list's folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("neither a video (unknown extension) nor a UTF-8 text list of paths", list_file) from None
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def collect_inputs(source: PathLike) -> List[InputItem]:
    """The sorted list of videos named by ``source``: a video file, a frame folder, a folder searched
    recursively, or a text file listing videos. Output names are paths relative to the common root."""
    from i3d_torch.core.video import VIDEO_EXTENSIONS

    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    if source.is_dir() and _is_frame_folder(source):
        paths, root = [source], source.parent
    elif source.is_dir():
        paths, root = _walk(source), source
    elif source.name.lower().endswith(VIDEO_EXTENSIONS):
        paths, root = [source], source.parent
    else:
        paths = _read_list(source)
        if not paths:
            raise InputError("the list of videos is empty", source)
        absolute = [os.path.abspath(p) for p in paths]
        root = Path(os.path.commonpath(absolute))
        if len(set(absolute)) == 1 or root in {Path(p) for p in absolute}:
            root = root.parent
        paths = [Path(p) for p in absolute]
    items = {}
    for path in paths:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")
        items[rel] = InputItem(os.fspath(path), rel)
    ordered = [items[rel] for rel in sorted(items)]
    _check_collisions(ordered, source)
    return ordered


def _check_collisions(items: Sequence[InputItem], source: Path, described: bool = False) -> None:
    owners: Dict[str, str] = {}
    for item in items:
        for name in (item.output, item.windows_output) + ((item.sidecar, item.h5_output) if described else ()):
            key = name.lower()  # case-insensitive file systems would merge these too
            if key in owners and owners[key] != item.rel:
                raise InputError(f"inputs {owners[key]!r} and {item.rel!r} would both write {name!r}", source)
            owners[key] = item.rel


# ---------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------


def read_records(path: Path) -> Tuple[List[dict], int]:
    """The JSON records of a manifest file and the number of unreadable lines (a torn last line after a
    crash); a missing file has none."""
    if not path.exists():
        return [], 0
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict) and "input" in record:
                records.append(record)
            else:
                bad += 1
    return records, bad


def _part_files(out_dir: Path) -> List[Path]:
    return sorted(out_dir.glob("manifest.rank*.jsonl"))


def _latest_by_input(out_dir: Path) -> Dict[str, dict]:
    """Every record in the manifest and any leftover rank parts, the latest per input."""
    latest: Dict[str, dict] = {}
    for path in [out_dir / MANIFEST, *_part_files(out_dir)]:
        for record in read_records(path)[0]:
            latest[record["input"]] = record
    return latest


def _npy_shape(path: Path) -> Optional[tuple]:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def _h5_shape(path: Path, group: str = "/") -> Optional[tuple]:
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            return tuple(fh[group]["windows"].shape)
    except (OSError, KeyError, ValueError, ImportError):
        return None


def _config_keys(config: dict) -> tuple:
    return CONFIG_KEYS + (LAYOUT_KEYS if "layout" in config else ())


def is_complete(record: dict, out_dir: Path, config: dict) -> bool:
    """An ok record of this configuration whose output files exist with the recorded shapes."""
    if record.get("status") != "ok" or any(record.get(k) != config.get(k) for k in _config_keys(config)):
        return False
    windows_shape = tuple(record["windows_shape"])
    if str(config.get("format", "")).startswith("h5"):
        if record.get("group") is not None:  # single file: a part of this run, or the merged file
            part = out_dir / PARTS_DIR / (record["input"] + ".h5")
            merged = _h5_shape(out_dir / SINGLE_FILE, record["group"])
            return _h5_shape(part) == windows_shape or merged == windows_shape
        return _h5_shape(out_dir / record["output"]) == windows_shape
    if "layout" in config and not (out_dir / record.get("sidecar", "")).is_file():
        return False
    return _npy_shape(out_dir / record["output"]) == tuple(record["shape"]) and _npy_shape(
        out_dir / record["windows_output"]
    ) == windows_shape


def _write_records(path: Path, records: Sequence[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def compact_manifest(out_dir: Path, items: Sequence[InputItem], config: dict) -> set:
    """Rewrite the manifest with one line per input, dropping the records of this run's inputs that are
    not complete (they are redone and get fresh lines) and any torn line; merge leftover rank parts.
    Returns the names of this run's inputs that are done. Call it only while holding the folder's lock:
    it deletes the temporaries of killed runs, which would be a live run's files otherwise."""
    latest = _latest_by_input(out_dir)
    wanted = {item.rel for item in items}
    done = {rel for rel, rec in latest.items() if rel in wanted and is_complete(rec, out_dir, config)}
    kept = [rec for rel, rec in sorted(latest.items()) if rel not in wanted or rel in done]
    _write_records(out_dir / MANIFEST, kept)
    for part in _part_files(out_dir):
        part.unlink()
    for stale in out_dir.rglob(".*.tmp"):  # temporaries of a killed run (fileio.atomic_path names them so)
        if stale.name.startswith(".manifest") or any(ext in stale.name for ext in (".npy.", ".h5.", ".json.")):
            stale.unlink()
    return done


def merge_parts(out_dir: Path) -> None:
    """Fold the rank parts into the manifest (latest record per input wins), then delete them."""
    latest = _latest_by_input(out_dir)
    _write_records(out_dir / MANIFEST, [latest[rel] for rel in sorted(latest)])
    for part in _part_files(out_dir):
        part.unlink()


# ---------------------------------------------------------------------------------------------------
# The described layout: time stamps, settings in every file, HDF5
# ---------------------------------------------------------------------------------------------------


def feature_times(spans: Sequence[Tuple[int, int]], frames: int, fps: float) -> Dict[str, list]:
    """Per feature: the first and last frame it saw (inside the video), the start and end of those frames
    in seconds (frame ``i`` lasts from ``i / fps`` to ``(i + 1) / fps``), and the window's nominal span
    ``[window_start, window_end)``, which reaches outside the video where the window was padded."""
    first = [max(start, 0) for start, _ in spans]
    last = [min(end, frames) - 1 for _, end in spans]
    return {
        "first_frame": first,
        "last_frame": last,
        "start_s": [f / fps for f in first],
        "end_s": [(f + 1) / fps for f in last],
        "window_start": [start for start, _ in spans],
        "window_end": [end for _, end in spans],
    }


def _h5py():
    try:
        import h5py
    except ImportError:
        raise InputError("--format h5 needs h5py: pip install 'i3d-torch[h5]'") from None
    return h5py


def _file_config(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _check_h5_settings(path: Path, config: dict) -> None:
    """Refuse to add to an HDF5 file that another run wrote with other settings (nothing in it is lost)."""
    if not path.exists():
        return
    try:
        with _h5py().File(path, "r") as fh:
            theirs = json.loads(fh.attrs.get("config", "{}"))
    except (OSError, ValueError):
        raise InputError("is not a readable HDF5 file of i3d-torch features; move it away or use another --out", path)
    if theirs != config:
        differ = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        raise InputError(
            f"holds features extracted with other settings ({', '.join(differ)} differ); use another --out, or move "
            f"the file away to redo it",
            path,
        )


def _write_h5(path: Path, windows: np.ndarray, video: np.ndarray, times: Dict[str, list], attrs: dict) -> None:
    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            _fill_h5_group(fh, windows, video, times, attrs)


def _fill_h5_group(group, windows: np.ndarray, video: np.ndarray, times: Dict[str, list], attrs: dict) -> None:
    group.create_dataset("windows", data=windows)
    group.create_dataset("video", data=video)
    for key in TIME_FIELDS:
        group.create_dataset(key, data=np.asarray(times[key], dtype=np.float64 if key.endswith("_s") else np.int64))
    for key, value in attrs.items():
        group.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value, sort_keys=True)


def merge_single_file(out_dir: Path, config: dict) -> None:
    """Merge the parts of single-file runs and the existing ``features.h5`` into a new ``features.h5``
    (atomically, groups in input order), then delete the parts merged."""
    h5py = _h5py()
    records = [r for r in _latest_by_input(out_dir).values() if r.get("status") == "ok" and r.get("group")]
    parts_dir, single = out_dir / PARTS_DIR, out_dir / SINGLE_FILE
    if not records and not parts_dir.exists():
        return
    merged = []
    with atomic_path(single) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["config"] = _file_config(config)
            old = h5py.File(single, "r") if single.exists() else None
            try:
                for record in sorted(records, key=lambda r: r["input"]):
                    part = parts_dir / (record["input"] + ".h5")
                    if part.exists():
                        with h5py.File(part, "r") as src:
                            _copy_group(src["/"], out.require_group(record["group"]))
                        merged.append(part)
                    elif old is not None and record["group"] in old:
                        _copy_group(old[record["group"]], out.require_group(record["group"]))
            finally:
                if old is not None:
                    old.close()
    for part in merged:
        part.unlink()
    if parts_dir.exists():
        for folder in sorted((p for p in parts_dir.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            parts_dir.rmdir()


def _copy_group(src, dst) -> None:
    """Datasets and attributes of ``src`` written afresh into ``dst`` (in name order, so the bytes of the
    merged file depend only on its contents, not on which run wrote which part)."""
    for key in sorted(src.attrs):
        if key != "config":
            dst.attrs[key] = src.attrs[key]
    for name in sorted(src):
        dst.create_dataset(name, data=src[name][()])


# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------


@dataclass
class ExtractionSummary:
    """What a run did on this rank (``done``/``skipped``/``failed`` count inputs; ``errors`` maps input to
    message)."""

    out_dir: str
    manifest: str
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:  # a file handle: np.save would append ".npy" to a temp name
        np.save(fh, array)


@dataclass(frozen=True)
class _Layout:
    """Where and how outputs are written (the default layout, or the described one)."""

    described: bool
    fmt: str = "npy"
    single_file: bool = False
    keep_crops: bool = False


@dataclass
class _Stream:
    name: str  # "rgb" or "flow"
    model: Any
    entry: Any
    sha256: str


def _parse_streams(streams) -> Optional[List[str]]:
    if streams is None:
        return None
    names = [s.strip() for s in (streams.split(",") if isinstance(streams, str) else streams)]
    if not names or any(s not in ("rgb", "flow") for s in names) or len(set(names)) != len(names):
        raise InputError(f"--streams must be rgb, flow, rgb,flow or flow,rgb; got {','.join(names)!r}")
    return names


def _build_streams(names, weights, flow_weights, model, device, dtype) -> List[_Stream]:
    """The model of each stream: ``weights`` for its own modality, ``flow_weights`` for a flow stream
    that ``weights`` is not."""
    from i3d_torch.weights.registry import get_weights

    main_entry = weights_of(model, weights) if model is not None else get_weights(weights)
    names = names or [main_entry.modality]
    built = []
    for name in names:
        if name == main_entry.modality:
            with distributed.main_process_first():
                m = model if model is not None else cached_model(weights, device, dtype)
            entry = weights_of(m, weights)
        elif name == "flow":
            with distributed.main_process_first():
                m = cached_model(flow_weights, device, dtype)
            entry = weights_of(m, flow_weights)
            if entry.modality != "flow":
                raise InputError(
                    f"--streams flow needs flow weights, but --flow-weights {entry.name} is an {entry.modality} model; "
                    f"pass flow weights (default {DEFAULT_FLOW_WEIGHTS}) with --flow-weights"
                )
        else:
            raise InputError(
                f"--streams rgb needs RGB weights, but --weights {main_entry.name} is a {main_entry.modality} model; "
                f"pass RGB weights with --weights (and flow weights with --flow-weights)"
            )
        built.append(_Stream(name, m, entry, entry.sha256 or sha256_file(entry.path)))
    return built


def extract_features(
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    weights: Any = DEFAULT_WEIGHTS,
    endpoint: str = "pooled",
    pool: bool = True,
    clip_frames: Optional[int] = None,
    stride: Optional[int] = None,
    crop: str = "center",
    crop_size: Optional[int] = None,
    short_side: Optional[int] = None,
    fps: Optional[float] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype] = torch.float32,
    batch_size: Optional[int] = None,
    model=None,
    quiet: bool = True,
    keep_crops: bool = False,
    window: Optional[int] = None,
    step: Optional[int] = None,
    centre: bool = False,
    pad: str = "edge",
    streams: Union[None, str, Sequence[str]] = None,
    flow_weights: Any = DEFAULT_FLOW_WEIGHTS,
    fmt: str = "npy",
    single_file: bool = False,
    timestamps: Optional[bool] = None,
    strict: bool = False,
) -> ExtractionSummary:
    """Extract features of every video named by ``inputs`` into ``out_dir`` (see the module docstring).

    ``inputs`` is a video, a folder (searched recursively for videos and frame folders), a text file of
    paths, or a list of video paths (named relative to their common folder). Resumable; under ``torchrun``
    the inputs are sharded over the ranks. Failed inputs are recorded in the manifest and counted in the
    summary; nothing is raised for them.

    Feature-set options (any of them switches on the described layout, see the module docstring):
    ``crop="ten"`` (four corners, centre, and their mirror images) and ``keep_crops`` (crops stay an axis,
    ``[windows, crops, dim]``, instead of being averaged); ``window``/``step``/``centre``/``pad``: dense windows
    (:class:`~i3d_torch.pipeline.windows.DenseWindowing`); ``streams="rgb,flow"``: both streams side by side
    (``flow_weights`` for the flow stream; flow computed once per video); ``fmt="h5"`` and ``single_file``;
    ``timestamps=True`` for the described layout with none of the others.
    ``strict=True`` fails a video file whose decoding ends well before its stated length (cut short); without it
    the file's manifest record gains a ``decode`` entry saying how much was decoded.
    """
    out_dir = Path(out_dir)
    spec = resolve_endpoint(endpoint, pool)
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if single_file and fmt != "h5":
        raise InputError("--single-file writes one HDF5 file; add --format h5")
    if step is not None and window is None:
        raise InputError("--step needs --window (dense windows)")
    stream_names = _parse_streams(streams)
    dense = DenseWindowing(window, step or 1, centre, pad) if window is not None else None
    if dense is None and (centre or pad != "edge"):
        raise InputError("--centre and --pad shape dense windows; add --window N")
    described = bool(
        keep_crops or dense or stream_names or fmt != "npy" or single_file or crop == "ten" or timestamps
    )
    layout = _Layout(described, fmt, single_file, keep_crops)
    if fmt == "h5":
        _h5py()
    items = _items_of(inputs)
    if described:
        _check_collisions(items, out_dir, described=True)
    with distributed.process_group(str(device)):
        device = distributed.device_for_rank(str(device))
        built = _build_streams(stream_names, weights, flow_weights, model, device, dtype)
        if len(built) > 1 and not (spec.pool or spec.endpoint in VECTOR_ENDPOINTS):
            raise InputError("--streams rgb,flow concatenates feature vectors: use a pooled endpoint (not --no-pool)")
        for stream in built:
            if spec.endpoint not in stream.model.endpoints:
                raise InputError(f"this model has no endpoint {spec.endpoint}")
        entry = built[0].entry
        transforms = next((s.entry for s in built if s.name == "rgb"), entry).transforms()
        needs_logits = spec.endpoint in VECTOR_ENDPOINTS
        settings = clip_settings(
            transforms,
            streams=[s.name for s in built] if described else [entry.modality],
            min_frames={s.name: s.entry.min_frames if needs_logits else 1 for s in built},
            fps=fps,
            short_side=short_side,
            crop=crop,
            crop_size=crop_size,
            clip_frames=clip_frames,
            stride=stride,
            dense=dense,
            strict=strict,
        )
        if needs_logits:
            check_crop_for_logits(
                settings,
                f"the {spec.name} endpoint (the logits head)",
                f"use the default {CROP_SIZE} or a feature endpoint such as pooled",
            )
        config = {
            "endpoint": spec.name,
            "pooled": spec.pool,
            "weights_sha256": built[0].sha256,
            "preprocessing": settings.to_dict(),
            "dtype": str(next(built[0].model.parameters()).dtype).replace("torch.", ""),
        }
        if described:
            crop_count = CROP_COUNTS[settings.crop]
            config.update(
                layout="described",
                format=fmt + ("-single-file" if single_file else ""),
                crops={
                    "mode": settings.crop,
                    "count": crop_count,
                    "kept": keep_crops,
                    "names": list(TEN_CROP_NAMES) if settings.crop == "ten" else None,
                },
                streams=[{"stream": s.name, "weights": s.entry.name, "weights_sha256": s.sha256} for s in built],
            )
        lock = FolderLock(out_dir, "i3d-torch features run")
        ok = True
        if distributed.is_main_process():
            try:
                lock.acquire()
            except I3DError:
                ok = False
                if not distributed.is_distributed():
                    raise
        if not distributed.all_ranks_ok(ok):
            raise FolderLockedError(lock.path.parent)
        try:
            if distributed.is_main_process():
                if single_file:
                    _check_h5_settings(out_dir / SINGLE_FILE, config)
                compact_manifest(out_dir, items, config)
            distributed.barrier()
            done = {rel for rel, rec in _latest_by_input(out_dir).items() if rec.get("status") == "ok"}
            mine = distributed.shard(items)
            todo = [item for item in mine if item.rel not in done]
            part = out_dir / (MANIFEST if distributed.world_size() == 1 else f"manifest.rank{distributed.rank()}.jsonl")
            summary = ExtractionSummary(
                str(out_dir), str(out_dir / MANIFEST), total=len(mine), skipped=len(mine) - len(todo)
            )
            context = {"model": entry.name, **config}
            todo = _refuse_foreign_h5(todo, out_dir, layout, config, part, context, summary)
            _extract(
                todo,
                out_dir,
                part,
                built,
                spec,
                settings,
                transforms.to_model_input,
                batch_size or default_batch_size(device),
                context,
                summary,
                quiet,
                layout,
            )
            distributed.barrier()
            if distributed.is_distributed() and distributed.is_main_process():
                merge_parts(out_dir)
            if single_file and distributed.is_main_process():
                merge_single_file(out_dir, config)
            distributed.barrier()
        finally:
            lock.release()
    return summary


class FolderLockedError(InputError):
    """Another run holds the output folder (seen by a rank other than the one that tried the lock)."""

    def __init__(self, folder: Path):
        super().__init__(
            "another i3d-torch features run is writing to this folder; wait for it or use another --out", folder
        )


def _refuse_foreign_h5(todo, out_dir: Path, layout: _Layout, config: dict, part: Path, context: dict, summary) -> list:
    """Per-video HDF5 files that another run wrote with other settings are not overwritten: each such input
    fails with a message naming the file."""
    if layout.fmt != "h5" or layout.single_file:
        return todo
    kept = []
    for item in todo:
        try:
            _check_h5_settings(out_dir / item.h5_output, config)
        except InputError as exc:
            message = str(exc)
            append_jsonl(part, {**context, "input": item.rel, "path": item.path, "status": "error", "error": message})
            summary.failed += 1
            summary.errors[item.rel] = message
            print(f"i3d-torch features: error: {message}", file=sys.stderr, flush=True)
            continue
        kept.append(item)
    return kept


def _items_of(inputs) -> List[InputItem]:
    if isinstance(inputs, (str, os.PathLike)):
        return collect_inputs(inputs)
    paths = [os.path.abspath(os.fspath(p)) for p in inputs]
    if not paths:
        raise InputError("no inputs given")
    root = os.path.commonpath(paths)
    if root in paths:
        root = os.path.dirname(root)
    items = {}
    for path in paths:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        items[rel] = InputItem(path, rel)
    ordered = [items[rel] for rel in sorted(items)]
    _check_collisions(ordered, Path(root))
    return ordered


def _features_of(event: WindowBatch, streams: Sequence[_Stream], spec: EndpointSpec, keep_crops: bool) -> np.ndarray:
    """One row per window (``[windows, (crops,) ...]``), the streams' features side by side."""
    parts = []
    for stream in streams:
        out = spec.reduce(run_model(stream.model, event.inputs[stream.name], [spec.endpoint])[spec.endpoint])
        # windows * crops rows -> windows rows, averaging the crops unless they are kept
        out = out.view(len(event.spans), event.crops, *out.shape[1:])
        parts.append(out if keep_crops else out.mean(dim=1))
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).numpy()


def _extract(
    todo, out_dir, part, streams, spec, settings, to_model_input, batch_size, context, summary, quiet, layout
) -> None:
    sources = [item.path for item in todo]
    per_window: Dict[int, List[np.ndarray]] = {}
    spans: Dict[int, List[Tuple[int, int]]] = {}
    model_errors: Dict[int, str] = {}  # videos the network could not take (e.g. too small for the head)
    prefetcher = Prefetcher(produce_batches(sources, settings, to_model_input, batch_size))
    desc = f"features (rank {distributed.rank()})" if distributed.is_distributed() else "features"
    bar = progress_bar(quiet, desc, "video", len(todo))
    try:
        for event in prefetcher:
            if isinstance(event, WindowBatch):
                videos = [(index, rows) for index, rows in event.by_video() if index not in model_errors]
                if not videos:
                    continue
                try:
                    out = _features_of(event, streams, spec, layout.keep_crops)
                except (I3DError, ValueError) as exc:  # an input the network cannot take: all videos of the batch
                    for index, _ in videos:  # have that input shape
                        model_errors[index] = f"{todo[index].path}: {' '.join(str(exc).split())}"
                    continue
                except FATAL_MODEL_ERRORS as exc:  # no kernel for the dtype, or out of GPU memory: every input fails
                    raise model_error(exc) from None
                for index, rows in videos:
                    per_window.setdefault(index, []).extend(out[rows])
                    spans.setdefault(index, []).extend(event.spans[rows])
                continue
            item = todo[event.index]
            windows, window_spans = per_window.pop(event.index, []), spans.pop(event.index, [])
            message = str(event.error) if isinstance(event, VideoFailed) else model_errors.pop(event.index, None)
            if message is None:
                try:
                    if layout.described:
                        record = _write_described(
                            item, out_dir, np.stack(windows), window_spans, event, settings, context, streams, layout
                        )
                    else:
                        record = _write_outputs(
                            item, out_dir, np.stack(windows), window_spans, event, settings, context
                        )
                    if event.decode is not None and event.decode.ended_early:  # a file cut short: say so
                        record["decode"] = event.decode.to_dict()
                    append_jsonl(part, record)
                except OSError as exc:  # a full disk, a quota, a folder gone: this input fails, the batch goes on
                    _remove_outputs(item, out_dir, layout)  # atomic writes leave no partial file; no orphan either
                    message = _write_error(item, out_dir, exc)
                else:
                    summary.done += 1
            if message is not None:
                record = {**context, "input": item.rel, "path": item.path, "status": "error", "error": message}
                summary.failed += 1
                summary.errors[item.rel] = message
                bar.clear()
                print(f"i3d-torch features: error: {message}", file=sys.stderr, flush=True)
                try:
                    append_jsonl(part, record)
                except OSError:  # the manifest cannot grow either (a full disk): the line above is the record
                    pass
            bar.update(1)
    finally:
        prefetcher.close()
        bar.close()


def _write_error(item: InputItem, out_dir: Path, exc: OSError) -> str:
    """One line for an output that could not be written: the input, the folder and the OS's reason."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.errno is None and "written" in reason:  # numpy's short write ("N requested and M written") has no errno
        reason = f"short write, the disk is likely full ({reason})"
    return f"{item.path}: cannot write its features to {out_dir}: {reason}"


def _remove_outputs(item: InputItem, out_dir: Path, layout: _Layout) -> None:
    """Delete what this attempt wrote for ``item`` before a later write failed (e.g. the windows file written,
    the video file refused), so no output exists without its manifest line. It was not done: a rerun redoes it."""
    if layout.fmt == "npy":
        names = [item.windows_output, item.output] + ([item.sidecar] if layout.described else [])
    elif layout.single_file:
        names = [os.path.join(PARTS_DIR, item.rel + ".h5")]
    else:
        names = [item.h5_output]
    for name in names:
        with contextlib.suppress(OSError):
            (out_dir / name).unlink()


def _write_outputs(
    item: InputItem, out_dir: Path, windows: np.ndarray, window_spans, event: VideoDone, settings, context
) -> dict:
    video = windows.mean(axis=0)
    _save_npy(out_dir / item.windows_output, windows.astype(np.float32))
    _save_npy(out_dir / item.output, video.astype(np.float32))
    return {
        **context,
        "input": item.rel,
        "path": item.path,
        "status": "ok",
        "error": None,
        "output": item.output,
        "shape": list(video.shape),
        "windows_output": item.windows_output,
        "windows_shape": list(windows.shape),
        "windows": [list(s) for s in window_spans],
        "frames": event.frames,
        "fps": settings.fps,
    }


def _write_described(
    item: InputItem, out_dir: Path, windows: np.ndarray, window_spans, event: VideoDone, settings, context, streams,
    layout: _Layout,
) -> dict:
    windows = windows.astype(np.float32)
    video = windows.mean(axis=0).astype(np.float32)
    times = feature_times(window_spans, event.frames, settings.fps)
    width = windows.shape[-1] // len(streams)  # streams side by side along the last axis, equal widths
    dims = {s.name: [k * width, (k + 1) * width] for k, s in enumerate(streams)}
    windowing = settings.windowing.to_dict()
    facts = {
        "input": item.rel,
        "frames": event.frames,
        "fps": settings.fps,
        "window": windowing.get("window", windowing.get("clip_frames")),
        "step": windowing.get("step", windowing.get("stride")),
        "endpoint": context["endpoint"],
        "crops": context["crops"],
        "streams": context["streams"],
        "stream_dims": dims,
        "weights_sha256": {s.name: s.sha256 for s in streams},
        "axes": ["window", "crop", "feature"] if layout.keep_crops else ["window", "feature"],
    }
    record = {
        **context,
        "input": item.rel,
        "path": item.path,
        "status": "ok",
        "error": None,
        "shape": list(video.shape),
        "windows_shape": list(windows.shape),
        "windows": [list(s) for s in window_spans],
        "frames": event.frames,
        "fps": settings.fps,
        "stream_dims": dims,
        "times": times,
    }
    if layout.fmt == "npy":
        _save_npy(out_dir / item.windows_output, windows)
        _save_npy(out_dir / item.output, video)
        write_json(out_dir / item.sidecar, {**facts, "config": context, "times": times})
        record.update(output=item.output, windows_output=item.windows_output, sidecar=item.sidecar)
    elif layout.single_file:
        _write_h5(out_dir / PARTS_DIR / (item.rel + ".h5"), windows, video, times, facts)
        record.update(output=SINGLE_FILE, group=item.rel)
    else:
        config = {k: v for k, v in context.items() if k != "model"}  # what _check_h5_settings compares
        _write_h5(out_dir / item.h5_output, windows, video, times, {**facts, "config": _file_config(config)})
        record.update(output=item.h5_output, group=None)
    return record
