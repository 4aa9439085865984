//! Hugging Face GPT-2 folders (`config.json` + `model.safetensors`): import (`load_hf_gpt2`) and export
//! (`export_hf_gpt2`). Both are key maps over the names tokenmill already uses, plus two layout facts:
//!
//! - HF GPT-2 uses `Conv1D` for its four projections, storing weights `(in, out)`; tokenmill stores `(out, in)` like
//!   nn.Linear, so `attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj` weights are transposed both ways.
//! - Key prefixes differ by who saved the file: OpenAI's `gpt2` repo has bare keys (`h.0.attn.c_attn.weight`,
//!   `wte.weight`) plus causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`; `GPT2LMHeadModel
//!   .save_pretrained` writes `transformer.`-prefixed keys and drops the tied `lm_head.weight`. Import accepts both
//!   (buffers skipped; an `lm_head.weight` must equal `wte`); export writes the `save_pretrained` form.
//!
//! Export crops the padded vocabulary back to `real_vocab_size` rows (50304 -> 50257), as llm.c's export does, so
//! the folder pairs with the stock GPT-2 tokenizer.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::gpt2::Gpt2;
use super::ops::LAYER_NORM_EPS;
use super::store::{read_safetensors, write_safetensors};
use super::{Architecture, LanguageModel, ModelConfig, ModelError, Precision};
use crate::util::fsync_dir;

pub const HF_CONFIG: &str = "config.json";
pub const HF_WEIGHTS: &str = "model.safetensors";
/// GPT-2's `<|endoftext|>` id, HF's bos/eos for GPT-2.
const GPT2_EOT: usize = 50256;

/// The GPT-2 weights HF stores as Conv1D `(in, out)`.
const CONV1D_SUFFIXES: [&str; 4] = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"];

fn is_conv1d(name: &str) -> bool {
    CONV1D_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The fields of HF's `GPT2Config` that decide the architecture. Unknown fields (dropout rates, task params,
/// tokenizer ids) do not change the forward pass and are ignored.
#[derive(Debug, serde::Deserialize)]
struct HfGpt2Config {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// The tokenmill config of the HF GPT-2 described by `config.json` at `path`. Variants tokenmill's GPT-2 does not
/// compute (another activation, untied head, other eps, layer-scaled attention) are errors, never silently wrong.
pub fn read_hf_config(path: &Path) -> Result<ModelConfig, ModelError> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let hf: HfGpt2Config =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let unsupported =
        |what: String| Err(ModelError::format(path, format!("{what}: not supported by tokenmill's GPT-2")));
    if let Some(t) = &hf.model_type {
        if t != "gpt2" {
            return unsupported(format!("model_type `{t}`"));
        }
    }
    let act = hf.activation_function.as_deref().unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
        return unsupported(format!("activation_function `{act}` (tanh-approximate GELU expected)"));
    }
    if let Some(inner) = hf.n_inner {
        if inner != 4 * hf.n_embd {
            return unsupported(format!("n_inner {inner} (expected 4 * n_embd = {})", 4 * hf.n_embd));
        }
    }
    let eps = hf.layer_norm_epsilon.unwrap_or(LAYER_NORM_EPS);
    if (eps - LAYER_NORM_EPS).abs() > 1e-12 {
        return unsupported(format!("layer_norm_epsilon {eps} (expected {LAYER_NORM_EPS})"));
    }
    if hf.tie_word_embeddings == Some(false) {
        return unsupported("tie_word_embeddings = false".into());
    }
    if hf.scale_attn_weights == Some(false) || hf.scale_attn_by_inverse_layer_idx == Some(true) {
        return unsupported("attention scaling other than 1/sqrt(head size)".into());
    }
    let cfg = ModelConfig {
        vocab_size: hf.vocab_size,
        real_vocab_size: hf.vocab_size,
        ..ModelConfig::sized(Architecture::Gpt2, hf.n_positions, hf.n_layer, hf.n_head, hf.n_embd)
    };
    cfg.validate().map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok(cfg)
}

/// Rename and re-lay HF GPT-2 tensors into tokenmill's form: strip `transformer.`, drop the causal-mask buffers,
/// transpose Conv1D weights to `(out, in)`, and check a stored `lm_head.weight` is really tied to `wte`.
pub fn gpt2_tensors_from_hf(
    tensors: HashMap<String, Tensor>,
    source: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut out = HashMap::with_capacity(tensors.len());
    let mut lm_head = None;
    for (key, t) in tensors {
        let name = key.strip_prefix("transformer.").unwrap_or(&key).to_string();
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            continue; // causal-mask buffers that old checkpoints persisted; the mask is built, not stored
        }
        if name == "lm_head.weight" {
            lm_head = Some(t);
            continue;
        }
        let t = if is_conv1d(&name) { t.t()?.contiguous()? } else { t };
        out.insert(name, t);
    }
    if let (Some(head), Some(wte)) = (lm_head, out.get("wte.weight")) {
        let tied = head.dims() == wte.dims()
            && (head.to_dtype(DType::F32)? - wte.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        if !tied {
            return Err(ModelError::format(
                source,
                "lm_head.weight differs from wte.weight: untied heads are not supported",
            ));
        }
    }
    Ok(out)
}

/// Load the HF GPT-2 in `dir` (`config.json` + `model.safetensors`).
pub fn load_hf_gpt2(dir: &Path, precision: Precision, device: &Device) -> Result<Gpt2, ModelError> {
    load_hf_gpt2_files(&dir.join(HF_CONFIG), &dir.join(HF_WEIGHTS), precision, device)
}

/// Load an HF GPT-2 from its two files (as downloaded to the hub cache, which keeps them apart).
pub fn load_hf_gpt2_files(
    config: &Path,
    weights: &Path,
    precision: Precision,
    device: &Device,
) -> Result<Gpt2, ModelError> {
    let cfg = read_hf_config(config)?;
    let (tensors, _) = read_safetensors(weights, device)?;
    let tensors = gpt2_tensors_from_hf(tensors, weights)?;
    Gpt2::from_tensors(&cfg, precision, device, tensors, weights)
}

/// The `config.json` transformers' `GPT2LMHeadModel` loads for `cfg` (with `vocab_size` = the real vocabulary).
pub fn hf_config_json(cfg: &ModelConfig) -> serde_json::Value {
    // GPT-2's <|endoftext|> (50256) when the vocabulary has it; transformers warns about ids outside the vocabulary.
    let eot = (cfg.real_vocab_size > GPT2_EOT).then_some(GPT2_EOT);
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.real_vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    })
}

/// Write `model` (a GPT-2) as a Hugging Face folder at `dir`: `config.json` + `model.safetensors` (fp32,
/// `transformer.`-prefixed keys, Conv1D layout, vocabulary cropped to `real_vocab_size`). The folder is assembled
/// under a temp name and renamed into place; `dir` must not exist yet (or be empty).
pub fn export_hf_gpt2(model: &dyn LanguageModel, dir: &Path) -> Result<(), ModelError> {
    let cfg = model.config();
    if cfg.arch != Architecture::Gpt2 {
        return Err(ModelError::Unsupported(format!(
            "HF export writes GPT-2 folders; this checkpoint is a {:?} model",
            cfg.arch
        )));
    }
    if dir.exists() {
        let empty = fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_none();
        if !empty {
            return Err(ModelError::format(dir, "already exists and is not empty; choose a new directory"));
        }
    }
    let mut tensors = Vec::new();
    for (name, var) in model.parameters() {
        let mut t = var.as_tensor().to_dtype(DType::F32)?;
        if name == "wte.weight" {
            t = t.narrow(0, 0, cfg.real_vocab_size)?;
        }
        if is_conv1d(&name) {
            t = t.t()?;
        }
        tensors.push((format!("transformer.{name}"), t.contiguous()?));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());

    let tmp = tmp_dir_for(dir);
    let build = || -> Result<(), ModelError> {
        fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let config = serde_json::to_vec_pretty(&hf_config_json(cfg)).expect("config serialises");
        crate::util::write_atomic(&tmp.join(HF_CONFIG), &config).map_err(|e| ModelError::io(tmp.join(HF_CONFIG), e))?;
        // GPT-2's tokenizer files, so AutoTokenizer loads the folder; a model of another vocabulary gets none.
        if cfg.real_vocab_size == crate::tokenizer::TokenizerKind::Gpt2.vocab_size() as usize {
            for (name, bytes) in crate::tokenizer::hf_files::gpt2_hf_files(cfg.block_size) {
                crate::util::write_atomic(&tmp.join(name), &bytes).map_err(|e| ModelError::io(tmp.join(name), e))?;
            }
        }
        write_safetensors(&tmp.join(HF_WEIGHTS), &tensors, &meta)
    };
    if let Err(e) = build() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        fs::remove_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
    fsync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        .map_err(|e| ModelError::io(dir, e))
}

fn tmp_dir_for(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "export".into());
    name.push(format!(".tmp.{}", std::process::id()));
    dir.with_file_name(name)
}
