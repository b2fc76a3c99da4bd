//! GAE on a [256, 1024] f32 batch: reference time loop vs vectorised scan vs the native CPU pass
//! (criterion).
//! Results and hardware are recorded in reports/bench-gae.md by scripts/bench-report.sh.
use criterion::{criterion_group, criterion_main, Criterion};
use rlhf_lab::advantages::{gae, gae_loop, gae_scan, GaeConfig, MaskedSteps};
use tch::{Device, Kind, Tensor};

fn bench(c: &mut Criterion) {
    tch::manual_seed(0);
    tch::set_num_threads(
        std::env::var("RLHF_LAB_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let (b, t) = (256, 1024);
    let rewards = Tensor::randn([b, t], (Kind::Float, Device::Cpu));
    let values = Tensor::randn([b, t], (Kind::Float, Device::Cpu));
    // Ragged responses: row i has 512 + (i·13 mod 512) tokens, the rest is padding.
    let lens = (Tensor::arange(b, (Kind::Int64, Device::Cpu)) * 13).remainder(512) + 512;
    let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&lens.unsqueeze(1));
    for mode in [MaskedSteps::Zero, MaskedSteps::Skip] {
        let cfg = GaeConfig {
            gamma: 1.0,
            lam: 0.95,
            masked_steps: mode,
        };
        let mut g = c.benchmark_group(format!("gae_256x1024_f32_{mode:?}").to_lowercase());
        g.sample_size(10);
        g.bench_function("loop", |bch| {
            bch.iter(|| gae_loop(&rewards, &values, &mask, &cfg).unwrap())
        });
        g.bench_function("vectorised", |bch| {
            bch.iter(|| gae_scan(&rewards, &values, &mask, &cfg).unwrap())
        });
        g.bench_function("native", |bch| {
            bch.iter(|| gae(&rewards, &values, &mask, &cfg).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
