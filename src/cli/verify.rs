//! `tokenmill verify DIR`: check what another command wrote against its own checksums, and say exactly what is wrong.
//!
//! ```text
//! tokenmill verify shards/tinyshakespeare                   # manifest.json: every listed shard, unlisted files
//! tokenmill verify log/tiny/checkpoints/step_000100         # state.json: model and optimizer files
//! tokenmill verify log/tiny                                 # every checkpoint of a run (or of a checkpoints dir)
//! ```
//! One line per file; exits non-zero when anything is damaged.

use std::path::{Path, PathBuf};

use crate::shards::verify::verify_dir;
use crate::shards::Manifest;
use crate::train::checkpoint::{self, STATE_FILE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A shard directory (manifest.json), a checkpoint (step_NNNNNN with state.json), a checkpoints directory, or a
    /// run's log directory (its checkpoints/).
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.dir;
    let (damaged, checked) = if Manifest::path_in(dir).exists() {
        shard_dir(dir)?
    } else if dir.join(STATE_FILE).exists() {
        one_checkpoint(dir)
    } else {
        // The checkpoints directory itself, or a run's `checkpoints/`: every step folder, complete or not.
        let root = [dir.to_path_buf(), dir.join(checkpoint::CHECKPOINTS_DIR)]
            .into_iter()
            .find(|r| !checkpoint::all(r).is_empty() || !checkpoint::incomplete(r).is_empty());
        let Some(root) = root else {
            anyhow::bail!(
                "{}: nothing to verify: not a shard directory (no manifest.json), a checkpoint (no {STATE_FILE}), or a \
                 directory of step_NNNNNN checkpoints",
                dir.display()
            );
        };
        let found = checkpoint::all(&root);
        let mut totals = found.iter().map(|(_, p)| one_checkpoint(p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        for p in checkpoint::incomplete(&root) {
            // A checkpoint write never leaves a step folder without its state: this one lost it.
            println!("{}:\n  DAMAGED  no {STATE_FILE}: the checkpoint cannot be read or checked", p.display());
            totals = (totals.0 + 1, totals.1 + 1);
        }
        totals
    };
    anyhow::ensure!(damaged == 0, "{}: {damaged} of {checked} file(s) damaged", dir.display());
    println!("{}: all {checked} file(s) match their checksums", dir.display());
    Ok(())
}

/// (damaged, checked) for a shard directory.
fn shard_dir(dir: &Path) -> anyhow::Result<(usize, usize)> {
    let report = verify_dir(dir)?;
    let m = &report.manifest;
    println!(
        "{}: manifest.json: {} tokenizer, {} shard(s), {}",
        dir.display(),
        m.tokenizer.describe(),
        m.shards.len(),
        if m.complete { "complete" } else { "not complete (a prep that stopped or is still running)" }
    );
    for (entry, result) in &report.shards {
        match result {
            Ok(()) => println!("  ok       {} ({} tokens, xxh3 {})", entry.file, entry.tokens, entry.xxh3),
            Err(e) => println!("  DAMAGED  {e}"),
        }
    }
    match &report.tokenizer {
        Some(Ok(())) => println!("  ok       {} (sha256 as recorded)", crate::tokenizer::TOKENIZER_JSON),
        Some(Err(e)) => println!("  DAMAGED  {e}"),
        None => {}
    }
    for name in &report.unlisted {
        println!("  unlisted {name} (not in manifest.json: a leftover of a killed run, or not tokenmill's)");
    }
    Ok((report.damaged(), report.checked()))
}

/// (damaged, checked) for one checkpoint; problems are printed, not returned, so every checkpoint is looked at.
fn one_checkpoint(dir: &Path) -> (usize, usize) {
    let state = match checkpoint::load_state(dir) {
        Ok(s) => s,
        Err(e) => {
            println!("{}:\n  DAMAGED  {e}", dir.display());
            return (1, 1);
        }
    };
    println!("{}: step {}, {STATE_FILE} readable", dir.display(), state.step);
    let results = checkpoint::verify_each(dir, &state);
    if results.is_empty() {
        println!(
            "  note     no checksums recorded (a version-{} checkpoint, written before tokenmill recorded them): nothing \
             to check against",
            state.format_version
        );
    }
    let mut damaged = 0;
    for (file, result) in &results {
        match result {
            Ok(()) => println!("  ok       {file} (xxh3 {})", state.checksums[*file]),
            Err(e) => {
                damaged += 1;
                println!("  DAMAGED  {e}");
            }
        }
    }
    (damaged, 1 + results.len())
}
