// Fused GELU, tanh approximation (GPT-2's gelu_new), forward and backward (Rust side: gelu.rs).
//
// Forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// Backward: dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)),  t = tanh(u)
// Elementwise in the accumulator type (f32; f64 for f64), IEEE tanh (no fast-math tanh: the backward's 1 - t^2
// must not lose digits). Contiguous x, dy, y, dx; 16-byte vectors where the pointers allow, scalars for the tail.
#include "common.cuh"

#define GELU_THREADS 256

__device__ __forceinline__ float acc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double acc_tanh(double x) { return tanh(x); }

template <typename A> __device__ __forceinline__ A gelu_val(A x) {
    const A k0 = A(0.7978845608028654), k1 = A(0.044715);
    const A t = acc_tanh(k0 * (x + k1 * x * x * x));
    return A(0.5) * x * (A(1) + t);
}

template <typename A> __device__ __forceinline__ A gelu_grad(A x) {
    const A k0 = A(0.7978845608028654), k1 = A(0.044715);
    const A x2 = x * x;
    const A t = acc_tanh(k0 * (x + k1 * x2 * x));
    return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k0 * (A(1) + A(3) * k1 * x2);
}

template <typename T> __device__ void gelu_fwd(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t i0 = 0;
    if (aligned16(x) && aligned16(y)) {
        constexpr int VN = Vec16<T>::N;
        const int64_t nv = n / VN;
        for (int64_t j = tid; j < nv; j += stride) {
            Vec16<T> p = load16(x + j * VN);
#pragma unroll
            for (int k = 0; k < VN; k++) p.v[k] = from_acc<T>(gelu_val(to_acc(p.v[k])));
            store16(y + j * VN, p);
        }
        i0 = nv * VN;
    }
    for (int64_t i = i0 + tid; i < n; i += stride) y[i] = from_acc<T>(gelu_val(to_acc(x[i])));
}

template <typename T>
__device__ void gelu_bwd(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t i0 = 0;
    if (aligned16(x) && aligned16(dy) && aligned16(dx)) {
        constexpr int VN = Vec16<T>::N;
        const int64_t nv = n / VN;
        for (int64_t j = tid; j < nv; j += stride) {
            Vec16<T> p = load16(x + j * VN);
            const Vec16<T> g = load16(dy + j * VN);
#pragma unroll
            for (int k = 0; k < VN; k++) p.v[k] = from_acc<T>(to_acc(g.v[k]) * gelu_grad(to_acc(p.v[k])));
            store16(dx + j * VN, p);
        }
        i0 = nv * VN;
    }
    for (int64_t i = i0 + tid; i < n; i += stride) dx[i] = from_acc<T>(to_acc(dy[i]) * gelu_grad(to_acc(x[i])));
}

#define GELU_KERNELS(T, SUFFIX)                                                                                      \
    extern "C" __global__ void __launch_bounds__(GELU_THREADS) gelu_fwd_##SUFFIX(const T* x, T* y, int64_t n) {     \
        gelu_fwd<T>(x, y, n);                                                                                       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(GELU_THREADS) gelu_bwd_##SUFFIX(const T* x, const T* dy, T* dx,    \
                                                                                 int64_t n) {                       \
        gelu_bwd<T>(x, dy, dx, n);                                                                                  \
    }

GELU_KERNELS(float, f32)
GELU_KERNELS(double, f64)
GELU_KERNELS(__nv_bfloat16, bf16)
