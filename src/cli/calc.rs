//! `rlhf-lab calc <op>`: every primitive over JSON, so any stack can be cross-checked without Rust.
//!
//! Input: one JSON object (tensors as nested arrays, hyper-parameters as fields). A `preset` field (or
//! `--preset`) fills hyper-parameters that the object leaves out from [`Conventions::preset`]; explicit
//! fields win, and an explicit `null` turns an option off ([`Hp`]) — it never falls back to the preset.
//! Output: one JSON object, every number finite (a NaN/Inf computed from finite inputs is a
//! `non_finite_output` error). Unknown fields are errors. `mask` defaults to all ones.
//! The schema of each op is in the README (and `rlhf-lab calc --list`).

use crate::cli::json::{from_tensor, to_long, to_tensor};
use crate::core::advantages::{self, GaeConfig, GrpoConfig, MaskedSteps};
use crate::core::check;
use crate::core::conventions::Conventions;
use crate::core::dpo::{self, DpoConfig, DpoVariant, PairLogps};
use crate::core::experience::ppo_experience;
use crate::core::kl::{self, KlConfig, KlEstimator};
use crate::core::kl_shaping::{self, RewardShapingConfig, ScorePlacement};
use crate::core::logprobs;
use crate::core::masked::{self, EmptyRows, LossAgg, LossNorm, WhitenConfig, WhitenEps};
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
pub const OPS: [Op; 25] = [
    Op {
        name: "token-logprobs",
        what: "log-softmax of logits (B,T,V) / temperature gathered at labels (B,T)",
        run: op_token_logprobs,
    },
    Op {
        name: "sequence-logprobs",
        what: "per-row sum of token log-probs (B,T) over the mask, and the token count",
        run: op_sequence_logprobs,
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
        what: "masked whitening (shift_mean, unbiased, eps, eps_mode, scale, f32_stats)",
        run: op_masked_mean,
    },
    Op {
        name: "aggregate",
        what: "reduce a per-token loss (token-mean, seq-mean-token-*), global-batch normalisation",
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
        name: "total-loss",
        what: "pg_loss + vf_coef·vf_loss − entropy_coef·entropy",
        run: op_total_loss,
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
// Parameter structs. Tensors are `Value`; hyper-parameters are [`Hp`]s.

/// A hyper-parameter field: left out → the preset's value (or the op's default); `null` → off (a clip or
/// clamp → none, an ε or a coefficient → 0, a boolean → false), or an error for a setting that has no
/// "off" (γ, λ, β, T, the clip range, an estimator, an aggregation): `null` never means "the preset's".
#[derive(Debug, Clone, Copy, Default)]
enum Hp<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Hp<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Hp::Null,
            Some(v) => Hp::Set(v),
        })
    }
}

impl<T> Hp<T> {
    /// An option that can be off (`Option` in the library): `null` → `None`.
    fn opt(self, preset: Option<T>) -> Option<T> {
        match self {
            Hp::Absent => preset,
            Hp::Null => None,
            Hp::Set(v) => Some(v),
        }
    }
    /// A setting whose "off" is the value `off` (0 for an ε or a coefficient, false for a switch).
    fn or_off(self, preset: T, off: T) -> T {
        match self {
            Hp::Absent => preset,
            Hp::Null => off,
            Hp::Set(v) => v,
        }
    }
    /// A setting with no "off": `null` is an error naming it.
    fn req(self, arg: &str, preset: T) -> Result<T> {
        match self {
            Hp::Absent => Ok(preset),
            Hp::Null => Err(RlhfError::invalid(
                arg,
                "cannot be null: this setting has no `off` (leave the field out to take the preset's value)",
            )),
            Hp::Set(v) => Ok(v),
        }
    }
}

impl Hp<bool> {
    /// A switch: `null` → false.
    fn switch(self, preset: bool) -> bool {
        self.or_off(preset, false)
    }
}

impl Hp<f64> {
    /// An ε or a coefficient: `null` → 0.
    fn zero_off(self, preset: f64) -> f64 {
        self.or_off(preset, 0.0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLogprobs {
    logits: Value,
    labels: Value,
    mask: Option<Value>,
    /// Sampling temperature T (default 1): log-probs of `logits / (T + temperature_eps)`.
    #[serde(default)]
    temperature: Hp<f64>,
    #[serde(default)]
    temperature_eps: Hp<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceLogprobs {
    token_log_probs: Value,
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
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    #[serde(default)]
    mean_eps: Hp<f64>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kl {
    log_probs: Value,
    ref_log_probs: Value,
    mask: Option<Value>,
    #[serde(default)]
    estimator: Hp<KlEstimator>,
    #[serde(default)]
    log_ratio_clamp: Hp<f64>,
    #[serde(default)]
    value_clamp: Hp<f64>,
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
    #[serde(default)]
    kl_coef: Hp<f64>,
    #[serde(default)]
    estimator: Hp<KlEstimator>,
    #[serde(default)]
    log_ratio_clamp: Hp<f64>,
    #[serde(default)]
    value_clamp: Hp<f64>,
    #[serde(default)]
    score_placement: Hp<ScorePlacement>,
    #[serde(default)]
    score_clip: Hp<f64>,
    #[serde(default)]
    kl_on_score_slot: Hp<bool>,
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Masked {
    values: Value,
    mask: Option<Value>,
    dim: Option<i64>,
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    #[serde(default)]
    unbiased: Hp<bool>,
    #[serde(default)]
    shift_mean: Hp<bool>,
    #[serde(default)]
    eps: Hp<f64>,
    #[serde(default)]
    eps_mode: Hp<WhitenEps>,
    /// Whitening divides by the std (the preset's `whiten_std`).
    #[serde(default)]
    scale: Hp<bool>,
    #[serde(default)]
    f32_stats: Hp<bool>,
    #[serde(default)]
    mean_eps: Hp<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

/// The [`LossNorm`] fields, shared by `aggregate`, `ppo-policy-loss` and `ppo-value-loss`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NormIn {
    #[serde(default)]
    mean_eps: Hp<f64>,
    #[serde(default)]
    seq_mean_eps: Hp<f64>,
    #[serde(default)]
    dp_size: Hp<u32>,
    #[serde(default)]
    batch_num_tokens: Hp<u64>,
    #[serde(default)]
    global_batch_size: Hp<u64>,
    #[serde(default)]
    loss_scale_factor: Hp<f64>,
}

impl NormIn {
    fn resolve(self, c: &Conventions) -> Result<LossNorm> {
        let d = c.loss_norm();
        Ok(LossNorm {
            mean_eps: self.mean_eps.zero_off(d.mean_eps),
            seq_mean_eps: self.seq_mean_eps.zero_off(d.seq_mean_eps),
            dp_size: self.dp_size.req("dp_size", d.dp_size)?,
            batch_num_tokens: self.batch_num_tokens.opt(d.batch_num_tokens),
            global_batch_size: self.global_batch_size.opt(d.global_batch_size),
            loss_scale_factor: self.loss_scale_factor.opt(d.loss_scale_factor),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Aggregate {
    loss: Value,
    mask: Option<Value>,
    #[serde(default)]
    agg: Hp<LossAgg>,
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    #[serde(flatten)]
    norm: NormIn,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Returns {
    rewards: Value,
    values: Option<Value>,
    mask: Option<Value>,
    #[serde(default)]
    gamma: Hp<f64>,
    #[serde(default)]
    lam: Hp<f64>,
    #[serde(default)]
    masked_steps: Hp<MaskedSteps>,
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
    #[serde(default)]
    clip_low: Hp<f64>,
    #[serde(default)]
    clip_high: Hp<f64>,
    #[serde(default)]
    dual_clip: Hp<f64>,
    #[serde(default)]
    log_ratio_clamp: Hp<f64>,
    #[serde(default)]
    agg: Hp<LossAgg>,
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    #[serde(default)]
    approx_kl: Hp<KlEstimator>,
    #[serde(default)]
    approx_kl_unclamped: Hp<bool>,
    #[serde(flatten)]
    norm: NormIn,
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
    #[serde(default)]
    clip: Hp<f64>,
    #[serde(default)]
    agg: Hp<LossAgg>,
    #[serde(default)]
    empty_rows: Hp<EmptyRows>,
    #[serde(flatten)]
    norm: NormIn,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TotalLoss {
    pg_loss: Value,
    vf_loss: Value,
    entropy: Option<Value>,
    #[serde(default)]
    vf_coef: Hp<f64>,
    #[serde(default)]
    entropy_coef: Hp<f64>,
    dtype: Option<String>,
    preset: Option<String>,
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
    #[serde(default)]
    center_coef: Hp<f64>,
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
    #[serde(default)]
    beta: Hp<f64>,
    #[serde(default)]
    variant: Hp<DpoVariant>,
    #[serde(default)]
    label_smoothing: Hp<f64>,
    #[serde(default)]
    ipo_length_normalize: Hp<bool>,
    #[serde(default)]
    alpha: Hp<f64>,
    dtype: Option<String>,
    preset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    scores: Value,
    #[serde(default)]
    scale_by_std: Hp<bool>,
    #[serde(default)]
    unbiased_std: Hp<bool>,
    #[serde(default)]
    eps: Hp<f64>,
    #[serde(default)]
    singleton_as_unit: Hp<bool>,
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

/// Run one op on a JSON object and return the JSON result. Every number of the result is finite.
pub fn run(op: &str, input: Value) -> Result<Value> {
    if !input.is_object() {
        return Err(RlhfError::invalid("input", "expected a JSON object"));
    }
    let out = match OPS.iter().find(|o| o.name == op) {
        Some(o) => (o.run)(op, input)?,
        None => {
            return Err(RlhfError::invalid(
                "op",
                format!(
                    "unknown op `{op}`; known: {}",
                    OPS.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    finite_json("", &out)?;
    Ok(out)
}

/// The last guard of the JSON interface: a NaN/±Inf in an output (written as `"NaN"`/`"Infinity"` by
/// [`from_tensor`]) is a `non_finite_output` error naming the output, never printed.
fn finite_json(path: &str, v: &Value) -> Result<()> {
    let count = |v: &Value| -> i64 {
        fn walk(v: &Value, n: &mut i64) {
            match v {
                Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                    *n += 1
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, n)),
                _ => {}
            }
        }
        let mut n = 0;
        walk(v, &mut n);
        n
    };
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                finite_json(&p, x)?;
            }
            Ok(())
        }
        other => match count(other) {
            0 => Ok(()),
            n => Err(RlhfError::NonFiniteOutput {
                arg: path.into(),
                count: n,
            }),
        },
    }
}

/// `token-logprobs`.
fn op_token_logprobs(op: &str, input: Value) -> Result<Value> {
    let p: TokenLogprobs = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let logits = t("logits", &p.logits, kind_of(&p.dtype)?)?;
    let labels = to_long("labels", &p.labels)?;
    let mask = match &p.mask {
        Some(m) => to_tensor("mask", m, Kind::Double)?,
        None => labels.ones_like(),
    };
    let temperature = p.temperature.req("temperature", 1.0)?;
    let temperature_eps = p.temperature_eps.zero_off(c.temperature_eps);
    check::positive("temperature", temperature)?;
    check::non_negative("temperature_eps", temperature_eps)?;
    let lp = logprobs::token_log_probs_at(&logits, &labels, &mask, temperature + temperature_eps)?;
    Ok(json!({ "log_probs": from_tensor(&lp) }))
}

/// `sequence-logprobs`.
fn op_sequence_logprobs(op: &str, input: Value) -> Result<Value> {
    let p: SequenceLogprobs = parse(op, input)?;
    conventions(&p.preset)?;
    let lp = t("token_log_probs", &p.token_log_probs, kind_of(&p.dtype)?)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let (sum, count) = logprobs::sequence_log_probs(&lp, &mask)?;
    Ok(json!({ "sum": from_tensor(&sum), "count": from_tensor(&count) }))
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
    let empty = p.empty_rows.req("empty_rows", c.empty_rows)?;
    let mean = masked::masked_mean_eps(&h, &mask, None, empty, p.mean_eps.zero_off(c.mean_eps))?;
    Ok(json!({ "entropy": from_tensor(&h), "mean": scalar(&mean) }))
}

fn kl_config(
    c: &Conventions,
    estimator: Hp<KlEstimator>,
    log_ratio_clamp: Hp<f64>,
    value_clamp: Hp<f64>,
) -> Result<KlConfig> {
    Ok(KlConfig {
        estimator: estimator.req("estimator", c.kl_estimator)?,
        log_ratio_clamp: log_ratio_clamp.opt(c.kl_log_ratio_clamp),
        value_clamp: value_clamp.opt(c.kl_value_clamp),
    })
}

/// `kl`.
fn op_kl(op: &str, input: Value) -> Result<Value> {
    let p: Kl = parse(op, input)?;
    let c = conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let lp = t("log_probs", &p.log_probs, k)?;
    let rlp = t("ref_log_probs", &p.ref_log_probs, k)?;
    let mask = mask_or_ones(&p.mask, &lp)?;
    let cfg = kl_config(&c, p.estimator, p.log_ratio_clamp, p.value_clamp)?;
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
        kl_coef: p.kl_coef.zero_off(c.kl_coef),
        kl: kl_config(&c, p.estimator, p.log_ratio_clamp, p.value_clamp)?,
        score_placement: p
            .score_placement
            .req("score_placement", c.score_placement)?,
        score_clip: p.score_clip.opt(c.score_clip),
        kl_on_score_slot: p.kl_on_score_slot.switch(c.kl_on_score_slot),
        empty_rows: p.empty_rows.req("empty_rows", c.empty_rows)?,
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
    let unbiased = p.unbiased.switch(c.whiten_unbiased);
    let mean_eps = p.mean_eps.zero_off(c.mean_eps);
    let out = match op {
        "masked-mean" => masked::masked_mean_eps(
            &values,
            &mask,
            p.dim,
            p.empty_rows.req("empty_rows", c.empty_rows)?,
            mean_eps,
        )?,
        "masked-var" => masked::masked_var_eps(&values, &mask, unbiased, mean_eps)?,
        _ => masked::masked_whiten(
            &values,
            &mask,
            WhitenConfig {
                shift_mean: p.shift_mean.switch(true),
                unbiased,
                eps: p.eps.zero_off(c.whiten_eps),
                eps_mode: p.eps_mode.req("eps_mode", c.whiten_eps_mode)?,
                scale: p.scale.switch(c.whiten_std),
                mean_eps,
                f32_stats: p.f32_stats.switch(c.whiten_f32_stats),
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
        p.agg.req("agg", c.loss_agg)?,
        p.empty_rows.req("empty_rows", c.empty_rows)?,
        &p.norm.resolve(&c)?,
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
    let gamma = p.gamma.req("gamma", c.gamma)?;
    let mode = p.masked_steps.req("masked_steps", c.masked_steps)?;
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
            if p.values.is_some() || !matches!(p.lam, Hp::Absent) {
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
                lam: p.lam.req("lam", c.lam)?,
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
        clip_low: p.clip_low.req("clip_low", d.clip_low)?,
        clip_high: p.clip_high.req("clip_high", d.clip_high)?,
        dual_clip: p.dual_clip.opt(d.dual_clip),
        log_ratio_clamp: p.log_ratio_clamp.opt(d.log_ratio_clamp),
        agg: p.agg.req("agg", d.agg)?,
        empty_rows: p.empty_rows.req("empty_rows", d.empty_rows)?,
        approx_kl: p.approx_kl.req("approx_kl", d.approx_kl)?,
        approx_kl_unclamped: p.approx_kl_unclamped.switch(d.approx_kl_unclamped),
        norm: p.norm.resolve(&c)?,
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
        clip: p.clip.opt(d.clip),
        agg: p.agg.req("agg", d.agg)?,
        empty_rows: p.empty_rows.req("empty_rows", d.empty_rows)?,
        norm: p.norm.resolve(&c)?,
    };
    let o = ppo::value_loss(&v, &old, &ret, &mask, &cfg)?;
    Ok(
        json!({ "loss": scalar(&o.loss), "per_token": from_tensor(&o.per_token), "clipfrac": scalar(&o.clipfrac) }),
    )
}

/// `total-loss`.
fn op_total_loss(op: &str, input: Value) -> Result<Value> {
    let p: TotalLoss = parse(op, input)?;
    conventions(&p.preset)?;
    let k = kind_of(&p.dtype)?;
    let pg = t("pg_loss", &p.pg_loss, k)?;
    let vf = t("vf_loss", &p.vf_loss, k)?;
    let entropy = match &p.entropy {
        Some(e) => t("entropy", e, k)?,
        None => pg.zeros_like(),
    };
    let vf_coef = match p.vf_coef {
        Hp::Absent => return Err(RlhfError::invalid("vf_coef", "missing required field")),
        other => other.zero_off(0.0),
    };
    let loss = ppo::total_loss(&pg, &vf, &entropy, vf_coef, p.entropy_coef.zero_off(0.0))?;
    Ok(json!({ "loss": scalar(&loss) }))
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
        p.center_coef.zero_off(0.0),
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
            Ok(json!({ "loss": scalar(&dpo::unlikelihood_loss(&pc, &pr, p.alpha.zero_off(1.0))?) }))
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
            let beta = p.beta.req("beta", 0.1)?;
            let cfg = DpoConfig {
                beta,
                variant: p.variant.req("variant", DpoVariant::Sigmoid)?,
                label_smoothing: p.label_smoothing.zero_off(0.0),
                ipo_length_normalize: p.ipo_length_normalize.switch(c.ipo_length_normalize),
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
            scale_by_std: p.scale_by_std.switch(d.scale_by_std),
            unbiased_std: p.unbiased_std.switch(d.unbiased_std),
            eps: p.eps.zero_off(d.eps),
            singleton_as_unit: p.singleton_as_unit.switch(d.singleton_as_unit),
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
