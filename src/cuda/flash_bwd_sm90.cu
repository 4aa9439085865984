// tokenmill: sm_90a
// The causal flash-attention backward on Hopper's warpgroup product (wgmma.cuh): bf16 in, f32 accumulation, head
// size 64, deterministic. Two kernels, drop-ins for flash_attn.cu's (same arguments, same strided layout Fa2Layout,
// same inputs and outputs), either usable with the other's counterpart: flash_dq_sm90 (dQ, and D = rowsum(dy * y)
// into dvec, first; below the dK/dV kernel) and flash_dkdv_sm90 (dK, dV, reading lse and D). Launcher:
// flash_bwd_sm90.rs. CPU run against flash_attn.cu's kernels and a double reference: dev/cuda/check_flash.cpp; on
// the device: tests/kernels_wgmma.rs.
//
// dK/dV://
// Per CTA: WG warpgroups x 64 keys of one (batch, key/value head); warpgroup w owns keys k0 + 64w .. + 63, their K
// and V rows held in registers as wgmma A fragments for the whole kernel. 64-row tiles of Q and dY (and 64 of lse,
// D) of the group's query heads stream through shared memory by cp.async, two stages (the next tile lands while
// this one is multiplied). Per tile and warpgroup, four m64n64k16 chains of four k16 products each:
//   S^T  = K Q^T      A = K (registers),    B = the Q tile, K-major (its rows are queries, hs contiguous)
//   dP^T = V dY^T     A = V (registers),    B = the dY tile, K-major
//   P^T = exp2(S^T * scale * log2e - lse * log2e), dS^T = P^T (dP^T - D), masked (query < key, query >= T) to 0,
//   rounded to bf16 straight into A-fragment registers (the accumulator layout of columns 16kk..16kk+15 is the A
//   fragment of k-step kk: wgmma.cuh section 4)
//   dV  += P^T dY     A = P^T (registers),  B = the dY tile, N-major (its rows are the k dimension, queries)
//   dK  += dS^T Q     A = dS^T (registers), B = the Q tile, N-major
// One tile layout serves both B forms: a [64][64] bf16 tile with fa2_swz's 128-byte rows (chunk c of row r at
// c ^ (r % 8)) is the canonical 128B-swizzled K-major layout of its rows and, as its 64 columns fit one 128-byte
// row, also the canonical 128B-swizzled MN-major layout of its columns (wgmma.cuh section 3). No transposes, no
// ldmatrix. A warpgroup skips a tile whose queries all precede its keys (warpgroup-uniform: wgmma is collective).
//
// Determinism: each output element is one warpgroup's f32 accumulator summed over the query tiles of the group's
// query heads in a fixed order (head by head, tile by tile); no atomics. Precision as flash_attn.cu: S, dP, the
// statistics and accumulators f32, P and dS rounded to bf16 before their products, dK (times scale) and dV rounded
// once at the end.
//
// Not yet FA3: no TMA, no producer warpgroup, no overlap of one tile's softmax with the tensor cores inside a CTA (other
// resident CTAs hide it). The plain loop waits for each product chain before using it; the pipelined one (PIPE, one
// warpgroup, kernels `..._wg1p`) issues the next tile's S and dP chains right behind this tile's last chain and
// waits for both. Both kernels.
#include "common.cuh"
#include "cp_async.cuh"
#include "flash_tiles.cuh"
#include "mma.cuh"
#include "pipeline.cuh"
#include "warp.cuh"
#include "wgmma.cuh"

// The descriptor of k-step kk of a [64][64] swizzled tile read K-major (rows = the product's N) or N-major (rows =
// the product's K).
__device__ __forceinline__ uint64_t fs_desc_k(const __nv_bfloat16* tile, int kk) {
    return wgmma_desc(tile + kk * 16, 16, 1024, WGMMA_SWIZZLE_128B);  // 32 bytes along the swizzled row per step
}
__device__ __forceinline__ uint64_t fs_desc_n(const __nv_bfloat16* tile, int kk) {
    return wgmma_desc(tile + kk * 16 * FA2_HS, 8192, 1024, WGMMA_SWIZZLE_128B);  // 16 rows per step
}

// A fragments (wgmma.cuh section 4) of this warpgroup's 64 rows r0.. of a swizzled tile, all four k-steps of HS.
__device__ __forceinline__ void fs_load_a(uint32_t (&a)[4][4], const __nv_bfloat16* s, int r0) {
    const int t = (int)threadIdx.x & 127, w = t >> 5, g = (t & 31) >> 2, c = t & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++)
            a[kk][r] = *reinterpret_cast<const uint32_t*>(s + fa2_swz(r0 + 16 * w + g + 8 * (r & 1), 16 * kk + 2 * c + 8 * (r >> 1)));
}

// Accumulators of a 64 x 64 product (columns = the next product's k) rounded to bf16 A fragments.
__device__ __forceinline__ void fs_to_a(uint32_t (&a)[4][4], const float (&d)[32]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) a[kk][r] = pack_pair<__nv_bfloat16>(d[8 * kk + 2 * r], d[8 * kk + 2 * r + 1]);
}

// d (64 x 64) = A B over HS = 64 (four k16 products, the first with scale-d `accumulate`), B from `tile` read as
// K-major (TB = 0) or N-major (TB = 1). Issued only; the caller commits and waits.
template <int TB>
__device__ __forceinline__ void fs_chain(float (&d)[32], const uint32_t (&a)[4][4], const __nv_bfloat16* tile, int accumulate) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
        wgmma_rs<64, TB>(d, a[kk], TB ? fs_desc_n(tile, kk) : fs_desc_k(tile, kk), kk > 0 || accumulate);
}

// Issues d1 = A1 B1 and d2 = A2 B2 (fs_chain<TB>, scale-d `accumulate`) as one wgmma group, after the fences their
// registers need (wgmma.cuh section 5).
template <int TB>
__device__ __forceinline__ void fs_issue2(float (&d1)[32], const uint32_t (&a1)[4][4], const __nv_bfloat16* b1,
                                          float (&d2)[32], const uint32_t (&a2)[4][4], const __nv_bfloat16* b2,
                                          int accumulate) {
    wgmma_fence_operand(d1);
    wgmma_fence_operand(d2);
    wgmma_fence();
    fs_chain<TB>(d1, a1, b1, accumulate);
    fs_chain<TB>(d2, a2, b2, accumulate);
    wgmma_commit();
}

// d1 = A1 B1^T, d2 = A2 B2^T (fresh accumulators) as one wgmma group, A1, A2 (64 x 64) also from swizzled tiles in
// shared memory read K-major (the warp-specialised kernel keeps its K and V blocks there: 32 registers fewer than
// the fragments).
__device__ __forceinline__ void fs_issue2_ss(float (&d1)[32], const __nv_bfloat16* a1, const __nv_bfloat16* b1,
                                             float (&d2)[32], const __nv_bfloat16* a2, const __nv_bfloat16* b2) {
    wgmma_fence_operand(d1);
    wgmma_fence_operand(d2);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_ss<64, 0, 0>(d1, fs_desc_k(a1, kk), fs_desc_k(b1, kk), kk > 0);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_ss<64, 0, 0>(d2, fs_desc_k(a2, kk), fs_desc_k(b2, kk), kk > 0);
    wgmma_commit();
}

// This warpgroup's 64 x 64 accumulators `d` (rows r_base.., wgmma.cuh section 4) times `mul`, rounded to bf16 into a
// swizzled tile of shared memory (the output staging of every kernel here).
__device__ __forceinline__ void fs_stage_acc(__nv_bfloat16* tile, const float (&d)[32], float mul, int r_base) {
    const int tw = (int)threadIdx.x & 127, r0 = r_base + 16 * (tw >> 5) + ((tw & 31) >> 2), cq = tw & 3;
#pragma unroll
    for (int i = 0; i < 32; i += 2) {
        const int row = r0 + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * cq;
        *reinterpret_cast<uint32_t*>(tile + fa2_swz(row, col)) = pack_pair<__nv_bfloat16>(d[i] * mul, d[i + 1] * mul);
    }
}

// Waits until every issued group has retired; the accumulators `d` are then readable (and pinned for the compiler).
template <typename... D> __device__ __forceinline__ void fs_wait_all(D&... d) {
    wgmma_wait<0>();
    (wgmma_fence_operand(d), ...);
}

// P^T and dS^T of one (64 keys x 64 queries) tile from the S^T and dP^T accumulators (rows = keys kw0.., columns =
// queries i0..; lse and D of the tile's queries in l, dd), masked (query < key, query >= T) to 0, rounded to bf16 A
// fragments for the dV and dK products.
__device__ __forceinline__ void fs_dkdv_probs(uint32_t (&pa)[4][4], uint32_t (&dsa)[4][4], float (&s)[32], float (&dp)[32],
                                              const float* l, const float* dd, int i0, int kw0, int t_len, float sl2) {
    const int tw = (int)threadIdx.x & 127, w = tw >> 5, g = (tw & 31) >> 2, cq = tw & 3;
    const bool edge = i0 < kw0 + 63 || i0 + FA2_TILE > t_len;  // some masked (key, query) pair in the tile
#pragma unroll
    for (int i = 0; i < 32; i++) {
        const int ql = 8 * (i >> 2) + 2 * cq + (i & 1), key = kw0 + 16 * w + g + 8 * ((i >> 1) & 1), qi = i0 + ql;
        float p = fa2_exp2(s[i] * sl2 - l[ql] * TM_LOG2E);
        if (edge && (qi < key || qi >= t_len)) p = 0.f;
        s[i] = p;
        dp[i] = p * (dp[i] - dd[ql]);
    }
    fs_to_a(pa, s);
    fs_to_a(dsa, dp);
}

template <int WG, bool PIPE>
__device__ __forceinline__ void fs_dkdv(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                        const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ dy,
                                        const float* __restrict__ lse, const float* __restrict__ dvec,
                                        __nv_bfloat16* __restrict__ dk, __nv_bfloat16* __restrict__ dv, const Fa2Layout& L,
                                        int nh, int nkv, int t_len, float scale, int group) {
    typedef __nv_bfloat16 T;
    constexpr int BK = WG * 64, NT = WG * 128, TILE = FA2_TILE * FA2_HS;
    static_assert(BK * FA2_HS <= 2 * TILE, "the K and V blocks (and at the end dK and dV) are staged in two tiles each");
    alignas(1024) __shared__ T sm[4 * TILE];
    __shared__ float lsm[2][FA2_TILE], dsm[2][FA2_TILE];
    T* qs = sm;             // [2 stages][64][64] Q; first the K block, at the end the dK block
    T* gs = sm + 2 * TILE;  // [2 stages][64][64] dY; first the V block, at the end the dV block

    const int n_kb = (t_len + BK - 1) / BK;
    int bh, kb;
    fa2_coords(n_kb, (int)(gridDim.x / n_kb), group, false, bh, kb);  // bh: (batch, key/value head)
    const int b = bh / nkv, hk = bh - b * nkv, nq = nh / nkv, h0 = hk * nq;

    const int tid = (int)threadIdx.x, wg = tid >> 7;
    const int k0 = kb * BK, kw0 = k0 + 64 * wg;  // this warpgroup's keys: kw0 .. kw0 + 63
    const int i_first = k0 / FA2_TILE, n_qt = (t_len + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    fa2_load_tile<BK, NT>(qs, fa2_head(k, L.k, b, hk), L.k.t_, k0, t_len);
    fa2_load_tile<BK, NT>(gs, fa2_head(v, L.v, b, hk), L.v.t_, k0, t_len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t ka[4][4], va[4][4];
    fs_load_a(ka, qs, 64 * wg);
    fs_load_a(va, gs, 64 * wg);
    __syncthreads();  // the K, V staging is overwritten by the first query tile next

    // Step j: query tile i_first + j % per of the group's query head h0 + j / per (head by head: one fixed order).
    const int per = n_qt - i_first, steps = nq * per;
    auto load_q_tile = [&](int j, int st) {
        const int hq = h0 + j / per, i0 = (i_first + j % per) * FA2_TILE;
        fa2_load_q_stage<NT>(qs + st * TILE, gs + st * TILE, lsm[st], dsm[st], q, dy, lse, dvec, L, b, nh, hq, i0,
                             t_len, tid);
    };
    load_q_tile(0, 0);
    cp_async_commit();

    float dka[32], dva[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dka[i] = dva[i] = 0.f;
    if constexpr (PIPE) {
        // One warpgroup: no tile is skipped. S^T, dP^T of step j + 1 are issued right behind dV, dK of step j, so
        // the tensor cores run both chains back to back; stage j & 1 is refilled once both have retired.
        static_assert(WG == 1, "the pipelined loop is written for one warpgroup");
        float s[32], dp[32];
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (steps > 1) load_q_tile(1, 1);
        cp_async_commit();
        fs_issue2<0>(s, ka, qs, dp, va, gs, 0);
        fs_wait_all(s, dp);
        for (int j = 0; j < steps; j++) {
            const int st = j & 1;
            const int i0 = (i_first + j % per) * FA2_TILE;
            const T* qt = qs + st * TILE;
            const T* gt = gs + st * TILE;
            uint32_t pa[4][4], dsa[4][4];
            fs_dkdv_probs(pa, dsa, s, dp, lsm[st], dsm[st], i0, kw0, t_len, sl2);
            fs_issue2<1>(dva, pa, gt, dka, dsa, qt, 1);  // dV += P^T dY, dK += dS^T Q
            if (j + 1 < steps) {
                cp_async_wait<0>();  // tile j + 1 has landed
                fence_proxy_async();
                __syncthreads();
                fs_issue2<0>(s, ka, qs + (st ^ 1) * TILE, dp, va, gs + (st ^ 1) * TILE, 0);  // S^T, dP^T of step j + 1
            }
            fs_wait_all(dva, dka, s, dp);
            __syncthreads();  // every product that read stage st has retired before it is refilled
            if (j + 2 < steps) load_q_tile(j + 2, st);
            cp_async_commit();
        }
    } else {
        for (int j = 0; j < steps; j++) {
            const int st = j & 1;
            cp_async_wait<0>();
            fence_proxy_async();  // this thread's cp.async writes, visible to the products' async proxy
            __syncthreads();      // ... and everyone's; every product of step j - 1 (stage st ^ 1) has retired
            if (j + 1 < steps) load_q_tile(j + 1, st ^ 1);
            cp_async_commit();
            const int i0 = (i_first + j % per) * FA2_TILE;
            if (i0 + FA2_TILE - 1 < kw0) continue;  // every query of the tile precedes every key of this warpgroup
            const T* qt = qs + st * TILE;
            const T* gt = gs + st * TILE;

            float s[32], dp[32];
            fs_issue2<0>(s, ka, qt, dp, va, gt, 0);  // S^T (keys x queries), dP^T
            fs_wait_all(s, dp);

            uint32_t pa[4][4], dsa[4][4];
            fs_dkdv_probs(pa, dsa, s, dp, lsm[st], dsm[st], i0, kw0, t_len, sl2);

            fs_issue2<1>(dva, pa, gt, dka, dsa, qt, 1);  // dV += P^T dY, dK += dS^T Q
            fs_wait_all(dva, dka);
        }
    }

    __syncthreads();  // every warpgroup is done with the last tiles before they become the output staging
    fs_stage_acc(qs, dka, scale, 64 * wg);
    fs_stage_acc(gs, dva, 1.f, 64 * wg);
    __syncthreads();
    fa2_store_tile<BK, NT>(fa2_head(dk, L.dk, b, hk), L.dk.t_, qs, k0, t_len);
    fa2_store_tile<BK, NT>(fa2_head(dv, L.dv, b, hk), L.dv.t_, gs, k0, t_len);
}

// The start of the warp-specialised kernels (fs_dkdv_ws, fs_dq_ws), after the consumers issued the cp.async copies of
// the block's own rows: they land (fenced for the products' async proxy), thread 0 initialises the stages' mbarriers
// (`full`: the producer warpgroup's 128 arrivals; `empty`: both consumers' thread 0) and the block meets.
template <int STAGES> __device__ __forceinline__ void fs_ws_start(uint64_t* full, uint64_t* empty) {
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 128);
            mbar_init(&empty[s], 2);
        }
        mbar_init_fence();
    }
    __syncthreads();
}

// The producer warpgroup of the warp-specialised kernels (fs_dkdv_ws, fs_dq_ws): tiles 0 .. n - 1 through STAGES
// stages, `load(j)` issuing tile j's cp.async copies (this warpgroup's 128 threads) into stage j % STAGES; STAGES - 1
// tiles in flight. Each stage's `full` mbarrier gets the warpgroup's 128 arrivals once the tile's copies have landed
// (fenced for the products' async proxy); a stage is refilled once its `empty` phase has completed (both consumers
// done with the tile before). Registers drop to 40 (setmaxnreg): the consumers take the rest.
template <int STAGES, typename Load>
__device__ __forceinline__ void fs_ws_produce(int n, uint64_t* full, uint64_t* empty, Load load) {
    setmaxnreg_dec<40>();
    for (int j = 0; j < STAGES; j++) {
        if (j < n) load(j);
        cp_async_commit();  // (empty groups past the last tile keep the count)
    }
    for (int j = 0; j < n; j++) {
        cp_async_wait<STAGES - 1>();  // tile j has landed
        fence_proxy_async();          // for the consumers' products (the async proxy)
        mbar_arrive(&full[j % STAGES]);
        if (j + STAGES < n) {
            mbar_wait(&empty[j % STAGES], (j / STAGES) & 1);  // both consumers are done with tile j
            load(j + STAGES);
        }
        cp_async_commit();
    }
    cp_async_wait<0>();
}

// Warp-specialised dK/dV (kernels `..._ws<stages>`): 384 threads. Warpgroups 0 and 1 are consumers, each owning 64
// of the block's 128 keys; the K and V blocks stay in shared memory (the S^T and dP^T products read their A from
// there, not from register fragments as above). Warpgroup 2 is the producer, alone streaming the query tiles (Q, dY,
// lse, D) through STAGES stages by cp.async: it waits until a stage is free (its `empty` mbarrier: both consumers'
// thread 0 arrive once the products that read it have retired), loads it, waits for its own copies, fences them for
// the async proxy and arrives on the stage's `full` mbarrier (its 128 threads), keeping STAGES - 1 tiles in flight.
// The consumers never wait on each other's loads, only on `full`, and take turns issuing their product chains (named
// barriers 1 + c: consumer c's turn, 256 threads; pipeline.cuh, checked on its own by pipeline_check.cu): S^T, dP^T
// of consumer 0, of consumer 1, dV, dK of consumer 0, of consumer 1, ..., so the exponentials of one run while the
// other's products occupy the tensor cores. A consumer whose keys all follow a tile's queries still takes its turns
// (issuing nothing) and releases the stage. Per key the order of the sums is the plain loop's (query heads, then
// tiles): the same bits as the other variants. Registers: the launch bound gives every thread 168 (65536 / 384); the
// producer drops to 40 and the consumers rise to 232 (setmaxnreg; their code never joins the producer's again, so
// the compiler allocates each branch on its own count).
// Shared memory (dynamic, fs_ws_smem, past 48 KiB: the launcher opts in): the K and V blocks ([2][128][64] bf16,
// swizzled; at the end the dK and dV blocks), the stages ([STAGES][Q 64x64 | dY 64x64]), lse and D per stage, the
// 2 * STAGES mbarriers.
#define FS_WS_THREADS 384
__host__ __device__ constexpr int fs_ws_smem(int stages) {
    return 2 * 128 * FA2_HS * 2 + stages * 2 * FA2_TILE * FA2_HS * 2 + stages * 2 * FA2_TILE * 4 + stages * 2 * 8;
}

template <int STAGES>
__device__ __forceinline__ void fs_dkdv_ws(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                           const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ dy,
                                           const float* __restrict__ lse, const float* __restrict__ dvec,
                                           __nv_bfloat16* __restrict__ dk, __nv_bfloat16* __restrict__ dv,
                                           const Fa2Layout& L, int nh, int nkv, int t_len, float scale, int group) {
    typedef __nv_bfloat16 T;
    constexpr int BK = 128, TILE = FA2_TILE * FA2_HS, NC = 256, NP = 128;  // keys per block, tile elements, threads
    TM_DYNAMIC_SMEM(unsigned char, smem);
    T* kstage = reinterpret_cast<T*>(smem);  // [128][64]: the K block, at the end the dK block
    T* vstage = kstage + 2 * TILE;           // [128][64]: the V block, at the end the dV block
    T* st_base = vstage + 2 * TILE;          // stage s: Q tile at st_base + 2 s TILE, dY tile right after
    float* lsm = reinterpret_cast<float*>(st_base + STAGES * 2 * TILE);  // [STAGES][64]
    float* dsm = lsm + STAGES * FA2_TILE;                                 // [STAGES][64]
    uint64_t* full = reinterpret_cast<uint64_t*>(dsm + STAGES * FA2_TILE);
    uint64_t* empty = full + STAGES;

    const int n_kb = (t_len + BK - 1) / BK;
    int bh, kb;
    fa2_coords(n_kb, (int)(gridDim.x / n_kb), group, false, bh, kb);  // bh: (batch, key/value head)
    const int b = bh / nkv, hk = bh - b * nkv, nq = nh / nkv, h0 = hk * nq;
    const int tid = (int)threadIdx.x, tw = tid & 127;
    const int wg = warp_uniform(tid >> 7);  // (so that branches on the role keep the products unserialised)
    const int k0 = kb * BK, kw0 = k0 + 64 * wg;  // consumer wg's keys: kw0 .. kw0 + 63
    const int i_first = k0 / FA2_TILE, n_qt = (t_len + FA2_TILE - 1) / FA2_TILE;
    const int per = n_qt - i_first, steps = nq * per;
    const float sl2 = scale * TM_LOG2E;

    if (wg < 2) {
        fa2_load_tile<BK, NC>(kstage, fa2_head(k, L.k, b, hk), L.k.t_, k0, t_len, tid);
        fa2_load_tile<BK, NC>(vstage, fa2_head(v, L.v, b, hk), L.v.t_, k0, t_len, tid);
    }
    fs_ws_start<STAGES>(full, empty);

    if (wg == 2) {
        // The producer. Step j: query tile i_first + j % per of query head h0 + j / per.
        fs_ws_produce<STAGES>(steps, full, empty, [&](int j) {
            const int s = j % STAGES, hq = h0 + j / per, i0 = (i_first + j % per) * FA2_TILE;
            fa2_load_q_stage<NP>(st_base + 2 * s * TILE, st_base + (2 * s + 1) * TILE, lsm + s * FA2_TILE,
                                 dsm + s * FA2_TILE, q, dy, lse, dvec, L, b, nh, hq, i0, t_len, tw);
        });
        return;
    }
    // The consumers. Their code and the producer's never join again (the compiler could not give each its own
    // register count otherwise): they meet on barrier 3 alone from here.
    setmaxnreg_inc<232>();
    {
        const int c = wg;
        float dka[32], dva[32];
#pragma unroll
        for (int i = 0; i < 32; i++) dka[i] = dva[i] = 0.f;
        if (c == 1) named_arrive(1, 2 * 128);  // consumer 0 takes the first turn
        for (int j = 0; j < steps; j++) {
            const int s = j % STAGES, i0 = (i_first + j % per) * FA2_TILE;
            const T* qt = st_base + 2 * s * TILE;
            const T* gt = qt + TILE;
            const bool skip = i0 + FA2_TILE - 1 < kw0;  // every query of the tile precedes every key of this consumer
            mbar_wait(&full[s], (j / STAGES) & 1);
            float sa[32], dp[32];
            named_sync(1 + c, 2 * 128);  // my turn: S^T, dP^T
            if (!skip) fs_issue2_ss(sa, kstage + 64 * c * FA2_HS, qt, dp, vstage + 64 * c * FA2_HS, gt);
            named_arrive(2 - c, 2 * 128);
            uint32_t pa[4][4], dsa[4][4];
            if (!skip) {
                fs_wait_all(sa, dp);
                fs_dkdv_probs(pa, dsa, sa, dp, lsm + s * FA2_TILE, dsm + s * FA2_TILE, i0, kw0, t_len, sl2);
            }
            named_sync(1 + c, 2 * 128);  // my turn: dV += P^T dY, dK += dS^T Q
            if (!skip) fs_issue2<1>(dva, pa, gt, dka, dsa, qt, 1);
            if (c == 0 || j + 1 < steps) named_arrive(2 - c, 2 * 128);  // (consumer 1's last turn has no taker)
            if (!skip) fs_wait_all(dva, dka);
            if (tw == 0) mbar_arrive(&empty[s]);
        }

        // Every product has retired (the K and V blocks are read no more): they become the output staging.
        named_sync(3, 2 * 128);
        fs_stage_acc(kstage, dka, scale, 64 * wg);
        fs_stage_acc(vstage, dva, 1.f, 64 * wg);
        named_sync(3, 2 * 128);
        fa2_store_tile<BK, NC>(fa2_head(dk, L.dk, b, hk), L.dk.t_, kstage, k0, t_len);
        fa2_store_tile<BK, NC>(fa2_head(dv, L.dv, b, hk), L.dv.t_, vstage, k0, t_len);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// dQ (and D), the first backward kernel, in place of flash_attn.cu's flash_dq (same arguments and outputs). Per CTA:
// WG warpgroups x 64 queries of one (batch, query head); warpgroup w owns queries q0 + 64w .. + 63, their Q and dY
// rows held in registers as A fragments. First D = rowsum(dY * Y) of the block's rows (written to dvec for the dK/dV
// kernel, as flash_dq does). Then 64-row K and V tiles stream by cp.async in two stages, from key 0 to the block's
// last query; per tile and warpgroup:
//   S  = Q K^T      A = Q (registers),  B = the K tile, K-major
//   dP = dY V^T     A = dY (registers), B = the V tile, K-major
//   P = exp2(S * scale * log2e - lse * log2e) masked (key > query) to 0, dS = P (dP - D), packed into A fragments
//   dQ += dS K      A = dS (registers), B = the K tile, N-major
// A warpgroup skips a tile whose keys all follow its queries. Deterministic: each dQ element is one accumulator
// summed over the key tiles in order.
// dS of one (64 queries x 64 keys) tile from the S and dP accumulators (rows = queries qw0.., columns = keys c0..;
// this thread's two rows' lse in l2 (log2 units) and D in dd), P masked (key > query) to 0, rounded to bf16 A
// fragments for the dQ product.
__device__ __forceinline__ void fs_dq_probs(uint32_t (&dsa)[4][4], const float (&s)[32], float (&dp)[32], const float (&l2)[2],
                                            const float (&dd)[2], int c0, int qw0, float sl2) {
    const int tw = (int)threadIdx.x & 127, w = tw >> 5, g = (tw & 31) >> 2, cq = tw & 3;
    const bool diag = c0 + FA2_TILE - 1 > qw0;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        const int hf = (i >> 1) & 1, key = c0 + 8 * (i >> 2) + 2 * cq + (i & 1), row = qw0 + 16 * w + g + 8 * hf;
        float p = fa2_exp2(s[i] * sl2 - l2[hf]);
        if (diag && key > row) p = 0.f;
        dp[i] = p * (dp[i] - dd[hf]);
    }
    fs_to_a(dsa, dp);
}

template <int WG, bool PIPE>
__device__ __forceinline__ void fs_dq(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                      const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ y,
                                      const __nv_bfloat16* __restrict__ dy, const float* __restrict__ lse,
                                      float* __restrict__ dvec, __nv_bfloat16* __restrict__ dq, const Fa2Layout& L, int nh,
                                      int nkv, int t_len, float scale, int group) {
    typedef __nv_bfloat16 T;
    constexpr int BQ = WG * 64, NT = WG * 128, TILE = FA2_TILE * FA2_HS;
    static_assert(BQ * FA2_HS <= 2 * TILE, "the Q and dY blocks (and at the end dQ) are staged in two tiles each");
    static_assert(4 * TILE + BQ * FA2_HS <= 24576, "static shared memory is 48 KiB");
    alignas(1024) __shared__ T sm[4 * TILE + BQ * FA2_HS];
    T* ks = sm;              // [2 stages][64][64] K; first the Q block, at the end the dQ block
    T* vs = sm + 2 * TILE;   // [2 stages][64][64] V; first the dY block
    T* ys = sm + 4 * TILE;   // [BQ][64]: the Y block

    const Fa2QueryBlock<T> blk = fa2_query_block(BQ, q, k, v, L, nh, nkv, t_len, group);
    const int b = blk.b, h = blk.h, bh = blk.bh;
    const T *kg = blk.k, *vg = blk.v;

    const int tid = (int)threadIdx.x, wg = tid >> 7, tw = tid & 127, w = tw >> 5, g = (tw & 31) >> 2;
    const int q0 = blk.blk * BQ, qw0 = q0 + 64 * wg;  // this warpgroup's queries: qw0 .. qw0 + 63
    const int n_kv = (min(t_len, q0 + BQ) + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    fa2_load_tile<BQ, NT>(ks, blk.q, L.q.t_, q0, t_len);
    fa2_load_tile<BQ, NT>(vs, fa2_head(dy, L.y, b, h), L.y.t_, q0, t_len);
    fa2_load_tile<BQ, NT>(ys, fa2_head(y, L.y, b, h), L.y.t_, q0, t_len);
    cp_async_commit();
    float l2[2], dd[2];
    fa2_lse_rows(l2, lse, bh, t_len, qw0 + 16 * w + g);  // rows >= T: 0 (their output is dropped)
    cp_async_wait<0>();
    __syncthreads();
    fa2_block_d(dd, ys, vs, dvec, bh, t_len, q0, tid, g);  // D as flash_dq; vs holds the dY block here
    uint32_t qa[4][4], ga[4][4];
    fs_load_a(qa, ks, 64 * wg);
    fs_load_a(ga, vs, 64 * wg);
    __syncthreads();  // the Q, dY staging is overwritten by the first key tile next

    auto load_kv_tile = [&](int t, int st) {
        fa2_load_tile<FA2_TILE, NT>(ks + st * TILE, kg, L.k.t_, t * FA2_TILE, t_len);
        fa2_load_tile<FA2_TILE, NT>(vs + st * TILE, vg, L.v.t_, t * FA2_TILE, t_len);
    };
    load_kv_tile(0, 0);
    cp_async_commit();

    float dqa[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dqa[i] = 0.f;
    if constexpr (PIPE) {
        // One warpgroup: no tile is skipped. S, dP of tile t + 1 are issued right behind dQ of tile t; stage t & 1
        // is refilled once both have retired.
        static_assert(WG == 1, "the pipelined loop is written for one warpgroup");
        float s[32], dp[32];
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (n_kv > 1) load_kv_tile(1, 1);
        cp_async_commit();
        fs_issue2<0>(s, qa, ks, dp, ga, vs, 0);
        fs_wait_all(s, dp);
        for (int t = 0; t < n_kv; t++) {
            const int st = t & 1;
            uint32_t dsa[4][4];
            fs_dq_probs(dsa, s, dp, l2, dd, t * FA2_TILE, qw0, sl2);
            wgmma_fence_operand(dqa);
            wgmma_fence();
            fs_chain<1>(dqa, dsa, ks + st * TILE, 1);  // dQ += dS K
            wgmma_commit();
            if (t + 1 < n_kv) {
                cp_async_wait<0>();  // tile t + 1 has landed
                fence_proxy_async();
                __syncthreads();
                fs_issue2<0>(s, qa, ks + (st ^ 1) * TILE, dp, ga, vs + (st ^ 1) * TILE, 0);  // S, dP of tile t + 1
            }
            fs_wait_all(dqa, s, dp);
            __syncthreads();  // every product that read stage st has retired before it is refilled
            if (t + 2 < n_kv) load_kv_tile(t + 2, st);
            cp_async_commit();
        }
    } else {
        for (int t = 0; t < n_kv; t++) {
            const int st = t & 1;
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();  // every product of tile t - 1 (stage st ^ 1) has retired
            if (t + 1 < n_kv) load_kv_tile(t + 1, st ^ 1);
            cp_async_commit();
            const int c0 = t * FA2_TILE;
            if (c0 > qw0 + 63) continue;  // every key of the tile follows every query of this warpgroup
            const T* kt = ks + st * TILE;
            const T* vt = vs + st * TILE;

            float s[32], dp[32];
            fs_issue2<0>(s, qa, kt, dp, ga, vt, 0);  // S (queries x keys), dP
            fs_wait_all(s, dp);

            uint32_t dsa[4][4];
            fs_dq_probs(dsa, s, dp, l2, dd, c0, qw0, sl2);

            wgmma_fence_operand(dqa);
            wgmma_fence();
            fs_chain<1>(dqa, dsa, kt, 1);  // dQ += dS K
            wgmma_commit();
            fs_wait_all(dqa);
        }
    }

    __syncthreads();  // every warpgroup is done with the last tiles before they become the output staging
    fs_stage_acc(ks, dqa, scale, 64 * wg);
    __syncthreads();
    fa2_store_tile<BQ, NT>(fa2_head(dq, L.dq, b, h), L.dq.t_, ks, q0, t_len);
}

// Warp-specialised dQ (kernels `flash_dq_sm90_ws<stages>`), the counterpart of fs_dkdv_ws: 384 threads. Warpgroups 0
// and 1 are consumers, each owning 64 of the block's 128 queries; the Q and dY blocks stay in shared memory (the S
// and dP products read their A from there). First D = rowsum(dY * Y) of the block's rows (as fs_dq, the Y block
// staged in the first stage). Warpgroup 2, the producer, streams the K and V tiles (keys 0 .. the block's last query)
// through STAGES stages, `full` / `empty` mbarriers as fs_dkdv_ws; the consumers take turns issuing S, dP and then
// dQ += dS K (named barriers 1 + c). A consumer whose queries all precede a tile's keys takes its turns issuing
// nothing. Each dQ element is one accumulator summed over the key tiles in order: the same bits as fs_dq.
// Shared memory (dynamic, fs_dq_ws_smem): the Q and dY blocks ([2][128][64] bf16, swizzled; at the end the dQ block
// in the first), the stages ([STAGES][K 64x64 | V 64x64]), the 2 * STAGES mbarriers.
__host__ __device__ constexpr int fs_dq_ws_smem(int stages) {
    return 2 * 128 * FA2_HS * 2 + stages * 2 * FA2_TILE * FA2_HS * 2 + stages * 2 * 8;
}

template <int STAGES>
__device__ __forceinline__ void fs_dq_ws(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                         const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ y,
                                         const __nv_bfloat16* __restrict__ dy, const float* __restrict__ lse,
                                         float* __restrict__ dvec, __nv_bfloat16* __restrict__ dq, const Fa2Layout& L,
                                         int nh, int nkv, int t_len, float scale, int group) {
    typedef __nv_bfloat16 T;
    constexpr int BQ = 128, TILE = FA2_TILE * FA2_HS, NC = 256, NP = 128;  // queries per block, tile elements, threads
    TM_DYNAMIC_SMEM(unsigned char, smem);
    T* qstage = reinterpret_cast<T*>(smem);  // [128][64]: the Q block, at the end the dQ block
    T* gstage = qstage + 2 * TILE;           // [128][64]: the dY block
    T* st_base = gstage + 2 * TILE;          // stage s: K tile at st_base + 2 s TILE, V tile right after
    uint64_t* full = reinterpret_cast<uint64_t*>(st_base + STAGES * 2 * TILE);
    uint64_t* empty = full + STAGES;
    T* ystage = st_base;  // [128][64]: the Y block, for D, before the first K and V tiles

    const Fa2QueryBlock<T> blk = fa2_query_block(BQ, q, k, v, L, nh, nkv, t_len, group);
    const int b = blk.b, h = blk.h, bh = blk.bh;
    const int tid = (int)threadIdx.x, tw = tid & 127, w = tw >> 5, g = (tw & 31) >> 2;
    const int wg = warp_uniform(tid >> 7);       // (so that branches on the role keep the products unserialised)
    const int q0 = blk.blk * BQ, qw0 = q0 + 64 * wg;  // consumer wg's queries: qw0 .. qw0 + 63
    const int n_kv = (min(t_len, q0 + BQ) + FA2_TILE - 1) / FA2_TILE;
    const float sl2 = scale * TM_LOG2E;

    if (wg < 2) {
        fa2_load_tile<BQ, NC>(qstage, blk.q, L.q.t_, q0, t_len, tid);
        fa2_load_tile<BQ, NC>(gstage, fa2_head(dy, L.y, b, h), L.y.t_, q0, t_len, tid);
        fa2_load_tile<BQ, NC>(ystage, fa2_head(y, L.y, b, h), L.y.t_, q0, t_len, tid);
    }
    fs_ws_start<STAGES>(full, empty);
    float l2[2], dd[2];
    if (wg < 2) {
        fa2_lse_rows(l2, lse, bh, t_len, qw0 + 16 * w + g);  // rows >= T: 0 (their output is dropped)
        fa2_block_d(dd, ystage, gstage, dvec, bh, t_len, q0, tid, g);
    }
    __syncthreads();  // the Y staging is overwritten by the first K and V tiles next

    if (wg == 2) {
        // The producer. Step t: key tile t.
        fs_ws_produce<STAGES>(n_kv, full, empty, [&](int t) {
            const int s = t % STAGES;
            fa2_load_tile<FA2_TILE, NP>(st_base + 2 * s * TILE, blk.k, L.k.t_, t * FA2_TILE, t_len, tw);
            fa2_load_tile<FA2_TILE, NP>(st_base + (2 * s + 1) * TILE, blk.v, L.v.t_, t * FA2_TILE, t_len, tw);
        });
        return;
    }
    // The consumers (their code never joins the producer's again: see fs_dkdv_ws).
    setmaxnreg_inc<232>();
    {
        const int c = wg;
        float dqa[32];
#pragma unroll
        for (int i = 0; i < 32; i++) dqa[i] = 0.f;
        if (c == 1) named_arrive(1, 2 * 128);  // consumer 0 takes the first turn
        for (int t = 0; t < n_kv; t++) {
            const int s = t % STAGES, c0 = t * FA2_TILE;
            const T* kt = st_base + 2 * s * TILE;
            const T* vt = kt + TILE;
            const bool skip = c0 > qw0 + 63;  // every key of the tile follows every query of this consumer
            mbar_wait(&full[s], (t / STAGES) & 1);
            float sa[32], dp[32];
            named_sync(1 + c, 2 * 128);  // my turn: S, dP
            if (!skip) fs_issue2_ss(sa, qstage + 64 * c * FA2_HS, kt, dp, gstage + 64 * c * FA2_HS, vt);
            named_arrive(2 - c, 2 * 128);
            uint32_t dsa[4][4];
            if (!skip) {
                fs_wait_all(sa, dp);
                fs_dq_probs(dsa, sa, dp, l2, dd, c0, qw0, sl2);
            }
            named_sync(1 + c, 2 * 128);  // my turn: dQ += dS K
            if (!skip) {
                wgmma_fence_operand(dqa);
                wgmma_fence();
                fs_chain<1>(dqa, dsa, kt, 1);
                wgmma_commit();
            }
            if (c == 0 || t + 1 < n_kv) named_arrive(2 - c, 2 * 128);  // (consumer 1's last turn has no taker)
            if (!skip) fs_wait_all(dqa);
            if (tw == 0) mbar_arrive(&empty[s]);
        }

        named_sync(3, 2 * 128);  // every product has retired (the Q block is read no more): the dQ staging
        fs_stage_acc(qstage, dqa, scale, 64 * wg);
        named_sync(3, 2 * 128);
        fa2_store_tile<BQ, NC>(fa2_head(dq, L.dq, b, h), L.dq.t_, qstage, q0, t_len);
    }
}

// Grid: B * NKV * ceil(T / (64 WG)) blocks of 128 WG threads, 1-D, walked as flash_attn.cu's dK/dV grid
// (flash_bwd_sm90.rs). Names: flash_{dkdv,dq}_sm90_wg<warpgroups>[b<min blocks per SM>][p: the pipelined loop].
#define FS_DKDV(WG, PIPE, MINB, NAME)                                                                                \
    extern "C" __global__ void __launch_bounds__(WG * 128, MINB) flash_dkdv_sm90_##NAME(                              \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dy,             \
        const float* lse, const float* dvec, __nv_bfloat16* dk, __nv_bfloat16* dv, Fa2Layout L, int nh, int nkv,      \
        int t_len, float scale, int group) {                                                                           \
        fs_dkdv<WG, PIPE>(q, k, v, dy, lse, dvec, dk, dv, L, nh, nkv, t_len, scale, group);                                 \
    }
// dQ: B * NH * ceil(T / (64 WG)) blocks of 128 WG threads, walked as flash_attn.cu's dQ grid (longest first).
#define FS_DQ(WG, PIPE, MINB, NAME)                                                                                  \
    extern "C" __global__ void __launch_bounds__(WG * 128, MINB) flash_dq_sm90_##NAME(                                \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* y,              \
        const __nv_bfloat16* dy, const float* lse, float* dvec, __nv_bfloat16* dq, Fa2Layout L, int nh, int nkv,      \
        int t_len, float scale, int group) {                                                                           \
        fs_dq<WG, PIPE>(q, k, v, y, dy, lse, dvec, dq, L, nh, nkv, t_len, scale, group);                                    \
    }
// Warp-specialised: block FS_WS_THREADS (one block per SM), dynamic shared memory fs_ws_smem(STAGES) and
// fs_dq_ws_smem(STAGES).
#define FS_DKDV_WS(STAGES, NAME)                                                                                     \
    extern "C" __global__ void __launch_bounds__(FS_WS_THREADS, 1) flash_dkdv_sm90_##NAME(                            \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dy,             \
        const float* lse, const float* dvec, __nv_bfloat16* dk, __nv_bfloat16* dv, Fa2Layout L, int nh, int nkv,      \
        int t_len, float scale, int group) {                                                                           \
        fs_dkdv_ws<STAGES>(q, k, v, dy, lse, dvec, dk, dv, L, nh, nkv, t_len, scale, group);                                \
    }
#define FS_DQ_WS(STAGES, NAME)                                                                                       \
    extern "C" __global__ void __launch_bounds__(FS_WS_THREADS, 1) flash_dq_sm90_##NAME(                              \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* y,              \
        const __nv_bfloat16* dy, const float* lse, float* dvec, __nv_bfloat16* dq, Fa2Layout L, int nh, int nkv,      \
        int t_len, float scale, int group) {                                                                           \
        fs_dq_ws<STAGES>(q, k, v, y, dy, lse, dvec, dq, L, nh, nkv, t_len, scale, group);                                   \
    }
FS_DKDV(1, false, 1, wg1)
FS_DKDV(1, false, 3, wg1b3)
FS_DKDV(2, false, 1, wg2)
FS_DKDV(1, true, 1, wg1p)
FS_DQ(1, false, 1, wg1)
FS_DQ(1, false, 3, wg1b3)
FS_DQ(2, false, 1, wg2)
FS_DQ(1, true, 1, wg1p)
FS_DKDV_WS(2, ws2)
FS_DKDV_WS(4, ws4)
FS_DQ_WS(2, ws2)
FS_DQ_WS(4, ws4)
