// Shared helpers of tokenmill's CUDA kernels: the element types (f32, bf16, f16, f64), their accumulator type
// (f32, f64 for f64), conversions, and 16-byte vector loads/stores.
//
// The kernels use only what `dev/cuda/cuda_emu.h` can also provide on a CPU (threadIdx/blockIdx, __syncthreads,
// static __shared__ arrays, the warp shuffles of warp.cuh, the tensor-core products of mma.cuh and wgmma.cuh,
// cp.async/ldmatrix, and pipeline.cuh's barriers, bulk copies and dynamic shared memory; no atomics), so `dev/cuda/run.sh` can execute them with g++ against
// double-precision references before any GPU time is spent.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#define TM_INF __int_as_float(0x7f800000)
#define TM_INF_D __longlong_as_double(0x7ff0000000000000LL)
#else
// dev/cuda/cuda_emu.h has defined the CUDA keywords, __nv_bfloat16, __half and the conversions.
#define TM_INF (std::numeric_limits<float>::infinity())
#define TM_INF_D (std::numeric_limits<double>::infinity())
#endif

// Softmax statistics kept in the log2 domain (x * log2 e) make each exponential one exp2; ln 2 brings the result back.
#define TM_LOG2E 1.4426950408889634f
#define TM_LN2 0.6931471805599453f

// Targets equal to this id contribute zero loss and zero gradient (model::kernels::cross_entropy::IGNORE_INDEX).
#define TM_IGNORE_INDEX 0xffffffffu

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename AccOf<T>::type x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half(x); }

// Base 2, for statistics kept in the log2 domain: exp2f is the hardware ex2 (2 ulp).
__device__ __forceinline__ float acc_exp2(float x) { return exp2f(x); }
__device__ __forceinline__ double acc_exp2(double x) { return exp2(x); }
__device__ __forceinline__ float acc_log2(float x) { return log2f(x); }
__device__ __forceinline__ double acc_log2(double x) { return log2(x); }
__device__ __forceinline__ float acc_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double acc_max(double a, double b) { return fmax(a, b); }
template <typename A> __device__ __forceinline__ A acc_inf();
template <> __device__ __forceinline__ float acc_inf<float>() { return TM_INF; }
template <> __device__ __forceinline__ double acc_inf<double>() { return TM_INF_D; }
// log2(e) and ln(2) in the accumulator type (TM_LOG2E, TM_LN2 for f32).
template <typename A> __device__ __forceinline__ A acc_log2e();
template <> __device__ __forceinline__ float acc_log2e<float>() { return TM_LOG2E; }
template <> __device__ __forceinline__ double acc_log2e<double>() { return 1.4426950408889634074; }
template <typename A> __device__ __forceinline__ A acc_ln2();
template <> __device__ __forceinline__ float acc_ln2<float>() { return TM_LN2; }
template <> __device__ __forceinline__ double acc_ln2<double>() { return 0.69314718055994530942; }

// 16 bytes of T: 4 f32, 8 bf16/f16, 2 f64. One 128-bit load or store per vector (llm.c's Packed128).
template <typename T> struct alignas(16) Vec16 {
    static constexpr int N = 16 / sizeof(T);
    T v[16 / sizeof(T)];
};

template <typename T> __device__ __forceinline__ Vec16<T> load16(const T* p) {
    uint4 bits = *reinterpret_cast<const uint4*>(p);
    Vec16<T> r;
    memcpy(&r.v[0], &bits, 16);
    return r;
}

template <typename T> __device__ __forceinline__ void store16(T* p, const Vec16<T>& r) {
    uint4 bits;
    memcpy(&bits, &r.v[0], 16);
    *reinterpret_cast<uint4*>(p) = bits;
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
