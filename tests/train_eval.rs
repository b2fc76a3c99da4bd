//! The evaluator (`train::eval`) and its exact KL (`core::kl::kl_full_vocab`).
//!
//! Exactness: two tiny random GPTs over a 5-token vocabulary with responses of at most 3 tokens have
//! 85 possible responses per prompt, few enough to enumerate. For every response `y` we compute
//! `π(y)`, `π_ref(y)` and `Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t))` by teacher forcing, in f64, so that
//! * the sequence-level KL `Σ_y π(y) log π(y)/π_ref(y)` is known exactly, and equals
//!   `E_π[Σ_t KL_t]` (the chain rule of KL — the identity behind the DPO paper's footnote 3);
//! * every sample the evaluator returns has `kl_exact` equal to the enumerated `Σ_t KL_t` of its
//!   response (1e-9), and the sample means of `kl_exact`, k1, k3 and the length lie within 5 standard
//!   errors (from the enumerated variances) of their exact expectations.

mod common;
use common::tiny::{tiny_gpt, tiny_tokenizer, CountC, EOS, V};
use common::*;
use rlhf_lab::ground_truth::SentimentScorer;
use rlhf_lab::kl::kl_full_vocab;
use rlhf_lab::model::gpt::Gpt;
use rlhf_lab::model::CausalLm;
use rlhf_lab::train::eval::{distinct_n, evaluate, EvalConfig, EvalResult};
use rlhf_lab::{Result, RlhfError};
use std::collections::HashMap;
use tch::{nn, Device, Kind, Tensor};

const MAX_NEW: usize = 3;

/// A scorer that returns `k` scores whatever it is given, all equal to `value`.
struct Broken {
    k: usize,
    value: f32,
}
impl SentimentScorer for Broken {
    fn score(&self, _texts: &[&str]) -> Result<Tensor> {
        Ok(Tensor::from_slice(&vec![self.value; self.k]))
    }
    fn name(&self) -> &str {
        "broken"
    }
}

/// Next-token log-probabilities `(V,)` in f64 after the unpadded context `ctx`.
fn next_logp(m: &Gpt, ctx: &[i64]) -> Vec<f64> {
    let t = ctx.len() as i64;
    let ids = Tensor::from_slice(ctx).view([1, t]);
    let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).view([1, t]);
    let logits = m.forward(&ids, &mask, &pos, None, false).unwrap();
    let lp = logits
        .select(1, t - 1)
        .squeeze_dim(0)
        .to_kind(Kind::Double)
        .log_softmax(-1, Kind::Double);
    v1(&lp)
}

/// One complete response with its probability under π and its per-sample statistics.
#[derive(Debug, Clone)]
struct Leaf {
    prob: f64,
    /// Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t)) along the response.
    kl_tok_sum: f64,
    /// log π(y) − log π_ref(y).
    k1: f64,
    /// Σ_t k3 of the sampled tokens.
    k3: f64,
}

/// Every response of at most `MAX_NEW` tokens (stopping at EOS) after `prompt`.
fn enumerate(pol: &Gpt, rf: &Gpt, prompt: &[i64]) -> HashMap<Vec<i64>, Leaf> {
    fn walk(
        pol: &Gpt,
        rf: &Gpt,
        prompt: &[i64],
        prefix: Vec<i64>,
        acc: Leaf,
        out: &mut HashMap<Vec<i64>, Leaf>,
    ) {
        let ctx: Vec<i64> = prompt.iter().chain(&prefix).copied().collect();
        let (lp, lq) = (next_logp(pol, &ctx), next_logp(rf, &ctx));
        let kl_t: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
        for v in 0..V {
            let r = lp[v as usize] - lq[v as usize];
            let next = Leaf {
                prob: acc.prob * lp[v as usize].exp(),
                kl_tok_sum: acc.kl_tok_sum + kl_t,
                k1: acc.k1 + r,
                k3: acc.k3 + (-r).exp() - 1.0 + r,
            };
            let mut y = prefix.clone();
            y.push(v);
            if v == EOS || y.len() == MAX_NEW {
                out.insert(y, next);
            } else {
                walk(pol, rf, prompt, y, next, out);
            }
        }
    }
    let mut out = HashMap::new();
    let root = Leaf {
        prob: 1.0,
        kl_tok_sum: 0.0,
        k1: 0.0,
        k3: 0.0,
    };
    walk(pol, rf, prompt, Vec::new(), root, &mut out);
    out
}

/// Mean and variance under π of `f` over the leaves.
fn moments(leaves: &HashMap<Vec<i64>, Leaf>, f: impl Fn(&[i64], &Leaf) -> f64) -> (f64, f64) {
    let m: f64 = leaves.iter().map(|(y, l)| l.prob * f(y, l)).sum();
    let v: f64 = leaves
        .iter()
        .map(|(y, l)| l.prob * (f(y, l) - m).powi(2))
        .sum();
    (m, v)
}

#[test]
fn exact_kl_equals_enumeration_and_sample_means_converge() {
    let (_vp, pol) = tiny_gpt(1, V, true);
    let (_vr, rf) = tiny_gpt(2, V, true);
    let tok = tiny_tokenizer();
    let prompts_distinct = [vec![2i64], vec![3, 4, 2]];
    let exact: Vec<HashMap<Vec<i64>, Leaf>> = prompts_distinct
        .iter()
        .map(|p| enumerate(&pol, &rf, p))
        .collect();

    // The enumeration is a distribution, and the chain rule holds: Σ_y π(y) log π(y)/π_ref(y) =
    // E_π[Σ_t KL_t]. (k3 is unbiased per token, so E_π[Σ_t k3] is the same number.)
    let mut kl_exact = Vec::new();
    for leaves in &exact {
        assert_eq!(leaves.len(), 1 + 4 + 4 * 4 * 5);
        let total: f64 = leaves.values().map(|l| l.prob).sum();
        assert!((total - 1.0).abs() < 1e-12, "Σ π(y) = {total}");
        let (kl_seq, _) = moments(leaves, |_, l| l.k1);
        let (kl_chain, _) = moments(leaves, |_, l| l.kl_tok_sum);
        let (k3_mean, _) = moments(leaves, |_, l| l.k3);
        assert!(kl_seq > 0.05, "the two models should differ: KL = {kl_seq}");
        assert!((kl_seq - kl_chain).abs() < 1e-12, "{kl_seq} vs {kl_chain}");
        assert!((kl_seq - k3_mean).abs() < 1e-12, "{kl_seq} vs {k3_mean}");
        kl_exact.push(kl_seq);
    }

    // The evaluator on M copies of each prompt (interleaved, so rows are left-padded).
    let m = 1500;
    let prompts: Vec<Vec<i64>> = (0..m)
        .flat_map(|_| prompts_distinct.iter().cloned())
        .collect();
    let cfg = EvalConfig {
        max_new_tokens: MAX_NEW,
        batch_size: 500,
        seed: 11,
    };
    let res = evaluate(&pol, &rf, &tok, &prompts, &CountC, &cfg).unwrap();
    assert_eq!(res.n, 2 * m);

    // Per sample: kl_exact is the enumerated Σ_t KL_t of the sampled response.
    let mut worst: f64 = 0.0;
    for (i, s) in res.samples.iter().enumerate() {
        let leaf = exact[i % 2]
            .get(&s.response_ids)
            .unwrap_or_else(|| panic!("response {:?} not enumerated", s.response_ids));
        worst = worst.max((s.kl_exact - leaf.kl_tok_sum).abs());
        let n_c = s.prompt.matches('c').count() + s.response.matches('c').count();
        assert_eq!(s.score, n_c as f64, "score of {:?}", s);
    }
    assert!(worst < 1e-9, "max |kl_exact − enumerated| = {worst:e}");

    // Sample means within 5 standard errors of the exact expectations (M draws per prompt).
    let n = (2 * m) as f64;
    let check = |name: &str, got: f64, f: &dyn Fn(&[i64], &Leaf) -> f64| {
        let (m0, v0) = moments(&exact[0], f);
        let (m1, v1) = moments(&exact[1], f);
        let want = (m0 + m1) / 2.0;
        let se = ((v0 + v1) / 2.0 / n).sqrt();
        println!("{name}: sample mean {got:.5}, exact {want:.5}, SE {se:.5}");
        assert!(
            (got - want).abs() <= 5.0 * se + 1e-12,
            "{name}: sample mean {got} vs exact {want} (SE {se})"
        );
    };
    check("kl_exact", res.kl_exact, &|_, l| l.kl_tok_sum);
    check("kl_k1", res.kl_k1, &|_, l| l.k1);
    check("kl_k3", res.kl_k3, &|_, l| l.k3);
    check("response_len", res.response_len, &|y, _| y.len() as f64);
    let exact_mean = (kl_exact[0] + kl_exact[1]) / 2.0;
    println!("sequence KL(π ‖ π_ref) by enumeration: {exact_mean:.5}");
    // kl_exact has a much smaller variance than k1 (no sampling noise within a state).
    let (_, var_exact) = moments(&exact[0], |_, l| l.kl_tok_sum);
    let (_, var_k1) = moments(&exact[0], |_, l| l.k1);
    assert!(var_exact < var_k1, "{var_exact} vs {var_k1}");
}

fn f32_pair() -> ((nn::VarStore, Gpt), (nn::VarStore, Gpt)) {
    (tiny_gpt(3, V, false), tiny_gpt(4, V, false))
}

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![2], vec![3, 4], vec![4, 4, 3], vec![2, 3]]
}

fn cfg(seed: u64) -> EvalConfig {
    EvalConfig {
        max_new_tokens: MAX_NEW,
        batch_size: 3,
        seed,
    }
}

#[test]
fn kl_is_exactly_zero_against_the_policy_itself() {
    let ((_v, pol), _) = f32_pair();
    let (_v2, copy) = tiny_gpt(3, V, false); // the same weights, another model
    let tok = tiny_tokenizer();
    for rf in [&pol, &copy] {
        let res = evaluate(&pol, rf, &tok, &prompts(), &CountC, &cfg(5)).unwrap();
        assert_eq!(res.kl_exact, 0.0);
        assert_eq!(res.kl_k1, 0.0);
        assert_eq!(res.kl_k3, 0.0);
        assert!(res.samples.iter().all(|s| s.kl_exact == 0.0));
        assert!(res.entropy > 0.0 && res.entropy <= (V as f64).ln() + 1e-6);
    }
}

#[test]
fn evaluation_is_deterministic_and_seeded() {
    let ((_a, pol), (_b, rf)) = f32_pair();
    let tok = tiny_tokenizer();
    let many: Vec<Vec<i64>> = (0..20).flat_map(|_| prompts()).collect();
    let run = |seed| evaluate(&pol, &rf, &tok, &many, &CountC, &cfg(seed)).unwrap();
    let (r1, r2): (EvalResult, EvalResult) = (run(9), run(9));
    assert_eq!(r1, r2, "two evaluations with one seed differ");
    assert!(r1.kl_exact > 0.0 && r1.kl_exact.is_finite());
    let r3 = run(10);
    let ids = |r: &EvalResult| -> Vec<Vec<i64>> {
        r.samples.iter().map(|s| s.response_ids.clone()).collect()
    };
    assert_ne!(ids(&r1), ids(&r3), "another seed gives other samples");
    // distinct-n of the result is distinct_n of its responses.
    assert_eq!(r1.distinct_1, distinct_n(&ids(&r1), 1));
    assert_eq!(r1.distinct_2, distinct_n(&ids(&r1), 2));
}

#[test]
fn distinct_n_hand_cases() {
    let seqs = vec![vec![1i64, 2, 3], vec![1, 2, 4]];
    assert_eq!(distinct_n(&seqs, 1), 4.0 / 6.0); // {1,2,3,4} of 6 unigrams
    assert_eq!(distinct_n(&seqs, 2), 3.0 / 4.0); // {12, 23, 24} of 4 bigrams
    assert_eq!(distinct_n(&seqs, 3), 2.0 / 2.0);
    assert_eq!(distinct_n(&seqs, 4), 0.0); // no 4-gram at all
    assert_eq!(distinct_n(&[vec![7; 5]], 1), 1.0 / 5.0);
    assert_eq!(distinct_n(&[vec![7; 5]], 2), 1.0 / 4.0);
    assert_eq!(distinct_n(&[], 1), 0.0);
    assert_eq!(distinct_n(&[vec![], vec![]], 1), 0.0);
}

#[track_caller]
fn expect_arg(r: Result<EvalResult>, want: &str) -> RlhfError {
    let e = r.expect_err("should fail");
    assert_eq!(e.argument(), Some(want), "{e}");
    e
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ((_a, pol), (_b, rf)) = f32_pair();
    let tok = tiny_tokenizer();
    let ev = |p: &[Vec<i64>], c: &EvalConfig, s: &dyn SentimentScorer| {
        evaluate(&pol, &rf, &tok, p, s, c)
    };
    let good = prompts();
    expect_arg(ev(&[], &cfg(0), &CountC), "prompts");
    let zero_tokens = EvalConfig {
        max_new_tokens: 0,
        ..cfg(0)
    };
    let e = expect_arg(ev(&good, &zero_tokens, &CountC), "eval.max_new_tokens");
    assert!(matches!(e, RlhfError::OutOfRange { .. }));
    let zero_batch = EvalConfig {
        batch_size: 0,
        ..cfg(0)
    };
    expect_arg(ev(&good, &zero_batch, &CountC), "eval.batch_size");
    // Prompt + max_new_tokens beyond the 8 positions; an empty prompt; an id outside the vocabulary.
    expect_arg(ev(&[vec![2; 6]], &cfg(0), &CountC), "prompts");
    expect_arg(ev(&[vec![2], vec![]], &cfg(0), &CountC), "prompts");
    expect_arg(ev(&[vec![2, 9]], &cfg(0), &CountC), "prompts");
    // A scorer that returns the wrong number of scores, or NaN.
    expect_arg(ev(&good, &cfg(0), &Broken { k: 1, value: 0.0 }), "scorer");
    let e = ev(
        &good,
        &cfg(0),
        &Broken {
            k: 3,
            value: f32::NAN,
        },
    )
    .unwrap_err();
    assert!(matches!(e, RlhfError::NonFinite { .. }), "{e}");
    // A reference with another vocabulary.
    let (_c, other) = tiny_gpt(5, V + 1, false);
    let e = evaluate(&pol, &other, &tok, &good, &CountC, &cfg(0)).unwrap_err();
    assert_eq!(e.argument(), Some("reference"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// core::kl::kl_full_vocab
// ------------------------------------------------------------------------------------------------

#[test]
fn kl_full_vocab_hand_computed_two_tokens() {
    // π = softmax(0, ln 3) = (1/4, 3/4), π_ref = (1/2, 1/2):
    // KL = 1/4·ln(1/2) + 3/4·ln(3/2).
    // Second position: π = (1/2, 1/2), π_ref = softmax(ln 4, 0) = (4/5, 1/5):
    // KL = 1/2·ln(5/8) + 1/2·ln(5/2).
    let logits = Tensor::from_slice(&[0.0, 3f64.ln(), 0.0, 0.0]).view([1, 2, 2]);
    let ref_logits = Tensor::from_slice(&[0.0, 0.0, 4f64.ln(), 0.0]).view([1, 2, 2]);
    let mask = t2(&[&[1.0, 1.0]]);
    let kl = v1(&kl_full_vocab(&logits, &ref_logits, &mask).unwrap());
    let want = [
        0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln(),
        0.5 * (5.0f64 / 8.0).ln() + 0.5 * 2.5f64.ln(),
    ];
    for (k, w) in kl.iter().zip(want) {
        assert!((k - w).abs() < 1e-15, "{k} vs {w}");
    }
    // f32 input is computed in f32.
    let k32 = kl_full_vocab(
        &logits.to_kind(Kind::Float),
        &ref_logits.to_kind(Kind::Float),
        &mask,
    )
    .unwrap();
    assert_eq!(k32.kind(), Kind::Float);
    assert!((v1(&k32)[0] - want[0]).abs() < 1e-6);
}

#[test]
fn kl_full_vocab_masked_rows_are_zero_even_with_nan() {
    let logits = Tensor::from_slice(&[0.0, 1.0, f64::NAN, f64::INFINITY]).view([1, 2, 2]);
    let ref_logits = Tensor::from_slice(&[1.0, 0.0, f64::NAN, f64::NEG_INFINITY]).view([1, 2, 2]);
    let mask = t2(&[&[1.0, 0.0]]);
    let kl = v1(&kl_full_vocab(&logits, &ref_logits, &mask).unwrap());
    assert!(kl[0] > 0.0 && kl[0].is_finite());
    assert_eq!(kl[1], 0.0);
    // The gradient through a masked NaN row is 0, not NaN.
    let x = logits.set_requires_grad(true);
    let y = kl_full_vocab(&x, &ref_logits, &mask)
        .unwrap()
        .sum(Kind::Double);
    y.backward();
    let g = v1(&x.grad());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert_eq!(&g[2..], &[0.0, 0.0]);
    // NaN at a used position is an error naming the argument.
    let all = t2(&[&[1.0, 1.0]]);
    let e = kl_full_vocab(&logits.detach(), &ref_logits, &all).unwrap_err();
    assert!(matches!(e, RlhfError::NonFinite { .. }), "{e}");
    // Shapes.
    let e = kl_full_vocab(&logits.detach(), &ref_logits.narrow(2, 0, 1), &mask).unwrap_err();
    assert!(matches!(e, RlhfError::Shape { .. }), "{e}");
    let e = kl_full_vocab(&t2(&[&[1.0]]), &t2(&[&[1.0]]), &mask).unwrap_err();
    assert!(matches!(e, RlhfError::Shape { .. }), "{e}");
}

#[test]
fn kl_full_vocab_is_zero_on_itself_and_positive_otherwise() {
    tch::manual_seed(3);
    let a = Tensor::randn([3, 4, 6], (Kind::Double, Device::Cpu));
    let b = Tensor::randn([3, 4, 6], (Kind::Double, Device::Cpu));
    let m = Tensor::ones([3, 4], (Kind::Double, Device::Cpu));
    assert_eq!(s(&kl_full_vocab(&a, &a, &m).unwrap().abs().max()), 0.0);
    // Shifting all logits of a row by a constant does not change the distribution.
    let shifted = &a + 7.5;
    assert!(s(&kl_full_vocab(&a, &shifted, &m).unwrap().abs().max()) < 1e-12);
    let kl = kl_full_vocab(&a, &b, &m).unwrap();
    assert!(s(&kl.min()) > 0.0);
}
