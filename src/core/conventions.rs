//! Named conventions: every choice on which RLHF stacks disagree, as one explicit option, plus presets
//! that reproduce TRL, DeepSpeed-Chat, OpenRLHF and verl (defaults of their PPO / DPO trainers, read from
//! their code: TRL `PPOTrainer` (v2, `sequence_lengths_p1`) and `DPOTrainer.dpo_loss`; DeepSpeed-Chat
//! `dschat/rlhf/ppo_trainer.py`; OpenRLHF `models/utils.py`, `models/loss.py`, `experience_maker.py`;
//! verl `trainer/ppo/core_algos.py`, `utils/torch_functional.py`, `workers/reward_manager/naive.py`).
//!
//! Behaviour that rlhf-lab deliberately does not reproduce (documented in the README, "Notes on the
//! table"): NaN from means over empty rows (TRL, DeepSpeed-Chat, OpenRLHF's token-level means) —
//! rlhf-lab raises `EmptyRows`, or gives 0 under `empty_rows = ignore`; non-finite outputs of finite
//! inputs — a `NonFiniteOutput` error.

use crate::core::advantages::{GaeConfig, GrpoConfig, MaskedSteps};
use crate::core::kl::{KlConfig, KlEstimator};
use crate::core::kl_shaping::{RewardShapingConfig, ScorePlacement};
use crate::core::masked::{EmptyRows, LossAgg, LossNorm, WhitenConfig, WhitenEps};
use crate::core::ppo::{PolicyLossConfig, ValueLossConfig};
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};

/// Every convention option in one place. Build from a preset with [`Conventions::preset`], then override
/// fields as needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conventions {
    pub name: String,
    // --- token log-probs ---
    /// Added to the sampling temperature before the logits are divided by it (TRL PPOTrainer
    /// `logits /= temperature + 1e-7`); see [`crate::core::logprobs::token_log_probs_at`].
    #[serde(default)]
    pub temperature_eps: f64,
    // --- KL-shaped rewards ---
    /// Default β of the KL penalty in the reward.
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Clamp of `log π − log π_ref` before the estimator.
    pub kl_log_ratio_clamp: Option<f64>,
    /// Clamp of the per-token KL estimate.
    pub kl_value_clamp: Option<f64>,
    pub score_placement: ScorePlacement,
    pub score_clip: Option<f64>,
    /// The after-last score slot carries its own KL term (DeepSpeed-Chat `compute_rewards`).
    #[serde(default)]
    pub kl_on_score_slot: bool,
    // --- returns / GAE ---
    pub gamma: f64,
    pub lam: f64,
    pub masked_steps: MaskedSteps,
    // --- advantage whitening ---
    pub whiten_advantages: bool,
    pub whiten_unbiased: bool,
    pub whiten_eps: f64,
    pub whiten_eps_mode: WhitenEps,
    /// Whitening divides by the std (false: centre only, OpenRLHF `no_std_norm`).
    #[serde(default = "yes")]
    pub whiten_std: bool,
    /// Whitening statistics on a float32 copy (OpenRLHF `.float()`).
    #[serde(default)]
    pub whiten_f32_stats: bool,
    // --- policy loss --- The stack conventions of `PolicyLossConfig`, declared here once more on
    // purpose: the printed presets are flat, with `empty_rows` (shared by both losses) after
    // `value_clip`, and `PolicyLossConfig` also carries per-call fields (`LossNorm`) that are no
    // convention; a `#[serde(flatten)]` of it would reorder that JSON or duplicate `empty_rows`.
    pub clip_low: f64,
    pub clip_high: f64,
    pub dual_clip: Option<f64>,
    pub log_ratio_clamp: Option<f64>,
    pub loss_agg: LossAgg,
    pub approx_kl: KlEstimator,
    /// approx-KL from the log-ratio before `log_ratio_clamp` (OpenRLHF).
    #[serde(default)]
    pub approx_kl_unclamped: bool,
    // --- value loss ---
    pub value_clip: Option<f64>,
    // --- reductions ---
    pub empty_rows: EmptyRows,
    /// ε added to masked-mean denominators (verl `masked_mean`: `Σ mask + 1e-8`).
    #[serde(default)]
    pub mean_eps: f64,
    /// ε added to each row's token count in seq-mean-token-mean (OpenRLHF, verl: `count + 1e-8`).
    #[serde(default)]
    pub seq_mean_eps: f64,
    // --- DPO ---
    /// IPO on per-token mean log-probs (TRL) or on summed log-probs (OpenRLHF).
    pub ipo_length_normalize: bool,
    // --- group baselines ---
    pub grpo_eps: f64,
    pub grpo_singleton_as_unit: bool,
}

fn yes() -> bool {
    true
}

/// The presets, by name.
pub const PRESETS: [&str; 5] = ["rlhf-lab", "trl", "deepspeed-chat", "openrlhf", "verl"];

impl Conventions {
    /// A named preset: `rlhf-lab` (seed documents), `trl`, `deepspeed-chat`, `openrlhf`, `verl`.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Conventions {
            name: "rlhf-lab".into(),
            temperature_eps: 0.0,
            kl_coef: 0.02,
            kl_estimator: KlEstimator::K1,
            kl_log_ratio_clamp: None,
            kl_value_clamp: None,
            score_placement: ScorePlacement::LastResponseToken,
            score_clip: None,
            kl_on_score_slot: false,
            gamma: 1.0,
            lam: 0.95,
            masked_steps: MaskedSteps::Zero,
            whiten_advantages: false,
            whiten_unbiased: true,
            whiten_eps: 1e-8,
            whiten_eps_mode: WhitenEps::Add,
            whiten_std: true,
            whiten_f32_stats: false,
            clip_low: 0.2,
            clip_high: 0.2,
            dual_clip: None,
            log_ratio_clamp: None,
            loss_agg: LossAgg::TokenMean,
            approx_kl: KlEstimator::K1,
            approx_kl_unclamped: false,
            value_clip: Some(0.2),
            empty_rows: EmptyRows::Error,
            mean_eps: 0.0,
            seq_mean_eps: 0.0,
            ipo_length_normalize: true,
            grpo_eps: 1e-6,
            grpo_singleton_as_unit: false,
        };
        let c = match name {
            "rlhf-lab" => base,
            // TRL PPOTrainer (v2): score after the last token, k1, whitened advantages, k2 approx-KL,
            // log-probs at `temperature + 1e-7`.
            "trl" => Conventions {
                name: "trl".into(),
                temperature_eps: 1e-7,
                kl_coef: 0.05,
                score_placement: ScorePlacement::AfterLastResponseToken,
                whiten_advantages: true,
                approx_kl: KlEstimator::K2,
                grpo_eps: 1e-4,
                ..base
            },
            // DeepSpeed-Chat step 3: kl_ctl 0.1, clip_reward_value 5, score at start + n (after the last
            // token) together with that slot's own KL term, no whitening.
            "deepspeed-chat" => Conventions {
                name: "deepspeed-chat".into(),
                kl_coef: 0.1,
                score_placement: ScorePlacement::AfterLastResponseToken,
                score_clip: Some(5.0),
                kl_on_score_slot: true,
                ..base
            },
            // OpenRLHF: KL estimate clamped to ±10, reward clip ±10, γ = λ = 1, biased whitening with
            // clamp(min = 1e-8) on float32 statistics, log-ratio clamped to ±20 before exp with
            // approx-KL from the raw log-ratio, sequence-level means over `count + 1e-8` skipping empty
            // rows, IPO on summed log-probs, group-norm eps 1e-9.
            "openrlhf" => Conventions {
                name: "openrlhf".into(),
                kl_coef: 0.01,
                kl_value_clamp: Some(10.0),
                score_clip: Some(10.0),
                lam: 1.0,
                whiten_advantages: true,
                whiten_unbiased: false,
                whiten_eps_mode: WhitenEps::ClampMin,
                whiten_f32_stats: true,
                log_ratio_clamp: Some(20.0),
                approx_kl_unclamped: true,
                empty_rows: EmptyRows::Ignore,
                seq_mean_eps: 1e-8,
                value_clip: Some(0.5),
                ipo_length_normalize: false,
                grpo_eps: 1e-9,
                ..base
            },
            // verl: skip masked steps in GAE, λ = 1, always-on dual clip c = 3, log-ratio clamp ±20,
            // value clip 0.5, masked-mean denominators + 1e-8 (so empty rows give 0 and are ignored),
            // singleton groups as unit.
            "verl" => Conventions {
                name: "verl".into(),
                kl_coef: 0.001,
                lam: 1.0,
                masked_steps: MaskedSteps::Skip,
                whiten_advantages: true,
                dual_clip: Some(3.0),
                log_ratio_clamp: Some(20.0),
                value_clip: Some(0.5),
                empty_rows: EmptyRows::Ignore,
                mean_eps: 1e-8,
                seq_mean_eps: 1e-8,
                grpo_singleton_as_unit: true,
                ..base
            },
            other => {
                return Err(RlhfError::invalid(
                    "preset",
                    format!("unknown preset `{other}`; known: {}", PRESETS.join(", ")),
                ))
            }
        };
        Ok(c)
    }

    /// Every preset, in [`PRESETS`] order.
    pub fn all() -> Vec<Conventions> {
        PRESETS
            .iter()
            .map(|n| Conventions::preset(n).expect("every name in PRESETS is a preset"))
            .collect()
    }

    pub fn kl_config(&self) -> KlConfig {
        KlConfig {
            estimator: self.kl_estimator,
            log_ratio_clamp: self.kl_log_ratio_clamp,
            value_clamp: self.kl_value_clamp,
        }
    }
    pub fn reward_config(&self) -> RewardShapingConfig {
        RewardShapingConfig {
            kl_coef: self.kl_coef,
            kl: self.kl_config(),
            score_placement: self.score_placement,
            score_clip: self.score_clip,
            kl_on_score_slot: self.kl_on_score_slot,
            empty_rows: self.empty_rows,
        }
    }
    pub fn gae_config(&self) -> GaeConfig {
        GaeConfig {
            gamma: self.gamma,
            lam: self.lam,
            masked_steps: self.masked_steps,
        }
    }
    pub fn whiten_config(&self) -> WhitenConfig {
        WhitenConfig {
            shift_mean: true,
            unbiased: self.whiten_unbiased,
            eps: self.whiten_eps,
            eps_mode: self.whiten_eps_mode,
            scale: self.whiten_std,
            mean_eps: self.mean_eps,
            f32_stats: self.whiten_f32_stats,
        }
    }
    /// The denominators of losses and statistics under these conventions (local batch; set
    /// `dp_size` / `batch_num_tokens` / `global_batch_size` on the result for data parallelism).
    pub fn loss_norm(&self) -> LossNorm {
        LossNorm {
            mean_eps: self.mean_eps,
            seq_mean_eps: self.seq_mean_eps,
            ..LossNorm::default()
        }
    }
    pub fn policy_loss_config(&self) -> PolicyLossConfig {
        PolicyLossConfig {
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            dual_clip: self.dual_clip,
            log_ratio_clamp: self.log_ratio_clamp,
            agg: self.loss_agg,
            empty_rows: self.empty_rows,
            approx_kl: self.approx_kl,
            approx_kl_unclamped: self.approx_kl_unclamped,
            norm: self.loss_norm(),
        }
    }
    pub fn value_loss_config(&self) -> ValueLossConfig {
        ValueLossConfig {
            clip: self.value_clip,
            agg: self.loss_agg,
            empty_rows: self.empty_rows,
            norm: self.loss_norm(),
        }
    }
    pub fn grpo_config(&self) -> GrpoConfig {
        GrpoConfig {
            scale_by_std: true,
            unbiased_std: true,
            eps: self.grpo_eps,
            singleton_as_unit: self.grpo_singleton_as_unit,
        }
    }
}

fn show_opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v}")).unwrap_or_else(|| "—".into())
}

fn show_eps(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:e}")
    }
}

fn show<T: Serialize>(x: &T) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The README's conventions table (one row per option, one column per preset), generated from the
/// presets so documentation cannot drift from code (a test compares it with README.md).
pub fn markdown_table() -> String {
    let ps = Conventions::all();
    type Row = (&'static str, &'static str, fn(&Conventions) -> String);
    let rows: [Row; 30] = [
        (
            "temperature_eps",
            "log-probs of logits / (T + ε) at sampling temperature T",
            |c| show_eps(c.temperature_eps),
        ),
        (
            "kl_coef",
            "default β of the KL penalty in the reward",
            |c| format!("{}", c.kl_coef),
        ),
        ("kl_estimator", "per-token KL in the reward", |c| {
            show(&c.kl_estimator)
        }),
        (
            "kl_log_ratio_clamp",
            "clamp of log π − log π_ref before the estimator",
            |c| show_opt(c.kl_log_ratio_clamp),
        ),
        (
            "kl_value_clamp",
            "clamp of the per-token KL estimate",
            |c| show_opt(c.kl_value_clamp),
        ),
        ("score_placement", "where the sequence score lands", |c| {
            show(&c.score_placement)
        }),
        ("score_clip", "score clipped to ±c", |c| {
            show_opt(c.score_clip)
        }),
        (
            "kl_on_score_slot",
            "the after-last score slot carries its own −β·KL",
            |c| format!("{}", c.kl_on_score_slot),
        ),
        ("gamma", "discount γ", |c| format!("{}", c.gamma)),
        ("lam", "GAE λ", |c| format!("{}", c.lam)),
        (
            "masked_steps",
            "masked steps in GAE: counted as zero / skipped",
            |c| show(&c.masked_steps),
        ),
        (
            "whiten_advantages",
            "advantages whitened over response tokens",
            |c| format!("{}", c.whiten_advantages),
        ),
        (
            "whiten_unbiased",
            "Bessel-corrected whitening variance",
            |c| format!("{}", c.whiten_unbiased),
        ),
        ("whiten_eps", "whitening ε", |c| {
            format!("{:e}", c.whiten_eps)
        }),
        (
            "whiten_eps_mode",
            "rsqrt(var + ε) / rsqrt(max(var, ε))",
            |c| show(&c.whiten_eps_mode),
        ),
        (
            "whiten_std",
            "whitening divides by the std (false: centre only)",
            |c| format!("{}", c.whiten_std),
        ),
        (
            "whiten_f32_stats",
            "whitening mean and std from a float32 copy",
            |c| format!("{}", c.whiten_f32_stats),
        ),
        (
            "clip_low / clip_high",
            "PPO ratio clip ε_low / ε_high",
            |c| format!("{} / {}", c.clip_low, c.clip_high),
        ),
        ("dual_clip", "dual-clip constant c (A < 0)", |c| {
            show_opt(c.dual_clip)
        }),
        (
            "log_ratio_clamp",
            "clamp of log π − log π_old before exp",
            |c| show_opt(c.log_ratio_clamp),
        ),
        ("loss_agg", "loss aggregation", |c| show(&c.loss_agg)),
        ("approx_kl", "estimator reported as approx-KL", |c| {
            show(&c.approx_kl)
        }),
        (
            "approx_kl_unclamped",
            "approx-KL from the log-ratio before log_ratio_clamp",
            |c| format!("{}", c.approx_kl_unclamped),
        ),
        ("value_clip", "value-prediction clip ±c", |c| {
            show_opt(c.value_clip)
        }),
        ("empty_rows", "mean over a fully-masked row", |c| {
            show(&c.empty_rows)
        }),
        (
            "mean_eps",
            "ε in masked-mean denominators Σ mask + ε",
            |c| show_eps(c.mean_eps),
        ),
        (
            "seq_mean_eps",
            "ε in seq-mean-token-mean row counts",
            |c| show_eps(c.seq_mean_eps),
        ),
        (
            "ipo_length_normalize",
            "IPO on per-token mean log-probs",
            |c| format!("{}", c.ipo_length_normalize),
        ),
        ("grpo_eps", "GRPO std ε", |c| format!("{:e}", c.grpo_eps)),
        (
            "grpo_singleton_as_unit",
            "group of one: mean 0, std 1 (else error)",
            |c| format!("{}", c.grpo_singleton_as_unit),
        ),
    ];
    let mut out = String::from("| option | meaning |");
    for p in &ps {
        out += &format!(" `{}` |", p.name);
    }
    out += "\n|---|---|";
    out += &"---|".repeat(ps.len());
    out += "\n";
    for (name, meaning, f) in rows {
        out += &format!("| `{name}` | {meaning} |");
        for p in &ps {
            out += &format!(" {} |", f(p));
        }
        out += "\n";
    }
    out
}
