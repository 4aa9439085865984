//! `manifest.json`: the one file `train --data DIR` reads to learn what a shard directory holds.
//! Written atomically after every finished shard, so it always describes exactly the shards on disk, and carries the
//! resume cursor that lets a killed `prep` continue where it stopped. A manifest is followed only if it names shards
//! inside its own directory, each once, with the tokenizer's token width (`Manifest::validate`, checked on load).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shards::format::TokenWidth;
pub use crate::tokenizer::TokenizerInfo;

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

/// One input file as it was when the dataset was first defined: enough to tell whether a resume reads the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIdentity {
    /// Path (local) or path in the hub repo, as given; for messages (a moved local corpus is still the same input).
    pub file: String,
    pub bytes: u64,
    /// `xxh3:HEX` of a local file's content (whole file up to 2 MiB, else its size and first and last 1 MiB),
    /// `sha256:HEX` of a hub file as the hub reports it, or `unknown` (a hub file without a checksum: then the path
    /// and size must match).
    pub content: String,
}

impl InputIdentity {
    pub const UNKNOWN_CONTENT: &'static str = "unknown";

    fn same_input(&self, other: &InputIdentity) -> bool {
        self.bytes == other.bytes
            && self.content == other.content
            && (self.content != Self::UNKNOWN_CONTENT || self.file == other.file)
    }

    fn describe(&self) -> String {
        format!("{} ({} bytes, {})", self.file, self.bytes, self.content)
    }
}

/// The inputs and settings a shard directory was prepared from, beyond the manifest's `dataset`, `tokenizer` and
/// `shard_size`. Recorded on the first run; every resume must present the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetDefinition {
    /// Every input file, in reading order.
    pub inputs: Vec<InputIdentity>,
    pub text_column: String,
    pub val_shards: usize,
}

/// How a resume's definition compares with the one on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefinitionCheck {
    /// What makes it another dataset, one readable item each; empty when the resume may go on.
    pub differences: Vec<String>,
    /// Input files (1-based) whose content changed but whose documents are not all in finished shards yet, with the
    /// same size: a repaired input (the one a run failed on, re-downloaded). Accepted, and reported.
    pub repaired: Vec<usize>,
}

impl DatasetDefinition {
    /// Compare the definition on disk (`self`) with the one a resume presents. The first `pinned` input files hold
    /// only documents that are in finished shards: their content must be identical. Later files must have the same
    /// size (and path where the content is unknown); their content may have been repaired.
    pub fn check(&self, now: &DatasetDefinition, pinned: usize) -> DefinitionCheck {
        let mut c = DefinitionCheck::default();
        if self.text_column != now.text_column {
            c.differences.push(format!("text column `{}` on disk, `{}` now", self.text_column, now.text_column));
        }
        if self.val_shards != now.val_shards {
            c.differences.push(format!("{} val shard(s) on disk, {} now", self.val_shards, now.val_shards));
        }
        let (a, b) = (&self.inputs, &now.inputs);
        if a.len() != b.len() {
            c.differences.push(format!("{} input file(s) on disk, {} now", a.len(), b.len()));
        }
        let show = |x: Option<&InputIdentity>| x.map_or("nothing".to_string(), InputIdentity::describe);
        for i in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(i), b.get(i));
            let same = match (x, y) {
                (Some(x), Some(y)) if x.same_input(y) => true,
                (Some(x), Some(y))
                    if i >= pinned && x.bytes == y.bytes && x.content != InputIdentity::UNKNOWN_CONTENT =>
                {
                    c.repaired.push(i + 1);
                    true
                }
                _ => false,
            };
            if !same {
                let finished = if i < pinned { " (its documents are in finished shards)" } else { "" };
                c.differences.push(format!("input file #{} was {}{finished}, is now {}", i + 1, show(x), show(y)));
                break;
            }
        }
        c
    }
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
    /// What, with `dataset`, `tokenizer` and `shard_size`, defines the dataset: a resume under another definition is
    /// refused. Absent in manifests written before tokenmill recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DatasetDefinition>,
    /// Present while the directory may still grow; `complete` says whether the input was exhausted.
    pub resume: ResumeCursor,
    pub complete: bool,
    pub tool_version: String,
    /// Written by `prep merge`: the workers whose streams make the dataset. Absent from a one-box run's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<MergedFrom>,
    /// The `--shards K` the latest run was given: with K shards written the dataset is finished as asked even though
    /// its input is not exhausted (`complete: false`). Absent without `--shards` (and in older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_limit: Option<usize>,
}

/// Provenance of a merged dataset: worker `i`'s stream is `worker_tokens[i]` tokens of the dataset's, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergedFrom {
    pub workers: usize,
    /// Tokens each worker used contributed, in worker order (workers past the dataset's `--shards` are not listed).
    pub worker_tokens: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid tokenmill manifest: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: manifest format_version {found} is newer than this tokenmill understands ({MANIFEST_VERSION})")]
    TooNew { path: String, found: u32 },
    #[error(
        "{path}: {what}; the manifest was edited or is not tokenmill's, so nothing is read or deleted through it \
         (re-create the dataset with `tokenmill prep` into a new --out)"
    )]
    Invalid { path: String, what: String },
}

impl Manifest {
    pub fn new(dataset: &str, tokenizer: impl Into<TokenizerInfo>, shard_size: u64) -> Self {
        let tokenizer = tokenizer.into();
        Manifest {
            format_version: MANIFEST_VERSION,
            dataset: dataset.to_string(),
            token_width: TokenWidth::for_vocab(tokenizer.vocab_size),
            tokenizer,
            shard_size,
            shards: Vec::new(),
            sources: Vec::new(),
            definition: None,
            resume: ResumeCursor::default(),
            complete: false,
            tool_version: crate::TOOL_VERSION.to_string(),
            merged_from: None,
            shards_limit: None,
        }
    }

    /// Whether the prep that wrote it finished: its input exhausted, or its `--shards` count reached. A dataset whose
    /// prep was killed (or is still running) is not finished.
    pub fn finished(&self) -> bool {
        self.complete || self.shards_limit.is_some_and(|k| self.shards.len() >= k)
    }

    /// What must hold for the manifest to be followed at all: every shard a plain file name in the manifest's own
    /// directory (no `../`, no absolute path), listed once; the dataset name a plain file name; the end-of-text id and
    /// token width the named tokenizer's, and no more token ids than it has.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::util::is_plain_file_name(&self.dataset) {
            return Err(format!("dataset name `{}` is not a plain file name", self.dataset));
        }
        self.tokenizer.check()?;
        // More ids than a built-in tokenizer has cannot come from it (a model would be built with rows no token
        // uses); fewer is a restricted vocabulary, which the loader holds every shard id to.
        if let Some(kind) = self.tokenizer.builtin() {
            if self.tokenizer.vocab_size > kind.vocab_size() || self.tokenizer.eot != kind.eot() {
                return Err(format!(
                    "tokenizer {} has {} token ids and <|endoftext|> {}, but the manifest says vocab_size {} and eot {}",
                    self.tokenizer.name,
                    kind.vocab_size(),
                    kind.eot(),
                    self.tokenizer.vocab_size,
                    self.tokenizer.eot
                ));
            }
        }
        let width = TokenWidth::for_vocab(self.tokenizer.vocab_size);
        if self.token_width != width {
            return Err(format!(
                "token_width {:?} but the {} tokenizer's ids are stored as {width:?}",
                self.token_width,
                self.tokenizer.describe()
            ));
        }
        if let Some(hf) = &self.tokenizer.hf {
            for file in std::iter::once(&hf.file).chain(&hf.config_file) {
                if !crate::util::is_plain_file_name(file) || file == MANIFEST_FILE {
                    return Err(format!("tokenizer file `{file}` is not a file name in the dataset's directory"));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            if !crate::util::is_plain_file_name(&s.file) || s.file == MANIFEST_FILE {
                return Err(format!(
                    "shard #{} is `{}`, not a file name in the dataset's directory (a path outside it)",
                    i + 1,
                    s.file
                ));
            }
            if !seen.insert(s.file.as_str()) {
                return Err(format!("shard `{}` is listed twice (#{} again)", s.file, i + 1));
            }
        }
        Ok(())
    }

    /// The tokenizer the shards were written with (its copy in `dir` for a Hugging Face one, checked against the
    /// recorded sha256).
    pub fn load_tokenizer(&self, dir: &Path) -> Result<crate::tokenizer::Tokenizer, crate::tokenizer::TokenizerError> {
        let what = Self::path_in(dir).display().to_string();
        crate::tokenizer::Tokenizer::recorded(dir, &self.tokenizer, &what)
    }

    /// The tokenizer files the manifest lists (tokenizer.json, tokenizer_config.json), as paths under `dir`.
    pub fn tokenizer_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.tokenizer
            .hf
            .iter()
            .flat_map(|hf| std::iter::once(&hf.file).chain(&hf.config_file))
            .map(|f| dir.join(f))
            .collect()
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
        m.validate().map_err(|what| ManifestError::Invalid { path: p(), what })?;
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

    /// When the train split is empty because `--val-shards` asked for as many val shards as the dataset has (more
    /// than one: with one, the corpus fit in a single shard and the shard size is the cause), what to say about it.
    pub fn empty_train_because_of_val_shards(&self, dir: &Path) -> Option<String> {
        let asked = self.definition.as_ref()?.val_shards;
        let shards = self.shards.len();
        let all_val = shards > 0 && self.shards.iter().all(|s| s.split == Split::Val);
        (asked > 1 && all_val && asked >= shards).then(|| {
            format!(
                "{}: the train split is empty: the dataset was prepared with --val-shards {asked}, which made all \
                 {shards} of its shard(s) val. Prep it again with a smaller --val-shards (1 is the usual) and \
                 --overwrite",
                dir.display()
            )
        })
    }

    pub fn tokens_in(&self, split: Split) -> u64 {
        self.shards.iter().filter(|s| s.split == split).map(|s| s.tokens).sum()
    }
}
