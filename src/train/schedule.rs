//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.

use crate::core::check;
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};

/// Linear warm-up + cosine decay, exactly nanoGPT's `get_lr(it)` (Karpathy, `train.py`; the cosine
/// "SGDR" shape of Loshchilov & Hutter 2017, eq. 5, without restarts):
///
/// ```text
/// it <  warmup:              lr · (it + 1) / (warmup + 1)
/// it >  decay_steps:         min_lr
/// otherwise:  r = (it − warmup) / (decay_steps − warmup),
///             min_lr + ½ (1 + cos(π r)) · (lr − min_lr)
/// ```
///
/// `it` is the 0-based optimiser step. The training loops set `decay_steps = max_steps`, so the last
/// step `max_steps − 1` is just above `min_lr`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate (reached at the end of warm-up).
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Warm-up steps (0 = start at the peak).
    pub warmup_steps: u64,
    /// Step at which the cosine reaches `min_lr` (≥ `warmup_steps`).
    pub decay_steps: u64,
}

impl CosineSchedule {
    /// A checked schedule: `lr > 0`, `0 ≤ min_lr ≤ lr`, `warmup_steps ≤ decay_steps`.
    pub fn new(lr: f64, min_lr: f64, warmup_steps: u64, decay_steps: u64) -> Result<Self> {
        check::positive("lr", lr)?;
        check::non_negative("min_lr", min_lr)?;
        if min_lr > lr {
            return Err(RlhfError::out_of_range(
                "min_lr",
                min_lr,
                format!("<= lr ({lr})"),
            ));
        }
        if warmup_steps > decay_steps {
            return Err(RlhfError::out_of_range(
                "warmup_steps",
                warmup_steps as f64,
                format!("<= the decay steps ({decay_steps})"),
            ));
        }
        Ok(CosineSchedule {
            lr,
            min_lr,
            warmup_steps,
            decay_steps,
        })
    }

    /// Learning rate of 0-based step `it`.
    pub fn lr_at(&self, it: u64) -> f64 {
        if it < self.warmup_steps {
            return self.lr * (it + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        if it > self.decay_steps || self.decay_steps == self.warmup_steps {
            return self.min_lr;
        }
        let ratio = (it - self.warmup_steps) as f64 / (self.decay_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        let s = CosineSchedule::new(1e-3, 1e-4, 10, 110).unwrap();
        // Warm-up: (it + 1) / (warmup + 1) of the peak.
        assert_eq!(s.lr_at(0), 1e-3 / 11.0);
        assert_eq!(s.lr_at(9), 1e-3 * 10.0 / 11.0);
        // End of warm-up: the peak exactly.
        assert_eq!(s.lr_at(10), 1e-3);
        // Half-way through the decay: the mean of peak and floor.
        assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-15);
        // End of decay and beyond: the floor.
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-18);
        assert_eq!(s.lr_at(111), 1e-4);
        assert_eq!(s.lr_at(10_000), 1e-4);
        // Monotone non-increasing after warm-up.
        for it in 10..120 {
            assert!(s.lr_at(it + 1) <= s.lr_at(it));
        }
    }

    #[test]
    fn no_warmup_and_degenerate() {
        let s = CosineSchedule::new(2.0, 0.0, 0, 4).unwrap();
        assert_eq!(s.lr_at(0), 2.0);
        assert!((s.lr_at(2) - 1.0).abs() < 1e-15);
        assert!(s.lr_at(4).abs() < 1e-15);
        let flat = CosineSchedule::new(1.0, 0.5, 3, 3).unwrap();
        assert_eq!(flat.lr_at(2), 0.75);
        assert_eq!(flat.lr_at(3), 0.5);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(CosineSchedule::new(-1.0, 0.0, 0, 1).is_err());
        assert!(CosineSchedule::new(1.0, 2.0, 0, 1).is_err());
        assert!(CosineSchedule::new(1.0, 0.0, 5, 1).is_err());
        assert!(CosineSchedule::new(f64::NAN, 0.0, 0, 1).is_err());
    }
}
