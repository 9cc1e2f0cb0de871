"""Reading videos and frame folders the way DeepMind preprocessed Kinetics for I3D.

DeepMind's recipe (Carreira & Zisserman 2017, and the kinetics-i3d README): frames sampled at 25 fps,
RGB, resized so the shorter side is 256 pixels with bilinear interpolation, centre-cropped to 224x224,
then mapped to [-1, 1] (:mod:`i3d_torch.core.transforms`). Short videos are looped to the clip length.

This module does the reading part and stays bounded in memory: :func:`iter_frames` streams uint8 RGB
frames, each resampled in time and resized as it is decoded, so an 8K video never holds more than the
frame being decoded at full size.

Decoders, and why each:

* **PyAV (FFmpeg)** reads every video file (mp4, avi, mkv, webm, mov, gif, ...): it gives the
  presentation timestamp of each frame (needed to resample variable-frame-rate video exactly), the
  display matrix (rotation of phone videos), and converts any pixel format (grayscale, alpha, palette,
  YUV) to RGB with FFmpeg's swscale; formats deeper than 8 bits are taken as 16-bit RGB and scaled here
  with the same rule as 16-bit images.
* **OpenCV** reads the images of a frame folder (``cv2.imdecode`` keeps 16-bit, grayscale and alpha as
  stored, so they are converted here the same way every time) and does all resizing:
  ``cv2.resize(..., INTER_LINEAR)`` on the uint8 RGB frame, i.e. bilinear with half-pixel centres and
  edge clamping. Like DeepMind's (cv2-style) bilinear resize it does not antialias when shrinking.

Every failure is an :class:`~i3d_torch.core.errors.VideoError` whose one-line message names the file.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import av
import cv2
import numpy as np

from i3d_torch.core.errors import InputError, VideoError

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions treated as videos by :func:`is_video_path` (any file FFmpeg can demux is still read).
VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv",
    ".3gp", ".ts", ".mts", ".m2ts",
)  # fmt: skip
#: Image extensions that make up a frame folder (read with OpenCV, sorted by natural order of names).
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: Frame rate of a frame folder (images carry no timestamps); override with ``folder_fps=``.
DEFAULT_FOLDER_FPS = 25.0
#: Frame rate reported when a container states none (e.g. a single-frame file).
FALLBACK_FPS = 25.0
#: Largest long-side/short-side ratio resized to ``short_side``: beyond it the long side explodes
#: (4000x16 with short side 256 would be 64000 px wide, 49 MB a frame) and no crop of it is meaningful.
MAX_ASPECT_RATIO = 16.0
#: Largest frame accepted (pixels): 8K (7680x4320 and DCI 8192x4320) fits. The size a container's header states
#: is checked before the decoder is started, and each decoded frame before it is converted to RGB, so a small
#: damaged file whose header claims 16000x16000 cannot make the decoder allocate gigabytes (768 MB per RGB frame).
MAX_FRAME_PIXELS = 8192 * 8192
#: Share of a video's stated length (frames or seconds) that may be missing at the end before decoding is said to
#: have ended early; containers round their durations, and a muxed audio track can outlast the video a little.
EARLY_END_TOLERANCE = 0.05
#: A jump between consecutive timestamps longer than this (seconds) is damage, not a long still frame.
MAX_TIMESTAMP_GAP = 60.0
#: Packets demuxed by :func:`probe` to measure the frame rate and detect variable frame rate.
PROBE_PACKETS = 600

# Demuxers that read a single still image; such a file is not a video even when named .mp4.
# (gif_pipe reads animated GIFs, so it stays a video.)
_IMAGE_FORMAT_PREFIXES = ("image2",)
_IMAGE_FORMAT_SUFFIX = "_pipe"
_ANIMATED_IMAGE_FORMATS = ("gif_pipe",)

# Exceptions a damaged file can raise while decoding or converting a frame. Anything else is a bug and
# must surface. (FFmpeg's errors all derive from av.FFmpegError; cv2.error comes from imdecode.)
_DECODE_ERRORS = (av.FFmpegError, ValueError, OSError, MemoryError, cv2.error, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video without decoding it all.

    Attributes:
        path: the file or folder, as given.
        fps: source frame rate: the container's stated average, or the mean over the probed packets when
            the rate is variable or the two differ by over 1%; a frame folder's ``folder_fps``.
        frame_count: number of frames if the container states it or probing saw them all, else None.
        width, height: displayed size in pixels, after rotation.
        rotation: clockwise degrees (0, 90, 180, 270) the reader rotates stored frames to display them.
        duration: seconds, or None if unknown.
        variable_frame_rate: True if the probed frame intervals differ by more than 10%.
    """

    path: str
    fps: float
    frame_count: Optional[int]
    width: int
    height: int
    rotation: int
    duration: Optional[float]
    variable_frame_rate: bool


class TruncatedVideoWarning(UserWarning):
    """A video whose decoding ended well before the length its container states (a file cut short)."""


@dataclass
class DecodeReport:
    """How much of a video file decoding delivered, against what its container states.

    Pass one to :func:`iter_frames` (``report=``); it is filled in when decoding reaches the end of the file
    (not when the caller stops early). ``ended_early`` is True when the decoded part falls short of the stated
    length by more than :data:`EARLY_END_TOLERANCE` of it and more than two frames: the sign of a truncated
    download or a damaged index, which would otherwise classify a fraction of the video without a word.
    """

    decoded_frames: int = 0
    decoded_seconds: Optional[float] = None
    stated_frames: Optional[int] = None
    stated_seconds: Optional[float] = None
    finished: bool = False

    @property
    def ended_early(self) -> bool:
        if not self.finished:
            return False
        if self.stated_frames and self.decoded_frames < self.stated_frames:
            missing = self.stated_frames - self.decoded_frames
            if missing > max(2, EARLY_END_TOLERANCE * self.stated_frames):
                return True
        if self.stated_seconds and self.decoded_seconds is not None and self.decoded_frames:
            frame = self.decoded_seconds / self.decoded_frames
            missing = self.stated_seconds - self.decoded_seconds
            return missing > max(2 * frame, EARLY_END_TOLERANCE * self.stated_seconds)
        return False

    def describe(self) -> str:
        """One line: what was decoded against what the container states."""
        parts = []
        if self.stated_seconds and self.decoded_seconds is not None:
            share = 100 * self.decoded_seconds / self.stated_seconds
            parts.append(f"{self.decoded_seconds:.2f} s of the {self.stated_seconds:.2f} s its container states")
            parts.append(f"{share:.0f} %")
        if self.stated_frames:
            parts.append(f"{self.decoded_frames} of {self.stated_frames} frames")
        return "video ends early: decoded " + ", ".join(parts) + " (truncated or damaged file?)"

    def to_dict(self) -> dict:
        return {
            "complete": not self.ended_early,
            "decoded_frames": self.decoded_frames,
            "decoded_seconds": self.decoded_seconds,
            "stated_frames": self.stated_frames,
            "stated_seconds": self.stated_seconds,
        }


# --------------------------------------------------------------------------------------------- paths


def _natural_key(name: str) -> list:
    """Sort key where ``frame_2`` precedes ``frame_10`` (numbers compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _frame_files(folder: str) -> List[str]:
    """The image files of a frame folder in natural order; hidden files (``.name``) are ignored."""
    names = [
        name
        for name in os.listdir(folder)
        if not name.startswith(".")
        and name.lower().endswith(FRAME_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, name))
    ]
    return [os.path.join(folder, name) for name in sorted(names, key=_natural_key)]


def _check_path(path: PathLike) -> Tuple[str, bool]:
    """Return ``(path, is_folder)`` or raise a VideoError saying why the path cannot be read."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        problem = "broken symbolic link" if os.path.islink(path) else "no such file or directory"
        raise VideoError(problem, path) from None
    except PermissionError:
        raise VideoError("permission denied", path) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VideoError("symbolic link loop", path) from None
        raise VideoError(f"cannot access ({e.strerror or e})", path) from None
    if stat.S_ISDIR(st.st_mode):
        try:
            frames = _frame_files(path)
        except PermissionError:
            raise VideoError("permission denied (cannot list the folder)", path) from None
        if not frames:
            raise VideoError(
                f"folder has no frame images ({', '.join(FRAME_EXTENSIONS)}); a folder is read as one video "
                "made of its images",
                path,
            )
        return path, True
    if not stat.S_ISREG(st.st_mode):
        # FIFOs and devices could block forever or never end.
        raise VideoError("not a regular file or folder", path)
    if st.st_size == 0:
        raise VideoError("empty file (0 bytes)", path)
    if not os.access(path, os.R_OK):
        raise VideoError("permission denied", path)
    return path, False


def is_video_path(path: PathLike) -> bool:
    """True for a file with a video extension (:data:`VIDEO_EXTENSIONS`) or a folder of frame images."""
    path = os.fspath(path)
    if os.path.isdir(path):
        try:
            return bool(_frame_files(path))
        except OSError:
            return False
    return path.lower().endswith(VIDEO_EXTENSIONS)


# ------------------------------------------------------------------------------------ frame shaping


def _output_size(height: int, width: int, short_side: Optional[int], path: str) -> Tuple[int, int]:
    """(height, width) after resizing the shorter side to ``short_side``, aspect ratio kept."""
    if short_side is None:
        return height, width
    short, long = min(height, width), max(height, width)
    if long > MAX_ASPECT_RATIO * short:
        raise VideoError(
            f"extreme aspect ratio {width}x{height}: resizing the short side to {short_side} would make "
            f"frames {math.floor(long * short_side / short + 0.5)} px long (limit {MAX_ASPECT_RATIO:g}:1); "
            "crop the video or read it with short_side=None",
            path,
        )
    scaled_long = max(1, math.floor(long * short_side / short + 0.5))
    return (short_side, scaled_long) if height <= width else (scaled_long, short_side)


def resize_bilinear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one uint8 [H, W, C] frame (OpenCV INTER_LINEAR: half-pixel centres, no antialias)."""
    if frame.shape[:2] == (height, width):
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


def _scale_16_to_8_bit(values: np.ndarray) -> np.ndarray:
    """uint16 v to uint8 round(v / 257), so 0 -> 0 and 65535 -> 255 (integer form; v / 257 never ties)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _image_to_rgb8(image: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded image (BGR/BGRA/gray, 8 or 16 bit) to uint8 RGB [H, W, 3].

    16-bit values v map to round(v / 257) (65535 -> 255); alpha is dropped (colours kept as stored,
    not composited), as FFmpeg's conversion of video frames does.
    """
    if image.dtype == np.uint16:
        image = _scale_16_to_8_bit(image)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image sample type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported image with {image.shape[2]} channels")


class _FrameShaper:
    """Resizes and rotates decoded RGB frames to one output shape, fixed by the first frame.

    Resizing happens in the stored orientation, before rotating, so the full-size frame is never copied.
    A stream whose frame size changes midway keeps the first output shape (batching needs one shape).
    """

    def __init__(self, short_side: Optional[int], rotation: int, path: str):
        self.short_side = short_side
        self.quarter_turns = rotation // 90  # clockwise
        self.path = path
        self.stored_size: Optional[Tuple[int, int]] = None  # (height, width) before rotation

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.stored_size is None:
            height, width = rgb.shape[:2]
            if self.quarter_turns % 2:
                out_w, out_h = _output_size(width, height, self.short_side, self.path)
            else:
                out_h, out_w = _output_size(height, width, self.short_side, self.path)
            self.stored_size = (out_h, out_w)
        frame = resize_bilinear(rgb, *self.stored_size)
        if self.quarter_turns:
            frame = np.ascontiguousarray(np.rot90(frame, k=-self.quarter_turns))  # rot90 turns anticlockwise
        return frame


def _check_frame_pixels(width: int, height: int, path: str) -> None:
    if width <= 0 or height <= 0 or width * height > MAX_FRAME_PIXELS:
        raise VideoError(f"frame size {width}x{height} is invalid or too large", path)


def _check_stated_size(stream: "av.video.stream.VideoStream", path: str) -> None:
    """Refuse a stream whose header states a frame larger than :data:`MAX_FRAME_PIXELS`, before decoding."""
    context = stream.codec_context  # None when FFmpeg found no decoder parameters (a damaged header)
    width, height = (context.width, context.height) if context is not None else (0, 0)
    if width and height and width * height > MAX_FRAME_PIXELS:
        limit = f"{MAX_FRAME_PIXELS / 1e6:.3g}-megapixel"
        raise VideoError(f"the header states a {width}x{height} frame, above the {limit} limit (damaged header?)", path)


# ---------------------------------------------------------------------------------- time resampling


@dataclass
class _SourceFrame:
    """A decoded (or decodable) frame with its presentation interval; ``load`` makes the output array."""

    start: Fraction  # seconds
    duration: Optional[Fraction]  # seconds, None if unknown
    load: Callable[[], np.ndarray]


def _resample(
    frames: Iterator[_SourceFrame], fps: Optional[float], default_duration: Fraction, path: str
) -> Iterator[np.ndarray]:
    """Frames at ``fps`` by presentation time: output k is the source frame whose interval holds t0 + k/fps.

    Each source frame is loaded (converted, resized) at most once and only if some output needs it, so
    dropping frames (60 -> 25 fps) costs no conversion. A frame used twice (upsampling) is copied so
    callers may modify what they get. ``fps=None`` passes every frame through.

    Damaged timestamps: one that goes backwards gives its frame a zero-length interval (never shown);
    a jump forward of more than :data:`MAX_TIMESTAMP_GAP` seconds is taken as a discontinuity and closed
    to one frame interval (with a warning), so a corrupt timestamp cannot make millions of copies.
    """
    if fps is None:
        for frame in frames:
            yield frame.load()
        return
    step = Fraction(fps).limit_denominator(1_000_000) ** -1
    max_gap = Fraction(MAX_TIMESTAMP_GAP)
    previous: Optional[_SourceFrame] = None
    previous_array: Optional[np.ndarray] = None
    t0 = shift = Fraction(0)
    k = 0
    last_gap = min(default_duration, max_gap)  # a damaged header can state a rate of one frame a day

    def emit_until(end: Fraction) -> Iterator[np.ndarray]:
        nonlocal k, previous_array
        while t0 + k * step < end:
            if previous_array is None:
                previous_array = previous.load()
                yield previous_array
            else:
                yield previous_array.copy()
            k += 1

    for frame in frames:
        start = frame.start - shift
        if previous is None:
            t0 = start
        else:
            start = max(start, previous.start)
            if start - previous.start > max_gap:
                warnings.warn(
                    f"{path}: timestamps jump {float(start - previous.start):.0f} s at {float(previous.start):.2f} s; "
                    "treated as a discontinuity",
                    RuntimeWarning,
                    stacklevel=2,
                )
                shift += start - previous.start - last_gap
                start = previous.start + last_gap
            if start > previous.start:
                last_gap = start - previous.start
            yield from emit_until(start)
        frame.start = start
        previous, previous_array = frame, None
    if previous is not None:
        duration = previous.duration if previous.duration and previous.duration <= max_gap else last_gap
        yield from emit_until(previous.start + duration)


# -------------------------------------------------------------------------------------- PyAV videos


def _is_image_format(container: "av.container.InputContainer") -> bool:
    names = container.format.name.split(",")
    return any(
        (n.startswith(_IMAGE_FORMAT_PREFIXES) or n.endswith(_IMAGE_FORMAT_SUFFIX)) and n not in _ANIMATED_IMAGE_FORMATS
        for n in names
    )


def _open_error(path: str, error: Exception) -> VideoError:
    reason = getattr(error, "strerror", None) or str(error)
    if isinstance(error, PermissionError):
        return VideoError("permission denied", path)
    if isinstance(error, EOFError):
        return VideoError("the file ends before its headers do (truncated?)", path)
    if isinstance(error, av.error.InvalidDataError):
        hint = ""
        if path.lower().endswith((".mp4", ".mov", ".m4v", ".3gp")):
            hint = "; an MP4/MOV cut short loses its index (moov atom) and cannot be read"
        problem = f"not a readable video: FFmpeg found invalid data (damaged, truncated, or not a video{hint})"
        return VideoError(problem, path)
    return VideoError(f"cannot open as a video ({reason})", path)


def _open_container(path: str) -> "av.container.InputContainer":
    try:
        container = av.open(path, mode="r")
    except _DECODE_ERRORS as e:
        raise _open_error(path, e) from None
    try:
        if _is_image_format(container):
            kind = container.format.name.split(",")[0].replace("_pipe", "").upper()
            raise VideoError(
                f"is a single {kind} image, not a video; put still frames in a folder to read them as a video",
                path,
            )
        return container
    except BaseException:
        container.close()
        raise


def _video_stream(container: "av.container.InputContainer", path: str) -> "av.video.stream.VideoStream":
    """The first video stream that is not cover art (an mp3's attached picture is not a video)."""
    attached = av.stream.Disposition.attached_pic
    for stream in container.streams.video:
        if not stream.disposition & attached:
            return stream
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise VideoError(f"has no video stream (streams: {', '.join(kinds)})", path)


def _clockwise_rotation(frame: "av.VideoFrame") -> int:
    """The display rotation of a decoded frame, as clockwise degrees 0/90/180/270 (FFmpeg reports anticlockwise)."""
    try:
        anticlockwise = frame.rotation
    except _DECODE_ERRORS:
        return 0
    if not anticlockwise or not math.isfinite(anticlockwise):
        return 0
    return int(round(-anticlockwise / 90.0)) % 4 * 90


def _frame_start(frame: "av.VideoFrame", index: int, fallback_step: Fraction, previous: Optional[Fraction]) -> Fraction:
    """Presentation time in seconds; frames without a timestamp follow the previous one by one frame."""
    if frame.pts is not None and frame.time_base:
        return frame.pts * Fraction(frame.time_base)
    if previous is None:
        return index * fallback_step
    return previous + fallback_step


def _nominal_step(stream: "av.video.stream.VideoStream") -> Fraction:
    """Seconds per frame from the container's stated rate, or :data:`FALLBACK_FPS`."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and rate > 0:
            return 1 / Fraction(rate)
    return 1 / Fraction(FALLBACK_FPS)


def _decoded_video_frames(
    container: "av.container.InputContainer", stream, path: str, short_side: Optional[int], report: DecodeReport
) -> Iterator[_SourceFrame]:
    step = _nominal_step(stream)
    shaper: Optional[_FrameShaper] = None  # made at the first frame, which carries the rotation
    start: Optional[Fraction] = None
    first_start: Optional[Fraction] = None
    index = packets = 0
    demuxed = container.demux(stream)
    demux_error: Optional[BaseException] = None
    while True:
        try:
            packet = next(demuxed)
        except StopIteration:
            break
        except _DECODE_ERRORS as e:
            # A cut or damaged container: flush the frames the decoder still holds, then report.
            demux_error, packet = e, None
        if packet is not None and packet.is_corrupt:
            # The demuxer knows this packet is cut short (truncated file) or damaged: its frame would be
            # partly garbage, so the stream ends before it.
            demux_error, packet = _DamagedData("a packet is cut short or damaged"), None
        packets += packet is not None and packet.size > 0  # the last, empty packet flushes the decoder
        for frame in stream.decode(packet):
            if frame.is_corrupt:
                raise _DamagedData("the decoder marked a frame as damaged")
            if shaper is None:
                shaper = _FrameShaper(short_side, _clockwise_rotation(frame), path)
            start = _frame_start(frame, index, step, start)
            duration = frame.duration * Fraction(frame.time_base) if frame.duration and frame.time_base else None
            index += 1
            if first_start is None:
                first_start = start
            report.decoded_frames = index
            report.decoded_seconds = float(start + (duration or step) - first_start)
            yield _SourceFrame(start, duration, _loader(frame, shaper, path))
        if demux_error is not None:
            raise demux_error
    if index == 0:
        raise VideoError(_no_frame_problem(packets), path)


def _no_frame_problem(packets: int) -> str:
    if packets:
        return f"none of its {packets} video packets decoded to a frame (damaged data)"
    return "contains no video frames (empty stream, or the file is damaged or truncated)"


def _video_frame_to_rgb8(frame: "av.VideoFrame") -> np.ndarray:
    """Any pixel format to uint8 RGB [H, W, 3]. Formats deeper than 8 bits go through 16-bit RGB and the
    same round(v / 257) as 16-bit images, because FFmpeg's direct conversion to 8 bits dithers."""
    if max((c.bits for c in frame.format.components), default=8) > 8:
        return _scale_16_to_8_bit(frame.to_ndarray(format="rgb48le"))
    return frame.to_ndarray(format="rgb24")


def _loader(frame: "av.VideoFrame", shaper: _FrameShaper, path: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        _check_frame_pixels(frame.width, frame.height, path)
        return shaper(_video_frame_to_rgb8(frame))

    return load


def _stated_length(container: "av.container.InputContainer", stream) -> Tuple[Optional[int], Optional[float]]:
    """(frames, seconds) the container states for the video stream, each None where it states nothing."""
    frames = stream.frames or None
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * Fraction(stream.time_base))
    elif container.duration:  # Matroska/WebM state the segment's duration only (microseconds)
        seconds = container.duration / av.time_base
    return frames, seconds


def _iter_video_file(
    path: str, fps: Optional[float], short_side: Optional[int], report: DecodeReport, strict: bool
) -> Iterator[np.ndarray]:
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        _check_stated_size(stream, path)
        report.stated_frames, report.stated_seconds = _stated_length(container, stream)
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the bottleneck at high resolution
        decoded = _decoded_video_frames(container, stream, path, short_side, report)
        yield from _resample(decoded, fps, _nominal_step(stream), path)
    finally:
        container.close()
    # Reached only when decoding ran to the end of the file (a caller that stops early closes the generator).
    report.finished = True
    if report.ended_early:
        if strict:
            raise VideoError(report.describe(), path)
        warnings.warn(f"{path}: {report.describe()}", TruncatedVideoWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ frame folders


def _read_image(file: str) -> np.ndarray:
    """Decode one frame image to uint8 RGB; np.fromfile + imdecode also handles non-ASCII paths everywhere."""
    data = np.fromfile(file, dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty image file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable image")
    return _image_to_rgb8(image)


def _iter_frame_folder(
    folder: str, files: Sequence[str], fps: Optional[float], short_side: Optional[int], folder_fps: float
) -> Iterator[np.ndarray]:
    shaper = _FrameShaper(short_side, 0, folder)
    step = 1 / Fraction(folder_fps).limit_denominator(1_000_000)

    def load_file(file: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            try:
                image = _read_image(file)
            except _DECODE_ERRORS as e:
                raise _FrameFileError(f"{os.path.basename(file)}: {e}") from None
            _check_frame_pixels(image.shape[1], image.shape[0], file)
            return shaper(image)

        return load

    sources = (_SourceFrame(i * step, step, load_file(f)) for i, f in enumerate(files))
    yield from _resample(sources, fps, step, folder)


class _DamagedData(ValueError):
    """Data the demuxer or decoder flags as damaged; handled like a decoding failure."""


class _FrameFileError(ValueError):
    """One image of a frame folder does not decode; handled like a damaged video frame."""


# ------------------------------------------------------------------------------------------- public


def _guard_stream(frames: Iterator[np.ndarray], path: str, max_frames: Optional[int]) -> Iterator[np.ndarray]:
    """Apply the damage policy: no frame -> VideoError; a failure after some frames ends the stream with a warning."""
    produced = 0
    if max_frames is not None and max_frames <= 0:
        return
    try:
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except _DECODE_ERRORS as e:
                reason = " ".join(str(getattr(e, "strerror", None) or e).split()) or type(e).__name__
                if produced == 0:
                    raise VideoError(f"no frame could be decoded ({reason})", path) from None
                warnings.warn(
                    f"{path}: decoding stopped after {produced} frame(s), the rest is damaged ({reason})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                break
            produced += 1
            yield frame
            if max_frames is not None and produced >= max_frames:
                break
    finally:
        frames.close()
    if produced == 0:
        raise VideoError(_no_frame_problem(0), path)


def iter_frames(
    path: PathLike,
    *,
    fps: Optional[float] = 25.0,
    short_side: Optional[int] = 256,
    max_frames: Optional[int] = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    report: Optional[DecodeReport] = None,
    strict: bool = False,
) -> Iterator[np.ndarray]:
    """Stream uint8 RGB frames ``[H, W, 3]`` of a video file or frame folder, one at a time.

    Args:
        path: a video file, or a folder of frame images (read in natural name order).
        fps: resample to this rate by presentation timestamps (output k is the frame shown at
            t0 + k / fps); None yields every decoded frame.
        short_side: resize (bilinear) so the shorter side has this many pixels; None keeps the size.
        max_frames: stop after this many output frames (decoding stops there too).
        folder_fps: the frame rate a frame folder was captured at (images carry no timestamps).
        report: a :class:`DecodeReport` to fill in: frames and seconds decoded against the container's stated
            length (video files only).
        strict: a video file whose decoding ends well before its stated length raises :class:`VideoError`
            instead of warning with :class:`TruncatedVideoWarning`.

    Grayscale, alpha (dropped) and 16-bit frames come out as 8-bit RGB; rotation metadata is applied.
    Path problems raise :class:`VideoError` at once; a file with no decodable frame raises it at the
    first ``next()``; a file damaged midway ends early with a ``RuntimeWarning``.
    """
    path, is_folder = _check_path(path)
    if fps is not None and not fps > 0:
        raise InputError(f"fps must be positive or None, got {fps!r}")
    if short_side is not None and not (short_side >= 1 and int(short_side) == short_side):
        raise InputError(f"short_side must be a positive whole number of pixels or None, got {short_side!r}")
    short_side = None if short_side is None else int(short_side)
    if is_folder:
        if not folder_fps > 0:
            raise InputError(f"folder_fps must be positive, got {folder_fps!r}")
        frames = _iter_frame_folder(path, _frame_files(path), fps, short_side, folder_fps)
    else:
        frames = _iter_video_file(path, fps, short_side, report if report is not None else DecodeReport(), strict)
    return _guard_stream(frames, path, max_frames)


def read_video(path: PathLike, **iter_frames_kwargs) -> Tuple[np.ndarray, VideoInfo]:
    """The whole video as uint8 ``[T, H, W, 3]`` (options as :func:`iter_frames`) and its :class:`VideoInfo`."""
    folder_fps = iter_frames_kwargs.get("folder_fps", DEFAULT_FOLDER_FPS)
    info = probe(path, folder_fps=folder_fps)
    frames = list(iter_frames(path, **iter_frames_kwargs))
    return np.stack(frames), info


def _probe_folder(path: str, folder_fps: float) -> VideoInfo:
    files = _frame_files(path)
    try:
        image = _read_image(files[0])
    except _DECODE_ERRORS as e:
        raise VideoError(f"first frame {os.path.basename(files[0])} does not decode ({e})", path) from None
    height, width = image.shape[:2]
    return VideoInfo(
        path=path,
        fps=float(folder_fps),
        frame_count=len(files),
        width=width,
        height=height,
        rotation=0,
        duration=len(files) / folder_fps,
        variable_frame_rate=False,
    )


def _is_variable_rate(gaps: List[int]) -> bool:
    """Frame intervals (in time-base ticks) that differ by more than 10% of the typical one, and by more
    than the 1-2 ticks of rounding a fixed rate gets in a coarse time base (33/34 ms at 29.97 fps)."""
    if len(gaps) < 2:
        return False
    typical = float(np.median(gaps))
    return (max(gaps) - min(gaps)) > max(2.0, 0.1 * typical)


def probe(path: PathLike, *, folder_fps: float = DEFAULT_FOLDER_FPS) -> VideoInfo:
    """Size, rate, length and rotation of a video file or frame folder.

    Demuxes up to :data:`PROBE_PACKETS` packets (cheap: no decoding) to measure frame intervals, and
    decodes the first frame to prove the file is readable and to get its rotation and size.
    Raises :class:`VideoError` naming the file if it cannot be read.
    """
    path, is_folder = _check_path(path)
    if is_folder:
        return _probe_folder(path, folder_fps)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        _check_stated_size(stream, path)
        time_base = Fraction(stream.time_base) if stream.time_base else None
        pts: List[int] = []
        last_duration = 0
        first_frame = None
        reached_end = True
        try:
            for count, packet in enumerate(container.demux(stream)):
                if count >= PROBE_PACKETS and first_frame is not None:
                    reached_end = False
                    break
                if packet.size == 0 and packet.pts is None:
                    continue  # the flush packet at end of stream
                if packet.pts is not None:
                    pts.append(packet.pts)
                    last_duration = packet.duration or 0
                if first_frame is None:
                    decoded = stream.decode(packet)
                    if decoded:
                        first_frame = decoded[0]
            if first_frame is None:
                decoded = stream.decode(None)  # flush: decoders with delay give their first frame here
                first_frame = decoded[0] if decoded else None
        except _DECODE_ERRORS as e:
            if first_frame is None:
                reason = " ".join(str(getattr(e, "strerror", None) or e).split())
                raise VideoError(f"no frame could be decoded ({reason})", path) from None
            reached_end = False
        if first_frame is None:
            raise VideoError(_no_frame_problem(len(pts)), path)
        _check_frame_pixels(first_frame.width, first_frame.height, path)

        rotation = _clockwise_rotation(first_frame)
        width, height = first_frame.width, first_frame.height
        if rotation in (90, 270):
            width, height = height, width

        ordered = sorted(set(pts))
        gaps = [b - a for a, b in zip(ordered, ordered[1:])]
        variable = _is_variable_rate(gaps)
        fps = float(1 / _nominal_step(stream))
        if time_base and len(ordered) > 1 and ordered[-1] > ordered[0]:
            # The stated rate can be off (a GIF's first delay, a rounded header): the probed mean wins for
            # variable frame rate and whenever the two differ by more than 1%.
            measured = float((len(ordered) - 1) / ((ordered[-1] - ordered[0]) * time_base))
            if variable or abs(measured / fps - 1) > 0.01:
                fps = measured

        frame_count: Optional[int] = stream.frames or None
        if frame_count is None and reached_end:
            frame_count = len(pts) or None

        duration: Optional[float] = None
        if stream.duration and time_base:
            duration = float(stream.duration * time_base)
        elif reached_end and ordered and time_base:
            duration = float((ordered[-1] - ordered[0] + (last_duration or (gaps[-1] if gaps else 0))) * time_base)
        elif container.duration:
            duration = container.duration / av.time_base

        return VideoInfo(
            path=path,
            fps=fps,
            frame_count=frame_count,
            width=width,
            height=height,
            rotation=rotation,
            duration=duration,
            variable_frame_rate=variable,
        )
    finally:
        container.close()


# ------------------------------------------------------------------------------- crops and windows


def _check_frames(frames: np.ndarray, size: int) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim not in (3, 4):
        shape = getattr(frames, "shape", None)
        raise InputError(f"expected frames [T, H, W, C] or [H, W, C] as a numpy array, got shape {shape}")
    height, width = frames.shape[-3:-1]
    if height < size or width < size:
        raise InputError(
            f"frames {width}x{height} are smaller than the {size}x{size} crop; resize them first "
            f"(iter_frames(short_side={max(size, 256)}))"
        )


def _crop_at(frames: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(frames[..., top : top + size, left : left + size, :])


def center_crop(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """The centred ``size`` x ``size`` crop of frames ``[T, H, W, C]`` or ``[H, W, C]`` (offset (H - size) // 2)."""
    _check_frames(frames, size)
    height, width = frames.shape[-3:-1]
    return _crop_at(frames, (height - size) // 2, (width - size) // 2, size)


def crops(frames: np.ndarray, mode: str = "center", size: int = 224) -> List[np.ndarray]:
    """Spatial views of a clip for testing.

    * ``"center"``: ``[center_crop(frames)]``.
    * ``"three"``: three ``size`` crops along the long side (left, centre, right; top, centre, bottom for
      portrait), each centred on the short side. Square frames give left/centre/right.
    * ``"full"``: ``[frames]`` unchanged; the model takes any size >= 193 px with strict TF pooling.
    """
    if mode == "full":
        return [frames]
    if mode == "center":
        return [center_crop(frames, size)]
    if mode != "three":
        raise InputError(f"crop mode must be 'center', 'three' or 'full', got {mode!r}")
    _check_frames(frames, size)
    height, width = frames.shape[-3:-1]
    if height > width:  # portrait: slide down the long (vertical) side
        left = (width - size) // 2
        return [_crop_at(frames, top, left, size) for top in (0, (height - size) // 2, height - size)]
    top = (height - size) // 2
    return [_crop_at(frames, top, left, size) for left in (0, (width - size) // 2, width - size)]


def loop_to_length(frames: np.ndarray, min_frames: int) -> np.ndarray:
    """Frames ``[T, ...]`` repeated from the start until there are at least ``min_frames`` (as DeepMind
    loops short videos); longer clips are returned unchanged."""
    count = len(frames)
    if count == 0:
        raise InputError("cannot loop an empty clip (0 frames)")
    if count >= min_frames:
        return frames
    return frames[np.arange(min_frames) % count]


def clip_windows(num_frames: int, clip_frames: int, stride: int) -> List[Tuple[int, int]]:
    """``[start, end)`` windows of ``clip_frames`` every ``stride`` frames, covering all ``num_frames``.

    The last window is aligned to the end of the video, so no frame is left out. A video shorter than
    ``clip_frames`` gives the single window ``(0, num_frames)``, to be looped with :func:`loop_to_length`.
    """
    if num_frames <= 0:
        raise InputError(f"a video needs at least one frame to window, got {num_frames}")
    if clip_frames <= 0 or stride <= 0:
        raise InputError(f"clip_frames and stride must be positive, got {clip_frames} and {stride}")
    if num_frames <= clip_frames:
        return [(0, num_frames)]
    windows = [(start, start + clip_frames) for start in range(0, num_frames - clip_frames + 1, stride)]
    if windows[-1][1] < num_frames:
        windows.append((num_frames - clip_frames, num_frames))
    return windows
