//! Writes a token stream into fixed-size shards plus `manifest.json`, so that a killed run can resume and still end
//! with byte-identical files.
//!
//! Shards are cut every `shard_size` tokens, named `{dataset}_{split}_{index:06}.bin`; the first `val_shards` are
//! `val`, the rest `train` (fineweb.py's layout). Each finished shard goes to a background thread that writes it under a
//! temp name, fsyncs, renames it into place and only then records it (with its xxh3 and the resume cursor) in the
//! manifest, itself replaced atomically. So the manifest never names a shard that is not complete on disk, and the
//! cursor always points at the first document whose tokens are not all in finished shards.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::shards::format::{ShardError, ShardHeader, TokenWidth, HEADER_BYTES};
use crate::shards::manifest::{
    DatasetDefinition, Manifest, ManifestError, ResumeCursor, ShardEntry, SourceEntry, Split,
};
use crate::shards::verify::check_listed_shard;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::util::{fsync_dir, io_at, xxh3_hex, PathIoError};

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub dir: PathBuf,
    /// Prefix of shard file names (fineweb.py uses `edufineweb`).
    pub dataset: String,
    /// Recorded in the manifest; a Hugging Face tokenizer's files are copied into `dir` beside the shards.
    pub tokenizer: Tokenizer,
    pub shard_size: u64,
    pub val_shards: usize,
    /// Stop after this many shards in total (`--shards N`).
    pub max_shards: Option<usize>,
    /// The inputs and settings the shards come from; a directory prepared from another definition is refused.
    pub definition: DatasetDefinition,
    /// Delete a previous dataset in `dir` (its manifest and the shards it lists) and start over (`--overwrite`).
    pub overwrite: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "{dir}: already holds {shards} shard(s) prepared with different settings ({what}); nothing was changed. \
         To start over, re-run with --overwrite (deletes those shards) or use another --out"
    )]
    SettingsChanged { dir: String, shards: usize, what: String },
    #[error("{dir}: holds shard files but no manifest.json; refusing to mix with them (use another --out)")]
    ForeignShards { dir: String },
    #[error(
        "{path}: exists, differs from the tokenizer's file, and no manifest.json lists it (a model folder?); refusing \
         to replace it: use another --out"
    )]
    ForeignFile { path: String },
    #[error("a finished shard is missing or damaged, so this directory cannot be resumed: {0}")]
    DamagedShard(#[source] ShardError),
    #[error(
        "--shard-size {got}: a shard holds {MIN_SHARD_SIZE} to {max} tokens (at least one training row of a 1024-token \
         context; at most llm.c's int32 header): smaller shards would be one file, and one manifest rewrite, per few \
         tokens"
    )]
    BadShardSize { got: u64, max: u64 },
    #[error("the background shard writer stopped unexpectedly")]
    WriterThread,
    #[error(transparent)]
    Lock(#[from] crate::util::LockError),
    #[error(transparent)]
    OutDir(#[from] crate::shards::out_dir::OutDirError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The fewest tokens a shard may hold: one training row (T + 1 tokens) of GPT-2's 1024-token context needs 1025, and
/// `prep corpus` never picks fewer than 1024. `--shard-size 1` wrote one file per token and rewrote the manifest after
/// each (quadratic).
pub const MIN_SHARD_SIZE: u64 = 1024;

/// A shard ready to be written, with the manifest state that becomes true once it is on disk.
struct FinishedShard {
    file: String,
    split: Split,
    tokens: u64,
    bytes: Vec<u8>,
    cursor: ResumeCursor,
    sources: Vec<SourceEntry>,
    complete: bool,
}

/// A source file as the writer knows it: where its documents start in the global document order.
#[derive(Clone, Debug)]
pub struct SourceSpan {
    pub name: String,
    pub bytes: u64,
    pub first_doc: u64,
}

pub struct ShardWriter {
    cfg: WriterConfig,
    width: TokenWidth,
    /// Index of the next shard to cut.
    next_index: usize,
    /// Encoded body of the pending shard.
    buf: Vec<u8>,
    buf_tokens: u64,
    /// Documents pushed so far (global index of the next document).
    next_doc: u64,
    sources: Vec<SourceSpan>,
    tx: Option<Sender<FinishedShard>>,
    thread: Option<JoinHandle<Result<Manifest, WriterError>>>,
    stopped: bool,
    /// This process is the directory's one writer until the writer is dropped (`util::DirLock`).
    _lock: crate::util::DirLock,
}

/// What [`ShardWriter::push_document`] tells the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    More,
    /// `max_shards` reached: the caller stops reading.
    Full,
}

impl ShardWriter {
    /// Start or resume writing into `cfg.dir`. Returns the writer and the cursor to resume from (document index to
    /// start reading at, tokens of that document already in finished shards); a fresh directory gives the zero cursor.
    pub fn open(cfg: WriterConfig) -> Result<(ShardWriter, ResumeCursor, Manifest), WriterError> {
        let max = i32::MAX as u64;
        if cfg.shard_size < MIN_SHARD_SIZE || cfg.shard_size > max {
            return Err(WriterError::BadShardSize { got: cfg.shard_size, max });
        }
        let dir = &cfg.dir;
        // A directory tokenmill did not make is refused before anything is written or deleted there; one writer per
        // directory: a second prep into it is refused before it reads or deletes anything.
        let (lock, notes) = crate::shards::out_dir::take(dir, crate::shards::out_dir::Hold::Exclusive)?;
        let lock = lock.expect("an exclusive hold locks");
        for note in notes {
            tracing::info!("{note}");
        }
        if cfg.overwrite {
            remove_previous_dataset(dir)?;
        }
        let mut manifest = if Manifest::path_in(dir).exists() {
            let mut m = Manifest::load(dir)?;
            // Refuse before touching anything: a different definition leaves the directory exactly as it was.
            check_same_definition(&mut m, &cfg)?;
            remove_stale_temps(dir, &cfg.dataset)?;
            verify_finished_shards(&m, dir)?;
            // Same tokenizer (checked above): its copies are rewritten, in case one was removed.
            cfg.tokenizer.write_files(dir)?;
            m
        } else {
            remove_stale_temps(dir, &cfg.dataset)?;
            if has_shard_files(dir)? {
                return Err(WriterError::ForeignShards { dir: dir.display().to_string() });
            }
            refuse_foreign_tokenizer_files(dir, &cfg.tokenizer)?;
            let mut m = Manifest::new(&cfg.dataset, cfg.tokenizer.info(), cfg.shard_size);
            m.definition = Some(cfg.definition.clone());
            // The tokenizer's files before the manifest that names them.
            cfg.tokenizer.write_files(dir)?;
            m.shards_limit = cfg.max_shards;
            m.save(dir)?;
            m
        };
        if manifest.shards_limit != cfg.max_shards {
            // The latest run's --shards: reaching it finishes the dataset as asked (`Manifest::finished`).
            manifest.shards_limit = cfg.max_shards;
            manifest.save(dir)?;
        }
        let cursor = manifest.resume.clone();
        let width = manifest.token_width;
        let (tx, rx) = bounded::<FinishedShard>(1);
        let mut thread_manifest = manifest.clone();
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("shard-writer".into())
            .spawn(move || {
                for shard in rx {
                    // A message without a file only records completion.
                    if !shard.file.is_empty() {
                        write_shard_file(&thread_dir, &shard)?;
                        thread_manifest.shards.push(ShardEntry {
                            file: shard.file.clone(),
                            split: shard.split,
                            tokens: shard.tokens,
                            xxh3: xxh3_hex(&shard.bytes),
                        });
                    }
                    thread_manifest.resume = shard.cursor;
                    thread_manifest.sources = shard.sources;
                    thread_manifest.complete = shard.complete;
                    thread_manifest.save(&thread_dir)?;
                }
                Ok(thread_manifest)
            })
            .map_err(io_at(dir))?;
        let mut writer = ShardWriter {
            next_index: manifest.shards.len(),
            width,
            buf: new_shard_buffer(cfg.shard_size, width),
            buf_tokens: 0,
            next_doc: cursor.first_unfinished_document,
            sources: Vec::new(),
            tx: Some(tx),
            thread: Some(thread),
            stopped: false,
            cfg,
            _lock: lock,
        };
        writer.stopped = writer.limit_reached();
        Ok((writer, cursor, manifest))
    }

    /// True when `max_shards` shards exist: nothing more will be written.
    pub fn limit_reached(&self) -> bool {
        self.cfg.max_shards.is_some_and(|m| self.next_index >= m)
    }

    /// Tell the writer that the documents of a new input file start at global index `first_doc` (for the manifest's
    /// `sources`). Must be called in file order, including files skipped on resume.
    pub fn begin_source(&mut self, name: &str, bytes: u64, first_doc: u64) {
        self.sources.push(SourceSpan { name: name.to_string(), bytes, first_doc });
    }

    /// Append one document's tokens (`<|endoftext|>` included), already encoded in the shard's token width
    /// ([`encode_tokens`](crate::shards::format::encode_tokens), done where the document was tokenized, so this thread only copies bytes). `skip` tokens at
    /// its start are already in finished shards (resume), and are dropped.
    pub fn push_document(&mut self, encoded: &[u8], skip: usize) -> Result<PushOutcome, WriterError> {
        if self.stopped {
            return Ok(PushOutcome::Full);
        }
        let w = self.width.bytes();
        debug_assert_eq!(encoded.len() % w, 0);
        let doc = self.next_doc;
        let tokens = encoded.len() / w;
        let mut consumed = skip.min(tokens);
        while consumed < tokens {
            let room = (self.cfg.shard_size - self.buf_tokens) as usize;
            let take = room.min(tokens - consumed);
            self.buf.extend_from_slice(&encoded[consumed * w..(consumed + take) * w]);
            self.buf_tokens += take as u64;
            consumed += take;
            if self.buf_tokens == self.cfg.shard_size {
                // The next shard starts inside this document (or at the next one if it ended exactly here).
                let cursor = if consumed == tokens {
                    ResumeCursor { first_unfinished_document: doc + 1, tokens_into_document: 0 }
                } else {
                    ResumeCursor { first_unfinished_document: doc, tokens_into_document: consumed as u64 }
                };
                self.cut_shard(cursor, false)?;
                if self.limit_reached() {
                    self.stopped = true;
                    self.next_doc = doc + 1;
                    return Ok(PushOutcome::Full);
                }
            }
        }
        self.next_doc = doc + 1;
        Ok(PushOutcome::More)
    }

    /// Input exhausted: write the last partial shard (if any tokens) and mark the directory complete.
    /// Returns the final manifest.
    pub fn finish(mut self, input_exhausted: bool) -> Result<Manifest, WriterError> {
        if input_exhausted && !self.stopped {
            let cursor = ResumeCursor { first_unfinished_document: self.next_doc, tokens_into_document: 0 };
            if self.buf_tokens > 0 {
                self.cut_shard(cursor, true)?;
            } else {
                // Nothing pending: record completion with one more manifest write through the same thread.
                self.send(FinishedShard {
                    file: String::new(),
                    split: Split::Train,
                    tokens: 0,
                    bytes: Vec::new(),
                    cursor,
                    sources: self.source_entries(self.next_doc),
                    complete: true,
                })?;
            }
        }
        drop(self.tx.take());
        let thread = self.thread.take().expect("writer thread present until finish");
        let manifest = thread.join().map_err(|_| WriterError::WriterThread)??;
        Ok(manifest)
    }

    fn cut_shard(&mut self, cursor: ResumeCursor, complete: bool) -> Result<(), WriterError> {
        let index = self.next_index;
        let split = if index < self.cfg.val_shards { Split::Val } else { Split::Train };
        let file = shard_file_name(&self.cfg.dataset, split, index);
        let mut bytes = std::mem::replace(&mut self.buf, new_shard_buffer(self.cfg.shard_size, self.width));
        // The buffer starts with room for the header: filled now that the count is known (no shift of the body).
        bytes[..HEADER_BYTES].copy_from_slice(&ShardHeader::new(self.width, self.buf_tokens).encode());
        let sources =
            self.source_entries(cursor.first_unfinished_document + u64::from(cursor.tokens_into_document > 0));
        let shard = FinishedShard { file, split, tokens: self.buf_tokens, bytes, cursor, sources, complete };
        self.buf_tokens = 0;
        self.next_index += 1;
        self.send(shard)
    }

    fn send(&mut self, shard: FinishedShard) -> Result<(), WriterError> {
        let tx = self.tx.as_ref().expect("sender present until finish");
        if tx.send(shard).is_err() {
            // The thread ended early: surface its error.
            drop(self.tx.take());
            let thread = self.thread.take().expect("writer thread present");
            return match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(WriterError::WriterThread),
            };
        }
        Ok(())
    }

    fn source_entries(&self, docs_done: u64) -> Vec<SourceEntry> {
        source_entries(&self.sources, docs_done)
    }
}

/// The manifest's `sources` when the first `docs_done` documents have been read: the files begun by then (the first
/// always), with the rows consumed from each. Shared with `prep merge`, whose manifest must read as a one-box run's.
pub fn source_entries(sources: &[SourceSpan], docs_done: u64) -> Vec<SourceEntry> {
    let mut out = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        if s.first_doc >= docs_done && i > 0 {
            break;
        }
        let end = sources.get(i + 1).map(|n| n.first_doc).unwrap_or(u64::MAX).min(docs_done);
        out.push(SourceEntry { file: s.name.clone(), bytes: s.bytes, rows: end.saturating_sub(s.first_doc) });
    }
    out
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Dropped without finish (error path): let the thread flush what it already has.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An empty shard: zeroed room for the header, capacity for `shard_size` tokens.
fn new_shard_buffer(shard_size: u64, width: TokenWidth) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + shard_size as usize * width.bytes());
    buf.resize(HEADER_BYTES, 0);
    buf
}

pub fn shard_file_name(dataset: &str, split: Split, index: usize) -> String {
    format!("{dataset}_{}_{index:06}.bin", split.name())
}

fn write_shard_file(dir: &Path, shard: &FinishedShard) -> Result<(), WriterError> {
    let path = dir.join(&shard.file);
    crate::util::write_atomic(&path, &shard.bytes).map_err(io_at(&path))?;
    Ok(())
}

/// The directory's dataset must be the one `cfg` defines: same name, tokenizer, shard size, and (recorded since
/// manifests carry a `definition`) the same input files, text column and val split. A manifest from before the
/// definition was recorded is checked on what it has (settings, and the files read so far by name and size) and then
/// adopts the current definition.
fn check_same_definition(m: &mut Manifest, cfg: &WriterConfig) -> Result<(), WriterError> {
    let mut diffs = Vec::new();
    if m.dataset != cfg.dataset {
        diffs.push(format!("dataset `{}` on disk, `{}` now", m.dataset, cfg.dataset));
    }
    let now = cfg.tokenizer.info();
    if !m.tokenizer.same_as(&now) {
        diffs.push(format!("tokenizer {} on disk, {} now", m.tokenizer.describe(), now.describe()));
    }
    if m.shard_size != cfg.shard_size {
        diffs.push(format!("shard size {} on disk, {} now", m.shard_size, cfg.shard_size));
    }
    let mut repaired = Vec::new();
    match &m.definition {
        Some(def) => {
            // Every file before the one the resume point falls in holds only documents of finished shards.
            let check = def.check(&cfg.definition, m.sources.len().saturating_sub(1));
            diffs.extend(check.differences);
            repaired = check.repaired;
        }
        None => diffs.extend(legacy_differences(m, cfg)),
    }
    if !diffs.is_empty() {
        return Err(WriterError::SettingsChanged {
            dir: cfg.dir.display().to_string(),
            shards: m.shards.len(),
            what: diffs.join("; "),
        });
    }
    for i in repaired {
        tracing::warn!(
            "input file #{i} ({}) changed since this dataset was started; its documents after the resume point are read \
             as the file is now (a repaired input)",
            cfg.definition.inputs[i - 1].file
        );
    }
    m.definition = Some(cfg.definition.clone());
    Ok(())
}

/// What a manifest without a `definition` can still tell: its val shards, and the input files read so far.
fn legacy_differences(m: &Manifest, cfg: &WriterConfig) -> Vec<String> {
    let mut diffs = Vec::new();
    let val_on_disk = m.shards.iter().filter(|s| s.split == Split::Val).count();
    if val_on_disk != cfg.definition.val_shards.min(m.shards.len()) {
        diffs.push(format!("{val_on_disk} val shard(s) on disk, --val-shards {}", cfg.definition.val_shards));
    }
    let base = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for (i, s) in m.sources.iter().enumerate() {
        let same =
            cfg.definition.inputs.get(i).is_some_and(|now| base(&now.file) == base(&s.file) && now.bytes == s.bytes);
        if !same {
            let now =
                cfg.definition.inputs.get(i).map_or("nothing".into(), |n| format!("{} ({} bytes)", n.file, n.bytes));
            diffs.push(format!("input file #{} was {} ({} bytes), is now {now}", i + 1, s.file, s.bytes));
            break;
        }
    }
    diffs
}

/// `--overwrite`: remove the dataset a previous run left (the shards and tokenizer files its manifest lists, then the
/// manifest). Files the manifest does not list are left alone, and so is everything when the manifest cannot be
/// trusted (unreadable, or naming a file outside `dir`, `Manifest::validate`): the error says so and nothing is
/// deleted.
fn remove_previous_dataset(dir: &Path) -> Result<(), WriterError> {
    let path = Manifest::path_in(dir);
    if !path.exists() {
        return Ok(());
    }
    let m = Manifest::load(dir)?;
    for file in m.shards.iter().map(|s| dir.join(&s.file)).chain(m.tokenizer_files(dir)) {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&file)(e).into()),
            _ => {}
        }
    }
    std::fs::remove_file(&path).map_err(io_at(&path))?;
    fsync_dir(dir).map_err(io_at(dir))?;
    Ok(())
}

/// Every shard the manifest lists must be on disk with the recorded size and checksum: a resume never builds on a
/// damaged prefix.
fn verify_finished_shards(m: &Manifest, dir: &Path) -> Result<(), WriterError> {
    for s in &m.shards {
        check_listed_shard(dir, s, m.token_width).map_err(WriterError::DamagedShard)?;
    }
    Ok(())
}

/// A fresh dataset writes its tokenizer's files into `dir`: a file of that name already there (a model folder given as
/// `--out`) is left alone unless it holds the same bytes.
fn refuse_foreign_tokenizer_files(dir: &Path, tokenizer: &Tokenizer) -> Result<(), WriterError> {
    for (name, bytes) in tokenizer.files() {
        let path = dir.join(name);
        if path.exists() && std::fs::read(&path).map_err(io_at(&path))? != bytes {
            return Err(WriterError::ForeignFile { path: path.display().to_string() });
        }
    }
    Ok(())
}

fn has_shard_files(dir: &Path) -> Result<bool, WriterError> {
    let rd = std::fs::read_dir(dir).map_err(io_at(dir))?;
    Ok(rd.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.ends_with(".bin") || n.ends_with(".npy")) && (n.contains("_train_") || n.contains("_val_"))
    }))
}

/// Temp files left by a killed run (never renamed, so never listed in the manifest) are removed on open: only those of
/// the names this writer gives (a shard of `dataset`, the manifest, a worker's record) whose process is gone, in the
/// directory it owns (`out_dir`). Anything else with `.tmp.` in its name is not tokenmill's to remove.
fn remove_stale_temps(dir: &Path, dataset: &str) -> Result<(), WriterError> {
    let ours = |base: &str| {
        base == crate::shards::manifest::MANIFEST_FILE
            || base == crate::shards::WORKER_FILE
            || is_shard_file_name(dataset, base)
    };
    for name in crate::output::remove_stale_temps(dir, ours)? {
        tracing::info!("removed {} (left by an interrupted prep)", dir.join(name).display());
    }
    Ok(())
}

/// Whether `name` is a shard file name [`shard_file_name`] gives for `dataset`.
pub fn is_shard_file_name(dataset: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(dataset).and_then(|r| r.strip_suffix(".bin")) else { return false };
    let index = rest.strip_prefix("_train_").or_else(|| rest.strip_prefix("_val_"));
    index.is_some_and(|i| i.len() >= 6 && i.bytes().all(|b| b.is_ascii_digit()))
}
