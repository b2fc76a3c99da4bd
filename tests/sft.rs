//! SFT loop on the tiny config (`configs/sft-tiny.toml`): it learns, it is bit-reproducible, and a run
//! killed with SIGKILL (after a checkpoint, and again at an arbitrary instant) resumes to the same
//! metrics as an uninterrupted run. Bad configs are `RlhfError::Config` naming the file.

use rlhf_lab::train::sft::{run_sft, ResumeMode, SftConfig, SftOptions};
use rlhf_lab::RlhfError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// libtorch's RNG and thread count are process-global: in-process runs take turns.
static TORCH: Mutex<()> = Mutex::new(());

fn tiny_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/sft-tiny.toml")
}

fn tiny() -> SftConfig {
    SftConfig::from_file(tiny_path()).expect("configs/sft-tiny.toml is valid")
}

fn run_in(dir: &Path) -> rlhf_lab::train::sft::SftSummary {
    let _g = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    run_sft(
        &tiny(),
        &SftOptions {
            out_dir: Some(dir.to_path_buf()),
            resume: ResumeMode::Fresh,
            ..Default::default()
        },
    )
    .expect("tiny SFT run")
}

fn latest_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoints/latest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["step"].as_u64()
}

fn spawn(dir: &Path, delay_ms: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args(["sft", "--quiet", "--config"])
        .arg(tiny_path())
        .arg("--out")
        .arg(dir)
        .args(["--step-delay-ms", &delay_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rlhf-lab binary starts")
}

/// Polls until `pred` holds (or the child exits, or 60 s pass).
fn wait_until(child: &mut std::process::Child, pred: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
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

#[test]
fn learns_is_deterministic_and_survives_sigkill() {
    let cfg = tiny();
    let max = cfg.optim.max_steps;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, k) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("killed"),
    );

    // (a) The loss decreases.
    let sa = run_in(&a);
    assert_eq!(sa.steps, max);
    let v0 = sa.metrics[0].val_loss.unwrap();
    assert!(
        sa.final_val_loss < v0 - 0.5,
        "validation loss {v0} -> {} did not drop",
        sa.final_val_loss
    );
    let train: Vec<f64> = sa.metrics.iter().filter_map(|r| r.train_loss).collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(mean(&train[train.len() - 10..]) < mean(&train[..10]) - 0.5);
    assert!((sa.final_val_ppl - sa.final_val_loss.exp()).abs() < 1e-9 * sa.final_val_ppl);

    // Run directory layout.
    for f in [
        "tokenizer.json",
        "metrics.csv",
        "manifest.json",
        "report.html",
        "checkpoints/latest.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let mut ckpts: Vec<String> = std::fs::read_dir(a.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    ckpts.sort();
    assert_eq!(ckpts, ["ckpt-00000040", "ckpt-00000060"], "keep the last 2");
    for f in [
        "model.safetensors",
        "config.json",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(
            a.join("checkpoints/ckpt-00000060").join(f).is_file(),
            "{f} missing"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "sft");
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["threads"], 1);
    assert!(manifest["finished_at"].is_string());
    assert_eq!(manifest["config"]["model"]["n_embd"], 32);
    assert_eq!(manifest["results"]["steps"], max);
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("Plotly.newPlot") && html.contains("validation perplexity"));
    assert!(
        !html.contains("<script src=\"https://cdn.plot.ly"),
        "plotly.js is inlined, the report works offline"
    );
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(
        csv.starts_with("step,tokens,lr,train_loss,grad_norm,val_loss,val_ppl\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 1 + max as usize);

    // (b) Same seed and config: bit-identical metrics.
    run_in(&b);
    assert_eq!(csv, std::fs::read_to_string(b.join("metrics.csv")).unwrap());

    // (c) SIGKILL after the first checkpoint, then at an arbitrary instant; the resumed run ends with
    // the same metrics as the uninterrupted one.
    let mut child = spawn(&k, 15);
    assert!(
        wait_until(&mut child, || latest_step(&k).is_some()),
        "no checkpoint appeared"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let first = latest_step(&k).unwrap();
    assert!(first < max, "the run finished before it could be killed");

    let mut child = spawn(&k, 15);
    // After the resumed run's first checkpoint, a pseudo-random 0–250 ms more: the kill lands inside a
    // step, an eval or a checkpoint write.
    assert!(wait_until(&mut child, || latest_step(&k).is_some_and(|s| s > first)));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    std::thread::sleep(Duration::from_millis(nanos % 250));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("from step {first}")), "{stderr}");

    let out = spawn(&k, 0).wait_with_output().unwrap();
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
    assert_eq!(
        csv,
        std::fs::read_to_string(k.join("metrics.csv")).unwrap(),
        "metrics after kill + resume differ from the uninterrupted run"
    );
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(k.join("manifest.json")).unwrap()).unwrap();
    assert!(!resumed["resumed_from"].as_array().unwrap().is_empty());
    assert!(!std::fs::read_dir(k.join("checkpoints")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".ckpt-")));

    // Rerunning the finished run resumes at the end and changes nothing.
    let out = spawn(&k, 0).wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(csv, std::fs::read_to_string(k.join("metrics.csv")).unwrap());

    // Resuming with a changed config is refused.
    let mut changed = tiny();
    changed.optim.lr *= 2.0;
    let _g = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    let err = run_sft(
        &changed,
        &SftOptions {
            out_dir: Some(a.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, RlhfError::Config { .. }), "{err}");
}

fn config_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match SftConfig::from_file(&path) {
        Err(RlhfError::Config {
            source_name,
            reason,
        }) => {
            assert!(source_name.ends_with("bad.toml"), "{source_name}");
            reason
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn bad_configs_name_the_file() {
    let good = std::fs::read_to_string(tiny_path()).unwrap();
    let unknown = good.replace("[model]\n", "[model]\nn_embed = 3\n");
    assert!(config_error(&unknown).contains("n_embed"));
    let neg_lr = good.replace("lr = 3e-3", "lr = -3e-3");
    assert!(config_error(&neg_lr).contains("lr"));
    let heads = good.replace("n_head = 2", "n_head = 3");
    assert!(config_error(&heads).contains("divisible"));
    let block = good.replace("block_size = 64", "block_size = 65");
    assert!(config_error(&block).contains("n_positions"));
    // A missing file is a config error too.
    assert!(matches!(
        SftConfig::from_file("/nonexistent/x.toml"),
        Err(RlhfError::Config { .. })
    ));
    // The CLI reports it and exits 2.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, heads).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args(["sft", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("divisible"),
        "{stderr}"
    );
}

/// `source = "preferences"`: SFT on prompt ‖ chosen of a TRL preference JSONL runs and learns.
#[test]
fn preference_source_trains_on_chosen_responses() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("prefs.jsonl");
    let pairs: Vec<rlhf_lab::data::PreferencePair> = (0..400)
        .map(|i| rlhf_lab::data::PreferencePair {
            prompt: format!("Review of film {i}:"),
            chosen: format!(" a warm, funny and moving film number {i}, with a great cast."),
            rejected: format!(" a dull film number {i}."),
            score_chosen: None,
            score_rejected: None,
        })
        .collect();
    rlhf_lab::data::write_preferences(&jsonl, &pairs).unwrap();
    let mut cfg = tiny();
    cfg.name = "sft-prefs".into();
    cfg.data.source = "preferences".into();
    cfg.data.path = Some(jsonl.clone());
    cfg.data.prompt_tokens = 0;
    cfg.optim.max_steps = 30;
    cfg.optim.warmup_steps = 3;
    cfg.eval_interval = 30;
    cfg.checkpoint_interval = 30;
    let _g = TORCH.lock().unwrap_or_else(|e| e.into_inner());
    let s = run_sft(
        &cfg,
        &SftOptions {
            out_dir: Some(dir.path().join("run")),
            resume: ResumeMode::Fresh,
            plotly_cdn: true,
            ..Default::default()
        },
    )
    .unwrap();
    let v0 = s.metrics[0].val_loss.unwrap();
    assert!(s.final_val_loss < v0 - 1.0, "{v0} -> {}", s.final_val_loss);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["data"][0]["sha256"],
        rlhf_lab::io::sha256_file(&jsonl).unwrap()
    );
    // A preference source without its file is a config error.
    let mut bad = tiny();
    bad.data.source = "preferences".into();
    assert!(bad.validate().is_err());
}
