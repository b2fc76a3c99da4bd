//! Language models on tch: a GPT-2-style decoder with LM / value / score heads ([`gpt`]), a Llama decoder
//! for SmolLM2 loaded from GGUF ([`llama`], [`gguf`]), and the pieces they share: the [`CausalLm`] trait
//! that sampling and training are written against, the per-layer [`KvCache`], and [`left_pad`].
//!
//! Conventions (HF `transformers`): `input_ids` `(B, T)` int64; `attention_mask` `(B, T_past + T)` 0/1
//! over the cached *and* the new tokens; `position_ids` `(B, T)` int64, `cumsum(mask) − 1` so a
//! left-padded row starts at position 0 at its first real token (pads get position 0 too; their outputs
//! are never read). Logits come back as `(B, T, V)` float32.

pub mod generate;
pub mod gguf;
pub mod gpt;
pub mod llama;
pub mod tokenizer;

use crate::error::{Result, RlhfError};
use tch::{nn, Device, Kind, Tensor};

/// Keys and values of every layer for the tokens seen so far: `layers[l] = (K, V)`, each
/// `(B, H_kv, T_past, D_head)`. Empty (`None`) before the first forward pass.
#[derive(Debug, Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// A cache for a model with `n_layer` layers.
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            layers: (0..n_layer).map(|_| None).collect(),
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the rows `index` (a `(B',)` int64 tensor) of every layer, e.g. to drop finished rows.
    pub fn select_rows(&mut self, index: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, index);
            *v = v.index_select(0, index);
        }
    }
}

/// A decoder-only language model: what sampling ([`crate::model::generate`]) and training ([`crate::train`]) need.
pub trait CausalLm {
    /// Vocabulary size `V` (rows of the LM head).
    fn vocab_size(&self) -> i64;
    /// Largest position id the model accepts + 1 (`n_positions` / context length).
    fn max_positions(&self) -> i64;
    /// Number of layers (for [`KvCache::new`]).
    fn n_layer(&self) -> usize;
    /// Device the parameters live on.
    fn device(&self) -> Device;
    /// Logits `(B, T, V)` f32 for `input_ids` `(B, T)`, given `attention_mask` `(B, T_past + T)` and
    /// `position_ids` `(B, T)`. With a cache, the new keys/values are appended to it and attention covers
    /// the cached positions too. `train` switches dropout on.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor>;
}

/// A causal LM with the two scalar heads RLHF trains: what the reward-model, DPO and PPO trainers are
/// written against (the LM head for the policy, a per-token value head for the critic, a per-sequence
/// score head for the reward model; seed 003 "PPO 涉及的模型"). Implemented by [`gpt::Gpt`].
pub trait RlhfLm: CausalLm {
    /// Final hidden states `(B, T, C)` (after the last norm): the input of every head.
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor>;
    /// LM logits `(B, T, V)` from hidden states `(B, T, C)`.
    fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor>;
    /// Per-token values `(B, T)` (critic head).
    fn values(&self, hidden: &Tensor) -> Result<Tensor>;
    /// Per-sequence scores `(B,)` read at the last real token of `attention_mask` `(B, T)`.
    fn scores(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor>;
}

/// A `Linear(C → 1)` head (`nn.Linear` layout: weight `(1, C)`, bias `(1,)`), weight
/// `N(0, 1/(C+1))`, bias 0 — the reward-head initialisation of OpenAI's `lm-human-preferences`
/// (Ziegler et al. 2019; listed in Huang et al. 2023, "The N Implementation Details of RLHF with
/// PPO", §reward model), used here for the value head too.
#[derive(Debug)]
pub(crate) struct ScalarHead {
    weight: Tensor, // (1, C)
    bias: Tensor,   // (1,)
}

impl ScalarHead {
    pub(crate) fn new(p: &nn::Path, c: i64) -> Result<Self> {
        Ok(ScalarHead {
            weight: p.f_var(
                "weight",
                &[1, c],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / ((c + 1) as f64).sqrt(),
                },
            )?,
            bias: p.f_var("bias", &[1], nn::Init::Const(0.0))?,
        })
    }

    /// `(…, C) → (…)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias)).squeeze_dim(-1)
    }
}

/// The hidden state of the **last real token** of each row: `hidden` `(B, T, C)`, `attention_mask`
/// `(B, T)` 0/1 with a 1 in every row → `(B, C)`, where a reward model reads its score (left or right
/// padding; [`gpt::last_real_index`]).
pub fn hidden_at_last_token(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let (b, t, c) = hidden.size3()?;
    if attention_mask.size() != [b, t] {
        return Err(RlhfError::shape(
            "attention_mask",
            attention_mask.size(),
            format!("(B, T) = [{b}, {t}] (the first two dims of `hidden`)"),
        ));
    }
    let last = gpt::last_real_index(attention_mask)?.to_device(hidden.device()); // (B,)
    Ok(hidden
        .gather(1, &last.view([b, 1, 1]).expand([b, 1, c], false), false)
        .squeeze_dim(1)) // (B, C)
}

/// A left-padded batch: `input_ids` `(B, T)` int64 (pad id on the left), `attention_mask` `(B, T)` int64
/// 0/1, `position_ids` `(B, T)` int64 = `max(cumsum(mask) − 1, 0)`.
#[derive(Debug)]
pub struct LeftPadded {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub position_ids: Tensor,
}

/// Left-pads token sequences to the longest one. Every sequence must be non-empty.
/// Position ids follow HF `generate` (`attention_mask.cumsum(-1) - 1`, pads filled with 0) and TRL.
pub fn left_pad(seqs: &[Vec<i64>], pad_id: i64, device: Device) -> Result<LeftPadded> {
    if seqs.is_empty() {
        return Err(RlhfError::invalid("seqs", "no sequences to pad"));
    }
    if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
        return Err(RlhfError::invalid(
            "seqs",
            format!("sequence {i} is empty (a prompt needs at least one token)"),
        ));
    }
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0i64; b * t];
    let mut pos = vec![0i64; b * t];
    for (r, s) in seqs.iter().enumerate() {
        let off = t - s.len();
        for (j, &tok) in s.iter().enumerate() {
            ids[r * t + off + j] = tok;
            mask[r * t + off + j] = 1;
            pos[r * t + off + j] = j as i64;
        }
    }
    let shape = [b as i64, t as i64];
    let mk = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_device(device);
    Ok(LeftPadded {
        input_ids: mk(ids),
        attention_mask: mk(mask),
        position_ids: mk(pos),
    })
}

/// Position ids from a 0/1 attention mask `(B, T)`: `max(cumsum(mask) − 1, 0)` (HF convention).
pub fn position_ids_from_mask(attention_mask: &Tensor) -> Tensor {
    (attention_mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

/// The inputs of a [`CausalLm::forward`] after [`validate_forward_inputs`]: moved to the model's device,
/// with the shapes they were checked against.
#[derive(Debug)]
pub struct ForwardInputs {
    /// `(B, T)` int64, every id in `[0, V)`.
    pub input_ids: Tensor,
    /// `(B, T)` int64, every position in `[0, max_positions)`.
    pub position_ids: Tensor,
    /// `(B, T_past + T)` bool: which keys (cached and new) are real tokens.
    pub key_mask: Tensor,
    /// True when the mask has no zero (no padding anywhere).
    pub all_real: bool,
    /// Batch size `B`.
    pub batch: i64,
    /// New tokens `T`.
    pub t: i64,
    /// Cached positions `T_past` (0 without a cache).
    pub t_past: i64,
}

/// The one input check of every [`CausalLm::forward`] (the contract in this module's doc):
/// `input_ids` `(B, T)` int64 in `[0, vocab_size)` with `B, T ≥ 1`; a cache with `n_layer` layers of
/// `B` rows; `T_past + T ≤ max_positions`; `attention_mask` `(B, T_past + T)` bool or integer 0/1;
/// `position_ids` `(B, T)` int64 in `[0, max_positions)`. Errors name the argument; nothing panics.
#[allow(clippy::too_many_arguments)]
pub fn validate_forward_inputs(
    input_ids: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
    cache: Option<&KvCache>,
    n_layer: usize,
    vocab_size: i64,
    max_positions: i64,
    device: Device,
) -> Result<ForwardInputs> {
    let int64 = |arg: &str, t: &Tensor| -> Result<()> {
        if t.kind() != Kind::Int64 {
            return Err(RlhfError::Dtype {
                arg: arg.into(),
                got: format!("{:?}", t.kind()),
                expected: "Int64".into(),
            });
        }
        Ok(())
    };
    let in_range = |arg: &str, x: &Tensor, hi: i64, what: &str| -> Result<()> {
        let (lo_v, hi_v) = (x.min().int64_value(&[]), x.max().int64_value(&[]));
        if lo_v < 0 || hi_v >= hi {
            return Err(RlhfError::out_of_range(
                arg,
                (if lo_v < 0 { lo_v } else { hi_v }) as f64,
                format!("in [0, {hi}) ({what})"),
            ));
        }
        Ok(())
    };

    int64("input_ids", input_ids)?;
    let (b, t) = match input_ids.size().as_slice() {
        &[b, t] if b > 0 && t > 0 => (b, t),
        _ => {
            return Err(RlhfError::shape(
                "input_ids",
                input_ids.size(),
                "(B, T) with B ≥ 1 and T ≥ 1",
            ))
        }
    };
    let ids = input_ids.to_device(device);
    in_range("input_ids", &ids, vocab_size, "vocab_size")?;

    let t_past = match cache {
        None => 0,
        Some(c) => {
            if c.layers.len() != n_layer {
                return Err(RlhfError::invalid(
                    "cache",
                    format!("has {} layers, the model has {n_layer}", c.layers.len()),
                ));
            }
            if let Some(Some((k, _))) = c.layers.first() {
                if k.size()[0] != b {
                    return Err(RlhfError::shape(
                        "cache",
                        k.size(),
                        format!("(B = {b}, H, T_past, D) (batch of `input_ids`)"),
                    ));
                }
            }
            c.len()
        }
    };
    let t_total = t_past + t;
    if t_total > max_positions {
        return Err(RlhfError::out_of_range(
            "input_ids",
            t_total as f64,
            format!("T_past + T ≤ max_positions = {max_positions} (T_past = {t_past}, T = {t})"),
        ));
    }

    if attention_mask.size() != [b, t_total] {
        return Err(RlhfError::shape(
            "attention_mask",
            attention_mask.size(),
            format!("(B, T_past + T) = [{b}, {t_total}]"),
        ));
    }
    if attention_mask.is_floating_point() {
        return Err(RlhfError::Dtype {
            arg: "attention_mask".into(),
            got: format!("{:?}", attention_mask.kind()),
            expected: "a bool or integer 0/1 mask".into(),
        });
    }
    let mask = attention_mask.to_device(device);
    let key_mask = if mask.kind() == Kind::Bool {
        mask
    } else {
        if mask.ne(0).logical_and(&mask.ne(1)).any().int64_value(&[]) != 0 {
            return Err(RlhfError::NonBinaryMask {
                arg: "attention_mask".into(),
            });
        }
        mask.ne(0)
    };
    let all_real = key_mask.all().int64_value(&[]) == 1;

    int64("position_ids", position_ids)?;
    if position_ids.size() != [b, t] {
        return Err(RlhfError::shape(
            "position_ids",
            position_ids.size(),
            format!("(B, T) = [{b}, {t}] (the shape of `input_ids`)"),
        ));
    }
    let pos = position_ids.to_device(device);
    in_range("position_ids", &pos, max_positions, "max_positions")?;
    Ok(ForwardInputs {
        input_ids: ids,
        position_ids: pos,
        key_mask,
        all_real,
        batch: b,
        t,
        t_past,
    })
}
