//! The peak MFU is measured against: the throughput of one large square matmul on this device, in this build, timed
//! the same way as the cases (`timer`), instead of a datasheet number. A datasheet's dense bf16 figure (989 TFLOP/s
//! for an H100 SXM) is rarely reached by any library, depends on clocks and power limits, and says nothing about a
//! CPU; a measured matmul is what a perfectly matmul-bound training step could at best achieve here.
//!
//! Defaults: bf16 8192 x 8192 x 8192 on CUDA (1.1 TFLOP per product, large enough to saturate the tensor cores);
//! f32 1024^3 on CPU (2.1 GFLOP, a fraction of a second on two cores; candle's CPU bf16 matmul is not a fast path).
//! The figure reported is the best of several rounds: the peak is a ceiling, and a round slowed by a neighbour
//! process or a clock dip should not lower it.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::timer::time_region;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakOptions {
    /// Side of the square matrices.
    pub n: usize,
    pub dtype: DType,
    /// Untimed products first (cuBLAS heuristics, allocations, clocks ramping up).
    pub warmup: usize,
    /// Timed rounds; the best one is the peak.
    pub rounds: usize,
    /// Products per round, timed together.
    pub per_round: usize,
}

impl PeakOptions {
    /// The defaults for `device` (see the module doc); `n` overrides the matrix side.
    pub fn for_device(device: &Device, n: Option<usize>) -> PeakOptions {
        if device.is_cuda() {
            PeakOptions { n: n.unwrap_or(8192), dtype: DType::BF16, warmup: 5, rounds: 5, per_round: 10 }
        } else {
            PeakOptions { n: n.unwrap_or(1024), dtype: DType::F32, warmup: 1, rounds: 3, per_round: 2 }
        }
    }
}

/// A measured peak.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeakResult {
    pub n: usize,
    pub dtype: String,
    /// Best round, in TFLOP/s (2 n^3 FLOPs per product).
    pub tflops: f64,
    /// Every round, in order.
    pub rounds_tflops: Vec<f64>,
}

/// Time `opts.rounds` rounds of `opts.per_round` (n x n) @ (n x n) products and report the best.
pub fn measure_peak(device: &Device, opts: &PeakOptions) -> candle_core::Result<PeakResult> {
    if opts.n == 0 || opts.rounds == 0 || opts.per_round == 0 {
        candle_core::bail!("peak matmul: n, rounds and per_round must be positive, got {opts:?}");
    }
    let n = opts.n;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(opts.dtype)?; // (n, n)
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(opts.dtype)?; // (n, n)
    for _ in 0..opts.warmup {
        a.matmul(&b)?;
    }
    let flops = 2.0 * (n as f64).powi(3) * opts.per_round as f64;
    let mut rounds_tflops = Vec::with_capacity(opts.rounds);
    for _ in 0..opts.rounds {
        let ((), elapsed) = time_region(device, || -> candle_core::Result<()> {
            for _ in 0..opts.per_round {
                a.matmul(&b)?;
            }
            Ok(())
        })?;
        rounds_tflops.push(flops / elapsed.as_secs_f64().max(1e-12) / 1e12);
    }
    let tflops = rounds_tflops.iter().copied().fold(0.0, f64::max);
    Ok(PeakResult { n, dtype: super::dtype_name(opts.dtype).to_string(), tflops, rounds_tflops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cpu_peak_is_positive_and_best_of_rounds() {
        let opts = PeakOptions { n: 64, dtype: DType::F32, warmup: 1, rounds: 3, per_round: 2 };
        let p = measure_peak(&Device::Cpu, &opts).unwrap();
        assert_eq!((p.n, p.dtype.as_str(), p.rounds_tflops.len()), (64, "fp32", 3));
        assert!(p.tflops > 0.0 && p.tflops.is_finite());
        assert!(p.rounds_tflops.iter().all(|&r| r > 0.0 && r <= p.tflops));
        assert!(measure_peak(&Device::Cpu, &PeakOptions { n: 0, ..opts }).is_err());
    }
}
