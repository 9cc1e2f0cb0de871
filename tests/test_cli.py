"""The command line's own promises: one line per warning or error, no traceback, non-zero exit on errors."""

from __future__ import annotations

import pytest
from videogen import moving_shapes, video_bytes_fraction, write_video


@pytest.mark.slow
def test_a_warning_prints_as_one_line_naming_the_command_and_the_file(tmp_path, run_cli, rgb_model):
    path = write_video(tmp_path / "ten.mkv", moving_shapes(250, 48, 64), 25)
    cut = video_bytes_fraction(path, 0.5, tmp_path / "cut.mkv")
    done = run_cli("predict", cut, "--top", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning_lines) == 1, done.stderr
    assert warning_lines[0].startswith(f"i3d-torch predict: warning: {cut}: video ends early: decoded ")
    assert warning_lines[0].endswith(" of the 10.00 s its container states, 50 % (truncated or damaged file?)")
    assert "Traceback" not in done.stderr and "warnings.warn" not in done.stderr
