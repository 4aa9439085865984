//! A run directory (`run.log_dir`): what tokenmill writes there, how it proves it wrote it, and who writes it now.
//! The rule every command keeps: write only inside the place it was given, delete only what it can prove it made,
//! one writer per directory at a time.
//!
//! - **Owner marker** `.tokenmill-run` (JSON: run id, creation time, tool version), written when a run first takes
//!   the directory. It proves the directory is a tokenmill run. Inside a marked directory tokenmill's own entries have
//!   fixed names ([`OWNED_FILES`], `report.svg` when it carries the report signature, the marker and lock files, and
//!   `checkpoints/`: `step_NNNNNN` folders holding a `state.json`, leftovers of interrupted checkpoint writes,
//!   `abandoned/`). Those are all tokenmill ever replaces or removes there; anything else is left alone.
//! - **Lock** `.tokenmill-lock`, flock'ed by the training process for its lifetime (`util::DirLock`): a second
//!   `train` on the same directory is refused at once, naming the holder's pid.
//! - **Who may write** ([`Claim`]): a fresh run takes an absent or empty directory, or a marked one that holds no run
//!   yet. A marked directory holding a run (a checkpoint, or log lines) is refused: continue it with `--resume`, pick
//!   another `--log-dir`, or pass `--overwrite`, which removes only the entries above. An unmarked directory that is
//!   not empty is never taken by a fresh run (nothing in it can be proven tokenmill's, so `--overwrite` does not
//!   apply); one that holds a run of a tokenmill older than the marker may be resumed, which marks it.
//!   A resume of a checkpoint writes into the run directory that checkpoint lies in (`checkpoint::run_dir_of`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::checkpoint;
use crate::train::log::{LOG_TXT, METRICS_JSONL};
use crate::train::report::{is_tokenmill_report, REPORT_FILE};
use crate::util::{DirLock, LockError, LOCK_FILE};

/// The owner marker's file name.
pub const MARKER_FILE: &str = ".tokenmill-run";
/// The resolved config a run saves beside its logs.
pub const CONFIG_FILE: &str = "config.toml";
/// The default checkpoint directory inside a run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Inside the checkpoint directory: the checkpoints of branches a resume from an earlier step abandoned.
pub const ABANDONED_DIR: &str = "abandoned";
/// The files a run writes in its directory (besides the marker, the lock, `report.svg` and `checkpoints/`).
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
        "{dir}: holds {what}, written before tokenmill marked its run directories (no {MARKER_FILE}): continue it \
         with --resume, or train into another --log-dir (tokenmill removes only what it can prove it wrote, so \
         --overwrite does not apply)"
    )]
    Unmarked { dir: String, what: String },
    #[error(
        "{dir}: not empty and not a tokenmill run directory (no {MARKER_FILE}; it holds {entries}): train into a new \
         or empty --log-dir (tokenmill writes a run only where it can tell its files from yours)"
    )]
    Foreign { dir: String, entries: String },
    #[error(
        "{dir}: checkpoint.dir holds {what}, outside the run directory {run}: --overwrite removes only inside the run \
         directory; use another checkpoint.dir (or leave it unset: RUN_DIR/checkpoints)"
    )]
    ForeignCheckpoints { dir: String, run: String, what: String },
    #[error("{path}: not a tokenmill run marker ({message}); the directory is not one tokenmill can prove it made")]
    BadMarker { path: String, message: String },
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

/// `.tokenmill-run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    /// 16 hex digits, new for every fresh run (a resume keeps it; a copied directory carries its original's).
    pub run_id: String,
    pub created_unix: u64,
    pub tool_version: String,
}

impl RunMarker {
    fn new() -> RunMarker {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32) ^ rand::random::<u64>();
        RunMarker {
            run_id: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes())),
            created_unix: now.as_secs(),
            tool_version: crate::TOOL_VERSION.to_string(),
        }
    }

    /// The marker of `dir`, if it has one.
    pub fn load(dir: &Path) -> Result<Option<RunMarker>, RunDirError> {
        let path = dir.join(MARKER_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RunDirError::BadMarker { path: path.display().to_string(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), RunDirError> {
        let path = dir.join(MARKER_FILE);
        let mut text = serde_json::to_string_pretty(self).expect("a run marker serialises");
        text.push('\n');
        crate::util::write_atomic(&path, text.as_bytes()).map_err(io(&path))
    }
}

/// What a run asks of its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new run (`train` without `--resume`); `overwrite`: remove a previous run's files first (`--overwrite`).
    Fresh { overwrite: bool },
    /// A resume; `own`: the checkpoint lies in this directory's checkpoint directory (else the run continues into a
    /// new directory, which must be free as for a fresh run).
    Resume { own: bool, overwrite: bool },
}

/// What a run directory holds, read without changing anything.
#[derive(Clone, Debug, Default)]
struct Survey {
    marker: Option<RunMarker>,
    /// Entries of the directory besides the lock file, sorted.
    entries: Vec<String>,
    /// The run in it (checkpoints, log lines), described; `None` when it holds none.
    run: Option<String>,
    /// Any checkpoint in the checkpoint directory.
    checkpoints: usize,
    /// Whether it looks like a run of a tokenmill older than the marker.
    legacy: bool,
}

fn survey(dir: &Path, checkpoint_root: &Path) -> Result<Survey, RunDirError> {
    let mut entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(RunDirError::Foreign {
                dir: dir.display().to_string(),
                entries: "a file, not a directory".into(),
            })
        }
        Err(e) => return Err(io(dir)(e)),
    };
    entries.retain(|n| n != LOCK_FILE);
    entries.sort();
    let marker = RunMarker::load(dir)?;
    let checkpoints = checkpoint::all(checkpoint_root);
    let log_lines = std::fs::read_to_string(dir.join(LOG_TXT)).map(|t| t.lines().count()).unwrap_or(0)
        + std::fs::read_to_string(dir.join(METRICS_JSONL)).map(|t| t.lines().count()).unwrap_or(0);
    let run = (!checkpoints.is_empty() || log_lines > 0).then(|| {
        let id = marker.as_ref().map_or("a run".to_string(), |m| format!("run {}", m.run_id));
        let ckpts = match checkpoints.last() {
            Some((step, _)) => format!("{} checkpoint(s), the latest step_{step:06}", checkpoints.len()),
            None => "no checkpoint".into(),
        };
        format!("{id} ({ckpts}; {log_lines} log line(s))")
    });
    // A run of an older tokenmill: its logs, or checkpoints in its directory (a config.toml alone proves nothing).
    let legacy = marker.is_none()
        && ([LOG_TXT, METRICS_JSONL].iter().any(|f| dir.join(f).is_file())
            || !checkpoint::all(&dir.join(CHECKPOINTS_DIR)).is_empty());
    Ok(Survey { marker, entries, run, checkpoints: checkpoints.len(), legacy })
}

/// What taking the directory involves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Action {
    /// Remove the previous run's files (`--overwrite`).
    remove_owned: bool,
    /// The marker to write (`None`: keep the one there).
    new_marker: bool,
}

fn judge(dir: &Path, checkpoint_root: &Path, s: &Survey, claim: Claim) -> Result<Action, RunDirError> {
    let d = || dir.display().to_string();
    let fresh = Action { remove_owned: false, new_marker: true };
    if s.marker.is_none() && !s.entries.is_empty() {
        let what =
            s.run.clone().unwrap_or_else(|| "the files of a run (log.txt, metrics.jsonl or checkpoints/)".into());
        return match (claim, s.legacy) {
            (Claim::Resume { own: true, .. }, true) => Ok(fresh),
            (_, true) => Err(RunDirError::Unmarked { dir: d(), what }),
            (_, false) => {
                let shown: Vec<&str> = s.entries.iter().take(5).map(String::as_str).collect();
                let more = s.entries.len().saturating_sub(shown.len());
                let entries = shown.join(", ") + &if more > 0 { format!(" and {more} more") } else { String::new() };
                Err(RunDirError::Foreign { dir: d(), entries })
            }
        };
    }
    let Some(what) = &s.run else {
        // Absent, empty, or marked without a run yet (a run that failed during setup).
        let keep = matches!(claim, Claim::Resume { own: true, .. }) && s.marker.is_some();
        return Ok(Action { remove_owned: false, new_marker: !keep });
    };
    let overwrite = match claim {
        Claim::Resume { own: true, .. } => return Ok(Action { remove_owned: false, new_marker: s.marker.is_none() }),
        Claim::Fresh { overwrite } | Claim::Resume { own: false, overwrite } => overwrite,
    };
    if !overwrite {
        return Err(RunDirError::AnotherRun { dir: d(), what: what.clone() });
    }
    if s.checkpoints > 0 && !inside(checkpoint_root, dir) {
        return Err(RunDirError::ForeignCheckpoints {
            dir: checkpoint_root.display().to_string(),
            run: d(),
            what: format!("{} checkpoint(s)", s.checkpoints),
        });
    }
    Ok(Action { remove_owned: true, new_marker: true })
}

/// Whether `path` is `dir` or inside it (lexically, after resolving what exists).
fn inside(path: &Path, dir: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(path).starts_with(canon(dir))
}

/// Refuse, without changing anything, a claim the directory cannot grant (another process's lock, another run, a
/// directory that is not tokenmill's). Taking it ([`RunDir::take`]) checks again under the lock.
pub fn check(dir: &Path, checkpoint_root: &Path, claim: Claim) -> Result<(), RunDirError> {
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
    /// claim says `--overwrite`, and write or keep the owner marker. Returns one note per thing done.
    pub fn take(dir: &Path, checkpoint_root: &Path, claim: Claim) -> Result<(RunDir, Vec<String>), RunDirError> {
        check(dir, checkpoint_root, claim)?;
        let lock = DirLock::exclusive(dir)?;
        let s = survey(dir, checkpoint_root)?;
        let action = judge(dir, checkpoint_root, &s, claim)?;
        let mut notes = Vec::new();
        if action.remove_owned {
            notes.extend(remove_owned(dir)?);
        }
        let marker = match (&s.marker, action.new_marker) {
            (Some(m), false) => m.clone(),
            _ => {
                let m = RunMarker::new();
                m.save(dir)?;
                if s.legacy {
                    notes.push(format!("marked {} as run {} ({MARKER_FILE})", dir.display(), m.run_id));
                }
                m
            }
        };
        Ok((RunDir { dir: dir.to_path_buf(), marker, _lock: lock }, notes))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn marker(&self) -> &RunMarker {
        &self.marker
    }
}

/// `--overwrite`: remove what a marked run directory proves tokenmill wrote — [`OWNED_FILES`], a `report.svg` that
/// carries the report signature, and under `checkpoints/` the complete checkpoints (a `state.json` inside), the
/// leftovers of interrupted writes and abandoned branches — and nothing else. Returns what was removed and what was
/// left, as notes.
fn remove_owned(dir: &Path) -> Result<Vec<String>, RunDirError> {
    let mut removed = Vec::new();
    for f in OWNED_FILES {
        let p = dir.join(f);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(io(&p))?;
            removed.push(f.to_string());
        }
    }
    let report = dir.join(REPORT_FILE);
    if report.is_file() && is_tokenmill_report(&report) {
        std::fs::remove_file(&report).map_err(io(&report))?;
        removed.push(REPORT_FILE.to_string());
    }
    let root = dir.join(CHECKPOINTS_DIR);
    let mut checkpoints = remove_checkpoints_in(&root)?;
    let abandoned = root.join(ABANDONED_DIR);
    if let Ok(branches) = std::fs::read_dir(&abandoned) {
        for b in branches.flatten().filter(|b| b.path().is_dir()) {
            checkpoints += remove_checkpoints_in(&b.path())?;
            let _ = std::fs::remove_dir(b.path()); // only if empty
        }
        let _ = std::fs::remove_dir(&abandoned);
    }
    let _ = std::fs::remove_dir(&root);
    if checkpoints > 0 {
        removed.push(format!("{checkpoints} checkpoint folder(s)"));
    }
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let mut left: Vec<String> = Vec::new();
    for n in names(dir).into_iter().filter(|n| n != LOCK_FILE && n != MARKER_FILE) {
        if n == CHECKPOINTS_DIR && root.is_dir() {
            left.extend(names(&root).into_iter().map(|c| format!("{CHECKPOINTS_DIR}/{c}")));
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

/// Remove the checkpoints (folders `step_N` holding a `state.json`) and checkpoint-write leftovers (`step_N.tmp.PID`,
/// `step_N.old.PID`) directly in `root`; returns how many.
fn remove_checkpoints_in(root: &Path) -> Result<usize, RunDirError> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(0) };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let ours = path.is_dir()
            && !path.is_symlink()
            && (checkpoint::is_leftover_name(&name)
                || (name.starts_with("step_") && path.join(checkpoint::STATE_FILE).is_file()));
        if ours {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
            n += 1;
        }
    }
    Ok(n)
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
        let (taken, _) = RunDir::take(&dir, &ckpts, claim_fresh()).unwrap();
        let id = taken.marker().run_id.clone();
        // Held: a second writer is refused, naming the holder.
        let err = RunDir::take(&dir, &ckpts, claim_fresh()).unwrap_err().to_string();
        assert!(err.contains("another tokenmill process") && err.contains("pid"), "{err}");
        drop(taken);
        // Marked but no run yet: taken again, with a new id.
        let (again, _) = RunDir::take(&dir, &ckpts, claim_fresh()).unwrap();
        assert_ne!(again.marker().run_id, id);
        drop(again);
        // A run in it (a log line): refused, and --overwrite removes only tokenmill's entries.
        std::fs::write(dir.join(LOG_TXT), "0 train 1.0\n").unwrap();
        std::fs::write(dir.join("notes.md"), "mine").unwrap();
        let step = checkpoint::step_dir(&ckpts, 2);
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(checkpoint::STATE_FILE), "{}").unwrap();
        std::fs::create_dir_all(ckpts.join("keep")).unwrap();
        let err = RunDir::take(&dir, &ckpts, claim_fresh()).unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("--overwrite") && err.contains("step_000002"), "{err}");
        let (_, notes) = RunDir::take(&dir, &ckpts, Claim::Fresh { overwrite: true }).unwrap();
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
