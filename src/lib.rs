//! # rlhf-lab
//!
//! Exact, tested primitives for preference learning on libtorch (`tch`): token log-probs, KL estimators,
//! KL-shaped rewards, returns and GAE, PPO losses, Bradley–Terry reward-model losses, DPO and its
//! variants, group baselines — each a pure, mask-aware function over `tch::Tensor` (f32/f64, any device)
//! that validates its input and returns a typed [`RlhfError`] instead of panicking or producing NaN.
//!
//! Stacks disagree on details; [`conventions`] names every such choice and ships presets that reproduce
//! TRL, DeepSpeed-Chat, OpenRLHF and verl.

pub mod advantages;
pub mod check;
pub mod error;
pub mod kl;
pub mod logprobs;
pub mod masked;
pub mod rewards;

pub use error::{Result, RlhfError};
pub mod calc;
pub mod conventions;
pub mod data;
pub mod dpo;
pub mod experience;
pub mod generate;
pub mod io;
pub mod json;
pub mod model;
#[cfg(feature = "notebook")]
pub mod notebook;
pub mod ppo;
pub mod report;
pub mod reward;
pub mod reward_model;
pub mod rng;
pub mod tokenizer;
pub mod toy;
pub mod train;
pub mod worked_example;
