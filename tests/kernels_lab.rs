//! The CUDA kernel sources executed on the CPU: each lab's `run.sh` compiles them with g++ under a small CUDA
//! emulation header (dev/cuda/cuda_emu.h) and checks forward and backward against double-precision
//! references (awkward sizes, strided q/k/v, unaligned rows, ignored targets, accumulation into non-zero gradients).
//! This keeps the .cu files checked in CPU-only CI; on a GPU, tests/kernels_*.rs and the GPU test binary run the
//! real kernels. Skipped (with a printed line) without g++ >= 11.
//!
//! Four labs in dev/cuda: the candle ops' kernels (`run.sh ops`), the decoder engine's (`run.sh engine`), the
//! Hopper warpgroup product wgmma (`run.sh wgmma`: src/cuda/wgmma_check.cu against a reference, plus wrong
//! descriptors and broken ordering rules that must fail), and Hopper's asynchronous pipeline (`run.sh pipeline`:
//! src/cuda/pipeline_check.cu's producer and consumer warpgroups, plus broken protocols that must fail).

use std::path::Path;
use std::process::Command;

/// Run dev/cuda/run.sh `lab` and require it to print `marker` and no FAIL line.
fn run_lab(test: &str, lab: &str, marker: &str) {
    let gxx_major = Command::new("g++")
        .arg("-dumpversion")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().split('.').next()?.parse::<u32>().ok());
    match gxx_major {
        Some(v) if v >= 11 => {}
        other => {
            eprintln!("SKIPPED {test}: needs g++ >= 11 (C++20 std::barrier), found {other:?}");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/cuda/run.sh");
    let out = Command::new("bash").arg(&script).arg(lab).env("TMPDIR", tmp.path()).output().expect("running the lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kernel lab {} failed:\n{stdout}", script.display());
    assert!(stdout.contains(marker), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn cuda_sources_pass_the_cpu_emulation() {
    run_lab("cuda_sources_pass_the_cpu_emulation", "ops", "all kernel checks passed");
}

#[test]
fn engine_kernels_pass_the_cpu_emulation() {
    run_lab("engine_kernels_pass_the_cpu_emulation", "engine", "all engine kernel checks passed");
}

#[test]
fn wgmma_kernels_pass_the_cpu_emulation() {
    run_lab("wgmma_kernels_pass_the_cpu_emulation", "wgmma", "all wgmma checks passed");
}

#[test]
fn pipeline_kernels_pass_the_cpu_emulation() {
    run_lab("pipeline_kernels_pass_the_cpu_emulation", "pipeline", "all pipeline checks passed");
}
