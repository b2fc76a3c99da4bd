//! Prompts for on-policy training and evaluation: prefixes of a few tokens of movie reviews, as in the
//! DPO paper's controlled-sentiment task (Rafailov et al. 2023 §6.1: "prefixes of length 2–8 tokens"
//! of IMDb reviews; here the review corpus of [`crate::data::lm_texts`], train split for training,
//! test split for evaluation).

use crate::core::check;
use crate::data::{lm_texts, Split};
use crate::error::{Result, RlhfError};
use crate::model::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// Shortest prefix in tokens (≥ 1).
    #[serde(default = "default_min")]
    pub min_tokens: usize,
    /// Longest prefix in tokens (≥ `min_tokens`).
    #[serde(default = "default_max")]
    pub max_tokens: usize,
}

fn default_min() -> usize {
    2
}
fn default_max() -> usize {
    8
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig {
            min_tokens: default_min(),
            max_tokens: default_max(),
        }
    }
}

impl PrefixConfig {
    /// Checks the bounds; errors name `<section>.min_tokens` / `.max_tokens`.
    pub fn validate(&self, section: &str) -> Result<()> {
        check::count_in(&format!("{section}.min_tokens"), self.min_tokens, 1, 1024)?;
        check::count_in(
            &format!("{section}.max_tokens"),
            self.max_tokens,
            self.min_tokens,
            1024,
        )
    }
}

/// `n` prefixes of the reviews of `split`: review `i` is drawn uniformly (with a [`SplitMix64`] seeded
/// by `seed`) among those with at least `max_tokens` tokens, and cut at a length drawn uniformly in
/// `[min_tokens, max_tokens]`. Deterministic for (data, tokenizer, split, n, cfg, seed).
pub fn review_prefixes(
    data_dir: &Path,
    tokenizer: &Tokenizer,
    split: Split,
    n: usize,
    cfg: &PrefixConfig,
    seed: u64,
) -> Result<Vec<Vec<i64>>> {
    cfg.validate("prompts")?;
    let splits = lm_texts(data_dir)?;
    let texts = match split {
        Split::Train => splits.train,
        Split::Validation => splits.validation,
        Split::Test => splits.test,
    };
    // Only the first 4,000 texts are tokenised: plenty of distinct prefixes, and fast.
    let mut pool = Vec::new();
    for text in texts.iter().take(4_000) {
        let ids = tokenizer.encode(text)?;
        if ids.len() >= cfg.max_tokens {
            pool.push(ids);
        }
    }
    if pool.is_empty() {
        return Err(RlhfError::invalid(
            "prompts",
            format!(
                "no review of the {split:?} split has {} tokens",
                cfg.max_tokens
            ),
        ));
    }
    let mut rng = SplitMix64::new(seed);
    let span = cfg.max_tokens - cfg.min_tokens + 1;
    Ok((0..n)
        .map(|_| {
            let ids = &pool[rng.below(pool.len())];
            let len = cfg.min_tokens + rng.below(span);
            ids[..len].to_vec()
        })
        .collect())
}

/// Held-out prefixes as every evaluation draws them: [`review_prefixes`] with the seed salted, so an
/// evaluation's prompts never coincide with a training draw of the same seed. The trainers' `[eval]`
/// ([`crate::train::eval::Evaluator`]) and Best-of-N both call this: with the same count, prefix
/// lengths and seed they answer the same prompts.
pub fn eval_prefixes(
    data_dir: &Path,
    tokenizer: &Tokenizer,
    split: Split,
    n: usize,
    cfg: &PrefixConfig,
    seed: u64,
) -> Result<Vec<Vec<i64>>> {
    review_prefixes(data_dir, tokenizer, split, n, cfg, seed ^ 0xE7A1)
}
