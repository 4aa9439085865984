//! `tokenmill train`: resolve the config (defaults < --config < flags, or the checkpoint's config when resuming
//! without --config), print it, and run `train::Trainer`.
//!
//! ```text
//! tokenmill train --config configs/tiny-cpu.toml --data shards/tinyshakespeare
//! tokenmill train --config configs/gpt2-124m.toml --data shards/edu_fineweb10B --device cuda
//! tokenmill train --data shards/tinyshakespeare --log-dir log/tiny --resume          # latest checkpoint
//! tokenmill train --resume log/tiny/checkpoints/step_000200 --set eval.val_every=50
//! tokenmill train --config configs/tiny-cpu.toml --data shards/tinyshakespeare --save-init   # + step_000000
//! tokenmill train --config configs/tiny-cpu.toml --data shards/mine:0.7,shards/edu:0.3       # a mixture
//! tokenmill train --init hf:HuggingFaceTB/SmolLM2-135M --data shards/corpus --config configs/smol.toml
//! tokenmill launch --nproc-per-node 8 -- train --config configs/gpt2-124m.toml --data shards/edu_fineweb10B
//! ```
//!
//! Data parallel: when RANK / WORLD_SIZE (our launcher, torchrun), SLURM_PROCID / SLURM_NTASKS or mpirun's variables
//! are set, this process joins the job (NCCL on `cuda:LOCAL_RANK`, the tcp backend on CPU) before training; only rank
//! 0 prints the config, logs, samples and checkpoints.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::train::checkpoint;
use crate::train::dist::{self, Communicator, DataParallel, DistEnv, DistTimeouts};
use crate::train::step::{Reducer, SingleProcess};
use crate::train::stop::{self, StopRequest};
use crate::train::{Resume, RunEnd, TrainConfig, Trainer, TrainerOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training config (configs/*.toml). Without it: the GPT-2 124M defaults, or the checkpoint's config on --resume.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The directory `tokenmill prep` wrote (its manifest.json names the train and val shards), or a weighted mixture
    /// of such directories with one tokenizer, DIR:WEIGHT,DIR:WEIGHT (data.mix), e.g. shards/mine:0.7,shards/edu:0.3.
    #[arg(long, value_name = "DIR|DIR:W,DIR:W")]
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
    /// Before the first step, write the initial weights as checkpoint step_000000 (a fresh run only): the exact
    /// starting point a reference implementation loads to train from the same weights
    /// (reference/track_ref.py, scripts/gpu-correctness.sh).
    #[arg(long)]
    pub save_init: bool,
    /// Skip the checksums: of each shard against the manifest when first read, and of a resumed checkpoint's files
    /// against its state.json (token ids are still checked against the vocabulary).
    #[arg(long)]
    pub no_verify: bool,
    /// Do not print the resolved config (it is still saved to LOG_DIR/config.toml and in every checkpoint).
    #[arg(long)]
    pub quiet: bool,
    /// Replace the run LOG_DIR holds: remove what its owner marker (.tokenmill-run) proves tokenmill wrote there
    /// (log.txt, metrics.jsonl, config.toml, report.svg, checkpoints/step_N) and nothing else. Without it a fresh run
    /// into a directory that holds a run is refused.
    #[arg(long)]
    pub overwrite: bool,
    /// Train on a dataset whose prep did not finish (its manifest says complete: false, short of its --shards).
    #[arg(long)]
    pub allow_incomplete_data: bool,
    /// Seed of the initial weights and of the sampling RNG (run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start a fresh run from a Hugging Face model (model.init): hf:ORG/NAME (the hub; its cache when offline) or a
    /// folder with config.json and model.safetensors (or sharded). Its config.json is the model: the config file's
    /// other [model] keys are dropped, --set model.KEY=VALUE still applies.
    #[arg(long, value_name = "hf:REPO|DIR")]
    pub init: Option<String>,
    /// Any other setting as SECTION.KEY=VALUE (TOML value), e.g. --set optim.max_lr=3e-4. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl Args {
    /// The dedicated flags as overrides, then the --set ones (which therefore win).
    pub(crate) fn overrides(&self) -> anyhow::Result<Vec<String>> {
        let mut o = Vec::new();
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string()).to_string();
        if let Some(d) = &self.data {
            match crate::train::config::DataSection::parse_mix(&d.display().to_string())? {
                Some(mix) => {
                    let table: toml::Table = mix.into_iter().map(|(k, w)| (k, toml::Value::Float(w))).collect();
                    o.push(format!("data.mix={}", toml::Value::Table(table)));
                }
                None => o.push(format!("data.dir={}", path(d))),
            }
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
        if let Some(n) = self.seed {
            o.push(format!("run.seed={n}"));
        }
        if let Some(d) = &self.dtype {
            o.push(format!("run.dtype={}", toml::Value::String(d.clone())));
        }
        if let Some(init) = &self.init {
            o.push(format!("model.init={}", toml::Value::String(init.clone())));
        }
        o.extend(self.set.iter().cloned());
        Ok(o)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let job = DistEnv::from_env().context("reading the data-parallel environment")?;
    let rank0 = job.as_ref().is_none_or(|j| j.rank == 0);
    let overrides = args.overrides()?;
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("latest") => Resume::Latest,
        // A run's log directory or a checkpoints directory means its latest checkpoint.
        Some(p) => Resume::From(checkpoint::resolve(std::path::Path::new(p))?),
    };
    if let (Some(init), false) = (&args.init, resume == Resume::No) {
        anyhow::bail!(
            "--init {init} starts a fresh run from that model; a resume starts from its checkpoint (drop one)"
        );
    }
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
            if args.data.is_none() {
                check_recorded_data_dir(&cfg, &origin)?;
            }
            if rank0 {
                println!("resuming with the config saved in {origin}");
            }
            cfg
        }
    };
    let mut cfg = cfg;
    if let (Resume::From(ckpt), None) = (&resume, &args.log_dir) {
        // The run a checkpoint continues is the one whose directory holds it, wherever that directory is now (a copy,
        // a move): not the directory its state.json recorded, which may be another run's.
        if let Some(dir) = checkpoint::run_dir_of(ckpt) {
            if cfg.checkpoint.dir.is_none() {
                cfg.run.log_dir = dir;
            }
        }
    }
    if let Some(j) = &job {
        cfg.run.device = rank_device(&cfg.run.device, j);
        // Fail here, the same way on every rank, rather than after the rendezvous.
        cfg.grad_accum_steps(j.world)?;
    }

    if let Some(stop_after) = args.stop_after {
        // Refused before anything is touched: a stop at or before the step the run starts from trains nothing.
        let state = |dir: &std::path::Path| checkpoint::load_state(dir).map(|s| s.step).ok();
        let at = match &resume {
            Resume::No => Some(0),
            Resume::Latest => checkpoint::latest(&cfg.checkpoint_dir()).ok().and_then(|d| state(&d)),
            Resume::From(p) => state(p),
        };
        if let Some(at) = at.filter(|&at| stop_after <= at) {
            anyhow::bail!(
                "--stop-after {stop_after}: the run is already at step {at}; nothing to train (give a later step)"
            );
        }
    }
    let (reducer, comm): (Box<dyn Reducer>, Option<Arc<dyn Communicator>>) = match &job {
        None => (Box::new(SingleProcess), None),
        Some(j) => {
            let device = cfg.run.device()?;
            let timeouts = DistTimeouts::from_env()?;
            let comm = dist::init(j, &device, timeouts)
                .with_context(|| format!("rank {} joining the data-parallel job at {}", j.rank, j.master()))?;
            println!("{}", dist::setup::describe(j, &*comm));
            (Box::new(DataParallel::new(comm.clone())), Some(comm))
        }
    };

    let stop = StopRequest::new();
    let opts = TrainerOptions {
        resume,
        echo: rank0,
        reducer,
        verify: !args.no_verify,
        stop: stop.clone(),
        overwrite: args.overwrite,
        allow_incomplete_data: args.allow_incomplete_data,
    };
    let mut trainer = Trainer::new(cfg, opts).context("setting up training")?;
    if rank0 && !args.quiet {
        // After setup: a resume has applied or refused every change by now, so this is the config in effect.
        println!("# resolved config\n{}", trainer.config().to_toml());
    }
    if args.save_init {
        if trainer.step() != 0 {
            anyhow::bail!(
                "--save-init writes the step-0 weights of a fresh run, but this run resumes at step {}",
                trainer.step()
            );
        }
        // Saving draws no randomness and moves no loader, so the run that follows is the same as without it.
        trainer.save_checkpoint().context("writing the initial checkpoint (--save-init)")?;
    }
    // From here a first SIGTERM / SIGINT stops after the current step with a checkpoint; a second exits at once.
    stop.on_signals().context("installing the SIGTERM / SIGINT handlers")?;
    let end = trainer.run(args.stop_after).context("training")?;
    if let Some(comm) = &comm {
        comm.shutdown().context("leaving the data-parallel job")?;
    }
    if let RunEnd::Stopped { signal, step, checkpoint } = end {
        let by = signal.map_or("a stop on another rank".to_string(), stop::signal_name);
        let message = match (rank0, checkpoint) {
            (true, Some(dir)) => format!(
                "stopped by {by} after {step} of {} steps; checkpoint {} written. Continue with: tokenmill train \
                 --resume {}",
                trainer.config().optim.max_steps,
                dir.display(),
                dir.display()
            ),
            _ => String::new(),
        };
        return Err(crate::cli::Interrupted { message, code: (128 + signal.unwrap_or(stop::SIGTERM)) as u8 }.into());
    }
    if rank0 {
        println!("done: {} steps; logs in {}", trainer.step(), trainer.config().run.log_dir.display());
    }
    Ok(())
}

/// A resume without `--data` trains on the `data.dir` its checkpoint recorded, which is relative to the directory the
/// run was started from: from anywhere else it is not there, and the error says so (not only "no such directory").
fn check_recorded_data_dir(cfg: &TrainConfig, origin: &str) -> anyhow::Result<()> {
    let Some(dir) = &cfg.data.dir else { return Ok(()) };
    if dir.is_dir() {
        return Ok(());
    }
    let here = std::env::current_dir().map_or_else(|_| "this directory".to_string(), |d| d.display().to_string());
    let relative = if dir.is_relative() {
        format!(
            " (a relative path, recorded in {origin}: relative to the directory the run was started from, not {here})"
        )
    } else {
        format!(" (recorded in {origin})")
    };
    anyhow::bail!(
        "data.dir {}{relative} does not exist: run the resume from the directory the run was started in, or pass \
         --data DIR naming the same dataset (its content is checked, so a moved copy is fine)",
        dir.display()
    )
}

/// `cuda` (and `auto` where CUDA is available) means this rank's GPU, `cuda:LOCAL_RANK`; anything explicit stays.
fn rank_device(device: &str, job: &DistEnv) -> String {
    match device {
        "cuda" => job.cuda_device(),
        "auto" if candle_core::utils::cuda_is_available() => job.cuda_device(),
        other => other.to_string(),
    }
}
