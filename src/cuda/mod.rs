//! CUDA pieces of the decoder engine (`train::decoder`), each `<op>.cu` beside its thin launcher `<op>.rs` that
//! takes raw device pointers (no candle autograd): LayerNorm and RMSNorm (`norm`), rotary embeddings (`rope`),
//! SwiGLU (`swiglu`), the fused classifier (`classifier`), embeddings (`encoder`), bias gradients (`bias_grad`),
//! GELU (`activation`), the optimizer (`adamw`), flash attention (`flash_attn`) and cuDNN's (`cudnn_attn`, feature
//! `cudnn`), cuBLASLt matmuls with epilogues (`blaslt`) and their tuned algorithm table (`gemm_table`, no CUDA) and the PTX loading they share (`launch`).
//! dev/cuda (the kernel lab) runs the `.cu` files on the CPU under emulation against double-precision references
//! (CI, tests/kernels_lab.rs).
#[cfg(feature = "cuda")]
pub mod activation;
#[cfg(feature = "cuda")]
pub mod adamw;
#[cfg(feature = "cuda")]
pub mod bias_grad;
#[cfg(feature = "cuda")]
pub mod blaslt;
#[cfg(feature = "cuda")]
pub mod classifier;
#[cfg(feature = "cudnn")]
pub mod cudnn_attn;
#[cfg(feature = "cuda")]
pub mod encoder;
#[cfg(feature = "cuda")]
pub mod flash_attn;
pub mod gemm_table;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(feature = "cuda")]
pub mod norm;
#[cfg(feature = "cuda")]
pub mod rope;
#[cfg(feature = "cuda")]
pub mod swiglu;
