//! LayerNorm and RMSNorm of the decoder engine (norm.cu): f32 residual in, bf16 out, mean (LayerNorm) and rstd kept;
//! the backward adds into the f32 residual gradient, writes its bf16 copy, and adds the weight (and bias) gradients
//! deterministically. One launcher for both: the norm is chosen at construction, and the bias and mean pointers are
//! `None` for RMSNorm. CPU checks: dev/cuda/check_engine.cpp (the .cu under emulation against a double-precision
//! reference).

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
/// The kernel names of chunk count `nch` (norm.cu instantiates 1..=16): forward, fused residual + forward, backward.
fn names(rms: bool, nch: usize) -> [String; 3] {
    let p = if rms { "rms" } else { "ln" };
    [format!("{p}_fwd_engine_{nch}"), format!("{p}_fwd_residual_engine_{nch}"), format!("{p}_bwd_engine_{nch}")]
}

/// The kernels of one norm for one row width C.
pub struct Norm {
    module: Module,
    c: usize,
    rms: bool,
    fwd: String,
    fwd_res: String,
    bwd: String,
    reduce: &'static str,
}

impl Norm {
    /// LayerNorm (`rms = false`: mean, rstd, weight and bias) or RMSNorm (`rms = true`: rstd and weight) over rows of
    /// `c` f32.
    pub fn new(stream: &Arc<CudaStream>, c: usize, rms: bool) -> Result<Norm> {
        if c == 0 || !c.is_multiple_of(4) || c > MAX_C {
            candle_core::bail!("engine norm: C = {c} must be a positive multiple of 4 up to {MAX_C}");
        }
        let [fwd, fwd_res, bwd] = names(rms, c.div_ceil(128));
        let reduce = if rms { "rms_bwd_reduce_engine" } else { "ln_bwd_reduce_engine" };
        let module = Module::load(stream, "norm.cu", PTX, &[&fwd, &fwd_res, &bwd, reduce])?;
        Ok(Norm { module, c, rms, fwd, fwd_res, bwd, reduce })
    }

    /// The pointers a LayerNorm needs and an RMSNorm must not get (bias, mean), checked against the kind.
    fn check_kind(&self, b: Option<u64>, mean: Option<u64>) -> Result<()> {
        if self.rms != (b.is_none() && mean.is_none()) || b.is_some() != mean.is_some() {
            candle_core::bail!(
                "engine norm: {} takes {} (got bias {b:?}, mean {mean:?})",
                if self.rms { "RMSNorm" } else { "LayerNorm" },
                if self.rms { "no bias or mean" } else { "a bias and a mean" }
            );
        }
        Ok(())
    }

    /// f32 scratch the backward needs for `n` rows (the per-block dw/db partials).
    pub fn scratch_len(&self, n: usize) -> usize {
        2 * n.div_ceil(BWD_ROWS) * self.c
    }

    /// `y (n, C) bf16 = norm(x (n, C) f32)`, `mean` (LayerNorm), `rstd` (n) f32.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; `w`, `b` hold C f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward(
        &self,
        x: u64,
        w: u64,
        b: Option<u64>,
        y: u64,
        mean: Option<u64>,
        rstd: u64,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        // SAFETY: the caller's contract (`x` is the kernel's one input).
        unsafe { self.launch_forward(&self.fwd, &[x], (w, b), y, (mean, rstd), n, eps) }
    }

    /// The arguments both forward kernels share, after their inputs: `(w, [b], y, [mean], rstd, n, c, eps)`.
    ///
    /// # Safety
    /// As `forward` / `forward_residual`; `inputs` are the kernel's leading pointer arguments.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_forward(
        &self,
        kernel: &str,
        inputs: &[u64],
        (w, b): (u64, Option<u64>),
        y: u64,
        (mean, rstd): (Option<u64>, u64),
        n: usize,
        eps: f32,
    ) -> Result<()> {
        self.check_kind(b, mean)?;
        let (n_i, c_i) = (int(n, "norm rows")?, self.c as i32);
        let mut a = self.module.args(kernel)?;
        for p in inputs {
            a.arg(p);
        }
        a.arg(&w);
        let (b, mean) = (b.unwrap_or(0), mean.unwrap_or(0));
        if !self.rms {
            a.arg(&b);
        }
        a.arg(&y);
        if !self.rms {
            a.arg(&mean);
        }
        a.arg(&rstd).arg(&n_i).arg(&c_i).arg(&eps);
        go(a, cfg((blocks(n, WARPS)?, 1), (THREADS, 1)))
    }

    /// The residual add fused with the norm after it: `res_out = res + delta` (f32 + bf16 -> f32), then
    /// `y = norm(res_out)` as `forward`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes (`res`, `res_out` n x C f32; `delta`, `y` n x C bf16).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward_residual(
        &self,
        (res, delta, res_out): (u64, u64, u64),
        w: u64,
        b: Option<u64>,
        y: u64,
        mean: Option<u64>,
        rstd: u64,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.launch_forward(&self.fwd_res, &[res, delta, res_out], (w, b), y, (mean, rstd), n, eps) }
    }

    /// `dres (n, C) f32 += dnorm/dx`, `dres16 = bf16(dres)`, `dw (C) f32 +=` (and `db` for LayerNorm), from
    /// `dy (n, C) bf16`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; `scratch` holds `scratch_len(n)` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn backward(
        &self,
        dy: u64,
        x: u64,
        w: u64,
        mean: Option<u64>,
        rstd: u64,
        (dres, dres16): (u64, u64),
        (dw, db): (u64, Option<u64>),
        scratch: u64,
        n: usize,
    ) -> Result<()> {
        self.check_kind(db, mean)?;
        let (n_i, c_i) = (int(n, "norm rows")?, self.c as i32);
        let nb = blocks(n, BWD_ROWS)?;
        let mut a = self.module.args(&self.bwd)?;
        a.arg(&dy).arg(&x).arg(&w);
        let (db, mean) = (db.unwrap_or(0), mean.unwrap_or(0));
        if !self.rms {
            a.arg(&mean);
        }
        a.arg(&rstd).arg(&dres).arg(&dres16).arg(&scratch).arg(&n_i).arg(&c_i);
        go(a, cfg((nb, 1), (THREADS, 1)))?;
        let p = nb as i32;
        let mut a = self.module.args(self.reduce)?;
        a.arg(&scratch).arg(&dw);
        if !self.rms {
            a.arg(&db);
        }
        a.arg(&p).arg(&c_i);
        go(a, cfg((blocks(self.c, 32)?, 1), (32, 8)))
    }
}
