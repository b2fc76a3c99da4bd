//! # rlhf-lab
//!
//! Exact, tested primitives for preference learning on libtorch (`tch`): token log-probs, KL estimators,
//! KL-shaped rewards, returns and GAE, PPO losses, Bradley–Terry reward-model losses, DPO and its
//! variants, group baselines — each a pure, mask-aware function over `tch::Tensor` (f32/f64, any device)
//! that validates its input and returns a typed [`RlhfError`] instead of panicking or producing NaN.
//!
//! Stacks disagree on details; [`conventions`] names every such choice and ships presets that reproduce
//! TRL, DeepSpeed-Chat, OpenRLHF and verl.
//!
//! See `ARCHITECTURE.md` for the layer map.

// Foundation, used by every layer.
pub mod alloc;
pub mod error;
pub mod io;
pub mod rng;

// Layers, lowest first. A module imports only from its own layer and the ones above it in this list.
pub mod cli;
pub mod core;
pub mod data;
pub mod ground_truth;
pub mod model;
#[cfg(feature = "notebook")]
pub mod notebook;
pub mod pipeline;
pub mod toy;
pub mod train;

pub use error::{Result, RlhfError};

// Short paths for notebooks and user code: `rlhf_lab::advantages::gae`, `rlhf_lab::generate::generate`, …
pub use crate::core::{
    advantages, check, conventions, dpo, experience, kl, kl_shaping, logprobs, masked, ppo,
    reward_model,
};
pub use cli::calc;
pub use model::{generate, tokenizer};
pub use toy::worked_example;
