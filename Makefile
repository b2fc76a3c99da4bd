# rlhf-lab — the two commands of the README:
#   make demo   set-up (idempotent, cached) + build of the binary only + the main job: the DPO paper's
#               controlled-sentiment reward–KL frontier at the quick scale (`rlhf-lab reproduce dpo-sentiment`)
#   make test   full set-up (with the notebook kernel) + every test (unit, snapshot, property, gradient,
#               CLI) + every notebook, headless
# More targets:
#   make notebooks   execute all notebooks in place (outputs + static SVGs, to commit) and export offline
#                    HTML reports to reports/notebooks/
#   make lab         open the notebooks in JupyterLab with the "Rust (rlhf-lab)" kernel
#   make bench       the performance suite beside PyTorch (reports/perf.md)
# Nothing needs exporting: .cargo/config.toml points tch at .venv/libtorch, build.rs writes a RUNPATH, and
# the kernel spec written by kernel/install.sh carries its own environment.
#
# The machine cache (scripts/cache.sh, default ~/.cache/rlhf-lab) holds what does not depend on the
# checkout: the venv, the evcxr_jupyter binary, cargo's target dir and the notebooks' evcxr build dir. A
# fresh clone on a machine that has built before reuses all four; a brand-new machine fills them once.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
export RLHF_LAB_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/rlhf-lab
export CARGO_TARGET_DIR ?= $(RLHF_LAB_CACHE)/target
# libtorch by its resolved path (the venv in the cache), so torch-sys is not rebuilt for every clone.
CARGO_ENV = LIBTORCH="$$(readlink -f .venv/libtorch)"

PY := .venv/bin/python

.PHONY: setup setup-core demo worked-example reproduce-small test test-notebooks notebooks lab bench bench-quick clean-venv

# torch venv + data: all the main job needs.
setup-core:
	@bash scripts/setup.sh
	@$(PY) datasets/fetch.py

# + Jupyter and the evcxr kernel: what the notebooks and the test command need.
setup: setup-core
	@bash kernel/install.sh

demo: setup-core
	$(CARGO_ENV) $(CARGO) run --release --quiet --bin rlhf-lab -- reproduce dpo-sentiment --scale quick --jobs 2

# The seed worked example (document 001 §3.2.4), printed vs computed.
worked-example: setup-core
	$(CARGO_ENV) $(CARGO) run --release --quiet --bin rlhf-lab -- demo

# The small-scale reproduction (every sweep value, 3 seeds; hours on 2 cores; resumable).
reproduce-small: setup-core
	$(CARGO_ENV) $(CARGO) run --release --quiet --bin rlhf-lab -- reproduce dpo-sentiment --scale small --jobs 2

test: setup
	$(CARGO_ENV) $(CARGO) test --release --all-targets
	$(CARGO_ENV) $(CARGO) run --release --quiet --bin rlhf-lab -- demo > /dev/null
	@bash scripts/check-snapshots.sh
	$(PY) kernel/run_notebooks.py --self-test
	$(PY) kernel/run_notebooks.py

# Only the notebooks (headless, into target/notebooks; the committed ones are left alone).
test-notebooks: setup
	$(PY) kernel/run_notebooks.py

notebooks: setup
	$(PY) kernel/run_notebooks.py --inplace --html reports/notebooks

# Jupyter refuses to run as root without --allow-root (containers, CI boxes).
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: setup
	env -u CARGO_TARGET_DIR .venv/bin/jupyter lab $(LAB_ARGS) notebooks/

# The performance suite: every workload beside its PyTorch/HF anchor in one run -> reports/perf.md and
# reports/perf/ (figures, cases.json). ≈ 5 min on 2 cores; keep the machine otherwise idle.
bench: setup-core
	$(CARGO_ENV) $(CARGO) build --release --quiet --bin rlhf-lab
	$(CARGO_TARGET_DIR)/release/rlhf-lab bench

# Tiny shapes: checks that every workload and anchor runs (tests/bench.rs does this in `make test`).
bench-quick: setup-core
	$(CARGO_ENV) $(CARGO) run --release --quiet --bin rlhf-lab -- bench --quick

# Removes this checkout's link to the venv (the cached venv stays; delete $(RLHF_LAB_CACHE) to drop it).
clean-venv:
	rm -rf .venv
