//! Claims of notebook 03 (Bradley–Terry reward model), pinned. See `src/toy/bradley_terry.rs`.

use rlhf_lab::toy::bradley_terry::*;
use std::sync::{Mutex, MutexGuard, OnceLock};

fn cfg() -> BtConfig {
    BtConfig::default()
}

/// libtorch's RNG is process-global: studies running concurrently on the harness's threads would
/// interleave their draws. Every test holds this lock, so each study sees only its own seed.
fn serial() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// The default sweep, computed once and shared by the tests that read it.
fn sweep() -> &'static Vec<SweepRow> {
    static S: OnceLock<Vec<SweepRow>> = OnceLock::new();
    S.get_or_init(|| {
        let rows = pairs_sweep(&cfg()).unwrap();
        for r in &rows {
            eprintln!(
                "sweep N={:5} acc={:.4} bayes_acc={:.4} exp_acc={:.4} bayes_exp={:.4} pearson={:.4} spearman={:.4} slope={:.3} w_err={:.4} w_rmse={:.4} crlb={:.4} xent={:.4} H={:.4}",
                r.n_pairs, r.mean.accuracy, r.mean.bayes_accuracy, r.mean.expected_accuracy,
                r.mean.bayes_expected_accuracy, r.mean.pearson, r.mean.spearman, r.mean.slope,
                r.mean.w_error, r.w_rmse, r.crlb_rmse, r.mean.expected_nll, r.mean.entropy
            );
        }
        rows
    })
}

fn kwise_rows() -> &'static Vec<KwiseRow> {
    static S: OnceLock<Vec<KwiseRow>> = OnceLock::new();
    S.get_or_init(|| {
        let rows = kwise_vs_pairs(&cfg()).unwrap();
        for r in &rows {
            eprintln!(
                "kwise N={:4} {:18} comps={:5} passes={:5} acc={:.4} exp_acc={:.4} pearson={:.4} spearman={:.4} w_err={:.4} w_rmse={:.4} pred={:.4}",
                r.n_prompts, r.design, r.comparisons, r.forward_passes, r.mean.accuracy, r.mean.expected_accuracy,
                r.mean.pearson, r.mean.spearman, r.mean.w_error, r.w_rmse, r.predicted_rmse
            );
        }
        rows
    })
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn bt_curve_is_sigmoid_softmax_and_loss_is_its_neg_log() {
    let _serial = serial();
    let pts = bt_curve(6.0, 121).unwrap();
    assert_eq!(pts.len(), 121);
    for (n, p) in pts.iter().enumerate() {
        let want = -6.0 + 12.0 * n as f64 / 120.0;
        assert!((p.delta_u - want).abs() < 1e-12);
        // Independent closed forms.
        assert!((p.p_sigmoid - sigmoid(want)).abs() < 1e-15);
        assert!((p.p_softmax - want.exp() / (want.exp() + 1.0)).abs() < 1e-15);
        assert!((p.p_sigmoid - p.p_softmax).abs() < 1e-15);
        assert!(
            (p.loss + p.p_sigmoid.ln()).abs() < 1e-12,
            "loss = −ln P(i ≻ j)"
        );
        // Symmetry P(i ≻ j) + P(j ≻ i) = 1.
        let mirror = &pts[120 - n];
        assert!((p.p_sigmoid + mirror.p_sigmoid - 1.0).abs() < 1e-15);
    }
    assert!((pts[60].p_sigmoid - 0.5).abs() < 1e-15);
    assert!((pts[60].loss - std::f64::consts::LN_2).abs() < 1e-15);
}

#[test]
fn recovery_with_many_pairs_matches_truth() {
    let _serial = serial();
    let rec = recovery(&cfg(), 3200).unwrap();
    let m = &rec.metrics;
    eprintln!(
        "recovery N=3200: {m:?} steps={} grad={:e} grad_b={:e}",
        rec.newton_steps, rec.grad_norm, rec.grad_b
    );
    eprintln!("w*   = {:?}\nŵ    = {:?}", rec.w_true, rec.w_hat);
    assert!(m.pearson > 0.98, "pearson {}", m.pearson);
    assert!(m.spearman > 0.98, "spearman {}", m.spearman);
    assert!(
        (m.slope - 1.0).abs() < 0.1,
        "scale is identified: slope {}",
        m.slope
    );
    // Held-out accuracy within a point of the Bayes accuracy on the same noisy labels.
    assert!(
        (m.accuracy - m.bayes_accuracy).abs() < 0.01,
        "{} vs {}",
        m.accuracy,
        m.bayes_accuracy
    );
    // The true utilities are the Bayes classifier: exact inequality on expected accuracy, tiny gap.
    assert!(m.expected_accuracy <= m.bayes_expected_accuracy + 1e-15);
    assert!(m.bayes_expected_accuracy - m.expected_accuracy < 0.005);
    // Gibbs: cross-entropy ≥ entropy, and the learned rewards are close.
    assert!(m.expected_nll >= m.entropy - 1e-15);
    assert!(m.expected_nll - m.entropy < 0.01);
    assert!((m.nll - m.bayes_nll).abs() < 0.02);
    assert!(m.w_error < 0.25, "‖ŵ − w*‖ = {}", m.w_error);
    // Converged MLE; the bias is untouched because its gradient is identically zero.
    assert!(rec.grad_norm < 1e-9, "grad {}", rec.grad_norm);
    assert!(rec.grad_b.abs() < 1e-15, "∂L/∂b = {}", rec.grad_b);
    assert_eq!(rec.b_hat, cfg().bias_init);
    // Raw rewards are offset by b; centered ones sit on y = x.
    let n = rec.u_test.len() as f64;
    let mean_r: f64 = rec.r_test.iter().sum::<f64>() / n;
    let mean_u: f64 = rec.u_test.iter().sum::<f64>() / n;
    assert!((mean_r - mean_u - cfg().bias_init).abs() < 0.3);
    let rms: f64 = (rec
        .u_test_centered
        .iter()
        .zip(&rec.r_test_centered)
        .map(|(u, r)| (u - r) * (u - r))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!(rms < 0.25, "centered rms distance to y = x: {rms}");
    // Ground truth: w* has the configured norm.
    let norm: f64 = rec.w_true.iter().map(|w| w * w).sum::<f64>().sqrt();
    assert!((norm - cfg().utility_scale).abs() < 1e-12);
}

#[test]
fn bias_never_matters_for_the_fit() {
    let _serial = serial();
    let mut a = cfg();
    a.bias_init = -7.5;
    let ra = recovery(&a, 400).unwrap();
    let rb = recovery(&cfg(), 400).unwrap();
    for (x, y) in ra.w_hat.iter().zip(&rb.w_hat) {
        assert!((x - y).abs() < 1e-9, "ŵ independent of b");
    }
    assert!((ra.metrics.accuracy - rb.metrics.accuracy).abs() == 0.0);
    assert!((ra.metrics.pearson - rb.metrics.pearson).abs() < 1e-12);
}

#[test]
fn shift_invariance_of_the_loss_and_centering_breaks_it() {
    let _serial = serial();
    let biases = [-10.0, -1.0, 0.0, 0.5, 3.0, 25.0];
    let rows = shift_invariance(&cfg(), 400, &biases, 0.01).unwrap();
    let l0 = rows[2].loss;
    for r in &rows {
        assert!(
            (r.loss - l0).abs() < 1e-12,
            "loss shift-invariant: {} vs {l0}",
            r.loss
        );
        assert!(r.grad_bias.abs() < 1e-15, "∂L/∂b = {}", r.grad_bias);
        assert!(r.loss_centered >= r.loss - 1e-15);
    }
    // The centering term depends on b: far shifts cost more, gradient sign follows the shift.
    assert!(rows[0].loss_centered > rows[2].loss_centered + 0.5);
    assert!(rows[5].loss_centered > rows[2].loss_centered + 5.0);
    assert!(rows[0].grad_bias_centered < 0.0 && rows[5].grad_bias_centered > 0.0);
}

#[test]
fn more_pairs_better_recovery_at_the_cramer_rao_rate() {
    let _serial = serial();
    let rows = sweep();
    let n = rows.len();
    // Monotone trend between sweep points two apart (4× more pairs).
    for a in 0..n - 2 {
        let (x, y) = (&rows[a], &rows[a + 2]);
        assert!(
            y.mean.w_error < x.mean.w_error,
            "w error N={} → {}",
            x.n_pairs,
            y.n_pairs
        );
        assert!(
            y.mean.expected_accuracy > x.mean.expected_accuracy,
            "acc N={} → {}",
            x.n_pairs,
            y.n_pairs
        );
        assert!(
            y.mean.pearson > x.mean.pearson,
            "pearson N={} → {}",
            x.n_pairs,
            y.n_pairs
        );
        assert!(y.mean.expected_nll < x.mean.expected_nll);
    }
    let (first, last) = (&rows[0], &rows[n - 1]);
    assert!(first.mean.w_error > 4.0 * last.mean.w_error);
    assert!(last.mean.pearson > 0.98 && last.mean.spearman > 0.98);
    assert!(last.mean.bayes_expected_accuracy - last.mean.expected_accuracy < 0.005);
    assert!(first.mean.bayes_expected_accuracy - first.mean.expected_accuracy > 0.02);
    // The Bayes ceiling is a property of the held-out pairs, the same in every row.
    for r in rows {
        assert_eq!(
            r.mean.bayes_expected_accuracy,
            first.mean.bayes_expected_accuracy
        );
        assert!(r.mean.expected_accuracy <= r.mean.bayes_expected_accuracy);
    }
    // N^{-1/2}: the error halves from 800 to 3200 pairs, and matches the Cramér–Rao prediction.
    let at = |n: i64| rows.iter().find(|r| r.n_pairs == n).unwrap();
    let ratio = at(800).w_rmse / at(3200).w_rmse;
    assert!(
        (1.6..2.5).contains(&ratio),
        "rmse(800)/rmse(3200) = {ratio}"
    );
    for n in [800, 1600, 3200] {
        let q = at(n).w_rmse / at(n).crlb_rmse;
        assert!((0.8..1.25).contains(&q), "N={n}: rmse/crlb = {q}");
    }
    // With 25 pairs in d = 8 the data are nearly separable: far from the asymptotic regime, and the
    // reward scale is overconfident (slope of r̂ on u well above 1) although the ranking is partly right.
    assert!(at(25).w_rmse > 2.0 * at(25).crlb_rmse);
    assert!(at(25).mean.slope > 1.5, "slope {}", at(25).mean.slope);
    assert!(at(25).mean.spearman > 0.5);
}

#[test]
fn kwise_equals_mean_of_six_pairwise_losses() {
    let _serial = serial();
    let chk = kwise_check(64, 4, 7).unwrap();
    eprintln!("kwise check: {chk:?}");
    assert_eq!(chk.pairs_per_prompt, 6);
    assert_eq!(chk.first_prompt.len(), 6);
    assert!(
        chk.abs_diff < 1e-12,
        "|kwise − mean pairwise| = {}",
        chk.abs_diff
    );
    assert!(chk.grad_max_abs_diff < 1e-12);
    // Independent recomputation of prompt 0's six pairs from its rewards.
    let mut r = [f64::NAN; 4];
    for p in &chk.first_prompt {
        r[p.better as usize] = p.r_better;
        r[p.worse as usize] = p.r_worse;
    }
    let mut expected = Vec::new();
    for i in 0..4 {
        for j in (i + 1)..4 {
            expected.push((i, j, -sigmoid(r[i] - r[j]).ln()));
        }
    }
    for (p, (i, j, l)) in chk.first_prompt.iter().zip(expected) {
        assert_eq!((p.better, p.worse), (i as i64, j as i64));
        assert!((p.loss - l).abs() < 1e-12);
    }
    // K = 9 → 36 pairs (document 001 §3.1.2), still equal.
    let chk9 = kwise_check(16, 9, 1).unwrap();
    assert_eq!(chk9.pairs_per_prompt, 36);
    assert!(chk9.abs_diff < 1e-12 && chk9.grad_max_abs_diff < 1e-12);
}

#[test]
fn ranking_cost_table() {
    let _serial = serial();
    let rows = ranking_costs(&[2, 4, 9]).unwrap();
    let got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.comparisons,
                r.forward_passes_ranking,
                r.forward_passes_pairs,
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 2, 2), (6, 4, 12), (36, 9, 72)]);
    assert_eq!(rows[1].comparisons_per_pass, 1.5);
    assert!(ranking_costs(&[4, 1]).is_err());
}

#[test]
fn rankings_beat_single_pairs_and_approach_independent_pairs() {
    let _serial = serial();
    let rows = kwise_rows();
    let k = cfg().k;
    for n in cfg().n_prompts {
        let get = |d: &str| {
            rows.iter()
                .find(|r| r.n_prompts == n && r.design == d)
                .unwrap()
        };
        let (rk, ind, one) = (
            get("rankings"),
            get("independent_pairs"),
            get("single_pairs"),
        );
        assert_eq!(rk.comparisons, 6 * n);
        assert_eq!(rk.forward_passes, k * n);
        assert_eq!(ind.forward_passes, 12 * n);
        assert_eq!(one.comparisons, n);
        // Six correlated comparisons per prompt are worth much more than one …
        assert!(
            rk.w_rmse < 0.75 * one.w_rmse,
            "N={n}: {} vs {}",
            rk.w_rmse,
            one.w_rmse
        );
        assert!(rk.mean.expected_accuracy > one.mean.expected_accuracy);
        // … and no more than six independent ones (allowing replicate noise).
        assert!(
            rk.w_rmse > 0.9 * ind.w_rmse,
            "N={n}: {} vs {}",
            rk.w_rmse,
            ind.w_rmse
        );
        // Asymptotic predictions (sandwich for rankings, Cramér–Rao for pairs) hold from N = 100 on.
        if n >= 100 {
            for r in [rk, ind] {
                let q = r.w_rmse / r.predicted_rmse;
                assert!(
                    (0.75..1.35).contains(&q),
                    "N={n} {}: rmse/pred = {q}",
                    r.design
                );
            }
        }
        // Predictions: rankings sit between the two pair designs.
        assert!(ind.predicted_rmse < rk.predicted_rmse && rk.predicted_rmse < one.predicted_rmse);
    }
    // At the largest N the ranking design recovers utilities almost perfectly.
    let last = rows.iter().rev().find(|r| r.design == "rankings").unwrap();
    assert!(last.mean.pearson > 0.98);
}

#[test]
fn a_ranking_of_four_is_worth_about_four_independent_pairs() {
    let _serial = serial();
    let e4 = ranking_efficiency(&cfg()).unwrap();
    eprintln!("{e4:?}");
    assert_eq!(e4.comparisons_per_ranking, 6);
    assert!(
        (3.5..5.0).contains(&e4.effective_pairs_per_ranking),
        "K=4: {} effective pairs",
        e4.effective_pairs_per_ranking
    );
    // K = 2: a "ranking" is one BT pair, J = I exactly; only Monte-Carlo error remains.
    let e2 = ranking_efficiency(&BtConfig { k: 2, ..cfg() }).unwrap();
    assert!(
        (e2.effective_pairs_per_ranking - 1.0).abs() < 0.06,
        "K=2: {}",
        e2.effective_pairs_per_ranking
    );
    // K = 9 (36 comparisons): more per ranking, ever further below C(K, 2).
    let e9 = ranking_efficiency(&BtConfig { k: 9, ..cfg() }).unwrap();
    eprintln!(
        "K=2: {:.4}, K=9: {:.3}",
        e2.effective_pairs_per_ranking, e9.effective_pairs_per_ranking
    );
    assert!(e9.effective_pairs_per_ranking > 2.5 * e4.effective_pairs_per_ranking);
    assert!(e9.effective_pairs_per_ranking < 0.6 * 36.0);
    // The pair constant is the one the sweep uses.
    let s = &sweep()[0];
    assert!((s.crlb_rmse * (s.n_pairs as f64).sqrt() - e4.pair_rmse_constant).abs() < 1e-9);
}

#[test]
fn deterministic_given_seed() {
    let _serial = serial();
    let a = recovery(&cfg(), 200).unwrap();
    let b = recovery(&cfg(), 200).unwrap();
    assert_eq!(a.w_hat, b.w_hat);
    assert_eq!(a.u_test, b.u_test);
    assert_eq!(a.metrics.accuracy, b.metrics.accuracy);
    let mut other = cfg();
    other.seed = 1;
    let c = recovery(&other, 200).unwrap();
    assert_ne!(a.w_true, c.w_true);
    let k1 = kwise_check(8, 4, 3).unwrap();
    let k2 = kwise_check(8, 4, 3).unwrap();
    assert_eq!(k1.kwise, k2.kwise);
}

#[test]
fn bad_config_is_a_typed_error() {
    let _serial = serial();
    let expect = |c: BtConfig, arg: &str| {
        let e = recovery(&c, 100).unwrap_err();
        assert_eq!(e.argument(), Some(arg), "{e}");
    };
    expect(BtConfig { dim: 0, ..cfg() }, "dim");
    expect(
        BtConfig {
            n_train_items: 1,
            ..cfg()
        },
        "n_train_items",
    );
    expect(
        BtConfig {
            utility_scale: -1.0,
            ..cfg()
        },
        "utility_scale",
    );
    expect(
        BtConfig {
            utility_scale: f64::NAN,
            ..cfg()
        },
        "utility_scale",
    );
    expect(BtConfig { l2: -0.1, ..cfg() }, "l2");
    expect(
        BtConfig {
            n_pairs: vec![],
            ..cfg()
        },
        "n_pairs",
    );
    expect(
        BtConfig {
            n_pairs: vec![10, 0],
            ..cfg()
        },
        "n_pairs",
    );
    expect(
        BtConfig {
            replicates: 0,
            ..cfg()
        },
        "replicates",
    );
    expect(BtConfig { k: 1, ..cfg() }, "k");
    expect(BtConfig { k: 300, ..cfg() }, "k");
    expect(
        BtConfig {
            n_prompts: vec![],
            ..cfg()
        },
        "n_prompts",
    );
    assert_eq!(recovery(&cfg(), 0).unwrap_err().argument(), Some("n_pairs"));
    assert_eq!(bt_curve(0.0, 10).unwrap_err().argument(), Some("delta_max"));
    assert_eq!(bt_curve(3.0, 1).unwrap_err().argument(), Some("points"));
    assert_eq!(kwise_check(4, 1, 0).unwrap_err().argument(), Some("k"));
    assert_eq!(
        shift_invariance(&cfg(), 100, &[], 0.01)
            .unwrap_err()
            .argument(),
        Some("biases")
    );
    assert!(pairs_sweep(&BtConfig { dim: -3, ..cfg() }).is_err());
    assert!(kwise_vs_pairs(&BtConfig { k: 0, ..cfg() }).is_err());
}
