//! `prep merge OUT`: the workers' streams under `OUT/workers/`, concatenated in worker order, cut into the shards a
//! one-box `prep` of the same inputs writes: same names, bytes, val/train split, and a manifest with the same shards,
//! checksums, sources, resume cursor and definition (plus `merged_from`, the provenance).
//!
//! Every output shard is a known token range of the concatenated stream (shard k = tokens k*S .. (k+1)*S), so a shard
//! is copied from the parts that cover that range, never re-tokenized, and a merge can itself be split:
//! `--worker I/N` writes shards I, I+N, ... and records them in `workers/merge-IIIII-of-NNNNN.json`; whichever merge
//! finds every shard written writes `manifest.json`. A merge first checks that every worker it needs has finished and
//! writes nothing otherwise; each shard goes to a temp file, is fsynced and renamed into place; shards already in
//! place (listed in the manifest or a split merge's record, and verified) are kept, so re-running is idempotent and
//! resumes a killed merge.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::pipelines::workers::{WorkerId, WorkerRecord, WORKERS_DIR};
use crate::shards::format::{ShardHeader, TokenWidth, HEADER_BYTES};
use crate::shards::manifest::{
    DatasetDefinition, Manifest, ManifestError, MergedFrom, ResumeCursor, ShardEntry, Split,
};
use crate::shards::verify::check_listed_shard;
use crate::shards::writer::{shard_file_name, source_entries, SourceSpan};
use crate::tokenizer::{BoundaryAt, TokenizerError};
use crate::util::temp_path_for;
use crate::util::xxh3_hex;

#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub out: PathBuf,
    /// Write only shards I, I+N, ... (a merge split over N processes).
    pub split: Option<WorkerId>,
    /// The dataset's `--shards K`; default: the limit the workers ran with.
    pub max_shards: Option<usize>,
    pub progress: bool,
}

/// What became of one worker, for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Finished; `complete`: its input exhausted (else stopped at the `--shards` limit).
    Done { complete: bool, parts: usize, tokens: u64 },
    /// Past the dataset's `--shards`: not needed.
    NotNeeded,
}

#[derive(Clone, Debug)]
pub struct MergeReport {
    pub workers: Vec<(WorkerId, WorkerState)>,
    /// Shards of the dataset (val and train), and which of them this run wrote.
    pub shards_total: usize,
    pub written: Vec<ShardEntry>,
    /// Shards found in place and verified.
    pub kept: usize,
    /// The dataset's manifest, once every shard is in place (a split merge may leave that to another).
    pub manifest: Option<Manifest>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{0}: no worker folders (expected {WORKERS_DIR}/IIIII-of-NNNNN/ written by `prep ... --worker I/N`)")]
    NoWorkers(String),
    #[error("{dir}: worker folders of different worker counts ({counts}); remove the ones of the old run")]
    MixedCounts { dir: String, counts: String },
    #[error("{dir}: cannot merge yet, nothing was written:\n  {}", list_problems(.problems))]
    NotReady { dir: String, problems: Vec<String> },
    #[error("{dir}: the workers do not make one dataset: {what}")]
    Inconsistent { dir: String, what: String },
    #[error(
        "{dir}: manifest.json describes another dataset ({what}); nothing was written. Remove it (and its shards) \
         or merge into another output directory"
    )]
    ManifestDiffers { dir: String, what: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Part { path: String, message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("--shards 0 writes nothing: give a positive number of shards, or leave it out (the workers' limit)")]
    NoShardsAsked,
    #[error(transparent)]
    Lock(#[from] crate::util::LockError),
    #[error(transparent)]
    OutDir(#[from] crate::shards::out_dir::OutDirError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// At most [`PROBLEMS_SHOWN`] lines, then how many more (a merge of thousands of missing workers says so in a few
/// lines, not megabytes).
fn list_problems(problems: &[String]) -> String {
    let mut lines: Vec<String> = problems.iter().take(PROBLEMS_SHOWN).cloned().collect();
    if problems.len() > PROBLEMS_SHOWN {
        lines.push(format!("... and {} more", problems.len() - PROBLEMS_SHOWN));
    }
    lines.join("\n  ")
}

const PROBLEMS_SHOWN: usize = 10;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |e| MergeError::Io { path: path.display().to_string(), source: e }
}

/// One worker folder, loaded.
struct Worker {
    id: WorkerId,
    dir: PathBuf,
    record: WorkerRecord,
    manifest: Manifest,
}

/// The worker folders under `out/workers`: the worker count and the folders present, by index.
fn scan(out: &Path) -> Result<(usize, BTreeMap<usize, PathBuf>), MergeError> {
    let root = out.join(WORKERS_DIR);
    let none = || MergeError::NoWorkers(out.display().to_string());
    let entries = std::fs::read_dir(&root).map_err(|_| none())?;
    let mut by_count: BTreeMap<usize, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let (Some(id), true) = (WorkerId::parse_dir_name(&name), e.path().is_dir()) {
            by_count.entry(id.count).or_default().insert(id.index, e.path());
        }
    }
    match by_count.len() {
        0 => Err(none()),
        1 => Ok(by_count.into_iter().next().expect("one entry")),
        _ => Err(MergeError::MixedCounts {
            dir: root.display().to_string(),
            counts: by_count
                .iter()
                .map(|(n, w)| format!("{} folder(s) of {n} workers", w.len()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// One part of a worker's stream, placed in the dataset's stream.
struct Part {
    path: PathBuf,
    xxh3: String,
    /// Global position of its first token, its token count, and the documents started before it.
    start: u64,
    tokens: u64,
    docs_before: u64,
    map: OnceCell<memmap2::Mmap>,
}

impl Part {
    /// The part's tokens as bytes, checked against its header and checksum the first time.
    fn body(&self, width: TokenWidth) -> Result<&[u8], MergeError> {
        if self.map.get().is_none() {
            let bad = |message: String| MergeError::Part { path: self.path.display().to_string(), message };
            let file = std::fs::File::open(&self.path).map_err(io(&self.path))?;
            // SAFETY: a finished part is immutable (renamed into place, never written again).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&self.path))?;
            let header = ShardHeader::decode(&map[..map.len().min(HEADER_BYTES)], map.len() as u64, &self.path)
                .map_err(|e| bad(e.to_string()))?;
            if header.num_tokens != self.tokens || header.width != width {
                return Err(bad(format!(
                    "header says {} tokens, the worker recorded {}",
                    header.num_tokens, self.tokens
                )));
            }
            let sum = xxh3_hex(&map);
            if sum != self.xxh3 {
                return Err(bad(format!("xxh3 {sum}, the worker recorded {}: damaged; re-run that worker", self.xxh3)));
            }
            let _ = self.map.set(map);
        }
        Ok(&self.map.get().expect("mapped above")[HEADER_BYTES..])
    }
}

/// The dataset's token stream: the needed workers' parts in order, and what places shard boundaries in documents.
struct Stream {
    width: TokenWidth,
    /// The token that marks every document (`TokenizerInfo::eot`), first in it or last.
    eot: u32,
    boundary: BoundaryAt,
    parts: Vec<Part>,
    /// Tokens available (all needed workers' parts) and the tokens the dataset takes (`--shards` may cut it).
    available: u64,
    total: u64,
    /// Documents in the available stream.
    documents: u64,
    /// Where the available stream ends inside a document: the last needed worker's own cursor, made global (its
    /// stream stopped at its `--shards` limit), or `None` where it ends with a document (input exhausted).
    end_cursor: Option<ResumeCursor>,
}

impl Stream {
    fn token(&self, body: &[u8], i: usize) -> u32 {
        match self.width {
            TokenWidth::U16 => u32::from(u16::from_le_bytes([body[2 * i], body[2 * i + 1]])),
            TokenWidth::U32 => u32::from_le_bytes([body[4 * i], body[4 * i + 1], body[4 * i + 2], body[4 * i + 3]]),
        }
    }

    /// Index of the part holding token `pos` (`pos < available`).
    fn part_at(&self, pos: u64) -> usize {
        self.parts.partition_point(|p| p.start + p.tokens <= pos)
    }

    /// Header + tokens `from..to`, copied from the parts that hold them.
    fn shard_bytes(&self, from: u64, to: u64) -> Result<Vec<u8>, MergeError> {
        let w = self.width.bytes();
        let mut bytes = Vec::with_capacity(HEADER_BYTES + (to - from) as usize * w);
        bytes.extend_from_slice(&ShardHeader::new(self.width, to - from).encode());
        let mut i = self.part_at(from);
        while let Some(part) = self.parts.get(i).filter(|p| p.start < to) {
            let (a, b) = (from.max(part.start) - part.start, to.min(part.start + part.tokens) - part.start);
            if a < b {
                bytes.extend_from_slice(&part.body(self.width)?[a as usize * w..b as usize * w]);
            }
            i += 1;
        }
        Ok(bytes)
    }

    /// The resume cursor of a one-box run whose finished shards hold the first `pos` tokens: documents before
    /// `first_unfinished_document` are all in them, and `tokens_into_document` tokens of that one.
    fn cursor_at(&self, pos: u64) -> Result<ResumeCursor, MergeError> {
        if pos >= self.available {
            return Ok(self
                .end_cursor
                .clone()
                .unwrap_or(ResumeCursor { first_unfinished_document: self.documents, tokens_into_document: 0 }));
        }
        // Every document holds one boundary token: count them before `pos`, and find the last one.
        let j = self.part_at(pos);
        let part = &self.parts[j];
        let body = part.body(self.width)?;
        let local = (pos - part.start) as usize;
        let eots = (0..local).filter(|&i| self.token(body, i) == self.eot).count() as u64;
        let boundaries_before = part.docs_before + eots;
        let mut last_boundary = None;
        for k in (0..=j).rev() {
            let p = &self.parts[k];
            let b = p.body(self.width)?;
            let end = if k == j { local } else { p.tokens as usize };
            if let Some(i) = (0..end).rev().find(|&i| self.token(b, i) == self.eot) {
                last_boundary = Some(p.start + i as u64);
                break;
            }
        }
        match self.boundary {
            // <|endoftext|> / BOS first: `pos` is at a document's start, or inside the one its last boundary opened.
            BoundaryAt::First => {
                if self.token(body, local) == self.eot {
                    return Ok(ResumeCursor { first_unfinished_document: boundaries_before, tokens_into_document: 0 });
                }
                let doc_start = last_boundary.ok_or_else(|| MergeError::Part {
                    path: part.path.display().to_string(),
                    message: format!("the stream does not start with its boundary token {}", self.eot),
                })?;
                Ok(ResumeCursor {
                    first_unfinished_document: boundaries_before - 1,
                    tokens_into_document: pos - doc_start,
                })
            }
            // EOS last: the documents before `pos` are the boundaries before it; the next one starts after the last.
            BoundaryAt::Last => Ok(ResumeCursor {
                first_unfinished_document: boundaries_before,
                tokens_into_document: pos - last_boundary.map_or(0, |i| i + 1),
            }),
        }
    }
}

/// The dataset the workers make, as planned before anything is written.
struct Plan {
    stream: Stream,
    template: Manifest,
    /// A worker folder holding the dataset's tokenizer files (when it has any), copied into the output.
    tokenizer_dir: PathBuf,
    /// Every input file of the needed workers, placed in the dataset's document order.
    spans: Vec<SourceSpan>,
    val_shards: usize,
    shard_size: u64,
    /// Input exhausted within the dataset (a one-box run would mark it complete).
    complete: bool,
}

impl Plan {
    fn shard_count(&self) -> usize {
        self.stream.total.div_ceil(self.shard_size) as usize
    }

    fn shard(&self, k: usize) -> (String, Split, u64, u64) {
        let split = if k < self.val_shards { Split::Val } else { Split::Train };
        let from = k as u64 * self.shard_size;
        let to = (from + self.shard_size).min(self.stream.total);
        (shard_file_name(&self.template.dataset, split, k), split, from, to)
    }

    /// The manifest of a one-box run after its first `shards.len()` shards.
    fn manifest(&self, shards: &[ShardEntry]) -> Result<Manifest, MergeError> {
        let mut m = self.template.clone();
        let pos = shards.len() as u64 * self.shard_size;
        let pos = pos.min(self.stream.total);
        let cursor = self.stream.cursor_at(pos)?;
        m.sources =
            source_entries(&self.spans, cursor.first_unfinished_document + u64::from(cursor.tokens_into_document > 0));
        m.resume = cursor;
        m.shards = shards.to_vec();
        m.complete = self.complete && shards.len() == self.shard_count();
        Ok(m)
    }
}

pub fn merge(opts: &MergeOptions) -> Result<MergeReport, MergeError> {
    let start = Instant::now();
    let out = &opts.out;
    if opts.max_shards == Some(0) {
        return Err(MergeError::NoShardsAsked);
    }
    let (count, dirs) = scan(out)?;
    let mut loaded: Vec<Option<Worker>> = Vec::with_capacity(count);
    let mut problems = Vec::new();
    for index in 0..count {
        let id = WorkerId { index, count };
        let Some(dir) = dirs.get(&index) else {
            loaded.push(None);
            continue;
        };
        let worker = WorkerRecord::load(dir)
            .and_then(|record| Ok((record, Manifest::load(dir).map_err(|e| e.to_string())?)))
            .map(|(record, manifest)| Worker { id, dir: dir.clone(), record, manifest });
        match worker {
            Ok(w) => loaded.push(Some(w)),
            Err(e) => {
                problems.push(format!("worker {id}: {e}"));
                loaded.push(None);
            }
        }
    }
    check_same_inputs(out, &loaded)?;
    let max_shards = match opts.max_shards {
        Some(k) => Some(k),
        None => {
            let limits: Vec<Option<usize>> = loaded.iter().flatten().map(|w| w.record.max_shards).collect();
            if limits.windows(2).any(|w| w[0] != w[1]) {
                return Err(MergeError::Inconsistent {
                    dir: out.display().to_string(),
                    what: format!(
                        "the workers ran with different --shards ({limits:?}); pass the dataset's --shards K to merge"
                    ),
                });
            }
            limits.first().copied().flatten()
        }
    };
    let shard_size = loaded.iter().flatten().next().map(|w| w.manifest.shard_size).unwrap_or(1);
    let target = max_shards.map(|k| k as u64 * shard_size);

    // Walk the workers in order until the dataset's tokens are covered; every worker on the way must have finished.
    let mut needed: Vec<&Worker> = Vec::new();
    let mut states = Vec::new();
    let mut tokens = 0u64;
    for (index, w) in loaded.iter().enumerate() {
        let id = WorkerId { index, count };
        if target.is_some_and(|t| tokens >= t) && problems.is_empty() {
            states.push((id, WorkerState::NotNeeded));
            continue;
        }
        let Some(w) = w else {
            if !dirs.contains_key(&index) {
                problems.push(format!("worker {id}: not started (no {})", id.dir_in(out).display()));
            }
            continue;
        };
        let Some(finished) = w.record.finished_with(&w.manifest) else {
            problems.push(format!(
                "worker {id}: unfinished ({} part(s) so far in {}; running, or killed: re-run it to resume)",
                w.manifest.shards.len(),
                w.dir.display()
            ));
            continue;
        };
        let worker_tokens = w.record.tokens();
        if !finished.complete && target.is_none_or(|t| tokens + worker_tokens < t) {
            problems.push(format!(
                "worker {id}: stopped at its --shards {} limit, short of the dataset's end; re-run it without (or with \
                 a larger) --shards",
                w.record.max_shards.map_or("?".into(), |k| k.to_string())
            ));
            continue;
        }
        tokens += worker_tokens;
        states.push((
            id,
            WorkerState::Done { complete: finished.complete, parts: finished.parts.len(), tokens: worker_tokens },
        ));
        needed.push(w);
    }
    if !problems.is_empty() {
        return Err(MergeError::NotReady { dir: out.display().to_string(), problems });
    }
    let mut plan = plan(out, &loaded, &needed, target, shard_size)?;
    // As a one-box run with the same --shards records it.
    plan.template.shards_limit = max_shards;
    // Before the first write: a one-box prep writes OUT alone; the processes of a split merge share it (each writes
    // its own shards), and exclude a one-box prep or an unsplit merge.
    use crate::shards::out_dir::{self, Hold};
    let (_lock, notes) = out_dir::take(out, if opts.split.is_none() { Hold::Exclusive } else { Hold::Shared })?;
    for note in notes {
        tracing::info!("{note}");
    }
    let done = shards_in_place(out, &plan)?;
    // The tokenizer's files (checked against the workers' record) before any manifest that names them.
    plan.template.load_tokenizer(&plan.tokenizer_dir)?.write_files(out)?;
    write_shards(opts, &plan, done, states, start)
}

/// Every worker must have been given the same input list (its record's `inputs_digest`; older records have none):
/// otherwise their ranges of it do not make one corpus. Names the workers that differ from the most common list.
fn check_same_inputs(out: &Path, loaded: &[Option<Worker>]) -> Result<(), MergeError> {
    let digests: Vec<(WorkerId, &str)> =
        loaded.iter().flatten().filter_map(|w| Some((w.id, w.record.inputs_digest.as_deref()?))).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, d) in &digests {
        *counts.entry(d).or_default() += 1;
    }
    // The most common list (a tie goes to the lowest worker's).
    let Some(common) = digests
        .iter()
        .map(|(_, d)| *d)
        .max_by_key(|d| (counts[d], std::cmp::Reverse(digests.iter().position(|(_, x)| x == d))))
    else {
        return Ok(());
    };
    let odd: Vec<String> = digests.iter().filter(|(_, d)| *d != common).map(|(id, _)| id.to_string()).collect();
    if odd.is_empty() {
        return Ok(());
    }
    Err(MergeError::Inconsistent {
        dir: out.display().to_string(),
        what: format!(
            "worker(s) {} were given another --input list than the others (inputs digest {}, the others {common}); \
             re-run them with the same --input list (and --overwrite)",
            odd.join(", "),
            digests.iter().find(|(_, d)| *d != common).map_or("", |(_, d)| d)
        ),
    })
}

/// Check the needed workers are one dataset's, and lay their parts end to end.
fn plan(
    out: &Path,
    loaded: &[Option<Worker>],
    needed: &[&Worker],
    target: Option<u64>,
    shard_size: u64,
) -> Result<Plan, MergeError> {
    let inconsistent = |what: String| MergeError::Inconsistent { dir: out.display().to_string(), what };
    let first = needed.first().map(|w| &w.manifest);
    let def_of = |w: &Worker| {
        w.manifest
            .definition
            .clone()
            .ok_or_else(|| inconsistent(format!("worker {}: its manifest has no definition", w.id)))
    };
    let mut parts = Vec::new();
    let mut spans = Vec::new();
    let (mut pos, mut docs) = (0u64, 0u64);
    let mut end_cursor = None;
    let mut complete = true;
    let mut val_shards = None;
    for w in needed {
        let (m, r) = (&w.manifest, &w.record);
        let first = first.expect("needed is not empty here");
        if (&m.dataset, m.shard_size, m.token_width) != (&first.dataset, first.shard_size, first.token_width)
            || !m.tokenizer.same_as(&first.tokenizer)
        {
            return Err(inconsistent(format!(
                "worker {} is dataset `{}` ({}, {} tokens/shard), worker {} `{}` ({}, {} tokens/shard)",
                w.id,
                m.dataset,
                m.tokenizer.describe(),
                m.shard_size,
                needed[0].id,
                first.dataset,
                first.tokenizer.describe(),
                first.shard_size
            )));
        }
        let expected = w.id.file_range(r.inputs_total);
        let def = def_of(w)?;
        if (r.first_input, r.inputs) != (expected.start, expected.len()) || def.inputs.len() != r.inputs {
            return Err(inconsistent(format!(
                "worker {} read input files {}..{} ({} listed in its manifest); worker {} of {} input files reads {}..{}",
                w.id,
                r.first_input,
                r.first_input + r.inputs,
                def.inputs.len(),
                w.id,
                r.inputs_total,
                expected.start,
                expected.end
            )));
        }
        if r.inputs_total != needed[0].record.inputs_total {
            return Err(inconsistent(format!(
                "worker {} saw {} input files, worker {} saw {}",
                w.id, r.inputs_total, needed[0].id, needed[0].record.inputs_total
            )));
        }
        match val_shards {
            None => val_shards = Some((def.val_shards, def.text_column.clone())),
            Some((v, ref c)) if (v, c) != (def.val_shards, &def.text_column) => {
                return Err(inconsistent(format!(
                    "worker {}: --val-shards {} / text column `{}`, worker {}: {v} / `{c}`",
                    w.id, def.val_shards, def.text_column, needed[0].id
                )))
            }
            Some(_) => {}
        }
        // The worker's input files, placed in document order (rows as its manifest counts them).
        let mut first_doc = docs;
        for (i, input) in def.inputs.iter().enumerate() {
            let read = m.sources.get(i).filter(|s| s.file == input.file);
            spans.push(SourceSpan {
                name: input.file.clone(),
                bytes: read.map_or(input.bytes, |s| s.bytes),
                first_doc,
            });
            first_doc += read.map_or(0, |s| s.rows);
        }
        let finished = r.finished.as_ref().expect("needed workers have finished");
        let worker_docs: u64 = finished.parts.iter().map(|p| p.documents).sum();
        if finished.complete && worker_docs != m.resume.first_unfinished_document {
            return Err(inconsistent(format!(
                "worker {}: its parts hold {worker_docs} documents, its manifest says {}; re-run it with --overwrite",
                w.id, m.resume.first_unfinished_document
            )));
        }
        for p in &finished.parts {
            parts.push(Part {
                path: w.dir.join(&p.file),
                xxh3: p.xxh3.clone(),
                start: pos,
                tokens: p.tokens,
                docs_before: docs,
                map: OnceCell::new(),
            });
            pos += p.tokens;
            docs += p.documents;
        }
        complete &= finished.complete;
        end_cursor = (!finished.complete).then(|| ResumeCursor {
            first_unfinished_document: docs - worker_docs + m.resume.first_unfinished_document,
            tokens_into_document: m.resume.tokens_into_document,
        });
    }
    let total = target.map_or(pos, |t| t.min(pos));
    // As a one-box run: reaching the --shards limit (even exactly at the input's end) leaves the dataset open.
    let complete = complete && target.is_none_or(|t| pos < t);
    let template_worker = needed.first().copied().or(loaded.iter().flatten().next());
    let template_worker = template_worker.ok_or_else(|| MergeError::NoWorkers(out.display().to_string()))?;
    let template_from = &template_worker.manifest;
    let mut template = Manifest::new(&template_from.dataset, template_from.tokenizer.clone(), template_from.shard_size);
    // The dataset's definition is every worker's inputs in order: known when every worker folder is here.
    let all: Option<Vec<&Worker>> = loaded.iter().map(|w| w.as_ref()).collect();
    template.definition = match all {
        Some(all) if !all.is_empty() => {
            let defs = all.iter().map(|w| def_of(w)).collect::<Result<Vec<_>, _>>()?;
            Some(DatasetDefinition {
                inputs: defs.iter().flat_map(|d| d.inputs.clone()).collect(),
                text_column: defs[0].text_column.clone(),
                val_shards: defs[0].val_shards,
            })
        }
        _ => None,
    };
    template.merged_from =
        Some(MergedFrom { workers: loaded.len(), worker_tokens: needed.iter().map(|w| w.record.tokens()).collect() });
    let val_shards = val_shards.map_or(template_from.definition.as_ref().map_or(1, |d| d.val_shards), |(v, _)| v);
    let stream = Stream {
        width: template.token_width,
        eot: template.tokenizer.eot,
        boundary: template.tokenizer.boundary,
        parts,
        available: pos,
        total,
        documents: docs,
        end_cursor,
    };
    Ok(Plan { stream, template, tokenizer_dir: template_worker.dir.clone(), spans, val_shards, shard_size, complete })
}

/// A split merge's record of the shards it wrote: `workers/merge-IIIII-of-NNNNN.json`.
fn split_record_path(out: &Path, split: WorkerId) -> PathBuf {
    out.join(WORKERS_DIR).join(format!("merge-{}.json", split.dir_name()))
}

/// Shards already in place: listed in `out`'s manifest or in a split merge's record, where the plan puts them, and
/// whole (size and checksum). A manifest of another dataset stops the merge before anything is written.
fn shards_in_place(out: &Path, plan: &Plan) -> Result<Vec<Option<ShardEntry>>, MergeError> {
    let n = plan.shard_count();
    let mut done: Vec<Option<ShardEntry>> = vec![None; n];
    let differs = |what: String| MergeError::ManifestDiffers { dir: out.display().to_string(), what };
    let mut listed: Vec<ShardEntry> = Vec::new();
    if Manifest::path_in(out).exists() {
        let m = Manifest::load(out)?;
        let t = &plan.template;
        if (&m.dataset, m.shard_size) != (&t.dataset, t.shard_size) || !m.tokenizer.same_as(&t.tokenizer) {
            return Err(differs(format!(
                "`{}` {} {} tokens/shard on disk, the workers make `{}` {} {}",
                m.dataset,
                m.tokenizer.describe(),
                m.shard_size,
                t.dataset,
                t.tokenizer.describe(),
                t.shard_size
            )));
        }
        if let (Some(a), Some(b)) = (&m.definition, &t.definition) {
            let check = a.check(b, a.inputs.len());
            if !check.differences.is_empty() {
                return Err(differs(check.differences.join("; ")));
            }
        }
        for (k, s) in m.shards.iter().enumerate() {
            let (name, _, from, to) = if k < n { plan.shard(k) } else { (String::new(), Split::Train, 0, 0) };
            if s.file != name || s.tokens != to - from {
                return Err(differs(format!("it lists {} ({} tokens) as shard {k}", s.file, s.tokens)));
            }
        }
        listed.extend(m.shards);
    }
    if let Ok(entries) = std::fs::read_dir(out.join(WORKERS_DIR)) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("merge-") && name.ends_with(".json") {
                let text = std::fs::read_to_string(e.path()).map_err(io(&e.path()))?;
                let shards: Vec<ShardEntry> = serde_json::from_str(&text).map_err(|err| MergeError::Part {
                    path: e.path().display().to_string(),
                    message: format!("not a split merge's record: {err}"),
                })?;
                listed.extend(shards);
            }
        }
    }
    for s in listed {
        let Some(k) = (0..n).find(|&k| plan.shard(k).0 == s.file) else { continue };
        let (_, _, from, to) = plan.shard(k);
        if done[k].is_none() && s.tokens == to - from && check_listed_shard(out, &s, plan.template.token_width).is_ok()
        {
            done[k] = Some(s);
        }
    }
    Ok(done)
}

fn write_shards(
    opts: &MergeOptions,
    plan: &Plan,
    mut done: Vec<Option<ShardEntry>>,
    workers: Vec<(WorkerId, WorkerState)>,
    start: Instant,
) -> Result<MergeReport, MergeError> {
    let out = &opts.out;
    let n = plan.shard_count();
    let kept = done.iter().filter(|d| d.is_some()).count();
    let mine = |k: usize| opts.split.is_none_or(|s| k % s.count == s.index);
    let mut written = Vec::new();
    let mut my_record: Vec<ShardEntry> = Vec::new();
    if let Some(s) = opts.split {
        if let Ok(text) = std::fs::read_to_string(split_record_path(out, s)) {
            my_record = serde_json::from_str(&text).unwrap_or_default();
        }
    }
    for k in 0..n {
        if !mine(k) || done[k].is_some() {
            continue;
        }
        let (file, split, from, to) = plan.shard(k);
        let path = out.join(&file);
        let bytes = plan.stream.shard_bytes(from, to)?;
        // A killed merge's temp file for this shard (other shards' temps may be another merge's, in progress).
        let _ = std::fs::remove_file(temp_path_for(&path));
        crate::util::write_atomic(&path, &bytes).map_err(io(&path))?;
        let entry = ShardEntry { file, split, tokens: to - from, xxh3: xxh3_hex(&bytes) };
        if opts.progress {
            eprintln!("merge: {} ({} tokens, xxh3 {})", entry.file, entry.tokens, entry.xxh3);
        }
        written.push(entry.clone());
        my_record.push(entry.clone());
        done[k] = Some(entry);
        match opts.split {
            Some(s) => {
                let path = split_record_path(out, s);
                let text = serde_json::to_string_pretty(&my_record).expect("shard entries serialise");
                crate::util::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
            }
            // Unsplit, shards are written in order: the manifest lists each as soon as it is in place, as prep's does.
            None => {
                let prefix: Option<Vec<ShardEntry>> = done[..=k].iter().cloned().collect();
                if let Some(prefix) = prefix {
                    plan.manifest(&prefix)?.save(out)?;
                }
            }
        }
    }
    let all: Option<Vec<ShardEntry>> = done.into_iter().collect();
    let manifest = match all {
        Some(all) => {
            let m = plan.manifest(&all)?;
            m.save(out)?;
            Some(m)
        }
        None => None,
    };
    Ok(MergeReport { workers, shards_total: n, written, kept, manifest, seconds: start.elapsed().as_secs_f64() })
}
