"""Seeded fuzzing of the video reader: mutated bytes of real encoded videos must give frames or a clean
VideoError; never another exception, a crash (segfault, abort) or a hang.

Decoding runs in a worker process so a crash in FFmpeg cannot take pytest down; the parent bounds the
time of each file and restarts the worker after a crash or a hang, blaming the file it was reading.

    I3D_FUZZ_MUTANTS=2000 I3D_FUZZ_SEED=7 .venv/bin/python -m pytest -q tests/test_video_fuzz.py
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
from videogen import moving_shapes, write_video

MUTANTS = int(os.environ.get("I3D_FUZZ_MUTANTS", "150"))
SEED = int(os.environ.get("I3D_FUZZ_SEED", "0"))
#: Seconds one file may take (tiny files decode in milliseconds; the margin is for a busy machine).
PER_FILE_SECONDS = float(os.environ.get("I3D_FUZZ_FILE_SECONDS", "30"))
#: Seconds a fresh worker may take to import the package (torch included) before its first file.
STARTUP_SECONDS = 120.0

SEED_VIDEOS = [
    ("mp4", "libx264"),
    ("mp4", "mpeg4"),
    ("avi", "mjpeg"),
    ("mkv", "ffv1"),
    ("mkv", "libx264"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
    ("mov", "png"),
    ("gif", "gif"),
]

WORKER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from i3d_torch.core import video
from i3d_torch.core.errors import VideoError
for line in open(sys.argv[1], encoding="utf-8"):
    path = line.rstrip("\n")
    print(json.dumps({"start": path}), flush=True)
    outcome = {"path": path}
    try:
        frames = sum(1 for _ in video.iter_frames(path, fps=25, short_side=64))
        video.probe(path)
        outcome["result"] = f"{frames} frames"
    except VideoError as e:
        message = str(e)
        outcome["result"] = "VideoError" if ("\n" not in message and message.startswith(path + ": ")) else (
            "badly formatted VideoError: " + repr(message))
    except BaseException as e:  # exactly what the test must never see
        outcome["result"] = f"{type(e).__name__}: {e}"
    print(json.dumps(outcome), flush=True)
"""


def mutate(data: bytes, rng: np.random.Generator) -> Tuple[bytes, str]:
    """One seeded mutation: what real damage looks like (bit rot, cuts, lost or doubled blocks), with a
    bias towards the first kilobyte, where headers and sizes live."""
    data = bytearray(data)
    size = len(data)
    kind = rng.choice(["flip", "overwrite", "truncate", "insert", "delete", "duplicate", "header"])
    if kind == "flip":
        for pos in rng.integers(0, size, rng.integers(1, 20)):
            data[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "overwrite":
        pos, length = int(rng.integers(0, size)), int(rng.integers(1, 256))
        data[pos : pos + length] = rng.integers(0, 256, len(data[pos : pos + length]), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        data = data[: int(rng.integers(1, size))]
    elif kind == "insert":
        pos = int(rng.integers(0, size))
        data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        pos = int(rng.integers(0, size))
        del data[pos : pos + int(rng.integers(1, 256))]
    elif kind == "duplicate":
        pos, length = int(rng.integers(0, size)), int(rng.integers(1, 512))
        data[pos:pos] = data[pos : pos + length]
    else:  # header: large or zero values where sizes, counts and dimensions are stored
        for pos in rng.integers(0, min(size, 1024), rng.integers(1, 8)):
            data[pos] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80]))
    return bytes(data), str(kind)


def make_mutants(folder: Path, count: int, seed: int) -> List[Tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    seeds = []
    for ext, codec in SEED_VIDEOS:
        frames = moving_shapes(8, 48, 64, seed=len(seeds))
        seeds.append(write_video(folder / f"seed_{codec}.{ext}", frames, 25, codec).read_bytes())
    mutants = []
    for i in range(count):
        index = i % len(SEED_VIDEOS)
        data, kind = mutate(seeds[index], rng)
        ext, codec = SEED_VIDEOS[index]
        path = folder / f"mutant_{i:04d}_{codec}_{kind}.{ext}"
        path.write_bytes(data)
        mutants.append((path, kind))
    return mutants


def _forward_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # the worker exited


def run_worker(paths: List[Path], list_file: Path) -> dict:
    """Outcome of each path: '<n> frames', 'VideoError', another exception, 'crash (...)' or 'hang'.

    The worker reads its paths from ``list_file`` (a pipe could block the parent while the worker hangs).
    """
    outcomes: dict = {}
    remaining = [str(p) for p in paths]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    while remaining:
        list_file.write_text("".join(p + "\n" for p in remaining), encoding="utf-8")
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(list_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_forward_lines, args=(worker.stdout, lines), daemon=True).start()
        current, started = None, False
        while True:
            try:
                line = lines.get(timeout=PER_FILE_SECONDS + (0 if started else STARTUP_SECONDS))
            except queue.Empty:
                worker.kill()
                outcomes[current or remaining[0]] = "hang"
                break
            started = True
            if line is None:
                worker.wait()
                if current is not None:
                    outcomes[current] = f"crash (exit status {worker.returncode})"
                break
            message = json.loads(line)
            if "start" in message:
                current = message["start"]
            else:
                outcomes[message["path"]] = message["result"]
                current = None
        worker.wait()
        remaining = [p for p in remaining if p not in outcomes]
    return outcomes


@pytest.mark.slow
def test_mutated_videos_give_frames_or_a_clean_video_error(tmp_path):
    mutants = make_mutants(tmp_path, MUTANTS, SEED)
    outcomes = run_worker([path for path, _ in mutants], tmp_path / "paths.txt")
    assert len(outcomes) == len(mutants)
    bad = {p: r for p, r in outcomes.items() if not (r == "VideoError" or r.endswith(" frames"))}
    report = "\n".join(f"{Path(p).name}: {r}" for p, r in sorted(bad.items()))
    assert not bad, f"{len(bad)} of {len(mutants)} mutants (seed {SEED}) broke the reader:\n{report}"
    # The fuzz must exercise both outcomes, or it tests nothing.
    results = list(outcomes.values())
    assert any(r == "VideoError" for r in results) and any(r.endswith(" frames") for r in results)


def test_the_fuzz_harness_reports_crashes_and_hangs(tmp_path, monkeypatch):
    """The harness itself can fail: a worker that segfaults or stalls on a file is reported as such."""
    crash = tmp_path / "crash.mp4"
    hang = tmp_path / "hang.mp4"
    fine = tmp_path / "fine.mp4"
    for path in (crash, hang, fine):
        path.write_bytes(b"x")
    fake_worker = r"""
import json, os, signal, sys, time
for line in open(sys.argv[1]):
    path = line.rstrip("\n")
    print(json.dumps({"start": path}), flush=True)
    if path.endswith("crash.mp4"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if path.endswith("hang.mp4"):
        time.sleep(60)
    print(json.dumps({"path": path, "result": "3 frames"}), flush=True)
"""
    monkeypatch.setattr(sys.modules[__name__], "WORKER", fake_worker)
    monkeypatch.setattr(sys.modules[__name__], "PER_FILE_SECONDS", 1.0)
    outcomes = run_worker([crash, hang, fine], tmp_path / "paths.txt")
    assert outcomes[str(crash)].startswith("crash (exit status -11")
    assert outcomes[str(hang)] == "hang"
    assert outcomes[str(fine)] == "3 frames"


# -- issue 17: headers that claim huge frames, containers cut short -----------------------------------

#: Frame sizes a forged header may state: huge, the 16-bit maximum, zero, and absurdly thin.
CLAIMED_SIZES = [(16000, 16000), (65535, 65535), (0, 0), (1, 100000), (100000, 1)]
#: Where a download may stop: early (headers only), midway, near the end (index lost).
CUT_FRACTIONS = [0.02, 0.1, 0.5, 0.9, 0.99]


def claim_size(data: bytes, ext: str, width: int, height: int) -> bytes:
    """``data`` with every frame size its header states set to ``width`` x ``height`` (AVI: the main header
    and the stream format; MP4/MOV: the visual sample entry and the track header)."""
    import struct

    data = bytearray(data)
    if ext == "avi":
        avih, strf = data.find(b"avih"), data.find(b"strf")
        struct.pack_into("<II", data, avih + 8 + 32, width, height)  # dwWidth, dwHeight
        struct.pack_into("<ii", data, strf + 8 + 4, width, height)  # BITMAPINFOHEADER biWidth, biHeight
    else:
        for entry in (b"avc1", b"mp4v", b"png "):
            at = data.find(entry)
            if at > 0:  # VisualSampleEntry: 6 reserved + 2 index + 16 pre-defined bytes, then width and height
                struct.pack_into(">HH", data, at + 4 + 24, min(width, 65535), min(height, 65535))
        tkhd = data.find(b"tkhd")
        if tkhd > 0:  # version 0 track header: width and height are its last two 16.16 fixed-point fields
            size = struct.unpack_from(">I", data, tkhd - 4)[0]
            struct.pack_into(">II", data, tkhd - 4 + size - 8, min(width, 65535) << 16, min(height, 65535) << 16)
    return bytes(data)


def make_claims_and_cuts(folder: Path) -> List[Path]:
    """Forged-size AVI and MP4/MOV files and every seed container cut at each of CUT_FRACTIONS."""
    paths = []
    sources = SEED_VIDEOS + [("avi", "msmpeg4v2"), ("avi", "rawvideo")]
    for k, (ext, codec) in enumerate(sources):
        data = write_video(folder / f"seed_{codec}.{ext}", moving_shapes(8, 48, 64, seed=k), 25, codec).read_bytes()
        if ext in ("avi", "mp4", "mov"):
            for width, height in CLAIMED_SIZES:
                path = folder / f"claims_{width}x{height}_{codec}.{ext}"
                path.write_bytes(claim_size(data, ext, width, height))
                paths.append(path)
        for fraction in CUT_FRACTIONS:
            path = folder / f"cut_{int(fraction * 100):02d}pct_{codec}.{ext}"
            path.write_bytes(data[: max(1, int(len(data) * fraction))])
            paths.append(path)
    return paths


def test_forged_frame_sizes_and_cut_containers_give_frames_or_a_clean_video_error(tmp_path):
    paths = make_claims_and_cuts(tmp_path)
    outcomes = run_worker(paths, tmp_path / "paths.txt")
    assert len(outcomes) == len(paths)
    bad = {p: r for p, r in outcomes.items() if not (r == "VideoError" or r.endswith(" frames"))}
    assert not bad, "\n".join(f"{Path(p).name}: {r}" for p, r in sorted(bad.items()))
    # A header stating 16000x16000 is refused before decoding, whatever the codec behind it.
    huge = {Path(p).name: r for p, r in outcomes.items() if "claims_16000x16000" in p and p.endswith(".avi")}
    assert huge and all(r == "VideoError" for r in huge.values()), huge
    # A file cut at 2 % has no decodable frame in any container here; one cut at 99 % mostly decodes.
    results = list(outcomes.values())
    assert any(r == "VideoError" for r in results) and any(r.endswith(" frames") for r in results)
