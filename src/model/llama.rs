//! A Llama-style decoder behind the same trait, proving the trainer is architecture-agnostic: pre-norm RMSNorm
//! blocks, rotary position embeddings (no learned positions), a SwiGLU MLP, and no biases, except on q, k and v
//! where the row says so (Qwen2, `arch::QWEN2`).
//!
//! References: "LLaMA: Open and Efficient Foundation Language Models" (Touvron et al. 2023), RoFormer (Su et al.
//! 2021), "GLU Variants Improve Transformer" (Shazeer 2020), Qwen2 Technical Report (Yang et al. 2024); HF
//! transformers' `modeling_llama.py` / `modeling_qwen2.py`, whose parameter names (minus the `model.` prefix, the
//! row's `names`) and rotate-half rotary layout this uses.
//!
//! Choices, so it trains on the same shards and budget as GPT-2 of the same (L, NH, C):
//! - The lm_head is tied to `embed_tokens` (like GPT-2) unless `tie_word_embeddings = false` (then `lm_head.weight`,
//!   as HF names it), which keeps the parameter count comparable and reuses the padded-vocabulary handling.
//! - SwiGLU hidden size H is `ffn_hidden`, by default `8C/3` rounded up to a multiple of 64 (2048 for C = 768):
//!   three matrices of that size cost what GPT-2's two 4C matrices do.
//! - Grouped-query attention: `n_kv_head` KV heads (dividing NH), each shared by NH / KV query heads; k_proj and
//!   v_proj are `(KV * HS, C)`.
//! - Init as GPT-2's: N(0, 0.02), output projections (`o_proj`, `down_proj`) scaled by `(2 L)^-0.5`, norm gains 1.
//! - Rotary theta `rope_theta` (default 10000), RMSNorm eps `norm_eps` (the row's by default: 1e-5, Qwen2 1e-6).
//!
//! Shapes: B batch, T time, C = n_embd, NH heads, KV kv heads, HS = C / NH, H = SwiGLU hidden, V = vocab_size
//! (padded).

use candle_core::{DType, Device, Result, Tensor, Var};

use super::arch::LLAMA;
use super::attention::{cached_causal_attention, causal_attention, repeat_kv, KvCache};
use super::decoder::{Decoder, DecoderBase};
use super::ops;
use super::params::ParamTable;
use super::ModelError;

/// Rotary base frequency of Llama 1/2 (`ModelConfig::rope_theta` unset).
pub const ROPE_THETA: f64 = super::config::DEFAULT_ROPE_THETA;

/// H: the default SwiGLU hidden size for `n_embd` channels.
pub fn ffn_hidden(n_embd: usize) -> usize {
    LLAMA.default_hidden(n_embd)
}

struct Block {
    input_layernorm: Var, // (C)
    q_proj: Var,          // (C, C)
    k_proj: Var,          // (KV * HS, C)
    v_proj: Var,
    /// q, k and v biases `(C)`, `(KV * HS)`, `(KV * HS)`, where the row has them (Qwen2).
    qkv_bias: Option<[Var; 3]>,
    o_proj: Var,
    post_attention_layernorm: Var,
    gate_proj: Var, // (H, C)
    up_proj: Var,   // (H, C)
    down_proj: Var, // (C, H)
}

impl Block {
    /// Layer `l` wired from `t` by the row's names (`arch::BlockNames`: q | k | v and gate | up one tensor each).
    fn new(t: &ParamTable, names: &super::arch::BlockNames) -> Self {
        let w = |i: usize| t.get(&names.qkv.weights[i]);
        let (gate, up) = (&names.fc.weights[0], &names.fc.weights[1]);
        let b = &names.qkv.biases;
        Block {
            input_layernorm: t.get(names.norm1.weight()),
            q_proj: w(0),
            k_proj: w(1),
            v_proj: w(2),
            qkv_bias: (!b.is_empty()).then(|| [0, 1, 2].map(|i| t.get(&b[i]))),
            o_proj: t.get(names.attn_out.weight()),
            post_attention_layernorm: t.get(names.norm2.weight()),
            gate_proj: t.get(gate),
            up_proj: t.get(up),
            down_proj: t.get(names.fc_out.weight()),
        }
    }

    /// `x (B, T, C)`, the residual stream in the reduce dtype -> same. `cos`, `sin`: `(T, HS/2)` in `cd`, for the
    /// positions of `x`. With `cache`, this layer's keys and values of the earlier positions (generation).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        (n_head, n_kv): (usize, usize),
        cd: DType,
        eps: f64,
        (cos, sin): (&Tensor, &Tensor),
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let rd = x.dtype();
        let (b, t, c) = x.dims3()?;
        let hs = c / n_head;
        let h = ops::rms_norm(x, &self.input_layernorm, eps)?.to_dtype(cd)?;
        let heads = |i: usize, w: &Var, nh: usize| -> Result<Tensor> {
            // (B, T, nh * HS) -> (B, nh, T, HS)
            let bias = self.qkv_bias.as_ref().map(|b| &*b[i]);
            ops::linear(&h, w, bias)?.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous()
        };
        let q = ops::apply_rotary(&heads(0, &self.q_proj, n_head)?, cos, sin)?;
        // Keys and values of each KV head serve NH / KV query heads (the cache keeps them unrepeated).
        let k = ops::apply_rotary(&heads(1, &self.k_proj, n_kv)?, cos, sin)?;
        let v = heads(2, &self.v_proj, n_kv)?;
        let y = match cache {
            None => causal_attention(&q, &repeat_kv(&k, n_head / n_kv)?, &repeat_kv(&v, n_head / n_kv)?)?,
            Some(entry) => cached_causal_attention(&q, &k, &v, entry, n_head / n_kv)?,
        }; // (B, NH, T, HS)
        let y = ops::linear(&y.transpose(1, 2)?.reshape((b, t, c))?, &self.o_proj, None)?;
        let x = (x + y.to_dtype(rd)?)?;
        let h = ops::rms_norm(&x, &self.post_attention_layernorm, eps)?.to_dtype(cd)?;
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
    /// The Llama-style model over `base`'s parameters (`DecoderBase::init` or `load` of a config whose row has
    /// Llama's block: Llama, Qwen2), with its rotary tables on `device`.
    pub fn new(base: DecoderBase, device: &Device) -> std::result::Result<Self, ModelError> {
        let (cfg, t) = (&base.cfg, ParamTable::new(&base.params));
        let row = cfg.arch.spec();
        let (cos, sin) =
            ops::rotary_tables(cfg.block_size, cfg.head_size(), cfg.rope_base(), base.precision.compute, device)?;
        let top = row.top(cfg.tied());
        let embed_tokens = t.get(&top.embedding);
        Ok(Llama {
            lm_head: top.lm_head.as_deref().map_or_else(|| embed_tokens.clone(), |n| t.get(n)),
            embed_tokens,
            blocks: (0..cfg.n_layer).map(|l| Block::new(&t, &row.block(l))).collect(),
            norm: t.get(top.final_norm.weight()),
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
        let eps = self.base.cfg.eps();
        let mut x = ops::embedding(&self.embed_tokens, idx)?.to_dtype(rd)?; // (B, T, C)
        for (l, block) in self.blocks.iter().enumerate() {
            let heads = (self.base.cfg.n_head, self.base.cfg.kv_heads());
            x = block.forward(&x, heads, cd, eps, (&cos, &sin), cache.as_deref_mut().map(|c| c.layer(l)))?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        ops::rms_norm(&x, &self.norm, eps)?.to_dtype(cd)
    }

    fn head(&self) -> &Tensor {
        &self.lm_head
    }

    fn base(&self) -> &DecoderBase {
        &self.base
    }
}
