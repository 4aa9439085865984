// What the flash-attention kernels share (flash_attn.cu, the mma.sync kernels; flash_bwd_sm90.cu, the backward
// on Hopper's wgmma): the strided layout of the head-size tensors, the 64-column tiles in shared memory with their
// XOR swizzle, the cp.async loads and 16-byte stores of such tiles, and the order in which a 1-D grid walks the
// (head, block) pairs. flash_attn.cu's header comment describes the scheme.
#pragma once
#include "common.cuh"
#include "cp_async.cuh"

#define FA2_HS 64          // head size
#define FA2_CH 8           // 16-byte chunks per row (HS * 2 bytes / 16)
#define FA2_TILE 64        // rows of a streamed tile

// 2^x; ex2.approx: 2 ulp, -inf -> +0 (the masked scores).
#ifdef __CUDACC__
__device__ __forceinline__ float fa2_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
#else
inline float fa2_exp2(float x) { return std::exp2(x); }
#endif

// Where the heads of one tensor live (elements): row t of head h in batch b starts at b * b_ + h * h_ + t * t_.
struct Fa2Strides {
    int64_t b_, h_, t_;
};
// The strides of one call: q, k, v and their gradients (the candle op's inputs are views, its gradients dense), y
// (and dy, which shares y's layout). A kernel argument by value: it lives in the constant bank, not in registers.
struct Fa2Layout {
    Fa2Strides q, k, v, y, dq, dk, dv;
};
// The first row of head h of batch b.
template <typename P> __device__ __forceinline__ P* fa2_head(P* base, const Fa2Strides& s, int b, int h) {
    return base + (int64_t)b * s.b_ + (int64_t)h * s.h_;
}

// ---- shared-memory tiles ---------------------------------------------------------------------------------------
// Element offset of (row, col) in a [rows][64] tile whose 16-byte chunks are XOR-swizzled by row & 7.
__device__ __forceinline__ int fa2_swz(int row, int col) {
    return row * FA2_HS + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}

// cp.async rows row0 .. row0 + ROWS - 1 of a (t_len, 64) matrix (row stride `ld` elements, 16-byte aligned rows)
// into tile `s`; rows >= t_len are zero-filled.
template <int ROWS, int NT, typename T>
__device__ __forceinline__ void fa2_load_tile(T* s, const T* g, int64_t ld, int row0, int t_len) {
    static_assert(ROWS * FA2_CH % NT == 0, "whole 16-byte chunks per thread");
#pragma unroll
    for (int i = 0; i < ROWS * FA2_CH / NT; i++) {
        const int e = i * NT + (int)threadIdx.x, r = e / FA2_CH, ch = e % FA2_CH, row = row0 + r;
        const bool ok = row < t_len;
        cp_async16(s + fa2_swz(r, ch * 8), g + (int64_t)(ok ? row : 0) * ld + ch * 8, ok);
    }
}

// 16-byte stores of tile `s` (swizzled) rows < t_len - row0 to global rows row0.. (row stride ld).
template <int ROWS, int NT, typename T>
__device__ __forceinline__ void fa2_store_tile(T* g, int64_t ld, const T* s, int row0, int t_len) {
    static_assert(ROWS * FA2_CH % NT == 0, "whole 16-byte chunks per thread");
#pragma unroll
    for (int i = 0; i < ROWS * FA2_CH / NT; i++) {
        const int e = i * NT + (int)threadIdx.x, r = e / FA2_CH, ch = e % FA2_CH, row = row0 + r;
        if (row < t_len)
            *reinterpret_cast<uint4*>(g + (int64_t)row * ld + ch * 8) = *reinterpret_cast<const uint4*>(s + fa2_swz(r, ch * 8));
    }
}

// The (head, block) a CTA of a 1-D grid of n_bh * n_blocks works on: heads in groups of `group`, inside a group
// block rank r (0 = most work) of every head before rank r + 1. `reverse`: rank r is block n_blocks - 1 - r.
__device__ __forceinline__ void fa2_coords(int n_blocks, int n_bh, int group, bool reverse, int& bh, int& blk) {
    const int per = group * n_blocks;
    const int chunk = (int)blockIdx.x / per, r = (int)blockIdx.x - chunk * per;
    const int g0 = chunk * group, gn = min(group, n_bh - g0);
    const int rank = r / gn;
    bh = g0 + (r - rank * gn);
    blk = reverse ? n_blocks - 1 - rank : rank;
}

// The query block a forward or dQ CTA works on (longest blocks first), and its query head's q, k and v.
template <typename T> struct Fa2QueryBlock {
    int b, h, bh, blk;
    const T *q, *k, *v;
};
template <typename T>
__device__ __forceinline__ Fa2QueryBlock<T> fa2_query_block(int rows, const T* q, const T* k, const T* v,
                                                            const Fa2Layout& L, int nh, int nkv, int t_len, int group) {
    Fa2QueryBlock<T> qb;
    const int n_qb = (t_len + rows - 1) / rows;
    fa2_coords(n_qb, (int)(gridDim.x / n_qb), group, true, qb.bh, qb.blk);
    qb.b = qb.bh / nh;
    qb.h = qb.bh - qb.b * nh;
    const int hk = qb.h / (nh / nkv);
    qb.q = fa2_head(q, L.q, qb.b, qb.h);
    qb.k = fa2_head(k, L.k, qb.b, hk);
    qb.v = fa2_head(v, L.v, qb.b, hk);
    return qb;
}
