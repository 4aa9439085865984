//! A run directory (`run.log_dir`): what tokenmill writes there, how it proves it wrote it, and who writes it now.
//! The rule every command keeps (`crate::output`): write only inside the place it was given, delete only what it
//! can prove it made, one writer per directory at a time.
//!
//! - **Owner marker** `.tokenmill-run` (JSON: run id, creation time, tool version, the inode number of the directory
//!   it was made in, and what the run writes there), written when a run first takes the directory. It proves the
//!   directory is a tokenmill run only where it was made: a marker copied into another folder (or a whole run copied
//!   with `cp -r`) proves nothing there until a resume of that directory's own checkpoint adopts it. Inside a proven
//!   directory tokenmill's own entries are the files the marker lists ([`OWNED_FILES`]), `report.svg` when it carries
//!   the report signature, the marker and lock files, and in the checkpoint directories it lists (and the one
//!   configured, when inside) the `step_NNNNNN` folders holding a `state.json` of this run, leftovers of interrupted
//!   checkpoint writes, and `abandoned/`. Those are all tokenmill ever replaces or removes there; anything else is
//!   left alone.
//! - **Lock** `.tokenmill-lock`, flock'ed by the training process for its lifetime (`util::DirLock`): a second
//!   `train` on the same directory is refused at once, naming the holder's pid.
//! - **Who may write** ([`Claim`]): a fresh run takes an absent or empty directory, or a proven one that holds no run
//!   yet (and no file of an owned name that the marker does not list). A proven directory holding a run (a
//!   checkpoint, or log lines) is refused: continue it with `--resume`, pick another `--log-dir`, or pass
//!   `--overwrite`, which removes only the entries above. A directory tokenmill cannot prove is its own is never
//!   taken by a fresh run (`--overwrite` does not apply); one that holds a run (of a tokenmill older than the marker,
//!   or a copy) may be resumed from its own checkpoint, which marks it. A `checkpoint.dir` outside the run directory
//!   must hold no checkpoint of another run, and nothing but checkpoints; nothing there is ever removed.
//!   A resume of a checkpoint writes into the run directory that checkpoint lies in (`checkpoint::run_dir_of`), and
//!   nothing it resumes from is ever removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output;
use crate::train::checkpoint;
use crate::train::log::{LOG_TXT, METRICS_JSONL};
use crate::train::report::{is_tokenmill_report, REPORT_FILE};
use crate::util::{DirLock, LockError, LOCK_FILE};

/// The owner marker's file name.
pub const MARKER_FILE: &str = ".tokenmill-run";
/// The resolved config a run saves beside its logs.
pub const CONFIG_FILE: &str = "config.toml";
pub use crate::train::state::{ABANDONED_DIR, CHECKPOINTS_DIR};
/// The files a run writes in its directory (besides the marker, the lock, `report.svg` and checkpoints).
pub const OWNED_FILES: [&str; 3] = [LOG_TXT, METRICS_JSONL, CONFIG_FILE];

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "{dir}: holds {what}; a new run there would mix with it. Continue it with --resume, train into another \
         --log-dir, or pass --overwrite to remove that run's files (only what tokenmill wrote there)"
    )]
    AnotherRun { dir: String, what: String },
    #[error(
        "{dir}: holds {what}, but {why}: continue it with --resume (its own checkpoint; that marks the directory), or \
         train into another --log-dir (tokenmill removes only what it can prove it wrote, so --overwrite does not \
         apply)"
    )]
    Unmarked { dir: String, what: String, why: &'static str },
    #[error(
        "{dir}: not empty and not a tokenmill run directory ({why}; it holds {entries}): train into a new or empty \
         --log-dir (tokenmill writes a run only where it can tell its files from yours)"
    )]
    Foreign { dir: String, entries: String, why: &'static str },
    #[error(
        "{dir}: a file, not a directory: --log-dir names the directory a run writes its logs and checkpoints into"
    )]
    NotADirectory { dir: String },
    #[error(
        "{dir}: holds {names}, which its {MARKER_FILE} does not list: tokenmill did not write it there and will not \
         replace it; move it away, or train into another --log-dir"
    )]
    NotListed { dir: String, names: String },
    #[error(
        "{dir}: checkpoint.dir holds {what}: a new run's checkpoints there would mix with them (and `--resume` would \
         pick theirs). Use a new or empty checkpoint.dir, or leave it unset (LOG_DIR/checkpoints); tokenmill never \
         removes checkpoints outside the run directory, --overwrite or not"
    )]
    CheckpointsTaken { dir: String, what: String },
    #[error(
        "{dir}: checkpoint.dir is not empty and holds no checkpoints ({entries}): use a new or empty directory, or \
         leave it unset (LOG_DIR/checkpoints)"
    )]
    NotCheckpoints { dir: String, entries: String },
    #[error(
        "{checkpoint}: --overwrite would remove the checkpoint this run resumes from; nothing was removed (a resume \
         continues its run: drop --overwrite, or resume into another --log-dir)"
    )]
    WouldRemoveResumed { checkpoint: String },
    #[error("{path}: not a tokenmill run marker ({message}); the directory is not one tokenmill can prove it made")]
    BadMarker { path: String, message: String },
    #[error(transparent)]
    Path(#[from] crate::output::OutputError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io { path: path.display().to_string(), source }
}

impl From<crate::util::PathIoError> for RunDirError {
    fn from(e: crate::util::PathIoError) -> Self {
        RunDirError::Io { path: e.path, source: e.source }
    }
}

/// `.tokenmill-run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    /// 16 hex digits, new for every fresh run (a resume keeps it; a copied directory adopted by a resume keeps its
    /// original's). Every checkpoint records it (`TrainState::run_id`).
    pub run_id: String,
    pub created_unix: u64,
    pub tool_version: String,
    /// The inode number of the directory the marker was made in: it proves ownership of that directory only.
    /// Absent in markers written before tokenmill recorded it (those prove nothing by themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_in: Option<u64>,
    /// The files the run writes in its directory (of [`OWNED_FILES`]).
    #[serde(default)]
    pub files: Vec<String>,
    /// The checkpoint directories the run wrote inside its directory, relative to it (`checkpoints`, `.` for the run
    /// directory itself).
    #[serde(default)]
    pub checkpoint_dirs: Vec<String>,
}

impl RunMarker {
    fn new(run_id: Option<String>) -> RunMarker {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32) ^ rand::random::<u64>();
        RunMarker {
            run_id: run_id.unwrap_or_else(|| format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()))),
            created_unix: now.as_secs(),
            tool_version: crate::TOOL_VERSION.to_string(),
            made_in: None,
            files: Vec::new(),
            checkpoint_dirs: Vec::new(),
        }
    }

    /// The marker of `dir`, if it has one (made there or not: see [`RunMarker::made_in`]).
    pub fn load(dir: &Path) -> Result<Option<RunMarker>, RunDirError> {
        let path = dir.join(MARKER_FILE);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Ok(m) if !m.is_file() => {
                return Err(RunDirError::BadMarker {
                    path: path.display().to_string(),
                    message: "not a regular file".into(),
                })
            }
            _ => {}
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RunDirError::BadMarker { path: path.display().to_string(), message: e.to_string() }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The marker of `dir` when it was made in `dir` (the proof of ownership); `None` otherwise.
    pub fn proven(dir: &Path) -> Result<Option<RunMarker>, RunDirError> {
        Ok(RunMarker::load(dir)?.filter(|m| m.was_made_in(dir)))
    }

    /// Whether this marker was made in `dir` (the directory's inode is the one it recorded).
    pub fn was_made_in(&self, dir: &Path) -> bool {
        self.made_in.is_some() && self.made_in == output::dir_inode(dir)
    }

    fn save(&mut self, dir: &Path) -> Result<(), RunDirError> {
        self.made_in = output::dir_inode(dir);
        let path = dir.join(MARKER_FILE);
        let mut text = serde_json::to_string_pretty(self).expect("a run marker serialises");
        text.push('\n');
        crate::util::write_atomic(&path, text.as_bytes()).map_err(io(&path))
    }

    /// The checkpoint directories it lists, as paths under `dir` (entries that would leave `dir` are ignored).
    fn listed_roots(&self, dir: &Path) -> Vec<PathBuf> {
        self.checkpoint_dirs
            .iter()
            .filter(|d| {
                Path::new(d)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
            })
            .map(|d| if d == "." { dir.to_path_buf() } else { dir.join(d) })
            .collect()
    }
}

/// What a run asks of its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new run (`train` without `--resume`); `overwrite`: remove a previous run's files first (`--overwrite`).
    Fresh { overwrite: bool },
    /// A resume; `own`: the checkpoint is this directory's run's ([`owns_checkpoint`]; else the run continues into
    /// a new directory, which must be free as for a fresh run).
    Resume { own: bool, overwrite: bool },
}

/// Whether `checkpoint` belongs to the run in `dir`: it lies in the configured checkpoint directory, in `dir`'s
/// default `checkpoints/` (`checkpoint::run_dir_of`), or in a checkpoint directory `dir`'s marker lists. A resume of
/// such a checkpoint continues the run in `dir` (even when `checkpoint.dir` moved), so it never replaces it.
pub fn owns_checkpoint(dir: &Path, checkpoint_root: &Path, checkpoint: &Path) -> bool {
    let Some(parent) = checkpoint.parent() else { return false };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    same_dir(parent, checkpoint_root)
        || checkpoint::run_dir_of(checkpoint).is_some_and(|run| same_dir(&run, dir))
        || RunMarker::load(dir)
            .ok()
            .flatten()
            .is_some_and(|m| m.was_made_in(dir) && m.listed_roots(dir).iter().any(|r| same_dir(r, parent)))
}

/// What a run directory holds, read without changing anything.
#[derive(Clone, Debug, Default)]
struct Survey {
    /// The marker found, made here or not.
    marker: Option<RunMarker>,
    /// Whether the marker was made in this directory.
    proven: bool,
    /// Entries of the directory besides the lock file, sorted.
    entries: Vec<String>,
    /// The run in it (checkpoints in its own checkpoint directories, log lines), described; `None` when none.
    run: Option<String>,
    /// Whether it holds a run's files (logs, checkpoints) without a marker made here: an older tokenmill's run, or a
    /// copy.
    legacy: bool,
    /// Entries of owned names that a proven marker does not list (the user's, not tokenmill's).
    unlisted: Vec<String>,
}

/// The checkpoint directories of the run in `dir`: its default one, those its marker lists, and `checkpoint_root`
/// when it lies inside `dir`.
fn own_roots(dir: &Path, marker: Option<&RunMarker>, checkpoint_root: &Path) -> Vec<PathBuf> {
    let mut roots = vec![dir.join(CHECKPOINTS_DIR)];
    if let Some(m) = marker {
        roots.extend(m.listed_roots(dir));
    }
    if inside(checkpoint_root, dir) {
        roots.push(checkpoint_root.to_path_buf());
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for r in roots.iter().map(|r| output::absolute(r)) {
        if !unique.contains(&r) {
            unique.push(r);
        }
    }
    unique
}

fn survey(dir: &Path, checkpoint_root: &Path) -> Result<Survey, RunDirError> {
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) && !dir.is_dir() {
        return Err(RunDirError::NotADirectory { dir: dir.display().to_string() });
    }
    let entries = output::entries(dir, &[LOCK_FILE])?;
    let marker = RunMarker::load(dir)?;
    let proven = marker.as_ref().is_some_and(|m| m.was_made_in(dir));
    let roots = own_roots(dir, marker.as_ref().filter(|_| proven), checkpoint_root);
    let found: Vec<(usize, PathBuf)> = roots.iter().flat_map(|r| checkpoint::all(r)).collect();
    let latest = found.iter().map(|(s, _)| *s).max();
    let log_lines = std::fs::read_to_string(dir.join(LOG_TXT)).map(|t| t.lines().count()).unwrap_or(0)
        + std::fs::read_to_string(dir.join(METRICS_JSONL)).map(|t| t.lines().count()).unwrap_or(0);
    let run = (!found.is_empty() || log_lines > 0).then(|| {
        let id = marker.as_ref().map_or("a run".to_string(), |m| format!("run {}", m.run_id));
        let ckpts = match latest {
            Some(step) => format!("{} checkpoint(s), the latest step_{step:06}", found.len()),
            None => "no checkpoint".into(),
        };
        format!("{id} ({ckpts}; {log_lines} log line(s))")
    });
    // A run without a marker made here: its logs, or checkpoints in its directory (a config.toml alone proves
    // nothing).
    let legacy = !proven
        && ([LOG_TXT, METRICS_JSONL].iter().any(|f| dir.join(f).is_file())
            || !checkpoint::all(&dir.join(CHECKPOINTS_DIR)).is_empty());
    let unlisted = match marker.as_ref().filter(|_| proven) {
        Some(m) => OWNED_FILES
            .iter()
            .filter(|f| dir.join(f).exists() && !m.files.iter().any(|l| l == *f))
            .map(|f| f.to_string())
            .collect(),
        None => Vec::new(),
    };
    Ok(Survey { marker, proven, entries, run, legacy, unlisted })
}

/// What taking the directory involves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Action {
    /// Remove the previous run's files (`--overwrite`).
    remove_owned: bool,
    /// Write a new marker (`false`: keep the one there, listing what this run writes).
    new_marker: bool,
    /// The run id a new marker keeps (a copy or an older tokenmill's run adopted by a resume of its own checkpoint).
    keep_id: Option<String>,
}

fn judge(dir: &Path, checkpoint_root: &Path, s: &Survey, claim: Claim) -> Result<Action, RunDirError> {
    let d = || dir.display().to_string();
    let own_resume = matches!(claim, Claim::Resume { own: true, .. });
    if !s.proven && !s.entries.is_empty() {
        let what =
            s.run.clone().unwrap_or_else(|| "the files of a run (log.txt, metrics.jsonl or checkpoints/)".into());
        let why = match &s.marker {
            Some(m) if m.made_in.is_some() => {
                "its .tokenmill-run was made in another directory (copied or moved here), and a marker proves only \
                 the directory it was made in"
            }
            Some(_) => "its .tokenmill-run was written by a tokenmill that did not record where it was made",
            None => "it has no .tokenmill-run (a run of a tokenmill older than the marker, or not tokenmill's)",
        };
        return match (own_resume, s.legacy) {
            (true, true) => Ok(Action {
                remove_owned: false,
                new_marker: true,
                keep_id: s.marker.as_ref().map(|m| m.run_id.clone()),
            }),
            (_, true) => Err(RunDirError::Unmarked { dir: d(), what, why }),
            (_, false) => Err(RunDirError::Foreign { dir: d(), entries: output::describe_entries(&s.entries), why }),
        };
    }
    if !s.unlisted.is_empty() {
        return Err(RunDirError::NotListed { dir: d(), names: s.unlisted.join(", ") });
    }
    if !own_resume {
        check_outside_root(dir, checkpoint_root)?;
    }
    let fresh = Action { remove_owned: false, new_marker: true, keep_id: None };
    let Some(what) = &s.run else {
        // Absent, empty, or marked without a run yet (a run that failed during setup).
        return Ok(if own_resume && s.proven { Action { new_marker: false, ..fresh } } else { fresh });
    };
    let overwrite = match claim {
        Claim::Resume { own: true, .. } => return Ok(Action { new_marker: false, ..fresh }),
        Claim::Fresh { overwrite } | Claim::Resume { own: false, overwrite } => overwrite,
    };
    if !overwrite {
        return Err(RunDirError::AnotherRun { dir: d(), what: what.clone() });
    }
    Ok(Action { remove_owned: true, ..fresh })
}

/// A `checkpoint.dir` outside the run directory, for a run that will write its first checkpoints there: it must hold
/// nothing, or only checkpoints' leftovers; another run's checkpoints are never mixed with, nor removed.
fn check_outside_root(dir: &Path, root: &Path) -> Result<(), RunDirError> {
    if inside(root, dir) {
        return Ok(());
    }
    let found = checkpoint::all(root);
    if let Some((step, latest)) = found.last() {
        let run = checkpoint::recorded_run(latest).ok().flatten().map_or(String::new(), |id| format!(" of run {id}"));
        return Err(RunDirError::CheckpointsTaken {
            dir: root.display().to_string(),
            what: format!("{} checkpoint(s){run}, the latest step_{step:06}", found.len()),
        });
    }
    let entries: Vec<String> = output::entries(root, &[])?
        .into_iter()
        .filter(|n| n != ABANDONED_DIR && !checkpoint::is_leftover_name(n))
        .collect();
    if !entries.is_empty() {
        return Err(RunDirError::NotCheckpoints {
            dir: root.display().to_string(),
            entries: output::describe_entries(&entries),
        });
    }
    Ok(())
}

/// Whether `path` is `dir` or inside it (after resolving what exists).
fn inside(path: &Path, dir: &Path) -> bool {
    output::is_inside(path, dir)
}

/// Refuse, without changing anything, a claim the directory cannot grant (another process's lock, another run, a
/// directory that is not tokenmill's). Taking it ([`RunDir::take`]) checks again under the lock.
pub fn check(dir: &Path, checkpoint_root: &Path, claim: Claim) -> Result<(), RunDirError> {
    output::check_dir_path(dir)?;
    if let Some(busy) = DirLock::held_elsewhere(dir) {
        return Err(busy.into());
    }
    judge(dir, checkpoint_root, &survey(dir, checkpoint_root)?, claim).map(|_| ())
}

/// A run directory taken by this process: its lock is held until this is dropped.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    marker: RunMarker,
    _lock: DirLock,
}

impl RunDir {
    /// Lock `dir` (created if missing), check `claim` again under the lock, remove a previous run's files if the
    /// claim says `--overwrite` (never `resumed_from`, the checkpoint a resume continues), and write the owner marker
    /// (new, or the one there updated with what this run writes). Returns one note per thing done.
    pub fn take(
        dir: &Path,
        checkpoint_root: &Path,
        claim: Claim,
        resumed_from: Option<&Path>,
    ) -> Result<(RunDir, Vec<String>), RunDirError> {
        check(dir, checkpoint_root, claim)?;
        let lock = DirLock::exclusive(dir)?;
        let s = survey(dir, checkpoint_root)?;
        let action = judge(dir, checkpoint_root, &s, claim)?;
        let mut notes = Vec::new();
        if action.remove_owned {
            let marker = s.marker.as_ref().expect("a proven run directory has a marker");
            notes.extend(remove_owned(dir, marker, checkpoint_root, resumed_from)?);
        }
        let mut marker = match (&s.marker, action.new_marker) {
            (Some(m), false) => m.clone(),
            _ => {
                let m = RunMarker::new(action.keep_id.clone());
                if s.legacy {
                    notes.push(format!("marked {} as run {} ({MARKER_FILE})", dir.display(), m.run_id));
                }
                m
            }
        };
        // What this run writes there, so a later --overwrite can tell it from what it did not write.
        for f in OWNED_FILES {
            if !marker.files.iter().any(|l| l == f) {
                marker.files.push(f.to_string());
            }
        }
        if s.legacy && action.new_marker {
            // An adopted run's checkpoints are where it kept them.
            for root in own_roots(dir, None, checkpoint_root) {
                if let Some(rel) = relative_root(dir, &root) {
                    marker.checkpoint_dirs.push(rel);
                }
            }
        }
        if let Some(rel) = relative_root(dir, checkpoint_root) {
            if !marker.checkpoint_dirs.contains(&rel) {
                marker.checkpoint_dirs.push(rel);
            }
        }
        marker.save(dir)?;
        Ok((RunDir { dir: dir.to_path_buf(), marker, _lock: lock }, notes))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn marker(&self) -> &RunMarker {
        &self.marker
    }
}

/// `root` relative to `dir` when it lies inside it (`.` for `dir` itself); `None` otherwise.
fn relative_root(dir: &Path, root: &Path) -> Option<String> {
    let (d, r) = (output::absolute(dir), output::absolute(root));
    let rel = r.strip_prefix(&d).ok()?;
    Some(if rel.as_os_str().is_empty() { ".".into() } else { rel.display().to_string() })
}

/// `--overwrite`: remove what a proven run directory shows tokenmill wrote — the files its marker lists, a
/// `report.svg` that carries the report signature, and in its checkpoint directories the checkpoints of its run (a
/// `state.json` with the marker's run id, or none recorded), the leftovers of interrupted writes and abandoned
/// branches — and nothing else; never `resumed_from`. Returns what was removed and what was left, as notes.
fn remove_owned(
    dir: &Path,
    marker: &RunMarker,
    checkpoint_root: &Path,
    resumed_from: Option<&Path>,
) -> Result<Vec<String>, RunDirError> {
    // Everything to remove is decided first, so a refusal removes nothing.
    let mut folders = Vec::new();
    let roots = own_roots(dir, Some(marker), checkpoint_root);
    for root in &roots {
        folders.extend(checkpoints_of(root, &marker.run_id));
        let abandoned = root.join(ABANDONED_DIR);
        for b in output::entries(&abandoned, &[])? {
            folders.extend(checkpoints_of(&abandoned.join(b), &marker.run_id));
        }
    }
    if let Some(keep) = resumed_from {
        if let Some(hit) = folders.iter().find(|f| same_dir(f, keep)) {
            return Err(RunDirError::WouldRemoveResumed { checkpoint: hit.display().to_string() });
        }
    }
    let mut removed = Vec::new();
    for f in OWNED_FILES.iter().filter(|f| marker.files.iter().any(|l| l == *f)) {
        let p = dir.join(f);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&p).map_err(io(&p))?;
            removed.push(f.to_string());
        }
    }
    let report = dir.join(REPORT_FILE);
    if report.is_file() && !report.is_symlink() && is_tokenmill_report(&report) {
        std::fs::remove_file(&report).map_err(io(&report))?;
        removed.push(REPORT_FILE.to_string());
    }
    for f in &folders {
        std::fs::remove_dir_all(f).map_err(io(f))?;
    }
    for root in &roots {
        let abandoned = root.join(ABANDONED_DIR);
        for b in output::entries(&abandoned, &[])? {
            let _ = std::fs::remove_dir(abandoned.join(b)); // only if empty
        }
        let _ = std::fs::remove_dir(&abandoned);
        if *root != output::absolute(dir) {
            let _ = std::fs::remove_dir(root);
        }
    }
    if !folders.is_empty() {
        removed.push(format!("{} checkpoint folder(s)", folders.len()));
    }
    let mut left: Vec<String> = Vec::new();
    for n in output::entries(dir, &[LOCK_FILE, MARKER_FILE])? {
        let path = output::absolute(&dir.join(&n));
        if path.is_dir() && roots.contains(&path) {
            left.extend(output::entries(&path, &[])?.into_iter().map(|c| format!("{n}/{c}")));
        } else {
            left.push(n);
        }
    }
    left.sort();
    let mut notes = vec![format!(
        "--overwrite: removed the previous run's {} from {}",
        if removed.is_empty() { "files (none left)".to_string() } else { removed.join(", ") },
        dir.display()
    )];
    if !left.is_empty() {
        notes.push(format!("--overwrite: left {} alone (not tokenmill's)", left.join(", ")));
    }
    crate::util::fsync_dir(dir).map_err(io(dir))?;
    Ok(notes)
}

/// The checkpoints of run `run_id` (folders `step_N` holding a `state.json` that records that run, or no run: written
/// before runs were recorded) and checkpoint-write leftovers (`step_N.tmp.PID`, `step_N.old.PID`) directly in `root`.
fn checkpoints_of(root: &Path, run_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let ours = checkpoint::is_leftover_name(&name)
            || (name.starts_with("step_")
                && path.join(checkpoint::STATE_FILE).is_file()
                && checkpoint::recorded_run(&path).is_ok_and(|r| r.as_deref().is_none_or(|id| id == run_id)));
        if ours {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Whether two paths name the same existing directory.
pub fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_fresh() -> Claim {
        Claim::Fresh { overwrite: false }
    }

    #[test]
    fn a_fresh_run_takes_only_an_empty_or_unstarted_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let ckpts = dir.join(CHECKPOINTS_DIR);
        let (taken, _) = RunDir::take(&dir, &ckpts, claim_fresh(), None).unwrap();
        let id = taken.marker().run_id.clone();
        // Held: a second writer is refused, naming the holder.
        let err = RunDir::take(&dir, &ckpts, claim_fresh(), None).unwrap_err().to_string();
        assert!(err.contains("another tokenmill process") && err.contains("pid"), "{err}");
        drop(taken);
        // Marked but no run yet: taken again, with a new id.
        let (again, _) = RunDir::take(&dir, &ckpts, claim_fresh(), None).unwrap();
        assert_ne!(again.marker().run_id, id);
        drop(again);
        // A run in it (a log line): refused, and --overwrite removes only tokenmill's entries.
        std::fs::write(dir.join(LOG_TXT), "0 train 1.0\n").unwrap();
        std::fs::write(dir.join("notes.md"), "mine").unwrap();
        let step = checkpoint::step_dir(&ckpts, 2);
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(checkpoint::STATE_FILE), "{}").unwrap();
        std::fs::create_dir_all(ckpts.join("keep")).unwrap();
        let err = RunDir::take(&dir, &ckpts, claim_fresh(), None).unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("--overwrite") && err.contains("step_000002"), "{err}");
        let (_, notes) = RunDir::take(&dir, &ckpts, Claim::Fresh { overwrite: true }, None).unwrap();
        assert!(!dir.join(LOG_TXT).exists() && !step.exists(), "{notes:?}");
        assert!(dir.join("notes.md").is_file() && ckpts.join("keep").is_dir(), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("left checkpoints/keep, notes.md alone")), "{notes:?}");
    }

    #[test]
    fn an_unmarked_directory_is_never_taken_by_a_fresh_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("thesis.tex"), "mine").unwrap();
        for overwrite in [false, true] {
            let err = check(dir, &dir.join(CHECKPOINTS_DIR), Claim::Fresh { overwrite }).unwrap_err().to_string();
            assert!(err.contains("not a tokenmill run directory") && err.contains("thesis.tex"), "{err}");
        }
        assert!(!dir.join(LOCK_FILE).exists(), "a refusal writes nothing");
        // A run of an older tokenmill (its logs, no marker) may be resumed, not replaced.
        std::fs::write(dir.join(METRICS_JSONL), "").unwrap();
        let err = check(dir, &dir.join(CHECKPOINTS_DIR), Claim::Fresh { overwrite: true }).unwrap_err().to_string();
        assert!(err.contains("--overwrite does not apply"), "{err}");
        check(dir, &dir.join(CHECKPOINTS_DIR), Claim::Resume { own: true, overwrite: false }).unwrap();
    }
}
