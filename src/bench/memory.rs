//! Peak memory of one case: the high-water mark from just before its model is built to the end of its timed
//! iterations, so it covers weights, AdamW state, gradients and activations (what `train` needs at that size).
//!
//! - CUDA: candle allocates through cudarc with `cuMemAllocAsync` from the device's current memory pool, whose
//!   `CU_MEMPOOL_ATTR_USED_MEM_HIGH` counts bytes handed out to tensors (PyTorch's `max_memory_allocated`, not its
//!   reserved memory): reset to zero at the start, read at the end. Without memory-pool support there is no
//!   high-water mark to read, and the figure is left out rather than guessed from a snapshot.
//! - CPU (Linux): the process's peak resident set (`VmHWM` in /proc/self/status), reset to the current RSS at the
//!   start by writing 5 to /proc/self/clear_refs. It includes the binary and the allocator's retained pages, so it
//!   is an upper bound on what the case needs. If the reset is refused, the lifetime peak is reported and labelled so.

use candle_core::Device;
use serde::Serialize;

/// Where a peak-memory figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// CUDA memory pool high-water mark of bytes in use, since the case started.
    CudaPoolHighWater,
    /// Peak RSS of the process since the case started.
    ProcessPeakRss,
    /// Peak RSS of the process since it started (the per-case reset was refused).
    ProcessLifetimePeakRss,
    /// Nothing to read on this platform / device.
    Unavailable,
}

impl MemorySource {
    pub fn label(self) -> &'static str {
        match self {
            MemorySource::CudaPoolHighWater => "CUDA pool high-water mark (bytes in use)",
            MemorySource::ProcessPeakRss => "process peak RSS during the case",
            MemorySource::ProcessLifetimePeakRss => "process lifetime peak RSS",
            MemorySource::Unavailable => "unavailable",
        }
    }
}

/// A started measurement: create it before the case allocates anything, read it at the end.
pub struct MemoryProbe {
    device: Device,
    source: MemorySource,
    /// Bytes in use when the probe started (the pool's high-water mark only rises on allocation).
    start_bytes: u64,
}

impl MemoryProbe {
    /// Reset the device's high-water mark.
    pub fn start(device: &Device) -> MemoryProbe {
        let (source, start_bytes) = if device.is_cuda() { cuda::reset(device) } else { cpu::reset() };
        MemoryProbe { device: device.clone(), source, start_bytes }
    }

    pub fn source(&self) -> MemorySource {
        self.source
    }

    /// Peak bytes since `start` (None when unavailable).
    pub fn peak_bytes(&self) -> Option<u64> {
        match self.source {
            MemorySource::CudaPoolHighWater => cuda::peak(&self.device).map(|p| p.max(self.start_bytes)),
            MemorySource::ProcessPeakRss | MemorySource::ProcessLifetimePeakRss => cpu::peak_rss(),
            MemorySource::Unavailable => None,
        }
    }
}

mod cpu {
    use super::MemorySource;

    /// `VmHWM` from /proc/self/status, in bytes.
    pub fn peak_rss() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }

    pub fn reset() -> (MemorySource, u64) {
        let Some(now) = peak_rss() else { return (MemorySource::Unavailable, 0) };
        // "5" resets the peak RSS to the current RSS (Linux >= 4.0, proc(5)).
        match std::fs::write("/proc/self/clear_refs", b"5") {
            Ok(()) => (MemorySource::ProcessPeakRss, 0),
            Err(_) => (MemorySource::ProcessLifetimePeakRss, now),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::MemorySource;
    use candle_core::Device;
    use cudarc::driver::{result, sys};

    fn pool(device: &Device) -> Option<sys::CUmemoryPool> {
        crate::device::cuda_pool::pool_of(device).ok().flatten()
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
        let mut value: u64 = 0;
        // SAFETY: the USED_MEM_* attributes are cuuint64_t values; `value` outlives the call.
        unsafe { result::mem_pool::get_attribute(pool, attr, &mut value as *mut u64 as *mut core::ffi::c_void) }
            .ok()?;
        Some(value)
    }

    pub fn reset(device: &Device) -> (MemorySource, u64) {
        let Some(pool) = pool(device) else { return (MemorySource::Unavailable, 0) };
        let Some(current) = attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT) else {
            return (MemorySource::Unavailable, 0);
        };
        let mut zero: u64 = 0;
        // SAFETY: USED_MEM_HIGH takes a cuuint64_t and may only be set to zero, which is what this does.
        let reset = unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut core::ffi::c_void,
            )
        };
        match reset {
            Ok(()) => (MemorySource::CudaPoolHighWater, current),
            Err(_) => (MemorySource::Unavailable, 0),
        }
    }

    pub fn peak(device: &Device) -> Option<u64> {
        let pool = pool(device)?;
        let high = attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        let current = attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Some(high.max(current))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::MemorySource;
    use candle_core::Device;

    // A build without the `cuda` feature has no CUDA device to measure.
    pub fn reset(_device: &Device) -> (MemorySource, u64) {
        (MemorySource::Unavailable, 0)
    }

    pub fn peak(_device: &Device) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_peak_rss_sees_a_fresh_allocation() {
        let probe = MemoryProbe::start(&Device::Cpu);
        if !cfg!(target_os = "linux") {
            assert_eq!(probe.source(), MemorySource::Unavailable);
            return;
        }
        assert!(matches!(probe.source(), MemorySource::ProcessPeakRss | MemorySource::ProcessLifetimePeakRss));
        // Touch 64 MiB so it is resident. (Other tests in this process may reset the mark concurrently, but never
        // below the current RSS, which includes `big` while it lives.)
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let peak = probe.peak_bytes().unwrap();
        assert!((64 << 20..1 << 40).contains(&peak), "peak {peak} bytes");
        drop(big);
    }
}
