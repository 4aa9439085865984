//! The token shard file: byte-compatible with llm.c (`dev/data/data_common.py`, `llmc/dataloader.h`).
//!
//! ```text
//! offset 0     : 256 x int32 little-endian header
//!                [0] magic   20240520 (u16 tokens, GPT-2) | 20240801 (u32 tokens, larger vocabularies)
//!                [1] version 1                            | 7
//!                [2] number of tokens N
//!                [3..256] zero
//! offset 1024  : N tokens, little-endian u16 (or u32)
//! ```
//! A file is written once (temp name, fsync, rename) and never modified afterwards, so readers may mmap it.
//! The full contract is docs/SHARD_FORMAT.md.

use std::path::Path;

pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;
pub const MAGIC_U16: i32 = 20240520;
pub const VERSION_U16: i32 = 1;
pub const MAGIC_U32: i32 = 20240801;
pub const VERSION_U32: i32 = 7;

/// Width of one token on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    pub fn for_token_bytes(bytes: usize) -> TokenWidth {
        if bytes == 2 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    /// The width a vocabulary of `vocab_size` ids needs: u16 when every id fits, else u32.
    pub fn for_vocab(vocab_size: u32) -> TokenWidth {
        if vocab_size <= u16::MAX as u32 + 1 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    fn magic_version(self) -> (i32, i32) {
        match self {
            TokenWidth::U16 => (MAGIC_U16, VERSION_U16),
            TokenWidth::U32 => (MAGIC_U32, VERSION_U32),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: file is {len} bytes, shorter than the 1024-byte shard header (re-run `tokenmill prep`)")]
    TooShort { path: String, len: u64 },
    #[error("{path}: bad magic {magic} (expected {MAGIC_U16} for u16 or {MAGIC_U32} for u32 token shards); not a tokenmill/llm.c shard")]
    BadMagic { path: String, magic: i32 },
    #[error("{path}: unsupported version {version} for magic {magic} (expected {expected})")]
    BadVersion { path: String, magic: i32, version: i32, expected: i32 },
    #[error("{path}: header says {tokens} tokens ({expected} bytes with header) but the file has {actual} bytes; the shard is truncated or corrupt (re-run `tokenmill prep`)")]
    SizeMismatch { path: String, tokens: u64, expected: u64, actual: u64 },
    #[error("{path}: negative token count {count} in header")]
    NegativeCount { path: String, count: i32 },
    #[error(
        "{path}: token {token} at index {index} is >= vocab size {vocab}; the shard was written with another tokenizer"
    )]
    TokenOutOfRange { path: String, index: usize, token: u32, vocab: u32 },
    #[error(
        "{path}: xxh3 {found}, the manifest says {expected}: the shard is damaged (`tokenmill verify DIR` checks every \
         shard; re-create the directory with `tokenmill prep`, --overwrite or a new --out)"
    )]
    ChecksumMismatch { path: String, found: String, expected: String },
    #[error(
        "{path}: the header says {header} tokens, the manifest {listed}: the shard is not the one the manifest lists"
    )]
    CountMismatch { path: String, header: u64, listed: u64 },
    #[error(
        "{path}: the header says {header:?} tokens, the manifest {listed:?}: the shard is not the one the manifest \
         lists (re-create the directory with `tokenmill prep`)"
    )]
    WidthMismatch { path: String, header: TokenWidth, listed: TokenWidth },
    #[error("{path}: not a valid .npy uint16 array: {reason}")]
    BadNpy { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ShardError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ShardError::Io { path: path.display().to_string(), source }
    }
}

/// A parsed shard header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub width: TokenWidth,
    pub num_tokens: u64,
}

impl ShardHeader {
    pub fn new(width: TokenWidth, num_tokens: u64) -> Self {
        ShardHeader { width, num_tokens }
    }

    /// The 1024 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let (magic, version) = self.width.magic_version();
        let mut ints = [0i32; HEADER_INTS];
        ints[0] = magic;
        ints[1] = version;
        ints[2] = i32::try_from(self.num_tokens).expect("shard token count must fit in int32 (llm.c header)");
        let mut out = [0u8; HEADER_BYTES];
        for (i, v) in ints.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parse and validate the header of `path`, whose total size is `file_len` bytes.
    pub fn decode(bytes: &[u8], file_len: u64, path: &Path) -> Result<Self, ShardError> {
        let p = || path.display().to_string();
        if bytes.len() < HEADER_BYTES || file_len < HEADER_BYTES as u64 {
            return Err(ShardError::TooShort { path: p(), len: file_len });
        }
        let int = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        let (magic, version, count) = (int(0), int(1), int(2));
        let width = match magic {
            MAGIC_U16 => TokenWidth::U16,
            MAGIC_U32 => TokenWidth::U32,
            _ => return Err(ShardError::BadMagic { path: p(), magic }),
        };
        let expected_version = width.magic_version().1;
        if version != expected_version {
            return Err(ShardError::BadVersion { path: p(), magic, version, expected: expected_version });
        }
        if count < 0 {
            return Err(ShardError::NegativeCount { path: p(), count });
        }
        let num_tokens = count as u64;
        let expected = HEADER_BYTES as u64 + num_tokens * width.bytes() as u64;
        if expected != file_len {
            return Err(ShardError::SizeMismatch { path: p(), tokens: num_tokens, expected, actual: file_len });
        }
        Ok(ShardHeader { width, num_tokens })
    }
}

/// Serialise tokens as the little-endian body of a shard of `width`.
pub fn encode_tokens(tokens: &[u32], width: TokenWidth, out: &mut Vec<u8>) {
    // Sized once, then filled in place: a loop the compiler vectorizes (prep encodes every token here).
    let start = out.len();
    out.resize(start + tokens.len() * width.bytes(), 0);
    let dst = &mut out[start..];
    match width {
        TokenWidth::U16 => {
            for (d, &t) in dst.chunks_exact_mut(2).zip(tokens) {
                debug_assert!(t <= u16::MAX as u32);
                d.copy_from_slice(&(t as u16).to_le_bytes());
            }
        }
        TokenWidth::U32 => {
            for (d, &t) in dst.chunks_exact_mut(4).zip(tokens) {
                d.copy_from_slice(&t.to_le_bytes());
            }
        }
    }
}

/// Read a whole shard into memory (tests and tools; training uses the mmap loader).
pub fn read_shard(path: &Path) -> Result<(ShardHeader, Vec<u32>), ShardError> {
    let bytes = std::fs::read(path).map_err(|e| ShardError::io(path, e))?;
    let header = ShardHeader::decode(&bytes, bytes.len() as u64, path)?;
    let body = &bytes[HEADER_BYTES..];
    let tokens = match header.width {
        TokenWidth::U16 => body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
        TokenWidth::U32 => body.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
    };
    Ok((header, tokens))
}
