//! `prep fineweb` end to end on real FineWeb parquet files (the 4 of tests/fixtures, 400 documents, 659K tokens):
//! manifest, order independence of the thread count, resume after SIGKILL and after `--shards N` (byte-identical),
//! corrupt input, other input formats.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokenmill::pipelines::fineweb::{self, Input, PrepOptions};
use tokenmill::pipelines::sources::expand_inputs;
use tokenmill::shards::format::read_shard;
use tokenmill::shards::{DataLoader, LoaderConfig, Manifest, Split};
use tokenmill::tokenizer::{Tokenizer, TokenizerKind};

#[path = "common/mod.rs"]
mod common;

fn parquet_dir() -> PathBuf {
    common::fineweb_fixture_dir()
}

fn opts(input: Input, out: &Path, shard_size: u64) -> PrepOptions {
    common::prep_options(input, out, "edufineweb", TokenizerKind::Gpt2.into(), shard_size)
}

fn local(paths: &[PathBuf]) -> Input {
    Input::Local(expand_inputs(paths).unwrap())
}

/// Every shard file of a directory, by name.
fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    dir_bytes(dir).into_iter().filter(|(name, _)| name.ends_with(".bin")).collect()
}

/// Reference run, computed once per test binary.
fn full_run(shard_size: u64) -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let report = fineweb::prep(&opts(local(&[parquet_dir()]), dir.path(), shard_size)).unwrap();
    assert!(report.complete);
    (dir, report.manifest)
}

#[test]
fn manifest_describes_the_shards_and_tokens_follow_fineweb_py() {
    let (dir, m) = full_run(200_000);
    assert_eq!(m.tokenizer.vocab_size, 50257);
    assert_eq!(m.tokenizer.eot, 50256);
    assert_eq!(m.shards[0].split, Split::Val);
    assert!(m.shards[1..].iter().all(|s| s.split == Split::Train));
    assert!(m.shards[..m.shards.len() - 1].iter().all(|s| s.tokens == 200_000));
    assert_eq!(m.shards.len(), 4, "659,453 tokens");
    assert_eq!(m.sources.len(), 4);
    assert!(m.sources.iter().all(|s| s.rows == 100), "each parquet file has 100 rows");
    assert!(m.complete);

    // Shard contents: checksums match, and the concatenation is exactly EOT + BPE(text) per document in order.
    let mut stream = Vec::new();
    for s in &m.shards {
        let bytes = std::fs::read(dir.path().join(&s.file)).unwrap();
        assert_eq!(format!("{:016x}", xxhash_rust_free_xxh3(&bytes)), s.xxh3, "{}", s.file);
        let (_, toks) = read_shard(&dir.path().join(&s.file)).unwrap();
        stream.extend(toks);
    }
    assert_eq!(stream.len() as u64, m.tokens_in(Split::Train) + m.tokens_in(Split::Val));
    let docs = stream.iter().filter(|&&t| t == 50256).count();
    assert_eq!(docs, 400, "one <|endoftext|> before each of the 400 documents");
    assert_eq!(stream[0], 50256);
    // The first document, re-encoded on its own, is the stream's prefix.
    let first_doc_end = stream[1..].iter().position(|&t| t == 50256).unwrap() + 1;
    let text = Tokenizer::gpt2().decode(&stream[1..first_doc_end]);
    assert_eq!(Tokenizer::gpt2().encode(&text).unwrap(), stream[1..first_doc_end].to_vec());
}

/// xxh3 through the crate's writer helper (the test must not trust the manifest's own numbers blindly).
fn xxhash_rust_free_xxh3(bytes: &[u8]) -> u64 {
    u64::from_str_radix(&tokenmill::util::xxh3_hex(bytes), 16).unwrap()
}

#[test]
fn output_does_not_depend_on_the_thread_count() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut o = opts(local(&[parquet_dir()]), a.path(), 150_000);
    o.threads = 1;
    fineweb::prep(&o).unwrap();
    o.threads = 2;
    o.out = b.path().to_path_buf();
    fineweb::prep(&o).unwrap();
    assert_eq!(shard_bytes(a.path()), shard_bytes(b.path()));
}

#[test]
fn stop_after_n_shards_then_continue_is_byte_identical() {
    let (full, full_manifest) = full_run(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(local(&[parquet_dir()]), dir.path(), 100_000);
    o.max_shards = Some(3);
    let r = fineweb::prep(&o).unwrap();
    assert_eq!(r.manifest.shards.len(), 3);
    assert!(!r.complete);
    // A shard boundary falls inside a document: the cursor must say how far into it.
    assert!(r.manifest.resume.tokens_into_document > 0 || r.manifest.resume.first_unfinished_document > 0);
    // Re-running with the same limit does nothing.
    let again = fineweb::prep(&o).unwrap();
    assert_eq!(again.tokens_written, 0);
    o.max_shards = None;
    let r = fineweb::prep(&o).unwrap();
    assert_eq!(r.shards_before, 3);
    assert_eq!(shard_bytes(dir.path()), shard_bytes(full.path()));
    assert_eq!(r.manifest.shards, full_manifest.shards);
    assert_eq!(r.manifest.sources, full_manifest.sources);
}

#[test]
fn killed_run_resumes_to_byte_identical_shards() {
    let (full, _) = full_run(20_000);
    let out = tempfile::tempdir().unwrap();
    let args = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tokenmill"));
        c.args(["prep", "fineweb", "--no-progress", "--shard-size", "20000", "--threads", "1", "--input"])
            .arg(parquet_dir())
            .arg("--out")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    // Kill it (SIGKILL: no cleanup runs) once a few shards are finished and more are pending.
    let mut child = args(out.path()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_at = None;
    while Instant::now() < deadline {
        if let Ok(m) = Manifest::load(out.path()) {
            if m.shards.len() >= 5 {
                child.kill().unwrap();
                killed_at = Some(m.shards.len());
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    let killed_at = killed_at.expect("the run was killed mid-way");
    let m = Manifest::load(out.path()).unwrap();
    assert!(!m.complete, "killed after {killed_at} shards, before the end");
    assert!(m.shards.len() < full_shard_count(full.path()), "the kill left work to resume");
    // Every shard the manifest lists is whole.
    for s in &m.shards {
        read_shard(&out.path().join(&s.file)).unwrap();
    }
    let status = args(out.path()).status().unwrap();
    assert!(status.success());
    assert_eq!(shard_bytes(out.path()), shard_bytes(full.path()));
    assert!(Manifest::load(out.path()).unwrap().complete);
    // No temp files left behind.
    assert!(std::fs::read_dir(out.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp.")));
}

fn full_shard_count(dir: &Path) -> usize {
    Manifest::load(dir).unwrap().shards.len()
}

#[test]
fn corrupt_parquet_is_named_and_finished_shards_are_kept() {
    let (full, _) = full_run(100_000);
    let input = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(parquet_dir()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, input.path().join(p.file_name().unwrap())).unwrap();
    }
    let victim = input.path().join("batch_000019.parquet");
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid - 4000..mid + 4000].iter_mut().for_each(|b| *b = 0x5a);
    std::fs::write(&victim, &bad).unwrap();

    let out = tempfile::tempdir().unwrap();
    let o = opts(local(&[input.path().to_path_buf()]), out.path(), 100_000);
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains("batch_000019.parquet"), "error names the file: {err}");
    let m = Manifest::load(out.path()).unwrap();
    assert!(!m.shards.is_empty(), "shards finished before the bad file are kept");
    assert!(!m.complete);
    for s in &m.shards {
        assert_eq!(std::fs::read(out.path().join(&s.file)).unwrap(), std::fs::read(full.path().join(&s.file)).unwrap());
    }
    // Fix the file and run again: the result is the uninterrupted run's.
    std::fs::write(&victim, &good).unwrap();
    fineweb::prep(&o).unwrap();
    assert_eq!(shard_bytes(out.path()), shard_bytes(full.path()));
}

#[test]
fn missing_parquet_and_missing_column_are_clear_errors() {
    let out = tempfile::tempdir().unwrap();
    let err = expand_inputs(&[PathBuf::from("/nonexistent/x.parquet")]).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/x.parquet"), "{err}");
    let mut o = opts(local(&[parquet_dir().join("batch_000001.parquet")]), out.path(), 100_000);
    o.text_column = "body".into();
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains("batch_000001.parquet") && err.contains("body") && err.contains("text"), "{err}");
}

#[test]
fn jsonl_and_text_inputs_and_32_bit_tokenizers() {
    let input = tempfile::tempdir().unwrap();
    let jsonl = input.path().join("docs.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"Hello world\", \"id\": 1}\n\n{\"text\": \"Second <|endoftext|> doc\"}\n")
        .unwrap();
    let txt = input.path().join("poem.txt");
    std::fs::write(&txt, "Shall I compare thee to a summer's day?\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(local(&[jsonl.clone(), txt.clone()]), out.path(), 1024);
    fineweb::prep(&o).unwrap();
    let m = Manifest::load(out.path()).unwrap();
    let (_, toks) = read_shard(&out.path().join(&m.shards[0].file)).unwrap();
    let t = Tokenizer::gpt2();
    let mut expected = Vec::new();
    for d in ["Hello world", "Second <|endoftext|> doc", "Shall I compare thee to a summer's day?\n"] {
        t.encode_document_into(d, &mut expected).unwrap();
    }
    assert_eq!(toks, expected, "special-token text is encoded as plain text, EOT before each document");

    // cl100k_base writes u32 shards under llm.c's 32-bit header; the loader reads them back. (A sonnet's line 200
    // times: ~2,200 tokens, so the smallest shard size, 1024, still gives a val shard and train shards.)
    let out32 = tempfile::tempdir().unwrap();
    let long = input.path().join("long.txt");
    std::fs::write(&long, "Shall I compare thee to a summer's day?\n".repeat(200)).unwrap();
    o.input = local(&[jsonl.clone(), long]);
    o.out = out32.path().to_path_buf();
    o.tokenizer = TokenizerKind::Cl100kBase.into();
    o.shard_size = 1024;
    o.val_shards = 1;
    fineweb::prep(&o).unwrap();
    let m = Manifest::load(out32.path()).unwrap();
    assert_eq!(m.tokenizer.vocab_size, 100277);
    let bytes = std::fs::read(out32.path().join(&m.shards[0].file)).unwrap();
    assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().unwrap()), 20240801);
    assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), 7);
    let mut l = DataLoader::open(out32.path(), Split::Train, LoaderConfig::new(1, 4)).unwrap();
    let b = l.next_batch().unwrap();
    assert!(b.x.iter().all(|&id| id < 100277));
    let mut all = Vec::new();
    for s in &m.shards {
        all.extend(read_shard(&out32.path().join(&s.file)).unwrap().1);
    }
    assert_eq!(all[0], 100257, "cl100k's <|endoftext|>");
}

#[test]
fn refuses_to_mix_settings_or_foreign_shards() {
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(local(&[parquet_dir().join("batch_000001.parquet")]), out.path(), 50_000);
    o.max_shards = Some(1);
    fineweb::prep(&o).unwrap();
    o.shard_size = 60_000;
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains("different settings") && err.contains("shard size"), "{err}");

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("edufineweb_train_000001.bin"), b"x").unwrap();
    o.out = foreign.path().to_path_buf();
    o.shard_size = 50_000;
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn damaged_finished_shard_stops_a_resume() {
    let out = tempfile::tempdir().unwrap();
    let mut o = opts(local(&[parquet_dir().join("batch_000001.parquet")]), out.path(), 20_000);
    o.max_shards = Some(2);
    fineweb::prep(&o).unwrap();
    let m = Manifest::load(out.path()).unwrap();
    let p = out.path().join(&m.shards[1].file);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[2000] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    o.max_shards = None;
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains(&m.shards[1].file) && err.contains("xxh3"), "{err}");
}

/// Every file of a directory (manifest included), by name: what "nothing was touched" compares.
fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// Issue 12 item 1: an interrupted `prep --input A --out D` re-run as `--input B --out D` used to mark D complete
/// with A's first shards and B's name in `sources`. The manifest now records the dataset's definition; another one is
/// refused (saying what differs and how to start over) and leaves D untouched; the same inputs, even moved, resume.
#[test]
fn resume_with_different_inputs_is_refused_and_touches_nothing() {
    let (full, _) = full_run(100_000);
    let out = tempfile::tempdir().unwrap();
    let mut a = opts(local(&[parquet_dir()]), out.path(), 100_000);
    a.max_shards = Some(2);
    fineweb::prep(&a).unwrap();
    let m = Manifest::load(out.path()).unwrap();
    assert!(m.sources.len() >= 2, "the resume point lies past the first file: {:?}", m.sources);
    let def = m.definition.expect("the manifest records the definition");
    assert_eq!((def.inputs.len(), def.text_column.as_str(), def.val_shards), (4, "text", 1));
    assert!(def.inputs.iter().all(|i| i.content.starts_with("xxh3:") && i.bytes > 0));
    let before = dir_bytes(out.path());
    a.max_shards = None;

    let mut b = a.clone();
    b.input = local(&[parquet_dir().join("batch_000028.parquet")]);
    let err = fineweb::prep(&b).unwrap_err().to_string();
    assert!(err.contains("4 input file(s) on disk, 1 now"), "{err}");
    assert!(err.contains("input file #1 was") && err.contains("batch_000001.parquet"), "{err}");
    assert!(err.contains("--overwrite") && err.contains("--out"), "says how to start over: {err}");
    assert_eq!(dir_bytes(out.path()), before, "a refused resume changes nothing");

    let mut other = a.clone();
    other.text_column = "url".into();
    other.val_shards = 2;
    let err = fineweb::prep(&other).unwrap_err().to_string();
    assert!(
        err.contains("text column `text` on disk, `url` now") && err.contains("1 val shard(s) on disk, 2 now"),
        "{err}"
    );
    // A file whose documents are in finished shards changed in place, same name and size: refused.
    let edited = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(parquet_dir()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, edited.path().join(p.file_name().unwrap())).unwrap();
    }
    let mut a_moved = a.clone();
    a_moved.input = local(&[edited.path().to_path_buf()]);
    let victim = edited.path().join("batch_000001.parquet");
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 1;
    std::fs::write(&victim, &bad).unwrap();
    let err = fineweb::prep(&a_moved).unwrap_err().to_string();
    assert!(err.contains("input file #1 was") && err.contains("xxh3:") && err.contains("finished shards"), "{err}");
    assert_eq!(dir_bytes(out.path()), before);

    // The same bytes from another place (a copied corpus) are the same dataset: it resumes to the uninterrupted run.
    std::fs::write(&victim, &good).unwrap();
    let r = fineweb::prep(&a_moved).unwrap();
    assert_eq!(r.shards_before, 2);
    assert!(r.complete);
    assert_eq!(shard_bytes(out.path()), shard_bytes(full.path()));

    // --overwrite starts over from B: the old shards are gone, the manifest describes B alone.
    b.overwrite = true;
    let r = fineweb::prep(&b).unwrap();
    assert_eq!(r.shards_before, 0);
    let m = Manifest::load(out.path()).unwrap();
    assert_eq!(m.definition.unwrap().inputs.len(), 1);
    assert_eq!(m.sources.len(), 1);
    let mut listed: Vec<String> = m.shards.iter().map(|s| s.file.clone()).collect();
    listed.sort();
    assert_eq!(shard_bytes(out.path()).into_iter().map(|(n, _)| n).collect::<Vec<_>>(), listed);
}

/// Issue 12 item 7: a small local corpus through the FineWeb-Edu preset became one 100M-token val shard named
/// `edufineweb_*`, "train 0 tokens", exit 0, and `train` then said "run `tokenmill prep` first". `prep corpus` names
/// shards after the corpus and sizes them to it; the preset now warns, and `train` names the empty split.
#[test]
fn prep_corpus_sizes_shards_to_a_small_corpus_and_an_empty_train_split_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    let tokenmill = |args: &[&str], out: &Path| {
        let o =
            Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).arg(&text).arg("--out").arg(out).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let corpus = dir.path().join("corpus");
    let (ok, stderr) = tokenmill(&["prep", "corpus", "--no-progress", "--input"], &corpus);
    assert!(ok && stderr.contains("28672 tokens per shard"), "{stderr}");
    let m = Manifest::load(&corpus).unwrap();
    assert_eq!(m.dataset, "tinyshakespeare");
    assert_eq!(m.shards.len(), 12, "{:?}", m.shards);
    assert!(m.shards.iter().all(|s| s.file.starts_with("tinyshakespeare_")));
    assert_eq!(m.shards.iter().filter(|s| s.split == Split::Val).count(), 1);
    assert!(m.tokens_in(Split::Train) > 9 * m.tokens_in(Split::Val));
    DataLoader::open(&corpus, Split::Train, LoaderConfig::new(4, 64)).unwrap();

    let preset = dir.path().join("preset");
    let (ok, stderr) = tokenmill(&["prep", "fineweb", "--no-progress", "--input"], &preset);
    let warning = stderr.lines().find(|l| l.starts_with("warning:")).unwrap_or_default();
    assert!(ok && warning.contains("the train split is empty") && warning.contains("prep corpus"), "{stderr}");
    let err = match DataLoader::open(&preset, Split::Train, LoaderConfig::new(4, 64)) {
        Ok(_) => panic!("an empty train split opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("the train split is empty") && err.contains("1 shard(s)") && err.contains("prep corpus"),
        "{err}"
    );
}

/// Issue 12 item 9: `--threads 100000` spawned threads until the machine gave out. It is capped at the cores there
/// are, with a note, and the shards are the same as with any thread count.
#[test]
fn thread_count_is_capped_at_the_cores() {
    let dir = tempfile::tempdir().unwrap();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "corpus", "--no-progress", "--threads", "100000", "--input"])
        .arg(&text)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("--threads 100000: this machine has"), "{stderr}");
}

/// Issue 12 item 11, the small ones on the input side: an empty .txt wrote a 1-token shard (a lone EOT), a folder
/// holding only README.md was tokenized as a corpus, "no input files found" did not say what counts, and a short run
/// reported "0.00M tokens/s".
#[test]
fn empty_text_files_and_readmes_are_not_documents_and_short_runs_report_real_rates() {
    let input = tempfile::tempdir().unwrap();
    std::fs::write(input.path().join("a_empty.txt"), "\n  \n").unwrap();
    std::fs::write(input.path().join("b_poem.txt"), "Shall I compare thee to a summer's day?\n").unwrap();
    std::fs::write(input.path().join("README.md"), "# About this corpus\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    fineweb::prep(&opts(local(&[input.path().to_path_buf()]), out.path(), 1024)).unwrap();
    let m = Manifest::load(out.path()).unwrap();
    let (_, toks) = read_shard(&out.path().join(&m.shards[0].file)).unwrap();
    let mut expected = Vec::new();
    Tokenizer::gpt2().encode_document_into("Shall I compare thee to a summer's day?\n", &mut expected).unwrap();
    assert_eq!(toks, expected, "one document: no EOT for the empty file, nothing from README.md");
    assert_eq!(m.definition.unwrap().inputs.len(), 2);

    let docs_only = tempfile::tempdir().unwrap();
    std::fs::write(docs_only.path().join("README.md"), "# About\n").unwrap();
    let err = expand_inputs(&[docs_only.path().to_path_buf()]).unwrap_err().to_string();
    assert!(err.contains("no input files") && err.contains(".parquet") && err.contains("subdirectories"), "{err}");

    let o = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "corpus", "--no-progress", "--input"])
        .arg(input.path().join("b_poem.txt"))
        .arg("--out")
        .arg(out.path().join("rate"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains(" tokens/s)") && !stdout.contains("0.00M"), "{stdout}");
}
