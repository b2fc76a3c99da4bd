//! One PPO experience step under a set of [`Conventions`]: KL-shaped rewards → GAE → (whitened)
//! advantages and returns. This is DeepSpeed-Chat `compute_rewards` + `get_advantages_and_returns`, TRL
//! PPOTrainer's reward/advantage block, and verl `apply_kl_penalty` + `compute_gae_advantage_return`,
//! as one documented function (seed 003 "PPO 训练伪代码": `rewards = compute_rewards(scores, kls)`,
//! `advantages = compute_advantages(values, rewards)`, `returns = advantages + values`).

use crate::core::advantages::gae;
use crate::core::conventions::Conventions;
use crate::core::kl_shaping::kl_shaped_rewards;
use crate::core::masked::{masked_whiten_unchecked, zero_masked};
use crate::error::Result;
use tch::Tensor;

/// Output of [`ppo_experience`]; all (B, T).
#[derive(Debug)]
pub struct Experience {
    pub rewards: Tensor,
    /// Steps that carry reward (response + score step): the mask for GAE, returns and the value loss.
    pub reward_mask: Tensor,
    pub kl: Tensor,
    /// Advantages on response tokens (whitened over them when the conventions say so), 0 elsewhere.
    pub advantages: Tensor,
    /// `A + V` (before whitening) on `reward_mask`.
    pub returns: Tensor,
}

/// Shapes: `log_probs`, `ref_log_probs`, `values`, `mask` (B, T) response-aligned; `scores` (B,).
/// `values` must be finite on the score step too when it lies after the response (and `log_probs`,
/// `ref_log_probs` with `kl_on_score_slot`, DeepSpeed-Chat).
pub fn ppo_experience(
    log_probs: &Tensor,
    ref_log_probs: &Tensor,
    values: &Tensor,
    scores: &Tensor,
    mask: &Tensor,
    conv: &Conventions,
) -> Result<Experience> {
    let shaped = kl_shaped_rewards(
        log_probs,
        ref_log_probs,
        mask,
        scores,
        &conv.reward_config(),
    )?;
    let ar = gae(&shaped.rewards, values, &shaped.mask, &conv.gae_config())?;
    let response = crate::core::check::mask("mask", mask, "log_probs", log_probs)?;
    let advantages = if conv.whiten_advantages {
        masked_whiten_unchecked(&ar.advantages, &response, conv.whiten_config())?
    } else {
        zero_masked(&ar.advantages, &response)
    };
    crate::core::check::finite_output("advantages", &advantages)?;
    Ok(Experience {
        rewards: shaped.rewards,
        reward_mask: shaped.mask,
        kl: shaped.kl,
        advantages,
        returns: ar.returns,
    })
}
