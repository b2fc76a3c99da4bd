//! AdamW with explicit, saveable state, and gradient clipping by global norm.
//!
//! Written out rather than using `tch::nn::Optimizer` so that the moment estimates can be checkpointed
//! (safetensors) and restored bit-exactly, which resumable training needs, and so that the update is
//! the documented one.

use crate::error::{Result, RlhfError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Hyper-parameters of [`AdamW`] other than the learning rate, which the schedule passes to every
/// [`AdamW::step`]. Defaults are `torch.optim.AdamW`'s betas/eps with nanoGPT's weight decay 0.1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay λ, applied to the decayed parameters only (see [`AdamW::new`]).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

impl AdamWConfig {
    /// `0 ≤ β < 1`, `eps > 0`, `weight_decay ≥ 0`.
    pub fn validate(&self) -> Result<()> {
        for (arg, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(RlhfError::out_of_range(arg, b, "in [0, 1)"));
            }
        }
        crate::core::check::positive("eps", self.eps)?;
        crate::core::check::non_negative("weight_decay", self.weight_decay)
    }
}

/// One optimised tensor with its moment estimates.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    /// First moment `m` (torch `exp_avg`), same shape as `param`.
    exp_avg: Tensor,
    /// Second moment `v` (torch `exp_avg_sq`).
    exp_avg_sq: Tensor,
}

/// AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2), step for
/// step what `torch.optim.AdamW(foreach=False)` computes (`torch/optim/adam.py`
/// `_single_tensor_adam` with `decoupled_weight_decay=True`). For step `t = 1, 2, …`, gradient `g`,
/// learning rate `η_t`:
///
/// ```text
/// θ ← θ · (1 − η_t λ)                       decoupled decay (decayed tensors only)
/// m ← β1 m + (1 − β1) g                     (torch: m.lerp_(g, 1 − β1))
/// v ← β2 v + (1 − β2) g²
/// θ ← θ − (η_t / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
/// ```
///
/// Tensors whose gradient is undefined are skipped (torch skips `p.grad is None`) and their moments
/// stay put; the step counter `t` is shared (torch keeps one per tensor, equal when all receive
/// gradients every step, as in the training loops here).
///
/// **Which tensors decay.** GPT-2/nanoGPT convention (`GPT.configure_optimizers`): every tensor of
/// rank ≥ 2 (matmul weights *and* the token/position embeddings) decays; biases and LayerNorm
/// gains/biases (rank 1) do not.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: i64,
}

impl AdamW {
    /// An optimiser over every trainable variable of `vs`, in name order (so the state layout does not
    /// depend on hash-map order), with zero moments and `t = 0`.
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::from_named(named, cfg)
    }

    /// An optimiser over explicitly named tensors (leaf tensors with `requires_grad`); decay by rank.
    pub fn from_named(named: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let slots = named
            .into_iter()
            .map(|(name, param)| {
                crate::core::check::float(&name, &param)?;
                let decay = param.dim() >= 2;
                let exp_avg = tch::no_grad(|| param.zeros_like());
                let exp_avg_sq = tch::no_grad(|| param.zeros_like());
                Ok(Slot {
                    name,
                    param,
                    decay,
                    exp_avg,
                    exp_avg_sq,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far (`t` of the last update).
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Names of the decayed and of the non-decayed tensors.
    pub fn decay_groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.decay);
        (
            d.iter().map(|s| s.name.as_str()).collect(),
            n.iter().map(|s| s.name.as_str()).collect(),
        )
    }

    /// The optimised tensors (for [`clip_grad_norm`]).
    pub fn params(&self) -> Vec<&Tensor> {
        self.slots.iter().map(|s| &s.param).collect()
    }

    /// Zeroes every gradient (torch `zero_grad(set_to_none=False)`).
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One AdamW update with learning rate `lr` (see the type's documentation).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        crate::core::check::non_negative("lr", lr)?;
        self.step += 1;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - self.cfg.beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - self.cfg.beta2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        let cfg = self.cfg;
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                if s.decay && cfg.weight_decay != 0.0 {
                    let _ = s.param.f_mul_scalar_(1.0 - lr * cfg.weight_decay)?;
                }
                let _ = s.exp_avg.f_lerp_(&grad, 1.0 - cfg.beta1)?;
                let _ = s.exp_avg_sq.f_mul_scalar_(cfg.beta2)?;
                let _ = s
                    .exp_avg_sq
                    .f_addcmul_(&(&grad * (1.0 - cfg.beta2)), &grad)?;
                // The documented update with two temporaries instead of five (in place where torch's
                // `_single_tensor_adam` is): the same operations in the same order, so the same bits
                // (`in_place_update_is_bitwise_the_documented_formula`).
                let mut denom = s.exp_avg_sq.f_sqrt()?;
                let _ = denom.f_div_scalar_(bias_correction2_sqrt)?;
                let _ = denom.f_add_scalar_(cfg.eps)?;
                let mut update = s.exp_avg.f_div(&denom)?;
                let _ = update.f_mul_scalar_(step_size)?;
                let _ = s.param.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// Named state tensors: `step` (int64 scalar as shape `[1]`), `exp_avg.<name>`, `exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step]))];
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", s.name),
                s.exp_avg_sq.shallow_clone(),
            ));
        }
        out
    }

    /// Saves [`Self::state_tensors`] as safetensors (atomic).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::save_tensors(path, &self.state_tensors())
    }

    /// Restores the state saved by [`Self::save`]. Every tensor of this optimiser must be present with
    /// the same shape and dtype, else [`RlhfError::Format`] naming the file.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let map: std::collections::HashMap<String, Tensor> =
            crate::io::load_tensors(path)?.into_iter().collect();
        let get = |key: &str, like: Option<&Tensor>| -> Result<&Tensor> {
            let t = map.get(key).ok_or_else(|| {
                RlhfError::format(path, "AdamW state", format!("no tensor `{key}`"))
            })?;
            if let Some(like) = like {
                if t.size() != like.size() || t.kind() != like.kind() {
                    return Err(RlhfError::format(
                        path,
                        "AdamW state",
                        format!(
                            "`{key}` is {:?} {:?}, expected {:?} {:?}",
                            t.kind(),
                            t.size(),
                            like.kind(),
                            like.size()
                        ),
                    ));
                }
            }
            Ok(t)
        };
        let step_t = get("step", None)?;
        let step = step_t
            .f_view([-1])?
            .f_int64_value(&[0])
            .map_err(|e| RlhfError::format(path, "AdamW state", e))?;
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                let m = get(&format!("exp_avg.{}", s.name), Some(&s.exp_avg))?;
                let v = get(&format!("exp_avg_sq.{}", s.name), Some(&s.exp_avg_sq))?;
                s.exp_avg.f_copy_(m)?;
                s.exp_avg_sq.f_copy_(v)?;
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Clips gradients in place to global L2 norm `max_norm` and returns the norm before clipping —
/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` (norm_type 2): `n = ‖(‖g_i‖₂)_i‖₂`, every
/// gradient multiplied by `min(max_norm / (n + 1e-6), 1)`. Tensors without a gradient are left out.
///
/// A non-finite norm is an error ([`RlhfError::NonFinite`] on `gradients`) instead of torch's silent
/// NaN-scaling (`error_if_nonfinite=False`); gradients are untouched then.
pub fn clip_grad_norm(params: &[&Tensor], max_norm: f64) -> Result<f64> {
    crate::core::check::positive("max_norm", max_norm)?;
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let total = tch::no_grad(|| -> Result<f64> {
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Double).norm())
            .collect();
        Ok(Tensor::stack(&norms, 0).norm().f_double_value(&[])?)
    })?;
    if !total.is_finite() {
        return Err(RlhfError::NonFinite {
            arg: "gradients".into(),
            count: 1,
        });
    }
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    tch::no_grad(|| -> Result<()> {
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.f_mul_(&Tensor::from(coef).to_kind(g.kind()))?;
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t64(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.flatten(0, -1)).unwrap()
    }

    /// Golden numbers from `tests/golden/make_adamw_golden.py` (torch 2.11 `torch.optim.AdamW`,
    /// `foreach=False`, f64): three steps with lr 0.1, 0.05, 0.02; W decays (λ = 0.1), b does not.
    #[test]
    fn matches_torch_adamw() {
        let w = t64(&[0.5, -1.0, 2.0, 0.25, 0.0, -0.75], &[2, 3]).set_requires_grad(true);
        let b = t64(&[0.1, -0.2, 0.3], &[3]).set_requires_grad(true);
        let mut opt = AdamW::from_named(
            vec![
                ("W".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        )
        .unwrap();
        assert_eq!(opt.decay_groups(), (vec!["W"], vec!["b"]));
        let grads = [
            ([1.0, -2.0, 0.5, 0.0, 3.0, -1.0], [0.5, 0.5, -1.0]),
            ([-0.5, 1.0, 0.25, 2.0, -3.0, 1.0], [1.0, -0.5, 0.0]),
            ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [-2.0, 0.0, 2.0]),
        ];
        for ((gw, gb), lr) in grads.iter().zip([0.1, 0.05, 0.02]) {
            opt.zero_grad();
            let loss =
                (&w * t64(gw, &[2, 3])).sum(Kind::Double) + (&b * t64(gb, &[3])).sum(Kind::Double);
            loss.backward();
            opt.step(lr).unwrap();
        }
        let want_w = [
            0.37370833046783486,
            -0.8675267156966867,
            1.8016013950677932,
            0.19484993566902584,
            -0.09736305389327835,
            -0.6463773761274036,
        ];
        let want_b = [
            -0.04438320960990008,
            -0.2965547318638186,
            0.42670222187778767,
        ];
        for (got, want) in vals(&w)
            .iter()
            .zip(want_w)
            .chain(vals(&b).iter().zip(want_b))
        {
            assert!((got - want).abs() < 1e-14, "{got} vs torch {want}");
        }
        let want_v = [
            0.0012577510000000012,
            0.005031004000000005,
            0.00040193775000000036,
            0.004156000000000004,
            0.018223009000000016,
            0.002357001000000002,
        ];
        for (got, want) in vals(&opt.slots[0].exp_avg_sq).iter().zip(want_v) {
            assert!((got - want).abs() < 1e-16, "{got} vs torch {want}");
        }
        assert_eq!(opt.step_count(), 3);
    }

    /// The in-place step equals the formula written out with fresh tensors (the previous code), bit
    /// for bit, in f32 and f64, over several steps with decay on and off.
    #[test]
    fn in_place_update_is_bitwise_the_documented_formula() {
        for kind in [Kind::Float, Kind::Double] {
            tch::manual_seed(3);
            let p0 = Tensor::randn([7, 5], (kind, tch::Device::Cpu));
            let w = p0.copy().set_requires_grad(true);
            let cfg = AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
            };
            let mut opt = AdamW::from_named(vec![("W".into(), w.shallow_clone())], cfg).unwrap();
            let (mut p, mut m, mut v) = (p0.copy(), p0.zeros_like(), p0.zeros_like());
            for (t, lr) in [3e-3, 1e-3, 5e-4, 2e-3].into_iter().enumerate() {
                let g = Tensor::randn([7, 5], (kind, tch::Device::Cpu));
                opt.zero_grad();
                (&w * &g).sum(kind).backward();
                opt.step(lr).unwrap();
                // The formula with fresh tensors everywhere.
                let t = (t + 1) as f64;
                p = &p * (1.0 - lr * cfg.weight_decay);
                m = m.lerp(&g, 1.0 - cfg.beta1);
                v = (&v * cfg.beta2).addcmul(&(&g * (1.0 - cfg.beta2)), &g);
                let denom = (v.sqrt() / (1.0 - cfg.beta2.powf(t)).sqrt()) + cfg.eps;
                p = &p - m.f_div(&denom).unwrap() * (lr / (1.0 - cfg.beta1.powf(t)));
                let same = w.detach().eq_tensor(&p).all().int64_value(&[]);
                assert_eq!(same, 1, "{kind:?} step {t}: not bit-identical");
            }
        }
    }

    #[test]
    fn state_round_trip() {
        let w = t64(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).set_requires_grad(true);
        let mut opt = AdamW::from_named(
            vec![("w".into(), w.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        (&w * &w).sum(Kind::Double).backward();
        opt.step(0.01).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.safetensors");
        opt.save(&path).unwrap();
        let w2 = w.detach().copy().set_requires_grad(true);
        let mut opt2 = AdamW::from_named(
            vec![("w".into(), w2.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        opt2.load(&path).unwrap();
        assert_eq!(opt2.step_count(), 1);
        assert!(opt2.slots[0].exp_avg.equal(&opt.slots[0].exp_avg));
        assert!(opt2.slots[0].exp_avg_sq.equal(&opt.slots[0].exp_avg_sq));
        // A state for another parameter set is refused with the file named.
        let other = t64(&[1.0, 2.0], &[2]).set_requires_grad(true);
        let mut opt3 =
            AdamW::from_named(vec![("w".into(), other)], AdamWConfig::default()).unwrap();
        let err = opt3.load(&path).unwrap_err();
        assert!(matches!(err, RlhfError::Format { .. }), "{err}");
    }

    /// torch: grads (3, 4) and (12,) have global norm 13; max_norm 6.5 scales them by 6.5/(13 + 1e-6).
    #[test]
    fn clip_matches_torch() {
        let p1 = Tensor::zeros([2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let p2 = Tensor::zeros([1], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        ((&p1 * t64(&[3.0, 4.0], &[2])).sum(Kind::Double) + (&p2 * 12.0).sum(Kind::Double))
            .backward();
        let n = clip_grad_norm(&[&p1, &p2], 6.5).unwrap();
        assert_eq!(n, 13.0);
        let g1 = vals(&p1.grad());
        let g2 = vals(&p2.grad());
        assert!((g1[0] - 1.4999998846153937).abs() < 1e-15);
        assert!((g1[1] - 1.9999998461538582).abs() < 1e-15);
        assert!((g2[0] - 5.999999538461575).abs() < 1e-15);
        // Below the threshold nothing changes.
        let n2 = clip_grad_norm(&[&p1, &p2], 100.0).unwrap();
        assert!((n2 - 6.5).abs() < 1e-6);
        assert!((vals(&p2.grad())[0] - 5.999999538461575).abs() < 1e-15);
    }

    #[test]
    fn rejects_bad_hyper_parameters() {
        let w = t64(&[1.0], &[1]).set_requires_grad(true);
        let bad = AdamWConfig {
            beta1: 1.0,
            ..AdamWConfig::default()
        };
        assert!(AdamW::from_named(vec![("w".into(), w)], bad).is_err());
    }
}
