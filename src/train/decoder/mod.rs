//! The decoder engine: an explicit training engine on CUDA for every decoder the model table describes (GPT-2,
//! Llama-style with RMSNorm, rotary positions, SwiGLU and grouped-query attention), llm.c's design in Rust. Instead
//! of candle's autograd (which allocates and zero-fills every gradient, runs bias adds, casts and reshapes as
//! separate kernels and gives no control over matmul epilogues), the engine owns a few big buffers sized at start
//! (`layout`, `buffers`) and runs the forward and backward kernel by kernel on one stream (`forward`, `backward`;
//! only the bias gradients may run beside it on a second, `bias_stream`),
//! then the optimizer over the flat buffers in two launches (`optimizer`). No allocation and no host
//! synchronisation inside a step except reading the loss and the gradient norm at its end. The architecture is
//! data (`layout::Arch`: norm, positions, MLP, biases, tied head): GPT-2 is one row of that table, and its step is
//! bitwise what the GPT-2-only engine computed.
//!
//! Numerics follow PyTorch autocast (the reference recipes): fp32 master weights and AdamW state; a bf16 working
//! copy of the weights written by the optimizer; matmuls in bf16 with f32 accumulation, bias in the cuBLASLt
//! epilogue and bf16 outputs; the residual stream and its gradient in f32 (each projection's bf16 output is added to
//! it by the norm kernel that follows, as autocast adds a bf16 linear output to an f32 tensor); norm statistics,
//! softmax and the loss in f32; gradients accumulated in f32 across micro-steps. Everything is deterministic (no
//! float atomics), so runs repeat and resume bit for bit.
//!
//! The engine's f32 master weights are the Vars of a candle model of the same architecture (`engine::Masters`): the
//! optimizer updates them in place, so that model serves sampling, HellaSwag and checkpoints with no copy (a
//! checkpoint written here has the autograd engine's names and files, so either engine resumes the other's).
//!
//! Evaluation runs on the engine too (`scoring`: HellaSwag's rows through the engine's forward in the training
//! buffers).
//!
//! Layout (`layout.rs`) and the scoring shapes are plain arithmetic and compiled everywhere; the rest needs the
//! `cuda` feature.

pub mod layout;
pub mod options;

#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod backward;
#[cfg(feature = "cuda")]
mod bias_stream;
#[cfg(feature = "cuda")]
mod buffers;
#[cfg(feature = "cuda")]
mod engine;
#[cfg(feature = "cuda")]
mod forward;
#[cfg(feature = "cuda")]
mod optimizer;
#[cfg(feature = "cuda")]
mod profile;
pub mod scoring;

#[cfg(feature = "cuda")]
pub use engine::DecoderEngine;
pub use options::{AttentionBackend, EngineOptions, GemmTableChoice};

use crate::model::ModelConfig;

/// Why a model cannot run on the decoder engine (None: it can). The engine computes in bf16 on CUDA, with the
/// attention kernels' head size and the norm kernels' widths.
pub fn unsupported(cfg: &ModelConfig, cuda: bool, bf16: bool) -> Option<String> {
    if !cuda {
        return Some("the cuda engine needs a CUDA device (and the `cuda` build)".into());
    }
    if !bf16 {
        return Some("the cuda engine computes in bf16 (use run.engine = \"autograd\" for fp32)".into());
    }
    let hs = cfg.head_size();
    if hs != 64 {
        return Some(format!("the cuda engine's attention needs head size 64, this model has {hs}"));
    }
    if !cfg.n_embd.is_multiple_of(8) || cfg.n_embd > 2048 {
        return Some(format!("the cuda engine needs n_embd a multiple of 8 up to 2048, got {}", cfg.n_embd));
    }
    if !cfg.hidden().is_multiple_of(8) {
        return Some(format!("the cuda engine needs an MLP width that is a multiple of 8, got {}", cfg.hidden()));
    }
    if !cfg.vocab_size.is_multiple_of(8) {
        return Some(format!("the cuda engine needs a vocabulary padded to a multiple of 8, got {}", cfg.vocab_size));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_is_explained() {
        let gpt2 = ModelConfig::preset("gpt2-124m").unwrap();
        assert_eq!(unsupported(&gpt2, true, true), None);
        assert!(unsupported(&gpt2, false, true).unwrap().contains("CUDA"));
        assert!(unsupported(&gpt2, true, false).unwrap().contains("bf16"));
        let mut odd = gpt2.clone();
        odd.n_head = 6;
        assert!(unsupported(&odd, true, true).unwrap().contains("head size 64"));
        for llama in ["llama-124m", "llama-1b"] {
            assert_eq!(unsupported(&ModelConfig::preset(llama).unwrap(), true, true), None, "{llama}");
        }
    }
}
