//! The PPO objective on one minibatch of experience, as one function shared by every PPO loop (the
//! language-model trainer `train::ppo` and the notebook's toy loop `toy::ppo_loop`): the clipped
//! surrogate ([`policy_loss`], Schulman et al. 2017 eq. 7), the clipped value loss ([`value_loss`], seed
//! 003 `vf_loss`), the entropy bonus and their sum ([`total_loss`], eq. 9:
//! `pg_loss + vf_coef·vf_loss − entropy_coef·H`), each under the conventions of a preset.

use crate::core::conventions::Conventions;
use crate::core::ppo::{
    entropy_bonus, policy_loss, total_loss, value_loss, PolicyLossOutput, ValueLossOutput,
};
use crate::error::Result;
use tch::Tensor;

/// One minibatch: all `(B, T)`, response-aligned.
#[derive(Debug)]
pub struct PpoMinibatch<'a> {
    /// log π_θ of the sampled tokens, with gradient.
    pub log_probs: &'a Tensor,
    /// Per-token entropy of π_θ, with gradient ([`crate::core::logprobs::entropy`]).
    pub entropy: &'a Tensor,
    /// Values of the critic being trained, with gradient.
    pub values: &'a Tensor,
    /// The experience: log π_old (the policy that sampled), V_old, advantages, returns.
    pub old_log_probs: &'a Tensor,
    pub old_values: &'a Tensor,
    pub advantages: &'a Tensor,
    pub returns: &'a Tensor,
    /// Response tokens (the policy and entropy terms).
    pub response_mask: &'a Tensor,
    /// Steps that carry reward ([`crate::core::experience::Experience::reward_mask`]: the value loss).
    pub reward_mask: &'a Tensor,
}

/// The objective and its parts.
#[derive(Debug)]
pub struct PpoObjective {
    /// `pg + vf_coef·vf − entropy_coef·H` (scalar, with gradient).
    pub loss: Tensor,
    pub policy: PolicyLossOutput,
    pub value: ValueLossOutput,
    /// The aggregated entropy `H` (scalar, with gradient).
    pub entropy: Tensor,
}

/// The PPO loss of a minibatch under `conv` (its policy-loss, value-loss and aggregation settings).
pub fn ppo_objective(
    mb: &PpoMinibatch,
    conv: &Conventions,
    vf_coef: f64,
    entropy_coef: f64,
) -> Result<PpoObjective> {
    let policy = policy_loss(
        mb.log_probs,
        mb.old_log_probs,
        mb.advantages,
        mb.response_mask,
        &conv.policy_loss_config(),
    )?;
    let value = value_loss(
        mb.values,
        mb.old_values,
        mb.returns,
        mb.reward_mask,
        &conv.value_loss_config(),
    )?;
    let entropy = entropy_bonus(mb.entropy, mb.response_mask, conv.loss_agg, conv.empty_rows)?;
    let loss = total_loss(&policy.loss, &value.loss, &entropy, vf_coef, entropy_coef)?;
    Ok(PpoObjective {
        loss,
        policy,
        value,
        entropy,
    })
}
