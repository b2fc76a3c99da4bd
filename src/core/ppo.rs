//! PPO losses and KL controllers.
//!
//! Sources: Schulman et al. 2017 eq. 7 (clipped surrogate) and eq. 9 (value + entropy terms); seed 003
//! "PPO 的 Loss" (`pg_losses = −A·ratio`, `pg_losses2 = −A·clamp(ratio, 1−ε, 1+ε)`,
//! `max(pg_losses, pg_losses2)`, value loss `0.5·masked_mean(max(vf_losses1, vf_losses2))`); seed 000 §1.2
//! (importance sampling); Ye et al. 2019 dual-clip (verl `compute_policy_loss`, `clip_ratio_c`);
//! Ziegler et al. 2019 §2.2 adaptive KL (TRL/verl `AdaptiveKLController`).

use crate::core::check;
use crate::core::kl::{estimate, KlConfig, KlEstimator};
use crate::core::masked::{
    aggregate_unchecked, masked_mean_unchecked, zero_masked, EmptyRows, LossAgg, LossNorm,
};
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Options of [`policy_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyLossConfig {
    /// ε_low: ratio is clipped below at `1 − clip_low` (0.2 everywhere by default).
    pub clip_low: f64,
    /// ε_high: ratio is clipped above at `1 + clip_high` (DAPO "clip-higher" uses 0.28).
    pub clip_high: f64,
    /// Dual-clip constant c > 1: for A < 0 the loss is bounded by `−A·c` (verl `clip_ratio_c = 3`).
    pub dual_clip: Option<f64>,
    /// Clamp `log π − log π_old` to `[−c, c]` before `exp` (verl clamps to ±20 against overflow).
    pub log_ratio_clamp: Option<f64>,
    pub agg: LossAgg,
    pub empty_rows: EmptyRows,
    /// Estimator of KL(π_old ‖ π) reported as `approx_kl` (verl: k1, TRL: k2, CleanRL: k3).
    pub approx_kl: KlEstimator,
    /// Derive `approx_kl` from the log-ratio before `log_ratio_clamp` (OpenRLHF `PolicyLoss`: the ratio
    /// uses the clamped log-ratio, `ppo_kl` the raw one), instead of the clamped one (verl). Without a
    /// clamp the two agree.
    #[serde(default)]
    pub approx_kl_unclamped: bool,
    /// Denominators of the loss and of the statistics (epsilons, global-batch normalisation).
    #[serde(default)]
    pub norm: LossNorm,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        PolicyLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            dual_clip: None,
            log_ratio_clamp: None,
            agg: LossAgg::TokenMean,
            empty_rows: EmptyRows::Error,
            approx_kl: KlEstimator::K1,
            approx_kl_unclamped: false,
            norm: LossNorm::default(),
        }
    }
}

/// Output of [`policy_loss`]. `loss` carries gradients; the statistics are detached scalars.
#[derive(Debug)]
pub struct PolicyLossOutput {
    /// Aggregated clipped surrogate loss (scalar).
    pub loss: Tensor,
    /// (B, T) per-token loss before aggregation, 0 where masked.
    pub per_token: Tensor,
    /// (B, T) importance ratio π/π_old (1 where masked).
    pub ratio: Tensor,
    /// Fraction of unmasked tokens where the clipped branch is active (`pg_losses2 > pg_losses`).
    pub clipfrac: Tensor,
    /// Fraction of unmasked tokens where the dual clip is active (0 without dual clip).
    pub clipfrac_lower: Tensor,
    /// Masked mean of the chosen KL(π_old ‖ π) estimator.
    pub approx_kl: Tensor,
}

/// PPO clipped surrogate policy loss.
///
/// Shapes: `log_probs` (π_θ, with grad), `old_log_probs` (π_old, the sampler), `advantages`, `mask`
/// all (B, T). Per token, with `ratio = exp(log_probs − old_log_probs)`:
/// `pg1 = −A·ratio`, `pg2 = −A·clip(ratio, 1−ε_low, 1+ε_high)`, `ℓ = max(pg1, pg2)`; with dual clip,
/// for A < 0, `ℓ = min(ℓ, −A·c)`. Reduced with `cfg.agg` and `cfg.norm` (see
/// [`crate::core::masked::aggregate_norm`]); the statistics are masked means with `cfg.norm.mean_eps`.
pub fn policy_loss(
    log_probs: &Tensor,
    old_log_probs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    cfg: &PolicyLossConfig,
) -> Result<PolicyLossOutput> {
    if !(cfg.clip_low.is_finite() && cfg.clip_low > 0.0 && cfg.clip_low < 1.0) {
        return Err(RlhfError::out_of_range(
            "clip_low",
            cfg.clip_low,
            "in (0, 1)",
        ));
    }
    check::positive("clip_high", cfg.clip_high)?;
    if let Some(c) = cfg.dual_clip {
        if !(c.is_finite() && c > 1.0) {
            return Err(RlhfError::out_of_range("dual_clip", c, "finite and > 1"));
        }
    }
    if let Some(c) = cfg.log_ratio_clamp {
        check::positive("log_ratio_clamp", c)?;
    }
    cfg.norm.validate(cfg.agg)?;
    check::float("log_probs", log_probs)?;
    check::ndim("log_probs", log_probs, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "log_probs", log_probs)?;
    check::masked_values("log_probs", log_probs, "mask", mask)?;
    check::masked_values("old_log_probs", old_log_probs, "mask", mask)?;
    check::masked_values("advantages", advantages, "mask", mask)?;

    let adv = zero_masked(advantages, &m);
    let raw_log_ratio = zero_masked(&(log_probs - old_log_probs), &m);
    let log_ratio = match cfg.log_ratio_clamp {
        Some(c) => raw_log_ratio.clamp(-c, c),
        None => raw_log_ratio.shallow_clone(),
    };
    let ratio = log_ratio.exp();
    let pg_loss1 = -&adv * &ratio;
    let pg_loss2 = -&adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let clipped = pg_loss1.maximum(&pg_loss2);
    let (per_token, lower_active) = match cfg.dual_clip {
        Some(c) => {
            let pg_loss3 = -&adv * c;
            let negative = adv.lt(0.0);
            let dual = clipped.minimum(&pg_loss3);
            let active = clipped.gt_tensor(&pg_loss3).logical_and(&negative);
            (clipped.where_self(&negative.logical_not(), &dual), active)
        }
        None => (clipped, m.zeros_like()),
    };
    let per_token = zero_masked(&per_token, &m);
    let loss = aggregate_unchecked(&per_token, &m, cfg.agg, cfg.empty_rows, &cfg.norm)?;

    let stat = |x: &Tensor| {
        masked_mean_unchecked(
            &x.detach().to_kind(log_probs.kind()),
            &m,
            None,
            EmptyRows::Ignore,
            cfg.norm.mean_eps,
            "mask",
        )
    };
    let clipfrac = stat(&pg_loss2.gt_tensor(&pg_loss1))?;
    let clipfrac_lower = stat(&lower_active)?;
    let kl_log_ratio = if cfg.approx_kl_unclamped {
        &raw_log_ratio
    } else {
        &log_ratio
    };
    let approx_kl = stat(&estimate(&(-kl_log_ratio), &KlConfig::new(cfg.approx_kl)))?;
    let out = PolicyLossOutput {
        loss,
        per_token,
        ratio: ratio.where_self(&m, &ratio.ones_like()),
        clipfrac,
        clipfrac_lower,
        approx_kl,
    };
    check::finite_output("ratio", &out.ratio)?;
    check::finite_output("per_token", &out.per_token)?;
    check::finite_output("loss", &out.loss)?;
    check::finite_output("approx_kl", &out.approx_kl)?;
    Ok(out)
}

/// Options of [`value_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueLossConfig {
    /// `cliprange_value`: new predictions are clipped to `old ± c` (TRL 0.2, DeepSpeed-Chat 0.2, verl 0.5).
    pub clip: Option<f64>,
    pub agg: LossAgg,
    pub empty_rows: EmptyRows,
    /// Denominators of the loss and of `clipfrac` (epsilons, global-batch normalisation).
    #[serde(default)]
    pub norm: LossNorm,
}

impl Default for ValueLossConfig {
    fn default() -> Self {
        ValueLossConfig {
            clip: Some(0.2),
            agg: LossAgg::TokenMean,
            empty_rows: EmptyRows::Error,
            norm: LossNorm::default(),
        }
    }
}

/// Output of [`value_loss`].
#[derive(Debug)]
pub struct ValueLossOutput {
    pub loss: Tensor,
    /// (B, T) per-token `max(vf1, vf2)` (without the ½), 0 where masked.
    pub per_token: Tensor,
    /// Fraction of unmasked tokens where the clipped branch is larger.
    pub clipfrac: Tensor,
}

/// Clipped value loss `½·agg(max((V − R)², (clip(V, V_old − c, V_old + c) − R)²))` (seed 003; TRL
/// `vf_loss`, DeepSpeed-Chat `critic_loss_fn`, OpenRLHF `ValueLoss`, verl `compute_value_loss`), reduced
/// with `cfg.agg` and `cfg.norm` (see [`crate::core::masked::aggregate_norm`]).
/// Shapes: `values` (new predictions, with grad), `old_values`, `returns`, `mask` (B, T).
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    cfg: &ValueLossConfig,
) -> Result<ValueLossOutput> {
    if let Some(c) = cfg.clip {
        check::positive("clip", c)?;
    }
    cfg.norm.validate(cfg.agg)?;
    check::float("values", values)?;
    check::ndim("values", values, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "values", values)?;
    check::masked_values("values", values, "mask", mask)?;
    check::masked_values("old_values", old_values, "mask", mask)?;
    check::masked_values("returns", returns, "mask", mask)?;
    let (v, v_old, r) = (
        zero_masked(values, &m),
        zero_masked(old_values, &m),
        zero_masked(returns, &m),
    );
    let vf_losses1 = (&v - &r).square();
    let (per_token, clipfrac) = match cfg.clip {
        Some(c) => {
            let v_clipped = &v_old + (&v - &v_old).clamp(-c, c);
            let vf_losses2 = (&v_clipped - &r).square();
            let frac = masked_mean_unchecked(
                &vf_losses2.gt_tensor(&vf_losses1).to_kind(v.kind()),
                &m,
                None,
                EmptyRows::Ignore,
                cfg.norm.mean_eps,
                "mask",
            )?;
            (vf_losses1.maximum(&vf_losses2), frac)
        }
        None => (vf_losses1, Tensor::zeros([], (v.kind(), v.device()))),
    };
    let per_token = zero_masked(&per_token, &m);
    let loss = aggregate_unchecked(&per_token, &m, cfg.agg, cfg.empty_rows, &cfg.norm)? * 0.5;
    check::finite_output("per_token", &per_token)?;
    check::finite_output("loss", &loss)?;
    Ok(ValueLossOutput {
        loss,
        per_token,
        clipfrac: clipfrac.detach(),
    })
}

/// Entropy bonus term: the aggregated per-token entropy (B, T) (from [`crate::core::logprobs::entropy`]).
/// The PPO objective subtracts `entropy_coef ·` this from the loss (Schulman et al. 2017 eq. 9).
pub fn entropy_bonus(
    entropy: &Tensor,
    mask: &Tensor,
    agg: LossAgg,
    empty: EmptyRows,
) -> Result<Tensor> {
    crate::core::masked::aggregate(entropy, mask, agg, empty)
}

/// Total PPO loss `pg_loss + vf_coef·vf_loss − entropy_coef·entropy` (seed 003 `loss = pg_loss +
/// vf_coef·vf_loss`; Schulman et al. 2017 eq. 9). Scalars in, scalar out.
pub fn total_loss(
    pg_loss: &Tensor,
    vf_loss: &Tensor,
    entropy: &Tensor,
    vf_coef: f64,
    entropy_coef: f64,
) -> Result<Tensor> {
    check::non_negative("vf_coef", vf_coef)?;
    check::non_negative("entropy_coef", entropy_coef)?;
    for (arg, t) in [
        ("pg_loss", pg_loss),
        ("vf_loss", vf_loss),
        ("entropy", entropy),
    ] {
        check::float(arg, t)?;
        if t.numel() != 1 {
            return Err(RlhfError::shape(arg, t.size(), "a scalar"));
        }
        check::finite(arg, t)?;
    }
    let loss = pg_loss + vf_loss * vf_coef - entropy * entropy_coef;
    check::finite_output("loss", &loss)?;
    Ok(loss)
}

/// A controller of the KL coefficient β.
pub trait KlController {
    /// Current β.
    fn value(&self) -> f64;
    /// Update after observing `current_kl` over `n_steps` samples.
    fn update(&mut self, current_kl: f64, n_steps: u64) -> Result<()>;
}

/// Constant β (TRL / verl `FixedKLController`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedKlController {
    pub value: f64,
}

impl FixedKlController {
    pub fn new(value: f64) -> Result<Self> {
        check::non_negative("kl_coef", value)?;
        Ok(FixedKlController { value })
    }
}

impl KlController for FixedKlController {
    fn value(&self) -> f64 {
        self.value
    }
    fn update(&mut self, current_kl: f64, _n_steps: u64) -> Result<()> {
        check::finite_scalar("current_kl", current_kl)
    }
}

/// Adaptive β (Ziegler et al. 2019 §2.2): `e = clip(KL/target − 1, −0.2, 0.2)`,
/// `β ← β·(1 + e·n_steps/horizon)` (TRL / verl `AdaptiveKLController`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKlController {
    pub value: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKlController {
    pub fn new(init: f64, target: f64, horizon: f64) -> Result<Self> {
        check::positive("init_kl_coef", init)?;
        check::positive("target", target)?;
        check::positive("horizon", horizon)?;
        Ok(AdaptiveKlController {
            value: init,
            target,
            horizon,
        })
    }
}

impl KlController for AdaptiveKlController {
    fn value(&self) -> f64 {
        self.value
    }
    fn update(&mut self, current_kl: f64, n_steps: u64) -> Result<()> {
        check::finite_scalar("current_kl", current_kl)?;
        let proportional_error = (current_kl / self.target - 1.0).clamp(-0.2, 0.2);
        let mult = 1.0 + proportional_error * n_steps as f64 / self.horizon;
        self.value *= mult;
        Ok(())
    }
}
