//! The one way the bench reads a clock: synchronise the device, start the host clock, run the region, synchronise
//! again, stop. CUDA work is queued asynchronously, so a host clock around unsynchronised work measures how fast
//! kernels were *launched*, not how fast they ran; the synchronize before the region also keeps the previous
//! region's tail out of this one. On CPU `Device::synchronize` is a no-op and candle's ops are eager.
//!
//! Why a synchronize rather than CUDA events: every timed region is at least a whole forward pass (milliseconds), so
//! the few microseconds a synchronize costs are noise, and wall time between two synchronizations is what a training
//! step costs, host-side launch overhead included (events recorded on the stream would hide a CPU-bound launch loop
//! between the first and last kernel only partly, and not at all on CPU).

use std::time::{Duration, Instant};

use candle_core::Device;

/// Run `f` between two device synchronizations and return its value and the elapsed wall time.
pub fn time_region<T, E>(device: &Device, f: impl FnOnce() -> Result<T, E>) -> Result<(T, Duration), E>
where
    E: From<candle_core::Error>,
{
    device.synchronize()?;
    let start = Instant::now();
    let value = f()?;
    device.synchronize()?;
    Ok((value, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_region_and_passes_errors_through() {
        let dev = Device::Cpu;
        let (v, d) = time_region::<_, candle_core::Error>(&dev, || {
            std::thread::sleep(Duration::from_millis(20));
            Ok(7)
        })
        .unwrap();
        assert_eq!(v, 7);
        assert!(d >= Duration::from_millis(20) && d < Duration::from_secs(5), "{d:?}");
        let err = time_region::<(), candle_core::Error>(&dev, || Err(candle_core::Error::Msg("boom".into())));
        assert!(err.unwrap_err().to_string().contains("boom"));
    }
}
