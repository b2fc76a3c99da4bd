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
pub mod worked_example;

use crate::error::Result;
use tch::{Kind, Tensor};

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

/// A tensor of any shape as a flat `Vec<f64>` (detached, row-major): the plain numbers a study returns.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.detach().to_kind(Kind::Double).flatten(0, -1),
    )?)
}

/// A `(R, C)` tensor as rows of `f64` (detached).
pub(crate) fn to_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(Vec::<Vec<f64>>::try_from(
        &t.detach().to_kind(Kind::Double),
    )?)
}

/// A one-element tensor as an `f64`.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.detach().to_kind(Kind::Double).f_double_value(&[])?)
}
