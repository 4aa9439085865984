//! The head-view op's storages over the kernel layer's launchers: `tc` (bf16/f16) runs the tensor-core kernels of
//! flash_attn.cu through `crate::cuda::flash_attn`'s views (the engine's kernels; the views must be flash-ready, see
//! `HeadView`); otherwise the FMA reference kernels through `crate::cuda::attention_ref` (f32, and bf16/f16 when the
//! caller asks for the reference). Those launchers own the grids and names.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Result};
use half::{bf16, f16};

use super::cuda_qkv::flash_kernels;
use super::{HeadView, FLASH_HEAD_SIZE};
use crate::cuda::attention_ref::{AttnRef, RefBwd, RefElem, RefInputs};
use crate::cuda::devptr::DevPtr;
use crate::cuda::flash_attn::{AttnBwdViews, AttnElem, AttnLayout, FlashAttn, HeadStrides, Heads, Qkv};
use crate::cuda::launch::per_device;

fn ref_kernels(dev: &CudaDevice) -> Result<std::sync::Arc<AttnRef>> {
    per_device(dev, "attention_ref.cu", AttnRef::new)
}

/// A head view's strides as the kernels take them.
fn strides(h: &HeadView) -> HeadStrides {
    HeadStrides { batch: h.sb as i64, head: h.sh as i64, row: h.st as i64 }
}

/// The flash kernels' strides of the op's tensors: q, k, v as their views say, y / dy and the gradients dense.
fn flash_layout(hv: &[HeadView; 3], nh: usize, t: usize) -> AttnLayout {
    let dense = HeadStrides::dense(nh, t, FLASH_HEAD_SIZE);
    AttnLayout { q: strides(&hv[0]), k: strides(&hv[1]), v: strides(&hv[2]), y: dense, dq: dense, dk: dense, dv: dense }
}

/// A forward's launch from the views: allocates o `(B, NH, T, HS)` and lse `(B, NH, T)` and calls `launch` with the
/// inputs (as the views place them) and those outputs, every pointer held on the device's stream while it runs.
fn fwd_on<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    s: [&CudaStorage; 3],
    hv: &[HeadView; 3],
    (b, nh, t): (usize, usize, usize),
    launch: impl FnOnce(Qkv<T>, DevPtr<T>, DevPtr<f32>) -> Result<()>,
) -> Result<(CudaStorage, CudaStorage)> {
    let [q, k, v] = views::<T>(s, hv)?;
    let stream = dev.cuda_stream();
    // SAFETY: both kernel sets write every row < T of every head (o) and every lse entry.
    let mut o = unsafe { dev.alloc::<T>(b * nh * t * FLASH_HEAD_SIZE)? };
    let mut lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
    {
        let ((q, _q), (k, _k), (v, _v)) = (DevPtr::of(&q, &stream), DevPtr::of(&k, &stream), DevPtr::of(&v, &stream));
        let ((y, _y), (l, _l)) = (DevPtr::of_mut(&mut o, &stream), DevPtr::of_mut(&mut lse, &stream));
        launch(Qkv { q, k, v }, y, l)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
}

/// What a backward reads: q, k, v (`s`, placed by their views `hv`), the forward's o and lse and dout (`og`: o,
/// dout, lse, contiguous from `starts`), and (B, NH, T).
#[derive(Clone, Copy)]
struct BwdIn<'a> {
    s: [&'a CudaStorage; 3],
    hv: [HeadView; 3],
    og: (&'a CudaStorage, &'a CudaStorage, &'a CudaStorage),
    starts: (usize, usize, usize),
    bnt: (usize, usize, usize),
}

/// A backward's launch: allocates the dense dq, dk, dv and a scratch of `scratch_len` f32 and calls `launch` with
/// every pointer, held on the device's stream while it runs.
fn bwd_on<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    a: BwdIn,
    scratch_len: usize,
    launch: impl FnOnce(AttnBwdViews<T>) -> Result<()>,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let [q, k, v] = views::<T>(a.s, &a.hv)?;
    let (os, gs, ls) = a.og;
    let o = os.as_cuda_slice::<T>()?.slice(a.starts.0..);
    let g = gs.as_cuda_slice::<T>()?.slice(a.starts.1..);
    let lse = ls.as_cuda_slice::<f32>()?.slice(a.starts.2..);
    let stream = dev.cuda_stream();
    let (b, nh, t) = a.bnt;
    let n = b * nh * t * FLASH_HEAD_SIZE;
    // SAFETY: both kernel sets write every element of dq, dk, dv, and the scratch before they read it.
    let (mut dq, mut dk, mut dv) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
    let mut scratch = unsafe { dev.alloc::<f32>(scratch_len)? };
    {
        let ((q, _q), (k, _k), (v, _v)) = (DevPtr::of(&q, &stream), DevPtr::of(&k, &stream), DevPtr::of(&v, &stream));
        let ((y, _o), (dy, _g), (lse, _l)) =
            (DevPtr::of(&o, &stream), DevPtr::of(&g, &stream), DevPtr::of(&lse, &stream));
        let (dvec_scratch, _s) = DevPtr::of_mut(&mut scratch, &stream);
        let ((dq, _dq), (dk, _dk), (dv, _dv)) =
            (DevPtr::of_mut(&mut dq, &stream), DevPtr::of_mut(&mut dk, &stream), DevPtr::of_mut(&mut dv, &stream));
        launch(AttnBwdViews { x: Qkv { q, k, v }, y, dy, lse, dvec_scratch, dx: Qkv { q: dq, k: dk, v: dv } })?;
    }
    let w = |x| CudaStorage::wrap_cuda_slice(x, dev.clone());
    Ok((w(dq), w(dk), w(dv)))
}

fn views<'a, T: CudaDType>(s: [&'a CudaStorage; 3], v: &[HeadView; 3]) -> Result<[CudaView<'a, T>; 3]> {
    Ok([
        s[0].as_cuda_slice::<T>()?.slice(v[0].start..),
        s[1].as_cuda_slice::<T>()?.slice(v[1].start..),
        s[2].as_cuda_slice::<T>()?.slice(v[2].start..),
    ])
}

/// Forward on the tensor cores: o `(B, NH, T, HS)` and lse from the views (flash_attn.cu, whose fixed scale
/// 1/sqrt(64) is the op's: the op runs on CUDA only at HS = 64, `super::supported`).
fn flash_fwd<T: CudaDType + DeviceRepr + AttnElem>(
    dev: &CudaDevice,
    s: [&CudaStorage; 3],
    hv: [HeadView; 3],
    (b, nh, t): (usize, usize, usize),
) -> Result<(CudaStorage, CudaStorage)> {
    let fa = flash_kernels(dev)?;
    fwd_on::<T>(dev, s, &hv, (b, nh, t), |x, y, l| {
        // SAFETY: the views come from the op's (B, NH, T, 64) layouts, so every strided element lies in its storage;
        // o and lse were allocated at the sizes the forward writes; the device's one stream.
        unsafe { fa.forward_views(x, y, l, &flash_layout(&hv, nh, t), b, t, Heads::mha(nh)) }
    })
}

/// Backward on the tensor cores: dense dq, dk, dv from the views, the forward's o and lse, and dout (o's layout).
fn flash_bwd<T: CudaDType + DeviceRepr + AttnElem>(
    dev: &CudaDevice,
    a: BwdIn,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let fa = flash_kernels(dev)?;
    let ((b, nh, t), hv) = (a.bnt, a.hv);
    bwd_on::<T>(dev, a, FlashAttn::scratch_len(b, t, nh), |p| {
        // SAFETY: as in flash_fwd; o and dout are contiguous (B, NH, T, 64) from their starts, lse (B, NH, T); the
        // gradients and the scratch were allocated at the sizes the backward takes; the device's one stream.
        unsafe { fa.backward_views(p, &flash_layout(&hv, nh, t), b, t, Heads::mha(nh)) }
    })
}

/// Forward on the FMA reference kernels: o `(B, NH, T, HS)` and lse from the views.
fn ref_fwd<T: CudaDType + RefElem>(
    dev: &CudaDevice,
    s: [&CudaStorage; 3],
    hv: [HeadView; 3],
    bnt: (usize, usize, usize),
    scale: f32,
) -> Result<(CudaStorage, CudaStorage)> {
    let k = ref_kernels(dev)?;
    fwd_on::<T>(dev, s, &hv, bnt, |x, y, l| {
        let x = RefInputs { x, strides: hv.map(|h| strides(&h)) };
        // SAFETY: the views come from the op's (B, NH, T, 64) layouts, so every strided element lies in its storage;
        // o and lse were allocated at the sizes the forward writes; the device's one stream.
        unsafe { k.forward(x, y, l, bnt, scale) }
    })
}

/// Backward on the FMA reference kernels: dense dq, dk, dv from the views, the forward's o and lse, and dout.
fn ref_bwd<T: CudaDType + RefElem>(
    dev: &CudaDevice,
    a: BwdIn,
    scale: f32,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let k = ref_kernels(dev)?;
    let ((b, nh, t), hv) = (a.bnt, a.hv);
    bwd_on::<T>(dev, a, AttnRef::scratch_len(b, nh, t), |p| {
        let x = RefInputs { x: p.x, strides: hv.map(|h| strides(&h)) };
        let p = RefBwd { o: p.y, dout: p.dy, lse: p.lse, dvec_scratch: p.dvec_scratch, dx: p.dx };
        // SAFETY: as in ref_fwd; o and dout are contiguous (B, NH, T, 64) from their starts, lse (B, NH, T); the
        // gradients and the scratch were allocated at the sizes the backward takes; the device's one stream.
        unsafe { k.backward(x, p, (b, nh, t), scale) }
    })
}

/// The op's forward: the tensor cores (`tc`, bf16/f16) or the FMA reference kernels.
pub(super) fn fwd(
    qs: &CudaStorage,
    ks: &CudaStorage,
    vs: &CudaStorage,
    hv: (HeadView, HeadView, HeadView),
    bnt: (usize, usize, usize),
    scale: f32,
    tc: bool,
) -> Result<(CudaStorage, CudaStorage)> {
    let dev = qs.device();
    let s = [qs, ks, vs];
    let hv = [hv.0, hv.1, hv.2];
    match (qs.dtype(), tc) {
        (DType::F32, _) => ref_fwd::<f32>(dev, s, hv, bnt, scale),
        (DType::BF16, true) => flash_fwd::<bf16>(dev, s, hv, bnt),
        (DType::BF16, false) => ref_fwd::<bf16>(dev, s, hv, bnt, scale),
        (DType::F16, true) => flash_fwd::<f16>(dev, s, hv, bnt),
        (DType::F16, false) => ref_fwd::<f16>(dev, s, hv, bnt, scale),
        (dt, _) => candle_core::bail!("fused attention on CUDA takes f32, bf16 or f16, got {dt:?}"),
    }
}

/// The op's backward, on the kernels its forward ran.
#[allow(clippy::too_many_arguments)]
pub(super) fn bwd(
    qs: &CudaStorage,
    ks: &CudaStorage,
    vs: &CudaStorage,
    hv: (HeadView, HeadView, HeadView),
    og: (&CudaStorage, &CudaStorage, &CudaStorage),
    starts: (usize, usize, usize),
    bnt: (usize, usize, usize),
    scale: f32,
    tc: bool,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let dev = qs.device();
    let a = BwdIn { s: [qs, ks, vs], hv: [hv.0, hv.1, hv.2], og, starts, bnt };
    match (qs.dtype(), tc) {
        (DType::F32, _) => ref_bwd::<f32>(dev, a, scale),
        (DType::BF16, true) => flash_bwd::<bf16>(dev, a),
        (DType::BF16, false) => ref_bwd::<bf16>(dev, a, scale),
        (DType::F16, true) => flash_bwd::<f16>(dev, a),
        (DType::F16, false) => ref_bwd::<f16>(dev, a, scale),
        (dt, _) => candle_core::bail!("fused attention on CUDA takes f32, bf16 or f16, got {dt:?}"),
    }
}
