//! Language models on tch: a GPT-2-style decoder with LM / value / score heads ([`gpt`]), a Llama decoder
//! for SmolLM2 loaded from GGUF ([`llama`], [`gguf`]), and the pieces they share: the [`CausalLm`] trait
//! that sampling and training are written against, the per-layer [`KvCache`], and [`left_pad`].
//!
//! Conventions (HF `transformers`): `input_ids` `(B, T)` int64; `attention_mask` `(B, T_past + T)` 0/1
//! over the cached *and* the new tokens; `position_ids` `(B, T)` int64, `cumsum(mask) − 1` so a
//! left-padded row starts at position 0 at its first real token (pads get position 0 too; their outputs
//! are never read). Logits come back as `(B, T, V)` float32.

pub mod gguf;
pub mod gpt;
pub mod llama;

use crate::error::{Result, RlhfError};
use tch::{Device, Kind, Tensor};

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

/// A decoder-only language model: what sampling ([`crate::generate`]) and training ([`crate::train`]) need.
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
        return Err(RlhfError::Invalid {
            arg: "seqs".into(),
            reason: "no sequences to pad".into(),
        });
    }
    if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
        return Err(RlhfError::Invalid {
            arg: "seqs".into(),
            reason: format!("sequence {i} is empty (a prompt needs at least one token)"),
        });
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
