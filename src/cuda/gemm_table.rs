//! A table of cuBLASLt algorithm choices per matmul shape, written by `tokenmill bench gemm-tune` and read by the
//! decoder engine (`[engine] gemm_table`).
//!
//! cuBLASLt's heuristic ranks the algorithms that can compute a product; the engine takes its first unless a table
//! names another. The tuner times every candidate of every product of one micro-step on the GPU and records, per
//! shape, the position in the heuristic's list of the fastest (the first unless another beats it by `MIN_GAIN`).
//! Runs with the same table pick the same algorithms, so they stay bitwise repeatable: nothing is timed while
//! training. The heuristic's list depends on the GPU and the cuBLASLt version, so a table records both and is
//! refused on another pair; a shape the table lacks (an evaluation batch, another micro-batch) takes the heuristic's
//! first, as without a table.
//!
//! This file is the format only (no CUDA): the tuner is `bench::gemm_tune`, the lookup `blaslt::BlasLt`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How many of the heuristic's algorithms are asked for, both when tuning and when a table is applied (so an index
/// means the same list both times).
pub const CANDIDATES: usize = 16;

/// A candidate replaces the heuristic's first only when it is at least this much faster (a fraction): closer
/// timings are noise, and keeping the default where it does not matter keeps those products' rounding as untuned.
pub const MIN_GAIN: f64 = 0.01;

/// One product's shape in cuBLAS terms (column-major `D (m x n) = op(A) op(B) [+ C]`; see `blaslt`).
// No `deny_unknown_fields` here or on `TunedShape`: serde does not support it beside `flatten`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldd: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// D (and C) in f32 rather than bf16.
    pub d_f32: bool,
    /// `D = A B + C` rather than `D = A B`.
    pub accumulate: bool,
    /// The epilogue: none, bias_bf16, bias_f32, gelu_aux_bias, dgelu or bgradb.
    pub epilogue: String,
}

/// The tuner's finding for one shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedShape {
    #[serde(flatten)]
    pub shape: GemmShape,
    /// Position of the chosen algorithm in the heuristic's list (0: its own first choice).
    pub algo: usize,
    /// How many algorithms the heuristic offered (and were timed).
    pub offered: usize,
    /// Calls of this shape per micro-step of the tuned model.
    pub calls: usize,
    /// Microseconds per call: the heuristic's first, and the chosen algorithm.
    pub default_us: f64,
    pub chosen_us: f64,
}

/// A whole table: where it was tuned and the choices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmTable {
    /// The GPU's name as the driver reports it.
    pub gpu: String,
    /// `cublasLtGetVersion()` of the library that was tuned.
    pub cublaslt: usize,
    /// What was tuned (model, micro-batch): for the reader.
    pub tuned_for: String,
    #[serde(rename = "shape", default)]
    pub shapes: Vec<TunedShape>,
}

#[derive(Debug, thiserror::Error)]
pub enum GemmTableError {
    #[error("gemm table {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("gemm table {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("gemm table {path}: shape {index} ({shape:?}) appears twice")]
    Duplicate { path: String, index: usize, shape: GemmShape },
    #[error("gemm table {path}: shape {index}: algorithm {algo} of {offered} offered")]
    BadIndex { path: String, index: usize, algo: usize, offered: usize },
    #[error(
        "gemm table {path} was tuned on {tuned_gpu} with cuBLASLt {tuned_version}; this is {gpu} with cuBLASLt \
         {version}: the heuristic's candidates differ, so retune here with `tokenmill bench gemm-tune`"
    )]
    OtherMachine { path: String, tuned_gpu: String, tuned_version: usize, gpu: String, version: usize },
}

impl GemmTable {
    /// Read and check a table (each shape once, each index within what was offered).
    pub fn load(path: &Path) -> Result<GemmTable, GemmTableError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GemmTableError::Io { path: p.clone(), source })?;
        let table: GemmTable =
            toml::from_str(&text).map_err(|source| GemmTableError::Parse { path: p.clone(), source })?;
        let mut seen = std::collections::HashSet::new();
        for (index, s) in table.shapes.iter().enumerate() {
            if !seen.insert(&s.shape) {
                return Err(GemmTableError::Duplicate { path: p, index, shape: s.shape.clone() });
            }
            if s.algo >= s.offered || s.offered > CANDIDATES {
                return Err(GemmTableError::BadIndex { path: p, index, algo: s.algo, offered: s.offered });
            }
        }
        Ok(table)
    }

    /// Write the table (temp file, fsync, rename: a reader never sees half a table).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        let head =
            "# cuBLASLt algorithm per matmul shape, from `tokenmill bench gemm-tune` (src/cuda/gemm_table.rs).\n\
                    # Use it with `[engine] gemm_table = \"<this file>\"` on the same GPU and cuBLASLt version.\n";
        crate::util::write_atomic(path, format!("{head}{text}").as_bytes())
    }

    /// Refuse a table tuned on another GPU or cuBLASLt version.
    pub fn check_machine(&self, path: &Path, gpu: &str, version: usize) -> Result<(), GemmTableError> {
        if self.gpu != gpu || self.cublaslt != version {
            return Err(GemmTableError::OtherMachine {
                path: path.display().to_string(),
                tuned_gpu: self.gpu.clone(),
                tuned_version: self.cublaslt,
                gpu: gpu.to_string(),
                version,
            });
        }
        Ok(())
    }

    /// The heuristic-list position recorded for `shape`, if the table has it.
    pub fn algo(&self, shape: &GemmShape) -> Option<usize> {
        self.shapes.iter().find(|s| &s.shape == shape).map(|s| s.algo)
    }

    /// Microseconds per micro-step over every tuned shape: (with the heuristic's first, with the chosen).
    pub fn micro_step_us(&self) -> (f64, f64) {
        self.shapes
            .iter()
            .fold((0.0, 0.0), |(d, c), s| (d + s.default_us * s.calls as f64, c + s.chosen_us * s.calls as f64))
    }
}

/// The tables tokenmill ships (`configs/gemm/*.toml`, embedded by build.rs): (file stem, text), by file name.
pub const SHIPPED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/shipped_gemm_tables.rs"));

/// The shipped tables tuned on `gpu` with cuBLASLt `version`, merged into one (a shape two tables both tuned takes
/// the first table's choice, by file name), with the names of those tables; `None` where none was tuned there. What
/// `[engine] gemm_table = "auto"` (the default) runs with: a shape is a product's whole description (sizes, strides,
/// transposes, epilogue), so a choice tuned for one model is as valid for any other model's product of that shape.
pub fn shipped_for(gpu: &str, version: usize) -> Result<Option<(GemmTable, Vec<String>)>, GemmTableError> {
    merged(SHIPPED, gpu, version)
}

fn merged(
    tables: &[(&str, &str)],
    gpu: &str,
    version: usize,
) -> Result<Option<(GemmTable, Vec<String>)>, GemmTableError> {
    let mut names = Vec::new();
    let mut out: Option<GemmTable> = None;
    for (name, text) in tables {
        let path = format!("configs/gemm/{name}.toml (shipped)");
        let table: GemmTable =
            toml::from_str(text).map_err(|source| GemmTableError::Parse { path: path.clone(), source })?;
        if table.gpu != gpu || table.cublaslt != version {
            continue;
        }
        names.push(name.to_string());
        match &mut out {
            None => out = Some(table),
            Some(m) => {
                m.tuned_for = format!("{}; {}", m.tuned_for, table.tuned_for);
                for s in table.shapes {
                    if m.algo(&s.shape).is_none() {
                        m.shapes.push(s);
                    }
                }
            }
        }
    }
    Ok(out.map(|t| (t, names)))
}

/// The position to keep among timed candidates (`us[i]`: microseconds of the heuristic's i-th; NaN where it
/// failed to run): the fastest, unless it beats the first by less than `MIN_GAIN`.
pub fn choose(us: &[f64]) -> usize {
    let Some(&first) = us.first() else { return 0 };
    let best = (0..us.len()).filter(|&i| us[i].is_finite()).min_by(|&a, &b| us[a].total_cmp(&us[b]));
    match best {
        Some(i) if !first.is_finite() || us[i] < first * (1.0 - MIN_GAIN) => i,
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A forward product of a 124M model at B*T = 65,536 with `m` outputs (test fixture, also for `bench::gemm_tune`).
    pub(crate) fn shape(m: usize) -> GemmShape {
        GemmShape {
            m,
            n: 65536,
            k: 768,
            lda: 768,
            ldb: 768,
            ldd: m,
            trans_a: true,
            trans_b: false,
            d_f32: false,
            accumulate: false,
            epilogue: "none".into(),
        }
    }

    fn tuned(m: usize, algo: usize) -> TunedShape {
        TunedShape { shape: shape(m), algo, offered: 8, calls: 12, default_us: 300.0, chosen_us: 280.0 }
    }

    #[test]
    fn the_fastest_is_kept_only_past_the_noise_margin() {
        assert_eq!(choose(&[100.0, 99.5, 101.0]), 0, "0.5% is within the margin");
        assert_eq!(choose(&[100.0, 95.0, 97.0]), 1);
        assert_eq!(choose(&[f64::NAN, 120.0, 110.0]), 2, "a first that failed to run is replaced");
        assert_eq!(choose(&[100.0, f64::NAN]), 0);
        assert_eq!(choose(&[]), 0);
    }

    #[test]
    fn a_table_round_trips_and_answers_by_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gemm.toml");
        let t = GemmTable {
            gpu: "NVIDIA H100 80GB HBM3".into(),
            cublaslt: 130002,
            tuned_for: "llama-124m B=64 T=1024".into(),
            shapes: vec![tuned(2304, 3), tuned(768, 0)],
        };
        t.save(&path).unwrap();
        let back = GemmTable::load(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.algo(&shape(2304)), Some(3));
        assert_eq!(back.algo(&shape(4096)), None);
        assert_eq!(back.micro_step_us(), (7200.0, 6720.0));
        back.check_machine(&path, "NVIDIA H100 80GB HBM3", 130002).unwrap();
        let err = back.check_machine(&path, "NVIDIA H200", 130002).unwrap_err().to_string();
        assert!(err.contains("gemm.toml") && err.contains("NVIDIA H200") && err.contains("gemm-tune"), "{err}");
    }

    #[test]
    fn the_shipped_tables_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/gemm");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let t = GemmTable::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!t.shapes.is_empty() && t.gpu.starts_with("NVIDIA"), "{path:?}");
            let (first, chosen) = t.micro_step_us();
            assert!(chosen <= first, "{path:?}: the chosen algorithms are never slower than the heuristic's first");
            n += 1;
        }
        assert!(n >= 3, "configs/gemm holds the tables docs/PERF.md measured");
    }

    #[test]
    fn every_table_file_is_shipped_and_the_tables_of_one_machine_merge() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/gemm");
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(SHIPPED.len(), files, "build.rs embeds every file of configs/gemm");
        let (gpu, v) = ("NVIDIA H100 80GB HBM3", 130100);
        let (t, names) = shipped_for(gpu, v).unwrap().expect("the H100 tables of docs/PERF.md");
        assert!(names.len() >= 3 && names.iter().all(|n| n.starts_with("h100-")), "{names:?}");
        let sum: usize = SHIPPED.iter().map(|(_, text)| toml::from_str::<GemmTable>(text).unwrap().shapes.len()).sum();
        assert!(t.shapes.len() <= sum && t.shapes.len() > sum / 2, "{} of {sum}", t.shapes.len());
        assert!(shipped_for(gpu, v + 1).unwrap().is_none(), "another cuBLASLt: no table");
        assert!(shipped_for("NVIDIA H200", v).unwrap().is_none(), "another GPU: no table");

        // A shape two tables tuned keeps the first table's choice; the rest are added.
        let text = |algo: usize, m2: usize| {
            toml::to_string(&GemmTable {
                gpu: "g".into(),
                cublaslt: 1,
                tuned_for: format!("t{algo}"),
                shapes: vec![tuned(2304, algo), tuned(m2, 0)],
            })
            .unwrap()
        };
        let (a, b) = (text(3, 768), text(5, 3072));
        let (t, names) = merged(&[("a", &a), ("b", &b)], "g", 1).unwrap().unwrap();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((t.algo(&shape(2304)), t.algo(&shape(768)), t.algo(&shape(3072))), (Some(3), Some(0), Some(0)));
        assert_eq!(t.shapes.len(), 3);
        let err = merged(&[("c", "gpu = 3")], "g", 1).unwrap_err().to_string();
        assert!(err.contains("configs/gemm/c.toml"), "{err}");
    }

    #[test]
    fn bad_tables_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let mut t = GemmTable { gpu: "g".into(), cublaslt: 1, tuned_for: String::new(), shapes: vec![tuned(2304, 8)] };
        t.save(&path).unwrap();
        let err = GemmTable::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("algorithm 8 of 8"), "{err}");
        t.shapes = vec![tuned(2304, 1), tuned(2304, 2)];
        t.save(&path).unwrap();
        assert!(GemmTable::load(&path).unwrap_err().to_string().contains("twice"));
        std::fs::write(&path, "gpu = 3").unwrap();
        assert!(GemmTable::load(&path).unwrap_err().to_string().contains("bad.toml"));
    }
}
