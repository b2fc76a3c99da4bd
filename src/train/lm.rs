//! The language models a trainer loads: a GPT (weights + config) with its tokenizer, taken from an SFT
//! run directory ([`crate::train::sft`]) or from any checkpoint directory a trainer wrote. Trainers use
//! the model through [`RlhfLm`], so the architecture is a detail of this file.

use crate::error::{Result, RlhfError};
use crate::model::gpt::{self, Gpt, GptConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::RlhfLm;
use crate::train::run;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// A model, its variables and its tokenizer.
pub struct LoadedLm {
    pub vs: nn::VarStore,
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    /// The checkpoint directory it was loaded from.
    pub source: PathBuf,
}

impl std::fmt::Debug for LoadedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLm")
            .field("source", &self.source)
            .field("config", self.model.config())
            .finish()
    }
}

impl LoadedLm {
    /// The newest checkpoint of a run directory (an SFT run, or a reward-model run for a critic) and the
    /// run's `tokenizer.json`. `field` names the config field in errors (e.g. `sft_run`).
    pub fn from_run(run_dir: &Path, field: &str, device: Device) -> Result<Self> {
        if !run_dir.is_dir() {
            return Err(RlhfError::invalid(
                field,
                format!(
                    "{} is not a run directory (train it first)",
                    run_dir.display()
                ),
            ));
        }
        let ckpt = run::latest_checkpoint(run_dir)?.ok_or_else(|| {
            RlhfError::invalid(
                field,
                format!(
                    "{} has no checkpoint yet (checkpoints/latest.json)",
                    run_dir.display()
                ),
            )
        })?;
        Self::from_dir(&ckpt, &run_dir.join("tokenizer.json"), device)
    }

    /// The model a trainer trains: this run's checkpoint when resuming (with the tokenizer copied into
    /// the run directory when it started), else the newest checkpoint of `sft_run`, whose tokenizer is
    /// then copied to `<run_dir>/tokenizer.json`.
    pub fn for_run(
        resumed: Option<&crate::train::run::Resumed>,
        sft_run: &Path,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self> {
        let tok_path = run_dir.join("tokenizer.json");
        match resumed {
            Some(r) => Self::from_dir(&r.dir, &tok_path, device),
            None => {
                let lm = Self::from_run(sft_run, "sft_run", device)?;
                lm.tokenizer.save(&tok_path)?;
                Ok(lm)
            }
        }
    }

    /// A checkpoint directory (`model.safetensors` + `config.json`, [`gpt::save_model`]) and a tokenizer.
    pub fn from_dir(ckpt: &Path, tokenizer: &Path, device: Device) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(tokenizer)?;
        let (vs, model) = Gpt::load_model(ckpt, device)?;
        if model.config().vocab_size != tokenizer.vocab_size() {
            return Err(RlhfError::format(
                ckpt.join(gpt::CONFIG_FILE),
                "GPT config",
                format!(
                    "vocab_size {} differs from the tokenizer's {}",
                    model.config().vocab_size,
                    tokenizer.vocab_size()
                ),
            ));
        }
        Ok(LoadedLm {
            vs,
            model,
            tokenizer,
            source: ckpt.to_path_buf(),
        })
    }

    /// The model through the trait trainers use.
    pub fn lm(&self) -> &dyn RlhfLm {
        &self.model
    }

    /// The architecture.
    pub fn config(&self) -> &GptConfig {
        self.model.config()
    }

    /// Writes `model.safetensors` + `config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        gpt::save_model(dir, &self.vs, self.model.config())
    }

    /// Freezes every variable: a reference model (or a frozen reward model) takes no gradient.
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }

    /// Scores `(B,)` of the score head at the last token of each sequence (token ids, each non-empty),
    /// right-padded into one batch, no gradient: a reward model's scores of prompt ‖ response.
    pub fn score_sequences(&self, seqs: &[Vec<i64>]) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let device = self.vs.device();
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(RlhfError::invalid("seqs", "empty batch or empty sequence"));
        }
        let t = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = vec![self.tokenizer.pad_id(); seqs.len() * t];
        let mut mask = vec![0i64; seqs.len() * t];
        for (i, s) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            mask[i * t..i * t + s.len()].iter_mut().for_each(|m| *m = 1);
        }
        let shape = [seqs.len() as i64, t as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let pos = crate::model::position_ids_from_mask(&mask);
        let lm = self.lm();
        let hidden = lm.forward_hidden(&ids, &mask, &pos, None, false)?; // (B, T, C)
        lm.scores(&hidden, &mask) // (B,)
    }

    /// Number of parameters.
    pub fn n_params(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}
