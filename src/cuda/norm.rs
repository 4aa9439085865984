//! LayerNorm of the GPT-2 engine (norm.cu): f32 residual in, bf16 out, mean and rstd kept; the backward adds into
//! the f32 residual gradient, writes its bf16 copy, and adds the weight and bias gradients deterministically.
//! CPU checks: dev/cuda/check_engine.cpp (the .cu under emulation against a double-precision reference).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;

use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
/// LN_MAX_C, LN_WARPS, LN_BWD_ROWS, LN_THREADS in norm.cu.
pub const MAX_C: usize = 2048;
const WARPS: usize = 8;
const BWD_ROWS: usize = 256;
const THREADS: u32 = 256;
const FWD: [&str; 16] = [
    "ln_fwd_engine_1",
    "ln_fwd_engine_2",
    "ln_fwd_engine_3",
    "ln_fwd_engine_4",
    "ln_fwd_engine_5",
    "ln_fwd_engine_6",
    "ln_fwd_engine_7",
    "ln_fwd_engine_8",
    "ln_fwd_engine_9",
    "ln_fwd_engine_10",
    "ln_fwd_engine_11",
    "ln_fwd_engine_12",
    "ln_fwd_engine_13",
    "ln_fwd_engine_14",
    "ln_fwd_engine_15",
    "ln_fwd_engine_16",
];
const FWD_RES: [&str; 16] = [
    "ln_fwd_residual_engine_1",
    "ln_fwd_residual_engine_2",
    "ln_fwd_residual_engine_3",
    "ln_fwd_residual_engine_4",
    "ln_fwd_residual_engine_5",
    "ln_fwd_residual_engine_6",
    "ln_fwd_residual_engine_7",
    "ln_fwd_residual_engine_8",
    "ln_fwd_residual_engine_9",
    "ln_fwd_residual_engine_10",
    "ln_fwd_residual_engine_11",
    "ln_fwd_residual_engine_12",
    "ln_fwd_residual_engine_13",
    "ln_fwd_residual_engine_14",
    "ln_fwd_residual_engine_15",
    "ln_fwd_residual_engine_16",
];
const BWD: [&str; 16] = [
    "ln_bwd_engine_1",
    "ln_bwd_engine_2",
    "ln_bwd_engine_3",
    "ln_bwd_engine_4",
    "ln_bwd_engine_5",
    "ln_bwd_engine_6",
    "ln_bwd_engine_7",
    "ln_bwd_engine_8",
    "ln_bwd_engine_9",
    "ln_bwd_engine_10",
    "ln_bwd_engine_11",
    "ln_bwd_engine_12",
    "ln_bwd_engine_13",
    "ln_bwd_engine_14",
    "ln_bwd_engine_15",
    "ln_bwd_engine_16",
];

/// The kernels for one row width C.
pub struct LayerNorm {
    module: Module,
    c: usize,
    fwd: &'static str,
    fwd_res: &'static str,
    bwd: &'static str,
}

impl LayerNorm {
    pub fn new(stream: &Arc<CudaStream>, c: usize) -> Result<LayerNorm> {
        if c == 0 || c % 4 != 0 || c > MAX_C {
            candle_core::bail!("engine LayerNorm: C = {c} must be a positive multiple of 4 up to {MAX_C}");
        }
        let nch = c.div_ceil(128);
        let (fwd, fwd_res, bwd) = (FWD[nch - 1], FWD_RES[nch - 1], BWD[nch - 1]);
        let module = Module::load(stream, "norm.cu", PTX, &[fwd, fwd_res, bwd, "ln_bwd_reduce_engine"])?;
        Ok(LayerNorm { module, c, fwd, fwd_res, bwd })
    }

    /// f32 scratch the backward needs for `n` rows (the per-block dw/db partials).
    pub fn scratch_len(&self, n: usize) -> usize {
        2 * n.div_ceil(BWD_ROWS) * self.c
    }

    /// `y (n, C) bf16 = LN(x (n, C) f32)`, `mean`, `rstd` (n) f32.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; `w`, `b` hold C f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward(
        &self,
        x: u64,
        w: u64,
        b: u64,
        y: u64,
        mean: u64,
        rstd: u64,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        let (n_i, c_i) = (int(n, "LayerNorm rows")?, self.c as i32);
        let mut a = self.module.args(self.fwd)?;
        a.arg(&x).arg(&w).arg(&b).arg(&y).arg(&mean).arg(&rstd).arg(&n_i).arg(&c_i).arg(&eps);
        go(a, cfg((blocks(n, WARPS)?, 1), (THREADS, 1)))
    }

    /// The residual add fused with the LayerNorm after it: `res_out = res + delta` (f32 + bf16 -> f32), then
    /// `y = LN(res_out)` as `forward`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes (`res`, `res_out` n x C f32; `delta`, `y` n x C bf16).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward_residual(
        &self,
        (res, delta, res_out): (u64, u64, u64),
        w: u64,
        b: u64,
        y: u64,
        mean: u64,
        rstd: u64,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        let (n_i, c_i) = (int(n, "LayerNorm rows")?, self.c as i32);
        let mut a = self.module.args(self.fwd_res)?;
        a.arg(&res)
            .arg(&delta)
            .arg(&res_out)
            .arg(&w)
            .arg(&b)
            .arg(&y)
            .arg(&mean)
            .arg(&rstd)
            .arg(&n_i)
            .arg(&c_i)
            .arg(&eps);
        go(a, cfg((blocks(n, WARPS)?, 1), (THREADS, 1)))
    }

    /// `dres (n, C) f32 += dLN/dx`, `dres16 = bf16(dres)`, `dw, db (C) f32 +=`, from `dy (n, C) bf16`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; `scratch` holds `scratch_len(n)` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn backward(
        &self,
        dy: u64,
        x: u64,
        w: u64,
        mean: u64,
        rstd: u64,
        dres: u64,
        dres16: u64,
        dw: u64,
        db: u64,
        scratch: u64,
        n: usize,
    ) -> Result<()> {
        let (n_i, c_i) = (int(n, "LayerNorm rows")?, self.c as i32);
        let nb = blocks(n, BWD_ROWS)?;
        let mut a = self.module.args(self.bwd)?;
        a.arg(&dy).arg(&x).arg(&w).arg(&mean).arg(&rstd).arg(&dres).arg(&dres16).arg(&scratch).arg(&n_i).arg(&c_i);
        go(a, cfg((nb, 1), (THREADS, 1)))?;
        let p = nb as i32;
        let mut a = self.module.args("ln_bwd_reduce_engine")?;
        a.arg(&scratch).arg(&dw).arg(&db).arg(&p).arg(&c_i);
        go(a, cfg((blocks(self.c, 32)?, 1), (32, 8)))
    }
}
