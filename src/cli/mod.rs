//! The `tokenmill` command line: a thin clap layer. Each subcommand lives in its own module with an `Args` struct
//! (parsed flags) and `run(args)`, which resolves a typed config and calls into the library.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod eval;
pub mod export;
pub mod launch;
pub mod prep_corpus;
pub mod prep_fineweb;
pub mod prep_hellaswag;
pub mod prep_merge;
pub mod quickstart;
pub mod report;
pub mod sample;
pub mod train;
pub mod verify;

#[derive(Parser, Debug)]
#[command(
    name = "tokenmill",
    version,
    about = "GPT-2 data pipeline and trainer: prep shards, train, evaluate, benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process and matched once in `run`: the size difference between variants costs nothing, and
// boxing them would only add a deref to every handler.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Turn a corpus into token shards, or an eval set into an eval file.
    #[command(subcommand)]
    Prep(PrepCommand),
    /// Train a model on prepared shards.
    Train(train::Args),
    /// Spawn one training process per GPU (like torchrun).
    Launch(launch::Args),
    /// Generate text from a checkpoint or pretrained GPT-2.
    Sample(sample::Args),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Time forward / backward / optimizer / full train step.
    Bench(bench::Args),
    /// Export a checkpoint.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Plot a training log against the GPT-2 baselines.
    Report(report::Args),
    /// Check a shard directory or a checkpoint against its checksums and say what is damaged.
    Verify(verify::Args),
    /// The README's main job on the bundled sample: prep tiny Shakespeare, train a tiny model on CPU, sample.
    Quickstart(quickstart::Args),
}

#[derive(Subcommand, Debug)]
pub enum PrepCommand {
    /// FineWeb-Edu from the hub (the preset: 100M-token shards named edufineweb_*) -> token shards + manifest.json.
    Fineweb(prep_fineweb::Args),
    /// Any local corpus (parquet, jsonl, txt) -> shards named after it, sized to it (~10 shards, the first val).
    Corpus(prep_corpus::Args),
    /// HellaSwag -> llm.c's HellaSwag eval .bin.
    Hellaswag(prep_hellaswag::Args),
    /// The finished workers of a `--worker I/N` prep -> the shards and manifest of a one-box prep, byte for byte.
    Merge(prep_merge::Args),
}

/// A `--model` value as the loader should see it: a run's log directory or a checkpoints directory means its latest
/// checkpoint (`train::checkpoint::resolve`); anything else (hub names, HF folders, files) is kept. A tokenmill
/// checkpoint's model file is checked against its state.json first, so a damaged one is named, not loaded.
pub fn model_arg(spec: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(spec);
    if !path.is_dir() {
        return Ok(spec.to_string());
    }
    let dir = crate::train::checkpoint::resolve(path)?;
    if dir.join(crate::train::checkpoint::STATE_FILE).is_file() {
        let state = crate::train::checkpoint::load_state(&dir)?;
        crate::train::checkpoint::verify_file(&dir, &state, crate::train::checkpoint::MODEL_FILE)?;
    }
    Ok(dir.display().to_string())
}

/// An error as one line per cause, for `main`: each cause that its wrapper's message does not already quote (library
/// errors name their cause in their own text, so anyhow's `{:#}` would print it twice: "X: Y: Y").
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

/// A command that ended early on purpose (a stop signal) rather than failing: `main` prints `message` (if any) as is
/// and exits with `code`.
#[derive(Debug)]
pub struct Interrupted {
    pub message: String,
    pub code: u8,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Prep(PrepCommand::Fineweb(a)) => prep_fineweb::run(a),
        Command::Prep(PrepCommand::Corpus(a)) => prep_corpus::run(a),
        Command::Prep(PrepCommand::Hellaswag(a)) => prep_hellaswag::run(a),
        Command::Prep(PrepCommand::Merge(a)) => prep_merge::run(a),
        Command::Train(a) => train::run(a),
        Command::Launch(a) => launch::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Eval(c) => eval::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Export(c) => export::run(c),
        Command::Report(a) => report::run(a),
        Command::Quickstart(a) => quickstart::run(a),
        Command::Verify(a) => verify::run(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn torchrun_spellings_and_train_seed_parse() {
        let cli = super::Cli::try_parse_from([
            "tokenmill",
            "launch",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29501",
            "--",
            "train",
        ])
        .unwrap();
        let super::Command::Launch(a) = cli.command else { panic!("not launch") };
        assert_eq!((a.nproc_per_node, a.master_port), (2, 29501));
        let cli = super::Cli::try_parse_from(["tokenmill", "train", "--seed", "5"]).unwrap();
        let super::Command::Train(a) = cli.command else { panic!("not train") };
        assert!(a.overrides().unwrap().contains(&"run.seed=5".to_string()));
    }

    #[test]
    fn render_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let config = crate::train::config::ConfigError::Io { path: "/x.toml".into(), source: io };
        let e = anyhow::Error::new(config).context("setting up training");
        assert_eq!(super::render_error(&e), "setting up training: /x.toml: No such file or directory (os error 2)");
    }
}
