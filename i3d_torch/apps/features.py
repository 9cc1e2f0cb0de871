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
of the sorted list and writes ``manifest.rankR.jsonl``; rank 0 merges the parts after a barrier.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_WEIGHTS
from i3d_torch.core.errors import I3DError, InputError
from i3d_torch.core.fileio import append_jsonl, atomic_open, sha256_file
from i3d_torch.core.model import ENDPOINTS
from i3d_torch.pipeline import distributed
from i3d_torch.pipeline.batches import VideoDone, VideoFailed, WindowBatch, produce_batches
from i3d_torch.pipeline.prefetch import Prefetcher
from i3d_torch.pipeline.running import default_batch_size, progress_bar, run_model, unsupported_dtype, weights_of
from i3d_torch.pipeline.settings import check_crop_for_logits, clip_settings
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


def _check_collisions(items: Sequence[InputItem], source: Path) -> None:
    owners: Dict[str, str] = {}
    for item in items:
        for name in (item.output, item.windows_output):
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


def is_complete(record: dict, out_dir: Path, config: dict) -> bool:
    """An ok record of this configuration whose .npy files exist with the recorded shapes."""
    if record.get("status") != "ok" or any(record.get(k) != config.get(k) for k in CONFIG_KEYS):
        return False
    return _npy_shape(out_dir / record["output"]) == tuple(record["shape"]) and _npy_shape(
        out_dir / record["windows_output"]
    ) == tuple(record["windows_shape"])


def _write_records(path: Path, records: Sequence[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def compact_manifest(out_dir: Path, items: Sequence[InputItem], config: dict) -> set:
    """Rewrite the manifest with one line per input, dropping the records of this run's inputs that are
    not complete (they are redone and get fresh lines) and any torn line; merge leftover rank parts.
    Returns the names of this run's inputs that are done."""
    latest = _latest_by_input(out_dir)
    wanted = {item.rel for item in items}
    done = {rel for rel, rec in latest.items() if rel in wanted and is_complete(rec, out_dir, config)}
    kept = [rec for rel, rec in sorted(latest.items()) if rel not in wanted or rel in done]
    _write_records(out_dir / MANIFEST, kept)
    for part in _part_files(out_dir):
        part.unlink()
    for stale in out_dir.rglob(".*.tmp"):  # temporaries of a killed run (fileio.atomic_path names them so)
        if stale.name.startswith(".manifest") or ".npy." in stale.name:
            stale.unlink()
    return done


def merge_parts(out_dir: Path) -> None:
    """Fold the rank parts into the manifest (latest record per input wins), then delete them."""
    latest = _latest_by_input(out_dir)
    _write_records(out_dir / MANIFEST, [latest[rel] for rel in sorted(latest)])
    for part in _part_files(out_dir):
        part.unlink()


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
) -> ExtractionSummary:
    """Extract features of every video named by ``inputs`` into ``out_dir`` (see the module docstring).

    ``inputs`` is a video, a folder (searched recursively for videos and frame folders), a text file of
    paths, or a list of video paths (named relative to their common folder). Resumable; under ``torchrun``
    the inputs are sharded over the ranks. Failed inputs are recorded in the manifest and counted in the
    summary; nothing is raised for them.
    """
    out_dir = Path(out_dir)
    spec = resolve_endpoint(endpoint, pool)
    items = _items_of(inputs)
    with distributed.process_group(str(device)):
        device = distributed.device_for_rank(str(device))
        with distributed.main_process_first():
            model = model if model is not None else cached_model(weights, device, dtype)
        entry = weights_of(model, weights)
        if spec.endpoint not in model.endpoints:
            raise InputError(f"this model has no endpoint {spec.endpoint}")
        transforms = entry.transforms()
        needs_logits = spec.endpoint in VECTOR_ENDPOINTS
        settings = clip_settings(
            transforms,
            streams=[entry.modality],
            min_frames={entry.modality: entry.min_frames if needs_logits else 1},
            fps=fps,
            short_side=short_side,
            crop=crop,
            crop_size=crop_size,
            clip_frames=clip_frames,
            stride=stride,
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
            "weights_sha256": entry.sha256 or sha256_file(entry.path),
            "preprocessing": settings.to_dict(),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        }
        if distributed.is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
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
        _extract(
            todo,
            out_dir,
            part,
            model,
            spec,
            settings,
            transforms.to_model_input,
            batch_size or default_batch_size(device),
            context,
            summary,
            quiet,
        )
        distributed.barrier()
        if distributed.is_distributed() and distributed.is_main_process():
            merge_parts(out_dir)
        distributed.barrier()
    return summary


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


def _extract(todo, out_dir, part, model, spec, settings, to_model_input, batch_size, context, summary, quiet) -> None:
    sources = [item.path for item in todo]
    per_window: Dict[int, List[np.ndarray]] = {}
    spans: Dict[int, List[Tuple[int, int]]] = {}
    model_errors: Dict[int, str] = {}  # videos the network could not take (e.g. too small for the head)
    prefetcher = Prefetcher(produce_batches(sources, settings, to_model_input, batch_size))
    desc = f"features (rank {distributed.rank()})" if distributed.is_distributed() else "features"
    bar = progress_bar(quiet, desc, "video", len(todo))
    try:
        for event in prefetcher:
            item = todo[event.index]
            if isinstance(event, WindowBatch):
                if event.index in model_errors:
                    continue
                try:
                    (x,) = event.inputs.values()
                    out = spec.reduce(run_model(model, x, [spec.endpoint])[spec.endpoint])
                except (I3DError, ValueError) as exc:
                    model_errors[event.index] = f"{item.path}: {' '.join(str(exc).split())}"
                    continue
                except NotImplementedError as exc:  # a dtype this device cannot run: every input would fail
                    raise unsupported_dtype(exc) from None
                # windows * crops rows -> windows rows, averaging the crops
                out = out.view(len(event.spans), event.crops, *out.shape[1:]).mean(dim=1).numpy()
                per_window.setdefault(event.index, []).extend(out)
                spans.setdefault(event.index, []).extend(event.spans)
                continue
            windows, window_spans = per_window.pop(event.index, []), spans.pop(event.index, [])
            message = str(event.error) if isinstance(event, VideoFailed) else model_errors.pop(event.index, None)
            if message is None:
                record = _write_outputs(item, out_dir, np.stack(windows), window_spans, event, settings, context)
                summary.done += 1
            else:
                record = {**context, "input": item.rel, "path": item.path, "status": "error", "error": message}
                summary.failed += 1
                summary.errors[item.rel] = message
                bar.clear()
                print(f"i3d-torch features: error: {message}", file=sys.stderr, flush=True)
            append_jsonl(part, record)
            bar.update(1)
    finally:
        prefetcher.close()
        bar.close()


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
