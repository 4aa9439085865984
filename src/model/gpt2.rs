//! GPT-2 exactly as OpenAI's: token + learned position embeddings, pre-LayerNorm blocks (causal self-attention
//! with a fused qkv projection `c_attn`, a 4x MLP with tanh-GELU), a final `ln_f`, and an `lm_head` tied to `wte`.
//!
//! References: "Language Models are Unsupervised Multitask Learners" (Radford et al. 2019); OpenAI's gpt-2
//! `src/model.py`; nanoGPT / build-nanogpt `model.py` / `train_gpt2.py`, whose structure and init this follows.
//!
//! Parameter names are the Hugging Face GPT-2 checkpoint keys (`wte.weight`, `h.0.attn.c_attn.weight`, ...,
//! `ln_f.bias`: the row `arch::GPT2`, which also lists them in order), so loading and exporting are key maps
//! (src/model/hf.rs). Linear weights are stored `(out, in)` like PyTorch's nn.Linear; HF's Conv1D `(in, out)` is
//! transposed at that boundary.
//!
//! Shapes: B batch, T time, C = n_embd, NH heads, HS = C / NH, V = vocab_size (padded).

use candle_core::{DType, Result, Tensor, Var};

use super::arch::{Stored, GPT2};
use super::attention::{cached_causal_attention, causal_attention_qkv, KvCache};
use super::decoder::{Decoder, DecoderBase};
use super::ops;
use super::params::ParamTable;

/// The row's weight and bias of `s` (GPT-2 has both everywhere).
fn weight_and_bias(t: &ParamTable, s: &Stored) -> (Var, Var) {
    (t.get(s.weight()), t.get(s.bias().expect("GPT-2's row has a bias on every layer")))
}

struct LayerNorm {
    weight: Var, // (C)
    bias: Var,   // (C)
    eps: f64,
}

impl LayerNorm {
    fn new(t: &ParamTable, s: &Stored, eps: f64) -> Self {
        let (weight, bias) = weight_and_bias(t, s);
        LayerNorm { weight, bias, eps }
    }

    /// `x (B, T, C)` -> normalised, in `out` (the compute dtype: the fused kernel writes it directly, so no f32
    /// copy of the activations is kept for the cast's backward).
    fn forward(&self, x: &Tensor, out: DType) -> Result<Tensor> {
        ops::layer_norm_to(x, &self.weight, &self.bias, self.eps, out)
    }
}

struct Linear {
    weight: Var, // (out, in)
    bias: Var,   // (out)
}

impl Linear {
    fn new(t: &ParamTable, s: &Stored) -> Self {
        let (weight, bias) = weight_and_bias(t, s);
        Linear { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, Some(&self.bias))
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear, // (3C, C): q, k, v stacked
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear, // (4C, C)
    mlp_c_proj: Linear,
}

impl Block {
    fn new(t: &ParamTable, l: usize, eps: f64) -> Self {
        let n = GPT2.block(l);
        Block {
            ln_1: LayerNorm::new(t, &n.norm1, eps),
            c_attn: Linear::new(t, &n.qkv),
            attn_c_proj: Linear::new(t, &n.attn_out),
            ln_2: LayerNorm::new(t, &n.norm2, eps),
            c_fc: Linear::new(t, &n.fc),
            mlp_c_proj: Linear::new(t, &n.fc_out),
        }
    }

    /// `x (B, T, C)`, the residual stream in the reduce dtype -> same. With `cache`, this layer's keys and values
    /// of the earlier positions (generation).
    fn forward(
        &self,
        x: &Tensor,
        n_head: usize,
        cd: DType,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let rd = x.dtype();
        let h = self.ln_1.forward(x, cd)?;
        let x = (x + self.attn(&h, n_head, cache)?.to_dtype(rd)?)?;
        let h = self.ln_2.forward(&x, cd)?;
        let m = self.mlp_c_proj.forward(&ops::gelu_tanh(&self.c_fc.forward(&h)?)?)?;
        x + m.to_dtype(rd)?
    }

    /// `h (B, T, C)` in the compute dtype -> attention output `(B, T, C)`, same dtype.
    fn attn(&self, h: &Tensor, n_head: usize, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let qkv = self.c_attn.forward(h)?; // (B, T, 3C)
        let y = match cache {
            None => causal_attention_qkv(&qkv, n_head)?, // (B, T, C)
            Some(entry) => {
                let (b, t, c3) = qkv.dims3()?;
                let (c, hs) = (c3 / 3, c3 / 3 / n_head);
                // (B, T, C) -> (B, NH, T, HS) per part, and back.
                let heads = |i: usize| qkv.narrow(2, i * c, c)?.reshape((b, t, n_head, hs))?.transpose(1, 2);
                let y = cached_causal_attention(&heads(0)?, &heads(1)?, &heads(2)?, entry, 1)?;
                y.transpose(1, 2)?.reshape((b, t, c))?
            }
        };
        self.attn_c_proj.forward(&y)
    }
}

/// A GPT-2 whose weights are trainable `Var`s in the master dtype.
pub struct Gpt2 {
    base: DecoderBase,
    wte: Var, // (V, C), also the lm_head
    wpe: Var, // (block_size, C)
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// The GPT-2 over `base`'s parameters (`DecoderBase::init` or `load` of a GPT-2 config).
    pub fn new(base: DecoderBase) -> Self {
        let t = ParamTable::new(&base.params);
        let (top, eps) = (GPT2.top(true), base.cfg.eps());
        Gpt2 {
            wte: t.get(&top.embedding),
            wpe: t.get(top.positions.as_deref().expect("GPT-2's row has learned positions")),
            blocks: (0..base.cfg.n_layer).map(|l| Block::new(&t, l, eps)).collect(),
            ln_f: LayerNorm::new(&t, &top.final_norm, eps),
            base,
        }
    }
}

impl Decoder for Gpt2 {
    fn hidden_after(&self, idx: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (past, t) = self.base.positions(idx, cache.as_deref())?;
        let rd = self.base.precision.reduce();
        let cd = self.base.precision.compute;
        // The residual stream stays in the reduce dtype (f32), as under torch autocast: only matmul inputs are bf16.
        let tok = ops::embedding(&self.wte, idx)?.to_dtype(rd)?; // (B, T, C)
        let pos = self.wpe.narrow(0, past, t)?.to_dtype(rd)?; // (T, C)
        let mut x = tok.broadcast_add(&pos)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, self.base.cfg.n_head, cd, cache.as_deref_mut().map(|c| c.layer(l)))?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.ln_f.forward(&x, cd)
    }

    fn head(&self) -> &Tensor {
        &self.wte
    }

    fn base(&self) -> &DecoderBase {
        &self.base
    }
}
