//! What GPT-2 and the Llama-style model share above their blocks: a decoder is its stack (`hidden_after`: ids to the
//! final norm's output), a head weight and a `DecoderBase` (config, precision, parameters, made the same way for
//! every architecture); `LanguageModel` follows from those once, here (logits, the last position for sampling, the
//! fused loss, per-position losses for evaluation).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor, Var};

use super::attention::KvCache;
use super::params::{init_params, params_from_tensors};
use super::{check_input, kernels, ops, param_specs, LanguageModel, ModelConfig, ModelError, Precision};

/// The parts a decoder model supplies; `LanguageModel` is implemented for every `Decoder`.
pub trait Decoder: Send {
    /// The final hidden state `(B, T, C)` (after the last norm) in the compute dtype, for positions after those
    /// `cache` holds (appending theirs to it); `None`: a fresh start.
    fn hidden_after(&self, idx: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor>;
    /// The head's weight `(V, C)`: the token embedding when tied.
    fn head(&self) -> &Tensor;
    /// Its config, precision and parameters.
    fn base(&self) -> &DecoderBase;
}

/// What a decoder holds besides its layers, made the same way for every architecture (each model then wires its
/// layers from `params`).
pub struct DecoderBase {
    pub cfg: ModelConfig,
    pub precision: Precision,
    /// Trainable parameters with their checkpoint names, in `param_specs(cfg)` order.
    pub params: Vec<(String, Var)>,
}

impl DecoderBase {
    /// Fresh parameters of `cfg.arch` (build-nanogpt's init), reproducible from `seed`.
    pub fn init(
        cfg: &ModelConfig,
        precision: Precision,
        device: &Device,
        seed: u64,
    ) -> std::result::Result<Self, ModelError> {
        cfg.validate()?;
        precision.validate()?;
        let params = init_params(&param_specs(cfg), seed, precision.master, device)?;
        Ok(DecoderBase { cfg: cfg.clone(), precision, params })
    }

    /// The parameters of `cfg.arch` from `tensors` (tokenmill names and layout; see `hf` for HF files); `source`
    /// names the file they came from, for errors.
    pub fn load(
        cfg: &ModelConfig,
        precision: Precision,
        device: &Device,
        tensors: HashMap<String, Tensor>,
        source: &Path,
    ) -> std::result::Result<Self, ModelError> {
        cfg.validate()?;
        precision.validate()?;
        let arch = cfg.arch.spec().name;
        let params = params_from_tensors(&param_specs(cfg), tensors, source, arch, precision.master, device)?;
        Ok(DecoderBase { cfg: cfg.clone(), precision, params })
    }

    /// `(past, T)` for `idx (B, T)` (checked as `check_input` does) after the `past` positions `cache` holds; the
    /// two together must fit the block size.
    pub fn positions(&self, idx: &Tensor, cache: Option<&KvCache>) -> Result<(usize, usize)> {
        let (_, t) = check_input(idx, &self.cfg)?;
        let past = cache.map_or(0, |c| c.seen());
        if past + t > self.cfg.block_size {
            candle_core::bail!("{past} cached + {t} new positions exceed the block size {}", self.cfg.block_size);
        }
        Ok((past, t))
    }
}

/// The head on the last position of `h (B, T, C)` -> logits `(B, V)` in the reduce dtype.
fn head_last<D: Decoder>(d: &D, h: &Tensor) -> Result<Tensor> {
    let last = h.narrow(1, h.dim(1)? - 1, 1)?; // (B, 1, C)
    ops::linear(&last, d.head(), None)?.squeeze(1)?.to_dtype(d.base().precision.reduce())
}

impl<D: Decoder> LanguageModel for D {
    fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        // (B, T, C) @ (C, V) in the compute dtype, then the reduce dtype.
        ops::linear(&self.hidden_after(idx, None)?, self.head(), None)?.to_dtype(self.base().precision.reduce())
    }

    fn forward_last(&self, idx: &Tensor) -> Result<Tensor> {
        head_last(self, &self.hidden_after(idx, None)?)
    }

    fn forward_last_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Result<Option<Tensor>> {
        Ok(Some(head_last(self, &self.hidden_after(idx, Some(cache))?)?))
    }

    fn loss(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        // Head and fused loss together: no (B, T, V) reshapes for autograd to allocate gradients through.
        ops::lm_head_cross_entropy(&self.hidden_after(idx, None)?, self.head(), targets)
    }

    fn token_losses(&self, idx: &Tensor, targets: &Tensor) -> Result<Tensor> {
        // The logits (B*T, V) stay in the compute dtype (bf16 on GPU: half the bytes of forward's f32 logits) and
        // the fused kernel reduces each row in f32.
        let h = self.hidden_after(idx, None)?;
        let (b, t, c) = h.dims3()?;
        let logits = ops::linear(&h.reshape((b * t, c))?, self.head(), None)?; // (B*T, V)
        kernels::softmax_cross_entropy(&logits, &targets.flatten_all()?)?.reshape((b, t))
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.base().params.to_vec()
    }

    fn config(&self) -> &ModelConfig {
        &self.base().cfg
    }
}
