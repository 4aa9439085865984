//! SwiGLU of the decoder engine (swiglu.cu): `y = silu(g) * u` from the fused gate|up product, and its backward into
//! a `[dg | du]` buffer the fused product's backward reads. CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/swiglu.ptx"));

pub struct SwiGlu {
    module: Module,
}

impl SwiGlu {
    pub fn new(stream: &Arc<CudaStream>) -> Result<SwiGlu> {
        Ok(SwiGlu { module: Module::load(stream, "swiglu.cu", PTX, &["swiglu_fwd", "swiglu_bwd"])? })
    }

    fn check(h: usize) -> Result<()> {
        if h == 0 || !h.is_multiple_of(8) {
            candle_core::bail!("SwiGLU kernels: H = {h} must be a positive multiple of 8");
        }
        Ok(())
    }

    /// `y (n, H) = silu(g) * u` with `gu (n, 2H) = [g | u]`.
    ///
    /// # Safety
    /// `gu` holds n x 2H bf16 and `y` n x H, both 16-byte aligned.
    pub unsafe fn forward(&self, gu: DevPtr<bf16>, y: DevPtr<bf16>, n: usize, h: usize) -> Result<()> {
        Self::check(h)?;
        let (n_i, h_i) = (int(n, "rows")?, int(h, "H")?);
        let mut a = self.module.args("swiglu_fwd")?;
        a.arg(&gu).arg(&y).arg(&n_i).arg(&h_i);
        go(a, cfg((blocks(n * h / 8, 256)?, 1), (256, 1)))
    }

    /// `dgu (n, 2H) = [dg | du]` from `dy (n, H)` and the forward's `gu`.
    ///
    /// # Safety
    /// `gu`, `dgu` hold n x 2H bf16 and `dy` n x H, 16-byte aligned; `dgu` overlaps neither input.
    pub unsafe fn backward(
        &self,
        gu: DevPtr<bf16>,
        dy: DevPtr<bf16>,
        dgu: DevPtr<bf16>,
        n: usize,
        h: usize,
    ) -> Result<()> {
        Self::check(h)?;
        let (n_i, h_i) = (int(n, "rows")?, int(h, "H")?);
        let mut a = self.module.args("swiglu_bwd")?;
        a.arg(&gu).arg(&dy).arg(&dgu).arg(&n_i).arg(&h_i);
        go(a, cfg((blocks(n * h / 8, 256)?, 1), (256, 1)))
    }
}
