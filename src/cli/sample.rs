//! `tokenmill sample`: continue a prompt with top-k sampling, as build-nanogpt's sampling loop does
//! (`num_return_sequences` continuations of "Hello, I'm a language model,", top-k 50, a seeded generator).
//!
//! ```text
//! tokenmill sample --model gpt2 --prompt "Hello, I'm a language model," --num-samples 5 --max-tokens 30
//! tokenmill sample --model log/checkpoints/step_019073 --device cuda
//! ```
//!
//! The text is encoded and decoded with the tokenizer the model was trained with: a checkpoint keeps its data's
//! Hugging Face tokenizer (tokenizer.json) or records its built-in one; a Hugging Face folder has its tokenizer.json;
//! otherwise the built-in vocabulary of the model's size. `--tokenizer` overrides.

use anyhow::{bail, Context};
use rand::SeedableRng;

use std::path::Path;

use crate::model::{load_model, Precision};
use crate::tokenizer::{HfTokenizer, Tokenizer, TokenizerId, TokenizerKind, TokenizerSource, TOKENIZER_JSON};
use crate::train::checkpoint;

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
    /// Tokenizer (gpt2, cl100k_base, o200k_base, a tokenizer.json or its folder, hf:OWNER/NAME); default: the one
    /// the model was trained with (a checkpoint's, an HF folder's tokenizer.json), else the built-in one of its size.
    #[arg(long, value_name = "NAME|PATH|hf:REPO")]
    pub tokenizer: Option<TokenizerSource>,
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
    let recorded = recorded_tokenizer(&resolved)?;
    let tokenizer = match &args.tokenizer {
        Some(source) => {
            let t = source.load().with_context(|| format!("loading --tokenizer {source}"))?;
            check_asked_tokenizer(source, &t, recorded.as_ref(), &resolved, cfg.real_vocab_size)?;
            t
        }
        None => match recorded {
            Some(t) => t,
            None => builtin_of_size(cfg.real_vocab_size).map(Tokenizer::new).with_context(|| {
                format!(
                    "the model's vocabulary ({} ids) matches no known tokenizer and it records none; pass --tokenizer",
                    cfg.real_vocab_size
                )
            })?,
        },
    };
    let text = tokenizer.encode(&args.prompt)?;
    if text.is_empty() {
        bail!("--prompt is empty");
    }
    // As the model's documents start (a Llama tokenizer's BOS; nothing for GPT-2), shown without it.
    let prefix = tokenizer.document_prefix().len();
    let prompt = [tokenizer.document_prefix(), &text].concat();
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= cfg.real_vocab_size) {
        bail!(
            "the prompt has token id {id} ({}), outside the model's {}-id vocabulary",
            tokenizer.describe(),
            cfg.real_vocab_size
        );
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
            println!("sample {done}: {}", tokenizer.decode(&seq[prefix..]));
            done += 1;
        }
    }
    Ok(())
}

/// The tokenizer a model records, for a `--model` value (`model_arg`'s): a tokenmill checkpoint's tokenizer.json
/// (checked against the data identity its state.json records) or the built-in tokenizer it records, or a Hugging
/// Face folder's tokenizer.json. `None` when the model says nothing (a hub name, a bare weights file, an older
/// checkpoint of bare shards).
pub(crate) fn recorded_tokenizer(spec: &str) -> anyhow::Result<Option<Tokenizer>> {
    let dir = Path::new(spec);
    if !dir.is_dir() {
        return Ok(None);
    }
    let recorded = match dir.join(checkpoint::STATE_FILE).is_file() {
        true => checkpoint::load_state(dir)?.data.and_then(|d| d.tokenizer),
        false => None,
    };
    if dir.join(TOKENIZER_JSON).is_file() {
        let t: Tokenizer = HfTokenizer::load_path(dir, &dir.display().to_string())?.into();
        if let Some(expected) = recorded.filter(|r| *r != t.id()) {
            bail!(
                "{}: {} is {}, but the checkpoint's data was tokenized with {expected}; pass --tokenizer",
                dir.display(),
                TOKENIZER_JSON,
                t.id()
            );
        }
        return Ok(Some(t));
    }
    match recorded {
        Some(TokenizerId::Builtin(kind)) => Ok(Some(Tokenizer::new(kind))),
        Some(id @ TokenizerId::Hf { .. }) => bail!(
            "{}: the checkpoint's data was tokenized with {id}, but its copy ({TOKENIZER_JSON}) is gone; pass \
             --tokenizer DATA_DIR/{TOKENIZER_JSON} (the shard directory keeps one)",
            dir.display()
        ),
        None => Ok(None),
    }
}

/// The built-in vocabulary of exactly `real_vocab` ids, if one has it.
fn builtin_of_size(real_vocab: usize) -> Option<TokenizerKind> {
    [TokenizerKind::Gpt2, TokenizerKind::Cl100kBase, TokenizerKind::O200kBase]
        .into_iter()
        .find(|k| k.vocab_size() as usize == real_vocab)
}

/// A `--tokenizer` is refused where its ids would decode to garbage (`<|unk:N|>`), not text: another tokenizer than
/// the one the checkpoint records its data was made with, a built-in vocabulary of another size than the model's,
/// or more ids than the model has.
fn check_asked_tokenizer(
    source: &TokenizerSource,
    asked: &Tokenizer,
    recorded: Option<&Tokenizer>,
    model: &str,
    real_vocab: usize,
) -> anyhow::Result<()> {
    if let Some(r) = recorded.filter(|r| r.id() != asked.id()) {
        bail!(
            "--tokenizer {source}: the model {model} records that it was trained on {} tokens; sampling with another \
             tokenizer decodes its ids to garbage (drop --tokenizer, or pass the recorded one)",
            r.describe()
        );
    }
    let ids = asked.vocab_size() as usize;
    if ids > real_vocab || (asked.builtin().is_some() && ids != real_vocab) {
        let fits = builtin_of_size(real_vocab)
            .map_or(String::new(), |k| format!(" ({k}'s; pass --tokenizer {k}, or drop it)"));
        bail!(
            "--tokenizer {source} has {ids} token ids, but the model's vocabulary is {real_vocab} ids{fits}: its ids \
             would decode to garbage"
        );
    }
    Ok(())
}
