//! GPT-2-style decoder (stub; the full model lands with the model work of issue 4).

use crate::error::{Result, RlhfError};
use crate::model::{CausalLm, KvCache};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

/// Architecture of a [`Gpt`] (field names follow HF `GPT2Config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size `V`.
    pub vocab_size: i64,
    /// Context length (learned positions).
    pub n_positions: i64,
    /// Width `C`.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Attention heads (must divide `n_embd`).
    pub n_head: i64,
    /// Dropout on embeddings, attention weights and residual branches (0 = off).
    #[serde(default)]
    pub dropout: f64,
    /// LayerNorm ε.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_ln_eps() -> f64 {
    1e-5
}

/// GPT-2-style decoder with LM, value and score heads.
#[derive(Debug)]
pub struct Gpt {
    cfg: GptConfig,
    device: Device,
}

impl Gpt {
    /// Creates the parameters under `vs` with GPT-2 initialisation.
    pub fn new(vs: &nn::Path, cfg: GptConfig) -> Result<Self> {
        let _ = vs;
        let _ = cfg;
        Err(RlhfError::Invalid {
            arg: "Gpt".into(),
            reason: "not implemented yet".into(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }
}

impl CausalLm for Gpt {
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }
    fn max_positions(&self) -> i64 {
        self.cfg.n_positions
    }
    fn n_layer(&self) -> usize {
        self.cfg.n_layer as usize
    }
    fn device(&self) -> Device {
        self.device
    }
    fn forward(
        &self,
        _input_ids: &Tensor,
        _attention_mask: &Tensor,
        _position_ids: &Tensor,
        _cache: Option<&mut KvCache>,
        _train: bool,
    ) -> Result<Tensor> {
        Err(RlhfError::Invalid {
            arg: "Gpt".into(),
            reason: "not implemented yet".into(),
        })
    }
}
