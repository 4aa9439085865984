//! tokenmill's own weight files: `model.safetensors` holding the parameters under their checkpoint names in the
//! master dtype, with the `ModelConfig` as JSON in the header's metadata (`tokenmill.model_config`), so a weight
//! file alone is enough to rebuild its model. Also the safetensors reader/writer the HF export shares.
//!
//! The writer streams one tensor at a time (a 1558M model never needs a second host copy of itself), writes to a
//! temp name, fsyncs and renames (src/util.rs's contract). The header carries `"format": "pt"`, which transformers
//! requires of a safetensors file before it loads it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{model_from_tensors, LanguageModel, ModelConfig, ModelError, Precision};
use crate::util::{fsync_dir, temp_path_for};

/// Metadata key holding the JSON `ModelConfig` in tokenmill weight files.
pub const MODEL_CONFIG_KEY: &str = "tokenmill.model_config";
/// The weights file inside a checkpoint directory. Defined here, where a checkpoint's model is loaded from;
/// `train::checkpoint` writes the directory and lists it with its own optimizer file.
pub const MODEL_FILE: &str = "model.safetensors";
/// The trainer's state file inside a checkpoint directory (here: a fallback source of the model config).
pub const STATE_FILE: &str = "state.json";

fn st_dtype(dt: DType) -> Result<&'static str, ModelError> {
    Ok(match dt {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        DType::I64 => "I64",
        other => return Err(ModelError::Unsupported(format!("cannot write {other:?} tensors to safetensors"))),
    })
}

/// Little-endian bytes of `t` (any device), row-major.
fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?.to_device(&Device::Cpu)?;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::F64 => le(t.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::F32 => le(t.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::BF16 => le(t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::F16 => le(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::U32 => le(t.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::I64 => le(t.to_vec1::<i64>()?, i64::to_le_bytes),
        other => candle_core::bail!("cannot serialise {other:?}"),
    })
}

/// Write `tensors` (in this order) and `metadata` as a safetensors file at `path`, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map serialises"));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let len = t.elem_count() * t.dtype().size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": st_dtype(t.dtype())?, "shape": t.dims(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header serialises");
    // The data section starts 8-aligned (the format's recommendation; readers then map tensors without copying).
    while !(8 + header.len()).is_multiple_of(8) {
        header.push(b' ');
    }

    let tmp = temp_path_for(path);
    let write = || -> Result<(), ModelError> {
        let io = |e| ModelError::io(&tmp, e);
        let file = File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (_, t) in tensors {
            w.write_all(&tensor_bytes(t)?).map_err(io)?;
        }
        let file = w.into_inner().map_err(|e| ModelError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(io)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new("."))).map_err(|e| ModelError::io(path, e))
}

/// A safetensors file's tensors by name and its header metadata.
pub type NamedTensors = (HashMap<String, Tensor>, HashMap<String, String>);

/// All tensors of the safetensors file at `path` (on `device`, in their stored dtypes) and its metadata.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<NamedTensors, ModelError> {
    let bytes = fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| ModelError::format(path, format!("not a safetensors file: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| ModelError::format(path, format!("reading tensors: {e}")))?;
    Ok((tensors, metadata))
}

/// Save `model`'s parameters (current values, master dtype) and config to `path` (a `.safetensors` file).
pub fn save_model_weights(model: &dyn LanguageModel, path: &Path) -> Result<(), ModelError> {
    let tensors: Vec<(String, Tensor)> =
        model.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(MODEL_CONFIG_KEY.to_string(), serde_json::to_string(model.config()).expect("config serialises"));
    write_safetensors(path, &tensors, &meta)
}

fn config_from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<Option<ModelConfig>, ModelError> {
    match meta.get(MODEL_CONFIG_KEY) {
        None => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| ModelError::format(path, format!("metadata `{MODEL_CONFIG_KEY}` is not a model config: {e}"))),
    }
}

/// Rebuild a model from a file `save_model_weights` wrote.
pub fn load_model_weights(
    path: &Path,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let (tensors, meta) = read_safetensors(path, device)?;
    let cfg = config_from_metadata(path, &meta)?.ok_or_else(|| {
        ModelError::format(path, format!("no `{MODEL_CONFIG_KEY}` in the header: not written by tokenmill"))
    })?;
    model_from_tensors(&cfg, precision, device, tensors, path)
}

/// The model of a checkpoint directory (`model.safetensors`, plus `state.json` written by the trainer).
///
/// The config comes from the weights' own metadata; for weight files without it, from `state.json`'s `"model"`
/// field (a serialised `ModelConfig`).
pub fn load_checkpoint_model(
    dir: &Path,
    precision: Precision,
    device: &Device,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let weights = dir.join(MODEL_FILE);
    let (tensors, meta) = read_safetensors(&weights, device)?;
    let cfg = match config_from_metadata(&weights, &meta)? {
        Some(cfg) => cfg,
        None => {
            let state_path = dir.join(STATE_FILE);
            if !state_path.exists() {
                // Most likely an HF folder that lost its config.json: say that, not only "no state.json".
                return Err(ModelError::format(
                    dir,
                    "model.safetensors carries no tokenmill model config, and neither config.json (an HF GPT-2 \
                     folder: put its config.json beside model.safetensors) nor state.json (a tokenmill checkpoint) \
                     is there",
                ));
            }
            let text = fs::read_to_string(&state_path).map_err(|e| ModelError::io(&state_path, e))?;
            let state: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Json { path: state_path.clone(), source: e })?;
            let model = state.get("model").cloned().ok_or_else(|| {
                ModelError::format(&state_path, "no `model` field (and model.safetensors has no model config)")
            })?;
            serde_json::from_value(model).map_err(|e| ModelError::Json { path: state_path.clone(), source: e })?
        }
    };
    model_from_tensors(&cfg, precision, device, tensors, &weights)
}
