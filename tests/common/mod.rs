//! Fixtures shared by the integration tests that train on real text. Included with
//! `#[path = "common/mod.rs"] mod common;` (a path relative to the including file, so it also resolves when
//! tests/gpu/main.rs includes that file as a module). Not every test binary uses every fixture.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use candle_core::Device;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
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
        tokenizer: TokenizerKind::Gpt2.into(),
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
