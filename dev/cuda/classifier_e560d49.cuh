// The decoder engine's classifier kernel as main e560d49 had it (src/cuda/classifier.cu, before the candle op's
// cross-entropy kernel was folded into it), with the online-softmax helpers of that commit's online_softmax.cuh it
// calls, verbatim in a namespace of their own (only `extern "C" __global__ __launch_bounds__` dropped). check_engine.cpp
// runs it beside today's classifier_fwd_bwd on the same inputs and requires the same bytes (the losses and the bf16
// gradient written over the logits): what keeps the engine's GPT-2 losses bitwise those of e560d49. Lab only.
#pragma once
#include "../../src/cuda/common.cuh"

namespace e560d49 {

struct Exp2 {
    __device__ __forceinline__ float operator()(float x) const { return exp2f(x); }
};

template <bool MAY_BE_NEG_INF, typename A, typename Exp>
__device__ __forceinline__ void online_add(A& m, A& s, A x, Exp exp) {
    if (x > m) {
        s = s * exp(m - x) + A(1);
        m = x;
    } else if (!MAY_BE_NEG_INF || m != -acc_inf<A>()) {
        s += exp(x - m);
    }
}

// (m, s) <- the pair of both sets. An empty side (m = -inf) adds nothing, also when the other side is not empty.
template <typename A, typename Exp> __device__ __forceinline__ void online_merge(A& m, A& s, A m2, A s2, Exp exp) {
    const A mx = acc_max(m, m2);
    if (mx == -acc_inf<A>()) return;  // both empty
    s = (m == -acc_inf<A>() ? A(0) : s * exp(m - mx)) + (m2 == -acc_inf<A>() ? A(0) : s2 * exp(m2 - mx));
    m = mx;
}

// Every thread's pair, in sh_m / sh_s [threads], merged into sh_m[0] / sh_s[0]: halves folded onto the lower half
// in a fixed order (deterministic). threads is a power of two; every thread of the block calls this.
template <typename A, typename Exp>
__device__ __forceinline__ void online_block_merge(A* sh_m, A* sh_s, int threads, Exp exp) {
    const int tid = threadIdx.x;
    __syncthreads();
    for (int half = threads / 2; half > 0; half /= 2) {
        if (tid < half) {
            A m = sh_m[tid], s = sh_s[tid];
            online_merge(m, s, sh_m[tid + half], sh_s[tid + half], exp);
            sh_m[tid] = m;
            sh_s[tid] = s;
        }
        __syncthreads();
    }
}

void classifier_fwd_bwd(__nv_bfloat16* __restrict__ logits, const uint32_t* __restrict__ targets,
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

}  // namespace e560d49
