//! Small shared helpers: atomic file writes (temp name, fsync, rename) used by every artifact writer, and the
//! streamed xxh3 of a file that checksums are made of.

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

/// Write `bytes` to `path` atomically: readers see the old file or the whole new one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
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
