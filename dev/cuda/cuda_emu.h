// A minimal CUDA emulation for running tokenmill's kernels on a CPU with g++ (C++20), so their indexing,
// masking and synchronisation can be checked against plain references without a GPU (dev/cuda/run.sh).
//
// Model: blocks run one after another; the threads of a block run concurrently as std::threads and
// __syncthreads() is a std::barrier (a thread that returns drops out of it, as an exited CUDA thread does).
// `__shared__` becomes `static`, which is right because one block runs at a time. Not emulated: dynamic shared
// memory, atomics, streams; the kernels restrict themselves accordingly (see src/cuda/common.cuh).
//
// Warp-level instructions (called through src/cuda/warp.cuh and mma.cuh, and flash_attn.cu's copy wrappers), emulated
// by the 32 threads of a warp meeting at a per-warp barrier and exchanging operands: shfl (idx and xor), ldmatrix.x4 (plain and .trans, with its 16-byte alignment checked),
// mma.m16n8k16 with bf16/f16 inputs and f32 accumulation (products summed exactly in double, then rounded once:
// the tensor core's own order and rounding are not modelled, which is below the tests' bf16 tolerances), and
// cp.async as real asynchronous copies: a copy lands in shared memory only at the wait_group that retires its
// group, so reading a tile before waiting for it reads stale data here too. The warp-level calls need every lane of
// the warp to make the same calls in the same order (warp-uniform control flow), as the hardware's .sync/.aligned
// forms require.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
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
// cp.async.wait_group n: all but the n most recent committed groups have landed.
inline void emu_cp_wait(size_t n) {
    while (tm_cp_groups.size() > n) {
        for (const EmuCopy& c : tm_cp_groups.front()) std::memcpy(c.dst, c.data, c.n);
        tm_cp_groups.erase(tm_cp_groups.begin());
    }
}

// Launch `kern<<<grid, block>>>(args...)`.
template <typename... P, typename... A> void emu_launch(void (*kern)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                std::barrier<> bar(n);
                std::vector<std::unique_ptr<EmuWarp>> warps;
                for (unsigned w = 0; w < (n + 31) / 32; w++) warps.push_back(std::make_unique<EmuWarp>(std::min(32u, n - 32 * w)));
                std::vector<std::thread> ts;
                ts.reserve(n);
                for (unsigned t = 0; t < n; t++) {
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        tm_barrier = &bar;
                        tm_warp = warps[t / 32].get();
                        tm_lane = t % 32;
                        kern(args...);
                        bool in_flight = !tm_cp_open.empty();
                        for (const auto& grp : tm_cp_groups) in_flight |= !grp.empty();
                        emu_check(!in_flight, "kernel exits with cp.async copies in flight");
                        tm_cp_groups.clear();
                        tm_warp->bar.arrive_and_drop();
                        bar.arrive_and_drop();
                    });
                }
                for (auto& th : ts) th.join();
            }
}
