//! LayerNorm and RMSNorm of the decoder engine (norm.cu): f32 residual in, bf16 out, mean (LayerNorm) and rstd kept;
//! the backward adds into the f32 residual gradient, writes its bf16 copy, and adds the weight (and bias) gradients
//! deterministically. One launcher for both: the norm is chosen at construction, and the bias and mean pointers are
//! `None` for RMSNorm. CPU checks: dev/cuda/check_engine.cpp (the .cu under emulation against a double-precision
//! reference).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
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

/// What a forward writes and reads besides its input: weight `w` and bias `b` (C f32; no bias for RMSNorm), the
/// output `y` (n, C) bf16, and the per-row `mean` (LayerNorm only) and `rstd` (n f32).
#[derive(Clone, Copy, Debug)]
pub struct NormFwd {
    pub w: DevPtr<f32>,
    pub b: Option<DevPtr<f32>>,
    pub y: DevPtr<bf16>,
    pub mean: Option<DevPtr<f32>>,
    pub rstd: DevPtr<f32>,
}

/// The buffers of one backward: `dy (n, C) bf16`, the forward's input `x (n, C) f32`, weight `w`, `mean`
/// (LayerNorm only) and `rstd`; the running residual gradient `dres (n, C) f32` and its bf16 copy `dres16`; the
/// weight (and, for LayerNorm, bias) gradients `dw`, `db` (C f32); `scratch` (`Norm::scratch_len(n)` f32).
#[derive(Clone, Copy, Debug)]
pub struct NormBwd {
    pub dy: DevPtr<bf16>,
    pub x: DevPtr<f32>,
    pub w: DevPtr<f32>,
    pub mean: Option<DevPtr<f32>>,
    pub rstd: DevPtr<f32>,
    pub dres: DevPtr<f32>,
    pub dres16: DevPtr<bf16>,
    pub dw: DevPtr<f32>,
    pub db: Option<DevPtr<f32>>,
    pub scratch: DevPtr<f32>,
}

/// A forward kernel's leading arguments: the input row (`x`), or the residual add fused before the norm
/// (`res (n, C) f32 + delta (n, C) bf16 -> res_out (n, C) f32`, then normalised).
#[derive(Clone, Copy, Debug)]
enum Input {
    Plain(DevPtr<f32>),
    Residual(DevPtr<f32>, DevPtr<bf16>, DevPtr<f32>),
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
    fn check_kind(&self, b: Option<DevPtr<f32>>, mean: Option<DevPtr<f32>>) -> Result<()> {
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
    pub unsafe fn forward(&self, x: DevPtr<f32>, out: NormFwd, n: usize, eps: f32) -> Result<()> {
        // SAFETY: the caller's contract (`x` is the kernel's one input).
        unsafe { self.launch_forward(&self.fwd, Input::Plain(x), out, n, eps) }
    }

    /// The arguments both forward kernels share, after their inputs: `(w, [b], y, [mean], rstd, n, c, eps)`.
    ///
    /// # Safety
    /// As `forward` / `forward_residual`; `input` gives the kernel's leading pointer arguments.
    unsafe fn launch_forward(&self, kernel: &str, input: Input, out: NormFwd, n: usize, eps: f32) -> Result<()> {
        let NormFwd { w, b, y, mean, rstd } = out;
        self.check_kind(b, mean)?;
        let (n_i, c_i) = (int(n, "norm rows")?, self.c as i32);
        let mut a = self.module.args(kernel)?;
        match &input {
            Input::Plain(x) => {
                a.arg(x);
            }
            Input::Residual(res, delta, res_out) => {
                a.arg(res).arg(delta).arg(res_out);
            }
        }
        a.arg(&w);
        let (b, mean) = (b.unwrap_or(DevPtr::NULL), mean.unwrap_or(DevPtr::NULL));
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
    pub unsafe fn forward_residual(
        &self,
        (res, delta, res_out): (DevPtr<f32>, DevPtr<bf16>, DevPtr<f32>),
        out: NormFwd,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.launch_forward(&self.fwd_res, Input::Residual(res, delta, res_out), out, n, eps) }
    }

    /// `dres (n, C) f32 += dnorm/dx`, `dres16 = bf16(dres)`, `dw (C) f32 +=` (and `db` for LayerNorm), from
    /// `dy (n, C) bf16`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes (`NormBwd`).
    pub unsafe fn backward(&self, p: NormBwd, n: usize) -> Result<()> {
        let NormBwd { dy, x, w, mean, rstd, dres, dres16, dw, db, scratch } = p;
        self.check_kind(db, mean)?;
        let (n_i, c_i) = (int(n, "norm rows")?, self.c as i32);
        let nb = blocks(n, BWD_ROWS)?;
        let mut a = self.module.args(&self.bwd)?;
        a.arg(&dy).arg(&x).arg(&w);
        let (db, mean) = (db.unwrap_or(DevPtr::NULL), mean.unwrap_or(DevPtr::NULL));
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
