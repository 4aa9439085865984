//! What a checkpoint records and the names a run's files go by: `state.json` ([`TrainState`], with the sampling RNG's
//! position and the identity of the data the run trains on) and the fixed names of a run directory's checkpoint
//! folders. Its own module so that `checkpoint` (writing and reading checkpoints), `resume` (what a resume may
//! change) and `run_dir` (what a run may write and remove) share these without importing each other: `checkpoint`
//! and `resume` depend on this module only, `run_dir` on it and on `checkpoint`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::shards::loader::{split_files, LoaderError};
use crate::shards::mixture::TrainLoaderState;
use crate::shards::{Manifest, Split};
use crate::tokenizer::TokenizerId;
use crate::train::TrainConfig;

/// A checkpoint directory's files: the model's weights and the state file (named where models are loaded from a
/// checkpoint, `model::store`), and the optimizer moments.
pub use crate::model::store::{MODEL_FILE, STATE_FILE};
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The files `state.json` records checksums of.
pub const TENSOR_FILES: [&str; 2] = [MODEL_FILE, OPTIMIZER_FILE];
/// Bumped when state.json changes meaning; readers refuse newer versions. 2: the checksums of both tensor files and
/// the run id are always recorded, so a version-2 state without them was edited or damaged (version 1, written before
/// tokenmill recorded them, may lack them).
pub const CHECKPOINT_VERSION: u32 = 2;
/// The first version whose checkpoints always carry checksums and the run id.
pub const CHECKSUMS_REQUIRED_FROM: u32 = 2;

/// The default checkpoint directory inside a run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Inside the checkpoint directory: the checkpoints of branches a resume from an earlier step abandoned.
pub const ABANDONED_DIR: &str = "abandoned";

/// The sampling RNG (ChaCha20) position: the seed and how many 32-bit words it has produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha seed, hex.
    pub seed: String,
    /// Word position; a decimal string because JSON numbers cannot hold a u128 exactly everywhere.
    pub word_pos: String,
}

impl RngState {
    pub fn capture(rng: &rand_chacha::ChaCha20Rng) -> Self {
        RngState { seed: hex::encode(rng.get_seed()), word_pos: rng.get_word_pos().to_string() }
    }

    pub fn restore(&self) -> Result<rand_chacha::ChaCha20Rng, String> {
        use rand::SeedableRng;
        let bytes = hex::decode(&self.seed).map_err(|e| format!("rng seed: {e}"))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| "rng seed: expected 32 bytes".to_string())?;
        let pos: u128 = self.word_pos.parse().map_err(|e| format!("rng word_pos: {e}"))?;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps completed; the step a resumed run executes next.
    pub step: usize,
    /// AdamW's own step count (bias correction).
    pub optimizer_steps: u64,
    /// One loader's state, or a mixture's (each source's, `shards::mixture`).
    pub train_loader: TrainLoaderState,
    pub rng: RngState,
    pub config: TrainConfig,
    pub model: ModelConfig,
    /// The data the run trains on (`train::resume`); absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
    /// What the engine's options resolved to when this checkpoint was written (the cuda engine: the attention backend
    /// that ran and where its products' algorithms came from; `Engine::resolved`). For the reader: a resumed run may
    /// resolve them differently (another binary or GPU) and says so in its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The run that wrote it (its run directory's `.tokenmill-run` id): `--resume RUN` continues only RUN's own
    /// checkpoints. Absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// xxh3 (16 hex digits) of each tensor file by name, filled in by `checkpoint::save`; empty in checkpoints written
    /// before tokenmill recorded them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    pub tool_version: String,
}

/// What a run trains on, as `state.json` records it: a resume on other data is refused, a moved directory is not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// The manifest's tokenizer (a built-in name, or a tokenizer.json's sha256); `None` for a directory of bare
    /// llm.c / `.npy` shards.
    pub tokenizer: Option<TokenizerId>,
    pub train_shards: usize,
    pub val_shards: usize,
    /// xxh3 over every shard's split, name, token count and xxh3 as the manifest lists them (without a manifest:
    /// split, name and size in bytes).
    pub digest: String,
}

impl DataIdentity {
    /// The identity of the shard directory `dir` (its manifest, or its files' names and sizes).
    pub fn of_dir(dir: &Path) -> Result<DataIdentity, LoaderError> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        if Manifest::path_in(dir).exists() {
            let m = Manifest::load(dir)?;
            for s in &m.shards {
                h.update(format!("{}\t{}\t{}\t{}\n", s.split, s.file, s.tokens, s.xxh3).as_bytes());
            }
            let count = |split| m.shards.iter().filter(|s| s.split == split).count();
            return Ok(DataIdentity {
                tokenizer: m.tokenizer.id(),
                train_shards: count(Split::Train),
                val_shards: count(Split::Val),
                digest: format!("{:016x}", h.digest()),
            });
        }
        let mut counts = [0; 2];
        for (i, split) in [Split::Train, Split::Val].into_iter().enumerate() {
            let (files, _) = split_files(dir, split)?;
            for f in files.iter().map(|f| &f.path) {
                let bytes = std::fs::metadata(f).map_err(|e| crate::shards::ShardError::io(f, e))?.len();
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                h.update(format!("{split}\t{name}\t{bytes}\n").as_bytes());
            }
            counts[i] = files.len();
        }
        Ok(DataIdentity {
            tokenizer: None,
            train_shards: counts[0],
            val_shards: counts[1],
            digest: format!("{:016x}", h.digest()),
        })
    }

    /// A mixture's identity: its sources' identities with their (normalised) weights, in order. Another weight or
    /// source is other data, refused on resume like another directory.
    pub fn of_mixture(parts: &[(f64, DataIdentity)]) -> DataIdentity {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (weight, id) in parts {
            h.update(format!("{weight}\t{}\n", id.digest).as_bytes());
        }
        DataIdentity {
            tokenizer: parts.first().and_then(|(_, id)| id.tokenizer.clone()),
            train_shards: parts.iter().map(|(_, id)| id.train_shards).sum(),
            val_shards: parts.iter().map(|(_, id)| id.val_shards).sum(),
            digest: format!("{:016x}", h.digest()),
        }
    }

    /// One line for messages: tokenizer, shard counts, digest.
    pub fn describe(&self) -> String {
        let tok = self.tokenizer.as_ref().map_or("no manifest".to_string(), |t| format!("{t} tokens"));
        format!("{tok}, {} train + {} val shards, digest {}", self.train_shards, self.val_shards, self.digest)
    }
}
