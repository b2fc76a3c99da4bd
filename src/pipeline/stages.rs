//! Cached stages of a multi-stage pipeline: each stage's outputs live in `<root>/<name>-<key>/`, where
//! `key` is the first 12 hex digits of the SHA-256 of the stage's configuration (JSON). A stage is done
//! when its `done.json` exists — written atomically, last — so a finished stage is never recomputed, a
//! changed configuration gets a new directory, and a stage killed mid-way reruns (trainers inside it
//! resume from their own checkpoints).

use crate::error::{Result, RlhfError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `done.json` of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done<T> {
    stage: String,
    config: serde_json::Value,
    wall_s: f64,
    result: T,
}

/// What happened to one stage in this process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub dir: PathBuf,
    /// Wall time of the computation (recorded when it ran, also for cached stages).
    pub wall_s: f64,
    /// Taken from the cache in this process.
    pub cached: bool,
}

/// The stage runner of one pipeline root.
#[derive(Debug)]
pub struct Stages {
    pub root: PathBuf,
    pub timings: Vec<StageTiming>,
    pub verbose: bool,
}

/// The cache key of a configuration.
pub fn config_key(config: &serde_json::Value) -> String {
    crate::io::sha256_bytes(config.to_string().as_bytes())[..12].to_string()
}

impl Stages {
    pub fn new(root: impl Into<PathBuf>, verbose: bool) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| RlhfError::io(&root, e))?;
        Ok(Stages {
            root,
            timings: Vec::new(),
            verbose,
        })
    }

    /// The directory of stage `name` with configuration `config`.
    pub fn dir(&self, name: &str, config: &serde_json::Value) -> PathBuf {
        self.root.join(format!("{name}-{}", config_key(config)))
    }

    /// Whether the stage is done.
    pub fn is_done(&self, name: &str, config: &serde_json::Value) -> bool {
        self.dir(name, config).join("done.json").is_file()
    }

    /// Runs `f(dir)` unless the stage is done; returns its (possibly cached) result.
    pub fn run<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        config: &serde_json::Value,
        f: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<T> {
        let dir = self.dir(name, config);
        let done_path = dir.join("done.json");
        if done_path.is_file() {
            let done: Done<T> = crate::io::read_json(&done_path)?;
            self.timings.push(StageTiming {
                stage: name.into(),
                dir,
                wall_s: done.wall_s,
                cached: true,
            });
            return Ok(done.result);
        }
        std::fs::create_dir_all(&dir).map_err(|e| RlhfError::io(&dir, e))?;
        crate::io::write_json(dir.join("config.json"), config)?;
        if self.verbose {
            eprintln!("stage {name}: {}", dir.display());
        }
        let t0 = Instant::now();
        let result = f(&dir)?;
        let wall_s = t0.elapsed().as_secs_f64();
        crate::io::write_json(
            &done_path,
            &Done {
                stage: name.into(),
                config: config.clone(),
                wall_s,
                result: &result,
            },
        )?;
        self.timings.push(StageTiming {
            stage: name.into(),
            dir,
            wall_s,
            cached: false,
        });
        Ok(result)
    }
}
