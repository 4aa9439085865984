//! A corpus cut into segments, the units of parallel work of `prep`: a range of rows of one parquet row group, a block
//! of JSON lines, or one text file. Planning a segment is cheap and sequential (a parquet footer, a scan for line
//! ends); decoding and tokenizing it is the expensive part, and runs on the thread pool. Every segment knows the
//! global index of its first document, so a resume skips exactly the documents already in finished shards.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::pipelines::profile::StageTimes;
use crate::pipelines::sources::{io_err, SourceError, SourceFile, SourceKind};
use crate::shards::format::{encode_tokens, TokenWidth};
use crate::tokenizer::Tokenizer;

/// Text bytes a segment aims at: large enough that scheduling costs nothing (a few ms of work per segment), small
/// enough that 2 segments per thread in flight stay within tens of MiB per thread.
const SEGMENT_TEXT_BYTES: u64 = 2 << 20;
/// Rows decoded per parquet record batch inside a segment.
const PARQUET_BATCH_ROWS: usize = 512;

/// One unit of work: documents `first_doc..first_doc + docs` of the corpus.
pub struct Segment {
    pub first_doc: u64,
    pub docs: u64,
    work: Work,
}

enum Work {
    Parquet {
        path: PathBuf,
        meta: ArrowReaderMetadata,
        column: usize,
        row_group: usize,
        offset: usize,
    },
    /// Raw lines of a JSON-lines file with their 1-based line numbers (blank lines already dropped).
    Jsonl {
        path: PathBuf,
        field: Arc<str>,
        lines: Vec<(u64, String)>,
    },
    Text {
        path: PathBuf,
        text: String,
    },
}

/// A segment decoded and tokenized: every document's tokens (its boundary tokens included), back to back, already
/// encoded in the shard token width.
#[derive(Debug, Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Size in bytes of each document, in order.
    pub doc_bytes: Vec<u32>,
}

impl Encoded {
    /// The documents' encoded tokens, in order.
    pub fn documents(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0usize;
        self.doc_bytes.iter().map(move |&n| {
            let doc = &self.bytes[at..at + n as usize];
            at += n as usize;
            doc
        })
    }
}

impl Segment {
    /// Decode the segment's documents, tokenize them (`Tokenizer::encode_document_into`: fineweb.py's EOT then the
    /// text, or an HF tokenizer's own boundaries) and encode the tokens as
    /// the shards store them, all on the calling (pool) thread. `out` is a buffer to fill (emptied first): the driver
    /// hands back the ones it has consumed, so token buffers are not allocated afresh per segment (fresh pages cost a
    /// page fault each, and the page faults of many threads of one process contend on its memory map).
    /// `times`: when profiling (`profile`), filled with the time spent tokenizing and encoding (the rest of the job
    /// is decoding).
    pub fn encode(
        self,
        tokenizer: &Tokenizer,
        mut out: Encoded,
        mut times: Option<&mut StageTimes>,
    ) -> Result<Encoded, SourceError> {
        thread_local! {
            /// One document's token ids; kept per thread at the largest document's size.
            static IDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        }
        let width = TokenWidth::for_vocab(tokenizer.vocab_size());
        out.bytes.clear();
        out.doc_bytes.clear();
        let mut push = |text: &str, place: &dyn Fn() -> String| {
            IDS.with_borrow_mut(|ids| {
                ids.clear();
                let t0 = times.is_some().then(Instant::now);
                tokenizer.encode_document_into(text, ids).map_err(|source| SourceError::Tokenize {
                    path: self.path_name(),
                    place: place(),
                    source: Box::new(source),
                })?;
                let t1 = t0.map(|_| Instant::now());
                let before = out.bytes.len();
                encode_tokens(ids, width, &mut out.bytes);
                out.doc_bytes.push((out.bytes.len() - before) as u32);
                if let (Some(t), Some(t0), Some(t1)) = (times.as_deref_mut(), t0, t1) {
                    t.tokenize += t1 - t0;
                    t.encode += t1.elapsed();
                    t.tokens += ids.len() as u64;
                }
                Ok(())
            })
        };
        match &self.work {
            Work::Parquet { path, meta, column, row_group, offset } => decode_parquet_rows(
                path,
                meta.clone(),
                *column,
                *row_group,
                *offset,
                self.docs as usize,
                &mut |text, row| push(text, &|| format!("row {row}")),
            )?,
            Work::Jsonl { path, field, lines } => {
                for (line_no, line) in lines {
                    push(&json_text(path, *line_no, line, field)?, &|| format!("line {line_no}"))?;
                }
            }
            Work::Text { text, .. } => push(text, &|| "the text".to_string())?,
        }
        Ok(out)
    }

    /// The input file, for messages.
    fn path_name(&self) -> String {
        match &self.work {
            Work::Parquet { path, .. } | Work::Jsonl { path, .. } | Work::Text { path, .. } => {
                path.display().to_string()
            }
        }
    }
}

/// The segments of one input file, in order, planned lazily (a JSON-lines file is split block by block as the
/// segments are taken, so planning never holds more than one block). Documents before `skip_to` (a global index) are
/// left out; [`FilePlan::documents`] counts them too.
pub struct FilePlan {
    planned: std::collections::VecDeque<Segment>,
    /// Documents of the file seen by planning so far (all of them once the plan is exhausted).
    docs: u64,
    jsonl: Option<JsonlBlocks>,
}

impl FilePlan {
    pub fn open(file: &SourceFile, text_column: &str, first_doc: u64, skip_to: u64) -> Result<FilePlan, SourceError> {
        let skip = skip_to.saturating_sub(first_doc);
        let ready = |segs: Vec<Segment>, docs| FilePlan { planned: segs.into(), docs, jsonl: None };
        match file.kind {
            SourceKind::Parquet => {
                let (segs, docs) = plan_parquet(&file.path, text_column, first_doc, skip)?;
                Ok(ready(segs, docs))
            }
            SourceKind::Jsonl => {
                let f = File::open(&file.path).map_err(io_err(&file.path))?;
                let blocks = JsonlBlocks {
                    path: file.path.clone(),
                    field: Arc::from(text_column),
                    lines: BufReader::new(f),
                    line_no: 0,
                    first_doc,
                    skip,
                    done: false,
                };
                Ok(FilePlan { planned: Default::default(), docs: 0, jsonl: Some(blocks) })
            }
            SourceKind::Text => {
                let text = read_text(&file.path)?;
                // An empty (or blank) text file is no document: not a shard holding a lone <|endoftext|>.
                if text.trim().is_empty() {
                    tracing::warn!("{}: empty, skipped", file.path.display());
                    return Ok(ready(Vec::new(), 0));
                }
                let segs = if skip == 0 {
                    vec![Segment { first_doc, docs: 1, work: Work::Text { path: file.path.clone(), text } }]
                } else {
                    vec![]
                };
                Ok(ready(segs, 1))
            }
        }
    }

    /// The file's documents (skipped ones included); complete once the plan has run out.
    pub fn documents(&self) -> u64 {
        self.docs
    }
}

impl Iterator for FilePlan {
    type Item = Result<Segment, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(s) = self.planned.pop_front() {
            return Some(Ok(s));
        }
        let blocks = self.jsonl.as_mut()?;
        let next = blocks.next_block(&mut self.docs);
        if next.is_none() {
            self.jsonl = None;
        }
        next
    }
}

fn read_text(path: &Path) -> Result<String, SourceError> {
    let mut bytes = Vec::new();
    File::open(path).map_err(io_err(path))?.read_to_end(&mut bytes).map_err(io_err(path))?;
    String::from_utf8(bytes)
        .map_err(|e| SourceError::Utf8 { path: path.display().to_string(), offset: e.utf8_error().valid_up_to() })
}

/// A parquet file's row groups, each cut into row ranges of about [`SEGMENT_TEXT_BYTES`] of (uncompressed) text
/// column. Only the footer is read here.
fn plan_parquet(path: &Path, column: &str, first_doc: u64, skip: u64) -> Result<(Vec<Segment>, u64), SourceError> {
    let p = || path.display().to_string();
    let f = File::open(path).map_err(io_err(path))?;
    let meta = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new())
        .map_err(|e| SourceError::Parquet { path: p(), source: e })?;
    let schema = meta.schema().clone();
    let Some((col_idx, field)) = schema.column_with_name(column) else {
        let available = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
        return Err(SourceError::MissingColumn { path: p(), column: column.to_string(), available });
    };
    if !matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return Err(SourceError::NotText {
            path: p(),
            column: column.into(),
            data_type: field.data_type().to_string(),
        });
    }
    let descr = meta.parquet_schema();
    let leaves: Vec<usize> = (0..descr.num_columns()).filter(|&i| descr.get_column_root_idx(i) == col_idx).collect();
    let mut segs = Vec::new();
    let mut doc = first_doc;
    let mut seen = 0u64;
    for (rg_idx, rg) in meta.metadata().row_groups().iter().enumerate() {
        let rows = rg.num_rows().max(0) as u64;
        let text_bytes: u64 = leaves.iter().map(|&i| rg.column(i).uncompressed_size().max(0) as u64).sum();
        let parts = text_bytes.div_ceil(SEGMENT_TEXT_BYTES).clamp(1, rows.max(1));
        let per_part = rows.div_ceil(parts).max(1);
        let mut offset = 0u64;
        while offset < rows {
            let n = per_part.min(rows - offset);
            // Rows before the resume point are never decoded.
            let skip_here = skip.saturating_sub(seen + offset).min(n);
            if skip_here < n {
                segs.push(Segment {
                    first_doc: doc + offset + skip_here,
                    docs: n - skip_here,
                    work: Work::Parquet {
                        path: path.to_path_buf(),
                        meta: meta.clone(),
                        column: col_idx,
                        row_group: rg_idx,
                        offset: (offset + skip_here) as usize,
                    },
                });
            }
            offset += n;
        }
        doc += rows;
        seen += rows;
    }
    Ok((segs, seen))
}

/// Rows `offset..offset + rows` of one row group's text column, each handed to `each`. A null text is refused, naming
/// the row (as a JSON line's null text is): one rule for every input format. `each` gets the text and its row.
fn decode_parquet_rows(
    path: &Path,
    meta: ArrowReaderMetadata,
    column: usize,
    row_group: usize,
    offset: usize,
    rows: usize,
    each: &mut dyn FnMut(&str, u64) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let p = || path.display().to_string();
    let first_row: u64 =
        meta.metadata().row_groups()[..row_group].iter().map(|rg| rg.num_rows() as u64).sum::<u64>() + offset as u64;
    let f = File::open(path).map_err(io_err(path))?;
    let mask = ProjectionMask::roots(meta.parquet_schema(), [column]);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta)
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .with_offset(offset)
        .with_limit(rows)
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| SourceError::Parquet { path: p(), source: e })?;
    let mut row = first_row;
    for batch in reader {
        let batch = batch.map_err(|e| SourceError::Arrow { path: p(), row, source: e })?;
        let col = batch.column(0);
        macro_rules! each_text {
            ($arr:expr) => {{
                let arr = $arr;
                for i in 0..arr.len() {
                    if arr.is_null(i) {
                        let place = format!("row {}", row + i as u64);
                        return Err(SourceError::NullText { path: p(), place, unit: "row" });
                    }
                    each(arr.value(i), row + i as u64)?;
                }
            }};
        }
        match col.data_type() {
            DataType::Utf8 => each_text!(col.as_string::<i32>()),
            DataType::LargeUtf8 => each_text!(col.as_string::<i64>()),
            DataType::Utf8View => each_text!(col.as_string_view()),
            other => {
                return Err(SourceError::NotText { path: p(), column: String::new(), data_type: other.to_string() })
            }
        }
        row += col.len() as u64;
    }
    let read = (row - first_row) as usize;
    if read != rows {
        return Err(SourceError::Io {
            path: p(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "row group {row_group}: footer promises rows up to {}, read up to {row}",
                    first_row + rows as u64
                ),
            ),
        });
    }
    Ok(())
}

/// A JSON-lines file in blocks of about [`SEGMENT_TEXT_BYTES`] of raw lines. The lines are only split here (blank ones
/// dropped: no document); they are parsed in the segment, on the pool.
struct JsonlBlocks {
    path: PathBuf,
    field: Arc<str>,
    lines: BufReader<File>,
    line_no: u64,
    first_doc: u64,
    /// Documents of this file to leave out (resume).
    skip: u64,
    done: bool,
}

impl JsonlBlocks {
    /// The next block of lines as a segment; `docs` counts the file's documents seen so far.
    fn next_block(&mut self, docs: &mut u64) -> Option<Result<Segment, SourceError>> {
        let mut block: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0u64;
        while !self.done && bytes < SEGMENT_TEXT_BYTES {
            let mut line = String::new();
            self.line_no += 1;
            match self.lines.read_line(&mut line) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    *docs += 1;
                    if *docs <= self.skip {
                        continue;
                    }
                    bytes += line.len() as u64;
                    block.push((self.line_no, line));
                }
                Err(e) => {
                    self.done = true;
                    let (path, line) = (self.path.display().to_string(), self.line_no);
                    return Some(Err(SourceError::Json { path, line, message: e.to_string() }));
                }
            }
        }
        if block.is_empty() {
            return None;
        }
        let n = block.len() as u64;
        let work = Work::Jsonl { path: self.path.clone(), field: self.field.clone(), lines: block };
        Some(Ok(Segment { first_doc: self.first_doc + *docs - n, docs: n, work }))
    }
}

/// The text of one JSON line's `field`: a string; null, a number or anything else is refused, naming the line.
fn json_text(path: &Path, line: u64, text: &str, field: &str) -> Result<String, SourceError> {
    let json_err = |message: String| SourceError::Json { path: path.display().to_string(), line, message };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| json_err(format!("invalid JSON: {e}")))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) => Err(SourceError::NullText {
            path: path.display().to_string(),
            place: format!("line {line}, field `{field}`"),
            unit: "line",
        }),
        Some(other) => Err(json_err(format!("field `{field}` is not a string: {other}"))),
        None => Err(json_err(format!("no field `{field}` (pick one with --text-column)"))),
    }
}
