//! Compiles tokenmill's own CUDA kernels (every `src/**/*.cu`) to PTX, only when the `cuda` feature is on; and, in
//! every build, embeds the shipped cuBLASLt tables (`configs/gemm/*.toml`, `embed_gemm_tables`).
//!
//! Each `src/cuda/<op>.cu` (the kernel layer's one folder; any `src/**/*.cu` is compiled, stems unique) becomes
//! `$OUT_DIR/<op>.ptx`; its Rust launcher embeds it with `include_str!(concat!(env!("OUT_DIR"), "/<op>.ptx"))` and
//! loads it through `cuda::launch` (cudarc underneath), the engine's launchers and the candle ops alike. PTX rather than cubin: the driver JIT-compiles it once per process for
//! the GPU it finds, so one binary built on a GPU-less machine runs on any card at or above the target arch.
//!
//! Environment: `NVCC` (default: `$CUDA_ROOT/bin/nvcc`, then `nvcc` on PATH), `CUDA_COMPUTE_CAP` (default 90,
//! H100/H200; the same variable candle-kernels reads). A file whose first line is `// tokenmill: sm_90a` uses
//! Hopper's arch-specific instructions (wgmma, `src/cuda/wgmma.cuh`): with cap 90 it is compiled for `compute_90a`,
//! whose PTX the driver loads only on sm_90 GPUs (what tokenmill runs on); every other file keeps `compute_90`.
//! With another cap such a file is compiled for that cap like the rest, and its sm_90a instructions trap (its
//! launcher refuses other GPUs). No `--use_fast_math`: the kernels call the fast
//! intrinsics (`exp2f` on pre-scaled arguments) explicitly where the error is bounded, and keep IEEE division and
//! `expf`/`logf` elsewhere (the loss must agree with the CPU reference to ~1e-6).
//!
//! With the `cudnn` feature it also compiles `src/cuda/cudnn_attn.cpp` (the cuDNN SDPA shim, C++17 over the
//! header-only cuDNN frontend) with the `cc` crate and links libcudnn and libcudart. Headers and libraries:
//! `CUDNN_INCLUDE_DIR`, `CUDNN_FRONTEND_INCLUDE_DIR`, `CUDNN_LIB_DIR` (scripts/build-cuda.sh exports them), else the
//! PyPI wheels' layout beside `$CUDA_ROOT` (site-packages/nvidia/cu13 -> ../cudnn/{include,lib}, ../../include),
//! else the compiler's default paths. A library directory that has only `libcudnn.so.9` (the wheel) gets a
//! `libcudnn.so` link in OUT_DIR for the linker; the binary records the soname libcudnn.so.9.

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
    // The folders that hold kernels, so that a new .cu file reruns this script (a folder is watched as a whole:
    // editing a launcher beside a kernel reruns it too, which `up_to_date` makes cheap).
    let mut dirs: Vec<&Path> = sources.iter().filter_map(|s| s.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        println!("cargo:rerun-if-changed={}", d.display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    embed_gemm_tables(&out_dir);
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }

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
        let arch = if cap == "90" && needs_sm90a(src) { "90a".to_string() } else { cap.clone() };
        if up_to_date(&ptx, src, &headers, &arch) {
            continue;
        }
        let status = Command::new(&nvcc)
            .arg("--ptx")
            .arg(format!("-arch=compute_{arch}"))
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
        std::fs::write(stamp(&ptx), &arch).expect("writing the PTX's compute-capability stamp");
    }
    if std::env::var_os("CARGO_FEATURE_CUDNN").is_some() {
        build_cudnn_shim(&out_dir);
    }
}

/// `$OUT_DIR/shipped_gemm_tables.rs`: every `configs/gemm/*.toml` (the tuned cuBLASLt tables tokenmill ships) as
/// `(file stem, text)` pairs in file-name order, for `cuda::gemm_table::SHIPPED` (the engine's `gemm_table = "auto"`):
/// adding a table is adding its file.
fn embed_gemm_tables(out_dir: &Path) {
    let dir = Path::new("configs/gemm");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut tables: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect())
        .unwrap_or_default();
    tables.sort();
    let mut code = String::from("&[\n");
    for t in &tables {
        println!("cargo:rerun-if-changed={}", t.display());
        let abs = std::fs::canonicalize(t).unwrap_or_else(|e| panic!("{}: {e}", t.display()));
        let stem = t.file_stem().and_then(|s| s.to_str()).expect("utf-8 table name");
        code.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", abs.display().to_string()));
    }
    code.push(']');
    std::fs::write(out_dir.join("shipped_gemm_tables.rs"), code).expect("writing shipped_gemm_tables.rs");
}

/// `src/cuda/cudnn_attn.cpp` into a static library, and the link lines for libcudnn and libcudart.
fn build_cudnn_shim(out_dir: &Path) {
    const SHIM: &str = "src/cuda/cudnn_attn.cpp";
    println!("cargo:rerun-if-changed={SHIM}");
    for var in ["CUDNN_INCLUDE_DIR", "CUDNN_FRONTEND_INCLUDE_DIR", "CUDNN_LIB_DIR", "CXX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let env_dir = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cuda_root = ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"].iter().find_map(|v| env_dir(v));
    // The PyPI layout: CUDA_ROOT = site-packages/nvidia/cu13, cuDNN in nvidia/cudnn, the frontend in include/.
    let beside = |rel: &str| cuda_root.as_ref().map(|r| r.join(rel)).filter(|p| p.exists());
    let cuda_include = cuda_root.as_ref().map(|r| r.join("include")).filter(|p| p.join("cuda_runtime.h").exists());
    let cudnn_include = env_dir("CUDNN_INCLUDE_DIR").or_else(|| beside("../cudnn/include"));
    let frontend_include = env_dir("CUDNN_FRONTEND_INCLUDE_DIR")
        .or_else(|| beside("../../include").filter(|p| p.join("cudnn_frontend.h").exists()));
    let cudnn_lib = env_dir("CUDNN_LIB_DIR").or_else(|| beside("../cudnn/lib"));

    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").opt_level(2).file(SHIM);
    // -isystem: the frontend's and CUDA's headers are not ours to warn about.
    for dir in [&cuda_include, &cudnn_include, &frontend_include].into_iter().flatten() {
        build.flag("-isystem").flag(dir.to_str().expect("utf-8 include path"));
    }
    build.compile("tokenmill_cudnn_attn");

    let link_dir = out_dir.join("cudnn-link");
    std::fs::create_dir_all(&link_dir).expect("creating OUT_DIR/cudnn-link");
    let mut search: Vec<PathBuf> = vec![link_dir.clone()];
    search.extend(cudnn_lib.iter().cloned());
    if let Some(root) = &cuda_root {
        search.extend(["lib64", "lib"].iter().map(|l| root.join(l)).filter(|p| p.exists()));
    }
    for (lib, soname) in [("cudnn", "libcudnn.so.9"), ("cudart", "libcudart.so.13")] {
        let plain = format!("lib{lib}.so");
        // A directory with only the versioned name (a wheel): a plain-named link to it, for `-l`.
        if !search.iter().any(|d| d.join(&plain).exists()) {
            if let Some(versioned) = search.iter().map(|d| d.join(soname)).find(|p| p.exists()) {
                let link = link_dir.join(&plain);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&versioned, &link)
                    .unwrap_or_else(|e| panic!("linking {} -> {}: {e}", link.display(), versioned.display()));
            }
        }
        if !search.iter().any(|d| d.join(&plain).exists() || d.join(soname).exists()) {
            println!("cargo:warning=lib{lib} not found in {search:?}: set CUDNN_LIB_DIR / CUDA_ROOT, or rely on the linker's paths");
        }
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    for dir in &search {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}

/// Whether kernel file `src` asks for the arch-specific sm_90a target: its first line is `// tokenmill: sm_90a`.
fn needs_sm90a(src: &Path) -> bool {
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    text.lines().next().is_some_and(|l| l.trim() == "// tokenmill: sm_90a")
}

/// The file beside a PTX that records the compute capability (arch) it was compiled for.
fn stamp(ptx: &Path) -> PathBuf {
    ptx.with_extension("ptx.cap")
}

/// Whether `ptx` was compiled for `arch` after `src` and every shared header last changed (then nvcc is skipped).
fn up_to_date(ptx: &Path, src: &Path, headers: &[PathBuf], arch: &str) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(ptx) else { return false };
    if std::fs::read_to_string(stamp(ptx)).ok().as_deref() != Some(arch) {
        return false;
    }
    std::iter::once(src).chain(headers.iter().map(PathBuf::as_path)).all(|p| modified(p).is_some_and(|m| m <= built))
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
