//! The engine's attention backend: tokenmill's flash kernels (`crate::cuda::flash_attn`, the reference, always
//! built) or cuDNN's SDPA (`crate::cuda::cudnn_attn`, feature `cudnn`; deterministic backward), chosen by
//! `[engine] attention` ([`AttentionBackend`]); `native-sm90` runs the native forward with the backward on Hopper's
//! wgmma (`crate::cuda::flash_bwd_sm90`, same buffers), for A/B timings. Both take the same buffers (qkv with NH query heads and KV key/value
//! heads, y, lse, dy, dqkv) and the lse of either is the natural-log logsumexp its own backward reads, so the
//! engine's layout does not change with the backend.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::Result;

use super::options::AttentionBackend;
#[cfg(feature = "cudnn")]
use crate::cuda::cudnn_attn::CudnnAttn;
use half::bf16;

use crate::cuda::flash_attn::{AttnBwd, AttnFwd, FlashAttn, Heads};
use crate::cuda::flash_bwd_sm90::{FlashBwdSm90, Sm90Variant};

/// The loaded backend; `forward` / `backward` have flash_attn's signatures.
pub(super) enum Attention {
    Native(FlashAttn),
    NativeSm90(FlashAttn, FlashBwdSm90),
    #[cfg(feature = "cudnn")]
    Cudnn(CudnnAttn),
}

impl Attention {
    /// Load `backend` on `stream`; cuDNN builds its graphs for the engine's (b, t, heads) here, so a shape it
    /// does not support fails now rather than in the first step.
    pub fn new(
        stream: &Arc<CudaStream>,
        backend: AttentionBackend,
        (b, t, heads): (usize, usize, Heads),
    ) -> Result<Self> {
        match backend.resolved() {
            AttentionBackend::Native | AttentionBackend::Auto => Ok(Attention::Native(FlashAttn::new(stream)?)),
            AttentionBackend::NativeSm90 => {
                // wg1p: the fastest variant on the H100 (bench attention, B=64 T=1024 NH=12: 1.235 ms against wg1's
                // 1.261, wg1b3's 1.294 and wg2's 1.370; docs/PERF.md); every variant gives the same bits.
                let bwd = FlashBwdSm90::new(stream, Sm90Variant::Wg1Pipe).map_err(|e| {
                    candle_core::Error::Msg(format!("[engine] attention = \"native-sm90\": {e} (use native or auto)"))
                })?;
                tracing::info!("cuda engine attention: native forward, backward on wgmma ({})", bwd.variant().label());
                Ok(Attention::NativeSm90(FlashAttn::new(stream)?, bwd))
            }
            #[cfg(feature = "cudnn")]
            AttentionBackend::Cudnn => {
                let att = CudnnAttn::new(stream)?;
                att.prepare(b, t, heads)?;
                tracing::info!("cuda engine attention: cuDNN SDPA\n{}", att.describe()?);
                Ok(Attention::Cudnn(att))
            }
            #[cfg(not(feature = "cudnn"))]
            AttentionBackend::Cudnn => {
                let _ = (b, t, heads);
                candle_core::bail!(
                    "[engine] attention = \"cudnn\": this binary was built without the `cudnn` feature (build with \
                     scripts/build-cuda.sh --pypi-toolchain --features cudnn)"
                )
            }
        }
    }

    /// As [`FlashAttn::forward`].
    ///
    /// # Safety
    /// As [`FlashAttn::forward`].
    pub unsafe fn forward(&self, p: AttnFwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        match self {
            // SAFETY: the caller's contract is the backends' contract.
            Attention::Native(a) | Attention::NativeSm90(a, _) => unsafe { a.forward(p, b, t, heads) },
            #[cfg(feature = "cudnn")]
            Attention::Cudnn(a) => unsafe { a.forward(p, b, t, heads) },
        }
    }

    /// As [`FlashAttn::backward`] (cuDNN ignores `dvec_scratch`).
    ///
    /// # Safety
    /// As [`FlashAttn::backward`].
    pub unsafe fn backward(&self, p: AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        match self {
            // SAFETY: the caller's contract is the backends' contract.
            Attention::Native(a) => unsafe { a.backward(p, b, t, heads) },
            Attention::NativeSm90(_, s) => unsafe { s.backward(p, b, t, heads) },
            #[cfg(feature = "cudnn")]
            Attention::Cudnn(a) => unsafe { a.backward(p, b, t, heads) },
        }
    }
}
