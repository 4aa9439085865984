//! Fused causal attention (FlashAttention-2 algorithm) with its backward: `q, k, v (B, NH, T, HS)` -> `o (B, NH,
//! T, HS)`, never materialising the `(B, NH, T, T)` scores. Forward keeps O and the per-row logsumexp
//! `L (B, NH, T)` (f32; f64 for f64 inputs) for backward, which recomputes the probabilities tile by tile and
//! returns dQ, dK, dV. At 124M with B=64, T=1024 that is 3 MB of L per layer instead of the composed version's
//! 3.2 GB f32 scores + 3.2 GB probabilities (+ their bf16 copy) per layer.
//!
//! CUDA: HS = 64 only (GPT-2, Llama-124M), f32/bf16/f16 inputs, f32 accumulation; any (b, h, t) strides with a dense
//! last dim, so GPT-2's head views of the fused qkv projection go in without copies. bf16/f16 run on the tensor cores,
//! `crate::cuda::flash_attn` (flash_attn.cu, FlashAttention-2 with cp.async, ldmatrix and mma.sync: the decoder
//! engine's kernels, read through strides; the head views must then start and step on 16-byte boundaries, or the op
//! copies them). f32 runs the FMA reference kernels, `crate::cuda::attention_ref` (attention_ref.cu: what the lab and
//! the GPU tests hold the tensor cores against), since the tensor cores take no f32: f32 attention on CUDA is for
//! checks and small runs ([`FlashKernel`] says which set a call takes). GPT-2's fused-qkv op
//! ([`flash_causal_attention_qkv`]) hands the whole buffer to the same tensor-core kernels (no layout copies); timings
//! against PyTorch's SDPA and the composed version are in docs/PERF.md.
//! CPU: the same algorithm row by row (any HS, f32/bf16/f16 accumulating in f32, f64 in f64); it is the twin the
//! tests hold against the composed reference (`model::attention::causal_attention_slow`) and finite differences.
//! The models call `model::attention::causal_attention`, which routes here only where the fused path exists
//! (CUDA, HS = 64) and to the composed reference otherwise (CPU training keeps candle's faster gemm-based path).
//!
//! Files, one concern each: this one holds what both ops share (the routing rule, the kernel choice, head views,
//! the saved logsumexp); `heads` the op over q, k, v head views; `qkv` the op over GPT-2's fused projection; `cpu`
//! the CPU twin; `cuda_heads` the head-view op's adapter over `crate::cuda::attention_ref` and
//! `crate::cuda::flash_attn`'s views; `cuda_qkv` the fused op's adapter over `crate::cuda::flash_attn`.

use std::sync::Mutex;

use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Layout, Result, Storage, Tensor};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda_heads;
#[cfg(feature = "cuda")]
mod cuda_qkv;
mod heads;
mod qkv;

pub use heads::{flash_causal_attention, flash_causal_attention_with};
pub use qkv::flash_causal_attention_qkv;

/// The only head size the CUDA kernels are written for.
pub const FLASH_HEAD_SIZE: usize = 64;

/// Which CUDA kernel set runs a fused attention call (CPU ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// The tensor cores (flash_attn.cu) for bf16/f16; f32, which they do not take, on the FMA reference kernels.
    Auto,
    /// The FMA reference kernels (attention_ref.cu) for every dtype: what the GPU tests hold the tensor cores against.
    FmaReference,
}

impl FlashKernel {
    /// Whether this call runs the tensor-core kernels (flash_attn.cu) on CUDA; otherwise the FMA reference kernels.
    fn tensor_cores(self, dt: DType) -> bool {
        self == FlashKernel::Auto && matches!(dt, DType::BF16 | DType::F16)
    }
}

/// Whether attention with head size `hs` in `dt` runs fused on `device`: CUDA, HS = 64, f32/bf16/f16. The one rule:
/// both entry points of `model::attention` route by it, and both ops refuse on CUDA what it refuses. (On the CPU the
/// ops run their twin at any HS, for tests; the models keep candle's faster composed path there.)
pub fn supported(device: &Device, dt: DType, hs: usize) -> bool {
    device.is_cuda() && hs == FLASH_HEAD_SIZE && matches!(dt, DType::F32 | DType::BF16 | DType::F16)
}

/// The ops' refusal of what [`supported`] refuses on CUDA.
fn refuse_on_cuda(dt: DType, hs: usize) -> Result<()> {
    candle_core::bail!(
        "fused attention on CUDA supports head size {FLASH_HEAD_SIZE} in f32/bf16/f16, got HS = {hs} in {dt:?}; \
         use model::attention::causal_attention(_qkv), which falls back to the composed path"
    )
}

/// Where `(b, h, t, 0)` of a `(B, NH, T, HS)` layout with a dense last dim lives.
#[derive(Clone, Copy, Debug)]
struct HeadView {
    start: usize,
    sb: usize,
    sh: usize,
    st: usize,
    nh: usize,
}

impl HeadView {
    fn new(l: &Layout, what: &str) -> Result<Self> {
        let (_, nh, _, hs) = l.shape().dims4()?;
        let s = l.stride();
        if hs > 1 && s[3] != 1 {
            candle_core::bail!("attention {what} needs a dense last dim (strides {s:?})");
        }
        Ok(HeadView { start: l.start_offset(), sb: s[0], sh: s[1], st: s[2], nh })
    }

    /// Offset of row `t` of head `bh` (= b * NH + h).
    fn row(&self, bh: usize, t: usize) -> usize {
        self.start + (bh / self.nh) * self.sb + (bh % self.nh) * self.sh + t * self.st
    }
}

/// Keep a forward's logsumexp `(B, NH, T)` for the same op's backward.
fn store_lse(slot: &Mutex<Option<Tensor>>, storage: Storage, shape: (usize, usize, usize)) {
    let t = Tensor::from_storage(storage, shape, BackpropOp::none(), false);
    // A poisoned lock only means another thread panicked mid-store; the value is still ours to replace.
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
}
