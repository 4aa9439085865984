//! Fixtures shared by the integration tests that train on real text. Included with
//! `#[path = "common/mod.rs"] mod common;` (a path relative to the including file, so it also resolves when
//! tests/gpu/main.rs includes that file as a module). Not every test binary uses every fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use tokenmill::pipelines::fineweb::{self, Input, PrepOptions};
use tokenmill::pipelines::sources::{SourceFile, SourceKind};
use tokenmill::tokenizer::TokenizerKind;

/// data/tinyshakespeare.txt through `prep` into `dir` (GPT-2 BPE, 100K-token shards: 1 val + 3 train).
pub fn prep_tiny_shakespeare(dir: &Path) {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    fineweb::prep(&PrepOptions {
        input: Input::Local(vec![SourceFile { path: text, kind: SourceKind::Text }]),
        text_column: "text".into(),
        out: dir.to_path_buf(),
        dataset: "tinyshakespeare".into(),
        tokenizer: TokenizerKind::Gpt2,
        shard_size: 100_000,
        val_shards: 1,
        max_shards: None,
        threads: 1,
        progress: false,
        overwrite: false,
        worker: None,
    })
    .unwrap();
}

/// [`prep_tiny_shakespeare`] once per test binary, shared read-only by its tests.
pub fn tiny_shakespeare_shards() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        prep_tiny_shakespeare(dir.path());
        dir
    })
    .path()
}

/// tests/fixtures/fineweb_legal_pilot: 4 of the 28 real FineWeb parquet files (tests/fixtures/README.md), 100
/// documents each, in the repo so these tests run in any clone.
pub fn fineweb_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fineweb_legal_pilot")
}

/// The vendored parquet files' names, in order.
pub const FINEWEB_FIXTURE_FILES: [&str; 4] =
    ["batch_000001.parquet", "batch_000010.parquet", "batch_000019.parquet", "batch_000028.parquet"];

/// Where the larger optional data would be: `$TOKENMILL_SHARED_DATA`, else `../shared/data` beside the checkout
/// (which exists only on the project's dev machine).
pub fn shared_data_root() -> PathBuf {
    std::env::var_os("TOKENMILL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The HellaSwag validation set in llama.cpp's layout (10,042 tasks), decompressed once per test binary from
/// tests/fixtures/hellaswag_val_full.txt.zst and checked against the upstream file's sha256.
pub fn hellaswag_val_full() -> &'static Path {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = FILE.get_or_init(|| {
        use sha2::Digest;
        let packed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hellaswag_val_full.txt.zst");
        let bytes = zstd::stream::decode_all(std::fs::File::open(&packed).unwrap()).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            "d572539320eb2050e858ca34b495bbe2103e3b3f1391a9c3bcdf215b0bb93bd1",
            "{} does not hold the upstream hellaswag_val_full.txt (tests/fixtures/README.md)",
            packed.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hellaswag_val_full.txt");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    });
    path
}

/// CUDA device 0, or `None` (with the reason on stderr) where the binary lacks CUDA support or no GPU is present:
/// the tests' GPU parts then skip and their CPU parts still run.
pub fn cuda_device() -> Option<Device> {
    if !candle_core::utils::cuda_is_available() {
        eprintln!("skipped the CUDA part: this binary has no CUDA support");
        return None;
    }
    Device::new_cuda(0).map_err(|e| eprintln!("skipped the CUDA part: no CUDA device ({e})")).ok()
}
