//! Issue 26, `train` as a careless or hostile command line drives it: sizes that overflow or cannot fit are refused
//! in one line with the numbers (never an allocator abort or a backtrace), optimizer constants must be finite, and
//! engine settings the run does not use are said, not silently recorded. Plus issue 28 item 3: the run's state,
//! checkpoint, resume and run-directory modules import one another in one direction only.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/mod.rs"]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `train` with the tiny config on the shared tiny Shakespeare shards into `log`, one step; `more` adds flags.
fn train(log: &Path, more: &[&str]) -> (bool, String, String) {
    train_with("configs/tiny-cpu.toml", log, more)
}

/// [`train`] with another config file of the repository.
fn train_with(config: &str, log: &Path, more: &[&str]) -> (bool, String, String) {
    let config = repo().join(config);
    let data = common::tiny_shakespeare_shards();
    let mut args = vec!["train", "--quiet", "--config", config.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend(["--log-dir", log.to_str().unwrap(), "--max-steps", "1", "--set", "eval.val_every=0"]);
    args.extend(["--set", "eval.sample_every=0", "--set", "data.micro_batch=4", "--set", "data.seq_len=32"]);
    args.extend(["--set", "data.total_batch_tokens=128"]);
    args.extend_from_slice(more);
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A refusal: one `error:` line, no panic or allocator message, and the log directory left unmade.
fn refused_in_one_line(log: &Path, r: (bool, String, String)) -> String {
    let (ok, out, err) = r;
    assert!(!ok, "expected a refusal:\n{out}\n{err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation of") && !err.contains("backtrace"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(!log.exists(), "refused before the run directory was made: {err}");
    errors[0].to_string()
}

/// Resources: `--set model.ffn_hidden=20000000`, `n_layer=1000000`, `vocab_size=4000000000` aborted with
/// `memory allocation of N bytes failed`, a backtrace and SIGABRT. What the run needs is estimated first (parameters,
/// optimizer state, activations) and refused with the numbers.
#[test]
fn a_model_too_big_for_memory_is_refused_with_the_numbers_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    for set in ["model.ffn_hidden=20000000", "model.n_layer=1000000", "model.vocab_size=4000000000"] {
        let line = refused_in_one_line(&log, train(&log, &["--set", set]));
        let ffn = set.starts_with("model.ffn_hidden");
        // (The tiny config is a GPT-2, whose MLP is fixed at 4C: that refusal comes first, naming the field.)
        assert!(
            (ffn && line.contains("ffn_hidden")) || (line.contains("GiB") && line.contains("parameters")),
            "{set}: {line}"
        );
    }
    let wide = train_with("configs/llama-tiny-cpu.toml", &log, &["--set", "model.ffn_hidden=2000000000"]);
    let line = refused_in_one_line(&log, wide);
    assert!(line.contains("GiB") && line.contains("ffn_hidden 2000000000"), "{line}");
}

/// Misleading 1: `micro_batch=4611686018427387905 seq_len=4 total_batch_tokens=4` passed validation (B*T wrapped) and
/// panicked with a backtrace, leaving a marked run directory with an empty log. Non-finite optimizer constants
/// (`grad_clip=nan`, `eps=inf`, `weight_decay=nan`) passed too.
#[test]
fn overflowing_batch_sizes_and_non_finite_constants_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    let overflow = ["--set", "data.micro_batch=4611686018427387905", "--set", "data.seq_len=4"];
    let line =
        refused_in_one_line(&log, train(&log, &[&overflow[..], &["--set", "data.total_batch_tokens=4"]].concat()));
    assert!(line.contains("does not fit in 64 bits"), "{line}");
    for set in ["optim.grad_clip=nan", "optim.eps=inf", "optim.weight_decay=nan"] {
        let line = refused_in_one_line(&log, train(&log, &["--set", set]));
        assert!(line.contains("must be a finite number"), "{set}: {line}");
    }
}

/// Cosmetic 2: on CPU, `[engine] gemm_table` (a missing or garbage file) and `attention = "cudnn"` were silently
/// ignored yet recorded. The table is read and named when it cannot be; settings the run's engine does not use are
/// said.
#[test]
fn engine_settings_a_cpu_run_does_not_use_are_said_and_a_bad_gemm_table_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    let missing = tmp.path().join("h100.toml");
    let set = format!("engine.gemm_table={:?}", missing.to_str().unwrap());
    let line = refused_in_one_line(&log, train(&log, &["--set", &set]));
    assert!(line.contains("gemm_table") && line.contains("h100.toml"), "{line}");
    std::fs::write(&missing, "not a table").unwrap();
    let line = refused_in_one_line(&log, train(&log, &["--set", &set]));
    assert!(line.contains("gemm_table") && line.contains("h100.toml"), "{line}");

    let (ok, out, err) = train(&log, &["--set", "engine.attention=\"cudnn\""]);
    assert!(ok, "{err}");
    assert!(out.contains("applies to the cuda engine only") && out.contains("autograd"), "{out}");
}

/// Issue 28 item 3: `train/checkpoint.rs`, `resume.rs` and `run_dir.rs` imported each other. The names and types they
/// share live in `train/state.rs`; `checkpoint` and `resume` import neither of the others, and nothing imports
/// `run_dir` back.
#[test]
fn checkpoint_resume_and_run_dir_do_not_import_each_other() {
    let source = |f: &str| std::fs::read_to_string(repo().join("src/train").join(f)).unwrap();
    let code = |f: &str| -> String {
        // The code before the unit tests (a test module may reach anywhere), without comments.
        let text = source(f);
        let before_tests = text.split("#[cfg(test)]").next().unwrap();
        before_tests.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    };
    let (checkpoint, resume, run_dir, state) =
        (code("checkpoint.rs"), code("resume.rs"), code("run_dir.rs"), code("state.rs"));
    for (name, text, forbidden) in [
        ("checkpoint.rs", &checkpoint, &["train::resume", "train::run_dir"][..]),
        ("resume.rs", &resume, &["train::checkpoint", "train::run_dir"][..]),
        ("state.rs", &state, &["train::checkpoint", "train::resume", "train::run_dir"][..]),
    ] {
        for f in forbidden {
            assert!(!text.contains(f), "{name} refers to {f}");
        }
    }
    assert!(!run_dir.contains("train::resume"), "run_dir.rs refers to train::resume");
}
