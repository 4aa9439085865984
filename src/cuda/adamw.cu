// The decoder engine's optimizer over its flat buffers (Rust side: adamw.rs): global gradient norm, clipping and AdamW
// in two launches over all parameters at once, plus the f32 -> bf16 weight copy.
//
// grad_norm_partial + grad_norm_finalize: norm = sqrt(sum g^2) over the whole flat gradient, in a fixed order
// (block b owns a fixed contiguous range and reduces it as a tree; one block then reduces the partials as a tree),
// so the norm is the same bits every run. finalize also writes the clip coefficient PyTorch's clip_grad_norm_
// applies: min(1, max_norm / (norm + 1e-6)) when max_norm > 0, else 1.
//
// adamw_step (torch.optim.AdamW, as train::optim::adamw_update): with g = grad * coef,
//   p *= 1 - lr * wd   (only the first n_decay elements: the layout puts every >= 2-D tensor first)
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
// and writes the bf16 working copy of p that the matmuls read.
#include "common.cuh"

#ifndef NORM_BLOCKS  // the CPU lab runs smaller launches
#define NORM_BLOCKS 1024
#define NORM_THREADS 512
#endif

// grid NORM_BLOCKS, block NORM_THREADS. partial[b] = sum of squares of g[b * chunk .. (b + 1) * chunk).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    grad_norm_partial(const float* __restrict__ g, float* __restrict__ partial, int64_t n) {
    __shared__ float sh[NORM_THREADS];
    const int64_t chunk = (n + NORM_BLOCKS - 1) / NORM_BLOCKS;
    const int64_t lo = (int64_t)blockIdx.x * chunk;
    const int64_t hi = lo + chunk < n ? lo + chunk : n;
    float s = 0.f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += NORM_THREADS) s += g[i] * g[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int half = NORM_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

// grid 1, block NORM_BLOCKS. out[0] = norm, out[1] = clip coefficient.
extern "C" __global__ void __launch_bounds__(NORM_BLOCKS)
    grad_norm_finalize(const float* __restrict__ partial, float* __restrict__ out, float max_norm) {
    __shared__ float sh[NORM_BLOCKS];
    sh[threadIdx.x] = partial[threadIdx.x];
    __syncthreads();
    for (int half = NORM_BLOCKS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float norm = sqrtf(sh[0]);
        out[0] = norm;
        const float coef = max_norm / (norm + 1e-6f);
        out[1] = (max_norm > 0.f && coef < 1.f) ? coef : 1.f;
    }
}

// grid ceil(n / 256), block 256. coef: device scalar (grad_norm_finalize's out[1]).
extern "C" __global__ void __launch_bounds__(256)
    adamw_step(float* __restrict__ p, const float* __restrict__ grad, float* __restrict__ m, float* __restrict__ v,
               __nv_bfloat16* __restrict__ p16, const float* __restrict__ coef, int64_t n, int64_t n_decay,
               float decay_factor, float beta1, float beta2, float step_size, float bc2_sqrt, float eps) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i] * coef[0];
    float w = p[i];
    if (i < n_decay) w *= decay_factor;
    const float mi = beta1 * m[i] + (1.f - beta1) * g;
    const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    w -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    m[i] = mi;
    v[i] = vi;
    p[i] = w;
    p16[i] = from_acc<__nv_bfloat16>(w);
}

// grid ceil(n / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_acc<__nv_bfloat16>(x[i]);
}
