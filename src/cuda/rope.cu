// Rotary position embeddings for the decoder engine (Rust side: rope.rs), in place on the fused qkv buffer, HF Llama's
// "rotate half" layout: in each rotated head the pair of coordinates (i, i + HS/2) turns by the angle pos * theta^(-2i/HS).
//
//   forward (on q and k after the qkv matmul):   x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin
//   backward (on dq and dk before the qkv matmul's backward), the transposed rotation:
//                                                d1 = g1 cos + g2 sin,    d2 = g2 cos - g1 sin
//
// Layout: qkv (N, LD) bf16 with the NROT = NH + NKV rotated heads (q's, then k's) side by side at the start of every
// row (columns hh * HS + i), v after them untouched; row r holds position r % T. cos, sin: (T, HS/2) f32 tables,
// computed in f64 on the host (decoder/layout.rs, as model::ops::rotary_tables). Arithmetic in f32, one rounding to
// bf16 per element (PyTorch's recipe rounds cos and sin to bf16 and each product: within its tolerance of this).
// One thread turns 8 pairs (two 16-byte loads and stores); HS/2 must be a multiple of 8 (rope.rs checks).
#include "common.cuh"

template <bool BWD>
__device__ __forceinline__ void rope_rows(__nv_bfloat16* __restrict__ qkv, const float* __restrict__ cos_t,
                                          const float* __restrict__ sin_t, int n, int t_len, int nrot, int hs, int ld) {
    const int half = hs / 2, per_head = half / 8;
    const int64_t per_row = (int64_t)nrot * per_head;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * per_row) return;
    const int64_t row = i / per_row;
    const int rem = (int)(i - row * per_row);
    const int head = rem / per_head, k0 = (rem - head * per_head) * 8;
    const int pos = (int)(row % t_len);
    __nv_bfloat16* p1 = qkv + row * ld + (int64_t)head * hs + k0;
    __nv_bfloat16* p2 = p1 + half;
    const Vec16<__nv_bfloat16> a = load16(p1), b = load16(p2);
    const Vec16<float> c0 = load16(cos_t + (int64_t)pos * half + k0), c1 = load16(cos_t + (int64_t)pos * half + k0 + 4);
    const Vec16<float> s0 = load16(sin_t + (int64_t)pos * half + k0), s1 = load16(sin_t + (int64_t)pos * half + k0 + 4);
    Vec16<__nv_bfloat16> o1, o2;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float c = k < 4 ? c0.v[k] : c1.v[k - 4];
        const float s = (k < 4 ? s0.v[k] : s1.v[k - 4]) * (BWD ? -1.f : 1.f);
        const float x1 = to_acc(a.v[k]), x2 = to_acc(b.v[k]);
        o1.v[k] = from_acc<__nv_bfloat16>(x1 * c - x2 * s);
        o2.v[k] = from_acc<__nv_bfloat16>(x2 * c + x1 * s);
    }
    store16(p1, o1);
    store16(p2, o2);
}

// grid ceil(N * NROT * HS / 16 / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    rope_fwd(__nv_bfloat16* __restrict__ qkv, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int n,
             int t_len, int nrot, int hs, int ld) {
    rope_rows<false>(qkv, cos_t, sin_t, n, t_len, nrot, hs, ld);
}

extern "C" __global__ void __launch_bounds__(256)
    rope_bwd(__nv_bfloat16* __restrict__ dqkv, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int n,
             int t_len, int nrot, int hs, int ld) {
    rope_rows<true>(dqkv, cos_t, sin_t, n, t_len, nrot, hs, ld);
}
