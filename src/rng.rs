//! The crate's own pseudo-random generator: SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable
//! pseudorandom number generators", OOPSLA; the `splitmix64` reference code of Vigna's xoshiro page).
//!
//! Everything in rlhf-lab that samples on the CPU — the toy PPO loop ([`crate::toy::ppo_loop`]) and
//! [`crate::model::generate`], the SFT data order ([`crate::train::sft`]) — draws from this generator instead of libtorch's global one, so that a run is
//! reproducible bit for bit from its seed alone, whatever else in the process (parallel tests, another
//! model's dropout) consumes torch's global RNG.

/// Salt xored into every seed so that seed 0 does not start from state 0.
const SEED_SALT: u64 = 0x5DEE_CE66_D1CE_4E5B;
/// The SplitMix64 increment (2^64 / φ, odd).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (a 64-bit finaliser; Stafford's "Mix13" variant).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a 64-bit state advanced by a fixed odd increment and scrambled by `mix64`.
/// Period 2^64; passes BigCrush. Not cryptographic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 {
            state: seed ^ SEED_SALT,
        }
    }

    /// Stream number `stream` of `seed`: an independent-looking generator per (seed, stream) pair, e.g.
    /// one per batch row so that a row's draws do not depend on how many rows precede it. The stream's
    /// starting state is the seed's state xored with the scrambled stream index (the "split" of
    /// SplitMix, done by hashing rather than by consuming the parent).
    pub fn stream(seed: u64, stream: u64) -> Self {
        SplitMix64 {
            state: seed ^ SEED_SALT ^ mix64(stream.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)),
        }
    }

    /// Resumes from a state returned by [`Self::state`] (checkpoints store it, so a resumed run draws
    /// the same numbers).
    pub fn from_state(state: u64) -> Self {
        SplitMix64 { state }
    }

    /// The whole internal state (one `u64`), for checkpoints.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n ≥ 1`; `n = 0` gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Index drawn from the unnormalised non-negative weights `p` by inverse CDF: the smallest `i` with
    /// `u·Σp < Σ_{j≤i} p_j`, `u` uniform in [0, 1). An index of weight 0 is never returned (if rounding
    /// runs past the end, the last index of positive weight is). `None` if no weight is positive or
    /// finite. One uniform is consumed either way.
    pub fn categorical(&mut self, p: &[f64]) -> Option<usize> {
        let u = self.uniform();
        let last_positive = p.iter().rposition(|&x| x > 0.0)?;
        let total: f64 = p.iter().sum();
        if !total.is_finite() || p.iter().any(|x| x.is_nan() || *x < 0.0) {
            return None;
        }
        let target = u * total;
        let mut acc = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            acc += pi;
            if target < acc && pi > 0.0 {
                return Some(i);
            }
        }
        Some(last_positive)
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // splitmix64 reference outputs for state 0 (Vigna's splitmix64.c, first output after one
        // increment): seeding with SEED_SALT cancels the salt.
        let mut r = SplitMix64::new(SEED_SALT);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map(|s| SplitMix64::stream(7, s).next_u64())
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|s| SplitMix64::stream(7, s).next_u64())
            .collect();
        assert_eq!(a, b);
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(a[i], a[j]);
            }
        }
    }

    #[test]
    fn categorical_skips_zero_weights() {
        let mut r = SplitMix64::new(1);
        for _ in 0..1000 {
            let i = r.categorical(&[0.0, 1.0, 0.0, 2.0, 0.0]).unwrap();
            assert!(i == 1 || i == 3);
        }
        assert_eq!(r.categorical(&[0.0, 0.0]), None);
        assert_eq!(r.categorical(&[f64::NAN, 1.0]), None);
    }
}
