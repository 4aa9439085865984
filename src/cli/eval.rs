//! `tokenmill eval hellaswag`: HellaSwag acc / acc_norm of any model `--model` can name (hub GPT-2, HF folder,
//! tokenmill checkpoint), scored as build-nanogpt's hellaswag.py on the file `tokenmill prep hellaswag` wrote.
//!
//! ```text
//! tokenmill eval hellaswag --model gpt2                       # OpenAI GPT-2 124M: acc_norm 0.2955
//! tokenmill eval hellaswag --model log/checkpoints/step_019073 --device cuda --compare-fp32
//! ```
//! On CUDA the dtype defaults to bf16, where a model the decoder engine supports is scored by the engine's forward
//! (`--engine`); `--dtype fp32` asks for the candle model in fp32.

use std::path::PathBuf;

use anyhow::Context;

use crate::eval::hellaswag::{evaluate_with, flips, tally, HellaswagScore, ModelScorer, Prediction};
use crate::eval::hellaswag_file::HellaswagFile;
use crate::train::config::{parse_compute_dtype, EngineChoice};
use crate::train::engine::EngineKind;

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// HellaSwag accuracy (acc, acc_norm) of a model.
    Hellaswag(HellaswagArgs),
}

#[derive(clap::Args, Debug)]
pub struct HellaswagArgs {
    /// `gpt2` (or gpt2-medium/-large/-xl, any org/name GPT-2 on the hub), an HF folder, or a checkpoint directory.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// The eval file `tokenmill prep hellaswag` wrote, or the directory it wrote it into.
    #[arg(long, default_value = "shards/hellaswag/hellaswag_val.bin")]
    pub data: PathBuf,
    /// Score only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype: auto (bf16 on CUDA, through the decoder engine where it takes the model: all 10,042 tasks in
    /// ~3.5 s on an H100 against ~26 s in fp32; fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// What runs the forward: auto (the decoder engine for a model it supports in bf16 on CUDA, else the candle
    /// model), autograd (the candle model) or cuda (the engine, or an error saying why not).
    #[arg(long, default_value = "auto")]
    pub engine: String,
    /// Also score every example in fp32 (the candle model) and report the fp32 accuracy, the difference and how
    /// many examples' acc_norm prediction flips between the two.
    #[arg(long)]
    pub compare_fp32: bool,
}

/// Positions of the engine's evaluation buffers in a standalone evaluation (rows x bucketed length).
const ENGINE_EVAL_POSITIONS: usize = 32768;

pub fn run(c: EvalCommand) -> anyhow::Result<()> {
    match c {
        EvalCommand::Hellaswag(a) => hellaswag(a),
    }
}

fn hellaswag(a: HellaswagArgs) -> anyhow::Result<()> {
    if a.limit == Some(0) {
        anyhow::bail!("--limit 0 scores nothing: give a positive number of examples, or leave --limit out (all)");
    }
    let device = crate::device::open(&a.device)?;
    let dtype = parse_compute_dtype(&a.dtype, &device)?;
    let precision = dtype.precision();
    let file = HellaswagFile::open(&a.data)?;
    let n = a.limit.unwrap_or(file.len()).min(file.len());
    let spec = super::model_arg(&a.model)?;
    let model =
        crate::model::load_model(&spec, precision, &device).with_context(|| format!("loading --model {}", a.model))?;
    // A tokenmill checkpoint (or HF folder) says which tokenizer its data had; any model how many token ids it knows.
    let recorded = super::sample::recorded_tokenizer(&spec)?.map(|t| t.id());
    file.check_tokenizer(&a.model, model.config().real_vocab_size, recorded.as_ref())?;
    let block = model.config().block_size;
    if file.max_row_len() > block {
        eprintln!(
            "note: the longest HellaSwag row is {} tokens but the model's context is {block}; longer rows keep their last {block} tokens",
            file.max_row_len()
        );
    }
    let examples = &file.examples()[..n];
    let longest = examples.iter().map(|e| e.row_len()).max().unwrap_or(0).min(block);
    let choice: EngineChoice = toml::Value::String(a.engine.clone())
        .try_into()
        .map_err(|_| anyhow::anyhow!("--engine {:?}: expected auto, autograd or cuda", a.engine))?;
    let kind =
        EngineKind::resolve(choice, model.config(), &device, dtype).map_err(|e| anyhow::anyhow!("--engine: {e}"))?;
    let what = match kind {
        EngineKind::Cuda => "the decoder engine's forward (bf16)",
        EngineKind::Autograd => "the candle model",
    };
    println!("HellaSwag: {n} examples from {} with {} on {device:?}, {what}", a.data.display(), a.model);
    let every = (n / 20).max(1);
    let mut next = every;
    let started = std::time::Instant::now();
    // Examples are scored in batches (longest first), so the running count advances by a batch at a time.
    let progress = |s: &HellaswagScore| {
        if s.n >= next || s.n == n {
            println!("{} acc_norm: {}/{}={:.4}", s.n, s.correct_norm, s.n, s.acc_norm());
            next = (s.n / every + 1) * every;
        }
    };
    let predictions = match kind {
        EngineKind::Cuda => score_on_engine(model, &device, examples, longest, progress)?,
        EngineKind::Autograd => evaluate_with(&mut ModelScorer::new(&*model, &device), examples, 0, 1, progress)?,
    };
    let score = tally(&predictions);
    println!("acc: {:.4} acc_norm: {:.4} (n={})", score.acc(), score.acc_norm(), score.n);
    println!("scored {n} examples in {:.2} s", started.elapsed().as_secs_f64());
    if a.compare_fp32 {
        let started = std::time::Instant::now();
        let fp32 = crate::model::load_model(&spec, crate::model::Precision::FP32, &device)
            .with_context(|| format!("loading --model {} in fp32", a.model))?;
        let reference = evaluate_with(&mut ModelScorer::new(&*fp32, &device), examples, 0, 1, |_| {})?;
        let r = tally(&reference);
        let (flipped, _) = flips(&reference, &predictions);
        println!(
            "fp32: acc: {:.4} acc_norm: {:.4} ({:.2} s); {} - fp32: acc_norm {:+.4}, {flipped} of {n} examples' \
             acc_norm prediction differ",
            r.acc(),
            r.acc_norm(),
            started.elapsed().as_secs_f64(),
            a.dtype,
            score.acc_norm() - r.acc_norm()
        );
    }
    Ok(())
}

/// Score on the decoder engine: an engine built over the model for rows up to `longest` tokens (its optimizer
/// state goes unused), `ENGINE_EVAL_POSITIONS` positions per forward.
fn score_on_engine(
    model: Box<dyn crate::model::LanguageModel>,
    device: &candle_core::Device,
    examples: &[crate::eval::hellaswag_file::Example],
    longest: usize,
    progress: impl FnMut(&HellaswagScore),
) -> anyhow::Result<Vec<Prediction>> {
    let shape =
        crate::train::decoder::scoring::scoring_shape(ENGINE_EVAL_POSITIONS, model.config().block_size, longest)
            .ok_or_else(|| anyhow::anyhow!("rows of {longest} tokens do not fit the engine's evaluation buffers"))?;
    let rows = ENGINE_EVAL_POSITIONS / shape.t;
    let cfg = crate::train::config::TrainConfig::default();
    let adam = crate::train::optim::AdamWConfig::from_config(&cfg);
    let (opts, _) = cfg.engine.with_env_overrides()?;
    let mut engine = crate::train::engine::build(EngineKind::Cuda, model, device, (rows, shape.t), adam, &opts)?;
    let mut scorer = engine.scorer(longest).expect("the engine was sized for these rows");
    Ok(evaluate_with(&mut *scorer, examples, 0, 1, progress)?)
}
