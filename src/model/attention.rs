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

use super::kernels::attention::{flash_causal_attention, fused_supported};
use super::ops::{reduce_dtype, softmax_last_dim};

/// `(T, T)` additive mask in `dtype`: 0 where key j <= query i, -inf where j > i (the future).
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let pos = Tensor::arange(0u32, t as u32, device)?;
    let future = pos.reshape((1, t))?.broadcast_gt(&pos.reshape((t, 1))?)?; // (T, T) u8: 1 where j > i
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    let zero = Tensor::zeros((t, t), dtype, device)?;
    future.where_cond(&neg_inf, &zero)
}

/// Causal self-attention: `q, k, v (B, NH, T, HS)` in the compute dtype -> `(B, NH, T, HS)` in the same dtype.
/// Fused where supported (see the module doc), composed otherwise.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if fused_supported(q) {
        return flash_causal_attention(q, k, v);
    }
    causal_attention_slow(q, k, v)
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
