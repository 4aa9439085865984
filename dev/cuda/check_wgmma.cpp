// Runs src/cuda/wgmma_check.cu (a GEMM on the warpgroup tensor-core product of src/cuda/wgmma.cuh) under
// cuda_emu.h's warpgroup emulation against a double-precision reference: every kernel variant (A and B from shared
// memory K- or MN-major, A from registers; N = 64, 128, 256), both swizzle modes, single tiles and ragged shapes with
// several k tiles. Then the cases that must fail, so that a passing run means something:
//   - a wrong B descriptor (SBO 1024 -> 0, swizzle mode flipped, LBO 128 -> 0 without swizzle) must give a wrong
//     product;
//   - kernels that break an ordering rule of wgmma.cuh section 5 (read accumulators before wait_group; no wgmma.fence;
//     no fence.proxy.async after cp.async; overwrite a shared operand, write the accumulators or change the A
//     registers while a product is in flight; exit with a product in flight) must read NaN or abort the emulation
//     with the rule's message (each such kernel runs in a forked child).
// One line per check; exit 1 on any failure. Build and run: dev/cuda/run.sh wgmma (CI: tests/kernels_lab.rs).
#include "cuda_emu.h"

#include "../../src/cuda/wgmma_check.cu"

#include <csignal>
#include <cstdio>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;
static std::mt19937 rng(29);

using Kernel = void (*)(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int, int, int, uint64_t);
struct Variant {
    const char* name;
    Kernel kern;
    int bn;
    bool a_mn, b_mn;
};
static const Variant VARIANTS[] = {
    {"ss_kk_n64", wgc_ss_kk_n64, 64, false, false},    {"ss_kk_n128", wgc_ss_kk_n128, 128, false, false},
    {"ss_kk_n256", wgc_ss_kk_n256, 256, false, false}, {"ss_mn_n64", wgc_ss_mn_n64, 64, true, true},
    {"ss_mn_n128", wgc_ss_mn_n128, 128, true, true},   {"rs_kn_n64", wgc_rs_kn_n64, 64, false, true},
    {"rs_kk_n128", wgc_rs_kk_n128, 128, false, false},
};

static std::vector<__nv_bfloat16> random_bf16(size_t n) {
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    std::vector<__nv_bfloat16> v(n);
    for (auto& x : v) x = __float2bfloat16(d(rng));
    return v;
}
static double f(__nv_bfloat16 x) { return __bfloat162float(x); }

// One product: C from the kernel (C starts as NaN: every element must be written) and from the reference.
struct Result {
    std::vector<float> got;
    std::vector<double> want;
};
static Result run(const Variant& v, int M, int N, int K, int swizzle, uint64_t b_desc_xor) {
    const auto a = random_bf16((size_t)M * K), b = random_bf16((size_t)K * N);
    Result r{std::vector<float>((size_t)M * N, __builtin_nanf("")), std::vector<double>((size_t)M * N)};
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += f(v.a_mn ? a[(size_t)k * M + m] : a[(size_t)m * K + k]) * f(v.b_mn ? b[(size_t)k * N + n] : b[(size_t)n * K + k]);
            r.want[(size_t)m * N + n] = s;
        }
    emu_launch(v.kern, dim3{(unsigned)((N + v.bn - 1) / v.bn), (unsigned)((M + 63) / 64)}, dim3{128}, a.data(), b.data(),
               r.got.data(), M, N, K, swizzle, b_desc_xor);
    return r;
}

// The worst |got - want| and how many elements exceed abs + rel |want| (NaN exceeds everything).
static size_t count_bad(const Result& r, double abs, double rel, double& worst) {
    size_t bad = 0;
    worst = 0;
    for (size_t i = 0; i < r.want.size(); i++) {
        const double err = std::fabs((double)r.got[i] - r.want[i]);
        if (!(err <= abs + rel * std::fabs(r.want[i]))) bad++;
        if (!(err <= worst)) worst = err;
    }
    return bad;
}

static const char* swizzle_name(int swizzle) { return swizzle == WGMMA_SWIZZLE_128B ? "128B" : "none"; }

// The product within f32 accumulation error of the reference (the emulation rounds once per k16 product).
static void check(const Variant& v, int M, int N, int K, int swizzle) {
    const Result r = run(v, M, N, K, swizzle, 0);
    double worst;
    const size_t bad = count_bad(r, 1e-5, 1e-5, worst);
    std::printf("%-5s %-12s swizzle %-4s M=%-4d N=%-4d K=%-4d max |diff| %.3e over %zu%s\n", bad ? "FAIL" : "ok", v.name,
                swizzle_name(swizzle), M, N, K, worst, r.want.size(), bad ? (" (" + std::to_string(bad) + " bad)").c_str() : "");
    if (bad) failures++;
}

// A wrong descriptor must give a wrong product (the same comparison as `check` must fail).
static void check_wrong_descriptor(const Variant& v, int swizzle, uint64_t b_desc_xor, const char* what) {
    const Result r = run(v, 64, v.bn, 64, swizzle, b_desc_xor);
    double worst;
    const size_t bad = count_bad(r, 1e-5, 1e-5, worst);
    std::printf("%-5s %-12s swizzle %-4s with %s: %s (max |diff| %.3e, %zu of %zu wrong)\n", bad ? "ok" : "FAIL", v.name,
                swizzle_name(swizzle), what, bad ? "caught" : "NOT caught", worst, bad, r.want.size());
    if (!bad) failures++;
}

// ---- kernels that break one ordering rule each -------------------------------------------------------------------
enum class Mistake { None, EarlyRead, NoWgmmaFence, NoProxyFence, OverwriteOperand, WriteAccumulator, ChangeARegs, ExitInFlight };

// One 64 x 64 x 16 product (A and B K-major, no swizzle) by one warpgroup, written to c[64][64], with `mistake`.
template <Mistake MISTAKE> __global__ void wgc_rules(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
    alignas(1024) __shared__ __nv_bfloat16 sa[64 * 64], sb[64 * 64];
    for (int e = (int)threadIdx.x; e < 64 * 8; e += 128) {
        const int r = e / 8, u = e % 8;
        const int off = wgc_offset(false, WGMMA_SWIZZLE_NONE, r, u) / 2;
        cp_async16(sa + off, a + r * 64 + 8 * u, true);
        cp_async16(sb + off, b + r * 64 + 8 * u, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    if (MISTAKE != Mistake::NoProxyFence) fence_proxy_async();
    __syncthreads();
    float acc[32];
    uint32_t ar[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // ones, for the register-A case
    if (MISTAKE != Mistake::NoWgmmaFence) wgmma_fence();
    if (MISTAKE == Mistake::ChangeARegs)
        wgmma_rs<64, 0>(acc, ar, wgc_desc(sb, false, WGMMA_SWIZZLE_NONE, 0), 0);
    else
        wgmma_ss<64, 0, 0>(acc, wgc_desc(sa, false, WGMMA_SWIZZLE_NONE, 0), wgc_desc(sb, false, WGMMA_SWIZZLE_NONE, 0), 0);
    wgmma_commit();
    if (MISTAKE == Mistake::ExitInFlight) return;
    if (MISTAKE == Mistake::OverwriteOperand && threadIdx.x == 0) sb[0] = __float2bfloat16(7.f);
    if (MISTAKE == Mistake::WriteAccumulator) acc[0] = 1.f;
    if (MISTAKE == Mistake::ChangeARegs) ar[0] = 0;
    const int t = (int)threadIdx.x, w = t >> 5, g = (t & 31) >> 2, cq = t & 3;
    auto store = [&] {
        for (int i = 0; i < 32; i++) c[(16 * w + g + 8 * ((i >> 1) & 1)) * 64 + 8 * (i >> 2) + 2 * cq + (i & 1)] = acc[i];
    };
    if (MISTAKE == Mistake::EarlyRead) store();
    wgmma_wait<0>();
    if (MISTAKE != Mistake::EarlyRead) store();
}

// The rules kernel's output, launched in this process.
template <Mistake MISTAKE> static std::vector<float> run_rules(std::vector<double>* want = nullptr) {
    std::mt19937 local(7);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    std::vector<__nv_bfloat16> a(64 * 64), b(64 * 64);
    for (auto& x : a) x = __float2bfloat16(d(local));
    for (auto& x : b) x = __float2bfloat16(d(local));
    std::vector<float> c(64 * 64, 0.f);
    emu_launch(wgc_rules<MISTAKE>, dim3{1}, dim3{128}, a.data(), b.data(), c.data());
    if (want) {
        want->assign(64 * 64, 0.0);
        for (int m = 0; m < 64; m++)
            for (int n = 0; n < 64; n++)
                for (int k = 0; k < 16; k++) (*want)[m * 64 + n] += f(a[m * 64 + k]) * f(b[n * 64 + k]);
    }
    return c;
}

// The rules kernel with `MISTAKE` in a forked child: it must abort with a message containing `expect`.
template <Mistake MISTAKE> static void check_aborts(const char* what, const char* expect) {
    std::fflush(stdout);
    int pipefd[2];
    if (pipe(pipefd) != 0) std::abort();
    const pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        dup2(pipefd[1], 2);
        run_rules<MISTAKE>();
        _exit(0);
    }
    close(pipefd[1]);
    std::string err;
    char buf[512];
    for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) err.append(buf, (size_t)n);
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
    const bool ok = aborted && err.find(expect) != std::string::npos;
    while (!err.empty() && err.back() == '\n') err.pop_back();
    std::printf("%-5s %-52s %s%s\n", ok ? "ok" : "FAIL", what, aborted ? "aborted: " : "did NOT abort",
                aborted ? err.c_str() : "");
    if (!ok) failures++;
}

static void check_rules() {
    std::vector<double> want;
    const auto good = run_rules<Mistake::None>(&want);
    double worst = 0;
    for (size_t i = 0; i < want.size(); i++) worst = std::max(worst, std::fabs((double)good[i] - want[i]));
    const bool good_ok = worst <= 1e-5;
    std::printf("%-5s %-52s max |diff| %.3e\n", good_ok ? "ok" : "FAIL", "rules kernel without a mistake", worst);
    if (!good_ok) failures++;
    const auto early = run_rules<Mistake::EarlyRead>();
    const bool all_nan = std::all_of(early.begin(), early.end(), [](float x) { return std::isnan(x); });
    std::printf("%-5s %-52s %s\n", all_nan ? "ok" : "FAIL", "accumulators read before wait_group",
                all_nan ? "read NaN" : "read values (NOT caught)");
    if (!all_nan) failures++;
    check_aborts<Mistake::NoWgmmaFence>("product without wgmma.fence", "without wgmma.fence");
    check_aborts<Mistake::NoProxyFence>("cp.async data read without fence.proxy.async", "fence.proxy.async");
    check_aborts<Mistake::OverwriteOperand>("shared operand overwritten while in flight", "was overwritten");
    check_aborts<Mistake::WriteAccumulator>("accumulator written while in flight", "accumulator registers");
    check_aborts<Mistake::ChangeARegs>("A registers changed while in flight", "A registers");
    check_aborts<Mistake::ExitInFlight>("kernel exits with a product in flight", "in flight");
}

int main() {
    for (int swizzle : {WGMMA_SWIZZLE_128B, WGMMA_SWIZZLE_NONE})
        for (const Variant& v : VARIANTS) {
            check(v, 64, v.bn, 64, swizzle);             // one tile, one k tile
            check(v, 136, 2 * v.bn + 40, 200, swizzle);  // partial tiles in M, N and K (K = 3 tiles + 8)
        }
    check(VARIANTS[0], 8, 8, 8, WGMMA_SWIZZLE_128B);  // smaller than every tile
    // Wrong B descriptors: SBO 1024 -> 0 (every 8-row group reads the first), the swizzle mode flipped.
    for (const Variant& v : VARIANTS)
        for (int swizzle : {WGMMA_SWIZZLE_128B, WGMMA_SWIZZLE_NONE}) {
            check_wrong_descriptor(v, swizzle, (uint64_t)(1024 >> 4) << 32, "SBO 1024 -> 0");
            check_wrong_descriptor(v, swizzle, 1ull << 62, "swizzle mode flipped");
            if (swizzle == WGMMA_SWIZZLE_NONE)  // (with the 128B swizzle, LBO is unused or, at N = 64, out of reach)
                check_wrong_descriptor(v, swizzle, (uint64_t)(128 >> 4) << 16, "LBO 128 -> 0");
        }
    check_rules();
    if (failures) {
        std::printf("%d wgmma check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all wgmma checks passed\n");
    return 0;
}
