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


@pytest.mark.slow
def test_predict_json_says_a_cut_video_is_incomplete_and_strict_fails_it_alone(tmp_path, run_cli, rgb_model):
    # Issue 17 defect 3: a video cut short was classified on a fraction of its frames with exit 0 and no word.
    whole = write_video(tmp_path / "whole.mkv", moving_shapes(60, 48, 64), 25)
    cut = video_bytes_fraction(whole, 0.5, tmp_path / "cut.mkv")
    done = run_cli("predict", cut, whole, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    import json

    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert results[0]["decode"]["complete"] is False and results[0]["decode"]["stated_seconds"] == 2.4
    assert results[0]["decode"]["decoded_frames"] == results[0]["frames"] < 60
    assert results[1]["decode"]["complete"] is True and results[1]["frames"] == 60

    strict = run_cli("predict", cut, whole, "--strict", "--quiet")
    assert strict.returncode == 1
    errors = [line for line in strict.stderr.splitlines() if "error" in line]
    assert errors[0] == (
        f"i3d-torch predict: error: {cut}: video ends early: decoded "
        f"{results[0]['decode']['decoded_seconds']:.2f} s of the 2.40 s its container states, "
        f"{100 * results[0]['decode']['decoded_seconds'] / 2.4:.0f} % (truncated or damaged file?)"
    )
    assert "whole.mkv" in strict.stdout and "Traceback" not in strict.stderr


@pytest.mark.slow
def test_features_manifest_records_how_much_of_a_cut_video_was_decoded(tmp_path, run_cli, rgb_model):
    import json

    videos = tmp_path / "videos"
    whole = write_video(videos / "whole.mkv", moving_shapes(60, 48, 64), 25)
    video_bytes_fraction(whole, 0.5, videos / "cut.mkv")
    done = run_cli("features", videos, "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    records = {r["input"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert records["cut.mkv"]["decode"]["complete"] is False
    assert "decode" not in records["whole.mkv"]  # records of whole videos are as they always were
    assert "video ends early" in done.stderr
