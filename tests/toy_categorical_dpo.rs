//! Claims of `notebooks/04-dpo-from-rlhf.ipynb`, pinned against independent plain-f64 computations.
//!
//! The studies seed libtorch's global generator; tests that run them hold `LOCK` so that parallel test
//! threads cannot interleave their draws.

use rlhf_lab::dpo::PairLogps;
use rlhf_lab::toy::categorical_dpo::*;
use rlhf_lab::RlhfError;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::Tensor;

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the studies and pins libtorch to one intra-op thread: on tensors of a few dozen entries
/// the OpenMP pool only adds synchronisation (≈10× slower on a busy two-core machine).
fn lock() -> MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_single_thread();
    g
}

fn cfg() -> CategoricalDpoConfig {
    CategoricalDpoConfig::default()
}

// ---------------------------------------------------------------- independent plain-f64 reference

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn pi_ref(c: &CategoricalDpoConfig) -> Vec<f64> {
    softmax(&c.ref_logits)
}

/// π*(y) ∝ π_ref(y)·exp(r(y)/β).
fn pi_star(c: &CategoricalDpoConfig, beta: f64) -> Vec<f64> {
    let z: Vec<f64> = c
        .ref_logits
        .iter()
        .zip(&c.rewards)
        .map(|(l, r)| l + r / beta)
        .collect();
    softmax(&z)
}

fn log_z(c: &CategoricalDpoConfig, beta: f64) -> f64 {
    let q = pi_ref(c);
    q.iter()
        .zip(&c.rewards)
        .map(|(q, r)| q * (r / beta).exp())
        .sum::<f64>()
        .ln()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q).ln())
        .sum()
}

fn tv(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

fn expect(p: &[f64], r: &[f64]) -> f64 {
    p.iter().zip(r).map(|(a, b)| a * b).sum()
}

fn objective(c: &CategoricalDpoConfig, p: &[f64], beta: f64) -> f64 {
    expect(p, &c.rewards) - beta * kl(p, &pi_ref(c))
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn argmax(xs: &[f64]) -> usize {
    (0..xs.len())
        .max_by(|&i, &j| xs[i].total_cmp(&xs[j]))
        .unwrap()
}

/// P(chosen = w, rejected = l) = 2·π_ref(w)π_ref(l)σ(r_w − r_l)/(1 − Σπ_ref²): the ordered draw (w, l)
/// with the first winning, or (l, w) with the second winning, given y_1 ≠ y_2.
fn population_weight(c: &CategoricalDpoConfig, w: usize, l: usize) -> f64 {
    let q = pi_ref(c);
    let norm = 1.0 - q.iter().map(|x| x * x).sum::<f64>();
    2.0 * q[w] * q[l] * sigmoid(c.rewards[w] - c.rewards[l]) / norm
}

/// The entropy of the BT labels: E over the population of −log σ(r_w − r_l).
fn label_entropy(c: &CategoricalDpoConfig) -> f64 {
    let v = c.rewards.len();
    let mut s = 0.0;
    for w in 0..v {
        for l in 0..v {
            if w != l {
                s += population_weight(c, w, l) * -sigmoid(c.rewards[w] - c.rewards[l]).ln();
            }
        }
    }
    s
}

// ---------------------------------------------------------------- cached default runs

fn closed() -> &'static ClosedFormStudy {
    static S: OnceLock<ClosedFormStudy> = OnceLock::new();
    S.get_or_init(|| {
        let _g = lock();
        closed_form_study(&cfg()).unwrap()
    })
}

fn population() -> &'static PopulationDpoStudy {
    static S: OnceLock<PopulationDpoStudy> = OnceLock::new();
    S.get_or_init(|| {
        let _g = lock();
        population_dpo_study(&cfg()).unwrap()
    })
}

fn finite() -> &'static FiniteSampleStudy {
    static S: OnceLock<FiniteSampleStudy> = OnceLock::new();
    S.get_or_init(|| {
        let _g = lock();
        finite_sample_study(&cfg()).unwrap()
    })
}

fn weights() -> &'static GradientWeightStudy {
    static S: OnceLock<GradientWeightStudy> = OnceLock::new();
    S.get_or_init(|| {
        let _g = lock();
        gradient_weight_study(&cfg()).unwrap()
    })
}

fn comparison() -> &'static ObjectiveComparison {
    static S: OnceLock<ObjectiveComparison> = OnceLock::new();
    S.get_or_init(|| {
        let _g = lock();
        objective_comparison(&cfg()).unwrap()
    })
}

fn trace(obj: Objective) -> &'static ObjectiveTrace {
    comparison()
        .traces
        .iter()
        .find(|t| t.objective == obj)
        .unwrap()
}

// ---------------------------------------------------------------- 1. closed form

#[test]
fn closed_form_is_the_maximiser_of_the_kl_constrained_objective() {
    let c = cfg();
    let s = closed();
    assert!(max_abs(&s.ref_policy, &pi_ref(&c)) < 1e-14);
    assert_eq!(s.rows.len(), c.betas.len());
    for row in &s.rows {
        let b = row.beta;
        let star = pi_star(&c, b);
        // π* = π_ref·exp(r/β)/Z and J(π*) = β·log Z.
        assert!(max_abs(&row.optimal_policy, &star) < 1e-13, "β={b}");
        assert!((row.log_partition - log_z(&c, b)).abs() < 1e-12, "β={b}");
        assert!(
            (row.optimal_objective - b * log_z(&c, b)).abs() < 1e-12,
            "β={b}"
        );
        assert!(
            (objective(&c, &star, b) - b * log_z(&c, b)).abs() < 1e-12,
            "β={b}"
        );
        assert!((row.kl_to_ref - kl(&star, &pi_ref(&c))).abs() < 1e-12);
        assert!((row.expected_reward - expect(&star, &c.rewards)).abs() < 1e-12);
        // Implied reward r = β log π*/π_ref + β log Z.
        assert!(row.implied_reward_max_error < 1e-12, "β={b}");
        // Damped-Newton ascent on J finds the same policy and value.
        assert!(row.numerical_converged, "β={b}");
        assert!(row.numerical_tv <= 1e-10, "β={b}: TV {}", row.numerical_tv);
        assert!(tv(&row.numerical_policy, &star) <= 1e-10);
        assert!(
            (row.numerical_objective - b * log_z(&c, b)).abs() <= 1e-9,
            "β={b}"
        );
        // Every perturbation lowers J, by exactly β·KL(π‖π*).
        assert_eq!(
            row.perturbations.len(),
            c.perturbation_scales.len() * c.perturbations_per_scale
        );
        for pt in &row.perturbations {
            let j = objective(&c, &pt.policy, b);
            let drop = b * log_z(&c, b) - j;
            assert!(drop > 0.0, "β={b}: perturbation raised J");
            assert!((pt.drop - drop).abs() < 1e-10);
            assert!((drop - b * kl(&pt.policy, &star)).abs() < 1e-10 * (1.0 + drop));
        }
    }
    // Smaller β trades KL for reward: E[r] and KL decrease in β.
    for w in s.rows.windows(2) {
        assert!(w[0].beta < w[1].beta);
        assert!(w[0].expected_reward > w[1].expected_reward);
        assert!(w[0].kl_to_ref > w[1].kl_to_ref);
    }
}

// ---------------------------------------------------------------- 2. population DPO

#[test]
fn population_dpo_recovers_the_optimal_policy_for_every_beta() {
    let c = cfg();
    let s = population();
    let v = c.rewards.len();
    assert_eq!(s.pairs.chosen.len(), v * (v - 1));
    let total: f64 = s.pairs.weights.iter().sum();
    assert!((total - 1.0).abs() < 1e-14);
    for k in 0..s.pairs.chosen.len() {
        let (w, l) = (s.pairs.chosen[k] as usize, s.pairs.rejected[k] as usize);
        assert_ne!(w, l);
        let want = population_weight(&c, w, l);
        assert!((s.pairs.weights[k] - want).abs() < 1e-13 * want);
    }
    let h = label_entropy(&c);
    assert_eq!(s.rows.len(), c.betas.len());
    for row in &s.rows {
        let star = pi_star(&c, row.beta);
        assert!(row.converged, "β={}", row.beta);
        assert!(
            row.tv_to_optimal <= 1e-10,
            "β={}: {}",
            row.beta,
            row.tv_to_optimal
        );
        assert!(tv(&row.learned_policy, &star) <= 1e-10);
        assert!(row.kl_optimal_to_learned.abs() <= 1e-10);
        // Initial loss log 2 (h = 0), floor = BT loss of the true reward = label entropy.
        assert!((row.initial_loss - std::f64::consts::LN_2).abs() < 1e-14);
        assert!((row.true_reward_bt_loss - h).abs() < 1e-13);
        assert!((row.final_loss - h).abs() < 1e-12);
        // r̂ = β log π_θ/π_ref equals r up to the constant −β log Z.
        assert!(
            row.implicit_reward_spread < 1e-10,
            "{}",
            row.implicit_reward_spread
        );
        let shift = -row.beta * log_z(&c, row.beta);
        for (rh, r) in row.implicit_reward.iter().zip(&c.rewards) {
            assert!((rh - r - shift).abs() < 1e-10);
        }
    }
}

#[test]
fn weighted_loss_helper_equals_the_library_mean_and_its_aggregation() {
    let c = cfg();
    let _g = lock();
    let raw = sample_dataset(&c, 500).unwrap();
    assert_eq!(raw.chosen.len(), 500);
    let theta = [0.3, -0.2, 0.5, 1.0, -1.0, 0.7, 0.1, 0.4];
    let beta = 0.7;
    let got = weighted_dpo_loss_at(&c, &raw, &theta, beta).unwrap();
    // Independent: mean over the raw pairs of −log σ(β·h).
    let q = pi_ref(&c);
    let p = softmax(&theta);
    let mut want = 0.0;
    for (&w, &l) in raw.chosen.iter().zip(&raw.rejected) {
        let (w, l) = (w as usize, l as usize);
        let hh = (p[w].ln() - p[l].ln()) - (q[w].ln() - q[l].ln());
        want += -sigmoid(beta * hh).ln() / 500.0;
    }
    assert!((got - want).abs() < 1e-13, "{got} vs {want}");
    // The library's own mean over the raw rows.
    let lp: Vec<f64> = p.iter().map(|x| x.ln()).collect();
    let lq: Vec<f64> = q.iter().map(|x| x.ln()).collect();
    let pick = |v: &[f64], idx: &[i64]| -> Tensor {
        Tensor::from_slice(&idx.iter().map(|&i| v[i as usize]).collect::<Vec<_>>())
    };
    let (pc, pl) = (pick(&lp, &raw.chosen), pick(&lp, &raw.rejected));
    let (rc, rl) = (pick(&lq, &raw.chosen), pick(&lq, &raw.rejected));
    let out = rlhf_lab::dpo::dpo_loss(
        &PairLogps {
            policy_chosen: &pc,
            policy_rejected: &pl,
            ref_chosen: &rc,
            ref_rejected: &rl,
            chosen_lengths: None,
            rejected_lengths: None,
        },
        &rlhf_lab::dpo::DpoConfig::new(beta, rlhf_lab::dpo::DpoVariant::Sigmoid),
    )
    .unwrap();
    assert!((out.loss.double_value(&[]) - got).abs() < 1e-13);
    // Aggregated into ordered-pair frequencies: the same number.
    let v = c.rewards.len();
    let mut agg = PairSet {
        chosen: vec![],
        rejected: vec![],
        weights: vec![],
    };
    for w in 0..v {
        for l in 0..v {
            let n = raw
                .chosen
                .iter()
                .zip(&raw.rejected)
                .filter(|(&a, &b)| a as usize == w && b as usize == l)
                .count();
            if n > 0 {
                agg.chosen.push(w as i64);
                agg.rejected.push(l as i64);
                agg.weights.push(n as f64 / 500.0);
            }
        }
    }
    let got_agg = weighted_dpo_loss_at(&c, &agg, &theta, beta).unwrap();
    assert!((got_agg - got).abs() < 1e-13);
}

// ---------------------------------------------------------------- 3. finite samples

#[test]
fn finite_sample_error_shrinks_with_the_number_of_pairs() {
    let c = cfg();
    let s = finite();
    assert_eq!(s.rows.len(), c.sample_sizes.len());
    let first = &s.rows[0];
    let last = s.rows.last().unwrap();
    assert_eq!(first.n_pairs, 250);
    assert_eq!(last.n_pairs, 64000);
    for r in &s.rows {
        assert_eq!(r.tvs.len(), c.replicates);
        assert!(r.tvs.iter().all(|t| t.is_finite() && *t >= 0.0));
    }
    // 256× more pairs: √256 = 16× smaller error in theory; demand at least 4×.
    assert!(last.mean_tv * 4.0 < s.rows[1].mean_tv, "{:?}", s.rows);
    assert!(last.median_tv * 8.0 < first.median_tv, "{:?}", s.rows);
    assert!(last.mean_tv < 0.02, "{}", last.mean_tv);
    // From N = 4000 on every dataset has a minimiser; the √N rate shows in the slope.
    for r in &s.rows[2..] {
        assert_eq!(r.exists_fraction, 1.0, "N={}", r.n_pairs);
    }
    assert!(
        (-0.8..=-0.3).contains(&s.log_log_slope),
        "slope {}",
        s.log_log_slope
    );
    // At N = 250 some datasets have no minimiser (a response never loses or never wins), and those
    // fits are far from π*.
    assert!(first.exists_fraction < 1.0, "{:?}", first);
    let worst_missing = first
        .tvs
        .iter()
        .zip(&first.mle_exists)
        .filter(|(_, &e)| !e)
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    assert!(worst_missing > first.mean_tv_when_exists, "{:?}", first);
    // There, the best response never lost a comparison and the minimiser piles (almost) all mass on it.
    let best = argmax(&c.rewards);
    for k in 0..c.replicates {
        if !first.mle_exists[k] && first.fit_max_prob[k] > 0.99 {
            assert_eq!(first.fit_argmax[k], best);
            let star = pi_star(&c, s.beta);
            assert!((first.tvs[k] - (1.0 - star[best])).abs() < 0.01);
        }
    }
    assert!(first.fit_max_prob.iter().any(|&p| p > 0.99));
}

// ---------------------------------------------------------------- 4. gradient weight

#[test]
fn gradient_weight_is_large_for_misordered_pairs_and_tends_to_bt_noise() {
    let c = cfg();
    let s = weights();
    let beta = c.trace_beta;
    assert_eq!(s.snapshots.len(), c.weight_snapshot_steps.len());
    for snap in &s.snapshots {
        // DPO's gradient is the σ-weighted naive gradient.
        assert!(
            snap.gradient_identity_error < 1e-12,
            "step {}: {}",
            snap.step,
            snap.gradient_identity_error
        );
        // weight = σ(r̂_l − r̂_w) with r̂ = β log π/π_ref, computed here independently.
        let q = pi_ref(&c);
        for pw in &snap.pairs {
            let rw = beta * (snap.policy[pw.chosen] / q[pw.chosen]).ln();
            let rl = beta * (snap.policy[pw.rejected] / q[pw.rejected]).ln();
            assert!((pw.implicit_margin - (rw - rl)).abs() < 1e-10);
            assert!((pw.weight - sigmoid(rl - rw)).abs() < 1e-12);
            // > ½ exactly when the implicit reward model orders the pair wrongly.
            if pw.implicit_margin < -1e-12 {
                assert!(pw.weight > 0.5);
            }
            if pw.implicit_margin > 1e-12 {
                assert!(pw.weight < 0.5);
            }
        }
        // Monotone: a larger implicit margin never gets a larger weight.
        let mut ps = snap.pairs.clone();
        ps.sort_by(|a, b| a.implicit_margin.total_cmp(&b.implicit_margin));
        for w in ps.windows(2) {
            assert!(w[1].weight <= w[0].weight + 1e-15);
        }
    }
    // Step 0: r̂ ≡ 0, every weight ½.
    let s0 = &s.snapshots[0];
    assert_eq!(s0.step, 0);
    assert!(s0.pairs.iter().all(|p| (p.weight - 0.5).abs() < 1e-15));
    // Step 10: some truly-better response is still ranked below a worse one, and that pair weighs most.
    let s10 = &s.snapshots[1];
    assert_eq!(s10.step, 10);
    let mis: Vec<&PairWeight> = s10
        .pairs
        .iter()
        .filter(|p| p.true_margin > 0.0 && p.implicit_margin < 0.0)
        .collect();
    assert!(!mis.is_empty(), "no misordered pair at step 10");
    let ok_max = s10
        .pairs
        .iter()
        .filter(|p| p.true_margin > 0.0 && p.implicit_margin > 0.0)
        .map(|p| p.weight)
        .fold(0.0, f64::max);
    assert!(mis.iter().all(|p| p.weight > ok_max));
    // Converged: each pair's weight is σ(r_l − r_w), the BT probability that its label is wrong.
    let sl = s.snapshots.last().unwrap();
    for pw in &sl.pairs {
        assert!((pw.weight - sigmoid(-pw.true_margin)).abs() < 1e-6);
    }
    // Mean-weight traces: ½ at the start, then the three limits.
    let mut all = 0.0;
    let (mut agree, mut wa, mut contra, mut wc) = (0.0, 0.0, 0.0, 0.0);
    for pw in &sl.pairs {
        let w = population_weight(&c, pw.chosen, pw.rejected);
        let s_ = sigmoid(-pw.true_margin);
        all += w * s_;
        if pw.true_margin > 0.0 {
            agree += w * s_;
            wa += w;
        } else {
            contra += w * s_;
            wc += w;
        }
    }
    let lim = [all, agree / wa, contra / wc];
    for k in 0..3 {
        assert!(
            (s.optimal_mean_weight[k] - lim[k]).abs() < 1e-12,
            "{:?} vs {lim:?}",
            s.optimal_mean_weight
        );
    }
    assert!((s.mean_weight[0] - 0.5).abs() < 1e-15);
    let n = s.steps.len();
    assert_eq!(s.steps[n - 1], c.trace_steps);
    assert!((s.mean_weight[n - 1] - lim[0]).abs() < 1e-6);
    assert!((s.mean_weight_agreeing[n - 1] - lim[1]).abs() < 1e-6);
    assert!((s.mean_weight_contradicting[n - 1] - lim[2]).abs() < 1e-6);
    assert!(lim[1] < 0.5 && lim[2] > 0.5);
    assert!(s.tv_to_optimal[n - 1] < 1e-6);
    // The loss decreases monotonically (gradient descent on a convex problem).
    for w in s.loss.windows(2) {
        assert!(w[1] <= w[0] + 1e-15);
    }
}

// ---------------------------------------------------------------- 5. degeneration

#[test]
fn naive_objective_collapses_while_dpo_converges() {
    let c = cfg();
    let s = comparison();
    let q = pi_ref(&c);
    let dpo = trace(Objective::Dpo);
    let naive = trace(Objective::Naive);
    let (d_end, n_end) = (dpo.points.last().unwrap(), naive.points.last().unwrap());
    let k = dpo.points.len();
    assert_eq!(d_end.step, c.trace_steps);

    // The dataset is the one `sample_dataset` draws, and net wins are computed from it.
    let _g = lock();
    let raw = sample_dataset(&c, c.trace_pairs).unwrap();
    drop(_g);
    let mut net = vec![0.0; q.len()];
    for (&w, &l) in raw.chosen.iter().zip(&raw.rejected) {
        net[w as usize] += 1.0;
        net[l as usize] -= 1.0;
    }
    for (a, b) in net.iter().zip(&s.net_wins) {
        assert!((a / c.trace_pairs as f64 - b).abs() < 1e-12);
    }

    // DPO: converges to the dataset's DPO minimiser, which is close to π*.
    assert!(s.dataset_mle_exists);
    assert!(tv(&dpo.final_policy, &s.dataset_dpo_policy) < 1e-6);
    assert!(s.dataset_dpo_tv_to_optimal < 0.05);
    assert!((d_end.kl_to_ref - dpo.points[k - 2].kl_to_ref).abs() < 1e-9);
    assert!(d_end.entropy > 1.0);

    // Naive: collapses onto the response with the most net wins — not the best response.
    let collapsed = argmax(&net);
    assert_eq!(naive.final_argmax, collapsed);
    assert_ne!(collapsed, argmax(&c.rewards));
    assert!(n_end.entropy < 1e-6, "{}", n_end.entropy);
    assert!(n_end.max_prob > 1.0 - 1e-9);
    assert!((n_end.kl_to_ref + q[collapsed].ln()).abs() < 1e-6);
    assert!((n_end.expected_reward - c.rewards[collapsed]).abs() < 1e-6);
    assert!(n_end.min_log_prob < -100.0);
    // KL(π_ref‖π) grows linearly without bound; DPO's is flat.
    let mid = &naive.points[k / 2];
    assert!(n_end.kl_ref_to_policy > 10.0 * d_end.kl_ref_to_policy);
    assert!(n_end.kl_ref_to_policy > 100.0);
    assert!(n_end.kl_ref_to_policy - mid.kl_ref_to_policy > 0.4 * n_end.kl_ref_to_policy);
    assert!(
        (d_end.kl_ref_to_policy - dpo.points[k - 2].kl_ref_to_policy).abs() < 1e-9,
        "DPO KL(π_ref‖π) still moving"
    );
    // The naive loss is unbounded below: its θ-gradient −β·net_wins is constant, so θ and the loss
    // move exactly linearly in the step count (loss(0) = 0).
    assert!(n_end.loss < -100.0);
    for pt in &naive.points {
        let want = n_end.loss * pt.step as f64 / n_end.step as f64;
        assert!(
            (pt.loss - want).abs() < 1e-9 * n_end.loss.abs(),
            "step {}",
            pt.step
        );
    }
    let slope = -c.trace_lr * c.trace_beta.powi(2) * s.net_wins.iter().map(|x| x * x).sum::<f64>();
    assert!((n_end.loss - slope * n_end.step as f64).abs() < 1e-9 * n_end.loss.abs());
    // Dominated by DPO: more KL and less reward.
    assert!(n_end.kl_to_ref > d_end.kl_to_ref);
    assert!(n_end.expected_reward < d_end.expected_reward);

    // Frontier: nobody is above it; naive is far below, DPO close to it.
    for t in &s.traces {
        let e = t.points.last().unwrap();
        assert!(
            e.expected_reward <= t.frontier_reward_at_final_kl + 1e-9,
            "{}",
            t.name
        );
    }
    assert!(n_end.expected_reward < naive.frontier_reward_at_final_kl - 0.5);
    assert!(d_end.expected_reward > dpo.frontier_reward_at_final_kl - 0.05);

    // Unlikelihood and Preferred-FT stay bounded, ignore β, and sit below the frontier.
    for obj in [Objective::Unlikelihood, Objective::PreferredFt] {
        let t = trace(obj);
        let e = t.points.last().unwrap();
        assert!(e.entropy > 1.0, "{}", t.name);
        assert!(e.min_log_prob > -10.0, "{}", t.name);
        assert!(
            e.expected_reward < t.frontier_reward_at_final_kl - 1e-3,
            "{}",
            t.name
        );
    }
    // Preferred-FT converges to the chosen-response frequencies (its exact minimiser).
    let pft = trace(Objective::PreferredFt);
    assert!(max_abs(&pft.final_policy, &s.chosen_frequency) < 1e-6);
}

// ---------------------------------------------------------------- frontier

#[test]
fn frontier_is_monotone_and_no_policy_lies_above_it() {
    let c = cfg();
    let f = {
        let _g = lock();
        frontier_study(&c).unwrap()
    };
    assert_eq!(f.points.len(), c.frontier_betas.len());
    for w in f.points.windows(2) {
        assert!(w[0].beta < w[1].beta);
        assert!(w[0].kl_to_ref > w[1].kl_to_ref);
        assert!(w[0].expected_reward > w[1].expected_reward);
    }
    for pt in &f.points {
        let star = pi_star(&c, pt.beta);
        assert!((pt.kl_to_ref - kl(&star, &pi_ref(&c))).abs() < 1e-12);
        assert!((pt.objective - pt.beta * log_z(&c, pt.beta)).abs() < 1e-12);
        let back = frontier_reward_at_kl(&c, pt.kl_to_ref).unwrap();
        assert!((back - pt.expected_reward).abs() < 1e-8, "β={}", pt.beta);
    }
    let q = pi_ref(&c);
    assert!((f.kl_limit + q[argmax(&c.rewards)].ln()).abs() < 1e-14);
    assert!((f.ref_reward - expect(&q, &c.rewards)).abs() < 1e-14);
    // Random policies (a fixed LCG, independent of libtorch) never beat the frontier at their KL.
    let mut state: u64 = 12345;
    let mut unif = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    for _ in 0..40 {
        let z: Vec<f64> = c
            .ref_logits
            .iter()
            .map(|l| l + 3.0 * (unif() - 0.5) * 2.0)
            .collect();
        let p = softmax(&z);
        let k = kl(&p, &q);
        let best = frontier_reward_at_kl(&c, k).unwrap();
        assert!(expect(&p, &c.rewards) <= best + 1e-9, "KL {k}");
    }
}

// ---------------------------------------------------------------- naive loss primitive

#[test]
fn naive_ratio_losses_is_minus_beta_h_and_validates() {
    let t = |x: &[f64]| Tensor::from_slice(x);
    let (pc, pl, rc, rl) = (
        t(&[-1.0, -2.0]),
        t(&[-3.0, -0.5]),
        t(&[-1.5, -1.0]),
        t(&[-2.0, -1.0]),
    );
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pl,
        ref_chosen: &rc,
        ref_rejected: &rl,
        chosen_lengths: None,
        rejected_lengths: None,
    };
    let out = Vec::<f64>::try_from(naive_ratio_losses(&lp, 0.5).unwrap()).unwrap();
    // h = (−1 + 3) − (−1.5 + 2) = 1.5; (−2 + 0.5) − (−1 + 1) = −1.5.
    assert!((out[0] + 0.75).abs() < 1e-15 && (out[1] - 0.75).abs() < 1e-15);
    assert!(matches!(
        naive_ratio_losses(&lp, 0.0),
        Err(RlhfError::OutOfRange { .. })
    ));
    let short = t(&[-1.0]);
    let bad = PairLogps {
        policy_rejected: &short,
        ..lp
    };
    assert!(matches!(
        naive_ratio_losses(&bad, 1.0),
        Err(RlhfError::Shape { .. })
    ));
    let nan = t(&[f64::NAN, -1.0]);
    let bad = PairLogps {
        ref_chosen: &nan,
        ..lp
    };
    assert!(matches!(
        naive_ratio_losses(&bad, 1.0),
        Err(RlhfError::NonFinite { .. })
    ));
}

// ---------------------------------------------------------------- determinism and errors

fn small() -> CategoricalDpoConfig {
    CategoricalDpoConfig {
        sample_sizes: vec![300, 3000],
        replicates: 3,
        trace_pairs: 500,
        trace_steps: 200,
        weight_snapshot_steps: vec![0, 200],
        ..cfg()
    }
}

#[test]
fn same_seed_same_numbers() {
    let _g = lock();
    let c = small();
    let runs = |c: &CategoricalDpoConfig| -> Vec<String> {
        vec![
            j(&closed_form_study(c).unwrap()),
            j(&population_dpo_study(c).unwrap()),
            j(&finite_sample_study(c).unwrap()),
            j(&gradient_weight_study(c).unwrap()),
            j(&objective_comparison(c).unwrap()),
            j(&frontier_study(c).unwrap()),
        ]
    };
    let a = runs(&c);
    let b = runs(&c);
    assert_eq!(a, b);
    let other = CategoricalDpoConfig { seed: 7, ..small() };
    let fa = j(&finite_sample_study(&c).unwrap());
    let fb = j(&finite_sample_study(&other).unwrap());
    assert_ne!(fa, fb, "a different seed must draw different datasets");
}

fn j<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x).unwrap()
}

#[test]
fn bad_configs_are_typed_errors() {
    let _g = lock();
    let base = small();
    type Study = fn(&CategoricalDpoConfig) -> Option<RlhfError>;
    let closed: Study = |c| closed_form_study(c).err();
    let pop: Study = |c| population_dpo_study(c).err();
    let fin: Study = |c| finite_sample_study(c).err();
    let wts: Study = |c| gradient_weight_study(c).err();
    let cmp: Study = |c| objective_comparison(c).err();
    let check = |c: CategoricalDpoConfig, study: Study, want: &str| {
        let e = study(&c).unwrap_or_else(|| panic!("study accepted a bad config ({want})"));
        assert_eq!(e.kind(), want, "{e}");
        let v = c.validate().expect_err("validate() accepted a bad config");
        assert_eq!(v.kind(), want, "{v}");
    };
    check(
        CategoricalDpoConfig {
            ref_logits: vec![0.0],
            rewards: vec![1.0],
            ..base.clone()
        },
        closed,
        "invalid_argument",
    );
    check(
        CategoricalDpoConfig {
            rewards: vec![1.0, 2.0],
            ..base.clone()
        },
        pop,
        "shape_mismatch",
    );
    let mut nan = base.clone();
    nan.rewards[3] = f64::NAN;
    check(nan, cmp, "out_of_range");
    check(
        CategoricalDpoConfig {
            betas: vec![0.5, 0.0],
            ..base.clone()
        },
        pop,
        "out_of_range",
    );
    check(
        CategoricalDpoConfig {
            betas: vec![],
            ..base.clone()
        },
        closed,
        "invalid_argument",
    );
    check(
        CategoricalDpoConfig {
            replicates: 0,
            ..base.clone()
        },
        fin,
        "out_of_range",
    );
    check(
        CategoricalDpoConfig {
            trace_lr: -1.0,
            ..base.clone()
        },
        cmp,
        "out_of_range",
    );
    check(
        CategoricalDpoConfig {
            unlikelihood_alpha: 1.5,
            ..base.clone()
        },
        cmp,
        "out_of_range",
    );
    check(
        CategoricalDpoConfig {
            weight_snapshot_steps: vec![0, 10_000],
            ..base.clone()
        },
        wts,
        "out_of_range",
    );
    check(
        CategoricalDpoConfig {
            newton_tol: 0.0,
            ..base.clone()
        },
        fin,
        "out_of_range",
    );
    // Every study rejects a malformed problem, not just one of them.
    let bad = CategoricalDpoConfig {
        rewards: vec![1.0],
        ..base.clone()
    };
    assert!(closed_form_study(&bad).is_err());
    assert!(population_dpo_study(&bad).is_err());
    assert!(finite_sample_study(&bad).is_err());
    assert!(gradient_weight_study(&bad).is_err());
    assert!(objective_comparison(&bad).is_err());
    assert!(frontier_study(&bad).is_err());
    assert!(sample_dataset(&bad, 10).is_err());
    assert!(frontier_reward_at_kl(&base, f64::NAN).is_err());
    assert!(sample_dataset(&base, 0).is_err());
    let ps = population_pairs(&base).unwrap();
    assert!(matches!(
        weighted_dpo_loss_at(&base, &ps, &[0.0; 3], 1.0),
        Err(RlhfError::Shape { .. })
    ));
    let mut oob = ps.clone();
    oob.chosen[0] = 99;
    assert!(weighted_dpo_loss_at(&base, &oob, &[0.0; 8], 1.0).is_err());
    assert!(matches!(
        weighted_dpo_loss_at(&base, &ps, &[0.0; 8], -1.0),
        Err(RlhfError::OutOfRange { .. })
    ));
}

// ---------------------------------------------------------------- key numbers (run with --nocapture)

#[test]
fn print_key_numbers() {
    let t = std::time::Instant::now();
    let s = closed();
    eprintln!("[closed] {:.2?}", t.elapsed());
    for r in &s.rows {
        eprintln!(
            "  β={:<4} π*={:.4?} E[r]={:.4} KL={:.4} βlogZ={:.6} numTV={:.2e} iters={} gmax={:.1e}",
            r.beta,
            r.optimal_policy,
            r.expected_reward,
            r.kl_to_ref,
            r.beta_log_partition,
            r.numerical_tv,
            r.numerical_iters,
            r.numerical_grad_max
        );
    }
    let t = std::time::Instant::now();
    let s = population();
    eprintln!("[population] {:.2?}", t.elapsed());
    for r in &s.rows {
        eprintln!(
            "  β={:<4} TV={:.2e} loss={:.12} floor={:.12} spread={:.1e} iters={} gmax={:.1e}",
            r.beta,
            r.tv_to_optimal,
            r.final_loss,
            r.true_reward_bt_loss,
            r.implicit_reward_spread,
            r.newton_iters,
            r.grad_max
        );
    }
    let t = std::time::Instant::now();
    let s = finite();
    eprintln!("[finite] {:.2?} slope={:.3}", t.elapsed(), s.log_log_slope);
    for r in &s.rows {
        eprintln!(
            "  N={:<6} mean={:.4} median={:.4} exists={:.3} tvs={:.3?} argmax={:?} maxp={:.3?}",
            r.n_pairs,
            r.mean_tv,
            r.median_tv,
            r.exists_fraction,
            r.tvs,
            r.fit_argmax,
            r.fit_max_prob
        );
    }
    let t = std::time::Instant::now();
    let s = weights();
    eprintln!(
        "[weights] {:.2?} limits={:.4?}",
        t.elapsed(),
        s.optimal_mean_weight
    );
    for (i, st) in s.steps.iter().enumerate() {
        if [0usize, 10, 50, 100, 500, 1500].contains(st) {
            eprintln!(
                "  step {st:<5} loss={:.6} w={:.4} agree={:.4} contra={:.4} tv={:.2e}",
                s.loss[i],
                s.mean_weight[i],
                s.mean_weight_agreeing[i],
                s.mean_weight_contradicting[i],
                s.tv_to_optimal[i]
            );
        }
    }
    for sn in &s.snapshots {
        let mut mis: Vec<_> = sn
            .pairs
            .iter()
            .filter(|p| p.true_margin > 0.0 && p.implicit_margin < 0.0)
            .map(|p| (p.chosen, p.rejected, (p.weight * 1000.0).round() / 1000.0))
            .collect();
        mis.truncate(8);
        eprintln!(
            "  snap {} r̂={:.3?} misordered={:?} id_err={:.1e}",
            sn.step, sn.implicit_reward, mis, sn.gradient_identity_error
        );
    }
    let t = std::time::Instant::now();
    let s = comparison();
    eprintln!(
        "[comparison] {:.2?} fitTV={:.4} exists={} net_wins={:.4?} chosen_freq={:.4?}",
        t.elapsed(),
        s.dataset_dpo_tv_to_optimal,
        s.dataset_mle_exists,
        s.net_wins,
        s.chosen_frequency
    );
    for tr in &s.traces {
        let e = tr.points.last().unwrap();
        let m = &tr.points[tr.points.len() / 2];
        eprintln!(
            "  {:<20} loss={:.4} KL={:.4} rKL={:.2} (mid {:.2}) E[r]={:.4} H={:.2e} TV*={:.4} minlogp={:.1} argmax={} frontier@KL={:.4} w={:.4} π={:.4?}",
            tr.name, e.loss, e.kl_to_ref, e.kl_ref_to_policy, m.kl_ref_to_policy, e.expected_reward,
            e.entropy, e.tv_to_optimal, e.min_log_prob, tr.final_argmax, tr.frontier_reward_at_final_kl,
            e.mean_dpo_weight, tr.final_policy
        );
    }
    let t = std::time::Instant::now();
    let f = frontier_study(&cfg()).unwrap();
    eprintln!(
        "[frontier] {:.2?} kl_limit={:.4} ref_reward={:.4}",
        t.elapsed(),
        f.kl_limit,
        f.ref_reward
    );
    for p in f.points.iter().step_by(4) {
        eprintln!(
            "  β={:.3} KL={:.4} E[r]={:.4}",
            p.beta, p.kl_to_ref, p.expected_reward
        );
    }
}
