//! Fused kernels with their backward, CPU and CUDA: each `<op>.rs` holds a candle custom op (forward on CPU
//! and CUDA, and `bwd`) whose CUDA kernels live in the kernel layer, `src/cuda/` (each op's `.cu` file is named in its
//! module doc; build.rs compiles it to PTX under the `cuda` feature, `crate::cuda::launch` loads it), and
//! the composed candle version it replaces stays in `model::ops` / `model::attention` as its reference, held
//! against it in tests/kernels_*.rs.
//!
//! - `cross_entropy`: softmax cross-entropy, per-row loss and one-pass `dlogits` (CPU and CUDA, f32/bf16/f64),
//!   and the LM head + loss as one autograd node (`linear_cross_entropy`).
//! - `attention`: FlashAttention-2 style causal attention, forward saving O and the row logsumexp, backward
//!   recomputing P blockwise (CUDA, HS = 64; a row-by-row CPU implementation of the same algorithm is its twin).
//! - `layer_norm`: LayerNorm saving only mean and rstd, output straight in the compute dtype, deterministic
//!   dweight/dbias (CPU and CUDA, one warp per row).
//! - `embedding`: the token embedding lookup, with a deterministic grouped backward on CUDA (rows grouped by id on
//!   the host, summed in the CPU's order: equal to candle's `index_add`, which walks the ids serially per column).
//! - `gelu`: GELU (tanh approximation) saving only its input (CPU and CUDA, elementwise).
//!
//! Every file is laid out alike: the public entry point with its shape checks, `supported` where a model routes
//! between the fused and the composed version (the one place that rule lives), the CPU twin generic over
//! `real::{Real, Elem}`, the custom op, and a `cuda` launcher module. Dtypes are dispatched once per call by
//! `real::float_pair!` / `float_elem!`: f32 and bf16 (what configs select) and f64 (gradient checks); attention
//! also takes f16, for `crate::cuda::flash_attn`'s f16 path.
//!
//! The .cu files run without a GPU in the kernel lab, dev/cuda/ (llm.c's dev/cuda): `dev/cuda/run.sh` compiles them
//! with g++ against a small CUDA emulation header and checks them against double-precision C++ references.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gelu;
pub mod layer_norm;
mod real;

pub use attention::{flash_causal_attention, flash_causal_attention_qkv};
pub use cross_entropy::{linear_cross_entropy, softmax_cross_entropy, IGNORE_INDEX};
pub use embedding::{embedding_backward, embedding_lookup};
pub use gelu::gelu_tanh;
pub use layer_norm::layer_norm;
