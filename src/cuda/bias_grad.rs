//! Bias gradients of the decoder engine (bias_grad.cu): `db (OC) f32 += column sums of dy (N, OC) bf16`, in a fixed
//! order (row chunks, then the chunks in order). CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bias_grad.ptx"));
/// Row chunks of the first stage: enough blocks to fill the GPU for OC = 768 (3 x 128 = 384 blocks).
pub const CHUNKS: usize = 128;

pub struct BiasGrad {
    module: Module,
}

impl BiasGrad {
    pub fn new(stream: &Arc<CudaStream>) -> Result<BiasGrad> {
        let names = ["bias_grad_partial", "bias_grad_reduce"];
        Ok(BiasGrad { module: Module::load(stream, "bias_grad.cu", PTX, &names)? })
    }

    /// f32 scratch for width `oc`.
    pub fn scratch_len(oc: usize) -> usize {
        CHUNKS * oc
    }

    /// `db += sum over rows of dy`.
    ///
    /// # Safety
    /// `dy` holds n * oc bf16 (16-byte aligned rows: oc a multiple of 8), `db` oc f32, `scratch` `scratch_len(oc)`.
    pub unsafe fn accumulate(
        &self,
        dy: DevPtr<bf16>,
        db: DevPtr<f32>,
        scratch: DevPtr<f32>,
        n: usize,
        oc: usize,
    ) -> Result<()> {
        if !oc.is_multiple_of(8) {
            candle_core::bail!("bias gradient: width {oc} must be a multiple of 8");
        }
        let (n_i, oc_i, ch) = (int(n, "rows")?, int(oc, "width")?, CHUNKS as i32);
        let mut a = self.module.args("bias_grad_partial")?;
        a.arg(&dy).arg(&scratch).arg(&n_i).arg(&oc_i);
        go(a, cfg((blocks(oc, 256)?, CHUNKS as u32), (256, 1)))?;
        let mut a = self.module.args("bias_grad_reduce")?;
        a.arg(&scratch).arg(&db).arg(&ch).arg(&oc_i);
        go(a, cfg((blocks(oc, 256)?, 1), (256, 1)))
    }

    /// `db += src` for `oc` f32 (a bias gradient a matmul epilogue wrote to `src`).
    ///
    /// # Safety
    /// Both hold oc f32.
    pub unsafe fn add(&self, src: DevPtr<f32>, db: DevPtr<f32>, oc: usize) -> Result<()> {
        let (oc_i, one) = (int(oc, "width")?, 1i32);
        let mut a = self.module.args("bias_grad_reduce")?;
        a.arg(&src).arg(&db).arg(&one).arg(&oc_i);
        go(a, cfg((blocks(oc, 256)?, 1), (256, 1)))
    }
}
