// Runs the decoder engine's CUDA kernels (src/cuda/*.cu) on the CPU under dev/cuda/cuda_emu.h and
// compares them with plain double-precision references on awkward sizes (rows not a multiple of the block's, widths
// not a multiple of 128, repeated token ids, accumulation into non-zero gradients). One line per check; exit 1 on any
// mismatch. Build and run: dev/cuda/run.sh engine (also run by `cargo test`, tests/kernels_lab.rs).
#include "cuda_emu.h"

// Smaller launches than on the GPU (each emulated thread is a std::thread); the kernels read these constants.
#define NORM_BLOCKS 8
#define NORM_THREADS 64
#define CLS_THREADS 64

#include "../../src/cuda/activation.cu"
#include "../../src/cuda/adamw.cu"
#include "../../src/cuda/bias_grad.cu"
#include "../../src/cuda/classifier.cu"
#include "../../src/cuda/encoder.cu"
#include "../../src/cuda/norm.cu"
#include "../../src/cuda/rope.cu"
#include "../../src/cuda/swiglu.cu"
#include "classifier_e560d49.cuh"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>

static int failures = 0;
static std::mt19937 rng(1234);

static double bf(double x) { return __bfloat162float(__float2bfloat16((float)x)); }
static std::vector<double> randn(size_t n, double scale, double shift = 0) {
    std::normal_distribution<double> d(0, 1);
    std::vector<double> v(n);
    for (auto& x : v) x = shift + scale * d(rng);
    return v;
}
static std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }
static std::vector<__nv_bfloat16> to_bf16(const std::vector<double>& v) {
    std::vector<__nv_bfloat16> o(v.size());
    for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16((float)v[i]);
    return o;
}
static double val(double x) { return x; }
static double val(float x) { return x; }
static double val(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static T from_double(double x) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16((float)x);
    else return (T)x;
}

// |got - want| <= abs + rel * |want| everywhere.
template <typename G>
static void expect(const std::string& what, const std::vector<G>& got, const std::vector<double>& want, double abs,
                   double rel) {
    double worst = 0;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < want.size(); i++) {
        const double err = std::fabs(val(got[i]) - want[i]);
        if (!(err <= abs + rel * std::fabs(want[i]))) {
            if (!bad) first = i;
            bad++;
        }
        if (err > worst || std::isnan(err)) worst = err;
    }
    std::printf("%-5s %-52s max |diff| %.3e over %zu", bad ? "FAIL" : "ok", what.c_str(), worst, want.size());
    if (bad) std::printf(" (%zu bad, first at %zu: got %g want %g)", bad, first, val(got[first]), want[first]);
    std::printf("\n");
    if (bad) failures++;
}

static unsigned blocks(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }

// ---- LayerNorm ---------------------------------------------------------------------------------------------------
// `rows`: the backward's rows per block (norm.rs's bwd_rows picks LN_BWD_ROWS or fewer to fill the GPU).
template <int NCH> static void check_layernorm(int n, int c, int rows = LN_BWD_ROWS) {
    const std::string tag = "n=" + std::to_string(n) + " c=" + std::to_string(c) + " rows/block=" + std::to_string(rows);
    const auto x = randn((size_t)n * c, 1.5, 3.0);  // a large row mean: the centred variance must not cancel
    const auto w = randn(c, 0.3, 1.0), b = randn(c, 0.2);
    const float eps = 1e-5f;
    std::vector<double> mean(n), rstd(n), xhat((size_t)n * c), y((size_t)n * c);
    for (int r = 0; r < n; r++) {
        double m = 0, v = 0;
        for (int i = 0; i < c; i++) m += x[(size_t)r * c + i];
        m /= c;
        for (int i = 0; i < c; i++) v += (x[(size_t)r * c + i] - m) * (x[(size_t)r * c + i] - m);
        mean[r] = m;
        rstd[r] = 1 / std::sqrt(v / c + eps);
        for (int i = 0; i < c; i++) {
            xhat[(size_t)r * c + i] = (x[(size_t)r * c + i] - m) * rstd[r];
            y[(size_t)r * c + i] = xhat[(size_t)r * c + i] * w[i] + b[i];
        }
    }
    auto xf = to_f32(x), wf = to_f32(w), bfv = to_f32(b);
    std::vector<__nv_bfloat16> yk((size_t)n * c);
    std::vector<float> mk(n), rk(n);
    emu_launch(norm_fwd<NCH, false, false, float, __nv_bfloat16>, {blocks(n, LN_WARPS)}, {LN_THREADS}, (const float*)xf.data(),
               (const __nv_bfloat16*)nullptr, (float*)nullptr, (const float*)wf.data(), (const float*)bfv.data(),
               yk.data(), mk.data(), rk.data(), n, c, eps);
    expect("ln_fwd y (bf16) " + tag, yk, y, 1e-2, 8e-3);
    expect("ln_fwd mean " + tag, mk, mean, 1e-5, 1e-5);
    expect("ln_fwd rstd " + tag, rk, rstd, 0, 1e-4);

    // Fused with the residual add: x = res + delta (delta bf16), where res + delta equals the x above.
    {
        const auto delta = randn((size_t)n * c, 0.5);
        std::vector<double> res(x.size());
        auto dk = to_bf16(delta);
        for (size_t i = 0; i < x.size(); i++) res[i] = (double)xf[i] - (double)__bfloat162float(dk[i]);
        auto resf = to_f32(res);
        std::vector<float> res_out(x.size(), NAN), m2(n), r2(n);
        std::vector<__nv_bfloat16> y2((size_t)n * c);
        emu_launch(norm_fwd<NCH, true, false, float, __nv_bfloat16>, {blocks(n, LN_WARPS)}, {LN_THREADS}, (const float*)resf.data(),
                   (const __nv_bfloat16*)dk.data(), res_out.data(), (const float*)wf.data(), (const float*)bfv.data(),
                   y2.data(), m2.data(), r2.data(), n, c, eps);
        std::vector<double> sum(x.size());
        for (size_t i = 0; i < x.size(); i++) sum[i] = (double)(float)(resf[i] + __bfloat162float(dk[i]));
        expect("ln_fwd_residual res_out = res + delta " + tag, res_out, sum, 0, 0);
        expect("ln_fwd_residual y (bf16) " + tag, y2, y, 1e-2, 8e-3);
    }

    // Backward into non-zero residual and parameter gradients.
    const auto dy = randn((size_t)n * c, 1.0);
    std::vector<double> dyr(dy.size());
    for (size_t i = 0; i < dy.size(); i++) dyr[i] = bf(dy[i]);
    const auto dres0 = randn((size_t)n * c, 0.5), dw0 = randn(c, 0.1), db0 = randn(c, 0.1);
    std::vector<double> dres = dres0, dw = dw0, db = db0;
    for (int r = 0; r < n; r++) {
        double sg = 0, sgx = 0;
        for (int i = 0; i < c; i++) {
            const double g = dyr[(size_t)r * c + i] * w[i];
            sg += g;
            sgx += g * xhat[(size_t)r * c + i];
        }
        sg /= c;
        sgx /= c;
        for (int i = 0; i < c; i++) {
            const double g = dyr[(size_t)r * c + i] * w[i], xh = xhat[(size_t)r * c + i];
            dres[(size_t)r * c + i] += rstd[r] * (g - sg - xh * sgx);
            dw[i] += dyr[(size_t)r * c + i] * xh;
            db[i] += dyr[(size_t)r * c + i];
        }
    }
    auto dyk = to_bf16(dy);
    auto dresk = to_f32(dres0), dwk = to_f32(dw0), dbk = to_f32(db0);
    std::vector<__nv_bfloat16> dres16((size_t)n * c);
    const unsigned nb = blocks(n, rows);
    std::vector<float> partial((size_t)2 * nb * c, NAN);
    emu_launch(norm_bwd<NCH, false, float, __nv_bfloat16, true>, {nb}, {LN_THREADS}, dyk.data(), xf.data(), wf.data(), mk.data(), rk.data(),
               dresk.data(), dres16.data(), partial.data(), n, c, rows);
    emu_launch(ln_bwd_reduce_engine, {blocks(c, 32)}, {32, 8}, (const float*)partial.data(), dwk.data(), dbk.data(),
               (int)nb, c);
    expect("ln_bwd dres += (f32) " + tag, dresk, dres, 1e-4, 1e-4);
    std::vector<double> dres_rounded(dresk.size());
    for (size_t i = 0; i < dresk.size(); i++) dres_rounded[i] = bf(dresk[i]);
    expect("ln_bwd dres16 = bf16(dres) " + tag, dres16, dres_rounded, 0, 0);
    expect("ln_bwd dw += " + tag, dwk, dw, 1e-3, 1e-4);
    expect("ln_bwd db += " + tag, dbk, db, 1e-3, 1e-4);
}

// The extern "C" RMSNorm entry points of one chunk count (the lab calls them as the launcher does).
struct RmsKernels {
    void (*fwd)(const float*, const float*, __nv_bfloat16*, float*, int, int, float);
    void (*fwd_res)(const float*, const __nv_bfloat16*, float*, const float*, __nv_bfloat16*, float*, int, int, float);
    void (*bwd)(const __nv_bfloat16*, const float*, const float*, const float*, float*, __nv_bfloat16*, float*, int, int,
                int);
};
#define RMS_KERNELS(NCH) RmsKernels{rms_fwd_engine_##NCH, rms_fwd_residual_engine_##NCH, rms_bwd_engine_##NCH}

// ---- RMSNorm (norm.cu with RMS): forward, fused residual forward, backward into non-zero gradients ---------------
static void check_rmsnorm(int n, int c, RmsKernels k, int rows = LN_BWD_ROWS) {
    const std::string tag = "n=" + std::to_string(n) + " c=" + std::to_string(c) + " rows/block=" + std::to_string(rows);
    const auto x = randn((size_t)n * c, 1.5, 0.5);
    const auto w = randn(c, 0.3, 1.0);
    const float eps = 1e-5f;
    auto xf = to_f32(x), wf = to_f32(w);
    std::vector<double> rstd(n), xhat((size_t)n * c), y((size_t)n * c);
    for (int r = 0; r < n; r++) {
        double q = 0;
        for (int i = 0; i < c; i++) q += (double)xf[(size_t)r * c + i] * xf[(size_t)r * c + i];
        rstd[r] = 1 / std::sqrt(q / c + eps);
        for (int i = 0; i < c; i++) {
            xhat[(size_t)r * c + i] = xf[(size_t)r * c + i] * rstd[r];
            y[(size_t)r * c + i] = xhat[(size_t)r * c + i] * wf[i];
        }
    }
    std::vector<__nv_bfloat16> yk((size_t)n * c);
    std::vector<float> rk(n, NAN);
    emu_launch(k.fwd, {blocks(n, LN_WARPS)}, {LN_THREADS}, (const float*)xf.data(),
               (const float*)wf.data(), yk.data(), rk.data(), n, c, eps);
    expect("rms_fwd y (bf16) " + tag, yk, y, 1e-2, 8e-3);
    expect("rms_fwd rstd " + tag, rk, rstd, 0, 1e-5);
    {
        const auto delta = randn((size_t)n * c, 0.5);
        auto dk = to_bf16(delta);
        std::vector<double> res(x.size());
        for (size_t i = 0; i < x.size(); i++) res[i] = (double)xf[i] - (double)__bfloat162float(dk[i]);
        auto resf = to_f32(res);
        std::vector<float> res_out(x.size(), NAN), r2(n, NAN);
        std::vector<__nv_bfloat16> y2((size_t)n * c);
        emu_launch(k.fwd_res, {blocks(n, LN_WARPS)}, {LN_THREADS},
                   (const float*)resf.data(), (const __nv_bfloat16*)dk.data(), res_out.data(), (const float*)wf.data(),
                   y2.data(), r2.data(), n, c, eps);
        std::vector<double> sum(x.size());
        for (size_t i = 0; i < x.size(); i++) sum[i] = (double)(float)(resf[i] + __bfloat162float(dk[i]));
        expect("rms_fwd_residual res_out = res + delta " + tag, res_out, sum, 0, 0);
        expect("rms_fwd_residual y (bf16) " + tag, y2, y, 1e-2, 8e-3);
    }
    const auto dy = randn((size_t)n * c, 1.0);
    std::vector<double> dyr(dy.size());
    for (size_t i = 0; i < dy.size(); i++) dyr[i] = bf(dy[i]);
    const auto dres0 = randn((size_t)n * c, 0.5), dw0 = randn(c, 0.1);
    std::vector<double> dres = dres0, dw = dw0;
    for (int r = 0; r < n; r++) {
        double sgx = 0;
        for (int i = 0; i < c; i++) sgx += dyr[(size_t)r * c + i] * wf[i] * xhat[(size_t)r * c + i];
        sgx /= c;
        for (int i = 0; i < c; i++) {
            const double g = dyr[(size_t)r * c + i] * wf[i], xh = xhat[(size_t)r * c + i];
            dres[(size_t)r * c + i] += rstd[r] * (g - xh * sgx);
            dw[i] += dyr[(size_t)r * c + i] * xh;
        }
    }
    auto dyk = to_bf16(dy);
    auto dresk = to_f32(dres0), dwk = to_f32(dw0);
    std::vector<__nv_bfloat16> dres16((size_t)n * c);
    const unsigned nb = blocks(n, rows);
    std::vector<float> partial((size_t)2 * nb * c, NAN);
    emu_launch(k.bwd, {nb}, {LN_THREADS}, (const __nv_bfloat16*)dyk.data(),
               (const float*)xf.data(), (const float*)wf.data(), (const float*)rk.data(), dresk.data(), dres16.data(),
               partial.data(), n, c, rows);
    emu_launch(rms_bwd_reduce_engine, {blocks(c, 32)}, {32, 8}, (const float*)partial.data(), dwk.data(), (int)nb, c);
    expect("rms_bwd dres += (f32) " + tag, dresk, dres, 1e-4, 1e-4);
    std::vector<double> dres_rounded(dresk.size());
    for (size_t i = 0; i < dresk.size(); i++) dres_rounded[i] = bf(dresk[i]);
    expect("rms_bwd dres16 = bf16(dres) " + tag, dres16, dres_rounded, 0, 0);
    expect("rms_bwd dw += " + tag, dwk, dw, 1e-3, 1e-4);
}

// ---- rotary embeddings (rope.cu) ------------------------------------------------------------------------------------
static void check_rope(int n, int t_len, int nh, int nkv, int hs) {
    const std::string tag = "n=" + std::to_string(n) + " T=" + std::to_string(t_len) + " NH=" + std::to_string(nh) +
                            " KV=" + std::to_string(nkv) + " HS=" + std::to_string(hs);
    const int ld = (nh + 2 * nkv) * hs, half = hs / 2, nrot = nh + nkv;
    const double theta = 10000.0;
    std::vector<float> cs((size_t)t_len * half), sn((size_t)t_len * half);
    for (int p = 0; p < t_len; p++)
        for (int i = 0; i < half; i++) {
            const double a = p * std::pow(theta, -2.0 * i / hs);
            cs[(size_t)p * half + i] = (float)std::cos(a);
            sn[(size_t)p * half + i] = (float)std::sin(a);
        }
    auto x = randn((size_t)n * ld, 1.0);
    for (auto& e : x) e = bf(e);
    std::vector<double> fwd = x, bwd = x;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < nrot; h++)
            for (int i = 0; i < half; i++) {
                const size_t a = (size_t)r * ld + (size_t)h * hs + i, b = a + half;
                const double c = cs[(size_t)(r % t_len) * half + i], s = sn[(size_t)(r % t_len) * half + i];
                fwd[a] = x[a] * c - x[b] * s;
                fwd[b] = x[b] * c + x[a] * s;
                bwd[a] = x[a] * c + x[b] * s;
                bwd[b] = x[b] * c - x[a] * s;
            }
    auto k1 = to_bf16(x), k2 = to_bf16(x);
    const unsigned grid = blocks((size_t)n * nrot * hs / 16, 256);
    emu_launch(rope_fwd, {grid}, {256}, k1.data(), (const float*)cs.data(), (const float*)sn.data(), n, t_len, nrot, hs,
               ld);
    emu_launch(rope_bwd, {grid}, {256}, k2.data(), (const float*)cs.data(), (const float*)sn.data(), n, t_len, nrot, hs,
               ld);
    expect("rope_fwd (v untouched) " + tag, k1, fwd, 1e-6, 8e-3);
    expect("rope_bwd = transposed rotation " + tag, k2, bwd, 1e-6, 8e-3);
}

// ---- SwiGLU (swiglu.cu) ---------------------------------------------------------------------------------------------
static void check_swiglu(int n, int h) {
    const std::string tag = "n=" + std::to_string(n) + " h=" + std::to_string(h);
    auto gu = randn((size_t)n * 2 * h, 2.0);
    for (auto& e : gu) e = bf(e);
    auto dy = randn((size_t)n * h, 1.0);
    for (auto& e : dy) e = bf(e);
    std::vector<double> y((size_t)n * h), dgu((size_t)n * 2 * h);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < h; j++) {
            const double g = gu[(size_t)r * 2 * h + j], u = gu[(size_t)r * 2 * h + h + j], d = dy[(size_t)r * h + j];
            const double s = 1 / (1 + std::exp(-g));
            y[(size_t)r * h + j] = g * s * u;
            dgu[(size_t)r * 2 * h + j] = d * u * s * (1 + g * (1 - s));
            dgu[(size_t)r * 2 * h + h + j] = d * g * s;
        }
    auto guk = to_bf16(gu), dyk = to_bf16(dy);
    std::vector<__nv_bfloat16> yk((size_t)n * h), dguk((size_t)n * 2 * h);
    const unsigned grid = blocks((size_t)n * h / 8, 256);
    emu_launch(swiglu_fwd, {grid}, {256}, (const __nv_bfloat16*)guk.data(), yk.data(), n, h);
    emu_launch(swiglu_bwd, {grid}, {256}, (const __nv_bfloat16*)guk.data(), (const __nv_bfloat16*)dyk.data(),
               dguk.data(), n, h);
    expect("swiglu_fwd y = silu(g) u " + tag, yk, y, 1e-6, 8e-3);
    expect("swiglu_bwd [dg | du] " + tag, dguk, dgu, 1e-6, 8e-3);
}

// ---- classifier --------------------------------------------------------------------------------------------------
static void check_classifier(int n, int v, float dscale) {
    const std::string tag = "n=" + std::to_string(n) + " v=" + std::to_string(v) + " dscale=" + std::to_string(dscale);
    auto logits = randn((size_t)n * v, 2.0);
    for (auto& x : logits) x = bf(x);
    std::vector<uint32_t> targets(n);
    for (int r = 0; r < n; r++) targets[r] = (uint32_t)((r * 7919 + 3) % v);
    targets[0] = (uint32_t)(v - 1);  // the last column: the vector loop's tail
    std::vector<double> loss(n), grad((size_t)n * v);
    for (int r = 0; r < n; r++) {
        double m = -INFINITY, s = 0;
        for (int i = 0; i < v; i++) m = std::max(m, logits[(size_t)r * v + i]);
        for (int i = 0; i < v; i++) s += std::exp(logits[(size_t)r * v + i] - m);
        loss[r] = std::log(s) + m - logits[(size_t)r * v + targets[r]];
        for (int i = 0; i < v; i++) {
            const double p = std::exp(logits[(size_t)r * v + i] - m) / s;
            grad[(size_t)r * v + i] = dscale == 0 ? logits[(size_t)r * v + i] : (p - (i == (int)targets[r])) * dscale;
        }
    }
    auto lk = to_bf16(logits);
    std::vector<float> lossk(n, NAN);
    emu_launch(classifier_fwd_bwd, {(unsigned)n}, {CLS_THREADS}, lk.data(), (const uint32_t*)targets.data(),
               lossk.data(), v, dscale);
    expect("classifier loss " + tag, lossk, loss, 1e-5, 1e-5);
    expect("classifier dlogits (bf16, in place) " + tag, lk, grad, 1e-6, 8e-3);

    // The same launch through main e560d49's kernel: the same bytes (what keeps the engine's losses bitwise).
    auto lk_old = to_bf16(logits);
    std::vector<float> loss_old(n, NAN);
    emu_launch(e560d49::classifier_fwd_bwd, {(unsigned)n}, {CLS_THREADS}, lk_old.data(), (const uint32_t*)targets.data(),
               loss_old.data(), v, dscale);
    const bool same = std::memcmp(lossk.data(), loss_old.data(), n * sizeof(float)) == 0 &&
                      std::memcmp(lk.data(), lk_old.data(), lk.size() * sizeof(lk[0])) == 0;
    std::printf("%-5s classifier %s: the same bytes as main e560d49's kernel\n", same ? "ok" : "FAIL", tag.c_str());
    if (!same) failures++;

    float acc[1] = {0.25f};
    emu_launch(loss_reduce, {1}, {1024}, (const float*)lossk.data(), acc, n, 0.5f);
    double want = 0;
    for (float l : lossk) want += l;
    expect("loss_reduce acc += scale * sum " + tag, std::vector<float>{acc[0]}, {0.25 + 0.5 * want}, 1e-6, 1e-6);
}

// ---- encoder -----------------------------------------------------------------------------------------------------
static void check_encoder() {
    const int B = 3, T = 5, C = 12, V = 11, N = B * T;
    const auto wte = randn((size_t)V * C, 0.1), wpe = randn((size_t)T * C, 0.1), dx = randn((size_t)N * C, 1.0);
    std::vector<uint32_t> idx(N);
    for (int r = 0; r < N; r++) idx[r] = (uint32_t)((r * r * 3 + 1) % 7);  // repeats, and ids 7..10 unused
    std::vector<double> x((size_t)N * C);
    for (int r = 0; r < N; r++)
        for (int i = 0; i < C; i++) x[(size_t)r * C + i] = (double)(float)wte[idx[r] * C + i] + (double)(float)wpe[(r % T) * C + i];
    auto wtef = to_f32(wte), wpef = to_f32(wpe);
    std::vector<float> xk((size_t)N * C);
    emu_launch(encoder_fwd, {blocks((size_t)N * C / 4, 256)}, {256}, (const uint32_t*)idx.data(),
               (const float*)wtef.data(), (const float*)wpef.data(), xk.data(), N, T, C);
    expect("encoder_fwd x = wte[idx] + wpe", xk, x, 1e-6, 1e-6);
    {
        std::vector<double> xt((size_t)N * C);
        for (int r = 0; r < N; r++)
            for (int i = 0; i < C; i++) xt[(size_t)r * C + i] = (double)(float)wte[idx[r] * C + i];
        std::vector<float> xtk((size_t)N * C, NAN);
        emu_launch(encoder_fwd_tokens, {blocks((size_t)N * C / 4, 256)}, {256}, (const uint32_t*)idx.data(),
                   (const float*)wtef.data(), xtk.data(), N, C);
        expect("encoder_fwd_tokens x = wte[idx]", xtk, xt, 0, 0);
    }

    // Host grouping as encoder.rs does: a stable counting sort.
    std::vector<uint32_t> rows, start{0}, gid;
    for (uint32_t id = 0; id < (uint32_t)V; id++) {
        bool any = false;
        for (int r = 0; r < N; r++)
            if (idx[r] == id) {
                rows.push_back(r);
                any = true;
            }
        if (any) {
            gid.push_back(id);
            start.push_back((uint32_t)rows.size());
        }
    }
    const auto dwte0 = randn((size_t)V * C, 0.1), dwpe0 = randn((size_t)T * C, 0.1);
    std::vector<double> dwte = dwte0, dwpe = dwpe0;
    auto dxf = to_f32(dx);
    for (int r = 0; r < N; r++)
        for (int i = 0; i < C; i++) {
            dwte[idx[r] * C + i] += dxf[(size_t)r * C + i];
            dwpe[(r % T) * C + i] += dxf[(size_t)r * C + i];
        }
    auto dwtek = to_f32(dwte0), dwpek = to_f32(dwpe0);
    emu_launch(encoder_bwd_wte, {(unsigned)gid.size(), blocks(C, 256)}, {256}, (const uint32_t*)rows.data(),
               (const uint32_t*)start.data(), (const uint32_t*)gid.data(), (const float*)dxf.data(), dwtek.data(), C);
    emu_launch(encoder_bwd_wpe, {blocks((size_t)T * C, 256)}, {256}, (const float*)dxf.data(), dwpek.data(), B, T, C);
    expect("encoder_bwd dwte += grouped sum", dwtek, dwte, 1e-5, 1e-5);
    expect("encoder_bwd dwpe += sum over batch", dwpek, dwpe, 1e-5, 1e-5);
}

// ---- optimizer ---------------------------------------------------------------------------------------------------
static void check_adamw(float max_norm) {
    const std::string tag = "max_norm=" + std::to_string(max_norm);
    const int64_t n = 1003, n_decay = 600;
    const auto p0 = randn(n, 0.5), g = randn(n, 0.2), m0 = randn(n, 0.01), v0 = randn(n, 0.0);
    std::vector<double> v0a(n);
    for (int64_t i = 0; i < n; i++) v0a[i] = std::fabs(v0[i]) * 1e-3 + std::fabs(m0[i]) * 1e-2;
    auto gf = to_f32(g);
    double sq = 0;
    for (float x : gf) sq += (double)x * x;
    const double norm = std::sqrt(sq);
    const double coef = (max_norm > 0 && max_norm / (norm + 1e-6) < 1) ? max_norm / (norm + 1e-6) : 1.0;
    std::vector<float> partial(NORM_BLOCKS, NAN), out(2, NAN);
    emu_launch(grad_norm_partial, {NORM_BLOCKS}, {NORM_THREADS}, (const float*)gf.data(), partial.data(), n);
    emu_launch(grad_norm_finalize, {1}, {NORM_BLOCKS}, (const float*)partial.data(), out.data(), max_norm);
    expect("grad_norm " + tag, std::vector<float>{out[0]}, {norm}, 0, 1e-6);
    expect("clip coefficient " + tag, std::vector<float>{out[1]}, {coef}, 0, 1e-6);

    const double lr = 6e-4, wd = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8;
    const int t = 3;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    std::vector<double> p(n), m(n), v(n), p16(n);
    auto pf = to_f32(p0), mf = to_f32(m0), vf = to_f32(v0a);
    for (int64_t i = 0; i < n; i++) {
        const double gi = (double)gf[i] * (double)out[1];
        double w = pf[i];
        if (i < n_decay) w *= 1 - lr * wd;
        m[i] = b1 * mf[i] + (1 - b1) * gi;
        v[i] = b2 * vf[i] + (1 - b2) * gi * gi;
        w -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
        p[i] = w;
        p16[i] = bf(w);
    }
    std::vector<__nv_bfloat16> p16k(n);
    emu_launch(adamw_step, {blocks(n, 256)}, {256}, pf.data(), (const float*)gf.data(), mf.data(), vf.data(),
               p16k.data(), (const float*)&out[1], n, n_decay, (float)(1 - lr * wd), (float)b1, (float)b2,
               (float)(lr / bc1), (float)std::sqrt(bc2), (float)eps);
    expect("adamw p " + tag, pf, p, 1e-7, 1e-5);
    expect("adamw m " + tag, mf, m, 5e-8, 1e-5);  // abs: (1 - b1) rounds to f32
    expect("adamw v " + tag, vf, v, 1e-12, 1e-5);
    expect("adamw bf16 copy " + tag, p16k, p16, 0, 8e-3);

    std::vector<__nv_bfloat16> c16(n);
    emu_launch(cast_f32_bf16, {blocks(n, 256)}, {256}, (const float*)pf.data(), c16.data(), n);
    std::vector<double> cw(n);
    for (int64_t i = 0; i < n; i++) cw[i] = bf(pf[i]);
    expect("cast_f32_bf16", c16, cw, 0, 0);
}

// ---- bias gradient and GELU ----------------------------------------------------------------------------------------
static void check_bias_grad(int n, int oc, int chunks) {
    const std::string tag = "n=" + std::to_string(n) + " oc=" + std::to_string(oc) + " chunks=" + std::to_string(chunks);
    const auto dy = randn((size_t)n * oc, 1.0), db0 = randn(oc, 0.1);
    std::vector<double> db = db0;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < oc; j++) db[j] += bf(dy[(size_t)r * oc + j]);
    auto dyk = to_bf16(dy);
    auto dbk = to_f32(db0);
    std::vector<float> partial((size_t)chunks * oc, NAN);
    emu_launch(bias_grad_partial, {blocks(oc, BG_COLS), (unsigned)chunks}, {BG_THREADS},
               (const __nv_bfloat16*)dyk.data(), partial.data(), n, oc);
    emu_launch(bias_grad_reduce, {blocks(oc, 256)}, {256}, (const float*)partial.data(), dbk.data(), chunks, oc);
    expect("bias_grad db += column sums " + tag, dbk, db, 1e-4, 1e-5);
    // The kernel's order, in f32 on the host: per chunk, warp w sums rows w, w + 8, ... one after another, the warps
    // are added in warp order, the chunks in chunk order. However the kernel batches its loads, the sums are exactly
    // these (the engine's runs repeat bit for bit, and a faster kernel keeps its predecessor's bytes).
    const int per = (n + chunks - 1) / chunks;
    std::vector<float> exact = to_f32(db0);
    for (int j = 0; j < oc; j++) {
        float total = 0.f;
        for (int k = 0; k < chunks; k++) {
            float block = 0.f;
            for (int w = 0; w < BG_WARPS; w++) {
                float a = 0.f;
                for (int r = k * per + w; r < std::min(k * per + per, n); r += BG_WARPS)
                    a += __bfloat162float(dyk[(size_t)r * oc + j]);
                block += a;
            }
            total += block;
        }
        exact[j] += total;
    }
    std::vector<double> want(exact.begin(), exact.end());
    expect("bias_grad in the kernel's order, bit for bit " + tag, dbk, want, 0, 0);
}

static void check_gelu() {
    const int64_t n = 200;
    auto x = randn(n, 2.0);
    for (auto& e : x) e = bf(e);
    const auto dy = randn(n, 1.0);
    const double k = std::sqrt(2 / M_PI), c = 0.044715;
    std::vector<double> y(n), dx(n);
    for (int64_t i = 0; i < n; i++) {
        const double v = x[i], th = std::tanh(k * (v + c * v * v * v));
        y[i] = 0.5 * v * (1 + th);
        dx[i] = bf(dy[i]) * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * k * (1 + 3 * c * v * v));
    }
    auto xk = to_bf16(x), dyk = to_bf16(dy);
    std::vector<__nv_bfloat16> yk(n), dxk(n);
    emu_launch(gelu_fwd_bf16, {blocks(n / 8, 256)}, {256}, (const __nv_bfloat16*)xk.data(), yk.data(), n);
    emu_launch(gelu_bwd_bf16, {blocks(n / 8, 256)}, {256}, (const __nv_bfloat16*)xk.data(),
               (const __nv_bfloat16*)dyk.data(), dyk.data(), n);  // in place: dx over dy
    expect("gelu_fwd_bf16", yk, y, 1e-6, 8e-3);
    expect("gelu_bwd_bf16 (in place)", dyk, dx, 1e-6, 8e-3);
}

// The same kernels as the candle op runs them (model::kernels::gelu): any dtype it takes, n not a multiple of the
// vector, buffers `offset` elements past a 16-byte boundary (the element-by-element path), and a grid of `grid`
// blocks: activation.rs's (one thread per vector) or fewer, which the grid-stride loop must walk several times.
// 1 + tanh(u) cancels for very negative x, so y and dx near 0 carry an absolute error of a few ulp of 1: `abs`; dx's
// carries it times the derivative's factor |x| k (1 + 3c x^2) / 2 (about 4 at x = -4 with |dy| ~ 1), so dx gets 4 abs.
template <typename T>
static void check_gelu_op(const char* dtype, int64_t n, size_t offset, unsigned grid, double abs, double rel) {
    const std::string tag = std::string(dtype) + " n=" + std::to_string(n) + " offset " + std::to_string(offset) +
                            " grid " + std::to_string(grid);
    std::vector<T> xb(n + offset), dyb(n + offset), yb(n + offset), dxb(n + offset);
    T *xk = xb.data() + offset, *dyk = dyb.data() + offset, *yk = yb.data() + offset, *dxk = dxb.data() + offset;
    const auto x0 = randn(n, 2.0), dy0 = randn(n, 1.0);
    const double k = std::sqrt(2 / M_PI), c = 0.044715;
    std::vector<double> y(n), dx(n);
    for (int64_t i = 0; i < n; i++) {
        xk[i] = from_double<T>(x0[i]);
        dyk[i] = from_double<T>(dy0[i]);
        const double v = val(xk[i]), th = std::tanh(k * (v + c * v * v * v));
        y[i] = 0.5 * v * (1 + th);
        dx[i] = val(dyk[i]) * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * k * (1 + 3 * c * v * v));
    }
    void (*fwd)(const T*, T*, int64_t);
    void (*bwd)(const T*, const T*, T*, int64_t);
    if constexpr (std::is_same_v<T, double>) {
        fwd = gelu_fwd_f64;
        bwd = gelu_bwd_f64;
    } else if constexpr (std::is_same_v<T, float>) {
        fwd = gelu_fwd_f32;
        bwd = gelu_bwd_f32;
    } else {
        fwd = gelu_fwd_bf16;
        bwd = gelu_bwd_bf16;
    }
    emu_launch(fwd, {grid}, {GELU_THREADS}, (const T*)xk, yk, n);
    emu_launch(bwd, {grid}, {GELU_THREADS}, (const T*)xk, (const T*)dyk, dxk, n);
    expect("gelu fwd " + tag, std::vector<T>(yk, yk + n), y, abs, rel);
    expect("gelu bwd " + tag, std::vector<T>(dxk, dxk + n), dx, 4 * abs, rel);
}

int main() {
    check_layernorm<1>(37, 64);
    check_layernorm<2>(300, 200);
    check_layernorm<6>(21, 768);
    check_layernorm<2>(300, 200, 24);  // fewer rows per block (bwd_rows on a small batch): 13 blocks, the last partial
    check_layernorm<13>(50, 1600, 8);  // GPT-2 1558M's width at bwd_rows' smallest block
    check_rmsnorm(37, 64, RMS_KERNELS(1));
    check_rmsnorm(300, 200, RMS_KERNELS(2));
    check_rmsnorm(21, 768, RMS_KERNELS(6));
    check_rmsnorm(300, 200, RMS_KERNELS(2), 32);
    check_rmsnorm(70, 2048, RMS_KERNELS(16), 16);  // Llama-1B's width
    check_rope(12, 5, 4, 2, 32);
    check_rope(9, 9, 2, 2, 64);
    check_swiglu(7, 24);
    check_swiglu(3, 200);
    check_classifier(5, 72, 0.37f);
    check_classifier(3, 1000, 1.0f / 3000);
    check_classifier(2, 96, 0.f);
    // 4M gradients: a 1-ulp f32 change in the gradient pass flips a bf16 rounding about once in 2^16 values, so
    // only a batch this size shows it (x * inv -> x / sum went unseen at 262,144 values and was caught here).
    check_classifier(1024, 4096, 1.0f / 3000);
    check_classifier(2, 4200, 0.5f);  // past the register kernel's reach at the lab's 64 threads: the two-pass path
    check_encoder();
    check_adamw(1.0f);
    check_adamw(0.f);
    check_adamw(1e3f);
    check_bias_grad(77, 264, 5);
    check_bias_grad(300, 8, 3);
    check_bias_grad(1000, 264, 3);  // 334 rows a chunk: the four-row loads and the leftover rows
    check_gelu();
    check_gelu_op<float>("f32", 2003, 1, 1, 1e-6, 1e-6);
    check_gelu_op<float>("f32", 2003, 1, 2, 1e-6, 1e-6);  // activation.rs's grid: ceil(ceil(2003 / 4) / 256)
    check_gelu_op<float>("f32", 4096, 0, 2, 1e-6, 1e-6);
    check_gelu_op<double>("f64", 37, 1, 1, 1e-15, 1e-13);
    check_gelu_op<__nv_bfloat16>("bf16", 77, 0, 1, 1e-5, 8e-3);
    if (failures) {
        std::printf("%d engine kernel check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all engine kernel checks passed\n");
    return 0;
}
