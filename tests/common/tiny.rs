//! A 5-token world for exact tests of sampling code: a word-level tokenizer, tiny random GPTs and a
//! toy scorer.
#![allow(dead_code)]
use rlhf_lab::ground_truth::SentimentScorer;
use rlhf_lab::model::gpt::{Gpt, GptConfig};
use rlhf_lab::tokenizer::Tokenizer;
use rlhf_lab::Result;
use tch::{nn, Device, Tensor};

/// Vocabulary size of [`tiny_tokenizer`].
pub const V: i64 = 5;
/// Its EOS id (PAD is 1).
pub const EOS: i64 = 0;

/// A word-level tokenizer over `<|endoftext|> <|pad|> a b c` (ids 0–4).
pub fn tiny_tokenizer() -> Tokenizer {
    let special = |id: u32, content: &str| {
        format!(
            r#"{{"id":{id},"content":"{content}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
        )
    };
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{},{}],"normalizer":null,"pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{"<|endoftext|>":0,"<|pad|>":1,"a":2,"b":3,"c":4}},"unk_token":"a"}}}}"#,
        special(0, "<|endoftext|>"),
        special(1, "<|pad|>")
    );
    let inner: tokenizers::Tokenizer = json.parse().expect("tokenizer json");
    Tokenizer::from_hf(inner, "<|endoftext|>", "<|pad|>").unwrap()
}

/// A random GPT over the tiny vocabulary; `init` 0.5 makes its next-token distributions far from
/// uniform (logits of order 1), so KLs between two of them are of order 1.
pub fn tiny_gpt(seed: i64, vocab: i64, f64_params: bool) -> (nn::VarStore, Gpt) {
    tch::manual_seed(seed);
    let mut cfg = GptConfig::new(vocab, 8, 8, 1, 2);
    cfg.initializer_range = 0.5;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), cfg).unwrap();
    if f64_params {
        vs.double();
    }
    (vs, gpt)
}

/// Scores a text by its number of `c` characters.
pub struct CountC;
impl SentimentScorer for CountC {
    fn score(&self, texts: &[&str]) -> Result<Tensor> {
        let v: Vec<f32> = texts
            .iter()
            .map(|t| t.chars().filter(|&c| c == 'c').count() as f32)
            .collect();
        Ok(Tensor::from_slice(&v))
    }
    fn name(&self) -> &str {
        "count-c"
    }
}
