//! Every test file that has a CUDA part, linked into one binary for the GPU machine: `scripts/gpu-kernel-check.sh
//! build` compiles this with `--features cuda` (one ~13 MB binary to carry instead of one per file, each holding the
//! whole library). Not built by a plain `cargo test` (Cargo.toml: `test = false`); CI runs the same files as their
//! own test targets, where the CUDA parts skip. `KERNEL_FEATURES=cudnn scripts/gpu-kernel-check.sh build` adds the
//! `cudnn` feature (kernels_cudnn_attention's tests; without it that module only says it was not built).
#![allow(dead_code)]

#[path = "../dist_nccl.rs"]
mod dist_nccl;
#[path = "../gpu_engine.rs"]
mod gpu_engine;
#[path = "../gpu_model.rs"]
mod gpu_model;
#[path = "../kernels_attention.rs"]
mod kernels_attention;
#[path = "../kernels_cross_entropy.rs"]
mod kernels_cross_entropy;
#[path = "../kernels_cudnn_attention.rs"]
mod kernels_cudnn_attention;
#[path = "../kernels_embedding.rs"]
mod kernels_embedding;
#[path = "../kernels_norm_act.rs"]
mod kernels_norm_act;
#[path = "../kernels_wgmma.rs"]
mod kernels_wgmma;
