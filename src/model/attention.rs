//! Causal scaled dot-product attention, the one function both architectures call once per layer. On CUDA with
//! HS = 64 (GPT-2) it runs the fused FlashAttention-2 kernel (`kernels::attention`), which keeps no (B, NH, T, T)
//! tensor for backward; everywhere else (CPU, other head sizes, f64) the composed version below, which is also
//! the fused kernel's reference (`causal_attention_slow`, tests/kernels_attention.rs).
//!
//! Composed as in nanoGPT's slow path: `softmax(q k^T / sqrt(HS) + mask) v`. The two matmuls run in the compute
//! dtype (bf16 on GPU); the scores are upcast so the scale, the mask and the softmax run in f32 (f64 in tests).
//! The mask is -inf above the diagonal: exact in f32/f64 (exp(-inf) = 0, and every row keeps its diagonal, so no
//! row is all -inf and no NaN appears in forward or backward).

use candle_core::{DType, Device, Result, Tensor};

use super::kernels::attention::{self as fused, flash_causal_attention, flash_causal_attention_qkv};
use super::ops::{reduce_dtype, softmax_last_dim};

/// `(T, T)` additive mask in `dtype`: 0 where key j <= query i, -inf where j > i (the future).
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    causal_mask_after(t, 0, dtype, device)
}

/// `(T, past + T)` additive mask for `t` queries at positions `past..past + t` over keys `0..past + t`: 0 where key
/// j <= past + i, -inf where it lies in that query's future.
pub fn causal_mask_after(t: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let all = past + t;
    let keys = Tensor::arange(0u32, all as u32, device)?.reshape((1, all))?;
    let queries = Tensor::arange(past as u32, all as u32, device)?.reshape((t, 1))?;
    let future = keys.broadcast_gt(&queries)?; // (T, past + T) u8: 1 where j > past + i
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (t, all), device)?.to_dtype(dtype)?;
    let zero = Tensor::zeros((t, all), dtype, device)?;
    future.where_cond(&neg_inf, &zero)
}

/// Per layer, the keys and values of every position seen so far (`(B, NH, T_seen, HS)` each), so that generation
/// feeds only the new token and attends over these (`LanguageModel::forward_last_cached`): one position's work per
/// token instead of the whole context's.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    seen: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions the cache holds.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Layer `l`'s keys and values (empty until the first forward).
    pub fn layer(&mut self, l: usize) -> &mut Option<(Tensor, Tensor)> {
        if self.layers.len() <= l {
            self.layers.resize(l + 1, None);
        }
        &mut self.layers[l]
    }

    /// `t` more positions went through every layer.
    pub fn advance(&mut self, t: usize) {
        self.seen += t;
    }
}

/// Causal attention of `t` new positions over a layer's cached ones and themselves: `q, k, v (B, NH, T, HS)` of the
/// new positions; `entry` holds the earlier keys and values and gets these appended. With grouped-query attention
/// k and v have `NH / groups` heads (kept so in the cache) and each serves `groups` query heads. Composed (as
/// [`causal_attention_slow`]), in the same dtypes.
pub fn cached_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    entry: &mut Option<(Tensor, Tensor)>,
    groups: usize,
) -> Result<Tensor> {
    let (k, v) = match entry.take() {
        Some((k0, v0)) => (Tensor::cat(&[&k0, k], 2)?, Tensor::cat(&[&v0, v], 2)?), // (B, KV, past + T, HS)
        None => (k.contiguous()?, v.contiguous()?),
    };
    *entry = Some((k.clone(), v.clone()));
    let (k, v) = (repeat_kv(&k, groups)?, repeat_kv(&v, groups)?); // (B, NH, past + T, HS)
    let (_, _, t, hs) = q.dims4()?;
    let past = k.dim(2)? - t;
    let cd = q.dtype();
    let rd = reduce_dtype(cd);
    let att = q.contiguous()?.matmul(&k.t()?)?; // (B, NH, T, past + T) in cd
    let att = (att.to_dtype(rd)? * (1.0 / (hs as f64).sqrt()))?;
    let att = att.broadcast_add(&causal_mask_after(t, past, rd, q.device())?)?;
    softmax_last_dim(&att)?.to_dtype(cd)?.matmul(&v) // (B, NH, T, HS)
}

/// `(B, KV, T, HS)` -> `(B, KV * groups, T, HS)`, each KV head repeated for its `groups` query heads (HF's
/// `repeat_kv`); the identity without grouping.
pub fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hs) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, groups, t, hs))?.contiguous()?.reshape((b, kv * groups, t, hs))
}

/// Causal self-attention: `q, k, v (B, NH, T, HS)` in the compute dtype -> `(B, NH, T, HS)` in the same dtype.
/// Fused where supported (see the module doc), composed otherwise.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, _, _, hs) = q.dims4()?;
    if fused::supported(q.device(), q.dtype(), hs) {
        return flash_causal_attention(q, k, v);
    }
    causal_attention_slow(q, k, v)
}

/// GPT-2's attention from its fused projection: `qkv (B, T, 3C)` (q, k, v side by side) -> `(B, T, C)`, the heads
/// side by side again. Where the fused kernel exists (CUDA, HS = 64) it reads the heads straight out of `qkv`,
/// writes `(B, T, C)` directly and returns d(qkv) in one piece (`flash_causal_attention_qkv`: no permutes, no
/// per-head gradient glue); elsewhere the heads are split into `(B, NH, T, HS)` and go through
/// [`causal_attention`].
pub fn causal_attention_qkv(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let hs = c / n_head;
    if fused::supported(qkv.device(), qkv.dtype(), hs) {
        return flash_causal_attention_qkv(qkv, n_head); // (B, T, C)
    }
    // (B, T, C) -> (B, NH, T, HS) per part.
    let heads = |i: usize| qkv.narrow(2, i * c, c)?.reshape((b, t, n_head, hs))?.transpose(1, 2);
    let y = causal_attention(&heads(0)?, &heads(1)?, &heads(2)?)?;
    y.transpose(1, 2)?.reshape((b, t, c)) // re-assemble heads side by side
}

/// The composed reference: `softmax(q k^T / sqrt(HS) + mask) v`, materialising the `(B, NH, T, T)` scores.
pub fn causal_attention_slow(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, _, t, hs) = q.dims4()?;
    let cd = q.dtype();
    let rd = reduce_dtype(cd);
    let q = q.contiguous()?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    let att = q.matmul(&k.t()?)?; // (B, NH, T, T) in cd
    let att = (att.to_dtype(rd)? * (1.0 / (hs as f64).sqrt()))?;
    let att = att.broadcast_add(&causal_mask(t, rd, q.device())?)?;
    let att = softmax_last_dim(&att)?.to_dtype(cd)?; // (B, NH, T, T)
    att.matmul(&v) // (B, NH, T, HS)
}
