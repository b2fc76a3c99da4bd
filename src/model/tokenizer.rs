//! Tokenizers: a byte-level BPE trained on the review corpus, or any Hugging Face `tokenizer.json`, or
//! one rebuilt from GGUF metadata (SmolLM2). All go through the `tokenizers` crate, so a file saved here
//! loads in Python's `tokenizers.Tokenizer.from_file` and vice versa.
//!
//! EOS and PAD are always distinct tokens: generation stops at EOS and the reward is read at the last real
//! token, so a PAD that equals EOS would make "the response ended" and "this is padding" indistinguishable
//! (the pad-after-EOS bug class of TRL issue #1073 style pipelines).

use crate::error::{Result, RlhfError};
use std::path::Path;

/// Default names of the special tokens of tokenizers trained here (GPT-2's EOS name; a separate PAD).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// See [`EOS_TOKEN`].
pub const PAD_TOKEN: &str = "<|pad|>";

/// Settings of [`Tokenizer::train_bpe`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpeConfig {
    /// Target vocabulary size, special tokens and the 256 byte symbols included.
    pub vocab_size: usize,
    /// A merge needs at least this many occurrences.
    pub min_frequency: u64,
}

impl Default for BpeConfig {
    fn default() -> Self {
        BpeConfig {
            vocab_size: 8192,
            min_frequency: 2,
        }
    }
}

/// A `tokenizers::Tokenizer` plus the ids of its EOS and PAD tokens (distinct).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: i64,
    pad_id: i64,
    /// `inner.get_vocab_size(true)`, read once: that call builds the whole vocabulary map (8,192
    /// strings), which made every [`Tokenizer::decode`] cost ≈ 0.9 ms; a PPO iteration decodes 128
    /// sequences.
    vocab_size: i64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

fn tok_err(arg: &str, e: impl std::fmt::Display) -> RlhfError {
    RlhfError::invalid(arg, e.to_string())
}

impl Tokenizer {
    /// Wraps a `tokenizers::Tokenizer` whose EOS and PAD tokens are named `eos` and `pad`.
    /// Errors if either is not in the vocabulary or if they are the same token.
    pub fn from_hf(inner: tokenizers::Tokenizer, eos: &str, pad: &str) -> Result<Self> {
        let id = |name: &str, arg: &str| {
            inner.token_to_id(name).map(i64::from).ok_or_else(|| {
                RlhfError::invalid(arg, format!("token {name:?} is not in the vocabulary"))
            })
        };
        let eos_id = id(eos, "eos")?;
        let pad_id = id(pad, "pad")?;
        if eos_id == pad_id {
            return Err(RlhfError::invalid(
                "pad",
                format!(
                    "PAD ({pad:?}) must differ from EOS ({eos:?}); add a dedicated padding token"
                ),
            ));
        }
        let vocab_size = inner.get_vocab_size(true) as i64;
        Ok(Tokenizer {
            inner,
            eos_id,
            pad_id,
            vocab_size,
        })
    }

    /// Trains a byte-level BPE (GPT-2's tokenizer scheme, Radford et al. 2019 §2.2; Sennrich et al. 2016)
    /// on `texts`, with [`EOS_TOKEN`] (id 0) and [`PAD_TOKEN`] (id 1) as special tokens.
    ///
    /// Pipeline, as in the `tokenizer.json` of HF `gpt2`: no normaliser; `ByteLevel` pre-tokenizer
    /// (GPT-2 regex split, bytes mapped to printable code points, `add_prefix_space = false`, so
    /// `decode(encode(s)) == s` for every string); BPE model; `ByteLevel` post-processor and decoder.
    /// The initial alphabet is all 256 byte symbols, so every byte sequence is encodable (no unknown
    /// token) even if the training texts never contained it.
    ///
    /// `cfg.vocab_size` counts the 2 special tokens and the 256 byte symbols and must be ≥ 258; the
    /// result has at most that many tokens (fewer when the corpus runs out of pairs seen
    /// `cfg.min_frequency` times).
    ///
    /// Deterministic: the trainer's pair counts are order-independent sums, and ties between equally
    /// frequent pairs are broken by the pair's token ids (`tokenizers` `Merge` ordering), so the same
    /// texts give the same `tokenizer.json` whatever the thread count (tested).
    pub fn train_bpe(texts: &[String], cfg: &BpeConfig) -> Result<Self> {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::normalizers::NormalizerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{AddedToken, TokenizerBuilder};

        let min_vocab = 256 + 2;
        if cfg.vocab_size < min_vocab {
            return Err(RlhfError::out_of_range(
                "vocab_size",
                cfg.vocab_size as f64,
                format!(">= {min_vocab} (256 byte symbols + EOS + PAD)"),
            ));
        }
        if cfg.min_frequency < 1 {
            return Err(RlhfError::out_of_range(
                "min_frequency",
                cfg.min_frequency as f64,
                ">= 1",
            ));
        }
        if texts.iter().all(|t| t.is_empty()) {
            return Err(tok_err("texts", "no training text (empty corpus)"));
        }
        let byte_level = ByteLevel::new(false, true, true);
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(cfg.vocab_size)
            .min_frequency(cfg.min_frequency)
            .show_progress(false)
            .special_tokens(vec![
                AddedToken::from(EOS_TOKEN, true),
                AddedToken::from(PAD_TOKEN, true),
            ])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk =
            TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
                .with_model(BPE::default())
                .with_normalizer(None)
                .with_pre_tokenizer(Some(byte_level))
                .with_post_processor(Some(byte_level))
                .with_decoder(Some(byte_level))
                .build()
                .map_err(|e| tok_err("train_bpe", e))?;
        tk.train(&mut trainer, texts.iter())
            .map_err(|e| tok_err("train_bpe", e))?;
        let inner = tokenizers::Tokenizer::from(tk);
        Self::from_hf(inner, EOS_TOKEN, PAD_TOKEN)
    }

    /// Loads a Hugging Face `tokenizer.json`. EOS/PAD names come from a `tokenizer_config.json` beside it
    /// (`eos_token`, `pad_token`) when there is one, else [`EOS_TOKEN`] / [`PAD_TOKEN`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (mut eos, mut pad) = (EOS_TOKEN.to_string(), PAD_TOKEN.to_string());
        if let Some(dir) = path.parent() {
            let cfg = dir.join("tokenizer_config.json");
            if cfg.is_file() {
                let v: serde_json::Value = crate::io::read_json(&cfg)?;
                let name = |key: &str| match &v[key] {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => {
                        o.get("content").and_then(|c| c.as_str()).map(String::from)
                    }
                    _ => None,
                };
                if let Some(s) = name("eos_token") {
                    eos = s;
                }
                if let Some(s) = name("pad_token") {
                    pad = s;
                }
            }
        }
        Self::from_file_with(path, &eos, &pad)
    }

    /// Loads a Hugging Face `tokenizer.json` with explicitly named EOS and PAD tokens.
    pub fn from_file_with(path: impl AsRef<Path>, eos: &str, pad: &str) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RlhfError::io(path, e))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| RlhfError::format(path, "tokenizer.json", e))?;
        Self::from_hf(inner, eos, pad)
    }

    /// Saves as a Hugging Face `tokenizer.json` (pretty, atomic).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| RlhfError::format(path.as_ref(), "tokenizer.json", e))?;
        crate::io::atomic_write(path, json.as_bytes())
    }

    /// Token ids of `text`. No special tokens are added (append [`Self::eos_id`] yourself).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("text", e))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Text of `ids`, special tokens (EOS, PAD, …) skipped. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let v = self.vocab_size();
        let mut u = Vec::with_capacity(ids.len());
        for &i in ids {
            if i < 0 || i >= v {
                return Err(RlhfError::out_of_range(
                    "ids",
                    i as f64,
                    format!("in [0, {v})"),
                ));
            }
            u.push(i as u32);
        }
        self.inner.decode(&u, true).map_err(|e| tok_err("ids", e))
    }

    /// Vocabulary size, added/special tokens included (the embedding rows a model needs).
    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    /// Padding id (≠ EOS).
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
