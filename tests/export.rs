//! `rlhf-lab export`: a tiny trained GPT (20 steps of configs/sft-tiny.toml) written as a Hugging Face
//! GPT-2 folder loads in Python `transformers` (`GPT2LMHeadModel.from_pretrained`,
//! `AutoTokenizer.from_pretrained`, via tests/golden/check_export.py) with the same token ids and
//! logits within 1e-4, loads back here (`Gpt::from_pretrained_dir`) bit-identically, and bad runs are
//! typed errors (exit 2 from the CLI).

mod common;
use rlhf_lab::model::gpt::Gpt;
use rlhf_lab::model::CausalLm;
use rlhf_lab::tokenizer::Tokenizer;
use rlhf_lab::train::export::export_hf;
use rlhf_lab::train::lm::LoadedLm;
use rlhf_lab::train::sft::{run_sft, ResumeMode, SftConfig, SftOptions};
use rlhf_lab::RlhfError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/setup.sh (needs transformers)",
        p.display()
    );
    p
}

/// A tiny SFT run (20 steps) in `dir`.
fn tiny_run(dir: &Path) {
    let mut cfg = SftConfig::from_file(root().join("configs/sft-tiny.toml")).unwrap();
    cfg.optim.max_steps = 20;
    run_sft(
        &cfg,
        &SftOptions {
            out_dir: Some(dir.to_path_buf()),
            resume: ResumeMode::Fresh,
            ..Default::default()
        },
    )
    .expect("tiny SFT run");
}

fn logits_of(model: &dyn CausalLm, ids: &[i64]) -> Tensor {
    let t = ids.len() as i64;
    let x = Tensor::from_slice(ids).view([1, t]);
    let mask = Tensor::ones([1, t], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).view([1, t]);
    tch::no_grad(|| model.forward(&x, &mask, &pos, None, false)).unwrap()
}

const TEXTS: [&str; 4] = [
    "A great film, truly moving.",
    "rotten: dull and   overlong!",
    "Ça va — naïve café ☕ 1999",
    " the",
];

#[test]
fn export_loads_in_transformers_with_identical_ids_and_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("sft");
    tiny_run(&run);
    let (hf, hf_heads) = (tmp.path().join("hf"), tmp.path().join("hf-heads"));
    let s = export_hf(&run, &hf, false).unwrap();
    assert!(!s.heads);
    let s_heads = export_hf(&run, &hf_heads, true).unwrap();
    assert_eq!(s_heads.tensors, s.tensors + 4, "value/score weight + bias");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(hf.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value = rlhf_lab::io::read_json(hf.join("config.json")).unwrap();
    assert_eq!(cfg["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(cfg["model_type"], "gpt2");

    // The trained model and its tokenizer, as the run has them.
    let lm = LoadedLm::from_run(&run, "run", Device::Cpu).unwrap();
    assert_eq!(s.eos_id, lm.tokenizer.eos_id());
    assert_eq!(s.pad_id, lm.tokenizer.pad_id());

    // Loads back here: same logits bit for bit; the tokenizer keeps EOS / PAD.
    let (_vs, back) = Gpt::from_pretrained_dir(&hf, Device::Cpu).unwrap();
    let tok_back = Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    assert_eq!((tok_back.eos_id(), tok_back.pad_id()), (s.eos_id, s.pad_id));
    let ids0 = lm.tokenizer.encode(TEXTS[0]).unwrap();
    assert!(logits_of(&lm.model, &ids0).equal(&logits_of(&back, &ids0)));

    // Python transformers.
    let texts_json = tmp.path().join("texts.json");
    std::fs::write(&texts_json, serde_json::to_string(&TEXTS).unwrap()).unwrap();
    let py_out = tmp.path().join("py");
    let script = root().join("tests/golden/check_export.py");
    let status = std::process::Command::new(python())
        .arg(&script)
        .arg(&texts_json)
        .arg(&py_out)
        .arg(&hf)
        .arg(&hf_heads)
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", script.display());

    for k in 0..2 {
        let info: serde_json::Value =
            rlhf_lab::io::read_json(py_out.join(format!("{k}.json"))).unwrap();
        assert_eq!(info["missing_keys"], serde_json::json!([]), "{info}");
        assert_eq!(info["mismatched_keys"], serde_json::json!([]), "{info}");
        let unexpected = if k == 0 {
            serde_json::json!([])
        } else {
            serde_json::json!([
                "score_head.bias",
                "score_head.weight",
                "value_head.bias",
                "value_head.weight"
            ])
        };
        assert_eq!(info["unexpected_keys"], unexpected, "{info}");
        assert_eq!(info["lm_head_tied"], true);
        assert_eq!(info["eos_token_id"], s.eos_id);
        assert_eq!(info["pad_token_id"], s.pad_id);
        assert_eq!(info["config_pad_token_id"], s.pad_id);
        assert_eq!(
            info["decode_roundtrip"],
            serde_json::json!([true, true, true, true])
        );
        assert_eq!(info["generated_tokens"], 4);

        let theirs = rlhf_lab::io::load_tensors(py_out.join(format!("{k}.safetensors"))).unwrap();
        let get = |name: &str| {
            theirs
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .1
                .shallow_clone()
        };
        let mut worst: f64 = 0.0;
        for (i, text) in TEXTS.iter().enumerate() {
            let ours_ids = lm.tokenizer.encode(text).unwrap();
            let their_ids = Vec::<i64>::try_from(get(&format!("ids_{i}")).view([-1])).unwrap();
            assert_eq!(ours_ids, their_ids, "token ids of {text:?}");
            let ours = logits_of(&lm.model, &ours_ids);
            let their = get(&format!("logits_{i}"));
            assert_eq!(ours.size(), their.size());
            worst = worst.max(common::max_abs_diff(&ours, &their));
        }
        println!("export {k}: transformers vs rlhf-lab max |Δlogits| = {worst:.3e}");
        assert!(worst <= 1e-4, "max |Δlogits| = {worst}");
    }
}

#[test]
fn bad_runs_are_typed_errors_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = export_hf(&missing, &tmp.path().join("out"), false).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Invalid { arg, .. } if arg == "run"),
        "{e}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = export_hf(&empty, &tmp.path().join("out"), false).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Invalid { arg, .. } if arg == "run"),
        "{e}"
    );
    // A folder inside the run is refused (the run's own files live there).
    let run = tmp.path().join("sft");
    tiny_run(&run);
    let e = export_hf(&run, &run.join("hf"), false).unwrap_err();
    assert!(
        matches!(&e, RlhfError::Invalid { arg, .. } if arg == "out"),
        "{e}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf-lab"))
        .args(["export", "--run"])
        .arg(&missing)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`run`"), "{err}");
}
