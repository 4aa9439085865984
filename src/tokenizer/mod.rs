//! The tokenizers tokenmill can write shards with: tiktoken's built-in vocabularies, GPT-2 BPE (r50k_base, tiktoken's
//! `gpt2`) by default and cl100k_base / o200k_base for 32-bit shards, and any Hugging Face `tokenizer.json` (`hf`).
//! The tiktoken vocabularies and merges are tiktoken-rs's, the reference the golden tests hold us to
//! (tests/golden_tokens.rs); GPT-2's pre-tokenizer regex is replaced by a hand-written scanner with a piece cache
//! (`gpt2_split`), proven to split identically. Hugging Face tokenizers run in the `tokenizers` crate (`hf`), held
//! to Python's `tokenizers` by tests/hf_tokenizer.rs; byte-level BPE ones (GPT-2, Llama-3, Qwen2, SmolLM2 style)
//! take a fast path with the same ids (`byte_bpe`, held to the crate by tests/hf_byte_bpe.rs). A `--tokenizer` value
//! is a [`TokenizerSource`]; what a shard directory records is a [`TokenizerInfo`], and [`Tokenizer::recorded`] loads
//! exactly that tokenizer back.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use tiktoken_rs::CoreBPE;

mod byte_bpe;
mod char_class;
mod gpt2_split;
pub mod hf;
pub mod hf_files;
mod llama3_split;
pub mod piece_counts;
pub mod record;
pub mod source;

pub use hf::{HfTokenizer, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON};
pub use piece_counts::{current as piece_counts, PieceCounts};
pub use record::{BoundaryAt, HfRecord, SpecialToken, TokenizerId, TokenizerInfo};
pub use source::TokenizerSource;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a tokenizer.json the `tokenizers` library loads: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{dir}: no tokenizer.json in this folder (give the file, or a model folder that holds one)")]
    NoTokenizerJson { dir: String },
    #[error(
        "{path}: the tokenizer adds no BOS or EOS to a text and names no EOS ({names} are not in its vocabulary), so \
         documents would have no boundary: put its tokenizer_config.json (with eos_token) beside tokenizer.json"
    )]
    NoBoundary { path: String, names: String },
    #[error(
        "{path}: sha256 {found}, but {manifest} records {expected}: the copy was changed; re-create the directory \
         with `tokenmill prep`"
    )]
    Changed { path: String, found: String, manifest: String, expected: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizing: {message}")]
    Encode { message: String },
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

/// Which BPE vocabulary a shard directory was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// GPT-2's 50257-token BPE (tiktoken `gpt2` == `r50k_base`). Ids fit in u16.
    Gpt2,
    Cl100kBase,
    O200kBase,
}

impl TokenizerKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Gpt2 => "gpt2",
            TokenizerKind::Cl100kBase => "cl100k_base",
            TokenizerKind::O200kBase => "o200k_base",
        }
    }

    /// Number of token ids (including special tokens up to the EOT id).
    pub fn vocab_size(self) -> u32 {
        match self {
            TokenizerKind::Gpt2 => 50257,
            TokenizerKind::Cl100kBase => 100277,
            TokenizerKind::O200kBase => 200019,
        }
    }

    /// The `<|endoftext|>` id, written before every document.
    pub fn eot(self) -> u32 {
        match self {
            TokenizerKind::Gpt2 => 50256,
            TokenizerKind::Cl100kBase => 100257,
            TokenizerKind::O200kBase => 199999,
        }
    }

    /// Build the shared tables now, two at once (the encoder from its ranks, then for GPT-2 the vocabulary table of
    /// `gpt2_split`; for GPT-2 also the splitter's class of every char), so that the first document does not wait for them (`prep` calls it while it lists its inputs).
    pub fn warm_up(self) {
        std::thread::scope(|s| {
            if self == TokenizerKind::Gpt2 {
                s.spawn(char_class::warm_up);
            }
            let bpe = self.bpe();
            if self == TokenizerKind::Gpt2 {
                gpt2_split::warm_up_ranks(bpe);
            }
        });
    }

    /// The shared, lazily built encoder (building r50k from its ranks takes ~100 ms, so do it once).
    pub fn bpe(self) -> &'static CoreBPE {
        match self {
            TokenizerKind::Gpt2 => tiktoken_rs::r50k_base_singleton(),
            TokenizerKind::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            TokenizerKind::O200kBase => tiktoken_rs::o200k_base_singleton(),
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TokenizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gpt2" | "r50k_base" => Ok(TokenizerKind::Gpt2),
            "cl100k_base" => Ok(TokenizerKind::Cl100kBase),
            "o200k_base" => Ok(TokenizerKind::O200kBase),
            other => Err(format!("unknown tokenizer `{other}` (expected gpt2, cl100k_base or o200k_base)")),
        }
    }
}

/// Encodes documents. Cheap to clone: a built-in vocabulary is a process-wide singleton, a Hugging Face tokenizer is
/// shared; both are safe to use from many threads.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Builtin(TokenizerKind),
    Hf(Arc<HfTokenizer>),
}

impl From<TokenizerKind> for Tokenizer {
    fn from(kind: TokenizerKind) -> Self {
        Tokenizer::new(kind)
    }
}

impl From<HfTokenizer> for Tokenizer {
    fn from(t: HfTokenizer) -> Self {
        Tokenizer { inner: Inner::Hf(Arc::new(t)) }
    }
}

impl Tokenizer {
    pub fn new(kind: TokenizerKind) -> Self {
        Tokenizer { inner: Inner::Builtin(kind) }
    }

    pub fn gpt2() -> Self {
        Self::new(TokenizerKind::Gpt2)
    }

    /// The built-in vocabulary, if it is one.
    pub fn builtin(&self) -> Option<TokenizerKind> {
        match &self.inner {
            Inner::Builtin(k) => Some(*k),
            Inner::Hf(_) => None,
        }
    }

    /// The Hugging Face tokenizer, if it is one.
    pub fn hf(&self) -> Option<&HfTokenizer> {
        match &self.inner {
            Inner::Builtin(_) => None,
            Inner::Hf(t) => Some(t),
        }
    }

    /// 1 + the largest token id.
    pub fn vocab_size(&self) -> u32 {
        match &self.inner {
            Inner::Builtin(k) => k.vocab_size(),
            Inner::Hf(t) => t.vocab_size(),
        }
    }

    /// Bytes per token in a shard: 2 when every id fits in u16, else 4.
    pub fn token_bytes(&self) -> usize {
        crate::shards::TokenWidth::for_vocab(self.vocab_size()).bytes()
    }

    /// The document boundary token: `<|endoftext|>` (built-in), or the HF tokenizer's BOS / EOS (`info().boundary`).
    pub fn eot(&self) -> u32 {
        match &self.inner {
            Inner::Builtin(k) => k.eot(),
            Inner::Hf(t) => t.boundary().0,
        }
    }

    /// What a manifest records of it.
    pub fn info(&self) -> TokenizerInfo {
        match &self.inner {
            Inner::Builtin(k) => (*k).into(),
            Inner::Hf(t) => TokenizerInfo {
                name: "hf".into(),
                vocab_size: t.vocab_size(),
                eot: t.boundary().0,
                boundary: t.boundary().1,
                hf: Some(t.record().clone()),
            },
        }
    }

    /// Its identity (a built-in name, or tokenizer.json's sha256).
    pub fn id(&self) -> TokenizerId {
        self.info().id().expect("a loaded tokenizer has an identity")
    }

    /// One line for messages (`gpt2`, `hf:REPO (tokenizer.json sha256 ..., N ids)`).
    pub fn describe(&self) -> String {
        self.info().describe()
    }

    /// The files that must travel with ids made by it (tokenizer.json, tokenizer_config.json); none for a built-in
    /// vocabulary.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        match &self.inner {
            Inner::Builtin(_) => Vec::new(),
            Inner::Hf(t) => t.files(),
        }
    }

    /// Write `files()` into `dir` (each atomically), so the directory holds exactly this tokenizer.
    pub fn write_files(&self, dir: &Path) -> Result<(), TokenizerError> {
        for (name, bytes) in self.files() {
            let path = dir.join(name);
            crate::util::write_atomic(&path, bytes)
                .map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
        }
        Ok(())
    }

    /// The tokens a document starts with before its text (an HF tokenizer's BOS); none for tiktoken, whose
    /// `<|endoftext|>` separates documents rather than opening them (build-nanogpt's HellaSwag contexts have none).
    pub fn document_prefix(&self) -> &[u32] {
        match &self.inner {
            Inner::Builtin(_) => &[],
            Inner::Hf(t) => &t.record().prepend,
        }
    }

    /// Build the shared tables now (see [`TokenizerKind::warm_up`]; an HF tokenizer chooses its encoder and builds
    /// the fast path's tables).
    pub fn warm_up(&self) {
        match &self.inner {
            Inner::Builtin(k) => k.warm_up(),
            Inner::Hf(t) => t.warm_up(),
        }
    }

    /// Which code encodes text, in one line for `prep`'s log: tiktoken's vocabulary (GPT-2 through the hand-written
    /// splitter), or [`HfTokenizer::encoder`].
    pub fn encoder(&self) -> String {
        match &self.inner {
            Inner::Builtin(TokenizerKind::Gpt2) => "tiktoken-rs ranks, hand-written GPT-2 split and piece cache".into(),
            Inner::Builtin(_) => "tiktoken-rs".into(),
            Inner::Hf(t) => t.encoder(),
        }
    }

    /// The ids of `text` alone, special-token strings treated as ordinary text (tiktoken's `encode_ordinary`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// A document as the model's pretraining saw it, appended to `out`: built-in vocabularies as fineweb.py does
    /// (`<|endoftext|>` first, then the text), HF tokenizers with their own boundary tokens (`hf`).
    pub fn encode_document_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match &self.inner {
            Inner::Builtin(k) => {
                out.push(k.eot());
                self.encode_into(text, out)
            }
            Inner::Hf(t) => t.encode_document_into(text, out),
        }
    }

    /// `encode(text)` appended to `out`. GPT-2 goes through the hand-written pre-tokenizer and piece cache of
    /// `gpt2_split` (same tokens, ~2x faster than tiktoken-rs's regex); the other built-ins through tiktoken-rs.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match &self.inner {
            Inner::Builtin(TokenizerKind::Gpt2) => gpt2_split::encode_into(TokenizerKind::Gpt2.bpe(), text, out),
            Inner::Builtin(k) => out.extend(k.bpe().encode_ordinary(text)),
            Inner::Hf(t) => return t.encode_into(text, out),
        }
        Ok(())
    }

    /// Decode ids back to text (lossy on invalid UTF-8 boundaries, as samples may cut mid-character). Ids outside the
    /// vocabulary (padded logits) decode as a visible `<|unk:ID|>`, never a panic.
    pub fn decode(&self, ids: &[u32]) -> String {
        if let Some(text) = self.decode_run(ids) {
            return text;
        }
        // Runs of ids that decode, with a marker for each one that does not.
        let (mut text, mut run) = (String::new(), Vec::new());
        let flush = |run: &mut Vec<u32>, text: &mut String| {
            if !run.is_empty() {
                let piece = self.decode_run(run);
                text.push_str(&piece.unwrap_or_else(|| run.iter().map(|id| format!("<|unk:{id}|>")).collect()));
                run.clear();
            }
        };
        for &id in ids {
            if self.decode_run(&[id]).is_some() {
                run.push(id);
            } else {
                flush(&mut run, &mut text);
                text.push_str(&format!("<|unk:{id}|>"));
            }
        }
        flush(&mut run, &mut text);
        text
    }

    /// `ids` as text, `None` if any of them has no text.
    fn decode_run(&self, ids: &[u32]) -> Option<String> {
        match &self.inner {
            Inner::Builtin(k) => k.bpe().decode_bytes(ids).ok().map(|b| String::from_utf8_lossy(&b).into_owned()),
            Inner::Hf(t) if ids.iter().all(|&id| id < t.vocab_size()) => t.decode(ids),
            Inner::Hf(_) => None,
        }
    }

    /// The tokenizer a shard directory's manifest records: a built-in one by name, or its copy of tokenizer.json
    /// (and tokenizer_config.json), checked against the recorded sha256 and boundary rule. `what` names the record's
    /// owner in errors (`shards/x/manifest.json`).
    pub fn recorded(dir: &Path, info: &TokenizerInfo, what: &str) -> Result<Tokenizer, TokenizerError> {
        if let Some(kind) = info.builtin() {
            return Ok(Tokenizer::new(kind));
        }
        let Some(hf) = &info.hf else {
            return Err(TokenizerError::Unsupported(format!("{what}: {}", info.check().unwrap_err())));
        };
        let loaded: Tokenizer = HfTokenizer::load_path(&dir.join(&hf.file), &hf.source)?.into();
        let found = loaded.info();
        let found_hf = found.hf.as_ref().expect("an HF tokenizer records itself");
        if found_hf.sha256 != hf.sha256 {
            return Err(TokenizerError::Changed {
                path: dir.join(&hf.file).display().to_string(),
                found: found_hf.sha256.clone(),
                manifest: what.to_string(),
                expected: hf.sha256.clone(),
            });
        }
        if !found.same_as(info) {
            return Err(TokenizerError::Unsupported(format!(
                "{what}: the tokenizer files in {} give documents the boundary `{}`, the record says `{}`; re-create \
                 the directory with `tokenmill prep`",
                dir.display(),
                found_hf.rule,
                hf.rule
            )));
        }
        Ok(loaded)
    }
}
