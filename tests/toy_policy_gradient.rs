//! Claims of notebook `02-policy-gradient-to-ppo` (module `rlhf_lab::toy::policy_gradient`).
//!
//! Exact quantities are re-derived here independently: ∇J and the estimators' variances by enumerating
//! all A^T trajectories in plain f64 (the module uses autograd and a factorised closed form), the
//! per-episode gradients from the softmax score `onehot(a) − π`, the clip curves from `min(rA, clip(r)A)`.

#![allow(clippy::needless_range_loop)] // index-heavy reference math reads closer to the formulas

use rlhf_lab::toy::policy_gradient::*;
use rlhf_lab::RlhfError;
use std::sync::{Mutex, MutexGuard};
use tch::{Kind, Tensor};

/// The studies seed libtorch's global RNG: run them one at a time. One intra-op thread: these tensors
/// are tiny, and on a loaded machine thread hand-offs dominate.
static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    g
}

fn vec_of(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn stat(study: &EstimatorStudy, e: Estimator) -> &EstimatorStats {
    study.stats.iter().find(|s| s.estimator == e).unwrap()
}

// ------------------------------------------------------------------------------------------------
// Independent exact computations by enumeration
// ------------------------------------------------------------------------------------------------

/// Every trajectory (a_0..a_{T−1}) with its probability under `policy`.
fn trajectories(policy: &[Vec<f64>]) -> Vec<(Vec<usize>, f64)> {
    let (t, a) = (policy.len(), policy[0].len());
    let mut out = Vec::new();
    for code in 0..a.pow(t as u32) {
        let mut c = code;
        let mut acts = Vec::with_capacity(t);
        let mut p = 1.0;
        for step in policy.iter() {
            let act = c % a;
            c /= a;
            p *= step[act];
            acts.push(act);
        }
        out.push((acts, p));
    }
    out
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// Exact E‖ĝ‖² − ‖∇J‖² by enumerating trajectories; Gaussian noise integrated analytically.
fn enumerated_variance(p: &TabularProblem, e: Estimator, k: usize) -> f64 {
    let (t_len, a_len) = (p.horizon, p.n_actions);
    let s2 = p.reward_noise.powi(2);
    let pi: Vec<Vec<f64>> = p.theta.iter().map(|r| softmax(r)).collect();
    let m: Vec<f64> = (0..t_len)
        .map(|t| (0..a_len).map(|a| pi[t][a] * p.mu[t][a]).sum())
        .collect();
    let var_mu: Vec<f64> = (0..t_len)
        .map(|t| {
            (0..a_len)
                .map(|a| pi[t][a] * (p.mu[t][a] - m[t]).powi(2))
                .sum()
        })
        .collect();
    let v: Vec<f64> = (0..t_len).map(|t| m[t..].iter().sum()).collect();
    let grad_sq: f64 = (0..t_len)
        .flat_map(|t| (0..a_len).map(move |a| (t, a)))
        .map(|(t, a)| (pi[t][a] * (p.mu[t][a] - m[t])).powi(2))
        .sum();
    let mut second = 0.0;
    for (acts, prob) in trajectories(&pi) {
        for t in 0..t_len {
            let score_sq: f64 = (0..a_len)
                .map(|a| ((a == acts[t]) as u8 as f64 - pi[t][a]).powi(2))
                .sum();
            let future: f64 = (t..t_len).map(|u| p.mu[u][acts[u]]).sum();
            let n_future = (t_len - t) as f64;
            let w2 = match e {
                Estimator::FullReturn => {
                    let all: f64 = (0..t_len).map(|u| p.mu[u][acts[u]]).sum();
                    all * all + t_len as f64 * s2
                }
                Estimator::RewardToGo => future * future + n_future * s2,
                Estimator::ValueBaseline => (future - v[t]).powi(2) + n_future * s2,
                Estimator::LeaveOneOutBaseline => {
                    let var_g: f64 = (t..t_len).map(|u| var_mu[u] + s2).sum();
                    (future - v[t]).powi(2) + n_future * s2 + var_g / (k as f64 - 1.0)
                }
                Estimator::TrueAdvantage => (p.mu[t][acts[t]] - m[t]).powi(2),
            };
            second += prob * score_sq * w2;
        }
    }
    second - grad_sq
}

/// Exact (per-step IS variance, trajectory IS variance, KL(old‖target)) by enumeration.
fn enumerated_is(p: &TabularProblem, theta_old: &[Vec<f64>]) -> (f64, f64, f64) {
    let s2 = p.reward_noise.powi(2);
    let t_len = p.horizon;
    let pi: Vec<Vec<f64>> = p.theta.iter().map(|r| softmax(r)).collect();
    let q: Vec<Vec<f64>> = theta_old.iter().map(|r| softmax(r)).collect();
    let j = p.objective;
    let (mut ps2, mut tr2, mut kl) = (0.0, 0.0, 0.0);
    for (acts, q_tau) in trajectories(&q) {
        let ratios: Vec<f64> = (0..t_len).map(|t| pi[t][acts[t]] / q[t][acts[t]]).collect();
        let rho: f64 = ratios.iter().product();
        kl += q_tau * (1.0 / rho).ln();
        // E[(Σ_t ρ_t r_t)² | τ] and E[R² | τ] with independent N(0, σ²) noise per step.
        let lin: f64 = (0..t_len).map(|t| ratios[t] * p.mu[t][acts[t]]).sum();
        let noise: f64 = ratios.iter().map(|r| r * r * s2).sum();
        ps2 += q_tau * (lin * lin + noise);
        let ret: f64 = (0..t_len).map(|t| p.mu[t][acts[t]]).sum();
        tr2 += q_tau * rho * rho * (ret * ret + t_len as f64 * s2);
    }
    (ps2 - j * j, tr2 - j * j, kl)
}

// ------------------------------------------------------------------------------------------------
// The problem
// ------------------------------------------------------------------------------------------------

#[test]
fn exact_objective_values_and_gradient_match_closed_forms() {
    let _g = serial();
    let p = build_problem(&ProblemConfig::default()).unwrap();
    assert_eq!((p.horizon, p.n_actions), (5, 4));
    let pi: Vec<Vec<f64>> = p.theta.iter().map(|r| softmax(r)).collect();
    let mut j = 0.0;
    for t in 0..p.horizon {
        let m: f64 = (0..p.n_actions).map(|a| pi[t][a] * p.mu[t][a]).sum();
        j += m;
        for a in 0..p.n_actions {
            assert!((p.policy[t][a] - pi[t][a]).abs() < 1e-14);
            // ∂J/∂θ[t,a] = π_t(a)(μ[t,a] − E_π μ[t,·]).
            let want = pi[t][a] * (p.mu[t][a] - m);
            assert!((p.gradient[t][a] - want).abs() < 1e-14, "grad[{t}][{a}]");
        }
        let v_t: f64 = (t..p.horizon)
            .map(|u| (0..p.n_actions).map(|a| pi[u][a] * p.mu[u][a]).sum::<f64>())
            .sum();
        assert!((p.values[t] - v_t).abs() < 1e-13);
    }
    assert!((p.objective - j).abs() < 1e-13);
    // J by enumeration over all 4^5 trajectories.
    let j_enum: f64 = trajectories(&pi)
        .iter()
        .map(|(acts, prob)| prob * (0..p.horizon).map(|t| p.mu[t][acts[t]]).sum::<f64>())
        .sum();
    assert!((p.objective - j_enum).abs() < 1e-12);
}

#[test]
fn per_episode_gradients_are_score_times_weight() {
    let _g = serial();
    let p = build_problem(&ProblemConfig::default()).unwrap();
    let k = 4usize;
    let ep = sample_episodes(&p, 16, 11).unwrap();
    let acts: Vec<i64> = Vec::<i64>::try_from(ep.actions.flatten(0, -1)).unwrap();
    let rew = vec_of(&ep.rewards);
    let (n, t_len, a_len) = (16usize, p.horizon, p.n_actions);
    let r = |i: usize, t: usize| rew[i * t_len + t];
    let act = |i: usize, t: usize| acts[i * t_len + t] as usize;
    let g_rtg = |i: usize, t: usize| (t..t_len).map(|u| r(i, u)).sum::<f64>();
    for e in Estimator::ALL {
        let g = vec_of(&per_episode_gradients(&p, &ep, e, k).unwrap());
        assert_eq!(g.len(), n * t_len * a_len);
        for i in 0..n {
            for t in 0..t_len {
                let w = match e {
                    Estimator::FullReturn => g_rtg(i, 0),
                    Estimator::RewardToGo => g_rtg(i, t),
                    Estimator::ValueBaseline => g_rtg(i, t) - p.values[t],
                    Estimator::LeaveOneOutBaseline => {
                        let group = i / k;
                        let others: f64 = (group * k..group * k + k)
                            .filter(|&j| j != i)
                            .map(|j| g_rtg(j, t))
                            .sum();
                        g_rtg(i, t) - others / (k as f64 - 1.0)
                    }
                    Estimator::TrueAdvantage => {
                        let m: f64 = (0..a_len).map(|a| p.policy[t][a] * p.mu[t][a]).sum();
                        p.mu[t][act(i, t)] - m
                    }
                };
                for a in 0..a_len {
                    let score = (a == act(i, t)) as u8 as f64 - p.policy[t][a];
                    let got = g[(i * t_len + t) * a_len + a];
                    assert!(
                        (got - score * w).abs() < 1e-12,
                        "{e:?} episode {i} step {t} action {a}: {got} vs {}",
                        score * w
                    );
                }
            }
        }
    }
}

#[test]
fn closed_form_variances_match_enumeration() {
    let _g = serial();
    for cfg in [
        ProblemConfig::default(),
        ProblemConfig {
            horizon: 3,
            n_actions: 3,
            reward_mean: -0.5,
            reward_noise: 1.0,
            logit_scale: 1.5,
            seed: 7,
            ..ProblemConfig::default()
        },
    ] {
        let p = build_problem(&cfg).unwrap();
        for e in Estimator::ALL {
            for k in [2, 8] {
                let got = exact_total_variance(&p, e, k).unwrap();
                let want = enumerated_variance(&p, e, k);
                assert!(
                    (got - want).abs() < 1e-10 * want.abs().max(1.0),
                    "{e:?} K={k}: closed form {got} vs enumeration {want}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// REINFORCE, rewards-to-go, baselines
// ------------------------------------------------------------------------------------------------

#[test]
fn estimators_are_unbiased_and_variance_is_ordered() {
    let _g = serial();
    let t0 = std::time::Instant::now();
    let study = estimator_study(&EstimatorConfig::default()).unwrap();
    println!("estimator_study: {:?}", t0.elapsed());
    for s in &study.stats {
        println!(
            "{:<28} bias {:.4} (={:.2} SE, max|z| {:.2})  var {:.4} exact {:.4}  ratio {:.4}",
            s.name,
            s.bias_norm,
            s.bias_in_standard_errors,
            s.max_abs_z,
            s.total_variance,
            s.total_variance_exact,
            s.variance_ratio
        );
        // 1. Unbiased: within a few Monte-Carlo standard errors of the exact gradient.
        assert!(s.bias_in_standard_errors < 4.0, "{}: biased?", s.name);
        assert!(s.max_abs_z < 4.5, "{}: a coordinate is off", s.name);
        // Measured variance matches the closed form (N = 32768 episodes).
        let rel = (s.total_variance / s.total_variance_exact - 1.0).abs();
        assert!(rel < 0.05, "{}: variance off by {rel}", s.name);
    }
    let v = |e| stat(&study, e).total_variance_exact;
    let m = |e| stat(&study, e).total_variance;
    use Estimator::*;
    // 2. The ordering, by clear margins (measured and exact).
    for (name, f) in [("measured", &m as &dyn Fn(Estimator) -> f64), ("exact", &v)] {
        assert!(f(FullReturn) > 1.8 * f(RewardToGo), "{name}: full vs rtg");
        assert!(f(RewardToGo) > 5.0 * f(ValueBaseline), "{name}: rtg vs V");
        assert!(
            f(RewardToGo) > 5.0 * f(LeaveOneOutBaseline),
            "{name}: rtg vs LOO"
        );
        assert!(
            f(LeaveOneOutBaseline) > f(ValueBaseline),
            "{name}: LOO vs V"
        );
        assert!(f(ValueBaseline) > 5.0 * f(TrueAdvantage), "{name}: V vs A");
    }
    // A learned-from-the-batch baseline pays for its own noise: roughly 1 + 1/(K−1) over the exact V.
    let loo_over_v = v(LeaveOneOutBaseline) / v(ValueBaseline);
    assert!(
        loo_over_v > 1.05 && loo_over_v < 1.0 + 1.5 / 7.0,
        "{loo_over_v}"
    );
    // The ratio column is relative to the full return.
    assert_eq!(stat(&study, FullReturn).variance_ratio, 1.0);
    assert!(
        (stat(&study, RewardToGo).variance_ratio - m(RewardToGo) / m(FullReturn)).abs() < 1e-15
    );
}

#[test]
fn large_sample_means_recover_the_exact_gradient() {
    let _g = serial();
    let study = estimator_study(&EstimatorConfig::default()).unwrap();
    let exact = study.problem.gradient_flat();
    let norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt();
    for (s, mean) in study.stats.iter().zip(&study.mean_gradients) {
        let err = mean
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((err - s.bias_norm).abs() < 1e-12);
        let rel = err / norm;
        println!("{:<28} ‖ḡ − ∇J‖/‖∇J‖ = {rel:.4}", s.name);
        // Within 3 standard errors of ∇J; the low-variance estimators pin it to a few percent.
        assert!(
            rel < 3.0 * s.mc_standard_error / norm,
            "{}: relative error {rel}",
            s.name
        );
        let tol = match s.estimator {
            Estimator::ValueBaseline
            | Estimator::LeaveOneOutBaseline
            | Estimator::TrueAdvantage => 0.05,
            _ => f64::INFINITY,
        };
        assert!(rel < tol, "{}: relative error {rel}", s.name);
    }
}

#[test]
fn batch_mean_variance_falls_as_one_over_batch_size() {
    let _g = serial();
    let cfg = EstimatorConfig::default();
    let study = estimator_study(&cfg).unwrap();
    assert_eq!(
        study.batch_rows.len(),
        Estimator::ALL.len() * cfg.batch_sizes.len()
    );
    for r in &study.batch_rows {
        assert_eq!(r.n_batches, cfg.n_episodes / r.batch_size);
        let ratio = r.variance_of_mean / r.variance_of_mean_exact;
        // n_batches ≥ 128: the sample variance is within ~±25 % at 3σ.
        assert!(
            (0.8..1.2).contains(&ratio),
            "{} B={}: measured/exact {ratio}",
            r.name,
            r.batch_size
        );
    }
    for e in Estimator::ALL {
        let rows: Vec<_> = study
            .batch_rows
            .iter()
            .filter(|r| r.estimator == e)
            .collect();
        let (first, last) = (rows[0], rows[rows.len() - 1]);
        let span = last.batch_size as f64 / first.batch_size as f64;
        let drop = first.variance_of_mean / last.variance_of_mean;
        // 1/B law: variance falls by the batch-size ratio (128×); LOO falls faster at small B because
        // its baseline improves with B.
        assert!(drop > 0.8 * span, "{e:?}: drop {drop} over {span}×");
        if e != Estimator::LeaveOneOutBaseline {
            assert!(drop < 1.25 * span, "{e:?}: drop {drop} over {span}×");
            for w in rows.windows(2) {
                let exact_ratio = w[0].variance_of_mean_exact / w[1].variance_of_mean_exact;
                assert!((exact_ratio - 2.0).abs() < 1e-12);
            }
        }
    }
    // With B = 2 the leave-one-out baseline is the other episode's G_t: about 2× the V-baseline variance.
    let b2 = |e| {
        study
            .batch_rows
            .iter()
            .find(|r| r.estimator == e && r.batch_size == 2)
            .unwrap()
            .variance_of_mean_exact
    };
    let ratio = b2(Estimator::LeaveOneOutBaseline) / b2(Estimator::ValueBaseline);
    assert!(ratio > 1.8 && ratio < 2.3, "{ratio}");
}

#[test]
fn ppo_gradient_at_ratio_one_is_reinforce() {
    let _g = serial();
    let cfg = ProblemConfig::default();
    let c = ppo_gradient_at_ratio_one(&cfg, 512, 3).unwrap();
    assert_eq!(c.reinforce_gradient.len(), cfg.horizon * cfg.n_actions);
    assert!(c.max_abs_diff < 1e-12, "{}", c.max_abs_diff);
    assert!(c.reinforce_gradient.iter().any(|x| x.abs() > 1e-3));
    // TokenMean divides the same gradient by the number of tokens T.
    assert!((c.token_mean_scale - 1.0 / cfg.horizon as f64).abs() < 1e-12);
}

// ------------------------------------------------------------------------------------------------
// Importance sampling
// ------------------------------------------------------------------------------------------------

#[test]
fn importance_sampling_is_unbiased_and_its_variance_grows_with_kl() {
    let _g = serial();
    let cfg = IsConfig::default();
    let t0 = std::time::Instant::now();
    let rows = importance_sampling_study(&cfg).unwrap();
    println!("importance_sampling_study: {:?}", t0.elapsed());
    assert_eq!(rows.len(), cfg.alphas.len());
    let n = cfg.n_episodes as f64;
    for r in &rows {
        println!(
            "α {:.2} KL {:.4} (k3 {:.4}) χ² {:.3} | per-step {:.4} var {:.3} ({:.3}) | traj {:.4} var {:.2} ({:.2}) ESS {:.3} ({:.3})",
            r.alpha, r.kl_old_target, r.approx_kl_k3, r.chi2_trajectory, r.per_step_estimate,
            r.per_step_variance, r.per_step_variance_exact, r.trajectory_estimate,
            r.trajectory_variance, r.trajectory_variance_exact, r.ess_fraction, r.ess_fraction_exact
        );
        // Unbiased: within 4 exact standard errors (the measured SE understates heavy tails).
        let se_ps = (r.per_step_variance_exact / n).sqrt();
        let se_tr = (r.trajectory_variance_exact / n).sqrt();
        assert!((r.per_step_estimate - r.exact_objective).abs() < 4.0 * se_ps);
        assert!((r.trajectory_estimate - r.exact_objective).abs() < 4.0 * se_tr);
        assert!((r.per_step_variance / r.per_step_variance_exact - 1.0).abs() < 0.06);
        if r.chi2_trajectory < 2.0 {
            assert!((r.trajectory_variance / r.trajectory_variance_exact - 1.0).abs() < 0.15);
            assert!((r.ess_fraction / r.ess_fraction_exact - 1.0).abs() < 0.05);
        }
        // PPO's logged approx_kl (k3) estimates KL(π_old ‖ π_θ).
        if r.alpha > 0.0 {
            assert!((r.approx_kl_k3 / r.kl_old_target - 1.0).abs() < 0.05);
        }
        // The trajectory ratio costs more than the per-step ratio.
        assert!(r.trajectory_variance_exact >= r.per_step_variance_exact - 1e-9);
    }
    // At α = 0 both are the on-policy Monte-Carlo estimate.
    assert_eq!(rows[0].kl_old_target, 0.0);
    assert_eq!(rows[0].per_step_estimate, rows[0].trajectory_estimate);
    for w in rows.windows(2) {
        assert!(w[1].kl_old_target > w[0].kl_old_target);
        assert!(w[1].per_step_variance_exact > w[0].per_step_variance_exact);
        assert!(w[1].per_step_variance > w[0].per_step_variance);
        assert!(w[1].trajectory_variance_exact > w[0].trajectory_variance_exact);
        assert!(w[1].chi2_trajectory > w[0].chi2_trajectory);
        assert!(w[1].ess_fraction_exact < w[0].ess_fraction_exact);
    }
    let last = rows.last().unwrap();
    // Multiplicative blow-up: at KL ≈ 1 nat the trajectory ratio costs ≫ 10× the on-policy variance,
    // the per-step ratio ≈ 5×.
    assert!(last.trajectory_variance_exact > 100.0 * rows[0].trajectory_variance_exact);
    assert!(last.per_step_variance_exact < 10.0 * rows[0].per_step_variance_exact);
}

#[test]
fn importance_sampling_closed_forms_match_enumeration() {
    let _g = serial();
    // Reconstruct the behaviour policies of the sweep: same seed, same draw as the study.
    let cfg = IsConfig {
        alphas: vec![0.0, 0.5, 1.0],
        n_episodes: 2,
        ..IsConfig::default()
    };
    let p = build_problem(&cfg.problem).unwrap();
    tch::manual_seed(cfg.seed);
    let direction = Tensor::randn(
        [p.horizon as i64, p.n_actions as i64],
        (Kind::Double, tch::Device::Cpu),
    ) * cfg.direction_scale;
    let dir: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&direction).unwrap();
    let rows = importance_sampling_study(&cfg).unwrap();
    for r in &rows {
        let theta_old: Vec<Vec<f64>> = p
            .theta
            .iter()
            .zip(&dir)
            .map(|(th, d)| th.iter().zip(d).map(|(x, y)| x + r.alpha * y).collect())
            .collect();
        let (ps, tr, kl) = enumerated_is(&p, &theta_old);
        assert!(
            (r.per_step_variance_exact - ps).abs() < 1e-9 * ps,
            "α {}",
            r.alpha
        );
        assert!(
            (r.trajectory_variance_exact - tr).abs() < 1e-9 * tr,
            "α {}",
            r.alpha
        );
        assert!((r.kl_old_target - kl).abs() < 1e-12, "α {}", r.alpha);
    }
}

// ------------------------------------------------------------------------------------------------
// PPO clip and value clip
// ------------------------------------------------------------------------------------------------

fn near_kink(r: f64, kinks: &[f64]) -> bool {
    kinks.iter().any(|k| (r - k).abs() < 1e-9)
}

#[test]
fn clip_curves_match_the_closed_form() {
    let _g = serial();
    let cfg = ClipConfig::default();
    let c = clip_curves(&cfg).unwrap();
    let eps = cfg.clip_eps;
    let clip = |r: f64| r.clamp(1.0 - eps, 1.0 + eps);
    let l = |r: f64, a: f64| (r * a).min(clip(r) * a);
    let dual_c = cfg.dual_clip.unwrap();
    let dual = c.objective_neg_dual.as_ref().unwrap();
    assert_eq!(c.ratios.len(), cfg.n_ratios);
    for (i, &r) in c.ratios.iter().enumerate() {
        let a = cfg.advantage;
        assert!((c.objective_pos[i] - l(r, a)).abs() < 1e-12, "A>0 r={r}");
        assert!((c.objective_neg[i] - l(r, -a)).abs() < 1e-12, "A<0 r={r}");
        assert!(
            (dual[i] - l(r, -a).max(-dual_c * a)).abs() < 1e-12,
            "dual r={r}"
        );
        assert!((c.unclipped_pos[i] - r * a).abs() < 1e-15);
        if near_kink(r, &[1.0 - eps, 1.0 + eps]) {
            continue;
        }
        // Flat (zero gradient) exactly where the clip binds; slope A elsewhere.
        let want_pos = if r > 1.0 + eps { 0.0 } else { a };
        let want_neg = if r < 1.0 - eps { 0.0 } else { -a };
        assert!((c.slope_pos[i] - want_pos).abs() < 1e-12, "slope A>0 r={r}");
        assert!((c.slope_neg[i] - want_neg).abs() < 1e-12, "slope A<0 r={r}");
        // The clipped objective is a pessimistic (lower) bound of the unclipped one.
        assert!(c.objective_pos[i] <= c.unclipped_pos[i] + 1e-15);
        assert!(c.objective_neg[i] <= c.unclipped_neg[i] + 1e-15);
    }
    // The flat parts have the advertised levels.
    let last = c.ratios.len() - 1;
    assert!((c.objective_pos[last] - (1.0 + eps)).abs() < 1e-12);
    assert!((c.objective_neg[0] + (1.0 - eps)).abs() < 1e-12);
    assert!((dual[last] + dual_c).abs() < 1e-12);
}

#[test]
fn clip_surface_matches_the_closed_form() {
    let _g = serial();
    let cfg = ClipConfig::default();
    let s = clip_surface(&cfg).unwrap();
    assert_eq!(s.objective.len(), cfg.n_advantages);
    assert_eq!(s.objective[0].len(), cfg.n_ratios);
    let eps = cfg.clip_eps;
    for (i, &a) in s.advantages.iter().enumerate() {
        for (j, &r) in s.ratios.iter().enumerate() {
            let want = (r * a).min(r.clamp(1.0 - eps, 1.0 + eps) * a);
            assert!((s.objective[i][j] - want).abs() < 1e-12, "A={a} r={r}");
        }
    }
    // The A = 0 row (middle of an odd grid) is identically 0.
    let mid = cfg.n_advantages / 2;
    assert!(s.advantages[mid].abs() < 1e-15);
    assert!(s.objective[mid].iter().all(|x| x.abs() < 1e-15));
}

#[test]
fn value_clip_curve_has_the_flat_region() {
    let _g = serial();
    let cfg = ValueClipConfig::default();
    let v = value_clip_curve(&cfg).unwrap();
    let (v_old, r, c) = (cfg.old_value, cfg.ret, cfg.clip);
    let (lo, hi) = v.flat_region.unwrap();
    assert!((lo - (v_old + c)).abs() < 1e-15 && (hi - (2.0 * r - v_old - c)).abs() < 1e-15);
    let mut flat_points = 0;
    for (i, &x) in v.values.iter().enumerate() {
        let clipped = x.clamp(v_old - c, v_old + c);
        let want = 0.5 * (x - r).powi(2).max((clipped - r).powi(2));
        assert!((v.loss_clipped[i] - want).abs() < 1e-12, "V={x}");
        assert!((v.loss_unclipped[i] - 0.5 * (x - r).powi(2)).abs() < 1e-12);
        assert!((v.grad_unclipped[i] - (x - r)).abs() < 1e-12);
        assert!(v.loss_clipped[i] >= v.loss_unclipped[i] - 1e-15);
        if near_kink(x, &[lo, hi]) {
            continue;
        }
        if x > lo && x < hi {
            flat_points += 1;
            assert_eq!(v.grad_clipped[i], 0.0, "V={x} should be flat");
            assert!((v.loss_clipped[i] - 0.5 * (v_old + c - r).powi(2)).abs() < 1e-12);
        } else {
            assert!((v.grad_clipped[i] - (x - r)).abs() < 1e-12, "V={x}");
        }
    }
    assert!(flat_points > 100);
    // No flat region when the return is within the clip range of V_old.
    let inside = value_clip_curve(&ValueClipConfig {
        ret: 0.1,
        ..cfg.clone()
    })
    .unwrap();
    assert!(inside.flat_region.is_none());
    let below = value_clip_curve(&ValueClipConfig { ret: -1.0, ..cfg }).unwrap();
    let (lo, hi) = below.flat_region.unwrap();
    assert!((lo - (-2.0 + 0.2)).abs() < 1e-12 && (hi - (-0.2)).abs() < 1e-12);
}

// ------------------------------------------------------------------------------------------------
// Determinism and bad configs
// ------------------------------------------------------------------------------------------------

#[test]
fn same_seed_same_numbers() {
    let _g = serial();
    let cfg = EstimatorConfig {
        n_episodes: 1024,
        batch_sizes: vec![2, 8, 32],
        ..EstimatorConfig::default()
    };
    let a = estimator_study(&cfg).unwrap();
    let b = estimator_study(&cfg).unwrap();
    assert_eq!(a, b);
    let c = estimator_study(&EstimatorConfig { seed: 99, ..cfg }).unwrap();
    assert_eq!(a.problem, c.problem);
    assert_ne!(a.stats, c.stats);
    let is_cfg = IsConfig {
        n_episodes: 1024,
        ..IsConfig::default()
    };
    assert_eq!(
        importance_sampling_study(&is_cfg).unwrap(),
        importance_sampling_study(&is_cfg).unwrap()
    );
    let p1 = build_problem(&ProblemConfig::default()).unwrap();
    let p2 = build_problem(&ProblemConfig {
        seed: 5,
        ..ProblemConfig::default()
    })
    .unwrap();
    assert_ne!(p1.theta, p2.theta);
}

fn arg_of(e: RlhfError) -> String {
    e.argument().unwrap_or("").to_string()
}

#[test]
fn bad_configs_are_typed_errors() {
    let _g = serial();
    let bad_problem = |f: fn(&mut ProblemConfig)| {
        let mut c = ProblemConfig::default();
        f(&mut c);
        build_problem(&c).unwrap_err()
    };
    let e = bad_problem(|c| c.horizon = 0);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "horizon");
    let e = bad_problem(|c| c.n_actions = 1);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "n_actions");
    let e = bad_problem(|c| c.reward_noise = -1.0);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "reward_noise");
    let e = bad_problem(|c| c.reward_mean = f64::NAN);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "reward_mean");

    let study = |f: fn(&mut EstimatorConfig)| {
        let mut c = EstimatorConfig::default();
        f(&mut c);
        estimator_study(&c).unwrap_err()
    };
    let e = study(|c| c.group_size = 7);
    assert!(matches!(e, RlhfError::Invalid { .. }) && arg_of(e) == "group_size");
    let e = study(|c| c.batch_sizes.clear());
    assert!(matches!(e, RlhfError::Invalid { .. }) && arg_of(e) == "batch_sizes");
    let e = study(|c| c.batch_sizes = vec![1]);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "batch_sizes");
    let e = study(|c| c.batch_sizes = vec![1 << 14]);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "batch_sizes");
    let e = study(|c| c.n_episodes = 10);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "n_episodes");
    let e = study(|c| c.problem.logit_scale = f64::INFINITY);
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "logit_scale");

    let e = importance_sampling_study(&IsConfig {
        alphas: vec![0.0, -0.5],
        ..IsConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "alphas");
    let e = importance_sampling_study(&IsConfig {
        alphas: vec![],
        ..IsConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, RlhfError::Invalid { .. }) && arg_of(e) == "alphas");

    let clip = |f: fn(&mut ClipConfig)| {
        let mut c = ClipConfig::default();
        f(&mut c);
        (clip_curves(&c).unwrap_err(), clip_surface(&c).unwrap_err())
    };
    for (f, arg) in [
        (
            (|c: &mut ClipConfig| c.clip_eps = 1.5) as fn(&mut ClipConfig),
            "clip_eps",
        ),
        (|c| c.dual_clip = Some(0.5), "dual_clip"),
        (|c| c.ratio_min = 0.0, "ratio_min"),
        (|c| c.ratio_max = 0.001, "ratio_max"),
        (|c| c.n_ratios = 1, "n_ratios"),
        (|c| c.advantage = 0.0, "advantage"),
    ] {
        let (a, b) = clip(f);
        assert!(matches!(a, RlhfError::OutOfRange { .. }), "{arg}: {a:?}");
        assert_eq!(arg_of(a), arg);
        assert_eq!(arg_of(b), arg);
    }

    let e = value_clip_curve(&ValueClipConfig {
        clip: 0.0,
        ..ValueClipConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "clip");
    let e = value_clip_curve(&ValueClipConfig {
        value_max: -2.0,
        ..ValueClipConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }) && arg_of(e) == "value_max");

    let e = TabularProblem::new(vec![vec![0.0, 1.0], vec![0.0]], vec![vec![0.0; 2]; 2], 0.1)
        .unwrap_err();
    assert!(matches!(e, RlhfError::Shape { .. }) && arg_of(e) == "theta");
    let e = TabularProblem::new(vec![vec![0.0, 1.0]; 2], vec![vec![0.0, f64::NAN]; 2], 0.1)
        .unwrap_err();
    assert!(matches!(e, RlhfError::NonFinite { .. }) && arg_of(e) == "mu");
}
