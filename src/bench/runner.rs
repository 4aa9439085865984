//! The cases: which (model, T, B, dtype, warm-up, computation) combinations to run, and running one.
//!
//! A `Plan` is the grid (every axis a list; the cases are their cartesian product). Each case resolves to a full
//! `TrainConfig` through the trainer's own resolution (preset or config file < the case's B, T, total batch and
//! dtype), so an impossible combination (T > block_size, a total batch that B * T does not divide) is the trainer's
//! error, raised before anything runs. A case builds its own model with `model::build_model` (as the trainer does), feeds it
//! synthetic token ids (uniform over the vocabulary, seeded), runs `warmup` untimed iterations and `steps` timed ones,
//! each between two device synchronizations (`timer`), and records peak memory over the whole case (`memory`).
//!
//! Each case runs on the engine `train` would pick for it (`[run] engine`, `--engine`; `train::engine`).
//! What each computation runs: see `Computation`. `train_step` calls the same `engine::optimizer_step` as
//! `Trainer::train_step`, fed from host batches instead of the shard loader: per micro-step the batch uploaded and
//! forward + backward, accumulation, the (single-process) reduce, clipping, the loss fetched to the host and checked,
//! AdamW at the schedule's lr. The other computations time the pieces (`autograd_pieces`, `engine_pieces`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::flops::{flops_per_iteration, total_params};
use super::memory::{MemoryProbe, MemorySource};
use super::peak::{measure_peak, PeakOptions, PeakResult};
use super::stats::Stats;
use super::timer::time_region;
use super::{dtype_name, BenchError, Computation, HostInfo};
use crate::model::config::GPT2_VOCAB_SIZE;
use crate::model::{LanguageModel, ModelConfig};
use crate::shards::loader::Batch;
use crate::train::config::{parse_compute_dtype, ComputeDtype, TrainConfig};
use crate::train::engine::{self, Autograd, Engine, EngineKind};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::LrSchedule;
use crate::train::step::{clip_grad_norm, micro_step, SingleProcess};

/// Micro-batch of a preset when `--batch` is not given (fits GPT-2 124M-350M fp32 on one 80 GB GPU, runs on a CPU).
pub const PRESET_MICRO_BATCH: usize = 8;
/// Micro-steps per optimizer step of a preset when `--total-batch` is not given: enough to exercise accumulation.
pub const PRESET_ACCUM_STEPS: usize = 2;

/// The preset names of `ModelConfig::preset`, plus the bench's size words.
pub fn canonical_preset(name: &str) -> &str {
    match name {
        "small" | "124m" => "gpt2-124m",
        "medium" | "350m" => "gpt2-350m",
        "large" | "774m" => "gpt2-774m",
        "xl" | "1558m" => "gpt2-1558m",
        other => other,
    }
}

/// A model to benchmark, with the batch shape it trains at by default.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchModel {
    /// The preset name or the config file's stem.
    pub label: String,
    /// Its training config (a preset's: the built-in defaults with the preset's model).
    pub base: TrainConfig,
    /// Where `base` came from, for errors.
    pub origin: String,
    /// A config file's total batch; None for a preset (then `PRESET_ACCUM_STEPS` micro-batches).
    pub total_batch: Option<usize>,
    /// The vocabulary the model is resolved for, as data's would be (the synthetic tokens are drawn from it): a
    /// preset's own (SmolLM2's 49,152 for `llama-smol135m`), GPT-2's for the others and for config files.
    pub data_vocab: usize,
}

impl BenchModel {
    /// A named preset (`gpt2-124m`, `small`, `350m`, `tiny`, ...): B = `PRESET_MICRO_BATCH`, T = min(1024, block).
    pub fn preset(name: &str) -> Result<BenchModel, BenchError> {
        let name = canonical_preset(name);
        let model = ModelConfig::preset(name)?;
        let t = model.block_size.min(1024);
        let overrides = [
            format!("model.preset={}", toml::Value::String(name.to_string())),
            format!("data.micro_batch={PRESET_MICRO_BATCH}"),
            format!("data.seq_len={t}"),
            format!("data.total_batch_tokens={}", PRESET_MICRO_BATCH * t * PRESET_ACCUM_STEPS),
        ];
        let base = TrainConfig::resolve(None, &overrides)?;
        Ok(BenchModel {
            label: name.to_string(),
            base,
            origin: format!("preset {name}"),
            total_batch: None,
            data_vocab: model.real_vocab_size,
        })
    }

    /// A training config file (configs/*.toml): its model, micro-batch, sequence length and total batch.
    pub fn file(path: &Path) -> Result<BenchModel, BenchError> {
        let base = TrainConfig::resolve(Some(path), &[])?;
        let label =
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        Ok(BenchModel {
            label,
            total_batch: Some(base.data.total_batch_tokens),
            data_vocab: GPT2_VOCAB_SIZE,
            origin: path.display().to_string(),
            base,
        })
    }
}

/// The grid. Empty `batches` / `seq_lens` / `dtypes` mean "each model's own" (its config's, or the preset defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub models: Vec<BenchModel>,
    pub seq_lens: Vec<usize>,
    pub batches: Vec<usize>,
    /// Tokens per optimizer step (train_step); None = the model's default.
    pub total_batch: Option<usize>,
    /// `fp32`, `bf16` or `auto`.
    pub dtypes: Vec<String>,
    pub warmups: Vec<usize>,
    /// Timed iterations per case.
    pub steps: usize,
    pub what: Vec<Computation>,
    /// Seeds the weights and the synthetic tokens.
    pub seed: u64,
    /// `[run] engine` for every case (None: each config's own, `auto` by default).
    pub engine: Option<String>,
}

/// One case, fully resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseSpec {
    pub label: String,
    /// The trainer's config for this case (B, T, total batch and dtype applied).
    pub cfg: TrainConfig,
    pub model: ModelConfig,
    pub dtype: ComputeDtype,
    /// The engine that runs it (`train::engine`), resolved as `train` resolves it.
    pub engine: EngineKind,
    pub what: Computation,
    pub warmup: usize,
    pub steps: usize,
    pub seed: u64,
}

/// Warm-up iterations per case when none are given.
pub const DEFAULT_WARMUP: usize = 3;

impl Plan {
    /// Fill every axis the command line left empty. Plain runs: the model is gpt2-124m on CUDA and tiny on CPU, the
    /// warm-up `DEFAULT_WARMUP`, every computation, and each model's own B, T and dtype. `sweep` runs the standard
    /// grid instead: models x computations x warm-up (0 = cold, and `DEFAULT_WARMUP`) x precision (fp32, bf16),
    /// with models gpt2-124m and gpt2-350m on CUDA (tiny on CPU). Axes that were given are kept as given.
    pub fn fill_defaults(&mut self, device: &Device, sweep: bool) -> Result<(), BenchError> {
        if self.models.is_empty() {
            let presets: &[&str] = match (device.is_cuda(), sweep) {
                (true, true) => &["gpt2-124m", "gpt2-350m"],
                (true, false) => &["gpt2-124m"],
                (false, _) => &["tiny"],
            };
            self.models = presets.iter().map(|p| BenchModel::preset(p)).collect::<Result<_, _>>()?;
        }
        if self.warmups.is_empty() {
            self.warmups = if sweep { vec![0, DEFAULT_WARMUP] } else { vec![DEFAULT_WARMUP] };
        }
        if self.dtypes.is_empty() && sweep {
            self.dtypes = vec!["fp32".into(), "bf16".into()];
        }
        if self.what.is_empty() {
            self.what = Computation::ALL.to_vec();
        }
        Ok(())
    }

    /// Every case, in grid order (model, T, B, dtype, warm-up, computation). Errors name the offending case.
    pub fn cases(&self, device: &Device) -> Result<Vec<CaseSpec>, BenchError> {
        if self.models.is_empty() {
            return Err(BenchError::Invalid("no model to benchmark: give --model PRESET or --config FILE".into()));
        }
        if self.steps == 0 {
            return Err(BenchError::Invalid("--steps must be at least 1 (the timed iterations)".into()));
        }
        if self.what.is_empty() || self.warmups.is_empty() {
            return Err(BenchError::Invalid("the plan needs at least one computation and one warm-up count".into()));
        }
        let or_default = |v: &[usize], d: usize| if v.is_empty() { vec![d] } else { v.to_vec() };
        let mut out = Vec::new();
        for src in &self.models {
            let d = &src.base.data;
            let dtypes = if self.dtypes.is_empty() { vec![src.base.run.dtype.clone()] } else { self.dtypes.clone() };
            for &t in &or_default(&self.seq_lens, d.seq_len) {
                for &b in &or_default(&self.batches, d.micro_batch) {
                    let preset_total = b.checked_mul(t).and_then(|bt| bt.checked_mul(PRESET_ACCUM_STEPS));
                    let Some(total) = self.total_batch.or(src.total_batch).or(preset_total) else {
                        return Err(BenchError::Invalid(format!(
                            "--batch {b} x --seq-len {t} tokens does not fit in 64 bits: lower them"
                        )));
                    };
                    for dtype_name in &dtypes {
                        let mut overrides = vec![
                            format!("data.micro_batch={b}"),
                            format!("data.seq_len={t}"),
                            format!("data.total_batch_tokens={total}"),
                            format!("run.dtype={}", toml::Value::String(dtype_name.clone())),
                        ];
                        if let Some(e) = &self.engine {
                            overrides.push(format!("run.engine={}", toml::Value::String(e.clone())));
                        }
                        let origin = format!("{} with B={b} T={t} total batch {total}", src.origin);
                        let cfg = TrainConfig::resolve_over(&src.base, &origin, None, &overrides)?;
                        cfg.grad_accum_steps(1)?;
                        let model = cfg.model.resolve(src.data_vocab)?;
                        // Sizes no machine can hold are refused with the plan (`--batch 1000000000000000`); whether
                        // a case fits this machine is judged when it runs (`run_case`), so the rest still run.
                        crate::train::memory::estimate(&model, b, t, &format!("bench {origin}"))?;
                        let dtype = parse_compute_dtype(dtype_name, device)?;
                        let engine = EngineKind::resolve(cfg.run.engine, &model, device, dtype)?;
                        for &warmup in &self.warmups {
                            for &what in &self.what {
                                out.push(CaseSpec {
                                    label: src.label.clone(),
                                    cfg: cfg.clone(),
                                    model: model.clone(),
                                    dtype,
                                    engine,
                                    what,
                                    warmup,
                                    steps: self.steps,
                                    seed: self.seed,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What a case is, known before it runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseInfo {
    pub model: String,
    pub arch: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    pub params: usize,
    pub what: Computation,
    pub dtype: String,
    /// `autograd` or `cuda`.
    pub engine: String,
    /// B.
    pub batch: usize,
    /// T.
    pub seq_len: usize,
    /// Tokens per optimizer step.
    pub total_batch: usize,
    /// Micro-steps per optimizer step (total_batch / (B T)).
    pub grad_accum: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Tokens one iteration processes: B T, or the total batch for train_step; None for optimizer_step.
    pub tokens_per_iter: Option<usize>,
    /// See `flops`; None for optimizer_step.
    pub flops_per_iter: Option<f64>,
}

impl CaseSpec {
    pub fn batch(&self) -> usize {
        self.cfg.data.micro_batch
    }

    pub fn seq_len(&self) -> usize {
        self.cfg.data.seq_len
    }

    pub fn total_batch(&self) -> usize {
        self.cfg.data.total_batch_tokens
    }

    /// Micro-steps per optimizer step, single process (validated when the case was made).
    pub fn grad_accum(&self) -> usize {
        self.total_batch() / (self.batch() * self.seq_len())
    }

    pub fn tokens_per_iter(&self) -> Option<usize> {
        match self.what {
            Computation::Forward | Computation::Backward | Computation::ForwardBackward => {
                Some(self.batch() * self.seq_len())
            }
            Computation::TrainStep => Some(self.total_batch()),
            Computation::OptimizerStep => None,
        }
    }

    /// `tiny B=4 T=64 fp32 autograd train_step warmup=3`.
    pub fn name(&self) -> String {
        format!(
            "{} B={} T={} {} {} {} warmup={}",
            self.label,
            self.batch(),
            self.seq_len(),
            dtype_name(self.dtype.dtype()),
            self.engine.name(),
            self.what.name(),
            self.warmup
        )
    }

    pub fn info(&self) -> CaseInfo {
        let m = &self.model;
        let tokens = self.tokens_per_iter();
        CaseInfo {
            model: self.label.clone(),
            arch: m.arch.spec().name.to_string(),
            n_layer: m.n_layer,
            n_head: m.n_head,
            n_embd: m.n_embd,
            vocab_size: m.vocab_size,
            params: total_params(m),
            what: self.what,
            dtype: dtype_name(self.dtype.dtype()).to_string(),
            engine: self.engine.name().to_string(),
            batch: self.batch(),
            seq_len: self.seq_len(),
            total_batch: self.total_batch(),
            grad_accum: self.grad_accum(),
            warmup: self.warmup,
            steps: self.steps,
            tokens_per_iter: tokens,
            flops_per_iter: tokens.and_then(|n| flops_per_iteration(self.what, m, self.seq_len(), n)),
        }
    }
}

/// What a case measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// Over the timed iterations, in milliseconds.
    pub time_ms: Stats,
    /// Every timed iteration, in order, in milliseconds.
    pub samples_ms: Vec<f64>,
    /// tokens_per_iter / median time.
    pub tokens_per_s: Option<f64>,
    /// flops_per_iter / median time, in TFLOP/s.
    pub tflops: Option<f64>,
    /// tflops / the measured peak.
    pub mfu: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_source: MemorySource,
    /// Mean cross-entropy of the last iteration (not for optimizer_step): ~ln(50257) = 10.8 on random tokens.
    pub loss: Option<f32>,
}

/// One row of the report: the case, and what it measured or why it failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseResult {
    #[serde(flatten)]
    pub info: CaseInfo,
    #[serde(flatten)]
    pub measurement: Option<Measurement>,
    pub error: Option<String>,
}

/// A whole bench run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub tool_version: String,
    pub host: HostInfo,
    pub peak: PeakResult,
    pub flops_accounting: String,
    pub cases: Vec<CaseResult>,
}

impl BenchReport {
    pub fn failures(&self) -> usize {
        self.cases.iter().filter(|c| c.error.is_some()).count()
    }
}

/// The accounting `flops` implements, stated in every report.
pub const FLOPS_ACCOUNTING: &str = "per token: forward+backward 6*N + 12*L*T*C (PaLM; N = matmul parameters, \
     tied embedding once, position table excluded); forward 1/3, backward 2/3; optimizer_step none";

/// Measure the peak, then run every case in order. A failing case (say, out of memory) is recorded with its error
/// and the rest still run. `progress` gets one line per event.
pub fn run_plan(
    cases: &[CaseSpec],
    device: &Device,
    peak: &PeakOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let mut host = HostInfo::capture(device);
    progress(&format!("measuring peak: {}^3 {} matmul on {}", peak.n, dtype_name(peak.dtype), host.device));
    let peak = measure_peak(device, peak)?;
    progress(&format!("peak: {:.3} TFLOP/s", peak.tflops));
    let mut results = Vec::with_capacity(cases.len());
    for (i, spec) in cases.iter().enumerate() {
        let info = spec.info();
        let result = match run_case(spec, device) {
            Ok(raw) => {
                let m = raw.into_measurement(&info, peak.tflops);
                progress(&format!(
                    "[{}/{}] {}: median {:.3} ms{}",
                    i + 1,
                    cases.len(),
                    spec.name(),
                    m.time_ms.median,
                    m.tokens_per_s.map(|t| format!(", {t:.0} tok/s")).unwrap_or_default()
                ));
                CaseResult { info, measurement: Some(m), error: None }
            }
            Err(e) => {
                progress(&format!("[{}/{}] {}: FAILED: {e}", i + 1, cases.len(), spec.name()));
                CaseResult { info, measurement: None, error: Some(e.to_string()) }
            }
        };
        results.push(result);
    }
    host.load_end = super::load_average();
    Ok(BenchReport {
        tool_version: crate::TOOL_VERSION.to_string(),
        host,
        peak,
        flops_accounting: FLOPS_ACCOUNTING.to_string(),
        cases: results,
    })
}

/// A case's raw timings, before derived figures.
pub struct RawMeasurement {
    pub samples_ms: Vec<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub memory_source: MemorySource,
    pub loss: Option<f32>,
}

impl RawMeasurement {
    /// Stats, tokens/s, TFLOP/s and MFU (against `peak_tflops`), all from the median time.
    pub fn into_measurement(self, info: &CaseInfo, peak_tflops: f64) -> Measurement {
        let time_ms = Stats::from_samples(&self.samples_ms).expect("a case times at least one finite iteration");
        let secs = time_ms.median / 1e3;
        let tokens_per_s = info.tokens_per_iter.map(|n| n as f64 / secs);
        let tflops = info.flops_per_iter.map(|f| f / secs / 1e12);
        let mfu = tflops.filter(|_| peak_tflops > 0.0).map(|t| t / peak_tflops);
        Measurement {
            time_ms,
            samples_ms: self.samples_ms,
            tokens_per_s,
            tflops,
            mfu,
            peak_memory_bytes: self.peak_memory_bytes,
            memory_source: self.memory_source,
            loss: self.loss,
        }
    }
}

/// Seeded synthetic token ids, uniform over the real vocabulary, as loader batches (each row of y is its row of x
/// shifted by one).
fn host_batches(count: usize, b: usize, t: usize, vocab: usize, seed: u64) -> Vec<Batch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let buf: Vec<u32> = (0..b * t + 1).map(|_| rng.gen_range(0..vocab as u32)).collect();
            Batch { x: buf[..b * t].to_vec(), y: buf[1..].to_vec(), batch_size: b, seq_len: t }
        })
        .collect()
}

/// `warmup` untimed then `steps` timed iterations. Each iteration: `prepare` (off the clock), `timed` (between two
/// synchronizations), then `after` (off the clock: what the iteration produced is dropped or kept there, so freeing
/// a forward graph is not charged to a forward-only case).
fn iterate<P, V>(
    device: &Device,
    warmup: usize,
    steps: usize,
    mut prepare: impl FnMut() -> Result<P, BenchError>,
    mut timed: impl FnMut(P) -> Result<V, BenchError>,
    mut after: impl FnMut(V) -> Result<(), BenchError>,
) -> Result<Vec<f64>, BenchError> {
    let mut samples = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let p = prepare()?;
        let (v, elapsed) = time_region(device, || timed(p))?;
        if i >= warmup {
            samples.push(elapsed.as_secs_f64() * 1e3);
        }
        after(v)?;
    }
    Ok(samples)
}

/// Run one case on `device`.
pub fn run_case(spec: &CaseSpec, device: &Device) -> Result<RawMeasurement, BenchError> {
    // What it needs, before anything of it is allocated (`--batch 1000000000` aborted in the allocator on CPU).
    crate::train::memory::check(&spec.model, spec.batch(), spec.seq_len(), device.is_cpu(), "this case")?;
    let probe = MemoryProbe::start(device);
    crate::device::set_tf32(spec.cfg.run.tf32);
    let model: Box<dyn LanguageModel> =
        crate::model::build_model(&spec.model, spec.dtype.precision(), device, spec.seed)?;
    let accum = spec.grad_accum();
    let (b, t) = (spec.batch(), spec.seq_len());
    let host_count = if spec.what == Computation::TrainStep { accum } else { 1 };
    let host = host_batches(host_count, b, t, spec.model.real_vocab_size, spec.seed);
    let adam = AdamWConfig::from_config(&spec.cfg);
    let mut engine = engine::build(spec.engine, model, device, (b, t), adam, &spec.cfg.engine)?;
    let (samples, loss) = match engine.as_autograd() {
        Some(autograd) if spec.what != Computation::TrainStep => autograd_pieces(spec, device, autograd, &host[0])?,
        _ => engine_pieces(spec, device, &mut *engine, &host)?,
    };
    if let Some(l) = loss.filter(|l| !l.is_finite()) {
        return Err(BenchError::NonFinite { case: spec.name(), loss: l });
    }
    Ok(RawMeasurement {
        samples_ms: samples,
        peak_memory_bytes: probe.peak_bytes(),
        memory_source: probe.source(),
        loss,
    })
}

/// The pieces of a step through the `Engine` calls `train` makes: train_step is `engine::optimizer_step` (both
/// engines); for the explicit engine, forward is its evaluation forward (upload + forward + loss), forward_backward
/// one `micro_step`, optimizer_step one `finish_step` over one micro-batch's gradients, and backward alone is not
/// separable (an error: time forward_backward).
fn engine_pieces(
    spec: &CaseSpec,
    device: &Device,
    engine: &mut dyn Engine,
    host: &[Batch],
) -> Result<(Vec<f64>, Option<f32>), BenchError> {
    let (w, n, accum) = (spec.warmup, spec.steps, spec.grad_accum());
    let schedule = LrSchedule::from_config(&spec.cfg);
    let clip = spec.cfg.optim.grad_clip;
    let mut loss = None;
    let mut step = 0;
    let samples = match spec.what {
        Computation::Forward => iterate(
            device,
            w,
            n,
            || Ok(()),
            |()| Ok(engine.eval_loss(&host[0])?),
            |l| {
                loss = Some(l);
                Ok(())
            },
        )?,
        Computation::Backward => {
            return Err(BenchError::Invalid(format!(
                "the {} engine runs forward and backward as one micro-step: time forward_backward (and forward)",
                spec.engine.name()
            )))
        }
        Computation::ForwardBackward => {
            // Gradients keep accumulating over the iterations, as over a step's micro-steps.
            engine.begin_step()?;
            iterate(device, w, n, || Ok(()), |()| Ok(engine.micro_step(&host[0], accum)?), |()| Ok(()))?
        }
        Computation::OptimizerStep => {
            engine.begin_step()?;
            engine.micro_step(&host[0], accum)?;
            iterate(
                device,
                w,
                n,
                || Ok(()),
                |()| {
                    let o = engine.finish_step(schedule.lr(step), clip, &SingleProcess)?;
                    step += 1;
                    Ok(o)
                },
                |_| Ok(()),
            )?
        }
        Computation::TrainStep => iterate(
            device,
            w,
            n,
            || Ok(()),
            |()| {
                let o = engine::optimizer_step(
                    engine,
                    accum,
                    &SingleProcess,
                    schedule.lr(step),
                    clip,
                    |k| Ok::<_, BenchError>(host[k].clone()),
                    |loss| BenchError::NonFinite { case: spec.name(), loss },
                )?;
                step += 1;
                Ok(o.loss)
            },
            |l| {
                loss = Some(l);
                Ok(())
            },
        )?,
    };
    Ok((samples, loss))
}

/// forward / backward / forward_backward / optimizer_step of the autograd engine, piece by piece on its model
/// (`step::micro_step`'s halves, `clip_grad_norm` + `AdamW::step`).
fn autograd_pieces(
    spec: &CaseSpec,
    device: &Device,
    engine: &mut Autograd,
    batch: &Batch,
) -> Result<(Vec<f64>, Option<f32>), BenchError> {
    let model = engine.model();
    let params = model.parameters();
    let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let accum = spec.grad_accum();
    let (w, n) = (spec.warmup, spec.steps);
    let (x, y) = engine::upload(batch, device)?;
    // The last iteration's mean loss (detached; fetched to the host after the timed loop).
    let mut last_loss: Option<Tensor> = None;
    let mut keep = |l: Tensor| -> Result<(), BenchError> {
        last_loss = Some(l.detach());
        Ok(())
    };
    let samples = match spec.what {
        Computation::Forward => {
            iterate(device, w, n, || Ok(()), |()| Ok(model.loss(&x, &y)?.to_dtype(DType::F32)?), &mut keep)?
        }
        Computation::Backward => iterate(
            device,
            w,
            n,
            // micro_step's forward half, off the clock.
            || Ok((model.loss(&x, &y)?.to_dtype(DType::F32)? / accum as f64)?),
            // micro_step's backward half: backward, take the parameters' gradients, drop the rest.
            |l| {
                let mut store = l.backward()?;
                let grads: Vec<Option<Tensor>> = vars.iter().map(|p| store.remove(p.as_tensor())).collect();
                Ok((l.detach(), grads))
            },
            |(l, _grads)| keep((l * accum as f64)?),
        )?,
        Computation::ForwardBackward => iterate(
            device,
            w,
            n,
            || Ok(()),
            |()| Ok(micro_step(model, &vars, &x, &y, accum)?),
            |(l, _grads)| keep((l * accum as f64)?),
        )?,
        Computation::OptimizerStep => {
            let mut opt = AdamW::new(params.clone(), AdamWConfig::from_config(&spec.cfg))?;
            let schedule = LrSchedule::from_config(&spec.cfg);
            // One micro-batch's gradients, computed once; every iteration clips and applies (a copy of) them.
            let (_, grads) = micro_step(model, &vars, &x, &y, accum)?;
            let mut step = 0;
            iterate(
                device,
                w,
                n,
                || Ok(grads.clone()),
                |mut g| {
                    clip_grad_norm(&mut g, spec.cfg.optim.grad_clip)?;
                    opt.step(&g, schedule.lr(step))?;
                    step += 1;
                    Ok(())
                },
                |()| Ok(()),
            )?
        }
        Computation::TrainStep => unreachable!("train_step runs through engine_pieces"),
    };
    let loss = last_loss.map(|l| l.to_scalar::<f32>()).transpose()?;
    Ok((samples, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_plan() -> Plan {
        Plan {
            models: vec![BenchModel::preset("tiny").unwrap()],
            seq_lens: vec![16],
            batches: vec![2],
            total_batch: None,
            dtypes: vec!["fp32".into()],
            warmups: vec![1],
            steps: 2,
            what: Computation::ALL.to_vec(),
            seed: 1,
            engine: None,
        }
    }

    #[test]
    fn presets_and_grid_order() {
        let src = BenchModel::preset("small").unwrap();
        assert_eq!(src.label, "gpt2-124m");
        assert_eq!((src.base.data.micro_batch, src.base.data.seq_len), (PRESET_MICRO_BATCH, 1024));
        let tiny = BenchModel::preset("tiny").unwrap();
        assert_eq!(tiny.base.data.seq_len, 64);
        let mut plan = tiny_plan();
        plan.batches = vec![1, 2];
        plan.warmups = vec![0, 1];
        let cases = plan.cases(&Device::Cpu).unwrap();
        assert_eq!(cases.len(), 2 * 2 * 5);
        assert_eq!((cases[0].batch(), cases[0].warmup, cases[0].what), (1, 0, Computation::Forward));
        assert_eq!((cases[5].batch(), cases[5].warmup), (1, 1));
        assert_eq!((cases[10].batch(), cases[10].total_batch(), cases[10].grad_accum()), (2, 64, 2));
    }

    #[test]
    fn sweep_fills_the_standard_grid_and_keeps_given_axes() {
        let empty = Plan {
            models: vec![],
            seq_lens: vec![],
            batches: vec![],
            total_batch: None,
            dtypes: vec![],
            warmups: vec![],
            steps: 1,
            what: vec![],
            seed: 1,
            engine: None,
        };
        let mut sweep = empty.clone();
        sweep.fill_defaults(&Device::Cpu, true).unwrap();
        assert_eq!(sweep.models.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(), ["tiny"]);
        assert_eq!(
            (sweep.warmups.clone(), sweep.dtypes.clone()),
            (vec![0, DEFAULT_WARMUP], vec!["fp32".into(), "bf16".into()])
        );
        assert_eq!(sweep.what, Computation::ALL.to_vec());
        assert_eq!(sweep.cases(&Device::Cpu).unwrap().len(), 5 * 2 * 2);
        let mut plain = empty.clone();
        plain.fill_defaults(&Device::Cpu, false).unwrap();
        assert_eq!((plain.warmups.clone(), plain.dtypes.len(), plain.what.len()), (vec![DEFAULT_WARMUP], 0, 5));
        // tiny's preset dtype is `auto`: fp32 on CPU.
        assert!(plain.cases(&Device::Cpu).unwrap().iter().all(|c| c.dtype == ComputeDtype::F32));
        let mut given = empty;
        given.what = vec![Computation::TrainStep];
        given.warmups = vec![7];
        given.fill_defaults(&Device::Cpu, true).unwrap();
        assert_eq!((given.what, given.warmups), (vec![Computation::TrainStep], vec![7]));
    }

    #[test]
    fn impossible_cases_are_errors_before_running() {
        let mut plan = tiny_plan();
        plan.seq_lens = vec![128];
        let err = plan.cases(&Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("seq_len 128") && err.contains("block_size 64"), "{err}");
        let mut plan = tiny_plan();
        plan.total_batch = Some(100);
        let err = plan.cases(&Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("total_batch_tokens 100"), "{err}");
        assert!(BenchModel::preset("gpt5").unwrap_err().to_string().contains("gpt5"));
    }

    #[test]
    fn every_computation_runs_on_cpu() {
        let plan = tiny_plan();
        for spec in plan.cases(&Device::Cpu).unwrap() {
            let raw = run_case(&spec, &Device::Cpu).unwrap();
            assert_eq!(raw.samples_ms.len(), 2, "{}", spec.name());
            assert!(raw.samples_ms.iter().all(|&ms| ms > 0.0), "{}", spec.name());
            match (spec.what, raw.loss) {
                (Computation::OptimizerStep, None) => {}
                // Uniform random targets: the loss of a fresh model is near ln(50257) = 10.8.
                (_, Some(l)) => assert!((l - 10.8).abs() < 1.0, "{}: loss {l}", spec.name()),
                (w, l) => panic!("{w:?}: loss {l:?}"),
            }
        }
    }
}
