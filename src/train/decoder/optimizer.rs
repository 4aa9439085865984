//! One optimizer step of the decoder engine, in the same three calls the autograd engine has (`train::engine`):
//! `begin_step` zeroes the gradients and the loss, `micro_step` uploads a batch and runs forward and backward
//! (adding loss / accum and its gradients), `finish_step` reduces across processes, measures and clips the global
//! norm, reads the loss and the norm (the step's one host synchronisation) and, when the loss is finite, applies
//! AdamW to every parameter (one launch per tensor: the master weights are the candle model's Vars).

use candle_core::{DType, Device, Result, Tensor};

use super::buffers::{LOSS_ACC, NORM_OUT, NORM_PARTIAL};
use super::engine::DecoderEngine;
use crate::cuda::adamw::{AdamWStep, AdamWTensor};
use crate::cuda::devptr::DevPtr;
use crate::shards::loader::Batch;
use crate::train::optim::StepScalars;
use crate::train::step::{Reducer, StepOutcome};

impl DecoderEngine {
    /// Start an optimizer step: gradients and the loss accumulator to zero.
    pub fn begin_step(&mut self) -> Result<()> {
        let b = &self.bufs;
        // SAFETY: both ranges are the buffers' own.
        unsafe {
            b.zero(b.grads.base, b.grads.len)?;
            b.zero(b.scalars.at(LOSS_ACC), 1)?;
        }
        self.micro_steps = 0;
        Ok(())
    }

    /// Forward and backward of one micro-batch of an optimizer step of `accum` micro-batches.
    pub fn micro_step(&mut self, batch: &Batch, accum: usize) -> Result<()> {
        self.upload_batch(batch, true)?;
        self.prof.mark("upload batch")?;
        let n = self.dims.n();
        // d(step loss)/d(row loss): the step's loss is the mean over accum * N rows.
        let scale = 1.0 / (n * accum.max(1)) as f32;
        // SAFETY: a batch of the engine's shape was uploaded above; the kernels touch only the engine's buffers.
        unsafe {
            self.forward(Some(scale))?;
            self.backward()?;
            self.k.cls.sum_into(self.bufs.act32.at(self.act.losses), self.bufs.scalars.at(LOSS_ACC), n, scale)?;
        }
        self.prof.mark("loss sum")?;
        self.prof.collect(true)?;
        self.micro_steps += 1;
        Ok(())
    }

    /// Reduce, clip, and (for a finite loss) update at `lr`. Returns the step's mean loss and the gradient norm
    /// before clipping; a non-finite loss leaves the weights and moments untouched (the caller reports it).
    pub fn finish_step(&mut self, lr: f64, grad_clip: f64, reducer: &dyn Reducer) -> Result<StepOutcome> {
        if reducer.world() > 1 {
            self.all_reduce(reducer)?;
        }
        let b = &self.bufs;
        let mut host = [0f32; 3];
        // SAFETY: NORM_PARTIAL holds NORM_BLOCKS f32, NORM_OUT two, LOSS_ACC one; grads `total` f32.
        unsafe {
            self.k.adamw.grad_norm(
                b.grads.base,
                b.grads.len,
                b.scalars.at(NORM_PARTIAL),
                b.scalars.at(NORM_OUT),
                grad_clip as f32,
            )?;
            self.prof.mark("grad norm (per step)")?;
            b.download(&mut host[..2], b.scalars.at(NORM_OUT))?;
            b.download(&mut host[2..], b.scalars.at(LOSS_ACC))?;
        }
        let (grad_norm, loss) = (host[0], host[2]);
        if !loss.is_finite() {
            return Ok(StepOutcome { loss, grad_norm });
        }
        self.steps += 1;
        let h = StepScalars::new(&self.adam, lr, self.steps);
        // The kernel's f32 scalars, rounded from the f64 schedule as the launch always did.
        let h = AdamWStep {
            decay_factor: h.decay_factor as f32,
            beta1: h.beta1 as f32,
            beta2: h.beta2 as f32,
            step_size: h.step_size as f32,
            bc2_sqrt: h.bc2_sqrt as f32,
            eps: h.eps as f32,
        };
        // One launch per tensor: the master weights are the model's own Vars, one allocation each (`Masters`); the
        // other buffers are flat. Each element's update is what one launch over a flat buffer computed.
        for &(off, p, len) in self.masters.iter() {
            let ptrs =
                AdamWTensor { p, grad: b.grads.at(off), m: b.m.at(off), v: b.v.at(off), p16: b.params16.at(off) };
            let n_decay = if off < self.params.n_decay { len } else { 0 };
            // SAFETY: `p` holds the tensor's `len` f32 and every flat buffer `len` elements at its layout offset;
            // NORM_OUT + 1 is the clip coefficient.
            unsafe { self.k.adamw.step(ptrs, b.scalars.at(NORM_OUT + 1), len, n_decay, &h)? };
        }
        self.prof.mark("adamw (per step)")?;
        self.prof.collect(false)?;
        Ok(StepOutcome { loss, grad_norm })
    }

    /// Average the gradients and the loss over the process group through the trainer's `Reducer` (the same
    /// bucketed all-reduce the autograd engine uses), via one candle tensor per step.
    fn all_reduce(&mut self, reducer: &dyn Reducer) -> Result<()> {
        let b = &self.bufs;
        let device = self.model().parameters()[0].1.device().clone();
        let grads = Tensor::zeros(b.grads.len, DType::F32, &device)?;
        let mut loss = [0f32];
        // SAFETY: `grads` is a fresh contiguous f32 tensor of the buffer's length.
        unsafe {
            b.copy(DevPtr::of_tensor(&grads, &b.stream)?, b.grads.base, b.grads.len)?;
            b.download(&mut loss, b.scalars.at(LOSS_ACC))?;
        }
        let mut loss_t = Tensor::new(loss[0], &device)?;
        let mut slot = [Some(grads)];
        reducer.reduce_grads(&mut loss_t, &mut slot)?;
        let mean = slot[0].take().expect("the reducer returns every gradient").contiguous()?;
        let loss = [loss_t.to_device(&Device::Cpu)?.to_scalar::<f32>()?];
        // SAFETY: as above, the other direction; the stream is drained before `mean` is dropped.
        unsafe {
            b.copy(b.grads.base, DevPtr::of_tensor(&mean, &b.stream)?, b.grads.len)?;
            b.upload(b.scalars.at(LOSS_ACC), &loss)?;
            b.stream.synchronize().map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }
}
