//! The run directory every trainer writes into — one place for the plumbing of a training run, so a
//! trainer's file holds only its config, its data and its loop.
//!
//! ```text
//! <run_dir>/
//!   manifest.json          config, git commit, versions, data checksums, seed, device, threads, host,
//!                          start/end times, every resume, results        (RunManifest, atomic)
//!   metrics.csv            step, tokens, then the trainer's columns       (MetricsRow::columns)
//!   report.html            plotly curves of the metrics + the manifest    (train::report)
//!   checkpoints/           git-ignored
//!     ckpt-<step>/         whatever the trainer writes (model, optimizer.safetensors) + state.json
//!     latest.json          the newest *complete* checkpoint
//! ```
//!
//! **Crash safety.** A checkpoint is written into `checkpoints/.ckpt-<step>.tmp/`, renamed to
//! `ckpt-<step>/`, and only then is `latest.json` atomically replaced (temp file + rename). A process
//! killed at any instant leaves either the previous `latest.json` or the new one, each pointing at a
//! complete directory; stale `.ckpt-*.tmp` directories are removed when the run is reopened. The newest
//! `keep` checkpoints are kept.
//!
//! **Resume.** [`Run::open`] with [`ResumeMode::Auto`] continues from `latest.json`; the checkpoint's
//! `state.json` holds the step, the data-order generator state, the tokens seen, the resolved config
//! (a run reopened with a different config is refused: [`RlhfError::Config`]) and every metrics row so
//! far with each float stored as its IEEE-754 bit pattern (serde_json's default float parser may round
//! the last bit), so a resumed run's `metrics.csv` is byte-identical to an uninterrupted one.
//!
//! **Use** (what `train::sft` does):
//! ```text
//! let (mut run, resumed) = Run::<MyRow>::open("sft", &cfg.name, &cfg, cfg.seed, &opts)?;
//! // build model + optimiser; on `resumed`, load them from `resumed.dir`
//! run.manifest.results.insert(...); run.save_manifest()?;
//! run.start_progress(max_steps, step);
//! while step < max_steps {
//!     ...; run.push(row); run.step_done(step, tokens, secs, msg);
//!     if ckpt { run.checkpoint(&state, |tmp| { model.save(tmp)?; opt.save(tmp.join(OPTIMIZER_FILE)) })?; }
//! }
//! run.finish(title, &panels, results)?;
//! ```

use crate::error::{Result, RlhfError};
use crate::train::report::{self, Panel, RunManifest};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Subdirectory of the run directory holding `ckpt-<step>/` and `latest.json` (git-ignored as
/// `/reports/*/checkpoints/`).
pub const CHECKPOINTS: &str = "checkpoints";
/// The pointer to the newest complete checkpoint, inside [`CHECKPOINTS`].
pub const LATEST: &str = "latest.json";
/// The run state inside a checkpoint directory.
pub const STATE_FILE: &str = "state.json";
/// The AdamW moments inside a checkpoint directory ([`crate::train::optim::AdamW::save`]).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Files of the run directory that [`ResumeMode::Fresh`] removes (besides `checkpoints/`).
const RUN_FILES: [&str; 4] = [
    "metrics.csv",
    "manifest.json",
    "report.html",
    "tokenizer.json",
];

/// What to do with an existing run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeMode {
    /// Resume from `checkpoints/latest.json` if the run directory has one, else start fresh.
    #[default]
    Auto,
    /// Delete the run's checkpoints, metrics and reports and start over.
    Fresh,
    /// Resume; an error if there is no checkpoint.
    Require,
}

/// How to run (not part of the config, so not part of what a resume must match).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run directory (default `reports/<name>` under the project root).
    pub out_dir: Option<PathBuf>,
    pub resume: ResumeMode,
    /// The config file, recorded in the manifest and named in config errors.
    pub config_file: Option<PathBuf>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Print one line per evaluation/checkpoint/resume to stderr.
    pub verbose: bool,
    /// Test hook: sleep this long after every step, so a test can kill the process mid-run.
    pub step_delay_ms: u64,
    /// `report.html` loads plotly.js from its CDN instead of inlining it (≈ 10 kB instead of ≈ 7 MB,
    /// but needs a network connection to show the figures).
    pub plotly_cdn: bool,
    /// Data directory (default [`crate::data::data_dir`]).
    pub data_dir: Option<PathBuf>,
}

impl RunOptions {
    /// The name config errors carry: the config file, else the run name.
    pub fn source_name(&self, run_name: &str) -> String {
        self.config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| run_name.to_string())
    }
}

/// One row of a trainer's `metrics.csv`: `step`, `tokens`, then [`MetricsRow::columns`] (floats, empty
/// where a column does not apply to the row, e.g. validation columns between evaluations).
pub trait MetricsRow: Clone {
    /// Names of the float columns, in CSV order (TRL's names where TRL logs the same quantity).
    fn columns() -> &'static [&'static str];
    /// Optimiser steps completed.
    fn step(&self) -> u64;
    /// Training tokens consumed so far.
    fn tokens(&self) -> u64;
    /// The float columns, aligned with [`MetricsRow::columns`].
    fn values(&self) -> Vec<Option<f64>>;
    /// The inverse of (`step`, `tokens`, `values`).
    fn from_values(step: u64, tokens: u64, values: &[Option<f64>]) -> Self;
}

/// A metrics row with every float as its bit pattern (`f64::to_bits`), for `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetricsBits {
    step: u64,
    tokens: u64,
    values: Vec<Option<u64>>,
}

impl MetricsBits {
    fn of<R: MetricsRow>(r: &R) -> Self {
        MetricsBits {
            step: r.step(),
            tokens: r.tokens(),
            values: r
                .values()
                .into_iter()
                .map(|v| v.map(f64::to_bits))
                .collect(),
        }
    }

    fn row<R: MetricsRow>(&self) -> R {
        let values: Vec<Option<f64>> = self.values.iter().map(|v| v.map(f64::from_bits)).collect();
        R::from_values(self.step, self.tokens, &values)
    }
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CkptState {
    step: u64,
    rng_state: u64,
    tokens: u64,
    config: serde_json::Value,
    metrics: Vec<MetricsBits>,
    /// Trainer-specific state (e.g. a KL controller's coefficient); absent when the trainer has none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    extra: serde_json::Value,
}

/// `latest.json`: which checkpoint directory is the newest complete one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latest {
    step: u64,
    dir: String,
}

/// Where a reopened run continues from.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The checkpoint directory: load the model and optimiser from here.
    pub dir: PathBuf,
    pub step: u64,
    /// The data-order generator state ([`crate::rng::SplitMix64::from_state`]).
    pub rng_state: u64,
    pub tokens: u64,
    /// What the trainer passed as `extra` to [`Run::checkpoint`] (`Null` if nothing).
    pub extra: serde_json::Value,
}

/// What a trainer hands to [`Run::checkpoint`] besides its files.
#[derive(Debug, Clone, Default)]
pub struct CheckpointState {
    pub step: u64,
    pub rng_state: u64,
    pub tokens: u64,
    pub extra: serde_json::Value,
}

/// Throughput and wall time of this process, returned by [`Run::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Training tokens per second of this process (optimisation only; evaluation excluded).
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
}

/// An open run directory; see the module documentation.
pub struct Run<R: MetricsRow> {
    /// The run directory.
    pub dir: PathBuf,
    /// The manifest, kept across resumes; trainers add data checksums and results, then
    /// [`Run::save_manifest`].
    pub manifest: RunManifest,
    /// Every metrics row so far (restored on resume).
    pub rows: Vec<R>,
    config: serde_json::Value,
    keep: usize,
    opts: RunOptions,
    bar: indicatif::ProgressBar,
    started: Instant,
    train_secs: f64,
    tokens_this_process: u64,
}

fn remove_dir_if_exists(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).map_err(|e| RlhfError::io(p, e))?;
    }
    Ok(())
}

fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:08}")
}

/// The newest complete checkpoint of a run directory (`<run_dir>/checkpoints/<latest.json's dir>`);
/// `None` when the run has none yet.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let ckpt_root = run_dir.join(CHECKPOINTS);
    let latest_path = ckpt_root.join(LATEST);
    if !latest_path.is_file() {
        return Ok(None);
    }
    let latest: Latest = crate::io::read_json(&latest_path)?;
    Ok(Some(ckpt_root.join(latest.dir)))
}

/// The metrics rows as a polars `DataFrame`: `step`, `tokens` (u64), then the float columns (nulls where
/// a column does not apply).
pub fn metrics_frame<R: MetricsRow>(rows: &[R]) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let values: Vec<Vec<Option<f64>>> = rows.iter().map(|r| r.values()).collect();
    let mut cols = vec![
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.step()).collect::<Vec<u64>>(),
        ),
        Column::new(
            "tokens".into(),
            rows.iter().map(|r| r.tokens()).collect::<Vec<u64>>(),
        ),
    ];
    for (j, name) in R::columns().iter().enumerate() {
        let col: Vec<Option<f64>> = values.iter().map(|v| v.get(j).copied().flatten()).collect();
        cols.push(Column::new((*name).into(), col));
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

impl<R: MetricsRow> Run<R> {
    /// Opens (or creates) the run directory `opts.out_dir` (default `reports/<name>`): with
    /// [`ResumeMode::Fresh`] clears it first; otherwise finds `latest.json`, refuses a checkpoint of a
    /// different `config`, and restores the metrics rows. Removes stale temporary checkpoints. Call it
    /// after setting the thread count: the manifest records it.
    pub fn open(
        kind: &str,
        name: &str,
        config: &impl Serialize,
        seed: i64,
        keep_checkpoints: usize,
        opts: &RunOptions,
    ) -> Result<(Self, Option<Resumed>)> {
        let source = opts.source_name(name);
        let config =
            serde_json::to_value(config).map_err(|e| RlhfError::format(&source, "config", e))?;
        let dir = opts
            .out_dir
            .clone()
            .unwrap_or_else(|| crate::io::project_root().join("reports").join(name));
        let ckpt_root = dir.join(CHECKPOINTS);
        let latest_path = ckpt_root.join(LATEST);
        let mut rows = Vec::new();
        let resumed = match opts.resume {
            ResumeMode::Fresh => {
                clear_run_dir(&dir)?;
                None
            }
            ResumeMode::Auto | ResumeMode::Require => {
                if latest_path.is_file() {
                    let latest: Latest = crate::io::read_json(&latest_path)?;
                    let ckpt = ckpt_root.join(&latest.dir);
                    let state: CkptState = crate::io::read_json(ckpt.join(STATE_FILE))?;
                    if state.config != config {
                        return Err(RlhfError::Config {
                            source_name: source,
                            reason: format!(
                                "{} holds a checkpoint of a run with a different configuration; \
                                 pass --fresh to start over or --out to use another directory",
                                dir.display()
                            ),
                        });
                    }
                    rows = state.metrics.iter().map(MetricsBits::row).collect();
                    Some(Resumed {
                        dir: ckpt,
                        step: state.step,
                        rng_state: state.rng_state,
                        tokens: state.tokens,
                        extra: state.extra,
                    })
                } else if opts.resume == ResumeMode::Require {
                    return Err(RlhfError::io(&latest_path, "no checkpoint to resume from"));
                } else {
                    None
                }
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| RlhfError::io(&dir, e))?;
        // Stale temporary checkpoint directories of a killed run.
        if ckpt_root.is_dir() {
            for e in std::fs::read_dir(&ckpt_root)
                .map_err(|e| RlhfError::io(&ckpt_root, e))?
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(".ckpt-") {
                    remove_dir_if_exists(&e.path())?;
                }
            }
        }

        // Manifest (kept across resumes: the first start time and every resume are recorded).
        let device = tch::Device::cuda_if_available();
        let mut manifest = RunManifest::new(name, kind, config.clone(), seed, device);
        if resumed.is_some() {
            if let Ok(prev) = crate::io::read_json::<RunManifest>(dir.join("manifest.json")) {
                manifest.started_at = prev.started_at;
                manifest.resumed_from = prev.resumed_from;
                manifest.results = prev.results;
                manifest.finished_at = prev.finished_at;
            }
        }
        manifest
            .resumed_from
            .extend(resumed.as_ref().map(|r| r.step));
        manifest.config_file = opts.config_file.as_ref().map(|p| p.display().to_string());
        if let Some(r) = &resumed {
            // Always said, even when quiet: a resumed run must never pass for a fresh one.
            eprintln!("resuming {name} from step {} ({})", r.step, r.dir.display());
        }
        let run = Run {
            dir,
            manifest,
            rows,
            config,
            keep: keep_checkpoints,
            opts: opts.clone(),
            bar: indicatif::ProgressBar::hidden(),
            started: Instant::now(),
            train_secs: 0.0,
            tokens_this_process: 0,
        };
        Ok((run, resumed))
    }

    /// What every trainer does first: validate its whole config (a [`RlhfError::Config`] naming the
    /// config file), set libtorch's thread count (before the manifest records it), then [`Run::open`].
    #[allow(clippy::too_many_arguments)]
    pub fn start<C: crate::train::config::TrainConfig + Serialize>(
        kind: &str,
        cfg: &C,
        name: &str,
        seed: i64,
        threads: Option<i32>,
        keep_checkpoints: usize,
        opts: &RunOptions,
    ) -> Result<(Self, Option<Resumed>)> {
        cfg.validate().map_err(|e| RlhfError::Config {
            source_name: opts.source_name(name),
            reason: e.to_string(),
        })?;
        if let Some(t) = threads {
            tch::set_num_threads(t);
        }
        Self::open(kind, name, cfg, seed, keep_checkpoints, opts)
    }

    /// The device a trainer should use; recorded in the manifest.
    pub fn device(&self) -> tch::Device {
        tch::Device::cuda_if_available()
    }

    /// A line to stderr when the run is verbose.
    pub fn say(&self, msg: impl AsRef<str>) {
        if self.opts.verbose {
            self.bar.suspend(|| eprintln!("{}", msg.as_ref()));
        }
    }

    /// Writes `manifest.json` (atomic).
    pub fn save_manifest(&self) -> Result<()> {
        self.manifest.save(self.dir.join("manifest.json"))
    }

    /// Appends a metrics row (not yet written: see [`Run::write_metrics`]).
    pub fn push(&mut self, row: R) {
        self.rows.push(row);
    }

    /// Writes `metrics.csv` (atomic) from every row so far.
    pub fn write_metrics(&self) -> Result<()> {
        let mut df = metrics_frame(&self.rows)?;
        report::write_csv(self.dir.join("metrics.csv"), &mut df)
    }

    /// Shows a progress bar of `total` steps at `position` (on a terminal, when `progress` is set).
    pub fn start_progress(&mut self, total: u64, position: u64) {
        self.bar = if self.opts.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        self.bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.bar.set_position(position);
    }

    /// Records one finished optimiser step: `tokens` trained on in `secs` seconds (the throughput counts
    /// only these), moves the bar to `step` and shows `msg` with the running tokens/s. Honours the
    /// `step_delay_ms` test hook.
    pub fn step_done(&mut self, step: u64, tokens: u64, secs: f64, msg: &str) {
        self.train_secs += secs;
        self.tokens_this_process += tokens;
        self.bar.set_position(step);
        self.bar.set_message(format!(
            "{msg} | {:.0} tok/s",
            self.tokens_this_process as f64 / self.train_secs.max(1e-9)
        ));
        if self.opts.step_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.opts.step_delay_ms));
        }
    }

    /// Writes `metrics.csv`, then checkpoint `ckpt-<step>/`: `write_files(tmp_dir)` writes the trainer's
    /// files (model, optimiser) into a temporary directory, the run adds `state.json`, renames the
    /// directory into place, points `latest.json` at it and prunes all but the newest `keep`.
    pub fn checkpoint(
        &mut self,
        state: &CheckpointState,
        write_files: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        self.write_metrics()?;
        let ckpt_root = self.dir.join(CHECKPOINTS);
        let name = ckpt_name(state.step);
        let tmp = ckpt_root.join(format!(".{name}.tmp"));
        remove_dir_if_exists(&tmp)?;
        std::fs::create_dir_all(&tmp).map_err(|e| RlhfError::io(&tmp, e))?;
        write_files(&tmp)?;
        let ckpt_state = CkptState {
            step: state.step,
            rng_state: state.rng_state,
            tokens: state.tokens,
            config: self.config.clone(),
            metrics: self.rows.iter().map(MetricsBits::of).collect(),
            extra: state.extra.clone(),
        };
        crate::io::write_json(tmp.join(STATE_FILE), &ckpt_state)?;
        let dst = ckpt_root.join(&name);
        remove_dir_if_exists(&dst)?;
        std::fs::rename(&tmp, &dst).map_err(|e| RlhfError::io(&dst, e))?;
        if let Ok(f) = std::fs::File::open(&ckpt_root) {
            let _ = f.sync_all();
        }
        crate::io::write_json(
            ckpt_root.join(LATEST),
            &Latest {
                step: state.step,
                dir: name.clone(),
            },
        )?;
        // Prune: keep the newest `keep` checkpoints (the one just written among them).
        let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(&ckpt_root)
            .map_err(|e| RlhfError::io(&ckpt_root, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_prefix("ckpt-")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|s| (s, e.path()))
            })
            .collect();
        steps.sort();
        let n = steps.len();
        for (s, p) in steps.into_iter().take(n.saturating_sub(self.keep)) {
            if s != state.step {
                remove_dir_if_exists(&p)?;
            }
        }
        self.say(format!("step {}: checkpoint {name}", state.step));
        Ok(())
    }

    /// Ends the run: clears the bar, writes `metrics.csv`, records `results` (plus the end time and this
    /// process's throughput, unless a rerun of a finished run trained nothing — then the recorded ones
    /// stay) in the manifest, and writes `report.html` with one figure per panel.
    pub fn finish(
        &mut self,
        title: &str,
        panels: &[Panel],
        results: Vec<(&str, serde_json::Value)>,
    ) -> Result<Finished> {
        self.bar.finish_and_clear();
        self.write_metrics()?;
        let wall_s = self.started.elapsed().as_secs_f64();
        let train_tokens_per_s = if self.train_secs > 0.0 {
            self.tokens_this_process as f64 / self.train_secs
        } else {
            0.0
        };
        let mut results = results;
        if self.tokens_this_process > 0 || self.manifest.finished_at.is_none() {
            self.manifest.finished_at = Some(report::utc_now());
            results.push((
                "train_tokens_per_s_last_process",
                serde_json::json!(train_tokens_per_s),
            ));
            results.push(("wall_s_last_process", serde_json::json!(wall_s)));
        }
        for (k, v) in results {
            self.manifest.results.insert(k.into(), v);
        }
        self.save_manifest()?;
        let steps: Vec<u64> = self.rows.iter().map(|r| r.step()).collect();
        let values: Vec<Vec<Option<f64>>> = self.rows.iter().map(|r| r.values()).collect();
        let html = report::metrics_report(
            title,
            panels,
            R::columns(),
            &steps,
            &values,
            &self.manifest,
            if self.opts.plotly_cdn {
                report::PlotlyJs::Cdn
            } else {
                report::PlotlyJs::Inline
            },
        )?;
        crate::io::atomic_write(self.dir.join("report.html"), html.as_bytes())?;
        Ok(Finished {
            train_tokens_per_s,
            wall_s,
        })
    }
}

/// Removes what a run writes into its directory ([`ResumeMode::Fresh`]); other files are left alone.
fn clear_run_dir(run_dir: &Path) -> Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(run_dir).map_err(|e| RlhfError::io(run_dir, e))? {
        let e = e.map_err(|e| RlhfError::io(run_dir, e))?;
        let n = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if n == CHECKPOINTS {
            remove_dir_if_exists(&p)?;
        } else if RUN_FILES.contains(&n.as_str()) {
            std::fs::remove_file(&p).map_err(|e| RlhfError::io(&p, e))?;
        }
    }
    Ok(())
}
