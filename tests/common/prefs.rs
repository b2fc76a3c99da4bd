//! Fixtures of the preference-trainer tests (tests/train_rm.rs, tests/train_dpo.rs): a tiny SFT run
//! trained once into the target's temporary directory, preference data separable by construction, and
//! the helpers to run the binary and kill it.
#![allow(dead_code)]

use rlhf_lab::data::{PreferencePair, RankedCompletions};
use rlhf_lab::rng::SplitMix64;
use rlhf_lab::train::sft::{run_sft, ResumeMode, SftConfig, SftOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// libtorch's RNG and thread count are process-global: in-process runs take turns.
pub static TORCH: Mutex<()> = Mutex::new(());

pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
}

/// A tiny SFT run (configs/sft-tiny.toml cut to 40 steps), trained once and reused: by this test
/// binary's tests (a `OnceLock`) and by later test binaries (the run directory resumes at its end).
pub fn sft_run() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let _g = torch_lock();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pref-fixture-sft-tiny");
        let mut cfg = SftConfig::from_file(config_path("sft-tiny.toml")).unwrap();
        cfg.name = "pref-fixture-sft-tiny".into();
        cfg.optim.max_steps = 40;
        cfg.eval_interval = 40;
        cfg.checkpoint_interval = 40;
        let opts = |resume| SftOptions {
            out_dir: Some(dir.clone()),
            resume,
            plotly_cdn: true,
            ..Default::default()
        };
        if run_sft(&cfg, &opts(ResumeMode::Auto)).is_err() {
            run_sft(&cfg, &opts(ResumeMode::Fresh)).expect("fixture SFT run");
        }
        dir
    })
    .clone()
}

pub const POSITIVE: [&str; 10] = [
    "great",
    "wonderful",
    "brilliant",
    "moving",
    "funny",
    "superb",
    "beautiful",
    "excellent",
    "charming",
    "good",
];
pub const NEGATIVE: [&str; 10] = [
    "awful", "boring", "dull", "terrible", "bad", "weak", "tedious", "stupid", "ugly", "poor",
];
const SUBJECTS: [&str; 6] = ["movie", "film", "story", "cast", "plot", "script"];

/// A completion with `n_pos` positive and `3 − n_pos` negative words, in a fixed template.
fn completion(rng: &mut SplitMix64, n_pos: usize) -> String {
    let words: Vec<&str> = (0..3)
        .map(|j| {
            if j < n_pos {
                POSITIVE[rng.below(POSITIVE.len())]
            } else {
                NEGATIVE[rng.below(NEGATIVE.len())]
            }
        })
        .collect();
    format!(" was {}, {} and {}.", words[0], words[1], words[2])
}

fn prompt(i: usize, rng: &mut SplitMix64) -> String {
    format!("Review {i}: the {}", SUBJECTS[rng.below(SUBJECTS.len())])
}

/// `n` pairs separable by construction: the chosen completion holds only positive words, the rejected
/// one only negative words (scores +1 / −1).
pub fn separable_pairs(n: usize) -> Vec<PreferencePair> {
    let mut rng = SplitMix64::new(11);
    (0..n)
        .map(|i| PreferencePair {
            prompt: prompt(i, &mut rng),
            chosen: completion(&mut rng, 3),
            rejected: completion(&mut rng, 0),
            score_chosen: Some(1.0),
            score_rejected: Some(-1.0),
        })
        .collect()
}

/// `n` prompts with K ∈ {2, …, 4} completions ranked by their number of positive words (3, 2, 1, 0 →
/// best first; K = 2 keeps 3 and 0).
pub fn ranked(n: usize, k: usize) -> Vec<RankedCompletions> {
    assert!((2..=4).contains(&k));
    let mut rng = SplitMix64::new(12);
    let levels: Vec<usize> = match k {
        2 => vec![3, 0],
        3 => vec![3, 1, 0],
        _ => vec![3, 2, 1, 0],
    };
    (0..n)
        .map(|i| {
            let p = prompt(i, &mut rng);
            let completions: Vec<String> =
                levels.iter().map(|&l| completion(&mut rng, l)).collect();
            RankedCompletions {
                prompt: p,
                completions,
                scores: Some(levels.iter().map(|&l| l as f64).collect()),
            }
        })
        .collect()
}

/// The separable pairs as a K = 2 ranked file (same prompts and completions, same order).
pub fn pairs_as_ranked(pairs: &[PreferencePair]) -> Vec<RankedCompletions> {
    pairs
        .iter()
        .map(|p| RankedCompletions {
            prompt: p.prompt.clone(),
            completions: vec![p.chosen.clone(), p.rejected.clone()],
            scores: Some(vec![p.score_chosen.unwrap(), p.score_rejected.unwrap()]),
        })
        .collect()
}

/// Writes the separable pairs once per test binary and returns the file.
pub fn pairs_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pref-fixture-pairs.jsonl");
        rlhf_lab::data::write_preferences(&p, &separable_pairs(300)).unwrap();
        p
    })
    .clone()
}

/// A TOML config text with `sft_run` and `data.path` replaced (the shipped tiny configs point at
/// `reports/`).
pub fn with_fixture_paths(toml_text: &str, sft: &Path, data: &Path) -> String {
    toml_text
        .replace(
            "sft_run = \"reports/sft-tiny\"",
            &format!("sft_run = {:?}", sft.display().to_string()),
        )
        .replace(
            "path = \"reports/prefs-tiny.jsonl\"",
            &format!("path = {:?}", data.display().to_string()),
        )
}

pub fn latest_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoints/latest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64()
}

/// Starts `rlhf-lab <cmd> --quiet --config <config> --out <dir>` with the step-delay test hook.
pub fn spawn(cmd: &str, config: &Path, dir: &Path, delay_ms: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args([cmd, "--quiet", "--plotly-cdn", "--config"])
        .arg(config)
        .arg("--out")
        .arg(dir)
        .args(["--step-delay-ms", &delay_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rlhf-lab binary starts")
}

/// Polls until `pred` holds (or the child exits, or 120 s pass).
pub fn wait_until(child: &mut std::process::Child, pred: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        if pred() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return pred();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Runs `cmd` with `config` into `k`: SIGKILL after the first checkpoint, again at a pseudo-random
/// instant after the resumed run's first checkpoint, then to the end. Returns the final `metrics.csv`.
pub fn kill_and_resume(cmd: &str, config: &Path, k: &Path, max_steps: u64) -> String {
    let mut child = spawn(cmd, config, k, 40);
    assert!(
        wait_until(&mut child, || latest_step(k).is_some()),
        "no checkpoint appeared"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let first = latest_step(k).unwrap();
    assert!(
        first < max_steps,
        "the run finished before it could be killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = spawn(cmd, config, k, 40);
    assert!(wait_until(&mut child, || latest_step(k).is_some_and(|s| s > first)));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    std::thread::sleep(Duration::from_millis(nanos % 300));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("from step {first}")), "{stderr}");

    let out = spawn(cmd, config, k, 0).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resuming"),
        "the final run did not resume: {stderr}"
    );
    assert!(!std::fs::read_dir(k.join("checkpoints")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".ckpt-")));
    std::fs::read_to_string(k.join("metrics.csv")).unwrap()
}

/// Runs the binary to completion and returns (exit code, stderr).
pub fn run_cli(cmd: &str, config: &Path, out: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args([cmd, "--quiet", "--plotly-cdn", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}
