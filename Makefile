# rlhf-lab — the two commands of the README:
#   make demo   set-up (idempotent, cached) + build + the main job (`rlhf-lab demo`)
#   make test   set-up + every test (unit, snapshot, property, gradient, CLI) + bench smoke run
# Nothing needs exporting: .cargo/config.toml points tch at .venv/libtorch and build.rs writes a RUNPATH.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup demo test bench clean-venv

setup:
	@bash scripts/setup.sh

demo: setup
	$(CARGO) run --release --quiet -- demo

test: setup
	$(CARGO) test --release --all-targets
	$(CARGO) run --release --quiet -- demo > /dev/null
	@bash scripts/check-snapshots.sh

bench: setup
	$(CARGO) bench --bench gae

clean-venv:
	rm -rf .venv
