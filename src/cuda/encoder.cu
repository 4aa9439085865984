// Token embeddings (Rust side: encoder.rs for the engine, model::kernels::embedding for the candle op's backward):
// token (+ learned position) embedding into the f32 residual stream, and the deterministic backward.
//
// Forward:  x[b, t, :] = wte[idx[b, t], :] + wpe[t, :]            (f32 master tables -> f32 residual)
//           x[b, t, :] = wte[idx[b, t], :]                        (encoder_fwd_tokens: rotary models have no wpe)
// Backward: dwte[id, :] += sum of dx[r, :] over the rows r with idx[r] == id, rows in ascending order
//           dwpe[t, :]  += sum over b of dx[b, t, :], b in ascending order
//
// The wte backward is the grouped sum the candle op's embedding backward runs too (embedding_bwd_groups below: the
// host sorts the ids into groups, stable, so each group lists its rows in order), with `+=` instead of `=`.
//
// Why a grouped sum and not candle's index_add: its CUDA kernel gives one thread per column (C = 768 threads for
// GPT-2's wte) and walks all N ids serially in each, so at N = 65536 tokens the whole GPU runs 24 warps through 65536
// dependent read-modify-writes (36 ms per micro-step measured on the H100). Why not atomics (the first version: one
// block per row, atomicAdd into the id's row): rows with the same id then add in whatever order the blocks run, so
// the table changed in its last bits from run to run and no two GPU training runs were bitwise equal (a one-rank
// data-parallel run drifted 1e-5 in loss from a plain one over 30 steps).
// No atomics: the sums run in a fixed order, so a run repeats bit for bit.
#include "common.cuh"

template <bool POS>
__device__ __forceinline__ void encoder_fwd_rows(const uint32_t* __restrict__ idx, const float* __restrict__ wte,
                                                 const float* __restrict__ wpe, float* __restrict__ x, int n, int t_len,
                                                 int c) {
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= (int64_t)n * c) return;
    const int64_t row = i / c;
    const int col = (int)(i % c);
    const Vec16<float> a = load16(wte + (int64_t)idx[row] * c + col);
    if (!POS) {
        store16(x + i, a);
        return;
    }
    const int t = (int)(row % t_len);
    const Vec16<float> p = load16(wpe + (int64_t)t * c + col);
    Vec16<float> o;
#pragma unroll
    for (int k = 0; k < 4; k++) o.v[k] = a.v[k] + p.v[k];
    store16(x + i, o);
}

// grid ceil(N * C / 4 / 256), block 256; C a multiple of 4.
extern "C" __global__ void __launch_bounds__(256)
    encoder_fwd(const uint32_t* __restrict__ idx, const float* __restrict__ wte, const float* __restrict__ wpe,
                float* __restrict__ x, int n, int t_len, int c) {
    encoder_fwd_rows<true>(idx, wte, wpe, x, n, t_len, c);
}

// As encoder_fwd without positions.
extern "C" __global__ void __launch_bounds__(256)
    encoder_fwd_tokens(const uint32_t* __restrict__ idx, const float* __restrict__ wte, float* __restrict__ x, int n,
                       int c) {
    encoder_fwd_rows<false>(idx, wte, nullptr, x, n, 1, c);
}

// The grouped sum both embedding backwards share: block (g, cy) of grid (G, ceil(C / blockDim)) adds group g's rows
// of dy (rows `dy_stride` apart) for blockDim.x columns, in the group's (ascending) row order, into dtable's row of
// the group's id: `+=` with ACC (the engine: dwte already holds the tied lm_head's gradient), else `=` (the candle op
// sums into zeros: equal bit for bit to candle's CPU index_add, which adds the same rows in the same order).
#define EMB_THREADS 256
// Rows loaded ahead of the (in-order) additions, so a long group is not one dependent load per row.
#define EMB_UNROLL 8

template <bool ACC>
__device__ __forceinline__ void embedding_bwd_groups(const uint32_t* __restrict__ rows,
                                                     const uint32_t* __restrict__ group_start,
                                                     const uint32_t* __restrict__ group_id,
                                                     const float* __restrict__ dy, float* __restrict__ dtable,
                                                     int64_t c, int64_t dy_stride) {
    const int64_t g = blockIdx.x;
    const int64_t col = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= c) return;
    const uint32_t begin = group_start[g], end = group_start[g + 1];
    float acc = 0.f;
    uint32_t k = begin;
    for (; k + EMB_UNROLL <= end; k += EMB_UNROLL) {
        float v[EMB_UNROLL];
#pragma unroll
        for (int u = 0; u < EMB_UNROLL; u++) v[u] = dy[(int64_t)rows[k + u] * dy_stride + col];
#pragma unroll
        for (int u = 0; u < EMB_UNROLL; u++) acc += v[u];
    }
    for (; k < end; k++) acc += dy[(int64_t)rows[k] * dy_stride + col];
    float* out = dtable + (int64_t)group_id[g] * c + col;
    *out = ACC ? *out + acc : acc;
}

// The engine's wte backward: dx (N, C) dense. grid (G, ceil(C / 256)), block 256.
extern "C" __global__ void __launch_bounds__(EMB_THREADS)
    encoder_bwd_wte(const uint32_t* __restrict__ rows, const uint32_t* __restrict__ group_start,
                    const uint32_t* __restrict__ group_id, const float* __restrict__ dx, float* __restrict__ dwte,
                    int c) {
    embedding_bwd_groups<true>(rows, group_start, group_id, dx, dwte, c, c);
}

// The candle op's (model::kernels::embedding): rows (N) grouped by id, group_start (G + 1) offsets into rows,
// group_id (G); dy (N, C) with rows dy_stride apart; dtable (V, C) dense, zeroed by the caller (ids in no group stay
// 0). grid (G, ceil(C / 256)), block 256.
extern "C" __global__ void __launch_bounds__(EMB_THREADS)
    embedding_bwd_sorted_f32(const uint32_t* __restrict__ rows, const uint32_t* __restrict__ group_start,
                             const uint32_t* __restrict__ group_id, const float* __restrict__ dy,
                             float* __restrict__ dtable, int64_t c, int64_t dy_stride) {
    embedding_bwd_groups<false>(rows, group_start, group_id, dy, dtable, c, dy_stride);
}

// grid ceil(T * C / 256), block 256: one thread per (t, column).
extern "C" __global__ void __launch_bounds__(256)
    encoder_bwd_wpe(const float* __restrict__ dx, float* __restrict__ dwpe, int b, int t_len, int c) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)t_len * c) return;
    float acc = 0.f;
    for (int bb = 0; bb < b; bb++) acc += dx[(int64_t)bb * t_len * c + i];
    dwpe[i] += acc;
}
