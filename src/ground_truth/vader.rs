//! VADER sentiment: a port of the `compound` score of vaderSentiment 3.3.2's
//! `SentimentIntensityAnalyzer.polarity_scores` (Hutto, C.J. & Gilbert, E.E. (2014). *VADER: A
//! Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text.* ICWSM-14).
//!
//! Each step names the Python function it follows (module `vaderSentiment/vaderSentiment.py`):
//! tokenisation `SentiText._words_and_emoticons` / `_strip_punc_if_word`, `allcap_differential`,
//! per-word valence `sentiment_valence` (with `scalar_inc_dec`, `_negation_check`,
//! `_special_idioms_check`, `_least_check`), `_but_check`, and `score_valence` (with `_amplify_ep`,
//! `_amplify_qm`, `normalize(score, alpha=15)`). Constants: `B_INCR = 0.293`, `B_DECR = −0.293`,
//! `C_INCR = 0.733`, `N_SCALAR = −0.74`, and the `NEGATE`, `BOOSTER_DICT` and `SPECIAL_CASES` tables.
//!
//! Differences from the Python package, on purpose:
//! - **Emoji** are not translated to their textual descriptions (the first loop of `polarity_scores`,
//!   using `emoji_utf8_lexicon.txt`); the text is only stripped. Texts with emoji may score differently.
//! - The compound is returned **unrounded**; Python rounds it with `round(compound, 4)`.
//! - Only the compound is computed (not `pos`/`neu`/`neg`).
//! - Quirks are kept, e.g. `_but_check` rescales the *first* sentiment equal to each value (Python's
//!   `list.index`), not always the one at the current position.
//! - `str.split()` / `str.isupper()` / `str.lower()` are matched with Rust's Unicode
//!   `split_whitespace` / `is_uppercase` / `to_lowercase`; they can differ on exotic code points (e.g.
//!   the ASCII separators `\x1c`–`\x1f`, which Python splits on).

use super::SentimentScorer;
use crate::error::{Result, RlhfError};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
const C_INCR: f64 = 0.733;
const N_SCALAR: f64 = -0.74;
/// `normalize(score, alpha=15)`.
const ALPHA: f64 = 15.0;

const NEGATE: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

const BOOSTER_INCR: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];

const BOOSTER_DECR: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "just enough",
    "kind of",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sort of",
    "sorta",
    "sortof",
    "sort-of",
];

const SPECIAL_CASES: &[(&str, f64)] = &[
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

/// `string.punctuation`.
fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// Python `str.isupper()`: at least one cased character and no lowercase one.
fn is_upper(s: &str) -> bool {
    s.chars().any(|c| c.is_uppercase()) && !s.chars().any(|c| c.is_lowercase())
}

/// `normalize(score, alpha=15)`: `score / sqrt(score² + alpha)`, clipped to [−1, 1].
pub fn normalize(score: f64) -> f64 {
    (score / (score * score + ALPHA).sqrt()).clamp(-1.0, 1.0)
}

/// The VADER analyser: the lexicon plus the fixed rule tables.
#[derive(Debug, Clone)]
pub struct Vader {
    lexicon: HashMap<String, f64>,
    booster: HashMap<&'static str, f64>,
    special: HashMap<&'static str, f64>,
}

impl Vader {
    /// Loads `vader_lexicon.txt` (`word \t mean \t sd \t ratings`), as `make_lex_dict`: the first two
    /// tab-separated fields of each non-empty line; a later duplicate wins.
    pub fn from_lexicon_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RlhfError::Io {
            path: path.display().to_string(),
            reason: format!("{e}; {}", crate::data::load::FETCH_HINT),
        })?;
        Self::from_lexicon_str(&text)
            .map_err(|reason| RlhfError::format(path, "VADER lexicon", reason))
    }

    /// Loads the lexicon from `datasets/cache/vader/vader_lexicon.txt` under `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self> {
        Self::from_lexicon_file(data_dir.join("vader").join("vader_lexicon.txt"))
    }

    fn from_lexicon_str(text: &str) -> std::result::Result<Self, String> {
        let mut lexicon = HashMap::new();
        for (i, line) in text.trim_end_matches('\n').split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut fields = line.trim().split('\t');
            let (Some(word), Some(measure)) = (fields.next(), fields.next()) else {
                return Err(format!("line {}: expected `word<TAB>valence`", i + 1));
            };
            let v: f64 = measure
                .parse()
                .map_err(|e| format!("line {}: valence {measure:?}: {e}", i + 1))?;
            lexicon.insert(word.to_string(), v);
        }
        if lexicon.is_empty() {
            return Err("no entries".into());
        }
        let booster = BOOSTER_INCR
            .iter()
            .map(|w| (*w, B_INCR))
            .chain(BOOSTER_DECR.iter().map(|w| (*w, B_DECR)))
            .collect();
        let special = SPECIAL_CASES.iter().copied().collect();
        Ok(Vader {
            lexicon,
            booster,
            special,
        })
    }

    /// Number of lexicon entries.
    pub fn lexicon_len(&self) -> usize {
        self.lexicon.len()
    }

    fn in_lex(&self, w: &str) -> bool {
        self.lexicon.contains_key(w)
    }

    /// The unrounded `compound` of `polarity_scores(text)` (emoji not translated; see the module doc).
    pub fn compound(&self, text: &str) -> f64 {
        let text = text.trim();
        // SentiText._words_and_emoticons: split on whitespace, strip leading/trailing punctuation unless
        // that leaves ≤ 2 characters (likely an emoticon).
        let words: Vec<&str> = text
            .split_whitespace()
            .map(|t| {
                let stripped = t.trim_matches(is_ascii_punct);
                if stripped.chars().count() <= 2 {
                    t
                } else {
                    stripped
                }
            })
            .collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        // allcap_differential: some but not all words are ALL CAPS.
        let n_caps = words.iter().filter(|w| is_upper(w)).count();
        let is_cap_diff = n_caps > 0 && n_caps < words.len();

        // polarity_scores: one sentiment per word.
        let mut sentiments: Vec<f64> = Vec::with_capacity(words.len());
        for i in 0..words.len() {
            if self.booster.contains_key(lower[i].as_str())
                || (i + 1 < words.len() && lower[i] == "kind" && lower[i + 1] == "of")
            {
                sentiments.push(0.0);
                continue;
            }
            sentiments.push(self.sentiment_valence(&words, &lower, is_cap_diff, i));
        }
        but_check(&lower, &mut sentiments);
        // score_valence (compound only).
        if sentiments.is_empty() {
            return 0.0;
        }
        let mut sum_s: f64 = sentiments.iter().sum();
        let punct = amplify_ep(text) + amplify_qm(text);
        if sum_s > 0.0 {
            sum_s += punct;
        } else if sum_s < 0.0 {
            sum_s -= punct;
        }
        normalize(sum_s)
    }

    /// `sentiment_valence` for word `i`.
    fn sentiment_valence(
        &self,
        words: &[&str],
        lower: &[String],
        is_cap_diff: bool,
        i: usize,
    ) -> f64 {
        let item = lower[i].as_str();
        let Some(&lex) = self.lexicon.get(item) else {
            return 0.0;
        };
        let mut valence = lex;
        // "no" as negation of an adjacent lexicon item rather than as its own lexicon item.
        if item == "no" && i != words.len() - 1 && self.in_lex(&lower[i + 1]) {
            valence = 0.0;
        }
        if (i > 0 && lower[i - 1] == "no")
            || (i > 1 && lower[i - 2] == "no")
            || (i > 2 && lower[i - 3] == "no" && (lower[i - 1] == "or" || lower[i - 1] == "nor"))
        {
            valence = lex * N_SCALAR;
        }
        // ALL-CAPS emphasis while other words are not.
        if is_upper(words[i]) && is_cap_diff {
            if valence > 0.0 {
                valence += C_INCR;
            } else {
                valence -= C_INCR;
            }
        }
        for start_i in 0..3usize {
            // Boosters/dampeners up to 3 words before, dampened with distance; only preceding words that
            // are not themselves lexicon words.
            if i > start_i && !self.in_lex(&lower[i - (start_i + 1)]) {
                let mut s = self.scalar_inc_dec(
                    words[i - (start_i + 1)],
                    &lower[i - (start_i + 1)],
                    valence,
                    is_cap_diff,
                );
                if start_i == 1 && s != 0.0 {
                    s *= 0.95;
                }
                if start_i == 2 && s != 0.0 {
                    s *= 0.9;
                }
                valence += s;
                valence = negation_check(valence, lower, start_i, i);
                if start_i == 2 {
                    valence = self.special_idioms_check(valence, lower, i);
                }
            }
        }
        least_check(valence, lower, i, |w| self.in_lex(w))
    }

    /// `scalar_inc_dec`: the booster/dampener contribution of a preceding word.
    fn scalar_inc_dec(&self, word: &str, word_lower: &str, valence: f64, is_cap_diff: bool) -> f64 {
        let Some(&b) = self.booster.get(word_lower) else {
            return 0.0;
        };
        let mut scalar = if valence < 0.0 { -b } else { b };
        if is_upper(word) && is_cap_diff {
            if valence > 0.0 {
                scalar += C_INCR;
            } else {
                scalar -= C_INCR;
            }
        }
        scalar
    }

    /// `_special_idioms_check` (only reached with `i ≥ 3`).
    fn special_idioms_check(&self, mut valence: f64, lower: &[String], i: usize) -> f64 {
        let onezero = format!("{} {}", lower[i - 1], lower[i]);
        let twoonezero = format!("{} {} {}", lower[i - 2], lower[i - 1], lower[i]);
        let twoone = format!("{} {}", lower[i - 2], lower[i - 1]);
        let threetwoone = format!("{} {} {}", lower[i - 3], lower[i - 2], lower[i - 1]);
        let threetwo = format!("{} {}", lower[i - 3], lower[i - 2]);
        for seq in [&onezero, &twoonezero, &twoone, &threetwoone, &threetwo] {
            if let Some(&v) = self.special.get(seq.as_str()) {
                valence = v;
                break;
            }
        }
        if lower.len() - 1 > i {
            let zeroone = format!("{} {}", lower[i], lower[i + 1]);
            if let Some(&v) = self.special.get(zeroone.as_str()) {
                valence = v;
            }
        }
        if lower.len() - 1 > i + 1 {
            let zeroonetwo = format!("{} {} {}", lower[i], lower[i + 1], lower[i + 2]);
            if let Some(&v) = self.special.get(zeroonetwo.as_str()) {
                valence = v;
            }
        }
        // Booster/dampener n-grams such as "sort of", "kind of".
        for n_gram in [&threetwoone, &threetwo, &twoone] {
            if let Some(&b) = self.booster.get(n_gram.as_str()) {
                valence += b;
            }
        }
        valence
    }
}

/// `negated([word])` for a single lowercased word: in `NEGATE` or containing "n't".
fn negated(word: &str) -> bool {
    NEGATE.contains(&word) || word.contains("n't")
}

/// `_negation_check`, including "never so/this" (×1.25 instead of negation) and "without doubt".
fn negation_check(valence: f64, lower: &[String], start_i: usize, i: usize) -> f64 {
    let w = |k: usize| lower[i - k].as_str();
    match start_i {
        0 => {
            if negated(w(1)) {
                return valence * N_SCALAR;
            }
        }
        1 => {
            if w(2) == "never" && (w(1) == "so" || w(1) == "this") {
                return valence * 1.25;
            } else if w(2) == "without" && w(1) == "doubt" {
                return valence;
            } else if negated(w(2)) {
                return valence * N_SCALAR;
            }
        }
        2 => {
            // Python: `a and (b or c) or (d or e)` — `and` binds tighter, so "so"/"this" right before
            // the word boosts on its own.
            if (w(3) == "never" && (w(2) == "so" || w(2) == "this"))
                || (w(1) == "so" || w(1) == "this")
            {
                return valence * 1.25;
            } else if w(3) == "without" && (w(2) == "doubt" || w(1) == "doubt") {
                return valence;
            } else if negated(w(3)) {
                return valence * N_SCALAR;
            }
        }
        _ => {}
    }
    valence
}

/// `_least_check`: "least" before a word negates it, except "at least" / "very least".
fn least_check(valence: f64, lower: &[String], i: usize, in_lex: impl Fn(&str) -> bool) -> f64 {
    if i > 1 && !in_lex(&lower[i - 1]) && lower[i - 1] == "least" {
        if lower[i - 2] != "at" && lower[i - 2] != "very" {
            return valence * N_SCALAR;
        }
    } else if i > 0 && !in_lex(&lower[i - 1]) && lower[i - 1] == "least" {
        return valence * N_SCALAR;
    }
    valence
}

/// `_but_check`: sentiments before the first "but" × 0.5, after it × 1.5. Ported with Python's quirk:
/// each value `v` (read at position k) rescales the *first* position holding a value equal to `v`.
fn but_check(lower: &[String], sentiments: &mut [f64]) {
    let Some(bi) = lower.iter().position(|w| w == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let v = sentiments[k];
        let Some(si) = sentiments.iter().position(|&x| x == v) else {
            continue;
        };
        if si < bi {
            sentiments[si] = v * 0.5;
        } else if si > bi {
            sentiments[si] = v * 1.5;
        }
    }
}

/// `_amplify_ep`: 0.292 per "!", at most 4.
fn amplify_ep(text: &str) -> f64 {
    text.matches('!').count().min(4) as f64 * 0.292
}

/// `_amplify_qm`: 0.18 per "?" for 2–3 of them, 0.96 for more; nothing for one.
fn amplify_qm(text: &str) -> f64 {
    match text.matches('?').count() {
        0 | 1 => 0.0,
        n @ 2..=3 => n as f64 * 0.18,
        _ => 0.96,
    }
}

impl SentimentScorer for Vader {
    /// Compound scores `(N,)` f32 in [−1, 1].
    fn score(&self, texts: &[&str]) -> Result<Tensor> {
        let v: Vec<f32> = texts.iter().map(|t| self.compound(t) as f32).collect();
        Ok(Tensor::from_slice(&v))
    }

    fn name(&self) -> &str {
        "vader"
    }
}
