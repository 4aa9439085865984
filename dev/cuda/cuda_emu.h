// A minimal CUDA emulation for running tokenmill's kernels on a CPU with g++ (C++20), so their indexing,
// masking and synchronisation can be checked against plain references without a GPU (dev/cuda/run.sh).
//
// Model: blocks run one after another; the threads of a block run concurrently as std::threads and
// __syncthreads() is a std::barrier (a thread that returns drops out of it, as an exited CUDA thread does).
// `__shared__` becomes `static`, which is right because one block runs at a time; dynamic shared memory is one
// buffer per block (emu_launch_smem). Not emulated: atomics, streams; the kernels restrict themselves accordingly
// (see src/cuda/common.cuh).
//
// Warp-level instructions (called through src/cuda/warp.cuh and mma.cuh, and flash_attn.cu's copy wrappers), emulated
// by the 32 threads of a warp meeting at a per-warp barrier and exchanging operands: shfl (idx and xor), ldmatrix.x4 (plain and .trans, with its 16-byte alignment checked),
// mma.m16n8k16 with bf16/f16 inputs and f32 accumulation (products summed exactly in double, then rounded once:
// the tensor core's own order and rounding are not modelled, which is below the tests' bf16 tolerances), and
// cp.async as real asynchronous copies: a copy lands in shared memory only at the wait_group that retires its
// group, so reading a tile before waiting for it reads stale data here too. The warp-level calls need every lane of
// the warp to make the same calls in the same order (warp-uniform control flow), as the hardware's .sync/.aligned
// forms require.
//
// Warpgroup-level instructions (sm_90a, called through src/cuda/wgmma.cuh, whose header states the semantics and
// their sources): wgmma.mma_async m64nNk16 (bf16 in, f32 accumulators) with A and B from shared-memory descriptors
// (K- or MN-major, no swizzle or the 128-byte swizzle) or A from registers, and its fence, commit_group and
// wait_group, emulated by the 128 threads of a warpgroup meeting at a per-warpgroup barrier. Asynchronous as on the
// device: an issued product is computed only when a wait_group retires its group; until then its accumulator
// registers hold a NaN poison (a kernel that reads them early gets NaN), and the retire aborts if the kernel wrote
// those registers, changed its A registers or overwrote its shared-memory operands in the meantime. Also aborted:
// a product without a wgmma.fence since the thread's last wait_group (or kernel start) unless it accumulates into
// registers still in flight; shared memory filled by cp.async and read by a product without fence.proxy.async in
// between; a kernel that exits with products in flight.
//
// Hopper's asynchronous pipeline (sm_90, called through src/cuda/pipeline.cuh, whose header states the semantics and
// their sources): named barriers (bar.sync / bar.arrive with an id and a thread count), mbarriers in shared memory
// (init, arrive, arrive.expect_tx, try_wait.parity) and the bulk asynchronous copy global -> shared that completes
// bytes on an mbarrier (cp.async.bulk, the non-tensor form of TMA), with dynamic shared memory (emu_launch_smem).
// A bulk copy's bytes are captured at issue and land in shared memory only when a thread
// observes the completed phase (try_wait / wait on its mbarrier), so a consumer that reads a stage without waiting
// reads stale data, as it may on the device. Aborted: a barrier whose participants give different thread counts, an
// arrive on an mbarrier with no pending arrivals, a copy not 16-byte aligned or sized, a kernel that exits with a bulk
// copy whose phase never completed, and a wait that makes no progress for TM_EMU_DEADLOCK_S seconds (default 60: a
// deadlock in the kernel's protocol).
#pragma once
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <math.h>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline thread_local std::barrier<>* tm_barrier = nullptr;
inline void __syncthreads() { tm_barrier->arrive_and_wait(); }

// One warp's meeting point for the warp-level emulation.
struct EmuWarp {
    explicit EmuWarp(unsigned n) : bar(n) {}
    std::barrier<> bar;
    uint32_t u[32][6];
    const void* p[32];
    float f[32];
};
inline thread_local EmuWarp* tm_warp = nullptr;
inline thread_local unsigned tm_lane = 0;
inline void __syncwarp(unsigned = 0xffffffffu) { tm_warp->bar.arrive_and_wait(); }
using std::max;
using std::min;

struct __nv_bfloat16 {
    uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, as the CUDA intrinsic
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return {0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}
struct __half {
    uint16_t x;
};
inline float __half2float(__half h) {
    _Float16 v;
    memcpy(&v, &h.x, 2);
    return (float)v;
}
inline __half __float2half(float f) {
    _Float16 v = (_Float16)f;
    __half h;
    memcpy(&h.x, &v, 2);
    return h;
}

// ---- warp-level instructions --------------------------------------------------------------------------------
inline float emu_warp_shfl_xor(float v, int mask) {
    tm_warp->f[tm_lane] = v;
    __syncwarp();
    const float r = tm_warp->f[tm_lane ^ (unsigned)mask];
    __syncwarp();
    return r;
}

inline float emu_warp_shfl(float v, int src) {
    tm_warp->f[tm_lane] = v;
    __syncwarp();
    const float r = tm_warp->f[src & 31];
    __syncwarp();
    return r;
}

// Any failed emulation check aborts the run with a message (a wrong fragment address is a kernel bug).
inline void emu_check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "cuda_emu: %s\n", what);
        std::abort();
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the row addresses of matrix i; register i
// of lane l gets row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (.trans: of its transpose).
inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* addr, bool trans) {
    emu_check((reinterpret_cast<uintptr_t>(addr) & 15) == 0, "ldmatrix row address not 16-byte aligned");
    tm_warp->p[tm_lane] = addr;
    __syncwarp();
    const unsigned l = tm_lane;
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t* row = static_cast<const uint16_t*>(tm_warp->p[8 * i + l / 4]);
            lo = row[2 * (l % 4)];
            hi = row[2 * (l % 4) + 1];
        } else {
            lo = static_cast<const uint16_t*>(tm_warp->p[8 * i + 2 * (l % 4)])[l / 4];
            hi = static_cast<const uint16_t*>(tm_warp->p[8 * i + 2 * (l % 4) + 1])[l / 4];
        }
        r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    __syncwarp();
}

inline float emu_half_bits(uint16_t x, bool bf16) {
    if (bf16) return __bfloat162float(__nv_bfloat16{x});
    return __half2float(__half{x});
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D = A (16x16) B (16x8) + C, fragments as in the PTX ISA.
inline void emu_mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
    for (int i = 0; i < 4; i++) tm_warp->u[tm_lane][i] = a[i];
    tm_warp->u[tm_lane][4] = b0;
    tm_warp->u[tm_lane][5] = b1;
    __syncwarp();
    // A[r][k]: lane 4 (r % 8) + (k % 8) / 2, register (k >= 8) * 2 + (r >= 8), half k % 2.
    auto A = [&](int r, int k) {
        const uint32_t w = tm_warp->u[4 * (r % 8) + (k % 8) / 2][(k >= 8) * 2 + (r >= 8)];
        return emu_half_bits((uint16_t)(w >> (16 * (k % 2))), bf16);
    };
    // B[k][n]: lane 4 n + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
    auto B = [&](int k, int n) {
        const uint32_t w = tm_warp->u[4 * n + (k % 8) / 2][4 + (k >= 8)];
        return emu_half_bits((uint16_t)(w >> (16 * (k % 2))), bf16);
    };
    const int g = tm_lane / 4, cc = tm_lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i / 2), col = 2 * cc + (i % 2);
        double s = 0;
        for (int k = 0; k < 16; k++) s += (double)A(row, k) * (double)B(k, col);
        c[i] = (float)((double)c[i] + s);
    }
    __syncwarp();
}

// Two floats rounded to a 16-bit type and packed (lo in the low half), as __floats2bfloat162_rn.
template <typename T> inline uint32_t emu_pack16(float lo, float hi) {
    uint16_t x, y;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        x = __float2bfloat16(lo).x;
        y = __float2bfloat16(hi).x;
    } else {
        x = __float2half(lo).x;
        y = __float2half(hi).x;
    }
    return (uint32_t)x | ((uint32_t)y << 16);
}

// cp.async: a copy is captured at issue (global memory is not written while the kernels run) and stored to shared
// memory when a wait retires its group.
struct EmuCopy {
    void* dst;
    unsigned char data[16];
    int n;
};
inline thread_local std::vector<EmuCopy> tm_cp_open;
inline thread_local std::vector<std::vector<EmuCopy>> tm_cp_groups;
inline void emu_cp_async(void* dst, const void* src, int n, bool valid) {
    emu_check((reinterpret_cast<uintptr_t>(dst) % n) == 0 && (!valid || reinterpret_cast<uintptr_t>(src) % n == 0),
              "cp.async address not aligned to its size");
    EmuCopy c{dst, {}, n};
    if (valid) std::memcpy(c.data, src, n);  // else: zero fill (src-size 0)
    tm_cp_open.push_back(c);
}
inline void emu_cp_commit() {
    tm_cp_groups.push_back(std::move(tm_cp_open));
    tm_cp_open.clear();
}
// Whether this thread has written shared memory through cp.async (the generic proxy) since its last
// fence.proxy.async: a wgmma (the async proxy) must not read such data before that fence.
inline thread_local bool tm_async_proxy_stale = false;
// cp.async.wait_group n: all but the n most recent committed groups have landed.
inline void emu_cp_wait(size_t n) {
    while (tm_cp_groups.size() > n) {
        for (const EmuCopy& c : tm_cp_groups.front()) std::memcpy(c.dst, c.data, c.n);
        tm_async_proxy_stale |= !tm_cp_groups.front().empty();
        tm_cp_groups.erase(tm_cp_groups.begin());
    }
}

// ---- warpgroup-level instructions (wgmma, sm_90a) -------------------------------------------------------------
// Shared-memory addresses in descriptors. On the device a descriptor holds bits 4..17 of the operand's shared-window
// address. Here `__shared__` arrays are ordinary statics at 64-bit addresses, so a descriptor holds the offset from a
// 1024-byte-aligned "window" at or below the operand (bits 4..9 of the offset equal those of the real address, which
// is what the 128-byte swizzle reads) and the window's index in this table in bits 52..61 (reserved on the device,
// untouched by a kernel's address arithmetic on the low field).
inline std::mutex emu_smem_windows_mutex;
inline std::vector<uintptr_t> emu_smem_windows;
inline uint64_t emu_wgmma_desc_address(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), window = a & ~(uintptr_t)1023;
    std::lock_guard<std::mutex> lock(emu_smem_windows_mutex);
    size_t tag = std::find(emu_smem_windows.begin(), emu_smem_windows.end(), window) - emu_smem_windows.begin();
    if (tag == emu_smem_windows.size()) {
        emu_check(tag < 1024, "more than 1024 shared-memory windows in wgmma descriptors");
        emu_smem_windows.push_back(window);
    }
    return (uint64_t)((a - window) >> 4) | ((uint64_t)tag << 52);
}
inline const unsigned char* emu_wgmma_desc_start(uint64_t desc) {
    std::lock_guard<std::mutex> lock(emu_smem_windows_mutex);
    const size_t tag = (desc >> 52) & 1023;
    emu_check(tag < emu_smem_windows.size(), "wgmma descriptor not made by wgmma_desc (unknown shared-memory window)");
    return reinterpret_cast<const unsigned char*>(emu_smem_windows[tag]) + ((desc & 0x3fff) << 4);
}

// Where element (mn, k) (mn < rows, k < 16) of a bf16 operand lives, by the descriptor's canonical layout (the
// layouts and their derivation: src/cuda/wgmma.cuh). Offsets in bytes; T = 8 elements per 16-byte unit.
inline const uint16_t* emu_wgmma_elem(uint64_t desc, bool mn_major, int mn, int k) {
    const unsigned char* start = emu_wgmma_desc_start(desc);
    const size_t lbo = ((desc >> 16) & 0x3fff) << 4, sbo = ((desc >> 32) & 0x3fff) << 4;
    const unsigned base_offset = (desc >> 49) & 7, mode = (unsigned)(desc >> 62);
    emu_check(base_offset == 0, "wgmma descriptor base offset != 0 (not emulated: tiles start on 1024-byte boundaries)");
    emu_check(mode == 0 || mode == 1, "wgmma descriptor swizzle 64B/32B (not emulated: only none and 128B)");
    size_t off;
    if (!mn_major) {  // K-major: rows of the operand are mn, k contiguous
        off = mode == 1 ? (mn / 8) * sbo + (mn % 8) * 128 + k * 2
                        : (mn / 8) * sbo + (k / 8) * lbo + (mn % 8) * 16 + (k % 8) * 2;
    } else {  // MN-major: mn contiguous
        off = mode == 1 ? (mn / 64) * lbo + (k / 8) * sbo + (k % 8) * 128 + (mn % 64) * 2
                        : (mn / 8) * sbo + (k / 8) * lbo + (k % 8) * 16 + (mn % 8) * 2;
    }
    uintptr_t a = reinterpret_cast<uintptr_t>(start) + off;
    if (mode == 1) a ^= ((a >> 7) & 7) << 4;  // 128B swizzle: 16-byte unit (bits 4..6) ^= row in the 1024-byte atom
    return reinterpret_cast<const uint16_t*>(a);
}

// One issued wgmma.mma_async of a warpgroup, as captured at issue.
struct EmuWgmmaOp {
    int n = 0;              // N of m64nNk16; each thread holds n / 2 accumulators
    bool scale_d = true;    // false: D = A B (the accumulators' old values ignored)
    float* d[128] = {};     // each thread's accumulator registers
    bool fresh[128] = {};   // d[t] was not the target of a product in flight at issue: c_in holds its values
    std::vector<float> c_in;                  // 128 x n/2
    std::vector<const uint16_t*> a_at, b_at;  // A (64 x 16) and B (n x 16) element addresses; a_at empty: registers
    std::vector<uint16_t> a, b;               // their bf16 bits at issue
    const uint32_t* a_regs[128] = {};         // register A: each thread's 4 registers, and their values at issue
    uint32_t a_reg_vals[128][4] = {};
};

// One warpgroup's meeting point and its products in flight: `open` (issued, not committed), then committed groups,
// oldest first.
struct EmuWarpgroup {
    std::barrier<> bar{128};
    struct Slot {
        float* d;
        const uint32_t* a_regs;
        uint64_t desc_a, desc_b;
        int n, scale_d, tnsp_a, tnsp_b;
        bool proxy_stale;
    } slot[128];
    std::vector<EmuWgmmaOp> open;
    std::vector<std::vector<EmuWgmmaOp>> groups;
    bool in_flight(const float* d) const {
        for (const auto& op : open)
            for (float* x : op.d) if (x == d) return true;
        for (const auto& g : groups)
            for (const auto& op : g)
                for (float* x : op.d) if (x == d) return true;
        return false;
    }
    bool idle() const { return open.empty() && groups.empty(); }
};
inline thread_local EmuWarpgroup* tm_wg = nullptr;
inline thread_local unsigned tm_wg_rank = 0;
// Whether this thread issued wgmma.fence since its last wait_group (or the kernel's start).
inline thread_local bool tm_wgmma_fenced = false;

constexpr uint32_t EMU_WGMMA_POISON = 0x7fc0beefu;  // a quiet NaN
inline bool emu_is_poison(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u == EMU_WGMMA_POISON;
}

inline void emu_wgmma_fence() { tm_wgmma_fenced = true; }
inline void emu_fence_proxy_async() { tm_async_proxy_stale = false; }

// Thread `t` of the warpgroup: accumulator i of the m64nNk16 fragment is D[row][col] (PTX ISA, "Register fragments
// ... wgmma .m64nNk16", D matrix; wgmma.cuh).
inline void emu_wgmma_d_coord(unsigned t, int i, int& row, int& col) {
    const int w = (int)t / 32, l = (int)t % 32, g = l / 4, c = l % 4;
    row = 16 * w + g + 8 * ((i / 2) % 2);
    col = 8 * (i / 4) + 2 * c + (i % 2);
}
// Register A (m64k16, bf16): register r of thread t holds A[row][k], A[row][k + 1] (low half first).
inline void emu_wgmma_a_coord(unsigned t, int r, int& row, int& k) {
    const int w = (int)t / 32, l = (int)t % 32, g = l / 4, c = l % 4;
    row = 16 * w + g + 8 * (r % 2);
    k = 2 * c + 8 * (r / 2);
}

// Called by thread 0 of the warpgroup with the others waiting: compute `op` into the accumulators.
inline void emu_wgmma_retire(EmuWgmmaOp& op) {
    for (size_t i = 0; i < op.a_at.size(); i++)
        emu_check(*op.a_at[i] == op.a[i], "wgmma: shared-memory A of a product in flight was overwritten before its wait_group");
    for (size_t i = 0; i < op.b_at.size(); i++)
        emu_check(*op.b_at[i] == op.b[i], "wgmma: shared-memory B of a product in flight was overwritten before its wait_group");
    for (unsigned t = 0; t < 128; t++)
        if (op.a_regs[t])
            for (int r = 0; r < 4; r++)
                emu_check(op.a_regs[t][r] == op.a_reg_vals[t][r],
                          "wgmma: A registers of a product in flight were changed before its wait_group");
    auto bf = [](uint16_t x) { return (double)__bfloat162float(__nv_bfloat16{x}); };
    const int half_n = op.n / 2;
    for (unsigned t = 0; t < 128; t++)
        for (int i = 0; i < half_n; i++) {
            int row, col;
            emu_wgmma_d_coord(t, i, row, col);
            double s = 0;
            for (int k = 0; k < 16; k++) s += bf(op.a[row * 16 + k]) * bf(op.b[col * 16 + k]);
            float& dst = op.d[t][i];
            if (op.fresh[t])
                emu_check(emu_is_poison(dst), "wgmma: accumulator registers of a product in flight were written before its wait_group");
            const double c = !op.scale_d ? 0.0 : op.fresh[t] ? (double)op.c_in[t * half_n + i] : (double)dst;
            dst = (float)(c + s);
        }
}

// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16: every thread of the warpgroup calls it with its own
// accumulators `d` (n / 2 floats) and, for A from registers, its 4 A registers; descriptors, n, scale_d and the
// transposes must agree across the warpgroup (.aligned).
inline void emu_wgmma(float* d, int n, const uint32_t* a_regs, uint64_t desc_a, uint64_t desc_b, int scale_d, int tnsp_a,
                      int tnsp_b) {
    EmuWarpgroup* wg = tm_wg;
    emu_check(wg != nullptr, "wgmma outside a whole warpgroup (block size not a multiple of 128)");
    emu_check(tm_wgmma_fenced || wg->in_flight(d),
              "wgmma.mma_async without wgmma.fence since the last wait_group (or kernel start) on registers not in flight");
    wg->slot[tm_wg_rank] = {d, a_regs, desc_a, desc_b, n, scale_d, tnsp_a, tnsp_b, tm_async_proxy_stale};
    wg->bar.arrive_and_wait();
    if (tm_wg_rank == 0) {
        const auto& s0 = wg->slot[0];
        EmuWgmmaOp op;
        op.n = n;
        op.scale_d = scale_d != 0;
        for (unsigned t = 0; t < 128; t++) {
            const auto& s = wg->slot[t];
            emu_check(s.desc_b == s0.desc_b && s.n == s0.n && s.scale_d == s0.scale_d && s.tnsp_a == s0.tnsp_a &&
                          s.tnsp_b == s0.tnsp_b && (s.a_regs != nullptr) == (s0.a_regs != nullptr) &&
                          (s0.a_regs != nullptr || s.desc_a == s0.desc_a),
                      "wgmma operands differ across the warpgroup (.aligned)");
            emu_check(!s.proxy_stale, "wgmma reads shared memory written by cp.async without fence.proxy.async in between");
        }
        if (!a_regs) {
            for (int r = 0; r < 64; r++)
                for (int k = 0; k < 16; k++) op.a_at.push_back(emu_wgmma_elem(desc_a, tnsp_a != 0, r, k));
            for (const uint16_t* p : op.a_at) op.a.push_back(*p);
        } else {
            op.a.assign(64 * 16, 0);
            for (unsigned t = 0; t < 128; t++) {
                op.a_regs[t] = wg->slot[t].a_regs;
                for (int r = 0; r < 4; r++) {
                    const uint32_t v = op.a_regs[t][r];
                    op.a_reg_vals[t][r] = v;
                    int row, k;
                    emu_wgmma_a_coord(t, r, row, k);
                    op.a[row * 16 + k] = (uint16_t)v;
                    op.a[row * 16 + k + 1] = (uint16_t)(v >> 16);
                }
            }
        }
        for (int c = 0; c < n; c++)
            for (int k = 0; k < 16; k++) op.b_at.push_back(emu_wgmma_elem(desc_b, tnsp_b != 0, c, k));
        for (const uint16_t* p : op.b_at) op.b.push_back(*p);
        op.c_in.assign((size_t)128 * (n / 2), 0.f);
        float poison;
        memcpy(&poison, &EMU_WGMMA_POISON, 4);
        for (unsigned t = 0; t < 128; t++) {
            op.d[t] = wg->slot[t].d;
            op.fresh[t] = !wg->in_flight(op.d[t]);
            if (op.fresh[t])
                for (int i = 0; i < n / 2; i++) op.c_in[t * (n / 2) + i] = op.d[t][i];
            for (int i = 0; i < n / 2; i++) op.d[t][i] = poison;
        }
        wg->open.push_back(std::move(op));
    }
    wg->bar.arrive_and_wait();
}

// wgmma.commit_group.sync.aligned: the products issued since the last commit become one group.
inline void emu_wgmma_commit() {
    EmuWarpgroup* wg = tm_wg;
    emu_check(wg != nullptr, "wgmma.commit_group outside a whole warpgroup");
    wg->bar.arrive_and_wait();
    if (tm_wg_rank == 0) {
        wg->groups.push_back(std::move(wg->open));
        wg->open.clear();
    }
    wg->bar.arrive_and_wait();
}

// wgmma.wait_group.sync.aligned n: all but the n most recent groups are complete (their accumulators written).
inline void emu_wgmma_wait(size_t n) {
    EmuWarpgroup* wg = tm_wg;
    emu_check(wg != nullptr, "wgmma.wait_group outside a whole warpgroup");
    wg->bar.arrive_and_wait();
    if (tm_wg_rank == 0)
        while (wg->groups.size() > n) {
            for (EmuWgmmaOp& op : wg->groups.front()) emu_wgmma_retire(op);
            wg->groups.erase(wg->groups.begin());
        }
    wg->bar.arrive_and_wait();
    tm_wgmma_fenced = false;
}

// ---- Hopper's asynchronous pipeline (sm_90): named barriers, mbarriers, bulk copies -----------------------------
// One block's synchronisation state, behind one mutex: the 16 named barriers and every mbarrier (keyed by its
// shared-memory address; the 8 bytes there are not used).
struct EmuBulkCopy {
    void* dst;
    std::vector<unsigned char> data;
};
struct EmuMbarrier {
    unsigned count = 0, pending = 0;  // arrivals per phase, and those still missing in the current one
    long long tx = 0;                 // bytes expected (expect_tx) minus bytes of the copies issued, this phase
    uint64_t phase = 0;               // completed phases
    std::vector<EmuBulkCopy> issued;  // this phase's copies, not landed
    std::vector<EmuBulkCopy> landing; // completed phases' copies, landed when a thread observes the completion
};
struct EmuNamedBarrier {
    unsigned expected = 0, arrived = 0;
    uint64_t generation = 0;
};
struct EmuBlockSync {
    std::mutex m;
    std::condition_variable cv;
    EmuNamedBarrier named[16];
    std::map<const void*, EmuMbarrier> mbar;
};
inline thread_local EmuBlockSync* tm_block_sync = nullptr;
inline thread_local unsigned char* tm_dyn_smem = nullptr;

inline std::chrono::seconds emu_deadlock_timeout() {
    const char* e = std::getenv("TM_EMU_DEADLOCK_S");
    return std::chrono::seconds(e ? std::max(1, std::atoi(e)) : 60);
}
// Waits on the block's condition until `done()` (the lock held), aborting with `what` after the deadlock timeout.
template <typename F> inline void emu_block_wait(std::unique_lock<std::mutex>& lock, F done, const char* what) {
    if (!tm_block_sync->cv.wait_for(lock, emu_deadlock_timeout(), done)) emu_check(false, what);
}

// bar.sync id, count / bar.arrive id, count: `count` threads (whole warps on the device) meet at barrier `id` (1..15;
// 0 is __syncthreads); arrive counts this thread without waiting.
inline void emu_named_barrier(unsigned id, unsigned count, bool wait) {
    emu_check(id >= 1 && id < 16, "named barrier id outside 1..15 (0 is __syncthreads)");
    emu_check(count > 0 && count % 32 == 0, "named barrier thread count not a positive multiple of 32");
    EmuBlockSync* bs = tm_block_sync;
    std::unique_lock<std::mutex> lock(bs->m);
    EmuNamedBarrier& b = bs->named[id];
    if (b.arrived == 0) b.expected = count;
    emu_check(b.expected == count, "named barrier: participants give different thread counts");
    const uint64_t gen = b.generation;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
        bs->cv.notify_all();
        return;
    }
    if (wait) emu_block_wait(lock, [&] { return b.generation != gen; }, "named barrier: no progress (deadlock)");
}

inline EmuMbarrier& emu_mbar(const void* bar) {
    auto it = tm_block_sync->mbar.find(bar);
    emu_check(it != tm_block_sync->mbar.end(), "mbarrier used before mbarrier.init");
    return it->second;
}
// The phase completes once every arrival is in and the copies issued cover the bytes expected.
inline void emu_mbar_try_complete(EmuMbarrier& b) {
    if (b.pending != 0 || b.tx != 0) return;
    for (auto& c : b.issued) b.landing.push_back(std::move(c));
    b.issued.clear();
    b.phase++;
    b.pending = b.count;
    tm_block_sync->cv.notify_all();
}
inline void emu_mbar_land(EmuMbarrier& b) {
    for (const auto& c : b.landing) std::memcpy(c.dst, c.data.data(), c.data.size());
    b.landing.clear();
}
inline void emu_mbar_init(void* bar, unsigned count) {
    emu_check(count > 0, "mbarrier.init with count 0");
    std::lock_guard<std::mutex> lock(tm_block_sync->m);
    EmuMbarrier& b = tm_block_sync->mbar[bar];
    b = EmuMbarrier{};
    b.count = b.pending = count;
}
inline void emu_mbar_arrive(void* bar, long long expect_tx) {
    std::lock_guard<std::mutex> lock(tm_block_sync->m);
    EmuMbarrier& b = emu_mbar(bar);
    emu_check(b.pending > 0, "mbarrier arrive with no pending arrivals in the phase");
    b.tx += expect_tx;
    b.pending--;
    emu_mbar_try_complete(b);
}
inline void emu_mbar_expect_tx(void* bar, long long bytes) {
    std::lock_guard<std::mutex> lock(tm_block_sync->m);
    emu_mbar(bar).tx += bytes;
}
// cp.async.bulk global -> shared, completing `bytes` on `bar`: captured now, landing when a thread observes the phase.
inline void emu_bulk_copy(void* dst, const void* src, unsigned bytes, void* bar) {
    emu_check(bytes > 0 && bytes % 16 == 0, "cp.async.bulk size not a positive multiple of 16");
    emu_check(reinterpret_cast<uintptr_t>(dst) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0,
              "cp.async.bulk address not 16-byte aligned");
    std::lock_guard<std::mutex> lock(tm_block_sync->m);
    EmuMbarrier& b = emu_mbar(bar);
    emu_mbar_land(b);  // an earlier phase's copy never lands over this one
    const auto* p = static_cast<const unsigned char*>(src);
    b.issued.push_back({dst, std::vector<unsigned char>(p, p + bytes)});
    b.tx -= bytes;
    emu_mbar_try_complete(b);
}
// mbarrier.try_wait.parity: whether the phase of parity `parity` has completed (the current phase's parity differs).
inline bool emu_mbar_try_wait(void* bar, unsigned parity) {
    std::lock_guard<std::mutex> lock(tm_block_sync->m);
    EmuMbarrier& b = emu_mbar(bar);
    const bool done = (b.phase & 1) != (parity & 1);
    if (done) emu_mbar_land(b);
    return done;
}
inline void emu_mbar_wait(void* bar, unsigned parity) {
    std::unique_lock<std::mutex> lock(tm_block_sync->m);
    EmuMbarrier& b = emu_mbar(bar);
    emu_block_wait(lock, [&] { return (b.phase & 1) != (parity & 1); }, "mbarrier wait: no progress (deadlock)");
    emu_mbar_land(b);
}

// Launch `kern<<<grid, block, smem_bytes>>>(args...)`: `smem_bytes` of dynamic shared memory (1024-byte aligned,
// zeroed per block), reached through TM_DYNAMIC_SMEM (pipeline.cuh).
template <typename... P, typename... A>
void emu_launch_smem(void (*kern)(P...), dim3 grid, dim3 block, size_t smem_bytes, A... args);

// Launch `kern<<<grid, block>>>(args...)`.
template <typename... P, typename... A> void emu_launch(void (*kern)(P...), dim3 grid, dim3 block, A... args) {
    emu_launch_smem(kern, grid, block, 0, args...);
}
template <typename... P, typename... A>
void emu_launch_smem(void (*kern)(P...), dim3 grid, dim3 block, size_t smem_bytes, A... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                std::barrier<> bar(n);
                EmuBlockSync block_sync;
                // One grow-only buffer for every launch: a fixed address keeps the wgmma descriptors' table of
                // shared-memory windows small (cuda_emu.h's emu_wgmma_desc_address).
                static std::vector<unsigned char> dyn;
                if (dyn.size() < smem_bytes + 1024) dyn.assign(smem_bytes + 1024, 0);
                unsigned char* dyn_smem =
                    dyn.data() + (1024 - reinterpret_cast<uintptr_t>(dyn.data()) % 1024) % 1024;
                std::memset(dyn_smem, 0, smem_bytes);
                std::vector<std::unique_ptr<EmuWarp>> warps;
                for (unsigned w = 0; w < (n + 31) / 32; w++) warps.push_back(std::make_unique<EmuWarp>(std::min(32u, n - 32 * w)));
                std::vector<std::unique_ptr<EmuWarpgroup>> warpgroups;  // whole warpgroups only
                for (unsigned w = 0; w < n / 128; w++) warpgroups.push_back(std::make_unique<EmuWarpgroup>());
                std::vector<std::thread> ts;
                ts.reserve(n);
                for (unsigned t = 0; t < n; t++) {
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        tm_barrier = &bar;
                        tm_block_sync = &block_sync;
                        tm_dyn_smem = smem_bytes ? dyn_smem : nullptr;
                        tm_warp = warps[t / 32].get();
                        tm_lane = t % 32;
                        tm_wg = t / 128 < warpgroups.size() ? warpgroups[t / 128].get() : nullptr;
                        tm_wg_rank = t % 128;
                        tm_wgmma_fenced = false;
                        tm_async_proxy_stale = false;
                        kern(args...);
                        bool in_flight = !tm_cp_open.empty();
                        for (const auto& grp : tm_cp_groups) in_flight |= !grp.empty();
                        emu_check(!in_flight, "kernel exits with cp.async copies in flight");
                        tm_cp_groups.clear();
                        tm_warp->bar.arrive_and_drop();
                        if (tm_wg) tm_wg->bar.arrive_and_drop();
                        bar.arrive_and_drop();
                    });
                }
                for (auto& th : ts) th.join();
                for (const auto& wg : warpgroups) emu_check(wg->idle(), "kernel exits with wgmma products in flight");
                for (const auto& [addr, mb] : block_sync.mbar)
                    emu_check(mb.issued.empty(), "kernel exits with a cp.async.bulk copy whose phase never completed");
            }
}
