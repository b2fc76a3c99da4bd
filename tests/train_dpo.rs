//! DPO-family trainer on the tiny config (configs/dpo-tiny.toml) over an SFT fixture: it learns pairs
//! separable by construction, is bit-reproducible and survives SIGKILL (reloading its cached reference
//! log-probs); at initialisation loss = log 2 and the implicit rewards are 0; prompt tokens get no
//! gradient; left and right padding give the same log-probs; the cache equals a fresh computation; every
//! objective runs; bad configs and data are typed errors (exit 2 from the CLI).

#[path = "common/prefs.rs"]
mod prefs;

use prefs::*;
use rlhf_lab::core::dpo::{dpo_loss, DpoConfig, DpoVariant, PairLogps};
use rlhf_lab::core::logprobs::sequence_log_probs;
use rlhf_lab::train::batch::{
    collate_groups, completion_token_logps, completion_token_logps_from_logits,
    load_preference_groups, Padding, PreferenceFormat, PreferenceSplits,
};
use rlhf_lab::train::dpo::{
    pair_logps, reference_logps, run_dpo, DpoObjective, DpoSummary, DpoTrainConfig, RunOptions,
    REFERENCE_FILE,
};
use rlhf_lab::train::lm::LoadedLm;
use rlhf_lab::train::run::ResumeMode;
use rlhf_lab::RlhfError;
use std::f64::consts::LN_2;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn tiny(sft: &Path, data: &Path) -> DpoTrainConfig {
    let mut cfg =
        DpoTrainConfig::from_file(config_path("dpo-tiny.toml")).expect("dpo-tiny.toml is valid");
    cfg.sft_run = sft.to_path_buf();
    cfg.data.path = data.to_path_buf();
    cfg
}

fn fresh(dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: Some(dir.to_path_buf()),
        resume: ResumeMode::Fresh,
        plotly_cdn: true,
        ..Default::default()
    }
}

fn run_in(cfg: &DpoTrainConfig, dir: &Path) -> DpoSummary {
    let _g = torch_lock();
    run_dpo(cfg, &fresh(dir)).expect("tiny DPO run")
}

fn fixture_lm_and_pairs() -> (LoadedLm, PreferenceSplits) {
    let (sft, data) = (sft_run(), pairs_file());
    let lm = LoadedLm::from_run(&sft, "sft_run", Device::Cpu).unwrap();
    let splits = load_preference_groups(
        &data,
        PreferenceFormat::Pairs,
        &lm.tokenizer,
        64,
        "data.path",
    )
    .unwrap();
    (lm, splits)
}

#[test]
fn learns_is_deterministic_and_survives_sigkill() {
    let (sft, data) = (sft_run(), pairs_file());
    let cfg = tiny(&sft, &data);
    let max = cfg.optim.max_steps;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, k) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("killed"),
    );

    // (a) Learns: the loss falls below log 2, the validation margin grows, accuracy far above chance.
    let sa = run_in(&cfg, &a);
    assert_eq!(sa.steps, max);
    assert!(!sa.reference_from_cache);
    let train: Vec<f64> = sa.metrics.iter().filter_map(|r| r.get("loss")).collect();
    assert!(
        mean(&train[train.len() - 5..]) < mean(&train[..5]) - 0.1,
        "{train:?}"
    );
    assert!(
        sa.final_val_loss < LN_2 - 0.1,
        "val loss {}",
        sa.final_val_loss
    );
    assert!(
        sa.final_val_margin > 0.2,
        "val margin {}",
        sa.final_val_margin
    );
    assert!(
        sa.final_val_accuracy >= 0.9,
        "val accuracy {}",
        sa.final_val_accuracy
    );
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(csv.starts_with(
        "step,tokens,lr,grad_norm,loss,rewards/chosen,rewards/rejected,rewards/accuracies,\
         rewards/margins,logps/chosen,logps/rejected,val/loss,val/rewards/chosen,\
         val/rewards/rejected,val/rewards/accuracies,val/rewards/margins,val/logps/chosen,\
         val/logps/rejected,eval/score,eval/score_sigmoid,eval/kl_exact,eval/kl_k1,eval/kl_k3,\
         eval/entropy,eval/response_len,eval/distinct_2\n"
    ));
    assert_eq!(csv.lines().count(), 1 + 1 + max as usize);
    for f in [
        REFERENCE_FILE,
        "tokenizer.json",
        "manifest.json",
        "report.html",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }

    // (b) Same seed: byte-identical metrics.
    run_in(&cfg, &b);
    assert_eq!(csv, std::fs::read_to_string(b.join("metrics.csv")).unwrap());

    // (c) SIGKILL twice, resume: byte-identical metrics; a resume reloads the reference cache.
    let toml_path = tmp.path().join("dpo.toml");
    let text = std::fs::read_to_string(config_path("dpo-tiny.toml")).unwrap();
    std::fs::write(&toml_path, with_fixture_paths(&text, &sft, &data)).unwrap();
    let killed = kill_and_resume("dpo", &toml_path, &k, max);
    assert_eq!(csv, killed, "metrics after kill + resume differ");
    let _g = torch_lock();
    let again = run_dpo(
        &cfg,
        &RunOptions {
            out_dir: Some(k.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again.resumed_from, Some(max));
    assert!(again.reference_from_cache);

    // (d) A changed config is refused on resume.
    let mut changed = cfg.clone();
    changed.loss.beta = 0.2;
    let err = run_dpo(
        &changed,
        &RunOptions {
            out_dir: Some(a.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, RlhfError::Config { .. }), "{err}");
}

/// Policy = reference at step 0: validation loss log 2, implicit rewards and margin 0, accuracy 0
/// (ties count as wrong); the first training step's loss is log 2 as well.
#[test]
fn at_initialisation_loss_is_log2_and_rewards_zero() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny(&sft, &data);
    cfg.optim.max_steps = 1;
    cfg.optim.warmup_steps = 0;
    let s = run_in(&cfg, &tmp.path().join("init"));
    let r0 = &s.metrics[0];
    assert!((r0.get("val/loss").unwrap() - LN_2).abs() < 1e-6, "{r0:?}");
    for c in [
        "val/rewards/chosen",
        "val/rewards/rejected",
        "val/rewards/margins",
    ] {
        assert!(r0.get(c).unwrap().abs() < 1e-6, "{c} = {:?}", r0.get(c));
    }
    let r1 = &s.metrics[1];
    assert!((r1.get("loss").unwrap() - LN_2).abs() < 1e-4, "{r1:?}");
    for c in ["rewards/chosen", "rewards/rejected"] {
        assert!(r1.get(c).unwrap().abs() < 1e-4, "{c} = {:?}", r1.get(c));
    }
    assert!(r1.get("logps/chosen").unwrap() < 0.0);
}

/// d loss / d logits is exactly 0 at every position whose target is a prompt token or padding (and at
/// the last position, which predicts nothing), and non-zero on completion targets.
#[test]
fn prompt_tokens_receive_no_gradient() {
    let (lm, splits) = fixture_lm_and_pairs();
    let _g = torch_lock();
    let pairs: Vec<_> = splits.train.iter().take(3).collect();
    let batch = collate_groups(&pairs, lm.tokenizer.pad_id(), Padding::Right, Device::Cpu).unwrap();
    let model = lm.lm();
    let logits = tch::no_grad(|| {
        let h = model
            .forward_hidden(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.position_ids,
                None,
                false,
            )
            .unwrap();
        model.lm_logits(&h).unwrap()
    })
    .detach()
    .set_requires_grad(true); // (2B, T, V) leaf
    let (tok_logps, mask) = completion_token_logps_from_logits(&logits, &batch).unwrap();
    let (seq, _) = sequence_log_probs(&tok_logps, &mask).unwrap(); // (2B,)
    let seq = seq.view([3, 2]);
    let (pc, pr) = (seq.select(1, 0), seq.select(1, 1));
    let rc = pc.detach() + 0.3;
    let rr = pr.detach() - 0.2;
    let out = dpo_loss(
        &PairLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_lengths: None,
            rejected_lengths: None,
        },
        &DpoConfig::new(0.1, DpoVariant::Sigmoid),
    )
    .unwrap();
    out.loss.backward();
    let grad_norm = logits
        .grad()
        .abs()
        .sum_dim_intlist(&[2i64][..], false, Kind::Double); // (2B, T)
    let g = Vec::<Vec<f64>>::try_from(&grad_norm).unwrap();
    let cm = Vec::<Vec<i64>>::try_from(&batch.completion_mask).unwrap();
    let t = cm[0].len();
    let (mut zero, mut nonzero) = (0, 0);
    for (row, gm) in g.iter().enumerate() {
        for pos in 0..t {
            let target_is_completion = pos + 1 < t && cm[row][pos + 1] == 1;
            if target_is_completion {
                assert!(
                    gm[pos] > 0.0,
                    "row {row} position {pos}: no gradient on a completion target"
                );
                nonzero += 1;
            } else {
                assert_eq!(
                    gm[pos], 0.0,
                    "row {row} position {pos}: gradient on a prompt/pad target"
                );
                zero += 1;
            }
        }
    }
    assert!(zero > 6 * 3 && nonzero > 6 * 3, "{zero} {nonzero}");
    // And the log-probs themselves are exactly 0 off the completion.
    let off = (tok_logps.abs() * (mask.ones_like() - &mask))
        .sum(Kind::Double)
        .double_value(&[]);
    assert_eq!(off, 0.0);
}

/// The trainers' path, which runs the LM head only at completion targets, equals the full-logits
/// reference path: the log-probs to float rounding, exactly 0 off the completion, and the gradient of
/// every parameter (so the gather / scatter carries the backward pass too), for both paddings.
#[test]
fn gathered_completion_logps_equal_the_full_logits_path() {
    let (lm, splits) = fixture_lm_and_pairs();
    let _g = torch_lock();
    let pairs: Vec<_> = splits.train.iter().take(6).collect();
    let model = lm.lm();
    let params: Vec<Tensor> = lm.vs.trainable_variables();
    assert!(!params.is_empty());
    let grads = |logps: &Tensor| -> Vec<Tensor> {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        logps.sum(Kind::Float).backward();
        // The value and score heads get no gradient (undefined): compare them as zeros.
        params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.copy()
                } else {
                    p.zeros_like()
                }
            })
            .collect()
    };
    for padding in [Padding::Right, Padding::Left] {
        let batch = collate_groups(&pairs, lm.tokenizer.pad_id(), padding, Device::Cpu).unwrap();
        let (fast, mask) = completion_token_logps(model, &batch, false).unwrap();
        let g_fast = grads(&fast);
        let h = model
            .forward_hidden(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.position_ids,
                None,
                false,
            )
            .unwrap();
        let logits = model.lm_logits(&h).unwrap();
        let (full, full_mask) = completion_token_logps_from_logits(&logits, &batch).unwrap();
        let g_full = grads(&full);
        assert_eq!(mask.size(), full_mask.size());
        assert_eq!(
            (&mask - &full_mask)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
        let diff = (&fast - &full).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{padding:?}: log-probs differ by {diff}");
        let off = (fast.abs() * (mask.ones_like() - &mask))
            .sum(Kind::Double)
            .double_value(&[]);
        assert_eq!(off, 0.0, "{padding:?}: log-prob off the completion");
        let mut compared = 0;
        for (a, b) in g_fast.iter().zip(&g_full) {
            let scale = b.abs().max().double_value(&[]).max(1e-6);
            let d = (a - b).abs().max().double_value(&[]);
            assert!(
                d <= 1e-4 * scale,
                "{padding:?}: gradient differs by {d} (scale {scale})"
            );
            compared += 1;
        }
        assert_eq!(compared, params.len());
    }
}

/// The same pairs padded left and right give the same sequence log-probs and token counts.
#[test]
fn left_and_right_padding_give_the_same_logps() {
    let (lm, splits) = fixture_lm_and_pairs();
    let _g = torch_lock();
    let pairs: Vec<_> = splits.train.iter().take(8).collect();
    let lens: Vec<usize> = pairs
        .iter()
        .flat_map(|g| g.completions.iter().map(|c| c.len()))
        .collect();
    assert!(
        lens.iter().min() < lens.iter().max(),
        "the batch needs padding: {lens:?}"
    );
    let pad = lm.tokenizer.pad_id();
    let [rc, rr, rnc, rnr] =
        tch::no_grad(|| pair_logps(lm.lm(), &pairs, pad, Padding::Right, Device::Cpu, false))
            .unwrap();
    let [lc, lr, lnc, lnr] =
        tch::no_grad(|| pair_logps(lm.lm(), &pairs, pad, Padding::Left, Device::Cpu, false))
            .unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&rc, &lc) < 1e-4 && diff(&rr, &lr) < 1e-4,
        "{} {}",
        diff(&rc, &lc),
        diff(&rr, &lr)
    );
    assert_eq!(diff(&rnc, &lnc), 0.0);
    assert_eq!(diff(&rnr, &lnr), 0.0);
    // Unpadded, one at a time, agrees too.
    for (i, p) in pairs.iter().enumerate() {
        let [c, r, _, _] =
            tch::no_grad(|| pair_logps(lm.lm(), &[*p], pad, Padding::Right, Device::Cpu, false))
                .unwrap();
        assert!((c.double_value(&[0]) - rc.double_value(&[i as i64])).abs() < 1e-4);
        assert!((r.double_value(&[0]) - rr.double_value(&[i as i64])).abs() < 1e-4);
    }
}

/// The cached reference log-probs (run directory) equal a fresh computation from the SFT model: bit for
/// bit with the trainer's batching, to float precision one pair at a time.
#[test]
fn cached_reference_logps_equal_a_fresh_computation() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny(&sft, &data);
    cfg.optim.max_steps = 2;
    cfg.optim.warmup_steps = 0;
    let dir = tmp.path().join("run");
    run_in(&cfg, &dir);
    let (lm, splits) = fixture_lm_and_pairs();
    let cached: Vec<(String, Tensor)> =
        rlhf_lab::io::load_tensors(dir.join(REFERENCE_FILE)).unwrap();
    let get = |n: &str| {
        cached
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .shallow_clone()
    };
    let _g = torch_lock();
    let b = cfg.optim.batch_size as usize;
    let pad = lm.tokenizer.pad_id();
    for (split, groups) in [("train", &splits.train), ("val", &splits.validation)] {
        let (c, r) = reference_logps(lm.lm(), groups, b, pad, Padding::Right, Device::Cpu).unwrap();
        assert_eq!(c.size(), [groups.len() as i64]);
        assert!(
            get(&format!("{split}_chosen")).equal(&c),
            "{split}_chosen differs"
        );
        assert!(
            get(&format!("{split}_rejected")).equal(&r),
            "{split}_rejected differs"
        );
        let (c1, _) = reference_logps(lm.lm(), groups, 1, pad, Padding::Left, Device::Cpu).unwrap();
        assert!((&c1 - &c).abs().max().double_value(&[]) < 1e-4);
    }
}

/// Every objective trains a few steps with finite numbers; at initialisation each loss has its
/// closed-form value (h = 0): cDPO/robust log 2, IPO (1/(2β))², hinge 1.
#[test]
fn every_objective_runs_and_starts_where_its_formula_says() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let base = {
        let mut c = tiny(&sft, &data);
        c.optim.max_steps = 3;
        c.optim.warmup_steps = 1;
        c.eval_interval = 3;
        c.checkpoint_interval = 3;
        c.data.padding = Padding::Left;
        c
    };
    let beta = base.loss.beta;
    // (objective, ε, α, loss at initialisation)
    type Case = (DpoObjective, Option<f64>, Option<f64>, Option<f64>);
    let cases: [Case; 6] = [
        (DpoObjective::Cdpo, Some(0.1), None, Some(LN_2)),
        (DpoObjective::Robust, Some(0.1), None, Some(LN_2)),
        (
            DpoObjective::Ipo,
            None,
            None,
            Some((1.0 / (2.0 * beta)).powi(2)),
        ),
        (DpoObjective::Hinge, None, None, Some(1.0)),
        (DpoObjective::PreferredFt, None, None, None),
        (DpoObjective::Unlikelihood, None, Some(0.5), None),
    ];
    for (objective, eps, alpha, at_init) in cases {
        let mut c = base.clone();
        c.loss.objective = objective;
        c.loss.label_smoothing = eps;
        c.loss.alpha = alpha;
        let s = run_in(&c, &tmp.path().join(format!("{objective:?}")));
        let v0 = s.metrics[0].get("val/loss").unwrap();
        if let Some(want) = at_init {
            assert!((v0 - want).abs() < 1e-5, "{objective:?}: {v0} vs {want}");
        } else {
            assert!(v0 > 0.0, "{objective:?}: {v0}");
        }
        for r in &s.metrics {
            assert!(
                r.values.iter().flatten().all(|v| v.is_finite()),
                "{objective:?}: {r:?}"
            );
        }
        assert!(s.final_val_loss.is_finite());
    }
}

#[test]
fn bad_configs_and_data_are_typed_errors() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let run = |cfg: &DpoTrainConfig, name: &str| {
        let _g = torch_lock();
        run_dpo(cfg, &fresh(&tmp.path().join(name))).unwrap_err()
    };

    let mut cfg = tiny(&sft, &data);
    cfg.sft_run = tmp.path().join("no-such-run");
    assert_eq!(run(&cfg, "r1").argument(), Some("sft_run"));

    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(run(&tiny(&sft, &empty), "r2").argument(), Some("data.path"));

    let mut pairs = separable_pairs(300);
    pairs[9].rejected = pairs[9].chosen.clone();
    let same = tmp.path().join("same.jsonl");
    rlhf_lab::data::write_preferences(&same, &pairs).unwrap();
    let err = run(&tiny(&sft, &same), "r3");
    assert!(
        err.to_string().contains("line 10") && err.to_string().contains("chosen"),
        "{err}"
    );

    let mut pairs = separable_pairs(300);
    pairs[0].prompt = "Review ".repeat(70);
    let long = tmp.path().join("long.jsonl");
    rlhf_lab::data::write_preferences(&long, &pairs).unwrap();
    let err = run(&tiny(&sft, &long), "r4");
    assert!(
        err.to_string().contains("line 1:") && err.to_string().contains("context"),
        "{err}"
    );

    // Config errors name the field, from the file and through the CLI (exit 2).
    let text = with_fixture_paths(
        &std::fs::read_to_string(config_path("dpo-tiny.toml")).unwrap(),
        &sft,
        &data,
    );
    let check = |t: String, needle: &str| {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, &t).unwrap();
        match DpoTrainConfig::from_file(&p) {
            Err(RlhfError::Config { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
            other => panic!("expected a config error for {needle}, got {other:?}"),
        }
        let (code, stderr) = run_cli("dpo", &p, &tmp.path().join("cli"));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    };
    check(
        text.replace("objective = \"dpo\"", "objective = \"cdpo\""),
        "loss.label_smoothing",
    );
    check(
        text.replace("beta = 0.1", "beta = 0.1\nalpha = 0.5"),
        "loss.alpha",
    );
    check(text.replace("beta = 0.1", "beta = -1.0"), "loss.beta");
    check(
        text.replace("padding = \"right\"", "padding = \"middle\""),
        "middle",
    );
    check(
        text.replace("[optim]\n", "[optim]\nlearning_rate = 1.0\n"),
        "learning_rate",
    );
    let (code, stderr) = {
        let p = tmp.path().join("nosft.toml");
        std::fs::write(
            &p,
            text.replace(
                &format!("sft_run = {:?}", sft.display().to_string()),
                "sft_run = \"/nonexistent/sft\"",
            ),
        )
        .unwrap();
        run_cli("dpo", &p, &tmp.path().join("cli2"))
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sft_run"), "{stderr}");
}
