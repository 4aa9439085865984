//! The architecture table: every decoder tokenmill builds is one row (`ArchSpec`), the one place that says what its
//! blocks compute (norm, positions, MLP, where the biases are), what its config may vary (grouped-query attention,
//! the MLP width, an untied head), and what its tensors are called, here and in Hugging Face files. The parameter
//! list (`param_specs`), the config's checks (`config`), HF import and export (`hf`), the CPU models' wiring
//! (`gpt2`, `llama`) and the cuda engine's layout (`train::decoder::layout`) read the row: adding an architecture
//! over the existing blocks is adding a row (Qwen2 is Llama's row with q, k, v biases and its HF names).
//!
//! Tensor names are HF's without the body prefix (`transformer.`, `model.`), so loading is a key copy (nanoGPT's
//! rule). A projection group (q, k, v; SwiGLU's gate and up) is listed as its stored tensors: one name (GPT-2's
//! `c_attn` holds q | k | v stacked) or one per part. Either way the engine lays the group's tensors end to end, so a
//! group is one `(rows, C)` matrix and one matmul, and its biases one vector.
//!
//! Shapes: C = n_embd, NH heads, KV kv heads, HS = C / NH, H = the MLP's hidden width, V = vocab_size.

use super::config::Architecture;
use super::params::{Init, ParamSpec};
use super::ModelConfig;

/// The blocks' normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// `(x - mean) * rstd * w + b` (GPT-2).
    LayerNorm,
    /// `x * rstd * w`, rstd from the mean square (Llama).
    RmsNorm,
}

/// How positions enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// A learned `(block_size, C)` table added to the token embedding (GPT-2).
    Learned,
    /// Rotary embeddings applied to q and k (rotate-half layout, base `rope_theta`).
    Rotary,
}

/// The MLP between the second norm and the residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// `gelu_tanh(x Wfc^T + b) Wproj^T + b` (GPT-2: H = 4C).
    Gelu,
    /// `(silu(x Wg^T) * x Wu^T) Wd^T`, gate and up one `(2H, C)` product (Llama).
    SwiGlu,
}

/// Which tensors carry a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Biases {
    /// The norms' shift (LayerNorm's `b`).
    pub norms: bool,
    /// The q, k and v projections (GPT-2's, and Qwen2's, whose only biases these are).
    pub qkv: bool,
    /// The attention output projection and the MLP's two products.
    pub others: bool,
}

/// Tensor names without `.weight` / `.bias` and without the HF body prefix; block parts follow `{blocks}.{l}.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorNames {
    pub embedding: &'static str,
    /// The learned position table (`Positions::Learned` only).
    pub positions: &'static str,
    pub blocks: &'static str,
    pub norm1: &'static str,
    /// q, k and v: one stored tensor holding all three stacked, or one tensor each.
    pub qkv: &'static [&'static str],
    pub attn_out: &'static str,
    pub norm2: &'static str,
    /// The MLP's input product: GELU's one tensor, or SwiGLU's gate and up.
    pub fc: &'static [&'static str],
    pub fc_out: &'static str,
    pub final_norm: &'static str,
    /// The head, stored only when untied (HF keeps it outside the body prefix).
    pub lm_head: &'static str,
}

/// How the row appears in Hugging Face folders.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HfNames {
    /// `config.json`'s `architectures[0]` (the transformers class).
    pub class: &'static str,
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The body's key prefix in `save_pretrained` files (import also accepts bare keys).
    pub prefix: &'static str,
    /// Linear weights stored `(in, out)` (GPT-2's Conv1D), transposed both ways; tokenmill stores `(out, in)`.
    pub conv1d: bool,
    /// Key suffixes of buffers some checkpoints persist (causal masks, rotary frequencies): computed, not loaded.
    pub buffers: &'static [&'static str],
    /// `config.json` switches tokenmill computes at one value only: a config saying otherwise is refused, and export
    /// writes them.
    pub switches: &'static [(&'static str, bool)],
    /// transformers' defaults for keys a `config.json` may omit: a tied head, the norms' epsilon.
    pub tied_default: bool,
    pub eps_default: f64,
}

/// One architecture: a row of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArchSpec {
    pub arch: Architecture,
    /// The name configs and checkpoints use (`arch = "llama"`).
    pub name: &'static str,
    pub norm: Norm,
    /// The norms' epsilon when `ModelConfig::norm_eps` is unset.
    pub norm_eps: f64,
    pub positions: Positions,
    pub mlp: Mlp,
    pub biases: Biases,
    /// Grouped-query attention, the MLP width and an untied head are config choices; `false`: fixed as the original
    /// checkpoints have them (multi-head attention, the default width, a tied head).
    pub configurable: bool,
    pub names: TensorNames,
    pub hf: HfNames,
}

/// OpenAI's GPT-2: pre-LayerNorm blocks, learned positions, GELU(tanh) MLP, biases everywhere, tied head.
pub const GPT2: ArchSpec = ArchSpec {
    arch: Architecture::Gpt2,
    name: "gpt2",
    norm: Norm::LayerNorm,
    norm_eps: 1e-5,
    positions: Positions::Learned,
    mlp: Mlp::Gelu,
    biases: Biases { norms: true, qkv: true, others: true },
    configurable: false,
    names: TensorNames {
        embedding: "wte",
        positions: "wpe",
        blocks: "h",
        norm1: "ln_1",
        qkv: &["attn.c_attn"],
        attn_out: "attn.c_proj",
        norm2: "ln_2",
        fc: &["mlp.c_fc"],
        fc_out: "mlp.c_proj",
        final_norm: "ln_f",
        lm_head: "lm_head",
    },
    hf: HfNames {
        class: "GPT2LMHeadModel",
        model_type: "gpt2",
        prefix: "transformer.",
        conv1d: true,
        buffers: &[".attn.bias", ".attn.masked_bias"],
        switches: &[("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false)],
        tied_default: true,
        eps_default: 1e-5,
    },
};

/// Llama: pre-RMSNorm blocks, rotary positions, SwiGLU, no biases.
pub const LLAMA: ArchSpec = ArchSpec {
    arch: Architecture::Llama,
    name: "llama",
    norm: Norm::RmsNorm,
    norm_eps: 1e-5,
    positions: Positions::Rotary,
    mlp: Mlp::SwiGlu,
    biases: Biases { norms: false, qkv: false, others: false },
    configurable: true,
    names: TensorNames {
        embedding: "embed_tokens",
        positions: "",
        blocks: "layers",
        norm1: "input_layernorm",
        qkv: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        attn_out: "self_attn.o_proj",
        norm2: "post_attention_layernorm",
        fc: &["mlp.gate_proj", "mlp.up_proj"],
        fc_out: "mlp.down_proj",
        final_norm: "norm",
        lm_head: "lm_head",
    },
    hf: HfNames {
        class: "LlamaForCausalLM",
        model_type: "llama",
        prefix: "model.",
        conv1d: false,
        buffers: &["rotary_emb.inv_freq"],
        // attention_bias puts biases on q, k, v and o (Qwen2's q/k/v-only biases are its own row).
        switches: &[("attention_bias", false), ("mlp_bias", false)],
        tied_default: false,
        eps_default: 1e-6,
    },
};

/// Qwen2 / Qwen2.5: Llama's block with biases on q, k and v (and 1e-6 norms by default).
pub const QWEN2: ArchSpec = ArchSpec {
    arch: Architecture::Qwen2,
    name: "qwen2",
    norm_eps: 1e-6,
    biases: Biases { norms: false, qkv: true, others: false },
    hf: HfNames {
        class: "Qwen2ForCausalLM",
        model_type: "qwen2",
        switches: &[("use_sliding_window", false)],
        ..LLAMA.hf
    },
    ..LLAMA
};

/// Every row.
pub const TABLE: [&ArchSpec; 3] = [&GPT2, &LLAMA, &QWEN2];

impl Architecture {
    /// This architecture's row.
    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Architecture::Gpt2 => &GPT2,
            Architecture::Llama => &LLAMA,
            Architecture::Qwen2 => &QWEN2,
        }
    }
}

/// A layer's stored tensors: its weights and, where the row has them, its biases (same order; `.weight`/`.bias`
/// included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub weights: Vec<String>,
    pub biases: Vec<String>,
}

impl Stored {
    fn new(parts: &[String], bias: bool) -> Stored {
        Stored {
            weights: parts.iter().map(|p| format!("{p}.weight")).collect(),
            biases: if bias { parts.iter().map(|p| format!("{p}.bias")).collect() } else { Vec::new() },
        }
    }

    /// The first (or only) weight: where the group starts in the engine's layout.
    pub fn weight(&self) -> &str {
        &self.weights[0]
    }

    /// The first (or only) bias.
    pub fn bias(&self) -> Option<&str> {
        self.biases.first().map(String::as_str)
    }

    /// Tensors laid right after the one before them (the second and later parts of a group).
    fn followers(&self) -> impl Iterator<Item = &String> {
        self.weights.iter().skip(1).chain(self.biases.iter().skip(1))
    }
}

/// One block's tensors, in the block's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockNames {
    pub norm1: Stored,
    pub qkv: Stored,
    pub attn_out: Stored,
    pub norm2: Stored,
    pub fc: Stored,
    pub fc_out: Stored,
}

/// The tensors outside the blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopNames {
    pub embedding: String,
    /// The learned position table (`Positions::Learned`).
    pub positions: Option<String>,
    pub final_norm: Stored,
    /// The head's own weight (an untied head only).
    pub lm_head: Option<String>,
}

impl ArchSpec {
    /// Layer `l`'s tensor names.
    pub fn block(&self, l: usize) -> BlockNames {
        let n = &self.names;
        let parts = |names: &[&str]| names.iter().map(|p| format!("{}.{l}.{p}", n.blocks)).collect::<Vec<_>>();
        let b = self.biases;
        BlockNames {
            norm1: Stored::new(&parts(&[n.norm1]), b.norms),
            qkv: Stored::new(&parts(n.qkv), b.qkv),
            attn_out: Stored::new(&parts(&[n.attn_out]), b.others),
            norm2: Stored::new(&parts(&[n.norm2]), b.norms),
            fc: Stored::new(&parts(n.fc), b.others),
            fc_out: Stored::new(&parts(&[n.fc_out]), b.others),
        }
    }

    /// The names outside the blocks for a model whose head is `tied` or not.
    pub fn top(&self, tied: bool) -> TopNames {
        let n = &self.names;
        TopNames {
            embedding: format!("{}.weight", n.embedding),
            positions: (self.positions == Positions::Learned).then(|| format!("{}.weight", n.positions)),
            final_norm: Stored::new(&[n.final_norm.to_string()], self.biases.norms),
            lm_head: (!tied).then(|| format!("{}.weight", n.lm_head)),
        }
    }

    /// The tensors the engine lays directly after the one before them, so that each group is one matrix (the second
    /// and later parts of a split group: Llama's k, v and up projections, Qwen2's k and v biases).
    pub fn followers(&self, n_layer: usize) -> Vec<String> {
        (0..n_layer)
            .flat_map(|l| {
                let b = self.block(l);
                b.qkv.followers().chain(b.fc.followers()).cloned().collect::<Vec<_>>()
            })
            .collect()
    }

    /// Whether `name` is a linear layer's weight (those HF's Conv1D stores transposed).
    pub fn is_linear_weight(&self, name: &str) -> bool {
        let n = &self.names;
        name.starts_with(&format!("{}.", n.blocks))
            && n.qkv.iter().chain(n.fc).chain([&n.attn_out, &n.fc_out]).any(|p| name.ends_with(&format!(".{p}.weight")))
    }

    /// H when `ffn_hidden` is unset: GELU's 4C; SwiGLU's `8C/3` rounded up to a multiple of 64 (2048 for C = 768), so
    /// its three matrices cost what GELU's two 4C ones do.
    pub fn default_hidden(&self, n_embd: usize) -> usize {
        match self.mlp {
            Mlp::Gelu => 4 * n_embd,
            Mlp::SwiGlu => (8 * n_embd).div_ceil(3).div_ceil(64) * 64,
        }
    }
}

/// The parameter list (names, shapes, init) of the model `cfg` describes, in checkpoint order: the embeddings, each
/// block (each layer's weights, then its biases), the final norm, an untied head. Init is build-nanogpt's:
/// N(0, 0.02), the two projections into the residual stream scaled by `(2 L)^-0.5`, zero biases, norm gains one.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let row = cfg.arch.spec();
    let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.hidden());
    let kvw = cfg.kv_heads() * cfg.head_size();
    let std = 0.02;
    // Residual projections: each block adds two outputs to the stream, so their std shrinks with depth (GPT-2 paper).
    let proj_std = 0.02 * (2.0 * cfg.n_layer as f64).powf(-0.5);
    let top = row.top(cfg.tied());
    let mut s = vec![ParamSpec::new(&top.embedding, &[v, c], Init::Normal(std))];
    if let Some(wpe) = &top.positions {
        s.push(ParamSpec::new(wpe, &[cfg.block_size, c], Init::Normal(std)));
    }
    let norm = |s: &mut Vec<ParamSpec>, n: &Stored| {
        s.push(ParamSpec::new(n.weight(), &[c], Init::Ones));
        s.extend(n.bias().map(|b| ParamSpec::new(b, &[c], Init::Zeros)));
    };
    // A linear group of `parts` output widths over `input` channels: one tensor per stored name (a single name holds
    // every part stacked), weights first, then biases.
    let linear = |s: &mut Vec<ParamSpec>, t: &Stored, parts: &[usize], input: usize, std: f64| {
        let widths: Vec<usize> = if t.weights.len() == 1 { vec![parts.iter().sum()] } else { parts.to_vec() };
        assert_eq!(widths.len(), t.weights.len(), "{}: the row's group has {} parts", t.weight(), parts.len());
        for (w, &rows) in t.weights.iter().zip(&widths) {
            s.push(ParamSpec::new(w, &[rows, input], Init::Normal(std)));
        }
        for (b, &rows) in t.biases.iter().zip(&widths) {
            s.push(ParamSpec::new(b, &[rows], Init::Zeros));
        }
    };
    let fc_parts: &[usize] = match row.mlp {
        Mlp::Gelu => &[h],
        Mlp::SwiGlu => &[h, h],
    };
    for l in 0..cfg.n_layer {
        let b = row.block(l);
        norm(&mut s, &b.norm1);
        linear(&mut s, &b.qkv, &[c, kvw, kvw], c, std);
        linear(&mut s, &b.attn_out, &[c], c, proj_std);
        norm(&mut s, &b.norm2);
        linear(&mut s, &b.fc, fc_parts, c, std);
        linear(&mut s, &b.fc_out, &[c], h, proj_std);
    }
    norm(&mut s, &top.final_norm);
    if let Some(head) = &top.lm_head {
        s.push(ParamSpec::new(head, &[v, c], Init::Normal(std)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_found_by_its_names() {
        for row in TABLE {
            assert_eq!(row.arch.spec(), row);
            let cfg: Architecture = serde_json::from_value(serde_json::json!(row.name)).unwrap();
            assert_eq!(cfg, row.arch, "`arch = \"{}\"` names the row", row.name);
        }
    }

    #[test]
    fn gpt2_specs_keep_the_checkpoint_order() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let names: Vec<String> = param_specs(&cfg).into_iter().map(|s| s.name).take(8).collect();
        assert_eq!(
            names,
            [
                "wte.weight",
                "wpe.weight",
                "h.0.ln_1.weight",
                "h.0.ln_1.bias",
                "h.0.attn.c_attn.weight",
                "h.0.attn.c_attn.bias",
                "h.0.attn.c_proj.weight",
                "h.0.attn.c_proj.bias"
            ]
        );
        assert!(GPT2.is_linear_weight("h.3.mlp.c_proj.weight") && !GPT2.is_linear_weight("h.3.mlp.c_proj.bias"));
        assert!(!GPT2.is_linear_weight("wte.weight") && !GPT2.is_linear_weight("h.0.ln_1.weight"));
    }

    #[test]
    fn qwen2_is_llama_with_qkv_biases() {
        let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
        cfg.n_kv_head = Some(1);
        let llama = param_specs(&cfg);
        cfg.arch = Architecture::Qwen2;
        let qwen = param_specs(&cfg);
        let extra: Vec<(String, Vec<usize>)> =
            qwen.iter().filter(|s| !llama.contains(s)).map(|s| (s.name.clone(), s.shape.clone())).collect();
        let per_layer = |l: usize| {
            [("q", 64), ("k", 32), ("v", 32)].map(|(p, n)| (format!("layers.{l}.self_attn.{p}_proj.bias"), vec![n]))
        };
        assert_eq!(extra, [per_layer(0), per_layer(1)].concat());
        assert_eq!(
            QWEN2.followers(1),
            ["layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.k_proj.bias"]
                .into_iter()
                .chain(["layers.0.self_attn.v_proj.bias", "layers.0.mlp.up_proj.weight"])
                .collect::<Vec<_>>()
        );
    }
}
