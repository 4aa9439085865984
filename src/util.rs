//! Small shared helpers: atomic file writes (temp name, fsync, rename) used by every artifact writer, the xxh3 that
//! checksums are made of, the lock that makes one process the only writer of a directory, the check that a name
//! from a command line or a file is a plain file name (no path out of the directory it is joined to), and the I/O
//! error that names its path (`PathIoError`), which error enums wrap instead of each declaring its own.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temp name an artifact is written under before it is renamed into place.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// fsync a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

/// Write `bytes` to `path` atomically: readers see the old file or the whole new one, never a partial file. The temp
/// file is created new (never through a link, never over an existing file), and removed when the write fails (a full
/// disk leaves nothing behind).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let written = (|| {
        let mut f = create_new_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&tmp);
        }
        return Err(e);
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Create `path`, which must not exist yet (`O_EXCL`: never a file or a link already there).
pub fn create_new_file(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Whether process `pid` is alive (Linux: /proc; elsewhere assumed gone, so leftovers of dead writers are cleaned).
pub fn process_running(pid: u32) -> bool {
    cfg!(target_os = "linux") && Path::new("/proc").join(pid.to_string()).exists()
}

/// `NAME.tmp.PID` -> `(NAME, PID)`: a temp name [`temp_path_for`] gives; `None` for anything else.
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let (rest, pid) = name.rsplit_once('.')?;
    let base = rest.strip_suffix(".tmp")?;
    (!base.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then_some((base, pid.parse().ok()?))
}

/// XXH3-64 of a file's content, 16 lowercase hex digits, read in 8 MiB pieces (bounded memory for GB-sized files).
pub fn xxh3_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(format!("{:016x}", h.digest()));
        }
        h.update(&buf[..n]);
    }
}

/// XXH3-64 of `bytes`, 16 lowercase hex digits (the checksum manifests and checkpoints record).
pub fn xxh3_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// An I/O error on a file or directory, with its path: `"{path}: {source}"`. Error enums hold it as
/// `#[error(transparent)] Io(#[from] PathIoError)`, so `.map_err(io_at(path))?` converts into any of them.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIoError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// `map_err` adapter: an I/O error on `path` becomes a [`PathIoError`] naming it.
pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> PathIoError + '_ {
    move |source| PathIoError { path: path.display().to_string(), source }
}

/// Whether `name` is one plain file name: not empty, not `.` or `..`, no path separator, no NUL. Joined to a
/// directory, such a name stays inside it.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The file a directory's writer holds an advisory lock on while it writes there (`DirLock`).
pub const LOCK_FILE: &str = ".tokenmill-lock";

/// Another process holds the lock of a directory, or the lock file is not one tokenmill made.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir}: another tokenmill process{holder} is writing into this directory ({LOCK_FILE} is locked); wait for it \
         to finish, or use another directory"
    )]
    Busy { dir: String, holder: String },
    #[error(
        "{path}: {why}, not a lock file tokenmill made; it is left as it is (tokenmill neither follows nor truncates \
         it): remove or rename it yourself, or use another directory"
    )]
    NotALock { path: String, why: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// An advisory lock (flock) on `DIR/.tokenmill-lock`, held until dropped (or the process ends, however it ends: the
/// kernel releases it). Exclusive: the one writer of the directory; shared: one of several cooperating writers (the
/// processes of a split `prep merge`), which excludes an exclusive one. The file holds the holder's pid, for the
/// message another process gets; it is left in place (removing it would race with the next locker).
///
/// The lock file is opened without following a link (`O_NOFOLLOW`), and an existing one is used only when it is what
/// tokenmill makes: a regular file with one name (not a hard link to a file elsewhere) holding a pid or nothing.
/// Anything else is refused, untouched: a lock never truncates a file it did not create.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Lock `dir` (created if missing) for this process alone, or fail at once naming the holder.
    pub fn exclusive(dir: &Path) -> Result<DirLock, LockError> {
        Self::acquire(dir, true)
    }

    /// Lock `dir` (created if missing) shared with other shared holders, or fail at once if an exclusive holder has it.
    pub fn shared(dir: &Path) -> Result<DirLock, LockError> {
        Self::acquire(dir, false)
    }

    /// Whether another process holds `dir`'s lock now. Creates nothing: a directory without a lock file is free (and
    /// so is one whose lock file is not tokenmill's: taking the lock says so).
    pub fn held_elsewhere(dir: &Path) -> Option<LockError> {
        let path = dir.join(LOCK_FILE);
        let file = open_lock_file(&path, false).ok()?;
        check_lock_file(&file, &path).ok()?;
        match flock(&file, true) {
            Ok(true) => None,
            Ok(false) => Some(busy(dir, &path)),
            Err(_) => None,
        }
    }

    fn acquire(dir: &Path, exclusive: bool) -> Result<DirLock, LockError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = open_lock_file(&path, true).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                LockError::NotALock { path: path.display().to_string(), why: "a symbolic link".into() }
            }
            _ => io_at(&path)(e).into(),
        })?;
        check_lock_file(&file, &path)?;
        if !flock(&file, exclusive).map_err(io_at(&path))? {
            return Err(busy(dir, &path));
        }
        if exclusive {
            // Who holds it, for the next process's message (best effort: the lock is what counts).
            use std::io::{Seek, SeekFrom};
            let _ = file
                .set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()));
        }
        Ok(DirLock { _file: file })
    }
}

/// Open (`create`: or create) the lock file without following a symbolic link in its last component.
fn open_lock_file(path: &Path, create: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(create).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// An opened lock file must be one tokenmill made: a regular file, one link, empty or a pid.
fn check_lock_file(file: &File, path: &Path) -> Result<(), LockError> {
    use std::io::Read;
    let not_a_lock = |why: &str| LockError::NotALock { path: path.display().to_string(), why: why.to_string() };
    let meta = file.metadata().map_err(io_at(path))?;
    if !meta.is_file() {
        return Err(not_a_lock("not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() != 1 {
            return Err(not_a_lock(&format!("a file with {} names (a hard link)", meta.nlink())));
        }
    }
    if meta.len() > 32 {
        return Err(not_a_lock(&format!("{} bytes long", meta.len())));
    }
    let mut text = String::new();
    let mut reader = file;
    if reader.read_to_string(&mut text).is_err() || !text.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(not_a_lock("it holds something other than a process id"));
    }
    Ok(())
}

fn busy(dir: &Path, lock_file: &Path) -> LockError {
    let pid = fs::read_to_string(lock_file).ok().and_then(|t| t.trim().parse::<u32>().ok());
    LockError::Busy { dir: dir.display().to_string(), holder: pid.map(|p| format!(" (pid {p})")).unwrap_or_default() }
}

/// Try to take `file`'s flock without waiting: `Ok(false)` when another open file description holds a conflicting one.
#[cfg(unix)]
fn flock(file: &File, exclusive: bool) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: flock(2) on a descriptor this `File` owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere no advisory lock is taken (tokenmill's platform is Linux).
#[cfg(not(unix))]
fn flock(_file: &File, _exclusive: bool) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_one_exclusive_writer_or_many_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("out");
        assert!(DirLock::held_elsewhere(&d).is_none() && !d.exists(), "probing creates nothing");
        let first = DirLock::exclusive(&d).unwrap();
        let err = DirLock::exclusive(&d).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("another tokenmill"), "{err}");
        assert!(DirLock::shared(&d).is_err() && DirLock::held_elsewhere(&d).is_some());
        drop(first);
        let (a, b) = (DirLock::shared(&d).unwrap(), DirLock::shared(&d).unwrap());
        assert!(DirLock::exclusive(&d).is_err());
        drop((a, b));
        assert!(DirLock::exclusive(&d).is_ok());
    }

    /// Issue 26: `report --out` and `prep hellaswag` on a full disk left their full-size `NAME.tmp.PID` behind. A write
    /// that fails (here the rename: the target is a non-empty directory) removes its temp; one never goes through a
    /// link planted at the temp name.
    #[test]
    fn a_failed_atomic_write_leaves_no_temp_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.svg");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), "x").unwrap();
        assert!(write_atomic(&target, b"<svg/>").is_err());
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["report.svg"], "no temp left");
        #[cfg(unix)]
        {
            let precious = dir.path().join("precious.txt");
            std::fs::write(&precious, "mine").unwrap();
            let out = dir.path().join("out.txt");
            std::os::unix::fs::symlink(&precious, temp_path_for(&out)).unwrap();
            assert!(write_atomic(&out, b"new").is_err());
            assert_eq!(std::fs::read(&precious).unwrap(), b"mine");
        }
    }

    #[test]
    fn a_lock_file_tokenmill_did_not_make_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "irreplaceable").unwrap();
        let d = dir.path().join("out");
        std::fs::create_dir(&d).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&precious, d.join(LOCK_FILE)).unwrap();
            let err = DirLock::exclusive(&d).unwrap_err().to_string();
            assert!(err.contains("symbolic link") && err.contains("not a lock file tokenmill made"), "{err}");
            std::fs::remove_file(d.join(LOCK_FILE)).unwrap();
            std::fs::hard_link(&precious, d.join(LOCK_FILE)).unwrap();
            assert!(DirLock::exclusive(&d).unwrap_err().to_string().contains("hard link"));
            std::fs::remove_file(d.join(LOCK_FILE)).unwrap();
        }
        std::fs::write(d.join(LOCK_FILE), "my notes, not a pid").unwrap();
        assert!(DirLock::shared(&d).is_err());
        assert_eq!(std::fs::read(&precious).unwrap(), b"irreplaceable");
        assert_eq!(std::fs::read(d.join(LOCK_FILE)).unwrap(), b"my notes, not a pid");
    }

    #[test]
    fn plain_file_names_stay_in_their_directory() {
        for ok in ["a.bin", "tiny_val_000000.bin", "x..y"] {
            assert!(is_plain_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
