//! The decoder engine's optimizer over its flat buffers (adamw.cu): the global gradient norm and clip coefficient
//! (deterministic two-stage sum), then AdamW over every parameter in one launch, writing the bf16 working copy.
//! The per-step scalars come as `AdamWStep` (the engine makes them from `train::optim::StepScalars`, the same the
//! autograd engine's AdamW uses), so this layer knows nothing of the trainer.
//! CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
/// NORM_BLOCKS, NORM_THREADS in adamw.cu.
pub const NORM_BLOCKS: usize = 1024;
const NORM_THREADS: u32 = 512;

/// One update's scalars, as adamw.cu takes them: `p *= decay_factor; ...; p -= step_size * m / (sqrt(v) / bc2_sqrt +
/// eps)` (adamw.cu's header has the whole update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub decay_factor: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub eps: f32,
}

/// One tensor's buffers for an update: the f32 master weights, gradient and moments, and the bf16 working copy.
#[derive(Clone, Copy, Debug)]
pub struct AdamWTensor {
    pub p: DevPtr<f32>,
    pub grad: DevPtr<f32>,
    pub m: DevPtr<f32>,
    pub v: DevPtr<f32>,
    pub p16: DevPtr<bf16>,
}

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
    pub unsafe fn grad_norm(
        &self,
        grad: DevPtr<f32>,
        n: usize,
        partial: DevPtr<f32>,
        out: DevPtr<f32>,
        max_norm: f32,
    ) -> Result<()> {
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
    /// `t`'s `p`, `grad`, `m`, `v` hold n f32, its `p16` n bf16, `coef` one f32.
    pub unsafe fn step(
        &self,
        t: AdamWTensor,
        coef: DevPtr<f32>,
        n: usize,
        n_decay: usize,
        h: &AdamWStep,
    ) -> Result<()> {
        let AdamWTensor { p, grad, m, v, p16 } = t;
        let (n_i, nd_i) = (n as i64, n_decay as i64);
        let mut a = self.module.args("adamw_step")?;
        a.arg(&p).arg(&grad).arg(&m).arg(&v).arg(&p16).arg(&coef).arg(&n_i).arg(&nd_i);
        a.arg(&h.decay_factor).arg(&h.beta1).arg(&h.beta2).arg(&h.step_size).arg(&h.bc2_sqrt).arg(&h.eps);
        go(a, cfg((blocks(n, 256)?, 1), (256, 1)))
    }

    /// `y = bf16(x)` for n values.
    ///
    /// # Safety
    /// `x` holds n f32, `y` n bf16.
    pub unsafe fn cast_bf16(&self, x: DevPtr<f32>, y: DevPtr<bf16>, n: usize) -> Result<()> {
        let n_i = n as i64;
        let mut a = self.module.args("cast_f32_bf16")?;
        a.arg(&x).arg(&y).arg(&n_i);
        go(a, cfg((blocks(n, 256)?, 1), (256, 1)))
    }
}
