"""Bad input: every case is a one-line VideoError naming the file and the problem (never a traceback from
FFmpeg/OpenCV, never a hang), or, where a usable part exists, the frames that decode."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from videogen import (
    frame_index,
    index_coded_frames,
    moving_shapes,
    video_bytes_fraction,
    write_frame_folder,
    write_video,
)

from i3d_torch.core import video
from i3d_torch.core.errors import InputError, VideoError


def read_error(path, **kwargs) -> str:
    """The VideoError message of reading ``path`` (all frames), checked to be one line naming the file."""
    with pytest.raises(VideoError) as caught:
        list(video.iter_frames(path, **kwargs))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{os.fspath(path)}: "), message
    assert caught.value.path == os.fspath(path)
    return message


def probe_error(path) -> str:
    with pytest.raises(VideoError) as caught:
        video.probe(path)
    message = str(caught.value)
    assert "\n" not in message and os.fspath(path) in message
    return message


def read_counting_warnings(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(video.iter_frames(path, **kwargs))
    return frames, [str(w.message) for w in caught]


# ------------------------------------------------------------------------------------------ paths


def test_missing_path(tmp_path):
    path = tmp_path / "nope.mp4"
    assert "no such file or directory" in read_error(path)
    assert "no such file or directory" in probe_error(path)


def test_missing_path_is_reported_before_iteration(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        video.iter_frames(tmp_path / "nope.mp4")  # no next(): path problems are immediate


def test_folder_without_frame_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    write_video(tmp_path / "clip.mp4", moving_shapes(2, 32, 32), 25)
    assert "folder has no frame images" in read_error(tmp_path)


def test_symlink_loop(tmp_path):
    os.symlink(tmp_path / "b.mp4", tmp_path / "a.mp4")
    os.symlink(tmp_path / "a.mp4", tmp_path / "b.mp4")
    assert "symbolic link loop" in read_error(tmp_path / "a.mp4")


def test_broken_symlink(tmp_path):
    os.symlink(tmp_path / "gone.mp4", tmp_path / "link.mp4")
    assert "broken symbolic link" in read_error(tmp_path / "link.mp4")


def test_fifo_is_refused_instead_of_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    assert "not a regular file" in read_error(tmp_path / "pipe.mp4")


UNREADABLE_CHECK = """
import sys
from i3d_torch.core import video
from i3d_torch.core.errors import VideoError
try:
    list(video.iter_frames(sys.argv[1]))
except VideoError as e:
    print(e)
"""


def test_unreadable_file(tmp_path):
    # Root reads any file whatever its mode, so as root the check runs in a child process as 'nobody'.
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write_video(folder / "secret.mp4", moving_shapes(2, 32, 32), 25)
    os.chmod(path, 0)
    if os.geteuid() != 0:
        assert "permission denied" in read_error(path)
        return
    for parent in [folder, *folder.parents]:
        if parent == Path(parent.anchor):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)  # let 'nobody' reach the file
    try:
        result = subprocess.run(
            [sys.executable, "-c", UNREADABLE_CHECK, str(path)], capture_output=True, text=True, timeout=60, user=65534
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"running as root and cannot start a process as 'nobody' to test unreadable files ({e})")
    if "Permission denied" in result.stderr and "i3d_torch" not in result.stderr:
        pytest.skip(f"'nobody' cannot run this Python: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: permission denied"


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    # The same check without root's override: the OS says the file may not be read.
    path = write_video(tmp_path / "secret.mp4", moving_shapes(2, 32, 32), 25)
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    assert read_error(path) == f"{path}: permission denied"
    assert probe_error(path) == f"{path}: permission denied"


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    assert "empty file (0 bytes)" in read_error(path)
    assert "empty file (0 bytes)" in probe_error(path)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    assert "not a readable video" in read_error(path)


def test_png_named_mp4_and_a_single_image(tmp_path):
    folder = write_frame_folder(tmp_path / "f", moving_shapes(1, 32, 32))
    still = folder / "000000.png"
    renamed = tmp_path / "image.mp4"
    renamed.write_bytes(still.read_bytes())
    assert "is a single PNG image, not a video" in read_error(renamed)
    assert "is a single PNG image, not a video" in read_error(still)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert "has no video stream (streams: audio)" in read_error(path)


# ------------------------------------------------------------------------------------- damaged data


@pytest.mark.parametrize("ext, codec, container_options", [
    ("mkv", "ffv1", None),
    ("avi", "mjpeg", None),
    ("webm", "libvpx", None),
    ("mp4", "libx264", {"movflags": "faststart"}),
])  # fmt: skip
def test_truncated_streamable_video_gives_the_frames_before_the_cut(tmp_path, ext, codec, container_options):
    """Decision: a cut file yields what precedes the cut. 10% -> an error or a few frames, 50% -> about
    half, 99% -> nearly all; each frame that comes out is a real, whole frame, in order (the packet the
    cut goes through is flagged by the demuxer and dropped, not decoded into a half-grey frame)."""
    count = 50
    frames = index_coded_frames(count, 48, 64)
    # Noise in the lower half makes every packet about the same size, so a byte fraction is a frame fraction.
    frames[:, 24:] = np.random.default_rng(0).integers(0, 256, frames[:, 24:].shape, dtype=np.uint8)
    path = write_video(tmp_path / f"full.{ext}", frames, 25, codec, container_options=container_options)
    for fraction, low, high in [(0.10, 0, 10), (0.50, 15, 35), (0.99, 45, 50)]:
        cut = video_bytes_fraction(path, fraction, tmp_path / f"cut{int(fraction * 100)}.{ext}")
        try:
            frames, _ = read_counting_warnings(cut, fps=None, short_side=None)
        except VideoError as e:
            assert fraction == 0.10, f"{fraction:.0%}: {e}"
            assert "\n" not in str(e) and str(cut) in str(e)
            continue
        assert low <= len(frames) <= high, f"{fraction:.0%} of the bytes gave {len(frames)} frames"
        shown = [frame_index(f) for f in frames]
        # Real frames in time order; with B-frames (h264) a cut can drop a few just before it.
        assert shown == sorted(set(shown)) and shown[-1] < count
        assert shown[-1] - len(shown) < 4


@pytest.mark.parametrize("fraction", [0.10, 0.50, 0.90])
def test_a_video_cut_short_says_so_and_strict_refuses_it(tmp_path, fraction):
    # Issue 17: a 10-second MKV cut at 10/50/90 % of its bytes gave 7/48/89 % of its frames without a word,
    # though Matroska states the full duration. Decoding now compares what it got with what the container states.
    path = write_video(tmp_path / "ten.mkv", moving_shapes(250, 48, 64), 25)
    cut = video_bytes_fraction(path, fraction, tmp_path / f"cut{int(fraction * 100)}.mkv")
    report = video.DecodeReport()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(video.iter_frames(cut, fps=25, report=report))
    early = [w for w in caught if issubclass(w.category, video.TruncatedVideoWarning)]
    assert len(early) == 1 and str(early[0].message).startswith(f"{cut}: video ends early: decoded ")
    assert "of the 10.00 s its container states" in str(early[0].message)
    assert report.ended_early and report.stated_seconds == 10.0 and report.decoded_frames == len(frames) < 250
    assert report.to_dict()["complete"] is False
    assert "video ends early" in read_error(cut, fps=25, strict=True)


@pytest.mark.parametrize("ext", ["mkv", "mp4", "avi", "webm"])
def test_a_whole_video_is_complete_and_raises_no_warning(tmp_path, ext):
    path = write_video(tmp_path / f"ten.{ext}", moving_shapes(100, 48, 64), 25)
    report = video.DecodeReport()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(video.iter_frames(path, fps=25, report=report, strict=True))) == 100
    assert report.finished and not report.ended_early and report.decoded_frames == 100
    assert report.to_dict()["complete"] is True


def test_stopping_early_on_purpose_is_not_a_truncated_video(tmp_path):
    path = write_video(tmp_path / "ten.mkv", moving_shapes(100, 48, 64), 25)
    report = video.DecodeReport()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(video.iter_frames(path, fps=25, max_frames=10, report=report, strict=True))) == 10
    assert not report.ended_early


def test_mp4_cut_before_its_index_is_a_clear_error(tmp_path):
    """An MP4 written in one pass keeps its index (moov) at the end: any cut that loses it loses the file."""
    path = write_video(tmp_path / "full.mp4", moving_shapes(40, 48, 64), 25)
    for fraction in (0.10, 0.50):
        cut = video_bytes_fraction(path, fraction, tmp_path / f"cut{int(fraction * 100)}.mp4")
        message = read_error(cut)
        assert "not a readable video" in message and "moov" in message
        assert "not a readable video" in probe_error(cut)


def packet_spans(path):
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None and p.pos >= 0]


def corrupt_payloads(path, out, first_packet: int = 0, seed: int = 0):
    """Overwrite the payload of every video packet from ``first_packet`` on with random bytes; headers stay valid."""
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(seed)
    for pos, size in packet_spans(path)[first_packet:]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    Path(out).write_bytes(bytes(data))
    return Path(out)


@pytest.mark.parametrize("ext, codec", [("avi", "mjpeg"), ("mov", "png"), ("mp4", "libx264"), ("mkv", "ffv1")])
def test_valid_header_with_undecodable_frames(tmp_path, ext, codec):
    path = write_video(tmp_path / f"clip.{ext}", moving_shapes(12, 48, 64), 25, codec)
    broken = corrupt_payloads(path, tmp_path / f"broken.{ext}")
    message = read_error(broken)
    assert "decod" in message or "contains no video frames" in message
    probe_error(broken)


@pytest.mark.parametrize("ext, codec", [("avi", "mjpeg"), ("mov", "png")])
def test_damage_midway_ends_the_stream_with_a_warning(tmp_path, ext, codec):
    path = write_video(tmp_path / f"clip.{ext}", index_coded_frames(20, 48, 64), 25, codec)
    broken = corrupt_payloads(path, tmp_path / f"broken.{ext}", first_packet=10)
    frames, warned = read_counting_warnings(broken, fps=None, short_side=None)
    assert [frame_index(f) for f in frames] == list(range(10))
    assert len(warned) == 1 and warned[0].startswith(f"{broken}: decoding stopped after 10 frame(s)")


def test_zero_frame_video(tmp_path):
    path = write_video(tmp_path / "empty.avi", np.zeros((0, 32, 32, 3), np.uint8), 25, "mjpeg")
    assert "contains no video frames" in read_error(path)
    assert "contains no video frames" in probe_error(path)
    path = write_video(tmp_path / "empty.mp4", np.zeros((0, 32, 32, 3), np.uint8), 25)
    assert "has no video stream" in read_error(path)  # the MP4 muxer drops an empty track


def test_damaged_frame_image_in_a_folder(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", index_coded_frames(6, 32, 64))
    (folder / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    frames, warned = read_counting_warnings(folder, fps=None, short_side=None)
    assert [frame_index(f) for f in frames] == [0, 1, 2]
    assert len(warned) == 1 and "000003.png" in warned[0]
    (folder / "000000.png").write_bytes(b"")
    assert "000000.png" in read_error(folder)
    assert "000000.png" in probe_error(folder)


def test_frame_folder_with_mixed_sizes_keeps_the_first_shape(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", moving_shapes(2, 32, 48))
    write_frame_folder(folder, moving_shapes(1, 64, 64), start=2)
    shapes = {f.shape for f in video.iter_frames(folder, short_side=None)}
    assert shapes == {(32, 48, 3)}


# ---------------------------------------------------------------------------------------- extremes


def test_extreme_aspect_ratio_is_refused_when_resizing_and_read_natively(tmp_path):
    path = write_video(tmp_path / "strip.mkv", moving_shapes(2, 16, 4000), 25)
    message = read_error(path)
    assert "extreme aspect ratio 4000x16" in message and "64000 px" in message
    assert next(video.iter_frames(path, short_side=None)).shape == (16, 4000, 3)


def test_aspect_ratio_at_the_limit_is_resized(tmp_path):
    path = write_video(tmp_path / "wide.mkv", moving_shapes(1, 16, 256), 25)
    assert next(video.iter_frames(path)).shape == (256, 4096, 3)


def test_frames_above_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    # A damaged header can claim any size; a 64x48 video stands in for one above the (lowered) limit.
    path = write_video(tmp_path / "clip.mkv", moving_shapes(2, 48, 64), 25)
    folder = write_frame_folder(tmp_path / "frames", moving_shapes(2, 48, 64))
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    assert "header states a 64x48 frame, above the 0.00307-megapixel limit" in read_error(path)
    assert "header states a 64x48 frame" in probe_error(path)
    with pytest.raises(VideoError, match="frame size 64x48 is invalid or too large"):
        list(video.iter_frames(folder))


def _avi_claiming_size(path, codec: str, width: int, height: int) -> Path:
    """A small AVI whose main header (avih) and stream format (strf) claim ``width`` x ``height``."""
    import struct

    data = bytearray(write_video(path, moving_shapes(40, 48, 64), 25, codec).read_bytes())
    avih, strf = data.find(b"avih"), data.find(b"strf")
    struct.pack_into("<II", data, avih + 8 + 32, width, height)  # dwWidth, dwHeight
    struct.pack_into("<ii", data, strf + 8 + 4, width, height)  # BITMAPINFOHEADER biWidth, biHeight
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("codec", ["msmpeg4v2", "rawvideo"])
def test_header_claiming_a_huge_frame_is_refused_before_decoding(tmp_path, codec):
    # Issue 17: a small AVI whose header claims 16000x16000 made the decoder allocate gigabytes and predicted on
    # garbage frames. The stated size is checked against MAX_FRAME_PIXELS before any frame is decoded.
    path = _avi_claiming_size(tmp_path / "huge.avi", codec, 16000, 16000)
    assert path.stat().st_size < 1_000_000
    assert "header states a 16000x16000 frame, above the 67.1-megapixel limit" in read_error(path, fps=25)
    assert "16000x16000" in probe_error(path)


def test_header_claiming_a_huge_frame_costs_little_memory(tmp_path):
    # The peak is the child's own VmHWM: ru_maxrss would carry the pytest parent's peak across fork and exec.
    path = _avi_claiming_size(tmp_path / "huge.avi", "msmpeg4v2", 16000, 16000)
    probe = (
        "import sys\n"
        "from i3d_torch.core import video\n"
        "try:\n    list(video.iter_frames(sys.argv[1], fps=25, short_side=256))\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(int(status['VmHWM'].split()[0]) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and len(done.stdout.split()) == 2, done.stderr[-2000:]
    error, peak_mb = done.stdout.split()
    assert error == "VideoError"
    # Importing torch, PyAV and OpenCV takes about 300 MB here; one RGB frame of 16000x16000 alone is 768 MB.
    assert int(peak_mb) < 700, done.stdout


def test_bad_arguments_are_input_errors(tmp_path):
    path = write_video(tmp_path / "clip.mkv", moving_shapes(2, 48, 64), 25)
    with pytest.raises(InputError, match="fps must be positive"):
        video.iter_frames(path, fps=0)
    with pytest.raises(InputError, match="short_side"):
        video.iter_frames(path, short_side=0)
    with pytest.raises(InputError, match="whole number of pixels"):
        video.iter_frames(path, short_side=255.5)
    assert next(video.iter_frames(path, short_side=256.0)).shape == (256, 341, 3)


def test_stopping_early_closes_the_file(tmp_path):
    path = write_video(tmp_path / "clip.mkv", index_coded_frames(20, 32, 64), 25)
    frames = video.iter_frames(path, short_side=None)
    assert frame_index(next(frames)) == 0
    frames.close()
    os.remove(path)  # nothing holds it any more
    assert not path.exists()


def test_one_frame_gif_and_one_image_folder_work(tmp_path):
    gif = write_video(tmp_path / "one.gif", moving_shapes(1, 40, 40), 10)
    folder = write_frame_folder(tmp_path / "one", moving_shapes(1, 40, 40))
    for path in (gif, folder):
        frames = list(video.iter_frames(path, fps=None))
        assert len(frames) == 1 and frames[0].shape == (256, 256, 3)
    # At 25 fps one frame lasting 1/10 s is shown at t = 0, 0.04 and 0.08 s.
    assert len(list(video.iter_frames(gif, fps=25))) == 3


def test_timestamp_jump_is_closed_with_a_warning_instead_of_hours_of_copies(tmp_path):
    path = write_video(tmp_path / "jump.mkv", index_coded_frames(4, 32, 64), 25, timestamps=[0, 0.04, 5000.0, 5000.04])
    frames, warned = read_counting_warnings(path, short_side=None)
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3]
    assert len(warned) == 1 and "timestamps jump 5000 s" in warned[0]


def test_a_damaged_frame_rate_cannot_make_endless_frames(tmp_path):
    """An AVI header stating 25 frames per 8388609 s (found by the fuzz test) gives 97 hours between frames:
    each jump is closed to the 60 s limit, so 4 frames give at most 4 x 60 s of output, not millions."""
    path = write_video(tmp_path / "clip.avi", index_coded_frames(4, 32, 64), 25, "mjpeg")
    data = bytearray(path.read_bytes())
    header = data.index(b"strh") + 8  # AVISTREAMHEADER: dwScale at +20, dwRate at +24 (little-endian)
    data[header + 20 : header + 28] = (8388609).to_bytes(4, "little") + (25).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert video.probe(path).fps == pytest.approx(25 / 8388609)
    count, warned = 0, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in video.iter_frames(path, short_side=16):
            count += 1
            assert count <= 4 * 60 * 25
        warned = [str(w.message) for w in caught]
    assert count > 4 and any("treated as a discontinuity" in w for w in warned)
