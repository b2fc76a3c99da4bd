//! Byte-level BPE training (`Tokenizer::train_bpe`): round trips, special tokens, vocabulary size,
//! determinism, save/load, and compatibility with Python's `tokenizers`.

use rlhf_lab::tokenizer::{BpeConfig, Tokenizer, EOS_TOKEN, PAD_TOKEN};
use rlhf_lab::RlhfError;
use std::path::PathBuf;

/// A small corpus with enough repetition for a few hundred merges.
fn corpus() -> Vec<String> {
    let base = [
        "the film is a triumph of style over substance , and the actors seem to know it .",
        "i loved this movie ; the story was moving and the performances were excellent !",
        "a dull , plodding mess that wastes a talented cast on a script with no ideas .",
        "the director's third feature is his best yet : funny , warm and surprisingly sad .",
        "it's 1999 and the sequel arrives , 120 minutes long , with 3 songs and 2 dances .",
        "Naïve café owners sing \"über\" ballads — the 90s were strange 🎬 times.",
    ];
    let mut v = Vec::new();
    for i in 0..40 {
        for (j, s) in base.iter().enumerate() {
            v.push(format!("{s} review {i} part {j}"));
        }
    }
    v
}

fn train(vocab: usize) -> Tokenizer {
    Tokenizer::train_bpe(
        &corpus(),
        &BpeConfig {
            vocab_size: vocab,
            min_frequency: 2,
        },
    )
    .expect("training on a valid corpus")
}

const SAMPLES: &[&str] = &[
    "plain ascii text, with punctuation!",
    "unicode: naïve café, 日本語, emoji 🎬🍿, combining é",
    "whitespace   runs\t\ttabs\n\nnewlines  \n  and trailing spaces   ",
    " leading space",
    "digits 0123456789 3.14159 1e-10 -42",
    "",
    "x",
    "never seen bytes: \u{7f}\u{1}\u{2} and zzzzqqqq",
];

#[test]
fn round_trip_and_special_tokens() {
    let tk = train(400);
    for s in SAMPLES {
        let ids = tk.encode(s).unwrap();
        assert_eq!(
            tk.decode(&ids).unwrap(),
            *s,
            "round trip of {s:?} via {ids:?}"
        );
    }
    // EOS and PAD: distinct, each a single token, ids 0 and 1, skipped by decode.
    assert_ne!(tk.eos_id(), tk.pad_id());
    assert_eq!((tk.eos_id(), tk.pad_id()), (0, 1));
    assert_eq!(tk.encode(EOS_TOKEN).unwrap(), vec![tk.eos_id()]);
    assert_eq!(tk.encode(PAD_TOKEN).unwrap(), vec![tk.pad_id()]);
    let mut ids = tk.encode("the film").unwrap();
    ids.push(tk.eos_id());
    ids.push(tk.pad_id());
    assert_eq!(tk.decode(&ids).unwrap(), "the film");
    // Merges happened: a frequent word is one token, far fewer tokens than bytes.
    let text = "the film is a triumph of style over substance";
    let n = tk.encode(text).unwrap().len();
    assert!(n * 2 < text.len(), "{n} tokens for {} bytes", text.len());
    assert_eq!(
        tk.encode(" the").unwrap().len(),
        1,
        "the most frequent word is one token"
    );
    // Out-of-vocabulary ids are an error, not a panic.
    assert!(matches!(
        tk.decode(&[400]),
        Err(RlhfError::OutOfRange { .. })
    ));
}

#[test]
fn vocab_size_is_honoured() {
    for v in [258usize, 300, 512] {
        assert_eq!(train(v).vocab_size(), v as i64);
    }
    // Too small to hold the byte alphabet and the specials.
    let err = Tokenizer::train_bpe(
        &corpus(),
        &BpeConfig {
            vocab_size: 257,
            min_frequency: 2,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, RlhfError::OutOfRange { ref arg, .. } if arg == "vocab_size"),
        "{err}"
    );
    assert!(Tokenizer::train_bpe(&[], &BpeConfig::default()).is_err());
}

#[test]
fn deterministic_and_save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    train(450).save(&a).unwrap();
    train(450).save(&b).unwrap();
    let (ja, jb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ja, jb, "two trainings gave different tokenizer.json files");
    // The saved file is a GPT-2-style byte-level pipeline.
    let v: serde_json::Value = serde_json::from_slice(&ja).unwrap();
    assert_eq!(v["model"]["type"], "BPE");
    assert_eq!(v["pre_tokenizer"]["type"], "ByteLevel");
    assert_eq!(v["pre_tokenizer"]["add_prefix_space"], false);
    assert_eq!(v["decoder"]["type"], "ByteLevel");
    let loaded = Tokenizer::from_file(&a).unwrap();
    let orig = train(450);
    assert_eq!(loaded.vocab_size(), orig.vocab_size());
    assert_eq!(
        (loaded.eos_id(), loaded.pad_id()),
        (orig.eos_id(), orig.pad_id())
    );
    for s in SAMPLES {
        assert_eq!(loaded.encode(s).unwrap(), orig.encode(s).unwrap());
    }
}

/// Python interpreter with `tokenizers`: `$RLHF_LAB_PYTHON`, else `.venv/bin/python` of the project
/// (or of the main checkout when this is a worktree).
fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("RLHF_LAB_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join(".venv/bin/python"),
            PathBuf::from("/work/main/.venv/bin/python"),
        ])
        .find(|p| p.is_file())
}

#[test]
fn python_tokenizers_encodes_identically() {
    let Some(py) = python() else {
        eprintln!("SKIPPED: no Python with `tokenizers` (set RLHF_LAB_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tk = train(500);
    tk.save(&path).unwrap();
    let script = r#"
import json, sys
from tokenizers import Tokenizer
tk = Tokenizer.from_file(sys.argv[1])
samples = json.load(sys.stdin)
out = [tk.encode(s, add_special_tokens=False).ids for s in samples]
dec = [tk.decode(ids) for ids in out]
print(json.dumps({"ids": out, "decoded": dec, "vocab": tk.get_vocab_size(with_added_tokens=True)}))
"#;
    let mut child = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(SAMPLES).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vocab"], 500);
    for (i, s) in SAMPLES.iter().enumerate() {
        let py_ids: Vec<i64> = serde_json::from_value(v["ids"][i].clone()).unwrap();
        assert_eq!(py_ids, tk.encode(s).unwrap(), "ids of {s:?}");
        assert_eq!(v["decoded"][i], *s, "Python decode of {s:?}");
    }
}
