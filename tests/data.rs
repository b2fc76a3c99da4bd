//! Data loading, splits, statistics and preference files (issue 4).
//!
//! These tests need the fetched data (`python3 datasets/fetch.py`; CI runs it in setup) and fail —
//! they do not skip — when it is missing.

use rlhf_lab::data::{
    self, lm_texts, load_all, normalise, read_preferences, sentiment_splits, split_of, stats_rows,
    verify_checksums, write_preferences, Label, Polarity, PreferencePair, RtLabel, Source, Split,
};
use rlhf_lab::RlhfError;
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    let d = data::data_dir();
    assert!(
        d.join("MANIFEST.json").is_file(),
        "data not found in {}: run `python3 datasets/fetch.py` (or set RLHF_LAB_DATA)",
        d.display()
    );
    d
}

#[test]
fn checksums_verified() {
    let files = verify_checksums(&dir()).unwrap();
    for f in [
        "pang-lee/reviews.csv",
        "pang-lee/sentences.csv",
        "rotten-tomatoes/rotten_tomatoes_corpus_full.csv",
        "vader/vader_lexicon.txt",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} not verified: {files:?}");
    }
}

#[test]
fn checksum_mismatch_is_checksum_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir();
    std::fs::copy(src.join("MANIFEST.json"), tmp.path().join("MANIFEST.json")).unwrap();
    // Copy every listed file except the big GGUF, which we fake (wrong content ⇒ checksum error).
    for rel in [
        "pang-lee/reviews.csv",
        "pang-lee/sentences.csv",
        "pang-lee/PATTERN-LICENSE.txt",
        "rotten-tomatoes/rotten_tomatoes_corpus_full.csv",
        "vader/vader_lexicon.txt",
        "vader/LICENSE.txt",
    ] {
        let to = tmp.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), to).unwrap();
    }
    let gguf = tmp.path().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::create_dir_all(gguf.parent().unwrap()).unwrap();
    std::fs::write(&gguf, b"not a model").unwrap();
    match verify_checksums(tmp.path()) {
        Err(RlhfError::Checksum { path, .. }) => assert!(path.ends_with(".gguf"), "{path}"),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    // Missing file ⇒ Io with the fetch hint.
    std::fs::remove_file(&gguf).unwrap();
    match verify_checksums(tmp.path()) {
        Err(RlhfError::Io { reason, .. }) => {
            assert!(reason.contains("datasets/fetch.py"), "{reason}")
        }
        other => panic!("expected an io error, got {other:?}"),
    }
}

#[test]
fn missing_data_dir_is_io_error_with_hint() {
    let missing = PathBuf::from("/nonexistent/rlhf-lab-data");
    for err in [
        data::load_rotten_tomatoes(&missing).unwrap_err(),
        data::load_pang_lee_sentences(&missing).unwrap_err(),
        lm_texts(&missing).unwrap_err(),
        verify_checksums(&missing).unwrap_err(),
    ] {
        match err {
            RlhfError::Io { path, reason } => {
                assert!(path.starts_with("/nonexistent/rlhf-lab-data"), "{path}");
                assert!(reason.contains("python3 datasets/fetch.py"), "{reason}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}

#[test]
fn malformed_files_are_format_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tmp.path().join(Source::RottenTomatoes.relative_path());
    std::fs::create_dir_all(rt.parent().unwrap()).unwrap();
    std::fs::write(
        &rt,
        "category,text,movie_name,has_plot_and_reviews\nfresh,Great.,m,False\nsplat,Bad.,m,True\n",
    )
    .unwrap();
    let e = data::load_rotten_tomatoes(tmp.path()).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Format { reason, .. } if reason.contains("row 2") && reason.contains("splat")),
        "{e}"
    );
    std::fs::write(&rt, "category,words\nfresh,Great.\n").unwrap();
    let e = data::load_rotten_tomatoes(tmp.path()).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Format { reason, .. } if reason.contains("`text`")),
        "{e}"
    );
    std::fs::write(&rt, "category,text\nfresh,\"unterminated\n").unwrap();
    assert!(matches!(
        data::load_rotten_tomatoes(tmp.path()),
        Err(RlhfError::Format { .. })
    ));

    let pl = tmp.path().join(Source::PangLeeSentences.relative_path());
    std::fs::create_dir_all(pl.parent().unwrap()).unwrap();
    std::fs::write(&pl, "\u{feff}\"1\",\"good .\"\n\"0\",\"meh .\"\n").unwrap();
    let e = data::load_pang_lee_sentences(tmp.path()).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Format { reason, .. } if reason.contains("row 2")),
        "{e}"
    );
    std::fs::write(&pl, "\u{feff}\"1\",\"good .\"\n\"-1\",\"  \"\n").unwrap();
    let e = data::load_pang_lee_sentences(tmp.path()).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Format { reason, .. } if reason.contains("empty")),
        "{e}"
    );
    // BOM stripped, quotes and labels parsed.
    std::fs::write(
        &pl,
        "\u{feff}\"1\",\"good \"\" fun .\"\n\"-1\",\"bad .\n\"\n",
    )
    .unwrap();
    let ok = data::load_pang_lee_sentences(tmp.path()).unwrap();
    assert_eq!(ok[0].text, "good \" fun .");
    assert_eq!(ok[0].label, Label::Polarity(Polarity::Positive));
    assert_eq!(ok[1].label, Label::Polarity(Polarity::Negative));
}

#[test]
fn sources_load_with_expected_counts_and_labels() {
    let d = dir();
    let rt = data::load_rotten_tomatoes(&d).unwrap();
    let count = |l: RtLabel| rt.iter().filter(|t| t.label == Label::Rt(l)).count();
    assert_eq!(
        (
            rt.len(),
            count(RtLabel::Fresh),
            count(RtLabel::Rotten),
            count(RtLabel::Plot)
        ),
        (13_891, 7_403, 5_405, 1_083)
    );
    let s = data::load_pang_lee_sentences(&d).unwrap();
    let r = data::load_pang_lee_reviews(&d).unwrap();
    assert_eq!((s.len(), r.len()), (4_000, 1_500));
    let pos = |v: &[data::LabeledText]| {
        v.iter()
            .filter(|t| t.label.polarity() == Some(Polarity::Positive))
            .count()
    };
    assert_eq!((pos(&s), pos(&r)), (2_000, 750));
    let multiline = r.iter().filter(|t| t.text.contains('\n')).count();
    assert!(
        multiline > 1_490,
        "reviews keep one sentence per line: {multiline}"
    );
    assert!(!s[0].text.starts_with('\u{feff}') && !s[0].text.ends_with('\n'));
}

#[test]
fn splits_disjoint_by_normalised_text_across_all_sources() {
    let d = dir();
    let all = load_all(&d).unwrap();
    // The same normalised text is always in the same split, whatever its source.
    let mut seen: HashMap<String, Split> = HashMap::new();
    let mut shared_sources = 0;
    let mut first_source: HashMap<String, Source> = HashMap::new();
    for t in &all {
        let n = normalise(&t.text);
        let s = split_of(&t.text);
        if let Some(prev) = seen.insert(n.clone(), s) {
            assert_eq!(prev, s, "{n:?} in two splits");
        }
        match first_source.get(&n) {
            Some(src) if *src != t.source => shared_sources += 1,
            Some(_) => {}
            None => {
                first_source.insert(n, t.source);
            }
        }
    }
    // The cross-source overlap the rule exists for (Pang & Lee sentences inside the RT snippets).
    assert!(shared_sources > 3_800, "{shared_sources}");
    // The LM corpus: no normalised text in two splits, none twice in a split.
    let lm = lm_texts(&d).unwrap();
    let mut where_: HashMap<String, Split> = HashMap::new();
    for split in Split::ALL {
        for t in lm.get(split) {
            let prev = where_.insert(normalise(t), split);
            assert!(prev.is_none(), "{t:?} twice (in {prev:?} and {split:?})");
            assert_eq!(split_of(t), split);
        }
    }
    let sent = sentiment_splits(&d).unwrap();
    for split in Split::ALL {
        assert!(sent.get(split).iter().all(|t| split_of(&t.text) == split
            && t.source == Source::RottenTomatoes
            && t.label.polarity().is_some()));
    }
}

#[test]
fn split_sizes_are_stable() {
    let d = dir();
    let lm = lm_texts(&d).unwrap();
    let sent = sentiment_splits(&d).unwrap();
    let labels = |v: &[data::LabeledText]| {
        let pos = v
            .iter()
            .filter(|t| t.label.polarity() == Some(Polarity::Positive))
            .count();
        (v.len(), pos, v.len() - pos)
    };
    let snap = serde_json::json!({
        "lm_texts": lm.sizes(),
        "sentiment_splits (n, positive, negative)": {
            "train": labels(&sent.train),
            "validation": labels(&sent.validation),
            "test": labels(&sent.test),
        },
    });
    insta::assert_json_snapshot!("data_split_sizes", snap);
}

#[test]
fn stats_are_sane_and_saved() {
    let d = dir();
    let rows = stats_rows(&d).unwrap();
    assert_eq!(rows.len(), 9);
    let total = |src: &str| {
        rows.iter()
            .filter(|r| r.source == src)
            .map(|r| r.n)
            .sum::<usize>()
    };
    // Within-source de-duplication removes a few repeats only.
    assert!(
        (13_800..=13_905).contains(&total("rotten-tomatoes")),
        "{}",
        total("rotten-tomatoes")
    );
    assert!((3_950..=4_000).contains(&total("pang-lee-sentences")));
    // Two reviews occur twice in the Pang & Lee file.
    assert_eq!(total("pang-lee-reviews"), 1_498);
    for r in &rows {
        assert!(r.n > 0, "{r:?}");
        assert!(
            r.chars_median <= r.chars_p95 as f64 && r.chars_p95 <= r.chars_max,
            "{r:?}"
        );
        assert!(
            r.words_median <= r.words_p95 as f64 && r.words_p95 <= r.words_max,
            "{r:?}"
        );
        assert!(r.chars_mean > r.words_mean && r.words_mean > 1.0, "{r:?}");
        assert_eq!(r.n, r.n_positive + r.n_negative + r.n_plot);
        if r.split == "train" {
            // Each source is roughly balanced in train (RT: 7,403 fresh vs 5,405 rotten).
            assert!((0.45..0.62).contains(&r.positive_fraction), "{r:?}");
        }
        if r.source.starts_with("pang-lee") {
            assert_eq!(r.n_plot, 0);
        }
    }
    let reviews = rows
        .iter()
        .find(|r| r.source == "pang-lee-reviews")
        .unwrap();
    assert!(reviews.words_mean > 500.0, "{reviews:?}"); // whole reviews
    let df = data::stats(&d).unwrap();
    assert_eq!(df.shape(), (9, 15));
    let out = tempfile::tempdir().unwrap();
    let (csv, json) = data::save_stats(&d, out.path()).unwrap();
    let csv_text = std::fs::read_to_string(csv).unwrap();
    assert_eq!(csv_text.lines().count(), 10);
    assert!(csv_text.starts_with("source,split,n,chars_mean"));
    let back: Vec<data::StatsRow> = rlhf_lab::io::read_json(json).unwrap();
    assert_eq!(back.len(), rows.len());
    for (b, r) in back.iter().zip(&rows) {
        // serde_json parses floats to within an ulp, not always bit-exactly.
        assert_eq!(
            (&b.source, &b.split, b.n, b.chars_p95, b.words_max, b.n_plot),
            (&r.source, &r.split, r.n, r.chars_p95, r.words_max, r.n_plot)
        );
        assert!(
            (b.chars_mean - r.chars_mean).abs() < 1e-9
                && (b.positive_fraction - r.positive_fraction).abs() < 1e-12
        );
    }
    data::print_stats(&d).unwrap();
}

fn pair(i: usize) -> PreferencePair {
    PreferencePair {
        prompt: format!("Review {i}:"),
        chosen: "a \"luminous\" film,\nfull of grace ✓".into(),
        rejected: "dull".into(),
        score_chosen: if i % 2 == 0 { Some(1.25) } else { None },
        score_rejected: if i % 2 == 0 { Some(-0.5) } else { None },
    }
}

#[test]
fn preferences_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("prefs.jsonl");
    let pairs: Vec<PreferencePair> = (0..5).map(pair).collect();
    write_preferences(&path, &pairs).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text
        .lines()
        .nth(1)
        .is_some_and(|l| !l.contains("score_chosen")));
    assert_eq!(read_preferences(&path).unwrap(), pairs);
    // TRL rows with extra keys and blank lines read fine.
    std::fs::write(
        &path,
        "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\",\"id\":7}\n\n",
    )
    .unwrap();
    assert_eq!(read_preferences(&path).unwrap().len(), 1);
}

#[test]
fn malformed_preference_lines_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.jsonl");
    let good = r#"{"prompt":"p","chosen":"c","rejected":"r"}"#;
    for (line3, needle) in [
        (r#"{"prompt":"p","chosen":"c""#, "line 3"),
        (r#"{"prompt":"p","chosen":"c"}"#, "missing field `rejected`"),
        (
            r#"{"prompt":"p","chosen":"","rejected":"r"}"#,
            "`chosen` is an empty string",
        ),
        (
            r#"{"prompt":"p","chosen":"c","rejected":5}"#,
            "invalid type",
        ),
        (
            r#"{"prompt":"p","chosen":"c","rejected":"r","score_chosen":"high"}"#,
            "invalid type",
        ),
    ] {
        std::fs::write(&path, format!("{good}\n{good}\n{line3}\n{good}\n")).unwrap();
        match read_preferences(&path) {
            Err(RlhfError::Format {
                reason, path: p, ..
            }) => {
                assert!(reason.contains("line 3"), "{reason}");
                assert!(reason.contains(needle), "{reason} lacks {needle}");
                assert!(p.ends_with("bad.jsonl"));
            }
            other => panic!("{line3}: expected Format, got {other:?}"),
        }
    }
    assert!(matches!(
        read_preferences(tmp.path().join("none.jsonl")),
        Err(RlhfError::Io { .. })
    ));
    let mut bad = pair(0);
    bad.rejected.clear();
    let e = write_preferences(&path, &[pair(1), bad]).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Invalid { arg, .. } if arg == "pairs[1]"),
        "{e}"
    );
    let mut nan = pair(0);
    nan.score_chosen = Some(f64::NAN);
    assert!(write_preferences(&path, &[nan]).is_err());
}

proptest::proptest! {
    /// The split depends only on the normalised text: case, spacing, punctuation and apostrophes
    /// (the differences between Pang & Lee's tokenised and Rotten Tomatoes' raw text) never move it.
    #[test]
    fn split_is_invariant_to_case_spacing_and_punctuation(
        words in proptest::collection::vec("[a-zA-Z0-9]{1,8}", 1..12),
        seps in proptest::collection::vec(proptest::sample::select(vec![" ", "  ", " , ", " . ", "\n", "\" ", " -- ", "'"]), 12),
    ) {
        let plain = words.join(" ");
        let mut noisy = String::from("  ");
        for (i, w) in words.iter().enumerate() {
            // An apostrophe inside a word is deleted, so "it's" and "its" normalise alike.
            let sep = if seps[i] == "'" { "'" } else { seps[i] };
            noisy.push_str(&w.to_uppercase());
            noisy.push_str(if i + 1 == words.len() { " !" } else { sep });
        }
        let joined_at_apostrophes = normalise(&noisy);
        let expected: String = {
            let mut out = String::new();
            for (i, w) in words.iter().enumerate() {
                out.push_str(&w.to_lowercase());
                if i + 1 < words.len() && seps[i] != "'" {
                    out.push(' ');
                }
            }
            out
        };
        proptest::prop_assert_eq!(&joined_at_apostrophes, &expected);
        if !seps[..words.len() - 1].contains(&"'") {
            proptest::prop_assert_eq!(split_of(&noisy), split_of(&plain));
        }
    }
}
