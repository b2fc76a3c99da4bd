//! Llama decoder (SmolLM2-135M-Instruct) built from GGUF weights, dequantised to f32.
//!
//! Matches HF `transformers` `LlamaForCausalLM` (`modeling_llama.py`) and llama.cpp's `llm_build_llama`:
//!
//! ```text
//! x = embed[input_ids]                                              // (B, T, C)
//! per layer:  h = RMSNorm(x)                                        // LlamaRMSNorm
//!             q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ                          // (B, H, T, D), (B, H_kv, T, D) ×2
//!             q, k = RoPE(q, pos), RoPE(k, pos)                     // rotate_half form
//!             x = x + softmax(q kᵀ/√D + mask) v  Woᵀ                 // GQA: kv head h / (H/H_kv)
//!             x = x + W_down( SiLU(RMSNorm(x) W_gateᵀ) ⊙ RMSNorm(x) W_upᵀ )   // SwiGLU MLP
//! logits = RMSNorm(x) W_outᵀ                                        // (B, T, V); W_out = embed when tied
//! ```
//!
//! **RoPE layout.** llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the rows of
//! `attn_q` / `attn_k` inside every head so that its `ggml_rope` (mode NORM) can rotate *adjacent* pairs
//! `(2i, 2i+1)`: HF row `s·D/2 + i` (s ∈ {0, 1}, i < D/2) is stored at row `2i + s`. [`unpermute_rope`]
//! undoes this at load time, so the HF `rotate_half` rotation (pairs `(i, i + D/2)`) applies unchanged:
//! `q' = q·cos + rotate_half(q)·sin`, `θ_i = base^(−2i/D)`, `cos/sin` of `pos·θ_i` repeated twice.
//!
//! **Masks.** `attention_mask` `(B, T_past + T)` is 0/1 over cached and new tokens; a key is visible to a
//! query when it is not padding and not in the future (`j ≤ T_past + i`). Fully masked rows (queries at
//! left-pad positions) get a uniform softmax over `f32::MIN` scores instead of NaN; their outputs are
//! never read. Position ids come from the caller (`cumsum(mask) − 1`, see
//! [`crate::model::position_ids_from_mask`]).
//!
//! Weights live in a frozen [`nn::VarStore`] (no autograd graph when sampling); call
//! `var_store_mut().unfreeze()` to fine-tune. There is no dropout in Llama (`attention_dropout = 0`), so
//! `train` has no effect.

use super::gguf::{self, GgufFile};
use super::{validate_forward_inputs, CausalLm, KvCache, ScalarHead};
use crate::error::{Result, RlhfError};
use crate::model::tokenizer::Tokenizer;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Hyper-parameters read from the GGUF metadata (`llama.*` keys).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    /// Rows of the embedding / LM head (`llama.vocab_size`, else the token list length).
    pub vocab_size: i64,
    /// `llama.embedding_length` (C).
    pub hidden_size: i64,
    /// `llama.feed_forward_length`.
    pub intermediate_size: i64,
    /// `llama.block_count`.
    pub n_layer: usize,
    /// `llama.attention.head_count` (H).
    pub n_head: i64,
    /// `llama.attention.head_count_kv` (H_kv; = H when absent).
    pub n_kv_head: i64,
    /// C / H (D).
    pub head_dim: i64,
    /// `llama.context_length`.
    pub max_positions: i64,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f64,
    /// `llama.rope.freq_base` (10 000 when absent, llama.cpp's default).
    pub rope_theta: f64,
    /// True when the file has no `output.weight` and the LM head reuses `token_embd.weight`.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Reads and validates the config of a `general.architecture = "llama"` file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let bad = |key: &str, reason: String| {
            RlhfError::format(
                file.path(),
                "GGUF file",
                format!("metadata {key:?}: {reason}"),
            )
        };
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(bad(
                "general.architecture",
                format!("{arch:?} is not supported (only \"llama\")"),
            ));
        }
        let int = |key: &str| -> Result<i64> {
            let v = file.get_u64(key)?;
            i64::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(key, format!("{v} must be a positive integer")))
        };
        let hidden_size = int("llama.embedding_length")?;
        let n_head = int("llama.attention.head_count")?;
        let n_kv_head = if file.metadata.contains_key("llama.attention.head_count_kv") {
            int("llama.attention.head_count_kv")?
        } else {
            n_head
        };
        if hidden_size % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(bad(
                "llama.attention.head_count",
                format!(
                    "embedding {hidden_size} must split into {n_head} heads, a multiple of {n_kv_head} kv heads"
                ),
            ));
        }
        let head_dim = hidden_size / n_head;
        if head_dim % 2 != 0 {
            return Err(bad(
                "llama.attention.head_count",
                format!("head dim {head_dim} must be even for RoPE"),
            ));
        }
        if file.metadata.contains_key("llama.rope.dimension_count") {
            let r = int("llama.rope.dimension_count")?;
            if r != head_dim {
                return Err(bad(
                    "llama.rope.dimension_count",
                    format!("partial RoPE ({r} of {head_dim} dims) is not supported"),
                ));
            }
        }
        let n_tokens = file
            .get_array("tokenizer.ggml.tokens")
            .map(|t| t.len() as i64);
        let vocab_size = if file.metadata.contains_key("llama.vocab_size") {
            int("llama.vocab_size")?
        } else {
            n_tokens?
        };
        let rope_theta = match file.metadata.get("llama.rope.freq_base") {
            Some(_) => file.get_f64("llama.rope.freq_base")?,
            None => 10_000.0,
        };
        let rms_norm_eps = file.get_f64("llama.attention.layer_norm_rms_epsilon")?;
        for (key, v) in [
            ("llama.rope.freq_base", rope_theta),
            ("llama.attention.layer_norm_rms_epsilon", rms_norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(key, format!("{v} must be finite and > 0")));
            }
        }
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: int("llama.feed_forward_length")?,
            n_layer: int("llama.block_count")? as usize,
            n_head,
            n_kv_head,
            head_dim,
            max_positions: int("llama.context_length")?,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: file.tensor_info("output.weight").is_err(),
        })
    }
}

/// Undoes llama.cpp's q/k row permutation (`convert_hf_to_gguf.py`, `LlamaModel.permute`: reshape
/// `(H, 2, D/2, C)` → swap axes 1, 2). `w` `(H·D, C)` in GGUF order → `(H·D, C)` in HF order, where
/// rows `h·D + i` and `h·D + D/2 + i` form the rotated pair `i` of head `h`.
pub fn unpermute_rope(w: &Tensor, n_head: i64) -> Result<Tensor> {
    let (rows, cols) = w.size2()?;
    if n_head <= 0 || rows % (2 * n_head) != 0 {
        return Err(RlhfError::invalid(
            "n_head",
            format!("{rows} rows do not split into {n_head} heads of even size"),
        ));
    }
    let half = rows / n_head / 2;
    Ok(w.f_reshape([n_head, half, 2, cols])?
        .transpose(1, 2)
        .f_reshape([rows, cols])?)
}

struct Layer {
    attn_norm: Tensor, // (C,)
    wq: Tensor,        // (H·D, C), HF row order
    wk: Tensor,        // (H_kv·D, C), HF row order
    wv: Tensor,        // (H_kv·D, C)
    wo: Tensor,        // (C, H·D)
    ffn_norm: Tensor,  // (C,)
    w_gate: Tensor,    // (F, C)
    w_up: Tensor,      // (F, C)
    w_down: Tensor,    // (C, F)
}

/// The Llama decoder. See the module docs for the computation.
pub struct Llama {
    cfg: LlamaConfig,
    vs: nn::VarStore,
    embed: Tensor, // (V, C)
    layers: Vec<Layer>,
    norm: Tensor,     // (C,)
    lm_head: Tensor,  // (V, C), the same tensor as `embed` when tied
    inv_freq: Tensor, // (D/2,) base^(−2i/D)
    /// The RLHF heads (not in the GGUF file): freshly initialised as the GPT's
    /// ([`crate::model::RlhfLm`]), trainable.
    value_head: ScalarHead,
    score_head: ScalarHead,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("cfg", &self.cfg).finish()
    }
}

/// LlamaRMSNorm: `x · rsqrt(mean(x², −1) + ε) · w`, in f32. `x` `(…, C)`, `w` `(C,)`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    x * (var + eps).rsqrt() * w
}

/// HF `rotate_half`: `(x₁, x₂) → (−x₂, x₁)` over the two halves of the last dim.
fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[x.dim() - 1];
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// HF `repeat_kv`: `(B, H_kv, S, D)` → `(B, H_kv·n_rep, S, D)`, kv head `h` serving query heads
/// `h·n_rep … h·n_rep + n_rep − 1`.
fn repeat_kv(x: &Tensor, n_rep: i64) -> Tensor {
    if n_rep == 1 {
        return x.shallow_clone();
    }
    let (b, h, s, d) = x.size4().unwrap_or((0, 0, 0, 0));
    x.unsqueeze(2)
        .expand([b, h, n_rep, s, d], false)
        .reshape([b, h * n_rep, s, d])
}

impl Llama {
    /// Loads model and tokenizer from a GGUF file onto `device`.
    pub fn from_gguf(path: impl AsRef<Path>, device: Device) -> Result<(Llama, Tokenizer)> {
        let file = GgufFile::open(path)?;
        let tok = gguf::tokenizer(&file)?;
        let model = Self::from_gguf_file(&file, device)?;
        if tok.vocab_size() != model.cfg.vocab_size {
            return Err(RlhfError::format(
                file.path(),
                "GGUF file",
                format!(
                    "tokenizer has {} tokens but the embedding has {} rows",
                    tok.vocab_size(),
                    model.cfg.vocab_size
                ),
            ));
        }
        Ok((model, tok))
    }

    /// Builds the model from a parsed GGUF file (weights dequantised to f32).
    pub fn from_gguf_file(file: &GgufFile, device: Device) -> Result<Llama> {
        let cfg = LlamaConfig::from_gguf(file)?;
        let (c, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (hd, kvd) = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim);
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let load = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = file.tensor(name, Device::Cpu)?;
            if t.size() != shape {
                return Err(RlhfError::format(
                    file.path(),
                    "GGUF file",
                    format!(
                        "tensor {name:?} has shape {:?}, expected {shape:?}",
                        t.size()
                    ),
                ));
            }
            Ok(t)
        };
        let var = |name: &str, t: Tensor| root.var_copy(&name.replace('.', "_"), &t);
        let embed = var("token_embd.weight", load("token_embd.weight", &[v, c])?);
        let lm_head = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            var("output.weight", load("output.weight", &[v, c])?)
        };
        let norm = var("output_norm.weight", load("output_norm.weight", &[c])?);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let lv =
                |s: &str, shape: &[i64]| -> Result<Tensor> { Ok(var(&n(s), load(&n(s), shape)?)) };
            layers.push(Layer {
                attn_norm: lv("attn_norm", &[c])?,
                wq: var(
                    &n("attn_q"),
                    unpermute_rope(&load(&n("attn_q"), &[hd, c])?, cfg.n_head)?,
                ),
                wk: var(
                    &n("attn_k"),
                    unpermute_rope(&load(&n("attn_k"), &[kvd, c])?, cfg.n_kv_head)?,
                ),
                wv: lv("attn_v", &[kvd, c])?,
                wo: lv("attn_output", &[c, hd])?,
                ffn_norm: lv("ffn_norm", &[c])?,
                w_gate: lv("ffn_gate", &[f, c])?,
                w_up: lv("ffn_up", &[f, c])?,
                w_down: lv("ffn_down", &[c, f])?,
            });
        }
        vs.freeze();
        // The value and score heads come after the freeze: they are the trainable part of a frozen
        // base (RLHF heads on SmolLM2), `N(0, 1/(C+1))` from libtorch's generator like the GPT's.
        let value_head = ScalarHead::new(&vs.root().sub("value_head"), c)?;
        let score_head = ScalarHead::new(&vs.root().sub("score_head"), c)?;
        let d = cfg.head_dim;
        let inv_freq = (Tensor::arange_start_step(0, d, 2, (Kind::Double, device)) / d as f64
            * -(cfg.rope_theta.ln()))
        .exp()
        .to_kind(Kind::Float);
        Ok(Llama {
            cfg,
            vs,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            value_head,
            score_head,
        })
    }

    /// The config read from the file.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The variables (frozen after loading).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access, e.g. to `unfreeze()` for fine-tuning.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }

    fn max_positions(&self) -> i64 {
        self.cfg.max_positions
    }

    fn n_layer(&self) -> usize {
        self.cfg.n_layer
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        _train: bool,
    ) -> Result<Tensor> {
        let hidden = self.hidden(input_ids, attention_mask, position_ids, cache)?;
        Ok(hidden.linear::<Tensor>(&self.lm_head, None)) // (B, T, V)
    }
}

impl Llama {
    /// The decoder stack up to the final RMSNorm: hidden states `(B, T, C)`.
    fn hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let dev = self.device();
        let inp = validate_forward_inputs(
            input_ids,
            attention_mask,
            position_ids,
            cache.as_deref(),
            self.cfg.n_layer,
            self.cfg.vocab_size,
            self.cfg.max_positions,
            dev,
        )?;
        let (b, t, past) = (inp.batch, inp.t, inp.t_past);
        let cfg = &self.cfg;
        let (h, hkv, d, c) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.hidden_size);
        let s = past + t;
        let (input_ids, position_ids) = (&inp.input_ids, &inp.position_ids);
        // Visible keys (B, 1, T, S): not padding, and key j ≤ query position T_past + i.
        let key_ok = inp.key_mask.view([b, 1, 1, s]);
        let kpos = Tensor::arange(s, (Kind::Int64, dev)).view([1, s]);
        let qpos = (Tensor::arange(t, (Kind::Int64, dev)) + past).view([t, 1]);
        let causal = kpos.le_tensor(&qpos).view([1, 1, t, s]);
        let hidden = key_ok.logical_and(&causal).logical_not(); // (B, 1, T, S) true = masked
                                                                // RoPE angles (B, 1, T, D): pos · θ_i, repeated for both halves.
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // (B, T, D/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let rope = |x: &Tensor| x * &cos + rotate_half(x) * &sin;
        let scale = 1.0 / (d as f64).sqrt();

        let mut x = Tensor::embedding(&self.embed, input_ids, -1, false, false); // (B, T, C)
        for (l, layer) in self.layers.iter().enumerate() {
            let hn = rms_norm(&x, &layer.attn_norm, cfg.rms_norm_eps);
            let q = hn
                .linear::<Tensor>(&layer.wq, None)
                .view([b, t, h, d])
                .transpose(1, 2);
            let k = hn
                .linear::<Tensor>(&layer.wk, None)
                .view([b, t, hkv, d])
                .transpose(1, 2);
            let v = hn
                .linear::<Tensor>(&layer.wv, None)
                .view([b, t, hkv, d])
                .transpose(1, 2);
            let (q, mut k, mut v) = (rope(&q), rope(&k), v); // (B, H, T, D), (B, H_kv, T, D) ×2
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &cache.layers[l] {
                    k = Tensor::cat(&[pk, &k], 2); // (B, H_kv, S, D)
                    v = Tensor::cat(&[pv, &v], 2);
                }
                cache.layers[l] = Some((k.shallow_clone(), v.shallow_clone()));
            }
            let (k, v) = (repeat_kv(&k, h / hkv), repeat_kv(&v, h / hkv)); // (B, H, S, D)
            let att = (q.matmul(&k.transpose(-2, -1)) * scale) // (B, H, T, S)
                .masked_fill(&hidden, f64::from(f32::MIN))
                .softmax(-1, Kind::Float);
            let y = att.matmul(&v).transpose(1, 2).contiguous().view([b, t, c]); // (B, T, C)
            x = x + y.linear::<Tensor>(&layer.wo, None);
            let hn = rms_norm(&x, &layer.ffn_norm, cfg.rms_norm_eps);
            let gate = hn.linear::<Tensor>(&layer.w_gate, None).silu(); // (B, T, F)
            let up = hn.linear::<Tensor>(&layer.w_up, None);
            x = x + (gate * up).linear::<Tensor>(&layer.w_down, None);
        }
        Ok(rms_norm(&x, &self.norm, cfg.rms_norm_eps)) // (B, T, C)
    }

    fn check_hidden(&self, hidden: &Tensor) -> Result<()> {
        crate::core::check::float("hidden", hidden)?;
        if hidden.dim() != 3 || hidden.size()[2] != self.cfg.hidden_size {
            return Err(RlhfError::shape(
                "hidden",
                hidden.size(),
                format!("(B, T, C = {})", self.cfg.hidden_size),
            ));
        }
        Ok(())
    }
}

impl crate::model::RlhfLm for Llama {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: Option<&mut KvCache>,
        _train: bool,
    ) -> Result<Tensor> {
        self.hidden(input_ids, attention_mask, position_ids, cache)
    }
    fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        Ok(hidden.linear::<Tensor>(&self.lm_head, None))
    }
    fn values(&self, hidden: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        Ok(self.value_head.forward(hidden))
    }
    fn scores(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        let at_last = crate::model::hidden_at_last_token(hidden, attention_mask)?; // (B, C)
        Ok(self.score_head.forward(&at_last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_gguf_permutation() {
        // HF rows 0..8 for 2 heads of D = 4: GGUF stores row h·D + 2i + s = HF row h·D + s·D/2 + i.
        let hf = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([8, 1]);
        let gguf_order = [0i64, 2, 1, 3, 4, 6, 5, 7];
        let gg = hf.index_select(0, &Tensor::from_slice(&gguf_order));
        let back = unpermute_rope(&gg, 2).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(back.flatten(0, -1)).unwrap(),
            (0..8).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert!(unpermute_rope(&gg, 3).is_err());
    }

    #[test]
    fn rotate_half_and_repeat_kv() {
        let x = Tensor::from_slice(&[1f32, 2., 3., 4.]);
        assert_eq!(
            Vec::<f32>::try_from(rotate_half(&x)).unwrap(),
            [-3., -4., 1., 2.]
        );
        let kv = Tensor::arange(2, (Kind::Float, Device::Cpu)).view([1, 2, 1, 1]);
        let r = repeat_kv(&kv, 3).flatten(0, -1);
        assert_eq!(Vec::<f32>::try_from(r).unwrap(), [0., 0., 0., 1., 1., 1.]);
    }
}
