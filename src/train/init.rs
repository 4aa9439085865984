//! Where a fresh run's weights come from when `[model] init` (`train --init`) names a Hugging Face model: `hf:REPO`
//! (resolved through the hub cache: `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`; offline from the cache with
//! `HF_HUB_OFFLINE=1` or when the hub is unreachable) or a folder (`config.json` + `model.safetensors`, or
//! `model.safetensors.index.json` and its shards). Its `config.json` is the run's model config (every row of the
//! architecture table: GPT-2, Llama-family, Qwen2), read once when the config is resolved; its weights replace the
//! seeded init; data tokenized with another vocabulary is refused before anything is written.
//!
//! ```text
//! tokenmill train --init hf:HuggingFaceTB/SmolLM2-135M --data shards/my-corpus --set data.seq_len=1024
//! tokenmill train --init ./qwen2.5-0.5b --data shards/my-corpus --config configs/tiny-cpu.toml
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::model::hf::{read_hf_config, HfFiles};
use crate::model::{LanguageModel, ModelConfig, ModelError, Precision};
use crate::shards::manifest::TokenizerInfo;

/// The prefix of a hub repo id in `--init`.
pub const HUB_PREFIX: &str = "hf:";

/// A Hugging Face model a run starts from, its files found.
#[derive(Clone, Debug)]
pub struct InitModel {
    /// As written (`hf:REPO` or a path): what configs and checkpoints record.
    pub spec: String,
    pub files: HfFiles,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("[model] init `{spec}`: {source}")]
    Model {
        spec: String,
        #[source]
        source: ModelError,
    },
    #[error("[model] init `{0}`: expected hf:ORG/NAME (a hub repo) or a folder holding config.json")]
    BadSpec(String),
    #[error(
        "{data}/manifest.json: the data's tokenizer ({data_tokenizer}) is not the init model's ({model_tokenizer}, \
         {file}); prep the corpus with the model's tokenizer"
    )]
    TokenizerMismatch { data: String, data_tokenizer: String, model_tokenizer: String, file: String },
}

impl InitModel {
    /// Find the model `spec` names: `hf:REPO` through the hub (a `hf:` path that exists is taken as that folder),
    /// anything else a folder.
    pub fn open(spec: &str) -> Result<InitModel, InitError> {
        let model_err = |source| InitError::Model { spec: spec.to_string(), source };
        let files = match spec.strip_prefix(HUB_PREFIX) {
            Some(rest) if Path::new(rest).is_dir() => HfFiles::in_dir(Path::new(rest)).map_err(model_err)?,
            Some(repo) => {
                let valid = repo.split('/').count() == 2 && repo.split('/').all(|p| !p.is_empty() && p != "..");
                if !valid {
                    return Err(InitError::BadSpec(spec.to_string()));
                }
                let hub = crate::hub::HubClient::from_env().map_err(|e| model_err(e.into()))?;
                HfFiles::from_hub(&hub, repo).map_err(model_err)?
            }
            None if Path::new(spec).is_dir() => HfFiles::in_dir(Path::new(spec)).map_err(model_err)?,
            None => return Err(InitError::BadSpec(spec.to_string())),
        };
        Ok(InitModel { spec: spec.to_string(), files })
    }

    /// The model config its `config.json` describes.
    pub fn config(&self) -> Result<ModelConfig, InitError> {
        read_hf_config(&self.files.config).map_err(|source| InitError::Model { spec: self.spec.clone(), source })
    }

    /// Its weights as a model of `cfg` (the run's resolved config: `config.json`'s, possibly with another block
    /// size; a field that changes a tensor's shape is an error naming the tensor).
    pub fn load(
        &self,
        cfg: &ModelConfig,
        precision: Precision,
        device: &Device,
    ) -> Result<Box<dyn LanguageModel>, InitError> {
        crate::model::hf::load_hf_as(&self.files, cfg, precision, device)
            .map_err(|source| InitError::Model { spec: self.spec.clone(), source })
    }

    /// Refuse data (`data_dir`, whose manifest records `data`) tokenized otherwise than this model expects.
    /// Compared: the vocabulary size of the model's `tokenizer.json` (ids of its vocabulary and added tokens) with
    /// the manifest's. Without a tokenizer.json the model's own vocabulary bounds the data's (the trainer's check).
    // Once manifests record the sha256 of the tokenizer.json they were made with, compare that here too.
    pub fn check_data_tokenizer(&self, data_dir: &Path, data: &TokenizerInfo) -> Result<(), InitError> {
        let Some(file) = &self.files.tokenizer else { return Ok(()) };
        let model_vocab =
            hf_tokenizer_vocab_size(file).map_err(|source| InitError::Model { spec: self.spec.clone(), source })?;
        let mismatch = |model_tokenizer: String| InitError::TokenizerMismatch {
            data: data_dir.display().to_string(),
            data_tokenizer: format!("{}, {} ids", data.describe(), data.vocab_size),
            model_tokenizer,
            file: file.display().to_string(),
        };
        if model_vocab != data.vocab_size as usize {
            return Err(mismatch(format!("{model_vocab} ids")));
        }
        // Data prepared with a Hugging Face tokenizer records its tokenizer.json's sha256: it must be the model's.
        if let Some(hf) = &data.hf {
            let sha = crate::hub::sha256_file(file).map_err(|e| InitError::Model {
                spec: self.spec.clone(),
                source: ModelError::io(file.to_path_buf(), e),
            })?;
            if sha != hf.sha256 {
                return Err(mismatch(format!("tokenizer.json sha256 {}", &sha[..12])));
            }
        }
        Ok(())
    }
}

/// The model config of `[model] init = spec`.
pub fn config(spec: &str) -> Result<ModelConfig, InitError> {
    InitModel::open(spec)?.config()
}

/// The id count of a Hugging Face `tokenizer.json`: one past the largest id of its model's vocabulary (a
/// `{token: id}` map for BPE and WordPiece, a `[[piece, score], ...]` list for Unigram) and its added tokens.
pub fn hf_tokenizer_vocab_size(path: &Path) -> Result<usize, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(PathBuf::from(path), e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
    let vocab = json.pointer("/model/vocab");
    let from_vocab = match vocab {
        Some(serde_json::Value::Object(map)) => map.values().filter_map(|id| id.as_u64()).max().map(|m| m as usize + 1),
        Some(serde_json::Value::Array(list)) => Some(list.len()),
        _ => return Err(ModelError::format(path, "no model.vocab (a map or a list): not a tokenizer.json")),
    };
    let added = json
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|t| t.get("id")?.as_u64()).max().map_or(0, |m| m as usize + 1))
        .unwrap_or(0);
    Ok(from_vocab.unwrap_or(0).max(added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_size_counts_added_tokens_and_unigram_lists() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, json: serde_json::Value| {
            let p = dir.path().join(name);
            std::fs::write(&p, json.to_string()).unwrap();
            p
        };
        let bpe = write(
            "bpe.json",
            serde_json::json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}},
                               "added_tokens": [{"id": 5, "content": "<|eot|>"}]}),
        );
        assert_eq!(hf_tokenizer_vocab_size(&bpe).unwrap(), 6);
        let unigram =
            write("uni.json", serde_json::json!({"model": {"type": "Unigram", "vocab": [["a", 0.0], ["b", -1.0]]}}));
        assert_eq!(hf_tokenizer_vocab_size(&unigram).unwrap(), 2);
        let err = hf_tokenizer_vocab_size(&write("x.json", serde_json::json!({"model": {}}))).unwrap_err().to_string();
        assert!(err.contains("x.json") && err.contains("model.vocab"), "{err}");
    }

    #[test]
    fn a_spec_is_a_hub_repo_or_a_folder() {
        for bad in ["hf:gpt2", "hf:a/b/c", "hf:../x", "/no/such/folder"] {
            let err = InitModel::open(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("hf:ORG/NAME"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = InitModel::open(dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
