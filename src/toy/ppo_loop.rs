//! Seed document 003's four-model PPO loop ("PPO 涉及的模型", "PPO 训练伪代码"; seed 001 §3.2.1–3.2.4),
//! run for real on a tiny GRU language model over token sequences.
//!
//! # The problem
//! Vocabulary: `</s>` (EOS, id 0) and the letters `a`…`g` (ids 1–7); an input-only `<pad>` (id 8) pads
//! prompts on the left and responses on the right. The policy's output head ranges over the 8 real tokens
//! only, so it can never sample `<pad>`. A prompt is one of [`PROMPTS`] (2–3 letters, left-padded to
//! [`PROMPT_LEN`]); its first letter is its *key*. A response is sampled token by token until `</s>` or
//! `max_response_len` tokens; the EOS is part of the response (it has a log-prob and a value, as in every
//! RLHF stack), the slots after it are padding and are masked out.
//!
//! # The four models (seed 003 "PPO 涉及的模型")
//! * **actor** (训练的模型): embedding → 1-layer GRU → linear LM head over the vocabulary;
//! * **reference** (基准模型): a frozen copy of the actor's initial weights (`VarStore::copy` + `freeze`),
//!   standing in for the SFT model;
//! * **critic** (状态价值模型): the same architecture with a scalar value head shared by every position;
//! * **reward model** (奖励模型): [`ToyRewardModel`], a fixed scorer of the whole (prompt, response) pair
//!   — `min(#key tokens in the response, max_count) − length_penalty · |response|`. It stands in for a
//!   trained Bradley–Terry RM (notebook 03): one scalar per sequence, nothing per token.
//!
//! # One iteration (seed 003 "PPO 训练伪代码", DeepSpeed-Chat / TRL PPOTrainer / OpenRLHF / verl)
//! 1. sample `batch_size` prompts; `actor.generate` (no grad) → responses, (B, L) mask;
//! 2. forward passes on `concat(prompt, response)` (B, P+L): old log-probs (actor), ref log-probs
//!    (reference) via [`token_log_probs`], values (critic), all response-aligned (B, L); scores (B,) from
//!    the RM;
//! 3. [`ppo_experience`]: `r_t = −β·KL_t` with the score added on the **last real response token** (seed 001
//!    §3.2.4, [`crate::core::kl_shaping::kl_shaped_rewards`], `ScorePlacement::LastResponseToken` — never on a pad),
//!    GAE(γ, λ) (Schulman et al. 2016 eq. 16, [`crate::core::advantages::gae`]), `returns = A + V`, advantages
//!    whitened over response tokens ([`crate::core::masked::masked_whiten`], TRL);
//! 4. `ppo_epochs` passes over `num_minibatches` shuffled minibatches: recompute log-probs, entropy and
//!    values; clipped surrogate [`policy_loss`] (Schulman et al. 2017 eq. 7), clipped [`value_loss`]
//!    (seed 003 `vf_loss`), [`total_loss`] `= pg + vf_coef·vf − entropy_coef·H` (eq. 9); Adam steps on actor
//!    and critic with global grad-norm clipping;
//! 5. update β with the KL controller ([`FixedKlController`] or [`AdaptiveKlController`], Ziegler et al.
//!    2019 §2.2).
//!
//! # Claims the notebook makes (pinned by `tests/toy_ppo_loop.rs`)
//! * the mean RM score rises from its initial value toward [`ToyRewardModel::optimal_score`];
//! * the KL to the reference is exactly 0 at iteration 0 (actor = reference), then grows but stays
//!   bounded — it is larger for a smaller `kl_coef` β, and for a large β it stays under the bound
//!   `(r_max − E_ref[r]) / β` on the KL of the regularised optimum ([`PpoLoopRun::kl_bound`]);
//! * the value loss falls and the critic's explained variance rises as the critic learns the returns;
//! * the score lands on the last real response token of every row, never on a pad.
//!
//! Everything is f64 on the CPU and single-threaded: the public methods set libtorch's intra-op thread
//! count of the calling thread to 1 and restore it on return. All randomness (weight initialisation,
//! sampling, minibatch shuffling) comes from a SplitMix64 generator ([`crate::rng::SplitMix64`]) seeded
//! with `seed`, not from libtorch's global generator, so a run is reproducible bit for bit even when
//! several runs share a process (parallel tests). A default run (40 iterations) takes about 3 s of one CPU core.

use super::scalar;
use super::SingleThread;
use crate::core::check;
use crate::core::conventions::Conventions;
use crate::core::experience::ppo_experience;
use crate::core::kl::KlEstimator;
use crate::core::logprobs::{entropy, token_log_probs};
use crate::core::masked::{masked_mean, masked_var, EmptyRows};
use crate::core::ppo::{AdaptiveKlController, FixedKlController, KlController};
use crate::core::ppo_objective::{ppo_objective, PpoMinibatch};
use crate::error::{Result, RlhfError};
use crate::rng::SplitMix64 as Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig, RNN};
use tch::{Device, Kind, Tensor};

/// End of sequence, part of the response (it gets a log-prob, a value and, when it ends the response, the
/// score).
pub const EOS: i64 = 0;
/// Size of the policy's output vocabulary: `</s>`, `a`…`g`.
pub const VOCAB: i64 = 8;
/// Input-only padding id (left of short prompts, right of finished responses). Never sampled.
pub const PAD: i64 = 8;
/// Display names of ids 0–8.
pub const TOKENS: [&str; 9] = ["</s>", "a", "b", "c", "d", "e", "f", "g", "<pad>"];
/// Prompts are left-padded to this length.
pub const PROMPT_LEN: i64 = 3;
/// The prompt set (ids). The first token of a prompt is its key: the RM rewards responses that repeat it.
pub const PROMPTS: &[&[i64]] = &[
    &[1, 3],
    &[2, 5, 7],
    &[3, 1],
    &[4, 6, 2],
    &[5, 2, 4],
    &[6, 7],
];

/// Display name of one id (`?` outside 0–8).
pub fn token_name(id: i64) -> &'static str {
    usize::try_from(id)
        .ok()
        .and_then(|i| TOKENS.get(i))
        .copied()
        .unwrap_or("?")
}

/// Space-separated token names of `ids`, `<pad>` left out.
pub fn decode(ids: &[i64]) -> String {
    ids.iter()
        .filter(|&&t| t != PAD)
        .map(|&t| token_name(t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reward model (seed 003 model 3): a fixed scorer of the whole sequence, standing in for a trained
/// RM. `score(x, y) = min(#{t : y_t = key(x)}, max_count) − length_penalty · |y|`, where `key(x)` is the
/// prompt's first token and `|y|` counts the response's tokens including its final `</s>`.
/// With the defaults the best response is `k k k </s>` (score `3 − 4·0.3 = 1.8`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToyRewardModel {
    /// Occurrences of the key token that count (more are not rewarded).
    pub max_count: usize,
    /// Cost of every response token (including `</s>`).
    pub length_penalty: f64,
}

impl Default for ToyRewardModel {
    fn default() -> Self {
        ToyRewardModel {
            max_count: 3,
            length_penalty: 0.3,
        }
    }
}

impl ToyRewardModel {
    /// Score of one response. `prompt` may carry left `<pad>`s; `response` holds the real response
    /// tokens (pads, if any, are ignored).
    pub fn score(&self, prompt: &[i64], response: &[i64]) -> f64 {
        let key = prompt.iter().copied().find(|&t| t != PAD);
        let real: Vec<i64> = response.iter().copied().filter(|&t| t != PAD).collect();
        let hits = real.iter().filter(|&&t| Some(t) == key).count();
        hits.min(self.max_count) as f64 - self.length_penalty * real.len() as f64
    }

    /// The best score reachable with responses of at most `max_len` tokens: `n` key tokens then `</s>`
    /// (`n + 1 ≤ max_len`), or `max_len` key tokens without `</s>`.
    pub fn optimal_score(&self, max_len: usize) -> f64 {
        let with_eos = (0..max_len)
            .map(|n| n.min(self.max_count) as f64 - self.length_penalty * (n + 1) as f64);
        let truncated = max_len.min(self.max_count) as f64 - self.length_penalty * max_len as f64;
        with_eos.fold(truncated, f64::max)
    }
}

/// Configuration of the loop. Names follow TRL `PPOConfig` / CleanRL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoLoopConfig {
    /// Seeds weight initialisation, prompt sampling, generation and minibatch shuffling.
    pub seed: i64,
    /// Outer iterations (experience collection + PPO epochs).
    pub iterations: usize,
    /// Rollouts per iteration (TRL `batch_size`, OpenRLHF `rollout_batch_size`).
    pub batch_size: usize,
    /// Minibatches per PPO epoch; must divide `batch_size` (CleanRL `num_minibatches`).
    pub num_minibatches: usize,
    /// Passes over each experience batch (TRL `ppo_epochs` / `num_ppo_epochs`; seed 003 `epoch`).
    pub ppo_epochs: usize,
    /// Maximum response length L (tokens, including `</s>`).
    pub max_response_len: usize,
    /// Embedding and GRU width of actor and critic.
    pub hidden: usize,
    /// Adam learning rate of actor and critic.
    pub lr: f64,
    /// β of the per-token KL penalty `r_t = −β·KL_t` (initial β when `kl_target` is set).
    pub kl_coef: f64,
    /// `Some(target)`: adaptive β (Ziegler et al. 2019 §2.2, TRL `adap_kl_ctrl`) toward this sequence KL;
    /// `None`: fixed β.
    pub kl_target: Option<f64>,
    /// Horizon of the adaptive controller, in samples.
    pub kl_horizon: f64,
    /// Discount γ.
    pub gamma: f64,
    /// GAE λ.
    pub lam: f64,
    /// PPO ratio clip ε (TRL `cliprange`).
    pub cliprange: f64,
    /// Value-prediction clip (TRL `cliprange_value`).
    pub cliprange_value: f64,
    /// Weight of the value loss in the total loss (TRL `vf_coef`).
    pub vf_coef: f64,
    /// Weight of the entropy bonus (CleanRL `ent_coef`).
    pub entropy_coef: f64,
    /// Global L2 gradient-norm clip, applied to actor and critic separately (TRL `max_grad_norm`).
    pub max_grad_norm: f64,
    /// Whiten advantages over response tokens (TRL `whiten(advantages)`).
    pub whiten_advantages: bool,
    pub reward_model: ToyRewardModel,
}

impl Default for PpoLoopConfig {
    fn default() -> Self {
        PpoLoopConfig {
            seed: 0,
            iterations: 40,
            batch_size: 64,
            num_minibatches: 2,
            ppo_epochs: 4,
            max_response_len: 8,
            hidden: 32,
            lr: 5e-3,
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 1000.0,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            entropy_coef: 0.0,
            max_grad_norm: 1.0,
            whiten_advantages: true,
            reward_model: ToyRewardModel::default(),
        }
    }
}

impl PpoLoopConfig {
    /// Typed errors for every out-of-range field.
    pub fn validate(&self) -> Result<()> {
        use crate::core::check::{in_unit_interval, non_negative, positive};
        check::count_in("iterations", self.iterations, 1, 100_000)?;
        check::count_in("batch_size", self.batch_size, 2, 65_536)?;
        check::count_in("num_minibatches", self.num_minibatches, 1, self.batch_size)?;
        if self.batch_size % self.num_minibatches != 0 {
            return Err(RlhfError::invalid(
                "num_minibatches",
                format!(
                    "{} minibatches do not divide batch_size = {}",
                    self.num_minibatches, self.batch_size
                ),
            ));
        }
        check::count_in("ppo_epochs", self.ppo_epochs, 1, 1_000)?;
        check::count_in("max_response_len", self.max_response_len, 1, 64)?;
        check::count_in("hidden", self.hidden, 1, 1_024)?;
        positive("lr", self.lr)?;
        non_negative("kl_coef", self.kl_coef)?;
        if let Some(t) = self.kl_target {
            positive("kl_target", t)?;
            positive("kl_coef", self.kl_coef)?;
            positive("kl_horizon", self.kl_horizon)?;
        }
        in_unit_interval("gamma", self.gamma)?;
        in_unit_interval("lam", self.lam)?;
        if !(self.cliprange.is_finite() && self.cliprange > 0.0 && self.cliprange < 1.0) {
            return Err(RlhfError::out_of_range(
                "cliprange",
                self.cliprange,
                "in (0, 1)",
            ));
        }
        positive("cliprange_value", self.cliprange_value)?;
        non_negative("vf_coef", self.vf_coef)?;
        non_negative("entropy_coef", self.entropy_coef)?;
        positive("max_grad_norm", self.max_grad_norm)?;
        non_negative(
            "reward_model.length_penalty",
            self.reward_model.length_penalty,
        )?;
        Ok(())
    }

    /// The library conventions this loop runs under: the `rlhf-lab` preset (k1 KL in the reward, score
    /// on the last response token, `MaskedSteps::Zero`, token-mean losses) with this config's γ, λ, β,
    /// clip ranges and whitening, and CleanRL's k3 estimator for the reported `approx_kl`.
    pub fn conventions(&self, kl_coef: f64) -> Result<Conventions> {
        let mut c = Conventions::preset("rlhf-lab")?;
        c.name = "toy-ppo-loop".into();
        c.kl_coef = kl_coef;
        c.gamma = self.gamma;
        c.lam = self.lam;
        c.whiten_advantages = self.whiten_advantages;
        c.clip_low = self.cliprange;
        c.clip_high = self.cliprange;
        c.value_clip = Some(self.cliprange_value);
        c.approx_kl = KlEstimator::K3;
        Ok(c)
    }
}

/// Embedding → 1-layer GRU → linear head; `forward` maps ids (B, T) to (B, T, out).
#[derive(Debug)]
struct TinyGru {
    embed: nn::Embedding,
    gru: nn::GRU,
    head: nn::Linear,
}

impl TinyGru {
    fn forward(&self, ids: &Tensor) -> Tensor {
        let x = ids.apply(&self.embed);
        let (h, _) = self.gru.seq(&x);
        self.head.forward(&h)
    }
}

/// A model with its own variable store.
struct Net {
    vs: nn::VarStore,
    model: TinyGru,
}

impl Net {
    /// Builds the architecture in f64 and initialises it from `rng`: embeddings U(−1, 1); GRU and head
    /// U(−1/√H, 1/√H) (PyTorch's rule for `nn.GRU` / `nn.Linear`).
    fn new(hidden: usize, out: i64, rng: &mut Rng) -> Result<Net> {
        let h = hidden as i64;
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let root = vs.root();
        let model = TinyGru {
            embed: nn::embedding(&root / "embed", PAD + 1, h, Default::default()),
            gru: nn::gru(&root / "gru", h, h, Default::default()),
            head: nn::linear(&root / "head", h, out, Default::default()),
        };
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let k = 1.0 / (hidden as f64).sqrt();
        for (name, var) in vars {
            let bound = if name.starts_with("embed") { 1.0 } else { k };
            let n = var.numel();
            let vals: Vec<f64> = (0..n)
                .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                .collect();
            let src = Tensor::from_slice(&vals).reshape(var.size());
            let mut dst = var.shallow_clone();
            tch::no_grad(|| dst.f_copy_(&src))?;
        }
        Ok(Net { vs, model })
    }

    /// Response-aligned head outputs (B, L, out): position `P − 1 + t` predicts response token t
    /// (next-token shift), and the critic's value of the state before token t sits at the same position
    /// (TRL / DeepSpeed-Chat alignment).
    fn response_outputs(&self, sequences: &Tensor, l: i64) -> Tensor {
        self.model.forward(sequences).narrow(1, PROMPT_LEN - 1, l)
    }
}

/// One sampled response, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
    /// Response ids up to and including `</s>` (no pads).
    pub response_ids: Vec<i64>,
    pub score: f64,
    pub ended_with_eos: bool,
}

/// The experience buffer of one iteration (seed 001 §3.2.2 "Experience Buffer"). All (B, L) tensors are
/// response-aligned; `mask` is 1 on the response tokens up to and including `</s>`, 0 on pads.
#[derive(Debug)]
pub struct ExperienceBatch {
    /// Index into [`PROMPTS`] of each row.
    pub prompt_index: Vec<usize>,
    /// (B, P + L) int64: left-padded prompt then response (`<pad>` after the end).
    pub sequences: Tensor,
    /// (B, L) int64 response ids, `<pad>` after the end.
    pub responses: Tensor,
    /// (B, L) bool.
    pub mask: Tensor,
    /// Real response lengths (tokens, including `</s>`).
    pub lengths: Vec<i64>,
    /// (B, L) log π_old of the sampled tokens (actor before this iteration's updates).
    pub old_log_probs: Tensor,
    /// (B, L) log π_ref of the sampled tokens.
    pub ref_log_probs: Tensor,
    /// (B, L) critic values V_old(s_t).
    pub values: Tensor,
    /// (B, L) per-token entropy of π_old.
    pub entropy: Tensor,
    /// (B,) RM scores.
    pub scores: Tensor,
    /// β used for the rewards.
    pub kl_coef: f64,
    /// (B, L) KL-shaped rewards `−β·KL_t (+ score on the last real token)`.
    pub rewards: Tensor,
    /// (B, L) per-token k1 KL `log π_old − log π_ref` (0 on pads).
    pub kl: Tensor,
    /// (B, L) bool: steps that carry reward (equals `mask` with last-token placement).
    pub reward_mask: Tensor,
    /// (B, L) GAE advantages (whitened if configured), 0 on pads.
    pub advantages: Tensor,
    /// (B, L) `A + V` (before whitening), the critic's targets.
    pub returns: Tensor,
}

/// One row of the experience buffer as columns, for a notebook table.
#[derive(Debug, Clone, Serialize)]
pub struct ExperienceRow {
    pub prompt: String,
    pub score: f64,
    pub t: Vec<i64>,
    pub token: Vec<String>,
    pub in_mask: Vec<bool>,
    pub old_log_prob: Vec<f64>,
    pub ref_log_prob: Vec<f64>,
    pub kl: Vec<f64>,
    pub reward: Vec<f64>,
    pub value: Vec<f64>,
    pub advantage: Vec<f64>,
    pub ret: Vec<f64>,
}

fn row_f64(t: &Tensor, b: usize) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.get(b as i64).to_kind(Kind::Double))?)
}

impl ExperienceBatch {
    pub fn batch_size(&self) -> usize {
        self.prompt_index.len()
    }

    /// Row `b` laid out position by position.
    pub fn row(&self, b: usize) -> Result<ExperienceRow> {
        if b >= self.batch_size() {
            return Err(RlhfError::out_of_range(
                "row",
                b as f64,
                format!("< batch size {}", self.batch_size()),
            ));
        }
        let ids = Vec::<i64>::try_from(self.responses.get(b as i64))?;
        let mask = Vec::<bool>::try_from(self.mask.get(b as i64))?;
        Ok(ExperienceRow {
            prompt: decode(PROMPTS[self.prompt_index[b]]),
            score: row_f64(&self.scores.unsqueeze(-1), b)?[0],
            t: (0..ids.len() as i64).collect(),
            token: ids.iter().map(|&t| token_name(t).to_string()).collect(),
            in_mask: mask,
            old_log_prob: row_f64(&self.old_log_probs, b)?,
            ref_log_prob: row_f64(&self.ref_log_probs, b)?,
            kl: row_f64(&self.kl, b)?,
            reward: row_f64(&self.rewards, b)?,
            value: row_f64(&self.values, b)?,
            advantage: row_f64(&self.advantages, b)?,
            ret: row_f64(&self.returns, b)?,
        })
    }
}

/// Statistics of one iteration. Experience-side numbers describe the rollouts collected at the start of
/// the iteration (before its updates); loss-side numbers are means over its `ppo_epochs ·
/// num_minibatches` minibatch steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterMetrics {
    pub iteration: usize,
    /// β used for this iteration's rewards.
    pub kl_coef: f64,
    /// Mean RM score of the rollouts.
    pub score_mean: f64,
    /// Mean over rollouts of the sequence KL `Σ_t (log π_old − log π_ref)` (k1, unbiased).
    pub kl_mean: f64,
    /// `score − β·KL`, the KL-regularised objective (TRL `objective/rlhf_reward`).
    pub rlhf_reward_mean: f64,
    /// Mean response length (tokens, including `</s>`).
    pub response_len_mean: f64,
    /// Fraction of responses that ended with `</s>` (the rest hit `max_response_len`).
    pub eos_frac: f64,
    /// Mean per-token entropy of π_old on response tokens.
    pub entropy_mean: f64,
    /// Critic's explained variance of the returns, `1 − Var(R − V)/Var(R)` on response tokens.
    pub explained_variance: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    /// Fraction of tokens where the ratio clip is active.
    pub clipfrac: f64,
    /// Fraction of tokens where the value clip is active.
    pub value_clipfrac: f64,
    /// k3 estimate of KL(π_old ‖ π_θ) during the updates (CleanRL `approx_kl`).
    pub approx_kl: f64,
}

/// Means of the minibatch statistics of one PPO update.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clipfrac: f64,
    pub value_clipfrac: f64,
    pub approx_kl: f64,
}

/// Which policy [`PpoTrainer::sample`] draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    Actor,
    Reference,
}

/// The four models, the optimisers, the KL controller and the random stream. Drive it step by step
/// ([`PpoTrainer::make_experience`], [`PpoTrainer::ppo_update`]) or whole ([`train`]).
pub struct PpoTrainer {
    cfg: PpoLoopConfig,
    actor: Net,
    reference: Net,
    critic: Net,
    actor_opt: nn::Optimizer,
    critic_opt: nn::Optimizer,
    kl_ctl: Box<dyn KlController + Send>,
    rng: Rng,
    iteration: usize,
}

impl PpoTrainer {
    /// Builds actor, critic (random init from `cfg.seed`), reference (frozen copy of the actor) and the
    /// Adam optimisers.
    pub fn new(cfg: &PpoLoopConfig) -> Result<Self> {
        cfg.validate()?;
        let _threads = SingleThread::new();
        tch::manual_seed(cfg.seed);
        let mut rng = Rng::new(cfg.seed as u64);
        let actor = Net::new(cfg.hidden, VOCAB, &mut rng)?;
        let critic = Net::new(cfg.hidden, 1, &mut rng)?;
        let mut reference = Net::new(cfg.hidden, VOCAB, &mut rng)?;
        reference.vs.copy(&actor.vs)?;
        reference.vs.freeze();
        let actor_opt = nn::Adam::default().build(&actor.vs, cfg.lr)?;
        let critic_opt = nn::Adam::default().build(&critic.vs, cfg.lr)?;
        let kl_ctl: Box<dyn KlController + Send> = match cfg.kl_target {
            Some(target) => Box::new(AdaptiveKlController::new(
                cfg.kl_coef,
                target,
                cfg.kl_horizon,
            )?),
            None => Box::new(FixedKlController::new(cfg.kl_coef)?),
        };
        Ok(PpoTrainer {
            cfg: cfg.clone(),
            actor,
            reference,
            critic,
            actor_opt,
            critic_opt,
            kl_ctl,
            rng,
            iteration: 0,
        })
    }

    pub fn config(&self) -> &PpoLoopConfig {
        &self.cfg
    }

    /// Current β.
    pub fn kl_coef(&self) -> f64 {
        self.kl_ctl.value()
    }

    /// Iterations completed by [`PpoTrainer::step`].
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// Samples a response for each prompt index with `policy` (no grad): token by token from the
    /// softmax of the last position's logits, until `</s>` or `max_response_len`. Returns (B, P + L)
    /// sequences, (B, L) responses, lengths.
    fn generate(
        &mut self,
        policy: Policy,
        prompt_index: &[usize],
    ) -> Result<(Tensor, Tensor, Vec<i64>)> {
        let b = prompt_index.len();
        let l = self.cfg.max_response_len;
        let mut rows: Vec<i64> = Vec::with_capacity(b * PROMPT_LEN as usize);
        for &p in prompt_index {
            let prompt = PROMPTS[p];
            rows.extend(std::iter::repeat_n(PAD, PROMPT_LEN as usize - prompt.len()));
            rows.extend_from_slice(prompt);
        }
        let mut seq = Tensor::from_slice(&rows).view([b as i64, PROMPT_LEN]);
        let mut resp = vec![PAD; b * l];
        let mut lengths = vec![0i64; b];
        let mut done = vec![false; b];
        let net = match policy {
            Policy::Actor => &self.actor,
            Policy::Reference => &self.reference,
        };
        for t in 0..l {
            let probs = tch::no_grad(|| {
                net.model
                    .forward(&seq)
                    .select(1, -1)
                    .softmax(-1, Kind::Double)
            });
            let p = Vec::<f64>::try_from(probs.flatten(0, -1))?;
            let v = VOCAB as usize;
            let mut next = vec![PAD; b];
            for i in 0..b {
                if done[i] {
                    continue;
                }
                let tok = self
                    .rng
                    .categorical(&p[i * v..(i + 1) * v])
                    .ok_or_else(|| RlhfError::NonFinite {
                        arg: "policy probabilities".into(),
                        count: 1,
                    })? as i64;
                next[i] = tok;
                resp[i * l + t] = tok;
                lengths[i] += 1;
                done[i] = tok == EOS;
            }
            let col = Tensor::from_slice(&next).view([b as i64, 1]);
            seq = Tensor::cat(&[seq, col], 1);
            if done.iter().all(|&d| d) {
                break;
            }
        }
        let cur = seq.size()[1];
        let full = PROMPT_LEN + l as i64;
        if cur < full {
            let pad = Tensor::full([b as i64, full - cur], PAD, (Kind::Int64, Device::Cpu));
            seq = Tensor::cat(&[seq, pad], 1);
        }
        let responses = Tensor::from_slice(&resp).view([b as i64, l as i64]);
        Ok((seq, responses, lengths))
    }

    /// Seed 003 pseudo-code, first half: generate, score, forward the actor / reference / critic, and
    /// turn scores and KL into rewards, advantages and returns ([`ppo_experience`]).
    pub fn make_experience(&mut self) -> Result<ExperienceBatch> {
        let _threads = SingleThread::new();
        let b = self.cfg.batch_size;
        let l = self.cfg.max_response_len as i64;
        let prompt_index: Vec<usize> = (0..b).map(|_| self.rng.below(PROMPTS.len())).collect();
        let (sequences, responses, lengths) = self.generate(Policy::Actor, &prompt_index)?;
        let mask = responses.ne(PAD);

        // batch_scores = reward_model(batch_data)
        let resp_rows = Vec::<Vec<i64>>::try_from(&responses)?;
        let scores: Vec<f64> = prompt_index
            .iter()
            .zip(&resp_rows)
            .map(|(&p, r)| self.cfg.reward_model.score(PROMPTS[p], r))
            .collect();
        let scores = Tensor::from_slice(&scores);

        // forward passes of actor, reference and critic on concat(prompt, response)
        let (old_log_probs, entropy_t, ref_log_probs, values) = tch::no_grad(|| -> Result<_> {
            let logits = self.actor.response_outputs(&sequences, l);
            let old = token_log_probs(&logits, &responses, &mask)?;
            let ent = entropy(&logits, &mask)?;
            let ref_logits = self.reference.response_outputs(&sequences, l);
            let rf = token_log_probs(&ref_logits, &responses, &mask)?;
            let v = self.critic.response_outputs(&sequences, l).squeeze_dim(-1);
            Ok((old, ent, rf, v))
        })?;

        // rewards = compute_rewards(scores, kls); advantages = GAE; returns = advantages + values
        let kl_coef = self.kl_ctl.value();
        let conv = self.cfg.conventions(kl_coef)?;
        let exp = ppo_experience(
            &old_log_probs,
            &ref_log_probs,
            &values,
            &scores,
            &mask,
            &conv,
        )?;
        Ok(ExperienceBatch {
            prompt_index,
            sequences,
            responses,
            mask,
            lengths,
            old_log_probs,
            ref_log_probs,
            values,
            entropy: entropy_t,
            scores,
            kl_coef,
            rewards: exp.rewards,
            kl: exp.kl,
            reward_mask: exp.reward_mask,
            advantages: exp.advantages,
            returns: exp.returns,
        })
    }

    /// Seed 003 pseudo-code, second half: `ppo_epochs` passes over shuffled minibatches, each a
    /// clipped-surrogate + clipped-value-loss Adam step on actor and critic.
    pub fn ppo_update(&mut self, batch: &ExperienceBatch) -> Result<UpdateStats> {
        let _threads = SingleThread::new();
        let cfg = self.cfg.clone();
        let conv = cfg.conventions(batch.kl_coef)?;
        let l = cfg.max_response_len as i64;
        let b = batch.batch_size();
        let mb = b / cfg.num_minibatches;
        let mut sums = [0.0f64; 5];
        let mut steps = 0usize;
        let mut order: Vec<i64> = (0..b as i64).collect();
        for _epoch in 0..cfg.ppo_epochs {
            self.rng.shuffle(&mut order);
            for chunk in order.chunks(mb) {
                let idx = Tensor::from_slice(chunk);
                let pick = |t: &Tensor| t.index_select(0, &idx);
                let (seq, labels, mask) = (
                    pick(&batch.sequences),
                    pick(&batch.responses),
                    pick(&batch.mask),
                );
                let logits = self.actor.response_outputs(&seq, l);
                let log_probs = token_log_probs(&logits, &labels, &mask)?;
                let ent = entropy(&logits, &mask)?;
                let new_values = self.critic.response_outputs(&seq, l).squeeze_dim(-1);
                let obj = ppo_objective(
                    &PpoMinibatch {
                        log_probs: &log_probs,
                        entropy: &ent,
                        values: &new_values,
                        old_log_probs: &pick(&batch.old_log_probs),
                        old_values: &pick(&batch.values),
                        advantages: &pick(&batch.advantages),
                        returns: &pick(&batch.returns),
                        response_mask: &mask,
                        reward_mask: &pick(&batch.reward_mask),
                    },
                    &conv,
                    cfg.vf_coef,
                    cfg.entropy_coef,
                )?;
                let (pg, vf, loss) = (&obj.policy, &obj.value, &obj.loss);
                self.actor_opt.zero_grad();
                self.critic_opt.zero_grad();
                loss.f_backward()?;
                self.actor_opt.clip_grad_norm(cfg.max_grad_norm);
                self.critic_opt.clip_grad_norm(cfg.max_grad_norm);
                self.actor_opt.step();
                self.critic_opt.step();
                for (s, t) in sums.iter_mut().zip([
                    &pg.loss,
                    &vf.loss,
                    &pg.clipfrac,
                    &vf.clipfrac,
                    &pg.approx_kl,
                ]) {
                    *s += scalar(&t.detach())?;
                }
                steps += 1;
            }
        }
        let n = steps as f64;
        Ok(UpdateStats {
            policy_loss: sums[0] / n,
            value_loss: sums[1] / n,
            clipfrac: sums[2] / n,
            value_clipfrac: sums[3] / n,
            approx_kl: sums[4] / n,
        })
    }

    /// One iteration: experience, PPO update, KL-controller update.
    pub fn step(&mut self) -> Result<IterMetrics> {
        let batch = self.make_experience()?;
        let exp = experience_stats(&batch)?;
        let upd = self.ppo_update(&batch)?;
        self.kl_ctl.update(exp.kl_mean, batch.batch_size() as u64)?;
        let m = IterMetrics {
            iteration: self.iteration,
            kl_coef: batch.kl_coef,
            score_mean: exp.score_mean,
            kl_mean: exp.kl_mean,
            rlhf_reward_mean: exp.score_mean - batch.kl_coef * exp.kl_mean,
            response_len_mean: exp.response_len_mean,
            eos_frac: exp.eos_frac,
            entropy_mean: exp.entropy_mean,
            explained_variance: exp.explained_variance,
            policy_loss: upd.policy_loss,
            value_loss: upd.value_loss,
            clipfrac: upd.clipfrac,
            value_clipfrac: upd.value_clipfrac,
            approx_kl: upd.approx_kl,
        };
        self.iteration += 1;
        Ok(m)
    }

    /// `per_prompt` sampled responses for each prompt of [`PROMPTS`], from the actor or the reference.
    pub fn sample(&mut self, policy: Policy, per_prompt: usize) -> Result<Vec<Sample>> {
        let _threads = SingleThread::new();
        let prompt_index: Vec<usize> = (0..PROMPTS.len())
            .flat_map(|p| std::iter::repeat_n(p, per_prompt))
            .collect();
        if prompt_index.is_empty() {
            return Ok(vec![]);
        }
        let (_, responses, lengths) = self.generate(policy, &prompt_index)?;
        let rows = Vec::<Vec<i64>>::try_from(&responses)?;
        Ok(prompt_index
            .iter()
            .zip(rows)
            .zip(lengths)
            .map(|((&p, r), n)| {
                let ids: Vec<i64> = r[..n as usize].to_vec();
                Sample {
                    prompt: decode(PROMPTS[p]),
                    response: decode(&ids),
                    score: self.cfg.reward_model.score(PROMPTS[p], &ids),
                    ended_with_eos: ids.last() == Some(&EOS),
                    response_ids: ids,
                }
            })
            .collect())
    }
}

struct ExperienceStats {
    score_mean: f64,
    kl_mean: f64,
    response_len_mean: f64,
    eos_frac: f64,
    entropy_mean: f64,
    explained_variance: f64,
}

fn experience_stats(batch: &ExperienceBatch) -> Result<ExperienceStats> {
    let b = batch.batch_size() as f64;
    let kl_seq = batch.kl.sum_dim_intlist(&[-1i64][..], false, Kind::Double);
    let rows = Vec::<Vec<i64>>::try_from(&batch.responses)?;
    let eos = rows
        .iter()
        .zip(&batch.lengths)
        .filter(|(r, &n)| r[n as usize - 1] == EOS)
        .count();
    let m = &batch.reward_mask;
    let var_r = scalar(&masked_var(&batch.returns, m, false)?)?;
    let var_resid = scalar(&masked_var(&(&batch.returns - &batch.values), m, false)?)?;
    Ok(ExperienceStats {
        score_mean: scalar(&batch.scores.mean(Kind::Double))?,
        kl_mean: scalar(&kl_seq.mean(Kind::Double))?,
        response_len_mean: batch.lengths.iter().sum::<i64>() as f64 / b,
        eos_frac: eos as f64 / b,
        entropy_mean: scalar(&masked_mean(
            &batch.entropy,
            &batch.mask,
            None,
            EmptyRows::Error,
        )?)?,
        explained_variance: if var_r > 0.0 {
            1.0 - var_resid / var_r
        } else {
            0.0
        },
    })
}

/// Result of [`train`].
#[derive(Debug, Clone, Serialize)]
pub struct PpoLoopRun {
    pub config: PpoLoopConfig,
    /// Best reachable score ([`ToyRewardModel::optimal_score`]).
    pub optimal_score: f64,
    pub metrics: Vec<IterMetrics>,
    /// Two responses per prompt from the reference policy (= the actor before training).
    pub samples_before: Vec<Sample>,
    /// Two responses per prompt from the trained actor.
    pub samples_after: Vec<Sample>,
    /// Mean RM score of [`REFERENCE_SAMPLES_PER_PROMPT`] reference responses per prompt: an estimate of
    /// `E_{π_ref}[r]` (drawn after training, so it does not perturb the run's random stream).
    pub reference_score_mean: f64,
}

impl PpoLoopRun {
    /// Mean of `f` over the first `n` iterations.
    pub fn mean_first(&self, n: usize, f: fn(&IterMetrics) -> f64) -> f64 {
        let xs: Vec<f64> = self.metrics.iter().take(n).map(f).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    }
    /// Mean of `f` over the last `n` iterations.
    pub fn mean_last(&self, n: usize, f: fn(&IterMetrics) -> f64) -> f64 {
        let xs: Vec<f64> = self.metrics.iter().rev().take(n).map(f).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    }
    /// One column of the metrics, for plotting.
    pub fn series(&self, f: fn(&IterMetrics) -> f64) -> Vec<f64> {
        self.metrics.iter().map(f).collect()
    }
    /// Upper bound on the KL of the KL-regularised optimum, `(r_max − E_{π_ref}[r]) / β`, for a fixed
    /// β > 0 (`None` otherwise). The optimum of `E_π[r] − β·KL(π‖π_ref)` is `π* ∝ π_ref·exp(r/β)`
    /// (Ziegler et al. 2019; Rafailov et al. 2023 eq. 4), whose KL is `E*[r]/β − log Z`, and
    /// `log Z = log E_ref[exp(r/β)] ≥ E_ref[r]/β` by Jensen.
    pub fn kl_bound(&self) -> Option<f64> {
        let beta = self.config.kl_coef;
        (self.config.kl_target.is_none() && beta > 0.0)
            .then(|| (self.optimal_score - self.reference_score_mean) / beta)
    }
    /// Iteration numbers, for plotting.
    pub fn iterations(&self) -> Vec<f64> {
        self.metrics.iter().map(|m| m.iteration as f64).collect()
    }
}

/// Reference samples per prompt behind [`PpoLoopRun::reference_score_mean`].
pub const REFERENCE_SAMPLES_PER_PROMPT: usize = 100;

/// The whole loop: `cfg.iterations` iterations of [`PpoTrainer::step`], plus samples before and after.
pub fn train(cfg: &PpoLoopConfig) -> Result<PpoLoopRun> {
    let mut trainer = PpoTrainer::new(cfg)?;
    let samples_before = trainer.sample(Policy::Reference, 2)?;
    let mut metrics = Vec::with_capacity(cfg.iterations);
    for _ in 0..cfg.iterations {
        metrics.push(trainer.step()?);
    }
    let samples_after = trainer.sample(Policy::Actor, 2)?;
    let reference = trainer.sample(Policy::Reference, REFERENCE_SAMPLES_PER_PROMPT)?;
    let reference_score_mean =
        reference.iter().map(|s| s.score).sum::<f64>() / reference.len() as f64;
    Ok(PpoLoopRun {
        config: cfg.clone(),
        optimal_score: cfg.reward_model.optimal_score(cfg.max_response_len),
        metrics,
        samples_before,
        samples_after,
        reference_score_mean,
    })
}

/// [`train`] once per β in `kl_coefs` (fixed β; everything else from `base`, same seed).
pub fn kl_coef_sweep(base: &PpoLoopConfig, kl_coefs: &[f64]) -> Result<Vec<PpoLoopRun>> {
    kl_coefs
        .iter()
        .map(|&kl_coef| {
            train(&PpoLoopConfig {
                kl_coef,
                kl_target: None,
                ..base.clone()
            })
        })
        .collect()
}
