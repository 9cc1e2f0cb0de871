"""Real test videos, encoded with PyAV, for any test that needs a video file or a frame folder.

    from videogen import write_video, moving_shapes, index_coded_frames, frame_index

    write_video(tmp_path / "clip.mp4", moving_shapes(16, 240, 320), fps=25)   # h264 in mp4
    write_video(tmp_path / "exact.mkv", frames, fps=30)                      # lossless FFV1
    write_frame_folder(tmp_path / "frames", frames)                           # 000000.png, ...

Each container gets a codec that works for it (``DEFAULT_CODECS``); lossless ones (``LOSSLESS``) decode
to exactly the RGB frames given. Frames are uint8 ``[T, H, W, 3]`` RGB; ``[T, H, W]`` or ``[T, H, W, 1]``
writes grayscale, ``[..., 4]`` RGBA (alpha kept where the codec has it), uint16 a 16-bit stream.
Files are written atomically (``i3d_torch.core.fileio``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Dict, Optional, Sequence

import av
import cv2
import numpy as np

from i3d_torch.core.fileio import atomic_open, atomic_path

#: Container (by extension) -> (FFmpeg muxer, default codec).
DEFAULT_CODECS: Dict[str, tuple] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "png"),
    ".mkv": ("matroska", "ffv1"),
    ".avi": ("avi", "mjpeg"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
#: Codecs (with the settings write_video gives them) that reproduce 8-bit RGB input exactly.
LOSSLESS = ("ffv1", "png", "libx264rgb", "rawvideo", "qtrle")

#: Frame folders: image extension -> what cv2.imencode writes.
FRAME_FORMATS = (".png", ".jpg", ".bmp", ".tif")


def _channels(frames: np.ndarray) -> int:
    return 1 if frames.ndim == 3 else frames.shape[3]


def _pixel_formats(codec: str, frames: np.ndarray) -> tuple:
    """(pixel format the encoder stores, format of the numpy frames handed to it) for this codec and input."""
    channels, deep = _channels(frames), frames.dtype == np.uint16
    even = frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    if codec == "png":
        if deep:
            return ("gray16be", "gray16le") if channels == 1 else ("rgb48be", "rgb48le")
        return {1: ("gray", "gray"), 3: ("rgb24", "rgb24"), 4: ("rgba", "rgba")}[channels]
    if deep:
        raise ValueError(f"codec {codec} is not used for 16-bit frames here: use png in .mov or ffv1")
    source = {1: "gray", 3: "rgb24", 4: "rgba"}[channels]
    if codec == "ffv1":
        return ("bgra" if channels == 4 else "bgr0"), source
    if codec == "libx264rgb":
        return "rgb24", source
    if codec == "rawvideo":
        return "bgr24", source  # AVI stores raw RGB as BGR; writing rgb24 would swap channels on read
    if codec == "qtrle":
        return ("argb" if channels == 4 else "rgb24"), source
    if codec == "gif":
        return ("gray" if channels == 1 else "rgb8"), source
    if codec in ("libvpx", "libvpx-vp9"):
        return ("yuva420p" if channels == 4 else "yuv420p"), source
    if codec == "mjpeg":
        return ("yuvj420p" if even else "yuvj444p"), source
    if codec == "mpeg4":
        return "yuv420p", source
    # h264/hevc: 4:2:0 needs even sizes; 4:4:4 takes any size.
    return ("yuv420p" if even else "yuv444p"), source


def _frame(array: np.ndarray, source_format: str) -> av.VideoFrame:
    if source_format == "gray16le":
        array = array.reshape(array.shape[:2])
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=source_format)


def write_video(
    path,
    frames: np.ndarray,
    fps: float,
    codec: Optional[str] = None,
    *,
    pix_fmt: Optional[str] = None,
    timestamps: Optional[Sequence[float]] = None,
    display_matrix: Optional[Sequence[int]] = None,
    options: Optional[Dict[str, str]] = None,
    container_options: Optional[Dict[str, str]] = None,
) -> Path:
    """Encode ``frames`` (uint8/uint16 ``[T, H, W(, C)]``) to ``path``; the container comes from the extension.

    Args:
        fps: nominal frame rate; frame i is shown at i / fps unless ``timestamps`` are given.
        codec: FFmpeg encoder; default from :data:`DEFAULT_CODECS`. ``libx264rgb`` is set to lossless (qp 0).
        pix_fmt: override the stored pixel format.
        timestamps: presentation time of each frame in seconds (variable frame rate), 1 ms resolution.
        display_matrix: the 9 ints of an MP4/MOV display matrix (rotation metadata).
        options: extra encoder options.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}`` (MP4 index first).

    ``frames`` may hold zero frames ``[0, H, W, 3]``: a file with an empty video stream.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must be [T, H, W(, C)], got shape {frames.shape}")
    muxer, default_codec = DEFAULT_CODECS[path.suffix.lower()]
    codec = codec or default_codec
    stored_format, source_format = _pixel_formats(codec, frames)
    encoder_options = {"qp": "0"} if codec == "libx264rgb" else {}
    encoder_options.update(options or {})
    rate = Fraction(fps).limit_denominator(100_000)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=muxer, options=container_options or {}) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = pix_fmt or stored_format
            stream.options = encoder_options
            time_base = Fraction(1, 1000) if timestamps is not None else 1 / rate
            stream.codec_context.time_base = time_base
            if display_matrix is not None:
                stream.set_display_matrix(list(display_matrix))
            container.start_encoding()  # the header, even when no frame follows
            for index, array in enumerate(frames):
                frame = _frame(array, source_format)
                frame.time_base = time_base
                frame.pts = round(timestamps[index] * 1000) if timestamps is not None else index
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def write_frame_folder(folder, frames: np.ndarray, ext: str = ".png", start: int = 0) -> Path:
    """Write ``frames`` (RGB, RGBA, gray; uint8 or uint16 for PNG/TIFF) as ``000000.png, 000001.png, ...``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(np.asarray(frames)):
        if array.ndim == 3 and array.shape[2] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        elif array.ndim == 3 and array.shape[2] == 4:
            array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
        ok, encoded = cv2.imencode(ext, array)
        if not ok:
            raise ValueError(f"OpenCV cannot encode {array.shape} {array.dtype} as {ext}")
        with atomic_open(folder / f"{start + index:06d}{ext}", "wb") as fh:
            fh.write(encoded.tobytes())
    return folder


# ------------------------------------------------------------------------------------ patterns

#: Frame-index code: bits drawn as black/white vertical bars, wide enough to survive lossy codecs and resizing.
INDEX_BITS = 8


def index_coded_frames(count: int, height: int = 64, width: int = 96) -> np.ndarray:
    """uint8 RGB ``[count, H, W, 3]`` where frame i shows i in binary as INDEX_BITS black/white bars
    (most significant bit on the left); recover it with :func:`frame_index`. ``count`` <= 256."""
    if count > 2**INDEX_BITS:
        raise ValueError(f"index_coded_frames encodes at most {2**INDEX_BITS} frames, got {count}")
    frames = np.zeros((count, height, width, 3), np.uint8)
    edges = np.linspace(0, width, INDEX_BITS + 1).round().astype(int)
    for i in range(count):
        for bit in range(INDEX_BITS):
            if (i >> (INDEX_BITS - 1 - bit)) & 1:
                frames[i, :, edges[bit] : edges[bit + 1]] = 255
    return frames


def frame_index(frame: np.ndarray) -> int:
    """The index drawn by :func:`index_coded_frames`, read from the middle of each bar (survives resizing)."""
    width = frame.shape[1]
    row = frame[:, :, :3].astype(np.float64).mean(axis=(0, 2))
    centres = ((np.arange(INDEX_BITS) + 0.5) * width / INDEX_BITS).astype(int)
    bits = row[centres] > 127.5
    return int(sum(int(b) << (INDEX_BITS - 1 - k) for k, b in enumerate(bits)))


def moving_shapes(count: int, height: int = 112, width: int = 112, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB ``[count, H, W, 3]``: a colour gradient with a square and a disc moving across it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 96)], axis=-1
    ).astype(np.uint8)
    square_colour = rng.integers(0, 256, 3, dtype=np.uint8)
    disc_colour = rng.integers(0, 256, 3, dtype=np.uint8)
    side = max(2, min(height, width) // 5)
    radius = max(2, min(height, width) // 8)
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frame = background.copy()
        top = (i * 3) % max(height - side, 1)
        left = (i * 5) % max(width - side, 1)
        frame[top : top + side, left : left + side] = square_colour
        cy = height / 2 + (height / 4) * np.sin(i / 4)
        cx = width / 2 + (width / 4) * np.cos(i / 4)
        frame[(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = disc_colour
        frames[i] = frame
    return frames


def video_bytes_fraction(path, fraction: float, out) -> Path:
    """Copy the first ``fraction`` of ``path``'s bytes to ``out`` (a truncated download)."""
    data = Path(path).read_bytes()
    with atomic_open(out, "wb") as fh:
        fh.write(data[: int(len(data) * fraction)])
    return Path(out)


__all__ = [
    "DEFAULT_CODECS",
    "LOSSLESS",
    "FRAME_FORMATS",
    "write_video",
    "write_frame_folder",
    "index_coded_frames",
    "frame_index",
    "moving_shapes",
    "video_bytes_fraction",
]
