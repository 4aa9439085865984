//! The decoder engine's classifier (classifier.cu): per-row softmax cross-entropy over bf16 logits with the gradient
//! written over the logits in the same kernel, and the deterministic loss sum. CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/classifier.ptx"));
/// CLS_THREADS in classifier.cu.
const THREADS: u32 = 1024;

pub struct Classifier {
    module: Module,
}

impl Classifier {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Classifier> {
        let names = ["classifier_fwd_bwd", "loss_reduce"];
        Ok(Classifier { module: Module::load(stream, "classifier.cu", PTX, &names)? })
    }

    /// `loss[r]` (f32) for `rows` rows of `logits (rows, v)` bf16 and `targets (rows)` u32; with `dscale != 0` the
    /// logits become `(softmax - onehot) * dscale`.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; every target is `< v`; `logits` is 16-byte aligned.
    pub unsafe fn forward_backward(
        &self,
        logits: DevPtr<bf16>,
        targets: DevPtr<u32>,
        loss: DevPtr<f32>,
        rows: usize,
        v: usize,
        dscale: f32,
    ) -> Result<()> {
        if !v.is_multiple_of(8) {
            candle_core::bail!("engine classifier: vocabulary {v} must be a multiple of 8 (pad it)");
        }
        let grid = u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("classifier rows {rows}")))?;
        let v_i = int(v, "vocabulary")?;
        let mut a = self.module.args("classifier_fwd_bwd")?;
        a.arg(&logits).arg(&targets).arg(&loss).arg(&v_i).arg(&dscale);
        go(a, cfg((grid, 1), (THREADS, 1)))
    }

    /// `acc[0] += scale * sum(loss[..n])`, in a fixed order.
    ///
    /// # Safety
    /// `loss` holds n f32, `acc` one.
    pub unsafe fn sum_into(&self, loss: DevPtr<f32>, acc: DevPtr<f32>, n: usize, scale: f32) -> Result<()> {
        let n_i = int(n, "loss rows")?;
        let mut a = self.module.args("loss_reduce")?;
        a.arg(&loss).arg(&acc).arg(&n_i).arg(&scale);
        go(a, cfg((1, 1), (1024, 1)))
    }
}
