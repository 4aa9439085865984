//! `tokenmill export`: turn a tokenmill checkpoint into another tool's format.
//!
//! ```text
//! tokenmill export hf log/checkpoints/step_019073 gpt2-tokenmill/
//! python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('gpt2-tokenmill')"
//! ```

use std::path::PathBuf;

use anyhow::Context;

use crate::model::{hf::export_hf, load_model, Precision};

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Write a Hugging Face folder (GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM: config.json +
    /// model.safetensors) from a checkpoint, with the tokenizer files of its data: a Hugging Face tokenizer's
    /// tokenizer.json and tokenizer_config.json, or GPT-2's for a GPT-2 vocabulary.
    Hf {
        /// A tokenmill checkpoint directory (or weights file, or HF folder).
        checkpoint: PathBuf,
        /// The folder to create; it must not exist yet (or be empty).
        dir: PathBuf,
    },
}

pub fn run(c: ExportCommand) -> anyhow::Result<()> {
    match c {
        ExportCommand::Hf { checkpoint, dir } => {
            let spec = super::model_arg(checkpoint.to_str().context("the checkpoint path is not valid UTF-8")?)?;
            let spec = spec.as_str();
            if !checkpoint.exists() {
                anyhow::bail!("{}: no such checkpoint directory", checkpoint.display());
            }
            let model = load_model(spec, Precision::FP32, &candle_core::Device::Cpu)
                .with_context(|| format!("loading {}", checkpoint.display()))?;
            export_hf(model.as_ref(), &dir)?;
            let cfg = model.config();
            let hf_tokenizer = super::sample::recorded_tokenizer(spec)?.filter(|t| t.hf().is_some());
            if let Some(hf) = hf_tokenizer.as_ref().and_then(|t| t.hf()) {
                // The model's own tokenizer, the one its data was prepared with (kept in every checkpoint).
                for (name, bytes) in hf.export_files(cfg.block_size) {
                    let path = dir.join(name);
                    crate::util::write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                }
                println!(
                    "tokenizer: the model's tokenizer.json ({}) and tokenizer_config.json (AutoTokenizer loads them)",
                    hf_tokenizer.as_ref().map(|t| t.id().to_string()).unwrap_or_default()
                );
            } else if cfg.real_vocab_size == crate::tokenizer::TokenizerKind::Gpt2.vocab_size() as usize {
                println!(
                    "tokenizer: GPT-2's vocab.json, merges.txt and tokenizer_config.json (AutoTokenizer loads them)"
                );
            } else {
                eprintln!(
                    "note: no tokenizer files: the model's {}-id vocabulary is not GPT-2's (HF's GPT-2 tokenizer cannot \
                     encode for it); load its tiktoken tokenizer yourself",
                    cfg.real_vocab_size
                );
            }
            let class = cfg.arch.spec().hf.class;
            println!(
                "wrote {} ({class} L{} H{} C{}, vocab {}, {} parameters)",
                dir.display(),
                cfg.n_layer,
                cfg.n_head,
                cfg.n_embd,
                cfg.real_vocab_size,
                model.num_parameters()
            );
            Ok(())
        }
    }
}
