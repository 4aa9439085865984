//! `tokenmill eval hellaswag`: HellaSwag acc / acc_norm of any model `--model` can name (hub GPT-2, HF folder,
//! tokenmill checkpoint), scored as build-nanogpt's hellaswag.py on the file `tokenmill prep hellaswag` wrote.
//!
//! ```text
//! tokenmill eval hellaswag --model gpt2                       # OpenAI GPT-2 124M: acc_norm 0.2955
//! tokenmill eval hellaswag --model log/checkpoints/step_019073 --device cuda
//! ```

use std::path::PathBuf;

use anyhow::Context;

use crate::eval::hellaswag::evaluate_with_progress;
use crate::eval::hellaswag_file::HellaswagFile;
use crate::train::config::parse_compute_dtype;

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
    /// Compute dtype: fp32, bf16 or auto (bf16 on CUDA).
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
}

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
    let precision = parse_compute_dtype(&a.dtype, &device)?.precision();
    let file = HellaswagFile::open(&a.data)?;
    let n = a.limit.unwrap_or(file.len()).min(file.len());
    let spec = super::model_arg(&a.model)?;
    let model =
        crate::model::load_model(&spec, precision, &device).with_context(|| format!("loading --model {}", a.model))?;
    // A tokenmill checkpoint says which tokenizer its data had; any model says how many token ids it knows.
    let ckpt = std::path::Path::new(&spec);
    let recorded = match ckpt.join(crate::train::checkpoint::STATE_FILE).is_file() {
        true => crate::train::checkpoint::load_state(ckpt)?.data.and_then(|d| d.tokenizer),
        false => None,
    };
    file.check_tokenizer(&a.model, model.config().real_vocab_size, recorded)?;
    let block = model.config().block_size;
    if file.max_row_len() > block {
        eprintln!(
            "note: the longest HellaSwag row is {} tokens but the model's context is {block}; longer rows keep their last {block} tokens",
            file.max_row_len()
        );
    }
    println!("HellaSwag: {n} examples from {} with {} on {device:?}", a.data.display(), a.model);
    let every = (n / 20).max(1);
    let mut next = every;
    let started = std::time::Instant::now();
    // Examples are scored in batches (longest first), so the running count advances by a batch at a time.
    let score = evaluate_with_progress(&*model, &file.examples()[..n], 0, 1, &device, |s| {
        if s.n >= next || s.n == n {
            println!("{} acc_norm: {}/{}={:.4}", s.n, s.correct_norm, s.n, s.acc_norm());
            next = (s.n / every + 1) * every;
        }
    })?;
    println!("acc: {:.4} acc_norm: {:.4} (n={})", score.acc(), score.acc_norm(), score.n);
    println!("scored {n} examples in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
