//! `rlhf-lab` command line: `demo` prints the seed worked example through the library; `calc <op>` runs
//! any primitive on JSON; `sft --config <toml>` trains the GPT on the review corpus (resumable).

pub mod calc;
pub mod commands;
pub mod json;

use crate::toy::worked_example as we;
use crate::RlhfError;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rlhf-lab",
    version,
    about = "Exact, tested RLHF primitives on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seed document 001 §3.2.4 worked example: printed vs computed, with errata.
    Demo {
        /// Print the comparison as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the convention presets (JSON, or the README's markdown table).
    Presets {
        #[arg(long)]
        markdown: bool,
    },
    /// Run one primitive on JSON (stdin or --input); hyper-parameters as fields or `--name value` flags.
    Calc {
        /// The op (see --list).
        op: Option<String>,
        /// Read the JSON object from this file instead of stdin.
        #[arg(long, short)]
        input: Option<std::path::PathBuf>,
        /// Conventions preset filling unspecified hyper-parameters (rlhf-lab, trl, deepspeed-chat, openrlhf, verl).
        #[arg(long)]
        preset: Option<String>,
        /// List the ops.
        #[arg(long)]
        list: bool,
        /// Pretty-print the output.
        #[arg(long)]
        pretty: bool,
        /// Further `--field value` pairs, merged into the input object (values parsed as JSON when they can be).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        params: Vec<String>,
    },
    /// Verify the fetched data against its pinned checksums, print per-source × split statistics and
    /// save them (reports/data/ by default).
    Data {
        /// Output directory for data_stats.csv / data_stats.json / manifest.json.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Ground-truth sentiment reward: train the classifier (`train`) or score texts (`score`).
    Reward {
        #[command(subcommand)]
        command: RewardCommand,
    },
    /// Sample from SmolLM2-135M-Instruct (GGUF, default) or a GPT trained by `sft` (--run), batched with
    /// the KV cache; one JSON line per prompt.
    Generate {
        /// Prompts (one response each, sampled as one batch).
        #[arg(required = true)]
        prompts: Vec<String>,
        /// GGUF file (default: the fetched SmolLM2-135M-Instruct Q4_1).
        #[arg(long, conflicts_with = "run")]
        gguf: Option<std::path::PathBuf>,
        /// An `sft` run directory: its latest checkpoint and tokenizer.json.
        #[arg(long)]
        run: Option<std::path::PathBuf>,
        /// Do not wrap prompts in SmolLM2's chat template.
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 48)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// 0 = off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// 1 = off.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// libtorch threads (1 is fastest for decoding on a loaded 2-core machine).
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Also print ground-truth sentiment scores (classifier from `reward train`, and VADER).
        #[arg(long)]
        score: bool,
    },
    /// Supervised fine-tuning / LM training of the GPT (configs/sft-*.toml). Resumes automatically from
    /// the run directory's latest.json; --fresh starts over.
    Sft {
        /// Run configuration (TOML).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Run directory (default: reports/<name> of the config).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Require a checkpoint to resume from (error if there is none).
        #[arg(long, conflicts_with = "fresh")]
        resume: bool,
        /// Delete the run directory's checkpoints, metrics and reports and start over.
        #[arg(long)]
        fresh: bool,
        /// Override optim.max_steps of the config (part of the config: a resume must use the same value).
        #[arg(long)]
        max_steps: Option<u64>,
        /// Override the config's libtorch thread count.
        #[arg(long)]
        threads: Option<i32>,
        /// No progress bar and no per-eval lines.
        #[arg(long)]
        quiet: bool,
        /// report.html loads plotly.js from its CDN (small file, needs a network) instead of inlining it.
        #[arg(long)]
        plotly_cdn: bool,
        /// Test hook: sleep this many milliseconds after every step.
        #[arg(long, hide = true, default_value_t = 0)]
        step_delay_ms: u64,
    },
}

#[derive(Subcommand)]
enum RewardCommand {
    /// Train the bag-of-words NB-LR classifier on the Rotten Tomatoes train split; save it under
    /// <out>/model/ (default reports/reward/) and compare it with VADER on the test split.
    Train {
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Score texts with the saved classifier (logit of P(positive)) and VADER (compound).
    Score {
        /// Classifier directory (default reports/reward/model).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        #[arg(required = true)]
        texts: Vec<String>,
    },
}

/// Exit status of a subcommand that returns a library `Result`: errors are printed, status 2.
fn finish(r: Result<(), RlhfError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The `rlhf-lab` binary's entry point (`src/main.rs` only calls this).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { json } => demo(json),
        Command::Data { out } => finish(commands::data_cmd(out)),
        Command::Reward { command } => finish(match command {
            RewardCommand::Train { out, seed } => commands::reward_train(out, seed),
            RewardCommand::Score { model, texts } => commands::reward_score(model, &texts),
        }),
        Command::Generate {
            prompts,
            gguf,
            run,
            raw,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            threads,
            score,
        } => finish(commands::generate_cmd(commands::GenerateArgs {
            gguf,
            run,
            prompts,
            raw,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            threads,
            score,
        })),
        Command::Sft {
            config,
            out,
            resume,
            fresh,
            max_steps,
            threads,
            quiet,
            plotly_cdn,
            step_delay_ms,
        } => {
            use crate::train::sft::{run_sft, ResumeMode, SftConfig, SftOptions};
            let run = || -> Result<_, RlhfError> {
                let mut cfg = SftConfig::from_file(&config)?;
                if let Some(n) = max_steps {
                    cfg.optim.max_steps = n;
                }
                if threads.is_some() {
                    cfg.threads = threads;
                }
                let opts = SftOptions {
                    out_dir: out,
                    resume: if fresh {
                        ResumeMode::Fresh
                    } else if resume {
                        ResumeMode::Require
                    } else {
                        ResumeMode::Auto
                    },
                    config_file: Some(config.clone()),
                    progress: !quiet,
                    verbose: !quiet,
                    step_delay_ms,
                    data_dir: None,
                    plotly_cdn,
                };
                run_sft(&cfg, &opts)
            };
            match run() {
                Ok(s) => {
                    println!(
                        "{}: {} steps{}, validation loss {:.4}, perplexity {:.2}, {:.0} train tokens/s, {:.1} s; run dir {}",
                        config.display(),
                        s.steps,
                        s.resumed_from
                            .map(|r| format!(" (resumed from step {r})"))
                            .unwrap_or_default(),
                        s.final_val_loss,
                        s.final_val_ppl,
                        s.train_tokens_per_s,
                        s.wall_s,
                        s.run_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Presets { markdown } => {
            if markdown {
                print!("{}", crate::core::conventions::markdown_table());
            } else {
                let all = crate::core::conventions::Conventions::all();
                println!("{}", serde_json::to_string_pretty(&all).expect("json"));
            }
            ExitCode::SUCCESS
        }
        Command::Calc {
            op,
            input,
            preset,
            list,
            pretty,
            params,
        } => {
            if list {
                for calc::Op { name, what, .. } in &calc::OPS {
                    println!("{name:18} {what}");
                }
                return ExitCode::SUCCESS;
            }
            match calc_main(op, input, preset, params) {
                Ok(v) => {
                    let s = if pretty {
                        serde_json::to_string_pretty(&v)
                    } else {
                        serde_json::to_string(&v)
                    };
                    println!("{}", s.expect("serialisable"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let err = json!({ "error": { "kind": e.kind(), "argument": e.argument(), "message": e.to_string() } });
                    eprintln!("{err}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn calc_main(
    op: Option<String>,
    input: Option<std::path::PathBuf>,
    preset: Option<String>,
    params: Vec<String>,
) -> Result<Value, RlhfError> {
    let op =
        op.ok_or_else(|| RlhfError::invalid("op", "missing op (try `rlhf-lab calc --list`)"))?;
    let text = match &input {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| RlhfError::invalid("input", format!("{}: {e}", path.display())))?,
        // Read stdin unless it is an interactive terminal (then the flags are the whole input).
        None if std::io::stdin().is_terminal() => String::new(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| RlhfError::invalid("input", format!("stdin: {e}")))?;
            s
        }
    };
    let mut obj: Value = if text.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&text)
            .map_err(|e| RlhfError::invalid("input", format!("not valid JSON: {e}")))?
    };
    let map = obj
        .as_object_mut()
        .ok_or_else(|| RlhfError::invalid("input", "expected a JSON object"))?;
    if let Some(p) = preset {
        map.insert("preset".into(), Value::from(p));
    }
    let mut it = params.into_iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| {
            RlhfError::invalid("flags", format!("expected `--name value`, got `{flag}`"))
        })?;
        let (key, raw) = match name.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (
                name.to_string(),
                it.next()
                    .ok_or_else(|| RlhfError::invalid(name, "flag without a value"))?,
            ),
        };
        let value = serde_json::from_str(&raw).unwrap_or(Value::from(raw));
        map.insert(key.replace('-', "_"), value);
    }
    // Validated input cannot panic inside libtorch; this guard turns any remaining bug into a JSON error.
    std::panic::set_hook(Box::new(|_| {}));
    std::panic::catch_unwind(|| calc::run(&op, obj)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(RlhfError::Torch(format!(
            "internal error (please report): {}",
            msg.unwrap_or_default()
        )))
    })
}

fn demo(as_json: bool) -> ExitCode {
    let ex = match we::compute() {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("demo failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = we::compare(&ex);
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "computed": ex, "comparisons": rows }))
                .expect("json")
        );
        return ExitCode::SUCCESS;
    }
    println!("Seed document 001 §3.2.4 — worked example through rlhf-lab (f64)");
    println!(
        "kl_ctl = {}, reward_score = {}, γ = {}, λ = {}; score on the last token (DeepSpeed-Chat compute_rewards)\n",
        we::KL_CTL,
        we::REWARD_SCORE,
        we::GAMMA,
        we::LAMBDA
    );
    println!(
        "{:<11} {:>2}  {:>12}  {:>14}  {:>9}  status",
        "quantity", "t", "printed", "computed", "tol"
    );
    let mut errata = 0;
    for r in &rows {
        let status = if r.matches {
            "ok".to_string()
        } else {
            errata += 1;
            let cause = we::ERRATA
                .iter()
                .find(|(q, s, _)| *q == r.quantity && *s == r.step)
                .map(|e| e.2)
                .unwrap_or("UNEXPECTED");
            format!("ERRATUM — {cause}")
        };
        println!(
            "{:<11} {:>2}  {:>12}  {:>14}  {:>9.1e}  {}",
            r.quantity,
            r.step,
            r.printed,
            we::format_like(r.printed, r.computed),
            r.tolerance,
            status
        );
    }
    let (adv4, ret4) = we::document_style_gae(&ex.deltas);
    println!(
        "\n{} of {} printed numbers agree at their printed precision; {errata} errata.",
        rows.len() - errata,
        rows.len()
    );
    println!("Document-style GAE (δ and each A_t rounded to 4 decimals before reuse): A = {adv4:?}, returns = {ret4:?}");
    println!(
        "Correct GAE returns (4 dp): {:?}",
        ex.returns
            .iter()
            .map(|x| (x * 1e4).round() / 1e4)
            .collect::<Vec<_>>()
    );
    ExitCode::SUCCESS
}
