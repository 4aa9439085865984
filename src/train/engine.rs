//! The seam between the trainer and what executes a training step. An `Engine` runs one optimizer step in three
//! calls (`begin_step`, `micro_step` per micro-batch, `finish_step`: reduce across processes, clip, AdamW), evaluates
//! a batch's loss, and hands out its model (for sampling, HellaSwag and checkpoint weights) and its optimizer state
//! (for checkpoints), under the same names whatever the engine, so a checkpoint written by one resumes on the other.
//!
//! Two engines:
//! - `Autograd`: candle's autograd over any `LanguageModel` (GPT-2, Llama-style), CPU or CUDA, any dtype, with
//!   `optim::AdamW`: the reference.
//! - `decoder::DecoderEngine`: the explicit decoder engine (CUDA, bf16; GPT-2 and Llama-style, the architecture as
//!   data): llm.c's design, several times faster.
//!
//! `[run] engine = "auto" | "autograd" | "cuda"` (`config::EngineChoice`); auto takes cuda wherever it supports
//! the model, device and dtype (`decoder::unsupported`). `optimizer_step` below is the one step both `train` and
//! `bench` run.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::eval::hellaswag::RowScorer;
use crate::model::{LanguageModel, ModelConfig};
use crate::shards::loader::Batch;
use crate::train::config::{ComputeDtype, ConfigError, EngineChoice, EngineOptions};
use crate::train::optim::{AdamW, AdamWConfig, OptimError};
use crate::train::step::{clip_grad_norm, micro_step, GradAccumulator, Reducer, StepOutcome};

/// A resolved engine choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Autograd,
    /// The explicit decoder engine (`decoder::DecoderEngine`).
    Cuda,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Autograd => "autograd",
            EngineKind::Cuda => "cuda",
        }
    }

    /// Resolve `[run] engine` for this model, device and dtype: an explicit `cuda` it cannot run is an error that
    /// says why; `auto` falls back to autograd.
    pub fn resolve(
        choice: EngineChoice,
        model: &ModelConfig,
        device: &Device,
        dtype: ComputeDtype,
    ) -> std::result::Result<EngineKind, ConfigError> {
        let why_not = crate::train::decoder::unsupported(model, device.is_cuda(), dtype == ComputeDtype::Bf16)
            .or_else(|| (!cfg!(feature = "cuda")).then(|| "this build has no `cuda` feature".to_string()));
        match choice {
            EngineChoice::Autograd => Ok(EngineKind::Autograd),
            EngineChoice::Cuda => match why_not {
                None => Ok(EngineKind::Cuda),
                Some(why) => Err(ConfigError::Invalid(format!("[run] engine = \"cuda\": {why}"))),
            },
            EngineChoice::Auto => Ok(if why_not.is_none() { EngineKind::Cuda } else { EngineKind::Autograd }),
        }
    }
}

/// What executes training steps (see the module doc).
pub trait Engine {
    fn kind(&self) -> EngineKind;
    /// The model with the engine's current weights.
    fn model(&self) -> &dyn LanguageModel;
    /// Start an optimizer step (gradients and the loss accumulator to zero).
    fn begin_step(&mut self) -> Result<()>;
    /// Forward and backward of one of `accum` micro-batches of the step: adds the gradient of loss / accum.
    fn micro_step(&mut self, batch: &Batch, accum: usize) -> Result<()>;
    /// Reduce gradients and loss across processes, measure and clip the global norm, fetch the loss to the host and,
    /// only when it is finite, apply AdamW at `lr`. A non-finite loss comes back in the outcome with the weights
    /// untouched.
    fn finish_step(&mut self, lr: f64, grad_clip: f64, reducer: &dyn Reducer) -> Result<StepOutcome>;
    /// Mean loss of one batch, without gradients.
    fn eval_loss(&mut self, batch: &Batch) -> Result<f32>;
    /// AdamW's moments as named tensors (`<param>.m`, `<param>.v`).
    fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>>;
    /// AdamW updates applied so far.
    fn optimizer_steps(&self) -> u64;
    fn load_optimizer_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), OptimError>;
    /// ((tensors, elements) with weight decay, (tensors, elements) without).
    fn decay_summary(&self) -> ((usize, usize), (usize, usize));
    /// The autograd engine, for what only it can do (per-parameter gradient tensors).
    fn as_autograd(&mut self) -> Option<&mut Autograd> {
        None
    }
    /// A scorer of evaluation rows of up to `longest` tokens by the engine's own forward, where it has one that
    /// takes them (else evaluation runs on `model()`).
    fn scorer(&mut self, longest: usize) -> Option<Box<dyn RowScorer + '_>> {
        let _ = longest;
        None
    }
    /// What the engine resolved its choices to (the cuda engine: the attention backend that runs and where each
    /// product's cuBLASLt algorithm comes from), for the run's log and checkpoints; `None` where it has none.
    fn resolved(&self) -> Option<String> {
        None
    }
}

/// One whole optimizer step on any engine: `accum` micro-batches from `next_batch(k)`, then `finish_step`. A
/// non-finite loss becomes `on_non_finite(loss)` (nothing was applied): a diverged run must not write NaN weights.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step<E: From<candle_core::Error>>(
    engine: &mut dyn Engine,
    accum: usize,
    reducer: &dyn Reducer,
    lr: f64,
    grad_clip: f64,
    mut next_batch: impl FnMut(usize) -> std::result::Result<Batch, E>,
    on_non_finite: impl FnOnce(f32) -> E,
) -> std::result::Result<StepOutcome, E> {
    assert!(accum > 0, "an optimizer step has at least one micro-step");
    engine.begin_step()?;
    for k in 0..accum {
        let batch = next_batch(k)?;
        engine.micro_step(&batch, accum)?;
    }
    let outcome = engine.finish_step(lr, grad_clip, reducer)?;
    if !outcome.loss.is_finite() {
        return Err(on_non_finite(outcome.loss));
    }
    Ok(outcome)
}

/// A host batch as device tensors `(B, T)` u32.
pub fn upload(b: &Batch, device: &Device) -> Result<(Tensor, Tensor)> {
    let shape = (b.batch_size, b.seq_len);
    Ok((Tensor::from_slice(&b.x, shape, device)?, Tensor::from_slice(&b.y, shape, device)?))
}

/// candle's autograd over a `LanguageModel` with `optim::AdamW` (the reference engine).
pub struct Autograd {
    model: Box<dyn LanguageModel>,
    vars: Vec<Var>,
    opt: AdamW,
    device: Device,
    acc: GradAccumulator,
}

impl Autograd {
    pub fn new(
        model: Box<dyn LanguageModel>,
        device: &Device,
        adam: AdamWConfig,
    ) -> std::result::Result<Autograd, OptimError> {
        let params = model.parameters();
        let vars = params.iter().map(|(_, v)| v.clone()).collect();
        let opt = AdamW::new(params, adam)?;
        Ok(Autograd { model, vars, opt, device: device.clone(), acc: GradAccumulator::new() })
    }

    /// The step's accumulated gradients so far, per parameter (model order), and the mean loss (f32 scalar on the
    /// device), reduced across processes but not clipped: for tests that compare gradients.
    pub fn accumulated(&mut self, reducer: &dyn Reducer) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let (mut loss, mut grads) = std::mem::take(&mut self.acc)
            .finish()
            .ok_or_else(|| candle_core::Error::Msg("no micro-step has run in this optimizer step".into()))?;
        reducer.reduce_grads(&mut loss, &mut grads)?;
        Ok((loss, grads))
    }
}

impl Engine for Autograd {
    fn kind(&self) -> EngineKind {
        EngineKind::Autograd
    }

    fn model(&self) -> &dyn LanguageModel {
        &*self.model
    }

    fn begin_step(&mut self) -> Result<()> {
        self.acc = GradAccumulator::new();
        Ok(())
    }

    fn micro_step(&mut self, batch: &Batch, accum: usize) -> Result<()> {
        let (x, y) = upload(batch, &self.device)?;
        let (loss, grads) = micro_step(&*self.model, &self.vars, &x, &y, accum)?;
        self.acc.add(loss, grads)
    }

    fn finish_step(&mut self, lr: f64, grad_clip: f64, reducer: &dyn Reducer) -> Result<StepOutcome> {
        let (loss, mut grads) = self.accumulated(reducer)?;
        let grad_norm = clip_grad_norm(&mut grads, grad_clip)?;
        let loss = loss.to_scalar::<f32>()?;
        if loss.is_finite() {
            self.opt.step(&grads, lr).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Ok(StepOutcome { loss, grad_norm })
    }

    fn eval_loss(&mut self, batch: &Batch) -> Result<f32> {
        let (x, y) = upload(batch, &self.device)?;
        self.model.loss(&x, &y)?.to_dtype(DType::F32)?.to_scalar::<f32>()
    }

    fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.opt.state_tensors())
    }

    fn optimizer_steps(&self) -> u64 {
        self.opt.steps()
    }

    fn load_optimizer_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), OptimError> {
        self.opt.load_state(tensors, steps)
    }

    fn decay_summary(&self) -> ((usize, usize), (usize, usize)) {
        self.opt.decay_summary()
    }

    fn as_autograd(&mut self) -> Option<&mut Autograd> {
        Some(self)
    }
}

#[cfg(feature = "cuda")]
impl Engine for crate::train::decoder::DecoderEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cuda
    }
    fn resolved(&self) -> Option<String> {
        Some(self.describe())
    }
    fn model(&self) -> &dyn LanguageModel {
        Self::model(self)
    }
    fn begin_step(&mut self) -> Result<()> {
        Self::begin_step(self)
    }
    fn micro_step(&mut self, batch: &Batch, accum: usize) -> Result<()> {
        Self::micro_step(self, batch, accum)
    }
    fn finish_step(&mut self, lr: f64, grad_clip: f64, reducer: &dyn Reducer) -> Result<StepOutcome> {
        Self::finish_step(self, lr, grad_clip, reducer)
    }
    fn eval_loss(&mut self, batch: &Batch) -> Result<f32> {
        Self::eval_loss(self, batch)
    }
    fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        Self::optimizer_state(self)
    }
    fn optimizer_steps(&self) -> u64 {
        Self::optimizer_steps(self)
    }
    fn load_optimizer_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), OptimError> {
        Self::load_optimizer_state(self, tensors, steps)
    }
    fn decay_summary(&self) -> ((usize, usize), (usize, usize)) {
        Self::decay_summary(self)
    }
    fn scorer(&mut self, longest: usize) -> Option<Box<dyn RowScorer + '_>> {
        Self::scorer(self, longest).map(|s| Box::new(s) as Box<dyn RowScorer + '_>)
    }
}

/// The engine `kind` over `model` (fresh or restored weights, on `device`), sized for micro-batches `(b, t)`; the
/// cuda engine computes as `opts` says (the config's `[engine]`).
pub fn build(
    kind: EngineKind,
    model: Box<dyn LanguageModel>,
    device: &Device,
    micro_batch: (usize, usize),
    adam: AdamWConfig,
    opts: &EngineOptions,
) -> std::result::Result<Box<dyn Engine>, OptimError> {
    match kind {
        EngineKind::Autograd => Ok(Box::new(Autograd::new(model, device, adam)?)),
        #[cfg(feature = "cuda")]
        EngineKind::Cuda => {
            Ok(Box::new(crate::train::decoder::DecoderEngine::new(model, device, micro_batch, adam, opts.clone())?))
        }
        #[cfg(not(feature = "cuda"))]
        EngineKind::Cuda => {
            let _ = (micro_batch, opts);
            Err(OptimError::Candle(candle_core::Error::Msg("the cuda engine needs the `cuda` build".into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_and_explicit_explains() {
        let gpt2 = ModelConfig::preset("tiny").unwrap();
        let cpu = Device::Cpu;
        let resolve = |c, d| EngineKind::resolve(c, &gpt2, &cpu, d);
        assert_eq!(resolve(EngineChoice::Auto, ComputeDtype::F32).unwrap(), EngineKind::Autograd);
        assert_eq!(resolve(EngineChoice::Autograd, ComputeDtype::Bf16).unwrap(), EngineKind::Autograd);
        let err = resolve(EngineChoice::Cuda, ComputeDtype::Bf16).unwrap_err().to_string();
        assert!(err.contains("\"cuda\"") && err.contains("CUDA"), "{err}");
        // The earlier name still reads, and an unknown one is refused by the config's schema.
        let parse = |v: &str| toml::from_str::<std::collections::BTreeMap<String, EngineChoice>>(&format!("e = {v:?}"));
        assert_eq!(parse("gpt2-cuda").unwrap()["e"], EngineChoice::Cuda);
        assert!(parse("fast").is_err());
    }
}
