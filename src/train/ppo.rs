//! PPO with four models on a language model over real text — seed document 003's pseudo-code ("PPO 涉及的
//! 模型", "PPO 训练伪代码"), InstructGPT's RLHF stage (document 001 §3.1.3) and the DPO paper's PPO
//! baselines (document 002; Rafailov et al. 2023 §6.1), in the shape of CleanRL's `ppo.py`: one loop,
//! read top to bottom.
//!
//! **The four models.** The *actor* (the policy being trained) and the frozen *reference* both start from
//! an SFT run; the *critic* (per-token value head) starts from the SFT model or from a reward-model run,
//! or shares the actor's backbone (`shared_backbone`, document 003's "actor and critic may share a
//! trunk"); the *reward* is a learned reward model or the ground-truth scorer itself (PPO-GT).
//!
//! **One iteration** (CleanRL names):
//! 1. rollout: `batch_size` review prefixes (2–8 tokens, the train split) → the actor samples responses
//!    through the KV-cache sampler ([`crate::model::generate`], temperature 1, seeded per iteration);
//! 2. scores `(B,)` of `prompt ‖ response` by the reward; optionally normalised (`reward_norm`: per batch,
//!    or by running statistics of all scores so far — the DPO paper's tuned PPO-GT normalises rewards);
//! 3. `old_log_probs`, `ref_log_probs`, `values` `(B, N)` by teacher-forced forward passes *through the
//!    training code path*, minibatch by minibatch in the order of the first PPO epoch — so the first
//!    minibatch of the first epoch sees ratio exactly 1 (no rollout/training mismatch, the bug class of
//!    stacks that take the sampler's log-probs). The policy runs without dropout throughout (as TRL and
//!    OpenRLHF do): log-probs are a function of the weights alone;
//! 4. [`ppo_experience`] under the chosen preset: `r_t = −β·KL_t`, the score on the last real response
//!    token, GAE(γ, λ), returns, whitened advantages;
//! 5. `ppo_epochs` × `num_minibatches` shuffled minibatches: [`ppo_objective`] (clipped surrogate + clipped
//!    value loss + entropy bonus, all from `core`), optionally plus PPO-ptx's `ptx_coef ·` language-model
//!    loss on review text (InstructGPT eq. 2, γ·E[log π(x_pretrain)]: γ = 0 is PPO, γ > 0 PPO-ptx);
//!    AdamW steps on actor and critic with global-norm clipping;
//! 6. the KL controller (fixed, or adaptive towards `target` KL — Ziegler et al. 2019 §2.2) observes the
//!    batch's mean sequence KL.
//!
//! Every `eval_interval` iterations the one evaluator ([`crate::train::eval`]) samples held-out test
//! prefixes and reports the ground-truth score and the exact sequence KL(π ‖ π_ref) — the two axes of the
//! DPO paper's reward–KL frontier. Metrics carry TRL's names (`objective/kl`, `policy/clipfrac`,
//! `val/explained_var`, …). The run directory ([`crate::train::run`]) makes the run resumable after
//! SIGKILL with bit-identical metrics on the CPU.

use crate::core::conventions::Conventions;
use crate::core::experience::ppo_experience;
use crate::core::kl::{kl_per_sequence, KlConfig, KlEstimator};
use crate::core::logprobs::{entropy, token_log_probs};
use crate::core::masked::{aggregate, masked_mean, masked_var, EmptyRows, LossAgg};
use crate::core::ppo::{AdaptiveKlController, FixedKlController, KlController};
use crate::core::ppo_objective::{ppo_objective, PpoMinibatch};
use crate::data::Split;
use crate::error::{Result, RlhfError};
use crate::ground_truth::SentimentScorer;
use crate::model::generate::{generate, GenerationConfig};
use crate::model::RlhfLm;
use crate::rng::SplitMix64;
use crate::train::config::{self, OptimSection, TrainConfig};
use crate::train::eval::{EvalResult, EvalSection, Evaluator, EVAL_COLUMNS};
use crate::train::lm::LoadedLm;
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::prompts::{review_prefixes, PrefixConfig};
use crate::train::report::{Panel, Series};
use crate::train::run::{self, CheckpointState, Run, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Where the reward of a rollout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardSource {
    /// The ground-truth sentiment classifier (PPO-GT): its logit of p(positive).
    GroundTruth,
    /// A reward model trained by `rlhf-lab rm` (`reward_model_run`).
    RewardModel,
}

/// Where the critic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CriticInit {
    /// The SFT model (its value head freshly initialised at SFT time).
    Sft,
    /// The reward model's backbone (InstructGPT, DeepSpeed-Chat: critic initialised from the RM).
    RewardModel,
}

/// How scores are normalised before they enter the rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardNorm {
    None,
    /// `(s − mean) / std` over the rollout batch.
    Batch,
    /// `(s − mean) / std` with the running mean and std of every score seen so far (Welford).
    Running,
}

/// The KL coefficient β.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlSection {
    /// `fixed` (β = `init` throughout) or `adaptive` (towards `target`).
    pub kind: String,
    /// Initial β.
    pub init: f64,
    /// Target sequence KL (nats) of the adaptive controller.
    #[serde(default = "default_target")]
    pub target: f64,
    /// Horizon (samples) of the adaptive controller (TRL: 10,000).
    #[serde(default = "default_horizon")]
    pub horizon: f64,
}

fn default_target() -> f64 {
    6.0
}
fn default_horizon() -> f64 {
    10_000.0
}

/// A PPO run (`configs/ppo-*.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoConfig {
    /// Run name: the run directory is `reports/<name>` unless `--out` says otherwise.
    pub name: String,
    #[serde(default)]
    pub seed: i64,
    /// libtorch intra-op threads (absent: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    /// The SFT run the actor and the reference start from.
    pub sft_run: PathBuf,
    /// `ground-truth` (PPO-GT) or `reward-model`.
    pub reward: RewardSource,
    /// The reward-model run (`rlhf-lab rm`), for `reward = "reward-model"` or `critic_init = "reward-model"`.
    #[serde(default)]
    pub reward_model_run: Option<PathBuf>,
    /// `sft` or `reward-model`.
    #[serde(default = "default_critic_init")]
    pub critic_init: CriticInit,
    /// Actor and critic share one backbone (the value head sits on the actor).
    #[serde(default)]
    pub shared_backbone: bool,
    /// Convention preset for rewards, GAE, whitening and the losses (`rlhf-lab`, `trl`, …).
    #[serde(default = "default_preset")]
    pub preset: String,
    /// GAE γ and λ (override the preset's).
    #[serde(default)]
    pub gamma: Option<f64>,
    #[serde(default)]
    pub lam: Option<f64>,
    /// Score normalisation.
    #[serde(default = "default_reward_norm")]
    pub reward_norm: RewardNorm,
    /// PPO epochs over each rollout batch.
    pub ppo_epochs: usize,
    /// Minibatches per epoch (must divide `optim.batch_size`).
    pub num_minibatches: usize,
    /// Weight of the value loss in the total loss.
    #[serde(default = "default_vf_coef")]
    pub vf_coef: f64,
    /// Weight of the entropy bonus.
    #[serde(default)]
    pub entropy_coef: f64,
    /// Critic learning rate (default: `optim.lr`); follows the same schedule.
    #[serde(default)]
    pub critic_lr: Option<f64>,
    /// PPO-ptx γ: weight of the language-model loss on review text mixed into each update; 0 = PPO.
    #[serde(default)]
    pub ptx_coef: f64,
    /// Review windows (of `ptx_block` tokens) per minibatch for the PPO-ptx term.
    #[serde(default = "default_ptx_batch")]
    pub ptx_batch_size: usize,
    #[serde(default = "default_ptx_block")]
    pub ptx_block: usize,
    /// Response tokens per rollout (EOS included).
    pub max_new_tokens: usize,
    /// Prompt prefixes.
    #[serde(default)]
    pub prompts: PrefixConfig,
    pub kl: KlSection,
    /// Evaluate every this many iterations (and at 0 and at the end).
    pub eval_interval: u64,
    /// The held-out evaluation (its ground truth is also PPO-GT's reward).
    pub eval: EvalSection,
    /// Checkpoint every this many iterations (and at the end).
    pub checkpoint_interval: u64,
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// `max_steps` = PPO iterations (the schedule runs over iterations); `batch_size` = rollouts per
    /// iteration; `grad_accum` must be 1.
    pub optim: OptimSection,
}

fn default_critic_init() -> CriticInit {
    CriticInit::Sft
}
fn default_preset() -> String {
    "rlhf-lab".into()
}
fn default_reward_norm() -> RewardNorm {
    RewardNorm::None
}
fn default_vf_coef() -> f64 {
    0.1
}
fn default_ptx_batch() -> usize {
    4
}
fn default_ptx_block() -> usize {
    32
}
fn default_keep() -> usize {
    2
}

impl TrainConfig for PpoConfig {
    fn validate(&self) -> Result<()> {
        use crate::core::check::{at_least, count_in, non_negative, positive};
        config::validate_name(&self.name)?;
        self.optim.validate()?;
        at_least("optim.grad_accum", self.optim.grad_accum, 1)?;
        if self.optim.grad_accum != 1 {
            return Err(RlhfError::invalid(
                "optim.grad_accum",
                "PPO takes 1 (use num_minibatches)",
            ));
        }
        count_in("ppo_epochs", self.ppo_epochs, 1, 1000)?;
        let b = self.optim.batch_size as usize;
        count_in("num_minibatches", self.num_minibatches, 1, b)?;
        if b % self.num_minibatches != 0 {
            return Err(RlhfError::invalid(
                "num_minibatches",
                format!(
                    "{} does not divide optim.batch_size = {b}",
                    self.num_minibatches
                ),
            ));
        }
        non_negative("vf_coef", self.vf_coef)?;
        non_negative("entropy_coef", self.entropy_coef)?;
        non_negative("ptx_coef", self.ptx_coef)?;
        count_in("ptx_batch_size", self.ptx_batch_size, 1, 4096)?;
        count_in("ptx_block", self.ptx_block, 2, 1 << 16)?;
        if let Some(lr) = self.critic_lr {
            positive("critic_lr", lr)?;
        }
        count_in("max_new_tokens", self.max_new_tokens, 1, 1 << 16)?;
        self.prompts.validate("prompts")?;
        self.kl_controller()?;
        self.conventions()?;
        at_least("eval_interval", self.eval_interval as i64, 1)?;
        self.eval.validate()?;
        at_least("checkpoint_interval", self.checkpoint_interval as i64, 1)?;
        count_in("keep_checkpoints", self.keep_checkpoints, 1, 1000)?;
        if let Some(t) = self.threads {
            at_least("threads", i64::from(t), 1)?;
        }
        let needs_rm = self.reward == RewardSource::RewardModel
            || (self.critic_init == CriticInit::RewardModel && !self.shared_backbone);
        if needs_rm && self.reward_model_run.is_none() {
            return Err(RlhfError::invalid(
                "reward_model_run",
                "required by reward = \"reward-model\" or critic_init = \"reward-model\"",
            ));
        }
        Ok(())
    }
}

impl PpoConfig {
    /// Parses and validates a TOML file ([`config::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config::from_file(path)
    }

    /// The convention preset with γ/λ overrides.
    pub fn conventions(&self) -> Result<Conventions> {
        let mut c = Conventions::preset(&self.preset).map_err(|e| e.in_section("preset"))?;
        if let Some(g) = self.gamma {
            crate::core::check::in_unit_interval("gamma", g)?;
            c.gamma = g;
        }
        if let Some(l) = self.lam {
            crate::core::check::in_unit_interval("lam", l)?;
            c.lam = l;
        }
        Ok(c)
    }

    /// The KL controller of `[kl]`.
    pub fn kl_controller(&self) -> Result<Box<dyn KlController>> {
        Ok(match self.kl.kind.as_str() {
            "fixed" => {
                Box::new(FixedKlController::new(self.kl.init).map_err(|e| e.in_section("kl"))?)
            }
            "adaptive" => Box::new(
                AdaptiveKlController::new(self.kl.init, self.kl.target, self.kl.horizon)
                    .map_err(|e| e.in_section("kl"))?,
            ),
            other => {
                return Err(RlhfError::invalid(
                    "kl.kind",
                    format!("unknown controller {other:?} (fixed, adaptive)"),
                ))
            }
        })
    }
}

/// Columns of `metrics.csv` after `step` (PPO iterations) and `tokens` (response tokens sampled).
const COLUMNS: [&str; 24] = [
    "lr",
    "objective/scores",
    "objective/kl",
    "objective/kl_coef",
    "objective/rlhf_reward",
    "objective/entropy",
    "policy/clipfrac",
    "policy/approxkl",
    "policy/ratio_first",
    "loss/policy",
    "loss/value",
    "loss/ptx",
    "val/clipfrac",
    "val/explained_var",
    "val/mean",
    "response_len",
    "eval/score",
    "eval/score_sigmoid",
    "eval/kl_exact",
    "eval/kl_k1",
    "eval/kl_k3",
    "eval/entropy",
    "eval/response_len",
    "eval/distinct_2",
];

/// One row of `metrics.csv`: the iteration's statistics, and the evaluation's where one ran.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoRow {
    pub step: u64,
    pub tokens: u64,
    pub values: [Option<f64>; 24],
}

impl PpoRow {
    /// The value of a column, by name.
    pub fn get(&self, column: &str) -> Option<f64> {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .and_then(|j| self.values[j])
    }
}

impl run::MetricsRow for PpoRow {
    fn columns() -> &'static [&'static str] {
        &COLUMNS
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn tokens(&self) -> u64 {
        self.tokens
    }
    fn values(&self) -> Vec<Option<f64>> {
        self.values.to_vec()
    }
    fn from_values(step: u64, tokens: u64, v: &[Option<f64>]) -> Self {
        let mut values = [None; 24];
        for (slot, x) in values.iter_mut().zip(v) {
            *slot = *x;
        }
        PpoRow {
            step,
            tokens,
            values,
        }
    }
}

fn report_panels() -> Vec<Panel> {
    let s = |column, label, markers| Series {
        column,
        label,
        markers,
    };
    vec![
        Panel {
            caption: "Reward",
            title: "score of the rollouts and of held-out samples",
            y_title: "score",
            log_y: false,
            series: vec![
                s("objective/scores", "rollout score (reward)", false),
                s("eval/score", "held-out ground-truth score", true),
            ],
        },
        Panel {
            caption: "KL to the reference",
            title: "sequence KL(π ‖ π_ref)",
            y_title: "nats",
            log_y: false,
            series: vec![
                s("objective/kl", "rollout k1 sum", false),
                s("eval/kl_exact", "held-out exact KL", true),
            ],
        },
        Panel {
            caption: "Losses",
            title: "PPO losses",
            y_title: "loss",
            log_y: false,
            series: vec![
                s("loss/policy", "policy", false),
                s("loss/value", "value", false),
            ],
        },
        Panel {
            caption: "Critic",
            title: "explained variance of the returns",
            y_title: "1 − Var(R − V)/Var(R)",
            log_y: false,
            series: vec![s("val/explained_var", "explained variance", false)],
        },
    ]
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct PpoSummary {
    pub run_dir: PathBuf,
    pub iterations: u64,
    pub resumed_from: Option<u64>,
    /// The last evaluation.
    pub final_eval: Option<EvalResult>,
    /// Sampled response tokens per second of this process (rollout + update time).
    pub tokens_per_s: f64,
    /// Seconds of each iteration this process ran (rollout + update, without evaluation and
    /// checkpointing), in order: what `rlhf-lab bench` reports as one PPO iteration.
    pub iteration_secs: Vec<f64>,
    pub wall_s: f64,
    pub metrics: Vec<PpoRow>,
}

/// Running mean and variance (Welford 1962) of every score seen, for `reward_norm = "running"`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct RunningMoments {
    count: f64,
    mean: f64,
    m2: f64,
}

impl RunningMoments {
    fn update(&mut self, xs: &[f64]) {
        for &x in xs {
            self.count += 1.0;
            let d = x - self.mean;
            self.mean += d / self.count;
            self.m2 += d * (x - self.mean);
        }
    }
    fn std(&self) -> f64 {
        if self.count > 1.0 {
            (self.m2 / (self.count - 1.0)).sqrt()
        } else {
            1.0
        }
    }
}

/// The trainer state beyond the models that a checkpoint keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PpoState {
    kl_coef_bits: u64,
    moments: [u64; 3],
}

/// The response positions' `(B, N, V)` next-token logits and `(B, N)` values of `model` on a rollout
/// (`seq` = left-padded prompt ‖ response, `P` prompt and `N` response columns): the hidden state at
/// position `P − 1 + t` predicts response token `t` and is where its value `V(s_t)` is read.
pub fn response_outputs(
    model: &dyn RlhfLm,
    seq: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
    p: i64,
    n: i64,
) -> Result<(Tensor, Tensor)> {
    let h = response_hidden(model, seq, attention_mask, position_ids, p, n)?; // (B, N, C)
    Ok((model.lm_logits(&h)?, model.values(&h)?))
}

/// Only the `(B, N)` values of [`response_outputs`]: what a separate critic needs, without the
/// `(B, N, V)` LM head (a quarter of the critic's forward FLOPs at V = 8192, C = 128).
pub fn response_values(
    model: &dyn RlhfLm,
    seq: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
    p: i64,
    n: i64,
) -> Result<Tensor> {
    model.values(&response_hidden(
        model,
        seq,
        attention_mask,
        position_ids,
        p,
        n,
    )?)
}

/// The `(B, N, C)` hidden states at the positions that predict the `N` response tokens.
fn response_hidden(
    model: &dyn RlhfLm,
    seq: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
    p: i64,
    n: i64,
) -> Result<Tensor> {
    let hidden = model.forward_hidden(seq, attention_mask, position_ids, None, false)?; // (B, P+N, C)
    Ok(hidden.narrow(1, p - 1, n))
}

fn mean_of(t: &Tensor) -> Result<f64> {
    Ok(t.detach()
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .f_double_value(&[])?)
}

/// The review token stream of PPO-ptx (the first 2,000 train reviews, EOS-separated).
fn ptx_stream(lm: &LoadedLm, data_dir: &Path) -> Result<Vec<i64>> {
    let texts = crate::data::lm_texts(data_dir)?.train;
    let mut s = Vec::new();
    for t in texts.iter().take(2_000) {
        s.extend(lm.tokenizer.encode(t)?);
        s.push(lm.tokenizer.eos_id());
    }
    Ok(s)
}

/// Runs (or resumes) PPO as configured; see the module documentation.
pub fn run_ppo(cfg: &PpoConfig, opts: &RunOptions) -> Result<PpoSummary> {
    let (mut run, resumed) = Run::<PpoRow>::start(
        "ppo",
        cfg,
        &cfg.name,
        cfg.seed,
        cfg.threads,
        cfg.keep_checkpoints,
        opts,
    )?;
    let conv = cfg.conventions()?;
    let device = run.device();
    let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);

    // The four models. Actor: from the checkpoint on resume, else the SFT run; reference: the SFT run,
    // frozen; critic: its own copy (from the checkpoint, the SFT run or the RM run) unless shared.
    let sft_tok = cfg.sft_run.join("tokenizer.json");
    let actor = LoadedLm::for_run(resumed.as_ref(), &cfg.sft_run, &run.dir, device)?;
    let mut reference = LoadedLm::from_run(&cfg.sft_run, "sft_run", device)?;
    reference.freeze();
    let critic = if cfg.shared_backbone {
        None
    } else {
        Some(match (&resumed, cfg.critic_init) {
            (Some(r), _) => LoadedLm::from_dir(&r.dir.join("critic"), &sft_tok, device)?,
            (None, CriticInit::Sft) => LoadedLm::from_run(&cfg.sft_run, "sft_run", device)?,
            (None, CriticInit::RewardModel) => {
                let rm = cfg.reward_model_run.as_deref().unwrap_or(Path::new(""));
                LoadedLm::from_run(rm, "reward_model_run", device)?
            }
        })
    };
    let reward_model: Option<LoadedLm> = match cfg.reward {
        RewardSource::GroundTruth => None,
        RewardSource::RewardModel => {
            let rm = cfg.reward_model_run.as_deref().unwrap_or(Path::new(""));
            let mut m = LoadedLm::from_run(rm, "reward_model_run", device)?;
            m.freeze();
            Some(m)
        }
    };
    let tok = actor.tokenizer.clone();

    let mut actor_opt = AdamW::new(&actor.vs, cfg.optim.adamw())?;
    let mut critic_opt = match &critic {
        Some(c) => Some(AdamW::new(&c.vs, cfg.optim.adamw())?),
        None => None,
    };
    let schedule = cfg.optim.schedule()?;
    let critic_lr_scale = cfg.critic_lr.map_or(1.0, |lr| lr / cfg.optim.lr);
    let mut kl_ctl = cfg.kl_controller()?;
    let mut moments = RunningMoments::default();
    let (mut step, mut rng, mut tokens_seen) = match &resumed {
        Some(r) => {
            actor_opt.load(r.dir.join(run::OPTIMIZER_FILE))?;
            if let Some(o) = critic_opt.as_mut() {
                o.load(r.dir.join("critic").join(run::OPTIMIZER_FILE))?;
            }
            let st: PpoState = serde_json::from_value(r.extra.clone())
                .map_err(|e| RlhfError::format(&r.dir, "PPO checkpoint state", e))?;
            // The controller is rebuilt at its saved β (fixed and adaptive keep only β as state).
            let beta = f64::from_bits(st.kl_coef_bits);
            kl_ctl = match cfg.kl.kind.as_str() {
                "fixed" => Box::new(FixedKlController::new(beta)?),
                _ => Box::new(AdaptiveKlController::new(
                    beta,
                    cfg.kl.target,
                    cfg.kl.horizon,
                )?),
            };
            moments = RunningMoments {
                count: f64::from_bits(st.moments[0]),
                mean: f64::from_bits(st.moments[1]),
                m2: f64::from_bits(st.moments[2]),
            };
            (r.step, SplitMix64::from_state(r.rng_state), r.tokens)
        }
        None => (0, SplitMix64::new(cfg.seed as u64), 0),
    };

    // Prompts: train prefixes for rollouts, test prefixes for evaluation (fixed across the run).
    let b = cfg.optim.batch_size as usize;
    let train_prompts = review_prefixes(
        &data_dir,
        &tok,
        Split::Train,
        4 * b * 16,
        &cfg.prompts,
        cfg.seed as u64,
    )?;
    let evaluator = Evaluator::new(&cfg.eval, &tok, &data_dir)?;
    let gt = evaluator.scorer();
    let ptx = if cfg.ptx_coef > 0.0 {
        ptx_stream(&actor, &data_dir)?
    } else {
        Vec::new()
    };

    let m = &mut run.manifest;
    m.results.insert(
        "models".into(),
        serde_json::json!({
            "actor_params": actor.n_params(), "critic": if cfg.shared_backbone { "shared" } else { "separate" },
            "reward": cfg.reward, "train_prompts": train_prompts.len(), "eval_prompts": cfg.eval.prompts,
        }),
    );
    m.data = vec![crate::train::report::DataFile {
        path: cfg.sft_run.join("tokenizer.json").display().to_string(),
        sha256: crate::io::sha256_file(&sft_tok)?,
    }];
    run.save_manifest()?;

    let eval_row = |ev: &EvalResult, values: &mut [Option<f64>; 24]| {
        for (name, v) in EVAL_COLUMNS.iter().zip(ev.columns()) {
            if let Some(j) = COLUMNS.iter().position(|c| c == name) {
                values[j] = Some(v);
            }
        }
    };
    let mut last_eval = None;
    if step == 0 {
        let ev = evaluator.run(actor.lm(), reference.lm(), &tok)?;
        ev.save_samples(&run.dir, 0)?;
        let mut values = [None; 24];
        eval_row(&ev, &mut values);
        run.push(PpoRow {
            step: 0,
            tokens: 0,
            values,
        });
        run.say(format!(
            "iteration 0: held-out score {:.3} (σ {:.3}), KL {:.3}",
            ev.score_mean, ev.score_sigmoid_mean, ev.kl_exact
        ));
        last_eval = Some(ev);
        run.write_metrics()?;
    }

    let max_steps = cfg.optim.max_steps;
    let mut iteration_secs = Vec::new();
    let mb = b / cfg.num_minibatches;
    let max_norm = if cfg.optim.grad_clip > 0.0 {
        cfg.optim.grad_clip
    } else {
        f64::MAX
    };
    run.start_progress(max_steps, step);
    while step < max_steps {
        let t0 = Instant::now();
        tch::manual_seed(cfg.seed.wrapping_add(step as i64 + 1));
        let lr = schedule.lr_at(step);
        let beta = kl_ctl.value();

        // 1. Rollout.
        let prompts: Vec<Vec<i64>> = (0..b)
            .map(|_| train_prompts[rng.below(train_prompts.len())].clone())
            .collect();
        let mut gen_cfg = GenerationConfig::new(cfg.max_new_tokens, tok.eos_id(), tok.pad_id());
        gen_cfg.seed = (cfg.seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step + 1);
        let g = {
            let _no_grad = tch::no_grad_guard();
            generate(actor.lm(), &prompts, &gen_cfg)?
        };
        let (p, n) = (g.prompt_width(), g.response_width());
        let mask = g.response_mask.to_kind(Kind::Float); // (B, N)
        let responses = g.responses()?;
        let n_tokens: u64 = responses.iter().map(|r| r.len() as u64).sum();

        // 2. Scores of prompt ‖ response, then normalisation.
        let texts: Vec<String> = prompts
            .iter()
            .zip(&responses)
            .map(|(pr, r)| {
                let body: Vec<i64> = r.iter().copied().filter(|&t| t != tok.eos_id()).collect();
                Ok(format!("{}{}", tok.decode(pr)?, tok.decode(&body)?))
            })
            .collect::<Result<_>>()?;
        let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let raw_scores = match &reward_model {
            None => gt.score(&text_refs)?.to_kind(Kind::Double),
            Some(rm) => {
                // The RM scores the very token ids it would have seen in training: prompt ‖ response.
                let seqs: Vec<Vec<i64>> = prompts
                    .iter()
                    .zip(&responses)
                    .map(|(pr, r)| pr.iter().chain(r).copied().collect())
                    .collect();
                rm.score_sequences(&seqs)?
                    .to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu)
            }
        }; // (B,)
        let raw: Vec<f64> = Vec::<f64>::try_from(&raw_scores)?;
        let scores = match cfg.reward_norm {
            RewardNorm::None => raw.clone(),
            RewardNorm::Batch => {
                let mu = raw.iter().sum::<f64>() / b as f64;
                let sd = (raw.iter().map(|x| (x - mu).powi(2)).sum::<f64>()
                    / (b as f64 - 1.0).max(1.0))
                .sqrt();
                raw.iter().map(|x| (x - mu) / (sd + 1e-8)).collect()
            }
            RewardNorm::Running => {
                moments.update(&raw);
                let sd = moments.std();
                raw.iter()
                    .map(|x| (x - moments.mean) / (sd + 1e-8))
                    .collect()
            }
        };
        let scores = Tensor::from_slice(&scores)
            .to_kind(Kind::Float)
            .to_device(device); // (B,)

        // 3. Old log-probs, reference log-probs and values through the training code path, in the
        //    minibatches of the first epoch.
        let mut order0: Vec<i64> = (0..b as i64).collect();
        rng.shuffle(&mut order0);
        let zeros = || Tensor::zeros([b as i64, n], (Kind::Float, device));
        let (mut old_logp, mut ref_logp, mut old_values) = (zeros(), zeros(), zeros());
        {
            let _no_grad = tch::no_grad_guard();
            for chunk in order0.chunks(mb) {
                let idx = Tensor::from_slice(chunk).to_device(device);
                let pick = |t: &Tensor| t.index_select(0, &idx);
                let (seq, am, pos) = (
                    pick(&g.sequences),
                    pick(&g.attention_mask),
                    pick(&g.position_ids),
                );
                let (labels, m) = (pick(&g.response_ids), pick(&mask));
                let (logits, v_shared) = response_outputs(actor.lm(), &seq, &am, &pos, p, n)?;
                let lp = token_log_probs(&logits, &labels, &m)?;
                let (ref_logits, _) = response_outputs(reference.lm(), &seq, &am, &pos, p, n)?;
                let rlp = token_log_probs(&ref_logits, &labels, &m)?;
                let v = match &critic {
                    Some(c) => response_values(c.lm(), &seq, &am, &pos, p, n)?,
                    None => v_shared,
                };
                let _ = old_logp.index_copy_(0, &idx, &lp.to_kind(Kind::Float));
                let _ = ref_logp.index_copy_(0, &idx, &rlp.to_kind(Kind::Float));
                let _ = old_values.index_copy_(0, &idx, &(v * &m).to_kind(Kind::Float));
            }
        }

        // 4. Experience under the preset, with the controller's β.
        let mut step_conv = conv.clone();
        step_conv.kl_coef = beta;
        let exp = ppo_experience(
            &old_logp,
            &ref_logp,
            &old_values,
            &scores,
            &mask,
            &step_conv,
        )?;
        let seq_kl = kl_per_sequence(&old_logp, &ref_logp, &mask, &KlConfig::new(KlEstimator::K1))?;
        let kl_mean = mean_of(&seq_kl)?;
        let resid = &exp.returns - &old_values;
        let var_r = masked_var(&exp.returns, &exp.reward_mask, false)?;
        let var_res = masked_var(&resid, &exp.reward_mask, false)?;
        let explained_var =
            1.0 - var_res.f_double_value(&[])? / var_r.f_double_value(&[])?.max(1e-12);
        let val_mean =
            masked_mean(&old_values, &mask, None, EmptyRows::Ignore)?.f_double_value(&[])?;

        // 5. PPO epochs over shuffled minibatches.
        let mut sums = [0.0f64; 6]; // policy loss, value loss, clipfrac, value clipfrac, approx-KL, ptx
        let mut n_mb = 0usize;
        let mut ratio_first = f64::NAN;
        let mut ent_sum = 0.0f64;
        for epoch in 0..cfg.ppo_epochs {
            let order = if epoch == 0 {
                order0.clone()
            } else {
                let mut o: Vec<i64> = (0..b as i64).collect();
                rng.shuffle(&mut o);
                o
            };
            for chunk in order.chunks(mb) {
                let idx = Tensor::from_slice(chunk).to_device(device);
                let pick = |t: &Tensor| t.index_select(0, &idx);
                let (seq, am, pos) = (
                    pick(&g.sequences),
                    pick(&g.attention_mask),
                    pick(&g.position_ids),
                );
                let (labels, m) = (pick(&g.response_ids), pick(&mask));
                let (logits, v_shared) = response_outputs(actor.lm(), &seq, &am, &pos, p, n)?;
                let log_probs = token_log_probs(&logits, &labels, &m)?; // (mb, N)
                                                                        // With no entropy bonus, H is only logged: computed without a graph, as TRL does, so
                                                                        // the backward pass skips a (mb, N, V) softmax (the loss and gradients are unchanged).
                let ent = if cfg.entropy_coef > 0.0 {
                    entropy(&logits, &m)?
                } else {
                    tch::no_grad(|| entropy(&logits, &m))?
                }; // (mb, N)
                let values = match &critic {
                    Some(c) => response_values(c.lm(), &seq, &am, &pos, p, n)?,
                    None => v_shared,
                };
                let obj = ppo_objective(
                    &PpoMinibatch {
                        log_probs: &log_probs,
                        entropy: &ent,
                        values: &values,
                        old_log_probs: &pick(&old_logp),
                        old_values: &pick(&old_values),
                        advantages: &pick(&exp.advantages),
                        returns: &pick(&exp.returns),
                        response_mask: &m,
                        reward_mask: &pick(&exp.reward_mask),
                    },
                    &conv,
                    cfg.vf_coef,
                    cfg.entropy_coef,
                )?;
                if n_mb == 0 {
                    ratio_first =
                        masked_mean(&obj.policy.ratio.detach(), &m, None, EmptyRows::Ignore)?
                            .f_double_value(&[])?;
                }
                let mut loss = obj.loss.shallow_clone();
                if cfg.ptx_coef > 0.0 {
                    // PPO-ptx: γ · (−mean log π(x)) on review windows (InstructGPT eq. 2).
                    let blk = cfg.ptx_block;
                    let high = ptx.len().saturating_sub(blk);
                    let windows: Vec<i64> = (0..cfg.ptx_batch_size)
                        .flat_map(|_| {
                            let o = rng.below(high.max(1));
                            ptx[o..o + blk].to_vec()
                        })
                        .collect();
                    let x = Tensor::from_slice(&windows)
                        .view([cfg.ptx_batch_size as i64, blk as i64])
                        .to_device(device);
                    let am = x.ones_like();
                    let pos = crate::model::position_ids_from_mask(&am);
                    let h = actor.lm().forward_hidden(&x, &am, &pos, None, false)?;
                    let lg = actor.lm().lm_logits(&h.narrow(1, 0, blk as i64 - 1))?;
                    let tgt = x.narrow(1, 1, blk as i64 - 1);
                    let ones = tgt.ones_like().to_kind(Kind::Float);
                    let nll = -token_log_probs(&lg, &tgt, &ones)?;
                    let ptx_loss = aggregate(&nll, &ones, LossAgg::TokenMean, EmptyRows::Ignore)?;
                    sums[5] += ptx_loss.f_double_value(&[])?;
                    loss = loss + ptx_loss * cfg.ptx_coef;
                }
                actor_opt.zero_grad();
                if let Some(o) = critic_opt.as_mut() {
                    o.zero_grad();
                }
                loss.f_backward()?;
                clip_grad_norm(&actor_opt.params(), max_norm)?;
                actor_opt.step(lr)?;
                if let Some(o) = critic_opt.as_mut() {
                    clip_grad_norm(&o.params(), max_norm)?;
                    o.step(lr * critic_lr_scale)?;
                }
                for (s, t) in sums.iter_mut().zip([
                    &obj.policy.loss,
                    &obj.value.loss,
                    &obj.policy.clipfrac,
                    &obj.value.clipfrac,
                    &obj.policy.approx_kl,
                ]) {
                    *s += t.detach().to_kind(Kind::Double).f_double_value(&[])?;
                }
                ent_sum += obj
                    .entropy
                    .detach()
                    .to_kind(Kind::Double)
                    .f_double_value(&[])?;
                n_mb += 1;
            }
        }
        // 6. KL controller.
        kl_ctl.update(kl_mean, b as u64)?;

        step += 1;
        tokens_seen += n_tokens;
        let score_mean = raw.iter().sum::<f64>() / b as f64;
        if !(score_mean.is_finite() && kl_mean.is_finite() && sums.iter().all(|s| s.is_finite())) {
            return Err(RlhfError::NonFinite {
                arg: format!("PPO statistics at iteration {step}"),
                count: 1,
            });
        }
        let k = n_mb as f64;
        let mut values: [Option<f64>; 24] = [None; 24];
        let row_values = [
            lr,
            score_mean,
            kl_mean,
            beta,
            score_mean - beta * kl_mean,
            ent_sum / k,
            sums[2] / k,
            sums[4] / k,
            ratio_first,
            sums[0] / k,
            sums[1] / k,
            sums[5] / k,
            sums[3] / k,
            explained_var,
            val_mean,
            n_tokens as f64 / b as f64,
        ];
        for (slot, v) in values.iter_mut().zip(row_values) {
            *slot = Some(v);
        }
        if cfg.ptx_coef == 0.0 {
            values[11] = None;
        }
        let train_secs = t0.elapsed().as_secs_f64();
        iteration_secs.push(train_secs);
        let is_last = step == max_steps;
        if step % cfg.eval_interval == 0 || is_last {
            let ev = evaluator.run(actor.lm(), reference.lm(), &tok)?;
            ev.save_samples(&run.dir, step)?;
            eval_row(&ev, &mut values);
            run.say(format!(
                "iteration {step}: score {score_mean:.3}, KL {kl_mean:.3}, β {beta:.4}; held-out score {:.3} (σ {:.3}), exact KL {:.3}",
                ev.score_mean, ev.score_sigmoid_mean, ev.kl_exact
            ));
            last_eval = Some(ev);
        }
        run.push(PpoRow {
            step,
            tokens: tokens_seen,
            values,
        });
        run.write_metrics()?;
        run.step_done(
            step,
            n_tokens,
            train_secs,
            &format!("score {score_mean:.3} kl {kl_mean:.2}"),
        );
        if step % cfg.checkpoint_interval == 0 || is_last {
            let extra = serde_json::to_value(PpoState {
                kl_coef_bits: kl_ctl.value().to_bits(),
                moments: [
                    moments.count.to_bits(),
                    moments.mean.to_bits(),
                    moments.m2.to_bits(),
                ],
            })
            .map_err(|e| RlhfError::format(&run.dir, "PPO checkpoint state", e))?;
            let state = CheckpointState {
                step,
                rng_state: rng.state(),
                tokens: tokens_seen,
                extra,
            };
            run.checkpoint(&state, |dir| {
                actor.save(dir)?;
                actor_opt.save(dir.join(run::OPTIMIZER_FILE))?;
                if let (Some(c), Some(o)) = (&critic, &critic_opt) {
                    let cdir = dir.join("critic");
                    std::fs::create_dir_all(&cdir).map_err(|e| RlhfError::io(&cdir, e))?;
                    c.save(&cdir)?;
                    o.save(cdir.join(run::OPTIMIZER_FILE))?;
                }
                Ok(())
            })?;
        }
    }

    let mut results = vec![("iterations", serde_json::json!(step))];
    if let Some(ev) = &last_eval {
        results.push(("final_eval_score", serde_json::json!(ev.score_mean)));
        results.push((
            "final_eval_score_sigmoid",
            serde_json::json!(ev.score_sigmoid_mean),
        ));
        results.push(("final_eval_kl_exact", serde_json::json!(ev.kl_exact)));
    }
    let done = run.finish(&format!("PPO run {}", cfg.name), &report_panels(), results)?;
    Ok(PpoSummary {
        run_dir: run.dir.clone(),
        iterations: step,
        resumed_from: resumed.map(|r| r.step),
        final_eval: last_eval,
        tokens_per_s: done.train_tokens_per_s,
        iteration_secs,
        wall_s: done.wall_s,
        metrics: run.rows.clone(),
    })
}
