//! Best-of-N sampling (rejection sampling by a scorer): for every prompt, draw N responses from a
//! policy (an SFT run), score each with a scorer — the ground-truth classifier or a trained reward
//! model, any [`SentimentScorer`] — and keep the best one. No training: the "policy" is the
//! best-of-N distribution π_N of the base policy π.
//!
//! # KL of the best-of-N policy
//! Stiennon et al. 2020 ("Learning to summarize from human feedback", Appendix G.3) and Nakano et
//! al. 2021 (WebGPT) report the KL of best-of-N as `KL(π_N ‖ π) = log N − (N − 1)/N`
//! ([`analytic_kl`]). Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment
//! policy", Theorem 1) show that this is an **upper bound** that holds for every π when scores have
//! no ties, reached only in the limit where every single outcome has vanishing probability (a
//! continuous outcome space). For a categorical π with distinct scores the exact π_N is
//! ([`categorical_best_of_n`]), with outcomes sorted by increasing score and `F` the CDF of π:
//! `π_N(y_k) = F(y_k)^N − F(y_{k−1})^N` (the max of N i.i.d. draws is ≤ y_k iff all N are).
//! tests/best_of_n.rs checks the exact KL against the bound, the continuous limit, and a Monte-Carlo
//! run of the selection rule against π_N.
//!
//! # Sampling
//! Candidate `j` of every prompt is drawn with the evaluator's seeding ([`crate::train::eval`]) from
//! the seed `seed + j·0xD1B54A32D192ED03`, so candidate 0 is exactly the evaluator's sample (with the
//! same seed, batch size and `max_new_tokens`), and the first N candidates do not depend on how many
//! more are drawn: the kept score of a prompt is the running maximum over candidates, so the mean
//! kept score is non-decreasing in N on one seed. Candidates are scored on `prompt ‖ response` (the
//! evaluator's text); the first of equal best scores is kept ([`best_index`]).

use crate::data::Split;
use crate::error::{Result, RlhfError};
use crate::ground_truth::sentiment::BowClassifier;
use crate::ground_truth::SentimentScorer;
use crate::model::generate::{generate, GenerationConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::RlhfLm;
use crate::train::config::{self, TrainConfig};
use crate::train::eval::score_texts;
use crate::train::lm::LoadedLm;
use crate::train::prompts::PrefixConfig;
use crate::train::report::RunManifest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Largest N accepted.
pub const MAX_N: usize = 4096;

/// `KL(π_N ‖ π) = log N − (N − 1)/N` (Stiennon et al. 2020, App. G.3; an upper bound by Beirami et
/// al. 2024, Thm. 1, exact in the continuous limit — see the module docs). `n ≥ 1`.
pub fn analytic_kl(n: usize) -> Result<f64> {
    crate::core::check::count_in("n", n, 1, usize::MAX)?;
    let n = n as f64;
    Ok(n.ln() - (n - 1.0) / n)
}

/// Index of the largest score, the first one among equal maxima; `None` for no score or a NaN.
pub fn best_index(scores: &[f64]) -> Option<usize> {
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|b| s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

/// The exact best-of-N distribution of a categorical policy `probs` (non-negative, summing to 1 within
/// 1e-9) whose outcomes have the pairwise **distinct** finite `scores`: outcome `k` is kept with
/// probability `F(y_k)^N − F(y_{k−1})^N` in increasing-score order (see the module docs).
pub fn categorical_best_of_n(probs: &[f64], scores: &[f64], n: usize) -> Result<Vec<f64>> {
    crate::core::check::count_in("n", n, 1, usize::MAX)?;
    if probs.is_empty() || probs.len() != scores.len() {
        return Err(RlhfError::invalid(
            "scores",
            format!(
                "{} scores for {} probabilities (need one per outcome, ≥ 1)",
                scores.len(),
                probs.len()
            ),
        ));
    }
    if probs.iter().any(|p| !p.is_finite() || *p < 0.0) {
        return Err(RlhfError::invalid("probs", "must be finite and ≥ 0"));
    }
    let total: f64 = probs.iter().sum();
    if (total - 1.0).abs() > 1e-9 {
        return Err(RlhfError::out_of_range(
            "probs",
            total,
            "a sum of 1 (± 1e-9)",
        ));
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(RlhfError::NonFinite {
            arg: "scores".into(),
            count: scores.iter().filter(|s| !s.is_finite()).count() as i64,
        });
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    if order.windows(2).any(|w| scores[w[0]] == scores[w[1]]) {
        return Err(RlhfError::invalid(
            "scores",
            "must be pairwise distinct (no ties)",
        ));
    }
    let mut out = vec![0.0; probs.len()];
    let (mut cdf, mut prev_pow) = (0.0f64, 0.0f64);
    for &k in &order {
        cdf = (cdf + probs[k]).min(1.0);
        let pow = cdf.powi(n as i32);
        out[k] = (pow - prev_pow).max(0.0);
        prev_pow = pow;
    }
    Ok(out)
}

/// `KL(p ‖ q) = Σ_i p_i log(p_i / q_i)` with `0 log 0 = 0`; `+∞` if some `p_i > 0` has `q_i = 0`.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(pi, qi)| pi * (pi / qi).ln())
        .sum()
}

// ---------------------------------------------------------------------------------------------------
// Sampling and reranking
// ---------------------------------------------------------------------------------------------------

/// How to sample the candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSection {
    /// Response tokens per candidate (EOS included), ≥ 1. Temperature 1, no top-k/top-p: samples of π.
    pub max_new_tokens: usize,
    /// Prompts per generation batch, ≥ 1.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seed of the sampling streams.
    #[serde(default)]
    pub seed: u64,
}

fn default_batch() -> usize {
    32
}

impl SamplingSection {
    /// Checks the fields (errors name `sampling.<field>`).
    pub fn validate(&self) -> Result<()> {
        crate::core::check::count_in("sampling.max_new_tokens", self.max_new_tokens, 1, 1 << 20)?;
        crate::core::check::count_in("sampling.batch_size", self.batch_size, 1, 1 << 20)
    }
}

/// One sampled response and its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub response: String,
    /// Response token ids (EOS included when sampled, no padding).
    pub response_ids: Vec<i64>,
    /// The reranking scorer's score of `prompt ‖ response`.
    pub score: f64,
    /// The ground-truth scorer's score of the same text, when one is given.
    pub ground_truth: Option<f64>,
}

/// A prompt and its candidates in sampling order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCandidates {
    pub prompt: String,
    pub candidates: Vec<Candidate>,
}

/// The seed of candidate `j` (see the module docs).
fn candidate_seed(seed: u64, j: usize) -> u64 {
    seed.wrapping_add((j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Draws `n` candidates per prompt from `policy` (token-id prompts, non-empty) and scores each with
/// `scorer` (and `ground_truth`, if given).
pub fn sample_candidates(
    policy: &dyn RlhfLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<i64>],
    n: usize,
    scorer: &dyn SentimentScorer,
    ground_truth: Option<&dyn SentimentScorer>,
    sampling: &SamplingSection,
) -> Result<Vec<PromptCandidates>> {
    sampling.validate()?;
    crate::core::check::count_in("n", n, 1, MAX_N)?;
    if prompts.is_empty() {
        return Err(RlhfError::invalid("prompts", "no prompts"));
    }
    let _no_grad = tch::no_grad_guard();
    let mut out: Vec<PromptCandidates> = prompts
        .iter()
        .map(|p| {
            Ok(PromptCandidates {
                prompt: tokenizer.decode(p)?,
                candidates: Vec::with_capacity(n),
            })
        })
        .collect::<Result<_>>()?;
    for j in 0..n {
        for (chunk_i, chunk) in prompts.chunks(sampling.batch_size).enumerate() {
            let start = chunk_i * sampling.batch_size;
            let mut gen_cfg = GenerationConfig::new(
                sampling.max_new_tokens,
                tokenizer.eos_id(),
                tokenizer.pad_id(),
            );
            // The evaluator's chunk seeding (train::eval), from candidate j's seed.
            gen_cfg.seed =
                candidate_seed(sampling.seed, j).wrapping_add(start as u64 * 0x9E37_79B9);
            let g = generate(policy, chunk, &gen_cfg)?;
            let resp = g.responses()?;
            let mut texts = Vec::with_capacity(chunk.len());
            let mut bodies = Vec::with_capacity(chunk.len());
            for (i, r) in resp.iter().enumerate() {
                let body: Vec<i64> = r
                    .iter()
                    .copied()
                    .filter(|&t| t != tokenizer.eos_id())
                    .collect();
                let text = tokenizer.decode(&body)?;
                texts.push(format!("{}{text}", out[start + i].prompt));
                bodies.push(text);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let scores = score_texts(scorer, &refs)?;
            let gt = match ground_truth {
                Some(g) => Some(score_texts(g, &refs)?),
                None => None,
            };
            for (i, (r, body)) in resp.into_iter().zip(bodies).enumerate() {
                out[start + i].candidates.push(Candidate {
                    response: body,
                    response_ids: r,
                    score: scores[i],
                    ground_truth: gt.as_ref().map(|g| g[i]),
                });
            }
        }
    }
    Ok(out)
}

/// Best-of-N for one N: means over prompts of the kept candidate (the best of the first N).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfNRow {
    pub n: usize,
    /// `log N − (N − 1)/N` ([`analytic_kl`]).
    pub kl_analytic: f64,
    /// Mean reranking score of the kept responses.
    pub score_mean: f64,
    /// Population standard deviation of the kept scores.
    pub score_std: f64,
    /// Mean of σ(score) (for a logit scorer: p(positive)).
    pub score_sigmoid_mean: f64,
    /// Mean ground-truth score of the kept responses.
    pub ground_truth_mean: Option<f64>,
    /// Mean of σ(ground-truth score).
    pub ground_truth_sigmoid_mean: Option<f64>,
    /// Mean response length of the kept responses (tokens, EOS included).
    pub response_len: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The kept candidate's index for each prompt when only the first `n` candidates are drawn.
pub fn kept_indices(cands: &[PromptCandidates], n: usize) -> Result<Vec<usize>> {
    cands
        .iter()
        .map(|p| {
            if p.candidates.len() < n || n == 0 {
                return Err(RlhfError::out_of_range(
                    "n",
                    n as f64,
                    format!("in [1, {}] (candidates drawn)", p.candidates.len()),
                ));
            }
            let scores: Vec<f64> = p.candidates[..n].iter().map(|c| c.score).collect();
            best_index(&scores).ok_or_else(|| RlhfError::NonFinite {
                arg: "scores".into(),
                count: 1,
            })
        })
        .collect()
}

/// [`BestOfNRow`] of the best of the first `n` candidates of every prompt.
pub fn summarize(cands: &[PromptCandidates], n: usize) -> Result<BestOfNRow> {
    if cands.is_empty() {
        return Err(RlhfError::invalid("candidates", "no prompts"));
    }
    let kept: Vec<&Candidate> = kept_indices(cands, n)?
        .into_iter()
        .zip(cands)
        .map(|(k, p)| &p.candidates[k])
        .collect();
    let scores: Vec<f64> = kept.iter().map(|c| c.score).collect();
    let m = mean(&scores);
    let gt: Option<Vec<f64>> = kept.iter().map(|c| c.ground_truth).collect();
    Ok(BestOfNRow {
        n,
        kl_analytic: analytic_kl(n)?,
        score_mean: m,
        score_std: (scores.iter().map(|s| (s - m).powi(2)).sum::<f64>() / scores.len() as f64)
            .sqrt(),
        score_sigmoid_mean: mean(&scores.iter().map(|&s| sigmoid(s)).collect::<Vec<_>>()),
        ground_truth_mean: gt.as_ref().map(|g| mean(g)),
        ground_truth_sigmoid_mean: gt
            .as_ref()
            .map(|g| mean(&g.iter().map(|&s| sigmoid(s)).collect::<Vec<_>>())),
        response_len: mean(
            &kept
                .iter()
                .map(|c| c.response_ids.len() as f64)
                .collect::<Vec<_>>(),
        ),
    })
}

/// Best-of-N for every N of `ns` (each in `[1, MAX_N]`) from one set of `max(ns)` candidates per
/// prompt (so the rows are nested: the best of N is among the best of N' ≥ N's candidates).
pub fn best_of_n(
    policy: &dyn RlhfLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<i64>],
    ns: &[usize],
    scorer: &dyn SentimentScorer,
    ground_truth: Option<&dyn SentimentScorer>,
    sampling: &SamplingSection,
) -> Result<(Vec<BestOfNRow>, Vec<PromptCandidates>)> {
    validate_ns(ns)?;
    let n_max = ns.iter().copied().max().unwrap_or(1);
    let cands = sample_candidates(
        policy,
        tokenizer,
        prompts,
        n_max,
        scorer,
        ground_truth,
        sampling,
    )?;
    let rows = ns
        .iter()
        .map(|&n| summarize(&cands, n))
        .collect::<Result<_>>()?;
    Ok((rows, cands))
}

fn validate_ns(ns: &[usize]) -> Result<()> {
    if ns.is_empty() {
        return Err(RlhfError::invalid("n", "give at least one N"));
    }
    for &n in ns {
        crate::core::check::count_in("n", n, 1, MAX_N)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The `best-of-n` run: config, prompts, files
// ---------------------------------------------------------------------------------------------------

/// Held-out prompts: review prefixes of a split, drawn as the evaluator draws them
/// ([`crate::train::prompts::eval_prefixes`]): with the same `count`, `prefix` and `seed` as a trainer's
/// `[eval]` section, Best-of-N answers exactly the trainers' evaluation prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsSection {
    /// `validation` or `test` split of the review corpus ([`crate::data::lm_texts`]).
    #[serde(default = "default_split")]
    pub split: Split,
    /// Number of prompts.
    pub count: usize,
    /// Prefix lengths in tokens (default 2–8, the DPO paper's).
    #[serde(default)]
    pub prefix: PrefixConfig,
    /// Seed of the prefix draw.
    #[serde(default)]
    pub seed: u64,
}

fn default_split() -> Split {
    Split::Test
}

/// Which scorer reranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScorerKind {
    /// The bag-of-words NB-LR classifier saved by `rlhf-lab reward train` (`<dir>` = its `model/`).
    Classifier,
    /// A reward model trained by `rlhf-lab rm` (`<dir>` = its run directory).
    RewardModel,
}

/// The reranking scorer and the ground truth reported beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSection {
    pub kind: ScorerKind,
    /// The scorer's directory.
    pub path: PathBuf,
    /// Ground-truth classifier directory whose scores of the kept responses are reported too
    /// (default: `path`, i.e. the scorer is the ground truth).
    #[serde(default)]
    pub ground_truth: Option<PathBuf>,
}

/// A `best-of-n` run (`configs/best-of-n-*.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestOfNConfig {
    /// Run name: the output directory is `reports/<name>` unless `--out` says otherwise.
    pub name: String,
    /// The policy: an SFT run directory (its latest checkpoint and `tokenizer.json`).
    pub sft_run: PathBuf,
    /// The N values reported, each in [1, 4096]; max(n) candidates are drawn per prompt.
    pub n: Vec<usize>,
    /// libtorch intra-op threads (absent: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    pub prompts: PromptsSection,
    pub sampling: SamplingSection,
    pub scorer: ScorerSection,
}

impl TrainConfig for BestOfNConfig {
    fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(RlhfError::invalid("name", "must not be empty"));
        }
        validate_ns(&self.n)?;
        crate::core::check::count_in("prompts.count", self.prompts.count, 1, 1 << 24)?;
        self.prompts.prefix.validate("prompts.prefix")?;
        if self.prompts.split == Split::Train {
            return Err(RlhfError::invalid(
                "prompts.split",
                "use held-out prompts: `validation` or `test`",
            ));
        }
        if let Some(t) = self.threads {
            crate::core::check::at_least("threads", t as i64, 1)?;
        }
        if self.scorer.kind == ScorerKind::RewardModel && self.scorer.ground_truth.is_none() {
            return Err(RlhfError::invalid(
                "scorer.ground_truth",
                "required with kind = \"reward-model\" (the classifier that reports the true reward)",
            ));
        }
        self.sampling.validate()
    }
}

impl BestOfNConfig {
    /// Parses and validates a TOML file ([`config::from_file`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config::from_file(path)
    }
}

/// Where the run reads and writes.
#[derive(Debug, Clone, Default)]
pub struct BestOfNOptions {
    /// Output directory (default `reports/<name>` under the project root).
    pub out_dir: Option<PathBuf>,
    /// Data directory (default [`crate::data::data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// The config file, recorded in the manifest.
    pub config_file: Option<PathBuf>,
}

/// What a run returns (also written as `best_of_n.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfNSummary {
    pub name: String,
    /// The policy checkpoint sampled from.
    pub policy: String,
    pub scorer: String,
    pub ground_truth: String,
    pub n_prompts: usize,
    pub rows: Vec<BestOfNRow>,
    /// Generated response tokens per second over all candidates (sampling + scoring).
    pub tokens_per_s: f64,
    pub wall_s: f64,
    pub device: String,
    pub out_dir: PathBuf,
}

/// The held-out prompts of `prompts` ([`crate::train::prompts::eval_prefixes`]).
pub fn review_prompts(
    data_dir: &Path,
    tokenizer: &Tokenizer,
    prompts: &PromptsSection,
) -> Result<Vec<Vec<i64>>> {
    crate::train::prompts::eval_prefixes(
        data_dir,
        tokenizer,
        prompts.split,
        prompts.count,
        &prompts.prefix,
        prompts.seed,
    )
}

fn load_classifier(dir: &Path, field: &str) -> Result<BowClassifier> {
    BowClassifier::load(dir).map_err(|e| match e {
        RlhfError::Io { path, reason } => RlhfError::invalid(
            field,
            format!("{path}: {reason} (train it first: `rlhf-lab reward train`)"),
        ),
        other => other,
    })
}

/// Runs best-of-N as configured and writes into the output directory: `best_of_n.json` (the
/// summary), `best_of_n.csv` (one row per N), `samples.jsonl` (per prompt: every candidate with its
/// scores, and the kept index for each N) and `manifest.json`.
pub fn run_best_of_n(cfg: &BestOfNConfig, opts: &BestOfNOptions) -> Result<BestOfNSummary> {
    TrainConfig::validate(cfg)?;
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t);
    }
    let device = Device::cuda_if_available();
    let started = Instant::now();
    let policy = LoadedLm::from_run(&cfg.sft_run, "sft_run", device)?;
    let max_pos = policy.config().n_positions as usize;
    if cfg.prompts.prefix.max_tokens + cfg.sampling.max_new_tokens > max_pos {
        return Err(RlhfError::invalid(
            "prompts.prefix.max_tokens",
            format!(
                "{} prompt + {} new tokens exceed the policy's {max_pos} positions",
                cfg.prompts.prefix.max_tokens, cfg.sampling.max_new_tokens
            ),
        ));
    }
    let scorer: Box<dyn SentimentScorer> = match cfg.scorer.kind {
        ScorerKind::Classifier => Box::new(load_classifier(&cfg.scorer.path, "scorer.path")?),
        ScorerKind::RewardModel => Box::new(crate::train::rm::RewardModelScorer::from_run(
            &cfg.scorer.path,
        )?),
    };
    let gt_path = cfg
        .scorer
        .ground_truth
        .clone()
        .unwrap_or_else(|| cfg.scorer.path.clone());
    let gt = load_classifier(&gt_path, "scorer.ground_truth")?;
    let data_dir = opts.data_dir.clone().unwrap_or_else(crate::data::data_dir);
    let prompts = review_prompts(&data_dir, &policy.tokenizer, &cfg.prompts)?;

    let (rows, cands) = best_of_n(
        policy.lm(),
        &policy.tokenizer,
        &prompts,
        &cfg.n,
        scorer.as_ref(),
        Some(&gt),
        &cfg.sampling,
    )?;
    let wall_s = started.elapsed().as_secs_f64();
    let n_tokens: usize = cands
        .iter()
        .flat_map(|p| p.candidates.iter().map(|c| c.response_ids.len()))
        .sum();

    let out = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| crate::io::project_root().join("reports").join(&cfg.name));
    std::fs::create_dir_all(&out).map_err(|e| RlhfError::io(&out, e))?;
    let summary = BestOfNSummary {
        name: cfg.name.clone(),
        policy: policy.source.display().to_string(),
        scorer: format!("{} ({})", scorer.name(), cfg.scorer.path.display()),
        ground_truth: format!("{} ({})", gt.name(), gt_path.display()),
        n_prompts: prompts.len(),
        rows,
        tokens_per_s: n_tokens as f64 / wall_s.max(1e-9),
        wall_s,
        device: crate::train::report::device_name(device),
        out_dir: out.clone(),
    };
    crate::io::write_json(out.join("best_of_n.json"), &summary)?;
    write_rows_csv(&out.join("best_of_n.csv"), &summary.rows)?;
    let mut jsonl = String::new();
    for p in &cands {
        let kept: serde_json::Map<String, serde_json::Value> = cfg
            .n
            .iter()
            .map(|&n| {
                let k = kept_indices(std::slice::from_ref(p), n)?[0];
                Ok((n.to_string(), serde_json::Value::from(k)))
            })
            .collect::<Result<_>>()?;
        let line =
            serde_json::json!({ "prompt": p.prompt, "kept": kept, "candidates": p.candidates });
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    crate::io::atomic_write(out.join("samples.jsonl"), jsonl.as_bytes())?;
    let config_value =
        serde_json::to_value(cfg).map_err(|e| RlhfError::format("config", "JSON value", e))?;
    let mut manifest = RunManifest::new(
        &cfg.name,
        "best-of-n",
        config_value,
        cfg.sampling.seed as i64,
        device,
    );
    manifest.config_file = opts.config_file.as_ref().map(|p| p.display().to_string());
    let prompt_texts: Vec<String> = cands.iter().map(|p| p.prompt.clone()).collect();
    manifest.data_digests.insert(
        "prompts_sha256".into(),
        crate::train::report::texts_sha256(&prompt_texts).into(),
    );
    manifest.results = serde_json::to_value(&summary)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    manifest.finished_at = Some(crate::train::report::utc_now());
    manifest.save(out.join("manifest.json"))?;
    Ok(summary)
}

fn write_rows_csv(path: &Path, rows: &[BestOfNRow]) -> Result<()> {
    use polars::prelude::{Column, DataFrame};
    let f = |g: &dyn Fn(&BestOfNRow) -> f64| rows.iter().map(g).collect::<Vec<f64>>();
    let o = |g: &dyn Fn(&BestOfNRow) -> Option<f64>| rows.iter().map(g).collect::<Vec<_>>();
    let cols = vec![
        Column::new(
            "n".into(),
            rows.iter().map(|r| r.n as u64).collect::<Vec<u64>>(),
        ),
        Column::new("kl_analytic".into(), f(&|r| r.kl_analytic)),
        Column::new("score_mean".into(), f(&|r| r.score_mean)),
        Column::new("score_std".into(), f(&|r| r.score_std)),
        Column::new("score_sigmoid_mean".into(), f(&|r| r.score_sigmoid_mean)),
        Column::new("ground_truth_mean".into(), o(&|r| r.ground_truth_mean)),
        Column::new(
            "ground_truth_sigmoid_mean".into(),
            o(&|r| r.ground_truth_sigmoid_mean),
        ),
        Column::new("response_len".into(), f(&|r| r.response_len)),
    ];
    let mut df = DataFrame::new(rows.len(), cols)?;
    crate::train::report::write_csv(path, &mut df)
}
