// Warp-level primitives of tokenmill's kernels, the one place they are spelled: on the GPU the .sync intrinsics over
// the full warp; in the kernel lab (dev/cuda/cuda_emu.h, included before any kernel) its per-warp emulation. Every
// kernel shuffles through these, so the lab runs the same kernel text as the GPU.
//
// All 32 lanes of a warp must call them together (warp-uniform control flow): the hardware's .sync forms with a
// full mask require it, and the emulation's per-warp barrier would otherwise wait forever.
#pragma once

#ifdef __CUDACC__
__device__ __forceinline__ float warp_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ float warp_shfl(float v, int src_lane) { return __shfl_sync(0xffffffffu, v, src_lane); }
// Lane 0's `v` on every lane (|v| < 2^24 in the lab, which passes it as a float). For a value the same on every lane
// already (a warpgroup index): the compiler then knows it is warp-uniform, so wgmma under a branch on it is not
// serialised (ptxas C7518, "compiler-inserted WG.DP in divergent path"; CUTLASS's canonical_warp_group_idx).
__device__ __forceinline__ int warp_uniform(int v) { return __shfl_sync(0xffffffffu, v, 0); }
#else
inline float warp_shfl_xor(float v, int mask) { return emu_warp_shfl_xor(v, mask); }
inline float warp_shfl(float v, int src_lane) { return emu_warp_shfl(v, src_lane); }
inline int warp_uniform(int v) { return (int)emu_warp_shfl((float)v, 0); }
#endif

// Sum over the warp's 32 lanes, by butterfly: every lane gets the total, added in the same order on every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += warp_shfl_xor(v, o);
    return v;
}
