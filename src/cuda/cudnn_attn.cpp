// cuDNN SDPA (scaled dot-product attention) for the fused qkv layout, through the cuDNN frontend's graph API: the C
// side of src/cuda/cudnn_attn.rs, compiled by build.rs only with the `cudnn` cargo feature.
//
// Layout (the same as src/cuda/flash_attn.cu, so the two backends are interchangeable; C = NH * HS, KW = NKV * HS,
// W = C + 2 KW):
//   qkv  (B, T, W) bf16: query head h at columns h*HS, key head j at C + j*HS, value head j at C + KW + j*HS
//   y    (B, T, C)  bf16: heads side by side
//   stats (B, NH, T) f32: per query row, the natural-log logsumexp of the scaled, masked scores
//   dy   (B, T, C)  bf16;  dqkv (B, T, W) bf16, written whole (dq, dk, dv at the same column offsets as q, k, v)
// cuDNN sees q as a (B, NH, T, HS) tensor and k, v as (B, NKV, T, HS) ones described by strides, so nothing is
// copied or permuted: strides (T*W, HS, W, 1) from base pointers qkv, qkv + C, qkv + C + KW; y and dy have strides
// (T*C, HS, C, 1). With NKV < NH (grouped-query attention) cuDNN maps query head h to key/value head h / (NH / NKV)
// and sums dK, dV over each group itself.
//
// Stats: the frontend lowers SDPA's softmax into max, exp, sum, then Stats = max + log(sum) with cuDNN's LOG
// pointwise mode, which is the natural logarithm; the scores it reduces are already multiplied by the attention
// scale and causally masked, and the backward recomputes P = exp(scale * S - Stats). That is exactly the `lse`
// flash_attn.cu writes and reads, so one lse buffer of (B, NH, T) f32 serves either backend (each backend reads
// only what its own forward wrote).
//
// Everything is on one context object: a cudnnHandle bound to a stream, the graphs built so far (one per
// (B, T, NH, HS, forward|backward), built on first use and reused), and one device workspace grown to the largest
// any cached graph needs. Calls on one context must not run concurrently (the Rust wrapper is Send, not Sync).
// Every entry point returns 0 or an error code and, on error, fills `msg` (NUL-terminated, truncated to msg_len).

#include <cuda_runtime.h>
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace fe = cudnn_frontend;

// One call's sizes (cudnn_attn.rs's ffi::Shape): batch, tokens, query heads, key/value heads, head size.
struct TmAttnShape {
    int64_t b, t, nh, nkv, hs;
};

namespace {

// Status codes (mirrored in cudnn_attn.rs).
constexpr int kOk = 0;
constexpr int kBadArgument = 1;
constexpr int kCudnnError = 2;
constexpr int kGraphError = 3;
constexpr int kCudaError = 4;
constexpr int kException = 5;

// Tensor uids of the variant packs.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Shape {
    int64_t b, t, nh, nkv, hs;
    bool backward;
    bool operator<(const Shape& o) const {
        return std::tie(b, t, nh, nkv, hs, backward) < std::tie(o.b, o.t, o.nh, o.nkv, o.hs, o.backward);
    }
    int64_t width() const { return (nh + 2 * nkv) * hs; }  // W, the qkv row
};

struct Built {
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace = 0;
    std::string plan;  // engine name of the chosen plan, and how it was chosen
};

struct Context {
    cudnnHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    bool deterministic = true;
    std::map<Shape, Built> graphs;
    void* workspace = nullptr;
    int64_t workspace_bytes = 0;
};

// A failed call: the code, and the message copied into the caller's buffer.
struct Failure {
    int code;
    std::string text;
};

void write_message(char* msg, size_t len, const std::string& text) {
    if (msg == nullptr || len == 0) return;
    size_t n = text.size() < len - 1 ? text.size() : len - 1;
    std::memcpy(msg, text.data(), n);
    msg[n] = '\0';
}

std::string shape_text(const Shape& s) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s B=%lld T=%lld NH=%lld KV=%lld HS=%lld", s.backward ? "backward" : "forward",
                  (long long)s.b, (long long)s.t, (long long)s.nh, (long long)s.nkv, (long long)s.hs);
    return buf;
}

void check_cudnn(cudnnStatus_t st, const char* what) {
    if (st != CUDNN_STATUS_SUCCESS) {
        throw Failure{kCudnnError, std::string(what) + ": " + cudnnGetErrorString(st)};
    }
}

void check_cuda(cudaError_t st, const char* what) {
    if (st != cudaSuccess) {
        throw Failure{kCudaError, std::string(what) + ": " + cudaGetErrorName(st) + " (" + cudaGetErrorString(st) + ")"};
    }
}

void check_fe(fe::error_t st, const Shape& s, const char* step) {
    if (st.is_bad()) {
        throw Failure{kGraphError, "cuDNN SDPA " + shape_text(s) + ": " + step + ": " + st.get_message()};
    }
}

// One graph with bf16 inputs/outputs and f32 intermediates and accumulation.
std::shared_ptr<fe::graph::Graph> new_graph() {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

// A (B, n, T, HS) view with the given row stride (W for the qkv / dqkv columns, C for y / dy).
fe::graph::Tensor_attributes heads(const char* name, int64_t uid, const Shape& s, int64_t n, int64_t row) {
    return fe::graph::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_dim({s.b, n, s.t, s.hs})
        .set_stride({s.t * row, s.hs, row, 1});
}

// The (B, NH, T, 1) f32 statistics, contiguous: the same bytes as flash_attn's lse (B, NH, T).
void stats_layout(const std::shared_ptr<fe::graph::Tensor_attributes>& t, const Shape& s) {
    t->set_uid(kStats)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({s.b, s.nh, s.t, 1})
        .set_stride({s.nh * s.t, s.t, 1, 1});
}

// The graph of one shape, operations defined (not yet lowered to plans).
std::shared_ptr<fe::graph::Graph> define(const Shape& s, bool deterministic) {
    const int64_t c = s.nh * s.hs;
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.hs));
    auto g = new_graph();
    const int64_t w = s.width();
    auto q = g->tensor(heads("q", kQ, s, s.nh, w));
    auto k = g->tensor(heads("k", kK, s, s.nkv, w));
    auto v = g->tensor(heads("v", kV, s, s.nkv, w));
    if (!s.backward) {
        // Causal: key j is visible to query i iff j <= i (band right bound 0 from the top-left diagonal).
        auto attrs = fe::graph::SDPA_attributes()
                         .set_name("tokenmill_sdpa_fwd")
                         .set_generate_stats(true)
                         .set_attn_scale(scale)
                         .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                         .set_diagonal_band_right_bound(0);
        auto outs = g->sdpa(q, k, v, std::move(attrs));
        auto o = outs[0];
        auto stats = outs[1];
        o->set_output(true).set_uid(kO).set_dim({s.b, s.nh, s.t, s.hs}).set_stride({s.t * c, s.hs, c, 1});
        stats->set_output(true);
        stats_layout(stats, s);
    } else {
        auto o = g->tensor(heads("o", kO, s, s.nh, c));
        auto d_o = g->tensor(heads("dO", kDO, s, s.nh, c));
        auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats"));
        stats_layout(stats, s);
        // set_deterministic_algorithm (cuDNN frontend >= 1.5): on Hopper it forces the dP-workspace kernel, which
        // computes dQ with a plain matmul over the stored dS instead of accumulating it with f32 atomics.
        auto attrs = fe::graph::SDPA_backward_attributes()
                         .set_name("tokenmill_sdpa_bwd")
                         .set_attn_scale(scale)
                         .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                         .set_diagonal_band_right_bound(0)
                         .set_deterministic_algorithm(deterministic);
        auto grads = g->sdpa_backward(q, k, v, o, d_o, stats, std::move(attrs));
        const char* names[3] = {"dQ", "dK", "dV"};
        const int64_t uids[3] = {kDQ, kDK, kDV};
        for (int i = 0; i < 3; ++i) {
            const int64_t n = i == 0 ? s.nh : s.nkv;
            grads[i]->set_output(true).set_name(names[i]).set_uid(uids[i]).set_dim({s.b, n, s.t, s.hs}).set_stride(
                {s.t * w, s.hs, w, 1});
        }
    }
    return g;
}

// Validate, lower and pick a plan. `filter`: drop the engines cuDNN marks NONDETERMINISTIC before picking.
fe::error_t lower(fe::graph::Graph& g, cudnnHandle_t handle, bool filter) {
    auto st = g.validate();
    if (st.is_bad()) return st;
    st = g.build_operation_graph(handle);
    if (st.is_bad()) return st;
    st = g.create_execution_plans({fe::HeurMode_t::A});
    if (st.is_bad()) return st;
    if (filter) g.deselect_numeric_notes({fe::NumericalNote_t::NONDETERMINISTIC});
    st = g.check_support(handle);
    if (st.is_bad()) return st;
    return g.build_plans(handle);
}

// The cached graph of `s`, built (and the workspace grown) on first use.
const Built& graph_for(Context& ctx, const Shape& s) {
    auto it = ctx.graphs.find(s);
    if (it != ctx.graphs.end()) return it->second;
    Built b;
    b.graph = define(s, ctx.deterministic);
    if (s.backward && ctx.deterministic) {
        // Deterministic request: also refuse engines flagged NONDETERMINISTIC. If none is left, take the
        // heuristics' choice with the deterministic algorithm still requested, and say so in the plan text.
        auto st = lower(*b.graph, ctx.handle, true);
        if (st.is_good()) {
            b.plan = "deterministic algorithm, NONDETERMINISTIC engines excluded";
        } else {
            b.plan = "deterministic algorithm; excluding NONDETERMINISTIC engines left none (" + st.get_message() +
                     "), heuristics' choice";
            b.graph = define(s, ctx.deterministic);
            check_fe(lower(*b.graph, ctx.handle, false), s, "building the plan");
        }
    } else {
        check_fe(lower(*b.graph, ctx.handle, false), s, "building the plan");
        b.plan = s.backward ? "default (non-deterministic) algorithm" : "heuristics' choice";
    }
    std::string name;
    if (b.graph->get_plan_name(name).is_good()) b.plan = name + ": " + b.plan;
    check_fe(b.graph->get_workspace_size(b.workspace), s, "workspace size");
    if (b.workspace > ctx.workspace_bytes) {
        // Work queued earlier may still use the old workspace: wait for the device before freeing it.
        if (ctx.workspace != nullptr) {
            check_cuda(cudaDeviceSynchronize(), "synchronising before growing the cuDNN workspace");
            check_cuda(cudaFree(ctx.workspace), "freeing the cuDNN workspace");
            ctx.workspace = nullptr;
            ctx.workspace_bytes = 0;
        }
        check_cuda(cudaMalloc(&ctx.workspace, static_cast<size_t>(b.workspace)),
                   ("allocating the cuDNN workspace (" + std::to_string(b.workspace) + " bytes) for " + shape_text(s))
                       .c_str());
        ctx.workspace_bytes = b.workspace;
    }
    return ctx.graphs.emplace(s, std::move(b)).first->second;
}

Shape checked_shape(const TmAttnShape* shape, bool backward) {
    if (shape == nullptr) throw Failure{kBadArgument, "cuDNN SDPA: null shape"};
    Shape s{shape->b, shape->t, shape->nh, shape->nkv, shape->hs, backward};
    const bool positive = s.b > 0 && s.t > 0 && s.nh > 0 && s.nkv > 0 && s.hs > 0;
    if (!positive || s.nh % s.nkv != 0 || s.hs % 8 != 0 || s.hs > 256) {
        throw Failure{kBadArgument, "cuDNN SDPA " + shape_text(s) +
                                        ": sizes must be positive, KV divide NH and HS be a multiple of 8 up to 256"};
    }
    return s;
}

// Byte offsets of k and v in a qkv row.
int64_t k_offset(const Shape& s) { return s.nh * s.hs * 2; }
int64_t v_offset(const Shape& s) { return (s.nh + s.nkv) * s.hs * 2; }

void bind_stream(Context& ctx, void* stream) {
    auto st = static_cast<cudaStream_t>(stream);
    if (st != ctx.stream) {
        check_cudnn(cudnnSetStream(ctx.handle, st), "cudnnSetStream");
        ctx.stream = st;
    }
}

void execute(Context& ctx, const Shape& s, std::unordered_map<int64_t, void*>& pack) {
    const Built& b = graph_for(ctx, s);
    check_fe(b.graph->execute(ctx.handle, pack, ctx.workspace), s, "execute");
}

// Run `body`, turning exceptions into a status code and a message.
template <typename F>
int guarded(char* msg, size_t msg_len, F&& body) {
    try {
        body();
        return kOk;
    } catch (const Failure& f) {
        write_message(msg, msg_len, f.text);
        return f.code;
    } catch (const std::exception& e) {
        write_message(msg, msg_len, std::string("cuDNN SDPA: ") + e.what());
        return kException;
    } catch (...) {
        write_message(msg, msg_len, "cuDNN SDPA: unknown C++ exception");
        return kException;
    }
}

char* bytes(const void* p) {
    return static_cast<char*>(const_cast<void*>(p));
}

}  // namespace

extern "C" {


// Runtime and compile-time cuDNN versions (major * 10000 + minor * 100 + patch for cuDNN 9).
int64_t tm_cudnn_runtime_version() {
    return static_cast<int64_t>(cudnnGetVersion());
}
int64_t tm_cudnn_compiled_version() {
    return static_cast<int64_t>(CUDNN_VERSION);
}
int64_t tm_cudnn_frontend_version() {
    return static_cast<int64_t>(CUDNN_FRONTEND_VERSION);
}

// A context on the calling thread's current CUDA context, launching on `stream` (a cudaStream_t / CUstream).
int tm_cudnn_attn_create(void* stream, int deterministic, void** out, char* msg, size_t msg_len) {
    return guarded(msg, msg_len, [&] {
        if (out == nullptr) throw Failure{kBadArgument, "cuDNN SDPA: null context out-pointer"};
        *out = nullptr;
        auto ctx = std::make_unique<Context>();
        ctx->deterministic = deterministic != 0;
        check_cudnn(cudnnCreate(&ctx->handle), "cudnnCreate");
        ctx->stream = static_cast<cudaStream_t>(stream);
        auto st = cudnnSetStream(ctx->handle, ctx->stream);
        if (st != CUDNN_STATUS_SUCCESS) {
            cudnnDestroy(ctx->handle);
            check_cudnn(st, "cudnnSetStream");
        }
        *out = ctx.release();
    });
}

// Free the workspace, the graphs and the handle. Waits for the device first (the workspace may be in use).
int tm_cudnn_attn_destroy(void* handle, char* msg, size_t msg_len) {
    return guarded(msg, msg_len, [&] {
        std::unique_ptr<Context> ctx(static_cast<Context*>(handle));
        if (!ctx) return;
        cudaError_t sync = cudaDeviceSynchronize();
        ctx->graphs.clear();
        if (ctx->workspace != nullptr) cudaFree(ctx->workspace);
        cudnnStatus_t st = cudnnDestroy(ctx->handle);
        check_cuda(sync, "synchronising before destroying the cuDNN context");
        check_cudnn(st, "cudnnDestroy");
    });
}

// Forward: y and stats from qkv (layouts above). Asynchronous on `stream`.
int tm_cudnn_attn_forward(void* handle, const void* qkv, void* y, float* stats, const TmAttnShape* shape, void* stream,
                          char* msg, size_t msg_len) {
    return guarded(msg, msg_len, [&] {
        if (handle == nullptr) throw Failure{kBadArgument, "cuDNN SDPA forward: null context"};
        auto& ctx = *static_cast<Context*>(handle);
        Shape s = checked_shape(shape, false);
        bind_stream(ctx, stream);
        std::unordered_map<int64_t, void*> pack = {{kQ, bytes(qkv)},
                                                   {kK, bytes(qkv) + k_offset(s)},
                                                   {kV, bytes(qkv) + v_offset(s)},
                                                   {kO, y},
                                                   {kStats, stats}};
        execute(ctx, s, pack);
    });
}

// Backward: dqkv (written whole) from qkv, the forward's y and stats, and dy. Asynchronous on `stream`.
int tm_cudnn_attn_backward(void* handle, const void* qkv, const void* y, const void* dy, const float* stats,
                           void* dqkv, const TmAttnShape* shape, void* stream, char* msg, size_t msg_len) {
    return guarded(msg, msg_len, [&] {
        if (handle == nullptr) throw Failure{kBadArgument, "cuDNN SDPA backward: null context"};
        auto& ctx = *static_cast<Context*>(handle);
        Shape s = checked_shape(shape, true);
        bind_stream(ctx, stream);
        const int64_t kb = k_offset(s), vb = v_offset(s);
        std::unordered_map<int64_t, void*> pack = {
            {kQ, bytes(qkv)},   {kK, bytes(qkv) + kb},  {kV, bytes(qkv) + vb},  {kO, bytes(y)},
            {kDO, bytes(dy)},   {kStats, bytes(stats)}, {kDQ, bytes(dqkv)},     {kDK, bytes(dqkv) + kb},
            {kDV, bytes(dqkv) + vb}};
        execute(ctx, s, pack);
    });
}

// Build (if needed) the forward and backward graphs of a shape without running them, e.g. before timing.
int tm_cudnn_attn_prepare(void* handle, const TmAttnShape* shape, char* msg, size_t msg_len) {
    return guarded(msg, msg_len, [&] {
        if (handle == nullptr) throw Failure{kBadArgument, "cuDNN SDPA prepare: null context"};
        auto& ctx = *static_cast<Context*>(handle);
        graph_for(ctx, checked_shape(shape, false));
        graph_for(ctx, checked_shape(shape, true));
    });
}

// One line per cached graph (shape, plan, workspace bytes), then the workspace held, into `out`.
int tm_cudnn_attn_describe(void* handle, char* out, size_t out_len) {
    return guarded(out, out_len, [&] {
        if (handle == nullptr) throw Failure{kBadArgument, "cuDNN SDPA describe: null context"};
        auto& ctx = *static_cast<Context*>(handle);
        std::string text;
        for (const auto& [s, b] : ctx.graphs) {
            text += shape_text(s) + ": " + b.plan + ", workspace " + std::to_string(b.workspace) + " bytes\n";
        }
        text += "workspace held: " + std::to_string(ctx.workspace_bytes) + " bytes";
        write_message(out, out_len, text);
    });
}

}  // extern "C"
