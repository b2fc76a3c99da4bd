//! `rlhf-lab data`, `reward train|score` and `generate` end to end, on the fetched data and SmolLM2:
//! what a user types, what comes back, and a clear error (exit 2) for each way it can go wrong.

use serde_json::Value;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args(args)
        .output()
        .expect("spawn rlhf-lab")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One JSON object per stdout line.
fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn data_verifies_checksums_and_writes_stats_with_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = run(&["data", "--out", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("match their pinned sha256"),
        "{}",
        stdout(&o)
    );
    for f in ["data_stats.csv", "data_stats.json", "manifest.json"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["kind"], "data-stats");
    assert_eq!(m["data"].as_array().map(|a| a.len()), Some(4), "{m}");
}

#[test]
fn reward_train_then_score_orients_sentiment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = run(&["reward", "train", "--out", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("bow-logreg   accuracy 0.7903"), "{text}");
    assert!(text.contains("vader        accuracy 0.5790"), "{text}");
    let model = dir.path().join("model");
    let o = run(&[
        "reward",
        "score",
        "--model",
        model.to_str().unwrap(),
        "A gorgeous, moving film.",
        "Tedious and badly acted.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 2);
    for (row, sign) in rows.iter().zip([1.0, -1.0]) {
        for scorer in ["bow-logreg", "vader"] {
            let s = row[scorer].as_f64().unwrap();
            assert!(s * sign > 0.0, "{scorer} on {}: {s}", row["text"]);
        }
    }
}

#[test]
fn reward_score_without_a_model_says_how_to_make_one() {
    let o = run(&["reward", "score", "--model", "/nonexistent/model", "fine"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("/nonexistent/model") && e.contains("rlhf-lab reward train"),
        "{e}"
    );
}

#[test]
fn generate_greedy_with_smollm2_answers_paris() {
    let o = run(&[
        "generate",
        "--max-new-tokens",
        "12",
        "What is the capital of France?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 1);
    let response = rows[0]["response"].as_str().unwrap();
    assert!(response.contains("Paris"), "{response}");
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));
}

#[test]
fn generate_rejects_bad_settings_and_missing_runs() {
    let o = run(&["generate", "--top-p", "1.5", "hello"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("top_p"), "{}", stderr(&o));
    let o = run(&["generate", "--temperature=-1", "hello"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("temperature"), "{}", stderr(&o));
    let empty = tempfile::tempdir().unwrap();
    let o = run(&["generate", "--run", empty.path().to_str().unwrap(), "hello"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
    let o = run(&["generate", "--gguf", "/nonexistent.gguf", "hello"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent.gguf"), "{}", stderr(&o));
}
