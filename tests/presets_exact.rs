//! Issue 14: each preset reproduces its stack *exactly* (f64, compared without tolerance or at 1e-15),
//! including the places where the stacks' own code adds an epsilon, clamps, works in float32 or keeps a
//! term that a textbook formula would drop. Every case is computed by hand from the stack's formula.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::conventions::Conventions;
use rlhf_lab::experience::ppo_experience;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::logprobs::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;
use rlhf_lab::RlhfError;
use tch::{Kind, Tensor};

fn p(name: &str) -> Conventions {
    Conventions::preset(name).unwrap()
}

/// |a − b| ≤ 1e-15·max(1, |b|) elementwise (libtorch's `exp`/`log` may differ from libm's in the last bit).
#[track_caller]
fn near(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// 1. Real disagreements.

/// OpenRLHF `PolicyLoss`: the ratio comes from the log-ratio clamped to ±20, the reported `ppo_kl` from
/// the raw one. verl derives both from the clamped log-ratio.
#[test]
fn openrlhf_clamps_the_ratio_but_reports_approx_kl_from_the_raw_log_ratio() {
    let old = t2(&[&[0.0, 0.0]]);
    let new = t2(&[&[30.0, -0.5]]);
    let adv = t2(&[&[-1.0, 1.0]]);
    let m = t2(&[&[1., 1.]]);
    let o = policy_loss(&new, &old, &adv, &m, &p("openrlhf").policy_loss_config()).unwrap();
    // token 0: A < 0, ratio e^20 (clamped): max(−A·r, −A·clip(r)) = e^20.
    // token 1: A > 0, ratio e^−0.5 ≈ 0.607 < 0.8: max(−r, −0.8) = −e^−0.5.
    near(&v1(&o.ratio), &[20f64.exp(), (-0.5f64).exp()]);
    near(&v1(&o.per_token), &[20f64.exp(), -(-0.5f64).exp()]);
    near(&[s(&o.loss)], &[(20f64.exp() - (-0.5f64).exp()) / 2.0]);
    // ppo_kl = masked_mean(−log_ratio) over the *unclamped* log-ratio: (−30 + 0.5) / 2.
    assert_eq!(s(&o.approx_kl), -14.75);
    // The two choices are independent: the same clamp with verl's clamped approx-KL, (−20 + 0.5) / 2.
    let clamped = PolicyLossConfig {
        approx_kl_unclamped: false,
        ..p("openrlhf").policy_loss_config()
    };
    let o2 = policy_loss(&new, &old, &adv, &m, &clamped).unwrap();
    assert_eq!(s(&o2.approx_kl), -9.75);
    assert_eq!(s(&o2.loss), s(&o.loss));
}

/// OpenRLHF's sequence-level loss: each row over `count + 1e-8`, rows without tokens skipped.
#[test]
fn openrlhf_sequence_level_loss_skips_empty_rows_with_count_plus_eps() {
    let v = t2(&[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]]);
    let zero = v.zeros_like();
    let m = t2(&[&[1., 1., 0.], &[0., 0., 0.]]);
    let cfg = ValueLossConfig {
        agg: LossAgg::SeqMeanTokenMean,
        ..p("openrlhf").value_loss_config()
    };
    // Per token (V − R)² with V = V_old: [1, 4, ·]; row 0: 5 / (2 + 1e-8); row 1 has no token.
    let o = value_loss(&v, &v, &zero, &m, &cfg).unwrap();
    assert_eq!(s(&o.loss), 0.5 * (5.0 / (2.0 + 1e-8)));
    // The token-level default divides by the exact count (OpenRLHF `masked_mean(dim=None)`).
    let o = value_loss(&v, &v, &zero, &m, &p("openrlhf").value_loss_config()).unwrap();
    assert_eq!(s(&o.loss), 0.5 * 2.5);
}

/// OpenRLHF `compute_reward` with an all-zero action mask: the score lands on the last column,
/// `size(1) − 1 − argmax(0…)`, finite; GAE then masks the row out (`rewards * action_mask`).
#[test]
fn openrlhf_rewards_of_an_all_zero_mask_row_are_finite() {
    let lp = t2(&[&[-1.0, -2.0, -0.5], &[-1.0, -1.0, -1.0]]);
    let rlp = t2(&[&[-1.5, -2.0, -0.5], &[-1.0, -1.0, -1.0]]);
    let m = t2(&[&[1., 1., 0.], &[0., 0., 0.]]);
    let scores = t1(&[3.0, 20.0]);
    let r = kl_shaped_rewards(&lp, &rlp, &m, &scores, &p("openrlhf").reward_config()).unwrap();
    // Row 0: −0.01·KL, KL = [0.5, 0]; score 3 on the last response token.
    // Row 1: no KL; the score clipped to 10 on column T − 1.
    assert_eq!(v1(&r.rewards), vec![-0.005, 3.0, 0.0, 0.0, 0.0, 10.0]);
    assert_eq!(v1(&r.score_index.to_kind(Kind::Double)), vec![1.0, 2.0]);
    assert_eq!(v1(&r.mask.to_kind(Kind::Double)), v1(&m));
    let v = t2(&[&[0.1, 0.2, 0.3], &[0.4, 0.5, 0.6]]);
    let e = ppo_experience(&lp, &rlp, &v, &scores, &m, &p("openrlhf")).unwrap();
    assert_eq!(v1(&e.advantages)[3..].to_vec(), vec![0.0; 3]);
    assert_eq!(v1(&e.returns)[3..].to_vec(), vec![0.0; 3]);
    // verl's reward manager puts an empty response's score on index −1 as well.
    let r = kl_shaped_rewards(&lp, &rlp, &m, &scores, &p("verl").reward_config()).unwrap();
    assert_eq!(v1(&r.rewards)[3..].to_vec(), vec![0.0, 0.0, 20.0]);
    // rlhf-lab keeps refusing.
    assert!(matches!(
        kl_shaped_rewards(&lp, &rlp, &m, &scores, &p("rlhf-lab").reward_config()),
        Err(RlhfError::EmptyRows { .. })
    ));
}

/// verl `compute_grpo_outcome_advantage`, a group of one: `(score − tensor(0.0)) / (tensor(1.0) + ε)`
/// with float32 tensors; without `norm_adv_by_std_in_grpo`, `score − tensor(0.0)`.
#[test]
fn verl_grpo_group_of_one_divides_by_float32_one_plus_eps_or_not_at_all() {
    let scores = t2(&[&[3.0], &[-0.5]]);
    let a = grpo_advantages(&scores, &p("verl").grpo_config()).unwrap();
    let divisor = 1.000_000_953_674_316_4_f64; // float32(1 + 1e-6)
    assert_eq!((1.0f32 + 1e-6f32) as f64, divisor);
    assert_eq!(v1(&a), vec![3.0 / divisor, -0.5 / divisor]);
    assert!((3.0 / divisor - 3.0 / (1.0 + 1e-6)).abs() > 1e-7); // not the f64 1 + ε
    let no_std = GrpoConfig {
        scale_by_std: false,
        ..p("verl").grpo_config()
    };
    assert_eq!(
        v1(&grpo_advantages(&scores, &no_std).unwrap()),
        vec![3.0, -0.5]
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. Differences that are now options.

/// verl `masked_mean` = `Σ mask·x / (Σ mask + 1e-8)`, used by its masked variance and whitening.
#[test]
fn verl_masked_means_add_1e8_to_the_denominator() {
    let x = t2(&[&[1.0, 2.0, 3.0, 4.0]]);
    let m = x.ones_like();
    let n = 4.0 + 1e-8;
    let mean = 10.0 / n;
    let c: Vec<f64> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| v - mean).collect();
    let var = c.iter().map(|d| d * d).sum::<f64>() / n * (4.0 / 3.0); // Bessel factor exact
    let rstd = 1.0 / (var + 1e-8).sqrt();
    let w = v1(&masked_whiten(&x, &m, p("verl").whiten_config()).unwrap());
    for (got, d) in w.iter().zip(&c) {
        assert!((got - d * rstd).abs() < 1e-15, "{got} vs {}", d * rstd);
    }
    assert_eq!(
        s(&masked_mean_eps(&x, &m, None, EmptyRows::Ignore, p("verl").mean_eps).unwrap()),
        mean
    );
    near(
        &[s(&masked_var_eps(&x, &m, true, p("verl").mean_eps).unwrap())],
        &[var],
    );
    // Policy loss (token-mean) and its statistics: Σ / (n + 1e-8).
    let old = t2(&[&[0.0, 0.0]]);
    let new = t2(&[&[0.5, 0.0]]);
    let adv = t2(&[&[1.0, 2.0]]);
    let m2 = t2(&[&[1., 1.]]);
    let o = policy_loss(&new, &old, &adv, &m2, &p("verl").policy_loss_config()).unwrap();
    // token 0: ratio e^0.5 > 1.2, A > 0: max(−e^0.5, −1.2) = −1.2 (clipped); token 1: −2.
    assert_eq!(s(&o.loss), (-1.2 - 2.0) / (2.0 + 1e-8));
    assert_eq!(s(&o.clipfrac), 1.0 / (2.0 + 1e-8));
    assert_eq!(s(&o.approx_kl), -0.5 / (2.0 + 1e-8));
    // rlhf-lab: exact.
    let o = policy_loss(&new, &old, &adv, &m2, &p("rlhf-lab").policy_loss_config()).unwrap();
    assert_eq!(s(&o.loss), -1.6);
}

/// DeepSpeed-Chat `compute_rewards`: `rewards = −kl_ctl·(log π − log π_ref)` at every position up to
/// `ends = start + n + 1`, the score slot included, then `+ clip(score)` there; `old_rewards` and
/// `old_values` are zeroed only after `ends`, and GAE runs over the whole row.
#[test]
fn deepspeed_chat_penalises_the_score_slot_end_to_end() {
    let lp = t2(&[&[-1.0, -2.0, -0.5]]);
    let rlp = t2(&[&[-1.5, -2.0, -0.25]]);
    let m = t2(&[&[1., 1., 0.]]);
    let v = t2(&[&[0.1, 0.2, 0.3]]);
    let scores = t1(&[7.0]);
    let ds = p("deepspeed-chat");
    let r = kl_shaped_rewards(&lp, &rlp, &m, &scores, &ds.reward_config()).unwrap();
    // KL = [0.5, 0, −0.25 (the pad slot)]; β = 0.1; score clipped to 5 on the slot.
    assert_eq!(v1(&r.kl), vec![0.5, 0.0, -0.25]);
    assert_eq!(v1(&r.rewards), vec![-0.05, 0.0, 0.025 + 5.0]);
    let e = ppo_experience(&lp, &rlp, &v, &scores, &m, &ds).unwrap();
    // γ = 1, λ = 0.95: δ = [−0.05 + 0.2 − 0.1, 0 + 0.3 − 0.2, 5.025 − 0.3].
    let d = [-0.05 + 0.2 - 0.1, 0.3 - 0.2, 5.025 - 0.3];
    let a2 = d[2];
    let a1 = d[1] + 0.95 * a2;
    let a0 = d[0] + 0.95 * a1;
    assert_close(&e.advantages, &t2(&[&[a0, a1, 0.0]]), 1e-15);
    assert_close(&e.returns, &t2(&[&[a0 + 0.1, a1 + 0.2, a2 + 0.3]]), 1e-15);
    // The losses read the response tokens only (DeepSpeed-Chat `action_mask[:, start:]`).
    let pl = policy_loss(&lp, &lp, &e.advantages, &m, &ds.policy_loss_config()).unwrap();
    assert!((s(&pl.loss) + (a0 + a1) / 2.0).abs() < 1e-15);
    let vl = value_loss(&v, &v, &e.returns, &m, &ds.value_loss_config()).unwrap();
    let sq = |a: f64| a * a;
    assert!((s(&vl.loss) - 0.5 * (sq(a0) + sq(a1)) / 2.0).abs() < 1e-14);
    // rlhf-lab: the slot carries the score only.
    let r = kl_shaped_rewards(&lp, &rlp, &m, &scores, &p("trl").reward_config()).unwrap();
    assert_eq!(v1(&r.rewards)[2], 7.0);
}

/// OpenRLHF normalises advantages with statistics of `advantages.float()`: μ and 1/σ are float32,
/// applied to the advantages in their own dtype.
#[test]
fn openrlhf_whitening_statistics_are_float32() {
    let x = t2(&[&[0.1, 0.2, 0.7]]);
    let m = x.ones_like();
    let x32 = x.to_kind(Kind::Float);
    let mean32 = x32.sum(Kind::Float) / 3.0;
    let var32 = (&x32 - &mean32).square().sum(Kind::Float) / 3.0;
    let rstd32 = var32.clamp_min(1e-8).rsqrt();
    let (mean, rstd) = (s(&mean32), s(&rstd32));
    let expected: Vec<f64> = [0.1, 0.2, 0.7].iter().map(|v| (v - mean) * rstd).collect();
    let w = v1(&masked_whiten(&x, &m, p("openrlhf").whiten_config()).unwrap());
    assert_eq!(w, expected);
    // … which is not the f64 computation.
    let f64_stats = WhitenConfig {
        f32_stats: false,
        ..p("openrlhf").whiten_config()
    };
    let w64 = v1(&masked_whiten(&x, &m, f64_stats).unwrap());
    assert!(w.iter().zip(&w64).any(|(a, b)| (a - b).abs() > 1e-9));
}

// ---------------------------------------------------------------------------------------------------
// 3. Missing options.

/// verl `agg_loss(…, dp_size, batch_num_tokens, global_batch_size)`.
#[test]
fn global_batch_normalisation_of_losses() {
    let loss = t2(&[&[1.0, 2.0, 3.0], &[5.0, 0.0, 0.0]]);
    let m = t2(&[&[1., 1., 0.], &[1., 0., 0.]]);
    let norm = |dp, tokens, seqs| LossNorm {
        dp_size: dp,
        batch_num_tokens: tokens,
        global_batch_size: seqs,
        ..LossNorm::default()
    };
    // token-mean: Σ mask·ℓ / batch_num_tokens · dp_size = 8 / 10 · 4.
    let l = aggregate_norm(
        &loss,
        &m,
        LossAgg::TokenMean,
        EmptyRows::Error,
        &norm(4, Some(10), None),
    );
    assert_eq!(s(&l.unwrap()), 8.0 / 10.0 * 4.0);
    // seq-mean-token-mean: rows 1.5 and 5; Σ / global_batch_size · dp_size = 6.5 / 8 · 2.
    let l = aggregate_norm(
        &loss,
        &m,
        LossAgg::SeqMeanTokenMean,
        EmptyRows::Error,
        &norm(2, None, Some(8)),
    );
    assert_eq!(s(&l.unwrap()), 6.5 / 8.0 * 2.0);
    // seq-mean-token-sum: rows 3 and 5.
    let l = aggregate_norm(
        &loss,
        &m,
        LossAgg::SeqMeanTokenSum,
        EmptyRows::Error,
        &norm(2, None, Some(8)),
    );
    assert_eq!(s(&l.unwrap()), 8.0 / 8.0 * 2.0);
    // dp_size > 1 without the global count is refused (the local count times dp_size is wrong).
    assert!(matches!(
        aggregate_norm(&loss, &m, LossAgg::TokenMean, EmptyRows::Error, &norm(2, None, None)),
        Err(RlhfError::Invalid { ref arg, .. }) if arg == "dp_size"
    ));
    // A normaliser the aggregation does not use is refused, not ignored.
    assert!(matches!(
        aggregate_norm(&loss, &m, LossAgg::TokenMean, EmptyRows::Error, &norm(1, None, Some(8))),
        Err(RlhfError::Invalid { ref arg, .. }) if arg == "global_batch_size"
    ));
    // The policy and value losses take the same normalisation.
    let z = loss.zeros_like();
    let adv = -&loss; // ratio 1: per-token loss −A = ℓ
    let pc = PolicyLossConfig {
        norm: norm(4, Some(10), None),
        ..PolicyLossConfig::default()
    };
    assert_eq!(s(&policy_loss(&z, &z, &adv, &m, &pc).unwrap().loss), 3.2);
    let vc = ValueLossConfig {
        clip: None,
        norm: norm(4, Some(10), None),
        ..ValueLossConfig::default()
    };
    // ½·Σ (V − R)² / 10 · 4 with V = ℓ, R = 0: ½·(1 + 4 + 25) · 0.4.
    assert_eq!(
        s(&value_loss(&loss, &loss, &z, &m, &vc).unwrap().loss),
        0.5 * 30.0 / 10.0 * 4.0
    );
}

/// verl `seq-mean-token-sum-norm`: the total masked sum over `loss_scale_factor`, or T.
#[test]
fn seq_mean_token_sum_norm_divides_by_a_constant() {
    let loss = t2(&[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]]);
    let m = t2(&[&[1., 1., 0.], &[1., 0., 0.]]);
    let agg = LossAgg::SeqMeanTokenSumNorm;
    assert_eq!(
        s(&aggregate(&loss, &m, agg, EmptyRows::Error).unwrap()),
        7.0 / 3.0
    );
    let n = LossNorm {
        loss_scale_factor: Some(14.0),
        ..LossNorm::default()
    };
    assert_eq!(
        s(&aggregate_norm(&loss, &m, agg, EmptyRows::Error, &n).unwrap()),
        0.5
    );
}

/// OpenRLHF `no_advantage_std_norm`: `A − mean(A)`.
#[test]
fn advantage_centring_without_scaling() {
    let x = t2(&[&[1.0, 2.0, 3.0, 4.0], &[10.0, 0.0, 0.0, 0.0]]);
    let m = t2(&[&[1., 1., 1., 1.], &[1., 0., 0., 0.]]);
    let cfg = WhitenConfig {
        scale: false,
        ..p("openrlhf").whiten_config()
    };
    // mean over the five tokens = 4 (exact in f32 too).
    assert_eq!(
        v1(&masked_whiten(&x, &m, cfg).unwrap()),
        vec![-3.0, -2.0, -1.0, 0.0, 6.0, 0.0, 0.0, 0.0]
    );
}

/// TRL `selective_log_softmax(logits / T)` (PPOTrainer: `T + 1e-7`, the `trl` preset's `temperature_eps`).
#[test]
fn temperature_in_token_log_probs() {
    let logits = Tensor::from_slice(&[2.0f64, 0.0]).reshape([1, 1, 2]);
    let labels = Tensor::from_slice(&[0i64]).reshape([1, 1]);
    let m = labels.ones_like();
    // logits / 2 = [1, 0]: log p(0) = 1 − log(1 + e).
    let lp = token_log_probs_at(&logits, &labels, &m, 2.0).unwrap();
    near(&[s(&lp)], &[1.0 - (1.0 + 1f64.exp()).ln()]);
    let t = 2.0 + p("trl").temperature_eps;
    let z = 2.0 / t;
    let lp = token_log_probs_at(&logits, &labels, &m, t).unwrap();
    near(&[s(&lp)], &[z - (z.exp() + 1.0).ln()]);
    assert!((s(&lp) - (1.0 - (1.0 + 1f64.exp()).ln())).abs() > 1e-9); // T + 1e-7 is not T
    assert_eq!(
        s(&token_log_probs_at(&logits, &labels, &m, 1.0).unwrap()),
        s(&token_log_probs(&logits, &labels, &m).unwrap())
    );
    assert!(token_log_probs_at(&logits, &labels, &m, 0.0).is_err());
}

/// Finite inputs whose result overflows are an error naming the output, like non-finite inputs.
#[test]
fn finite_inputs_with_a_non_finite_output_are_errors() {
    let r = t2(&[&[1e308, 1e308]]);
    let z = r.zeros_like();
    let m = r.ones_like();
    let cfg = GaeConfig {
        gamma: 1.0,
        lam: 1.0,
        masked_steps: MaskedSteps::Zero,
    };
    let err = gae(&r, &z, &m, &cfg).unwrap_err();
    assert!(
        matches!(err, RlhfError::NonFiniteOutput { ref arg, count: 1 } if arg == "advantages"),
        "{err}"
    );
    assert_eq!(err.kind(), "non_finite_output");
    assert!(discounted_returns(&r, &m, 1.0, MaskedSteps::Zero).is_err());
    assert!(masked_sum(&r, &m, None).is_err());
    // float32: exp(100) overflows the ratio.
    let lp = Tensor::from_slice(&[100.0f32, 0.0]).reshape([1, 2]);
    let z32 = lp.zeros_like();
    let adv = lp.ones_like();
    let err = policy_loss(&lp, &z32, &adv, &adv, &PolicyLossConfig::default()).unwrap_err();
    assert_eq!(err.kind(), "non_finite_output");
    // The same in f64 is finite: no error.
    let lp = t2(&[&[100.0, 0.0]]);
    assert!(policy_loss(
        &lp,
        &lp.zeros_like(),
        &lp.ones_like(),
        &lp.ones_like(),
        &PolicyLossConfig::default()
    )
    .is_ok());
}

/// The rlhf-lab preset keeps exact, epsilon-free behaviour.
#[test]
fn rlhf_lab_preset_stays_exact() {
    let c = p("rlhf-lab");
    assert_eq!(
        (c.mean_eps, c.seq_mean_eps, c.temperature_eps),
        (0.0, 0.0, 0.0)
    );
    assert!(!c.kl_on_score_slot && !c.whiten_f32_stats && !c.approx_kl_unclamped && c.whiten_std);
    let x = t2(&[&[1.0, 2.0], &[3.0, 0.0]]);
    let m = t2(&[&[1., 1.], &[1., 0.]]);
    let pc = PolicyLossConfig {
        agg: LossAgg::SeqMeanTokenMean,
        ..c.policy_loss_config()
    };
    let adv = -&x;
    let o = policy_loss(&x.zeros_like(), &x.zeros_like(), &adv, &m, &pc).unwrap();
    assert_eq!(s(&o.loss), (1.5 + 3.0) / 2.0);
}
