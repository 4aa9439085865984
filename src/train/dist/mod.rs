//! Data-parallel training: the process group a run trains in, and the one place values cross processes.
//!
//! `Communicator` is the small interface the trainer needs from a process group: all-reduce (sum or mean) of a
//! flat buffer, broadcast, barrier. Three implementations:
//! - `nccl` (feature `cuda`): NCCL over the GPUs, reducing flat device buffers in place (no host copies);
//! - `tcp`: a star reduce through rank 0 over the rendezvous sockets, so `tokenmill launch` also works (and is
//!   tested) on CPU;
//! - `local`: N ranks as N threads of one process, so every piece of the data-parallel logic is tested without GPUs
//!   or sockets.
//!
//! Around them: `env` (RANK / WORLD_SIZE / ... from our launcher, torchrun, Slurm or mpirun), `rendezvous` (rank 0
//! listens on MASTER_ADDR:MASTER_PORT, hands out the NCCL unique id, names the rank that did not arrive), `watchdog`
//! (a collective that does not finish in time ends the process with a message instead of hanging), `reducer`
//! (`DataParallel`, the trainer's `Reducer`: gradients averaged once per optimizer step on flat bucketed buffers) and
//! `setup` (picks the backend for a device).
//!
//! Every implementation reduces in rank order (((r0 + r1) + r2) + ...), so all ranks receive bit-identical results and
//! their parameters never drift apart.

use std::time::Duration;

use candle_core::{DType, Tensor};

mod collective;
pub mod env;
pub mod launch;
pub mod liveness;
pub mod local;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod reducer;
pub mod rendezvous;
pub mod setup;
pub mod tcp;
pub mod watchdog;
mod wire;

pub use env::{DistEnv, EnvSource};
pub use local::LocalGroup;
pub use reducer::DataParallel;
pub use setup::{init, DistTimeouts};
pub use tcp::TcpCommunicator;

/// How an all-reduce combines the ranks' buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Avg,
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {var}={value:?}: {reason}")]
    BadEnv { var: &'static str, value: String, reason: String },
    #[error("{source_name} set {present} but not {missing}; {hint}")]
    MissingEnv { source_name: &'static str, present: &'static str, missing: &'static str, hint: &'static str },
    #[error("rendezvous on {addr}: {msg}")]
    Rendezvous { addr: String, msg: String },
    #[error("rendezvous on {addr}: {} did not arrive within {after:?} (world size {world}); check that every rank was started and can reach {addr}", rank_list(missing))]
    NotArrived { addr: String, missing: Vec<usize>, world: usize, after: Duration },
    #[error(
        "rank {rank}: {op} timed out after {after:?} waiting for {} (it hung, died or is stuck elsewhere)",
        rank_list(waiting_for)
    )]
    Timeout { rank: usize, op: &'static str, waiting_for: Vec<usize>, after: Duration },
    #[error("rank {rank}: lost rank {peer} during {op}: {detail}")]
    PeerLost { rank: usize, peer: usize, op: &'static str, detail: String },
    #[error("rank {rank}: the job was aborted: {msg}")]
    Aborted { rank: usize, msg: String },
    #[error("rank {rank}: ranks disagree in {op}: {msg}")]
    Mismatch { rank: usize, op: &'static str, msg: String },
    #[error("rank {rank}: the process group already failed ({first}); no further collectives are possible")]
    Broken { rank: usize, first: String },
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// "rank 2" / "ranks 1, 3".
pub(crate) fn rank_list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    match ranks.len() {
        1 => format!("rank {}", names[0]),
        _ => format!("ranks {}", names.join(", ")),
    }
}

/// A process group. Collectives block until every rank has joined them (or fail, naming the missing rank, after the
/// group's timeout); every rank must call the same collectives in the same order with buffers of the same length.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// "nccl", "tcp", "local": for logs.
    fn backend(&self) -> &'static str;
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), DistError>;
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<(), DistError>;
    /// Replace `buf` on every rank by root's.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<(), DistError>;
    fn barrier(&self) -> Result<(), DistError>;

    /// All-reduce a tensor of any shape, returning the result as f32 on the tensor's device. The default goes
    /// through host memory; NCCL overrides it to reduce the device buffer in place.
    fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.all_reduce_f32(&mut host, op)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?)
    }

    /// Root's value of `t` (f32, on `t`'s device) on every rank. Default through host memory.
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor, DistError> {
        let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.broadcast_f32(&mut host, root)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?)
    }

    /// Leave the group cleanly: a final barrier (so no rank exits while another still needs it), after which peers
    /// treat this rank's disconnect as normal. A rank that exits without `shutdown` counts as crashed.
    fn shutdown(&self) -> Result<(), DistError> {
        self.barrier()
    }
}

/// Sealed numeric types the byte-level collectives (tcp, local) move: little-endian on the wire.
pub(crate) trait WireElem: Copy + Send + Sync + 'static {
    const SIZE: usize;
    const ZERO: Self;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(b: &[u8]) -> Self;
    fn add(self, o: Self) -> Self;
    fn div_usize(self, n: usize) -> Self;
}

macro_rules! elem {
    ($t:ty) => {
        impl WireElem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const ZERO: Self = 0.0;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk of SIZE bytes"))
            }
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn div_usize(self, n: usize) -> Self {
                self / n as $t
            }
        }
    };
}
elem!(f32);
elem!(f64);

pub(crate) fn to_bytes<T: WireElem>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    v.iter().for_each(|x| x.write_le(&mut out));
    out
}

/// Copy little-endian `bytes` into `dst`; the caller has checked the length.
pub(crate) fn from_bytes<T: WireElem>(bytes: &[u8], dst: &mut [T]) {
    debug_assert_eq!(bytes.len(), dst.len() * T::SIZE);
    for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *d = T::read_le(c);
    }
}

/// `acc += bytes`, elementwise (the same order on every backend: the caller adds rank 1, then 2, ...).
pub(crate) fn add_bytes<T: WireElem>(acc: &mut [T], bytes: &[u8]) {
    for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *a = a.add(T::read_le(c));
    }
}

pub(crate) fn finish_op<T: WireElem>(acc: &mut [T], op: ReduceOp, world: usize) {
    if op == ReduceOp::Avg && world > 1 {
        acc.iter_mut().for_each(|a| *a = a.div_usize(world));
    }
}

/// Default timeouts when none are configured: long enough for rank 0 to write a 124M checkpoint or sample while the
/// others wait in the next collective (PyTorch's NCCL default is 10 minutes too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_helpers_round_trip_and_reduce_in_order() {
        let a = [1.5f32, -2.0, 3.25];
        let mut back = [0f32; 3];
        from_bytes(&to_bytes(&a), &mut back);
        assert_eq!(back, a);
        let mut acc = vec![1.0f64, 2.0];
        add_bytes(&mut acc, &to_bytes(&[3.0f64, 4.0]));
        finish_op(&mut acc, ReduceOp::Avg, 2);
        assert_eq!(acc, vec![2.0, 3.0]);
        assert_eq!(rank_list(&[2]), "rank 2");
        assert_eq!(rank_list(&[1, 3]), "ranks 1, 3");
    }
}
