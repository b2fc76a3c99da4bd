//! Token log-probabilities and entropy from logits.

use crate::core::check;
use crate::core::masked::zero_masked;
use crate::error::{Result, RlhfError};
use tch::{Kind, Tensor};

fn check_logits_labels(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<(Tensor, i64)> {
    check::float("logits", logits)?;
    check::ndim("logits", logits, 3, "(B, T, V)")?;
    check::integer("labels", labels)?;
    let (b, t, v) = logits.size3()?;
    if labels.size() != [b, t] {
        return Err(RlhfError::shape(
            "labels",
            labels.size(),
            format!("[{b}, {t}] (the first two dims of `logits`)"),
        ));
    }
    let m = check::mask("mask", mask, "labels", labels)?.to_device(logits.device());
    // Logits must be finite over the whole vocabulary at every used position.
    check::logits_where("logits", logits, &m, false)?;
    let labels = labels.to_device(logits.device()).to_kind(Kind::Int64);
    let out_of_range = labels
        .lt(0)
        .logical_or(&labels.ge(v))
        .logical_and(&m)
        .sum(Kind::Int64)
        .int64_value(&[]);
    if out_of_range > 0 {
        return Err(RlhfError::invalid(
            "labels",
            format!("{out_of_range} unmasked label(s) outside the vocabulary [0, {v})"),
        ));
    }
    Ok((m, v))
}

/// Log-probability of each given label: `log softmax(logits)[b, t, labels[b, t]]` ("selective
/// log-softmax"; TRL `selective_log_softmax`, OpenRLHF `log_probs_from_logits`, verl
/// `logprobs_from_logits`, DeepSpeed-Chat `gather_log_probs`; seed 000 §1.4 "Log prob of policy").
///
/// Shapes: `logits` (B, T, V) float; `labels` (B, T) integer, already aligned with `logits` (callers
/// shift by one for next-token prediction); `mask` (B, T), 1 where the log-prob is wanted.
/// Masked positions may carry any label (e.g. `-100`) and any logits (even NaN); they come out as 0.
/// Half-precision logits are upcast to f32 before the softmax.
pub fn token_log_probs(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    token_log_probs_at(logits, labels, mask, 1.0)
}

/// [`token_log_probs`] of the distribution the rollout was sampled from at temperature `temperature`:
/// `log softmax(logits / temperature)[labels]` (TRL `selective_log_softmax(logits / T)` — its PPOTrainer
/// divides by `T + 1e-7`, pass that —, OpenRLHF `log_probs_from_logits(..., temperature)`, verl
/// `logits.div_(temperature)`). The division happens after the upcast of half-precision logits.
/// `temperature = 1` is [`token_log_probs`] exactly.
pub fn token_log_probs_at(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    check::positive("temperature", temperature)?;
    let (m, _) = check_logits_labels(logits, labels, mask)?;
    let work_kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let safe_labels = labels
        .to_device(logits.device())
        .to_kind(Kind::Int64)
        .where_self(&m, &Tensor::from(0i64));
    let mut z = logits.to_kind(work_kind);
    // Out-of-place on purpose: `to_kind` returns the caller's own tensor when the kind already matches,
    // and tch's `/=` would divide the caller's logits in place.
    #[allow(clippy::assign_op_pattern)]
    if temperature != 1.0 {
        z = z / temperature;
    }
    let logp = z.log_softmax(-1, work_kind);
    let picked = logp
        .gather(-1, &safe_labels.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let out = zero_masked(&picked, &m);
    check::finite_output("log_probs", &out)?;
    Ok(out)
}

/// Entropy of the categorical distribution at each position: `H = logsumexp(z) − Σ softmax(z)·z`
/// (verl `entropy_from_logits`; the PPO entropy bonus of Schulman et al. 2017, eq. 9).
///
/// Shapes: `logits` (B, T, V); `mask` (B, T). Result (B, T), 0 at masked positions. Computed from
/// logits, never from gathered log-probs, so pad-position sentinels (TRL's `INVALID_LOGPROB = 1.0`)
/// cannot leak into it.
pub fn entropy(logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check::float("logits", logits)?;
    check::ndim("logits", logits, 3, "(B, T, V)")?;
    let (b, t, _) = logits.size3()?;
    if mask.size() != [b, t] {
        return Err(RlhfError::shape(
            "mask",
            mask.size(),
            format!("[{b}, {t}] (the first two dims of `logits`)"),
        ));
    }
    let probe = Tensor::zeros([b, t], (Kind::Float, logits.device()));
    let m = check::mask("mask", mask, "logits[..., 0]", &probe)?;
    // Logits must be finite over the whole vocabulary at every used position.
    check::logits_where("logits", logits, &m, false)?;
    let work_kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    // Masked rows are replaced by zeros first so that NaN there cannot reach the softmax at all.
    let z = logits
        .to_kind(work_kind)
        .where_self(&m.unsqueeze(-1), &Tensor::from(0.0).to_kind(work_kind));
    let p = z.softmax(-1, work_kind);
    let h = z.logsumexp(&[-1i64][..], false)
        - (&p * &z).sum_dim_intlist(&[-1i64][..], false, work_kind);
    let h = zero_masked(&h, &m);
    check::finite_output("entropy", &h)?;
    Ok(h)
}

/// Sequence log-probability `Σ_t mask·logp` and token count per row, the inputs of DPO-family losses.
///
/// Shapes: `token_log_probs`, `mask` (B, T) → (sum (B,), count (B,)) in the float kind of the input.
pub fn sequence_log_probs(token_log_probs: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    check::float("token_log_probs", token_log_probs)?;
    check::ndim("token_log_probs", token_log_probs, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "token_log_probs", token_log_probs)?;
    check::finite_where("token_log_probs", token_log_probs, &m)?;
    let sum = zero_masked(token_log_probs, &m).sum_dim_intlist(
        &[-1i64][..],
        false,
        token_log_probs.kind(),
    );
    let n = m.sum_dim_intlist(&[-1i64][..], false, token_log_probs.kind());
    check::finite_output("sum", &sum)?;
    Ok((sum, n))
}
