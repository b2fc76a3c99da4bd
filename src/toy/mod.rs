//! Small, exact problems that the notebooks step through (`notebooks/02`–`05`).
//!
//! Each module builds a problem small enough to solve exactly (enumeration, closed form) or to train in
//! seconds on a CPU, runs one of the core numerics on it, and returns plain `serde` structs that a
//! notebook turns into tables and figures. The notebooks explain; these modules compute; `tests/toy_*.rs`
//! pin the claims the notebooks make (variance ordering, recovery of π*, reward rising under PPO, …).

pub mod bradley_terry;
pub mod categorical_dpo;
pub mod gae_lambda;
pub mod policy_gradient;
pub mod ppo_loop;
