//! A bench run written out: a table for people (machine, load, measured peak and the FLOP accounting above it, one
//! row per case), JSON (the whole `BenchReport`, every timed sample included) and CSV (one row per case, full
//! precision, empty cells for figures a case does not have) for scripts. Files are written atomically; `-` is stdout.

use std::fmt::Write as _;
use std::path::Path;

use super::runner::{BenchReport, CaseResult};
use super::BenchError;

/// Milliseconds with about four significant digits.
pub fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m < 1.0 => format!("{m:.4}"),
        m if m < 10.0 => format!("{m:.3}"),
        m if m < 100.0 => format!("{m:.2}"),
        m => format!("{m:.1}"),
    }
}

/// An integer with thousands separators: 1234567 -> "1,234,567".
pub fn fmt_thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn fmt_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 10240.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

fn fmt_tflops(t: f64) -> String {
    if t < 0.01 {
        format!("{t:.5}")
    } else if t < 10.0 {
        format!("{t:.3}")
    } else {
        format!("{t:.1}")
    }
}

const HEADERS: [&str; 18] = [
    "model",
    "what",
    "dtype",
    "B",
    "T",
    "accum",
    "warmup",
    "steps",
    "median ms",
    "mean ms",
    "std ms",
    "min ms",
    "max ms",
    "total s",
    "tok/s",
    "TFLOP/s",
    "MFU",
    "peak mem",
];

fn row(c: &CaseResult) -> Vec<String> {
    let i = &c.info;
    let mut cells = vec![
        i.model.clone(),
        i.what.name().to_string(),
        i.dtype.clone(),
        i.batch.to_string(),
        i.seq_len.to_string(),
        i.grad_accum.to_string(),
        i.warmup.to_string(),
        i.steps.to_string(),
    ];
    match &c.measurement {
        Some(m) => {
            let t = &m.time_ms;
            cells.extend([fmt_ms(t.median), fmt_ms(t.mean), fmt_ms(t.std), fmt_ms(t.min), fmt_ms(t.max)]);
            cells.push(format!("{:.3}", t.total / 1e3));
            cells.push(m.tokens_per_s.map(fmt_thousands).unwrap_or_else(|| "-".into()));
            cells.push(m.tflops.map(fmt_tflops).unwrap_or_else(|| "-".into()));
            cells.push(m.mfu.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into()));
            cells.push(m.peak_memory_bytes.map(fmt_bytes).unwrap_or_else(|| "-".into()));
        }
        None => cells.push(format!("FAILED: {}", c.error.as_deref().unwrap_or("unknown error"))),
    }
    cells
}

/// The human-readable report.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let h = &report.host;
    let load = |x: Option<f64>| x.map(|l| format!("{l:.2}")).unwrap_or_else(|| "?".into());
    let _ = writeln!(out, "# {} bench on {}", report.tool_version, h.device);
    let _ = writeln!(
        out,
        "# host: {} ({} CPUs, candle {} threads), load average {} at start, {} at end",
        h.cpu.as_deref().unwrap_or("unknown CPU"),
        h.cpus,
        h.candle_threads,
        load(h.load_start),
        load(h.load_end)
    );
    let p = &report.peak;
    let _ = writeln!(
        out,
        "# peak (measured): {} TFLOP/s, {} {}x{}x{} matmul, best of {} rounds",
        fmt_tflops(p.tflops),
        p.dtype,
        p.n,
        p.n,
        p.n,
        p.rounds_tflops.len()
    );
    let _ = writeln!(out, "# FLOPs {}", report.flops_accounting);
    if let Some(src) = report.cases.iter().find_map(|c| c.measurement.as_ref().map(|m| m.memory_source)) {
        let _ = writeln!(out, "# peak mem: {}", src.label());
    }
    let rows: Vec<Vec<String>> = report.cases.iter().map(row).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for r in &rows {
        // A failed row's message spans the remaining columns; it does not widen them.
        if r.len() == HEADERS.len() {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (k, cell) in cells.iter().enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            if k + 1 == cells.len() && cells.len() < HEADERS.len() {
                s.push_str(cell);
            } else if k < 3 {
                let _ = write!(s, "{cell:<w$}", w = widths[k]);
            } else {
                let _ = write!(s, "{cell:>w$}", w = widths[k]);
            }
        }
        s.trim_end().to_string()
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&headers));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

pub fn json(report: &BenchReport) -> String {
    serde_json::to_string_pretty(report).expect("a bench report always serialises") + "\n"
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 33] = [
    "model",
    "arch",
    "n_layer",
    "n_head",
    "n_embd",
    "vocab_size",
    "params",
    "what",
    "dtype",
    "batch",
    "seq_len",
    "total_batch",
    "grad_accum",
    "warmup",
    "steps",
    "tokens_per_iter",
    "flops_per_iter",
    "mean_ms",
    "median_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "total_ms",
    "tokens_per_s",
    "tflops",
    "mfu",
    "peak_memory_bytes",
    "memory_source",
    "loss",
    "error",
    "device",
    "peak_tflops",
    "load_start",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv(report: &BenchReport) -> String {
    let opt = |x: Option<String>| x.unwrap_or_default();
    let mut out = CSV_COLUMNS.join(",") + "\n";
    for c in &report.cases {
        let i = &c.info;
        let m = c.measurement.as_ref();
        let stat = |f: fn(&super::stats::Stats) -> f64| opt(m.map(|m| f(&m.time_ms).to_string()));
        let memory_source = m.map(|m| serde_json::to_value(m.memory_source).expect("enum serialises"));
        let fields: Vec<String> = vec![
            i.model.clone(),
            i.arch.clone(),
            i.n_layer.to_string(),
            i.n_head.to_string(),
            i.n_embd.to_string(),
            i.vocab_size.to_string(),
            i.params.to_string(),
            i.what.name().to_string(),
            i.dtype.clone(),
            i.batch.to_string(),
            i.seq_len.to_string(),
            i.total_batch.to_string(),
            i.grad_accum.to_string(),
            i.warmup.to_string(),
            i.steps.to_string(),
            opt(i.tokens_per_iter.map(|x| x.to_string())),
            opt(i.flops_per_iter.map(|x| x.to_string())),
            stat(|s| s.mean),
            stat(|s| s.median),
            stat(|s| s.std),
            stat(|s| s.min),
            stat(|s| s.max),
            stat(|s| s.total),
            opt(m.and_then(|m| m.tokens_per_s).map(|x| x.to_string())),
            opt(m.and_then(|m| m.tflops).map(|x| x.to_string())),
            opt(m.and_then(|m| m.mfu).map(|x| x.to_string())),
            opt(m.and_then(|m| m.peak_memory_bytes).map(|x| x.to_string())),
            opt(memory_source.and_then(|v| v.as_str().map(str::to_string))),
            opt(m.and_then(|m| m.loss).map(|x| x.to_string())),
            opt(c.error.clone()),
            report.host.device.clone(),
            report.peak.tflops.to_string(),
            opt(report.host.load_start.map(|x| x.to_string())),
        ];
        debug_assert_eq!(fields.len(), CSV_COLUMNS.len());
        out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// What a bench output file holds: what a later `bench` may replace (`crate::output`: a file is replaced only when
/// it is one tokenmill wrote, of the same kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// `--json`: a bench report, or `bench compare`'s comparison.
    Json,
    /// `--csv`: one row per case under [`CSV_COLUMNS`].
    Csv,
}

impl OutputKind {
    fn what(self) -> &'static str {
        match self {
            OutputKind::Json => "a bench result (--json)",
            OutputKind::Csv => "a bench table (--csv)",
        }
    }

    /// Whether `path` holds what `bench` writes as this kind: JSON with a report's or a comparison's fields, or CSV
    /// under bench's header line.
    pub fn is_ours(self, path: &Path) -> bool {
        match self {
            OutputKind::Json => {
                let text = std::fs::metadata(path)
                    .ok()
                    .filter(|m| m.len() < 64 << 20)
                    .and_then(|_| std::fs::read_to_string(path).ok());
                let Some(serde_json::Value::Object(o)) = text.and_then(|t| serde_json::from_str(&t).ok()) else {
                    return false;
                };
                let has = |keys: &[&str]| keys.iter().all(|k| o.contains_key(*k));
                has(&["tool_version", "host", "peak", "cases"]) || has(&["host", "tokenmill", "reference", "ratio"])
            }
            OutputKind::Csv => crate::output::head(path, 4096)
                .is_some_and(|t| t.lines().next() == Some(CSV_COLUMNS.join(",").as_str())),
        }
    }
}

/// Write `text` to `dest`: `-` is stdout, anything else a file written atomically, which may replace only a file
/// `bench` wrote as the same `kind` (never a run's log, a report, or anyone's file).
pub fn write_to(dest: &str, text: &str, kind: OutputKind) -> Result<(), BenchError> {
    if dest == "-" {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|source| BenchError::Io { path: "<stdout>".into(), source });
    }
    Ok(crate::output::write_file(Path::new(dest), text.as_bytes(), kind.what(), |p| kind.is_ours(p))?)
}

/// Refuse, before a bench runs, an output path it could not write: a later failure would waste the run.
pub fn check_dest(dest: &str, kind: OutputKind) -> Result<(), BenchError> {
    if dest == "-" {
        return Ok(());
    }
    Ok(crate::output::check_file(Path::new(dest), kind.what(), |p| kind.is_ours(p))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_thousands(1234567.4), "1,234,567");
        assert_eq!(fmt_thousands(999.0), "999");
        assert_eq!(fmt_thousands(1000.0), "1,000");
        assert_eq!(fmt_ms(0.12345), "0.1235");
        assert_eq!(fmt_ms(123.45), "123.5");
        assert_eq!(fmt_bytes(3 << 20), "3 MiB");
        assert_eq!(fmt_bytes(20 << 30), "20.00 GiB");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
