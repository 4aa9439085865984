//! GPT-2's tanh-GELU (activation.cu), the one launcher of its kernels for both callers: the decoder engine when it
//! does not fuse GELU into the matmul epilogues (`[engine] gelu_fusion = false`, or to time the two against each
//! other; bf16) and the candle op `model::kernels::gelu` (f32, f64, bf16; any length and start). Grid-stride over
//! 16-byte vectors with an element-by-element path for what is not aligned. CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DeviceRepr, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/activation.ptx"));
/// GELU_THREADS in activation.cu.
const THREADS: u32 = 256;

/// An element type activation.cu instantiates its kernels for (`gelu_fwd_<suffix>`).
pub trait GeluElem: DeviceRepr {
    const SUFFIX: &'static str;
}

impl GeluElem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl GeluElem for f64 {
    const SUFFIX: &'static str = "f64";
}

impl GeluElem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

pub struct Gelu {
    module: Module,
}

impl Gelu {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Gelu> {
        let module = Module::load(stream, "activation.cu", PTX, &[])?
            .with_suffixed(&["gelu_fwd", "gelu_bwd"], &[f32::SUFFIX, f64::SUFFIX, bf16::SUFFIX])?;
        Ok(Gelu { module })
    }

    /// The grid for `n` elements of `T`: one thread per 16-byte vector, so no thread strides (the engine's grid; the
    /// candle op's own launcher capped it at 2048 blocks and strided, which gives the same values: GELU is
    /// elementwise).
    fn grid<T>(n: usize) -> Result<(u32, u32)> {
        Ok((blocks(n.div_ceil(16 / std::mem::size_of::<T>()), THREADS as usize)?, 1))
    }

    /// `y = gelu(x)` over n elements.
    ///
    /// # Safety
    /// `x`, `y` hold n elements (any alignment: the kernels fall back to element accesses).
    pub unsafe fn forward<T: GeluElem>(&self, x: DevPtr<T>, y: DevPtr<T>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let mut a = self.module.args(&format!("gelu_fwd_{}", T::SUFFIX))?;
        a.arg(&x).arg(&y).arg(&n_i);
        go(a, cfg(Self::grid::<T>(n)?, (THREADS, 1)))
    }

    /// `dx = dy * gelu'(x)` over n elements (dx may be dy).
    ///
    /// # Safety
    /// All hold n elements.
    pub unsafe fn backward<T: GeluElem>(&self, x: DevPtr<T>, dy: DevPtr<T>, dx: DevPtr<T>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let mut a = self.module.args(&format!("gelu_bwd_{}", T::SUFFIX))?;
        a.arg(&x).arg(&dy).arg(&dx).arg(&n_i);
        go(a, cfg(Self::grid::<T>(n)?, (THREADS, 1)))
    }
}
