"""Errors the project raises on bad input. Each message is one line that names the file and the problem;
the CLI prints it without a traceback and exits non-zero."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class I3DError(Exception):
    """Base class: a user-facing error with a one-line message."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        self.path = os.fspath(path) if path is not None else None
        message = " ".join(str(message).split())  # one line, always
        super().__init__(f"{self.path}: {message}" if self.path else message)


class VideoError(I3DError):
    """A video (or frame folder) that cannot be read or has no usable frame."""


class WeightsError(I3DError):
    """A weight file that is missing, corrupt, has the wrong checksum, or does not fit the model."""


class ConversionError(I3DError):
    """A conversion source whose tensors do not map one-to-one onto the model."""


class InputError(I3DError, ValueError):
    """A model input or data set with the wrong shape, dtype, range or size."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (third-party errors can span many lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
