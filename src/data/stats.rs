//! Corpus statistics per source × split: counts, lengths, label balance.
//!
//! Texts are assigned to splits and de-duplicated *within their source* (the same rule as
//! [`super::assign_splits`]); so the rows of a split add up to more than the de-duplicated LM corpus of
//! [`super::lm_texts`], where a Pang & Lee sentence that is also a Rotten Tomatoes snippet counts once.
//! Lengths: characters (Unicode scalar values) and whitespace-separated words. The median is the mean
//! of the two middle values for an even count; p95 is the nearest-rank percentile
//! (`sorted[ceil(0.95 n) − 1]`).

use super::load::load_source;
use super::{assign_splits, Label, Polarity, RtLabel, Source, Split};
use crate::error::{Result, RlhfError};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One row of the statistics table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsRow {
    pub source: String,
    pub split: String,
    pub n: usize,
    pub chars_mean: f64,
    pub chars_median: f64,
    pub chars_p95: usize,
    pub chars_max: usize,
    pub words_mean: f64,
    pub words_median: f64,
    pub words_p95: usize,
    pub words_max: usize,
    /// Positive (Pang & Lee) or fresh (Rotten Tomatoes) texts.
    pub n_positive: usize,
    /// Negative or rotten texts.
    pub n_negative: usize,
    /// Plot synopses (Rotten Tomatoes only).
    pub n_plot: usize,
    /// `n_positive / (n_positive + n_negative)`; 0 when both are 0.
    pub positive_fraction: f64,
}

struct Lengths {
    mean: f64,
    median: f64,
    p95: usize,
    max: usize,
}

fn lengths(mut v: Vec<usize>) -> Lengths {
    if v.is_empty() {
        return Lengths {
            mean: 0.0,
            median: 0.0,
            p95: 0,
            max: 0,
        };
    }
    v.sort_unstable();
    let n = v.len();
    let mean = v.iter().sum::<usize>() as f64 / n as f64;
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    // Nearest rank: the smallest value with at least 95 % of the data at or below it.
    let rank = (0.95 * n as f64).ceil() as usize;
    Lengths {
        mean,
        median,
        p95: v[rank.clamp(1, n) - 1],
        max: v[n - 1],
    }
}

/// The statistics as typed rows, sources in [`Source::ALL`] order, splits train/validation/test.
pub fn stats_rows(dir: &Path) -> Result<Vec<StatsRow>> {
    let mut rows = Vec::new();
    for source in Source::ALL {
        let splits = assign_splits(load_source(dir, source)?, |t| t.text.as_str());
        for split in Split::ALL {
            let texts = splits.get(split);
            let chars = lengths(texts.iter().map(|t| t.text.chars().count()).collect());
            let words = lengths(
                texts
                    .iter()
                    .map(|t| t.text.split_whitespace().count())
                    .collect(),
            );
            let count = |f: fn(&Label) -> bool| texts.iter().filter(|t| f(&t.label)).count();
            let n_positive = count(|l| l.polarity() == Some(Polarity::Positive));
            let n_negative = count(|l| l.polarity() == Some(Polarity::Negative));
            let n_plot = count(|l| *l == Label::Rt(RtLabel::Plot));
            let labelled = n_positive + n_negative;
            rows.push(StatsRow {
                source: source.name().into(),
                split: split.name().into(),
                n: texts.len(),
                chars_mean: chars.mean,
                chars_median: chars.median,
                chars_p95: chars.p95,
                chars_max: chars.max,
                words_mean: words.mean,
                words_median: words.median,
                words_p95: words.p95,
                words_max: words.max,
                n_positive,
                n_negative,
                n_plot,
                positive_fraction: if labelled == 0 {
                    0.0
                } else {
                    n_positive as f64 / labelled as f64
                },
            });
        }
    }
    Ok(rows)
}

/// The rows as a polars table (one column per [`StatsRow`] field).
pub fn rows_to_frame(rows: &[StatsRow]) -> Result<DataFrame> {
    let strs = |f: fn(&StatsRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let ints = |f: fn(&StatsRow) -> usize| rows.iter().map(|r| f(r) as u64).collect::<Vec<u64>>();
    let floats = |f: fn(&StatsRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let columns = vec![
        Column::new("source".into(), strs(|r| r.source.as_str())),
        Column::new("split".into(), strs(|r| r.split.as_str())),
        Column::new("n".into(), ints(|r| r.n)),
        Column::new("chars_mean".into(), floats(|r| r.chars_mean)),
        Column::new("chars_median".into(), floats(|r| r.chars_median)),
        Column::new("chars_p95".into(), ints(|r| r.chars_p95)),
        Column::new("chars_max".into(), ints(|r| r.chars_max)),
        Column::new("words_mean".into(), floats(|r| r.words_mean)),
        Column::new("words_median".into(), floats(|r| r.words_median)),
        Column::new("words_p95".into(), ints(|r| r.words_p95)),
        Column::new("words_max".into(), ints(|r| r.words_max)),
        Column::new("n_positive".into(), ints(|r| r.n_positive)),
        Column::new("n_negative".into(), ints(|r| r.n_negative)),
        Column::new("n_plot".into(), ints(|r| r.n_plot)),
        Column::new("positive_fraction".into(), floats(|r| r.positive_fraction)),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Statistics of the data in `dir` as a polars table (see the module doc for definitions).
pub fn stats(dir: &Path) -> Result<DataFrame> {
    rows_to_frame(&stats_rows(dir)?)
}

/// Writes `out_dir/data_stats.csv` (polars CSV) and `out_dir/data_stats.json` (array of rows), each
/// atomically; returns both paths.
pub fn save_stats(dir: &Path, out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let rows = stats_rows(dir)?;
    let mut df = rows_to_frame(&rows)?;
    let csv_path = out_dir.join("data_stats.csv");
    let json_path = out_dir.join("data_stats.json");
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .finish(&mut df)
        .map_err(|e| RlhfError::format(&csv_path, "CSV file", e))?;
    crate::io::atomic_write(&csv_path, &buf)?;
    crate::io::write_json(&json_path, &rows)?;
    Ok((csv_path, json_path))
}

/// Prints the statistics to stdout as three narrow tables (counts and labels, characters, words), so
/// that polars' default width shows every column.
pub fn print_stats(dir: &Path) -> Result<()> {
    let df = stats(dir)?;
    for columns in [
        &[
            "source",
            "split",
            "n",
            "n_positive",
            "n_negative",
            "n_plot",
            "positive_fraction",
        ][..],
        &[
            "source",
            "split",
            "chars_mean",
            "chars_median",
            "chars_p95",
            "chars_max",
        ][..],
        &[
            "source",
            "split",
            "words_mean",
            "words_median",
            "words_p95",
            "words_max",
        ][..],
    ] {
        println!("{}", df.select(columns.iter().copied())?);
    }
    Ok(())
}
