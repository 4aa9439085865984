//! `manifest.json`: the one file `train --data DIR` reads to learn what a shard directory holds.
//! Written atomically after every finished shard, so it always describes exactly the shards on disk, and carries the
//! resume cursor that lets a killed `prep` continue where it stopped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shards::format::TokenWidth;
use crate::tokenizer::TokenizerKind;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the manifest's meaning changes; readers refuse newer versions.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            o => Err(format!("unknown split `{o}` (expected train or val)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub name: TokenizerKind,
    pub vocab_size: u32,
    pub eot: u32,
}

impl From<TokenizerKind> for TokenizerInfo {
    fn from(k: TokenizerKind) -> Self {
        TokenizerInfo { name: k, vocab_size: k.vocab_size(), eot: k.eot() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name relative to the manifest's directory.
    pub file: String,
    pub split: Split,
    pub tokens: u64,
    /// xxh3-64 of the whole file (header included), lowercase hex.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Path (local) or `repo/path` (hub) of the input file.
    pub file: String,
    pub bytes: u64,
    /// Rows (documents) read from it so far.
    pub rows: u64,
}

/// Where a resumed `prep` continues: documents before `first_unfinished_document` are entirely in finished shards,
/// and so are the first `tokens_into_document` tokens (EOT included) of that document. Tokens of an unfinished shard
/// are never saved: a resume re-derives them from the sources, which is what makes it byte-identical.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResumeCursor {
    /// Index of the first document whose tokens are not all in finished shards.
    pub first_unfinished_document: u64,
    /// How many tokens of that document are already in finished shards.
    pub tokens_into_document: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub dataset: String,
    pub tokenizer: TokenizerInfo,
    pub token_width: TokenWidth,
    pub shard_size: u64,
    pub shards: Vec<ShardEntry>,
    pub sources: Vec<SourceEntry>,
    /// Present while the directory may still grow; `complete` says whether the input was exhausted.
    pub resume: ResumeCursor,
    pub complete: bool,
    pub tool_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("{path}: not a valid tokenmill manifest: {source}")]
    Parse { path: String, #[source] source: serde_json::Error },
    #[error("{path}: manifest format_version {found} is newer than this tokenmill understands ({MANIFEST_VERSION})")]
    TooNew { path: String, found: u32 },
}

impl Manifest {
    pub fn new(dataset: &str, tokenizer: TokenizerKind, shard_size: u64) -> Self {
        Manifest {
            format_version: MANIFEST_VERSION,
            dataset: dataset.to_string(),
            tokenizer: tokenizer.into(),
            token_width: TokenWidth::for_token_bytes(tokenizer.token_bytes()),
            shard_size,
            shards: Vec::new(),
            sources: Vec::new(),
            resume: ResumeCursor::default(),
            complete: false,
            tool_version: crate::TOOL_VERSION.to_string(),
        }
    }

    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = Self::path_in(dir);
        let p = || path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Io { path: p(), source: e })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ManifestError::Parse { path: p(), source: e })?;
        if m.format_version > MANIFEST_VERSION {
            return Err(ManifestError::TooNew { path: p(), found: m.format_version });
        }
        Ok(m)
    }

    /// Atomically replace `dir/manifest.json`.
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = Self::path_in(dir);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serialises");
        text.push('\n');
        crate::util::write_atomic(&path, text.as_bytes())
            .map_err(|e| ManifestError::Io { path: path.display().to_string(), source: e })
    }

    /// Shard files of one split, in order, as paths under `dir`.
    pub fn shard_paths(&self, dir: &Path, split: Split) -> Vec<PathBuf> {
        self.shards.iter().filter(|s| s.split == split).map(|s| dir.join(&s.file)).collect()
    }

    pub fn tokens_in(&self, split: Split) -> u64 {
        self.shards.iter().filter(|s| s.split == split).map(|s| s.tokens).sum()
    }
}
