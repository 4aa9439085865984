//! `tokenmill report LOGDIR`: plot a run's log.txt (train/val loss, HellaSwag) against the GPT-2 124M baselines.

use std::path::PathBuf;

use crate::train::report::{write_report, GPT2_124M_HELLASWAG, GPT2_124M_VAL_LOSS};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run's log directory (holding log.txt).
    pub log_dir: PathBuf,
    /// Output SVG [default: LOGDIR/report.svg].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (series, opts, out) = write_report(&args.log_dir, args.out.as_deref())?;
    let last = |s: &[(usize, f64)]| s.last().map(|&(step, v)| format!("{v:.4} at step {step}"));
    let min = |s: &[(usize, f64)]| {
        s.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).map(|(step, v)| format!("{v:.4} at step {step}"))
    };
    let max = |s: &[(usize, f64)]| {
        s.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(step, v)| format!("{v:.4} at step {step}"))
    };
    let none = || "-".to_string();
    println!("train loss (last): {}", last(&series.train).unwrap_or_else(none));
    let baseline = if opts.val_baseline {
        format!(" (GPT-2 124M: {GPT2_124M_VAL_LOSS})")
    } else {
        " (no GPT-2 124M baseline: it is FineWeb-Edu val loss, and this run's data is not FineWeb-Edu or unknown)"
            .into()
    };
    println!("val loss (min):    {}{baseline}", min(&series.val).unwrap_or_else(none));
    println!("hellaswag (max):   {} (GPT-2 124M: {GPT2_124M_HELLASWAG})", max(&series.hella).unwrap_or_else(none));
    println!("wrote {}", out.display());
    Ok(())
}
