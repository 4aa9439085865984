// What the flash-attention kernels share (flash_attn.cu, the mma.sync kernels; flash_bwd_sm90.cu, the backward
// on Hopper's wgmma): the strided layout of the head-size tensors, the 64-column tiles in shared memory with their
// XOR swizzle, the cp.async loads and 16-byte stores of such tiles, and the order in which a 1-D grid walks the
// (head, block) pairs. flash_attn.cu's header comment describes the scheme.
#pragma once
#include "common.cuh"
#include "cp_async.cuh"
#include "warp.cuh"

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
// into tile `s` by NT threads, this one number `tid` of them; rows >= t_len are zero-filled.
template <int ROWS, int NT, typename T>
__device__ __forceinline__ void fa2_load_tile(T* s, const T* g, int64_t ld, int row0, int t_len, int tid = (int)threadIdx.x) {
    static_assert(ROWS * FA2_CH % NT == 0, "whole 16-byte chunks per thread");
#pragma unroll
    for (int i = 0; i < ROWS * FA2_CH / NT; i++) {
        const int e = i * NT + tid, r = e / FA2_CH, ch = e % FA2_CH, row = row0 + r;
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

// The backward's softmax statistics of this thread's two rows row0 and row0 + 8: lse in log2 units; rows >= T get 0
// (their output is dropped).
__device__ __forceinline__ void fa2_lse_rows(float l2[2], const float* __restrict__ lse, int64_t bh, int t_len, int row0) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int row = row0 + 8 * hf;
        l2[hf] = row < t_len ? lse[bh * t_len + row] * TM_LOG2E : 0.f;
    }
}

// D = rowsum(dY * Y) of a query block's rows, from its dY (dys) and Y (ys) tiles in shared memory (swizzled, 64
// columns): two threads per row (row r on threads 2r and 2r + 1: lanes 2 (r % 16) and 2 (r % 16) + 1 of warp r / 16,
// the warp whose accumulators hold the row), each 32 columns as four 16-byte chunks in column order; the halves add
// up in a fixed order. Rows >= T are zero-filled: D = 0. Row q0 + r of dvec gets D (rows < T); dd gets the D of this
// thread's rows g and g + 8 of its warp's 16.
template <typename T>
__device__ __forceinline__ void fa2_block_d(float dd[2], const T* ys, const T* dys, float* __restrict__ dvec, int64_t bh, int t_len,
                                            int q0, int tid, int g) {
    const int r = tid >> 1, half = tid & 1;
    float part = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int off = fa2_swz(r, (half * 4 + i) * 8);
        const uint4 a = *reinterpret_cast<const uint4*>(ys + off), d = *reinterpret_cast<const uint4*>(dys + off);
        const T* ae = reinterpret_cast<const T*>(&a);
        const T* de = reinterpret_cast<const T*>(&d);
#pragma unroll
        for (int j = 0; j < 8; j++) part += to_acc(ae[j]) * to_acc(de[j]);
    }
    const float dsum = part + warp_shfl_xor(part, 1);  // commutative: both threads hold the same sum
    if (half == 0 && q0 + r < t_len) dvec[bh * t_len + q0 + r] = dsum;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) dd[hf] = warp_shfl(dsum, 2 * (g + 8 * hf));
}

// Stage `st` of a dK/dV kernel's stream of query tiles: rows i0 .. i0 + 63 of query head hq (batch b): their Q and dY
// tiles into qs and gs (64 rows each), their lse and D into lsm and dsm (rows >= T: zero-filled); by NT threads,
// this one number `tid` of them.
template <int NT, typename T>
__device__ __forceinline__ void fa2_load_q_stage(T* qs, T* gs, float* lsm, float* dsm, const T* q, const T* dy,
                                                 const float* __restrict__ lse, const float* __restrict__ dvec,
                                                 const Fa2Layout& L, int b, int nh, int hq, int i0, int t_len, int tid) {
    const int64_t bq = (int64_t)b * nh + hq;
    fa2_load_tile<FA2_TILE, NT>(qs, fa2_head(q, L.q, b, hq), L.q.t_, i0, t_len, tid);
    fa2_load_tile<FA2_TILE, NT>(gs, fa2_head(dy, L.y, b, hq), L.y.t_, i0, t_len, tid);
    for (int e = tid; e < FA2_TILE; e += NT) {
        const bool ok = i0 + e < t_len;
        cp_async4(&lsm[e], lse + bq * t_len + (ok ? i0 + e : 0), ok);
        cp_async4(&dsm[e], dvec + bq * t_len + (ok ? i0 + e : 0), ok);
    }
}
