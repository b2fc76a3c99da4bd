//! Returns and advantages: discounted Monte-Carlo returns, TD(0) errors/targets, GAE(γ, λ).
//!
//! All three are the suffix recurrence `x_t = b_t + a_t · x_{t+1}`, `x_T = 0` (the episode ends after the
//! last step: no bootstrap value, as in every RLHF stack). Each has a reference loop over time (CleanRL /
//! DeepSpeed-Chat style, `lastgaelam`) and a vectorised version (a log₂T-step Hillis–Steele scan of affine
//! maps, numerically stable because every coefficient is in [0, 1]); tests assert they agree.
//!
//! Masked steps (padding, tool/observation tokens) enter in one of two ways ([`MaskedSteps`]):
//! * `Zero` — rewards and values are set to 0 there and time still advances (DeepSpeed-Chat zeroes
//!   `old_rewards/old_values` after `ends`; TRL `masked_fill(values, padding_mask_p1, 0)`; OpenRLHF
//!   `values = action_mask * values`). For trailing padding this equals ending the episode.
//! * `Skip` — masked steps are transparent: the GAE accumulator and the next value carry across them
//!   (verl `compute_gae_advantage_return` with `response_mask`, multi-turn).
//!
//! Outputs are 0 at masked positions. Sources: seed 001 §3.2.4 (MC returns, δ, `A_t = δ_t + γλA_{t+1}`,
//! `returns = A + V`); seed 003 (three value labels: MC, TD, GAE + V); Schulman et al. 2016 eq. 16.

use crate::core::check;
use crate::core::masked::zero_masked;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How masked steps enter returns and GAE (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskedSteps {
    Zero,
    Skip,
}

/// Hyper-parameters of GAE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaeConfig {
    pub gamma: f64,
    pub lam: f64,
    pub masked_steps: MaskedSteps,
}

/// Advantages and returns, both (B, T), 0 at masked positions.
#[derive(Debug)]
pub struct AdvantagesReturns {
    pub advantages: Tensor,
    pub returns: Tensor,
}

/// Validated (B, T) rewards/values/mask, with bool mask.
struct Inputs {
    rewards: Tensor,
    values: Option<Tensor>,
    mask: Tensor,
}

fn validate(
    rewards: &Tensor,
    values: Option<&Tensor>,
    mask: &Tensor,
    gamma: f64,
    lam: Option<f64>,
) -> Result<Inputs> {
    check::in_unit_interval("gamma", gamma)?;
    if let Some(l) = lam {
        check::in_unit_interval("lam", l)?;
    }
    check::float("rewards", rewards)?;
    check::ndim("rewards", rewards, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "rewards", rewards)?;
    check::finite_where("rewards", rewards, &m)?;
    let values = match values {
        Some(v) => {
            check::masked_values("values", v, "mask", mask)?;
            Some(zero_masked(&v.to_kind(rewards.kind()), &m))
        }
        None => None,
    };
    Ok(Inputs {
        rewards: zero_masked(rewards, &m),
        values,
        mask: m,
    })
}

/// Shift left along time by one, filling the end with 0: `out[:, t] = x[:, t+1]`.
fn next_step(x: &Tensor) -> Tensor {
    let t = x.size()[1];
    if t == 0 {
        return x.shallow_clone();
    }
    x.narrow(1, 1, t - 1).constant_pad_nd([0i64, 1])
}

/// Vectorised suffix scan of `x_t = b_t + a_t x_{t+1}`, `x_T = 0`, along dim 1.
/// Hillis–Steele doubling: after the step with span k, `x_t` holds the recurrence unrolled 2k steps.
pub(crate) fn suffix_scan(a: &Tensor, b: &Tensor) -> Tensor {
    let t = b.size()[1];
    let (mut a, mut x) = (a.shallow_clone(), b.shallow_clone());
    let mut k = 1i64;
    while k < t {
        let x_next = x.narrow(1, k, t - k).constant_pad_nd([0i64, k]);
        let a_next = a.narrow(1, k, t - k).constant_pad_nd([0i64, k]);
        x = &x + &a * x_next;
        a = &a * a_next;
        k *= 2;
    }
    x
}

/// Reference loop for the same recurrence (one batched op per time step).
pub(crate) fn suffix_loop(a: &Tensor, b: &Tensor) -> Tensor {
    let t = b.size()[1];
    if t == 0 {
        return b.zeros_like();
    }
    let mut carry = b.select(1, t - 1).zeros_like();
    let mut out = Vec::with_capacity(t as usize);
    for i in (0..t).rev() {
        carry = b.select(1, i) + a.select(1, i) * &carry;
        out.push(carry.shallow_clone());
    }
    out.reverse();
    Tensor::stack(&out, 1)
}

/// `V(s_{t+1})` as seen from step t: the next step's value (`Zero`), or the value at the next unmasked
/// step (`Skip`); 0 after the last step.
fn next_values(values: &Tensor, m: &Tensor, mode: MaskedSteps, vectorised: bool) -> Tensor {
    match mode {
        MaskedSteps::Zero => next_step(values),
        MaskedSteps::Skip => {
            // n_t = m_{t+1} V_{t+1} + (1 − m_{t+1}) n_{t+1}
            let mf = m.to_kind(values.kind());
            let a = next_step(&(1.0 - &mf));
            let b = next_step(&(values * &mf));
            if vectorised {
                suffix_scan(&a, &b)
            } else {
                suffix_loop(&a, &b)
            }
        }
    }
}

/// Per-step coefficient of the recurrence: `c` on unmasked steps; on masked steps `c` (`Zero`) or 1
/// (`Skip`: the accumulator passes through unchanged).
fn coefficients(m: &Tensor, mode: MaskedSteps, c: f64, kind: Kind) -> Tensor {
    let mf = m.to_kind(kind);
    match mode {
        MaskedSteps::Zero => mf.ones_like() * c,
        MaskedSteps::Skip => &mf * c + (1.0 - &mf),
    }
}

fn scan(a: &Tensor, b: &Tensor, vectorised: bool) -> Tensor {
    if vectorised {
        suffix_scan(a, b)
    } else {
        suffix_loop(a, b)
    }
}

fn returns_impl(
    rewards: &Tensor,
    mask: &Tensor,
    gamma: f64,
    mode: MaskedSteps,
    vectorised: bool,
) -> Result<Tensor> {
    let x = validate(rewards, None, mask, gamma, None)?;
    let a = coefficients(&x.mask, mode, gamma, x.rewards.kind());
    let returns = zero_masked(&scan(&a, &x.rewards, vectorised), &x.mask);
    check::finite_output("returns", &returns)?;
    Ok(returns)
}

/// Discounted Monte-Carlo returns (rewards-to-go) `G_t = r_t + γ G_{t+1}` (seed 001 §3.2.4 first method;
/// seed 003 value label 1). Shapes (B, T) → (B, T). Vectorised.
pub fn discounted_returns(
    rewards: &Tensor,
    mask: &Tensor,
    gamma: f64,
    mode: MaskedSteps,
) -> Result<Tensor> {
    returns_impl(rewards, mask, gamma, mode, true)
}

/// Reference loop of [`discounted_returns`].
pub fn discounted_returns_loop(
    rewards: &Tensor,
    mask: &Tensor,
    gamma: f64,
    mode: MaskedSteps,
) -> Result<Tensor> {
    returns_impl(rewards, mask, gamma, mode, false)
}

/// TD(0) errors and targets.
#[derive(Debug)]
pub struct TdOutput {
    /// `δ_t = r_t + γ V(s_{t+1}) − V(s_t)` (seed 001 §3.2.4 "TD误差").
    pub deltas: Tensor,
    /// `r_t + γ V(s_{t+1})` (seed 003 value label 2).
    pub targets: Tensor,
}

/// TD(0) errors and targets; `V(s_{T+1}) = 0`. Shapes (B, T) → (B, T).
pub fn td(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f64,
    mode: MaskedSteps,
) -> Result<TdOutput> {
    let x = validate(rewards, Some(values), mask, gamma, None)?;
    let v = x.values.unwrap();
    let targets = &x.rewards + next_values(&v, &x.mask, mode, true) * gamma;
    let deltas = &targets - &v;
    let out = TdOutput {
        deltas: zero_masked(&deltas, &x.mask),
        targets: zero_masked(&targets, &x.mask),
    };
    check::finite_output("targets", &out.targets)?;
    check::finite_output("deltas", &out.deltas)?;
    Ok(out)
}

fn gae_impl(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    cfg: &GaeConfig,
    vectorised: bool,
) -> Result<AdvantagesReturns> {
    let x = validate(rewards, Some(values), mask, cfg.gamma, Some(cfg.lam))?;
    let v = x.values.unwrap();
    let deltas =
        &x.rewards + next_values(&v, &x.mask, cfg.masked_steps, vectorised) * cfg.gamma - &v;
    let b = match cfg.masked_steps {
        // Zero mode keeps δ at masked steps (r = V = 0 there, so δ_t = γ V_{t+1}: the DeepSpeed-Chat /
        // TRL computation over the whole padded row).
        MaskedSteps::Zero => deltas,
        MaskedSteps::Skip => zero_masked(&deltas, &x.mask),
    };
    let a = coefficients(&x.mask, cfg.masked_steps, cfg.gamma * cfg.lam, v.kind());
    let adv = zero_masked(&scan(&a, &b, vectorised), &x.mask);
    let returns = zero_masked(&(&adv + &v), &x.mask);
    check::finite_output("advantages", &adv)?;
    check::finite_output("returns", &returns)?;
    Ok(AdvantagesReturns {
        advantages: adv,
        returns,
    })
}

/// GAE(γ, λ) advantages `A_t = Σ_l (γλ)^l δ_{t+l}` and returns `A + V` (Schulman et al. 2016 eq. 16;
/// seed 001 §3.2.4; seed 003; DeepSpeed-Chat `get_advantages_and_returns`, TRL, OpenRLHF, verl
/// `compute_gae_advantage_return`). Shapes: `rewards`, `values`, `mask` (B, T) → (B, T) each.
/// CPU f32/f64 tensors that need no gradient (the RLHF case: advantages are computed on detached
/// rollout data) take one native pass over contiguous memory ([`gae_native`], the loop's arithmetic in
/// the loop's order); anything else — an accelerator, or inputs that require grad — the differentiable
/// log₂T scan ([`gae_scan`]).
pub fn gae(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    cfg: &GaeConfig,
) -> Result<AdvantagesReturns> {
    let native = rewards.device() == tch::Device::Cpu
        && values.device() == tch::Device::Cpu
        && matches!(rewards.kind(), Kind::Float | Kind::Double)
        && !rewards.requires_grad()
        && !values.requires_grad();
    if native {
        gae_native(rewards, values, mask, cfg)
    } else {
        gae_impl(rewards, values, mask, cfg, true)
    }
}

/// [`gae`] as the vectorised log₂T scan of batched tensor ops, on any device (what [`gae`] runs on an
/// accelerator).
pub fn gae_scan(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    cfg: &GaeConfig,
) -> Result<AdvantagesReturns> {
    gae_impl(rewards, values, mask, cfg, true)
}

/// [`gae`] as one pass per row over contiguous host memory: per step the same operations, in the same
/// order and precision, as [`gae_loop`] (`δ_t = (r_t + γ·n_t) − V_t`, `lastgaelam = δ_t + γλ·lastgaelam`),
/// so its results equal the loop's bit for bit. Inputs are validated as in [`gae_loop`]; `rewards`
/// must be f32 or f64 (values are cast to its kind). Runs on the host; the results go back to
/// `rewards`' device. Not differentiable: the outputs carry no gradient (use [`gae_scan`] or
/// [`gae_loop`] for that).
pub fn gae_native(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    cfg: &GaeConfig,
) -> Result<AdvantagesReturns> {
    for (name, z) in [("rewards", rewards), ("values", values)] {
        if z.requires_grad() {
            return Err(crate::error::RlhfError::invalid(
                name,
                "requires grad, and gae_native is not differentiable (use gae_scan or gae_loop)",
            ));
        }
    }
    // The checks of `validate`, in its order; the finiteness checks and the zeroing of masked steps
    // happen in the host pass itself (each a separate pass over the tensor in `validate`).
    check::in_unit_interval("gamma", cfg.gamma)?;
    check::in_unit_interval("lam", cfg.lam)?;
    check::float("rewards", rewards)?;
    check::ndim("rewards", rewards, 2, "(B, T)")?;
    let m = check::mask("mask", mask, "rewards", rewards)?;
    let (b, t) = (rewards.size()[0], rewards.size()[1]);
    let host = |z: &Tensor| z.to_device(tch::Device::Cpu).contiguous().view([-1]);
    let m = Vec::<bool>::try_from(&host(&m))?;
    let device = rewards.device();
    let kind = rewards.kind();
    let values_checked = || -> Result<Tensor> {
        check::float("values", values)?;
        check::same_shape("mask", mask, "values", values)?;
        Ok(host(&values.to_kind(kind)))
    };
    let (adv, ret) = match kind {
        Kind::Double => {
            let r = masked_host::<f64>(&Vec::try_from(&host(rewards))?, &m, "rewards")?;
            let v = masked_host::<f64>(&Vec::try_from(&values_checked()?)?, &m, "values")?;
            let (a, rt) = gae_rows(
                &r,
                &v,
                &m,
                t as usize,
                cfg.gamma,
                cfg.gamma * cfg.lam,
                cfg.masked_steps,
            );
            finite_outputs(&a, &rt)?;
            (Tensor::from_slice(&a), Tensor::from_slice(&rt))
        }
        Kind::Float => {
            // libtorch computes `f32 tensor · f64 scalar` in f32 with the scalar rounded to f32.
            let r = masked_host::<f32>(&Vec::try_from(&host(rewards))?, &m, "rewards")?;
            let v = masked_host::<f32>(&Vec::try_from(&values_checked()?)?, &m, "values")?;
            let (gamma, gl) = (cfg.gamma as f32, (cfg.gamma * cfg.lam) as f32);
            let (a, rt) = gae_rows(&r, &v, &m, t as usize, gamma, gl, cfg.masked_steps);
            finite_outputs(&a, &rt)?;
            (Tensor::from_slice(&a), Tensor::from_slice(&rt))
        }
        other => {
            return Err(crate::error::RlhfError::invalid(
                "rewards",
                format!("the native GAE needs f32 or f64, got {other:?} (use gae_scan)"),
            ))
        }
    };
    Ok(AdvantagesReturns {
        advantages: adv.view([b, t]).to_device(device),
        returns: ret.view([b, t]).to_device(device),
    })
}

/// `x` with masked entries set to 0, after counting the non-finite unmasked ones
/// ([`check::finite_where`]'s error).
fn masked_host<F: Copy + Default + IsFinite>(x: &[F], m: &[bool], arg: &str) -> Result<Vec<F>> {
    let bad = x.iter().zip(m).filter(|(v, &k)| k && !v.finite()).count();
    if bad > 0 {
        return Err(crate::error::RlhfError::NonFinite {
            arg: arg.into(),
            count: bad as i64,
        });
    }
    Ok(x.iter()
        .zip(m)
        .map(|(&v, &k)| if k { v } else { F::default() })
        .collect())
}

/// [`check::finite_output`] of both outputs, on host slices.
fn finite_outputs<F: IsFinite>(adv: &[F], ret: &[F]) -> Result<()> {
    for (name, xs) in [("advantages", adv), ("returns", ret)] {
        let bad = xs.iter().filter(|x| !x.finite()).count();
        if bad > 0 {
            return Err(crate::error::RlhfError::NonFiniteOutput {
                arg: name.into(),
                count: bad as i64,
            });
        }
    }
    Ok(())
}

trait IsFinite {
    fn finite(&self) -> bool;
}
impl IsFinite for f32 {
    fn finite(&self) -> bool {
        self.is_finite()
    }
}
impl IsFinite for f64 {
    fn finite(&self) -> bool {
        self.is_finite()
    }
}

/// The GAE recurrence over row-major `(B, T)` rewards and values (already 0 at masked steps) with a
/// bool mask: `(advantages, returns)`, 0 at masked steps. `gl` = γλ.
fn gae_rows<F>(
    r: &[F],
    v: &[F],
    m: &[bool],
    t: usize,
    gamma: F,
    gl: F,
    mode: MaskedSteps,
) -> (Vec<F>, Vec<F>)
where
    F: Copy
        + Default
        + std::ops::Add<Output = F>
        + std::ops::Sub<Output = F>
        + std::ops::Mul<Output = F>,
{
    let zero = F::default();
    let (mut adv, mut ret) = (vec![zero; r.len()], vec![zero; r.len()]);
    if t == 0 {
        return (adv, ret);
    }
    for (row, ((r, v), m)) in r.chunks(t).zip(v.chunks(t)).zip(m.chunks(t)).enumerate() {
        let (adv, ret) = (
            &mut adv[row * t..(row + 1) * t],
            &mut ret[row * t..(row + 1) * t],
        );
        let mut lastgaelam = zero;
        match mode {
            MaskedSteps::Zero => {
                // Time advances through masked steps, where r = V = 0.
                for i in (0..t).rev() {
                    let next_value = if i + 1 < t { v[i + 1] } else { zero };
                    let delta = (r[i] + next_value * gamma) - v[i];
                    lastgaelam = delta + gl * lastgaelam;
                    if m[i] {
                        adv[i] = lastgaelam;
                        ret[i] = lastgaelam + v[i];
                    }
                }
            }
            MaskedSteps::Skip => {
                // Masked steps are transparent: V(s_{t+1}) is the value at the next unmasked step.
                let mut next_value = zero;
                for i in (0..t).rev() {
                    if m[i] {
                        let delta = (r[i] + next_value * gamma) - v[i];
                        lastgaelam = delta + gl * lastgaelam;
                        adv[i] = lastgaelam;
                        ret[i] = lastgaelam + v[i];
                        next_value = v[i];
                    }
                }
            }
        }
    }
    (adv, ret)
}

/// Reference loop of [`gae`]: `lastgaelam = δ_t + γλ·lastgaelam`, walking t backwards.
pub fn gae_loop(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    cfg: &GaeConfig,
) -> Result<AdvantagesReturns> {
    gae_impl(rewards, values, mask, cfg, false)
}

/// Options of [`grpo_advantages`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// Divide by the group standard deviation (GRPO); false gives Dr. GRPO's mean-only baseline.
    pub scale_by_std: bool,
    /// Bessel-corrected group std (`torch.std` default, used by TRL and verl).
    pub unbiased_std: bool,
    /// Added to the std in the denominator (verl 1e-6, TRL 1e-4).
    pub eps: f64,
    /// Groups of one response: error (rlhf-lab default) or verl's rule: mean = `torch.tensor(0.0)`,
    /// std = `torch.tensor(1.0)`, both float32, so the score is divided by the float32 value of `1 + ε`
    /// (1.00000095367431640625 for ε = 1e-6, a relative 4.6e-8 from the f64 `1 + ε`) when `scale_by_std`,
    /// and left as it is otherwise.
    pub singleton_as_unit: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            scale_by_std: true,
            unbiased_std: true,
            eps: 1e-6,
            singleton_as_unit: false,
        }
    }
}

fn check_groups(scores: &Tensor, min_k: i64, singleton_ok: bool) -> Result<(i64, i64)> {
    check::float("scores", scores)?;
    check::ndim(
        "scores",
        scores,
        2,
        "(G, K): G prompts × K sampled responses each",
    )?;
    check::finite("scores", scores)?;
    let (g, k) = scores.size2()?;
    if k < min_k && !(singleton_ok && k == 1) {
        return Err(crate::error::RlhfError::invalid(
            "scores",
            format!("a group baseline needs at least {min_k} responses per prompt, got K = {k}"),
        ));
    }
    Ok((g, k))
}

/// GRPO outcome advantages: `A_{g,i} = (r_{g,i} − mean_g) / (std_g + ε)` (Shao et al. 2024 §4.1.2;
/// verl `compute_grpo_outcome_advantage`, TRL `GRPOTrainer`); without `scale_by_std`, `r − mean_g`
/// (Dr. GRPO, verl `norm_adv_by_std_in_grpo = False`). Groups of one: [`GrpoConfig::singleton_as_unit`].
/// Shapes (G, K) → (G, K). Broadcast to tokens with [`broadcast_to_tokens`].
pub fn grpo_advantages(scores: &Tensor, cfg: &GrpoConfig) -> Result<Tensor> {
    check::non_negative("eps", cfg.eps)?;
    let (_, k) = check_groups(scores, 2, cfg.singleton_as_unit)?;
    let a = if k == 1 {
        // verl: `(score − tensor(0.0)) / (tensor(1.0) + ε)`, the divisor computed in float32.
        if cfg.scale_by_std {
            scores / ((1.0f32 + cfg.eps as f32) as f64)
        } else {
            scores.shallow_clone()
        }
    } else {
        let mean = scores.mean_dim(&[-1i64][..], true, scores.kind());
        let centered = scores - &mean;
        if cfg.scale_by_std {
            let std = scores.std_dim(&[-1i64][..], cfg.unbiased_std, true);
            centered / (std + cfg.eps)
        } else {
            centered
        }
    };
    check::finite_output("advantages", &a)?;
    Ok(a)
}

/// RLOO advantages: `A_{g,i} = r_{g,i} − mean_{j≠i} r_{g,j} = K/(K−1)·(r_{g,i} − mean_g)`
/// (Ahmadian et al. 2024 eq. 6; verl `compute_rloo_outcome_advantage`, TRL `RLOOTrainer`).
/// Shapes (G, K ≥ 2) → (G, K).
pub fn rloo_advantages(scores: &Tensor) -> Result<Tensor> {
    let (_, k) = check_groups(scores, 2, false)?;
    let total = scores.sum_dim_intlist(&[-1i64][..], true, scores.kind());
    let others_mean = (&total - scores) / (k as f64 - 1.0);
    let a = scores - others_mean;
    check::finite_output("advantages", &a)?;
    Ok(a)
}

/// Broadcast per-sequence advantages (B,) over response tokens: `A[b] · mask[b, t]` (0 where masked).
pub fn broadcast_to_tokens(advantages: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check::float("advantages", advantages)?;
    check::ndim("advantages", advantages, 1, "(B,)")?;
    check::finite("advantages", advantages)?;
    check::ndim("mask", mask, 2, "(B, T)")?;
    if mask.size()[0] != advantages.size()[0] {
        return Err(crate::error::RlhfError::shape(
            "mask",
            mask.size(),
            format!("[{}, T] (one row per advantage)", advantages.size()[0]),
        ));
    }
    let like = advantages.unsqueeze(-1).expand_as(mask).contiguous();
    let m = check::mask("mask", mask, "advantages (broadcast)", &like)?;
    Ok(zero_masked(&like, &m))
}
