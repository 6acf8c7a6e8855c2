#!/usr/bin/env bash
# The pack's ComfyUI tests on the ComfyUI users run today, beside the 0.3.75 of scripts/install_comfyui.sh:
#   LATENT_CLIP_COMFYUI_SRC=/path/to/ComfyUI bash scripts/test_current_comfyui.sh [pytest args]
# LATENT_CLIP_COMFYUI_SRC is a ComfyUI checkout (used in place, read-only) or a .tar.gz of one (extracted to
# build/comfyui-current/). Builds build/venv-current/ (the torch pins, that ComfyUI's requirements.txt with the
# frontend it pins, the pack's requirements and train/test extras), unpacks the newest comfyui-frontend-package
# from PyPI into build/frontend-newest/, then runs `pytest -m comfyui` (in-process, HTTP, browser) on the pinned
# frontend and `pytest -m browser` again on the newest. Idempotent; Chromium comes from scripts/install_comfyui.sh.
set -euo pipefail
[ -n "${LATENT_CLIP_COMFYUI_SRC:-}" ] || {
    echo "LATENT_CLIP_COMFYUI_SRC is not set: name a ComfyUI checkout (a folder with main.py) or a .tar.gz of one" >&2
    exit 2
}
SRC=$(realpath -- "$LATENT_CLIP_COMFYUI_SRC" 2>/dev/null) && [ -e "$SRC" ] || {
    echo "LATENT_CLIP_COMFYUI_SRC=$LATENT_CLIP_COMFYUI_SRC does not exist: expected a ComfyUI folder or .tar.gz" >&2
    exit 2
}
cd "$(dirname "$0")/.."
TORCH="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"   # on every pip line, so pip never swaps torch
VENV=build/venv-current
FRONTEND=build/frontend-newest
START=$SECONDS
say() { echo "[current-comfyui] $*"; }
size() { du -sh "$1" 2>/dev/null | cut -f1; }

# 1. The ComfyUI source: a folder as it is, or a tarball extracted once per checksum.
if [ -d "$SRC" ]; then
    COMFY=$SRC
else
    COMFY=$PWD/build/comfyui-current
    sum=$(sha256sum "$SRC" | cut -d' ' -f1)
    if [ "$(cat "$COMFY.sha256" 2>/dev/null)" != "$sum" ]; then
        say "extracting $SRC ($(size "$SRC")) to $COMFY"
        rm -rf "$COMFY" "$COMFY.tmp" "$COMFY.sha256"
        mkdir -p "$COMFY.tmp"
        tar -xzf "$SRC" -C "$COMFY.tmp"
        main=$(find "$COMFY.tmp" -maxdepth 2 -name main.py -print -quit)
        [ -n "$main" ] || {
            echo "$SRC holds no main.py at its top or one folder down: not a ComfyUI source" >&2
            exit 2
        }
        mv "$(dirname "$main")" "$COMFY"
        rm -rf "$COMFY.tmp"
        echo "$sum" > "$COMFY.sha256"
    fi
fi
[ -f "$COMFY/main.py" ] && [ -f "$COMFY/requirements.txt" ] || {
    echo "$COMFY has no main.py and requirements.txt: expected a ComfyUI source folder" >&2
    exit 2
}
COMFY_VERSION=$(grep -o '"[0-9][0-9.]*"' "$COMFY/comfyui_version.py" 2>/dev/null | tr -d '"' || echo "unknown")
say "ComfyUI $COMFY_VERSION at $COMFY"

# 2. Its own venv, rebuilt only when a requirement changes.
extras=$(python3 -c 'import tomllib; e = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print(" ".join(e["train"] + e["test"]))')
wanted=$(printf '%s\n' "$TORCH" "$extras" | cat - "$COMFY/requirements.txt" requirements.txt |
    sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$wanted" ]; then
    say "venv $VENV up to date ($(size "$VENV"))"
else
    need_gb=9   # the venv measured 7.6 GB: torch's CUDA build from PyPI is most of it
    free_gb=$(mkdir -p build && df -Pk build | awk 'NR == 2 {print int($4 / 1048576)}')
    [ "$free_gb" -ge "$need_gb" ] || {
        echo "$PWD/build has $free_gb GB free; building $VENV needs about $need_gb GB: free some disk and rerun" >&2
        exit 1
    }
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"  # bin/pip names the venv's first path
    step() {  # step <what> <pip install args...>
        local what=$1 t=$SECONDS
        shift
        say "pip: $what ..."
        $PIP install "$@"
        say "pip: $what done in $((SECONDS - t)) s, venv $(size "$VENV")"
    }
    step "torch, torchvision, torchaudio" $TORCH
    step "ComfyUI's requirements.txt ($(grep -cv '^\s*\(#\|$\)' "$COMFY/requirements.txt") lines)" \
        -r "$COMFY/requirements.txt" $TORCH
    step "the pack's requirements.txt and train/test extras" -r requirements.txt $extras $TORCH
    echo "$wanted" > "$VENV/.requirements.sha256"
fi
PY=$VENV/bin/python
PINNED_FRONTEND=$($PY -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))')

# 3. The newest frontend on PyPI, unpacked once per version.
say "pip download: the newest comfyui-frontend-package ..."
$VENV/bin/python -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all: -d "$FRONTEND/wheels" \
    comfyui-frontend-package
wheel=$(ls "$FRONTEND"/wheels/comfyui_frontend_package-*.whl | sort -V | tail -n 1)
NEWEST_FRONTEND=$(basename "$wheel" | cut -d- -f2)
STATIC=$PWD/$FRONTEND/$NEWEST_FRONTEND/comfyui_frontend_package/static
if [ ! -f "$STATIC/index.html" ]; then
    rm -rf "${FRONTEND:?}/$NEWEST_FRONTEND"
    unzip -q "$wheel" 'comfyui_frontend_package/*' -d "$FRONTEND/$NEWEST_FRONTEND"
fi
say "frontend $NEWEST_FRONTEND ($(size "$wheel") wheel) in $STATIC; ComfyUI pins $PINNED_FRONTEND"
say "set-up done in $((SECONDS - START)) s"

# 4. The tests: all ComfyUI ones on the pinned frontend, then the browser ones on the newest.
export LATENT_CLIP_COMFYUI_DIR=$COMFY
export PYTHONPYCACHEPREFIX=$PWD/build/pycache-current   # no __pycache__ written into a user's checkout
failed=()
t=$SECONDS
say "pytest -m comfyui: ComfyUI $COMFY_VERSION, frontend $PINNED_FRONTEND"
$PY -m pytest -m comfyui "$@" || failed+=("-m comfyui on frontend $PINNED_FRONTEND")
say "pytest -m comfyui: $((SECONDS - t)) s"
t=$SECONDS
say "pytest -m browser: ComfyUI $COMFY_VERSION, frontend $NEWEST_FRONTEND"
LATENT_CLIP_FRONTEND_ROOT=$STATIC $PY -m pytest -m browser "$@" || failed+=("-m browser on frontend $NEWEST_FRONTEND")
say "pytest -m browser: $((SECONDS - t)) s"
if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED on ComfyUI $COMFY_VERSION: $(IFS=';'; echo "${failed[*]}")"
    exit 1
fi
say "passed on ComfyUI $COMFY_VERSION with frontends $PINNED_FRONTEND (pinned) and $NEWEST_FRONTEND (newest) in" \
    "$((SECONDS - START)) s"
