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
    Ok(read_preferences_numbered(path)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// [`read_preferences`], each pair with its 1-based line number (for errors a trainer finds later,
/// e.g. a pair whose chosen and rejected responses are equal, or one too long for the model).
pub fn read_preferences_numbered(path: impl AsRef<Path>) -> Result<Vec<(usize, PreferencePair)>> {
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
        pairs.push((lineno, pair));
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

/// One prompt with K ≥ 2 completions ranked best first (InstructGPT's K-wise comparison data, Ouyang
/// et al. 2022 §3.5: labellers rank K ∈ [4, 9] responses per prompt), optionally with the scores that
/// ranked them. JSONL: `{"prompt": ..., "completions": [best, ..., worst], "scores": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCompletions {
    pub prompt: String,
    /// Best first.
    pub completions: Vec<String>,
    /// One finite score per completion, non-increasing (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
}

impl RankedCompletions {
    /// The first problem with this record, if any (field named).
    fn problem(&self) -> Option<String> {
        if self.prompt.is_empty() {
            return Some("`prompt` is an empty string".into());
        }
        if self.completions.len() < 2 {
            return Some(format!(
                "`completions` holds {} completion(s); a ranking needs at least 2",
                self.completions.len()
            ));
        }
        for (i, c) in self.completions.iter().enumerate() {
            if c.is_empty() {
                return Some(format!("`completions[{i}]` is an empty string"));
            }
            if let Some(j) = self.completions[..i].iter().position(|d| d == c) {
                return Some(format!(
                    "`completions[{i}]` repeats `completions[{j}]`: a completion cannot be ranked against itself"
                ));
            }
        }
        if let Some(s) = &self.scores {
            if s.len() != self.completions.len() {
                return Some(format!(
                    "`scores` has {} entries for {} completions",
                    s.len(),
                    self.completions.len()
                ));
            }
            if let Some(i) = s.iter().position(|v| !v.is_finite()) {
                return Some(format!("`scores[{i}]` = {} is not finite", s[i]));
            }
            if let Some(i) = (1..s.len()).find(|&i| s[i] > s[i - 1]) {
                return Some(format!(
                    "`scores[{i}]` = {} exceeds `scores[{}]` = {}: completions must be ranked best first",
                    s[i],
                    i - 1,
                    s[i - 1]
                ));
            }
        }
        None
    }
}

const RANKED_WHAT: &str = "ranked-completions JSONL file";

/// Reads a JSONL file of [`RankedCompletions`]. Errors name the 1-based line (invalid JSON, a missing
/// field, fewer than 2 completions, an empty or repeated completion, scores of the wrong length, not
/// finite or not ranked best first): [`RlhfError::Format`]; a missing file is [`RlhfError::Io`].
pub fn read_ranked(path: impl AsRef<Path>) -> Result<Vec<RankedCompletions>> {
    Ok(read_ranked_numbered(path)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// [`read_ranked`], each record with its 1-based line number.
pub fn read_ranked_numbered(path: impl AsRef<Path>) -> Result<Vec<(usize, RankedCompletions)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| RlhfError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let r: RankedCompletions = serde_json::from_str(line)
            .map_err(|e| RlhfError::format(path, RANKED_WHAT, format!("line {lineno}: {e}")))?;
        if let Some(problem) = r.problem() {
            return Err(RlhfError::format(
                path,
                RANKED_WHAT,
                format!("line {lineno}: {problem}"),
            ));
        }
        out.push((lineno, r));
    }
    Ok(out)
}

/// Writes `records` as JSONL, atomically. A bad record is [`RlhfError::Invalid`] naming `records[i]`.
pub fn write_ranked(path: impl AsRef<Path>, records: &[RankedCompletions]) -> Result<()> {
    let path = path.as_ref();
    let mut out = String::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(problem) = r.problem() {
            return Err(RlhfError::invalid(format!("records[{i}]"), problem));
        }
        let line = serde_json::to_string(r).map_err(|e| RlhfError::format(path, RANKED_WHAT, e))?;
        out.push_str(&line);
        out.push('\n');
    }
    crate::io::atomic_write(path, out.as_bytes())
}
