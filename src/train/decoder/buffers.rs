//! The decoder engine's device memory: a handful of allocations sized once at start (`layout` says where everything
//! is inside them), their base addresses as typed device pointers (`DevPtr<T>` of each allocation's element type),
//! and the raw copies and fills the engine does on its one stream. Nothing is allocated or freed inside a step.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{result as cu, CudaSlice, CudaStream};
use candle_core::{Error, Result};
use half::bf16;

use super::layout::{ActLayout, ParamLayout, ALIGN};
use crate::cuda::devptr::DevPtr;

/// Offsets into `Buffers::scalars` (f32).
pub const NORM_PARTIAL: usize = 0; // adamw::NORM_BLOCKS values
pub const NORM_OUT: usize = 1024; // norm, clip coefficient
pub const LOSS_ACC: usize = 1024 + 128; // the step's (or evaluation's) mean loss
pub const SCALARS: usize = LOSS_ACC + 128;

/// One device allocation of `len` T and its base address.
pub struct Buf<T> {
    _slice: CudaSlice<T>,
    pub base: DevPtr<T>,
    pub len: usize,
}

impl<
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
    > Buf<T>
{
    fn zeros(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<Buf<T>> {
        let slice = stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            Error::Msg(format!(
                "cuda engine: allocating {what} ({:.2} GiB): {e:?}",
                (len * std::mem::size_of::<T>()) as f64 / (1u64 << 30) as f64
            ))
        })?;
        let base = {
            let (p, _sync) = DevPtr::of(&slice, stream);
            p
        };
        Ok(Buf { _slice: slice, base, len })
    }

    /// Address of element `off`.
    pub fn at(&self, off: usize) -> DevPtr<T> {
        debug_assert!(off <= self.len, "offset {off} past a buffer of {}", self.len);
        self.base.offset(off)
    }
}

/// Every allocation of the engine.
pub struct Buffers {
    pub stream: Arc<CudaStream>,
    /// The bf16 working copy of the weights, gradients, AdamW moments: `ParamLayout::total` each (the f32 master
    /// weights are the candle model's Vars: `engine::Masters`).
    pub params16: Buf<bf16>,
    pub grads: Buf<f32>,
    pub m: Buf<f32>,
    pub v: Buf<f32>,
    /// Activations and backward scratch (`ActLayout`).
    pub act32: Buf<f32>,
    pub act16: Buf<bf16>,
    /// One micro-batch's inputs and targets (N u32 each), and its id groups for the embedding backward: rows (N),
    /// starts (V + 1), ids (V) at `groups_start`, `groups_id`.
    pub tokens: Buf<u32>,
    pub targets: Buf<u32>,
    pub groups: Buf<u32>,
    pub groups_start: usize,
    pub groups_id: usize,
    /// Small f32 values (`NORM_PARTIAL`, `NORM_OUT`, `LOSS_ACC`).
    pub scalars: Buf<f32>,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Buffers {
    pub fn new(stream: &Arc<CudaStream>, p: &ParamLayout, a: &ActLayout, n: usize, v: usize) -> Result<Buffers> {
        let groups_start = align(n);
        let groups_id = groups_start + align(v + 1);
        Ok(Buffers {
            stream: stream.clone(),
            params16: Buf::zeros(stream, p.total, "bf16 weights")?,
            grads: Buf::zeros(stream, p.total, "gradients")?,
            m: Buf::zeros(stream, p.total, "AdamW m")?,
            v: Buf::zeros(stream, p.total, "AdamW v")?,
            act32: Buf::zeros(stream, a.f32_total, "f32 activations")?,
            act16: Buf::zeros(stream, a.bf16_total, "bf16 activations")?,
            tokens: Buf::zeros(stream, n, "tokens")?,
            targets: Buf::zeros(stream, n, "targets")?,
            groups: Buf::zeros(stream, groups_id + v, "embedding id groups")?,
            groups_start,
            groups_id,
            scalars: Buf::zeros(stream, SCALARS, "scalars")?,
        })
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.grads.len + self.m.len + self.v.len + self.act32.len + self.scalars.len)
            + 2 * (self.params16.len + self.act16.len)
            + 4 * (self.tokens.len + self.targets.len + self.groups.len)
    }

    fn cu_stream(&self) -> candle_core::cuda_backend::cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    /// Zero `n` elements at `ptr` (stream-ordered).
    ///
    /// # Safety
    /// The range is inside one of these buffers.
    pub unsafe fn zero<T>(&self, ptr: DevPtr<T>, n: usize) -> Result<()> {
        cu::memset_d8_async(ptr.raw(), 0, n * std::mem::size_of::<T>(), self.cu_stream()).map_err(Error::wrap)
    }

    /// Copy `n` elements device to device (stream-ordered).
    ///
    /// # Safety
    /// Both ranges are valid device memory of this context.
    pub unsafe fn copy<T>(&self, dst: DevPtr<T>, src: DevPtr<T>, n: usize) -> Result<()> {
        cu::memcpy_dtod_async(dst.raw(), src.raw(), n * std::mem::size_of::<T>(), self.cu_stream()).map_err(Error::wrap)
    }

    /// Copy host values to `dst` (stream-ordered; the host slice is consumed before this returns).
    ///
    /// # Safety
    /// `dst` has room for `src`.
    pub unsafe fn upload<T>(&self, dst: DevPtr<T>, src: &[T]) -> Result<()> {
        cu::memcpy_htod_async(dst.raw(), src, self.cu_stream()).map_err(Error::wrap)
    }

    /// Wait for the stream, then copy device values to the host: the step's one synchronisation.
    ///
    /// # Safety
    /// `src` holds `dst.len()` values.
    pub unsafe fn download<T>(&self, dst: &mut [T], src: DevPtr<T>) -> Result<()> {
        cu::memcpy_dtoh_async(dst, src.raw(), self.cu_stream()).map_err(Error::wrap)?;
        self.stream.synchronize().map_err(Error::wrap)
    }
}
