// The decoder engine's classifier (Rust side: classifier.rs): softmax cross-entropy over bf16 logits, forward and
// backward in one kernel over each row, the gradient written over the logits (llm.c's fused classifier).
//
//   loss[r]       = logsumexp(logits[r, :]) - logits[r, target[r]]                              (f32)
//   logits[r, i] <- (softmax(logits[r])[i] - [i == target[r]]) * dscale   when dscale != 0      (bf16, in place)
//
// dscale is d(mean loss)/d(loss[r]): 1 / (B * T * micro-steps) for training; 0 leaves the logits alone (evaluation).
// The softmax runs over all V columns (the padded vocabulary too, as PyTorch's cross_entropy on the padded head).
// One block per row: pass 1 keeps an online (max, sum of exp) per thread over 16-byte vectors, merged across the
// block in a fixed order; pass 2 re-reads the row (mostly from L2: a 100 KB row per block) and writes the gradient.
// A variant holding the row in registers between the passes (one read from memory) gave the same bits but measured
// slower on the H100 (9.24 against 5.57 ms per Llama-124M micro-step at V = 50,304: 1024 threads x 8 vectors each
// leave one block per SM), so it was removed.
// The target's logit is read by one thread before anything is overwritten (the block barrier orders it).
//
// loss_reduce sums the per-row losses in a fixed order (one block), times `scale`, into acc[0] (+=): the step's loss
// without atomics, deterministic.
#include "common.cuh"
#include "online_softmax.cuh"

#ifndef CLS_THREADS  // the CPU lab runs smaller blocks
#define CLS_THREADS 1024
#endif

// Statistics in the log2 domain (x * log2 e), so each exponential is one exp2f (the hardware ex2, 2 ulp): the pairs
// of online_softmax.cuh with Exp2, and no -inf test (the logits come out of a matmul, finite).

// grid N, block CLS_THREADS. V must be a multiple of 8 and each row 16-byte aligned (classifier.rs checks).
extern "C" __global__ void __launch_bounds__(CLS_THREADS)
    classifier_fwd_bwd(__nv_bfloat16* __restrict__ logits, const uint32_t* __restrict__ targets,
                       float* __restrict__ loss, int v, float dscale) {
    __shared__ float sh_m[CLS_THREADS];
    __shared__ float sh_s[CLS_THREADS];
    __shared__ float sh_target;
    const int64_t row = blockIdx.x;
    const int tid = threadIdx.x;
    __nv_bfloat16* x = logits + row * (int64_t)v;
    const uint32_t target = targets[row];
    if (tid == 0) sh_target = to_acc(x[target]);
    const int nv = v / 8;
    float m = -TM_INF, s = 0.f;
    for (int j = tid; j < nv; j += CLS_THREADS) {
        const Vec16<__nv_bfloat16> p = load16(x + 8 * j);
#pragma unroll
        for (int k = 0; k < 8; k++) online_add<false>(m, s, to_acc(p.v[k]) * TM_LOG2E, Exp2());
    }
    sh_m[tid] = m;
    sh_s[tid] = s;
    online_block_merge(sh_m, sh_s, CLS_THREADS, Exp2());
    const float mx = sh_m[0], sum = sh_s[0];
    // mx is in log2 units: logsumexp = (log2(sum) + mx) * ln 2.
    if (tid == 0) loss[row] = (log2f(sum) + mx) * TM_LN2 - sh_target;
    if (dscale == 0.f) return;
    const float inv = 1.f / sum;
    for (int j = tid; j < nv; j += CLS_THREADS) {
        Vec16<__nv_bfloat16> p = load16(x + 8 * j);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = 8 * j + k;
            const float prob = exp2f(to_acc(p.v[k]) * TM_LOG2E - mx) * inv;
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
