//! Supervised fine-tuning (next-token language modelling) of the GPT on the movie-review corpus, with
//! prompt masking, validation perplexity, metrics/manifest/HTML report, and crash-safe resumable
//! checkpoints.
//!
//! **Data.** The train split of [`crate::data::lm_texts`] (optionally the first `max_train_docs`
//! documents) is tokenised document by document, each document followed by EOS, and concatenated into
//! one token stream (GPT-2 / nanoGPT packing; attention crosses document boundaries, the EOS token
//! tells the model a new document starts). A batch is `batch_size` windows of `block_size + 1` tokens
//! at offsets drawn uniformly by a [`SplitMix64`] seeded with `seed` (nanoGPT `get_batch`): inputs
//! `x = s[o .. o+T]`, targets `y = s[o+1 .. o+T+1]`, both `(B, T)`.
//!
//! **Prompt masking.** Every stream token carries a loss flag; only targets whose flag is set count in
//! the loss (the `labels = -100` convention of HF `transformers`, here as an explicit `(B, T)` 0/1 mask
//! passed to [`crate::logprobs::token_log_probs`] and [`crate::masked::aggregate`]). With
//! `data.source = "reviews"` and `data.prompt_tokens = k > 0`, the first `k` tokens of each review are
//! its "prompt" and carry no loss: the model is conditioned on them but trained only on the
//! continuation ("response") and the EOS; `k = 0` is plain language modelling. With
//! `data.source = "preferences"` (a TRL preference JSONL at `data.path`, read by
//! [`crate::data::read_preferences`]) each document is `prompt ‖ chosen ‖ EOS`, prompt and response
//! tokenised separately (as TRL does), and only the `chosen` tokens and the EOS carry loss
//! (TRL `SFTTrainer` completion-only loss); pairs are split by [`crate::data::split_of`] of the prompt.
//!
//! **Loss.** Mean next-token cross-entropy over the unmasked targets of a micro-batch,
//! `L = −Σ m·log p(y | x) / Σ m` (token mean, [`LossAgg::TokenMean`]); with `grad_accum > 1` each
//! micro-batch loss is divided by `grad_accum` (nanoGPT). A micro-batch without any unmasked target
//! contributes 0.
//!
//! **Evaluation.** Validation stream cut into consecutive non-overlapping windows (deterministic, the
//! same every eval); the first `eval_batches · batch_size` of them are scored: validation loss =
//! `Σ NLL / Σ tokens` over all their unmasked targets, perplexity = `exp(loss)`.
//!
//! **Determinism and resume.** Model init uses `tch::manual_seed(seed)`; step `s` (1-based) calls
//! `tch::manual_seed(seed + s)` before its forward passes, so dropout masks depend only on (seed, s);
//! the data order comes from the SplitMix64 whose state is checkpointed. A checkpoint
//! `checkpoints/ckpt-<s>/` holds the model (`model.safetensors` + `config.json`, written by
//! [`crate::model::gpt::save_checkpoint`]), the AdamW moments (`optimizer.safetensors`) and
//! `state.json` (step, generator state, tokens seen, the resolved config, the metrics so far as f64
//! bit patterns). It is written under a temporary name, then renamed, then `checkpoints/latest.json`
//! is atomically pointed at it; the last `keep_checkpoints` are kept. A run killed at any instant
//! resumes from `latest.json` and, on the CPU with the same thread count, produces bit-identical
//! metrics to an uninterrupted run (tested with SIGKILL in `tests/sft.rs`). Resuming with a different
//! configuration is refused ([`RlhfError::Config`]).
//!
//! **Threads.** On an oversubscribed 2-core machine libtorch's OpenMP pool spin-waits: the small
//! config ran 4.5× faster with `threads = 1` than with 2 (3,194 vs 703 tokens/s), hence the configs
//! pin `threads`.

use crate::data::lm_texts;
use crate::error::{Result, RlhfError};
use crate::masked::{aggregate, EmptyRows, LossAgg};
use crate::model::gpt::{Gpt, GptConfig};
use crate::model::CausalLm;
use crate::report::{self, RunManifest};
use crate::rng::SplitMix64;
use crate::tokenizer::{BpeConfig, Tokenizer};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::train::schedule::CosineSchedule;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

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

/// Which tokenizer: trained here on the training texts (`vocab_size`, `min_frequency`), or an existing
/// `tokenizer.json` (`path`). Either way a copy is saved as `tokenizer.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// An existing Hugging Face `tokenizer.json` (with `<|endoftext|>` / `<|pad|>`) instead of training.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_vocab() -> usize {
    BpeConfig::default().vocab_size
}
fn default_min_frequency() -> u64 {
    BpeConfig::default().min_frequency
}

/// The corpus and how it is cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Corpus: `reviews` (the movie-review texts of [`crate::data::lm_texts`]) or `preferences`
    /// (prompt + chosen response of the TRL preference JSONL at `path`; loss on the response only).
    #[serde(default = "default_source")]
    pub source: String,
    /// The preference JSONL of `source = "preferences"`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Tokens per training window `T` (≤ `model.n_positions`).
    pub block_size: i64,
    /// Use only the first N training documents (and train the tokenizer on them).
    #[serde(default)]
    pub max_train_docs: Option<usize>,
    /// Use only the first N validation documents.
    #[serde(default)]
    pub max_val_docs: Option<usize>,
    /// Leading tokens of each document treated as prompt (no loss on them); 0 = loss on every token.
    #[serde(default)]
    pub prompt_tokens: usize,
}

fn default_source() -> String {
    "reviews".into()
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

/// A whole SFT run configuration (`configs/sft-*.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Run name: the run directory is `reports/<name>` unless `--out` says otherwise.
    pub name: String,
    #[serde(default)]
    pub seed: i64,
    /// libtorch intra-op threads (absent: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    /// Evaluate every this many steps (and at step 0 and at the end).
    pub eval_interval: u64,
    /// Validation batches per evaluation.
    pub eval_batches: i64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_interval: u64,
    /// Log a metrics row every this many steps.
    #[serde(default = "one_u64")]
    pub log_interval: u64,
    /// Checkpoints kept on disk (≥ 1).
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    pub model: ModelSection,
    pub tokenizer: TokenizerSection,
    pub data: DataSection,
    pub optim: OptimSection,
}

fn one_u64() -> u64 {
    1
}
fn two() -> usize {
    2
}

impl SftConfig {
    /// Parses and validates a TOML file. Every problem (unreadable file, syntax, unknown key, bad
    /// value) is [`RlhfError::Config`] naming the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RlhfError::Config {
            source_name: name.clone(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, &name)
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        let cfg: SftConfig = toml::from_str(text).map_err(|e| RlhfError::Config {
            source_name: source_name.into(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|e| RlhfError::Config {
            source_name: source_name.into(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Range checks across sections (also run by [`run_sft`]).
    pub fn validate(&self) -> Result<()> {
        use crate::check::{at_least, non_negative};
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(RlhfError::Invalid {
                arg: "name".into(),
                reason: format!("{:?} must be a plain directory name", self.name),
            });
        }
        let m = &self.model;
        at_least("model.n_embd", m.n_embd, 1)?;
        at_least("model.n_head", m.n_head, 1)?;
        at_least("model.n_layer", m.n_layer, 1)?;
        at_least("model.n_positions", m.n_positions, 2)?;
        if m.n_embd % m.n_head != 0 {
            return Err(RlhfError::Invalid {
                arg: "model.n_head".into(),
                reason: format!(
                    "n_embd = {} is not divisible by n_head = {}",
                    m.n_embd, m.n_head
                ),
            });
        }
        if !(m.dropout.is_finite() && (0.0..1.0).contains(&m.dropout)) {
            return Err(RlhfError::OutOfRange {
                arg: "model.dropout".into(),
                value: m.dropout,
                range: "in [0, 1)".into(),
            });
        }
        crate::check::positive("model.layer_norm_epsilon", m.layer_norm_epsilon)?;
        // The model's own checks too (with the smallest vocabulary a trained tokenizer can have).
        self.gpt_config(258).validate()?;
        if self.tokenizer.path.is_none() {
            at_least(
                "tokenizer.vocab_size",
                self.tokenizer.vocab_size as i64,
                258,
            )?;
            at_least(
                "tokenizer.min_frequency",
                self.tokenizer.min_frequency as i64,
                1,
            )?;
        }
        match (self.data.source.as_str(), &self.data.path) {
            ("reviews", None) => {}
            ("reviews", Some(_)) => {
                return Err(RlhfError::Invalid {
                    arg: "data.path".into(),
                    reason: "only used with source = \"preferences\"".into(),
                })
            }
            ("preferences", None) => {
                return Err(RlhfError::Invalid {
                    arg: "data.path".into(),
                    reason: "source = \"preferences\" needs the JSONL file".into(),
                })
            }
            ("preferences", Some(_)) if self.data.prompt_tokens > 0 => {
                return Err(RlhfError::Invalid {
                    arg: "data.prompt_tokens".into(),
                    reason: "preference data mask their prompt already; leave prompt_tokens at 0"
                        .into(),
                })
            }
            ("preferences", Some(_)) => {}
            (other, _) => {
                return Err(RlhfError::Invalid {
                    arg: "data.source".into(),
                    reason: format!(
                        "unknown source {other:?} (known: \"reviews\", \"preferences\")"
                    ),
                })
            }
        }
        at_least("data.block_size", self.data.block_size, 1)?;
        if self.data.block_size > m.n_positions {
            return Err(RlhfError::OutOfRange {
                arg: "data.block_size".into(),
                value: self.data.block_size as f64,
                range: format!("<= model.n_positions ({})", m.n_positions),
            });
        }
        for (arg, v) in [
            ("data.max_train_docs", self.data.max_train_docs),
            ("data.max_val_docs", self.data.max_val_docs),
        ] {
            if let Some(v) = v {
                at_least(arg, v as i64, 1)?;
            }
        }
        let o = &self.optim;
        CosineSchedule::new(o.lr, o.min_lr, o.warmup_steps, o.max_steps)
            .map_err(|e| prefix("optim", e))?;
        at_least("optim.max_steps", o.max_steps as i64, 1)?;
        at_least("optim.batch_size", o.batch_size, 1)?;
        at_least("optim.grad_accum", o.grad_accum, 1)?;
        non_negative("optim.grad_clip", o.grad_clip)?;
        self.adamw().validate().map_err(|e| prefix("optim", e))?;
        at_least("eval_interval", self.eval_interval as i64, 1)?;
        at_least("eval_batches", self.eval_batches, 1)?;
        at_least("checkpoint_interval", self.checkpoint_interval as i64, 1)?;
        at_least("log_interval", self.log_interval as i64, 1)?;
        at_least("keep_checkpoints", self.keep_checkpoints as i64, 1)?;
        if let Some(t) = self.threads {
            at_least("threads", i64::from(t), 1)?;
        }
        Ok(())
    }

    /// The AdamW hyper-parameters of `optim`.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.optim.beta1,
            beta2: self.optim.beta2,
            eps: self.optim.eps,
            weight_decay: self.optim.weight_decay,
        }
    }

    /// The learning-rate schedule (cosine decay ends at `max_steps`).
    pub fn schedule(&self) -> Result<CosineSchedule> {
        let o = &self.optim;
        CosineSchedule::new(o.lr, o.min_lr, o.warmup_steps, o.max_steps)
    }

    /// The GPT architecture for a tokenizer of `vocab_size` tokens.
    pub fn gpt_config(&self, vocab_size: i64) -> GptConfig {
        let m = &self.model;
        let mut g = GptConfig::new(vocab_size, m.n_positions, m.n_embd, m.n_layer, m.n_head)
            .with_dropout(m.dropout);
        g.layer_norm_epsilon = m.layer_norm_epsilon;
        g
    }
}

/// Prefixes the argument name of an error with its config section.
fn prefix(section: &str, e: RlhfError) -> RlhfError {
    match e {
        RlhfError::OutOfRange { arg, value, range } => RlhfError::OutOfRange {
            arg: format!("{section}.{arg}"),
            value,
            range,
        },
        RlhfError::Invalid { arg, reason } => RlhfError::Invalid {
            arg: format!("{section}.{arg}"),
            reason,
        },
        e => e,
    }
}

/// What to do with an existing run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeMode {
    /// Resume from `checkpoints/latest.json` if the run directory has one, else start fresh.
    #[default]
    Auto,
    /// Delete the run's checkpoints, metrics and reports and start over.
    Fresh,
    /// Resume; an error if there is no checkpoint.
    Require,
}

/// How to run (not part of the config, so not part of what a resume must match).
#[derive(Debug, Clone, Default)]
pub struct SftOptions {
    /// Run directory (default `reports/<name>` under the project root).
    pub out_dir: Option<PathBuf>,
    pub resume: ResumeMode,
    /// The config file, recorded in the manifest.
    pub config_file: Option<PathBuf>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Print one line per evaluation/checkpoint/resume to stderr.
    pub verbose: bool,
    /// Test hook: sleep this long after every step, so a test can kill the process mid-run.
    pub step_delay_ms: u64,
    /// Data directory (default [`crate::data::data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// `report.html` loads plotly.js from its CDN instead of inlining it (≈ 10 kB instead of ≈ 7 MB,
    /// but needs a network connection to show the figures).
    pub plotly_cdn: bool,
}

/// One row of `metrics.csv`. Step 0 has only the validation columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimiser steps completed.
    pub step: u64,
    /// Training tokens (window positions, masked or not) consumed so far.
    pub tokens: u64,
    pub lr: Option<f64>,
    /// Mean over the micro-batches of the step of their token-mean NLL.
    pub train_loss: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// Step the run resumed from (None: fresh).
    pub resumed_from: Option<u64>,
    pub final_val_loss: f64,
    pub final_val_ppl: f64,
    pub n_params: i64,
    /// Training tokens per second of this process (optimisation only; eval excluded).
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
    pub metrics: Vec<MetricsRow>,
}

/// The token stream of a split with its per-token loss flags.
#[derive(Debug, Clone)]
struct Stream {
    tokens: Vec<i64>,
    /// `loss[i]`: token `i` counts as a target (not among the first `prompt_tokens` of its document).
    loss: Vec<bool>,
}

/// One training document: an optional prompt (no loss) and the text trained on.
#[derive(Debug, Clone, PartialEq)]
struct Doc {
    prompt: Option<String>,
    response: String,
}

impl Doc {
    /// Prompt and response as one text (tokenizer training, digests).
    fn full_text(&self) -> String {
        match &self.prompt {
            Some(p) => format!("{p}{}", self.response),
            None => self.response.clone(),
        }
    }
}

/// Tokens of `docs`, each `prompt ‖ response ‖ EOS`; loss flags are off on the prompt and on the first
/// `prompt_tokens` response tokens.
fn build_stream(tok: &Tokenizer, docs: &[Doc], prompt_tokens: usize) -> Result<Stream> {
    let mut tokens = Vec::new();
    let mut loss = Vec::new();
    for d in docs {
        if let Some(p) = &d.prompt {
            let ids = tok.encode(p)?;
            loss.extend(std::iter::repeat_n(false, ids.len()));
            tokens.extend(ids);
        }
        let ids = tok.encode(&d.response)?;
        for (j, id) in ids.into_iter().enumerate() {
            tokens.push(id);
            loss.push(j >= prompt_tokens);
        }
        tokens.push(tok.eos_id());
        loss.push(true);
    }
    Ok(Stream { tokens, loss })
}

/// Train and validation documents of the configured source.
fn load_docs(cfg: &DataSection, data_dir: &Path) -> Result<(Vec<Doc>, Vec<Doc>)> {
    let plain = |v: Vec<String>| -> Vec<Doc> {
        v.into_iter()
            .map(|response| Doc {
                prompt: None,
                response,
            })
            .collect()
    };
    let (mut train, mut val) = match (cfg.source.as_str(), &cfg.path) {
        ("preferences", Some(path)) => {
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for p in crate::data::read_preferences(path)? {
                let doc = Doc {
                    prompt: Some(p.prompt.clone()),
                    response: p.chosen,
                };
                match crate::data::split_of(&p.prompt) {
                    crate::data::Split::Train => train.push(doc),
                    crate::data::Split::Validation => val.push(doc),
                    crate::data::Split::Test => {}
                }
            }
            (train, val)
        }
        _ => {
            let splits = lm_texts(data_dir)?;
            (plain(splits.train), plain(splits.validation))
        }
    };
    if let Some(n) = cfg.max_train_docs {
        train.truncate(n);
    }
    if let Some(n) = cfg.max_val_docs {
        val.truncate(n);
    }
    Ok((train, val))
}

/// A `(B, T)` batch: inputs, targets, target loss mask.
struct Batch {
    x: Tensor,
    y: Tensor,
    mask: Tensor,
}

fn batch_at(s: &Stream, offsets: &[usize], t: usize, device: Device) -> Batch {
    let b = offsets.len() as i64;
    let mut x = Vec::with_capacity(offsets.len() * t);
    let mut y = Vec::with_capacity(offsets.len() * t);
    let mut m = Vec::with_capacity(offsets.len() * t);
    for &o in offsets {
        x.extend_from_slice(&s.tokens[o..o + t]);
        y.extend_from_slice(&s.tokens[o + 1..o + t + 1]);
        m.extend(s.loss[o + 1..o + t + 1].iter().map(|&f| i64::from(f)));
    }
    let shape = [b, t as i64];
    let mk = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_device(device);
    Batch {
        x: mk(x),
        y: mk(y),
        mask: mk(m),
    }
}

/// Per-token NLL `(B, T)` (0 where masked) of a batch: `−log softmax(logits)[y]`.
fn batch_nll(model: &Gpt, batch: &Batch, train: bool) -> Result<Tensor> {
    let (b, t) = batch.x.size2()?;
    let device = batch.x.device();
    let attention_mask = Tensor::ones([b, t], (Kind::Int64, device)); // (B, T)
    let position_ids = Tensor::arange(t, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([b, t], true); // (B, T)
    let logits = model.forward(&batch.x, &attention_mask, &position_ids, None, train)?; // (B, T, V)
    let logp = crate::logprobs::token_log_probs(&logits, &batch.y, &batch.mask)?; // (B, T)
    Ok(-logp)
}

/// Validation loss and perplexity over the first `n_windows` consecutive windows of `s`.
fn evaluate(
    model: &Gpt,
    s: &Stream,
    t: usize,
    n_windows: usize,
    b: usize,
    device: Device,
) -> Result<(f64, f64)> {
    let available = (s.tokens.len().saturating_sub(1)) / t;
    let n = n_windows.min(available);
    if n == 0 {
        return Err(RlhfError::Invalid {
            arg: "validation data".into(),
            reason: format!(
                "{} validation tokens do not fill one window of block_size + 1 = {}",
                s.tokens.len(),
                t + 1
            ),
        });
    }
    let offsets: Vec<usize> = (0..n).map(|i| i * t).collect();
    let (mut nll_sum, mut count) = (0.0f64, 0i64);
    tch::no_grad(|| -> Result<()> {
        for chunk in offsets.chunks(b) {
            let batch = batch_at(s, chunk, t, device);
            let nll = batch_nll(model, &batch, false)?;
            nll_sum += nll
                .to_kind(Kind::Double)
                .sum(Kind::Double)
                .f_double_value(&[])?;
            count += batch.mask.sum(Kind::Int64).f_int64_value(&[])?;
        }
        Ok(())
    })?;
    if count == 0 {
        return Err(RlhfError::Invalid {
            arg: "validation data".into(),
            reason: "no unmasked target token in the evaluation windows (prompt_tokens too large?)"
                .into(),
        });
    }
    let loss = nll_sum / count as f64;
    Ok((loss, loss.exp()))
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CkptState {
    step: u64,
    rng_state: u64,
    tokens: u64,
    config: serde_json::Value,
    metrics: Vec<MetricsBits>,
}

/// A [`MetricsRow`] with every float stored as its IEEE-754 bit pattern: serde_json's default float
/// parser may round the last bit (its `float_roundtrip` feature is off), which would break the
/// bit-identical metrics of a resumed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetricsBits {
    step: u64,
    tokens: u64,
    /// `[lr, train_loss, grad_norm, val_loss, val_ppl]` as `f64::to_bits`, `None` where absent.
    values: [Option<u64>; 5],
}

impl From<&MetricsRow> for MetricsBits {
    fn from(r: &MetricsRow) -> Self {
        let b = |v: Option<f64>| v.map(f64::to_bits);
        MetricsBits {
            step: r.step,
            tokens: r.tokens,
            values: [
                b(r.lr),
                b(r.train_loss),
                b(r.grad_norm),
                b(r.val_loss),
                b(r.val_ppl),
            ],
        }
    }
}

impl From<&MetricsBits> for MetricsRow {
    fn from(r: &MetricsBits) -> Self {
        let f = |i: usize| r.values[i].map(f64::from_bits);
        MetricsRow {
            step: r.step,
            tokens: r.tokens,
            lr: f(0),
            train_loss: f(1),
            grad_norm: f(2),
            val_loss: f(3),
            val_ppl: f(4),
        }
    }
}

/// `latest.json`: which checkpoint directory is the newest complete one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latest {
    step: u64,
    dir: String,
}

const LATEST: &str = "latest.json";
/// Subdirectory of the run directory holding `ckpt-<step>/` and `latest.json` (git-ignored as
/// `/reports/*/checkpoints/`).
const CHECKPOINTS: &str = "checkpoints";

fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:08}")
}

fn named_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn remove_dir_if_exists(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).map_err(|e| RlhfError::io(p, e))?;
    }
    Ok(())
}

/// The newest checkpoint of a run directory (`<run_dir>/checkpoints/<latest.json's dir>`), holding
/// `model.safetensors` + `config.json` for [`Gpt::load_checkpoint`]; `None` when the run has none yet.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let ckpt_root = run_dir.join(CHECKPOINTS);
    let latest_path = ckpt_root.join(LATEST);
    if !latest_path.is_file() {
        return Ok(None);
    }
    let latest: Latest = crate::io::read_json(&latest_path)?;
    Ok(Some(ckpt_root.join(latest.dir)))
}

/// Writes `<ckpt_root>/ckpt-<step>/` (via a temporary directory + rename), points
/// `<ckpt_root>/latest.json` at it, prunes old ones.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    ckpt_root: &Path,
    vs: &nn::VarStore,
    gpt_cfg: &GptConfig,
    opt: &AdamW,
    state: &CkptState,
    keep: usize,
) -> Result<()> {
    let name = ckpt_name(state.step);
    let tmp = ckpt_root.join(format!(".{name}.tmp"));
    remove_dir_if_exists(&tmp)?;
    crate::model::gpt::save_checkpoint(&tmp, vs, gpt_cfg)?;
    opt.save(tmp.join("optimizer.safetensors"))?;
    crate::io::write_json(tmp.join("state.json"), state)?;
    let dst = ckpt_root.join(&name);
    remove_dir_if_exists(&dst)?;
    std::fs::rename(&tmp, &dst).map_err(|e| RlhfError::io(&dst, e))?;
    if let Ok(f) = std::fs::File::open(ckpt_root) {
        let _ = f.sync_all();
    }
    crate::io::write_json(
        ckpt_root.join(LATEST),
        &Latest {
            step: state.step,
            dir: name.clone(),
        },
    )?;
    // Prune: keep the newest `keep` checkpoints (the one just written among them).
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(ckpt_root)
        .map_err(|e| RlhfError::io(ckpt_root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("ckpt-")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| (s, e.path()))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for (s, p) in steps.into_iter().take(n.saturating_sub(keep)) {
        if s != state.step {
            remove_dir_if_exists(&p)?;
        }
    }
    Ok(())
}

/// Files a run writes into its directory (removed by [`ResumeMode::Fresh`]).
fn clear_run_dir(run_dir: &Path) -> Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(run_dir).map_err(|e| RlhfError::io(run_dir, e))? {
        let e = e.map_err(|e| RlhfError::io(run_dir, e))?;
        let n = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if n == CHECKPOINTS {
            remove_dir_if_exists(&p)?;
        } else if [
            "metrics.csv",
            "manifest.json",
            "report.html",
            "tokenizer.json",
        ]
        .contains(&n.as_str())
        {
            std::fs::remove_file(&p).map_err(|e| RlhfError::io(&p, e))?;
        }
    }
    Ok(())
}

/// The metrics rows as a polars `DataFrame` (nulls where a column does not apply).
pub fn metrics_frame(rows: &[MetricsRow]) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let col_f = |name: &str, f: &dyn Fn(&MetricsRow) -> Option<f64>| {
        Column::new(
            name.into(),
            rows.iter().map(f).collect::<Vec<Option<f64>>>(),
        )
    };
    let df = DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.step).collect::<Vec<u64>>(),
            ),
            Column::new(
                "tokens".into(),
                rows.iter().map(|r| r.tokens).collect::<Vec<u64>>(),
            ),
            col_f("lr", &|r| r.lr),
            col_f("train_loss", &|r| r.train_loss),
            col_f("grad_norm", &|r| r.grad_norm),
            col_f("val_loss", &|r| r.val_loss),
            col_f("val_ppl", &|r| r.val_ppl),
        ],
    )?;
    Ok(df)
}

fn write_metrics(run_dir: &Path, rows: &[MetricsRow]) -> Result<()> {
    let mut df = metrics_frame(rows)?;
    report::write_csv(run_dir.join("metrics.csv"), &mut df)
}

fn write_report(
    run_dir: &Path,
    rows: &[MetricsRow],
    manifest: &RunManifest,
    plotly_cdn: bool,
) -> Result<()> {
    use plotly::common::{Mode, Title};
    use plotly::layout::{Axis, AxisType, Layout};
    use plotly::{Plot, Scatter};
    let series = |f: &dyn Fn(&MetricsRow) -> Option<f64>| -> (Vec<u64>, Vec<f64>) {
        rows.iter()
            .filter_map(|r| f(r).map(|v| (r.step, v)))
            .unzip()
    };
    let (ts, tl) = series(&|r| r.train_loss);
    let (vs, vl) = series(&|r| r.val_loss);
    let (ps, pv) = series(&|r| r.val_ppl);
    let mut loss = Plot::new();
    loss.add_trace(
        Scatter::new(ts, tl)
            .mode(Mode::Lines)
            .name("train loss (token-mean NLL)"),
    );
    loss.add_trace(
        Scatter::new(vs, vl)
            .mode(Mode::LinesMarkers)
            .name("validation loss"),
    );
    loss.set_layout(
        Layout::new()
            .title(Title::with_text(format!("{}: loss", manifest.run)))
            .x_axis(Axis::new().title(Title::with_text("step")))
            .y_axis(Axis::new().title(Title::with_text("nats / token"))),
    );
    let mut ppl = Plot::new();
    ppl.add_trace(
        Scatter::new(ps, pv)
            .mode(Mode::LinesMarkers)
            .name("validation perplexity"),
    );
    ppl.set_layout(
        Layout::new()
            .title(Title::with_text(format!(
                "{}: validation perplexity",
                manifest.run
            )))
            .x_axis(Axis::new().title(Title::with_text("step")))
            .y_axis(
                Axis::new()
                    .title(Title::with_text("exp(mean NLL)"))
                    .type_(AxisType::Log),
            ),
    );
    let notes: Vec<String> = manifest
        .results
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let html = report::html_report(
        &format!("SFT run {}", manifest.run),
        &[("Loss", &loss), ("Validation perplexity", &ppl)],
        &notes,
        manifest,
        if plotly_cdn {
            report::PlotlyJs::Cdn
        } else {
            report::PlotlyJs::Inline
        },
    )?;
    crate::io::atomic_write(run_dir.join("report.html"), html.as_bytes())
}

/// Runs (or resumes) SFT as configured; see the module documentation. Writes into the run directory:
/// `tokenizer.json`, `metrics.csv`, `manifest.json`, `report.html`, and `checkpoints/` with
/// `ckpt-<step>/{model.safetensors, config.json, optimizer.safetensors, state.json}` and `latest.json`.
pub fn run_sft(cfg: &SftConfig, opts: &SftOptions) -> Result<SftSummary> {
    let t_start = Instant::now();
    let source = opts
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| cfg.name.clone());
    cfg.validate().map_err(|e| RlhfError::Config {
        source_name: source.clone(),
        reason: e.to_string(),
    })?;
    let config_json =
        serde_json::to_value(cfg).map_err(|e| RlhfError::format(&source, "config", e))?;
    let run_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| crate::io::project_root().join("reports").join(&cfg.name));
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t);
    }
    let device = Device::Cpu;
    let say = |msg: String| {
        if opts.verbose {
            eprintln!("{msg}");
        }
    };

    // Resume or start fresh.
    let ckpt_root = run_dir.join(CHECKPOINTS);
    let latest_path = ckpt_root.join(LATEST);
    let resume_state: Option<(CkptState, PathBuf)> = match opts.resume {
        ResumeMode::Fresh => {
            clear_run_dir(&run_dir)?;
            None
        }
        ResumeMode::Auto | ResumeMode::Require => {
            if latest_path.is_file() {
                let latest: Latest = crate::io::read_json(&latest_path)?;
                let dir = ckpt_root.join(&latest.dir);
                let state: CkptState = crate::io::read_json(dir.join("state.json"))?;
                if state.config != config_json {
                    return Err(RlhfError::Config {
                        source_name: source,
                        reason: format!(
                            "{} holds a checkpoint of a run with a different configuration; \
                             pass --fresh to start over or --out to use another directory",
                            run_dir.display()
                        ),
                    });
                }
                Some((state, dir))
            } else if opts.resume == ResumeMode::Require {
                return Err(RlhfError::io(&latest_path, "no checkpoint to resume from"));
            } else {
                None
            }
        }
    };
    std::fs::create_dir_all(&run_dir).map_err(|e| RlhfError::io(&run_dir, e))?;
    // Stale temporary checkpoint directories of a killed run.
    if ckpt_root.is_dir() {
        for e in std::fs::read_dir(&ckpt_root)
            .map_err(|e| RlhfError::io(&ckpt_root, e))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(".ckpt-") {
                remove_dir_if_exists(&e.path())?;
            }
        }
    }

    // Data.
    let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);
    let (train_docs, val_docs) = load_docs(&cfg.data, &data_dir)?;
    let train_texts: Vec<String> = train_docs.iter().map(Doc::full_text).collect();
    let val_texts: Vec<String> = val_docs.iter().map(Doc::full_text).collect();

    // Tokenizer: reloaded from the run directory on resume, else trained (or copied) and saved there.
    let tok_path = run_dir.join("tokenizer.json");
    let tokenizer = if resume_state.is_some() {
        Tokenizer::from_file(&tok_path)?
    } else {
        let tk = match &cfg.tokenizer.path {
            Some(p) => Tokenizer::from_file(p)?,
            None => Tokenizer::train_bpe(
                &train_texts,
                &BpeConfig {
                    vocab_size: cfg.tokenizer.vocab_size,
                    min_frequency: cfg.tokenizer.min_frequency,
                },
            )?,
        };
        tk.save(&tok_path)?;
        tk
    };
    let t = cfg.data.block_size as usize;
    let train = build_stream(&tokenizer, &train_docs, cfg.data.prompt_tokens)?;
    let val = build_stream(&tokenizer, &val_docs, cfg.data.prompt_tokens)?;
    if train.tokens.len() < t + 1 {
        return Err(RlhfError::Invalid {
            arg: "data".into(),
            reason: format!(
                "{} training tokens do not fill one window of block_size + 1 = {}",
                train.tokens.len(),
                t + 1
            ),
        });
    }

    // Model and optimiser.
    let gpt_cfg = cfg.gpt_config(tokenizer.vocab_size());
    let (vs, model) = match &resume_state {
        Some((_, dir)) => {
            let (vs, model) = Gpt::load_checkpoint(dir, device)?;
            if model.config() != &gpt_cfg {
                return Err(RlhfError::format(
                    dir.join(crate::model::gpt::CONFIG_FILE),
                    "GPT config of this run",
                    format!(
                        "{:?} differs from the configured {gpt_cfg:?}",
                        model.config()
                    ),
                ));
            }
            (vs, model)
        }
        None => {
            tch::manual_seed(cfg.seed);
            let vs = nn::VarStore::new(device);
            let model = Gpt::new(&vs.root(), gpt_cfg.clone())?;
            (vs, model)
        }
    };
    let mut opt = AdamW::new(&vs, cfg.adamw())?;
    let n_params: i64 = named_vars(&vs).iter().map(|(_, t)| t.numel() as i64).sum();
    let schedule = cfg.schedule()?;

    let (mut step, mut rng, mut tokens_seen, mut rows, resumed_from) = match &resume_state {
        Some((state, dir)) => {
            opt.load(dir.join("optimizer.safetensors"))?;
            // Always said, even when quiet: a resumed run must never pass for a fresh one.
            eprintln!(
                "resuming {} from step {} ({})",
                cfg.name,
                state.step,
                dir.display()
            );
            (
                state.step,
                SplitMix64::from_state(state.rng_state),
                state.tokens,
                state.metrics.iter().map(MetricsRow::from).collect(),
                Some(state.step),
            )
        }
        None => (0, SplitMix64::new(cfg.seed as u64), 0, Vec::new(), None),
    };

    // Manifest (kept across resumes: the first start time and every resume are recorded).
    let manifest_path = run_dir.join("manifest.json");
    let mut manifest = RunManifest::new(&cfg.name, "sft", config_json.clone(), cfg.seed, device);
    if resumed_from.is_some() {
        if let Ok(prev) = crate::io::read_json::<RunManifest>(&manifest_path) {
            manifest.started_at = prev.started_at;
            manifest.resumed_from = prev.resumed_from;
            manifest.results = prev.results;
            manifest.finished_at = prev.finished_at;
        }
    }
    manifest.resumed_from.extend(resumed_from);
    manifest.config_file = opts.config_file.as_ref().map(|p| p.display().to_string());
    // The files read: those of `lm_texts` (pinned hashes from the data directory's MANIFEST.json), or
    // the preference JSONL (hashed now).
    manifest.data = match &cfg.data.path {
        Some(p) => vec![report::DataFile {
            path: p.display().to_string(),
            sha256: crate::io::sha256_file(p)?,
        }],
        None => {
            let lm_files: Vec<&str> = crate::data::Source::ALL
                .iter()
                .map(|s| s.relative_path())
                .collect();
            report::data_checksums(&data_dir, &lm_files)?
        }
    };
    manifest.data_digests.insert(
        "train_texts_sha256".into(),
        report::texts_sha256(&train_texts).into(),
    );
    manifest.data_digests.insert(
        "validation_texts_sha256".into(),
        report::texts_sha256(&val_texts).into(),
    );
    manifest.data_digests.insert(
        "tokenizer_json_sha256".into(),
        crate::io::sha256_file(&tok_path)?.into(),
    );
    let counts = serde_json::json!({
        "train_docs": train_texts.len(), "validation_docs": val_texts.len(),
        "train_tokens": train.tokens.len(), "validation_tokens": val.tokens.len(),
        "vocab_size": tokenizer.vocab_size(), "n_params": n_params,
    });
    manifest.results.insert("data".into(), counts);
    manifest.save(&manifest_path)?;

    let b = cfg.optim.batch_size as usize;
    let eval_windows = (cfg.eval_batches as usize) * b;
    let max_steps = cfg.optim.max_steps;
    let state_of = |step: u64, rng: &SplitMix64, tokens: u64, rows: &[MetricsRow]| CkptState {
        step,
        rng_state: rng.state(),
        tokens,
        config: config_json.clone(),
        metrics: rows.iter().map(MetricsBits::from).collect(),
    };

    if step == 0 {
        let (vl, vp) = evaluate(&model, &val, t, eval_windows, b, device)?;
        rows.push(MetricsRow {
            step: 0,
            tokens: 0,
            lr: None,
            train_loss: None,
            grad_norm: None,
            val_loss: Some(vl),
            val_ppl: Some(vp),
        });
        say(format!("step 0: val loss {vl:.4}, ppl {vp:.2}"));
        write_metrics(&run_dir, &rows)?;
    }

    let bar = if opts.progress && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(max_steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(step);

    let (mut train_time, mut tokens_this_process) = (0.0f64, 0u64);
    let tokens_per_step = (b * t) as u64 * cfg.optim.grad_accum as u64;
    let high = train.tokens.len() - t; // offsets o ∈ [0, len − T − 1], window o..o+T+1
    while step < max_steps {
        let t0 = Instant::now();
        tch::manual_seed(cfg.seed.wrapping_add(step as i64 + 1));
        let lr = schedule.lr_at(step);
        opt.zero_grad();
        let mut loss_acc = 0.0f64;
        for _ in 0..cfg.optim.grad_accum {
            let offsets: Vec<usize> = (0..b).map(|_| rng.below(high)).collect();
            let batch = batch_at(&train, &offsets, t, device);
            let nll = batch_nll(&model, &batch, true)?;
            let loss = aggregate(&nll, &batch.mask, LossAgg::TokenMean, EmptyRows::Ignore)?;
            loss_acc += loss.f_double_value(&[])?;
            (loss / cfg.optim.grad_accum as f64).f_backward()?;
        }
        let grad_norm = if cfg.optim.grad_clip > 0.0 {
            clip_grad_norm(&opt.params(), cfg.optim.grad_clip)?
        } else {
            clip_grad_norm(&opt.params(), f64::MAX)?
        };
        opt.step(lr)?;
        step += 1;
        tokens_seen += tokens_per_step;
        tokens_this_process += tokens_per_step;
        train_time += t0.elapsed().as_secs_f64();
        let train_loss = loss_acc / cfg.optim.grad_accum as f64;
        if !train_loss.is_finite() {
            return Err(RlhfError::NonFinite {
                arg: format!("training loss at step {step}"),
                count: 1,
            });
        }

        let is_last = step == max_steps;
        let do_eval = step % cfg.eval_interval == 0 || is_last;
        let do_log = step % cfg.log_interval == 0 || do_eval;
        let do_ckpt = step % cfg.checkpoint_interval == 0 || is_last;
        if do_log {
            let (val_loss, val_ppl) = if do_eval {
                let (vl, vp) = evaluate(&model, &val, t, eval_windows, b, device)?;
                say(format!(
                    "step {step}: train loss {train_loss:.4}, val loss {vl:.4}, ppl {vp:.2}"
                ));
                (Some(vl), Some(vp))
            } else {
                (None, None)
            };
            rows.push(MetricsRow {
                step,
                tokens: tokens_seen,
                lr: Some(lr),
                train_loss: Some(train_loss),
                grad_norm: Some(grad_norm),
                val_loss,
                val_ppl,
            });
        }
        if do_eval {
            write_metrics(&run_dir, &rows)?;
        }
        if do_ckpt {
            write_metrics(&run_dir, &rows)?;
            save_checkpoint(
                &ckpt_root,
                &vs,
                &gpt_cfg,
                &opt,
                &state_of(step, &rng, tokens_seen, &rows),
                cfg.keep_checkpoints,
            )?;
            say(format!("step {step}: checkpoint {}", ckpt_name(step)));
        }
        bar.set_position(step);
        bar.set_message(format!(
            "loss {train_loss:.3} | {:.0} tok/s",
            tokens_this_process as f64 / train_time.max(1e-9)
        ));
        if opts.step_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(opts.step_delay_ms));
        }
    }
    bar.finish_and_clear();

    // The final validation numbers are those of the last row (an eval always runs at max_steps).
    let last_val = rows
        .iter()
        .rev()
        .find_map(|r| r.val_loss.zip(r.val_ppl))
        .unwrap_or((f64::NAN, f64::NAN));
    write_metrics(&run_dir, &rows)?;
    let wall_s = t_start.elapsed().as_secs_f64();
    let train_tokens_per_s = if train_time > 0.0 {
        tokens_this_process as f64 / train_time
    } else {
        0.0
    };
    // A rerun of a finished run trains nothing: it keeps the recorded end time and throughput.
    let mut results = vec![
        ("steps", serde_json::json!(step)),
        ("final_val_loss", serde_json::json!(last_val.0)),
        ("final_val_ppl", serde_json::json!(last_val.1)),
        ("tokens_seen", serde_json::json!(tokens_seen)),
    ];
    if tokens_this_process > 0 || manifest.finished_at.is_none() {
        manifest.finished_at = Some(report::utc_now());
        results.push((
            "train_tokens_per_s_last_process",
            serde_json::json!(train_tokens_per_s),
        ));
        results.push(("wall_s_last_process", serde_json::json!(wall_s)));
    }
    for (k, v) in results {
        manifest.results.insert(k.into(), v);
    }
    manifest.save(&manifest_path)?;
    write_report(&run_dir, &rows, &manifest, opts.plotly_cdn)?;
    Ok(SftSummary {
        run_dir,
        steps: step,
        resumed_from,
        final_val_loss: last_val.0,
        final_val_ppl: last_val.1,
        n_params,
        train_tokens_per_s,
        wall_s,
        metrics: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss flags: review prompts (first k tokens) and preference prompts carry none; responses and
    /// every EOS do.
    #[test]
    fn stream_loss_flags() {
        let texts: Vec<String> = (0..30)
            .map(|i| format!("the movie was good {i} and the plot was fine"))
            .collect();
        let tok = Tokenizer::train_bpe(
            &texts,
            &BpeConfig {
                vocab_size: 300,
                min_frequency: 2,
            },
        )
        .unwrap();
        let review = Doc {
            prompt: None,
            response: "the movie was good".into(),
        };
        let n = tok.encode("the movie was good").unwrap().len();
        assert!(n > 2);
        let s = build_stream(&tok, &[review.clone()], 2).unwrap();
        assert_eq!(s.tokens.len(), n + 1);
        assert_eq!(*s.tokens.last().unwrap(), tok.eos_id());
        assert_eq!(s.loss[..2], [false, false]);
        assert!(s.loss[2..].iter().all(|&f| f));
        let pair = Doc {
            prompt: Some("the plot".into()),
            response: " was fine".into(),
        };
        let np = tok.encode("the plot").unwrap().len();
        let nr = tok.encode(" was fine").unwrap().len();
        let s = build_stream(&tok, &[pair, review], 0).unwrap();
        assert_eq!(s.tokens.len(), np + nr + 1 + n + 1);
        assert!(s.loss[..np].iter().all(|&f| !f));
        assert!(s.loss[np..].iter().all(|&f| f));
    }
}
