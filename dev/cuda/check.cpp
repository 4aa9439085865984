// Runs the candle ops' CUDA kernels (src/cuda: classifier.cu's softmax cross-entropy, attention_ref.cu's FMA reference
// attention, the embedding backward in encoder.cu, LayerNorm's op kernels in norm.cu; the op's tensor-core attention
// is flash_attn.cu, check_flash.cpp) under cuda_emu.h and compares them with plain double-precision
// references, in f32, bf16, f16 and f64, on awkward sizes (T not a multiple of the tiles, unaligned rows, the strided
// q/k/v views GPT-2 passes, ignored targets), and the ops' instantiations of the engine's templates byte for byte
// against the engine's. Prints one line per check; exits 1 on any mismatch.
// Build and run: dev/cuda/run.sh ops
#include "cuda_emu.h"

// Smaller blocks than on the GPU (each emulated thread is a std::thread); the kernels read this constant.
#define CLS_THREADS 128

#include "../../src/cuda/attention_ref.cu"
#include "../../src/cuda/classifier.cu"
#include "../../src/cuda/encoder.cu"
#include "../../src/cuda/norm.cu"

#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <string>

static int failures = 0;

template <typename T> T cast_to(double x);
template <> float cast_to<float>(double x) { return (float)x; }
template <> __nv_bfloat16 cast_to<__nv_bfloat16>(double x) { return __float2bfloat16((float)x); }
template <> __half cast_to<__half>(double x) { return __float2half((float)x); }
template <> double cast_to<double>(double x) { return x; }
static double back(double x) { return x; }
static double back(float x) { return x; }
static double back(__nv_bfloat16 x) { return __bfloat162float(x); }
static double back(__half x) { return __half2float(x); }

// |got - want| <= abs + rel * |want| everywhere.
template <typename G> void expect(const std::string& what, const std::vector<G>& got, const std::vector<double>& want, double abs, double rel) {
    double worst = 0, scale = 0;
    size_t bad = 0, first = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (size_t i = 0; i < want.size(); i++) {
        const double g = back(got[i]), err = std::fabs(g - want[i]);
        if (!(err <= abs + rel * std::fabs(want[i]))) {
            if (!bad) first = i;
            bad++;
        }
        if (err > worst || std::isnan(err)) worst = err;
    }
    std::printf("%-5s %-46s max |diff| %.3e (max |ref| %.2e) over %zu%s\n", bad ? "FAIL" : "ok", what.c_str(), worst,
                scale, want.size(),
                bad ? (" (" + std::to_string(bad) + " bad, first at " + std::to_string(first) + ": got " +
                       std::to_string(back(got[first])) + " want " + std::to_string(want[first]) + ")").c_str()
                    : "");
    if (bad) failures++;
}

// As `expect`, where a NaN reference asks for a NaN (a target outside the vocabulary) and no other value may be NaN.
template <typename G>
void expect_nan_at(const std::string& what, const std::vector<G>& got, const std::vector<double>& want, double abs,
                   double rel) {
    std::vector<G> g;
    std::vector<double> w;
    size_t nan_bad = 0;
    for (size_t i = 0; i < want.size(); i++) {
        if (std::isnan(want[i]) || std::isnan(back(got[i]))) {
            nan_bad += std::isnan(want[i]) != std::isnan(back(got[i]));
            continue;
        }
        g.push_back(got[i]);
        w.push_back(want[i]);
    }
    if (nan_bad) {
        std::printf("FAIL  %-46s %zu values NaN on one side only\n", what.c_str(), nan_bad);
        failures++;
        return;
    }
    expect(what, g, w, abs, rel);
}

// ---- attention (attention_ref.cu, the FMA reference kernels) -----------------------------------------------------
// q, k, v are views into one qkv buffer laid out (B, T, 3, NH, HS), as GPT-2's c_attn output split into heads.
struct Attn {
    int b, nh, t;
    static constexpr int hs = 64;
    std::vector<double> qkv;   // (B, T, 3, NH, HS), values rounded to the tested dtype
    std::vector<double> dout;  // (B, NH, T, HS)
    int64_t sb() const { return (int64_t)t * 3 * nh * hs; }
    int64_t st() const { return 3 * nh * hs; }
    int64_t sh() const { return hs; }
    int64_t off(int which) const { return (int64_t)which * nh * hs; }
    double at(int which, int bb, int hh, int tt, int d) const { return qkv[off(which) + bb * sb() + hh * sh() + tt * st() + d]; }
};

struct AttnRef {
    std::vector<double> o, lse, dq, dk, dv;
};

static AttnRef attn_reference(const Attn& a) {
    const int B = a.b, NH = a.nh, T = a.t, HS = Attn::hs;
    const double scale = 1.0 / std::sqrt((double)HS);
    AttnRef r;
    const size_t n = (size_t)B * NH * T * HS;
    r.o.assign(n, 0);
    r.lse.assign((size_t)B * NH * T, 0);
    r.dq.assign(n, 0);
    r.dk.assign(n, 0);
    r.dv.assign(n, 0);
    for (int bb = 0; bb < B; bb++)
        for (int hh = 0; hh < NH; hh++) {
            const size_t base = ((size_t)bb * NH + hh) * T;
            std::vector<double> P((size_t)T * T, 0);
            for (int i = 0; i < T; i++) {
                double m = -INFINITY;
                std::vector<double> s(i + 1);
                for (int j = 0; j <= i; j++) {
                    double dot = 0;
                    for (int d = 0; d < HS; d++) dot += a.at(0, bb, hh, i, d) * a.at(1, bb, hh, j, d);
                    s[j] = dot * scale;
                    m = std::max(m, s[j]);
                }
                double l = 0;
                for (int j = 0; j <= i; j++) l += std::exp(s[j] - m);
                r.lse[base + i] = m + std::log(l);
                for (int j = 0; j <= i; j++) P[(size_t)i * T + j] = std::exp(s[j] - m) / l;
                for (int d = 0; d < HS; d++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += P[(size_t)i * T + j] * a.at(2, bb, hh, j, d);
                    r.o[(base + i) * HS + d] = acc;
                }
            }
            for (int i = 0; i < T; i++) {
                // D_i = dO_i . O_i ; dP_ij = dO_i . V_j ; dS = P (dP - D)
                double D = 0;
                for (int d = 0; d < HS; d++) D += a.dout[(base + i) * HS + d] * r.o[(base + i) * HS + d];
                for (int j = 0; j <= i; j++) {
                    const double p = P[(size_t)i * T + j];
                    double dp = 0;
                    for (int d = 0; d < HS; d++) dp += a.dout[(base + i) * HS + d] * a.at(2, bb, hh, j, d);
                    const double ds = p * (dp - D);
                    for (int d = 0; d < HS; d++) {
                        r.dv[(base + j) * HS + d] += p * a.dout[(base + i) * HS + d];
                        r.dq[(base + i) * HS + d] += scale * ds * a.at(1, bb, hh, j, d);
                        r.dk[(base + j) * HS + d] += scale * ds * a.at(0, bb, hh, i, d);
                    }
                }
            }
        }
    return r;
}

// misalign: q, k, v start one element past a 16-byte boundary (the FMA kernels read element by element).
template <typename T>
static void check_attention(const char* dtype, int B, int NH, int Tn, double tol_abs, double tol_rel, uint32_t seed,
                            bool misalign = false) {
    Attn a{B, NH, Tn, {}, {}};
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const int HS = Attn::hs;
    const size_t shift = misalign ? 1 : 0;
    std::vector<T> qkv_buf((size_t)B * Tn * 3 * NH * HS + shift), dout((size_t)B * NH * Tn * HS);
    std::span<T> qkv(qkv_buf.data() + shift, qkv_buf.size() - shift);
    a.qkv.resize(qkv.size());
    a.dout.resize(dout.size());
    for (size_t i = 0; i < qkv.size(); i++) {
        qkv[i] = cast_to<T>(u(rng) * 2.0);  // scores of O(10): a peaked softmax
        a.qkv[i] = back(qkv[i]);
    }
    for (size_t i = 0; i < dout.size(); i++) {
        dout[i] = cast_to<T>(u(rng));
        a.dout[i] = back(dout[i]);
    }
    const AttnRef ref = attn_reference(a);
    std::vector<T> o(dout.size()), dq(dout.size()), dk(dout.size()), dv(dout.size());
    std::vector<float> lse((size_t)B * NH * Tn), dvec((size_t)B * NH * Tn);
    const float scale = 1.f / std::sqrt((float)HS);
    const T* q = qkv.data() + a.off(0);
    const T* k = qkv.data() + a.off(1);
    const T* v = qkv.data() + a.off(2);
    const int64_t sb = a.sb(), sh = a.sh(), st = a.st();
    const unsigned nqt = (Tn + FA_BR - 1) / FA_BR, nkt = (Tn + FA_BKV - 1) / FA_BKV;
    const int64_t rows = (int64_t)B * NH * Tn;
    void (*fwd)(const T*, const T*, const T*, T*, float*, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                int64_t, int64_t, int64_t, float);
    void (*dot)(const T*, const T*, float*, int64_t);
    void (*dkdv)(const T*, const T*, const T*, const T*, const float*, const float*, T*, T*, int, int, int64_t, int64_t,
                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float);
    void (*dqk)(const T*, const T*, const T*, const T*, const float*, const float*, T*, int, int, int64_t, int64_t,
                int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float);
    if constexpr (std::is_same_v<T, float>) {
        fwd = attn_ref_fwd_f32;
        dot = attn_ref_bwd_dot_f32;
        dkdv = attn_ref_bwd_dkdv_f32;
        dqk = attn_ref_bwd_dq_f32;
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        fwd = attn_ref_fwd_bf16;
        dot = attn_ref_bwd_dot_bf16;
        dkdv = attn_ref_bwd_dkdv_bf16;
        dqk = attn_ref_bwd_dq_bf16;
    } else {
        fwd = attn_ref_fwd_f16;
        dot = attn_ref_bwd_dot_f16;
        dkdv = attn_ref_bwd_dkdv_f16;
        dqk = attn_ref_bwd_dq_f16;
    }
    emu_launch(fwd, dim3{nqt, (unsigned)(B * NH), 1}, dim3{FA_THREADS, 1, 1}, q, k, v, o.data(), lse.data(), NH, Tn, sb, sh,
               st, sb, sh, st, sb, sh, st, scale);
    emu_launch(dot, dim3{(unsigned)((rows + 127) / 128), 1, 1}, dim3{128, 1, 1}, (const T*)o.data(), (const T*)dout.data(),
               dvec.data(), rows);
    emu_launch(dkdv, dim3{nkt, (unsigned)(B * NH), 1}, dim3{FA_THREADS, 1, 1}, q, k, v, (const T*)dout.data(),
               (const float*)lse.data(), (const float*)dvec.data(), dk.data(), dv.data(), NH, Tn, sb, sh, st, sb, sh, st, sb,
               sh, st, scale);
    emu_launch(dqk, dim3{nqt, (unsigned)(B * NH), 1}, dim3{FA_THREADS, 1, 1}, q, k, v, (const T*)dout.data(),
               (const float*)lse.data(), (const float*)dvec.data(), dq.data(), NH, Tn, sb, sh, st, sb, sh, st, sb, sh, st,
               scale);
    const std::string tag = std::string("attention ") + dtype +
                            (misalign ? " unaligned" : "") + " B=" + std::to_string(B) + " NH=" + std::to_string(NH) +
                            " T=" + std::to_string(Tn);
    expect(tag + " O", o, ref.o, tol_abs, tol_rel);
    expect(tag + " L", lse, ref.lse, 1e-5, 1e-5);
    expect(tag + " dQ", dq, ref.dq, tol_abs, tol_rel);
    expect(tag + " dK", dk, ref.dk, tol_abs, tol_rel);
    expect(tag + " dV", dv, ref.dv, tol_abs, tol_rel);
}

// ---- cross-entropy (classifier.cu, the candle op's kernels) -----------------------------------------------------
// masked: every third logit is -inf (a masked vocabulary entry), the first of each row among them, so a thread's
// running max starts at -inf and must stay NaN-free; targets avoid the masked columns. Every fifth row's target is
// ignored; the last row's, with `bad_target`, is V (outside the vocabulary: NaN loss and gradient).
template <typename T> struct CeOp;
#define CE_OP(T, SFX)                                                                                              \
    template <> struct CeOp<T> {                                                                                   \
        static constexpr auto fwd = classifier_fwd_##SFX;                                                          \
        static constexpr auto bwd = classifier_bwd_##SFX;                                                          \
    };
CE_OP(float, f32)
CE_OP(__nv_bfloat16, bf16)
CE_OP(double, f64)

template <typename T>
static void check_ce(const char* dtype, int N, int V, int64_t row_stride, double tol_abs, double tol_rel, uint32_t seed,
                     bool masked = false, bool bad_target = false) {
    using A = typename AccOf<T>::type;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-6.0, 6.0);
    std::vector<T> x((size_t)N * row_stride + 8);
    std::vector<double> xd(x.size());
    const int off = row_stride == V ? 0 : 1;  // a column offset makes rows unaligned
    for (size_t i = 0; i < x.size(); i++) {
        const bool hidden = masked && i >= (size_t)off && ((i - off) % row_stride) % 3 == 0;
        x[i] = cast_to<T>(hidden ? -INFINITY : u(rng));
        xd[i] = back(x[i]);
    }
    std::vector<uint32_t> tg(N);
    std::vector<A> dloss(N);
    for (int n = 0; n < N; n++) {
        tg[n] = (n % 5 == 3) ? TM_IGNORE_INDEX : rng() % V;
        if (masked && tg[n] != TM_IGNORE_INDEX && tg[n] % 3 == 0) tg[n] = (tg[n] + 1) % V;
        dloss[n] = (A)(u(rng) / 6.0);
    }
    if (bad_target) tg[N - 1] = (uint32_t)V;
    std::vector<double> want_loss(N, 0), want_grad((size_t)N * V, 0);
    for (int n = 0; n < N; n++) {
        const double* r = xd.data() + off + n * row_stride;
        double m = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) m = std::max(m, r[i]);
        for (int i = 0; i < V; i++) s += std::exp(r[i] - m);
        const double lse = m + std::log(s);
        if (tg[n] == TM_IGNORE_INDEX) continue;
        if (tg[n] >= (uint32_t)V) {
            want_loss[n] = NAN;
            for (int i = 0; i < V; i++) want_grad[(size_t)n * V + i] = NAN;
            continue;
        }
        want_loss[n] = lse - r[tg[n]];
        for (int i = 0; i < V; i++) want_grad[(size_t)n * V + i] = (std::exp(r[i] - lse) - (i == (int)tg[n])) * dloss[n];
    }
    std::vector<A> loss(N);
    std::vector<T> grad((size_t)N * V);
    emu_launch(CeOp<T>::fwd, dim3{(unsigned)N, 1, 1}, dim3{CLS_THREADS, 1, 1}, (const T*)x.data() + off,
               (const uint32_t*)tg.data(), loss.data(), (int64_t)V, row_stride, (int64_t)1);
    emu_launch(CeOp<T>::bwd, dim3{(unsigned)N, 1, 1}, dim3{CLS_THREADS, 1, 1}, (const T*)x.data() + off,
               (const uint32_t*)tg.data(), (const A*)dloss.data(), grad.data(), (int64_t)V, row_stride, (int64_t)1,
               (int64_t)1);
    const std::string tag = std::string(masked ? "cross-entropy (masked) " : "cross-entropy ") + dtype +
                            " N=" + std::to_string(N) + " V=" + std::to_string(V) + " row stride " +
                            std::to_string(row_stride) + (bad_target ? " target V" : "");
    expect_nan_at(tag + " loss", loss, want_loss, 1e-5, 1e-5);
    expect_nan_at(tag + " dlogits", grad, want_grad, tol_abs, tol_rel);
}

// The op's bf16 kernels and the engine's are one template: on the same logits and targets, the op's forward gives
// the engine's losses and its backward with dloss = dscale broadcast (stride 0) the engine's in-place gradient, byte
// for byte.
static void check_classifier_op_is_engine(int N, int V, float dscale) {
    std::mt19937 rng(50 + V);
    std::normal_distribution<float> nd(0.f, 2.f);
    std::vector<__nv_bfloat16> logits((size_t)N * V);
    for (auto& v : logits) v = __float2bfloat16(nd(rng));
    std::vector<uint32_t> tg(N);
    for (int n = 0; n < N; n++) tg[n] = rng() % V;
    std::vector<float> op_loss(N, NAN), eng_loss(N, NAN);
    std::vector<__nv_bfloat16> op_grad((size_t)N * V), eng_grad = logits;
    const dim3 grid{(unsigned)N, 1, 1}, block{CLS_THREADS, 1, 1};
    emu_launch(classifier_fwd_bf16, grid, block, (const __nv_bfloat16*)logits.data(), (const uint32_t*)tg.data(),
               op_loss.data(), (int64_t)V, (int64_t)V, (int64_t)1);
    emu_launch(classifier_bwd_bf16, grid, block, (const __nv_bfloat16*)logits.data(), (const uint32_t*)tg.data(),
               (const float*)&dscale, op_grad.data(), (int64_t)V, (int64_t)V, (int64_t)1, (int64_t)0);
    emu_launch(classifier_fwd_bwd, grid, block, eng_grad.data(), (const uint32_t*)tg.data(), eng_loss.data(), V, dscale);
    auto same = [](const auto& a, const auto& b) { return std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0; };
    const bool ok = same(op_loss, eng_loss) && same(op_grad, eng_grad);
    std::printf("%-5s classifier op bf16 N=%d V=%d dscale=%g: the same bytes as the engine's kernel\n", ok ? "ok" : "FAIL",
                N, V, dscale);
    if (!ok) failures++;
}

// ---- LayerNorm, the candle op's kernels (norm.cu) ----------------------------------------------------------------
// Input T, output O, f32 weights; the backward's dx in T, dw/db (f32) overwritten. Rows of a large mean (the centred
// variance must not cancel), C not a multiple of 32 or 128, more rows than one backward block holds.
template <typename T, typename O> struct LnOp {
    void (*fwd)(const T*, const float*, const float*, O*, float*, float*, int, int, float);
    void (*bwd)(const O*, const T*, const float*, const float*, const float*, T*, float*, int, int, int);
};
// The kernels of chunk count NCH = ceil(C / 128), as cuda::norm::LayerNormOp picks them.
template <typename T, typename O> static LnOp<T, O> ln_op(int nch);
#define LN_ROW(SFX, N) {ln_fwd_##SFX##_##N, ln_bwd_##SFX##_##N}
#define LN_PICK(T, O, SFX)                                                                                        \
    template <> LnOp<T, O> ln_op<T, O>(int nch) {                                                                 \
        static const LnOp<T, O> all[16] = {LN_ROW(SFX, 1),  LN_ROW(SFX, 2),  LN_ROW(SFX, 3),  LN_ROW(SFX, 4),      \
                                           LN_ROW(SFX, 5),  LN_ROW(SFX, 6),  LN_ROW(SFX, 7),  LN_ROW(SFX, 8),      \
                                           LN_ROW(SFX, 9),  LN_ROW(SFX, 10), LN_ROW(SFX, 11), LN_ROW(SFX, 12),     \
                                           LN_ROW(SFX, 13), LN_ROW(SFX, 14), LN_ROW(SFX, 15), LN_ROW(SFX, 16)};    \
        emu_check(nch >= 1 && nch <= 16, "C up to LN_MAX_C");                                                     \
        return all[nch - 1];                                                                                      \
    }
LN_PICK(float, float, f32_f32)
LN_PICK(float, __nv_bfloat16, f32_bf16)
LN_PICK(__nv_bfloat16, float, bf16_f32)
LN_PICK(__nv_bfloat16, __nv_bfloat16, bf16_bf16)

template <typename T, typename O>
static void check_layer_norm(const char* types, int N, int C, double tol_abs, double tol_rel, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<T> x((size_t)N * C);
    std::vector<O> dy((size_t)N * C);
    std::vector<double> xd(x.size()), dyd(dy.size());
    for (size_t i = 0; i < x.size(); i++) {
        x[i] = cast_to<T>(3.0 + 1.5 * nd(rng));
        xd[i] = back(x[i]);
        dy[i] = cast_to<O>(nd(rng));
        dyd[i] = back(dy[i]);
    }
    std::vector<float> w(C), b(C);
    for (int i = 0; i < C; i++) {
        w[i] = (float)(1.0 + 0.3 * nd(rng));
        b[i] = (float)(0.2 * nd(rng));
    }
    const float eps = 1e-5f;
    std::vector<double> mean(N), rstd(N), y(x.size()), dx(x.size()), dw(C, 0), db(C, 0);
    for (int r = 0; r < N; r++) {
        const double* xr = xd.data() + (size_t)r * C;
        const double* gr = dyd.data() + (size_t)r * C;
        double m = 0, v = 0, sg = 0, sgx = 0;
        for (int i = 0; i < C; i++) m += xr[i];
        m /= C;
        for (int i = 0; i < C; i++) v += (xr[i] - m) * (xr[i] - m);
        const double rs = 1 / std::sqrt(v / C + eps);
        mean[r] = m;
        rstd[r] = rs;
        for (int i = 0; i < C; i++) {
            const double xh = (xr[i] - m) * rs, g = gr[i] * w[i];
            y[(size_t)r * C + i] = xh * w[i] + b[i];
            sg += g;
            sgx += g * xh;
            dw[i] += gr[i] * xh;
            db[i] += gr[i];
        }
        sg /= C;
        sgx /= C;
        for (int i = 0; i < C; i++) dx[(size_t)r * C + i] = rs * (gr[i] * w[i] - sg - (xr[i] - m) * rs * sgx);
    }
    std::vector<O> yk(x.size());
    std::vector<T> dxk(x.size());
    std::vector<float> mk(N), rk(N), dwk(C, NAN), dbk(C, NAN);
    const LnOp<T, O> k = ln_op<T, O>((C + 127) / 128);
    const unsigned p = (unsigned)((N + LN_BWD_ROWS - 1) / LN_BWD_ROWS);
    std::vector<float> partial((size_t)2 * p * C, NAN);
    emu_launch(k.fwd, dim3{(unsigned)((N + LN_WARPS - 1) / LN_WARPS), 1, 1}, dim3{LN_THREADS, 1, 1}, (const T*)x.data(),
               (const float*)w.data(), (const float*)b.data(), yk.data(), mk.data(), rk.data(), N, C, eps);
    emu_launch(k.bwd, dim3{p, 1, 1}, dim3{LN_THREADS, 1, 1}, (const O*)dy.data(), (const T*)x.data(),
               (const float*)w.data(), (const float*)mk.data(), (const float*)rk.data(), dxk.data(), partial.data(), N, C,
               LN_BWD_ROWS);
    emu_launch(ln_bwd_reduce, dim3{(unsigned)((C + 31) / 32), 1, 1}, dim3{32, 8, 1}, (const float*)partial.data(),
               dwk.data(), dbk.data(), (int)p, C);
    const std::string tag = std::string("layer_norm ") + types + " N=" + std::to_string(N) + " C=" + std::to_string(C);
    expect(tag + " y", yk, y, tol_abs, tol_rel);
    expect(tag + " mean", mk, mean, 1e-5, 1e-5);
    expect(tag + " rstd", rk, rstd, 0, 1e-4);
    expect(tag + " dx", dxk, dx, tol_abs, tol_rel);
    expect(tag + " dw", dwk, dw, 1e-3, 1e-4);
    expect(tag + " db", dbk, db, 1e-3, 1e-4);
}

// The op's f32 -> bf16 LayerNorm and the engine's are one template: on the same inputs (the engine's residual
// gradient and weight gradients starting at zero) they must give the same bytes: y, mean, rstd, dx, dw, db.
template <int NCH, typename OpFwd, typename OpBwd, typename EngFwd, typename EngBwd>
static void check_norm_op_is_engine(int N, int C, OpFwd op_fwd, OpBwd op_bwd, EngFwd eng_fwd, EngBwd eng_bwd) {
    emu_check((C + 127) / 128 == NCH, "the kernels' chunk count");
    std::mt19937 rng(40 + C);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> x((size_t)N * C), w(C), b(C);
    std::vector<__nv_bfloat16> dy((size_t)N * C);
    for (auto& v : x) v = 3.f + 1.5f * nd(rng);
    for (auto& v : w) v = 1.f + 0.3f * nd(rng);
    for (auto& v : b) v = 0.2f * nd(rng);
    for (auto& v : dy) v = __float2bfloat16(nd(rng));
    const unsigned fg = (unsigned)((N + LN_WARPS - 1) / LN_WARPS), p = (unsigned)((N + LN_BWD_ROWS - 1) / LN_BWD_ROWS);
    const dim3 rg{(unsigned)((C + 31) / 32), 1, 1}, rb{32, 8, 1};
    struct Out {
        std::vector<__nv_bfloat16> y;
        std::vector<float> mean, rstd, dx, dw, db;
    };
    auto make = [&]() {
        Out o{std::vector<__nv_bfloat16>((size_t)N * C), std::vector<float>(N), std::vector<float>(N),
              std::vector<float>((size_t)N * C, 0.f), std::vector<float>(C, 0.f), std::vector<float>(C, 0.f)};
        return o;
    };
    Out op = make(), eng = make();
    std::vector<float> partial((size_t)2 * p * C, NAN);
    emu_launch(op_fwd, dim3{fg, 1, 1}, dim3{LN_THREADS, 1, 1}, (const float*)x.data(), (const float*)w.data(),
               (const float*)b.data(), op.y.data(), op.mean.data(), op.rstd.data(), N, C, 1e-5f);
    emu_launch(op_bwd, dim3{p, 1, 1}, dim3{LN_THREADS, 1, 1}, (const __nv_bfloat16*)dy.data(), (const float*)x.data(),
               (const float*)w.data(), (const float*)op.mean.data(), (const float*)op.rstd.data(), op.dx.data(),
               partial.data(), N, C, LN_BWD_ROWS);
    emu_launch(ln_bwd_reduce, rg, rb, (const float*)partial.data(), op.dw.data(), op.db.data(), (int)p, C);
    std::vector<__nv_bfloat16> dres16((size_t)N * C);
    emu_launch(eng_fwd, dim3{fg, 1, 1}, dim3{LN_THREADS, 1, 1}, (const float*)x.data(), (const float*)w.data(),
               (const float*)b.data(), eng.y.data(), eng.mean.data(), eng.rstd.data(), N, C, 1e-5f);
    emu_launch(eng_bwd, dim3{p, 1, 1}, dim3{LN_THREADS, 1, 1}, (const __nv_bfloat16*)dy.data(), (const float*)x.data(),
               (const float*)w.data(), (const float*)eng.mean.data(), (const float*)eng.rstd.data(), eng.dx.data(),
               dres16.data(), partial.data(), N, C, LN_BWD_ROWS);
    emu_launch(ln_bwd_reduce_engine, rg, rb, (const float*)partial.data(), eng.dw.data(), eng.db.data(), (int)p, C);
    auto same = [](const auto& a, const auto& b) { return std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0; };
    const bool ok = same(op.y, eng.y) && same(op.mean, eng.mean) && same(op.rstd, eng.rstd) && same(op.dx, eng.dx) &&
                    same(op.dw, eng.dw) && same(op.db, eng.db);
    std::printf("%-5s layer_norm op f32 -> bf16 N=%d C=%d: the same bytes as the engine's kernels\n", ok ? "ok" : "FAIL", N,
                C);
    if (!ok) failures++;
}

// ---- embedding backward ----------------------------------------------------------------------------------------
// The grouped kernel must equal a serial f32 index_add (rows added in ascending order into zeros) bit for bit: that
// is what makes the CUDA backward deterministic and equal to candle's CPU op. Rows of dy are `stride` apart.
static void check_embedding(int N, int V, int C, int64_t stride, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> dy((size_t)N * stride);
    for (auto& x : dy) x = nd(rng);
    std::vector<uint32_t> ids(N);
    for (int r = 0; r < N; r++) ids[r] = (r % 4 == 0) ? 5 % V : rng() % V;  // one id on a quarter of the rows
    std::vector<float> want((size_t)V * C, 0.f);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < C; j++) want[(size_t)ids[r] * C + j] += dy[(size_t)r * stride + j];
    // The host grouping of embedding.rs (IdGroups): a stable counting sort.
    std::vector<uint32_t> count(V, 0), start{0}, gid, rows(N);
    for (uint32_t id : ids) count[id]++;
    uint32_t next = 0;
    for (int i = 0; i < V; i++)
        if (count[i]) {
            gid.push_back(i);
            const uint32_t n = count[i];
            count[i] = next;
            next += n;
            start.push_back(next);
        }
    for (int r = 0; r < N; r++) rows[count[ids[r]]++] = r;
    std::vector<float> got((size_t)V * C, 0.f);
    emu_launch(embedding_bwd_sorted_f32, dim3{(unsigned)gid.size(), (unsigned)((C + EMB_THREADS - 1) / EMB_THREADS), 1},
               dim3{EMB_THREADS, 1, 1}, (const uint32_t*)rows.data(), (const uint32_t*)start.data(),
               (const uint32_t*)gid.data(), (const float*)dy.data(), got.data(), (int64_t)C, stride);
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); i++) bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
    std::printf("%-5s embedding backward N=%d V=%d C=%d stride %lld: %zu of %zu values differ from serial f32 index_add\n",
                bad ? "FAIL" : "ok", N, V, C, (long long)stride, bad, got.size());
    if (bad) failures++;
}

int main() {
    check_embedding(1, 3, 5, 5, 21);
    check_embedding(1000, 37, 300, 300, 22);
    check_embedding(777, 1000, 64, 70, 23);
    // f32 throughout: sums over C and over the rows in f32; bf16 on either side: one rounding to 2^-9 of the row's scale.
    check_layer_norm<float, float>("f32 -> f32", 300, 100, 1e-5, 1e-4, 31);
    check_layer_norm<float, __nv_bfloat16>("f32 -> bf16", 130, 768, 2e-2, 1.0 / 128, 32);
    check_layer_norm<__nv_bfloat16, __nv_bfloat16>("bf16 -> bf16", 9, 36, 2e-2, 1.0 / 128, 33);
    check_layer_norm<__nv_bfloat16, float>("bf16 -> f32", 70, 260, 2e-2, 1.0 / 128, 34);
    check_norm_op_is_engine<6>(300, 768, ln_fwd_f32_bf16_6, ln_bwd_f32_bf16_6, ln_fwd_engine_6, ln_bwd_engine_6);
    check_norm_op_is_engine<1>(40, 100, ln_fwd_f32_bf16_1, ln_bwd_f32_bf16_1, ln_fwd_engine_1, ln_bwd_engine_1);
    // f32: statistics in the log2 domain (x * log2 e rounded, exp2f): ~1e-6 relative on each probability.
    check_ce<float>("f32", 7, 1024, 1024, 1e-7, 1e-5, 1);
    check_ce<float>("f32", 6, 1003, 1003, 1e-7, 1e-5, 2, false, true);
    check_ce<float>("f32", 6, 999, 1010, 1e-7, 1e-5, 3);
    check_ce<__nv_bfloat16>("bf16", 7, 2048, 2048, 1e-6, 1.0 / 128, 4);
    check_ce<__nv_bfloat16>("bf16", 5, 1001, 1001, 1e-6, 1.0 / 128, 5);
    check_ce<float>("f32", 5, 1001, 1001, 1e-7, 1e-5, 6, true);
    check_ce<float>("f32", 4, 999, 1010, 1e-7, 1e-5, 7, true);
    check_ce<double>("f64", 6, 1003, 1003, 1e-13, 1e-12, 8);
    check_ce<double>("f64", 4, 999, 1010, 1e-13, 1e-12, 9, true, true);
    check_classifier_op_is_engine(5, 72, 0.37f);
    check_classifier_op_is_engine(3, 1000, 1.0f / 3000);
    check_classifier_op_is_engine(2, 4200, 0.5f);
    check_classifier_op_is_engine(256, 4096, 1.0f / 3000);
    // f32: scores ~ O(10) and sums over <= T keys: 1e-4 relative covers f32 accumulation order.
    check_attention<float>("f32", 1, 2, 1, 1e-5, 1e-4, 11);
    check_attention<float>("f32", 2, 3, 100, 1e-5, 1e-4, 12);
    check_attention<float>("f32", 1, 2, 130, 1e-5, 1e-4, 13);
    check_attention<float>("f32", 1, 1, 64, 1e-5, 1e-4, 14);
    // bf16: outputs rounded to bf16 (2^-9 relative) on top of f32 accumulation, and D = dO . O uses the bf16 O
    // (as FlashAttention-2 does), so dS = P (dP - D) carries ~2^-9 |dO| |O| of cancellation error: an absolute
    // 1% of the largest gradient entry.
    check_attention<__nv_bfloat16>("bf16", 2, 2, 97, 6e-3, 1.0 / 64, 15);
    check_attention<__nv_bfloat16>("bf16", 1, 2, 130, 6e-3, 1.0 / 64, 17, true);
    // f16 keeps 3 more bits.
    check_attention<__half>("f16", 1, 2, 33, 1e-3, 1.0 / 256, 19);
    if (failures) {
        std::printf("%d check(s) FAILED\n", failures);
        return 1;
    }
    std::printf("all kernel checks passed\n");
    return 0;
}
