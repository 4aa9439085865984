// Runs src/cuda/pipeline_check.cu (a producer warpgroup streaming tiles by bulk copies through mbarrier-guarded
// shared-memory stages to two consumer warpgroups that take turns on named barriers; pipeline.cuh) under
// cuda_emu.h's emulation: the sums of every tile bit for bit against the kernel's own summation order done here,
// and the consumers' turns in tile order, for 2- and 4-stage rings over ragged block sizes. Then the broken
// protocols that must fail, so that a passing run means something:
//   - consumers that read a stage without waiting for its `full` phase read it before the copy lands: wrong sums;
//   - consumers that never hand over the first turn deadlock: the emulation aborts its wait (forked child, a short
//     TM_EMU_DEADLOCK_S);
//   - misuse of the primitives themselves aborts with the rule's message (forked children): an arrive beyond an
//     mbarrier's pending count, a bulk copy not a multiple of 16 bytes, a kernel that exits with a copy in flight,
//     named-barrier participants that give different thread counts.
// One line per check; exit 1 on any failure. Build and run: dev/cuda/run.sh pipeline (CI: tests/kernels_lab.rs).
#include "cuda_emu.h"

#include "../../src/cuda/pipeline_check.cu"

#include <cstdio>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;
static std::mt19937 rng(31);

using Ring = void (*)(const float*, float*, int*, int, int);

// The kernel's sum of one tile, in its order: thread t sums elements t, t + 128, ... in f32; then the 128 partial
// sums in order.
static float tile_sum(const float* x) {
    float part[128];
    for (int t = 0; t < 128; t++) {
        float acc = 0.f;
        for (int i = t; i < PC_TILE; i += 128) acc += x[i];
        part[t] = acc;
    }
    float total = 0.f;
    for (int t = 0; t < 128; t++) total += part[t];
    return total;
}

struct Outcome {
    int wrong_sums = 0, wrong_order = 0;
};

static Outcome run(Ring kern, int stages, int n_tiles, int per_cta) {
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    std::vector<float> x((size_t)n_tiles * PC_TILE);
    for (auto& v : x) v = d(rng);
    std::vector<float> sums(n_tiles, __builtin_nanf(""));
    std::vector<int> order(n_tiles, -1);
    const unsigned grid = (unsigned)((n_tiles + per_cta - 1) / per_cta);
    emu_launch_smem(kern, dim3{grid, 1, 1}, dim3{PC_THREADS, 1, 1}, (size_t)pc_smem_bytes(stages), (const float*)x.data(),
                    sums.data(), order.data(), n_tiles, per_cta);
    Outcome o;
    for (int i = 0; i < n_tiles; i++) {
        const float want = tile_sum(x.data() + (size_t)i * PC_TILE);
        if (std::memcmp(&want, &sums[i], 4) != 0) o.wrong_sums++;
        if (order[i] != i % per_cta) o.wrong_order++;
    }
    return o;
}

static void check(const char* name, Ring kern, int stages, int n_tiles, int per_cta) {
    const Outcome o = run(kern, stages, n_tiles, per_cta);
    const bool ok = o.wrong_sums == 0 && o.wrong_order == 0;
    std::printf("%s pipeline %s: %d tiles, %d per block: %d sums differ, %d turns out of order\n", ok ? "ok  " : "FAIL",
                name, n_tiles, per_cta, o.wrong_sums, o.wrong_order);
    failures += !ok;
}

// `body` in a forked child must abort (exit non-zero) with stderr containing `needle`.
template <typename F> static void check_aborts(const char* what, const char* needle, F body) {
    int fds[2];
    if (pipe(fds) != 0) {
        std::printf("FAIL pipeline %s: pipe()\n", what);
        failures++;
        return;
    }
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        setenv("TM_EMU_DEADLOCK_S", "2", 1);
        body();
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[512];
    ssize_t r;
    while ((r = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, (size_t)r);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool aborted = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const bool ok = aborted && err.find(needle) != std::string::npos;
    std::printf("%s pipeline %s: %s\n", ok ? "ok  " : "FAIL", what,
                ok ? "aborted as it must" : (aborted ? ("aborted, but: " + err).c_str() : "ran to the end"));
    failures += !ok;
}

// Kernels that break one rule of the primitives each (grid 1, one warpgroup unless said).
static void arrive_twice() {
    TM_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        mbar_arrive_expect_tx(bar, 16);  // pending 0, tx 16: the phase waits for the bytes
        mbar_arrive(bar);                // no arrival is pending any more
    }
}
static void copy_odd_size(const float* x) {
    TM_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        mbar_arrive_expect_tx(bar, 24);
        bulk_copy_g2s(bar + 2, x, 24, bar);
        mbar_wait(bar, 0);
    }
}
static void exit_in_flight(const float* x) {
    TM_DYNAMIC_SMEM(uint64_t, bar);
    if (threadIdx.x == 0) {
        mbar_init(bar, 2);  // two arrivals expected, one made: the copy's phase never completes
        mbar_arrive_expect_tx(bar, 64);
        bulk_copy_g2s(bar + 2, x, 64, bar);
    }
}
static void counts_differ() {
    // Warps 0-1 sync on barrier 1 counting 128 threads, warps 2-3 arrive counting 96.
    if (threadIdx.x < 64) named_sync(1, 128);
    else named_arrive(1, 96);
}

int main() {
    for (int per_cta : {1, 2, 5, 8, 37}) {
        check("2 stages", pipeline_ring_s2, 2, 40, per_cta);
        check("4 stages", pipeline_ring_s4, 4, 40, per_cta);
    }
    {
        const Outcome o = run(pipeline_ring_s2_no_full_wait, 2, 12, 6);
        const bool ok = o.wrong_sums > 0;
        std::printf("%s pipeline consumers that skip the full-barrier wait: %d of 12 sums wrong (must be > 0)\n",
                    ok ? "ok  " : "FAIL", o.wrong_sums);
        failures += !ok;
    }
    check_aborts("no first hand-over of the turn", "no progress (deadlock)", [] { run(pipeline_ring_s2_no_first_turn, 2, 4, 4); });
    std::vector<float> x(64, 1.f);
    const float* xp = x.data();
    check_aborts("an arrive beyond the pending count", "no pending arrivals",
                 [] { emu_launch_smem(arrive_twice, dim3{1, 1, 1}, dim3{128, 1, 1}, 64); });
    check_aborts("a bulk copy of 24 bytes", "multiple of 16",
                 [xp] { emu_launch_smem(copy_odd_size, dim3{1, 1, 1}, dim3{128, 1, 1}, 64, xp); });
    check_aborts("a kernel that exits with a copy in flight", "never completed",
                 [xp] { emu_launch_smem(exit_in_flight, dim3{1, 1, 1}, dim3{128, 1, 1}, 256, xp); });
    check_aborts("named-barrier thread counts that differ", "different thread counts",
                 [] { emu_launch(counts_differ, dim3{1, 1, 1}, dim3{128, 1, 1}); });
    if (failures) {
        std::printf("%d pipeline check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all pipeline checks passed\n");
    return 0;
}
