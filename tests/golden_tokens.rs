//! Our GPT-2 tokenizer against Python tiktoken's, on real text.
//!
//! tests/fixtures/golden/ was written by scripts/make_golden.py with tiktoken's own r50k_base constructor (its pinned
//! sha256 checked, cross-checked against the data-gym `gpt2` ranks). Two levels:
//! - golden cases: exact ids for FineWeb documents, the start of tiny Shakespeare and tricky strings, so a mismatch
//!   shows the first differing token;
//! - the whole corpus: FineWeb documents and all of tiny Shakespeare, re-tokenized here in fineweb.py's layout (EOT
//!   before each document, u16 LE) and compared by token count and sha256 per file: the 4 parquet files in
//!   tests/fixtures always, all 28 (2,800 documents, and the total) where `TOKENMILL_SHARED_DATA` holds them.
//!
//! The index names its files as shared/data does (`fineweb_legal_pilot/batch_0000NN.parquet`,
//! `tinyshakespeare_input.txt`); [`data_file`] finds them in the repo.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenmill::tokenizer::Tokenizer;

#[path = "common/mod.rs"]
mod common;

#[derive(Deserialize)]
struct Index {
    tokenizer: String,
    ids_file: String,
    encoding: Encoding,
    cases: Vec<Case>,
    corpus: Corpus,
}

#[derive(Deserialize)]
struct Encoding {
    ranks_sha256: String,
    tiktoken_expected_sha256: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    source: Source,
    text_sha256: String,
    offset: usize,
    count: usize,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Source {
    Parquet { file: String, row: usize },
    TextPrefix { file: String, chars: usize },
    Inline { text: String },
}

#[derive(Deserialize)]
struct Corpus {
    fineweb: FinewebDigest,
    tinyshakespeare: StreamDigest,
}

#[derive(Deserialize)]
struct FinewebDigest {
    files: Vec<StreamDigest>,
    documents: usize,
    tokens: usize,
    sha256: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct StreamDigest {
    file: String,
    documents: usize,
    tokens: usize,
    sha256: String,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// Where a file the index names lives: tiny Shakespeare is data/tinyshakespeare.txt (the same bytes), parquet files
/// are in tests/fixtures when vendored, else in the optional shared data; `None` where it is nowhere.
fn data_file(name: &str) -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if name == "tinyshakespeare_input.txt" {
        return Some(repo.join("data/tinyshakespeare.txt"));
    }
    [repo.join("tests/fixtures").join(name), common::shared_data_root().join(name)].into_iter().find(|p| p.exists())
}

fn required(name: &str) -> PathBuf {
    data_file(name).unwrap_or_else(|| panic!("{name}: a golden case's source is not in tests/fixtures"))
}

fn load_index() -> Index {
    let path = golden_dir().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_ids(index: &Index) -> Vec<u32> {
    let path = golden_dir().join(&index.ids_file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 2, 0, "{}: odd length", path.display());
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect()
}

fn read_texts(path: &Path) -> Vec<String> {
    common::read_parquet_texts(path)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// fineweb.py's layout of a run of documents: EOT then the ids, u16 little-endian.
fn layout_u16le(tok: &Tokenizer, docs: &[String]) -> Vec<u8> {
    let per_doc: Vec<Vec<u8>> = docs
        .par_iter()
        .map(|text| {
            let mut ids = Vec::new();
            tok.encode_document_into(text, &mut ids).unwrap();
            ids.iter().flat_map(|&id| u16::try_from(id).expect("GPT-2 ids fit in u16").to_le_bytes()).collect()
        })
        .collect();
    per_doc.concat()
}

fn case_text(source: &Source) -> String {
    match source {
        Source::Parquet { file, row } => read_texts(&required(file)).swap_remove(*row),
        Source::TextPrefix { file, chars } => {
            let path = required(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            text.chars().take(*chars).collect()
        }
        Source::Inline { text } => text.clone(),
    }
}

#[test]
fn fixture_is_tiktokens_r50k() {
    let index = load_index();
    assert_eq!(index.tokenizer, "gpt2");
    assert_eq!(index.encoding.ranks_sha256, index.encoding.tiktoken_expected_sha256);
    assert_eq!(index.encoding.ranks_sha256, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930");
}

#[test]
fn golden_cases_match_tiktoken() {
    let index = load_index();
    let ids = load_ids(&index);
    let tok = Tokenizer::gpt2();
    assert!(index.cases.len() >= 40, "the fixture lost its cases");
    let mut failures = Vec::new();
    for case in &index.cases {
        let text = case_text(&case.source);
        assert_eq!(sha256_hex(text.as_bytes()), case.text_sha256, "{}: the source text changed", case.name);
        let expected = &ids[case.offset..case.offset + case.count];
        let got = tok.encode(&text).unwrap();
        if got != expected {
            let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
            let window = |v: &[u32]| v[at.saturating_sub(3)..(at + 3).min(v.len())].to_vec();
            failures.push(format!(
                "{}: {} ids vs tiktoken's {}; first difference at {at}: ours {:?} tiktoken {:?} (context {:?})",
                case.name,
                got.len(),
                expected.len(),
                window(&got),
                window(expected),
                tok.decode(&expected[at.saturating_sub(3)..(at + 3).min(expected.len())]),
            ));
            continue;
        }
        assert_eq!(tok.decode(&got), text, "{}: decode(encode(text)) != text", case.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from tiktoken:\n{}",
        failures.len(),
        index.cases.len(),
        failures.join("\n")
    );
}

/// FineWeb documents (all 2,800, 19.5 MB of text, 4.36 M tokens, where the shared data is present; the 400 of
/// tests/fixtures otherwise) and tiny Shakespeare, tokenized in parallel; ~3 s of tokenization on 2 cores for all.
#[test]
fn whole_corpus_matches_tiktoken() {
    let index = load_index();
    let tok = Tokenizer::gpt2();

    // Every file of the index found here, in the index's order: the vendored ones always.
    let found: Vec<(&StreamDigest, PathBuf)> =
        index.corpus.fineweb.files.iter().filter_map(|f| data_file(&f.file).map(|p| (f, p))).collect();
    assert!(found.len() >= common::FINEWEB_FIXTURE_FILES.len(), "the vendored parquet files are in the index");
    let digests: Vec<(StreamDigest, Vec<u8>)> = found
        .par_iter()
        .map(|(expected, path)| {
            let texts = read_texts(path);
            let bytes = layout_u16le(&tok, &texts);
            let digest = StreamDigest {
                file: expected.file.clone(),
                documents: texts.len(),
                tokens: bytes.len() / 2,
                sha256: sha256_hex(&bytes),
            };
            (digest, bytes)
        })
        .collect();

    let mismatched: Vec<String> = digests
        .iter()
        .zip(&found)
        .filter(|((got, _), (expected, _))| got != *expected)
        .map(|((got, _), (expected, _))| format!("{}: ours {got:?}\n  tiktoken {expected:?}", expected.file))
        .collect();
    assert!(mismatched.is_empty(), "files whose token stream differs from tiktoken's:\n{}", mismatched.join("\n"));

    // The whole stream's digest needs every file.
    if found.len() == index.corpus.fineweb.files.len() {
        let mut all = Sha256::new();
        for (_, bytes) in &digests {
            all.update(bytes);
        }
        let documents: usize = digests.iter().map(|(d, _)| d.documents).sum();
        let tokens: usize = digests.iter().map(|(d, _)| d.tokens).sum();
        assert_eq!(documents, 2800);
        assert_eq!((documents, tokens), (index.corpus.fineweb.documents, index.corpus.fineweb.tokens));
        assert_eq!(hex::encode(all.finalize()), index.corpus.fineweb.sha256, "whole FineWeb stream");
    } else {
        eprintln!(
            "skipped the whole-FineWeb digest: {} of its {} files here, in tests/fixtures (each checked); the rest are \
             read from {} (TOKENMILL_SHARED_DATA), which lacks them",
            found.len(),
            index.corpus.fineweb.files.len(),
            common::shared_data_root().display()
        );
    }

    let expected = &index.corpus.tinyshakespeare;
    let path = required(&expected.file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = layout_u16le(&tok, &[text]);
    let got =
        StreamDigest { file: expected.file.clone(), documents: 1, tokens: bytes.len() / 2, sha256: sha256_hex(&bytes) };
    assert_eq!(&got, expected, "tiny Shakespeare");
}
