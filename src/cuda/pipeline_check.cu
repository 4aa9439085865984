// tokenmill: sm_90a
// The check of Hopper's asynchronous pipeline (pipeline.cuh) on the device and in the kernel lab: the skeleton of a
// warp-specialised kernel (FA3's) with nothing else in it. Launcher: pipeline_check.rs; GPU test:
// tests/kernels_wgmma.rs; lab: dev/cuda/check_pipeline.cpp.
//
// Per CTA: tiles first .. first + n - 1 of x (PC_TILE floats each) stream through a ring of STAGES shared-memory
// stages. Warpgroup 0 is the producer: one thread waits until a stage is free (its `empty` mbarrier), arrives on its
// `full` mbarrier expecting the tile's bytes and issues the bulk copy that completes them. Warpgroups 1 and 2 are
// the consumers and take the tiles in turns (tile j to consumer j % 2), in a ping-pong of named barriers (barrier
// 1 + c: consumer c's turn, 256 threads: the other consumer arrives, c syncs), as FA3 orders its two consumer
// warpgroups' tensor-core phases: a consumer waits for its tile's `full` phase, then for its turn; its threads sum
// the tile (thread t: elements t, t + 128, ... in order), meet on barrier 3 + c (its 128 threads), and its thread 0
// adds the 128 partial sums in order into sums[tile], writes the CTA's running count of turns into order[tile] and
// arrives on the stage's `empty` mbarrier; then the consumer hands the turn over. So sums are a fixed-order f32 sum
// (the test's CPU reference repeats it bit for bit) and order[first + j] = j exactly when the turns alternate.
//
// MODE (the lab's broken protocols, which must fail there; the device runs MODE 0): 1 = the consumers do not wait
// for `full` (they read stages before their copies land: wrong sums), 2 = no first hand-over (a deadlock).
#include "common.cuh"
#include "pipeline.cuh"

#define PC_TILE 1024     // floats per tile: 4 KiB, one bulk copy
#define PC_THREADS 384   // producer warpgroup, two consumer warpgroups

// Dynamic shared memory of a STAGES ring: the stages, 2 * STAGES mbarriers, the consumers' partial sums, the count.
__host__ __device__ constexpr int pc_smem_bytes(int stages) { return stages * PC_TILE * 4 + 2 * stages * 8 + 256 * 4 + 16; }

template <int STAGES, int MODE>
__device__ __forceinline__ void pc_ring(const float* __restrict__ x, float* __restrict__ sums, int* __restrict__ order,
                                        int n_tiles, int per_cta) {
    TM_DYNAMIC_SMEM(unsigned char, smem);
    float* stage = reinterpret_cast<float*>(smem);                                // [STAGES][PC_TILE]
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * PC_TILE * 4);   // [STAGES]
    uint64_t* empty = full + STAGES;                                              // [STAGES]
    float* part = reinterpret_cast<float*>(empty + STAGES);                       // [2][128]
    volatile int* turns = reinterpret_cast<volatile int*>(part + 256);
    const int tid = (int)threadIdx.x, wg = tid / 128, t = tid % 128;
    const int first = (int)blockIdx.x * per_cta, n = min(per_cta, n_tiles - first);
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);   // the producer's arrive (with the tile's bytes)
            mbar_init(&empty[s], 1);  // the consuming warpgroup's thread 0
        }
        *turns = 0;
        mbar_init_fence();
    }
    __syncthreads();
    if (wg == 0) {
        if (t == 0)
            for (int j = 0; j < n; j++) {
                const int s = j % STAGES, use = j / STAGES;
                if (use > 0) mbar_wait(&empty[s], (use - 1) & 1);  // the stage's previous tile has been consumed
                mbar_arrive_expect_tx(&full[s], PC_TILE * 4);
                bulk_copy_g2s(stage + s * PC_TILE, x + (int64_t)(first + j) * PC_TILE, PC_TILE * 4, &full[s]);
            }
        return;
    }
    const int c = wg - 1;
    if (MODE != 2 && c == 1 && n > 0) named_arrive(1, 256);  // consumer 0 takes the first turn
    for (int j = c; j < n; j += 2) {
        const int s = j % STAGES;
        if (MODE != 1) mbar_wait(&full[s], (j / STAGES) & 1);
        named_sync(1 + c, 256);  // my turn
        float acc = 0.f;
        for (int i = t; i < PC_TILE; i += 128) acc += stage[s * PC_TILE + i];
        part[c * 128 + t] = acc;
        named_sync(3 + c, 128);  // every thread of this consumer has read the stage and written its part
        if (t == 0) {
            float total = 0.f;
            for (int i = 0; i < 128; i++) total += part[c * 128 + i];
            sums[first + j] = total;
            order[first + j] = *turns;
            *turns = *turns + 1;
            mbar_arrive(&empty[s]);
        }
        named_sync(3 + c, 128);  // part[] is read before this consumer's next tile overwrites it
        if (j + 1 < n) named_arrive(1 + (1 - c), 256);  // the other consumer's turn (it has a next tile)
    }
}

// grid ceil(n_tiles / per_cta), block PC_THREADS, dynamic shared memory pc_smem_bytes(STAGES) (< 48 KiB: no opt-in).
#define PC_KERNEL(STAGES, MODE, NAME)                                                                                  \
    extern "C" __global__ void __launch_bounds__(PC_THREADS) NAME(const float* x, float* sums, int* order, int n_tiles, \
                                                                  int per_cta) {                                     \
        pc_ring<STAGES, MODE>(x, sums, order, n_tiles, per_cta);                                                       \
    }
PC_KERNEL(2, 0, pipeline_ring_s2)
PC_KERNEL(4, 0, pipeline_ring_s4)
#ifndef __CUDACC__
PC_KERNEL(2, 1, pipeline_ring_s2_no_full_wait)
PC_KERNEL(2, 2, pipeline_ring_s2_no_first_turn)
#endif
