//! Where commands write: the one rule every output path of every command follows.
//!
//! **A command creates only inside the path it was given, replaces or deletes only what it can prove it made, never
//! writes through a link it did not make, and one writer owns a directory at a time.**
//!
//! - A *directory* a command fills (`train --log-dir`, `prep --out`, a prep worker's folder, `export hf DIR`) is taken
//!   only when it is absent (then created), empty, or carries the owner marker tokenmill made *in that directory*
//!   (its inode number is recorded: a marker copied or moved elsewhere proves nothing). The run directory's rules are
//!   `train::run_dir`, the shard directory's `shards::out_dir`; this module holds what they share.
//! - A *file* a command writes (`report --out`, `bench --json` / `--csv`, `prep hellaswag`'s eval file) is written
//!   atomically (temp name, fsync, rename; a failed write removes its temp) and replaces an existing file only when
//!   that file carries the command's own signature ([`write_file`]): never a symbolic link, a directory, or anything
//!   else.
//! - Temp files are named `NAME.tmp.PID` ([`crate::util::temp_path_for`]); a later run removes only those of its own
//!   names, in a directory it owns, whose process is gone ([`remove_stale_temps`]).
//! - A path that climbs out of a directory that does not exist (`/nonexistent/..`) is refused before anything is
//!   created ([`check_dir_path`]): creating it would make `/nonexistent` and then write into `/`.

use std::path::{Component, Path};

use crate::util::{io_at, PathIoError};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "{path}: exists and is not {what} tokenmill wrote; refusing to replace it (give another path, or remove the \
         file yourself)"
    )]
    NotOurs { path: String, what: &'static str },
    #[error(
        "{path}: a symbolic link; tokenmill writes an output only at a plain path, never through a link (give the path \
         the link points to, or another one)"
    )]
    Symlink { path: String },
    #[error("{path}: a directory, not a file; give a file path")]
    IsDir { path: String },
    #[error(
        "{path}: `..` after {missing}, which does not exist: creating it would write somewhere else than the path \
         says; give the directory's plain path"
    )]
    DotDot { path: String, missing: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// Refuse an output file path whose current content tokenmill may not replace: a symbolic link, a directory, or a
/// file `is_ours` does not recognise (`what` says what it would have to be: "a report", "a bench result"). An absent
/// path is fine.
pub fn check_file(path: &Path, what: &'static str, is_ours: impl Fn(&Path) -> bool) -> Result<(), OutputError> {
    let p = || path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e).into()),
        Ok(m) if m.file_type().is_symlink() => Err(OutputError::Symlink { path: p() }),
        Ok(m) if m.is_dir() => Err(OutputError::IsDir { path: p() }),
        Ok(m) if m.is_file() && is_ours(path) => Ok(()),
        Ok(_) => Err(OutputError::NotOurs { path: p(), what }),
    }
}

/// Write an output file atomically after [`check_file`].
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
    is_ours: impl Fn(&Path) -> bool,
) -> Result<(), OutputError> {
    check_file(path, what, is_ours)?;
    crate::util::write_atomic(path, bytes).map_err(io_at(path))?;
    Ok(())
}

/// The first `limit` bytes of `path` as text (lossy), or `None` when it cannot be read: what signature checks look at.
pub fn head(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes)).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Refuse a directory path with a `..` that follows a component that does not exist (`--out /nonexistent/..`).
pub fn check_dir_path(path: &Path) -> Result<(), OutputError> {
    let mut prefix = std::path::PathBuf::new();
    for c in path.components() {
        if c == Component::ParentDir && !prefix.as_os_str().is_empty() && !prefix.is_dir() {
            return Err(OutputError::DotDot {
                path: path.display().to_string(),
                missing: prefix.display().to_string(),
            });
        }
        prefix.push(c);
    }
    Ok(())
}

/// `path` made absolute with its existing part resolved (symbolic links, `..`) and the part that does not exist yet
/// appended as written (a `..` there steps back lexically): what two paths are compared by before either exists.
pub fn absolute(path: &Path) -> std::path::PathBuf {
    let mut rest = Vec::new();
    let mut base = path;
    loop {
        if let Ok(canon) = std::fs::canonicalize(if base.as_os_str().is_empty() { Path::new(".") } else { base }) {
            let mut out = canon;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Whether `path` is `dir` or lies inside it ([`absolute`] forms compared).
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    absolute(path).starts_with(absolute(dir))
}

/// The inode number of directory `dir` (what an owner marker records as the place it was made); `None` where it
/// cannot be read or the platform has none.
pub fn dir_inode(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// The names in `dir` (sorted), without those in `skip`; an absent directory has none.
pub fn entries(dir: &Path, skip: &[&str]) -> Result<Vec<String>, PathIoError> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_at(dir)(e)),
    };
    names.retain(|n| !skip.contains(&n.as_str()));
    names.sort();
    Ok(names)
}

/// At most five names, then how many more: `a, b, c, d, e and 7 more`.
pub fn describe_entries(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    shown.join(", ") + &if more > 0 { format!(" and {more} more") } else { String::new() }
}

/// Remove the temp files `NAME.tmp.PID` in `dir` whose `NAME` is one of this command's (`is_ours_name`) and whose
/// process is gone (a write cut short by a kill or a full disk). Only plain files; anything else is left alone.
/// Returns the names removed. Call it only on a directory the caller owns and holds the lock of.
pub fn remove_stale_temps(dir: &Path, is_ours_name: impl Fn(&str) -> bool) -> Result<Vec<String>, PathIoError> {
    let mut removed = Vec::new();
    for name in entries(dir, &[])? {
        let Some((base, pid)) = crate::util::parse_temp_name(&name) else { continue };
        if !is_ours_name(base) || (pid != std::process::id() && crate::util::process_running(pid)) {
            continue;
        }
        let path = dir.join(&name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&path).map_err(io_at(&path))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_file_replaces_only_its_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ours = |p: &Path| head(p, 64).is_some_and(|t| t.starts_with("OURS"));
        let f = dir.path().join("out.txt");
        write_file(&f, b"OURS 1", "a test output", ours).unwrap();
        write_file(&f, b"OURS 2", "a test output", ours).unwrap();
        std::fs::write(&f, b"the user's").unwrap();
        let err = write_file(&f, b"OURS 3", "a test output", ours).unwrap_err().to_string();
        assert!(err.contains("is not a test output tokenmill wrote"), "{err}");
        assert_eq!(std::fs::read(&f).unwrap(), b"the user's");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.txt");
            std::os::unix::fs::symlink(&f, &link).unwrap();
            let err = write_file(&link, b"OURS", "a test output", |_| true).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read(&f).unwrap(), b"the user's");
        }
    }

    #[test]
    fn a_path_climbing_out_of_a_missing_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("nonexistent/..");
        let err = check_dir_path(&bad).unwrap_err().to_string();
        assert!(err.contains("nonexistent") && err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("nonexistent").exists());
        check_dir_path(&dir.path().join("a/b")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        check_dir_path(&dir.path().join("real/../x")).unwrap();
        let root = absolute(dir.path());
        assert_eq!(absolute(&dir.path().join("a/b/../c")), root.join("a/c"));
        assert!(is_inside(&dir.path().join("run/checkpoints"), &dir.path().join("run/.")));
        assert!(!is_inside(&dir.path().join("ck"), &dir.path().join("run")));
    }

    #[test]
    fn only_this_commands_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            child.id()
        };
        for name in [
            format!("manifest.json.tmp.{dead}"),
            format!("thesis.tmp.{dead}"),
            "manifest.json.tmp.x".to_string(),
            format!("manifest.json.tmp.{}", std::os::unix::process::parent_id()),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let removed = remove_stale_temps(dir.path(), |base| base == "manifest.json").unwrap();
        assert_eq!(removed, [format!("manifest.json.tmp.{dead}")]);
        assert_eq!(entries(dir.path(), &[]).unwrap().len(), 3, "the user's file, a non-temp name, a live process's");
    }
}
