//! The λ of GAE as a bias/variance dial, measured on the seed 001 §3.2.4 trajectory (notebook 01).
//!
//! Seed 001 §3.2.4 (and GAE, Schulman et al. 2016 §3) describes λ as trading bias for variance: λ = 0
//! uses one real reward and trusts the critic for the rest (`A_t = δ_t`), λ = 1 uses every real reward and
//! trusts the critic only as a baseline (`A_t = G_t − V_t`). This module makes that statement a number.
//!
//! Set-up: the document's 7-token trajectory with its printed `KL_rewards` as the *expected* per-token
//! rewards r̄_t and its printed critic values V_t (which are not the true values). The true value of each
//! position under γ is the expected discounted reward-to-go `V*_t = Σ_{k≥t} γ^{k−t} r̄_k`. Rewards are
//! noisy: `r_k = r̄_k + σ_k ε_k`, ε ~ N(0, 1), with `σ_k = token_noise` for k < T−1 and `score_noise` on
//! the last token (the reward-model score).
//!
//! The λ-return `R^λ_t = A^λ_t + V_t` (the critic's regression target, `returns = advantages + values`
//! in DeepSpeed-Chat `get_advantages_and_returns`) estimates V*_t. Since
//! `A^λ_t = Σ_{k≥t} (γλ)^{k−t} δ_k` with `δ_k = r_k + γ V_{k+1} − V_k` (V_T = 0) is linear in the
//! rewards, the coefficient of r_k in R^λ_t is `(γλ)^{k−t}`, and exactly
//!
//! - bias_t(λ) = R^λ_t(r̄) − V*_t      (critic error leaking in through bootstrapping; 0 at λ = 1)
//! - var_t(λ)  = Σ_{k≥t} (γλ)^{2(k−t)} σ_k²   (reward noise let in; smallest at λ = 0)
//!
//! [`lambda_sweep`] returns these closed forms next to Monte-Carlo estimates obtained by running the
//! library's [`gae`] on `samples` noisy reward rows, so the notebook shows both agree.

use crate::core::advantages::{gae, GaeConfig, MaskedSteps};
use crate::core::check;
use crate::error::{Result, RlhfError};
use crate::toy::worked_example::{printed_kl_rewards, GAMMA, VALUES};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Configuration of [`lambda_sweep`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaSweepConfig {
    /// λ values to evaluate (each in [0, 1]).
    pub lambdas: Vec<f64>,
    /// Discount γ (the document's 0.9).
    pub gamma: f64,
    /// Std of the noise on each per-token (KL) reward, k < T−1.
    pub token_noise: f64,
    /// Std of the noise on the last token's reward (the reward-model score).
    pub score_noise: f64,
    /// Monte-Carlo rows per λ.
    pub samples: i64,
    /// Position t (0-based) whose estimate is reported; the document's first response token is 0.
    pub position: usize,
    pub seed: i64,
}

impl Default for LambdaSweepConfig {
    fn default() -> Self {
        LambdaSweepConfig {
            lambdas: vec![0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0],
            gamma: GAMMA,
            token_noise: 0.01,
            score_noise: 0.1,
            samples: 20_000,
            position: 0,
            seed: 0,
        }
    }
}

/// Bias and variance of the λ-return at one position for one λ.
#[derive(Debug, Clone, Serialize)]
pub struct LambdaPoint {
    pub lambda: f64,
    /// Exact `E[R^λ_t] − V*_t`.
    pub bias: f64,
    /// Exact `Var[R^λ_t]`.
    pub variance: f64,
    /// `bias² + variance`.
    pub mse: f64,
    /// Monte-Carlo estimates from the library's `gae` on noisy rewards.
    pub mc_bias: f64,
    pub mc_variance: f64,
    /// Standard error of `mc_bias` (`sqrt(variance / samples)`).
    pub mc_bias_stderr: f64,
}

/// The trajectory of the sweep: expected rewards, critic values and true values (length 7).
#[derive(Debug, Clone, Serialize)]
pub struct Trajectory {
    pub expected_rewards: Vec<f64>,
    pub critic_values: Vec<f64>,
    /// `V*_t = Σ_{k≥t} γ^{k−t} r̄_k`.
    pub true_values: Vec<f64>,
}

/// The document's trajectory with the true values under `gamma`.
pub fn trajectory(gamma: f64) -> Trajectory {
    let rewards = printed_kl_rewards();
    let mut true_values = vec![0.0; rewards.len()];
    let mut acc = 0.0;
    for t in (0..rewards.len()).rev() {
        acc = rewards[t] + gamma * acc;
        true_values[t] = acc;
    }
    Trajectory {
        expected_rewards: rewards,
        critic_values: VALUES.to_vec(),
        true_values,
    }
}

/// GAE advantages of one reward row under the document's critic values (f64, no masking).
pub fn advantages_for(rewards: &[f64], gamma: f64, lambda: f64) -> Result<Vec<f64>> {
    let n = rewards.len() as i64;
    let r = Tensor::from_slice(rewards)
        .to_kind(Kind::Double)
        .view([1, n]);
    let v = Tensor::from_slice(&VALUES[..rewards.len()])
        .to_kind(Kind::Double)
        .view([1, n]);
    let mask = Tensor::ones([1, n], (Kind::Bool, Device::Cpu));
    let out = gae(
        &r,
        &v,
        &mask,
        &GaeConfig {
            gamma,
            lam: lambda,
            masked_steps: MaskedSteps::Zero,
        },
    )?;
    Ok(Vec::<f64>::try_from(out.advantages.flatten(0, -1))?)
}

/// Closed-form and Monte-Carlo bias/variance of `R^λ_t` for each λ of the config.
pub fn lambda_sweep(cfg: &LambdaSweepConfig) -> Result<Vec<LambdaPoint>> {
    check::in_unit_interval("gamma", cfg.gamma)?;
    check::non_negative("token_noise", cfg.token_noise)?;
    check::non_negative("score_noise", cfg.score_noise)?;
    for &l in &cfg.lambdas {
        check::in_unit_interval("lambdas", l)?;
    }
    if cfg.samples < 2 {
        return Err(RlhfError::out_of_range(
            "samples",
            cfg.samples as f64,
            "at least 2",
        ));
    }
    let traj = trajectory(cfg.gamma);
    let t_len = traj.expected_rewards.len();
    if cfg.position >= t_len {
        return Err(RlhfError::out_of_range(
            "position",
            cfg.position as f64,
            format!("a token index below {t_len}"),
        ));
    }
    let sigma: Vec<f64> = (0..t_len)
        .map(|k| {
            if k + 1 == t_len {
                cfg.score_noise
            } else {
                cfg.token_noise
            }
        })
        .collect();
    let t = cfg.position;

    tch::manual_seed(cfg.seed);
    let n = t_len as i64;
    // One noise draw shared by every λ (common random numbers): differences between λ are not noise.
    let eps = Tensor::randn([cfg.samples, n], (Kind::Double, Device::Cpu));
    let noisy = Tensor::from_slice(&traj.expected_rewards).view([1, n])
        + eps * Tensor::from_slice(&sigma).view([1, n]);
    let values = Tensor::from_slice(&traj.critic_values)
        .view([1, n])
        .expand([cfg.samples, n], false);
    let mask = Tensor::ones([cfg.samples, n], (Kind::Bool, Device::Cpu));

    let mut out = Vec::with_capacity(cfg.lambdas.len());
    for &lambda in &cfg.lambdas {
        // exact: R^λ_t(r̄) from the library on the expected rewards; variance from the coefficients.
        let a_mean = advantages_for(&traj.expected_rewards, cfg.gamma, lambda)?;
        let bias = a_mean[t] + traj.critic_values[t] - traj.true_values[t];
        let variance: f64 = (t..t_len)
            .map(|k| (cfg.gamma * lambda).powi(2 * (k - t) as i32) * sigma[k] * sigma[k])
            .sum();
        // Monte Carlo: the library's GAE on every noisy row.
        let cfg_gae = GaeConfig {
            gamma: cfg.gamma,
            lam: lambda,
            masked_steps: MaskedSteps::Zero,
        };
        let ar = gae(&noisy, &values, &mask, &cfg_gae)?;
        let r_t = ar.returns.select(1, t as i64);
        let mc_mean = r_t.mean(Kind::Double).double_value(&[]);
        let mc_variance = r_t.var(true).double_value(&[]);
        out.push(LambdaPoint {
            lambda,
            bias,
            variance,
            mse: bias * bias + variance,
            mc_bias: mc_mean - traj.true_values[t],
            mc_variance,
            mc_bias_stderr: (mc_variance / cfg.samples as f64).sqrt(),
        });
    }
    Ok(out)
}
