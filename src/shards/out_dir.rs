//! A shard directory (`prep --out`, a prep worker's folder, `prep merge`'s output): when tokenmill may write there.
//! The same rule as a run directory's (`train::run_dir`, `crate::output`): a directory is tokenmill's only when it
//! made it.
//!
//! - **Owner marker** `.tokenmill-dataset` (JSON: creation time, tool version, the inode number of the directory it
//!   was made in), written when `prep` first takes the directory. Copied or moved elsewhere, it proves nothing.
//! - **Who may write**: a directory that is absent (created), empty, or carries a marker made in it. One without such
//!   a marker is taken only when it holds a dataset an older tokenmill wrote (a `manifest.json` that loads, or a
//!   worker layout: `workers/`, `worker.json`), which then gets the marker. Anything else is refused before anything
//!   is written — `--out /` or a folder of the user's — whatever the flags.
//! - **What is removed there**: only what its manifest lists (`prep --overwrite`) and the temp files of its own names
//!   (`NAME.tmp.PID` of a shard, the manifest or the worker record) whose process is gone.
//! - **Lock** `.tokenmill-lock` (`util::DirLock`): one writer (or the cooperating processes of a split merge).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::output::{self, OutputError};
use crate::shards::manifest::{Manifest, MANIFEST_FILE};
use crate::util::{io_at, DirLock, LockError, PathIoError, LOCK_FILE};

/// The owner marker's file name.
pub const MARKER_FILE: &str = ".tokenmill-dataset";
/// What a prep worker layout holds (`pipelines::workers`): its presence marks a dataset directory of an older
/// tokenmill.
const WORKER_LAYOUT: [&str; 2] = ["workers", "worker.json"];

#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error(
        "{dir}: not empty and not a tokenmill shard directory ({why}; it holds {entries}): prep into a new or empty \
         --out (tokenmill writes shards only where it can tell its files from yours; --overwrite does not change \
         that)"
    )]
    Foreign { dir: String, entries: String, why: String },
    #[error("{dir}: a file, not a directory: --out names the directory the shards and manifest.json go into")]
    NotADirectory { dir: String },
    #[error(
        "{path}: not a tokenmill dataset marker ({message}); the directory is not one tokenmill can prove it made"
    )]
    BadMarker { path: String, message: String },
    #[error(transparent)]
    Path(#[from] OutputError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// `.tokenmill-dataset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetMarker {
    pub created_unix: u64,
    pub tool_version: String,
    /// The inode number of the directory the marker was made in: it proves ownership of that directory only.
    pub made_in: Option<u64>,
}

impl DatasetMarker {
    fn load(dir: &Path) -> Result<Option<DatasetMarker>, OutDirError> {
        let path = dir.join(MARKER_FILE);
        let bad = |message: String| OutDirError::BadMarker { path: path.display().to_string(), message };
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e).into()),
            Ok(m) if !m.is_file() => return Err(bad("not a regular file".into())),
            Ok(_) => {}
        }
        let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
        serde_json::from_str(&text).map(Some).map_err(|e| bad(e.to_string()))
    }

    fn made_in(&self, dir: &Path) -> bool {
        self.made_in.is_some() && self.made_in == output::dir_inode(dir)
    }

    /// Write a marker for `dir`; one written by a concurrent prep worker at the same moment is as good.
    fn create(dir: &Path) -> Result<(), OutDirError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let marker = DatasetMarker {
            created_unix: now.as_secs(),
            tool_version: crate::TOOL_VERSION.to_string(),
            made_in: output::dir_inode(dir),
        };
        let mut text = serde_json::to_string_pretty(&marker).expect("a dataset marker serialises");
        text.push('\n');
        let path = dir.join(MARKER_FILE);
        crate::util::write_atomic(&path, text.as_bytes()).map_err(io_at(&path))?;
        Ok(())
    }
}

/// How the taker holds the directory while it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The one writer (`prep`, a worker in its folder, an unsplit merge).
    Exclusive,
    /// One of the processes of a split merge.
    Shared,
    /// Marked only: the output directory that prep workers write their folders into.
    Unlocked,
}

/// What the directory is, read without changing anything.
enum Verdict {
    /// Absent: created and marked.
    Create,
    /// Empty, or an older tokenmill's dataset: marked (with a note in the second case).
    Mark(Option<String>),
    /// Marked here.
    Ours,
}

fn judge(dir: &Path) -> Result<Verdict, OutDirError> {
    output::check_dir_path(dir)?;
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verdict::Create),
        Err(e) => return Err(io_at(dir)(e).into()),
        Ok(m) if !m.is_dir() => return Err(OutDirError::NotADirectory { dir: dir.display().to_string() }),
        Ok(_) => {}
    }
    let mut entries = output::entries(dir, &[LOCK_FILE])?;
    // A marker another prep worker is writing at this moment (its temp name) does not make the directory non-empty.
    entries.retain(|n| crate::util::parse_temp_name(n).is_none_or(|(base, _)| base != MARKER_FILE));
    // The marker is read after the listing: one a concurrent prep worker renames into place between the two is seen
    // here (the directory is then ours), and one it renames later is in neither (the directory is then empty of
    // anything but the others' temps). Read first, a marker landing in between looked like a stranger's file.
    let marker = DatasetMarker::load(dir)?;
    if marker.as_ref().is_some_and(|m| m.made_in(dir)) {
        return Ok(Verdict::Ours);
    }
    if entries.is_empty() {
        return Ok(Verdict::Mark(None));
    }
    let manifest = Manifest::path_in(dir);
    let why = if manifest.exists() {
        match Manifest::load(dir) {
            Ok(_) => return Ok(Verdict::Mark(Some(older_note(dir)))),
            Err(e) => format!("its {MANIFEST_FILE} is not one tokenmill can follow: {e}"),
        }
    } else if WORKER_LAYOUT.iter().any(|n| entries.iter().any(|e| e == n)) {
        return Ok(Verdict::Mark(Some(older_note(dir))));
    } else if marker.is_some() {
        format!("its {MARKER_FILE} was made in another directory (copied or moved here), and no {MANIFEST_FILE}")
    } else {
        format!("no {MARKER_FILE} and no {MANIFEST_FILE}")
    };
    Err(OutDirError::Foreign { dir: dir.display().to_string(), entries: output::describe_entries(&entries), why })
}

fn older_note(dir: &Path) -> String {
    format!("marked {} as a tokenmill dataset ({MARKER_FILE}): it holds one an older tokenmill wrote", dir.display())
}

/// Take `dir` for writing a dataset: refuse a directory tokenmill cannot prove is its own, create an absent one, mark
/// it, and lock it as `hold` says. Returns the lock (held until dropped) and what was done, as notes.
pub fn take(dir: &Path, hold: Hold) -> Result<(Option<DirLock>, Vec<String>), OutDirError> {
    let verdict = judge(dir)?;
    if let Verdict::Create = verdict {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_at(dir)(e).into()),
            _ => {}
        }
    }
    let lock = match hold {
        Hold::Exclusive => Some(DirLock::exclusive(dir)?),
        Hold::Shared => Some(DirLock::shared(dir)?),
        Hold::Unlocked => None,
    };
    // Judged again now that this process holds the directory (another may have written in between).
    let mut notes = Vec::new();
    match judge(dir)? {
        Verdict::Ours => {}
        Verdict::Create | Verdict::Mark(None) => DatasetMarker::create(dir)?,
        Verdict::Mark(Some(note)) => {
            DatasetMarker::create(dir)?;
            notes.push(note);
        }
    }
    Ok((lock, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_directory_is_taken_only_when_tokenmill_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let (lock, _) = take(&out, Hold::Exclusive).unwrap();
        assert!(out.join(MARKER_FILE).is_file() && lock.is_some());
        drop(lock);
        take(&out, Hold::Exclusive).unwrap();
        // A folder of the user's, and one holding a marker copied from elsewhere, are refused untouched.
        let mine = tmp.path().join("me");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("thesis.tmp.docx"), "mine").unwrap();
        let err = take(&mine, Hold::Exclusive).unwrap_err().to_string();
        assert!(err.contains("not a tokenmill shard directory") && err.contains("thesis.tmp.docx"), "{err}");
        std::fs::copy(out.join(MARKER_FILE), mine.join(MARKER_FILE)).unwrap();
        let err = take(&mine, Hold::Exclusive).unwrap_err().to_string();
        assert!(err.contains("made in another directory"), "{err}");
        assert_eq!(output::entries(&mine, &[]).unwrap(), [MARKER_FILE, "thesis.tmp.docx"], "nothing written");
        // `/nonexistent/..` is `/`: refused before anything is created.
        let err = take(&tmp.path().join("nonexistent/.."), Hold::Exclusive).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!tmp.path().join("nonexistent").exists());
    }
}
