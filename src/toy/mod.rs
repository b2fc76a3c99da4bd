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

/// Runs libtorch single-threaded while alive and restores the previous thread count on drop. The
/// tensors of these problems hold a few dozen numbers: the OpenMP pool only adds synchronisation, and on
/// a loaded 2-core machine its spin-waits made the studies 10–50× slower than one thread.
pub(crate) struct SingleThread(i32);

impl SingleThread {
    pub(crate) fn new() -> Self {
        let prev = tch::get_num_threads();
        tch::set_num_threads(1);
        SingleThread(prev)
    }
}

impl Drop for SingleThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}
