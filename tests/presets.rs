//! Each preset reproduces its stack's documented behaviour on small hand-computed cases.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::conventions::{markdown_table, Conventions, PRESETS};
use rlhf_lab::experience::ppo_experience;
use rlhf_lab::kl::*;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::masked::*;
use rlhf_lab::ppo::*;

fn p(name: &str) -> Conventions {
    Conventions::preset(name).unwrap()
}

#[test]
fn score_placement_per_stack() {
    let lp = t2(&[&[-1.0, -1.0, -1.0, -1.0]]);
    let mask = t2(&[&[1., 1., 0., 0.]]);
    let idx = |name: &str| {
        let out =
            kl_shaped_rewards(&lp, &lp, &mask, &t1(&[1.0]), &p(name).reward_config()).unwrap();
        s(&out.score_index.to_kind(tch::Kind::Double))
    };
    assert_eq!(idx("trl"), 2.0); // PPOv2: sequence_lengths + 1
    assert_eq!(idx("deepspeed-chat"), 2.0); // start + n: one past the last token
    assert_eq!(idx("openrlhf"), 1.0); // last action_mask == 1
    assert_eq!(idx("verl"), 1.0); // valid_response_length − 1
    assert_eq!(idx("rlhf-lab"), 1.0); // seed 001 §3.2.4
}

#[test]
fn clips_and_clamps_per_stack() {
    let lp = t2(&[&[0.0, -60.0]]);
    let rlp = t2(&[&[-50.0, 0.0]]);
    let mask = t2(&[&[1., 1.]]);
    let big = t1(&[123.0]);
    // DeepSpeed-Chat: score clipped to ±5; OpenRLHF: ±10 and KL estimate clamped to ±10.
    let ds =
        kl_shaped_rewards(&lp, &rlp, &mask, &big, &p("deepspeed-chat").reward_config()).unwrap();
    assert_eq!(v1(&ds.kl), vec![50.0, -60.0]);
    assert_eq!(v1(&ds.rewards)[1], 0.1 * 60.0 + 5.0); // −0.1·KL, plus the score clipped to 5 (after-last → clamped to T−1)
    let or = kl_shaped_rewards(&lp, &rlp, &mask, &big, &p("openrlhf").reward_config()).unwrap();
    assert_eq!(v1(&or.kl), vec![10.0, -10.0]);
    assert_eq!(v1(&or.rewards), vec![-0.01 * 10.0, 0.01 * 10.0 + 10.0]);
}

#[test]
fn deepspeed_chat_full_row_keeps_the_score_on_the_last_token() {
    let lp = t2(&[&[0.0, 0.0]]);
    let out = kl_shaped_rewards(
        &lp,
        &lp,
        &t2(&[&[1., 1.]]),
        &t1(&[123.0]),
        &p("deepspeed-chat").reward_config(),
    )
    .unwrap();
    assert_eq!(v1(&out.rewards), vec![0.0, 5.0]);
}

#[test]
fn verl_dual_clip_and_log_ratio_clamp() {
    let old = t2(&[&[0.0, 0.0]]);
    let new = t2(&[&[5.0, 100.0]]); // ratios e^5 and e^100 (clamped to e^20)
    let adv = t2(&[&[-1.0, -2.0]]);
    let mask = t2(&[&[1., 1.]]);
    let verl = policy_loss(&new, &old, &adv, &mask, &p("verl").policy_loss_config()).unwrap();
    // −A·c = 3 and 6: the dual clip bounds both tokens.
    assert_eq!(v1(&verl.per_token), vec![3.0, 6.0]);
    assert_eq!(s(&verl.clipfrac_lower), 2.0 / (2.0 + 1e-8)); // verl masked_mean: Σ mask + 1e-8
    let trl = policy_loss(&new, &old, &adv, &mask, &p("trl").policy_loss_config()).unwrap();
    assert!((v1(&trl.per_token)[0] - 5f64.exp()).abs() < 1e-9);
    assert!(v1(&trl.per_token)[1] > 1e40); // unclamped, unbounded
    assert_eq!(v1(&verl.ratio)[1], 20f64.exp());
}

#[test]
fn approx_kl_estimator_per_stack() {
    let old = t2(&[&[0.0, 0.0]]);
    let new = t2(&[&[0.1, -0.3]]);
    let z = old.zeros_like();
    let m = t2(&[&[1., 1.]]);
    let trl = policy_loss(&new, &old, &z, &m, &p("trl").policy_loss_config()).unwrap();
    assert!((s(&trl.approx_kl) - 0.5 * (0.01 + 0.09) / 2.0).abs() < 1e-12); // k2
    let verl = policy_loss(&new, &old, &z, &m, &p("verl").policy_loss_config()).unwrap();
    assert!((s(&verl.approx_kl) - (-0.1 + 0.3) / (2.0 + 1e-8)).abs() < 1e-15); // k1 of old − new, Σ mask + 1e-8
}

#[test]
fn whitening_per_stack() {
    let x = t2(&[&[1.0, 2.0, 3.0, 4.0]]);
    let m = x.ones_like();
    let w = |name: &str| v1(&masked_whiten(&x, &m, p(name).whiten_config()).unwrap())[3];
    // mean 2.5; biased var 1.25, unbiased 5/3.
    assert!((w("trl") - 1.5 / (5.0f64 / 3.0 + 1e-8).sqrt()).abs() < 1e-12);
    // OpenRLHF: float32 statistics (mean 2.5 and var 1.25 are exact in f32; rsqrt is rounded to f32).
    let rstd32 = s(&tch::Tensor::from(1.25f32).rsqrt());
    assert_eq!(w("openrlhf"), 1.5 * rstd32);
    let flat = x.ones_like();
    // OpenRLHF clamps var at 1e-8, TRL adds 1e-8: on a constant input both give 0.
    assert_eq!(
        v1(&masked_whiten(&flat, &m, p("openrlhf").whiten_config()).unwrap()),
        vec![0.0; 4]
    );
}

#[test]
fn verl_skips_interior_masked_steps_and_trl_counts_them() {
    let r = t2(&[&[0.0, 0.0, 1.0]]);
    let v = t2(&[&[0.0, 7.0, 0.0]]);
    let m = t2(&[&[1., 0., 1.]]); // an observation token in the middle
    let g = |name: &str| {
        let mut c = p(name).gae_config();
        c.gamma = 0.5;
        c.lam = 1.0;
        v1(&gae(&r, &v, &m, &c).unwrap().advantages)
    };
    assert_eq!(g("verl"), vec![0.5, 0.0, 1.0]); // transparent step: one discount from 2 to 0
    assert_eq!(g("trl"), vec![0.25, 0.0, 1.0]); // zero step: two discounts
}

#[test]
fn experience_pipeline_per_preset_is_finite_and_masked() {
    let lp = t2(&[&[-1.0, -2.0, -0.5, 0.0], &[-0.3, -0.7, -1.1, -0.2]]);
    let rlp = t2(&[&[-1.1, -1.9, -0.6, 0.0], &[-0.2, -0.9, -1.0, -0.3]]);
    let v = t2(&[&[0.1, 0.2, 0.3, 0.4], &[0.5, 0.6, 0.7, 0.8]]);
    let m = t2(&[&[1., 1., 0., 0.], &[1., 1., 1., 1.]]);
    for name in PRESETS {
        let e = ppo_experience(&lp, &rlp, &v, &t1(&[1.0, -1.0]), &m, &p(name)).unwrap();
        assert!(s(&e.advantages.isfinite().all().to_kind(tch::Kind::Double)) == 1.0);
        // Advantages live on response tokens only.
        assert_eq!(v1(&e.advantages)[2], 0.0, "{name}");
        assert_eq!(v1(&e.advantages)[3], 0.0, "{name}");
        let w = p(name).whiten_advantages;
        let mean = s(&masked_mean(&e.advantages, &m, None, EmptyRows::Error).unwrap());
        // Float32 statistics (OpenRLHF) centre to float32 precision only; verl's mean over
        // `Σ mask + 1e-8` leaves a ~1e-9 offset.
        let tol = if p(name).whiten_f32_stats {
            1e-6
        } else if p(name).mean_eps > 0.0 {
            1e-8
        } else {
            1e-9
        };
        assert!(
            !w || mean.abs() < tol,
            "{name}: whitened advantages have mean {mean}"
        );
    }
}

#[test]
fn kl_controllers() {
    // Ziegler et al.: error clipped to ±0.2; β·(1 + e·n/horizon).
    let mut c = AdaptiveKlController::new(0.2, 6.0, 10000.0).unwrap();
    c.update(100.0, 1000).unwrap();
    assert!((c.value() - 0.2 * (1.0 + 0.2 * 0.1)).abs() < 1e-15);
    c.update(3.0, 1000).unwrap();
    assert!((c.value() - 0.2 * 1.02 * (1.0 - 0.2 * 0.1)).abs() < 1e-15); // 3/6 − 1 = −0.5 → clipped to −0.2
    let mut f = FixedKlController::new(0.05).unwrap();
    f.update(100.0, 1).unwrap();
    assert_eq!(f.value(), 0.05);
}

#[test]
fn snapshot_presets() {
    let all: Vec<Conventions> = PRESETS.iter().map(|n| p(n)).collect();
    insta::assert_json_snapshot!("conventions_presets", all);
}

#[test]
fn readme_table_matches_the_presets() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = markdown_table();
    assert!(readme.contains(&table), "README.md's conventions table is out of date; regenerate it with `rlhf-lab presets --markdown`:\n{table}");
}

#[test]
fn unknown_preset_is_an_error() {
    assert!(Conventions::preset("ray").is_err());
    let _ = KlConfig::new(KlEstimator::K1);
}
