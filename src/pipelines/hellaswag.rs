//! HellaSwag prep: read tasks from any of the three layouts HellaSwag circulates in, tokenize them exactly as
//! build-nanogpt's `hellaswag.py` renders them, and write llm.c's eval file (`eval::hellaswag_file`).
//!
//! Layouts (chosen by file extension, or forced with [`SourceFormat`]):
//! - `.jsonl`: rowanz/hellaswag's original files, one task per line (`ctx`, `endings`, integer `label`).
//! - `.parquet`: the Hugging Face conversion (`Rowan/hellaswag`: `ctx: string`, `endings: list<string>`,
//!   `label: string`).
//! - `.txt`: llama.cpp's `perplexity --hellaswag` layout, 6 lines per task: context, label, 4 endings. Its context
//!   line is `activity_label + ": " + ctx` with wikiHow's `[header]`/`[step]` markers removed, and it is scored
//!   whole, as llama.cpp scores it; so its tokens differ from the jsonl's for the same task.
//!
//! Tokenization (build-nanogpt `render_example`): context = enc(ctx), ending i = enc(" " + ending i), with any
//! tokenizer whose vocabulary fits the file's u16 ids; a Hugging Face tokenizer's documents start with its BOS
//! (Llama's), so its contexts do too.
//! The defaults (hub repo and files, column names, tokenizer, output) come from `pipelines/hellaswag.toml`.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListArray, StringArray};
use arrow::datatypes::{DataType, Field};
use rayon::prelude::*;
use serde::Deserialize;

use crate::eval::hellaswag_file::FileTokenizer;
use crate::eval::hellaswag_file::{self, Example, HellaswagFile, HellaswagFileError, NUM_COMPLETIONS};
use crate::hub::{HubClient, HubError, RemoteFile};
use crate::tokenizer::{Tokenizer, TokenizerError, TokenizerSource};

/// The pipeline file compiled into the binary, used when no `pipelines/hellaswag.toml` is found.
pub const BUILTIN_PIPELINE: &str = include_str!("../../pipelines/hellaswag.toml");
/// Where `tokenmill prep hellaswag` looks for its pipeline file, relative to the working directory.
pub const DEFAULT_PIPELINE_PATH: &str = "pipelines/hellaswag.toml";

#[derive(Debug, thiserror::Error)]
pub enum HellaswagPrepError {
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid HellaSwag pipeline: {reason}")]
    Pipeline { origin: String, reason: String },
    #[error("{path}: cannot tell the layout from the extension (expected .jsonl, .parquet or .txt; or pass --format)")]
    UnknownFormat { path: String },
    #[error("{path}:{line}: {reason}")]
    BadLine { path: String, line: usize, reason: String },
    #[error("{path}: row {row}: {reason}")]
    BadRow { path: String, row: usize, reason: String },
    #[error("{path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: no column `{column}` (columns: {available}); set [columns] in the pipeline file")]
    MissingColumn { path: String, column: String, available: String },
    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    ColumnType { path: String, column: String, found: String, expected: &'static str },
    #[error("{path}: no HellaSwag tasks in the input")]
    Empty { path: String },
    #[error(
        "tokenizer {0} does not fit llm.c's HellaSwag file (every token is a u16 below 65535): its ids go past \
         65534; use gpt2, or a Hugging Face tokenizer of at most 65535 ids"
    )]
    Tokenizer(String),
    #[error(transparent)]
    Tokenize(#[from] TokenizerError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("hub: {repo} has no .parquet, .jsonl or .txt file under any of: {tried}")]
    NoHubFiles { repo: String, tried: String },
    #[error(transparent)]
    File(#[from] HellaswagFileError),
    #[error(
        "{path}: already holds another eval file ({old} examples; this run would write {new}); nothing was written. \
         Pass --overwrite to replace it, or another --out"
    )]
    Exists { path: String, old: usize, new: usize },
    #[error(
        "{path}: exists and is not a HellaSwag eval file; refusing to replace it (even with --overwrite): remove it \
         yourself, or use another --out"
    )]
    NotAnEvalFile { path: String },
}

impl HellaswagPrepError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        HellaswagPrepError::Io { path: path.display().to_string(), source }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The pipeline file

/// `pipelines/hellaswag.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HellaswagPipeline {
    pub name: String,
    /// `gpt2`, or a Hugging Face tokenizer (`hf:REPO`, a tokenizer.json) of at most 65535 ids.
    pub tokenizer: TokenizerSource,
    pub source: HubSource,
    #[serde(default)]
    pub columns: Columns,
    pub output: Output,
}

/// Where the tasks come from when no `--input` is given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSource {
    /// Hugging Face dataset repo, `owner/name`.
    pub repo: String,
    /// Tried in order; the first that lists at least one supported file wins.
    pub locations: Vec<HubLocation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLocation {
    pub revision: String,
    /// Path prefix inside the repo (a folder with a trailing `/`, or the start of the file names).
    pub prefix: String,
}

/// Column names of the jsonl / parquet schema.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    pub context: String,
    pub endings: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns { context: "ctx".into(), endings: "endings".into(), label: "label".into() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub dir: PathBuf,
    pub file: String,
}

impl HellaswagPipeline {
    /// Parse a pipeline file's text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, HellaswagPrepError> {
        let bad = |reason: String| HellaswagPrepError::Pipeline { origin: origin.to_string(), reason };
        let p: HellaswagPipeline = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let TokenizerSource::Builtin(k) = p.tokenizer {
            if k.vocab_size() > hellaswag_file::START_EXAMPLE as u32 {
                return Err(HellaswagPrepError::Tokenizer(k.to_string()));
            }
        }
        if p.source.locations.is_empty() {
            return Err(bad("[source] locations is empty".into()));
        }
        if p.output.file.is_empty() || p.output.file.contains('/') {
            return Err(bad(format!("[output] file `{}` must be a plain file name", p.output.file)));
        }
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self, HellaswagPrepError> {
        let text = std::fs::read_to_string(path).map_err(|e| HellaswagPrepError::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The copy of `pipelines/hellaswag.toml` built into the binary.
    pub fn builtin() -> Self {
        Self::from_toml_str(BUILTIN_PIPELINE, "built-in pipelines/hellaswag.toml")
            .expect("the built-in pipelines/hellaswag.toml parses (checked by tests)")
    }

    /// `pipelines/hellaswag.toml` under the working directory when it exists, else the built-in copy.
    pub fn load_default() -> Result<Self, HellaswagPrepError> {
        let path = Path::new(DEFAULT_PIPELINE_PATH);
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Self::builtin())
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading tasks

/// One HellaSwag task as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub context: String,
    pub endings: [String; NUM_COMPLETIONS],
    /// The correct ending, 0..4.
    pub label: usize,
}

/// The layouts a HellaSwag source file can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// rowanz/hellaswag's original jsonl.
    Jsonl,
    /// The Hugging Face parquet conversion.
    Parquet,
    /// llama.cpp's 6-lines-per-task text.
    LlamaCppText,
}

impl SourceFormat {
    /// The layout implied by `path`'s extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "json" => Some(SourceFormat::Jsonl),
            "parquet" => Some(SourceFormat::Parquet),
            "txt" => Some(SourceFormat::LlamaCppText),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jsonl => "jsonl",
            SourceFormat::Parquet => "parquet",
            SourceFormat::LlamaCppText => "llama.cpp text",
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jsonl" | "json" => Ok(SourceFormat::Jsonl),
            "parquet" => Ok(SourceFormat::Parquet),
            "txt" | "text" | "llama.cpp" | "llamacpp" => Ok(SourceFormat::LlamaCppText),
            other => Err(format!("unknown HellaSwag layout `{other}` (expected jsonl, parquet or txt)")),
        }
    }
}

/// Read every task of `path`, in file order. `format` overrides the extension.
pub fn read_tasks(
    path: &Path,
    format: Option<SourceFormat>,
    columns: &Columns,
) -> Result<Vec<Task>, HellaswagPrepError> {
    let format = match format.or_else(|| SourceFormat::from_path(path)) {
        Some(f) => f,
        None => return Err(HellaswagPrepError::UnknownFormat { path: path.display().to_string() }),
    };
    let tasks = match format {
        SourceFormat::Jsonl => {
            let text = read_utf8(path)?;
            parse_jsonl(&text, path, columns)?
        }
        SourceFormat::LlamaCppText => {
            let text = read_utf8(path)?;
            parse_llamacpp_text(&text, path)?
        }
        SourceFormat::Parquet => read_parquet(path, columns)?,
    };
    if tasks.is_empty() {
        return Err(HellaswagPrepError::Empty { path: path.display().to_string() });
    }
    Ok(tasks)
}

fn read_utf8(path: &Path) -> Result<String, HellaswagPrepError> {
    let bytes = std::fs::read(path).map_err(|e| HellaswagPrepError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count();
        HellaswagPrepError::BadLine { path: path.display().to_string(), line, reason: "not valid UTF-8".into() }
    })
}

/// A label as the sources write it: an integer 0..4, or (parquet) the same as a string.
fn parse_label(text: &str) -> Result<usize, String> {
    match text.trim() {
        "" => Err("empty label (HellaSwag's test split is unlabelled; use the validation split)".into()),
        t => match t.parse::<usize>() {
            Ok(l) if l < NUM_COMPLETIONS => Ok(l),
            _ => Err(format!("label `{t}` is not 0, 1, 2 or 3")),
        },
    }
}

/// Contexts and endings must have text: the eval file cannot hold an empty token run, and build-nanogpt's
/// mean loss over an empty ending is undefined.
fn check_task(task: &Task) -> Result<(), String> {
    if task.context.is_empty() {
        return Err("empty context".into());
    }
    if let Some(i) = task.endings.iter().position(|e| e.is_empty()) {
        return Err(format!("ending {i} is empty"));
    }
    Ok(())
}

/// rowanz/hellaswag's jsonl: one JSON object per line. Blank lines are skipped; line numbers are 1-based.
pub fn parse_jsonl(text: &str, path: &Path, columns: &Columns) -> Result<Vec<Task>, HellaswagPrepError> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |reason: String| HellaswagPrepError::BadLine { path: path.display().to_string(), line: i + 1, reason };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let field = |name: &str| value.get(name).ok_or_else(|| bad(format!("no field `{name}`")));
        let context = field(&columns.context)?
            .as_str()
            .ok_or_else(|| bad(format!("`{}` is not a string", columns.context)))?
            .to_string();
        let endings_value =
            field(&columns.endings)?.as_array().ok_or_else(|| bad(format!("`{}` is not an array", columns.endings)))?;
        let endings = four_endings(endings_value.iter().map(|v| v.as_str().map(str::to_string)))
            .map_err(|reason| bad(format!("`{}`: {reason}", columns.endings)))?;
        let label_value = value.get(&columns.label).ok_or_else(|| {
            bad(format!(
                "no field `{}` (HellaSwag's test split is unlabelled; use the validation split)",
                columns.label
            ))
        })?;
        let label = match label_value {
            serde_json::Value::Number(n) => parse_label(&n.to_string()),
            serde_json::Value::String(s) => parse_label(s),
            other => Err(format!("label {other} is not a number")),
        }
        .map_err(&bad)?;
        let task = Task { context, endings, label };
        check_task(&task).map_err(&bad)?;
        tasks.push(task);
    }
    Ok(tasks)
}

/// Exactly 4 strings, or why not.
fn four_endings(items: impl ExactSizeIterator<Item = Option<String>>) -> Result<[String; NUM_COMPLETIONS], String> {
    let n = items.len();
    if n != NUM_COMPLETIONS {
        return Err(format!("{n} endings, expected {NUM_COMPLETIONS}"));
    }
    let endings: Vec<String> = items
        .enumerate()
        .map(|(i, e)| e.ok_or_else(|| format!("ending {i} is not a string")))
        .collect::<Result<_, _>>()?;
    Ok(endings.try_into().expect("length checked above"))
}

/// llama.cpp's layout: per task, line 1 the context, line 2 the label, lines 3-6 the endings.
pub fn parse_llamacpp_text(text: &str, path: &Path) -> Result<Vec<Task>, HellaswagPrepError> {
    const LINES_PER_TASK: usize = 2 + NUM_COMPLETIONS;
    let lines: Vec<&str> = text.lines().collect();
    let bad =
        |line: usize, reason: String| HellaswagPrepError::BadLine { path: path.display().to_string(), line, reason };
    if !lines.len().is_multiple_of(LINES_PER_TASK) {
        let start = lines.len() - lines.len() % LINES_PER_TASK;
        return Err(bad(
            start + 1,
            format!(
                "the file has {} lines, not a multiple of {LINES_PER_TASK} (llama.cpp layout: context, label, 4 endings); \
                 the task starting here has only {} of its {LINES_PER_TASK} lines",
                lines.len(),
                lines.len() - start
            ),
        ));
    }
    let mut tasks = Vec::with_capacity(lines.len() / LINES_PER_TASK);
    for (k, chunk) in lines.chunks_exact(LINES_PER_TASK).enumerate() {
        let first = k * LINES_PER_TASK + 1;
        let label = parse_label(chunk[1]).map_err(|r| bad(first + 1, r))?;
        let endings: [String; NUM_COMPLETIONS] = std::array::from_fn(|i| chunk[2 + i].to_string());
        let task = Task { context: chunk[0].to_string(), endings, label };
        if let Err(reason) = check_task(&task) {
            let line = if task.context.is_empty() {
                first
            } else {
                first + 2 + task.endings.iter().position(String::is_empty).unwrap_or(0)
            };
            return Err(bad(line, reason));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// The Hugging Face parquet conversion. Row numbers in errors are 0-based, as the dataset viewer shows them.
pub fn read_parquet(path: &Path, columns: &Columns) -> Result<Vec<Task>, HellaswagPrepError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;

    let p = || path.display().to_string();
    let file = File::open(path).map_err(|e| HellaswagPrepError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|source| HellaswagPrepError::Parquet { path: p(), source })?;
    let schema = builder.schema().clone();
    let wanted = [&columns.context, &columns.endings, &columns.label];
    let mut roots = Vec::new();
    for name in wanted {
        match schema.index_of(name) {
            Ok(i) => roots.push(i),
            Err(_) => {
                let available = schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
                return Err(HellaswagPrepError::MissingColumn { path: p(), column: name.clone(), available });
            }
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader =
        builder.with_projection(mask).build().map_err(|source| HellaswagPrepError::Parquet { path: p(), source })?;

    let utf8_list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let mut tasks = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| HellaswagPrepError::Arrow { path: p(), source })?;
        let column = |name: &String, to: &DataType, expected: &'static str| -> Result<ArrayRef, HellaswagPrepError> {
            let col = batch.column_by_name(name).expect("projected column is present");
            arrow::compute::cast(col, to).map_err(|_| HellaswagPrepError::ColumnType {
                path: p(),
                column: name.clone(),
                found: col.data_type().to_string(),
                expected,
            })
        };
        // Casting normalises the physical variants writers pick (LargeUtf8, Utf8View, integer labels).
        let contexts = column(&columns.context, &DataType::Utf8, "string")?;
        let contexts = contexts.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let labels = column(&columns.label, &DataType::Utf8, "string or integer")?;
        let labels = labels.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let ending_lists = column(&columns.endings, &utf8_list, "list<string>")?;
        let ending_lists = ending_lists.as_any().downcast_ref::<ListArray>().expect("cast to List<Utf8>");
        for r in 0..batch.num_rows() {
            let row = tasks.len();
            let bad = |reason: String| HellaswagPrepError::BadRow { path: p(), row, reason };
            if contexts.is_null(r) {
                return Err(bad(format!("`{}` is null", columns.context)));
            }
            if ending_lists.is_null(r) {
                return Err(bad(format!("`{}` is null", columns.endings)));
            }
            let list = ending_lists.value(r);
            let list = list.as_any().downcast_ref::<StringArray>().expect("cast to List<Utf8>");
            let endings = four_endings((0..list.len()).map(|i| (!list.is_null(i)).then(|| list.value(i).to_string())))
                .map_err(|reason| bad(format!("`{}`: {reason}", columns.endings)))?;
            let label = parse_label(if labels.is_null(r) { "" } else { labels.value(r) }).map_err(&bad)?;
            let task = Task { context: contexts.value(r).to_string(), endings, label };
            check_task(&task).map_err(&bad)?;
            tasks.push(task);
        }
    }
    Ok(tasks)
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizing

/// build-nanogpt's `render_example`, minus the padding (that is [`Example::rows`]): the context encoded as is (after
/// the tokens a document starts with, `Tokenizer::document_prefix`: none for GPT-2), each ending encoded with a
/// leading space so that its first word gets GPT-2's space-prefixed token.
pub fn tokenize_task(task: &Task, index: usize, tokenizer: &Tokenizer) -> Result<Example, TokenizerError> {
    let mut context = tokenizer.document_prefix().to_vec();
    context.extend(tokenizer.encode(&task.context)?);
    let endings = [0, 1, 2, 3].map(|i| tokenizer.encode(&format!(" {}", task.endings[i])));
    let [a, b, c, d] = endings;
    Ok(Example { index, label: task.label, context, endings: [a?, b?, c?, d?] })
}

/// Tokenize all tasks in parallel; examples keep the tasks' order and are indexed by position.
pub fn tokenize_tasks(tasks: &[Task], tokenizer: &Tokenizer) -> Result<Vec<Example>, TokenizerError> {
    tasks.par_iter().enumerate().map(|(i, t)| tokenize_task(t, i, tokenizer)).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The whole prep

/// Where the tasks come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// Local files, read in the given order. `format` overrides each file's extension.
    Files { paths: Vec<PathBuf>, format: Option<SourceFormat> },
    /// The hub source of the pipeline file.
    Hub,
}

/// A resolved `prep hellaswag` run.
#[derive(Clone, Debug)]
pub struct PrepConfig {
    pub pipeline: HellaswagPipeline,
    pub input: Input,
    /// Output directory (the pipeline's `[output] dir` unless overridden).
    pub out_dir: PathBuf,
    /// Keep only the first N tasks (smoke runs); None keeps all.
    pub limit: Option<usize>,
    /// `--tokenizer`, instead of the pipeline's (the model's own, e.g. a shard directory's tokenizer.json).
    pub tokenizer: Option<TokenizerSource>,
    /// Replace an existing eval file that differs from the one this run writes (`--overwrite`). Without it such a file
    /// is refused; one with the same bytes is left as it is. A file that is not an eval file is never replaced.
    pub overwrite: bool,
}

/// What a prep run wrote.
#[derive(Clone, Debug)]
pub struct PrepSummary {
    pub sources: Vec<(PathBuf, SourceFormat, usize)>,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub examples: usize,
    pub label_counts: [usize; NUM_COMPLETIONS],
    pub context_tokens: usize,
    pub ending_tokens: usize,
    pub longest_example_bytes: usize,
    /// The longest context + ending, in tokens: the context length a model needs to score every example.
    pub longest_row_tokens: usize,
}

impl fmt::Display for PrepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, format, n) in &self.sources {
            writeln!(f, "read {n} tasks from {} ({format})", path.display())?;
        }
        let [l0, l1, l2, l3] = self.label_counts;
        writeln!(f, "examples: {}   labels 0: {l0}, 1: {l1}, 2: {l2}, 3: {l3}", self.examples)?;
        writeln!(
            f,
            "tokens: {} context + {} ending = {}",
            self.context_tokens,
            self.ending_tokens,
            self.context_tokens + self.ending_tokens
        )?;
        writeln!(
            f,
            "longest example: {} bytes; longest context + ending: {} tokens",
            self.longest_example_bytes, self.longest_row_tokens
        )?;
        write!(f, "wrote {} ({} bytes)", self.path.display(), self.file_bytes)
    }
}

/// Download the pipeline's hub source (cached, verified) and return the local paths, in repo path order: the files
/// of the first location that has any .parquet, .jsonl or .txt file.
pub fn fetch_hub_source(client: &HubClient, source: &HubSource) -> Result<Vec<PathBuf>, HellaswagPrepError> {
    for loc in &source.locations {
        let listed = match client.list_dataset_files(&source.repo, &loc.revision, &loc.prefix) {
            Ok(files) => files,
            // Nothing under this prefix: the next location may have it (a repo not converted to parquet on `main`).
            Err(HubError::NoFiles { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut files: Vec<RemoteFile> =
            listed.into_iter().filter(|f| SourceFormat::from_path(Path::new(&f.path)).is_some()).collect();
        if files.is_empty() {
            continue;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        tracing::info!(
            "hellaswag: {} file(s) from {} at {}: {}",
            files.len(),
            source.repo,
            loc.revision,
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", ")
        );
        return files
            .iter()
            .map(|f| client.download_dataset_file(&source.repo, f).map_err(HellaswagPrepError::from))
            .collect();
    }
    let tried =
        source.locations.iter().map(|l| format!("`{}` at {}", l.prefix, l.revision)).collect::<Vec<_>>().join(", ");
    Err(HellaswagPrepError::NoHubFiles { repo: source.repo.clone(), tried })
}

/// Read, tokenize and write: the library side of `tokenmill prep hellaswag`.
pub fn prep(config: &PrepConfig) -> Result<PrepSummary, HellaswagPrepError> {
    let (paths, format) = match &config.input {
        Input::Files { paths, format } => (paths.clone(), *format),
        Input::Hub => (fetch_hub_source(&HubClient::from_env()?, &config.pipeline.source)?, None),
    };
    let mut tasks = Vec::new();
    let mut sources = Vec::new();
    for path in &paths {
        let fmt = format.or_else(|| SourceFormat::from_path(path));
        let read = read_tasks(path, fmt, &config.pipeline.columns)?;
        sources.push((path.clone(), fmt.expect("read_tasks rejects unknown layouts"), read.len()));
        tasks.extend(read);
    }
    if let Some(limit) = config.limit {
        tasks.truncate(limit);
    }
    if tasks.is_empty() {
        let path = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(HellaswagPrepError::Empty { path });
    }

    let tokenizer = config.tokenizer.as_ref().unwrap_or(&config.pipeline.tokenizer).load()?;
    if tokenizer.vocab_size() > hellaswag_file::START_EXAMPLE as u32 {
        return Err(HellaswagPrepError::Tokenizer(tokenizer.describe()));
    }
    let examples = tokenize_tasks(&tasks, &tokenizer)?;

    let file_tokenizer = FileTokenizer { id: tokenizer.id(), vocab_size: tokenizer.vocab_size() };
    let bytes = hellaswag_file::encode_for(&examples, &file_tokenizer)?;
    let path = config.out_dir.join(&config.pipeline.output.file);
    // The one rule for outputs (`crate::output`): a plain path, never through a link, never a folder; what may be
    // replaced there is decided below (an eval file: the same bytes, or another with --overwrite).
    crate::output::check_dir_path(&config.out_dir)?;
    crate::output::check_file(&path, "an eval file", |_| true)?;
    if path.exists() {
        let p = || path.display().to_string();
        let old = std::fs::read(&path).ok();
        if old.as_deref() != Some(&bytes[..]) {
            let old = old.and_then(|b| HellaswagFile::from_bytes(&b, &path).ok());
            match (old, config.overwrite) {
                (None, _) => return Err(HellaswagPrepError::NotAnEvalFile { path: p() }),
                (Some(f), false) => {
                    return Err(HellaswagPrepError::Exists { path: p(), old: f.len(), new: examples.len() })
                }
                (Some(_), true) => {}
            }
        }
    }
    std::fs::create_dir_all(&config.out_dir).map_err(|e| HellaswagPrepError::io(&config.out_dir, e))?;
    crate::util::write_atomic(&path, &bytes).map_err(|e| HellaswagPrepError::io(&path, e))?;
    Ok(summarize(sources, path, bytes.len() as u64, &examples))
}

fn summarize(
    sources: Vec<(PathBuf, SourceFormat, usize)>,
    path: PathBuf,
    file_bytes: u64,
    examples: &[Example],
) -> PrepSummary {
    PrepSummary {
        sources,
        path,
        file_bytes,
        examples: examples.len(),
        label_counts: hellaswag_file::label_counts(examples),
        context_tokens: examples.iter().map(|e| e.context.len()).sum(),
        ending_tokens: examples.iter().flat_map(|e| e.endings.iter()).map(Vec::len).sum(),
        longest_example_bytes: examples.iter().map(Example::encoded_bytes).max().unwrap_or(0),
        longest_row_tokens: examples.iter().map(Example::row_len).max().unwrap_or(0),
    }
}

/// How many tasks have each label (HellaSwag val: 0: 2515, 1: 2485, 2: 2584, 3: 2458).
pub fn task_label_counts(tasks: &[Task]) -> [usize; NUM_COMPLETIONS] {
    let mut counts = [0; NUM_COMPLETIONS];
    for t in tasks {
        counts[t.label] += 1;
    }
    counts
}
