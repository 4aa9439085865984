//! `tokenmill train`: resolve the config (defaults < --config < flags, or the checkpoint's config when resuming
//! without --config), print it, and run `train::Trainer`.
//!
//! ```text
//! tokenmill train --config configs/tiny-cpu.toml --data shards/tinyshakespeare
//! tokenmill train --config configs/gpt2-124m.toml --data shards/edu_fineweb10B --device cuda
//! tokenmill train --data shards/tinyshakespeare --log-dir log/tiny --resume          # latest checkpoint
//! tokenmill train --resume log/tiny/checkpoints/step_000200 --set eval.val_every=50
//! ```

use std::path::PathBuf;

use anyhow::Context;

use crate::train::checkpoint;
use crate::train::{Resume, TrainConfig, Trainer, TrainerOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training config (configs/*.toml). Without it: the GPT-2 124M defaults, or the checkpoint's config on --resume.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The directory `tokenmill prep` wrote (its manifest.json names the train and val shards).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Length of the run, and of the lr schedule (optim.max_steps).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Where log.txt, metrics.jsonl, config.toml and (by default) checkpoints/ go [config default: log].
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Continue a run exactly: from the latest checkpoint under the checkpoint directory, or from CHECKPOINT.
    #[arg(long, value_name = "CHECKPOINT", num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype: fp32, bf16 or auto (bf16 on CUDA). Weights and optimizer state stay fp32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Stop after this many optimizer steps (with a checkpoint) without shortening the lr schedule.
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<usize>,
    /// Any other setting as SECTION.KEY=VALUE (TOML value), e.g. --set optim.max_lr=3e-4. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl Args {
    /// The dedicated flags as overrides, then the --set ones (which therefore win).
    fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string()).to_string();
        if let Some(d) = &self.data {
            o.push(format!("data.dir={}", path(d)));
        }
        if let Some(n) = self.max_steps {
            o.push(format!("optim.max_steps={n}"));
        }
        if let Some(d) = &self.log_dir {
            o.push(format!("run.log_dir={}", path(d)));
        }
        if let Some(d) = &self.device {
            o.push(format!("run.device={}", toml::Value::String(d.clone())));
        }
        if let Some(d) = &self.dtype {
            o.push(format!("run.dtype={}", toml::Value::String(d.clone())));
        }
        o.extend(self.set.iter().cloned());
        o
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("latest") => Resume::Latest,
        Some(p) => Resume::From(PathBuf::from(p)),
    };
    let cfg = match (&resume, &args.config) {
        (Resume::No, _) | (_, Some(_)) => TrainConfig::resolve(args.config.as_deref(), &overrides)?,
        (_, None) => {
            // Resuming without a config file: the checkpoint's own config, changed only by the flags given now.
            let dir = match &resume {
                Resume::From(p) => p.clone(),
                _ => checkpoint::latest(&TrainConfig::resolve(None, &overrides)?.checkpoint_dir())?,
            };
            let state = checkpoint::load_state(&dir)?;
            let origin = format!("{}/{}", dir.display(), checkpoint::STATE_FILE);
            let cfg = TrainConfig::resolve_over(&state.config, &origin, None, &overrides)?;
            println!("resuming with the config saved in {origin}");
            cfg
        }
    };
    println!("# resolved config\n{}", cfg.to_toml());

    let mut trainer = Trainer::new(cfg, TrainerOptions { resume, echo: true, ..Default::default() })
        .context("setting up training")?;
    trainer.run(args.stop_after).context("training")?;
    println!("done: {} steps; logs in {}", trainer.step(), trainer.config().run.log_dir.display());
    Ok(())
}
