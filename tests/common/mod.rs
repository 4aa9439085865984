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
