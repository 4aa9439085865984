//! The training configuration: one typed `TrainConfig` holding every hyperparameter of a run, resolved in one place
//! as built-in defaults (the GPT-2 124M seed's values) < `--config FILE` < command-line overrides, then validated.
//!
//! Resolution works on TOML tables (a file need only name what it changes; an override is a dotted key and a TOML
//! value), and the merged table is parsed once with unknown keys rejected, so a typo is an error naming the key.
//! The resolved config is what a run prints, saves to `log_dir/config.toml` and stores in every checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
pub use crate::train::decoder::options::{AttentionBackend, EngineOptions};

/// GPT-2's vocabulary is padded to a multiple of this (50257 -> 50304, "nice number" for the matmul kernels).
pub const VOCAB_MULTIPLE: usize = 64;
/// The largest value a `[model]` size may take (2^32: token ids are u32, and no layer count or width comes near it);
/// what keeps the size arithmetic of the model and the memory estimate (`train::memory`) from overflowing.
pub const MAX_MODEL_DIMENSION: usize = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {source}")]
    Toml {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// One line, as every error (toml's own text spans lines: "invalid type ...\nin `optim.max_lr`").
    #[error("{origin}: {}", one_line(&error.to_string()))]
    Schema { origin: String, error: Box<toml::de::Error> },
    #[error("override `{0}`: expected KEY=VALUE with a dotted key such as optim.max_lr=3e-4")]
    BadOverride(String),
    #[error(
        "override `{}`: one KEY=VALUE per --set (this one holds a line break; repeat --set for each setting)",
        .0.escape_debug()
    )]
    MultiLineOverride(String),
    #[error("override `{key}`: `{part}` is a value, not a section")]
    NotASection { key: String, part: String },
    #[error("[model] {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("[model] {0} is not set and there is no preset or init to take it from")]
    MissingModelField(&'static str),
    /// Boxed: it carries a model error and paths, and would otherwise bloat every `Result` of the config.
    #[error(transparent)]
    Init(Box<crate::train::init::InitError>),
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("invalid config: {0}")]
    Device(#[from] crate::device::DeviceError),
    #[error("environment override {0}")]
    EngineOverride(#[from] crate::train::decoder::options::BadOverride),
}

impl From<crate::train::init::InitError> for ConfigError {
    fn from(e: crate::train::init::InitError) -> Self {
        ConfigError::Init(Box::new(e))
    }
}

/// `[run] engine`: which engine runs the training step (`train::engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// The cuda engine wherever it supports the model, device and dtype, else autograd.
    #[default]
    Auto,
    /// candle's autograd over the model: any architecture and device, the reference.
    Autograd,
    /// The decoder engine (CUDA, bf16; GPT-2 and Llama-style). `gpt2-cuda` is its earlier name.
    #[serde(alias = "gpt2-cuda", alias = "decoder")]
    Cuda,
}

/// Every hyperparameter of a training run. `Default` is build-nanogpt's GPT-2 (124M) run on 10B FineWeb-Edu tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    pub eval: EvalSection,
    pub checkpoint: CheckpointSection,
    pub run: RunSection,
    /// `[engine]`: how the cuda engine computes (attention backend, fusions, classifier chunk); unset keys take
    /// their defaults, and older configs without the table parse as all defaults.
    #[serde(default)]
    pub engine: EngineOptions,
}

/// `[model]`: where the model comes from, and what differs from there. `preset` names a `ModelConfig`
/// (`crate::model::config::PRESETS`); `init` a Hugging Face model (`hf:REPO` through the hub cache, or a folder:
/// `train --init`), whose `config.json` gives the config and whose weights the starting point of a fresh run.
/// Every other key is one of `ModelConfig`'s own fields (`arch`, `n_layer`, `n_kv_head`, `norm_eps`, ...), which
/// win; without a preset or init they must give `arch` and the sizes. `vocab_size` unset = the data's vocabulary
/// rounded up to a multiple of 64 (an init's: its own); `real_vocab_size` always comes from the data (an init's: its
/// own).
///
/// The fields are kept as the TOML table they were written in and checked against `ModelConfig` itself when parsed
/// (its serde form, unknown keys refused), so this section has no field list of its own to drift from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSection {
    pub preset: Option<String>,
    /// `hf:REPO` or a folder: the Hugging Face model a fresh run starts from (recorded: config, checkpoints).
    pub init: Option<String>,
    /// `ModelConfig` fields that override the preset's or the init's.
    pub fields: toml::Table,
}

const PRESET_KEY: &str = "preset";
const INIT_KEY: &str = "init";
/// The `ModelConfig` fields a section must have once filled (the rest have defaults; the vocabulary comes from the
/// data unless set).
const REQUIRED_KEYS: [&str; 5] = ["arch", "block_size", "n_layer", "n_head", "n_embd"];

impl Serialize for ModelSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = toml::Table::new();
        for (key, v) in [(PRESET_KEY, &self.preset), (INIT_KEY, &self.init)] {
            if let Some(v) = v {
                t.insert(key.into(), toml::Value::String(v.clone()));
            }
        }
        t.extend(self.fields.clone());
        t.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ModelSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = toml::Table::deserialize(d)?;
        let mut take = |key: &str| match fields.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(D::Error::custom(format!("`{key}` must be a string, got {other}"))),
        };
        let section = ModelSection { preset: take(PRESET_KEY)?, init: take(INIT_KEY)?, fields };
        section.check_fields().map_err(D::Error::custom)?;
        Ok(section)
    }
}

/// `[data]`: where batches come from and how big they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The directory `tokenmill prep` wrote (its manifest.json lists train and val shards). `--data DIR` sets it.
    pub dir: Option<PathBuf>,
    /// Instead of `dir`: a weighted mixture of such directories, all of one tokenizer, as directory = weight
    /// (`[data.mix]` with `"shards/mine" = 0.7` and `"shards/edu" = 0.3`; `--data shards/mine:0.7,shards/edu:0.3`).
    /// Weights are relative shares of the micro-batches (`shards::mixture`). Whichever of `dir` and `mix` a later
    /// layer (file, flags) sets replaces the other.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mix: BTreeMap<String, f64>,
    /// B: sequences per micro-batch per process.
    pub micro_batch: usize,
    /// T: tokens per sequence.
    pub seq_len: usize,
    /// Tokens per optimizer step over all processes and micro-steps; a multiple of B * T * world.
    pub total_batch_tokens: usize,
    /// Shuffle the order of shards and sequences with this seed; unset = read in file order (build-nanogpt).
    pub shuffle_seed: Option<u64>,
}

/// `[optim]`: AdamW and the learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub max_lr: f64,
    /// The cosine decays to max_lr * min_lr_ratio.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
    /// Applied only to tensors with two or more dimensions (matmul weights, embeddings).
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Global L2 norm the gradients are clipped to; 0 disables clipping (the norm is still measured and logged).
    pub grad_clip: f64,
}

/// `[eval]`: what runs between training steps: before each step its interval divides, and once more after the run's
/// last update (on the final checkpoint's weights). An interval of 0 turns that hook off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub val_every: usize,
    /// Batches (B x T each) averaged for one val loss, read from the start of the val split every time.
    pub val_steps: usize,
    pub sample_every: usize,
    pub sample_prompt: String,
    pub sample_count: usize,
    /// Total length of each sample in tokens, prompt included.
    pub sample_tokens: usize,
    /// Sample from the k most likely tokens.
    pub sample_top_k: usize,
    pub hellaswag_every: usize,
    /// The file `tokenmill prep hellaswag` wrote; unset = no HellaSwag during training.
    pub hellaswag_file: Option<PathBuf>,
    /// Score only the first N examples (unset = all 10,042).
    pub hellaswag_limit: Option<usize>,
}

/// `[checkpoint]`: a checkpoint is written every `every` steps (0 = only at the end) and when the run ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    pub every: usize,
    /// Where `step_NNNNNN/` directories go; unset = `<log_dir>/checkpoints`.
    pub dir: Option<PathBuf>,
}

/// `[run]`: seeds, precision, device, logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Seeds the model's initialisation and the sampling RNG.
    pub seed: u64,
    /// `fp32`, `bf16` (bf16 compute, fp32 master weights and optimizer state) or `auto` (bf16 on CUDA, else fp32).
    pub dtype: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when this build and machine have it).
    pub device: String,
    pub log_dir: PathBuf,
    /// Let fp32 matmuls on CUDA use TF32 tensor cores (PyTorch's `set_float32_matmul_precision("high")`, which
    /// the recipe sets). Only matmuls still in fp32 are affected: under `bf16` those are none of the model's.
    #[serde(default = "default_tf32")]
    pub tf32: bool,
    /// Which training engine runs the step: `autograd` (candle's autograd over the model; any architecture and
    /// device, the reference), `cuda` (the explicit decoder engine: CUDA, bf16, GPT-2 and Llama-style; `gpt2-cuda`
    /// is accepted) or `auto` (cuda where it supports the model, device and dtype, else autograd). See
    /// `train::engine`; `[engine]` sets how the cuda engine computes.
    #[serde(default)]
    pub engine: EngineChoice,
}

fn default_tf32() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelSection { preset: Some("gpt2-124m".into()), ..Default::default() },
            data: DataSection {
                dir: None,
                mix: BTreeMap::new(),
                micro_batch: 64,
                seq_len: 1024,
                total_batch_tokens: 524_288, // 2**19, ~0.5M tokens as in GPT-3 Small
                shuffle_seed: None,
            },
            optim: OptimSection {
                max_lr: 6e-4,
                min_lr_ratio: 0.1,
                warmup_steps: 715, // 375M warmup tokens (GPT-3) / 2**19 tokens per step
                max_steps: 19_073, // 10B tokens / 2**19 tokens per step
                weight_decay: 0.1,
                betas: [0.9, 0.95],
                eps: 1e-8,
                grad_clip: 1.0,
            },
            eval: EvalSection {
                val_every: 250,
                val_steps: 20,
                sample_every: 250,
                sample_prompt: "Hello, I'm a language model,".into(),
                sample_count: 4,
                sample_tokens: 32,
                sample_top_k: 50,
                hellaswag_every: 250,
                hellaswag_file: None,
                hellaswag_limit: None,
            },
            checkpoint: CheckpointSection { every: 5000, dir: None },
            run: RunSection {
                seed: 1337,
                dtype: "auto".into(),
                device: "auto".into(),
                log_dir: PathBuf::from("log"),
                tf32: true,
                engine: EngineChoice::Auto,
            },
            engine: EngineOptions::default(),
        }
    }
}

impl DataSection {
    /// The sources batches come from: the mixture's directories with their weights (in key order), or `dir` alone
    /// with weight 1; empty when neither is set.
    pub fn sources(&self) -> Vec<(PathBuf, f64)> {
        if !self.mix.is_empty() {
            return self.mix.iter().map(|(d, w)| (PathBuf::from(d), *w)).collect();
        }
        self.dir.iter().map(|d| (d.clone(), 1.0)).collect()
    }

    /// `DIR`, `a:0.7,b:0.3` or `unset`, for messages.
    pub fn describe(&self) -> String {
        if !self.mix.is_empty() {
            return self.mix.iter().map(|(d, w)| format!("{d}:{w}")).collect::<Vec<_>>().join(",");
        }
        self.dir.as_ref().map_or("unset".into(), |d| d.display().to_string())
    }

    /// `[data] mix` as a `--data` value gives it: `a:0.7,b:0.3` (a value without `:WEIGHT` is one directory, `None`).
    /// Commas separate sources, the last `:` a weight.
    pub fn parse_mix(value: &str) -> Result<Option<BTreeMap<String, f64>>, ConfigError> {
        fn weighted(part: &str) -> Option<(&str, f64)> {
            let (dir, weight) = part.rsplit_once(':')?;
            Some((dir, weight.trim().parse().ok()?))
        }
        if !value.contains(',') && weighted(value).is_none() {
            return Ok(None);
        }
        let mut mix = BTreeMap::new();
        for part in value.split(',') {
            let (dir, weight) = weighted(part).filter(|(d, _)| !d.is_empty()).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--data {value}: `{part}` is not DIR:WEIGHT (a mixture is DIR:WEIGHT,DIR:WEIGHT, e.g. \
                     shards/mine:0.7,shards/edu:0.3)"
                ))
            })?;
            if mix.insert(dir.to_string(), weight).is_some() {
                return Err(ConfigError::Invalid(format!("--data {value}: `{dir}` is given twice")));
            }
        }
        Ok(Some(mix))
    }
}

impl ModelSection {
    /// A `ModelConfig` field's value as written (or filled), if set.
    pub fn field(&self, key: &str) -> Option<&toml::Value> {
        self.fields.get(key)
    }

    /// The fields are `ModelConfig`'s, of its types: laid over a complete config (the preset's, else a stand-in)
    /// they must parse as one. `real_vocab_size` is the data's, never set here.
    fn check_fields(&self) -> Result<(), String> {
        if self.fields.contains_key("real_vocab_size") {
            return Err("real_vocab_size is the data's tokenizer's (or the init model's); remove it".into());
        }
        if self.preset.is_some() && self.init.is_some() {
            return Err("`preset` and `init` both name the model; keep one".into());
        }
        let base = self.preset.as_deref().and_then(|p| ModelConfig::preset(p).ok());
        let base = base.unwrap_or_else(|| ModelConfig::sized(crate::model::Architecture::Gpt2, 1, 1, 1, 1));
        model_config_over(&base, &self.fields).map(|_| ()).map_err(|e| one_line(&e.to_string()))
    }

    /// Fill every unset field from the preset, or from the init model's `config.json` (read once: a filled section,
    /// as saved with a run, already names the model and its vocabulary), so the saved config names the model
    /// completely.
    pub fn fill(&mut self) -> Result<(), ConfigError> {
        let filled = REQUIRED_KEYS.iter().chain(&["vocab_size"]).all(|k| self.fields.contains_key(*k));
        let base = match (&self.preset, &self.init) {
            (Some(name), _) => ModelConfig::preset(name)?,
            (None, Some(init)) if !filled => crate::train::init::config(init)?,
            _ => return Ok(()),
        };
        let mut filled = config_table(&base);
        // The data (or, for an init, the model itself) decides the vocabulary unless the section does.
        filled.remove("real_vocab_size");
        if self.init.is_none() {
            filled.remove("vocab_size");
        }
        filled.extend(std::mem::take(&mut self.fields));
        self.fields = filled;
        Ok(())
    }

    /// The model's config for data with `data_vocab` token ids (the manifest's tokenizer vocabulary).
    pub fn resolve(&self, data_vocab: usize) -> Result<ModelConfig, ConfigError> {
        let mut s = self.clone();
        s.fill()?;
        for key in REQUIRED_KEYS {
            if !s.fields.contains_key(key) {
                return Err(ConfigError::MissingModelField(key));
            }
        }
        let vocab = |key: &str| s.fields.get(key).and_then(|v| v.as_integer()).map(|v| v as usize);
        let vocab_size = vocab("vocab_size").unwrap_or_else(|| data_vocab.div_ceil(VOCAB_MULTIPLE) * VOCAB_MULTIPLE);
        if vocab_size < data_vocab {
            return Err(ConfigError::Invalid(format!(
                "[model] vocab_size {vocab_size} is smaller than the data's vocabulary ({data_vocab} token ids)"
            )));
        }
        // An init model keeps its own vocabulary whole (export gives back the rows it came with).
        let real_vocab_size = if s.init.is_some() { vocab_size } else { data_vocab };
        let mut fields = s.fields.clone();
        fields.insert("vocab_size".into(), toml::Value::Integer(vocab_size as i64));
        fields.insert("real_vocab_size".into(), toml::Value::Integer(real_vocab_size as i64));
        let cfg: ModelConfig = toml::Value::Table(fields)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("[model] {}", one_line(&e.to_string()))))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `cfg` as a TOML table of its set fields.
fn config_table(cfg: &ModelConfig) -> toml::Table {
    match toml::Value::try_from(cfg).expect("a ModelConfig serialises") {
        toml::Value::Table(t) => t,
        _ => unreachable!("a struct serialises to a table"),
    }
}

/// `fields` laid over `base`, parsed as a `ModelConfig` (unknown keys and wrong types are errors naming the key).
fn model_config_over(base: &ModelConfig, fields: &toml::Table) -> Result<ModelConfig, toml::de::Error> {
    let mut t = config_table(base);
    t.extend(fields.clone());
    toml::Value::Table(t).try_into()
}

/// The precision policy's one switch: what the forward/backward computes in. Master weights and AdamW state are
/// always fp32; losses and norms are reduced in fp32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDtype {
    F32,
    Bf16,
}

impl ComputeDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ComputeDtype::F32 => candle_core::DType::F32,
            ComputeDtype::Bf16 => candle_core::DType::BF16,
        }
    }

    /// The model's precision: fp32 master weights computing in this dtype.
    pub fn precision(self) -> crate::model::Precision {
        crate::model::Precision::with_compute(self.dtype())
    }
}

impl RunSection {
    /// The device `run.device` names, opened (`crate::device::open`). `auto` is CUDA 0 when available.
    pub fn device(&self) -> Result<candle_core::Device, ConfigError> {
        Ok(crate::device::open(&self.device)?)
    }

    /// `run.dtype` for `device`.
    pub fn compute_dtype(&self, device: &candle_core::Device) -> Result<ComputeDtype, ConfigError> {
        parse_compute_dtype(&self.dtype, device)
    }
}

/// `fp32`, `bf16`, or `auto` (bf16 on CUDA, fp32 elsewhere).
pub fn parse_compute_dtype(s: &str, device: &candle_core::Device) -> Result<ComputeDtype, ConfigError> {
    match s {
        "fp32" | "f32" => Ok(ComputeDtype::F32),
        "bf16" => Ok(ComputeDtype::Bf16),
        "auto" => Ok(if device.is_cuda() { ComputeDtype::Bf16 } else { ComputeDtype::F32 }),
        other => Err(ConfigError::Invalid(format!("dtype `{other}` (expected fp32, bf16 or auto)"))),
    }
}

impl TrainConfig {
    /// Resolve defaults < `file` < `overrides` (each `section.key=value`, value in TOML syntax; a bare word is a
    /// string), fill the model section from its preset, and validate.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        Self::resolve_over(&TrainConfig::default(), "built-in defaults", file, overrides)
    }

    /// As `resolve`, starting from `base` instead of the defaults (a resumed run starts from its checkpoint's
    /// config, so only what the command line changes differs).
    pub fn resolve_over(
        base: &TrainConfig,
        base_origin: &str,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<TrainConfig, ConfigError> {
        let mut table = match toml::Value::try_from(base).expect("a TrainConfig serialises") {
            toml::Value::Table(t) => t,
            _ => unreachable!("a struct serialises to a table"),
        };
        let mut origin = base_origin.to_string();
        if let Some(path) = file {
            let p = || path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io { path: p(), source: e })?;
            let file_table: toml::Table =
                text.parse().map_err(|e| ConfigError::Toml { path: p(), source: Box::new(e) })?;
            // A file that names a model preset, an init model or an architecture describes its model itself: drop
            // the default's.
            if let Some(toml::Value::Table(m)) = file_table.get("model") {
                if [PRESET_KEY, INIT_KEY, "arch"].iter().any(|k| m.contains_key(*k)) {
                    table.insert("model".into(), toml::Value::Table(toml::Table::new()));
                }
            }
            if let Some(toml::Value::Table(d)) = file_table.get("data") {
                one_data_source(&mut table, d.keys().map(String::as_str));
            }
            merge(&mut table, file_table);
            origin = p();
        }
        // `--init` (model.init=...) names the model whatever the file said: its other [model] keys go with it.
        if overrides.iter().any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == "model.init")) {
            table.insert("model".into(), toml::Value::Table(toml::Table::new()));
        }
        for o in overrides {
            let key = o.split_once('=').map_or("", |(k, _)| k.trim());
            one_data_source(&mut table, key.strip_prefix("data.").into_iter());
            apply_override(&mut table, o)?;
        }
        if !overrides.is_empty() {
            origin = format!("{origin} + command-line overrides");
        }
        let mut cfg: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e| ConfigError::Schema { origin, error: Box::new(e) })?;
        cfg.model.fill()?;
        // The engine's environment switches override the file here, once, so the config the run prints, saves and
        // checkpoints is what it runs with.
        let (engine, applied) = cfg.engine.with_env_overrides()?;
        if !applied.is_empty() {
            tracing::info!("[engine] from the environment: {}", applied.join(", "));
        }
        cfg.engine = engine;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a complete config (as saved by `to_toml` into a log dir or checkpoint).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<TrainConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Schema { origin: origin.to_string(), error: Box::new(e) })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises to TOML")
    }

    /// Checks that hold whatever the data and device: sizes positive, schedule coherent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let d = &self.data;
        if d.dir.is_some() && !d.mix.is_empty() {
            return bad("[data] dir and [data] mix are both set: give one directory or one mixture".into());
        }
        for (dir, weight) in &d.mix {
            if !(weight.is_finite() && *weight > 0.0) {
                return bad(format!(
                    "[data] mix: the weight of `{dir}` is {weight}; every weight must be a number > 0 (its share of \
                     the batches)"
                ));
            }
        }
        if d.micro_batch == 0 || d.seq_len == 0 || d.total_batch_tokens == 0 {
            return bad("[data] micro_batch, seq_len and total_batch_tokens must be positive".into());
        }
        // Sizes are multiplied with checked arithmetic: B * T that wraps must be refused, not divided by.
        let Some(bt) = d.micro_batch.checked_mul(d.seq_len) else {
            return bad(format!(
                "[data] micro_batch * seq_len = {} * {} does not fit in 64 bits: lower micro_batch or seq_len",
                d.micro_batch, d.seq_len
            ));
        };
        if !d.total_batch_tokens.is_multiple_of(bt) {
            return bad(format!(
                "[data] total_batch_tokens {} is not divisible by micro_batch * seq_len = {} * {} = {bt}",
                d.total_batch_tokens, d.micro_batch, d.seq_len
            ));
        }
        // A `[model]` size beyond any model is refused before anything multiplies it (the model's own checks and the
        // memory estimate, `train::memory`, then stay within 64 bits).
        for (key, value) in &self.model.fields {
            if let Some(v) = value.as_integer().filter(|&v| v > MAX_MODEL_DIMENSION as i64) {
                return bad(format!(
                    "[model] {key} {v} is larger than any model dimension ({MAX_MODEL_DIMENSION} at most): lower it"
                ));
            }
        }
        if let Some(block) = self.model.field("block_size").and_then(|b| b.as_integer()) {
            if d.seq_len as i64 > block {
                return bad(format!("[data] seq_len {} is longer than [model] block_size {block}", d.seq_len));
            }
        }
        let o = &self.optim;
        if o.max_steps == 0 {
            return bad("[optim] max_steps must be positive".into());
        }
        // Every optimizer constant must be a finite number: NaN compares false to every bound (grad_clip = nan turned
        // clipping off, eps = inf froze learning, weight_decay = nan came back as "divergence").
        for (key, value) in [
            ("max_lr", o.max_lr),
            ("min_lr_ratio", o.min_lr_ratio),
            ("weight_decay", o.weight_decay),
            ("betas[0]", o.betas[0]),
            ("betas[1]", o.betas[1]),
            ("eps", o.eps),
            ("grad_clip", o.grad_clip),
        ] {
            if !value.is_finite() {
                return bad(format!("[optim] {key} is {value}: it must be a finite number"));
            }
        }
        if o.max_lr <= 0.0 || !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return bad(format!(
                "[optim] max_lr {} must be > 0 and min_lr_ratio {} in [0, 1]",
                o.max_lr, o.min_lr_ratio
            ));
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) || o.eps <= 0.0 {
            return bad(format!("[optim] betas {:?} must be in [0, 1) and eps {} > 0", o.betas, o.eps));
        }
        if o.weight_decay < 0.0 || o.grad_clip < 0.0 {
            return bad(format!("[optim] weight_decay {} and grad_clip {} must be >= 0", o.weight_decay, o.grad_clip));
        }
        if self.engine.classifier_chunk == 0 {
            return bad("[engine] classifier_chunk must be positive".into());
        }
        let e = &self.eval;
        if e.val_every > 0 && e.val_steps == 0 {
            return bad("[eval] val_steps must be positive when val_every is set".into());
        }
        if e.hellaswag_limit == Some(0) {
            return bad(
                "[eval] hellaswag_limit 0 scores nothing: give a positive number, or leave it unset (all)".into()
            );
        }
        if e.sample_every > 0 && (e.sample_count == 0 || e.sample_top_k == 0) {
            return bad("[eval] sample_count and sample_top_k must be positive when sample_every is set".into());
        }
        Ok(())
    }

    /// Micro-steps per optimizer step for `world` processes; errors if the batch does not divide evenly.
    pub fn grad_accum_steps(&self, world: usize) -> Result<usize, ConfigError> {
        let d = &self.data;
        let Some(per_micro) = d.micro_batch.checked_mul(d.seq_len).and_then(|bt| bt.checked_mul(world)) else {
            return Err(ConfigError::Invalid(format!(
                "[data] micro_batch * seq_len * world = {} * {} * {world} does not fit in 64 bits: lower them",
                d.micro_batch, d.seq_len
            )));
        };
        if per_micro == 0 || !d.total_batch_tokens.is_multiple_of(per_micro) {
            return Err(ConfigError::Invalid(format!(
                "[data] total_batch_tokens {} must be divisible by micro_batch * seq_len * world = {} * {} * {world} = {per_micro}",
                d.total_batch_tokens, d.micro_batch, d.seq_len
            )));
        }
        Ok(d.total_batch_tokens / per_micro)
    }

    /// Where checkpoints go.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint.dir.clone().unwrap_or_else(|| self.run.log_dir.join("checkpoints"))
    }

    pub fn min_lr(&self) -> f64 {
        self.optim.max_lr * self.optim.min_lr_ratio
    }
}

/// `text` on one line: its lines trimmed and joined with a space.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `[data] dir` and `[data] mix` name the data two ways: a layer that sets one of `keys` removes the other from
/// `table` (the layers below), so `--data a:0.7,b:0.3` replaces a config file's `dir`, and `--data DIR` its `mix`.
fn one_data_source<'a>(table: &mut toml::Table, keys: impl Iterator<Item = &'a str>) {
    let Some(toml::Value::Table(data)) = table.get_mut("data") else { return };
    for key in keys {
        match key.split('.').next() {
            Some("dir") => {
                data.remove("mix");
            }
            Some("mix") => {
                data.remove("dir");
            }
            _ => {}
        }
    }
}

/// Deep-merge `src` into `dst`: tables merge key by key, anything else replaces.
fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Apply one `a.b.c=value` override. The value is parsed as TOML (`3e-4`, `true`, `[0.9, 0.95]`, `"x"`); if that
/// fails it is taken as a string, so `run.device=cuda:1` works unquoted.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    if item.contains(['\n', '\r']) {
        // `--set 'optim.max_lr=1e-3\nfoo=1'` would parse as two TOML lines, the second silently dropped.
        return Err(ConfigError::MultiLineOverride(item.to_string()));
    }
    let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.to_string()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::BadOverride(item.to_string()));
    }
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) if t.len() == 1 => t.remove("v").expect("parsed key v"),
        _ => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts.split_last().expect("non-empty key");
    let mut cur = table;
    for part in sections {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(ConfigError::NotASection { key: key.to_string(), part: part.to_string() }),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Architecture;

    #[test]
    fn default_is_the_gpt2_124m_seed() {
        let cfg = TrainConfig::resolve(None, &[]).unwrap();
        assert_eq!(cfg.grad_accum_steps(1).unwrap(), 8);
        assert_eq!(cfg.grad_accum_steps(8).unwrap(), 1);
        let m = cfg.model.resolve(50257).unwrap();
        assert_eq!((m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size), (12, 12, 768, 1024, 50304));
        assert!((cfg.min_lr() - 6e-5).abs() < 1e-18);
    }

    #[test]
    fn overrides_beat_file_and_typos_name_the_key() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "optim.max_lr=3e-4").unwrap();
        apply_override(&mut t, "run.device=cuda:1").unwrap();
        apply_override(&mut t, "optim.betas=[0.9, 0.99]").unwrap();
        assert_eq!(t["optim"]["max_lr"].as_float(), Some(3e-4));
        assert_eq!(t["run"]["device"].as_str(), Some("cuda:1"));
        let cfg = TrainConfig::resolve(None, &["optim.max_lr=3e-4".into(), "data.micro_batch=32".into()]).unwrap();
        assert_eq!((cfg.optim.max_lr, cfg.data.micro_batch), (3e-4, 32));
        let err = TrainConfig::resolve(None, &["optim.max_lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("max_lrr"), "{err}");
    }

    #[test]
    fn one_setting_per_override_and_type_errors_on_one_line() {
        // Issue 20: a line break smuggled a second setting past the parser, which dropped it silently.
        let err = TrainConfig::resolve(None, &["optim.max_lr=1e-3\nfoo=1".into()]).unwrap_err().to_string();
        assert!(err.contains("one KEY=VALUE per --set") && !err.contains('\n'), "{err}");
        let err = TrainConfig::resolve(None, &["optim.max_lr=1e-3 # x\r".into()]).unwrap_err().to_string();
        assert!(err.contains("line break"), "{err}");
        // A wrong type names the key, in one line.
        let err = TrainConfig::resolve(None, &["optim.max_lr=\"fast\"".into()]).unwrap_err();
        let text = crate::cli::render_error(&anyhow::Error::new(err));
        assert!(text.contains("max_lr") && text.contains("fast") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn indivisible_batch_is_a_clear_error() {
        let err = TrainConfig::resolve(None, &["data.total_batch_tokens=1000".into()]).unwrap_err().to_string();
        assert!(err.contains("total_batch_tokens 1000") && err.contains("64 * 1024"), "{err}");
        let cfg = TrainConfig::resolve(None, &[]).unwrap();
        let err = cfg.grad_accum_steps(3).unwrap_err().to_string();
        assert!(err.contains("world = 64 * 1024 * 3"), "{err}");
    }

    /// Issue 26: `optim.grad_clip=nan` turned clipping off and `optim.eps=inf` froze learning, both with status 0;
    /// `weight_decay=nan` came back as "divergence (lower optim.max_lr)". Every optimizer constant must be finite.
    #[test]
    fn non_finite_optimizer_constants_are_refused_naming_the_key() {
        for (key, value) in [
            ("grad_clip", "nan"),
            ("eps", "inf"),
            ("weight_decay", "nan"),
            ("max_lr", "inf"),
            ("min_lr_ratio", "nan"),
            ("betas", "[nan, 0.95]"),
        ] {
            let err = TrainConfig::resolve(None, &[format!("optim.{key}={value}")]).unwrap_err().to_string();
            assert!(err.contains(&format!("[optim] {key}")) && err.contains("finite"), "{key}={value}: {err}");
        }
    }

    /// Issue 26: `micro_batch=4611686018427387905 seq_len=4 total_batch_tokens=4` passed validation (B * T wrapped to
    /// 4) and panicked with a backtrace; sizes are multiplied with checked arithmetic, and a model size beyond any model
    /// is refused before it is multiplied.
    #[test]
    fn sizes_that_overflow_when_multiplied_are_refused() {
        let o = ["data.micro_batch=4611686018427387905", "data.seq_len=4", "data.total_batch_tokens=4"];
        let err = TrainConfig::resolve(None, &o.map(String::from)).unwrap_err().to_string();
        assert!(err.contains("does not fit in 64 bits") && err.contains("4611686018427387905"), "{err}");
        let cfg = TrainConfig::resolve(None, &[]).unwrap();
        let err = cfg.grad_accum_steps(usize::MAX).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let err = TrainConfig::resolve(None, &["model.n_embd=4611686018427387904".into()]).unwrap_err().to_string();
        assert!(err.contains("[model] n_embd 4611686018427387904 is larger than any model dimension"), "{err}");
    }

    #[test]
    fn model_section_is_a_preset_plus_model_config_fields() {
        let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = TrainConfig::resolve(
            None,
            &sets(&["model.preset=\"llama-tiny\"", "model.n_kv_head=1", "model.norm_eps=1e-6", "data.seq_len=64"]),
        )
        .unwrap();
        let m = cfg.model.resolve(50257).unwrap();
        assert_eq!((m.arch, m.n_kv_head, m.norm_eps, m.n_embd), (Architecture::Llama, Some(1), Some(1e-6), 64));
        assert_eq!((m.vocab_size, m.real_vocab_size), (50304, 50257));
        // The saved section names the whole model, and reads back as itself.
        assert_eq!(cfg.model.field("n_layer").and_then(|v| v.as_integer()), Some(2));
        assert_eq!(TrainConfig::from_toml_str(&cfg.to_toml(), "saved").unwrap(), cfg);
        // Without a preset, a row's fields are spelled out (Qwen2's biases come with its arch).
        let qwen = ["model.arch=\"qwen2\"", "model.block_size=64", "model.n_layer=1", "model.n_head=2"];
        let cfg = TrainConfig::resolve(None, &sets(&[&qwen[..], &["model.n_embd=64", "data.seq_len=64"]].concat()));
        assert_eq!(cfg.unwrap().model.resolve(100).unwrap().arch, Architecture::Qwen2);

        for (set, says) in [
            ("model.n_kv_heads=1", "n_kv_heads"),
            ("model.n_kv_head=\"two\"", "n_kv_head"),
            ("model.real_vocab_size=10", "real_vocab_size is the data's"),
            ("model.init=\"hf:a/b\"", "keep one"),
        ] {
            let sets = sets(&["model.preset=\"llama-tiny\"", set]);
            let err = match TrainConfig::resolve(None, &sets) {
                Err(e) => crate::cli::render_error(&anyhow::Error::new(e)),
                Ok(_) => panic!("{set} was accepted"),
            };
            assert!(err.contains(says) && !err.contains('\n'), "{set}: {err}");
        }
        let err = TrainConfig::resolve(None, &sets(&["model.preset=\"tiny\"", "model.n_kv_head=1", "data.seq_len=64"]))
            .unwrap()
            .model
            .resolve(50257)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpt2: n_kv_head"), "{err}");
    }

    #[test]
    fn saved_config_round_trips() {
        let cfg = TrainConfig::resolve(None, &["eval.hellaswag_file=\"x/h.bin\"".into()]).unwrap();
        let back = TrainConfig::from_toml_str(&cfg.to_toml(), "test").unwrap();
        assert_eq!(back, cfg);
    }
}
