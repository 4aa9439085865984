// Embedding backward: dtable[ids[r], :] += dy[r, :] for every row r of dy (N, C), into a zeroed f32 (V, C).
//
// Why not candle's index_add: its CUDA kernel gives one thread per column (C = 768 threads for GPT-2's wte) and
// walks all N ids serially in each, so at N = 65536 tokens the whole GPU runs 24 warps through 65536 dependent
// read-modify-writes (tens of ms per micro-step). Here one block takes one row (grid-stride over rows), its
// threads the columns, and rows that share an id meet through f32 atomicAdd: N x C independent adds.
//
// The price is the order of the additions into one id's row: rows with the same id add in whatever order the
// blocks run, so dtable varies in its last bits from run to run (as PyTorch's non-deterministic embedding
// backward does). The CPU twin (candle's index_add) is deterministic.

#include <stdint.h>

#define EMB_THREADS 256

extern "C" __global__ void embedding_bwd_f32(
    const uint32_t *ids,   // (N)
    const float *dy,       // (N, C), rows `dy_stride` apart, dense within a row
    float *dtable,         // (V, C), dense, zeroed by the caller
    const int64_t n,
    const int64_t c,
    const int64_t v,
    const int64_t dy_stride) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const uint32_t id = ids[r];
    // The wrapper checks ids on the host side of the forward; a bad id here is skipped, never written out of range.
    if ((int64_t)id >= v) continue;
    const float *src = dy + r * dy_stride;
    float *dst = dtable + (int64_t)id * c;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      atomicAdd(dst + j, src[j]);
    }
  }
}
