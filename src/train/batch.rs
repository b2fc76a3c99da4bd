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

    fn len(&self) -> usize {
        self.prompt.len() + self.completion.len()
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
    let t = batch.input_ids.size()[1];
    let logits = model.lm_logits(&hidden.narrow(1, 0, t - 1))?; // (B, T-1, V)
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
