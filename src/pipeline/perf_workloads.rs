//! The workloads of `rlhf-lab bench` ([`crate::pipeline::perf`]): how each case is set up and timed in
//! this process, through the library's own code paths (the trainers' loss functions and steps,
//! `model::generate`, `core::advantages::gae`, the PPO trainer itself).

use crate::core::advantages::{gae, GaeConfig, MaskedSteps};
use crate::core::masked::{aggregate, EmptyRows, LossAgg};
use crate::error::{Result, RlhfError};
use crate::model::generate::{generate, GenerationConfig};
use crate::model::gpt::{Gpt, GptConfig};
use crate::model::CausalLm;
use crate::pipeline::perf::{time_it, timing_of, Budget, Case, Timing, PROMPT_LEN, SMOLLM2_GGUF};
use crate::rng::SplitMix64;
use crate::train::batch::{Padding, PromptCompletion, RankedGroup};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Random token ids in `[0, v)` (SplitMix64, seeded).
fn random_ids(rng: &mut SplitMix64, n: usize, v: i64) -> Vec<i64> {
    (0..n).map(|_| rng.below(v as usize) as i64).collect()
}

/// A GPT with `vs` of the case's sizes (seed 0).
fn gpt_of(k: &Case, t: i64) -> Result<(nn::VarStore, Gpt)> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig::new(k.p("V")?, t.max(128), k.p("C")?, k.p("L")?, k.p("H")?);
    let model = Gpt::new(&vs.root(), cfg)?;
    Ok((vs, model))
}

/// The optimiser of the small configs (`configs/*-small.toml`: β = (0.9, 0.95), weight decay 0.1).
fn adamw(vs: &nn::VarStore) -> Result<AdamW> {
    AdamW::new(
        vs,
        AdamWConfig {
            beta2: 0.95,
            ..AdamWConfig::default()
        },
    )
}

/// `P` preference pairs of `PROMPT_LEN` prompt and `S − PROMPT_LEN` completion tokens each.
fn random_pairs(k: &Case) -> Result<Vec<RankedGroup>> {
    let (p, s, v) = (k.p("P")?, k.p("S")?, k.p("V")?);
    let mut rng = SplitMix64::new(1);
    let n_completion = (s - PROMPT_LEN).max(1) as usize;
    Ok((0..p as usize)
        .map(|i| {
            let prompt = random_ids(&mut rng, PROMPT_LEN as usize, v);
            RankedGroup {
                line: i + 1,
                completions: (0..2)
                    .map(|_| PromptCompletion {
                        prompt: prompt.clone(),
                        completion: random_ids(&mut rng, n_completion, v),
                    })
                    .collect(),
                scores: None,
            }
        })
        .collect())
}

/// Times one case in this process (threads set here; competitors and the wait policy are the caller's
/// business).
pub fn run_case(k: &Case, budget: Budget, data_dir: &Path) -> Result<Timing> {
    tch::set_num_threads(k.threads);
    let lr = 1e-4;
    match k.workload.as_str() {
        "matmul" => {
            let n = k.p("n")?;
            tch::manual_seed(0);
            let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
            time_it(budget, || {
                let _ = a.f_matmul(&b)?;
                Ok(())
            })
        }
        "copy" => {
            let n = k.p("n")?;
            let src = Tensor::ones([n], (Kind::Float, Device::Cpu));
            let mut dst = Tensor::zeros([n], (Kind::Float, Device::Cpu));
            time_it(budget, || {
                dst.f_copy_(&src)?;
                Ok(())
            })
        }
        "read" => {
            let n = k.p("n")?;
            let src = Tensor::ones([n], (Kind::Float, Device::Cpu));
            time_it(budget, || {
                let _ = src.f_sum(Kind::Float)?;
                Ok(())
            })
        }
        "gae-zero" | "gae-skip" => {
            let (b, t) = (k.p("B")?, k.p("T")?);
            tch::manual_seed(0);
            let rewards = Tensor::randn([b, t], (Kind::Float, Device::Cpu));
            let values = Tensor::randn([b, t], (Kind::Float, Device::Cpu));
            // Ragged responses: row i has T/2 + (13 i mod T/2) tokens (benches/gae.rs's layout).
            let half = (t / 2).max(1);
            let lens = (Tensor::arange(b, (Kind::Int64, Device::Cpu)) * 13).remainder(half) + half;
            let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu))
                .unsqueeze(0)
                .lt_tensor(&lens.unsqueeze(1));
            let cfg = GaeConfig {
                gamma: 1.0,
                lam: 0.95,
                masked_steps: if k.workload == "gae-zero" {
                    MaskedSteps::Zero
                } else {
                    MaskedSteps::Skip
                },
            };
            time_it(budget, || {
                gae(&rewards, &values, &mask, &cfg)?;
                Ok(())
            })
        }
        "sft-step" => {
            let (b, t) = (k.p("B")?, k.p("T")?);
            let (vs, model) = gpt_of(k, t)?;
            let mut opt = adamw(&vs)?;
            let mut rng = SplitMix64::new(1);
            let v = k.p("V")?;
            let ids = |rng: &mut SplitMix64| {
                Tensor::from_slice(&random_ids(rng, (b * t) as usize, v)).view([b, t])
            };
            let mask = Tensor::ones([b, t], (Kind::Int64, Device::Cpu));
            time_it(budget, || {
                // train::sft's step: zero_grad, NLL → token mean, backward, clip at 1, AdamW.
                let (x, y) = (ids(&mut rng), ids(&mut rng));
                opt.zero_grad();
                let nll = crate::train::sft::token_nll(&model, &x, &y, &mask, true)?; // (B, T)
                let loss = aggregate(&nll, &mask, LossAgg::TokenMean, EmptyRows::Ignore)?;
                let _ = loss.f_double_value(&[])?;
                loss.f_backward()?;
                clip_grad_norm(&opt.params(), 1.0)?;
                opt.step(lr)
            })
        }
        "dpo-step" => {
            use crate::train::dpo::{objective, pair_logps, reference_logps, DpoLossSection};
            let pairs = random_pairs(k)?;
            let refs: Vec<&RankedGroup> = pairs.iter().collect();
            let (vs, model) = gpt_of(k, k.p("S")?)?;
            let (rc, rr) =
                reference_logps(&model, &pairs, pairs.len(), 0, Padding::Right, Device::Cpu)?;
            let mut opt = adamw(&vs)?;
            let loss_cfg = DpoLossSection {
                objective: crate::train::dpo::DpoObjective::Dpo,
                beta: 0.1,
                label_smoothing: None,
                alpha: None,
                ipo_length_normalize: true,
            };
            time_it(budget, || {
                opt.zero_grad();
                let lp = pair_logps(&model, &refs, 0, Padding::Right, Device::Cpu, true)?;
                let (loss, _stats) = objective(&loss_cfg, &lp, &rc, &rr)?;
                loss.f_backward()?;
                clip_grad_norm(&opt.params(), 1.0)?;
                opt.step(lr)
            })
        }
        "rm-step" => {
            use crate::train::rm::{group_rewards, rm_loss, RmLoss, RmLossSection};
            let pairs = random_pairs(k)?;
            let refs: Vec<&RankedGroup> = pairs.iter().collect();
            let (vs, model) = gpt_of(k, k.p("S")?)?;
            let mut opt = adamw(&vs)?;
            let loss_cfg = RmLossSection {
                kind: RmLoss::Pairwise,
                margin_scale: 0.0,
                center_coef: 0.0,
            };
            time_it(budget, || {
                opt.zero_grad();
                let r = group_rewards(&model, &refs, 0, Device::Cpu, true)?; // (P, 2)
                let (loss, _stats) = rm_loss(&r, &refs, &loss_cfg)?;
                loss.f_backward()?;
                clip_grad_norm(&opt.params(), 1.0)?;
                opt.step(lr)
            })
        }
        "sample" => {
            let (b, n, v) = (k.p("B")?, k.p("N")?, k.p("V")?);
            let (_vs, model) = gpt_of(k, PROMPT_LEN + n)?;
            let mut rng = SplitMix64::new(2);
            let prompts: Vec<Vec<i64>> = (0..b)
                .map(|_| random_ids(&mut rng, PROMPT_LEN as usize, v))
                .collect();
            let mut cfg = GenerationConfig::new(n as usize, v - 1, 0);
            cfg.min_new_tokens = n as usize; // every row generates N tokens, as the anchor does
            let mut seed = 0;
            time_it(budget, || {
                seed += 1;
                cfg.seed = seed;
                generate(&model, &prompts, &cfg)?;
                Ok(())
            })
        }
        "decode-smollm2" => {
            let (b, n) = (k.p("B")?, k.p("N")?);
            let (model, tok) =
                crate::model::llama::Llama::from_gguf(data_dir.join(SMOLLM2_GGUF), Device::Cpu)?;
            let mut rng = SplitMix64::new(3);
            let prompts: Vec<Vec<i64>> = (0..b)
                .map(|_| random_ids(&mut rng, PROMPT_LEN as usize, model.vocab_size()))
                .collect();
            let mut cfg = GenerationConfig::new(n as usize, tok.eos_id(), tok.pad_id());
            cfg.temperature = 0.0;
            cfg.min_new_tokens = n as usize;
            time_it(budget, || {
                generate(&model, &prompts, &cfg)?;
                Ok(())
            })
        }
        "ppo-iteration" => ppo_iteration(k, budget, data_dir),
        w => Err(RlhfError::invalid(
            "workload",
            format!("unknown workload {w:?}"),
        )),
    }
}

/// One iteration of `train::ppo` itself (rollout of `B` prompts × `N` sampled tokens, ground-truth
/// scores, old/reference/value passes, experience, `E` epochs × `M` minibatches of actor and critic
/// updates), timed by the trainer (`PpoSummary::iteration_secs`: evaluation and checkpoints excluded).
/// The actor, reference and critic start from a one-step SFT run of the case's GPT, and the scores come
/// from the ground-truth classifier, both cached under `target/bench-runs/`; prompts are
/// `PROMPT_LEN`-token review prefixes.
fn ppo_iteration(k: &Case, budget: Budget, data_dir: &Path) -> Result<Timing> {
    use crate::train::run::{ResumeMode, RunOptions};
    let (v, c, l, h) = (k.p("V")?, k.p("C")?, k.p("L")?, k.p("H")?);
    let (b, n, e, m) = (k.p("B")?, k.p("N")?, k.p("E")?, k.p("M")?);
    let root = crate::io::project_root().join("target/bench-runs");
    let quiet = |dir: PathBuf| RunOptions {
        out_dir: Some(dir),
        resume: ResumeMode::Fresh,
        config_file: None,
        progress: false,
        verbose: false,
        step_delay_ms: 0,
        plotly_cdn: true,
        data_dir: Some(data_dir.to_path_buf()),
    };
    // The SFT run the four models load (one step: the weights do not change the cost).
    let sft_dir = root.join(format!("sft-V{v}-C{c}-L{l}-H{h}"));
    if !sft_dir.join("checkpoints/latest.json").is_file() {
        let docs = if v > 1024 { 20_000 } else { 400 };
        let text = format!(
            "name = \"bench-sft\"\nseed = 1\nthreads = {th}\neval_interval = 1\neval_batches = 1\n\
             checkpoint_interval = 1\nlog_interval = 1\nkeep_checkpoints = 1\n\
             [model]\nn_positions = 128\nn_embd = {c}\nn_layer = {l}\nn_head = {h}\ndropout = 0.0\n\
             [tokenizer]\nvocab_size = {v}\nmin_frequency = 2\n\
             [data]\nsource = \"reviews\"\nblock_size = 64\nmax_train_docs = {docs}\nmax_val_docs = 20\n\
             [optim]\nlr = 1e-3\nmin_lr = 1e-3\nwarmup_steps = 0\nmax_steps = 1\nbatch_size = 2\n\
             grad_clip = 1.0\nweight_decay = 0.0\n",
            th = k.threads
        );
        let cfg = crate::train::sft::SftConfig::from_toml(&text, "bench-sft")?;
        crate::train::sft::run_sft(&cfg, &quiet(sft_dir.clone()))?;
    }
    // The ground-truth scorer (rewards and evaluation), trained once like the reproduction's stage.
    let gt_dir = root.join("ground-truth/model");
    if !gt_dir.join("bow_classifier.json").is_file() {
        use crate::ground_truth::sentiment::{train_classifier_on, ClassifierConfig};
        let (model, metrics) = train_classifier_on(data_dir, &ClassifierConfig::default())?;
        model.save(&gt_dir, Some(&metrics))?;
    }
    let iterations = budget.warmup + budget.min_reps;
    let text = format!(
        "name = \"bench-ppo\"\nseed = 1\nthreads = {th}\nsft_run = {sft:?}\nreward = \"ground-truth\"\n\
         critic_init = \"sft\"\nshared_backbone = false\npreset = \"rlhf-lab\"\nreward_norm = \"running\"\n\
         ppo_epochs = {e}\nnum_minibatches = {m}\nvf_coef = 0.1\nentropy_coef = 0.0\nmax_new_tokens = {n}\n\
         eval_interval = 1000000\ncheckpoint_interval = 1000000\nkeep_checkpoints = 1\n\
         [eval]\nprompts = 4\nmax_new_tokens = 4\nground_truth = {gt:?}\n[prompts]\nmin_tokens = {p}\nmax_tokens = {p}\n\
         [kl]\nkind = \"fixed\"\ninit = 0.1\n\
         [optim]\nlr = 1e-5\nmin_lr = 1e-5\nwarmup_steps = 0\nmax_steps = {iterations}\nbatch_size = {b}\n\
         grad_clip = 1.0\nweight_decay = 0.0\n",
        th = k.threads,
        sft = sft_dir.display().to_string(),
        gt = gt_dir.display().to_string(),
        p = PROMPT_LEN,
    );
    let cfg: crate::train::ppo::PpoConfig = crate::train::config::from_toml(&text, "bench-ppo")?;
    let summary = crate::train::ppo::run_ppo(&cfg, &quiet(root.join("ppo")))?;
    let mut ms: Vec<f64> = summary
        .iteration_secs
        .iter()
        .skip(budget.warmup)
        .map(|s| s * 1e3)
        .collect();
    if ms.is_empty() {
        return Err(RlhfError::invalid("ppo-iteration", "no timed iteration"));
    }
    Ok(timing_of(&mut ms))
}
