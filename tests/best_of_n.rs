//! Best-of-N (`train::best_of_n`).
//!
//! The claim tested about the KL: for a categorical policy π with pairwise distinct scores, the exact
//! best-of-N distribution is `π_N(y_k) = F(y_k)^N − F(y_{k−1})^N` (outcomes in increasing score
//! order) — checked against a Monte-Carlo run of the selection rule itself (draw N from π, keep the
//! best by `best_index`); its KL to π never exceeds the analytic `log N − (N−1)/N` (Beirami et al.
//! 2024, Thm. 1), equals it to < 1e-4 when every outcome has vanishing mass (uniform over 10⁴ or 10⁵
//! outcomes, the continuous limit in which Stiennon et al. 2020 derive it), and falls well below it
//! when one outcome carries much mass. A Monte-Carlo estimate E_{π_N}[log π_N/π] over sampled
//! best-of-N outcomes matches the analytic value within its standard error in the continuous limit.
//!
//! On a language model (a tiny random GPT over a 5-token vocabulary): N = 1 is the policy itself (its
//! samples and mean score are exactly the evaluator's, KL 0), the kept score is the maximum of the first
//! N candidates, the mean kept score is non-decreasing in N on one seed, and runs are deterministic.
//! The CLI runs on a tiny SFT run with the ground-truth classifier, and bad configs exit 2.

mod common;
use common::tiny::{tiny_gpt, tiny_tokenizer, CountC};
use rlhf_lab::rng::SplitMix64;
use rlhf_lab::train::best_of_n::*;
use rlhf_lab::train::eval::{evaluate, EvalConfig};
use rlhf_lab::RlhfError;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn analytic_kl_values() {
    assert_eq!(analytic_kl(1).unwrap(), 0.0);
    assert!((analytic_kl(2).unwrap() - (2f64.ln() - 0.5)).abs() < 1e-15);
    assert!((analytic_kl(16).unwrap() - (16f64.ln() - 15.0 / 16.0)).abs() < 1e-15);
    let e = analytic_kl(0).unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }), "{e}");
    // Increasing in N.
    let v: Vec<f64> = (1..100).map(|n| analytic_kl(n).unwrap()).collect();
    assert!(v.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn best_index_takes_the_first_maximum() {
    assert_eq!(best_index(&[1.0, 3.0, 2.0, 3.0]), Some(1));
    assert_eq!(best_index(&[-1.0]), Some(0));
    assert_eq!(best_index(&[]), None);
    assert_eq!(best_index(&[1.0, f64::NAN]), None);
}

fn random_policy(m: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64::new(seed);
    let w: Vec<f64> = (0..m).map(|_| rng.uniform() + 0.05).collect();
    let total: f64 = w.iter().sum();
    let probs = w.iter().map(|x| x / total).collect();
    let scores = (0..m).map(|_| rng.uniform() * 10.0 - 5.0).collect();
    (probs, scores)
}

#[test]
fn exact_categorical_best_of_n_is_bounded_by_the_analytic_kl() {
    for seed in 0..5 {
        let (p, s) = random_policy(40, seed);
        for n in [1, 2, 3, 4, 8, 16, 64] {
            let pn = categorical_best_of_n(&p, &s, n).unwrap();
            assert!((pn.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let exact = kl_divergence(&pn, &p);
            let bound = analytic_kl(n).unwrap();
            assert!(exact <= bound + 1e-12, "N = {n}: exact {exact} > {bound}");
            if n == 1 {
                assert!(exact.abs() < 1e-12);
            }
        }
    }
    // Continuous limit: uniform over many outcomes.
    for m in [10_000usize, 100_000] {
        let p = vec![1.0 / m as f64; m];
        let s: Vec<f64> = (0..m).map(|i| i as f64).collect();
        for n in [2, 4, 16, 64] {
            let exact = kl_divergence(&categorical_best_of_n(&p, &s, n).unwrap(), &p);
            let bound = analytic_kl(n).unwrap();
            println!("uniform over {m}: N = {n}: exact {exact:.7}, log N − (N−1)/N = {bound:.7}");
            assert!((bound - exact).abs() < 1e-4, "{exact} vs {bound}");
        }
    }
    // One outcome with half the mass at the top: far below the formula.
    let mut p = vec![0.5 / 39.0; 39];
    p.push(0.5);
    let s: Vec<f64> = (0..40).map(|i| i as f64).collect();
    let exact = kl_divergence(&categorical_best_of_n(&p, &s, 16).unwrap(), &p);
    assert!(exact < analytic_kl(16).unwrap() - 1.0, "{exact}");
    // Bad input.
    assert!(categorical_best_of_n(&[0.5, 0.5], &[1.0, 1.0], 2).is_err()); // tie
    assert!(categorical_best_of_n(&[0.5, 0.6], &[1.0, 2.0], 2).is_err()); // not a distribution
    assert!(categorical_best_of_n(&[0.5, 0.5], &[1.0], 2).is_err());
    assert!(categorical_best_of_n(&[0.5, 0.5], &[1.0, 2.0], 0).is_err());
}

/// Monte-Carlo: draw N outcomes by `draw`, keep the best by [`best_index`].
fn mc_best(scores: &[f64], n: usize, trials: usize, mut draw: impl FnMut() -> usize) -> Vec<usize> {
    (0..trials)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| draw()).collect();
            let sc: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
            idx[best_index(&sc).unwrap()]
        })
        .collect()
}

fn mean_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (v / n).sqrt())
}

#[test]
fn monte_carlo_selection_matches_the_exact_distribution_and_kl() {
    // A non-uniform categorical policy: the selection rule samples π_N.
    let (p, s) = random_policy(30, 7);
    let n = 4;
    let pn = categorical_best_of_n(&p, &s, n).unwrap();
    let trials = 200_000;
    let mut rng = SplitMix64::new(1);
    let kept = mc_best(&s, n, trials, || rng.categorical(&p).unwrap());
    let mut counts = vec![0usize; p.len()];
    for &k in &kept {
        counts[k] += 1;
    }
    for (k, &c) in counts.iter().enumerate() {
        let f = c as f64 / trials as f64;
        let se = (pn[k] * (1.0 - pn[k]) / trials as f64).sqrt();
        assert!(
            (f - pn[k]).abs() <= 5.0 * se + 1e-12,
            "outcome {k}: {f} vs {}",
            pn[k]
        );
    }
    let lr: Vec<f64> = kept.iter().map(|&k| (pn[k] / p[k]).ln()).collect();
    let (est, se) = mean_se(&lr);
    let exact = kl_divergence(&pn, &p);
    println!("categorical (30 outcomes), N = {n}: MC KL {est:.4} ± {se:.4}, exact {exact:.4}, analytic {:.4}", analytic_kl(n).unwrap());
    assert!((est - exact).abs() <= 5.0 * se, "{est} ± {se} vs {exact}");

    // Near-continuous policy (uniform over 10⁴ outcomes): the MC estimate against log N − (N−1)/N.
    let m = 10_000;
    let p = vec![1.0 / m as f64; m];
    let mut srng = SplitMix64::new(3);
    let s: Vec<f64> = (0..m).map(|_| srng.uniform()).collect();
    for n in [2, 8] {
        let pn = categorical_best_of_n(&p, &s, n).unwrap();
        let mut rng = SplitMix64::new(10 + n as u64);
        let kept = mc_best(&s, n, 100_000, || rng.below(m));
        let lr: Vec<f64> = kept.iter().map(|&k| (pn[k] / p[k]).ln()).collect();
        let (est, se) = mean_se(&lr);
        let analytic = analytic_kl(n).unwrap();
        println!("uniform over {m}, N = {n}: MC KL {est:.4} ± {se:.4}, analytic {analytic:.4}");
        assert!(
            (est - analytic).abs() <= 5.0 * se + 1e-4,
            "{est} ± {se} vs {analytic}"
        );
    }
}

fn sampling(seed: u64) -> SamplingSection {
    SamplingSection {
        max_new_tokens: 3,
        batch_size: 3,
        seed,
    }
}

#[test]
fn on_a_language_model_n1_is_the_policy_and_the_mean_grows_with_n() {
    let (_vs, gpt) = tiny_gpt(3, common::tiny::V, false);
    let tok = tiny_tokenizer();
    let prompts: Vec<Vec<i64>> = (0..10)
        .flat_map(|_| [vec![2i64], vec![3, 4], vec![4, 4, 3]])
        .collect();
    let ns = [1, 2, 4, 8];
    let (rows, cands) = best_of_n(
        &gpt,
        &tok,
        &prompts,
        &ns,
        &CountC,
        Some(&CountC),
        &sampling(5),
    )
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(cands.iter().all(|p| p.candidates.len() == 8));

    // N = 1: the evaluator's samples and mean score (same seed and batch size), KL 0.
    let ev = evaluate(
        &gpt,
        &gpt,
        &tok,
        &prompts,
        &CountC,
        &EvalConfig {
            max_new_tokens: 3,
            batch_size: 3,
            seed: 5,
        },
    )
    .unwrap();
    for (p, e) in cands.iter().zip(&ev.samples) {
        assert_eq!(p.candidates[0].response_ids, e.response_ids);
        assert_eq!(p.candidates[0].score, e.score);
    }
    assert_eq!(rows[0].n, 1);
    assert_eq!(rows[0].kl_analytic, 0.0);
    assert_eq!(rows[0].score_mean, ev.score_mean);
    assert_eq!(rows[0].score_std, ev.score_std);
    assert_eq!(rows[0].ground_truth_mean, Some(ev.score_mean));

    // The kept score is the max of the first N candidates; the mean is non-decreasing in N.
    for (r, &n) in rows.iter().zip(&ns) {
        let want: f64 = cands
            .iter()
            .map(|p| {
                p.candidates[..n]
                    .iter()
                    .map(|c| c.score)
                    .fold(f64::MIN, f64::max)
            })
            .sum::<f64>()
            / cands.len() as f64;
        assert!((r.score_mean - want).abs() < 1e-12);
        assert_eq!(r.kl_analytic, analytic_kl(n).unwrap());
    }
    assert!(
        rows.windows(2).all(|w| w[1].score_mean >= w[0].score_mean),
        "{rows:?}"
    );
    assert!(rows[3].score_mean > rows[0].score_mean);

    // Drawing fewer candidates gives the same first candidates (nested), and runs repeat exactly.
    let (rows2, cands2) =
        best_of_n(&gpt, &tok, &prompts, &[2], &CountC, None, &sampling(5)).unwrap();
    assert_eq!(rows2[0].score_mean, rows[1].score_mean);
    assert_eq!(rows2[0].ground_truth_mean, None);
    for (a, b) in cands.iter().zip(&cands2) {
        assert_eq!(
            &a.candidates[..2]
                .iter()
                .map(|c| &c.response_ids)
                .collect::<Vec<_>>(),
            &b.candidates
                .iter()
                .map(|c| &c.response_ids)
                .collect::<Vec<_>>()
        );
    }
    let again = best_of_n(
        &gpt,
        &tok,
        &prompts,
        &ns,
        &CountC,
        Some(&CountC),
        &sampling(5),
    )
    .unwrap();
    assert_eq!(again.0, rows);
    assert_eq!(again.1, cands);

    // Bad input.
    let bad = |ns: &[usize], s: &SamplingSection, p: &[Vec<i64>]| {
        best_of_n(&gpt, &tok, p, ns, &CountC, None, s).unwrap_err()
    };
    assert_eq!(bad(&[], &sampling(0), &prompts).argument(), Some("n"));
    assert_eq!(bad(&[0], &sampling(0), &prompts).argument(), Some("n"));
    assert_eq!(
        bad(&[MAX_N + 1], &sampling(0), &prompts).argument(),
        Some("n")
    );
    assert_eq!(bad(&[2], &sampling(0), &[]).argument(), Some("prompts"));
    let zero = SamplingSection {
        max_new_tokens: 0,
        ..sampling(0)
    };
    assert_eq!(
        bad(&[2], &zero, &prompts).argument(),
        Some("sampling.max_new_tokens")
    );
    assert_eq!(summarize(&cands, 9).unwrap_err().argument(), Some("n"));
}

// ------------------------------------------------------------------------------------------------
// CLI on a tiny SFT run
// ------------------------------------------------------------------------------------------------

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn config(sft: &Path, clf: &Path) -> String {
    std::fs::read_to_string(root().join("configs/best-of-n-tiny.toml"))
        .unwrap()
        .replace(
            "\"reports/sft-tiny\"",
            &format!("{:?}", sft.display().to_string()),
        )
        .replace(
            "\"reports/reward/model\"",
            &format!("{:?}", clf.display().to_string()),
        )
}

#[test]
fn cli_best_of_n_on_a_tiny_sft_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (sft, reward, out) = (
        tmp.path().join("sft"),
        tmp.path().join("reward"),
        tmp.path().join("bon"),
    );
    run_ok(
        bin()
            .args(["sft", "--quiet", "--max-steps", "20", "--config"])
            .arg(root().join("configs/sft-tiny.toml"))
            .arg("--out")
            .arg(&sft),
    );
    run_ok(bin().args(["reward", "train", "--out"]).arg(&reward));
    let clf = reward.join("model");
    let cfg_path = tmp.path().join("bon.toml");
    std::fs::write(&cfg_path, config(&sft, &clf)).unwrap();
    let stdout = run_ok(
        bin()
            .args(["best-of-n", "--n", "1,4", "--config"])
            .arg(&cfg_path)
            .arg("--out")
            .arg(&out),
    );
    assert!(stdout.contains("N =    4"), "{stdout}");
    for f in [
        "best_of_n.json",
        "best_of_n.csv",
        "samples.jsonl",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let summary: BestOfNSummary = rlhf_lab::io::read_json(out.join("best_of_n.json")).unwrap();
    assert_eq!(summary.n_prompts, 32);
    assert_eq!(summary.rows.len(), 2);
    assert!(summary.rows[1].score_mean >= summary.rows[0].score_mean);
    assert_eq!(summary.rows[1].kl_analytic, analytic_kl(4).unwrap());
    // The scorer is the ground truth here.
    assert_eq!(
        summary.rows[1].ground_truth_mean,
        Some(summary.rows[1].score_mean)
    );
    let csv = std::fs::read_to_string(out.join("best_of_n.csv")).unwrap();
    assert!(
        csv.starts_with("n,kl_analytic,score_mean,score_std,score_sigmoid_mean,ground_truth_mean")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("samples.jsonl"))
            .unwrap()
            .lines()
            .count(),
        32
    );

    // Bad configs exit 2 naming the field.
    let expect_2 = |text: String, needle: &str| {
        std::fs::write(&cfg_path, text).unwrap();
        let o = bin()
            .args(["best-of-n", "--config"])
            .arg(&cfg_path)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{needle} not in {err}");
    };
    expect_2(config(&tmp.path().join("missing"), &clf), "sft_run");
    expect_2(config(&sft, &tmp.path().join("missing")), "scorer.path");
    expect_2(
        config(&sft, &clf).replace("n = [1, 2, 4, 8, 16]", "n = [0]"),
        "`n`",
    );
    expect_2(
        config(&sft, &clf).replace("max_tokens = 8", "max_tokens = 60"),
        "prompts.prefix.max_tokens",
    );
    expect_2(
        config(&sft, &clf).replace("seed = 0", "seed = 0\ntemperature = 2"),
        "temperature",
    );
    expect_2(
        config(&sft, &clf).replace("split = \"test\"", "split = \"train\""),
        "prompts.split",
    );
}
