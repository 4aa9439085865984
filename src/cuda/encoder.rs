//! The decoder engine's embeddings (encoder.cu): `x = wte[idx] (+ wpe[t])` into the f32 residual stream, and the
//! deterministic backward (`dwte +=` grouped sums over the host-built `IdGroups`, `dwpe +=` batch sums). Rotary
//! models pass no position table.
//! CPU checks: dev/cuda/check_engine.cpp.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::Result;

use super::devptr::DevPtr;
use super::launch::{blocks, cfg, go, int, Module};
pub use crate::model::kernels::embedding::IdGroups;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/encoder.ptx"));

/// A batch's `IdGroups` on the device: `rows` (N u32), `start`, `id`, and how many groups there are.
#[derive(Clone, Copy, Debug)]
pub struct DeviceIdGroups {
    pub rows: DevPtr<u32>,
    pub start: DevPtr<u32>,
    pub id: DevPtr<u32>,
    pub n_groups: usize,
}

pub struct Encoder {
    module: Module,
}

impl Encoder {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Encoder> {
        let names = ["encoder_fwd", "encoder_fwd_tokens", "encoder_bwd_wte", "encoder_bwd_wpe"];
        Ok(Encoder { module: Module::load(stream, "encoder.cu", PTX, &names)? })
    }

    /// `x (B*T, C) = wte[idx] + wpe[t]`, or `wte[idx]` without a position table.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes; ids < V; C a multiple of 4, rows 16-byte aligned.
    pub unsafe fn forward(
        &self,
        idx: DevPtr<u32>,
        wte: DevPtr<f32>,
        wpe: Option<DevPtr<f32>>,
        x: DevPtr<f32>,
        (b, t, c): (usize, usize, usize),
    ) -> Result<()> {
        let n = b * t;
        let (n_i, t_i, c_i) = (int(n, "tokens")?, int(t, "T")?, int(c, "C")?);
        let grid = cfg((blocks(n * c / 4, 256)?, 1), (256, 1));
        let Some(wpe) = wpe else {
            let mut a = self.module.args("encoder_fwd_tokens")?;
            a.arg(&idx).arg(&wte).arg(&x).arg(&n_i).arg(&c_i);
            return go(a, grid);
        };
        let mut a = self.module.args("encoder_fwd")?;
        a.arg(&idx).arg(&wte).arg(&wpe).arg(&x).arg(&n_i).arg(&t_i).arg(&c_i);
        go(a, grid)
    }

    /// `dwte[id] += grouped sums of dx`, `dwpe[t] += sum_b dx[b, t]` (with a position table). `groups` on the
    /// device as `IdGroups` lays them out.
    ///
    /// # Safety
    /// Pointers address device buffers of the stated sizes, the groups those of this batch's ids.
    pub unsafe fn backward(
        &self,
        groups: DeviceIdGroups,
        dx: DevPtr<f32>,
        dwte: DevPtr<f32>,
        dwpe: Option<DevPtr<f32>>,
        (b, t, c): (usize, usize, usize),
    ) -> Result<()> {
        let DeviceIdGroups { rows, start, id, n_groups } = groups;
        let (b_i, t_i, c_i) = (int(b, "B")?, int(t, "T")?, int(c, "C")?);
        if n_groups > 0 {
            let g = u32::try_from(n_groups).map_err(|_| candle_core::Error::Msg("too many id groups".into()))?;
            let mut a = self.module.args("encoder_bwd_wte")?;
            a.arg(&rows).arg(&start).arg(&id).arg(&dx).arg(&dwte).arg(&c_i);
            go(a, cfg((g, blocks(c, 256)?), (256, 1)))?;
        }
        let Some(dwpe) = dwpe else { return Ok(()) };
        let mut a = self.module.args("encoder_bwd_wpe")?;
        a.arg(&dx).arg(&dwpe).arg(&b_i).arg(&t_i).arg(&c_i);
        go(a, cfg((blocks(t * c, 256)?, 1), (256, 1)))
    }
}
