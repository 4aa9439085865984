//! Hugging Face folders (`config.json` + `model.safetensors`, or shards listed by `model.safetensors.index.json`)
//! of every row of the architecture table (`arch`): GPT-2 (`GPT2LMHeadModel`), Llama (`LlamaForCausalLM`) and Qwen2
//! (`Qwen2ForCausalLM`). Import (`load_hf`, `load_hf_files`) reads `config.json` into a `ModelConfig` and maps the
//! tensors by the row's `hf` names; export (`export_hf`) is the reverse. The names are tokenmill's own with the
//! row's body prefix (`transformer.`, `model.`; `lm_head.weight` stands outside it, and exists only for an untied
//! head). Two layout facts:
//!
//! - HF GPT-2 uses `Conv1D` for its four projections, storing weights `(in, out)`; tokenmill stores `(out, in)` like
//!   nn.Linear, so the row's `conv1d` linear weights are transposed both ways.
//! - Key prefixes differ by who saved the file: OpenAI's `gpt2` repo has bare keys (`h.0.attn.c_attn.weight`,
//!   `wte.weight`) plus causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`; `save_pretrained` writes
//!   prefixed keys and drops a tied `lm_head.weight`. Import accepts both (buffers skipped; a stored
//!   `lm_head.weight` of a tied model must equal the embedding); export writes the `save_pretrained` form.
//!
//! Export crops the padded vocabulary back to `real_vocab_size` rows (50304 -> 50257), as llm.c's export does, so
//! the folder pairs with the model's tokenizer.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::arch::{ArchSpec, Positions, TABLE};
use super::config::DEFAULT_ROPE_THETA;
use super::decoder::DecoderBase;
use super::gpt2::Gpt2;
use super::store::{read_safetensors, write_safetensors};
use super::{Architecture, LanguageModel, ModelConfig, ModelError, Precision};
use crate::util::fsync_dir;

pub const HF_CONFIG: &str = "config.json";
pub const HF_WEIGHTS: &str = "model.safetensors";
/// A sharded checkpoint's map from tensor name to shard file (`{"weight_map": {name: file}}`).
pub const HF_WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The tokenizer a folder pairs with (not read here; `--init` compares it with the data's).
pub const HF_TOKENIZER: &str = "tokenizer.json";
/// GPT-2's `<|endoftext|>` id, HF's bos/eos for GPT-2.
const GPT2_EOT: usize = 50256;

/// The files of one HF model: its config, its weights (one file or the shards), its tokenizer if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfFiles {
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

impl HfFiles {
    /// The model in folder `dir`: `config.json` with `model.safetensors`, or with `model.safetensors.index.json`
    /// and the shards it lists.
    pub fn in_dir(dir: &Path) -> Result<HfFiles, ModelError> {
        let config = dir.join(HF_CONFIG);
        if !config.is_file() {
            return Err(ModelError::format(dir, format!("no {HF_CONFIG}: not a Hugging Face model folder")));
        }
        let single = dir.join(HF_WEIGHTS);
        let index = dir.join(HF_WEIGHTS_INDEX);
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_names(&index)?.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(ModelError::format(dir, format!("neither {HF_WEIGHTS} nor {HF_WEIGHTS_INDEX}")));
        };
        let tokenizer = Some(dir.join(HF_TOKENIZER)).filter(|t| t.is_file());
        Ok(HfFiles { config, weights, tokenizer })
    }

    /// The model of hub repo `repo` (`main`), downloaded into the hub cache, or taken from it offline
    /// (`HF_HUB_OFFLINE=1`, or the hub unreachable): `model.safetensors`, else the index and its shards.
    pub fn from_hub(hub: &crate::hub::HubClient, repo: &str) -> Result<HfFiles, ModelError> {
        use crate::hub::HubError;
        let config = hub.download_model_file(repo, HF_CONFIG)?;
        let weights = match hub.download_model_file(repo, HF_WEIGHTS) {
            Ok(path) => vec![path],
            Err(HubError::MissingFile { .. } | HubError::NotCached { .. }) => {
                let index = hub.download_model_file(repo, HF_WEIGHTS_INDEX)?;
                let mut shards = Vec::new();
                for name in shard_names(&index)? {
                    shards.push(hub.download_model_file(repo, &name)?);
                }
                shards
            }
            Err(e) => return Err(e.into()),
        };
        let tokenizer = hub.download_model_file(repo, HF_TOKENIZER).ok();
        Ok(HfFiles { config, weights, tokenizer })
    }

    /// Every tensor of the weight files, by HF name.
    pub fn read_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>, ModelError> {
        let mut all = HashMap::new();
        for file in &self.weights {
            let (tensors, _) = read_safetensors(file, device)?;
            for (name, t) in tensors {
                if all.insert(name.clone(), t).is_some() {
                    return Err(ModelError::format(file, format!("tensor `{name}` is also in another shard")));
                }
            }
        }
        Ok(all)
    }
}

/// The shard files an index lists, each once, in order of first mention.
fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: index.to_path_buf(), source: e })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::format(index, "no `weight_map` object (tensor name -> shard file)"))?;
    let mut files: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && *f != "..")
            .ok_or_else(|| ModelError::format(index, format!("weight_map[`{name}`]: {file} is not a file name")))?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    if files.is_empty() {
        return Err(ModelError::format(index, "`weight_map` lists no tensors"));
    }
    Ok(files)
}

/// The row `config.json` describes: by its `model_type`, checked against its `architectures` class (a config without
/// `model_type` by the class alone; OpenAI's oldest GPT-2 configs have neither: GPT-2). Anything else is refused,
/// naming the field.
fn row_of(path: &Path, json: &serde_json::Value) -> Result<&'static ArchSpec, ModelError> {
    let list = |f: fn(&ArchSpec) -> &'static str| TABLE.iter().map(|r| f(r)).collect::<Vec<_>>().join(", ");
    let class = json.get("architectures").and_then(|a| a.get(0)).and_then(|c| c.as_str());
    let row = match (json.get("model_type"), class) {
        (Some(t), _) => {
            let t = t.as_str().unwrap_or_default();
            let known = list(|r| r.hf.model_type);
            *TABLE.iter().find(|r| r.hf.model_type == t).ok_or_else(|| {
                ModelError::format(path, format!("model_type `{t}` is not supported (tokenmill reads {known})"))
            })?
        }
        (None, Some(c)) => {
            let known = list(|r| r.hf.class);
            *TABLE.iter().find(|r| r.hf.class == c).ok_or_else(|| {
                ModelError::format(path, format!("architectures `{c}` is not supported (tokenmill reads {known})"))
            })?
        }
        (None, None) => &super::arch::GPT2,
    };
    if let Some(class) = class.filter(|&c| c != row.hf.class) {
        return Err(ModelError::format(
            path,
            format!(
                "architectures `{class}` is not supported (model_type {} is read as {})",
                row.hf.model_type, row.hf.class
            ),
        ));
    }
    for &(key, want) in row.hf.switches {
        if let Some(got) = json.get(key).and_then(|v| v.as_bool()).filter(|&got| got != want) {
            return Err(ModelError::format(
                path,
                format!("{key} = {got}: not supported by tokenmill's {} (only {want})", row.hf.model_type),
            ));
        }
    }
    Ok(row)
}

/// The fields of HF's `GPT2Config` that decide the architecture. Unknown fields (dropout rates, task params,
/// tokenizer ids) do not change the forward pass and are ignored.
#[derive(Debug, serde::Deserialize)]
struct HfGpt2Config {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
}

/// The fields of HF's `LlamaConfig` / `Qwen2Config` that decide the architecture (the rotary base is `rope_theta`,
/// or `rope_parameters.rope_theta` in transformers 5).
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
    tie_word_embeddings: Option<bool>,
    layer_types: Option<Vec<String>>,
}

/// The tokenmill config of the HF model described by `config.json` at `path`. Variants tokenmill does not compute
/// (another activation, scaled rotary, sliding windows, biases the row lacks: the row's `switches`) are errors
/// naming the field, never silently wrong. Keys a config omits take transformers' defaults for its class.
pub fn read_hf_config(path: &Path) -> Result<ModelConfig, ModelError> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let row = row_of(path, &json)?;
    let cfg = match row.positions {
        Positions::Learned => read_gpt2_config(row, path, json)?,
        Positions::Rotary => read_llama_config(row, path, json)?,
    };
    cfg.validate().map_err(|e| ModelError::format(path, e.to_string()))?;
    Ok(cfg)
}

/// The config's `norm_eps` and `tie_word_embeddings` for HF's values (transformers' class defaults where absent):
/// `Some` only where they differ from the row's own defaults (a config states what differs).
fn eps_and_tie(row: &ArchSpec, eps: Option<f64>, tied: Option<bool>) -> (Option<f64>, Option<bool>) {
    let eps = eps.unwrap_or(row.hf.eps_default);
    let tied = tied.unwrap_or(row.hf.tied_default);
    ((eps != row.norm_eps).then_some(eps), (!tied).then_some(false))
}

fn read_gpt2_config(row: &ArchSpec, path: &Path, json: serde_json::Value) -> Result<ModelConfig, ModelError> {
    let hf: HfGpt2Config =
        serde_json::from_value(json).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let unsupported =
        |what: String| Err(ModelError::format(path, format!("{what}: not supported by tokenmill's GPT-2")));
    let act = hf.activation_function.as_deref().unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
        return unsupported(format!("activation_function `{act}` (tanh-approximate GELU expected)"));
    }
    if let Some(inner) = hf.n_inner {
        if inner != 4 * hf.n_embd {
            return unsupported(format!("n_inner {inner} (expected 4 * n_embd = {})", 4 * hf.n_embd));
        }
    }
    let (norm_eps, tie_word_embeddings) = eps_and_tie(row, hf.layer_norm_epsilon, hf.tie_word_embeddings);
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        real_vocab_size: hf.vocab_size,
        norm_eps,
        tie_word_embeddings,
        ..ModelConfig::sized(row.arch, hf.n_positions, hf.n_layer, hf.n_head, hf.n_embd)
    })
}

fn read_llama_config(row: &ArchSpec, path: &Path, json: serde_json::Value) -> Result<ModelConfig, ModelError> {
    let hf: HfLlamaConfig =
        serde_json::from_value(json).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let unsupported = |what: String| {
        Err(ModelError::format(path, format!("{what}: not supported by tokenmill's {}", row.hf.model_type)))
    };
    let act = hf.hidden_act.as_deref().unwrap_or("silu");
    if act != "silu" {
        return unsupported(format!("hidden_act `{act}` (SwiGLU with silu expected)"));
    }
    if let Some(other) = hf.layer_types.iter().flatten().find(|t| *t != "full_attention") {
        return unsupported(format!("layer_types `{other}` (full_attention expected)"));
    }
    if hf.head_dim.is_some_and(|d| d * hf.num_attention_heads != hf.hidden_size) {
        return unsupported(format!("head_dim {:?} != hidden_size / num_attention_heads", hf.head_dim));
    }
    let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref()).filter(|r| !r.is_null());
    let rope_type = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(|t| t.as_str());
    if rope_type.is_some_and(|t| t != "default") {
        return unsupported(format!("rope type `{}` (plain rotary expected)", rope_type.unwrap_or_default()));
    }
    let theta = hf
        .rope_theta
        .or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(|t| t.as_f64()))
        .unwrap_or(DEFAULT_ROPE_THETA);
    let (layers, heads, c) = (hf.num_hidden_layers, hf.num_attention_heads, hf.hidden_size);
    let base = ModelConfig::sized(row.arch, hf.max_position_embeddings, layers, heads, c);
    let (norm_eps, tie_word_embeddings) = eps_and_tie(row, hf.rms_norm_eps, hf.tie_word_embeddings);
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        real_vocab_size: hf.vocab_size,
        n_kv_head: hf.num_key_value_heads.filter(|&kv| kv != heads),
        ffn_hidden: Some(hf.intermediate_size).filter(|&h| h != base.hidden()),
        rope_theta: Some(theta).filter(|&t| t != DEFAULT_ROPE_THETA),
        tie_word_embeddings,
        norm_eps,
        ..base
    })
}

/// HF tensors in tokenmill's form, by `cfg`'s row: the body prefix stripped, buffers dropped, Conv1D weights
/// transposed to `(out, in)`, and a stored `lm_head.weight` of a tied model checked equal to the embedding, bit for
/// bit, and set aside.
pub fn tensors_from_hf(
    cfg: &ModelConfig,
    tensors: HashMap<String, Tensor>,
    source: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let row = cfg.arch.spec();
    let top = row.top(cfg.tied());
    let head = format!("{}.weight", row.names.lm_head);
    let mut out = HashMap::with_capacity(tensors.len());
    let mut stored_head = None;
    for (key, t) in tensors {
        let name = key.strip_prefix(row.hf.prefix).unwrap_or(&key).to_string();
        if row.hf.buffers.iter().any(|b| name.ends_with(b)) {
            continue; // causal masks or rotary frequencies some checkpoints persisted: computed, not stored
        }
        let t = if row.hf.conv1d && row.is_linear_weight(&name) { t.t()?.contiguous()? } else { t };
        if name == head && top.lm_head.is_none() {
            stored_head = Some(t);
        } else {
            out.insert(name, t);
        }
    }
    if let (Some(head), Some(emb)) = (stored_head, out.get(&top.embedding)) {
        let same = head.dims() == emb.dims()
            && (head.to_dtype(DType::F32)? - emb.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        if !same {
            let why = if row.configurable {
                "but config.json says the head is tied"
            } else {
                "untied heads are not supported"
            };
            return Err(ModelError::format(source, format!("lm_head.weight differs from {}: {why}", top.embedding)));
        }
    }
    Ok(out)
}

/// Load the HF model in `dir` (`config.json` + `model.safetensors`, or sharded).
pub fn load_hf(dir: &Path, precision: Precision, device: &Device) -> Result<Box<dyn LanguageModel>, ModelError> {
    load_hf_model(&HfFiles::in_dir(dir)?, precision, device)
}

/// Load an HF model from its two files (as downloaded to the hub cache, which keeps them apart).
pub fn load_hf_files(
    config: &Path,
    weights: &Path,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let files = HfFiles { config: config.to_path_buf(), weights: vec![weights.to_path_buf()], tokenizer: None };
    load_hf_model(&files, precision, device)
}

/// Load the HF model `files` hold, of the config their `config.json` describes.
pub fn load_hf_model(
    files: &HfFiles,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    load_hf_as(files, &read_hf_config(&files.config)?, precision, device)
}

/// Load the weights `files` hold into a model of `cfg` (`config.json`'s, possibly with another block size): a
/// tensor of another shape is an error naming it.
pub fn load_hf_as(
    files: &HfFiles,
    cfg: &ModelConfig,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let source = files.weights.first().map_or(files.config.as_path(), |p| p.as_path());
    let tensors = tensors_from_hf(cfg, files.read_tensors(device)?, source)?;
    super::model_from_tensors(cfg, precision, device, tensors, source)
}

/// Load the HF GPT-2 in `dir` (`config.json` + `model.safetensors`).
pub fn load_hf_gpt2(dir: &Path, precision: Precision, device: &Device) -> Result<Gpt2, ModelError> {
    let files = HfFiles::in_dir(dir)?;
    let cfg = read_hf_config(&files.config)?;
    if cfg.arch != Architecture::Gpt2 {
        return Err(ModelError::format(&files.config, "not a GPT-2 (`load_hf` loads any supported model)"));
    }
    let source = &files.weights[0];
    let tensors = tensors_from_hf(&cfg, files.read_tensors(device)?, source)?;
    Ok(Gpt2::new(DecoderBase::load(&cfg, precision, device, tensors, source)?))
}

/// The `config.json` transformers' class of `cfg`'s row loads for `cfg` (with `vocab_size` = the real vocabulary).
pub fn hf_config_json(cfg: &ModelConfig) -> serde_json::Value {
    let row = cfg.arch.spec();
    // GPT-2's <|endoftext|> (50256) when the vocabulary has it; transformers warns about ids outside the vocabulary.
    let eot = (cfg.real_vocab_size > GPT2_EOT).then_some(GPT2_EOT);
    let mut json = match row.positions {
        Positions::Rotary => serde_json::json!({
            "vocab_size": cfg.real_vocab_size,
            "hidden_size": cfg.n_embd,
            "intermediate_size": cfg.hidden(),
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads(),
            "head_dim": cfg.head_size(),
            "max_position_embeddings": cfg.block_size,
            "rms_norm_eps": cfg.eps(),
            "rope_theta": cfg.rope_base(),
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": cfg.tied(),
            "use_cache": true,
        }),
        Positions::Learned => serde_json::json!({
            "vocab_size": cfg.real_vocab_size,
            "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.eps(),
            "initializer_range": 0.02,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": true,
            "use_cache": true,
        }),
    };
    let m = json.as_object_mut().expect("an object");
    m.insert("architectures".into(), serde_json::json!([row.hf.class]));
    m.insert("model_type".into(), row.hf.model_type.into());
    for &(key, value) in row.hf.switches {
        m.insert(key.into(), value.into());
    }
    m.insert("bos_token_id".into(), serde_json::json!(eot));
    m.insert("eos_token_id".into(), serde_json::json!(eot));
    m.insert("torch_dtype".into(), "float32".into());
    json
}

/// Write `model` as a Hugging Face folder at `dir`: `config.json` + `model.safetensors` (fp32, vocabulary cropped to
/// `real_vocab_size`), in the form of its row's transformers class (prefixed keys, Conv1D layout for GPT-2,
/// `lm_head.weight` only for an untied head). The folder is assembled under a temp name and renamed into place; `dir`
/// must not exist yet (or be empty).
pub fn export_hf(model: &dyn LanguageModel, dir: &Path) -> Result<(), ModelError> {
    let cfg = model.config();
    let row = cfg.arch.spec();
    if dir.exists() {
        let empty = fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_none();
        if !empty {
            return Err(ModelError::format(dir, "already exists and is not empty; choose a new directory"));
        }
    }
    let top = row.top(cfg.tied());
    let mut tensors = Vec::new();
    for (name, var) in model.parameters() {
        let mut t = var.as_tensor().to_dtype(DType::F32)?;
        if name == top.embedding || top.lm_head.as_ref() == Some(&name) {
            t = t.narrow(0, 0, cfg.real_vocab_size)?;
        }
        if row.hf.conv1d && row.is_linear_weight(&name) {
            t = t.t()?;
        }
        let key = if top.lm_head.as_ref() == Some(&name) { name } else { format!("{}{name}", row.hf.prefix) };
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
