// Fused LayerNorm over the last dim, forward and backward (Rust side: layer_norm.rs).
//
// Forward:  y[r, i] = (x[r, i] - mean[r]) * rstd[r] * w[i] + b[i], in the output dtype O (the caller's compute
//           dtype, so the model needs no separate cast); saves mean[r] and rstd[r] = 1 / sqrt(var[r] + eps) (f32).
// Backward: with xhat = (x - mean) * rstd and g = dy * w,
//           dx = rstd * (g - mean_i(g) - xhat * mean_i(g * xhat))                                (dtype T)
//           dw = sum_r dy * xhat,  db = sum_r dy                                                    (f32)
//
// x (N, C) T, dy (N, C) O and the outputs are contiguous; w, b, dw, db are f32 (master weights).
// One warp per row (rows are short: C = 768 at 124M), three passes over the row (mean, centred variance, output):
// the second and third hit L1, so DRAM sees one read of x and one write of y. The centred two-pass variance
// matches the composed reference (ops::layer_norm_slow) and does not cancel for rows with a large mean.
// dw/db are deterministic: each block of the backward sums its LN_BWD_ROWS rows column by column in row order into
// its own partial row, and ln_bwd_reduce sums the partials in block order. No atomics.
//
// The CPU lab runs it against a double-precision reference (dev/cuda/check.cpp), its shuffles on cuda_emu.h's
// per-warp emulation; tests/kernels_norm_act.rs holds it against the CPU twin on a GPU.
//
// Why not the engine's norm.cu: that one keeps a row in registers (C a multiple of 4, at most 2048), reads f32 and
// writes bf16 only, and adds its backward into the residual gradient with a bf16 copy; this op takes any C, f32 or
// bf16 on either side, and returns dx. They share the deterministic dw/db reduction, ln_partials.cuh.
#include "common.cuh"
#include "ln_partials.cuh"
#include "warp.cuh"

#define LN_THREADS 256
#define LN_WARPS (LN_THREADS / 32)
// Rows per backward block: enough rows that the partials stay small (N / 64 rows of C floats), few enough that
// there are several blocks per SM at N = B*T = 32768.
#define LN_BWD_ROWS 64

template <typename T, typename O>
__device__ void ln_fwd(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                       O* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int64_t n, int64_t c,
                       float eps) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * LN_WARPS + threadIdx.x / 32;
    if (row >= n) return;  // the whole warp leaves together, so the shuffles below see all 32 lanes
    const T* xr = x + row * c;
    O* yr = y + row * c;
    float s = 0.f;
    for (int64_t i = lane; i < c; i += 32) s += to_acc(xr[i]);
    const float m = warp_sum(s) / (float)c;
    float v = 0.f;
    for (int64_t i = lane; i < c; i += 32) {
        const float d = to_acc(xr[i]) - m;
        v += d * d;
    }
    const float r = 1.f / sqrtf(warp_sum(v) / (float)c + eps);
    for (int64_t i = lane; i < c; i += 32) yr[i] = from_acc<O>((to_acc(xr[i]) - m) * r * w[i] + b[i]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// partial: 2 * gridDim.x rows of C floats: dw partials of every block, then db partials of every block.
template <typename T, typename O>
__device__ void ln_bwd(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                       const float* __restrict__ rstd, const O* __restrict__ dy, T* __restrict__ dx,
                       float* __restrict__ partial, int64_t n, int64_t c) {
    const int lane = threadIdx.x % 32;
    const int64_t r0 = (int64_t)blockIdx.x * LN_BWD_ROWS;
    const int64_t r1 = r0 + LN_BWD_ROWS < n ? r0 + LN_BWD_ROWS : n;
    // dx: one warp per row.
    for (int64_t row = r0 + threadIdx.x / 32; row < r1; row += LN_WARPS) {
        const T* xr = x + row * c;
        const O* gr = dy + row * c;
        const float m = mean[row], rs = rstd[row];
        float sg = 0.f, sgx = 0.f;
        for (int64_t i = lane; i < c; i += 32) {
            const float xh = (to_acc(xr[i]) - m) * rs;
            const float g = to_acc(gr[i]) * w[i];
            sg += g;
            sgx += g * xh;
        }
        sg = warp_sum(sg) / (float)c;
        sgx = warp_sum(sgx) / (float)c;
        T* dr = dx + row * c;
        for (int64_t i = lane; i < c; i += 32) {
            const float xh = (to_acc(xr[i]) - m) * rs;
            const float g = to_acc(gr[i]) * w[i];
            dr[i] = from_acc<T>(rs * (g - sg - xh * sgx));
        }
    }
    // dw, db partials of this block's rows: one thread per column, rows in order (the rows are in L1/L2 now).
    const int64_t p = gridDim.x;
    for (int64_t col = threadIdx.x; col < c; col += blockDim.x) {
        float dw = 0.f, db = 0.f;
        for (int64_t row = r0; row < r1; row++) {
            const float d = to_acc(dy[row * c + col]);
            dw += d * ((to_acc(x[row * c + col]) - mean[row]) * rstd[row]);
            db += d;
        }
        partial[blockIdx.x * c + col] = dw;
        partial[(p + blockIdx.x) * c + col] = db;
    }
}

// dw = sum of the dw partials, db likewise (ln_partials.cuh). grid ceil(C / 32), block (32, 8).
extern "C" __global__ void __launch_bounds__(256) ln_bwd_reduce(const float* __restrict__ partial,
                                                                 float* __restrict__ dw, float* __restrict__ db,
                                                                 int64_t p, int64_t c) {
    ln_reduce_partials<false>(partial, dw, db, p, c);
}

#define LN_KERNELS(T, O, SUFFIX)                                                                                     \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_fwd_##SUFFIX(                                       \
        const T* x, const float* w, const float* b, O* y, float* mean, float* rstd, int64_t n, int64_t c,           \
        float eps) {                                                                                                \
        ln_fwd<T, O>(x, w, b, y, mean, rstd, n, c, eps);                                                            \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_bwd_##SUFFIX(                                       \
        const T* x, const float* w, const float* mean, const float* rstd, const O* dy, T* dx, float* partial,       \
        int64_t n, int64_t c) {                                                                                     \
        ln_bwd<T, O>(x, w, mean, rstd, dy, dx, partial, n, c);                                                      \
    }

// <input>_<output>: the residual stream is f32 and the output the compute dtype (bf16 on GPU), or both bf16; no f16
// (no config selects it; layer_norm.rs's `supported`).
LN_KERNELS(float, float, f32_f32)
LN_KERNELS(float, __nv_bfloat16, f32_bf16)
LN_KERNELS(__nv_bfloat16, __nv_bfloat16, bf16_bf16)
LN_KERNELS(__nv_bfloat16, float, bf16_f32)
