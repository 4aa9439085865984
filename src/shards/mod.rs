//! Token shards: the on-disk format (`format`), the per-directory `manifest`, the atomic `writer`, when a directory
//! is tokenmill's to write shards into (`out_dir`), the memory-mapped multi-rank `loader`, checks against the manifest
//! (`verify`), and a reader for build-nanogpt's `.npy` shards (`npy`).

pub mod format;
pub mod loader;
pub mod manifest;
pub mod npy;
pub mod out_dir;
pub mod verify;
pub mod writer;

pub use format::{ShardError, ShardHeader, TokenWidth};
pub use loader::{Batch, DataLoader, LoaderConfig, LoaderError, LoaderState};
pub use manifest::{Manifest, Split};
