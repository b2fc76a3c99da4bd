//! Bad input → a typed error naming the argument and the problem. Never a panic, never a silent NaN.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::dpo::*;
use rlhf_lab::kl::*;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::logprobs::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;
use rlhf_lab::reward_model::*;
use tch::{Device, Kind, Tensor};

/// A public function under test, called for its panics only.
type NamedCall<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// Assert `r` is an error of class `kind` about argument `arg`, and that the message mentions it.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(r: rlhf_lab::Result<T>, kind: &str, arg: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.kind(), kind, "wrong error class: {e}");
            assert_eq!(e.argument(), Some(arg), "wrong argument: {e}");
            assert!(
                e.to_string().contains(arg),
                "message must name `{arg}`: {e}"
            );
        }
        Ok(v) => panic!("expected a {kind} error about `{arg}`, got Ok({v:?})"),
    }
}

fn ok2() -> Tensor {
    t2(&[&[0.1, 0.2, 0.3], &[0.4, 0.5, 0.6]])
}
fn ones2() -> Tensor {
    ok2().ones_like()
}
fn gcfg() -> GaeConfig {
    GaeConfig {
        gamma: 0.9,
        lam: 0.95,
        masked_steps: MaskedSteps::Zero,
    }
}

#[test]
fn mismatched_shapes() {
    let short = t2(&[&[0.1, 0.2], &[0.3, 0.4]]);
    expect_err(
        gae(&ok2(), &short, &ones2(), &gcfg()),
        "shape_mismatch",
        "values",
    );
    expect_err(
        gae(&ok2(), &ok2(), &short.ones_like(), &gcfg()),
        "shape_mismatch",
        "mask",
    );
    expect_err(
        policy_loss(
            &ok2(),
            &short,
            &ok2(),
            &ones2(),
            &PolicyLossConfig::default(),
        ),
        "shape_mismatch",
        "old_log_probs",
    );
    expect_err(
        kl_per_token(&ok2(), &short, &ones2(), &KlConfig::new(KlEstimator::K1)),
        "shape_mismatch",
        "ref_log_probs",
    );
    expect_err(
        pairwise_loss(&t1(&[1., 2.]), &t1(&[1.]), None, 0.0),
        "shape_mismatch",
        "rejected",
    );
    let logits = Tensor::zeros([2, 3, 4], (Kind::Double, Device::Cpu));
    let labels = Tensor::zeros([2, 2], (Kind::Int64, Device::Cpu));
    expect_err(
        token_log_probs(&logits, &labels, &labels.ones_like()),
        "shape_mismatch",
        "labels",
    );
    expect_err(
        token_log_probs(&ok2(), &labels, &labels.ones_like()),
        "shape_mismatch",
        "logits",
    );
    let scores3 = t1(&[1.0, 2.0, 3.0]);
    let rc = RewardShapingConfig {
        kl_coef: 0.1,
        kl: KlConfig::new(KlEstimator::K1),
        score_placement: ScorePlacement::LastResponseToken,
        score_clip: None,
        kl_on_score_slot: false,
        empty_rows: rlhf_lab::masked::EmptyRows::Error,
    };
    expect_err(
        kl_shaped_rewards(&ok2(), &ok2(), &ones2(), &scores3, &rc),
        "shape_mismatch",
        "scores",
    );
    expect_err(
        gae(
            &t1(&[1.0, 2.0]),
            &t1(&[1.0, 2.0]),
            &t1(&[1.0, 1.0]),
            &gcfg(),
        ),
        "shape_mismatch",
        "rewards",
    );
    expect_err(kwise_loss(&t1(&[1.0, 2.0])), "shape_mismatch", "rewards");
}

#[test]
fn non_binary_masks() {
    let m = t2(&[&[1.0, 0.5, 0.0], &[1.0, 1.0, 1.0]]);
    expect_err(gae(&ok2(), &ok2(), &m, &gcfg()), "non_binary_mask", "mask");
    expect_err(
        masked_mean(&ok2(), &(ones2() * 2.0), None, EmptyRows::Error),
        "non_binary_mask",
        "mask",
    );
    expect_err(
        policy_loss(
            &ok2(),
            &ok2(),
            &ok2(),
            &(-ones2()),
            &PolicyLossConfig::default(),
        ),
        "non_binary_mask",
        "mask",
    );
}

#[test]
fn nan_and_inf_at_used_positions() {
    let bad = ok2();
    let _ = bad.get(1).get(1).fill_(f64::NAN);
    expect_err(
        gae(&bad, &ok2(), &ones2(), &gcfg()),
        "non_finite",
        "rewards",
    );
    expect_err(gae(&ok2(), &bad, &ones2(), &gcfg()), "non_finite", "values");
    expect_err(
        policy_loss(&ok2(), &ok2(), &bad, &ones2(), &PolicyLossConfig::default()),
        "non_finite",
        "advantages",
    );
    expect_err(
        masked_whiten(&bad, &ones2(), WhitenConfig::default()),
        "non_finite",
        "values",
    );
    let inf = t1(&[1.0, 2.0]);
    let _ = inf.get(0).fill_(f64::INFINITY);
    expect_err(
        pairwise_loss(&inf, &t1(&[0.0, 0.0]), None, 0.0),
        "non_finite",
        "chosen",
    );
    let lp = PairLogps {
        policy_chosen: &t1(&[-1.0, -2.0]),
        policy_rejected: &inf,
        ref_chosen: &t1(&[-1.0, -2.0]),
        ref_rejected: &t1(&[-1.0, -2.0]),
        chosen_lengths: None,
        rejected_lengths: None,
    };
    expect_err(
        dpo_loss(&lp, &DpoConfig::new(0.1, DpoVariant::Sigmoid)),
        "non_finite",
        "policy_rejected",
    );
    let logits = Tensor::zeros([1, 2, 3], (Kind::Double, Device::Cpu));
    let _ = logits.get(0).get(1).get(2).fill_(f64::NAN);
    let labels = Tensor::zeros([1, 2], (Kind::Int64, Device::Cpu));
    expect_err(
        token_log_probs(&logits, &labels, &labels.ones_like()),
        "non_finite",
        "logits",
    );
    expect_err(
        entropy(&logits, &labels.ones_like()),
        "non_finite",
        "logits",
    );
    expect_err(
        grpo_advantages(&t2(&[&[1.0, f64::NAN]]), &GrpoConfig::default()),
        "non_finite",
        "scores",
    );
    // The same NaN at a masked position is fine.
    let m = t2(&[&[1., 1., 1.], &[1., 0., 1.]]);
    assert!(gae(&bad, &ok2(), &m, &gcfg()).is_ok());
}

#[test]
fn hyper_parameters_out_of_range() {
    for (g, l, arg) in [
        (1.1, 0.9, "gamma"),
        (-0.1, 0.9, "gamma"),
        (0.9, 1.5, "lam"),
        (0.9, -1e-9, "lam"),
        (f64::NAN, 0.9, "gamma"),
    ] {
        let cfg = GaeConfig {
            gamma: g,
            lam: l,
            masked_steps: MaskedSteps::Zero,
        };
        expect_err(gae(&ok2(), &ok2(), &ones2(), &cfg), "out_of_range", arg);
    }
    expect_err(
        discounted_returns(&ok2(), &ones2(), 2.0, MaskedSteps::Zero),
        "out_of_range",
        "gamma",
    );
    let (a, b) = (t1(&[-1.0]), t1(&[-2.0]));
    let lp = PairLogps {
        policy_chosen: &a,
        policy_rejected: &b,
        ref_chosen: &a,
        ref_rejected: &b,
        chosen_lengths: None,
        rejected_lengths: None,
    };
    for beta in [0.0, -0.1, f64::INFINITY] {
        expect_err(
            dpo_loss(&lp, &DpoConfig::new(beta, DpoVariant::Sigmoid)),
            "out_of_range",
            "beta",
        );
    }
    for eps in [0.5, 0.7, -0.01] {
        let cfg = DpoConfig {
            label_smoothing: eps,
            ..DpoConfig::new(0.1, DpoVariant::Robust)
        };
        expect_err(dpo_loss(&lp, &cfg), "out_of_range", "label_smoothing");
    }
    expect_err(
        dpo_loss(
            &lp,
            &DpoConfig {
                label_smoothing: 0.1,
                ..DpoConfig::new(0.1, DpoVariant::Ipo)
            },
        ),
        "invalid_argument",
        "label_smoothing",
    );
    expect_err(unlikelihood_loss(&a, &b, 1.5), "out_of_range", "alpha");
    expect_err(
        unlikelihood_loss(&a, &t1(&[0.0]), 0.5),
        "invalid_argument",
        "policy_rejected",
    );
    let pc = |c: PolicyLossConfig| policy_loss(&ok2(), &ok2(), &ok2(), &ones2(), &c);
    expect_err(
        pc(PolicyLossConfig {
            clip_low: 1.0,
            ..Default::default()
        }),
        "out_of_range",
        "clip_low",
    );
    expect_err(
        pc(PolicyLossConfig {
            clip_high: 0.0,
            ..Default::default()
        }),
        "out_of_range",
        "clip_high",
    );
    expect_err(
        pc(PolicyLossConfig {
            dual_clip: Some(1.0),
            ..Default::default()
        }),
        "out_of_range",
        "dual_clip",
    );
    expect_err(
        value_loss(
            &ok2(),
            &ok2(),
            &ok2(),
            &ones2(),
            &ValueLossConfig {
                clip: Some(-1.0),
                ..Default::default()
            },
        ),
        "out_of_range",
        "clip",
    );
    expect_err(
        AdaptiveKlController::new(0.1, 0.0, 10000.0),
        "out_of_range",
        "target",
    );
    expect_err(
        AdaptiveKlController::new(0.1, 6.0, -1.0),
        "out_of_range",
        "horizon",
    );
    let mut ctl = AdaptiveKlController::new(0.1, 6.0, 10000.0).unwrap();
    expect_err(ctl.update(f64::NAN, 1), "out_of_range", "current_kl");
    expect_err(
        pairwise_loss(&a, &b, None, -1.0),
        "out_of_range",
        "center_coef",
    );
    let rc = RewardShapingConfig {
        kl_coef: -0.1,
        kl: KlConfig::new(KlEstimator::K1),
        score_placement: ScorePlacement::LastResponseToken,
        score_clip: None,
        kl_on_score_slot: false,
        empty_rows: rlhf_lab::masked::EmptyRows::Error,
    };
    expect_err(
        kl_shaped_rewards(&ok2(), &ok2(), &ones2(), &t1(&[0.0, 0.0]), &rc),
        "out_of_range",
        "kl_coef",
    );
    expect_err(
        masked_whiten(
            &ok2(),
            &ones2(),
            WhitenConfig {
                eps: -1.0,
                ..Default::default()
            },
        ),
        "out_of_range",
        "eps",
    );
}

#[test]
fn zero_token_rows_where_a_mean_is_asked() {
    let m = t2(&[&[1., 1., 1.], &[0., 0., 0.]]);
    expect_err(
        masked_mean(&ok2(), &m, Some(1), EmptyRows::Error),
        "empty_rows",
        "mask",
    );
    expect_err(
        policy_loss(
            &ok2(),
            &ok2(),
            &ok2(),
            &m.zeros_like(),
            &PolicyLossConfig::default(),
        ),
        "empty_rows",
        "mask",
    );
    expect_err(
        value_loss(
            &ok2(),
            &ok2(),
            &ok2(),
            &m.zeros_like(),
            &ValueLossConfig::default(),
        ),
        "empty_rows",
        "mask",
    );
    let (a, b) = (t1(&[-1.0]), t1(&[-2.0]));
    let zero = t1(&[0.0]);
    let lp = PairLogps {
        policy_chosen: &a,
        policy_rejected: &b,
        ref_chosen: &a,
        ref_rejected: &b,
        chosen_lengths: Some(&zero),
        rejected_lengths: Some(&t1(&[3.0])),
    };
    expect_err(
        dpo_loss(&lp, &DpoConfig::new(0.1, DpoVariant::Ipo)),
        "empty_rows",
        "chosen_lengths",
    );
    expect_err(
        preferred_ft_loss(&a, Some(&zero)),
        "empty_rows",
        "chosen_lengths",
    );
    expect_err(
        masked_var(&ok2(), &t2(&[&[1., 0., 0.], &[0., 0., 0.]]), true),
        "invalid_argument",
        "mask",
    );
}

#[test]
fn wrong_dtypes_and_degenerate_sizes() {
    let ints = Tensor::from_slice(&[1i64, 2, 3]).reshape([1, 3]);
    expect_err(
        gae(&ints, &ints, &ints.ones_like(), &gcfg()),
        "dtype",
        "rewards",
    );
    let logits = Tensor::zeros([1, 2, 3], (Kind::Int64, Device::Cpu));
    expect_err(
        token_log_probs(
            &logits,
            &ints.narrow(1, 0, 2),
            &ints.narrow(1, 0, 2).ones_like(),
        ),
        "dtype",
        "logits",
    );
    let flogits = Tensor::zeros([1, 2, 3], (Kind::Double, Device::Cpu));
    expect_err(
        token_log_probs(&flogits, &t2(&[&[0.0, 1.0]]), &t2(&[&[1.0, 1.0]])),
        "dtype",
        "labels",
    );
    let labels = Tensor::from_slice(&[0i64, 7]).reshape([1, 2]);
    expect_err(
        token_log_probs(&flogits, &labels, &labels.ones_like()),
        "invalid_argument",
        "labels",
    );
    expect_err(
        rloo_advantages(&t2(&[&[1.0], &[2.0]])),
        "invalid_argument",
        "scores",
    );
    expect_err(
        grpo_advantages(&t2(&[&[1.0], &[2.0]]), &GrpoConfig::default()),
        "invalid_argument",
        "scores",
    );
    assert!(grpo_advantages(
        &t2(&[&[1.0], &[2.0]]),
        &GrpoConfig {
            singleton_as_unit: true,
            ..Default::default()
        }
    )
    .is_ok());
    expect_err(
        kwise_loss(&t2(&[&[1.0], &[2.0]])),
        "invalid_argument",
        "rewards",
    );
    let empty = Tensor::zeros([0], (Kind::Double, Device::Cpu));
    expect_err(
        pairwise_loss(&empty, &empty, None, 0.0),
        "invalid_argument",
        "chosen",
    );
}

#[test]
fn errors_are_values_not_panics_for_every_public_entry_point() {
    // A sweep of garbage through every primitive: each call returns (never panics).
    let garbage = [
        Tensor::zeros([0], (Kind::Double, Device::Cpu)),
        Tensor::zeros([2, 0], (Kind::Double, Device::Cpu)),
        Tensor::zeros([3], (Kind::Double, Device::Cpu)),
        Tensor::zeros([2, 3, 4], (Kind::Double, Device::Cpu)),
        Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)),
        Tensor::zeros([2, 3], (Kind::Bool, Device::Cpu)),
        Tensor::zeros([], (Kind::Double, Device::Cpu)),
    ];
    let mut failures = Vec::new();
    for x in &garbage {
        for m in &garbage {
            let rc = RewardShapingConfig {
                kl_coef: 0.1,
                kl: KlConfig::new(KlEstimator::K1),
                score_placement: ScorePlacement::AfterLastResponseToken,
                score_clip: Some(1.0),
                kl_on_score_slot: false,
                empty_rows: rlhf_lab::masked::EmptyRows::Error,
            };
            let rc_ignore = RewardShapingConfig {
                kl_on_score_slot: true,
                empty_rows: EmptyRows::Ignore,
                ..rc
            };
            let openrlhf = rlhf_lab::conventions::Conventions::preset("openrlhf").unwrap();
            let verl = rlhf_lab::conventions::Conventions::preset("verl").unwrap();
            let norm = || LossNorm {
                dp_size: 2,
                global_batch_size: Some(4),
                seq_mean_eps: 1e-8,
                ..LossNorm::default()
            };
            let lp = PairLogps {
                policy_chosen: x,
                policy_rejected: m,
                ref_chosen: x,
                ref_rejected: x,
                chosen_lengths: Some(m),
                rejected_lengths: None,
            };
            let calls: Vec<NamedCall> = vec![
                ("gae", Box::new(|| drop(gae(x, x, m, &gcfg())))),
                ("gae_loop", Box::new(|| drop(gae_loop(x, x, m, &gcfg())))),
                ("gae_scan", Box::new(|| drop(gae_scan(x, x, m, &gcfg())))),
                (
                    "gae_native",
                    Box::new(|| drop(gae_native(x, x, m, &gcfg()))),
                ),
                (
                    "discounted_returns",
                    Box::new(|| drop(discounted_returns(x, m, 0.9, MaskedSteps::Skip))),
                ),
                ("td", Box::new(|| drop(td(x, x, m, 0.9, MaskedSteps::Zero)))),
                (
                    "masked_mean",
                    Box::new(|| drop(masked_mean(x, m, Some(1), EmptyRows::Error))),
                ),
                ("masked_sum", Box::new(|| drop(masked_sum(x, m, Some(-1))))),
                ("masked_var", Box::new(|| drop(masked_var(x, m, true)))),
                (
                    "masked_whiten",
                    Box::new(|| drop(masked_whiten(x, m, WhitenConfig::default()))),
                ),
                (
                    "aggregate",
                    Box::new(|| drop(aggregate(x, m, LossAgg::SeqMeanTokenSum, EmptyRows::Ignore))),
                ),
                (
                    "policy_loss",
                    Box::new(|| drop(policy_loss(x, x, x, m, &PolicyLossConfig::default()))),
                ),
                (
                    "value_loss",
                    Box::new(|| drop(value_loss(x, x, x, m, &ValueLossConfig::default()))),
                ),
                (
                    "kl_per_token",
                    Box::new(|| drop(kl_per_token(x, x, m, &KlConfig::new(KlEstimator::K3)))),
                ),
                (
                    "masked_mean_eps",
                    Box::new(|| drop(masked_mean_eps(x, m, None, EmptyRows::Ignore, 1e-8))),
                ),
                (
                    "masked_var_eps",
                    Box::new(|| drop(masked_var_eps(x, m, true, 1e-8))),
                ),
                (
                    "masked_whiten (f32 stats, centre only)",
                    Box::new(|| {
                        drop(masked_whiten(
                            x,
                            m,
                            WhitenConfig {
                                scale: false,
                                f32_stats: true,
                                mean_eps: 1e-8,
                                ..WhitenConfig::default()
                            },
                        ))
                    }),
                ),
                (
                    "aggregate_norm",
                    Box::new(|| {
                        for agg in [LossAgg::SeqMeanTokenSumNorm, LossAgg::SeqMeanTokenMean] {
                            drop(aggregate_norm(x, m, agg, EmptyRows::Ignore, &norm()))
                        }
                    }),
                ),
                (
                    "policy_loss (openrlhf)",
                    Box::new(|| drop(policy_loss(x, x, x, m, &openrlhf.policy_loss_config()))),
                ),
                (
                    "value_loss (verl)",
                    Box::new(|| drop(value_loss(x, x, x, m, &verl.value_loss_config()))),
                ),
                (
                    "kl_shaped_rewards (empty rows ignored, KL on the score slot)",
                    Box::new(|| drop(kl_shaped_rewards(x, x, m, x, &rc_ignore))),
                ),
                (
                    "token_log_probs_at",
                    Box::new(|| drop(token_log_probs_at(x, m, m, 0.7))),
                ),
                (
                    "kl_per_sequence",
                    Box::new(|| drop(kl_per_sequence(x, x, m, &KlConfig::new(KlEstimator::K1)))),
                ),
                (
                    "kl_shaped_rewards",
                    Box::new(|| drop(kl_shaped_rewards(x, x, m, x, &rc))),
                ),
                (
                    "token_log_probs",
                    Box::new(|| drop(token_log_probs(x, m, m))),
                ),
                ("entropy", Box::new(|| drop(entropy(x, m)))),
                (
                    "sequence_log_probs",
                    Box::new(|| drop(sequence_log_probs(x, m))),
                ),
                (
                    "pairwise_loss",
                    Box::new(|| drop(pairwise_loss(x, m, Some(x), 0.1))),
                ),
                ("kwise_loss", Box::new(|| drop(kwise_loss(x)))),
                (
                    "grpo_advantages",
                    Box::new(|| drop(grpo_advantages(x, &GrpoConfig::default()))),
                ),
                ("rloo_advantages", Box::new(|| drop(rloo_advantages(x)))),
                (
                    "broadcast_to_tokens",
                    Box::new(|| drop(broadcast_to_tokens(x, m))),
                ),
                (
                    "dpo_loss",
                    Box::new(|| drop(dpo_loss(&lp, &DpoConfig::new(0.1, DpoVariant::Ipo)))),
                ),
                (
                    "preferred_ft_loss",
                    Box::new(|| drop(preferred_ft_loss(x, Some(m)))),
                ),
                (
                    "unlikelihood_loss",
                    Box::new(|| drop(unlikelihood_loss(x, m, 0.5))),
                ),
            ];
            for (name, call) in calls {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&call)).is_err() {
                    failures.push(format!(
                        "{name}({:?} {:?}, {:?} {:?})",
                        x.size(),
                        x.kind(),
                        m.size(),
                        m.kind()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} panics:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn native_gae_refuses_inputs_that_need_a_gradient() {
    // The native pass cannot carry a gradient: it says so instead of returning a detached result (a
    // later `backward` would have nothing to follow). `gae` routes such inputs to the scan.
    let r = Tensor::randn([2, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let v = Tensor::randn([2, 5], (Kind::Double, Device::Cpu));
    let m = Tensor::ones([2, 5], (Kind::Bool, Device::Cpu));
    let cfg = GaeConfig {
        gamma: 1.0,
        lam: 0.95,
        masked_steps: MaskedSteps::Zero,
    };
    let e = gae_native(&r, &v, &m, &cfg).unwrap_err().to_string();
    assert!(e.contains("rewards") && e.contains("gae_scan"), "{e}");
    let e = gae_native(&v, &r, &m, &cfg).unwrap_err().to_string();
    assert!(e.contains("values"), "{e}");
    assert!(gae(&r, &v, &m, &cfg).unwrap().advantages.requires_grad());
}
