//! Golden tests against PyTorch: tests/golden/golden.json holds small random f64 inputs and the outputs
//! of straightforward PyTorch reference implementations (tests/golden/make_golden.py, seed 0). Every
//! rlhf_lab primitive is run on the same inputs and must agree to 1e-10 (max abs difference).
//!
//! Regenerate the data with `.venv/bin/python tests/golden/make_golden.py`.

mod common;

use common::v1;
use rlhf_lab::advantages::{
    discounted_returns, discounted_returns_loop, gae, gae_loop, grpo_advantages, rloo_advantages,
    GaeConfig, GrpoConfig, MaskedSteps,
};
use rlhf_lab::dpo::{dpo_loss, DpoConfig, DpoVariant, PairLogps};
use rlhf_lab::kl::{kl_per_sequence, kl_per_token, KlConfig, KlEstimator};
use rlhf_lab::kl_shaping::{kl_shaped_rewards, RewardShapingConfig, ScorePlacement};
use rlhf_lab::logprobs::{entropy, sequence_log_probs, token_log_probs};
use rlhf_lab::masked::{masked_mean, masked_var, masked_whiten, EmptyRows, LossAgg, WhitenConfig};
use rlhf_lab::ppo::{policy_loss, value_loss, PolicyLossConfig, ValueLossConfig};
use rlhf_lab::reward_model::{kwise_loss, pairwise_loss};
use serde_json::Value;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-10;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/golden.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("cannot read {path}: {e} (run tests/golden/make_golden.py)")
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {path}: {e}"))
    })
}

/// `golden[a][b]…`, panicking with the path when a key is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("golden.json: missing key `{}`", path[..=i].join(".")));
    }
    cur
}

/// Flatten a nested JSON array of numbers, returning (data, shape).
fn flatten(v: &Value) -> (Vec<f64>, Vec<i64>) {
    fn rec(v: &Value, depth: usize, data: &mut Vec<f64>, shape: &mut Vec<i64>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len() as i64);
                } else {
                    assert_eq!(
                        shape[depth],
                        items.len() as i64,
                        "golden.json: ragged array"
                    );
                }
                for it in items {
                    rec(it, depth + 1, data, shape);
                }
            }
            Value::Number(n) => data.push(n.as_f64().expect("golden.json: number")),
            other => panic!("golden.json: expected a number or an array, got {other}"),
        }
    }
    let (mut data, mut shape) = (Vec::new(), Vec::new());
    rec(v, 0, &mut data, &mut shape);
    (data, shape)
}

/// f64 tensor from a (nested) JSON array or a number (scalar).
fn f64t(v: &Value) -> Tensor {
    let (data, shape) = flatten(v);
    Tensor::from_slice(&data)
        .to_kind(Kind::Double)
        .reshape(&shape[..])
}

/// bool mask from a nested array of 0/1.
fn maskt(v: &Value) -> Tensor {
    f64t(v).ne(0)
}

/// int64 tensor (token ids, indices).
fn i64t(v: &Value) -> Tensor {
    let (data, shape) = flatten(v);
    let ints: Vec<i64> = data.iter().map(|x| *x as i64).collect();
    Tensor::from_slice(&ints).reshape(&shape[..])
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("golden.json: expected a number, got {v}"))
}

/// Assert `got` has the shape of the golden `want` and max |got − want| ≤ TOL.
#[track_caller]
fn check(case: &str, got: &Tensor, want: &Value) {
    let want_t = f64t(want);
    assert_eq!(
        got.size(),
        want_t.size(),
        "[{case}] shape: rlhf_lab {:?} vs PyTorch {:?}",
        got.size(),
        want_t.size()
    );
    let got_d = got.detach().to_kind(Kind::Double);
    let diff = if got_d.numel() == 0 {
        0.0
    } else {
        (&got_d - &want_t).abs().max().double_value(&[])
    };
    assert!(
        diff <= TOL,
        "[{case}] max |rlhf_lab − PyTorch| = {diff:e} > {TOL:e}\n  rlhf_lab: {:?}\n  PyTorch:  {:?}",
        v1(&got_d),
        v1(&want_t)
    );
}

#[test]
fn golden_has_torch_version() {
    let g = golden();
    let v = at(g, &["torch_version"]).as_str().unwrap_or("");
    assert!(!v.is_empty(), "golden.json records no torch_version");
    assert_eq!(at(g, &["dtype"]).as_str(), Some("float64"));
}

#[test]
fn logprobs_and_entropy() {
    let c = at(golden(), &["logprobs"]);
    let logits = f64t(at(c, &["inputs", "logits"]));
    let labels = i64t(at(c, &["inputs", "labels"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    let out = at(c, &["outputs"]);

    let lp = token_log_probs(&logits, &labels, &mask).expect("token_log_probs");
    check("token_log_probs", &lp, &out["token_log_probs"]);

    let h = entropy(&logits, &mask).expect("entropy");
    check("entropy", &h, &out["entropy"]);

    let (sum, n) = sequence_log_probs(&lp, &mask).expect("sequence_log_probs");
    check("sequence_log_probs.sum", &sum, &out["seq_logp_sum"]);
    check("sequence_log_probs.count", &n, &out["seq_count"]);
}

#[test]
fn kl_estimators() {
    let c = at(golden(), &["kl"]);
    let lp = f64t(at(c, &["inputs", "log_probs"]));
    let rf = f64t(at(c, &["inputs", "ref_log_probs"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    for (name, est) in [
        ("k1", KlEstimator::K1),
        ("k2", KlEstimator::K2),
        ("k3", KlEstimator::K3),
    ] {
        let cfg = KlConfig::new(est);
        let k = kl_per_token(&lp, &rf, &mask, &cfg).expect("kl_per_token");
        check(
            &format!("kl_per_token {name}"),
            &k,
            at(c, &["outputs", name]),
        );
        let ks = kl_per_sequence(&lp, &rf, &mask, &cfg).expect("kl_per_sequence");
        check(
            &format!("kl_per_sequence {name}"),
            &ks,
            at(c, &["outputs", &format!("{name}_per_sequence")]),
        );
    }
}

#[test]
fn kl_shaped_rewards_golden() {
    let c = at(golden(), &["kl_shaped_rewards"]);
    let lp = f64t(at(c, &["inputs", "log_probs"]));
    let rf = f64t(at(c, &["inputs", "ref_log_probs"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    let scores = f64t(at(c, &["inputs", "scores"]));
    let coef = num(at(c, &["config", "kl_coef"]));
    for (key, placement) in [
        ("last", ScorePlacement::LastResponseToken),
        ("after_last", ScorePlacement::AfterLastResponseToken),
    ] {
        let cfg = RewardShapingConfig {
            kl_coef: coef,
            kl: KlConfig::new(KlEstimator::K1),
            score_placement: placement,
            score_clip: None,
            kl_on_score_slot: false,
            empty_rows: rlhf_lab::masked::EmptyRows::Error,
        };
        let out = kl_shaped_rewards(&lp, &rf, &mask, &scores, &cfg).expect("kl_shaped_rewards");
        let want = at(c, &["outputs", key]);
        check(
            &format!("kl_shaped_rewards[{key}].rewards"),
            &out.rewards,
            &want["rewards"],
        );
        check(
            &format!("kl_shaped_rewards[{key}].mask"),
            &out.mask.to_kind(Kind::Double),
            &want["mask"],
        );
        check(
            &format!("kl_shaped_rewards[{key}].score_index"),
            &out.score_index.to_kind(Kind::Double),
            &want["score_index"],
        );
        // The exact index must match too (not only within tolerance).
        assert_eq!(
            Vec::<i64>::try_from(&out.score_index).unwrap(),
            Vec::<i64>::try_from(&i64t(&want["score_index"])).unwrap(),
            "[kl_shaped_rewards[{key}].score_index]"
        );
    }
}

#[test]
fn gae_and_returns() {
    let g = at(golden(), &["gae"]);
    let rewards = f64t(at(g, &["inputs", "rewards"]));
    let values = f64t(at(g, &["inputs", "values"]));
    let cases = at(g, &["cases"]).as_array().expect("gae.cases");
    assert!(!cases.is_empty());
    for c in cases {
        let mask = maskt(&c["mask"]);
        let (gamma, lam) = (num(&c["gamma"]), num(&c["lam"]));
        let mode = match c["mode"].as_str() {
            Some("zero") => MaskedSteps::Zero,
            Some("skip") => MaskedSteps::Skip,
            other => panic!("unknown mode {other:?}"),
        };
        let name = format!(
            "{} mode={:?} gamma={gamma} lam={lam}",
            c["mask_name"].as_str().unwrap_or("?"),
            mode
        );
        let cfg = GaeConfig {
            gamma,
            lam,
            masked_steps: mode,
        };
        let v = gae(&rewards, &values, &mask, &cfg).expect("gae");
        check(
            &format!("gae.advantages {name}"),
            &v.advantages,
            &c["advantages"],
        );
        check(&format!("gae.returns {name}"), &v.returns, &c["returns"]);
        let l = gae_loop(&rewards, &values, &mask, &cfg).expect("gae_loop");
        check(
            &format!("gae_loop.advantages {name}"),
            &l.advantages,
            &c["advantages"],
        );
        check(
            &format!("gae_loop.returns {name}"),
            &l.returns,
            &c["returns"],
        );

        let mc = discounted_returns(&rewards, &mask, gamma, mode).expect("discounted_returns");
        check(&format!("discounted_returns {name}"), &mc, &c["mc_returns"]);
        let mcl =
            discounted_returns_loop(&rewards, &mask, gamma, mode).expect("discounted_returns_loop");
        check(
            &format!("discounted_returns_loop {name}"),
            &mcl,
            &c["mc_returns"],
        );
    }
}

#[test]
fn masked_whiten_golden() {
    let c = at(golden(), &["whiten"]);
    let x = f64t(at(c, &["inputs", "values"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    let eps = num(at(c, &["config", "eps"]));
    let out = at(c, &["outputs"]);

    let mean = masked_mean(&x, &mask, None, EmptyRows::Error).expect("masked_mean");
    check("masked_mean", &mean, &out["mean"]);
    let var = masked_var(&x, &mask, true).expect("masked_var");
    check("masked_var(unbiased)", &var, &out["var_unbiased"]);
    let cfg = WhitenConfig {
        shift_mean: true,
        unbiased: true,
        eps,
        ..WhitenConfig::default()
    };
    let w = masked_whiten(&x, &mask, cfg).expect("masked_whiten");
    check("masked_whiten", &w, &out["whitened"]);
}

#[test]
fn ppo_policy_and_value_loss() {
    let c = at(golden(), &["policy_loss"]);
    let lp = f64t(at(c, &["inputs", "log_probs"]));
    let old = f64t(at(c, &["inputs", "old_log_probs"]));
    let adv = f64t(at(c, &["inputs", "advantages"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    let clip = num(at(c, &["config", "clip"]));
    let dual = num(at(c, &["config", "dual_clip"]));
    for (key, dual_clip) in [("no_dual_clip", None), ("dual_clip", Some(dual))] {
        let cfg = PolicyLossConfig {
            clip_low: clip,
            clip_high: clip,
            dual_clip,
            log_ratio_clamp: None,
            agg: LossAgg::TokenMean,
            empty_rows: EmptyRows::Error,
            ..PolicyLossConfig::default()
        };
        let out = policy_loss(&lp, &old, &adv, &mask, &cfg).expect("policy_loss");
        let want = at(c, &["outputs", key]);
        check(
            &format!("policy_loss[{key}].loss"),
            &out.loss,
            &want["loss"],
        );
        check(
            &format!("policy_loss[{key}].per_token"),
            &out.per_token,
            &want["per_token"],
        );
        check(
            &format!("policy_loss[{key}].clipfrac"),
            &out.clipfrac,
            &want["clipfrac"],
        );
        check(
            &format!("policy_loss[{key}].clipfrac_lower"),
            &out.clipfrac_lower,
            &want["clipfrac_lower"],
        );
    }
    // The data must make the dual clip matter, or the case above proves nothing.
    let a = num(at(c, &["outputs", "no_dual_clip", "loss"]));
    let b = num(at(c, &["outputs", "dual_clip", "loss"]));
    assert!((a - b).abs() > 1e-3, "golden data: dual clip is inactive");

    let c = at(golden(), &["value_loss"]);
    let v = f64t(at(c, &["inputs", "values"]));
    let vo = f64t(at(c, &["inputs", "old_values"]));
    let r = f64t(at(c, &["inputs", "returns"]));
    let mask = maskt(at(c, &["inputs", "mask"]));
    let cfg = ValueLossConfig {
        clip: Some(num(at(c, &["config", "clip"]))),
        agg: LossAgg::TokenMean,
        empty_rows: EmptyRows::Error,
        norm: Default::default(),
    };
    let out = value_loss(&v, &vo, &r, &mask, &cfg).expect("value_loss");
    check("value_loss.loss", &out.loss, at(c, &["outputs", "loss"]));
    check(
        "value_loss.per_token",
        &out.per_token,
        at(c, &["outputs", "per_token"]),
    );
    check(
        "value_loss.clipfrac",
        &out.clipfrac,
        at(c, &["outputs", "clipfrac"]),
    );
}

#[test]
fn dpo_family() {
    let c = at(golden(), &["dpo"]);
    let inp = at(c, &["inputs"]);
    let seq = at(c, &["sequence"]);
    let beta = num(at(c, &["config", "beta"]));

    // Sequence log-probs and token counts from the token-level inputs.
    let mut sums = Vec::new();
    let mut counts = Vec::new();
    for (tok, mask, key, len_key) in [
        (
            "policy_chosen_tokens",
            "chosen_mask",
            "policy_chosen",
            "chosen_lengths",
        ),
        (
            "policy_rejected_tokens",
            "rejected_mask",
            "policy_rejected",
            "rejected_lengths",
        ),
        (
            "ref_chosen_tokens",
            "chosen_mask",
            "ref_chosen",
            "chosen_lengths",
        ),
        (
            "ref_rejected_tokens",
            "rejected_mask",
            "ref_rejected",
            "rejected_lengths",
        ),
    ] {
        let (s, n) =
            sequence_log_probs(&f64t(&inp[tok]), &maskt(&inp[mask])).expect("sequence_log_probs");
        check(&format!("dpo sequence_log_probs {key}"), &s, &seq[key]);
        check(&format!("dpo token count {len_key}"), &n, &seq[len_key]);
        sums.push(s);
        counts.push(n);
    }
    let lp = PairLogps {
        policy_chosen: &sums[0],
        policy_rejected: &sums[1],
        ref_chosen: &sums[2],
        ref_rejected: &sums[3],
        chosen_lengths: Some(&counts[0]),
        rejected_lengths: Some(&counts[1]),
    };
    for case in at(c, &["cases"]).as_array().expect("dpo.cases") {
        let variant = match case["variant"].as_str() {
            Some("sigmoid") => DpoVariant::Sigmoid,
            Some("robust") => DpoVariant::Robust,
            Some("ipo") => DpoVariant::Ipo,
            Some("hinge") => DpoVariant::Hinge,
            other => panic!("unknown DPO variant {other:?}"),
        };
        let eps = num(&case["label_smoothing"]);
        let cfg = DpoConfig {
            beta,
            variant,
            label_smoothing: eps,
            ipo_length_normalize: case["ipo_length_normalize"].as_bool().unwrap_or(false),
        };
        let name = format!("dpo {variant:?} eps={eps} beta={beta}");
        let out = dpo_loss(&lp, &cfg).expect("dpo_loss");
        check(&format!("{name}: loss"), &out.loss, &case["loss"]);
        check(&format!("{name}: losses"), &out.losses, &case["losses"]);
        check(
            &format!("{name}: chosen_rewards"),
            &out.chosen_rewards,
            &case["chosen_rewards"],
        );
        check(
            &format!("{name}: rejected_rewards"),
            &out.rejected_rewards,
            &case["rejected_rewards"],
        );
    }
}

#[test]
fn bradley_terry_and_kwise() {
    let c = at(golden(), &["pairwise"]);
    let chosen = f64t(at(c, &["inputs", "chosen"]));
    let rejected = f64t(at(c, &["inputs", "rejected"]));
    let margin = f64t(at(c, &["inputs", "margin"]));
    for case in at(c, &["cases"]).as_array().expect("pairwise.cases") {
        let use_margin = case["use_margin"].as_bool().unwrap_or(false);
        let coef = num(&case["center_coef"]);
        let name = format!("pairwise margin={use_margin} center_coef={coef}");
        let out = pairwise_loss(
            &chosen,
            &rejected,
            if use_margin { Some(&margin) } else { None },
            coef,
        )
        .expect("pairwise_loss");
        check(&format!("{name}: loss"), &out.loss, &case["loss"]);
        check(&format!("{name}: losses"), &out.losses, &case["losses"]);
        check(
            &format!("{name}: centering"),
            &out.centering,
            &case["centering"],
        );
        check(
            &format!("{name}: accuracy"),
            &out.accuracy,
            &case["accuracy"],
        );
    }

    let c = at(golden(), &["kwise"]);
    let r = f64t(at(c, &["inputs", "rewards"]));
    let loss = kwise_loss(&r).expect("kwise_loss");
    check("kwise_loss K=4", &loss, at(c, &["outputs", "loss"]));
}

#[test]
fn group_baselines() {
    let c = at(golden(), &["group"]);
    let scores = f64t(at(c, &["inputs", "scores"]));
    let cfg = GrpoConfig {
        scale_by_std: true,
        unbiased_std: true,
        eps: num(at(c, &["config", "grpo_eps"])),
        singleton_as_unit: false,
    };
    let g = grpo_advantages(&scores, &cfg).expect("grpo_advantages");
    check("grpo_advantages", &g, at(c, &["outputs", "grpo"]));
    let r = rloo_advantages(&scores).expect("rloo_advantages");
    check("rloo_advantages", &r, at(c, &["outputs", "rloo"]));
}
