//! Reward-model training: a scalar score head on the SFT model, fitted to preference comparisons.
//!
//! **Model.** The backbone and its tokenizer come from the newest checkpoint of an SFT run
//! (`sft_run`); InstructGPT (Ouyang et al. 2022 §3.5) initialises the RM from the SFT model "with the
//! final unembedding layer removed" — here the LM head is simply never read: the reward is the GPT's
//! `score_head` (Linear C → 1) applied to the hidden state of the **last real token** of
//! `prompt ‖ completion ‖ EOS` ([`RlhfLm::scores`]; seed 003 "PPO 涉及的模型": the RM scores the whole
//! sequence at its last token; DeepSpeed-Chat `RewardModel`, TRL `get_reward`).
//!
//! **Data.** Every example is a prompt with K ranked completions, best first ([`RankedGroup`]): a TRL
//! preference pair (`data.format = "pairs"`) is K = 2 (chosen, rejected); a ranked JSONL
//! (`data.format = "ranked"`, [`crate::data::read_ranked`]) carries any K ≥ 2. Records are split into
//! train / validation by the prompt's hash ([`load_preference_groups`]). A batch is `batch_size`
//! groups drawn uniformly with replacement by a [`SplitMix64`] (nanoGPT `get_batch` style); all K
//! completions of a drawn prompt are padded into the same batch, row `g·K + k` ([`collate_groups`]),
//! so the K·(K−1)/2 comparisons of a prompt are all formed inside one forward pass — InstructGPT's
//! remedy for overfitting when each comparison is its own example.
//!
//! **Loss** (all from [`crate::core::reward_model`]):
//! * `loss.kind = "pairwise"` (K = 2): Bradley–Terry `−logσ(r_c − r_r − m)` averaged over pairs
//!   (seed 003; TRL `RewardTrainer`), with the optional margin `m = margin_scale·(score_chosen −
//!   score_rejected)` (Llama-2 §3.2.2's preference-strength margin, from the pair's scores) and TRL's
//!   `center_rewards_coefficient` term `center_coef·mean((r_c + r_r)²)` (Eisenstein et al. 2023);
//! * `loss.kind = "kwise"`: InstructGPT eq. 1, `mean_p[−1/C(K,2) Σ_{i<j} logσ(r_{p,i} − r_{p,j})]`.
//!   For K = 2 it equals the pairwise loss (tested).
//!
//! **Metrics** (TRL names): `loss`, `accuracy` (fraction of the batch's comparisons ranked right,
//! strict), `grad_norm`, `lr`, `rewards/chosen` and `rewards/rejected` (mean score of the best and of
//! the worst completion), `rewards/margins` (their difference), and `val/…` versions over the whole
//! validation split at every evaluation.
//!
//! **Determinism and resume** as in [`crate::train::sft`]: `tch::manual_seed(seed + step)` before each
//! step (dropout masks), the data order from the checkpointed SplitMix64, atomic checkpoints through
//! [`Run::checkpoint`] (model via [`LoadedLm::save`], AdamW moments), bit-identical metrics after a
//! SIGKILL + resume (tests/train_rm.rs).
//!
//! **Use as a scorer.** [`RewardModelScorer`] loads a finished RM run and implements
//! [`SentimentScorer`], so PPO and Best-of-N take the learned RM wherever they take the ground truth.

use crate::core::reward_model::{kwise_loss, pairwise_accuracy, pairwise_loss};
use crate::error::{Result, RlhfError};
use crate::ground_truth::SentimentScorer;
use crate::model::RlhfLm;
use crate::rng::SplitMix64;
use crate::train::batch::{
    collate_groups, load_preference_groups, Padding, PreferenceFormat, RankedGroup,
};
use crate::train::config::{self, validate_name, OptimSection, TrainConfig};
use crate::train::lm::LoadedLm;
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::report::{self, Panel, Series};
use crate::train::run::{self, CheckpointState, Run};
pub use crate::train::run::{ResumeMode, RunOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Which reward-model loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RmLoss {
    /// Bradley–Terry on pairs (K = 2), with optional margin and centering.
    Pairwise,
    /// InstructGPT's K-wise loss over all C(K, 2) comparisons of a prompt.
    Kwise,
}

/// `[data]`: the comparison file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmDataSection {
    /// `pairs` (TRL preference JSONL: prompt, chosen, rejected, optional score_chosen/score_rejected)
    /// or `ranked` (`{"prompt", "completions": [best, …, worst], "scores"}`).
    #[serde(default)]
    pub format: PreferenceFormat,
    /// The JSONL file; split into train / validation by the prompt's hash.
    pub path: PathBuf,
    /// Use only the first N training records.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// Use only the first N validation records.
    #[serde(default)]
    pub max_val: Option<usize>,
}

/// `[loss]`: which loss and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmLossSection {
    /// `pairwise` (Bradley–Terry, K = 2) or `kwise` (InstructGPT, any K ≥ 2).
    pub kind: RmLoss,
    /// Pairwise only: margin `m = margin_scale·(score_chosen − score_rejected)` subtracted from
    /// `r_c − r_r` (Llama-2); 0 = no margin. > 0 needs both scores on every pair.
    #[serde(default)]
    pub margin_scale: f64,
    /// Pairwise only: TRL's `center_rewards_coefficient`, `+ coef·mean((r_c + r_r)²)`; 0 = off.
    #[serde(default)]
    pub center_coef: f64,
}

/// A whole reward-model run configuration (`configs/rm-*.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmConfig {
    /// Run name: the run directory is `reports/<name>` unless `--out` says otherwise.
    pub name: String,
    /// Seeds the data order and the per-step dropout masks.
    #[serde(default)]
    pub seed: i64,
    /// libtorch intra-op threads (absent: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    /// The SFT run directory whose newest checkpoint (and tokenizer) initialises the reward model.
    pub sft_run: PathBuf,
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
    pub data: RmDataSection,
    pub loss: RmLossSection,
    /// AdamW + schedule; `batch_size` counts prompts (groups of K completions) per micro-batch.
    pub optim: OptimSection,
}

fn one_u64() -> u64 {
    1
}
fn two() -> usize {
    2
}

impl TrainConfig for RmConfig {
    fn validate(&self) -> Result<()> {
        use crate::core::check::{at_least, non_negative};
        validate_name(&self.name)?;
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
        non_negative("loss.margin_scale", self.loss.margin_scale)?;
        non_negative("loss.center_coef", self.loss.center_coef)?;
        if self.loss.kind == RmLoss::Kwise {
            for (arg, v) in [
                ("loss.margin_scale", self.loss.margin_scale),
                ("loss.center_coef", self.loss.center_coef),
            ] {
                if v != 0.0 {
                    return Err(RlhfError::invalid(
                        arg,
                        "applies to kind = \"pairwise\" only",
                    ));
                }
            }
        }
        self.optim.validate()?;
        at_least("eval_interval", self.eval_interval as i64, 1)?;
        at_least("checkpoint_interval", self.checkpoint_interval as i64, 1)?;
        at_least("log_interval", self.log_interval as i64, 1)?;
        at_least("keep_checkpoints", self.keep_checkpoints as i64, 1)?;
        if let Some(t) = self.threads {
            at_least("threads", i64::from(t), 1)?;
        }
        Ok(())
    }
}

impl RmConfig {
    /// Parses and validates a TOML file ([`config::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config::from_file(path)
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self> {
        config::from_toml(text, source_name)
    }
}

/// One row of `metrics.csv`: `step`, `tokens`, then [`RmRow::COLUMNS`]. Step 0 has only `val/…`.
#[derive(Debug, Clone, PartialEq)]
pub struct RmRow {
    pub step: u64,
    /// Real (non-pad) training tokens consumed so far.
    pub tokens: u64,
    /// Aligned with [`RmRow::COLUMNS`].
    pub values: Vec<Option<f64>>,
}

impl RmRow {
    /// TRL `RewardTrainer` names where TRL logs the same quantity.
    pub const COLUMNS: [&'static str; 12] = [
        "lr",
        "loss",
        "accuracy",
        "grad_norm",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "val/loss",
        "val/accuracy",
        "val/rewards/chosen",
        "val/rewards/rejected",
        "val/rewards/margins",
    ];

    /// The value of column `name` (None if empty or unknown).
    pub fn get(&self, name: &str) -> Option<f64> {
        let j = Self::COLUMNS.iter().position(|c| *c == name)?;
        self.values.get(j).copied().flatten()
    }
}

impl run::MetricsRow for RmRow {
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
        RmRow {
            step,
            tokens,
            values,
        }
    }
}

/// Batch statistics (sums, so batches of different sizes combine exactly).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Σ over prompts of the per-prompt loss (the batch mean × P).
    loss_sum: f64,
    /// Comparisons ranked right, and all comparisons.
    correct: f64,
    comparisons: f64,
    /// Σ of the best / worst completion's score over prompts.
    chosen_sum: f64,
    rejected_sum: f64,
    prompts: f64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.comparisons += o.comparisons;
        self.chosen_sum += o.chosen_sum;
        self.rejected_sum += o.rejected_sum;
        self.prompts += o.prompts;
    }
    /// (loss, accuracy, rewards/chosen, rewards/rejected, rewards/margins).
    fn means(&self) -> [f64; 5] {
        let p = self.prompts.max(1.0);
        let (c, r) = (self.chosen_sum / p, self.rejected_sum / p);
        [
            self.loss_sum / p,
            self.correct / self.comparisons.max(1.0),
            c,
            r,
            c - r,
        ]
    }
}

/// The loss of one batch of groups and its statistics. `rewards` `(P, K)`, best first (as
/// [`group_rewards`] returns them). Public so the performance suite times the trainer's own step.
pub fn rm_loss(
    rewards: &Tensor,
    groups: &[&RankedGroup],
    cfg: &RmLossSection,
) -> Result<(Tensor, Stats)> {
    let (p, k) = rewards.size2()?;
    let loss = match cfg.kind {
        RmLoss::Pairwise => {
            let r_chosen = rewards.select(1, 0); // (P,)
            let r_rejected = rewards.select(1, 1); // (P,)
            let margin = if cfg.margin_scale > 0.0 {
                let m: Vec<f32> = groups
                    .iter()
                    .map(|g| {
                        let s = g.scores.as_ref().ok_or_else(|| {
                            RlhfError::invalid(
                                "loss.margin_scale",
                                format!(
                                    "the pair on line {} has no score_chosen / score_rejected",
                                    g.line
                                ),
                            )
                        })?;
                        Ok((cfg.margin_scale * (s[0] - s[1])) as f32)
                    })
                    .collect::<Result<_>>()?;
                Some(Tensor::from_slice(&m).to_device(rewards.device())) // (P,)
            } else {
                None
            };
            pairwise_loss(&r_chosen, &r_rejected, margin.as_ref(), cfg.center_coef)?.loss
        }
        RmLoss::Kwise => kwise_loss(rewards)?,
    };
    // Accuracy over all C(K, 2) comparisons i < j (i ranked above j).
    let mut correct = 0.0;
    for i in 0..k {
        for j in (i + 1)..k {
            let acc = pairwise_accuracy(&rewards.select(1, i), &rewards.select(1, j))?;
            correct += acc.to_kind(Kind::Double).f_double_value(&[])? * p as f64;
        }
    }
    let pf = p as f64;
    let sum = |t: Tensor| -> Result<f64> {
        Ok(t.detach()
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .f_double_value(&[])?)
    };
    let stats = Stats {
        loss_sum: loss.detach().to_kind(Kind::Double).f_double_value(&[])? * pf,
        correct,
        comparisons: pf * (k * (k - 1) / 2) as f64,
        chosen_sum: sum(rewards.select(1, 0))?,
        rejected_sum: sum(rewards.select(1, k - 1))?,
        prompts: pf,
    };
    Ok((loss, stats))
}

/// Scores `(P, K)` of the groups' completions (one padded forward pass, [`collate_groups`]).
pub fn group_rewards(
    model: &dyn RlhfLm,
    groups: &[&RankedGroup],
    pad_id: i64,
    device: Device,
    train: bool,
) -> Result<Tensor> {
    let batch = collate_groups(groups, pad_id, Padding::Right, device)?; // (P·K, T)
    let hidden = model.forward_hidden(
        &batch.input_ids,
        &batch.attention_mask,
        &batch.position_ids,
        None,
        train,
    )?; // (P·K, T, C)
    let r = model.scores(&hidden, &batch.attention_mask)?; // (P·K,)
    let k = groups[0].k() as i64;
    Ok(r.view([groups.len() as i64, k])) // (P, K)
}

/// Validation statistics over every group, in batches of `b`.
fn evaluate(
    model: &dyn RlhfLm,
    val: &[RankedGroup],
    b: usize,
    pad_id: i64,
    cfg: &RmLossSection,
    device: Device,
) -> Result<Stats> {
    let mut total = Stats::default();
    tch::no_grad(|| -> Result<()> {
        let refs: Vec<&RankedGroup> = val.iter().collect();
        for chunk in refs.chunks(b) {
            let r = group_rewards(model, chunk, pad_id, device, false)?;
            let (_, s) = rm_loss(&r, chunk, cfg)?;
            total.add(&s);
        }
        Ok(())
    })?;
    Ok(total)
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RmSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_val_loss: f64,
    pub final_val_accuracy: f64,
    pub n_params: i64,
    /// Real training tokens per second of this process (optimisation only).
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
    #[serde(skip)]
    pub metrics: Vec<RmRow>,
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
            title: "reward-model loss",
            y_title: "nats",
            log_y: false,
            series: vec![
                s("loss", "train loss", false),
                s("val/loss", "validation loss", true),
            ],
        },
        Panel {
            caption: "Pair accuracy",
            title: "comparisons ranked right",
            y_title: "fraction",
            log_y: false,
            series: vec![
                s("accuracy", "train accuracy", false),
                s("val/accuracy", "validation accuracy", true),
            ],
        },
        Panel {
            caption: "Rewards",
            title: "mean score of the best and worst completion",
            y_title: "score",
            log_y: false,
            series: vec![
                s("rewards/chosen", "chosen (train)", false),
                s("rewards/rejected", "rejected (train)", false),
                s("val/rewards/margins", "margin (validation)", true),
            ],
        },
    ]
}

/// Runs (or resumes) reward-model training; see the module documentation. Writes the run directory
/// ([`crate::train::run`]) with the SFT run's `tokenizer.json`, so the run loads as a [`LoadedLm`] and
/// as a [`RewardModelScorer`].
pub fn run_rm(cfg: &RmConfig, opts: &RunOptions) -> Result<RmSummary> {
    let (mut run, resumed) = Run::<RmRow>::start(
        "rm",
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
    let lm = LoadedLm::for_run(resumed.as_ref(), &cfg.sft_run, &run.dir, device)?;
    let model = lm.lm();
    let pad_id = lm.tokenizer.pad_id();
    let max_len = lm.config().n_positions as usize;

    // Data.
    let mut splits = load_preference_groups(
        &cfg.data.path,
        cfg.data.format,
        &lm.tokenizer,
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
    let k = train[0].k();
    if let Some(g) = train.iter().chain(&val).find(|g| g.k() != k) {
        return Err(RlhfError::format(
            &cfg.data.path,
            "ranked-completions JSONL file",
            format!(
                "line {}: {} completions where line {} has {k}; one K per file",
                g.line,
                g.k(),
                train[0].line
            ),
        ));
    }
    if cfg.loss.kind == RmLoss::Pairwise && k != 2 {
        return Err(RlhfError::invalid(
            "loss.kind",
            format!("\"pairwise\" needs K = 2 completions per prompt, the data has K = {k}; use \"kwise\""),
        ));
    }

    let mut opt = AdamW::new(&lm.vs, cfg.optim.adamw())?;
    let n_params = lm.n_params();
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
    m.results.insert(
        "data".into(),
        serde_json::json!({
            "train_prompts": train.len(), "validation_prompts": val.len(), "k": k,
            "n_params": n_params, "initialised_from": lm.source.display().to_string(),
        }),
    );
    run.save_manifest()?;

    let b = cfg.optim.batch_size as usize;
    let max_steps = cfg.optim.max_steps;
    let row = |step, tokens, train: Option<([f64; 5], f64, f64)>, val: Option<[f64; 5]>| {
        let mut v = vec![None; RmRow::COLUMNS.len()];
        if let Some((t, lr, gn)) = train {
            v[0] = Some(lr);
            v[1] = Some(t[0]);
            v[2] = Some(t[1]);
            v[3] = Some(gn);
            v[4] = Some(t[2]);
            v[5] = Some(t[3]);
            v[6] = Some(t[4]);
        }
        if let Some(e) = val {
            for (j, x) in e.into_iter().enumerate() {
                v[7 + j] = Some(x);
            }
        }
        RmRow {
            step,
            tokens,
            values: v,
        }
    };
    if step == 0 {
        let e = evaluate(model, &val, b, pad_id, &cfg.loss, device)?.means();
        run.push(row(0, 0, None, Some(e)));
        run.say(format!(
            "step 0: val loss {:.4}, accuracy {:.3}",
            e[0], e[1]
        ));
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
            let groups: Vec<&RankedGroup> =
                (0..b).map(|_| &train[rng.below(train.len())]).collect();
            step_tokens += groups.iter().map(|g| g.n_tokens() as u64).sum::<u64>();
            let r = group_rewards(model, &groups, pad_id, device, true)?; // (P, K)
            let (loss, s) = rm_loss(&r, &groups, &cfg.loss)?;
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
                arg: format!("reward-model loss at step {step}"),
                count: 1,
            });
        }
        run.step_done(
            step,
            step_tokens,
            t0.elapsed().as_secs_f64(),
            &format!("loss {:.3} acc {:.2}", t[0], t[1]),
        );

        let is_last = step == max_steps;
        let do_eval = step % cfg.eval_interval == 0 || is_last;
        if step % cfg.log_interval == 0 || do_eval {
            let e = if do_eval {
                let e = evaluate(model, &val, b, pad_id, &cfg.loss, device)?.means();
                run.say(format!(
                    "step {step}: loss {:.4}, val loss {:.4}, val accuracy {:.3}",
                    t[0], e[0], e[1]
                ));
                Some(e)
            } else {
                None
            };
            run.push(row(step, tokens_seen, Some((t, lr, grad_norm)), e));
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
                lm.save(dir)?;
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
    let (final_val_loss, final_val_accuracy) = (last_val("val/loss"), last_val("val/accuracy"));
    let results = vec![
        ("steps", serde_json::json!(step)),
        ("final_val_loss", serde_json::json!(final_val_loss)),
        ("final_val_accuracy", serde_json::json!(final_val_accuracy)),
        ("tokens_seen", serde_json::json!(tokens_seen)),
    ];
    let done = run.finish(
        &format!("Reward model {}", cfg.name),
        &report_panels(),
        results,
    )?;
    Ok(RmSummary {
        run_dir: run.dir.clone(),
        steps: step,
        resumed_from: resumed.map(|r| r.step),
        final_val_loss,
        final_val_accuracy,
        n_params,
        train_tokens_per_s: done.train_tokens_per_s,
        wall_s: done.wall_s,
        metrics: run.rows.clone(),
    })
}

/// A trained reward model as a [`SentimentScorer`]: scores `prompt ‖ response` texts, each given as
/// one string, at the last token of `text ‖ EOS` (the layout it was trained on). The text is tokenised
/// whole; training tokenised prompt and completion separately (TRL), which can split a word differently
/// where the two meet without a space.
pub struct RewardModelScorer {
    pub lm: LoadedLm,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl RewardModelScorer {
    /// The newest checkpoint of a reward-model run directory (and its `tokenizer.json`), on
    /// `Device::cuda_if_available()`; frozen.
    pub fn from_run(dir: &Path) -> Result<Self> {
        let mut lm = LoadedLm::from_run(dir, "rm_run", Device::cuda_if_available())?;
        lm.freeze();
        Ok(RewardModelScorer { lm, batch_size: 32 })
    }
}

impl SentimentScorer for RewardModelScorer {
    fn score(&self, texts: &[&str]) -> Result<Tensor> {
        let tok = &self.lm.tokenizer;
        let max_len = self.lm.config().n_positions as usize;
        let seqs: Vec<Vec<i64>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut ids = tok.encode(t)?;
                ids.push(tok.eos_id());
                if ids.len() > max_len {
                    return Err(RlhfError::out_of_range(
                        format!("texts[{i}] tokens (with EOS)"),
                        ids.len() as f64,
                        format!("<= the reward model's context ({max_len})"),
                    ));
                }
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        // One forward path for every reward-model score: `LoadedLm::score_sequences`.
        let mut out = Vec::new();
        for chunk in seqs.chunks(self.batch_size.max(1)) {
            out.push(
                self.lm
                    .score_sequences(chunk)?
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu),
            );
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0], (Kind::Float, Device::Cpu)));
        }
        let scores = Tensor::cat(&out, 0); // (N,)
        crate::core::check::finite("reward-model scores", &scores)?;
        Ok(scores)
    }

    fn name(&self) -> &str {
        "reward-model"
    }
}
