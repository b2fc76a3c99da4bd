# Sourced by the set-up scripts: where rlhf-lab keeps what does not depend on the checkout, so a fresh
# clone on a machine that has built before reuses it (a brand-new machine fills it once):
#   $RLHF_LAB_CACHE/venv-<pins>/               the Python venv: torch (libtorch), Jupyter, test references
#   $RLHF_LAB_CACHE/evcxr_jupyter-<version>/   the notebook kernel binary (cargo install --root)
#   $RLHF_LAB_CACHE/target/                    cargo's target dir: compiled dependencies (CARGO_TARGET_DIR)
#   $RLHF_LAB_CACHE/evcxr/                     the notebooks' evcxr build dir (EVCXR_TMPDIR)
# Each entry is keyed by its pins; delete the folder to start over. Override with RLHF_LAB_CACHE=….
RLHF_LAB_CACHE="${RLHF_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-lab}"
mkdir -p "$RLHF_LAB_CACHE"
RLHF_LAB_CACHE="$(cd "$RLHF_LAB_CACHE" && pwd -P)"
export RLHF_LAB_CACHE
