// Runs src/cuda/flash_attn.cu (the tensor-core FlashAttention-2 kernels: cp.async, ldmatrix, mma.sync) under
// cuda_emu.h's warp-level emulation and compares them with a double-precision reference, in bf16 and f16, on T that
// are and are not multiples of the tiles, every launch variant, head groups that do not divide B * NH, grouped-query
// attention (NKV key/value heads shared by NH / NKV query heads each), and both callers' layouts (the engine's fused
// qkv, the candle op's strided head views with dense gradients). Checks
// that every output element is written (outputs start as NaN) and that a second run gives the same bytes. Every bf16
// case also runs the Hopper backward kernels (flash_bwd_sm90.cu: dQ with D, then dK/dV; wgmma under the emulation,
// one and two warpgroups per block, the pipelined one, and the warp-specialised ones: a producer warpgroup feeding two
// consumer warpgroups through mbarrier-guarded stages, pipeline.cuh) on the same inputs and lse: dq, dk, dv against
// the reference and against flash_attn.cu's, repeatable bit for bit, every variant bitwise equal to the first.
// Prints one line per check; exits 1 on any mismatch. Build and run: dev/cuda/run.sh ops
#include "cuda_emu.h"

#include "../../src/cuda/flash_attn.cu"
#include "../../src/cuda/flash_bwd_sm90.cu"

#include <cstdio>
#include <random>
#include <string>
#include <type_traits>

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
    void (*fwd)(const T*, const T*, const T*, T*, float*, Fa2Layout, int, int, int, float, int);
    void (*dkdv)(const T*, const T*, const T*, const T*, const float*, const float*, T*, T*, Fa2Layout, int, int, int, float, int);
    void (*dq)(const T*, const T*, const T*, const T*, const T*, const float*, float*, T*, Fa2Layout, int, int, int, float, int);
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

// How a case lays its tensors out, as the two callers do.
enum class Layout {
    // The decoder engine: q|k|v side by side in one (B, T, C + 2 KW) buffer, y and dy (B, T, C), dqkv like qkv.
    Fused,
    // The candle op over head views: q a (B, T, NH, HS) buffer read as (B, NH, T, HS), k with rows padded by 8
    // elements, v dense (B, NKV, T, HS); y, dy and the gradients dense (B, heads, T, HS).
    Heads,
};

// One tensor of head-size rows in a buffer: element d of row t of head h in batch b at off + b*sb + h*sh + t*st + d.
struct View {
    size_t off;
    Fa2Strides s;
    size_t at(int b, int h, int t, int d) const { return off + b * s.b_ + h * s.h_ + t * s.t_ + d; }
};
static View dense(size_t off, int heads, int Tn) {
    return {off, {(int64_t)heads * Tn * FA2_HS, (int64_t)Tn * FA2_HS, FA2_HS}};
}

// A case's outputs in logical order (y, lse, then dq, dk, dv each (B, heads, T, HS)), whatever the layout.
template <typename T> struct Outputs {
    std::vector<T> y, grads;
    std::vector<float> lse;
};

// The Hopper backward kernels, every variant of flash_bwd_sm90.cu (SM90_VARIANTS): `launch(grad, v)` resets dq, dk, dv
// in a copy of flash's gradient buffer `flash` and reruns them. The result against the reference `want` (bf16
// tolerance, as flash's), against flash_dkdv's bytes (both on tensor cores, rounded differently: 2% of the largest
// entry + 1/32), a second launch bitwise equal, and every variant bitwise equal to the first (each dK, dV, dQ element
// is summed in the same order by all of them).
struct Sm90Variant {
    const char* name;
    int dq_rows, dq_threads, dkdv_rows, dkdv_threads;
    size_t dq_smem, dkdv_smem;  // dynamic shared memory of each kernel
};
static const Sm90Variant SM90_VARIANTS[] = {
    {"wg1", 64, 128, 64, 128, 0, 0},
    {"wg2", 128, 256, 128, 256, 0, 0},
    {"wg1p", 64, 128, 64, 128, 0, 0},
    {"ws2", 128, FS_WS_THREADS, 128, FS_WS_THREADS, (size_t)fs_dq_ws_smem(2), (size_t)fs_ws_smem(2)},
    {"ws4", 128, FS_WS_THREADS, 128, FS_WS_THREADS, (size_t)fs_dq_ws_smem(4), (size_t)fs_ws_smem(4)},
};
template <typename T, typename Launch>
static void check_sm90(const std::string& tag, const std::vector<T>& flash, const std::vector<double>& want, double gmax,
                       Launch launch) {
    std::vector<T> first;
    for (const Sm90Variant& v : SM90_VARIANTS) {
        const std::string t = tag + " sm90 bwd " + v.name;
        std::vector<T> g = flash, g2 = flash;
        launch(g, v);
        expect(t, g, want, 0.01 * gmax, 1.0 / 64);
        std::vector<double> fl(flash.size());
        for (size_t i = 0; i < flash.size(); i++) fl[i] = from16(flash[i]);
        expect(t + " vs flash_attn.cu", g, fl, 0.02 * gmax, 1.0 / 32);
        launch(g2, v);
        const bool same = std::memcmp(g.data(), g2.data(), g.size() * sizeof(T)) == 0;
        std::printf("%-5s %-58s second run bitwise equal\n", same ? "ok" : "FAIL", t.c_str());
        if (!same) failures++;
        if (first.empty()) {
            first = g;
        } else {
            const bool eq = std::memcmp(g.data(), first.data(), g.size() * sizeof(T)) == 0;
            std::printf("%-5s %-58s bitwise equal to %s\n", eq ? "ok" : "FAIL", t.c_str(), SM90_VARIANTS[0].name);
            if (!eq) failures++;
        }
    }
}

// One case: q, k, v, dy random; the kernels against the reference; every output element written; a second run
// bitwise equal. The random values depend on the case's sizes and seed only, not on the layout.
template <typename T>
static Outputs<T> check(const char* dtype, Layout layout, int B, int NH, int NKV, int Tn, int fw, int fm, int bw, int group,
                  uint32_t seed) {
    const int HS = FA2_HS, C = NH * HS, KW = NKV * HS, W = C + 2 * KW, NQ = NH / NKV;
    const double scale = 1.0 / std::sqrt((double)HS);
    // Where q, k, v live in the input buffer, y / dy in theirs, dq, dk, dv in the gradient buffer.
    View vq, vk, vv, vy, vdq, vdk, vdv;
    size_t n_in, n_y, n_grad;
    if (layout == Layout::Fused) {
        const Fa2Strides s{(int64_t)Tn * W, HS, W};
        vq = {0, s}, vk = {(size_t)C, s}, vv = {(size_t)(C + KW), s};
        vdq = vq, vdk = vk, vdv = vv;
        vy = {0, {(int64_t)Tn * C, HS, C}};
        n_in = n_grad = (size_t)B * Tn * W;
        n_y = (size_t)B * Tn * C;
    } else {
        const size_t nq = (size_t)B * Tn * C, nk = (size_t)B * NKV * Tn * (HS + 8), nv = (size_t)B * Tn * KW;
        vq = {0, {(int64_t)Tn * C, HS, C}};
        vk = {nq, {(int64_t)NKV * Tn * (HS + 8), (int64_t)Tn * (HS + 8), HS + 8}};
        vv = dense(nq + nk, NKV, Tn);
        n_in = nq + nk + nv;
        vy = dense(0, NH, Tn);
        n_y = (size_t)B * NH * Tn * HS;
        vdq = dense(0, NH, Tn), vdk = dense(n_y, NKV, Tn), vdv = dense(n_y + nv, NKV, Tn);
        n_grad = n_y + 2 * nv;
    }
    const Fa2Layout L{vq.s, vk.s, vv.s, vy.s, vdq.s, vdk.s, vdv.s};

    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const uint16_t nan16 = 0x7fff;
    std::vector<T> in(n_in, T{nan16}), dy(n_y, T{nan16});  // padding stays NaN: a read of it poisons the results
    auto fill = [&](std::vector<T>& buf, const View& v, int heads, double amp) {
        for (int b = 0; b < B; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < HS; d++) buf[v.at(b, h, t, d)] = to16<T>(u(rng) * amp);
    };
    fill(in, vq, NH, 2.0);  // scores of O(10): a peaked softmax
    fill(in, vk, NKV, 2.0);
    fill(in, vv, NKV, 2.0);
    fill(dy, vy, NH, 1.0);
    // Part 0 (q of query head h), 1 (k) or 2 (v) of query head h's key/value head, as the reference reads it.
    auto at = [&](int part, int b, int h, int t, int d) {
        const View& v = part == 0 ? vq : part == 1 ? vk : vv;
        return from16(in[v.at(b, part == 0 ? h : h / NQ, t, d)]);
    };
    auto gy = [&](int b, int h, int t, int d) { return from16(dy[vy.at(b, h, t, d)]); };

    const Kernels<T> k = kernels<T>(fw, fm, bw);
    const int nbh = B * NH;
    const float fscale = (float)scale;
    const T* base = in.data();
    std::vector<float> dvec;  // D of the last run, for the Hopper dK/dV kernel
    auto run = [&](std::vector<T>& y, std::vector<float>& lse, std::vector<T>& grad) {
        y.assign(n_y, T{nan16});
        lse.assign((size_t)nbh * Tn, NAN);
        grad.assign(n_grad, T{nan16});
        dvec.assign((size_t)nbh * Tn, NAN);
        const T *q = base + vq.off, *kk = base + vk.off, *v = base + vv.off;
        T *dq = grad.data() + vdq.off, *dk = grad.data() + vdk.off, *dv = grad.data() + vdv.off;
        const unsigned nq = (Tn + k.fwd_rows - 1) / k.fwd_rows, nb = (Tn + k.bwd_rows - 1) / k.bwd_rows;
        emu_launch(k.fwd, dim3{nq * nbh, 1, 1}, dim3{(unsigned)k.fwd_threads, 1, 1}, q, kk, v, y.data(), lse.data(), L,
                   NH, NKV, Tn, fscale, group);
        emu_launch(k.dq, dim3{nb * nbh, 1, 1}, dim3{(unsigned)k.bwd_threads, 1, 1}, q, kk, v, (const T*)y.data(),
                   (const T*)dy.data(), (const float*)lse.data(), dvec.data(), dq, L, NH, NKV, Tn, fscale, group);
        emu_launch(k.dkdv, dim3{nb * (unsigned)(B * NKV), 1, 1}, dim3{(unsigned)k.bwd_threads, 1, 1}, q, kk, v,
                   (const T*)dy.data(), (const float*)lse.data(), (const float*)dvec.data(), dk, dv, L, NH, NKV, Tn,
                   fscale, group);
    };
    std::vector<T> y, grad, y2, grad2;
    std::vector<float> lse, lse2;
    run(y, lse, grad);

    // Reference (double), backward from the kernel's own y (rounded), as the CPU twin and FlashAttention-2 do. Each
    // output is compared where the kernels wrote it; the gradient buffer's padding (none here) would stay NaN.
    std::vector<double> ry(n_y, NAN), rl(lse.size()), rd(n_grad, NAN);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++)
                for (int d = 0; d < HS; d++) rd[vdq.at(b, h, t, d)] = 0.0;
        for (int h = 0; h < NKV; h++)
            for (int t = 0; t < Tn; t++)
                for (int d = 0; d < HS; d++) rd[vdk.at(b, h, t, d)] = rd[vdv.at(b, h, t, d)] = 0.0;
    }
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
                    ry[vy.at(b, h, i, d)] = acc;
                }
            }
            for (int i = 0; i < Tn; i++) {
                double D = 0;
                for (int d = 0; d < HS; d++) D += gy(b, h, i, d) * from16(y[vy.at(b, h, i, d)]);
                for (int j = 0; j <= i; j++) {
                    const double p = P[(size_t)i * Tn + j];
                    double dp = 0;
                    for (int d = 0; d < HS; d++) dp += gy(b, h, i, d) * at(2, b, h, j, d);
                    const double ds = p * (dp - D) * scale;
                    for (int d = 0; d < HS; d++) {
                        rd[vdq.at(b, h, i, d)] += ds * at(1, b, h, j, d);
                        rd[vdk.at(b, h / NQ, j, d)] += ds * at(0, b, h, i, d);  // summed over the group's query heads
                        rd[vdv.at(b, h / NQ, j, d)] += p * gy(b, h, i, d);
                    }
                }
            }
        }
    double ymax = 0, gmax = 0;
    for (double v : ry) ymax = std::max(ymax, std::fabs(v));
    for (double v : rd) gmax = std::max(gmax, std::fabs(v));
    const std::string tag = std::string("flash ") + dtype + (layout == Layout::Heads ? " heads" : "") +
                            " B=" + std::to_string(B) + " NH=" + std::to_string(NH) +
                            (NKV != NH ? " KV=" + std::to_string(NKV) : std::string()) + " T=" + std::to_string(Tn) +
                            " fwd w" + std::to_string(fw) + "m" + std::to_string(fm) + " bwd w" + std::to_string(bw) +
                            " group " + std::to_string(group);
    // bf16 tolerance as tests/kernels_attention.rs: 1% of the largest entry + 1/64 relative (P and dS are rounded to
    // the input type before their products; D = dy . y cancels against dP).
    expect(tag + " y", y, ry, 0.01 * ymax, 1.0 / 64);
    expect(tag + " lse", lse, rl, 1e-4, 1e-5);
    expect(tag + (layout == Layout::Fused ? " dqkv" : " dq dk dv"), grad, rd, 0.01 * gmax, 1.0 / 64);

    if constexpr (std::is_same_v<T, __nv_bfloat16>) check_sm90(tag, grad, rd, gmax, [&](std::vector<T>& g, const Sm90Variant& sv) {
        // dq, dk and dv back to NaN, then the wgmma kernels (dQ with D, dK/dV) over the same inputs and lse.
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < HS; d++) g[vdq.at(b, h, t, d)] = T{nan16};
            for (int h = 0; h < NKV; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < HS; d++) g[vdk.at(b, h, t, d)] = g[vdv.at(b, h, t, d)] = T{nan16};
        }
        std::vector<float> dv2((size_t)nbh * Tn, NAN);
        const std::string n = sv.name;
        auto dq_kern = n == "wg2" ? flash_dq_sm90_wg2 : n == "wg1p" ? flash_dq_sm90_wg1p : n == "ws2" ? flash_dq_sm90_ws2
                     : n == "ws4" ? flash_dq_sm90_ws4 : flash_dq_sm90_wg1;
        auto dkdv_kern = n == "wg2" ? flash_dkdv_sm90_wg2 : n == "wg1p" ? flash_dkdv_sm90_wg1p
                       : n == "ws2" ? flash_dkdv_sm90_ws2 : n == "ws4" ? flash_dkdv_sm90_ws4 : flash_dkdv_sm90_wg1;
        const unsigned nbq = (Tn + sv.dq_rows - 1) / sv.dq_rows, nbk = (Tn + sv.dkdv_rows - 1) / sv.dkdv_rows;
        const T *q = base + vq.off, *kk = base + vk.off, *v = base + vv.off;
        emu_launch_smem(dq_kern, dim3{nbq * (unsigned)nbh, 1, 1}, dim3{(unsigned)sv.dq_threads, 1, 1}, sv.dq_smem, q,
                        kk, v, (const T*)y.data(), (const T*)dy.data(), (const float*)lse.data(), dv2.data(),
                        g.data() + vdq.off, L, NH, NKV, Tn, fscale, group);
        emu_launch_smem(dkdv_kern, dim3{nbk * (unsigned)(B * NKV), 1, 1}, dim3{(unsigned)sv.dkdv_threads, 1, 1},
                        sv.dkdv_smem, q, kk, v, (const T*)dy.data(), (const float*)lse.data(), (const float*)dv2.data(),
                        g.data() + vdk.off, g.data() + vdv.off, L, NH, NKV, Tn, fscale, group);
    });

    run(y2, lse2, grad2);
    const bool same = std::memcmp(y.data(), y2.data(), y.size() * sizeof(T)) == 0 &&
                      std::memcmp(lse.data(), lse2.data(), lse.size() * 4) == 0 &&
                      std::memcmp(grad.data(), grad2.data(), grad.size() * sizeof(T)) == 0;
    std::printf("%-5s %-58s second run bitwise equal\n", same ? "ok" : "FAIL", tag.c_str());
    if (!same) failures++;

    Outputs<T> out;
    out.lse = lse;
    auto gather = [&](std::vector<T>& to, const std::vector<T>& from, const View& v, int heads) {
        for (int b = 0; b < B; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < Tn; t++)
                    for (int d = 0; d < HS; d++) to.push_back(from[v.at(b, h, t, d)]);
    };
    gather(out.y, y, vy, NH);
    gather(out.grads, grad, vdq, NH);
    gather(out.grads, grad, vdk, NKV);
    gather(out.grads, grad, vdv, NKV);
    return out;
}

// The same case through both layouts: the kernels differ only in addressing, so every output must be the same bytes
// (what lets the candle op over head views and the engine's fused buffer share them).
template <typename T>
static void check_layouts_agree(const char* dtype, int B, int NH, int NKV, int Tn, uint32_t seed) {
    const Outputs<T> f = check<T>(dtype, Layout::Fused, B, NH, NKV, Tn, 4, 2, 4, 2, seed);
    const Outputs<T> h = check<T>(dtype, Layout::Heads, B, NH, NKV, Tn, 4, 2, 4, 2, seed);
    const bool same = f.y.size() == h.y.size() && f.grads.size() == h.grads.size() &&
                      std::memcmp(f.y.data(), h.y.data(), f.y.size() * sizeof(T)) == 0 &&
                      std::memcmp(f.lse.data(), h.lse.data(), f.lse.size() * 4) == 0 &&
                      std::memcmp(f.grads.data(), h.grads.data(), f.grads.size() * sizeof(T)) == 0;
    std::printf("%-5s flash %s B=%d NH=%d KV=%d T=%d: fused and head-view layouts give the same bytes\n",
                same ? "ok" : "FAIL", dtype, B, NH, NKV, Tn);
    if (!same) failures++;
}

int main(int argc, char** argv) {
    const bool full = argc > 1 && std::string(argv[1]) == "full";
    // T below, at and past the tiles, partial head groups, then every other launch variant once.
    check<__nv_bfloat16>("bf16", Layout::Fused, 1, 2, 2, 1, 4, 1, 4, 1, 1);
    check<__nv_bfloat16>("bf16", Layout::Fused, 2, 3, 3, 7, 4, 1, 4, 4, 2);
    check<__nv_bfloat16>("bf16", Layout::Fused, 1, 2, 2, 100, 4, 1, 4, 3, 3);
    check<__half>("f16", Layout::Fused, 1, 1, 1, 130, 4, 1, 4, 1, 4);
    check<__nv_bfloat16>("bf16", Layout::Fused, 1, 2, 2, 150, 4, 2, 8, 2, 5);
    check<__nv_bfloat16>("bf16", Layout::Fused, 1, 1, 1, 200, 8, 1, 8, 1, 6);
    // Grouped-query attention: 4 query heads on 2 and on 1 key/value heads, T past one tile, two batches.
    check<__nv_bfloat16>("bf16", Layout::Fused, 2, 4, 2, 70, 4, 2, 4, 3, 9);
    check<__nv_bfloat16>("bf16", Layout::Fused, 1, 4, 1, 90, 4, 1, 4, 1, 10);
    // The candle op's head views (a transposed q, padded k rows, dense v), multi-head and grouped, each against the
    // reference and byte for byte against the fused layout on the same values.
    check_layouts_agree<__nv_bfloat16>("bf16", 2, 3, 3, 70, 12);
    check_layouts_agree<__half>("f16", 1, 4, 2, 33, 13);
    if (full) {
        check<__nv_bfloat16>("bf16", Layout::Fused, 1, 1, 1, 256, 4, 1, 4, 1, 7);
        check<__half>("f16", Layout::Fused, 2, 1, 1, 97, 8, 1, 4, 2, 8);
        check<__nv_bfloat16>("bf16", Layout::Fused, 1, 6, 2, 200, 8, 1, 8, 2, 11);
    }
    if (failures) {
        std::printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all flash-attention kernel checks passed\n");
    return 0;
}
