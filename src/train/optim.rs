//! AdamW over candle `Var`s, written out because candle-nn's has no parameter groups and no state to save.
//!
//! Follows PyTorch's `torch.optim.AdamW` (the seed's optimizer) step for step: decoupled weight decay
//! `p *= 1 - lr * wd` (only on tensors with two or more dimensions: matmul weights and embeddings, never biases or
//! norm gains), then `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`. Master weights, `m` and `v` are fp32 whatever
//! the compute dtype. The state (m, v per parameter, and t) is what `checkpoint` saves.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};

/// The hyperparameters that do not change during a run (the learning rate comes with every step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    pub fn from_config(cfg: &super::TrainConfig) -> Self {
        AdamWConfig {
            beta1: cfg.optim.betas[0],
            beta2: cfg.optim.betas[1],
            eps: cfg.optim.eps,
            weight_decay: cfg.optim.weight_decay,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("parameter `{name}` is {dtype:?}; master weights must be f32")]
    NotF32 { name: String, dtype: DType },
    #[error("got {got} gradients for {expected} parameters")]
    GradCount { got: usize, expected: usize },
    #[error("optimizer state has no `{0}` (the checkpoint is for another model)")]
    MissingState(String),
    #[error("optimizer state `{name}` has shape {got:?}, the parameter has {expected:?}")]
    StateShape { name: String, got: Vec<usize>, expected: Vec<usize> },
}

/// One parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// First moment, same shape as the parameter, f32.
    m: Tensor,
    /// Second moment, same shape as the parameter, f32.
    v: Tensor,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Updates applied so far (PyTorch's `state['step']`); bias correction uses t = steps + 1.
    steps: u64,
}

impl AdamW {
    /// Parameters in the model's stable order; gradients passed to `step` follow the same order.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> std::result::Result<Self, OptimError> {
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in params {
            if var.dtype() != DType::F32 {
                return Err(OptimError::NotF32 { name, dtype: var.dtype() });
            }
            let m = var.as_tensor().zeros_like()?;
            let v = var.as_tensor().zeros_like()?;
            let decay = var.rank() >= 2;
            slots.push(Slot { name, var, decay, m, v });
        }
        Ok(AdamW { cfg, slots, steps: 0 })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// (tensors, elements) with weight decay, then without: build-nanogpt prints these at startup.
    pub fn decay_summary(&self) -> ((usize, usize), (usize, usize)) {
        let mut out = ((0, 0), (0, 0));
        for s in &self.slots {
            let n = s.var.elem_count();
            let g = if s.decay { &mut out.0 } else { &mut out.1 };
            g.0 += 1;
            g.1 += n;
        }
        out
    }

    /// Apply one update with learning rate `lr`. `grads[i]` is the (already reduced, clipped) gradient of
    /// parameter i; a `None` leaves that parameter's weights and moments alone (PyTorch skips params whose grad
    /// is None).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> std::result::Result<(), OptimError> {
        if grads.len() != self.slots.len() {
            return Err(OptimError::GradCount { got: grads.len(), expected: self.slots.len() });
        }
        self.steps += 1;
        let h = StepScalars::new(&self.cfg, lr, self.steps);
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = g.to_dtype(DType::F32)?;
            let (p, m, v) = adamw_update(slot.var.as_tensor(), &g, &slot.m, &slot.v, &h, slot.decay)?;
            slot.var.set(&p)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`<param>.m`, `<param>.v`) in parameter order, for `optimizer.safetensors`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("{}.m", s.name), s.m.clone()));
            out.push((format!("{}.v", s.name), s.v.clone()));
        }
        out
    }

    /// Restore the moments and the step count saved by `state_tensors` / `steps`.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> std::result::Result<(), OptimError> {
        for s in &mut self.slots {
            for (suffix, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{}.{suffix}", s.name);
                let t = tensors.get(&key).ok_or_else(|| OptimError::MissingState(key.clone()))?;
                if t.dims() != s.var.dims() {
                    return Err(OptimError::StateShape {
                        name: key,
                        got: t.dims().to_vec(),
                        expected: s.var.dims().to_vec(),
                    });
                }
                *dst = t.to_dtype(DType::F32)?.to_device(s.var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Per-step scalars shared by every parameter's update.
#[derive(Clone, Copy, Debug)]
pub struct StepScalars {
    pub lr: f64,
    /// 1 - lr * weight_decay.
    pub decay_factor: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// lr / (1 - beta1^t).
    pub step_size: f64,
    /// sqrt(1 - beta2^t).
    pub bc2_sqrt: f64,
    pub eps: f64,
}

impl StepScalars {
    /// The scalars of update number `t` (1 for the first) at learning rate `lr`.
    pub fn new(cfg: &AdamWConfig, lr: f64, t: u64) -> StepScalars {
        let t = t as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        StepScalars {
            lr,
            decay_factor: 1.0 - lr * cfg.weight_decay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            step_size: lr / bc1,
            bc2_sqrt: bc2.sqrt(),
            eps: cfg.eps,
        }
    }
}

/// One parameter's AdamW update with composed tensor ops (any device); returns (p, m, v). The reference a fused
/// kernel is held against.
pub fn adamw_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &StepScalars,
    decay: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let p = if decay { p.affine(h.decay_factor, 0.0)? } else { p.clone() };
    let m = (m.affine(h.beta1, 0.0)? + g.affine(1.0 - h.beta1, 0.0)?)?;
    let v = (v.affine(h.beta2, 0.0)? + g.sqr()?.affine(1.0 - h.beta2, 0.0)?)?;
    let denom = v.sqrt()?.affine(1.0 / h.bc2_sqrt, h.eps)?;
    let p = (p - (m.affine(h.step_size, 0.0)? / denom)?)?;
    Ok((p, m, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's AdamW for one scalar, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, lr: f64, t: i32, c: &AdamWConfig, decay: bool) {
        if decay {
            *p *= 1.0 - lr * c.weight_decay;
        }
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let denom = v.sqrt() / bc2.sqrt() + c.eps;
        *p -= lr / bc1 * *m / denom;
    }

    #[test]
    fn matches_scalar_reference_over_several_steps() {
        let dev = Device::Cpu;
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.1).collect();
        let b0: Vec<f32> = vec![0.5, -0.25, 0.125];
        let w = Var::from_vec(w0.clone(), (4, 3), &dev).unwrap();
        let b = Var::from_vec(b0.clone(), 3, &dev).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
        assert_eq!(opt.decay_summary(), ((1, 12), (1, 3)));

        let mut rw: Vec<[f64; 3]> = w0.iter().map(|&x| [x as f64, 0.0, 0.0]).collect();
        let mut rb: Vec<[f64; 3]> = b0.iter().map(|&x| [x as f64, 0.0, 0.0]).collect();
        for step in 0..5 {
            let lr = 1e-2 * (step + 1) as f64;
            let gw: Vec<f32> = (0..12).map(|i| ((i * 7 + step * 3) % 11) as f32 * 0.03 - 0.15).collect();
            let gb: Vec<f32> = (0..3).map(|i| (i as f32 - 1.0) * 0.2 + step as f32 * 0.01).collect();
            let grads = [
                Some(Tensor::from_vec(gw.clone(), (4, 3), &dev).unwrap()),
                Some(Tensor::from_vec(gb.clone(), 3, &dev).unwrap()),
            ];
            opt.step(&grads, lr).unwrap();
            for (s, &g) in rw.iter_mut().zip(&gw) {
                let [p, m, v] = s;
                reference(p, m, v, g as f64, lr, step + 1, &cfg, true);
            }
            for (s, &g) in rb.iter_mut().zip(&gb) {
                let [p, m, v] = s;
                reference(p, m, v, g as f64, lr, step + 1, &cfg, false);
            }
        }
        let got_w = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got_b = b.as_tensor().to_vec1::<f32>().unwrap();
        for (got, want) in got_w.iter().zip(&rw).chain(got_b.iter().zip(&rb)) {
            assert!((*got as f64 - want[0]).abs() < 1e-6, "got {got}, reference {}", want[0]);
        }
        assert_eq!(opt.steps(), 5);
    }

    #[test]
    fn state_round_trips_and_missing_grad_skips() {
        let dev = Device::Cpu;
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let w = Var::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &dev).unwrap();
        let b = Var::from_vec(vec![1f32, 2.], 2, &dev).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
        opt.step(&[Some(Tensor::ones((2, 2), DType::F32, &dev).unwrap()), None], 0.1).unwrap();
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![1., 2.]);
        let saved: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        let mut other = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
        other.load_state(&saved, opt.steps()).unwrap();
        assert_eq!(other.steps(), 1);
        let m = other.state_tensors()[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(m.iter().all(|&x| (x - 0.1).abs() < 1e-7));
        let mut wrong = HashMap::new();
        wrong.insert("w.m".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap());
        assert!(matches!(other.load_state(&wrong, 1), Err(OptimError::StateShape { .. })));
    }
}
