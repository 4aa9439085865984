//! The launcher of the pipeline check kernels (pipeline_check.cu: a producer warpgroup streaming tiles by bulk copies
//! through mbarrier-guarded shared-memory stages to two consumer warpgroups that take turns on named barriers,
//! compiled for sm_90a): the one place that knows their grid and shared memory. Not used in training;
//! tests/kernels_wgmma.rs runs it on the GPU against a CPU reference, which validates on the hardware what the
//! kernel lab (dev/cuda/check_pipeline.cpp) checks under emulation (pipeline.cuh's mbarrier phases, bulk copies,
//! named barriers and dynamic shared memory).
//!
//! ```text
//! let pc = PipelineCheck::new(&stream)?;                    // errors on a GPU other than compute capability 9.0
//! unsafe { pc.ring(Stages::Four, x, sums, order, n_tiles, per_cta)? };
//! ```
//! `x` holds `n_tiles * TILE` f32; `sums[i]` = tile i's sum in the kernel's fixed order (thread t of a consumer sums
//! elements t, t + 128, ...; thread 0 adds the 128 partial sums in order); `order[i]` = i - first tile of its block
//! when the consumers' turns alternate.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use candle_core::{Error, Result};

use super::devptr::DevPtr;
use super::launch::{blocks, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/pipeline_check.ptx"));

/// PC_TILE in pipeline_check.cu: f32 elements per tile.
pub const TILE: usize = 1024;
/// PC_THREADS: the producer warpgroup and two consumer warpgroups.
const THREADS: u32 = 384;

/// The ring's depth (one compiled kernel each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stages {
    Two,
    Four,
}

impl Stages {
    pub const ALL: [Stages; 2] = [Stages::Two, Stages::Four];

    fn kernel(self) -> &'static str {
        match self {
            Stages::Two => "pipeline_ring_s2",
            Stages::Four => "pipeline_ring_s4",
        }
    }

    /// pc_smem_bytes(STAGES) in pipeline_check.cu.
    fn smem_bytes(self) -> u32 {
        let s = match self {
            Stages::Two => 2,
            Stages::Four => 4,
        };
        (s * TILE * 4 + 2 * s * 8 + 256 * 4 + 16) as u32
    }
}

pub struct PipelineCheck {
    module: Module,
}

impl PipelineCheck {
    /// Loads the kernels; an error on a GPU whose compute capability is not 9.0 (the PTX targets sm_90a).
    pub fn new(stream: &Arc<CudaStream>) -> Result<PipelineCheck> {
        let cc = stream.context().compute_capability().map_err(|e| Error::Msg(format!("pipeline_check: {e:?}")))?;
        if cc != (9, 0) {
            candle_core::bail!(
                "pipeline_check: the kernels need an sm_90 GPU (H100/H200), this one is sm_{}{}",
                cc.0,
                cc.1
            );
        }
        let names: Vec<&str> = Stages::ALL.iter().map(|s| s.kernel()).collect();
        Ok(PipelineCheck { module: Module::load(stream, "pipeline_check.cu", PTX, &names)? })
    }

    /// Streams `n_tiles` tiles of `x` through a `stages`-deep ring, `per_cta` consecutive tiles per block.
    ///
    /// # Safety
    /// `x` holds `n_tiles * TILE` f32 (16-byte aligned), `sums` `n_tiles` f32 and `order` `n_tiles` i32, on the
    /// stream's device.
    pub unsafe fn ring(
        &self,
        stages: Stages,
        x: DevPtr<f32>,
        sums: DevPtr<f32>,
        order: DevPtr<i32>,
        n_tiles: usize,
        per_cta: usize,
    ) -> Result<()> {
        if n_tiles == 0 || per_cta == 0 {
            candle_core::bail!("pipeline_check: n_tiles and per_cta must be positive");
        }
        if !x.raw().is_multiple_of(16) {
            candle_core::bail!("pipeline_check: x must be 16-byte aligned (bulk copies)");
        }
        let (n, per) = (int(n_tiles, "n_tiles")?, int(per_cta, "per_cta")?);
        let grid = blocks(n_tiles, per_cta)?;
        let cfg =
            LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: stages.smem_bytes() };
        let mut args = self.module.args(stages.kernel())?;
        args.arg(&x).arg(&sums).arg(&order).arg(&n).arg(&per);
        go(args, cfg)
    }
}
