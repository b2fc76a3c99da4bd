//! `rlhf-lab calc <op>`: every primitive over JSON, so any stack can be cross-checked without Rust.
//!
//! Input: one JSON object (tensors as nested arrays, hyper-parameters as fields). A `preset` field (or
//! `--preset`) fills hyper-parameters that the object leaves out from [`Conventions::preset`]; explicit
//! fields win. Output: one JSON object. Unknown fields are errors. `mask` defaults to all ones.
//! The schema of each op is in the README (and `rlhf-lab calc --list`).

use crate::cli::json::{from_tensor, to_long, to_tensor};
use crate::core::advantages::{self, GaeConfig, GrpoConfig, MaskedSteps};
use crate::core::conventions::Conventions;
use crate::core::dpo::{self, DpoConfig, DpoVariant, PairLogps};
use crate::core::experience::ppo_experience;
use crate::core::kl::{self, KlConfig, KlEstimator};
use crate::core::kl_shaping::{self, RewardShapingConfig, ScorePlacement};
use crate::core::logprobs;
use crate::core::masked::{self, EmptyRows, LossAgg, WhitenConfig, WhitenEps};
use crate::core::ppo::{
    self, AdaptiveKlController, FixedKlController, KlController, PolicyLossConfig, ValueLossConfig,
};
use crate::core::reward_model;
use crate::error::{Result, RlhfError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

/// One `calc` op: its name, a one-line description, and the function that runs it. `--list` and
/// [`run`] both read [`OPS`], so no op can be listed without being runnable, or the reverse.
pub struct Op {
    pub name: &'static str,
    pub what: &'static str,
    run: fn(&str, Value) -> Result<Value>,
}

/// The ops.
pub const OPS: [Op; 23] = [
    Op {
        name: "token-logprobs",
        what: "log-softmax of logits (B,T,V) gathered at labels (B,T)",
        run: op_token_logprobs,
    },
    Op {
        name: "entropy",
        what: "per-token entropy of logits (B,T,V) and its masked mean",
        run: op_entropy,
    },
    Op {
        name: "kl",
        what: "per-token and per-sequence KL estimate (k1/k2/k3/abs)",
        run: op_kl,
    },
    Op {
        name: "kl-rewards",
        what: "−kl_coef·KL per token plus the clipped score on the placement step",
        run: op_kl_rewards,
    },
    Op {
        name: "masked-mean",
        what: "masked mean over everything or along a dim",
        run: op_masked_mean,
    },
    Op {
        name: "masked-var",
        what: "masked variance (biased or unbiased)",
        run: op_masked_mean,
    },
    Op {
        name: "whiten",
        what: "masked whitening (shift_mean, unbiased, eps, eps_mode)",
        run: op_masked_mean,
    },
    Op {
        name: "aggregate",
        what: "reduce a per-token loss (token-mean, seq-mean-token-mean, seq-mean-token-sum)",
        run: op_aggregate,
    },
    Op {
        name: "returns",
        what: "discounted Monte-Carlo returns (rewards-to-go)",
        run: op_returns,
    },
    Op {
        name: "td",
        what: "TD(0) errors and targets",
        run: op_returns,
    },
    Op {
        name: "gae",
        what: "GAE(γ, λ) advantages and returns",
        run: op_returns,
    },
    Op {
        name: "ppo-policy-loss",
        what: "clipped surrogate loss (optional dual clip), clipfrac, approx-KL",
        run: op_ppo_policy_loss,
    },
    Op {
        name: "ppo-value-loss",
        what: "clipped value loss",
        run: op_ppo_value_loss,
    },
    Op {
        name: "kl-controller",
        what: "fixed / adaptive KL coefficient over a sequence of updates",
        run: op_kl_controller,
    },
    Op {
        name: "bt-pairwise",
        what: "Bradley–Terry pairwise loss with margin and centering, accuracy",
        run: op_bt_pairwise,
    },
    Op {
        name: "bt-kwise",
        what: "InstructGPT K-wise ranking loss over C(K,2) pairs",
        run: op_bt_kwise,
    },
    Op {
        name: "dpo",
        what: "DPO / cDPO / robust / IPO / hinge losses and implicit rewards",
        run: op_dpo,
    },
    Op {
        name: "preferred-ft",
        what: "NLL on the chosen responses",
        run: op_dpo,
    },
    Op {
        name: "unlikelihood",
        what: "NLL on chosen + α·unlikelihood on rejected",
        run: op_dpo,
    },
    Op {
        name: "grpo",
        what: "group-normalised advantages (G,K)",
        run: op_grpo,
    },
    Op {
        name: "rloo",
        what: "leave-one-out advantages (G,K)",
        run: op_grpo,
    },
    Op {
        name: "ppo-experience",
        what: "rewards → GAE → (whitened) advantages and returns under a preset",
        run: op_ppo_experience,
    },
    Op {
        name: "presets",
        what: "the convention presets, every field",
        run: op_presets,
    },
];

fn parse<T: DeserializeOwned>(op: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| RlhfError::invalid("input", format!("{op}: {e}")))
}

fn kind_of(dtype: &Option<String>) -> Result<Kind> {
    match dtype.as_deref() {
        None | Some("f64") | Some("float64") => Ok(Kind::Double),
        Some("f32") | Some("float32") => Ok(Kind::Float),
        Some(other) => Err(RlhfError::invalid(
            "dtype",
            format!("unknown dtype `{other}` (f32 or f64)"),
        )),
    }
}

fn t(arg: &str, v: &Value, kind: Kind) -> Result<Tensor> {
    to_tensor(arg, v, kind)
}

fn mask_or_ones(mask: &Option<Value>, like: &Tensor) -> Result<Tensor> {
    match mask {
        Some(m) => to_tensor("mask", m, Kind::Double),
        None => Ok(like.ones_like()),
    }
}

fn opt_t(arg: &str, v: &Option<Value>, kind: Kind) -> Result<Option<Tensor>> {
    v.as_ref().map(|x| to_tensor(arg, x, kind)).transpose()
}

fn scalar(x: &Tensor) -> Value {
    from_tensor(x)
}

// ---------------------------------------------------------------------------------------------------
// Parameter structs. Tensors are `Value`; optional hyper-parameters fall back to the preset.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLogprobs {
    logits: Value,
    labels: Value,
    mask: Option<Value>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entropy {
    logits: Value,
    mask: Option<Value>,
    dtype: Option<String>,
    empty_rows: Option<EmptyRows>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kl {
    log_probs: Value,
    ref_log_probs: Value,
    mask: Option<Value>,
    estimator: Option<KlEstimator>,
    log_ratio_clamp: Option<f64>,
    value_clamp: Option<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KlRewards {
    log_probs: Value,
    ref_log_probs: Value,
    mask: Option<Value>,
    scores: Value,
    kl_coef: Option<f64>,
    estimator: Option<KlEstimator>,
    log_ratio_clamp: Option<f64>,
    value_clamp: Option<f64>,
    score_placement: Option<ScorePlacement>,
    score_clip: Option<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Masked {
    values: Value,
    mask: Option<Value>,
    dim: Option<i64>,
    empty_rows: Option<EmptyRows>,
    unbiased: Option<bool>,
    shift_mean: Option<bool>,
    eps: Option<f64>,
    eps_mode: Option<WhitenEps>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Aggregate {
    loss: Value,
    mask: Option<Value>,
    agg: Option<LossAgg>,
    empty_rows: Option<EmptyRows>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Returns {
    rewards: Value,
    values: Option<Value>,
    mask: Option<Value>,
    gamma: Option<f64>,
    lam: Option<f64>,
    masked_steps: Option<MaskedSteps>,
    #[serde(rename = "impl")]
    implementation: Option<String>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyLoss {
    log_probs: Value,
    old_log_probs: Value,
    advantages: Value,
    mask: Option<Value>,
    clip_low: Option<f64>,
    clip_high: Option<f64>,
    /// `null` disables; absent takes the preset's.
    #[serde(default, deserialize_with = "some_nullable")]
    dual_clip: Option<Option<f64>>,
    #[serde(default, deserialize_with = "some_nullable")]
    log_ratio_clamp: Option<Option<f64>>,
    agg: Option<LossAgg>,
    empty_rows: Option<EmptyRows>,
    approx_kl: Option<KlEstimator>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueLoss {
    values: Value,
    old_values: Value,
    returns: Value,
    mask: Option<Value>,
    #[serde(default, deserialize_with = "some_nullable")]
    clip: Option<Option<f64>>,
    agg: Option<LossAgg>,
    empty_rows: Option<EmptyRows>,
    dtype: Option<String>,
    preset: Option<String>,
}

fn some_nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<f64>>, D::Error> {
    Ok(Some(Option::<f64>::deserialize(d)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KlCtl {
    kind: String,
    init: f64,
    target: Option<f64>,
    horizon: Option<f64>,
    /// `[[current_kl, n_steps], ...]`
    updates: Vec<(f64, u64)>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BtPairwise {
    chosen: Value,
    rejected: Value,
    margin: Option<Value>,
    center_coef: Option<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BtKwise {
    rewards: Value,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dpo {
    policy_chosen: Value,
    policy_rejected: Option<Value>,
    ref_chosen: Option<Value>,
    ref_rejected: Option<Value>,
    chosen_lengths: Option<Value>,
    rejected_lengths: Option<Value>,
    beta: Option<f64>,
    variant: Option<DpoVariant>,
    label_smoothing: Option<f64>,
    ipo_length_normalize: Option<bool>,
    alpha: Option<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    scores: Value,
    scale_by_std: Option<bool>,
    unbiased_std: Option<bool>,
    eps: Option<f64>,
    singleton_as_unit: Option<bool>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperienceIn {
    log_probs: Value,
    ref_log_probs: Value,
    values: Value,
    scores: Value,
    mask: Option<Value>,
    /// Any [`Conventions`] field to override, e.g. `{"gamma": 0.9}`.
    #[serde(default)]
    overrides: Map<String, Value>,
    dtype: Option<String>,
    preset: Option<String>,
}

fn conventions(preset: &Option<String>) -> Result<Conventions> {
    Conventions::preset(preset.as_deref().unwrap_or("rlhf-lab"))
}

fn required(arg: &str, v: &Option<Value>) -> Result<Value> {
    v.clone()
        .ok_or_else(|| RlhfError::invalid(arg, "missing required field"))
}

/// Run one op on a JSON object and return the JSON result.
pub fn run(op: &str, input: Value) -> Result<Value> {
    if !input.is_object() {
        return Err(RlhfError::invalid("input", "expected a JSON object"));
    }
    match OPS.iter().find(|o| o.name == op) {
        Some(o) => (o.run)(op, input),
        None => Err(RlhfError::invalid(
            "op",
            format!(
                "unknown op `{op}`; known: {}",
                OPS.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// `token-logprobs`.
fn op_token_logprobs(op: &str, input: Value) -> Result<Value> {
    let p: TokenLogprobs = parse(op, input)?;
    conventions(&p.preset)?;
    let logits = t("logits", &p.logits, kind_of(&p.dtype)?)?;
    let labels = to_long("labels", &p.labels)?;
    let mask = match &p.mask {
        Some(m) => to_tensor("mask", m, Kind::Double)?,
        None => labels.ones_like(),
    };
    Ok(json!({ "log_probs": from_tensor(&logprobs::token_log_probs(&logits, &labels, &mask)?) }))
}

/// `entropy`.
fn op_entropy(op: &str, input: Value) -> Result<Value> {
    let p: Entropy = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let logits = t("logits", &p.logits, kind_of(&p.dtype)?)?;
    let mask = match &p.mask {
        Some(m) => to_tensor("mask", m, Kind::Double)?,
        None => {
            let s = logits.size();
            Tensor::ones(
                &s[..s.len().saturating_sub(1)],
                (Kind::Double, tch::Device::Cpu),
            )
        }
    };
    let h = logprobs::entropy(&logits, &mask)?;
    let mean = masked::masked_mean_eps(
        &h,
        &mask,
        None,
        p.empty_rows.unwrap_or(c.empty_rows),
        c.mean_eps,
    )?;
    Ok(json!({ "entropy": from_tensor(&h), "mean": scalar(&mean) }))
}

/// `kl`.
fn op_kl(op: &str, input: Value) -> Result<Value> {
    let p: Kl = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let lp = t("log_probs", &p.log_probs, k)?;
    let rlp = t("ref_log_probs", &p.ref_log_probs, k)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let cfg = KlConfig {
        estimator: p.estimator.unwrap_or(c.kl_estimator),
        log_ratio_clamp: p.log_ratio_clamp.or(c.kl_log_ratio_clamp),
        value_clamp: p.value_clamp.or(c.kl_value_clamp),
    };
    let per_token = kl::kl_per_token(&lp, &rlp, &mask, &cfg)?;
    let per_seq = kl::kl_per_sequence(&lp, &rlp, &mask, &cfg)?;
    Ok(json!({ "per_token": from_tensor(&per_token), "per_sequence": from_tensor(&per_seq) }))
}

/// `kl-rewards`.
fn op_kl_rewards(op: &str, input: Value) -> Result<Value> {
    let p: KlRewards = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let lp = t("log_probs", &p.log_probs, k)?;
    let rlp = t("ref_log_probs", &p.ref_log_probs, k)?;
    let scores = t("scores", &p.scores, k)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let cfg = RewardShapingConfig {
        kl_coef: p.kl_coef.unwrap_or(c.kl_coef),
        kl: KlConfig {
            estimator: p.estimator.unwrap_or(c.kl_estimator),
            log_ratio_clamp: p.log_ratio_clamp.or(c.kl_log_ratio_clamp),
            value_clamp: p.value_clamp.or(c.kl_value_clamp),
        },
        score_placement: p.score_placement.unwrap_or(c.score_placement),
        score_clip: p.score_clip.or(c.score_clip),
        kl_on_score_slot: c.kl_on_score_slot,
        empty_rows: c.empty_rows,
    };
    let out = kl_shaping::kl_shaped_rewards(&lp, &rlp, &mask, &scores, &cfg)?;
    Ok(json!({
        "rewards": from_tensor(&out.rewards),
        "kl": from_tensor(&out.kl),
        "mask": from_tensor(&out.mask),
        "score_index": from_tensor(&out.score_index),
    }))
}

/// `masked-mean`, `masked-var`, `whiten`.
fn op_masked_mean(op: &str, input: Value) -> Result<Value> {
    let p: Masked = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let values = t("values", &p.values, kind_of(&p.dtype)?)?;
    let mask = mask_or_ones(&p.mask, &values)?;
    let unbiased = p.unbiased.unwrap_or(c.whiten_unbiased);
    let out = match op {
        "masked-mean" => masked::masked_mean_eps(
            &values,
            &mask,
            p.dim,
            p.empty_rows.unwrap_or(c.empty_rows),
            c.mean_eps,
        )?,
        "masked-var" => masked::masked_var_eps(&values, &mask, unbiased, c.mean_eps)?,
        _ => masked::masked_whiten(
            &values,
            &mask,
            WhitenConfig {
                shift_mean: p.shift_mean.unwrap_or(true),
                unbiased,
                eps: p.eps.unwrap_or(c.whiten_eps),
                eps_mode: p.eps_mode.unwrap_or(c.whiten_eps_mode),
                scale: c.whiten_std,
                mean_eps: c.mean_eps,
                f32_stats: c.whiten_f32_stats,
            },
        )?,
    };
    Ok(json!({ "result": from_tensor(&out) }))
}

/// `aggregate`.
fn op_aggregate(op: &str, input: Value) -> Result<Value> {
    let p: Aggregate = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let loss = t("loss", &p.loss, kind_of(&p.dtype)?)?;
    let mask = mask_or_ones(&p.mask, &loss)?;
    let out = masked::aggregate_norm(
        &loss,
        &mask,
        p.agg.unwrap_or(c.loss_agg),
        p.empty_rows.unwrap_or(c.empty_rows),
        &c.loss_norm(),
    )?;
    Ok(json!({ "result": scalar(&out) }))
}

/// `returns`, `td`, `gae`.
fn op_returns(op: &str, input: Value) -> Result<Value> {
    let p: Returns = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let rewards = t("rewards", &p.rewards, k)?;
    let mask = mask_or_ones(&p.mask, &rewards)?;
    let gamma = p.gamma.unwrap_or(c.gamma);
    let mode = p.masked_steps.unwrap_or(c.masked_steps);
    let vectorised = match p.implementation.as_deref() {
        None | Some("vectorised") | Some("vectorized") => true,
        Some("loop") => false,
        Some(other) => {
            return Err(RlhfError::invalid(
                "impl",
                format!("`{other}`: expected vectorised or loop"),
            ))
        }
    };
    match op {
        "returns" => {
            if p.values.is_some() || p.lam.is_some() {
                return Err(RlhfError::invalid(
                    "input",
                    "returns: takes no `values` or `lam`",
                ));
            }
            let r = if vectorised {
                advantages::discounted_returns(&rewards, &mask, gamma, mode)?
            } else {
                advantages::discounted_returns_loop(&rewards, &mask, gamma, mode)?
            };
            Ok(json!({ "returns": from_tensor(&r) }))
        }
        "td" => {
            let values = t("values", &required("values", &p.values)?, k)?;
            let o = advantages::td(&rewards, &values, &mask, gamma, mode)?;
            Ok(json!({ "deltas": from_tensor(&o.deltas), "targets": from_tensor(&o.targets) }))
        }
        _ => {
            let values = t("values", &required("values", &p.values)?, k)?;
            let cfg = GaeConfig {
                gamma,
                lam: p.lam.unwrap_or(c.lam),
                masked_steps: mode,
            };
            let o = if vectorised {
                advantages::gae(&rewards, &values, &mask, &cfg)?
            } else {
                advantages::gae_loop(&rewards, &values, &mask, &cfg)?
            };
            Ok(
                json!({ "advantages": from_tensor(&o.advantages), "returns": from_tensor(&o.returns) }),
            )
        }
    }
}

/// `ppo-policy-loss`.
fn op_ppo_policy_loss(op: &str, input: Value) -> Result<Value> {
    let p: PolicyLoss = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let lp = t("log_probs", &p.log_probs, k)?;
    let old = t("old_log_probs", &p.old_log_probs, k)?;
    let adv = t("advantages", &p.advantages, k)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let d = c.policy_loss_config();
    let cfg = PolicyLossConfig {
        clip_low: p.clip_low.unwrap_or(d.clip_low),
        clip_high: p.clip_high.unwrap_or(d.clip_high),
        dual_clip: p.dual_clip.unwrap_or(d.dual_clip),
        log_ratio_clamp: p.log_ratio_clamp.unwrap_or(d.log_ratio_clamp),
        agg: p.agg.unwrap_or(d.agg),
        empty_rows: p.empty_rows.unwrap_or(d.empty_rows),
        approx_kl: p.approx_kl.unwrap_or(d.approx_kl),
        approx_kl_unclamped: d.approx_kl_unclamped,
        norm: d.norm,
    };
    let o = ppo::policy_loss(&lp, &old, &adv, &mask, &cfg)?;
    Ok(json!({
        "loss": scalar(&o.loss), "per_token": from_tensor(&o.per_token), "ratio": from_tensor(&o.ratio),
        "clipfrac": scalar(&o.clipfrac), "clipfrac_lower": scalar(&o.clipfrac_lower), "approx_kl": scalar(&o.approx_kl),
    }))
}

/// `ppo-value-loss`.
fn op_ppo_value_loss(op: &str, input: Value) -> Result<Value> {
    let p: ValueLoss = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let v = t("values", &p.values, k)?;
    let old = t("old_values", &p.old_values, k)?;
    let ret = t("returns", &p.returns, k)?;
    let mask = mask_or_ones(&p.mask, &v)?;
    let d = c.value_loss_config();
    let cfg = ValueLossConfig {
        clip: p.clip.unwrap_or(d.clip),
        agg: p.agg.unwrap_or(d.agg),
        empty_rows: p.empty_rows.unwrap_or(d.empty_rows),
        norm: d.norm,
    };
    let o = ppo::value_loss(&v, &old, &ret, &mask, &cfg)?;
    Ok(
        json!({ "loss": scalar(&o.loss), "per_token": from_tensor(&o.per_token), "clipfrac": scalar(&o.clipfrac) }),
    )
}

/// `kl-controller`.
fn op_kl_controller(op: &str, input: Value) -> Result<Value> {
    let p: KlCtl = parse(op, input)?;
    conventions(&p.preset)?;
    let mut ctl: Box<dyn KlController> = match p.kind.as_str() {
        "fixed" => Box::new(FixedKlController::new(p.init)?),
        "adaptive" => Box::new(AdaptiveKlController::new(
            p.init,
            p.target
                .ok_or_else(|| RlhfError::invalid("target", "required for adaptive"))?,
            p.horizon
                .ok_or_else(|| RlhfError::invalid("horizon", "required for adaptive"))?,
        )?),
        other => {
            return Err(RlhfError::invalid(
                "kind",
                format!("`{other}`: expected fixed or adaptive"),
            ))
        }
    };
    let mut values = vec![ctl.value()];
    for (kl, n) in p.updates {
        ctl.update(kl, n)?;
        values.push(ctl.value());
    }
    Ok(json!({ "values": values }))
}

/// `bt-pairwise`.
fn op_bt_pairwise(op: &str, input: Value) -> Result<Value> {
    let p: BtPairwise = parse(op, input)?;
    conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let chosen = t("chosen", &p.chosen, k)?;
    let rejected = t("rejected", &p.rejected, k)?;
    let margin = opt_t("margin", &p.margin, k)?;
    let o = reward_model::pairwise_loss(
        &chosen,
        &rejected,
        margin.as_ref(),
        p.center_coef.unwrap_or(0.0),
    )?;
    Ok(
        json!({ "loss": scalar(&o.loss), "losses": from_tensor(&o.losses), "centering": scalar(&o.centering), "accuracy": scalar(&o.accuracy) }),
    )
}

/// `bt-kwise`.
fn op_bt_kwise(op: &str, input: Value) -> Result<Value> {
    let p: BtKwise = parse(op, input)?;
    conventions(&p.preset)?;
    let r = t("rewards", &p.rewards, kind_of(&p.dtype)?)?;
    Ok(json!({ "loss": scalar(&reward_model::kwise_loss(&r)?) }))
}

/// `dpo`, `preferred-ft`, `unlikelihood`.
fn op_dpo(op: &str, input: Value) -> Result<Value> {
    let p: Dpo = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let pc = t("policy_chosen", &p.policy_chosen, k)?;
    let cl = opt_t("chosen_lengths", &p.chosen_lengths, k)?;
    match op {
        "preferred-ft" => Ok(json!({ "loss": scalar(&dpo::preferred_ft_loss(&pc, cl.as_ref())?) })),
        "unlikelihood" => {
            let pr = t(
                "policy_rejected",
                &required("policy_rejected", &p.policy_rejected)?,
                k,
            )?;
            Ok(
                json!({ "loss": scalar(&dpo::unlikelihood_loss(&pc, &pr, p.alpha.unwrap_or(1.0))?) }),
            )
        }
        _ => {
            let pr = t(
                "policy_rejected",
                &required("policy_rejected", &p.policy_rejected)?,
                k,
            )?;
            let rc = t("ref_chosen", &required("ref_chosen", &p.ref_chosen)?, k)?;
            let rr = t(
                "ref_rejected",
                &required("ref_rejected", &p.ref_rejected)?,
                k,
            )?;
            let rl = opt_t("rejected_lengths", &p.rejected_lengths, k)?;
            let lp = PairLogps {
                policy_chosen: &pc,
                policy_rejected: &pr,
                ref_chosen: &rc,
                ref_rejected: &rr,
                chosen_lengths: cl.as_ref(),
                rejected_lengths: rl.as_ref(),
            };
            let beta = p.beta.unwrap_or(0.1);
            let cfg = DpoConfig {
                beta,
                variant: p.variant.unwrap_or(DpoVariant::Sigmoid),
                label_smoothing: p.label_smoothing.unwrap_or(0.0),
                ipo_length_normalize: p.ipo_length_normalize.unwrap_or(c.ipo_length_normalize),
            };
            let o = dpo::dpo_loss(&lp, &cfg)?;
            let w = dpo::dpo_gradient_weight(&lp, beta)?;
            Ok(json!({
                "loss": scalar(&o.loss), "losses": from_tensor(&o.losses),
                "chosen_rewards": from_tensor(&o.chosen_rewards), "rejected_rewards": from_tensor(&o.rejected_rewards),
                "reward_accuracy": scalar(&o.reward_accuracy), "reward_margin": scalar(&o.reward_margin),
                "gradient_weight": from_tensor(&w),
            }))
        }
    }
}

/// `grpo`, `rloo`.
fn op_grpo(op: &str, input: Value) -> Result<Value> {
    let p: Group = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let s = t("scores", &p.scores, kind_of(&p.dtype)?)?;
    let a = if op == "rloo" {
        advantages::rloo_advantages(&s)?
    } else {
        let d = c.grpo_config();
        let cfg = GrpoConfig {
            scale_by_std: p.scale_by_std.unwrap_or(d.scale_by_std),
            unbiased_std: p.unbiased_std.unwrap_or(d.unbiased_std),
            eps: p.eps.unwrap_or(d.eps),
            singleton_as_unit: p.singleton_as_unit.unwrap_or(d.singleton_as_unit),
        };
        advantages::grpo_advantages(&s, &cfg)?
    };
    Ok(json!({ "advantages": from_tensor(&a) }))
}

/// `ppo-experience`.
fn op_ppo_experience(op: &str, input: Value) -> Result<Value> {
    let p: ExperienceIn = parse(op, input)?;
    let base = conventions(&p.preset)?;
    let mut merged = serde_json::to_value(&base).map_err(|e| RlhfError::Torch(e.to_string()))?;
    for (key, v) in p.overrides {
        match merged.get_mut(&key) {
            Some(slot) => *slot = v,
            None => {
                return Err(RlhfError::invalid(
                    format!("overrides.{key}"),
                    "not a convention option",
                ))
            }
        }
    }
    let c: Conventions = parse("overrides", merged)?;
    let k = kind_of(&p.dtype)?;
    let lp = t("log_probs", &p.log_probs, k)?;
    let rlp = t("ref_log_probs", &p.ref_log_probs, k)?;
    let v = t("values", &p.values, k)?;
    let s = t("scores", &p.scores, k)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let e = ppo_experience(&lp, &rlp, &v, &s, &mask, &c)?;
    Ok(json!({
        "conventions": c, "rewards": from_tensor(&e.rewards), "reward_mask": from_tensor(&e.reward_mask),
        "kl": from_tensor(&e.kl), "advantages": from_tensor(&e.advantages), "returns": from_tensor(&e.returns),
    }))
}

/// `presets`.
fn op_presets(_op: &str, _input: Value) -> Result<Value> {
    Ok(json!({ "presets": Conventions::all() }))
}
