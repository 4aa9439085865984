// The decoder engine's embeddings (Rust side: encoder.rs): token (+ learned position) embedding into the f32 residual
// stream, and its deterministic backward.
//
// Forward:  x[b, t, :] = wte[idx[b, t], :] + wpe[t, :]            (f32 master tables -> f32 residual)
//           x[b, t, :] = wte[idx[b, t], :]                        (encoder_fwd_tokens: rotary models have no wpe)
// Backward: dwte[id, :] += sum of dx[r, :] over the rows r with idx[r] == id, rows in ascending order
//           dwpe[t, :]  += sum over b of dx[b, t, :], b in ascending order
//
// The wte backward is embedding.cu's grouped sum (the host sorts the ids into groups, stable, so each group lists
// its rows in order) with `+=` instead of `=`: in the engine dwte already holds the tied lm_head's gradient.
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

// grid (G, ceil(C / 256)), block 256: block (g, cy) sums group g's rows for 256 columns.
extern "C" __global__ void __launch_bounds__(256)
    encoder_bwd_wte(const uint32_t* __restrict__ rows, const uint32_t* __restrict__ group_start,
                    const uint32_t* __restrict__ group_id, const float* __restrict__ dx, float* __restrict__ dwte,
                    int c) {
    const int64_t g = blockIdx.x;
    const int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= c) return;
    const uint32_t begin = group_start[g], end = group_start[g + 1];
    float acc = 0.f;
    uint32_t k = begin;
    // Loads run ahead of the in-order additions.
    for (; k + 8 <= end; k += 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = dx[(int64_t)rows[k + u] * c + col];
#pragma unroll
        for (int u = 0; u < 8; u++) acc += v[u];
    }
    for (; k < end; k++) acc += dx[(int64_t)rows[k] * c + col];
    dwte[(int64_t)group_id[g] * c + col] += acc;
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
