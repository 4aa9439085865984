//! Compiles tokenmill's own CUDA kernels (every `src/**/*.cu`) to PTX, only when the `cuda` feature is on.
//!
//! Each `src/<dir>/<op>.cu` becomes `$OUT_DIR/<op>.ptx`; its Rust wrapper embeds it with
//! `include_str!(concat!(env!("OUT_DIR"), "/<op>.ptx"))` and loads it through candle's `CudaDevice` (cudarc
//! underneath), as candle-kernels does. PTX rather than cubin: the driver JIT-compiles it once per process for
//! the GPU it finds, so one binary built on a GPU-less machine runs on any card at or above the target arch.
//!
//! Environment: `NVCC` (default: `$CUDA_ROOT/bin/nvcc`, then `nvcc` on PATH), `CUDA_COMPUTE_CAP` (default 90,
//! H100/H200; the same variable candle-kernels reads). No `--use_fast_math`: the kernels call the fast
//! intrinsics (`exp2f` on pre-scaled arguments) explicitly where the error is bounded, and keep IEEE division and
//! `expf`/`logf` elsewhere (the loss must agree with the CPU reference to ~1e-6).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let mut sources = Vec::new();
    collect_cu(Path::new("src"), &mut sources);
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
    }
    // Headers shared by several kernels.
    let mut headers = Vec::new();
    collect_ext(Path::new("src"), "cuh", &mut headers);
    for h in &headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc_path();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP={cap:?}: expected digits such as 90 (H100) or 80 (A100)");
    }
    let mut stems = std::collections::HashSet::new();
    for src in &sources {
        let stem = src.file_stem().and_then(|s| s.to_str()).expect("utf-8 .cu file name").to_string();
        // One flat namespace in OUT_DIR: two kernels with the same file name would overwrite each other.
        if !stems.insert(stem.clone()) {
            panic!("two CUDA sources are named {stem}.cu; kernel file names must be unique across src/");
        }
        let ptx = out_dir.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            .arg("--ptx")
            .arg(format!("-arch=compute_{cap}"))
            .args(["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"])
            .arg("-I")
            .arg(src.parent().expect("a .cu file has a parent dir"))
            .arg("-o")
            .arg(&ptx)
            .arg(src)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e} (set NVCC or CUDA_ROOT, or put nvcc on PATH)", nvcc.display()));
        if !status.success() {
            panic!("nvcc failed on {} ({status})", src.display());
        }
    }
}

fn nvcc_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Some(root) = std::env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn collect_cu(dir: &Path, out: &mut Vec<PathBuf>) {
    collect_ext(dir, "cu", out)
}

fn collect_ext(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_ext(&path, ext, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(path);
        }
    }
}
