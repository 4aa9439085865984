//! Model hyperparameters: the typed `ModelConfig` every architecture is built from, and the named presets
//! (GPT-2 124M / 350M / 774M / 1558M, a tiny CPU model, Llama-style twins). Training configs (the `[model]` section
//! of configs/*.toml) name a preset or spell the sizes out; this is the form they resolve to. What an architecture
//! allows and defaults to is its row of the architecture table (`arch`).

use super::arch::Positions;
use super::ModelError;

/// GPT-2's BPE vocabulary: 50,000 merges + 256 byte tokens + `<|endoftext|>`.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// GPT-2's vocabulary padded up to a multiple of 64 (~4% faster matmuls on GPU in the seeds, nanoGPT's "nice number").
pub const GPT2_PADDED_VOCAB_SIZE: usize = 50304;

/// Which row of the architecture table (`arch::TABLE`) the model is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// OpenAI GPT-2: pre-LN, learned positions, GELU(tanh) MLP, tied lm_head.
    Gpt2,
    /// Llama-style: RMSNorm, rotary positions, SwiGLU MLP, no biases.
    Llama,
    /// Qwen2 / Qwen2.5: the Llama block with q, k and v biases.
    Qwen2,
}

/// Unknown keys are refused: a `[model]` table is checked against these fields, so a typo names itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// KV heads (grouped-query attention; divides `n_head`); unset = `n_head` (multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<usize>,
    /// H, the MLP's hidden width; unset = the architecture's rule (`ffn_hidden_default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_hidden: Option<usize>,
    /// Rotary base frequency (Llama); unset = 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// The lm_head shares the token embedding (HF's `tie_word_embeddings`); unset = tied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// The norms' epsilon (HF's `layer_norm_epsilon` / `rms_norm_eps`); unset = the architecture's (`ArchSpec::norm_eps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
}

/// Every name `ModelConfig::preset` accepts (canonical names; the HF names `gpt2`, `gpt2-medium`, `gpt2-large`,
/// `gpt2-xl` are accepted as aliases of the four GPT-2 sizes).
pub const PRESETS: &[&str] = &[
    "gpt2-124m",
    "gpt2-350m",
    "gpt2-774m",
    "gpt2-1558m",
    "tiny",
    "llama-124m",
    "llama-1b",
    "llama-smol135m",
    "llama-tiny",
    "qwen2-tiny",
];

/// Rotary base frequency when `rope_theta` is unset (Llama 1 and 2).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

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
            // Llama 3.2 1B's shape (GQA with 8 KV heads, H = 8192, theta 500000) over GPT-2's vocabulary.
            "llama-1b" => {
                let cfg = ModelConfig {
                    n_kv_head: Some(8),
                    ffn_hidden: Some(8192),
                    rope_theta: Some(500_000.0),
                    ..ModelConfig::sized(Architecture::Llama, 1024, 16, 32, 2048)
                };
                cfg.validate()?;
                return Ok(cfg);
            }
            // SmolLM2-135M's shape (GQA with 3 KV heads, H = 1536, theta 100000, tied) over its 49,152-id
            // vocabulary, at its pretraining context of 2048: continued pretraining of that model, and its speed.
            "llama-smol135m" => {
                let cfg = ModelConfig {
                    vocab_size: 49_152,
                    real_vocab_size: 49_152,
                    n_kv_head: Some(3),
                    ffn_hidden: Some(1536),
                    rope_theta: Some(100_000.0),
                    tie_word_embeddings: Some(true),
                    norm_eps: Some(1e-5),
                    ..ModelConfig::sized(Architecture::Llama, 2048, 30, 9, 576)
                };
                cfg.validate()?;
                return Ok(cfg);
            }
            "llama-tiny" => (Architecture::Llama, 64, 2, 2, 64),
            "qwen2-tiny" => (Architecture::Qwen2, 64, 2, 2, 64),
            other => {
                return Err(ModelError::Config(format!(
                    "unknown model preset `{other}` (expected one of: {})",
                    PRESETS.join(", ")
                )))
            }
        };
        let cfg = ModelConfig::sized(arch, block_size, n_layer, n_head, n_embd);
        cfg.validate()?;
        Ok(cfg)
    }

    /// A model of these sizes with GPT-2's padded vocabulary and every other choice at its architecture's default
    /// (multi-head attention, the default MLP width, theta 10000, tied head).
    pub fn sized(arch: Architecture, block_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> ModelConfig {
        ModelConfig {
            arch,
            block_size,
            vocab_size: GPT2_PADDED_VOCAB_SIZE,
            real_vocab_size: GPT2_VOCAB_SIZE,
            n_layer,
            n_head,
            n_embd,
            n_kv_head: None,
            ffn_hidden: None,
            rope_theta: None,
            tie_word_embeddings: None,
            norm_eps: None,
        }
    }

    /// HS: channels per attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// KV heads (= NH without grouped-query attention).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// H: the MLP's hidden width.
    pub fn hidden(&self) -> usize {
        self.ffn_hidden.unwrap_or_else(|| self.arch.spec().default_hidden(self.n_embd))
    }

    /// The norms' epsilon.
    pub fn eps(&self) -> f64 {
        self.norm_eps.unwrap_or(self.arch.spec().norm_eps)
    }

    /// The rotary base frequency (Llama).
    pub fn rope_base(&self) -> f64 {
        self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// Whether the lm_head is the token embedding.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
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
        let row = self.arch.spec();
        if row.positions == Positions::Rotary && !self.head_size().is_multiple_of(2) {
            return bad(format!("{}: head size {} must be even for rotary embeddings", row.name, self.head_size()));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_head.is_multiple_of(kv) {
            return bad(format!("n_kv_head {kv} must divide n_head {} (grouped-query attention)", self.n_head));
        }
        if self.hidden() == 0 {
            return bad("ffn_hidden must be positive".to_string());
        }
        if let Some(theta) = self.rope_theta {
            if !(theta.is_finite() && theta > 1.0) {
                return bad(format!("rope_theta {theta} must be a finite number above 1"));
            }
        }
        let eps = self.eps();
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return bad(format!("norm_eps {eps} must be a number in (0, 1)"));
        }
        // The option this architecture lacks, named: its blocks are fixed by its checkpoints.
        let fixed = |field: &str, why: String| {
            bad(format!("{}: {field} {why} ({} has no such option; use arch = \"llama\")", row.name, row.name))
        };
        if row.positions == Positions::Learned && self.rope_theta.is_some() {
            return fixed("rope_theta", "is set".to_string());
        }
        if !row.configurable {
            if kv != self.n_head {
                return fixed("n_kv_head", format!("{kv} != n_head {}", self.n_head));
            }
            if self.hidden() != row.default_hidden(self.n_embd) {
                return fixed("ffn_hidden", format!("{} != {}", self.hidden(), row.default_hidden(self.n_embd)));
            }
            if !self.tied() {
                return fixed("tie_word_embeddings", "= false".to_string());
            }
        }
        Ok(())
    }
}
