// LayerNorm and RMSNorm, the one norm kernel of tokenmill, for two callers (Rust sides: src/cuda/norm.rs and
// model/kernels/layer_norm.rs):
// - the decoder engine: the residual stream is f32 (as under PyTorch autocast), the normalised output feeds a bf16
//   matmul, and the backward accumulates into the f32 residual gradient and writes its bf16 copy (ACC);
// - the candle LayerNorm op: x and y f32 or bf16 in any pair (TX, TY), the backward returns dx (x's dtype).
// One kernel per pass with the norm as a template parameter (RMS): RMSNorm is LayerNorm with the mean fixed at 0 and
// no bias, so both share every line but the mean's reduction, the bias and the mean's term of the backward.
//
// LayerNorm forward:  y[r, i] = (x[r, i] - mean[r]) * rstd[r] * w[i] + b[i]    x f32 -> y bf16; mean, rstd f32 (N)
//                     rstd = 1 / sqrt(mean_i((x - mean)^2) + eps)
// RMSNorm forward:    y[r, i] = x[r, i] * rstd[r] * w[i],  rstd = 1 / sqrt(mean_i(x^2) + eps)     (mean not written)
//           either optionally fused with the residual add before it: x = res + delta, res_out = x  (f32 + bf16 -> f32)
// Backward: with xhat = (x - mean) * rstd (mean = 0 for RMSNorm) and g = dy * w,
//           LayerNorm: dx[r, i] (+)= rstd * (g - mean_i(g) - xhat * mean_i(g * xhat))  (engine: f32 dres, in place)
//           RMSNorm:   dx[r, i] (+)= rstd * (g - xhat * mean_i(g * xhat))
//           engine:    dres16[r, i] = bf16(dres[r, i])   (the next matmul backward's input)
//           dw[i] (+)= sum_r dy * xhat,  db[i] (+)= sum_r dy (LayerNorm only)     (f32; += in the engine's buffers)
//
// One warp per row, the row held in registers as float4 chunks (lane l owns columns 4l + 128j), so x is read once;
// the kernels are instantiated per chunk count NCH = ceil(C / 128) (1..16) so the register arrays are exactly as
// long as the row needs (`_<NCH>` suffix). C must be a multiple of 4 and at most LN_MAX_C, every row 4-element
// aligned (norm.rs and layer_norm.rs check; the candle op routes other shapes to the composed version).
// No early returns around the shuffles: rows past N compute on another row and write nothing, which also keeps the
// control flow uniform for the CPU lab.
// dw/db are deterministic: a block owns `rows` consecutive rows (a multiple of LN_WARPS, a launch argument: norm.rs
// picks LN_BWD_ROWS where that fills the GPU and fewer where it would not); each lane sums its columns over its
// warp's rows in row order, the block's warps are merged in warp order, and ln_bwd_reduce adds the block partials in
// block order. No atomics anywhere; the sums depend on `rows`, which norm.rs derives from N and the GPU's SM count
// alone.
#include "common.cuh"
#include "warp.cuh"

#define LN_THREADS 256
#define LN_WARPS 8
#define LN_MAX_C 2048
#define LN_BWD_ROWS 256  // the backward's rows per block where N / LN_BWD_ROWS blocks fill the GPU
// The backward holds a row's x, dy, dw and db sums (and, up to 6 chunks, its residual gradient) in registers: up to 6
// chunks (C <= 768) that fits 128 registers, two blocks per SM; wider rows get the whole register file (one block per
// SM) and read the residual gradient after the reductions, where at 128 registers they spilled 0.4-1.7 KB per thread
// (ptxas: C = 1024, 1600, 2048). norm.rs sizes the grid to match (bwd_rows).
#define LN_BWD_PRELOAD_MAX_NCH 6
#define LN_BWD_MIN_BLOCKS(NCH) ((NCH) <= LN_BWD_PRELOAD_MAX_NCH ? 2 : 1)

// Vector accesses through aligned types (a memcpy to global memory compiles to byte stores, which measured
// both slow and wrong here: the bf16 output lost its low bytes on the H200).
struct alignas(16) F4 {
    float x, y, z, w;
};
struct alignas(8) H4 {  // four bf16
    uint32_t lo, hi;
};
__device__ __forceinline__ F4 ld4(const float* p) { return *reinterpret_cast<const F4*>(p); }
__device__ __forceinline__ void st4(float* p, F4 v) { *reinterpret_cast<F4*>(p) = v; }
__device__ __forceinline__ uint32_t bf16_bits(float a) {
    const __nv_bfloat16 h = from_acc<__nv_bfloat16>(a);
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
__device__ __forceinline__ float bf16_from_bits(uint32_t u) {
    const uint16_t v = (uint16_t)u;
    __nv_bfloat16 h;
    memcpy(&h, &v, 2);
    return to_acc(h);
}
__device__ __forceinline__ void st4_bf16(__nv_bfloat16* p, float a, float b, float c, float d) {
    H4 h;
    h.lo = bf16_bits(a) | (bf16_bits(b) << 16);
    h.hi = bf16_bits(c) | (bf16_bits(d) << 16);
    *reinterpret_cast<H4*>(p) = h;
}
__device__ __forceinline__ void unpack4_bf16(const H4 h, float (&o)[4]) {
    o[0] = bf16_from_bits(h.lo & 0xffffu);
    o[1] = bf16_from_bits(h.lo >> 16);
    o[2] = bf16_from_bits(h.hi & 0xffffu);
    o[3] = bf16_from_bits(h.hi >> 16);
}
__device__ __forceinline__ void ld4_bf16(const __nv_bfloat16* p, float (&o)[4]) {
    unpack4_bf16(*reinterpret_cast<const H4*>(p), o);
}

// Four consecutive elements of T (f32 or bf16) as one aligned access (`Quad<T>::packed`, kept packed in registers),
// and their conversions to and from f32: the same code for both element types of both callers.
template <typename T> struct Quad;
template <> struct Quad<float> {
    typedef F4 packed;
};
template <> struct Quad<__nv_bfloat16> {
    typedef H4 packed;
};
template <typename T> __device__ __forceinline__ typename Quad<T>::packed ldq(const T* p) {
    return *reinterpret_cast<const typename Quad<T>::packed*>(p);
}
__device__ __forceinline__ void unq(const F4 v, float (&o)[4]) { o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w; }
__device__ __forceinline__ void unq(const H4 h, float (&o)[4]) { unpack4_bf16(h, o); }
__device__ __forceinline__ F4 ld4_as_f32(const float* p) { return ld4(p); }
__device__ __forceinline__ F4 ld4_as_f32(const __nv_bfloat16* p) {
    float o[4];
    ld4_bf16(p, o);
    return F4{o[0], o[1], o[2], o[3]};
}
__device__ __forceinline__ void stq(float* p, float a, float b, float c, float d) { st4(p, F4{a, b, c, d}); }
__device__ __forceinline__ void stq(__nv_bfloat16* p, float a, float b, float c, float d) { st4_bf16(p, a, b, c, d); }

// The backward's chunk of a row: dy unpacked into d, and the weights of its columns (both passes over the row use
// them: recomputing g = dy * w costs less than holding it in registers).
template <typename P> __device__ __forceinline__ F4 dy_and_w(const P dh, const float* w, float (&d)[4]) {
    unq(dh, d);
    return ld4(w);
}

// grid ceil(N / 8), block 256. With RES, the row is first the residual sum x = res + delta (f32 + bf16: a
// projection's output added to the stream, as PyTorch autocast adds a bf16 linear output to an f32 tensor), stored
// to res_out; without, x is read from res and delta/res_out are unused.
template <int NCH, bool RES, bool RMS, typename TX, typename TY>
__device__ void norm_fwd(const TX* __restrict__ res, const __nv_bfloat16* __restrict__ delta, TX* __restrict__ res_out,
                         const float* __restrict__ w, const float* __restrict__ b, TY* __restrict__ y,
                         float* __restrict__ mean, float* __restrict__ rstd, int n, int c, float eps) {
    const int lane = threadIdx.x % 32;
    const int row_raw = blockIdx.x * LN_WARPS + threadIdx.x / 32;
    const bool valid = row_raw < n;
    const int64_t row = valid ? row_raw : n - 1;
    F4 v[NCH];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NCH; j++) {
        const int col = 4 * lane + 128 * j;
        if (col < c) {
            v[j] = ld4_as_f32(res + row * c + col);
            if (RES) {
                float d[4];
                ld4_bf16(delta + row * c + col, d);
                v[j].x += d[0];
                v[j].y += d[1];
                v[j].z += d[2];
                v[j].w += d[3];
                if (valid) stq(res_out + row * c + col, v[j].x, v[j].y, v[j].z, v[j].w);
            }
            s += (v[j].x + v[j].y) + (v[j].z + v[j].w);
        }
    }
    const float m = RMS ? 0.f : warp_sum(s) / (float)c;
    float q = 0.f;
#pragma unroll
    for (int j = 0; j < NCH; j++) {
        const int col = 4 * lane + 128 * j;
        if (col < c) {
            const float a = v[j].x - m, bb = v[j].y - m, cc = v[j].z - m, d = v[j].w - m;
            q += (a * a + bb * bb) + (cc * cc + d * d);
        }
    }
    const float r = 1.f / sqrtf(warp_sum(q) / (float)c + eps);
    if (valid) {
        TY* yr = y + row * c;
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int col = 4 * lane + 128 * j;
            if (col < c) {
                const F4 wv = ld4(w + col);
                if (RMS) {
                    stq(yr + col, v[j].x * r * wv.x, v[j].y * r * wv.y, v[j].z * r * wv.z, v[j].w * r * wv.w);
                } else {
                    const F4 bv = ld4(b + col);
                    stq(yr + col, (v[j].x - m) * r * wv.x + bv.x, (v[j].y - m) * r * wv.y + bv.y,
                        (v[j].z - m) * r * wv.z + bv.z, (v[j].w - m) * r * wv.w + bv.w);
                }
            }
        }
        if (lane == 0) {
            if (!RMS) mean[row] = m;
            rstd[row] = r;
        }
    }
}

// grid ceil(N / rows), block 256 (LN_BWD_MIN_BLOCKS per SM: the launch bound caps registers). partial:
// 2 * gridDim.x rows of C floats (dw partials, then db partials; RMSNorm writes only the first gridDim.x). A lane
// keeps its row's x (as f32) and dy (packed) and its columns' dw/db sums in registers; everything else is recomputed
// rather than held. ACC (the engine): dx is the running residual gradient, added into, and dres16 its bf16 copy;
// otherwise dx is written and dres16 unused.
template <int NCH, bool RMS, typename TX, typename TY, bool ACC>
__device__ void norm_bwd(const TY* __restrict__ dy, const TX* __restrict__ x, const float* __restrict__ w,
                         const float* __restrict__ mean, const float* __restrict__ rstd, TX* __restrict__ dres,
                         __nv_bfloat16* __restrict__ dres16, float* __restrict__ partial, int n, int c, int rows) {
    __shared__ float acc_w[LN_MAX_C];
    __shared__ float acc_b[LN_MAX_C];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int r0 = blockIdx.x * rows;
    const int r1 = min(r0 + rows, n);
    F4 dw[NCH], db[NCH];
#pragma unroll
    for (int j = 0; j < NCH; j++) dw[j] = db[j] = F4{0.f, 0.f, 0.f, 0.f};

    // Every warp runs the same number of iterations (uniform for the lab); rows past r1 do nothing.
    for (int row_raw = r0 + warp; row_raw < r0 + rows; row_raw += LN_WARPS) {
        const bool valid = row_raw < r1;
        const int64_t row = valid ? row_raw : r0;
        const float m = RMS ? 0.f : mean[row], rs = rstd[row];
        // Every load of the row is issued before the reductions need any of them, the residual gradient this row
        // adds into included (up to LN_BWD_PRELOAD_MAX_NCH chunks), so a warp waits on memory once per row (reading
        // dres after the shuffles made it a second round trip). dy stays packed bf16 in registers (half the
        // registers of f32), unpacked where used.
        constexpr bool PRELOAD = ACC && NCH <= LN_BWD_PRELOAD_MAX_NCH;
        F4 xv[NCH] = {}, ov[PRELOAD ? NCH : 1] = {};
        typename Quad<TY>::packed dh[NCH] = {};
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int col = 4 * lane + 128 * j;
            if (col < c) {
                xv[j] = ld4_as_f32(x + row * c + col);
                dh[j] = ldq(dy + row * c + col);
                if (PRELOAD) ov[PRELOAD ? j : 0] = ld4_as_f32(dres + row * c + col);
            }
        }
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int j = 0; j < NCH; j++) {
            const int col = 4 * lane + 128 * j;
            if (col < c) {
                float d[4];
                const F4 wv = dy_and_w(dh[j], w + col, d);
                // xhat in place of x from here on
                xv[j] = F4{(xv[j].x - m) * rs, (xv[j].y - m) * rs, (xv[j].z - m) * rs, (xv[j].w - m) * rs};
                const float g0 = d[0] * wv.x, g1 = d[1] * wv.y, g2 = d[2] * wv.z, g3 = d[3] * wv.w;
                sg += (g0 + g1) + (g2 + g3);
                sgx += (g0 * xv[j].x + g1 * xv[j].y) + (g2 * xv[j].z + g3 * xv[j].w);
            }
        }
        sg = RMS ? 0.f : warp_sum(sg) / (float)c;
        sgx = warp_sum(sgx) / (float)c;
        if (valid) {
#pragma unroll
            for (int j = 0; j < NCH; j++) {
                const int col = 4 * lane + 128 * j;
                if (col < c) {
                    float d[4];
                    const F4 wv = dy_and_w(dh[j], w + col, d);
                    // zeros without ACC
                    F4 o = PRELOAD ? ov[PRELOAD ? j : 0] : ACC ? ld4_as_f32(dres + row * c + col) : F4{0.f, 0.f, 0.f, 0.f};
                    o.x += rs * (d[0] * wv.x - sg - xv[j].x * sgx);
                    o.y += rs * (d[1] * wv.y - sg - xv[j].y * sgx);
                    o.z += rs * (d[2] * wv.z - sg - xv[j].z * sgx);
                    o.w += rs * (d[3] * wv.w - sg - xv[j].w * sgx);
                    stq(dres + row * c + col, o.x, o.y, o.z, o.w);
                    if (ACC) st4_bf16(dres16 + row * c + col, o.x, o.y, o.z, o.w);
                    dw[j].x += d[0] * xv[j].x;
                    dw[j].y += d[1] * xv[j].y;
                    dw[j].z += d[2] * xv[j].z;
                    dw[j].w += d[3] * xv[j].w;
                    db[j].x += d[0];
                    db[j].y += d[1];
                    db[j].z += d[2];
                    db[j].w += d[3];
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
                    const float wv[4] = {dw[j].x, dw[j].y, dw[j].z, dw[j].w}, bv[4] = {db[j].x, db[j].y, db[j].z, db[j].w};
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        acc_w[col + i] = k == 0 ? wv[i] : acc_w[col + i] + wv[i];
                        if (!RMS) acc_b[col + i] = k == 0 ? bv[i] : acc_b[col + i] + bv[i];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int col = threadIdx.x; col < c; col += LN_THREADS) {
        partial[(int64_t)blockIdx.x * c + col] = acc_w[col];
        if (!RMS) partial[(int64_t)(gridDim.x + blockIdx.x) * c + col] = acc_b[col];
    }
}

// The last step of every norm backward: the weight and bias gradients from per-block partial column sums, in a fixed
// order (no atomics).
//   dw[col] (= or +=) sum_k partial[k][col],  db[col] (= or +=) sum_k partial[p + k][col]
// Block (32, 8): 32 columns; the p partial rows split 8 ways by k mod 8, then merged in shared memory in y order.
// ACC adds into dw/db (the engine accumulates gradients over micro-steps); otherwise they are overwritten (the op).
// Without BIAS (RMSNorm) there are only the dw partials and db is not touched.
template <bool ACC, bool BIAS = true>
__device__ void ln_reduce_partials(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db,
                                   int64_t p, int64_t c) {
    __shared__ float sw[8][33];
    __shared__ float sb[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t col = (int64_t)blockIdx.x * 32 + tx;
    float aw = 0.f, ab = 0.f;
    if (col < c) {
        for (int64_t k = ty; k < p; k += 8) {
            aw += partial[k * c + col];
            if (BIAS) ab += partial[(p + k) * c + col];
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && col < c) {
        float w = 0.f, b = 0.f;
        for (int j = 0; j < 8; j++) {
            w += sw[j][tx];
            b += sb[j][tx];
        }
        dw[col] = ACC ? dw[col] + w : w;
        if (BIAS) db[col] = ACC ? db[col] + b : b;
    }
}

// dw = sum of the dw partials, db likewise: the candle op's last step. grid ceil(C / 32), block
// (32, 8).
extern "C" __global__ void __launch_bounds__(256)
    ln_bwd_reduce(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db, int p, int c) {
    ln_reduce_partials<false>(partial, dw, db, p, c);
}

// The engine's: dw += sum of the dw partials, db likewise.
extern "C" __global__ void __launch_bounds__(256)
    ln_bwd_reduce_engine(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db, int p,
                         int c) {
    ln_reduce_partials<true>(partial, dw, db, p, c);
}

// RMSNorm: dw += sum of the dw partials (there is no bias).
extern "C" __global__ void __launch_bounds__(256)
    rms_bwd_reduce_engine(const float* __restrict__ partial, float* __restrict__ dw, int p, int c) {
    ln_reduce_partials<true, false>(partial, dw, nullptr, p, c);
}

// The candle op's LayerNorm, x TX -> y TY (<tx>_<ty> suffix): the residual stream is f32 and the output the compute
// dtype (bf16 on GPU), or both bf16; no f16 (no config selects it; layer_norm.rs's `supported`).
#define LN_OP_KERNELS(TX, TY, SFX, NCH)                                                                             \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_fwd_##SFX##_##NCH(                                  \
        const TX* x, const float* w, const float* b, TY* y, float* mean, float* rstd, int n, int c, float eps) {    \
        norm_fwd<NCH, false, false, TX, TY>(x, nullptr, nullptr, w, b, y, mean, rstd, n, c, eps);                   \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS, LN_BWD_MIN_BLOCKS(NCH)) ln_bwd_##SFX##_##NCH(                               \
        const TY* dy, const TX* x, const float* w, const float* mean, const float* rstd, TX* dx, float* partial,    \
        int n, int c, int rows) {                                                                                   \
        norm_bwd<NCH, false, TX, TY, false>(dy, x, w, mean, rstd, dx, nullptr, partial, n, c, rows);                \
    }

// Every kernel of chunk count NCH: the engine's (f32 -> bf16, fused residual, accumulating backward) and the op's.
#define LN_KERNELS(NCH)                                                                                      \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_fwd_engine_##NCH(                                   \
        const float* x, const float* w, const float* b, __nv_bfloat16* y, float* mean, float* rstd, int n, int c,   \
        float eps) {                                                                                                \
        norm_fwd<NCH, false, false, float, __nv_bfloat16>(x, nullptr, nullptr, w, b, y, mean, rstd, n, c, eps);     \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) ln_fwd_residual_engine_##NCH(                          \
        const float* res, const __nv_bfloat16* delta, float* res_out, const float* w, const float* b,               \
        __nv_bfloat16* y, float* mean, float* rstd, int n, int c, float eps) {                                      \
        norm_fwd<NCH, true, false, float, __nv_bfloat16>(res, delta, res_out, w, b, y, mean, rstd, n, c, eps);      \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS, LN_BWD_MIN_BLOCKS(NCH)) ln_bwd_engine_##NCH(                                \
        const __nv_bfloat16* dy, const float* x, const float* w, const float* mean, const float* rstd, float* dres, \
        __nv_bfloat16* dres16, float* partial, int n, int c, int rows) {                                            \
        norm_bwd<NCH, false, float, __nv_bfloat16, true>(dy, x, w, mean, rstd, dres, dres16, partial, n, c, rows);  \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) rms_fwd_engine_##NCH(                                  \
        const float* x, const float* w, __nv_bfloat16* y, float* rstd, int n, int c, float eps) {                   \
        norm_fwd<NCH, false, true, float, __nv_bfloat16>(x, nullptr, nullptr, w, nullptr, y, nullptr, rstd, n, c, eps); \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) rms_fwd_residual_engine_##NCH(                         \
        const float* res, const __nv_bfloat16* delta, float* res_out, const float* w, __nv_bfloat16* y,             \
        float* rstd, int n, int c, float eps) {                                                                     \
        norm_fwd<NCH, true, true, float, __nv_bfloat16>(res, delta, res_out, w, nullptr, y, nullptr, rstd, n, c, eps); \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(LN_THREADS, LN_BWD_MIN_BLOCKS(NCH)) rms_bwd_engine_##NCH(                               \
        const __nv_bfloat16* dy, const float* x, const float* w, const float* rstd, float* dres,                    \
        __nv_bfloat16* dres16, float* partial, int n, int c, int rows) {                                            \
        norm_bwd<NCH, true, float, __nv_bfloat16, true>(dy, x, w, nullptr, rstd, dres, dres16, partial, n, c, rows); \
    }                                                                                                               \
    LN_OP_KERNELS(float, float, f32_f32, NCH)                                                                       \
    LN_OP_KERNELS(float, __nv_bfloat16, f32_bf16, NCH)                                                              \
    LN_OP_KERNELS(__nv_bfloat16, __nv_bfloat16, bf16_bf16, NCH)                                                     \
    LN_OP_KERNELS(__nv_bfloat16, float, bf16_f32, NCH)
LN_KERNELS(1)
LN_KERNELS(2)
LN_KERNELS(3)
LN_KERNELS(4)
LN_KERNELS(5)
LN_KERNELS(6)
LN_KERNELS(7)
LN_KERNELS(8)
LN_KERNELS(9)
LN_KERNELS(10)
LN_KERNELS(11)
LN_KERNELS(12)
LN_KERNELS(13)
LN_KERNELS(14)
LN_KERNELS(15)
LN_KERNELS(16)
