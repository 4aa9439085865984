// Fused softmax cross-entropy, forward and backward (Rust side: cross_entropy.rs).
//
// Forward:  loss[n] = logsumexp(logits[n, :]) - logits[n, targets[n]]     (N) in the accumulator dtype
// Backward: dlogits[n, i] = (softmax(logits[n])[i] - [i == targets[n]]) * dloss[n]   (N, V) in the logits' dtype
// Rows whose target is TM_IGNORE_INDEX give 0 loss and 0 gradient; a target >= V gives NaN (loud, and checked
// without a device->host sync).
//
// One block per row. Forward: one pass, each thread keeps an online (max, sum of exp) over its strided share of
// the row (16-byte loads), then the block merges the pairs in shared memory. Backward recovers the row's
// logsumexp as loss + logits[target] (exact up to one f32 rounding), so it needs no saved (N) tensor and reads
// the logits once and writes dlogits once: at 124M/B=64 (N = 65536, V = 50304, bf16) that is 6.6 GB read in
// forward and 6.6 GB read + 6.6 GB written in backward, where the composed candle version made ~5 f32 (N, V)
// temporaries (13 GB each).
#include "common.cuh"
#include "online_softmax.cuh"

#define CE_THREADS 512

// logits: row n starts at logits + n * row_stride (elements); targets[n * t_stride].
template <typename T>
__device__ void ce_fwd(const T* __restrict__ logits, const uint32_t* __restrict__ targets, typename AccOf<T>::type* __restrict__ loss,
                       int64_t v, int64_t row_stride, int64_t t_stride) {
    using A = typename AccOf<T>::type;
    __shared__ A sh_m[CE_THREADS];
    __shared__ A sh_s[CE_THREADS];
    const int64_t row = blockIdx.x;
    const int tid = threadIdx.x;
    const T* x = logits + row * row_stride;
    A m = -acc_inf<A>(), s = A(0);
    int64_t i0 = 0;
    if (aligned16(x)) {
        constexpr int VN = Vec16<T>::N;
        const int64_t nv = v / VN;
        for (int64_t j = tid; j < nv; j += blockDim.x) {
            Vec16<T> p = load16(x + j * VN);
#pragma unroll
            for (int k = 0; k < VN; k++) online_add<true>(m, s, to_acc(p.v[k]), NaturalExp());
        }
        i0 = nv * VN;
    }
    for (int64_t i = i0 + tid; i < v; i += blockDim.x) online_add<true>(m, s, to_acc(x[i]), NaturalExp());
    sh_m[tid] = m;
    sh_s[tid] = s;
    online_block_merge(sh_m, sh_s, (int)blockDim.x, NaturalExp());
    if (tid == 0) {
        const uint32_t t = targets[row * t_stride];
        A out;
        if (t == TM_IGNORE_INDEX) {
            out = A(0);
        } else if ((int64_t)t >= v) {
            out = acc_inf<A>() - acc_inf<A>();  // NaN: a target outside the vocabulary
        } else {
            out = sh_m[0] + acc_log(sh_s[0]) - to_acc(x[t]);
        }
        loss[row] = out;
    }
}

// dlogits is contiguous (N, V). loss is contiguous (N); dloss[n * g_stride] (stride 0 when broadcast).
template <typename T>
__device__ void ce_bwd(const T* __restrict__ logits, const uint32_t* __restrict__ targets,
                       const typename AccOf<T>::type* __restrict__ loss, const typename AccOf<T>::type* __restrict__ dloss,
                       T* __restrict__ dlogits, int64_t v, int64_t row_stride, int64_t t_stride, int64_t g_stride) {
    using A = typename AccOf<T>::type;
    const int64_t row = blockIdx.x;
    const int tid = threadIdx.x;
    const T* x = logits + row * row_stride;
    T* dx = dlogits + row * v;
    const uint32_t t = targets[row * t_stride];
    A g = dloss[row * g_stride];
    A lse = A(0);
    int64_t tgt = -1;
    if (t == TM_IGNORE_INDEX) {
        g = A(0);
    } else if ((int64_t)t >= v) {
        g = acc_inf<A>() - acc_inf<A>();
    } else {
        tgt = t;
        lse = loss[row] + to_acc(x[t]);
    }
    // g == 0 (ignored rows) must give exact zeros even where exp overflows to inf: 0 * inf is NaN.
    const bool zero = (g == A(0));
    int64_t i0 = 0;
    if (aligned16(x) && aligned16(dx)) {
        constexpr int VN = Vec16<T>::N;
        const int64_t nv = v / VN;
        for (int64_t j = tid; j < nv; j += blockDim.x) {
            Vec16<T> p = load16(x + j * VN);
            Vec16<T> q;
#pragma unroll
            for (int k = 0; k < VN; k++) {
                const int64_t i = j * VN + k;
                A d = acc_exp(to_acc(p.v[k]) - lse) - (i == tgt ? A(1) : A(0));
                q.v[k] = from_acc<T>(zero ? A(0) : d * g);
            }
            store16(dx + j * VN, q);
        }
        i0 = nv * VN;
    }
    for (int64_t i = i0 + tid; i < v; i += blockDim.x) {
        A d = acc_exp(to_acc(x[i]) - lse) - (i == tgt ? A(1) : A(0));
        dx[i] = from_acc<T>(zero ? A(0) : d * g);
    }
}

#define CE_KERNELS(T, SUFFIX)                                                                                        \
    extern "C" __global__ void __launch_bounds__(CE_THREADS) ce_fwd_##SUFFIX(                                       \
        const T* logits, const uint32_t* targets, AccOf<T>::type* loss, int64_t v, int64_t row_stride,              \
        int64_t t_stride) {                                                                                         \
        ce_fwd<T>(logits, targets, loss, v, row_stride, t_stride);                                                  \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(CE_THREADS) ce_bwd_##SUFFIX(                                       \
        const T* logits, const uint32_t* targets, const AccOf<T>::type* loss, const AccOf<T>::type* dloss,          \
        T* dlogits, int64_t v, int64_t row_stride, int64_t t_stride, int64_t g_stride) {                            \
        ce_bwd<T>(logits, targets, loss, dloss, dlogits, v, row_stride, t_stride, g_stride);                        \
    }

CE_KERNELS(float, f32)
CE_KERNELS(double, f64)
CE_KERNELS(__nv_bfloat16, bf16)
