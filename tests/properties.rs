//! proptest properties: real invariants of the numerics, on random shapes, values and masks (f64).

mod common;
use common::*;
use proptest::prelude::*;
use rlhf_lab::advantages::*;
use rlhf_lab::dpo::*;
use rlhf_lab::kl::*;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;
use rlhf_lab::reward_model::*;
use tch::{Kind, Tensor};

/// A (B, T) batch: rewards, values, log-probs, and a mask with at least one token per row.
#[derive(Debug, Clone)]
struct Batch {
    b: usize,
    t: usize,
    x: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
    mask: Vec<bool>,
}

impl Batch {
    fn tensor(&self, v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
            .reshape([self.b as i64, self.t as i64])
            .to_kind(Kind::Double)
    }
    fn x(&self) -> Tensor {
        self.tensor(&self.x)
    }
    fn y(&self) -> Tensor {
        self.tensor(&self.y)
    }
    fn z(&self) -> Tensor {
        self.tensor(&self.z)
    }
    fn m(&self) -> Tensor {
        Tensor::from_slice(&self.mask).reshape([self.b as i64, self.t as i64])
    }
}

fn batch(max_b: usize, max_t: usize) -> impl Strategy<Value = Batch> {
    (1..=max_b, 1..=max_t).prop_flat_map(|(b, t)| {
        let n = b * t;
        (
            prop::collection::vec(-3.0f64..3.0, n),
            prop::collection::vec(-3.0f64..3.0, n),
            prop::collection::vec(-3.0f64..3.0, n),
            prop::collection::vec(prop::bool::weighted(0.75), n),
        )
            .prop_map(move |(x, y, z, mut mask)| {
                for r in 0..b {
                    mask[r * t] |= !mask[r * t..(r + 1) * t].iter().any(|m| *m);
                }
                Batch {
                    b,
                    t,
                    x,
                    y,
                    z,
                    mask,
                }
            })
    })
}

fn modes() -> impl Strategy<Value = MaskedSteps> {
    prop_oneof![Just(MaskedSteps::Zero), Just(MaskedSteps::Skip)]
}

fn cfg(gamma: f64, lam: f64, masked_steps: MaskedSteps) -> GaeConfig {
    GaeConfig {
        gamma,
        lam,
        masked_steps,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn gae_lambda_one_is_mc_returns_minus_values(bt in batch(4, 12), gamma in 0.0f64..=1.0, mode in modes()) {
        let ar = gae(&bt.x(), &bt.y(), &bt.m(), &cfg(gamma, 1.0, mode)).unwrap();
        let mc = discounted_returns(&bt.x(), &bt.m(), gamma, mode).unwrap();
        let expected = zero_masked(&(&mc - bt.y()), &bt.m());
        assert_close(&ar.advantages, &expected, 1e-10);
        assert_close(&ar.returns, &mc, 1e-10);
    }

    #[test]
    fn gae_lambda_zero_is_td_error(bt in batch(4, 12), gamma in 0.0f64..=1.0, mode in modes()) {
        let ar = gae(&bt.x(), &bt.y(), &bt.m(), &cfg(gamma, 0.0, mode)).unwrap();
        let tdo = td(&bt.x(), &bt.y(), &bt.m(), gamma, mode).unwrap();
        assert_close(&ar.advantages, &tdo.deltas, 1e-12);
        assert_close(&ar.returns, &tdo.targets, 1e-12);
    }

    #[test]
    fn loop_equals_vectorised(bt in batch(5, 40), gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0, mode in modes()) {
        let a = gae_scan(&bt.x(), &bt.y(), &bt.m(), &cfg(gamma, lam, mode)).unwrap();
        let b = gae_loop(&bt.x(), &bt.y(), &bt.m(), &cfg(gamma, lam, mode)).unwrap();
        assert_close(&a.advantages, &b.advantages, 1e-10);
        assert_close(&a.returns, &b.returns, 1e-10);
        let r1 = discounted_returns(&bt.x(), &bt.m(), gamma, mode).unwrap();
        let r2 = discounted_returns_loop(&bt.x(), &bt.m(), gamma, mode).unwrap();
        assert_close(&r1, &r2, 1e-10);
    }

    #[test]
    fn loop_equals_vectorised_f32(bt in batch(3, 64), gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0, mode in modes()) {
        let (x, y) = (bt.x().to_kind(Kind::Float), bt.y().to_kind(Kind::Float));
        let a = gae_scan(&x, &y, &bt.m(), &cfg(gamma, lam, mode)).unwrap();
        let b = gae_loop(&x, &y, &bt.m(), &cfg(gamma, lam, mode)).unwrap();
        prop_assert_eq!(a.advantages.kind(), Kind::Float);
        assert_close(&a.advantages, &b.advantages, 1e-4);
    }

    #[test]
    fn native_gae_equals_the_loop_bit_for_bit(bt in batch(5, 40), gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0, mode in modes()) {
        // The CPU fast path (what `gae` runs on the host) performs the loop's operations in the loop's
        // order and precision: identical bits in f64 and f32 (signed zeros aside: `+ 0.0` folds them),
        // also from non-contiguous inputs; and it agrees with the scan.
        for kind in [Kind::Double, Kind::Float] {
            let (x, y) = (bt.x().to_kind(kind), bt.y().to_kind(kind));
            let c = cfg(gamma, lam, mode);
            let native = gae_native(&x, &y, &bt.m(), &c).unwrap();
            let dispatched = gae(&x, &y, &bt.m(), &c).unwrap();
            let reference = gae_loop(&x, &y, &bt.m(), &c).unwrap();
            let same = |a: &Tensor, b: &Tensor| a.kind() == b.kind() && (a + 0.0).equal(&(b + 0.0));
            prop_assert!(same(&native.advantages, &reference.advantages), "{kind:?} advantages");
            prop_assert!(same(&native.returns, &reference.returns), "{kind:?} returns");
            prop_assert!(same(&dispatched.advantages, &native.advantages));
            let strided = |t: &Tensor| t.transpose(0, 1).contiguous().transpose(0, 1);
            let from_views = gae_native(&strided(&x), &strided(&y), &strided(&bt.m()), &c).unwrap();
            prop_assert!(same(&from_views.advantages, &native.advantages));
            let scan = gae_scan(&x, &y, &bt.m(), &c).unwrap();
            let tol = if kind == Kind::Double { 1e-10 } else { 1e-4 };
            assert_close(&native.advantages.to_kind(Kind::Double), &scan.advantages.to_kind(Kind::Double), tol);
        }
    }

    #[test]
    fn skip_mode_equals_gae_on_the_compacted_row(bt in batch(1, 16), gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0) {
        // verl's skipping makes masked steps transparent: dropping them changes nothing.
        let full = gae(&bt.x(), &bt.y(), &bt.m(), &cfg(gamma, lam, MaskedSteps::Skip)).unwrap();
        let keep: Vec<usize> = (0..bt.t).filter(|i| bt.mask[*i]).collect();
        let pick = |v: &[f64]| keep.iter().map(|i| v[*i]).collect::<Vec<_>>();
        let (xr, yr) = (t1(&pick(&bt.x)).unsqueeze(0), t1(&pick(&bt.y)).unsqueeze(0));
        let ones = xr.ones_like();
        let compact = gae(&xr, &yr, &ones, &cfg(gamma, lam, MaskedSteps::Zero)).unwrap();
        let got = pick(&v1(&full.advantages));
        assert_close(&t1(&got), &compact.advantages.flatten(0, -1), 1e-10);
    }

    #[test]
    fn trailing_padding_modes_agree(bt in batch(3, 12), pad in 0usize..5, gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0) {
        // With only trailing padding, counting masked steps as zero and skipping them agree.
        let t = bt.t + pad;
        let m: Vec<bool> = (0..bt.b).flat_map(|_| (0..t).map(move |i| i < t - pad)).collect();
        let mk = |v: &[f64]| {
            let mut out = vec![0.0; bt.b * t];
            for r in 0..bt.b { for i in 0..bt.t { out[r * t + i] = v[r * bt.t + i]; } }
            Tensor::from_slice(&out).reshape([bt.b as i64, t as i64])
        };
        let mask = Tensor::from_slice(&m).reshape([bt.b as i64, t as i64]);
        let a = gae(&mk(&bt.x), &mk(&bt.y), &mask, &cfg(gamma, lam, MaskedSteps::Zero)).unwrap();
        let b = gae(&mk(&bt.x), &mk(&bt.y), &mask, &cfg(gamma, lam, MaskedSteps::Skip)).unwrap();
        assert_close(&a.advantages, &b.advantages, 1e-10);
    }

    #[test]
    fn masked_junk_changes_no_unmasked_output(bt in batch(3, 10), junk in prop::collection::vec(prop_oneof![-1e6f64..1e6, Just(f64::NAN), Just(f64::INFINITY)], 3 * 6), extra in 1usize..6, mode in modes()) {
        // Append `extra` masked steps of junk (even NaN/Inf) to every row.
        let t2 = bt.t + extra;
        let grow = |v: &[f64]| {
            let mut out = vec![0.0; bt.b * t2];
            for r in 0..bt.b {
                for i in 0..t2 { out[r * t2 + i] = if i < bt.t { v[r * bt.t + i] } else { junk[(r * extra + i - bt.t) % junk.len()] }; }
            }
            Tensor::from_slice(&out).reshape([bt.b as i64, t2 as i64])
        };
        let (bt_t, bmask) = (bt.t, &bt.mask);
        let m2: Vec<bool> = (0..bt.b).flat_map(|r| (0..t2).map(move |i| i < bt_t && bmask[r * bt_t + i])).collect();
        let m2 = Tensor::from_slice(&m2).reshape([bt.b as i64, t2 as i64]);
        let head = |x: &Tensor| x.narrow(1, 0, bt.t as i64);

        let c = cfg(0.95, 0.9, mode);
        let a = gae(&bt.x(), &bt.y(), &bt.m(), &c).unwrap();
        let b = gae(&grow(&bt.x), &grow(&bt.y), &m2, &c).unwrap();
        assert_close(&head(&b.advantages), &a.advantages, 1e-10);
        assert_close(&b.advantages.narrow(1, bt.t as i64, extra as i64), &Tensor::zeros([bt.b as i64, extra as i64], (Kind::Double, tch::Device::Cpu)), 0.0);

        let pc = PolicyLossConfig::default();
        let p1 = policy_loss(&bt.x(), &bt.y(), &bt.z(), &bt.m(), &pc).unwrap();
        let p2 = policy_loss(&grow(&bt.x), &grow(&bt.y), &grow(&bt.z), &m2, &pc).unwrap();
        assert_close(&p1.loss, &p2.loss, 1e-12);

        let rc = RewardShapingConfig { kl_coef: 0.1, kl: KlConfig::new(KlEstimator::K3), score_placement: ScorePlacement::LastResponseToken, score_clip: None, kl_on_score_slot: false, empty_rows: rlhf_lab::masked::EmptyRows::Error };
        let scores = Tensor::ones([bt.b as i64], (Kind::Double, tch::Device::Cpu));
        let r1 = kl_shaped_rewards(&bt.x(), &bt.y(), &bt.m(), &scores, &rc).unwrap();
        let r2 = kl_shaped_rewards(&grow(&bt.x), &grow(&bt.y), &m2, &scores, &rc).unwrap();
        assert_close(&head(&r2.rewards), &r1.rewards, 1e-12);

        let w1 = masked_whiten(&bt.x(), &bt.m(), WhitenConfig { unbiased: false, ..Default::default() }).unwrap();
        let w2 = masked_whiten(&grow(&bt.x), &m2, WhitenConfig { unbiased: false, ..Default::default() }).unwrap();
        assert_close(&head(&w2), &w1, 1e-12);
    }

    #[test]
    fn batch_permutation_equivariance(bt in batch(5, 8), seed in 0u64..1000, mode in modes()) {
        let b = bt.b as i64;
        tch::manual_seed(seed as i64);
        let perm = Tensor::randperm(b, (Kind::Int64, tch::Device::Cpu));
        let p = |x: &Tensor| x.index_select(0, &perm);
        let c = cfg(0.9, 0.95, mode);
        let a = gae(&bt.x(), &bt.y(), &bt.m(), &c).unwrap();
        let ap = gae(&p(&bt.x()), &p(&bt.y()), &p(&bt.m()), &c).unwrap();
        assert_close(&ap.advantages, &p(&a.advantages), 1e-12);
        // Scalar losses are permutation invariant, for every aggregation.
        for agg in [LossAgg::TokenMean, LossAgg::SeqMeanTokenMean, LossAgg::SeqMeanTokenSum] {
            let pc = PolicyLossConfig { agg, ..Default::default() };
            let l = policy_loss(&bt.x(), &bt.y(), &bt.z(), &bt.m(), &pc).unwrap().loss;
            let lp = policy_loss(&p(&bt.x()), &p(&bt.y()), &p(&bt.z()), &p(&bt.m()), &pc).unwrap().loss;
            assert_close(&l, &lp, 1e-12);
        }
        let rc = RewardShapingConfig { kl_coef: 0.05, kl: KlConfig::new(KlEstimator::K1), score_placement: ScorePlacement::AfterLastResponseToken, score_clip: Some(1.0), kl_on_score_slot: false, empty_rows: rlhf_lab::masked::EmptyRows::Error };
        let scores = bt.z().select(1, 0);
        let r = kl_shaped_rewards(&bt.x(), &bt.y(), &bt.m(), &scores, &rc).unwrap();
        let rp = kl_shaped_rewards(&p(&bt.x()), &p(&bt.y()), &p(&bt.m()), &p(&scores), &rc).unwrap();
        assert_close(&rp.rewards, &p(&r.rewards), 1e-12);
    }

    #[test]
    fn ppo_at_ratio_one_has_the_vanilla_policy_gradient(bt in batch(4, 8), dual in prop::bool::ANY) {
        // At π = π_old, ∂L/∂logπ_t = −A_t / N (token-mean): the REINFORCE gradient with advantages.
        let lp = bt.x().set_requires_grad(true);
        let cfg = PolicyLossConfig { dual_clip: if dual { Some(3.0) } else { None }, ..Default::default() };
        let out = policy_loss(&lp, &bt.x(), &bt.z(), &bt.m(), &cfg).unwrap();
        let g = Tensor::run_backward(&[&out.loss], &[&lp], false, false).pop().unwrap();
        let n = bt.mask.iter().filter(|m| **m).count() as f64;
        let expected = zero_masked(&(-bt.z() / n), &bt.m());
        assert_close(&g, &expected, 1e-12);
        prop_assert_eq!(s(&out.clipfrac), 0.0);
    }

    #[test]
    fn clipping_is_inactive_inside_the_trust_region(bt in batch(4, 8), eps in 0.05f64..0.4, u in prop::collection::vec(-0.999f64..0.999, 32)) {
        // log-ratios with |ratio − 1| < ε: loss = −masked_mean(A · ratio), clipfrac = 0.
        let n = bt.b * bt.t;
        let log_ratio: Vec<f64> = (0..n).map(|i| (1.0 + eps * u[i % u.len()]).ln()).collect();
        let lr = bt.tensor(&log_ratio);
        let old = bt.x();
        let cfg = PolicyLossConfig { clip_low: eps, clip_high: eps, ..Default::default() };
        let out = policy_loss(&(&old + &lr), &old, &bt.z(), &bt.m(), &cfg).unwrap();
        let unclipped = masked_mean(&(-bt.z() * lr.exp()), &bt.m(), None, EmptyRows::Error).unwrap();
        assert_close(&out.loss, &unclipped, 1e-12);
        prop_assert_eq!(s(&out.clipfrac), 0.0);
    }

    #[test]
    fn dpo_symmetries(w in prop::collection::vec(-20.0f64..0.0, 4), l in prop::collection::vec(-20.0f64..0.0, 4), beta in 0.01f64..2.0) {
        let (pw, pl) = (t1(&w), t1(&l));
        // Equal log-ratios (π = π_ref): the sigmoid loss is log 2.
        let same = PairLogps { policy_chosen: &pw, policy_rejected: &pl, ref_chosen: &pw, ref_rejected: &pl, chosen_lengths: None, rejected_lengths: None };
        let out = dpo_loss(&same, &DpoConfig::new(beta, DpoVariant::Sigmoid)).unwrap();
        prop_assert!((s(&out.loss) - std::f64::consts::LN_2).abs() < 1e-12);
        // Swapping chosen and rejected maps Δ → −Δ: implicit rewards swap, and
        // loss(swapped) − loss = mean(βΔ) (since −logσ(−x) + logσ(x) = x).
        let refs = t1(&[-5.0, -6.0, -7.0, -8.0]);
        let refs2 = t1(&[-6.0, -5.0, -9.0, -7.5]);
        let a = PairLogps { policy_chosen: &pw, policy_rejected: &pl, ref_chosen: &refs, ref_rejected: &refs2, chosen_lengths: None, rejected_lengths: None };
        let b = PairLogps { policy_chosen: &pl, policy_rejected: &pw, ref_chosen: &refs2, ref_rejected: &refs, chosen_lengths: None, rejected_lengths: None };
        let oa = dpo_loss(&a, &DpoConfig::new(beta, DpoVariant::Sigmoid)).unwrap();
        let ob = dpo_loss(&b, &DpoConfig::new(beta, DpoVariant::Sigmoid)).unwrap();
        assert_close(&oa.chosen_rewards, &ob.rejected_rewards, 1e-12);
        let delta = &oa.chosen_rewards - &oa.rejected_rewards;
        assert_close(&(&ob.losses - &oa.losses), &delta, 1e-9);
    }

    #[test]
    fn dpo_gradient_weight_is_sigma_of_reward_error(w in prop::collection::vec(-20.0f64..0.0, 5), l in prop::collection::vec(-20.0f64..0.0, 5), rw in prop::collection::vec(-20.0f64..0.0, 5), rl in prop::collection::vec(-20.0f64..0.0, 5), beta in 0.01f64..2.0) {
        // Seed 002: ∂L/∂logπ(y_w) = −β·σ(r̂_l − r̂_w)/B and ∂L/∂logπ(y_l) = +β·σ(r̂_l − r̂_w)/B.
        let pw = t1(&w).set_requires_grad(true);
        let pl = t1(&l).set_requires_grad(true);
        let (rwt, rlt) = (t1(&rw), t1(&rl));
        let lp = PairLogps { policy_chosen: &pw, policy_rejected: &pl, ref_chosen: &rwt, ref_rejected: &rlt, chosen_lengths: None, rejected_lengths: None };
        let out = dpo_loss(&lp, &DpoConfig::new(beta, DpoVariant::Sigmoid)).unwrap();
        let g = Tensor::run_backward(&[&out.loss], &[&pw, &pl], false, false);
        let weight = dpo_gradient_weight(&lp, beta).unwrap();
        let rhat_w: Vec<f64> = (0..5).map(|i| beta * (w[i] - rw[i])).collect();
        let rhat_l: Vec<f64> = (0..5).map(|i| beta * (l[i] - rl[i])).collect();
        let sigma: Vec<f64> = (0..5).map(|i| 1.0 / (1.0 + (rhat_w[i] - rhat_l[i]).exp())).collect();
        assert_close(&weight, &t1(&sigma), 1e-12);
        assert_close(&g[0], &(&weight * (-beta / 5.0)), 1e-12);
        assert_close(&g[1], &(&weight * (beta / 5.0)), 1e-12);
    }

    #[test]
    fn bradley_terry_is_shift_invariant(c in prop::collection::vec(-5.0f64..5.0, 6), r in prop::collection::vec(-5.0f64..5.0, 6), shift in -100.0f64..100.0) {
        let (ct, rt) = (t1(&c), t1(&r));
        let a = pairwise_loss(&ct, &rt, None, 0.0).unwrap();
        let b = pairwise_loss(&(&ct + shift), &(&rt + shift), None, 0.0).unwrap();
        assert_close(&a.loss, &b.loss, 1e-10);
        assert_close(&a.accuracy, &b.accuracy, 0.0);
        let k = Tensor::stack(&[ct.shallow_clone(), rt.shallow_clone(), &ct * 0.5], 1);
        assert_close(&kwise_loss(&k).unwrap(), &kwise_loss(&(&k + shift)).unwrap(), 1e-10);
    }

    #[test]
    fn kwise_with_two_is_pairwise(c in prop::collection::vec(-5.0f64..5.0, 6), r in prop::collection::vec(-5.0f64..5.0, 6)) {
        let (ct, rt) = (t1(&c), t1(&r));
        let k = Tensor::stack(&[ct.shallow_clone(), rt.shallow_clone()], 1);
        assert_close(&kwise_loss(&k).unwrap(), &pairwise_loss(&ct, &rt, None, 0.0).unwrap().loss, 1e-12);
    }

    #[test]
    fn kwise_is_mean_over_all_ranked_pairs(rows in prop::collection::vec(prop::collection::vec(-5.0f64..5.0, 4), 1..4)) {
        // K = 4 → C(4,2) = 6 pairs per prompt (InstructGPT).
        let p = rows.len();
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let k = Tensor::from_slice(&flat).reshape([p as i64, 4]);
        let mut total = 0.0;
        for row in &rows {
            for i in 0..4 { for j in (i + 1)..4 { total += (1.0 + (-(row[i] - row[j])).exp()).ln(); } }
        }
        prop_assert!((s(&kwise_loss(&k).unwrap()) - total / (6.0 * p as f64)).abs() < 1e-10);
    }

    #[test]
    fn kl_estimators_signs_and_zero(bt in batch(3, 8)) {
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3, KlEstimator::Abs] {
            let zero = kl_per_token(&bt.x(), &bt.x(), &bt.m(), &KlConfig::new(est)).unwrap();
            prop_assert_eq!(s(&zero.abs().max()), 0.0);
        }
        for est in [KlEstimator::K2, KlEstimator::K3, KlEstimator::Abs] {
            let k = kl_per_token(&bt.x(), &bt.y(), &bt.m(), &KlConfig::new(est)).unwrap();
            prop_assert!(s(&k.min()) >= 0.0);
        }
        // k3 ≥ 0 and k2 ≥ 0 per token; k1 per sequence equals the sum of log-ratios.
        let k1 = kl_per_sequence(&bt.x(), &bt.y(), &bt.m(), &KlConfig::new(KlEstimator::K1)).unwrap();
        let direct = masked_sum(&(bt.x() - bt.y()), &bt.m(), Some(1)).unwrap();
        assert_close(&k1, &direct, 1e-12);
    }

    #[test]
    fn whitening_gives_zero_mean_unit_variance(bt in batch(4, 10), unbiased in prop::bool::ANY) {
        prop_assume!(bt.mask.iter().filter(|m| **m).count() >= 3);
        let x = bt.x();
        let spread = s(&masked_var(&x, &bt.m(), false).unwrap());
        prop_assume!(spread > 1e-3);
        let w = masked_whiten(&x, &bt.m(), WhitenConfig { unbiased, eps: 0.0, ..Default::default() }).unwrap();
        prop_assert!(s(&masked_mean(&w, &bt.m(), None, EmptyRows::Error).unwrap()).abs() < 1e-10);
        prop_assert!((s(&masked_var(&w, &bt.m(), unbiased).unwrap()) - 1.0).abs() < 1e-10);
        // Without the mean shift the mean is preserved.
        let w2 = masked_whiten(&x, &bt.m(), WhitenConfig { unbiased, eps: 0.0, shift_mean: false, ..Default::default() }).unwrap();
        let m0 = s(&masked_mean(&x, &bt.m(), None, EmptyRows::Error).unwrap());
        prop_assert!((s(&masked_mean(&w2, &bt.m(), None, EmptyRows::Error).unwrap()) - m0).abs() < 1e-10);
    }

    #[test]
    fn group_baselines(scores in prop::collection::vec(-5.0f64..5.0, 12), k in prop_oneof![Just(2usize), Just(3), Just(4), Just(6)]) {
        let g = 12 / k;
        let s2 = Tensor::from_slice(&scores).reshape([g as i64, k as i64]);
        // RLOO: r_i − mean of the others, and the group sums to zero.
        let a = rloo_advantages(&s2).unwrap();
        for gi in 0..g {
            for i in 0..k {
                let others: f64 = (0..k).filter(|j| *j != i).map(|j| scores[gi * k + j]).sum::<f64>() / (k as f64 - 1.0);
                prop_assert!((a.double_value(&[gi as i64, i as i64]) - (scores[gi * k + i] - others)).abs() < 1e-10);
            }
        }
        prop_assert!(s(&a.sum(Kind::Double).abs()) < 1e-9);
        // GRPO: zero mean per group; shift invariance.
        let gr = grpo_advantages(&s2, &GrpoConfig::default()).unwrap();
        prop_assert!(s(&gr.mean_dim(&[1i64][..], false, Kind::Double).abs().max()) < 1e-9);
        assert_close(&gr, &grpo_advantages(&(&s2 + 3.0), &GrpoConfig::default()).unwrap(), 1e-9);
    }
}

/// A logit value for the `logits_where` property: ordinary, huge (rows of these overflow the f32 row
/// sum that the fast path reads), or non-finite.
fn logit_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -50.0f32..50.0,
        2 => prop_oneof![Just(3.0e38f32), Just(-3.0e38f32)],
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `check::logits_where`'s one-pass row-sum fast path decides exactly as the element-wise test: a
    /// used row passes iff every entry is finite (or finite / −∞ when allowed), including rows whose
    /// finite entries overflow the sum, and the error counts the offending used rows.
    #[test]
    fn logits_where_fast_path_equals_the_elementwise_check(
        rows in 1usize..6,
        v in 1usize..9,
        values in prop::collection::vec(logit_value(), 6 * 8),
        used in prop::collection::vec(prop::bool::ANY, 6),
        neg_inf_allowed in prop::bool::ANY,
    ) {
        let vals = &values[..rows * v];
        let logits = Tensor::from_slice(vals).view([rows as i64, v as i64]);
        let used_t = Tensor::from_slice(&used[..rows]);
        let bad_rows = (0..rows)
            .filter(|&r| used[r] && vals[r * v..(r + 1) * v].iter().any(|x| {
                !(x.is_finite() || (neg_inf_allowed && *x == f32::NEG_INFINITY))
            }))
            .count() as i64;
        let got = rlhf_lab::core::check::logits_where("logits", &logits, &used_t, neg_inf_allowed);
        match got {
            Ok(()) => prop_assert_eq!(bad_rows, 0),
            Err(rlhf_lab::error::RlhfError::NonFinite { count, .. }) => prop_assert_eq!(count, bad_rows),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        // The same in f64 (its own sum kind).
        let got64 = rlhf_lab::core::check::logits_where("logits", &logits.to_kind(Kind::Double), &used_t, neg_inf_allowed);
        prop_assert_eq!(got64.is_ok(), bad_rows == 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `filter_logits` accepts exactly the batches whose rows hold no NaN, no +∞ and at least one finite
    /// logit (−∞ = an already removed token), whatever the fast path decides from the row maxima; and
    /// at temperature 1 with no top-k/top-p it returns the logits themselves (in f64).
    #[test]
    fn filter_logits_accepts_exactly_the_valid_rows(
        rows in 1usize..5,
        v in 1usize..7,
        values in prop::collection::vec(logit_value(), 5 * 6),
    ) {
        let vals = &values[..rows * v];
        let logits = Tensor::from_slice(vals).view([rows as i64, v as i64]);
        let valid = (0..rows).all(|r| {
            let row = &vals[r * v..(r + 1) * v];
            row.iter().all(|x| !x.is_nan() && *x != f32::INFINITY) && row.iter().any(|x| x.is_finite())
        });
        let got = rlhf_lab::generate::filter_logits(&logits, 1.0, 0, 1.0);
        prop_assert_eq!(got.is_ok(), valid, "{:?}", got.as_ref().err());
        if let Ok(z) = got {
            let expected = logits.to_kind(Kind::Double);
            let same = z.eq_tensor(&expected).logical_or(&z.isneginf().logical_and(&expected.isneginf()));
            prop_assert!(same.all().int64_value(&[]) == 1);
        }
    }
}
