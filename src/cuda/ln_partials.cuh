// The last step of both LayerNorm backwards (the candle op's layer_norm.cu and the GPT-2 engine's src/cuda/norm.cu):
// the weight and bias gradients from per-block partial column sums, in a fixed order (no atomics).
//   dw[col] (= or +=) sum_k partial[k][col],  db[col] (= or +=) sum_k partial[p + k][col]
// Block (32, 8): 32 columns; the p partial rows split 8 ways by k mod 8, then merged in shared memory in y order.
// ACC adds into dw/db (the engine accumulates gradients over micro-steps); otherwise they are overwritten. Without
// BIAS (RMSNorm) there are only the dw partials and db is not touched.
#pragma once

template <bool ACC, bool BIAS = true>
__device__ void ln_reduce_partials(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db,
                                   int64_t p, int64_t c) {
    __shared__ float sw[8][33];
    __shared__ float sb[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t col = (int64_t)blockIdx.x * 32 + tx;
    float aw = 0.f, ab = 0.f;
    if (col < c) {
        for (int64_t k = ty; k < p; k += 8) {
            aw += partial[k * c + col];
            if (BIAS) ab += partial[(p + k) * c + col];
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && col < c) {
        float w = 0.f, b = 0.f;
        for (int j = 0; j < 8; j++) {
            w += sw[j][tx];
            b += sb[j][tx];
        }
        dw[col] = ACC ? dw[col] + w : w;
        if (BIAS) db[col] = ACC ? db[col] + b : b;
    }
}
