"""Atomic file writing: every file the project writes goes through here, so a crash or Ctrl-C never
leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the user's usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` that writes to a temporary file and renames it onto ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: PathLike) -> None:
    """Raise an OSError naming ``path`` unless a file can be written there now: a temporary file is made and
    removed beside it, as :func:`atomic_path` will. For outputs written after long work (FVD statistics
    after embedding a whole set), so a missing folder, a read-only one, or a path through a file is found
    before the work, not after it."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(21, "is a folder; give a file name", os.fspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".check", dir=target.parent)
    except OSError as exc:
        message = f"cannot write {target.name} in this folder ({exc.strerror or type(exc).__name__})"
        raise OSError(exc.errno, message, os.fspath(target.parent)) from None
    os.close(fd)
    os.unlink(tmp)


def write_json(path: PathLike, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def append_jsonl(path: PathLike, record: Any) -> None:
    """Append one JSON line and fsync it; a line is either fully there or (after a crash) detectably cut."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
