//! Model hyperparameters: the typed `ModelConfig` every architecture is built from, and the named presets
//! (GPT-2 124M / 350M / 774M / 1558M, a tiny CPU model, Llama-style twins). Training configs (the `[model]` section
//! of configs/*.toml) name a preset or spell the sizes out; this is the form they resolve to.

use super::ModelError;

/// GPT-2's BPE vocabulary: 50,000 merges + 256 byte tokens + `<|endoftext|>`.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// GPT-2's vocabulary padded up to a multiple of 64 (~4% faster matmuls on GPU in the seeds, nanoGPT's "nice number").
pub const GPT2_PADDED_VOCAB_SIZE: usize = 50304;

/// Which block the model is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// OpenAI GPT-2: pre-LN, learned positions, GELU(tanh) MLP, tied lm_head.
    Gpt2,
    /// Llama-style: RMSNorm, rotary positions, SwiGLU MLP, no biases.
    Llama,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    /// Max sequence length (T <= block_size).
    pub block_size: usize,
    /// Vocabulary used in the embedding / logits; 50304 for GPT-2 training ("padded up to a multiple of 64").
    pub vocab_size: usize,
    /// The tokenizer's real vocabulary (50257 for GPT-2); ids >= this never win a sample.
    pub real_vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

/// Every name `ModelConfig::preset` accepts (canonical names; the HF names `gpt2`, `gpt2-medium`, `gpt2-large`,
/// `gpt2-xl` are accepted as aliases of the four GPT-2 sizes).
pub const PRESETS: &[&str] = &["gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m", "tiny", "llama-124m", "llama-tiny"];

impl ModelConfig {
    /// A named preset, with GPT-2's padded vocabulary (50304 rows, 50257 real ids).
    pub fn preset(name: &str) -> Result<ModelConfig, ModelError> {
        let (arch, block_size, n_layer, n_head, n_embd) = match name {
            "gpt2-124m" | "gpt2" => (Architecture::Gpt2, 1024, 12, 12, 768),
            "gpt2-350m" | "gpt2-medium" => (Architecture::Gpt2, 1024, 24, 16, 1024),
            "gpt2-774m" | "gpt2-large" => (Architecture::Gpt2, 1024, 36, 20, 1280),
            "gpt2-1558m" | "gpt2-xl" => (Architecture::Gpt2, 1024, 48, 25, 1600),
            // Small enough to train a few hundred steps on two CPU cores (quickstart, CI).
            "tiny" => (Architecture::Gpt2, 64, 2, 2, 64),
            "llama-124m" => (Architecture::Llama, 1024, 12, 12, 768),
            "llama-tiny" => (Architecture::Llama, 64, 2, 2, 64),
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model preset `{other}` (expected one of: {})",
                    PRESETS.join(", ")
                )))
            }
        };
        let cfg = ModelConfig {
            arch,
            block_size,
            vocab_size: GPT2_PADDED_VOCAB_SIZE,
            real_vocab_size: GPT2_VOCAB_SIZE,
            n_layer,
            n_head,
            n_embd,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// HS: channels per attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Sizes that every architecture needs to be buildable; the error names the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 || self.block_size == 0 {
            return bad(format!(
                "n_layer ({}), n_head ({}), n_embd ({}) and block_size ({}) must all be positive",
                self.n_layer, self.n_head, self.n_embd, self.block_size
            ));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head));
        }
        if self.real_vocab_size == 0 || self.real_vocab_size > self.vocab_size {
            return bad(format!(
                "real_vocab_size {} must be in 1..=vocab_size ({})",
                self.real_vocab_size, self.vocab_size
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} does not fit token ids in u32", self.vocab_size));
        }
        if self.arch == Architecture::Llama && !self.head_size().is_multiple_of(2) {
            return bad(format!("llama: head size {} must be even for rotary embeddings", self.head_size()));
        }
        Ok(())
    }
}
