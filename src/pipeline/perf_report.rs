//! `reports/perf.md` from the measured cases of [`crate::pipeline::perf`]: the ceilings, every
//! workload beside its PyTorch anchor as a ratio and as a fraction of its ceiling, the scaling curves
//! (figures in `reports/perf/`), the thread policy and the run manifest.

use crate::error::Result;
use crate::pipeline::perf::{Case, SuiteOptions, Timing};
use crate::train::report::{self, XySeries};
use std::fmt::Write as _;
use std::path::Path;

/// What a workload is, in a table row.
fn what(k: &Case) -> String {
    let p = |n: &str| k.params.get(n).copied().unwrap_or(0);
    match k.workload.as_str() {
        "matmul" => format!("matmul {n} × {n} f32", n = p("n")),
        "copy" => format!("copy {} Mi f32", p("n") >> 20),
        "read" => format!("read (sum) {} Mi f32", p("n") >> 20),
        "gae-zero" => format!("GAE [{} × {}], masked steps zero", p("B"), p("T")),
        "gae-skip" => format!("GAE [{} × {}], masked steps skipped", p("B"), p("T")),
        "sft-step" => format!(
            "SFT step, GPT {}×{} V={}, B={} T={}",
            p("L"),
            p("C"),
            p("V"),
            p("B"),
            p("T")
        ),
        "dpo-step" => format!(
            "DPO step, GPT {}×{} V={}, {} pairs × {} tokens",
            p("L"),
            p("C"),
            p("V"),
            p("P"),
            p("S")
        ),
        "rm-step" => format!(
            "RM step, GPT {}×{} + score head, {} pairs × {} tokens",
            p("L"),
            p("C"),
            p("P"),
            p("S")
        ),
        "sample" => format!(
            "sampling, GPT {}×{} V={}, B={}, {} new tokens",
            p("L"),
            p("C"),
            p("V"),
            p("B"),
            p("N")
        ),
        "decode-smollm2" => format!(
            "SmolLM2-135M greedy, B={}, {} new tokens, f32",
            p("B"),
            p("N")
        ),
        "ppo-iteration" => format!(
            "PPO iteration, GPT {}×{} V={}: {} rollouts × {} tokens, {} epochs × {} minibatches",
            p("L"),
            p("C"),
            p("V"),
            p("B"),
            p("N"),
            p("E"),
            p("M")
        ),
        w => w.to_string(),
    }
}

fn ms(t: &Timing) -> String {
    let f = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    format!("{} ms [{}, {}]", f(t.median_ms), f(t.q1_ms), f(t.q3_ms))
}

/// The matmul GFLOP/s, copy GB/s and read GB/s of rlhf-lab at `threads`.
fn ceilings(cases: &[Case], threads: i32) -> (Option<f64>, Option<f64>, Option<f64>) {
    let find = |w: &str| {
        cases.iter().find(|k| {
            k.workload == w && k.threads == threads && k.competitors == 0 && k.family.is_none()
        })
    };
    let rate = |k: &Case, work: Option<f64>| Some(work? / (k.rust?.median_ms * 1e-3) / 1e9);
    (
        find("matmul").and_then(|k| rate(k, k.flops)),
        find("copy").and_then(|k| rate(k, k.bytes)),
        find("read").and_then(|k| rate(k, k.bytes)),
    )
}

/// `tokens/s` or `elements/s` of a case at a median time.
fn throughput(k: &Case, t: &Timing) -> Option<f64> {
    let units = k.tokens.or_else(|| {
        let p = |n: &str| k.params.get(n).copied().unwrap_or(0) as f64;
        k.workload.starts_with("gae").then(|| p("B") * p("T"))
    })?;
    Some(units / (t.median_ms * 1e-3))
}

fn ratio(k: &Case) -> Option<f64> {
    Some(k.anchor.as_ref()?.timing.median_ms / k.rust?.median_ms)
}

/// A row of the main table.
fn row(k: &Case, cases: &[Case]) -> String {
    let (gflops_ceiling, copy_ceiling, read_ceiling) = ceilings(cases, k.threads);
    // Decoding only reads its weights: its ceiling is the read bandwidth; the rest read and write.
    let (gbs_ceiling, bw_name) = if matches!(k.workload.as_str(), "decode-smollm2" | "read") {
        (read_ceiling, "read")
    } else {
        (copy_ceiling, "copy")
    };
    let rust = k.rust.map(|t| ms(&t)).unwrap_or_else(|| "–".into());
    let anchor = k
        .anchor
        .as_ref()
        .map(|a| format!("{}: {}", a.name, ms(&a.timing)))
        .unwrap_or_else(|| "–".into());
    let r = ratio(k)
        .map(|r| format!("**{r:.2}×**"))
        .unwrap_or_else(|| "–".into());
    let tput = k
        .rust
        .and_then(|t| throughput(k, &t))
        .map(|x| {
            let unit = if k.tokens.is_some() {
                "tok/s"
            } else {
                "elem/s"
            };
            format!("{} {unit}", si(x))
        })
        .unwrap_or_default();
    let mut hw = Vec::new();
    if let (Some(f), Some(t)) = (k.flops, k.rust) {
        let g = f / (t.median_ms * 1e-3) / 1e9;
        let frac = gflops_ceiling
            .map(|c| format!(" ({:.0}% of matmul)", 100.0 * g / c))
            .unwrap_or_default();
        hw.push(format!("{g:.1} GFLOP/s{frac}"));
    }
    if let (Some(b), Some(t)) = (k.bytes, k.rust) {
        if !k.workload.starts_with("matmul") {
            let g = b / (t.median_ms * 1e-3) / 1e9;
            let frac = gbs_ceiling
                .map(|c| format!(" ({:.0}% of {bw_name})", 100.0 * g / c))
                .unwrap_or_default();
            hw.push(format!("{g:.2} GB/s{frac}"));
        }
    }
    let note = k
        .note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    format!(
        "| {}{note} | {} | {rust} | {anchor} | {r} | {tput} | {} |",
        what(k),
        k.threads,
        hw.join("; ")
    )
}

/// 1234567 → "1.23 M".
fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

const HEADER: &str = "| workload | threads | rlhf-lab: median [IQR] | PyTorch anchor: median [IQR] | speed-up | rlhf-lab throughput | rlhf-lab vs ceiling |\n|---|---|---|---|---|---|---|";

/// The scaling figures: per family, throughput of both stacks against the varied size.
fn figures(dir: &Path, cases: &[Case]) -> Result<Vec<(String, String)>> {
    let families: [(&str, &str, &str, &str); 5] = [
        (
            "gae-T",
            "gae-zero",
            "T",
            "GAE throughput vs sequence length T (B = 256)",
        ),
        (
            "gae-B",
            "gae-zero",
            "B",
            "GAE throughput vs batch B (T = 1024)",
        ),
        (
            "sft-B",
            "sft-step",
            "B",
            "SFT step throughput vs batch B (T = 128)",
        ),
        (
            "sft-T",
            "sft-step",
            "T",
            "SFT step throughput vs context T (B = 16)",
        ),
        (
            "sample-B",
            "sample",
            "B",
            "Sampling throughput vs batch B (V = 8192, 32 new tokens)",
        ),
    ];
    let mut out = Vec::new();
    for (family, workload, x_name, title) in families {
        // The family's cases plus the main-table case of the same workload that lies on the curve.
        let members: Vec<&Case> = cases
            .iter()
            .filter(|k| {
                k.workload == workload
                    && k.competitors == 0
                    && (k.family.as_deref() == Some(family)
                        || (k.family.is_none() && on_curve(k, family)))
            })
            .collect();
        if members.len() < 2 {
            continue;
        }
        let mut series = Vec::new();
        for (name, pick) in [("rlhf-lab", true), ("PyTorch", false)] {
            let mut pts: Vec<(f64, f64)> = members
                .iter()
                .filter_map(|k| {
                    let t = if pick {
                        k.rust?
                    } else {
                        k.anchor.as_ref()?.timing
                    };
                    Some((*k.params.get(x_name)? as f64, throughput(k, &t)?))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                series.push(XySeries {
                    name: name.into(),
                    points: pts.clone(),
                    line: pts,
                    line_label: "median".into(),
                    band: Vec::new(),
                });
            }
        }
        let unit = if workload.starts_with("gae") {
            "elements/s"
        } else {
            "tokens/s"
        };
        report::write_xy_figure(&dir.join(family), title, x_name, unit, &series, None)?;
        out.push((family.to_string(), title.to_string()));
    }
    Ok(out)
}

/// Whether a main-table case is also a point of a family's curve.
fn on_curve(k: &Case, family: &str) -> bool {
    let p = |n: &str| k.params.get(n).copied().unwrap_or(-1);
    let main_threads = k.threads == 2 || k.threads == 1;
    main_threads
        && match family {
            "gae-T" | "gae-B" => p("B") == 256 && p("T") == 1024,
            "sft-B" | "sft-T" => p("B") == 16 && p("T") == 128,
            "sample-B" => p("V") == 8192 && p("N") == 32,
            _ => false,
        }
}

/// Writes the markdown report and its figures.
pub fn write(
    path: &Path,
    cases: &[Case],
    smollm2: Option<(f64, f64)>,
    opts: &SuiteOptions,
) -> Result<()> {
    let fig_dir = path.with_extension("");
    std::fs::create_dir_all(&fig_dir).map_err(|e| crate::RlhfError::io(&fig_dir, e))?;
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let v = report::versions();
    let git = report::git_info(&crate::io::project_root());
    let _ = writeln!(
        md,
        "# Performance: rlhf-lab vs PyTorch eager, same machine, same run\n\n\
         `rlhf-lab bench{}` ({}). Every row is timed in this one run: rlhf-lab in Rust (`src/pipeline/perf.rs`), \
         then, right after each case, its PyTorch anchor on the same shapes (`benches/anchors/perf_anchors.py`, a persistent process from the project venv). \
         **speed-up** = anchor median / rlhf-lab median (> 1: rlhf-lab is faster). Times are medians over \
         repetitions after a warm-up, with the interquartile range.\n",
        if opts.quick { " --quick" } else { "" },
        report::utc_now()
    );
    let _ = writeln!(
        md,
        "Machine: {cpu}, {cores} logical cores; device CPU; libtorch {} (PyPI wheel), tch {}, rlhf-lab {}; \
         commit `{}`{}.\n",
        v.torch.as_deref().unwrap_or("?"),
        v.tch,
        v.rlhf_lab,
        git.commit.as_deref().map(|c| &c[..c.len().min(10)]).unwrap_or("?"),
        if git.dirty == Some(true) { " (with uncommitted changes)" } else { "" },
    );
    if opts.quick {
        let _ = writeln!(
            md,
            "**Quick mode**: tiny shapes that only check that every workload and anchor runs. The numbers \
             say nothing about speed.\n"
        );
    }

    // Ceilings.
    let _ = writeln!(md, "## The machine's ceilings\n\n{HEADER}");
    for k in cases
        .iter()
        .filter(|k| matches!(k.workload.as_str(), "matmul" | "copy" | "read"))
    {
        let _ = writeln!(md, "{}", row(k, cases));
    }
    // Main rows.
    let _ = writeln!(
        md,
        "\n## Workloads\n\nThe ceiling columns: achieved GFLOP/s (model FLOP count, \
         module docs of `pipeline::perf`) as a share of the matmul rate, and bytes moved / time as a share of \
         the copy bandwidth (decoding, which only reads its weights: of the read bandwidth), both at the row's thread count.\n\n{HEADER}"
    );
    for k in cases.iter().filter(|k| {
        k.family.is_none() && !matches!(k.workload.as_str(), "matmul" | "copy" | "read")
    }) {
        let _ = writeln!(md, "{}", row(k, cases));
    }
    if let Some((f32_bytes, bf16_bytes)) = smollm2 {
        let (_, _, bw) = ceilings(cases, 1);
        if let Some(bw) = bw {
            let measured = cases
                .iter()
                .find(|k| k.workload == "decode-smollm2")
                .and_then(|k| Some(k.tokens? / (k.rust?.median_ms * 1e-3)));
            let _ = writeln!(
                md,
                "\nSmolLM2's memory-bandwidth bound at batch 1: every token reads all {:.0} MB of f32 weights \
                 (tied embeddings once), so at the 1-thread read bandwidth of {bw:.1} GB/s decoding cannot \
                 exceed **{:.1} tokens/s** in f32{}; bf16 weights ({:.0} MB) would raise the bound to {:.1} \
                 tokens/s. (The prompt's prefill is inside the measured time.)",
                f32_bytes / 1e6,
                bw * 1e9 / f32_bytes,
                measured
                    .map(|m| format!(" (measured: {m:.1} tokens/s, {:.0}% of it)", 100.0 * m * f32_bytes / (bw * 1e9)))
                    .unwrap_or_default(),
                bf16_bytes / 1e6,
                bw * 1e9 / bf16_bytes
            );
        }
    }
    // Scaling.
    let figs = figures(&fig_dir, cases)?;
    if !figs.is_empty() {
        let _ = writeln!(md, "\n## Scaling\n\n{HEADER}");
        for k in cases
            .iter()
            .filter(|k| matches!(k.family.as_deref(), Some(f) if f != "threads" && f != "malloc"))
        {
            let _ = writeln!(md, "{}", row(k, cases));
        }
        let stem = fig_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("perf");
        let _ = writeln!(md);
        for (f, title) in figs {
            let _ = writeln!(
                md,
                "- {title} (interactive: `{stem}/{f}.html`, written by the run, not committed):\n\n  ![{title}]({stem}/{f}.svg)\n"
            );
        }
    }
    // Allocator.
    let alloc_rows: Vec<&Case> = cases
        .iter()
        .filter(|k| k.family.is_none() && k.anchor_same_malloc.is_some())
        .collect();
    if !alloc_rows.is_empty() {
        let _ = writeln!(
            md,
            "\n## Allocator: where the training-step speed-up comes from\n\n\
             rlhf-lab keeps freed memory in glibc's heap (`src/alloc.rs`: `M_MMAP_MAX = 0`, no trimming) \
             instead of an `mmap`/`munmap` pair, page faults and zero-fill for every buffer over 32 MiB. \
             The same step with glibc's defaults (`RLHF_LAB_MALLOC=system`), and PyTorch with the same \
             policy set through glibc's environment (`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`):\n\n\
             | workload | threads | rlhf-lab | rlhf-lab, glibc defaults | PyTorch | PyTorch, same policy | speed-up vs PyTorch, same policy |\n|---|---|---|---|---|---|---|"
        );
        for k in alloc_rows {
            let system = cases.iter().find(|s| {
                s.system_malloc
                    && s.workload == k.workload
                    && s.params == k.params
                    && s.threads == k.threads
            });
            let cell = |t: Option<Timing>| t.map(|t| ms(&t)).unwrap_or_else(|| "–".into());
            let same = k.anchor_same_malloc.as_ref().map(|a| a.timing);
            let speed = match (same, k.rust) {
                (Some(a), Some(r)) => format!("**{:.2}×**", a.median_ms / r.median_ms),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {speed} |",
                what(k),
                k.threads,
                cell(k.rust),
                cell(system.and_then(|s| s.rust)),
                cell(k.anchor.as_ref().map(|a| a.timing)),
                cell(same),
            );
        }
    }
    // Thread policy.
    let policy: Vec<&Case> = cases
        .iter()
        .filter(|k| {
            k.family.as_deref() == Some("threads")
                || (k.family.is_none()
                    && matches!(k.workload.as_str(), "gae-zero" | "sft-step")
                    && (k.params.get("B") == Some(&256) || k.params.get("B") == Some(&16)))
        })
        .collect();
    if policy
        .iter()
        .any(|k| k.family.as_deref() == Some("threads"))
    {
        let _ = writeln!(
            md,
            "\n## Thread policy: idle machine vs a competing process\n\n\
             Competing processes: `sh` busy loops, one core each (2 = a fully loaded 2-core machine). `passive` = `OMP_WAIT_POLICY=PASSIVE` \
             (libgomp's idle workers sleep instead of spinning); it must be in the environment when the \
             process starts.\n\n\
             | workload | threads | competing processes | wait policy | rlhf-lab median [IQR] |\n|---|---|---|---|---|"
        );
        for k in policy {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                what(k),
                k.threads,
                k.competitors,
                k.wait_policy,
                k.rust.map(|t| ms(&t)).unwrap_or_else(|| "–".into())
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Run manifest\n\nAll cases with their timings, FLOP and byte counts: [`{0}/cases.json`]({0}/cases.json). \
         Regenerate with `make bench` (≈ 5 min on 2 cores) or `make bench-quick`.",
        fig_dir.file_name().and_then(|s| s.to_str()).unwrap_or("perf")
    );
    crate::io::write_json(fig_dir.join("cases.json"), cases)?;
    crate::io::atomic_write(path, md.as_bytes())
}
