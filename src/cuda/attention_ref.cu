// Causal attention on the FMA units, FlashAttention-2 style, forward and backward: the reference kernels (Rust side:
// attention_ref.rs). The kernel lab and the GPU tests hold flash_attn.cu's tensor-core kernels against them (the
// candle op's `FlashKernel::FmaReference`), and they are the candle attention op's f32 path on CUDA, chosen
// explicitly there: the tensor cores take bf16/f16 only, and f32 attention on CUDA is for checks and small runs.
// Nothing in the decoder engine runs them.
//
//   forward:  O = softmax(scale * Q K^T + causal mask) V,  L = row logsumexp of the scaled, masked scores
//   backward: D = rowsum(dO * O); P = exp(scale * Q K^T - L) recomputed tile by tile;
//             dV = P^T dO, dP = dO V^T, dS = P * (dP - D), dQ = scale * dS K, dK = scale * dS^T Q
//
// q, k, v: (B, NH, T, HS) with any (b, h, t) strides and dense HS; o, dq, dk, dv: contiguous (B, NH, T, HS);
// L, D: (B, NH, T) f32. HS = 64 only (the op refuses others on CUDA). Inputs f32/bf16/f16,
// everything accumulated in f32; scores live in the log2 domain (pre-multiplied by scale * log2(e)) so each
// probability is one exp2f.
//
// Memory: only O and L (B*NH*T floats) are kept for backward, instead of the composed version's (B, NH, T, T)
// scores and probabilities (3.2 GB per f32 tensor per layer at B=64, NH=12, T=1024).
//
// Version 1, correctness first: plain FMA on f32 shared-memory tiles (no tensor cores), 128 threads per block,
// two threads per query (or key) row, each owning the even or odd half of the 64 output dims (interleaved so the
// two halves hit neighbouring banks); tiles padded to 65 floats per row so rows 16 apart fall in other banks.
// The backward runs as two kernels, dK/dV per key tile and dQ per query tile, each recomputing P: 7 tile matmuls
// instead of FlashAttention-2's 5, in exchange for no atomics (deterministic, and emulable in dev/cuda/).
#include "common.cuh"

#define FA_HS 64
#define FA_HALF 32  // output dims per thread
#define FA_THREADS 128
#define FA_BR 64    // query rows per forward / dQ block (2 threads per row)
#define FA_BC 32    // key rows per tile in forward / dQ
#define FA_BKV 64   // key rows per dK/dV block (2 threads per key)
#define FA_BQ 32    // query rows per tile in dK/dV
#define FA_PAD (FA_HS + 1)

// One (query, key) pair of a backward tile step: the score s = a . b (in log2 units: one side is pre-scaled), its
// probability p = 2^(s - l2) where `keep` (causal and in range; 0 elsewhere), and the score's gradient
// ds = p * (dp - dr) with dp = c . d (dO . V) and dr the query row's D; both dot products accumulated in d order.
// Returns p.
__device__ __forceinline__ float fa_prob_grad(const float* a, const float* b, const float* c, const float* d, bool keep,
                                              float l2, float dr, float& ds) {
    float s = 0.f, dp = 0.f;
#pragma unroll
    for (int i = 0; i < FA_HS; i++) {
        s += a[i] * b[i];
        dp += c[i] * d[i];
    }
    const float p = keep ? exp2f(s - l2) : 0.f;
    ds = p * (dp - dr);
    return p;
}

// The query row a thread of a forward or dQ block owns (two threads per row, `h` its half of the output dims; the
// blocks with the longest rows start first). Rows past T compute on a copy of the last row (`lrow`: finite values)
// and write nothing.
struct FaQueryRow {
    int qt, bh, r, h, row, lrow;
};
__device__ __forceinline__ FaQueryRow fa_query_row(int t_len) {
    FaQueryRow x;
    x.qt = (t_len + FA_BR - 1) / FA_BR - 1 - (int)blockIdx.x;
    x.bh = blockIdx.y;
    x.r = (int)threadIdx.x >> 1;
    x.h = (int)threadIdx.x & 1;
    x.row = x.qt * FA_BR + x.r;
    x.lrow = x.row < t_len ? x.row : t_len - 1;
    return x;
}

struct HeadPtr {
    int64_t off;  // element offset of (b, h, t = 0, d = 0)
    int64_t st;   // stride between time steps
};

__device__ __forceinline__ HeadPtr head(int bh, int nh, int64_t sb, int64_t sh, int64_t st) {
    HeadPtr p;
    p.off = (int64_t)(bh / nh) * sb + (int64_t)(bh % nh) * sh;
    p.st = st;
    return p;
}

// Keys and values c0 .. c0 + FA_BC - 1 of a head into shared f32 tiles (rows past T read as 0), all threads of the
// block together; the forward and the dQ kernel stream the keys this way.
template <typename T>
__device__ __forceinline__ void fa_load_kv_tile(float (*Ks)[FA_PAD], float (*Vs)[FA_PAD], const T* __restrict__ k,
                                                const T* __restrict__ v, HeadPtr kh, HeadPtr vh, int c0, int t_len) {
    for (int e = threadIdx.x; e < FA_BC * FA_HS; e += FA_THREADS) {
        const int j = e / FA_HS, d = e % FA_HS, c = c0 + j;
        float kx = 0.f, vx = 0.f;
        if (c < t_len) {
            kx = to_acc(k[kh.off + (int64_t)c * kh.st + d]);
            vx = to_acc(v[vh.off + (int64_t)c * vh.st + d]);
        }
        Ks[j][d] = kx;
        Vs[j][d] = vx;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: grid (ceil(T / 64), B * NH), block 128. Thread (r = tid / 2, h = tid % 2) owns query row r of the tile
// and output dims {2 * dd + h}.
template <typename T>
__device__ void fa_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                       float* __restrict__ lse, int nh, int t_len, int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb,
                       int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst, float scale) {
    __shared__ float Ks[FA_BC][FA_PAD];
    __shared__ float Vs[FA_BC][FA_PAD];
    __shared__ float Ps[FA_BR][FA_BC + 1];
    __shared__ float red_m[FA_BR][2];
    __shared__ float red_l[FA_BR][2];

    const FaQueryRow me = fa_query_row(t_len);
    const int qt = me.qt, bh = me.bh, r = me.r, h = me.h, row = me.row, lrow = me.lrow;
    const float sl2 = scale * TM_LOG2E;

    const HeadPtr qh = head(bh, nh, qsb, qsh, qst), kh = head(bh, nh, ksb, ksh, kst), vh = head(bh, nh, vsb, vsh, vst);
    float qr[FA_HS];
    const T* qp = q + qh.off + (int64_t)lrow * qh.st;
#pragma unroll
    for (int d = 0; d < FA_HS; d++) qr[d] = to_acc(qp[d]) * sl2;
    float acc[FA_HALF];
#pragma unroll
    for (int dd = 0; dd < FA_HALF; dd++) acc[dd] = 0.f;
    float m = -TM_INF, l = 0.f;

    const int kv_end = min(t_len, (qt + 1) * FA_BR);
    for (int c0 = 0; c0 < kv_end; c0 += FA_BC) {
        fa_load_kv_tile(Ks, Vs, k, v, kh, vh, c0, t_len);
        __syncthreads();

        float s[FA_BC / 2];
        float mloc = -TM_INF;
#pragma unroll
        for (int jj = 0; jj < FA_BC / 2; jj++) {
            const int j = h * (FA_BC / 2) + jj, c = c0 + j;
            float dot = 0.f;
#pragma unroll
            for (int d = 0; d < FA_HS; d++) dot += qr[d] * Ks[j][d];
            s[jj] = (c <= lrow) ? dot : -TM_INF;  // c <= lrow < T: causal and in range
            mloc = fmaxf(mloc, s[jj]);
        }
        red_m[r][h] = mloc;
        __syncthreads();
        // Key 0 is in the first tile and every row sees it, so m_new is finite from the first tile on.
        const float m_new = fmaxf(m, fmaxf(red_m[r][0], red_m[r][1]));
        float lloc = 0.f;
#pragma unroll
        for (int jj = 0; jj < FA_BC / 2; jj++) {
            const float p = exp2f(s[jj] - m_new);
            Ps[r][h * (FA_BC / 2) + jj] = p;
            lloc += p;
        }
        red_l[r][h] = lloc;
        __syncthreads();
        const float alpha = exp2f(m - m_new);  // 0 on the first tile (m = -inf)
        l = l * alpha + red_l[r][0] + red_l[r][1];
        m = m_new;
#pragma unroll
        for (int dd = 0; dd < FA_HALF; dd++) acc[dd] *= alpha;
        for (int j = 0; j < FA_BC; j++) {
            const float p = Ps[r][j];
#pragma unroll
            for (int dd = 0; dd < FA_HALF; dd++) acc[dd] += p * Vs[j][2 * dd + h];
        }
        __syncthreads();  // Ks, Vs, Ps and red_* are overwritten by the next tile
    }

    if (row < t_len) {
        T* op = o + ((int64_t)bh * t_len + row) * FA_HS;
        const float inv = 1.f / l;
#pragma unroll
        for (int dd = 0; dd < FA_HALF; dd++) op[2 * dd + h] = from_acc<T>(acc[dd] * inv);
        if (h == 0) lse[(int64_t)bh * t_len + row] = (m + log2f(l)) * TM_LN2;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward 1/3: D[row] = sum_d dO[row, d] * O[row, d]. One thread per row of (B * NH * T); o, dO contiguous.
template <typename T>
__device__ void fa_bwd_dot(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ dvec, int64_t rows) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const T* op = o + i * FA_HS;
    const T* gp = dout + i * FA_HS;
    float s = 0.f;
#pragma unroll
    for (int d = 0; d < FA_HS; d++) s += to_acc(op[d]) * to_acc(gp[d]);
    dvec[i] = s;
}

// ---------------------------------------------------------------------------------------------------------------
// Backward 2/3: dK, dV. Grid (ceil(T / 64), B * NH), block 128. Thread (c = tid / 2, h = tid % 2) owns key row c
// of the tile and dims {2 * dd + h} of its dK and dV; query tiles of 32 rows stream through shared memory.
// dout is contiguous (B, NH, T, HS).
template <typename T>
__device__ void fa_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dvec,
                            T* __restrict__ dk, T* __restrict__ dv, int nh, int t_len, int64_t qsb, int64_t qsh,
                            int64_t qst, int64_t ksb, int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst,
                            float scale) {
    __shared__ float Qs[FA_BQ][FA_PAD];
    __shared__ float dOs[FA_BQ][FA_PAD];
    __shared__ float Ps[FA_BKV][FA_BQ + 1];
    __shared__ float dSs[FA_BKV][FA_BQ + 1];
    __shared__ float Ls[FA_BQ];
    __shared__ float Ds[FA_BQ];

    const int kt = blockIdx.x;  // the first key tiles have the most queries: they start first
    const int bh = blockIdx.y;
    const int tid = threadIdx.x;
    const int cl = tid >> 1, h = tid & 1;
    const int c0 = kt * FA_BKV;
    const int key = c0 + cl;
    const int lkey = key < t_len ? key : t_len - 1;
    const float sl2 = scale * TM_LOG2E;

    const HeadPtr qh = head(bh, nh, qsb, qsh, qst), kh = head(bh, nh, ksb, ksh, kst), vh = head(bh, nh, vsb, vsh, vst);
    float kr[FA_HS], vr[FA_HS];
    {
        const T* kp = k + kh.off + (int64_t)lkey * kh.st;
        const T* vp = v + vh.off + (int64_t)lkey * vh.st;
#pragma unroll
        for (int d = 0; d < FA_HS; d++) {
            kr[d] = to_acc(kp[d]) * sl2;
            vr[d] = to_acc(vp[d]);
        }
    }
    float dka[FA_HALF], dva[FA_HALF];
#pragma unroll
    for (int dd = 0; dd < FA_HALF; dd++) dka[dd] = dva[dd] = 0.f;

    const int64_t orow0 = (int64_t)bh * t_len;  // first row of this head in o / dout / lse / dvec
    for (int i0 = c0; i0 < t_len; i0 += FA_BQ) {
        for (int e = tid; e < FA_BQ * FA_HS; e += FA_THREADS) {
            const int i = e / FA_HS, d = e % FA_HS, qi = i0 + i;
            float qx = 0.f, gx = 0.f;
            if (qi < t_len) {
                qx = to_acc(q[qh.off + (int64_t)qi * qh.st + d]);
                gx = to_acc(dout[(orow0 + qi) * FA_HS + d]);
            }
            Qs[i][d] = qx;
            dOs[i][d] = gx;
        }
        for (int i = tid; i < FA_BQ; i += FA_THREADS) {
            const int qi = i0 + i;
            Ls[i] = qi < t_len ? lse[orow0 + qi] * TM_LOG2E : 0.f;
            Ds[i] = qi < t_len ? dvec[orow0 + qi] : 0.f;
        }
        __syncthreads();

#pragma unroll 2
        for (int ii = 0; ii < FA_BQ / 2; ii++) {
            const int i = h * (FA_BQ / 2) + ii, qi = i0 + i;
            Ps[cl][i] = fa_prob_grad(kr, Qs[i], vr, dOs[i], key <= qi && qi < t_len && key < t_len, Ls[i], Ds[i],
                                     dSs[cl][i]);
        }
        __syncthreads();
        for (int i = 0; i < FA_BQ; i++) {
            const float p = Ps[cl][i], ds = dSs[cl][i];
#pragma unroll
            for (int dd = 0; dd < FA_HALF; dd++) {
                dva[dd] += p * dOs[i][2 * dd + h];
                dka[dd] += ds * Qs[i][2 * dd + h];
            }
        }
        __syncthreads();  // Qs, dOs, Ps, dSs, Ls, Ds are overwritten by the next tile
    }

    if (key < t_len) {
        const int64_t base = (orow0 + key) * FA_HS;
#pragma unroll
        for (int dd = 0; dd < FA_HALF; dd++) {
            dk[base + 2 * dd + h] = from_acc<T>(dka[dd] * scale);
            dv[base + 2 * dd + h] = from_acc<T>(dva[dd]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward 3/3: dQ. Grid (ceil(T / 64), B * NH), block 128; same layout as the forward.
template <typename T>
__device__ void fa_bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dvec,
                          T* __restrict__ dq, int nh, int t_len, int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb,
                          int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst, float scale) {
    __shared__ float Ks[FA_BC][FA_PAD];
    __shared__ float Vs[FA_BC][FA_PAD];
    __shared__ float dSs[FA_BR][FA_BC + 1];

    const FaQueryRow me = fa_query_row(t_len);
    const int qt = me.qt, bh = me.bh, r = me.r, h = me.h, row = me.row, lrow = me.lrow;
    const float sl2 = scale * TM_LOG2E;

    const HeadPtr qh = head(bh, nh, qsb, qsh, qst), kh = head(bh, nh, ksb, ksh, kst), vh = head(bh, nh, vsb, vsh, vst);
    const int64_t orow = (int64_t)bh * t_len + lrow;
    float qr[FA_HS], gr[FA_HS];
    {
        const T* qp = q + qh.off + (int64_t)lrow * qh.st;
        const T* gp = dout + orow * FA_HS;
#pragma unroll
        for (int d = 0; d < FA_HS; d++) {
            qr[d] = to_acc(qp[d]) * sl2;
            gr[d] = to_acc(gp[d]);
        }
    }
    const float l2 = lse[orow] * TM_LOG2E;
    const float dr = dvec[orow];
    float dqa[FA_HALF];
#pragma unroll
    for (int dd = 0; dd < FA_HALF; dd++) dqa[dd] = 0.f;

    const int kv_end = min(t_len, (qt + 1) * FA_BR);
    for (int c0 = 0; c0 < kv_end; c0 += FA_BC) {
        fa_load_kv_tile(Ks, Vs, k, v, kh, vh, c0, t_len);
        __syncthreads();
#pragma unroll 2
        for (int jj = 0; jj < FA_BC / 2; jj++) {
            const int j = h * (FA_BC / 2) + jj, c = c0 + j;
            fa_prob_grad(qr, Ks[j], gr, Vs[j], c <= lrow, l2, dr, dSs[r][j]);
        }
        __syncthreads();
        for (int j = 0; j < FA_BC; j++) {
            const float ds = dSs[r][j];
#pragma unroll
            for (int dd = 0; dd < FA_HALF; dd++) dqa[dd] += ds * Ks[j][2 * dd + h];
        }
        __syncthreads();
    }

    if (row < t_len) {
        T* qo = dq + ((int64_t)bh * t_len + row) * FA_HS;
#pragma unroll
        for (int dd = 0; dd < FA_HALF; dd++) qo[2 * dd + h] = from_acc<T>(dqa[dd] * scale);
    }
}

#define FA_STRIDES int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb, int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst
#define FA_STRIDE_ARGS qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst

#define ATTN_REF_KERNELS(T, SUFFIX)                                                                                         \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_ref_fwd_##SUFFIX(                                        \
        const T* q, const T* k, const T* v, T* o, float* lse, int nh, int t_len, FA_STRIDES, float scale) {          \
        fa_fwd<T>(q, k, v, o, lse, nh, t_len, FA_STRIDE_ARGS, scale);                                                \
    }                                                                                                                \
    extern "C" __global__ void attn_ref_bwd_dot_##SUFFIX(const T* o, const T* dout, float* dvec, int64_t rows) {           \
        fa_bwd_dot<T>(o, dout, dvec, rows);                                                                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_ref_bwd_dkdv_##SUFFIX(                                   \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dvec, T* dk, T* dv, int nh, \
        int t_len, FA_STRIDES, float scale) {                                                                        \
        fa_bwd_dkdv<T>(q, k, v, dout, lse, dvec, dk, dv, nh, t_len, FA_STRIDE_ARGS, scale);                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_ref_bwd_dq_##SUFFIX(                                     \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dvec, T* dq, int nh,       \
        int t_len, FA_STRIDES, float scale) {                                                                        \
        fa_bwd_dq<T>(q, k, v, dout, lse, dvec, dq, nh, t_len, FA_STRIDE_ARGS, scale);                                \
    }

ATTN_REF_KERNELS(float, f32)
ATTN_REF_KERNELS(__nv_bfloat16, bf16)
ATTN_REF_KERNELS(__half, f16)
