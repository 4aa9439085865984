// GPT-2's tanh-GELU (gelu_new), forward and backward, for both callers (one launcher: activation.rs): the engine when
// the matmul epilogue does not fuse it (bf16, dx may alias dy) and the candle op (model::kernels::gelu; f32, f64 and
// bf16); any n, any alignment.
//   forward:  y = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),  k = sqrt(2 / pi)
//   backward: dx = dy * (0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)),  th = tanh(k (x + 0.044715 x^3))
// Elementwise in the accumulator type (f32; f64 for f64), IEEE tanh (no fast-math tanh: the backward's 1 - th^2
// must not lose digits). The products are grouped as the engine's kernel always grouped them, so its results are
// unchanged bit for bit.
//
// Each thread takes one 16-byte vector (Vec16<T>::N elements) per step, grid-stride (activation.rs launches one
// thread per vector, for both callers, so a thread takes one step; the lab also runs smaller grids). A vector that is not whole (the tail of n) or not 16-byte
// aligned (a candle storage's offset) goes element by element, same arithmetic.
#include "common.cuh"

#define GELU_THREADS 256

__device__ __forceinline__ float acc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double acc_tanh(double x) { return tanh(x); }

template <typename A> __device__ __forceinline__ A gelu_k() { return A(0.7978845608028654); }
template <typename A> __device__ __forceinline__ A gelu_c() { return A(0.044715); }

template <typename A> __device__ __forceinline__ A gelu_val(A v) {
    return A(0.5) * v * (A(1) + acc_tanh(gelu_k<A>() * (v + gelu_c<A>() * v * v * v)));
}

// d gelu(v) / dv
template <typename A> __device__ __forceinline__ A gelu_grad(A v) {
    const A k = gelu_k<A>(), c = gelu_c<A>();
    const A th = acc_tanh(k * (v + c * v * v * v));
    return A(0.5) * (A(1) + th) + A(0.5) * v * (A(1) - th * th) * k * (A(1) + A(3) * c * v * v);
}

template <typename T> __device__ void gelu_fwd(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
    constexpr int VN = Vec16<T>::N;
    const bool vec = aligned16(x) && aligned16(y);
    const int64_t step = (int64_t)gridDim.x * blockDim.x * VN;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VN; i < n; i += step) {
        if (vec && i + VN <= n) {
            const Vec16<T> a = load16(x + i);
            Vec16<T> o;
#pragma unroll
            for (int k = 0; k < VN; k++) o.v[k] = from_acc<T>(gelu_val(to_acc(a.v[k])));
            store16(y + i, o);
        } else {
            for (int64_t j = i; j < i + VN && j < n; j++) y[j] = from_acc<T>(gelu_val(to_acc(x[j])));
        }
    }
}

// dx may alias dy (the engine computes in place), so neither is __restrict__.
template <typename T> __device__ void gelu_bwd(const T* __restrict__ x, const T* dy, T* dx, int64_t n) {
    constexpr int VN = Vec16<T>::N;
    const bool vec = aligned16(x) && aligned16(dy) && aligned16(dx);
    const int64_t step = (int64_t)gridDim.x * blockDim.x * VN;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VN; i < n; i += step) {
        if (vec && i + VN <= n) {
            const Vec16<T> a = load16(x + i), g = load16(dy + i);
            Vec16<T> o;
#pragma unroll
            for (int k = 0; k < VN; k++) o.v[k] = from_acc<T>(to_acc(g.v[k]) * gelu_grad(to_acc(a.v[k])));
            store16(dx + i, o);
        } else {
            for (int64_t j = i; j < i + VN && j < n; j++) dx[j] = from_acc<T>(to_acc(dy[j]) * gelu_grad(to_acc(x[j])));
        }
    }
}

#define GELU_KERNELS(T, SUFFIX)                                                                                      \
    extern "C" __global__ void __launch_bounds__(GELU_THREADS) gelu_fwd_##SUFFIX(const T* x, T* y, int64_t n) {     \
        gelu_fwd<T>(x, y, n);                                                                                       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(GELU_THREADS) gelu_bwd_##SUFFIX(const T* x, const T* dy, T* dx,    \
                                                                                 int64_t n) {                       \
        gelu_bwd<T>(x, dy, dx, n);                                                                                  \
    }

// The engine takes bf16; the candle op f32 and bf16 (what configs select) and f64 (gradient checks).
GELU_KERNELS(__nv_bfloat16, bf16)
GELU_KERNELS(float, f32)
GELU_KERNELS(double, f64)
