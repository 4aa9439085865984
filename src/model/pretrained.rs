//! What `--model` can name, and loading it: a Hugging Face hub GPT-2 (`gpt2`, `gpt2-medium`, `gpt2-large`,
//! `gpt2-xl`) or any `org/name` GPT-2 or Llama repo, a local HF folder (`config.json` + `model.safetensors`), a tokenmill
//! checkpoint directory (`model.safetensors` + `state.json`), or a tokenmill weight file (`*.safetensors`).

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::hf::{load_hf, load_hf_files, HF_CONFIG, HF_WEIGHTS};
use super::store::{load_checkpoint_model, load_model_weights, MODEL_FILE, STATE_FILE};
use super::{LanguageModel, ModelError, Precision};
use crate::hub::HubClient;

/// OpenAI's four GPT-2 sizes on the hub.
pub const HUB_GPT2_MODELS: [&str; 4] = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

/// Where a `--model` value points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A hub repo holding an HF GPT-2 (downloaded into the hub cache).
    Hub(String),
    /// A local HF GPT-2 folder.
    HfDir(PathBuf),
    /// A tokenmill checkpoint directory.
    Checkpoint(PathBuf),
    /// A tokenmill weight file (`save_model_weights`).
    Weights(PathBuf),
}

impl ModelSource {
    /// Classify `spec`: an existing path wins over a hub name, so a local folder called `gpt2` is used as a folder.
    pub fn parse(spec: &str) -> Result<ModelSource, ModelError> {
        let path = Path::new(spec);
        if path.is_dir() {
            if path.join(HF_CONFIG).is_file() {
                return Ok(ModelSource::HfDir(path.to_path_buf()));
            }
            if path.join(MODEL_FILE).is_file() {
                return Ok(ModelSource::Checkpoint(path.to_path_buf()));
            }
            return Err(ModelError::format(
                path,
                format!(
                    "neither an HF folder ({HF_CONFIG} + {HF_WEIGHTS}) nor a tokenmill checkpoint \
                     ({MODEL_FILE} + {STATE_FILE})"
                ),
            ));
        }
        if path.is_file() {
            return Ok(ModelSource::Weights(path.to_path_buf()));
        }
        if HUB_GPT2_MODELS.contains(&spec)
            || (spec.contains('/') && !spec.starts_with(['.', '/']) && spec.split('/').count() == 2)
        {
            return Ok(ModelSource::Hub(spec.to_string()));
        }
        Err(ModelError::Config(format!(
            "--model `{spec}` is not an existing file or directory, nor a hub GPT-2 ({} or org/name)",
            HUB_GPT2_MODELS.join(", ")
        )))
    }
}

/// Load whatever `spec` names (see `ModelSource::parse`) on `device` in `precision`.
pub fn load_model(spec: &str, precision: Precision, device: &Device) -> Result<Box<dyn LanguageModel>, ModelError> {
    Ok(match ModelSource::parse(spec)? {
        ModelSource::Hub(repo) => {
            let hub = HubClient::from_env()?;
            let config = hub.download_model_file(&repo, HF_CONFIG)?;
            let weights = hub.download_model_file(&repo, HF_WEIGHTS)?;
            load_hf_files(&config, &weights, precision, device)?
        }
        ModelSource::HfDir(dir) => load_hf(&dir, precision, device)?,
        ModelSource::Checkpoint(dir) => load_checkpoint_model(&dir, precision, device)?,
        ModelSource::Weights(file) => load_model_weights(&file, precision, device)?,
    })
}
