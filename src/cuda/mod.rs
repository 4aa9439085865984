//! The kernel layer: every CUDA source of tokenmill lives in this folder, and nothing here imports from `train` or
//! `model` (they call down into it).
//!
//! - Kernels, one `<op>.cu` per op, compiled to PTX by build.rs: the engine's `norm` (LayerNorm and RMSNorm),
//!   `rope`, `swiglu`, `classifier` (softmax cross-entropy), `encoder`, `bias_grad`, `activation` (GELU), `adamw`,
//!   `flash_attn`; and `attention_ref`, the FMA reference attention (the tests' reference for `flash_attn`, and the
//!   candle ops' f32 attention). The candle ops in `model::kernels` also run `classifier`'s loss, `norm`'s LayerNorm,
//!   `activation`'s GELU, `encoder`'s embedding backward and `flash_attn`'s tensor-core attention (through strides:
//!   one kernel for both layouts and both callers).
//! - Headers shared by the kernels: `common.cuh` (element types, conversions, 16-byte vectors), `warp.cuh` (warp
//!   shuffles and sums), `mma.cuh` (the tensor-core product), `online_softmax.cuh` (the classifier's running max and
//!   sum), `cp_async.cuh` (asynchronous global -> shared copies), `wgmma.cuh` (Hopper's warpgroup product, for files
//!   compiled for sm_90a: first line `// tokenmill: sm_90a`, see build.rs), `pipeline.cuh` (Hopper's named barriers,
//!   mbarriers and bulk copies).
//! - `flash_bwd_sm90`: the attention backward (dQ with D, dK/dV) on wgmma (sm_90a), drop-ins for `flash_attn`'s two
//!   backward kernels, sharing `flash_tiles.cuh` (layout, tiles, grid order) with it; timed by `bench attention`,
//!   not yet the engine's default.
//! - `wgmma_check`: a GEMM on `wgmma.cuh` in every operand form, run on an H100 by tests/kernels_wgmma.rs (and in
//!   the lab) to pin the product's semantics down; not used in training. `pipeline_check` does the same for
//!   `pipeline.cuh` (named barriers, mbarriers, bulk copies, dynamic shared memory: what a warp-specialised kernel
//!   synchronises with) through a producer warpgroup feeding two consumer warpgroups that take turns.
//! - Rust: each engine kernel file's thin launcher `<op>.rs` over typed device pointers (`devptr::DevPtr<T>`, the
//!   element type each kernel parameter reads; no candle autograd);
//!   `cudnn_attn` (cuDNN's SDPA, feature `cudnn`, with its C++ shim `cudnn_attn.cpp`); `blaslt` (cuBLASLt matmuls
//!   with epilogues) and `gemm_table` (its tuned algorithm per shape; the format, no CUDA); `launch`, the one PTX
//!   loader both the engine and the candle ops use.
//!
//! The kernel lab, dev/cuda, runs every `.cu` file on the CPU under emulation against double-precision references
//! (CI: tests/kernels_lab.rs).
#[cfg(feature = "cuda")]
pub mod activation;
#[cfg(feature = "cuda")]
pub mod adamw;
#[cfg(feature = "cuda")]
pub mod attention_ref;
#[cfg(feature = "cuda")]
pub mod bias_grad;
#[cfg(feature = "cuda")]
pub mod blaslt;
#[cfg(feature = "cuda")]
pub mod classifier;
#[cfg(feature = "cudnn")]
pub mod cudnn_attn;
#[cfg(feature = "cuda")]
pub mod devptr;
pub mod encoder;
#[cfg(feature = "cuda")]
pub mod flash_attn;
#[cfg(feature = "cuda")]
pub mod flash_bwd_sm90;
pub mod gemm_table;
#[cfg(feature = "cuda")]
pub mod launch;
pub mod norm;
#[cfg(feature = "cuda")]
pub mod pipeline_check;
#[cfg(feature = "cuda")]
pub mod rope;
#[cfg(feature = "cuda")]
pub mod swiglu;
#[cfg(feature = "cuda")]
pub mod wgmma_check;
