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
//! passed to [`crate::core::logprobs::token_log_probs`] and [`crate::core::masked::aggregate`]). With
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

use crate::core::masked::{aggregate, EmptyRows, LossAgg};
use crate::data::lm_texts;
use crate::error::{Result, RlhfError};
use crate::model::gpt::{Gpt, GptConfig};
use crate::model::tokenizer::{BpeConfig, Tokenizer};
use crate::model::CausalLm;
use crate::rng::SplitMix64;
use crate::train::config::{self, TrainConfig};
pub use crate::train::config::{ModelSection, OptimSection};
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::report::{self, Panel, Series};
use crate::train::run::{self, CheckpointState, Run};
/// SFT runs with the shared run options ([`crate::train::run::RunOptions`]).
pub use crate::train::run::{ResumeMode, RunOptions as SftOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

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
    /// Parses and validates a TOML file ([`config::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config::from_file(path)
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        config::from_toml(text, source_name)
    }

    /// The GPT architecture for a tokenizer of `vocab_size` tokens.
    pub fn gpt_config(&self, vocab_size: i64) -> GptConfig {
        self.model.gpt_config(vocab_size)
    }

    /// Range checks across sections (also run by [`run_sft`]).
    pub fn validate(&self) -> Result<()> {
        use crate::core::check::at_least;
        config::validate_name(&self.name)?;
        let m = &self.model;
        m.validate()?;
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
                return Err(RlhfError::invalid(
                    "data.path",
                    "only used with source = \"preferences\"",
                ))
            }
            ("preferences", None) => {
                return Err(RlhfError::invalid(
                    "data.path",
                    "source = \"preferences\" needs the JSONL file",
                ))
            }
            ("preferences", Some(_)) if self.data.prompt_tokens > 0 => {
                return Err(RlhfError::invalid(
                    "data.prompt_tokens",
                    "preference data mask their prompt already; leave prompt_tokens at 0",
                ))
            }
            ("preferences", Some(_)) => {}
            (other, _) => {
                return Err(RlhfError::invalid(
                    "data.source",
                    format!("unknown source {other:?} (known: \"reviews\", \"preferences\")"),
                ))
            }
        }
        at_least("data.block_size", self.data.block_size, 1)?;
        if self.data.block_size > m.n_positions {
            return Err(RlhfError::out_of_range(
                "data.block_size",
                self.data.block_size as f64,
                format!("<= model.n_positions ({})", m.n_positions),
            ));
        }
        for (arg, v) in [
            ("data.max_train_docs", self.data.max_train_docs),
            ("data.max_val_docs", self.data.max_val_docs),
        ] {
            if let Some(v) = v {
                at_least(arg, v as i64, 1)?;
            }
        }
        self.optim.validate()?;
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
}

impl TrainConfig for SftConfig {
    fn validate(&self) -> Result<()> {
        SftConfig::validate(self)
    }
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
    token_nll(model, &batch.x, &batch.y, &batch.mask, train)
}

/// The SFT loss's per-token NLL `(B, T)`, 0 where `mask` is 0: `−log softmax(model(x))[y]` for inputs
/// `x` `(B, T)`, next-token targets `y` `(B, T)` and `mask` `(B, T)` (unpadded windows, positions
/// `0..T`). What one training step of [`run_sft`] computes before [`aggregate`]; public so the
/// performance suite times the trainer's own path.
pub fn token_nll(
    model: &Gpt,
    x: &Tensor,
    y: &Tensor,
    mask: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let (b, t) = x.size2()?;
    let device = x.device();
    let attention_mask = Tensor::ones([b, t], (Kind::Int64, device)); // (B, T)
    let position_ids = Tensor::arange(t, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([b, t], true); // (B, T)
    let logits = model.forward(x, &attention_mask, &position_ids, None, train)?; // (B, T, V)
    let logp = crate::core::logprobs::token_log_probs(&logits, y, mask)?; // (B, T)
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
        return Err(RlhfError::invalid(
            "validation data",
            format!(
                "{} validation tokens do not fill one window of block_size + 1 = {}",
                s.tokens.len(),
                t + 1
            ),
        ));
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
        return Err(RlhfError::invalid(
            "validation data",
            "no unmasked target token in the evaluation windows (prompt_tokens too large?)",
        ));
    }
    let loss = nll_sum / count as f64;
    Ok((loss, loss.exp()))
}

impl MetricsRow {
    const COLUMNS: [&'static str; 5] = ["lr", "train_loss", "grad_norm", "val_loss", "val_ppl"];
}

impl run::MetricsRow for MetricsRow {
    fn columns() -> &'static [&'static str] {
        &Self::COLUMNS
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn tokens(&self) -> u64 {
        self.tokens
    }
    fn values(&self) -> Vec<Option<f64>> {
        vec![
            self.lr,
            self.train_loss,
            self.grad_norm,
            self.val_loss,
            self.val_ppl,
        ]
    }
    fn from_values(step: u64, tokens: u64, v: &[Option<f64>]) -> Self {
        let at = |i: usize| v.get(i).copied().flatten();
        MetricsRow {
            step,
            tokens,
            lr: at(0),
            train_loss: at(1),
            grad_norm: at(2),
            val_loss: at(3),
            val_ppl: at(4),
        }
    }
}

/// The figures of `report.html`.
fn report_panels() -> Vec<Panel> {
    let series = |column, label, markers| Series {
        column,
        label,
        markers,
    };
    vec![
        Panel {
            caption: "Loss",
            title: "loss",
            y_title: "nats / token",
            log_y: false,
            series: vec![
                series("train_loss", "train loss (token-mean NLL)", false),
                series("val_loss", "validation loss", true),
            ],
        },
        Panel {
            caption: "Validation perplexity",
            title: "validation perplexity",
            y_title: "exp(mean NLL)",
            log_y: true,
            series: vec![series("val_ppl", "validation perplexity", true)],
        },
    ]
}

/// The newest checkpoint of an SFT run directory, holding `model.safetensors` + `config.json` for
/// [`Gpt::load_model`]; `None` when the run has none yet.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    run::latest_checkpoint(run_dir)
}

/// Runs (or resumes) SFT as configured; see the module documentation. Writes into the run directory
/// ([`crate::train::run`]): `tokenizer.json`, `metrics.csv`, `manifest.json`, `report.html`, and
/// `checkpoints/ckpt-<step>/{model.safetensors, config.json, optimizer.safetensors, state.json}`.
pub fn run_sft(cfg: &SftConfig, opts: &SftOptions) -> Result<SftSummary> {
    let (mut run, resumed) = Run::<MetricsRow>::start(
        "sft",
        cfg,
        &cfg.name,
        cfg.seed,
        cfg.threads,
        cfg.keep_checkpoints,
        opts,
    )?;
    let device = run.device();

    // Data.
    let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);
    let (train_docs, val_docs) = load_docs(&cfg.data, &data_dir)?;
    let train_texts: Vec<String> = train_docs.iter().map(Doc::full_text).collect();
    let val_texts: Vec<String> = val_docs.iter().map(Doc::full_text).collect();

    // Tokenizer: reloaded from the run directory on resume, else trained (or copied) and saved there.
    let tok_path = run.dir.join("tokenizer.json");
    let tokenizer = if resumed.is_some() {
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
        return Err(RlhfError::invalid(
            "data",
            format!(
                "{} training tokens do not fill one window of block_size + 1 = {}",
                train.tokens.len(),
                t + 1
            ),
        ));
    }

    // Model and optimiser: from the checkpoint on resume, else freshly initialised from `seed`.
    let gpt_cfg = cfg.gpt_config(tokenizer.vocab_size());
    let (vs, model) = match &resumed {
        Some(r) => {
            let (vs, model) = Gpt::load_model(&r.dir, device)?;
            if model.config() != &gpt_cfg {
                return Err(RlhfError::format(
                    r.dir.join(crate::model::gpt::CONFIG_FILE),
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
    let mut opt = AdamW::new(&vs, cfg.optim.adamw())?;
    let n_params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let schedule = cfg.optim.schedule()?;
    let (mut step, mut rng, mut tokens_seen) = match &resumed {
        Some(r) => {
            opt.load(r.dir.join(run::OPTIMIZER_FILE))?;
            (r.step, SplitMix64::from_state(r.rng_state), r.tokens)
        }
        None => (0, SplitMix64::new(cfg.seed as u64), 0),
    };

    // Manifest: the files read — those of `lm_texts` (pinned hashes from the data directory's
    // MANIFEST.json), or the preference JSONL (hashed now) — and digests of what was actually used.
    let m = &mut run.manifest;
    m.data = match &cfg.data.path {
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
    m.data_digests.insert(
        "train_texts_sha256".into(),
        report::texts_sha256(&train_texts).into(),
    );
    m.data_digests.insert(
        "validation_texts_sha256".into(),
        report::texts_sha256(&val_texts).into(),
    );
    m.data_digests.insert(
        "tokenizer_json_sha256".into(),
        crate::io::sha256_file(&tok_path)?.into(),
    );
    let counts = serde_json::json!({
        "train_docs": train_texts.len(), "validation_docs": val_texts.len(),
        "train_tokens": train.tokens.len(), "validation_tokens": val.tokens.len(),
        "vocab_size": tokenizer.vocab_size(), "n_params": n_params,
    });
    m.results.insert("data".into(), counts);
    run.save_manifest()?;

    let b = cfg.optim.batch_size as usize;
    let eval_windows = (cfg.eval_batches as usize) * b;
    let max_steps = cfg.optim.max_steps;
    if step == 0 {
        let (vl, vp) = evaluate(&model, &val, t, eval_windows, b, device)?;
        run.push(MetricsRow {
            step: 0,
            tokens: 0,
            lr: None,
            train_loss: None,
            grad_norm: None,
            val_loss: Some(vl),
            val_ppl: Some(vp),
        });
        run.say(format!("step 0: val loss {vl:.4}, ppl {vp:.2}"));
        run.write_metrics()?;
    }

    // The loop (nanoGPT `train.py`): lr from the schedule, `grad_accum` micro-batches, clip, step.
    run.start_progress(max_steps, step);
    let tokens_per_step = (b * t) as u64 * cfg.optim.grad_accum as u64;
    let high = train.tokens.len() - t; // offsets o ∈ [0, len − T − 1], window o..o+T+1
    while step < max_steps {
        let t0 = Instant::now();
        // Dropout masks depend only on (seed, step), so a resumed run draws the same ones.
        tch::manual_seed(cfg.seed.wrapping_add(step as i64 + 1));
        let lr = schedule.lr_at(step);
        opt.zero_grad();
        let mut loss_acc = 0.0f64;
        for _ in 0..cfg.optim.grad_accum {
            let offsets: Vec<usize> = (0..b).map(|_| rng.below(high)).collect();
            let batch = batch_at(&train, &offsets, t, device);
            let nll = batch_nll(&model, &batch, true)?; // (B, T)
            let loss = aggregate(&nll, &batch.mask, LossAgg::TokenMean, EmptyRows::Ignore)?;
            loss_acc += loss.f_double_value(&[])?;
            (loss / cfg.optim.grad_accum as f64).f_backward()?;
        }
        let max_norm = if cfg.optim.grad_clip > 0.0 {
            cfg.optim.grad_clip
        } else {
            f64::MAX
        };
        let grad_norm = clip_grad_norm(&opt.params(), max_norm)?;
        opt.step(lr)?;
        step += 1;
        tokens_seen += tokens_per_step;
        let train_loss = loss_acc / cfg.optim.grad_accum as f64;
        if !train_loss.is_finite() {
            return Err(RlhfError::NonFinite {
                arg: format!("training loss at step {step}"),
                count: 1,
            });
        }
        run.step_done(
            step,
            tokens_per_step,
            t0.elapsed().as_secs_f64(),
            &format!("loss {train_loss:.3}"),
        );

        let is_last = step == max_steps;
        let do_eval = step % cfg.eval_interval == 0 || is_last;
        let do_log = step % cfg.log_interval == 0 || do_eval;
        if do_log {
            let (val_loss, val_ppl) = if do_eval {
                let (vl, vp) = evaluate(&model, &val, t, eval_windows, b, device)?;
                run.say(format!(
                    "step {step}: train loss {train_loss:.4}, val loss {vl:.4}, ppl {vp:.2}"
                ));
                (Some(vl), Some(vp))
            } else {
                (None, None)
            };
            run.push(MetricsRow {
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
            run.write_metrics()?;
        }
        if step % cfg.checkpoint_interval == 0 || is_last {
            let state = CheckpointState {
                step,
                rng_state: rng.state(),
                tokens: tokens_seen,
                extra: serde_json::Value::Null,
            };
            run.checkpoint(&state, |dir| {
                crate::model::gpt::save_model(dir, &vs, &gpt_cfg)?;
                opt.save(dir.join(run::OPTIMIZER_FILE))
            })?;
        }
    }

    // The final validation numbers are those of the last row (an eval always runs at max_steps).
    let (final_val_loss, final_val_ppl) = run
        .rows
        .iter()
        .rev()
        .find_map(|r| r.val_loss.zip(r.val_ppl))
        .unwrap_or((f64::NAN, f64::NAN));
    let results = vec![
        ("steps", serde_json::json!(step)),
        ("final_val_loss", serde_json::json!(final_val_loss)),
        ("final_val_ppl", serde_json::json!(final_val_ppl)),
        ("tokens_seen", serde_json::json!(tokens_seen)),
    ];
    let done = run.finish(&format!("SFT run {}", cfg.name), &report_panels(), results)?;
    Ok(SftSummary {
        run_dir: run.dir.clone(),
        steps: step,
        resumed_from: resumed.map(|r| r.step),
        final_val_loss,
        final_val_ppl,
        n_params,
        train_tokens_per_s: done.train_tokens_per_s,
        wall_s: done.wall_s,
        metrics: run.rows.clone(),
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
