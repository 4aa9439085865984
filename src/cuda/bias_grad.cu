// Bias gradients for the decoder engine (Rust side: bias_grad.rs): db[j] += sum over rows r of dy[r, j], dy bf16
// (N, OC) row-major, db f32. cuBLASLt's BGRADB epilogue writes rather than adds, and the engine accumulates
// gradients over micro-steps, so the sum is its own deterministic two-stage reduction:
//   bias_grad_partial: block (x, k) owns 256 columns and the k-th contiguous range of rows; lane l of warp w sums
//     columns 8l..8l+7 (one 16-byte load per row) over rows w, w + 8, ... of the range, then the block merges its
//     warps in warp order into partial[k, :];
//   bias_grad_reduce: db[j] += sum_k partial[k, j], k in order.
// Reads dy once (0.1-0.4 GB per call at the 124M micro-batch); no atomics.
#include "common.cuh"

#define BG_THREADS 256
#define BG_WARPS 8
#define BG_COLS 256

// grid (ceil(OC / 256), chunks), block 256. OC a multiple of 8.
extern "C" __global__ void __launch_bounds__(BG_THREADS)
    bias_grad_partial(const __nv_bfloat16* __restrict__ dy, float* __restrict__ partial, int n, int oc) {
    __shared__ float sh[BG_WARPS][BG_COLS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int col0 = blockIdx.x * BG_COLS + 8 * lane;
    const int chunks = gridDim.y;
    const int rows_per = (n + chunks - 1) / chunks;
    const int lo = blockIdx.y * rows_per;
    const int hi = min(lo + rows_per, n);
    float acc[8];
#pragma unroll
    for (int k = 0; k < 8; k++) acc[k] = 0.f;
    if (col0 < oc) {
        // Four of the warp's rows loaded before any is added (one 16-byte load per lane per row left too little in
        // flight to cover memory latency at OC = 768: 3 blocks per SM); added in row order, as one at a time would.
        int r = lo + warp;
        for (; r + 3 * BG_WARPS < hi; r += 4 * BG_WARPS) {
            Vec16<__nv_bfloat16> x[4];
#pragma unroll
            for (int u = 0; u < 4; u++) x[u] = load16(dy + (int64_t)(r + u * BG_WARPS) * oc + col0);
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int k = 0; k < 8; k++) acc[k] += to_acc(x[u].v[k]);
            }
        }
        for (; r < hi; r += BG_WARPS) {
            const Vec16<__nv_bfloat16> x = load16(dy + (int64_t)r * oc + col0);
#pragma unroll
            for (int k = 0; k < 8; k++) acc[k] += to_acc(x.v[k]);
        }
    }
#pragma unroll
    for (int k = 0; k < 8; k++) sh[warp][8 * lane + k] = acc[k];
    __syncthreads();
    const int col = blockIdx.x * BG_COLS + threadIdx.x;
    if (col < oc) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < BG_WARPS; w++) s += sh[w][threadIdx.x];
        partial[(int64_t)blockIdx.y * oc + col] = s;
    }
}

// grid ceil(OC / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    bias_grad_reduce(const float* __restrict__ partial, float* __restrict__ db, int chunks, int oc) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= oc) return;
    float s = 0.f;
    for (int k = 0; k < chunks; k++) s += partial[(int64_t)k * oc + col];
    db[col] += s;
}
