// The online softmax statistics of the classifier (classifier.cu: the engine's loss and the candle op's): a running
// pair (m, s) = (max of the values seen, sum of 2^(value - m)), one value at a time, then pairs merged across a block
// in a fixed tree order, so the row's logsumexp is (m + log2(s)) * ln 2 after one pass. The values are logits
// pre-scaled by log2 e, so each exponential is one exp2 (f32's is the hardware ex2, 2 ulp).
//
// MAY_BE_NEG_INF: the values may be -inf (the candle op's masked logits), so a -inf while the pair is still empty must
// not add 2^(-inf - -inf) = NaN; the engine's logits come out of a matmul, finite, and skip that test in its hottest
// loop.
#pragma once
#include "common.cuh"

template <bool MAY_BE_NEG_INF, typename A> __device__ __forceinline__ void online_add(A& m, A& s, A x) {
    if (x > m) {
        s = s * acc_exp2(m - x) + A(1);
        m = x;
    } else if (!MAY_BE_NEG_INF || m != -acc_inf<A>()) {
        s += acc_exp2(x - m);
    }
}

// (m, s) <- the pair of both sets. An empty side (m = -inf) adds nothing, also when the other side is not empty.
template <typename A> __device__ __forceinline__ void online_merge(A& m, A& s, A m2, A s2) {
    const A mx = acc_max(m, m2);
    if (mx == -acc_inf<A>()) return;  // both empty
    s = (m == -acc_inf<A>() ? A(0) : s * acc_exp2(m - mx)) + (m2 == -acc_inf<A>() ? A(0) : s2 * acc_exp2(m2 - mx));
    m = mx;
}

// Every thread's pair, in sh_m / sh_s [threads], merged into sh_m[0] / sh_s[0]: halves folded onto the lower half
// in a fixed order (deterministic). threads is a power of two; every thread of the block calls this.
template <typename A> __device__ __forceinline__ void online_block_merge(A* sh_m, A* sh_s, int threads) {
    const int tid = threadIdx.x;
    __syncthreads();
    for (int half = threads / 2; half > 0; half /= 2) {
        if (tid < half) {
            A m = sh_m[tid], s = sh_s[tid];
            online_merge(m, s, sh_m[tid + half], sh_s[tid + half]);
            sh_m[tid] = m;
            sh_s[tid] = s;
        }
        __syncthreads();
    }
}
