// tokenmill: sm_90a
// The check kernel of the warpgroup tensor-core product (wgmma.cuh): C (M x N, f32, row-major) = A (M x K) B (K x N)
// in bf16, one warpgroup (128 threads) per 64 x BN tile of C. It exists to pin down, on the CPU lab first
// (dev/cuda/check_wgmma.cpp) and then on an H100 (tests/kernels_wgmma.rs through the launcher wgmma_check.rs), the
// semantics a native Hopper attention backward will stand on: descriptors, both swizzle modes, K- and MN-major
// operands, A from registers, the accumulator layout, and the ordering rules. Not a fast GEMM (one warpgroup per
// CTA, at most two stages, no TMA).
//
// Operands in global memory, by variant (the kernel names say ss/rs = A from shared memory / registers, then A's
// and B's major-ness, then BN):
//   A K-major: a[m * K + k] (M x K row-major)        A M-major: a[k * M + m] (stored K x M)
//   B K-major: b[n * K + k] (stored N x K: C = A B^T) B N-major: b[k * N + n] (K x N row-major)
// Any M, N >= 1; K a multiple of 8 (16-byte rows), M (N) a multiple of 8 where A (B) is MN-major; a and b 16-byte
// aligned. Tiles past the matrix are zero-filled, so partial tiles need no special case.
//
// Per CTA: 64-wide k tiles staged by cp.async (two stages where they fit the 48 KiB of static shared memory: BN = 64),
// each in the layout of `swizzle` (WGMMA_SWIZZLE_128B or _NONE; wgmma.cuh section 3); then fence.proxy.async and a
// barrier, wgmma.fence and four k16 products, commit, wait. The accumulators start as NaN and the first product
// has scale-d false, so a scale-d the hardware ignored would show. `b_desc_xor` is XORed into every B descriptor:
// 0 in use; the checks pass a wrong SBO or swizzle mode and require a wrong result (a descriptor field the hardware
// ignored would not be caught otherwise).
#include "common.cuh"
#include "cp_async.cuh"
#include "wgmma.cuh"

#define WGC_BK 64  // k per staged tile: 64 bf16 = 128 bytes, the 128B swizzle's row

// Every staged tile is 64 k wide and starts on a 1024-byte boundary (the 128B swizzle's atom: base offset 0).
template <int BN, int STAGES> struct alignas(1024) WgcSmem {
    __nv_bfloat16 a[STAGES][64 * WGC_BK];
    __nv_bfloat16 b[STAGES][BN * WGC_BK];
};

// Byte offset of 16-byte unit u (elements 8u..8u+7 along the contiguous dimension) of line r of a staged tile, in
// the canonical layouts of wgmma.cuh section 3 with the strides wgc_desc passes:
//   K-major (lines = rows mn, 8 units of k):   128B: r*128 + (u ^ r%8)*16;          none: (r/8)*1024 + u*128 + (r%8)*16
//   MN-major (lines = k, units of 8 mn):       128B: (u/8)*8192 + r*128 + (u%8 ^ r%8)*16;  none: u*1024 + (r/8)*128 + (r%8)*16
__device__ __forceinline__ int wgc_offset(bool mn_major, int swizzle, int r, int u) {
    if (swizzle == WGMMA_SWIZZLE_128B) return (mn_major ? (u >> 3) * 8192 : 0) + r * 128 + (((u & 7) ^ (r & 7)) << 4);
    return mn_major ? u * 1024 + (r >> 3) * 128 + (r & 7) * 16 : (r >> 3) * 1024 + u * 128 + (r & 7) * 16;
}

// The descriptor of k-step kk (k = 16kk .. 16kk + 15) of a staged tile (wgmma.cuh sections 2 and 3).
__device__ __forceinline__ uint64_t wgc_desc(const __nv_bfloat16* tile, bool mn_major, int swizzle, int kk) {
    if (swizzle == WGMMA_SWIZZLE_128B)
        return mn_major ? wgmma_desc(tile + kk * 1024, 8192, 1024, swizzle)  // 16 k rows of 128 bytes per step
                        : wgmma_desc(tile + kk * 16, 16, 1024, swizzle);     // 32 bytes along the swizzled row
    return wgmma_desc(tile + kk * 128, 128, 1024, swizzle);                 // two 8-k core-matrix columns per step
}

// cp.async of one operand's k tile [k0, k0 + 64) into `s`: `lines` x 8 units (K-major: lines = mn rows from mn0;
// MN-major: 64 k lines, `lines` / 8 units of mn from mn0). ld = the stored row length (K, or the MN extent).
__device__ __forceinline__ void wgc_load(__nv_bfloat16* s, const __nv_bfloat16* g, bool mn_major, int swizzle, int lines,
                                         int mn0, int mn_len, int k0, int k_len) {
    const int chunks = mn_major ? 64 * (lines / 8) : lines * 8;
    for (int e = (int)threadIdx.x; e < chunks; e += 128) {
        int r, u, mn, k;
        if (mn_major) {
            r = e / (lines / 8), u = e % (lines / 8), k = k0 + r, mn = mn0 + 8 * u;
        } else {
            r = e / 8, u = e % 8, mn = mn0 + r, k = k0 + 8 * u;
        }
        const bool ok = mn < mn_len && k < k_len;
        const int64_t at = mn_major ? (int64_t)k * mn_len + mn : (int64_t)mn * k_len + k;
        cp_async16(reinterpret_cast<unsigned char*>(s) + wgc_offset(mn_major, swizzle, r, u), g + (ok ? at : 0), ok);
    }
}

// Register A fragments of the four k-steps of k tile k0 (wgmma.cuh section 4), read from global A (K-major).
__device__ __forceinline__ void wgc_load_a_regs(uint32_t (&ar)[4][4], const __nv_bfloat16* a, int m0, int M, int k0, int K) {
    const int t = (int)threadIdx.x, w = t >> 5, g = (t & 31) >> 2, c = t & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = m0 + 16 * w + g + 8 * (r & 1), k = k0 + 16 * kk + 2 * c + 8 * (r >> 1);
            ar[kk][r] = row < M && k < K ? *reinterpret_cast<const uint32_t*>(a + (int64_t)row * K + k) : 0u;
        }
}

template <int BN, bool A_MN, bool B_MN, bool A_REGS>
__device__ __forceinline__ void wgc_gemm(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                         float* __restrict__ c, int M, int N, int K, int swizzle, uint64_t b_desc_xor) {
    static_assert(!(A_REGS && A_MN), "A from registers is K-major");
    constexpr int STAGES = 2 * (64 + BN) * WGC_BK * 2 <= 40960 ? 2 : 1;
    __shared__ WgcSmem<BN, STAGES> sm;
    const int m0 = (int)blockIdx.y * 64, n0 = (int)blockIdx.x * BN, KT = (K + WGC_BK - 1) / WGC_BK;
    auto load = [&](int kt, int s) {
        if (!A_REGS) wgc_load(sm.a[s], a, A_MN, swizzle, 64, m0, M, kt * WGC_BK, K);
        wgc_load(sm.b[s], b, B_MN, swizzle, BN, n0, N, kt * WGC_BK, K);
    };
    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = __builtin_nanf("");  // overwritten by the first product (scale-d 0)

    load(0, 0);
    cp_async_commit();
    for (int kt = 0; kt < KT; kt++) {
        const int s = kt % STAGES;
        if (STAGES == 2 && kt + 1 < KT) load(kt + 1, s ^ 1);  // its stage was last read by tile kt - 1, retired below
        cp_async_commit();
        cp_async_wait<STAGES - 1>();  // tile kt has landed (tile kt + 1 may still be on its way)
        fence_proxy_async();          // this thread's cp.async writes, visible to the products' async proxy
        __syncthreads();              // ... and everyone's
        uint32_t ar[4][4];
        if (A_REGS) wgc_load_a_regs(ar, a, m0, M, kt * WGC_BK, K);  // written before the fence that orders them
        wgmma_fence_operand(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const int scale_d = (kt | kk) != 0;
            const uint64_t db = wgc_desc(sm.b[s], B_MN, swizzle, kk) ^ b_desc_xor;
            if constexpr (A_REGS) wgmma_rs<BN, B_MN>(acc, ar[kk], db, scale_d);
            else wgmma_ss<BN, A_MN, B_MN>(acc, wgc_desc(sm.a[s], A_MN, swizzle, kk), db, scale_d);
        }
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(acc);
        __syncthreads();  // every product that read stage s has retired before any thread refills it
        if (STAGES == 1 && kt + 1 < KT) {
            load(kt + 1, 0);
            cp_async_commit();
        }
    }
    cp_async_wait<0>();  // the last (empty) group: nothing in flight at exit

    const int t = (int)threadIdx.x, w = t >> 5, g = (t & 31) >> 2, cq = t & 3;
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        const int row = m0 + 16 * w + g + 8 * ((i >> 1) & 1), col = n0 + 8 * (i >> 2) + 2 * cq + (i & 1);
        if (row < M && col < N) c[(int64_t)row * N + col] = acc[i];
    }
}

// Grid (ceil(N / BN), ceil(M / 64)), 128 threads (wgmma_check.rs).
#define WGC_KERNEL(NAME, BN, A_MN, B_MN, A_REGS)                                                                  \
    extern "C" __global__ void __launch_bounds__(128) NAME(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, \
                                                           int M, int N, int K, int swizzle, uint64_t b_desc_xor) { \
        wgc_gemm<BN, A_MN, B_MN, A_REGS>(a, b, c, M, N, K, swizzle, b_desc_xor);                                   \
    }
WGC_KERNEL(wgc_ss_kk_n64, 64, false, false, false)
WGC_KERNEL(wgc_ss_kk_n128, 128, false, false, false)
WGC_KERNEL(wgc_ss_kk_n256, 256, false, false, false)
WGC_KERNEL(wgc_ss_mn_n64, 64, true, true, false)
WGC_KERNEL(wgc_ss_mn_n128, 128, true, true, false)
WGC_KERNEL(wgc_rs_kn_n64, 64, false, true, true)
WGC_KERNEL(wgc_rs_kk_n128, 128, false, false, true)
