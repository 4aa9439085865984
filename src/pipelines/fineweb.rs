//! `prep fineweb`: documents -> GPT-2 BPE (parallel, order preserved) -> shards + manifest, resumable.
//!
//! Three stages overlap:
//! 1. a reader thread walks the input files in order (downloading hub files first, one file ahead), and sends chunks of
//!    document texts through a bounded channel (bounded memory: at most a few chunks in flight);
//! 2. the calling thread tokenizes each chunk on a rayon pool (`par_iter` + ordered `collect`: output never depends on
//!    the thread count), and appends the documents in order to the [`ShardWriter`];
//! 3. the writer's own thread writes finished shards (temp name, fsync, rename) and the manifest.
//!
//! Resume: the manifest's cursor says which document to start at and how many of its tokens are already in finished
//! shards; files entirely before the cursor are skipped without being opened (or downloaded).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::hub::{HubClient, HubError, RemoteFile};
use crate::pipelines::sources::{self, Flow, SourceError, SourceFile, SourceKind};
use crate::shards::manifest::{DatasetDefinition, InputIdentity, Manifest};
use crate::shards::writer::{PushOutcome, ShardWriter, WriterConfig, WriterError};
use crate::tokenizer::{Tokenizer, TokenizerKind};

/// Documents are grouped into chunks of about this many text bytes before they are tokenized in parallel: big enough
/// that the barrier at the end of a chunk costs < 1% (one document's time), small enough to bound memory.
const CHUNK_TEXT_BYTES: usize = 4 << 20;
/// Chunks allowed in flight between the reader and the tokenizer.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Where the documents come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// Local files (parquet, jsonl, txt), in this order.
    Local(Vec<SourceFile>),
    /// Parquet files of a hub dataset repo under `prefix`.
    Hub { repo: String, revision: String, prefix: String },
}

#[derive(Clone, Debug)]
pub struct PrepOptions {
    pub input: Input,
    pub text_column: String,
    pub out: PathBuf,
    pub dataset: String,
    pub tokenizer: TokenizerKind,
    pub shard_size: u64,
    pub val_shards: usize,
    pub max_shards: Option<usize>,
    /// Tokenizer threads (rayon); 0 = all cores.
    pub threads: usize,
    pub progress: bool,
    /// Replace a dataset `out` already holds instead of resuming it (`--overwrite`).
    pub overwrite: bool,
}

#[derive(Clone, Debug)]
pub struct PrepReport {
    pub manifest: Manifest,
    /// Shards that existed before this run (resume).
    pub shards_before: usize,
    pub documents_read: u64,
    pub tokens_written: u64,
    pub seconds: f64,
    pub complete: bool,
}

impl PrepReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_written as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{repo}: no parquet files under `{prefix}` at revision {revision}")]
    NoHubFiles { repo: String, revision: String, prefix: String },
    #[error("could not build a thread pool of {threads} threads: {message}")]
    Threads { threads: usize, message: String },
    #[error("the reader thread stopped unexpectedly")]
    ReaderThread,
    #[error("{0}: the hub download thread stopped unexpectedly")]
    DownloadThread(String),
}

/// One input file as the reader sees it: local, or on the hub and downloaded when reached.
#[derive(Clone, Debug)]
enum PlannedFile {
    Local(SourceFile),
    Remote(RemoteFile),
}

impl PlannedFile {
    fn name(&self) -> String {
        match self {
            PlannedFile::Local(f) => f.path.display().to_string(),
            PlannedFile::Remote(r) => r.path.clone(),
        }
    }
}

/// Messages from the reader thread, in document order.
enum ReaderMsg {
    /// A file starts; its documents get global indices from `first_doc`.
    FileStart {
        name: String,
        bytes: u64,
        first_doc: u64,
    },
    Docs(Vec<String>),
}

pub fn prep(opts: &PrepOptions) -> Result<PrepReport, PrepError> {
    let start = Instant::now();
    let (hub, files) = plan_files(opts)?;
    let repo = match &opts.input {
        Input::Hub { repo, .. } => repo.clone(),
        Input::Local(_) => String::new(),
    };
    let (mut writer, cursor, manifest_before) = ShardWriter::open(WriterConfig {
        dir: opts.out.clone(),
        dataset: opts.dataset.clone(),
        tokenizer: opts.tokenizer,
        shard_size: opts.shard_size,
        val_shards: opts.val_shards,
        max_shards: opts.max_shards,
        definition: definition(opts, &files)?,
        overwrite: opts.overwrite,
    })?;
    let shards_before = manifest_before.shards.len();
    if manifest_before.complete || writer.limit_reached() {
        let complete = manifest_before.complete;
        let manifest = writer.finish(false)?;
        return Ok(PrepReport {
            manifest,
            shards_before,
            documents_read: 0,
            tokens_written: 0,
            seconds: 0.0,
            complete,
        });
    }
    // Rows per file from the previous run let the reader skip whole files without opening them.
    let known_rows: Vec<Option<u64>> =
        files.iter().map(|f| manifest_before.sources.iter().find(|s| s.file == f.name()).map(|s| s.rows)).collect();

    let threads = capped_threads(opts.threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bpe-{i}"))
        .build()
        .map_err(|e| PrepError::Threads { threads, message: e.to_string() })?;
    let tokenizer = Tokenizer::new(opts.tokenizer);
    let _ = opts.tokenizer.bpe(); // build the encoder before the clock of the first chunk starts

    let (tx, rx) = bounded::<Result<ReaderMsg, PrepError>>(CHUNKS_IN_FLIGHT);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let column = opts.text_column.clone();
        let skip_docs = cursor.first_unfinished_document;
        std::thread::Builder::new()
            .name("doc-reader".into())
            .spawn(move || {
                // Errors travel through the channel, in order after the documents read before them.
                if let Err(e) = read_all(files, known_rows, hub.map(|h| (h, repo)), column, skip_docs, &tx, &stop) {
                    let _ = tx.send(Err(e));
                }
            })
            .expect("spawn reader thread")
    };

    let progress = make_progress(opts);
    let mut skip_tokens = cursor.tokens_into_document as usize;
    let (mut documents_read, mut tokens_written) = (0u64, 0u64);
    let mut full = false;
    let result: Result<(), PrepError> = (|| {
        for msg in rx.iter() {
            match msg? {
                ReaderMsg::FileStart { name, bytes, first_doc } => writer.begin_source(&name, bytes, first_doc),
                ReaderMsg::Docs(docs) => {
                    let encoded: Vec<Vec<u32>> = pool.install(|| {
                        docs.par_iter()
                            .with_min_len(1)
                            .map(|d| {
                                let mut ids = Vec::with_capacity(d.len() / 4 + 1);
                                tokenizer.encode_document_into(d, &mut ids);
                                ids
                            })
                            .collect()
                    });
                    for ids in &encoded {
                        let skip = std::mem::take(&mut skip_tokens);
                        tokens_written += ids.len().saturating_sub(skip) as u64;
                        documents_read += 1;
                        if writer.push_document(ids, skip)? == PushOutcome::Full {
                            full = true;
                            break;
                        }
                    }
                    progress.set_position(progress_position(opts, documents_read, tokens_written, shards_before));
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    progress.set_message(format!(
                        "docs {documents_read} | tokens {tokens_written} | {:.2}M tok/s",
                        tokens_written as f64 / secs / 1e6
                    ));
                    if full {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    // Stop the reader (it may be blocked on a full channel) before joining it.
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    reader.join().map_err(|_| PrepError::ReaderThread)?;
    // A reader error arrives as a message, so reaching here with `Ok` and not `full` means the input really ended.
    result?;
    let input_exhausted = !full;
    let manifest = writer.finish(input_exhausted)?;
    progress.finish_and_clear();
    Ok(PrepReport {
        complete: manifest.complete,
        manifest,
        shards_before,
        documents_read,
        tokens_written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn plan_files(opts: &PrepOptions) -> Result<(Option<HubClient>, Vec<PlannedFile>), PrepError> {
    match &opts.input {
        Input::Local(files) => Ok((None, files.iter().cloned().map(PlannedFile::Local).collect())),
        Input::Hub { repo, revision, prefix } => {
            let client = HubClient::from_env()?;
            let files: Vec<PlannedFile> = client
                .list_dataset_files(repo, revision, prefix)?
                .into_iter()
                .filter(|f| f.path.ends_with(".parquet"))
                .map(PlannedFile::Remote)
                .collect();
            if files.is_empty() {
                return Err(PrepError::NoHubFiles {
                    repo: repo.clone(),
                    revision: revision.clone(),
                    prefix: prefix.clone(),
                });
            }
            Ok((Some(client), files))
        }
    }
}

/// What defines the dataset this run would write: every input file's identity (local: size and content
/// fingerprint; hub: size and the hub's sha256), the text column and the val split.
fn definition(opts: &PrepOptions, files: &[PlannedFile]) -> Result<DatasetDefinition, PrepError> {
    let inputs = files
        .iter()
        .map(|f| match f {
            PlannedFile::Local(s) => Ok(InputIdentity {
                file: f.name(),
                bytes: std::fs::metadata(&s.path).map_err(|e| SourceError::Io { path: f.name(), source: e })?.len(),
                content: sources::fingerprint(&s.path)?,
            }),
            PlannedFile::Remote(r) => Ok(InputIdentity {
                file: r.path.clone(),
                bytes: r.size.unwrap_or(0),
                content: r
                    .sha256
                    .as_ref()
                    .map_or(InputIdentity::UNKNOWN_CONTENT.to_string(), |h| format!("sha256:{h}")),
            }),
        })
        .collect::<Result<Vec<_>, PrepError>>()?;
    Ok(DatasetDefinition { inputs, text_column: opts.text_column.clone(), val_shards: opts.val_shards })
}

/// The reader thread: every file in order; documents before `skip_docs` are counted, not sent.
fn read_all(
    files: Vec<PlannedFile>,
    known_rows: Vec<Option<u64>>,
    hub: Option<(HubClient, String)>,
    column: String,
    skip_docs: u64,
    tx: &Sender<Result<ReaderMsg, PrepError>>,
    stop: &AtomicBool,
) -> Result<(), PrepError> {
    let send = |m: Result<ReaderMsg, PrepError>| tx.send(m).is_ok() && !stop.load(Ordering::Relaxed);
    let mut first_doc = 0u64;
    let mut prefetch: Option<std::thread::JoinHandle<Result<PathBuf, HubError>>> = None;
    for (i, planned) in files.iter().enumerate() {
        let name = planned.name();
        // Entirely before the resume point: account for its rows without opening (or downloading) it.
        if let Some(rows) = known_rows[i] {
            if first_doc + rows <= skip_docs {
                let bytes = match planned {
                    PlannedFile::Local(f) => std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0),
                    PlannedFile::Remote(r) => r.size.unwrap_or(0),
                };
                if !send(Ok(ReaderMsg::FileStart { name, bytes, first_doc })) {
                    return Ok(());
                }
                first_doc += rows;
                continue;
            }
        }
        let local = match planned {
            PlannedFile::Local(f) => f.clone(),
            PlannedFile::Remote(r) => {
                let (hub, repo) = hub.as_ref().expect("remote files come with a hub client");
                let path = match prefetch.take() {
                    Some(h) => h.join().map_err(|_| PrepError::DownloadThread(r.path.clone()))??,
                    None => hub.download_dataset_file(repo, r)?,
                };
                // Download the next remote file while this one is read and tokenized.
                if let Some(PlannedFile::Remote(next)) = files.get(i + 1) {
                    let (client, repo, next) = (hub.clone(), repo.clone(), next.clone());
                    prefetch = Some(std::thread::spawn(move || client.download_dataset_file(&repo, &next)));
                }
                SourceFile { path, kind: SourceKind::Parquet }
            }
        };
        let bytes = std::fs::metadata(&local.path).map(|m| m.len()).unwrap_or(0);
        if !send(Ok(ReaderMsg::FileStart { name, bytes, first_doc })) {
            return Ok(());
        }
        let skip_here = skip_docs.saturating_sub(first_doc);
        let mut chunk: Vec<String> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut stopped = false;
        let read = sources::read_documents(&local, &column, skip_here, |docs| {
            for d in docs {
                chunk_bytes += d.len();
                chunk.push(d);
            }
            if chunk_bytes >= CHUNK_TEXT_BYTES {
                chunk_bytes = 0;
                if !send(Ok(ReaderMsg::Docs(std::mem::take(&mut chunk)))) {
                    stopped = true;
                    return Flow::Stop;
                }
            }
            Flow::Continue
        });
        let rows = read?;
        if stopped {
            return Ok(());
        }
        if !chunk.is_empty() && !send(Ok(ReaderMsg::Docs(chunk))) {
            return Ok(());
        }
        first_doc += rows;
    }
    Ok(())
}

fn make_progress(opts: &PrepOptions) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let (len, unit) = match (opts.max_shards, &opts.input) {
        (Some(n), _) => (n as u64 * opts.shard_size, "tokens"),
        (None, Input::Local(files)) => (files.iter().map(|f| sources::count_documents(f).unwrap_or(0)).sum(), "docs"),
        (None, Input::Hub { .. }) => (0, "docs"),
    };
    let bar = if len > 0 { ProgressBar::new(len) } else { ProgressBar::new_spinner() };
    let template =
        format!("{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} | {{msg}} | ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar
}

fn progress_position(opts: &PrepOptions, docs: u64, tokens: u64, shards_before: usize) -> u64 {
    match opts.max_shards {
        Some(_) => shards_before as u64 * opts.shard_size + tokens,
        None => docs,
    }
}

/// `--threads`: 0 means every core; more than the machine has only adds contention (and 100,000 threads exhaust
/// it), so a larger number is capped, with a note.
fn capped_threads(asked: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if asked > cores {
        tracing::warn!("--threads {asked}: this machine has {cores} cores; using {cores}");
        return cores;
    }
    asked
}

/// Resolve `--input` paths into source files (helper for the CLI and tests).
pub fn local_input(paths: &[PathBuf]) -> Result<Input, PrepError> {
    Ok(Input::Local(sources::expand_inputs(paths)?))
}

/// Check that a directory looks like `prep` output (used by `train --data`).
pub fn is_shard_dir(dir: &Path) -> bool {
    Manifest::path_in(dir).exists()
}
