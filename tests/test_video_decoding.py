"""Decoding real encoded videos: containers and codecs, time resampling, resizing, rotation, pixel formats,
frame folders, crops, looping and windows, bounded memory on 8K video.

Pixel values are compared with a direct numpy computation of the preprocessing on lossless files
(FFV1, PNG, libx264rgb at qp 0); lossy codecs are checked through the frame-index code, which survives them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from videogen import (
    frame_index,
    index_coded_frames,
    moving_shapes,
    write_frame_folder,
    write_video,
)

from i3d_torch.core import video
from i3d_torch.core.defaults import ASSETS_DIR
from i3d_torch.core.errors import InputError
from i3d_torch.core.transforms import rgb_to_model_input

# MP4/MOV display matrices (16.16 fixed point; w in 2.30). Rows (a b u)(c d v)(x y w) map a stored pixel
# (p, q) to (a p + c q + x, b p + d q + y): [0 1 / -1 0] sends the stored top row to the displayed right
# column, i.e. the video is shown turned 90 degrees clockwise (what phones write for portrait video).
ONE, W_ONE = 1 << 16, 1 << 30
MATRIX_CLOCKWISE = {
    90: [0, ONE, 0, -ONE, 0, 0, 0, 0, W_ONE],
    180: [-ONE, 0, 0, 0, -ONE, 0, 0, 0, W_ONE],
    270: [0, -ONE, 0, ONE, 0, 0, 0, 0, W_ONE],
}


def bilinear_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize computed directly: half-pixel centres, source coordinates clamped to the edges."""

    def axis(out_size: int, in_size: int):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        src = np.clip(src, 0, in_size - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, src - low

    y0, y1, fy = axis(height, image.shape[0])
    x0, x1, fx = axis(width, image.shape[1])
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def short_side_size(height: int, width: int, short: int = 256):
    scale = short / min(height, width)
    if height <= width:
        return short, int(np.floor(width * scale + 0.5))
    return int(np.floor(height * scale + 0.5)), short


def smooth_random_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random frames with structure at several scales (pure noise would make any resize look the same)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    frames = np.stack([np.kron(c, np.ones((8, 8, 1), np.uint8))[:height, :width] for c in coarse])
    frames = np.pad(frames, ((0, 0), (0, height - frames.shape[1]), (0, width - frames.shape[2]), (0, 0)), mode="edge")
    noise = rng.integers(-20, 21, frames.shape)
    return np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)


def indices(frames) -> list:
    return [frame_index(f) for f in frames]


# ------------------------------------------------------------------------------- time resampling


@pytest.mark.parametrize("source_fps, target_fps", [(30, 25), (10, 25), (25, 25), (50, 25), (30, 12.5)])
def test_resampling_picks_the_frame_shown_at_each_output_time(tmp_path, source_fps, target_fps):
    count = 45
    path = write_video(tmp_path / "index.mkv", index_coded_frames(count, 32, 64), source_fps)
    got = indices(video.iter_frames(path, fps=target_fps, short_side=None))
    duration = Fraction(count, source_fps)
    times = [Fraction(k) / Fraction(target_fps) for k in range(int(np.ceil(duration * Fraction(target_fps))))]
    expected = [int(np.floor(t * source_fps)) for t in times]
    assert got == expected


def test_30_fps_to_25_drops_every_sixth_frame(tmp_path):
    path = write_video(tmp_path / "index.mkv", index_coded_frames(30, 32, 64), 30)
    got = indices(video.iter_frames(path, fps=25, short_side=None))
    assert got == [i for i in range(30) if i % 6 != 5]


def test_fps_none_yields_every_decoded_frame(tmp_path):
    path = write_video(tmp_path / "index.mkv", index_coded_frames(17, 32, 64), 30)
    assert indices(video.iter_frames(path, fps=None, short_side=None)) == list(range(17))


def test_variable_frame_rate_follows_presentation_timestamps(tmp_path):
    shown_ms = [0, 40, 50, 200, 210, 400]
    timestamps = [ms / 1000 for ms in shown_ms]
    path = write_video(tmp_path / "vfr.mkv", index_coded_frames(6, 32, 64), 25, timestamps=timestamps)
    got = indices(video.iter_frames(path, fps=25, short_side=None))
    # Output k (at 40k ms) is the last frame shown at or before it; the last frame lasts one nominal
    # frame (40 ms), so outputs run to t < 440 ms.
    expected = np.searchsorted(shown_ms, 40 * np.arange(11), side="right") - 1
    assert got == expected.tolist()
    info = video.probe(path)
    assert info.variable_frame_rate
    assert info.fps == pytest.approx(5 / 0.4)  # mean rate over the timestamps
    assert info.frame_count == 6


def test_constant_frame_rate_is_not_reported_variable(tmp_path):
    path = write_video(tmp_path / "ntsc.mkv", index_coded_frames(40, 32, 64), 30000 / 1001)
    info = video.probe(path)
    assert not info.variable_frame_rate
    assert info.fps == pytest.approx(29.97, abs=0.01)


def test_probe_measures_the_rate_when_the_stated_one_is_off(tmp_path):
    # GIF delays are whole centiseconds: 30 fps is written as delays of 3 and 4 cs, and FFmpeg states
    # 33.3 fps from the first delay; the timestamps say 30.
    path = write_video(tmp_path / "thirty.gif", index_coded_frames(31, 16, 32), 30)
    assert video.probe(path).fps == pytest.approx(30, rel=0.02)


def test_max_frames_stops_the_stream(tmp_path):
    path = write_video(tmp_path / "index.mkv", index_coded_frames(30, 32, 64), 25)
    assert indices(video.iter_frames(path, short_side=None, max_frames=4)) == [0, 1, 2, 3]


# ------------------------------------------------------------------------ containers and codecs


CONTAINERS = [
    ("mp4", "libx264"),
    ("mp4", "libx264rgb"),
    ("mp4", "mpeg4"),
    ("avi", "mjpeg"),
    ("avi", "rawvideo"),
    ("mkv", "ffv1"),
    ("mov", "png"),
    ("mov", "qtrle"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
    ("gif", "gif"),
]


@pytest.mark.parametrize("ext, codec", CONTAINERS)
def test_every_container_decodes_to_resized_rgb_frames_in_order(tmp_path, ext, codec):
    frames = index_coded_frames(12, 48, 80)
    path = write_video(tmp_path / f"clip.{ext}", frames, 25, codec)
    out, info = video.read_video(path)
    assert out.dtype == np.uint8 and out.shape == (12, 256, 427, 3)
    assert indices(out) == list(range(12))
    assert (info.width, info.height, info.rotation) == (80, 48, 0)
    assert info.fps == pytest.approx(25, rel=0.05)
    assert info.duration == pytest.approx(12 / 25, rel=0.1)


@pytest.mark.parametrize("ext, codec", [("mp4", "libx264"), ("avi", "mjpeg"), ("mkv", "ffv1"), ("mov", "png")])
def test_odd_sizes_decode_at_their_own_size(tmp_path, ext, codec):
    frames = moving_shapes(3, 45, 77)
    path = write_video(tmp_path / f"odd.{ext}", frames, 25, codec)
    out = np.stack(list(video.iter_frames(path, short_side=None)))
    assert out.shape == (3, 45, 77, 3)
    if codec in ("ffv1", "png"):
        assert_array_equal(out, frames)
    else:  # lossy: sharp edges ring, the mean error stays small
        assert np.abs(out.astype(int) - frames).mean() < 3


@pytest.mark.parametrize("ext, codec", [("mkv", "ffv1"), ("mov", "png"), ("mp4", "libx264rgb"), ("avi", "rawvideo")])
def test_lossless_files_decode_to_the_exact_frames(tmp_path, ext, codec):
    frames = smooth_random_frames(3, 40, 56)
    path = write_video(tmp_path / f"exact.{ext}", frames, 25, codec)
    assert_array_equal(np.stack(list(video.iter_frames(path, fps=None, short_side=None))), frames)


@pytest.mark.parametrize("height, width", [(48, 64), (300, 420), (720, 406)])
def test_resize_matches_numpy_bilinear_within_one_level(tmp_path, height, width):
    # OpenCV's uint8 bilinear uses 11-bit fixed-point weights: within 1 grey level of the exact value.
    frames = smooth_random_frames(2, height, width, seed=height)
    path = write_video(tmp_path / "exact.mkv", frames, 25)
    out = np.stack(list(video.iter_frames(path, fps=None, short_side=256)))
    out_h, out_w = short_side_size(height, width)
    assert out.shape == (2, out_h, out_w, 3)
    for got, source in zip(out, frames):
        assert_allclose(got.astype(np.float64), bilinear_reference(source, out_h, out_w), atol=1.0, rtol=0)


def test_deepmind_preprocessing_end_to_end_matches_numpy(tmp_path):
    """25 fps, short side 256 bilinear, centre crop 224, p / 127.5 - 1: the model input, computed by hand."""
    frames = smooth_random_frames(4, 270, 480, seed=7)
    path = write_video(tmp_path / "clip.mov", frames, 25)
    clip, _ = video.read_video(path)
    x = rgb_to_model_input(video.center_crop(clip, 224))
    out_h, out_w = short_side_size(270, 480)
    top, left = (out_h - 224) // 2, (out_w - 224) // 2
    resized = np.stack([bilinear_reference(f, out_h, out_w) for f in frames])
    expected = resized[:, top : top + 224, left : left + 224] / 127.5 - 1.0
    expected = torch.from_numpy(expected.transpose(3, 0, 1, 2)[None]).float()
    assert x.shape == (1, 3, 4, 224, 224)
    torch.testing.assert_close(x, expected, atol=1.5 / 127.5, rtol=0)  # one grey level, plus rounding


def test_portrait_video_resizes_its_width_to_the_short_side(tmp_path):
    path = write_video(tmp_path / "portrait.mkv", moving_shapes(2, 100, 60), 25)
    out, info = video.read_video(path)
    assert out.shape == (2, 427, 256, 3)
    assert (info.width, info.height) == (60, 100)


def test_one_frame_video_reads_as_one_frame_and_loops_to_clip_length(tmp_path):
    path = write_video(tmp_path / "one.mp4", moving_shapes(1, 64, 64), 25)
    clip, info = video.read_video(path)
    assert clip.shape == (1, 256, 256, 3)
    assert info.frame_count == 1
    looped = video.loop_to_length(clip, 9)
    assert looped.shape[0] == 9
    assert_array_equal(looped[8], clip[0])


def test_small_frames_are_enlarged_to_the_short_side(tmp_path):
    path = write_video(tmp_path / "tiny.mkv", moving_shapes(2, 16, 24), 25)
    assert next(video.iter_frames(path)).shape == (256, 384, 3)


def test_gif_decodes_like_pillow(tmp_path):
    from PIL import Image, ImageSequence

    gif = ASSETS_DIR / "v_CricketShot_g04_c01_rgb.gif"
    with Image.open(gif) as image:
        expected = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)])
    got = np.stack(list(video.iter_frames(gif, fps=None, short_side=None)))
    assert got.shape == expected.shape == (79, 224, 224, 3)
    assert_array_equal(got, expected)


# ---------------------------------------------------------------------------- pixel formats


def test_grayscale_video_becomes_equal_rgb_channels(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (2, 30, 40), dtype=np.uint8)
    path = write_video(tmp_path / "gray.mov", gray, 25, "png")
    out = np.stack(list(video.iter_frames(path, short_side=None)))
    assert_array_equal(out, np.repeat(gray[..., None], 3, axis=3))


def test_alpha_channel_is_dropped_keeping_colours(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (2, 30, 40, 4), dtype=np.uint8)
    path = write_video(tmp_path / "alpha.mov", rgba, 25, "png")
    out = np.stack(list(video.iter_frames(path, short_side=None)))
    assert_array_equal(out, rgba[..., :3])


def test_vp9_with_alpha_decodes_to_rgb(tmp_path):
    rgba = np.concatenate([moving_shapes(3, 48, 64), np.full((3, 48, 64, 1), 128, np.uint8)], axis=3)
    path = write_video(tmp_path / "alpha.webm", rgba, 25, "libvpx-vp9")
    out = np.stack(list(video.iter_frames(path, short_side=None)))
    assert out.shape == (3, 48, 64, 3)
    assert np.abs(out.astype(int) - rgba[..., :3]).mean() < 6  # lossy VP9


def test_16_bit_video_is_scaled_to_8_bit(tmp_path):
    deep = np.random.default_rng(3).integers(0, 65536, (2, 24, 32, 3), dtype=np.uint16)
    path = write_video(tmp_path / "deep.mov", deep, 25, "png")
    out = np.stack(list(video.iter_frames(path, short_side=None)))
    assert out.dtype == np.uint8
    assert_array_equal(out, np.round(deep / 257.0).astype(np.uint8))  # the same rule as 16-bit frame images


# ------------------------------------------------------------------------------- frame folders


def test_frame_folder_reads_in_natural_order_at_folder_fps(tmp_path):
    frames = index_coded_frames(12, 32, 64)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # frame_2 must come before frame_10
        write_frame_folder(tmp_path / "tmp", frame[None])
        (tmp_path / "tmp" / "000000.png").rename(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert indices(video.iter_frames(folder, fps=None, short_side=None)) == list(range(12))
    assert indices(video.iter_frames(folder, fps=25, folder_fps=50, short_side=None)) == list(range(0, 12, 2))
    info = video.probe(folder, folder_fps=50)
    assert (info.fps, info.frame_count, info.width, info.height) == (50.0, 12, 64, 32)
    assert info.duration == pytest.approx(12 / 50)


def test_frame_folder_pixels_match_the_images(tmp_path):
    frames = smooth_random_frames(3, 40, 56)
    folder = write_frame_folder(tmp_path / "frames", frames)
    assert_array_equal(np.stack(list(video.iter_frames(folder, fps=None, short_side=None))), frames)


def test_frame_folder_of_16_bit_gray_and_alpha_images(tmp_path):
    rng = np.random.default_rng(4)
    deep = rng.integers(0, 65536, (2, 20, 30, 3), dtype=np.uint16)
    out = np.stack(list(video.iter_frames(write_frame_folder(tmp_path / "deep", deep), short_side=None)))
    assert_array_equal(out, np.round(deep / 257.0).astype(np.uint8))
    gray = rng.integers(0, 256, (2, 20, 30), dtype=np.uint8)
    out = np.stack(list(video.iter_frames(write_frame_folder(tmp_path / "gray", gray), short_side=None)))
    assert_array_equal(out, np.repeat(gray[..., None], 3, axis=3))
    rgba = rng.integers(0, 256, (2, 20, 30, 4), dtype=np.uint8)
    out = np.stack(list(video.iter_frames(write_frame_folder(tmp_path / "rgba", rgba), short_side=None)))
    assert_array_equal(out, rgba[..., :3])


# ------------------------------------------------------------------------------------ rotation


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_display_matrix_rotation_is_applied(tmp_path, clockwise):
    frames = smooth_random_frames(2, 40, 64)
    path = write_video(tmp_path / "rotated.mp4", frames, 25, "libx264rgb", display_matrix=MATRIX_CLOCKWISE[clockwise])
    info = video.probe(path)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((40, 64) if clockwise != 180 else (64, 40))
    displayed = np.rot90(frames, k=-clockwise // 90, axes=(1, 2))  # rot90 turns anticlockwise
    assert_array_equal(np.stack(list(video.iter_frames(path, short_side=None))), displayed)


def test_rotated_video_is_resized_on_its_displayed_short_side(tmp_path):
    frames = smooth_random_frames(1, 60, 100)
    path = write_video(tmp_path / "phone.mp4", frames, 25, "libx264rgb", display_matrix=MATRIX_CLOCKWISE[90])
    out = next(video.iter_frames(path))
    displayed = np.rot90(frames[0], k=-1)
    assert out.shape == (427, 256, 3)
    assert_allclose(out.astype(np.float64), bilinear_reference(displayed, 427, 256), atol=1.0, rtol=0)


# ----------------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name", ["vidéo 日本語.mp4", "with spaces/my clip.mkv", "frames dir ü/"])
def test_non_ascii_names_and_spaces_are_read(tmp_path, name):
    frames = index_coded_frames(3, 32, 64)
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    path = write_frame_folder(target, frames) if name.endswith("/") else write_video(target, frames, 25)
    assert indices(video.iter_frames(path, short_side=None)) == [0, 1, 2]
    assert video.probe(path).width == 64


def test_is_video_path_knows_videos_and_frame_folders(tmp_path):
    assert video.is_video_path("a/b/clip.MP4") and video.is_video_path("x.webm") and video.is_video_path("y.gif")
    assert not video.is_video_path("notes.txt") and not video.is_video_path("still.png")
    folder = write_frame_folder(tmp_path / "frames", moving_shapes(1, 8, 8))
    assert video.is_video_path(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not video.is_video_path(empty)


# ------------------------------------------------------------------------------ memory bound

MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from i3d_torch.core.video import iter_frames
    def peak_mib():  # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmHWM"].split()[0]) / 1024
    frames = iter_frames(sys.argv[1], fps=None, short_side=256)
    first = next(frames)
    after_first = peak_mib()
    shapes = {first.shape} | {f.shape for f in frames}
    print(after_first, peak_mib(), len(shapes), *first.shape)
    """
)


@pytest.mark.slow
def test_8k_video_streams_with_bounded_memory(tmp_path):
    """Peak RSS after the last of 6 frames of 7680x4320 stays within one full-size RGB frame (99 MB) of the
    peak after the first: frames are resized as they come, none is kept at full size."""
    count, height, width = 6, 4320, 7680
    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, :, i * 500 : i * 500 + 700] = 255
    path = write_video(tmp_path / "8k.mp4", frames, 25, "mpeg4")
    del frames
    probe = [sys.executable, "-c", MEMORY_PROBE, str(path)]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after_first, after_all, distinct_shapes, out_h, out_w, _ = map(float, result.stdout.split())
    assert (distinct_shapes, out_h, out_w) == (1, 256, 455)
    full_frame_mib = height * width * 3 / 2**20
    assert after_all - after_first < full_frame_mib, f"peak grew {after_all - after_first:.0f} MiB while streaming"


# ----------------------------------------------------------------------------- crops, loops, windows


def test_center_crop_takes_the_middle():
    frames = np.arange(2 * 6 * 8 * 1, dtype=np.uint8).reshape(2, 6, 8, 1)
    assert_array_equal(video.center_crop(frames, 4), frames[:, 1:5, 2:6])
    assert_array_equal(video.center_crop(frames[0], 4), frames[0, 1:5, 2:6])


def test_three_crops_slide_along_the_long_side():
    landscape = np.random.default_rng(0).integers(0, 255, (1, 256, 340, 3), dtype=np.uint8)
    left, centre, right = video.crops(landscape, "three", 224)
    assert_array_equal(left, landscape[:, 16:240, 0:224])
    assert_array_equal(centre, landscape[:, 16:240, 58:282])
    assert_array_equal(right, landscape[:, 16:240, 116:340])
    portrait = landscape.transpose(0, 2, 1, 3)
    top, middle, bottom = video.crops(portrait, "three", 224)
    assert_array_equal(top, portrait[:, 0:224, 16:240])
    assert_array_equal(bottom, portrait[:, 116:340, 16:240])
    assert_array_equal(middle, portrait[:, 58:282, 16:240])


def test_full_mode_returns_the_frames_unchanged_and_center_one_crop():
    frames = np.zeros((2, 256, 300, 3), np.uint8)
    (full,) = video.crops(frames, "full")
    assert full is frames
    (centre,) = video.crops(frames, "center", 224)
    assert centre.shape == (2, 224, 224, 3)


def test_crops_refuse_frames_smaller_than_the_crop_and_unknown_modes():
    with pytest.raises(InputError, match="smaller than the 224x224 crop"):
        video.center_crop(np.zeros((2, 200, 300, 3), np.uint8))
    with pytest.raises(InputError, match="crop mode"):
        video.crops(np.zeros((2, 256, 300, 3), np.uint8), "five")


def test_loop_to_length_repeats_from_the_start():
    frames = np.arange(3)[:, None] * np.ones((3, 2), int)
    assert video.loop_to_length(frames, 8)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert video.loop_to_length(frames, 2) is frames
    with pytest.raises(InputError):
        video.loop_to_length(frames[:0], 4)


@pytest.mark.parametrize(
    "num, clip, stride, expected",
    [
        (100, 64, 64, [(0, 64), (36, 100)]),
        (128, 64, 64, [(0, 64), (64, 128)]),
        (100, 64, 16, [(0, 64), (16, 80), (32, 96), (36, 100)]),
        (64, 64, 10, [(0, 64)]),
        (10, 64, 64, [(0, 10)]),
        (1, 64, 64, [(0, 1)]),
    ],
)
def test_clip_windows_cover_the_video_with_the_last_aligned_to_its_end(num, clip, stride, expected):
    windows = video.clip_windows(num, clip, stride)
    assert windows == expected
    covered = set().union(*(range(s, e) for s, e in windows))
    assert covered == set(range(num))


def test_clip_windows_refuse_empty_videos_and_bad_strides():
    with pytest.raises(InputError):
        video.clip_windows(0, 64, 64)
    with pytest.raises(InputError):
        video.clip_windows(100, 64, 0)
