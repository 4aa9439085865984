//! The FMA reference attention (attention_ref.cu), its one launcher: causal attention over q, k, v `(B, NH, T, 64)`
//! read through (batch, head, row) strides, f32, bf16 or f16 in, f32 accumulation, o and the gradients dense. What the
//! kernel lab and the GPU tests hold the tensor-core kernels (`flash_attn`) against, and the candle attention op's
//! f32 path on CUDA (the tensor cores take bf16/f16 only); `model::kernels::attention::cuda_heads` adapts storages to
//! it. The decoder engine never runs it.
//!
//! This file alone knows the kernels' grids, blocks and names. CPU checks: dev/cuda/check.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::Result;
use half::{bf16, f16};

use super::devptr::DevPtr;
use super::flash_attn::{HeadStrides, Qkv};
use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention_ref.ptx"));
/// FA_THREADS and FA_BR (= FA_BKV) in attention_ref.cu: one block of 128 threads per 64-row tile.
const THREADS: u32 = 128;
const TILE: usize = 64;
/// The block of the D = rowsum(dO * O) kernel (one thread per row).
const DOT_THREADS: u32 = 256;

/// An element type attention_ref.cu instantiates its kernels for (`attn_ref_fwd_<suffix>`).
pub trait RefElem: DeviceRepr {
    const SUFFIX: &'static str;
}

impl RefElem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl RefElem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

impl RefElem for f16 {
    const SUFFIX: &'static str = "f16";
}

/// q, k and v `(B, NH, T, 64)`: where each starts and its strides (elements; the head-size dim dense).
#[derive(Clone, Copy, Debug)]
pub struct RefInputs<T> {
    pub x: Qkv<T>,
    pub strides: [HeadStrides; 3],
}

/// The buffers of one backward besides the inputs: the forward's `o` and `lse`, `dout` (o's layout), the D scratch
/// (`B * NH * T` f32, contents irrelevant on entry), and the gradients `dx` (dense, written whole).
#[derive(Clone, Copy, Debug)]
pub struct RefBwd<T> {
    pub o: DevPtr<T>,
    pub dout: DevPtr<T>,
    pub lse: DevPtr<f32>,
    pub dvec_scratch: DevPtr<f32>,
    pub dx: Qkv<T>,
}

pub struct AttnRef {
    module: Module,
}

impl AttnRef {
    pub fn new(stream: &Arc<CudaStream>) -> Result<AttnRef> {
        let kernels = ["attn_ref_fwd", "attn_ref_bwd_dot", "attn_ref_bwd_dkdv", "attn_ref_bwd_dq"];
        let module = Module::load(stream, "attention_ref.cu", PTX, &[])?
            .with_suffixed(&kernels, &[f32::SUFFIX, bf16::SUFFIX, f16::SUFFIX])?;
        Ok(AttnRef { module })
    }

    /// f32 elements of the backward's D scratch.
    pub fn scratch_len(b: usize, nh: usize, t: usize) -> usize {
        b * nh * t
    }

    /// A tile kernel's grid: ceil(T / 64) tiles by B * NH heads.
    fn tile_grid(bh: usize, t: usize) -> Result<LaunchConfig> {
        if bh > 65535 {
            candle_core::bail!("reference attention: B * NH = {bh} exceeds the grid's 65535 limit");
        }
        Ok(cfg((blocks(t, TILE)?, bh as u32), (THREADS, 1)))
    }

    /// `o (B, NH, T, 64)` dense and `lse (B, NH, T)` f32 from q, k, v, scores scaled by `scale`.
    ///
    /// # Safety
    /// Every element the inputs' strides reach for (b, nh, t) lies in a live device allocation; `o` holds
    /// b * nh * t * 64 elements and `lse` b * nh * t f32, overlapping no input; this module's stream.
    pub unsafe fn forward<T: RefElem>(
        &self,
        x: RefInputs<T>,
        o: DevPtr<T>,
        lse: DevPtr<f32>,
        (b, nh, t): (usize, usize, usize),
        scale: f32,
    ) -> Result<()> {
        let (nh_i, t_i) = (int(nh, "heads")?, int(t, "T")?);
        let mut a = self.module.args(&format!("attn_ref_fwd_{}", T::SUFFIX))?;
        a.arg(&x.x.q).arg(&x.x.k).arg(&x.x.v).arg(&o).arg(&lse).arg(&nh_i).arg(&t_i);
        push_strides(&mut a, &x.strides);
        a.arg(&scale);
        go(a, Self::tile_grid(b * nh, t)?)
    }

    /// dq, dk, dv (`p.dx`, dense `(B, NH, T, 64)`) from the inputs as the forward read them, its `o` and `lse`, and
    /// `dout`: D = rowsum(dout * o) into the scratch, then dK/dV per key tile and dQ per query tile.
    ///
    /// # Safety
    /// As [`AttnRef::forward`]; `o`, `dout` and the gradients hold b * nh * t * 64 elements, `lse` and the scratch
    /// b * nh * t f32; the gradients and the scratch overlap nothing else.
    pub unsafe fn backward<T: RefElem>(
        &self,
        x: RefInputs<T>,
        p: RefBwd<T>,
        (b, nh, t): (usize, usize, usize),
        scale: f32,
    ) -> Result<()> {
        let RefBwd { o, dout, lse, dvec_scratch: dvec, dx } = p;
        let rows = Self::scratch_len(b, nh, t);
        let (nh_i, t_i, rows_i) = (int(nh, "heads")?, int(t, "T")?, rows as i64);
        let mut a = self.module.args(&format!("attn_ref_bwd_dot_{}", T::SUFFIX))?;
        a.arg(&o).arg(&dout).arg(&dvec).arg(&rows_i);
        go(a, cfg((blocks(rows, DOT_THREADS as usize)?, 1), (DOT_THREADS, 1)))?;

        let mut a = self.module.args(&format!("attn_ref_bwd_dkdv_{}", T::SUFFIX))?;
        a.arg(&x.x.q).arg(&x.x.k).arg(&x.x.v).arg(&dout).arg(&lse).arg(&dvec).arg(&dx.k).arg(&dx.v);
        a.arg(&nh_i).arg(&t_i);
        push_strides(&mut a, &x.strides);
        a.arg(&scale);
        go(a, Self::tile_grid(b * nh, t)?)?;

        let mut a = self.module.args(&format!("attn_ref_bwd_dq_{}", T::SUFFIX))?;
        a.arg(&x.x.q).arg(&x.x.k).arg(&x.x.v).arg(&dout).arg(&lse).arg(&dvec).arg(&dx.q).arg(&nh_i).arg(&t_i);
        push_strides(&mut a, &x.strides);
        a.arg(&scale);
        go(a, Self::tile_grid(b * nh, t)?)
    }
}

/// The kernels' nine stride arguments (q, k, v: batch, head, row), as int64 scalars.
fn push_strides<'a>(a: &mut LaunchArgs<'a>, s: &'a [HeadStrides; 3]) {
    for h in s {
        a.arg(&h.batch).arg(&h.head).arg(&h.row);
    }
}
