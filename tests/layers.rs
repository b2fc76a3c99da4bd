//! The layer order of `src/` (ARCHITECTURE.md): a module may use its own top-level module and the layers
//! below it, never one above. Reads every `.rs` file under `src/`, skips comments, and checks each
//! `crate::<module>` path against the table below.

use std::path::{Path, PathBuf};

/// Rank of each top-level module: lower layers first.
fn rank(module: &str) -> Option<u32> {
    Some(match module {
        "alloc" | "error" | "io" | "rng" | "Result" | "RlhfError" => 0,
        "core" | "advantages" | "check" | "conventions" | "dpo" | "experience" | "kl"
        | "kl_shaping" | "logprobs" | "masked" | "ppo" | "reward_model" => 1,
        "model" | "generate" | "tokenizer" | "data" => 2,
        "ground_truth" => 3,
        "train" => 4,
        "pipeline" => 5,
        "toy" | "worked_example" => 5,
        "cli" | "calc" => 6,
        "notebook" => 7,
        _ => return None,
    })
}

/// The canonical top-level module (root re-exports resolve to their home).
fn home(module: &str) -> &str {
    match module {
        "Result" | "RlhfError" => "error",
        "advantages" | "check" | "conventions" | "dpo" | "experience" | "kl" | "kl_shaping"
        | "logprobs" | "masked" | "ppo" | "reward_model" => "core",
        "generate" | "tokenizer" => "model",
        "worked_example" => "toy",
        "calc" => "cli",
        m => m,
    }
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<name>` references outside comments, as (line number, name).
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(j) => &line[..j],
            None => line,
        };
        let mut rest = code;
        while let Some(j) = rest.find("crate::") {
            let after = &rest[j + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.push((i + 1, name));
            }
            rest = after;
        }
    }
    refs
}

#[test]
fn no_module_uses_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue; // the crate root only declares and re-exports
        }
        let own =
            rank(&top).unwrap_or_else(|| panic!("{}: module `{top}` has no layer", rel.display()));
        let text = std::fs::read_to_string(f).unwrap();
        for (line, name) in crate_refs(&text) {
            let Some(r) = rank(&name) else {
                violations.push(format!(
                    "{}:{line}: `crate::{name}` has no layer",
                    rel.display()
                ));
                continue;
            };
            if r > own || (r == own && home(&name) != top && r != 0) {
                violations.push(format!(
                    "{}:{line}: `{top}` (layer {own}) uses `crate::{name}` (layer {r})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_use() {
    let refs = crate_refs("use crate::train::run; // crate::cli in a comment\n/// crate::toy\nlet x = crate::core::kl::x;");
    let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["train", "core"]);
    assert!(rank("train").unwrap() > rank("core").unwrap());
    assert_eq!(home("advantages"), "core");
}
