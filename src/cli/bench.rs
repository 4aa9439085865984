//! `tokenmill bench`: time forward / backward / forward_backward / optimizer_step / train_step for model presets or
//! config files over batch sizes, context lengths, dtypes and warm-up counts (the cartesian product of every list
//! flag), and `tokenmill bench compare`: tokenmill's train_step against the PyTorch reference at the same settings.
//!
//! ```text
//! tokenmill bench --model tiny --device cpu --batch 4 --seq-len 64 --warmup 2 --steps 5
//! tokenmill bench --model small --model medium --batch 16 --seq-len 1024 --dtype bf16 --device cuda
//! tokenmill bench --config configs/gpt2-124m.toml --what train_step --device cuda --json bench.json
//! tokenmill bench --sweep --device cuda --csv sweep.csv          # models x computations x warm-up x dtype
//! tokenmill bench compare --model small --batch 16 --seq-len 1024 --total-batch 524288 --device cuda
//! tokenmill bench gemm-tune --model llama-124m --batch 64 --out h100-gemm.toml   # then [engine] gemm_table
//! ```
//! Progress goes to stderr, the table to stdout (to stderr when `--json -` or `--csv -` takes stdout).

use std::path::PathBuf;

use anyhow::Context;

use crate::bench::compare::{compare, comparison_table, ReferenceOptions};
use crate::bench::peak::PeakOptions;
use crate::bench::report::{check_dest, csv, json, table, write_to, OutputKind};
use crate::bench::runner::{BenchModel, Plan, DEFAULT_WARMUP};
use crate::bench::{run_plan, Computation};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub grid: GridArgs,
}

// Parsed once per process (see `cli::Command`): the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time tokenmill's train_step, then the PyTorch reference (build-nanogpt's recipe) at the same B, T, total
    /// batch, warm-up and steps; print both and the tokens/s ratio.
    Compare(CompareArgs),
    /// Time the flash-attention kernels alone (forward, backward and each backward kernel; CUDA events, medians)
    /// at GPT-2 124M attention shapes; scripts/attn-bench.sh sets them beside PyTorch's SDPA.
    Attention(AttentionArgs),
    /// Time every cuBLASLt candidate of each matmul shape of the engine's micro-step on this GPU and write the
    /// fastest per shape to a table (`[engine] gemm_table = "FILE"` or TOKENMILL_GEMM_TABLE=FILE uses it).
    GemmTune(GemmTuneArgs),
}

#[derive(clap::Args, Debug)]
pub struct GemmTuneArgs {
    /// Model presets whose products to tune (shapes they share are timed once).
    #[arg(long = "model", value_name = "PRESET", value_delimiter = ',', default_value = "gpt2-124m")]
    pub models: Vec<String>,
    /// Micro-batch B (the table holds the shapes of this B x T: tune at the B you train with).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1024)]
    pub seq_len: usize,
    /// Timed runs per candidate algorithm (after one untimed).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Seeds the weights and the tokens.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Where to write the table (TOML).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    /// Time every compiled launch variant, not only the default.
    #[arg(long)]
    pub variants: bool,
    /// Implementations to time: tokenmill's flash kernels, cuDNN's SDPA (a `--features cudnn` build), or both
    /// [default: both in a cudnn build, else native].
    #[arg(long, value_enum)]
    pub backend: Option<crate::bench::attention::Backend>,
    /// Untimed runs before the timed ones, per kernel.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed runs per kernel (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
}

#[derive(clap::Args, Debug)]
pub struct GridArgs {
    /// Model preset: gpt2-124m (small, 124m), gpt2-350m (medium, 350m), gpt2-774m, gpt2-1558m, tiny, llama-124m,
    /// llama-1b, llama-smol135m, llama-tiny, qwen2-tiny. Repeatable. Default: gpt2-124m on CUDA, tiny on CPU (with
    /// --sweep: 124m and 350m on CUDA).
    #[arg(long = "model", value_name = "PRESET", value_delimiter = ',')]
    pub models: Vec<String>,
    /// A training config file (configs/*.toml): its model, micro-batch, seq_len and total batch. Repeatable.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Micro-batch sizes B [default: the config's; 8 for a preset].
    #[arg(long = "batch", value_name = "B", value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// Context lengths T [default: the config's; min(1024, block_size) for a preset].
    #[arg(long = "seq-len", value_name = "T", value_delimiter = ',')]
    pub seq_lens: Vec<usize>,
    /// Compute dtypes: fp32, bf16, auto (bf16 on CUDA) [default: the config's run.dtype (auto for a preset); with
    /// --sweep: fp32,bf16].
    #[arg(long = "dtype", value_delimiter = ',')]
    pub dtypes: Vec<String>,
    /// Untimed iterations before the timed ones [default: 3; with --sweep: 0,3].
    #[arg(long = "warmup", value_name = "N", value_delimiter = ',')]
    pub warmups: Vec<usize>,
    /// Timed iterations per case.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub steps: usize,
    /// Tokens per optimizer step for train_step (gradient accumulation makes up the rest) [default: the config's
    /// total_batch_tokens; 2 micro-batches for a preset].
    #[arg(long, value_name = "TOKENS")]
    pub total_batch: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Computations: forward, backward, forward_backward, optimizer_step, train_step or all [default: all].
    #[arg(long, value_delimiter = ',')]
    pub what: Vec<String>,
    /// Run the standard grid: every axis not given takes all its standard values (see the defaults above).
    #[arg(long)]
    pub sweep: bool,
    /// Write the whole report (every sample) as JSON to FILE, or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<String>,
    /// Write one CSV row per case to FILE, or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub csv: Option<String>,
    /// Side of the square matmul that measures the peak [default: 8192 (bf16) on CUDA, 1024 (fp32) on CPU].
    #[arg(long, value_name = "N")]
    pub peak_size: Option<usize>,
    /// Seeds the weights and the synthetic tokens.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Training engine: auto (cuda for a model it supports in bf16 on CUDA, else autograd), autograd or cuda
    /// [default: the config's run.engine, auto].
    #[arg(long)]
    pub engine: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Model preset (as `tokenmill bench --model`) [default: gpt2-124m on CUDA, tiny on CPU].
    #[arg(long, conflicts_with = "config")]
    pub model: Option<String>,
    /// A training config file instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Micro-batch size B [default: the config's; 8 for a preset].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Context length T [default: the config's; min(1024, block_size) for a preset].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Tokens per optimizer step [default: the config's; 2 micro-batches for a preset].
    #[arg(long, value_name = "TOKENS")]
    pub total_batch: Option<usize>,
    /// fp32, bf16 or auto (bf16 on CUDA); the reference uses bf16 autocast for bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Untimed steps on both sides (the reference compiles during them).
    #[arg(long, default_value_t = DEFAULT_WARMUP)]
    pub warmup: usize,
    /// Timed steps on both sides.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training engine: auto (cuda for a model it supports in bf16 on CUDA, else autograd), autograd or cuda
    /// [default: the config's run.engine, auto].
    #[arg(long)]
    pub engine: Option<String>,
    /// The reference script [default: reference/train_gpt2_ref.py for GPT-2, reference/train_llama_ref.py (HF
    /// transformers' LlamaForCausalLM) for Llama-style models].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The Python interpreter that has torch.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// torch.compile the reference [default: on CUDA].
    #[arg(long, conflicts_with = "no_compile")]
    pub compile: bool,
    /// Run the reference eagerly [default: on CPU].
    #[arg(long)]
    pub no_compile: bool,
    /// An extra argument for the reference script, e.g. --reference-arg=--no-tf32 (repeatable).
    #[arg(long = "reference-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub reference_args: Vec<String>,
    /// Write both results and the ratio as JSON to FILE, or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<String>,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Compare(a)) => run_compare(a),
        Some(BenchCommand::Attention(a)) => {
            let backend = a.backend.unwrap_or_else(crate::bench::attention::Backend::default_for_build);
            let (rows, device) = crate::bench::attention::run(a.variants, backend, a.warmup, a.reps)?;
            println!("flash attention, bf16, causal, on {device}:");
            print!("{}", crate::bench::attention::report(&rows));
            print!("{}", crate::bench::attention::machine_lines(&rows, &crate::bench::attention::default_label()));
            Ok(())
        }
        Some(BenchCommand::GemmTune(a)) => {
            if a.batch == 0 || a.seq_len == 0 || a.reps == 0 {
                anyhow::bail!("bench gemm-tune: --batch, --seq-len and --reps must be positive");
            }
            let device = crate::device::open(&a.device)?;
            // The table replaces only a gemm table (`crate::output`).
            crate::output::check_file(&a.out, "a gemm table (bench gemm-tune)", |p| {
                crate::cuda::gemm_table::GemmTable::load(p).is_ok()
            })?;
            let spec = crate::bench::gemm_tune::TuneSpec {
                presets: a.models.clone(),
                batch: a.batch,
                seq_len: a.seq_len,
                reps: a.reps,
                seed: a.seed,
            };
            let table = crate::bench::gemm_tune::tune(&spec, &device, &a.out)?;
            print!("{}", crate::bench::gemm_tune::report(&table));
            println!("wrote {}", a.out.display());
            Ok(())
        }
        None => run_grid(args.grid),
    }
}

/// The peak matmul holds an f32 matrix while converting, then two n x n inputs and the product in its dtype: refuse a
/// `--peak-size` whose matrices do not fit the memory available (on CPU, /proc/meminfo's MemAvailable), up front and
/// in one line, instead of aborting on the allocation with a backtrace.
fn check_peak_size(device: &candle_core::Device, opts: &PeakOptions) -> anyhow::Result<()> {
    let n = opts.n as u128;
    let need = n * n * (4 + 3 * opts.dtype.size_in_bytes() as u128);
    let available = if device.is_cpu() { crate::train::memory::mem_available_bytes() } else { None };
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    if let Some(avail) = available.filter(|&a| need > a as u128) {
        anyhow::bail!(
            "--peak-size {}: the peak matmul needs {:.1} GiB ({} x {} {:?} matrices), more than the {:.1} GiB of memory \
             available; pick a smaller --peak-size (the default on this device is {})",
            opts.n,
            gib(need),
            opts.n,
            opts.n,
            opts.dtype,
            gib(avail as u128),
            PeakOptions::for_device(device, None).n
        );
    }
    Ok(())
}

fn progress(line: &str) {
    eprintln!("{line}");
}

fn run_grid(a: GridArgs) -> anyhow::Result<()> {
    let device = crate::device::open(&a.device)?;
    check_peak_size(&device, &PeakOptions::for_device(&device, a.peak_size))?;
    let mut models = Vec::new();
    for p in &a.models {
        models.push(BenchModel::preset(p).with_context(|| format!("--model {p}"))?);
    }
    for c in &a.configs {
        models.push(BenchModel::file(c).with_context(|| format!("--config {}", c.display()))?);
    }
    let mut plan = Plan {
        models,
        seq_lens: a.seq_lens.clone(),
        batches: a.batches.clone(),
        total_batch: a.total_batch,
        dtypes: a.dtypes.clone(),
        warmups: a.warmups.clone(),
        steps: a.steps,
        what: Computation::parse_list(&a.what)?,
        seed: a.seed,
        engine: a.engine.clone(),
    };
    plan.fill_defaults(&device, a.sweep)?;
    let cases = plan.cases(&device)?;
    if a.json.as_deref() == Some("-") && a.csv.as_deref() == Some("-") {
        anyhow::bail!("--json - and --csv - both want stdout: send one of them to a file");
    }
    // Before anything runs: an output that would replace a file bench did not write is refused now, not after.
    if let Some(dest) = &a.json {
        check_dest(dest, OutputKind::Json)?;
    }
    if let Some(dest) = &a.csv {
        check_dest(dest, OutputKind::Csv)?;
    }
    progress(&format!("{} cases", cases.len()));
    let report = run_plan(&cases, &device, &PeakOptions::for_device(&device, a.peak_size), &mut |l| progress(l))?;

    let text = table(&report);
    if a.json.as_deref() == Some("-") || a.csv.as_deref() == Some("-") {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    if let Some(dest) = &a.json {
        write_to(dest, &json(&report), OutputKind::Json)?;
    }
    if let Some(dest) = &a.csv {
        write_to(dest, &csv(&report), OutputKind::Csv)?;
    }
    let failed = report.failures();
    if failed > 0 {
        anyhow::bail!("{failed} of {} cases failed (see the table)", report.cases.len());
    }
    Ok(())
}

fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let device = crate::device::open(&a.device)?;
    let source = match (&a.model, &a.config) {
        (_, Some(c)) => BenchModel::file(c).with_context(|| format!("--config {}", c.display()))?,
        (Some(m), None) => BenchModel::preset(m).with_context(|| format!("--model {m}"))?,
        (None, None) => BenchModel::preset(if device.is_cuda() { "gpt2-124m" } else { "tiny" })?,
    };
    let plan = Plan {
        models: vec![source],
        seq_lens: a.seq_len.into_iter().collect(),
        batches: a.batch.into_iter().collect(),
        total_batch: a.total_batch,
        dtypes: vec![a.dtype.clone()],
        warmups: vec![a.warmup],
        steps: a.steps,
        what: vec![Computation::TrainStep],
        seed: a.seed,
        engine: a.engine.clone(),
    };
    let cases = plan.cases(&device)?;
    if let Some(dest) = &a.json {
        check_dest(dest, OutputKind::Json)?;
    }
    let [spec] = cases.as_slice() else { unreachable!("one model, one shape, one dtype: one case") };
    let opts = ReferenceOptions {
        python: a.python.clone(),
        script: match a.reference.clone().or_else(|| crate::bench::compare::default_reference(&spec.model)) {
            Some(script) => script,
            None => anyhow::bail!(
                "bench compare: no reference script for arch {} yet (reference/train_llama_ref.py builds \
                 LlamaForCausalLM, without q/k/v biases); pass --reference SCRIPT",
                spec.model.arch.spec().name
            ),
        },
        compile: if a.compile || a.no_compile { a.compile } else { device.is_cuda() },
        extra_args: a.reference_args.clone(),
    };
    let cmp = compare(spec, &device, &opts, &mut |l| progress(l))?;
    let text = comparison_table(&cmp);
    if a.json.as_deref() == Some("-") {
        eprint!("{text}");
        write_to("-", &(serde_json::to_string_pretty(&cmp)? + "\n"), OutputKind::Json)?;
    } else {
        print!("{text}");
        if let Some(dest) = &a.json {
            write_to(dest, &(serde_json::to_string_pretty(&cmp)? + "\n"), OutputKind::Json)?;
        }
    }
    Ok(())
}
