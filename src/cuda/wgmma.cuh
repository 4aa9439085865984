// The warpgroup-level tensor-core product of Hopper (sm_90a): wgmma.mma_async m64nNk16 with bf16 inputs and f32
// accumulators in registers, B (and A, or A from registers) read from shared memory through 64-bit matrix
// descriptors, and its ordering instructions. Device side: inline PTX (compiled only in files that build.rs compiles
// for compute_90a: first line `// tokenmill: sm_90a`; elsewhere every call traps). In the kernel lab
// (dev/cuda/cuda_emu.h, included first) the same calls run on the emulation's warpgroup exchange. A later session
// compares what is written here with the hardware: tests/kernels_wgmma.rs runs src/cuda/wgmma_check.cu on the GPU.
//
// Sources: the PTX ISA (PTX ISA 9.0, section 9.7.15 "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions", https://docs.nvidia.com/cuda/parallel-thread-execution/index.html#asynchronous-warpgroup-level-matrix-instructions,
// mirrored as markdown at https://ptx.poole.ai/docs/09-instruction-set/15-wgmma/), and CUTLASS (github.com/NVIDIA/cutlass:
// include/cute/arch/mma_sm90_desc.hpp (GmmaDescriptor), include/cute/atom/mma_traits_sm90_gmma.hpp (make_gmma_desc's
// canonical layouts, CLayout_64xN, ALayout_64x16), include/cute/arch/mma_sm90_gmma.hpp (the instruction forms)).
//
// 1. Instructions (one warpgroup = 4 consecutive warps, 128 threads, warp 0 of it at a thread index that is a
//    multiple of 128; every .sync.aligned form executed by all 128 threads with the same operands):
//      wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 {d0..d(N/2-1)}, descA, descB, p, 1, 1, tnspA, tnspB;
//      wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 {d0..d(N/2-1)}, {a0, a1, a2, a3}, descB, p, 1, 1, tnspB;
//    D (64 x N) = A (64 x 16) B (16 x N) + (p ? D : 0); p, the scale-d predicate, is false for a fresh accumulator.
//    The 1, 1 are imm-scale-a/b (no negation). tnspA / tnspB = 0: the operand is K-major (A row-major M x K, B
//    stored N x K: "C = A B^T"); 1: M-major A / N-major B (A stored K x M, B stored K x N). With A from registers,
//    A is always K-major. N: 64, 128 or 256 here (the ISA has every multiple of 8 up to 256).
//      wgmma.fence.sync.aligned          orders register accesses before it with the products after it
//      wgmma.commit_group.sync.aligned   the products issued since the last commit become one wgmma-group
//      wgmma.wait_group.sync.aligned n   waits until at most n of this warpgroup's groups are pending
//      fence.proxy.async.shared::cta     makes this thread's generic-proxy shared-memory writes (st.shared,
//                                        cp.async) visible to the async proxy, which wgmma reads through
//
// 2. Matrix descriptor (64 bits; ISA 9.7.15.5.1.2.2 "Matrix Descriptor Format"; GmmaDescriptor):
//      bits 13..0   encode(start address)            encode(x) = (x & 0x3FFFF) >> 4 (16-byte units, 256 KiB)
//      bits 29..16  encode(leading dimension byte offset, LBO)
//      bits 45..32  encode(stride dimension byte offset, SBO)
//      bits 51..49  base offset: 0 when the swizzle pattern starts on its boundary (1024 bytes for 128B); otherwise
//                   (pattern start address >> 7) & 7. Not emulated: the lab requires 0, tiles are 1024-byte aligned
//      bits 63..62  swizzle: 0 none ("interleave"), 1 = 128B, 2 = 64B, 3 = 32B. The lab emulates 0 and 1
//    (the other bits reserved, 0; the lab keeps its own bookkeeping in bits 61..52, see cuda_emu.h).
//
// 3. Canonical layouts: where element (mn, k) of a 16-wide k slice of a bf16 operand lives (mn = m of A or n of B),
//    as byte offsets from the start address (make_gmma_desc's comment, its units T = 8 elements = 16 bytes; ISA
//    9.7.15.5.1.2 "Shared Memory Matrix Layout", 9.7.15.5.1.2.1 strides):
//      K-major,  none:  (mn/8)*SBO + (k/8)*LBO + (mn%8)*16 + (k%8)*2    ("core matrices" of 8 rows x 16 bytes)
//      K-major,  128B:  (mn/8)*SBO + (mn%8)*128 + k*2                   (LBO unused, "assumed 1")
//      MN-major, none:  (mn/8)*SBO + (k/8)*LBO + (k%8)*16 + (mn%8)*2
//      MN-major, 128B:  (mn/64)*LBO + (k/8)*SBO + (k%8)*128 + (mn%64)*2
//    128B swizzle (cute Swizzle<3,4,3> on byte addresses): the shared address L = start + offset is read at
//    L ^ (((L >> 7) & 7) << 4): the 16-byte unit within a 128-byte row is XORed with the row's index in its
//    1024-byte atom. Because the swizzle applies to the final address, a K-major tile of 64-element rows (128 bytes,
//    chunk c of row r stored at unit c ^ (r % 8), flash_attn.cu's fa2_swz) is read k-step by k-step by adding
//    32 bytes per step to the start address, with SBO = 1024. A dense MN-major 128B tile [K rows][64 mn] has
//    SBO = 1024 (8 k rows) and LBO = the stride between 64-wide mn blocks; per k-step of 16 the start moves 2048.
//
// 4. Accumulators (ISA "Register Fragments ... Matrix D" of wgmma .m64nNk16; CUTLASS CLayout_64xN): thread t of
//    the warpgroup, w = t / 32, g = (t % 32) / 4, c = t % 4, holds d[i] = D[16w + g + 8((i/2) % 2)][8(i/4) + 2c + i%2]
//    for i < N/2: warp w owns rows 16w..16w+15, laid out as mma.m16n8k16's C fragment repeated over N/8 n-tiles.
//    A from registers (CUTLASS ALayout_64x16): a[r] holds A[16w + g + 8(r%2)][2c + 8(r/2) + {0, 1}] (the lower k
//    in the low half), mma.m16n8k16's A fragment for warp w's 16 rows.
//
// 5. Ordering rules (ISA 9.7.15.6 wgmma.fence, 9.7.15.7 commit_group / wait_group):
//    - wgmma.fence before the first product, and between any register access (accumulators or A registers) and a
//      product that uses those registers; not needed between products accumulating into the same registers.
//    - A product's accumulators and A registers must not be accessed until a wait_group has retired it; its shared
//      operands must not be overwritten until then either.
//    - Shared memory written by the generic proxy (stores, cp.async) needs fence.proxy.async by the writing thread
//      before a barrier after which the product reads it.
//    - The compiler does not know that wgmma writes its accumulators late: wgmma_fence_operand (an empty asm that
//      "writes" each register) before the product and after the wait keeps it from moving accumulator accesses
//      across them (CUTLASS warpgroup_fence_operand).
//
// 6. What the lab checks and what it does not (cuda_emu.h): products are summed exactly in double and rounded once
//    (the tensor core's summation order and rounding are not modelled, below the checks' bf16 tolerances); the
//    accumulators read NaN until their wait_group; writing them, changing A registers or overwriting shared operands
//    while a product is in flight aborts; the fence rule is approximated as "a wgmma.fence since this thread's last
//    wait_group, unless the accumulators are in flight"; the proxy rule is checked for cp.async writes only (plain
//    stores are invisible to the emulation); 64B/32B swizzles and base offsets other than 0 abort.
#pragma once
#include "common.cuh"

enum : int { WGMMA_SWIZZLE_NONE = 0, WGMMA_SWIZZLE_128B = 1 };

#ifdef __CUDACC__
// The descriptor of an operand starting at shared address `smem` (section 2).
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes, int swizzle) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)((lbo_bytes & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo_bytes & 0x3FFFF) >> 4) << 32) | ((uint64_t)swizzle << 62);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TM_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define TM_WGMMA_ASM(...) __trap()  // not an sm_90a compilation: build.rs compiles only marked files for compute_90a
#endif

__device__ __forceinline__ void wgmma_fence() { TM_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { TM_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int PENDING> __device__ __forceinline__ void wgmma_wait() {
    TM_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { TM_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins the accumulators in place for the compiler (section 5); no instruction.
template <int R> __device__ __forceinline__ void wgmma_fence_operand(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// The products, one struct per N: inline asm names each accumulator register as its own operand, so the operand
// lists (TM_WG_D*) and the matching "%0, %1, ..." strings (TM_WG_R*) are spelled out once here for 32, 64 and 128
// accumulators; the operands after them are numbered from N / 2.
#define TM_WG_D8(i) \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
        "+f"(d[i + 7])
#define TM_WG_D32 TM_WG_D8(0), TM_WG_D8(8), TM_WG_D8(16), TM_WG_D8(24)
#define TM_WG_D64 TM_WG_D32, TM_WG_D8(32), TM_WG_D8(40), TM_WG_D8(48), TM_WG_D8(56)
#define TM_WG_D128 TM_WG_D64, TM_WG_D8(64), TM_WG_D8(72), TM_WG_D8(80), TM_WG_D8(88), TM_WG_D8(96), TM_WG_D8(104), \
                   TM_WG_D8(112), TM_WG_D8(120)
#define TM_WG_R32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define TM_WG_R64 TM_WG_R32 ", " "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define TM_WG_R128 TM_WG_R64 ", " "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// One product: the scale-d predicate from operand PRED, then "{accumulators}, operands".
#define TM_WGMMA(N, R, PRED, OPERANDS)                                 \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %" #PRED ", 0;\n"                \
    "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" R "}, " \
    OPERANDS ";\n}\n"

template <int N, int TA, int TB> struct WgmmaSS;
template <int N, int TB> struct WgmmaRS;
// A and B from descriptors (SS), or A from registers (RS); operand numbers after the N / 2 accumulators.
#define TM_WG_STRUCTS(N, R, D, S_PRED, S_OPS, R_PRED, R_OPS)                                                    \
    template <int TA, int TB> struct WgmmaSS<N, TA, TB> {                                                       \
        __device__ static __forceinline__ void mma(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {  \
            asm volatile(TM_WGMMA(N, R, S_PRED, S_OPS) : D : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB)); \
        }                                                                                                       \
    };                                                                                                          \
    template <int TB> struct WgmmaRS<N, TB> {                                                                   \
        __device__ static __forceinline__ void mma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db,     \
                                                   int scale_d) {                                               \
            asm volatile(TM_WGMMA(N, R, R_PRED, R_OPS)                                                          \
                         : D                                                                                    \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d), "n"(TB));       \
        }                                                                                                       \
    };
TM_WG_STRUCTS(64, TM_WG_R32, TM_WG_D32, 34, "%32, %33, p, 1, 1, %35, %36", 37, "{%32, %33, %34, %35}, %36, p, 1, 1, %38")
TM_WG_STRUCTS(128, TM_WG_R64, TM_WG_D64, 66, "%64, %65, p, 1, 1, %67, %68", 69, "{%64, %65, %66, %67}, %68, p, 1, 1, %70")
TM_WG_STRUCTS(256, TM_WG_R128, TM_WG_D128, 130, "%128, %129, p, 1, 1, %131, %132", 133,
              "{%128, %129, %130, %131}, %132, p, 1, 1, %134")
#undef TM_WG_STRUCTS
#undef TM_WGMMA
#undef TM_WG_R128
#undef TM_WG_R64
#undef TM_WG_R32
#undef TM_WG_D128
#undef TM_WG_D64
#undef TM_WG_D32
#undef TM_WG_D8

// d (64 x N over the warpgroup, section 4) = A B + (scale_d ? d : 0), A and B from descriptors.
template <int N, int TA, int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    WgmmaSS<N, TA, TB>::mma(d, desc_a, desc_b, scale_d);
#else
    __trap();
#endif
}
// As wgmma_ss with A from registers (section 4).
template <int N, int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    WgmmaRS<N, TB>::mma(d, a, desc_b, scale_d);
#else
    __trap();
#endif
}
#undef TM_WGMMA_ASM
#else
inline uint64_t wgmma_desc(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes, int swizzle) {
    return emu_wgmma_desc_address(smem) | ((uint64_t)((lbo_bytes & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo_bytes & 0x3FFFF) >> 4) << 32) | ((uint64_t)swizzle << 62);
}
inline void wgmma_fence() { emu_wgmma_fence(); }
inline void wgmma_commit() { emu_wgmma_commit(); }
template <int PENDING> inline void wgmma_wait() { emu_wgmma_wait(PENDING); }
inline void fence_proxy_async() { emu_fence_proxy_async(); }
template <int R> inline void wgmma_fence_operand(float (&)[R]) {}
template <int N, int TA, int TB> inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    emu_wgmma(d, N, nullptr, desc_a, desc_b, scale_d, TA, TB);
}
template <int N, int TB> inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    emu_wgmma(d, N, a, 0, desc_b, scale_d, 0, TB);
}
#endif
