//! Reward-model trainer on the tiny config (configs/rm-tiny.toml) over an SFT fixture: it learns pairs
//! separable by construction, it is bit-reproducible and survives SIGKILL, K-wise batches hold every
//! comparison of a prompt, K = 2 K-wise equals pairwise, the trained RM is a `SentimentScorer`, and bad
//! configs and data are typed errors (exit 2 from the CLI).

#[path = "common/prefs.rs"]
mod prefs;

use prefs::*;
use rlhf_lab::core::reward_model::kwise_loss;
use rlhf_lab::ground_truth::SentimentScorer;
use rlhf_lab::train::batch::{collate_groups, load_preference_groups, Padding, PreferenceFormat};
use rlhf_lab::train::lm::LoadedLm;
use rlhf_lab::train::rm::{
    group_rewards, run_rm, RewardModelScorer, RmConfig, RmLoss, RmSummary, RunOptions,
};
use rlhf_lab::train::run::ResumeMode;
use rlhf_lab::RlhfError;
use std::path::Path;
use tch::{Device, Kind};

fn tiny(sft: &Path, data: &Path) -> RmConfig {
    let mut cfg = RmConfig::from_file(config_path("rm-tiny.toml")).expect("rm-tiny.toml is valid");
    cfg.sft_run = sft.to_path_buf();
    cfg.data.path = data.to_path_buf();
    cfg
}

fn fresh(dir: &Path) -> RunOptions {
    RunOptions {
        out_dir: Some(dir.to_path_buf()),
        resume: ResumeMode::Fresh,
        plotly_cdn: true,
        ..Default::default()
    }
}

fn run_in(cfg: &RmConfig, dir: &Path) -> RmSummary {
    let _g = torch_lock();
    run_rm(cfg, &fresh(dir)).expect("tiny RM run")
}

#[test]
fn learns_is_deterministic_and_survives_sigkill() {
    let (sft, data) = (sft_run(), pairs_file());
    let cfg = tiny(&sft, &data);
    let max = cfg.optim.max_steps;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, k) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("killed"),
    );

    // (a) The loss falls and validation accuracy ends far above chance on separable pairs.
    let sa = run_in(&cfg, &a);
    assert_eq!(sa.steps, max);
    let v0 = sa.metrics[0].get("val/loss").unwrap();
    assert!(
        sa.final_val_loss < v0 - 0.3,
        "val loss {v0} -> {}",
        sa.final_val_loss
    );
    let train: Vec<f64> = sa.metrics.iter().filter_map(|r| r.get("loss")).collect();
    assert!(
        mean(&train[train.len() - 5..]) < mean(&train[..5]) - 0.2,
        "{train:?}"
    );
    assert!(
        sa.final_val_accuracy >= 0.9,
        "val accuracy {} on separable pairs",
        sa.final_val_accuracy
    );
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert!(csv.starts_with(
        "step,tokens,lr,loss,accuracy,grad_norm,rewards/chosen,rewards/rejected,rewards/margins,\
         val/loss,val/accuracy,val/rewards/chosen,val/rewards/rejected,val/rewards/margins\n"
    ));
    assert_eq!(csv.lines().count(), 1 + 1 + max as usize);
    for f in ["tokenizer.json", "manifest.json", "report.html"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("comparisons ranked right"));

    // (b) Same seed: byte-identical metrics.
    run_in(&cfg, &b);
    assert_eq!(csv, std::fs::read_to_string(b.join("metrics.csv")).unwrap());

    // (c) SIGKILL twice, resume: byte-identical metrics.
    let toml_path = tmp.path().join("rm.toml");
    let text = std::fs::read_to_string(config_path("rm-tiny.toml")).unwrap();
    std::fs::write(&toml_path, with_fixture_paths(&text, &sft, &data)).unwrap();
    let killed = kill_and_resume("rm", &toml_path, &k, max);
    assert_eq!(csv, killed, "metrics after kill + resume differ");

    // (d) A changed config is refused on resume.
    let mut changed = cfg.clone();
    changed.optim.lr *= 2.0;
    let _g = torch_lock();
    let err = run_rm(
        &changed,
        &RunOptions {
            out_dir: Some(a.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, RlhfError::Config { .. }), "{err}");
    drop(_g);

    // (e) The trained RM is a SentimentScorer: positive completions score above negative ones.
    let scorer = RewardModelScorer::from_run(&a).unwrap();
    let s: &dyn SentimentScorer = &scorer;
    assert_eq!(s.name(), "reward-model");
    let texts = [
        "Review 5000: the movie was great, wonderful and superb.",
        "Review 5000: the movie was awful, boring and dull.",
        "Review 5001: the plot was charming, funny and moving.",
        "Review 5001: the plot was tedious, weak and ugly.",
    ];
    let scores = s.score(&texts).unwrap();
    assert_eq!(scores.size(), [4]);
    assert_eq!(scores.kind(), Kind::Float);
    let v = Vec::<f32>::try_from(&scores).unwrap();
    assert!(v[0] > v[1] && v[2] > v[3], "{v:?}");
    // Batched = one by one.
    for (i, t) in texts.iter().enumerate() {
        let one = f32::try_from(&s.score(&[t]).unwrap().get(0)).unwrap();
        assert!((one - v[i]).abs() < 1e-4, "{one} vs {}", v[i]);
    }
    // A text longer than the context is an error naming it.
    let long = "great ".repeat(200);
    let err = s.score(&["ok", &long]).unwrap_err();
    assert!(err.to_string().contains("texts[1]"), "{err}");
}

/// K-wise batches hold all C(K, 2) comparisons of each prompt; the K-wise loss of those scores is the
/// per-prompt mean over them; a K = 4 run learns the ranking.
#[test]
fn kwise_batches_hold_every_pair_and_learn() {
    let sft = sft_run();
    let tmp = tempfile::tempdir().unwrap();
    let ranked_path = tmp.path().join("ranked.jsonl");
    rlhf_lab::data::write_ranked(&ranked_path, &ranked(200, 4)).unwrap();

    let lm = LoadedLm::from_run(&sft, "sft_run", Device::Cpu).unwrap();
    let splits = load_preference_groups(
        &ranked_path,
        PreferenceFormat::Ranked,
        &lm.tokenizer,
        64,
        "data.path",
    )
    .unwrap();
    let groups: Vec<_> = splits.train.iter().take(3).collect();
    let k = 4usize;
    assert!(groups.iter().all(|g| g.k() == k));
    let batch =
        collate_groups(&groups, lm.tokenizer.pad_id(), Padding::Right, Device::Cpu).unwrap();
    assert_eq!(batch.len(), (3 * k) as i64);
    // Row g·K + c is completion c of group g: every pair (i < j) of every prompt is in this batch.
    let ids = Vec::<Vec<i64>>::try_from(&batch.input_ids).unwrap();
    let mut pairs_seen = 0;
    for (g, group) in groups.iter().enumerate() {
        for i in 0..k {
            for j in (i + 1)..k {
                for c in [i, j] {
                    let want: Vec<i64> = group.completions[c]
                        .prompt
                        .iter()
                        .chain(&group.completions[c].completion)
                        .copied()
                        .collect();
                    assert_eq!(ids[g * k + c][..want.len()], want[..]);
                }
                pairs_seen += 1;
            }
        }
    }
    assert_eq!(pairs_seen, 3 * k * (k - 1) / 2);
    let _g = torch_lock();
    let r =
        tch::no_grad(|| group_rewards(lm.lm(), &groups, lm.tokenizer.pad_id(), Device::Cpu, false))
            .unwrap();
    assert_eq!(r.size(), [3, k as i64]);
    let rv = Vec::<Vec<f32>>::try_from(&r).unwrap();
    let mut want = 0.0f64;
    for row in &rv {
        let mut s = 0.0;
        for i in 0..k {
            for j in (i + 1)..k {
                let d = (row[i] - row[j]) as f64;
                s += (1.0 + (-d).exp()).ln();
            }
        }
        want += s / (k * (k - 1) / 2) as f64;
    }
    want /= 3.0;
    let got = kwise_loss(&r).unwrap().double_value(&[]);
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    drop(_g);

    // A short K-wise run ranks the validation comparisons far above chance.
    let mut cfg = tiny(&sft, &ranked_path);
    cfg.name = "rm-kwise".into();
    cfg.data.format = PreferenceFormat::Ranked;
    cfg.loss.kind = RmLoss::Kwise;
    cfg.optim.batch_size = 4;
    let s = run_in(&cfg, &tmp.path().join("kwise"));
    let acc0 = s.metrics[0].get("val/accuracy").unwrap();
    assert!(
        s.final_val_accuracy > 0.8 && s.final_val_accuracy > acc0,
        "K-wise val accuracy {acc0} -> {}",
        s.final_val_accuracy
    );
    // Pairwise on K = 4 data is refused, naming the field.
    let mut bad = cfg.clone();
    bad.loss.kind = RmLoss::Pairwise;
    let _g = torch_lock();
    let err = run_rm(&bad, &fresh(&tmp.path().join("bad"))).unwrap_err();
    assert!(err.to_string().contains("loss.kind"), "{err}");
}

/// K-wise with K = 2 is the pairwise loss: the same data as pairs and as a K = 2 ranked file give the
/// same training curve.
#[test]
fn kwise_with_k2_equals_pairwise() {
    let sft = sft_run();
    let tmp = tempfile::tempdir().unwrap();
    let pairs = separable_pairs(300);
    let pairs_path = tmp.path().join("pairs.jsonl");
    let ranked_path = tmp.path().join("ranked.jsonl");
    rlhf_lab::data::write_preferences(&pairs_path, &pairs).unwrap();
    rlhf_lab::data::write_ranked(&ranked_path, &pairs_as_ranked(&pairs)).unwrap();

    let mut pw = tiny(&sft, &pairs_path);
    pw.optim.max_steps = 8;
    pw.eval_interval = 4;
    let mut kw = pw.clone();
    kw.data.path = ranked_path;
    kw.data.format = PreferenceFormat::Ranked;
    kw.loss.kind = RmLoss::Kwise;
    let a = run_in(&pw, &tmp.path().join("pairwise"));
    let b = run_in(&kw, &tmp.path().join("kwise"));
    assert_eq!(a.metrics.len(), b.metrics.len());
    for (ra, rb) in a.metrics.iter().zip(&b.metrics) {
        for (x, y) in ra.values.iter().zip(&rb.values) {
            match (x, y) {
                (Some(x), Some(y)) => {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                        "step {}: {x} vs {y}",
                        ra.step
                    )
                }
                (None, None) => {}
                _ => panic!("step {}: columns differ", ra.step),
            }
        }
    }
}

/// The margin (from the pair's scores) and the centering term change the loss as their formulas say.
#[test]
fn margin_and_centering_enter_the_loss() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny(&sft, &data);
    cfg.optim.max_steps = 1;
    cfg.optim.warmup_steps = 0;
    let plain = run_in(&cfg, &tmp.path().join("plain")).metrics[0]
        .get("val/loss")
        .unwrap();
    let mut m = cfg.clone();
    m.loss.margin_scale = 0.5; // margin 0.5·(1 − (−1)) = 1 on every pair
    let with_margin = run_in(&m, &tmp.path().join("margin")).metrics[0]
        .get("val/loss")
        .unwrap();
    assert!(with_margin > plain + 0.2, "{plain} -> {with_margin}");
    let mut c = cfg.clone();
    c.loss.center_coef = 1.0;
    let centred = run_in(&c, &tmp.path().join("center")).metrics[0]
        .get("val/loss")
        .unwrap();
    assert!(centred > plain, "{plain} -> {centred}");
    // A margin needs scores on every pair: the error names the line.
    let no_scores = tmp.path().join("no-scores.jsonl");
    let mut pairs = separable_pairs(300);
    for p in &mut pairs {
        p.score_chosen = None;
        p.score_rejected = None;
    }
    rlhf_lab::data::write_preferences(&no_scores, &pairs).unwrap();
    m.data.path = no_scores;
    let _g = torch_lock();
    let err = run_rm(&m, &fresh(&tmp.path().join("m2"))).unwrap_err();
    assert!(
        err.to_string().contains("loss.margin_scale") && err.to_string().contains("line"),
        "{err}"
    );
}

#[test]
fn bad_configs_and_data_are_typed_errors() {
    let (sft, data) = (sft_run(), pairs_file());
    let tmp = tempfile::tempdir().unwrap();
    let run = |cfg: &RmConfig, name: &str| {
        let _g = torch_lock();
        run_rm(cfg, &fresh(&tmp.path().join(name))).unwrap_err()
    };

    // Missing SFT run: names the field.
    let mut cfg = tiny(&sft, &data);
    cfg.sft_run = tmp.path().join("no-such-run");
    let err = run(&cfg, "r1");
    assert_eq!(err.argument(), Some("sft_run"), "{err}");

    // Empty pairs file: names the field.
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = run(&tiny(&sft, &empty), "r2");
    assert_eq!(err.argument(), Some("data.path"), "{err}");

    // chosen == rejected: names the line.
    let mut pairs = separable_pairs(300);
    pairs[6].rejected = pairs[6].chosen.clone();
    let same = tmp.path().join("same.jsonl");
    rlhf_lab::data::write_preferences(&same, &pairs).unwrap();
    let err = run(&tiny(&sft, &same), "r3");
    assert!(matches!(err, RlhfError::Format { .. }), "{err}");
    assert!(
        err.to_string().contains("line 7") && err.to_string().contains("chosen"),
        "{err}"
    );

    // Prompt + completion longer than the context (64): names the line.
    let mut pairs = separable_pairs(300);
    pairs[2].chosen = " great".repeat(80);
    let long = tmp.path().join("long.jsonl");
    rlhf_lab::data::write_preferences(&long, &pairs).unwrap();
    let err = run(&tiny(&sft, &long), "r4");
    assert!(
        err.to_string().contains("line 3") && err.to_string().contains("context"),
        "{err}"
    );

    // Ranked file: a repeated completion names the line.
    let bad_ranked = tmp.path().join("bad-ranked.jsonl");
    std::fs::write(
        &bad_ranked,
        "{\"prompt\":\"a\",\"completions\":[\" b\",\" c\"]}\n{\"prompt\":\"a\",\"completions\":[\" b\",\" b\"]}\n",
    )
    .unwrap();
    let err = rlhf_lab::data::read_ranked(&bad_ranked).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");

    // Config: unknown key, K-wise with a margin; the CLI exits 2 naming them.
    let text = std::fs::read_to_string(config_path("rm-tiny.toml")).unwrap();
    let text = with_fixture_paths(&text, &sft, &data);
    let check = |t: &str, needle: &str| {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, t).unwrap();
        match RmConfig::from_file(&p) {
            Err(RlhfError::Config { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
            other => panic!("expected a config error, got {other:?}"),
        }
        let (code, stderr) = run_cli("rm", &p, &tmp.path().join("cli"));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    };
    check(&text.replace("[loss]\n", "[loss]\nmargn = 1.0\n"), "margn");
    check(
        &text
            .replace("kind = \"pairwise\"", "kind = \"kwise\"")
            .replace("margin_scale = 0.0", "margin_scale = 1.0"),
        "loss.margin_scale",
    );
    // The CLI on a missing SFT run: exit 2, the field named.
    let p = tmp.path().join("nosft.toml");
    std::fs::write(
        &p,
        text.replace(
            &format!("sft_run = {:?}", sft.display().to_string()),
            "sft_run = \"/nonexistent/sft\"",
        ),
    )
    .unwrap();
    let (code, stderr) = run_cli("rm", &p, &tmp.path().join("cli2"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sft_run"), "{stderr}");
}

/// The ranked JSONL round-trips; malformed records are refused naming their 1-based line.
#[test]
fn ranked_jsonl_round_trips_and_names_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("r.jsonl");
    let records = ranked(5, 3);
    rlhf_lab::data::write_ranked(&p, &records).unwrap();
    assert_eq!(rlhf_lab::data::read_ranked(&p).unwrap(), records);
    for (line2, needle) in [
        (r#"{"prompt":"a","completions":[" b"]}"#, "at least 2"),
        (
            r#"{"prompt":"a","completions":[" b"," c"],"scores":[0.0,1.0]}"#,
            "best first",
        ),
        (
            r#"{"prompt":"a","completions":[" b"," c"],"scores":[1.0]}"#,
            "scores",
        ),
        (r#"{"prompt":"","completions":[" b"," c"]}"#, "prompt"),
        (r#"{"prompt":"a"}"#, "completions"),
    ] {
        std::fs::write(
            &p,
            format!(
                "{}\n\n{line2}\n",
                r#"{"prompt":"a","completions":[" b"," c"]}"#
            ),
        )
        .unwrap();
        let err = rlhf_lab::data::read_ranked(&p).unwrap_err();
        assert!(matches!(err, RlhfError::Format { .. }), "{err}");
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains(needle),
            "{err}"
        );
    }
    // The writer refuses a bad record, naming it.
    let mut bad = ranked(2, 2);
    bad[1].completions[1] = bad[1].completions[0].clone();
    let err = rlhf_lab::data::write_ranked(&p, &bad).unwrap_err();
    assert_eq!(err.argument(), Some("records[1]"));
}
