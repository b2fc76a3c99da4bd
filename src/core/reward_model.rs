//! Bradley–Terry reward-model losses.
//!
//! `P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r))` (Bradley & Terry 1952; seed 000 §1.3; seed 001 §3.1.2;
//! seed 003 `Loss = −logsigmoid(score_chosen − score_rejected)`). TRL `RewardTrainer`, OpenRLHF
//! `PairWiseLoss`: `−logσ(r_c − r_r − margin).mean()`; TRL `center_rewards_coefficient`:
//! `+ coef·mean((r_c + r_r)²)` (Eisenstein et al. 2023). InstructGPT eq. 1 (Ouyang et al. 2022): K ranked
//! responses per prompt give C(K, 2) pairs, each prompt's loss normalised by C(K, 2).

use crate::core::check;
use crate::error::{Result, RlhfError};
use tch::{Kind, Tensor};

fn pair(chosen: &Tensor, rejected: &Tensor) -> Result<()> {
    check::float("chosen", chosen)?;
    check::ndim("chosen", chosen, 1, "(B,) one scalar reward per pair")?;
    check::float("rejected", rejected)?;
    check::same_shape("chosen", chosen, "rejected", rejected)?;
    check::finite("chosen", chosen)?;
    check::finite("rejected", rejected)?;
    if chosen.size()[0] == 0 {
        return Err(RlhfError::invalid("chosen", "no pairs (B = 0)"));
    }
    Ok(())
}

/// Output of [`pairwise_loss`].
#[derive(Debug)]
pub struct PairwiseOutput {
    /// Mean over pairs of `−logσ(r_c − r_r − m)`, plus the centering term.
    pub loss: Tensor,
    /// (B,) per-pair `−logσ(r_c − r_r − m)`.
    pub losses: Tensor,
    /// The centering term `coef·mean((r_c + r_r)²)` that was added (0 when coef = 0).
    pub centering: Tensor,
    /// Fraction of pairs with `r_c > r_r` strictly (ties count as wrong, as in DeepSpeed-Chat).
    pub accuracy: Tensor,
}

/// Pairwise Bradley–Terry loss. Shapes: `chosen`, `rejected` (B,); `margin` (B,) optional
/// (Llama-2's preference-strength margin). `center_coef ≥ 0`.
pub fn pairwise_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    center_coef: f64,
) -> Result<PairwiseOutput> {
    pair(chosen, rejected)?;
    check::non_negative("center_coef", center_coef)?;
    let mut diff = chosen - rejected;
    if let Some(m) = margin {
        check::float("margin", m)?;
        check::same_shape("chosen", chosen, "margin", m)?;
        check::finite("margin", m)?;
        diff = &diff - m;
    }
    let losses = -diff.log_sigmoid();
    let centering = (chosen + rejected).square().mean(chosen.kind()) * center_coef;
    let loss = losses.mean(chosen.kind()) + &centering;
    check::finite_output("losses", &losses)?;
    check::finite_output("loss", &loss)?;
    let accuracy = pairwise_accuracy(chosen, rejected)?;
    Ok(PairwiseOutput {
        loss,
        losses,
        centering,
        accuracy,
    })
}

/// Fraction of pairs ranked correctly, `mean(r_c > r_r)` (strict). Shapes (B,) → scalar.
pub fn pairwise_accuracy(chosen: &Tensor, rejected: &Tensor) -> Result<Tensor> {
    pair(chosen, rejected)?;
    Ok(chosen
        .gt_tensor(rejected)
        .to_kind(chosen.kind())
        .mean(chosen.kind())
        .detach())
}

/// InstructGPT K-wise loss. `rewards` (P, K): row p holds the rewards of prompt p's K responses in
/// labeller-rank order, best first. Loss `= mean_p [ −1/C(K,2) Σ_{i<j} logσ(r_{p,i} − r_{p,j}) ]`.
/// For K = 2 this equals [`pairwise_loss`] on (column 0, column 1).
pub fn kwise_loss(rewards: &Tensor) -> Result<Tensor> {
    check::float("rewards", rewards)?;
    check::ndim(
        "rewards",
        rewards,
        2,
        "(P, K): K ranked responses per prompt, best first",
    )?;
    check::finite("rewards", rewards)?;
    let (p, k) = rewards.size2()?;
    if k < 2 || p == 0 {
        return Err(RlhfError::invalid(
            "rewards",
            format!("need P ≥ 1 prompts with K ≥ 2 ranked responses each, got P = {p}, K = {k}"),
        ));
    }
    // diff[p, i, j] = r_{p,i} − r_{p,j}; keep i < j (i ranked above j).
    let diff = rewards.unsqueeze(2) - rewards.unsqueeze(1);
    let upper = Tensor::ones([k, k], (Kind::Bool, rewards.device())).triu(1);
    let pairs = (k * (k - 1) / 2) as f64;
    let per_prompt = (-diff.log_sigmoid())
        .where_self(&upper, &diff.zeros_like())
        .sum_dim_intlist(&[1i64, 2][..], false, rewards.kind())
        / pairs;
    let loss = per_prompt.mean(rewards.kind());
    check::finite_output("loss", &loss)?;
    Ok(loss)
}
