//! Preference pairs as JSONL in TRL's format.
//!
//! One JSON object per line with the keys of TRL's "standard" (not conversational) preference dataset
//! format (`trl.DPOTrainer` / `trl.RewardTrainer`; TRL docs, "Dataset formats → Preference"):
//! `prompt`, `chosen`, `rejected` (strings) and optional `score_chosen`, `score_rejected` (numbers, the
//! ground-truth rewards that ranked the pair, e.g. UltraFeedback-style). Other keys are ignored on
//! reading. Blank lines are skipped. Every string must be non-empty; every score finite.

use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One preference: for `prompt`, `chosen` is preferred to `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_chosen: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_rejected: Option<f64>,
}

impl PreferencePair {
    /// The first problem with this pair, if any: an empty string or a non-finite score (field named).
    fn problem(&self) -> Option<String> {
        for (field, value) in [
            ("prompt", &self.prompt),
            ("chosen", &self.chosen),
            ("rejected", &self.rejected),
        ] {
            if value.is_empty() {
                return Some(format!("`{field}` is an empty string"));
            }
        }
        for (field, value) in [
            ("score_chosen", self.score_chosen),
            ("score_rejected", self.score_rejected),
        ] {
            if let Some(v) = value {
                if !v.is_finite() {
                    return Some(format!("`{field}` = {v} is not finite"));
                }
            }
        }
        None
    }
}

const WHAT: &str = "preference JSONL file";

/// Reads a JSONL file of [`PreferencePair`]s. Errors name the 1-based line: invalid JSON, a missing or
/// mistyped field, an empty string ([`RlhfError::Format`]); a missing file is [`RlhfError::Io`].
pub fn read_preferences(path: impl AsRef<Path>) -> Result<Vec<PreferencePair>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| RlhfError::io(path, e))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let pair: PreferencePair = serde_json::from_str(line)
            .map_err(|e| RlhfError::format(path, WHAT, format!("line {lineno}: {e}")))?;
        if let Some(problem) = pair.problem() {
            return Err(RlhfError::format(
                path,
                WHAT,
                format!("line {lineno}: {problem}"),
            ));
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Writes `pairs` as JSONL (one compact object per line, `\n`-terminated), atomically. A pair with an
/// empty string or a non-finite score is [`RlhfError::Invalid`] naming `pairs[i]`; nothing is written.
pub fn write_preferences(path: impl AsRef<Path>, pairs: &[PreferencePair]) -> Result<()> {
    let path = path.as_ref();
    let mut out = String::new();
    for (i, pair) in pairs.iter().enumerate() {
        if let Some(problem) = pair.problem() {
            return Err(RlhfError::invalid(format!("pairs[{i}]"), problem));
        }
        let line = serde_json::to_string(pair).map_err(|e| RlhfError::format(path, WHAT, e))?;
        out.push_str(&line);
        out.push('\n');
    }
    crate::io::atomic_write(path, out.as_bytes())
}
