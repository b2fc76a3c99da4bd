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
            "sequence-logprobs",
            json!({ "token_log_probs": lp, "mask": m }),
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
            "total-loss",
            json!({ "pg_loss": 0.5, "vf_loss": 2.0, "entropy": 1.5, "vf_coef": 0.1, "entropy_coef": 0.01 }),
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

// ---------------------------------------------------------------------------------------------------
// Issue 14: an explicit `null` turns an option off and never falls back to the preset; finite inputs
// never produce a printed NaN/Infinity; `sequence-logprobs`, `total-loss` and the new options over JSON.

/// Every number of a JSON value, flattened.
fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

#[track_caller]
fn near(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

/// `op` under `preset` with `"field": null` (and with the flag `--field null`) gives `expected` at
/// `key`, and leaving the field out (the preset's value) gives something else.
#[track_caller]
fn null_is_off(op: &str, preset: &str, input: Value, field: &str, key: &str, expected: &[f64]) {
    let mut with_null = input.clone();
    with_null[field] = Value::Null;
    let out = ok(op, &["--preset", preset], with_null);
    near(&flat(&out[key]), expected);
    let flag = format!("--{}", field.replace('_', "-"));
    let out = ok(op, &["--preset", preset, &flag, "null"], input.clone());
    near(&flat(&out[key]), expected);
    let preset_out = ok(op, &["--preset", preset], input);
    assert_ne!(
        flat(&preset_out[key]),
        flat(&out[key]),
        "{op} --preset {preset}: `{field}: null` must not take the preset's value"
    );
}

fn kl_rewards_input(scores: f64) -> Value {
    json!({ "log_probs": [[-1.0, -1.0, 0.0]], "ref_log_probs": [[-1.5, -1.0, 0.0]], "mask": [[1, 1, 0]], "scores": [scores] })
}

#[test]
fn null_score_clip_is_no_clip() {
    // OpenRLHF clips the score to ±10; null: 70 lands unclipped. −0.01·KL = −0.005 on token 0.
    null_is_off(
        "kl-rewards",
        "openrlhf",
        kl_rewards_input(70.0),
        "score_clip",
        "rewards",
        &[-0.005, 70.0, 0.0],
    );
}

#[test]
fn null_value_clamp_is_no_clamp() {
    // OpenRLHF clamps the KL estimate to ±10; null: KL = [50, −60].
    let input =
        json!({ "log_probs": [[0.0, -60.0]], "ref_log_probs": [[-50.0, 0.0]], "scores": [1.0] });
    null_is_off(
        "kl-rewards",
        "openrlhf",
        input,
        "value_clamp",
        "rewards",
        &[-0.5, 0.6 + 1.0],
    );
    let kl = json!({ "log_probs": [[0.0, -60.0]], "ref_log_probs": [[-50.0, 0.0]] });
    null_is_off(
        "kl",
        "openrlhf",
        kl,
        "value_clamp",
        "per_token",
        &[50.0, -60.0],
    );
}

#[test]
fn null_log_ratio_clamp_is_no_clamp() {
    // verl clamps log π − log π_old to ±20 before exp; null: ratio e^30.
    let input = json!({ "log_probs": [[30.0, 0.0]], "old_log_probs": [[0.0, 0.0]], "advantages": [[1.0, 1.0]] });
    null_is_off(
        "ppo-policy-loss",
        "verl",
        input,
        "log_ratio_clamp",
        "ratio",
        &[30f64.exp(), 1.0],
    );
    // No preset clamps the KL log-ratio: null and absent agree (no clamp).
    let kl =
        json!({ "log_probs": [[0.0, -60.0]], "ref_log_probs": [[-50.0, 0.0]], "estimator": "k2" });
    let a = ok("kl", &["--log-ratio-clamp", "null"], kl.clone());
    assert_eq!(flat(&a["per_token"]), vec![1250.0, 1800.0]);
    assert_eq!(a, ok("kl", &[], kl));
}

#[test]
fn null_dual_clip_is_no_dual_clip() {
    // verl bounds −A·ratio by −A·3 for A < 0; null: e^5.
    let input = json!({ "log_probs": [[5.0, 0.0]], "old_log_probs": [[0.0, 0.0]], "advantages": [[-1.0, 1.0]] });
    null_is_off(
        "ppo-policy-loss",
        "verl",
        input,
        "dual_clip",
        "per_token",
        &[5f64.exp(), -1.0],
    );
}

#[test]
fn null_value_clip_is_no_clip() {
    // Value clip 0.2: max((1 − 2)², (0.2 − 2)²) = 3.24; null: ½·1.
    let input = json!({ "values": [[1.0]], "old_values": [[0.0]], "returns": [[2.0]] });
    null_is_off("ppo-value-loss", "rlhf-lab", input, "clip", "loss", &[0.5]);
}

#[test]
fn null_switches_are_false() {
    // DeepSpeed-Chat's KL on the score slot: null → the slot carries the (clipped) score only.
    let ds = json!({ "log_probs": [[-1.0, -2.0, -0.5]], "ref_log_probs": [[-1.5, -2.0, -0.25]], "mask": [[1, 1, 0]], "scores": [7.0] });
    null_is_off(
        "kl-rewards",
        "deepspeed-chat",
        ds,
        "kl_on_score_slot",
        "rewards",
        &[-0.05, 0.0, 5.0],
    );
    // OpenRLHF's approx-KL from the raw log-ratio: null → from the clamped one, (−20 + 0.5) / 2.
    let pl = json!({ "log_probs": [[30.0, -0.5]], "old_log_probs": [[0.0, 0.0]], "advantages": [[-1.0, 1.0]] });
    null_is_off(
        "ppo-policy-loss",
        "openrlhf",
        pl,
        "approx_kl_unclamped",
        "approx_kl",
        &[-9.75],
    );
    // OpenRLHF's float32 whitening statistics: null → f64 statistics (biased variance, clamp-min).
    let x = [0.1, 0.2, 0.7];
    let mean = (0.1 + 0.2 + 0.7) / 3.0;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 3.0;
    let w: Vec<f64> = x.iter().map(|v| (v - mean) / var.sqrt()).collect();
    let input = json!({ "values": [x] });
    let out = ok(
        "whiten",
        &["--preset", "openrlhf", "--f32-stats", "null"],
        input.clone(),
    );
    for (a, b) in flat(&out["result"]).iter().zip(&w) {
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
    assert_ne!(out, ok("whiten", &["--preset", "openrlhf"], input));
    // TRL's IPO on per-token means: null → summed log-probs, h = 8: (8 − 1)² = 49.
    let ipo = json!({"policy_chosen":[-10],"policy_rejected":[-2],"ref_chosen":[-20],"ref_rejected":[-4],
                     "chosen_lengths":[10],"rejected_lengths":[2],"variant":"ipo","beta":0.5});
    null_is_off("dpo", "trl", ipo, "ipo_length_normalize", "loss", &[49.0]);
    // verl's group-of-one rule: null → a group of one is an error again.
    fails(
        "grpo",
        &["--preset", "verl", "--singleton-as-unit", "null"],
        json!({ "scores": [[3.0]] }),
        "invalid_argument",
        "scores",
    );
}

#[test]
fn null_epsilons_and_coefficients_are_zero() {
    // verl's masked-mean ε: null → the exact mean.
    null_is_off(
        "masked-mean",
        "verl",
        json!({ "values": [[1.0, 2.0, 3.0, 4.0]] }),
        "mean_eps",
        "result",
        &[2.5],
    );
    // OpenRLHF's row-count ε in seq-mean-token-mean: null → 3 / 2.
    let agg =
        json!({ "loss": [[1.0, 2.0, 3.0]], "mask": [[1, 1, 0]], "agg": "seq-mean-token-mean" });
    null_is_off(
        "aggregate",
        "openrlhf",
        agg,
        "seq_mean_eps",
        "result",
        &[1.5],
    );
    // TRL's temperature ε: null → logits / 1 exactly: log p(0) = 2 − log(e² + 1).
    let lp = json!({ "logits": [[[2.0, 0.0]]], "labels": [[0]] });
    null_is_off(
        "token-logprobs",
        "trl",
        lp,
        "temperature_eps",
        "log_probs",
        &[2.0 - (2f64.exp() + 1.0).ln()],
    );
    // The KL coefficient: null → no penalty.
    null_is_off(
        "kl-rewards",
        "openrlhf",
        kl_rewards_input(1.0),
        "kl_coef",
        "rewards",
        &[0.0, 1.0, 0.0],
    );
    // TRL's GRPO ε (1e-4): null → (r − mean) / std exactly.
    let h = 1.0 / 2f64.sqrt();
    null_is_off(
        "grpo",
        "trl",
        json!({ "scores": [[1.0, 3.0]] }),
        "eps",
        "advantages",
        &[-h, h],
    );
    // No preset sets a global-batch normaliser: null and absent agree.
    let loss = json!({ "loss": [[1.0, 2.0, 3.0]], "mask": [[1, 1, 0]] });
    for field in ["batch_num_tokens", "global_batch_size", "loss_scale_factor"] {
        let mut with_null = loss.clone();
        with_null[field] = Value::Null;
        assert_eq!(
            ok("aggregate", &[], with_null)["result"],
            json!(1.5),
            "{field}"
        );
    }
}

#[test]
fn null_on_a_setting_without_off_is_an_error() {
    let rv = json!({ "rewards": [[0.0, 1.0]], "values": [[0.0, 0.0]] });
    let lp = json!({ "log_probs": [[-1.0]], "ref_log_probs": [[-1.0]], "scores": [1.0] });
    let pl = json!({ "log_probs": [[-1.0]], "old_log_probs": [[-1.0]], "advantages": [[1.0]] });
    let vl = json!({ "values": [[1.0]], "old_values": [[1.0]], "returns": [[1.0]] });
    let pair = json!({ "policy_chosen": [-1.0], "policy_rejected": [-2.0], "ref_chosen": [-1.0], "ref_rejected": [-2.0] });
    let cases: Vec<(&str, Value, &str)> = vec![
        ("gae", rv.clone(), "gamma"),
        ("gae", rv.clone(), "lam"),
        ("gae", rv, "masked_steps"),
        (
            "kl",
            json!({ "log_probs": [[-1.0]], "ref_log_probs": [[-1.0]] }),
            "estimator",
        ),
        ("kl-rewards", lp.clone(), "score_placement"),
        ("kl-rewards", lp, "empty_rows"),
        ("aggregate", json!({ "loss": [[1.0]] }), "agg"),
        ("aggregate", json!({ "loss": [[1.0]] }), "dp_size"),
        ("whiten", json!({ "values": [[1.0, 2.0]] }), "eps_mode"),
        ("ppo-policy-loss", pl.clone(), "clip_low"),
        ("ppo-policy-loss", pl.clone(), "clip_high"),
        ("ppo-policy-loss", pl, "approx_kl"),
        ("ppo-value-loss", vl, "agg"),
        ("dpo", pair.clone(), "beta"),
        ("dpo", pair, "variant"),
        (
            "token-logprobs",
            json!({ "logits": [[[2.0, 0.0]]], "labels": [[0]] }),
            "temperature",
        ),
    ];
    for (op, mut input, field) in cases {
        input[field] = Value::Null;
        fails(op, &["--preset", "verl"], input, "invalid_argument", field);
    }
}

#[test]
fn finite_inputs_never_print_infinity() {
    // 1e308 + 1e308 overflows: an error naming the output, exit 2, nothing on stdout.
    fails(
        "gae",
        &["--gamma", "1", "--lam", "1"],
        json!({ "rewards": [[1e308, 1e308]], "values": [[0, 0]] }),
        "non_finite_output",
        "advantages",
    );
    fails(
        "returns",
        &["--gamma", "1"],
        json!({ "rewards": [[1e308, 1e308]] }),
        "non_finite_output",
        "returns",
    );
    // float32: exp(100) overflows the importance ratio.
    fails(
        "ppo-policy-loss",
        &["--dtype", "f32"],
        json!({ "log_probs": [[100.0]], "old_log_probs": [[0.0]], "advantages": [[1.0]] }),
        "non_finite_output",
        "ratio",
    );
    fails(
        "total-loss",
        &[],
        json!({ "pg_loss": 1e308, "vf_loss": 1e308, "vf_coef": 10.0 }),
        "non_finite_output",
        "loss",
    );
}

#[test]
fn sequence_logprobs_and_total_loss() {
    let out = ok(
        "sequence-logprobs",
        &[],
        json!({ "token_log_probs": [[-1.0, -2.0, -3.0], [-0.5, "NaN", 0.0]], "mask": [[1, 1, 0], [1, 0, 0]] }),
    );
    assert_eq!(flat(&out["sum"]), vec![-3.0, -0.5]);
    assert_eq!(flat(&out["count"]), vec![2.0, 1.0]);
    // 0.5 + 0.1·2 − 0.01·1.5
    let out = ok(
        "total-loss",
        &[],
        json!({ "pg_loss": 0.5, "vf_loss": 2.0, "entropy": 1.5, "vf_coef": 0.1, "entropy_coef": 0.01 }),
    );
    near(&flat(&out["loss"]), &[0.5 + 0.1 * 2.0 - 0.01 * 1.5]);
    assert_eq!(
        ok(
            "total-loss",
            &[],
            json!({ "pg_loss": 0.5, "vf_loss": 2.0, "vf_coef": 0.5 })
        )["loss"],
        json!(1.5)
    );
    fails(
        "total-loss",
        &[],
        json!({ "pg_loss": 0.5, "vf_loss": 2.0 }),
        "invalid_argument",
        "vf_coef",
    );
    fails(
        "sequence-logprobs",
        &[],
        json!({ "token_log_probs": [[-1.0, "NaN"]] }),
        "non_finite",
        "token_log_probs",
    );
}

#[test]
fn new_options_over_json() {
    let loss =
        json!({ "loss": [[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]], "mask": [[1, 1, 0], [1, 0, 0]] });
    // Global batch: 8 / 10 · 4; seq-mean-token-mean over 8 sequences · 2: (1.5 + 5) / 8 · 2.
    let a = ok(
        "aggregate",
        &["--dp-size", "4", "--batch-num-tokens", "10"],
        loss.clone(),
    );
    assert_eq!(a["result"], json!(3.2));
    let a = ok(
        "aggregate",
        &[
            "--agg",
            "seq-mean-token-mean",
            "--dp-size",
            "2",
            "--global-batch-size",
            "8",
        ],
        loss.clone(),
    );
    assert_eq!(a["result"], json!(6.5 / 8.0 * 2.0));
    // verl seq-mean-token-sum-norm: (1 + 2 + 5) / T.
    let a = ok(
        "aggregate",
        &["--agg", "seq-mean-token-sum-norm"],
        loss.clone(),
    );
    near(&flat(&a["result"]), &[8.0 / 3.0]);
    fails(
        "aggregate",
        &["--dp-size", "2"],
        loss,
        "invalid_argument",
        "dp_size",
    );
    // Centring without scaling.
    let w = ok(
        "whiten",
        &["--scale", "false"],
        json!({ "values": [[1.0, 2.0, 3.0, 4.0]] }),
    );
    assert_eq!(flat(&w["result"]), vec![-1.5, -0.5, 0.5, 1.5]);
    // Temperature: logits / 2 = [1, 0].
    let lp = ok(
        "token-logprobs",
        &["--temperature", "2"],
        json!({ "logits": [[[2.0, 0.0]]], "labels": [[0]] }),
    );
    near(&flat(&lp["log_probs"]), &[1.0 - (1.0 + 1f64.exp()).ln()]);
    // verl's group of one: score / float32(1 + 1e-6).
    let g = ok("grpo", &["--preset", "verl"], json!({ "scores": [[3.0]] }));
    assert_eq!(
        flat(&g["advantages"]),
        vec![3.0 / ((1.0f32 + 1e-6f32) as f64)]
    );
    let g = ok(
        "grpo",
        &["--preset", "verl", "--scale-by-std", "false"],
        json!({ "scores": [[3.0]] }),
    );
    assert_eq!(flat(&g["advantages"]), vec![3.0]);
    // The policy loss under data parallelism.
    let pl = ok(
        "ppo-policy-loss",
        &["--dp-size", "2", "--batch-num-tokens", "4"],
        json!({ "log_probs": [[0.0, 0.0]], "old_log_probs": [[0.0, 0.0]], "advantages": [[-1.0, -2.0]] }),
    );
    assert_eq!(pl["loss"], json!(3.0 / 4.0 * 2.0));
}
