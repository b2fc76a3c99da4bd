//! Policy gradient on a tabular problem small enough to solve exactly: REINFORCE, rewards-to-go,
//! baselines, importance sampling, and the shapes of PPO's clipped policy and value losses.
//!
//! Notebook `02-policy-gradient-to-ppo` steps through this module; it follows seed document 000 §1.1
//! (the objective `max E_τ[R(τ)]`, its score-function gradient, "rewards to go", a baseline, the Q/advantage
//! form) and §1.2 (importance sampling of an old policy's samples, the PPO loss), plus the clipped value loss
//! of seed 003 ("PPO 的 Loss", TRL `vf_losses2`).
//!
//! # The problem
//! An episode has `T` steps (`horizon`). The state is the step index `t` (like the position in a
//! fixed-length response); at each step the policy picks one of `A` actions (`n_actions`, a tiny
//! vocabulary) from a tabular softmax `π_t(a) = softmax(θ[t])_a`, θ of shape (T, A), and receives
//! `r_t = μ[t, a_t] + σ·ε_t`, ε_t ~ N(0, 1), μ of shape (T, A). The objective is
//! `J(θ) = E_τ[R(τ)] = Σ_t Σ_a π_t(a)·μ[t, a]` (seed 000 §1.1 `max E_τ[R(τ)] = Σ_τ R(τ) p(τ|θ)`), so its
//! gradient ∇J (T, A) is exact: tch autograd on the closed-form J in f64 ([`TabularProblem::gradient`]).
//! Since action `a_t` cannot change rewards `r_{t'}`, `t' < t`, dropping them (rewards-to-go) keeps the
//! estimator unbiased; since the state does not depend on the policy, `V_t = E[Σ_{t'≥t} r_{t'}]` and
//! `A(s_t, a_t) = μ[t, a_t] − E_{π_t} μ[t, ·]` are exact too.
//!
//! # Claims the notebook makes (pinned by `tests/toy_policy_gradient.rs`)
//! 1. Every score-function estimator `ĝ = Σ_t ∇_θ log π_t(a_t)·w_t` ([`Estimator`]) is unbiased: the mean
//!    over N episodes is within a few Monte-Carlo standard errors of ∇J.
//! 2. Their per-episode variance `tr Cov(ĝ)` is ordered
//!    full return > reward-to-go > reward-to-go − baseline > true advantage, by large factors; the
//!    measured variances match the closed forms of [`exact_total_variance`]; the variance of a batch mean
//!    falls as `1/N` ([`BatchVarianceRow`]).
//! 3. Importance sampling (seed 000 §1.2) re-weights an old policy's samples by `π_θ/π_old` and stays
//!    unbiased, at a variance cost that grows with KL(π_old ‖ π_θ); the trajectory ratio `Π_t ρ_t` pays
//!    `Π_t (1 + χ²_t)` (exponential in T), the per-step ratio PPO uses pays additively ([`IsRow`]).
//! 4. PPO's clipped objective `min(r·A, clip(r, 1−ε, 1+ε)·A)` (Schulman et al. 2017 eq. 7) is flat — zero
//!    gradient — for `r > 1+ε` when A > 0 and for `r < 1−ε` when A < 0 ([`clip_curves`],
//!    [`clip_surface`]); the clipped value loss is flat on `[V_old + c, 2R − V_old − c]` when
//!    `R > V_old + c` ([`value_clip_curve`]).
//! 5. At the first PPO step (`π = π_old`, ratio 1) the gradient of `crate::core::ppo::policy_loss` is exactly
//!    minus the REINFORCE estimate with the same advantages ([`ppo_gradient_at_ratio_one`]).
//!
//! Everything is f64 on the CPU and seeded (`tch::manual_seed`): same config, same numbers. Seeding uses
//! libtorch's global RNG, so two studies must not run concurrently (the test file serialises them). The
//! tensors are tiny: on a busy machine `tch::set_num_threads(1)` is much faster. The module only
//! drives the core library: log π from [`crate::core::logprobs::token_log_probs`], rewards-to-go from
//! [`crate::core::advantages::discounted_returns`] (γ = 1), the leave-one-out baseline from
//! [`crate::core::advantages::rloo_advantages`], ratios / approx-KL / clipped objective from
//! [`crate::core::ppo::policy_loss`], the value loss from [`crate::core::ppo::value_loss`].

use super::{scalar, to_rows, to_vec};
use crate::core::advantages::{discounted_returns, rloo_advantages, MaskedSteps};
use crate::core::check;
use crate::core::kl::KlEstimator;
use crate::core::logprobs::token_log_probs;
use crate::core::masked::LossAgg;
use crate::core::ppo::{policy_loss, value_loss, PolicyLossConfig, ValueLossConfig};
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

// ---------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------

fn from_rows(rows: &[Vec<f64>]) -> Tensor {
    let cols = rows.first().map_or(0, |r| r.len()) as i64;
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, cols])
}

fn grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// The problem
// ---------------------------------------------------------------------------------------------------

/// The tabular problem: sizes and how θ and μ are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemConfig {
    /// T: decisions per episode; the state is the step index t (a fixed-length "response"). 1..=32.
    pub horizon: usize,
    /// A: actions per step (a tiny vocabulary). 2..=32.
    pub n_actions: usize,
    /// Common offset of every mean reward μ[t, a]: the part of the return a baseline removes.
    pub reward_mean: f64,
    /// Standard deviation of μ[t, a] around `reward_mean` (drawn once from `seed`).
    pub reward_spread: f64,
    /// σ: per-step reward noise, `r_t = μ[t, a_t] + σ·ε_t`.
    pub reward_noise: f64,
    /// Standard deviation of the policy logits θ[t, a] (drawn once from `seed`).
    pub logit_scale: f64,
    /// Seed of θ and μ.
    pub seed: i64,
}

impl Default for ProblemConfig {
    fn default() -> Self {
        ProblemConfig {
            horizon: 5,
            n_actions: 4,
            reward_mean: 1.0,
            reward_spread: 0.5,
            reward_noise: 0.5,
            logit_scale: 0.5,
            seed: 0,
        }
    }
}

impl ProblemConfig {
    fn validate(&self) -> Result<()> {
        check::count_in("horizon", self.horizon, 1, 32)?;
        check::count_in("n_actions", self.n_actions, 2, 32)?;
        check::finite_scalar("reward_mean", self.reward_mean)?;
        check::non_negative("reward_spread", self.reward_spread)?;
        check::non_negative("reward_noise", self.reward_noise)?;
        check::non_negative("logit_scale", self.logit_scale)?;
        Ok(())
    }
}

/// A solved instance: parameters, policy, exact values, exact objective and gradient.
/// Matrices are row-per-step: `x[t][a]`, shape (T, A).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularProblem {
    pub horizon: usize,
    pub n_actions: usize,
    /// θ (T, A): policy logits.
    pub theta: Vec<Vec<f64>>,
    /// μ (T, A): mean reward of action a at step t.
    pub mu: Vec<Vec<f64>>,
    /// σ: reward noise.
    pub reward_noise: f64,
    /// π (T, A): `softmax(θ[t])`.
    pub policy: Vec<Vec<f64>>,
    /// V_t (T): expected reward-to-go `Σ_{t'≥t} Σ_a π_{t'}(a) μ[t', a]` — the state value.
    pub values: Vec<f64>,
    /// J(θ) = V_0.
    pub objective: f64,
    /// ∇_θ J (T, A), by autograd on the closed-form J.
    pub gradient: Vec<Vec<f64>>,
}

impl TabularProblem {
    /// Solve the problem with logits `theta` and mean rewards `mu` (both (T, A)).
    pub fn new(theta: Vec<Vec<f64>>, mu: Vec<Vec<f64>>, reward_noise: f64) -> Result<Self> {
        let t = theta.len();
        let a = theta.first().map_or(0, |r| r.len());
        check::count_in("theta rows (T)", t, 1, 32)?;
        check::count_in("theta columns (A)", a, 2, 32)?;
        for (name, m) in [("theta", &theta), ("mu", &mu)] {
            if m.len() != t || m.iter().any(|r| r.len() != a) {
                return Err(RlhfError::shape(
                    name,
                    vec![m.len() as i64, m.first().map_or(0, |r| r.len()) as i64],
                    format!("[{t}, {a}] with equal-length rows"),
                ));
            }
            if m.iter().flatten().any(|x| !x.is_finite()) {
                return Err(RlhfError::NonFinite {
                    arg: name.into(),
                    count: m.iter().flatten().filter(|x| !x.is_finite()).count() as i64,
                });
            }
        }
        check::non_negative("reward_noise", reward_noise)?;
        let th = from_rows(&theta);
        let mu_t = from_rows(&mu);
        let pi = th.softmax(-1, Kind::Double);
        let per_step = (&pi * &mu_t).sum_dim_intlist(&[-1i64][..], false, Kind::Double);
        // V_t = Σ_{t'≥t} m_{t'}: reverse cumulative sum.
        let values = per_step.flip([0]).cumsum(0, Kind::Double).flip([0]);
        let (objective, gradient) = exact_objective_and_gradient(&th, &mu_t)?;
        Ok(TabularProblem {
            horizon: t,
            n_actions: a,
            theta,
            mu,
            reward_noise,
            policy: to_rows(&pi)?,
            values: to_vec(&values)?,
            objective,
            gradient: to_rows(&gradient)?,
        })
    }

    /// θ as a (T, A) f64 tensor.
    pub fn theta_tensor(&self) -> Tensor {
        from_rows(&self.theta)
    }

    /// μ as a (T, A) f64 tensor.
    pub fn mu_tensor(&self) -> Tensor {
        from_rows(&self.mu)
    }

    /// ∇J flattened row-major (T·A).
    pub fn gradient_flat(&self) -> Vec<f64> {
        self.gradient.iter().flatten().copied().collect()
    }
}

/// `J(θ) = Σ_{t,a} softmax(θ)[t,a]·μ[t,a]` and `∇_θ J` by autograd (f64). Shapes (T, A) → (scalar, (T, A)).
fn exact_objective_and_gradient(theta: &Tensor, mu: &Tensor) -> Result<(f64, Tensor)> {
    let th = theta.detach().copy().set_requires_grad(true);
    let j = (th.softmax(-1, Kind::Double) * mu).sum(Kind::Double);
    let g = Tensor::f_run_backward(&[&j], &[&th], false, false)?;
    Ok((scalar(&j)?, g[0].detach()))
}

/// Draw θ ~ `logit_scale`·N(0, 1) and μ ~ `reward_mean` + `reward_spread`·N(0, 1) from `cfg.seed`, and solve.
pub fn build_problem(cfg: &ProblemConfig) -> Result<TabularProblem> {
    cfg.validate()?;
    tch::manual_seed(cfg.seed);
    let shape = [cfg.horizon as i64, cfg.n_actions as i64];
    let theta = Tensor::randn(shape, F64) * cfg.logit_scale;
    let mu = Tensor::randn(shape, F64) * cfg.reward_spread + cfg.reward_mean;
    TabularProblem::new(to_rows(&theta)?, to_rows(&mu)?, cfg.reward_noise)
}

/// N sampled episodes.
#[derive(Debug)]
pub struct Episodes {
    /// (N, T) int64 actions a_t.
    pub actions: Tensor,
    /// (N, T) f64 rewards r_t.
    pub rewards: Tensor,
}

/// Sample `n` episodes from softmax(θ) (θ (T, A)) with rewards `μ[t, a_t] + σ·ε`; uses the global RNG.
fn sample(theta: &Tensor, mu: &Tensor, sigma: f64, n: i64) -> Result<Episodes> {
    let (t, a) = theta.size2()?;
    let probs = theta.softmax(-1, Kind::Double);
    let actions = probs.f_multinomial(n, true)?.transpose(0, 1).contiguous();
    let means = mu
        .unsqueeze(0)
        .expand([n, t, a], false)
        .gather(2, &actions.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let rewards = means + Tensor::randn([n, t], F64) * sigma;
    Ok(Episodes { actions, rewards })
}

/// Sample `n_episodes` episodes of `problem` after `tch::manual_seed(seed)`.
pub fn sample_episodes(problem: &TabularProblem, n_episodes: usize, seed: i64) -> Result<Episodes> {
    check::count_in("n_episodes", n_episodes, 1, 1 << 20)?;
    tch::manual_seed(seed);
    sample(
        &problem.theta_tensor(),
        &problem.mu_tensor(),
        problem.reward_noise,
        n_episodes as i64,
    )
}

// ---------------------------------------------------------------------------------------------------
// Score-function estimators
// ---------------------------------------------------------------------------------------------------

/// The weight `w_t` multiplying `∇_θ log π_t(a_t)` in `ĝ = Σ_t ∇_θ log π_t(a_t)·w_t` (seed 000 §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// `w_t = R(τ) = Σ_{t'} r_{t'}` — REINFORCE as first written (Williams 1992).
    FullReturn,
    /// `w_t = G_t = Σ_{t'≥t} r_{t'}` — "rewards to go" (seed 000 §1.1).
    RewardToGo,
    /// `w_t = G_t − mean of the other K−1 episodes' G_t` within groups of K — a baseline estimated from
    /// the batch (RLOO, Ahmadian et al. 2024 eq. 6, applied per step).
    LeaveOneOutBaseline,
    /// `w_t = G_t − V(s_t)` with the exact state value — the baseline of seed 000 §1.1.
    ValueBaseline,
    /// `w_t = A(s_t, a_t) = Q(s_t, a_t) − V(s_t) = μ[t, a_t] − E_{π_t} μ[t, ·]` — the Q/advantage form
    /// of seed 000 §1.1 with the exact advantage.
    TrueAdvantage,
}

impl Estimator {
    /// All estimators, in decreasing order of variance.
    pub const ALL: [Estimator; 5] = [
        Estimator::FullReturn,
        Estimator::RewardToGo,
        Estimator::LeaveOneOutBaseline,
        Estimator::ValueBaseline,
        Estimator::TrueAdvantage,
    ];

    /// A short label for tables and legends.
    pub fn label(&self) -> &'static str {
        match self {
            Estimator::FullReturn => "full return R(τ)",
            Estimator::RewardToGo => "reward-to-go G_t",
            Estimator::LeaveOneOutBaseline => "G_t − leave-one-out mean",
            Estimator::ValueBaseline => "G_t − V(s_t)",
            Estimator::TrueAdvantage => "A(s_t, a_t) = Q − V",
        }
    }
}

/// The weights `w_t` (N, T) of `estimator` for the sampled episodes (detached).
/// `group_size` K is used by [`Estimator::LeaveOneOutBaseline`] only (N must be a multiple of K).
pub fn estimator_weights(
    problem: &TabularProblem,
    episodes: &Episodes,
    estimator: Estimator,
    group_size: usize,
) -> Result<Tensor> {
    let (n, t) = episodes.rewards.size2()?;
    if t != problem.horizon as i64 || episodes.actions.size() != [n, t] {
        return Err(RlhfError::shape(
            "episodes",
            episodes.actions.size(),
            format!("[N, {}] actions and rewards", problem.horizon),
        ));
    }
    let mask = Tensor::ones([n, t], F64);
    // Rewards-to-go G_t = Σ_{t'≥t} r_{t'} (γ = 1), the core library's returns.
    let rtg = || discounted_returns(&episodes.rewards, &mask, 1.0, MaskedSteps::Zero);
    let w = match estimator {
        Estimator::FullReturn => rtg()?.narrow(1, 0, 1).expand([n, t], false).contiguous(),
        Estimator::RewardToGo => rtg()?,
        Estimator::ValueBaseline => rtg()? - Tensor::from_slice(&problem.values).unsqueeze(0),
        Estimator::LeaveOneOutBaseline => {
            let k = group_size as i64;
            if group_size < 2 || n % k != 0 {
                return Err(RlhfError::invalid(
                    "group_size",
                    format!(
                        "the leave-one-out baseline needs K >= 2 dividing N = {n}, got K = {k}"
                    ),
                ));
            }
            // (N, T) → groups (N/K, K, T) → (N/K·T, K): one RLOO group per (group, step).
            let g = rtg()?;
            let grouped = g
                .view([n / k, k, t])
                .permute([0, 2, 1])
                .reshape([n / k * t, k]);
            rloo_advantages(&grouped)?
                .view([n / k, t, k])
                .permute([0, 2, 1])
                .reshape([n, t])
        }
        Estimator::TrueAdvantage => {
            let mu = problem.mu_tensor();
            let a = mu.size()[1];
            let picked = mu
                .unsqueeze(0)
                .expand([n, t, a], false)
                .gather(2, &episodes.actions.unsqueeze(-1), false)
                .squeeze_dim(-1);
            let pi = from_rows(&problem.policy);
            let m = (&pi * &mu).sum_dim_intlist(&[-1i64][..], false, Kind::Double);
            picked - m.unsqueeze(0)
        }
    };
    Ok(w.detach())
}

/// Per-episode gradient estimates (N, T, A): `ĝ_n = ∇_θ Σ_t log π_t(a_{n,t})·w_{n,t}`, by autograd.
///
/// θ is replicated into an (N, T, A) leaf so one backward pass yields every episode's own gradient;
/// `log π_t(a_t)` comes from [`crate::core::logprobs::token_log_probs`] on logits θ (the LLM's
/// `logprobs_from_logits`), so the row t of `ĝ_n` is `(onehot(a_t) − π_t)·w_t`.
pub fn per_episode_gradients(
    problem: &TabularProblem,
    episodes: &Episodes,
    estimator: Estimator,
    group_size: usize,
) -> Result<Tensor> {
    let w = estimator_weights(problem, episodes, estimator, group_size)?;
    let (n, t) = w.size2()?;
    let a = problem.n_actions as i64;
    let theta_rep = problem
        .theta_tensor()
        .unsqueeze(0)
        .expand([n, t, a], false)
        .contiguous()
        .set_requires_grad(true);
    let mask = Tensor::ones([n, t], F64);
    let logp = token_log_probs(&theta_rep, &episodes.actions, &mask)?;
    let surrogate = (logp * &w).sum(Kind::Double);
    let g = Tensor::f_run_backward(&[&surrogate], &[&theta_rep], false, false)?;
    Ok(g[0].detach())
}

/// Exact per-episode total variance `tr Cov(ĝ) = E‖ĝ‖² − ‖∇J‖²` of one estimator, in closed form.
///
/// With `s_t(a) = onehot(a) − π_t` (so `‖s_t(a)‖² = 1 − 2π_t(a) + Σπ_t²`), `ĝ` has rows `s_t(a_t)·w_t`
/// and `E‖ĝ‖² = Σ_t E[‖s_t‖² w_t²]`. Every weight is `w_t = r_t − c_t + O_t` with a constant `c_t` and a
/// sum `O_t` of other steps' rewards, independent of `a_t`, so
/// `E[‖s_t‖² w_t²] = E_a[‖s_t‖²((μ−c)² + σ² + 2(μ−c)E O + E O²)]`. The leave-one-out baseline of K adds
/// `E_a‖s_t‖²·Var(G_t)/(K−1)`; the true advantage is deterministic given a_t.
pub fn exact_total_variance(
    problem: &TabularProblem,
    estimator: Estimator,
    group_size: usize,
) -> Result<f64> {
    if estimator == Estimator::LeaveOneOutBaseline && group_size < 2 {
        return Err(RlhfError::out_of_range(
            "group_size",
            group_size as f64,
            ">= 2",
        ));
    }
    let s2 = problem.reward_noise * problem.reward_noise;
    let steps = problem.horizon;
    // Per step: mean m_t and variance v_t of r_t under π_t.
    let m: Vec<f64> = (0..steps)
        .map(|t| dot(&problem.policy[t], &problem.mu[t]))
        .collect();
    let v: Vec<f64> = (0..steps)
        .map(|t| {
            let second: f64 = (0..problem.n_actions)
                .map(|a| problem.policy[t][a] * problem.mu[t][a].powi(2))
                .sum::<f64>()
                + s2;
            second - m[t] * m[t]
        })
        .collect();
    let mut total = 0.0;
    for t in 0..steps {
        let pi = &problem.policy[t];
        let pi2: f64 = pi.iter().map(|p| p * p).sum();
        let score2 = |a: usize| 1.0 - 2.0 * pi[a] + pi2;
        let e_score2: f64 = (0..problem.n_actions).map(|a| pi[a] * score2(a)).sum();
        // O_t: the other rewards in w_t (past + future for R, future for G_t).
        let (others_mean, others_var): (f64, f64) = match estimator {
            Estimator::FullReturn => (
                (0..steps).filter(|&u| u != t).map(|u| m[u]).sum(),
                (0..steps).filter(|&u| u != t).map(|u| v[u]).sum(),
            ),
            _ => (m[t + 1..].iter().sum(), v[t + 1..].iter().sum()),
        };
        let others_second = others_var + others_mean * others_mean;
        let c = match estimator {
            Estimator::FullReturn | Estimator::RewardToGo => 0.0,
            Estimator::ValueBaseline | Estimator::LeaveOneOutBaseline => problem.values[t],
            Estimator::TrueAdvantage => m[t],
        };
        let step: f64 = match estimator {
            Estimator::TrueAdvantage => (0..problem.n_actions)
                .map(|a| pi[a] * score2(a) * (problem.mu[t][a] - c).powi(2))
                .sum(),
            _ => (0..problem.n_actions)
                .map(|a| {
                    let d = problem.mu[t][a] - c;
                    pi[a] * score2(a) * (d * d + s2 + 2.0 * d * others_mean + others_second)
                })
                .sum(),
        };
        let extra = match estimator {
            Estimator::LeaveOneOutBaseline => {
                let var_g: f64 = v[t..].iter().sum();
                e_score2 * var_g / (group_size as f64 - 1.0)
            }
            _ => 0.0,
        };
        total += step + extra;
    }
    let grad_sq: f64 = problem.gradient_flat().iter().map(|g| g * g).sum();
    Ok(total - grad_sq)
}

/// Exact `tr Cov` of the mean of a batch of `batch_size` episodes. Independent estimators: `tr Cov/B`.
/// Leave-one-out baseline computed inside the batch (K = B): episodes are coupled through the baseline,
/// `tr Cov(ĝ_i, ĝ_j) = ‖∇J‖²/(B−1)²`, so the batch mean has `tr Cov_B/B + ‖∇J‖²/(B(B−1))`.
pub fn exact_batch_mean_variance(
    problem: &TabularProblem,
    estimator: Estimator,
    batch_size: usize,
) -> Result<f64> {
    check::count_in("batch_size", batch_size, 1, 1 << 20)?;
    let b = batch_size as f64;
    match estimator {
        Estimator::LeaveOneOutBaseline => {
            let per = exact_total_variance(problem, estimator, batch_size)?;
            let grad_sq: f64 = problem.gradient_flat().iter().map(|g| g * g).sum();
            Ok(per / b + grad_sq / (b * (b - 1.0)))
        }
        _ => Ok(exact_total_variance(problem, estimator, 2)? / b),
    }
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Settings of [`estimator_study`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorConfig {
    pub problem: ProblemConfig,
    /// N: episodes in the Monte-Carlo pool, a multiple of `group_size` (for each batch size B the
    /// last incomplete batch is dropped).
    pub n_episodes: usize,
    /// K: group size of the leave-one-out baseline in the summary table (n samples per prompt in
    /// RLOO/GRPO).
    pub group_size: usize,
    /// Batch sizes B of the variance-vs-batch-size study (each in [2, n_episodes/16]).
    pub batch_sizes: Vec<usize>,
    /// Seed of the sampling.
    pub seed: i64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            problem: ProblemConfig::default(),
            n_episodes: 1 << 15,
            group_size: 8,
            batch_sizes: vec![2, 4, 8, 16, 32, 64, 128, 256],
            seed: 1,
        }
    }
}

impl EstimatorConfig {
    fn validate(&self) -> Result<()> {
        self.problem.validate()?;
        check::count_in("n_episodes", self.n_episodes, 64, 1 << 18)?;
        check::count_in("group_size", self.group_size, 2, self.n_episodes / 2)?;
        if self.n_episodes % self.group_size != 0 {
            return Err(RlhfError::invalid(
                "group_size",
                format!(
                    "must divide n_episodes = {}, got {}",
                    self.n_episodes, self.group_size
                ),
            ));
        }
        if self.batch_sizes.is_empty() {
            return Err(RlhfError::invalid("batch_sizes", "empty"));
        }
        for &b in &self.batch_sizes {
            check::count_in("batch_sizes", b, 2, self.n_episodes / 16)?;
        }
        Ok(())
    }
}

/// One row of the estimator table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorStats {
    pub estimator: Estimator,
    pub name: String,
    /// `‖ḡ − ∇J‖` over the N-episode pool.
    pub bias_norm: f64,
    /// `√(tr Ĉov/N)`: the typical size of `‖ḡ − ∇J‖` for an unbiased estimator.
    pub mc_standard_error: f64,
    /// `bias_norm / mc_standard_error` (≈ 1 when unbiased; a biased estimator grows like √N).
    pub bias_in_standard_errors: f64,
    /// `max_i |ḡ_i − ∇J_i| / √(Ĉov_ii/N)` over the T·A coordinates.
    pub max_abs_z: f64,
    /// Measured per-episode `tr Cov(ĝ)` (unbiased sample covariance).
    pub total_variance: f64,
    /// Closed form [`exact_total_variance`].
    pub total_variance_exact: f64,
    /// `total_variance / total_variance(full return)`.
    pub variance_ratio: f64,
}

/// Variance of the mean of a batch of B episodes, measured over `n_batches` disjoint batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchVarianceRow {
    pub estimator: Estimator,
    pub name: String,
    pub batch_size: usize,
    pub n_batches: usize,
    /// `tr Ĉov` of the batch-mean gradient across batches.
    pub variance_of_mean: f64,
    /// [`exact_batch_mean_variance`].
    pub variance_of_mean_exact: f64,
}

/// Output of [`estimator_study`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorStudy {
    pub problem: TabularProblem,
    pub n_episodes: usize,
    pub group_size: usize,
    /// Mean over the pool of each estimator, flattened (T·A), in [`Estimator::ALL`] order.
    pub mean_gradients: Vec<Vec<f64>>,
    pub stats: Vec<EstimatorStats>,
    pub batch_rows: Vec<BatchVarianceRow>,
}

/// Mean (D), per-coordinate unbiased variance (D) of rows of `g` (N, D).
fn mean_and_var(g: &Tensor) -> (Tensor, Tensor) {
    let mean = g.mean_dim(&[0i64][..], false, Kind::Double);
    let var = g.var_dim(&[0i64][..], true, false);
    (mean, var)
}

/// Sample N episodes once and evaluate every [`Estimator`] on them: bias, variance (measured and exact),
/// and the variance of batch means for each batch size.
pub fn estimator_study(cfg: &EstimatorConfig) -> Result<EstimatorStudy> {
    cfg.validate()?;
    let problem = build_problem(&cfg.problem)?;
    tch::manual_seed(cfg.seed);
    let episodes = sample(
        &problem.theta_tensor(),
        &problem.mu_tensor(),
        problem.reward_noise,
        cfg.n_episodes as i64,
    )?;
    let n = cfg.n_episodes as i64;
    let d = (problem.horizon * problem.n_actions) as i64;
    let grad_true = Tensor::from_slice(&problem.gradient_flat());

    let mut stats = Vec::new();
    let mut mean_gradients = Vec::new();
    let mut batch_rows = Vec::new();
    let mut full_variance = f64::NAN;
    for est in Estimator::ALL {
        let g = per_episode_gradients(&problem, &episodes, est, cfg.group_size)?.view([n, d]);
        let (mean, var) = mean_and_var(&g);
        let err = &mean - &grad_true;
        let total_variance = scalar(&var.sum(Kind::Double))?;
        let se = (total_variance / n as f64).sqrt();
        let bias_norm = scalar(&err.norm())?;
        let z = err.abs() / (&var / n as f64).sqrt().clamp_min(1e-300);
        if est == Estimator::FullReturn {
            full_variance = total_variance;
        }
        stats.push(EstimatorStats {
            estimator: est,
            name: est.label().to_string(),
            bias_norm,
            mc_standard_error: se,
            bias_in_standard_errors: bias_norm / se,
            max_abs_z: scalar(&z.max())?,
            total_variance,
            total_variance_exact: exact_total_variance(&problem, est, cfg.group_size)?,
            variance_ratio: total_variance / full_variance,
        });
        mean_gradients.push(to_vec(&mean)?);

        for &b in &cfg.batch_sizes {
            let nb = n / b as i64;
            let used = nb * b as i64;
            let gb = if est == Estimator::LeaveOneOutBaseline {
                // The baseline is computed inside each batch (K = B), as RLOO does.
                let sub = Episodes {
                    actions: episodes.actions.narrow(0, 0, used),
                    rewards: episodes.rewards.narrow(0, 0, used),
                };
                per_episode_gradients(&problem, &sub, est, b)?.view([used, d])
            } else {
                g.narrow(0, 0, used)
            };
            let batch_means = gb
                .view([nb, b as i64, d])
                .mean_dim(&[1i64][..], false, Kind::Double);
            let (_, var_b) = mean_and_var(&batch_means);
            batch_rows.push(BatchVarianceRow {
                estimator: est,
                name: est.label().to_string(),
                batch_size: b,
                n_batches: nb as usize,
                variance_of_mean: scalar(&var_b.sum(Kind::Double))?,
                variance_of_mean_exact: exact_batch_mean_variance(&problem, est, b)?,
            });
        }
    }
    Ok(EstimatorStudy {
        problem,
        n_episodes: cfg.n_episodes,
        group_size: cfg.group_size,
        mean_gradients,
        stats,
        batch_rows,
    })
}

/// Result of [`ppo_gradient_at_ratio_one`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurrogateCheck {
    /// Batch-mean REINFORCE estimate with `w_t = G_t − V(s_t)`, flattened (T·A).
    pub reinforce_gradient: Vec<f64>,
    /// `−∇_θ` of `policy_loss` (`SeqMeanTokenSum`) at `π_old = π` on the same batch and advantages.
    pub ppo_gradient: Vec<f64>,
    /// `max_i |reinforce_i − ppo_i|`.
    pub max_abs_diff: f64,
    /// `‖∇ policy_loss(TokenMean)‖ / ‖∇ policy_loss(SeqMeanTokenSum)‖` (= 1/T: TRL/verl's token mean
    /// divides the same gradient by the number of tokens).
    pub token_mean_scale: f64,
}

/// The first PPO gradient step is REINFORCE: with `old_log_probs = log_probs.detach()` the ratio is 1,
/// no clip is active, and `∇ policy_loss = −(1/N) Σ_n Σ_t ∇log π(a_t)·A_t` (aggregation
/// `SeqMeanTokenSum`; seed 000 §1.2, the importance-sampled objective's gradient at θ = θ_old).
pub fn ppo_gradient_at_ratio_one(
    cfg: &ProblemConfig,
    n_episodes: usize,
    seed: i64,
) -> Result<SurrogateCheck> {
    let problem = build_problem(cfg)?;
    let episodes = sample_episodes(&problem, n_episodes, seed)?;
    let (n, t) = episodes.actions.size2()?;
    let d = (problem.horizon * problem.n_actions) as i64;
    let reinforce = per_episode_gradients(&problem, &episodes, Estimator::ValueBaseline, 2)?
        .view([n, d])
        .mean_dim(&[0i64][..], false, Kind::Double);
    let adv = estimator_weights(&problem, &episodes, Estimator::ValueBaseline, 2)?;
    let mask = Tensor::ones([n, t], F64);
    let grad_for = |agg: LossAgg| -> Result<Tensor> {
        let theta = problem.theta_tensor().set_requires_grad(true);
        let logits = theta
            .unsqueeze(0)
            .expand([n, t, problem.n_actions as i64], false);
        let logp = token_log_probs(&logits, &episodes.actions, &mask)?;
        let old = logp.detach();
        let out = policy_loss(
            &logp,
            &old,
            &adv,
            &mask,
            &PolicyLossConfig {
                agg,
                ..PolicyLossConfig::default()
            },
        )?;
        let g = Tensor::f_run_backward(&[&out.loss], &[&theta], false, false)?;
        Ok(g[0].detach().view([d]))
    };
    let ppo = -grad_for(LossAgg::SeqMeanTokenSum)?;
    let token_mean = grad_for(LossAgg::TokenMean)?;
    Ok(SurrogateCheck {
        max_abs_diff: scalar(&(&reinforce - &ppo).abs().max())?,
        token_mean_scale: scalar(&token_mean.norm())? / scalar(&ppo.norm())?,
        reinforce_gradient: to_vec(&reinforce)?,
        ppo_gradient: to_vec(&ppo)?,
    })
}

// ---------------------------------------------------------------------------------------------------
// Importance sampling
// ---------------------------------------------------------------------------------------------------

/// Settings of [`importance_sampling_study`]: target policy θ (from `problem`), behaviour (old) policies
/// `θ_old = θ + α·Δ`, Δ ~ `direction_scale`·N(0, 1) of shape (T, A) drawn from `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsConfig {
    pub problem: ProblemConfig,
    /// α values (≥ 0; KL(π_old‖π_θ) grows with α along the line).
    pub alphas: Vec<f64>,
    pub direction_scale: f64,
    /// Episodes sampled from each π_old.
    pub n_episodes: usize,
    pub seed: i64,
}

impl Default for IsConfig {
    fn default() -> Self {
        IsConfig {
            problem: ProblemConfig::default(),
            alphas: vec![0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0],
            direction_scale: 1.0,
            n_episodes: 1 << 16,
            seed: 2,
        }
    }
}

/// One behaviour policy of the importance-sampling sweep: estimates of J(θ) from π_old's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsRow {
    pub alpha: f64,
    /// Exact `KL(π_old ‖ π_θ) = Σ_t Σ_a π_old log(π_old/π_θ)` (trajectory KL).
    pub kl_old_target: f64,
    /// `approx_kl` that `policy_loss` logs (k3, per-token mean) × T, from the samples.
    pub approx_kl_k3: f64,
    /// `χ²(π_θ ‖ π_old)` of the trajectory: `E_old[ρ(τ)²] − 1 = Π_t(1 + χ²_t) − 1`.
    pub chi2_trajectory: f64,
    /// Exact J(θ).
    pub exact_objective: f64,
    /// `mean_n Σ_t ρ_t r_t`, `ρ_t = π_θ(a_t)/π_old(a_t)` (the per-token ratio of `policy_loss`).
    pub per_step_estimate: f64,
    pub per_step_std_error: f64,
    /// Measured per-episode variance of `Σ_t ρ_t r_t`.
    pub per_step_variance: f64,
    /// `Σ_t (E_old[ρ_t²(μ² + σ²)] − m_t²)`.
    pub per_step_variance_exact: f64,
    /// `mean_n ρ(τ) R(τ)`, `ρ(τ) = Π_t ρ_t`.
    pub trajectory_estimate: f64,
    pub trajectory_std_error: f64,
    pub trajectory_variance: f64,
    /// `E_old[ρ(τ)² R(τ)²] − J²`.
    pub trajectory_variance_exact: f64,
    /// Kish effective sample size of the trajectory weights over N: `(Σρ)²/(N Σρ²)`.
    pub ess_fraction: f64,
    /// `1/E_old[ρ²] = 1/(1 + χ²)`.
    pub ess_fraction_exact: f64,
}

/// Estimate J(θ) from samples of each behaviour policy π_old(α), per-step and trajectory ratios
/// (seed 000 §1.2: `E_{τ~π_θ}[f] = E_{τ~π_old}[(π_θ/π_old)·f]`). In this problem the state
/// distribution does not depend on the policy, so the per-step ratio is exact; in an LLM it is PPO's
/// approximation that the trust region keeps valid.
pub fn importance_sampling_study(cfg: &IsConfig) -> Result<Vec<IsRow>> {
    cfg.problem.validate()?;
    if cfg.alphas.is_empty() {
        return Err(RlhfError::invalid("alphas", "empty"));
    }
    for &a in &cfg.alphas {
        check::non_negative("alphas", a)?;
    }
    check::non_negative("direction_scale", cfg.direction_scale)?;
    check::count_in("n_episodes", cfg.n_episodes, 2, 1 << 18)?;
    let problem = build_problem(&cfg.problem)?;
    tch::manual_seed(cfg.seed);
    let (t, a) = (problem.horizon as i64, problem.n_actions as i64);
    let direction = Tensor::randn([t, a], F64) * cfg.direction_scale;
    let theta = problem.theta_tensor();
    let mu = problem.mu_tensor();
    let sigma = problem.reward_noise;
    let n = cfg.n_episodes as i64;
    let mask = Tensor::ones([n, t], F64);
    let loss_cfg = PolicyLossConfig {
        approx_kl: KlEstimator::K3,
        ..PolicyLossConfig::default()
    };
    let mut rows = Vec::new();
    for &alpha in &cfg.alphas {
        let theta_old = &theta + &direction * alpha;
        let ep = sample(&theta_old, &mu, sigma, n)?;
        let logits = |th: &Tensor| th.unsqueeze(0).expand([n, t, a], false);
        let logp = token_log_probs(&logits(&theta), &ep.actions, &mask)?;
        let logp_old = token_log_probs(&logits(&theta_old), &ep.actions, &mask)?;
        // The ratio and the logged approx-KL exactly as PPO computes them.
        let out = policy_loss(&logp, &logp_old, &ep.rewards, &mask, &loss_cfg)?;
        let per_step = (&out.ratio * &ep.rewards).sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let rho = out.ratio.prod_dim_int(1, false, Kind::Double);
        let ret = ep.rewards.sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let traj = &rho * &ret;
        let stat = |x: &Tensor| -> Result<(f64, f64, f64)> {
            let mean = scalar(&x.mean(Kind::Double))?;
            let var = scalar(&x.var(true))?;
            Ok((mean, var, (var / n as f64).sqrt()))
        };
        let (ps_mean, ps_var, ps_se) = stat(&per_step)?;
        let (tr_mean, tr_var, tr_se) = stat(&traj)?;
        let ess = scalar(&rho.sum(Kind::Double))?.powi(2)
            / (n as f64 * scalar(&rho.square().sum(Kind::Double))?);
        let exact = is_exact(&problem, &to_rows(&theta_old)?)?;
        rows.push(IsRow {
            alpha,
            kl_old_target: exact.kl,
            approx_kl_k3: scalar(&out.approx_kl)? * t as f64,
            chi2_trajectory: exact.chi2_trajectory,
            exact_objective: problem.objective,
            per_step_estimate: ps_mean,
            per_step_std_error: ps_se,
            per_step_variance: ps_var,
            per_step_variance_exact: exact.per_step_variance,
            trajectory_estimate: tr_mean,
            trajectory_std_error: tr_se,
            trajectory_variance: tr_var,
            trajectory_variance_exact: exact.trajectory_variance,
            ess_fraction: ess,
            ess_fraction_exact: 1.0 / (1.0 + exact.chi2_trajectory),
        });
    }
    Ok(rows)
}

struct IsExact {
    kl: f64,
    chi2_trajectory: f64,
    per_step_variance: f64,
    trajectory_variance: f64,
}

/// Closed forms of the IS sweep for behaviour logits `theta_old` (T, A). Per step t, with
/// `w_t(a) = π_t(a)²/π_old,t(a)` and `c_t = Σ_a w_t(a) = 1 + χ²_t`: `E_old[ρ(τ)² f] = Π_t c_t · E_w̃[f]`
/// under the normalised per-step weights `w̃_t = w_t/c_t` (steps are independent).
fn is_exact(problem: &TabularProblem, theta_old: &[Vec<f64>]) -> Result<IsExact> {
    let old = TabularProblem::new(theta_old.to_vec(), problem.mu.clone(), problem.reward_noise)?;
    let s2 = problem.reward_noise.powi(2);
    let (mut kl, mut prod_c, mut per_step_var) = (0.0, 1.0, 0.0);
    let (mut w_mean, mut w_var) = (0.0, 0.0);
    for t in 0..problem.horizon {
        let (p, q, mu) = (&problem.policy[t], &old.policy[t], &problem.mu[t]);
        let m_t = dot(p, mu);
        let mut c = 0.0;
        let (mut first, mut second) = (0.0, 0.0);
        for a in 0..problem.n_actions {
            kl += q[a] * (q[a] / p[a]).ln();
            let w = p[a] * p[a] / q[a];
            c += w;
            first += w * mu[a];
            second += w * (mu[a] * mu[a] + s2);
        }
        // E_old[ρ_t² r_t²] − (E_old[ρ_t r_t])² with E_old[ρ_t r_t] = m_t.
        per_step_var += second - m_t * m_t;
        prod_c *= c;
        let (mean_t, second_t) = (first / c, second / c);
        w_mean += mean_t;
        w_var += second_t - mean_t * mean_t;
    }
    let e_rho2_r2 = prod_c * (w_var + w_mean * w_mean);
    Ok(IsExact {
        kl,
        chi2_trajectory: prod_c - 1.0,
        per_step_variance: per_step_var,
        trajectory_variance: e_rho2_r2 - problem.objective.powi(2),
    })
}

// ---------------------------------------------------------------------------------------------------
// PPO clipped objective and value loss
// ---------------------------------------------------------------------------------------------------

/// Settings of [`clip_curves`] and [`clip_surface`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// ε (`clip_low = clip_high`): PPO paper, TRL, OpenRLHF 0.2.
    pub clip_eps: f64,
    /// Dual-clip c > 1 (Ye et al. 2019; verl `clip_ratio_c = 3`): an extra A < 0 curve; `None` omits it.
    pub dual_clip: Option<f64>,
    /// Ratio grid `[ratio_min, ratio_max]` (ratio_min > 0) with `n_ratios` points.
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub n_ratios: usize,
    /// |A| of the two curves (A = +advantage and A = −advantage).
    pub advantage: f64,
    /// Surface: advantages on `[−advantage_max, advantage_max]` with `n_advantages` points.
    pub advantage_max: f64,
    pub n_advantages: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            clip_eps: 0.2,
            dual_clip: Some(3.0),
            ratio_min: 0.01,
            ratio_max: 4.0,
            n_ratios: 400,
            advantage: 1.0,
            advantage_max: 1.0,
            n_advantages: 41,
        }
    }
}

impl ClipConfig {
    fn validate(&self) -> Result<()> {
        if !(self.clip_eps.is_finite() && self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return Err(RlhfError::out_of_range(
                "clip_eps",
                self.clip_eps,
                "in (0, 1)",
            ));
        }
        if let Some(c) = self.dual_clip {
            if !(c.is_finite() && c > 1.0) {
                return Err(RlhfError::out_of_range("dual_clip", c, "finite and > 1"));
            }
        }
        check::positive("ratio_min", self.ratio_min)?;
        check::finite_scalar("ratio_max", self.ratio_max)?;
        if self.ratio_max <= self.ratio_min {
            return Err(RlhfError::out_of_range(
                "ratio_max",
                self.ratio_max,
                &format!("> ratio_min = {}", self.ratio_min),
            ));
        }
        check::count_in("n_ratios", self.n_ratios, 2, 100_000)?;
        check::positive("advantage", self.advantage)?;
        check::positive("advantage_max", self.advantage_max)?;
        check::count_in("n_advantages", self.n_advantages, 2, 10_000)?;
        Ok(())
    }
}

/// PPO's clipped objective along the ratio axis for A > 0 and A < 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipCurves {
    pub clip_eps: f64,
    pub advantage: f64,
    pub ratios: Vec<f64>,
    /// `L^CLIP(r) = −policy_loss per token` with A = +advantage.
    pub objective_pos: Vec<f64>,
    /// Same with A = −advantage.
    pub objective_neg: Vec<f64>,
    /// A = −advantage with dual clip (`None` without `dual_clip`).
    pub objective_neg_dual: Option<Vec<f64>>,
    /// Unclipped surrogate `r·A` for reference (A > 0, A < 0).
    pub unclipped_pos: Vec<f64>,
    pub unclipped_neg: Vec<f64>,
    /// `dL^CLIP/dr` by autograd (A > 0, A < 0): A where the ratio term is active, 0 where clipped.
    pub slope_pos: Vec<f64>,
    pub slope_neg: Vec<f64>,
}

/// Per-token objective `−policy_loss` and its slope `d/dr` on ratios `r` (1, R) for advantages (1, R).
fn clip_objective(
    ratios: &Tensor,
    advantages: &Tensor,
    cfg: &PolicyLossConfig,
) -> Result<(Tensor, Tensor)> {
    let r = ratios.detach().copy().set_requires_grad(true);
    let log_probs = r.log();
    let old = log_probs.zeros_like().detach();
    let mask = Tensor::ones(r.size(), F64);
    let out = policy_loss(&log_probs, &old, advantages, &mask, cfg)?;
    let objective = -out.per_token;
    let g = Tensor::f_run_backward(&[&objective.sum(Kind::Double)], &[&r], false, false)?;
    Ok((objective.detach(), g[0].detach()))
}

fn clip_loss_config(eps: f64, dual_clip: Option<f64>) -> PolicyLossConfig {
    PolicyLossConfig {
        clip_low: eps,
        clip_high: eps,
        dual_clip,
        ..PolicyLossConfig::default()
    }
}

/// `L^CLIP(r) = min(r·A, clip(r, 1−ε, 1+ε)·A)` (Schulman et al. 2017 eq. 7; seed 000 §1.2, seed 003
/// `max(pg_losses, pg_losses2)` negated), evaluated by calling [`crate::core::ppo::policy_loss`] with
/// `log π = log r`, `log π_old = 0`.
pub fn clip_curves(cfg: &ClipConfig) -> Result<ClipCurves> {
    cfg.validate()?;
    let ratios = grid(cfg.ratio_min, cfg.ratio_max, cfg.n_ratios);
    let r = Tensor::from_slice(&ratios).unsqueeze(0);
    let a_pos = r.ones_like() * cfg.advantage;
    let a_neg = r.ones_like() * -cfg.advantage;
    let plain = clip_loss_config(cfg.clip_eps, None);
    let (obj_pos, slope_pos) = clip_objective(&r, &a_pos, &plain)?;
    let (obj_neg, slope_neg) = clip_objective(&r, &a_neg, &plain)?;
    let objective_neg_dual = match cfg.dual_clip {
        Some(c) => Some(to_vec(
            &clip_objective(&r, &a_neg, &clip_loss_config(cfg.clip_eps, Some(c)))?.0,
        )?),
        None => None,
    };
    Ok(ClipCurves {
        clip_eps: cfg.clip_eps,
        advantage: cfg.advantage,
        unclipped_pos: ratios.iter().map(|x| x * cfg.advantage).collect(),
        unclipped_neg: ratios.iter().map(|x| -x * cfg.advantage).collect(),
        ratios,
        objective_pos: to_vec(&obj_pos)?,
        objective_neg: to_vec(&obj_neg)?,
        objective_neg_dual,
        slope_pos: to_vec(&slope_pos)?,
        slope_neg: to_vec(&slope_neg)?,
    })
}

/// `L^CLIP` on a (advantage × ratio) grid, for a plotly `Surface`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipSurface {
    pub ratios: Vec<f64>,
    pub advantages: Vec<f64>,
    /// `objective[i][j] = L^CLIP(ratios[j]; advantages[i])` (rows = y = advantage, columns = x = ratio).
    pub objective: Vec<Vec<f64>>,
}

/// The clipped objective over ratio × advantage in one [`crate::core::ppo::policy_loss`] call on an
/// (n_advantages, n_ratios) batch. The dual clip is not applied here.
pub fn clip_surface(cfg: &ClipConfig) -> Result<ClipSurface> {
    cfg.validate()?;
    let ratios = grid(cfg.ratio_min, cfg.ratio_max, cfg.n_ratios);
    let advantages = grid(-cfg.advantage_max, cfg.advantage_max, cfg.n_advantages);
    let (na, nr) = (advantages.len() as i64, ratios.len() as i64);
    let r = Tensor::from_slice(&ratios)
        .unsqueeze(0)
        .expand([na, nr], false)
        .contiguous();
    let adv = Tensor::from_slice(&advantages)
        .unsqueeze(1)
        .expand([na, nr], false)
        .contiguous();
    let (obj, _) = clip_objective(&r, &adv, &clip_loss_config(cfg.clip_eps, None))?;
    Ok(ClipSurface {
        ratios,
        advantages,
        objective: to_rows(&obj)?,
    })
}

/// Settings of [`value_clip_curve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueClipConfig {
    /// V_old: the value the rollout recorded.
    pub old_value: f64,
    /// R: the return target.
    pub ret: f64,
    /// c: `cliprange_value` (TRL 0.2, verl 0.5).
    pub clip: f64,
    /// Grid of new predictions V on `[value_min, value_max]` with `n_points` points.
    pub value_min: f64,
    pub value_max: f64,
    pub n_points: usize,
}

impl Default for ValueClipConfig {
    fn default() -> Self {
        ValueClipConfig {
            old_value: 0.0,
            ret: 1.0,
            clip: 0.2,
            value_min: -1.0,
            value_max: 2.5,
            n_points: 351,
        }
    }
}

/// The per-token value loss as a function of the new prediction V.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueClipCurve {
    pub old_value: f64,
    pub ret: f64,
    pub clip: f64,
    pub values: Vec<f64>,
    /// `½·max((V − R)², (clip(V, V_old ± c) − R)²)` from [`crate::core::ppo::value_loss`].
    pub loss_clipped: Vec<f64>,
    /// `½·(V − R)²` (value_loss with `clip: None`).
    pub loss_unclipped: Vec<f64>,
    /// d loss/dV by autograd.
    pub grad_clipped: Vec<f64>,
    pub grad_unclipped: Vec<f64>,
    /// Closed-form flat region (zero gradient): `[V_old + c, 2R − V_old − c]` when `R > V_old + c`,
    /// `[2R − V_old + c, V_old − c]` when `R < V_old − c`, none otherwise.
    pub flat_region: Option<(f64, f64)>,
}

/// Clipped value loss (seed 003 `vf_losses2 = (vpredclipped − returns)²`, `max(vf_losses1, vf_losses2)`;
/// TRL / OpenRLHF / verl) along V for fixed V_old and R, from [`crate::core::ppo::value_loss`].
pub fn value_clip_curve(cfg: &ValueClipConfig) -> Result<ValueClipCurve> {
    check::finite_scalar("old_value", cfg.old_value)?;
    check::finite_scalar("ret", cfg.ret)?;
    check::positive("clip", cfg.clip)?;
    check::finite_scalar("value_min", cfg.value_min)?;
    check::finite_scalar("value_max", cfg.value_max)?;
    if cfg.value_max <= cfg.value_min {
        return Err(RlhfError::out_of_range(
            "value_max",
            cfg.value_max,
            &format!("> value_min = {}", cfg.value_min),
        ));
    }
    check::count_in("n_points", cfg.n_points, 2, 100_000)?;
    let values = grid(cfg.value_min, cfg.value_max, cfg.n_points);
    let v0 = Tensor::from_slice(&values).unsqueeze(0);
    let old = v0.ones_like() * cfg.old_value;
    let ret = v0.ones_like() * cfg.ret;
    let mask = v0.ones_like();
    let run = |clip: Option<f64>| -> Result<(Vec<f64>, Vec<f64>)> {
        let v = v0.detach().copy().set_requires_grad(true);
        let out = value_loss(
            &v,
            &old,
            &ret,
            &mask,
            &ValueLossConfig {
                clip,
                ..ValueLossConfig::default()
            },
        )?;
        let loss = out.per_token * 0.5;
        let g = Tensor::f_run_backward(&[&loss.sum(Kind::Double)], &[&v], false, false)?;
        Ok((to_vec(&loss)?, to_vec(&g[0])?))
    };
    let (loss_clipped, grad_clipped) = run(Some(cfg.clip))?;
    let (loss_unclipped, grad_unclipped) = run(None)?;
    let (v_old, r, c) = (cfg.old_value, cfg.ret, cfg.clip);
    let flat_region = if r > v_old + c {
        Some((v_old + c, 2.0 * r - v_old - c))
    } else if r < v_old - c {
        Some((2.0 * r - v_old + c, v_old - c))
    } else {
        None
    };
    Ok(ValueClipCurve {
        old_value: v_old,
        ret: r,
        clip: c,
        values,
        loss_clipped,
        loss_unclipped,
        grad_clipped,
        grad_unclipped,
        flat_region,
    })
}
