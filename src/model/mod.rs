//! Models behind one small trait, so the trainer (`crate::train`) is generic over architectures.
//!
//! The architectures are rows of one table (`arch`: norm, positions, MLP, biases, tensor names here and in HF files);
//! two block implementations share the trait, the composed ops (`ops`, `attention`) and the parameter machinery
//! (`params`): OpenAI's GPT-2 (`gpt2`) and a Llama-style model (`llama`, also Qwen2's block), chosen by
//! `ModelConfig::arch`. Around them: Hugging Face import/export (`hf`), tokenmill's own weight files and checkpoint
//! directories (`store`) and resolving `--model gpt2|DIR` (`pretrained`). Top-k sampling lives with the trainer
//! (`crate::train::sample`), which both training-time samples and `tokenmill sample` use.
//!
//! Precision (`Precision`): master weights are `Var`s in `master` (fp32; f64 in gradient tests); `forward` casts
//! them to `compute` (bf16 on GPU) for the matmuls, while norms, softmax, the residual stream and the loss run in
//! the reduce dtype (`ops::reduce_dtype(compute)`: f32, or f64 for f64 compute).
//!
//! Dimension letters used throughout: B batch, T sequence length, C channels (n_embd), NH heads, HS head size,
//! V vocabulary (padded), L layers.

use candle_core::{DType, Device, Result, Tensor, Var};

pub mod arch;
pub mod attention;
pub mod config;
pub mod decoder;
mod error;
pub mod gpt2;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod ops;
pub mod params;
pub mod pretrained;
pub mod store;

pub use arch::param_specs;
pub use config::{Architecture, ModelConfig};
use decoder::DecoderBase;
pub use error::ModelError;
pub use pretrained::load_model;
pub use store::{load_checkpoint_model, load_model_weights, save_model_weights};

/// What the trainer needs from a model.
pub trait LanguageModel: Send {
    /// Logits `(B, T, V)` for token ids `idx: (B, T)` u32. V is the padded vocabulary; padded ids never win
    /// (their logits are masked or trained down, see the implementation).
    fn forward(&self, idx: &Tensor) -> Result<Tensor>;

    /// Logits `(B, V)` of the last position only, for sampling: implementations run the head on that one position
    /// (at GPT-2 124M, B = 64 and T = 1024 the full `(B, T, V)` logits are 13 GB in f32).
    fn forward_last(&self, idx: &Tensor) -> Result<Tensor> {
        let t = idx.dim(1)?;
        self.forward(idx)?.narrow(1, t - 1, 1)?.squeeze(1)
    }

    /// As [`forward_last`](Self::forward_last) for `idx` continuing the sequences `cache` holds (`(B, T_new)`; an
    /// empty cache: a fresh start), whose keys and values it appends: generation then feeds one new token per step.
    /// `None` for a model without a cache (generation re-runs the context). The positions must fit the block size.
    fn forward_last_cached(&self, _idx: &Tensor, _cache: &mut attention::KvCache) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Mean cross-entropy over all B*T positions as an f32 scalar (f64 under `Precision::F64`); `targets: (B, T)` u32.
    fn loss(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor>;

    /// Each position's cross-entropy `(B, T)` f32 (f64 under `Precision::F64`), 0 where the target is
    /// `kernels::IGNORE_INDEX`: what evaluation scores (HellaSwag's ending tokens). For evaluation only (no
    /// gradient is taken). The default goes through `forward`'s `(B, T, V)` logits; the models run their head
    /// in the compute dtype into the fused cross-entropy kernel instead.
    fn token_losses(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let logits = self.forward(idx)?;
        let v = logits.dim(2)?;
        kernels::softmax_cross_entropy(&logits.reshape((b * t, v))?, &targets.flatten_all()?)?.reshape((b, t))
    }

    /// Trainable parameters with their checkpoint names (HF GPT-2 names for GPT-2), in a stable order.
    fn parameters(&self) -> Vec<(String, Var)>;

    fn config(&self) -> &ModelConfig;

    /// Number of trainable scalars (tied weights counted once).
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Which dtypes a model keeps and computes in (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    /// Dtype of the trainable `Var`s (and of what checkpoints store).
    pub master: DType,
    /// Dtype of matmul inputs and elementwise activations.
    pub compute: DType,
}

impl Precision {
    /// Everything in fp32 (CPU training, reference runs).
    pub const FP32: Precision = Precision { master: DType::F32, compute: DType::F32 };
    /// fp32 master weights, bf16 matmuls; fp32 reductions (GPU training).
    pub const BF16: Precision = Precision { master: DType::F32, compute: DType::BF16 };
    /// Everything in f64 (finite-difference gradient tests).
    pub const F64: Precision = Precision { master: DType::F64, compute: DType::F64 };

    /// fp32 master weights computing in `compute` (f64 compute keeps f64 masters: the gradient-test setting).
    pub fn with_compute(compute: DType) -> Precision {
        let master = if compute == DType::F64 { DType::F64 } else { DType::F32 };
        Precision { master, compute }
    }

    /// Dtype of norms, softmax, the residual stream, logits returned by `forward` and the loss.
    pub fn reduce(&self) -> DType {
        ops::reduce_dtype(self.compute)
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let float = |d: DType| matches!(d, DType::F64 | DType::F32 | DType::BF16 | DType::F16);
        if !float(self.master) || !float(self.compute) {
            return Err(ModelError::Config(format!(
                "precision master={:?} compute={:?}: both must be float dtypes",
                self.master, self.compute
            )));
        }
        Ok(())
    }
}

/// A freshly initialised model of `cfg.arch`, reproducible from `seed` (bitwise on CPU).
pub fn build_model(
    cfg: &ModelConfig,
    precision: Precision,
    device: &Device,
    seed: u64,
) -> std::result::Result<Box<dyn LanguageModel>, ModelError> {
    wire(DecoderBase::init(cfg, precision, device, seed)?, device)
}

/// A model of `cfg.arch` holding `tensors` (tokenmill names and layout); `source` names their file for errors.
pub fn model_from_tensors(
    cfg: &ModelConfig,
    precision: Precision,
    device: &Device,
    tensors: std::collections::HashMap<String, Tensor>,
    source: &std::path::Path,
) -> std::result::Result<Box<dyn LanguageModel>, ModelError> {
    wire(DecoderBase::load(cfg, precision, device, tensors, source)?, device)
}

/// The model of `base.cfg.arch` over `base`'s parameters: which block implementation computes the row.
fn wire(base: DecoderBase, device: &Device) -> std::result::Result<Box<dyn LanguageModel>, ModelError> {
    Ok(match base.cfg.arch {
        Architecture::Gpt2 => Box::new(gpt2::Gpt2::new(base)),
        Architecture::Llama | Architecture::Qwen2 => Box::new(llama::Llama::new(base, device)?),
    })
}

/// Checks `idx` is `(B, T)` integer ids with `1 <= T <= block_size`; returns `(B, T)`. (Ids themselves are not
/// range-checked: that would cost a device->host sync per step; the data loader guarantees ids < vocab.)
pub(crate) fn check_input(idx: &Tensor, cfg: &ModelConfig) -> Result<(usize, usize)> {
    let (b, t) = idx.dims2()?;
    if !matches!(idx.dtype(), DType::U32 | DType::U8 | DType::I64) {
        candle_core::bail!("token ids must be an integer tensor (u32), got {:?}", idx.dtype());
    }
    if t == 0 || t > cfg.block_size {
        candle_core::bail!("sequence length {t} must be in 1..={} (block_size)", cfg.block_size);
    }
    Ok((b, t))
}
