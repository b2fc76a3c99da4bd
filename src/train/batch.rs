//! Prompt + completion batches, as every preference trainer needs them: tokenised pairs padded into one
//! `(B, T)` batch (left or right padding), and the log-probabilities of the completion tokens only —
//! prompt and padding masked (TRL `DPOTrainer.concatenated_forward`, OpenRLHF `DPOModel`; seed 003
//! "DPO": `logits[:, :-1]` predicts `labels[:, 1:]`, and only response positions count).

use crate::core::logprobs::{sequence_log_probs, token_log_probs};
use crate::error::{Result, RlhfError};
use crate::model::tokenizer::Tokenizer;
use crate::model::{position_ids_from_mask, RlhfLm};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Where the padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Padding {
    /// Pads after the sequence (TRL's default for training).
    #[default]
    Right,
    /// Pads before the prompt (generation's layout).
    Left,
}

/// A tokenised prompt and completion; the completion ends with EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCompletion {
    pub prompt: Vec<i64>,
    pub completion: Vec<i64>,
}

impl PromptCompletion {
    /// Tokenises `prompt` and `completion` separately (as TRL does, so the boundary is exact) and
    /// appends EOS to the completion. Errors if the whole sequence exceeds `max_len` tokens.
    pub fn encode(tok: &Tokenizer, prompt: &str, completion: &str, max_len: usize) -> Result<Self> {
        let prompt_ids = tok.encode(prompt)?;
        let mut completion_ids = tok.encode(completion)?;
        completion_ids.push(tok.eos_id());
        if prompt_ids.is_empty() {
            return Err(RlhfError::invalid(
                "prompt",
                format!("{prompt:?} encodes to no token"),
            ));
        }
        let n = prompt_ids.len() + completion_ids.len();
        if n > max_len {
            return Err(RlhfError::out_of_range(
                "prompt + completion tokens",
                n as f64,
                format!("<= the model's context ({max_len}); prompt {prompt:?}"),
            ));
        }
        Ok(PromptCompletion {
            prompt: prompt_ids,
            completion: completion_ids,
        })
    }

    /// Tokens of prompt and completion.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.completion.len()
    }

    /// Never true after [`PromptCompletion::encode`] (the completion holds at least EOS).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A padded batch of prompt ‖ completion sequences. All `(B, T)` int64 on one device.
#[derive(Debug)]
pub struct SeqBatch {
    pub input_ids: Tensor,
    /// 1 on real tokens (prompt and completion), 0 on padding.
    pub attention_mask: Tensor,
    /// `max(cumsum(mask) − 1, 0)`: a left-padded row starts at position 0 at its first real token.
    pub position_ids: Tensor,
    /// 1 on completion tokens (EOS included), 0 on the prompt and the padding.
    pub completion_mask: Tensor,
}

impl SeqBatch {
    /// Pads `rows` into one batch with `pad_id`.
    pub fn collate(
        rows: &[&PromptCompletion],
        pad_id: i64,
        padding: Padding,
        device: Device,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(RlhfError::invalid("rows", "an empty batch"));
        }
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; b * t];
        let mut mask = vec![0i64; b * t];
        let mut comp = vec![0i64; b * t];
        for (i, r) in rows.iter().enumerate() {
            let off = match padding {
                Padding::Right => 0,
                Padding::Left => t - r.len(),
            };
            let row = i * t + off;
            for (j, &tok) in r.prompt.iter().chain(&r.completion).enumerate() {
                ids[row + j] = tok;
                mask[row + j] = 1;
                comp[row + j] = i64::from(j >= r.prompt.len());
            }
        }
        let shape = [b as i64, t as i64];
        let mk = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_device(device);
        let attention_mask = mk(mask);
        Ok(SeqBatch {
            input_ids: mk(ids),
            position_ids: position_ids_from_mask(&attention_mask),
            attention_mask,
            completion_mask: mk(comp),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// Whether the batch has no rows (never, after [`SeqBatch::collate`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Log-probs of the completion tokens: `(B, T − 1)` per-token log π(x_{t+1} | x_≤t), exactly 0 at prompt
/// and padding targets, and the `(B, T − 1)` 0/1 target mask. `logits[:, :-1]` predicts
/// `input_ids[:, 1:]`; the mask is `completion_mask[:, 1:]` ([`token_log_probs`]).
///
/// The LM head and the log-softmax run only at the `n` positions that predict a completion token: the
/// hidden states there are gathered into `(1, n, C)` first. Prompt and padding positions, whose
/// log-probs are 0 anyway, cost no `(·, V)` logits (a quarter of the rows of the small-scale pairs,
/// more with long prompts). Same values as [`completion_token_logps_from_logits`] on the full
/// logits up to the matmul's rounding (`tests/train_dpo.rs`), and the same zero gradient outside the
/// mask.
pub fn completion_token_logps(
    model: &dyn RlhfLm,
    batch: &SeqBatch,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let hidden = model.forward_hidden(
        &batch.input_ids,
        &batch.attention_mask,
        &batch.position_ids,
        None,
        train,
    )?; // (B, T, C)
    let (b, t, c) = hidden.size3()?;
    let mask = batch
        .completion_mask
        .narrow(1, 1, t - 1)
        .to_kind(Kind::Float); // (B, T-1)
    let idx = mask.reshape([-1]).nonzero().squeeze_dim(1); // (n,) flat (b, t) of scored positions
    let n = idx.size()[0];
    if n == 0 {
        let zeros = Tensor::zeros([b, t - 1], (hidden.kind(), hidden.device()));
        return Ok((zeros, mask));
    }
    let h = hidden
        .narrow(1, 0, t - 1)
        .reshape([-1, c])
        .index_select(0, &idx)
        .unsqueeze(0); // (1, n, C)
    let labels = batch
        .input_ids
        .narrow(1, 1, t - 1)
        .reshape([-1])
        .index_select(0, &idx)
        .unsqueeze(0); // (1, n)
    let logits = model.lm_logits(&h)?; // (1, n, V)
    let scored = token_log_probs(&logits, &labels, &labels.ones_like())?; // (1, n)
    let flat = Tensor::zeros([b * (t - 1)], (scored.kind(), scored.device())); // (B·(T-1),)
    let logps = flat.index_copy(0, &idx, &scored.squeeze_dim(0)); // (B·(T-1),)
    Ok((logps.view([b, t - 1]), mask))
}

/// [`completion_token_logps`] from the model's logits `(B, T, V)` over the whole batch: the prediction
/// at position `t` is scored against `input_ids[:, t + 1]` where `completion_mask[:, t + 1] = 1`; the
/// last position predicts nothing. Prompt and padding targets get log-prob 0 and no gradient.
pub fn completion_token_logps_from_logits(
    logits: &Tensor,
    batch: &SeqBatch,
) -> Result<(Tensor, Tensor)> {
    let t = batch.input_ids.size()[1];
    if logits.dim() != 3 || logits.size()[..2] != [batch.len(), t] {
        return Err(RlhfError::shape(
            "logits",
            logits.size(),
            format!("(B, T, V) with (B, T) = ({}, {t})", batch.len()),
        ));
    }
    let logits = logits.narrow(1, 0, t - 1); // (B, T-1, V)
    let labels = batch.input_ids.narrow(1, 1, t - 1); // (B, T-1)
    let mask = batch
        .completion_mask
        .narrow(1, 1, t - 1)
        .to_kind(Kind::Float); // (B, T-1)
    let logps = token_log_probs(&logits, &labels, &mask)?;
    Ok((logps, mask))
}

/// Sequence log-probs of the completions: `(B,)` sums over completion tokens and `(B,)` token counts
/// ([`sequence_log_probs`]).
pub fn completion_logps(
    model: &dyn RlhfLm,
    batch: &SeqBatch,
    train: bool,
) -> Result<(Tensor, Tensor)> {
    let (logps, mask) = completion_token_logps(model, batch, train)?;
    sequence_log_probs(&logps, &mask)
}

/// How a preference file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreferenceFormat {
    /// TRL preference JSONL (`prompt`, `chosen`, `rejected`): K = 2 ([`crate::data::read_preferences`]).
    #[default]
    Pairs,
    /// Ranked JSONL (`prompt`, `completions` best first, `scores`): K ≥ 2 ([`crate::data::read_ranked`]).
    Ranked,
}

/// One prompt with K ≥ 2 tokenised completions ranked best first — a preference pair is K = 2
/// (chosen, rejected) — and the 1-based line of the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedGroup {
    pub line: usize,
    /// `prompt ‖ completion_k ‖ EOS`, best first; every entry has the same prompt tokens.
    pub completions: Vec<PromptCompletion>,
    /// The scores that ranked the completions (`score_chosen`, `score_rejected` for pairs), if given.
    pub scores: Option<Vec<f64>>,
}

impl RankedGroup {
    /// Number of ranked completions K.
    pub fn k(&self) -> usize {
        self.completions.len()
    }

    /// Real tokens of all its sequences.
    pub fn n_tokens(&self) -> usize {
        self.completions.iter().map(|c| c.len()).sum()
    }
}

/// Training and validation groups of a preference file, split by [`crate::data::split_of`] of the
/// prompt (the review corpus's split rule: a prompt's pairs never straddle train and validation; the
/// test bucket is left out for final evaluation).
#[derive(Debug, Clone)]
pub struct PreferenceSplits {
    pub train: Vec<RankedGroup>,
    pub validation: Vec<RankedGroup>,
}

/// A record of a preference file: (1-based line, prompt, completions best first, scores).
type Record = (usize, String, Vec<String>, Option<Vec<f64>>);

/// Reads and tokenises a preference file. `field` is the config field naming the file (e.g.
/// `data.path`). Errors: a missing/malformed file (the reader's, naming the line); no record at all, no
/// training or no validation record ([`RlhfError::Invalid`] naming `field`); a pair whose `chosen`
/// equals its `rejected`, or a prompt + completion longer than `max_len` tokens
/// ([`RlhfError::Format`] naming the 1-based line).
pub fn load_preference_groups(
    path: &std::path::Path,
    format: PreferenceFormat,
    tok: &Tokenizer,
    max_len: usize,
    field: &str,
) -> Result<PreferenceSplits> {
    use crate::data::{read_preferences_numbered, read_ranked_numbered, split_of, Split};
    let what = match format {
        PreferenceFormat::Pairs => "preference JSONL file",
        PreferenceFormat::Ranked => "ranked-completions JSONL file",
    };
    let records: Vec<Record> = match format {
        PreferenceFormat::Pairs => read_preferences_numbered(path)?
            .into_iter()
            .map(|(line, p)| {
                if p.chosen == p.rejected {
                    return Err(RlhfError::format(
                        path,
                        what,
                        format!("line {line}: `chosen` equals `rejected`; such a pair carries no preference"),
                    ));
                }
                let scores = p.score_chosen.zip(p.score_rejected).map(|(c, r)| vec![c, r]);
                Ok((line, p.prompt, vec![p.chosen, p.rejected], scores))
            })
            .collect::<Result<_>>()?,
        PreferenceFormat::Ranked => read_ranked_numbered(path)?
            .into_iter()
            .map(|(line, r)| (line, r.prompt, r.completions, r.scores))
            .collect(),
    };
    if records.is_empty() {
        return Err(RlhfError::invalid(
            field,
            format!("{} holds no record", path.display()),
        ));
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (line, prompt, completions, scores) in records {
        // Every record is checked (test-split ones too), so a bad line never hides behind the split.
        let split = split_of(&prompt);
        let completions = completions
            .iter()
            .map(|c| PromptCompletion::encode(tok, &prompt, c, max_len))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| RlhfError::format(path, what, format!("line {line}: {e}")))?;
        let g = RankedGroup {
            line,
            completions,
            scores,
        };
        match split {
            Split::Train => train.push(g),
            Split::Validation => validation.push(g),
            Split::Test => {}
        }
    }
    for (name, v) in [("training", &train), ("validation", &validation)] {
        if v.is_empty() {
            return Err(RlhfError::invalid(
                field,
                format!(
                    "{} has no {name} record (records are split by the prompt's hash: 80 % train, 10 % validation, 10 % test)",
                    path.display()
                ),
            ));
        }
    }
    Ok(PreferenceSplits { train, validation })
}

/// Pads the completions of `groups` into one batch, group by group and best first within a group:
/// row `g·K + k` is completion `k` of group `g`, so a `(P·K,)` per-row result viewed as `(P, K)` has
/// one prompt per row, ranked best first (all K completions of a prompt sit in the same batch). Every
/// group must have the same K.
pub fn collate_groups(
    groups: &[&RankedGroup],
    pad_id: i64,
    padding: Padding,
    device: Device,
) -> Result<SeqBatch> {
    let k = groups.first().map(|g| g.k()).unwrap_or(0);
    if let Some(g) = groups.iter().find(|g| g.k() != k) {
        return Err(RlhfError::invalid(
            "groups",
            format!(
                "line {} has {} completions, the batch's first group {k}: one K per batch",
                g.line,
                g.k()
            ),
        ));
    }
    let rows: Vec<&PromptCompletion> = groups.iter().flat_map(|g| g.completions.iter()).collect();
    SeqBatch::collate(&rows, pad_id, padding, device)
}
