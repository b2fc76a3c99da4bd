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
