//! A run's logs: one line per event on screen, build-nanogpt's `log.txt` (`"{step} train|val|hella {value}"`, which
//! its plotting notebook and `tokenmill report` read), and `metrics.jsonl` with every field. Only rank 0 logs.
//! A fresh run truncates both files (as build-nanogpt does); a run resumed at step N first drops their lines of
//! steps >= N (logged after that checkpoint by the run that stopped), then appends, so its log reads like an
//! uninterrupted run's.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const LOG_TXT: &str = "log.txt";
pub const METRICS_JSONL: &str = "metrics.jsonl";

/// One optimizer step as `Trainer::train_step` returns it and the log records it: the engine's `StepOutcome`
/// (loss, norm) with the step, its learning rate and its timing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    /// Mean loss over the whole batch (all micro-steps, all processes).
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub ms: f64,
    pub tokens_per_s: f64,
}

/// One record of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// Serialised flat: `{"kind":"train","step":..,"loss":..,...}`.
    Train(StepStats),
    Val {
        step: usize,
        loss: f32,
    },
    Hella {
        step: usize,
        acc: f64,
        acc_norm: f64,
        n: usize,
    },
    Sample {
        step: usize,
        index: usize,
        text: String,
    },
    /// A mixture's val loss on one of its sources (`Val` is the mixture's: the weighted mean of these).
    #[serde(rename = "val_source")]
    ValSource {
        step: usize,
        source: String,
        loss: f32,
    },
    /// A mixture's tokens consumed so far from each source, after `step` (all processes).
    Data {
        step: usize,
        tokens: std::collections::BTreeMap<String, u64>,
    },
}

impl Event {
    /// The screen line.
    pub fn display(&self) -> String {
        match self {
            Event::Train(StepStats { step, loss, lr, grad_norm, ms, tokens_per_s }) => format!(
                "step {step:5} | loss: {loss:.6} | lr {lr:.4e} | norm: {grad_norm:.4} | dt: {ms:.2}ms | tok/sec: {tokens_per_s:.2}"
            ),
            Event::Val { step, loss } => format!("step {step:5} | validation loss: {loss:.4}"),
            Event::Hella { step, acc, acc_norm, n } => {
                format!("step {step:5} | HellaSwag acc: {acc:.4} acc_norm: {acc_norm:.4} (n={n})")
            }
            Event::Sample { index, text, .. } => format!("sample {index}: {text}"),
            Event::ValSource { step, source, loss } => format!("step {step:5} | validation loss on {source}: {loss:.4}"),
            Event::Data { step, tokens } => {
                let total = tokens.values().sum::<u64>().max(1) as f64;
                let shares: Vec<String> = tokens
                    .iter()
                    .map(|(s, &n)| format!("{s} {n} ({:.1}%)", 100.0 * n as f64 / total))
                    .collect();
                format!("step {step:5} | tokens: {}", shares.join(", "))
            }
        }
    }

    /// The `log.txt` line, if this event has one (build-nanogpt logs hella as acc_norm).
    pub fn log_txt_line(&self) -> Option<String> {
        match self {
            Event::Train(StepStats { step, loss, .. }) => Some(format!("{step} train {loss:.6}")),
            Event::Val { step, loss } => Some(format!("{step} val {loss:.4}")),
            Event::Hella { step, acc_norm, .. } => Some(format!("{step} hella {acc_norm:.4}")),
            Event::Sample { .. } | Event::ValSource { .. } | Event::Data { .. } => None,
        }
    }
}

/// Open log files of one run.
pub struct RunLog {
    dir: PathBuf,
    txt: File,
    jsonl: File,
    echo: bool,
}

impl RunLog {
    /// Start `dir/log.txt` and `dir/metrics.jsonl` afresh (truncated). `echo` also prints every event.
    pub fn open(dir: &Path, echo: bool) -> std::io::Result<Self> {
        Self::open_files(dir, false, echo)
    }

    /// Continue the logs of a run resumed at `step`: lines of steps >= `step` are dropped (the stopped run logged them
    /// after its checkpoint; the resumed run logs them again), as are lines cut short by a kill. Returns the log and
    /// how many lines were dropped.
    pub fn resume(dir: &Path, step: usize, echo: bool) -> std::io::Result<(Self, usize)> {
        let txt_step = |line: &str| line.split_whitespace().next()?.parse().ok();
        let json_step = |line: &str| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            v.get("step")?.as_u64().map(|s| s as usize)
        };
        let dropped = keep_steps_before(&dir.join(LOG_TXT), step, txt_step)?
            + keep_steps_before(&dir.join(METRICS_JSONL), step, json_step)?;
        Ok((Self::open_files(dir, true, echo)?, dropped))
    }

    fn open_files(dir: &Path, append: bool, echo: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| {
            let mut o = OpenOptions::new();
            o.create(true);
            // Never through a link planted at the log's name (`crate::output`): a link there is an error, not a target.
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.custom_flags(libc::O_NOFOLLOW);
            }
            if append {
                o.append(true);
            } else {
                o.write(true).truncate(true);
            }
            o.open(dir.join(name))
        };
        Ok(RunLog { dir: dir.to_path_buf(), txt: open(LOG_TXT)?, jsonl: open(METRICS_JSONL)?, echo })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record one event in both files (flushed, so a killed run keeps its log) and on screen.
    pub fn record(&mut self, event: &Event) -> std::io::Result<()> {
        if self.echo {
            println!("{}", event.display());
        }
        self.record_quiet(event)
    }

    /// Record one event in the files only (a mixture's per-step token counts: on screen at evaluations only).
    pub fn record_quiet(&mut self, event: &Event) -> std::io::Result<()> {
        if let Some(line) = event.log_txt_line() {
            writeln!(self.txt, "{line}")?;
            self.txt.flush()?;
        }
        let json = serde_json::to_string(event).expect("events serialise");
        writeln!(self.jsonl, "{json}")?;
        self.jsonl.flush()
    }

    /// A screen-only message (startup summary, checkpoint written).
    pub fn note(&self, msg: &str) {
        if self.echo {
            println!("{msg}");
        }
    }
}

/// Rewrite `path` (atomically) keeping only the lines whose step (`step_of`) is below `step`; a missing file is
/// fine. Returns the number of lines dropped.
fn keep_steps_before(path: &Path, step: usize, step_of: impl Fn(&str) -> Option<usize>) -> std::io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let (mut kept, mut dropped) = (String::with_capacity(text.len()), 0);
    for line in text.lines() {
        if step_of(line).is_some_and(|s| s < step) {
            kept.push_str(line);
            kept.push('\n');
        } else if !line.trim().is_empty() {
            dropped += 1;
        }
    }
    if kept.len() != text.len() {
        crate::util::write_atomic(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// The three curves of a `log.txt`: (step, value) in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogSeries {
    pub train: Vec<(usize, f64)>,
    pub val: Vec<(usize, f64)>,
    pub hella: Vec<(usize, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogParseError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `STEP train|val|hella VALUE`, found `{text}`")]
    BadLine { path: String, line: usize, text: String },
}

/// Read a build-nanogpt style `log.txt`. A step logged twice (by a run resumed with an older tokenmill, which appended)
/// keeps its later value.
pub fn read_log_txt(path: &Path) -> Result<LogSeries, LogParseError> {
    let p = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LogParseError::Io { path: p(), source })?;
    let mut s = LogSeries::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || LogParseError::BadLine { path: p(), line: i + 1, text: line.to_string() };
        let mut parts = line.split_whitespace();
        let (Some(step), Some(kind), Some(value), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let step: usize = step.parse().map_err(|_| bad())?;
        let value: f64 = value.parse().map_err(|_| bad())?;
        let series = match kind {
            "train" => &mut s.train,
            "val" => &mut s.val,
            "hella" => &mut s.hella,
            _ => return Err(bad()),
        };
        series.retain(|&(st, _)| st != step);
        series.push((step, value));
    }
    for series in [&mut s.train, &mut s.val, &mut s.hella] {
        series.sort_by_key(|&(st, _)| st);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_txt_round_trips_in_build_nanogpt_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), false).unwrap();
        log.record(&Event::Val { step: 0, loss: 10.98766 }).unwrap();
        log.record(&Event::Hella { step: 0, acc: 0.25, acc_norm: 0.2512, n: 100 }).unwrap();
        log.record(&Event::Train(StepStats {
            step: 0,
            loss: 10.987654,
            lr: 8.4e-7,
            grad_norm: 15.2,
            ms: 1.0,
            tokens_per_s: 2.0,
        }))
        .unwrap();
        log.record(&Event::Sample { step: 0, index: 0, text: "Hello".into() }).unwrap();
        drop(log);
        let txt = std::fs::read_to_string(dir.path().join(LOG_TXT)).unwrap();
        assert_eq!(txt, "0 val 10.9877\n0 hella 0.2512\n0 train 10.987654\n");
        let jsonl = std::fs::read_to_string(dir.path().join(METRICS_JSONL)).unwrap();
        assert_eq!(jsonl.lines().count(), 4);
        // The flat layout metrics.jsonl has always had (a step's fields beside its kind).
        assert_eq!(
            jsonl.lines().nth(2).unwrap(),
            r#"{"kind":"train","step":0,"loss":10.987654,"lr":8.4e-7,"grad_norm":15.2,"ms":1.0,"tokens_per_s":2.0}"#
        );

        // A run resumed at step 1 keeps step 0 and appends.
        let (mut log, dropped) = RunLog::resume(dir.path(), 1, false).unwrap();
        assert_eq!(dropped, 0);
        log.record(&Event::Val { step: 1, loss: 9.5 }).unwrap();
        drop(log);
        let s = read_log_txt(&dir.path().join(LOG_TXT)).unwrap();
        assert_eq!(s.val, vec![(0, 10.9877), (1, 9.5)]);
        assert_eq!(s.train, vec![(0, 10.987654)]);
        assert_eq!(s.hella, vec![(0, 0.2512)]);
    }

    #[test]
    fn resume_drops_the_steps_logged_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), false).unwrap();
        for step in 0..6 {
            let stats = StepStats { step, loss: 1.0, lr: 0.1, grad_norm: 1.0, ms: 1.0, tokens_per_s: 1.0 };
            log.record(&Event::Train(stats)).unwrap();
        }
        drop(log);
        // A kill mid-write leaves a torn last line.
        let jsonl = dir.path().join(METRICS_JSONL);
        let mut text = std::fs::read_to_string(&jsonl).unwrap();
        text.push_str("{\"kind\":\"tra");
        std::fs::write(&jsonl, text).unwrap();
        let (_, dropped) = RunLog::resume(dir.path(), 4, false).unwrap();
        assert_eq!(dropped, 2 + 3);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOG_TXT)).unwrap(),
            "0 train 1.000000\n1 train 1.000000\n2 train 1.000000\n3 train 1.000000\n"
        );
        assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 4);
    }

    #[test]
    fn read_log_txt_keeps_the_later_value_of_a_repeated_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOG_TXT);
        std::fs::write(&p, "0 val 10.0\n0 train 10.5\n0 val 9.5\n").unwrap();
        let s = read_log_txt(&p).unwrap();
        assert_eq!((s.val, s.train), (vec![(0, 9.5)], vec![(0, 10.5)]));
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.txt");
        std::fs::write(&p, "0 train 1.0\n1 trian 2.0\n").unwrap();
        let err = read_log_txt(&p).unwrap_err().to_string();
        assert!(err.contains("log.txt:2"), "{err}");
    }
}
