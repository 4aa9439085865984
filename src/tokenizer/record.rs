//! How a tokenizer is written down where its ids are kept: in full in a shard directory's manifest
//! ([`TokenizerInfo`]), and as a short identity ([`TokenizerId`]) in checkpoints and eval files, which is what
//! "the same tokenizer" means everywhere: a built-in vocabulary by name, a tokenizer.json by its sha256.

use serde::{Deserialize, Serialize};

use crate::tokenizer::TokenizerKind;

/// The manifest's `tokenizer` record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `gpt2`, `cl100k_base`, `o200k_base` (tiktoken's, built in) or `hf` (a tokenizer.json, described by `hf`).
    pub name: String,
    /// 1 + the largest token id: every id in the shards is below it.
    pub vocab_size: u32,
    /// The token that marks document boundaries, one per document: tiktoken's `<|endoftext|>` before every document,
    /// or an HF tokenizer's BOS before it / EOS after it (`boundary`).
    pub eot: u32,
    /// Where in each document `eot` is: first (tiktoken, BOS) or last (EOS). Absent in older manifests: first.
    #[serde(default, skip_serializing_if = "BoundaryAt::is_first")]
    pub boundary: BoundaryAt,
    /// The Hugging Face tokenizer, for `name = "hf"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf: Option<HfRecord>,
}

/// Where a document's boundary token sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundaryAt {
    #[default]
    First,
    Last,
}

impl BoundaryAt {
    fn is_first(&self) -> bool {
        *self == BoundaryAt::First
    }
}

/// A Hugging Face tokenizer as a manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HfRecord {
    /// How it was named to `prep --tokenizer`: a path, or `hf:REPO`.
    pub source: String,
    /// Its copy in the shard directory (`tokenizer.json`), which training, sampling, HellaSwag prep and export use.
    pub file: String,
    /// The copy of its tokenizer_config.json, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    /// sha256 of tokenizer.json, lowercase hex: the tokenizer's identity.
    pub sha256: String,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    /// The ids every document starts with and ends with (its boundary tokens).
    pub prepend: Vec<u32>,
    pub append: Vec<u32>,
    /// Why those: the post-processor's, tokenizer_config.json's flags, or the EOS appended.
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialToken {
    pub id: u32,
    pub text: String,
}

impl From<TokenizerKind> for TokenizerInfo {
    fn from(k: TokenizerKind) -> Self {
        TokenizerInfo {
            name: k.name().to_string(),
            vocab_size: k.vocab_size(),
            eot: k.eot(),
            boundary: BoundaryAt::First,
            hf: None,
        }
    }
}

impl TokenizerInfo {
    /// The built-in vocabulary it names (`None` for `hf`).
    pub fn builtin(&self) -> Option<TokenizerKind> {
        self.name.parse().ok()
    }

    /// Its identity; `None` for a record that names no tokenizer tokenmill knows (refused by `check`).
    pub fn id(&self) -> Option<TokenizerId> {
        match (&self.hf, self.builtin()) {
            (Some(hf), None) if self.name == "hf" => Some(TokenizerId::Hf { sha256: hf.sha256.clone() }),
            (None, Some(kind)) => Some(TokenizerId::Builtin(kind)),
            _ => None,
        }
    }

    /// Whether `other` makes the same ids: the same tokenizer with the same boundaries (where it was loaded from
    /// does not matter).
    pub fn same_as(&self, other: &TokenizerInfo) -> bool {
        let strip = |i: &TokenizerInfo| {
            let mut i = i.clone();
            if let Some(hf) = &mut i.hf {
                hf.source.clear();
            }
            i
        };
        strip(self) == strip(other)
    }

    /// What must hold for the record to be followed: a name tokenmill knows, with the `hf` record exactly when it is
    /// `hf`.
    pub fn check(&self) -> Result<(), String> {
        match self.id() {
            Some(_) => Ok(()),
            None => Err(format!(
                "tokenizer `{}`{}: expected gpt2, cl100k_base, o200k_base, or hf with its `hf` record",
                self.name,
                if self.hf.is_some() { " with an `hf` record" } else { "" }
            )),
        }
    }

    /// One line for messages: `gpt2`, or `hf:HuggingFaceTB/SmolLM2-135M (tokenizer.json sha256 1a2b3c4d5e6f, 49152
    /// ids)`.
    pub fn describe(&self) -> String {
        match &self.hf {
            Some(hf) => format!("{} ({}, {} ids)", hf.source, TokenizerId::short_sha(&hf.sha256), self.vocab_size),
            None => self.name.clone(),
        }
    }
}

/// Which tokenizer made some ids: what checkpoints (`DataIdentity`) and HellaSwag eval files record. Serialised as
/// the built-in name (`"gpt2"`, as checkpoints always did) or `{"sha256": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenizerId {
    Builtin(TokenizerKind),
    Hf { sha256: String },
}

impl TokenizerId {
    fn short_sha(sha256: &str) -> String {
        format!("tokenizer.json sha256 {}", &sha256[..sha256.len().min(12)])
    }
}

impl std::fmt::Display for TokenizerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerId::Builtin(k) => write!(f, "{k}"),
            TokenizerId::Hf { sha256 } => f.write_str(&Self::short_sha(sha256)),
        }
    }
}
