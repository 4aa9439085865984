//! `tokenmill quickstart`: the README's main job, on the bundled sample, offline, on CPU.
//! 1. `prep fineweb --pipeline pipelines/tinyshakespeare.toml` (data/tinyshakespeare.txt -> GPT-2 shards + manifest),
//! 2. `train --config configs/tiny-cpu.toml` (a tiny GPT-2, a few minutes on 2 cores, val loss printed as it falls),
//! 3. `sample` from the final checkpoint.
//!
//! Every step is the real subcommand with its arguments, so what the quickstart shows is what users run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline definition of the sample corpus.
    #[arg(long, default_value = "pipelines/tinyshakespeare.toml")]
    pub pipeline: PathBuf,
    /// Training config.
    #[arg(long, default_value = "configs/tiny-cpu.toml")]
    pub config: PathBuf,
    /// Where shards go.
    #[arg(long, default_value = "shards/tinyshakespeare")]
    pub data: PathBuf,
    /// Where logs and checkpoints go: a new or empty directory, or a previous run's, which is replaced (only the files
    /// its owner marker proves tokenmill wrote: `train --overwrite`). Any other directory is refused.
    #[arg(long, default_value = "log/quickstart")]
    pub log_dir: PathBuf,
    /// Optimizer steps (default: the config's).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Prompt for the final samples.
    #[arg(long, default_value = "ROMEO:")]
    pub prompt: String,
}

/// Parse a subcommand line exactly as the binary would.
fn sub(args: &[String]) -> anyhow::Result<super::Cli> {
    let mut argv = vec!["tokenmill".to_string()];
    argv.extend(args.iter().cloned());
    Ok(super::Cli::try_parse_from(argv)?)
}

fn step(title: &str, args: Vec<String>) -> anyhow::Result<()> {
    println!("\n==> tokenmill {}\n    ({title})", args.join(" "));
    super::run(sub(&args)?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    for (what, p) in [("pipeline", &args.pipeline), ("config", &args.config)] {
        anyhow::ensure!(p.exists(), "{what} {} not found: run the quickstart from the repository root", p.display());
    }
    // Before anything is done: the log directory must be one a fresh run may take (a previous run's is replaced by
    // `train --overwrite` below, removing only what tokenmill wrote; a directory that is not a run is refused).
    let claim = crate::train::run_dir::Claim::Fresh { overwrite: true };
    // (The error names the directory; the context says which flag it came from, without naming it twice.)
    crate::train::run_dir::check(&args.log_dir, &args.log_dir.join(crate::train::run_dir::CHECKPOINTS_DIR), claim)
        .context("--log-dir")?;
    let s = |p: &PathBuf| p.display().to_string();
    step(
        "tokenize the bundled tiny Shakespeare into GPT-2 shards",
        vec!["prep".into(), "fineweb".into(), "--pipeline".into(), s(&args.pipeline), "--out".into(), s(&args.data)],
    )?;
    let manifest =
        std::fs::read_to_string(args.data.join("manifest.json")).context("reading the manifest prep wrote")?;
    println!("\n{}/manifest.json (first lines):", args.data.display());
    for line in manifest.lines().take(16) {
        println!("    {line}");
    }
    // A fresh run each time: a previous quickstart's run is replaced (its own files only).
    let mut train = vec![
        "train".into(),
        "--overwrite".into(),
        "--config".into(),
        s(&args.config),
        "--data".into(),
        s(&args.data),
        "--log-dir".into(),
        s(&args.log_dir),
        "--device".into(),
        "cpu".into(),
    ];
    if let Some(n) = args.max_steps {
        train.extend(["--max-steps".into(), n.to_string()]);
    }
    step("train a tiny GPT-2 on CPU", train)?;
    let checkpoint =
        crate::train::checkpoint::latest(&args.log_dir.join("checkpoints")).context("finding the final checkpoint")?;
    step(
        "sample from the trained model",
        vec![
            "sample".into(),
            "--model".into(),
            s(&checkpoint),
            "--prompt".into(),
            args.prompt.clone(),
            "--num-samples".into(),
            "3".into(),
            "--max-tokens".into(),
            "48".into(),
        ],
    )?;
    println!(
        "\nquickstart done: shards in {}, logs and checkpoints in {}",
        args.data.display(),
        args.log_dir.display()
    );
    Ok(())
}
