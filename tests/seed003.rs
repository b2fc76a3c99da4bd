//! Seed document 003's formulas on a small case: reward = −0.2·KL + score on the last token; the three
//! value labels (Monte-Carlo, TD, GAE + V); `pg_loss = masked_mean(max(−A·ratio, −A·clip(ratio)))`;
//! `vf_loss = 0.5·masked_mean(max((V−R)², (clip(V)−R)²))`; `loss = pg_loss + vf_coef·vf_loss`.

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::kl::*;
use rlhf_lab::kl_shaping::*;
use rlhf_lab::ppo::*;

#[test]
fn seed003_small_case() {
    let mask = t2(&[&[1., 1., 1., 0.]]);
    let log_probs = t2(&[&[-0.5, -1.0, -0.2, 0.0]]);
    let ref_log_probs = t2(&[&[-0.7, -0.9, -0.4, 0.0]]);
    let values = t2(&[&[0.3, 0.1, 0.5, 0.0]]);
    let score = t1(&[1.0]);
    let cfg = RewardShapingConfig {
        kl_coef: 0.2,
        kl: KlConfig::new(KlEstimator::K1),
        score_placement: ScorePlacement::LastResponseToken,
        score_clip: None,
        kl_on_score_slot: false,
        empty_rows: rlhf_lab::masked::EmptyRows::Error,
    };
    let shaped = kl_shaped_rewards(&log_probs, &ref_log_probs, &mask, &score, &cfg).unwrap();
    // −0.2·KL: [−0.04, +0.02, −0.04], score on token 3.
    assert_eq!(rv(&v1(&shaped.rewards), 12), vec![-0.04, 0.02, 0.96, 0.0]);

    let (gamma, lam) = (1.0, 0.95);
    let mc = discounted_returns(&shaped.rewards, &mask, gamma, MaskedSteps::Zero).unwrap();
    let tdo = td(&shaped.rewards, &values, &mask, gamma, MaskedSteps::Zero).unwrap();
    let g = gae(
        &shaped.rewards,
        &values,
        &mask,
        &GaeConfig {
            gamma,
            lam,
            masked_steps: MaskedSteps::Zero,
        },
    )
    .unwrap();
    assert_eq!(rv(&v1(&mc), 12), vec![0.94, 0.98, 0.96, 0.0]);
    assert_eq!(rv(&v1(&tdo.targets), 12), vec![0.06, 0.52, 0.96, 0.0]);

    // PPO step: new policy moves the log-probs, critic moves the values.
    let new_lp = t2(&[&[-0.3, -1.4, -0.2, 0.0]]);
    let new_v = t2(&[&[0.6, 0.0, 0.9, 0.0]]);
    let pg = policy_loss(
        &new_lp,
        &log_probs,
        &g.advantages,
        &mask,
        &PolicyLossConfig::default(),
    )
    .unwrap();
    let vf = value_loss(
        &new_v,
        &values,
        &g.returns,
        &mask,
        &ValueLossConfig {
            clip: Some(0.2),
            ..Default::default()
        },
    )
    .unwrap();
    let total = total_loss(&pg.loss, &vf.loss, &pg.loss.zeros_like(), 0.1, 0.0).unwrap();

    insta::assert_json_snapshot!(
        "seed003_small_case",
        serde_json::json!({
            "rewards": rv(&v1(&shaped.rewards), 8),
            "value_label_mc": rv(&v1(&mc), 8),
            "value_label_td": rv(&v1(&tdo.targets), 8),
            "value_label_gae_plus_v": rv(&v1(&g.returns), 8),
            "advantages": rv(&v1(&g.advantages), 8),
            "ratio": rv(&v1(&pg.ratio), 8),
            "pg_loss": r(s(&pg.loss), 8),
            "pg_clipfrac": r(s(&pg.clipfrac), 8),
            "vf_loss": r(s(&vf.loss), 8),
            "vf_clipfrac": r(s(&vf.clipfrac), 8),
            "loss": r(s(&total), 8),
        })
    );
}
