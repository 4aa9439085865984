// Hopper's asynchronous pipeline (sm_90): what a warp-specialised kernel (FA3's producer and consumer warpgroups)
// synchronises with, beside cp.async (cp_async.cuh) and wgmma (wgmma.cuh). Device side: inline PTX (traps when not
// compiled for sm_90 or later). In the kernel lab (dev/cuda/cuda_emu.h, included first) the same calls run on the
// emulation's block state; src/cuda/pipeline_check.cu is the kernel that checks both, tests/kernels_wgmma.rs runs it
// on the GPU and dev/cuda/check_pipeline.cpp in the lab.
//
// Sources: the PTX ISA 9.0, sections 9.7.13.1 "bar, barrier" (named barriers), 9.7.13.15 "mbarrier" (its phases,
// pending arrival count and tx-count; init, arrive, arrive.expect_tx, try_wait.parity), 9.7.9.25 "cp.async.bulk"
// (https://docs.nvidia.com/cuda/parallel-thread-execution/index.html), and CUTLASS's wrappers of the same instructions
// (github.com/NVIDIA/cutlass: include/cutlass/arch/barrier.h (NamedBarrier, ClusterBarrier / ClusterTransactionBarrier),
// include/cute/arch/copy_sm90_tma.hpp (SM90_BULK_COPY_G2S)).
//
// 1. Named barriers: bar.sync id, count / bar.arrive id, count. Barrier `id` (0..15 per CTA; 0 is __syncthreads, so
//    1..15 here) completes when `count` threads (a multiple of 32: whole warps) have arrived; bar.sync waits for it,
//    bar.arrive does not. Memory accesses before the barrier by its participants are performed before those after
//    it by the threads that wait. Two groups of warps that take turns (ping-pong) each sync on "my turn" and arrive
//    on "your turn", count = both groups' threads.
// 2. mbarrier: a 64-bit object in shared memory with a phase, a pending arrival count and a tx-count (bytes still
//    to come). init(count): phase 0, pending = count, tx = 0. arrive: pending - 1; arrive.expect_tx(b): tx + b, then
//    arrive. A bulk copy completing on it subtracts its bytes from tx when the bytes have landed. The current phase
//    completes when pending = 0 and tx = 0: the phase advances, pending = count again. try_wait.parity(p) is true
//    once the phase of parity p has completed (the current phase's parity is not p); a waiter on phase k of a
//    barrier passes p = k & 1. After a thread sees that, the phase's copied bytes are visible to it. The init must be
//    visible before other threads use the barrier: fence.mbarrier_init, then __syncthreads.
// 3. cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], size, [mbar]: `size` bytes
//    (a multiple of 16; both addresses 16-byte aligned) from global to shared memory by the copy engine (TMA without a
//    tensor map), completing `size` bytes of tx on `mbar`. One thread issues it; the expecting arrive usually comes
//    first from the same thread (arrive.expect_tx, then the copy).
//
// 4. setmaxnreg.{inc,dec}.sync.aligned.u32 N (sm_90a): a warpgroup's per-thread register count raised or lowered
//    to N (PTX ISA 9.7.17.1 "setmaxnreg"); the lab runs it as nothing (registers are not modelled).
// 5. What the lab checks (cuda_emu.h): copies land only when a thread observes the completed phase (so reading a
//    stage without waiting reads stale data), thread counts agree per barrier, no arrive beyond the pending count,
//    alignment and size of copies, no copy in flight at exit, and no wait without progress (a deadlock aborts after
//    TM_EMU_DEADLOCK_S seconds). Not modelled: the memory ordering of plain accesses (the emulation's threads see
//    each other's stores at once), clusters, multicast.
#pragma once
#include "common.cuh"
#include "cp_async.cuh"

#ifdef __CUDACC__
// Dynamic shared memory (the launch's shared_mem_bytes), as `T* name`, 1024-byte aligned (the 128B swizzle atom).
#define TM_DYNAMIC_SMEM(T, name)                                     \
    extern __shared__ __align__(1024) unsigned char tm_dyn_smem_[]; \
    T* name = reinterpret_cast<T*>(tm_dyn_smem_)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define TM_PIPE_ASM(...) asm volatile(__VA_ARGS__)
#else
#define TM_PIPE_ASM(...) __trap()
#endif

__device__ __forceinline__ void named_sync(int id, int count) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory"); }
__device__ __forceinline__ void named_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
    TM_PIPE_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Makes this thread's mbarrier inits visible to the async proxy (the copy engine); a __syncthreads follows.
__device__ __forceinline__ void mbar_init_fence() { TM_PIPE_ASM("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    TM_PIPE_ASM("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
    TM_PIPE_ASM("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_u32(bar)),
                "r"(bytes)
                : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, unsigned parity) {
    uint32_t done = 0;
    TM_PIPE_ASM("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                : "=r"(done)
                : "r"(smem_u32(bar)), "r"(parity)
                : "memory");
    return done != 0;
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
    TM_PIPE_ASM("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                    smem_u32(dst)),
                "l"(src), "r"(bytes), "r"(smem_u32(bar))
                : "memory");
}
// setmaxnreg: the warps of this warpgroup give registers back to the pool (dec) or take them from it (inc), N per
// thread (a multiple of 8 in 24..256); every warp of the warpgroup executes it. A producer warpgroup that only copies
// runs on few, so the consumers' product fragments fit without spilling (the launch bound caps every thread at
// 65536 / the block's threads rounded up to 128).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
#else
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { __trap(); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { __trap(); }
#endif
#undef TM_PIPE_ASM
#else
#define TM_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(tm_dyn_smem)
inline void named_sync(int id, int count) { emu_named_barrier((unsigned)id, (unsigned)count, true); }
inline void named_arrive(int id, int count) { emu_named_barrier((unsigned)id, (unsigned)count, false); }
inline void mbar_init(uint64_t* bar, unsigned count) { emu_mbar_init(bar, count); }
inline void mbar_init_fence() {}
inline void mbar_arrive(uint64_t* bar) { emu_mbar_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) { emu_mbar_arrive(bar, bytes); }
inline bool mbar_try_wait(uint64_t* bar, unsigned parity) { return emu_mbar_try_wait(bar, parity); }
inline void mbar_wait(uint64_t* bar, unsigned parity) { emu_mbar_wait(bar, parity); }
inline void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, uint64_t* bar) { emu_bulk_copy(dst, src, bytes, bar); }
template <int N> inline void setmaxnreg_inc() { static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count"); }
template <int N> inline void setmaxnreg_dec() { static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count"); }
#endif
