//! CUDA parity: every primitive on the GPU equals the CPU result. Compiled only with `--features cuda`
//! (which links libtorch_cuda explicitly); then a missing GPU is a failure, not a skip.
//! Run on a lent GPU machine: build here with `cargo test --release --features cuda --no-run`, carry the
//! test binary, run it there with LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib.
#![cfg(feature = "cuda")]

mod common;
use common::*;
use rlhf_lab::advantages::*;
use rlhf_lab::conventions::{Conventions, PRESETS};
use rlhf_lab::dpo::*;
use rlhf_lab::experience::ppo_experience;
use rlhf_lab::logprobs::*;
use rlhf_lab::ppo::*;
use rlhf_lab::reward_model::*;
use tch::{Device, Kind, Tensor};

#[test]
fn cuda_is_visible() {
    assert!(
        tch::Cuda::is_available(),
        "built with --features cuda but no CUDA device is visible"
    );
}

#[test]
fn gpu_equals_cpu() {
    let gpu = Device::Cuda(0);
    tch::manual_seed(0);
    for kind in [Kind::Float, Kind::Double] {
        let tol = if kind == Kind::Float { 1e-4 } else { 1e-10 };
        let (b, t, v) = (8, 64, 50);
        let logits = Tensor::randn([b, t, v], (kind, Device::Cpu));
        let labels = Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu));
        let lens = Tensor::randint_low(1, t + 1, [b], (Kind::Int64, Device::Cpu));
        let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .lt_tensor(&lens.unsqueeze(1));
        let x = Tensor::randn([b, t], (kind, Device::Cpu));
        let y = Tensor::randn([b, t], (kind, Device::Cpu));
        let z = Tensor::randn([b, t], (kind, Device::Cpu));
        let sc = Tensor::randn([b], (kind, Device::Cpu));
        let on = |a: &Tensor| a.to_device(gpu);
        let back = |a: &Tensor| a.to_device(Device::Cpu);

        assert_close(
            &back(&token_log_probs(&on(&logits), &on(&labels), &on(&mask)).unwrap()),
            &token_log_probs(&logits, &labels, &mask).unwrap(),
            tol,
        );
        assert_close(
            &back(&entropy(&on(&logits), &on(&mask)).unwrap()),
            &entropy(&logits, &mask).unwrap(),
            tol,
        );
        for name in PRESETS {
            let c = Conventions::preset(name).unwrap();
            let a = ppo_experience(&x, &y, &z, &sc, &mask, &c).unwrap();
            let g = ppo_experience(&on(&x), &on(&y), &on(&z), &on(&sc), &on(&mask), &c).unwrap();
            assert_close(&back(&g.advantages), &a.advantages, tol * 10.0);
            assert_close(&back(&g.returns), &a.returns, tol * 10.0);
            let p = policy_loss(&x, &y, &z, &mask, &c.policy_loss_config()).unwrap();
            let pg = policy_loss(
                &on(&x),
                &on(&y),
                &on(&z),
                &on(&mask),
                &c.policy_loss_config(),
            )
            .unwrap();
            assert_close(&back(&pg.loss), &p.loss, tol);
        }
        for mode in [MaskedSteps::Zero, MaskedSteps::Skip] {
            let cfg = GaeConfig {
                gamma: 0.99,
                lam: 0.95,
                masked_steps: mode,
            };
            let a = gae_loop(&x, &y, &mask, &cfg).unwrap();
            let g = gae(&on(&x), &on(&y), &on(&mask), &cfg).unwrap();
            assert_close(&back(&g.advantages), &a.advantages, tol * 10.0);
        }
        let (pc, pr) = (sc.shallow_clone() - 10.0, &sc * 2.0 - 12.0);
        let lp = PairLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &pr,
            ref_rejected: &pc,
            chosen_lengths: None,
            rejected_lengths: None,
        };
        let (gpc, gpr) = (on(&pc), on(&pr));
        let glp = PairLogps {
            policy_chosen: &gpc,
            policy_rejected: &gpr,
            ref_chosen: &gpr,
            ref_rejected: &gpc,
            chosen_lengths: None,
            rejected_lengths: None,
        };
        let cfg = DpoConfig::new(0.1, DpoVariant::Sigmoid);
        assert_close(
            &back(&dpo_loss(&glp, &cfg).unwrap().loss),
            &dpo_loss(&lp, &cfg).unwrap().loss,
            tol,
        );
        assert_close(
            &back(&pairwise_loss(&gpc, &gpr, None, 0.01).unwrap().loss),
            &pairwise_loss(&pc, &pr, None, 0.01).unwrap().loss,
            tol,
        );
    }
}
