//! The autograd engine's optimizer step, decomposed so each piece can be timed, swapped or distributed on its own:
//! `micro_step` (forward + backward of one micro-batch) -> `GradAccumulator` (sum over micro-steps) ->
//! `Reducer::reduce_grads` (the one place gradients cross processes) -> `clip_grad_norm` -> `AdamW::step`.
//! `engine::Autograd` chains them, and `engine::optimizer_step` is the step the trainer and `tokenmill bench` both
//! run, so the benchmark times exactly what training runs.
//!
//! Each micro-step's loss is divided by the number of micro-steps before backward, so the summed gradients are
//! the gradient of the mean loss over the whole batch: k micro-batches of B give the update of one batch of kB.

use candle_core::{DType, Result, Tensor, Var};

use crate::model::LanguageModel;

/// Forward and backward of one micro-batch. `x`, `y`: (B, T) u32. Returns the loss divided by `accum_steps`
/// (a detached f32 scalar, not yet synchronised to the host) and one gradient per parameter of `params` (None where
/// the loss does not depend on it).
pub fn micro_step(
    model: &dyn LanguageModel,
    params: &[Var],
    x: &Tensor,
    y: &Tensor,
    accum_steps: usize,
) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    let loss = model.loss(x, y)?.to_dtype(DType::F32)?;
    let loss = (loss / accum_steps as f64)?;
    let mut store = loss.backward()?;
    // Take only the parameters' gradients; the store's intermediate gradients die with it.
    let grads = params.iter().map(|p| store.remove(p.as_tensor())).collect();
    Ok((loss.detach(), grads))
}

/// Sums micro-step losses and gradients until the optimizer step.
#[derive(Default)]
pub struct GradAccumulator {
    loss: Option<Tensor>,
    grads: Vec<Option<Tensor>>,
    micro_steps: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, loss: Tensor, grads: Vec<Option<Tensor>>) -> Result<()> {
        self.loss = Some(match self.loss.take() {
            None => loss,
            Some(acc) => (acc + loss)?,
        });
        if self.micro_steps == 0 {
            self.grads = grads;
        } else {
            assert_eq!(self.grads.len(), grads.len(), "every micro-step returns one gradient slot per parameter");
            for (acc, g) in self.grads.iter_mut().zip(grads) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(g)) => Some((a + g)?),
                    (a, g) => a.or(g),
                };
            }
        }
        self.micro_steps += 1;
        Ok(())
    }

    pub fn micro_steps(&self) -> usize {
        self.micro_steps
    }

    /// The mean loss over the micro-steps (an f32 scalar tensor) and the summed gradients.
    pub fn finish(self) -> Option<(Tensor, Vec<Option<Tensor>>)> {
        Some((self.loss?, self.grads))
    }
}

/// What one optimizer step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the whole (all-process) batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// What the trainer needs from its process group: data-parallel training averages gradients (and the logged loss)
/// across processes here, once per optimizer step, after accumulation and before clipping; evaluation sums its
/// counts here. A single process has nothing to do.
pub trait Reducer {
    /// Replace every gradient and `loss` by its mean over all processes.
    fn reduce_grads(&self, loss: &mut Tensor, grads: &mut [Option<Tensor>]) -> Result<()>;
    /// Replace each value by its sum over all processes.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replace each value by its mean over all processes.
    fn mean_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum_f64(values)?;
        let world = self.world() as f64;
        values.iter_mut().for_each(|v| *v /= world);
        Ok(())
    }
    fn world(&self) -> usize;
    fn rank(&self) -> usize;
    /// Give every process rank 0's parameters (once, before training), as DDP does at construction.
    fn sync_params(&self, _params: &[Var]) -> Result<()> {
        Ok(())
    }
}

/// One process: the local values are already the global ones.
pub struct SingleProcess;

impl Reducer for SingleProcess {
    fn reduce_grads(&self, _loss: &mut Tensor, _grads: &mut [Option<Tensor>]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn world(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
}

/// The L2 norm of all gradients together, reduced in f32 on their device (one host sync for the result).
pub fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f32> {
    let squares =
        grads.iter().flatten().map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
    if squares.is_empty() {
        return Ok(0.0);
    }
    Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?.to_scalar::<f32>()
}

/// PyTorch's `clip_grad_norm_`: measure the global norm and, when it exceeds `max_norm` (> 0), scale every gradient
/// by max_norm / (norm + 1e-6). Returns the norm before clipping, which is what gets logged.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f32> {
    let norm = global_grad_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm as f64 + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = g.affine(coef, 0.0)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn norm_and_clip_match_hand_values() {
        let dev = Device::Cpu;
        let mut grads = vec![
            Some(Tensor::new(&[3f32, 0.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[[0f32], [4.0]], &dev).unwrap()),
        ];
        assert_eq!(global_grad_norm(&grads).unwrap(), 5.0);
        assert_eq!(clip_grad_norm(&mut grads, 10.0).unwrap(), 5.0);
        assert_eq!(grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 0.0]);
        assert_eq!(clip_grad_norm(&mut grads, 1.0).unwrap(), 5.0);
        let clipped = global_grad_norm(&grads).unwrap();
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    }

    #[test]
    fn accumulator_sums_and_keeps_missing_slots() {
        let dev = Device::Cpu;
        let t = |v: f32| Tensor::new(&[v], &dev).unwrap();
        let mut acc = GradAccumulator::new();
        acc.add(Tensor::new(0.5f32, &dev).unwrap(), vec![Some(t(1.0)), None]).unwrap();
        acc.add(Tensor::new(0.25f32, &dev).unwrap(), vec![Some(t(2.0)), Some(t(7.0))]).unwrap();
        assert_eq!(acc.micro_steps(), 2);
        let (loss, grads) = acc.finish().unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.75);
        assert_eq!(grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![3.0]);
        assert_eq!(grads[1].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![7.0]);
    }
}
