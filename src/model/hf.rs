//! Hugging Face folders (`config.json` + `model.safetensors`) of GPT-2 (`GPT2LMHeadModel`) and Llama
//! (`LlamaForCausalLM`): import (`load_hf`, `load_hf_files`) and export (`export_hf`). Both are key maps over the
//! names tokenmill already uses. Llama's are HF's without the `model.` prefix, in nn.Linear's `(out, in)` layout,
//! with HF's rotate-half rotary layout, so they map one to one (`lm_head.weight` only for an untied head). For GPT-2,
//! two layout facts:
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

use super::decoder::DecoderBase;
use super::gpt2::Gpt2;
use super::ops::{LAYER_NORM_EPS, RMS_NORM_EPS};
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

/// The fields of HF's `LlamaConfig` that decide the architecture (the rotary base is `rope_theta`, or
/// `rope_parameters.rope_theta` in transformers 5).
#[derive(Debug, serde::Deserialize)]
struct HfLlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
}

/// The tokenmill config of the HF model described by `config.json` at `path` (`model_type` gpt2 or llama).
/// Variants tokenmill does not compute (another activation, other eps, scaled rotary or layer-scaled attention,
/// biases on a Llama) are errors, never silently wrong.
pub fn read_hf_config(path: &Path) -> Result<ModelConfig, ModelError> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    if json.get("model_type").and_then(|t| t.as_str()) == Some("llama") {
        return read_hf_llama_config(path, json);
    }
    let hf: HfGpt2Config =
        serde_json::from_value(json).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let unsupported =
        |what: String| Err(ModelError::format(path, format!("{what}: not supported by tokenmill's GPT-2")));
    if let Some(t) = &hf.model_type {
        if t != "gpt2" {
            return unsupported(format!("model_type `{t}` (gpt2 and llama are read)"));
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

fn read_hf_llama_config(path: &Path, json: serde_json::Value) -> Result<ModelConfig, ModelError> {
    let hf: HfLlamaConfig =
        serde_json::from_value(json).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let unsupported =
        |what: String| Err(ModelError::format(path, format!("{what}: not supported by tokenmill's Llama")));
    let act = hf.hidden_act.as_deref().unwrap_or("silu");
    if act != "silu" {
        return unsupported(format!("hidden_act `{act}` (SwiGLU with silu expected)"));
    }
    let eps = hf.rms_norm_eps.unwrap_or(RMS_NORM_EPS);
    if (eps - RMS_NORM_EPS).abs() > 1e-12 {
        return unsupported(format!("rms_norm_eps {eps} (expected {RMS_NORM_EPS})"));
    }
    if hf.attention_bias == Some(true) || hf.mlp_bias == Some(true) {
        return unsupported("biases".into());
    }
    if hf.head_dim.is_some_and(|d| d * hf.num_attention_heads != hf.hidden_size) {
        return unsupported(format!("head_dim {:?} != hidden_size / num_attention_heads", hf.head_dim));
    }
    let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
    let rope_type = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(|t| t.as_str());
    if rope_type.is_some_and(|t| t != "default") {
        return unsupported(format!("rope type `{}` (plain rotary expected)", rope_type.unwrap_or_default()));
    }
    let theta = hf
        .rope_theta
        .or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(|t| t.as_f64()))
        .unwrap_or(super::config::DEFAULT_ROPE_THETA);
    let base = ModelConfig::sized(
        Architecture::Llama,
        hf.max_position_embeddings,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.hidden_size,
    );
    let cfg = ModelConfig {
        vocab_size: hf.vocab_size,
        real_vocab_size: hf.vocab_size,
        n_kv_head: hf.num_key_value_heads.filter(|&kv| kv != hf.num_attention_heads),
        ffn_hidden: Some(hf.intermediate_size).filter(|&h| h != base.hidden()),
        rope_theta: Some(theta).filter(|&t| t != super::config::DEFAULT_ROPE_THETA),
        tie_word_embeddings: hf.tie_word_embeddings.filter(|&t| !t),
        ..base
    };
    cfg.validate().map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok(cfg)
}

/// HF Llama tensors in tokenmill's form: `model.` stripped, rotary buffers dropped, a stored `lm_head.weight` kept
/// for an untied head and checked equal to the embedding for a tied one.
fn llama_tensors_from_hf(
    cfg: &ModelConfig,
    tensors: HashMap<String, Tensor>,
    source: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let tied =
        cfg.tied().then_some(("embed_tokens.weight", "embed_tokens.weight, but config.json says the head is tied"));
    tensors_from_hf(tensors, source, tied, |key, t| {
        if key.ends_with("rotary_emb.inv_freq") {
            return Ok(None); // a buffer older transformers saved; the tables are computed
        }
        Ok(Some((key.strip_prefix("model.").unwrap_or(key).to_string(), t)))
    })
}

/// What both architectures' imports share: `rename` gives each HF tensor its tokenmill name and layout (`None`: a
/// buffer HF persisted, dropped). With `tied = Some((embedding, what))` a stored `lm_head.weight` is no parameter:
/// it is set aside and must equal the embedding, bit for bit (`what` ends the error).
fn tensors_from_hf(
    tensors: HashMap<String, Tensor>,
    source: &Path,
    tied: Option<(&str, &str)>,
    rename: impl Fn(&str, Tensor) -> Result<Option<(String, Tensor)>, ModelError>,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut out = HashMap::with_capacity(tensors.len());
    let mut lm_head = None;
    for (key, t) in tensors {
        let Some((name, t)) = rename(&key, t)? else { continue };
        if name == "lm_head.weight" && tied.is_some() {
            lm_head = Some(t);
        } else {
            out.insert(name, t);
        }
    }
    let emb = tied.and_then(|(name, what)| Some((out.get(name)?, what)));
    if let (Some(head), Some((emb, what))) = (lm_head, emb) {
        check_tied(&head, emb, source, what)?;
    }
    Ok(out)
}

/// A stored `lm_head.weight` of a tied model must be the embedding, bit for bit; `what` ends the error.
fn check_tied(head: &Tensor, emb: &Tensor, source: &Path, what: &str) -> Result<(), ModelError> {
    let tied = head.dims() == emb.dims()
        && (head.to_dtype(DType::F32)? - emb.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
    if !tied {
        return Err(ModelError::format(source, format!("lm_head.weight differs from {what}")));
    }
    Ok(())
}

/// Load the HF model (GPT-2 or Llama) in `dir` (`config.json` + `model.safetensors`).
pub fn load_hf(dir: &Path, precision: Precision, device: &Device) -> Result<Box<dyn LanguageModel>, ModelError> {
    load_hf_files(&dir.join(HF_CONFIG), &dir.join(HF_WEIGHTS), precision, device)
}

/// Load an HF model (GPT-2 or Llama) from its two files (as downloaded to the hub cache, which keeps them apart).
pub fn load_hf_files(
    config: &Path,
    weights: &Path,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let cfg = read_hf_config(config)?;
    if cfg.arch == Architecture::Gpt2 {
        return Ok(Box::new(load_hf_gpt2_files(config, weights, precision, device)?));
    }
    let (tensors, _) = read_safetensors(weights, device)?;
    let tensors = llama_tensors_from_hf(&cfg, tensors, weights)?;
    super::model_from_tensors(&cfg, precision, device, tensors, weights)
}

/// Rename and re-lay HF GPT-2 tensors into tokenmill's form: strip `transformer.`, drop the causal-mask buffers,
/// transpose Conv1D weights to `(out, in)`, and check a stored `lm_head.weight` is really tied to `wte`.
pub fn gpt2_tensors_from_hf(
    tensors: HashMap<String, Tensor>,
    source: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let tied = Some(("wte.weight", "wte.weight: untied heads are not supported"));
    tensors_from_hf(tensors, source, tied, |key, t| {
        let name = key.strip_prefix("transformer.").unwrap_or(key).to_string();
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            return Ok(None); // causal-mask buffers that old checkpoints persisted; the mask is built, not stored
        }
        let t = if is_conv1d(&name) { t.t()?.contiguous()? } else { t };
        Ok(Some((name, t)))
    })
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
    if cfg.arch != Architecture::Gpt2 {
        return Err(ModelError::format(config, "a Llama model, not GPT-2 (`load_hf` loads either)"));
    }
    let (tensors, _) = read_safetensors(weights, device)?;
    let tensors = gpt2_tensors_from_hf(tensors, weights)?;
    Ok(Gpt2::new(DecoderBase::load(&cfg, precision, device, tensors, weights)?))
}

/// The `config.json` transformers' `GPT2LMHeadModel` or `LlamaForCausalLM` loads for `cfg` (with `vocab_size` =
/// the real vocabulary).
pub fn hf_config_json(cfg: &ModelConfig) -> serde_json::Value {
    // GPT-2's <|endoftext|> (50256) when the vocabulary has it; transformers warns about ids outside the vocabulary.
    let eot = (cfg.real_vocab_size > GPT2_EOT).then_some(GPT2_EOT);
    if cfg.arch == Architecture::Llama {
        return serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.real_vocab_size,
            "hidden_size": cfg.n_embd,
            "intermediate_size": cfg.hidden(),
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads(),
            "head_dim": cfg.head_size(),
            "max_position_embeddings": cfg.block_size,
            "rms_norm_eps": RMS_NORM_EPS,
            "rope_theta": cfg.rope_base(),
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "tie_word_embeddings": cfg.tied(),
            "use_cache": true,
            "bos_token_id": eot,
            "eos_token_id": eot,
            "torch_dtype": "float32",
        });
    }
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

/// Write `model` as a Hugging Face folder at `dir`: `config.json` + `model.safetensors` (fp32, vocabulary cropped to
/// `real_vocab_size`); GPT-2 in `GPT2LMHeadModel`'s form (`transformer.`-prefixed keys, Conv1D layout), Llama in
/// `LlamaForCausalLM`'s (`model.`-prefixed keys, `lm_head.weight` for an untied head). The folder is assembled under
/// a temp name and renamed into place; `dir` must not exist yet (or be empty).
pub fn export_hf(model: &dyn LanguageModel, dir: &Path) -> Result<(), ModelError> {
    let cfg = model.config();
    if dir.exists() {
        let empty = fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_none();
        if !empty {
            return Err(ModelError::format(dir, "already exists and is not empty; choose a new directory"));
        }
    }
    let mut tensors = Vec::new();
    for (name, var) in model.parameters() {
        let mut t = var.as_tensor().to_dtype(DType::F32)?;
        if matches!(name.as_str(), "wte.weight" | "embed_tokens.weight" | "lm_head.weight") {
            t = t.narrow(0, 0, cfg.real_vocab_size)?;
        }
        let key = match cfg.arch {
            Architecture::Gpt2 => {
                if is_conv1d(&name) {
                    t = t.t()?;
                }
                format!("transformer.{name}")
            }
            Architecture::Llama if name == "lm_head.weight" => name,
            Architecture::Llama => format!("model.{name}"),
        };
        tensors.push((key, t.contiguous()?));
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
