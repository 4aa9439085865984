//! `tokenmill bench`: the measuring instrument for every speed claim. It times the pieces of a training step as
//! `train` runs them (the trainer's model builder, `step::micro_step`, `GradAccumulator`, `clip_grad_norm`,
//! `AdamW::step`) on synthetic tokens, for any model preset or config file, batch size, context length and dtype,
//! and reports per case mean / median / std / min / max / total time, tokens/s, achieved TFLOP/s, MFU against a
//! peak measured on the same device, and peak memory.
//!
//! Files: `timer` (device-synchronised regions), `stats`, `flops` (FLOPs per token, stated accounting), `peak`
//! (the measured matmul peak), `memory` (peak device memory / RSS), `runner` (the cases and the grid), `report`
//! (table, JSON, CSV), `compare` (tokenmill against the PyTorch reference in reference/), `attention` (the
//! flash-attention kernels alone, `tokenmill bench attention`), `gemm_tune` (cuBLASLt's algorithm per matmul shape,
//! timed once into a table the engine loads).

pub mod attention;
pub mod compare;
pub mod flops;
pub mod gemm_tune;
pub mod memory;
pub mod peak;
pub mod report;
pub mod runner;
pub mod stats;
pub mod timer;

use candle_core::{DType, Device};
use serde::Serialize;

pub use runner::{run_plan, CaseResult, CaseSpec, Plan};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] crate::train::config::ConfigError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Optim(#[from] crate::train::optim::OptimError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "unknown computation `{0}` (expected forward, backward, forward_backward, optimizer_step, train_step or all)"
    )]
    UnknownComputation(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{case}: the loss is {loss}; a benchmark on diverging numbers measures nothing")]
    NonFinite { case: String, loss: f32 },
    #[error("reference `{command}`: {message}")]
    Reference { command: String, message: String },
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    Memory(#[from] crate::train::memory::MemoryError),
}

/// What one case times. Each is a piece of `train`'s optimizer step (see `runner` for exactly which calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Computation {
    /// The training forward pass of one micro-batch: logits and the mean cross-entropy (graph kept, as training does).
    Forward,
    /// `loss.backward()` of one micro-batch and taking the parameters' gradients (forward run untimed before).
    Backward,
    /// `micro_step`: forward + backward of one micro-batch.
    ForwardBackward,
    /// Gradient clipping + `AdamW::step` on one set of gradients.
    OptimizerStep,
    /// A whole optimizer step as `Trainer::train_step` runs it: host batches uploaded, grad-accumulated micro-steps,
    /// reduction, clipping, the loss fetched to the host, AdamW.
    TrainStep,
}

impl Computation {
    pub const ALL: [Computation; 5] = [
        Computation::Forward,
        Computation::Backward,
        Computation::ForwardBackward,
        Computation::OptimizerStep,
        Computation::TrainStep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Computation::Forward => "forward",
            Computation::Backward => "backward",
            Computation::ForwardBackward => "forward_backward",
            Computation::OptimizerStep => "optimizer_step",
            Computation::TrainStep => "train_step",
        }
    }

    /// A name as `--what` takes it (`-` and `_` interchangeable, `fwd`/`bwd`/`fwd_bwd`/`opt`/`step` short forms);
    /// `all` is handled by the caller.
    pub fn parse(s: &str) -> Result<Computation, BenchError> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match norm.as_str() {
            "forward" | "fwd" => Computation::Forward,
            "backward" | "bwd" => Computation::Backward,
            "forward_backward" | "fwd_bwd" | "fwdbwd" => Computation::ForwardBackward,
            "optimizer_step" | "optimizer" | "opt" => Computation::OptimizerStep,
            "train_step" | "step" | "train" => Computation::TrainStep,
            _ => return Err(BenchError::UnknownComputation(s.to_string())),
        })
    }

    /// Parse a list of names; `all` expands to every computation. Duplicates are dropped, order kept.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<Computation>, BenchError> {
        let mut out = Vec::new();
        for item in items {
            let item = item.as_ref();
            let parsed = if item.trim().eq_ignore_ascii_case("all") {
                Computation::ALL.to_vec()
            } else {
                vec![Computation::parse(item)?]
            };
            for c in parsed {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }
}

/// `fp32` / `bf16` / ... as the bench prints dtypes.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "fp32",
        DType::BF16 => "bf16",
        DType::F16 => "fp16",
        DType::F64 => "fp64",
        _ => "other",
    }
}

/// The machine a report was measured on, so every figure can be labelled with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostInfo {
    /// `cpu` or `cuda:N <GPU name>`.
    pub device: String,
    /// CPU model name (/proc/cpuinfo), if readable.
    pub cpu: Option<String>,
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// Threads candle's CPU kernels use.
    pub candle_threads: usize,
    /// 1-minute load average when the bench started and when it finished: other work competing for the cores.
    pub load_start: Option<f64>,
    pub load_end: Option<f64>,
}

impl HostInfo {
    pub fn capture(device: &Device) -> HostInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        HostInfo {
            device: describe_device(device),
            cpu,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            candle_threads: candle_core::utils::get_num_threads(),
            load_start: load_average(),
            load_end: None,
        }
    }
}

/// The 1-minute load average (/proc/loadavg).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// `cpu`, or `cuda:N (<name>)` when the name can be read.
pub fn describe_device(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let stream = d.cuda_stream();
            let ctx = stream.context();
            match ctx.name() {
                Ok(name) => format!("cuda:{} ({name})", ctx.ordinal()),
                Err(_) => format!("cuda:{}", ctx.ordinal()),
            }
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computation_names_round_trip_and_all_expands() {
        for c in Computation::ALL {
            assert_eq!(Computation::parse(c.name()).unwrap(), c);
        }
        assert_eq!(Computation::parse("fwd-bwd").unwrap(), Computation::ForwardBackward);
        assert_eq!(Computation::parse_list(&["train_step", "all"]).unwrap()[0], Computation::TrainStep);
        assert_eq!(Computation::parse_list(&["all", "forward"]).unwrap(), Computation::ALL.to_vec());
        let err = Computation::parse("fowrard").unwrap_err().to_string();
        assert!(err.contains("fowrard") && err.contains("train_step"), "{err}");
    }
}
