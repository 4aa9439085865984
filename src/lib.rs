//! tokenmill: a data-pipeline-first toolkit that reproduces GPT-2 (124M) end to end.
//!
//! Data flows one way (see docs/ARCHITECTURE.md):
//! `pipelines` (sources -> tokenize -> shards) -> `shards` (format, writer, loader) -> `train` (+ `model`, `eval`).
//! `hub` (Hugging Face downloads) serves both ends: prep's corpora and `model::pretrained`'s weights; `device` opens
//! the device everything computes on.
//! The `cli` module is a thin clap layer over these library calls.

pub mod bench;
pub mod cli;
pub mod cuda;
pub mod device;
pub mod eval;
pub mod hub;
pub mod model;
pub mod output;
pub mod pipelines;
pub mod shards;
pub mod tokenizer;
pub mod train;
pub mod util;

/// Version written into manifests and checkpoints.
pub const TOOL_VERSION: &str = concat!("tokenmill ", env!("CARGO_PKG_VERSION"));
