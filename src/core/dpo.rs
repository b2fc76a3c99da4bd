//! Direct Preference Optimization and its variants, from sequence log-probabilities.
//!
//! With `h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))` (Rafailov et al. 2023 eq. 7;
//! seed 000 §3.3; seed 002; seed 003 "DPO"), per pair:
//! * sigmoid (DPO), with label smoothing ε (cDPO): `−(1−ε)·logσ(βh) − ε·logσ(−βh)`;
//! * robust (Chowdhury et al. 2024): `(−(1−ε)·logσ(βh) + ε·logσ(−βh)) / (1 − 2ε)`;
//! * IPO (Azar et al. 2023 eq. 17): `(h − 1/(2β))²`, with log-probs averaged per token (TRL) or summed
//!   (OpenRLHF) — [`DpoConfig::ipo_length_normalize`];
//! * hinge (SLiC, Zhao et al. 2023): `relu(1 − βh)`.
//!
//! Implicit rewards `r̂ = β·(log π − log π_ref)` (detached). TRL `DPOTrainer.dpo_loss`, OpenRLHF
//! `DPOLoss`, DeepSpeed-Chat step-2 DPO. Losses are averaged over pairs.

use crate::core::check;
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which DPO-family loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpoVariant {
    Sigmoid,
    Robust,
    Ipo,
    Hinge,
}

/// Options of [`dpo_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// β > 0, the KL-constraint strength.
    pub beta: f64,
    pub variant: DpoVariant,
    /// ε ∈ [0, 0.5): cDPO / robust label-noise rate; must be 0 for IPO and hinge.
    pub label_smoothing: f64,
    /// IPO only: divide each sequence log-prob by its token count (TRL) before forming `h`.
    pub ipo_length_normalize: bool,
}

impl DpoConfig {
    pub fn new(beta: f64, variant: DpoVariant) -> Self {
        DpoConfig {
            beta,
            variant,
            label_smoothing: 0.0,
            ipo_length_normalize: true,
        }
    }
}

/// Sequence log-probabilities of a batch of preference pairs, each (B,): sums over response tokens
/// (e.g. from [`crate::core::logprobs::sequence_log_probs`]). Token counts are needed for length-normalised IPO.
#[derive(Debug)]
pub struct PairLogps<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: &'a Tensor,
    pub ref_chosen: &'a Tensor,
    pub ref_rejected: &'a Tensor,
    pub chosen_lengths: Option<&'a Tensor>,
    pub rejected_lengths: Option<&'a Tensor>,
}

/// Output of [`dpo_loss`].
#[derive(Debug)]
pub struct DpoOutput {
    /// Mean loss over pairs (scalar, with gradient).
    pub loss: Tensor,
    /// (B,) per-pair losses.
    pub losses: Tensor,
    /// (B,) `β·(log π(y_w) − log π_ref(y_w))`, detached (length-normalised for normalised IPO).
    pub chosen_rewards: Tensor,
    /// (B,) `β·(log π(y_l) − log π_ref(y_l))`, detached.
    pub rejected_rewards: Tensor,
    /// Fraction of pairs with chosen reward > rejected reward.
    pub reward_accuracy: Tensor,
    /// Mean of chosen − rejected implicit reward.
    pub reward_margin: Tensor,
}

fn seq(arg: &str, t: &Tensor, like: Option<(&str, &Tensor)>) -> Result<()> {
    check::float(arg, t)?;
    check::ndim(arg, t, 1, "(B,) one sequence log-prob per pair")?;
    check::finite(arg, t)?;
    if let Some((like_arg, like)) = like {
        check::same_shape(like_arg, like, arg, t)?;
    }
    Ok(())
}

fn lengths(arg: &str, t: Option<&Tensor>, like: &Tensor) -> Result<Tensor> {
    let t = t.ok_or_else(|| {
        RlhfError::invalid(arg, "token counts are required for length-normalised IPO")
    })?;
    check::same_shape("policy_chosen", like, arg, t)?;
    let t = t.to_kind(like.kind());
    check::finite(arg, &t)?;
    if t.le(0.0).any().int64_value(&[]) == 1 {
        let rows = Vec::<i64>::try_from(&t.le(0.0).nonzero().flatten(0, -1)).unwrap_or_default();
        return Err(RlhfError::EmptyRows {
            arg: arg.into(),
            rows,
        });
    }
    Ok(t)
}

/// DPO-family loss over a batch of pairs. See the module docs for the formulas.
pub fn dpo_loss(lp: &PairLogps, cfg: &DpoConfig) -> Result<DpoOutput> {
    check::positive("beta", cfg.beta)?;
    check::label_smoothing("label_smoothing", cfg.label_smoothing)?;
    if cfg.label_smoothing > 0.0 && matches!(cfg.variant, DpoVariant::Ipo | DpoVariant::Hinge) {
        return Err(RlhfError::invalid(
            "label_smoothing",
            "label smoothing applies to the sigmoid (cDPO) and robust variants only",
        ));
    }
    seq("policy_chosen", lp.policy_chosen, None)?;
    if lp.policy_chosen.size()[0] == 0 {
        return Err(RlhfError::invalid("policy_chosen", "no pairs (B = 0)"));
    }
    let pc = ("policy_chosen", lp.policy_chosen);
    seq("policy_rejected", lp.policy_rejected, Some(pc))?;
    seq("ref_chosen", lp.ref_chosen, Some(pc))?;
    seq("ref_rejected", lp.ref_rejected, Some(pc))?;

    let normalise = cfg.variant == DpoVariant::Ipo && cfg.ipo_length_normalize;
    let (mut pw, mut pl, mut rw, mut rl) = (
        lp.policy_chosen.shallow_clone(),
        lp.policy_rejected.shallow_clone(),
        lp.ref_chosen.shallow_clone(),
        lp.ref_rejected.shallow_clone(),
    );
    // Out-of-place on purpose: `pw` shares storage with the caller's tensor (`shallow_clone`), and tch's
    // `/=` divides in place — it would overwrite the user's log-probs and break autograd on leaves.
    #[allow(clippy::assign_op_pattern)]
    if normalise {
        let nw = lengths("chosen_lengths", lp.chosen_lengths, lp.policy_chosen)?;
        let nl = lengths("rejected_lengths", lp.rejected_lengths, lp.policy_chosen)?;
        pw = pw / &nw;
        rw = rw / &nw;
        pl = pl / &nl;
        rl = rl / &nl;
    }
    let h = (&pw - &pl) - (&rw - &rl);
    let b = cfg.beta;
    let eps = cfg.label_smoothing;
    let losses = match cfg.variant {
        DpoVariant::Sigmoid => {
            -(&h * b).log_sigmoid() * (1.0 - eps) - (&h * (-b)).log_sigmoid() * eps
        }
        DpoVariant::Robust => {
            (-(&h * b).log_sigmoid() * (1.0 - eps) + (&h * (-b)).log_sigmoid() * eps)
                / (1.0 - 2.0 * eps)
        }
        DpoVariant::Ipo => (&h - 1.0 / (2.0 * b)).square(),
        DpoVariant::Hinge => (-(&h * b) + 1.0).relu(),
    };
    let chosen_rewards = ((&pw - &rw) * b).detach();
    let rejected_rewards = ((&pl - &rl) * b).detach();
    let k = lp.policy_chosen.kind();
    check::finite_output("losses", &losses)?;
    check::finite_output("chosen_rewards", &chosen_rewards)?;
    check::finite_output("rejected_rewards", &rejected_rewards)?;
    let loss = losses.mean(k);
    check::finite_output("loss", &loss)?;
    Ok(DpoOutput {
        loss,
        reward_accuracy: chosen_rewards
            .gt_tensor(&rejected_rewards)
            .to_kind(k)
            .mean(k),
        reward_margin: (&chosen_rewards - &rejected_rewards).mean(k),
        losses,
        chosen_rewards,
        rejected_rewards,
    })
}

/// The per-pair weight of the DPO gradient, `σ(r̂_l − r̂_w)` with `r̂ = β·log(π/π_ref)` (Rafailov et al.
/// 2023 §4 "What does the DPO update do?"; seed 002): how wrongly the implicit reward model orders the
/// pair. `∇_θ L = −β·mean_b[σ(r̂_l − r̂_w)·(∇ log π(y_w) − ∇ log π(y_l))]`. Shapes (B,) → (B,).
pub fn dpo_gradient_weight(lp: &PairLogps, beta: f64) -> Result<Tensor> {
    let out = dpo_loss(lp, &DpoConfig::new(beta, DpoVariant::Sigmoid))?;
    Ok((&out.rejected_rewards - &out.chosen_rewards).sigmoid())
}

/// Preferred-FT baseline (seed 002; Rafailov et al. 2023 §6): supervised NLL on the chosen response only.
/// With token counts: mean over pairs of the per-token NLL `−log π(y_w)/|y_w|`; without: of `−log π(y_w)`.
pub fn preferred_ft_loss(
    policy_chosen: &Tensor,
    chosen_lengths: Option<&Tensor>,
) -> Result<Tensor> {
    seq("policy_chosen", policy_chosen, None)?;
    if policy_chosen.size()[0] == 0 {
        return Err(RlhfError::invalid("policy_chosen", "no pairs (B = 0)"));
    }
    let nll = match chosen_lengths {
        Some(_) => -(policy_chosen / lengths("chosen_lengths", chosen_lengths, policy_chosen)?),
        None => -policy_chosen,
    };
    let loss = nll.mean(policy_chosen.kind());
    check::finite_output("loss", &loss)?;
    Ok(loss)
}

/// `log(1 − exp(x))` for x < 0, stable at both ends (Mächler 2012).
pub(crate) fn log1mexp(x: &Tensor) -> Tensor {
    let near_zero = x.gt(-std::f64::consts::LN_2);
    let a = (-x.expm1()).log();
    let b = (-x.exp()).log1p();
    a.where_self(&near_zero, &b)
}

/// Unlikelihood baseline (seed 002; Rafailov et al. 2023 §6, after Welleck et al. 2019): raise the
/// probability of y_w and lower that of y_l, the unlikelihood term weighted by α ∈ [0, 1]:
/// `mean_b[ −log π(y_w) − α·log(1 − π(y_l)) ]`. Shapes (B,). `policy_rejected` must be < 0
/// (π(y_l) < 1), otherwise the unlikelihood term is infinite.
pub fn unlikelihood_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    alpha: f64,
) -> Result<Tensor> {
    check::in_unit_interval("alpha", alpha)?;
    seq("policy_chosen", policy_chosen, None)?;
    seq(
        "policy_rejected",
        policy_rejected,
        Some(("policy_chosen", policy_chosen)),
    )?;
    if policy_chosen.size()[0] == 0 {
        return Err(RlhfError::invalid("policy_chosen", "no pairs (B = 0)"));
    }
    if policy_rejected.ge(0.0).any().int64_value(&[]) == 1 {
        return Err(RlhfError::invalid(
            "policy_rejected",
            "log π(y_l) must be < 0 (a probability of 1 makes −log(1 − π) infinite)",
        ));
    }
    let k = policy_chosen.kind();
    let loss = (-policy_chosen - log1mexp(policy_rejected) * alpha).mean(k);
    check::finite_output("loss", &loss)?;
    Ok(loss)
}
