"""An exclusive, non-blocking lock on an output folder, so two runs never write one folder at once.

Two ``features`` runs on one output folder used to both do all the work, leave duplicate manifest lines and
delete each other's temporary files (issue 17, defect 6). The run that holds :class:`FolderLock` owns the
folder; a second run is refused at once with a message naming the folder and the process holding it,
before it reads, compacts or cleans anything.

The lock is an OS lock on ``.i3d-torch.lock`` in the folder (``fcntl.flock`` on POSIX, ``msvcrt.locking``
on Windows): the OS releases it when the holder exits, even by SIGKILL, so a killed run never leaves a
stale lock behind (at most an unlocked file, which the next run takes over). The holder deletes the file
before it lets go, so a finished run leaves the folder as it would be without the lock; a run that locked
the file just as it was deleted sees that the name no longer leads to its file and starts over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Optional

from i3d_torch.core.errors import InputError

__all__ = ["LOCK_NAME", "FolderBusy", "FolderLock"]

LOCK_NAME = ".i3d-torch.lock"


class FolderBusy(InputError):
    """Another live process holds the output folder's lock."""


def _try_lock(handle: IO) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(handle: IO, path: Path) -> bool:
    try:
        mine, now = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _reason(exc: OSError, new: str) -> str:
    """The OS's reason, and what it means for the paths where Linux's word misleads: mkdir in /proc or /sys
    say "No such file or directory" of a folder or file the user asked to create."""
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, NotADirectoryError):
        return f"{reason}: a part of the path is a file"
    if isinstance(exc, FileNotFoundError):
        return f"{reason}: the folder is missing or does not allow new {new}"
    return reason


class FolderLock:
    """``with FolderLock(folder, what):`` holds the folder's lock for the block, or raises
    :class:`FolderBusy` at once when another process holds it."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._handle: Optional[IO] = None

    def acquire(self) -> None:
        """Lock the folder (made if missing). Raises :class:`FolderBusy` when another process holds it, and
        :class:`~i3d_torch.core.errors.InputError` naming the folder when it cannot be made or written to
        (an I3DError, so that under torchrun every rank learns of it instead of waiting)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # also: a path through a file (/dev/null/x) is ENOTDIR below
            raise InputError("exists and is not a folder; give --out a folder", self.folder) from None
        except OSError as exc:
            raise InputError(f"cannot create the output folder ({_reason(exc, 'folders')})", self.folder) from None
        for _ in range(10):  # retried only when the holder deleted the file in between
            try:
                handle = open(self.path, "a+", encoding="utf-8")
            except OSError as exc:
                raise InputError(f"cannot write in the output folder ({_reason(exc, 'files')})", self.folder) from None
            if not _try_lock(handle):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusy(
                    f"another {self.what} ({holder}) is writing to this folder; wait for it to finish, or use "
                    f"another --out",
                    self.folder,
                )
            if _same_file(handle, self.path):
                break
            handle.close()  # locked a file its holder had just deleted: lock the current one instead
        else:
            raise FolderBusy(f"could not lock {LOCK_NAME} (it keeps being replaced); try again", self.folder)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            try:
                self.path.unlink()  # while still locked: nobody can be holding this file now
            except OSError:
                pass
            self._handle.close()  # closing the descriptor releases the OS lock
            self._handle = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
