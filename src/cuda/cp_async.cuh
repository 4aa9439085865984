// cp.async: 16- or 4-byte copies from global to shared memory that run while the thread goes on, and their group
// bookkeeping, for the kernels that stage tiles in shared memory (flash_attn.cu, wgmma_check.cu). In the kernel lab
// (dev/cuda/cuda_emu.h, included first) a copy lands only at the wait that retires its group, as on the device, so a
// tile read before its wait reads stale data there too.
#pragma once
#include "common.cuh"

#ifdef __CUDACC__
// The 32-bit shared-window address of a shared-memory pointer (what cp.async and ldmatrix take).
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, asynchronously; `valid` false writes zeros (src-size 0) and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 4 : 0));
}
// The copies issued since the last commit become one group.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// All but the PENDING most recent groups have landed (visible to this thread; a barrier makes them visible to all).
template <int PENDING> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
#else
inline void cp_async16(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, 16, valid); }
inline void cp_async4(void* dst, const void* src, bool valid) { emu_cp_async(dst, src, 4, valid); }
inline void cp_async_commit() { emu_cp_commit(); }
template <int PENDING> inline void cp_async_wait() { emu_cp_wait(PENDING); }
#endif
