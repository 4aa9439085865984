//! The hub client against a real HTTP/1.1 server on 127.0.0.1 that speaks the hub's protocol: the revision listing
//! (`/api/{datasets,models}/{repo}/revision/{rev}?blobs=true`), `resolve/{rev}/{path}` with HEAD/GET, `Range` (206 +
//! `Content-Range`, 416), `x-repo-commit`, and LFS files redirected to a CDN route with `x-linked-etag` = sha256, as
//! huggingface.co does. It serves the real FineWeb parquet files of tests/fixtures as `sample/10BT/000_0000N.parquet`.
//! Faults (a transfer cut after N bytes, the server vanishing, flipped bytes, a listing that lies about a size) are
//! switched per test. Every server stops when its test drops it, and by itself after 60 s.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokenmill::hub::{HubClient, HubError, HubSettings, RemoteFile};

#[path = "common/mod.rs"]
mod common;

const DATASET: &str = "HuggingFaceFW/fineweb";
const MODEL: &str = "openai-community/gpt2";
const COMMIT: &str = "0f3c1a6e9d2b4c8f7a5e3d1b9c7a5f3e1d2c4b6a";
const MODEL_COMMIT: &str = "607a30d783dfa663caf39e06633721c8d4cfcd7e";
/// Model repos holding only tokenizer files: the SentencePiece-style fixture (with its tokenizer_config.json) and the
/// byte-level BPE one (without).
const SPM_MODEL: &str = "tokenmill-test/spm-tokenizer";
const BPE_MODEL: &str = "tokenmill-test/bpe-tokenizer";
const TOKENIZER_COMMIT: &str = "1b2c3d4e5f60718293a4b5c6d7e8f90112233445";
/// A sharded Llama (tests/fixtures/hf/llama_gqa_untied: config.json, the index and three shards).
const SHARDED: &str = "tokenmill-test/llama-sharded";
const SHARDED_COMMIT: &str = "5a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

// ---------------------------------------------------------------------------------------------------------------
// Fixture data: the real parquet files, named as FineWeb's sample/10BT files are.

struct ServedFile {
    path: String,
    bytes: Arc<Vec<u8>>,
    sha256: String,
    /// LFS files are redirected to the CDN route and carry `x-linked-etag`; others are served in place.
    lfs: bool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn served(path: &str, bytes: Vec<u8>, lfs: bool) -> ServedFile {
    ServedFile { path: path.to_string(), sha256: sha256_hex(&bytes), bytes: Arc::new(bytes), lfs }
}

/// The vendored FineWeb parquet files (1.8 MB), read once per test binary.
fn parquet_files() -> &'static Vec<(String, Arc<Vec<u8>>)> {
    static FILES: OnceLock<Vec<(String, Arc<Vec<u8>>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        common::FINEWEB_FIXTURE_FILES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let src = common::fineweb_fixture_dir().join(name);
                let bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
                (format!("sample/10BT/000_{i:05}.parquet"), Arc::new(bytes))
            })
            .collect()
    })
}

fn fineweb_repo() -> Vec<ServedFile> {
    let mut files = vec![served("README.md", b"---\nlicense: odc-by\n---\n# FineWeb (test copy)\n".to_vec(), false)];
    for (path, bytes) in parquet_files() {
        files.push(ServedFile { path: path.clone(), sha256: sha256_hex(bytes), bytes: bytes.clone(), lfs: true });
    }
    files
}

fn gpt2_repo() -> Vec<ServedFile> {
    let config = br#"{"n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "vocab_size": 50257}"#.to_vec();
    // A real binary payload for the LFS path: one of the parquet files stands in for the weights.
    vec![served("config.json", config, false), served("model.safetensors", parquet_files()[0].1.to_vec(), true)]
}

/// A tokenizer fixture's files as a model repo serves them (tokenizer.json is LFS on the hub for large vocabularies).
fn tokenizer_repo(fixture: &str) -> Vec<ServedFile> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tokenizers").join(fixture);
    ["tokenizer.json", "tokenizer_config.json"]
        .into_iter()
        .filter(|f| dir.join(f).is_file())
        .map(|f| served(f, std::fs::read(dir.join(f)).unwrap(), f == "tokenizer.json"))
        .collect()
}

fn sharded_llama_repo() -> Vec<ServedFile> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama_gqa_untied");
    let mut files: Vec<ServedFile> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "reference.safetensors")
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            served(&name, bytes, name.ends_with(".safetensors"))
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

// ---------------------------------------------------------------------------------------------------------------
// The server.

#[derive(Clone, Debug, Default)]
struct Faults {
    /// Cut the next body longer than this many bytes after sending this many (once).
    cut_after: Option<usize>,
    /// After the cut, close the listening socket: the server is gone.
    vanish_after_cut: bool,
    /// Flip one byte in the middle of every file body (same size, different sha256).
    flip_byte: bool,
    /// Add this to every LFS file's size in the listing.
    listed_size_delta: i64,
}

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct Shared {
    /// ("datasets" | "models", repo) -> (commit, files)
    repos: HashMap<(String, String), (String, Vec<ServedFile>)>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
    stop: AtomicBool,
    base: String,
}

struct HubServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    fn start(faults: Faults) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut repos = HashMap::new();
        repos.insert(("datasets".to_string(), DATASET.to_string()), (COMMIT.to_string(), fineweb_repo()));
        repos.insert(("models".to_string(), MODEL.to_string()), (MODEL_COMMIT.to_string(), gpt2_repo()));
        for (repo, fixture) in [(SPM_MODEL, "spm"), (BPE_MODEL, "bpe")] {
            repos.insert(
                ("models".to_string(), repo.to_string()),
                (TOKENIZER_COMMIT.to_string(), tokenizer_repo(fixture)),
            );
        }
        repos.insert(("models".to_string(), SHARDED.to_string()), (SHARDED_COMMIT.to_string(), sharded_llama_repo()));
        let shared = Arc::new(Shared {
            repos,
            faults: Mutex::new(faults),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            base,
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Connections are served one at a time, each answered with `Connection: close`: the client under test
            // makes one request at a time, and a fault then hits exactly the request it was meant for.
            while !s.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if handle(&s, stream) == After::Vanish {
                            break; // drops the listener: later connects are refused
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        HubServer { shared, thread: Some(thread) }
    }

    fn endpoint(&self) -> &str {
        &self.shared.base
    }

    fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    fn ranges(&self) -> Vec<String> {
        self.log().into_iter().filter(|l| l.method == "GET").filter_map(|l| l.range).collect()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(PartialEq)]
enum After {
    Continue,
    Vanish,
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request { method, path: target, headers })
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], send_body: bool) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if send_body {
        let _ = stream.write_all(body);
    }
    let _ = stream.flush();
}

fn json_error(stream: &mut TcpStream, status: &str, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(stream, status, &[("Content-Type", "application/json".into())], body.as_bytes(), true);
}

fn handle(s: &Shared, mut stream: TcpStream) -> After {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let Some(req) = read_request(&stream) else { return After::Continue };
    s.log.lock().unwrap().push(Logged {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.headers.get("range").cloned(),
        authorization: req.headers.get("authorization").cloned(),
    });
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let head_only = req.method == "HEAD";

    // GET /api/{datasets|models}/{org}/{name}/revision/{rev}?blobs=true
    if let Some(rest) = path.strip_prefix("/api/") {
        let Some((kind, rest)) = rest.split_once('/') else { return not_found(&mut stream) };
        let Some((repo, rev)) = rest.split_once("/revision/") else { return not_found(&mut stream) };
        let Some((commit, files)) = s.repos.get(&(kind.to_string(), repo.to_string())) else {
            json_error(&mut stream, "404 Not Found", "Repository not found");
            return After::Continue;
        };
        if rev != "main" && rev != commit {
            json_error(&mut stream, "404 Not Found", &format!("Invalid rev id: {rev}"));
            return After::Continue;
        }
        let delta = s.faults.lock().unwrap().listed_size_delta;
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let size = f.bytes.len() as i64 + if f.lfs { delta } else { 0 };
                let mut v = serde_json::json!({ "rfilename": f.path, "size": size, "blobId": &f.sha256[..40] });
                if f.lfs {
                    v["lfs"] = serde_json::json!({ "sha256": f.sha256, "size": size, "pointerSize": 134 });
                }
                v
            })
            .collect();
        let body = serde_json::json!({ "id": repo, "sha": commit, "private": false, "siblings": siblings }).to_string();
        respond(&mut stream, "200 OK", &[("Content-Type", "application/json".into())], body.as_bytes(), !head_only);
        return After::Continue;
    }

    // The CDN route LFS files redirect to: /cdn/{sha256}
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = s.repos.values().flat_map(|(_, files)| files.iter()).find(|f| f.sha256 == sha);
        return match file {
            Some(f) => serve_bytes(s, &mut stream, &req, f, &[("ETag".into(), format!("\"{}\"", f.sha256))]),
            None => not_found(&mut stream),
        };
    }

    // /datasets/{org}/{name}/resolve/{rev}/{path} and /{org}/{name}/resolve/{rev}/{path}
    let Some((repo_part, rest)) = path.split_once("/resolve/") else { return not_found(&mut stream) };
    let (kind, repo) = match repo_part.strip_prefix("/datasets/") {
        Some(repo) => ("datasets", repo),
        None => ("models", repo_part.trim_start_matches('/')),
    };
    let Some((rev, file_path)) = rest.split_once('/') else { return not_found(&mut stream) };
    let Some((commit, files)) = s.repos.get(&(kind.to_string(), repo.to_string())) else {
        json_error(&mut stream, "404 Not Found", "Repository not found");
        return After::Continue;
    };
    if rev != "main" && rev != commit {
        json_error(&mut stream, "404 Not Found", &format!("Invalid rev id: {rev}"));
        return After::Continue;
    }
    let Some(file) = files.iter().find(|f| f.path == file_path) else {
        let message = format!("Entry not found: {file_path}");
        respond(
            &mut stream,
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound".into()), ("X-Error-Message", message)],
            b"",
            true,
        );
        return After::Continue;
    };
    let mut headers = vec![("X-Repo-Commit".to_string(), commit.clone())];
    if file.lfs {
        // huggingface.co: 302 to the CDN, the content's sha256 as x-linked-etag, the pointer's git oid as etag.
        headers.push(("X-Linked-Etag".into(), format!("\"{}\"", file.sha256)));
        headers.push(("X-Linked-Size".into(), file.bytes.len().to_string()));
        headers.push(("ETag".into(), format!("\"{}\"", &file.sha256[..40])));
        headers.push(("Location".into(), format!("{}/cdn/{}", s.base, file.sha256)));
        let h: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        respond(&mut stream, "302 Found", &h, b"", true);
        return After::Continue;
    }
    headers.push(("ETag".into(), format!("\"{}\"", &file.sha256[..40])));
    serve_bytes(s, &mut stream, &req, file, &headers)
}

fn not_found(stream: &mut TcpStream) -> After {
    json_error(stream, "404 Not Found", "Not found");
    After::Continue
}

/// 200 for the whole file, 206 + Content-Range for `Range: bytes=a-[b]`, 416 past the end; faults applied here.
fn serve_bytes(
    s: &Shared,
    stream: &mut TcpStream,
    req: &Request,
    file: &ServedFile,
    extra: &[(String, String)],
) -> After {
    let len = file.bytes.len();
    let mut headers: Vec<(&str, String)> = extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    headers.push(("Accept-Ranges", "bytes".into()));
    let (status, start, end) = match req.headers.get("range") {
        None => ("200 OK", 0, len),
        Some(range) => {
            let spec = range.strip_prefix("bytes=").expect("only byte ranges");
            let (a, b) = spec.split_once('-').expect("a-b range");
            let start: usize = a.parse().expect("range start");
            if start >= len {
                headers.push(("Content-Range", format!("bytes */{len}")));
                respond(stream, "416 Range Not Satisfiable", &headers, b"", true);
                return After::Continue;
            }
            let end = if b.is_empty() { len } else { (b.parse::<usize>().expect("range end") + 1).min(len) };
            headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
            ("206 Partial Content", start, end)
        }
    };
    let mut body = file.bytes[start..end].to_vec();
    let mut faults = s.faults.lock().unwrap();
    if faults.flip_byte && (start..end).contains(&(len / 2)) {
        body[len / 2 - start] ^= 0x5a;
    }
    if req.method == "HEAD" {
        respond(stream, status, &headers, &body, false);
        return After::Continue;
    }
    match faults.cut_after {
        Some(n) if body.len() > n => {
            faults.cut_after = None;
            // Promise the whole body, send n bytes, hang up.
            let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..n]);
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Both);
            if faults.vanish_after_cut {
                After::Vanish
            } else {
                After::Continue
            }
        }
        _ => {
            respond(stream, status, &headers, &body, true);
            After::Continue
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers.

/// ureq 2 sends every request through HTTP(S)_PROXY / ALL_PROXY when set and ignores NO_PROXY; a proxy must not
/// see (or break) traffic to 127.0.0.1. Std serialises environment access, so clearing once is race-free.
fn no_proxy() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for v in ["ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
            std::env::remove_var(v);
        }
    });
}

fn client(server: &HubServer, cache: &Path, retries: usize) -> HubClient {
    client_for(server.endpoint(), cache, retries, false)
}

fn client_for(endpoint: &str, cache: &Path, retries: usize, offline: bool) -> HubClient {
    no_proxy();
    let mut settings = HubSettings::new(endpoint, cache);
    settings.retries = retries;
    settings.progress = false;
    settings.offline = offline;
    HubClient::new(settings).expect("hub client")
}

fn source_bytes(path: &str) -> Arc<Vec<u8>> {
    parquet_files().iter().find(|(p, _)| p == path).map(|(_, b)| b.clone()).expect("a served path")
}

fn list(hub: &HubClient) -> Vec<RemoteFile> {
    hub.list_dataset_files(DATASET, "main", "sample/10BT/").expect("listing")
}

/// Every regular file under `dir` (blobs, parts), recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files_under(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn blobs_dir(cache: &Path) -> PathBuf {
    cache.join("datasets--HuggingFaceFW--fineweb").join("blobs")
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[test]
fn listing_pins_the_commit_and_reports_sizes_and_sha256() {
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);

    let files = list(&hub);
    assert_eq!(files.len(), parquet_files().len(), "README.md must be filtered out by the prefix");
    for (i, f) in files.iter().enumerate() {
        let bytes = &parquet_files()[i].1;
        assert_eq!(f.path, format!("sample/10BT/000_{i:05}.parquet"), "sorted by path");
        assert_eq!(f.size, Some(bytes.len() as u64));
        assert_eq!(f.sha256.as_deref(), Some(sha256_hex(bytes).as_str()));
        assert_eq!(f.revision, COMMIT, "pinned to the commit `main` resolved to");
    }
    let listing = server.log().into_iter().find(|l| l.path.starts_with("/api/")).unwrap();
    assert_eq!(listing.path, format!("/api/datasets/{DATASET}/revision/main?blobs=true"));

    let err = hub.list_dataset_files(DATASET, "main", "sample/100BT/").unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::NoFiles { .. }), "{msg}");
    assert!(msg.contains("sample/100BT/") && msg.contains("README.md, sample"), "{msg}");

    let err = hub.list_dataset_files("nobody/nothing", "main", "").unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Http { status: 404, .. }), "{msg}");
    assert!(msg.contains("nobody/nothing") && msg.contains("Repository not found"), "{msg}");
    assert!(msg.contains(server.endpoint()), "names the endpoint: {msg}");
}

#[test]
fn download_returns_the_source_bytes_and_then_serves_the_cache() {
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let files = list(&hub);

    for f in &files[..3] {
        let path = hub.download_dataset_file(DATASET, f).expect("download");
        assert_eq!(std::fs::read(&path).unwrap(), *source_bytes(&f.path), "{}", f.path);
        let expected = cache.path().join("datasets--HuggingFaceFW--fineweb/snapshots").join(COMMIT).join(&f.path);
        assert_eq!(path, expected, "the hf-hub cache layout");
    }
    // The LFS route was taken: resolve redirected to the CDN, which served the bytes.
    assert!(server.log().iter().any(|l| l.path.starts_with("/cdn/")));

    let requests_before = server.log().len();
    let again = hub.download_dataset_file(DATASET, &files[0]).expect("cached");
    assert_eq!(std::fs::read(&again).unwrap(), *source_bytes(&files[0].path));
    assert_eq!(server.log().len(), requests_before, "a verified cached file needs no request");
}

#[test]
fn an_interrupted_transfer_resumes_on_the_next_call_with_a_range_request() {
    const CUT: usize = 100_000;
    let server = HubServer::start(Faults { cut_after: Some(CUT), ..Faults::default() });
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let file = list(&hub)[1].clone();
    let sha = file.sha256.clone().unwrap();

    let err = hub.download_dataset_file(DATASET, &file).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Download { .. }), "{msg}");
    assert!(msg.contains(&file.path) && msg.contains(server.endpoint()), "{msg}");
    assert!(msg.contains(&format!("{CUT} bytes are kept")), "{msg}");
    let part = blobs_dir(cache.path()).join(format!("{sha}.part"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), CUT as u64);

    let path = hub.download_dataset_file(DATASET, &file).expect("resumed download");
    assert_eq!(std::fs::read(&path).unwrap(), *source_bytes(&file.path), "byte-identical after resume");
    assert!(server.ranges().contains(&format!("bytes={CUT}-")), "resumed with a Range request: {:?}", server.ranges());
    assert!(!part.exists(), "the .part became the blob");
}

#[test]
fn a_dropped_connection_is_resumed_within_the_same_call() {
    const CUT: usize = 65_536;
    let server = HubServer::start(Faults { cut_after: Some(CUT), ..Faults::default() });
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 2);
    let file = list(&hub)[3].clone();

    let path = hub.download_dataset_file(DATASET, &file).expect("retried download");
    assert_eq!(std::fs::read(&path).unwrap(), *source_bytes(&file.path));
    assert!(server.ranges().contains(&format!("bytes={CUT}-")), "{:?}", server.ranges());
}

#[test]
fn corrupted_bytes_are_rejected_and_not_kept() {
    let server = HubServer::start(Faults { flip_byte: true, ..Faults::default() });
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let file = list(&hub)[2].clone();
    let sha = file.sha256.clone().unwrap();

    let err = hub.download_dataset_file(DATASET, &file).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&file.path) && msg.contains(&sha) && msg.contains("sha256"), "{msg}");
    let left: Vec<PathBuf> =
        files_under(cache.path()).into_iter().filter(|p| !p.to_string_lossy().ends_with(".lock")).collect();
    let blobs: Vec<&PathBuf> = left.iter().filter(|p| p.starts_with(blobs_dir(cache.path()))).collect();
    assert!(blobs.is_empty(), "the corrupt blob must be removed: {blobs:?}");
    let link = cache.path().join("datasets--HuggingFaceFW--fineweb/snapshots").join(COMMIT).join(&file.path);
    assert!(std::fs::symlink_metadata(&link).is_err(), "the snapshot link must be removed");

    // Once the server is healthy again the same call succeeds: nothing bad was left to resume from.
    server.set_faults(Faults::default());
    let path = hub.download_dataset_file(DATASET, &file).expect("clean download");
    assert_eq!(std::fs::read(&path).unwrap(), *source_bytes(&file.path));
}

#[test]
fn a_size_that_disagrees_with_the_listing_is_rejected() {
    let server = HubServer::start(Faults { listed_size_delta: 7, ..Faults::default() });
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let file = list(&hub)[1].clone();
    let real = source_bytes(&file.path).len();
    assert_eq!(file.size, Some(real as u64 + 7));

    let err = hub.download_dataset_file(DATASET, &file).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&format!("{real} bytes where the hub lists {}", real + 7)), "{msg}");
    assert!(msg.contains(&file.path), "{msg}");
}

#[test]
fn the_server_going_away_mid_transfer_is_a_clear_error() {
    const CUT: usize = 50_000;
    let server = HubServer::start(Faults { cut_after: Some(CUT), vanish_after_cut: true, ..Faults::default() });
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 1);
    let file = list(&hub)[3].clone();

    let started = Instant::now();
    let err = hub.download_dataset_file(DATASET, &file).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "gave up in {:?}", started.elapsed());
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Download { .. }), "{msg}");
    assert!(msg.contains(&file.path) && msg.contains(server.endpoint()), "{msg}");
    assert!(msg.to_lowercase().contains("connection refused"), "says why: {msg}");
    assert!(msg.contains(&format!("{CUT} bytes are kept")), "{msg}");

    // And a listing against a port nobody listens on.
    let gone = server.endpoint().to_string();
    drop(server);
    let hub = client_for(&gone, cache.path(), 0, false);
    let err = hub.list_dataset_files(DATASET, "main", "sample/10BT/").unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::Unreachable { .. }), "{msg}");
    assert!(msg.starts_with(&format!("could not reach {gone}/api/datasets/{DATASET}/revision/main")), "{msg}");
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
}

#[test]
fn a_stale_complete_part_file_is_discarded_and_downloaded_again() {
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let file = list(&hub)[2].clone();
    let sha = file.sha256.clone().unwrap();
    // A run that received every byte but died before the rename: the Range request for the rest gets 416.
    let blobs = blobs_dir(cache.path());
    std::fs::create_dir_all(&blobs).unwrap();
    let mut garbage = source_bytes(&file.path).to_vec();
    garbage.reverse();
    std::fs::write(blobs.join(format!("{sha}.part")), &garbage).unwrap();

    let path = hub.download_dataset_file(DATASET, &file).expect("repaired download");
    assert_eq!(std::fs::read(&path).unwrap(), *source_bytes(&file.path));
    assert!(server.ranges().contains(&format!("bytes={}-", garbage.len())), "{:?}", server.ranges());
}

#[test]
fn model_files_download_verify_and_work_offline_afterwards() {
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);

    let config = hub.download_model_file(MODEL, "config.json").expect("config.json");
    assert!(std::fs::read_to_string(&config).unwrap().contains("\"n_embd\": 768"));
    let weights = hub.download_model_file(MODEL, "model.safetensors").expect("model.safetensors");
    assert_eq!(std::fs::read(&weights).unwrap(), *parquet_files()[0].1);
    assert!(server.log().iter().any(|l| l.path == format!("/{MODEL}/resolve/{MODEL_COMMIT}/model.safetensors")));

    let err = hub.download_model_file(MODEL, "pytorch_model.bin").unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, HubError::MissingFile { .. }), "{msg}");
    assert!(msg.contains("config.json, model.safetensors"), "{msg}");

    // Offline: the cache answers, and a file never downloaded is a clear error.
    let endpoint = server.endpoint().to_string();
    drop(server);
    let hub = client_for(&endpoint, cache.path(), 0, true);
    assert_eq!(hub.download_model_file(MODEL, "config.json").unwrap(), config);
    let err = hub.download_model_file(MODEL, "tokenizer.json").unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json") && err.to_string().contains("HF_HUB_OFFLINE is set"), "{err}");
    // The hub being unreachable falls back to the cache the same way.
    let hub = client_for(&endpoint, cache.path(), 0, false);
    assert_eq!(hub.download_model_file(MODEL, "model.safetensors").unwrap(), weights);
}

#[test]
fn a_tokenizer_from_hf_repo_is_the_repos_files_and_loads_offline_from_the_cache() {
    use tokenmill::tokenizer::TokenizerSource;
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tokenizers");
    let load = |repo: &str, offline: bool| {
        let hub = client_for(server.endpoint(), cache.path(), 0, offline);
        format!("hf:{repo}").parse::<TokenizerSource>().unwrap().load_with(|| Ok(hub)).unwrap()
    };
    for (repo, fixture, has_config) in [(SPM_MODEL, "spm", true), (BPE_MODEL, "bpe", false)] {
        let local = TokenizerSource::Path(fixtures.join(fixture)).load().unwrap().info();
        let online = load(repo, false).info();
        assert!(online.same_as(&local), "{repo}: {online:?}");
        let hf = online.hf.as_ref().unwrap();
        assert_eq!((hf.source.as_str(), hf.config_file.is_some()), (format!("hf:{repo}").as_str(), has_config));
        // Offline, from the cache alone (a repo without tokenizer_config.json stays without one).
        let offline = load(repo, true).info();
        assert_eq!(offline, online, "{repo}");
    }
    // A repo without tokenizer.json is named with what it has.
    let hub = client(&server, cache.path(), 0);
    let err = TokenizerSource::Hub(MODEL.into()).load_with(|| Ok(hub)).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("config.json, model.safetensors"), "{err}");
}

/// `train --init hf:REPO`'s files: a sharded model (no model.safetensors) is found through its index, every shard
/// downloaded and verified, and the same files come from the cache offline; the model loads as transformers saved it.
#[test]
fn a_sharded_model_is_fetched_through_its_index_and_then_served_offline() {
    use tokenmill::model::hf::{load_hf_model, HfFiles};
    let server = HubServer::start(Faults::default());
    let cache = tempfile::tempdir().unwrap();
    let hub = client(&server, cache.path(), 0);
    let files = HfFiles::from_hub(&hub, SHARDED).expect("the sharded repo");
    assert_eq!(files.weights.len(), 3, "{files:?}");
    assert_eq!(files.tokenizer, None, "the repo has no tokenizer.json");
    let model = load_hf_model(&files, tokenmill::model::Precision::FP32, &candle_core::Device::Cpu).unwrap();
    assert_eq!((model.config().n_layer, model.config().kv_heads(), model.config().tied()), (2, 2, false));
    assert!(server.log().iter().any(|l| l.path.ends_with("/model.safetensors.index.json")));

    let endpoint = server.endpoint().to_string();
    drop(server);
    let offline = HfFiles::from_hub(&client_for(&endpoint, cache.path(), 0, true), SHARDED).expect("from the cache");
    assert_eq!(offline, files);
}

/// `from_env` reads HF_ENDPOINT, HF_HOME and HF_TOKEN. The only test here that touches those variables, so it
/// cannot race the others (which pass settings explicitly).
#[test]
fn from_env_honours_hf_endpoint_hf_home_and_hf_token() {
    let server = HubServer::start(Faults::default());
    let home = tempfile::tempdir().unwrap();
    no_proxy();
    std::env::set_var("HF_ENDPOINT", server.endpoint());
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_TOKEN", "hf_test_token");
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_HUB_OFFLINE");
    let hub = HubClient::from_env();
    for v in ["HF_ENDPOINT", "HF_HOME", "HF_TOKEN"] {
        std::env::remove_var(v);
    }
    let mut hub = hub.expect("from_env");
    assert_eq!(hub.settings().cache_dir, home.path().join("hub"));
    let mut settings = hub.settings().clone();
    settings.progress = false;
    hub = HubClient::new(settings).unwrap();

    let files = list(&hub);
    let path = hub.download_dataset_file(DATASET, &files[0]).expect("download via HF_ENDPOINT");
    assert!(path.starts_with(home.path().join("hub")));
    let log = server.log();
    assert!(
        log.iter().all(|l| l.authorization.as_deref() == Some("Bearer hf_test_token") || l.path.starts_with("/cdn/")),
        "{log:?}"
    );

    let err = hub.list_dataset_files("nobody/nothing", "main", "").unwrap_err();
    assert!(err.to_string().contains(&format!("HF_ENDPOINT={}", server.endpoint())), "{err}");
}
