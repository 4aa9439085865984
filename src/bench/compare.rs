//! `tokenmill bench compare`: tokenmill's full training step against the PyTorch reference on the same machine, in
//! one invocation, at the same B, T, total batch, warm-up and timed steps, and the ratio of their tokens/s.
//!
//! The reference is reference/train_gpt2_ref.py for GPT-2 (build-nanogpt's recipe: torch.compile, bf16 autocast,
//! scaled_dot_product_attention, fused AdamW) and reference/train_llama_ref.py for Llama-style models (HF
//! transformers' LlamaForCausalLM with sdpa attention, the same recipe), run as a subprocess after tokenmill's case
//! has finished and freed its memory. It prints human-readable progress on stderr (passed through) and one JSON object as the last line of
//! stdout, of which `tokens_per_s` (total batch / median step time, timed between `torch.cuda.synchronize()` calls)
//! is compared with tokenmill's tokens/s (total batch / median step time, `timer`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{Device, DeviceLocation};
use serde::Serialize;

use super::report::{fmt_bytes, fmt_ms, fmt_thousands};
use super::runner::{run_case, CaseResult, CaseSpec};
use super::{dtype_name, BenchError, Computation, HostInfo};
use crate::model::arch::Positions;
use crate::model::ModelConfig;

/// How to run the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceOptions {
    /// The interpreter (`python3`, a venv's python).
    pub python: String,
    pub script: PathBuf,
    /// torch.compile the model (the recipe; the first warm-up steps pay the compilation).
    pub compile: bool,
    /// Appended to the generated arguments (e.g. `--no-tf32` to compare full-fp32 matmuls, with
    /// a config with `run.tf32 = false` on tokenmill's side; both use TF32 by default, as the recipe does).
    pub extra_args: Vec<String>,
}

/// What the reference reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceResult {
    pub tokens_per_s: f64,
    pub ms_per_step_median: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    /// The whole JSON object it printed.
    pub raw: serde_json::Value,
}

/// Both sides and their ratio.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub host: HostInfo,
    pub tokenmill: CaseResult,
    pub reference: ReferenceResult,
    /// The command line the reference ran with.
    pub reference_command: Vec<String>,
    /// tokenmill tokens/s / reference tokens/s (> 1: tokenmill is faster).
    pub ratio: f64,
}

/// The device as the reference's `--device` takes it.
fn torch_device(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { .. } => "mps".to_string(),
    }
}

/// The reference script for a model's architecture: GPT-2's, or Llama's (`LlamaForCausalLM`, no biases) for a
/// rotary row without biases; `None` where there is none yet (Qwen2's q/k/v biases).
pub fn default_reference(model: &ModelConfig) -> Option<PathBuf> {
    let row = model.arch.spec();
    match (row.positions, row.biases.qkv) {
        (Positions::Learned, _) => Some("reference/train_gpt2_ref.py".into()),
        (Positions::Rotary, false) => Some("reference/train_llama_ref.py".into()),
        (Positions::Rotary, true) => None,
    }
}

/// The reference's arguments for `spec`: the same model sizes (for Llama-style models also the KV heads, MLP width,
/// rotary theta and head tying), batch shape, steps, dtype and seed.
pub fn reference_args(spec: &CaseSpec, device: &Device, compile: bool) -> Vec<String> {
    let m = &spec.model;
    let mut args: Vec<String> = [
        ("--n-layer", m.n_layer),
        ("--n-head", m.n_head),
        ("--n-embd", m.n_embd),
        ("--block-size", m.block_size),
        ("--vocab-size", m.vocab_size),
        ("--batch", spec.batch()),
        ("--seq-len", spec.seq_len()),
        ("--total-batch", spec.total_batch()),
        ("--steps", spec.steps),
        ("--warmup", spec.warmup),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    if m.arch.spec().positions == Positions::Rotary {
        args.extend([
            "--n-kv-head".to_string(),
            m.kv_heads().to_string(),
            "--ffn-hidden".to_string(),
            m.hidden().to_string(),
            "--rope-theta".to_string(),
            m.rope_base().to_string(),
        ]);
        if !m.tied() {
            args.push("--untied".to_string());
        }
    }
    args.extend([
        "--dtype".to_string(),
        dtype_name(spec.dtype.dtype()).to_string(),
        "--device".to_string(),
        torch_device(device),
        "--seed".to_string(),
        spec.seed.to_string(),
        if compile { "--compile" } else { "--no-compile" }.to_string(),
    ]);
    args
}

/// The reference's result: the last stdout line that is a JSON object with a numeric `tokens_per_s`.
pub fn parse_reference_output(stdout: &str) -> Option<ReferenceResult> {
    stdout.lines().rev().find_map(|line| {
        let raw: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let tokens_per_s = raw.get("tokens_per_s")?.as_f64()?;
        Some(ReferenceResult {
            tokens_per_s,
            ms_per_step_median: raw.get("ms_per_step_median").and_then(|v| v.as_f64()),
            peak_memory_bytes: raw.get("peak_memory_bytes").and_then(|v| v.as_u64()),
            raw,
        })
    })
}

/// Run the reference with `args`; its stderr goes to ours.
pub fn run_reference(opts: &ReferenceOptions, args: &[String]) -> Result<ReferenceResult, BenchError> {
    let command = std::iter::once(opts.python.clone())
        .chain(std::iter::once(opts.script.display().to_string()))
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let err = |message: String| BenchError::Reference { command: command.clone(), message };
    if !Path::new(&opts.script).is_file() {
        return Err(err(format!("{} is not a file", opts.script.display())));
    }
    let out = Command::new(&opts.python)
        .arg(&opts.script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| err(format!("could not start `{}`: {e}", opts.python)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let tail: Vec<&str> = stdout.lines().rev().take(5).collect();
        return Err(err(format!("exited with {}; last stdout lines: {:?}", out.status, tail)));
    }
    parse_reference_output(&stdout)
        .ok_or_else(|| err("printed no JSON line with a numeric `tokens_per_s` on stdout".to_string()))
}

/// Run tokenmill's `spec` (a train_step case), then the reference at the same settings; `progress` gets a line
/// per phase.
pub fn compare(
    spec: &CaseSpec,
    device: &Device,
    opts: &ReferenceOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    if spec.what != Computation::TrainStep {
        return Err(BenchError::Invalid(format!("compare times train_step, not {}", spec.what.name())));
    }
    let mut host = HostInfo::capture(device);
    progress(&format!("tokenmill: {}", spec.name()));
    let info = spec.info();
    // No peak is measured here: the comparison is a ratio of tokens/s, MFU is `tokenmill bench`'s job.
    let measurement = run_case(spec, device)?.into_measurement(&info, 0.0);
    let ours = measurement.tokens_per_s.expect("train_step processes tokens");
    progress(&format!(
        "tokenmill: median {} ms/step, {} tok/s",
        fmt_ms(measurement.time_ms.median),
        fmt_thousands(ours)
    ));
    // tokenmill's pool keeps the memory it freed (device::cuda_pool); the reference needs it on the same GPU.
    crate::device::cuda_pool::release_cached_memory(device).map_err(BenchError::Invalid)?;
    let mut args = reference_args(spec, device, opts.compile);
    args.extend(opts.extra_args.iter().cloned());
    progress(&format!("reference: {} {} {}", opts.python, opts.script.display(), args.join(" ")));
    let reference = run_reference(opts, &args)?;
    host.load_end = super::load_average();
    let mut reference_command = vec![opts.python.clone(), opts.script.display().to_string()];
    reference_command.extend(args);
    Ok(Comparison {
        host,
        ratio: ours / reference.tokens_per_s,
        tokenmill: CaseResult { info, measurement: Some(measurement), error: None },
        reference,
        reference_command,
    })
}

/// The comparison for people.
pub fn comparison_table(c: &Comparison) -> String {
    let mut out = String::new();
    let i = &c.tokenmill.info;
    let load = |x: Option<f64>| x.map(|l| format!("{l:.2}")).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "# bench compare on {} ({}), load average {} -> {}",
        c.host.device,
        c.host.cpu.as_deref().unwrap_or("unknown CPU"),
        load(c.host.load_start),
        load(c.host.load_end)
    );
    let _ = writeln!(
        out,
        "# {} L={} NH={} C={} V={}, B={} T={} total batch {} ({} micro-steps), {}, warmup {} + {} timed steps",
        i.model,
        i.n_layer,
        i.n_head,
        i.n_embd,
        i.vocab_size,
        i.batch,
        i.seq_len,
        i.total_batch,
        i.grad_accum,
        i.dtype,
        i.warmup,
        i.steps
    );
    let m = c.tokenmill.measurement.as_ref().expect("a comparison holds a measured case");
    let r = &c.reference;
    let rows = [
        ("tokenmill".to_string(), Some(m.time_ms.median), m.tokens_per_s.unwrap_or(0.0), m.peak_memory_bytes),
        (
            format!("reference ({})", r.raw.get("impl").and_then(|v| v.as_str()).unwrap_or("python")),
            r.ms_per_step_median,
            r.tokens_per_s,
            r.peak_memory_bytes,
        ),
    ];
    let _ = writeln!(out, "{:<22} {:>12} {:>14} {:>12}", "impl", "ms/step", "tok/s", "peak mem");
    for (name, ms, tps, mem) in rows {
        let _ = writeln!(
            out,
            "{:<22} {:>12} {:>14} {:>12}",
            name,
            ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
            fmt_thousands(tps),
            mem.map(fmt_bytes).unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(out, "ratio (tokenmill / reference tok/s): {:.3}x", c.ratio);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cases_run_the_llama_reference_with_its_shape() {
        use super::super::runner::BenchModel;
        use crate::bench::Plan;
        let plan = |preset: &str| Plan {
            models: vec![BenchModel::preset(preset).unwrap()],
            seq_lens: vec![],
            batches: vec![],
            total_batch: None,
            dtypes: vec!["fp32".into()],
            warmups: vec![1],
            steps: 2,
            what: vec![Computation::TrainStep],
            seed: 1,
            engine: None,
        };
        let cases = plan("llama-tiny").cases(&Device::Cpu).unwrap();
        let spec = &cases[0];
        assert_eq!(default_reference(&spec.model), Some(PathBuf::from("reference/train_llama_ref.py")));
        let args = reference_args(spec, &Device::Cpu, false).join(" ");
        assert!(args.contains("--n-kv-head 2 --ffn-hidden 192 --rope-theta 10000"), "{args}");
        assert!(!args.contains("--untied"), "{args}");
        // SmolLM2-135M's shape reaches HF's LlamaForCausalLM whole: GQA 9/3, H 1536, theta 100000, its vocabulary.
        let cases = plan("llama-smol135m").cases(&Device::Cpu).unwrap();
        let args = reference_args(&cases[0], &Device::Cpu, false).join(" ");
        assert!(args.contains("--n-layer 30 --n-head 9 --n-embd 576 --block-size 2048 --vocab-size 49152"), "{args}");
        assert!(args.contains("--n-kv-head 3 --ffn-hidden 1536 --rope-theta 100000"), "{args}");
        assert!(!args.contains("--untied"), "{args}");
        let gpt2 = ModelConfig::preset("tiny").unwrap();
        assert_eq!(default_reference(&gpt2), Some(PathBuf::from("reference/train_gpt2_ref.py")));
    }

    #[test]
    fn parses_the_last_json_line() {
        let out = "compiling...\n{\"tokens_per_s\": 1.0}\nstep 3 done\n{\"impl\": \"pytorch\", \"tokens_per_s\": 123456.5, \"ms_per_step_median\": 42.5, \"peak_memory_bytes\": 1048576}\n";
        let r = parse_reference_output(out).unwrap();
        assert_eq!((r.tokens_per_s, r.ms_per_step_median, r.peak_memory_bytes), (123456.5, Some(42.5), Some(1 << 20)));
        assert!(parse_reference_output("no json\n{\"tokens_per_s\": \"fast\"}\n").is_none());
    }
}
