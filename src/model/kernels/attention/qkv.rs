//! Causal attention straight from GPT-2's fused projection `qkv (B, T, 3C)` ([`flash_causal_attention_qkv`]): the
//! candle custom op, routed to `crate::cuda::flash_attn` (bf16/f16 on CUDA) or to the head-view kernels and twin.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle_core::DType;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
#[cfg(feature = "cuda")]
use half::{bf16, f16};

use super::heads::flash_bwd;
use super::{cpu, refuse_on_cuda, store_lse, supported, FlashKernel, HeadView};
#[cfg(feature = "cuda")]
use super::{cuda_heads, cuda_qkv};

/// Causal attention straight from GPT-2's fused projection: `qkv (B, T, 3C)` (q, k, v side by side, each
/// C = NH * HS) -> `y (B, T, C)` (the heads side by side, c_proj's input), recording a backward that returns d(qkv)
/// as one `(B, T, 3C)` tensor. Nothing is permuted or copied around the kernels: on CUDA in bf16/f16 this is a thin
/// adapter over [`crate::cuda::flash_attn`] (FlashAttention-2 on the tensor cores, reading the heads out of `qkv`
/// and writing `y` and d(qkv) in place; deterministic). Elsewhere (CPU, and f32 on CUDA: the FMA reference
/// kernels) the kernels of [`flash_causal_attention`] run on head views and the result is permuted to the same layout.
pub fn flash_causal_attention_qkv(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    let (_, _, c3) = qkv.dims3()?;
    if n_head == 0 || c3 % (3 * n_head) != 0 {
        candle_core::bail!("attention qkv: last dim {c3} is not 3 * n_head ({n_head}) * head size");
    }
    let hs = c3 / 3 / n_head;
    if qkv.device().is_cuda() && !supported(qkv.device(), qkv.dtype(), hs) {
        refuse_on_cuda(qkv.dtype(), hs)?;
    }
    let op =
        FlashAttentionQkv { n_head, scale: 1.0 / (hs as f64).sqrt(), kernel: FlashKernel::Auto, lse: Mutex::new(None) };
    qkv.contiguous()?.apply_op1(op)
}

/// (B, NH, T, HS): batch, heads, positions, head size.
type HeadDims = (usize, usize, usize, usize);

/// [`flash_causal_attention_qkv`]'s op; like [`FlashAttention`] it keeps its forward's logsumexp for its backward.
struct FlashAttentionQkv {
    n_head: usize,
    scale: f64,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: FlashKernel,
    lse: Mutex<Option<Tensor>>,
}

impl FlashAttentionQkv {
    /// The q, k, v head views of a contiguous `(B, T, 3C)` layout, and (B, NH, T, HS).
    fn views(&self, l: &Layout) -> Result<([HeadView; 3], HeadDims)> {
        let (b, t, c3) = l.shape().dims3()?;
        if !l.is_contiguous() {
            candle_core::bail!("attention qkv must be contiguous");
        }
        let (c, nh) = (c3 / 3, self.n_head);
        let hs = c / nh;
        let view = |i: usize| HeadView { start: l.start_offset() + i * c, sb: t * c3, sh: hs, st: c3, nh };
        Ok(([view(0), view(1), view(2)], (b, nh, t, hs)))
    }

    fn save_lse(&self, storage: Storage, shape: (usize, usize, usize)) {
        store_lse(&self.lse, storage, shape)
    }
}

/// `(B, NH, T, HS)` rows -> `(B, T, NH * HS)` on the host.
fn heads_to_rows(o: CpuStorage, (b, nh, t, hs): HeadDims) -> Result<CpuStorage> {
    fn go<X: Copy>(o: &[X], (b, nh, t, hs): HeadDims) -> Vec<X> {
        let mut out = Vec::with_capacity(o.len());
        for bi in 0..b {
            for ti in 0..t {
                for h in 0..nh {
                    let src = ((bi * nh + h) * t + ti) * hs;
                    out.extend_from_slice(&o[src..src + hs]);
                }
            }
        }
        out
    }
    let d = (b, nh, t, hs);
    Ok(match o {
        CpuStorage::F32(v) => CpuStorage::F32(go(&v, d)),
        CpuStorage::F64(v) => CpuStorage::F64(go(&v, d)),
        CpuStorage::BF16(v) => CpuStorage::BF16(go(&v, d)),
        CpuStorage::F16(v) => CpuStorage::F16(go(&v, d)),
        o => candle_core::bail!("attention output must be float, got {:?}", o.dtype()),
    })
}

impl CustomOp1 for FlashAttentionQkv {
    fn name(&self) -> &'static str {
        "flash-causal-attention-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ([q, k, v], (b, nh, t, hs)) = self.views(l)?;
        let (o, lse) = cpu::fwd([s, s, s], (q, k, v), (b * nh, t, hs), self.scale)?;
        self.save_lse(Storage::Cpu(lse), (b, nh, t));
        Ok((heads_to_rows(o, (b, nh, t, hs))?, Shape::from((b, t, nh * hs))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let ([q, k, v], (b, nh, t, hs)) = self.views(l)?;
        let shape = Shape::from((b, t, nh * hs));
        // The tensor-core kernels take the whole buffer; f32 goes to the FMA reference kernels over head views.
        if self.kernel.tensor_cores(s.dtype()) {
            let (y, lse) = cuda_qkv::fwd(s, l.start_offset(), (b, t, nh, hs))?;
            self.save_lse(Storage::Cuda(lse), (b, nh, t));
            return Ok((y, shape));
        }
        let (o, lse) = cuda_heads::fwd(s, s, s, (q, k, v), (b, nh, t), self.scale as f32, false)?;
        self.save_lse(Storage::Cuda(lse), (b, nh, t));
        // (B, NH, T, HS) -> (B, T, NH, HS): one strided copy (f32 and the FMA switch only).
        let heads = Layout::contiguous((b, nh, t, hs)).transpose(1, 2)?;
        let dev = o.device().clone();
        let mut y = match o.dtype() {
            DType::F32 => candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f32>(b * t * nh * hs)? }, dev),
            DType::BF16 => {
                candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<bf16>(b * t * nh * hs)? }, dev)
            }
            _ => candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f16>(b * t * nh * hs)? }, dev),
        };
        o.copy_strided_src(&mut y, 0, &heads)?;
        Ok((y, shape))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention lse lock poisoned".into()))?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention backward before its forward stored the logsumexp") };
        let (b, t, c3) = qkv.dims3()?;
        let (nh, hs) = (self.n_head, c3 / 3 / self.n_head);
        #[cfg(feature = "cuda")]
        if qkv.device().is_cuda() && self.kernel.tensor_cores(qkv.dtype()) {
            return cuda_qkv::bwd(qkv, y, dy, &lse, (b, t, nh, hs)).map(Some);
        }
        // The head views as tensors (no copies: reshape of a contiguous tensor, then views), for flash_bwd.
        let x = qkv.contiguous()?.reshape((b, t, 3, nh, hs))?;
        let part = |i: usize| x.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2); // (B, NH, T, HS)
        let heads = |z: &Tensor| z.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous(); // (B, T, C) -> heads
        let (dq, dk, dv) =
            flash_bwd(&part(0)?, &part(1)?, &part(2)?, &heads(y)?, &heads(dy)?, &lse, self.scale, self.kernel)?;
        // (B, NH, T, HS) x 3 -> (B, T, 3, NH, HS) -> (B, T, 3C): one strided copy each.
        let dqkv = Tensor::stack(&[dq.transpose(1, 2)?, dk.transpose(1, 2)?, dv.transpose(1, 2)?], 2)?;
        Ok(Some(dqkv.reshape((b, t, c3))?))
    }
}
