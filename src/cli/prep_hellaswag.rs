//! `tokenmill prep hellaswag`: HellaSwag (hub parquet/jsonl, or a local jsonl / parquet / llama.cpp text file) ->
//! llm.c's HellaSwag eval file. Defaults come from `pipelines/hellaswag.toml`; flags override them.
//!
//! ```text
//! tokenmill prep hellaswag                                   # Rowan/hellaswag validation from the hub
//! tokenmill prep hellaswag --input hellaswag_val.jsonl       # rowanz's original file
//! tokenmill prep hellaswag --input ../shared/data/hellaswag_val_full.txt --out /tmp/hs
//! tokenmill prep hellaswag --tokenizer shards/mycorpus/tokenizer.json --out shards/hellaswag-smollm2
//! ```

use std::path::PathBuf;

use crate::pipelines::hellaswag::{self, HellaswagPipeline, HubLocation, Input, PrepConfig, SourceFormat};
use crate::tokenizer::TokenizerSource;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Local source file(s) instead of the hub: .jsonl (rowanz's original), .parquet (Rowan/hellaswag) or .txt
    /// (llama.cpp's 6-lines-per-task layout). Repeat to concatenate, in order.
    #[arg(long = "input", value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// Layout of the --input files when their extension does not say it: jsonl, parquet or txt.
    #[arg(long, value_name = "LAYOUT")]
    pub format: Option<SourceFormat>,
    /// Output directory [default: the pipeline's, shards/hellaswag].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Pipeline file [default: pipelines/hellaswag.toml, else the copy built into the binary].
    #[arg(long, value_name = "TOML")]
    pub pipeline: Option<PathBuf>,
    /// Hub dataset repo to read instead of the pipeline's.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
    /// Hub revision (branch, tag or commit); with --prefix, replaces the pipeline's list of locations.
    #[arg(long)]
    pub revision: Option<String>,
    /// Path prefix of the split's files inside the hub repo.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Keep only the first N tasks (smoke runs).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The model's tokenizer instead of the pipeline's gpt2: a tokenizer.json (e.g. the copy in the shard directory
    /// the model trains on), a folder holding one, or hf:OWNER/NAME; at most 65535 ids (the file is u16).
    #[arg(long, value_name = "PATH|hf:REPO")]
    pub tokenizer: Option<TokenizerSource>,
    /// Replace an eval file already in --out that differs from this run's (without it, such a file is refused).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = resolve(args)?;
    let summary = hellaswag::prep(&config)?;
    println!("{summary}");
    Ok(())
}

/// Flags over the pipeline file: one typed config.
fn resolve(args: Args) -> anyhow::Result<PrepConfig> {
    let mut pipeline = match &args.pipeline {
        Some(path) => HellaswagPipeline::load(path)?,
        None => HellaswagPipeline::load_default()?,
    };
    let hub_flags = args.repo.is_some() || args.revision.is_some() || args.prefix.is_some();
    if !args.inputs.is_empty() && hub_flags {
        anyhow::bail!("--input reads local files; --repo/--revision/--prefix select hub files: use one or the other");
    }
    if args.format.is_some() && args.inputs.is_empty() {
        anyhow::bail!("--format applies to --input files (hub files are recognised by their extension)");
    }
    if let Some(repo) = args.repo {
        pipeline.source.repo = repo;
    }
    if args.revision.is_some() || args.prefix.is_some() {
        // One explicit location; the part not given keeps the pipeline's first location's value.
        let first = pipeline.source.locations[0].clone();
        pipeline.source.locations = vec![HubLocation {
            revision: args.revision.unwrap_or(first.revision),
            prefix: args.prefix.unwrap_or(first.prefix),
        }];
    }
    let input =
        if args.inputs.is_empty() { Input::Hub } else { Input::Files { paths: args.inputs, format: args.format } };
    let out_dir = args.out.unwrap_or_else(|| pipeline.output.dir.clone());
    Ok(PrepConfig { pipeline, input, out_dir, limit: args.limit, tokenizer: args.tokenizer, overwrite: args.overwrite })
}
