//! Masked reductions: sum, mean, variance, whitening, and PPO-style loss aggregation.
//!
//! Reductions of f16/bf16 inputs accumulate in, and return, f32 ([`accumulate_kind`]).
//!
//! Masks are validated by [`crate::core::check::mask`] (0/1, same shape). Masked entries are excluded with
//! `where`, never by multiplication, so a NaN/Inf sitting at a masked position cannot turn into
//! `NaN · 0 = NaN` (a bug class seen in other stacks). Every per-token output of this crate is exactly 0
//! at masked positions.

use crate::core::check;
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What a mean over a row with zero unmasked tokens gives.
///
/// TRL `masked_mean`, DeepSpeed-Chat (`sum(x·mask)/mask.sum()`) and OpenRLHF's token-level
/// `masked_mean` divide by zero and return NaN; rlhf-lab refuses to return a silent NaN and raises
/// [`RlhfError::EmptyRows`] instead (`Error`). verl `masked_mean` divides by `mask.sum() + 1e-8`, so empty
/// rows give 0 and contribute nothing, and OpenRLHF's sequence-level loss divides each row by
/// `count + 1e-8` and skips rows without tokens (`Ignore`: empty rows add 0 to sums and are left out of
/// counts; a batch with no token at all gives 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyRows {
    Error,
    Ignore,
}

/// The dtype reductions accumulate in: f32 for f16/bf16 inputs (a token count above 65,504 overflows f16,
/// and long f16 sums lose every digit), the input's own float kind otherwise.
pub fn accumulate_kind(k: Kind) -> Kind {
    match k {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    }
}

/// Replace masked entries by 0 (without multiplying, so NaN/Inf at masked positions vanish).
pub fn zero_masked(values: &Tensor, mask: &Tensor) -> Tensor {
    values.where_self(mask, &values.zeros_like())
}

/// Validates a floating `values` tensor with its mask (and `dim`, if given); returns the bool mask.
fn checked(values: &Tensor, mask: &Tensor, dim: Option<i64>) -> Result<Tensor> {
    check::float("values", values)?;
    let m = check::mask("mask", mask, "values", values)?;
    check::finite_where("values", values, &m)?;
    if let Some(d) = dim {
        check::dim("dim", values, d)?;
    }
    Ok(m)
}

/// Sum of unmasked entries. `dim = None` sums everything (scalar); `Some(d)` sums along `d`.
pub fn masked_sum(values: &Tensor, mask: &Tensor, dim: Option<i64>) -> Result<Tensor> {
    let m = checked(values, mask, dim)?;
    let out = masked_sum_unchecked(values, &m, dim);
    check::finite_output("result", &out)?;
    Ok(out)
}

pub(crate) fn masked_sum_unchecked(values: &Tensor, m: &Tensor, dim: Option<i64>) -> Tensor {
    let z = zero_masked(values, m);
    let acc = accumulate_kind(z.kind());
    match dim {
        None => z.sum(acc),
        Some(d) => z.sum_dim_intlist(&[d][..], false, acc),
    }
}

fn count(m: &Tensor, dim: Option<i64>, kind: Kind) -> Tensor {
    match dim {
        None => m.sum(kind),
        Some(d) => m.sum_dim_intlist(&[d][..], false, kind),
    }
}

/// Mean of unmasked entries.
///
/// Matches TRL `masked_mean(values, mask, axis)`, verl `masked_mean`, OpenRLHF `masked_mean(t, mask, dim)`:
/// `Σ mask·x / Σ mask`. Shapes: `values`, `mask` (…); result is a scalar (`dim = None`) or has `dim` removed.
/// Zero-count reductions follow `empty` (see [`EmptyRows`]).
pub fn masked_mean(
    values: &Tensor,
    mask: &Tensor,
    dim: Option<i64>,
    empty: EmptyRows,
) -> Result<Tensor> {
    masked_mean_eps(values, mask, dim, empty, 0.0)
}

/// [`masked_mean`] with `eps` added to the denominator: `Σ mask·x / (Σ mask + eps)` (verl `masked_mean`,
/// `eps = 1e-8`). `eps = 0` is [`masked_mean`] itself. An empty row gives 0 under `Ignore` either way.
pub fn masked_mean_eps(
    values: &Tensor,
    mask: &Tensor,
    dim: Option<i64>,
    empty: EmptyRows,
    eps: f64,
) -> Result<Tensor> {
    check::non_negative("mean_eps", eps)?;
    let m = checked(values, mask, dim)?;
    let out = masked_mean_unchecked(values, &m, dim, empty, eps, "mask")?;
    check::finite_output("result", &out)?;
    Ok(out)
}

pub(crate) fn masked_mean_unchecked(
    values: &Tensor,
    m: &Tensor,
    dim: Option<i64>,
    empty: EmptyRows,
    eps: f64,
    arg: &str,
) -> Result<Tensor> {
    let n = count(m, dim, accumulate_kind(values.kind()));
    let is_empty = n.eq(0);
    if empty == EmptyRows::Error && is_empty.any().int64_value(&[]) == 1 {
        let rows = match dim {
            None => vec![],
            Some(_) => Vec::<i64>::try_from(&is_empty.nonzero().flatten(0, -1)).unwrap_or_default(),
        };
        return Err(RlhfError::EmptyRows {
            arg: arg.into(),
            rows,
        });
    }
    let s = masked_sum_unchecked(values, m, dim);
    Ok(if eps > 0.0 {
        s / (n + eps)
    } else {
        s / n.clamp_min(1.0)
    })
}

/// Masked variance about the masked mean.
///
/// `unbiased = false`: `Σ mask·(x−μ)² / Σ mask` (OpenRLHF advantage normalisation).
/// `unbiased = true`: multiplied by the Bessel factor `n/(n−1)` (TRL / verl `masked_var(..., unbiased=True)`),
/// which needs `n ≥ 2` unmasked entries — fewer is an error (TRL raises too).
/// Scalar result over all unmasked entries.
pub fn masked_var(values: &Tensor, mask: &Tensor, unbiased: bool) -> Result<Tensor> {
    masked_var_eps(values, mask, unbiased, 0.0)
}

/// [`masked_var`] with `eps` added to the denominators of both masked means (verl `masked_var`: the mean
/// and the mean of squared deviations use `masked_mean`'s `Σ mask + 1e-8`; the Bessel factor is exact).
pub fn masked_var_eps(values: &Tensor, mask: &Tensor, unbiased: bool, eps: f64) -> Result<Tensor> {
    check::non_negative("mean_eps", eps)?;
    let m = checked(values, mask, None)?;
    let out = masked_var_unchecked(values, &m, unbiased, eps)?;
    check::finite_output("result", &out)?;
    Ok(out)
}

pub(crate) fn masked_var_unchecked(
    values: &Tensor,
    m: &Tensor,
    unbiased: bool,
    eps: f64,
) -> Result<Tensor> {
    let values = &values.to_kind(accumulate_kind(values.kind()));
    let n = m.sum(Kind::Int64).int64_value(&[]);
    let needed = if unbiased { 2 } else { 1 };
    if n < needed {
        return Err(RlhfError::invalid(
            "mask",
            format!(
                "a {} masked variance needs at least {needed} unmasked entries, got {n}",
                if unbiased { "unbiased" } else { "biased" }
            ),
        ));
    }
    let mean = masked_mean_unchecked(values, m, None, EmptyRows::Error, eps, "mask")?;
    let centered = values - &mean;
    let var = masked_mean_unchecked(
        &(&centered * &centered),
        m,
        None,
        EmptyRows::Error,
        eps,
        "mask",
    )?;
    Ok(if unbiased {
        var * (n as f64 / (n as f64 - 1.0))
    } else {
        var
    })
}

/// How the whitening epsilon enters the inverse standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhitenEps {
    /// `rsqrt(var + eps)` — TRL / verl `masked_whiten`.
    Add,
    /// `rsqrt(max(var, eps))` — OpenRLHF advantage normalisation (`clamp(min=eps).rsqrt()`).
    ClampMin,
}

/// Options of [`masked_whiten`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WhitenConfig {
    /// Subtract the mean (true) or add it back after scaling (false; TRL `shift_mean=False` for rewards).
    pub shift_mean: bool,
    /// Bessel-corrected variance (TRL, verl) or biased (OpenRLHF).
    pub unbiased: bool,
    pub eps: f64,
    pub eps_mode: WhitenEps,
    /// Divide by the standard deviation (true), or only centre: `x − μ` (OpenRLHF `no_std_norm`).
    #[serde(default = "yes")]
    pub scale: bool,
    /// ε added to the denominators of the masked means behind μ and σ² (verl `masked_mean`'s 1e-8); 0 = exact.
    #[serde(default)]
    pub mean_eps: f64,
    /// Compute μ and 1/σ on a float32 copy and apply them to the input in its own dtype (OpenRLHF
    /// normalises advantages with `.float()` statistics).
    #[serde(default)]
    pub f32_stats: bool,
}

fn yes() -> bool {
    true
}

impl Default for WhitenConfig {
    fn default() -> Self {
        WhitenConfig {
            shift_mean: true,
            unbiased: true,
            eps: 1e-8,
            eps_mode: WhitenEps::Add,
            scale: true,
            mean_eps: 0.0,
            f32_stats: false,
        }
    }
}

/// Masked whitening: `(x − μ)·rsqrt(σ² + ε)` (+ μ again when `shift_mean` is false), with μ and σ² taken
/// over all unmasked entries of the batch (TRL `masked_whiten`, verl `masked_whiten`; OpenRLHF's
/// advantage normalisation with `eps_mode = clamp-min`, `unbiased = false`, `f32_stats = true`, and
/// `scale = false` for its `no_std_norm`: `x − μ`).
/// Shapes: `values`, `mask` (…); result has the same shape, 0 at masked positions.
pub fn masked_whiten(values: &Tensor, mask: &Tensor, cfg: WhitenConfig) -> Result<Tensor> {
    let m = checked(values, mask, None)?;
    check::non_negative("eps", cfg.eps)?;
    check::non_negative("mean_eps", cfg.mean_eps)?;
    let out = masked_whiten_unchecked(values, &m, cfg)?;
    check::finite_output("result", &out)?;
    Ok(out)
}

pub(crate) fn masked_whiten_unchecked(
    values: &Tensor,
    m: &Tensor,
    cfg: WhitenConfig,
) -> Result<Tensor> {
    // Statistics on a float32 copy (OpenRLHF) or in the input's accumulation kind.
    let stats_in = if cfg.f32_stats {
        values.to_kind(Kind::Float)
    } else {
        values.shallow_clone()
    };
    let mean = masked_mean_unchecked(&stats_in, m, None, EmptyRows::Error, cfg.mean_eps, "mask")?;
    // `mean` and `rstd` are 0-dim, so the arithmetic stays in the input's dtype (as in torch).
    let mut w = values - &mean;
    if cfg.scale {
        let var = masked_var_unchecked(&stats_in, m, cfg.unbiased, cfg.mean_eps)?;
        let rstd = match cfg.eps_mode {
            WhitenEps::Add => (var + cfg.eps).rsqrt(),
            WhitenEps::ClampMin => var.clamp_min(cfg.eps).rsqrt(),
        };
        w *= rstd;
    }
    if !cfg.shift_mean {
        w += &mean;
    }
    Ok(zero_masked(&w, m))
}

/// How a per-token loss matrix (B, T) is reduced to a scalar (verl `agg_loss` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAgg {
    /// Mean over every unmasked token of the batch: `Σ mask·ℓ / Σ mask` (TRL, DeepSpeed-Chat, verl default).
    TokenMean,
    /// Per-sequence token mean, then mean over sequences (OpenRLHF `masked_mean(loss, mask, -1).mean()`,
    /// GRPO paper).
    SeqMeanTokenMean,
    /// Per-sequence token sum, then mean over sequences (verl `seq-mean-token-sum`).
    SeqMeanTokenSum,
    /// The batch's total masked sum divided by a constant, `loss_scale_factor` or T, not by a count (verl
    /// `seq-mean-token-sum-norm`, Dr. GRPO's constant normaliser).
    SeqMeanTokenSumNorm,
}

/// How the denominators of an aggregated loss (and of the masked-mean statistics reported beside it) are
/// formed beyond [`LossAgg`] and [`EmptyRows`]: the stacks' epsilons, and global-batch normalisation under
/// data parallelism (verl `agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size, batch_num_tokens,
/// global_batch_size, loss_scale_factor)`; OpenRLHF divides by the global token count likewise).
///
/// With the defaults (`Default`) every denominator is the exact local count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossNorm {
    /// ε added to masked-mean denominators, `Σ mask + ε` (verl `masked_mean`, 1e-8): the token-mean loss
    /// (when `batch_num_tokens` is not given) and the per-token statistics (clip fractions, approx-KL).
    pub mean_eps: f64,
    /// ε added to each row's token count in `seq-mean-token-mean` (OpenRLHF's sequence-level loss, verl
    /// `agg_loss`: `Σ_t / (count + 1e-8)`).
    pub seq_mean_eps: f64,
    /// Data-parallel world size: the local loss is multiplied by it, so that the average over ranks that
    /// data parallelism applies to gradients gives the global-batch loss. > 1 needs `batch_num_tokens`
    /// (token-mean) or `global_batch_size` (seq-mean-*).
    pub dp_size: u32,
    /// Token-mean: the global batch's token count (all ranks); `Σ mask·ℓ / batch_num_tokens · dp_size`.
    pub batch_num_tokens: Option<u64>,
    /// Seq-mean-*: the global batch's sequence count; `Σ_rows / global_batch_size · dp_size`.
    pub global_batch_size: Option<u64>,
    /// Seq-mean-token-sum-norm: the constant divisor of the total masked sum (default T).
    pub loss_scale_factor: Option<f64>,
}

impl Default for LossNorm {
    fn default() -> Self {
        LossNorm {
            mean_eps: 0.0,
            seq_mean_eps: 0.0,
            dp_size: 1,
            batch_num_tokens: None,
            global_batch_size: None,
            loss_scale_factor: None,
        }
    }
}

impl LossNorm {
    /// Every field in range, and each global normaliser used by `agg` (an unused one is an error, never
    /// silently ignored).
    pub fn validate(&self, agg: LossAgg) -> Result<()> {
        check::non_negative("mean_eps", self.mean_eps)?;
        check::non_negative("seq_mean_eps", self.seq_mean_eps)?;
        check::at_least("dp_size", self.dp_size as i64, 1)?;
        let name = serde_json::to_value(agg)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let token = agg == LossAgg::TokenMean;
        let seq = matches!(agg, LossAgg::SeqMeanTokenMean | LossAgg::SeqMeanTokenSum);
        if let Some(n) = self.batch_num_tokens {
            check::at_least("batch_num_tokens", n.min(i64::MAX as u64) as i64, 1)?;
            if !token {
                return Err(RlhfError::invalid(
                    "batch_num_tokens",
                    format!("only token-mean divides by a token count (agg is {name})"),
                ));
            }
        }
        if let Some(g) = self.global_batch_size {
            check::at_least("global_batch_size", g.min(i64::MAX as u64) as i64, 1)?;
            if !seq {
                return Err(RlhfError::invalid(
                    "global_batch_size",
                    format!("only seq-mean-token-mean and seq-mean-token-sum divide by a sequence count (agg is {name})"),
                ));
            }
        }
        if let Some(c) = self.loss_scale_factor {
            check::positive("loss_scale_factor", c)?;
            if agg != LossAgg::SeqMeanTokenSumNorm {
                return Err(RlhfError::invalid(
                    "loss_scale_factor",
                    format!("only seq-mean-token-sum-norm divides by a constant (agg is {name})"),
                ));
            }
        }
        if self.dp_size > 1 {
            let missing = if token && self.batch_num_tokens.is_none() {
                Some("batch_num_tokens")
            } else if seq && self.global_batch_size.is_none() {
                Some("global_batch_size")
            } else {
                None
            };
            if let Some(what) = missing {
                return Err(RlhfError::invalid(
                    "dp_size",
                    format!("dp_size > 1 needs the global `{what}` (the local count times dp_size is not the global one)"),
                ));
            }
            if agg == LossAgg::SeqMeanTokenSumNorm {
                return Err(RlhfError::invalid(
                    "dp_size",
                    "seq-mean-token-sum-norm divides by a constant and is not scaled by dp_size (verl `agg_loss`)",
                ));
            }
        }
        Ok(())
    }
}

/// Reduce a per-token loss (B, T) with mask (B, T) according to `agg`; scalar result.
///
/// Rows with zero tokens: `EmptyRows::Error` raises; `EmptyRows::Ignore` leaves them out of the
/// sequence mean (verl ≥ 0.4 `agg_loss` uses a sequence mask for the same purpose).
pub fn aggregate(loss: &Tensor, mask: &Tensor, agg: LossAgg, empty: EmptyRows) -> Result<Tensor> {
    aggregate_norm(loss, mask, agg, empty, &LossNorm::default())
}

/// [`aggregate`] with the denominators of `norm` (epsilons, global-batch normalisation):
/// * token-mean: `Σ mask·ℓ / (Σ mask + mean_eps)`, or `Σ mask·ℓ / batch_num_tokens · dp_size`;
/// * seq-mean-token-mean: rows `Σ_t mask·ℓ / (n_b + seq_mean_eps)`, then their mean over non-empty rows,
///   or their sum `/ global_batch_size · dp_size`;
/// * seq-mean-token-sum: the same with row sums;
/// * seq-mean-token-sum-norm: `Σ mask·ℓ / loss_scale_factor` (T when not given).
///
/// (verl `agg_loss`; OpenRLHF `PolicyLoss` / `ValueLoss` aggregation.)
pub fn aggregate_norm(
    loss: &Tensor,
    mask: &Tensor,
    agg: LossAgg,
    empty: EmptyRows,
    norm: &LossNorm,
) -> Result<Tensor> {
    check::float("loss", loss)?;
    check::ndim("loss", loss, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "loss", loss)?;
    check::finite_where("loss", loss, &m)?;
    norm.validate(agg)?;
    let out = aggregate_unchecked(loss, &m, agg, empty, norm)?;
    check::finite_output("result", &out)?;
    Ok(out)
}

/// `norm` must be validated against `agg`.
pub(crate) fn aggregate_unchecked(
    loss: &Tensor,
    m: &Tensor,
    agg: LossAgg,
    empty: EmptyRows,
    norm: &LossNorm,
) -> Result<Tensor> {
    let dp = norm.dp_size as f64;
    let seq_has_tokens = m.any_dim(-1, false); // (B,)
    let per_seq = match agg {
        LossAgg::TokenMean => {
            return match norm.batch_num_tokens {
                Some(n) => Ok(masked_sum_unchecked(loss, m, None) / n as f64 * dp),
                None => masked_mean_unchecked(loss, m, None, empty, norm.mean_eps, "mask"),
            }
        }
        LossAgg::SeqMeanTokenSumNorm => {
            let c = norm
                .loss_scale_factor
                .unwrap_or(loss.size()[1].max(1) as f64);
            return Ok(masked_sum_unchecked(loss, m, None) / c);
        }
        LossAgg::SeqMeanTokenMean => {
            masked_mean_unchecked(loss, m, Some(-1), empty, norm.seq_mean_eps, "mask")?
        }
        LossAgg::SeqMeanTokenSum => {
            if empty == EmptyRows::Error {
                check::no_empty_rows("mask", m)?;
            }
            masked_sum_unchecked(loss, m, Some(-1))
        }
    };
    match norm.global_batch_size {
        Some(g) => Ok(masked_sum_unchecked(&per_seq, &seq_has_tokens, None) / g as f64 * dp),
        None => masked_mean_unchecked(
            &per_seq,
            &seq_has_tokens,
            None,
            EmptyRows::Ignore,
            0.0,
            "mask",
        ),
    }
}
