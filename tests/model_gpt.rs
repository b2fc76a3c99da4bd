//! The GPT-2-style decoder (`rlhf_lab::model::gpt`): shapes, causality, KV cache, padding, heads,
//! checkpoints, input validation, gradients, and logits parity with HF `transformers`
//! `GPT2LMHeadModel` (reference written by tests/golden/make_gpt2_parity.py).
//!
//! Tiny configs throughout (C = 32, 2 layers); `initializer_range = 0.2` instead of GPT-2's 0.02 so
//! that positions and tokens move the logits by O(1) and every invariance test has teeth.

mod common;

use common::max_abs_diff;
use proptest::prelude::*;
use rlhf_lab::model::gpt::{
    attention, attention_allowed, last_real_index, save_model, Gpt, GptConfig,
};
use rlhf_lab::model::{left_pad, position_ids_from_mask, CausalLm, KvCache};
use rlhf_lab::RlhfError;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

const V: i64 = 37;

fn tiny_cfg() -> GptConfig {
    let mut cfg = GptConfig::new(V, 24, 32, 2, 4);
    cfg.initializer_range = 0.2;
    cfg
}

fn tiny() -> (nn::VarStore, Gpt) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), tiny_cfg()).unwrap();
    (vs, gpt)
}

/// Deterministic pseudo-random token ids in [1, V) (0 is used as the pad id).
fn ids(len: usize, seed: i64) -> Vec<i64> {
    (0..len as i64)
        .map(|i| 1 + (i * 7 + seed * 13 + (i * i * 3) % 11) % (V - 1))
        .collect()
}

fn row(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, v.len() as i64])
}

fn ones(b: i64, t: i64) -> Tensor {
    Tensor::ones([b, t], (Kind::Int64, Device::Cpu))
}

fn arange_pos(b: i64, t: i64) -> Tensor {
    Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .view([1, t])
        .repeat([b, 1])
}

fn logits(gpt: &Gpt, ids: &Tensor, mask: &Tensor, pos: &Tensor) -> Tensor {
    tch::no_grad(|| gpt.forward(ids, mask, pos, None, false).unwrap())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ------------------------------------------------------------------------------------------------
// Shapes, finiteness, causality
// ------------------------------------------------------------------------------------------------

#[test]
fn shapes_of_logits_values_scores_and_finite_at_pads() {
    let (_vs, gpt) = tiny();
    let batch = left_pad(&[ids(5, 1), ids(2, 2)], 0, Device::Cpu).unwrap();
    let hidden = tch::no_grad(|| {
        gpt.forward_hidden(
            &batch.input_ids,
            &batch.attention_mask,
            &batch.position_ids,
            None,
            false,
        )
        .unwrap()
    });
    assert_eq!(hidden.size(), [2, 5, 32]);
    let lg = gpt.lm_logits(&hidden).unwrap();
    assert_eq!(lg.size(), [2, 5, V]);
    assert_eq!(lg.kind(), Kind::Float);
    assert_eq!(gpt.values(&hidden).unwrap().size(), [2, 5]);
    assert_eq!(
        gpt.scores(&hidden, &batch.attention_mask).unwrap().size(),
        [2]
    );
    // Row 1 has three pad queries whose only earlier keys are pads: still finite everywhere.
    assert_eq!(
        lg.isfinite().all().int64_value(&[]),
        1,
        "non-finite logits (fully masked attention rows?)"
    );
    assert_eq!(gpt.vocab_size(), V);
    assert_eq!(gpt.max_positions(), 24);
    assert_eq!(CausalLm::n_layer(&gpt), 2);
}

#[test]
fn future_tokens_never_change_past_logits() {
    let (_vs, gpt) = tiny();
    let k = 4;
    let a = ids(9, 3);
    let mut b = a.clone();
    for (j, tok) in b.iter_mut().enumerate().skip(k) {
        *tok = 1 + (*tok + j as i64) % (V - 1);
    }
    // Unpadded (fused causal path) and left-padded (explicit mask path).
    for pad in [0usize, 3] {
        let pa = [vec![0; pad], a.clone()].concat();
        let pb = [vec![0; pad], b.clone()].concat();
        let mut mask = vec![1i64; pa.len()];
        mask[..pad].fill(0);
        let mask = row(&mask);
        let pos = position_ids_from_mask(&mask);
        let la = logits(&gpt, &row(&pa), &mask, &pos);
        let lb = logits(&gpt, &row(&pb), &mask, &pos);
        let past = (pad + k) as i64;
        let d_past = max_abs_diff(&la.narrow(1, 0, past), &lb.narrow(1, 0, past));
        let d_future = max_abs_diff(&la.narrow(1, past, 1), &lb.narrow(1, past, 1));
        assert!(d_past <= 1e-6, "pad {pad}: past logits moved by {d_past}");
        assert!(d_future > 1e-2, "pad {pad}: test has no teeth ({d_future})");
    }
}

// ------------------------------------------------------------------------------------------------
// Attention against an f64 reference
// ------------------------------------------------------------------------------------------------

/// softmax(Q Kᵀ / √D + M) V with M = −∞ where not allowed, written out in f64.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, allowed: &Tensor) -> Tensor {
    let d = q.size()[3] as f64;
    let scores = q.matmul(&k.transpose(-2, -1)) / d.sqrt();
    let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
    scores.softmax(-1, Kind::Double).matmul(v)
}

#[test]
fn attention_matches_explicit_softmax_reference_in_f64() {
    tch::manual_seed(1);
    let (b, h, t_past, t, d) = (3, 2, 4, 5, 8);
    let opts = (Kind::Double, Device::Cpu);
    let q = Tensor::randn([b, h, t, d], opts);
    let k = Tensor::randn([b, h, t_past + t, d], opts);
    let v = Tensor::randn([b, h, t_past + t, d], opts);
    // Row 0: no padding; row 1: 6 left pads (the first 2 new queries are pads); row 2: 2 right pads.
    let mut m = vec![1i64; (b * (t_past + t)) as usize];
    m[9..15].fill(0);
    m[18 + 7..27].fill(0);
    let key_mask = Tensor::from_slice(&m).view([b, t_past + t]);
    let allowed = attention_allowed(&key_mask, t).unwrap();
    assert_eq!(allowed.size(), [b, 1, t, t_past + t]);
    let got = attention(&q, &k, &v, Some(&allowed), 0.0).unwrap();
    let want = reference_attention(&q, &k, &v, &allowed);
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff < 1e-12,
        "masked attention differs from reference by {diff}"
    );
    assert_eq!(got.isfinite().all().int64_value(&[]), 1);

    // Fused causal path (no mask) = reference with a lower-triangular mask.
    let kk = k.narrow(2, 0, t);
    let vv = v.narrow(2, 0, t);
    let tril = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).tril(0);
    let got = attention(&q, &kk, &vv, None, 0.0).unwrap();
    let diff = max_abs_diff(&got, &reference_attention(&q, &kk, &vv, &tril));
    assert!(
        diff < 1e-12,
        "causal attention differs from reference by {diff}"
    );
}

#[test]
fn allowed_mask_is_causal_plus_padding_plus_self() {
    // One row, T_past = 1, T = 3, keys [pad, pad, real, real].
    let key_mask = Tensor::from_slice(&[0i64, 0, 1, 1]).view([1, 4]);
    let allowed = attention_allowed(&key_mask, 3)
        .unwrap()
        .to_kind(Kind::Int64);
    let want = Tensor::from_slice(&[
        0i64, 1, 0, 0, // query at position 1 (a pad): only itself
        0, 0, 1, 0, // query at 2: itself
        0, 0, 1, 1, // query at 3: real keys ≤ 3
    ])
    .view([1, 1, 3, 4]);
    assert!(allowed.equal(&want), "{allowed}");
}

// ------------------------------------------------------------------------------------------------
// KV cache and padding
// ------------------------------------------------------------------------------------------------

#[test]
fn kv_cache_incremental_equals_full_recomputation() {
    let (_vs, gpt) = tiny();
    let prompts = [ids(6, 4), ids(3, 5)];
    let batch = left_pad(&prompts, 0, Device::Cpu).unwrap();
    let new: Vec<[i64; 2]> = (0..5)
        .map(|i| [1 + (3 * i + 2) % (V - 1), 1 + (5 * i + 7) % (V - 1)])
        .collect();
    // Full recomputation over prompt + all new tokens.
    let new_ids = Tensor::from_slice(&new.concat())
        .view([5, 2])
        .transpose(0, 1); // (2, 5)
    let full_ids = Tensor::cat(&[&batch.input_ids, &new_ids], 1);
    let full_mask = Tensor::cat(&[&batch.attention_mask, &ones(2, 5)], 1);
    let full = logits(
        &gpt,
        &full_ids,
        &full_mask,
        &position_ids_from_mask(&full_mask),
    );

    // Prefix, then a chunk of 2 tokens, then one token at a time.
    let mut cache = KvCache::new(gpt.n_layer());
    let mut pieces = Vec::new();
    tch::no_grad(|| {
        let lg = gpt
            .forward(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.position_ids,
                Some(&mut cache),
                false,
            )
            .unwrap();
        pieces.push(lg);
        let mut start = 0;
        for len in [2i64, 1, 1, 1] {
            let t_total = 6 + start + len;
            let mask = full_mask.narrow(1, 0, t_total);
            let pos = position_ids_from_mask(&mask).narrow(1, t_total - len, len);
            let step_ids = new_ids.narrow(1, start, len);
            let lg = gpt
                .forward(&step_ids, &mask, &pos, Some(&mut cache), false)
                .unwrap();
            pieces.push(lg);
            start += len;
            assert_eq!(cache.len(), t_total);
        }
    });
    let incremental = Tensor::cat(&pieces, 1);
    let real = full_mask.unsqueeze(-1).to_kind(Kind::Float);
    let diff = max_abs_diff(&(&incremental * &real), &(&full * &real));
    assert!(diff <= 1e-5, "cached and full logits differ by {diff}");
}

#[test]
fn left_padding_invariance_needs_correct_position_ids() {
    let (_vs, gpt) = tiny();
    let short = ids(4, 6);
    let alone = logits(&gpt, &row(&short), &ones(1, 4), &arange_pos(1, 4));
    let batch = left_pad(&[ids(9, 7), short.clone()], 0, Device::Cpu).unwrap();
    let batched = logits(
        &gpt,
        &batch.input_ids,
        &batch.attention_mask,
        &batch.position_ids,
    );
    let real = batched.get(1).narrow(0, 5, 4).unsqueeze(0); // (1, 4, V)
    let diff = max_abs_diff(&real, &alone);
    assert!(
        diff <= 1e-5,
        "left-padded row differs from the row alone by {diff}"
    );

    // The known bug: positions 0..T for every row (ignoring the mask) shift the padded row's
    // positions by the pad count, so its logits change.
    let wrong = logits(
        &gpt,
        &batch.input_ids,
        &batch.attention_mask,
        &arange_pos(2, 9),
    );
    let diff = max_abs_diff(&wrong.get(1).narrow(0, 5, 4).unsqueeze(0), &alone);
    assert!(
        diff > 1e-2,
        "wrong position ids should change the logits (diff {diff})"
    );
}

// ------------------------------------------------------------------------------------------------
// Score head
// ------------------------------------------------------------------------------------------------

fn scores(gpt: &Gpt, ids: &Tensor, mask: &Tensor) -> Tensor {
    let pos = position_ids_from_mask(mask);
    tch::no_grad(|| {
        let hidden = gpt.forward_hidden(ids, mask, &pos, None, false).unwrap();
        gpt.scores(&hidden, mask).unwrap()
    })
}

#[test]
fn score_reads_the_last_real_token_with_left_or_right_padding() {
    let (_vs, gpt) = tiny();
    let seq = ids(5, 8);
    let alone = scores(&gpt, &row(&seq), &ones(1, 5));
    let mask_left = row(&[0, 0, 0, 1, 1, 1, 1, 1]);
    let mask_right = row(&[1, 1, 1, 1, 1, 0, 0, 0]);
    for pad_id in [0i64, 9, 36] {
        let left = row(&[vec![pad_id; 3], seq.clone()].concat());
        let right = row(&[seq.clone(), vec![pad_id; 3]].concat());
        for (name, x, mask) in [("left", &left, &mask_left), ("right", &right, &mask_right)] {
            let s = scores(&gpt, x, mask);
            let diff = max_abs_diff(&s, &alone);
            assert!(
                diff <= 1e-5,
                "{name} padding with pad id {pad_id}: score moved by {diff}"
            );
        }
    }
    // Teeth: the score depends on the last real token.
    let mut changed = seq.clone();
    changed[4] = 1 + changed[4] % (V - 1);
    let diff = max_abs_diff(&scores(&gpt, &row(&changed), &ones(1, 5)), &alone);
    assert!(diff > 1e-3, "score ignores the last real token ({diff})");
}

#[test]
fn score_of_a_row_without_real_tokens_is_an_error() {
    let (_vs, gpt) = tiny();
    let hidden = Tensor::zeros([2, 3, 32], (Kind::Float, Device::Cpu));
    let mask = Tensor::from_slice(&[1i64, 1, 0, 0, 0, 0]).view([2, 3]);
    assert!(matches!(
        gpt.scores(&hidden, &mask),
        Err(RlhfError::EmptyRows { .. })
    ));
    let bad = Tensor::from_slice(&[1i64, 2, 0, 0, 1, 0]).view([2, 3]);
    assert!(matches!(
        gpt.scores(&hidden, &bad),
        Err(RlhfError::NonBinaryMask { .. })
    ));
    assert!(matches!(
        gpt.scores(&hidden, &ones(2, 4)),
        Err(RlhfError::Shape { .. })
    ));
    let wrong_width = Tensor::zeros([2, 3, 8], (Kind::Float, Device::Cpu));
    assert!(matches!(
        gpt.values(&wrong_width),
        Err(RlhfError::Shape { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// `last_real_index` is the largest t with mask = 1, for any non-empty 0/1 row (left, right,
    /// middle padding or none), checked against a plain loop.
    #[test]
    fn last_real_index_is_the_last_one(rows in prop::collection::vec(
        prop::collection::vec(0i64..2, 7), 1..5)) {
        let rows: Vec<Vec<i64>> = rows
            .into_iter()
            .map(|mut r| { if r.iter().all(|&m| m == 0) { r[3] = 1; } r })
            .collect();
        let b = rows.len() as i64;
        let mask = Tensor::from_slice(&rows.concat()).view([b, 7]);
        let got = Vec::<i64>::try_from(last_real_index(&mask).unwrap()).unwrap();
        let want: Vec<i64> = rows
            .iter()
            .map(|r| r.iter().rposition(|&m| m == 1).unwrap() as i64)
            .collect();
        prop_assert_eq!(got, want);
    }
}

// ------------------------------------------------------------------------------------------------
// Checkpoints
// ------------------------------------------------------------------------------------------------

fn all_outputs(gpt: &Gpt) -> (Tensor, Tensor, Tensor) {
    let batch = left_pad(&[ids(7, 9), ids(3, 10)], 0, Device::Cpu).unwrap();
    tch::no_grad(|| {
        let h = gpt
            .forward_hidden(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.position_ids,
                None,
                false,
            )
            .unwrap();
        (
            gpt.lm_logits(&h).unwrap(),
            gpt.values(&h).unwrap(),
            gpt.scores(&h, &batch.attention_mask).unwrap(),
        )
    })
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    let (vs, gpt) = tiny();
    let dir = tempdir();
    let ckpt = dir.path().join("ckpt");
    save_model(&ckpt, &vs, gpt.config()).unwrap();
    tch::manual_seed(123); // the loaded model must not depend on fresh init
    let (_vs2, loaded) = Gpt::load_model(&ckpt, Device::Cpu).unwrap();
    assert_eq!(loaded.config(), gpt.config());
    let (l1, v1, s1) = all_outputs(&gpt);
    let (l2, v2, s2) = all_outputs(&loaded);
    assert!(l1.equal(&l2), "logits differ after reload");
    assert!(v1.equal(&v2), "values differ after reload");
    assert!(s1.equal(&s2), "scores differ after reload");
}

fn expect_format_naming(err: RlhfError, needle: &str) {
    match &err {
        RlhfError::Format { reason, path, .. } => {
            assert!(reason.contains(needle), "{err} does not name {needle}");
            assert!(!path.is_empty());
        }
        other => panic!("expected a Format error naming {needle}, got {other:?}"),
    }
}

#[test]
fn broken_checkpoints_give_typed_errors() {
    let (vs, gpt) = tiny();
    let dir = tempdir();
    let ckpt = dir.path().join("ckpt");
    save_model(&ckpt, &vs, gpt.config()).unwrap();
    let weights = ckpt.join("model.safetensors");
    let config = ckpt.join("config.json");
    let good_bytes = std::fs::read(&weights).unwrap();
    let good_config = std::fs::read_to_string(&config).unwrap();

    // Missing directory / missing file → Io with the path.
    let missing = dir.path().join("nope");
    match Gpt::load_model(&missing, Device::Cpu) {
        Err(RlhfError::Io { path, .. }) => assert!(path.contains("nope")),
        other => panic!("missing dir: {other:?}"),
    }
    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(
        Gpt::load_model(&ckpt, Device::Cpu),
        Err(RlhfError::Io { .. })
    ));

    // Truncated safetensors → Format.
    std::fs::write(&weights, &good_bytes[..good_bytes.len() / 2]).unwrap();
    assert!(matches!(
        Gpt::load_model(&ckpt, Device::Cpu),
        Err(RlhfError::Format { .. })
    ));
    std::fs::write(&weights, b"not a safetensors file").unwrap();
    assert!(matches!(
        Gpt::load_model(&ckpt, Device::Cpu),
        Err(RlhfError::Format { .. })
    ));
    std::fs::write(&weights, &good_bytes).unwrap();
    assert!(Gpt::load_model(&ckpt, Device::Cpu).is_ok());

    // Bad configs → Config naming the file.
    for bad in [
        good_config.replace("\"n_head\": 4", "\"n_head\": 5"),
        good_config.replace("\"n_layer\": 2", "\"n_layer\": 2, \"colour\": 1"),
        good_config.replace("\"gelu_new\"", "\"relu\""),
        "{ not json".to_string(),
    ] {
        std::fs::write(&config, &bad).unwrap();
        match Gpt::load_model(&ckpt, Device::Cpu) {
            Err(RlhfError::Config { source_name, .. }) => {
                assert!(source_name.contains("config.json"))
            }
            other => panic!("config {bad}: {other:?}"),
        }
    }
    // A config for another architecture → tensors of the wrong shape, named.
    std::fs::write(
        &config,
        good_config.replace("\"vocab_size\": 37", "\"vocab_size\": 38"),
    )
    .unwrap();
    expect_format_naming(
        Gpt::load_model(&ckpt, Device::Cpu).unwrap_err(),
        "transformer.wte.weight",
    );
    std::fs::write(&config, &good_config).unwrap();

    // Missing and unexpected tensors are named.
    let mut named = rlhf_lab::io::load_tensors(&weights).unwrap();
    named.retain(|(n, _)| n != "transformer.h.1.mlp.c_fc.bias");
    rlhf_lab::io::save_tensors(&weights, &named).unwrap();
    expect_format_naming(
        Gpt::load_model(&ckpt, Device::Cpu).unwrap_err(),
        "transformer.h.1.mlp.c_fc.bias",
    );
    named.push((
        "transformer.h.1.mlp.c_fc.bias".into(),
        Tensor::zeros([128], (Kind::Float, Device::Cpu)),
    ));
    named.push((
        "extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    rlhf_lab::io::save_tensors(&weights, &named).unwrap();
    expect_format_naming(
        Gpt::load_model(&ckpt, Device::Cpu).unwrap_err(),
        "extra.weight",
    );
}

// ------------------------------------------------------------------------------------------------
// Input validation
// ------------------------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vs, gpt) = tiny();
    let ids3 = row(&[1, 2, 3]);
    let (m3, p3) = (ones(1, 3), arange_pos(1, 3));
    let run = |ids: &Tensor, mask: &Tensor, pos: &Tensor| gpt.forward(ids, mask, pos, None, false);

    assert!(matches!(
        run(&row(&[1, V, 3]), &m3, &p3),
        Err(RlhfError::OutOfRange { .. })
    ));
    assert!(matches!(
        run(&row(&[1, -1, 3]), &m3, &p3),
        Err(RlhfError::OutOfRange { .. })
    ));
    assert!(matches!(
        run(&ids3.to_kind(Kind::Float), &m3, &p3),
        Err(RlhfError::Dtype { .. })
    ));
    assert!(matches!(
        run(&Tensor::from_slice(&[1i64, 2]), &m3, &p3),
        Err(RlhfError::Shape { .. })
    ));
    let long = Tensor::ones([1, 25], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        run(&long, &ones(1, 25), &arange_pos(1, 25)),
        Err(RlhfError::OutOfRange { .. })
    ));
    assert!(matches!(
        run(&ids3, &ones(1, 4), &p3),
        Err(RlhfError::Shape { .. })
    ));
    assert!(matches!(
        run(&ids3, &row(&[1, 2, 1]), &p3),
        Err(RlhfError::NonBinaryMask { .. })
    ));
    assert!(matches!(
        run(&ids3, &m3, &row(&[0, 1, 24])),
        Err(RlhfError::OutOfRange { .. })
    ));
    assert!(matches!(
        run(&ids3, &m3, &ones(1, 2)),
        Err(RlhfError::Shape { .. })
    ));
    assert!(matches!(
        run(&ids3, &m3, &p3.to_kind(Kind::Float)),
        Err(RlhfError::Dtype { .. })
    ));

    // Cache: wrong number of layers; cached + new tokens beyond the context.
    let mut wrong = KvCache::new(3);
    assert!(matches!(
        gpt.forward(&ids3, &m3, &p3, Some(&mut wrong), false),
        Err(RlhfError::Invalid { .. })
    ));
    let mut cache = KvCache::new(2);
    let t20 = Tensor::ones([1, 20], (Kind::Int64, Device::Cpu));
    let _ = tch::no_grad(|| {
        gpt.forward(
            &t20,
            &ones(1, 20),
            &arange_pos(1, 20),
            Some(&mut cache),
            false,
        )
    })
    .unwrap();
    let five = Tensor::ones([1, 5], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        gpt.forward(
            &five,
            &ones(1, 25),
            &arange_pos(1, 5),
            Some(&mut cache),
            false
        ),
        Err(RlhfError::OutOfRange { .. })
    ));
    // A mask that does not cover the cached positions.
    let three = Tensor::ones([1, 3], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        gpt.forward(
            &three,
            &ones(1, 3),
            &arange_pos(1, 3),
            Some(&mut cache),
            false
        ),
        Err(RlhfError::Shape { .. })
    ));
    // A cache of another batch size.
    let two_rows = Tensor::ones([2, 3], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        gpt.forward(
            &two_rows,
            &ones(2, 23),
            &arange_pos(2, 3),
            Some(&mut cache),
            false
        ),
        Err(RlhfError::Shape { .. })
    ));
}

#[test]
fn config_validation_and_hf_config_parsing() {
    assert!(tiny_cfg().validate().is_ok());
    for bad in [
        GptConfig::new(V, 24, 30, 2, 4),
        GptConfig::new(0, 24, 32, 2, 4),
        GptConfig::new(V, 24, 32, 0, 4),
        GptConfig::new(V, 24, 32, 2, 4).with_dropout(1.0),
        GptConfig {
            activation_function: "relu".into(),
            ..tiny_cfg()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(RlhfError::Config { .. })),
            "{bad:?}"
        );
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(matches!(
            Gpt::new(&vs.root(), bad),
            Err(RlhfError::Config { .. })
        ));
    }

    let dir = tempdir();
    let path = dir.path().join("config.json");
    let hf = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": 50256, "model_type": "gpt2", "n_embd": 48, "n_head": 4, "n_inner": null,
        "n_layer": 3, "n_positions": 32, "vocab_size": 101, "summary_type": "cls_index",
        "transformers_version": "4.57.6"}"#;
    std::fs::write(&path, hf).unwrap();
    let cfg = GptConfig::from_hf_config_json(&path).unwrap();
    assert_eq!(
        (
            cfg.vocab_size,
            cfg.n_positions,
            cfg.n_embd,
            cfg.n_layer,
            cfg.n_head
        ),
        (101, 32, 48, 3, 4)
    );
    assert_eq!(
        cfg.resid_pdrop, 0.1,
        "missing keys take GPT2Config defaults"
    );
    // Our strict parser rejects the HF keys it does not know.
    assert!(matches!(
        GptConfig::from_json_file(&path),
        Err(RlhfError::Config { .. })
    ));
    for (from, to) in [
        ("\"n_head\": 4", "\"n_head\": 5"),
        ("\"gelu_new\"", "\"relu\""),
        ("\"model_type\": \"gpt2\"", "\"model_type\": \"llama\""),
        (
            "\"n_inner\": null",
            "\"n_inner\": null, \"scale_attn_by_inverse_layer_idx\": true",
        ),
        (
            "\"n_inner\": null",
            "\"n_inner\": null, \"tie_word_embeddings\": false",
        ),
        ("\"vocab_size\": 101", "\"vocab_size\": \"many\""),
    ] {
        std::fs::write(&path, hf.replace(from, to)).unwrap();
        assert!(
            matches!(
                GptConfig::from_hf_config_json(&path),
                Err(RlhfError::Config { .. })
            ),
            "{to}"
        );
    }
    assert!(matches!(
        GptConfig::from_hf_config_json(dir.path().join("absent.json")),
        Err(RlhfError::Io { .. })
    ));
}

// ------------------------------------------------------------------------------------------------
// Training: init, dropout, gradients
// ------------------------------------------------------------------------------------------------

#[test]
fn gpt2_init_and_parameter_names() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = GptConfig::new(500, 64, 64, 8, 4);
    let _gpt = Gpt::new(&vs.root(), cfg).unwrap();
    let vars = vs.variables();
    assert_eq!(vars.len(), 2 + 8 * 12 + 2 + 4);
    let std = |n: &str| common::s(&vars[n].std(true));
    assert!((std("transformer.wte.weight") - 0.02).abs() < 0.002);
    assert!((std("transformer.h.3.attn.c_attn.weight") - 0.02).abs() < 0.002);
    let resid = 0.02 / 16f64.sqrt();
    assert!((std("transformer.h.3.attn.c_proj.weight") - resid).abs() < 0.1 * resid);
    assert!((std("transformer.h.7.mlp.c_proj.weight") - resid).abs() < 0.1 * resid);
    assert_eq!(
        vars["transformer.h.0.attn.c_attn.weight"].size(),
        [64, 192],
        "Conv1D (in, out)"
    );
    assert_eq!(vars["transformer.h.0.mlp.c_proj.weight"].size(), [256, 64]);
    assert_eq!(
        common::s(&vars["transformer.ln_f.weight"].mean(Kind::Float)),
        1.0
    );
    assert_eq!(vars["value_head.weight"].size(), [1, 64]);
    assert_eq!(vars["score_head.bias"].size(), [1]);
}

#[test]
fn dropout_only_in_train_mode() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), tiny_cfg().with_dropout(0.3)).unwrap();
    let (x, m, p) = (row(&ids(6, 11)), ones(1, 6), arange_pos(1, 6));
    let eval1 = logits(&gpt, &x, &m, &p);
    let eval2 = logits(&gpt, &x, &m, &p);
    assert!(eval1.equal(&eval2));
    let train = tch::no_grad(|| gpt.forward(&x, &m, &p, None, true).unwrap());
    assert!(max_abs_diff(&train, &eval1) > 1e-3);
    assert_eq!(train.isfinite().all().int64_value(&[]), 1);
}

#[test]
fn gradients_flow_to_every_parameter_and_are_finite() {
    let (vs, gpt) = tiny();
    let batch = left_pad(&[ids(8, 12), ids(5, 13)], 0, Device::Cpu).unwrap();
    let h = gpt
        .forward_hidden(
            &batch.input_ids,
            &batch.attention_mask,
            &batch.position_ids,
            None,
            true,
        )
        .unwrap();
    let lg = gpt.lm_logits(&h).unwrap();
    let targets = batch.input_ids.roll([-1], [1]);
    let loss = lg
        .view([-1, V])
        .cross_entropy_for_logits(&targets.view([-1]))
        + gpt.values(&h).unwrap().square().mean(Kind::Float)
        + gpt
            .scores(&h, &batch.attention_mask)
            .unwrap()
            .mean(Kind::Float);
    loss.backward();
    for (name, var) in vs.variables() {
        let g = var.grad();
        assert!(g.defined(), "{name} has no gradient");
        assert_eq!(
            g.isfinite().all().int64_value(&[]),
            1,
            "{name}: non-finite gradient"
        );
        assert!(
            common::s(&g.abs().sum(Kind::Double)) > 0.0,
            "{name}: zero gradient"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Parity with HF transformers
// ------------------------------------------------------------------------------------------------

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/setup.sh (needs transformers)",
        p.display()
    );
    p
}

fn make_hf_reference(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/make_gpt2_parity.py");
    let status = std::process::Command::new(python())
        .arg(&script)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", script.display());
}

fn tensor<'a>(named: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &named
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

/// Max |Δlogits| between our model and HF's at real (mask = 1) positions.
fn parity_diff(gpt: &Gpt, reference: &[(String, Tensor)]) -> f64 {
    let ids = tensor(reference, "input_ids");
    let mask = tensor(reference, "attention_mask");
    let pos = tensor(reference, "position_ids");
    assert!(
        pos.equal(&position_ids_from_mask(mask)),
        "reference uses HF position ids"
    );
    let ours = logits(gpt, ids, mask, pos);
    let theirs = tensor(reference, "logits");
    assert_eq!(ours.size(), theirs.size());
    let real = mask.ne(0).unsqueeze(-1).expand_as(&ours);
    common::s(&(ours - theirs).abs().masked_select(&real).max())
}

#[test]
fn hf_parity() {
    let dir = tempdir();
    make_hf_reference(dir.path());
    let reference = rlhf_lab::io::load_tensors(dir.path().join("parity.safetensors")).unwrap();
    let (_vs, gpt) = Gpt::from_pretrained_dir(dir.path(), Device::Cpu).unwrap();
    assert_eq!(gpt.config().vocab_size, 101);
    let diff = parity_diff(&gpt, &reference);
    println!("HF GPT2LMHeadModel parity: max |Δlogits| at real tokens = {diff:.3e}");
    assert!(diff <= 1e-4, "max |Δlogits| = {diff}");

    // The same weights without the `transformer.` prefix (GPT2Model files) load identically,
    // and an untied `lm_head.weight` is refused.
    let weights = dir.path().join("model.safetensors");
    let named = rlhf_lab::io::load_tensors(&weights).unwrap();
    let stripped: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| {
            (
                n.trim_start_matches("transformer.").to_string(),
                t.shallow_clone(),
            )
        })
        .collect();
    rlhf_lab::io::save_tensors(&weights, &stripped).unwrap();
    let (_vs, gpt2) = Gpt::from_pretrained_dir(dir.path(), Device::Cpu).unwrap();
    assert_eq!(parity_diff(&gpt2, &reference), diff);

    let mut untied = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect::<Vec<_>>();
    let wte = tensor(&named, "transformer.wte.weight");
    untied.push(("lm_head.weight".into(), wte + 1.0));
    rlhf_lab::io::save_tensors(&weights, &untied).unwrap();
    expect_format_naming(
        Gpt::from_pretrained_dir(dir.path(), Device::Cpu).unwrap_err(),
        "lm_head.weight",
    );
    let mut missing = named;
    missing.retain(|(n, _)| n != "transformer.h.2.ln_2.bias");
    rlhf_lab::io::save_tensors(&weights, &missing).unwrap();
    expect_format_naming(
        Gpt::from_pretrained_dir(dir.path(), Device::Cpu).unwrap_err(),
        "transformer.h.2.ln_2.bias",
    );
}

/// Timing of the training-size config (not a test; `cargo test --release --test model_gpt -- --ignored
/// --nocapture timing`): forward + backward of B = 16 rows of T = 128 tokens, C = 192, 4 layers,
/// V = 8000, with and without left padding (explicit-mask vs fused-causal attention path).
#[test]
#[ignore]
fn timing_training_config() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), GptConfig::new(8000, 128, 192, 4, 4)).unwrap();
    let (b, t) = (16, 128);
    let x = Tensor::randint(8000, [b, t], (Kind::Int64, Device::Cpu));
    let full = ones(b, t);
    let padded = ones(b, t);
    let _ = padded.narrow(1, 0, 17).fill_(0);
    for (name, mask) in [("no padding", &full), ("left-padded", &padded)] {
        let pos = position_ids_from_mask(mask);
        let step = || {
            let lg = gpt.forward(&x, mask, &pos, None, true).unwrap();
            lg.mean(Kind::Float).backward();
        };
        step();
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            step();
        }
        let fwd_bwd = t0.elapsed().as_secs_f64() / 3.0;
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            let _ = logits(&gpt, &x, mask, &pos);
        }
        let fwd = t0.elapsed().as_secs_f64() / 3.0;
        println!(
            "{name}: forward {:.0} ms, forward+backward {:.0} ms ({} threads)",
            fwd * 1e3,
            fwd_bwd * 1e3,
            tch::get_num_threads()
        );
    }
}
