//! The engine's attention backend: tokenmill's flash kernels (`crate::cuda::flash_attn`, the reference, always
//! built) or cuDNN's SDPA (`crate::cuda::cudnn_attn`, feature `cudnn`; deterministic backward), chosen by
//! `TOKENMILL_ATTENTION=native|cudnn` ([`EngineOptions::from_env`](super::EngineOptions::from_env)). The default is
//! cuDNN in a `cudnn` build (measured faster: docs/PERF.md) and the native kernels otherwise. Both take the
//! same buffers (qkv, y, lse, dy, dqkv) and the lse of either is the natural-log logsumexp its own backward reads,
//! so the engine's layout does not change with the backend.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::Result;

#[cfg(feature = "cudnn")]
use crate::cuda::cudnn_attn::CudnnAttn;
use crate::cuda::flash_attn::FlashAttn;

/// Which attention implementation the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionBackend {
    /// `crate::cuda::flash_attn` (always built).
    Native,
    /// cuDNN's SDPA with the deterministic backward requested (needs a `--features cudnn` build).
    Cudnn,
}

impl Default for AttentionBackend {
    /// cuDNN where the binary has it: at GPT-2 124M shapes its deterministic SDPA is 1.49 ms per layer against the
    /// native kernels' 1.83 (docs/PERF.md).
    fn default() -> Self {
        if cfg!(feature = "cudnn") {
            AttentionBackend::Cudnn
        } else {
            AttentionBackend::Native
        }
    }
}

impl AttentionBackend {
    /// `native` (or `flash`) and `cudnn`, case-insensitive.
    pub fn parse(s: &str) -> Option<AttentionBackend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" | "flash" => Some(AttentionBackend::Native),
            "cudnn" => Some(AttentionBackend::Cudnn),
            _ => None,
        }
    }

    /// `TOKENMILL_ATTENTION`, the default when unset; an unknown value is reported and ignored (as the engine's
    /// other switches ignore values they do not know).
    pub fn from_env() -> AttentionBackend {
        match std::env::var("TOKENMILL_ATTENTION") {
            Ok(v) if !v.trim().is_empty() => AttentionBackend::parse(&v).unwrap_or_else(|| {
                let d = AttentionBackend::default();
                tracing::warn!("TOKENMILL_ATTENTION={v:?} is not native or cudnn: using {d:?}");
                d
            }),
            _ => AttentionBackend::default(),
        }
    }
}

/// The loaded backend; `forward` / `backward` have flash_attn's signatures.
pub(super) enum Attention {
    Native(FlashAttn),
    #[cfg(feature = "cudnn")]
    Cudnn(CudnnAttn),
}

impl Attention {
    /// Load `backend` on `stream`; cuDNN builds its graphs for the engine's (b, t, nh) here, so a shape it does
    /// not support fails now rather than in the first step.
    pub fn new(stream: &Arc<CudaStream>, backend: AttentionBackend, (b, t, nh): (usize, usize, usize)) -> Result<Self> {
        match backend {
            AttentionBackend::Native => Ok(Attention::Native(FlashAttn::new(stream)?)),
            #[cfg(feature = "cudnn")]
            AttentionBackend::Cudnn => {
                let att = CudnnAttn::new(stream)?;
                att.prepare(b, t, nh)?;
                tracing::info!("gpt2-cuda attention: cuDNN SDPA\n{}", att.describe()?);
                Ok(Attention::Cudnn(att))
            }
            #[cfg(not(feature = "cudnn"))]
            AttentionBackend::Cudnn => {
                let _ = (b, t, nh);
                candle_core::bail!(
                    "TOKENMILL_ATTENTION=cudnn: this binary was built without the `cudnn` feature (build with \
                     scripts/build-cuda.sh --pypi-toolchain --features cudnn)"
                )
            }
        }
    }

    /// As [`FlashAttn::forward`].
    ///
    /// # Safety
    /// As [`FlashAttn::forward`].
    pub unsafe fn forward(&self, qkv: u64, y: u64, lse: u64, b: usize, t: usize, nh: usize) -> Result<()> {
        match self {
            // SAFETY: the caller's contract is the backends' contract.
            Attention::Native(a) => unsafe { a.forward(qkv, y, lse, b, t, nh) },
            #[cfg(feature = "cudnn")]
            Attention::Cudnn(a) => unsafe { a.forward(qkv, y, lse, b, t, nh) },
        }
    }

    /// As [`FlashAttn::backward`] (cuDNN ignores `dvec_scratch`).
    ///
    /// # Safety
    /// As [`FlashAttn::backward`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn backward(
        &self,
        qkv: u64,
        y: u64,
        dy: u64,
        lse: u64,
        dvec_scratch: u64,
        dqkv: u64,
        b: usize,
        t: usize,
        nh: usize,
    ) -> Result<()> {
        match self {
            // SAFETY: the caller's contract is the backends' contract.
            Attention::Native(a) => unsafe { a.backward(qkv, y, dy, lse, dvec_scratch, dqkv, b, t, nh) },
            #[cfg(feature = "cudnn")]
            Attention::Cudnn(a) => unsafe { a.backward(qkv, y, dy, lse, dvec_scratch, dqkv, b, t, nh) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttentionBackend;

    #[test]
    fn backend_names_parse() {
        assert_eq!(AttentionBackend::parse("cudnn"), Some(AttentionBackend::Cudnn));
        assert_eq!(AttentionBackend::parse(" Native "), Some(AttentionBackend::Native));
        assert_eq!(AttentionBackend::parse("flash"), Some(AttentionBackend::Native));
        assert_eq!(AttentionBackend::parse("fa3"), None);
        assert_eq!(AttentionBackend::default(), AttentionBackend::Native);
    }
}
