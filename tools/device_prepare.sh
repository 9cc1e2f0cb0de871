#!/usr/bin/env bash
# Prepare, on this machine, what tools/device_check.sh needs on the device machine and cannot find there.
#
# The device machine (an H200; see docs/gpu.md) has torch, OpenCV, pytest, safetensors and torchmetrics, but no
# PyAV and no network, and a call carries at most 64 MiB of the working tree. The two things it lacks do not fit
# in one call together (the Kinetics-400 RGB weights are 48.5 MiB, the PyAV wheel 34 MiB), so they go in two
# folders that two calls carry one after the other (docs/gpu.md gives the calls):
#
#   .device/home/weights/rgb_kinetics400.safetensors   an I3D_TORCH_HOME holding the converted weights
#   .device/wheels/av-*.whl                             PyAV for Python 3.12 on x86-64 (the device's python3)
#
# .device/ is kept out of git through .git/info/exclude (which this script appends to), so it travels only when
# a call names it in `carry`. Run from the repository root: bash tools/device_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

AV_VERSION=${AV_VERSION:-18.1.0}  # the PyAV of this project's environment; its wheel bundles FFmpeg with libx264
PIP=${PIP:-.venv/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >>"$exclude"

weights="${I3D_TORCH_HOME:-$HOME/.cache/i3d_torch}/weights/rgb_kinetics400.safetensors"
if [ ! -f "$weights" ]; then
    echo "device_prepare: $weights not found; run 'i3d-torch weights fetch rgb_kinetics400' first" >&2
    exit 1
fi
mkdir -p .device/home/weights .device/wheels
cp -p "$weights" .device/home/weights/

if ! ls .device/wheels/av-"$AV_VERSION"-*.whl >/dev/null 2>&1; then
    # The device README's recipe: binary wheels only, for CPython 3.12 on manylinux x86-64, without dependencies
    # (PyAV has none).
    $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .device/wheels "av==$AV_VERSION"
fi

echo "device_prepare: ready"
du -sh .device/home .device/wheels
echo "tracked and untracked files that travel in every call: $(git ls-files -co --exclude-standard -z \
    | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
