//! Joining a job: the rendezvous, then the backend that fits the device: NCCL for CUDA tensors, the tcp star for
//! CPU ranks (separate processes cannot share the in-process group).

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use super::rendezvous::Rendezvous;
use super::tcp::TcpCommunicator;
use super::{Communicator, DistEnv, DistError, DEFAULT_TIMEOUT};

/// Seconds a rank waits for the others (at the rendezvous and in any collective) before failing. `tokenmill launch
/// --timeout` sets it for its children.
pub const TIMEOUT_VAR: &str = "TOKENMILL_DIST_TIMEOUT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistTimeouts {
    /// For every rank to arrive at the rendezvous.
    pub rendezvous: Duration,
    /// For one collective to complete.
    pub collective: Duration,
}

impl Default for DistTimeouts {
    fn default() -> Self {
        DistTimeouts { rendezvous: DEFAULT_TIMEOUT, collective: DEFAULT_TIMEOUT }
    }
}

impl DistTimeouts {
    /// Both from [`TIMEOUT_VAR`] when set, else the defaults.
    pub fn from_env() -> Result<DistTimeouts, DistError> {
        match std::env::var(TIMEOUT_VAR) {
            Err(_) => Ok(DistTimeouts::default()),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => {
                    let d = Duration::from_secs_f64(s);
                    Ok(DistTimeouts { rendezvous: d, collective: d })
                }
                _ => Err(DistError::BadEnv {
                    var: TIMEOUT_VAR,
                    value: v,
                    reason: "expected a positive number of seconds".into(),
                }),
            },
        }
    }
}

/// Join the job `env` describes with the backend for `device`.
pub fn init(env: &DistEnv, device: &Device, t: DistTimeouts) -> Result<Arc<dyn Communicator>, DistError> {
    match device {
        Device::Cpu => {
            let rv = Rendezvous::join(&env.master(), env.rank, env.world, &[], t.rendezvous)?;
            Ok(Arc::new(TcpCommunicator::new(rv, t.collective)?))
        }
        Device::Cuda(_) => init_nccl(env, device, t),
        other => Err(DistError::Nccl(format!("data-parallel training supports CPU and CUDA devices, not {other:?}"))),
    }
}

#[cfg(feature = "cuda")]
fn init_nccl(env: &DistEnv, device: &Device, t: DistTimeouts) -> Result<Arc<dyn Communicator>, DistError> {
    let id = if env.rank == 0 { super::nccl::new_unique_id()? } else { Vec::new() };
    let rv = Rendezvous::join(&env.master(), env.rank, env.world, &id, t.rendezvous)?;
    Ok(Arc::new(super::nccl::NcclCommunicator::new(device, rv, t.collective)?))
}

#[cfg(not(feature = "cuda"))]
fn init_nccl(_: &DistEnv, _: &Device, _: DistTimeouts) -> Result<Arc<dyn Communicator>, DistError> {
    Err(DistError::Nccl("this tokenmill was built without the `cuda` feature (scripts/build-cuda.sh)".into()))
}

/// One line for the log: who this rank is and how it talks to the others.
pub fn describe(env: &DistEnv, comm: &dyn Communicator) -> String {
    #[cfg(feature = "cuda")]
    let version = if comm.backend() == "nccl" {
        super::nccl::version().map(|v| format!(" {v}")).unwrap_or_default()
    } else {
        String::new()
    };
    #[cfg(not(feature = "cuda"))]
    let version = String::new();
    format!(
        "data parallel: rank {} of {} (local rank {}), backend {}{version}, rendezvous {}",
        comm.rank(),
        comm.world(),
        env.local_rank,
        comm.backend(),
        env.master()
    )
}
