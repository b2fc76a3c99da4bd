//! Leave with the policy: `rlhf-lab export` writes the latest checkpoint of any GPT run (SFT, and the
//! reward-model / DPO / PPO runs that share its checkpoint layout: `checkpoints/latest.json` → a
//! checkpoint directory with `model.safetensors` + `config.json`, `tokenizer.json` at the run root) as a
//! Hugging Face GPT-2 folder that `transformers` loads with `GPT2LMHeadModel.from_pretrained` and
//! `AutoTokenizer.from_pretrained` (tests/export.rs loads one in Python and compares logits and ids):
//!
//! * `config.json` — a complete `GPT2Config` (the keys `GPT2Config().to_json_string()` writes in
//!   transformers 4.57, `architectures: ["GPT2LMHeadModel"]`, `model_type: "gpt2"`, EOS as BOS, our
//!   PAD as `pad_token_id`, `tie_word_embeddings: true`);
//! * `model.safetensors` — the `transformer.*` tensors under HF's names, f32, with the safetensors
//!   metadata `{"format": "pt"}` that `save_pretrained` writes. The LM head is tied to `wte` and, as in
//!   the files `GPT2LMHeadModel.save_pretrained` writes, not stored (`lm_head.weight` is in
//!   `_tied_weights_keys`, re-tied on load). Our `value_head.*` / `score_head.*` are dropped unless
//!   `heads` is set; then they are kept under their names as extra tensors, which `transformers`
//!   reports as unexpected keys and ignores (tested: the folder still loads);
//! * `tokenizer.json` (the run's, unchanged), `tokenizer_config.json` (`PreTrainedTokenizerFast`, EOS
//!   as BOS/EOS/UNK as in GPT-2, our PAD, `model_max_length = n_positions`) and
//!   `special_tokens_map.json`.
//!
//! The export also loads back here: [`crate::model::gpt::Gpt::from_pretrained_dir`] reads it, and
//! [`Tokenizer::from_file`] takes EOS/PAD from its `tokenizer_config.json`.

use crate::error::{Result, RlhfError};
use crate::model::gpt::{GptConfig, CONFIG_FILE, SCORE_HEAD, VALUE_HEAD, WEIGHTS_FILE};
use crate::model::tokenizer::Tokenizer;
use crate::train::lm::LoadedLm;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The transformers version whose `GPT2Config` keys `config.json` follows.
pub const HF_TRANSFORMERS_VERSION: &str = "4.57.6";

/// What [`export_hf`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// The checkpoint directory exported.
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    /// Tensors written to `model.safetensors`.
    pub tensors: usize,
    pub parameters: i64,
    pub vocab_size: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    /// Whether the value / score heads were kept as extra tensors.
    pub heads: bool,
}

/// The HF `GPT2Config` JSON of `cfg` with the tokenizer's special ids.
pub fn hf_config_json(cfg: &GptConfig, eos_id: i64, pad_id: i64) -> serde_json::Value {
    json!({
        "activation_function": cfg.activation_function,
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": cfg.attn_pdrop,
        "bos_token_id": eos_id,
        "embd_pdrop": cfg.embd_pdrop,
        "eos_token_id": eos_id,
        "initializer_range": cfg.initializer_range,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "model_type": "gpt2",
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "n_layer": cfg.n_layer,
        "n_positions": cfg.n_positions,
        "pad_token_id": pad_id,
        "reorder_and_upcast_attn": false,
        "resid_pdrop": cfg.resid_pdrop,
        "scale_attn_by_inverse_layer_idx": false,
        "scale_attn_weights": true,
        "summary_activation": null,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": true,
        "summary_type": "cls_index",
        "summary_use_proj": true,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "transformers_version": HF_TRANSFORMERS_VERSION,
        "use_cache": true,
        "vocab_size": cfg.vocab_size,
    })
}

fn token_name(tok: &Tokenizer, id: i64) -> Result<String> {
    tok.inner()
        .id_to_token(id as u32)
        .ok_or_else(|| RlhfError::invalid("tokenizer", format!("id {id} has no token")))
}

/// Writes the latest checkpoint of `run_dir` as an HF GPT-2 folder `out` (created if needed; files of
/// the same names are replaced atomically). `heads`: keep the value/score heads as extra tensors.
/// Errors: `run` names a missing run directory or one without a checkpoint, `out` a folder inside the
/// run directory; a broken checkpoint is the loader's typed error.
pub fn export_hf(run_dir: &Path, out: &Path, heads: bool) -> Result<ExportSummary> {
    let lm = LoadedLm::from_run(run_dir, "run", Device::Cpu)?;
    // Never write HF files into the run itself (its tokenizer.json and checkpoints live there).
    if let (Ok(r), Some(o)) = (run_dir.canonicalize(), resolved(out)) {
        if o.starts_with(&r) {
            return Err(RlhfError::invalid(
                "out",
                format!(
                    "{} is inside the run directory {}",
                    out.display(),
                    run_dir.display()
                ),
            ));
        }
    }
    let cfg = lm.config().clone();
    let tok = &lm.tokenizer;
    let (eos_id, pad_id) = (tok.eos_id(), tok.pad_id());
    let (eos, pad) = (token_name(tok, eos_id)?, token_name(tok, pad_id)?);
    std::fs::create_dir_all(out).map_err(|e| RlhfError::io(out, e))?;

    let is_head = |n: &str| {
        n.starts_with(&format!("{VALUE_HEAD}.")) || n.starts_with(&format!("{SCORE_HEAD}."))
    };
    let named: BTreeMap<String, Tensor> = lm
        .vs
        .variables()
        .into_iter()
        .filter(|(n, _)| heads || !is_head(n))
        .collect();
    let named: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(tch::Kind::Float)))
        .collect();
    let parameters = named.iter().map(|(_, t)| t.numel() as i64).sum();
    save_tensors_pt(&out.join(WEIGHTS_FILE), &named)?;

    crate::io::write_json(out.join(CONFIG_FILE), &hf_config_json(&cfg, eos_id, pad_id))?;
    tok.save(out.join("tokenizer.json"))?;
    crate::io::write_json(
        out.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eos,
            "eos_token": eos,
            "unk_token": eos,
            "pad_token": pad,
            "model_max_length": cfg.n_positions,
            "clean_up_tokenization_spaces": false,
        }),
    )?;
    crate::io::write_json(
        out.join("special_tokens_map.json"),
        &json!({ "bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": pad }),
    )?;
    Ok(ExportSummary {
        checkpoint: lm.source.clone(),
        out: out.to_path_buf(),
        tensors: named.len(),
        parameters,
        vocab_size: cfg.vocab_size,
        eos_id,
        pad_id,
        heads,
    })
}

/// `p` made absolute with symlinks resolved, also when it does not exist yet: its nearest existing
/// ancestor canonicalised, plus the remaining components.
fn resolved(p: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        let probe = if cur.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            cur.clone()
        };
        if let Ok(mut c) = probe.canonicalize() {
            c.extend(rest.iter().rev());
            return Some(c);
        }
        rest.push(cur.file_name()?.to_os_string());
        cur = cur.parent()?.to_path_buf();
    }
}

/// Writes `named` (f32) as safetensors with the `{"format": "pt"}` metadata of `save_pretrained`,
/// atomically. The format (huggingface/safetensors README): an 8-byte little-endian header length, a
/// JSON header `{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`
/// padded with spaces to a multiple of 8 bytes, then the little-endian data of every tensor.
fn save_tensors_pt(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in named {
        let t = t
            .to_device(Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let values = Vec::<f32>::try_from(t.flatten(0, -1))?;
        let begin = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            json!({ "dtype": "F32", "shape": t.size(), "data_offsets": [begin, data.len()] }),
        );
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| RlhfError::format(path, "safetensors header", e))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + head.len() + data.len());
    bytes.extend((head.len() as u64).to_le_bytes());
    bytes.extend(head);
    bytes.extend(data);
    crate::io::atomic_write(path, &bytes)
}
