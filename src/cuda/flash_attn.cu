// FlashAttention-2 on the tensor cores: causal, bf16/f16, head size 64, any T, multi-head or grouped-query (NKV
// key/value heads, each shared by NH / NKV consecutive query heads), every tensor read and written through strides.
// Rust launcher: flash_attn.rs (the API and the grid mapping); CPU run of these very kernels: dev/cuda/check_flash.cpp.
//
//   forward:  y = softmax(scale * q k^T + causal mask) v,  lse = row logsumexp (natural log) of the scaled scores
//   backward: D = rowsum(dy * y), then
//             P = exp(scale * q k^T - lse) recomputed tile by tile, dP = dy v^T, dS = P * (dP - D)
//             dq = scale * dS k, and D written out for the next kernel       (flash_dq, query-block outer, first)
//             dv = P^T dy, dk = scale * dS^T q                                (flash_dkdv, key-block outer, second)
//
// Layout (B, T, NH, NKV, HS = 64): every tensor of head size rows is addressed through its own (batch, head, row)
// strides (Fa2Layout; the last dim dense): element d of row t of head h in batch b of q is q[b*sb + h*sh + t*st + d].
// The decoder engine passes its fused projection qkv (B, T, C + 2 KW), C = NH * HS, KW = NKV * HS: q = qkv, k = qkv +
// C, v = qkv + C + KW, all with row stride C + 2 KW and head stride HS, y and dy (B, T, C), dq/dk/dv the same parts
// of dqkv; the candle op over head views passes (B, NH, T, HS) views of any aligned strides and dense gradients.
// Query head h reads key/value head h / (NH / NKV); each kernel writes every element of its outputs; lse and D are
// f32 (B, NH, T), dense. Nothing is permuted or copied around the kernels. With grouping, a dK/dV block of key
// head j sums over the query heads of its group, in head order.
//
// Determinism: no atomics. dq gets its own kernel that recomputes S and dP for its query block (2 of the backward's
// 7 tile products are this recomputation, FlashAttention-2's atomic dq accumulation would need 5), so every output
// element is a sum in one fixed order and runs repeat bit for bit.
//
// Scheme, per kernel: a CTA owns a block of rows (16 per warp and m-tile, held as mma A fragments in registers)
// and streams 64-row tiles of the other side through shared memory with cp.async (two stages: the next tile loads
// while this one is multiplied). Tiles are 64 elements (128 bytes) wide with the 16-byte chunk index XOR-swizzled
// by (row & 7), so both the cp.async stores and every ldmatrix (8 rows of 16 bytes) hit 32 distinct banks.
// Fragments come from ldmatrix (.trans where the product needs the tile transposed: P V, P^T dy, dS^T q, dS k);
// products are mma.sync m16n8k16 with f32 accumulation. Scores are scaled by scale * log2(e) so each probability
// is one ex2. Tiles wholly above the diagonal are never loaded; tiles a warp sees only masked rows of are skipped
// by that warp. Block order: every kernel's grid is 1-D, walked in groups of heads (`group` heads' blocks at a
// time, so the K/V of the heads in flight stay in L2), longest blocks first inside a group.
//
// Precision (as FlashAttention-2): S, dP, statistics and accumulators f32; P and dS rounded to the input type
// before their products; outputs rounded once at the end.
#include "common.cuh"
#include "cp_async.cuh"
#include "flash_tiles.cuh"
#include "mma.cuh"
#include "warp.cuh"

// ---- ldmatrix, fast log2 (exp2, tiles: flash_tiles.cuh; product: mma.cuh; shuffles: warp.cuh) ------------------
#ifdef __CUDACC__
// Shared-memory addresses as ldmatrix takes them (32-bit, shared window).
typedef uint32_t fa2_addr_t;
__device__ __forceinline__ fa2_addr_t fa2_addr(const void* p) { return smem_u32(p); }
__device__ __forceinline__ void fa2_ldsm(uint32_t (&r)[4], fa2_addr_t a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void fa2_ldsm_t(uint32_t (&r)[4], fa2_addr_t a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ float fa2_log2(float x) { return __log2f(x); }
#else
typedef uintptr_t fa2_addr_t;
inline fa2_addr_t fa2_addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }
inline void fa2_ldsm(uint32_t (&r)[4], fa2_addr_t a) { emu_ldmatrix_x4(r, reinterpret_cast<const void*>(a), false); }
inline void fa2_ldsm_t(uint32_t (&r)[4], fa2_addr_t a) { emu_ldmatrix_x4(r, reinterpret_cast<const void*>(a), true); }
inline float fa2_log2(float x) { return std::log2(x); }
#endif

// mma fragments (g = lane / 4, c = lane % 4; PTX ISA "Matrix Fragments for mma.m16n8k16"):
//   A 16x16: a0 = A[g][2c..2c+1], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..]
//   B 16x8:  b0 = B[2c..2c+1][g], b1 = B[2c+8..2c+9][g];   C 16x8 f32: c0,c1 = C[g][2c..], c2,c3 = C[g+8][2c..]

// Fragment addresses: a tile starts 1024-byte aligned and its rows are 128 bytes, so moving a fragment by 16 rows
// adds 2048 bytes and moving it by 16 columns (two chunks) XORs (kk << 5) into the address: one ALU op per
// ldmatrix instead of a register per (row, column) pair.

// A fragments of rows r0..r0+15 (r0 a multiple of 16), all four 16-wide k-steps of HS, from a swizzled tile.
template <typename T> __device__ __forceinline__ void fa2_load_a(uint32_t (&a)[4][4], const T* s, int r0) {
    const int lane = threadIdx.x & 31;
    const fa2_addr_t base = fa2_addr(s + fa2_swz(r0 + (lane & 15), (lane >> 4) << 3));
#pragma unroll
    for (int kk = 0; kk < 4; kk++) fa2_ldsm(a[kk], base ^ (kk << 5));
}

// acc[M][8] (M m-tiles of 16 rows x 64 columns) += A * X^T, X a swizzled tile [64 columns][64 k] (the B operand
// "col" layout is X's rows: plain ldmatrix). Each ldmatrix.x4 serves two n-tiles and all M m-tiles.
template <typename T, int M>
__device__ __forceinline__ void fa2_mm_abt(float (&acc)[M][8][4], const uint32_t (&a)[M][4][4], const T* x) {
    const int lane = threadIdx.x & 31;
    const fa2_addr_t base = fa2_addr(x + fa2_swz((lane & 7) + ((lane >> 4) << 3), ((lane >> 3) & 1) << 3));
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t b[4];
            fa2_ldsm(b, (base + np * 2048) ^ (kk << 5));
#pragma unroll
            for (int m = 0; m < M; m++) {
                mma_m16n8k16<T>(acc[m][2 * np], a[m][kk], b[0], b[1]);
                mma_m16n8k16<T>(acc[m][2 * np + 1], a[m][kk], b[2], b[3]);
            }
        }
}

// acc[M][8] (16 x 64 each, over the 64 columns of Y) += P * Y, P given as f32 C fragments p[M][8][4] (16 x 64, the
// k dimension = Y's rows) rounded to T here, Y a swizzled tile [64 k][64 n] (ldmatrix .trans).
template <typename T, int M>
__device__ __forceinline__ void fa2_mm_cy(float (&acc)[M][8][4], const float (&p)[M][8][4], const T* y) {
    const int lane = threadIdx.x & 31;
    const fa2_addr_t base = fa2_addr(y + fa2_swz((lane & 7) + (((lane >> 3) & 1) << 3), (lane >> 4) << 3));
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        uint32_t a[M][4];
#pragma unroll
        for (int m = 0; m < M; m++) {
            a[m][0] = pack_pair<T>(p[m][2 * kk][0], p[m][2 * kk][1]);
            a[m][1] = pack_pair<T>(p[m][2 * kk][2], p[m][2 * kk][3]);
            a[m][2] = pack_pair<T>(p[m][2 * kk + 1][0], p[m][2 * kk + 1][1]);
            a[m][3] = pack_pair<T>(p[m][2 * kk + 1][2], p[m][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t b[4];
            fa2_ldsm_t(b, (base + kk * 2048) ^ (np << 5));
#pragma unroll
            for (int m = 0; m < M; m++) {
                mma_m16n8k16<T>(acc[m][2 * np], a[m], b[0], b[1]);
                mma_m16n8k16<T>(acc[m][2 * np + 1], a[m], b[2], b[3]);
            }
        }
    }
}

// C fragments (16 x 64, rows r0..) rounded to T into a swizzled tile, times `mul`.
template <typename T>
__device__ __forceinline__ void fa2_stage_c(T* s, const float (&acc)[8][4], int r0, float mul_a, float mul_b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        *reinterpret_cast<uint32_t*>(s + fa2_swz(r0 + g, nt * 8 + 2 * c)) = pack_pair<T>(acc[nt][0] * mul_a, acc[nt][1] * mul_a);
        *reinterpret_cast<uint32_t*>(s + fa2_swz(r0 + g + 8, nt * 8 + 2 * c)) =
            pack_pair<T>(acc[nt][2] * mul_b, acc[nt][3] * mul_b);
    }
}

template <int M> __device__ __forceinline__ void fa2_zero(float (&x)[M][8][4]) {
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) x[m][n][i] = 0.f;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward. CTA: WARPS warps x M m-tiles = BR query rows; warp w owns rows 16*M*w .. +16*M. Key/value tiles of 64.
template <typename T, int WARPS, int M>
__device__ __forceinline__ void fa2_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        T* __restrict__ y, float* __restrict__ lse, const Fa2Layout& L, int nh, int nkv,
                                        int t_len, float scale, int group) {
    constexpr int BR = WARPS * 16 * M, NT = WARPS * 32, TILE = FA2_TILE * FA2_HS;
    static_assert(BR * FA2_HS + 4 * TILE <= 24576, "static shared memory is 48 KiB");
    alignas(1024) __shared__ T sm[BR * FA2_HS + 4 * TILE];
    T* qs = sm;                    // [BR][64], later the output staging
    T* ks = sm + BR * FA2_HS;      // [2 stages][64][64]
    T* vs = ks + 2 * TILE;         // [2 stages][64][64]

    const Fa2QueryBlock<T> blk = fa2_query_block(BR, q, k, v, L, nh, nkv, t_len, group);
    const int b = blk.b, h = blk.h, bh = blk.bh, qb = blk.blk;
    const T *qg = blk.q, *kg = blk.k, *vg = blk.v;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, cq = lane & 3;
    const int q0 = qb * BR, wr0 = q0 + warp * 16 * M, wr1 = wr0 + 16 * M - 1;  // this warp's rows
    const int kv_end = min(t_len, q0 + BR);
    const int n_kv = (kv_end + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    fa2_load_tile<BR, NT>(qs, qg, L.q.t_, q0, t_len);
    fa2_load_tile<FA2_TILE, NT>(ks, kg, L.k.t_, 0, t_len);
    fa2_load_tile<FA2_TILE, NT>(vs, vg, L.v.t_, 0, t_len);
    cp_async_commit();

    uint32_t qa[M][4][4];
    float acc[M][8][4], mx[M][2], ls[M][2];
    fa2_zero<M>(acc);
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) mx[m][hf] = -TM_INF, ls[m][hf] = 0.f;

    for (int t = 0; t < n_kv; t++) {
        cp_async_wait<0>();
        __syncthreads();  // tile t visible to all; every warp is done with tile t - 1, whose stage loads next
        if (t + 1 < n_kv) {
            const int st = (t + 1) & 1;
            fa2_load_tile<FA2_TILE, NT>(ks + st * TILE, kg, L.k.t_, (t + 1) * FA2_TILE, t_len);
            fa2_load_tile<FA2_TILE, NT>(vs + st * TILE, vg, L.v.t_, (t + 1) * FA2_TILE, t_len);
        }
        cp_async_commit();
        if (t == 0) {
#pragma unroll
            for (int m = 0; m < M; m++) fa2_load_a<T>(qa[m], qs, warp * 16 * M + m * 16);
        }
        const int c0 = t * FA2_TILE;
        if (c0 > wr1) continue;  // every key of this tile is in the future of every row of this warp
        const T* kt = ks + (t & 1) * TILE;
        const T* vt = vs + (t & 1) * TILE;

        float s[M][8][4];
        fa2_zero<M>(s);
        fa2_mm_abt<T, M>(s, qa, kt);

        const bool diag = c0 + FA2_TILE - 1 > wr0;  // some key of the tile is after some row of the warp
#pragma unroll
        for (int m = 0; m < M; m++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int row = wr0 + m * 16 + g + 8 * hf;
                float tmax = -TM_INF;
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        float x = s[m][nt][2 * hf + j];
                        if (diag && c0 + nt * 8 + 2 * cq + j > row) x = -TM_INF;
                        s[m][nt][2 * hf + j] = x;
                        tmax = fmaxf(tmax, x);
                    }
                tmax = fmaxf(tmax, warp_shfl_xor(tmax, 1));
                tmax = fmaxf(tmax, warp_shfl_xor(tmax, 2));
                // Tile 0 holds key 0, which every row sees: the maximum is finite from the first tile on.
                const float mnew = fmaxf(mx[m][hf], tmax);
                const float alpha = fa2_exp2((mx[m][hf] - mnew) * sl2);  // 0 on the first tile
                mx[m][hf] = mnew;
                const float msc = mnew * sl2;
                float rs = 0.f;
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        const float p = fa2_exp2(s[m][nt][2 * hf + j] * sl2 - msc);
                        s[m][nt][2 * hf + j] = p;
                        rs += p;
                    }
                ls[m][hf] = ls[m][hf] * alpha + rs;
#pragma unroll
                for (int nt = 0; nt < 8; nt++) acc[m][nt][2 * hf] *= alpha, acc[m][nt][2 * hf + 1] *= alpha;
            }
        }
        fa2_mm_cy<T, M>(acc, s, vt);  // O += P V
    }

    // Epilogue: O / l through shared memory (this warp's own rows of the Q tile) to y with 16-byte stores.
#pragma unroll
    for (int m = 0; m < M; m++) {
        float inv[2];
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float l = ls[m][hf];
            l += warp_shfl_xor(l, 1);
            l += warp_shfl_xor(l, 2);
            inv[hf] = 1.f / l;
            const int row = wr0 + m * 16 + g + 8 * hf;
            if (cq == 0 && row < t_len) lse[(int64_t)bh * t_len + row] = mx[m][hf] * scale + fa2_log2(l) * TM_LN2;
        }
        fa2_stage_c<T>(qs, acc[m], warp * 16 * M + m * 16, inv[0], inv[1]);
    }
    __syncthreads();
    fa2_store_tile<BR, NT>(fa2_head(y, L.y, b, h), L.y.t_, qs, q0, t_len);
}

// ---------------------------------------------------------------------------------------------------------------
// Backward dK, dV. CTA: WARPS warps x 16 keys = BK keys; query tiles of 64 stream from the one holding the CTA's
// first key to T. Per tile and warp: S^T = K Q^T, dP^T = V dY^T (K, V as A fragments in registers),
// P^T = exp2(S^T * scale * log2e - lse * log2e), dS^T = P^T (dP^T - D); dV += P^T dY, dK += dS^T Q.
template <typename T, int WARPS>
__device__ __forceinline__ void fa2_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const T* __restrict__ dy, const float* __restrict__ lse,
                                         const float* __restrict__ dvec, T* __restrict__ dk, T* __restrict__ dv,
                                         const Fa2Layout& L, int nh, int nkv, int t_len, float scale, int group) {
    constexpr int BK = WARPS * 16, NT = WARPS * 32, TILE = FA2_TILE * FA2_HS;
    static_assert(BK * FA2_HS <= 2 * TILE, "the K and V blocks are staged in two tiles each");
    alignas(1024) __shared__ T sm[4 * TILE];
    __shared__ float lsm[2][FA2_TILE], dsm[2][FA2_TILE];
    T* qs = sm;              // [2 stages][64][64]; first the K block, at the end the dK block
    T* gs = sm + 2 * TILE;   // [2 stages][64][64]; first the V block, at the end the dV block

    const int n_kb = (t_len + BK - 1) / BK;
    int bh, kb;
    // bh: (batch, key/value head); the group's query heads h0 .. h0 + nq - 1.
    fa2_coords(n_kb, (int)(gridDim.x / n_kb), group, false, bh, kb);
    const int b = bh / nkv, hk = bh - b * nkv, nq = nh / nkv, h0 = hk * nq;
    const T* kg = fa2_head(k, L.k, b, hk);
    const T* vg = fa2_head(v, L.v, b, hk);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, cq = lane & 3;
    const int k0 = kb * BK, kw0 = k0 + warp * 16;  // this warp's keys: kw0 .. kw0 + 15
    const int i_first = k0 / FA2_TILE, n_qt = (t_len + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    fa2_load_tile<BK, NT>(qs, kg, L.k.t_, k0, t_len);
    fa2_load_tile<BK, NT>(gs, vg, L.v.t_, k0, t_len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t ka[1][4][4], va[1][4][4];
    fa2_load_a<T>(ka[0], qs, warp * 16);
    fa2_load_a<T>(va[0], gs, warp * 16);
    __syncthreads();  // the K, V staging is overwritten by the first query tile next

    // Step j of the stream: query tile i_first + j % per of the group's query head h0 + j / per (head by head, so
    // the sums run in one fixed order).
    const int per = n_qt - i_first, steps = nq * per;
    auto load_q_tile = [&](int j, int st) {
        const int hq = h0 + j / per, i0 = (i_first + j % per) * FA2_TILE;
        fa2_load_q_stage<NT>(qs + st * TILE, gs + st * TILE, lsm[st], dsm[st], q, dy, lse, dvec, L, b, nh, hq, i0,
                             t_len, tid);
    };
    load_q_tile(0, 0);
    cp_async_commit();

    float dka[1][8][4], dva[1][8][4];
    fa2_zero<1>(dka);
    fa2_zero<1>(dva);
    for (int j = 0; j < steps; j++) {
        const int st = j & 1;
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < steps) load_q_tile(j + 1, st ^ 1);
        cp_async_commit();
        const int i0 = (i_first + j % per) * FA2_TILE;
        if (i0 + FA2_TILE - 1 < kw0) continue;  // every query of the tile is before every key of this warp
        const T* qt = qs + st * TILE;
        const T* gt = gs + st * TILE;

        float s[1][8][4], dp[1][8][4];
        fa2_zero<1>(s);
        fa2_zero<1>(dp);
        fa2_mm_abt<T, 1>(s, ka, qt);   // S^T: keys x queries
        fa2_mm_abt<T, 1>(dp, va, gt);  // dP^T
        const bool edge = i0 < kw0 + 15 || i0 + FA2_TILE > t_len;  // some masked (key, query) pair in the tile
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int ql = nt * 8 + 2 * cq + j;
                const float l2 = lsm[st][ql] * TM_LOG2E, dd = dsm[st][ql];
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int key = kw0 + g + 8 * hf, q = i0 + ql;
                    float p = fa2_exp2(s[0][nt][2 * hf + j] * sl2 - l2);
                    if (edge && (q < key || q >= t_len)) p = 0.f;
                    s[0][nt][2 * hf + j] = p;
                    dp[0][nt][2 * hf + j] = p * (dp[0][nt][2 * hf + j] - dd);
                }
            }
        fa2_mm_cy<T, 1>(dva, s, gt);   // dV += P^T dY
        fa2_mm_cy<T, 1>(dka, dp, qt);  // dK += dS^T Q
    }

    __syncthreads();  // every warp is done with the last tiles before they become the output staging
    fa2_stage_c<T>(qs, dka[0], warp * 16, scale, scale);
    fa2_stage_c<T>(gs, dva[0], warp * 16, 1.f, 1.f);
    __syncthreads();
    fa2_store_tile<BK, NT>(fa2_head(dk, L.dk, b, hk), L.dk.t_, qs, k0, t_len);
    fa2_store_tile<BK, NT>(fa2_head(dv, L.dv, b, hk), L.dv.t_, gs, k0, t_len);
}

// ---------------------------------------------------------------------------------------------------------------
// Backward dQ, the first backward kernel. CTA: WARPS warps x 16 queries = BQ queries (Q and dY as A fragments),
// key tiles of 64 up to the diagonal. First D = rowsum(dY * Y) for the block's rows (written to dvec for flash_dkdv:
// no separate pass over y and dy), then S = Q K^T, dP = dY V^T, P = exp2(S * scale * log2e - lse * log2e),
// dS = P (dP - D), dQ += dS K.
template <typename T, int WARPS>
__device__ __forceinline__ void fa2_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       const T* __restrict__ y, const T* __restrict__ dy, const float* __restrict__ lse,
                                       float* __restrict__ dvec, T* __restrict__ dq, const Fa2Layout& L, int nh, int nkv,
                                       int t_len, float scale, int group) {
    constexpr int BQ = WARPS * 16, NT = WARPS * 32, TILE = FA2_TILE * FA2_HS;
    static_assert(BQ * FA2_HS <= 2 * TILE, "the Q and dY blocks are staged in two tiles each");
    static_assert(4 * TILE + BQ * FA2_HS <= 24576, "static shared memory is 48 KiB");
    alignas(1024) __shared__ T sm[4 * TILE + BQ * FA2_HS];
    T* ks = sm;                // [2 stages][64][64]; first the Q block, at the end the dQ block
    T* vs = sm + 2 * TILE;     // [2 stages][64][64]; first the dY block
    T* ys = sm + 4 * TILE;     // [BQ][64]: the Y block

    const Fa2QueryBlock<T> blk = fa2_query_block(BQ, q, k, v, L, nh, nkv, t_len, group);
    const int b = blk.b, h = blk.h, bh = blk.bh, qb = blk.blk;
    const T *qg = blk.q, *kg = blk.k, *vg = blk.v;
    const T* gg = fa2_head(dy, L.y, b, h);
    const T* yg = fa2_head(y, L.y, b, h);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, cq = lane & 3;
    const int q0 = qb * BQ, wr0 = q0 + warp * 16, wr1 = wr0 + 15;
    const int kv_end = min(t_len, q0 + BQ);
    const int n_kv = (kv_end + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    fa2_load_tile<BQ, NT>(ks, qg, L.q.t_, q0, t_len);
    fa2_load_tile<BQ, NT>(vs, gg, L.y.t_, q0, t_len);
    fa2_load_tile<BQ, NT>(ys, yg, L.y.t_, q0, t_len);
    cp_async_commit();
    float l2[2], dd[2];
    fa2_lse_rows(l2, lse, bh, t_len, wr0 + g);  // rows >= T: 0 (their output is dropped)
    cp_async_wait<0>();
    __syncthreads();
    fa2_block_d(dd, ys, vs, dvec, bh, t_len, q0, tid, g);  // D; vs holds the dY block here
    uint32_t qa[1][4][4], ga[1][4][4];
    fa2_load_a<T>(qa[0], ks, warp * 16);
    fa2_load_a<T>(ga[0], vs, warp * 16);
    __syncthreads();  // the Q, dY staging is overwritten by the first key tile next

    fa2_load_tile<FA2_TILE, NT>(ks, kg, L.k.t_, 0, t_len);
    fa2_load_tile<FA2_TILE, NT>(vs, vg, L.v.t_, 0, t_len);
    cp_async_commit();

    float dqa[1][8][4];
    fa2_zero<1>(dqa);
    for (int t = 0; t < n_kv; t++) {
        const int st = t & 1;
        cp_async_wait<0>();
        __syncthreads();
        if (t + 1 < n_kv) {
            fa2_load_tile<FA2_TILE, NT>(ks + (st ^ 1) * TILE, kg, L.k.t_, (t + 1) * FA2_TILE, t_len);
            fa2_load_tile<FA2_TILE, NT>(vs + (st ^ 1) * TILE, vg, L.v.t_, (t + 1) * FA2_TILE, t_len);
        }
        cp_async_commit();
        const int c0 = t * FA2_TILE;
        if (c0 > wr1) continue;
        const T* kt = ks + st * TILE;
        const T* vt = vs + st * TILE;

        float s[1][8][4], dp[1][8][4];
        fa2_zero<1>(s);
        fa2_zero<1>(dp);
        fa2_mm_abt<T, 1>(s, qa, kt);   // S
        fa2_mm_abt<T, 1>(dp, ga, vt);  // dP
        const bool diag = c0 + FA2_TILE - 1 > wr0;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int key = c0 + nt * 8 + 2 * cq + j, row = wr0 + g + 8 * hf;
                    float p = fa2_exp2(s[0][nt][2 * hf + j] * sl2 - l2[hf]);
                    if (diag && key > row) p = 0.f;
                    dp[0][nt][2 * hf + j] = p * (dp[0][nt][2 * hf + j] - dd[hf]);
                }
        fa2_mm_cy<T, 1>(dqa, dp, kt);  // dQ += dS K
    }

    __syncthreads();
    fa2_stage_c<T>(ks, dqa[0], warp * 16, scale, scale);
    __syncthreads();
    fa2_store_tile<BQ, NT>(fa2_head(dq, L.dq, b, h), L.dq.t_, ks, q0, t_len);
}

// ---- entry points ----------------------------------------------------------------------------------------------
// Names: flash_<pass>_<dtype>_w<warps>[m<m-tiles>][b<blocks>]; flash_attn.rs lists the variants and picks the
// default. `b3` kernels ask __launch_bounds__ for 3 resident blocks per SM (registers capped at 168: 12 warps per SM
// instead of 8, for a few spilled bytes; ptxas -v: fwd w4m1 0, dq 8, dK/dV 88 bytes); the others leave registers
// to the compiler (fwd w4m2 255 registers with 60 bytes spilled, dq w4 220, dK/dV w4 254, 2 blocks per SM).
#define FA2_FWD(T, SFX, W, M, MINB, NAME)                                                                              \
    extern "C" __global__ void __launch_bounds__(W * 32, MINB) flash_fwd_##SFX##_##NAME(                              \
        const T* q, const T* k, const T* v, T* y, float* lse, Fa2Layout L, int nh, int nkv, int t_len, float scale,   \
        int group) {                                                                                                   \
        fa2_fwd<T, W, M>(q, k, v, y, lse, L, nh, nkv, t_len, scale, group);                                            \
    }
#define FA2_BWD(T, SFX, W, MINB, NAME)                                                                                 \
    extern "C" __global__ void __launch_bounds__(W * 32, MINB) flash_dkdv_##SFX##_##NAME(                             \
        const T* q, const T* k, const T* v, const T* dy, const float* lse, const float* dvec, T* dk, T* dv,           \
        Fa2Layout L, int nh, int nkv, int t_len, float scale, int group) {                                             \
        fa2_dkdv<T, W>(q, k, v, dy, lse, dvec, dk, dv, L, nh, nkv, t_len, scale, group);                               \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(W * 32, MINB) flash_dq_##SFX##_##NAME(                               \
        const T* q, const T* k, const T* v, const T* y, const T* dy, const float* lse, float* dvec, T* dq,            \
        Fa2Layout L, int nh, int nkv, int t_len, float scale, int group) {                                             \
        fa2_dq<T, W>(q, k, v, y, dy, lse, dvec, dq, L, nh, nkv, t_len, scale, group);                                  \
    }
#define FA2_ALL(T, SFX)                                                                                                \
    FA2_FWD(T, SFX, 4, 2, 1, w4m2)                                                                                     \
    FA2_FWD(T, SFX, 8, 1, 1, w8m1)                                                                                     \
    FA2_FWD(T, SFX, 4, 1, 1, w4m1)                                                                                     \
    FA2_FWD(T, SFX, 4, 1, 3, w4m1b3)                                                                                   \
    FA2_BWD(T, SFX, 4, 1, w4)                                                                                          \
    FA2_BWD(T, SFX, 4, 3, w4b3)                                                                                        \
    FA2_BWD(T, SFX, 8, 1, w8)

FA2_ALL(__nv_bfloat16, bf16)
FA2_ALL(__half, f16)
