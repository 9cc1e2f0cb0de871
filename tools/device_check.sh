#!/usr/bin/env bash
# Issue 16's device run: the CUDA tests (tests/test_cuda.py -m cuda) and the GPU table of `i3d-torch bench`, in
# one command of at most 8 minutes, results under $OUT. docs/gpu.md says how to call it through the device tool.
#
# It runs anywhere: without CUDA every CUDA test skips with its reason and the bench says "GPU: skipped", so the
# script is tested on a CPU machine up to the CUDA parts (OUT defaults to out/device_check there). With
# I3D_TORCH_CUDA_DRY_RUN=1 on such a machine the CUDA tests run their code on the CPU (docs/gpu.md; ~5 minutes).
#
# What it looks for, so that nothing needs installing on the device:
#   .device/wheels/*.whl   installed with pip --no-index into /tmp/site (PyAV: the device machine has none)
#   .device/home/ or /tmp/i3d_home/ or $I3D_TORCH_HOME   the I3D_TORCH_HOME with weights/rgb_kinetics400.safetensors
# tools/device_prepare.sh makes the .device/ folders here.
#
# Files written (at most 8, the device tool's limit): env.txt, cuda_tests.log, cuda_measurements.jsonl,
# gpu_bench.md, gpu_bench.json, gpu_bench.log, summary.md.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/device_check}
mkdir -p "$OUT"
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-475}  # the whole script; the device call's timeout should leave a minute more
TESTS_S=${DEVICE_CHECK_TESTS_S:-250}    # the CUDA tests; the bench gets what is left
PARTS=${DEVICE_CHECK_PARTS:-tests bench}  # "tests" or "bench" alone: one part per call, the whole budget each
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

# Wheels carried from the checkout (PyAV), into a private folder: the machine's own packages stay as they are.
if ls .device/wheels/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/wheels/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The checkout's package without installing it (python -m i3d_torch, as the tests' run_cli does).
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# The weights: carried in .device/home, or left in /tmp/i3d_home by an earlier call on the same machine.
if [ -z "${I3D_TORCH_HOME:-}" ]; then
    for home in "$ROOT/.device/home" /tmp/i3d_home; do
        if [ -f "$home/weights/rgb_kinetics400.safetensors" ]; then export I3D_TORCH_HOME=$home; break; fi
    done
fi

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) (working tree may differ)"
    echo "I3D_TORCH_HOME: ${I3D_TORCH_HOME:-default}"
    "$PYTHON" - <<'EOF'
import importlib.util, platform
import torch
print("python:", platform.python_version(), "| torch:", torch.__version__, "| cuda:", torch.version.cuda,
      "| cudnn:", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print("cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
spec = importlib.util.find_spec("av")
print("PyAV:", f"from {spec.origin}" if spec else "MISSING (carry .device/wheels)")
from i3d_torch.weights.registry import get_weights
entry = get_weights("rgb_kinetics400")
print("weights:", entry.path, "present" if entry.is_present() else "MISSING (real-weight tests skip)")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
        --format=csv,noheader
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

TESTS_RC=-
case " $PARTS " in *" tests "*)
    [[ " $PARTS " == *" bench "* ]] || TESTS_S=$((BUDGET_S - 10))
    echo "== CUDA tests (at most ${TESTS_S} s)"
    export I3D_TORCH_CUDA_RESULTS=$OUT/cuda_measurements.jsonl
    : >"$I3D_TORCH_CUDA_RESULTS"
    timeout --signal=INT --kill-after=10 "$TESTS_S" "$PYTHON" -m pytest -q -rs -m cuda tests/test_cuda.py \
        -p no:cacheprovider --durations=10 >"$OUT/cuda_tests.log" 2>&1
    TESTS_RC=$?
    tail -n 40 "$OUT/cuda_tests.log"
esac

LEFT=$((BUDGET_S - ($(date +%s) - START)))
BENCH_RC=-
if [[ " $PARTS " == *" bench "* ]]; then
  echo "== GPU table (at most ${LEFT} s)"
  BENCH_RC=124
  if [ "$LEFT" -gt 60 ]; then
    # The bench stops starting measurements 45 s before the hard limit, so that it still writes its report.
    timeout --signal=INT --kill-after=10 "$LEFT" "$PYTHON" -m i3d_torch bench --gpu-only --gpu-budget $((LEFT - 45)) \
        --out "$OUT/gpu_bench.md" --json "$OUT/gpu_bench.json" >/dev/null 2>"$OUT/gpu_bench.log"
    BENCH_RC=$?
  fi
  # The bench logs each row as it is measured: a run cut short still leaves its rows in gpu_bench.log.
  tail -n 60 "$OUT/gpu_bench.log"
fi

{
    echo "# Device check $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - START)) s"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "CUDA tests: exit $TESTS_RC ($([ "$TESTS_RC" = 124 ] && echo 'cut at the time limit' || echo 'pytest; - = not run'))"
    echo
    echo '```'
    [ -f "$OUT/cuda_tests.log" ] && grep -E '^(FAILED|ERROR|SKIPPED)|passed|failed|skipped' "$OUT/cuda_tests.log" | tail -n 40
    echo '```'
    echo
    echo "Bench: exit $BENCH_RC"
    echo
    if [ -s "$OUT/gpu_bench.md" ]; then sed -n '/^### GPU/,$p' "$OUT/gpu_bench.md"; fi
} >"$OUT/summary.md"
echo "== results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[[ "$TESTS_RC" =~ ^(0|-)$ && "$BENCH_RC" =~ ^(0|-)$ ]]
