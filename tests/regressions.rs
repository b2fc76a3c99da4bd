//! Regression cases for bugs seen in other RLHF stacks. Each test names the bug class it guards.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::conventions::Conventions;
use rlhf_lab::dpo::*;
use rlhf_lab::experience::ppo_experience;
use rlhf_lab::kl::*;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::logprobs::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;
use rlhf_lab::RlhfError;
use tch::{Device, Kind, Tensor};

fn shaping(placement: ScorePlacement) -> RewardShapingConfig {
    RewardShapingConfig {
        kl_coef: 0.1,
        kl: KlConfig::new(KlEstimator::K1),
        score_placement: placement,
        score_clip: None,
        kl_on_score_slot: false,
        empty_rows: rlhf_lab::masked::EmptyRows::Error,
    }
}

#[test]
fn score_is_not_placed_on_a_pad_token_after_eos() {
    // Right-padded row of 3 response tokens (EOS is token 3) + 2 pads, and a left-padded row.
    let mask = t2(&[&[1., 1., 1., 0., 0.], &[0., 0., 1., 1., 1.]]);
    let lp = t2(&[&[-1., -2., -3., 9., 9.], &[9., 9., -1., -2., -3.]]);
    let scores = t1(&[10.0, 20.0]);
    let out = kl_shaped_rewards(
        &lp,
        &lp,
        &mask,
        &scores,
        &shaping(ScorePlacement::LastResponseToken),
    )
    .unwrap();
    assert_eq!(v1(&out.score_index.to_kind(Kind::Double)), vec![2.0, 4.0]);
    assert_eq!(
        v1(&out.rewards),
        vec![0., 0., 10., 0., 0., 0., 0., 0., 0., 20.]
    );
    // The returned GAE mask is exactly the response mask: no pad step receives reward.
    assert_eq!(v1(&out.mask.to_kind(Kind::Double)), v1(&mask));
}

#[test]
fn after_last_placement_extends_the_reward_mask_and_falls_back_when_full() {
    // TRL PPOv2 / DeepSpeed-Chat put the score one step after the last token; GAE must see that step,
    // and a row that fills T keeps the score on its last token.
    let mask = t2(&[&[1., 1., 0., 0.], &[1., 1., 1., 1.]]);
    let lp = t2(&[&[-1., -1., -1., -1.], &[-1., -1., -1., -1.]]);
    let out = kl_shaped_rewards(
        &lp,
        &lp,
        &mask,
        &t1(&[1.0, 2.0]),
        &shaping(ScorePlacement::AfterLastResponseToken),
    )
    .unwrap();
    assert_eq!(v1(&out.score_index.to_kind(Kind::Double)), vec![2.0, 3.0]);
    assert_eq!(
        v1(&out.mask.to_kind(Kind::Double)),
        vec![1., 1., 1., 0., 1., 1., 1., 1.]
    );
    let ar = gae(
        &out.rewards,
        &lp.zeros_like(),
        &out.mask,
        &GaeConfig {
            gamma: 1.0,
            lam: 1.0,
            masked_steps: MaskedSteps::Zero,
        },
    )
    .unwrap();
    assert_eq!(v1(&ar.advantages), vec![1., 1., 1., 0., 2., 2., 2., 2.]);
}

#[test]
fn pad_log_prob_sentinels_do_not_leak_into_entropy_or_kl() {
    // TRL fills pad log-probs with INVALID_LOGPROB = 1.0; garbage/NaN logits sit at pad positions.
    let logits = Tensor::randn([2, 4, 6], (Kind::Double, Device::Cpu));
    let mask = t2(&[&[1., 1., 0., 0.], &[1., 1., 1., 0.]]);
    let clean = entropy(&logits, &mask).unwrap();
    let _ = logits.get(0).get(3).fill_(f64::NAN);
    let _ = logits.get(0).get(2).fill_(1e30);
    let _ = logits.get(1).get(3).fill_(f64::NEG_INFINITY);
    let dirty = entropy(&logits, &mask).unwrap();
    assert_close(&dirty, &clean, 0.0);
    assert_eq!(
        s(&dirty
            .isfinite()
            .logical_not()
            .sum(Kind::Int64)
            .to_kind(Kind::Double)),
        0.0
    );
    let mean = masked_mean(&dirty, &mask, None, EmptyRows::Error).unwrap();
    assert!(s(&mean).is_finite());

    // Sentinel 1.0 at pad positions in both log-prob tensors: KL there is never computed.
    let lp = t2(&[&[-1., -2., 1.0, 1.0], &[-1., -2., -3., 1.0]]);
    let rlp = t2(&[&[-1.5, -2.5, 1.0, 1.0], &[-1.5, -2.5, -3.5, 1.0]]);
    let k3 = kl_per_token(&lp, &rlp, &mask, &KlConfig::new(KlEstimator::K3)).unwrap();
    assert_eq!(v1(&k3)[2], 0.0);
    // and token_log_probs gives exactly 0 (not a sentinel) at masked positions, for any label there.
    let labels = Tensor::from_slice(&[1i64, 2, -100, 99999, 0, 1, 2, -1]).reshape([2, 4]);
    let tl = token_log_probs(&logits, &labels, &mask).unwrap();
    assert_eq!(v1(&tl)[2], 0.0);
    assert_eq!(v1(&tl)[3], 0.0);
    assert_eq!(v1(&tl)[7], 0.0);
}

#[test]
fn nan_times_zero_at_masked_positions_never_reaches_outputs() {
    let mask = t2(&[&[1., 1., 0.], &[1., 0., 0.]]);
    let poison = |x: &[f64]| {
        let t = t2(&[&x[0..3], &x[3..6]]);
        let _ = t.get(0).get(2).fill_(f64::NAN);
        let _ = t.get(1).get(1).fill_(f64::INFINITY);
        let _ = t.get(1).get(2).fill_(f64::NEG_INFINITY);
        t
    };
    let clean = |x: &[f64]| t2(&[&x[0..3], &x[3..6]]);
    let a = [0.5, -1.0, 0.0, 2.0, 0.0, 0.0];
    let b = [-1.0, -0.5, 0.0, -2.0, 0.0, 0.0];
    let c = [0.3, 0.1, 0.0, -0.7, 0.0, 0.0];

    for mode in [MaskedSteps::Zero, MaskedSteps::Skip] {
        let cfg = GaeConfig {
            gamma: 0.9,
            lam: 0.95,
            masked_steps: mode,
        };
        let x = gae(&poison(&a), &poison(&b), &mask, &cfg).unwrap();
        let y = gae(&clean(&a), &clean(&b), &mask, &cfg).unwrap();
        assert_close(&x.advantages, &y.advantages, 0.0);
        assert_close(&x.returns, &y.returns, 0.0);
    }
    let pc = PolicyLossConfig::default();
    let x = policy_loss(&poison(&b), &poison(&c), &poison(&a), &mask, &pc).unwrap();
    let y = policy_loss(&clean(&b), &clean(&c), &clean(&a), &mask, &pc).unwrap();
    assert_close(&x.loss, &y.loss, 0.0);
    assert_close(&x.per_token, &y.per_token, 0.0);
    // Gradients stay finite too (a NaN at a masked position must not poison the backward pass).
    let lp = poison(&b).set_requires_grad(true);
    let out = policy_loss(&lp, &poison(&c), &poison(&a), &mask, &pc).unwrap();
    let g = Tensor::run_backward(&[&out.loss], &[&lp], false, false)
        .pop()
        .unwrap();
    assert!(
        s(&g.isfinite().all().to_kind(Kind::Double)) == 1.0,
        "gradient {:?}",
        v1(&g)
    );
    let v = value_loss(
        &poison(&a),
        &poison(&b),
        &poison(&c),
        &mask,
        &ValueLossConfig::default(),
    )
    .unwrap();
    assert!(s(&v.loss).is_finite());
    let w = masked_whiten(&poison(&a), &mask, WhitenConfig::default()).unwrap();
    assert!(s(&w.isfinite().all().to_kind(Kind::Double)) == 1.0);
}

#[test]
fn ipo_uses_per_token_mean_log_probs_not_sums() {
    // Same per-token log-probs, different lengths: TRL's IPO (mean) sees no preference, a summed IPO
    // (OpenRLHF preset) sees a large one. The default must be the mean.
    let pw = t1(&[-10.0]); // 10 tokens × −1
    let pl = t1(&[-2.0]); // 2 tokens × −1
    let rw = t1(&[-20.0]); // ref: 10 tokens × −2
    let rl = t1(&[-4.0]); // ref: 2 tokens × −2
    let (nw, nl) = (t1(&[10.0]), t1(&[2.0]));
    let lp = PairLogps {
        policy_chosen: &pw,
        policy_rejected: &pl,
        ref_chosen: &rw,
        ref_rejected: &rl,
        chosen_lengths: Some(&nw),
        rejected_lengths: Some(&nl),
    };
    let beta = 0.5;
    let mean = dpo_loss(&lp, &DpoConfig::new(beta, DpoVariant::Ipo)).unwrap();
    // h = (−1 − −1) − (−2 − −2) = 0 → loss = (0 − 1/(2β))² = 1
    assert!((s(&mean.loss) - 1.0).abs() < 1e-12);
    let summed = dpo_loss(
        &lp,
        &DpoConfig {
            ipo_length_normalize: false,
            ..DpoConfig::new(beta, DpoVariant::Ipo)
        },
    )
    .unwrap();
    // h = (−10 + 2) − (−20 + 4) = 8 → (8 − 1)² = 49
    assert!((s(&summed.loss) - 49.0).abs() < 1e-12);
    assert!(Conventions::preset("trl").unwrap().ipo_length_normalize);
    assert!(
        !Conventions::preset("openrlhf")
            .unwrap()
            .ipo_length_normalize
    );
    // Normalised IPO without token counts is an error, not a silent sum.
    let no_len = PairLogps {
        chosen_lengths: None,
        rejected_lengths: None,
        ..lp
    };
    assert!(matches!(
        dpo_loss(&no_len, &DpoConfig::new(beta, DpoVariant::Ipo)),
        Err(RlhfError::Invalid { .. })
    ));
}

#[test]
fn rows_with_zero_response_tokens() {
    let mask = t2(&[&[1., 1., 0.], &[0., 0., 0.]]);
    let x = t2(&[&[1., 2., 3.], &[4., 5., 6.]]);
    // Error policy (TRL/DS/OpenRLHF would return NaN): a typed error naming the row.
    match masked_mean(&x, &mask, Some(1), EmptyRows::Error) {
        Err(RlhfError::EmptyRows { rows, .. }) => assert_eq!(rows, vec![1]),
        other => panic!("expected EmptyRows, got {other:?}"),
    }
    // Ignore policy (verl): 0 for the empty row, other rows untouched; never NaN.
    assert_eq!(
        v1(&masked_mean(&x, &mask, Some(1), EmptyRows::Ignore).unwrap()),
        vec![1.5, 0.0]
    );
    // Sequence-mean aggregation leaves the empty row out of the mean instead of counting it as 0.
    let l = aggregate(&x, &mask, LossAgg::SeqMeanTokenMean, EmptyRows::Ignore).unwrap();
    assert_eq!(s(&l), 1.5);
    assert!(matches!(
        aggregate(&x, &mask, LossAgg::SeqMeanTokenSum, EmptyRows::Error),
        Err(RlhfError::EmptyRows { .. })
    ));
    // A batch with no token at all.
    let none = mask.zeros_like();
    assert!(matches!(
        masked_mean(&x, &none, None, EmptyRows::Error),
        Err(RlhfError::EmptyRows { .. })
    ));
    assert_eq!(
        s(&masked_mean(&x, &none, None, EmptyRows::Ignore).unwrap()),
        0.0
    );
    // Rewards cannot place a score on a row without tokens.
    let sc = t1(&[1.0, 1.0]);
    assert!(matches!(
        kl_shaped_rewards(&x, &x, &mask, &sc, &shaping(ScorePlacement::LastResponseToken)),
        Err(RlhfError::EmptyRows { rows, .. }) if rows == vec![1]
    ));
    // GAE on an empty row is well defined (all zeros) and does not disturb the other row.
    let ar = gae(
        &x,
        &x,
        &mask,
        &GaeConfig {
            gamma: 1.0,
            lam: 1.0,
            masked_steps: MaskedSteps::Zero,
        },
    )
    .unwrap();
    assert_eq!(v1(&ar.advantages)[3..].to_vec(), vec![0.0, 0.0, 0.0]);
    // PPO loss: trl conventions raise, verl conventions ignore the row.
    let trl = Conventions::preset("trl").unwrap().policy_loss_config();
    let verl = Conventions::preset("verl").unwrap().policy_loss_config();
    let seq = PolicyLossConfig {
        agg: LossAgg::SeqMeanTokenMean,
        ..trl
    };
    assert!(policy_loss(&x, &x, &x, &mask, &seq).is_err());
    let ok = policy_loss(
        &x,
        &x,
        &x,
        &mask,
        &PolicyLossConfig {
            agg: LossAgg::SeqMeanTokenMean,
            ..verl
        },
    )
    .unwrap();
    assert!(s(&ok.loss).is_finite());
}

#[test]
fn masked_values_do_not_leak_into_gae() {
    // mask [1,1,0], values [0,0,100], rewards [0,1,0]: the 100 must not be bootstrapped into step 2.
    let mask = t2(&[&[1., 1., 0.]]);
    let values = t2(&[&[0., 0., 100.]]);
    let rewards = t2(&[&[0., 1., 0.]]);
    for mode in [MaskedSteps::Zero, MaskedSteps::Skip] {
        for lam in [0.0, 0.95, 1.0] {
            let cfg = GaeConfig {
                gamma: 1.0,
                lam,
                masked_steps: mode,
            };
            for out in [
                gae(&rewards, &values, &mask, &cfg).unwrap(),
                gae_loop(&rewards, &values, &mask, &cfg).unwrap(),
            ] {
                let adv = v1(&out.advantages);
                assert_eq!(
                    adv[1], 1.0,
                    "{mode:?} λ={lam}: δ_2 must be r_2 − V_2 = 1, got {adv:?}"
                );
                assert_eq!(adv[0], lam, "{mode:?} λ={lam}: A_1 = δ_1 + λ·A_2 = 0 + λ");
                assert_eq!(adv[2], 0.0);
            }
        }
    }
    let td_out = td(&rewards, &values, &mask, 1.0, MaskedSteps::Zero).unwrap();
    assert_eq!(v1(&td_out.targets), vec![0.0, 1.0, 0.0]);
}

#[test]
fn left_padding_equals_right_padding() {
    // The same response, left-padded and right-padded, gets the same rewards, advantages and losses
    // (per-row results are indexed by the mask, not by absolute position).
    let right = t2(&[&[-1.0, -2.0, -0.5, 0.0, 0.0]]);
    let right_ref = t2(&[&[-1.2, -1.8, -0.7, 0.0, 0.0]]);
    let right_v = t2(&[&[0.1, 0.4, -0.3, 0.0, 0.0]]);
    let mr = t2(&[&[1., 1., 1., 0., 0.]]);
    let roll = |x: &Tensor| x.roll(&[2i64][..], &[1i64][..]);
    for preset in ["trl", "deepspeed-chat", "openrlhf", "verl", "rlhf-lab"] {
        let mut conv = Conventions::preset(preset).unwrap();
        conv.whiten_advantages = false;
        conv.score_placement = ScorePlacement::LastResponseToken;
        let a = ppo_experience(&right, &right_ref, &right_v, &t1(&[1.5]), &mr, &conv).unwrap();
        let b = ppo_experience(
            &roll(&right),
            &roll(&right_ref),
            &roll(&right_v),
            &t1(&[1.5]),
            &roll(&mr),
            &conv,
        )
        .unwrap();
        assert_close(&roll(&a.advantages), &b.advantages, 1e-12);
        assert_close(&roll(&a.returns), &b.returns, 1e-12);
        assert_close(&roll(&a.rewards), &b.rewards, 1e-12);
    }
}

#[test]
fn half_precision_logits_are_upcast_for_log_softmax() {
    // bf16 log-softmax over a large vocabulary loses digits; the library computes it in f32.
    tch::manual_seed(0);
    let logits = Tensor::randn([1, 3, 5000], (Kind::Float, Device::Cpu)) * 5.0;
    let labels = Tensor::from_slice(&[1i64, 2, 3]).unsqueeze(0);
    let m = Tensor::ones([1, 3], (Kind::Float, Device::Cpu));
    let exact = token_log_probs(&logits.to_kind(Kind::Double), &labels, &m).unwrap();
    let bf = token_log_probs(&logits.to_kind(Kind::BFloat16), &labels, &m).unwrap();
    assert_eq!(bf.kind(), Kind::Float);
    // error only from rounding the logits to bf16, not from a bf16 softmax
    assert!(
        max_abs_diff(&bf, &exact) < 0.1,
        "{}",
        max_abs_diff(&bf, &exact)
    );
}

#[test]
fn half_precision_reductions_do_not_overflow_the_token_count() {
    // 256 × 1024 = 262,144 tokens > f16 max (65,504): counting in f16 would give inf and a mean of 0.
    let x = Tensor::full([256, 1024], 0.5, (Kind::Half, Device::Cpu));
    let m = Tensor::ones([256, 1024], (Kind::Bool, Device::Cpu));
    let mean = masked_mean(&x, &m, None, EmptyRows::Error).unwrap();
    assert_eq!(mean.kind(), Kind::Float);
    assert_eq!(s(&mean), 0.5);
    let loss = aggregate(&x, &m, LossAgg::TokenMean, EmptyRows::Error).unwrap();
    assert_eq!(s(&loss), 0.5);
    let pg = policy_loss(&x, &x, &x, &m, &PolicyLossConfig::default()).unwrap();
    assert_eq!(s(&pg.loss), -0.5);
    let w = masked_whiten(
        &(Tensor::arange(262_144, (Kind::Float, Device::Cpu)).reshape([256, 1024]) / 262_144.0)
            .to_kind(Kind::Half),
        &m,
        WhitenConfig::default(),
    )
    .unwrap();
    assert!(s(&masked_var(&w, &m, true).unwrap()) > 0.99);
}

#[test]
fn losses_never_modify_their_inputs() {
    // tch's compound assignment operators work in place on shared storage; no primitive may use them
    // on a caller's tensor (IPO normalisation is the tempting spot).
    let pw = t1(&[-10.0, -4.0]);
    let pl = t1(&[-2.0, -6.0]);
    let rw = t1(&[-20.0, -5.0]);
    let rl = t1(&[-4.0, -7.0]);
    let (nw, nl) = (t1(&[10.0, 2.0]), t1(&[2.0, 3.0]));
    let before: Vec<Vec<f64>> = [&pw, &pl, &rw, &rl].iter().map(|t| v1(t)).collect();
    let lp = PairLogps {
        policy_chosen: &pw,
        policy_rejected: &pl,
        ref_chosen: &rw,
        ref_rejected: &rl,
        chosen_lengths: Some(&nw),
        rejected_lengths: Some(&nl),
    };
    for variant in [DpoVariant::Ipo, DpoVariant::Sigmoid, DpoVariant::Hinge] {
        dpo_loss(&lp, &DpoConfig::new(0.5, variant)).unwrap();
    }
    let after: Vec<Vec<f64>> = [&pw, &pl, &rw, &rl].iter().map(|t| v1(t)).collect();
    assert_eq!(before, after);
    let m = t1(&[0.5, 0.5]);
    let c0 = v1(&pw);
    rlhf_lab::reward_model::pairwise_loss(&pw, &pl, Some(&m), 0.1).unwrap();
    assert_eq!(v1(&pw), c0);
}
