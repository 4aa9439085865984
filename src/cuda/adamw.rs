//! The GPT-2 engine's optimizer over its flat buffers (adamw.cu): the global gradient norm and clip coefficient
//! (deterministic two-stage sum), then AdamW over every parameter in one launch, writing the bf16 working copy.
//! The per-step scalars are `train::optim::StepScalars`, the same the autograd engine's AdamW uses.
//! CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;

use super::launch::{blocks, cfg, go, Module};
use crate::train::optim::StepScalars;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
/// NORM_BLOCKS, NORM_THREADS in adamw.cu.
pub const NORM_BLOCKS: usize = 1024;
const NORM_THREADS: u32 = 512;

pub struct AdamWKernels {
    module: Module,
}

impl AdamWKernels {
    pub fn new(stream: &Arc<CudaStream>) -> Result<AdamWKernels> {
        let names = ["grad_norm_partial", "grad_norm_finalize", "adamw_step", "cast_f32_bf16"];
        Ok(AdamWKernels { module: Module::load(stream, "adamw.cu", PTX, &names)? })
    }

    /// `out[0] = ||grad||`, `out[1] = min(1, max_norm / (norm + 1e-6))` (1 when max_norm <= 0). `partial` holds
    /// NORM_BLOCKS f32.
    ///
    /// # Safety
    /// `grad` holds n f32, `out` two.
    pub unsafe fn grad_norm(&self, grad: u64, n: usize, partial: u64, out: u64, max_norm: f32) -> Result<()> {
        let n_i = n as i64;
        let mut a = self.module.args("grad_norm_partial")?;
        a.arg(&grad).arg(&partial).arg(&n_i);
        go(a, cfg((NORM_BLOCKS as u32, 1), (NORM_THREADS, 1)))?;
        let mut a = self.module.args("grad_norm_finalize")?;
        a.arg(&partial).arg(&out).arg(&max_norm);
        go(a, cfg((1, 1), (NORM_BLOCKS as u32, 1)))
    }

    /// One AdamW update of `n` parameters (the first `n_decay` with weight decay), gradients scaled by the device
    /// scalar at `coef`; writes `p16 = bf16(p)`.
    ///
    /// # Safety
    /// `p`, `grad`, `m`, `v` hold n f32, `p16` n bf16, `coef` one f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step(
        &self,
        (p, grad, m, v, p16): (u64, u64, u64, u64, u64),
        coef: u64,
        n: usize,
        n_decay: usize,
        h: &StepScalars,
    ) -> Result<()> {
        let (n_i, nd_i) = (n as i64, n_decay as i64);
        let (df, b1, b2, ss, bc2, eps) = (
            h.decay_factor as f32,
            h.beta1 as f32,
            h.beta2 as f32,
            h.step_size as f32,
            h.bc2_sqrt as f32,
            h.eps as f32,
        );
        let mut a = self.module.args("adamw_step")?;
        a.arg(&p).arg(&grad).arg(&m).arg(&v).arg(&p16).arg(&coef).arg(&n_i).arg(&nd_i);
        a.arg(&df).arg(&b1).arg(&b2).arg(&ss).arg(&bc2).arg(&eps);
        go(a, cfg((blocks(n, 256)?, 1), (256, 1)))
    }

    /// `y = bf16(x)` for n values.
    ///
    /// # Safety
    /// `x` holds n f32, `y` n bf16.
    pub unsafe fn cast_bf16(&self, x: u64, y: u64, n: usize) -> Result<()> {
        let n_i = n as i64;
        let mut a = self.module.args("cast_f32_bf16")?;
        a.arg(&x).arg(&y).arg(&n_i);
        go(a, cfg((blocks(n, 256)?, 1), (256, 1)))
    }
}
