//! Launchers for attention.cu. Grids: forward and dQ (ceil(T / 64) query tiles, B * NH), dK/dV (ceil(T / 64)
//! key tiles, B * NH), D (one thread per row); 128 threads per tile block. The FMA kernels (`fa_*`) and the
//! tensor-core kernels (`fa_tc_*`, bf16/f16) share this geometry and argument lists; `tc` picks the set.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Result};
use half::{bf16, f16};

use super::HeadView;
use crate::cuda::launch::{dtype_suffix, grid_1d, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const FILE: &str = "attention.cu";
/// FA_THREADS, FA_BR (= FA_BKV = TC_ROWS) in attention.cu.
const THREADS: u32 = 128;
const TILE: usize = 64;

fn suffix(dt: DType) -> Result<&'static str> {
    dtype_suffix(dt, "fused attention", &[DType::F32, DType::BF16, DType::F16])
}

/// "tc_" for the tensor-core kernels (bf16/f16 only), "" for the FMA ones.
fn prefix(dt: DType, tc: bool) -> &'static str {
    if tc && matches!(dt, DType::BF16 | DType::F16) {
        "tc_"
    } else {
        ""
    }
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
        let o = unsafe { dev.alloc::<T>(b * nh * t * super::FLASH_HEAD_SIZE)? };
        let lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
        let func = Module::on_device(dev, FILE, PTX)?.kernel(name)?;
        let mut a = func.builder();
        let (nh_i, t_i) = (nh as i32, t as i32);
        a.arg(&q).arg(&k).arg(&v).arg(&o).arg(&lse).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_fwd_* / fa_tc_fwd_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
    }
    let dev = qs.device();
    let name = format!("fa_{}fwd_{}", prefix(qs.dtype(), tc), suffix(qs.dtype())?);
    let s = [qs, ks, vs];
    let hv = [hv.0, hv.1, hv.2];
    match qs.dtype() {
        DType::F32 => go::<f32>(dev, &name, s, hv, (b, nh, t), scale),
        DType::BF16 => go::<bf16>(dev, &name, s, hv, (b, nh, t), scale),
        _ => go::<f16>(dev, &name, s, hv, (b, nh, t), scale),
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
        (pfx, sfx): (&str, &str),
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
        let n = rows * super::FLASH_HEAD_SIZE;
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

        let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_{pfx}bwd_dkdv_{sfx}"))?;
        let mut a = func.builder();
        a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dk).arg(&dv).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_bwd_dkdv_* / fa_tc_bwd_dkdv_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

        let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_{pfx}bwd_dq_{sfx}"))?;
        let mut a = func.builder();
        a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dq).arg(&nh_i).arg(&t_i);
        for x in &st {
            a.arg(x);
        }
        a.arg(&scale);
        // SAFETY: argument list matches fa_bwd_dq_* / fa_tc_bwd_dq_* in attention.cu.
        unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

        let w = |x| CudaStorage::wrap_cuda_slice(x, dev.clone());
        Ok((w(dq), w(dk), w(dv)))
    }
    let dev = qs.device();
    let names = (prefix(qs.dtype(), tc), suffix(qs.dtype())?);
    let s = [qs, ks, vs];
    let hv = [hv.0, hv.1, hv.2];
    let og = (os, gs, ls);
    match qs.dtype() {
        DType::F32 => go::<f32>(dev, names, s, hv, og, starts, (b, nh, t), scale),
        DType::BF16 => go::<bf16>(dev, names, s, hv, og, starts, (b, nh, t), scale),
        _ => go::<f16>(dev, names, s, hv, og, starts, (b, nh, t), scale),
    }
}
