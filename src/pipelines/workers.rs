//! Scale-out of `prep` over machines: worker I of N tokenizes the I-th of N contiguous ranges of the sorted input
//! files into its own folder `OUT/workers/IIIII-of-NNNNN/` (a shard directory of its token stream, with its manifest
//! and resume cursor, plus `worker.json`), and `prep merge` cuts the workers' streams, in worker order, into the
//! shards a one-box run would have written. Workers share nothing but the output file system; the scheduler (a Slurm
//! array, a Kubernetes indexed job, a loop over ssh) starts them.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::shards::format::{TokenWidth, HEADER_BYTES};
use crate::shards::manifest::Manifest;

/// The workers' folder, and a worker folder's record of who it is and whether it finished.
pub use crate::shards::{WORKERS_DIR, WORKER_FILE};
/// The most workers one dataset may be split over (folder names have five digits; a prep also refuses more workers
/// than input files).
pub const MAX_WORKERS: usize = 65_536;

/// Worker `index` of `count` (0-based), written `I/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pub index: usize,
    pub count: usize,
}

impl FromStr for WorkerId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N, worker I (0-based) of N, e.g. 3/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        WorkerId::new(index, count)
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl WorkerId {
    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!("worker {index}/{count}: need 0 <= I < N"));
        }
        if count > MAX_WORKERS {
            return Err(format!(
                "worker {index}/{count}: at most {MAX_WORKERS} workers (N); each reads whole input files"
            ));
        }
        Ok(WorkerId { index, count })
    }

    /// This worker's input files out of `files`: the I-th of N contiguous ranges, sizes differing by at most one.
    pub fn file_range(&self, files: usize) -> Range<usize> {
        (self.index * files / self.count)..((self.index + 1) * files / self.count)
    }

    /// `00003-of-00008`: sorts in worker order and says how many workers the folder belongs to.
    pub fn dir_name(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }

    pub fn parse_dir_name(name: &str) -> Option<WorkerId> {
        let (i, n) = name.split_once("-of-")?;
        if i.len() < 5 || n.len() < 5 || !i.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        WorkerId::new(i.parse().ok()?, n.parse().ok()?).ok()
    }

    pub fn dir_in(&self, out: &Path) -> PathBuf {
        out.join(WORKERS_DIR).join(self.dir_name())
    }

    /// The worker this process is: `--worker I/N` if given, else Slurm's array variables, else Kubernetes' indexed-job
    /// index with `--workers N`; `None` for a one-box run. `env` reads a variable (the process environment in the CLI).
    pub fn resolve(
        flag: Option<WorkerId>,
        workers: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<WorkerId>, String> {
        if let Some(w) = flag {
            if workers.is_some_and(|n| n != w.count) {
                return Err(format!("--worker {w} and --workers {} disagree on the worker count", workers.unwrap()));
            }
            return Ok(Some(w));
        }
        let num = |name: &str| -> Result<Option<usize>, String> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v}: not a number")),
            }
        };
        if let Some(task) = num("SLURM_ARRAY_TASK_ID")? {
            // An array may start at 1 (`--array=1-8`): the index is counted from its first task.
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match workers {
                Some(n) => n,
                None => num("SLURM_ARRAY_TASK_COUNT")?.ok_or(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: pass --workers N or --worker I/N",
                )?,
            };
            let index =
                task.checked_sub(min).ok_or(format!("SLURM_ARRAY_TASK_ID={task} < SLURM_ARRAY_TASK_MIN={min}"))?;
            return WorkerId::new(index, count)
                .map(Some)
                .map_err(|e| format!("from SLURM_ARRAY_TASK_ID={task} (min {min}), {count} workers: {e}"));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = workers.ok_or(
                "JOB_COMPLETION_INDEX is set (a Kubernetes indexed job) but not the worker count: pass --workers N \
                 (the job's completions) or --worker I/N",
            )?;
            return WorkerId::new(index, count)
                .map(Some)
                .map_err(|e| format!("from JOB_COMPLETION_INDEX={index}, --workers {count}: {e}"));
        }
        match workers {
            Some(n) => Err(format!(
                "--workers {n} needs the worker index: --worker I/{n}, or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX set"
            )),
            None => Ok(None),
        }
    }
}

/// `worker.json`: who the worker is, which input files it reads, and, once it has finished (its input exhausted or
/// its `--shards` limit reached), what its stream holds. Rewritten (atomically) with `finished: null` when a run
/// starts, so a merge never trusts a record of an older run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker: usize,
    pub workers: usize,
    /// Input files of the whole dataset; this worker reads `first_input..first_input + inputs` of them.
    pub inputs_total: usize,
    pub first_input: usize,
    pub inputs: usize,
    /// `--shards K` of the latest run (the dataset's limit: the worker's stream stops after K parts, all it may need).
    pub max_shards: Option<usize>,
    /// xxh3 of the whole input list every worker was given (each file's name and size, in order): workers given
    /// different `--input` lists do not make one dataset, and the merge refuses them. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_digest: Option<String>,
    pub finished: Option<Finished>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// The worker's input was exhausted (else it stopped at its `--shards` limit).
    pub complete: bool,
    /// The worker's parts (its manifest's shards), each with its count of documents, i.e. of boundary tokens
    /// (`<|endoftext|>`, or an HF tokenizer's BOS or EOS), one per document: what the merge needs to place the
    /// dataset's resume cursors.
    pub parts: Vec<PartRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub file: String,
    pub tokens: u64,
    pub xxh3: String,
    pub documents: u64,
}

impl WorkerRecord {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(WORKER_FILE)
    }

    pub fn load(dir: &Path) -> Result<WorkerRecord, String> {
        let path = Self::path_in(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a worker record: {e}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("worker record serialises");
        text.push('\n');
        crate::util::write_atomic(&Self::path_in(dir), text.as_bytes())
    }

    /// Whether the record says finished and the manifest beside it agrees (no run has added parts since).
    pub fn finished_with(&self, manifest: &Manifest) -> Option<&Finished> {
        let f = self.finished.as_ref()?;
        let same = f.parts.len() == manifest.shards.len()
            && f.parts
                .iter()
                .zip(&manifest.shards)
                .all(|(p, s)| p.file == s.file && p.tokens == s.tokens && p.xxh3 == s.xxh3)
            && f.complete == manifest.complete;
        same.then_some(f)
    }

    /// Tokens in the finished stream.
    pub fn tokens(&self) -> u64 {
        self.finished.as_ref().map_or(0, |f| f.parts.iter().map(|p| p.tokens).sum())
    }
}

/// Count the boundary tokens `eot` (= documents) of a shard file's body, memory-mapped (parts may be GBs).
pub fn count_documents_in_shard(path: &Path, width: TokenWidth, eot: u32) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    // SAFETY: shards are immutable once renamed into place (docs/SHARD_FORMAT.md); this one is finished.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let body = map.get(HEADER_BYTES..).unwrap_or_default();
    Ok(match width {
        TokenWidth::U16 => body.chunks_exact(2).filter(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) == eot).count(),
        TokenWidth::U32 => body.chunks_exact(4).filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) == eot).count(),
    } as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn ranges_are_contiguous_and_cover_every_file() {
        for files in [0usize, 1, 5, 28, 29] {
            for n in 1..=9 {
                let ranges: Vec<_> = (0..n).map(|i| WorkerId::new(i, n).unwrap().file_range(files)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, files);
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                let (min, max) = (ranges.iter().map(|r| r.len()).min(), ranges.iter().map(|r| r.len()).max());
                assert!(max.unwrap() - min.unwrap() <= 1, "{files} files over {n}: {ranges:?}");
            }
        }
    }

    #[test]
    fn flag_wins_then_slurm_then_kubernetes() {
        let w = |s: &str| s.parse::<WorkerId>().unwrap();
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "8"), ("JOB_COMPLETION_INDEX", "1")];
        assert_eq!(WorkerId::resolve(Some(w("2/3")), None, env(&slurm)), Ok(Some(w("2/3"))));
        assert_eq!(WorkerId::resolve(None, None, env(&slurm)), Ok(Some(w("5/8"))));
        let one_based = [("SLURM_ARRAY_TASK_ID", "8"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "8")];
        assert_eq!(WorkerId::resolve(None, None, env(&one_based)), Ok(Some(w("7/8"))));
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(WorkerId::resolve(None, Some(4), env(&k8s)), Ok(Some(w("3/4"))));
        assert!(WorkerId::resolve(None, None, env(&k8s)).unwrap_err().contains("--workers N"));
        assert!(WorkerId::resolve(None, Some(3), env(&k8s)).unwrap_err().contains("JOB_COMPLETION_INDEX=3"));
        assert_eq!(WorkerId::resolve(None, None, env(&[])), Ok(None));
        assert!(WorkerId::resolve(None, Some(2), env(&[])).is_err());
        assert!("3/3".parse::<WorkerId>().is_err() && "x".parse::<WorkerId>().is_err());
        // A count past any real job is refused in one short line (it used to size a 36 TB allocation).
        for huge in ["0/99999999999", "0/100000"] {
            let err = huge.parse::<WorkerId>().unwrap_err();
            assert!(err.contains("at most 65536 workers") && err.len() < 200, "{err}");
        }
        assert_eq!(WorkerId::parse_dir_name(&w("3/12").dir_name()), Some(w("3/12")));
        assert_eq!(WorkerId::parse_dir_name("merge-00001-of-00002.json"), None);
    }
}
