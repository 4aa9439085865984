//! `tokenmill prep hellaswag` and the HellaSwag eval file: parsing the three source layouts, build-nanogpt's
//! tokenization and row/mask layout, llm.c's file format (round trip, header, per-example fields), and the errors
//! on malformed input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[path = "common/mod.rs"]
mod common;

use tokenmill::eval::hellaswag_file::{self, Example, HellaswagFile, HellaswagFileError, HEADER_BYTES, MAGIC, VERSION};
use tokenmill::pipelines::hellaswag::{
    self, Columns, HellaswagPipeline, HellaswagPrepError, Input, PrepConfig, SourceFormat, Task,
};
use tokenmill::tokenizer::{Tokenizer, TokenizerKind};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hellaswag_sample.jsonl")
}

fn fixture_tasks() -> Vec<Task> {
    hellaswag::read_tasks(&fixture(), None, &Columns::default()).unwrap()
}

fn config(paths: Vec<PathBuf>, out_dir: &Path) -> PrepConfig {
    PrepConfig {
        pipeline: HellaswagPipeline::builtin(),
        input: Input::Files { paths, format: None },
        out_dir: out_dir.to_path_buf(),
        limit: None,
        tokenizer: None,
        overwrite: false,
    }
}

fn header_int(bytes: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap())
}

fn u16_at(bytes: &[u8], word: usize) -> u16 {
    let o = HEADER_BYTES + 2 * word;
    u16::from_le_bytes([bytes[o], bytes[o + 1]])
}

#[test]
fn pipeline_file_parses_with_hub_defaults() {
    let on_disk =
        HellaswagPipeline::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/hellaswag.toml")).unwrap();
    let builtin = HellaswagPipeline::builtin();
    for p in [&on_disk, &builtin] {
        assert_eq!(p.source.repo, "Rowan/hellaswag");
        assert_eq!(p.source.locations[0].revision, "main");
        assert_eq!(p.tokenizer, TokenizerKind::Gpt2.into());
        assert_eq!(p.columns.context, "ctx");
        assert_eq!(p.output.dir, Path::new("shards/hellaswag"));
        assert_eq!(p.output.file, "hellaswag_val.bin");
    }
    // A 32-bit vocabulary cannot be stored in the u16 eval file: refused when the pipeline is loaded.
    let text = hellaswag::BUILTIN_PIPELINE.replace("tokenizer = \"gpt2\"", "tokenizer = \"cl100k_base\"");
    let err = HellaswagPipeline::from_toml_str(&text, "t.toml").unwrap_err();
    assert!(matches!(err, HellaswagPrepError::Tokenizer(ref t) if t == "cl100k_base"), "{err}");
}

#[test]
fn jsonl_fixture_parses_in_original_schema() {
    let tasks = fixture_tasks();
    assert_eq!(tasks.len(), 5);
    // build-nanogpt scores `ctx`, without the activity label.
    assert_eq!(tasks[0].context, "A man is sitting on a roof. he");
    assert_eq!(tasks[0].endings[3], "starts pulling up roofing on a roof.");
    assert_eq!(tasks.iter().map(|t| t.label).collect::<Vec<_>>(), vec![3, 3, 2, 2, 1]);
}

#[test]
fn task0_tokens_and_mask_follow_build_nanogpt() {
    let tasks = fixture_tasks();
    let tok = Tokenizer::gpt2();
    let ex = hellaswag::tokenize_task(&tasks[0], 0, &tok).unwrap();

    assert_eq!(ex.context, tok.encode("A man is sitting on a roof. he").unwrap());
    // GPT-2 BPE ids of the context (tiktoken `gpt2`): "A", " man", " is", " sitting", " on", " a", " roof", ".", " he".
    assert_eq!(ex.context, vec![32, 582, 318, 5586, 319, 257, 9753, 13, 339]);
    for (i, ending) in tasks[0].endings.iter().enumerate() {
        assert_eq!(ex.endings[i], tok.encode(&format!(" {ending}")).unwrap(), "ending {i}");
    }
    // The leading space matters: " is" (318) starts every ending here, not "is" (271).
    assert!(ex.endings.iter().take(3).all(|e| e[0] == 318));
    assert_eq!(ex.label, 3);

    let (tokens, mask, t) = ex.rows();
    let c = ex.context.len();
    assert_eq!(t, c + ex.endings.iter().map(Vec::len).max().unwrap());
    assert_eq!((tokens.len(), mask.len()), (4 * t, 4 * t));
    for (i, ending) in ex.endings.iter().enumerate() {
        let row = &tokens[i * t..(i + 1) * t];
        let m = &mask[i * t..(i + 1) * t];
        assert_eq!(&row[..c], &ex.context[..], "row {i} context");
        assert_eq!(&row[c..c + ending.len()], &ending[..], "row {i} ending");
        assert!(row[c + ending.len()..].iter().all(|&x| x == 0), "row {i} padding");
        assert!(m[..c].iter().all(|&x| x == 0), "row {i} mask on context");
        assert!(m[c..c + ending.len()].iter().all(|&x| x == 1), "row {i} mask on ending");
        assert!(m[c + ending.len()..].iter().all(|&x| x == 0), "row {i} mask on padding");
    }
}

#[test]
fn file_round_trip_and_header_fields() {
    let dir = tempfile::tempdir().unwrap();
    let summary = hellaswag::prep(&config(vec![fixture()], dir.path())).unwrap();
    assert_eq!(summary.path, dir.path().join("hellaswag_val.bin"));
    assert_eq!(summary.examples, 5);
    assert_eq!(summary.label_counts, [0, 1, 2, 2]);

    let expected = hellaswag::tokenize_tasks(&fixture_tasks(), &Tokenizer::gpt2()).unwrap();
    let file = HellaswagFile::open(&summary.path).unwrap();
    assert_eq!(file.examples(), &expected[..]);
    assert_eq!(file.label_counts(), [0, 1, 2, 2]);
    assert_eq!(file.longest_example_bytes(), expected.iter().map(Example::encoded_bytes).max().unwrap());
    assert_eq!(summary.longest_example_bytes, file.longest_example_bytes());
    assert_eq!(summary.longest_row_tokens, file.max_row_len());
    assert_eq!(
        summary.context_tokens + summary.ending_tokens,
        expected.iter().map(|e| e.context.len() + e.endings.iter().map(Vec::len).sum::<usize>()).sum::<usize>()
    );

    let bytes = std::fs::read(&summary.path).unwrap();
    assert_eq!(summary.file_bytes, bytes.len() as u64);
    assert_eq!(header_int(&bytes, 0), 20240522);
    assert_eq!((header_int(&bytes, 0), header_int(&bytes, 1)), (MAGIC, VERSION));
    assert_eq!(header_int(&bytes, 2), 5);
    assert_eq!(header_int(&bytes, 3) as usize, file.longest_example_bytes());
    assert!((4..256).all(|i| header_int(&bytes, i) == 0));
    let body: usize = expected.iter().map(Example::encoded_bytes).sum();
    assert_eq!(bytes.len(), HEADER_BYTES + body);

    // Example 0 field by field: <START_EXAMPLE> <EXAMPLE_BYTES> <EXAMPLE_INDEX> <LABEL> <NUM_COMPLETIONS>
    // <NUM> context..., then <NUM> ending... four times.
    let ex = &expected[0];
    assert_eq!(u16_at(&bytes, 0), 65535);
    assert_eq!(u16_at(&bytes, 1) as usize, ex.encoded_bytes());
    assert_eq!((u16_at(&bytes, 2), u16_at(&bytes, 3), u16_at(&bytes, 4)), (0, 3, 4));
    let mut w = 5;
    for run in std::iter::once(&ex.context).chain(ex.endings.iter()) {
        assert_eq!(u16_at(&bytes, w) as usize, run.len());
        let stored: Vec<u32> = (0..run.len()).map(|k| u16_at(&bytes, w + 1 + k) as u32).collect();
        assert_eq!(&stored, run);
        w += 1 + run.len();
    }
    assert_eq!(2 * w, ex.encoded_bytes());
    // Example 1 starts right after, with index 1.
    assert_eq!((u16_at(&bytes, w), u16_at(&bytes, w + 2), u16_at(&bytes, w + 3)), (65535, 1, 3));

    // encode is deterministic and equals what prep wrote.
    assert_eq!(hellaswag_file::encode(&expected).unwrap(), bytes);
}

#[test]
fn full_llamacpp_validation_set_parses_and_round_trips() {
    let path = common::hellaswag_val_full().to_path_buf();
    let tasks = hellaswag::read_tasks(&path, None, &Columns::default()).unwrap();
    assert_eq!(tasks.len(), 10_042);
    assert_eq!(hellaswag::task_label_counts(&tasks), [2515, 2485, 2584, 2458]);
    // llama.cpp scores the whole first line, activity label included.
    assert_eq!(tasks[0].context, "Roof shingle removal: A man is sitting on a roof. he");
    assert_eq!(tasks[0].label, 3);
    assert_eq!(tasks[0].endings[2], "is holding a rubik's cube.");

    let dir = tempfile::tempdir().unwrap();
    let summary = hellaswag::prep(&config(vec![path], dir.path())).unwrap();
    assert_eq!(summary.examples, 10_042);
    assert_eq!(summary.label_counts, [2515, 2485, 2584, 2458]);
    let file = HellaswagFile::open(&summary.path).unwrap();
    assert_eq!(file.len(), 10_042);
    assert_eq!(file.label_counts(), [2515, 2485, 2584, 2458]);
    assert_eq!(
        file.examples()[0].context,
        Tokenizer::gpt2().encode("Roof shingle removal: A man is sitting on a roof. he").unwrap()
    );
    assert_eq!(file.examples()[10_041].index, 10_041);
    // Every example fits GPT-2's 1024-token context, so a 124M model scores all of them untruncated.
    assert!(file.max_row_len() < 1024, "longest row {} tokens", file.max_row_len());
}

/// `tasks` as a parquet file with Rowan/hellaswag's columns (label as a string, as the HF conversion stores it).
fn write_rowan_parquet(tasks: &[Task], path: &Path) {
    use arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder};
    use arrow::record_batch::RecordBatch;

    let activity: ArrayRef = Arc::new(StringArray::from(vec!["x"; tasks.len()]));
    let ctx: ArrayRef = Arc::new(StringArray::from(tasks.iter().map(|t| t.context.as_str()).collect::<Vec<_>>()));
    let mut endings = ListBuilder::new(StringBuilder::new());
    for t in tasks {
        for e in &t.endings {
            endings.values().append_value(e);
        }
        endings.append(true);
    }
    let endings: ArrayRef = Arc::new(endings.finish());
    let label: ArrayRef = Arc::new(StringArray::from(tasks.iter().map(|t| t.label.to_string()).collect::<Vec<_>>()));
    let batch = RecordBatch::try_from_iter(vec![
        ("activity_label", activity),
        ("ctx", ctx),
        ("endings", endings),
        ("label", label),
    ])
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_in_rowan_schema_reads_like_the_jsonl() {
    let tasks = fixture_tasks();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("validation-00000-of-00001.parquet");
    write_rowan_parquet(&tasks, &pq);

    assert_eq!(hellaswag::read_tasks(&pq, None, &Columns::default()).unwrap(), tasks);

    // The same tasks give the same eval file, byte for byte, whichever layout they came from.
    let a = hellaswag::prep(&config(vec![pq.clone()], &dir.path().join("a"))).unwrap();
    let b = hellaswag::prep(&config(vec![fixture()], &dir.path().join("b"))).unwrap();
    assert_eq!(std::fs::read(a.path).unwrap(), std::fs::read(b.path).unwrap());

    // A missing column names the file and lists what is there.
    let columns = Columns { context: "context".into(), ..Columns::default() };
    let err = hellaswag::read_tasks(&pq, None, &columns).unwrap_err().to_string();
    assert!(
        err.contains("validation-00000-of-00001.parquet") && err.contains("`context`") && err.contains("ctx"),
        "{err}"
    );
}

#[test]
fn malformed_llamacpp_text_names_file_and_line() {
    let full = std::fs::read_to_string(common::hellaswag_val_full()).unwrap();
    let lines: Vec<&str> = full.lines().take(18).collect();
    let dir = tempfile::tempdir().unwrap();

    // 13 lines: two whole tasks and a task cut after its first line, which starts at line 13.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, lines[..13].join("\n") + "\n").unwrap();
    let err = hellaswag::read_tasks(&short, None, &Columns::default()).unwrap_err();
    assert!(matches!(err, HellaswagPrepError::BadLine { line: 13, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("short.txt:13:") && msg.contains("13 lines"), "{msg}");

    // The second task's label (line 8) out of range.
    let mut bad = lines.clone();
    bad[7] = "7";
    let bad_label = dir.path().join("bad_label.txt");
    std::fs::write(&bad_label, bad.join("\n") + "\n").unwrap();
    let msg = hellaswag::read_tasks(&bad_label, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("bad_label.txt:8:") && msg.contains("label `7`"), "{msg}");

    // A missing line shifts an ending into the label position: caught at the first misplaced label.
    let mut shifted = lines.clone();
    shifted.remove(3);
    shifted.push("extra ending so the count is still 18");
    let shifted_path = dir.path().join("shifted.txt");
    std::fs::write(&shifted_path, shifted.join("\n") + "\n").unwrap();
    let msg = hellaswag::read_tasks(&shifted_path, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("shifted.txt:8:") && msg.contains("is not 0, 1, 2 or 3"), "{msg}");
}

#[test]
fn malformed_jsonl_names_file_and_line() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, third: String| {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[2] = third;
        let p = dir.path().join(name);
        std::fs::write(&p, l.join("\n")).unwrap();
        p
    };

    let p = write("label.jsonl", lines[2].replace("\"label\": 2", "\"label\": 4"));
    let msg = hellaswag::read_tasks(&p, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("label.jsonl:3:") && msg.contains("label `4`"), "{msg}");

    let p = write("endings.jsonl", lines[2].replace("\"sit in a canoe while the man paddles.\", ", ""));
    let msg = hellaswag::read_tasks(&p, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("endings.jsonl:3:") && msg.contains("3 endings, expected 4"), "{msg}");

    // HellaSwag's test split has no labels.
    let p = write("nolabel.jsonl", lines[2].replace("\"label\": 2, ", ""));
    let msg = hellaswag::read_tasks(&p, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("nolabel.jsonl:3:") && msg.contains("no field `label`"), "{msg}");

    let p = write("json.jsonl", "{\"ctx\": ".into());
    let msg = hellaswag::read_tasks(&p, None, &Columns::default()).unwrap_err().to_string();
    assert!(msg.contains("json.jsonl:3:") && msg.contains("not JSON"), "{msg}");

    // Unknown extension without --format.
    let p = dir.path().join("tasks.csv");
    std::fs::write(&p, "x").unwrap();
    let err = hellaswag::read_tasks(&p, None, &Columns::default()).unwrap_err();
    assert!(matches!(err, HellaswagPrepError::UnknownFormat { .. }), "{err}");
    // ...which --format overrides.
    std::fs::copy(fixture(), &p).unwrap();
    assert_eq!(hellaswag::read_tasks(&p, Some(SourceFormat::Jsonl), &Columns::default()).unwrap(), fixture_tasks());
}

#[test]
fn corrupt_eval_files_are_rejected_with_the_rebuild_command() {
    let examples = hellaswag::tokenize_tasks(&fixture_tasks(), &Tokenizer::gpt2()).unwrap();
    let good = hellaswag_file::encode(&examples).unwrap();
    let path = Path::new("hellaswag_val.bin");
    let open = |bytes: &[u8]| HellaswagFile::from_bytes(bytes, path).unwrap_err();

    let mut b = good.clone();
    b[0..4].copy_from_slice(&20240520i32.to_le_bytes()); // a token shard's magic
    let err = open(&b);
    assert!(matches!(err, HellaswagFileError::BadMagic { magic: 20240520, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("hellaswag_val.bin") && msg.contains("tokenmill prep hellaswag"), "{msg}");

    let mut b = good.clone();
    b[4..8].copy_from_slice(&2i32.to_le_bytes());
    assert!(matches!(open(&b), HellaswagFileError::BadVersion { version: 2, .. }));

    assert!(matches!(open(&good[..100]), HellaswagFileError::TooShort { len: 100, .. }));

    // Cut inside the last example.
    let err = open(&good[..good.len() - 4]);
    assert!(matches!(err, HellaswagFileError::Corrupt { index: 4, .. }), "{err}");

    // Header claims one more example than the body holds.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&6i32.to_le_bytes());
    assert!(matches!(open(&b), HellaswagFileError::CountMismatch { expected: 6, actual: 5, .. }));

    // Bad label inside example 0 (u16 word 3 of the body).
    let mut b = good.clone();
    b[HEADER_BYTES + 6..HEADER_BYTES + 8].copy_from_slice(&9u16.to_le_bytes());
    let err = open(&b);
    assert!(
        matches!(err, HellaswagFileError::Corrupt { index: 0, .. }) && err.to_string().contains("<LABEL> 9"),
        "{err}"
    );

    // Wrong longest-example field.
    let mut b = good.clone();
    b[12..16].copy_from_slice(&2i32.to_le_bytes());
    assert!(matches!(open(&b), HellaswagFileError::LongestMismatch { header: 2, .. }));

    // Trailing garbage after the last example.
    let mut b = good.clone();
    b.extend_from_slice(&[0xff, 0xff, 0, 0]);
    assert!(matches!(open(&b), HellaswagFileError::TrailingBytes { extra: 4, .. }));

    // Half a u16 at the end.
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(open(&b), HellaswagFileError::OddBody { .. }));

    // Examples must be indexed by position to be encoded.
    let mut shuffled = examples.clone();
    shuffled.swap(0, 1);
    assert!(matches!(hellaswag_file::encode(&shuffled), Err(HellaswagFileError::Unencodable { index: 0, .. })));
}

#[test]
fn cli_writes_the_eval_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "hellaswag", "--input"])
        .arg(fixture())
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("examples: 5") && stdout.contains("labels 0: 0, 1: 1, 2: 2, 3: 2"), "{stdout}");
    let file = HellaswagFile::open(&dir.path().join("hellaswag_val.bin")).unwrap();
    assert_eq!(file.len(), 5);

    // A malformed input fails with the file and line on stderr.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "ctx\n5\na\nb\nc\nd\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "hellaswag", "--input"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.txt:2:") && stderr.contains("label `5`"), "{stderr}");
}

/// A minimal stand-in for the hub's HTTP API, enough for hf-hub's sync client: the revision listing and ranged file
/// downloads. `main` lists only a README, so the pipeline has to fall back to its second location.
mod mock_hub {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// Serve `file` (at `path` under revision `refs/convert/parquet` of `repo`) until the process exits.
    pub fn serve(repo: &'static str, path: &'static str, file: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let sha = sha256_hex(&file);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = v.trim().split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                    }
                }
                let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let listing = |siblings: String| format!("{{\"sha\": \"{COMMIT}\", \"siblings\": [{siblings}]}}");
                let (status, headers, body): (&str, String, Vec<u8>) = if target
                    .starts_with(&format!("/api/datasets/{repo}/revision/main"))
                {
                    (
                        "200 OK",
                        String::new(),
                        listing("{\"rfilename\": \"README.md\", \"size\": 10}".into()).into_bytes(),
                    )
                } else if target.starts_with(&format!("/api/datasets/{repo}/revision/refs%2Fconvert%2Fparquet")) {
                    let sib = format!(
                            "{{\"rfilename\": \"README.md\", \"size\": 10}}, {{\"rfilename\": \"{path}\", \"size\": {n}, \"lfs\": {{\"sha256\": \"{sha}\", \"size\": {n}}}}}",
                            n = file.len()
                        );
                    ("200 OK", String::new(), listing(sib).into_bytes())
                } else if target == format!("/datasets/{repo}/resolve/{COMMIT}/{path}") {
                    let (a, b) = range.unwrap_or((0, None));
                    let b = b.unwrap_or(file.len() - 1).min(file.len() - 1);
                    let h = format!(
                        "x-repo-commit: {COMMIT}\r\netag: \"{sha}\"\r\ncontent-range: bytes {a}-{b}/{}\r\n",
                        file.len()
                    );
                    ("206 Partial Content", h, file[a..=b].to_vec())
                } else {
                    ("404 Not Found", String::new(), b"not found".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
            }
        });
        endpoint
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

#[test]
fn hub_source_falls_back_to_the_next_location_and_downloads_verified_files() {
    use tokenmill::hub::HubClient;

    // The fixture as a parquet file in the Rowan/hellaswag schema, served by a local stand-in for the hub.
    let dir = tempfile::tempdir().unwrap();
    let tasks = fixture_tasks();
    let pq = dir.path().join("0000.parquet");
    write_rowan_parquet(&tasks, &pq);
    let endpoint = mock_hub::serve("Rowan/hellaswag", "default/validation/0000.parquet", std::fs::read(&pq).unwrap());

    let client = HubClient::with_endpoint(&endpoint, dir.path().join("hf-cache")).unwrap();
    let pipeline = HellaswagPipeline::builtin();
    let paths = hellaswag::fetch_hub_source(&client, &pipeline.source).unwrap();
    assert_eq!(paths.len(), 1);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), std::fs::read(&pq).unwrap());
    assert_eq!(hellaswag::read_tasks(&paths[0], None, &pipeline.columns).unwrap(), tasks);

    // A location list that matches nothing names every place it looked.
    let mut source = pipeline.source.clone();
    source.locations.truncate(1);
    let msg = hellaswag::fetch_hub_source(&client, &source).unwrap_err().to_string();
    assert!(msg.contains("Rowan/hellaswag") && msg.contains("`data/validation-` at main"), "{msg}");
}

/// Issue 20 item 7: `prep hellaswag --input one_task.txt --out DIR` replaced a finished 10,042-task eval file with a
/// 1-task one. Another eval file in the way is refused without `--overwrite` (the same bytes are fine), and a file
/// that is not an eval file is never replaced.
#[test]
fn an_existing_eval_file_is_replaced_only_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let full = hellaswag::prep(&config(vec![fixture()], dir.path())).unwrap();
    let bytes = std::fs::read(&full.path).unwrap();
    let one = PrepConfig { limit: Some(1), ..config(vec![fixture()], dir.path()) };
    let err = hellaswag::prep(&one).unwrap_err().to_string();
    assert!(err.contains("already holds another eval file (5 examples; this run would write 1)"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&full.path).unwrap(), bytes, "untouched");
    hellaswag::prep(&config(vec![fixture()], dir.path())).expect("the same file again is fine");
    let replaced = hellaswag::prep(&PrepConfig { overwrite: true, ..one }).unwrap();
    assert_eq!(HellaswagFile::open(&replaced.path).unwrap().len(), 1);

    std::fs::write(&full.path, "my notes").unwrap();
    let forced = PrepConfig { overwrite: true, ..config(vec![fixture()], dir.path()) };
    let err = hellaswag::prep(&forced).unwrap_err().to_string();
    assert!(err.contains("not a HellaSwag eval file"), "{err}");
    assert_eq!(std::fs::read(&full.path).unwrap(), b"my notes");
}
