//! Display helpers for the evcxr notebooks (feature `notebook`).
//!
//! evcxr turns `EVCXR_BEGIN_CONTENT <mime>` … `EVCXR_END_CONTENT` blocks printed by a cell into that cell's
//! rich output, keyed by MIME type: **one rich output per MIME type per cell**, so a cell shows one table
//! *or* one figure (use [`show_tables`] to put several tables in one output). polars has no HTML repr in
//! evcxr, so [`show_table`] renders one, with optional highlighted rows and a caption. Figures are emitted
//! as `application/vnd.plotly.v1+json`, which VS Code and the `jupyterlab-plotly` extension render
//! interactively and offline; the notebook runner (`kernel/run_notebooks.py`) adds a static SVG of each
//! figure to the same output, which GitHub, HTML exports and frontends without a plotly renderer show.
//!
//! The notebooks use the crates through the re-exports here (`rlhf_lab::notebook::{polars, plotly, tch}`),
//! so their versions always match the library's.

pub use plotly;
pub use polars;
pub use tch;

use polars::prelude::{AnyValue, DataFrame};
use std::fmt::Write as _;

/// Everything a notebook needs after its `:dep` cell: `use rlhf_lab::notebook::prelude::*;`.
pub mod prelude {
    pub use super::{
        assert_close, assert_close_rel, html_table, show_html, show_markdown, show_plot,
        show_table, show_table_with, show_tables, TableOptions,
    };
    pub use plotly::common::{Line, Marker, Mode, Title};
    pub use plotly::layout::{Axis, Layout};
    pub use plotly::{Bar, HeatMap, Plot, Scatter, Surface};
    pub use polars::prelude::{Column, DataFrame, NamedFrom, Series};
    pub use polars::{df, prelude::PolarsResult};
    pub use tch::{Device, Kind, Tensor};
}

/// Print one rich-output block for evcxr.
fn emit(mime: &str, content: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
}

/// Show raw HTML as the cell's output.
pub fn show_html(html: &str) {
    emit("text/html", html);
}

/// Show Markdown as the cell's output (rendered by Jupyter and GitHub).
pub fn show_markdown(md: &str) {
    emit("text/markdown", md);
}

/// Show a plotly figure: the plotly MIME bundle (interactive where a renderer exists) plus a text fallback.
pub fn show_plot(plot: &plotly::Plot) {
    emit("application/vnd.plotly.v1+json", &plot.to_json());
    emit("text/plain", "<plotly figure>");
}

/// How [`show_table_with`] renders a frame.
#[derive(Debug, Clone, Default)]
pub struct TableOptions<'a> {
    /// Shown above the table.
    pub caption: Option<&'a str>,
    /// Name of a boolean column: rows where it is `true` are highlighted (errata, failing checks, …).
    pub highlight: Option<&'a str>,
    /// Significant digits for floats (default: shortest round-trip representation).
    pub float_digits: Option<usize>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cell_text(v: &AnyValue, digits: Option<usize>) -> String {
    match (v, digits) {
        (AnyValue::Null, _) => String::new(),
        (AnyValue::Float64(x), Some(d)) => format_sig(*x, d),
        (AnyValue::Float32(x), Some(d)) => format_sig(*x as f64, d),
        (AnyValue::Float64(x), None) => format!("{x}"),
        (AnyValue::Float32(x), None) => format!("{x}"),
        (AnyValue::String(s), _) => (*s).to_string(),
        (AnyValue::StringOwned(s), _) => s.to_string(),
        (other, _) => format!("{other}"),
    }
}

/// `x` with `d` significant digits, without exponent for ordinary magnitudes.
fn format_sig(x: f64, d: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-5..=8).contains(&mag) {
        return format!("{:.*e}", d.saturating_sub(1), x);
    }
    let decimals = (d as i32 - 1 - mag).max(0) as usize;
    format!("{x:.decimals$}")
}

/// Render a frame as an HTML table (numbers right-aligned, highlighted rows tinted).
pub fn html_table(df: &DataFrame, opts: &TableOptions) -> String {
    let columns = df.columns();
    let highlight_col = opts
        .highlight
        .and_then(|name| columns.iter().position(|c| c.name().as_str() == name));
    let mut html = String::from("<table class=\"rlhf-lab\" style=\"border-collapse:collapse\">");
    if let Some(c) = opts.caption {
        let _ = write!(
            html,
            "<caption style=\"text-align:left\"><b>{}</b></caption>",
            escape(c)
        );
    }
    html.push_str("<thead><tr>");
    for c in columns {
        let _ = write!(
            html,
            "<th style=\"text-align:right;padding:2px 8px\">{}</th>",
            escape(c.name())
        );
    }
    html.push_str("</tr></thead><tbody>");
    for row in 0..df.height() {
        let hl = highlight_col
            .map(|i| matches!(columns[i].get(row), Ok(AnyValue::Boolean(true))))
            .unwrap_or(false);
        html.push_str(if hl {
            "<tr style=\"background:#ffe0a0\">"
        } else {
            "<tr>"
        });
        for c in columns {
            let v = c
                .get(row)
                .map(|v| cell_text(&v, opts.float_digits))
                .unwrap_or_default();
            let _ = write!(
                html,
                "<td style=\"text-align:right;padding:2px 8px\">{}</td>",
                escape(&v)
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// Show a frame as the cell's output (HTML, plus polars' text rendering as fallback).
pub fn show_table(df: &DataFrame) {
    show_table_with(df, &TableOptions::default());
}

/// [`show_table`] with a caption, highlighted rows and float precision.
pub fn show_table_with(df: &DataFrame, opts: &TableOptions) {
    emit("text/html", &html_table(df, opts));
    emit("text/plain", &format!("{df}"));
}

/// Several captioned tables as one output (a cell can only show one HTML block).
pub fn show_tables(tables: &[(&str, &DataFrame)]) {
    let mut html = String::new();
    let mut text = String::new();
    for (caption, df) in tables {
        let opts = TableOptions {
            caption: Some(caption),
            ..Default::default()
        };
        html.push_str(&html_table(df, &opts));
        html.push_str("<br/>");
        let _ = writeln!(text, "{caption}\n{df}");
    }
    emit("text/html", &html);
    emit("text/plain", &text);
}

/// Assertion cell helper: panics (so the notebook run fails) unless `|got − want| ≤ tol`.
pub fn assert_close(label: &str, got: f64, want: f64, tol: f64) {
    let ok = (got - want).abs() <= tol;
    assert!(
        ok,
        "{label}: got {got}, want {want} ± {tol} (off by {:e})",
        (got - want).abs()
    );
    println!("ok  {label}: {got} (want {want} ± {tol})");
}

/// Assertion cell helper with a relative tolerance: `|got − want| ≤ rel·|want|`.
pub fn assert_close_rel(label: &str, got: f64, want: f64, rel: f64) {
    let tol = rel * want.abs();
    let ok = (got - want).abs() <= tol;
    assert!(ok, "{label}: got {got}, want {want} within {rel} relative");
    println!("ok  {label}: {got} (want {want}, rel. tol. {rel})");
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::df;

    #[test]
    fn html_table_highlights_and_escapes() {
        let frame =
            df!("name" => ["a<b", "c"], "x" => [1.23456f64, 2.0], "bad" => [true, false]).unwrap();
        let opts = TableOptions {
            caption: Some("T"),
            highlight: Some("bad"),
            float_digits: Some(3),
        };
        let html = html_table(&frame, &opts);
        assert!(html.contains("a&lt;b"));
        assert!(html.contains("1.23<"));
        assert_eq!(html.matches("background:#ffe0a0").count(), 1);
    }

    #[test]
    fn format_sig_digits() {
        assert_eq!(format_sig(-0.0563612, 4), "-0.05636");
        assert_eq!(format_sig(2.34271, 5), "2.3427");
        assert_eq!(format_sig(1234.5, 3), "1234");
    }
}
