//! Fixed train / validation / test splits by a hash of the normalised text.
//!
//! **Rule.** `bucket = u64::from_be_bytes(sha256(normalise(text))[0..8]) mod 100`; buckets 0–79 are
//! train, 80–89 validation, 90–99 test. SHA-256 (not `std`'s `DefaultHasher`, whose output may change
//! between Rust releases) keeps the assignment fixed across platforms, compilers and the order of the
//! data. Because the key is the *normalised* text, a sentence that occurs in several sources (the
//! Rotten Tomatoes snippets contain 3,874 of the 4,000 Pang & Lee sentences) always lands in one split.
//!
//! **Normalisation** ([`normalise`]): lowercase; delete apostrophes (`'`, `’`); split on every character
//! that is not a Unicode letter or digit; join the pieces with one space. Lowercasing and collapsing
//! whitespace alone would not do: Pang & Lee is tokenised (`the 21st century 's new " conan "`) where
//! Rotten Tomatoes is not (`the 21st Century's new "Conan"`); both normalise to
//! `the 21st centurys new conan`.

use serde::{Deserialize, Serialize};

/// Which split a text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// `train`, `validation` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        }
    }
}

/// Percent of buckets for train (0..80) and train + validation (0..90).
const TRAIN_BUCKETS: u64 = 80;
const TRAIN_VALIDATION_BUCKETS: u64 = 90;

/// The normalised form used for split assignment and de-duplication (see the module doc).
pub fn normalise(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut pending_space = false;
    for c in lower.chars() {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        } else {
            pending_space = true;
        }
    }
    out
}

/// The split of `text`: bucket `sha256(normalise(text))` (first 8 bytes, big-endian) mod 100;
/// < 80 train, < 90 validation, else test.
pub fn split_of(text: &str) -> Split {
    split_of_normalised(&normalise(text))
}

pub(crate) fn split_of_normalised(norm: &str) -> Split {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(norm.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(first) % 100;
    if bucket < TRAIN_BUCKETS {
        Split::Train
    } else if bucket < TRAIN_VALIDATION_BUCKETS {
        Split::Validation
    } else {
        Split::Test
    }
}

/// Items by split.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits<T> {
    pub train: Vec<T>,
    pub validation: Vec<T>,
    pub test: Vec<T>,
}

impl<T> Default for Splits<T> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<T> Splits<T> {
    /// Three empty splits.
    pub fn empty() -> Self {
        Splits {
            train: Vec::new(),
            validation: Vec::new(),
            test: Vec::new(),
        }
    }

    /// The items of one split.
    pub fn get(&self, split: Split) -> &[T] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    /// The items of one split, mutably.
    pub fn get_mut(&mut self, split: Split) -> &mut Vec<T> {
        match split {
            Split::Train => &mut self.train,
            Split::Validation => &mut self.validation,
            Split::Test => &mut self.test,
        }
    }

    /// Applies `f` to every item, keeping the splits.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Splits<U> {
        Splits {
            train: self.train.into_iter().map(&mut f).collect(),
            validation: self.validation.into_iter().map(&mut f).collect(),
            test: self.test.into_iter().map(&mut f).collect(),
        }
    }

    /// `(train, validation, test)` sizes.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.train.len(), self.validation.len(), self.test.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenised_and_raw_forms_normalise_alike() {
        let pl = "the rock is destined to be the 21st century's new \" conan \" and that he's going . \n";
        let rt = "The Rock is destined to be the 21st Century's new \"Conan\" and that he's going.";
        assert_eq!(normalise(pl), normalise(rt));
        assert_eq!(normalise("  It’s  GOOD!! "), "its good");
        assert_eq!(split_of(pl), split_of(rt));
    }

    #[test]
    fn buckets_cover_all_splits_in_proportion() {
        let mut n = [0usize; 3];
        for i in 0..10_000 {
            n[split_of(&format!("text number {i}")).index()] += 1;
        }
        assert!((7_700..8_300).contains(&n[0]), "{n:?}");
        assert!((800..1_200).contains(&n[1]), "{n:?}");
        assert!((800..1_200).contains(&n[2]), "{n:?}");
    }
}
