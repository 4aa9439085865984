//! The qkv op over crate::cuda::flash_attn: candle storages in, typed device pointers to the launcher, storages out.
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Result, Storage, Tensor};
use half::{bf16, f16};

use crate::cuda::devptr::DevPtr;
use crate::cuda::flash_attn::{AttnBwd, AttnElem, AttnFwd, Dtype, FlashAttn, Heads};
use crate::cuda::launch::per_device;

/// flash_attn.cu's kernels, loaded once per device (both ops run them).
pub(super) fn flash_kernels(dev: &CudaDevice) -> Result<Arc<FlashAttn>> {
    per_device(dev, "flash_attn.cu", FlashAttn::new)
}

fn dtype(dt: DType) -> Result<Dtype> {
    match dt {
        DType::BF16 => Ok(Dtype::Bf16),
        DType::F16 => Ok(Dtype::F16),
        dt => candle_core::bail!("flash attention takes bf16 or f16, got {dt:?}"),
    }
}

/// `y (B, T, C)` and `lse (B, NH, T)` from the contiguous `qkv` storage starting at element `start`.
pub(super) fn fwd(
    s: &CudaStorage,
    start: usize,
    (b, t, nh, hs): (usize, usize, usize, usize),
) -> Result<(CudaStorage, CudaStorage)> {
    fn go<X: CudaDType + DeviceRepr + AttnElem>(
        s: &CudaStorage,
        start: usize,
        d: (usize, usize, usize, usize),
    ) -> Result<(CudaStorage, CudaStorage)> {
        let (b, t, nh, hs) = d;
        let dev = s.device();
        let stream = dev.cuda_stream();
        let fa = flash_kernels(dev)?;
        let qkv = s.as_cuda_slice::<X>()?.slice(start..);
        // SAFETY: forward writes every element of y and lse.
        let mut y = unsafe { dev.alloc::<X>(b * t * nh * hs)? };
        let mut lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
        {
            let (qp, _q) = DevPtr::of(&qkv, &stream);
            let (yp, _y) = DevPtr::of_mut(&mut y, &stream);
            let (lp, _l) = DevPtr::of_mut(&mut lse, &stream);
            // SAFETY: qkv holds b * t * 3 * nh * hs elements from `start` (the op's contiguous input), y and
            // lse were just allocated at the sizes forward writes; all on the device's one stream.
            unsafe { fa.forward_with(AttnFwd { qkv: qp, y: yp, lse: lp }, b, t, Heads::mha(nh), hs)? };
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
    }
    let d = (b, t, nh, hs);
    match dtype(s.dtype())? {
        Dtype::Bf16 => go::<bf16>(s, start, d),
        Dtype::F16 => go::<f16>(s, start, d),
    }
}

/// d(qkv) `(B, T, 3C)` from qkv, the op's output y, its gradient dy and the forward's lse.
pub(super) fn bwd(
    qkv: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    lse: &Tensor,
    (b, t, nh, hs): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let dt = dtype(qkv.dtype())?;
    let (qkv, y, dy, lse) = (qkv.contiguous()?, y.contiguous()?, dy.contiguous()?, lse.contiguous()?);
    let (qs, ql) = qkv.storage_and_layout();
    let (ys, yl) = y.storage_and_layout();
    let (gs, gl) = dy.storage_and_layout();
    let (ls, ll) = lse.storage_and_layout();
    let (Storage::Cuda(qs), Storage::Cuda(ys), Storage::Cuda(gs), Storage::Cuda(ls)) = (&*qs, &*ys, &*gs, &*ls) else {
        candle_core::bail!("flash attention backward: qkv, y, dy and lse must be on one CUDA device");
    };
    let starts = [ql.start_offset(), yl.start_offset(), gl.start_offset(), ll.start_offset()];
    fn go<X: CudaDType + DeviceRepr + AttnElem>(
        st: [&CudaStorage; 4],
        starts: [usize; 4],
        (b, t, nh, hs): (usize, usize, usize, usize),
    ) -> Result<CudaStorage> {
        let dev = st[0].device();
        let stream = dev.cuda_stream();
        let fa = flash_kernels(dev)?;
        let qkv = st[0].as_cuda_slice::<X>()?.slice(starts[0]..);
        let y = st[1].as_cuda_slice::<X>()?.slice(starts[1]..);
        let dy = st[2].as_cuda_slice::<X>()?.slice(starts[2]..);
        let lse = st[3].as_cuda_slice::<f32>()?.slice(starts[3]..);
        // SAFETY: backward writes every element of dqkv; the scratch is written before it is read.
        let mut dqkv = unsafe { dev.alloc::<X>(b * t * 3 * nh * hs)? };
        let mut scratch = unsafe { dev.alloc::<f32>(FlashAttn::scratch_len(b, t, nh))? };
        {
            let (qkv, _q) = DevPtr::of(&qkv, &stream);
            let (y, _y) = DevPtr::of(&y, &stream);
            let (dy, _g) = DevPtr::of(&dy, &stream);
            let (lse, _l) = DevPtr::of(&lse, &stream);
            let (dvec_scratch, _s) = DevPtr::of_mut(&mut scratch, &stream);
            let (dqkv, _d) = DevPtr::of_mut(&mut dqkv, &stream);
            let p = AttnBwd { qkv, y, dy, lse, dvec_scratch, dqkv };
            // SAFETY: contiguous inputs of the sizes the API documents (checked by the op's shapes); the
            // outputs were just allocated; one stream.
            unsafe { fa.backward_with(p, b, t, Heads::mha(nh), hs)? };
        }
        Ok(CudaStorage::wrap_cuda_slice(dqkv, dev.clone()))
    }
    let st = [qs, ys, gs, ls];
    let d = (b, t, nh, hs);
    let out = match dt {
        Dtype::Bf16 => go::<bf16>(st, starts, d)?,
        Dtype::F16 => go::<f16>(st, starts, d)?,
    };
    Ok(Tensor::from_storage(Storage::Cuda(out), (b, t, 3 * nh * hs), BackpropOp::none(), false))
}
