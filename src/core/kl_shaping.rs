//! KL-shaped per-token rewards: `r_t = −kl_coef · KL_t`, plus the (clipped) sequence score on one step.
//!
//! Sources: seed 001 §3.2.4 (`KL = −kl_ctl·(log_probs − ref_log_probs)`, score added at the last valid
//! token → `KL_rewards`); seed 003 "PPO 涉及的模型" (reward = −0.2·KL + score); DeepSpeed-Chat
//! `compute_rewards`; TRL `PPOTrainer.compute_rewards` / PPOv2 `rewards[[actual_start, actual_end]] += scores`;
//! OpenRLHF `compute_reward`; verl `apply_kl_penalty`; Ziegler et al. 2019 eq. 2.

use crate::core::check;
use crate::core::kl::{kl_per_token, KlConfig};
use crate::core::masked::EmptyRows;
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// On which step the sequence score lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScorePlacement {
    /// The last response token whose mask is 1 (seed 001 §3.2.4, OpenRLHF, verl).
    LastResponseToken,
    /// The step after the last response token, or the last token when the response fills the row
    /// (TRL PPOv2 `sequence_lengths_p1`; DeepSpeed-Chat `rewards[j, start:ends[j]][-1]` with
    /// `ends = start + n + 1`). That step is added to the returned reward mask so GAE sees it.
    AfterLastResponseToken,
}

/// Options of [`kl_shaped_rewards`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardShapingConfig {
    /// β of the KL penalty (seed 001: `kl_ctl = 0.02`; seed 003: 0.2).
    pub kl_coef: f64,
    pub kl: KlConfig,
    pub score_placement: ScorePlacement,
    /// Clip the score to `[−c, c]` before adding it (DeepSpeed-Chat `clip_reward_value = 5`, OpenRLHF).
    pub score_clip: Option<f64>,
    /// With `AfterLastResponseToken`: the score step also carries its own KL term `−β·KL` (DeepSpeed-Chat
    /// `compute_rewards` penalises every position up to `ends`, the pad slot that receives the score
    /// included), so `log_probs` and `ref_log_probs` must be finite there. False: only response tokens
    /// are penalised.
    #[serde(default)]
    pub kl_on_score_slot: bool,
    /// A row with zero response tokens: `Error`, or `Ignore` — its score still lands (OpenRLHF
    /// `compute_reward` and verl's reward manager put it on the last column, `T − 1 − argmax(0…)` /
    /// index `−1`; after-last placement puts it on step 0, DeepSpeed-Chat's `start + 0`), and no KL.
    #[serde(default = "error_rows")]
    pub empty_rows: EmptyRows,
}

fn error_rows() -> EmptyRows {
    EmptyRows::Error
}

/// Output of [`kl_shaped_rewards`].
#[derive(Debug)]
pub struct ShapedRewards {
    /// (B, T) per-step rewards; 0 outside `mask`.
    pub rewards: Tensor,
    /// (B, T) the per-token KL estimate that was penalised (0 where not penalised).
    pub kl: Tensor,
    /// (B, T) bool: steps that carry reward — the response mask, plus the score step when it lies after
    /// the response. Pass this mask to GAE.
    pub mask: Tensor,
    /// (B,) int64 index of the step that received the score.
    pub score_index: Tensor,
}

/// Index of the last set entry of each row of a (B, T) bool mask (rows must be non-empty).
pub(crate) fn last_index(m: &Tensor) -> Tensor {
    let t = m.size()[1];
    let flipped_first = m.to_kind(Kind::Int64).fliplr().argmax(-1, false);
    -flipped_first + (t - 1)
}

/// KL-shaped rewards.
///
/// Shapes: `log_probs`, `ref_log_probs`, `mask` (B, T) response-aligned (mask = 1 on response tokens,
/// 0 on prompt and padding, any padding side); `scores` (B,). Per token
/// `r_t = −kl_coef · KL_t` on masked-in tokens (and on the score step with `kl_on_score_slot`), then
/// `r[b, i_b] += clip(score_b)` at the placement index. A row with zero response tokens is an error, or
/// follows OpenRLHF / verl with `empty_rows = Ignore` (see [`RewardShapingConfig::empty_rows`]); the
/// returned reward mask of such a row holds only an after-last score step (a last-column score of an
/// empty row is not a step: OpenRLHF and verl mask it out of GAE).
pub fn kl_shaped_rewards(
    log_probs: &Tensor,
    ref_log_probs: &Tensor,
    mask: &Tensor,
    scores: &Tensor,
    cfg: &RewardShapingConfig,
) -> Result<ShapedRewards> {
    check::non_negative("kl_coef", cfg.kl_coef)?;
    if let Some(c) = cfg.score_clip {
        check::positive("score_clip", c)?;
    }
    check::float("log_probs", log_probs)?;
    check::ndim("log_probs", log_probs, 2, "(B, T)")?;
    // Validates both log-prob tensors and the mask; 0 at masked positions.
    let kl = kl_per_token(log_probs, ref_log_probs, mask, &cfg.kl)?;
    let m = check::mask("mask", mask, "log_probs", log_probs)?;
    let (b, t) = log_probs.size2()?;
    check::float_shaped("scores", scores, &[b], "one score per row")?;
    check::finite("scores", scores)?;
    if cfg.empty_rows == EmptyRows::Error {
        check::no_empty_rows("mask", &m)?;
    }
    if t == 0 && b > 0 {
        return Err(RlhfError::invalid(
            "mask",
            "rows of length 0 have no step to put the score on",
        ));
    }

    let has_tokens = m.any_dim(-1, false);
    let last = last_index(&m);
    let score_index = match cfg.score_placement {
        // An empty row: `T − 1` (OpenRLHF `size(1) − 1 − argmax`, verl `[valid_length − 1]` = `[−1]`).
        ScorePlacement::LastResponseToken => last.where_self(&has_tokens, &last.full_like(t - 1)),
        // An empty row: step 0 (DeepSpeed-Chat `start + n`, TRL `sequence_lengths + 1`, with n = 0).
        ScorePlacement::AfterLastResponseToken => (last + 1)
            .clamp_max(t - 1)
            .where_self(&has_tokens, &Tensor::from(0i64)),
    };
    let idx = score_index.to_device(m.device()).unsqueeze(-1);
    let placed = Tensor::zeros([b, t], (Kind::Bool, m.device())).scatter_value(1, &idx, 1);
    let reward_mask = match cfg.score_placement {
        ScorePlacement::LastResponseToken => m.shallow_clone(),
        ScorePlacement::AfterLastResponseToken => m.logical_or(&placed),
    };
    // DeepSpeed-Chat: the score slot carries its own KL term too.
    let kl =
        if cfg.kl_on_score_slot && cfg.score_placement == ScorePlacement::AfterLastResponseToken {
            kl_per_token(log_probs, ref_log_probs, &reward_mask, &cfg.kl)?
        } else {
            kl
        };

    // `+ 0.0` turns the −0.0 of `−β·0` into +0.0 (cosmetic in JSON; exact for every other value).
    let mut rewards = &kl * (-cfg.kl_coef) + 0.0;
    let score = match cfg.score_clip {
        Some(c) => scores.clamp(-c, c),
        None => scores.shallow_clone(),
    }
    .to_kind(rewards.kind())
    .to_device(rewards.device());
    rewards = rewards.scatter_add(1, &idx.to_device(rewards.device()), &score.unsqueeze(-1));
    check::finite_output("rewards", &rewards)?;
    Ok(ShapedRewards {
        rewards,
        kl,
        mask: reward_mask,
        score_index,
    })
}
