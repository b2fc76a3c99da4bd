//! Batched autoregressive sampling with a KV cache, for any [`CausalLm`].
//!
//! # Procedure (HF `transformers` `GenerationMixin._sample`, TRL `batch_generation`)
//! 1. Prompts are left-padded ([`left_pad`]) to `(B, P)`, so every row's last prompt token sits in the
//!    last column; position ids restart at 0 at each row's first real token.
//! 2. **Prefill**: one forward pass over `(B, P)` fills the [`KvCache`]; the logits of the last column
//!    give the distribution of the first response token.
//! 3. **Decode**: one token per step. The new token `(B, 1)` is fed with `attention_mask`
//!    `(B, P + t + 1)` covering the cached positions, and position id `cumsum(mask) − 1` (so a
//!    left-padded row continues at its own length, not at the padded width).
//! 4. A row stops after it samples `eos_id` (the EOS is part of the response: mask 1, with a log-prob);
//!    from then on its response is `pad_id` with mask 0 and log-prob 0, and the row is dropped from the
//!    model's inputs and from the cache ([`KvCache::select_rows`]), so later steps cost only the rows
//!    still generating. The batch stops when every row has stopped or after `max_new_tokens` steps.
//!
//! # Logit processing (order of HF `GenerationMixin._get_logits_processor`, which TRL's samplers use)
//! repetition penalty (HF `RepetitionPenaltyLogitsProcessor`, Keskar et al. 2019 "CTRL" §4.1: the logit
//! `z` of every token already present is replaced by `z · θ` if `z < 0`, `z / θ` otherwise) →
//! `min_new_tokens` (HF `MinNewTokensLengthLogitsProcessor`: EOS logit → −∞ while fewer than
//! `min_new_tokens` tokens are generated) → temperature (HF `TemperatureLogitsWarper`, `z / T`) → top-k
//! (HF `TopKLogitsWarper`) → top-p (HF `TopPLogitsWarper`); see [`filter_logits`]. `temperature = 0`
//! is greedy decoding (HF `do_sample=False`: top-k / top-p are ignored, the argmax is taken).
//!
//! # Randomness
//! Sampling draws from the crate's own [`SplitMix64`], never from libtorch's global generator: row `r`
//! of a batch uses stream `SplitMix64::stream(seed, r)`, one uniform per generated token, and samples by
//! inverse CDF from the f64 probabilities copied to the CPU. Hence the same seed gives the same tokens
//! whatever else uses torch's RNG, and a row's draws do not depend on the other rows of the batch
//! (its tokens can still change if the padded width changes the last bits of the model's logits).
//! tch 0.24 exposes no seedable `torch.Generator` for `multinomial`, and a CPU inverse CDF is
//! device-independent. The price is one `(B, V)` f64 device-to-host copy per step.
//!
//! # Log-probabilities
//! [`Generation::logprobs`] are log-probs of the sampled tokens under the **sampling** distribution
//! (after repetition penalty, min-new-tokens, temperature, top-k and top-p; 0 for greedy decoding,
//! a point mass).
//! [`Generation::logprobs_raw`] are log-probs under the plain model distribution (temperature 1, no
//! filtering) — what a training forward pass with [`crate::core::logprobs::token_log_probs`] over
//! [`Generation::sequences`] recomputes. PPO stacks recompute the old log-probs by such a forward pass
//! rather than reuse generation's scores: TRL `PPOTrainer` (`trl/trainer/ppo_trainer.py`, rollout loop)
//! runs `forward(model, query_response)` and takes `selective_log_softmax(logits / (temperature + 1e-7),
//! response)` — temperature-scaled but never top-k/top-p-filtered (TRL samples with `top_k = 0`,
//! `top_p = 1`). So with `top_k = 0`, `top_p = 1`, [`Generation::logprobs`] equals TRL's old log-probs,
//! and at temperature 1 both fields agree. Masked positions are exactly 0 in both; neither is ever −∞
//! or NaN (a sampled token always has positive probability under the distribution it came from).

use crate::core::check;
use crate::core::logprobs::token_log_probs;
use crate::error::{Result, RlhfError};
use crate::model::tokenizer::Tokenizer;
use crate::model::{left_pad, position_ids_from_mask, CausalLm, KvCache};
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

fn default_one() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

/// How to sample. Field names and semantics follow HF `transformers.GenerationConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// Largest number of response tokens per row (≥ 1); the EOS counts.
    pub max_new_tokens: usize,
    /// EOS is forbidden (its logit set to −∞ in the sampling distribution) until a row has generated
    /// this many tokens (HF `min_new_tokens`). Must be ≤ `max_new_tokens`. Default 0.
    #[serde(default)]
    pub min_new_tokens: usize,
    /// Repetition penalty `θ > 0` on tokens already present in the row (HF `repetition_penalty`);
    /// 1 = off (the default). Unlike HF, which penalises every id of `input_ids` including left pads,
    /// only attended tokens count: the real prompt tokens and the tokens generated so far.
    #[serde(default = "default_one")]
    pub repetition_penalty: f64,
    /// Softmax temperature `T ≥ 0` (logits are divided by `T`); `0` means greedy decoding. Default 1.
    #[serde(default = "default_one")]
    pub temperature: f64,
    /// Keep only the `top_k` most probable tokens (ties with the k-th kept too, as in HF); 0 = off.
    /// Default 0.
    #[serde(default)]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most probable tokens whose probability reaches
    /// `top_p`, in (0, 1]; 1 = off. Default 1.
    #[serde(default = "default_one")]
    pub top_p: f64,
    /// End-of-sequence id: a row stops after sampling it.
    pub eos_id: i64,
    /// Padding id: left of short prompts, right of finished responses. Must differ from `eos_id`.
    pub pad_id: i64,
    /// Seed of the sampling streams (row `r` uses `SplitMix64::stream(seed, r)`). Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Reuse keys/values through a [`KvCache`] (true, the default) or recompute the whole sequence at
    /// every step (false; slower, same tokens — a reference for testing caches).
    #[serde(default = "default_true")]
    pub use_cache: bool,
}

impl GenerationConfig {
    /// Plain sampling at temperature 1 (no top-k/top-p), seed 0, with a cache.
    pub fn new(max_new_tokens: usize, eos_id: i64, pad_id: i64) -> Self {
        GenerationConfig {
            max_new_tokens,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            eos_id,
            pad_id,
            seed: 0,
            use_cache: true,
        }
    }

    /// True for greedy decoding (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field on its own (vocabulary bounds are checked by [`generate`], which knows the
    /// model).
    pub fn validate(&self) -> Result<()> {
        check::at_least("max_new_tokens", self.max_new_tokens as i64, 1)?;
        if self.min_new_tokens > self.max_new_tokens {
            return Err(RlhfError::out_of_range(
                "min_new_tokens",
                self.min_new_tokens as f64,
                format!("<= max_new_tokens = {}", self.max_new_tokens),
            ));
        }
        validate_warpers(self.temperature, self.top_p)?;
        check::positive("repetition_penalty", self.repetition_penalty)?;
        check::at_least("eos_id", self.eos_id, 0)?;
        check::at_least("pad_id", self.pad_id, 0)?;
        if self.pad_id == self.eos_id {
            return Err(RlhfError::invalid(
                "pad_id",
                format!(
                    "pad_id = eos_id = {}: padding must be distinguishable from end of sequence",
                    self.eos_id
                ),
            ));
        }
        Ok(())
    }
}

fn validate_warpers(temperature: f64, top_p: f64) -> Result<()> {
    check::non_negative("temperature", temperature)?;
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return Err(RlhfError::out_of_range("top_p", top_p, "in (0, 1]"));
    }
    Ok(())
}

/// The sampling distribution's logits: temperature, then top-k, then top-p, in the order of HF
/// `generate` (warpers appended by `_get_logits_processor`) and TRL.
///
/// Shapes: `logits` `(B, V)` float (−∞ allowed, e.g. a forbidden token; NaN and +∞ are errors; every
/// row needs a finite entry). Returns `(B, V)` f64 logits with removed tokens at −∞; `softmax` of a row
/// is the distribution a token is drawn from.
/// * `temperature = 0`: greedy — 0 at the row's argmax (the first one if tied, as `torch.argmax`),
///   −∞ elsewhere (a point mass); `top_k`, `top_p` ignored.
/// * temperature (HF `TemperatureLogitsWarper`): `z / T`.
/// * top-k (HF `TopKLogitsWarper`), `0 < top_k < V`: tokens whose logit is below the k-th largest are
///   removed, so exactly `k` are kept unless others tie with the k-th (all ties are kept, as in HF).
/// * top-p (HF `TopPLogitsWarper`), `top_p < 1`: with tokens sorted by decreasing probability `p_(1) ≥
///   p_(2) ≥ …`, token `(i)` is kept iff `Σ_{j<i} p_(j) < top_p` — the smallest prefix whose mass
///   reaches `top_p`; the most probable token is always kept. HF removes tokens whose *ascending*
///   cumulative probability is `≤ 1 − top_p`, the same set in exact arithmetic. Among tokens of equal
///   probability, the lower id ranks first (a stable sort; HF's unstable sort leaves it unspecified).
pub fn filter_logits(
    logits: &Tensor,
    temperature: f64,
    top_k: usize,
    top_p: f64,
) -> Result<Tensor> {
    validate_warpers(temperature, top_p)?;
    check::float("logits", logits)?;
    check::ndim("logits", logits, 2, "(B, V)")?;
    let (_b, v) = logits.size2()?;
    if v == 0 {
        return Err(RlhfError::shape(
            "logits",
            logits.size(),
            "(B, V) with V >= 1",
        ));
    }
    let z = logits.to_kind(Kind::Double);
    // −∞ is a token already removed (e.g. by a caller's own filter); NaN and +∞ are refused, and every
    // row needs a finite entry. One reduction decides the usual case: a row's max (NaN propagates) is
    // finite iff the row has no NaN, no +∞ and at least one finite entry. Only a failing batch pays
    // for the element-wise checks below, which say what is wrong (they cost ≈ 3 ms per step at
    // B = 64, V = 8192, a third of a sampling step).
    let all_rows_ok = z
        .amax(&[-1i64][..], false)
        .isfinite()
        .all()
        .int64_value(&[])
        == 1;
    if !all_rows_ok {
        let every_row = Tensor::ones([z.size()[0]], (Kind::Bool, z.device()));
        check::logits_where("logits", &z, &every_row, true)?;
        let rows_without_finite = z
            .isfinite()
            .any_dim(-1, false)
            .logical_not()
            .sum(Kind::Int64)
            .int64_value(&[]);
        if rows_without_finite > 0 {
            return Err(RlhfError::invalid(
                "logits",
                format!("{rows_without_finite} row(s) have no finite logit (every token removed)"),
            ));
        }
    }
    let neg_inf = f64::NEG_INFINITY;
    if temperature == 0.0 {
        let best = z.argmax(-1, true); // (B, 1)
        let point = z.full_like(neg_inf).scatter(-1, &best, &z.zeros_like());
        return Ok(point);
    }
    // (B, V) temperature-scaled logits (z / 1 = z exactly, so T = 1 skips the pass).
    let mut z = if temperature == 1.0 {
        z
    } else {
        z / temperature
    };
    if top_k > 0 && (top_k as i64) < v {
        let k = top_k as i64;
        let (top, _) = z.topk(k, -1, true, true); // (B, k)
        let kth = top.narrow(-1, k - 1, 1); // (B, 1)
        z = z.masked_fill(&z.lt_tensor(&kth), neg_inf);
    }
    if top_p < 1.0 {
        // Descending stable sort: ties keep ascending id order.
        let (sorted, order) = z.sort_stable(true, -1, true); // (B, V) each
        let probs = sorted.softmax(-1, Kind::Double);
        let cum = probs.cumsum(-1, Kind::Double);
        // Mass strictly before each sorted token: (B, V), first column exactly 0.
        let before = Tensor::cat(
            &[cum.zeros_like().narrow(-1, 0, 1), cum.narrow(-1, 0, v - 1)],
            -1,
        );
        let remove_sorted = before.ge(top_p);
        let remove = remove_sorted
            .zeros_like()
            .scatter(-1, &order, &remove_sorted);
        z = z.masked_fill(&remove, neg_inf);
    }
    Ok(z)
}

/// HF `RepetitionPenaltyLogitsProcessor` (Keskar et al. 2019, §4.1): where `seen` `(B, V)` bool is
/// true, `z < 0` becomes `z · θ` and `z ≥ 0` becomes `z / θ` (so `θ > 1` never raises a logit);
/// other entries are unchanged. `z` `(B, V)` float.
fn repetition_penalty(z: &Tensor, seen: &Tensor, theta: f64) -> Tensor {
    // torch.where(z < 0, z·θ, z / θ)
    let penalized = (z * theta).where_self(&z.lt(0.0), &(z / theta));
    penalized.where_self(seen, z)
}

/// The outcome of [`generate`] for `B` prompts; `P` is the longest prompt, `N` the number of decoding
/// steps run (the longest response, ≤ `max_new_tokens`). Every tensor lives on the model's device;
/// masks are int64 0/1. A training forward pass over [`Self::sequences`] with [`Self::attention_mask`]
/// and [`Self::position_ids`] gives logits `(B, P + N, V)` whose columns `P − 1 .. P + N − 1`
/// (`narrow(1, P − 1, N)`) predict the response tokens.
#[derive(Debug)]
pub struct Generation {
    /// `(B, P)` prompts, left-padded with `pad_id`.
    pub prompt_ids: Tensor,
    /// `(B, P)` 1 on real prompt tokens.
    pub prompt_mask: Tensor,
    /// `(B, N)` sampled tokens, right-padded with `pad_id` after the EOS (or after `max_new_tokens`).
    pub response_ids: Tensor,
    /// `(B, N)` 1 on generated tokens up to and including the EOS, 0 on the padding after it. This, not
    /// `response_ids != pad_id`, says which tokens are real (a model may sample `pad_id`).
    pub response_mask: Tensor,
    /// `(B, N)` f32 log-prob of each sampled token under the sampling distribution (after the
    /// repetition penalty, min-new-tokens, temperature, top-k, top-p; 0 for greedy); exactly 0 where the mask is 0.
    pub logprobs: Tensor,
    /// `(B, N)` f32 log-prob of each sampled token under the plain model distribution (temperature 1,
    /// no filtering), as [`crate::core::logprobs::token_log_probs`] would compute it; 0 where masked.
    pub logprobs_raw: Tensor,
    /// `(B, P + N)` prompt then response ids.
    pub sequences: Tensor,
    /// `(B, P + N)` `prompt_mask` then `response_mask`.
    pub attention_mask: Tensor,
    /// `(B, P + N)` `max(cumsum(attention_mask) − 1, 0)` ([`position_ids_from_mask`]): the positions the
    /// tokens had during generation.
    pub position_ids: Tensor,
    /// `(B,)` int64 number of response tokens per row (≥ 1; the EOS included).
    pub response_lengths: Tensor,
    /// `(B,)` bool: the row ended by sampling EOS (false: cut at `max_new_tokens`).
    pub ended_with_eos: Tensor,
}

impl Generation {
    /// Number of rows `B`.
    pub fn batch_size(&self) -> i64 {
        self.prompt_ids.size()[0]
    }

    /// Padded prompt width `P`.
    pub fn prompt_width(&self) -> i64 {
        self.prompt_ids.size()[1]
    }

    /// Response width `N` (decoding steps run).
    pub fn response_width(&self) -> i64 {
        self.response_ids.size()[1]
    }

    /// Response token ids per row, without padding (EOS included when sampled).
    pub fn responses(&self) -> Result<Vec<Vec<i64>>> {
        let ids = Vec::<Vec<i64>>::try_from(&self.response_ids.to_device(tch::Device::Cpu))?;
        let lens = Vec::<i64>::try_from(&self.response_lengths.to_device(tch::Device::Cpu))?;
        Ok(ids
            .into_iter()
            .zip(lens)
            .map(|(mut row, n)| {
                row.truncate(n as usize);
                row
            })
            .collect())
    }

    /// Decoded response of every row ([`Tokenizer::decode`]: special tokens such as EOS skipped).
    pub fn texts(&self, tokenizer: &Tokenizer) -> Result<Vec<String>> {
        self.responses()?
            .iter()
            .map(|r| tokenizer.decode(r))
            .collect()
    }
}

fn check_prompts<M: CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<()> {
    if prompts.is_empty() {
        return Err(RlhfError::invalid("prompts", "no prompts to generate from"));
    }
    let v = model.vocab_size();
    for (arg, id) in [("eos_id", cfg.eos_id), ("pad_id", cfg.pad_id)] {
        if id >= v {
            return Err(RlhfError::out_of_range(
                arg,
                id as f64,
                format!("in [0, {v}) (the model's vocabulary)"),
            ));
        }
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(RlhfError::invalid(
                "prompts",
                format!("prompt {i} is empty (a prompt needs at least one token)"),
            ));
        }
        if let Some(&bad) = p.iter().find(|&&t| t < 0 || t >= v) {
            return Err(RlhfError::invalid(
                "prompts",
                format!("prompt {i} holds id {bad}, outside the vocabulary [0, {v})"),
            ));
        }
    }
    let p = prompts.iter().map(|p| p.len()).max().unwrap_or(0) as i64;
    let max_pos = model.max_positions();
    if p + cfg.max_new_tokens as i64 > max_pos {
        return Err(RlhfError::invalid("prompts", format!(
                "longest prompt ({p} tokens) + max_new_tokens ({}) exceeds the model's {max_pos} positions",
                cfg.max_new_tokens
            )));
    }
    Ok(())
}

/// Checks a model's logits `(B, T, V)` and returns the last column `(B, V)`.
fn last_logits(logits: &Tensor, b: i64, t: i64, v: i64) -> Result<Tensor> {
    if logits.size() != [b, t, v] {
        return Err(RlhfError::shape(
            "model logits",
            logits.size(),
            format!("[{b}, {t}, {v}] (batch, fed tokens, vocabulary)"),
        ));
    }
    check::float("model logits", logits)?;
    Ok(logits.select(1, t - 1))
}

/// Samples up to `cfg.max_new_tokens` tokens after each prompt (see the module docs for the
/// procedure, the logit processing and the randomness).
///
/// `prompts`: `B ≥ 1` non-empty id sequences, ids in `[0, V)`; `eos_id`, `pad_id` in `[0, V)`; the
/// longest prompt plus `max_new_tokens` must fit in `model.max_positions()` (so that
/// [`Generation::sequences`] can be fed back for training). Runs without gradient, `train = false`.
/// Errors: invalid config or prompts, non-finite model logits at a live row, model shape errors.
pub fn generate<M: CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<Generation> {
    cfg.validate()?;
    check_prompts(model, prompts, cfg)?;
    tch::no_grad(|| generate_checked(model, prompts, cfg))
}

fn generate_checked<M: CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<i64>],
    cfg: &GenerationConfig,
) -> Result<Generation> {
    let device = model.device();
    let v = model.vocab_size();
    let b = prompts.len();
    let bi = b as i64;
    let padded = left_pad(prompts, cfg.pad_id, device)?;
    let p = padded.input_ids.size()[1];
    let mut rngs: Vec<SplitMix64> = (0..b as u64)
        .map(|r| SplitMix64::stream(cfg.seed, r))
        .collect();

    // Prefill: (B, P, V) → (B, V).
    let mut cache = cfg.use_cache.then(|| KvCache::new(model.n_layer()));
    let prefill = model.forward(
        &padded.input_ids,
        &padded.attention_mask,
        &padded.position_ids,
        cache.as_mut(),
        false,
    )?;
    let mut step_logits = last_logits(&prefill, bi, p, v)?;

    // The model is fed only the rows still generating ("live"): `rows[i]` is the batch row of fed row
    // `i`, and finished rows are dropped from the inputs and the cache ([`KvCache::select_rows`]).
    // `seq_ids` / `seq_mask` `(B_live, P + t)` are the live rows' ids and mask so far; the outputs are
    // kept as full-batch `(B, 1)` columns, one per step.
    let mut rows: Vec<usize> = (0..b).collect();
    let mut seq_ids = padded.input_ids.shallow_clone();
    let mut seq_mask = padded.attention_mask.shallow_clone();
    let mut ids_cols: Vec<Tensor> = Vec::new();
    let mut mask_cols: Vec<Tensor> = Vec::new();
    let mut lp_cols: Vec<Tensor> = Vec::new();
    let mut raw_cols: Vec<Tensor> = Vec::new();
    let mut lengths = vec![0i64; b];
    let mut eos_hit = vec![false; b];
    // (B, V) occurrences of each id among the attended tokens, for the repetition penalty.
    let penalize = cfg.repetition_penalty != 1.0;
    let mut seen = if penalize {
        Tensor::zeros([bi, v], (Kind::Int64, device)).scatter_add(
            1,
            &padded.input_ids,
            &padded.attention_mask,
        )
    } else {
        Tensor::zeros([0], (Kind::Int64, device))
    };

    for step in 0..cfg.max_new_tokens {
        let n_live = rows.len() as i64;
        let rows_i64: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let rows_t = Tensor::from_slice(&rows_i64).to_device(device); // (B_live,)

        // Logit processors, then warpers, on the live rows: (B_live, V).
        let mut z = step_logits.shallow_clone();
        if penalize {
            let seen_live = seen.index_select(0, &rows_t).gt(0);
            z = repetition_penalty(&z, &seen_live, cfg.repetition_penalty);
        }
        if step < cfg.min_new_tokens {
            let eos = Tensor::from_slice(&[cfg.eos_id]).to_device(device);
            z = z.index_fill(1, &eos, f64::NEG_INFINITY);
        }
        let processed = filter_logits(&z, cfg.temperature, cfg.top_k, cfg.top_p)?; // (B_live, V) f64

        // Choose the live rows' tokens: argmax, or inverse CDF with each row's own stream.
        let chosen: Vec<i64> = if cfg.is_greedy() {
            Vec::<i64>::try_from(&processed.argmax(-1, false).to_device(tch::Device::Cpu))?
        } else {
            let probs = processed
                .softmax(-1, Kind::Double)
                .to_device(tch::Device::Cpu)
                .contiguous();
            let probs = Vec::<f64>::try_from(probs.view([-1]))?;
            let vu = v as usize;
            let mut chosen = Vec::with_capacity(rows.len());
            for (i, &r) in rows.iter().enumerate() {
                let tok = rngs[r]
                    .categorical(&probs[i * vu..(i + 1) * vu])
                    .ok_or_else(|| RlhfError::NonFinite {
                        arg: "sampling probabilities".into(),
                        count: 1,
                    })?;
                chosen.push(tok as i64);
            }
            chosen
        };
        let chosen_t = Tensor::from_slice(&chosen)
            .view([n_live, 1])
            .to_device(device); // (B_live, 1)

        // Log-probs of the chosen tokens (B_live, 1). The raw ones go through the crate's one
        // selective-log-softmax, which also rejects non-finite model logits.
        let lp = processed
            .log_softmax(-1, Kind::Double)
            .gather(-1, &chosen_t, false)
            .to_kind(Kind::Float);
        let all_live = chosen_t.ones_like();
        let raw = token_log_probs(&step_logits.unsqueeze(1), &chosen_t, &all_live)
            .map_err(|e| match e {
                RlhfError::NonFinite { count, .. } => RlhfError::NonFinite {
                    arg: "model logits".into(),
                    count,
                },
                e => e,
            })?
            .to_kind(Kind::Float);

        // Full-batch (B, 1) columns: pad / mask 0 / log-prob exactly 0 for finished rows.
        let mut next = vec![cfg.pad_id; b];
        let mut live = vec![0i64; b];
        for (i, &r) in rows.iter().enumerate() {
            next[r] = chosen[i];
            live[r] = 1;
            lengths[r] += 1;
            eos_hit[r] = chosen[i] == cfg.eos_id;
        }
        let next_t = Tensor::from_slice(&next).view([bi, 1]).to_device(device);
        let live_t = Tensor::from_slice(&live).view([bi, 1]).to_device(device);
        let zeros = Tensor::zeros([bi, 1], (Kind::Float, device));
        lp_cols.push(zeros.index_copy(0, &rows_t, &lp));
        raw_cols.push(zeros.index_copy(0, &rows_t, &raw));
        if penalize {
            seen = seen.scatter_add(1, &next_t, &live_t);
        }
        ids_cols.push(next_t);
        mask_cols.push(live_t);

        let keep: Vec<i64> = (0..rows.len())
            .filter(|&i| chosen[i] != cfg.eos_id)
            .map(|i| i as i64)
            .collect();
        if step + 1 == cfg.max_new_tokens || keep.is_empty() {
            break;
        }

        // Feed the live rows' new tokens; drop the rows that just finished.
        seq_ids = Tensor::cat(&[&seq_ids, &chosen_t], 1); // (B_live, P + t + 1)
        seq_mask = Tensor::cat(&[&seq_mask, &all_live], 1); // (B_live, P + t + 1)
        let mut fed = chosen_t;
        if (keep.len() as i64) < n_live {
            let keep_t = Tensor::from_slice(&keep).to_device(device);
            seq_ids = seq_ids.index_select(0, &keep_t);
            seq_mask = seq_mask.index_select(0, &keep_t);
            fed = fed.index_select(0, &keep_t);
            if let Some(c) = cache.as_mut() {
                c.select_rows(&keep_t);
            }
            rows = keep.iter().map(|&i| rows[i as usize]).collect();
        }
        let n_live = rows.len() as i64;
        let width = seq_ids.size()[1];
        step_logits = match cache.as_mut() {
            Some(c) => {
                let pos = position_ids_from_mask(&seq_mask).narrow(1, width - 1, 1); // (B_live, 1)
                let out = model.forward(&fed, &seq_mask, &pos, Some(c), false)?;
                last_logits(&out, n_live, 1, v)?
            }
            None => {
                let pos = position_ids_from_mask(&seq_mask); // (B_live, P + t + 1)
                let out = model.forward(&seq_ids, &seq_mask, &pos, None, false)?;
                last_logits(&out, n_live, width, v)?
            }
        };
    }

    let response_ids = Tensor::cat(&ids_cols, 1); // (B, N)
    let response_mask = Tensor::cat(&mask_cols, 1); // (B, N)
    let sequences = Tensor::cat(&[&padded.input_ids, &response_ids], 1); // (B, P + N)
    let attention_mask = Tensor::cat(&[&padded.attention_mask, &response_mask], 1); // (B, P + N)
    let position_ids = position_ids_from_mask(&attention_mask);
    Ok(Generation {
        prompt_ids: padded.input_ids,
        prompt_mask: padded.attention_mask,
        response_ids,
        response_mask,
        logprobs: Tensor::cat(&lp_cols, 1),
        logprobs_raw: Tensor::cat(&raw_cols, 1),
        sequences,
        attention_mask,
        position_ids,
        response_lengths: Tensor::from_slice(&lengths).to_device(device),
        ended_with_eos: Tensor::from_slice(&eos_hit).to_device(device),
    })
}
