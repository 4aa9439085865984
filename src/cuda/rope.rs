//! Rotary position embeddings of the decoder engine (rope.cu), in place on the fused qkv buffer: q and k turned after
//! the qkv matmul, dq and dk turned back before its backward. CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));

pub struct Rope {
    module: Module,
}

/// Where the rotated heads are: `n` rows of `ld` bf16 whose first `heads * hs` columns are the heads to turn (q's,
/// then k's), row r at position `r % t`.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub n: usize,
    pub t: usize,
    pub heads: usize,
    pub hs: usize,
    pub ld: usize,
}

impl Rope {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Rope> {
        Ok(Rope { module: Module::load(stream, "rope.cu", PTX, &["rope_fwd", "rope_bwd"])? })
    }

    /// Turn the heads of `qkv` forward (`backward = false`) or back (the transposed rotation, on gradients), with
    /// the (T, HS/2) f32 tables `cos`, `sin`.
    ///
    /// # Safety
    /// `qkv` holds `n * ld` bf16, 16-byte aligned; `cos`, `sin` hold at least `t * hs / 2` f32, 16-byte aligned.
    pub unsafe fn apply(
        &self,
        qkv: DevPtr<bf16>,
        (cos, sin): (DevPtr<f32>, DevPtr<f32>),
        s: RopeShape,
        backward: bool,
    ) -> Result<()> {
        if !(s.hs / 2).is_multiple_of(8) || s.heads * s.hs > s.ld || !s.ld.is_multiple_of(8) {
            candle_core::bail!("rope: {s:?} needs HS/2 a multiple of 8 and the rotated heads inside an aligned row");
        }
        let threads = s.n * s.heads * s.hs / 16;
        let (n, t, heads, hs, ld) =
            (int(s.n, "rows")?, int(s.t, "T")?, int(s.heads, "heads")?, int(s.hs, "HS")?, int(s.ld, "row width")?);
        let mut a = self.module.args(if backward { "rope_bwd" } else { "rope_fwd" })?;
        a.arg(&qkv).arg(&cos).arg(&sin).arg(&n).arg(&t).arg(&heads).arg(&hs).arg(&ld);
        go(a, cfg((blocks(threads, 256)?, 1), (256, 1)))
    }
}
