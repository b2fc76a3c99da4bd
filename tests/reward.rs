//! Ground-truth rewards (issue 4): the bag-of-words logistic-regression classifier and the VADER port.
//!
//! Needs the fetched data (`python3 datasets/fetch.py`); fails, not skips, without it. Run with
//! `--nocapture` to see the accuracy report.

use rlhf_lab::data::{self, sentiment_splits};
use rlhf_lab::ground_truth::sentiment::{
    fit, train_classifier_on, BowClassifier, ClassifierConfig, ClassifierMetrics,
};
use rlhf_lab::ground_truth::vader::Vader;
use rlhf_lab::ground_truth::{accuracy, compare_on_test, SentimentScorer};
use rlhf_lab::RlhfError;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::Tensor;

fn dir() -> PathBuf {
    let d = data::data_dir();
    assert!(
        d.join("MANIFEST.json").is_file(),
        "data not found in {}: run `python3 datasets/fetch.py` (or set RLHF_LAB_DATA)",
        d.display()
    );
    d
}

type Trained = (BowClassifier, ClassifierMetrics);

/// One training run with the default (validation-picked) config, shared by the tests (a `Mutex`
/// because `tch::Tensor` is `Send` but not `Sync`).
fn trained() -> MutexGuard<'static, Trained> {
    static M: OnceLock<Mutex<Trained>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(train_classifier_on(&dir(), &ClassifierConfig::default()).unwrap()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn vader() -> Vader {
    Vader::load(&dir()).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t).unwrap()
}

#[test]
fn classifier_reaches_target_accuracy_on_test() {
    let guard = trained();
    let (model, m) = (&guard.0, &guard.1);
    println!("bow-logreg {:?}: {m:?}", model.config());
    assert!(
        m.test_accuracy >= 0.78,
        "test accuracy {} < 0.78",
        m.test_accuracy
    );
    assert!(m.train_accuracy > m.test_accuracy);
    assert!(
        m.train_seconds < 30.0,
        "training took {} s",
        m.train_seconds
    );
    assert_eq!(m.vocab_size, model.vocab_size());
}

#[test]
fn classifier_scores_are_oriented_and_shaped() {
    let guard = trained();
    let model = &guard.0;
    let s = values(
        &model
            .score(&[
                "A moving, beautifully acted triumph.",
                "Dull, lifeless and a waste of time.",
                "",
            ])
            .unwrap(),
    );
    assert_eq!(s.len(), 3);
    assert!(s[0] > 1.0 && s[1] < -1.0, "{s:?}");
    assert_eq!(model.score(&[]).unwrap().size(), vec![0]);
}

#[test]
fn classifier_training_is_deterministic() {
    let d = dir();
    // A 2,000-snippet slice keeps the three fits fast; determinism does not depend on the size.
    let all = sentiment_splits(&d).unwrap().train;
    let train = &all[..2_000];
    let cfg = ClassifierConfig {
        epochs: 1,
        ..ClassifierConfig::default()
    };
    let a = fit(&cfg, train).unwrap();
    let b = fit(&cfg, train).unwrap();
    assert_eq!(a.vocabulary(), b.vocabulary());
    assert!(
        a.weight().equal(b.weight()) && a.bias().equal(b.bias()),
        "same seed, different weights"
    );
    let c = fit(&ClassifierConfig { seed: 1, ..cfg }, train).unwrap();
    assert!(
        !a.weight().equal(c.weight()),
        "the seed changes the minibatch order, so the weights"
    );
}

#[test]
fn classifier_save_load_gives_identical_scores() {
    let guard = trained();
    let (model, metrics) = (&guard.0, &guard.1);
    let tmp = tempfile::tempdir().unwrap();
    model.save(tmp.path(), Some(metrics)).unwrap();
    let back = BowClassifier::load(tmp.path()).unwrap();
    let test = sentiment_splits(&dir()).unwrap().test;
    let texts: Vec<&str> = test.iter().map(|t| t.text.as_str()).collect();
    assert!(model
        .score(&texts)
        .unwrap()
        .equal(&back.score(&texts).unwrap()));
    assert_eq!(back.config(), model.config());
    // A corrupt weights file is a Format error, a missing one Io.
    let (w, _) = BowClassifier::paths(tmp.path());
    std::fs::write(&w, b"garbage").unwrap();
    assert!(matches!(
        BowClassifier::load(tmp.path()),
        Err(RlhfError::Format { .. })
    ));
    std::fs::remove_file(&w).unwrap();
    assert!(matches!(
        BowClassifier::load(tmp.path()),
        Err(RlhfError::Io { .. })
    ));
}

#[test]
fn classifier_rejects_bad_config() {
    let train = sentiment_splits(&dir()).unwrap().train;
    for cfg in [
        ClassifierConfig {
            lr: 0.0,
            ..Default::default()
        },
        ClassifierConfig {
            l2: -1.0,
            ..Default::default()
        },
        ClassifierConfig {
            epochs: 0,
            nb_weighting: false,
            ..Default::default()
        },
        ClassifierConfig {
            nb_alpha: 0.0,
            ..Default::default()
        },
        ClassifierConfig {
            l2: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(fit(&cfg, &train[..10]).is_err(), "{cfg:?}");
    }
    assert!(matches!(
        fit(&ClassifierConfig::default(), &[]),
        Err(RlhfError::Invalid { .. })
    ));
}

/// Golden compound scores from the Python package vaderSentiment==3.3.2, made once with a throwaway
/// script: `pip download vaderSentiment==3.3.2 --no-deps`, unzip the wheel, then for each sentence
/// `SentimentIntensityAnalyzer().polarity_scores(s)["compound"]` (rounded by the package to 4 digits).
/// The first ones are the package's own demo sentences; the rest hit "but" with repeated values, "no",
/// "??", idioms and Rotten Tomatoes / Pang & Lee style text. No emoji (the port skips them).
const VADER_GOLDEN: &[(&str, f64)] = &[
    (r#"VADER is smart, handsome, and funny."#, 0.8316),
    (r#"VADER is smart, handsome, and funny!"#, 0.8439),
    (r#"VADER is very smart, handsome, and funny."#, 0.8545),
    (r#"VADER is VERY SMART, handsome, and FUNNY."#, 0.9227),
    (
        r#"VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!"#,
        0.9469,
    ),
    (r#"VADER is not smart, handsome, nor funny."#, -0.7424),
    (r#"At least it isn't a horrible book."#, 0.431),
    (r#"The book was only kind of good."#, 0.3832),
    (
        r#"The plot was good, but the characters are uncompelling and the dialog is not great."#,
        -0.7042,
    ),
    (r#"Today SUX!"#, -0.5461),
    (r#"Today only kinda sux! But I'll get by, lol"#, 0.5249),
    (r#"Not bad at all"#, 0.431),
    (r#"Sentiment analysis has never been good."#, -0.3412),
    (r#"Sentiment analysis has never been this good!"#, 0.5672),
    (
        r#"Most automated sentiment analysis tools are shit."#,
        -0.5574,
    ),
    (r#"With VADER, sentiment analysis is the shit!"#, 0.6476),
    (r#"On the other hand, VADER is quite bad ass"#, 0.802),
    (r#"Without a doubt, excellent idea."#, 0.7013),
    (
        r#"Roger Dodger is one of the least compelling variations on this theme."#,
        -0.1695,
    ),
    (
        r#"Roger Dodger is at least compelling as a variation on the theme."#,
        0.2263,
    ),
    (
        r#"It was one of the worst movies I've seen, despite good reviews."#,
        -0.7584,
    ),
    (r#"Is it good??? Is it bad???"#, -0.3736),
    (r#"no good, no bad, no problem"#, 0.6681),
    (r#"good good but bad bad good"#, -0.5789),
    (r#"a kiss of death for a movie that is to die for"#, -0.5574),
    (r#""#, 0.0),
    (
        r#"the rock is destined to be the 21st century's new " conan " and that he's going to make a splash even greater than arnold schwarzenegger , jean-claud van damme or steven segal ."#,
        0.3612,
    ),
    (r#"A three-hour cinema master class."#, 0.0),
    (
        r#"Although it's a bit smug and repetitive, this documentary engages your brain in a way few current films do."#,
        0.2023,
    ),
];

#[test]
fn vader_matches_python_package() {
    let v = vader();
    assert!(v.lexicon_len() > 7_000);
    for (text, want) in VADER_GOLDEN {
        let got = v.compound(text);
        assert!(
            (got - want).abs() <= 1e-4,
            "{text:?}: rust {got}, python {want}"
        );
    }
    let s = values(&v.score(&["good", "bad", "plain"]).unwrap());
    assert!(s[0] > 0.0 && s[1] < 0.0 && s[2] == 0.0, "{s:?}");
}

#[test]
fn vader_missing_lexicon_is_io_error_with_hint() {
    match Vader::load(std::path::Path::new("/nonexistent")) {
        Err(RlhfError::Io { reason, .. }) => assert!(reason.contains("datasets/fetch.py")),
        other => panic!("{other:?}"),
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lex.txt");
    std::fs::write(&p, "good\tnot-a-number\n").unwrap();
    assert!(matches!(
        Vader::from_lexicon_file(&p),
        Err(RlhfError::Format { .. })
    ));
}

#[test]
fn accuracy_report_on_rt_test_split() {
    let d = dir();
    let guard = trained();
    let model = &guard.0;
    let v = vader();
    let report = compare_on_test(&d, &[model as &dyn SentimentScorer, &v]).unwrap();
    println!("{report}");
    let [bow, vad] = &report.scorers[..] else {
        panic!("{report:?}")
    };
    assert_eq!(bow.n, report.n_positive + report.n_negative);
    assert!(bow.accuracy >= 0.78, "{bow:?}");
    // VADER is a general-purpose lexicon: better than chance, clearly worse than the trained model.
    assert!(
        vad.accuracy > 0.55 && vad.accuracy < bow.accuracy,
        "{vad:?}"
    );
    assert!(vad.n_zero > 0 && bow.n_zero == 0);
    // The Python package on the same 1,278 test snippets (throwaway script: the split rule re-implemented in
    // Python, then `polarity_scores(text)["compound"]` per snippet): 740 correct, 198 exactly zero.
    assert_eq!((report.n_positive, report.n_negative), (724, 554));
    assert_eq!(
        (vad.n_correct, vad.n_zero),
        (740, 198),
        "VADER port disagrees with vaderSentiment 3.3.2"
    );
    // Same as accuracy() on the split directly.
    let test = sentiment_splits(&d).unwrap().test;
    assert_eq!(accuracy(&v, &test).unwrap(), *vad);
}

/// The hyper-parameter sweep behind `ClassifierConfig::default()`: validation accuracy only (the test
/// split is not looked at). Slow-ish; run with
/// `cargo test --release --test reward -- --ignored --nocapture sweep`.
#[test]
#[ignore]
fn sweep_classifier_hyperparameters_on_validation() {
    let s = sentiment_splits(&dir()).unwrap();
    let mut results = Vec::new();
    for nb_alpha in [0.25, 0.5, 1.0] {
        for (epochs, l2) in [
            (0, 0.0),
            (1, 1e-4),
            (3, 1e-4),
            (3, 1e-3),
            (5, 1e-3),
            (10, 1e-3),
        ] {
            for lr in [0.01, 0.03] {
                if epochs == 0 && lr != 0.01 {
                    continue;
                }
                let cfg = ClassifierConfig {
                    nb_alpha,
                    epochs,
                    l2,
                    lr,
                    ..Default::default()
                };
                let m = fit(&cfg, &s.train).unwrap();
                let v = accuracy(&m, &s.validation).unwrap().accuracy;
                println!("nb_alpha {nb_alpha} epochs {epochs} l2 {l2} lr {lr}: validation {v:.4}");
                results.push((v, cfg));
            }
        }
    }
    for lr in [0.01, 0.03] {
        for epochs in [3, 10] {
            let cfg = ClassifierConfig {
                nb_weighting: false,
                epochs,
                lr,
                l2: 1e-5,
                ..Default::default()
            };
            let m = fit(&cfg, &s.train).unwrap();
            let v = accuracy(&m, &s.validation).unwrap().accuracy;
            println!("plain LR epochs {epochs} lr {lr} l2 1e-5: validation {v:.4}");
            results.push((v, cfg));
        }
    }
    let best = results.iter().max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    println!("best on validation: {:.4} {:?}", best.0, best.1);
}
