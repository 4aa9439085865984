//! `tokenmill sample`: continue a prompt with top-k sampling, as build-nanogpt's sampling loop does
//! (`num_return_sequences` continuations of "Hello, I'm a language model,", top-k 50, a seeded generator).
//!
//! ```text
//! tokenmill sample --model gpt2 --prompt "Hello, I'm a language model," --num-samples 5 --max-tokens 30
//! tokenmill sample --model log/checkpoints/step_019073 --device cuda
//! ```

use anyhow::{bail, Context};
use rand::SeedableRng;

use crate::model::{load_model, Precision};
use crate::tokenizer::{Tokenizer, TokenizerKind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `gpt2` (or gpt2-medium / gpt2-large / gpt2-xl / an org/name hub repo), a local Hugging Face GPT-2 folder,
    /// a tokenmill checkpoint directory, or a tokenmill weights file.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    #[arg(long, default_value = "Hello, I'm a language model,")]
    pub prompt: String,
    /// How many continuations to draw (one batch).
    #[arg(long, default_value_t = 5)]
    pub num_samples: usize,
    /// Length of each sample in tokens, prompt included (the seed's `max_length`).
    #[arg(long, default_value_t = 30)]
    pub max_tokens: usize,
    /// Draw from the k most likely tokens.
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Seeds the sampling generator (ChaCha20): same seed, model and device, same samples.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `fp32`, `bf16` (bf16 matmuls, fp32 weights) or `auto` (bf16 on CUDA, else fp32).
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Tokenizer (gpt2, cl100k_base, o200k_base); default: the one whose vocabulary the model was trained on.
    #[arg(long)]
    pub tokenizer: Option<TokenizerKind>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.num_samples == 0 || args.top_k == 0 {
        bail!("--num-samples and --top-k must be positive");
    }
    let device = crate::device::open(&args.device)?;
    let compute = match args.dtype.as_str() {
        "fp32" | "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        "auto" if device.is_cuda() => candle_core::DType::BF16,
        "auto" => candle_core::DType::F32,
        other => bail!("--dtype `{other}` (expected fp32, bf16 or auto)"),
    };
    let resolved = super::model_arg(&args.model)?;
    let model = load_model(&resolved, Precision::with_compute(compute), &device)
        .with_context(|| format!("loading --model {}", args.model))?;
    let cfg = model.config().clone();
    let kind = tokenizer_for(&args, std::path::Path::new(&resolved), cfg.real_vocab_size)?;
    let tokenizer = Tokenizer::new(kind);
    let prompt = tokenizer.encode(&args.prompt);
    if prompt.is_empty() {
        bail!("--prompt is empty");
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= cfg.real_vocab_size) {
        bail!("the prompt has token id {id} ({kind}), outside the model's {}-id vocabulary", cfg.real_vocab_size);
    }
    if args.max_tokens <= prompt.len() {
        bail!("--max-tokens {} leaves no room after the prompt's {} tokens", args.max_tokens, prompt.len());
    }
    if args.max_tokens > cfg.block_size {
        eprintln!(
            "note: --max-tokens {} is longer than the model's {}-token context: past it the window slides, and every \
             new token costs a forward over the whole context",
            args.max_tokens, cfg.block_size
        );
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(args.seed);
    // One chunk at a time (the same draws as one call), printed as each is done.
    let mut done = 0;
    while done < args.num_samples {
        let n = crate::train::sample::CHUNK.min(args.num_samples - done);
        let seqs =
            crate::train::sample::generate(model.as_ref(), &prompt, n, args.max_tokens, args.top_k, &mut rng, &device)?;
        for seq in &seqs {
            println!("sample {done}: {}", tokenizer.decode(seq));
            done += 1;
        }
    }
    Ok(())
}

/// The tokenizer to sample with: `--tokenizer` if given, else the one the checkpoint records, else the one whose
/// vocabulary is the model's. A tokenizer of another vocabulary than the model's (or than the one its checkpoint
/// records) is refused: its ids would decode to garbage (`<|unk:N|>`), not text.
fn tokenizer_for(args: &Args, resolved: &std::path::Path, real_vocab: usize) -> anyhow::Result<TokenizerKind> {
    use crate::train::checkpoint;
    let recorded = if resolved.join(checkpoint::STATE_FILE).is_file() {
        checkpoint::load_state(resolved)?.data.and_then(|d| d.tokenizer)
    } else {
        None
    };
    let by_vocab = [TokenizerKind::Gpt2, TokenizerKind::Cl100kBase, TokenizerKind::O200kBase]
        .into_iter()
        .find(|k| k.vocab_size() as usize == real_vocab);
    let Some(asked) = args.tokenizer else {
        return recorded.or(by_vocab).with_context(|| {
            format!("the model's vocabulary ({real_vocab} ids) matches no known tokenizer; pass --tokenizer")
        });
    };
    if let Some(r) = recorded.filter(|&r| r != asked) {
        bail!(
            "--tokenizer {asked}: the checkpoint {} records that its model was trained on {r} tokens; sampling with \
             another tokenizer decodes its ids to garbage (drop --tokenizer, or pass --tokenizer {r})",
            resolved.display()
        );
    }
    if asked.vocab_size() as usize != real_vocab {
        let fits = by_vocab.map_or(String::new(), |k| format!(" ({k}'s; pass --tokenizer {k}, or drop it)"));
        bail!(
            "--tokenizer {asked} has {} token ids, but the model's vocabulary is {real_vocab} ids{fits}: its ids would \
             decode to garbage",
            asked.vocab_size()
        );
    }
    Ok(asked)
}
