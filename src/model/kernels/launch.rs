//! What every CUDA launcher beside its `.cu` file shares: the kernel-name suffix of a dtype, and the 1-D launch
//! geometry most kernels use. (Each launcher keeps its own PTX module, argument list and SAFETY note: those differ.)

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::{DType, Result};

/// `ce_fwd_bf16`-style suffix of `dt`, if `op`'s kernels come in it (`supported`); otherwise an error naming `op`.
pub(super) fn dtype_suffix(dt: DType, op: &str, supported: &[DType]) -> Result<&'static str> {
    let sfx = match dt {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "",
    };
    if sfx.is_empty() || !supported.contains(&dt) {
        candle_core::bail!("{op} on CUDA takes {supported:?}, got {dt:?}");
    }
    Ok(sfx)
}

/// `blocks` blocks of `threads` threads in x, no dynamic shared memory.
pub(super) fn grid_1d(blocks: usize, threads: u32) -> Result<LaunchConfig> {
    let Ok(blocks) = u32::try_from(blocks) else {
        candle_core::bail!("{blocks} blocks exceed a CUDA grid's x dimension")
    };
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}
