//! The PPO trainer (`rlhf-lab ppo`, src/train/ppo.rs) on the tiny config: the first minibatch of every
//! iteration sees ratio exactly 1; same seed ⇒ byte-identical metrics; SIGKILL at a random instant then
//! resume ⇒ byte-identical metrics; a changed config is refused; a large KL coefficient keeps the policy
//! near the reference; the held-out ground-truth score rises; the score lands on the last real response
//! token of real sampled rollouts; bad configs are typed errors, exit 2.

#[path = "common/prefs.rs"]
mod prefs;

use prefs::{latest_step, spawn, torch_lock, wait_until};
use rlhf_lab::core::conventions::Conventions;
use rlhf_lab::core::experience::ppo_experience;
use rlhf_lab::generate::{generate, GenerationConfig};
use rlhf_lab::train::lm::LoadedLm;
use rlhf_lab::train::ppo::{run_ppo, PpoConfig, PpoRow};
use rlhf_lab::train::run::{ResumeMode, RunOptions};
use rlhf_lab::RlhfError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// A tiny SFT run and the ground-truth classifier, built once per test binary.
struct Fixture {
    dir: PathBuf,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rlhf-lab")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ppo-fixture-{}", std::process::id()));
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for args in [
            vec![
                "sft",
                "--config",
                root.join("configs/sft-tiny.toml").to_str().unwrap(),
                "--out",
                dir.join("sft").to_str().unwrap(),
                "--fresh",
                "--quiet",
            ],
            vec![
                "reward",
                "train",
                "--out",
                dir.join("reward").to_str().unwrap(),
            ],
        ] {
            let out = Command::new(bin()).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Fixture { dir }
    })
}

/// configs/ppo-tiny.toml pointed at the fixture, with `edit` applied to its text.
fn config_text(edit: &dyn Fn(String) -> String) -> String {
    let f = fixture();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("configs/ppo-tiny.toml")).unwrap();
    let text = text
        .replace(
            "sft_run = \"reports/sft-tiny\"",
            &format!("sft_run = {:?}", f.dir.join("sft")),
        )
        .replace(
            "max_new_tokens = 12\n\n[prompts]",
            &format!(
                "max_new_tokens = 12\nground_truth = {:?}\n\n[prompts]",
                f.dir.join("reward/model")
            ),
        );
    edit(text)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("ppo.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_in(dir: &Path, text: &str) -> rlhf_lab::train::ppo::PpoSummary {
    let path = write_config(dir, text);
    let cfg = PpoConfig::from_file(&path).unwrap();
    let _g = torch_lock();
    run_ppo(
        &cfg,
        &RunOptions {
            out_dir: Some(dir.join("run")),
            resume: ResumeMode::Fresh,
            config_file: Some(path),
            ..Default::default()
        },
    )
    .expect("tiny PPO run")
}

fn col(rows: &[PpoRow], name: &str) -> Vec<f64> {
    rows.iter().filter_map(|r| r.get(name)).collect()
}

#[test]
fn ratio_is_one_on_the_first_minibatch_and_runs_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&|t| t);
    let a = run_in(&tmp.path().join("a"), &text);
    // Iteration 0 is the evaluation row; every iteration after it logs the first minibatch's ratio.
    let ratios = col(&a.metrics, "policy/ratio_first");
    assert_eq!(ratios.len(), a.iterations as usize);
    assert!(ratios.iter().all(|&r| r == 1.0), "{ratios:?}");
    // The actor equals the reference at the first rollout: KL exactly 0 there.
    assert_eq!(col(&a.metrics, "objective/kl")[0], 0.0);
    assert_eq!(col(&a.metrics, "eval/kl_exact")[0], 0.0);
    let b = run_in(&tmp.path().join("b"), &text);
    let csv = |s: &rlhf_lab::train::ppo::PpoSummary| {
        std::fs::read_to_string(s.run_dir.join("metrics.csv")).unwrap()
    };
    assert_eq!(csv(&a), csv(&b), "same seed, different metrics");
    assert!(csv(&a).starts_with("step,tokens,lr,objective/scores,objective/kl,"));
}

#[test]
fn held_out_score_and_explained_variance_rise() {
    // β = 0.02 fixed, lr 3e-3, 24 iterations, 64 held-out prefixes: the policy learns the reward.
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&|t| {
        t.replace("kind = \"adaptive\"", "kind = \"fixed\"")
            .replace("init = 0.1", "init = 0.02")
            .replace("max_steps = 8", "max_steps = 24")
            .replace("prompts = 16", "prompts = 64")
            .replace("eval_interval = 4", "eval_interval = 8")
    });
    let s = run_in(&tmp.path().join("run"), &text);
    let score = col(&s.metrics, "eval/score");
    let sig = col(&s.metrics, "eval/score_sigmoid");
    assert!(
        score.last().unwrap() > &(score[0] + 0.5),
        "held-out score {score:?}"
    );
    assert!(
        sig.last().unwrap() > &(sig[0] + 0.1),
        "held-out p(positive) {sig:?}"
    );
    // The critic learns: explained variance of the returns, first four iterations vs last four.
    let ev = col(&s.metrics, "val/explained_var");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&ev[..4]), mean(&ev[ev.len() - 4..]));
    assert!(last > first + 0.02, "explained variance {ev:?}");
}

#[test]
fn a_large_kl_coefficient_keeps_the_policy_at_the_reference() {
    // lr 3e-4, 16 iterations: with β = 20 the exact KL stays near 0, with β = 0.01 it grows.
    let tmp = tempfile::tempdir().unwrap();
    let fixed = |beta: &'static str| {
        move |t: String| {
            t.replace("kind = \"adaptive\"", "kind = \"fixed\"")
                .replace("init = 0.1", &format!("init = {beta}"))
                .replace("max_steps = 8", "max_steps = 16")
                .replace("prompts = 16", "prompts = 64")
                .replace("eval_interval = 4", "eval_interval = 8")
                .replace("lr = 3e-3", "lr = 3e-4")
                .replace("min_lr = 3e-3", "min_lr = 3e-4")
        }
    };
    let free = run_in(&tmp.path().join("free"), &config_text(&fixed("0.01")));
    let held = run_in(&tmp.path().join("held"), &config_text(&fixed("20.0")));
    let kl =
        |s: &rlhf_lab::train::ppo::PpoSummary| *col(&s.metrics, "eval/kl_exact").last().unwrap();
    let (kl_free, kl_held) = (kl(&free), kl(&held));
    assert!(
        kl_held < 0.05 && kl_held < 0.5 * kl_free,
        "exact KL with β = 20: {kl_held}, with β = 0.01: {kl_free}"
    );
}

#[test]
fn sigkill_then_resume_gives_the_same_metrics_and_a_changed_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&|t| t);
    let reference = run_in(&tmp.path().join("ref"), &text);
    let csv = std::fs::read_to_string(reference.run_dir.join("metrics.csv")).unwrap();
    let kdir = tmp.path().join("killed");
    let config = write_config(&kdir, &text);
    let out = kdir.join("run");
    let mut child = spawn("ppo", &config, &out, 150);
    assert!(
        wait_until(&mut child, || latest_step(&out).is_some()),
        "no checkpoint appeared"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    std::thread::sleep(Duration::from_millis(nanos % 200));
    child.kill().unwrap();
    child.wait().unwrap();
    let first = latest_step(&out).unwrap();
    assert!(first < 8, "the run finished before it could be killed");
    let done = spawn("ppo", &config, &out, 0).wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("resuming"));
    assert_eq!(
        csv,
        std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        "metrics after kill + resume differ"
    );

    // A changed config is refused on resume (exit 2, a config error).
    let changed = write_config(&kdir, &text.replace("vf_coef = 0.1", "vf_coef = 0.2"));
    let r = Command::new(bin())
        .args([
            "ppo",
            "--config",
            changed.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("different configuration"));
}

#[test]
fn the_score_lands_on_the_last_real_response_token_of_sampled_rollouts() {
    let f = fixture();
    let _g = torch_lock();
    let lm = LoadedLm::from_run(&f.dir.join("sft"), "sft_run", Device::Cpu).unwrap();
    let tok = &lm.tokenizer;
    let prompts: Vec<Vec<i64>> = [
        "the film",
        "a",
        "it is a truly",
        "this movie",
        "i",
        "the plot",
    ]
    .iter()
    .map(|p| tok.encode(p).unwrap())
    .collect();
    let mut cfg = GenerationConfig::new(48, tok.eos_id(), tok.pad_id());
    cfg.seed = 11;
    let g = generate(lm.lm(), &prompts, &cfg).unwrap();
    let mask = g.response_mask.to_kind(Kind::Double);
    let lengths = Vec::<i64>::try_from(&g.response_lengths).unwrap();
    assert!(
        lengths.iter().any(|&l| l < g.response_width()),
        "need a row that ended early: {lengths:?}"
    );
    let zeros = mask.zeros_like();
    let scores = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let conv = Conventions::preset("rlhf-lab").unwrap();
    let exp = ppo_experience(&zeros, &zeros, &zeros, &scores, &mask, &conv).unwrap();
    let rewards = Vec::<Vec<f64>>::try_from(&exp.rewards).unwrap();
    for (b, row) in rewards.iter().enumerate() {
        let last = lengths[b] as usize - 1;
        assert_eq!(row[last], b as f64 + 1.0, "row {b}: {row:?}");
        assert!(
            row.iter().enumerate().all(|(t, &r)| t == last || r == 0.0),
            "row {b}: {row:?}"
        );
    }
}

#[test]
fn bad_configs_are_typed_errors_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Box<dyn Fn(String) -> String>, &str); 5] = [
        (
            "missing sft run",
            Box::new(|t: String| t.replace("sft-fixture-marker", "")),
            "sft_run",
        ),
        (
            "minibatches",
            Box::new(|t: String| t.replace("num_minibatches = 2", "num_minibatches = 3")),
            "num_minibatches",
        ),
        (
            "controller",
            Box::new(|t: String| t.replace("kind = \"adaptive\"", "kind = \"pid\"")),
            "kl.kind",
        ),
        (
            "preset",
            Box::new(|t: String| t.replace("preset = \"rlhf-lab\"", "preset = \"nope\"")),
            "preset",
        ),
        (
            "unknown field",
            Box::new(|t: String| t.replace("ppo_epochs = 2", "ppo_epochs = 2\nppo_epoch = 3")),
            "ppo_epoch",
        ),
    ];
    for (i, (what, edit, needle)) in cases.iter().enumerate() {
        let mut text = config_text(&|t| edit(t));
        if *what == "missing sft run" {
            let f = fixture();
            text = text.replace(
                &format!("{:?}", f.dir.join("sft")),
                "\"/nonexistent/sft-run\"",
            );
        }
        let config = write_config(&tmp.path().join(i.to_string()), &text);
        let r = Command::new(bin())
            .args([
                "ppo",
                "--config",
                config.to_str().unwrap(),
                "--out",
                tmp.path().join(format!("o{i}")).to_str().unwrap(),
                "--quiet",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
    }
    // In the library: the same kind of error, never a panic.
    let cfg: Result<PpoConfig, RlhfError> = rlhf_lab::train::config::from_toml(
        &config_text(&|t| t.replace("ppo_epochs = 2", "ppo_epochs = 0")),
        "inline",
    );
    assert!(matches!(cfg, Err(RlhfError::Config { .. })));
}

#[test]
fn shared_backbone_and_ppo_ptx_run() {
    // One backbone for actor and critic (no critic/ in the checkpoint), and PPO-ptx's language-model
    // term on review windows (logged as loss/ptx; absent when ptx_coef = 0).
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&|t| {
        t.replace("shared_backbone = false", "shared_backbone = true")
            .replace(
                "entropy_coef = 0.0",
                "entropy_coef = 0.0\nptx_coef = 0.5\nptx_batch_size = 2\nptx_block = 16",
            )
            .replace("max_steps = 8", "max_steps = 4")
    });
    let s = run_in(&tmp.path().join("run"), &text);
    let ptx = col(&s.metrics, "loss/ptx");
    assert_eq!(ptx.len(), 4);
    assert!(ptx.iter().all(|x| x.is_finite() && *x > 0.0), "{ptx:?}");
    let ckpt = rlhf_lab::train::run::latest_checkpoint(&s.run_dir)
        .unwrap()
        .unwrap();
    assert!(!ckpt.join("critic").exists());
    assert!(col(&s.metrics, "policy/ratio_first")
        .iter()
        .all(|&r| r == 1.0));
    let plain = run_in(
        &tmp.path().join("plain"),
        &config_text(&|t| t.replace("max_steps = 8", "max_steps = 4")),
    );
    assert!(col(&plain.metrics, "loss/ptx").is_empty());
    assert!(rlhf_lab::train::run::latest_checkpoint(&plain.run_dir)
        .unwrap()
        .unwrap()
        .join("critic")
        .is_dir());
}
