//! Declarative pipeline definitions (`pipelines/*.toml`): where a corpus comes from, which column holds the text,
//! the tokenizer and the shard layout. `prep` loads one as its defaults and lets flags override single fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tokenizer::TokenizerSource;

/// The FineWeb-Edu definition, compiled in so `tokenmill prep fineweb` works from any directory.
pub const FINEWEB_EDU_TOML: &str = include_str!("../../pipelines/fineweb-edu.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub dataset: DatasetSection,
    pub source: SourceSection,
    pub tokenize: TokenizeSection,
    pub shards: ShardsSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Prefix of shard file names.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Hugging Face dataset repo (hub source).
    pub repo: Option<String>,
    #[serde(default = "default_revision")]
    pub revision: String,
    pub subset: Option<String>,
    /// Subset name -> folder of parquet files in the repo.
    #[serde(default)]
    pub subsets: BTreeMap<String, String>,
    /// Local files or directories (local source); used instead of the hub when non-empty.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default = "default_text_column")]
    pub text_column: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeSection {
    /// `gpt2`, `cl100k_base`, `o200k_base`, `hf:OWNER/NAME` or a path to a tokenizer.json (or its folder).
    pub tokenizer: TokenizerSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsSection {
    pub out: PathBuf,
    pub shard_size: u64,
    #[serde(default = "default_val_shards")]
    pub val_shards: usize,
}

fn default_revision() -> String {
    "main".into()
}
fn default_text_column() -> String {
    "text".into()
}
fn default_val_shards() -> usize {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid pipeline definition: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: subset `{subset}` is not listed under [source.subsets] (known: {known})")]
    UnknownSubset { path: String, subset: String, known: String },
}

impl PipelineSpec {
    pub fn parse(text: &str, origin: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse { path: origin.to_string(), message: e.to_string() })
    }

    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SpecError::Io { path: path.display().to_string(), source: e })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// `pipelines/fineweb-edu.toml` from the current directory if present (so edits take effect), else the built-in copy.
    pub fn fineweb_edu_default() -> Result<Self, SpecError> {
        let local = Path::new("pipelines/fineweb-edu.toml");
        if local.exists() {
            Self::load(local)
        } else {
            Self::parse(FINEWEB_EDU_TOML, "<built-in pipelines/fineweb-edu.toml>")
        }
    }

    /// Folder of the subset's parquet files inside the hub repo.
    pub fn subset_prefix(&self, origin: &str) -> Result<String, SpecError> {
        let Some(subset) = &self.source.subset else { return Ok(String::new()) };
        self.source.subsets.get(subset).cloned().ok_or_else(|| SpecError::UnknownSubset {
            path: origin.to_string(),
            subset: subset.clone(),
            known: self.source.subsets.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_fineweb_edu_parses() {
        let spec = PipelineSpec::parse(FINEWEB_EDU_TOML, "built-in").unwrap();
        assert_eq!(spec.source.repo.as_deref(), Some("HuggingFaceFW/fineweb-edu"));
        assert_eq!(spec.shards.shard_size, 100_000_000);
        assert_eq!(spec.subset_prefix("x").unwrap(), "sample/10BT/");
        assert_eq!(spec.tokenize.tokenizer, crate::tokenizer::TokenizerKind::Gpt2.into());
    }

    #[test]
    fn unknown_field_is_an_error_naming_the_file() {
        let text = FINEWEB_EDU_TOML.replace("[tokenize]", "[tokenize]\ntokeniser = \"gpt2\"");
        let err = PipelineSpec::parse(&text, "my.toml").unwrap_err().to_string();
        assert!(err.contains("my.toml") && err.contains("tokeniser"), "{err}");
    }
}
