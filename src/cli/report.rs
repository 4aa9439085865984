//! `tokenmill report LOGDIR`: plot a run's log.txt (train/val loss, HellaSwag) against the GPT-2 124M baselines.

use std::path::{Path, PathBuf};

use crate::train::log::{Event, METRICS_JSONL};
use crate::train::report::{write_report, GPT2_124M_HELLASWAG, GPT2_124M_VAL_LOSS};

/// The examples in HellaSwag's validation split: what the GPT-2 124M score was measured on.
const HELLASWAG_VAL_EXAMPLES: usize = 10_042;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run's log directory (holding log.txt).
    pub log_dir: PathBuf,
    /// Output SVG [default: LOGDIR/report.svg].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let written = write_report(&args.log_dir, args.out.as_deref())?;
    let (series, opts) = (&written.series, written.opts);
    for note in &written.notes {
        eprintln!("note: {note}");
    }
    let last = |s: &[(usize, f64)]| s.last().map(|&(step, v)| format!("{v:.4} at step {step}"));
    let min = |s: &[(usize, f64)]| {
        s.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).map(|(step, v)| format!("{v:.4} at step {step}"))
    };
    let best_hella = series.hella.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    let none = || "-".to_string();
    println!("train loss (last): {}", last(&series.train).unwrap_or_else(none));
    let baseline = if opts.val_baseline {
        format!(" (GPT-2 124M: {GPT2_124M_VAL_LOSS})")
    } else {
        " (no GPT-2 124M baseline: it is FineWeb-Edu val loss, and this run's data is not FineWeb-Edu or unknown)"
            .into()
    };
    println!("val loss (min):    {}{baseline}", min(&series.val).unwrap_or_else(none));
    let hella = match best_hella {
        Some((step, v)) => {
            // A score over a few examples is not comparable with one over all of them: say how many it was.
            let n = match hellaswag_examples_at(&args.log_dir, step) {
                Some(n) if n < HELLASWAG_VAL_EXAMPLES => {
                    format!("n={n} of {HELLASWAG_VAL_EXAMPLES} examples: not comparable with the full-split score")
                }
                Some(n) => format!("n={n}"),
                None => format!("n unknown: no {METRICS_JSONL} line for it"),
            };
            format!("{v:.4} at step {step} ({n}; GPT-2 124M: {GPT2_124M_HELLASWAG} on all {HELLASWAG_VAL_EXAMPLES})")
        }
        None => format!("- (GPT-2 124M: {GPT2_124M_HELLASWAG})"),
    };
    println!("hellaswag (max):   {hella}");
    println!("wrote {}", written.out.display());
    Ok(())
}

/// How many examples the HellaSwag evaluation at `step` scored, from the run's `metrics.jsonl` (the last record of
/// that step: a resumed run may have logged it twice).
fn hellaswag_examples_at(log_dir: &Path, step: usize) -> Option<usize> {
    let text = std::fs::read_to_string(log_dir.join(METRICS_JSONL)).ok()?;
    text.lines().rev().filter_map(|l| serde_json::from_str::<Event>(l).ok()).find_map(|e| match e {
        Event::Hella { step: s, n, .. } if s == step => Some(n),
        _ => None,
    })
}
