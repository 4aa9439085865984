//! `tokenmill prep corpus`: any local corpus (parquet, jsonl, txt) -> token shards + manifest.json, named after the
//! corpus and sized to it. `prep fineweb` is the FineWeb-Edu preset (100M-token shards named `edufineweb_*`), which
//! turns a small local corpus into one val shard and no training data; this command picks a shard size that gives
//! about ten shards, so the first (val) leaves ~90% to train.
//!
//! ```text
//! tokenmill prep corpus --input data/tinyshakespeare.txt                 # -> shards/tinyshakespeare/
//! tokenmill prep corpus --input my_jsonl_dir/ --name mycorpus --tokenizer cl100k_base
//! tokenmill prep corpus --input my_jsonl_dir/ --tokenizer hf:HuggingFaceTB/SmolLM2-135M   # the model's own
//! ```

use std::path::{Path, PathBuf};

use super::prep_fineweb::{prep_and_report, ShardArgs};
use crate::pipelines::fineweb::{self, Input, PrepOptions};
use crate::tokenizer::TokenizerKind;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Input files or directories (parquet, jsonl with a `text` field, txt), read in order.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// The dataset's name: shard files are NAME_{val,train}_NNNNNN.bin, the default --out is shards/NAME
    /// [default: the first input's file or folder name].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub shards: ShardArgs,
}

/// Shards this command aims for when it picks the shard size: 1 val + ~9 train.
const TARGET_SHARDS: u64 = 10;
/// English text is ~4 bytes per GPT-2 token (tiny Shakespeare: 1,115,394 bytes, 338,025 tokens = 3.3); compressed
/// parquet holds more tokens per byte, which only makes more shards.
const BYTES_PER_TOKEN: u64 = 4;

/// Tokens per shard for a corpus of `bytes` input bytes: ~`TARGET_SHARDS` shards, a multiple of 1024, between 1024
/// and the FineWeb default of 100M.
pub fn auto_shard_size(bytes: u64) -> u64 {
    let per_shard = (bytes / BYTES_PER_TOKEN).div_ceil(TARGET_SHARDS);
    per_shard.div_ceil(1024).clamp(1, 100_000_000 / 1024) * 1024
}

pub fn resolve(args: &Args) -> anyhow::Result<PrepOptions> {
    let input = fineweb::local_input(&args.input)?;
    let Input::Local(files) = &input else { unreachable!("local_input gives local files") };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&args.input[0])?,
    };
    let a = &args.shards;
    let shard_size = match a.shard_size {
        Some(n) => n,
        None => {
            let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(&f.path).ok()).map(|m| m.len()).sum();
            let n = auto_shard_size(bytes);
            eprintln!("prep corpus: {bytes} bytes of input -> {n} tokens per shard (about {TARGET_SHARDS} shards; --shard-size to choose)");
            n
        }
    };
    Ok(PrepOptions {
        input,
        text_column: a.text_column.clone().unwrap_or_else(|| "text".into()),
        out: a.out.clone().unwrap_or_else(|| Path::new("shards").join(&name)),
        dataset: name,
        tokenizer: a.load_tokenizer(TokenizerKind::Gpt2.into())?,
        shard_size,
        val_shards: a.val_shards.unwrap_or(1),
        max_shards: a.shards,
        threads: a.threads,
        progress: !a.no_progress,
        overwrite: a.overwrite,
        worker: a.worker()?,
    })
}

/// `data/tinyshakespeare.txt` -> `tinyshakespeare`; a folder -> its name. Only `[A-Za-z0-9_-]` are kept (the name
/// is a file name prefix).
fn default_name(first: &Path) -> anyhow::Result<String> {
    let stem = if first.is_dir() { first.file_name() } else { first.file_stem() };
    let name: String = stem
        .map(|s| {
            s.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!name.is_empty(), "{}: cannot name the dataset after it; pass --name", first.display());
    Ok(name)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    prep_and_report(&resolve(&args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_shard_size_gives_about_ten_shards() {
        // tiny Shakespeare: 1,115,394 bytes -> 28,672-token shards; its 338,025 tokens make 12 shards.
        assert_eq!(auto_shard_size(1_115_394), 28 * 1024);
        assert_eq!(auto_shard_size(10), 1024);
        assert_eq!(auto_shard_size(u64::MAX / 2), 100_000_000 / 1024 * 1024);
    }
}
