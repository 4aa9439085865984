//! A run's logs: one line per event on screen, build-nanogpt's `log.txt` (`"{step} train|val|hella {value}"`, which
//! its plotting notebook and `tokenmill report` read), and `metrics.jsonl` with every field. Only rank 0 logs.
//! A fresh run truncates both files (as build-nanogpt does); a resumed run appends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const LOG_TXT: &str = "log.txt";
pub const METRICS_JSONL: &str = "metrics.jsonl";

/// One record of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Train { step: usize, loss: f32, lr: f64, grad_norm: f32, ms: f64, tokens_per_s: f64 },
    Val { step: usize, loss: f32 },
    Hella { step: usize, acc: f64, acc_norm: f64, n: usize },
    Sample { step: usize, index: usize, text: String },
}

impl Event {
    /// The screen line.
    pub fn display(&self) -> String {
        match self {
            Event::Train { step, loss, lr, grad_norm, ms, tokens_per_s } => format!(
                "step {step:5} | loss: {loss:.6} | lr {lr:.4e} | norm: {grad_norm:.4} | dt: {ms:.2}ms | tok/sec: {tokens_per_s:.2}"
            ),
            Event::Val { step, loss } => format!("step {step:5} | validation loss: {loss:.4}"),
            Event::Hella { step, acc, acc_norm, n } => {
                format!("step {step:5} | HellaSwag acc: {acc:.4} acc_norm: {acc_norm:.4} (n={n})")
            }
            Event::Sample { index, text, .. } => format!("sample {index}: {text}"),
        }
    }

    /// The `log.txt` line, if this event has one (build-nanogpt logs hella as acc_norm).
    pub fn log_txt_line(&self) -> Option<String> {
        match self {
            Event::Train { step, loss, .. } => Some(format!("{step} train {loss:.6}")),
            Event::Val { step, loss } => Some(format!("{step} val {loss:.4}")),
            Event::Hella { step, acc_norm, .. } => Some(format!("{step} hella {acc_norm:.4}")),
            Event::Sample { .. } => None,
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
    /// Open `dir/log.txt` and `dir/metrics.jsonl`, truncating unless `append`. `echo` also prints every event.
    pub fn open(dir: &Path, append: bool, echo: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| {
            let mut o = OpenOptions::new();
            o.create(true);
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

/// Read a build-nanogpt style `log.txt`. A resumed run may log a step twice; the later value wins.
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
        let mut log = RunLog::open(dir.path(), false, false).unwrap();
        log.record(&Event::Val { step: 0, loss: 10.98766 }).unwrap();
        log.record(&Event::Hella { step: 0, acc: 0.25, acc_norm: 0.2512, n: 100 }).unwrap();
        log.record(&Event::Train { step: 0, loss: 10.987654, lr: 8.4e-7, grad_norm: 15.2, ms: 1.0, tokens_per_s: 2.0 })
            .unwrap();
        log.record(&Event::Sample { step: 0, index: 0, text: "Hello".into() }).unwrap();
        drop(log);
        let txt = std::fs::read_to_string(dir.path().join(LOG_TXT)).unwrap();
        assert_eq!(txt, "0 val 10.9877\n0 hella 0.2512\n0 train 10.987654\n");
        let jsonl = std::fs::read_to_string(dir.path().join(METRICS_JSONL)).unwrap();
        assert_eq!(jsonl.lines().count(), 4);
        assert!(jsonl.lines().nth(2).unwrap().contains("\"kind\":\"train\""));

        // A resumed run appends; a repeated step replaces the earlier value.
        let mut log = RunLog::open(dir.path(), true, false).unwrap();
        log.record(&Event::Val { step: 0, loss: 9.5 }).unwrap();
        drop(log);
        let s = read_log_txt(&dir.path().join(LOG_TXT)).unwrap();
        assert_eq!(s.val, vec![(0, 9.5)]);
        assert_eq!(s.train, vec![(0, 10.987654)]);
        assert_eq!(s.hella, vec![(0, 0.2512)]);
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
