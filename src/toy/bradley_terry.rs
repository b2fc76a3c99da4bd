//! Bradley–Terry reward model on synthetic preferences with known true utilities
//! (notebook `03-reward-model-bradley-terry`).
//!
//! **Problem.** Items (stand-ins for responses) carry features `x_i ∈ R^d`, `x_i ~ N(0, I_d)`, and a true
//! utility `u_i = w*·x_i` with `‖w*‖ = utility_scale` (so `std(u) = utility_scale`). A simulated
//! annotator compares two items and prefers `i` over `j` with the Bradley–Terry probability
//!
//! `P(i ≻ j) = σ(u_i − u_j) = exp(u_i) / (exp(u_i) + exp(u_j))`
//!
//! (Bradley & Terry 1952; seed document 000 §1.3; document 001 §3.1.2; document 003 "训练奖励模型"),
//! so labels are noisy exactly as the BT model says human labels are. A linear reward head
//! `r(x) = w·x + b` — the 1-dimensional "score head" of document 003 on top of fixed features — is fitted
//! by maximum likelihood with the core [`crate::core::reward_model::pairwise_loss`]
//! (`−logσ(r_chosen − r_rejected)` averaged over pairs: document 003's `Loss`, TRL `RewardTrainer`,
//! OpenRLHF `PairWiseLoss`) or, for K-wise rankings, [`crate::core::reward_model::kwise_loss`] (InstructGPT
//! eq. 1, document 001 §3.1.2: K ranked responses give C(K, 2) pairs, each prompt's loss divided by
//! C(K, 2)). A small ridge term `λ‖w‖²` keeps the fit finite when few pairs are linearly separable.
//!
//! **Optimiser.** The objective is convex (logistic regression on feature differences `x_c − x_r`
//! without intercept), so we solve it to machine precision with damped Newton (IRLS) steps: gradient by
//! autograd through the core loss, Hessian in closed form `Δxᵀ diag(σ(m)σ(−m)) Δx / B + 2λI`; the final
//! autograd gradient norm (≈ 1e-12) is reported. An LLM reward model would use Adam for one epoch
//! (document 001 §3.1.2: lr 9e-6, cosine schedule); this toy studies the *estimator*, not the optimiser,
//! so it removes optimiser noise.
//!
//! **Claims the notebook makes (pinned by `tests/toy_bradley_terry.rs`).**
//! 1. `σ(Δu)` and the softmax form `exp(u_i)/(exp(u_i)+exp(u_j))` are the same curve; the pairwise loss is
//!    `−log` of it ([`bt_curve`]).
//! 2. Only utility *differences* enter the likelihood: adding any constant to every reward leaves the loss
//!    unchanged and `∂L/∂b ≡ 0`, so the head's bias `b` is never trained and is arbitrary; TRL's
//!    `center_rewards_coefficient` term is what pins it ([`shift_invariance`]). The *scale* is identified
//!    (the BT temperature is fixed at 1), so `ŵ → w*`.
//! 3. With enough pairs the recovered utilities of *held-out* items match the true ones (Pearson and
//!    Spearman > 0.98; after centering they lie on `y = x`), and held-out pairwise accuracy reaches the
//!    Bayes accuracy of the true utilities on the same noisy labels ([`recovery`]).
//! 4. Accuracy, correlation and `‖ŵ − w*‖` improve with the number of pairs; `‖ŵ − w*‖` falls like
//!    `N^{−1/2}` and matches the Cramér–Rao rate `sqrt(tr(I⁻¹)/N)` of the BT Fisher information
//!    `I = E[σ'(Δu) Δx Δxᵀ]` ([`pairs_sweep`]). With very few pairs (25 in d = 8) the pairs are nearly
//!    separable and the fit is overconfident: its reward scale is several times too large (slope > 1.5)
//!    while its ranking is only partly right.
//! 5. InstructGPT's K-wise loss equals the mean of the C(K, 2) pairwise losses (K = 4 → 6 pairs), to
//!    rounding, in value and gradient ([`kwise_check`]); a ranking of K responses yields C(K, 2)
//!    comparisons for K forward passes instead of 2·C(K, 2) ([`ranking_costs`]); and N rankings of K = 4
//!    (sampled from the Plackett–Luce model, whose pairwise marginals are exactly BT) recover `w*` far
//!    better than N single pairs but less well than 6N independent pairs, because a ranking's comparisons
//!    are transitive: asymptotically one ranking of 4 is worth ≈ 4.2 independent pairs, not 6 (sandwich
//!    variance of the composite likelihood, [`ranking_efficiency`]; measured in [`kwise_vs_pairs`]).
//!
//! Everything runs in f64 on the CPU, single-threaded (the tensors are tiny). Each public study calls
//! `tch::manual_seed(cfg.seed)` first, so the same config gives the same numbers — provided no other
//! thread draws from libtorch's process-global generator meanwhile (the tests serialise themselves).

use super::SingleThread;
use super::{scalar, to_vec};
use crate::core::check;
use crate::core::reward_model::{kwise_loss, pairwise_accuracy, pairwise_loss};
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

const OPTS: (Kind, Device) = (Kind::Double, Device::Cpu);
const IDX: (Kind, Device) = (Kind::Int64, Device::Cpu);

/// Configuration of the synthetic preference world and of the fits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BtConfig {
    /// Seed passed to `tch::manual_seed` at the start of every study.
    pub seed: i64,
    /// Feature dimension `d` of the items (the reward head has `d` weights and one bias).
    pub dim: i64,
    /// Items that training pairs/rankings are drawn from.
    pub n_train_items: i64,
    /// Held-out items: correlations and held-out pairs use only these (generalisation to unseen responses).
    pub n_test_items: i64,
    /// `‖w*‖ = std(u)`: how far apart true utilities are, i.e. how clean the BT labels are.
    pub utility_scale: f64,
    /// Held-out pairs (among held-out items, noisy BT labels) for accuracy and NLL.
    pub n_test_pairs: i64,
    /// Ridge coefficient `λ` of `λ‖w‖²` added to the mean pairwise loss (≥ 0; 0 may fail on separable data).
    pub l2: f64,
    /// The head's bias `b`. It is never updated (`∂L/∂b ≡ 0`); any value gives the same fit.
    pub bias_init: f64,
    /// Maximum damped-Newton iterations per fit.
    pub max_newton_steps: i64,
    /// Training-set sizes (number of labelled pairs) for [`pairs_sweep`].
    pub n_pairs: Vec<i64>,
    /// Independent training sets per size (metrics are averaged over them).
    pub replicates: i64,
    /// Responses ranked per prompt in [`kwise_vs_pairs`] (InstructGPT: K = 4…9).
    pub k: i64,
    /// Numbers of prompts N (rankings) for [`kwise_vs_pairs`].
    pub n_prompts: Vec<i64>,
    /// Simulated rankings for the Monte-Carlo estimate of a ranking's score covariance `J`
    /// ([`ranking_efficiency`]).
    pub mc_rankings: i64,
}

impl Default for BtConfig {
    fn default() -> Self {
        BtConfig {
            seed: 0,
            dim: 8,
            n_train_items: 200,
            n_test_items: 100,
            utility_scale: 2.0,
            n_test_pairs: 5000,
            l2: 1e-4,
            bias_init: 2.0,
            max_newton_steps: 50,
            n_pairs: vec![25, 50, 100, 200, 400, 800, 1600, 3200],
            replicates: 16,
            k: 4,
            n_prompts: vec![25, 50, 100, 200, 400],
            mc_rankings: 20_000,
        }
    }
}

fn positive_list(arg: &str, v: &[i64]) -> Result<()> {
    if v.is_empty() || v.iter().any(|&n| n < 1) {
        return Err(RlhfError::invalid(
            arg,
            format!("need a non-empty list of sizes ≥ 1, got {v:?}"),
        ));
    }
    Ok(())
}

impl BtConfig {
    /// Check every field; a typed error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        check::at_least("dim", self.dim, 1)?;
        check::at_least("n_train_items", self.n_train_items, 2)?;
        check::at_least("n_test_items", self.n_test_items, 2)?;
        crate::core::check::positive("utility_scale", self.utility_scale)?;
        check::at_least("n_test_pairs", self.n_test_pairs, 1)?;
        crate::core::check::non_negative("l2", self.l2)?;
        crate::core::check::finite_scalar("bias_init", self.bias_init)?;
        check::at_least("max_newton_steps", self.max_newton_steps, 1)?;
        positive_list("n_pairs", &self.n_pairs)?;
        check::at_least("replicates", self.replicates, 1)?;
        check::at_least("k", self.k, 2)?;
        if self.k > self.n_train_items {
            return Err(RlhfError::invalid(
                "k",
                format!(
                    "cannot rank k = {} distinct items out of n_train_items = {}",
                    self.k, self.n_train_items
                ),
            ));
        }
        positive_list("n_prompts", &self.n_prompts)?;
        check::at_least("mc_rankings", self.mc_rankings, 1)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// The synthetic world
// ---------------------------------------------------------------------------------------------------

/// Features, true utilities and labelled held-out pairs. Built right after `manual_seed(cfg.seed)`, so
/// every study with the same config sees the same world.
struct World {
    /// (n_train_items, d)
    x_train: Tensor,
    /// (n_test_items, d)
    x_test: Tensor,
    /// (d,) true weights, ‖w*‖ = utility_scale
    w_star: Tensor,
    /// (n_train_items,) true utilities u = X w*
    u_train: Tensor,
    /// (n_test_items,)
    u_test: Tensor,
    /// (M,) held-out pair in the sampled orientation (i, j), i ≠ j
    test_i: Tensor,
    test_j: Tensor,
    /// (M,) the same pairs as (chosen, rejected) after drawing the noisy BT label
    test_c: Tensor,
    test_r: Tensor,
}

/// `m` ordered pairs `(i, j)`, `i ≠ j`, uniform over pairs of distinct items among `n`. Shapes (m,), (m,).
fn sample_pairs(n: i64, m: i64) -> (Tensor, Tensor) {
    let i = Tensor::randint(n, [m], IDX);
    let j = (&i + 1 + Tensor::randint(n - 1, [m], IDX)).remainder(n);
    (i, j)
}

/// Draw the BT label of each pair: `i` is chosen with probability `σ(u_i − u_j)`. Returns (chosen, rejected).
fn bt_label(u: &Tensor, i: &Tensor, j: &Tensor) -> (Tensor, Tensor) {
    let p = (u.index_select(0, i) - u.index_select(0, j)).sigmoid();
    let i_wins = Tensor::rand(p.size(), OPTS).lt_tensor(&p);
    (i.where_self(&i_wins, j), j.where_self(&i_wins, i))
}

impl World {
    fn new(cfg: &BtConfig) -> World {
        let d = cfg.dim;
        let x_train = Tensor::randn([cfg.n_train_items, d], OPTS);
        let x_test = Tensor::randn([cfg.n_test_items, d], OPTS);
        let w = Tensor::randn([d], OPTS);
        let w_star = &w / w.norm() * cfg.utility_scale;
        let u_train = x_train.mv(&w_star);
        let u_test = x_test.mv(&w_star);
        let (test_i, test_j) = sample_pairs(cfg.n_test_items, cfg.n_test_pairs);
        let (test_c, test_r) = bt_label(&u_test, &test_i, &test_j);
        World {
            x_train,
            x_test,
            w_star,
            u_train,
            u_test,
            test_i,
            test_j,
            test_c,
            test_r,
        }
    }

    /// Per-comparison Fisher information of the BT likelihood at `w*` under uniform pair sampling,
    /// exact over all pairs of distinct training items: `I = mean_{i<j} σ'(u_i − u_j) Δx Δxᵀ`,
    /// `Δx = x_i − x_j`, (d, d). With N independent pairs, `Cov(ŵ) → I⁻¹/N` (Cramér–Rao; the MLE attains it).
    fn fisher_pair(&self) -> Tensor {
        let (a, b) = upper_pairs(self.x_train.size()[0]);
        let dx = self.x_train.index_select(0, &a) - self.x_train.index_select(0, &b);
        let p = (self.u_train.index_select(0, &a) - self.u_train.index_select(0, &b)).sigmoid();
        let s: Tensor = &p * (1.0 - &p);
        dx.tr().matmul(&(&dx * s.unsqueeze(1))) / dx.size()[0] as f64
    }

    /// `p` prompts, each `k` distinct training items (uniform) ranked best-first by the Plackett–Luce
    /// model: sort `u + Gumbel noise` (equivalently an exponential race with rates `exp(u)`), so that
    /// `P(i ranked above j) = σ(u_i − u_j)` for every pair in the ranking. Returns (p, k) item indices.
    fn sample_rankings(&self, p: i64, k: i64) -> Tensor {
        let n = self.x_train.size()[0];
        let items = Tensor::ones([p, n], OPTS).multinomial(k, false);
        let gumbel = -(-Tensor::rand([p, k], OPTS).clamp_min(1e-300).log()).log();
        let score = self
            .u_train
            .index_select(0, &items.reshape([-1]))
            .reshape([p, k])
            + gumbel;
        items.gather(1, &score.argsort(1, true), false)
    }

    /// Asymptotic covariance *per ranking* of the K-wise (composite-likelihood) estimator, (d, d):
    /// `H⁻¹ J H⁻¹` with `H = C(K,2)·I` (each pair in a random K-subset is a uniform pair, so the expected
    /// Hessian is exact) and `J = E[G Gᵀ]`, `G = Σ_{pairs of one ranking} ∇_w −logσ(Δx·w*)`, estimated
    /// from `mc` simulated rankings. Its pairs are correlated, so `J ≠ C(K,2)·I`.
    fn ranking_covariance(&self, k: i64, mc: i64) -> Result<Tensor> {
        let ranked = self.sample_rankings(mc, k);
        let (better, worse) = expand(&Data::Rankings(&ranked))?;
        let c = k * (k - 1) / 2;
        let d = self.x_train.size()[1];
        let dx = self.x_train.index_select(0, &better) - self.x_train.index_select(0, &worse);
        let m = dx.mv(&self.w_star);
        let score = (-(-&m).sigmoid()).unsqueeze(1) * &dx; // ∇_w −logσ(m) = −σ(−m) Δx
        let g = score
            .reshape([mc, c, d])
            .sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let j = g.tr().matmul(&g) / mc as f64;
        let h_inv = Tensor::f_linalg_inv(&(self.fisher_pair() * c as f64))?;
        Ok(h_inv.matmul(&j).matmul(&h_inv))
    }
}

fn trace(t: &Tensor) -> f64 {
    t.trace().double_value(&[])
}

/// `sqrt(tr(I⁻¹))`: the asymptotic `sqrt(N)·rmse(ŵ)` from N independent pairs.
fn pair_rmse_constant(world: &World) -> Result<f64> {
    Ok(trace(&Tensor::f_linalg_inv(&world.fisher_pair())?).sqrt())
}

// ---------------------------------------------------------------------------------------------------
// Fitting the reward head
// ---------------------------------------------------------------------------------------------------

/// Training data for one fit, as indices into the training items.
enum Data<'a> {
    /// (B,) chosen and (B,) rejected item indices: objective = `pairwise_loss`.
    Pairs(&'a Tensor, &'a Tensor),
    /// (P, K) item indices per prompt, best first: objective = `kwise_loss`.
    Rankings(&'a Tensor),
}

/// Core loss + `λ‖w‖²` for the head `r(x) = x·w + b` on the training items. `x` (n, d), `w` (d,), `b` ().
fn objective(x: &Tensor, w: &Tensor, b: &Tensor, data: &Data, l2: f64) -> Result<Tensor> {
    let r = x.mv(w) + b;
    let core = match data {
        Data::Pairs(c, rj) => {
            pairwise_loss(&r.index_select(0, c), &r.index_select(0, rj), None, 0.0)?.loss
        }
        Data::Rankings(ranked) => {
            let (p, k) = ranked.size2()?;
            kwise_loss(&r.index_select(0, &ranked.reshape([-1])).reshape([p, k]))?
        }
    };
    Ok(core + w.square().sum(Kind::Double) * l2)
}

/// The (better, worse) item indices of every comparison in the data, (B,) each: the pairs themselves, or
/// the C(K, 2) pairs `i < j` of each ranking, prompt-major. `kwise_loss` is the mean of `−logσ` over
/// exactly these B pairs (every prompt has the same C(K, 2)), which [`kwise_check`] verifies.
fn expand(data: &Data) -> Result<(Tensor, Tensor)> {
    match data {
        Data::Pairs(c, r) => Ok((c.shallow_clone(), r.shallow_clone())),
        Data::Rankings(ranked) => {
            let (a, b) = upper_pairs(ranked.size2()?.1);
            Ok((
                ranked.index_select(1, &a).reshape([-1]),
                ranked.index_select(1, &b).reshape([-1]),
            ))
        }
    }
}

/// Rank positions `(i, j)`, `i < j`, of the C(K, 2) pairs of a K-ranking, in row-major order. (C,), (C,).
fn upper_pairs(k: i64) -> (Tensor, Tensor) {
    let idx = Tensor::triu_indices(k, k, 1, IDX);
    (idx.get(0), idx.get(1))
}

/// A fitted head.
struct Fit {
    w: Tensor,
    iters: i64,
    grad_norm: f64,
    grad_b: f64,
}

/// Damped Newton (IRLS) on the convex BT objective. The gradient comes from autograd through the core
/// loss; the Hessian is the closed form of `−logσ(m)`, `m = Δx·w`, averaged over the B comparisons:
/// `H = Δxᵀ diag(σ(m)σ(−m)) Δx / B + 2λI` (`Δx` (B, d): better minus worse features). The final
/// autograd gradient (`grad_norm`, reported) certifies that the fixed point minimises the core loss.
fn fit(x: &Tensor, data: &Data, cfg: &BtConfig) -> Result<Fit> {
    let d = x.size()[1];
    let b = Tensor::from(cfg.bias_init).to_kind(Kind::Double);
    let (better, worse) = expand(data)?;
    let dx = x.index_select(0, &better) - x.index_select(0, &worse);
    let n_cmp = dx.size()[0] as f64;
    let ridge = Tensor::eye(d, OPTS) * (2.0 * cfg.l2);
    let mut w = Tensor::zeros([d], OPTS);
    let mut iters = 0;
    for _ in 0..cfg.max_newton_steps {
        let wv = w.detach().set_requires_grad(true);
        let loss = objective(x, &wv, &b, data, cfg.l2)?;
        let g = Tensor::f_run_backward(&[&loss], &[&wv], false, false)?.remove(0);
        let m = dx.mv(&w);
        let s = m.sigmoid() * (-&m).sigmoid();
        let h = dx.tr().matmul(&(&dx * s.unsqueeze(1))) / n_cmp + &ridge;
        let step = Tensor::f_linalg_solve(&h, &g, true)?;
        // Newton decrement² gᵀH⁻¹g: twice the predicted decrease of the quadratic model.
        let dec = g.dot(&step).double_value(&[]);
        if !dec.is_finite() {
            return Err(RlhfError::invalid(
                "l2",
                "singular Hessian (fewer comparisons than dimensions with l2 = 0?)",
            ));
        }
        if dec < 1e-20 {
            break;
        }
        iters += 1;
        let f0 = loss.double_value(&[]);
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-10 {
            let w_new = (&w - &step * t).detach();
            let f = tch::no_grad(|| objective(x, &w_new, &b, data, cfg.l2))?.double_value(&[]);
            if f <= f0 - 0.25 * t * dec {
                w = w_new;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break; // rounding floor: no representable decrease left
        }
    }
    // Final gradient w.r.t. both w and the bias b.
    let wv = w.detach().set_requires_grad(true);
    let bv = b.set_requires_grad(true);
    let loss = objective(x, &wv, &bv, data, cfg.l2)?;
    let grads = Tensor::f_run_backward(&[&loss], &[&wv, &bv], false, false)?;
    Ok(Fit {
        w: w.detach(),
        iters,
        grad_norm: grads[0].norm().double_value(&[]),
        grad_b: grads[1].double_value(&[]),
    })
}

// ---------------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------------

/// How well a fitted head recovers the true utilities, on held-out items and held-out pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Held-out pairwise accuracy on the noisy labels, `mean(r̂_c > r̂_r)` ([`pairwise_accuracy`]).
    pub accuracy: f64,
    /// Accuracy of the *true* utilities on the same noisy labels (the Bayes classifier).
    pub bayes_accuracy: f64,
    /// Expected accuracy over label noise: `mean[σ(Δu)·1(Δr̂>0) + σ(−Δu)·1(Δr̂<0)]` (low variance).
    pub expected_accuracy: f64,
    /// Bayes expected accuracy `mean σ(|Δu|)`, the ceiling of any reward model on these pairs.
    pub bayes_expected_accuracy: f64,
    /// Held-out BT negative log-likelihood of the learned rewards (the `pairwise_loss` value).
    pub nll: f64,
    /// Held-out BT NLL of the true utilities on the same labels.
    pub bayes_nll: f64,
    /// Expected held-out NLL (cross-entropy against `σ(Δu)`): `mean[−σ(Δu) logσ(Δr̂) − σ(−Δu) logσ(−Δr̂)]`.
    pub expected_nll: f64,
    /// Its minimum, reached by the true utilities: the mean entropy of the BT label `mean H(σ(Δu))`.
    pub entropy: f64,
    /// Pearson correlation of `r̂` and `u` over held-out items.
    pub pearson: f64,
    /// Spearman rank correlation of `r̂` and `u` over held-out items.
    pub spearman: f64,
    /// Slope of the least-squares line of `r̂` on `u` (held-out): 1 when the scale is recovered.
    pub slope: f64,
    /// `‖ŵ − w*‖`.
    pub w_error: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn centered(v: &[f64]) -> Vec<f64> {
    let m = mean(v);
    v.iter().map(|x| x - m).collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (centered(a), centered(b));
    let ab: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let aa: f64 = a.iter().map(|x| x * x).sum();
    let bb: f64 = b.iter().map(|x| x * x).sum();
    ab / (aa * bb).sqrt()
}

/// Ranks 0..n−1 (values are continuous, so ties have probability 0).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    for (rank, &i) in idx.iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

fn metrics(world: &World, w_hat: &Tensor, bias: f64) -> Result<Metrics> {
    let r = world.x_test.mv(w_hat) + bias;
    let u = &world.u_test;
    let pick = |v: &Tensor, idx: &Tensor| v.index_select(0, idx);
    let (rc, rr) = (pick(&r, &world.test_c), pick(&r, &world.test_r));
    let (uc, ur) = (pick(u, &world.test_c), pick(u, &world.test_r));
    let (ri, rj) = (pick(&r, &world.test_i), pick(&r, &world.test_j));
    let (ui, uj) = (pick(u, &world.test_i), pick(u, &world.test_j));
    let p = (&ui - &uj).sigmoid();
    let q = 1.0 - &p;
    let i_above = ri.gt_tensor(&rj).to_kind(Kind::Double);
    let j_above = rj.gt_tensor(&ri).to_kind(Kind::Double);
    let expected_accuracy = scalar(&(&p * &i_above + &q * &j_above).mean(Kind::Double))?;
    let bayes_expected_accuracy = scalar(&p.maximum(&q).mean(Kind::Double))?;
    // −logσ(a − b) per pair, from the core loss.
    let nll_terms =
        |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok(pairwise_loss(a, b, None, 0.0)?.losses) };
    let xent = |a: &Tensor, b: &Tensor| -> Result<f64> {
        Ok(scalar(
            &(&p * nll_terms(a, b)? + &q * nll_terms(b, a)?).mean(Kind::Double),
        )?)
    };
    let rv = to_vec(&r)?;
    let uv = to_vec(u)?;
    let (rc_c, uc_c) = (centered(&rv), centered(&uv));
    let slope = rc_c.iter().zip(&uc_c).map(|(a, b)| a * b).sum::<f64>()
        / uc_c.iter().map(|b| b * b).sum::<f64>();
    Ok(Metrics {
        accuracy: scalar(&pairwise_accuracy(&rc, &rr)?)?,
        bayes_accuracy: scalar(&pairwise_accuracy(&uc, &ur)?)?,
        expected_accuracy,
        bayes_expected_accuracy,
        nll: scalar(&pairwise_loss(&rc, &rr, None, 0.0)?.loss)?,
        bayes_nll: scalar(&pairwise_loss(&uc, &ur, None, 0.0)?.loss)?,
        expected_nll: xent(&ri, &rj)?,
        entropy: xent(&ui, &uj)?,
        pearson: pearson(&rv, &uv),
        spearman: spearman(&rv, &uv),
        slope,
        w_error: scalar(&(w_hat - &world.w_star).norm())?,
    })
}

// ---------------------------------------------------------------------------------------------------
// Public studies
// ---------------------------------------------------------------------------------------------------

/// One point of the Bradley–Terry curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BtPoint {
    /// `Δu = u_i − u_j`.
    pub delta_u: f64,
    /// `σ(Δu)`.
    pub p_sigmoid: f64,
    /// `exp(u_i) / (exp(u_i) + exp(u_j))` with `u_j = 0`, `u_i = Δu` (document 000 §1.3's form).
    pub p_softmax: f64,
    /// Pairwise loss when `i` is the chosen one: `−logσ(Δu)` from [`pairwise_loss`].
    pub loss: f64,
}

/// `P(i ≻ j)` and the pairwise loss on a grid of `points` values of `Δu` in `[−delta_max, delta_max]`.
pub fn bt_curve(delta_max: f64, points: i64) -> Result<Vec<BtPoint>> {
    crate::core::check::positive("delta_max", delta_max)?;
    check::at_least("points", points, 2)?;
    let _threads = SingleThread::new();
    let delta = Tensor::linspace(-delta_max, delta_max, points, OPTS);
    let zero = delta.zeros_like();
    let p_sigmoid = delta.sigmoid();
    let p_softmax = delta.exp() / (delta.exp() + zero.exp());
    let loss = pairwise_loss(&delta, &zero, None, 0.0)?.losses;
    let (d, s, m, l) = (
        to_vec(&delta)?,
        to_vec(&p_sigmoid)?,
        to_vec(&p_softmax)?,
        to_vec(&loss)?,
    );
    Ok((0..d.len())
        .map(|i| BtPoint {
            delta_u: d[i],
            p_sigmoid: s[i],
            p_softmax: m[i],
            loss: l[i],
        })
        .collect())
}

/// One fit on `n_pairs` training pairs, with everything the notebook plots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    /// Training pairs used.
    pub n_pairs: i64,
    /// `w*` (d,).
    pub w_true: Vec<f64>,
    /// `ŵ` (d,).
    pub w_hat: Vec<f64>,
    /// The head's bias: still `bias_init`, because its gradient is identically 0.
    pub b_hat: f64,
    /// `∂L/∂b` at the fit (0 up to rounding, for any `b`).
    pub grad_b: f64,
    /// `‖∇_w L‖` at the fit (≈ 0: converged).
    pub grad_norm: f64,
    /// Newton steps taken.
    pub newton_steps: i64,
    /// True utilities of the held-out items (n_test_items,).
    pub u_test: Vec<f64>,
    /// Learned rewards `ŵ·x + b` of the held-out items, raw (offset by the arbitrary `b`).
    pub r_test: Vec<f64>,
    /// `u_test − mean(u_test)`.
    pub u_test_centered: Vec<f64>,
    /// `r_test − mean(r_test)`: on `y = x` against `u_test_centered` when recovery succeeds.
    pub r_test_centered: Vec<f64>,
    pub metrics: Metrics,
}

/// Fit the head on `n_pairs` BT-labelled training pairs and compare with the truth on held-out items.
pub fn recovery(cfg: &BtConfig, n_pairs: i64) -> Result<Recovery> {
    cfg.validate()?;
    check::at_least("n_pairs", n_pairs, 1)?;
    let _threads = SingleThread::new();
    tch::manual_seed(cfg.seed);
    let world = World::new(cfg);
    let (i, j) = sample_pairs(cfg.n_train_items, n_pairs);
    let (c, r) = bt_label(&world.u_train, &i, &j);
    let f = fit(&world.x_train, &Data::Pairs(&c, &r), cfg)?;
    let m = metrics(&world, &f.w, cfg.bias_init)?;
    let u_test = to_vec(&world.u_test)?;
    let r_test = to_vec(&(world.x_test.mv(&f.w) + cfg.bias_init))?;
    Ok(Recovery {
        n_pairs,
        w_true: to_vec(&world.w_star)?,
        w_hat: to_vec(&f.w)?,
        b_hat: cfg.bias_init,
        grad_b: f.grad_b,
        grad_norm: f.grad_norm,
        newton_steps: f.iters,
        u_test_centered: centered(&u_test),
        r_test_centered: centered(&r_test),
        u_test,
        r_test,
        metrics: m,
    })
}

/// One row of [`pairs_sweep`]: metrics averaged over `replicates` training sets of `n_pairs` pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    /// Training pairs N.
    pub n_pairs: i64,
    /// Mean [`Metrics`] over replicates (`w_error` = mean of `‖ŵ − w*‖`).
    pub mean: Metrics,
    /// `sqrt(mean ‖ŵ − w*‖²)` over replicates.
    pub w_rmse: f64,
    /// Cramér–Rao prediction `sqrt(tr(I⁻¹)/N)` of `w_rmse` (asymptotic, ignores the ridge).
    pub crlb_rmse: f64,
}

fn average(ms: &[Metrics]) -> Metrics {
    let f = |g: fn(&Metrics) -> f64| ms.iter().map(g).sum::<f64>() / ms.len() as f64;
    Metrics {
        accuracy: f(|m| m.accuracy),
        bayes_accuracy: f(|m| m.bayes_accuracy),
        expected_accuracy: f(|m| m.expected_accuracy),
        bayes_expected_accuracy: f(|m| m.bayes_expected_accuracy),
        nll: f(|m| m.nll),
        bayes_nll: f(|m| m.bayes_nll),
        expected_nll: f(|m| m.expected_nll),
        entropy: f(|m| m.entropy),
        pearson: f(|m| m.pearson),
        spearman: f(|m| m.spearman),
        slope: f(|m| m.slope),
        w_error: f(|m| m.w_error),
    }
}

fn rmse(ms: &[Metrics]) -> f64 {
    (ms.iter().map(|m| m.w_error * m.w_error).sum::<f64>() / ms.len() as f64).sqrt()
}

/// Accuracy, correlation and `‖ŵ − w*‖` against the number of training pairs (`cfg.n_pairs`). Each
/// replicate draws one pool of `max(n_pairs)` labelled pairs and fits its prefixes, so the sizes are
/// nested as when a preference dataset grows.
pub fn pairs_sweep(cfg: &BtConfig) -> Result<Vec<SweepRow>> {
    cfg.validate()?;
    let _threads = SingleThread::new();
    tch::manual_seed(cfg.seed);
    let world = World::new(cfg);
    let crlb = pair_rmse_constant(&world)?;
    let n_max = *cfg.n_pairs.iter().max().unwrap_or(&1);
    let mut per_size: Vec<Vec<Metrics>> = vec![Vec::new(); cfg.n_pairs.len()];
    for _ in 0..cfg.replicates {
        let (i, j) = sample_pairs(cfg.n_train_items, n_max);
        let (c, r) = bt_label(&world.u_train, &i, &j);
        for (s, &n) in cfg.n_pairs.iter().enumerate() {
            let (c_n, r_n) = (c.narrow(0, 0, n), r.narrow(0, 0, n));
            let f = fit(&world.x_train, &Data::Pairs(&c_n, &r_n), cfg)?;
            per_size[s].push(metrics(&world, &f.w, cfg.bias_init)?);
        }
    }
    Ok(cfg
        .n_pairs
        .iter()
        .zip(&per_size)
        .map(|(&n, ms)| SweepRow {
            n_pairs: n,
            mean: average(ms),
            w_rmse: rmse(ms),
            crlb_rmse: crlb / (n as f64).sqrt(),
        })
        .collect())
}

/// One of the C(K, 2) pairs of one prompt's ranking in [`kwise_check`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KwisePair {
    /// Rank position (0 = best) of the better response.
    pub better: i64,
    /// Rank position of the worse response.
    pub worse: i64,
    /// Reward of the better response.
    pub r_better: f64,
    /// Reward of the worse response.
    pub r_worse: f64,
    /// `−logσ(r_better − r_worse)` from [`pairwise_loss`].
    pub loss: f64,
}

/// `kwise_loss` against the mean of the expanded pairwise losses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KwiseCheck {
    /// P prompts.
    pub n_prompts: i64,
    /// K responses per prompt.
    pub k: i64,
    /// C(K, 2).
    pub pairs_per_prompt: i64,
    /// [`kwise_loss`] on the (P, K) reward matrix.
    pub kwise: f64,
    /// [`pairwise_loss`] on the P·C(K, 2) expanded (better, worse) pairs.
    pub pairwise_mean: f64,
    /// `|kwise − pairwise_mean|`.
    pub abs_diff: f64,
    /// `max |∂kwise/∂R − ∂pairwise_mean/∂R|` over the (P, K) rewards.
    pub grad_max_abs_diff: f64,
    /// The C(K, 2) pairs of prompt 0.
    pub first_prompt: Vec<KwisePair>,
}

/// InstructGPT eq. 1 check: on random rewards `R` (P, K) (row = one prompt's K responses, best first),
/// `kwise_loss(R)` equals `pairwise_loss` over all `i < j` pairs of every row, in value and gradient —
/// every prompt contributes exactly C(K, 2) pairs, so "mean over prompts of the per-prompt mean" is
/// "mean over all pairs".
pub fn kwise_check(n_prompts: i64, k: i64, seed: i64) -> Result<KwiseCheck> {
    check::at_least("n_prompts", n_prompts, 1)?;
    check::at_least("k", k, 2)?;
    let _threads = SingleThread::new();
    tch::manual_seed(seed);
    let rewards = (Tensor::randn([n_prompts, k], OPTS) * 2.0).set_requires_grad(true);
    let kw = kwise_loss(&rewards)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..k {
        for j in (i + 1)..k {
            a.push(i);
            b.push(j);
        }
    }
    let (ai, bi) = (Tensor::from_slice(&a), Tensor::from_slice(&b));
    let better = rewards.index_select(1, &ai).reshape([-1]);
    let worse = rewards.index_select(1, &bi).reshape([-1]);
    let pw = pairwise_loss(&better, &worse, None, 0.0)?;
    let g_kw = Tensor::f_run_backward(&[&kw], &[&rewards], false, false)?.remove(0);
    let g_pw = Tensor::f_run_backward(&[&pw.loss], &[&rewards], false, false)?.remove(0);
    let first_losses = to_vec(&pw.losses.narrow(0, 0, a.len() as i64))?;
    let r0 = to_vec(&rewards.get(0).detach())?;
    let first_prompt = (0..a.len())
        .map(|p| KwisePair {
            better: a[p],
            worse: b[p],
            r_better: r0[a[p] as usize],
            r_worse: r0[b[p] as usize],
            loss: first_losses[p],
        })
        .collect();
    let kwise = scalar(&kw)?;
    let pairwise_mean = scalar(&pw.loss)?;
    Ok(KwiseCheck {
        n_prompts,
        k,
        pairs_per_prompt: k * (k - 1) / 2,
        kwise,
        pairwise_mean,
        abs_diff: (kwise - pairwise_mean).abs(),
        grad_max_abs_diff: scalar(&(g_kw - g_pw).abs().max())?,
        first_prompt,
    })
}

/// Labelling and compute cost of one ranking of K responses (document 001 §3.1.2: "4 outputs → 6
/// comparisons, 9 outputs → 36").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankingCost {
    /// Responses ranked per prompt.
    pub k: i64,
    /// C(K, 2) comparisons implied by one ranking.
    pub comparisons: i64,
    /// Reward-model forward passes when the ranking is one batch element (each response scored once).
    pub forward_passes_ranking: i64,
    /// Forward passes when the same comparisons are shuffled in as independent pairs (2 per pair).
    pub forward_passes_pairs: i64,
    /// Comparisons per forward pass for the ranking, `(K − 1)/2`.
    pub comparisons_per_pass: f64,
}

/// [`RankingCost`] for each K (each ≥ 2).
pub fn ranking_costs(ks: &[i64]) -> Result<Vec<RankingCost>> {
    ks.iter()
        .map(|&k| {
            check::at_least("k", k, 2)?;
            let c = k * (k - 1) / 2;
            Ok(RankingCost {
                k,
                comparisons: c,
                forward_passes_ranking: k,
                forward_passes_pairs: 2 * c,
                comparisons_per_pass: c as f64 / k as f64,
            })
        })
        .collect()
}

/// How much one ranking of K responses is worth, asymptotically, in independent pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankingEfficiency {
    /// Responses ranked per prompt.
    pub k: i64,
    /// C(K, 2) comparisons per ranking.
    pub comparisons_per_ranking: i64,
    /// `sqrt(tr(I⁻¹))`: `sqrt(N)·rmse(ŵ)` from N independent pairs (Cramér–Rao).
    pub pair_rmse_constant: f64,
    /// `sqrt(tr(H⁻¹JH⁻¹))`: `sqrt(N)·rmse(ŵ)` from N rankings fitted with `kwise_loss` (sandwich).
    pub ranking_rmse_constant: f64,
    /// `tr(I⁻¹) / tr(H⁻¹JH⁻¹)`: the number of independent pairs with the same `E‖ŵ − w*‖²` as one ranking.
    /// At most C(K, 2) if the ranking's comparisons were independent; less because they are transitive.
    pub effective_pairs_per_ranking: f64,
    /// Simulated rankings behind `J`.
    pub mc_rankings: i64,
}

fn efficiency(world: &World, k: i64, mc: i64) -> Result<RankingEfficiency> {
    let pair = pair_rmse_constant(world)?;
    let rank = trace(&world.ranking_covariance(k, mc)?).sqrt();
    Ok(RankingEfficiency {
        k,
        comparisons_per_ranking: k * (k - 1) / 2,
        pair_rmse_constant: pair,
        ranking_rmse_constant: rank,
        effective_pairs_per_ranking: (pair / rank).powi(2),
        mc_rankings: mc,
    })
}

/// Asymptotic efficiency of a K-ranking (`cfg.k`) relative to independent pairs, on the config's world.
pub fn ranking_efficiency(cfg: &BtConfig) -> Result<RankingEfficiency> {
    cfg.validate()?;
    let _threads = SingleThread::new();
    tch::manual_seed(cfg.seed);
    let world = World::new(cfg);
    efficiency(&world, cfg.k, cfg.mc_rankings)
}

/// One row of [`kwise_vs_pairs`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KwiseRow {
    /// N prompts (rankings).
    pub n_prompts: i64,
    /// `"rankings"`: N Plackett–Luce rankings of K items, [`kwise_loss`];
    /// `"independent_pairs"`: N·C(K, 2) independent BT pairs, [`pairwise_loss`];
    /// `"single_pairs"`: N independent BT pairs, [`pairwise_loss`].
    pub design: String,
    /// Pairwise comparisons in the training loss.
    pub comparisons: i64,
    /// Distinct reward-model forward passes (responses scored).
    pub forward_passes: i64,
    /// Mean [`Metrics`] over replicates.
    pub mean: Metrics,
    /// `sqrt(mean ‖ŵ − w*‖²)` over replicates.
    pub w_rmse: f64,
    /// Asymptotic prediction of `w_rmse`: `sqrt(tr(I⁻¹)/comparisons)` for pairs, `sqrt(tr(H⁻¹JH⁻¹)/N)`
    /// for rankings ([`RankingEfficiency`]).
    pub predicted_rmse: f64,
}

/// N rankings of K responses (InstructGPT) vs N·C(K, 2) independent pairs vs N single pairs, for each
/// N in `cfg.n_prompts`. Rankings are drawn from the Plackett–Luce model, whose pairwise marginals are
/// exactly BT: `P(i above j) = σ(u_i − u_j)`. The C(K, 2) comparisons of a ranking are therefore each
/// correctly specified (the K-wise loss is a consistent composite likelihood) but not independent
/// (they are transitive), which is why a ranking is worth less than C(K, 2) independent comparisons but
/// much more than one.
pub fn kwise_vs_pairs(cfg: &BtConfig) -> Result<Vec<KwiseRow>> {
    cfg.validate()?;
    let _threads = SingleThread::new();
    tch::manual_seed(cfg.seed);
    let world = World::new(cfg);
    let eff = efficiency(&world, cfg.k, cfg.mc_rankings)?;
    let k = cfg.k;
    let c2 = k * (k - 1) / 2;
    let n_max = *cfg.n_prompts.iter().max().unwrap_or(&1);
    let designs = ["rankings", "independent_pairs", "single_pairs"];
    let mut acc: Vec<Vec<Vec<Metrics>>> = vec![vec![Vec::new(); 3]; cfg.n_prompts.len()];
    for _ in 0..cfg.replicates {
        // (a) N_max rankings; (b) N_max·C(K,2) independent pairs; (c) N_max single pairs. Prefixes nest.
        let ranked = world.sample_rankings(n_max, k);
        let (i, j) = sample_pairs(cfg.n_train_items, n_max * c2);
        let (ic, ir) = bt_label(&world.u_train, &i, &j);
        let (i1, j1) = sample_pairs(cfg.n_train_items, n_max);
        let (sc, sr) = bt_label(&world.u_train, &i1, &j1);
        for (s, &n) in cfg.n_prompts.iter().enumerate() {
            let rk = ranked.narrow(0, 0, n);
            let (pc, pr) = (ic.narrow(0, 0, n * c2), ir.narrow(0, 0, n * c2));
            let (qc, qr) = (sc.narrow(0, 0, n), sr.narrow(0, 0, n));
            let data = [
                Data::Rankings(&rk),
                Data::Pairs(&pc, &pr),
                Data::Pairs(&qc, &qr),
            ];
            for (d, dat) in data.iter().enumerate() {
                let f = fit(&world.x_train, dat, cfg)?;
                acc[s][d].push(metrics(&world, &f.w, cfg.bias_init)?);
            }
        }
    }
    let mut rows = Vec::new();
    for (s, &n) in cfg.n_prompts.iter().enumerate() {
        let nf = n as f64;
        let cost = [
            (n * c2, n * k, eff.ranking_rmse_constant / nf.sqrt()),
            (
                n * c2,
                2 * n * c2,
                eff.pair_rmse_constant / (nf * c2 as f64).sqrt(),
            ),
            (n, 2 * n, eff.pair_rmse_constant / nf.sqrt()),
        ];
        for d in 0..3 {
            rows.push(KwiseRow {
                n_prompts: n,
                design: designs[d].to_string(),
                comparisons: cost[d].0,
                forward_passes: cost[d].1,
                mean: average(&acc[s][d]),
                w_rmse: rmse(&acc[s][d]),
                predicted_rmse: cost[d].2,
            });
        }
    }
    Ok(rows)
}

/// One row of [`shift_invariance`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShiftRow {
    /// The head's bias `b` (a constant added to every reward).
    pub bias: f64,
    /// Mean pairwise loss on the training pairs (no centering term): the same for every `b`.
    pub loss: f64,
    /// `∂loss/∂b`: 0 for every `b`.
    pub grad_bias: f64,
    /// Loss with TRL's centering term `coef·mean((r_c + r_r)²)`: depends on `b`.
    pub loss_centered: f64,
    /// Its `∂/∂b`: vanishes only where `mean(r_c + r_r) = 0`.
    pub grad_bias_centered: f64,
}

/// Fit the head on `n_pairs` pairs, then re-evaluate the training loss with the bias set to each value in
/// `biases`, with and without the centering term (`center_coef`, TRL `center_rewards_coefficient`).
pub fn shift_invariance(
    cfg: &BtConfig,
    n_pairs: i64,
    biases: &[f64],
    center_coef: f64,
) -> Result<Vec<ShiftRow>> {
    cfg.validate()?;
    check::at_least("n_pairs", n_pairs, 1)?;
    crate::core::check::positive("center_coef", center_coef)?;
    if biases.is_empty() || biases.iter().any(|b| !b.is_finite()) {
        return Err(RlhfError::invalid(
            "biases",
            "need a non-empty list of finite biases",
        ));
    }
    let _threads = SingleThread::new();
    tch::manual_seed(cfg.seed);
    let world = World::new(cfg);
    let (i, j) = sample_pairs(cfg.n_train_items, n_pairs);
    let (c, r) = bt_label(&world.u_train, &i, &j);
    let f = fit(&world.x_train, &Data::Pairs(&c, &r), cfg)?;
    let base = world.x_train.mv(&f.w);
    let (bc, br) = (base.index_select(0, &c), base.index_select(0, &r));
    biases
        .iter()
        .map(|&bias| {
            let eval = |coef: f64| -> Result<(f64, f64)> {
                let b = Tensor::from(bias)
                    .to_kind(Kind::Double)
                    .set_requires_grad(true);
                let out = pairwise_loss(&(&bc + &b), &(&br + &b), None, coef)?;
                let g = Tensor::f_run_backward(&[&out.loss], &[&b], false, false)?.remove(0);
                Ok((scalar(&out.loss)?, scalar(&g)?))
            };
            let (loss, grad_bias) = eval(0.0)?;
            let (loss_centered, grad_bias_centered) = eval(center_coef)?;
            Ok(ShiftRow {
                bias,
                loss,
                grad_bias,
                loss_centered,
                grad_bias_centered,
            })
        })
        .collect()
}
