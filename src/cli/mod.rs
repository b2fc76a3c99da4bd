//! `rlhf-lab` command line: `demo` prints the seed worked example through the library; `calc <op>` runs
//! any primitive on JSON; `sft --config <toml>` trains the GPT on the review corpus, `rm` a reward model,
//! `dpo` a DPO-family policy and `ppo` a PPO policy from an SFT run (all resumable); `reproduce` runs a
//! paper experiment end to end.

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
    Sft(TrainArgs),
    /// Reward-model training from an SFT run on preference pairs or ranked completions
    /// (configs/rm-*.toml). Resumes automatically; --fresh starts over.
    Rm(TrainArgs),
    /// DPO-family training (dpo, cdpo, robust, ipo, hinge, preferred-ft, unlikelihood) from an SFT run on
    /// preference pairs (configs/dpo-*.toml). Resumes automatically; --fresh starts over.
    Dpo(TrainArgs),
    /// PPO with four models (actor, reference, critic, reward) on review prefixes, from an SFT run
    /// (resumable; see configs/ppo-*.toml).
    Ppo(TrainArgs),
    /// Reproduce a paper experiment end to end, every stage cached (a killed run resumes):
    /// `dpo-sentiment` is the DPO paper's controlled-sentiment reward–KL frontier.
    Reproduce {
        /// The experiment: dpo-sentiment.
        experiment: String,
        /// quick (minutes, CI), small (every sweep value, 3 seeds, hours), gpu (a wider GPT).
        #[arg(long, default_value = "quick")]
        scale: String,
        /// Seeds of the algorithm runs (default: the scale's).
        #[arg(long)]
        seeds: Option<usize>,
        /// Output root (default reports/dpo-sentiment/<scale>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only these algorithm families (repeatable), e.g. --only DPO --only PPO-GT.
        #[arg(long)]
        only: Vec<String>,
        /// No per-stage lines.
        #[arg(long)]
        quiet: bool,
        /// Algorithm runs side by side, each in its own process (one libtorch thread each): the
        /// upstream stages first, then `jobs` workers sharing the sweep, then the report.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Internal: run as one worker of `--jobs`.
        #[arg(long, hide = true)]
        worker: bool,
    },
    /// Time every workload (ceilings, GAE, SFT/DPO/RM steps, sampling, SmolLM2 decoding, thread policy)
    /// beside its PyTorch anchor in one run; write reports/perf.md and its figures (`make bench`).
    Bench {
        /// Tiny shapes: checks that every workload and anchor runs (CI), measures nothing useful.
        #[arg(long)]
        quick: bool,
        /// libtorch threads of the main rows.
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Only the workloads starting with these names (repeatable), e.g. --only sft --only gae.
        #[arg(long)]
        only: Vec<String>,
        /// The report (default reports/perf.md; with --quick target/bench-quick/perf.md).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Skip the PyTorch anchors.
        #[arg(long)]
        no_anchors: bool,
        /// Internal: time one case (JSON) in this process and print its timing.
        #[arg(long, hide = true)]
        case: Option<String>,
    },
    /// Best-of-N: N samples per held-out prompt from an SFT run, reranked by a scorer; reports the mean
    /// kept score beside the analytic KL log N − (N−1)/N (configs/best-of-n-*.toml).
    BestOfN {
        /// Run configuration (TOML).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Output directory (default: reports/<name> of the config).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Override the config's N values (comma-separated, e.g. 1,4,16).
        #[arg(long, value_delimiter = ',')]
        n: Option<Vec<usize>>,
        /// Override the config's libtorch thread count.
        #[arg(long)]
        threads: Option<i32>,
    },
    /// Write the latest checkpoint of a GPT run as a Hugging Face GPT-2 folder (config.json,
    /// model.safetensors, tokenizer files) that transformers' from_pretrained loads.
    Export {
        /// The run directory (an `sft` run, or any run with the same checkpoint layout).
        #[arg(long)]
        run: std::path::PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Keep the value/score heads as extra tensors (transformers ignores them when loading).
        #[arg(long)]
        heads: bool,
    },
}

/// The flags every trainer takes (one run directory: `train::run`).
#[derive(clap::Args)]
struct TrainArgs {
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
}

impl TrainArgs {
    fn options(&self) -> crate::train::run::RunOptions {
        use crate::train::run::{ResumeMode, RunOptions};
        RunOptions {
            out_dir: self.out.clone(),
            resume: if self.fresh {
                ResumeMode::Fresh
            } else if self.resume {
                ResumeMode::Require
            } else {
                ResumeMode::Auto
            },
            config_file: Some(self.config.clone()),
            progress: !self.quiet,
            verbose: !self.quiet,
            step_delay_ms: self.step_delay_ms,
            data_dir: None,
            plotly_cdn: self.plotly_cdn,
        }
    }
}

/// `rlhf-lab rm`.
fn rm_cmd(a: &TrainArgs) -> Result<(), RlhfError> {
    use crate::train::rm::{run_rm, RmConfig};
    let mut cfg = RmConfig::from_file(&a.config)?;
    if let Some(n) = a.max_steps {
        cfg.optim.max_steps = n;
    }
    if a.threads.is_some() {
        cfg.threads = a.threads;
    }
    let s = run_rm(&cfg, &a.options())?;
    println!(
        "{}: {} steps{}, validation loss {:.4}, accuracy {:.4}, {:.0} train tokens/s, {:.1} s; run dir {}",
        a.config.display(),
        s.steps,
        s.resumed_from
            .map(|r| format!(" (resumed from step {r})"))
            .unwrap_or_default(),
        s.final_val_loss,
        s.final_val_accuracy,
        s.train_tokens_per_s,
        s.wall_s,
        s.run_dir.display()
    );
    Ok(())
}

/// `rlhf-lab dpo`.
fn dpo_cmd(a: &TrainArgs) -> Result<(), RlhfError> {
    use crate::train::dpo::{run_dpo, DpoTrainConfig};
    let mut cfg = DpoTrainConfig::from_file(&a.config)?;
    if let Some(n) = a.max_steps {
        cfg.optim.max_steps = n;
    }
    if a.threads.is_some() {
        cfg.threads = a.threads;
    }
    let s = run_dpo(&cfg, &a.options())?;
    println!(
        "{}: {} steps{}, validation loss {:.4}, reward accuracy {:.4}, margin {:.4}, {:.0} train tokens/s, {:.1} s; run dir {}",
        a.config.display(),
        s.steps,
        s.resumed_from
            .map(|r| format!(" (resumed from step {r})"))
            .unwrap_or_default(),
        s.final_val_loss,
        s.final_val_accuracy,
        s.final_val_margin,
        s.train_tokens_per_s,
        s.wall_s,
        s.run_dir.display()
    );
    Ok(())
}

/// Prints a trainer's error like every command (exit 2) or its one-line summary (exit 0).
fn report_run(r: Result<String, RlhfError>) -> ExitCode {
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
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
    crate::alloc::keep_freed_memory();
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
        Command::Bench {
            quick,
            threads,
            only,
            out,
            no_anchors,
            case,
        } => report_run(commands::bench_cmd(
            quick, threads, only, out, no_anchors, case,
        )),
        Command::Reproduce {
            experiment,
            scale,
            seeds,
            out,
            only,
            quiet,
            jobs,
            worker,
        } => report_run((|| {
            if experiment != "dpo-sentiment" {
                return Err(RlhfError::invalid(
                    "experiment",
                    format!("unknown experiment {experiment:?} (known: dpo-sentiment)"),
                ));
            }
            use crate::pipeline::dpo_sentiment::{reproduce, Part, ReproduceOptions};
            crate::core::check::count_in("jobs", jobs, 1, 64)?;
            let mut opts = ReproduceOptions {
                scale: scale.clone(),
                seeds,
                out_dir: out.clone(),
                only: only.clone(),
                verbose: !quiet,
                data_dir: None,
                part: if worker { Part::Worker } else { Part::All },
                started: None,
            };
            if worker {
                reproduce(&opts)?;
                return Ok(String::new());
            }
            if jobs > 1 {
                opts.started = Some(std::time::Instant::now());
                opts.part = Part::Upstream;
                reproduce(&opts)?;
                run_reproduce_workers(&opts, jobs)?;
                opts.part = Part::All;
            }
            let s = reproduce(&opts)?;
            let md = std::fs::read_to_string(s.out_dir.join("summary.md"))
                .map_err(|e| RlhfError::io(s.out_dir.join("summary.md"), e))?;
            Ok(format!(
                "{md}\nreport: {} (frontier.html, frontier.svg, frontier.csv, matched_kl.csv, samples.md, summary.json, manifest.json)",
                s.out_dir.display()
            ))
        })()),
        Command::Rm(args) => finish(rm_cmd(&args)),
        Command::Dpo(args) => finish(dpo_cmd(&args)),
        Command::Ppo(args) => report_run((|| {
            use crate::train::ppo::{run_ppo, PpoConfig};
            let mut cfg = PpoConfig::from_file(&args.config)?;
            if let Some(n) = args.max_steps {
                cfg.optim.max_steps = n;
            }
            if args.threads.is_some() {
                cfg.threads = args.threads;
            }
            let s = run_ppo(&cfg, &args.options())?;
            let ev = s.final_eval.as_ref();
            Ok(format!(
                "{}: {} iterations{}, held-out score {:.4} (σ {:.4}), exact KL {:.3}, {:.0} tokens/s, {:.1} s; run dir {}",
                args.config.display(),
                s.iterations,
                s.resumed_from.map(|r| format!(" (resumed from {r})")).unwrap_or_default(),
                ev.map_or(f64::NAN, |e| e.score_mean),
                ev.map_or(f64::NAN, |e| e.score_sigmoid_mean),
                ev.map_or(f64::NAN, |e| e.kl_exact),
                s.tokens_per_s,
                s.wall_s,
                s.run_dir.display()
            ))
        })()),
        Command::Sft(args) => report_run((|| {
            use crate::train::sft::{run_sft, SftConfig};
            let mut cfg = SftConfig::from_file(&args.config)?;
            if let Some(n) = args.max_steps {
                cfg.optim.max_steps = n;
            }
            if args.threads.is_some() {
                cfg.threads = args.threads;
            }
            let s = run_sft(&cfg, &args.options())?;
            Ok(format!(
                "{}: {} steps{}, validation loss {:.4}, perplexity {:.2}, {:.0} train tokens/s, {:.1} s; run dir {}",
                args.config.display(),
                s.steps,
                s.resumed_from
                    .map(|r| format!(" (resumed from step {r})"))
                    .unwrap_or_default(),
                s.final_val_loss,
                s.final_val_ppl,
                s.train_tokens_per_s,
                s.wall_s,
                s.run_dir.display()
            ))
        })()),
        Command::BestOfN {
            config,
            out,
            n,
            threads,
        } => finish(commands::best_of_n_cmd(config, out, n, threads)),
        Command::Export { run, out, heads } => finish(commands::export_cmd(&run, &out, heads)),
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

/// `jobs` worker processes of this binary over one sweep (`reproduce --worker`), waited for; the claims
/// of an earlier, killed sweep are cleared first.
fn run_reproduce_workers(
    opts: &crate::pipeline::dpo_sentiment::ReproduceOptions,
    jobs: usize,
) -> Result<(), RlhfError> {
    use crate::pipeline::dpo_sentiment::{clear_claims, out_dir_for};
    let out = out_dir_for(opts)?;
    clear_claims(&out)?;
    let exe = std::env::current_exe().map_err(|e| RlhfError::io("current_exe", e))?;
    let mut children = Vec::new();
    for _ in 0..jobs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "reproduce",
            "dpo-sentiment",
            "--worker",
            "--scale",
            &opts.scale,
        ]);
        cmd.arg("--out").arg(&out);
        if let Some(n) = opts.seeds {
            cmd.args(["--seeds", &n.to_string()]);
        }
        for a in &opts.only {
            cmd.args(["--only", a]);
        }
        if !opts.verbose {
            cmd.arg("--quiet");
        }
        children.push(cmd.spawn().map_err(|e| RlhfError::io(&exe, e))?);
    }
    let mut failed = Vec::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait().map_err(|e| RlhfError::io(&exe, e))?;
        if !status.success() {
            failed.push(format!("worker {i}: {status}"));
        }
    }
    clear_claims(&out)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(RlhfError::invalid("jobs", failed.join("; ")))
    }
}
