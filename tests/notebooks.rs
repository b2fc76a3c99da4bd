//! The committed notebooks are executed, clean and well-formed (the notebook issue's "committed executed"
//! check). Executing them is `kernel/run_notebooks.py`'s job (run by `make test`); this test only reads
//! the JSON, so it is instant and catches a notebook committed unexecuted, with an error, or with its
//! figures missing the static SVG that makes them readable on GitHub.

use serde_json::Value;
use std::path::{Path, PathBuf};

const EXPECTED: [&str; 7] = [
    "01-gae-worked-example.ipynb",
    "02-policy-gradient-to-ppo.ipynb",
    "03-reward-model-bradley-terry.ipynb",
    "04-dpo-from-rlhf.ipynb",
    "05-ppo-rlhf-loop.ipynb",
    "06-data-models-reward.ipynb",
    "07-dpo-sentiment-frontier.ipynb",
];

fn notebooks() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "ipynb")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    v.sort();
    v
}

fn source(cell: &Value) -> String {
    match &cell["source"] {
        Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Every problem of one notebook, as readable lines.
fn problems(path: &Path) -> Vec<String> {
    let nb: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut found = Vec::new();
    if nb["metadata"]["kernelspec"]["name"] != "rlhf-lab" {
        found.push("kernelspec is not rlhf-lab".to_string());
    }
    let cells = nb["cells"].as_array().unwrap();
    let code: Vec<&Value> = cells.iter().filter(|c| c["cell_type"] == "code").collect();
    if code.is_empty() {
        found.push("no code cells".into());
        return found;
    }
    if !source(code[0])
        .lines()
        .any(|l| l.trim_start().starts_with(":dep rlhf-lab"))
    {
        found.push("first code cell must be the `:dep rlhf-lab = …` prelude".into());
    }
    let mut last_count = 0;
    for (i, cell) in code.iter().enumerate() {
        let src = source(cell);
        let head = src
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>();
        if i > 0 && src.lines().any(|l| l.trim_start().starts_with(":dep")) {
            found.push(format!(
                "code cell {i} ({head}): `:dep` outside the first cell drops earlier variables"
            ));
        }
        match cell["execution_count"].as_i64() {
            None => found.push(format!("code cell {i} ({head}): not executed")),
            Some(n) if n <= last_count => found.push(format!(
                "code cell {i} ({head}): executed out of order ({n} after {last_count})"
            )),
            Some(n) => last_count = n,
        }
        for out in cell["outputs"].as_array().into_iter().flatten() {
            match out["output_type"].as_str() {
                Some("error") => found.push(format!(
                    "code cell {i} ({head}): error output {}",
                    out["evalue"]
                )),
                Some("stream") if out["name"] == "stderr" => {
                    let t = text(&out["text"]);
                    if t.contains("panicked at") || t.contains("error[") || t.starts_with("error:")
                    {
                        found.push(format!(
                            "code cell {i} ({head}): stderr carries an error: {t}"
                        ));
                    }
                }
                _ => {
                    let data = &out["data"];
                    if data.get("application/vnd.plotly.v1+json").is_some()
                        && data.get("image/svg+xml").is_none()
                    {
                        found.push(format!(
                            "code cell {i} ({head}): figure without its static SVG"
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn all_seven_notebooks_are_present() {
    let names: Vec<String> = notebooks()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in EXPECTED {
        assert!(
            names.iter().any(|n| n == want),
            "missing notebooks/{want} (have {names:?})"
        );
    }
}

#[test]
fn committed_notebooks_are_executed_without_errors() {
    let mut all = Vec::new();
    for p in notebooks() {
        for msg in problems(&p) {
            all.push(format!(
                "{}: {msg}",
                p.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        all.is_empty(),
        "run `make notebooks` and commit the result:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_checker_catches_what_it_claims_to() {
    let dir = std::env::temp_dir().join(format!("rlhf-lab-nbcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.ipynb");
    let nb = serde_json::json!({
        "metadata": {"kernelspec": {"name": "python3"}},
        "cells": [
            {"cell_type": "code", "source": "let x = 1;", "execution_count": null, "outputs": []},
            {"cell_type": "code", "source": ":dep foo = \"1\"", "execution_count": 2, "outputs": [
                {"output_type": "error", "ename": "Error", "evalue": "boom", "traceback": []}]},
            {"cell_type": "code", "source": "assert!(false)", "execution_count": 3, "outputs": [
                {"output_type": "stream", "name": "stderr", "text": "thread panicked at src/lib.rs"}]},
            {"cell_type": "code", "source": "show_plot(&p)", "execution_count": 4, "outputs": [
                {"output_type": "execute_result", "data": {"application/vnd.plotly.v1+json": {}}}]}
        ]
    });
    std::fs::write(&bad, nb.to_string()).unwrap();
    let found = problems(&bad);
    std::fs::remove_dir_all(&dir).ok();
    let joined = found.join("\n");
    for needle in [
        "kernelspec",
        "prelude",
        "not executed",
        "`:dep` outside",
        "error output",
        "panicked",
        "SVG",
    ] {
        assert!(
            joined.contains(needle),
            "checker missed {needle:?}:\n{joined}"
        );
    }
}
