// Embedding backward: dtable[id, :] = sum of dy[r, :] over the rows r with ids[r] == id, into a zeroed f32 (V, C).
//
// Why not candle's index_add: its CUDA kernel gives one thread per column (C = 768 threads for GPT-2's wte) and
// walks all N ids serially in each, so at N = 65536 tokens the whole GPU runs 24 warps through 65536 dependent
// read-modify-writes (36 ms per micro-step measured on the H100).
//
// Why not atomics (this kernel's first version: one block per row, atomicAdd into the id's row): rows with the same
// id then add in whatever order the blocks run, so dtable changed in its last bits from run to run and no two GPU
// training runs were bitwise equal (a one-rank data-parallel run drifted 1e-5 in loss from a plain one over 30
// steps). Here the wrapper groups the rows by id on the host (a counting sort of the N ids, stable, so each group
// lists its rows in ascending order) and each block sums one group's rows for a slice of the columns in that fixed
// order: the result is deterministic, and equal bit for bit to candle's CPU index_add, which adds the rows in the
// same order into zeros.

#include <stdint.h>

#define EMB_THREADS 256
// Rows loaded ahead of the (in-order) additions, so a long group is not one dependent load per row.
#define EMB_UNROLL 8

extern "C" __global__ void embedding_bwd_sorted_f32(
    const uint32_t *rows,       // (N) row indices of dy, grouped by id, ascending within a group
    const uint32_t *group_start,// (G + 1) offsets into rows
    const uint32_t *group_id,   // (G) the id of each group
    const float *dy,            // (N, C), rows `dy_stride` apart, dense within a row
    float *dtable,              // (V, C), dense, zeroed by the caller (ids in no group stay 0)
    const int64_t c,
    const int64_t dy_stride) {
  const int64_t g = blockIdx.x;
  const int64_t j = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= c) return;
  const uint32_t begin = group_start[g], end = group_start[g + 1];
  float acc = 0.f;
  uint32_t k = begin;
  for (; k + EMB_UNROLL <= end; k += EMB_UNROLL) {
    float x[EMB_UNROLL];
#pragma unroll
    for (int u = 0; u < EMB_UNROLL; ++u) x[u] = dy[(int64_t)rows[k + u] * dy_stride + j];
#pragma unroll
    for (int u = 0; u < EMB_UNROLL; ++u) acc += x[u];
  }
  for (; k < end; ++k) acc += dy[(int64_t)rows[k] * dy_stride + j];
  dtable[(int64_t)group_id[g] * c + j] = acc;
}
