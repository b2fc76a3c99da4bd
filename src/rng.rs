//! SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", the
//! `java.util.SplittableRandom` mixer): the one seeded generator of the toy loops and of the training
//! loops' data order. Its whole state is one `u64`, so a checkpoint stores it exactly
//! ([`SplitMix64::state`] / [`SplitMix64::from_state`]) and a resumed run draws the same numbers.

/// SplitMix64 generator; state is a single `u64` counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed` (the seed is xored with a constant so that seed 0 is not the all-zero state).
    pub fn new(seed: i64) -> Self {
        SplitMix64((seed as u64) ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    /// Resumes from a state returned by [`Self::state`].
    pub fn from_state(state: u64) -> Self {
        SplitMix64(state)
    }
    /// The internal state (for checkpoints).
    pub fn state(&self) -> u64 {
        self.0
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) (53 random bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in `0..n` (`n ≥ 1`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }
    /// Index drawn from unnormalised probabilities `p` (inverse CDF).
    pub fn categorical(&mut self, p: &[f64]) -> usize {
        let total: f64 = p.iter().sum();
        let u = self.uniform() * total;
        let mut acc = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            acc += pi;
            if u < acc {
                return i;
            }
        }
        p.len() - 1
    }
    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
