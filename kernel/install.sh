#!/usr/bin/env bash
# Idempotent kernel set-up for the rlhf-lab notebooks (run by `make setup` after scripts/setup.sh):
#   1. pinned Jupyter (JupyterLab, nbclient/nbconvert for headless runs, plotly + kaleido for the static
#      SVG copies of figures) into the project virtualenv `.venv`;
#   2. a pinned evcxr_jupyter built with `cargo install --locked` into `.venv/bin`;
#   3. a kernel spec "Rust (rlhf-lab)" (name `rlhf-lab`) in `.venv/share/jupyter/kernels/`, whose `env`
#      carries everything tch needs at build and run time (LIBTORCH, LD_LIBRARY_PATH) and a persistent
#      EVCXR_TMPDIR under target/, so the second notebook (and the second run) reuses the compiled deps.
# Each step is skipped when its pin is already in place. Paths in the spec are this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
VENV="$ROOT/.venv"

EVCXR_VERSION="0.22.0"
PY_PINS=(
  "jupyterlab==4.6.6"
  "notebook==7.6.5"
  "nbclient==0.11.0"
  "nbconvert==7.17.2"
  "nbformat==5.11.1"
  # plotly 5.x is the last line that exports static images with kaleido 0.2.1, whose wheel bundles its
  # own headless Chromium (no browser download, works offline). Its JupyterLab extension renders the
  # figures interactively, also offline.
  "plotly==5.24.1"
  "kaleido==0.2.1"
)
PY_STAMP="$VENV/.rlhf-lab-jupyter-$(printf '%s\n' "${PY_PINS[@]}" | sha256sum | cut -c1-12)"

if [ ! -x "$VENV/bin/python" ] || [ ! -e "$VENV/libtorch/lib/libtorch_cpu.so" ]; then
  echo "kernel: run scripts/setup.sh first (no torch in $VENV)" >&2
  exit 1
fi

# 1. Jupyter
if [ -f "$PY_STAMP" ]; then
  echo "kernel: Jupyter pins already installed"
else
  start=$(date +%s)
  echo "kernel: pip install ${PY_PINS[*]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off "${PY_PINS[@]}"
  touch "$PY_STAMP"
  echo "kernel: Jupyter installed ($(( $(date +%s) - start )) s)"
fi

# 2. evcxr_jupyter
# evcxr_jupyter has no --version: cargo's install record says what is there.
if [ -x "$VENV/bin/evcxr_jupyter" ] && grep -q "\"evcxr_jupyter $EVCXR_VERSION " "$VENV/.crates.toml" 2>/dev/null; then
  echo "kernel: evcxr_jupyter $EVCXR_VERSION already installed"
else
  start=$(date +%s)
  echo "kernel: cargo install evcxr_jupyter $EVCXR_VERSION --locked (≈6.5 min on 2 cores, once)"
  cargo install evcxr_jupyter --version "$EVCXR_VERSION" --locked --root "$VENV" --quiet
  echo "kernel: evcxr_jupyter installed ($(( $(date +%s) - start )) s)"
fi

# 3. kernel spec (always rewritten: cheap, and keeps the paths right if the checkout moved)
TORCH_LIB="$(readlink -f "$VENV/libtorch")/lib"
CARGO_BIN="$(dirname "$(command -v cargo)")"
SPEC_DIR="$VENV/share/jupyter/kernels/rlhf-lab"
mkdir -p "$SPEC_DIR" "$ROOT/target/evcxr"
"$VENV/bin/python" - "$SPEC_DIR/kernel.json" <<EOF
import json, sys
spec = {
    "argv": ["$VENV/bin/evcxr_jupyter", "--control_file", "{connection_file}"],
    "display_name": "Rust (rlhf-lab)",
    "language": "rust",
    "interrupt_mode": "message",
    "env": {
        # build time: torch-sys finds libtorch here (same pin as the cargo build, .cargo/config.toml)
        "LIBTORCH": "$VENV/libtorch",
        "LIBTORCH_CXX11_ABI": "1",
        # run time: each cell is a cdylib that links libtorch_cpu.so / libc10.so
        "LD_LIBRARY_PATH": "$TORCH_LIB",
        "PATH": "$VENV/bin:$CARGO_BIN:/usr/local/bin:/usr/bin:/bin",
        # persistent build dir: compiled deps survive across notebooks and runs (cold ≈ minutes, warm ≈ s)
        "EVCXR_TMPDIR": "$ROOT/target/evcxr",
        "CARGO_TERM_COLOR": "never",
    },
    "metadata": {"rlhf-lab": {"checkout": "$ROOT", "evcxr_jupyter": "$EVCXR_VERSION"}},
}
json.dump(spec, open(sys.argv[1], "w"), indent=2)
EOF
echo "kernel: spec 'Rust (rlhf-lab)' at $SPEC_DIR (EVCXR_TMPDIR=target/evcxr)"
