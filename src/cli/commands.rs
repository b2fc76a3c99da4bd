//! The data, reward and generation subcommands of the `rlhf-lab` binary: thin wrappers that parse
//! flags, call the library and print what it returns. Every failure is an [`RlhfError`], printed by
//! `main` with exit status 2.

use crate::data::{self, data_dir};
use crate::ground_truth::sentiment::{train_classifier_on, BowClassifier, ClassifierConfig};
use crate::ground_truth::vader::Vader;
use crate::ground_truth::{compare_on_test, SentimentScorer};
use crate::model::generate::{generate, GenerationConfig};
use crate::model::gguf::smollm2_chat_prompt;
use crate::model::gpt::Gpt;
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;
use crate::model::CausalLm;
use crate::train::report::RunManifest;
use crate::{Result, RlhfError};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::Device;

fn reports_dir(name: &str) -> PathBuf {
    crate::io::project_root().join("reports").join(name)
}

/// `rlhf-lab data`: re-hash every fetched file against its pin, print the per-source × split
/// statistics and save them (`data_stats.csv`, `data_stats.json`) with a run manifest.
pub fn data_cmd(out: Option<PathBuf>) -> Result<()> {
    let dir = data_dir();
    let checked = data::verify_checksums(&dir)?;
    println!(
        "data: {} file(s) in {} match their pinned sha256",
        checked.len(),
        dir.display()
    );
    data::print_stats(&dir)?;
    let out = out.unwrap_or_else(|| reports_dir("data"));
    let (csv, js) = data::save_stats(&dir, &out)?;
    let mut manifest = RunManifest::new("data", "data-stats", json!({}), 0, Device::Cpu);
    manifest.data = crate::train::report::data_checksums(&dir, &data_files())?;
    manifest.finished_at = Some(crate::train::report::utc_now());
    manifest.save(out.join("manifest.json"))?;
    println!("data: wrote {} and {}", csv.display(), js.display());
    Ok(())
}

/// The corpus files (relative to the data directory) the data and reward commands read.
fn data_files() -> Vec<&'static str> {
    data::Source::ALL
        .iter()
        .map(|s| s.relative_path())
        .chain(["vader/vader_lexicon.txt"])
        .collect()
}

/// `rlhf-lab reward train`: fit the bag-of-words NB-LR classifier on the Rotten Tomatoes train split,
/// save it frozen under `<out>/model/`, and report its accuracy beside VADER's on the test split.
pub fn reward_train(out: Option<PathBuf>, seed: u64) -> Result<()> {
    let dir = data_dir();
    let out = out.unwrap_or_else(|| reports_dir("reward"));
    let cfg = ClassifierConfig {
        seed,
        ..ClassifierConfig::default()
    };
    let (model, metrics) = train_classifier_on(&dir, &cfg)?;
    let model_dir = out.join("model");
    model.save(&model_dir, Some(&metrics))?;
    let vader = Vader::load(&dir)?;
    let report = compare_on_test(&dir, &[&model as &dyn SentimentScorer, &vader])?;
    print!("{report}");
    let mut manifest = RunManifest::new(
        "reward",
        "sentiment-classifier",
        serde_json::to_value(&cfg).map_err(|e| RlhfError::format("config", "JSON value", e))?,
        seed as i64,
        Device::Cpu,
    );
    manifest.data = crate::train::report::data_checksums(&dir, &data_files())?;
    manifest.results = json!({ "classifier": metrics, "test_split": report })
        .as_object()
        .cloned()
        .unwrap_or_default();
    manifest.finished_at = Some(crate::train::report::utc_now());
    manifest.save(out.join("manifest.json"))?;
    println!(
        "reward: classifier saved in {} ({} features, train {:.4}, validation {:.4}, test {:.4}; {:.2} s)",
        model_dir.display(),
        metrics.vocab_size,
        metrics.train_accuracy,
        metrics.validation_accuracy,
        metrics.test_accuracy,
        metrics.train_seconds
    );
    Ok(())
}

/// Ground-truth scores of `texts` under the saved classifier (logit of P(positive)) and VADER
/// (compound), one `(scorer name, scores)` per scorer.
fn ground_truth_scores(model_dir: &Path, texts: &[&str]) -> Result<Vec<(String, Vec<f32>)>> {
    let clf = BowClassifier::load(model_dir).map_err(|e| match e {
        RlhfError::Io { path, reason } => RlhfError::Io {
            path,
            reason: format!("{reason} (train it first: `rlhf-lab reward train`)"),
        },
        other => other,
    })?;
    let vader = Vader::load(&data_dir())?;
    [&clf as &dyn SentimentScorer, &vader]
        .iter()
        .map(|s| {
            Ok((
                s.name().to_string(),
                Vec::<f32>::try_from(&s.score(texts)?)?,
            ))
        })
        .collect()
}

/// `rlhf-lab reward score`: ground-truth scores of texts under the saved classifier and VADER.
pub fn reward_score(model_dir: Option<PathBuf>, texts: &[String]) -> Result<()> {
    let model_dir = model_dir.unwrap_or_else(default_classifier_dir);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scores = ground_truth_scores(&model_dir, &refs)?;
    for (i, t) in texts.iter().enumerate() {
        let mut line = json!({ "text": t });
        for (name, s) in &scores {
            line[name] = json!(s[i]);
        }
        println!("{line}");
    }
    Ok(())
}

fn default_classifier_dir() -> PathBuf {
    reports_dir("reward").join("model")
}

/// Flags of `rlhf-lab generate`.
pub struct GenerateArgs {
    pub gguf: Option<PathBuf>,
    pub run: Option<PathBuf>,
    pub prompts: Vec<String>,
    pub raw: bool,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub seed: u64,
    pub threads: i32,
    pub score: bool,
}

/// A model to sample from, its tokenizer, whether it is a chat model, and the VarStore that owns a
/// trained GPT's parameters (kept alive beside the model).
type Loaded = (
    Box<dyn CausalLm>,
    Tokenizer,
    bool,
    Option<tch::nn::VarStore>,
);

/// The model to sample from: SmolLM2 from its GGUF file (default) or a GPT trained by `rlhf-lab sft`.
fn load_model(args: &GenerateArgs) -> Result<Loaded> {
    if let Some(run) = &args.run {
        let ckpt = crate::train::sft::latest_checkpoint(run)?.ok_or_else(|| RlhfError::Io {
            path: run.join("checkpoints").display().to_string(),
            reason: "no checkpoint (run `rlhf-lab sft --config …` first)".into(),
        })?;
        let (vs, gpt) = Gpt::load_model(&ckpt, Device::cuda_if_available())?;
        let tok = Tokenizer::from_file(run.join("tokenizer.json"))?;
        return Ok((Box::new(gpt), tok, false, Some(vs)));
    }
    let path = args
        .gguf
        .clone()
        .unwrap_or_else(|| data_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let (llama, tok) = Llama::from_gguf(&path, Device::cuda_if_available())?;
    Ok((Box::new(llama), tok, true, None))
}

/// `rlhf-lab generate`: batched sampling with the KV cache; prints one JSON line per prompt.
pub fn generate_cmd(args: GenerateArgs) -> Result<()> {
    if args.prompts.is_empty() {
        return Err(RlhfError::invalid("prompts", "give at least one prompt"));
    }
    // Sampling settings are checked before the model is loaded (ids are set from its tokenizer).
    let mut cfg = GenerationConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        ..GenerationConfig::new(args.max_new_tokens, 0, 1)
    };
    cfg.validate()?;
    tch::set_num_threads(args.threads.max(1));
    let start = std::time::Instant::now();
    let (model, tok, chat, _vs) = load_model(&args)?;
    let load_s = start.elapsed().as_secs_f64();
    let prompts: Vec<Vec<i64>> = args
        .prompts
        .iter()
        .map(|p| {
            if chat && !args.raw {
                tok.encode(&smollm2_chat_prompt(p))
            } else {
                tok.encode(p)
            }
        })
        .collect::<Result<_>>()?;
    cfg.eos_id = tok.eos_id();
    cfg.pad_id = tok.pad_id();
    let t0 = std::time::Instant::now();
    let out = tch::no_grad(|| generate(model.as_ref(), &prompts, &cfg))?;
    let gen_s = t0.elapsed().as_secs_f64();
    let texts = out.texts(&tok)?;
    let lengths = Vec::<i64>::try_from(&out.response_lengths.to_device(Device::Cpu))?;
    let scores = if args.score {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        ground_truth_scores(&default_classifier_dir(), &refs)?
    } else {
        Vec::new()
    };
    for (i, (p, t)) in args.prompts.iter().zip(&texts).enumerate() {
        let mut line = json!({ "prompt": p, "response": t, "tokens": lengths[i] });
        for (name, s) in &scores {
            line[name] = json!(s[i]);
        }
        println!("{line}");
    }
    let n_tokens: i64 = lengths.iter().sum();
    eprintln!(
        "generate: load {load_s:.1} s; {n_tokens} new tokens in {gen_s:.2} s ({:.1} tokens/s, batch {}, {} thread(s), {:?})",
        n_tokens as f64 / gen_s.max(1e-9),
        prompts.len(),
        args.threads.max(1),
        model.device()
    );
    Ok(())
}

/// `rlhf-lab best-of-n`: runs [`crate::train::best_of_n::run_best_of_n`] and prints one line per N.
pub fn best_of_n_cmd(
    config: PathBuf,
    out: Option<PathBuf>,
    n: Option<Vec<usize>>,
    threads: Option<i32>,
) -> Result<()> {
    use crate::train::best_of_n::{run_best_of_n, BestOfNConfig, BestOfNOptions};
    let mut cfg = BestOfNConfig::from_file(&config)?;
    if let Some(n) = n {
        cfg.n = n;
    }
    if threads.is_some() {
        cfg.threads = threads;
    }
    let s = run_best_of_n(
        &cfg,
        &BestOfNOptions {
            out_dir: out,
            data_dir: None,
            config_file: Some(config),
        },
    )?;
    println!(
        "best-of-n {}: {} prompts, scorer {}, ground truth {}; policy {}",
        s.name, s.n_prompts, s.scorer, s.ground_truth, s.policy
    );
    for r in &s.rows {
        println!(
            "  N = {:>4}  KL = log N − (N−1)/N = {:.4}  score {:.4} ± {:.4} (σ {:.4})  ground truth {}  length {:.1}",
            r.n,
            r.kl_analytic,
            r.score_mean,
            r.score_std,
            r.score_sigmoid_mean,
            r.ground_truth_mean
                .map(|g| format!("{g:.4}"))
                .unwrap_or_else(|| "-".into()),
            r.response_len
        );
    }
    println!(
        "best-of-n: {:.1} s, {:.0} tokens/s on {}; wrote {}",
        s.wall_s,
        s.tokens_per_s,
        s.device,
        s.out_dir.display()
    );
    Ok(())
}

/// `rlhf-lab export`: [`crate::train::export::export_hf`].
pub fn export_cmd(run: &Path, out: &Path, heads: bool) -> Result<()> {
    let s = crate::train::export::export_hf(run, out, heads)?;
    println!(
        "export: {} -> {} ({} tensors, {} parameters, vocab {}, eos {}, pad {}{})",
        s.checkpoint.display(),
        s.out.display(),
        s.tensors,
        s.parameters,
        s.vocab_size,
        s.eos_id,
        s.pad_id,
        if s.heads { ", heads kept" } else { "" }
    );
    Ok(())
}

/// `rlhf-lab bench`: the performance suite ([`crate::pipeline::perf`]), or one case of it (`--case`,
/// run in a child process by the suite).
pub fn bench_cmd(
    quick: bool,
    threads: i32,
    only: Vec<String>,
    out: Option<PathBuf>,
    no_anchors: bool,
    case: Option<String>,
) -> Result<String> {
    use crate::pipeline::perf::{self, Budget, Case};
    crate::core::check::at_least("threads", i64::from(threads), 1)?;
    let data_dir = crate::data::data_dir();
    if let Some(json) = case {
        let k: Case =
            serde_json::from_str(&json).map_err(|e| RlhfError::invalid("case", e.to_string()))?;
        let t = perf::run_case(&k, Budget::of(quick), &data_dir)?;
        return serde_json::to_string(&t).map_err(|e| RlhfError::invalid("case", e.to_string()));
    }
    let report = out.unwrap_or_else(|| {
        PathBuf::from(if quick {
            "target/bench-quick/perf.md"
        } else {
            "reports/perf.md"
        })
    });
    let work_dir = PathBuf::from(if quick {
        "target/bench-quick/work"
    } else {
        "target/bench"
    });
    let python = PathBuf::from(".venv/bin/python");
    let opts = perf::SuiteOptions {
        quick,
        threads,
        only,
        work_dir,
        report: report.clone(),
        python: (!no_anchors).then_some(python),
        data_dir,
    };
    let cases = perf::run_suite(&opts)?;
    Ok(format!(
        "bench: {} cases ({} with an anchor) -> {}",
        cases.len(),
        cases.iter().filter(|k| k.anchor.is_some()).count(),
        report.display()
    ))
}
