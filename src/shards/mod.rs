//! Token shards: the on-disk format (`format`), the per-directory `manifest`, the atomic `writer`, when a directory
//! is tokenmill's to write shards into (`out_dir`), the memory-mapped multi-rank `loader` and its weighted `mixture`
//! of directories, checks against the manifest (`verify`), and a reader for build-nanogpt's `.npy` shards (`npy`).

pub mod format;
pub mod loader;
pub mod manifest;
pub mod mixture;
pub mod npy;
pub mod out_dir;
pub mod verify;
pub mod writer;

pub use format::{ShardError, ShardHeader, TokenWidth};

/// The folder under an output directory that holds the folders of `prep --worker I/N` runs (`pipelines::workers`);
/// the loader names it when a directory holds only those, not a merged dataset yet.
pub const WORKERS_DIR: &str = "workers";
/// A worker's record in its folder (`pipelines::workers`); named here so the shard writer can tell it from a temp.
pub const WORKER_FILE: &str = "worker.json";
pub use loader::{Batch, DataLoader, LoaderConfig, LoaderError, LoaderState};
pub use manifest::{Manifest, Split};
