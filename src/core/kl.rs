//! Per-token KL estimators between the sampling policy π and a reference policy π_ref.
//!
//! With samples drawn from π and `log_ratio = log π(a) − log π_ref(a)` (Schulman, "Approximating KL
//! Divergence", 2020; seed 001 §3.2.4 "KL = log_probs − ref_log_probs"):
//! * k1 = log_ratio                         — unbiased, can be negative (TRL `kl`, verl `kl`, OpenRLHF k1);
//! * k2 = ½·log_ratio²                      — biased, ≥ 0 (TRL `mse`, verl `mse`, OpenRLHF k2);
//! * k3 = exp(−log_ratio) − 1 + log_ratio   — unbiased, ≥ 0 (verl `low_var_kl`, OpenRLHF k3);
//! * abs = |log_ratio|                      — (TRL/verl `abs`).

use crate::core::check;
use crate::core::masked::zero_masked;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which estimator of KL(π ‖ π_ref) to use per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KlEstimator {
    K1,
    K2,
    K3,
    Abs,
}

/// Estimator plus the clamps some stacks apply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlConfig {
    pub estimator: KlEstimator,
    /// Clamp `log_ratio` to `[−c, c]` before the estimator (OpenRLHF k3 path uses 10).
    pub log_ratio_clamp: Option<f64>,
    /// Clamp the estimate itself to `[−c, c]` (verl `low_var_kl` uses 10).
    pub value_clamp: Option<f64>,
}

impl KlConfig {
    pub fn new(estimator: KlEstimator) -> Self {
        KlConfig {
            estimator,
            log_ratio_clamp: None,
            value_clamp: None,
        }
    }
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(c) = self.log_ratio_clamp {
            check::positive("log_ratio_clamp", c)?;
        }
        if let Some(c) = self.value_clamp {
            check::positive("value_clamp", c)?;
        }
        Ok(())
    }
}

/// The estimator applied to an already-validated log-ratio tensor (any shape).
pub(crate) fn estimate(log_ratio: &Tensor, cfg: &KlConfig) -> Tensor {
    let x = match cfg.log_ratio_clamp {
        Some(c) => log_ratio.clamp(-c, c),
        None => log_ratio.shallow_clone(),
    };
    let k = match cfg.estimator {
        KlEstimator::K1 => x,
        KlEstimator::K2 => x.square() * 0.5,
        KlEstimator::K3 => (-&x).exp() - 1.0 + &x,
        KlEstimator::Abs => x.abs(),
    };
    match cfg.value_clamp {
        Some(c) => k.clamp(-c, c),
        None => k,
    }
}

/// Per-token KL estimate. Shapes: `log_probs`, `ref_log_probs`, `mask` (B, T) → (B, T), 0 where masked.
/// `log_probs` are of the sampled tokens under π (the policy that generated them).
pub fn kl_per_token(
    log_probs: &Tensor,
    ref_log_probs: &Tensor,
    mask: &Tensor,
    cfg: &KlConfig,
) -> Result<Tensor> {
    cfg.validate()?;
    check::float("log_probs", log_probs)?;
    let m = check::mask("mask", mask, "log_probs", log_probs)?;
    check::masked_values("log_probs", log_probs, "mask", mask)?;
    check::masked_values("ref_log_probs", ref_log_probs, "mask", mask)?;
    let diff = zero_masked(&(log_probs - ref_log_probs), &m);
    let k = zero_masked(&estimate(&diff, cfg), &m);
    check::finite_output("per_token", &k)?;
    Ok(k)
}

/// Per-sequence KL estimate: the masked sum over tokens of [`kl_per_token`]. Shapes (B, T) → (B,).
/// Rows without tokens give 0 (an empty sum).
pub fn kl_per_sequence(
    log_probs: &Tensor,
    ref_log_probs: &Tensor,
    mask: &Tensor,
    cfg: &KlConfig,
) -> Result<Tensor> {
    let k = kl_per_token(log_probs, ref_log_probs, mask, cfg)?;
    let s = k.sum_dim_intlist(&[-1i64][..], false, k.kind());
    check::finite_output("per_sequence", &s)?;
    Ok(s)
}

/// Exact per-token KL over the whole vocabulary, `KL(π(·|s_t) ‖ π_ref(·|s_t)) = Σ_v π(v)·(log π(v) −
/// log π_ref(v))`, from the two models' logits at the same states — no sampling error at a state; along
/// samples from π its sum over a response is the sequence-level KL of the DPO paper (Rafailov et al.
/// 2023, footnote 3). Shapes: `logits`, `ref_logits` (B, T, V), `mask` (B, T) → (B, T), 0 where
/// masked. Computed in f64 for f64 input, else f32; logits must be finite at used positions.
pub fn kl_full_vocab(logits: &Tensor, ref_logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check::float("logits", logits)?;
    check::ndim("logits", logits, 3, "(B, T, V)")?;
    check::same_shape("logits", logits, "ref_logits", ref_logits)?;
    let (b, t, _) = logits.size3()?;
    let probe = Tensor::zeros([b, t], (tch::Kind::Float, logits.device()));
    let m = check::mask("mask", mask, "logits[..., 0]", &probe)?;
    check::logits_where("logits", logits, &m, false)?;
    check::logits_where("ref_logits", ref_logits, &m, false)?;
    let kind = if logits.kind() == tch::Kind::Double {
        tch::Kind::Double
    } else {
        tch::Kind::Float
    };
    // Masked rows are zeroed before the softmax so junk there cannot produce NaN.
    let zero = Tensor::from(0.0).to_kind(kind).to_device(logits.device());
    let keep = m.unsqueeze(-1);
    let lp = logits
        .to_kind(kind)
        .where_self(&keep, &zero)
        .log_softmax(-1, kind); // (B, T, V)
    let lq = ref_logits
        .to_kind(kind)
        .where_self(&keep, &zero)
        .log_softmax(-1, kind);
    let kl = (lp.exp() * (&lp - lq)).sum_dim_intlist(&[-1i64][..], false, kind); // (B, T)
    Ok(zero_masked(&kl, &m))
}
