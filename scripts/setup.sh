#!/usr/bin/env bash
# Set up .venv/ in this checkout. Usage:
#   bash scripts/setup.sh          # library, train/ and bench/ dependencies (pyproject's train extra)
#   bash scripts/setup.sh --dev    # + test tools (test extra), ComfyUI 0.3.75 (build/ComfyUI), Chromium
# One line per step says what it installs and how big; a failing step stops the script, named.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.14.1 torchvision==0.29.1"   # the pair that lies on this machine's disk (x86_64, Python 3.11)
START=$SECONDS
say() { echo "[setup] $*"; }
fail() { echo "[setup] failed: $*" >&2; exit 1; }

version=$(python3 -c 'import platform; print(platform.python_version())') || fail "no python3 on PATH"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "python3 is $version; this needs Python 3.11 or newer (tomllib; the torch pins are for 3.11)"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with Python $version"
    python3 -m venv .venv || fail "python3 -m venv .venv"
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
extra() {  # the requirements of one optional-dependencies group in pyproject.toml
    .venv/bin/python -c 'import sys, tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][sys.argv[1]]))' "$1"
}
step() {  # step <what it installs, how big> <pip install arguments...>
    local what=$1
    shift
    say "$what"
    $PIP install "$@" || fail "pip install of $what"
}
train=$(extra train) || fail "reading pyproject.toml's train extra"
what="1/3 torch 2.14.1 + torchvision 0.29.1: PyPI's CUDA build, ~5.5 GB in .venv even on a CPU machine"
step "$what (several GB of wheels to download when pip's cache is cold)" $TORCH
what="2/3 the pack's requirements + the train extra (open_clip, diffusers, transformers, ...): ~0.8 GB"
step "$what" -r requirements.txt $train $TORCH
if [ "${1:-}" = "--dev" ]; then
    test_extra=$(extra test) || fail "reading pyproject.toml's test extra"
    step "3/3 test tools (pytest, playwright, onnx, pandas): ~0.3 GB; then ComfyUI 0.3.75, Chromium" $test_extra $TORCH
    bash scripts/install_comfyui.sh || fail "scripts/install_comfyui.sh (ComfyUI 0.3.75 into build/ComfyUI, Chromium)"
else
    say "3/3 skipped: test tools, ComfyUI and Chromium come with --dev"
fi
report=$(.venv/bin/python -c 'import torch, open_clip as oc; print("torch", torch.__version__, "open_clip", oc.__version__)')
say "done in $((SECONDS - START)) s; .venv is $(du -sh .venv | cut -f1): $report"
