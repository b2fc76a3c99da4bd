//! CSV loading through polars into [`LabeledText`] records.
//!
//! The file is read whole (it is at most 6 MB), a UTF-8 byte-order mark is removed, and polars parses it
//! with every column as a string (`infer_schema_length = 0`, so `1`/`-1` labels are not guessed as
//! integers and texts are never parsed as numbers). Quoted fields may span lines (the reviews do).
//! A missing file is [`RlhfError::Io`] with a hint to run `python3 datasets/fetch.py`; a file that does
//! not parse, lacks a column, or holds an unknown label or an empty text is [`RlhfError::Format`].

use super::{Label, LabeledText, Polarity, RtLabel, Source};
use crate::error::{Result, RlhfError};
use polars::prelude::*;
use std::io::Cursor;
use std::path::Path;

/// Hint appended to the error when a data file is missing.
pub const FETCH_HINT: &str =
    "run `python3 datasets/fetch.py` to fetch the data (or point RLHF_LAB_DATA at a fetched cache)";

const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Reads a data file's bytes; a missing or unreadable file is [`RlhfError::Io`] with [`FETCH_HINT`].
pub(crate) fn read_data_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RlhfError::Io {
        path: path.display().to_string(),
        reason: format!("{e}; {FETCH_HINT}"),
    })
}

/// Parses a CSV file with polars, all columns as strings.
fn read_csv(path: &Path, has_header: bool) -> Result<DataFrame> {
    let bytes = read_data_file(path)?;
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes).to_vec();
    CsvReadOptions::default()
        .with_has_header(has_header)
        .with_infer_schema_length(Some(0))
        .with_n_threads(Some(1))
        .into_reader_with_file_handle(Cursor::new(body))
        .finish()
        .map_err(|e| RlhfError::format(path, "CSV file", e))
}

/// The values of column `name` (`None` for an empty cell); a missing column is a format error.
fn string_column(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<Option<String>>> {
    let col = df
        .column(name)
        .map_err(|_| RlhfError::format(path, "CSV file", format!("no column `{name}`")))?;
    let ca = col
        .str()
        .map_err(|e| RlhfError::format(path, "CSV file", format!("column `{name}`: {e}")))?;
    Ok(ca.iter().map(|v| v.map(str::to_owned)).collect())
}

/// Loads a headerless Pang & Lee file: `"label","text"`, label `1` (positive) or `-1` (negative).
fn load_pang_lee(dir: &Path, source: Source) -> Result<Vec<LabeledText>> {
    let path = dir.join(source.relative_path());
    let df = read_csv(&path, false)?;
    if df.width() != 2 {
        return Err(RlhfError::format(
            &path,
            "Pang & Lee CSV file",
            format!("expected 2 columns (label, text), found {}", df.width()),
        ));
    }
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let labels = string_column(&df, &names[0], &path)?;
    let texts = string_column(&df, &names[1], &path)?;
    labels
        .into_iter()
        .zip(texts)
        .enumerate()
        .map(|(i, (label, text))| {
            let polarity = match label.as_deref().unwrap_or("").trim() {
                "1" => Polarity::Positive,
                "-1" => Polarity::Negative,
                other => {
                    return Err(RlhfError::format(
                        &path,
                        "Pang & Lee CSV file",
                        format!("row {}: label {other:?} is not 1 or -1", i + 1),
                    ))
                }
            };
            labeled(&path, i, text, Label::Polarity(polarity), source)
        })
        .collect()
}

fn labeled(
    path: &Path,
    row: usize,
    text: Option<String>,
    label: Label,
    source: Source,
) -> Result<LabeledText> {
    let text = text.unwrap_or_default().trim().to_string();
    if text.is_empty() {
        return Err(RlhfError::format(
            path,
            "CSV file",
            format!("row {}: empty text", row + 1),
        ));
    }
    Ok(LabeledText {
        text,
        label,
        source,
    })
}

/// Pang & Lee reviews (1,500; one sentence per line, lines kept), labels positive/negative.
pub fn load_pang_lee_reviews(dir: &Path) -> Result<Vec<LabeledText>> {
    load_pang_lee(dir, Source::PangLeeReviews)
}

/// Pang & Lee sentences (4,000), labels positive/negative.
pub fn load_pang_lee_sentences(dir: &Path) -> Result<Vec<LabeledText>> {
    load_pang_lee(dir, Source::PangLeeSentences)
}

/// Rotten Tomatoes rows: `category` fresh/rotten/plot and `text`; `movie_name` and
/// `has_plot_and_reviews` are not used. The file has 13,905 rows; 14 plot rows have an empty text and
/// are dropped (13,891 texts: 7,403 fresh, 5,405 rotten, 1,083 plot). An empty fresh/rotten text is a
/// format error.
pub fn load_rotten_tomatoes(dir: &Path) -> Result<Vec<LabeledText>> {
    let source = Source::RottenTomatoes;
    let path = dir.join(source.relative_path());
    let df = read_csv(&path, true)?;
    let categories = string_column(&df, "category", &path)?;
    let texts = string_column(&df, "text", &path)?;
    categories
        .into_iter()
        .zip(texts)
        .enumerate()
        .filter(|(_, (category, text))| {
            let empty = text.as_deref().is_none_or(|t| t.trim().is_empty());
            !(empty && category.as_deref() == Some("plot"))
        })
        .map(|(i, (category, text))| {
            let label = match category.as_deref().unwrap_or("") {
                "fresh" => RtLabel::Fresh,
                "rotten" => RtLabel::Rotten,
                "plot" => RtLabel::Plot,
                other => {
                    return Err(RlhfError::format(
                        &path,
                        "Rotten Tomatoes CSV file",
                        format!(
                            "row {}: category {other:?} is not fresh, rotten or plot",
                            i + 1
                        ),
                    ))
                }
            };
            labeled(&path, i, text, Label::Rt(label), source)
        })
        .collect()
}

/// Every text of every source, in [`Source::ALL`] order (Rotten Tomatoes, Pang & Lee sentences,
/// Pang & Lee reviews).
pub fn load_all(dir: &Path) -> Result<Vec<LabeledText>> {
    let mut all = load_rotten_tomatoes(dir)?;
    all.extend(load_pang_lee_sentences(dir)?);
    all.extend(load_pang_lee_reviews(dir)?);
    Ok(all)
}

/// The texts of one source.
pub fn load_source(dir: &Path, source: Source) -> Result<Vec<LabeledText>> {
    match source {
        Source::PangLeeReviews => load_pang_lee_reviews(dir),
        Source::PangLeeSentences => load_pang_lee_sentences(dir),
        Source::RottenTomatoes => load_rotten_tomatoes(dir),
    }
}
