//! Seed document 001 §3.2.4 worked example: every printed number, checked at its printed precision.
//! Errata are asserted both ways: the printed value is outside its tolerance AND the correct value is
//! pinned, so a change in the library that "fixes" an erratum fails here too.

mod common;
use common::*;
use rlhf_lab::worked_example::{self as we, compare, compute, document_style_gae, ERRATA};

#[test]
fn every_printed_number_matches_or_is_a_listed_erratum() {
    let ex = compute().unwrap();
    let rows = compare(&ex);
    assert_eq!(rows.len(), 42, "six series of seven printed numbers");
    for row in &rows {
        let listed = ERRATA
            .iter()
            .any(|(q, s, _)| *q == row.quantity && *s == row.step);
        assert_eq!(
            !row.matches, listed,
            "{} step {}: printed {} computed {:.7} (tol {:e}) — matches = {}, listed as erratum = {}",
            row.quantity, row.step, row.printed, row.computed, row.tolerance, row.matches, listed
        );
    }
}

#[test]
fn correct_values_of_the_errata() {
    let ex = compute().unwrap();
    // Monte-Carlo returns on the printed KL_rewards, γ = 0.9: R_t = r_t + 0.9 R_{t+1}.
    let mc = rv(&ex.mc_returns, 6);
    assert_eq!(
        mc,
        vec![-0.056359, -0.0621, -0.068652, -0.076346, -0.078708, -0.082927, -0.085999]
    );
    // R_6 by hand: -5.5275e-03 + 0.9 * -0.085999
    assert!((ex.mc_returns[5] - (-5.5275e-03 + 0.9 * -0.085999)).abs() < 1e-15);
    // GAE advantages and returns at 4 decimals.
    assert_eq!(
        rv(&ex.advantages, 4),
        vec![0.1236, 2.3427, -0.2422, 0.0156, 0.0084, -0.0007, -0.0102]
    );
    assert_eq!(
        rv(&ex.returns, 4),
        vec![-0.1525, -0.0518, -0.0693, -0.0763, -0.0783, -0.0825, -0.0860]
    );
}

#[test]
fn rounding_drift_is_explained_by_four_decimal_chaining() {
    let ex = compute().unwrap();
    let (adv, ret) = document_style_gae(&ex.deltas);
    let printed_adv: Vec<f64> = we::PRINTED_ADVANTAGES
        .iter()
        .map(|s| we::parse(s))
        .collect();
    let printed_ret: Vec<f64> = we::PRINTED_RETURNS.iter().map(|s| we::parse(s)).collect();
    // A_3 .. A_7 (indices 2..7) and R_5, R_6 come out exactly as printed when intermediates are rounded.
    for t in 2..7 {
        assert_eq!(adv[t], printed_adv[t], "A_{}", t + 1);
    }
    assert_eq!(ret[4], printed_ret[4]);
    assert_eq!(ret[5], printed_ret[5]);
    // ... but A_2 and A_1 do not: those two are slips of the document, not rounding.
    assert_ne!(adv[1], printed_adv[1]);
    assert_ne!(adv[0], printed_adv[0]);
}

#[test]
fn kl_stage_is_fp16_arithmetic() {
    let ex = compute().unwrap();
    // In f16 (as the document computed) every printed KL value is reproduced to all printed digits ...
    for (c, p) in ex.kl.iter().zip(we::PRINTED_KL.iter()) {
        assert_eq!(format!("{c:.4e}"), format!("{:.4e}", we::parse(p)));
    }
    assert_eq!(format!("{:.4e}", ex.kl_rewards[6]), "-8.5999e-2");
    // ... while exact arithmetic on the 4-decimal log-probs gives visibly different digits.
    assert_eq!(
        rv(&ex.kl_f64, 7),
        vec![-4.68e-4, -3.12e-4, 6.0e-5, -5.508e-3, -4.072e-3, -5.526e-3, -3.418e-3]
    );
    assert!((ex.kl_rewards_f64[6] - (-3.418e-3 - 0.0826)).abs() < 1e-12);
    // The score −0.0826 lands on the last token only.
    for t in 0..6 {
        assert_eq!(ex.kl_rewards[t], ex.kl[t]);
        assert_eq!(ex.kl_rewards_f64[t], ex.kl_f64[t]);
    }
}

#[test]
fn later_stages_do_not_depend_on_which_kl_rewards_are_used() {
    // Feeding the library's own KL_rewards (from the rounded log-probs) instead of the printed ones
    // changes no advantage or return at the printed 4-decimal precision.
    let ex = compute().unwrap();
    let mask = tch::Tensor::ones([1, 7], (tch::Kind::Bool, tch::Device::Cpu));
    let cfg = rlhf_lab::advantages::GaeConfig {
        gamma: we::GAMMA,
        lam: we::LAMBDA,
        masked_steps: rlhf_lab::advantages::MaskedSteps::Zero,
    };
    let ours = rlhf_lab::advantages::gae(
        &t1(&ex.kl_rewards_f64).unsqueeze(0),
        &t1(&we::VALUES).unsqueeze(0),
        &mask,
        &cfg,
    )
    .unwrap();
    assert!(max_abs_diff(&ours.returns, &t1(&ex.returns).unsqueeze(0)) < 5e-5 * 0.5);
}

#[test]
fn snapshot_worked_example() {
    let ex = compute().unwrap();
    let snap = serde_json::json!({
        "kl_penalty": rv(&ex.kl, 8),
        "kl_rewards": rv(&ex.kl_rewards, 8),
        "mc_returns": rv(&ex.mc_returns, 8),
        "deltas": rv(&ex.deltas, 8),
        "advantages": rv(&ex.advantages, 8),
        "returns": rv(&ex.returns, 8),
    });
    insta::assert_json_snapshot!("seed001_3_2_4_worked_example", snap);
}

#[test]
fn snapshot_comparison_table() {
    let rows: Vec<String> = compare(&compute().unwrap())
        .iter()
        .map(|r| {
            format!(
                "{:<10} t={} printed={:>12} computed={:>13} {}",
                r.quantity,
                r.step,
                r.printed,
                we::format_like(r.printed, r.computed),
                if r.matches { "ok" } else { "ERRATUM" }
            )
        })
        .collect();
    insta::assert_snapshot!("seed001_3_2_4_printed_vs_computed", rows.join("\n"));
}
