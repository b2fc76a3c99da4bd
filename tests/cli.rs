//! `rlhf-lab calc` and `rlhf-lab demo` end to end: JSON in, JSON out, errors as JSON on stderr with a
//! non-zero exit.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
}

/// Run `rlhf-lab calc <op> <args>` with `input` on stdin → (exit code, stdout JSON, stderr JSON).
fn calc(op: &str, args: &[&str], input: &Value) -> (i32, Value, Value) {
    let mut child = bin()
        .arg("calc")
        .arg(op)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rlhf-lab");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let parse = |b: &[u8]| serde_json::from_slice(b).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        parse(&out.stdout),
        parse(&out.stderr),
    )
}

fn ok(op: &str, args: &[&str], input: Value) -> Value {
    let (code, out, err) = calc(op, args, &input);
    assert_eq!(code, 0, "{op} failed: {err}");
    out
}

#[track_caller]
fn fails(op: &str, args: &[&str], input: Value, kind: &str, argument: &str) {
    let (code, out, err) = calc(op, args, &input);
    assert_eq!(
        code, 2,
        "{op} should fail with exit 2, got {code}: {out} {err}"
    );
    assert_eq!(out, Value::Null, "nothing on stdout on error");
    assert_eq!(err["error"]["kind"], kind, "{err}");
    assert_eq!(err["error"]["argument"], argument, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains(argument));
}

fn close(a: &Value, b: &[f64], tol: f64) {
    let a: Vec<f64> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

const KL_REWARDS: [f64; 7] = [
    -4.6873e-04,
    -3.1257e-04,
    5.8591e-05,
    -5.5084e-03,
    -4.0741e-03,
    -5.5275e-03,
    -8.5999e-02,
];
const VALUES: [f64; 7] = [-0.2761, -2.3945, 0.1729, -0.0919, -0.0867, -0.0818, -0.0758];

#[test]
fn gae_worked_example_via_fields_and_via_flags() {
    let input = json!({ "rewards": [KL_REWARDS], "values": [VALUES], "gamma": 0.9, "lam": 0.95 });
    let out = ok("gae", &[], input);
    close(
        &out["returns"][0],
        &[
            -0.1525225, -0.0518143, -0.069336, -0.0763264, -0.0782649, -0.0824676, -0.085999,
        ],
        1e-6,
    );
    // The same with hyper-parameters as flags (both `--name value` and `--name=value`), and the loop impl.
    let out2 = ok(
        "gae",
        &["--gamma", "0.9", "--lam=0.95", "--impl", "loop"],
        json!({ "rewards": [KL_REWARDS], "values": [VALUES] }),
    );
    let first: Vec<f64> = out["returns"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    close(&out2["returns"][0], &first, 1e-15); // loop vs scan: summation order differs in the last bit
}

#[test]
fn input_file_and_list() {
    let dir = std::env::temp_dir().join(format!("rlhf-lab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("in.json");
    std::fs::write(
        &path,
        json!({ "rewards": [[1.0, 1.0, 1.0]], "gamma": 0.5 }).to_string(),
    )
    .unwrap();
    let out = bin()
        .args(["calc", "returns", "--input"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    close(&v["returns"][0], &[1.75, 1.5, 1.0], 1e-12);
    let list = bin().args(["calc", "--list"]).output().unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    for op in [
        "gae",
        "dpo",
        "ppo-policy-loss",
        "bt-kwise",
        "grpo",
        "kl-rewards",
        "ppo-experience",
    ] {
        assert!(text.contains(op), "--list misses {op}");
    }
}

#[test]
fn presets_fill_unspecified_hyper_parameters() {
    let input = json!({ "log_probs": [[-1.0, -1.0, 0.0]], "ref_log_probs": [[-1.5, -1.0, 0.0]], "mask": [[1, 1, 0]], "scores": [7.0] });
    // rlhf-lab default: score on the last response token; deepspeed-chat: one step later, clipped to 5.
    let a = ok("kl-rewards", &[], input.clone());
    close(&a["rewards"][0], &[-0.02 * 0.5, 7.0, 0.0], 1e-12);
    let b = ok("kl-rewards", &["--preset", "deepspeed-chat"], input.clone());
    close(&b["rewards"][0], &[-0.1 * 0.5, 0.0, 5.0], 1e-12);
    close(&b["mask"][0], &[1.0, 1.0, 1.0], 0.0);
    // An explicit field wins over the preset.
    let c = ok(
        "kl-rewards",
        &[
            "--preset",
            "deepspeed-chat",
            "--score-clip",
            "100",
            "--kl-coef",
            "0",
        ],
        input,
    );
    close(&c["rewards"][0], &[0.0, 0.0, 7.0], 1e-12);
    let presets = ok("presets", &[], json!({}));
    assert_eq!(presets["presets"].as_array().unwrap().len(), 5);
}

#[test]
fn every_op_runs_on_good_input() {
    let lp = json!([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]]);
    let lp2 = json!([[-1.1, -1.9, -0.6], [-0.2, -0.9, -1.0]]);
    let m = json!([[1, 1, 0], [1, 1, 1]]);
    let cases = vec![
        (
            "token-logprobs",
            json!({ "logits": [[[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]]], "labels": [[2, 0]] }),
        ),
        (
            "entropy",
            json!({ "logits": [[[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]]] }),
        ),
        (
            "kl",
            json!({ "log_probs": lp, "ref_log_probs": lp2, "mask": m, "estimator": "k3" }),
        ),
        (
            "kl-rewards",
            json!({ "log_probs": lp, "ref_log_probs": lp2, "mask": m, "scores": [1.0, -1.0] }),
        ),
        ("masked-mean", json!({ "values": lp, "mask": m, "dim": 1 })),
        (
            "masked-var",
            json!({ "values": lp, "mask": m, "unbiased": false }),
        ),
        ("whiten", json!({ "values": lp, "mask": m })),
        (
            "aggregate",
            json!({ "loss": lp, "mask": m, "agg": "seq-mean-token-sum" }),
        ),
        ("returns", json!({ "rewards": lp, "mask": m, "gamma": 0.9 })),
        ("td", json!({ "rewards": lp, "values": lp2, "mask": m })),
        (
            "gae",
            json!({ "rewards": lp, "values": lp2, "mask": m, "masked_steps": "skip" }),
        ),
        (
            "ppo-policy-loss",
            json!({ "log_probs": lp, "old_log_probs": lp2, "advantages": lp, "mask": m, "dual_clip": 3.0 }),
        ),
        (
            "ppo-value-loss",
            json!({ "values": lp, "old_values": lp2, "returns": lp, "mask": m }),
        ),
        (
            "kl-controller",
            json!({ "kind": "adaptive", "init": 0.2, "target": 6.0, "horizon": 10000, "updates": [[12.0, 256]] }),
        ),
        (
            "bt-pairwise",
            json!({ "chosen": [1.0, 2.0], "rejected": [0.5, 3.0], "margin": [0.1, 0.0], "center_coef": 0.01 }),
        ),
        ("bt-kwise", json!({ "rewards": [[3.0, 2.0, 1.0, 0.0]] })),
        (
            "dpo",
            json!({ "policy_chosen": [-10.0], "policy_rejected": [-12.0], "ref_chosen": [-11.0], "ref_rejected": [-11.5], "beta": 0.1, "variant": "robust", "label_smoothing": 0.1 }),
        ),
        (
            "preferred-ft",
            json!({ "policy_chosen": [-10.0, -4.0], "chosen_lengths": [5, 2] }),
        ),
        (
            "unlikelihood",
            json!({ "policy_chosen": [-10.0], "policy_rejected": [-0.5], "alpha": 0.5 }),
        ),
        ("grpo", json!({ "scores": [[1.0, 0.0, 0.5, 0.25]] })),
        ("rloo", json!({ "scores": [[1.0, 0.0, 0.5, 0.25]] })),
        (
            "ppo-experience",
            json!({ "log_probs": lp, "ref_log_probs": lp2, "values": lp2, "scores": [1.0, 2.0], "mask": m, "preset": "trl", "overrides": { "gamma": 0.99 } }),
        ),
        ("presets", json!({})),
    ];
    let ops: Vec<&str> = rlhf_lab::calc::OPS.iter().map(|o| o.name).collect();
    for op in &ops {
        assert!(
            cases.iter().any(|(c, _)| c == op),
            "no CLI case for op {op}"
        );
    }
    for (op, input) in cases {
        let out = ok(op, &[], input);
        assert!(out.is_object(), "{op}: {out}");
    }
    // Spot values: adaptive controller 0.2·(1 + 0.2·256/10000); K-wise on a perfectly ranked list.
    let ctl = ok(
        "kl-controller",
        &[],
        json!({ "kind": "adaptive", "init": 0.2, "target": 6.0, "horizon": 10000, "updates": [[12.0, 256]] }),
    );
    close(
        &ctl["values"],
        &[0.2, 0.2 * (1.0 + 0.2 * 256.0 / 10000.0)],
        1e-15,
    );
}

#[test]
fn bad_input_classes_are_json_errors() {
    let lp = json!([[-1.0, -2.0]]);
    fails(
        "gae",
        &[],
        json!({ "rewards": lp, "values": [[0.0]] }),
        "shape_mismatch",
        "values",
    );
    fails(
        "gae",
        &[],
        json!({ "rewards": lp, "values": lp, "mask": [[1, 2]] }),
        "non_binary_mask",
        "mask",
    );
    fails(
        "gae",
        &[],
        json!({ "rewards": [["NaN", 1.0]], "values": lp }),
        "non_finite",
        "rewards",
    );
    fails(
        "gae",
        &["--gamma", "1.5"],
        json!({ "rewards": lp, "values": lp }),
        "out_of_range",
        "gamma",
    );
    fails(
        "gae",
        &["--lam", "-0.5"],
        json!({ "rewards": lp, "values": lp }),
        "out_of_range",
        "lam",
    );
    fails(
        "masked-mean",
        &[],
        json!({ "values": lp, "mask": [[0, 0]], "dim": 1 }),
        "empty_rows",
        "mask",
    );
    let pair = json!({ "policy_chosen": [-1.0], "policy_rejected": [-2.0], "ref_chosen": [-1.0], "ref_rejected": [-2.0] });
    fails(
        "dpo",
        &["--beta", "0"],
        pair.clone(),
        "out_of_range",
        "beta",
    );
    fails(
        "dpo",
        &["--variant", "robust", "--label-smoothing", "0.5"],
        pair.clone(),
        "out_of_range",
        "label_smoothing",
    );
    fails(
        "dpo",
        &["--variant", "ipo"],
        pair,
        "invalid_argument",
        "chosen_lengths",
    );
    fails(
        "gae",
        &[],
        json!({ "rewards": [[1.0, 2.0], [3.0]], "values": lp }),
        "invalid_argument",
        "rewards",
    );
    fails(
        "gae",
        &[],
        json!({ "rewards": lp, "values": lp, "gama": 0.9 }),
        "invalid_argument",
        "input",
    );
    fails(
        "gae",
        &[],
        json!({ "values": lp }),
        "invalid_argument",
        "input",
    );
    fails("nope", &[], json!({}), "invalid_argument", "op");
    fails(
        "gae",
        &["--preset", "ray"],
        json!({ "rewards": lp, "values": lp }),
        "invalid_argument",
        "preset",
    );
    fails(
        "ppo-experience",
        &[],
        json!({ "log_probs": lp, "ref_log_probs": lp, "values": lp, "scores": [1.0], "overrides": { "gammma": 1 } }),
        "invalid_argument",
        "overrides.gammma",
    );
    // Not JSON at all.
    let mut child = bin()
        .args(["calc", "gae"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["argument"], "input");
}

#[test]
fn demo_prints_the_worked_example() {
    let out = bin().arg("demo").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("29 of 42 printed numbers agree"), "{text}");
    assert!(
        !text.contains("UNEXPECTED"),
        "an erratum without an explanation:\n{text}"
    );
    let js = bin().args(["demo", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v["comparisons"].as_array().unwrap().len(), 42);
}
