//! The composed operations the models are built from: LayerNorm, RMSNorm, softmax, GELU(tanh), cross-entropy,
//! linear, embedding and rotary embeddings, each written with candle-core ops that record a backward.
//!
//! Why not candle-nn: `candle_nn::LayerNorm` (its fast path) and `candle_nn::ops::softmax_last_dim` are custom ops
//! with no backward, so gradients silently stop at them, and candle's built-in `gelu` backward uses 6-digit
//! constants (~1e-7 relative error, which fails the f64 finite-difference check). Every function here is held against finite differences in
//! f64 (tests/model_grad.rs) and runs on any candle backend (CPU, CUDA) in any float dtype. Fused kernels
//! (`model::kernels`) come with their own backward; cross-entropy, LayerNorm and GELU here route to their fused
//! kernels (CPU and CUDA), and each composed version stays as `*_slow`, its reference (tests/kernels_*.rs).
//!
//! Precision: statistics (LayerNorm/RMSNorm moments, softmax, the loss) are computed in `reduce_dtype` (f32, or
//! f64 when the input is f64); matmuls and elementwise activations run in their input's dtype (bf16 on GPU).

use candle_core::{DType, Device, Result, Tensor, D};

/// LayerNorm epsilon of GPT-2 (HF `layer_norm_epsilon`, PyTorch's default): its row's.
pub const LAYER_NORM_EPS: f64 = super::arch::GPT2.norm_eps;
/// RMSNorm epsilon of Llama: its row's (a model's own is `ModelConfig::eps`).
pub const RMS_NORM_EPS: f64 = super::arch::LLAMA.norm_eps;

/// The dtype reductions run in for inputs of dtype `dt`: f32, or f64 when the input is f64 (gradient tests).
pub fn reduce_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Softmax over the last dimension, computed and returned in `reduce_dtype(x)`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(reduce_dtype(x.dtype()))?;
    // The max shift cancels out of the softmax, so its gradient is zero: detaching it skips a useless backward.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// LayerNorm over the last dimension: `x (..., C)`, `weight (C)`, `bias (C)`, returned in `reduce_dtype(x)` (f32, or
/// f64 for f64 x). The fused kernel (`kernels::layer_norm`) where it runs, the composed reference otherwise.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_to(x, weight, bias, eps, reduce_dtype(x.dtype()))
}

/// LayerNorm as `layer_norm`, returned in `out`: the models pass their compute dtype, so on the fused path the
/// normalised activations are written once in bf16 instead of kept in f32 and cast. Statistics and the affine map
/// run in `reduce_dtype(x)` on both paths; only the final rounding differs from `layer_norm(..)?.to_dtype(out)`.
pub fn layer_norm_to(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, out: DType) -> Result<Tensor> {
    if super::kernels::layer_norm::supported(x, out) {
        super::kernels::layer_norm(x, weight, bias, eps, out)
    } else {
        layer_norm_slow(x, weight, bias, eps)?.to_dtype(out)
    }
}

/// `layer_norm` composed from candle ops: the reference the fused kernel is tested against. Statistics and the
/// affine map run in `reduce_dtype(x)`, which is also the output dtype.
pub fn layer_norm_slow(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let rd = reduce_dtype(x.dtype());
    let x = x.to_dtype(rd)?;
    let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1), biased like PyTorch's
    let rstd = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&rstd)?.broadcast_mul(&weight.to_dtype(rd)?)?.broadcast_add(&bias.to_dtype(rd)?)
}

/// RMSNorm over the last dimension: `x (..., C)`, `weight (C)`; computed and returned in `reduce_dtype(x)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let rd = reduce_dtype(x.dtype());
    let x = x.to_dtype(rd)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let rrms = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&rrms)?.broadcast_mul(&weight.to_dtype(rd)?)
}

/// GELU, tanh approximation (GPT-2's `gelu_new`): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in x's dtype.
/// The fused kernel (`kernels::gelu_tanh`, f32 math, saves only x) on CPU and CUDA, the composed reference elsewhere.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if super::kernels::gelu::supported(x) {
        super::kernels::gelu_tanh(x)
    } else {
        gelu_tanh_slow(x)
    }
}

/// `gelu_tanh` composed from candle ops (reference; math in x's dtype).
pub fn gelu_tanh_slow(x: &Tensor) -> Result<Tensor> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    // x * x * x rather than powf(3): powf's backward goes through powf(2) of a negative base on some backends.
    let cube = x.sqr()?.mul(x)?;
    let inner = ((cube * 0.044715)? + x)?;
    let t = (inner * SQRT_2_OVER_PI)?.tanh()?;
    (t + 1.0)?.mul(x)? * 0.5
}

/// SiLU (`x * sigmoid(x)`, SwiGLU's gate); candle's unary op has an exact backward.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// `x (..., in) @ weight^T + bias` with `weight (out, in)` (PyTorch nn.Linear layout) and `bias (out)`, in x's
/// dtype: the fp32 master weights are cast to the compute dtype here, once per call (what autocast does).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dt = x.dtype();
    let dims = x.dims().to_vec();
    let (lead, last) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let (out, _) = weight.dims2()?;
    let y = x.reshape((rows, last[0]))?.matmul(&weight.to_dtype(dt)?.t()?)?; // (rows, out)
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(dt)?)?,
        None => y,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(out);
    y.reshape(out_dims)
}

/// Embedding lookup: `table (V, C)`, `idx (B, T)` integer ids -> `(B, T, C)` in the table's dtype.
/// The lookup is `kernels::embedding_lookup`: candle's gather forward, and a backward that on CUDA scatters rows in
/// parallel instead of candle's column-serial `index_add` (on CPU it is that `index_add`).
pub fn embedding(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let (b, t) = idx.dims2()?;
    let (_, c) = table.dims2()?;
    super::kernels::embedding_lookup(table, &idx.flatten_all()?)?.reshape((b, t, c))
}

/// Per-position cross-entropy: `logits (N, V)`, `targets (N)` integer ids -> `(N)` in `reduce_dtype(logits)`.
/// The fused kernel (`kernels::cross_entropy`): no (N, V) temporaries in forward, one in backward; targets equal to
/// `kernels::IGNORE_INDEX` give 0 loss and 0 gradient.
pub fn token_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    super::kernels::softmax_cross_entropy(logits, targets)
}

/// Mean cross-entropy over all N positions, a scalar in `reduce_dtype(logits)` (fused kernel).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    token_cross_entropy(logits, targets)?.mean_all()
}

/// `token_cross_entropy` composed from candle ops: the reference the fused kernel is tested against. Every
/// target must be a valid id (no ignore index).
pub fn token_cross_entropy_slow(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(reduce_dtype(logits.dtype()))?;
    let max = logits.max_keepdim(D::Minus1)?.detach(); // (N, 1); cancels like the softmax's
    let shifted = logits.broadcast_sub(&max)?; // (N, V)
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // (N, 1)
    let target_logit = shifted.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?; // (N, 1)
    (lse - target_logit)?.squeeze(1)
}

/// `cross_entropy` composed from candle ops (reference).
pub fn cross_entropy_slow(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    token_cross_entropy_slow(logits, targets)?.mean_all()
}

/// Mean cross-entropy of the tied head `x @ weight^T`: `x (B, T, C)` in the compute dtype, `weight (V, C)` (the
/// master `wte`, cast to x's dtype here), `targets (B, T)`. Head and loss are one autograd node
/// (`kernels::linear_cross_entropy`): backward keeps 2 (B*T, V) tensors alive instead of 4.
pub fn lm_head_cross_entropy(x: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    if targets.dims() != [b, t] {
        candle_core::bail!("targets have shape {:?}, expected (B, T) = ({b}, {t})", targets.dims());
    }
    let x = x.reshape((b * t, c))?;
    super::kernels::linear_cross_entropy(&x, &weight.to_dtype(x.dtype())?, &targets.flatten_all()?)?.mean_all()
}

/// The rotary angles' cosines and sines for positions `0..t` and head size `hs`, in f64, row-major `(T, HS/2)`:
/// entry `(pos, i)` of the angle `pos * theta^(-2i/HS)` (Llama's frequencies). The one definition both the candle
/// op's tables and the decoder engine's are made from.
pub fn rotary_cos_sin(t: usize, hs: usize, theta: f64) -> (Vec<f64>, Vec<f64>) {
    let half = hs / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for i in 0..half {
            let (s, c) = (pos as f64 * theta.powf(-2.0 * i as f64 / hs as f64)).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
}

/// Rotary embedding tables for positions `0..t` and head size `hs`: `(cos, sin)`, each `(T, HS/2)` in `dtype`.
/// Frequencies `theta^(-2i/HS)` as in Llama.
pub fn rotary_tables(t: usize, hs: usize, theta: f64, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = rotary_cos_sin(t, hs, theta);
    let cos = Tensor::from_vec(cos, (t, hs / 2), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (t, hs / 2), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Rotate `x (B, NH, T, HS)` by position, HF Llama's "rotate half" layout: the first and second halves of each head
/// are the pair's two coordinates. `cos`, `sin`: `(T, HS/2)` in x's dtype.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, _, hs) = x.dims4()?;
    let half = hs / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}
