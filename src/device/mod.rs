//! Device setup, in one place: the device a `--device` flag or `run.device` names, and the process-wide settings
//! that come with computing on it. Opening a device (`open`) is the one call with side effects on the device
//! (a CUDA device's memory pool becomes a caching allocator, `cuda_pool`); `set_tf32` is the one process-wide
//! cuBLAS switch. Config parsing and the CLI only call these.

pub mod cuda_pool;

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device `{0}` (expected cpu, cuda, cuda:N or auto)")]
    Unknown(String),
    #[error("device `{spec}`: {message}")]
    Open { spec: String, message: String },
}

/// The device `spec` names: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (CUDA 0 when available, else the CPU).
/// A CUDA device comes with its memory pool set to keep what it frees (`cuda_pool::retain_freed_memory`).
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    let cuda = |ordinal: usize| {
        let failed = |message: String| DeviceError::Open { spec: spec.to_string(), message };
        let device = Device::new_cuda(ordinal).map_err(|e| failed(e.to_string()))?;
        cuda_pool::retain_freed_memory(&device).map_err(failed)?;
        Ok(device)
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" if candle_core::utils::cuda_is_available() => cuda(0),
        "auto" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => Err(DeviceError::Unknown(spec.to_string())),
        },
    }
}

/// Whether fp32 matmuls on CUDA may use TF32 (`run.tf32`). A process-wide cuBLAS setting in candle; without CUDA
/// support compiled in it does nothing.
pub fn set_tf32(enabled: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(enabled);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_grammar_are_refused_with_the_accepted_ones() {
        for bad in ["gpu", "cuda:x", "cuda:", "CPU", ""] {
            let err = open(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")) && err.contains("cpu, cuda, cuda:N or auto"), "{err}");
        }
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
    }
}
