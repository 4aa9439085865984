//! GPT-2's tanh-GELU as its own kernels (activation.cu), for when the engine does not fuse it into the matmul
//! epilogues (`[engine] gelu_fusion = false`, or to time the two against each other). CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/activation.ptx"));

pub struct Gelu {
    module: Module,
}

impl Gelu {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Gelu> {
        Ok(Gelu { module: Module::load(stream, "activation.cu", PTX, &["gelu_fwd_bf16", "gelu_bwd_bf16"])? })
    }

    fn check(n: usize) -> Result<()> {
        if !n.is_multiple_of(8) {
            candle_core::bail!("GELU kernels: {n} elements is not a multiple of 8");
        }
        Ok(())
    }

    /// `y = gelu(x)`, n bf16.
    ///
    /// # Safety
    /// `x`, `y` hold n bf16, 16-byte aligned.
    pub unsafe fn forward(&self, x: DevPtr<bf16>, y: DevPtr<bf16>, n: usize) -> Result<()> {
        Self::check(n)?;
        let n_i = n as i64;
        let mut a = self.module.args("gelu_fwd_bf16")?;
        a.arg(&x).arg(&y).arg(&n_i);
        go(a, cfg((blocks(n / 8, 256)?, 1), (256, 1)))
    }

    /// `dx = dy * gelu'(x)` (dx may be dy).
    ///
    /// # Safety
    /// All hold n bf16, 16-byte aligned.
    pub unsafe fn backward(&self, x: DevPtr<bf16>, dy: DevPtr<bf16>, dx: DevPtr<bf16>, n: usize) -> Result<()> {
        Self::check(n)?;
        let n_i = n as i64;
        let mut a = self.module.args("gelu_bwd_bf16")?;
        a.arg(&x).arg(&dy).arg(&dx).arg(&n_i);
        go(a, cfg((blocks(n / 8, 256)?, 1), (256, 1)))
    }
}
