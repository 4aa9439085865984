// SwiGLU for the decoder engine (Rust side: swiglu.rs): the MLP activation of Llama-style blocks, between the fused
// gate|up matmul and the down projection. bf16 in and out, f32 arithmetic, 8 elements per thread (16-byte accesses).
//
//   forward:  gu (N, 2H) = [g | u] (one row: the H gate outputs, then the H up outputs)
//             y (N, H) = silu(g) * u,  silu(g) = g * sigmoid(g)
//   backward: with s = sigmoid(g):  dg = dy * u * s * (1 + g (1 - s)),  du = dy * g * s      -> dgu (N, 2H) = [dg | du]
//
// PyTorch's recipe (HF LlamaMLP under autocast) rounds silu(g) to bf16 before the product; here the product is taken
// in f32 and rounded once. H must be a multiple of 8 and the rows 16-byte aligned (swiglu.rs checks).
#include "common.cuh"

__device__ __forceinline__ float swiglu_sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// grid ceil(N * H / 8 / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    swiglu_fwd(const __nv_bfloat16* __restrict__ gu, __nv_bfloat16* __restrict__ y, int n, int h) {
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (int64_t)n * h) return;
    const int64_t row = i / h;
    const int col = (int)(i - row * h);
    const Vec16<__nv_bfloat16> g = load16(gu + row * 2 * h + col), u = load16(gu + row * 2 * h + h + col);
    Vec16<__nv_bfloat16> o;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float gv = to_acc(g.v[k]);
        o.v[k] = from_acc<__nv_bfloat16>(gv * swiglu_sigmoid(gv) * to_acc(u.v[k]));
    }
    store16(y + i, o);
}

// grid ceil(N * H / 8 / 256), block 256. dgu may not alias dy or gu.
extern "C" __global__ void __launch_bounds__(256)
    swiglu_bwd(const __nv_bfloat16* __restrict__ gu, const __nv_bfloat16* __restrict__ dy,
               __nv_bfloat16* __restrict__ dgu, int n, int h) {
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (int64_t)n * h) return;
    const int64_t row = i / h;
    const int col = (int)(i - row * h);
    const Vec16<__nv_bfloat16> g = load16(gu + row * 2 * h + col), u = load16(gu + row * 2 * h + h + col);
    const Vec16<__nv_bfloat16> d = load16(dy + i);
    Vec16<__nv_bfloat16> dg, du;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float gv = to_acc(g.v[k]), uv = to_acc(u.v[k]), dv = to_acc(d.v[k]);
        const float s = swiglu_sigmoid(gv);
        dg.v[k] = from_acc<__nv_bfloat16>(dv * uv * s * (1.f + gv * (1.f - s)));
        du.v[k] = from_acc<__nv_bfloat16>(dv * gv * s);
    }
    store16(dgu + row * 2 * h + col, dg);
    store16(dgu + row * 2 * h + h + col, du);
}
