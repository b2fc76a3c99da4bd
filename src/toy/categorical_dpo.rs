//! DPO from RLHF on a categorical policy: one prompt, `V` responses, every quantity exact.
//!
//! The notebook `notebooks/04-dpo-from-rlhf.ipynb` steps through this module. It follows seed document
//! 000 §3 (3.1 the RLHF objective, 3.2 the advantage-weighted-regression / Lagrangian argument, 3.3 the
//! DPO solution), seed document 002 (DPO's gradient and its per-pair weight; the naive unweighted
//! objective degenerates; Unlikelihood and Preferred-FT baselines) and the DPO part of seed document 003.
//! Equation numbers are those of Rafailov et al. 2023, "Direct Preference Optimization" (arXiv 2305.18290).
//!
//! # The problem
//! A policy over `V` responses `y ∈ {0,…,V−1}` to a single prompt: `π_θ = softmax(θ)`, `θ` of shape (V,).
//! The reference `π_ref = softmax(ref_logits)` is fixed and non-uniform, the true reward `r` (V,) is known
//! to the experimenter but not to the learner, which only sees Bradley–Terry labelled pairs
//! `P(y_1 ≻ y_2) = σ(r(y_1) − r(y_2))` (DPO eq. 1; seed 000 §1.3) with `(y_1, y_2)` drawn from
//! `π_ref × π_ref` conditioned on `y_1 ≠ y_2` (pairs sampled from the SFT model, as in the DPO paper).
//!
//! # Claims the notebook makes (each pinned by `tests/toy_categorical_dpo.rs`)
//! 1. **Closed form** ([`closed_form_study`]). The KL-constrained objective
//!    `J(π) = E_π[r] − β·KL(π‖π_ref)` (DPO eq. 3; seed 000 §3.1 `J_RLHF`) is maximised by
//!    `π*(y) = π_ref(y)·exp(r(y)/β)/Z(β)` (DPO eq. 4; seed 000 §3.3), with maximum `β·log Z(β)`; in fact
//!    `J(π) = β·log Z − β·KL(π‖π*)` for every π, so every perturbation lowers J by exactly `β·KL(π‖π*)`.
//!    A damped-Newton ascent on `J(softmax θ)` (autograd gradient and Hessian) lands on π*. The implied
//!    reward `r(y) = β·log π*(y)/π_ref(y) + β·log Z` (DPO eq. 5) holds to rounding.
//! 2. **DPO recovers π*** ([`population_dpo_study`]). The population DPO loss (DPO eq. 7) — the
//!    expectation over all `V(V−1)` ordered pairs, each per-pair loss computed by
//!    [`crate::core::dpo::dpo_loss`] — is minimised exactly at π* for every β, and its minimum equals the
//!    Bradley–Terry loss of the true reward ([`crate::core::reward_model::pairwise_loss`]). For a softmax
//!    policy, `log π_θ(y_w) − log π_θ(y_l) = θ_w − θ_l`, so DPO is a logistic regression in θ whose solution
//!    is `θ − θ_ref = r/β + const`.
//! 3. **Finite samples** ([`finite_sample_study`]). On `N` sampled labelled pairs the DPO minimiser
//!    approaches π* as N grows (TV ∝ N^{−1/2}); for small N the minimiser may not exist (a response that
//!    never loses, or never wins: the win graph is not strongly connected — Zermelo 1929, Ford 1957), and
//!    DPO then pushes that response's probability towards 1 or 0 (the overfitting to deterministic-looking
//!    preferences that IPO points out, Azar et al. 2023).
//! 4. **Gradient weight** ([`gradient_weight_study`]). `∇_θ L_DPO = −β·E[σ(r̂_l − r̂_w)·(∇log π(y_w) −
//!    ∇log π(y_l))]` with `r̂ = β·log π_θ/π_ref` (DPO §4 "What does the DPO update do?"; seed 002), weight from
//!    [`crate::core::dpo::dpo_gradient_weight`]: > ½ for pairs the implicit reward model orders wrongly, → 0 for
//!    pairs it orders right with margin; at the optimum each pair's weight is `σ(r_l − r_w)`, the BT
//!    probability that its label is "wrong".
//! 5. **Degeneration without the weight** ([`objective_comparison`]). The naive objective
//!    `−β·(log π(y_w) − log π(y_l))` ([`naive_ratio_losses`], DPO §4: "a naïve version of this method
//!    without the weighting coefficient can cause the language model to degenerate") has a *constant*
//!    θ-gradient: π collapses onto the response with the most net wins in the data (not the best
//!    response), entropy → 0, `log π` of every other response → −∞ linearly, `KL(π_ref‖π)` → ∞, and
//!    `KL(π‖π_ref)` saturates at `−log π_ref(collapsed)`, the KL of a point mass on that response.
//!    DPO converges. Unlikelihood ([`crate::core::dpo::unlikelihood_loss`]) and Preferred-FT
//!    ([`crate::core::dpo::preferred_ft_loss`]) stay bounded here but ignore β and land below the reward–KL
//!    frontier `{(KL(π*_β‖π_ref), E_{π*_β}[r]) : β > 0}` ([`frontier_study`]).
//!
//! Everything runs in f64 on the CPU; every study calls `tch::manual_seed(cfg.seed)` first and draws from
//! libtorch's global generator (so concurrent callers must serialise). The tensors hold a few dozen
//! numbers: after [`set_single_thread`] the studies run several times faster than with libtorch's
//! default OpenMP pool, whose synchronisation dominates at this size.

use crate::core::check;
use crate::core::dpo::{
    dpo_gradient_weight, dpo_loss, preferred_ft_loss, unlikelihood_loss, DpoConfig, DpoVariant,
    PairLogps,
};
use crate::core::reward_model::pairwise_loss;
use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

const KD: Kind = Kind::Double;
const CPU: Device = Device::Cpu;
/// Largest number of responses accepted (the Newton solver forms a V×V Hessian by V backward passes).
pub const MAX_RESPONSES: usize = 64;

// ---------------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------------

/// Inputs of every study in this module. Field names follow Rafailov et al. 2023 where they can.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoricalDpoConfig {
    /// Logits of the reference policy, (V,): `π_ref = softmax(ref_logits)`. 2 ≤ V ≤ [`MAX_RESPONSES`].
    pub ref_logits: Vec<f64>,
    /// True reward `r(x, y)` of each response, (V,). Labels are drawn from `σ(r(y_1) − r(y_2))`.
    pub rewards: Vec<f64>,
    /// KL-constraint strengths β > 0 of the closed-form and population-recovery studies.
    pub betas: Vec<f64>,
    /// β grid (> 0) of the reward–KL frontier.
    pub frontier_betas: Vec<f64>,
    /// Scales s > 0 of the random perturbations `θ* + s·ε`, `ε ~ N(0, I)`, used to probe the maximum of J.
    pub perturbation_scales: Vec<f64>,
    /// Number of random perturbations per scale (≥ 1).
    pub perturbations_per_scale: usize,
    /// Iteration cap of the damped-Newton solver (≥ 1).
    pub newton_max_iters: usize,
    /// Newton stops when `max |∇_θ f| ≤ newton_tol` (> 0).
    pub newton_tol: f64,
    /// Dataset sizes N (each ≥ 1) of the finite-sample study.
    pub sample_sizes: Vec<usize>,
    /// Independent datasets per size (≥ 1).
    pub replicates: usize,
    /// β of the finite-sample study.
    pub sample_beta: f64,
    /// β of the training traces and of the gradient-weight study.
    pub trace_beta: f64,
    /// Number of labelled pairs of the dataset the objectives are compared on (≥ 2).
    pub trace_pairs: usize,
    /// Full-batch gradient-descent steps on θ (≥ 1).
    pub trace_steps: usize,
    /// Gradient-descent step size (> 0). DPO's curvature in θ scales as β², so small β needs a larger step.
    pub trace_lr: f64,
    /// Record a trace point every this many steps (≥ 1); the last step is always recorded.
    pub trace_log_every: usize,
    /// Unlikelihood weight α ∈ [0, 1] (DPO §6; Welleck et al. 2019).
    pub unlikelihood_alpha: f64,
    /// Steps (each ≤ `trace_steps`) at which the gradient-weight study snapshots every pair's weight.
    pub weight_snapshot_steps: Vec<usize>,
    /// Seed of `tch::manual_seed`: same seed ⇒ identical numbers.
    pub seed: i64,
}

impl Default for CategoricalDpoConfig {
    fn default() -> Self {
        // 24 log-spaced β in [0.05, 20].
        let frontier_betas = (0..24)
            .map(|i| 0.05 * (400.0f64).powf(i as f64 / 23.0))
            .collect();
        CategoricalDpoConfig {
            ref_logits: vec![1.5, 2.0, 1.0, 1.2, 0.5, 0.0, -0.5, -0.8],
            rewards: vec![0.0, 1.0, 0.5, 2.0, 1.5, 3.0, 2.5, 4.0],
            betas: vec![0.1, 0.5, 1.0, 2.0],
            frontier_betas,
            perturbation_scales: vec![0.01, 0.1, 1.0],
            perturbations_per_scale: 4,
            newton_max_iters: 100,
            newton_tol: 1e-13,
            sample_sizes: vec![250, 1000, 4000, 16000, 64000],
            replicates: 8,
            sample_beta: 1.0,
            trace_beta: 1.0,
            trace_pairs: 2000,
            trace_steps: 1500,
            trace_lr: 4.0,
            trace_log_every: 10,
            unlikelihood_alpha: 1.0,
            weight_snapshot_steps: vec![0, 10, 1500],
            seed: 0,
        }
    }
}

/// Pins libtorch to one intra-op thread (`tch::set_num_threads(1)`), process-wide. The studies here
/// work on tensors of a few dozen numbers, where the OpenMP pool only adds synchronisation; the
/// notebook calls this once (a notebook cannot name `tch` directly).
pub fn set_single_thread() {
    tch::set_num_threads(1);
}

fn positive_list(arg: &str, xs: &[f64]) -> Result<()> {
    if xs.is_empty() {
        return Err(RlhfError::invalid(arg, "must not be empty"));
    }
    for (i, &x) in xs.iter().enumerate() {
        check::positive(&format!("{arg}[{i}]"), x)?;
    }
    Ok(())
}

impl CategoricalDpoConfig {
    /// Checks the problem definition (`ref_logits`, `rewards`); every study calls it.
    pub fn validate_problem(&self) -> Result<()> {
        let v = self.ref_logits.len();
        if !(2..=MAX_RESPONSES).contains(&v) {
            return Err(RlhfError::invalid(
                "ref_logits",
                format!("needs between 2 and {MAX_RESPONSES} responses, got {v}"),
            ));
        }
        if self.rewards.len() != v {
            return Err(RlhfError::shape(
                "rewards",
                vec![self.rewards.len() as i64],
                format!("[{v}] (one reward per response, like `ref_logits`)"),
            ));
        }
        for (i, &x) in self.ref_logits.iter().enumerate() {
            check::finite_scalar(&format!("ref_logits[{i}]"), x)?;
        }
        for (i, &x) in self.rewards.iter().enumerate() {
            check::finite_scalar(&format!("rewards[{i}]"), x)?;
        }
        Ok(())
    }

    fn validate_newton(&self) -> Result<()> {
        check::at_least("newton_max_iters", self.newton_max_iters as i64, 1 as i64)?;
        check::positive("newton_tol", self.newton_tol)
    }

    fn validate_trace(&self) -> Result<()> {
        check::positive("trace_beta", self.trace_beta)?;
        check::at_least("trace_steps", self.trace_steps as i64, 1 as i64)?;
        check::positive("trace_lr", self.trace_lr)?;
        check::at_least("trace_log_every", self.trace_log_every as i64, 1 as i64)
    }

    /// Checks every field (each study checks only the fields it reads).
    pub fn validate(&self) -> Result<()> {
        self.validate_problem()?;
        positive_list("betas", &self.betas)?;
        positive_list("frontier_betas", &self.frontier_betas)?;
        positive_list("perturbation_scales", &self.perturbation_scales)?;
        check::at_least(
            "perturbations_per_scale",
            self.perturbations_per_scale as i64,
            1 as i64,
        )?;
        self.validate_newton()?;
        self.validate_sampling()?;
        self.validate_trace()?;
        check::at_least("trace_pairs", self.trace_pairs as i64, 2 as i64)?;
        check::in_unit_interval("unlikelihood_alpha", self.unlikelihood_alpha)?;
        self.validate_snapshots()
    }

    fn validate_sampling(&self) -> Result<()> {
        if self.sample_sizes.is_empty() {
            return Err(RlhfError::invalid("sample_sizes", "must not be empty"));
        }
        for (i, &n) in self.sample_sizes.iter().enumerate() {
            check::at_least(&format!("sample_sizes[{i}]"), n as i64, 1 as i64)?;
        }
        check::at_least("replicates", self.replicates as i64, 1 as i64)?;
        check::positive("sample_beta", self.sample_beta)
    }

    fn validate_snapshots(&self) -> Result<()> {
        if self.weight_snapshot_steps.is_empty() {
            return Err(RlhfError::invalid(
                "weight_snapshot_steps",
                "must not be empty",
            ));
        }
        for (i, &s) in self.weight_snapshot_steps.iter().enumerate() {
            if s > self.trace_steps {
                return Err(RlhfError::out_of_range(
                    &format!("weight_snapshot_steps[{i}]"),
                    s as f64,
                    &format!("<= trace_steps = {}", self.trace_steps),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Problem, pairs, small tensor helpers
// ---------------------------------------------------------------------------------------------------

fn t1(x: &[f64]) -> Tensor {
    Tensor::from_slice(x).to_kind(KD)
}

fn ti(x: &[i64]) -> Tensor {
    Tensor::from_slice(x)
}

fn vec1(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.detach().to_kind(KD).flatten(0, -1))?)
}

fn sc(t: &Tensor) -> Result<f64> {
    Ok(t.detach().to_kind(KD).f_double_value(&[])?)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The fixed part of the problem: π_ref and r as tensors (V,).
struct Problem {
    v: usize,
    ref_logits: Tensor,
    ref_logp: Tensor,
    rewards: Tensor,
    ref_probs: Vec<f64>,
    r: Vec<f64>,
}

impl Problem {
    fn new(cfg: &CategoricalDpoConfig) -> Result<Self> {
        cfg.validate_problem()?;
        let ref_logits = t1(&cfg.ref_logits);
        let ref_logp = ref_logits.log_softmax(0, KD);
        let ref_probs = vec1(&ref_logp.exp())?;
        Ok(Problem {
            v: cfg.ref_logits.len(),
            ref_logits,
            ref_logp,
            rewards: t1(&cfg.rewards),
            ref_probs,
            r: cfg.rewards.clone(),
        })
    }

    /// `log π*_β = log π_ref + r/β − log Z(β)` (DPO eq. 4), (V,).
    fn optimal_logp(&self, beta: f64) -> Tensor {
        (&self.ref_logp + &self.rewards / beta).log_softmax(0, KD)
    }

    /// `log Z(β) = log Σ_y π_ref(y)·exp(r(y)/β)` (DPO eq. 4).
    fn log_partition(&self, beta: f64) -> Result<f64> {
        sc(&(&self.ref_logp + &self.rewards / beta).logsumexp([0i64], false))
    }

    /// All ordered pairs `(i, j)`, `i ≠ j`, as index vectors.
    fn ordered_pairs(&self) -> (Vec<i64>, Vec<i64>) {
        let v = self.v as i64;
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..v {
            for j in 0..v {
                if i != j {
                    a.push(i);
                    b.push(j);
                }
            }
        }
        (a, b)
    }
}

/// Preference pairs as indices into the V responses, with a weight per pair (weights sum to 1).
/// A population is all `V(V−1)` ordered (chosen, rejected) pairs weighted by
/// `2·π_ref(y_w)·π_ref(y_l)·σ(r_w − r_l) / (1 − Σ_y π_ref(y)²)` (the draw `(y_w, y_l)` with the first
/// winning or `(y_l, y_w)` with the second winning, given `y_1 ≠ y_2`); a dataset of N pairs
/// aggregates to the same ordered pairs weighted by their empirical frequency `n_wl / N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairSet {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
    pub weights: Vec<f64>,
}

impl PairSet {
    fn len(&self) -> usize {
        self.chosen.len()
    }
}

/// The exact population of labelled pairs: `(y_1, y_2) ~ π_ref × π_ref` given `y_1 ≠ y_2`, labelled by
/// Bradley–Terry `P(y_1 ≻ y_2) = σ(r_1 − r_2)` (DPO eq. 1). Ordered pairs `(w, l)` in row-major order.
pub fn population_pairs(cfg: &CategoricalDpoConfig) -> Result<PairSet> {
    let p = Problem::new(cfg)?;
    Ok(population_of(&p))
}

fn population_of(p: &Problem) -> PairSet {
    let (a, b) = p.ordered_pairs();
    let mut w: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&i, &j)| {
            let (i, j) = (i as usize, j as usize);
            p.ref_probs[i] * p.ref_probs[j] * sigmoid(p.r[i] - p.r[j])
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= total);
    PairSet {
        chosen: a,
        rejected: b,
        weights: w,
    }
}

/// N labelled pairs sampled from the population (uses the global tch generator), as raw rows:
/// `chosen[k], rejected[k]`, weights `1/N`.
fn sample_pairs(p: &Problem, n: usize) -> Result<PairSet> {
    let (a, b) = p.ordered_pairs();
    let probs: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&i, &j)| p.ref_probs[i as usize] * p.ref_probs[j as usize])
        .collect();
    let k = t1(&probs).f_multinomial(n as i64, true)?;
    let y1 = ti(&a).index_select(0, &k);
    let y2 = ti(&b).index_select(0, &k);
    let p_first = (p.rewards.index_select(0, &y1) - p.rewards.index_select(0, &y2)).sigmoid();
    let first_wins = Tensor::rand([n as i64], (KD, CPU)).lt_tensor(&p_first);
    let chosen = y1.where_self(&first_wins, &y2);
    let rejected = y2.where_self(&first_wins, &y1);
    Ok(PairSet {
        chosen: Vec::<i64>::try_from(&chosen)?,
        rejected: Vec::<i64>::try_from(&rejected)?,
        weights: vec![1.0 / n as f64; n],
    })
}

/// A dataset of `n` labelled pairs drawn from the population after `tch::manual_seed(cfg.seed)` (the
/// same draw [`objective_comparison`] trains on when `n = cfg.trace_pairs`): raw rows, weights `1/n`.
pub fn sample_dataset(cfg: &CategoricalDpoConfig, n: usize) -> Result<PairSet> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    check::at_least("n", n as i64, 1 as i64)?;
    sample_pairs(&p, n)
}

/// `Σ_b w_b·ℓ_b` over a pair set at the policy softmax(θ), with the per-pair sigmoid-DPO losses of
/// [`crate::core::dpo::dpo_loss`] (DPO eq. 7). With weights `1/N` this is the library's mean loss.
pub fn weighted_dpo_loss_at(
    cfg: &CategoricalDpoConfig,
    pairs: &PairSet,
    theta: &[f64],
    beta: f64,
) -> Result<f64> {
    let p = Problem::new(cfg)?;
    let n = pairs.len();
    if n == 0 || pairs.rejected.len() != n || pairs.weights.len() != n {
        return Err(RlhfError::invalid(
            "pairs",
            "chosen, rejected and weights must have the same non-zero length",
        ));
    }
    if theta.len() != p.v {
        return Err(RlhfError::shape(
            "theta",
            vec![theta.len() as i64],
            format!("[{}]", p.v),
        ));
    }
    let bad = pairs
        .chosen
        .iter()
        .chain(&pairs.rejected)
        .find(|&&i| i < 0 || i as usize >= p.v);
    if let Some(&i) = bad {
        return Err(RlhfError::out_of_range(
            "pairs",
            i as f64,
            &format!("in [0, {})", p.v),
        ));
    }
    for (k, &w) in pairs.weights.iter().enumerate() {
        check::non_negative(&format!("pairs.weights[{k}]"), w)?;
    }
    let pt = PairTensors::new(&p, pairs);
    sc(&weighted_dpo_loss(&t1(theta), &pt, beta)?)
}

/// Aggregates raw pairs into counts `n_wl` (V×V, row = chosen) and the ordered-pair weights `n_wl / N`.
fn aggregate(p: &Problem, raw: &PairSet) -> (Vec<Vec<usize>>, PairSet) {
    let mut counts = vec![vec![0usize; p.v]; p.v];
    for (&w, &l) in raw.chosen.iter().zip(&raw.rejected) {
        counts[w as usize][l as usize] += 1;
    }
    let (a, b) = p.ordered_pairs();
    let n = raw.len() as f64;
    let weights = a
        .iter()
        .zip(&b)
        .map(|(&i, &j)| counts[i as usize][j as usize] as f64 / n)
        .collect();
    (
        counts,
        PairSet {
            chosen: a,
            rejected: b,
            weights,
        },
    )
}

/// Whether the Bradley–Terry / DPO minimiser exists on these counts: the directed "beat" graph
/// (edge w → l when w beat l at least once) must be strongly connected (Zermelo 1929; Ford 1957).
fn mle_exists(counts: &[Vec<usize>]) -> bool {
    let v = counts.len();
    let mut reach: Vec<Vec<bool>> = (0..v)
        .map(|i| (0..v).map(|j| i == j || counts[i][j] > 0).collect())
        .collect();
    // Warshall's transitive closure.
    for k in 0..v {
        let via = reach[k].clone();
        for row in reach.iter_mut() {
            if row[k] {
                for (x, &y) in row.iter_mut().zip(&via) {
                    *x |= y;
                }
            }
        }
    }
    reach.iter().all(|row| row.iter().all(|&x| x))
}

/// Index tensors and reference log-probs of a pair set, built once per study.
struct PairTensors {
    chosen: Tensor,
    rejected: Tensor,
    weights: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
}

impl PairTensors {
    fn new(p: &Problem, pairs: &PairSet) -> Self {
        let chosen = ti(&pairs.chosen);
        let rejected = ti(&pairs.rejected);
        PairTensors {
            ref_chosen: p.ref_logp.index_select(0, &chosen),
            ref_rejected: p.ref_logp.index_select(0, &rejected),
            weights: t1(&pairs.weights),
            chosen,
            rejected,
        }
    }

    /// `(log π_θ(y_w), log π_θ(y_l))`, each (B,), differentiable in θ.
    fn policy_logps(&self, logp: &Tensor) -> (Tensor, Tensor) {
        (
            logp.index_select(0, &self.chosen),
            logp.index_select(0, &self.rejected),
        )
    }
}

fn pair_logps<'a>(pc: &'a Tensor, pl: &'a Tensor, pt: &'a PairTensors) -> PairLogps<'a> {
    PairLogps {
        policy_chosen: pc,
        policy_rejected: pl,
        ref_chosen: &pt.ref_chosen,
        ref_rejected: &pt.ref_rejected,
        chosen_lengths: None,
        rejected_lengths: None,
    }
}

/// Weighted DPO loss `Σ_b w_b·ℓ_b(θ)` with the per-pair sigmoid-DPO losses `ℓ_b` of
/// [`crate::core::dpo::dpo_loss`] (DPO eq. 7). Scalar, differentiable in θ (V,).
fn weighted_dpo_loss(theta: &Tensor, pt: &PairTensors, beta: f64) -> Result<Tensor> {
    let logp = theta.log_softmax(0, KD);
    let (pc, pl) = pt.policy_logps(&logp);
    let out = dpo_loss(
        &pair_logps(&pc, &pl, pt),
        &DpoConfig::new(beta, DpoVariant::Sigmoid),
    )?;
    Ok((out.losses * &pt.weights).sum(KD))
}

/// Per-pair loss of the *naive*, unweighted objective of DPO §4 (seed 002: "没有加权系数的这种方法的
/// naive 版本会导致语言模型的退化"): `−β·h` with `h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) −
/// log π_ref(y_l))`. Its gradient is DPO's with the weight `σ(r̂_l − r̂_w)` replaced by 1:
/// `∇ℓ_DPO = σ(r̂_l − r̂_w)·∇ℓ_naive`. Shapes (B,) → (B,). The core library has no such loss (it is not
/// a method anyone trains with), so it lives here.
pub fn naive_ratio_losses(lp: &PairLogps, beta: f64) -> Result<Tensor> {
    check::positive("beta", beta)?;
    let pc = lp.policy_chosen;
    check::float("policy_chosen", pc)?;
    check::ndim(
        "policy_chosen",
        pc,
        1,
        "(B,) one sequence log-prob per pair",
    )?;
    for (arg, t) in [
        ("policy_rejected", lp.policy_rejected),
        ("ref_chosen", lp.ref_chosen),
        ("ref_rejected", lp.ref_rejected),
    ] {
        check::float(arg, t)?;
        check::same_shape("policy_chosen", pc, arg, t)?;
    }
    for (arg, t) in [
        ("policy_chosen", pc),
        ("policy_rejected", lp.policy_rejected),
        ("ref_chosen", lp.ref_chosen),
        ("ref_rejected", lp.ref_rejected),
    ] {
        check::finite(arg, t)?;
    }
    if pc.size()[0] == 0 {
        return Err(RlhfError::invalid("policy_chosen", "no pairs (B = 0)"));
    }
    let h = (pc - lp.policy_rejected) - (lp.ref_chosen - lp.ref_rejected);
    Ok(h * (-beta))
}

// ---------------------------------------------------------------------------------------------------
// Damped Newton on a softmax parameter
// ---------------------------------------------------------------------------------------------------

struct NewtonFit {
    theta: Tensor,
    iters: usize,
    converged: bool,
    grad_max: f64,
}

/// Minimises `f(θ)`, θ (V,), a function of `softmax(θ)` only, by Newton steps with the autograd Hessian
/// (V backward passes through the gradient), eigenvalues replaced by their absolute values (saddle-free
/// Newton, so an indefinite Hessian still gives a descent direction), the gauge direction `1` removed,
/// and an Armijo backtracking line search (skipped once the predicted decrease is below f's rounding).
fn newton_minimise(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    theta0: &Tensor,
    max_iters: usize,
    tol: f64,
) -> Result<NewtonFit> {
    let v = theta0.size()[0];
    let mut theta = theta0.detach().copy();
    let mut grad_max = f64::INFINITY;
    for it in 0..max_iters {
        let th = theta.detach().copy().set_requires_grad(true);
        let loss = f(&th)?;
        let g = Tensor::f_run_backward(&[&loss], &[&th], true, true)?.remove(0);
        let gd = g.detach();
        grad_max = sc(&gd.abs().max())?;
        if grad_max <= tol {
            return Ok(NewtonFit {
                theta,
                iters: it,
                converged: true,
                grad_max,
            });
        }
        let mut rows = Vec::with_capacity(v as usize);
        for k in 0..v {
            rows.push(Tensor::f_run_backward(&[&g.get(k)], &[&th], true, false)?.remove(0));
        }
        let h = Tensor::stack(&rows, 0);
        let h = (&h + h.tr()) * 0.5;
        let (lam, q) = h.f_linalg_eigh("L")?;
        let lam_abs = lam.abs();
        let floor = (sc(&lam_abs.max())? * 1e-14).max(1e-300);
        let coef = q.tr().matmul(&gd.unsqueeze(1)).squeeze_dim(1) / lam_abs.clamp_min(floor);
        let d = q.matmul(&coef.unsqueeze(1)).squeeze_dim(1);
        let d = &d - d.mean(KD);
        let f0 = sc(&loss)?;
        let slope = sc(&(&gd * &d).sum(KD))?;
        // Once the predicted decrease ½·gᵀd is below the rounding of f, a line search can only see
        // noise: take the full Newton step (the quadratic-convergence regime).
        if 0.5 * slope <= 1e-13 * (1.0 + f0.abs()) {
            theta = &theta - &d;
            continue;
        }
        let mut step = 1.0;
        let mut accepted = false;
        while step >= 1e-12 {
            let cand = &theta - &d * step;
            let fc = sc(&tch::no_grad(|| f(&cand))?)?;
            if fc.is_finite() && fc <= f0 - 1e-4 * step * slope {
                theta = cand;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No representable decrease is left: f is flat to rounding along the Newton direction.
            return Ok(NewtonFit {
                theta,
                iters: it + 1,
                converged: grad_max <= tol * 1e3,
                grad_max,
            });
        }
    }
    Ok(NewtonFit {
        theta,
        iters: max_iters,
        converged: grad_max <= tol,
        grad_max,
    })
}

// ---------------------------------------------------------------------------------------------------
// Exact policy metrics
// ---------------------------------------------------------------------------------------------------

/// Exact KL(p‖q) from log-probabilities (V,): `Σ_y p(y)·(log p(y) − log q(y))` — the expectation of the
/// per-token k1 estimator of [`crate::core::kl`] under p, summed over the whole support.
fn kl(logp: &Tensor, logq: &Tensor) -> Result<f64> {
    sc(&(logp.exp() * (logp - logq)).sum(KD))
}

fn tv(logp: &Tensor, logq: &Tensor) -> Result<f64> {
    sc(&((logp.exp() - logq.exp()).abs().sum(KD) * 0.5))
}

fn entropy_of(logp: &Tensor) -> Result<f64> {
    let v = logp.size()[0];
    let h =
        crate::core::logprobs::entropy(&logp.view([1, 1, v]), &Tensor::ones([1, 1], (KD, CPU)))?;
    sc(&h.sum(KD))
}

/// `J(π) = E_π[r] − β·KL(π‖π_ref)` (DPO eq. 3 for one prompt; seed 000 §3.1), differentiable in log π.
fn objective_tensor(p: &Problem, logp: &Tensor, beta: f64) -> Tensor {
    let probs = logp.exp();
    (&probs * &p.rewards).sum(KD) - (&probs * (logp - &p.ref_logp)).sum(KD) * beta
}

// ---------------------------------------------------------------------------------------------------
// Study 1: the closed form
// ---------------------------------------------------------------------------------------------------

/// One random perturbation `θ = log π* + s·ε` of the optimum.
#[derive(Debug, Clone, Serialize)]
pub struct Perturbation {
    pub scale: f64,
    /// The perturbed policy softmax(θ* + s·ε), (V,).
    pub policy: Vec<f64>,
    /// `J(π_θ)`.
    pub objective: f64,
    /// `J(π*) − J(π_θ)` (> 0: the perturbation lowers J).
    pub drop: f64,
    /// `β·KL(π_θ‖π*)`, the predicted drop.
    pub beta_kl_to_optimal: f64,
}

/// Closed form versus numerical maximisation of J at one β.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedFormRow {
    pub beta: f64,
    /// π*(y) = π_ref(y)·exp(r(y)/β)/Z(β) (DPO eq. 4), (V,).
    pub optimal_policy: Vec<f64>,
    /// log Z(β).
    pub log_partition: f64,
    /// J(π*) evaluated directly.
    pub optimal_objective: f64,
    /// β·log Z(β), the value J(π*) must equal.
    pub beta_log_partition: f64,
    /// E_{π*}[r].
    pub expected_reward: f64,
    /// KL(π*‖π_ref).
    pub kl_to_ref: f64,
    /// `max_y |β·log(π*(y)/π_ref(y)) + β·log Z − r(y)|` (DPO eq. 5; should be rounding).
    pub implied_reward_max_error: f64,
    /// The policy found by damped-Newton ascent on J(softmax θ) from θ = ref_logits, (V,).
    pub numerical_policy: Vec<f64>,
    /// J at the numerical maximiser.
    pub numerical_objective: f64,
    /// TV(numerical maximiser, π*).
    pub numerical_tv: f64,
    pub numerical_iters: usize,
    pub numerical_converged: bool,
    /// max |∂(−J)/∂θ| at the numerical maximiser.
    pub numerical_grad_max: f64,
    /// Random perturbations of θ* and the drop in J each causes.
    pub perturbations: Vec<Perturbation>,
}

/// Output of [`closed_form_study`].
#[derive(Debug, Clone, Serialize)]
pub struct ClosedFormStudy {
    /// π_ref, (V,).
    pub ref_policy: Vec<f64>,
    /// r, (V,).
    pub rewards: Vec<f64>,
    /// E_{π_ref}[r].
    pub ref_expected_reward: f64,
    pub rows: Vec<ClosedFormRow>,
}

/// Study 1 (seed 000 §3.1–3.3; DPO eqs. 3–5): for each β in `cfg.betas`, the closed-form optimum π*,
/// `J(π*) = β·log Z`, the implied-reward identity, a damped-Newton ascent on J from π_ref, and random
/// perturbations of θ* (each lowering J by exactly `β·KL(π‖π*)`).
pub fn closed_form_study(cfg: &CategoricalDpoConfig) -> Result<ClosedFormStudy> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    positive_list("betas", &cfg.betas)?;
    positive_list("perturbation_scales", &cfg.perturbation_scales)?;
    check::at_least(
        "perturbations_per_scale",
        cfg.perturbations_per_scale as i64,
        1 as i64,
    )?;
    cfg.validate_newton()?;
    let mut rows = Vec::with_capacity(cfg.betas.len());
    for &beta in &cfg.betas {
        let star = p.optimal_logp(beta);
        let log_z = p.log_partition(beta)?;
        let optimal_objective = sc(&objective_tensor(&p, &star, beta))?;
        let implied = (&star - &p.ref_logp) * beta + beta * log_z - &p.rewards;
        let f = |th: &Tensor| -> Result<Tensor> {
            Ok(-objective_tensor(&p, &th.log_softmax(0, KD), beta))
        };
        let fit = newton_minimise(&f, &p.ref_logits, cfg.newton_max_iters, cfg.newton_tol)?;
        let fit_logp = fit.theta.log_softmax(0, KD);
        let mut perturbations = Vec::new();
        for &s in &cfg.perturbation_scales {
            for _ in 0..cfg.perturbations_per_scale {
                let eps = Tensor::randn([p.v as i64], (KD, CPU));
                let logp = (&star + eps * s).log_softmax(0, KD);
                let objective = sc(&objective_tensor(&p, &logp, beta))?;
                perturbations.push(Perturbation {
                    scale: s,
                    policy: vec1(&logp.exp())?,
                    objective,
                    drop: optimal_objective - objective,
                    beta_kl_to_optimal: beta * kl(&logp, &star)?,
                });
            }
        }
        rows.push(ClosedFormRow {
            beta,
            optimal_policy: vec1(&star.exp())?,
            log_partition: log_z,
            optimal_objective,
            beta_log_partition: beta * log_z,
            expected_reward: sc(&(star.exp() * &p.rewards).sum(KD))?,
            kl_to_ref: kl(&star, &p.ref_logp)?,
            implied_reward_max_error: sc(&implied.abs().max())?,
            numerical_policy: vec1(&fit_logp.exp())?,
            numerical_objective: sc(&objective_tensor(&p, &fit_logp, beta))?,
            numerical_tv: tv(&fit_logp, &star)?,
            numerical_iters: fit.iters,
            numerical_converged: fit.converged,
            numerical_grad_max: fit.grad_max,
            perturbations,
        });
    }
    Ok(ClosedFormStudy {
        ref_expected_reward: sc(&(p.ref_logp.exp() * &p.rewards).sum(KD))?,
        ref_policy: p.ref_probs.clone(),
        rewards: p.r.clone(),
        rows,
    })
}

// ---------------------------------------------------------------------------------------------------
// Study 2: population DPO recovers π*
// ---------------------------------------------------------------------------------------------------

/// The population DPO minimiser at one β.
#[derive(Debug, Clone, Serialize)]
pub struct PopulationDpoRow {
    pub beta: f64,
    /// π*, (V,).
    pub optimal_policy: Vec<f64>,
    /// argmin_θ of the population DPO loss, as softmax(θ), (V,).
    pub learned_policy: Vec<f64>,
    /// TV(learned, π*).
    pub tv_to_optimal: f64,
    /// KL(π*‖learned).
    pub kl_optimal_to_learned: f64,
    /// Population DPO loss at the minimiser.
    pub final_loss: f64,
    /// Population DPO loss at θ = ref_logits (log 2: every h is 0).
    pub initial_loss: f64,
    /// The Bradley–Terry loss of the *true* reward on the same population (the label entropy): the
    /// floor the DPO loss reaches when `r̂ = r + const` ([`crate::core::reward_model::pairwise_loss`]).
    pub true_reward_bt_loss: f64,
    /// Implicit reward `r̂(y) = β·log π_θ(y)/π_ref(y)`, (V,).
    pub implicit_reward: Vec<f64>,
    /// `max_y (r̂ − r) − min_y (r̂ − r)`: r̂ equals r up to one constant (−β·log Z).
    pub implicit_reward_spread: f64,
    pub newton_iters: usize,
    pub converged: bool,
    /// max |∇_θ L| at the minimiser.
    pub grad_max: f64,
}

/// Output of [`population_dpo_study`].
#[derive(Debug, Clone, Serialize)]
pub struct PopulationDpoStudy {
    /// The population of labelled pairs the loss is an expectation over.
    pub pairs: PairSet,
    pub rows: Vec<PopulationDpoRow>,
}

/// Study 2 (seed 000 §3.3; DPO eq. 7, Theorem 1): minimise the exact population DPO loss over θ (damped
/// Newton from θ = ref_logits) for each β in `cfg.betas`; compare with π*.
pub fn population_dpo_study(cfg: &CategoricalDpoConfig) -> Result<PopulationDpoStudy> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    positive_list("betas", &cfg.betas)?;
    cfg.validate_newton()?;
    let pairs = population_of(&p);
    let pt = PairTensors::new(&p, &pairs);
    let bt = pairwise_loss(
        &p.rewards.index_select(0, &pt.chosen),
        &p.rewards.index_select(0, &pt.rejected),
        None,
        0.0,
    )?;
    let true_reward_bt_loss = sc(&(bt.losses * &pt.weights).sum(KD))?;
    let mut rows = Vec::new();
    for &beta in &cfg.betas {
        let f = |th: &Tensor| weighted_dpo_loss(th, &pt, beta);
        let fit = newton_minimise(&f, &p.ref_logits, cfg.newton_max_iters, cfg.newton_tol)?;
        let logp = fit.theta.log_softmax(0, KD);
        let star = p.optimal_logp(beta);
        let implicit = (&logp - &p.ref_logp) * beta;
        let diff = &implicit - &p.rewards;
        rows.push(PopulationDpoRow {
            beta,
            optimal_policy: vec1(&star.exp())?,
            learned_policy: vec1(&logp.exp())?,
            tv_to_optimal: tv(&logp, &star)?,
            kl_optimal_to_learned: kl(&star, &logp)?,
            final_loss: sc(&weighted_dpo_loss(&fit.theta, &pt, beta)?)?,
            initial_loss: sc(&weighted_dpo_loss(&p.ref_logits, &pt, beta)?)?,
            true_reward_bt_loss,
            implicit_reward: vec1(&implicit)?,
            implicit_reward_spread: sc(&(diff.max() - diff.min()))?,
            newton_iters: fit.iters,
            converged: fit.converged,
            grad_max: fit.grad_max,
        });
    }
    Ok(PopulationDpoStudy { pairs, rows })
}

// ---------------------------------------------------------------------------------------------------
// Study 3: finite samples
// ---------------------------------------------------------------------------------------------------

/// One dataset size of the finite-sample study.
#[derive(Debug, Clone, Serialize)]
pub struct FiniteSampleRow {
    /// Number of labelled pairs N.
    pub n_pairs: usize,
    /// TV(DPO minimiser on the dataset, π*) for each replicate.
    pub tvs: Vec<f64>,
    /// Whether the minimiser exists (win graph strongly connected) for each replicate.
    pub mle_exists: Vec<bool>,
    /// max_y π_θ(y) of each replicate's fit (→ 1 when a response never lost).
    pub fit_max_prob: Vec<f64>,
    /// argmax_y π_θ(y) of each replicate's fit.
    pub fit_argmax: Vec<usize>,
    pub mean_tv: f64,
    pub median_tv: f64,
    /// Mean TV over the replicates whose minimiser exists (NaN when none does).
    pub mean_tv_when_exists: f64,
    /// Fraction of replicates whose minimiser exists.
    pub exists_fraction: f64,
}

/// Output of [`finite_sample_study`].
#[derive(Debug, Clone, Serialize)]
pub struct FiniteSampleStudy {
    pub beta: f64,
    pub replicates: usize,
    pub rows: Vec<FiniteSampleRow>,
    /// Least-squares slope of log(mean TV) against log N over the sizes whose minimisers all exist
    /// (−½ for a √N-consistent estimator; NaN with fewer than two such sizes).
    pub log_log_slope: f64,
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Study 3: for each N in `cfg.sample_sizes`, `cfg.replicates` datasets of N labelled pairs; the DPO loss
/// on each (the library's mean over N pairs, aggregated exactly into ordered-pair frequencies) is
/// minimised by damped Newton (capped at `newton_max_iters` when no minimiser exists) at `sample_beta`.
pub fn finite_sample_study(cfg: &CategoricalDpoConfig) -> Result<FiniteSampleStudy> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    cfg.validate_sampling()?;
    cfg.validate_newton()?;
    let beta = cfg.sample_beta;
    let star = p.optimal_logp(beta);
    let mut rows = Vec::new();
    for &n in &cfg.sample_sizes {
        let mut tvs = Vec::new();
        let mut exists = Vec::new();
        let mut fit_max_prob = Vec::new();
        let mut fit_argmax = Vec::new();
        for _ in 0..cfg.replicates {
            let raw = sample_pairs(&p, n)?;
            let (counts, agg) = aggregate(&p, &raw);
            let pt = PairTensors::new(&p, &agg);
            let f = |th: &Tensor| weighted_dpo_loss(th, &pt, beta);
            let fit = newton_minimise(&f, &p.ref_logits, cfg.newton_max_iters, cfg.newton_tol)?;
            let logp = fit.theta.log_softmax(0, KD);
            tvs.push(tv(&logp, &star)?);
            exists.push(mle_exists(&counts));
            let probs = vec1(&logp.exp())?;
            fit_argmax.push(argmax(&probs));
            fit_max_prob.push(probs[argmax(&probs)]);
        }
        let ok: Vec<f64> = tvs
            .iter()
            .zip(&exists)
            .filter(|(_, &e)| e)
            .map(|(&t, _)| t)
            .collect();
        rows.push(FiniteSampleRow {
            n_pairs: n,
            mean_tv: tvs.iter().sum::<f64>() / tvs.len() as f64,
            median_tv: median(&tvs),
            mean_tv_when_exists: if ok.is_empty() {
                f64::NAN
            } else {
                ok.iter().sum::<f64>() / ok.len() as f64
            },
            exists_fraction: ok.len() as f64 / tvs.len() as f64,
            tvs,
            mle_exists: exists,
            fit_max_prob,
            fit_argmax,
        });
    }
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.exists_fraction == 1.0)
        .map(|r| ((r.n_pairs as f64).ln(), r.mean_tv.ln()))
        .collect();
    let log_log_slope = if pts.len() < 2 {
        f64::NAN
    } else {
        let m = pts.len() as f64;
        let mx = pts.iter().map(|q| q.0).sum::<f64>() / m;
        let my = pts.iter().map(|q| q.1).sum::<f64>() / m;
        let sxy: f64 = pts.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
        let sxx: f64 = pts.iter().map(|q| (q.0 - mx).powi(2)).sum();
        sxy / sxx
    };
    Ok(FiniteSampleStudy {
        beta,
        replicates: cfg.replicates,
        rows,
        log_log_slope,
    })
}

// ---------------------------------------------------------------------------------------------------
// Study 4: the gradient weight
// ---------------------------------------------------------------------------------------------------

/// One ordered pair's weight at a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct PairWeight {
    pub chosen: usize,
    pub rejected: usize,
    /// Population probability of this labelled pair.
    pub pair_prob: f64,
    /// `r_w − r_l` (true).
    pub true_margin: f64,
    /// `r̂_w − r̂_l` (implicit, at the snapshot).
    pub implicit_margin: f64,
    /// `σ(r̂_l − r̂_w)` from [`crate::core::dpo::dpo_gradient_weight`].
    pub weight: f64,
}

/// Every pair's weight at one step of population DPO training.
#[derive(Debug, Clone, Serialize)]
pub struct WeightSnapshot {
    pub step: usize,
    /// π_θ at this step, (V,).
    pub policy: Vec<f64>,
    /// `r̂(y) = β·log π_θ(y)/π_ref(y)`, (V,).
    pub implicit_reward: Vec<f64>,
    /// All V(V−1) ordered (chosen, rejected) pairs.
    pub pairs: Vec<PairWeight>,
    /// `max |∇_θ L_DPO − Σ_b w_b·σ_b·∇_θ ℓ_naive,b|`: DPO's gradient is the weighted naive gradient.
    pub gradient_identity_error: f64,
}

/// Output of [`gradient_weight_study`].
#[derive(Debug, Clone, Serialize)]
pub struct GradientWeightStudy {
    pub beta: f64,
    pub lr: f64,
    /// Logged steps.
    pub steps: Vec<usize>,
    /// Population DPO loss at each logged step.
    pub loss: Vec<f64>,
    /// `E[σ(r̂_l − r̂_w)]` over the labelled population.
    pub mean_weight: Vec<f64>,
    /// Same, over pairs whose label agrees with r (`r_w > r_l`).
    pub mean_weight_agreeing: Vec<f64>,
    /// Same, over pairs whose label contradicts r (`r_w < r_l`; BT label noise).
    pub mean_weight_contradicting: Vec<f64>,
    /// TV(π_θ, π*) at each logged step.
    pub tv_to_optimal: Vec<f64>,
    /// The limits of the three means at π*: E[σ(r_l − r_w)] over all / agreeing / contradicting pairs.
    pub optimal_mean_weight: [f64; 3],
    pub snapshots: Vec<WeightSnapshot>,
}

fn weights_at(theta: &Tensor, pt: &PairTensors, beta: f64) -> Result<Tensor> {
    let logp = theta.log_softmax(0, KD);
    let (pc, pl) = pt.policy_logps(&logp);
    dpo_gradient_weight(&pair_logps(&pc, &pl, pt), beta)
}

/// `(all, agreeing, contradicting)` population means of per-pair values `x`.
fn split_means(x: &Tensor, pairs: &PairSet, r: &[f64]) -> Result<[f64; 3]> {
    let xs = vec1(x)?;
    let (mut s, mut sa, mut wa, mut sc_, mut wc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for k in 0..pairs.len() {
        let w = pairs.weights[k];
        s += w * xs[k];
        let m = r[pairs.chosen[k] as usize] - r[pairs.rejected[k] as usize];
        if m > 0.0 {
            sa += w * xs[k];
            wa += w;
        } else if m < 0.0 {
            sc_ += w * xs[k];
            wc += w;
        }
    }
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok([s, div(sa, wa), div(sc_, wc)])
}

fn gradient_of(loss: &Tensor, theta: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_run_backward(&[loss], &[theta], false, false)?.remove(0))
}

/// Study 4 (DPO §4; seed 002): full-batch gradient descent on the population DPO loss at `trace_beta`
/// from θ = ref_logits; logs the mean gradient weight `σ(r̂_l − r̂_w)` (overall and split by whether the
/// label agrees with r) and snapshots every pair's weight at `weight_snapshot_steps`, where it also
/// checks `∇L_DPO = E[σ(r̂_l − r̂_w)·∇ℓ_naive]` by autograd.
pub fn gradient_weight_study(cfg: &CategoricalDpoConfig) -> Result<GradientWeightStudy> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    cfg.validate_trace()?;
    cfg.validate_snapshots()?;
    let beta = cfg.trace_beta;
    let pairs = population_of(&p);
    let pt = PairTensors::new(&p, &pairs);
    let star = p.optimal_logp(beta);
    let star_w = weights_at(&star, &pt, beta)?;
    let optimal_mean_weight = split_means(&star_w, &pairs, &p.r)?;
    let mut out = GradientWeightStudy {
        beta,
        lr: cfg.trace_lr,
        steps: vec![],
        loss: vec![],
        mean_weight: vec![],
        mean_weight_agreeing: vec![],
        mean_weight_contradicting: vec![],
        tv_to_optimal: vec![],
        optimal_mean_weight,
        snapshots: vec![],
    };
    let mut theta = p.ref_logits.copy();
    for step in 0..=cfg.trace_steps {
        let th = theta.detach().copy().set_requires_grad(true);
        let loss = weighted_dpo_loss(&th, &pt, beta)?;
        let g = gradient_of(&loss, &th)?;
        if step % cfg.trace_log_every == 0 || step == cfg.trace_steps {
            let w = weights_at(&theta, &pt, beta)?;
            let [m, ma, mc] = split_means(&w, &pairs, &p.r)?;
            out.steps.push(step);
            out.loss.push(sc(&loss)?);
            out.mean_weight.push(m);
            out.mean_weight_agreeing.push(ma);
            out.mean_weight_contradicting.push(mc);
            out.tv_to_optimal
                .push(tv(&theta.log_softmax(0, KD), &star)?);
        }
        if cfg.weight_snapshot_steps.contains(&step) {
            out.snapshots
                .push(snapshot(&p, &pairs, &pt, &theta, &g, step, beta)?);
        }
        theta = theta.detach() - g * cfg.trace_lr;
    }
    Ok(out)
}

fn snapshot(
    p: &Problem,
    pairs: &PairSet,
    pt: &PairTensors,
    theta: &Tensor,
    dpo_grad: &Tensor,
    step: usize,
    beta: f64,
) -> Result<WeightSnapshot> {
    let logp = theta.log_softmax(0, KD);
    let w = weights_at(theta, pt, beta)?;
    // ∇ Σ_b w_b·stopgrad(σ_b)·ℓ_naive,b must equal ∇ Σ_b w_b·ℓ_DPO,b.
    let th = theta.detach().copy().set_requires_grad(true);
    let lp = th.log_softmax(0, KD);
    let (pc, pl) = pt.policy_logps(&lp);
    let naive = naive_ratio_losses(&pair_logps(&pc, &pl, pt), beta)?;
    let weighted = (naive * &pt.weights * &w).sum(KD);
    let g_naive = gradient_of(&weighted, &th)?;
    let implicit = (&logp - &p.ref_logp) * beta;
    let rh = vec1(&implicit)?;
    let wv = vec1(&w)?;
    let rows = (0..pairs.len())
        .map(|k| {
            let (i, j) = (pairs.chosen[k] as usize, pairs.rejected[k] as usize);
            PairWeight {
                chosen: i,
                rejected: j,
                pair_prob: pairs.weights[k],
                true_margin: p.r[i] - p.r[j],
                implicit_margin: rh[i] - rh[j],
                weight: wv[k],
            }
        })
        .collect();
    Ok(WeightSnapshot {
        step,
        policy: vec1(&logp.exp())?,
        implicit_reward: rh,
        pairs: rows,
        gradient_identity_error: sc(&(dpo_grad - g_naive).abs().max())?,
    })
}

// ---------------------------------------------------------------------------------------------------
// Study 5: DPO versus the naive, Unlikelihood and Preferred-FT objectives
// ---------------------------------------------------------------------------------------------------

/// The training objectives compared in [`objective_comparison`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Sigmoid DPO (DPO eq. 7), [`crate::core::dpo::dpo_loss`].
    Dpo,
    /// DPO without its weight: `−β·h` ([`naive_ratio_losses`]).
    Naive,
    /// `−log π(y_w) − α·log(1 − π(y_l))`, [`crate::core::dpo::unlikelihood_loss`].
    Unlikelihood,
    /// `−log π(y_w)`, [`crate::core::dpo::preferred_ft_loss`].
    PreferredFt,
}

impl Objective {
    /// All four, in display order.
    pub const ALL: [Objective; 4] = [
        Objective::Dpo,
        Objective::Naive,
        Objective::Unlikelihood,
        Objective::PreferredFt,
    ];

    /// A short display name.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Dpo => "DPO",
            Objective::Naive => "naive (unweighted)",
            Objective::Unlikelihood => "Unlikelihood",
            Objective::PreferredFt => "Preferred-FT",
        }
    }
}

/// The state of one objective's training at a logged step.
#[derive(Debug, Clone, Serialize)]
pub struct TracePoint {
    pub step: usize,
    /// The objective's own loss (mean over the dataset).
    pub loss: f64,
    /// KL(π_θ‖π_ref), the constraint of the RLHF objective (DPO eq. 3).
    pub kl_to_ref: f64,
    /// KL(π_ref‖π_θ): grows without bound once π_θ puts vanishing mass where π_ref has mass.
    pub kl_ref_to_policy: f64,
    /// E_{π_θ}[r] under the true reward.
    pub expected_reward: f64,
    /// H(π_θ) (nats), [`crate::core::logprobs::entropy`].
    pub entropy: f64,
    /// TV(π_θ, π*_β).
    pub tv_to_optimal: f64,
    /// min_y log π_θ(y).
    pub min_log_prob: f64,
    /// max_y π_θ(y).
    pub max_prob: f64,
    /// Mean over the dataset of DPO's weight σ(r̂_l − r̂_w) at the current π_θ (for the other objectives:
    /// the weight DPO would have used).
    pub mean_dpo_weight: f64,
}

/// One objective trained on the comparison dataset.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveTrace {
    pub objective: Objective,
    pub name: String,
    pub points: Vec<TracePoint>,
    /// π_θ after the last step, (V,).
    pub final_policy: Vec<f64>,
    /// argmax_y of the final policy.
    pub final_argmax: usize,
    /// The frontier's reward at the final KL(π_θ‖π_ref) ([`frontier_reward_at_kl`]).
    pub frontier_reward_at_final_kl: f64,
}

/// Output of [`objective_comparison`].
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveComparison {
    pub beta: f64,
    pub n_pairs: usize,
    pub lr: f64,
    pub steps: usize,
    /// π*_β, (V,).
    pub optimal_policy: Vec<f64>,
    /// The exact DPO minimiser on this dataset (damped Newton), (V,).
    pub dataset_dpo_policy: Vec<f64>,
    /// TV(dataset DPO minimiser, π*).
    pub dataset_dpo_tv_to_optimal: f64,
    /// Whether that minimiser exists (the dataset's win graph is strongly connected).
    pub dataset_mle_exists: bool,
    /// `(#wins(y) − #losses(y))/N`, (V,): minus the naive objective's (constant) θ-gradient over β.
    pub net_wins: Vec<f64>,
    /// Fraction of pairs in which y was chosen, (V,): Preferred-FT's minimiser.
    pub chosen_frequency: Vec<f64>,
    pub traces: Vec<ObjectiveTrace>,
}

/// Mean loss of `obj` over the dataset at θ, from the core library (except the naive loss).
fn objective_loss(
    obj: Objective,
    theta: &Tensor,
    pt: &PairTensors,
    beta: f64,
    alpha: f64,
) -> Result<Tensor> {
    let logp = theta.log_softmax(0, KD);
    let (pc, pl) = pt.policy_logps(&logp);
    match obj {
        Objective::Dpo => Ok(dpo_loss(
            &pair_logps(&pc, &pl, pt),
            &DpoConfig::new(beta, DpoVariant::Sigmoid),
        )?
        .loss),
        Objective::Naive => Ok(naive_ratio_losses(&pair_logps(&pc, &pl, pt), beta)?.mean(KD)),
        Objective::Unlikelihood => unlikelihood_loss(&pc, &pl, alpha),
        Objective::PreferredFt => preferred_ft_loss(&pc, None),
    }
}

/// Study 5 (seed 002; DPO §4 and §6): sample one dataset of `trace_pairs` labelled pairs; train DPO, the
/// naive unweighted objective, Unlikelihood and Preferred-FT on it with the same full-batch gradient
/// descent (`trace_lr`, `trace_steps`, from θ = ref_logits) and record exact metrics of π_θ.
pub fn objective_comparison(cfg: &CategoricalDpoConfig) -> Result<ObjectiveComparison> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    cfg.validate_trace()?;
    cfg.validate_newton()?;
    check::at_least("trace_pairs", cfg.trace_pairs as i64, 2 as i64)?;
    check::in_unit_interval("unlikelihood_alpha", cfg.unlikelihood_alpha)?;
    let beta = cfg.trace_beta;
    let alpha = cfg.unlikelihood_alpha;
    let raw = sample_pairs(&p, cfg.trace_pairs)?;
    let pt = PairTensors::new(&p, &raw);
    let (counts, agg) = aggregate(&p, &raw);
    let agg_t = PairTensors::new(&p, &agg);
    let star = p.optimal_logp(beta);
    let f = |th: &Tensor| weighted_dpo_loss(th, &agg_t, beta);
    let fit = newton_minimise(&f, &p.ref_logits, cfg.newton_max_iters, cfg.newton_tol)?;
    let fit_logp = fit.theta.log_softmax(0, KD);
    let n = cfg.trace_pairs as f64;
    let mut net_wins = vec![0.0; p.v];
    let mut chosen_frequency = vec![0.0; p.v];
    for (&w, &l) in raw.chosen.iter().zip(&raw.rejected) {
        net_wins[w as usize] += 1.0 / n;
        net_wins[l as usize] -= 1.0 / n;
        chosen_frequency[w as usize] += 1.0 / n;
    }
    let mut traces = Vec::new();
    for obj in Objective::ALL {
        let mut theta = p.ref_logits.copy();
        let mut points = Vec::new();
        for step in 0..=cfg.trace_steps {
            let th = theta.detach().copy().set_requires_grad(true);
            let loss = objective_loss(obj, &th, &pt, beta, alpha)?;
            let g = gradient_of(&loss, &th)?;
            if step % cfg.trace_log_every == 0 || step == cfg.trace_steps {
                let logp = theta.log_softmax(0, KD);
                points.push(TracePoint {
                    step,
                    loss: sc(&loss)?,
                    kl_to_ref: kl(&logp, &p.ref_logp)?,
                    kl_ref_to_policy: kl(&p.ref_logp, &logp)?,
                    expected_reward: sc(&(logp.exp() * &p.rewards).sum(KD))?,
                    entropy: entropy_of(&logp)?,
                    tv_to_optimal: tv(&logp, &star)?,
                    min_log_prob: sc(&logp.min())?,
                    max_prob: sc(&logp.exp().max())?,
                    mean_dpo_weight: sc(&weights_at(&theta, &pt, beta)?.mean(KD))?,
                });
            }
            if step < cfg.trace_steps {
                theta = theta.detach() - g * cfg.trace_lr;
            }
        }
        let final_logp = theta.log_softmax(0, KD);
        let final_policy = vec1(&final_logp.exp())?;
        let final_argmax = argmax(&final_policy);
        let final_kl = kl(&final_logp, &p.ref_logp)?;
        traces.push(ObjectiveTrace {
            objective: obj,
            name: obj.name().into(),
            points,
            final_policy,
            final_argmax,
            frontier_reward_at_final_kl: frontier_reward_at_kl(cfg, final_kl)?,
        });
    }
    Ok(ObjectiveComparison {
        beta,
        n_pairs: cfg.trace_pairs,
        lr: cfg.trace_lr,
        steps: cfg.trace_steps,
        optimal_policy: vec1(&star.exp())?,
        dataset_dpo_policy: vec1(&fit_logp.exp())?,
        dataset_dpo_tv_to_optimal: tv(&fit_logp, &star)?,
        dataset_mle_exists: mle_exists(&counts),
        net_wins,
        chosen_frequency,
        traces,
    })
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------------
// The reward–KL frontier
// ---------------------------------------------------------------------------------------------------

/// One point of the frontier.
#[derive(Debug, Clone, Serialize)]
pub struct FrontierPoint {
    pub beta: f64,
    /// KL(π*_β‖π_ref).
    pub kl_to_ref: f64,
    /// E_{π*_β}[r].
    pub expected_reward: f64,
    /// J(π*_β) = β·log Z(β).
    pub objective: f64,
}

/// Output of [`frontier_study`].
#[derive(Debug, Clone, Serialize)]
pub struct FrontierStudy {
    pub points: Vec<FrontierPoint>,
    /// `sup_π KL(π‖π_ref)` over policies reachable as β → 0: `−log π_ref(argmax r)`.
    pub kl_limit: f64,
    /// `max_y r(y)`, the reward as β → 0.
    pub reward_limit: f64,
    /// E_{π_ref}[r], the reward as β → ∞.
    pub ref_reward: f64,
}

/// The reward–KL frontier `β ↦ (KL(π*_β‖π_ref), E_{π*_β}[r])` over `cfg.frontier_betas` (DPO §6.1,
/// Fig. 2 left; seed 002 "奖励 KL 边界"). Each π*_β maximises E_π[r] among all π with
/// `KL(π‖π_ref) ≤ KL(π*_β‖π_ref)`, so no policy lies above the curve.
pub fn frontier_study(cfg: &CategoricalDpoConfig) -> Result<FrontierStudy> {
    tch::manual_seed(cfg.seed);
    let p = Problem::new(cfg)?;
    positive_list("frontier_betas", &cfg.frontier_betas)?;
    let mut points = Vec::new();
    for &beta in &cfg.frontier_betas {
        let star = p.optimal_logp(beta);
        points.push(FrontierPoint {
            beta,
            kl_to_ref: kl(&star, &p.ref_logp)?,
            expected_reward: sc(&(star.exp() * &p.rewards).sum(KD))?,
            objective: beta * p.log_partition(beta)?,
        });
    }
    let (kl_limit, reward_limit) = frontier_limits(&p);
    Ok(FrontierStudy {
        points,
        kl_limit,
        reward_limit,
        ref_reward: sc(&(p.ref_logp.exp() * &p.rewards).sum(KD))?,
    })
}

/// `(KL, reward)` of the β → 0 limit: π_ref restricted to the argmax set of r.
fn frontier_limits(p: &Problem) -> (f64, f64) {
    let rmax = p.r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mass: f64 =
        p.r.iter()
            .zip(&p.ref_probs)
            .filter(|(&r, _)| r == rmax)
            .map(|(_, &q)| q)
            .sum();
    (-mass.ln(), rmax)
}

/// The largest expected reward any policy can reach with `KL(π‖π_ref) ≤ kl`: `E_{π*_β}[r]` at the β
/// with `KL(π*_β‖π_ref) = kl` (bisection on log β; KL(π*_β‖π_ref) decreases in β). Clamped to
/// `E_{π_ref}[r]` for `kl ≤ 0` and to `max r` beyond the β → 0 limit.
pub fn frontier_reward_at_kl(cfg: &CategoricalDpoConfig, kl_target: f64) -> Result<f64> {
    let p = Problem::new(cfg)?;
    check::finite_scalar("kl", kl_target)?;
    let reward_at = |beta: f64| -> Result<(f64, f64)> {
        let star = p.optimal_logp(beta);
        Ok((
            kl(&star, &p.ref_logp)?,
            sc(&(star.exp() * &p.rewards).sum(KD))?,
        ))
    };
    let (kl_limit, reward_limit) = frontier_limits(&p);
    if kl_target <= 0.0 {
        return sc(&(p.ref_logp.exp() * &p.rewards).sum(KD));
    }
    if kl_target >= kl_limit {
        return Ok(reward_limit);
    }
    let (mut lo, mut hi) = ((1e-6f64).ln(), (1e6f64).ln());
    if reward_at(lo.exp())?.0 < kl_target {
        return Ok(reward_limit);
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if reward_at(mid.exp())?.0 > kl_target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 {
            break;
        }
    }
    Ok(reward_at((0.5 * (lo + hi)).exp())?.1)
}
