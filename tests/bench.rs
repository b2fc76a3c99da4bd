//! `rlhf-lab bench --quick`: every workload and every PyTorch anchor runs and lands in the report (the
//! numbers of the quick shapes are not asserted: they measure nothing). Plus the suite's plumbing:
//! quartiles, case keys, and that every planned workload has an anchor.

use rlhf_lab::pipeline::perf::{plan, timing_of, Case};
use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn quick_suite_measures_every_workload_beside_its_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("perf.md");
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args(["bench", "--quick", "--out"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench --quick failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&report).unwrap();
    let cases: Vec<Case> = rlhf_lab::io::read_json(dir.path().join("perf/cases.json")).unwrap();
    assert_eq!(cases.len(), plan(true, 2).len());
    for k in &cases {
        assert!(
            k.rust.is_some(),
            "{} has no rlhf-lab time: {:?}",
            k.key(),
            k.note
        );
        let anchored = k.competitors == 0 && k.wait_policy == "default" && !k.system_malloc;
        assert_eq!(k.anchor.is_some(), anchored, "{}", k.key());
        let steps = ["sft-step", "dpo-step", "rm-step"];
        let same_malloc = anchored && k.family.is_none() && steps.contains(&k.workload.as_str());
        assert_eq!(k.anchor_same_malloc.is_some(), same_malloc, "{}", k.key());
    }
    for section in [
        "## The machine's ceilings",
        "## Workloads",
        "## Allocator",
        "## Thread policy",
        "SmolLM2's memory-bandwidth bound",
        "**Quick mode**",
    ] {
        assert!(md.contains(section), "report lacks {section:?}:\n{md}");
    }
    for row in [
        "GAE [8 × 64], masked steps zero",
        "SFT step",
        "DPO step",
        "RM step",
        "sampling",
        "SmolLM2-135M greedy",
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no row {row:?}"));
        assert!(line.contains("×**"), "row {row:?} has no speed-up: {line}");
    }
}

#[test]
fn quartiles_interpolate_and_keys_are_unique() {
    let t = timing_of(&mut [4.0, 1.0, 3.0, 2.0, 5.0]);
    assert_eq!((t.median_ms, t.q1_ms, t.q3_ms, t.reps), (3.0, 2.0, 4.0, 5));
    let t = timing_of(&mut [2.0, 1.0]);
    assert_eq!((t.median_ms, t.q1_ms, t.q3_ms), (1.5, 1.25, 1.75));
    for quick in [true, false] {
        let cases = plan(quick, 2);
        let keys: BTreeSet<String> = cases.iter().map(Case::key).collect();
        assert_eq!(
            keys.len(),
            cases.len(),
            "duplicate case keys (quick = {quick})"
        );
    }
}

/// Every workload of the full plan has an anchor in benches/anchors/perf_anchors.py and a work count
/// (FLOPs, bytes or tokens) for the ceiling columns.
#[test]
fn every_planned_workload_has_an_anchor_and_a_work_count() {
    let anchors = std::fs::read_to_string("benches/anchors/perf_anchors.py").unwrap();
    let workloads: BTreeSet<String> = plan(false, 2).into_iter().map(|k| k.workload).collect();
    assert_eq!(workloads.len(), 11, "{workloads:?}");
    for w in &workloads {
        assert!(anchors.contains(&format!("\"{w}\":")), "no anchor for {w}");
    }
    for k in plan(false, 2) {
        let counted = k.flops.is_some() || k.bytes.is_some() || k.tokens.is_some();
        assert!(counted, "{} has no work count", k.key());
    }
}
