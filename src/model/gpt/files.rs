//! The GPT's files: our checkpoint directories (`config.json` + `model.safetensors`, written
//! atomically) and Hugging Face GPT-2 directories (`GPT2Config` JSON + `GPT2LMHeadModel` safetensors),
//! kept apart from the architecture in [`super`]. Never pickles: safetensors only.

use super::{
    default_activation, default_init_range, default_ln_eps, Gpt, GptConfig, CONFIG_FILE,
    SCORE_HEAD, TRANSFORMER_PREFIX, VALUE_HEAD, WEIGHTS_FILE,
};
use crate::error::{Result, RlhfError};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Reads a JSON config file: a missing file is [`RlhfError::Io`], bad JSON or a field of the wrong
/// type/name is [`RlhfError::Config`] naming the file. Returns the value and the file name.
fn read_config_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| RlhfError::io(path, e))?;
    let source = path.display().to_string();
    let value = serde_json::from_str(&text).map_err(|e| RlhfError::Config {
        source_name: source.clone(),
        reason: e.to_string(),
    })?;
    Ok((value, source))
}

impl GptConfig {
    /// Reads our own `config.json` strictly (unknown fields are errors) and validates it. A missing
    /// file is [`RlhfError::Io`]; bad JSON, an unknown or mistyped field, or an invalid value is
    /// [`RlhfError::Config`] naming the file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let (cfg, source): (GptConfig, String) = read_config_json(path.as_ref())?;
        cfg.validate_as(&source)?;
        Ok(cfg)
    }

    /// Reads an HF GPT-2 `config.json` (as written by `GPT2Config.save_pretrained`). Keys that do not
    /// change the forward pass (`bos_token_id`, `summary_*`, `transformers_version`, …) are ignored;
    /// missing keys take HF `GPT2Config` defaults. Options we do not implement are rejected:
    /// `scale_attn_weights = false`, `scale_attn_by_inverse_layer_idx = true`,
    /// `add_cross_attention = true`, `tie_word_embeddings = false`, a `model_type` other than `gpt2`.
    /// (`reorder_and_upcast_attn` only changes f16 numerics and is ignored.)
    pub fn from_hf_config_json(path: impl AsRef<Path>) -> Result<Self> {
        let (hf, source): (HfGpt2Config, String) = read_config_json(path.as_ref())?;
        let bad = |reason: &str| {
            Err(RlhfError::Config {
                source_name: source.clone(),
                reason: reason.to_string(),
            })
        };
        if let Some(mt) = &hf.model_type {
            if mt != "gpt2" {
                return bad(&format!("`model_type` = {mt:?}, expected \"gpt2\""));
            }
        }
        if !hf.scale_attn_weights {
            return bad("`scale_attn_weights` = false is not supported (scores are divided by √D)");
        }
        if hf.scale_attn_by_inverse_layer_idx {
            return bad("`scale_attn_by_inverse_layer_idx` = true is not supported");
        }
        if hf.add_cross_attention {
            return bad("`add_cross_attention` = true is not supported (decoder-only)");
        }
        if !hf.tie_word_embeddings {
            return bad("`tie_word_embeddings` = false is not supported (LM head = wteᵀ)");
        }
        let cfg = GptConfig {
            vocab_size: hf.vocab_size,
            n_positions: hf.n_positions,
            n_embd: hf.n_embd,
            n_layer: hf.n_layer,
            n_head: hf.n_head,
            n_inner: hf.n_inner,
            activation_function: hf.activation_function,
            resid_pdrop: hf.resid_pdrop,
            embd_pdrop: hf.embd_pdrop,
            attn_pdrop: hf.attn_pdrop,
            layer_norm_epsilon: hf.layer_norm_epsilon,
            initializer_range: hf.initializer_range,
        };
        cfg.validate_as(&source)?;
        Ok(cfg)
    }
}

/// The keys of HF `GPT2Config` that matter here, with HF's defaults (`configuration_gpt2.py`).
#[derive(Deserialize)]
struct HfGpt2Config {
    #[serde(default = "hf_vocab")]
    vocab_size: i64,
    #[serde(default = "hf_n_positions")]
    n_positions: i64,
    #[serde(default = "hf_n_embd")]
    n_embd: i64,
    #[serde(default = "hf_n_layer")]
    n_layer: i64,
    #[serde(default = "hf_n_head")]
    n_head: i64,
    #[serde(default)]
    n_inner: Option<i64>,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "hf_pdrop")]
    resid_pdrop: f64,
    #[serde(default = "hf_pdrop")]
    embd_pdrop: f64,
    #[serde(default = "hf_pdrop")]
    attn_pdrop: f64,
    #[serde(default = "default_ln_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    initializer_range: f64,
    #[serde(default = "hf_true")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
    #[serde(default = "hf_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    model_type: Option<String>,
}
fn hf_vocab() -> i64 {
    50257
}
fn hf_n_positions() -> i64 {
    1024
}
fn hf_n_embd() -> i64 {
    768
}
fn hf_n_layer() -> i64 {
    12
}
fn hf_n_head() -> i64 {
    12
}
fn hf_pdrop() -> f64 {
    0.1
}
fn hf_true() -> bool {
    true
}

impl Gpt {
    /// Builds a model under a fresh [`nn::VarStore`] on `device` from an HF GPT-2 directory holding
    /// `config.json` ([`GptConfig::from_hf_config_json`]) and `model.safetensors` (as written by
    /// `GPT2LMHeadModel.save_pretrained(dir, safe_serialization=True)` or `GPT2Model`'s, i.e. with or
    /// without the `transformer.` prefix). Every GPT-2 tensor must be present with the right shape
    /// (else [`RlhfError::Format`] naming it); tensors are cast to f32. Ignored: the causal-mask
    /// buffers `h.{i}.attn.bias` / `attn.masked_bias` of older files, and `lm_head.weight` if it
    /// equals `wte.weight` (tied; an untied head is an error). `value_head` / `score_head` are loaded
    /// if present, otherwise they keep their fresh initialisation (HF files have none); call
    /// `tch::manual_seed` first for determinism. Unknown tensors are an error.
    pub fn from_pretrained_dir(
        dir: impl AsRef<Path>,
        device: Device,
    ) -> Result<(nn::VarStore, Gpt)> {
        let dir = dir.as_ref();
        let cfg = GptConfig::from_hf_config_json(dir.join(CONFIG_FILE))?;
        let weights = dir.join(WEIGHTS_FILE);
        let named = crate::io::load_tensors(&weights)?;
        let vs = nn::VarStore::new(device);
        let gpt = Gpt::new(&vs.root(), cfg)?;
        let mut lm_head = None;
        let mut renamed = Vec::with_capacity(named.len());
        for (name, tensor) in named {
            let is_buffer = name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
            if is_buffer {
                continue;
            }
            if name == "lm_head.weight" {
                lm_head = Some(tensor);
                continue;
            }
            let is_body = ["wte.", "wpe.", "h.", "ln_f."]
                .iter()
                .any(|p| name.starts_with(p));
            let name = if is_body {
                format!("{TRANSFORMER_PREFIX}.{name}")
            } else {
                name
            };
            renamed.push((name, tensor));
        }
        copy_into(&vs, renamed, &weights, true)?;
        if let Some(head) = lm_head {
            let tied = head.size() == gpt.wte.size()
                && head
                    .to_device(device)
                    .to_kind(Kind::Float)
                    .equal(&gpt.wte.detach());
            if !tied {
                return Err(RlhfError::format(
                    &weights,
                    "GPT-2 safetensors file",
                    "`lm_head.weight` differs from `wte.weight`; only tied LM heads are supported",
                ));
            }
        }
        Ok((vs, gpt))
    }

    /// Loads a checkpoint written by [`save_model`]: `dir/config.json` (strict [`GptConfig`]) and
    /// `dir/model.safetensors`, which must hold exactly the model's tensors (names, shapes) —
    /// missing, extra or mis-shaped tensors are [`RlhfError::Format`] naming them. A missing
    /// directory or file is [`RlhfError::Io`], a truncated/corrupt file [`RlhfError::Format`], a bad
    /// config [`RlhfError::Config`].
    pub fn load_model(dir: impl AsRef<Path>, device: Device) -> Result<(nn::VarStore, Gpt)> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(RlhfError::io(dir, "checkpoint directory does not exist"));
        }
        let cfg = GptConfig::from_json_file(dir.join(CONFIG_FILE))?;
        let weights = dir.join(WEIGHTS_FILE);
        let named = crate::io::load_tensors(&weights)?;
        let vs = nn::VarStore::new(device);
        let gpt = Gpt::new(&vs.root(), cfg)?;
        copy_into(&vs, named, &weights, false)?;
        Ok((vs, gpt))
    }
}

/// Writes a checkpoint: every variable of `vs` to `dir/model.safetensors` (names as in the store, f32)
/// and `cfg` to `dir/config.json`, each atomically ([`crate::io::save_tensors`],
/// [`crate::io::write_json`]). The model must sit at the root of `vs` (as built by
/// `Gpt::new(&vs.root(), …)`, [`Gpt::from_pretrained_dir`] or [`Gpt::load_model`]) for
/// [`Gpt::load_model`] to read it back. The tensor names are HF's (`transformer.h.0.…`), so the
/// weights file also loads in `transformers` (the heads are reported as unexpected keys there).
pub fn save_model(dir: impl AsRef<Path>, vs: &nn::VarStore, cfg: &GptConfig) -> Result<()> {
    let dir = dir.as_ref();
    cfg.validate()?;
    let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let named: Vec<(String, Tensor)> = named.into_iter().collect();
    crate::io::save_tensors(dir.join(WEIGHTS_FILE), &named)?;
    crate::io::write_json(dir.join(CONFIG_FILE), cfg)
}

/// Copies `named` tensors into the variables of `vs` (no grad). `heads_optional`: the value/score
/// heads may be missing (HF files). Missing, unknown and mis-shaped tensors are Format errors about
/// `path`.
fn copy_into(
    vs: &nn::VarStore,
    named: Vec<(String, Tensor)>,
    path: &Path,
    heads_optional: bool,
) -> Result<()> {
    let what = "GPT checkpoint (safetensors)";
    let vars = vs.variables();
    let mut seen = BTreeSet::new();
    let mut unknown = Vec::new();
    for (name, src) in named {
        let Some(var) = vars.get(&name) else {
            unknown.push(name);
            continue;
        };
        if src.size() != var.size() {
            return Err(RlhfError::format(
                path,
                what,
                format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    src.size(),
                    var.size()
                ),
            ));
        }
        if !matches!(
            src.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(RlhfError::format(
                path,
                what,
                format!(
                    "tensor `{name}` has dtype {:?}, expected a float type",
                    src.kind()
                ),
            ));
        }
        let mut dst = var.shallow_clone();
        tch::no_grad(|| dst.f_copy_(&src))
            .map_err(|e| RlhfError::format(path, what, format!("tensor `{name}`: {e}")))?;
        seen.insert(name);
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(RlhfError::format(
            path,
            what,
            format!("unexpected tensor(s) {unknown:?}"),
        ));
    }
    let mut missing: Vec<&String> = vars
        .keys()
        .filter(|n| !seen.contains(*n))
        .filter(|n| {
            let is_head = n.starts_with(&format!("{VALUE_HEAD}."))
                || n.starts_with(&format!("{SCORE_HEAD}."));
            !(heads_optional && is_head)
        })
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(RlhfError::format(
            path,
            what,
            format!("missing tensor(s) {missing:?}"),
        ));
    }
    Ok(())
}
