//! Checkpoint directories: everything a run needs to continue bit for bit.
//!
//! ```text
//! <checkpoint dir>/step_000500/
//!     model.safetensors      fp32 master weights, named as the model names them (HF GPT-2 names for GPT-2),
//!                            the model config in its metadata (`crate::model::store`)
//!     optimizer.safetensors  AdamW moments, `<param>.m` and `<param>.v`, fp32
//!     state.json             step, optimizer step count, train loader position (each source's, for a mixture),
//!                            sampling RNG, resolved config, model config, data identity, xxh3 of both tensor files,
//!                            tool version
//!     tokenizer.json         the data's Hugging Face tokenizer, when it has one (with tokenizer_config.json), so
//!                            `sample` and `export` use the very tokenizer the model was trained with
//! ```
//! The checksums are verified on resume (unless `--no-verify`) and by `tokenmill verify`: a damaged file is named,
//! never loaded silently.
//! A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into place, so a
//! crash leaves either the previous checkpoint or the complete new one. `step_N` holds the state after N optimizer
//! steps: resuming from it runs step N next.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::model::store::{read_safetensors, write_safetensors};
use crate::model::{save_model_weights, LanguageModel, ModelError};
use crate::util::{io_at, PathIoError};

/// The names and the state a checkpoint holds live in `train::state` (shared with `resume` and `run_dir`).
pub use crate::train::state::{
    RngState, TrainState, CHECKPOINTS_DIR, CHECKPOINT_VERSION, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, TENSOR_FILES,
};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: not a valid checkpoint state: {source}")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: checkpoint format_version {found} is newer than this tokenmill understands ({CHECKPOINT_VERSION})"
    )]
    TooNew { path: String, found: u32 },
    #[error("{path}: not a checkpoint directory (no {STATE_FILE}); checkpoints are the step_NNNNNN directories `tokenmill train` writes")]
    NotACheckpoint { path: String },
    #[error("no checkpoint to resume from in {dir} (no step_NNNNNN directory with a {STATE_FILE})")]
    NoneFound { dir: String },
    #[error("{path}: xxh3 {found}, {STATE_FILE} says {expected}: the checkpoint is damaged; {}", damaged_advice(*.resume))]
    Damaged { path: String, found: String, expected: String, resume: bool },
    #[error(
        "{path}: records no checksum for {file}, which a version-{version} checkpoint always does ({STATE_FILE} was \
         edited or damaged), so its files cannot be checked; {}",
        damaged_advice(*.resume)
    )]
    Unlisted { path: String, file: &'static str, version: u32, resume: bool },
    #[error(
        "{dir}: holds no {STATE_FILE} (damaged, or not a finished checkpoint), and it is the latest step folder; \
         nothing falls back to an older checkpoint silently: {advice}"
    )]
    Incomplete { dir: String, advice: String },
    #[error(
        "{path}: {what}: {STATE_FILE} was edited, or the folder renamed; it is not loaded (use another checkpoint)"
    )]
    Inconsistent { path: String, what: String },
}

/// What to do about a damaged checkpoint: a resume may skip the check (`train --no-verify`); `sample`, `eval` and
/// `export` have no such flag, so they are pointed at another checkpoint only.
fn damaged_advice(resume: bool) -> &'static str {
    if resume {
        "resume from an earlier one (--resume DIR/step_N; `tokenmill verify DIR` checks them) or load it anyway with \
         `train --no-verify`"
    } else {
        "use an earlier checkpoint of the run (`tokenmill verify DIR` says which are intact)"
    }
}

/// `<root>/step_NNNNNN`.
pub fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step_{step:06}"))
}

/// The step of a checkpoint folder's name: `step_000500` -> 500 (digits only: `step_4.tmp.9` is not one).
pub fn step_of_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step_")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Every `step_NNNNNN` folder under `root`, by step, and whether it holds a `state.json`.
fn step_folders(root: &Path) -> Vec<(usize, PathBuf, bool)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found: Vec<(usize, PathBuf, bool)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let step = step_of_name(e.file_name().to_str()?)?;
            Some((step, e.path(), e.path().join(STATE_FILE).is_file()))
        })
        .collect();
    found.sort();
    found
}

/// The complete checkpoints under `root` (`step_NNNNNN` directories with a `state.json`), by step.
pub fn all(root: &Path) -> Vec<(usize, PathBuf)> {
    step_folders(root).into_iter().filter(|(_, _, complete)| *complete).map(|(s, p, _)| (s, p)).collect()
}

/// The `step_NNNNNN` folders under `root` that hold no `state.json`: a checkpoint write never leaves one (it renames
/// a finished temp folder into place), so each is a damaged checkpoint.
pub fn incomplete(root: &Path) -> Vec<PathBuf> {
    step_folders(root).into_iter().filter(|(_, _, complete)| !complete).map(|(_, p, _)| p).collect()
}

/// What a command that reads a checkpoint may be given: a checkpoint (`state.json` inside), a checkpoints directory,
/// or a run's log directory (its `checkpoints/`, or `checkpoint.dir` elsewhere given directly). The last two mean
/// their latest checkpoint ([`latest`]: refused when the latest step folder is damaged). Anything else comes back
/// unchanged, for the caller to judge.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for root in [path.to_path_buf(), path.join(crate::train::state::CHECKPOINTS_DIR)] {
        if !step_folders(&root).is_empty() {
            return latest(&root);
        }
    }
    Ok(path.to_path_buf())
}

/// The checkpoint with the highest step under `root`. A `step_N` folder above it that lost its `state.json` is an
/// error, not skipped: the run's latest state is damaged, and continuing (or sampling) from an older one must be
/// asked for by name.
pub fn latest(root: &Path) -> Result<PathBuf, CheckpointError> {
    let folders = step_folders(root);
    match folders.last() {
        None => Err(CheckpointError::NoneFound { dir: root.display().to_string() }),
        Some((_, path, true)) => Ok(path.clone()),
        Some((_, path, false)) => {
            let older = folders.iter().rev().find(|(_, _, complete)| *complete);
            let advice = match older {
                Some((_, p, _)) => format!(
                    "give the latest intact one by name ({}; `tokenmill verify {}` checks them), or restore the folder",
                    p.display(),
                    root.display()
                ),
                None => "restore the folder from a backup, or start a new run".to_string(),
            };
            Err(CheckpointError::Incomplete { dir: path.display().to_string(), advice })
        }
    }
}

/// Write a checkpoint to `dir` atomically (a temp sibling renamed into place; an existing `dir` is replaced).
/// `optimizer` is `AdamW::state_tensors()`; `extra` are further files to keep in it (the tokenizer's).
pub fn save(
    dir: &Path,
    model: &dyn LanguageModel,
    optimizer: &[(String, Tensor)],
    state: &TrainState,
    extra: &[(&str, &[u8])],
) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
    let tmp = crate::util::temp_path_for(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_at(&tmp))?;
    if let Err(e) = write_files(&tmp, model, optimizer, state, extra) {
        // A failed write (disk full) leaves nothing behind; what a crash leaves, the next start removes.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // rename() cannot replace a non-empty directory: move the old one aside first, delete it once the new one is in.
    let old = dir.with_file_name(format!(
        "{}.old.{}",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let replaced = dir.exists();
    if replaced {
        std::fs::rename(dir, &old).map_err(io_at(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_at(dir))?;
    crate::util::fsync_dir(parent).map_err(io_at(parent))?;
    if replaced {
        std::fs::remove_dir_all(&old).map_err(io_at(&old))?;
    }
    Ok(())
}

/// The files of a checkpoint into the (temporary) directory `tmp`, each fsynced, `state.json` last and with the
/// checksums of the two tensor files.
fn write_files(
    tmp: &Path,
    model: &dyn LanguageModel,
    optimizer: &[(String, Tensor)],
    state: &TrainState,
    extra: &[(&str, &[u8])],
) -> Result<(), CheckpointError> {
    for (name, bytes) in extra {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).and_then(|_| std::fs::File::open(&path)?.sync_all()).map_err(io_at(&path))?;
    }
    // Both tensor files go through the model store's writer: streamed, fsynced, in a fixed order (byte-identical
    // files for identical states), and model.safetensors carries the model config so `--model DIR` can load it.
    save_model_weights(model, &tmp.join(MODEL_FILE))?;
    write_safetensors(&tmp.join(OPTIMIZER_FILE), optimizer, &BTreeMap::new())?;
    let mut state = state.clone();
    for file in TENSOR_FILES {
        let path = tmp.join(file);
        state.checksums.insert(file.to_string(), crate::util::xxh3_file(&path).map_err(io_at(&path))?);
    }
    let json = serde_json::to_vec_pretty(&state).expect("TrainState serialises");
    let state_path = tmp.join(STATE_FILE);
    std::fs::write(&state_path, json).map_err(io_at(&state_path))?;
    std::fs::File::open(&state_path).and_then(|f| f.sync_all()).map_err(io_at(&state_path))?;
    crate::util::fsync_dir(tmp).map_err(io_at(tmp))?;
    Ok(())
}

/// Leftovers of checkpoint writes that did not finish, under `root`: `step_N.tmp.PID` (a write cut short: removed)
/// and `step_N.old.PID` (the previous `step_N`, moved aside while it was replaced: removed when `step_N` is in place,
/// renamed back when the replacement never arrived). Entries of a process that is still running are left alone.
/// Returns one line per action, for the run's log. Run at start by the process that writes checkpoints.
pub fn clean_stale(root: &Path) -> Result<Vec<String>, CheckpointError> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut notes = Vec::new();
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let Some((base, kind, pid)) = parse_leftover(&name) else { continue };
        let path = root.join(&name);
        if pid != std::process::id() && crate::util::process_running(pid) {
            notes.push(format!("left {} alone: process {pid} is still running", path.display()));
            continue;
        }
        let target = root.join(base);
        if kind == "old" && !target.exists() && path.join(STATE_FILE).is_file() {
            std::fs::rename(&path, &target).map_err(io_at(&path))?;
            notes.push(format!("restored {} from {name} (a save interrupted while replacing it)", target.display()));
        } else {
            std::fs::remove_dir_all(&path).map_err(io_at(&path))?;
            notes.push(format!("removed {} (left by an interrupted checkpoint write)", path.display()));
        }
    }
    Ok(notes)
}

/// Whether `name` is a leftover of an interrupted checkpoint write (`step_N.tmp.PID`, `step_N.old.PID`).
pub fn is_leftover_name(name: &str) -> bool {
    parse_leftover(name).is_some()
}

/// The run directory a checkpoint lies in: `RUN/checkpoints/step_N` -> `RUN` (the default layout); `None` for a
/// checkpoint elsewhere (a `checkpoint.dir` of its own).
pub fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let root = checkpoint.parent()?;
    if root.file_name()? != crate::train::state::CHECKPOINTS_DIR {
        return None;
    }
    Some(root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
}

/// A resume from step `step` when `root` holds later checkpoints starts a new branch of the run: those later
/// checkpoints (complete `step_N` folders, N > `step`) belonged to the abandoned branch. They are moved, not deleted,
/// to `root/abandoned/branch-at-step_NNNNNN-UNIXTIME/`, so the latest checkpoint under `root` is always the live
/// branch's (`--resume DIR`, `sample --model DIR`). Returns one note per checkpoint moved.
pub fn abandon_after(root: &Path, step: usize) -> Result<Vec<String>, CheckpointError> {
    let later: Vec<(usize, PathBuf)> = all(root).into_iter().filter(|(s, _)| *s > step).collect();
    if later.is_empty() {
        return Ok(Vec::new());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut branch = root.join(crate::train::state::ABANDONED_DIR).join(format!("branch-at-step_{step:06}-{now}"));
    if branch.exists() {
        branch.set_extension(std::process::id().to_string());
    }
    std::fs::create_dir_all(&branch).map_err(io_at(&branch))?;
    let mut notes = Vec::new();
    for (_, path) in later {
        let to = branch.join(path.file_name().expect("a step_N folder"));
        std::fs::rename(&path, &to).map_err(io_at(&path))?;
        notes.push(format!(
            "moved {} to {}: this resume from step {step} starts a new branch, and that checkpoint was the old \
             branch's",
            path.display(),
            to.display()
        ));
    }
    crate::util::fsync_dir(root).map_err(io_at(root))?;
    Ok(notes)
}

/// `step_000100.tmp.4242` -> `("step_000100", "tmp", 4242)`; `None` for anything else.
fn parse_leftover(name: &str) -> Option<(&str, &str, u32)> {
    let (rest, pid) = name.rsplit_once('.')?;
    let (base, kind) = rest.rsplit_once('.')?;
    let pid = pid.parse().ok()?;
    (base.starts_with("step_") && (kind == "tmp" || kind == "old")).then_some((base, kind, pid))
}

/// Read `dir/state.json` and check it against itself and its folder: the step its folder is named after
/// (`step_000500` holds step 500) and AdamW's step count (one per optimizer step) must be its `step`.
pub fn load_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Err(CheckpointError::NotACheckpoint { path: dir.display().to_string() });
    }
    let text = std::fs::read(&path).map_err(io_at(&path))?;
    let state: TrainState = serde_json::from_slice(&text)
        .map_err(|source| CheckpointError::State { path: path.display().to_string(), source })?;
    if state.format_version > CHECKPOINT_VERSION {
        return Err(CheckpointError::TooNew { path: path.display().to_string(), found: state.format_version });
    }
    let inconsistent = |what: String| CheckpointError::Inconsistent { path: path.display().to_string(), what };
    let folder_step = dir.file_name().and_then(|n| n.to_str()).and_then(step_of_name);
    if let Some(n) = folder_step.filter(|&n| n != state.step) {
        return Err(inconsistent(format!("step {} in a folder named for step {n}", state.step)));
    }
    if state.optimizer_steps != state.step as u64 {
        return Err(inconsistent(format!(
            "step {} but {} optimizer steps (each step is one optimizer step)",
            state.step, state.optimizer_steps
        )));
    }
    Ok(state)
}

/// The run a checkpoint's `state.json` records (`None` for one written before runs were recorded), read without the
/// rest of the checks: what decides whose checkpoint a folder is.
pub fn recorded_run(dir: &Path) -> Result<Option<String>, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(io_at(&path))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|source| CheckpointError::State { path: path.display().to_string(), source })?;
    Ok(v.get("run_id").and_then(|r| r.as_str()).map(str::to_string))
}

/// Check checkpoint `dir`'s tensor files against the checksums its `state` records; the first damaged one is the
/// error. Returns the files checked: none for a version-1 checkpoint written before checksums were recorded.
pub fn verify(dir: &Path, state: &TrainState) -> Result<Vec<&'static str>, CheckpointError> {
    let mut checked = Vec::new();
    for (file, r) in verify_each(dir, state) {
        match r {
            Ok(()) => checked.push(file),
            Err(CheckpointError::Damaged { path, found, expected, .. }) => {
                return Err(CheckpointError::Damaged { path, found, expected, resume: true })
            }
            Err(CheckpointError::Unlisted { path, file, version, .. }) => {
                return Err(CheckpointError::Unlisted { path, file, version, resume: true })
            }
            Err(e) => return Err(e),
        }
    }
    Ok(checked)
}

/// Whether `state` may lack checksums: only a checkpoint of a version written before they were recorded.
fn checksums_optional(state: &TrainState) -> bool {
    state.format_version < crate::train::state::CHECKSUMS_REQUIRED_FROM && state.checksums.is_empty()
}

/// Each tensor file of checkpoint `dir` against `state`'s checksum (empty for a version-1 checkpoint without them).
pub fn verify_each(dir: &Path, state: &TrainState) -> Vec<(&'static str, Result<(), CheckpointError>)> {
    if checksums_optional(state) {
        return Vec::new();
    }
    TENSOR_FILES.into_iter().map(|f| (f, verify_file(dir, state, f))).collect()
}

/// One tensor file of checkpoint `dir` against `state`'s checksum (fine when a version-1 `state` records none: a
/// checkpoint older than checksums; a version-2 one without them is refused). `sample`, `eval` and `export` check the
/// model file alone: that is all they read.
pub fn verify_file(dir: &Path, state: &TrainState, file: &'static str) -> Result<(), CheckpointError> {
    if checksums_optional(state) {
        return Ok(());
    }
    let path = dir.join(file);
    let expected = state.checksums.get(file).ok_or_else(|| CheckpointError::Unlisted {
        path: dir.join(STATE_FILE).display().to_string(),
        file,
        version: state.format_version,
        resume: false,
    })?;
    let found = crate::util::xxh3_file(&path).map_err(io_at(&path))?;
    if &found != expected {
        let (path, expected) = (path.display().to_string(), expected.clone());
        return Err(CheckpointError::Damaged { path, found, expected, resume: false });
    }
    Ok(())
}

/// The optimizer moments of checkpoint `dir`, on `device`.
pub fn load_optimizer_tensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, CheckpointError> {
    Ok(read_safetensors(&dir.join(OPTIMIZER_FILE), device)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_state_round_trips_mid_stream() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..13 {
            rng.next_u32();
        }
        let saved = RngState::capture(&rng);
        let mut back = saved.restore().unwrap();
        assert_eq!(
            (0..5).map(|_| rng.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| back.next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn stale_leftovers_are_removed_or_restored() {
        let dir = tempfile::tempdir().unwrap();
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            child.id()
        };
        let mk = |name: &str, complete: bool| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(if complete { STATE_FILE } else { MODEL_FILE }), "{}").unwrap();
        };
        mk("step_000002", true);
        mk(&format!("step_000004.tmp.{dead}"), false); // a write cut short
        mk(&format!("step_000002.old.{dead}"), true); // replaced: step_000002 is in place
        mk(&format!("step_000006.old.{dead}"), true); // moved aside, the replacement never arrived
        mk(&format!("step_000008.tmp.{}", std::process::id()), false); // ours: nothing of ours is in flight at start
        mk("step_000010.tmp.x", false); // not a leftover name: untouched
        let notes = clean_stale(dir.path()).unwrap();
        assert_eq!(notes.len(), 4, "{notes:?}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step_000002", "step_000006", "step_000010.tmp.x"]);
        assert_eq!(latest(dir.path()).unwrap(), step_dir(dir.path(), 6));
    }

    #[test]
    fn latest_is_the_highest_step_and_a_damaged_latest_is_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for (step, complete) in [(5, true), (20, true), (30, false)] {
            let d = step_dir(dir.path(), step);
            std::fs::create_dir_all(&d).unwrap();
            if complete {
                std::fs::write(d.join(STATE_FILE), "{}").unwrap();
            }
        }
        // Issue 26: step_000030 lost its state.json; resume and sample silently took step_000020.
        let err = latest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("step_000030") && err.contains("step_000020"), "{err}");
        assert_eq!(incomplete(dir.path()), [step_dir(dir.path(), 30)]);
        std::fs::remove_dir(step_dir(dir.path(), 30)).unwrap();
        assert_eq!(latest(dir.path()).unwrap(), step_dir(dir.path(), 20));
        assert!(matches!(latest(&dir.path().join("nope")), Err(CheckpointError::NoneFound { .. })));
    }
}
