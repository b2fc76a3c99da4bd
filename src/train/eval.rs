//! The one evaluator every trainer's eval step and the reproduction use: sample responses from a policy on
//! held-out prompts with fixed seeds, score them, and measure how far the policy moved from its reference.
//!
//! Per response `y ~ π(·|x)` (temperature 1, no filtering: samples of π itself):
//! * `kl_exact = Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t))` over the response tokens, each term over the full
//!   vocabulary ([`crate::core::kl::kl_full_vocab`]) — the sequence-level KL of the DPO paper's
//!   frontier (Rafailov et al. 2023, footnote 3), unbiased for KL(π ‖ π_ref) over whole sequences;
//! * `kl_k1 = Σ_t (log π − log π_ref)(y_t)` and `kl_k3 = Σ_t k3` (Schulman 2020), the sampled
//!   estimators PPO uses, beside it ([`crate::core::kl::kl_per_sequence`]);
//! * the score of the scorer on the text `prompt ‖ response` (a ground-truth classifier or a trained
//!   reward model), and `σ(score)` (for a logit scorer: p(positive), the DPO paper's y-axis);
//! * the mean per-token entropy of π along the response ([`crate::core::logprobs::entropy`]), the
//!   response length (EOS included) and distinct-1/2 (distinct n-grams / all n-grams, Li et al. 2016).
//!
//! Sampling is seeded per row ([`crate::model::generate`]), so two evaluations of one policy give the
//! same responses, and two policies are compared on the same prompts and random streams.

use crate::core::kl::{kl_full_vocab, kl_per_sequence, KlConfig, KlEstimator};
use crate::core::logprobs::entropy;
use crate::core::masked::masked_sum;
use crate::data::Split;
use crate::error::{Result, RlhfError};
use crate::ground_truth::sentiment::BowClassifier;
use crate::ground_truth::SentimentScorer;
use crate::model::generate::{generate, GenerationConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::RlhfLm;
use crate::train::prompts::{eval_prefixes, PrefixConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Response tokens per sample (EOS included), ≥ 1.
    pub max_new_tokens: usize,
    /// Prompts per generation batch, ≥ 1.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seed of the sampling streams; fixed across evaluations.
    #[serde(default)]
    pub seed: u64,
}

fn default_batch() -> usize {
    32
}

impl EvalConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        crate::core::check::count_in("eval.max_new_tokens", self.max_new_tokens, 1, 1 << 20)?;
        crate::core::check::count_in("eval.batch_size", self.batch_size, 1, 1 << 20)
    }
}

/// One evaluated sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSample {
    pub prompt: String,
    pub response: String,
    /// The sampled response token ids (EOS included when sampled, no padding).
    pub response_ids: Vec<i64>,
    pub score: f64,
    pub kl_exact: f64,
}

/// Means over the evaluated samples (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub n: usize,
    pub score_mean: f64,
    pub score_std: f64,
    /// Mean of σ(score): p(positive) for a logit scorer.
    pub score_sigmoid_mean: f64,
    pub kl_exact: f64,
    pub kl_k1: f64,
    pub kl_k3: f64,
    /// Mean per-token entropy of π along the responses (nats).
    pub entropy: f64,
    pub response_len: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub samples: Vec<EvalSample>,
}

impl EvalResult {
    /// The samples of an evaluation at `step`, one JSON object per line (prompt, response, score,
    /// exact sequence KL), in `<run_dir>/eval/step-<step>.jsonl`: what the texts of a point of a
    /// reward–KL frontier look like.
    pub fn save_samples(&self, run_dir: &Path, step: u64) -> Result<()> {
        let body: String = self
            .samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "prompt": s.prompt,
                    "response": s.response,
                    "score": s.score,
                    "kl_exact": s.kl_exact,
                })
                .to_string()
                    + "\n"
            })
            .collect();
        crate::io::atomic_write(
            run_dir.join("eval").join(format!("step-{step:06}.jsonl")),
            body.as_bytes(),
        )
    }
}

/// Distinct-n over a set of token sequences: the number of distinct n-grams divided by the number of
/// n-grams (0 when there is none).
pub fn distinct_n(seqs: &[Vec<i64>], n: usize) -> f64 {
    let mut all = 0usize;
    let mut seen = HashSet::new();
    for s in seqs {
        for w in s.windows(n) {
            all += 1;
            seen.insert(w.to_vec());
        }
    }
    if all == 0 {
        0.0
    } else {
        seen.len() as f64 / all as f64
    }
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu),
    )?)
}

/// Scores of `texts` under `scorer` as f64, one per text; a scorer that returns another number of
/// scores, or a NaN/Inf score, is an error (never a silent NaN in a mean).
pub fn score_texts(scorer: &dyn SentimentScorer, texts: &[&str]) -> Result<Vec<f64>> {
    let scores = to_f64s(&scorer.score(texts)?)?;
    if scores.len() != texts.len() {
        return Err(RlhfError::invalid(
            "scorer",
            format!(
                "{} returned {} scores for {} texts",
                scorer.name(),
                scores.len(),
                texts.len()
            ),
        ));
    }
    let bad = scores.iter().filter(|s| !s.is_finite()).count();
    if bad > 0 {
        return Err(RlhfError::NonFinite {
            arg: format!("{} score", scorer.name()),
            count: bad as i64,
        });
    }
    Ok(scores)
}

/// Evaluates `policy` against `reference` on `prompts` (token ids, each non-empty) with `scorer`.
/// Both models must share `tokenizer`'s vocabulary.
pub fn evaluate(
    policy: &dyn RlhfLm,
    reference: &dyn RlhfLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<i64>],
    scorer: &dyn SentimentScorer,
    cfg: &EvalConfig,
) -> Result<EvalResult> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(RlhfError::invalid("prompts", "no evaluation prompts"));
    }
    if policy.vocab_size() != reference.vocab_size() {
        return Err(RlhfError::invalid(
            "reference",
            format!(
                "vocabulary {} differs from the policy's {}",
                reference.vocab_size(),
                policy.vocab_size()
            ),
        ));
    }
    let _no_grad = tch::no_grad_guard();
    let mut samples = Vec::with_capacity(prompts.len());
    let (mut k1s, mut k3s, mut ents, mut lens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut responses = Vec::with_capacity(prompts.len());
    for (chunk_i, chunk) in prompts.chunks(cfg.batch_size).enumerate() {
        let mut gen_cfg =
            GenerationConfig::new(cfg.max_new_tokens, tokenizer.eos_id(), tokenizer.pad_id());
        // Chunk i samples from streams of seed + i·φ (φ: the 32-bit golden ratio), rows within a chunk
        // from their own streams: fixed for a given (seed, batch_size, prompts).
        gen_cfg.seed = cfg
            .seed
            .wrapping_add((chunk_i * cfg.batch_size) as u64 * 0x9E37_79B9);
        let g = generate(policy, chunk, &gen_cfg)?;
        let (p, n) = (g.prompt_width(), g.response_width());
        // Teacher-forced logits of both models over prompt ‖ response; columns P−1 .. P+N−1 predict
        // the response tokens.
        let logits_of = |m: &dyn RlhfLm| -> Result<Tensor> {
            let h = m.forward_hidden(
                &g.sequences,
                &g.attention_mask,
                &g.position_ids,
                None,
                false,
            )?;
            m.lm_logits(&h.narrow(1, p - 1, n)) // (B, N, V)
        };
        let (lp, lq) = (logits_of(policy)?, logits_of(reference)?);
        let mask = g.response_mask.to_kind(Kind::Float); // (B, N)
        let kl_tok = kl_full_vocab(&lp, &lq, &mask)?; // (B, N)
        let kl_seq = masked_sum(&kl_tok, &mask, Some(-1))?; // (B,)
        let logp = crate::core::logprobs::token_log_probs(&lp, &g.response_ids, &mask)?;
        let ref_logp = crate::core::logprobs::token_log_probs(&lq, &g.response_ids, &mask)?;
        let est = |e| kl_per_sequence(&logp, &ref_logp, &mask, &KlConfig::new(e));
        k1s.extend(to_f64s(&est(KlEstimator::K1)?)?);
        k3s.extend(to_f64s(&est(KlEstimator::K3)?)?);
        let ent_tok = entropy(&lp, &mask)?; // (B, N)
        let ent_seq = masked_sum(&ent_tok, &mask, Some(-1))?;
        let len = mask.sum_dim_intlist(&[-1i64][..], false, Kind::Float);
        ents.extend(to_f64s(&(ent_seq / &len))?);
        lens.extend(to_f64s(&len)?);

        let resp = g.responses()?;
        let mut texts = Vec::with_capacity(chunk.len());
        for (prompt, r) in chunk.iter().zip(&resp) {
            let body: Vec<i64> = r
                .iter()
                .copied()
                .filter(|&t| t != tokenizer.eos_id())
                .collect();
            let prompt_text = tokenizer.decode(prompt)?;
            let response_text = tokenizer.decode(&body)?;
            texts.push((prompt_text, response_text));
        }
        let full: Vec<String> = texts.iter().map(|(p, r)| format!("{p}{r}")).collect();
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let scores = score_texts(scorer, &refs)?;
        for ((((prompt, response), score), kl), ids) in texts
            .into_iter()
            .zip(scores)
            .zip(to_f64s(&kl_seq)?)
            .zip(resp.iter().cloned())
        {
            samples.push(EvalSample {
                prompt,
                response,
                response_ids: ids,
                score,
                kl_exact: kl,
            });
        }
        responses.extend(resp);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let scores: Vec<f64> = samples.iter().map(|s| s.score).collect();
    let score_mean = mean(&scores);
    let score_std =
        (scores.iter().map(|s| (s - score_mean).powi(2)).sum::<f64>() / scores.len() as f64).sqrt();
    let sig: Vec<f64> = scores.iter().map(|s| 1.0 / (1.0 + (-s).exp())).collect();
    let kls: Vec<f64> = samples.iter().map(|s| s.kl_exact).collect();
    Ok(EvalResult {
        n: samples.len(),
        score_mean,
        score_std,
        score_sigmoid_mean: mean(&sig),
        kl_exact: mean(&kls),
        kl_k1: mean(&k1s),
        kl_k3: mean(&k3s),
        entropy: mean(&ents),
        response_len: mean(&lens),
        distinct_1: distinct_n(&responses, 1),
        distinct_2: distinct_n(&responses, 2),
        samples,
    })
}

/// The `[eval]` section of a trainer: what its periodic evaluation samples and how it scores. The
/// prompts are held-out *test* review prefixes and the scorer is always the ground-truth classifier,
/// so every trainer's points land on the same axes (the DPO paper's frontier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out test prefixes per evaluation, ≥ 1.
    pub prompts: usize,
    /// Response tokens per sample (EOS included).
    pub max_new_tokens: usize,
    /// Prefix lengths (default 2–8 tokens).
    #[serde(default)]
    pub prefix: PrefixConfig,
    /// The ground-truth classifier directory (`rlhf-lab reward train`; default `reports/reward/model`).
    #[serde(default)]
    pub ground_truth: Option<PathBuf>,
    /// Seed of the prompts and of the sampling streams.
    #[serde(default)]
    pub seed: u64,
    /// Prompts per generation batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl EvalSection {
    /// Checks the fields; errors name `eval.<field>`.
    pub fn validate(&self) -> Result<()> {
        crate::core::check::count_in("eval.prompts", self.prompts, 1, 1 << 20)?;
        self.prefix.validate("eval.prefix")?;
        self.eval_config().validate()
    }

    fn eval_config(&self) -> EvalConfig {
        EvalConfig {
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            seed: self.seed ^ 0x5EED,
        }
    }
}

/// The ground-truth classifier of `dir` (default `reports/reward/model`); the error names `field`.
pub fn load_ground_truth(dir: Option<&Path>, field: &str) -> Result<BowClassifier> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::io::project_root().join("reports/reward/model"));
    BowClassifier::load(&dir).map_err(|e| {
        RlhfError::invalid(
            field,
            format!("{e} (train it first: rlhf-lab reward train)"),
        )
    })
}

/// A trainer's periodic evaluation: the fixed prompts, the ground truth and the sampling settings.
pub struct Evaluator {
    prompts: Vec<Vec<i64>>,
    scorer: BowClassifier,
    cfg: EvalConfig,
}

/// Metric columns an evaluation fills, in [`EvalResult::columns`] order.
pub const EVAL_COLUMNS: [&str; 8] = [
    "eval/score",
    "eval/score_sigmoid",
    "eval/kl_exact",
    "eval/kl_k1",
    "eval/kl_k3",
    "eval/entropy",
    "eval/response_len",
    "eval/distinct_2",
];

impl EvalResult {
    /// The values of [`EVAL_COLUMNS`].
    pub fn columns(&self) -> [f64; 8] {
        [
            self.score_mean,
            self.score_sigmoid_mean,
            self.kl_exact,
            self.kl_k1,
            self.kl_k3,
            self.entropy,
            self.response_len,
            self.distinct_2,
        ]
    }
}

impl Evaluator {
    /// Draws the test prefixes (with `tokenizer`) and loads the ground truth.
    pub fn new(section: &EvalSection, tokenizer: &Tokenizer, data_dir: &Path) -> Result<Self> {
        section.validate()?;
        let prompts = eval_prefixes(
            data_dir,
            tokenizer,
            Split::Test,
            section.prompts,
            &section.prefix,
            section.seed,
        )?;
        let scorer = load_ground_truth(section.ground_truth.as_deref(), "eval.ground_truth")?;
        Ok(Evaluator {
            prompts,
            scorer,
            cfg: section.eval_config(),
        })
    }

    /// The ground-truth scorer.
    pub fn scorer(&self) -> &BowClassifier {
        &self.scorer
    }

    /// Evaluates `policy` against `reference` ([`evaluate`]).
    pub fn run(
        &self,
        policy: &dyn RlhfLm,
        reference: &dyn RlhfLm,
        tokenizer: &Tokenizer,
    ) -> Result<EvalResult> {
        evaluate(
            policy,
            reference,
            tokenizer,
            &self.prompts,
            &self.scorer,
            &self.cfg,
        )
    }
}
