//! Keep freed GPU memory in candle's allocation pool.
//!
//! candle allocates through cudarc's `cuMemAllocAsync`, from the device's current memory pool, whose release threshold
//! defaults to 0 bytes: at every stream synchronisation the driver returns all the pool's free memory to the OS, and
//! the next allocations map it back. A training step frees and re-allocates tens of GB of activations per micro-step
//! and synchronises several times (loss fetch, gradient norm, the embedding backward's id grouping), so each sync
//! costs a round of unmapping and re-mapping. Setting the threshold to "never release" makes the pool a caching
//! allocator, which is what PyTorch's allocator is; memory other processes could use is held as long as tokenmill
//! runs, as with PyTorch (`release_cached_memory` hands it back, e.g. before `bench compare` starts the PyTorch
//! reference on the same GPU). `TOKENMILL_CUDA_POOL=release` keeps the driver's default (to share a GPU, or to measure
//! the difference: docs/PERF.md has `tokenmill bench` both ways).

use candle_core::Device;

/// The current memory pool of `device`'s CUDA device (the one `cuMemAllocAsync` draws from), with its context bound
/// to this thread; `None` on CPU.
#[cfg(feature = "cuda")]
pub(crate) fn pool_of(device: &Device) -> Result<Option<cudarc::driver::sys::CUmemoryPool>, String> {
    let Ok(cuda) = device.as_cuda_device() else { return Ok(None) };
    let ctx = cuda.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(|e| format!("binding the CUDA context: {e}"))?;
    // SAFETY: cu_device() is the device of a live context.
    let pool = unsafe { cudarc::driver::result::device::get_mem_pool(ctx.cu_device()) }
        .map_err(|e| format!("cuDeviceGetMemPool: {e}"))?;
    Ok(Some(pool))
}

/// Set the release threshold of `device`'s current CUDA memory pool to `u64::MAX`, unless the environment says
/// `TOKENMILL_CUDA_POOL=release`. No-op on CPU.
pub fn retain_freed_memory(device: &Device) -> Result<(), String> {
    match std::env::var("TOKENMILL_CUDA_POOL").as_deref() {
        Err(_) | Ok("" | "retain") => {}
        Ok("release") => return Ok(()),
        Ok(other) => return Err(format!("TOKENMILL_CUDA_POOL={other}: expected `retain` (the default) or `release`")),
    }
    #[cfg(feature = "cuda")]
    if let Some(pool) = pool_of(device)? {
        use cudarc::driver::{result, sys};
        let mut threshold = u64::MAX;
        // SAFETY: the release threshold is a cuuint64_t that outlives the call.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut core::ffi::c_void,
            )
        }
        .map_err(|e| format!("setting the memory pool's release threshold: {e}"))?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
    Ok(())
}

/// Wait for `device`'s work and return the pool's free memory to the OS (what the tensors still alive use stays).
/// No-op on CPU.
pub fn release_cached_memory(device: &Device) -> Result<(), String> {
    #[cfg(feature = "cuda")]
    if let Some(pool) = pool_of(device)? {
        device.synchronize().map_err(|e| format!("synchronising before trimming the pool: {e}"))?;
        // SAFETY: a valid pool handle; trimming only releases memory no allocation holds.
        unsafe { cudarc::driver::result::mem_pool::trim_to(pool, 0) }.map_err(|e| format!("cuMemPoolTrimTo: {e}"))?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
    Ok(())
}
