//! Ground-truth rewards: the sentiment scorers that label preference pairs, as the DPO paper does for
//! IMDb (document 002; Rafailov et al. 2023 §6.1 use a sentiment classifier as ground truth).
//! [`sentiment`]: a bag-of-words (word + bigram) logistic regression trained on Rotten Tomatoes
//! fresh/rotten snippets, frozen after training. [`vader`]: the VADER lexicon (Hutto & Gilbert 2014),
//! no training.

pub mod sentiment;
pub mod vader;

use crate::error::Result;
use tch::Tensor;

/// A frozen scorer of texts: higher means more positive.
pub trait SentimentScorer {
    /// Scores `(N,)` float32 on the CPU, one per text. For the classifier, the logit of P(positive);
    /// for VADER, the compound score in [−1, 1].
    fn score(&self, texts: &[&str]) -> Result<Tensor>;
    /// A short name for reports ("bow-logreg", "vader").
    fn name(&self) -> &str;
}

use crate::data::{LabeledText, Polarity};
use crate::error::RlhfError;
use serde::{Deserialize, Serialize};

/// Accuracy of one scorer on labelled texts. Decision rule: `score > 0` ⇒ positive, `score < 0` ⇒
/// negative; `score == 0` (VADER finds no sentiment word) is counted as **wrong** for either label
/// (`n_zero` says how often that happened), so a scorer gets no credit for abstaining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerAccuracy {
    pub scorer: String,
    pub n: usize,
    pub n_correct: usize,
    pub n_zero: usize,
    pub accuracy: f64,
}

/// [`ScorerAccuracy`] of `scorer` on `texts` (every text must have a polarity: no plot synopses).
pub fn accuracy(scorer: &dyn SentimentScorer, texts: &[LabeledText]) -> Result<ScorerAccuracy> {
    let refs: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    let scores = Vec::<f32>::try_from(&scorer.score(&refs)?.to_kind(tch::Kind::Float))?;
    if scores.len() != texts.len() {
        return Err(RlhfError::invalid(
            "scorer",
            format!("returned {} scores for {} texts", scores.len(), texts.len()),
        ));
    }
    let (mut n_correct, mut n_zero) = (0, 0);
    for (t, &s) in texts.iter().zip(&scores) {
        if !s.is_finite() {
            return Err(RlhfError::NonFinite {
                arg: format!("{} score", scorer.name()),
                count: 1,
            });
        }
        let label = t.label.polarity().ok_or_else(|| {
            RlhfError::invalid("texts", format!("{:?} has no sentiment label", t.text))
        })?;
        if s == 0.0 {
            n_zero += 1;
        } else if (s > 0.0) == (label == Polarity::Positive) {
            n_correct += 1;
        }
    }
    Ok(ScorerAccuracy {
        scorer: scorer.name().to_string(),
        n: texts.len(),
        n_correct,
        n_zero,
        accuracy: if texts.is_empty() {
            0.0
        } else {
            n_correct as f64 / texts.len() as f64
        },
    })
}

/// Both ground-truth scorers on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// `rotten-tomatoes fresh/rotten, test split`.
    pub data: String,
    pub n_positive: usize,
    pub n_negative: usize,
    pub scorers: Vec<ScorerAccuracy>,
}

impl std::fmt::Display for AccuracyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} ({} positive, {} negative; majority class {:.4})",
            self.data,
            self.n_positive,
            self.n_negative,
            self.n_positive.max(self.n_negative) as f64
                / (self.n_positive + self.n_negative).max(1) as f64
        )?;
        for s in &self.scorers {
            writeln!(
                f,
                "  {:<12} accuracy {:.4} ({}/{}; score == 0 on {}, counted wrong)",
                s.scorer, s.accuracy, s.n_correct, s.n, s.n_zero
            )?;
        }
        Ok(())
    }
}

/// Accuracy of each scorer on the Rotten Tomatoes fresh/rotten **test** split of `data_dir`.
pub fn compare_on_test(
    data_dir: &std::path::Path,
    scorers: &[&dyn SentimentScorer],
) -> Result<AccuracyReport> {
    let test = crate::data::sentiment_splits(data_dir)?.test;
    let n_positive = test
        .iter()
        .filter(|t| t.label.polarity() == Some(Polarity::Positive))
        .count();
    Ok(AccuracyReport {
        data: "rotten-tomatoes fresh/rotten, test split".into(),
        n_positive,
        n_negative: test.len() - n_positive,
        scorers: scorers
            .iter()
            .map(|s| accuracy(*s, &test))
            .collect::<Result<_>>()?,
    })
}
