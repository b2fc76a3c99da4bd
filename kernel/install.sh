#!/usr/bin/env bash
# Idempotent kernel set-up for the rlhf-lab notebooks (run by `make setup` after scripts/setup.sh):
#   1. pinned Jupyter (JupyterLab, nbclient/nbconvert for headless runs, plotly + kaleido for the static
#      SVG copies of figures, latex2mathml for the formulas of the HTML exports) into the project
#      virtualenv `.venv`;
#   2. a pinned evcxr_jupyter built with `cargo install --locked` into the machine's cache
#      ($RLHF_LAB_CACHE/evcxr_jupyter-<version>, scripts/cache.sh): built once per machine and version;
#   3. a kernel spec "Rust (rlhf-lab)" (name `rlhf-lab`) in `.venv/share/jupyter/kernels/`, whose `env`
#      carries everything tch needs at build and run time (LIBTORCH, LD_LIBRARY_PATH) and a persistent
#      EVCXR_TMPDIR in the cache, so the second notebook, the second run and the next clone reuse the
#      compiled dependencies.
# Each step is skipped when its pin is already in place. Paths in the spec are this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
VENV="$ROOT/.venv"
source scripts/cache.sh

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
  # LaTeX → MathML for the offline HTML exports (kernel/run_notebooks.py): pure Python, no network at export
  # or view time; browsers render MathML natively.
  "latex2mathml==3.81.1"
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
EVCXR_ROOT="$RLHF_LAB_CACHE/evcxr_jupyter-$EVCXR_VERSION"
EVCXR_BIN="$EVCXR_ROOT/bin/evcxr_jupyter"
if [ -x "$EVCXR_BIN" ] && grep -q "\"evcxr_jupyter $EVCXR_VERSION " "$EVCXR_ROOT/.crates.toml" 2>/dev/null; then
  echo "kernel: evcxr_jupyter $EVCXR_VERSION already built ($EVCXR_ROOT)"
else
  start=$(date +%s)
  echo "kernel: cargo install evcxr_jupyter $EVCXR_VERSION --locked (≈11 min on 2 cores, once per machine)"
  # Its own temporary target dir: the project's CARGO_TARGET_DIR is for the project.
  env -u CARGO_TARGET_DIR cargo install evcxr_jupyter --version "$EVCXR_VERSION" --locked --root "$EVCXR_ROOT" --quiet
  echo "kernel: evcxr_jupyter installed ($(( $(date +%s) - start )) s)"
fi

# 3. kernel spec (always rewritten: cheap, and keeps the paths right if the checkout moved)
# Resolved paths: the venv may be shared by several clones through the cache (scripts/setup.sh).
VENV_REAL="$(cd "$VENV" && pwd -P)"
LIBTORCH_REAL="$(readlink -f "$VENV/libtorch")"
TORCH_LIB="$LIBTORCH_REAL/lib"
# Each cell is a cdylib built with `-C prefer-dynamic`: it needs the toolchain's libstd-<hash>.so at
# dlopen time. With the build dir outside the checkout nothing else puts it on the search path
# ("dlopen failed" on libcode_1.so), so the spec names it.
RUST_LIBDIR="$(rustc --print target-libdir)"
CARGO_BIN="$(dirname "$(command -v cargo)")"
SPEC_DIR="$VENV/share/jupyter/kernels/rlhf-lab"
EVCXR_TMPDIR="$RLHF_LAB_CACHE/evcxr"
mkdir -p "$SPEC_DIR" "$EVCXR_TMPDIR"
"$VENV/bin/python" - "$SPEC_DIR/kernel.json" <<EOF
import json, sys
spec = {
    "argv": ["$EVCXR_BIN", "--control_file", "{connection_file}"],
    "display_name": "Rust (rlhf-lab)",
    "language": "rust",
    "interrupt_mode": "message",
    "env": {
        # build time: torch-sys finds libtorch here (same pin as the cargo build, .cargo/config.toml)
        "LIBTORCH": "$LIBTORCH_REAL",
        "LIBTORCH_CXX11_ABI": "1",
        # run time: each cell is a cdylib that links libtorch_cpu.so / libc10.so
        "LD_LIBRARY_PATH": "$TORCH_LIB:$RUST_LIBDIR",
        "PATH": "$VENV_REAL/bin:$CARGO_BIN:/usr/local/bin:/usr/bin:/bin",
        # persistent build dir in the machine's cache: compiled deps survive across notebooks, runs and
        # clones (cold ≈ 9 min, warm ≈ 10 s). Each clone's rlhf-lab is still compiled from its own path.
        "EVCXR_TMPDIR": "$EVCXR_TMPDIR",
        "CARGO_TERM_COLOR": "never",
    },
    "metadata": {"rlhf-lab": {"checkout": "$ROOT", "evcxr_jupyter": "$EVCXR_VERSION"}},
}
json.dump(spec, open(sys.argv[1], "w"), indent=2)
EOF
echo "kernel: spec 'Rust (rlhf-lab)' at $SPEC_DIR (EVCXR_TMPDIR=$EVCXR_TMPDIR)"
