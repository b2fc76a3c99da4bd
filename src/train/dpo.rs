//! Direct Preference Optimization and its baselines: a policy trained on preference pairs against a
//! frozen reference, both initialised from an SFT run.
//!
//! **Models.** Policy π_θ and reference π_ref are two copies of the newest checkpoint of `sft_run`
//! (Rafailov et al. 2023 §4: π_ref = π^SFT); the reference is frozen.
//!
//! **Log-probs.** For a pair (x, y_w, y_l) both sequences `x ‖ y ‖ EOS` are padded into one batch
//! (left or right, `data.padding`; rows `2b` = chosen, `2b + 1` = rejected — TRL's
//! `concatenated_forward`) and `log π(y | x) = Σ_t log π(y_t | x, y_<t)` is summed over the completion
//! tokens only, prompt and padding masked ([`completion_logps`]; seed 003 "DPO": `logits[:, :-1]`
//! predicts `labels[:, 1:]`).
//!
//! **Reference cache.** `log π_ref(y_w | x)` and `log π_ref(y_l | x)` of every training and validation
//! pair are computed **once**, before the loop, in fixed batches, and kept in memory (the reference
//! model is then dropped); they are also written to `reference_logps.safetensors` in the run directory
//! so a resumed run reloads the same bits instead of recomputing (TRL `precompute_ref_log_probs`).
//!
//! **Objective** (`loss.objective`; every formula from [`crate::core::dpo`], seed 002's loss family),
//! with `h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))`:
//! * `dpo`: `−logσ(βh)` (Rafailov et al. 2023 eq. 7);
//! * `cdpo`: `−(1−ε)·logσ(βh) − ε·logσ(−βh)` (conservative DPO, label smoothing ε);
//! * `robust`: `(−(1−ε)·logσ(βh) + ε·logσ(−βh)) / (1 − 2ε)` (Chowdhury et al. 2024);
//! * `ipo`: `(h − 1/(2β))²` (Azar et al. 2023 eq. 17; per-token-averaged log-probs by default);
//! * `hinge`: `relu(1 − βh)` (SLiC, Zhao et al. 2023);
//! * `preferred-ft`: per-token NLL of y_w only (Rafailov et al. 2023 §6 baseline);
//! * `unlikelihood`: `−log π(y_w) − α·log(1 − π(y_l))` (Welleck et al. 2019; Rafailov et al. §6).
//!
//! **Metrics** (TRL `DPOTrainer` names): `loss`, `rewards/chosen` and `rewards/rejected` (implicit
//! rewards `β·(log π − log π_ref)`, Rafailov et al. §5), `rewards/accuracies`, `rewards/margins`,
//! `logps/chosen`, `logps/rejected`, `grad_norm`, `lr`, and `val/…` over the whole validation split at
//! each evaluation. The baselines log the same implicit rewards (with `loss.beta`) as diagnostics.
//!
//! **Dropout** is off in the policy's forward pass unless `policy_dropout = true` (TRL's
//! `disable_dropout = True` default), so at step 0 the policy equals the reference: loss = log 2 for
//! `dpo`, implicit rewards 0 (tested).
//!
//! **Determinism and resume** as in [`crate::train::sft`]: `tch::manual_seed(seed + step)` before each
//! step, data order from the checkpointed [`SplitMix64`] (pairs drawn uniformly with replacement),
//! atomic checkpoints of the policy and the AdamW moments, bit-identical metrics after SIGKILL + resume
//! (tests/train_dpo.rs).

use crate::core::dpo::{
    dpo_loss, preferred_ft_loss, unlikelihood_loss, DpoConfig, DpoOutput, DpoVariant, PairLogps,
};
use crate::error::{Result, RlhfError};
use crate::model::RlhfLm;
use crate::rng::SplitMix64;
use crate::train::batch::{
    collate_groups, completion_logps, load_preference_groups, Padding, PreferenceFormat,
    RankedGroup,
};
use crate::train::config::{self, OptimSection, TrainConfig};
use crate::train::eval::{EvalSection, Evaluator};
use crate::train::lm::LoadedLm;
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::report::{self, Panel, Series};
use crate::train::run::{self, CheckpointState, Run};
pub use crate::train::run::{ResumeMode, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The reference log-prob cache in the run directory.
pub const REFERENCE_FILE: &str = "reference_logps.safetensors";

/// Which DPO-family objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpoObjective {
    Dpo,
    Cdpo,
    Robust,
    Ipo,
    Hinge,
    PreferredFt,
    Unlikelihood,
}

/// `[data]`: the preference pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoDataSection {
    /// TRL preference JSONL (prompt, chosen, rejected); split into train / validation by the prompt's
    /// hash.
    pub path: PathBuf,
    /// `right` (TRL's training layout) or `left` (generation's layout); the log-probs are the same.
    #[serde(default)]
    pub padding: Padding,
    /// Use only the first N training pairs.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Use only the first N validation pairs.
    #[serde(default)]
    pub max_val: Option<usize>,
}

/// `[loss]`: the objective and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoLossSection {
    /// `dpo`, `cdpo`, `robust`, `ipo`, `hinge`, `preferred-ft` or `unlikelihood`.
    pub objective: DpoObjective,
    /// β > 0: strength of the KL constraint (also scales the logged implicit rewards).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// ε, the label-noise rate: required by `cdpo` (0 < ε < 0.5) and `robust` (0 ≤ ε < 0.5), refused
    /// by the others.
    #[serde(default)]
    pub label_smoothing: Option<f64>,
    /// α ∈ [0, 1], the unlikelihood weight: required by `unlikelihood`, refused by the others.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// `ipo` only: average each sequence log-prob over its tokens (TRL) instead of summing (OpenRLHF).
    #[serde(default = "yes")]
    pub ipo_length_normalize: bool,
}

fn default_beta() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}

/// A whole DPO run configuration (`configs/dpo-*.toml`). Unknown keys are errors. (Named apart from
/// [`crate::core::dpo::DpoConfig`], the loss options.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoTrainConfig {
    /// Run name: the run directory is `reports/<name>` unless `--out` says otherwise.
    pub name: String,
    /// Seeds the data order and the per-step dropout masks.
    #[serde(default)]
    pub seed: i64,
    /// libtorch intra-op threads (absent: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    /// The SFT run directory whose newest checkpoint (and tokenizer) is both policy and reference.
    pub sft_run: PathBuf,
    /// Dropout in the policy's training forward pass (false: TRL's `disable_dropout`).
    #[serde(default)]
    pub policy_dropout: bool,
    /// Evaluate on the validation split every this many steps (and at step 0 and at the end).
    pub eval_interval: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_interval: u64,
    /// Log a metrics row every this many steps.
    #[serde(default = "one_u64")]
    pub log_interval: u64,
    /// Checkpoints kept on disk (≥ 1).
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    pub data: DpoDataSection,
    pub loss: DpoLossSection,
    /// AdamW + schedule; `batch_size` counts pairs per micro-batch.
    pub optim: OptimSection,
    /// Optional generative evaluation at every eval step (held-out prefixes, ground truth, exact KL to
    /// the reference: the reward–KL frontier's axes, [`crate::train::eval`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSection>,
}

fn one_u64() -> u64 {
    1
}
fn two() -> usize {
    2
}

impl DpoLossSection {
    /// The core loss options of a DPO-type objective (None for the two baselines).
    pub fn core_config(&self) -> Option<DpoConfig> {
        let variant = match self.objective {
            DpoObjective::Dpo | DpoObjective::Cdpo => DpoVariant::Sigmoid,
            DpoObjective::Robust => DpoVariant::Robust,
            DpoObjective::Ipo => DpoVariant::Ipo,
            DpoObjective::Hinge => DpoVariant::Hinge,
            DpoObjective::PreferredFt | DpoObjective::Unlikelihood => return None,
        };
        let mut c = DpoConfig::new(self.beta, variant);
        c.label_smoothing = self.label_smoothing.unwrap_or(0.0);
        c.ipo_length_normalize = self.ipo_length_normalize;
        Some(c)
    }

    fn validate(&self) -> Result<()> {
        use crate::core::check;
        check::positive("loss.beta", self.beta)?;
        let o = self.objective;
        match (o, self.label_smoothing) {
            (DpoObjective::Cdpo, Some(e)) => {
                if !(e > 0.0 && e < 0.5) {
                    return Err(RlhfError::out_of_range(
                        "loss.label_smoothing",
                        e,
                        "in (0, 0.5) for cdpo",
                    ));
                }
            }
            (DpoObjective::Robust, Some(e)) => {
                check::label_smoothing("loss.label_smoothing", e)?;
            }
            (DpoObjective::Cdpo | DpoObjective::Robust, None) => {
                return Err(RlhfError::invalid(
                    "loss.label_smoothing",
                    format!("objective {o:?} needs the label-noise rate ε"),
                ))
            }
            (_, Some(_)) => {
                return Err(RlhfError::invalid(
                    "loss.label_smoothing",
                    format!("only cdpo and robust take ε, not {o:?}"),
                ))
            }
            (_, None) => {}
        }
        match (o, self.alpha) {
            (DpoObjective::Unlikelihood, Some(a)) => check::in_unit_interval("loss.alpha", a)?,
            (DpoObjective::Unlikelihood, None) => {
                return Err(RlhfError::invalid(
                    "loss.alpha",
                    "objective unlikelihood needs the weight α",
                ))
            }
            (_, Some(_)) => {
                return Err(RlhfError::invalid(
                    "loss.alpha",
                    format!("only unlikelihood takes α, not {o:?}"),
                ))
            }
            (_, None) => {}
        }
        Ok(())
    }
}

impl TrainConfig for DpoTrainConfig {
    fn validate(&self) -> Result<()> {
        use crate::core::check::at_least;
        config::validate_name(&self.name)?;
        if self.sft_run.as_os_str().is_empty() {
            return Err(RlhfError::invalid("sft_run", "an empty path"));
        }
        if self.data.path.as_os_str().is_empty() {
            return Err(RlhfError::invalid("data.path", "an empty path"));
        }
        for (arg, v) in [
            ("data.max_train", self.data.max_train),
            ("data.max_val", self.data.max_val),
        ] {
            if let Some(v) = v {
                at_least(arg, v as i64, 1)?;
            }
        }
        self.loss.validate()?;
        self.optim.validate()?;
        at_least("eval_interval", self.eval_interval as i64, 1)?;
        if let Some(e) = &self.eval {
            e.validate()?;
        }
        at_least("checkpoint_interval", self.checkpoint_interval as i64, 1)?;
        at_least("log_interval", self.log_interval as i64, 1)?;
        at_least("keep_checkpoints", self.keep_checkpoints as i64, 1)?;
        if let Some(t) = self.threads {
            at_least("threads", i64::from(t), 1)?;
        }
        Ok(())
    }
}

impl DpoTrainConfig {
    /// Parses and validates a TOML file ([`config::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config::from_file(path)
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        config::from_toml(text, source_name)
    }
}

/// One row of `metrics.csv`: `step`, `tokens`, then [`DpoRow::COLUMNS`]. Step 0 has only `val/…`.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoRow {
    pub step: u64,
    /// Real (non-pad) training tokens consumed so far.
    pub tokens: u64,
    /// Aligned with [`DpoRow::COLUMNS`].
    pub values: Vec<Option<f64>>,
}

/// The per-pair quantities logged, in this order, for train and (prefixed `val/`) validation.
const PAIR_STATS: [&str; 7] = [
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

impl DpoRow {
    /// TRL `DPOTrainer` names.
    pub const COLUMNS: [&'static str; 24] = [
        "lr",
        "grad_norm",
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "val/loss",
        "val/rewards/chosen",
        "val/rewards/rejected",
        "val/rewards/accuracies",
        "val/rewards/margins",
        "val/logps/chosen",
        "val/logps/rejected",
        "eval/score",
        "eval/score_sigmoid",
        "eval/kl_exact",
        "eval/kl_k1",
        "eval/kl_k3",
        "eval/entropy",
        "eval/response_len",
        "eval/distinct_2",
    ];

    /// The value of column `name` (None if empty or unknown).
    pub fn get(&self, name: &str) -> Option<f64> {
        let j = Self::COLUMNS.iter().position(|c| *c == name)?;
        self.values.get(j).copied().flatten()
    }
}

impl run::MetricsRow for DpoRow {
    fn columns() -> &'static [&'static str] {
        &Self::COLUMNS
    }
    fn step(&self) -> u64 {
        self.step
    }
    fn tokens(&self) -> u64 {
        self.tokens
    }
    fn values(&self) -> Vec<Option<f64>> {
        self.values.clone()
    }
    fn from_values(step: u64, tokens: u64, v: &[Option<f64>]) -> Self {
        let mut values = v.to_vec();
        values.resize(Self::COLUMNS.len(), None);
        DpoRow {
            step,
            tokens,
            values,
        }
    }
}

/// Per-pair sums of [`PAIR_STATS`] and the pair count, so batches combine exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    sums: [f64; 7],
    pairs: f64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        for (a, b) in self.sums.iter_mut().zip(o.sums) {
            *a += b;
        }
        self.pairs += o.pairs;
    }
    fn means(&self) -> [f64; 7] {
        self.sums.map(|s| s / self.pairs.max(1.0))
    }
}

/// Sequence log-probs of a batch of pairs under one model: `(B,)` chosen, `(B,)` rejected log-probs,
/// and their `(B,)` completion token counts.
pub fn pair_logps(
    model: &dyn RlhfLm,
    pairs: &[&RankedGroup],
    pad_id: i64,
    padding: Padding,
    device: Device,
    train: bool,
) -> Result<[Tensor; 4]> {
    let batch = collate_groups(pairs, pad_id, padding, device)?; // (2B, T): chosen, rejected, …
    let (logps, counts) = completion_logps(model, &batch, train)?; // (2B,), (2B,)
    let b = pairs.len() as i64;
    let logps = logps.view([b, 2]); // (B, 2)
    let counts = counts.view([b, 2]); // (B, 2)
    Ok([
        logps.select(1, 0),
        logps.select(1, 1),
        counts.select(1, 0),
        counts.select(1, 1),
    ])
}

/// Reference log-probs of every pair, `(N,)` chosen and `(N,)` rejected, computed without gradient in
/// fixed consecutive batches of `b` (so the same call always gives the same bits).
pub fn reference_logps(
    reference: &dyn RlhfLm,
    pairs: &[RankedGroup],
    b: usize,
    pad_id: i64,
    padding: Padding,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        let refs: Vec<&RankedGroup> = pairs.iter().collect();
        for chunk in refs.chunks(b.max(1)) {
            let [c, r, _, _] = pair_logps(reference, chunk, pad_id, padding, device, false)?;
            chosen.push(c);
            rejected.push(r);
        }
        Ok(())
    })?;
    Ok((Tensor::cat(&chosen, 0), Tensor::cat(&rejected, 0)))
}

/// The objective and its logged statistics for a batch, from the policy's and the cached reference's
/// `(B,)` log-probs and the `(B,)` completion token counts (`[chosen, rejected, chosen counts,
/// rejected counts]` as [`pair_logps`] returns them). Public so the performance suite times the
/// trainer's own step.
pub fn objective(
    cfg: &DpoLossSection,
    [pc, pr, nc, nr]: &[Tensor; 4],
    rc: &Tensor,
    rr: &Tensor,
) -> Result<(Tensor, Stats)> {
    let lp = PairLogps {
        policy_chosen: pc,
        policy_rejected: pr,
        ref_chosen: rc,
        ref_rejected: rr,
        chosen_lengths: Some(nc),
        rejected_lengths: Some(nr),
    };
    // Implicit rewards: those of the objective itself, or (baselines) of DPO with the same β.
    let diag_cfg = DpoConfig::new(cfg.beta, DpoVariant::Sigmoid);
    let (loss, out): (Tensor, DpoOutput) = match (cfg.core_config(), cfg.objective) {
        (Some(c), _) => {
            let out = dpo_loss(&lp, &c)?;
            (out.loss.shallow_clone(), out)
        }
        (None, DpoObjective::PreferredFt) => {
            (preferred_ft_loss(pc, Some(nc))?, dpo_loss(&lp, &diag_cfg)?)
        }
        (None, _) => (
            unlikelihood_loss(pc, pr, cfg.alpha.unwrap_or(1.0))?,
            dpo_loss(&lp, &diag_cfg)?,
        ),
    };
    let b = pc.size()[0] as f64;
    let mean = |t: &Tensor| -> Result<f64> {
        Ok(t.detach()
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .f_double_value(&[])?)
    };
    let means = [
        loss.detach().to_kind(Kind::Double).f_double_value(&[])?,
        mean(&out.chosen_rewards)?,
        mean(&out.rejected_rewards)?,
        out.reward_accuracy
            .to_kind(Kind::Double)
            .f_double_value(&[])?,
        out.reward_margin
            .to_kind(Kind::Double)
            .f_double_value(&[])?,
        mean(pc)?,
        mean(pr)?,
    ];
    Ok((
        loss,
        Stats {
            sums: means.map(|m| m * b),
            pairs: b,
        },
    ))
}

/// The cached reference log-probs of the training and validation pairs.
struct RefCache {
    train_chosen: Tensor,
    train_rejected: Tensor,
    val_chosen: Tensor,
    val_rejected: Tensor,
}

impl RefCache {
    const NAMES: [&'static str; 4] = [
        "train_chosen",
        "train_rejected",
        "val_chosen",
        "val_rejected",
    ];

    fn tensors(&self) -> [&Tensor; 4] {
        [
            &self.train_chosen,
            &self.train_rejected,
            &self.val_chosen,
            &self.val_rejected,
        ]
    }

    fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, Tensor)> = Self::NAMES
            .iter()
            .zip(self.tensors())
            .map(|(n, t)| (n.to_string(), t.to_device(Device::Cpu)))
            .collect();
        crate::io::save_tensors(path, &named)
    }

    /// The file's tensors if it holds exactly the expected ones with `n_train` / `n_val` entries.
    fn load(path: &Path, n_train: i64, n_val: i64, device: Device) -> Result<Option<Self>> {
        if !path.is_file() {
            return Ok(None);
        }
        let named = crate::io::load_tensors(path)?;
        let get = |name: &str, n: i64| -> Option<Tensor> {
            named
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, t)| t.to_device(device))
                .filter(|t| t.size() == [n])
        };
        Ok(
            match (
                get("train_chosen", n_train),
                get("train_rejected", n_train),
                get("val_chosen", n_val),
                get("val_rejected", n_val),
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => Some(RefCache {
                    train_chosen: a,
                    train_rejected: b,
                    val_chosen: c,
                    val_rejected: d,
                }),
                _ => None,
            },
        )
    }
}

/// Validation statistics over every pair, in batches of `b`.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    policy: &dyn RlhfLm,
    val: &[RankedGroup],
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    b: usize,
    pad_id: i64,
    cfg: &DpoTrainConfig,
    device: Device,
) -> Result<Stats> {
    let mut total = Stats::default();
    tch::no_grad(|| -> Result<()> {
        let refs: Vec<&RankedGroup> = val.iter().collect();
        for (i, chunk) in refs.chunks(b).enumerate() {
            let lp = pair_logps(policy, chunk, pad_id, cfg.data.padding, device, false)?;
            let (start, n) = ((i * b) as i64, chunk.len() as i64);
            let (rc, rr) = (
                ref_chosen.narrow(0, start, n),
                ref_rejected.narrow(0, start, n),
            );
            let (_, s) = objective(&cfg.loss, &lp, &rc, &rr)?;
            total.add(&s);
        }
        Ok(())
    })?;
    Ok(total)
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct DpoSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub resumed_from: Option<u64>,
    /// Whether the reference log-probs came from the run directory's cache (a resume).
    pub reference_from_cache: bool,
    pub final_val_loss: f64,
    pub final_val_accuracy: f64,
    pub final_val_margin: f64,
    pub n_params: i64,
    /// Real training tokens per second of this process (optimisation only).
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
    #[serde(skip)]
    pub metrics: Vec<DpoRow>,
}

fn report_panels() -> Vec<Panel> {
    let s = |column, label, markers| Series {
        column,
        label,
        markers,
    };
    vec![
        Panel {
            caption: "Loss",
            title: "objective",
            y_title: "loss",
            log_y: false,
            series: vec![
                s("loss", "train loss", false),
                s("val/loss", "validation loss", true),
            ],
        },
        Panel {
            caption: "Implicit rewards",
            title: "β·log(π/π_ref)",
            y_title: "reward",
            log_y: false,
            series: vec![
                s("rewards/chosen", "chosen (train)", false),
                s("rewards/rejected", "rejected (train)", false),
                s("rewards/margins", "margin (train)", false),
                s("val/rewards/margins", "margin (validation)", true),
            ],
        },
        Panel {
            caption: "Reward accuracy",
            title: "pairs with r̂(chosen) > r̂(rejected)",
            y_title: "fraction",
            log_y: false,
            series: vec![
                s("rewards/accuracies", "train", false),
                s("val/rewards/accuracies", "validation", true),
            ],
        },
        Panel {
            caption: "Sequence log-probs",
            title: "log π(y | x) of the completions",
            y_title: "nats",
            log_y: false,
            series: vec![
                s("logps/chosen", "chosen (train)", false),
                s("logps/rejected", "rejected (train)", false),
                s("val/logps/chosen", "chosen (validation)", true),
                s("val/logps/rejected", "rejected (validation)", true),
            ],
        },
    ]
}

/// Runs (or resumes) DPO-family training; see the module documentation.
pub fn run_dpo(cfg: &DpoTrainConfig, opts: &RunOptions) -> Result<DpoSummary> {
    let (mut run, resumed) = Run::<DpoRow>::start(
        "dpo",
        cfg,
        &cfg.name,
        cfg.seed,
        cfg.threads,
        cfg.keep_checkpoints,
        opts,
    )?;
    let device = run.device();

    // The trained model: the SFT checkpoint (fresh) or this run's checkpoint (resume).
    let tok_path = run.dir.join("tokenizer.json");
    let policy = LoadedLm::for_run(resumed.as_ref(), &cfg.sft_run, &run.dir, device)?;
    let pad_id = policy.tokenizer.pad_id();
    let max_len = policy.config().n_positions as usize;

    // Data.
    let mut splits = load_preference_groups(
        &cfg.data.path,
        PreferenceFormat::Pairs,
        &policy.tokenizer,
        max_len,
        "data.path",
    )?;
    if let Some(n) = cfg.data.max_train {
        splits.train.truncate(n);
    }
    if let Some(n) = cfg.data.max_val {
        splits.validation.truncate(n);
    }
    let (train, val) = (splits.train, splits.validation);
    let b = cfg.optim.batch_size as usize;

    // Reference log-probs: reloaded on resume, else computed once from the frozen SFT model.
    let ref_path = run.dir.join(REFERENCE_FILE);
    let cached = match &resumed {
        Some(_) => RefCache::load(&ref_path, train.len() as i64, val.len() as i64, device)?,
        None => None,
    };
    let reference_from_cache = cached.is_some();
    let refs = match cached {
        Some(c) => c,
        None => {
            let mut reference = LoadedLm::from_run(&cfg.sft_run, "sft_run", device)?;
            reference.freeze();
            let (train_chosen, train_rejected) =
                reference_logps(reference.lm(), &train, b, pad_id, cfg.data.padding, device)?;
            let (val_chosen, val_rejected) =
                reference_logps(reference.lm(), &val, b, pad_id, cfg.data.padding, device)?;
            let c = RefCache {
                train_chosen,
                train_rejected,
                val_chosen,
                val_rejected,
            };
            c.save(&ref_path)?;
            c
        }
    };
    run.say(format!(
        "reference log-probs of {} + {} pairs {}",
        train.len(),
        val.len(),
        if reference_from_cache {
            "reloaded from the cache"
        } else {
            "computed"
        }
    ));

    // The generative evaluation keeps a frozen reference in memory (the cache covers only the pairs).
    let (evaluator, eval_reference) = match &cfg.eval {
        Some(section) => {
            let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);
            let mut r = LoadedLm::from_run(&cfg.sft_run, "sft_run", device)?;
            r.freeze();
            (
                Some(Evaluator::new(section, &policy.tokenizer, &data_dir)?),
                Some(r),
            )
        }
        None => (None, None),
    };
    let model = policy.lm();
    let mut opt = AdamW::new(&policy.vs, cfg.optim.adamw())?;
    let n_params = policy.n_params();
    let schedule = cfg.optim.schedule()?;
    let (mut step, mut rng, mut tokens_seen) = match &resumed {
        Some(r) => {
            opt.load(r.dir.join(run::OPTIMIZER_FILE))?;
            (r.step, SplitMix64::from_state(r.rng_state), r.tokens)
        }
        None => (0, SplitMix64::new(cfg.seed as u64), 0),
    };

    let m = &mut run.manifest;
    m.data = vec![report::DataFile {
        path: cfg.data.path.display().to_string(),
        sha256: crate::io::sha256_file(&cfg.data.path)?,
    }];
    m.data_digests.insert(
        "tokenizer_json_sha256".into(),
        crate::io::sha256_file(&tok_path)?.into(),
    );
    m.data_digests.insert(
        "reference_logps_sha256".into(),
        crate::io::sha256_file(&ref_path)?.into(),
    );
    m.results.insert(
        "data".into(),
        serde_json::json!({
            "train_pairs": train.len(), "validation_pairs": val.len(), "n_params": n_params,
        }),
    );
    run.save_manifest()?;

    let max_steps = cfg.optim.max_steps;
    let row = |step,
               tokens,
               train: Option<([f64; 7], f64, f64)>,
               val: Option<[f64; 7]>,
               gen: Option<[f64; 8]>| {
        let mut v = vec![None; DpoRow::COLUMNS.len()];
        if let Some(g) = gen {
            for (j, x) in g.into_iter().enumerate() {
                v[2 + 2 * PAIR_STATS.len() + j] = Some(x);
            }
        }
        if let Some((t, lr, gn)) = train {
            v[0] = Some(lr);
            v[1] = Some(gn);
            for (j, x) in t.into_iter().enumerate() {
                v[2 + j] = Some(x);
            }
        }
        if let Some(e) = val {
            for (j, x) in e.into_iter().enumerate() {
                v[2 + PAIR_STATS.len() + j] = Some(x);
            }
        }
        DpoRow {
            step,
            tokens,
            values: v,
        }
    };
    if step == 0 {
        let e = evaluate(
            model,
            &val,
            &refs.val_chosen,
            &refs.val_rejected,
            b,
            pad_id,
            cfg,
            device,
        )?
        .means();
        let g = match (&evaluator, &eval_reference) {
            (Some(ev), Some(r)) => {
                let res = ev.run(model, r.lm(), &policy.tokenizer)?;
                res.save_samples(&run.dir, 0)?;
                Some(res.columns())
            }
            _ => None,
        };
        run.push(row(0, 0, None, Some(e), g));
        run.say(format!("step 0: val loss {:.4}", e[0]));
        run.write_metrics()?;
    }

    run.start_progress(max_steps, step);
    while step < max_steps {
        let t0 = Instant::now();
        tch::manual_seed(cfg.seed.wrapping_add(step as i64 + 1));
        let lr = schedule.lr_at(step);
        opt.zero_grad();
        let mut stats = Stats::default();
        let mut step_tokens = 0u64;
        for _ in 0..cfg.optim.grad_accum {
            let idx: Vec<i64> = (0..b).map(|_| rng.below(train.len()) as i64).collect();
            let pairs: Vec<&RankedGroup> = idx.iter().map(|&i| &train[i as usize]).collect();
            step_tokens += pairs.iter().map(|g| g.n_tokens() as u64).sum::<u64>();
            let lp = pair_logps(
                model,
                &pairs,
                pad_id,
                cfg.data.padding,
                device,
                cfg.policy_dropout,
            )?;
            let idx = Tensor::from_slice(&idx).to_device(device); // (B,)
            let rc = refs.train_chosen.index_select(0, &idx); // (B,)
            let rr = refs.train_rejected.index_select(0, &idx); // (B,)
            let (loss, s) = objective(&cfg.loss, &lp, &rc, &rr)?;
            stats.add(&s);
            (loss / cfg.optim.grad_accum as f64).f_backward()?;
        }
        let max_norm = if cfg.optim.grad_clip > 0.0 {
            cfg.optim.grad_clip
        } else {
            f64::MAX
        };
        let grad_norm = clip_grad_norm(&opt.params(), max_norm)?;
        opt.step(lr)?;
        step += 1;
        tokens_seen += step_tokens;
        let t = stats.means();
        if !t[0].is_finite() {
            return Err(RlhfError::NonFinite {
                arg: format!("{:?} loss at step {step}", cfg.loss.objective),
                count: 1,
            });
        }
        run.step_done(
            step,
            step_tokens,
            t0.elapsed().as_secs_f64(),
            &format!("loss {:.3} margin {:.3}", t[0], t[4]),
        );

        let is_last = step == max_steps;
        let do_eval = step % cfg.eval_interval == 0 || is_last;
        if step % cfg.log_interval == 0 || do_eval {
            let e = if do_eval {
                let e = evaluate(
                    model,
                    &val,
                    &refs.val_chosen,
                    &refs.val_rejected,
                    b,
                    pad_id,
                    cfg,
                    device,
                )?
                .means();
                run.say(format!(
                    "step {step}: loss {:.4}, val loss {:.4}, val accuracy {:.3}, val margin {:.4}",
                    t[0], e[0], e[3], e[4]
                ));
                Some(e)
            } else {
                None
            };
            let g = match (&evaluator, &eval_reference, do_eval) {
                (Some(ev), Some(r), true) => {
                    let res = ev.run(model, r.lm(), &policy.tokenizer)?;
                    res.save_samples(&run.dir, step)?;
                    run.say(format!(
                        "step {step}: held-out score {:.3} (σ {:.3}), exact KL {:.3}",
                        res.score_mean, res.score_sigmoid_mean, res.kl_exact
                    ));
                    Some(res.columns())
                }
                _ => None,
            };
            run.push(row(step, tokens_seen, Some((t, lr, grad_norm)), e, g));
        }
        if do_eval {
            run.write_metrics()?;
        }
        if step % cfg.checkpoint_interval == 0 || is_last {
            let state = CheckpointState {
                step,
                rng_state: rng.state(),
                tokens: tokens_seen,
                extra: serde_json::Value::Null,
            };
            run.checkpoint(&state, |dir| {
                policy.save(dir)?;
                opt.save(dir.join(run::OPTIMIZER_FILE))
            })?;
        }
    }

    let last_val = |col: &str| {
        run.rows
            .iter()
            .rev()
            .find_map(|r| r.get(col))
            .unwrap_or(f64::NAN)
    };
    let final_val_loss = last_val("val/loss");
    let final_val_accuracy = last_val("val/rewards/accuracies");
    let final_val_margin = last_val("val/rewards/margins");
    let results = vec![
        ("steps", serde_json::json!(step)),
        ("final_val_loss", serde_json::json!(final_val_loss)),
        (
            "final_val_reward_accuracy",
            serde_json::json!(final_val_accuracy),
        ),
        (
            "final_val_reward_margin",
            serde_json::json!(final_val_margin),
        ),
        ("tokens_seen", serde_json::json!(tokens_seen)),
    ];
    let done = run.finish(&format!("DPO run {}", cfg.name), &report_panels(), results)?;
    Ok(DpoSummary {
        run_dir: run.dir.clone(),
        steps: step,
        resumed_from: resumed.map(|r| r.step),
        reference_from_cache,
        final_val_loss,
        final_val_accuracy,
        final_val_margin,
        n_params,
        train_tokens_per_s: done.train_tokens_per_s,
        wall_s: done.wall_s,
        metrics: run.rows.clone(),
    })
}
