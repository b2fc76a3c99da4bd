//! The DPO paper's controlled-sentiment experiment, end to end (document 002; Rafailov et al. 2023 §6.1,
//! Appendix C.1, Figure 2): which method reaches the highest ground-truth reward at a given KL from the
//! reference?
//!
//! ```text
//! sft            the review LM (our GPT; GPT-2-large in the paper)
//! ground-truth   the sentiment classifier (p(positive) is the reward; a BERT-style classifier there)
//! pairs          4 samples of the SFT model per train prefix (2–8 tokens) → all 6 pairs, ordered by
//!                the ground truth → TRL preference JSONL (+ the ranked K = 4 JSONL)
//! rm-pairwise    reward model on the 6 flat pairs          } held-out pair accuracy of both
//! rm-kwise       reward model on one K = 4 group per prompt } (InstructGPT, document 001 §3.1.2)
//! dpo, ipo, cdpo, unlikelihood, preferred-ft    the DPO family and the paper's baselines, per seed
//! ppo            PPO with the learned reward, adaptive KL towards each target
//! ppo-gt         PPO with the ground-truth reward, plain and tuned (normalised rewards, larger batch)
//! best-of-n      N samples of the SFT model reranked by the learned RM and by the ground truth
//! frontier       every evaluation a point (exact sequence KL, mean p(positive)); envelopes, reward at
//!                matched KL ± std over seeds, plot, table, samples
//! ```
//!
//! Every stage is cached under `reports/dpo-sentiment/<scale>/stages/<stage>-<key>/` ([`Stages`]), keyed
//! by its configuration — which names the directories of the stages it reads, so a changed upstream stage
//! re-keys everything downstream. A killed sweep resumes where it stopped; a finished stage is never
//! recomputed. Scales: `quick` (minutes on 2 CPU cores: CI and `make demo`), `small` (every sweep value,
//! 3 seeds, hours), `gpu` (a wider GPT, for a lent accelerator).

use crate::data::{PreferencePair, Split};
use crate::error::{Result, RlhfError};
use crate::ground_truth::sentiment::{train_classifier_on, BowClassifier, ClassifierConfig};
use crate::ground_truth::SentimentScorer;
use crate::model::generate::{generate, GenerationConfig};
use crate::pipeline::frontier::{matched_kl, MatchedKl, Point};
use crate::pipeline::stages::{StageTiming, Stages};
use crate::train::lm::LoadedLm;
use crate::train::prompts::{review_prefixes, PrefixConfig};
use crate::train::report::{self, RunManifest};
use crate::train::run::{ResumeMode, RunOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The KL values (nats) at which rewards are compared in the summary.
pub const MATCHED_KL: [f64; 4] = [1.0, 2.0, 5.0, 10.0];

/// How big each stage is.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub name: &'static str,
    /// The SFT run (TOML body: everything but `name`).
    pub sft: &'static str,
    /// Train prefixes sampled 4 times each for the preference data.
    pub n_prefixes: usize,
    /// Response tokens of every sample (pairs, rollouts, evaluation).
    pub max_new_tokens: usize,
    /// Held-out test prefixes per evaluation.
    pub eval_prompts: usize,
    pub rm_steps: u64,
    pub dpo_steps: u64,
    pub dpo_eval_interval: u64,
    pub dpo_lr: f64,
    pub dpo_betas: &'static [f64],
    pub ipo_betas: &'static [f64],
    pub cdpo: &'static [(f64, f64)],
    pub ul_alphas: &'static [f64],
    pub ppo_iterations: u64,
    pub ppo_eval_interval: u64,
    pub ppo_batch: i64,
    pub ppo_targets: &'static [f64],
    /// Also run the tuned PPO-GT variant.
    pub ppo_gt_tuned: bool,
    pub bon_ns: &'static [usize],
    pub batch_size: i64,
    pub default_seeds: usize,
}

const SFT_QUICK: &str = r#"seed = 1
threads = 1
eval_interval = 100
eval_batches = 4
checkpoint_interval = 100
log_interval = 10
keep_checkpoints = 1
[model]
n_positions = 64
n_embd = 64
n_layer = 2
n_head = 2
dropout = 0.0
[tokenizer]
vocab_size = 1024
min_frequency = 2
[data]
source = "reviews"
block_size = 64
max_train_docs = 4000
max_val_docs = 200
[optim]
lr = 3e-3
min_lr = 3e-4
warmup_steps = 20
max_steps = 300
batch_size = 16
grad_clip = 1.0
weight_decay = 0.1
"#;

const SFT_SMALL: &str = r#"seed = 1
threads = 1
eval_interval = 100
eval_batches = 10
checkpoint_interval = 100
log_interval = 10
keep_checkpoints = 1
[model]
n_positions = 64
n_embd = 128
n_layer = 3
n_head = 4
dropout = 0.0
[tokenizer]
vocab_size = 2048
min_frequency = 2
[data]
source = "reviews"
block_size = 64
max_train_docs = 12000
max_val_docs = 400
[optim]
lr = 3e-3
min_lr = 3e-4
warmup_steps = 40
max_steps = 800
batch_size = 16
grad_clip = 1.0
weight_decay = 0.1
"#;

const SFT_GPU: &str = r#"seed = 1
eval_interval = 200
eval_batches = 20
checkpoint_interval = 200
log_interval = 10
keep_checkpoints = 2
[model]
n_positions = 256
n_embd = 512
n_layer = 8
n_head = 8
dropout = 0.0
[tokenizer]
vocab_size = 8192
min_frequency = 2
[data]
source = "reviews"
block_size = 256
[optim]
lr = 1e-3
min_lr = 1e-4
warmup_steps = 100
max_steps = 4000
batch_size = 32
grad_clip = 1.0
weight_decay = 0.1
"#;

impl Scale {
    /// `quick`, `small` or `gpu`.
    pub fn named(name: &str) -> Result<Scale> {
        Ok(match name {
            "quick" => Scale {
                name: "quick",
                sft: SFT_QUICK,
                n_prefixes: 384,
                max_new_tokens: 16,
                eval_prompts: 128,
                rm_steps: 200,
                dpo_steps: 100,
                dpo_eval_interval: 25,
                dpo_lr: 3e-4,
                dpo_betas: &[0.1, 1.0, 5.0],
                ipo_betas: &[],
                cdpo: &[],
                ul_alphas: &[0.1],
                ppo_iterations: 24,
                ppo_eval_interval: 8,
                ppo_batch: 16,
                ppo_targets: &[3.0],
                ppo_gt_tuned: false,
                bon_ns: &[1, 4, 16],
                batch_size: 16,
                default_seeds: 1,
            },
            "small" => Scale {
                name: "small",
                sft: SFT_SMALL,
                n_prefixes: 1000,
                max_new_tokens: 24,
                eval_prompts: 128,
                rm_steps: 400,
                dpo_steps: 200,
                dpo_eval_interval: 10,
                dpo_lr: 5e-4,
                dpo_betas: &[0.05, 0.1, 1.0, 5.0],
                ipo_betas: &[0.1],
                cdpo: &[(0.1, 0.1)],
                ul_alphas: &[0.05, 0.1, 0.5, 1.0],
                ppo_iterations: 40,
                ppo_eval_interval: 4,
                ppo_batch: 32,
                ppo_targets: &[3.0, 6.0, 9.0, 12.0],
                ppo_gt_tuned: true,
                bon_ns: &[1, 4, 16, 64],
                batch_size: 16,
                default_seeds: 3,
            },
            "gpu" => Scale {
                name: "gpu",
                sft: SFT_GPU,
                n_prefixes: 4000,
                max_new_tokens: 48,
                eval_prompts: 256,
                rm_steps: 1000,
                dpo_steps: 600,
                dpo_eval_interval: 50,
                dpo_lr: 2e-4,
                dpo_betas: &[0.05, 0.1, 1.0, 5.0],
                ipo_betas: &[0.1],
                cdpo: &[(0.1, 0.1)],
                ul_alphas: &[0.05, 0.1, 0.5, 1.0],
                ppo_iterations: 200,
                ppo_eval_interval: 20,
                ppo_batch: 64,
                ppo_targets: &[3.0, 6.0, 9.0, 12.0],
                ppo_gt_tuned: true,
                bon_ns: &[1, 4, 16, 64],
                batch_size: 32,
                default_seeds: 3,
            },
            other => {
                return Err(RlhfError::invalid(
                    "scale",
                    format!("unknown scale {other:?} (quick, small, gpu)"),
                ))
            }
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ReproduceOptions {
    pub scale: String,
    /// Seeds of the algorithm runs (default: the scale's).
    pub seeds: Option<usize>,
    /// Output root (default `reports/dpo-sentiment/<scale>`).
    pub out_dir: Option<PathBuf>,
    /// Only these algorithm families (e.g. `DPO`, `PPO-GT`); all when empty.
    pub only: Vec<String>,
    pub verbose: bool,
    /// Data directory (default [`crate::data::data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// What this process does (parallel sweeps: see [`Part`]).
    pub part: Part,
    /// When the whole sweep started, if before this call (`--jobs`: before the upstream stages and the
    /// workers); the report's wall time counts from it.
    pub started: Option<Instant>,
}

/// The part of the experiment one process runs. A parallel sweep is one `Upstream` call, then `n`
/// `Worker` processes side by side, then one `All` call that finds every stage cached and writes the
/// report (the CLI's `--jobs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Part {
    /// Every stage, then the report.
    #[default]
    All,
    /// SFT, ground truth, pairs and reward models only (what every algorithm run reads).
    Upstream,
    /// The algorithm runs not done and not claimed by another worker: a worker claims a run by creating
    /// `claimed` in its stage directory (`create_new`, atomic), so workers share the sweep without a
    /// coordinator. No report.
    Worker,
}

/// Removes the claims of earlier workers under an output root (call it when no worker is running: a
/// killed sweep leaves its claims behind).
pub fn clear_claims(out_dir: &Path) -> Result<usize> {
    let stages = out_dir.join("stages");
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(&stages) else {
        return Ok(0);
    };
    for e in entries.flatten() {
        let claim = e.path().join(CLAIM_FILE);
        if claim.is_file() {
            std::fs::remove_file(&claim).map_err(|err| RlhfError::io(&claim, err))?;
            n += 1;
        }
    }
    Ok(n)
}

const CLAIM_FILE: &str = "claimed";

/// In a worker: whether this process should run the stage (done stages are read from the cache by
/// everyone; an undone one only by the worker that claims it first).
fn claim(st: &Stages, part: Part, name: &str, cfg: &serde_json::Value) -> Result<bool> {
    if part != Part::Worker || st.is_done(name, cfg) {
        return Ok(true);
    }
    let dir = st.dir(name, cfg);
    std::fs::create_dir_all(&dir).map_err(|e| RlhfError::io(&dir, e))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(CLAIM_FILE))
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(RlhfError::io(dir.join(CLAIM_FILE), e)),
    }
}

/// The output root of a scale (default `reports/dpo-sentiment/<scale>`).
pub fn out_dir_for(opts: &ReproduceOptions) -> Result<PathBuf> {
    let scale = Scale::named(&opts.scale)?;
    Ok(opts.out_dir.clone().unwrap_or_else(|| {
        crate::io::project_root()
            .join("reports/dpo-sentiment")
            .join(scale.name)
    }))
}

/// The algorithm families, as plotted.
pub const ALGORITHMS: [&str; 10] = [
    "DPO",
    "IPO",
    "cDPO",
    "Unlikelihood",
    "Preferred-FT",
    "PPO",
    "PPO-GT",
    "PPO-GT (tuned)",
    "Best-of-N (RM)",
    "Best-of-N (GT)",
];

/// Everything the run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReproduceSummary {
    pub scale: String,
    pub seeds: usize,
    pub out_dir: PathBuf,
    pub sft_val_ppl: f64,
    pub ground_truth_test_accuracy: f64,
    pub pairs: PairsResult,
    pub rm_pairwise_accuracy: f64,
    pub rm_kwise_accuracy: f64,
    pub sft_reward: f64,
    pub points: Vec<Point>,
    /// The run directory of every (algorithm, setting, seed): where its evaluation samples are.
    #[serde(default)]
    pub runs: Vec<RunSource>,
    pub matched: Vec<MatchedKl>,
    pub timings: Vec<StageTiming>,
    pub wall_s: f64,
    /// Nothing was computed for this report: every stage came from the cache (`wall_s` is then only
    /// the time to assemble it).
    #[serde(default)]
    pub from_cache: bool,
}

/// Where the points of one run come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSource {
    pub algorithm: String,
    pub setting: String,
    pub seed: u64,
    /// A trainer's run directory (samples in `eval/step-<step>.jsonl`) or a Best-of-N output directory
    /// (`samples.jsonl`).
    pub dir: PathBuf,
}

/// The preference data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairsResult {
    pub pairs_path: PathBuf,
    pub ranked_path: PathBuf,
    pub prefixes: usize,
    pub pairs: usize,
    pub ranked: usize,
    /// Pairs dropped because both completions had the same score or the same text.
    pub ties: usize,
}

/// Points of a trainer run: its evaluations from `metrics.csv` (`eval/kl_exact`, `eval/score_sigmoid`),
/// each float kept as its IEEE-754 bit pattern in the stage's `done.json` (serde_json's default float
/// parser may round the last bit: a cached stage must give the very same table).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunPoints {
    run_dir: PathBuf,
    bits: Vec<(u64, u64, u64)>,
}

impl RunPoints {
    fn new(run_dir: PathBuf, points: Vec<(u64, f64, f64)>) -> Self {
        let bits = points
            .into_iter()
            .map(|(s, k, r)| (s, k.to_bits(), r.to_bits()))
            .collect();
        RunPoints { run_dir, bits }
    }

    fn points(&self) -> Vec<(u64, f64, f64)> {
        self.bits
            .iter()
            .map(|&(s, k, r)| (s, f64::from_bits(k), f64::from_bits(r)))
            .collect()
    }
}

/// `(step, eval/kl_exact, eval/score_sigmoid)` of every evaluated row of a run's `metrics.csv`.
pub fn eval_points(run_dir: &Path) -> Result<Vec<(u64, f64, f64)>> {
    let path = run_dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| RlhfError::io(&path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| RlhfError::format(&path, "metrics CSV", format!("no column {name:?}")))
    };
    let (js, jk, jr) = (
        col("step")?,
        col("eval/kl_exact")?,
        col("eval/score_sigmoid")?,
    );
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let num = |j: usize| f.get(j).and_then(|s| s.parse::<f64>().ok());
        if let (Some(s), Some(k), Some(r)) = (num(js), num(jk), num(jr)) {
            out.push((s as u64, k, r));
        } else if f.get(jk).is_some_and(|s| !s.is_empty()) {
            return Err(RlhfError::format(
                &path,
                "metrics CSV",
                format!("line {}: bad eval values", i + 2),
            ));
        }
    }
    Ok(out)
}

fn runs_quietly(dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: Some(dir.join("run")),
        resume: ResumeMode::Auto,
        config_file: Some(dir.join("config.toml")),
        progress: false,
        verbose: false,
        ..Default::default()
    }
}

fn write_toml(dir: &Path, text: &str) -> Result<PathBuf> {
    let p = dir.join("config.toml");
    crate::io::atomic_write(&p, text.as_bytes())?;
    Ok(p)
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Samples 4 completions per train prefix with the SFT model, scores them with the ground truth and
/// writes all ordered pairs (TRL JSONL) and the ranked groups (K = 4).
fn make_pairs(
    sft_run: &Path,
    gt: &BowClassifier,
    scale: &Scale,
    data_dir: &Path,
    dir: &Path,
) -> Result<PairsResult> {
    let lm = LoadedLm::from_run(sft_run, "sft_run", tch::Device::cuda_if_available())?;
    let tok = &lm.tokenizer;
    let prefixes = review_prefixes(
        data_dir,
        tok,
        Split::Train,
        scale.n_prefixes,
        &PrefixConfig::default(),
        17,
    )?;
    let (mut pairs, mut ranked, mut ties) = (Vec::new(), Vec::new(), 0usize);
    let _no_grad = tch::no_grad_guard();
    for (c, chunk) in prefixes.chunks(32).enumerate() {
        // Each prefix 4 times in one batch: rows 4i..4i+3 are its completions.
        let batch: Vec<Vec<i64>> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), 4))
            .collect();
        let mut cfg = GenerationConfig::new(scale.max_new_tokens, tok.eos_id(), tok.pad_id());
        cfg.seed = 1000 + c as u64;
        let g = generate(lm.lm(), &batch, &cfg)?;
        let responses = g.responses()?;
        let texts: Vec<String> = responses
            .iter()
            .map(|r| {
                let body: Vec<i64> = r.iter().copied().filter(|&t| t != tok.eos_id()).collect();
                tok.decode(&body)
            })
            .collect::<Result<_>>()?;
        for (i, prefix) in chunk.iter().enumerate() {
            let prompt = tok.decode(prefix)?;
            let full: Vec<String> = (0..4)
                .map(|k| format!("{prompt}{}", texts[4 * i + k]))
                .collect();
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let s = Vec::<f64>::try_from(&gt.score(&refs)?.to_kind(tch::Kind::Double))?;
            // p(positive) = σ(logit): the ground-truth reward of the paper.
            let p: Vec<f64> = s.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let comps: Vec<&String> = order.iter().map(|&k| &texts[4 * i + k]).collect();
            let distinct = (0..4)
                .all(|a| (a + 1..4).all(|b| comps[a] != comps[b] && p[order[a]] != p[order[b]]));
            if distinct && comps.iter().all(|c| !c.is_empty()) {
                ranked.push(json!({
                    "prompt": prompt,
                    "completions": comps,
                    "scores": order.iter().map(|&k| p[k]).collect::<Vec<f64>>(),
                }));
            }
            for a in 0..4 {
                for b in a + 1..4 {
                    let (w, l) = (order[a], order[b]);
                    let (cw, cl) = (&texts[4 * i + w], &texts[4 * i + l]);
                    if p[w] == p[l] || cw == cl || cw.is_empty() || cl.is_empty() {
                        ties += 1;
                        continue;
                    }
                    pairs.push(PreferencePair {
                        prompt: prompt.clone(),
                        chosen: cw.clone(),
                        rejected: cl.clone(),
                        score_chosen: Some(p[w]),
                        score_rejected: Some(p[l]),
                    });
                }
            }
        }
    }
    let pairs_path = dir.join("pairs.jsonl");
    crate::data::write_preferences(&pairs_path, &pairs)?;
    let ranked_path = dir.join("ranked.jsonl");
    let body: String = ranked.iter().map(|r| format!("{r}\n")).collect();
    crate::io::atomic_write(&ranked_path, body.as_bytes())?;
    Ok(PairsResult {
        pairs_path,
        ranked_path,
        prefixes: prefixes.len(),
        pairs: pairs.len(),
        ranked: ranked.len(),
        ties,
    })
}

/// A DPO-family run of the sweep.
struct DpoSpec {
    algorithm: &'static str,
    setting: String,
    loss: String,
}

fn dpo_specs(scale: &Scale) -> Vec<DpoSpec> {
    let mut v = Vec::new();
    for &b in scale.dpo_betas {
        v.push(DpoSpec {
            algorithm: "DPO",
            setting: format!("beta={b}"),
            loss: format!("objective = \"dpo\"\nbeta = {b:?}"),
        });
    }
    for &b in scale.ipo_betas {
        v.push(DpoSpec {
            algorithm: "IPO",
            setting: format!("beta={b}"),
            loss: format!("objective = \"ipo\"\nbeta = {b:?}"),
        });
    }
    for &(b, e) in scale.cdpo {
        v.push(DpoSpec {
            algorithm: "cDPO",
            setting: format!("beta={b},eps={e}"),
            loss: format!("objective = \"cdpo\"\nbeta = {b:?}\nlabel_smoothing = {e:?}"),
        });
    }
    for &a in scale.ul_alphas {
        v.push(DpoSpec {
            algorithm: "Unlikelihood",
            setting: format!("alpha={a}"),
            loss: format!("objective = \"unlikelihood\"\nbeta = 0.1\nalpha = {a:?}"),
        });
    }
    v.push(DpoSpec {
        algorithm: "Preferred-FT",
        setting: "-".into(),
        loss: "objective = \"preferred-ft\"\nbeta = 0.1".into(),
    });
    v
}

/// A PPO run of the sweep. The adaptive controller's horizon is one rollout batch, so β can move by up to
/// 20% per iteration (Ziegler et al. 2019's clip): with a few dozen iterations a TRL-sized horizon
/// (10,000 samples) would leave β at its initial value.
struct PpoSpec {
    algorithm: &'static str,
    setting: String,
    reward: &'static str,
    target: f64,
    tuned: bool,
}

fn ppo_specs(scale: &Scale) -> Vec<PpoSpec> {
    let mut v = Vec::new();
    for &t in scale.ppo_targets {
        v.push(PpoSpec {
            algorithm: "PPO",
            setting: format!("target_kl={t}"),
            reward: "reward-model",
            target: t,
            tuned: false,
        });
        v.push(PpoSpec {
            algorithm: "PPO-GT",
            setting: format!("target_kl={t}"),
            reward: "ground-truth",
            target: t,
            tuned: false,
        });
        if scale.ppo_gt_tuned {
            v.push(PpoSpec {
                algorithm: "PPO-GT (tuned)",
                setting: format!("target_kl={t}"),
                reward: "ground-truth",
                target: t,
                tuned: true,
            });
        }
    }
    v
}

/// Checkpoints of a sweep run: about four per run (a killed run loses at most a quarter), and never more
/// often than it evaluates.
fn checkpoint_interval(steps: u64, eval_interval: u64) -> u64 {
    (steps / 4).max(eval_interval).max(1)
}

fn eval_section(scale: &Scale, gt_dir: &Path) -> String {
    format!(
        "[eval]\nprompts = {}\nmax_new_tokens = {}\nground_truth = {}\nseed = 7\n",
        scale.eval_prompts,
        scale.max_new_tokens,
        toml_path(gt_dir)
    )
}

/// Runs the whole experiment (see the module documentation).
pub fn reproduce(opts: &ReproduceOptions) -> Result<ReproduceSummary> {
    let t0 = opts.started.unwrap_or_else(Instant::now);
    let scale = Scale::named(&opts.scale)?;
    let seeds = opts.seeds.unwrap_or(scale.default_seeds);
    crate::core::check::count_in("seeds", seeds, 1, 100)?;
    for a in &opts.only {
        if !ALGORITHMS.contains(&a.as_str()) {
            return Err(RlhfError::invalid(
                "only",
                format!("unknown algorithm {a:?} (known: {})", ALGORITHMS.join(", ")),
            ));
        }
    }
    let wanted = |a: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == a);
    let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);
    let out = out_dir_for(opts)?;
    let mut st = Stages::new(out.join("stages"), opts.verbose)?;
    let say = |m: String| {
        if opts.verbose {
            eprintln!("{m}");
        }
    };

    // 1. SFT.
    let sft_cfg = json!({ "sft": scale.sft });
    let sft_dir = st.dir("sft", &sft_cfg);
    let sft_val_ppl: f64 = st.run("sft", &sft_cfg, |dir| {
        let path = write_toml(dir, &format!("name = \"sft\"\n{}", scale.sft))?;
        let cfg = crate::train::sft::SftConfig::from_file(&path)?;
        let s = crate::train::sft::run_sft(
            &cfg,
            &RunOptions {
                data_dir: Some(data_dir.clone()),
                ..runs_quietly(dir)
            },
        )?;
        Ok(s.final_val_ppl)
    })?;
    let sft_run = sft_dir.join("run");
    say(format!("sft: validation perplexity {sft_val_ppl:.1}"));

    // 2. Ground truth.
    let gt_cfg = json!({ "classifier": "nb-lr", "seed": 0 });
    let gt_dir = st.dir("ground-truth", &gt_cfg).join("model");
    let gt_acc: f64 = st.run("ground-truth", &gt_cfg, |dir| {
        let (model, metrics) = train_classifier_on(&data_dir, &ClassifierConfig::default())?;
        model.save(&dir.join("model"), Some(&metrics))?;
        Ok(metrics.test_accuracy)
    })?;
    let gt = BowClassifier::load(&gt_dir)?;
    say(format!("ground truth: test accuracy {gt_acc:.4}"));

    // 3. Preference pairs.
    let pairs_cfg = json!({ "sft_run": sft_run, "ground_truth": gt_dir, "n_prefixes": scale.n_prefixes,
        "samples": 4, "max_new_tokens": scale.max_new_tokens });
    let pairs: PairsResult = st.run("pairs", &pairs_cfg, |dir| {
        make_pairs(&sft_run, &gt, &scale, &data_dir, dir)
    })?;
    say(format!(
        "pairs: {} pairs, {} ranked groups from {} prefixes",
        pairs.pairs, pairs.ranked, pairs.prefixes
    ));

    // 4. Reward models: flat pairs vs K = 4 groups.
    let rm_text = |kind: &str, data_path: &Path, format: &str, batch: i64| {
        format!(
            "name = \"rm\"\nseed = 1\nthreads = 1\nsft_run = {}\neval_interval = {}\ncheckpoint_interval = {}\nlog_interval = 5\nkeep_checkpoints = 1\n\
             [data]\nformat = \"{format}\"\npath = {}\n[loss]\nkind = \"{kind}\"\n\
             [optim]\nlr = 1e-3\nmin_lr = 1e-4\nwarmup_steps = 10\nmax_steps = {}\nbatch_size = {batch}\ngrad_clip = 1.0\nweight_decay = 0.0\n",
            toml_path(&sft_run),
            (scale.rm_steps / 4).max(1),
            scale.rm_steps,
            toml_path(data_path),
            scale.rm_steps
        )
    };
    let mut rm_acc = [f64::NAN; 2];
    let mut rm_runs = [PathBuf::new(), PathBuf::new()];
    for (i, (name, kind, path, format, batch)) in [
        (
            "rm-pairwise",
            "pairwise",
            &pairs.pairs_path,
            "pairs",
            scale.batch_size,
        ),
        (
            "rm-kwise",
            "kwise",
            &pairs.ranked_path,
            "ranked",
            (scale.batch_size / 4).max(1),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let text = rm_text(kind, path, format, batch);
        let cfg = json!({ "toml": text });
        rm_runs[i] = st.dir(name, &cfg).join("run");
        rm_acc[i] = st.run(name, &cfg, |dir| {
            let p = write_toml(dir, &text)?;
            let c = crate::train::rm::RmConfig::from_file(&p)?;
            Ok(crate::train::rm::run_rm(
                &c,
                &RunOptions {
                    data_dir: Some(data_dir.clone()),
                    ..runs_quietly(dir)
                },
            )?
            .final_val_accuracy)
        })?;
        say(format!("{name}: held-out pair accuracy {:.4}", rm_acc[i]));
    }
    let rm_run = rm_runs[0].clone();
    // Upstream only: no algorithm run.
    let run_seeds = if opts.part == Part::Upstream {
        0
    } else {
        seeds as u64
    };

    // 5.–6. The DPO family and PPO, per seed.
    let mut points: Vec<Point> = Vec::new();
    let mut runs: Vec<RunSource> = Vec::new();
    let push_points = |alg: &str,
                       setting: &str,
                       seed: u64,
                       rp: &RunPoints,
                       points: &mut Vec<Point>,
                       runs: &mut Vec<RunSource>| {
        runs.push(RunSource {
            algorithm: alg.into(),
            setting: setting.into(),
            seed,
            dir: rp.run_dir.clone(),
        });
        for (step, kl, reward) in rp.points() {
            points.push(Point {
                algorithm: alg.into(),
                setting: setting.into(),
                seed,
                step,
                kl,
                reward,
            });
        }
    };
    let mut sft_reward = f64::NAN;
    for seed in 0..run_seeds {
        for spec in dpo_specs(&scale)
            .into_iter()
            .filter(|s| wanted(s.algorithm))
        {
            let text = format!(
                "name = \"dpo\"\nseed = {}\nthreads = 1\nsft_run = {}\neval_interval = {}\ncheckpoint_interval = {}\nlog_interval = 5\nkeep_checkpoints = 1\n\
                 [data]\npath = {}\npadding = \"right\"\n[loss]\n{}\n[optim]\nlr = {:?}\nmin_lr = {:?}\nwarmup_steps = 5\nmax_steps = {}\nbatch_size = {}\ngrad_clip = 1.0\nweight_decay = 0.0\n{}",
                seed + 1,
                toml_path(&sft_run),
                scale.dpo_eval_interval,
                checkpoint_interval(scale.dpo_steps, scale.dpo_eval_interval),
                toml_path(&pairs.pairs_path),
                spec.loss,
                scale.dpo_lr,
                scale.dpo_lr,
                scale.dpo_steps,
                scale.batch_size,
                eval_section(&scale, &gt_dir)
            );
            let cfg = json!({ "toml": text });
            let name = format!(
                "{}-{}-seed{seed}",
                spec.algorithm.to_lowercase(),
                spec.setting.replace(['=', ','], "_")
            );
            if !claim(&st, opts.part, &name, &cfg)? {
                continue;
            }
            let rp: RunPoints = st.run(&name, &cfg, |dir| {
                let p = write_toml(dir, &text)?;
                let c = crate::train::dpo::DpoTrainConfig::from_file(&p)?;
                let s = crate::train::dpo::run_dpo(
                    &c,
                    &RunOptions {
                        data_dir: Some(data_dir.clone()),
                        ..runs_quietly(dir)
                    },
                )?;
                Ok(RunPoints::new(s.run_dir.clone(), eval_points(&s.run_dir)?))
            })?;
            say(format!("{name}: {} points", rp.bits.len()));
            push_points(
                spec.algorithm,
                &spec.setting,
                seed,
                &rp,
                &mut points,
                &mut runs,
            );
        }
        for spec in ppo_specs(&scale)
            .into_iter()
            .filter(|s| wanted(s.algorithm))
        {
            let batch = if spec.tuned {
                2 * scale.ppo_batch
            } else {
                scale.ppo_batch
            };
            let text = format!(
                "name = \"ppo\"\nseed = {}\nthreads = 1\nsft_run = {}\nreward = \"{}\"\nreward_model_run = {}\ncritic_init = \"sft\"\n\
                 preset = \"rlhf-lab\"\nreward_norm = \"{}\"\nppo_epochs = 4\nnum_minibatches = 4\nvf_coef = 0.1\nmax_new_tokens = {}\n\
                 eval_interval = {}\ncheckpoint_interval = {}\nkeep_checkpoints = 1\n\
                 {}\n[kl]\nkind = \"adaptive\"\ninit = 0.1\ntarget = {:?}\nhorizon = {batch}\n\
                 [optim]\nlr = 3e-4\nmin_lr = 3e-4\nwarmup_steps = 0\nmax_steps = {}\nbatch_size = {batch}\ngrad_clip = 1.0\nweight_decay = 0.0\n",
                seed + 1,
                toml_path(&sft_run),
                spec.reward,
                toml_path(&rm_run),
                if spec.tuned { "running" } else { "none" },
                scale.max_new_tokens,
                scale.ppo_eval_interval,
                checkpoint_interval(scale.ppo_iterations, scale.ppo_eval_interval),
                eval_section(&scale, &gt_dir),
                spec.target,
                scale.ppo_iterations,
            );
            let cfg = json!({ "toml": text });
            let name = format!(
                "{}-{}-seed{seed}",
                spec.algorithm.to_lowercase().replace([' ', '(', ')'], ""),
                spec.setting.replace('=', "_")
            );
            if !claim(&st, opts.part, &name, &cfg)? {
                continue;
            }
            let rp: RunPoints = st.run(&name, &cfg, |dir| {
                let p = write_toml(dir, &text)?;
                let c = crate::train::ppo::PpoConfig::from_file(&p)?;
                let s = crate::train::ppo::run_ppo(
                    &c,
                    &RunOptions {
                        data_dir: Some(data_dir.clone()),
                        ..runs_quietly(dir)
                    },
                )?;
                Ok(RunPoints::new(s.run_dir.clone(), eval_points(&s.run_dir)?))
            })?;
            say(format!("{name}: {} points", rp.bits.len()));
            push_points(
                spec.algorithm,
                &spec.setting,
                seed,
                &rp,
                &mut points,
                &mut runs,
            );
        }
        // 7. Best-of-N with the learned RM and with the ground truth.
        for (alg, scorer) in [
            ("Best-of-N (RM)", "reward-model"),
            ("Best-of-N (GT)", "classifier"),
        ] {
            if !wanted(alg) {
                continue;
            }
            let scorer_path = if scorer == "classifier" {
                gt_dir.clone()
            } else {
                rm_run.clone()
            };
            let text = format!(
                "name = \"bon\"\nsft_run = {}\nn = {:?}\nthreads = 1\n[prompts]\nsplit = \"test\"\ncount = {}\nseed = 7\n\
                 [sampling]\nmax_new_tokens = {}\nseed = {}\n[scorer]\nkind = \"{scorer}\"\npath = {}\nground_truth = {}\n",
                toml_path(&sft_run),
                scale.bon_ns,
                scale.eval_prompts,
                scale.max_new_tokens,
                seed + 1,
                toml_path(&scorer_path),
                toml_path(&gt_dir)
            );
            let cfg = json!({ "toml": text });
            let name = format!(
                "{}-seed{seed}",
                alg.to_lowercase().replace([' ', '(', ')'], "")
            );
            if !claim(&st, opts.part, &name, &cfg)? {
                continue;
            }
            let rp: RunPoints = st.run(&name, &cfg, |dir| {
                let p = write_toml(dir, &text)?;
                let c = crate::train::best_of_n::BestOfNConfig::from_file(&p)?;
                let s = crate::train::best_of_n::run_best_of_n(
                    &c,
                    &crate::train::best_of_n::BestOfNOptions {
                        out_dir: Some(dir.join("run")),
                        data_dir: Some(data_dir.clone()),
                        config_file: Some(p.clone()),
                    },
                )?;
                let pts = s
                    .rows
                    .iter()
                    .map(|r| {
                        (
                            r.n as u64,
                            r.kl_analytic,
                            r.ground_truth_sigmoid_mean.unwrap_or(r.score_sigmoid_mean),
                        )
                    })
                    .collect();
                Ok(RunPoints::new(s.out_dir, pts))
            })?;
            runs.push(RunSource {
                algorithm: alg.into(),
                setting: "-".into(),
                seed,
                dir: rp.run_dir.clone(),
            });
            for (n, kl, reward) in rp.points() {
                points.push(Point {
                    algorithm: alg.into(),
                    setting: format!("N={n}"),
                    seed,
                    step: n,
                    kl,
                    reward,
                });
            }
        }
    }

    // 8. The frontier. The SFT policy's reward: the step-0 evaluations (every trainer evaluates the SFT
    // model before its first step, on the same prompts and streams).
    let at_zero: Vec<f64> = points
        .iter()
        .filter(|p| p.step == 0 && !p.algorithm.starts_with("Best-of-N"))
        .map(|p| p.reward)
        .collect();
    if !at_zero.is_empty() {
        sft_reward = at_zero.iter().sum::<f64>() / at_zero.len() as f64;
    }
    let matched = matched_kl(&points, &MATCHED_KL);
    let timings = st.timings.clone();
    let summary = ReproduceSummary {
        scale: scale.name.into(),
        seeds,
        out_dir: out.clone(),
        sft_val_ppl,
        ground_truth_test_accuracy: gt_acc,
        pairs,
        rm_pairwise_accuracy: rm_acc[0],
        rm_kwise_accuracy: rm_acc[1],
        sft_reward,
        points,
        runs,
        matched,
        from_cache: opts.started.is_none() && timings.iter().all(|t| t.cached),
        timings,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    if opts.part == Part::All {
        write_frontier_report(&summary, &scale)?;
    }
    Ok(summary)
}

/// The KL range the figure opens on (nats; the paper's Figure 2 spans about 0–25). Points beyond it stay
/// in `frontier.csv` and in the interactive figure (zoom out); the static SVG omits them.
pub const FRONTIER_KL_MAX: f64 = 25.0;

/// The figure's axes (the paper's Figure 2).
pub const FRONTIER_AXES: (&str, &str) = (
    "sequence KL(π ‖ π_ref), nats",
    "mean reward p(positive) on test prefixes",
);

fn frontier_title(s: &ReproduceSummary) -> String {
    format!("Reward–KL frontier, {} scale, {} seed(s)", s.scale, s.seeds)
}

/// Every algorithm of `points` as a figure series, in [`ALGORITHMS`] order.
pub fn frontier_figure_series(points: &[Point]) -> Vec<report::XySeries> {
    ALGORITHMS
        .iter()
        .filter(|a| points.iter().any(|x| x.algorithm == **a))
        .map(|a| frontier_series(points, a))
        .collect()
}

/// The frontier figure of a summary (what `frontier.html` shows), for a notebook.
pub fn frontier_plot(s: &ReproduceSummary) -> plotly::Plot {
    report::xy_plot(
        &frontier_title(s),
        FRONTIER_AXES.0,
        FRONTIER_AXES.1,
        &frontier_figure_series(&s.points),
        Some(FRONTIER_KL_MAX),
    )
}

/// Points of KL grid on which the figure's mean line and band are drawn.
const BAND_GRID: usize = 60;

/// One algorithm of the figure: every point, and — on a KL grid where every seed's envelope reaches —
/// the mean of the per-seed upper envelopes with a ± 1 std band ([`matched_kl`], the summary's numbers).
fn frontier_series(points: &[Point], algorithm: &str) -> report::XySeries {
    let own: Vec<Point> = points
        .iter()
        .filter(|x| x.algorithm == algorithm)
        .cloned()
        .collect();
    let mut seeds: Vec<u64> = own.iter().map(|x| x.seed).collect();
    seeds.sort();
    seeds.dedup();
    let kl_max = own
        .iter()
        .map(|x| x.kl)
        .filter(|k| k.is_finite())
        .fold(0.0f64, f64::max);
    let mut grid: Vec<f64> = (0..=BAND_GRID)
        .map(|i| kl_max * i as f64 / BAND_GRID as f64)
        .collect();
    // The points' own KLs too, so the line passes through the envelope's corners.
    grid.extend(own.iter().map(|x| x.kl).filter(|k| k.is_finite()));
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    let (mut line, mut band) = (Vec::new(), Vec::new());
    for m in matched_kl(&own, &grid) {
        if let (Some(mu), Some(sd), true) = (m.mean, m.std, m.n_seeds == seeds.len()) {
            line.push((m.kl, mu));
            if seeds.len() > 1 {
                band.push((m.kl, mu - sd, mu + sd));
            }
        }
    }
    report::XySeries {
        name: algorithm.to_string(),
        points: own.iter().map(|x| (x.kl, x.reward)).collect(),
        line,
        line_label: if seeds.len() > 1 {
            format!("mean envelope ± std, {} seeds", seeds.len())
        } else {
            "envelope".into()
        },
        band,
    }
}

/// KL (nats) at which `samples.md` shows each algorithm's texts.
pub const SAMPLES_AT_KL: f64 = 2.0;
const SAMPLES_PER_ALGORITHM: usize = 4;

/// `samples.md`: per algorithm, the first held-out texts of the seed-0 evaluation whose KL is closest to
/// [`SAMPLES_AT_KL`] (a trainer's `eval/step-<step>.jsonl`; for Best-of-N the kept candidate of the N
/// closest to it).
fn write_samples(s: &ReproduceSummary, algs: &[&str]) -> Result<()> {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let one_line = |t: &str| t.replace(['\n', '\r'], " ").replace('|', "\\|");
    let mut md = format!(
        "# Samples at comparable KL\n\nPer algorithm: the first {SAMPLES_PER_ALGORITHM} held-out prompts of the \
         evaluation (seed 0) whose sequence KL is closest to {SAMPLES_AT_KL} nats. **Bold**: the prompt; \
         reward: p(positive) of the ground-truth classifier.\n"
    );
    for a in algs {
        let Some(p) = s
            .points
            .iter()
            .filter(|x| x.algorithm == *a && x.seed == 0)
            .min_by(|x, y| {
                (x.kl - SAMPLES_AT_KL)
                    .abs()
                    .total_cmp(&(y.kl - SAMPLES_AT_KL).abs())
            })
        else {
            continue;
        };
        let bon = a.starts_with("Best-of-N");
        let Some(src) = s.runs.iter().find(|r| {
            r.algorithm == p.algorithm && r.seed == p.seed && (bon || r.setting == p.setting)
        }) else {
            continue;
        };
        let mut rows: Vec<(String, String, f64)> = Vec::new();
        let file = if bon {
            src.dir.join("samples.jsonl")
        } else {
            src.dir
                .join("eval")
                .join(format!("step-{:06}.jsonl", p.step))
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // runs from before samples were saved
        };
        for line in text.lines().take(SAMPLES_PER_ALGORITHM) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| RlhfError::format(&file, "samples JSONL", e))?;
            let prompt = v["prompt"].as_str().unwrap_or("").to_string();
            let (response, score) = if bon {
                let k = v["kept"][p.step.to_string()].as_u64().unwrap_or(0) as usize;
                let c = &v["candidates"][k];
                (
                    c["response"].as_str().unwrap_or(""),
                    c["ground_truth"].as_f64(),
                )
            } else {
                (v["response"].as_str().unwrap_or(""), v["score"].as_f64())
            };
            rows.push((
                prompt,
                response.to_string(),
                score.map_or(f64::NAN, sigmoid),
            ));
        }
        md.push_str(&format!(
            "\n## {a} — {}, step {}: KL {:.2}, mean reward {:.3}\n\n| reward | text |\n|---|---|\n",
            p.setting, p.step, p.kl, p.reward
        ));
        for (prompt, response, r) in rows {
            md.push_str(&format!(
                "| {r:.3} | **{}**{} |\n",
                one_line(&prompt),
                one_line(&response)
            ));
        }
    }
    crate::io::atomic_write(s.out_dir.join("samples.md"), md.as_bytes())
}

/// `frontier.csv`, `matched_kl.csv`, `summary.json`, `summary.md`, `samples.md`, `frontier.html`,
/// `frontier.svg` and `manifest.json` in the output root.
fn write_frontier_report(s: &ReproduceSummary, scale: &Scale) -> Result<()> {
    use polars::prelude::{Column, DataFrame};
    let out = &s.out_dir;
    let p = &s.points;
    let mut df = DataFrame::new(
        p.len(),
        vec![
            Column::new(
                "algorithm".into(),
                p.iter().map(|x| x.algorithm.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "setting".into(),
                p.iter().map(|x| x.setting.clone()).collect::<Vec<_>>(),
            ),
            Column::new("seed".into(), p.iter().map(|x| x.seed).collect::<Vec<_>>()),
            Column::new("step".into(), p.iter().map(|x| x.step).collect::<Vec<_>>()),
            Column::new("kl".into(), p.iter().map(|x| x.kl).collect::<Vec<_>>()),
            Column::new(
                "reward".into(),
                p.iter().map(|x| x.reward).collect::<Vec<_>>(),
            ),
        ],
    )?;
    report::write_csv(out.join("frontier.csv"), &mut df)?;
    let m = &s.matched;
    let mut mdf = DataFrame::new(
        m.len(),
        vec![
            Column::new(
                "algorithm".into(),
                m.iter().map(|x| x.algorithm.clone()).collect::<Vec<_>>(),
            ),
            Column::new("kl".into(), m.iter().map(|x| x.kl).collect::<Vec<_>>()),
            Column::new(
                "n_seeds".into(),
                m.iter().map(|x| x.n_seeds as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "reward_mean".into(),
                m.iter().map(|x| x.mean).collect::<Vec<_>>(),
            ),
            Column::new(
                "reward_std".into(),
                m.iter().map(|x| x.std).collect::<Vec<_>>(),
            ),
        ],
    )?;
    report::write_csv(out.join("matched_kl.csv"), &mut mdf)?;
    crate::io::write_json(out.join("summary.json"), s)?;

    // Per algorithm: all points and the envelope over all seeds.
    let mut algs: Vec<&str> = ALGORITHMS
        .iter()
        .copied()
        .filter(|a| p.iter().any(|x| x.algorithm == *a))
        .collect();
    algs.dedup();
    let title = frontier_title(s);
    report::write_xy_figure(
        &out.join("frontier"),
        &title,
        FRONTIER_AXES.0,
        FRONTIER_AXES.1,
        &frontier_figure_series(p),
        Some(FRONTIER_KL_MAX),
    )?;

    // summary.md: the table of reward at matched KL.
    let mut md = format!(
        "# {title}\n\nSFT validation perplexity {:.1}; ground-truth classifier test accuracy {:.4}; {} preference pairs \
         ({} ranked groups of 4) from {} prefixes; reward model held-out pair accuracy: pairwise {:.4}, K-wise {:.4}; \
         SFT policy reward {:.4}. Stages' compute time {:.0} s (summed as each ran); wall time {:.0} s{}.\n\n| algorithm |",
        s.sft_val_ppl,
        s.ground_truth_test_accuracy,
        s.pairs.pairs,
        s.pairs.ranked,
        s.pairs.prefixes,
        s.rm_pairwise_accuracy,
        s.rm_kwise_accuracy,
        s.sft_reward,
        s.timings.iter().map(|t| t.wall_s).sum::<f64>(),
        s.wall_s,
        if s.from_cache {
            " (every stage read from the cache)"
        } else {
            ""
        }
    );
    for k in MATCHED_KL {
        md.push_str(&format!(" reward at KL {k} |"));
    }
    md.push_str(" max reward (KL) |\n|---|");
    for _ in MATCHED_KL {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    for a in &algs {
        md.push_str(&format!("| {a} |"));
        for k in MATCHED_KL {
            let cell = m
                .iter()
                .find(|x| x.algorithm == *a && x.kl == k)
                .and_then(|x| x.mean.zip(x.std).map(|(mu, sd)| (mu, sd, x.n_seeds)))
                .map_or("–".to_string(), |(mu, sd, n)| {
                    format!("{mu:.3} ± {sd:.3} (n={n})")
                });
            md.push_str(&format!(" {cell} |"));
        }
        let best = p
            .iter()
            .filter(|x| x.algorithm == *a)
            .max_by(|x, y| x.reward.total_cmp(&y.reward));
        md.push_str(&best.map_or(" – |\n".to_string(), |b| {
            format!(" {:.3} ({:.2}) |\n", b.reward, b.kl)
        }));
    }
    md.push_str("\n| stage | wall s | cached |\n|---|---|---|\n");
    for t in &s.timings {
        md.push_str(&format!(
            "| {} | {:.1} | {} |\n",
            t.stage, t.wall_s, t.cached
        ));
    }
    crate::io::atomic_write(out.join("summary.md"), md.as_bytes())?;
    write_samples(s, &algs)?;

    let mut manifest = RunManifest::new(
        &format!("dpo-sentiment-{}", s.scale),
        "reproduce",
        serde_json::to_value(scale).unwrap_or_default(),
        0,
        tch::Device::cuda_if_available(),
    );
    manifest.finished_at = Some(report::utc_now());
    manifest.results.insert("wall_s".into(), json!(s.wall_s));
    manifest.results.insert("seeds".into(), json!(s.seeds));
    manifest.save(out.join("manifest.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(alg: &str, seed: u64, kl: f64, reward: f64) -> Point {
        Point {
            algorithm: alg.into(),
            setting: "-".into(),
            seed,
            step: 0,
            kl,
            reward,
        }
    }

    #[test]
    fn figure_line_is_the_seed_mean_where_every_seed_reaches_and_the_band_its_std() {
        // Seed 0 reaches KL 4, seed 1 only KL 2: the line and band stop at 2.
        let pts = vec![
            p("DPO", 0, 0.0, 0.5),
            p("DPO", 0, 2.0, 0.9),
            p("DPO", 0, 4.0, 1.0),
            p("DPO", 1, 0.0, 0.5),
            p("DPO", 1, 2.0, 0.7),
            p("PPO", 0, 1.0, 0.6),
        ];
        let s = frontier_series(&pts, "DPO");
        assert_eq!(s.points.len(), 5);
        assert!(s.line.iter().all(|&(x, _)| x <= 2.0));
        let at2 = s.line.iter().find(|&&(x, _)| x == 2.0).unwrap().1;
        assert!((at2 - 0.8).abs() < 1e-12);
        let (_, lo, hi) = *s.band.iter().find(|b| b.0 == 2.0).unwrap();
        let sd = (0.02f64).sqrt(); // sample std of {0.9, 0.7}
        assert!((hi - lo - 2.0 * sd).abs() < 1e-12 && (lo - (0.8 - sd)).abs() < 1e-12);
        assert_eq!(s.band.len(), s.line.len());
        // One seed: the line is that seed's envelope, and there is no band.
        let one = frontier_series(&pts, "PPO");
        assert!(one.band.is_empty());
        assert_eq!(one.line, vec![(1.0, 0.6)]);
        assert_eq!(
            frontier_figure_series(&pts)
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["DPO", "PPO"]
        );
    }
}
