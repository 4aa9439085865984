//! A Llama-style decoder behind the same trait, proving the trainer is architecture-agnostic: pre-norm RMSNorm
//! blocks, rotary position embeddings (no learned positions), a SwiGLU MLP, and no biases anywhere.
//!
//! References: "LLaMA: Open and Efficient Foundation Language Models" (Touvron et al. 2023), RoFormer (Su et al.
//! 2021), "GLU Variants Improve Transformer" (Shazeer 2020); HF transformers' `modeling_llama.py`, whose parameter
//! names (minus the `model.` prefix) and rotate-half rotary layout this uses.
//!
//! Choices, so it trains on the same shards and budget as GPT-2 of the same (L, NH, C):
//! - The lm_head is tied to `embed_tokens` (like GPT-2) unless `tie_word_embeddings = false` (then `lm_head.weight`,
//!   as HF names it), which keeps the parameter count comparable and reuses the padded-vocabulary handling.
//! - SwiGLU hidden size H is `ffn_hidden`, by default `8C/3` rounded up to a multiple of 64 (2048 for C = 768):
//!   three matrices of that size cost what GPT-2's two 4C matrices do.
//! - Grouped-query attention: `n_kv_head` KV heads (dividing NH), each shared by NH / KV query heads; k_proj and
//!   v_proj are `(KV * HS, C)`.
//! - Init as GPT-2's: N(0, 0.02), output projections (`o_proj`, `down_proj`) scaled by `(2 L)^-0.5`, norm gains 1.
//! - Rotary theta `rope_theta` (default 10000), RMSNorm eps 1e-5.
//!
//! Shapes: B batch, T time, C = n_embd, NH heads, KV kv heads, HS = C / NH, H = SwiGLU hidden, V = vocab_size
//! (padded).

use candle_core::{DType, Device, Result, Tensor, Var};

use super::attention::{cached_causal_attention, causal_attention, repeat_kv, KvCache};
use super::decoder::{Decoder, DecoderBase};
use super::ops::{self, RMS_NORM_EPS};
use super::params::{Init, ParamSpec, ParamTable};
use super::{ModelConfig, ModelError};

/// Rotary base frequency of Llama 1/2 (`ModelConfig::rope_theta` unset).
pub const ROPE_THETA: f64 = super::config::DEFAULT_ROPE_THETA;

/// H: the default SwiGLU hidden size for `n_embd` channels.
pub fn ffn_hidden(n_embd: usize) -> usize {
    super::config::ffn_hidden_default(super::Architecture::Llama, n_embd)
}

/// The parameter list of a Llama-style model of size `cfg`, in checkpoint order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.hidden());
    let kvw = cfg.kv_heads() * cfg.head_size();
    let std = 0.02;
    let proj_std = 0.02 * (2.0 * cfg.n_layer as f64).powf(-0.5);
    let mut s = vec![ParamSpec::new("embed_tokens.weight", &[v, c], Init::Normal(std))];
    for l in 0..cfg.n_layer {
        let p = |n: &str| format!("layers.{l}.{n}");
        s.push(ParamSpec::new(p("input_layernorm.weight"), &[c], Init::Ones));
        s.push(ParamSpec::new(p("self_attn.q_proj.weight"), &[c, c], Init::Normal(std)));
        s.push(ParamSpec::new(p("self_attn.k_proj.weight"), &[kvw, c], Init::Normal(std)));
        s.push(ParamSpec::new(p("self_attn.v_proj.weight"), &[kvw, c], Init::Normal(std)));
        s.push(ParamSpec::new(p("self_attn.o_proj.weight"), &[c, c], Init::Normal(proj_std)));
        s.push(ParamSpec::new(p("post_attention_layernorm.weight"), &[c], Init::Ones));
        s.push(ParamSpec::new(p("mlp.gate_proj.weight"), &[h, c], Init::Normal(std)));
        s.push(ParamSpec::new(p("mlp.up_proj.weight"), &[h, c], Init::Normal(std)));
        s.push(ParamSpec::new(p("mlp.down_proj.weight"), &[c, h], Init::Normal(proj_std)));
    }
    s.push(ParamSpec::new("norm.weight", &[c], Init::Ones));
    if !cfg.tied() {
        s.push(ParamSpec::new("lm_head.weight", &[v, c], Init::Normal(std)));
    }
    s
}

struct Block {
    input_layernorm: Var, // (C)
    q_proj: Var,          // (C, C)
    k_proj: Var,          // (KV * HS, C)
    v_proj: Var,
    o_proj: Var,
    post_attention_layernorm: Var,
    gate_proj: Var, // (H, C)
    up_proj: Var,   // (H, C)
    down_proj: Var, // (C, H)
}

impl Block {
    fn new(t: &ParamTable, l: usize) -> Self {
        let g = |n: &str| t.get(&format!("layers.{l}.{n}.weight"));
        Block {
            input_layernorm: g("input_layernorm"),
            q_proj: g("self_attn.q_proj"),
            k_proj: g("self_attn.k_proj"),
            v_proj: g("self_attn.v_proj"),
            o_proj: g("self_attn.o_proj"),
            post_attention_layernorm: g("post_attention_layernorm"),
            gate_proj: g("mlp.gate_proj"),
            up_proj: g("mlp.up_proj"),
            down_proj: g("mlp.down_proj"),
        }
    }

    /// `x (B, T, C)`, the residual stream in the reduce dtype -> same. `cos`, `sin`: `(T, HS/2)` in `cd`, for the
    /// positions of `x`. With `cache`, this layer's keys and values of the earlier positions (generation).
    fn forward(
        &self,
        x: &Tensor,
        (n_head, n_kv): (usize, usize),
        cd: DType,
        (cos, sin): (&Tensor, &Tensor),
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let rd = x.dtype();
        let (b, t, c) = x.dims3()?;
        let hs = c / n_head;
        let h = ops::rms_norm(x, &self.input_layernorm, RMS_NORM_EPS)?.to_dtype(cd)?;
        let heads = |w: &Var, nh: usize| -> Result<Tensor> {
            // (B, T, nh * HS) -> (B, nh, T, HS)
            ops::linear(&h, w, None)?.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous()
        };
        let q = ops::apply_rotary(&heads(&self.q_proj, n_head)?, cos, sin)?;
        // Keys and values of each KV head serve NH / KV query heads (the cache keeps them unrepeated).
        let k = ops::apply_rotary(&heads(&self.k_proj, n_kv)?, cos, sin)?;
        let v = heads(&self.v_proj, n_kv)?;
        let y = match cache {
            None => causal_attention(&q, &repeat_kv(&k, n_head / n_kv)?, &repeat_kv(&v, n_head / n_kv)?)?,
            Some(entry) => cached_causal_attention(&q, &k, &v, entry, n_head / n_kv)?,
        }; // (B, NH, T, HS)
        let y = ops::linear(&y.transpose(1, 2)?.reshape((b, t, c))?, &self.o_proj, None)?;
        let x = (x + y.to_dtype(rd)?)?;
        let h = ops::rms_norm(&x, &self.post_attention_layernorm, RMS_NORM_EPS)?.to_dtype(cd)?;
        let gate = ops::silu(&ops::linear(&h, &self.gate_proj, None)?)?; // (B, T, H)
        let up = ops::linear(&h, &self.up_proj, None)?;
        let m = ops::linear(&(gate * up)?, &self.down_proj, None)?; // (B, T, C)
        x + m.to_dtype(rd)?
    }
}

/// A Llama-style model whose weights are trainable `Var`s in the master dtype.
pub struct Llama {
    base: DecoderBase,
    embed_tokens: Var, // (V, C), also the lm_head when tied
    lm_head: Var,      // (V, C): embed_tokens, or lm_head.weight when untied
    blocks: Vec<Block>,
    norm: Var,   // (C)
    cos: Tensor, // (block_size, HS/2) in the compute dtype
    sin: Tensor,
}

impl Llama {
    /// The Llama-style model over `base`'s parameters (`DecoderBase::init` or `load` of a Llama config), with its
    /// rotary tables on `device`.
    pub fn new(base: DecoderBase, device: &Device) -> std::result::Result<Self, ModelError> {
        let (cfg, t) = (&base.cfg, ParamTable::new(&base.params));
        let (cos, sin) =
            ops::rotary_tables(cfg.block_size, cfg.head_size(), cfg.rope_base(), base.precision.compute, device)?;
        let embed_tokens = t.get("embed_tokens.weight");
        Ok(Llama {
            lm_head: if cfg.tied() { embed_tokens.clone() } else { t.get("lm_head.weight") },
            embed_tokens,
            blocks: (0..cfg.n_layer).map(|l| Block::new(&t, l)).collect(),
            norm: t.get("norm.weight"),
            cos,
            sin,
            base,
        })
    }
}

impl Decoder for Llama {
    fn hidden_after(&self, idx: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (past, t) = self.base.positions(idx, cache.as_deref())?;
        let rd = self.base.precision.reduce();
        let cd = self.base.precision.compute;
        let cos = self.cos.narrow(0, past, t)?;
        let sin = self.sin.narrow(0, past, t)?;
        let mut x = ops::embedding(&self.embed_tokens, idx)?.to_dtype(rd)?; // (B, T, C)
        for (l, block) in self.blocks.iter().enumerate() {
            let heads = (self.base.cfg.n_head, self.base.cfg.kv_heads());
            x = block.forward(&x, heads, cd, (&cos, &sin), cache.as_deref_mut().map(|c| c.layer(l)))?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        ops::rms_norm(&x, &self.norm, RMS_NORM_EPS)?.to_dtype(cd)
    }

    fn head(&self) -> &Tensor {
        &self.lm_head
    }

    fn base(&self) -> &DecoderBase {
        &self.base
    }
}
