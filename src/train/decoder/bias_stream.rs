//! Bias gradients on a second stream. `db += colsum(dout)` (`bias_grad.cu`) reads each layer's output gradient once
//! more: 3.5 ms of bandwidth-bound work per GPT-2 124M micro-step (H200, docs/PERF.md), run between products that
//! are bound by arithmetic. Here it runs on a side stream, queued after the kernel that wrote `dout`, while the main
//! stream goes on with the weight- and input-gradient products; the main stream waits for it only before it
//! overwrites the buffer the side stream reads (`dres16` or `dbig`), and for all of it at the end of the backward.
//! The kernels and their order on the side stream are the same as on one stream, so every bias gradient has the
//! same bits (the scratch of the partial sums is the side stream's alone: nothing on the main stream uses it while
//! this is on, `[engine] bias_grad_stream`).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};
use candle_core::{Error, Result};
use half::bf16;

use crate::cuda::bias_grad::BiasGrad;
use crate::cuda::devptr::DevPtr;

/// The two backward buffers a bias gradient reads: the residual gradient's bf16 copy (`act.dres16`: the
/// projections' output gradient) and `act.dbig` (the MLP input's and the qkv product's output gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    Dres16 = 0,
    Dbig = 1,
}

pub(super) struct BiasStream {
    main: Arc<CudaStream>,
    side: Arc<CudaStream>,
    /// bias_grad.cu's kernels, launched on `side`.
    kernels: BiasGrad,
    /// Recorded on `main` before each launch: the side stream starts after what wrote `dout`.
    ready: CudaEvent,
    /// Recorded on `side` after the last launch reading each buffer (`Read` as index), and whether one is pending.
    read_done: [CudaEvent; 2],
    pending: [bool; 2],
}

impl BiasStream {
    pub fn new(main: &Arc<CudaStream>) -> Result<BiasStream> {
        let side = main.fork().map_err(Error::wrap)?;
        let ctx = main.context();
        let event = || ctx.new_event(None).map_err(Error::wrap);
        Ok(BiasStream {
            main: main.clone(),
            kernels: BiasGrad::new(&side)?,
            side,
            ready: event()?,
            read_done: [event()?, event()?],
            pending: [false; 2],
        })
    }

    /// `db += colsum(dout)` on the side stream, after everything queued on the main stream so far; `dout` lies in
    /// `read`.
    ///
    /// # Safety
    /// As `BiasGrad::accumulate`; `scratch` is used by nothing else until `join`.
    pub unsafe fn accumulate(
        &mut self,
        read: Read,
        dout: DevPtr<bf16>,
        db: DevPtr<f32>,
        scratch: DevPtr<f32>,
        (n, oc): (usize, usize),
    ) -> Result<()> {
        self.ready.record(&self.main).map_err(Error::wrap)?;
        self.side.wait(&self.ready).map_err(Error::wrap)?;
        // SAFETY: the caller's contract; the side stream waits for dout's writer above.
        unsafe { self.kernels.accumulate(dout, db, scratch, n, oc)? };
        self.read_done[read as usize].record(&self.side).map_err(Error::wrap)?;
        self.pending[read as usize] = true;
        Ok(())
    }

    /// Make the main stream wait until the side stream has read `read`: call before the main stream writes it.
    pub fn before_write(&mut self, read: Read) -> Result<()> {
        if std::mem::take(&mut self.pending[read as usize]) {
            self.main.wait(&self.read_done[read as usize]).map_err(Error::wrap)?;
        }
        Ok(())
    }

    /// Make the main stream wait for all of the side stream's work (the end of the backward: the optimizer reads
    /// the bias gradients, and the next forward writes `dres16`).
    pub fn join(&mut self) -> Result<()> {
        self.before_write(Read::Dres16)?;
        self.before_write(Read::Dbig)
    }
}
