//! `tokenmill prep merge OUT`: the finished workers of a `prep ... --worker I/N` run (under OUT/workers/) -> the shards
//! and manifest a one-box `prep` of the same inputs writes into OUT, byte for byte.
//!
//! ```text
//! tokenmill prep merge shards/fineweb-edu                  # every shard, then manifest.json
//! tokenmill prep merge shards/fineweb-edu --worker 2/4     # shards 2, 6, 10, ... (a merge split over 4 processes)
//! ```

use std::path::PathBuf;

use crate::pipelines::merge::{self, MergeOptions, WorkerState};
use crate::pipelines::workers::WorkerId;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The output directory the workers were given (--out).
    pub out: PathBuf,
    /// Write only shards I, I+N, I+2N, ... (a merge split over N processes); the one that finds every shard in place
    /// writes manifest.json.
    #[arg(long, value_name = "I/N")]
    pub worker: Option<WorkerId>,
    /// Stop after K shards in total [default: the --shards the workers ran with].
    #[arg(long)]
    pub shards: Option<usize>,
    /// No line per shard written.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = MergeOptions {
        out: args.out.clone(),
        split: args.worker,
        max_shards: args.shards,
        progress: !args.no_progress,
    };
    let r = merge::merge(&opts)?;
    let out = args.out.display();
    for (id, state) in &r.workers {
        match state {
            WorkerState::Done { complete, parts, tokens } => println!(
                "  worker {id}: done, {parts} part(s), {tokens} tokens{}",
                if *complete { "" } else { " (stopped at --shards)" }
            ),
            WorkerState::NotNeeded => println!("  worker {id}: not needed (past the dataset's --shards)"),
        }
    }
    let part = args.worker.map(|w| format!(" (merge {w})")).unwrap_or_default();
    println!(
        "{out}: {} of {} shard(s) written{part}, {} already in place, in {:.2}s",
        r.written.len(),
        r.shards_total,
        r.kept,
        r.seconds
    );
    for s in &r.written {
        println!("  {:<40} {:>5} {:>12} tokens  xxh3 {}", s.file, s.split.name(), s.tokens, s.xxh3);
    }
    match &r.manifest {
        Some(m) => println!(
            "  manifest {}: {} shard(s){}",
            crate::shards::Manifest::path_in(&args.out).display(),
            m.shards.len(),
            if m.complete { ", input complete" } else { ", open (--shards limit): re-run the workers to go on" }
        ),
        None => println!("  manifest.json: written once the other merge processes' shards are in place"),
    }
    Ok(())
}
