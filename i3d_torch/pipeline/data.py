"""Labelled video data sets for fine-tuning, and the clip sampling of the paper.

Where the videos come from (:func:`discover`):

* a folder with one subfolder per class (``DIR/<class>/<video>``); classes are the subfolder names, sorted;
* a CSV file ``path,label`` (a header line ``path,label`` is optional; relative paths are resolved against
  the CSV's folder);
* split files over a data root: UCF101's ``trainlist01.txt`` / ``testlist01.txt`` (``Class/v_x.avi [index]``,
  classes from ``classInd.txt`` beside the split file, or else the root's subfolders) and HMDB51's
  ``<class>_test_split1.txt`` (``name.avi 1|2|0``: 1 train, 2 test, 0 unused; the class is the file name's
  prefix).

How clips are cut (Carreira & Zisserman, CVPR 2017, section 3.5), in :class:`VideoClips`:

* training: frames at 25 fps with the short side resized to 256; a random temporal window of
  ``clip_frames`` (start drawn among those early enough to give a full window); a random ``crop_size``
  square; a random left-right flip of the whole clip. Videos shorter than the window are looped.
* evaluation: the centre window and the centre crop, or every window (stride ``clip_frames``) whose
  logits the caller averages.

Randomness is a pure function of ``(seed, epoch, video index)``, so a clip does not depend on which
DataLoader worker or which process decodes it: runs are reproducible and resumable with any
``num_workers`` and any number of processes. :func:`iterate_batches` and :func:`decoding_worker_init` are
how training and evaluation run these data sets through a DataLoader.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.errors import I3DError, InputError
from i3d_torch.core.transforms import rgb_to_model_input

__all__ = [
    "VideoList",
    "discover",
    "read_folder",
    "read_csv",
    "read_split_files",
    "VideoClips",
    "collate_windows",
    "temporal_window",
    "iterate_batches",
    "decoding_worker_init",
]

PathLike = Union[str, "os.PathLike[str]"]

#: HMDB51 split-file codes.
HMDB_SUBSETS = {"train": "1", "test": "2"}


@dataclass
class VideoList:
    """Videos with integer labels, and the class names those labels index."""

    paths: List[Path]
    labels: List[int]
    classes: List[str]
    source: str  # where the list came from, for messages

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> List[int]:
        """Number of videos of each class."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes)).tolist()

    def with_classes(self, classes: Sequence[str]) -> "VideoList":
        """The same videos relabelled against ``classes`` (a validation set must use the training classes)."""
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({self.classes[y] for y in self.labels} - set(index))
        if unknown:
            raise InputError(
                f"classes not in the training set: {', '.join(unknown[:5])}"
                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                self.source,
            )
        labels = [index[self.classes[y]] for y in self.labels]
        return VideoList(list(self.paths), labels, list(classes), self.source)


def _is_video(path: Path) -> bool:
    from i3d_torch.core.video import is_video_path

    return is_video_path(path)


def _sorted_classes(names) -> List[str]:
    """Class names in a stable order: numerically when every name is an integer, else alphabetically."""
    names = set(names)
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _checked(videos: VideoList) -> VideoList:
    if not videos.paths:
        raise InputError("no videos found", videos.source)
    return videos


def _videos_below(folder: Path) -> List[Path]:
    """Video files and frame folders under ``folder``; a frame folder is one video, not searched further."""
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if _is_video(entry):
            found.append(entry)
        elif entry.is_dir():
            found.extend(_videos_below(entry))
    return found


def read_folder(root: PathLike) -> VideoList:
    """``root/<class>/<video>``: one subfolder per class, videos anywhere below it."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a folder", root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError("expected one subfolder per class (DIR/<class>/<video>), found none", root)
    classes = [d.name for d in class_dirs]
    paths, labels = [], []
    for label, folder in enumerate(class_dirs):
        found = sorted(_videos_below(folder))
        paths.extend(found)
        labels.extend([label] * len(found))
    return _checked(VideoList(paths, labels, classes, str(root)))


def read_csv(csv_path: PathLike) -> VideoList:
    """A CSV of ``path,label`` rows (optional header); relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError("CSV file not found", csv_path)
    rows: List[Tuple[Path, str]] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            row = [cell.strip() for cell in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if line_no == 1 and [c.lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise InputError(f"line {line_no}: expected 'path,label', got {','.join(row)!r}", csv_path)
            path = Path(row[0])
            rows.append((path if path.is_absolute() else csv_path.parent / path, row[1]))
    classes = _sorted_classes(label for _, label in rows)
    index = {name: i for i, name in enumerate(classes)}
    videos = VideoList([p for p, _ in rows], [index[label] for _, label in rows], classes, str(csv_path))
    missing = [p for p in videos.paths if not p.exists()]
    if missing:
        raise InputError(f"{len(missing)} listed video(s) do not exist, e.g. {missing[0]}", csv_path)
    return _checked(videos)


def _ucf_class_index(split_file: Path) -> Optional[List[str]]:
    """UCF101's ``classInd.txt`` ("1 ApplyEyeMakeup") beside the split file, as a list, if present."""
    ind = split_file.parent / "classInd.txt"
    if not ind.is_file():
        return None
    entries = {}
    for line in ind.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            entries[int(parts[0])] = parts[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise InputError("expected lines '<index> <class>' numbered from 1", ind)
    return [entries[i] for i in range(1, len(entries) + 1)]


def read_split_files(root: PathLike, split_files: Sequence[PathLike], subset: str = "train") -> VideoList:
    """Videos under ``root`` listed by UCF101- or HMDB51-style split files.

    UCF101 (``trainlist01.txt``, ``testlist01.txt``): each line is ``Class/video.avi`` optionally followed
    by a 1-based class index; the whole file is used. HMDB51 (``<class>_test_split1.txt``): each line is
    ``video.avi 1|2|0``; ``subset`` picks code 1 (``"train"``) or 2 (``"test"``), and the video is
    ``root/<class>/video.avi``. Several files may be given (HMDB51 has one per class).
    """
    root = Path(root)
    if subset not in HMDB_SUBSETS:
        raise InputError(f"subset must be 'train' or 'test', got {subset!r}")
    if not root.is_dir():
        raise InputError("data root for the split file(s) is not a folder", root)
    entries: List[Tuple[Path, str]] = []
    class_order: Optional[List[str]] = None
    for split_file in map(Path, split_files):
        if not split_file.is_file():
            raise InputError("split file not found", split_file)
        hmdb = re.fullmatch(r"(.+)_test_split\d+\.txt", split_file.name)
        for line_no, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if hmdb:
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise InputError(f"line {line_no}: expected 'video.avi 0|1|2', got {line.strip()!r}", split_file)
                if parts[1] == HMDB_SUBSETS[subset]:
                    entries.append((root / hmdb.group(1) / parts[0], hmdb.group(1)))
                continue
            relative = Path(parts[0])
            if len(relative.parts) < 2 or len(parts) > 2:
                raise InputError(
                    f"line {line_no}: expected 'Class/video.avi [index]' (UCF101) or a file named "
                    f"<class>_test_split<k>.txt (HMDB51), got {line.strip()!r}",
                    split_file,
                )
            if class_order is None:
                class_order = _ucf_class_index(split_file)
            class_name = relative.parts[0]
            if len(parts) == 2 and class_order is not None:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(class_order):
                    raise InputError(f"line {line_no}: class index {parts[1]!r} is not in classInd.txt", split_file)
                if class_order[int(parts[1]) - 1] != class_name:
                    raise InputError(
                        f"line {line_no}: index {parts[1]} is {class_order[int(parts[1]) - 1]!r} in "
                        f"classInd.txt but the path says {class_name!r}",
                        split_file,
                    )
            entries.append((root / relative, class_name))
    source = ", ".join(str(p) for p in split_files)
    if class_order is None:
        # Without classInd.txt the classes are the root's subfolders (UCF101 and HMDB51 both number theirs
        # alphabetically), so a train and a test list give the same label numbering.
        class_order = sorted(p.name for p in root.iterdir() if p.is_dir()) or _sorted_classes(c for _, c in entries)
    index = {name: i for i, name in enumerate(class_order)}
    unknown = sorted({c for _, c in entries} - set(index))
    if unknown:
        raise InputError(f"classes with no folder under {root}: {', '.join(unknown[:5])}", source)
    missing = [p for p, _ in entries if not p.exists()]
    if missing:
        raise InputError(f"{len(missing)} listed video(s) do not exist under {root}, e.g. {missing[0]}", source)
    return _checked(VideoList([p for p, _ in entries], [index[c] for _, c in entries], class_order, source))


def discover(
    source: PathLike, split_files: Optional[Sequence[PathLike]] = None, subset: str = "train", min_classes: int = 1
) -> VideoList:
    """A folder of class subfolders, a ``path,label`` CSV, or a root with split files.

    ``min_classes``: refuse a set with fewer classes (a training set needs 2).
    """
    source = Path(source)
    if split_files:
        videos = read_split_files(source, split_files, subset)
    elif source.is_dir():
        videos = read_folder(source)
    elif source.is_file():
        if source.suffix.lower() not in (".csv", ".txt"):
            raise InputError("expected a folder of class subfolders or a CSV file 'path,label'", source)
        videos = read_csv(source)
    else:
        raise InputError("data set not found (expected a folder of class subfolders or a CSV file)", source)
    if len(videos.classes) < min_classes:
        raise InputError(f"need at least {min_classes} classes, found {videos.classes}", videos.source)
    return videos


# ---------------------------------------------------------------------------------------------------
# Clip sampling
# ---------------------------------------------------------------------------------------------------


def temporal_window(num_frames: int, clip_frames: int, rng: Optional[np.random.Generator]) -> int:
    """Start of a window of ``clip_frames``: random among full windows (training), else the centre one."""
    spare = max(num_frames - clip_frames, 0)
    if rng is None:
        return spare // 2
    return int(rng.integers(0, spare + 1))


def _crop(frames: np.ndarray, size: int, rng: Optional[np.random.Generator], path) -> np.ndarray:
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise InputError(f"frames are {height}x{width}, smaller than the {size}x{size} crop", path)
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return frames[:, top : top + size, left : left + size]


class VideoClips(Dataset):
    """Clips of a :class:`VideoList`, ready for the model: ``(clip [C, T, S, S] in [-1, 1], label, index)``.

    Args:
        videos: the labelled videos.
        clip_frames: frames per clip (the network needs >= 9 for its strict TF head).
        train: random window, crop and flip if True; centre window and crop if False.
        eval_windows: with ``train=False``: ``"center"`` (one clip) or ``"all"`` (every window of
            ``clip_frames`` with that stride, stacked as ``[W, C, T, S, S]``; use :func:`collate_windows`).
        fps, short_side, crop_size: decoding and crop geometry (DeepMind's by default, from
            :mod:`i3d_torch.core.defaults`).
        seed: base of the per-clip random streams; :meth:`set_epoch` changes them every epoch.
        flip: random left-right flips in training (turn off when left/right carries the label).
        modality: ``"rgb"``; flow needs precomputed flow and is not decoded here.
    """

    def __init__(
        self,
        videos: VideoList,
        clip_frames: int,
        *,
        train: bool,
        eval_windows: str = "center",
        fps: float = FPS,
        short_side: int = SHORT_SIDE,
        crop_size: int = CROP_SIZE,
        seed: int = 0,
        flip: bool = True,
        modality: str = "rgb",
    ):
        if modality != "rgb":
            raise InputError(
                f"fine-tuning decodes RGB videos; modality {modality!r} (optical flow) needs precomputed flow, "
                "which this data loader does not read"
            )
        if eval_windows not in ("center", "all"):
            raise InputError(f"eval_windows must be 'center' or 'all', got {eval_windows!r}")
        if crop_size > short_side:
            raise InputError(f"crop size {crop_size} is larger than the short side {short_side}")
        self.videos = videos
        self.clip_frames = int(clip_frames)
        self.train = train
        self.eval_windows = eval_windows
        self.fps = fps
        self.short_side = short_side
        self.crop_size = crop_size
        self.seed = int(seed)
        self.flip = flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random windows, crops and flips for ``epoch`` (call before creating the loader's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def _frames(self, index: int) -> np.ndarray:
        from i3d_torch.core.video import loop_to_length, read_video

        frames, _ = read_video(self.videos.paths[index], fps=self.fps, short_side=self.short_side)
        return loop_to_length(frames, self.clip_frames)

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of one video in the current epoch: independent of worker and process."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int):
        frames = self._frames(index)
        path = self.videos.paths[index]
        label = self.videos.labels[index]
        if self.train:
            rng = self.rng(index)
            start = temporal_window(len(frames), self.clip_frames, rng)
            clip = _crop(frames[start : start + self.clip_frames], self.crop_size, rng, path)
            if rng.random() < 0.5 and self.flip:
                clip = clip[:, :, ::-1]  # left-right flip, the same for every frame of the clip
            return self._to_tensor(clip), label, index
        if self.eval_windows == "center":
            start = temporal_window(len(frames), self.clip_frames, None)
            clip = _crop(frames[start : start + self.clip_frames], self.crop_size, None, path)
            return self._to_tensor(clip), label, index
        windows = [
            _crop(frames[s : s + self.clip_frames], self.crop_size, None, path)
            for s in range(0, len(frames) - self.clip_frames + 1, self.clip_frames)
        ]
        return torch.stack([self._to_tensor(w) for w in windows]), label, index

    @staticmethod
    def _to_tensor(clip: np.ndarray) -> torch.Tensor:
        return rgb_to_model_input(np.ascontiguousarray(clip), "uint8")[0]  # C x T x S x S


def collate_windows(batch):
    """Batch of evaluation items with several windows each: windows concatenated, and how many per video."""
    clips, labels, indices = zip(*batch)
    counts = [c.shape[0] if c.dim() == 5 else 1 for c in clips]
    flat = torch.cat([c if c.dim() == 5 else c.unsqueeze(0) for c in clips])
    return flat, torch.tensor(labels), torch.tensor(indices), torch.tensor(counts)


# ---------------------------------------------------------------------------------------------------
# Running a data set through a DataLoader
# ---------------------------------------------------------------------------------------------------


def iterate_batches(loader: DataLoader):
    """Iterate ``loader``; an error raised in a decoding worker comes back as its own one-line message.

    DataLoader re-raises a worker's exception with the worker's whole traceback as the message; the CLI
    would print all of it on one line. The original message ends that traceback.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except I3DError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            # I3DError keeps messages on one line, so the traceback is flattened: cut after its last
            # "module.Class: " marker.
            marker = f"{type(exc).__module__}.{type(exc).__name__}: "
            original = text.rsplit(marker, 1)[-1] if marker in text else text
            raise type(exc)(original) from None
        yield batch


def decoding_worker_init(_worker_id: int) -> None:
    """``worker_init_fn`` of the loaders: one thread per worker."""
    # Decoding is the work of a worker; one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)
