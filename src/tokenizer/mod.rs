//! The tokenizers tokenmill can write shards with: GPT-2 BPE (r50k_base, tiktoken's `gpt2`) by default, and
//! tiktoken's cl100k_base / o200k_base for 32-bit shards. The vocabularies and merges are tiktoken-rs's, the
//! reference the golden tests hold us to (tests/golden_tokens.rs); GPT-2's pre-tokenizer regex is replaced by a
//! hand-written scanner with a piece cache (`gpt2_split`), proven to split identically.

use std::fmt;
use std::str::FromStr;

use tiktoken_rs::CoreBPE;

mod gpt2_split;
pub mod hf_files;

pub use gpt2_split::{piece_counts, PieceCounts};

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

    /// Bytes per token in a shard: 2 when every id fits in u16 (GPT-2), else 4.
    pub fn token_bytes(self) -> usize {
        if self.vocab_size() <= u16::MAX as u32 + 1 {
            2
        } else {
            4
        }
    }

    /// Build the shared tables now, two at once (the encoder from its ranks, then for GPT-2 the vocabulary table of
    /// `gpt2_split`; for GPT-2 also the splitter's class of every char), so that the first document does not wait for them (`prep` calls it while it lists its inputs).
    pub fn warm_up(self) {
        std::thread::scope(|s| {
            if self == TokenizerKind::Gpt2 {
                s.spawn(gpt2_split::warm_up);
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

/// Encodes documents. Cheap to copy; the encoder itself is a process-wide singleton, safe to use from many threads.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer {
    kind: TokenizerKind,
}

impl Tokenizer {
    pub fn new(kind: TokenizerKind) -> Self {
        Tokenizer { kind }
    }

    pub fn gpt2() -> Self {
        Self::new(TokenizerKind::Gpt2)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn eot(&self) -> u32 {
        self.kind.eot()
    }

    /// Plain BPE of `text`, special-token strings treated as ordinary text (tiktoken's `encode_ordinary`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// A document as fineweb.py tokenizes it: `<|endoftext|>` first, then the text, appended to `out`.
    pub fn encode_document_into(&self, text: &str, out: &mut Vec<u32>) {
        out.push(self.eot());
        self.encode_into(text, out);
    }

    /// `encode_ordinary(text)` appended to `out`. GPT-2 goes through the hand-written pre-tokenizer and piece
    /// cache of `gpt2_split` (same tokens, ~2x faster than tiktoken-rs's regex); the others through tiktoken-rs.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match self.kind {
            TokenizerKind::Gpt2 => gpt2_split::encode_into(self.kind.bpe(), text, out),
            _ => out.extend(self.kind.bpe().encode_ordinary(text)),
        }
    }

    /// Decode ids back to text (lossy on invalid UTF-8 boundaries, as samples may cut mid-character).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self.kind.bpe().decode_bytes(ids) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => {
                // Ids outside the vocabulary (padded logits) decode as a visible marker, never a panic.
                ids.iter()
                    .map(|&id| match self.kind.bpe().decode_bytes(&[id]) {
                        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                        Err(_) => format!("<|unk:{id}|>"),
                    })
                    .collect()
            }
        }
    }
}
