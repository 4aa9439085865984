// LayerNorm for the explicit GPT-2 engine (Rust side: norm.rs): the residual stream is f32 (as under PyTorch
// autocast), the normalised output feeds a bf16 matmul, and the backward accumulates into the f32 residual gradient.
//
// Forward:  y[r, i] = (x[r, i] - mean[r]) * rstd[r] * w[i] + b[i]          x f32 -> y bf16; mean, rstd f32 (N)
// Backward: with xhat = (x - mean) * rstd and g = dy * w,
//           dres[r, i] += rstd * (g - mean_i(g) - xhat * mean_i(g * xhat))  (f32, in place)
//           dres16[r, i] = bf16(dres[r, i])   (the next matmul backward's input)
//           dw[i] += sum_r dy * xhat,  db[i] += sum_r dy                    (f32 gradient buffer)
//
// One warp per row, the row held in registers as float4 chunks (lane l owns columns 4l + 128j), so x is read once;
// the kernels are instantiated per chunk count NCH = ceil(C / 128) (1..16) so the register arrays are exactly as
// long as the row needs (`_<NCH>` suffix). C must be a multiple of 4 and at most LN_MAX_C (norm.rs checks).
// No early returns around the shuffles: rows past N compute on another row and write nothing, which also keeps the
// control flow uniform for the CPU lab.
// dw/db are deterministic: a block owns LN_BWD_ROWS consecutive rows; each lane sums its columns over its warp's
// rows in row order, the block's warps are merged in warp order, and ln_bwd_reduce adds the block partials in block
// order. No atomics anywhere.
#include "../model/kernels/common.cuh"

#define LN_THREADS 256
#define LN_WARPS 8
#define LN_MAX_C 2048
#define LN_BWD_ROWS 128

#ifdef __CUDACC__
__device__ __forceinline__ float ln_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
#else
inline float ln_warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += emu_shfl_xor(v, o);
    return v;
}
#endif

struct F4 {
    float x, y, z, w;
};
__device__ __forceinline__ F4 ld4(const float* p) {
    F4 r;
    memcpy(&r, p, 16);
    return r;
}
__device__ __forceinline__ void st4(float* p, F4 v) { memcpy(p, &v, 16); }
__device__ __forceinline__ void st4_bf16(__nv_bfloat16* p, float a, float b, float c, float d) {
    __nv_bfloat16 h[4] = {from_acc<__nv_bfloat16>(a), from_acc<__nv_bfloat16>(b), from_acc<__nv_bfloat16>(c),
                          from_acc<__nv_bfloat16>(d)};
    memcpy(p, h, 8);
}
__device__ __forceinline__ void ld4_bf16(const __nv_bfloat16* p, float (&o)[4]) {
    __nv_bfloat16 h[4];
    memcpy(h, p, 8);
    for (int i = 0; i < 4; i++) o[i] = to_acc(h[i]);
}

// grid ceil(N / 8), block 256.
template <int NCH>
__device__ void ln_fwd_engine(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                  __nv_bfloat16* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int n, int c,
                  float eps) {
    const int lane = threadIdx.x % 32;
    const int row_raw = blockIdx.x * LN_WARPS + threadIdx.x / 32;
    const bool valid = row_raw < n;
    const int64_t row = valid ? row_raw : n - 1;
    const float* xr = x + row * c;
    F4 v[NCH];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NCH; j++) {
        const int col = 4 * lane + 128 * j;
        if (col < c) {
            v[j] = ld4(xr + col);
            s += (v[j].x + v[j].y) + (v[j].z + v[j].w);
        }
    }
    const float m = ln_warp_sum(s) / (float)c;
    float q = 0.f;
#pragma unroll
    for (int j = 0; j < NCH; j++) {
        const int col = 4 * lane + 128 * j;
        if (col < c) {
            const float a = v[j].x - m, bb = v[j].y - m, cc = v[j].z - m, d = v[j].w - m;
            q += (a * a + bb * bb) + (cc * cc + d * d);
        }
    }
    const float r = 1.f / sqrtf(ln_warp_sum(q) / (float)c + eps);
    if (valid) {
        __nv_bfloat16* yr = y + row * c;
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int col = 4 * lane + 128 * j;
            if (col < c) {
                const F4 wv = ld4(w + col), bv = ld4(b + col);
                st4_bf16(yr + col, (v[j].x - m) * r * wv.x + bv.x, (v[j].y - m) * r * wv.y + bv.y,
                         (v[j].z - m) * r * wv.z + bv.z, (v[j].w - m) * r * wv.w + bv.w);
            }
        }
        if (lane == 0) {
            mean[row] = m;
            rstd[row] = r;
        }
    }
}

// grid ceil(N / LN_BWD_ROWS), block 256. partial: 2 * gridDim.x rows of C floats (dw partials, then db partials).
template <int NCH>
__device__ void ln_bwd_engine(const __nv_bfloat16* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,
                  const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ dres,
                  __nv_bfloat16* __restrict__ dres16, float* __restrict__ partial, int n, int c) {
    __shared__ float acc_w[LN_MAX_C];
    __shared__ float acc_b[LN_MAX_C];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int r0 = blockIdx.x * LN_BWD_ROWS;
    const int r1 = min(r0 + LN_BWD_ROWS, n);
    float dw[NCH][4], db[NCH][4];
#pragma unroll
    for (int j = 0; j < NCH; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) dw[j][i] = db[j][i] = 0.f;

    // Every warp runs the same number of iterations (uniform for the lab); rows past r1 do nothing.
    for (int row_raw = r0 + warp; row_raw < r0 + LN_BWD_ROWS; row_raw += LN_WARPS) {
        const bool valid = row_raw < r1;
        const int64_t row = valid ? row_raw : r0;
        const float m = mean[row], rs = rstd[row];
        float g[NCH][4], xh[NCH][4], d[NCH][4];
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int col = 4 * lane + 128 * j;
            if (col < c) {
                const F4 xv = ld4(x + row * c + col), wv = ld4(w + col);
                ld4_bf16(dy + row * c + col, d[j]);
                const float xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    xh[j][i] = (xs[i] - m) * rs;
                    g[j][i] = d[j][i] * ws[i];
                    sg += g[j][i];
                    sgx += g[j][i] * xh[j][i];
                }
            }
        }
        sg = ln_warp_sum(sg) / (float)c;
        sgx = ln_warp_sum(sgx) / (float)c;
        if (valid) {
#pragma unroll
            for (int j = 0; j < NCH; j++) {
                const int col = 4 * lane + 128 * j;
                if (col < c) {
                    F4 o = ld4(dres + row * c + col);
                    o.x += rs * (g[j][0] - sg - xh[j][0] * sgx);
                    o.y += rs * (g[j][1] - sg - xh[j][1] * sgx);
                    o.z += rs * (g[j][2] - sg - xh[j][2] * sgx);
                    o.w += rs * (g[j][3] - sg - xh[j][3] * sgx);
                    st4(dres + row * c + col, o);
                    st4_bf16(dres16 + row * c + col, o.x, o.y, o.z, o.w);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        dw[j][i] += d[j][i] * xh[j][i];
                        db[j][i] += d[j][i];
                    }
                }
            }
        }
    }
    // Merge the warps' column sums in warp order.
    for (int k = 0; k < LN_WARPS; k++) {
        if (warp == k) {
#pragma unroll
            for (int j = 0; j < NCH; j++) {
                const int col = 4 * lane + 128 * j;
                if (col < c) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        acc_w[col + i] = k == 0 ? dw[j][i] : acc_w[col + i] + dw[j][i];
                        acc_b[col + i] = k == 0 ? db[j][i] : acc_b[col + i] + db[j][i];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int col = threadIdx.x; col < c; col += LN_THREADS) {
        partial[(int64_t)blockIdx.x * c + col] = acc_w[col];
        partial[(int64_t)(gridDim.x + blockIdx.x) * c + col] = acc_b[col];
    }
}

// dw[c] += sum_k partial[k][c], db[c] += sum_k partial[p + k][c], k in order. grid ceil(C / 32), block (32, 8): the
// partials split 8 ways by k mod 8, merged in y order.
extern "C" __global__ void __launch_bounds__(256)
    ln_bwd_reduce_engine(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db, int p,
                         int c) {
    __shared__ float sw[8][33];
    __shared__ float sb[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * 32 + tx;
    float aw = 0.f, ab = 0.f;
    if (col < c) {
        for (int k = ty; k < p; k += 8) {
            aw += partial[(int64_t)k * c + col];
            ab += partial[(int64_t)(p + k) * c + col];
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && col < c) {
        float a = 0.f, bb = 0.f;
        for (int j = 0; j < 8; j++) {
            a += sw[j][tx];
            bb += sb[j][tx];
        }
        dw[col] += a;
        db[col] += bb;
    }
}

#define LN_ENGINE_KERNELS(NCH)                                                                                      \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_fwd_engine_##NCH(                                  \
        const float* x, const float* w, const float* b, __nv_bfloat16* y, float* mean, float* rstd, int n, int c,  \
        float eps) {                                                                                               \
        ln_fwd_engine<NCH>(x, w, b, y, mean, rstd, n, c, eps);                                                     \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_bwd_engine_##NCH(                                  \
        const __nv_bfloat16* dy, const float* x, const float* w, const float* mean, const float* rstd, float* dres, \
        __nv_bfloat16* dres16, float* partial, int n, int c) {                                                     \
        ln_bwd_engine<NCH>(dy, x, w, mean, rstd, dres, dres16, partial, n, c);                                     \
    }
LN_ENGINE_KERNELS(1)
LN_ENGINE_KERNELS(2)
LN_ENGINE_KERNELS(3)
LN_ENGINE_KERNELS(4)
LN_ENGINE_KERNELS(5)
LN_ENGINE_KERNELS(6)
LN_ENGINE_KERNELS(7)
LN_ENGINE_KERNELS(8)
LN_ENGINE_KERNELS(9)
LN_ENGINE_KERNELS(10)
LN_ENGINE_KERNELS(11)
LN_ENGINE_KERNELS(12)
LN_ENGINE_KERNELS(13)
LN_ENGINE_KERNELS(14)
LN_ENGINE_KERNELS(15)
LN_ENGINE_KERNELS(16)
