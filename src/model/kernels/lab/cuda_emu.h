// A minimal CUDA emulation for running tokenmill's kernels on a CPU with g++ (C++20), so their indexing,
// masking and synchronisation can be checked against plain references without a GPU (lab/run.sh).
//
// Model: blocks run one after another; the threads of a block run concurrently as std::threads and
// __syncthreads() is a std::barrier (a thread that returns drops out of it, as an exited CUDA thread does).
// `__shared__` becomes `static`, which is right because one block runs at a time. Not emulated: warp shuffles,
// dynamic shared memory, atomics, streams; the kernels restrict themselves accordingly (see ../common.cuh).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

// Launch `kern<<<grid, block>>>(args...)`.
template <typename... P, typename... A> void emu_launch(void (*kern)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                std::barrier<> bar(n);
                std::vector<std::thread> ts;
                ts.reserve(n);
                for (unsigned t = 0; t < n; t++) {
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        tm_barrier = &bar;
                        kern(args...);
                        bar.arrive_and_drop();
                    });
                }
                for (auto& th : ts) th.join();
            }
}
