//! Typed device pointers: a `CUdeviceptr` (`u64`) that knows its element type, as llm.c's `floatX*` does, so passing
//! an f32 buffer where a kernel reads bf16 (or an id buffer where it reads f32) is a compile error. A `DevPtr<T>` is
//! made only where the element type is known: the engine's typed allocations (`Buf<T>::at`), a cudarc slice of `T`
//! ([`DevPtr::of`], [`DevPtr::of_mut`]), or a candle tensor whose dtype is checked ([`DevPtr::of_tensor`]). It is
//! pushed to a kernel launch as the bare address (`#[repr(transparent)]`) and handed to FFI (cuBLASLt, cuDNN, the
//! driver's copies) as [`DevPtr::raw`].

use std::fmt;
use std::marker::PhantomData;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop};
use candle_core::cuda_backend::CudaDType;
use candle_core::{Result, Storage, Tensor, WithDType};

/// The device address of a `T` (the first of a run of them). Copy, Send and Sync like the `u64` it wraps: it owns
/// nothing, and dereferencing it is a kernel's business (every launch is `unsafe` with the sizes in its contract).
#[repr(transparent)]
pub struct DevPtr<T> {
    raw: u64,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevPtr<T> {}

impl<T> PartialEq for DevPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T> Eq for DevPtr<T> {}

impl<T> fmt::Debug for DevPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevPtr<{}>({:#x})", std::any::type_name::<T>(), self.raw)
    }
}

// SAFETY: `#[repr(transparent)]` over a u64, which is what a kernel's `T*` parameter takes (a CUdeviceptr).
unsafe impl<T> DeviceRepr for DevPtr<T> {}

impl<T> DevPtr<T> {
    /// The null pointer (for a kernel parameter a variant does not read).
    pub const NULL: DevPtr<T> = DevPtr { raw: 0, _elem: PhantomData };

    /// `raw` taken as the address of a `T`.
    ///
    /// # Safety
    /// `raw` addresses device memory holding `T`s (or is a pointer a kernel never dereferences).
    pub const unsafe fn from_raw(raw: u64) -> DevPtr<T> {
        DevPtr { raw, _elem: PhantomData }
    }

    /// The bare address, for FFI (cuBLASLt, cuDNN, the driver's copies).
    pub fn raw(self) -> u64 {
        self.raw
    }

    /// The address `elems` elements further on.
    pub fn offset(self, elems: usize) -> DevPtr<T> {
        DevPtr { raw: self.raw + (elems * std::mem::size_of::<T>()) as u64, _elem: PhantomData }
    }

    /// The first element of cudarc slice `s`, for reading on `stream`; keep the guard until the work that uses the
    /// pointer is enqueued (as `DevicePtr::device_ptr` asks).
    pub fn of<'a>(s: &'a impl DevicePtr<T>, stream: &'a CudaStream) -> (DevPtr<T>, SyncOnDrop<'a>) {
        let (p, sync) = s.device_ptr(stream);
        (DevPtr { raw: p, _elem: PhantomData }, sync)
    }

    /// As [`DevPtr::of`], for writing.
    pub fn of_mut<'a>(s: &'a mut impl DevicePtrMut<T>, stream: &'a CudaStream) -> (DevPtr<T>, SyncOnDrop<'a>) {
        let (p, sync) = s.device_ptr_mut(stream);
        (DevPtr { raw: p, _elem: PhantomData }, sync)
    }
}

impl<T: CudaDType + WithDType> DevPtr<T> {
    /// The first element of contiguous CUDA tensor `t`, whose dtype must be `T`.
    pub fn of_tensor(t: &Tensor, stream: &CudaStream) -> Result<DevPtr<T>> {
        if t.dtype() != T::DTYPE {
            candle_core::bail!("device pointer: expected a {:?} tensor, got {:?}", T::DTYPE, t.dtype());
        }
        if !t.is_contiguous() {
            candle_core::bail!("device pointer: expected a contiguous tensor, got {:?}", t.layout());
        }
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*s else { candle_core::bail!("device pointer: a tensor is not on the CUDA device") };
        let (base, _sync) = DevPtr::<T>::of(cs.as_cuda_slice::<T>()?, stream);
        Ok(base.offset(l.start_offset()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_elements_of_the_type() {
        // SAFETY: never dereferenced.
        let (f, h) = unsafe { (DevPtr::<f32>::from_raw(0x1000), DevPtr::<half::bf16>::from_raw(0x1000)) };
        assert_eq!(f.offset(3).raw(), 0x100c);
        assert_eq!(h.offset(3).raw(), 0x1006);
        assert_eq!(std::mem::size_of::<DevPtr<f32>>(), 8);
        assert_eq!(DevPtr::<u32>::NULL.raw(), 0);
    }
}
