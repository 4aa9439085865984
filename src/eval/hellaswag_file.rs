//! The HellaSwag eval file: byte-compatible with llm.c (`dev/data/data_common.py::write_evalfile`, read by
//! `llmc/dataloader.h`'s EvalLoader). This module owns both directions of the format (encode and validated decode)
//! and the (4, T) token rows + mask that build-nanogpt's `render_example` scores; it knows nothing of where the
//! tasks came from (that is `pipelines::hellaswag`) or of models (that is `eval::hellaswag`).
//!
//! ```text
//! offset 0    : 256 x int32 LE header
//!               [0] magic 20240522   [1] version 1   [2] number of examples N
//!               [3] longest example in bytes
//!               [4] 0: GPT-2 token ids (llm.c's files) | 1: a Hugging Face tokenizer's, identified by
//!               [5..13] the sha256 of its tokenizer.json (32 bytes) and [13] its vocabulary size
//!               [14..256] zero
//! offset 1024 : N examples, each a stream of uint16 LE:
//!               START_EXAMPLE (65535), EXAMPLE_BYTES (of this whole example, these fields included),
//!               EXAMPLE_INDEX, LABEL, NUM_COMPLETIONS (4),
//!               NUM context tokens, the context tokens,
//!               then per completion: NUM ending tokens, the ending tokens
//! ```
//! Everything is a u16, so the index, the example size and every token id must stay below 2^16 (token 65535 is the
//! delimiter): GPT-2's vocabulary fits, and any Hugging Face tokenizer of at most 65535 ids (SmolLM2's 49152, Llama-2's
//! 32000), which the header records (llm.c reads only [0..4]). Files are written once (temp name, fsync, rename).

use std::path::{Path, PathBuf};

use crate::tokenizer::{TokenizerId, TokenizerKind};
use crate::util::{io_at, PathIoError};

pub const MAGIC: i32 = 20240522;
pub const VERSION: i32 = 1;
pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;
/// `<START_EXAMPLE>`: the largest u16, which is why no token id may equal it.
pub const START_EXAMPLE: u16 = u16::MAX;
/// HellaSwag always has 4 candidate endings; llm.c's loader asserts the same.
pub const NUM_COMPLETIONS: usize = 4;
/// The u16 fields before the context tokens: delimiter, bytes, index, label, completions, context length.
const FIXED_FIELDS: usize = 6;
/// Header [4]: which tokenizer's ids the file holds.
const TOKENIZER_GPT2: i32 = 0;
const TOKENIZER_HF: i32 = 1;

/// The name `prep hellaswag` gives the file (pipelines/hellaswag.toml); what a directory is searched for first.
pub const DEFAULT_FILE: &str = "hellaswag_val.bin";

/// The command whose output this file is; every "corrupt file" error points at it.
const REBUILD: &str = "re-run `tokenmill prep hellaswag`";

#[derive(Debug, thiserror::Error)]
pub enum HellaswagFileError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(
        "{dir}: no {DEFAULT_FILE} and {found} other .bin files (one would be used); give the eval file itself, or the \
         directory `tokenmill prep hellaswag --out DIR` wrote"
    )]
    NoFileInDir { dir: String, found: usize },
    #[error("{path}: file is {len} bytes, shorter than the 1024-byte header; not a HellaSwag eval file ({REBUILD})")]
    TooShort { path: String, len: u64 },
    #[error("{path}: bad magic {magic} (expected {MAGIC}); not a HellaSwag eval file ({REBUILD})")]
    BadMagic { path: String, magic: i32 },
    #[error("{path}: unsupported version {version} (expected {VERSION}) ({REBUILD})")]
    BadVersion { path: String, version: i32 },
    #[error("{path}: header field {field} is {value}, out of range ({REBUILD})")]
    BadHeader { path: String, field: &'static str, value: i32 },
    #[error("{path}: example {index} at byte {offset}: {reason}; the file is truncated or corrupt ({REBUILD})")]
    Corrupt { path: String, index: usize, offset: usize, reason: String },
    #[error("{path}: {len} bytes: the body after the header is not a whole number of u16 ({REBUILD})")]
    OddBody { path: String, len: u64 },
    #[error("{path}: header says {expected} examples but the file holds {actual} ({REBUILD})")]
    CountMismatch { path: String, expected: usize, actual: usize },
    #[error("{path}: {extra} bytes after the last of {count} examples ({REBUILD})")]
    TrailingBytes { path: String, count: usize, extra: usize },
    #[error(
        "{path} holds {file_tokenizer} token ids, but {model} uses {tokenizer} ({vocab} token ids): its HellaSwag \
         score would be meaningless; write the eval file with the model's tokenizer (`tokenmill prep hellaswag \
         --tokenizer DATA_DIR/tokenizer.json`; its vocabulary must fit in u16)"
    )]
    TokenizerMismatch { path: String, file_tokenizer: String, model: String, tokenizer: String, vocab: usize },
    #[error("{path}: header says the longest example is {header} bytes but it is {actual} ({REBUILD})")]
    LongestMismatch { path: String, header: usize, actual: usize },
    #[error("cannot encode example {index}: {reason}")]
    Unencodable { index: usize, reason: String },
}

/// One HellaSwag task, tokenized: a shared context and 4 candidate endings (each already carrying its leading
/// space, as build-nanogpt encodes `" " + ending`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Position in the file (llm.c's `<EXAMPLE_INDEX>`), 0-based.
    pub index: usize,
    /// Which ending is correct, 0..4.
    pub label: usize,
    pub context: Vec<u32>,
    pub endings: [Vec<u32>; NUM_COMPLETIONS],
}

impl Example {
    /// T: the longest context + ending, the width the 4 rows are padded to.
    pub fn row_len(&self) -> usize {
        self.context.len() + self.endings.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Size of this example in the file, its fixed u16 fields included (llm.c's `<EXAMPLE_BYTES>`).
    pub fn encoded_bytes(&self) -> usize {
        2 * (FIXED_FIELDS + self.context.len() + self.endings.iter().map(|e| 1 + e.len()).sum::<usize>())
    }

    /// The (4, T) rows build-nanogpt's `render_example` builds: row i = context ++ ending i, zero-padded to T;
    /// mask is 0 on the context and the padding and 1 on the ending tokens (the positions whose loss is scored,
    /// after the usual one-token shift). Returns (tokens (4*T, row-major), mask (4*T), T).
    pub fn rows(&self) -> (Vec<u32>, Vec<u8>, usize) {
        let t = self.row_len();
        let mut tokens = vec![0u32; NUM_COMPLETIONS * t];
        let mut mask = vec![0u8; NUM_COMPLETIONS * t];
        let c = self.context.len();
        for (i, ending) in self.endings.iter().enumerate() {
            let row = &mut tokens[i * t..(i + 1) * t];
            row[..c].copy_from_slice(&self.context);
            row[c..c + ending.len()].copy_from_slice(ending);
            mask[i * t + c..i * t + c + ending.len()].fill(1);
        }
        (tokens, mask, t)
    }
}

/// A validated HellaSwag eval file, fully in memory (the 10,042-task validation set is 3.6 MB).
#[derive(Clone, Debug)]
pub struct HellaswagFile {
    path: PathBuf,
    examples: Vec<Example>,
    longest_example_bytes: usize,
    /// Whose token ids these are (header [4..14]).
    tokenizer: FileTokenizer,
}

/// The tokenizer an eval file records: GPT-2, or a Hugging Face tokenizer by sha256 and vocabulary size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTokenizer {
    pub id: TokenizerId,
    pub vocab_size: u32,
}

impl FileTokenizer {
    pub fn gpt2() -> Self {
        FileTokenizer { id: TokenizerId::Builtin(TokenizerKind::Gpt2), vocab_size: TokenizerKind::Gpt2.vocab_size() }
    }
}

impl HellaswagFile {
    /// Read and validate `path`: magic, version, counts, every example's delimiter, size, index, label and
    /// completion count, and that the file ends exactly after the last example. A directory (what `prep hellaswag
    /// --out DIR` was given) means the eval file in it.
    pub fn open(path: &Path) -> Result<Self, HellaswagFileError> {
        let path = &Self::file_in(path)?;
        let bytes = std::fs::read(path).map_err(io_at(path))?;
        Self::from_bytes(&bytes, path)
    }

    /// `path` itself, or for a directory its `hellaswag_val.bin` (the default name), else its only `.bin` file.
    fn file_in(path: &Path) -> Result<PathBuf, HellaswagFileError> {
        if !path.is_dir() {
            return Ok(path.to_path_buf());
        }
        let default = path.join(DEFAULT_FILE);
        if default.is_file() {
            return Ok(default);
        }
        let rd = std::fs::read_dir(path).map_err(io_at(path))?;
        let bins: Vec<PathBuf> =
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect();
        match &bins[..] {
            [one] => Ok(one.clone()),
            _ => Err(HellaswagFileError::NoFileInDir { dir: path.display().to_string(), found: bins.len() }),
        }
    }

    /// Refuse to score a model on this file unless its tokenizer is the file's. `real_vocab` is the model's real
    /// vocabulary (`ModelConfig::real_vocab_size`, the tokenizer's id count), `tokenizer` what its checkpoint
    /// recorded, if it did (without a record, the vocabulary sizes must agree).
    pub fn check_tokenizer(
        &self,
        model: &str,
        real_vocab: usize,
        tokenizer: Option<&TokenizerId>,
    ) -> Result<(), HellaswagFileError> {
        let file = &self.tokenizer;
        if tokenizer.is_none_or(|t| *t == file.id) && real_vocab == file.vocab_size as usize {
            return Ok(());
        }
        let named = [TokenizerKind::Gpt2, TokenizerKind::Cl100kBase, TokenizerKind::O200kBase]
            .into_iter()
            .find(|k| k.vocab_size() as usize == real_vocab)
            .map(|k| k.name().to_string());
        let tokenizer = tokenizer.map(|t| t.to_string()).or(named).unwrap_or("another tokenizer".to_string());
        Err(HellaswagFileError::TokenizerMismatch {
            path: self.path.display().to_string(),
            file_tokenizer: match &file.id {
                TokenizerId::Builtin(TokenizerKind::Gpt2) => "GPT-2".to_string(),
                other => other.to_string(),
            },
            model: model.to_string(),
            tokenizer,
            vocab: real_vocab,
        })
    }

    /// Whose token ids the file holds.
    pub fn tokenizer(&self) -> &FileTokenizer {
        &self.tokenizer
    }

    /// Decode a file's bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, HellaswagFileError> {
        let p = || path.display().to_string();
        if bytes.len() < HEADER_BYTES {
            return Err(HellaswagFileError::TooShort { path: p(), len: bytes.len() as u64 });
        }
        let int = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        let (magic, version, count, longest) = (int(0), int(1), int(2), int(3));
        if magic != MAGIC {
            return Err(HellaswagFileError::BadMagic { path: p(), magic });
        }
        if version != VERSION {
            return Err(HellaswagFileError::BadVersion { path: p(), version });
        }
        if !(0..=u16::MAX as i32 + 1).contains(&count) {
            return Err(HellaswagFileError::BadHeader { path: p(), field: "[2] number of examples", value: count });
        }
        if !(0..=u16::MAX as i32).contains(&longest) {
            return Err(HellaswagFileError::BadHeader {
                path: p(),
                field: "[3] longest example bytes",
                value: longest,
            });
        }
        let count = count as usize;
        let tokenizer = match int(4) {
            TOKENIZER_GPT2 => FileTokenizer::gpt2(),
            TOKENIZER_HF => FileTokenizer {
                id: TokenizerId::Hf { sha256: hex::encode(&bytes[5 * 4..13 * 4]) },
                vocab_size: int(13).clamp(0, START_EXAMPLE as i32) as u32,
            },
            other => return Err(HellaswagFileError::BadHeader { path: p(), field: "[4] tokenizer", value: other }),
        };

        let body = &bytes[HEADER_BYTES..];
        if !body.len().is_multiple_of(2) {
            return Err(HellaswagFileError::OddBody { path: p(), len: bytes.len() as u64 });
        }
        let words: Vec<u16> = body.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let mut examples = Vec::with_capacity(count);
        let mut longest_actual = 0usize;
        let mut pos = 0usize; // in u16 words from the end of the header
        while pos < words.len() {
            let index = examples.len();
            let offset = HEADER_BYTES + 2 * pos;
            let corrupt = |reason: String| HellaswagFileError::Corrupt { path: p(), index, offset, reason };
            if index >= count {
                return Err(HellaswagFileError::TrailingBytes { path: p(), count, extra: 2 * (words.len() - pos) });
            }
            if words.len() - pos < FIXED_FIELDS {
                return Err(corrupt(format!(
                    "only {} bytes left, fewer than an example header",
                    2 * (words.len() - pos)
                )));
            }
            if words[pos] != START_EXAMPLE {
                return Err(corrupt(format!("expected <START_EXAMPLE> 65535, found {}", words[pos])));
            }
            let nbytes = words[pos + 1] as usize;
            if !nbytes.is_multiple_of(2)
                || nbytes / 2 < FIXED_FIELDS + NUM_COMPLETIONS
                || pos + nbytes / 2 > words.len()
            {
                return Err(corrupt(format!(
                    "<EXAMPLE_BYTES> {nbytes} is impossible ({} bytes left in the file)",
                    2 * (words.len() - pos)
                )));
            }
            let ex = &words[pos..pos + nbytes / 2];
            if ex[2] as usize != index {
                return Err(corrupt(format!("<EXAMPLE_INDEX> is {}, expected {index}", ex[2])));
            }
            let label = ex[3] as usize;
            if label >= NUM_COMPLETIONS {
                return Err(corrupt(format!("<LABEL> {label} is not in 0..{NUM_COMPLETIONS}")));
            }
            if ex[4] as usize != NUM_COMPLETIONS {
                return Err(corrupt(format!("<NUM_COMPLETIONS> is {}, expected {NUM_COMPLETIONS}", ex[4])));
            }
            // Walk the length-prefixed token runs: the context, then the 4 endings; each must fit in the example.
            let mut cur = FIXED_FIELDS - 1;
            let mut take_run = |what: &str| -> Result<Vec<u32>, HellaswagFileError> {
                let n =
                    *ex.get(cur).ok_or_else(|| corrupt(format!("{what} length lies past <EXAMPLE_BYTES>")))? as usize;
                let run = ex
                    .get(cur + 1..cur + 1 + n)
                    .ok_or_else(|| corrupt(format!("{what} of {n} tokens runs past <EXAMPLE_BYTES> {nbytes}")))?;
                if n == 0 {
                    return Err(corrupt(format!("{what} has no tokens")));
                }
                if let Some(t) = run.iter().position(|&t| t == START_EXAMPLE) {
                    return Err(corrupt(format!("{what} token at position {t} is the delimiter 65535")));
                }
                // The file holds GPT-2 ids: one past GPT-2's vocabulary would score a model's padding rows (or index
                // past a smaller model's embedding), so it is refused here, naming the example.
                let gpt2_ids = TokenizerKind::Gpt2.vocab_size();
                if let Some((t, id)) = run.iter().enumerate().find(|(_, &id)| u32::from(id) >= gpt2_ids) {
                    return Err(corrupt(format!(
                        "{what} token at position {t} is {id}, outside GPT-2's {gpt2_ids} token ids"
                    )));
                }
                cur += 1 + n;
                Ok(run.iter().map(|&t| t as u32).collect())
            };
            let context = take_run("context")?;
            let endings = [take_run("ending 0")?, take_run("ending 1")?, take_run("ending 2")?, take_run("ending 3")?];
            if cur != ex.len() {
                return Err(corrupt(format!("<EXAMPLE_BYTES> is {nbytes} but its fields take {} bytes", 2 * cur)));
            }
            longest_actual = longest_actual.max(nbytes);
            examples.push(Example { index, label, context, endings });
            pos += nbytes / 2;
        }
        if examples.len() != count {
            return Err(HellaswagFileError::CountMismatch { path: p(), expected: count, actual: examples.len() });
        }
        if longest as usize != longest_actual {
            return Err(HellaswagFileError::LongestMismatch {
                path: p(),
                header: longest as usize,
                actual: longest_actual,
            });
        }
        Ok(HellaswagFile { path: path.to_path_buf(), examples, longest_example_bytes: longest_actual, tokenizer })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Header field [3]: the size of the largest example record.
    pub fn longest_example_bytes(&self) -> usize {
        self.longest_example_bytes
    }

    /// The longest context + ending in the file: the model's context length must be at least this to score every
    /// example without truncation (llm.c's loader asserts `context + ending < T`).
    pub fn max_row_len(&self) -> usize {
        self.examples.iter().map(Example::row_len).max().unwrap_or(0)
    }

    /// How many examples have each label.
    pub fn label_counts(&self) -> [usize; NUM_COMPLETIONS] {
        label_counts(&self.examples)
    }
}

/// How many of `examples` have each label.
pub fn label_counts(examples: &[Example]) -> [usize; NUM_COMPLETIONS] {
    let mut counts = [0; NUM_COMPLETIONS];
    for ex in examples {
        counts[ex.label] += 1;
    }
    counts
}

/// Serialise `examples` (GPT-2 token ids) as a complete eval file (header included). Each example's `index` must
/// equal its position, its label must be in 0..4, its context and endings non-empty (the first ending token is
/// predicted from the last context token, and a mean over zero tokens is undefined) and every token id below 65535.
pub fn encode(examples: &[Example]) -> Result<Vec<u8>, HellaswagFileError> {
    encode_for(examples, &FileTokenizer::gpt2())
}

/// [`encode`] for the ids of `tokenizer`, which the header records.
pub fn encode_for(examples: &[Example], tokenizer: &FileTokenizer) -> Result<Vec<u8>, HellaswagFileError> {
    if examples.len() > u16::MAX as usize + 1 {
        return Err(HellaswagFileError::Unencodable {
            index: examples.len() - 1,
            reason: format!("{} examples, but <EXAMPLE_INDEX> is a u16 (at most 65536 examples)", examples.len()),
        });
    }
    let mut words: Vec<u16> = Vec::new();
    let mut longest = 0usize;
    for (position, ex) in examples.iter().enumerate() {
        let bad = |reason: String| HellaswagFileError::Unencodable { index: position, reason };
        if ex.index != position {
            return Err(bad(format!("its index is {} but it is at position {position}", ex.index)));
        }
        if ex.label >= NUM_COMPLETIONS {
            return Err(bad(format!("label {} is not in 0..{NUM_COMPLETIONS}", ex.label)));
        }
        let nbytes = ex.encoded_bytes();
        if nbytes > u16::MAX as usize {
            return Err(bad(format!("it takes {nbytes} bytes, but <EXAMPLE_BYTES> is a u16 (at most 65535)")));
        }
        longest = longest.max(nbytes);
        words.extend_from_slice(&[
            START_EXAMPLE,
            nbytes as u16,
            position as u16,
            ex.label as u16,
            NUM_COMPLETIONS as u16,
        ]);
        let runs = std::iter::once(("context", &ex.context)).chain(
            ex.endings.iter().enumerate().map(|(i, e)| (["ending 0", "ending 1", "ending 2", "ending 3"][i], e)),
        );
        for (what, run) in runs {
            if run.is_empty() {
                return Err(bad(format!("{what} has no tokens")));
            }
            if let Some(&t) = run.iter().find(|&&t| t >= START_EXAMPLE as u32) {
                return Err(bad(format!("{what} has token {t}, which does not fit below the u16 delimiter 65535")));
            }
            words.push(run.len() as u16);
            words.extend(run.iter().map(|&t| t as u16));
        }
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + 2 * words.len());
    let mut header = [0i32; HEADER_INTS];
    header[0] = MAGIC;
    header[1] = VERSION;
    header[2] = examples.len() as i32;
    header[3] = longest as i32;
    match &tokenizer.id {
        TokenizerId::Builtin(TokenizerKind::Gpt2) => {}
        TokenizerId::Hf { sha256 } if sha256.len() == 64 && tokenizer.vocab_size <= START_EXAMPLE as u32 => {
            let sha = hex::decode(sha256).map_err(|e| HellaswagFileError::Unencodable {
                index: 0,
                reason: format!("the tokenizer's sha256 `{sha256}`: {e}"),
            })?;
            header[4] = TOKENIZER_HF;
            for (i, word) in sha.chunks_exact(4).enumerate() {
                header[5 + i] = i32::from_le_bytes(word.try_into().expect("4 bytes"));
            }
            header[13] = tokenizer.vocab_size as i32;
        }
        other => {
            return Err(HellaswagFileError::Unencodable {
                index: 0,
                reason: format!(
                    "{other} ({} ids) does not fit the file (GPT-2, or a Hugging Face tokenizer of at most 65535 ids)",
                    tokenizer.vocab_size
                ),
            })
        }
    }
    for v in header {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    Ok(out)
}

/// Encode `examples` and write them to `path` atomically. Returns the file size in bytes.
pub fn write(path: &Path, examples: &[Example]) -> Result<u64, HellaswagFileError> {
    let bytes = encode(examples)?;
    crate::util::write_atomic(path, &bytes).map_err(io_at(path))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(index: usize, label: usize) -> Example {
        Example { index, label, context: vec![10, 11, 12], endings: [vec![1], vec![2, 3], vec![4, 5, 6], vec![7, 8]] }
    }

    #[test]
    fn rows_pad_to_longest_ending_and_mask_only_endings() {
        let (tokens, mask, t) = example(0, 1).rows();
        assert_eq!(t, 6);
        assert_eq!(&tokens[0..6], &[10, 11, 12, 1, 0, 0]);
        assert_eq!(&mask[0..6], &[0, 0, 0, 1, 0, 0]);
        assert_eq!(&tokens[12..18], &[10, 11, 12, 4, 5, 6]);
        assert_eq!(&mask[12..18], &[0, 0, 0, 1, 1, 1]);
        assert_eq!(mask.iter().map(|&m| m as usize).sum::<usize>(), 1 + 2 + 3 + 2);
    }

    #[test]
    fn encoded_bytes_counts_every_u16_field() {
        // 6 fixed fields + 3 context + (1+1) + (1+2) + (1+3) + (1+2) = 21 u16s.
        assert_eq!(example(0, 0).encoded_bytes(), 42);
        let bytes = encode(&[example(0, 2)]).unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + 42);
        assert_eq!(u16::from_le_bytes([bytes[HEADER_BYTES + 2], bytes[HEADER_BYTES + 3]]), 42);
    }

    #[test]
    fn rejects_example_bytes_pointing_past_its_fields() {
        let mut bytes = encode(&[example(0, 0), example(1, 3)]).unwrap();
        // Claim the first example is 2 bytes longer than its fields: its token runs no longer end at its end.
        bytes[HEADER_BYTES + 2..HEADER_BYTES + 4].copy_from_slice(&44u16.to_le_bytes());
        let err = HellaswagFile::from_bytes(&bytes, Path::new("x.bin")).unwrap_err();
        assert!(matches!(err, HellaswagFileError::Corrupt { index: 0, .. }), "{err}");
    }

    #[test]
    fn rejects_token_equal_to_delimiter() {
        let mut ex = example(0, 0);
        ex.endings[2][1] = 65535;
        let err = encode(&[ex]).unwrap_err();
        assert!(err.to_string().contains("ending 2"), "{err}");
    }
}
