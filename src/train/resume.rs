//! What a resumed run may change. A checkpoint continues one run: its model shape, its data and its position in the
//! data (B, T, shuffle seed) are fixed, and so is the seed whose streams it restores; the rest of the config
//! (learning-rate schedule, optimizer constants, total batch, eval, checkpoints, device, dtype, engine) is applied
//! as given now. [`reconcile`] compares the config a resume asks for with the checkpoint's: what cannot be honoured
//! is refused, all of it in one message; what is applied comes back as one line per change, so the run can say so.
//! The config a resumed run records (printed, `config.toml`, every later `state.json`) is therefore always the one
//! in effect.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

pub use crate::train::state::DataIdentity;
use crate::train::state::TrainState;
use crate::train::TrainConfig;

#[derive(Debug, thiserror::Error)]
#[error(
    "{checkpoint}: a resume continues that run, so it cannot change: {}. Resume without these changes, or start a \
     new run (another --log-dir, no --resume) to train differently",
    reasons.join("; ")
)]
pub struct ResumeRefused {
    pub checkpoint: String,
    pub reasons: Vec<String>,
}

/// Keys of the learning-rate schedule: a resume may change them (the schedule is a function of the step).
const SCHEDULE_KEYS: &[&str] = &["optim.max_lr", "optim.min_lr_ratio", "optim.warmup_steps", "optim.max_steps"];
/// Keys that fix the data stream's position: the loader state in the checkpoint counts batches of this shape.
const POSITION_KEYS: &[&str] = &["data.micro_batch", "data.seq_len", "data.shuffle_seed"];

/// Compare the config a resume of `checkpoint` asks for (`requested`, on data `data` of `data_vocab` token ids) with
/// the checkpoint's `saved` state. Refuses model-shape, data and data-position changes and `run.seed`; returns every
/// other change as a line to log (`key old -> new`, schedule changes marked).
pub fn reconcile(
    checkpoint: &Path,
    saved: &TrainState,
    requested: &TrainConfig,
    data: &DataIdentity,
    data_vocab: usize,
) -> Result<Vec<String>, ResumeRefused> {
    let mut reasons = Vec::new();
    match requested.model.resolve(data_vocab) {
        Ok(model) => {
            // Resolved values are compared: `rope_theta = 10000.0` spelled out is the default left unset.
            let (was, now) = (flatten_json(&resolved_model(&saved.model)), flatten_json(&resolved_model(&model)));
            for (key, old, new) in changed(&was, &now) {
                reasons.push(format!("model {key} {old} -> {new} (the checkpoint's weights have its model's shape)"));
            }
        }
        Err(e) => reasons.push(format!("[model] {e}")),
    }
    let data_dir = |c: &TrainConfig| c.data.describe();
    match &saved.data {
        Some(trained_on) if trained_on != data => reasons.push(format!(
            "data: the run trained on {} ({}), {} holds {}",
            data_dir(&saved.config),
            trained_on.describe(),
            data_dir(requested),
            data.describe()
        )),
        None if saved.config.data.dir != requested.data.dir => reasons.push(format!(
            "data.dir {} -> {} (this checkpoint predates data checksums, so only its own directory is accepted)",
            data_dir(&saved.config),
            data_dir(requested)
        )),
        _ => {}
    }
    let (was, now) = (flatten_toml(&saved.config), flatten_toml(requested));
    let mut applied = Vec::new();
    for (key, old, new) in changed(&was, &now) {
        if key.starts_with("model.") {
            continue; // judged on the resolved shape above
        } else if POSITION_KEYS.contains(&key.as_str()) {
            reasons.push(format!(
                "{key} {old} -> {new} (the checkpoint's place in the data is counted in batches of B={} x T={}, \
                 shuffle {:?})",
                saved.config.data.micro_batch, saved.config.data.seq_len, saved.config.data.shuffle_seed
            ));
        } else if key == "run.seed" {
            reasons.push(format!(
                "run.seed {old} -> {new} (it seeds the initial weights and the sampling RNG, both restored from the \
                 checkpoint)"
            ));
        } else if SCHEDULE_KEYS.contains(&key.as_str()) {
            applied.push(format!("{key} {old} -> {new} (learning-rate schedule)"));
        } else {
            applied.push(format!("{key} {old} -> {new}"));
        }
    }
    if reasons.is_empty() {
        Ok(applied)
    } else {
        Err(ResumeRefused { checkpoint: checkpoint.display().to_string(), reasons })
    }
}

/// `cfg` with every optional field at the value it takes (KV heads, MLP width, rotary base where the architecture has
/// rotary positions, tied head, norm epsilon), so two configs that build the same model compare equal.
fn resolved_model(cfg: &crate::model::ModelConfig) -> crate::model::ModelConfig {
    let rotary = cfg.arch.spec().positions == crate::model::arch::Positions::Rotary;
    crate::model::ModelConfig {
        n_kv_head: Some(cfg.kv_heads()),
        ffn_hidden: Some(cfg.hidden()),
        rope_theta: if rotary { Some(cfg.rope_base()) } else { cfg.rope_theta },
        tie_word_embeddings: Some(cfg.tied()),
        norm_eps: Some(cfg.eps()),
        ..cfg.clone()
    }
}

/// `(key, old, new)` for every key whose value differs (absent = `unset`), in key order.
fn changed(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    let unset = "unset".to_string();
    let keys: std::collections::BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (was.get(k).unwrap_or(&unset), now.get(k).unwrap_or(&unset));
            (a != b).then(|| (k.clone(), a.clone(), b.clone()))
        })
        .collect()
}

/// A config as dotted keys and TOML values (`optim.max_lr` -> `0.0006`).
fn flatten_toml(cfg: &TrainConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                v => {
                    out.insert(key, v.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let toml::Value::Table(t) = toml::Value::try_from(cfg).expect("a TrainConfig serialises") {
        walk("", &t, &mut out);
    }
    out
}

/// A flat serialisable struct (the model config) as field -> JSON value.
fn flatten_json<T: Serialize>(v: &T) -> BTreeMap<String, String> {
    match serde_json::to_value(v).expect("serialises") {
        serde_json::Value::Object(m) => m.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        other => BTreeMap::from([(String::new(), other.to_string())]),
    }
}
