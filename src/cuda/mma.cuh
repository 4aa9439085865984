// The tensor-core product of flash_attn.cu (the attention of the engine and of both candle attention ops):
// mma.sync.aligned.m16n8k16 with bf16 or f16 inputs and f32 accumulation, and the packing of two f32 values into one
// 16-bit pair register, its A-fragment format. In the kernel lab (dev/cuda/cuda_emu.h, included first) it runs on the
// emulation's warp exchange.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, c = lane % 4:
//   A (16 x 16, row major): a0 = A[g][2c, 2c+1], a1 = A[g+8][2c, 2c+1], a2 = A[g][2c+8, 2c+9], a3 = A[g+8][2c+8, 2c+9]
//   B (16 x 8, k x n):      b0 = B[2c, 2c+1][g], b1 = B[2c+8, 2c+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2c, 2c+1], c2, c3 = C[g+8][2c, 2c+1]
// (a .b32 register holds two 16-bit elements, the lower k index in the low half).
#pragma once
#include "common.cuh"

#ifdef __CUDACC__
// c += A B. Volatile: the product is issued where the kernel writes it (flash_attn.cu's tiles are scheduled by hand).
template <typename T> __device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // no bf16 tensor cores before sm_80; the launchers run these kernels only on sm_80+
#endif
}
template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// lo and hi rounded to T (nearest even) in one register, lo in the low half.
template <typename T> __device__ __forceinline__ uint32_t pack_pair(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack_pair<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
#else
template <typename T> inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu_mma_m16n8k16(c, a, b0, b1, std::is_same_v<T, __nv_bfloat16>);
}
template <typename T> inline uint32_t pack_pair(float lo, float hi) { return emu_pack16<T>(lo, hi); }
#endif
