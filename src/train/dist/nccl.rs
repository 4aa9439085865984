//! The GPU backend: NCCL (through cudarc) over one GPU per rank. Tensors are reduced device to device, with no host
//! copies: the input bucket is read where candle wrote it and the result lands in a fresh device buffer that becomes
//! the output tensor (a `CustomOp1`, so candle's storage is never mutated behind its back).
//!
//! NCCL runs on its own stream. Before a collective the compute stream is synchronised (the gradients must be
//! complete anyway, and candle's backward returns all of them at once, so there is no backward to overlap with); after
//! it the NCCL stream is synchronised inside a watchdog guard. That last point is what turns a dead or hung peer into
//! "rank 3: NCCL all_reduce ... has not completed after 600s" and an exit instead of a silent hang: NCCL calls only
//! enqueue work, and the wait happens at the synchronisation. A peer that crashes is noticed sooner by the liveness
//! monitor on the rendezvous sockets.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::driver::{CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp as NcclOp};

use super::liveness::Liveness;
use super::rendezvous::Rendezvous;
use super::watchdog::{exit_action, Watchdog};
use super::{Communicator, DistError, ReduceOp};

/// The size of `ncclUniqueId`.
pub const NCCL_ID_BYTES: usize = 128;

/// A fresh NCCL unique id (rank 0 creates it; the rendezvous hands it to the others).
pub fn new_unique_id() -> Result<Vec<u8>, DistError> {
    let id = Id::new().map_err(|e| DistError::Nccl(format!("ncclGetUniqueId: {:?}", e.0)))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// NCCL's version as "2.28.9".
pub fn version() -> Result<String, DistError> {
    let v = cudarc::nccl::result::get_nccl_version().map_err(|e| DistError::Nccl(format!("{:?}", e.0)))?;
    Ok(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
}

/// `Comm` holds a raw `ncclComm_t`. NCCL allows a communicator to be used from any thread as long as calls are not
/// concurrent; the `Mutex` around it provides exactly that.
struct SendComm(Comm);
unsafe impl Send for SendComm {}

pub struct NcclCommunicator {
    rank: usize,
    world: usize,
    comm: Mutex<SendComm>,
    /// The stream NCCL runs on (created for it).
    stream: Arc<CudaStream>,
    watchdog: Watchdog,
    liveness: Liveness,
}

fn nccl_err(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {:?}", e.0))
}

fn cuda_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: CUDA: {e}"))
}

impl NcclCommunicator {
    /// Create this rank's NCCL communicator on `device` from a joined rendezvous (whose group id is the NCCL unique
    /// id). A collective (initialisation included) that does not finish within `timeout` ends the process.
    pub fn new(device: &Device, rv: Rendezvous, timeout: Duration) -> Result<NcclCommunicator, DistError> {
        let (rank, world) = (rv.rank, rv.world);
        let cuda = device.as_cuda_device()?.clone();
        let raw: [std::ffi::c_char; NCCL_ID_BYTES] =
            rv.group_id.iter().map(|&b| b as std::ffi::c_char).collect::<Vec<_>>().try_into().map_err(
                |v: Vec<_>| rv.err(format!("rank 0 handed out a {}-byte id, NCCL needs {NCCL_ID_BYTES}", v.len())),
            )?;
        let ctx = cuda.cuda_stream().context().clone();
        ctx.bind_to_thread().map_err(cuda_err("binding the CUDA context"))?;
        let stream = ctx.new_stream().map_err(cuda_err("creating the NCCL stream"))?;
        let watchdog = Watchdog::new(timeout, exit_action());
        let liveness = Liveness::start(rv, exit_action())?;
        let comm = {
            let _g = watchdog.guard(format!("rank {rank}: NCCL initialisation ({world} ranks)"));
            Comm::from_rank(stream.clone(), rank, world, Id::uninit(raw)).map_err(nccl_err("ncclCommInitRank"))?
        };
        Ok(NcclCommunicator { rank, world, comm: Mutex::new(SendComm(comm)), stream, watchdog, liveness })
    }

    fn lock(&self) -> MutexGuard<'_, SendComm> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run one collective: `producer` (the stream that wrote the input, if any) drained, NCCL call, NCCL stream
    /// drained, all under the watchdog.
    ///
    /// The producer is the input tensor's own device stream, not `self.device`'s: every `Device::new_cuda(i)` is a
    /// separate candle device with its own stream, and the trainer's device is not the one this communicator was
    /// created with. Draining the wrong stream let NCCL read a buffer whose last writes (the loss appended at the
    /// end of the first bucket) had not landed yet (found on the H100: the logged loss read 0).
    fn run<R>(
        &self,
        what: String,
        producer: Option<&CudaDevice>,
        f: impl FnOnce(&Comm) -> Result<R, DistError>,
    ) -> Result<R, DistError> {
        let comm = self.lock();
        let _g = self.watchdog.guard(format!("rank {}: NCCL {what}", self.rank));
        if let Some(dev) = producer {
            dev.cuda_stream().synchronize().map_err(cuda_err("compute stream"))?;
        }
        let r = f(&comm.0)?;
        self.stream.synchronize().map_err(cuda_err(&what))?;
        Ok(r)
    }

    /// Sum `buf` over the ranks (through a device buffer on the NCCL stream).
    fn host_all_reduce<T: NcclType + DeviceRepr + ValidAsZeroBits>(&self, buf: &mut [T]) -> Result<(), DistError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.run(format!("all_reduce of {} host values", buf.len()), None, |comm| {
            let mut dev = self.stream.clone_htod(&*buf).map_err(cuda_err("copy to device"))?;
            comm.all_reduce_in_place(&mut dev, &NcclOp::Sum).map_err(nccl_err("ncclAllReduce"))?;
            self.stream.memcpy_dtoh(&dev, buf).map_err(cuda_err("copy to host"))?;
            Ok(())
        })
    }
}

// Every all-reduce here is a NCCL sum; averages divide afterwards. ncclAvg is not used: on the H100 (NCCL
// 2.28.9, one rank) an ncclAvg all-reduce of 3,323,649 f32 (the tiny model's gradient bucket, the loss in its
// last slot) left the tail of the result unwritten (0 from a zeroed buffer, stale values from an uninitialised
// one; tests/dist_nccl.rs) while 1,000,001 elements came back whole, and the trainer logged a loss of 0.

/// The out-of-place collectives as candle ops on contiguous f32 CUDA tensors.
enum DeviceOp<'a> {
    /// Sum over the ranks.
    AllReduce(&'a NcclCommunicator),
    Broadcast(&'a NcclCommunicator, usize),
}

impl CustomOp1 for DeviceOp<'_> {
    fn name(&self) -> &'static str {
        match self {
            DeviceOp::AllReduce(..) => "nccl-all-reduce",
            DeviceOp::Broadcast(..) => "nccl-broadcast",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: NCCL reduces CUDA tensors only (CPU ranks use the tcp backend)", self.name())
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the tensor must be contiguous", self.name())
        };
        if storage.dtype() != DType::F32 {
            candle_core::bail!("{}: expected f32, got {:?}", self.name(), storage.dtype());
        }
        let (comm, what) = match self {
            DeviceOp::AllReduce(c) => (*c, format!("all_reduce of {} f32", end - start)),
            DeviceOp::Broadcast(c, root) => (*c, format!("broadcast of {} f32 from rank {root}", end - start)),
        };
        // The result is allocated by the compute device, on its stream, like every other candle tensor (candle
        // copies a tensor to the host on the stream that owns its buffer), and before `run` drains that stream, so
        // the allocation is complete before NCCL writes it.
        // SAFETY: NCCL writes all n elements before anything reads them (`run` waits for the NCCL stream).
        let mut out = unsafe { storage.device.alloc::<f32>(end - start)? };
        comm.run(what, Some(&storage.device), |nc| {
            let src = storage.as_cuda_slice::<f32>().map_err(DistError::Candle)?.slice(start..end);
            match self {
                DeviceOp::AllReduce(_) => {
                    nc.all_reduce(&src, &mut out, &NcclOp::Sum).map_err(nccl_err("ncclAllReduce"))?;
                }
                DeviceOp::Broadcast(_, root) => {
                    nc.broadcast(Some(&src), &mut out, *root as i32).map_err(nccl_err("ncclBroadcast"))?;
                }
            }
            Ok(())
        })
        .map_err(candle_core::Error::wrap)?;
        Ok((CudaStorage::wrap_cuda_slice(out, storage.device.clone()), layout.shape().clone()))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), DistError> {
        self.host_all_reduce(buf)?;
        if op == ReduceOp::Avg && self.world > 1 {
            buf.iter_mut().for_each(|x| *x /= self.world as f32);
        }
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<(), DistError> {
        self.host_all_reduce(buf)?;
        if op == ReduceOp::Avg && self.world > 1 {
            buf.iter_mut().for_each(|x| *x /= self.world as f64);
        }
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.run(format!("broadcast of {} host values from rank {root}", buf.len()), None, |comm| {
            let mut dev = self.stream.clone_htod(&*buf).map_err(cuda_err("copy to device"))?;
            comm.broadcast_in_place(&mut dev, root as i32).map_err(nccl_err("ncclBroadcast"))?;
            self.stream.memcpy_dtoh(&dev, buf).map_err(cuda_err("copy to host"))?;
            Ok(())
        })
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.host_all_reduce(&mut [0f32])
    }
    fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let sum = t.apply_op1_no_bwd(&DeviceOp::AllReduce(self))?;
        Ok(match op {
            ReduceOp::Avg if self.world > 1 => (sum / self.world as f64)?,
            _ => sum,
        })
    }
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor, DistError> {
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        Ok(t.apply_op1_no_bwd(&DeviceOp::Broadcast(self, root))?)
    }
    fn shutdown(&self) -> Result<(), DistError> {
        self.barrier()?;
        self.liveness.leave();
        Ok(())
    }
}
