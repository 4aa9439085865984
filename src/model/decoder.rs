//! What GPT-2 and the Llama-style model share above their blocks: a decoder is its stack (`hidden_after`: ids to the
//! final norm's output) and a head weight; `LanguageModel` follows from those once, here (logits, the last position
//! for sampling, the fused loss, per-position losses for evaluation).

use candle_core::{Result, Tensor, Var};

use super::attention::KvCache;
use super::{kernels, ops, LanguageModel, ModelConfig, Precision};

/// The parts a decoder model supplies; `LanguageModel` is implemented for every `Decoder`.
pub trait Decoder: Send {
    /// The final hidden state `(B, T, C)` (after the last norm) in the compute dtype, for positions after those
    /// `cache` holds (appending theirs to it); `None`: a fresh start.
    fn hidden_after(&self, idx: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor>;
    /// The head's weight `(V, C)`: the token embedding when tied.
    fn head(&self) -> &Tensor;
    fn precision(&self) -> Precision;
    /// Trainable parameters with their checkpoint names, in a stable order.
    fn named_parameters(&self) -> &[(String, Var)];
    fn model_config(&self) -> &ModelConfig;
}

/// The head on the last position of `h (B, T, C)` -> logits `(B, V)` in the reduce dtype.
fn head_last<D: Decoder>(d: &D, h: &Tensor) -> Result<Tensor> {
    let last = h.narrow(1, h.dim(1)? - 1, 1)?; // (B, 1, C)
    ops::linear(&last, d.head(), None)?.squeeze(1)?.to_dtype(d.precision().reduce())
}

impl<D: Decoder> LanguageModel for D {
    fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        // (B, T, C) @ (C, V) in the compute dtype, then the reduce dtype.
        ops::linear(&self.hidden_after(idx, None)?, self.head(), None)?.to_dtype(self.precision().reduce())
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
        self.named_parameters().to_vec()
    }

    fn config(&self) -> &ModelConfig {
        self.model_config()
    }
}
