//! Finite-difference gradient checks in f64 for every loss (and the differentiable transforms they are
//! built from): autograd ∂f/∂x against central differences (h = 1e-6), elementwise.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::dpo::*;
use rlhf_lab::kl::*;
use rlhf_lab::logprobs::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;
use rlhf_lab::reward_model::*;
use tch::{Device, Kind, Tensor};

fn randn(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

/// Check autograd against central differences for scalar `f` at `x`.
#[track_caller]
fn gradcheck(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let xg = x.detach().copy().set_requires_grad(true);
    let y = f(&xg);
    assert_eq!(y.numel(), 1, "{name}: f must return a scalar");
    let g = Tensor::run_backward(&[&y], &[&xg], false, false)
        .pop()
        .unwrap();
    let data = v1(x);
    let shape = x.size();
    let h = 1e-6;
    let eval = |d: &[f64]| s(&f(&Tensor::from_slice(d).reshape(&shape)));
    let analytic = v1(&g);
    for i in 0..data.len() {
        let (mut p, mut m) = (data.clone(), data.clone());
        p[i] += h;
        m[i] -= h;
        let numeric = (eval(&p) - eval(&m)) / (2.0 * h);
        let err = (analytic[i] - numeric).abs();
        assert!(
            err <= 1e-6 * numeric.abs().max(1.0),
            "{name}: ∂f/∂x[{i}] autograd {} vs finite difference {numeric} (err {err:e})",
            analytic[i]
        );
    }
}

fn mask() -> Tensor {
    t2(&[&[1., 1., 1., 0.], &[0., 1., 1., 1.], &[1., 0., 1., 1.]])
}

#[test]
fn grad_token_log_probs_and_entropy() {
    let logits = randn(&[2, 3, 5], 1);
    let labels = Tensor::from_slice(&[0i64, 4, 2, 1, -100, 3]).reshape([2, 3]);
    let m = t2(&[&[1., 1., 1.], &[1., 0., 1.]]);
    let w = randn(&[2, 3], 2);
    gradcheck("token_log_probs", &logits, |z| {
        (token_log_probs(z, &labels, &m).unwrap() * &w).sum(Kind::Double)
    });
    gradcheck("entropy", &logits, |z| {
        (entropy(z, &m).unwrap() * &w).sum(Kind::Double)
    });
}

#[test]
fn grad_kl_estimators() {
    let lp = randn(&[3, 4], 3) * 0.5 - 2.0;
    let rlp = randn(&[3, 4], 4) * 0.5 - 2.0;
    let w = randn(&[3, 4], 5);
    for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        gradcheck(&format!("kl {est:?}"), &lp, |x| {
            (kl_per_token(x, &rlp, &mask(), &KlConfig::new(est)).unwrap() * &w).sum(Kind::Double)
        });
    }
}

#[test]
fn grad_policy_loss_all_aggregations_and_dual_clip() {
    let old = randn(&[3, 4], 6) * 0.3 - 1.0;
    let lp = &old + randn(&[3, 4], 7) * 0.3; // ratios spread across the clip boundaries
    let adv = randn(&[3, 4], 8);
    for agg in [
        LossAgg::TokenMean,
        LossAgg::SeqMeanTokenMean,
        LossAgg::SeqMeanTokenSum,
    ] {
        for dual in [None, Some(3.0)] {
            let cfg = PolicyLossConfig {
                agg,
                dual_clip: dual,
                clip_high: 0.28,
                ..Default::default()
            };
            gradcheck(&format!("policy_loss {agg:?} dual={dual:?}"), &lp, |x| {
                policy_loss(x, &old, &adv, &mask(), &cfg).unwrap().loss
            });
        }
    }
}

#[test]
fn grad_losses_under_stack_normalisations() {
    // verl `seq-mean-token-sum-norm`, global-batch normalisation, the stacks' ε in the denominators,
    // OpenRLHF's ±20 log-ratio clamp with raw approx-KL.
    let old = randn(&[3, 4], 21) * 0.3 - 1.0;
    let lp = &old + randn(&[3, 4], 22) * 0.3;
    let adv = randn(&[3, 4], 23);
    let ret = randn(&[3, 4], 24);
    let cases = [
        (
            LossAgg::SeqMeanTokenSumNorm,
            LossNorm {
                loss_scale_factor: Some(7.0),
                ..Default::default()
            },
        ),
        (
            LossAgg::TokenMean,
            LossNorm {
                dp_size: 4,
                batch_num_tokens: Some(40),
                ..Default::default()
            },
        ),
        (
            LossAgg::SeqMeanTokenMean,
            LossNorm {
                dp_size: 2,
                global_batch_size: Some(8),
                seq_mean_eps: 1e-8,
                ..Default::default()
            },
        ),
        (
            LossAgg::TokenMean,
            LossNorm {
                mean_eps: 1e-8,
                ..Default::default()
            },
        ),
    ];
    for (agg, norm) in cases {
        let pc = PolicyLossConfig {
            agg,
            norm,
            log_ratio_clamp: Some(20.0),
            approx_kl_unclamped: true,
            ..Default::default()
        };
        gradcheck(&format!("policy_loss {agg:?} {norm:?}"), &lp, |x| {
            policy_loss(x, &old, &adv, &mask(), &pc).unwrap().loss
        });
        let vc = ValueLossConfig {
            agg,
            norm,
            ..Default::default()
        };
        gradcheck(&format!("value_loss {agg:?} {norm:?}"), &lp, |x| {
            value_loss(x, &old, &ret, &mask(), &vc).unwrap().loss
        });
    }
}

#[test]
fn grad_value_loss() {
    let old = randn(&[3, 4], 9);
    let v = &old + randn(&[3, 4], 10) * 0.3;
    let ret = randn(&[3, 4], 11);
    for clip in [None, Some(0.2)] {
        let cfg = ValueLossConfig {
            clip,
            ..Default::default()
        };
        gradcheck(&format!("value_loss clip={clip:?}"), &v, |x| {
            value_loss(x, &old, &ret, &mask(), &cfg).unwrap().loss
        });
    }
}

#[test]
fn grad_gae_returns_and_whitening() {
    let r = randn(&[3, 4], 12);
    let v = randn(&[3, 4], 13);
    let w = randn(&[3, 4], 14);
    for mode in [MaskedSteps::Zero, MaskedSteps::Skip] {
        let cfg = GaeConfig {
            gamma: 0.9,
            lam: 0.8,
            masked_steps: mode,
        };
        gradcheck("gae wrt values", &v, |x| {
            (gae(&r, x, &mask(), &cfg).unwrap().advantages * &w).sum(Kind::Double)
        });
        gradcheck("gae wrt rewards", &r, |x| {
            (gae(x, &v, &mask(), &cfg).unwrap().returns * &w).sum(Kind::Double)
        });
    }
    gradcheck("whiten", &v, |x| {
        (masked_whiten(x, &mask(), WhitenConfig::default()).unwrap() * &w).sum(Kind::Double)
    });
}

#[test]
fn grad_bradley_terry() {
    let c = randn(&[5], 15);
    let r = randn(&[5], 16);
    let margin = randn(&[5], 17).abs();
    gradcheck("pairwise wrt chosen", &c, |x| {
        pairwise_loss(x, &r, Some(&margin), 0.01).unwrap().loss
    });
    gradcheck("pairwise wrt rejected", &r, |x| {
        pairwise_loss(&c, x, Some(&margin), 0.01).unwrap().loss
    });
    gradcheck("kwise", &randn(&[3, 4], 18), |x| kwise_loss(x).unwrap());
}

#[test]
fn grad_dpo_family() {
    let pw = randn(&[4], 19) - 20.0;
    let pl = randn(&[4], 20) - 22.0;
    let rw = randn(&[4], 21) - 20.0;
    let rl = randn(&[4], 22) - 22.0;
    let nw = t1(&[5.0, 7.0, 3.0, 9.0]);
    let nl = t1(&[6.0, 2.0, 8.0, 4.0]);
    let variants = [
        DpoConfig {
            label_smoothing: 0.0,
            ..DpoConfig::new(0.1, DpoVariant::Sigmoid)
        },
        DpoConfig {
            label_smoothing: 0.1,
            ..DpoConfig::new(0.1, DpoVariant::Sigmoid)
        },
        DpoConfig {
            label_smoothing: 0.1,
            ..DpoConfig::new(0.1, DpoVariant::Robust)
        },
        DpoConfig::new(0.1, DpoVariant::Ipo),
        DpoConfig {
            ipo_length_normalize: false,
            ..DpoConfig::new(0.1, DpoVariant::Ipo)
        },
        DpoConfig::new(0.5, DpoVariant::Hinge),
    ];
    for cfg in variants {
        gradcheck(&format!("dpo {cfg:?} wrt chosen"), &pw, |x| {
            let lp = PairLogps {
                policy_chosen: x,
                policy_rejected: &pl,
                ref_chosen: &rw,
                ref_rejected: &rl,
                chosen_lengths: Some(&nw),
                rejected_lengths: Some(&nl),
            };
            dpo_loss(&lp, &cfg).unwrap().loss
        });
        gradcheck(&format!("dpo {cfg:?} wrt rejected"), &pl, |x| {
            let lp = PairLogps {
                policy_chosen: &pw,
                policy_rejected: x,
                ref_chosen: &rw,
                ref_rejected: &rl,
                chosen_lengths: Some(&nw),
                rejected_lengths: Some(&nl),
            };
            dpo_loss(&lp, &cfg).unwrap().loss
        });
    }
    gradcheck("preferred_ft", &pw, |x| {
        preferred_ft_loss(x, Some(&nw)).unwrap()
    });
    // Unlikelihood near π(y_l) ≈ 1 exercises the log1mexp branch around −ln 2.
    let pl_short = t1(&[-0.1, -0.5, -0.9, -3.0]);
    gradcheck("unlikelihood wrt rejected", &pl_short, |x| {
        unlikelihood_loss(&pw, x, 0.7).unwrap()
    });
    gradcheck("unlikelihood wrt chosen", &pw, |x| {
        unlikelihood_loss(x, &pl_short, 0.7).unwrap()
    });
}

#[test]
fn grad_group_baselines() {
    let sc = randn(&[2, 4], 23);
    let w = randn(&[2, 4], 24);
    gradcheck("grpo", &sc, |x| {
        (grpo_advantages(x, &GrpoConfig::default()).unwrap() * &w).sum(Kind::Double)
    });
    gradcheck("rloo", &sc, |x| {
        (rloo_advantages(x).unwrap() * &w).sum(Kind::Double)
    });
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    // The checker itself has teeth: a function whose backward differs from its forward fails it.
    let x = randn(&[3], 25);
    let result = std::panic::catch_unwind(|| {
        gradcheck("detached half", &x, |z| {
            (z.detach() * 0.5 + z * 0.5).square().sum(Kind::Double)
        });
    });
    assert!(result.is_err());
}

#[test]
fn grad_kl_full_vocab() {
    let logits = randn(&[2, 3, 4], 20);
    let ref_logits = randn(&[2, 3, 4], 21);
    let m = t2(&[&[1., 1., 0.], &[0., 1., 1.]]);
    let w = randn(&[2, 3], 22);
    gradcheck("kl_full_vocab ∂/∂logits", &logits, |z| {
        (kl_full_vocab(z, &ref_logits, &m).unwrap() * &w).sum(Kind::Double)
    });
    gradcheck("kl_full_vocab ∂/∂ref_logits", &ref_logits, |z| {
        (kl_full_vocab(&logits, z, &m).unwrap() * &w).sum(Kind::Double)
    });
}
