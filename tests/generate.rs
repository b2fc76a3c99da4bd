//! Batched sampling with a KV cache (`rlhf_lab::generate`): logit processing checked exactly against an
//! independent scalar implementation of HF's warpers, sampling frequencies, greedy chains, EOS handling,
//! log-probs recomputed by a full forward pass, determinism, padding independence, bad input.
//!
//! The test model [`TableLm`] is a fixed random table, simple enough to evaluate by hand in plain Rust:
//! the logits at a token are `W[token] + U[position] + c · (how often each id occurs among the attended
//! tokens so far)`. The count term makes outputs depend on the attention mask and the cached context,
//! and the model rejects calls that break the KV-cache contract (mask width = cached + new tokens).

use rlhf_lab::generate::{filter_logits, generate, Generation, GenerationConfig};
use rlhf_lab::logprobs::token_log_probs;
use rlhf_lab::model::{CausalLm, KvCache};
use rlhf_lab::rng::SplitMix64;
use rlhf_lab::{Result, RlhfError};
use tch::{Device, Kind, Tensor};

const V: i64 = 6;
const EOS: i64 = 0;
const PAD: i64 = 5;

/// `logits[b, j] = W[ids[b, j]] + U[pos[b, j]] + c · Σ_{i ≤ j, mask[b, i] = 1} onehot(all_ids[b, i])`,
/// where `all_ids` are the cached ids followed by the new ones. The cache stores the ids (as f32) in the
/// first layer's keys.
struct TableLm {
    w: Vec<Vec<f32>>, // (V, V)
    u: Vec<Vec<f32>>, // (max_pos, V)
    c: f32,
    max_pos: i64,
}

impl TableLm {
    fn random(seed: u64, max_pos: i64, c: f32, scale: f64) -> Self {
        let mut r = SplitMix64::new(seed);
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((2.0 * r.uniform() - 1.0) * scale) as f32)
                .collect()
        };
        TableLm {
            w: (0..V).map(|_| draw(V as usize)).collect(),
            u: (0..max_pos).map(|_| draw(V as usize)).collect(),
            c,
            max_pos,
        }
    }

    fn table(rows: &[Vec<f32>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, V])
    }

    /// Reference logits (f64) of the next token after `context` (real tokens only, no padding).
    fn next_logits(&self, context: &[i64]) -> Vec<f64> {
        let last = *context.last().unwrap() as usize;
        let pos = context.len() - 1;
        (0..V as usize)
            .map(|v| {
                let count = context.iter().filter(|&&t| t as usize == v).count() as f64;
                self.w[last][v] as f64 + self.u[pos][v] as f64 + self.c as f64 * count
            })
            .collect()
    }
}

impl CausalLm for TableLm {
    fn vocab_size(&self) -> i64 {
        V
    }
    fn max_positions(&self) -> i64 {
        self.max_pos
    }
    fn n_layer(&self) -> usize {
        1
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        _train: bool,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.size2()?;
        let past = match &cache {
            Some(c) if !c.is_empty() => c.layers[0].as_ref().unwrap().0.view([b, -1]),
            _ => Tensor::zeros([b, 0], (Kind::Float, Device::Cpu)),
        };
        let tp = past.size()[1];
        if attention_mask.size() != [b, tp + t] || position_ids.size() != [b, t] {
            return Err(RlhfError::Shape {
                arg: "attention_mask".into(),
                got: attention_mask.size(),
                expected: format!("[{b}, {}] (cached + new)", tp + t),
            });
        }
        if position_ids.max().int64_value(&[]) >= self.max_pos {
            return Err(RlhfError::Invalid {
                arg: "position_ids".into(),
                reason: "past max_positions".into(),
            });
        }
        let all = Tensor::cat(&[past, input_ids.to_kind(Kind::Float)], 1); // (B, L)
        let onehot = all.to_kind(Kind::Int64).one_hot(V).to_kind(Kind::Float)
            * attention_mask.to_kind(Kind::Float).unsqueeze(-1); // (B, L, V)
        let counts = onehot.cumsum(1, Kind::Float).narrow(1, tp, t); // (B, T, V)
        let w = Self::table(&self.w).index_select(0, &input_ids.flatten(0, -1));
        let u = Self::table(&self.u).index_select(0, &position_ids.flatten(0, -1));
        let logits = (w + u).view([b, t, V]) + counts * (self.c as f64);
        if let Some(c) = cache {
            let k = all.view([b, 1, -1, 1]);
            c.layers[0] = Some((k.shallow_clone(), k));
        }
        Ok(logits)
    }
}

fn model() -> TableLm {
    TableLm::random(11, 32, 0.5, 2.0)
}

fn cfg(max_new: usize) -> GenerationConfig {
    GenerationConfig::new(max_new, EOS, PAD)
}

fn rows_i64(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

fn rows_f64(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Independent scalar reference of HF's warpers (temperature → top-k → top-p), f64.

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Which tokens survive: top-k by value (ties with the k-th kept), then the nucleus: walk tokens by
/// decreasing probability (lower id first among equals), keep while the mass before is < top_p.
fn reference_kept(z: &[f64], t: f64, k: usize, p: f64) -> Vec<bool> {
    let n = z.len();
    let zt: Vec<f64> = z.iter().map(|x| x / t).collect();
    let mut keep = vec![true; n];
    if k > 0 && k < n {
        let mut sorted = zt.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let kth = sorted[k - 1];
        for i in 0..n {
            keep[i] = zt[i] >= kth;
        }
    }
    if p < 1.0 {
        let masked: Vec<f64> = (0..n)
            .map(|i| if keep[i] { zt[i] } else { f64::NEG_INFINITY })
            .collect();
        let probs = softmax(&masked);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap().then(a.cmp(&b)));
        let mut before = 0.0;
        for &i in &order {
            if before >= p {
                keep[i] = false;
            }
            before += probs[i];
        }
    }
    keep
}

fn filtered(z: &[f64], t: f64, k: usize, p: f64) -> Vec<f64> {
    let out = filter_logits(&Tensor::from_slice(z).view([1, -1]), t, k, p).unwrap();
    Vec::<f64>::try_from(out.view([-1])).unwrap()
}

fn kept(z: &[f64], t: f64, k: usize, p: f64) -> Vec<bool> {
    filtered(z, t, k, p).iter().map(|x| x.is_finite()).collect()
}

#[test]
fn temperature_divides_the_logits() {
    let z = [1.0, -2.0, 0.5, 3.0];
    let out = filtered(&z, 2.0, 0, 1.0);
    assert_eq!(out, vec![0.5, -1.0, 0.25, 1.5]);
    assert_eq!(filtered(&z, 1.0, 0, 1.0), z.to_vec());
}

#[test]
fn greedy_is_a_point_mass_on_the_first_argmax() {
    assert_eq!(
        filtered(&[1.0, 3.0, 3.0, 0.0], 0.0, 2, 0.1),
        vec![f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY, f64::NEG_INFINITY]
    );
}

#[test]
fn top_k_keeps_exactly_k_or_the_ties() {
    let z = [1.0, 3.0, 2.0, 0.0, -1.0];
    assert_eq!(kept(&z, 1.0, 2, 1.0), vec![false, true, true, false, false]);
    assert_eq!(
        kept(&z, 1.0, 1, 1.0),
        vec![false, true, false, false, false]
    );
    // The kept logits are untouched.
    let out = filtered(&z, 1.0, 3, 1.0);
    assert_eq!(&out[..3], &[1.0, 3.0, 2.0]);
    // k ≥ V is off; k = 0 is off.
    assert_eq!(kept(&z, 1.0, 5, 1.0), vec![true; 5]);
    assert_eq!(kept(&z, 1.0, 0, 1.0), vec![true; 5]);
    // Ties with the k-th are kept (HF `scores < topk(...)[..., -1]`).
    assert_eq!(
        kept(&[1.0, 3.0, 3.0, 0.0], 1.0, 1, 1.0),
        vec![false, true, true, false]
    );
}

#[test]
fn top_p_keeps_the_minimal_nucleus() {
    // p = (0.5, 0.25, 0.15, 0.1), ids shuffled.
    let p = [0.15, 0.5, 0.1, 0.25];
    let z: Vec<f64> = p.iter().map(|x: &f64| x.ln()).collect();
    assert_eq!(kept(&z, 1.0, 0, 0.4), vec![false, true, false, false]);
    assert_eq!(kept(&z, 1.0, 0, 0.6), vec![false, true, false, true]);
    assert_eq!(kept(&z, 1.0, 0, 0.8), vec![true, true, false, true]);
    assert_eq!(kept(&z, 1.0, 0, 0.95), vec![true; 4]);
    assert_eq!(kept(&z, 1.0, 0, 1.0), vec![true; 4]);
    // Tiny top_p keeps one token, the most probable.
    assert_eq!(kept(&z, 1.0, 0, 1e-12), vec![false, true, false, false]);
    // Ties: (0.3, 0.4, 0.3): the nucleus for 0.5 is {0.4, one 0.3} — the lower id.
    let z: Vec<f64> = [0.3f64, 0.4, 0.3].iter().map(|x| x.ln()).collect();
    assert_eq!(kept(&z, 1.0, 0, 0.5), vec![true, true, false]);
    // A uniform row with tiny top_p keeps id 0 only.
    assert_eq!(
        kept(&[0.0; 4], 1.0, 0, 1e-9),
        vec![true, false, false, false]
    );
}

#[test]
fn order_is_temperature_then_top_k_then_top_p() {
    // Temperature before top-p: a hot distribution has a wider nucleus.
    let z = [2.0, 1.0, 0.0, -1.0];
    assert_eq!(kept(&z, 1.0, 0, 0.7).iter().filter(|&&k| k).count(), 2);
    assert_eq!(kept(&z, 10.0, 0, 0.7).iter().filter(|&&k| k).count(), 3);
    // top-k before top-p: the nucleus is taken from the renormalised top-k distribution.
    // p ∝ (0.4, 0.3, 0.2, 0.1): top_p = 0.75 alone keeps 3; after top-k = 2, (4/7, 3/7) keeps both.
    let z: Vec<f64> = [0.4f64, 0.3, 0.2, 0.1].iter().map(|x| x.ln()).collect();
    assert_eq!(kept(&z, 1.0, 0, 0.75), vec![true, true, true, false]);
    assert_eq!(kept(&z, 1.0, 2, 0.75), vec![true, true, false, false]);
    assert_eq!(kept(&z, 1.0, 2, 0.5), vec![true, false, false, false]);
}

#[test]
fn filter_matches_the_scalar_reference_on_random_rows() {
    let mut r = SplitMix64::new(3);
    for case in 0..300 {
        let n = 2 + r.below(12);
        let z: Vec<f64> = (0..n)
            .map(|_| (r.uniform() * 8.0 - 4.0).round() / 2.0)
            .collect(); // ties likely
        let t = [0.3, 0.7, 1.0, 2.5][r.below(4)];
        let k = r.below(n + 2);
        let p = [0.05, 0.3, 0.55, 0.9, 0.999, 1.0][r.below(6)];
        let got = kept(&z, t, k, p);
        let want = reference_kept(&z, t, k, p);
        assert_eq!(got, want, "case {case}: z={z:?} T={t} k={k} p={p}");
        // Kept entries are z / T exactly.
        let out = filtered(&z, t, k, p);
        for i in 0..n {
            if want[i] {
                assert_eq!(out[i], z[i] / t);
            }
        }
    }
}

#[test]
fn filter_rejects_bad_input() {
    let ok = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
    let nan = Tensor::from_slice(&[f32::NAN, 1.0]).view([1, 2]);
    let pinf = Tensor::from_slice(&[f32::INFINITY, 1.0]).view([1, 2]);
    let all_ninf = Tensor::from_slice(&[f32::NEG_INFINITY; 2]).view([1, 2]);
    assert!(matches!(
        filter_logits(&nan, 1.0, 0, 1.0),
        Err(RlhfError::NonFinite { .. })
    ));
    assert!(matches!(
        filter_logits(&pinf, 1.0, 0, 1.0),
        Err(RlhfError::NonFinite { .. })
    ));
    assert!(matches!(
        filter_logits(&all_ninf, 1.0, 0, 1.0),
        Err(RlhfError::Invalid { .. })
    ));
    assert!(matches!(
        filter_logits(&ok.view([-1]), 1.0, 0, 1.0),
        Err(RlhfError::Shape { .. })
    ));
    assert!(matches!(
        filter_logits(&ok.to_kind(Kind::Int64), 1.0, 0, 1.0),
        Err(RlhfError::Dtype { .. })
    ));
    for (t, p) in [
        (-1.0, 1.0),
        (f64::NAN, 1.0),
        (1.0, 0.0),
        (1.0, 1.5),
        (1.0, f64::NAN),
    ] {
        assert!(matches!(
            filter_logits(&ok, t, 0, p),
            Err(RlhfError::OutOfRange { .. })
        ));
    }
    // −∞ entries are allowed (a forbidden token) and stay removed.
    let some_ninf = Tensor::from_slice(&[f32::NEG_INFINITY, 1.0]).view([1, 2]);
    let out = filter_logits(&some_ninf, 1.0, 0, 0.5).unwrap();
    assert_eq!(
        Vec::<f64>::try_from(out.view([-1])).unwrap(),
        vec![f64::NEG_INFINITY, 1.0]
    );
}

// ---------------------------------------------------------------------------------------------------
// Sampling through `generate`.

/// First-token frequencies over many rows (one stream each) against the filtered distribution:
/// tokens outside top-k / the nucleus never appear, the others pass a chi-square test.
#[test]
fn sampled_frequencies_follow_the_filtered_distribution() {
    let m = TableLm::random(5, 8, 0.0, 1.0);
    let prompt = vec![3i64, 1];
    let expected_logits = m.next_logits(&prompt);
    let rows = 3000usize;
    let prompts = vec![prompt; rows];
    for (t, k, p) in [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.8), (1.0, 4, 0.7)] {
        let mut c = cfg(1);
        c.temperature = t;
        c.top_k = k;
        c.top_p = p;
        c.seed = 42;
        let g = generate(&m, &prompts, &c).unwrap();
        let toks = Vec::<i64>::try_from(g.response_ids.view([-1])).unwrap();
        let mut counts = vec![0f64; V as usize];
        for &x in &toks {
            counts[x as usize] += 1.0;
        }
        let keep = reference_kept(&expected_logits, t, k, p);
        let z: Vec<f64> = (0..V as usize)
            .map(|i| {
                if keep[i] {
                    expected_logits[i] / t
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        let probs = softmax(&z);
        let mut chi2 = 0.0;
        let mut df = -1i32;
        for i in 0..V as usize {
            if keep[i] {
                let e = probs[i] * rows as f64;
                chi2 += (counts[i] - e).powi(2) / e;
                df += 1;
            } else {
                assert_eq!(
                    counts[i], 0.0,
                    "token {i} outside the filter was sampled (T={t} k={k} p={p})"
                );
            }
        }
        if k > 0 {
            assert!(keep.iter().filter(|&&x| x).count() <= k);
        }
        // 99.9% quantiles of chi-square with df = 0..5.
        let crit = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52][df.max(0) as usize];
        assert!(
            chi2 <= crit + 1e-9,
            "chi2 {chi2} > {crit} (df {df}, T={t} k={k} p={p})"
        );
        // Log-probs under the sampling distribution are exactly those of the reference.
        let lp = rows_f64(&g.logprobs);
        for (r, &x) in toks.iter().enumerate().take(50) {
            assert!((lp[r][0] - probs[x as usize].ln()).abs() < 1e-5);
        }
    }
}

#[test]
fn greedy_follows_the_argmax_chain() {
    let m = model();
    let prompts = vec![vec![1i64, 2, 3], vec![4i64], vec![2i64, 2]];
    let mut c = cfg(8);
    c.temperature = 0.0;
    let g = generate(&m, &prompts, &c).unwrap();
    let resp = g.responses().unwrap();
    for (r, prompt) in prompts.iter().enumerate() {
        let mut ctx = prompt.clone();
        let mut want = vec![];
        for _ in 0..8 {
            let z = m.next_logits(&ctx);
            let best = (0..V as usize)
                .max_by(|&a, &b| z[a].partial_cmp(&z[b]).unwrap().then(b.cmp(&a)))
                .unwrap() as i64;
            want.push(best);
            ctx.push(best);
            if best == EOS {
                break;
            }
        }
        assert_eq!(resp[r], want, "row {r}");
    }
    // Greedy log-probs under the (point-mass) sampling distribution are 0; the raw ones are not.
    assert!(rows_f64(&g.logprobs).iter().flatten().all(|&x| x == 0.0));
    let raw = rows_f64(&g.logprobs_raw);
    assert!(raw[0][0] < 0.0);
}

/// A model where token 4 is always followed by EOS and nothing else ever leads to EOS.
fn eos_model() -> TableLm {
    let mut m = TableLm::random(9, 32, 0.0, 1.0);
    for (tok, row) in m.w.iter_mut().enumerate() {
        row[EOS as usize] = if tok == 4 { 60.0 } else { -60.0 };
        if tok != 4 {
            row[4] = -60.0; // never sample 4 itself after the prompt
        }
    }
    m
}

#[test]
fn eos_stops_a_row_and_the_rest_is_masked_padding() {
    let m = eos_model();
    let prompts = vec![vec![1i64, 4], vec![2i64, 3, 1]];
    let mut c = cfg(6);
    c.seed = 7;
    let g = generate(&m, &prompts, &c).unwrap();
    assert_eq!(g.response_width(), 6);
    let ids = rows_i64(&g.response_ids);
    let mask = rows_i64(&g.response_mask);
    let lp = rows_f64(&g.logprobs);
    let raw = rows_f64(&g.logprobs_raw);
    // Row 0 hits EOS at step 1: EOS kept with mask 1, then pads with mask 0 and log-prob exactly 0.
    assert_eq!(ids[0], vec![EOS, PAD, PAD, PAD, PAD, PAD]);
    assert_eq!(mask[0], vec![1, 0, 0, 0, 0, 0]);
    assert!(lp[0][0].abs() < 1e-6 && lp[0][0] <= 0.0);
    assert!(lp[0][1..].iter().chain(&raw[0][1..]).all(|&x| x == 0.0));
    // Row 1 never hits EOS: six real tokens.
    assert_eq!(mask[1], vec![1; 6]);
    assert!(!ids[1].contains(&EOS));
    assert!(lp[1]
        .iter()
        .chain(&raw[1])
        .all(|x| x.is_finite() && *x <= 0.0));
    assert_eq!(
        Vec::<i64>::try_from(&g.response_lengths).unwrap(),
        vec![1, 6]
    );
    assert_eq!(
        Vec::<bool>::try_from(&g.ended_with_eos).unwrap(),
        vec![true, false]
    );
    // The attention mask of the full sequence marks the pads after EOS as 0.
    let am = rows_i64(&g.attention_mask);
    assert_eq!(am[0], vec![0, 1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(am[1], vec![1; 9]);
    let pos = rows_i64(&g.position_ids);
    assert_eq!(&pos[1], &(0..9).collect::<Vec<i64>>());
    assert_eq!(&pos[0][..4], &[0, 0, 1, 2]);
}

#[test]
fn batch_stops_when_every_row_is_done() {
    let m = eos_model();
    // Every row ends with token 4, so every row samples EOS at step 1.
    let prompts = vec![vec![1i64, 4], vec![4i64], vec![3i64, 2, 4]];
    let g = generate(&m, &prompts, &cfg(10)).unwrap();
    assert_eq!(g.response_width(), 1);
    assert_eq!(rows_i64(&g.response_ids), vec![vec![EOS]; 3]);
    assert_eq!(g.sequences.size(), vec![3, 4]);
}

#[test]
fn min_new_tokens_forbids_early_eos() {
    let m = eos_model();
    let mut c = cfg(4);
    c.min_new_tokens = 2;
    let g = generate(&m, &[vec![1i64, 4]], &c).unwrap();
    let ids = &rows_i64(&g.response_ids)[0];
    assert_ne!(ids[0], EOS);
    assert_ne!(ids[1], EOS);
    // The sampling log-prob excludes EOS, the raw one does not: raw < sampling at step 0.
    let lp = &rows_f64(&g.logprobs)[0];
    let raw = &rows_f64(&g.logprobs_raw)[0];
    assert!(raw[0] < lp[0] - 10.0);
}

/// The log-probs returned by generation equal those recomputed by one full forward pass over
/// `sequences` with `attention_mask` / `position_ids` (the training pass), both raw
/// (`token_log_probs`) and after the same filtering.
fn check_against_full_forward<M: CausalLm>(m: &M, g: &Generation, c: &GenerationConfig) {
    let logits = m
        .forward(
            &g.sequences,
            &g.attention_mask,
            &g.position_ids,
            None,
            false,
        )
        .unwrap();
    let (p, n) = (g.prompt_width(), g.response_width());
    let resp_logits = logits.narrow(1, p - 1, n); // (B, N, V)
    let raw = token_log_probs(&resp_logits, &g.response_ids, &g.response_mask).unwrap();
    let d = (&raw - &g.logprobs_raw).abs().max().double_value(&[]);
    assert!(d < 1e-5, "raw log-probs differ by {d}");
    let b = g.batch_size();
    let v = resp_logits.size()[2];
    let flat = resp_logits.reshape([b * n, v]);
    let proc = filter_logits(&flat, c.temperature, c.top_k, c.top_p).unwrap();
    let lp = proc
        .log_softmax(-1, Kind::Double)
        .gather(-1, &g.response_ids.reshape([b * n, 1]), false)
        .view([b, n]);
    let mask = g.response_mask.ne(0);
    let lp = lp.where_self(&mask, &lp.zeros_like());
    let d = (&lp - &g.logprobs.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "sampling log-probs differ by {d}");
    // Exactly 0 where masked, finite and ≤ 0 everywhere.
    for t in [&g.logprobs, &g.logprobs_raw] {
        assert_eq!(t.kind(), Kind::Float);
        let outside = t.masked_select(&mask.logical_not());
        assert!(outside.numel() == 0 || outside.abs().max().double_value(&[]) == 0.0);
        assert!(bool::try_from(t.isfinite().all()).unwrap());
        assert!(t.max().double_value(&[]) <= 0.0);
    }
}

#[test]
fn logprobs_match_a_full_forward_over_the_sequences() {
    let m = model();
    let prompts = vec![
        vec![1i64, 2, 3, 4],
        vec![2i64],
        vec![3i64, 3],
        vec![4i64, 1, 2],
    ];
    for (t, k, p) in [(1.0, 0, 1.0), (0.7, 3, 0.9), (1.3, 0, 0.6), (0.0, 0, 1.0)] {
        let mut c = cfg(7);
        c.temperature = t;
        c.top_k = k;
        c.top_p = p;
        c.seed = 123;
        let g = generate(&m, &prompts, &c).unwrap();
        check_against_full_forward(&m, &g, &c);
        // Without top-k/top-p at T = 1 the two log-probs coincide.
        if t == 1.0 && k == 0 && p == 1.0 {
            let d = (&g.logprobs - &g.logprobs_raw)
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-6);
        }
    }
}

#[test]
fn prompt_ids_and_masks_are_left_padded() {
    let m = model();
    let prompts = vec![vec![1i64, 2, 3], vec![4i64]];
    let g = generate(&m, &prompts, &cfg(3)).unwrap();
    assert_eq!(
        rows_i64(&g.prompt_ids),
        vec![vec![1, 2, 3], vec![PAD, PAD, 4]]
    );
    assert_eq!(rows_i64(&g.prompt_mask), vec![vec![1, 1, 1], vec![0, 0, 1]]);
    let seq = rows_i64(&g.sequences);
    let resp = rows_i64(&g.response_ids);
    assert_eq!(seq[1][..3], [PAD, PAD, 4]);
    assert_eq!(seq[1][3..], resp[1][..]);
}

#[test]
fn same_seed_same_tokens_whatever_torch_rng_does() {
    let m = model();
    let prompts = vec![vec![1i64, 2], vec![3i64], vec![4i64, 4, 4]];
    let mut c = cfg(12);
    c.seed = 99;
    tch::manual_seed(1);
    let a = generate(&m, &prompts, &c).unwrap();
    tch::manual_seed(2);
    let _ = Tensor::rand([100], (Kind::Float, Device::Cpu));
    let b = generate(&m, &prompts, &c).unwrap();
    assert_eq!(rows_i64(&a.response_ids), rows_i64(&b.response_ids));
    assert_eq!(rows_f64(&a.logprobs), rows_f64(&b.logprobs));
    c.seed = 100;
    let d = generate(&m, &prompts, &c).unwrap();
    assert_ne!(rows_i64(&a.response_ids), rows_i64(&d.response_ids));
    // Identical prompts in one batch get different samples (one stream per row).
    let g = generate(&m, &[vec![1i64, 2], vec![1i64, 2]], &c).unwrap();
    let rows = rows_i64(&g.response_ids);
    assert_ne!(rows[0], rows[1]);
}

#[test]
fn a_row_does_not_depend_on_its_batch_neighbours() {
    let m = model();
    let mut c = cfg(10);
    c.seed = 5;
    c.temperature = 0.9;
    c.top_k = 4;
    let alone = generate(&m, &[vec![2i64, 3]], &c).unwrap();
    let batched = generate(&m, &[vec![2i64, 3], vec![1i64, 1, 4, 4, 2], vec![4i64]], &c).unwrap();
    assert_eq!(
        alone.responses().unwrap()[0],
        batched.responses().unwrap()[0]
    );
    let n = alone.response_width();
    let d = (alone.logprobs_raw.get(0) - batched.logprobs_raw.get(0).narrow(0, 0, n))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-6);
}

#[test]
fn cache_and_full_recompute_give_the_same_generation() {
    let m = model();
    let prompts = vec![vec![1i64, 2, 3], vec![4i64], vec![2i64, 1]];
    let mut c = cfg(9);
    c.seed = 17;
    c.top_p = 0.9;
    let cached = generate(&m, &prompts, &c).unwrap();
    c.use_cache = false;
    let full = generate(&m, &prompts, &c).unwrap();
    assert_eq!(rows_i64(&cached.sequences), rows_i64(&full.sequences));
    let d = (&cached.logprobs - &full.logprobs)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-6);
}

#[test]
fn config_validation_and_serde() {
    assert!(cfg(1).validate().is_ok());
    let bad = |f: &dyn Fn(&mut GenerationConfig)| {
        let mut c = cfg(4);
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(matches!(
        bad(&|c| c.max_new_tokens = 0),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.min_new_tokens = 5),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.temperature = -0.1),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.temperature = f64::INFINITY),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.top_p = 0.0),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.top_p = 1.01),
        RlhfError::OutOfRange { .. }
    ));
    assert!(matches!(
        bad(&|c| c.pad_id = EOS),
        RlhfError::Invalid { .. }
    ));
    assert!(matches!(
        bad(&|c| c.eos_id = -1),
        RlhfError::OutOfRange { .. }
    ));
    let e = bad(&|c| c.pad_id = EOS);
    assert_eq!(e.argument(), Some("pad_id"));

    let c: GenerationConfig =
        serde_json::from_str(r#"{"max_new_tokens": 5, "eos_id": 0, "pad_id": 5}"#).unwrap();
    assert_eq!(c, cfg(5));
    let mut c2 = cfg(3);
    c2.top_k = 7;
    c2.seed = 1 << 40;
    let back: GenerationConfig =
        serde_json::from_str(&serde_json::to_string(&c2).unwrap()).unwrap();
    assert_eq!(back, c2);
    assert!(serde_json::from_str::<GenerationConfig>(
        r#"{"max_new_tokens": 5, "eos_id": 0, "pad_id": 5, "topk": 3}"#
    )
    .is_err());
}

#[test]
fn bad_prompts_are_errors_not_panics() {
    let m = model(); // 32 positions, V = 6
    let c = cfg(4);
    let arg = |r: Result<Generation>| r.unwrap_err().argument().map(String::from);
    assert_eq!(arg(generate(&m, &[], &c)), Some("prompts".into()));
    assert_eq!(
        arg(generate(&m, &[vec![1], vec![]], &c)),
        Some("prompts".into())
    );
    assert_eq!(arg(generate(&m, &[vec![1, V]], &c)), Some("prompts".into()));
    assert_eq!(arg(generate(&m, &[vec![-1]], &c)), Some("prompts".into()));
    assert_eq!(
        arg(generate(&m, &[vec![1; 29]], &c)),
        Some("prompts".into())
    );
    assert!(generate(&m, &[vec![1; 28]], &c).is_ok());
    let mut c2 = c.clone();
    c2.pad_id = V;
    assert!(matches!(
        generate(&m, &[vec![1]], &c2),
        Err(RlhfError::OutOfRange { .. })
    ));
    let mut c3 = c.clone();
    c3.max_new_tokens = 0;
    assert!(generate(&m, &[vec![1]], &c3).is_err());
}

/// A model returning NaN logits: a typed error, not a NaN log-prob or a panic.
struct NanLm;

impl CausalLm for NanLm {
    fn vocab_size(&self) -> i64 {
        V
    }
    fn max_positions(&self) -> i64 {
        16
    }
    fn n_layer(&self) -> usize {
        1
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(
        &self,
        input_ids: &Tensor,
        _attention_mask: &Tensor,
        _position_ids: &Tensor,
        _cache: Option<&mut KvCache>,
        _train: bool,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.size2()?;
        Ok(Tensor::full(
            [b, t, V],
            f64::NAN,
            (Kind::Float, Device::Cpu),
        ))
    }
}

#[test]
fn non_finite_model_logits_are_an_error() {
    for t in [1.0, 0.0] {
        let mut c = cfg(3);
        c.temperature = t;
        let e = generate(&NanLm, &[vec![1]], &c).unwrap_err();
        assert!(matches!(e, RlhfError::NonFinite { .. }), "{e}");
    }
}

#[test]
fn texts_decode_the_responses() {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::AddedToken;
    let vocab = [
        ("<eos>", 0u32),
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("d", 4),
        ("<pad>", 5),
    ]
    .iter()
    .map(|(s, i)| (s.to_string(), *i))
    .collect();
    let wl = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<pad>".into())
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(wl);
    inner.with_pre_tokenizer(Some(Whitespace {}));
    inner.add_special_tokens(&[
        AddedToken::from("<eos>", true),
        AddedToken::from("<pad>", true),
    ]);
    let tok = rlhf_lab::tokenizer::Tokenizer::from_hf(inner, "<eos>", "<pad>").unwrap();
    let m = eos_model();
    let mut c = cfg(5);
    c.temperature = 0.0;
    let g = generate(&m, &[vec![1i64, 4], vec![2i64, 3]], &c).unwrap();
    let texts = g.texts(&tok).unwrap();
    let resp = g.responses().unwrap();
    assert_eq!(texts[0], ""); // EOS only, skipped as special
    let names = ["<eos>", "a", "b", "c", "d", "<pad>"];
    let want: Vec<&str> = resp[1].iter().map(|&i| names[i as usize]).collect();
    assert_eq!(texts[1], want.join(" "));
}

// ---------------------------------------------------------------------------------------------------
// Through a real attention model: a tiny random GPT-2.

fn tiny_gpt() -> (tch::nn::VarStore, rlhf_lab::model::gpt::Gpt) {
    use rlhf_lab::model::gpt::{Gpt, GptConfig};
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let mut c = GptConfig::new(V, 24, 32, 2, 4);
    c.initializer_range = 0.3; // a peaked, prompt-dependent next-token distribution
    let gpt = Gpt::new(&vs.root(), c).unwrap();
    (vs, gpt)
}

#[test]
fn gpt_generation_with_the_kv_cache_equals_full_recompute() {
    let (_vs, gpt) = tiny_gpt();
    let prompts = vec![
        vec![1i64, 2, 3, 4, 1],
        vec![4i64],
        vec![2i64, 3],
        vec![3i64, 3, 1],
    ];
    for (t, k, p) in [(1.0, 0, 1.0), (0.8, 3, 0.9), (0.0, 0, 1.0)] {
        let mut c = cfg(12);
        c.temperature = t;
        c.top_k = k;
        c.top_p = p;
        c.seed = 2024;
        let cached = generate(&gpt, &prompts, &c).unwrap();
        c.use_cache = false;
        let full = generate(&gpt, &prompts, &c).unwrap();
        assert_eq!(
            rows_i64(&cached.sequences),
            rows_i64(&full.sequences),
            "T={t} k={k} p={p}"
        );
        assert_eq!(
            rows_i64(&cached.attention_mask),
            rows_i64(&full.attention_mask)
        );
        for (a, b) in [
            (&cached.logprobs, &full.logprobs),
            (&cached.logprobs_raw, &full.logprobs_raw),
        ] {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-5, "cache vs recompute log-probs differ by {d}");
        }
        // And both agree with one training forward pass over the finished sequences.
        check_against_full_forward(&gpt, &cached, &c);
    }
}

#[test]
fn gpt_left_padding_does_not_change_a_rows_generation() {
    let (_vs, gpt) = tiny_gpt();
    let mut c = cfg(10);
    c.seed = 8;
    let alone = generate(&gpt, &[vec![2i64, 3]], &c).unwrap();
    let batched = generate(&gpt, &[vec![2i64, 3], vec![1i64, 4, 4, 2, 1, 3]], &c).unwrap();
    assert_eq!(
        alone.responses().unwrap()[0],
        batched.responses().unwrap()[0]
    );
    let n = alone.response_width();
    let d = (alone.logprobs_raw.get(0) - batched.logprobs_raw.get(0).narrow(0, 0, n))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "{d}");
}

/// Timing, not a check: `cargo test --release --test generate -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_cache_versus_full_recompute() {
    use rlhf_lab::model::gpt::{Gpt, GptConfig};
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let gpt = Gpt::new(&vs.root(), GptConfig::new(512, 256, 128, 4, 4)).unwrap();
    let prompts: Vec<Vec<i64>> = (0..8)
        .map(|r| (0..16 + r).map(|i| 1 + (i * 7 + r) % 500).collect())
        .collect();
    tch::set_num_threads(1);
    for use_cache in [true, false] {
        let mut c = GenerationConfig::new(128, 0, 511);
        c.min_new_tokens = 128;
        c.use_cache = use_cache;
        let t0 = std::time::Instant::now();
        let g = generate(&gpt, &prompts, &c).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let n = g.response_width();
        println!(
            "use_cache={use_cache}: B=8, P≈{}, N={n}: {:.3} s, {:.1} ms/step, {:.0} tokens/s",
            g.prompt_width(),
            dt,
            1e3 * dt / n as f64,
            8.0 * n as f64 / dt
        );
    }
}

#[test]
fn repetition_penalty_follows_hf_on_the_greedy_chain() {
    let m = model();
    let theta = 1.8;
    let prompts = vec![vec![1i64, 2, 1], vec![3i64]];
    let mut c = cfg(8);
    c.temperature = 0.0;
    c.repetition_penalty = theta;
    let g = generate(&m, &prompts, &c).unwrap();
    let resp = g.responses().unwrap();
    let mut c_off = c.clone();
    c_off.repetition_penalty = 1.0;
    let plain = generate(&m, &prompts, &c_off).unwrap().responses().unwrap();
    assert_ne!(resp, plain, "the penalty should change this greedy chain");
    for (r, prompt) in prompts.iter().enumerate() {
        let mut ctx = prompt.clone();
        let mut want = vec![];
        for _ in 0..8 {
            let z: Vec<f64> = m
                .next_logits(&ctx)
                .iter()
                .enumerate()
                .map(|(v, &z)| match ctx.contains(&(v as i64)) {
                    true if z < 0.0 => z * theta,
                    true => z / theta,
                    false => z,
                })
                .collect();
            let best = (0..V as usize)
                .max_by(|&a, &b| z[a].partial_cmp(&z[b]).unwrap().then(b.cmp(&a)))
                .unwrap() as i64;
            want.push(best);
            ctx.push(best);
            if best == EOS {
                break;
            }
        }
        assert_eq!(resp[r], want, "row {r}");
    }
    let mut bad = cfg(3);
    bad.repetition_penalty = 0.0;
    assert!(matches!(bad.validate(), Err(RlhfError::OutOfRange { .. })));
}
