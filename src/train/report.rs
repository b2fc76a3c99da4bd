//! Run records shared by every training/evaluation run: the run manifest (`manifest.json`: what ran,
//! on what code, data, machine and settings), metrics tables written atomically as CSV, and a
//! self-contained HTML report with plotly figures.
//!
//! **Self-contained HTML.** `plotly` 0.14 ships plotly.js (and MathJax) in the crate
//! (`Plot::offline_js_sources`); the report inlines them once, so `report.html` opens offline in any
//! browser (≈ 7 MB per report); [`PlotlyJs::Cdn`] links the CDN instead. Figures are added with
//! `Plot::to_inline_html`.

use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The git state of the code that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitInfo {
    /// `git rev-parse HEAD`, if the project root is a git checkout.
    pub commit: Option<String>,
    /// Whether tracked files differ from `HEAD` (`git status --porcelain --untracked-files=no`).
    pub dirty: Option<bool>,
}

/// Versions of the code and of libtorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub rlhf_lab: String,
    pub tch: String,
    /// libtorch version (from `version.py` / `build-version` of the libtorch in use), if found.
    pub torch: Option<String>,
}

/// A data file and its SHA-256 (pinned in `datasets/cache/MANIFEST.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: String,
    pub sha256: String,
}

/// What a run was: written as `manifest.json` in the run directory at the start (with `finished_at`
/// empty) and again at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Run name (the directory name under `reports/`).
    pub run: String,
    /// What kind of run (`sft`, …).
    pub kind: String,
    /// The config file it was started with, if any.
    pub config_file: Option<String>,
    /// The full, resolved configuration.
    pub config: serde_json::Value,
    pub git: GitInfo,
    pub versions: Versions,
    /// Data files used and their pinned checksums.
    pub data: Vec<DataFile>,
    /// Further digests of the data actually used (e.g. SHA-256 of each split's texts).
    pub data_digests: serde_json::Map<String, serde_json::Value>,
    pub seed: i64,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i64,
    /// Logical CPU cores of the host.
    pub host_cores: usize,
    /// Hostname, if known.
    pub host: Option<String>,
    /// UTC start time (RFC 3339) of this process.
    pub started_at: String,
    /// UTC end time, once finished.
    pub finished_at: Option<String>,
    /// Steps this process resumed from (empty for a fresh run), in order of the resumes of the run.
    pub resumed_from: Vec<u64>,
    /// Results (final losses, throughput, wall time, …), free-form per kind.
    pub results: serde_json::Map<String, serde_json::Value>,
}

impl RunManifest {
    /// A manifest for a run starting now: git state, versions, host facts and start time filled in.
    pub fn new(
        run: &str,
        kind: &str,
        config: serde_json::Value,
        seed: i64,
        device: tch::Device,
    ) -> Self {
        RunManifest {
            run: run.into(),
            kind: kind.into(),
            config_file: None,
            config,
            git: git_info(&crate::io::project_root()),
            versions: versions(),
            data: Vec::new(),
            data_digests: serde_json::Map::new(),
            seed,
            device: device_name(device),
            threads: tch::get_num_threads() as i64,
            host_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string()),
            started_at: utc_now(),
            finished_at: None,
            resumed_from: Vec::new(),
            results: serde_json::Map::new(),
        }
    }

    /// Writes the manifest as pretty JSON (atomic).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_json(path, self)
    }
}

/// `cpu` / `cuda:N` / `mps` / `vulkan`.
pub fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commit and dirty flag of the git checkout at `repo` (both `None` outside git).
pub fn git_info(repo: &Path) -> GitInfo {
    let commit = git(repo, &["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(repo, &["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    GitInfo { commit, dirty }
}

/// Crate, tch and libtorch versions.
pub fn versions() -> Versions {
    Versions {
        rlhf_lab: env!("CARGO_PKG_VERSION").into(),
        // Pinned `tch = "=0.24.0"` in Cargo.toml.
        tch: "0.24.0".into(),
        torch: torch_version(),
    }
}

/// The libtorch version, read from the libtorch directory in use: `$LIBTORCH` at run time, the
/// `LIBTORCH` the crate was built against, or a parent of an `LD_LIBRARY_PATH` entry. A PyTorch wheel
/// has `version.py` (`__version__ = '2.11.0+cpu'`); the C++ distribution has `build-version`.
pub fn torch_version() -> Option<String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("LIBTORCH") {
        dirs.push(d.into());
    }
    if let Some(d) = option_env!("LIBTORCH") {
        dirs.push(d.into());
    }
    if let Some(p) = std::env::var_os("LD_LIBRARY_PATH") {
        for d in std::env::split_paths(&p) {
            if let Some(parent) = d.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    for d in dirs {
        if let Ok(s) = std::fs::read_to_string(d.join("version.py")) {
            for line in s.lines() {
                if let Some(rest) = line.strip_prefix("__version__") {
                    let v = rest.trim_start_matches([' ', '=', ':']).trim();
                    let v = v.trim_start_matches("str").trim_matches(['\'', '"', ' ']);
                    if !v.is_empty() {
                        return Some(v.to_string());
                    }
                }
            }
        }
        if let Ok(s) = std::fs::read_to_string(d.join("build-version")) {
            return Some(s.trim().to_string());
        }
    }
    None
}

/// Pinned checksums of `files` (paths relative to the data directory) from the data directory's
/// `MANIFEST.json` (written by `datasets/fetch.py`, verified at fetch time). A file not listed there
/// is hashed now.
pub fn data_checksums(data_dir: &Path, files: &[&str]) -> Result<Vec<DataFile>> {
    let manifest_path = data_dir.join("MANIFEST.json");
    let pinned: std::collections::HashMap<String, String> = if manifest_path.is_file() {
        let v: serde_json::Value = crate::io::read_json(&manifest_path)?;
        v["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["files"].as_object())
            .flat_map(|f| {
                f.iter()
                    .filter_map(|(k, v)| v.as_str().map(|h| (k.clone(), h.to_string())))
            })
            .collect()
    } else {
        Default::default()
    };
    files
        .iter()
        .map(|f| {
            let sha256 = match pinned.get(*f) {
                Some(h) => h.clone(),
                None => crate::io::sha256_file(data_dir.join(f))?,
            };
            Ok(DataFile {
                path: f.to_string(),
                sha256,
            })
        })
        .collect()
}

/// SHA-256 of a list of texts (each followed by a NUL byte, so `["ab"]` ≠ `["a", "b"]`).
pub fn texts_sha256(texts: &[String]) -> String {
    let mut bytes = Vec::with_capacity(texts.iter().map(|t| t.len() + 1).sum());
    for t in texts {
        bytes.extend_from_slice(t.as_bytes());
        bytes.push(0);
    }
    crate::io::sha256_bytes(&bytes)
}

/// Current UTC time as RFC 3339 (`2026-11-28T05:47:58Z`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the Unix epoch as RFC 3339 UTC, via Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Writes a polars `DataFrame` as CSV (header row, nulls as empty fields), atomically.
pub fn write_csv(path: impl AsRef<Path>, df: &mut polars::prelude::DataFrame) -> Result<()> {
    use polars::prelude::{CsvWriter, SerWriter};
    let path = path.as_ref();
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .finish(df)
        .map_err(|e| RlhfError::format(path, "CSV table", e))?;
    crate::io::atomic_write(path, &buf)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where the report's plotly.js comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlotlyJs {
    /// Inlined from the `plotly` crate (`Plot::offline_js_sources`): works offline, ≈ 7 MB.
    #[default]
    Inline,
    /// `<script src>` tags to the plotly/MathJax CDNs (`Plot::online_cdn_js`): small, needs a network.
    Cdn,
}

/// One curve of a [`Panel`]: a float column of `metrics.csv`, drawn over `step` where it has values.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// The column name ([`crate::train::run::MetricsRow::columns`]).
    pub column: &'static str,
    /// Legend entry.
    pub label: &'static str,
    /// Lines with markers (sparse columns such as evaluations) instead of plain lines.
    pub markers: bool,
}

/// One figure of a run's `report.html`: what a trainer declares instead of drawing.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Heading above the figure.
    pub caption: &'static str,
    /// Figure title, after the run name: `"<run>: <title>"`.
    pub title: &'static str,
    /// y-axis title.
    pub y_title: &'static str,
    /// Logarithmic y-axis.
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// The report of a training run: one plotly figure per panel, drawn from the metrics rows
/// (`steps[i]`, `values[i][j]` for `columns[j]`), the manifest's results as the summary, and the
/// manifest itself. Every trainer's `report.html` comes from here.
#[allow(clippy::too_many_arguments)]
pub fn metrics_report(
    title: &str,
    panels: &[Panel],
    columns: &[&str],
    steps: &[u64],
    values: &[Vec<Option<f64>>],
    manifest: &RunManifest,
    js: PlotlyJs,
) -> Result<String> {
    use plotly::common::{Mode, Title};
    use plotly::layout::{Axis, AxisType, Layout};
    use plotly::{Plot, Scatter};
    let mut plots = Vec::with_capacity(panels.len());
    for panel in panels {
        let mut plot = Plot::new();
        for s in &panel.series {
            let j = columns.iter().position(|c| *c == s.column).ok_or_else(|| {
                RlhfError::invalid("panels", format!("no metrics column `{}`", s.column))
            })?;
            let (x, y): (Vec<u64>, Vec<f64>) = steps
                .iter()
                .zip(values)
                .filter_map(|(step, v)| v.get(j).copied().flatten().map(|y| (*step, y)))
                .unzip();
            let mode = if s.markers {
                Mode::LinesMarkers
            } else {
                Mode::Lines
            };
            plot.add_trace(Scatter::new(x, y).mode(mode).name(s.label));
        }
        let mut y_axis = Axis::new().title(Title::with_text(panel.y_title));
        if panel.log_y {
            y_axis = y_axis.type_(AxisType::Log);
        }
        plot.set_layout(
            Layout::new()
                .title(Title::with_text(format!(
                    "{}: {}",
                    manifest.run, panel.title
                )))
                .x_axis(Axis::new().title(Title::with_text("step")))
                .y_axis(y_axis),
        );
        plots.push(plot);
    }
    let figures: Vec<(&str, &Plot)> = panels.iter().map(|p| p.caption).zip(plots.iter()).collect();
    let notes: Vec<String> = manifest
        .results
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    html_report(title, &figures, &notes, manifest, js)
}

/// A standalone HTML page: title, the plotly figures, optional notes (plain text), and the manifest
/// as pretty JSON.
pub fn html_report(
    title: &str,
    figures: &[(&str, &plotly::Plot)],
    notes: &[String],
    manifest: &RunManifest,
    js: PlotlyJs,
) -> Result<String> {
    let manifest_json = serde_json::to_string_pretty(manifest)
        .map_err(|e| RlhfError::format("manifest", "JSON value", e))?;
    let mut body = String::new();
    for (i, (caption, plot)) in figures.iter().enumerate() {
        body.push_str(&format!("<h2>{}</h2>\n", html_escape(caption)));
        body.push_str(&plot.to_inline_html(Some(&format!("figure-{i}"))));
        body.push('\n');
    }
    if !notes.is_empty() {
        body.push_str("<h2>Summary</h2>\n<ul>\n");
        for n in notes {
            body.push_str(&format!("<li>{}</li>\n", html_escape(n)));
        }
        body.push_str("</ul>\n");
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n\
         {js}\n<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\n\
         </head>\n<body>\n<h1>{t}</h1>\n{body}<h2>Manifest</h2>\n<pre>{m}</pre>\n</body>\n</html>\n",
        t = html_escape(title),
        js = match js {
            PlotlyJs::Inline => plotly::Plot::offline_js_sources(),
            PlotlyJs::Cdn => plotly::Plot::online_cdn_js(),
        },
        m = html_escape(&manifest_json),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_845_599), "2026-11-28T05:59:59Z");
    }

    #[test]
    fn texts_digest_separates_items() {
        assert_ne!(
            texts_sha256(&["ab".into()]),
            texts_sha256(&["a".into(), "b".into()])
        );
    }

    #[test]
    fn svg_draws_points_bands_and_clips_at_x_max() {
        let s = XySeries {
            name: "a".into(),
            points: vec![(0.0, 0.5), (1.0, 0.6), (30.0, 0.9)],
            line: vec![(0.0, 0.5), (1.0, 0.6)],
            line_label: "mean".into(),
            band: vec![(0.0, 0.4, 0.6), (1.0, 0.5, 0.7)],
        };
        let all = svg_xy("t", "x", "y", std::slice::from_ref(&s), None);
        let clipped = svg_xy("t", "x", "y", std::slice::from_ref(&s), Some(25.0));
        assert_eq!(all.matches("<circle").count(), 3);
        assert_eq!(clipped.matches("<circle").count(), 2);
        assert_eq!(clipped.matches("<polygon").count(), 1);
        assert_eq!(clipped.matches("<polyline").count(), 1);
        // The x axis ends at the largest kept x, not at 30.
        assert!(clipped.contains(">1.00</text>") && !clipped.contains(">30.00</text>"));
        assert!(all.contains(">30.00</text>"));
    }
}

/// One named series of an x–y figure: its points (markers), an optional line (e.g. a mean envelope)
/// and an optional shaded band `(x, low, high)` around it (e.g. ± one standard deviation over seeds).
#[derive(Debug, Clone, Default)]
pub struct XySeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub line: Vec<(f64, f64)>,
    /// What the line is, for the legend (`"envelope"`, `"mean over seeds"`, …).
    pub line_label: String,
    pub band: Vec<(f64, f64, f64)>,
}

/// `#rrggbb` → `rgba(r, g, b, alpha)`.
fn rgba(hex: &str, alpha: f64) -> String {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    format!("rgba({}, {}, {}, {alpha})", c(1), c(3), c(5))
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Writes `<stem>.html` (plotly, offline: plotly.js inlined) and `<stem>.svg` (a static copy drawn
/// here, no browser needed) of an x–y figure: each series as markers plus its line.
pub fn write_xy_figure(
    stem: &Path,
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[XySeries],
    x_max: Option<f64>,
) -> Result<()> {
    let plot = xy_plot(title, x_title, y_title, series, x_max);
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n{js}\n</head>\n<body>\n{fig}\n</body>\n</html>\n",
        t = html_escape(title),
        js = plotly::Plot::offline_js_sources(),
        fig = plot.to_inline_html(Some("figure")),
    );
    crate::io::atomic_write(stem.with_extension("html"), html.as_bytes())?;
    crate::io::atomic_write(
        stem.with_extension("svg"),
        svg_xy(title, x_title, y_title, series, x_max).as_bytes(),
    )
}

/// The plotly figure of [`write_xy_figure`] (for a notebook to show). `x_max`: the initial x-axis
/// range is `[0, x_max]` (the data beyond stays in the figure; zoom out to see it).
pub fn xy_plot(
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[XySeries],
    x_max: Option<f64>,
) -> plotly::Plot {
    use plotly::common::{Fill, Line, Marker, Mode, Title};
    use plotly::layout::{Axis, Layout};
    use plotly::{Plot, Scatter};
    let mut plot = Plot::new();
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if !s.band.is_empty() {
            // The high edge, then the low edge filled up to it.
            let x: Vec<f64> = s.band.iter().map(|b| b.0).collect();
            for (k, y) in [
                s.band.iter().map(|b| b.2).collect::<Vec<f64>>(),
                s.band.iter().map(|b| b.1).collect(),
            ]
            .into_iter()
            .enumerate()
            {
                let mut tr = Scatter::new(x.clone(), y)
                    .mode(Mode::Lines)
                    .name(format!("{} (band)", s.name))
                    .legend_group(&s.name)
                    .show_legend(false)
                    .line(Line::new().width(0.0).color(color));
                if k == 1 {
                    tr = tr.fill(Fill::ToNextY).fill_color(rgba(color, 0.18));
                }
                plot.add_trace(tr);
            }
        }
        let (x, y): (Vec<f64>, Vec<f64>) = s.points.iter().copied().unzip();
        plot.add_trace(
            Scatter::new(x, y)
                .mode(Mode::Markers)
                .name(&s.name)
                .legend_group(&s.name)
                .marker(Marker::new().color(color).opacity(0.5)),
        );
        if !s.line.is_empty() {
            let (x, y): (Vec<f64>, Vec<f64>) = s.line.iter().copied().unzip();
            plot.add_trace(
                Scatter::new(x, y)
                    .mode(Mode::Lines)
                    .name(format!("{} ({})", s.name, s.line_label))
                    .legend_group(&s.name)
                    .marker(Marker::new().color(color)),
            );
        }
    }
    plot.set_layout(
        Layout::new()
            .title(Title::with_text(title))
            .x_axis({
                let a = Axis::new().title(Title::with_text(x_title));
                match x_max {
                    Some(m) => a.range(vec![0.0, m]),
                    None => a,
                }
            })
            .y_axis(Axis::new().title(Title::with_text(y_title))),
    );
    plot
}

/// A self-contained SVG of an x–y figure (axes with ticks, markers, lines, legend). With `x_max`, only
/// what lies at `x ≤ x_max` is drawn.
pub fn svg_xy(
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[XySeries],
    x_max: Option<f64>,
) -> String {
    let keep = |x: f64| x_max.is_none_or(|m| x <= m);
    let clipped: Vec<XySeries> = series
        .iter()
        .map(|s| XySeries {
            name: s.name.clone(),
            points: s.points.iter().copied().filter(|p| keep(p.0)).collect(),
            line: s.line.iter().copied().filter(|p| keep(p.0)).collect(),
            line_label: s.line_label.clone(),
            band: s.band.iter().copied().filter(|b| keep(b.0)).collect(),
        })
        .collect();
    let series = &clipped[..];
    let (w, h) = (820.0, 520.0);
    let (l, r, t, b) = (70.0, 210.0, 40.0, 55.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .chain(&s.line)
                .copied()
                .chain(s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]))
                .collect::<Vec<_>>()
        })
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (0.0f64, 1.0f64, 0.0f64, 1.0f64);
    if !all.is_empty() {
        x0 = all
            .iter()
            .map(|p| p.0)
            .fold(f64::INFINITY, f64::min)
            .min(0.0);
        x1 = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        y0 = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        y1 = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 0.1;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        (w - r + l) / 2.0,
        html_escape(title)
    );
    for i in 0..=5 {
        let (fx, fy) = (
            x0 + (x1 - x0) * i as f64 / 5.0,
            y0 + (y1 - y0) * i as f64 / 5.0,
        );
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4:.2}</text>\n",
            px(fx), t, h - b, h - b + 16.0, fx
        ));
        s.push_str(&format!(
            "<line x1=\"{1}\" y1=\"{0:.1}\" x2=\"{2}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{3}\" y=\"{4:.1}\" text-anchor=\"end\">{5:.3}</text>\n",
            py(fy), l, w - r, l - 6.0, py(fy) + 4.0, fy
        ));
    }
    s.push_str(&format!(
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        w - l - r,
        h - t - b,
        (w - r + l) / 2.0,
        h - 12.0,
        html_escape(x_title),
        (h - b + t) / 2.0,
        html_escape(y_title)
    ));
    for (i, se) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        if se.band.len() > 1 {
            let pts: Vec<String> = se
                .band
                .iter()
                .map(|&(x, _, hi)| (x, hi))
                .chain(se.band.iter().rev().map(|&(x, lo, _)| (x, lo)))
                .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            s.push_str(&format!(
                "<polygon points=\"{}\" fill=\"{c}\" fill-opacity=\"0.15\" stroke=\"none\"/>\n",
                pts.join(" ")
            ));
        }
        for &(x, y) in se
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\" fill-opacity=\"0.45\"/>\n",
                px(x),
                py(y)
            ));
        }
        if se.line.len() > 1 {
            let pts: Vec<String> = se
                .line
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            s.push_str(&format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>\n",
                pts.join(" ")
            ));
        }
        let ly = t + 14.0 + 18.0 * i as f64;
        s.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            w - r + 12.0,
            ly - 10.0,
            w - r + 30.0,
            ly,
            html_escape(&se.name)
        ));
    }
    s.push_str("</svg>\n");
    s
}
