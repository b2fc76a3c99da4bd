#!/usr/bin/env bash
# Runs the criterion GAE bench (loop vs vectorised, [256, 1024] f32) and writes reports/bench-gae.md with
# the hardware, the medians and the ratio measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
threads="${RLHF_LAB_THREADS:-2}"
RLHF_LAB_THREADS="$threads" cargo bench --bench gae -- --noplot "$@"
python3 - "$threads" <<'PY'
import json, os, platform, subprocess, sys, datetime
threads = sys.argv[1]
root = "target/criterion"
def est(group, fn):
    with open(f"{root}/{group}/{fn}/new/estimates.json") as f:
        e = json.load(f)
    return e["median"]["point_estimate"] / 1e6, e["median"]["confidence_interval"]
cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
except OSError:
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
torch = os.path.realpath(".venv/libtorch").split("/site-packages/")[0]
rows = []
for mode in ["zero", "skip"]:
    g = f"gae_256x1024_f32_{mode}"
    (lm, lci), (vm, vci) = est(g, "loop"), est(g, "vectorised")
    rows.append(f"| {mode} | {lm:.2f} ms [{lci['lower_bound']/1e6:.2f}, {lci['upper_bound']/1e6:.2f}] | {vm:.2f} ms [{vci['lower_bound']/1e6:.2f}, {vci['upper_bound']/1e6:.2f}] | **{lm / vm:.1f}×** |")
os.makedirs("reports", exist_ok=True)
with open("reports/bench-gae.md", "w") as f:
    f.write(f"""# GAE: reference loop vs vectorised scan

`cargo bench --bench gae` (criterion, 10 samples, median and 95% CI), `gae_loop` vs `gae` on rewards and
values of shape [256, 1024] f32 with ragged right padding (512–1023 tokens per row), γ = 1, λ = 0.95.
Both compute advantages and returns, including input validation. Loop: one batched op per time step
(1024 steps). Vectorised: Hillis–Steele scan, ⌈log₂ 1024⌉ = 10 batched steps.

| masked steps | loop | vectorised | speed-up |
|---|---|---|---|
{chr(10).join(rows)}

Run manifest: {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')}; commit `{commit}`; CPU {cpu},
{os.cpu_count()} logical cores, libtorch intra-op threads = {threads}; {platform.platform()};
libtorch = torch 2.11.0 from PyPI (`{os.path.basename(torch)}` venv); device CPU; seed 0 (`tch::manual_seed(0)`).
Regenerate with `bash scripts/bench-report.sh`.
""")
print(open("reports/bench-gae.md").read())
PY
