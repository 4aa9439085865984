//! The training loop: owns the model, AdamW, the loaders, the schedule and the logs of one run, and reads top to
//! bottom like build-nanogpt's: (val loss, HellaSwag, samples) when due, one optimizer step, one log line,
//! a checkpoint when due. The step itself is the decomposed pipeline of `step`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::eval::hellaswag::{self, HellaswagScore};
use crate::eval::hellaswag_file::{Example, HellaswagFile, HellaswagFileError};
use crate::model::{self, LanguageModel, ModelConfig, ModelError};
use crate::shards::loader::{LoaderConfig, LoaderError};
use crate::shards::mixture::MixtureLoader;
use crate::shards::{Manifest, Split};
use crate::tokenizer::{Tokenizer, TokenizerError, TokenizerKind};
use crate::train::checkpoint::{self, CheckpointError, RngState, TrainState, CHECKPOINT_VERSION};
use crate::train::config::{ComputeDtype, ConfigError, TrainConfig};
use crate::train::engine::{self, Engine, EngineKind};
use crate::train::init::{InitError, InitModel};
use crate::train::log::{Event, RunLog, StepStats};
use crate::train::optim::{AdamWConfig, OptimError};
use crate::train::resume::{self, DataIdentity, ResumeRefused};
use crate::train::run_dir::{self, Claim, RunDir, RunDirError};
use crate::train::schedule::LrSchedule;
use crate::train::step::{Reducer, SingleProcess, StepOutcome};
use crate::train::stop::StopRequest;
use crate::util::{io_at, PathIoError};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Hellaswag(#[from] HellaswagFileError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(
        "no training data: set [data] dir (or [data] mix) in the config or pass --data DIR (a directory `tokenmill \
         prep` wrote) or --data DIR:WEIGHT,DIR:WEIGHT (a mixture)"
    )]
    NoDataDir,
    #[error(
        "[data] mix: {a} holds {a_tokens} token ids, {b} holds {b_tokens}: a mixture reads one tokenizer's ids; prep \
         every source with the same --tokenizer"
    )]
    MixedTokenizers { a: String, a_tokens: String, b: String, b_tokens: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: the data has {data} token ids but the checkpoint's model was built for {model}")]
    VocabMismatch { path: String, data: usize, model: usize },
    #[error("step {step}: the loss is {loss}; training diverged (lower optim.max_lr or check the data)")]
    NonFinite { step: usize, loss: f32 },
    #[error("{0}")]
    Resume(String),
    #[error(transparent)]
    ResumeRefused(#[from] ResumeRefused),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Manifest(#[from] crate::shards::manifest::ManifestError),
    #[error(transparent)]
    Init(Box<InitError>),
    #[error(
        "{dir}/manifest.json says complete: false: the prep that wrote it stopped before the end of its input (killed, \
         or still running) after {shards} shard(s), {tokens} tokens. Re-run the same `tokenmill prep` command to \
         finish it, or pass --allow-incomplete-data to train on what it has"
    )]
    IncompleteData { dir: String, shards: usize, tokens: u64 },
    #[error(
        "{checkpoint}: the run is at step {step} and optim.max_steps is {max_steps}: nothing to train. Raise \
         --max-steps above {step} to continue it (the learning-rate schedule follows), or start a new run"
    )]
    NothingToTrain { checkpoint: String, step: usize, max_steps: usize },
    #[error(
        "{checkpoint}: written by run {theirs}, but {dir} is run {ours} (its .tokenmill-run): a checkpoint copied in \
         from another run is not this run's state, and continuing from it would mix two runs in one log. Resume it \
         into a new directory (--resume {checkpoint} --log-dir NEW_DIR), or move it out of {dir}"
    )]
    OtherRunsCheckpoint { checkpoint: String, theirs: String, ours: String, dir: String },
    #[error(transparent)]
    Memory(#[from] crate::train::memory::MemoryError),
    #[error("{0}")]
    EmptyTrain(String),
    #[error("[engine] gemm_table: {0} (fix or remove the file, or unset engine.gemm_table)")]
    GemmTable(#[from] crate::cuda::gemm_table::GemmTableError),
}

impl From<InitError> for TrainError {
    fn from(e: InitError) -> Self {
        TrainError::Init(Box::new(e))
    }
}

/// How a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Fresh weights from `run.seed`.
    No,
    /// The latest `step_N` under the config's checkpoint directory.
    Latest,
    /// A given checkpoint directory.
    From(PathBuf),
}

pub struct Trainer {
    cfg: TrainConfig,
    /// Runs the steps and holds the model and the optimizer state (`train::engine`).
    engine: Box<dyn Engine>,
    schedule: LrSchedule,
    /// The training batches: one directory, or a weighted mixture of several (`shards::mixture`).
    train: MixtureLoader,
    /// The val split of every source (the mixture's val loss weighs theirs).
    val: Option<MixtureLoader>,
    hellaswag: Option<Vec<Example>>,
    tokenizer: Option<Tokenizer>,
    reducer: Box<dyn Reducer>,
    device: Device,
    grad_accum: usize,
    /// Optimizer steps completed (the next step to run).
    step: usize,
    /// Sampling RNG; training itself draws no randomness after initialisation.
    rng: ChaCha20Rng,
    log: Option<RunLog>,
    history: Vec<Event>,
    /// Step of the last checkpoint written by this process, to avoid writing the same one twice.
    last_checkpoint: Option<usize>,
    /// What the run trains on, recorded in every checkpoint so a resume on other data is refused.
    data: DataIdentity,
    /// Raised by SIGTERM / SIGINT (or `StopRequest::request`): stop after the current step, with a checkpoint.
    stop: StopRequest,
    /// Rank 0: the run directory, locked for as long as the trainer lives.
    run_dir: Option<RunDir>,
}

/// How [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `optim.max_steps` (or the `stop_at` step) reached.
    Finished,
    /// A stop was requested (on this rank by `signal`, or on another rank): the run stopped after `step` steps with
    /// `checkpoint` written (rank 0).
    Stopped { signal: Option<i32>, step: usize, checkpoint: Option<PathBuf> },
}

/// Options that are not hyperparameters.
pub struct TrainerOptions {
    pub resume: Resume,
    /// Print every log line (the CLI); tests keep quiet.
    pub echo: bool,
    /// Gradient averaging across processes; `SingleProcess` unless data-parallel.
    pub reducer: Box<dyn Reducer>,
    /// Check shards against the manifest's xxh3 when first entered, and a resumed checkpoint's files against its
    /// state.json (`--no-verify` turns both off).
    pub verify: bool,
    /// Checked after every step; the CLI raises it on SIGTERM / SIGINT (`StopRequest::on_signals`).
    pub stop: StopRequest,
    /// A fresh run (or a resume into another directory) may replace a previous run in `run.log_dir`, removing only
    /// what its owner marker proves tokenmill wrote (`--overwrite`; `run_dir`).
    pub overwrite: bool,
    /// Train on a dataset whose prep did not finish (`complete: false` and short of its `--shards`):
    /// `--allow-incomplete-data`.
    pub allow_incomplete_data: bool,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            resume: Resume::No,
            echo: false,
            reducer: Box::new(SingleProcess),
            verify: true,
            stop: StopRequest::new(),
            overwrite: false,
            allow_incomplete_data: false,
        }
    }
}

/// The run directory, refused now if it is another run's, another process's or not tokenmill's (rank 0). A resume
/// of this directory's own checkpoint takes it (lock, marker) at once, because the leftovers of interrupted
/// checkpoint writes are cleaned before anything looks for the latest checkpoint, and because whose checkpoint it
/// resumes is judged by the directory's run id; otherwise it is taken once everything else has been checked.
fn claim_run_dir(
    log_dir: &Path,
    checkpoint_root: &Path,
    claim: Claim,
    resumed_from: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<Option<RunDir>, TrainError> {
    run_dir::check(log_dir, checkpoint_root, claim)?;
    let something_to_resume = checkpoint_root.is_dir() || resumed_from.is_some_and(Path::is_dir);
    if let (Claim::Resume { own: true, .. }, true) = (claim, something_to_resume) {
        let (dir, n) = RunDir::take(log_dir, checkpoint_root, claim, resumed_from)?;
        notes.extend(n);
        notes.extend(checkpoint::clean_stale(checkpoint_root)?);
        return Ok(Some(dir));
    }
    Ok(None)
}

/// The data of every source, as far as a resume and the model need it, without opening the loaders yet: its
/// vocabulary and identity (a mixture's combines its sources', `DataIdentity::of_mixture`). The sources of a mixture
/// must share one tokenizer.
fn check_data(sources: &[(PathBuf, f64)], allow_incomplete: bool) -> Result<(usize, DataIdentity), TrainError> {
    let mut each: Vec<(usize, DataIdentity)> = Vec::with_capacity(sources.len());
    for (dir, _) in sources {
        let (vocab, identity) = check_dir(dir, allow_incomplete)?;
        if let Some((first_vocab, first_id)) = each.first() {
            let differ = matches!((&first_id.tokenizer, &identity.tokenizer), (Some(a), Some(b)) if a != b);
            if differ || *first_vocab != vocab {
                let show = |id: &DataIdentity, vocab: usize| match &id.tokenizer {
                    Some(t) => format!("{t} ({vocab} ids)"),
                    None => format!("{vocab}-id"),
                };
                return Err(TrainError::MixedTokenizers {
                    a: sources[0].0.display().to_string(),
                    a_tokens: show(first_id, *first_vocab),
                    b: dir.display().to_string(),
                    b_tokens: show(&identity, vocab),
                });
            }
        }
        each.push((vocab, identity));
    }
    let vocab = each.first().map_or(0, |e| e.0);
    if each.len() == 1 {
        return Ok((vocab, each.remove(0).1));
    }
    let total: f64 = sources.iter().map(|(_, w)| w).sum();
    let parts: Vec<(f64, DataIdentity)> = sources.iter().zip(each).map(|((_, w), (_, id))| (w / total, id)).collect();
    Ok((vocab, DataIdentity::of_mixture(&parts)))
}

/// One directory of the data: its vocabulary and identity; a corpus whose preparation did not finish is refused
/// unless `allow_incomplete`.
fn check_dir(data_dir: &Path, allow_incomplete: bool) -> Result<(usize, DataIdentity), TrainError> {
    let data_vocab = crate::shards::loader::dir_vocab_size(data_dir)? as usize;
    if Manifest::path_in(data_dir).exists() {
        let m = Manifest::load(data_dir)?;
        if !m.finished() && !allow_incomplete {
            return Err(TrainError::IncompleteData {
                dir: data_dir.display().to_string(),
                shards: m.shards.len(),
                tokens: m.shards.iter().map(|s| s.tokens).sum(),
            });
        }
    }
    Ok((data_vocab, DataIdentity::of_dir(data_dir)?))
}

/// A resume's checkpoint: read, checked, and reconciled with `cfg` first, so a change it cannot honour is the first
/// thing said; the changes it applies become notes. From here `cfg` is the config in effect. `this_run`: the run id
/// and directory of the run it continues in place: a checkpoint another run wrote is refused there.
fn read_resume(
    dir: &Path,
    this_run: Option<(&str, &Path)>,
    cfg: &TrainConfig,
    data: &DataIdentity,
    data_vocab: usize,
    verify: bool,
    notes: &mut Vec<String>,
) -> Result<TrainState, TrainError> {
    let state = checkpoint::load_state(dir)?;
    if let (Some(theirs), Some((ours, run))) = (&state.run_id, this_run) {
        if theirs != ours {
            return Err(TrainError::OtherRunsCheckpoint {
                checkpoint: dir.display().to_string(),
                theirs: theirs.clone(),
                ours: ours.to_string(),
                dir: run.display().to_string(),
            });
        }
    }
    let changes = resume::reconcile(dir, &state, cfg, data, data_vocab)?;
    notes.extend(changes.into_iter().map(|c| format!("resume applies {c}")));
    if state.step >= cfg.optim.max_steps {
        return Err(TrainError::NothingToTrain {
            checkpoint: dir.display().to_string(),
            step: state.step,
            max_steps: cfg.optim.max_steps,
        });
    }
    if verify {
        checkpoint::verify(dir, &state)?;
    }
    Ok(state)
}

/// The HellaSwag examples the loop scores (None when it scores none), checked against the data's tokenizer.
fn hellaswag_examples(
    cfg: &TrainConfig,
    data_dir: &Path,
    data_vocab: usize,
    data: &DataIdentity,
) -> Result<Option<Vec<Example>>, TrainError> {
    match (&cfg.eval.hellaswag_file, cfg.eval.hellaswag_every) {
        (Some(path), every) if every > 0 => {
            let file = HellaswagFile::open(path)?;
            file.check_tokenizer(&format!("the data in {}", data_dir.display()), data_vocab, data.tokenizer.as_ref())?;
            let n = cfg.eval.hellaswag_limit.unwrap_or(file.len()).min(file.len());
            Ok(Some(file.examples()[..n].to_vec()))
        }
        _ => Ok(None),
    }
}

/// A fresh run's `[model] init` model, found, with the data's tokenizer checked against it (None: no init, or a
/// resume, which starts from its checkpoint).
fn open_init(cfg: &TrainConfig, resumed: bool, data_dir: &Path) -> Result<Option<InitModel>, TrainError> {
    let Some(spec) = cfg.model.init.as_deref().filter(|_| !resumed) else { return Ok(None) };
    let init = InitModel::open(spec)?;
    if Manifest::path_in(data_dir).exists() {
        init.check_data_tokenizer(data_dir, &Manifest::load(data_dir)?.tokenizer)?;
    }
    Ok(Some(init))
}

/// The model (fresh from the seed or from `init`'s weights, or a resume's checkpoint), its weights made equal across
/// processes, and the engine `[run] engine` picks over it.
fn build_engine(
    cfg: &TrainConfig,
    model_cfg: &ModelConfig,
    (resume_dir, init): (Option<&Path>, Option<&InitModel>),
    device: &Device,
    dtype: ComputeDtype,
    reducer: &dyn Reducer,
) -> Result<Box<dyn Engine>, TrainError> {
    crate::device::set_tf32(cfg.run.tf32);
    let model = match (resume_dir, init) {
        (Some(dir), _) => model::load_checkpoint_model(dir, dtype.precision(), device)?,
        (None, Some(init)) => init.load(model_cfg, dtype.precision(), device)?,
        (None, None) => model::build_model(model_cfg, dtype.precision(), device, cfg.run.seed)?,
    };
    if model.config() != model_cfg {
        return Err(TrainError::Resume(format!(
            "{}: model.safetensors holds a {:?} model but state.json says {:?}",
            resume_dir.unwrap_or(Path::new("?")).display(),
            model.config(),
            model_cfg
        )));
    }
    let vars: Vec<_> = model.parameters().into_iter().map(|(_, v)| v).collect();
    reducer.sync_params(&vars)?;
    drop(vars);
    let kind = EngineKind::resolve(cfg.run.engine, model_cfg, device, dtype)?;
    let micro_batch = (cfg.data.micro_batch, cfg.data.seq_len);
    Ok(engine::build(kind, model, device, micro_batch, AdamWConfig::from_config(cfg), &cfg.engine)?)
}

/// The run's log (a resume drops what the stopped run logged after its checkpoint) and its `config.toml`, the
/// config in effect.
fn open_log(
    cfg: &TrainConfig,
    resumed: bool,
    step: usize,
    echo: bool,
    notes: &mut Vec<String>,
) -> Result<RunLog, TrainError> {
    let dir = &cfg.run.log_dir;
    let log = if resumed {
        let (log, dropped) = RunLog::resume(dir, step, echo).map_err(io_at(dir))?;
        if dropped > 0 {
            notes.push(format!(
                "dropped {dropped} line(s) of log.txt and metrics.jsonl for steps >= {step}, logged after that \
                 checkpoint by the run that stopped"
            ));
        }
        log
    } else {
        RunLog::open(dir, echo).map_err(io_at(dir))?
    };
    let path = dir.join(run_dir::CONFIG_FILE);
    crate::util::write_atomic(&path, cfg.to_toml().as_bytes()).map_err(io_at(&path))?;
    Ok(log)
}

impl Trainer {
    /// Open the data, build (or restore) the model and optimizer, take the run directory, open the logs. `cfg` is a
    /// resolved config. Everything that can refuse the run is checked before anything is written: the run directory
    /// (`run_dir`: another run, another process, not tokenmill's), the data, and a resume's checkpoint (a change it
    /// cannot honour comes first, before batch-size or HellaSwag problems of the new config).
    pub fn new(cfg: TrainConfig, opts: TrainerOptions) -> Result<Trainer, TrainError> {
        cfg.validate()?;
        let device = cfg.run.device()?;
        let dtype = cfg.run.compute_dtype(&device)?;
        let (rank, world) = (opts.reducer.rank(), opts.reducer.world());
        let grad_accum = cfg.grad_accum_steps(world)?;
        let sources = cfg.data.sources();
        let data_dir = sources.first().map(|(d, _)| d.clone()).ok_or(TrainError::NoDataDir)?;
        let (log_dir, checkpoint_root) = (cfg.run.log_dir.clone(), cfg.checkpoint_dir());

        let claim = match &opts.resume {
            Resume::No => Claim::Fresh { overwrite: opts.overwrite },
            Resume::Latest => Claim::Resume { own: true, overwrite: opts.overwrite },
            Resume::From(p) => Claim::Resume {
                own: run_dir::owns_checkpoint(&log_dir, &checkpoint_root, p),
                overwrite: opts.overwrite,
            },
        };
        let resumed_from = match &opts.resume {
            Resume::From(p) => Some(p.as_path()),
            _ => None,
        };
        let mut notes = Vec::new();
        let mut taken =
            if rank == 0 { claim_run_dir(&log_dir, &checkpoint_root, claim, resumed_from, &mut notes)? } else { None };
        let (data_vocab, data) = check_data(&sources, opts.allow_incomplete_data)?;
        let resume_dir = match &opts.resume {
            Resume::No => None,
            Resume::Latest => Some(checkpoint::latest(&checkpoint_root)?),
            Resume::From(p) => Some(p.clone()),
        };
        let this_run = match (claim, &taken) {
            (Claim::Resume { own: true, .. }, Some(d)) => Some((d.marker().run_id.as_str(), d.dir())),
            _ => None,
        };
        let resume_state = match &resume_dir {
            Some(dir) => Some(read_resume(dir, this_run, &cfg, &data, data_vocab, opts.verify, &mut notes)?),
            None => None,
        };
        let model_cfg = match &resume_state {
            Some(s) => s.model.clone(),
            None => cfg.model.resolve(data_vocab)?,
        };
        if data_vocab > model_cfg.vocab_size {
            return Err(TrainError::VocabMismatch {
                path: data_dir.display().to_string(),
                data: data_vocab,
                model: model_cfg.vocab_size,
            });
        }
        if cfg.data.seq_len > model_cfg.block_size {
            return Err(ConfigError::Invalid(format!(
                "[data] seq_len {} is longer than the model's block_size {}",
                cfg.data.seq_len, model_cfg.block_size
            ))
            .into());
        }

        let loader_cfg = |shuffle_seed| LoaderConfig {
            batch_size: cfg.data.micro_batch,
            seq_len: cfg.data.seq_len,
            rank,
            world,
            shuffle_seed,
        };
        let mut train = MixtureLoader::open(&sources, Split::Train, loader_cfg(cfg.data.shuffle_seed), opts.verify)
            .map_err(|e| match (&e, &sources[..]) {
                // One directory whose train split is empty because --val-shards took every shard: say so.
                (LoaderError::EmptySplit { split: Split::Train, .. }, [(dir, _)]) => match Manifest::load(dir) {
                    Ok(m) => {
                        m.empty_train_because_of_val_shards(dir).map_or(TrainError::Loader(e), TrainError::EmptyTrain)
                    }
                    Err(_) => TrainError::Loader(e),
                },
                _ => TrainError::Loader(e),
            })?;
        // Validation always reads the same batches, in file order, from the start.
        let val = if cfg.eval.val_every > 0 {
            Some(MixtureLoader::open(&sources, Split::Val, loader_cfg(None), opts.verify)?)
        } else {
            None
        };
        // The data's tokenizer (every source has the same, checked above): samples, checkpoints and exports use it.
        let tokenizer = match Manifest::load(&data_dir) {
            Ok(m) => Some(m.load_tokenizer(&data_dir)?),
            Err(_) if data_vocab == TokenizerKind::Gpt2.vocab_size() as usize => Some(Tokenizer::gpt2()),
            Err(_) => None,
        };
        let hellaswag = hellaswag_examples(&cfg, &data_dir, data_vocab, &data)?;
        // What the run needs, from the config alone, before the model and its optimizer state are allocated.
        crate::train::memory::check(&model_cfg, cfg.data.micro_batch, cfg.data.seq_len, device.is_cpu(), "train")?;
        if let crate::train::decoder::options::GemmTableChoice::File(table) = &cfg.engine.gemm_table {
            // Read (and checked) whatever the engine: a missing or garbage file is named, not recorded silently.
            crate::cuda::gemm_table::GemmTable::load(table)?;
        }
        let init = open_init(&cfg, resume_dir.is_some(), &data_dir)?;

        let sources = (resume_dir.as_deref(), init.as_ref());
        let mut engine = build_engine(&cfg, &model_cfg, sources, &device, dtype, &*opts.reducer)?;
        let mut rng = ChaCha20Rng::seed_from_u64(cfg.run.seed);
        let mut step = 0;
        if let (Some(dir), Some(state)) = (&resume_dir, &resume_state) {
            engine.load_optimizer_state(&checkpoint::load_optimizer_tensors(dir, &device)?, state.optimizer_steps)?;
            train.restore(&state.train_loader)?;
            rng = state.rng.restore().map_err(|e| TrainError::Resume(format!("{}: {e}", dir.display())))?;
            step = state.step;
        }

        // Everything checked: now the run directory is written (rank 0 only).
        let log = if rank == 0 {
            let run_dir = match taken {
                Some(d) => d,
                None => {
                    let (d, n) = RunDir::take(&log_dir, &checkpoint_root, claim, resumed_from)?;
                    notes.extend(n);
                    d
                }
            };
            taken = Some(run_dir);
            if let (Claim::Resume { own: true, .. }, Some(_)) = (claim, &resume_dir) {
                // A resume from an earlier step starts a new branch: later checkpoints are moved aside, so the
                // latest one is always the live branch's.
                notes.extend(checkpoint::abandon_after(&checkpoint_root, step)?);
            }
            Some(open_log(&cfg, resume_dir.is_some(), step, opts.echo, &mut notes)?)
        } else {
            None
        };

        let trainer = Trainer {
            schedule: LrSchedule::from_config(&cfg),
            cfg,
            engine,
            train,
            val,
            hellaswag,
            tokenizer,
            reducer: opts.reducer,
            device,
            grad_accum,
            step,
            rng,
            log,
            history: Vec::new(),
            last_checkpoint: None,
            data,
            stop: opts.stop,
            run_dir: taken,
        };
        trainer.startup_notes(resume_dir.as_deref(), &notes, dtype);
        Ok(trainer)
    }

    /// The run's opening lines; `notes` are what setup did besides the usual (cleanups, applied resume changes).
    fn startup_notes(&self, resumed_from: Option<&Path>, notes: &[String], dtype: ComputeDtype) {
        let Some(log) = &self.log else { return };
        let m = self.engine.model().config();
        let n_params = self.engine.model().num_parameters();
        let ((dt, dn), (nt, nn)) = self.engine.decay_summary();
        log.note(&format!(
            "model: {:?} L={} NH={} C={} T<={} V={} ({} real), {n_params} parameters, compute {dtype:?} on {:?}, \
             engine {}",
            m.arch,
            m.n_layer,
            m.n_head,
            m.n_embd,
            m.block_size,
            m.vocab_size,
            m.real_vocab_size,
            self.device,
            self.engine.kind().name()
        ));
        if let Some(resolved) = self.engine.resolved() {
            log.note(&format!("[engine] {} (resolved: {resolved})", self.cfg.engine.describe()));
        } else if self.cfg.engine != crate::train::config::EngineOptions::default() {
            log.note(&format!(
                "note: [engine] {} applies to the cuda engine only; this run's {} engine on {:?} does not use it \
                 (it is recorded in the config as given)",
                self.cfg.engine.describe(),
                self.engine.kind().name(),
                self.device
            ));
        }
        log.note(&format!("num decayed parameter tensors: {dt}, with {dn} parameters"));
        log.note(&format!("num non-decayed parameter tensors: {nt}, with {nn} parameters"));
        log.note(&format!(
            "total desired batch size: {} => calculated gradient accumulation steps: {}",
            self.cfg.data.total_batch_tokens, self.grad_accum
        ));
        log.note(&format!("train data: {} tokens in {} shards", self.train.total_tokens(), self.train.num_shards()));
        if self.train.is_mixture() {
            log.note(&format!("data mixture: {}", self.cfg.data.describe()));
        }
        if let Some(t) = &self.tokenizer {
            log.note(&format!("tokenizer: {}", t.describe()));
        }
        if let Some(dir) = resumed_from {
            log.note(&format!("resumed from {} at step {}", dir.display(), self.step));
        }
        for note in notes {
            log.note(note);
        }
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.engine.model()
    }

    /// Which engine runs the steps.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn grad_accum_steps(&self) -> usize {
        self.grad_accum
    }

    /// Every event this process recorded, in order.
    pub fn history(&self) -> &[Event] {
        &self.history
    }

    fn record(&mut self, event: Event) -> Result<(), TrainError> {
        if let Some(log) = &mut self.log {
            log.record(&event).map_err(io_at(&self.cfg.run.log_dir))?;
        }
        self.history.push(event);
        Ok(())
    }

    /// The accumulated batch of one optimizer step: `grad_accum` micro-steps of forward + backward, then the
    /// gradients reduced across processes. Returns the mean loss (f32 scalar tensor) and one gradient per parameter
    /// (model order), not yet clipped; nothing is applied. Autograd engine only (the explicit engine keeps its
    /// gradients in one flat buffer): for tests that compare gradients.
    pub fn forward_backward(&mut self) -> Result<(Tensor, Vec<Option<Tensor>>), TrainError> {
        let Some(autograd) = self.engine.as_autograd() else {
            return Err(TrainError::Resume("forward_backward needs run.engine = \"autograd\"".into()));
        };
        autograd.begin_step()?;
        for _ in 0..self.grad_accum {
            autograd.micro_step(&self.train.next_batch()?, self.grad_accum)?;
        }
        Ok(autograd.accumulated(&*self.reducer)?)
    }

    /// One optimizer step (`engine::optimizer_step`): `grad_accum` micro-steps, reduction, clipping, AdamW at this
    /// step's learning rate.
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        let t0 = Instant::now();
        let lr = self.schedule.lr(self.step);
        let (train, step) = (&mut self.train, self.step);
        let StepOutcome { loss, grad_norm } = engine::optimizer_step(
            &mut *self.engine,
            self.grad_accum,
            &*self.reducer,
            lr,
            self.cfg.optim.grad_clip,
            |_| Ok::<_, TrainError>(train.next_batch()?),
            |loss| TrainError::NonFinite { step, loss },
        )?;
        self.device.synchronize()?;
        let secs = t0.elapsed().as_secs_f64();
        let tokens = self.cfg.data.total_batch_tokens as f64;
        let stats =
            StepStats { step: self.step, loss, lr, grad_norm, ms: secs * 1e3, tokens_per_s: tokens / secs.max(1e-9) };
        self.step += 1;
        Ok(stats)
    }

    /// Mean loss over `val_steps` batches from the start of the val split (averaged across processes); for a
    /// mixture, the weighted mean of its sources' (`val_losses`).
    pub fn val_loss(&mut self) -> Result<f32, TrainError> {
        Ok(self.val_losses()?.0)
    }

    /// The val loss, and for a mixture each source's (directory, loss): `val_steps` batches from the start of each
    /// source's val split, averaged across processes; the mixture's is their mean weighted as the training batches.
    pub fn val_losses(&mut self) -> Result<(f32, Vec<(String, f32)>), TrainError> {
        let steps = self.cfg.eval.val_steps;
        let Some(mut val) = self.val.take() else {
            return Err(ConfigError::Invalid("no val loader (eval.val_every is 0)".into()).into());
        };
        let result = (|| -> Result<(f32, Vec<(String, f32)>), TrainError> {
            let (mut means, mut names, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for (dir, weight, loader) in val.sources_mut() {
                loader.reset();
                let mut total = 0f64;
                for _ in 0..steps {
                    total += self.engine.eval_loss(&loader.next_batch()?)? as f64;
                }
                means.push(total / steps as f64);
                names.push(dir.display().to_string());
                weights.push(weight);
            }
            self.reducer.mean_f64(&mut means)?;
            let mixed: f64 = means.iter().zip(&weights).map(|(l, w)| l * w).sum();
            let each = if names.len() > 1 {
                names.into_iter().zip(&means).map(|(n, &l)| (n, l as f32)).collect()
            } else {
                Vec::new()
            };
            Ok((mixed as f32, each))
        })();
        self.val = Some(val);
        result
    }

    /// A screen line with how long an evaluation took (the training log's time per evaluation).
    fn note_time(&self, step: usize, what: &str, started: Instant) {
        if let Some(log) = &self.log {
            log.note(&format!("step {step:5} | {what} took {:.2} s", started.elapsed().as_secs_f64()));
        }
    }

    /// HellaSwag over the configured examples (split across processes, counts summed).
    /// The decoder engine scores with its own forward (`decoder::scoring`), the autograd engine with its model.
    pub fn hellaswag(&mut self) -> Result<Option<HellaswagScore>, TrainError> {
        let Some(examples) = &self.hellaswag else { return Ok(None) };
        let (rank, world) = (self.reducer.rank(), self.reducer.world());
        let longest = examples.iter().map(Example::row_len).max().unwrap_or(0);
        let on_engine = match self.engine.scorer(longest) {
            Some(mut scorer) => Some(hellaswag::evaluate_with(&mut *scorer, examples, rank, world, |_| {})?),
            None => None,
        };
        let predictions = match on_engine {
            Some(p) => p,
            None => {
                let mut scorer = hellaswag::ModelScorer::new(self.engine.model(), &self.device);
                hellaswag::evaluate_with(&mut scorer, examples, rank, world, |_| {})?
            }
        };
        let local = hellaswag::tally(&predictions);
        let mut counts = [local.n as f64, local.correct as f64, local.correct_norm as f64];
        self.reducer.sum_f64(&mut counts)?;
        Ok(Some(HellaswagScore {
            n: counts[0] as usize,
            correct: counts[1] as usize,
            correct_norm: counts[2] as usize,
        }))
    }

    /// `sample_count` continuations of the sample prompt (rank 0 only; None without a tokenizer).
    pub fn samples(&mut self) -> Result<Option<Vec<String>>, TrainError> {
        let Some(tok) = self.tokenizer.clone() else { return Ok(None) };
        let e = &self.cfg.eval;
        // As the model's documents start (a Llama tokenizer's BOS; nothing for GPT-2), shown without it.
        let prefix = tok.document_prefix().len();
        let prompt = [tok.document_prefix(), &tok.encode(&e.sample_prompt)?].concat();
        let seqs = crate::train::sample::generate(
            self.engine.model(),
            &prompt,
            e.sample_count,
            e.sample_tokens.max(prompt.len() + 1),
            e.sample_top_k,
            &mut self.rng,
            &self.device,
        )?;
        Ok(Some(seqs.iter().map(|s| tok.decode(&s[prefix..])).collect()))
    }

    /// Write `checkpoint_dir/step_N` for the current step (rank 0 only).
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>, TrainError> {
        if self.reducer.rank() != 0 {
            return Ok(None);
        }
        let dir = checkpoint::step_dir(&self.cfg.checkpoint_dir(), self.step);
        let state = TrainState {
            format_version: CHECKPOINT_VERSION,
            step: self.step,
            optimizer_steps: self.engine.optimizer_steps(),
            train_loader: self.train.state(),
            rng: RngState::capture(&self.rng),
            config: self.cfg.clone(),
            model: self.engine.model().config().clone(),
            data: Some(self.data.clone()),
            engine: self.engine.resolved(),
            run_id: self.run_dir.as_ref().map(|d| d.marker().run_id.clone()),
            checksums: Default::default(), // filled in by checkpoint::save
            tool_version: crate::TOOL_VERSION.to_string(),
        };
        let tokenizer_files = self.tokenizer.as_ref().map(Tokenizer::files).unwrap_or_default();
        checkpoint::save(&dir, self.engine.model(), &self.engine.optimizer_state()?, &state, &tokenizer_files)?;
        self.last_checkpoint = Some(self.step);
        if let Some(log) = &self.log {
            log.note(&format!("saved checkpoint {}", dir.display()));
        }
        Ok(Some(dir))
    }

    /// The run's stop request (a clone: raising it stops the run after its current step).
    pub fn stop_request(&self) -> StopRequest {
        self.stop.clone()
    }

    /// Whether any process's stop request is raised: one all-reduce of a flag, so every rank stops after the same
    /// step.
    fn stop_agreed(&self) -> Result<bool, TrainError> {
        let mut raised = [if self.stop.raised() { 1.0 } else { 0.0 }];
        self.reducer.sum_f64(&mut raised)?;
        Ok(raised[0] > 0.0)
    }

    /// Train until `optim.max_steps` (or `stop_at`, if smaller), then write a final checkpoint. A raised stop request
    /// ends the run after the step in progress, with a checkpoint (`RunEnd::Stopped`).
    ///
    /// Evaluations (validation, HellaSwag, samples) run before the step whose number their interval divides, on the
    /// weights of that many updates, and once more after the last update at `optim.max_steps` (as llm.c's loop
    /// does): the run's last val loss is that of its final checkpoint, which `export` hands on.
    pub fn run(&mut self, stop_at: Option<usize>) -> Result<RunEnd, TrainError> {
        let max_steps = self.cfg.optim.max_steps;
        let stop = stop_at.unwrap_or(max_steps).min(max_steps);
        let first_step = self.step;
        while self.step < stop {
            let step = self.step;
            self.evaluate(step, false)?;

            let s = self.train_step()?;
            self.record(Event::Train(s))?;
            if self.train.is_mixture() {
                let event = self.data_event(step);
                if let Some(log) = &mut self.log {
                    log.record_quiet(&event).map_err(io_at(&self.cfg.run.log_dir))?;
                }
                self.history.push(event);
            }

            let every = self.cfg.checkpoint.every;
            if every > 0 && self.step.is_multiple_of(every) {
                self.save_checkpoint()?;
            }
            if self.stop_agreed()? {
                let checkpoint = self.final_checkpoint()?;
                return Ok(RunEnd::Stopped { signal: self.stop.signal(), step: self.step, checkpoint });
            }
        }
        if self.step > first_step {
            self.final_checkpoint()?;
            if self.step == max_steps {
                self.evaluate(self.step, true)?;
            }
        }
        Ok(RunEnd::Finished)
    }

    /// The evaluations due at `step` (before its update; `end`: after the run's last update, where every enabled
    /// evaluation runs), each recorded under `step`.
    fn evaluate(&mut self, step: usize, end: bool) -> Result<(), TrainError> {
        let due = |every: usize| every > 0 && (end || step.is_multiple_of(every));
        let e = self.cfg.eval.clone();
        if self.val.is_some() && due(e.val_every) {
            let started = Instant::now();
            let (loss, each) = self.val_losses()?;
            self.record(Event::Val { step, loss })?;
            for (source, loss) in each {
                self.record(Event::ValSource { step, source, loss })?;
            }
            self.note_time(step, &format!("validation ({} batches)", e.val_steps), started);
            if step > 0 && self.train.is_mixture() {
                if let Some(log) = &self.log {
                    log.note(&self.data_event(step - 1).display());
                }
            }
        }
        if due(e.hellaswag_every) {
            let started = Instant::now();
            if let Some(s) = self.hellaswag()? {
                self.record(Event::Hella { step, acc: s.acc(), acc_norm: s.acc_norm(), n: s.n })?;
                self.note_time(step, &format!("HellaSwag ({} examples)", s.n), started);
            }
        }
        if self.reducer.rank() == 0 && due(e.sample_every) && step > 0 {
            if let Some(texts) = self.samples()? {
                for (index, text) in texts.into_iter().enumerate() {
                    self.record(Event::Sample { step, index, text })?;
                }
            }
        }
        Ok(())
    }

    /// The tokens each source of the mixture has given after `step` (`metrics.jsonl`'s `data` lines).
    fn data_event(&self, step: usize) -> Event {
        Event::Data { step, tokens: self.train.tokens_per_source().into_iter().collect() }
    }

    /// Tokens each training source has given so far (one entry without a mixture).
    pub fn tokens_per_source(&self) -> Vec<(String, u64)> {
        self.train.tokens_per_source()
    }

    /// The checkpoint of the current step, written unless it already was (rank 0; `None` elsewhere).
    fn final_checkpoint(&mut self) -> Result<Option<PathBuf>, TrainError> {
        if self.last_checkpoint == Some(self.step) {
            return Ok((self.reducer.rank() == 0).then(|| checkpoint::step_dir(&self.cfg.checkpoint_dir(), self.step)));
        }
        self.save_checkpoint()
    }
}
