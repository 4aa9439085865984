//! Hugging Face tokenizers in `prep`: the ids equal Python `tokenizers`' on the whole FineWeb sample and tiny
//! Shakespeare, every document boundary token counted, for byte-level BPE tokenizers (GPT-2 style with EOS appended,
//! Llama-3 style with BOS prepended: both on the fast path of src/tokenizer/byte_bpe.rs) and a SentencePiece-style
//! one (Metaspace, byte fallback, BOS prepended by its post-processor); the manifest records the tokenizer and the
//! shard directory keeps its files; u32 shards past 65,536 ids; workers merge to the one-box
//! dataset for both boundaries; HellaSwag prep with the model's tokenizer; and bad inputs as one-line errors naming
//! the file and field.
//!
//! tests/fixtures/hf_tokenizers/ was written by scripts/make_hf_tokenizers.py (Python `tokenizers`, trained on tiny
//! Shakespeare; reference.json holds Python's per-document token counts and sha256 of the ids).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenmill::pipelines::fineweb::{self, PrepOptions};
use tokenmill::pipelines::sources::expand_inputs;
use tokenmill::shards::format::read_shard;
use tokenmill::shards::loader::{DataLoader, LoaderConfig};
use tokenmill::shards::{Manifest, Split, TokenWidth};
use tokenmill::tokenizer::{BoundaryAt, Tokenizer, TokenizerSource};

#[path = "common/mod.rs"]
mod common;
use common::shard_files;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/hf_tokenizers").join(name)
}

/// Tiny Shakespeare (the bytes of the reference's `tinyshakespeare_input.txt`).
fn shakespeare() -> PathBuf {
    repo().join("data/tinyshakespeare.txt")
}

/// The FineWeb files reference.json covers that are here (by its key, in its order): the 4 vendored in
/// tests/fixtures always, the other 24 where the optional shared data has them.
fn fineweb_files(entry: &Value) -> Vec<(String, PathBuf)> {
    entry["fineweb"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|key| {
            let name = Path::new(key).file_name().unwrap();
            let places = [common::fineweb_fixture_dir().join(name), common::shared_data_root().join(key)];
            places.into_iter().find(|p| p.exists()).map(|p| (key.clone(), p))
        })
        .collect()
}

fn reference() -> Value {
    let path = fixture("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn load(name: &str) -> Tokenizer {
    TokenizerSource::Path(fixture(name)).load().unwrap()
}

fn sha256_u32le(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    hex::encode(Sha256::digest(bytes))
}

/// Per-document counts, total and sha256 of the ids, as reference.json holds them.
fn digest(docs: &[&[u32]]) -> (Vec<u64>, u64, String) {
    let all: Vec<u32> = docs.concat();
    (docs.iter().map(|d| d.len() as u64).collect(), all.len() as u64, sha256_u32le(&all))
}

fn expected(entry: &Value) -> (Vec<u64>, u64, String) {
    let counts = entry["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    (counts, entry["tokens"].as_u64().unwrap(), entry["sha256"].as_str().unwrap().to_string())
}

/// `prep` of the FineWeb sample into `out`.
fn prep_options(out: &Path, tokenizer: Tokenizer, shard_size: u64) -> PrepOptions {
    let input = fineweb::Input::Local(expand_inputs(&[common::fineweb_fixture_dir()]).unwrap());
    common::prep_options(input, out, "fw", tokenizer, shard_size)
}

/// All of a directory's shards' ids, in manifest order.
fn stream(dir: &Path, m: &Manifest) -> Vec<u32> {
    m.shards.iter().flat_map(|s| read_shard(&dir.join(&s.file)).unwrap().1).collect()
}

/// A stream cut into its documents at the boundary tokens (before a first one, after a last one).
fn split_documents(ids: &[u32], eot: u32, at: BoundaryAt) -> Vec<&[u32]> {
    let cuts: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == eot)
        .map(|(i, _)| if at == BoundaryAt::First { i } else { i + 1 })
        .filter(|&i| i > 0 && i < ids.len())
        .collect();
    let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(ids.len())).collect();
    bounds.windows(2).map(|w| &ids[w[0]..w[1]]).collect()
}

/// Python's ids, document by document and boundary tokens included: FineWeb through `prep` (the shards read back and
/// cut at the boundaries: the 4 vendored files, all 28 and the whole stream's digest where the shared data is), tiny
/// Shakespeare and the short cases through the tokenizer.
#[test]
fn ids_equal_python_tokenizers_on_fineweb_and_tiny_shakespeare() {
    let reference = reference();
    let shakespeare = std::fs::read_to_string(shakespeare()).unwrap();
    let files = fineweb_files(&reference["tokenizers"]["bpe"]);
    assert!(files.len() >= common::FINEWEB_FIXTURE_FILES.len(), "the vendored files are in reference.json");
    let input = tempfile::tempdir().unwrap();
    for (_, path) in &files {
        std::os::unix::fs::symlink(path, input.path().join(path.file_name().unwrap())).unwrap();
    }
    for name in ["bpe", "bpe_llama3", "spm"] {
        let entry = &reference["tokenizers"][name];
        let tok = load(name);
        assert_eq!(tok.info().hf.unwrap().sha256, entry["tokenizer_json_sha256"].as_str().unwrap(), "{name}");
        assert_eq!(u64::from(tok.vocab_size()), entry["vocab_size"].as_u64().unwrap(), "{name}");
        let document = |text: &str| {
            let mut ids = Vec::new();
            tok.encode_document_into(text, &mut ids).unwrap();
            ids
        };
        for (case, ids) in entry["cases"].as_object().unwrap() {
            let want: Vec<u32> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let text = match case.as_str() {
                "ascii" => "Hello, world! The quick brown fox jumps over the lazy dog.",
                "special strings as text" => "a <|endoftext|> b <s> c </s> d <unk> e <0x41>",
                "whitespace" => "  two leading\n\n\tand a tab   three trailing   ",
                "unicode" => "naïve café — 日本語 — Ελληνικά — 🤖🎉",
                "empty" => "",
                other => panic!("reference.json has a case this test does not know: {other}"),
            };
            assert_eq!(document(text), want, "{name}: case {case}");
        }
        assert_eq!(digest(&[&document(&shakespeare)]), expected(&entry["tinyshakespeare"]), "{name}");

        let out = tempfile::tempdir().unwrap();
        let mut o = prep_options(out.path(), tok.clone(), 1_000_000);
        o.input = fineweb::local_input(&[input.path().to_path_buf()]).unwrap();
        let m = fineweb::prep(&o).unwrap().manifest;
        let ids = stream(out.path(), &m);
        let docs = split_documents(&ids, m.tokenizer.eot, m.tokenizer.boundary);
        assert_eq!(docs.len(), 100 * files.len(), "{name}: one boundary per document");
        if files.len() == entry["fineweb"].as_object().unwrap().len() {
            let whole = &entry["fineweb_all"];
            assert_eq!(ids.len() as u64, whole["tokens"].as_u64().unwrap(), "{name}");
            assert_eq!(sha256_u32le(&ids), whole["sha256"].as_str().unwrap(), "{name}: the whole stream");
        } else if name == "bpe" {
            eprintln!(
                "checked {} of the {} FineWeb files (the vendored ones); the others are read from {} \
                 (TOKENMILL_SHARED_DATA), which lacks them",
                files.len(),
                entry["fineweb"].as_object().unwrap().len(),
                common::shared_data_root().display()
            );
        }
        let mut at = 0;
        for (file, _) in &files {
            let (want_counts, want_tokens, want_sha) = expected(&entry["fineweb"][file]);
            let (counts, tokens, sha) = digest(&docs[at..at + want_counts.len()]);
            if counts != want_counts {
                let doc = counts.iter().zip(&want_counts).position(|(a, b)| a != b).unwrap_or(0);
                panic!("{name} {file}: document {doc} has {} tokens, Python's {}", counts[doc], want_counts[doc]);
            }
            assert_eq!((tokens, &sha), (want_tokens, &want_sha), "{name} {file}: same counts, other ids");
            at += want_counts.len();
        }
    }
}

#[test]
fn prep_records_the_tokenizer_and_keeps_its_files() {
    let reference = reference();
    for (name, boundary, eot) in [("bpe", BoundaryAt::Last, "<|endoftext|>"), ("spm", BoundaryAt::First, "<s>")] {
        let out = tempfile::tempdir().unwrap();
        let mut o = prep_options(out.path(), load(name), 100_000);
        o.input = fineweb::local_input(&[shakespeare()]).unwrap();
        let m = fineweb::prep(&o).unwrap().manifest;
        let entry = &reference["tokenizers"][name];
        // The record: name, size, boundary, special ids and the file's sha256; u16 shards for 4096 ids.
        let t = &m.tokenizer;
        let hf = t.hf.as_ref().unwrap();
        assert_eq!((t.name.as_str(), t.vocab_size, t.boundary), ("hf", 4096, boundary), "{name}");
        assert_eq!(m.token_width, TokenWidth::U16);
        assert_eq!(hf.sha256, entry["tokenizer_json_sha256"].as_str().unwrap());
        assert_eq!(hf.source, fixture(name).display().to_string());
        let eot_token = if boundary == BoundaryAt::First { hf.bos.as_ref() } else { hf.eos.as_ref() };
        assert_eq!(eot_token.map(|s| (s.id, s.text.as_str())), Some((t.eot, eot)), "{name}");
        match boundary {
            BoundaryAt::First => assert_eq!((&hf.prepend[..], &hf.append[..]), (&[t.eot][..], &[][..])),
            BoundaryAt::Last => assert_eq!((&hf.prepend[..], &hf.append[..]), (&[][..], &[t.eot][..])),
        }
        assert_eq!(stream(out.path(), &m).len() as u64, entry["tinyshakespeare"]["tokens"].as_u64().unwrap());
        // The directory keeps the very files, and its tokenizer loads back from them.
        for file in std::iter::once(&hf.file).chain(&hf.config_file) {
            let copy = std::fs::read(out.path().join(file)).unwrap();
            assert_eq!(copy, std::fs::read(fixture(name).join(file)).unwrap(), "{name}: {file}");
        }
        assert_eq!(hf.config_file.is_some(), name == "spm");
        assert!(m.load_tokenizer(out.path()).unwrap().info().same_as(t));
        // A changed copy is named, not used.
        let mut changed = std::fs::read(fixture(name).join("tokenizer.json")).unwrap();
        changed.push(b'\n');
        std::fs::write(out.path().join("tokenizer.json"), changed).unwrap();
        let err = m.load_tokenizer(out.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json") && err.contains("manifest.json") && !err.contains('\n'), "{err}");
    }
}

/// The bpe fixture with its vocabulary padded to 70,000 ids (pieces no merge makes): a vocabulary past u16.
fn wide_tokenizer(dir: &Path) -> PathBuf {
    let mut json: Value = serde_json::from_slice(&std::fs::read(fixture("bpe/tokenizer.json")).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    for id in vocab.len()..70_000 {
        vocab.insert(format!("<pad{id}>"), id.into());
    }
    let path = dir.join("wide.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

#[test]
fn a_vocabulary_past_u16_writes_u32_shards_the_loader_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = TokenizerSource::Path(wide_tokenizer(tmp.path())).load().unwrap();
    assert_eq!(tok.vocab_size(), 70_000);
    let out = tmp.path().join("out");
    let text = shakespeare();
    let mut o = prep_options(&out, tok.clone(), 50_000);
    o.input = fineweb::local_input(std::slice::from_ref(&text)).unwrap();
    let m = fineweb::prep(&o).unwrap().manifest;
    assert_eq!((m.token_width, m.tokenizer.vocab_size), (TokenWidth::U32, 70_000));
    let (header, ids) = read_shard(&out.join(&m.shards[1].file)).unwrap();
    assert_eq!(header.width, TokenWidth::U32);
    let mut expected = Vec::new();
    tok.encode_document_into(&std::fs::read_to_string(&text).unwrap(), &mut expected).unwrap();
    assert_eq!(ids[..], expected[50_000..100_000]);
    let mut loader = DataLoader::open(&out, Split::Train, LoaderConfig::new(2, 16)).unwrap();
    assert_eq!(loader.vocab_size(), 70_000);
    assert_eq!(loader.next_batch().unwrap().x[..], expected[50_000..50_032]);
}

/// `tokenmill ARGS` in `dir`: (success, stdout, stderr).
fn tokenmill(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The one line `tokenmill` prints for an error, after "error: ".
fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    lines[0]
}

#[test]
fn bad_tokenizer_files_are_one_line_errors_naming_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let text = shakespeare();
    let prep = |tokenizer: &Path| {
        let (ok, _, err) = tokenmill(
            tmp.path(),
            &[
                "prep",
                "corpus",
                "--no-progress",
                "--input",
                text.to_str().unwrap(),
                "--tokenizer",
                tokenizer.to_str().unwrap(),
            ],
        );
        assert!(!ok);
        one_line_error(&err).to_string()
    };
    // Not JSON a tokenizer is made of.
    let bad = tmp.path().join("broken/tokenizer.json");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, br#"{"version": "1.0", "model": {"type": "BPE", "vocab": 7}}"#).unwrap();
    let err = prep(&bad);
    assert!(err.contains(&bad.display().to_string()) && err.contains("not a tokenizer.json"), "{err}");
    // A folder without one.
    let err = prep(tmp.path());
    assert!(err.contains("no tokenizer.json in this folder"), "{err}");
    // tokenizer_config.json naming an EOS the vocabulary lacks, or a flag of the wrong type: the file and the field.
    let dir = tmp.path().join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("bpe/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    for (config, field) in
        [(r#"{"eos_token": "</eos>"}"#, "eos_token"), (r#"{"add_bos_token": "yes"}"#, "add_bos_token")]
    {
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
        let err = prep(&dir);
        assert!(err.contains(&dir.join("tokenizer_config.json").display().to_string()) && err.contains(field), "{err}");
    }
    // No BOS added and no EOS to append: no document boundary.
    let mut json: Value = serde_json::from_slice(&std::fs::read(fixture("bpe/tokenizer.json")).unwrap()).unwrap();
    json["added_tokens"][0]["content"] = "<|pad|>".into();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let id = vocab.remove("<|endoftext|>").unwrap();
    vocab.insert("<|pad|>".into(), id);
    let plain = tmp.path().join("plain.json");
    std::fs::write(&plain, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = prep(&plain);
    assert!(err.contains("plain.json") && err.contains("eos_token"), "{err}");
}

#[test]
fn a_resume_with_another_tokenizer_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let text = shakespeare();
    let mut o = prep_options(tmp.path(), load("spm"), 50_000);
    o.input = fineweb::local_input(&[text]).unwrap();
    o.max_shards = Some(2);
    fineweb::prep(&o).unwrap();
    o.tokenizer = load("bpe");
    o.max_shards = None;
    let err = fineweb::prep(&o).unwrap_err().to_string();
    assert!(err.contains(&fixture("spm").display().to_string()), "{err}");
    assert!(err.contains(&fixture("bpe").display().to_string()), "{err}");
    // The same tokenizer from a copy elsewhere is the same tokenizer: the resume goes on.
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("spm").join(f), copy.join(f)).unwrap();
    }
    o.tokenizer = TokenizerSource::Path(copy).load().unwrap();
    assert!(fineweb::prep(&o).unwrap().complete);
}

#[test]
fn workers_merge_to_the_one_box_dataset_with_bos_first_and_eos_last_boundaries() {
    let input = common::fineweb_fixture_dir();
    for name in ["bpe", "bpe_llama3", "spm"] {
        let tok = fixture(name).display().to_string();
        // --shards 3 of 100K tokens: the third shard ends inside a document, so the merge places a resume cursor.
        let one = tempfile::tempdir().unwrap();
        let mut o = prep_options(one.path(), load(name), 100_000);
        o.input = fineweb::local_input(std::slice::from_ref(&input)).unwrap();
        o.dataset = "edufineweb".into();
        o.max_shards = Some(3);
        let m = fineweb::prep(&o).unwrap().manifest;
        assert!(m.resume.tokens_into_document > 0, "{name}: the cut falls inside a document");
        let out = tempfile::tempdir().unwrap();
        let prep_worker = |w: &str, shards: &[&str]| {
            let mut args = vec!["prep", "fineweb", "--no-progress", "--threads", "1", "--shard-size", "100000"];
            args.extend(["--tokenizer", &tok, "--worker", w, "--input", input.to_str().unwrap()]);
            args.extend(["--out", out.path().to_str().unwrap()]);
            args.extend(shards);
            let (ok, _, err) = tokenmill(&input, &args);
            assert!(ok, "{err}");
        };
        for w in ["0/2", "1/2"] {
            prep_worker(w, &["--shards", "3"]);
        }
        let merge = |shards: &[&str]| {
            let mut args = vec!["prep", "merge", "--no-progress", out.path().to_str().unwrap()];
            args.extend(shards);
            let (ok, _, err) = tokenmill(&input, &args);
            assert!(ok, "{err}");
        };
        merge(&[]);
        assert_eq!(shard_files(out.path()), shard_files(one.path()), "{name}");
        let mut merged = Manifest::load(out.path()).unwrap();
        // Worker 0 alone held the 3 shards, so worker 1 never ran: the merge does not know its inputs yet.
        assert!(merged.definition.is_none());
        (merged.definition, merged.merged_from) = (m.definition.clone(), None);
        assert_eq!(merged, m, "{name}: the merged manifest (resume cursor included) is the one-box run's");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            assert_eq!(out.path().join(f).exists(), one.path().join(f).exists(), "{name}: {f}");
        }
        // Without the limit: the whole input, as one box writes it.
        o.max_shards = None;
        let whole = fineweb::prep(&o).unwrap().manifest;
        for w in ["0/2", "1/2"] {
            prep_worker(w, &[]);
        }
        merge(&[]);
        let mut merged = Manifest::load(out.path()).unwrap();
        merged.merged_from = None;
        assert_eq!(shard_files(out.path()), shard_files(one.path()), "{name}");
        assert_eq!(merged, whole, "{name}");
    }
}

#[test]
fn hellaswag_prep_with_the_models_tokenizer_records_it() {
    use tokenmill::eval::hellaswag_file::HellaswagFile;
    use tokenmill::pipelines::hellaswag::{self, HellaswagPipeline, Input, PrepConfig};
    let tmp = tempfile::tempdir().unwrap();
    let config = |tokenizer: &str| PrepConfig {
        pipeline: HellaswagPipeline::builtin(),
        input: Input::Files { paths: vec![repo().join("tests/fixtures/hellaswag_sample.jsonl")], format: None },
        out_dir: tmp.path().join(tokenizer.replace('/', "_")),
        limit: None,
        tokenizer: Some(tokenizer.parse().unwrap()),
        overwrite: false,
    };
    let spm = fixture("spm").display().to_string();
    let summary = hellaswag::prep(&config(&spm)).unwrap();
    let file = HellaswagFile::open(&summary.path).unwrap();
    let tok = load("spm");
    assert_eq!(file.tokenizer().id, tok.id());
    // A Llama-style tokenizer's documents start with its BOS, and so do the contexts; endings get a leading space.
    let tasks = hellaswag::read_tasks(&repo().join("tests/fixtures/hellaswag_sample.jsonl"), None, &Default::default());
    let task = &tasks.unwrap()[0];
    let mut context = vec![1];
    context.extend(tok.encode(&task.context).unwrap());
    assert_eq!(file.examples()[0].context, context);
    assert_eq!(file.examples()[0].endings[0], tok.encode(&format!(" {}", task.endings[0])).unwrap());
    // Scoring checks the model's tokenizer against the file's.
    assert!(file.check_tokenizer("m", 4096, Some(&tok.id())).is_ok());
    let err = file.check_tokenizer("m", 4096, Some(&load("bpe").id())).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json sha256") && err.contains("--tokenizer"), "{err}");
    let err = file.check_tokenizer("gpt2", 50257, None).unwrap_err().to_string();
    assert!(err.contains("50257"), "{err}");
    // The GPT-2 file is unchanged: its header fields past [3] stay zero, as llm.c writes them.
    let gpt2 = hellaswag::prep(&config("gpt2")).unwrap();
    let bytes = std::fs::read(&gpt2.path).unwrap();
    assert!(bytes[16..1024].iter().all(|&b| b == 0));
    // A vocabulary past u16 does not fit the file.
    let wide = wide_tokenizer(tmp.path()).display().to_string();
    let err = hellaswag::prep(&config(&wide)).unwrap_err().to_string();
    assert!(err.contains("wide.json") && err.contains("65535"), "{err}");
}

#[test]
fn checkpoints_sample_and_export_use_the_datas_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log, export) = (tmp.path().join("data"), tmp.path().join("log"), tmp.path().join("export"));
    let mut o = prep_options(&data, load("spm"), 20_000);
    o.input = fineweb::local_input(&[shakespeare()]).unwrap();
    fineweb::prep(&o).unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = tokenmill(&repo(), args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let (data_s, log_s) = (data.to_str().unwrap(), log.to_str().unwrap());
    let config = repo().join("configs/tiny-cpu.toml");
    run(&[
        "train",
        "--quiet",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data_s,
        "--log-dir",
        log_s,
        "--max-steps",
        "2",
    ]);
    // The checkpoint keeps the data's tokenizer files.
    let ckpt = log.join("checkpoints/step_000002");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(ckpt.join(f)).unwrap(), std::fs::read(fixture("spm").join(f)).unwrap(), "{f}");
    }
    // `sample` encodes the prompt with it (after the BOS its documents start with) and decodes with it.
    let out = run(&["sample", "--model", log_s, "--prompt", "ROMEO:", "--num-samples", "1", "--max-tokens", "8"]);
    assert!(out.starts_with("sample 0: ROMEO:"), "{out}");
    // `export hf` writes tokenizer.json as it is and its tokenizer_config.json, which a sample then reads.
    run(&["export", "hf", ckpt.to_str().unwrap(), export.to_str().unwrap()]);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(export.join(f)).unwrap(), std::fs::read(fixture("spm").join(f)).unwrap(), "{f}");
    }
    let from_export = run(&[
        "sample",
        "--model",
        export.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--num-samples",
        "1",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(from_export, out, "the exported folder samples as the checkpoint does");
    // A checkpoint whose copy is gone says which tokenizer it needs, instead of guessing one by its size.
    std::fs::remove_file(ckpt.join("tokenizer.json")).unwrap();
    let (ok, _, err) = tokenmill(&repo(), &["sample", "--model", ckpt.to_str().unwrap(), "--max-tokens", "8"]);
    assert!(!ok);
    let line = one_line_error(&err);
    assert!(line.contains("tokenizer.json sha256 9e7d56f0c7a2") && line.contains("--tokenizer"), "{line}");
}

#[test]
fn a_foreign_tokenizer_json_in_out_is_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model_folder");
    std::fs::create_dir_all(&out).unwrap();
    let theirs = std::fs::read(fixture("bpe/tokenizer.json")).unwrap();
    std::fs::write(out.join("tokenizer.json"), &theirs).unwrap();
    let mut o = prep_options(&out, load("spm"), 50_000);
    o.input = fineweb::local_input(&[shakespeare()]).unwrap();
    // A folder tokenmill did not make is not its to write shards into (issue 26's rule for every --out), whatever
    // it holds: the model's folder is refused with another tokenizer and with its own, and left as it was.
    for tokenizer in ["spm", "bpe"] {
        o.tokenizer = load(tokenizer);
        let err = fineweb::prep(&o).unwrap_err().to_string();
        assert!(
            err.contains("model_folder") && err.contains("tokenizer.json") && err.contains("new or empty --out"),
            "{err}"
        );
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), theirs, "left as it was");
        assert!(!Manifest::path_in(&out).exists());
    }
    // An empty --out takes the shards and keeps its own copy of the tokenizer.json.
    let fresh = tmp.path().join("fresh");
    o.out = fresh.clone();
    assert!(fineweb::prep(&o).unwrap().complete);
    assert_eq!(std::fs::read(fresh.join("tokenizer.json")).unwrap(), theirs);
}

/// `train --init` from a model whose tokenizer.json is not the one the data was prepared with is refused, naming
/// both, even at the same vocabulary size (the data records the tokenizer's sha256).
#[test]
fn init_refuses_data_of_another_tokenizer_of_the_same_size() {
    use tokenmill::train::init::InitModel;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut o = prep_options(&data, load("spm"), 100_000);
    o.input = fineweb::local_input(&[shakespeare()]).unwrap();
    let m = fineweb::prep(&o).unwrap().manifest;
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(repo().join("tests/fixtures/hf/llama_gqa_tied/config.json"), model.join("config.json")).unwrap();
    std::fs::copy(repo().join("tests/fixtures/hf/llama_gqa_tied/model.safetensors"), model.join("model.safetensors"))
        .unwrap();
    for (tokenizer, same) in [("bpe", false), ("spm", true)] {
        std::fs::copy(fixture(tokenizer).join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
        let init = InitModel::open(model.to_str().unwrap()).unwrap();
        match init.check_data_tokenizer(&data, &m.tokenizer) {
            Ok(()) => assert!(same),
            Err(e) => {
                let err = e.to_string();
                assert!(!same, "{err}");
                assert!(err.contains("sha256 9e7d56f0c7a2") && err.contains("sha256 6a9f8539108b"), "{err}");
            }
        }
    }
}
