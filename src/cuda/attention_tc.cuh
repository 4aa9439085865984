// Fused causal attention on the tensor cores (bf16 / f16, sm_80+): the same algorithm, launch geometry and
// outputs as the FMA kernels in attention.cu (O, L = row logsumexp, dQ/dK/dV; D = rowsum(dO * O) from
// fa_bwd_dot_*), with every tile product on mma.sync.aligned.m16n8k16 (f32 accumulation). Included by
// attention.cu; the Rust side (attention.rs) picks these kernels for bf16/f16 and keeps f32 on the FMA kernels.
//
// Geometry (all three kernels): grid (ceil(T / 64), B * NH), 128 threads = 4 warps; a block owns 64 rows
// (queries for forward and dQ, keys for dK/dV), warp w owns rows 16w..16w+15 of them and streams 64-row tiles of
// the other side through shared memory. HS = 64 = 4 mma k-steps. Control flow is uniform across the block
// (every warp runs every tile, the causal mask is applied per element), as warp.cuh and mma.cuh require.
//
// With the mma.m16n8k16 fragment layout (mma.cuh), the C fragments of two neighbouring n-tiles are, element for
// element, the A fragment of the next product (FlashAttention-2's register reuse of P and dS), and B = M^T for a row-major shared tile M[n][k] is one 32-bit load per register.
// Products whose B is not such a transposed tile (P V, P^T dO, dS^T Q, dS K) read a transposed copy that the
// tile loader writes ([d][row]); rows are padded to 72 elements so all fragment loads are bank-conflict free.
//
// Precision: S, dP and all accumulators in f32; P and dS are rounded to the input type before their products
// (as FlashAttention-2); softmax statistics in f32 in the log2 domain, as the FMA kernels.
#pragma once
#include "mma.cuh"
#include "warp.cuh"

#define TC_ROWS 64  // rows per block and per streamed tile
#define TC_LD 72    // shared tile row pitch in elements (64 + 8: conflict-free 32-bit fragment loads)

template <typename T> __device__ __forceinline__ uint32_t tc_ld32(const T* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A fragments (4 k-steps over HS = 64) of rows r0..r0+15 of a row-major shared tile.
template <typename T> __device__ __forceinline__ void tc_load_a(uint32_t (&a)[4][4], const T (*s)[TC_LD], int r0) {
    const int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        a[kk][0] = tc_ld32(&s[r0 + g][kk * 16 + 2 * c]);
        a[kk][1] = tc_ld32(&s[r0 + g + 8][kk * 16 + 2 * c]);
        a[kk][2] = tc_ld32(&s[r0 + g][kk * 16 + 2 * c + 8]);
        a[kk][3] = tc_ld32(&s[r0 + g + 8][kk * 16 + 2 * c + 8]);
    }
}

// acc[nt] (16 x 64 as 8 n-tiles) += A (16 x 64, fragments a) * M^T, M a row-major shared tile [n][k] of 64 x 64.
template <typename T>
__device__ __forceinline__ void tc_mm_nt(float (&acc)[8][4], const uint32_t (&a)[4][4], const T (*m)[TC_LD]) {
    const int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
            mma_m16n8k16<T>(acc[nt], a[kk], tc_ld32(&m[nt * 8 + g][kk * 16 + 2 * c]), tc_ld32(&m[nt * 8 + g][kk * 16 + 2 * c + 8]));
}

// The two products both backward kernels start a tile with: s = A M^T and dp = B N^T (tc_mm_nt from zero), S and dP
// (or their transposes) of the tile.
template <typename T>
__device__ __forceinline__ void tc_scores(float (&s)[8][4], const uint32_t (&a)[4][4], const T (*m)[TC_LD],
                                          float (&dp)[8][4], const uint32_t (&b)[4][4], const T (*n)[TC_LD]) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) s[nt][i] = dp[nt][i] = 0.f;
    tc_mm_nt<T>(s, a, m);
    tc_mm_nt<T>(dp, b, n);
}

// acc[nt] (16 x 64) += X (16 x 64 in C fragments x[8][4], rounded to T) * N, N given transposed as a row-major
// shared tile nt_[d][k] (= N[k][d]).
template <typename T>
__device__ __forceinline__ void tc_mm_cn(float (&acc)[8][4], const float (&x)[8][4], const T (*nt_)[TC_LD]) {
    const int g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        uint32_t a[4];
        a[0] = pack_pair<T>(x[2 * kk][0], x[2 * kk][1]);
        a[1] = pack_pair<T>(x[2 * kk][2], x[2 * kk][3]);
        a[2] = pack_pair<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]);
        a[3] = pack_pair<T>(x[2 * kk + 1][2], x[2 * kk + 1][3]);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
            mma_m16n8k16<T>(acc[nt], a, tc_ld32(&nt_[nt * 8 + g][kk * 16 + 2 * c]),
                      tc_ld32(&nt_[nt * 8 + g][kk * 16 + 2 * c + 8]));
    }
}

// ---- tile loads (global -> shared), 128 threads ----------------------------------------------------------------
// Rows row0..row0+63 of a (T, 64) matrix with row stride st and a dense last dim; rows >= t_len read as 0.
// rows: dst[r][d]; cols (transposed): dst[d][r]. vec: 16-byte loads (src 16-byte aligned and st a multiple of
// 8 elements), else element by element.
template <typename T>
__device__ __forceinline__ void tc_load_tile(T (*rows)[TC_LD], T (*cols)[TC_LD], const T* __restrict__ src, int64_t st,
                                             int row0, int t_len, bool vec) {
    const int tid = threadIdx.x;
    const T zero = from_acc<T>(0.f);
    if (vec) {
        // e -> (r = e % 64, 8-element chunk e / 64): neighbouring threads take neighbouring rows, so the
        // transposed stores of a warp hit consecutive halfwords.
#pragma unroll
        for (int it = 0; it < 4; it++) {
            const int e = it * 128 + tid, r = e & 63, c8 = (e >> 6) * 8, row = row0 + r;
            Vec16<T> x;
            if (row < t_len) {
                x = load16(src + (int64_t)row * st + c8);
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) x.v[i] = zero;
            }
            if (rows) store16(&rows[r][c8], x);
            if (cols) {
#pragma unroll
                for (int i = 0; i < 8; i++) cols[c8 + i][r] = x.v[i];
            }
        }
    } else {
        for (int e = tid; e < 64 * 64; e += 128) {
            const int r = e & 63, d = e >> 6, row = row0 + r;
            const T x = row < t_len ? src[(int64_t)row * st + d] : zero;
            if (rows) rows[r][d] = x;
            if (cols) cols[d][r] = x;
        }
    }
}

template <typename T> __device__ __forceinline__ bool tc_vec_ok(const T* p, int64_t st) {
    return aligned16(p) && (st % (int64_t)(16 / sizeof(T))) == 0;
}

// This block's (b, h) head of q, k, v (strided views into the qkv buffer) and of dO (contiguous (B, NH, T, HS); null
// in the forward), the head's first row in o / dO / lse / D, and whether each may be read in 16-byte vectors.
template <typename T> struct TcHead {
    const T *q, *k, *v, *g;
    int64_t row0;
    bool qv, kv, vv, gv;
};

template <typename T>
__device__ __forceinline__ TcHead<T> tc_head(const T* q, const T* k, const T* v, const T* dout, int bh, int nh, int t_len,
                                             int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb, int64_t ksh,
                                             int64_t kst, int64_t vsb, int64_t vsh, int64_t vst) {
    TcHead<T> h;
    h.q = q + head(bh, nh, qsb, qsh, qst).off;
    h.k = k + head(bh, nh, ksb, ksh, kst).off;
    h.v = v + head(bh, nh, vsb, vsh, vst).off;
    h.row0 = (int64_t)bh * t_len;
    h.g = dout ? dout + h.row0 * FA_HS : nullptr;
    h.qv = tc_vec_ok(h.q, qst);
    h.kv = tc_vec_ok(h.k, kst);
    h.vv = tc_vec_ok(h.v, vst);
    h.gv = dout ? tc_vec_ok(h.g, (int64_t)FA_HS) : false;
    return h;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward. Thread (warp w, g, c) holds rows ra = 16w + g and rb = ra + 8 of the query tile.
template <typename T>
__device__ void tc_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                       float* __restrict__ lse, int nh, int t_len, int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb,
                       int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst, float scale) {
    alignas(16) __shared__ T Qs[TC_ROWS][TC_LD];
    alignas(16) __shared__ T Ks[TC_ROWS][TC_LD];
    alignas(16) __shared__ T Vt[TC_ROWS][TC_LD];  // [d][key]

    const int n_qt = (t_len + TC_ROWS - 1) / TC_ROWS;
    const int qt = n_qt - 1 - (int)blockIdx.x;  // the longest rows first
    const int bh = blockIdx.y;
    const int tid = threadIdx.x, warp = tid >> 5, g = (tid & 31) >> 2, c = tid & 3;
    const float sl2 = scale * TM_LOG2E;

    const TcHead<T> h = tc_head<T>(q, k, v, nullptr, bh, nh, t_len, qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst);

    tc_load_tile<T>(Qs, nullptr, h.q, qst, qt * TC_ROWS, t_len, h.qv);
    __syncthreads();
    uint32_t qa[4][4];
    tc_load_a<T>(qa, Qs, warp * 16);

    const int ra = qt * TC_ROWS + warp * 16 + g, rb = ra + 8;
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.f;
    float ma = -TM_INF, mb = -TM_INF, la = 0.f, lb = 0.f;  // la, lb: this thread's partial row sums

    const int kv_end = min(t_len, (qt + 1) * TC_ROWS);
    for (int c0 = 0; c0 < kv_end; c0 += TC_ROWS) {
        tc_load_tile<T>(Ks, nullptr, h.k, kst, c0, t_len, h.kv);
        tc_load_tile<T>(nullptr, Vt, h.v, vst, c0, t_len, h.vv);
        __syncthreads();

        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) s[nt][i] = 0.f;
        tc_mm_nt<T>(s, qa, Ks);

        float xa = -TM_INF, xb = -TM_INF;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = c0 + nt * 8 + 2 * c + (i & 1), row = i < 2 ? ra : rb;
                // key <= row and key < T; rows >= T (never written) keep key 0 and stay finite
                const float x = (key <= row && key < t_len) ? s[nt][i] * sl2 : -TM_INF;
                s[nt][i] = x;
                if (i < 2) xa = fmaxf(xa, x); else xb = fmaxf(xb, x);
            }
        xa = fmaxf(xa, warp_shfl_xor(xa, 1));
        xa = fmaxf(xa, warp_shfl_xor(xa, 2));
        xb = fmaxf(xb, warp_shfl_xor(xb, 1));
        xb = fmaxf(xb, warp_shfl_xor(xb, 2));
        // Key 0 is in the first tile and every row sees it: the new maxima are finite from the first tile on.
        const float na = fmaxf(ma, xa), nb = fmaxf(mb, xb);
        const float alpha_a = exp2f(ma - na), alpha_b = exp2f(mb - nb);  // 0 on the first tile
        ma = na;
        mb = nb;
        float sa = 0.f, sb = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - na);
            s[nt][1] = exp2f(s[nt][1] - na);
            s[nt][2] = exp2f(s[nt][2] - nb);
            s[nt][3] = exp2f(s[nt][3] - nb);
            sa += s[nt][0] + s[nt][1];
            sb += s[nt][2] + s[nt][3];
            acc[nt][0] *= alpha_a;
            acc[nt][1] *= alpha_a;
            acc[nt][2] *= alpha_b;
            acc[nt][3] *= alpha_b;
        }
        la = la * alpha_a + sa;
        lb = lb * alpha_b + sb;
        tc_mm_cn<T>(acc, s, Vt);  // O += P V
        __syncthreads();  // Ks, Vt are overwritten by the next tile
    }
    la += warp_shfl_xor(la, 1);
    la += warp_shfl_xor(la, 2);
    lb += warp_shfl_xor(lb, 1);
    lb += warp_shfl_xor(lb, 2);

    const float ia = 1.f / la, ib = 1.f / lb;
    if (ra < t_len) {
        uint32_t* op = reinterpret_cast<uint32_t*>(o + ((int64_t)bh * t_len + ra) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) op[nt * 4 + c] = pack_pair<T>(acc[nt][0] * ia, acc[nt][1] * ia);
        if (c == 0) lse[(int64_t)bh * t_len + ra] = (ma + log2f(la)) * TM_LN2;
    }
    if (rb < t_len) {
        uint32_t* op = reinterpret_cast<uint32_t*>(o + ((int64_t)bh * t_len + rb) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) op[nt * 4 + c] = pack_pair<T>(acc[nt][2] * ib, acc[nt][3] * ib);
        if (c == 0) lse[(int64_t)bh * t_len + rb] = (mb + log2f(lb)) * TM_LN2;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward dK, dV (key-outer). Thread (w, g, c) holds key rows ka = c0 + 16w + g and h.k = ka + 8; query tiles of
// 64 stream through shared memory, from the block's own tile (earlier queries see none of its keys) to T.
// S^T = K Q^T, dP^T = V dO^T; P^T = exp2(S^T * scale * log2e - L2[query]); dS^T = P^T (dP^T - D[query]);
// dV += P^T dO, dK += dS^T Q (times scale at the end). dout contiguous (B, NH, T, HS).
template <typename T>
__device__ void tc_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dvec,
                            T* __restrict__ dk, T* __restrict__ dv, int nh, int t_len, int64_t qsb, int64_t qsh,
                            int64_t qst, int64_t ksb, int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst,
                            float scale) {
    alignas(16) __shared__ T Qs[TC_ROWS][TC_LD];   // [query][d]
    alignas(16) __shared__ T Qt[TC_ROWS][TC_LD];   // [d][query]
    alignas(16) __shared__ T Gs[TC_ROWS][TC_LD];   // dO [query][d]
    alignas(16) __shared__ T Gt[TC_ROWS][TC_LD];   // dO [d][query]
    __shared__ float Ls[TC_ROWS], Ds[TC_ROWS];

    const int kt = blockIdx.x;
    const int bh = blockIdx.y;
    const int tid = threadIdx.x, warp = tid >> 5, g = (tid & 31) >> 2, c = tid & 3;
    const int c0 = kt * TC_ROWS;
    const float sl2 = scale * TM_LOG2E;

    const TcHead<T> h = tc_head<T>(q, k, v, dout, bh, nh, t_len, qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst);

    // This block's K and V rows as A fragments (staged through Qs and Gs).
    uint32_t ka[4][4], va[4][4];
    tc_load_tile<T>(Qs, nullptr, h.k, kst, c0, t_len, h.kv);
    tc_load_tile<T>(Gs, nullptr, h.v, vst, c0, t_len, h.vv);
    __syncthreads();
    tc_load_a<T>(ka, Qs, warp * 16);
    tc_load_a<T>(va, Gs, warp * 16);
    __syncthreads();

    const int key_a = c0 + warp * 16 + g, key_b = key_a + 8;
    float dka[8][4], dva[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dka[nt][i] = dva[nt][i] = 0.f;

    for (int i0 = c0; i0 < t_len; i0 += TC_ROWS) {
        tc_load_tile<T>(Qs, Qt, h.q, qst, i0, t_len, h.qv);
        tc_load_tile<T>(Gs, Gt, h.g, FA_HS, i0, t_len, h.gv);
        if (tid < TC_ROWS) {
            const int qi = i0 + tid;
            Ls[tid] = qi < t_len ? lse[h.row0 + qi] * TM_LOG2E : 0.f;
            Ds[tid] = qi < t_len ? dvec[h.row0 + qi] : 0.f;
        }
        __syncthreads();

        float s[8][4], dp[8][4];
        tc_scores<T>(s, ka, Qs, dp, va, Gs);  // S^T (keys x queries), dP^T
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int jl = nt * 8 + 2 * c + (i & 1), qi = i0 + jl, key = i < 2 ? key_a : key_b;
                const float p = (key <= qi && qi < t_len) ? exp2f(s[nt][i] * sl2 - Ls[jl]) : 0.f;
                s[nt][i] = p;
                dp[nt][i] = p * (dp[nt][i] - Ds[jl]);
            }
        tc_mm_cn<T>(dva, s, Gt);   // dV += P^T dO
        tc_mm_cn<T>(dka, dp, Qt);  // dK += dS^T Q
        __syncthreads();  // the tiles are overwritten next
    }

    if (key_a < t_len) {
        uint32_t* kp = reinterpret_cast<uint32_t*>(dk + (h.row0 + key_a) * FA_HS);
        uint32_t* vp = reinterpret_cast<uint32_t*>(dv + (h.row0 + key_a) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            kp[nt * 4 + c] = pack_pair<T>(dka[nt][0] * scale, dka[nt][1] * scale);
            vp[nt * 4 + c] = pack_pair<T>(dva[nt][0], dva[nt][1]);
        }
    }
    if (key_b < t_len) {
        uint32_t* kp = reinterpret_cast<uint32_t*>(dk + (h.row0 + key_b) * FA_HS);
        uint32_t* vp = reinterpret_cast<uint32_t*>(dv + (h.row0 + key_b) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            kp[nt * 4 + c] = pack_pair<T>(dka[nt][2] * scale, dka[nt][3] * scale);
            vp[nt * 4 + c] = pack_pair<T>(dva[nt][2], dva[nt][3]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward dQ (query-outer), the forward's geometry. S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
template <typename T>
__device__ void tc_bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dvec,
                          T* __restrict__ dq, int nh, int t_len, int64_t qsb, int64_t qsh, int64_t qst, int64_t ksb,
                          int64_t ksh, int64_t kst, int64_t vsb, int64_t vsh, int64_t vst, float scale) {
    alignas(16) __shared__ T Ks[TC_ROWS][TC_LD];  // [key][d]
    alignas(16) __shared__ T Kt[TC_ROWS][TC_LD];  // [d][key]
    alignas(16) __shared__ T Vs[TC_ROWS][TC_LD];  // [key][d]

    const int n_qt = (t_len + TC_ROWS - 1) / TC_ROWS;
    const int qt = n_qt - 1 - (int)blockIdx.x;
    const int bh = blockIdx.y;
    const int tid = threadIdx.x, warp = tid >> 5, g = (tid & 31) >> 2, c = tid & 3;
    const float sl2 = scale * TM_LOG2E;

    const TcHead<T> h = tc_head<T>(q, k, v, dout, bh, nh, t_len, qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst);

    // This block's Q and dO rows as A fragments (staged through Ks and Vs).
    uint32_t qa[4][4], ga[4][4];
    tc_load_tile<T>(Ks, nullptr, h.q, qst, qt * TC_ROWS, t_len, h.qv);
    tc_load_tile<T>(Vs, nullptr, h.g, FA_HS, qt * TC_ROWS, t_len, h.gv);
    __syncthreads();
    tc_load_a<T>(qa, Ks, warp * 16);
    tc_load_a<T>(ga, Vs, warp * 16);
    __syncthreads();

    const int ra = qt * TC_ROWS + warp * 16 + g, rb = ra + 8;
    const float l2a = ra < t_len ? lse[h.row0 + ra] * TM_LOG2E : 0.f;
    const float l2b = rb < t_len ? lse[h.row0 + rb] * TM_LOG2E : 0.f;
    const float da = ra < t_len ? dvec[h.row0 + ra] : 0.f;
    const float db = rb < t_len ? dvec[h.row0 + rb] : 0.f;
    float dqa[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dqa[nt][i] = 0.f;

    const int kv_end = min(t_len, (qt + 1) * TC_ROWS);
    for (int c0 = 0; c0 < kv_end; c0 += TC_ROWS) {
        tc_load_tile<T>(Ks, Kt, h.k, kst, c0, t_len, h.kv);
        tc_load_tile<T>(Vs, nullptr, h.v, vst, c0, t_len, h.vv);
        __syncthreads();

        float s[8][4], dp[8][4];
        tc_scores<T>(s, qa, Ks, dp, ga, Vs);  // S, dP
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = c0 + nt * 8 + 2 * c + (i & 1), row = i < 2 ? ra : rb;
                const float l2 = i < 2 ? l2a : l2b, d = i < 2 ? da : db;
                // key <= row < T (key < T follows); padded rows get P = 0
                const float p = (key <= row && row < t_len) ? exp2f(s[nt][i] * sl2 - l2) : 0.f;
                dp[nt][i] = p * (dp[nt][i] - d);
            }
        tc_mm_cn<T>(dqa, dp, Kt);  // dQ += dS K
        __syncthreads();
    }

    const float sc = scale;
    if (ra < t_len) {
        uint32_t* p = reinterpret_cast<uint32_t*>(dq + (h.row0 + ra) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) p[nt * 4 + c] = pack_pair<T>(dqa[nt][0] * sc, dqa[nt][1] * sc);
    }
    if (rb < t_len) {
        uint32_t* p = reinterpret_cast<uint32_t*>(dq + (h.row0 + rb) * FA_HS);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) p[nt * 4 + c] = pack_pair<T>(dqa[nt][2] * sc, dqa[nt][3] * sc);
    }
}

#define TC_KERNELS(T, SUFFIX)                                                                                         \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_tc_fwd_##SUFFIX(                                     \
        const T* q, const T* k, const T* v, T* o, float* lse, int nh, int t_len, FA_STRIDES, float scale) {          \
        tc_fwd<T>(q, k, v, o, lse, nh, t_len, FA_STRIDE_ARGS, scale);                                                \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_tc_bwd_dkdv_##SUFFIX(                                \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dvec, T* dk, T* dv, int nh, \
        int t_len, FA_STRIDES, float scale) {                                                                        \
        tc_bwd_dkdv<T>(q, k, v, dout, lse, dvec, dk, dv, nh, t_len, FA_STRIDE_ARGS, scale);                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_tc_bwd_dq_##SUFFIX(                                  \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dvec, T* dq, int nh,       \
        int t_len, FA_STRIDES, float scale) {                                                                        \
        tc_bwd_dq<T>(q, k, v, dout, lse, dvec, dq, nh, t_len, FA_STRIDE_ARGS, scale);                                \
    }

TC_KERNELS(__nv_bfloat16, bf16)
TC_KERNELS(__half, f16)
