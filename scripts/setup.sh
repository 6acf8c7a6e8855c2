#!/usr/bin/env bash
# Set up .venv/ in this checkout. Usage:
#   bash scripts/setup.sh          # library, train/ and bench/ dependencies (pyproject's train extra)
#   bash scripts/setup.sh --dev    # + test tools (test extra), ComfyUI 0.3.75 (build/ComfyUI), Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.14.1 torchvision==0.29.1"   # the pair that lies on this machine's disk (x86_64, Python 3.11)

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
extra() {  # the requirements of one optional-dependencies group in pyproject.toml
    .venv/bin/python -c 'import sys, tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][sys.argv[1]]))' "$1"
}
$PIP install $TORCH
$PIP install -r requirements.txt $(extra train) $TORCH

if [ "${1:-}" = "--dev" ]; then
    $PIP install $(extra test) $TORCH
    bash scripts/install_comfyui.sh
fi
echo "setup done: $(.venv/bin/python -c 'import torch, open_clip; print("torch", torch.__version__, "open_clip", open_clip.__version__)')"
