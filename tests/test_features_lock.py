"""Two features runs on one output folder (issue 17, defect 6): the second is refused before it touches the
folder, the first finishes alone with one manifest line per input, and no live run's temporary file is deleted.

``test_second_run_on_the_same_folder_refuses_and_the_first_finishes_alone`` fails on the code before the
lock (the second run redid the work and wrote duplicate lines); it uses only options that code had.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from videogen import moving_shapes, write_video

from i3d_torch.apps.features import MANIFEST, extract_features, read_records
from i3d_torch.core.errors import I3DError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(short_side=32, crop_size=32, clip_frames=8, stride=4)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("videos") / "v.mp4", moving_shapes(12, 40, 48), 25)


def records(out: Path) -> list:
    found, torn = read_records(out / MANIFEST)
    assert torn == 0
    return found


# -- the output folder's lock (issue 17, defect 6) ---------------------------------------------------


def test_a_run_on_a_locked_folder_is_refused_before_touching_it(video, rgb_weights, tmp_path):
    from i3d_torch.pipeline.folder_lock import FolderBusy, FolderLock

    live = tmp_path / ".v.mp4.npy.k2j4_x.tmp"  # named as fileio.atomic_path names a live run's temporary
    live.write_bytes(b"a live run's temporary file")
    with FolderLock(tmp_path):
        with pytest.raises(FolderBusy, match="another i3d-torch features run .* is writing to this folder"):
            extract_features(video, tmp_path, weights=rgb_weights, **SMALL)
        assert live.exists() and not (tmp_path / MANIFEST).exists()
    assert extract_features(video, tmp_path, weights=rgb_weights, **SMALL).done == 1


@pytest.mark.slow
def test_second_run_on_the_same_folder_refuses_and_the_first_finishes_alone(tmp_path, rgb_weights, run_cli):
    videos = tmp_path / "videos"
    for i in range(4):
        write_video(videos / f"v{i}.mp4", moving_shapes(32, 40, 48, seed=i), 25)
    out = tmp_path / "out"
    args = ["--weights", str(rgb_weights), "--short-side", "32", "--crop-size", "32", "--clip-frames", "8",
            "--stride", "2", "--quiet"]  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "i3d_torch", "features", str(videos), "--out", str(out), *args],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / MANIFEST).exists() or not (out / MANIFEST).read_text().strip():
        assert first.poll() is None, "the first run ended before the second could start"
        assert time.monotonic() < deadline
        time.sleep(0.05)

    first_was_running = first.poll() is None

    second = run_cli("features", videos, "--out", out, *args)

    _, first_err = first.communicate(timeout=300)
    assert first_was_running, "the first run ended before the second started (the test proves nothing)"
    assert "another i3d-torch features run (pid" in second.stderr, second.stderr
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert first.returncode == 0, first_err
    inputs = [r["input"] for r in records(out)]
    assert sorted(inputs) == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]  # one line per input, no duplicates


def test_lock_error_is_an_i3d_error_so_the_cli_prints_one_line():
    from i3d_torch.pipeline.folder_lock import FolderBusy

    assert issubclass(FolderBusy, I3DError)
