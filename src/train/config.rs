//! Config sections every trainer shares, declared once and embedded as `[model]` and `[optim]` tables
//! of a trainer's TOML, plus the one TOML loader (unknown keys rejected, every problem an
//! [`RlhfError::Config`] naming the file).

use crate::core::check::{at_least, non_negative};
use crate::error::{Result, RlhfError};
use crate::model::gpt::GptConfig;
use crate::train::optim::AdamWConfig;
use crate::train::schedule::CosineSchedule;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A trainer config: parsed from TOML, then checked as a whole.
pub trait TrainConfig: DeserializeOwned {
    /// Range checks across sections; errors name the field (`optim.lr`, `model.n_head`, …).
    fn validate(&self) -> Result<()>;
}

/// Parses and validates a TOML file. Every problem (unreadable file, syntax, unknown key, bad value) is
/// [`RlhfError::Config`] naming the file.
pub fn from_file<C: TrainConfig>(path: impl AsRef<Path>) -> Result<C> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RlhfError::Config {
        source_name: name.clone(),
        reason: e.to_string(),
    })?;
    from_toml(&text, &name)
}

/// Parses and validates TOML text; `source_name` names it in errors.
pub fn from_toml<C: TrainConfig>(text: &str, source_name: &str) -> Result<C> {
    let cfg: C = toml::from_str(text).map_err(|e| RlhfError::Config {
        source_name: source_name.into(),
        reason: e.to_string(),
    })?;
    cfg.validate().map_err(|e| RlhfError::Config {
        source_name: source_name.into(),
        reason: e.to_string(),
    })?;
    Ok(cfg)
}

/// Architecture of the trained GPT; the vocabulary size comes from the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Context length (learned positions); ≥ `data.block_size`.
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    /// Must divide `n_embd`.
    pub n_head: i64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_ln_eps() -> f64 {
    1e-5
}

impl ModelSection {
    /// The GPT architecture for a tokenizer of `vocab_size` tokens.
    pub fn gpt_config(&self, vocab_size: i64) -> GptConfig {
        let mut g = GptConfig::new(
            vocab_size,
            self.n_positions,
            self.n_embd,
            self.n_layer,
            self.n_head,
        )
        .with_dropout(self.dropout);
        g.layer_norm_epsilon = self.layer_norm_epsilon;
        g
    }

    /// Checks the section (errors name `model.<field>`), then the model's own checks with the
    /// smallest vocabulary a trained tokenizer can have.
    pub fn validate(&self) -> Result<()> {
        at_least("model.n_embd", self.n_embd, 1)?;
        at_least("model.n_head", self.n_head, 1)?;
        at_least("model.n_layer", self.n_layer, 1)?;
        at_least("model.n_positions", self.n_positions, 2)?;
        if self.n_embd % self.n_head != 0 {
            return Err(RlhfError::invalid(
                "model.n_head",
                format!(
                    "n_embd = {} is not divisible by n_head = {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(RlhfError::out_of_range(
                "model.dropout",
                self.dropout,
                "in [0, 1)",
            ));
        }
        crate::core::check::positive("model.layer_norm_epsilon", self.layer_norm_epsilon)?;
        self.gpt_config(258).validate()
    }
}

/// Optimisation: AdamW + warm-up/cosine schedule + global-norm clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub max_steps: u64,
    pub batch_size: i64,
    #[serde(default = "one")]
    pub grad_accum: i64,
    /// Max global gradient norm (`clip_grad_norm_`); 0 = no clipping.
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn one() -> i64 {
    1
}
fn default_clip() -> f64 {
    1.0
}
fn default_wd() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}

impl OptimSection {
    /// The AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// The learning-rate schedule (cosine decay ends at `max_steps`).
    pub fn schedule(&self) -> Result<CosineSchedule> {
        CosineSchedule::new(self.lr, self.min_lr, self.warmup_steps, self.max_steps)
    }

    /// Checks the section; errors name `optim.<field>`.
    pub fn validate(&self) -> Result<()> {
        self.schedule().map_err(|e| e.in_section("optim"))?;
        at_least("optim.max_steps", self.max_steps as i64, 1)?;
        at_least("optim.batch_size", self.batch_size, 1)?;
        at_least("optim.grad_accum", self.grad_accum, 1)?;
        non_negative("optim.grad_clip", self.grad_clip)?;
        self.adamw().validate().map_err(|e| e.in_section("optim"))
    }
}

/// A run name is a plain directory name (the run directory is `reports/<name>`).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(RlhfError::invalid(
            "name",
            format!("{name:?} must be a plain directory name"),
        ));
    }
    Ok(())
}
