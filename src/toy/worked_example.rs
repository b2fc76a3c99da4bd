//! Seed document 001 §3.2.4: the complete worked example of KL-shaped rewards, Monte-Carlo returns,
//! TD errors, GAE advantages and returns for `seq = [i am learning machine learning with julyedu]`
//! (DeepSpeed-Chat conventions, score on the last token, γ = 0.9, λ = 0.95, kl_ctl = 0.02).
//!
//! The document prints every intermediate. [`compare`] checks each printed number against the library at
//! the number's printed precision and classifies it as a match or an erratum.
//!
//! Precision: the document's KL stage was computed in **fp16** (DeepSpeed-Chat trains in fp16): its
//! `−4.6873e-04` needs more digits than `−12.0938 + 12.1172` has in exact arithmetic, yet running the
//! library's `kl_shaped_rewards` on the printed log-probs as f16 tensors reproduces all seven printed KL
//! values and the final `−8.5999e-02` digit for digit. So the KL stage is computed in f16 here (the f64
//! values are kept alongside), and later stages take the document's printed `KL_rewards` and `values` as
//! exact f64 inputs, which is how the document itself computed them. Every printed number is then checked
//! to half a unit of its last printed digit.

use crate::core::advantages::{discounted_returns, gae, td, GaeConfig, MaskedSteps};
use crate::core::kl::{KlConfig, KlEstimator};
use crate::core::kl_shaping::{kl_shaped_rewards, RewardShapingConfig, ScorePlacement};
use crate::error::Result;
use serde::Serialize;
use tch::{Kind, Tensor};

pub const KL_CTL: f64 = 0.02;
pub const REWARD_SCORE: f64 = -0.0826;
pub const GAMMA: f64 = 0.9;
pub const LAMBDA: f64 = 0.95;
pub const LOG_PROBS: [f64; 7] = [
    -12.0938, -20.1250, -1.3477, -1.8945, -0.9966, -0.5142, -1.4902,
];
pub const REF_LOG_PROBS: [f64; 7] = [
    -12.1172, -20.1406, -1.3447, -2.1699, -1.2002, -0.7905, -1.6611,
];
pub const VALUES: [f64; 7] = [-0.2761, -2.3945, 0.1729, -0.0919, -0.0867, -0.0818, -0.0758];

/// Numbers as printed by the document, as text (their precision is part of the claim).
pub const PRINTED_KL: [&str; 7] = [
    "-4.6873e-04",
    "-3.1257e-04",
    "5.8591e-05",
    "-5.5084e-03",
    "-4.0741e-03",
    "-5.5275e-03",
    "-3.4180e-03",
];
pub const PRINTED_KL_REWARDS: [&str; 7] = [
    "-4.6873e-04",
    "-3.1257e-04",
    "5.8591e-05",
    "-5.5084e-03",
    "-4.0741e-03",
    "-5.5275e-03",
    "-8.5999e-02",
];
pub const PRINTED_MC_RETURNS: [&str; 7] = [
    "-0.0",
    "-0.0",
    "-0.0",
    "-0.0",
    "-0.078293",
    "-0.08277",
    "-0.086",
];
pub const PRINTED_DELTAS: [&str; 7] = [
    "-1.8794", "2.5498", "-0.2556", "0.0084", "0.0090", "0.0081", "-0.0102",
];
pub const PRINTED_ADVANTAGES: [&str; 7] = [
    "0.1216", "2.3426", "-0.2422", "0.0157", "0.0085", "-0.0006", "-0.0102",
];
pub const PRINTED_RETURNS: [&str; 7] = [
    "-0.1525", "-0.0518", "-0.0693", "-0.0763", "-0.0782", "-0.0824", "-0.0860",
];

/// Printed numbers that the library shows to be wrong, as (quantity, 1-based step, cause).
pub const ERRATA: [(&str, usize, &str); 13] = [
    ("mc_returns", 1, "arithmetic: printed -0.0"),
    ("mc_returns", 2, "arithmetic: printed -0.0"),
    ("mc_returns", 3, "arithmetic: printed -0.0"),
    ("mc_returns", 4, "arithmetic: printed -0.0"),
    ("mc_returns", 5, "arithmetic: propagated from R_6"),
    (
        "mc_returns",
        6,
        "arithmetic: -5.5275e-03 + 0.9·(-0.086) is -0.0829275",
    ),
    (
        "advantages",
        1,
        "typo: the document's own R_1 line uses 0.1236",
    ),
    ("advantages", 2, "slip: even its 4-dp chain gives 2.3427"),
    (
        "advantages",
        4,
        "4-dp rounding of intermediates carried through the recursion",
    ),
    (
        "advantages",
        5,
        "4-dp rounding of intermediates carried through the recursion",
    ),
    (
        "advantages",
        6,
        "4-dp rounding of intermediates carried through the recursion",
    ),
    ("returns", 5, "inherits A_5's rounding drift"),
    ("returns", 6, "inherits A_6's rounding drift"),
];

/// Everything the library computes for the example (f64, one row).
#[derive(Debug, Clone, Serialize)]
pub struct WorkedExample {
    /// `−kl_ctl·(log_probs − ref_log_probs)` from the printed log-probs, in f16 like the document.
    pub kl: Vec<f64>,
    /// `−kl_ctl·KL`, score added on the last token — f16, like the document.
    pub kl_rewards: Vec<f64>,
    /// The same two in exact (f64) arithmetic on the printed 4-decimal log-probs.
    pub kl_f64: Vec<f64>,
    pub kl_rewards_f64: Vec<f64>,
    /// Rewards-to-go on the document's printed `KL_rewards`.
    pub mc_returns: Vec<f64>,
    /// TD errors δ_t on the printed `KL_rewards` and `values`.
    pub deltas: Vec<f64>,
    pub advantages: Vec<f64>,
    pub returns: Vec<f64>,
}

fn row(x: &[f64]) -> Tensor {
    Tensor::from_slice(x).to_kind(Kind::Double).unsqueeze(0)
}

fn vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.flatten(0, -1)).expect("f64 tensor")
}

/// Parse a printed number.
pub fn parse(s: &str) -> f64 {
    s.parse().expect("printed constants are valid numbers")
}

/// Decimals of the mantissa and the exponent of a printed number (`"-4.6873e-04"` → (4, Some(-4)),
/// `"-0.0826"` → (4, None)).
fn printed_precision(s: &str) -> (usize, Option<i32>) {
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.parse::<i32>().expect("exponent"))),
        None => (s, None),
    };
    (
        mantissa.split_once('.').map(|(_, f)| f.len()).unwrap_or(0),
        exp,
    )
}

/// Half a unit in the last printed digit of `s` (`"-0.0826"` → 5e-5, `"-4.6873e-04"` → 5e-9).
pub fn half_ulp(s: &str) -> f64 {
    let (decimals, exp) = printed_precision(s);
    0.5 * 10f64.powi(exp.unwrap_or(0) - decimals as i32)
}

/// The document's printed `KL_rewards` as numbers.
pub fn printed_kl_rewards() -> Vec<f64> {
    PRINTED_KL_REWARDS.iter().map(|s| parse(s)).collect()
}

/// Run the example through the library.
pub fn compute() -> Result<WorkedExample> {
    let mask = Tensor::ones([1, 7], (Kind::Bool, tch::Device::Cpu));
    let cfg = RewardShapingConfig {
        kl_coef: KL_CTL,
        kl: KlConfig::new(KlEstimator::K1),
        score_placement: ScorePlacement::LastResponseToken,
        score_clip: None,
        kl_on_score_slot: false,
        empty_rows: crate::core::masked::EmptyRows::Error,
    };
    let shaped_in = |kind: Kind| -> Result<(Tensor, Tensor)> {
        let s = kl_shaped_rewards(
            &row(&LOG_PROBS).to_kind(kind),
            &row(&REF_LOG_PROBS).to_kind(kind),
            &mask,
            &Tensor::from_slice(&[REWARD_SCORE]).to_kind(kind),
            &cfg,
        )?;
        Ok((s.kl * -KL_CTL, s.rewards))
    };
    let (kl16, rewards16) = shaped_in(Kind::Half)?;
    let (kl64, rewards64) = shaped_in(Kind::Double)?;
    let rewards = row(&printed_kl_rewards());
    let values = row(&VALUES);
    let gae_cfg = GaeConfig {
        gamma: GAMMA,
        lam: LAMBDA,
        masked_steps: MaskedSteps::Zero,
    };
    let mc = discounted_returns(&rewards, &mask, GAMMA, MaskedSteps::Zero)?;
    let tdo = td(&rewards, &values, &mask, GAMMA, MaskedSteps::Zero)?;
    let ar = gae(&rewards, &values, &mask, &gae_cfg)?;
    Ok(WorkedExample {
        kl: vec(&kl16.to_kind(Kind::Double)),
        kl_rewards: vec(&rewards16.to_kind(Kind::Double)),
        kl_f64: vec(&kl64),
        kl_rewards_f64: vec(&rewards64),
        mc_returns: vec(&mc),
        deltas: vec(&tdo.deltas),
        advantages: vec(&ar.advantages),
        returns: vec(&ar.returns),
    })
}

/// One printed number checked against the library.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub quantity: &'static str,
    /// 1-based step, as the document numbers them.
    pub step: usize,
    pub printed: &'static str,
    pub computed: f64,
    /// Allowed |computed − printed|: half a unit of the last printed digit.
    pub tolerance: f64,
    pub matches: bool,
}

/// Every printed number of the example, checked to half a unit of its last printed digit.
pub fn compare(ex: &WorkedExample) -> Vec<Comparison> {
    let series: [(&'static str, &[&'static str; 7], &Vec<f64>); 6] = [
        ("kl_penalty", &PRINTED_KL, &ex.kl),
        ("kl_rewards", &PRINTED_KL_REWARDS, &ex.kl_rewards),
        ("mc_returns", &PRINTED_MC_RETURNS, &ex.mc_returns),
        ("deltas", &PRINTED_DELTAS, &ex.deltas),
        ("advantages", &PRINTED_ADVANTAGES, &ex.advantages),
        ("returns", &PRINTED_RETURNS, &ex.returns),
    ];
    let mut out = Vec::new();
    for (quantity, printed, computed) in series {
        for (i, (p, c)) in printed.iter().zip(computed.iter()).enumerate() {
            let tolerance = half_ulp(p) * (1.0 + 1e-9);
            out.push(Comparison {
                quantity,
                step: i + 1,
                printed: p,
                computed: *c,
                tolerance,
                matches: (c - parse(p)).abs() <= tolerance,
            });
        }
    }
    out
}

/// Redo the document's GAE by hand the way it did: δ rounded to 4 decimals, and each A_t rounded to 4
/// decimals before it enters A_{t−1}. Returns (advantages, returns), both rounded to 4 decimals.
/// This reproduces the printed A_4…A_6 and R_5, R_6, and shows where their last digits come from.
pub fn document_style_gae(deltas: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let r4 = |x: f64| (x * 1e4).round() / 1e4;
    let mut adv = vec![0.0; deltas.len()];
    let mut carry = 0.0;
    for t in (0..deltas.len()).rev() {
        carry = r4(r4(deltas[t]) + GAMMA * LAMBDA * carry);
        adv[t] = carry;
    }
    let ret = adv
        .iter()
        .zip(VALUES.iter())
        .map(|(a, v)| r4(a + v))
        .collect();
    (adv, ret)
}

/// Format `value` in the notation of `printed` with one more digit, for side-by-side tables
/// and at least 5 decimals (`"-4.6873e-04"` → `-4.68730e-4`, `"-0.0826"` → `-0.08260`).
pub fn format_like(printed: &str, value: f64) -> String {
    match printed_precision(printed) {
        (d, Some(_)) => format!("{value:.*e}", d + 1),
        (d, None) => format!("{value:.*}", (d + 1).max(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_ulp_reads_the_printed_precision() {
        assert_eq!(half_ulp("-0.0826"), 5e-5);
        assert!((half_ulp("-4.6873e-04") - 5e-9).abs() < 1e-24);
        assert!((half_ulp("5.8591e-05") - 5e-10).abs() < 1e-25);
        assert_eq!(half_ulp("-0.0"), 0.05);
        assert_eq!(half_ulp("-0.086"), 5e-4);
        assert_eq!(half_ulp("3"), 0.5);
    }

    #[test]
    fn format_like_adds_one_digit_in_the_same_notation() {
        assert_eq!(format_like("-4.6873e-04", -4.687312e-4), "-4.68731e-4");
        assert_eq!(format_like("-0.0826", -0.0826), "-0.08260");
        assert_eq!(format_like("-0.0", -0.05635855), "-0.05636");
    }

    #[test]
    fn errata_list_is_sorted_and_unique() {
        let keys: Vec<(&str, usize)> = ERRATA.iter().map(|(q, s, _)| (*q, *s)).collect();
        let mut sorted = keys.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len());
    }
}
