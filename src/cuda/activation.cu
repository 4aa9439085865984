// GPT-2's tanh-GELU for the engine when the matmul epilogue does not fuse it (Rust side: activation.rs), bf16 in
// and out, f32 arithmetic, 8 elements per thread (16-byte accesses):
//   forward:  y = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),  k = sqrt(2 / pi)
//   backward: dx = dy * (0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)),  th = tanh(k (x + 0.044715 x^3))
// n must be a multiple of 8 and the buffers 16-byte aligned (activation.rs checks). dx may alias dy.
#include "common.cuh"

#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

// grid ceil(n / 8 / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    gelu_fwd_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const Vec16<__nv_bfloat16> a = load16(x + i);
    Vec16<__nv_bfloat16> o;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float v = to_acc(a.v[k]);
        o.v[k] = from_acc<__nv_bfloat16>(0.5f * v * (1.f + tanhf(GELU_K * (v + GELU_C * v * v * v))));
    }
    store16(y + i, o);
}

// grid ceil(n / 8 / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    gelu_bwd_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* dy, __nv_bfloat16* dx, int64_t n) {
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const Vec16<__nv_bfloat16> a = load16(x + i), g = load16(dy + i);
    Vec16<__nv_bfloat16> o;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float v = to_acc(a.v[k]);
        const float th = tanhf(GELU_K * (v + GELU_C * v * v * v));
        const float d = 0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * GELU_K * (1.f + 3.f * GELU_C * v * v);
        o.v[k] = from_acc<__nv_bfloat16>(to_acc(g.v[k]) * d);
    }
    store16(dx + i, o);
}
