//! Notebook 01's λ sweep: closed-form bias/variance of the λ-return agree with Monte Carlo through the
//! library's `gae`, and move the way seed 001 §3.2.4 says (bias falls, variance rises with λ).

use rlhf_lab::toy::gae_lambda::{advantages_for, lambda_sweep, trajectory, LambdaSweepConfig};
use rlhf_lab::worked_example::{compute, GAMMA, LAMBDA};

#[test]
fn document_lambda_reproduces_the_library_worked_example() {
    let traj = trajectory(GAMMA);
    let a = advantages_for(&traj.expected_rewards, GAMMA, LAMBDA).unwrap();
    let ex = compute().unwrap();
    for (x, y) in a.iter().zip(ex.advantages.iter()) {
        assert!((x - y).abs() < 1e-12);
    }
    // λ = 1 advantages are G_t − V_t; λ = 0 advantages are δ_t.
    let a1 = advantages_for(&traj.expected_rewards, GAMMA, 1.0).unwrap();
    let a0 = advantages_for(&traj.expected_rewards, GAMMA, 0.0).unwrap();
    for t in 0..7 {
        assert!((a1[t] - (traj.true_values[t] - traj.critic_values[t])).abs() < 1e-12);
        assert!((a0[t] - ex.deltas[t]).abs() < 1e-12);
    }
}

#[test]
fn bias_falls_and_variance_rises_with_lambda() {
    let pts = lambda_sweep(&LambdaSweepConfig::default()).unwrap();
    assert_eq!(pts.len(), 7);
    let last = pts.last().unwrap();
    assert_eq!(last.lambda, 1.0);
    assert!(last.bias.abs() < 1e-12, "λ = 1 is unbiased: {}", last.bias);
    for w in pts.windows(2) {
        assert!(w[1].variance > w[0].variance, "variance must rise with λ");
        assert!(w[1].bias.abs() < w[0].bias.abs(), "|bias| must fall with λ");
    }
    // λ = 0: one real reward (σ_tok² only), and the bias is V_1 critic error carried by δ_0.
    assert!((pts[0].variance - 0.01f64.powi(2)).abs() < 1e-15);
    assert!(
        pts[0].bias.abs() > 1.5,
        "critic error of V_2 = −2.3945 leaks in: {}",
        pts[0].bias
    );
    // Monte Carlo through the library's gae agrees with the closed forms.
    for p in &pts {
        assert!(
            (p.mc_bias - p.bias).abs() < 5.0 * p.mc_bias_stderr + 1e-12,
            "{p:?}"
        );
        assert!((p.mc_variance / p.variance - 1.0).abs() < 0.05, "{p:?}");
    }
}

#[test]
fn sweep_is_deterministic_and_validates() {
    let cfg = LambdaSweepConfig {
        samples: 500,
        ..Default::default()
    };
    let a = serde_json::to_string(&lambda_sweep(&cfg).unwrap()).unwrap();
    let b = serde_json::to_string(&lambda_sweep(&cfg).unwrap()).unwrap();
    assert_eq!(a, b);
    for bad in [
        LambdaSweepConfig {
            lambdas: vec![1.5],
            ..cfg.clone()
        },
        LambdaSweepConfig {
            position: 7,
            ..cfg.clone()
        },
        LambdaSweepConfig {
            samples: 1,
            ..cfg.clone()
        },
        LambdaSweepConfig {
            score_noise: -1.0,
            ..cfg.clone()
        },
    ] {
        assert!(lambda_sweep(&bad).is_err());
    }
}
