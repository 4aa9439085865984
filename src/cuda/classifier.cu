// The GPT-2 engine's classifier (Rust side: classifier.rs): softmax cross-entropy over bf16 logits, forward and
// backward in one pass over each row, the gradient written over the logits (llm.c's fused classifier).
//
//   loss[r]       = logsumexp(logits[r, :]) - logits[r, target[r]]                              (f32)
//   logits[r, i] <- (softmax(logits[r])[i] - [i == target[r]]) * dscale   when dscale != 0      (bf16, in place)
//
// dscale is d(mean loss)/d(loss[r]): 1 / (B * T * micro-steps) for training; 0 leaves the logits alone (evaluation).
// The softmax runs over all V columns (the padded vocabulary too, as PyTorch's cross_entropy on the padded head).
// One block per row: pass 1 keeps an online (max, sum of exp) per thread over 16-byte vectors, merged across the
// block in a fixed order (warp butterflies); pass 2 re-reads the row (mostly from L2: a 100 KB row per block) and
// writes the gradient.
// The target's logit is read by one thread before anything is overwritten (the block barrier orders it).
//
// loss_reduce sums the per-row losses in a fixed order (one block), times `scale`, into acc[0] (+=): the step's loss
// without atomics, deterministic.
#include "../model/kernels/common.cuh"

#ifndef CLS_THREADS  // the CPU lab runs smaller blocks
#define CLS_THREADS 1024
#endif

// Statistics in the log2 domain (x * log2 e), so each exponential is one exp2f (the hardware ex2, 2 ulp).
#define CLS_LOG2E 1.4426950408889634f
#define CLS_LN2 0.6931471805599453f

__device__ __forceinline__ void cls_online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * exp2f(m - x) + 1.f;
        m = x;
    } else {
        s += exp2f(x - m);
    }
}

__device__ __forceinline__ void cls_merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    if (mx == -TM_INF) return;
    s = (m == -TM_INF ? 0.f : s * exp2f(m - mx)) + (m2 == -TM_INF ? 0.f : s2 * exp2f(m2 - mx));
    m = mx;
}

#ifdef __CUDACC__
__device__ __forceinline__ float cls_shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
#else
inline float cls_shfl_xor(float v, int o) { return emu_shfl_xor(v, o); }
#endif
// (m, s) merged across the 32 lanes of a warp by a butterfly. Every lane ends with the same bits: cls_merge is
// symmetric in its two operands (a max, and a sum of two products, and float addition commutes).
__device__ __forceinline__ void cls_warp_merge(float& m, float& s) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
        const float m2 = cls_shfl_xor(m, o), s2 = cls_shfl_xor(s, o);
        cls_merge(m, s, m2, s2);
    }
}
// grid N, block CLS_THREADS. V must be a multiple of 8 and each row 16-byte aligned (classifier.rs checks).
extern "C" __global__ void __launch_bounds__(CLS_THREADS)
    classifier_fwd_bwd(__nv_bfloat16* __restrict__ logits, const uint32_t* __restrict__ targets,
                       float* __restrict__ loss, int v, float dscale) {
    constexpr int CLS_WARPS = CLS_THREADS / 32;
    __shared__ float sh_m[CLS_WARPS];
    __shared__ float sh_s[CLS_WARPS];
    __shared__ float sh_target;
    const int64_t row = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    __nv_bfloat16* x = logits + row * (int64_t)v;
    const uint32_t target = targets[row];
    if (tid == 0) sh_target = to_acc(x[target]);
    const int nv = v / 8;
    float m = -TM_INF, s = 0.f;
    for (int j = tid; j < nv; j += CLS_THREADS) {
        const Vec16<__nv_bfloat16> p = load16(x + 8 * j);
#pragma unroll
        for (int k = 0; k < 8; k++) cls_online_add(m, s, to_acc(p.v[k]) * CLS_LOG2E);
    }
    // Merged in a fixed order: within each warp, then the warps' results by every warp alike (a second butterfly),
    // so every thread holds the row's statistics after one barrier (a shared-memory tree took log2(1024) of them).
    cls_warp_merge(m, s);
    if (lane == 0) {
        sh_m[warp] = m;
        sh_s[warp] = s;
    }
    __syncthreads();
    m = lane < CLS_WARPS ? sh_m[lane] : -TM_INF;
    s = lane < CLS_WARPS ? sh_s[lane] : 0.f;
    cls_warp_merge(m, s);
    const float mx = m, sum = s;
    // mx is in log2 units: logsumexp = (log2(sum) + mx) * ln 2.
    if (tid == 0) loss[row] = (log2f(sum) + mx) * CLS_LN2 - sh_target;
    if (dscale == 0.f) return;
    const float inv = 1.f / sum;
    for (int j = tid; j < nv; j += CLS_THREADS) {
        Vec16<__nv_bfloat16> p = load16(x + 8 * j);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = 8 * j + k;
            const float prob = exp2f(to_acc(p.v[k]) * CLS_LOG2E - mx) * inv;
            p.v[k] = from_acc<__nv_bfloat16>((prob - (i == (int)target ? 1.f : 0.f)) * dscale);
        }
        store16(x + 8 * j, p);
    }
}

// acc[0] += scale * sum(loss[0..n]), in a fixed order. grid 1, block 1024.
extern "C" __global__ void __launch_bounds__(1024) loss_reduce(const float* __restrict__ loss, float* __restrict__ acc,
                                                               int n, float scale) {
    __shared__ float sh[1024];
    const int tid = threadIdx.x;
    float s = 0.f;
    for (int i = tid; i < n; i += 1024) s += loss[i];
    sh[tid] = s;
    __syncthreads();
    for (int half = 512; half > 0; half /= 2) {
        if (tid < half) sh[tid] += sh[tid + half];
        __syncthreads();
    }
    if (tid == 0) acc[0] += scale * sh[0];
}
