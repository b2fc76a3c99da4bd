#!/usr/bin/env bash
# Idempotent set-up: a virtualenv holding torch==2.11.0 from PyPI (libtorch for tch 0.24), plus a stable
# symlink `.venv/libtorch` that `.cargo/config.toml` points LIBTORCH at.
# The venv itself lives in the machine's cache (scripts/cache.sh), keyed by the torch pin and the Python
# version, and `.venv` is a symlink to it: a second clone on the same machine reuses it in a second.
# Re-running is cheap: a stamp file records the installed pin and is checked before doing anything.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="2.11.0"
PYTHON="${PYTHON:-python3}"
VENV=".venv"
source scripts/cache.sh
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
CACHED_VENV="$RLHF_LAB_CACHE/venv-torch$TORCH_VERSION-py$PY_VERSION"
# A checkout made before the cache existed keeps its own .venv directory; a fresh one links the cache's.
if [ ! -e "$VENV" ]; then
  mkdir -p "$CACHED_VENV"
  ln -s "$CACHED_VENV" "$VENV"
  echo "setup: $VENV -> $CACHED_VENV"
fi
STAMP="$VENV/.rlhf-lab-torch-$TORCH_VERSION"

# Python packages the tests use as references (HF transformers for GPT-2 logits parity, gguf for reading
# SmolLM2 in transformers). Pinned; installed once (stamp keyed by the pin list).
PY_PINS="transformers==4.57.6"
PINS_STAMP="$VENV/.rlhf-lab-pins-$(echo "$PY_PINS" | sha256sum | cut -c1-12)"

install_pins() {
  if [ ! -f "$PINS_STAMP" ]; then
    echo "setup: pip install $PY_PINS"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PY_PINS
    touch "$PINS_STAMP"
  fi
}

if [ -f "$STAMP" ] && [ -e "$VENV/libtorch/lib/libtorch_cpu.so" ]; then
  echo "setup: torch $TORCH_VERSION already installed in $VENV (delete $STAMP to force)"
  install_pins
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV with $($PYTHON --version)"
  # Created at its resolved path, so its scripts' shebangs name the cache, not this checkout.
  "$PYTHON" -m venv "$(cd "$VENV" && pwd -P)"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "setup: pip install torch==$TORCH_VERSION (≈2.7 GB download, ≈4.7 GB installed)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off "torch==$TORCH_VERSION"

site=$("$VENV/bin/python" -W ignore -c 'import os, torch; print(os.path.dirname(torch.__file__))')
got=$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])')
if [ "$got" != "$TORCH_VERSION" ]; then
  echo "setup: expected torch $TORCH_VERSION, found $got" >&2
  exit 1
fi
ln -sfn "$site" "$VENV/libtorch"
touch "$STAMP"
install_pins
echo "setup: torch $got at $site ($(( $(date +%s) - start )) s, $(du -sh "$VENV/" | cut -f1) in $VENV)"
