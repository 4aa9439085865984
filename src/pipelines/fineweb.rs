//! `prep fineweb`: documents -> tokens (GPT-2 BPE, another tiktoken vocabulary or any Hugging Face tokenizer;
//! parallel, order preserved) -> shards + manifest, resumable.
//!
//! The input is planned as a sequence of segments (`segments`: a range of rows of a parquet row group, a block of
//! JSON lines, a text file), each decoded *and* tokenized by one job on the rayon pool; at most two jobs per thread are
//! outstanding and their results are taken in order (`ordered`), so nothing serial stands between the files and the
//! pool: the calling thread only plans (footers, line ends, hub downloads one file ahead) and appends tokens to the
//! [`ShardWriter`], whose own thread writes finished shards (temp name, fsync, rename) and the manifest. The output
//! never depends on the thread count.
//!
//! Resume: the manifest's cursor says which document to start at and how many of its tokens are already in finished
//! shards; files entirely before the cursor are skipped without being opened (or downloaded), and rows before it
//! inside a file are never decoded.
//!
//! With `worker: Some(I/N)` the same pipeline runs over worker I's range of the input files, into its folder under
//! the output directory (`workers`); `prep merge` makes the workers' streams one dataset (`merge`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::hub::{HubClient, HubError, RemoteFile};
use crate::pipelines::ordered::OrderedJobs;
use crate::pipelines::profile::{ConsumerTimes, Profile, StageTimes};
use crate::pipelines::segments::{Encoded, FilePlan, Segment};
use crate::pipelines::sources::{self, SourceError, SourceFile, SourceKind};
use crate::pipelines::workers::{self, Finished, PartRecord, WorkerId, WorkerRecord};
use crate::shards::manifest::{DatasetDefinition, InputIdentity, Manifest};
use crate::shards::writer::{PushOutcome, ShardWriter, WriterConfig, WriterError};
use crate::tokenizer::Tokenizer;

/// Segments outstanding per pool thread: one running, one queued, so a thread never waits for the planner; with
/// segments of ~2 MiB of text this bounds memory to tens of MiB per thread.
const SEGMENTS_PER_THREAD: usize = 2;
/// When the progress goes to a file or pipe (a batch job's log), one plain line this often instead of a bar.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

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
    /// Loaded (`TokenizerSource::load`): a Hugging Face tokenizer's files are copied into the output directory.
    pub tokenizer: Tokenizer,
    pub shard_size: u64,
    pub val_shards: usize,
    pub max_shards: Option<usize>,
    /// Tokenizer threads (rayon); 0 = all cores.
    pub threads: usize,
    pub progress: bool,
    /// Replace a dataset `out` already holds instead of resuming it (`--overwrite`).
    pub overwrite: bool,
    /// Run as worker I of N: only the I-th range of the input files, into `out/workers/IIIII-of-NNNNN/`.
    pub worker: Option<WorkerId>,
}

#[derive(Clone, Debug)]
pub struct PrepReport {
    /// The directory written: `out`, or the worker's folder.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Shards that existed before this run (resume).
    pub shards_before: usize,
    pub documents_read: u64,
    pub tokens_written: u64,
    pub seconds: f64,
    pub complete: bool,
    /// Why a worker did nothing (the dataset's `--shards` are covered by the workers before it).
    pub skipped: Option<String>,
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
    #[error("{0}: the hub download thread stopped unexpectedly")]
    DownloadThread(String),
    #[error("{dir}: {message}")]
    Worker { dir: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// One input file as the planner sees it: local, or on the hub and downloaded when reached.
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

pub fn prep(opts: &PrepOptions) -> Result<PrepReport, PrepError> {
    let start = Instant::now();
    // The encoder (~0.1 s to build) and the GPT-2 splitter's tables are built while the inputs are listed and
    // fingerprinted: on many cores a run of tens of millions of tokens takes well under a second, so a serial start
    // would weigh on it.
    let warm_up = {
        let tokenizer = opts.tokenizer.clone();
        std::thread::spawn(move || {
            tokenizer.warm_up();
            start.elapsed()
        })
    };
    check_options(opts)?;
    let profile = Profile::new(start);
    let mark = |what| {
        if let Some(p) = &profile {
            p.mark(what)
        }
    };
    let (hub, mut files) = plan_files(opts)?;
    mark("inputs listed");
    let inputs_total = files.len();
    let digest = inputs_digest(&files);
    if let Some(w) = opts.worker.filter(|w| w.count > inputs_total) {
        return Err(PrepError::Invalid(format!(
            "--worker {w}: {} workers for {inputs_total} input file(s); a worker reads whole files, so use at most \
             {inputs_total} workers",
            w.count
        )));
    }
    let (dir, writer_val_shards) = match opts.worker {
        None => (opts.out.clone(), opts.val_shards),
        Some(w) => {
            let range = w.file_range(inputs_total);
            files = files[range].to_vec();
            // A worker's folder holds its stream in parts of `shard_size`; splits are decided at the merge.
            (w.dir_in(&opts.out), 0)
        }
    };
    if let (Some(w), Some(k)) = (opts.worker, opts.max_shards) {
        if let Some(why) = past_the_end(&opts.out, w, k as u64 * opts.shard_size) {
            return Ok(PrepReport {
                manifest: Manifest::new(&opts.dataset, opts.tokenizer.info(), opts.shard_size),
                dir,
                shards_before: 0,
                documents_read: 0,
                tokens_written: 0,
                seconds: start.elapsed().as_secs_f64(),
                complete: false,
                skipped: Some(why),
            });
        }
    }
    let repo = match &opts.input {
        Input::Hub { repo, .. } => repo.clone(),
        Input::Local(_) => String::new(),
    };
    if opts.worker.is_some() {
        // Workers write their folders into --out, which must be tokenmill's (made by one of them, or empty) as a
        // one-box prep's --out must be; `prep merge` later writes the dataset there.
        let (_, notes) = crate::shards::out_dir::take(&opts.out, crate::shards::out_dir::Hold::Unlocked)
            .map_err(WriterError::from)?;
        for note in notes {
            tracing::info!("{note}");
        }
    }
    let (mut writer, cursor, manifest_before) = ShardWriter::open(WriterConfig {
        dir: dir.clone(),
        dataset: opts.dataset.clone(),
        tokenizer: opts.tokenizer.clone(),
        shard_size: opts.shard_size,
        val_shards: writer_val_shards,
        max_shards: opts.max_shards,
        definition: definition(opts, &files)?,
        overwrite: opts.overwrite,
    })?;
    mark("writer open (inputs fingerprinted)");
    // A worker's record says "unfinished" for as long as this run may change its stream.
    let previous_parts = match opts.worker {
        Some(w) => start_worker_record(&dir, w, (inputs_total, &digest), files.len(), opts.max_shards)?,
        None => Vec::new(),
    };
    let shards_before = manifest_before.shards.len();
    let (mut documents_read, mut tokens_written, mut full) = (0u64, 0u64, true);
    if !(manifest_before.complete || writer.limit_reached()) {
        // Rows per file from the previous run let the planner skip whole files without opening them.
        let known_rows: Vec<Option<u64>> =
            files.iter().map(|f| manifest_before.sources.iter().find(|s| s.file == f.name()).map(|s| s.rows)).collect();
        let planner = Planner {
            files,
            known_rows,
            hub: hub.map(|h| (h, repo)),
            column: opts.text_column.clone(),
            skip_docs: cursor.first_unfinished_document,
            next_file: 0,
            first_doc: 0,
            current: None,
            prefetch: None,
        };
        let progress = Progress::new(opts, &planner.files, shards_before);
        let built = warm_up.join();
        if let (Some(p), Ok(at)) = (&profile, built) {
            p.mark_at("tokenizer tables built", at);
        }
        // Which code encodes: the ids are the same either way (not a manifest field), the speed is not.
        tracing::info!("tokenizer {}: encoded by {}", opts.tokenizer.describe(), opts.tokenizer.encoder());
        mark("encoder ready");
        let run = run_segments(opts, planner, &mut writer, cursor.tokens_into_document, &progress, start, &profile);
        progress.finish();
        (documents_read, tokens_written, full) = run?;
    }
    let complete_before = manifest_before.complete;
    // A reader error returns above, so reaching here not `full` means the input really ended.
    let manifest = writer.finish(!full && !complete_before)?;
    mark("writer finished (last shard fsynced, manifest)");
    if let Some(p) = &profile {
        for line in p.report() {
            eprintln!("{line}");
        }
    }
    if let Some(w) = opts.worker {
        finish_worker_record(&dir, w, &manifest, opts, previous_parts)?;
    }
    Ok(PrepReport {
        dir,
        complete: manifest.complete,
        manifest,
        shards_before,
        documents_read,
        tokens_written,
        seconds: start.elapsed().as_secs_f64(),
        skipped: None,
    })
}

/// Plan, encode on the pool, push in order. Returns (documents, tokens, whether the shard limit stopped it).
fn run_segments(
    opts: &PrepOptions,
    planner: Planner,
    writer: &mut ShardWriter,
    skip_tokens: u64,
    progress: &Progress,
    start: Instant,
    profile: &Option<Arc<Profile>>,
) -> Result<(u64, u64, bool), PrepError> {
    let threads = capped_threads(opts.threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bpe-{i}"))
        .build()
        .map_err(|e| PrepError::Threads { threads, message: e.to_string() })?;
    if let Some(p) = profile {
        p.mark("pool ready");
    }
    let mut consumer = ConsumerTimes::default();
    let run = feed_pool(opts, &pool, planner, writer, skip_tokens, progress, start, profile, &mut consumer);
    if let Some(p) = profile {
        p.mark("last segment pushed");
        p.set_consumer(pool.current_num_threads(), consumer);
    }
    run
}

/// `run_segments`' loop: keep the pool's window full, take the results in order, push them to the writer.
#[allow(clippy::too_many_arguments)]
fn feed_pool(
    opts: &PrepOptions,
    pool: &rayon::ThreadPool,
    mut planner: Planner,
    writer: &mut ShardWriter,
    mut skip_tokens: u64,
    progress: &Progress,
    start: Instant,
    profile: &Option<Arc<Profile>>,
    consumer: &mut ConsumerTimes,
) -> Result<(u64, u64, bool), PrepError> {
    let tokenizer = &opts.tokenizer;
    let window = SEGMENTS_PER_THREAD * pool.current_num_threads();
    let mut jobs = OrderedJobs::new(pool, window);
    // Consumed segment buffers go back to the jobs (see `Segment::encode`).
    let (recycle, recycled) = crossbeam_channel::bounded::<Encoded>(window);
    let width = opts.tokenizer.token_bytes();
    let (mut documents, mut tokens) = (0u64, 0u64);
    // A planning error (a file that cannot be opened) surfaces after every document before it is written.
    let mut plan_error = None;
    // The consumer's clock runs only when profiling.
    let clock = || profile.as_ref().map(|_| Instant::now());
    let add = |sum: &mut Duration, since: Option<Instant>| {
        if let Some(t) = since {
            *sum += t.elapsed();
        }
    };
    let mut first_taken = false;
    loop {
        let t = clock();
        while plan_error.is_none() && jobs.has_room() {
            match planner.next() {
                None => break,
                Some(Err(e)) => plan_error = Some(e),
                Some(Ok(Planned::File { name, bytes, first_doc })) => writer.begin_source(&name, bytes, first_doc),
                Some(Ok(Planned::Segment(seg))) => {
                    let buffers = recycled.clone();
                    let profile = profile.clone();
                    let tokenizer = tokenizer.clone();
                    jobs.submit(move || {
                        let buffer = buffers.try_recv().unwrap_or_default();
                        match profile {
                            None => seg.encode(&tokenizer, buffer, None),
                            Some(p) => {
                                let (timer, mut stages) = (p.job_start(), StageTimes::default());
                                let r = seg.encode(&tokenizer, buffer, Some(&mut stages));
                                p.job_finish(timer, stages);
                                r
                            }
                        }
                    })
                }
            }
        }
        add(&mut consumer.planning, t);
        let t = clock();
        let next = jobs.wait_next();
        add(&mut consumer.waiting, t);
        let Some(encoded) = next else { break };
        if let (Some(p), false) = (profile, first_taken) {
            p.mark("first segment taken");
            first_taken = true;
        }
        let t = clock();
        let encoded = encoded?;
        for doc in encoded.documents() {
            let skip = std::mem::take(&mut skip_tokens) as usize;
            tokens += (doc.len() / width).saturating_sub(skip) as u64;
            documents += 1;
            if writer.push_document(doc, skip)? == PushOutcome::Full {
                return Ok((documents, tokens, true));
            }
        }
        let _ = recycle.try_send(encoded);
        progress.update(documents, tokens, start);
        add(&mut consumer.pushing, t);
    }
    match plan_error {
        Some(e) => Err(e),
        None => Ok((documents, tokens, false)),
    }
}

/// What the planner hands the driver, in document order.
enum Planned {
    /// A file starts; its documents get global indices from `first_doc`.
    File {
        name: String,
        bytes: u64,
        first_doc: u64,
    },
    Segment(Segment),
}

/// Walks the input files in order and cuts them into segments; documents before `skip_docs` are counted, not planned.
struct Planner {
    files: Vec<PlannedFile>,
    known_rows: Vec<Option<u64>>,
    hub: Option<(HubClient, String)>,
    column: String,
    skip_docs: u64,
    next_file: usize,
    first_doc: u64,
    current: Option<FilePlan>,
    prefetch: Option<std::thread::JoinHandle<Result<PathBuf, HubError>>>,
}

impl Planner {
    fn next(&mut self) -> Option<Result<Planned, PrepError>> {
        let r = self.step();
        if matches!(r, Some(Err(_))) {
            // Nothing after an error: the driver reports it once the documents before it are written.
            self.next_file = self.files.len();
            self.current = None;
        }
        r
    }

    fn step(&mut self) -> Option<Result<Planned, PrepError>> {
        if let Some(plan) = &mut self.current {
            match plan.next() {
                Some(seg) => return Some(seg.map(Planned::Segment).map_err(PrepError::from)),
                None => {
                    self.first_doc += plan.documents();
                    self.current = None;
                }
            }
        }
        let i = self.next_file;
        let planned = self.files.get(i)?.clone();
        self.next_file += 1;
        let name = planned.name();
        // Entirely before the resume point: account for its rows without opening (or downloading) it.
        if let Some(rows) = self.known_rows[i] {
            if self.first_doc + rows <= self.skip_docs {
                let bytes = match &planned {
                    PlannedFile::Local(f) => std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0),
                    PlannedFile::Remote(r) => r.size.unwrap_or(0),
                };
                let first_doc = self.first_doc;
                self.first_doc += rows;
                return Some(Ok(Planned::File { name, bytes, first_doc }));
            }
        }
        let local = match self.local_copy(i, &planned) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let bytes = std::fs::metadata(&local.path).map(|m| m.len()).unwrap_or(0);
        match FilePlan::open(&local, &self.column, self.first_doc, self.skip_docs) {
            Ok(plan) => self.current = Some(plan),
            Err(e) => return Some(Err(e.into())),
        }
        Some(Ok(Planned::File { name, bytes, first_doc: self.first_doc }))
    }

    /// The file on local disk: itself, or its hub download (the next remote file downloads meanwhile).
    fn local_copy(&mut self, i: usize, planned: &PlannedFile) -> Result<SourceFile, PrepError> {
        let r = match planned {
            PlannedFile::Local(f) => return Ok(f.clone()),
            PlannedFile::Remote(r) => r,
        };
        let (hub, repo) = self.hub.as_ref().expect("remote files come with a hub client");
        let path = match self.prefetch.take() {
            Some(h) => h.join().map_err(|_| PrepError::DownloadThread(r.path.clone()))??,
            None => hub.download_dataset_file(repo, r)?,
        };
        if let Some(PlannedFile::Remote(next)) = self.files.get(i + 1) {
            let (client, repo, next) = (hub.clone(), repo.clone(), next.clone());
            self.prefetch = Some(std::thread::spawn(move || client.download_dataset_file(&repo, &next)));
        }
        Ok(SourceFile { path, kind: SourceKind::Parquet })
    }
}

/// A worker with `--shards K` whose predecessors have all finished with at least `target` (K shards) tokens among them
/// has nothing to add: the merge never reads past the K-th shard.
fn past_the_end(out: &Path, w: WorkerId, target: u64) -> Option<String> {
    let mut tokens = 0u64;
    for i in 0..w.index {
        let dir = WorkerId { index: i, count: w.count }.dir_in(out);
        let (record, manifest) = (WorkerRecord::load(&dir).ok()?, Manifest::load(&dir).ok()?);
        record.finished_with(&manifest)?;
        tokens += record.tokens();
        if tokens >= target {
            return Some(format!(
                "workers 0..={i} of {} already hold the {target} tokens of the dataset's --shards; nothing to do",
                w.count
            ));
        }
    }
    None
}

/// Check the worker folder belongs to this split of the inputs and mark it unfinished. Returns the parts a previous
/// run recorded (their document counts are reused when this run finishes).
fn start_worker_record(
    dir: &Path,
    w: WorkerId,
    (inputs_total, digest): (usize, &str),
    inputs: usize,
    max_shards: Option<usize>,
) -> Result<Vec<PartRecord>, PrepError> {
    let err = |message: String| PrepError::Worker { dir: dir.display().to_string(), message };
    let first_input = w.file_range(inputs_total).start;
    let mut previous = Vec::new();
    if WorkerRecord::path_in(dir).exists() {
        let old = WorkerRecord::load(dir).map_err(err)?;
        if old.inputs_digest.as_deref().is_some_and(|d| d != digest) {
            return Err(err(format!(
                "this folder is worker {}/{} of another list of input files (inputs digest {}, now {digest}); give \
                 every worker the same --input list, or use another --out, or --overwrite",
                old.worker,
                old.workers,
                old.inputs_digest.as_deref().unwrap_or("?")
            )));
        }
        if (old.worker, old.workers, old.inputs_total, old.first_input, old.inputs)
            != (w.index, w.count, inputs_total, first_input, inputs)
        {
            return Err(err(format!(
                "this folder is worker {}/{} of {} input files (files {}..{}); this run is worker {w} of {inputs_total} (files {first_input}..{}). Use another --out, or --overwrite",
                old.worker,
                old.workers,
                old.inputs_total,
                old.first_input,
                old.first_input + old.inputs,
                first_input + inputs
            )));
        }
        previous = old.finished.map(|f| f.parts).unwrap_or_default();
    }
    let record = WorkerRecord {
        worker: w.index,
        workers: w.count,
        inputs_total,
        first_input,
        inputs,
        max_shards,
        inputs_digest: Some(digest.to_string()),
        finished: None,
    };
    record.save(dir).map_err(|e| err(e.to_string()))?;
    Ok(previous)
}

/// A worker that exhausted its input or reached its `--shards` limit records its parts with their document counts.
fn finish_worker_record(
    dir: &Path,
    w: WorkerId,
    manifest: &Manifest,
    opts: &PrepOptions,
    previous: Vec<PartRecord>,
) -> Result<(), PrepError> {
    let err = |message: String| PrepError::Worker { dir: dir.display().to_string(), message };
    let limited = opts.max_shards.is_some_and(|k| manifest.shards.len() >= k);
    if !manifest.complete && !limited {
        return Ok(());
    }
    let mut parts = Vec::with_capacity(manifest.shards.len());
    for s in &manifest.shards {
        let known = previous.iter().find(|p| p.file == s.file && p.xxh3 == s.xxh3 && p.tokens == s.tokens);
        let documents = match known {
            Some(p) => p.documents,
            None => workers::count_documents_in_shard(&dir.join(&s.file), manifest.token_width, manifest.tokenizer.eot)
                .map_err(|e| err(format!("{}: {e}", s.file)))?,
        };
        parts.push(PartRecord { file: s.file.clone(), tokens: s.tokens, xxh3: s.xxh3.clone(), documents });
    }
    let mut record = WorkerRecord::load(dir).map_err(err)?;
    debug_assert_eq!((record.worker, record.workers), (w.index, w.count));
    record.finished = Some(Finished { complete: manifest.complete, parts });
    record.save(dir).map_err(|e| err(e.to_string()))
}

/// Refuse options that would write nothing, write outside `--out`, or read `--out` as input, before anything is
/// listed or written.
fn check_options(opts: &PrepOptions) -> Result<(), PrepError> {
    check_dataset_name(&opts.dataset)?;
    if opts.max_shards == Some(0) {
        return Err(PrepError::Invalid(
            "--shards 0 writes nothing: give a positive number of shards, or leave --shards out to prep the whole \
             input"
                .into(),
        ));
    }
    if let (Input::Local(files), Ok(out)) = (&opts.input, std::fs::canonicalize(&opts.out)) {
        for f in files {
            let path = std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone());
            if path.starts_with(&out) {
                return Err(PrepError::Invalid(format!(
                    "--input {} is inside --out {}: the output directory must not hold the inputs (a later run would \
                     read its manifest.json and shards as a corpus); use another --out",
                    f.path.display(),
                    opts.out.display()
                )));
            }
        }
    }
    Ok(())
}

/// The dataset name prefixes every shard file written into `--out` (`NAME_train_000000.bin`), so it must be a plain
/// file name: ASCII letters, digits, `-`, `_` and `.`, not starting with `.` (no `../x`, no `a/b`, not empty).
pub fn check_dataset_name(name: &str) -> Result<(), PrepError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        return Ok(());
    }
    Err(PrepError::Invalid(format!(
        "dataset name `{name}` (--name / --dataset): it names the shard files in --out (NAME_train_000000.bin), so it \
         must be a plain file name of letters, digits, `-`, `_` and `.`, not empty and not starting with `.`"
    )))
}

/// The input list as the workers must all have seen it: every file's name (local: without its folder, so machines
/// mounting the corpus elsewhere agree) and size, in order.
fn inputs_digest(files: &[PlannedFile]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        let (name, bytes) = match f {
            PlannedFile::Local(s) => (
                s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                std::fs::metadata(&s.path).map_or(0, |m| m.len()),
            ),
            PlannedFile::Remote(r) => (r.path.clone(), r.size.unwrap_or(0)),
        };
        h.update(format!("{name}\t{bytes}\n").as_bytes());
    }
    format!("{:016x}", h.digest())
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
    use rayon::prelude::*;
    // Up to 2 MiB read per file: in parallel (rayon's global pool), as every start, resumes included, does it.
    let inputs = files
        .par_iter()
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

/// Progress of one run: an indicatif bar on a terminal, a plain line every [`PLAIN_PROGRESS_EVERY`] otherwise (a
/// batch job's log), nothing with `--no-progress`. A worker's lines start with `worker I/N`.
struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<std::cell::Cell<Instant>>,
    label: String,
    /// Position units: tokens against a `--shards` target, else documents.
    by_tokens: bool,
    base: u64,
}

impl Progress {
    fn new(opts: &PrepOptions, files: &[PlannedFile], shards_before: usize) -> Progress {
        let label = opts.worker.map(|w| format!("worker {w}: ")).unwrap_or_default();
        let by_tokens = opts.max_shards.is_some();
        let base = if by_tokens { shards_before as u64 * opts.shard_size } else { 0 };
        let mut p = Progress { bar: None, plain: None, label, by_tokens, base };
        if !opts.progress {
            return p;
        }
        if !std::io::stderr().is_terminal() {
            p.plain = Some(std::cell::Cell::new(Instant::now()));
            return p;
        }
        let (len, unit) = match opts.max_shards {
            Some(n) => (n as u64 * opts.shard_size, "tokens"),
            None => {
                let count = |f: &PlannedFile| match f {
                    PlannedFile::Local(f) => sources::count_documents(f).unwrap_or(0),
                    PlannedFile::Remote(_) => 0,
                };
                (files.iter().map(count).sum(), "docs")
            }
        };
        let bar = if len > 0 { ProgressBar::new(len) } else { ProgressBar::new_spinner() };
        let template = format!(
            "{}{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} | {{msg}} | ETA {{eta}}",
            p.label
        );
        bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.enable_steady_tick(Duration::from_millis(250));
        p.bar = Some(bar);
        p
    }

    fn update(&self, docs: u64, tokens: u64, start: Instant) {
        let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6;
        let msg = format!("docs {docs} | tokens {tokens} | {rate:.2}M tok/s");
        if let Some(bar) = &self.bar {
            bar.set_position(self.base + if self.by_tokens { tokens } else { docs });
            bar.set_message(msg);
        } else if let Some(last) = &self.plain {
            if last.get().elapsed() >= PLAIN_PROGRESS_EVERY {
                last.set(Instant::now());
                eprintln!("{}{msg}", self.label);
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
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
