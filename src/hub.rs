//! Hugging Face hub access: list the files of a repo revision (with sizes and LFS sha256) and download them into
//! the hf-hub cache (`$HF_HOME/hub`, the layout Python's huggingface_hub shares), resuming partial downloads and
//! verifying size and sha256 before a file is handed to a reader.
//!
//! Transport, URL layout (`{endpoint}/{datasets/}{repo}/resolve/{commit}/{path}`), cache layout, locking and the
//! `.part` resume (a `Range: bytes=N-` request appended to `blobs/{etag}.part`) are hf-hub 0.4.3's. This module adds
//! what hf-hub leaves out: the listing, pinning every download to the commit the listing resolved, checking the
//! bytes against the listing, repairing a stale `.part`, and errors that name the repo, the file and the endpoint.
//! Readers (the fineweb driver, `sample --model`) only ever see verified files.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The public hub; `HF_ENDPOINT` replaces it (a mirror, or a local server in tests).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Transfer retries inside one download call. hf-hub waits 0.3–0.8 s between tries and resumes from the bytes
/// already on disk, so a dropped connection costs one round trip, not the file.
pub const DEFAULT_RETRIES: usize = 3;

/// The hub answers a revision listing with every file of the repo: ~27k siblings (~6 MB of JSON) for
/// HuggingFaceFW/fineweb. Anything past this cap is not a listing.
const MAX_LISTING_BYTES: u64 = 512 << 20;

/// One file of a repo at a pinned commit, as the hub's listing describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path inside the repo, e.g. `sample/10BT/000_00000.parquet`.
    pub path: String,
    /// Size in bytes, when the hub reported it.
    pub size: Option<u64>,
    /// Lower-case hex sha256 of the content; the hub knows it for LFS files (every parquet / safetensors file).
    pub sha256: Option<String>,
    /// The commit the listing resolved its revision to. Downloads fetch exactly this commit, so a repo that moves
    /// on between listing and download cannot hand us bytes that disagree with `size` / `sha256`. Empty = `main`.
    pub revision: String,
}

/// Where the endpoint came from, so an error can say which setting to change.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EndpointOrigin {
    Env,
    Default,
    Explicit,
}

/// How to reach the hub and where to cache. `HubSettings::new` gives explicit, environment-free settings (tests,
/// embedding); `HubSettings::from_env` reads what huggingface_hub reads.
#[derive(Clone)]
pub struct HubSettings {
    /// Base URL without a trailing slash.
    pub endpoint: String,
    /// The hub cache directory (`$HF_HOME/hub`): `datasets--{org}--{name}/{blobs,snapshots,refs}` live here.
    pub cache_dir: PathBuf,
    /// Bearer token for private or gated repos.
    pub token: Option<String>,
    /// Transfer retries per download (see [`DEFAULT_RETRIES`]).
    pub retries: usize,
    /// Draw an indicatif progress bar per download (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Never touch the network: serve model files from the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    origin: EndpointOrigin,
}

impl HubSettings {
    pub fn new(endpoint: &str, cache_dir: impl Into<PathBuf>) -> Self {
        HubSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            retries: DEFAULT_RETRIES,
            progress: true,
            offline: false,
            origin: EndpointOrigin::Explicit,
        }
    }

    /// `HF_ENDPOINT` (mirror), `HF_HUB_CACHE` or `HF_HOME` (cache), `HF_TOKEN` or the token file written by
    /// `huggingface-cli login` (auth), `HF_HUB_OFFLINE` — the variables Python's huggingface_hub honours.
    pub fn from_env() -> Result<Self, HubError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (endpoint, origin) = match var("HF_ENDPOINT") {
            Some(e) => (e.trim().trim_end_matches('/').to_string(), EndpointOrigin::Env),
            None => (DEFAULT_ENDPOINT.to_string(), EndpointOrigin::Default),
        };
        let hf_home = match (var("HF_HOME"), var("HOME")) {
            (Some(home), _) => PathBuf::from(home),
            (None, Some(user_home)) => Path::new(&user_home).join(".cache").join("huggingface"),
            (None, None) => {
                return Err(HubError::Setup(
                    "neither HF_HOME nor HOME is set, so there is no place for the hub cache; set HF_HOME".into(),
                ))
            }
        };
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| fs::read_to_string(token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Ok(HubSettings {
            endpoint,
            cache_dir,
            token: token.map(|t| t.trim().to_string()),
            retries: DEFAULT_RETRIES,
            progress: true,
            offline,
            origin,
        })
    }

    /// How error messages name the endpoint: the setting to change.
    fn endpoint_note(&self) -> String {
        match self.origin {
            EndpointOrigin::Env => format!("HF_ENDPOINT={}", self.endpoint),
            EndpointOrigin::Default => format!("{}; set HF_ENDPOINT to use a mirror", self.endpoint),
            EndpointOrigin::Explicit => format!("endpoint {}", self.endpoint),
        }
    }
}

/// Debug output ends up in logs: never print the token.
impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint_note())
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retries", &self.retries)
            .field("progress", &self.progress)
            .field("offline", &self.offline)
            .finish()
    }
}

/// What a request was about, for messages: `dataset HuggingFaceFW/fineweb file sample/10BT/000_00000.parquet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: &'static str,
    pub repo: String,
    /// Empty for a whole-repo request (a listing).
    pub path: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.repo)?;
        if !self.path.is_empty() {
            write!(f, " file {}", self.path)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("could not reach {url} ({endpoint}) for {target}: {message}")]
    Unreachable { target: Box<Target>, url: String, endpoint: String, message: String },

    #[error("{url} answered HTTP {status} for {target} ({endpoint}): {message}{hint}")]
    Http { target: Box<Target>, url: String, endpoint: String, status: u16, message: String, hint: &'static str },

    #[error("the listing of {target} from {url} ({endpoint}) is not a hub revision listing: {message}")]
    BadListing { target: Box<Target>, url: String, endpoint: String, message: String },

    #[error(
        "{target} has no files under `{prefix}` at revision {revision} ({endpoint}); top-level entries: {available}"
    )]
    NoFiles { target: Box<Target>, prefix: String, revision: String, endpoint: String, available: String },

    #[error("{target} does not exist at revision {revision} ({endpoint}); the repo has: {available}")]
    MissingFile { target: Box<Target>, revision: String, endpoint: String, available: String },

    #[error("download of {target} from {url} ({endpoint}) failed: {message}{partial}")]
    Download { target: Box<Target>, url: String, endpoint: String, message: String, partial: String },

    #[error("{target} from {url} ({endpoint}) is corrupt: {detail}; the bad copy was removed from the cache, run again to download it afresh")]
    Corrupt { target: Box<Target>, url: String, endpoint: String, detail: String },

    #[error("{target} is not in the hub cache {cache}, and {reason}")]
    NotCached { target: Box<Target>, cache: PathBuf, reason: String },

    #[error("hub cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },

    #[error("hub client setup: {0}")]
    Setup(String),
}

/// A hub client: cheap to share across threads (one ureq agent, connection pool inside).
#[derive(Clone)]
pub struct HubClient {
    settings: HubSettings,
    api: Api,
}

/// hf-hub's `Api` prints its headers, the bearer token among them; show only the redacted settings.
impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl HubClient {
    /// Reads `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE`, `HF_TOKEN` (or the login token file), `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<HubClient, HubError> {
        Self::new(HubSettings::from_env()?)
    }

    /// An explicit endpoint and cache directory, no environment, no token.
    pub fn with_endpoint(endpoint: &str, cache_dir: impl Into<PathBuf>) -> Result<HubClient, HubError> {
        Self::new(HubSettings::new(endpoint, cache_dir))
    }

    pub fn new(settings: HubSettings) -> Result<HubClient, HubError> {
        if !(settings.endpoint.starts_with("http://") || settings.endpoint.starts_with("https://")) {
            return Err(HubError::Setup(format!(
                "the hub endpoint `{}` ({}) is not an http(s) URL",
                settings.endpoint,
                settings.endpoint_note()
            )));
        }
        let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            .with_retries(settings.retries)
            .with_progress(settings.progress)
            .with_user_agent("tokenmill", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Setup(e.to_string()))?;
        Ok(HubClient { settings, api })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Files of a dataset repo at `revision` whose path starts with `prefix` (e.g. `sample/10BT/`), sorted by path,
    /// each pinned to the commit `revision` resolved to. An empty match is an error naming what the repo does have.
    pub fn list_dataset_files(&self, repo: &str, revision: &str, prefix: &str) -> Result<Vec<RemoteFile>, HubError> {
        let files = self.list_repo(RepoType::Dataset, repo, revision)?;
        let matching: Vec<RemoteFile> = files.iter().filter(|f| f.path.starts_with(prefix)).cloned().collect();
        if matching.is_empty() {
            return Err(HubError::NoFiles {
                target: target(RepoType::Dataset, repo, ""),
                prefix: prefix.to_string(),
                revision: revision.to_string(),
                endpoint: self.settings.endpoint_note(),
                available: summarize_top_level(&files),
            });
        }
        Ok(matching)
    }

    /// Download one listed dataset file (resuming a partial download) into the hub cache and verify it against the
    /// listing's size and sha256. A cached copy is verified the same way before it is returned (sha256 runs at
    /// ~1 GB/s with SHA-NI on the dev machine: ~2 s per 2 GB FineWeb file, small next to tokenizing it).
    pub fn download_dataset_file(&self, repo: &str, file: &RemoteFile) -> Result<PathBuf, HubError> {
        self.fetch(RepoType::Dataset, repo, file)
    }

    /// A model repo file at `main` (`model.safetensors`, `config.json` for `sample --model gpt2`), verified against
    /// the hub's listing. With `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, a copy cached by an earlier
    /// download is used.
    pub fn download_model_file(&self, repo: &str, filename: &str) -> Result<PathBuf, HubError> {
        const REVISION: &str = "main";
        let cached_ref = Repo::with_revision(repo.to_string(), RepoType::Model, REVISION.to_string());
        let from_cache =
            |reason: String| match Cache::new(self.settings.cache_dir.clone()).repo(cached_ref.clone()).get(filename) {
                Some(path) => {
                    tracing::warn!("using the cached {} ({reason})", target(RepoType::Model, repo, filename));
                    Ok(path)
                }
                None => Err(HubError::NotCached {
                    target: target(RepoType::Model, repo, filename),
                    cache: self.settings.cache_dir.clone(),
                    reason,
                }),
            };
        if self.settings.offline {
            return from_cache("HF_HUB_OFFLINE is set".into());
        }
        let files = match self.list_repo(RepoType::Model, repo, REVISION) {
            Ok(files) => files,
            Err(err @ HubError::Unreachable { .. }) => return from_cache(format!("the hub is unreachable: {err}")),
            Err(err) => return Err(err),
        };
        let Some(file) = files.iter().find(|f| f.path == filename) else {
            return Err(HubError::MissingFile {
                target: target(RepoType::Model, repo, filename),
                revision: REVISION.to_string(),
                endpoint: self.settings.endpoint_note(),
                available: files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", "),
            });
        };
        let path = self.fetch(RepoType::Model, repo, file)?;
        // refs/main -> commit, so later offline runs find the file the way huggingface_hub would.
        let cache_repo = Cache::new(self.settings.cache_dir.clone()).repo(cached_ref);
        cache_repo
            .create_ref(&file.revision)
            .map_err(|source| HubError::Cache { path: self.settings.cache_dir.clone(), source })?;
        Ok(path)
    }

    /// Every file of a repo at `revision`: `GET {endpoint}/api/{kind}s/{repo}/revision/{rev}?blobs=true`, whose
    /// siblings carry `rfilename`, `size` and, for LFS files, `lfs.sha256`.
    fn list_repo(&self, kind: RepoType, repo: &str, revision: &str) -> Result<Vec<RemoteFile>, HubError> {
        let what = target(kind, repo, "");
        let request = self.api.repo(Repo::with_revision(repo.to_string(), kind, revision.to_string())).info_request();
        let url = request.url().to_string();
        let response = request.query("blobs", "true").call().map_err(|err| {
            match classify(ApiError::RequestError(Box::new(err)), 0) {
                Failure::Status { status, message, .. } => self.http_error(what.clone(), url.clone(), status, message),
                other => HubError::Unreachable {
                    target: what.clone(),
                    url: url.clone(),
                    endpoint: self.settings.endpoint_note(),
                    message: other.message(),
                },
            }
        })?;
        let mut body = Vec::new();
        response.into_reader().take(MAX_LISTING_BYTES).read_to_end(&mut body).map_err(|e| HubError::Unreachable {
            target: what.clone(),
            url: url.clone(),
            endpoint: self.settings.endpoint_note(),
            message: format!("reading the listing: {e}"),
        })?;
        let bad = |message: String| HubError::BadListing {
            target: what.clone(),
            url: url.clone(),
            endpoint: self.settings.endpoint_note(),
            message,
        };
        let info: RevisionInfo = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if info.sha.is_empty() {
            return Err(bad("`sha` (the resolved commit) is empty".into()));
        }
        let mut files = Vec::with_capacity(info.siblings.len());
        for s in info.siblings {
            let sha256 = match s.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()) {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h),
                Some(h) => {
                    return Err(bad(format!("`{}` has an lfs.sha256 that is not 64 hex digits: `{h}`", s.rfilename)))
                }
                None => None,
            };
            let size = s.size.or(s.lfs.and_then(|l| l.size));
            files.push(RemoteFile { path: s.rfilename, size, sha256, revision: info.sha.clone() });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Cached and verified, or downloaded (resumed) and verified; a copy that fails verification is removed.
    fn fetch(&self, kind: RepoType, repo: &str, file: &RemoteFile) -> Result<PathBuf, HubError> {
        let what = target(kind, repo, &file.path);
        let revision = if file.revision.is_empty() { "main" } else { file.revision.as_str() };
        let hf_repo = Repo::with_revision(repo.to_string(), kind, revision.to_string());
        let api_repo = self.api.repo(hf_repo.clone());
        let url = api_repo.url(&file.path);
        let cache_repo = Cache::new(self.settings.cache_dir.clone()).repo(hf_repo.clone());

        if let Some(cached) = cache_repo.get(&file.path) {
            match self.check(&cached, file)? {
                None => return Ok(cached),
                Some(detail) => {
                    tracing::warn!("cached {what} at {} is corrupt ({detail}); downloading it again", cached.display());
                    self.evict(&cached)?;
                }
            }
        }

        let mut repaired_part = false;
        let path = loop {
            match api_repo.download(&file.path) {
                Ok(path) => break path,
                Err(err) => {
                    let failure = classify(err, self.settings.retries);
                    // A `.part` that is already complete (416 to its Range request) or longer than the file: hf-hub
                    // would fail on it forever, so drop it once and start the transfer over.
                    let stale = matches!(failure, Failure::StaleResume | Failure::Status { status: 416, .. });
                    if stale && !repaired_part {
                        if let Some(part) = self.part_path(&hf_repo, file).filter(|p| p.exists()) {
                            tracing::warn!("discarding the stale partial download {}", part.display());
                            fs::remove_file(&part).map_err(|source| HubError::Cache { path: part, source })?;
                            repaired_part = true;
                            continue;
                        }
                    }
                    return Err(self.download_error(what, url, failure, &hf_repo, file));
                }
            }
        };

        match self.check(&path, file)? {
            None => Ok(path),
            Some(detail) => {
                self.evict(&path)?;
                Err(HubError::Corrupt { target: what, url, endpoint: self.settings.endpoint_note(), detail })
            }
        }
    }

    /// `None` when `path` matches the listing's size and sha256 (whichever it knows), else what differs.
    fn check(&self, path: &Path, file: &RemoteFile) -> Result<Option<String>, HubError> {
        let cache_err = |source| HubError::Cache { path: path.to_path_buf(), source };
        let len = fs::metadata(path).map_err(cache_err)?.len();
        if let Some(size) = file.size {
            if len != size {
                return Ok(Some(format!("{len} bytes where the hub lists {size}")));
            }
        }
        if let Some(expected) = &file.sha256 {
            let actual = sha256_file(path).map_err(cache_err)?;
            if &actual != expected {
                return Ok(Some(format!("sha256 {actual} where the hub lists {expected}")));
            }
        }
        Ok(None)
    }

    /// Remove a cached file: the blob and the snapshot link that points at it.
    fn evict(&self, pointer: &Path) -> Result<(), HubError> {
        let blob = fs::canonicalize(pointer).ok();
        for p in blob.iter().map(PathBuf::as_path).chain([pointer]) {
            if fs::symlink_metadata(p).is_ok() {
                fs::remove_file(p).map_err(|source| HubError::Cache { path: p.to_path_buf(), source })?;
            }
        }
        Ok(())
    }

    /// hf-hub keeps an unfinished transfer at `blobs/{etag}.part`; for LFS files the hub's etag is the sha256.
    fn part_path(&self, repo: &Repo, file: &RemoteFile) -> Option<PathBuf> {
        let sha = file.sha256.as_ref()?;
        Some(self.settings.cache_dir.join(repo.folder_name()).join("blobs").join(format!("{sha}.part")))
    }

    fn download_error(
        &self,
        what: Box<Target>,
        url: String,
        failure: Failure,
        repo: &Repo,
        file: &RemoteFile,
    ) -> HubError {
        if let Failure::Status { status, message, .. } = failure {
            return self.http_error(what, url, status, message);
        }
        let partial = match self.part_path(repo, file).and_then(|p| fs::metadata(&p).ok().map(|m| (p, m.len()))) {
            Some((p, n)) if n > 0 => {
                format!("; {n} bytes are kept in {} and the next run resumes from there", p.display())
            }
            _ => String::new(),
        };
        HubError::Download {
            target: what,
            url,
            endpoint: self.settings.endpoint_note(),
            message: failure.message(),
            partial,
        }
    }

    fn http_error(&self, what: Box<Target>, url: String, status: u16, message: String) -> HubError {
        let hint = match status {
            401 => " (the repo is private or gated, or the token is wrong: set HF_TOKEN)",
            403 => " (a gated repo: accept its terms on the hub, then set HF_TOKEN)",
            404 => " (no such repo, revision or file)",
            429 => " (rate limited: wait, or set HF_TOKEN for a higher limit)",
            _ => "",
        };
        HubError::Http { target: what, url, endpoint: self.settings.endpoint_note(), status, message, hint }
    }
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    sha256: String,
    size: Option<u64>,
}

/// hf-hub's error, reduced to what decides our next step and our message.
enum Failure {
    Status { status: u16, message: String },
    Transport(String),
    StaleResume,
    Other(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Status { status, message } => format!("HTTP {status}: {message}"),
            Failure::Transport(m) | Failure::Other(m) => m.clone(),
            Failure::StaleResume => "the partial download is longer than the file".into(),
        }
    }
}

fn classify(err: ApiError, retries: usize) -> Failure {
    match err {
        ApiError::RequestError(err) => {
            let err = *err;
            let text = err.to_string();
            match err.into_response() {
                Some(response) => {
                    let status = response.status();
                    let header_message = response.header("x-error-message").map(str::to_string);
                    let mut body = String::new();
                    let _ = response.into_reader().take(4096).read_to_string(&mut body);
                    Failure::Status { status, message: header_message.unwrap_or_else(|| error_text(&body)) }
                }
                // ureq prefixes the URL; our messages name it already.
                None => Failure::Transport(text.split_once(": ").map_or(text.clone(), |(_, rest)| rest.to_string())),
            }
        }
        ApiError::TooManyRetries(inner) => match classify(*inner, retries) {
            Failure::Transport(m) => Failure::Transport(format!("{m} (gave up after {retries} retries)")),
            other => other,
        },
        ApiError::IoError(e) => Failure::Transport(e.to_string()),
        ApiError::InvalidResume => Failure::StaleResume,
        ApiError::MissingHeader(h) => {
            Failure::Other(format!("the answer has no `{h}` header, so the endpoint does not speak the hub's protocol"))
        }
        ApiError::InvalidHeader(h) => Failure::Other(format!("the answer's `{h}` header is malformed")),
        ApiError::ParseIntError(e) => Failure::Other(format!("the answer's Content-Range size is malformed: {e}")),
        ApiError::LockAcquisition(p) => Failure::Other(format!(
            "another process holds the download lock {} (is a second prep running?)",
            p.display()
        )),
        // Variants behind hf-hub features we do not build (native-tls).
        #[allow(unreachable_patterns)]
        other => Failure::Other(other.to_string()),
    }
}

/// The hub answers errors as `{"error": "..."}`; anything else is shown trimmed.
fn error_text(body: &str) -> String {
    #[derive(Deserialize)]
    struct HubErrorBody {
        error: String,
    }
    match serde_json::from_str::<HubErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => {
            let t = body.trim();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t.chars().take(200).collect()
            }
        }
    }
}

/// Boxed: the error variants carry it, and a boxed target keeps `HubError` (and every error wrapping it) small.
fn target(kind: RepoType, repo: &str, path: &str) -> Box<Target> {
    let kind = match kind {
        RepoType::Model => "model",
        RepoType::Dataset => "dataset",
        RepoType::Space => "space",
    };
    Box::new(Target { kind, repo: repo.to_string(), path: path.to_string() })
}

/// The first path components of a listing, for "no files under prefix" messages.
fn summarize_top_level(files: &[RemoteFile]) -> String {
    let mut tops: Vec<&str> = files.iter().map(|f| f.path.split('/').next().unwrap_or("")).collect();
    tops.dedup();
    if tops.is_empty() {
        return "(none)".into();
    }
    let shown = tops.iter().take(20).copied().collect::<Vec<_>>().join(", ");
    if tops.len() > 20 {
        format!("{shown}, ... ({} entries)", tops.len())
    } else {
        shown
    }
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_the_hub_json_message() {
        assert_eq!(error_text(r#"{"error":"Repository not found"}"#), "Repository not found");
        assert_eq!(error_text("  plain failure \n"), "plain failure");
        assert_eq!(error_text(""), "(no message)");
    }

    #[test]
    fn top_level_summary_lists_each_first_component_once() {
        let f = |p: &str| RemoteFile { path: p.into(), size: None, sha256: None, revision: "c".into() };
        let files = [f("README.md"), f("data/a.parquet"), f("data/b.parquet"), f("sample/10BT/0.parquet")];
        assert_eq!(summarize_top_level(&files), "README.md, data, sample");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let mut settings = HubSettings::new("http://127.0.0.1:9", "/tmp/unused-hub-cache");
        settings.token = Some("hf_secret_value".into());
        let client = HubClient::new(settings).unwrap();
        let shown = format!("{client:?} {:?}", client.settings());
        assert!(!shown.contains("hf_secret_value") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn settings_reject_a_non_http_endpoint() {
        let err = HubClient::with_endpoint("huggingface.co", "/tmp/unused-hub-cache").unwrap_err();
        assert!(err.to_string().contains("`huggingface.co`"), "{err}");
    }
}
