//! Softmax cross-entropy (classifier.cu), the one launcher of its kernel for both callers:
//! - the decoder engine ([`Classifier::forward_backward`]): per-row loss over bf16 logits with the gradient written
//!   over the logits in the same kernel, and the deterministic loss sum ([`Classifier::sum_into`]);
//! - the candle op `model::kernels::cross_entropy` ([`Classifier::loss`], [`Classifier::dlogits`]; it adapts storages
//!   to these): f32, bf16 or f64 logits with any row stride, the loss and the gradient in separate launches, ignored
//!   targets.
//!
//! This file alone knows the kernels' grid, block and names. CPU checks: dev/cuda/check_engine.cpp (the engine's
//! instantiation, byte for byte against main e560d49's kernel) and check.cpp (the op's, and its bf16 kernels byte for
//! byte against the engine's).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DeviceRepr, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/classifier.ptx"));
/// CLS_THREADS in classifier.cu.
const THREADS: u32 = 1024;

/// A logits element type of the candle op's kernels (`classifier_fwd_<suffix>`), with the type its loss and
/// upstream gradient come in (f32; f64 for f64).
pub trait LossElem: DeviceRepr {
    const SUFFIX: &'static str;
    type Acc: DeviceRepr;
}

impl LossElem for f32 {
    const SUFFIX: &'static str = "f32";
    type Acc = f32;
}

impl LossElem for bf16 {
    const SUFFIX: &'static str = "bf16";
    type Acc = f32;
}

impl LossElem for f64 {
    const SUFFIX: &'static str = "f64";
    type Acc = f64;
}

/// A run of `n` values, element `i` at `ptr + i * stride` (stride 0: one value broadcast).
#[derive(Clone, Copy, Debug)]
pub struct Strided<T> {
    pub ptr: DevPtr<T>,
    pub stride: usize,
}

/// The candle op's rows: `n` rows of `v` logits with dense columns, row `r` at `logits.ptr + r * logits.stride`, its
/// target `targets[r]` (< v or `IGNORE_INDEX`).
#[derive(Clone, Copy, Debug)]
pub struct LossRows<T> {
    pub logits: Strided<T>,
    pub targets: Strided<u32>,
    pub n: usize,
    pub v: usize,
}

pub struct Classifier {
    module: Module,
}

impl Classifier {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Classifier> {
        let module = Module::load(stream, "classifier.cu", PTX, &["classifier_fwd_bwd", "loss_reduce"])?
            .with_suffixed(&["classifier_fwd", "classifier_bwd"], &[f32::SUFFIX, bf16::SUFFIX, f64::SUFFIX])?;
        Ok(Classifier { module })
    }

    /// The engine's: `loss[r]` (f32) for `rows` rows of `logits (rows, v)` bf16 and `targets (rows)` u32; with
    /// `dscale != 0` the logits become `(softmax - onehot) * dscale`.
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
        let v_i = int(v, "vocabulary")?;
        let mut a = self.module.args("classifier_fwd_bwd")?;
        a.arg(&logits).arg(&targets).arg(&loss).arg(&v_i).arg(&dscale);
        go(a, cfg((blocks(rows, 1)?, 1), (THREADS, 1)))
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

    /// The candle op's forward: `loss[r] = logsumexp(row r) - row r[target r]` (0 for an ignored target, NaN for one
    /// `>= v`), `loss` contiguous (n).
    ///
    /// # Safety
    /// `p`'s pointers reach every element its strides give for `n` rows of `v`; `loss` holds n values.
    pub unsafe fn loss<T: LossElem>(&self, p: LossRows<T>, loss: DevPtr<T::Acc>) -> Result<()> {
        let LossRows { logits, targets, n, v } = p;
        if n == 0 {
            return Ok(());
        }
        let (v, rs, ts) = (v as i64, logits.stride as i64, targets.stride as i64);
        let mut a = self.module.args(&format!("classifier_fwd_{}", T::SUFFIX))?;
        a.arg(&logits.ptr).arg(&targets.ptr).arg(&loss).arg(&v).arg(&rs).arg(&ts);
        go(a, cfg((blocks(n, 1)?, 1), (THREADS, 1)))
    }

    /// The candle op's backward: `dlogits (n, v)` contiguous `= (softmax(row r) - onehot(target r)) * dloss[r]`, zero
    /// rows for ignored targets (the row's statistics recomputed: classifier.cu).
    ///
    /// # Safety
    /// As [`Classifier::loss`]; `dloss` reaches n values through its stride; `dlogits` holds n * v elements and
    /// overlaps no input.
    pub unsafe fn dlogits<T: LossElem>(
        &self,
        p: LossRows<T>,
        dloss: Strided<T::Acc>,
        dlogits: DevPtr<T>,
    ) -> Result<()> {
        let LossRows { logits, targets, n, v } = p;
        if n == 0 || v == 0 {
            return Ok(());
        }
        let (v, rs, ts, gs) = (v as i64, logits.stride as i64, targets.stride as i64, dloss.stride as i64);
        let mut a = self.module.args(&format!("classifier_bwd_{}", T::SUFFIX))?;
        a.arg(&logits.ptr).arg(&targets.ptr).arg(&dloss.ptr).arg(&dlogits).arg(&v).arg(&rs).arg(&ts).arg(&gs);
        go(a, cfg((blocks(n, 1)?, 1), (THREADS, 1)))
    }
}
