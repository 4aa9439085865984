//! Launchers of the op over head views. `tc` (bf16/f16) runs the tensor-core kernels of flash_attn.cu through
//! `crate::cuda::flash_attn`'s views (the engine's kernels; the views must be flash-ready, see `HeadView`); otherwise
//! the FMA kernels of attention.cu: grids forward and dQ (ceil(T / 64) query tiles, B * NH), dK/dV (ceil(T / 64) key
//! tiles, B * NH), D (one thread per row), 128 threads per tile block.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Result};
use half::{bf16, f16};

use super::cuda_qkv::flash_kernels;
use super::{HeadView, FLASH_HEAD_SIZE};
use crate::cuda::devptr::DevPtr;
use crate::cuda::flash_attn::{AttnBwdViews, AttnElem, AttnLayout, FlashAttn, HeadStrides, Heads, Qkv};
use crate::cuda::launch::{dtype_suffix, grid_1d, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const FILE: &str = "attention.cu";
/// FA_THREADS, FA_BR (= FA_BKV) in attention.cu.
const THREADS: u32 = 128;
const TILE: usize = 64;

fn suffix(dt: DType) -> Result<&'static str> {
    dtype_suffix(dt, "fused attention", &[DType::F32, DType::BF16, DType::F16])
}

/// The flash kernels' strides of the op's tensors: q, k, v as their views say, y / dy and the gradients dense.
fn flash_layout(hv: &[HeadView; 3], nh: usize, t: usize) -> AttnLayout {
    let view = |h: &HeadView| HeadStrides { batch: h.sb as i64, head: h.sh as i64, row: h.st as i64 };
    let dense = HeadStrides::dense(nh, t, FLASH_HEAD_SIZE);
    AttnLayout { q: view(&hv[0]), k: view(&hv[1]), v: view(&hv[2]), y: dense, dq: dense, dk: dense, dv: dense }
}

/// Forward on the tensor cores: o `(B, NH, T, HS)` and lse from the views (flash_attn.cu, whose fixed scale
/// 1/sqrt(64) is the op's: the op runs on CUDA only at HS = 64, `super::supported`).
fn flash_fwd<T: CudaDType + DeviceRepr + AttnElem>(
    dev: &CudaDevice,
    s: [&CudaStorage; 3],
    hv: [HeadView; 3],
    (b, nh, t): (usize, usize, usize),
) -> Result<(CudaStorage, CudaStorage)> {
    let [q, k, v] = views::<T>(s, &hv)?;
    let stream = dev.cuda_stream();
    let fa = flash_kernels(dev)?;
    // SAFETY: the forward writes every element of o and lse.
    let mut o = unsafe { dev.alloc::<T>(b * nh * t * FLASH_HEAD_SIZE)? };
    let mut lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
    {
        let (q, _q) = DevPtr::of(&q, &stream);
        let (k, _k) = DevPtr::of(&k, &stream);
        let (v, _v) = DevPtr::of(&v, &stream);
        let (y, _y) = DevPtr::of_mut(&mut o, &stream);
        let (l, _l) = DevPtr::of_mut(&mut lse, &stream);
        // SAFETY: the views come from the op's (B, NH, T, 64) layouts, so every strided element lies in its storage;
        // o and lse were just allocated at the sizes the forward writes; the device's one stream.
        unsafe { fa.forward_views(Qkv { q, k, v }, y, l, &flash_layout(&hv, nh, t), b, t, Heads::mha(nh))? };
    }
    Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
}

/// Backward on the tensor cores: dense dq, dk, dv from the views, the forward's o and lse, and dout (o's layout).
fn flash_bwd<T: CudaDType + DeviceRepr + AttnElem>(
    dev: &CudaDevice,
    s: [&CudaStorage; 3],
    hv: [HeadView; 3],
    (os, gs, ls): (&CudaStorage, &CudaStorage, &CudaStorage),
    starts: (usize, usize, usize),
    (b, nh, t): (usize, usize, usize),
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let [q, k, v] = views::<T>(s, &hv)?;
    let o = os.as_cuda_slice::<T>()?.slice(starts.0..);
    let g = gs.as_cuda_slice::<T>()?.slice(starts.1..);
    let lse = ls.as_cuda_slice::<f32>()?.slice(starts.2..);
    let stream = dev.cuda_stream();
    let fa = flash_kernels(dev)?;
    let n = b * nh * t * FLASH_HEAD_SIZE;
    // SAFETY: the backward writes every element of dq, dk, dv; the scratch is written before it is read.
    let (mut dq, mut dk, mut dv) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
    let mut scratch = unsafe { dev.alloc::<f32>(FlashAttn::scratch_len(b, t, nh))? };
    {
        let (q, _q) = DevPtr::of(&q, &stream);
        let (k, _k) = DevPtr::of(&k, &stream);
        let (v, _v) = DevPtr::of(&v, &stream);
        let (y, _y) = DevPtr::of(&o, &stream);
        let (dy, _g) = DevPtr::of(&g, &stream);
        let (lse, _l) = DevPtr::of(&lse, &stream);
        let (dvec_scratch, _s) = DevPtr::of_mut(&mut scratch, &stream);
        let (dq, _dq) = DevPtr::of_mut(&mut dq, &stream);
        let (dk, _dk) = DevPtr::of_mut(&mut dk, &stream);
        let (dv, _dv) = DevPtr::of_mut(&mut dv, &stream);
        let p = AttnBwdViews { x: Qkv { q, k, v }, y, dy, lse, dvec_scratch, dx: Qkv { q: dq, k: dk, v: dv } };
        // SAFETY: as in flash_fwd; o and dout are contiguous (B, NH, T, 64) from their starts, lse (B, NH, T); the
        // gradients and the scratch were just allocated; the device's one stream.
        unsafe { fa.backward_views(p, &flash_layout(&hv, nh, t), b, t, Heads::mha(nh))? };
    }
    let w = |x| CudaStorage::wrap_cuda_slice(x, dev.clone());
    Ok((w(dq), w(dk), w(dv)))
}

fn tile_grid(bh: usize, t: usize) -> Result<LaunchConfig> {
    if bh > 65535 {
        candle_core::bail!("fused attention: B * NH = {bh} exceeds the grid's 65535 limit");
    }
    Ok(LaunchConfig {
        grid_dim: (t.div_ceil(TILE) as u32, bh as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn strides(v: &[HeadView; 3]) -> [i64; 9] {
    let mut s = [0i64; 9];
    for (i, h) in v.iter().enumerate() {
        s[3 * i] = h.sb as i64;
        s[3 * i + 1] = h.sh as i64;
        s[3 * i + 2] = h.st as i64;
    }
    s
}

fn views<'a, T: CudaDType>(s: [&'a CudaStorage; 3], v: &[HeadView; 3]) -> Result<[CudaView<'a, T>; 3]> {
    Ok([
        s[0].as_cuda_slice::<T>()?.slice(v[0].start..),
        s[1].as_cuda_slice::<T>()?.slice(v[1].start..),
        s[2].as_cuda_slice::<T>()?.slice(v[2].start..),
    ])
}

pub(super) fn fwd(
    qs: &CudaStorage,
    ks: &CudaStorage,
    vs: &CudaStorage,
    hv: (HeadView, HeadView, HeadView),
    (b, nh, t): (usize, usize, usize),
    scale: f32,
    tc: bool,
) -> Result<(CudaStorage, CudaStorage)> {
    fn go<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        s: [&CudaStorage; 3],
        hv: [HeadView; 3],
        (b, nh, t): (usize, usize, usize),
        scale: f32,
    ) -> Result<(CudaStorage, CudaStorage)> {
        let [q, k, v] = views::<T>(s, &hv)?;
        let st = strides(&hv);
        // SAFETY: the kernel writes every row < T of every head (o) and every lse entry.
        let o = unsafe { dev.alloc::<T>(b * nh * t * FLASH_HEAD_SIZE)? };
        let lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
        let func = Module::on_device(dev, FILE, PTX)?.kernel(name)?;
        let mut a = func.builder();
        let (nh_i, t_i) = (nh as i32, t as i32);
        a.arg(&q).arg(&k).arg(&v).arg(&o).arg(&lse).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_fwd_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
    }
    let dev = qs.device();
    let name = format!("fa_fwd_{}", suffix(qs.dtype())?);
    let s = [qs, ks, vs];
    let hv = [hv.0, hv.1, hv.2];
    match (qs.dtype(), tc) {
        (DType::F32, _) => go::<f32>(dev, &name, s, hv, (b, nh, t), scale),
        (DType::BF16, true) => flash_fwd::<bf16>(dev, s, hv, (b, nh, t)),
        (DType::BF16, false) => go::<bf16>(dev, &name, s, hv, (b, nh, t), scale),
        (_, true) => flash_fwd::<f16>(dev, s, hv, (b, nh, t)),
        (_, false) => go::<f16>(dev, &name, s, hv, (b, nh, t), scale),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bwd(
    qs: &CudaStorage,
    ks: &CudaStorage,
    vs: &CudaStorage,
    hv: (HeadView, HeadView, HeadView),
    (os, gs, ls): (&CudaStorage, &CudaStorage, &CudaStorage),
    starts: (usize, usize, usize),
    (b, nh, t): (usize, usize, usize),
    scale: f32,
    tc: bool,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    #[allow(clippy::too_many_arguments)]
    fn go<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        sfx: &str,
        s: [&CudaStorage; 3],
        hv: [HeadView; 3],
        (os, gs, ls): (&CudaStorage, &CudaStorage, &CudaStorage),
        starts: (usize, usize, usize),
        (b, nh, t): (usize, usize, usize),
        scale: f32,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let [q, k, v] = views::<T>(s, &hv)?;
        let st = strides(&hv);
        let o = os.as_cuda_slice::<T>()?.slice(starts.0..);
        let g = gs.as_cuda_slice::<T>()?.slice(starts.1..);
        let lse = ls.as_cuda_slice::<f32>()?.slice(starts.2..);
        let rows = b * nh * t;
        let n = rows * FLASH_HEAD_SIZE;
        // SAFETY: each kernel writes every element of its outputs (rows < T of every head).
        let dvec = unsafe { dev.alloc::<f32>(rows)? };
        let (dq, dk, dv) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
        let (nh_i, t_i, rows_i) = (nh as i32, t as i32, rows as i64);

        let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_bwd_dot_{sfx}"))?;
        let mut a = func.builder();
        a.arg(&o).arg(&g).arg(&dvec).arg(&rows_i);
        let cfg = grid_1d(rows.div_ceil(256), 256)?;
        // SAFETY: argument list matches fa_bwd_dot_* in attention.cu.
        unsafe { a.launch(cfg) }.w()?;

        let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_bwd_dkdv_{sfx}"))?;
        let mut a = func.builder();
        a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dk).arg(&dv).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_bwd_dkdv_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

        let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_bwd_dq_{sfx}"))?;
        let mut a = func.builder();
        a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dq).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_bwd_dq_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

        let w = |x| CudaStorage::wrap_cuda_slice(x, dev.clone());
        Ok((w(dq), w(dk), w(dv)))
    }
    let dev = qs.device();
    let sfx = suffix(qs.dtype())?;
    let s = [qs, ks, vs];
    let hv = [hv.0, hv.1, hv.2];
    let og = (os, gs, ls);
    match (qs.dtype(), tc) {
        (DType::F32, _) => go::<f32>(dev, sfx, s, hv, og, starts, (b, nh, t), scale),
        (DType::BF16, true) => flash_bwd::<bf16>(dev, s, hv, og, starts, (b, nh, t)),
        (DType::BF16, false) => go::<bf16>(dev, sfx, s, hv, og, starts, (b, nh, t), scale),
        (_, true) => flash_bwd::<f16>(dev, s, hv, og, starts, (b, nh, t)),
        (_, false) => go::<f16>(dev, sfx, s, hv, og, starts, (b, nh, t), scale),
    }
}
