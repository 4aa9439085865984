//! The fused attention op over q, k, v head views `(B, NH, T, HS)` ([`flash_causal_attention`]): shape checks, the
//! candle custom op with its forward on CPU and CUDA, and the backward both ops share (`flash_bwd`).

use std::sync::Mutex;

#[cfg(feature = "cuda")]
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::super::real::acc_dtype;
#[cfg(feature = "cuda")]
use super::cuda_heads;
use super::{cpu, refuse_on_cuda, store_lse, supported, FlashKernel, HeadView};

/// Causal attention `softmax(q k^T / sqrt(HS) + mask) v` for `q, k, v (B, NH, T, HS)` of one dtype, fused
/// (see the module doc); records its own backward. On CUDA, HS must be 64 and the dtype f32/bf16/f16 (an error
/// otherwise: `model::attention::causal_attention` falls back to the composed path there).
pub fn flash_causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    flash_causal_attention_with(q, k, v, FlashKernel::Auto)
}

/// [`flash_causal_attention`] with the CUDA kernel set chosen (for tests and timings: tensor cores vs FMA).
pub fn flash_causal_attention_with(q: &Tensor, k: &Tensor, v: &Tensor, kernel: FlashKernel) -> Result<Tensor> {
    let (b, nh, t, hs) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention q, k, v must share a shape (B, NH, T, HS): {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!("attention q, k, v must share a dtype: {:?}, {:?}, {:?}", q.dtype(), k.dtype(), v.dtype());
    }
    if b * nh * t * hs == 0 {
        candle_core::bail!("attention over an empty tensor ({b}, {nh}, {t}, {hs})");
    }
    if q.device().is_cuda() && !supported(q.device(), q.dtype(), hs) {
        refuse_on_cuda(q.dtype(), hs)?;
    }
    let tc = q.device().is_cuda() && kernel.tensor_cores(q.dtype());
    let op = FlashAttention { scale: 1.0 / (hs as f64).sqrt(), kernel, lse: Mutex::new(None) };
    readable(q, tc)?.apply_op3(&readable(k, tc)?, &readable(v, tc)?, op)
}

/// `x` as the kernels can read it: the last dim dense, and for the tensor-core kernels (`tc`: 16-byte cp.async rows)
/// its start and every stride a multiple of 8 elements; a copy where it is not.
fn readable(x: &Tensor, tc: bool) -> Result<Tensor> {
    let l = x.layout();
    let aligned =
        !tc || (l.start_offset().is_multiple_of(8) && l.stride().iter().rev().skip(1).all(|s| s.is_multiple_of(8)));
    match (l.stride()[3] == 1, aligned) {
        (true, true) => Ok(x.clone()),
        (true, false) => x.force_contiguous(),
        (false, _) => x.contiguous(),
    }
}

/// One call's op: the forward stores the row logsumexp here for this call's backward (each call builds its own).
struct FlashAttention {
    scale: f64,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: FlashKernel,
    lse: Mutex<Option<Tensor>>, // (B, NH, T)
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, nh, t, hs) = l1.shape().dims4()?;
        let views = (HeadView::new(l1, "q")?, HeadView::new(l2, "k")?, HeadView::new(l3, "v")?);
        let (o, lse) = cpu::fwd([s1, s2, s3], views, (b * nh, t, hs), self.scale)?;
        self.save_lse(Storage::Cpu(lse), (b, nh, t));
        Ok((o, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, nh, t, _) = l1.shape().dims4()?;
        let views = (HeadView::new(l1, "q")?, HeadView::new(l2, "k")?, HeadView::new(l3, "v")?);
        let tc = self.kernel.tensor_cores(s1.dtype());
        let (o, lse) = cuda_heads::fwd(s1, s2, s3, views, (b, nh, t), self.scale as f32, tc)?;
        self.save_lse(Storage::Cuda(lse), (b, nh, t));
        Ok((o, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention lse lock poisoned".into()))?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention backward before its forward stored the logsumexp") };
        let (dq, dk, dv) = flash_bwd(q, k, v, o, dout, &lse, self.scale, self.kernel)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl FlashAttention {
    fn save_lse(&self, storage: Storage, shape: (usize, usize, usize)) {
        store_lse(&self.lse, storage, shape)
    }
}

/// dQ, dK, dV (each `(B, NH, T, HS)` in the inputs' dtype) from the inputs (as the forward read them), the forward's
/// `o` and `lse`, and `dout`.
#[allow(clippy::too_many_arguments)]
pub(super) fn flash_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    scale: f64,
    kernel: FlashKernel,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, nh, t, hs) = q.dims4()?;
    // o and dout are read contiguous from their starts.
    let tc = q.device().is_cuda() && kernel.tensor_cores(q.dtype());
    let (o, dout) = (readable(&o.contiguous()?, tc)?, readable(&dout.contiguous()?, tc)?);
    let lse = lse.to_dtype(acc_dtype(q.dtype()))?.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (os, ol) = o.storage_and_layout();
    let (gs, gl) = dout.storage_and_layout();
    let (ls, ll) = lse.storage_and_layout();
    // Contiguous, but possibly a view starting inside its storage.
    let starts = (ol.start_offset(), gl.start_offset(), ll.start_offset());
    let views = (HeadView::new(ql, "q")?, HeadView::new(kl, "k")?, HeadView::new(vl, "v")?);
    let shape = (b, nh, t, hs);
    let wrap = |s: Storage| Tensor::from_storage(s, shape, BackpropOp::none(), false);
    match (&*qs, &*ks, &*vs, &*os, &*gs, &*ls) {
        (
            Storage::Cpu(qs),
            Storage::Cpu(ks),
            Storage::Cpu(vs),
            Storage::Cpu(os),
            Storage::Cpu(gs),
            Storage::Cpu(ls),
        ) => {
            let (dq, dk, dv) = cpu::bwd([qs, ks, vs], views, (os, gs, ls), starts, (b * nh, t, hs), scale)?;
            Ok((wrap(Storage::Cpu(dq)), wrap(Storage::Cpu(dk)), wrap(Storage::Cpu(dv))))
        }
        #[cfg(feature = "cuda")]
        (
            Storage::Cuda(qs),
            Storage::Cuda(ks),
            Storage::Cuda(vs),
            Storage::Cuda(os),
            Storage::Cuda(gs),
            Storage::Cuda(ls),
        ) => {
            let (dq, dk, dv) = cuda_heads::bwd(qs, ks, vs, views, (os, gs, ls), starts, (b, nh, t), scale as f32, tc)?;
            Ok((wrap(Storage::Cuda(dq)), wrap(Storage::Cuda(dk)), wrap(Storage::Cuda(dv))))
        }
        _ => candle_core::bail!("attention backward: q, k, v, o, dout and lse must be on one CPU or CUDA device"),
    }
}
