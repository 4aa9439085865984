// Runs src/cuda/flash_attn.cu (the tensor-core FlashAttention-2 kernels: cp.async, ldmatrix, mma.sync) under
// cuda_emu.h's warp-level emulation and compares them with a double-precision reference, in bf16 and f16, on T that
// are and are not multiples of the tiles, every launch variant, head groups that do not divide B * NH, and grouped-query
// attention (NKV key/value heads shared by NH / NKV query heads each). Checks
// that every output element is written (outputs start as NaN) and that a second run gives the same bytes.
// Prints one line per check; exits 1 on any mismatch. Build and run: dev/cuda/run.sh ops
#include "cuda_emu.h"

#include "../../src/cuda/flash_attn.cu"

#include <cstdio>
#include <random>
#include <string>

static int failures = 0;

template <typename T> static T to16(double x);
template <> __nv_bfloat16 to16<__nv_bfloat16>(double x) { return __float2bfloat16((float)x); }
template <> __half to16<__half>(double x) { return __float2half((float)x); }
static double from16(__nv_bfloat16 x) { return __bfloat162float(x); }
static double from16(__half x) { return __half2float(x); }
static double from16(float x) { return x; }

// |got - want| <= abs + rel * |want| everywhere (NaN fails).
template <typename G>
static void expect(const std::string& what, const std::vector<G>& got, const std::vector<double>& want, double abs, double rel) {
    double worst = 0, scale = 0;
    size_t bad = 0, first = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (size_t i = 0; i < want.size(); i++) {
        const double err = std::fabs(from16(got[i]) - want[i]);
        if (!(err <= abs + rel * std::fabs(want[i]))) {
            if (!bad) first = i;
            bad++;
        }
        if (!(err <= worst)) worst = err;
    }
    std::printf("%-5s %-58s max |diff| %.3e (max |ref| %.2e) over %zu%s\n", bad ? "FAIL" : "ok", what.c_str(), worst, scale,
                want.size(),
                bad ? (" (" + std::to_string(bad) + " bad, first at " + std::to_string(first) + ": got " +
                       std::to_string(from16(got[first])) + " want " + std::to_string(want[first]) + ")").c_str()
                    : "");
    if (bad) failures++;
}

template <typename T> struct Kernels {
    void (*fwd)(const T*, T*, float*, int, int, int, float, int);
    void (*dkdv)(const T*, const T*, const float*, const float*, T*, int, int, int, float, int);
    void (*dq)(const T*, const T*, const T*, const float*, float*, T*, int, int, int, float, int);
    int fwd_rows, fwd_threads, bwd_rows, bwd_threads;
};

// The b3 kernels are the same code under a register cap (nothing to emulate), so the lab runs the others.
template <typename T> static Kernels<T> kernels(int fw, int fm, int bw);
#define FA2_PICK(T, SFX)                                                                                          \
    template <> Kernels<T> kernels<T>(int fw, int fm, int bw) {                                                   \
        Kernels<T> k{};                                                                                           \
        k.fwd = fw == 8 ? flash_fwd_##SFX##_w8m1 : fm == 2 ? flash_fwd_##SFX##_w4m2 : flash_fwd_##SFX##_w4m1;     \
        k.fwd_rows = fw * 16 * fm;                                                                                \
        k.fwd_threads = fw * 32;                                                                                  \
        k.dkdv = bw == 8 ? flash_dkdv_##SFX##_w8 : flash_dkdv_##SFX##_w4;                                         \
        k.dq = bw == 8 ? flash_dq_##SFX##_w8 : flash_dq_##SFX##_w4;                                               \
        k.bwd_rows = bw * 16;                                                                                     \
        k.bwd_threads = bw * 32;                                                                                  \
        return k;                                                                                                 \
    }
FA2_PICK(__nv_bfloat16, bf16)
FA2_PICK(__half, f16)

// One case: qkv (B, T, C + 2 KW), dy (B, T, C) random; the kernels against the reference; dqkv all written; repeat
// exact.
template <typename T>
static void check(const char* dtype, int B, int NH, int NKV, int Tn, int fw, int fm, int bw, int group, uint32_t seed) {
    const int HS = FA2_HS, C = NH * HS, KW = NKV * HS, W = C + 2 * KW, NQ = NH / NKV;
    const double scale = 1.0 / std::sqrt((double)HS);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<T> qkv((size_t)B * Tn * W), dy((size_t)B * Tn * C);
    std::vector<double> x(qkv.size()), g(dy.size());
    for (size_t i = 0; i < qkv.size(); i++) {
        qkv[i] = to16<T>(u(rng) * 2.0);  // scores of O(10): a peaked softmax
        x[i] = from16(qkv[i]);
    }
    for (size_t i = 0; i < dy.size(); i++) {
        dy[i] = to16<T>(u(rng));
        g[i] = from16(dy[i]);
    }
    // Column of part 0 (q of query head h), 1 (k) or 2 (v) of query head h's key/value head.
    auto col = [&](int part, int h) { return part == 0 ? h * HS : C + (part - 1) * KW + (h / NQ) * HS; };
    auto at = [&](int part, int b, int h, int t, int d) { return x[((size_t)b * Tn + t) * W + col(part, h) + d]; };

    const Kernels<T> k = kernels<T>(fw, fm, bw);
    const int nbh = B * NH;
    const float fscale = (float)scale;
    const uint16_t nan16 = 0x7fff;
    auto run = [&](std::vector<T>& y, std::vector<float>& lse, std::vector<T>& dqkv) {
        y.assign(dy.size(), T{nan16});
        lse.assign((size_t)nbh * Tn, NAN);
        dqkv.assign(qkv.size(), T{nan16});
        std::vector<float> dvec((size_t)nbh * Tn, NAN);
        const unsigned nq = (Tn + k.fwd_rows - 1) / k.fwd_rows, nb = (Tn + k.bwd_rows - 1) / k.bwd_rows;
        emu_launch(k.fwd, dim3{nq * nbh, 1, 1}, dim3{(unsigned)k.fwd_threads, 1, 1}, (const T*)qkv.data(), y.data(), lse.data(),
                   NH, NKV, Tn, fscale, group);
        emu_launch(k.dq, dim3{nb * nbh, 1, 1}, dim3{(unsigned)k.bwd_threads, 1, 1}, (const T*)qkv.data(), (const T*)y.data(),
                   (const T*)dy.data(), (const float*)lse.data(), dvec.data(), dqkv.data(), NH, NKV, Tn, fscale, group);
        emu_launch(k.dkdv, dim3{nb * (unsigned)(B * NKV), 1, 1}, dim3{(unsigned)k.bwd_threads, 1, 1}, (const T*)qkv.data(),
                   (const T*)dy.data(), (const float*)lse.data(), (const float*)dvec.data(), dqkv.data(), NH, NKV, Tn, fscale,
                   group);
    };
    std::vector<T> y, dqkv, y2, dqkv2;
    std::vector<float> lse, lse2;
    run(y, lse, dqkv);

    // Reference (double), backward from the kernel's own y (rounded), as the CPU twin and FlashAttention-2 do.
    std::vector<double> ry(dy.size()), rl(lse.size()), rd(qkv.size(), 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            std::vector<double> P((size_t)Tn * Tn, 0.0);
            for (int i = 0; i < Tn; i++) {
                std::vector<double> s(i + 1);
                double m = -INFINITY, l = 0;
                for (int j = 0; j <= i; j++) {
                    double dot = 0;
                    for (int d = 0; d < HS; d++) dot += at(0, b, h, i, d) * at(1, b, h, j, d);
                    s[j] = dot * scale;
                    m = std::max(m, s[j]);
                }
                for (int j = 0; j <= i; j++) l += std::exp(s[j] - m);
                rl[((size_t)b * NH + h) * Tn + i] = m + std::log(l);
                for (int j = 0; j <= i; j++) P[(size_t)i * Tn + j] = std::exp(s[j] - m) / l;
                for (int d = 0; d < HS; d++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += P[(size_t)i * Tn + j] * at(2, b, h, j, d);
                    ry[((size_t)b * Tn + i) * C + h * HS + d] = acc;
                }
            }
            for (int i = 0; i < Tn; i++) {
                const size_t yr = ((size_t)b * Tn + i) * C + h * HS;
                double D = 0;
                for (int d = 0; d < HS; d++) D += g[yr + d] * from16(y[yr + d]);
                for (int j = 0; j <= i; j++) {
                    const double p = P[(size_t)i * Tn + j];
                    double dp = 0;
                    for (int d = 0; d < HS; d++) dp += g[yr + d] * at(2, b, h, j, d);
                    const double ds = p * (dp - D) * scale;
                    const size_t qi = ((size_t)b * Tn + i) * W + col(0, h), rj = ((size_t)b * Tn + j) * W;
                    for (int d = 0; d < HS; d++) {
                        rd[qi + d] += ds * at(1, b, h, j, d);
                        rd[rj + col(1, h) + d] += ds * at(0, b, h, i, d);  // summed over the group's query heads
                        rd[rj + col(2, h) + d] += p * g[yr + d];
                    }
                }
            }
        }
    double ymax = 0, gmax = 0;
    for (double v : ry) ymax = std::max(ymax, std::fabs(v));
    for (double v : rd) gmax = std::max(gmax, std::fabs(v));
    const std::string tag = std::string("flash ") + dtype + " B=" + std::to_string(B) + " NH=" + std::to_string(NH) +
                            (NKV != NH ? " KV=" + std::to_string(NKV) : std::string()) + " T=" + std::to_string(Tn) + " fwd w" + std::to_string(fw) + "m" + std::to_string(fm) + " bwd w" +
                            std::to_string(bw) + " group " + std::to_string(group);
    // bf16 tolerance as tests/kernels_attention.rs: 1% of the largest entry + 1/64 relative (P and dS are rounded to
    // the input type before their products; D = dy . y cancels against dP).
    expect(tag + " y", y, ry, 0.01 * ymax, 1.0 / 64);
    expect(tag + " lse", lse, rl, 1e-4, 1e-5);
    expect(tag + " dqkv", dqkv, rd, 0.01 * gmax, 1.0 / 64);

    run(y2, lse2, dqkv2);
    const bool same = std::memcmp(y.data(), y2.data(), y.size() * sizeof(T)) == 0 &&
                      std::memcmp(lse.data(), lse2.data(), lse.size() * 4) == 0 &&
                      std::memcmp(dqkv.data(), dqkv2.data(), dqkv.size() * sizeof(T)) == 0;
    std::printf("%-5s %-58s second run bitwise equal\n", same ? "ok" : "FAIL", tag.c_str());
    if (!same) failures++;
}

int main(int argc, char** argv) {
    const bool full = argc > 1 && std::string(argv[1]) == "full";
    // T below, at and past the tiles, partial head groups, then every other launch variant once.
    check<__nv_bfloat16>("bf16", 1, 2, 2, 1, 4, 1, 4, 1, 1);
    check<__nv_bfloat16>("bf16", 2, 3, 3, 7, 4, 1, 4, 4, 2);
    check<__nv_bfloat16>("bf16", 1, 2, 2, 100, 4, 1, 4, 3, 3);
    check<__half>("f16", 1, 1, 1, 130, 4, 1, 4, 1, 4);
    check<__nv_bfloat16>("bf16", 1, 2, 2, 150, 4, 2, 8, 2, 5);
    check<__nv_bfloat16>("bf16", 1, 1, 1, 200, 8, 1, 8, 1, 6);
    // Grouped-query attention: 4 query heads on 2 and on 1 key/value heads, T past one tile, two batches.
    check<__nv_bfloat16>("bf16", 2, 4, 2, 70, 4, 2, 4, 3, 9);
    check<__nv_bfloat16>("bf16", 1, 4, 1, 90, 4, 1, 4, 1, 10);
    if (full) {
        check<__nv_bfloat16>("bf16", 1, 1, 1, 256, 4, 1, 4, 1, 7);
        check<__half>("f16", 2, 1, 1, 97, 8, 1, 4, 2, 8);
        check<__nv_bfloat16>("bf16", 1, 6, 2, 200, 8, 1, 8, 2, 11);
    }
    if (failures) {
        std::printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all flash-attention kernel checks passed\n");
    return 0;
}
