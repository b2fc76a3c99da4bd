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
/// TRL `masked_mean`, DeepSpeed-Chat (`sum(x·mask)/mask.sum()`) and OpenRLHF `masked_mean` divide by
/// zero and return NaN; rlhf-lab refuses to return a silent NaN and raises [`RlhfError::EmptyRows`]
/// instead (`Error`). verl `masked_mean` divides by `mask.sum() + 1e-8`, so empty rows give 0 and
/// contribute nothing (`Ignore`: empty rows add 0 to sums and are left out of counts; a batch with no
/// token at all gives 0).
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
    Ok(masked_sum_unchecked(values, &m, dim))
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
    let m = checked(values, mask, dim)?;
    masked_mean_unchecked(values, &m, dim, empty, "mask")
}

pub(crate) fn masked_mean_unchecked(
    values: &Tensor,
    m: &Tensor,
    dim: Option<i64>,
    empty: EmptyRows,
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
    Ok(s / n.clamp_min(1.0))
}

/// Masked variance about the masked mean.
///
/// `unbiased = false`: `Σ mask·(x−μ)² / Σ mask` (OpenRLHF advantage normalisation).
/// `unbiased = true`: multiplied by the Bessel factor `n/(n−1)` (TRL / verl `masked_var(..., unbiased=True)`),
/// which needs `n ≥ 2` unmasked entries — fewer is an error (TRL raises too).
/// Scalar result over all unmasked entries.
pub fn masked_var(values: &Tensor, mask: &Tensor, unbiased: bool) -> Result<Tensor> {
    let m = checked(values, mask, None)?;
    masked_var_unchecked(values, &m, unbiased)
}

pub(crate) fn masked_var_unchecked(values: &Tensor, m: &Tensor, unbiased: bool) -> Result<Tensor> {
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
    let mean = masked_mean_unchecked(values, m, None, EmptyRows::Error, "mask")?;
    let centered = values - &mean;
    let var = masked_mean_unchecked(&(&centered * &centered), m, None, EmptyRows::Error, "mask")?;
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
}

impl Default for WhitenConfig {
    fn default() -> Self {
        WhitenConfig {
            shift_mean: true,
            unbiased: true,
            eps: 1e-8,
            eps_mode: WhitenEps::Add,
        }
    }
}

/// Masked whitening: `(x − μ)·rsqrt(σ² + ε)` (+ μ again when `shift_mean` is false), with μ and σ² taken
/// over all unmasked entries of the batch (TRL `masked_whiten`, verl `masked_whiten`).
/// Shapes: `values`, `mask` (…); result has the same shape, 0 at masked positions.
pub fn masked_whiten(values: &Tensor, mask: &Tensor, cfg: WhitenConfig) -> Result<Tensor> {
    let m = checked(values, mask, None)?;
    check::non_negative("eps", cfg.eps)?;
    masked_whiten_unchecked(values, &m, cfg)
}

pub(crate) fn masked_whiten_unchecked(
    values: &Tensor,
    m: &Tensor,
    cfg: WhitenConfig,
) -> Result<Tensor> {
    let mean = masked_mean_unchecked(values, m, None, EmptyRows::Error, "mask")?;
    let var = masked_var_unchecked(values, m, cfg.unbiased)?;
    let rstd = match cfg.eps_mode {
        WhitenEps::Add => (var + cfg.eps).rsqrt(),
        WhitenEps::ClampMin => var.clamp_min(cfg.eps).rsqrt(),
    };
    let mut w = (values - &mean) * rstd;
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
}

/// Reduce a per-token loss (B, T) with mask (B, T) according to `agg`; scalar result.
///
/// Rows with zero tokens: `EmptyRows::Error` raises; `EmptyRows::Ignore` leaves them out of the
/// sequence mean (verl ≥ 0.4 `agg_loss` uses a sequence mask for the same purpose).
pub fn aggregate(loss: &Tensor, mask: &Tensor, agg: LossAgg, empty: EmptyRows) -> Result<Tensor> {
    check::float("loss", loss)?;
    check::ndim("loss", loss, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "loss", loss)?;
    check::finite_where("loss", loss, &m)?;
    aggregate_unchecked(loss, &m, agg, empty)
}

pub(crate) fn aggregate_unchecked(
    loss: &Tensor,
    m: &Tensor,
    agg: LossAgg,
    empty: EmptyRows,
) -> Result<Tensor> {
    let seq_has_tokens = m.any_dim(-1, false); // (B,)
    let per_seq = match agg {
        LossAgg::TokenMean => return masked_mean_unchecked(loss, m, None, empty, "mask"),
        LossAgg::SeqMeanTokenMean => masked_mean_unchecked(loss, m, Some(-1), empty, "mask")?,
        LossAgg::SeqMeanTokenSum => {
            if empty == EmptyRows::Error {
                check::no_empty_rows("mask", m)?;
            }
            masked_sum_unchecked(loss, m, Some(-1))
        }
    };
    masked_mean_unchecked(&per_seq, &seq_has_tokens, None, EmptyRows::Ignore, "mask")
}
