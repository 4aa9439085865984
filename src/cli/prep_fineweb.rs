//! `tokenmill prep fineweb`: a corpus (hub parquet, or local parquet/jsonl/txt) -> token shards + manifest.json.
//! Defaults come from a pipeline definition (pipelines/fineweb-edu.toml unless --pipeline); flags override fields.

use std::path::PathBuf;

use anyhow::Context;

use crate::pipelines::fineweb::{self, Input, PrepOptions, PrepReport};
use crate::pipelines::spec::PipelineSpec;
use crate::pipelines::workers::WorkerId;
use crate::tokenizer::{Tokenizer, TokenizerSource};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pipeline definition giving the defaults (default: pipelines/fineweb-edu.toml, built in).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Local input files or directories (parquet, jsonl, txt), instead of the hub.
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Hugging Face dataset repo (HF_ENDPOINT, HF_HOME, HF_TOKEN are honoured).
    #[arg(long)]
    pub repo: Option<String>,
    /// Subset of the repo (e.g. sample-10BT); mapped to a folder by the pipeline's [source.subsets].
    #[arg(long)]
    pub subset: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    /// Shard file name prefix.
    #[arg(long)]
    pub dataset: Option<String>,
    #[command(flatten)]
    pub shards: ShardArgs,
}

/// What both `prep fineweb` and `prep corpus` take about reading documents and writing shards.
#[derive(clap::Args, Debug, Clone)]
pub struct ShardArgs {
    /// Column (parquet) or field (jsonl) holding the document text.
    #[arg(long)]
    pub text_column: Option<String>,
    /// gpt2 (u16 shards), cl100k_base or o200k_base (u32 shards), or a model's own: a tokenizer.json (or a folder
    /// holding one, with its tokenizer_config.json), or hf:OWNER/NAME from the hub. Shards are u16 when its vocabulary
    /// fits, else u32; its files are copied beside them.
    #[arg(long, value_name = "NAME|PATH|hf:REPO")]
    pub tokenizer: Option<TokenizerSource>,
    /// Tokens per shard.
    #[arg(long)]
    pub shard_size: Option<u64>,
    /// How many of the first shards are `val`.
    #[arg(long)]
    pub val_shards: Option<usize>,
    /// Stop after N shards in total (val included).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tokenizer threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Delete the dataset --out already holds (its manifest and the shards it lists) and start over. Without it, an
    /// existing directory is resumed, and refused if it was prepared from other inputs or settings.
    #[arg(long)]
    pub overwrite: bool,
    /// Run as worker I of N (0-based): tokenize the I-th of N contiguous ranges of the sorted input files into
    /// OUT/workers/IIIII-of-NNNNN/; `tokenmill prep merge OUT` then writes the dataset. Without it,
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with --workers, choose the worker.
    #[arg(long, value_name = "I/N")]
    pub worker: Option<WorkerId>,
    /// The worker count, for a worker index taken from the environment (Kubernetes' JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

impl ShardArgs {
    /// `--tokenizer`, else `default`, loaded.
    pub fn load_tokenizer(&self, default: TokenizerSource) -> anyhow::Result<Tokenizer> {
        let source = self.tokenizer.clone().unwrap_or(default);
        source.load().with_context(|| format!("loading the tokenizer {source}"))
    }

    /// The worker this process is: `--worker`, else the scheduler's environment (see `WorkerId::resolve`).
    pub fn worker(&self) -> anyhow::Result<Option<WorkerId>> {
        WorkerId::resolve(self.worker, self.workers, |k| std::env::var(k).ok()).map_err(anyhow::Error::msg)
    }
}

/// Resolve the pipeline definition and flags into the options of one prep run.
pub fn resolve(args: &Args) -> anyhow::Result<PrepOptions> {
    let (spec, origin) = match &args.pipeline {
        Some(p) => (PipelineSpec::load(p)?, p.display().to_string()),
        None => (PipelineSpec::fineweb_edu_default()?, "pipelines/fineweb-edu.toml".to_string()),
    };
    let mut spec = spec;
    if let Some(r) = &args.repo {
        spec.source.repo = Some(r.clone());
    }
    if let Some(s) = &args.subset {
        spec.source.subset = Some(s.clone());
    }
    if let Some(r) = &args.revision {
        spec.source.revision = r.clone();
    }
    let input = if !args.input.is_empty() {
        fineweb::local_input(&args.input)?
    } else if !spec.source.files.is_empty() {
        fineweb::local_input(&spec.source.files).with_context(|| format!("files listed in {origin}"))?
    } else {
        let repo =
            spec.source.repo.clone().with_context(|| format!("{origin}: no [source] repo or files, and no --input"))?;
        Input::Hub { repo, revision: spec.source.revision.clone(), prefix: spec.subset_prefix(&origin)? }
    };
    let a = &args.shards;
    Ok(PrepOptions {
        input,
        text_column: a.text_column.clone().unwrap_or(spec.source.text_column),
        out: a.out.clone().unwrap_or(spec.shards.out),
        dataset: args.dataset.clone().unwrap_or(spec.dataset.name),
        tokenizer: a.load_tokenizer(spec.tokenize.tokenizer)?,
        shard_size: a.shard_size.unwrap_or(spec.shards.shard_size),
        val_shards: a.val_shards.unwrap_or(spec.shards.val_shards),
        max_shards: a.shards,
        threads: a.threads,
        progress: !a.no_progress,
        overwrite: a.overwrite,
        worker: a.worker()?,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    prep_and_report(&resolve(&args)?)
}

/// Run one prep and print what it did (shared with `prep corpus`).
pub fn prep_and_report(opts: &PrepOptions) -> anyhow::Result<()> {
    let source = match &opts.input {
        Input::Local(files) => format!("{} local file(s)", files.len()),
        Input::Hub { repo, revision, prefix } => format!("hub {repo}@{revision}/{prefix}"),
    };
    let worker = match opts.worker {
        Some(w) => format!("worker {w} of "),
        None => String::new(),
    };
    eprintln!(
        "prep: {worker}{source} -> {} ({} tokenizer, {} tokens/shard, {} val shard(s){})",
        opts.out.display(),
        opts.tokenizer.describe(),
        opts.shard_size,
        opts.val_shards,
        opts.max_shards.map(|n| format!(", stop after {n} shards")).unwrap_or_default()
    );
    let report = fineweb::prep(opts)?;
    print_report(opts, &report);
    Ok(())
}

/// 338025 -> "338K", 4.1e6 -> "4.10M": three significant figures (a short run is not "0.00M").
fn si(x: f64) -> String {
    let (v, unit) = match x {
        x if x >= 1e9 => (x / 1e9, "G"),
        x if x >= 1e6 => (x / 1e6, "M"),
        x if x >= 1e3 => (x / 1e3, "K"),
        x => (x, ""),
    };
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$}{unit}")
}

pub fn print_report(opts: &PrepOptions, r: &PrepReport) {
    let m = &r.manifest;
    let dir = r.dir.display();
    if let Some(why) = &r.skipped {
        println!("{dir}: {why}");
        return;
    }
    if r.documents_read == 0 && r.shards_before == m.shards.len() {
        println!(
            "{dir}: nothing to do, {} {} already written{}",
            m.shards.len(),
            if opts.worker.is_some() { "part(s)" } else { "shard(s)" },
            if m.complete { " (input complete)" } else { "" }
        );
    } else {
        println!(
            "{dir}: {} document(s), {} tokens in {:.2}s ({} tokens/s){}",
            r.documents_read,
            r.tokens_written,
            r.seconds,
            si(r.tokens_per_second()),
            if r.shards_before > 0 { format!(", resumed after {} shard(s)", r.shards_before) } else { String::new() }
        );
    }
    for s in &m.shards {
        println!("  {:<40} {:>5} {:>12} tokens  xxh3 {}", s.file, s.split.name(), s.tokens, s.xxh3);
    }
    if let Some(w) = opts.worker {
        let total: u64 = m.shards.iter().map(|s| s.tokens).sum();
        let state = if m.complete {
            "finished (input complete)"
        } else if opts.max_shards.is_some_and(|k| m.shards.len() >= k) {
            "finished (--shards limit)"
        } else {
            "unfinished"
        };
        println!(
            "  worker {w}: {state}, {} part(s), {total} tokens; when every worker has finished: tokenmill prep merge {}",
            m.shards.len(),
            opts.out.display()
        );
        return;
    }
    let (train, val) = (m.tokens_in(crate::shards::Split::Train), m.tokens_in(crate::shards::Split::Val));
    println!(
        "  total: train {train} tokens, val {val} tokens; manifest {}",
        crate::shards::Manifest::path_in(&r.dir).display()
    );
    if m.complete && train == 0 {
        // The advice `train` gives too: it depends on what made the split empty, not on which command made it.
        let why = m.empty_train_because_of_val_shards(&r.dir).unwrap_or_else(|| {
            crate::shards::loader::empty_split_message(
                &r.dir.display().to_string(),
                crate::shards::Split::Train,
                m.shards.len(),
                m.shard_size,
                val,
            )
        });
        eprintln!("warning: {why}");
    }
}
