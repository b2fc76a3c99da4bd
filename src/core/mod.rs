//! Layer 1, the numerics core: pure, mask-aware functions over `tch::Tensor` (f32/f64, any device). No
//! file I/O, no `nn` modules, no models: every function takes tensors and hyper-parameters, validates
//! them ([`check`]) and returns tensors or a typed [`crate::RlhfError`].

pub mod advantages;
pub mod check;
pub mod conventions;
pub mod dpo;
pub mod experience;
pub mod kl;
pub mod kl_shaping;
pub mod logprobs;
pub mod masked;
pub mod ppo;
pub mod ppo_objective;
pub mod reward_model;
