# rlhf-lab — the two commands of the README:
#   make demo   set-up (idempotent, cached) + build + the main job (`rlhf-lab demo`)
#   make test   set-up + every test (unit, snapshot, property, gradient, CLI) + every notebook, headless
# More targets:
#   make notebooks   execute all notebooks in place (outputs + static SVGs, to commit) and export offline
#                    HTML reports to reports/notebooks/
#   make lab         open the notebooks in JupyterLab with the "Rust (rlhf-lab)" kernel
# Nothing needs exporting: .cargo/config.toml points tch at .venv/libtorch, build.rs writes a RUNPATH, and
# the kernel spec written by kernel/install.sh carries its own environment.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

PY := .venv/bin/python

.PHONY: setup demo test test-notebooks notebooks lab bench clean-venv

setup:
	@bash scripts/setup.sh
	@$(PY) datasets/fetch.py
	@bash kernel/install.sh

demo: setup
	$(CARGO) run --release --quiet -- demo

test: setup
	$(CARGO) test --release --all-targets
	$(CARGO) run --release --quiet -- demo > /dev/null
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
	.venv/bin/jupyter lab $(LAB_ARGS) notebooks/

bench: setup
	$(CARGO) bench --bench gae

clean-venv:
	rm -rf .venv
