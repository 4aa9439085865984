//! Checking shards against their manifest: each listed shard present, with a valid header, the listed token count
//! and the listed xxh3. `prep` runs it on the finished shards before a resume, the loader on each shard the first
//! time it enters it (see docs/PERF.md for the cost), and `tokenmill verify DIR` on a whole directory, which also
//! checks a Hugging Face tokenizer's copy against its recorded sha256 and names files the manifest does not list.

use std::path::Path;

use crate::shards::format::{ShardError, ShardHeader, TokenWidth, HEADER_BYTES};
use crate::shards::manifest::{Manifest, ManifestError, ShardEntry};
use crate::util::xxh3_hex;

/// `bytes` (a whole shard file, header included) must hash to `expected`, the manifest's xxh3.
pub fn check_xxh3(path: &Path, bytes: &[u8], expected: &str) -> Result<(), ShardError> {
    let found = xxh3_hex(bytes);
    if found != expected {
        return Err(ShardError::ChecksumMismatch {
            path: path.display().to_string(),
            found,
            expected: expected.into(),
        });
    }
    Ok(())
}

/// Read the shard `entry` names under `dir` and check it whole: header, size, token width (the manifest's `width`),
/// token count, xxh3.
pub fn check_listed_shard(dir: &Path, entry: &ShardEntry, width: TokenWidth) -> Result<(), ShardError> {
    let path = dir.join(&entry.file);
    let bytes = std::fs::read(&path).map_err(|e| ShardError::io(&path, e))?;
    let header = ShardHeader::decode(&bytes[..bytes.len().min(HEADER_BYTES)], bytes.len() as u64, &path)?;
    if header.width != width {
        return Err(ShardError::WidthMismatch {
            path: path.display().to_string(),
            header: header.width,
            listed: width,
        });
    }
    if header.num_tokens != entry.tokens {
        return Err(ShardError::CountMismatch {
            path: path.display().to_string(),
            header: header.num_tokens,
            listed: entry.tokens,
        });
    }
    check_xxh3(&path, &bytes, &entry.xxh3)
}

/// What `verify_dir` found: the manifest, each listed shard's result in order, the tokenizer copy's (a Hugging Face
/// tokenizer's), and the files that look like shards or temp files but are not listed.
pub struct DirReport {
    pub manifest: Manifest,
    pub shards: Vec<(ShardEntry, Result<(), ShardError>)>,
    pub tokenizer: Option<Result<(), crate::tokenizer::TokenizerError>>,
    pub unlisted: Vec<String>,
}

impl DirReport {
    pub fn damaged(&self) -> usize {
        self.shards.iter().filter(|(_, r)| r.is_err()).count() + usize::from(matches!(self.tokenizer, Some(Err(_))))
    }

    /// Files checked: the shards, and the tokenizer copy when there is one.
    pub fn checked(&self) -> usize {
        self.shards.len() + usize::from(self.tokenizer.is_some())
    }
}

/// Check every shard `dir/manifest.json` lists, and list what else the directory holds that looks like a shard.
pub fn verify_dir(dir: &Path) -> Result<DirReport, ManifestError> {
    let manifest = Manifest::load(dir)?;
    let shards =
        manifest.shards.iter().map(|s| (s.clone(), check_listed_shard(dir, s, manifest.token_width))).collect();
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ManifestError::Io { path: dir.display().to_string(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| {
            let shard_like =
                (n.ends_with(".bin") || n.ends_with(".npy")) && (n.contains("_train_") || n.contains("_val_"));
            (shard_like || n.contains(".tmp.")) && !manifest.shards.iter().any(|s| &s.file == n)
        })
        .collect();
    unlisted.sort();
    let tokenizer = manifest.tokenizer.hf.is_some().then(|| manifest.load_tokenizer(dir).map(|_| ()));
    Ok(DirReport { manifest, shards, tokenizer, unlisted })
}
