//! Fixtures shared by the integration tests that train on real text. Included with
//! `#[path = "common/mod.rs"] mod common;` (a path relative to the including file, so it also resolves when
//! tests/gpu/main.rs includes that file as a module). Not every test binary uses every fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use candle_core::Device;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tokenmill::pipelines::fineweb::{self, Input, PrepOptions};
use tokenmill::pipelines::sources::{SourceFile, SourceKind};
use tokenmill::tokenizer::{Tokenizer, TokenizerKind};
use tokenmill::train::log::{Event, StepStats};

/// `prep` of `input` into `out` as the tests run it: dataset `dataset`, one val shard, 2 threads, no progress.
pub fn prep_options(input: Input, out: &Path, dataset: &str, tokenizer: Tokenizer, shard_size: u64) -> PrepOptions {
    PrepOptions {
        input,
        text_column: "text".into(),
        out: out.to_path_buf(),
        dataset: dataset.into(),
        tokenizer,
        shard_size,
        val_shards: 1,
        max_shards: None,
        threads: 2,
        progress: false,
        overwrite: false,
        worker: None,
    }
}

/// The shard files (`*.bin` directly in `dir`) with their bytes, by name.
pub fn shard_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// A run's events without the step timings (which differ between two runs of the same steps).
pub fn without_timings(history: &[Event]) -> Vec<Event> {
    history
        .iter()
        .map(|e| match e {
            Event::Train(s) => Event::Train(StepStats { ms: 0.0, tokens_per_s: 0.0, ..*s }),
            other => other.clone(),
        })
        .collect()
}

/// data/tinyshakespeare.txt through `prep` into `dir` (GPT-2 BPE, 100K-token shards: 1 val + 3 train).
pub fn prep_tiny_shakespeare(dir: &Path) {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    let input = Input::Local(vec![SourceFile { path: text, kind: SourceKind::Text }]);
    fineweb::prep(&prep_options(input, dir, "tinyshakespeare", TokenizerKind::Gpt2.into(), 100_000)).unwrap();
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

/// The `text` column of a parquet file, in row order (the shared FineWeb files).
pub fn read_parquet_texts(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["text"]);
    let reader = builder.with_projection(mask).build().unwrap();
    let mut texts = Vec::new();
    for batch in reader {
        let batch = batch.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let column = arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        let strings = column.as_string::<i32>();
        for (i, text) in strings.iter().enumerate() {
            let text = text.unwrap_or_else(|| panic!("{}: row {} has a null text", path.display(), texts.len() + i));
            texts.push(text.to_string());
        }
    }
    texts
}
