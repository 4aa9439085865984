//! Where documents come from: the input files (parquet, JSON lines `{"text": ...}`, plain text with one document per
//! file), their order, their identity for resume, and the errors reading them gives, each naming the file and the
//! row or line where it can. How a file is cut into units of parallel work and decoded: `segments`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Parquet,
    Jsonl,
    Text,
}

impl SourceKind {
    pub fn from_path(path: &Path) -> Option<SourceKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".parquet") {
            Some(SourceKind::Parquet)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
            Some(SourceKind::Jsonl)
        } else if name.ends_with(".txt") || name.ends_with(".text") || name.ends_with(".md") {
            Some(SourceKind::Text)
        } else {
            None
        }
    }
}

/// One input file of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub kind: SourceKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable parquet file: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: reading record batch at row {row}: {source}")]
    Arrow {
        path: String,
        row: u64,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: no column `{column}` (columns: {available}); pick one with --text-column")]
    MissingColumn { path: String, column: String, available: String },
    #[error("{path}: column `{column}` has type {data_type}, expected a string column")]
    NotText { path: String, column: String, data_type: String },
    #[error("{path}:{line}: {message}")]
    Json { path: String, line: u64, message: String },
    #[error("{path}: file is not valid UTF-8 text (byte {offset})")]
    Utf8 { path: String, offset: usize },
    #[error("{path}: unsupported input (expected .parquet, .jsonl/.json/.ndjson or .txt)")]
    Unsupported { path: String },
    #[error("{path}: input does not exist")]
    Missing { path: String },
    #[error(
        "{path}: not a regular file ({kind}); an input is a file of text, jsonl or parquet that ends (a device such \
         as /dev/zero never does): give the file itself"
    )]
    NotAFile { path: String, kind: &'static str },
    #[error("{path}: the input cannot be opened: {source} (a symbolic link that loops or points nowhere?)")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {place}: the text is null; every document needs a string (null texts are refused, not read as \
         empty documents: remove or fill that {unit})"
    )]
    NullText { path: String, place: String, unit: &'static str },
    #[error("{path}: {place}: {source}")]
    Tokenize {
        path: String,
        place: String,
        #[source]
        source: Box<crate::tokenizer::TokenizerError>,
    },
    #[error(
        "{0}: no input files: a directory contributes its .parquet, .jsonl/.json/.ndjson and .txt/.text/.md files \
         (not README/LICENSE files, not subdirectories: pass those themselves)"
    )]
    Empty(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |e| SourceError::Io { path: path.display().to_string(), source: e }
}

/// Expand files and directories into the ordered list of input files. Directories contribute their supported files
/// sorted by name (not recursively), so the document order — and therefore the shards — never depends on the
/// file system's listing order.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<SourceFile>, SourceError> {
    let mut out = Vec::new();
    for input in inputs {
        if let Err(e) = std::fs::metadata(input) {
            // A path that is there but cannot be followed (a symlink loop, a dangling link, no permission) says why.
            return Err(match std::fs::symlink_metadata(input) {
                Err(_) if e.kind() == std::io::ErrorKind::NotFound => {
                    SourceError::Missing { path: input.display().to_string() }
                }
                _ => SourceError::Unreadable { path: input.display().to_string(), source: e },
            });
        }
        let meta = std::fs::metadata(input).map_err(io_err(input))?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(SourceError::NotAFile { path: input.display().to_string(), kind: file_kind(&meta) });
        }
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(io_err(input))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && SourceKind::from_path(p).is_some() && !is_repo_doc(p))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(SourceError::Empty(input.display().to_string()));
            }
            out.extend(files.into_iter().map(|p| SourceFile { kind: SourceKind::from_path(&p).unwrap(), path: p }));
        } else {
            let kind = SourceKind::from_path(input)
                .ok_or_else(|| SourceError::Unsupported { path: input.display().to_string() })?;
            out.push(SourceFile { path: input.clone(), kind });
        }
    }
    Ok(out)
}

/// What a path that is neither a file nor a directory is (followed through links), for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        } else if t.is_block_device() {
            return "a block device";
        } else if t.is_fifo() {
            return "a named pipe";
        } else if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "not a file"
}

/// Files up to this size are fingerprinted whole; larger ones by their size and both ends. Every prep start (resumes
/// included) fingerprints every input, so this bounds that cost: at most 2 MiB read per file (FineWeb-Edu's 2 GB
/// parquet files: 0.1% of each).
const FINGERPRINT_WHOLE_BYTES: u64 = 2 << 20;
/// How much of each end of a large file the fingerprint reads: a parquet file's footer (schema, row-group offsets,
/// statistics) is at its end, so a rewritten file differs there.
const FINGERPRINT_END_BYTES: u64 = 1 << 20;

/// `xxh3:HEX` identifying a local input's content for `prep`'s resume check (`InputIdentity::content`): xxh3 of the
/// whole file up to 2 MiB, else xxh3 of its size, first and last 1 MiB. Independent of the path and the mtime, so a
/// copied or moved corpus is still recognised.
pub fn fingerprint(path: &Path) -> Result<String, SourceError> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len <= FINGERPRINT_WHOLE_BYTES {
        return Ok(format!("xxh3:{}", crate::util::xxh3_file(path).map_err(io_err(path))?));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; FINGERPRINT_END_BYTES as usize];
    h.update(&len.to_le_bytes());
    f.read_exact(&mut buf).map_err(io_err(path))?;
    h.update(&buf);
    f.seek(SeekFrom::Start(len - FINGERPRINT_END_BYTES)).map_err(io_err(path))?;
    f.read_exact(&mut buf).map_err(io_err(path))?;
    h.update(&buf);
    Ok(format!("xxh3:{:016x}", h.digest()))
}

/// README, LICENSE, CHANGELOG...: a folder's own documentation, not corpus text (skipped when a folder is expanded;
/// named explicitly, such a file is read).
fn is_repo_doc(path: &Path) -> bool {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_ascii_uppercase()).unwrap_or_default();
    ["README", "LICENSE", "LICENCE", "CHANGELOG", "CONTRIBUTING", "NOTICE"].contains(&stem.as_str())
}

/// Number of documents in a file without tokenizing it: parquet from its footer, jsonl by counting non-empty lines.
pub fn count_documents(file: &SourceFile) -> Result<u64, SourceError> {
    let path = &file.path;
    match file.kind {
        SourceKind::Parquet => {
            let f = File::open(path).map_err(io_err(path))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|e| SourceError::Parquet { path: path.display().to_string(), source: e })?;
            Ok(builder.metadata().file_metadata().num_rows() as u64)
        }
        SourceKind::Jsonl => {
            let f = File::open(path).map_err(io_err(path))?;
            let mut n = 0;
            for line in BufReader::new(f).split(b'\n') {
                if !line.map_err(io_err(path))?.iter().all(u8::is_ascii_whitespace) {
                    n += 1;
                }
            }
            Ok(n)
        }
        SourceKind::Text => {
            let blank = std::fs::read(path).map_err(io_err(path))?.iter().all(u8::is_ascii_whitespace);
            Ok(u64::from(!blank))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_content_not_path_and_samples_large_files_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        std::fs::write(&a, &big).unwrap();
        std::fs::write(&b, &big).unwrap();
        let fa = fingerprint(&a).unwrap();
        assert!(fa.starts_with("xxh3:"));
        assert_eq!(fa, fingerprint(&b).unwrap(), "same bytes elsewhere: same input");
        let changed = |at: usize| {
            let mut v = big.clone();
            v[at] ^= 1;
            std::fs::write(&b, &v).unwrap();
            fingerprint(&b).unwrap() != fa
        };
        assert!(changed(10) && changed(big.len() - 10), "an edit in either end is seen");
        assert!(!changed(big.len() / 2), "the middle of a large file is not read (documented)");
        std::fs::write(&b, &big[..1000]).unwrap();
        assert_eq!(fingerprint(&b).unwrap(), format!("xxh3:{}", crate::util::xxh3_file(&b).unwrap()), "small: whole");
    }
}
