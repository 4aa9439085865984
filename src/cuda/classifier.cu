// Softmax cross-entropy, forward and backward in one kernel over each row: tokenmill's one loss kernel (Rust side:
// classifier.rs, its one launcher), for both callers:
// - the decoder engine: bf16 logits, the gradient written over them (llm.c's fused classifier), `classifier_fwd_bwd`;
// - the candle op `model::kernels::cross_entropy`: f32, bf16 or f64 logits with any row stride, the loss alone
//   (`classifier_fwd_<dtype>`, its forward) or the gradient into a buffer of its own (`classifier_bwd_<dtype>`, its
//   backward, which recomputes the row's statistics).
//
//   loss[r]       = logsumexp(logits[r, :]) - logits[r, target[r]]                   (f32; f64 for f64 logits)
//   dlogits[r, i] = (softmax(logits[r])[i] - [i == target[r]]) * g[r]                (the logits' dtype)
//
// g[r] is the engine's dscale, d(mean loss)/d(loss[r]) = 1 / (B * T * micro-steps) (0: evaluation, the logits are left
// alone), or the op's upstream gradient dloss[r] (stride 0 when broadcast). The softmax runs over all V columns (the
// padded vocabulary too, as PyTorch's cross_entropy on the padded head). Rows whose target is TM_IGNORE_INDEX give
// 0 loss and 0 gradient; a target >= V gives a NaN loss and gradient (loud, and found without a device -> host sync).
//
// One block per row: pass 1 keeps an online (max, sum of exp) per thread over 16-byte vectors (then element by
// element for what a row not starting on 16 bytes or V not a multiple of the vector leaves), merged across the block
// in a fixed order; pass 2 re-reads the row (mostly from L2: a 100 KB row per block) and writes the gradient. A
// variant holding the row in registers between the passes (one read from memory) gave the same bits but measured
// slower on the H100 (9.24 against 5.57 ms per Llama-124M micro-step at V = 50,304: 1024 threads x 8 vectors each
// leave one block per SM), so it was removed. The op's backward recomputing pass 1 costs a second read of the row
// (from L2 as above) in place of the single read of a backward that recovers logsumexp as loss + logit[target].
// The target's logit is read by one thread before anything is overwritten (the block barrier orders it).
//
// The engine's instantiation (bf16, in place, finite logits) is the kernel of main e560d49 step for step: the lab
// (dev/cuda/check_engine.cpp) holds it byte for byte against that commit's text, and the op's bf16 kernels against it
// (check.cpp).
//
// loss_reduce sums the per-row losses in a fixed order (one block), times `scale`, into acc[0] (+=): the step's loss
// without atomics, deterministic.
#include "common.cuh"
#include "online_softmax.cuh"

#ifndef CLS_THREADS  // the CPU lab runs smaller blocks
#define CLS_THREADS 1024
#endif

// The block's row: logits `x` (V), the gradient into `dx` (V; `x` itself in place; null: the forward alone), the loss
// into `*loss` (null: not written), g the gradient's factor. MAY_BE_NEG_INF: online_softmax.cuh.
template <typename T, bool MAY_BE_NEG_INF>
__device__ __forceinline__ void classifier_row(const T* x, T* dx, uint32_t target, typename AccOf<T>::type* loss,
                                               int64_t v, typename AccOf<T>::type g) {
    using A = typename AccOf<T>::type;
    __shared__ A sh_m[CLS_THREADS];
    __shared__ A sh_s[CLS_THREADS];
    __shared__ A sh_target;
    const int tid = threadIdx.x;
    if (target == TM_IGNORE_INDEX || (int64_t)target >= v) {  // block-uniform
        const A out = target == TM_IGNORE_INDEX ? A(0) : acc_inf<A>() - acc_inf<A>();
        if (tid == 0 && loss) *loss = out;
        if (dx)
            for (int64_t i = tid; i < v; i += CLS_THREADS) dx[i] = from_acc<T>(out);
        return;
    }
    if (tid == 0) sh_target = to_acc(x[target]);
    constexpr int VN = Vec16<T>::N;
    const A log2e = acc_log2e<A>();
    // Statistics in the log2 domain (x * log2 e): each exponential is one exp2.
    const int64_t nv = aligned16(x) ? v / VN : 0;
    A m = -acc_inf<A>(), s = A(0);
    for (int64_t j = tid; j < nv; j += CLS_THREADS) {
        const Vec16<T> p = load16(x + VN * j);
#pragma unroll
        for (int k = 0; k < VN; k++) online_add<MAY_BE_NEG_INF>(m, s, to_acc(p.v[k]) * log2e);
    }
    for (int64_t i = VN * nv + tid; i < v; i += CLS_THREADS) online_add<MAY_BE_NEG_INF>(m, s, to_acc(x[i]) * log2e);
    sh_m[tid] = m;
    sh_s[tid] = s;
    online_block_merge(sh_m, sh_s, CLS_THREADS);
    const A mx = sh_m[0], sum = sh_s[0];
    // mx is in log2 units: logsumexp = (log2(sum) + mx) * ln 2.
    if (tid == 0 && loss) *loss = (acc_log2(sum) + mx) * acc_ln2<A>() - sh_target;
    if (!dx) return;
    const A inv = A(1) / sum;
    const int64_t nv2 = aligned16(x) && aligned16(dx) ? nv : 0;
    for (int64_t j = tid; j < nv2; j += CLS_THREADS) {
        const Vec16<T> p = load16(x + VN * j);
        Vec16<T> d;
#pragma unroll
        for (int k = 0; k < VN; k++) {
            const int64_t i = VN * j + k;
            const A prob = acc_exp2(to_acc(p.v[k]) * log2e - mx) * inv;
            d.v[k] = from_acc<T>((prob - (i == (int64_t)target ? A(1) : A(0))) * g);
        }
        store16(dx + VN * j, d);
    }
    for (int64_t i = VN * nv2 + tid; i < v; i += CLS_THREADS) {
        const A prob = acc_exp2(to_acc(x[i]) * log2e - mx) * inv;
        dx[i] = from_acc<T>((prob - (i == (int64_t)target ? A(1) : A(0))) * g);
    }
}

// The engine's: logits (N, V) bf16, targets (N) < V, loss (N) f32; the gradient over the logits unless dscale == 0.
// grid N, block CLS_THREADS. V must be a multiple of 8 and each row 16-byte aligned (classifier.rs checks).
extern "C" __global__ void __launch_bounds__(CLS_THREADS)
    classifier_fwd_bwd(__nv_bfloat16* __restrict__ logits, const uint32_t* __restrict__ targets,
                       float* __restrict__ loss, int v, float dscale) {
    const int64_t row = blockIdx.x;
    __nv_bfloat16* x = logits + row * (int64_t)v;
    classifier_row<__nv_bfloat16, false>(x, dscale == 0.f ? nullptr : x, targets[row], loss + row, v, dscale);
}

// The candle op's, grid N, block CLS_THREADS: row n of the logits starts at logits + n * row_stride (dense columns),
// its target is targets[n * t_stride]. Forward: loss (N). Backward: dlogits (N, V) contiguous, g = dloss[n * g_stride].
#define CLASSIFIER_OP(T, SUFFIX)                                                                                       \
    extern "C" __global__ void __launch_bounds__(CLS_THREADS) classifier_fwd_##SUFFIX(                                \
        const T* __restrict__ logits, const uint32_t* __restrict__ targets, AccOf<T>::type* __restrict__ loss,        \
        int64_t v, int64_t row_stride, int64_t t_stride) {                                                           \
        const int64_t row = blockIdx.x;                                                                              \
        classifier_row<T, true>(logits + row * row_stride, nullptr, targets[row * t_stride], loss + row, v,          \
                                AccOf<T>::type(0));                                                                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(CLS_THREADS) classifier_bwd_##SUFFIX(                                \
        const T* __restrict__ logits, const uint32_t* __restrict__ targets, const AccOf<T>::type* __restrict__ dloss, \
        T* __restrict__ dlogits, int64_t v, int64_t row_stride, int64_t t_stride, int64_t g_stride) {                 \
        const int64_t row = blockIdx.x;                                                                              \
        classifier_row<T, true>(logits + row * row_stride, dlogits + row * v, targets[row * t_stride], nullptr, v,    \
                                dloss[row * g_stride]);                                                              \
    }

CLASSIFIER_OP(float, f32)
CLASSIFIER_OP(__nv_bfloat16, bf16)
CLASSIFIER_OP(double, f64)

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
