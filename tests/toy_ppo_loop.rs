//! Claims of notebook 05 (seed 003's four-model PPO loop on a tiny GRU policy), pinned:
//! reward rises, KL to the reference starts at 0, stays bounded and is ordered by β, value loss falls,
//! the score lands on the last real response token, runs are deterministic, bad configs are typed errors.
//! The experience buffer is checked against an independent GAE loop and an independent reward rule.

use rlhf_lab::toy::ppo_loop::*;
use rlhf_lab::RlhfError;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// The default run, shared by the tests that read it.
fn default_run() -> &'static PpoLoopRun {
    static RUN: OnceLock<PpoLoopRun> = OnceLock::new();
    RUN.get_or_init(|| train(&PpoLoopConfig::default()).unwrap())
}

fn first5(run: &PpoLoopRun, f: fn(&IterMetrics) -> f64) -> f64 {
    let xs: Vec<f64> = run.metrics[..5].iter().map(f).collect();
    xs.iter().sum::<f64>() / 5.0
}

fn last5(run: &PpoLoopRun, f: fn(&IterMetrics) -> f64) -> f64 {
    let n = run.metrics.len();
    let xs: Vec<f64> = run.metrics[n - 5..].iter().map(f).collect();
    xs.iter().sum::<f64>() / 5.0
}

/// The reward rule, written independently of the library: +1 per occurrence of the prompt's first
/// letter (at most `cap`), −`pen` per response token (including `</s>`).
fn rule_score(prompt: &[i64], response: &[i64], cap: usize, pen: f64) -> f64 {
    let key = prompt[0];
    let hits = response.iter().filter(|&&t| t == key).count();
    hits.min(cap) as f64 - pen * response.len() as f64
}

#[test]
fn score_rises_kl_starts_at_zero_and_value_loss_falls() {
    let run = default_run();
    let cfg = &run.config;
    assert_eq!(run.metrics.len(), cfg.iterations);
    for m in &run.metrics {
        for (name, x) in [
            ("score", m.score_mean),
            ("kl", m.kl_mean),
            ("rlhf_reward", m.rlhf_reward_mean),
            ("len", m.response_len_mean),
            ("entropy", m.entropy_mean),
            ("ev", m.explained_variance),
            ("pg", m.policy_loss),
            ("vf", m.value_loss),
            ("clipfrac", m.clipfrac),
            ("vclipfrac", m.value_clipfrac),
            ("approx_kl", m.approx_kl),
        ] {
            assert!(x.is_finite(), "iteration {}: {name} = {x}", m.iteration);
        }
        assert!((0.0..=1.0).contains(&m.clipfrac) && (0.0..=1.0).contains(&m.eos_frac));
        assert_eq!(m.kl_coef, cfg.kl_coef);
    }
    // The actor starts as an exact copy of the reference: KL is exactly 0 at iteration 0.
    assert_eq!(run.metrics[0].kl_mean, 0.0);
    assert_eq!(run.metrics[0].rlhf_reward_mean, run.metrics[0].score_mean);

    let opt = run.optimal_score;
    assert_eq!(opt, 1.8);
    let (s0, s1) = (first5(run, |m| m.score_mean), last5(run, |m| m.score_mean));
    println!("score first5 {s0:.3} last5 {s1:.3} (optimum {opt})");
    assert!(s0 < 0.0, "the initial policy scores below 0 ({s0})");
    assert!(s1 - s0 > 1.2, "score must rise substantially: {s0} -> {s1}");
    assert!(
        s1 > 0.6 * opt && s1 <= opt,
        "last-5 score {s1} vs optimum {opt}"
    );
    // The KL-regularised objective rises too.
    let (r0, r1) = (
        first5(run, |m| m.rlhf_reward_mean),
        last5(run, |m| m.rlhf_reward_mean),
    );
    assert!(r1 - r0 > 0.8, "rlhf reward {r0} -> {r1}");

    // KL grows away from 0 but stays bounded.
    let kl_max = run.metrics.iter().map(|m| m.kl_mean).fold(0.0, f64::max);
    let kl_last = last5(run, |m| m.kl_mean);
    println!("kl last5 {kl_last:.3} max {kl_max:.3}");
    assert!(
        kl_last > 1.0,
        "the policy must move away from the reference"
    );
    assert!(
        kl_max < 12.0,
        "KL to the reference must stay bounded ({kl_max})"
    );

    // The critic learns the returns: value loss falls, explained variance rises.
    let (v0, v1) = (first5(run, |m| m.value_loss), last5(run, |m| m.value_loss));
    let (e0, e1) = (
        first5(run, |m| m.explained_variance),
        last5(run, |m| m.explained_variance),
    );
    println!("value loss first5 {v0:.4} last5 {v1:.4}; explained variance {e0:.3} -> {e1:.3}");
    assert!(v1 < 0.4 * v0, "value loss must fall: {v0} -> {v1}");
    assert!(
        e0.abs() < 0.1 && e1 > 0.15,
        "explained variance {e0} -> {e1}"
    );

    // PPO keeps the updates in the trust region.
    let cf = run.metrics.iter().map(|m| m.clipfrac).fold(0.0, f64::max);
    let akl = run.metrics.iter().map(|m| m.approx_kl).fold(0.0, f64::max);
    println!("max clipfrac {cf:.3}, max approx_kl {akl:.4}");
    assert!(cf < 0.4 && akl < 0.2, "clipfrac {cf}, approx_kl {akl}");
}

#[test]
fn samples_improve_and_are_scored_by_the_rule() {
    let run = default_run();
    let rm = run.config.reward_model;
    assert_eq!(run.samples_before.len(), 2 * PROMPTS.len());
    assert_eq!(run.samples_after.len(), 2 * PROMPTS.len());
    for s in run.samples_before.iter().chain(&run.samples_after) {
        let p = PROMPTS.iter().find(|p| decode(p) == s.prompt).unwrap();
        assert_eq!(
            s.score,
            rule_score(p, &s.response_ids, rm.max_count, rm.length_penalty)
        );
        assert_eq!(s.response, decode(&s.response_ids));
        assert!(!s.response_ids.is_empty() && s.response_ids.len() <= run.config.max_response_len);
        assert!(s.response_ids.iter().all(|&t| (0..VOCAB).contains(&t)));
        let eos_at: Vec<usize> = (0..s.response_ids.len())
            .filter(|&i| s.response_ids[i] == EOS)
            .collect();
        assert!(eos_at.is_empty() || eos_at == [s.response_ids.len() - 1]);
        assert_eq!(s.ended_with_eos, eos_at.len() == 1);
    }
    let mean = |v: &[Sample]| v.iter().map(|s| s.score).sum::<f64>() / v.len() as f64;
    let (b, a) = (mean(&run.samples_before), mean(&run.samples_after));
    println!("sample score before {b:.3} after {a:.3}");
    assert!(
        a - b > 1.0,
        "samples after training must score higher: {b} -> {a}"
    );
}

#[test]
fn smaller_kl_coef_gives_larger_kl_and_the_kl_stays_under_the_beta_bound() {
    let small = default_run();
    let large = train(&PpoLoopConfig {
        kl_coef: 0.5,
        ..PpoLoopConfig::default()
    })
    .unwrap();
    let (k_small, k_large) = (last5(small, |m| m.kl_mean), last5(&large, |m| m.kl_mean));
    println!(
        "kl last5: beta {} -> {k_small:.3}, beta 0.5 -> {k_large:.3}",
        small.config.kl_coef
    );
    assert!(small.config.kl_coef < 0.5);
    assert!(
        k_small > 3.0 * k_large,
        "KL must shrink as beta grows: {k_small} vs {k_large}"
    );
    // The KL-regularised optimum pi* ∝ pi_ref·exp(r/beta) has
    // KL(pi*‖pi_ref) = E*[r]/beta − log Z ≤ (r_max − E_ref[r])/beta (Jensen on log Z).
    let e_ref = large.reference_score_mean;
    let bound = large.kl_bound().unwrap();
    assert!((bound - (large.optimal_score - e_ref) / 0.5).abs() < 1e-12);
    assert!((-1.2..-0.4).contains(&e_ref), "E_ref[r] = {e_ref}");
    let kl_max = large.metrics.iter().map(|m| m.kl_mean).fold(0.0, f64::max);
    println!("beta 0.5: max KL {kl_max:.3} <= bound {bound:.3} (E_ref[r] = {e_ref:.3})");
    assert!(kl_max < bound, "KL {kl_max} above the beta bound {bound}");
    assert!(PpoLoopRun {
        config: PpoLoopConfig {
            kl_target: Some(1.0),
            ..large.config.clone()
        },
        ..large.clone()
    }
    .kl_bound()
    .is_none());
    // A larger beta trades score for closeness to the reference.
    assert!(last5(small, |m| m.score_mean) > last5(&large, |m| m.score_mean) + 0.5);
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let cfg = PpoLoopConfig {
        iterations: 3,
        ..PpoLoopConfig::default()
    };
    let a = train(&cfg).unwrap();
    let b = train(&cfg).unwrap();
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.samples_before, b.samples_before);
    assert_eq!(a.samples_after, b.samples_after);
    let c = train(&PpoLoopConfig { seed: 7, ..cfg }).unwrap();
    assert_ne!(a.metrics, c.metrics);
}

fn v2(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

#[test]
fn experience_buffer_masks_reward_placement_and_gae() {
    let cfg = PpoLoopConfig::default();
    let mut tr = PpoTrainer::new(&cfg).unwrap();
    for _ in 0..4 {
        tr.step().unwrap();
    }
    let beta = tr.kl_coef();
    let batch = tr.make_experience().unwrap();
    let (b, l) = (cfg.batch_size, cfg.max_response_len);
    assert_eq!(batch.batch_size(), b);
    assert_eq!(batch.responses.size(), [b as i64, l as i64]);
    assert_eq!(batch.sequences.size(), [b as i64, PROMPT_LEN + l as i64]);
    assert_eq!(batch.kl_coef, beta);

    let resp = Vec::<Vec<i64>>::try_from(&batch.responses).unwrap();
    let seqs = Vec::<Vec<i64>>::try_from(&batch.sequences).unwrap();
    let mask = Vec::<Vec<bool>>::try_from(&batch.mask).unwrap();
    let rmask = Vec::<Vec<bool>>::try_from(&batch.reward_mask).unwrap();
    let scores = Vec::<f64>::try_from(&batch.scores).unwrap();
    let (rewards, kl, adv, ret, values) = (
        v2(&batch.rewards),
        v2(&batch.kl),
        v2(&batch.advantages),
        v2(&batch.returns),
        v2(&batch.values),
    );
    let (old, rf) = (v2(&batch.old_log_probs), v2(&batch.ref_log_probs));
    let mut lengths = std::collections::BTreeSet::new();
    let mut raw_adv = vec![vec![0.0; l]; b];
    for i in 0..b {
        let n = batch.lengths[i] as usize;
        lengths.insert(n);
        let prompt = PROMPTS[batch.prompt_index[i]];
        // Sequence layout: left-padded prompt, then the response.
        let pad = PROMPT_LEN as usize - prompt.len();
        assert!(seqs[i][..pad].iter().all(|&t| t == PAD));
        assert_eq!(&seqs[i][pad..PROMPT_LEN as usize], prompt);
        assert_eq!(&seqs[i][PROMPT_LEN as usize..], &resp[i][..]);
        // Mask = the first n positions; pads exactly after; EOS only as the last real token.
        assert!((1..=l).contains(&n));
        for t in 0..l {
            assert_eq!(mask[i][t], t < n, "row {i} t {t}");
            assert_eq!(
                rmask[i][t], mask[i][t],
                "score step must be a response token"
            );
            assert_eq!(resp[i][t] == PAD, t >= n);
            if t + 1 < n {
                assert_ne!(resp[i][t], EOS);
            }
        }
        if n < l {
            assert_eq!(resp[i][n - 1], EOS, "a short response ends with </s>");
        }
        // Scores: the reward rule on the real tokens.
        let rm = cfg.reward_model;
        assert_eq!(
            scores[i],
            rule_score(prompt, &resp[i][..n], rm.max_count, rm.length_penalty)
        );
        // Rewards: −β·KL_t on every real token, plus the score on the last real token only.
        for t in 0..l {
            if t >= n {
                assert_eq!(rewards[i][t], 0.0, "reward on a pad (row {i}, t {t})");
                assert_eq!(kl[i][t], 0.0);
                assert_eq!(adv[i][t], 0.0);
                assert_eq!(ret[i][t], 0.0);
                continue;
            }
            assert!((kl[i][t] - (old[i][t] - rf[i][t])).abs() < 1e-12);
            let score_part = rewards[i][t] + beta * kl[i][t];
            let want = if t == n - 1 { scores[i] } else { 0.0 };
            assert!(
                (score_part - want).abs() < 1e-12,
                "row {i} t {t}: {score_part} vs {want}"
            );
        }
        // Independent GAE loop (seed 003): δ_t = r_t + γV_{t+1} − V_t, V after the last token = 0.
        let mut last = 0.0;
        for t in (0..n).rev() {
            let next_v = if t + 1 < n { values[i][t + 1] } else { 0.0 };
            let delta = rewards[i][t] + cfg.gamma * next_v - values[i][t];
            last = delta + cfg.gamma * cfg.lam * last;
            raw_adv[i][t] = last;
            assert!(
                (ret[i][t] - (last + values[i][t])).abs() < 1e-10,
                "returns = A + V (row {i}, t {t})"
            );
        }
    }
    assert!(
        lengths.len() >= 2,
        "responses of different lengths: {lengths:?}"
    );
    // Whitened advantages (unbiased variance over all response tokens, TRL `masked_whiten`).
    let flat: Vec<(f64, f64)> = (0..b)
        .flat_map(|i| (0..batch.lengths[i] as usize).map(move |t| (i, t)))
        .map(|(i, t)| (raw_adv[i][t], adv[i][t]))
        .collect();
    let m = flat.len() as f64;
    let mu = flat.iter().map(|x| x.0).sum::<f64>() / m;
    let var = flat.iter().map(|x| (x.0 - mu).powi(2)).sum::<f64>() / (m - 1.0);
    for (raw, w) in flat {
        assert!((w - (raw - mu) / (var + 1e-8).sqrt()).abs() < 1e-9);
    }

    // The notebook's row view agrees with the tensors.
    let row = batch.row(0).unwrap();
    assert_eq!(row.t.len(), l);
    assert_eq!(row.reward, rewards[0]);
    assert_eq!(row.in_mask, mask[0]);
    assert_eq!(row.score, scores[0]);
    for t in 0..l {
        assert_eq!(row.token[t], TOKENS[resp[0][t] as usize]);
    }
    assert!(matches!(batch.row(b), Err(RlhfError::OutOfRange { .. })));
}

#[test]
fn adaptive_kl_controller_follows_ziegler_update() {
    let cfg = PpoLoopConfig {
        iterations: 8,
        kl_target: Some(0.5),
        kl_horizon: 320.0,
        ..PpoLoopConfig::default()
    };
    let run = train(&cfg).unwrap();
    let ms = &run.metrics;
    assert_eq!(ms[0].kl_coef, cfg.kl_coef);
    for w in ms.windows(2) {
        let e = (w[0].kl_mean / 0.5 - 1.0).clamp(-0.2, 0.2);
        let want = w[0].kl_coef * (1.0 + e * cfg.batch_size as f64 / 320.0);
        assert!(
            (w[1].kl_coef - want).abs() < 1e-15,
            "{} vs {want}",
            w[1].kl_coef
        );
    }
    // KL starts at 0 < target, so β first shrinks; it grows once KL overshoots the target.
    assert!(ms[1].kl_coef < ms[0].kl_coef);
    assert!(ms.iter().any(|m| m.kl_mean > 0.5));
}

#[test]
fn optimal_score_matches_brute_force() {
    let rm = ToyRewardModel::default();
    for max_len in 1..=5usize {
        // Every response: n letters (no EOS) then </s>, n < max_len; or max_len letters.
        let mut best = f64::NEG_INFINITY;
        let mut stack: Vec<Vec<i64>> = vec![vec![]];
        while let Some(r) = stack.pop() {
            if r.len() < max_len {
                let mut done = r.clone();
                done.push(EOS);
                best = best.max(rule_score(&[1], &done, rm.max_count, rm.length_penalty));
                for tok in 1..VOCAB {
                    let mut next = r.clone();
                    next.push(tok);
                    stack.push(next);
                }
            } else {
                best = best.max(rule_score(&[1], &r, rm.max_count, rm.length_penalty));
            }
        }
        assert!(
            (rm.optimal_score(max_len) - best).abs() < 1e-12,
            "L = {max_len}: {} vs {best}",
            rm.optimal_score(max_len)
        );
    }
    assert!((rm.score(&[PAD, 3, 1], &[3, 3, 3, 3, EOS]) - (3.0 - 1.5)).abs() < 1e-12);
    assert_eq!(decode(&[PAD, 1, 2, EOS]), "a b </s>");
}

#[test]
fn bad_configs_are_typed_errors() {
    let d = PpoLoopConfig::default;
    let cases: Vec<(PpoLoopConfig, &str)> = vec![
        (
            PpoLoopConfig {
                iterations: 0,
                ..d()
            },
            "iterations",
        ),
        (
            PpoLoopConfig {
                batch_size: 1,
                ..d()
            },
            "batch_size",
        ),
        (
            PpoLoopConfig {
                num_minibatches: 3,
                ..d()
            },
            "num_minibatches",
        ),
        (
            PpoLoopConfig {
                ppo_epochs: 0,
                ..d()
            },
            "ppo_epochs",
        ),
        (
            PpoLoopConfig {
                max_response_len: 0,
                ..d()
            },
            "max_response_len",
        ),
        (PpoLoopConfig { lr: 0.0, ..d() }, "lr"),
        (
            PpoLoopConfig {
                lr: f64::NAN,
                ..d()
            },
            "lr",
        ),
        (
            PpoLoopConfig {
                kl_coef: -0.1,
                ..d()
            },
            "kl_coef",
        ),
        (
            PpoLoopConfig {
                kl_target: Some(0.0),
                ..d()
            },
            "kl_target",
        ),
        (PpoLoopConfig { gamma: 1.5, ..d() }, "gamma"),
        (PpoLoopConfig { lam: -0.1, ..d() }, "lam"),
        (
            PpoLoopConfig {
                cliprange: 1.0,
                ..d()
            },
            "cliprange",
        ),
        (
            PpoLoopConfig {
                cliprange_value: 0.0,
                ..d()
            },
            "cliprange_value",
        ),
        (
            PpoLoopConfig {
                vf_coef: -1.0,
                ..d()
            },
            "vf_coef",
        ),
        (
            PpoLoopConfig {
                max_grad_norm: 0.0,
                ..d()
            },
            "max_grad_norm",
        ),
    ];
    for (cfg, arg) in cases {
        let err = train(&cfg)
            .err()
            .unwrap_or_else(|| panic!("{arg}: no error"));
        assert_eq!(err.argument(), Some(arg), "{err}");
        assert!(
            matches!(
                err,
                RlhfError::OutOfRange { .. } | RlhfError::Invalid { .. }
            ),
            "{err:?}"
        );
        assert!(PpoTrainer::new(&cfg).is_err());
    }
    assert!(PpoLoopConfig::default().validate().is_ok());
}
