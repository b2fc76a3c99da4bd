//! The DPO paper's controlled-sentiment experiment at the quick scale, end to end (`rlhf-lab reproduce
//! dpo-sentiment --scale quick`): every stage's files exist and parse; DPO (β = 0.1) raises the mean
//! ground-truth reward on test prefixes above the SFT model's; over the DPO β sweep the final KL falls
//! as β grows; Best-of-N's points sit at its analytic KL; the learned RM beats chance on held-out pairs;
//! a rerun recomputes nothing and gives the same table; a run claimed by another worker is left to it;
//! bad input is a clear error.

use rlhf_lab::pipeline::dpo_sentiment::{
    clear_claims, reproduce, Part, ReproduceOptions, ReproduceSummary,
};
use rlhf_lab::pipeline::frontier::Point;
use std::path::Path;
use std::process::Command;

/// Only `stage` was computed by the call that gave `s`, and the frontier table is still `table`.
fn assert_only_recomputed(s: &ReproduceSummary, stage: &str, table: &str, out: &Path) {
    let redone: Vec<&str> = s
        .timings
        .iter()
        .filter(|t| !t.cached)
        .map(|t| t.stage.as_str())
        .collect();
    assert_eq!(redone, [stage]);
    assert_eq!(
        table,
        std::fs::read_to_string(out.join("frontier.csv")).unwrap()
    );
}

fn points<'a>(pts: &'a [Point], alg: &str, setting: &str) -> Vec<&'a Point> {
    pts.iter()
        .filter(|p| p.algorithm == alg && p.setting == setting)
        .collect()
}

#[test]
fn quick_scale_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("quick");
    let opts = ReproduceOptions {
        scale: "quick".into(),
        seeds: None,
        out_dir: Some(out.clone()),
        only: vec![],
        verbose: false,
        data_dir: None,
        part: Default::default(),
        started: None,
    };
    let s = reproduce(&opts).expect("quick reproduction");

    // Every stage's files exist and parse.
    for f in [
        "frontier.csv",
        "matched_kl.csv",
        "summary.md",
        "summary.json",
        "frontier.html",
        "frontier.svg",
        "manifest.json",
        "samples.md",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let _: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(std::fs::read_to_string(out.join("frontier.svg"))
        .unwrap()
        .starts_with("<svg"));
    let pairs = rlhf_lab::data::read_preferences(&s.pairs.pairs_path).unwrap();
    assert_eq!(pairs.len(), s.pairs.pairs);
    assert!(pairs
        .iter()
        .all(|p| p.score_chosen > p.score_rejected && p.chosen != p.rejected));
    assert!(s.timings.iter().all(|t| t.dir.join("done.json").is_file()));
    // Every evaluation of every trainer run left its samples, and samples.md shows each algorithm.
    for r in s
        .runs
        .iter()
        .filter(|r| !r.algorithm.starts_with("Best-of-N"))
    {
        for p in s
            .points
            .iter()
            .filter(|p| p.algorithm == r.algorithm && p.setting == r.setting && p.seed == r.seed)
        {
            let f = r.dir.join("eval").join(format!("step-{:06}.jsonl", p.step));
            let n = std::fs::read_to_string(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .lines()
                .count();
            assert_eq!(n, 128, "{}", f.display());
        }
    }
    let samples = std::fs::read_to_string(out.join("samples.md")).unwrap();
    for alg in ["DPO", "PPO-GT", "Best-of-N (GT)"] {
        assert!(
            samples.contains(&format!("## {alg} —")),
            "samples.md lacks {alg}"
        );
    }

    // DPO β = 0.1 raises the held-out reward above the SFT model's.
    let dpo = points(&s.points, "DPO", "beta=0.1");
    let sft = dpo.iter().find(|p| p.step == 0).unwrap().reward;
    let last = dpo.iter().max_by_key(|p| p.step).unwrap();
    assert!(
        last.reward > sft + 0.01,
        "DPO β=0.1: {sft} → {}",
        last.reward
    );

    // Over the β sweep the final KL falls as β grows.
    let final_kl = |b: &str| {
        points(&s.points, "DPO", b)
            .iter()
            .max_by_key(|p| p.step)
            .unwrap()
            .kl
    };
    let kls = [final_kl("beta=0.1"), final_kl("beta=1"), final_kl("beta=5")];
    assert!(
        kls[0] > kls[1] && kls[1] > kls[2],
        "final KL over β = 0.1, 1, 5: {kls:?}"
    );

    // Best-of-N's points sit at log N − (N−1)/N.
    for p in s
        .points
        .iter()
        .filter(|p| p.algorithm.starts_with("Best-of-N"))
    {
        let n = p.step as f64;
        assert!((p.kl - (n.ln() - (n - 1.0) / n)).abs() < 1e-12, "{p:?}");
    }
    // The learned reward models beat chance on held-out pairs.
    assert!(
        s.rm_pairwise_accuracy > 0.5 && s.rm_kwise_accuracy > 0.5,
        "{} {}",
        s.rm_pairwise_accuracy,
        s.rm_kwise_accuracy
    );

    // A rerun recomputes nothing and writes the same table.
    let table = std::fs::read_to_string(out.join("frontier.csv")).unwrap();
    let again = reproduce(&opts).unwrap();
    assert!(again.timings.iter().all(|t| t.cached));
    assert_eq!(
        table,
        std::fs::read_to_string(out.join("frontier.csv")).unwrap()
    );

    // A stage killed mid-way (its done.json missing) is redone, and only it.
    let dpo_dir = s
        .timings
        .iter()
        .find(|t| t.stage.starts_with("dpo-beta_1-"))
        .unwrap()
        .dir
        .clone();
    std::fs::remove_file(dpo_dir.join("done.json")).unwrap();
    let third = reproduce(&opts).unwrap();
    assert_only_recomputed(&third, "dpo-beta_1-seed0", &table, &out);

    // Parallel sweeps: a worker leaves a run claimed by another worker alone (and writes no report);
    // once the claims are cleared, the final pass runs it.
    std::fs::remove_file(dpo_dir.join("done.json")).unwrap();
    std::fs::write(dpo_dir.join("claimed"), b"").unwrap();
    std::fs::remove_file(out.join("summary.md")).unwrap();
    let worker = reproduce(&ReproduceOptions {
        part: Part::Worker,
        ..opts.clone()
    })
    .unwrap();
    assert!(worker.timings.iter().all(|t| t.cached));
    assert!(!worker.timings.iter().any(|t| t.stage == "dpo-beta_1-seed0"));
    assert!(!dpo_dir.join("done.json").exists());
    assert!(
        !out.join("summary.md").exists(),
        "a worker wrote the report"
    );
    assert_eq!(clear_claims(&out).unwrap(), 1);
    let last = reproduce(&opts).unwrap();
    assert_only_recomputed(&last, "dpo-beta_1-seed0", &table, &out);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = tmp.path().join("x");
    let o = run(&[
        "reproduce",
        "dpo-sentiment",
        "--scale",
        "huge",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("scale"));
    assert!(!out.exists(), "an unknown scale left files");
    let o = run(&[
        "reproduce",
        "dpo-sentiment",
        "--only",
        "RLAIF",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown algorithm"));
    let o = run(&[
        "reproduce",
        "imdb-summaries",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("experiment"));
    assert!(!Path::new(&out).exists());
}
