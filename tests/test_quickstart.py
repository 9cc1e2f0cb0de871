"""The quickstart tutorial runs top to bottom and produces what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_classifies_cricket_and_writes_gif_and_features(tmp_path, rgb_model):
    # rgb_model makes sure the real weights are fetched and converted before the script runs.
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    lines = proc.stdout.splitlines()
    first = lines[lines.index("top 5:") + 1]
    assert first.split(maxsplit=1)[1] == "playing cricket"

    from PIL import Image

    with Image.open(tmp_path / "model_input.gif") as gif:
        assert gif.size == (224, 224) and gif.n_frames == 79
    feature = np.load(tmp_path / "features" / "v_CricketShot_g04_c01_rgb.gif.npy")
    assert feature.shape == (1024,) and np.isfinite(feature).all()
    assert (tmp_path / "features" / "manifest.jsonl").exists()


def readme_python_blocks() -> list:
    """The ```python blocks of the README, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.slow
def test_readme_usage_snippet_runs_on_a_larger_video_and_ranks_cricket_first(rgb_model, cricket_rgb_frames):
    # The README's "Using it" block, run as written, on frames that are not yet 224x224 (upscaled to 320x240), so
    # the snippet's claim that transforms() takes frames of any size is exercised too.
    import cv2

    snippet = readme_python_blocks()[0]
    frames = np.stack([cv2.resize(f, (320, 240), interpolation=cv2.INTER_LINEAR) for f in cricket_rgb_frames])
    namespace = {"frames": frames}
    exec(compile(snippet, "README.md", "exec"), namespace)
    logits, feats, labels = namespace["logits"], namespace["feats"], namespace["labels"]
    assert tuple(logits.shape) == (1, 400)
    assert labels[int(logits.argmax())] == "playing cricket"
    assert tuple(feats["Mixed_5c"].shape) == (1, 1024, 10, 7, 7)
