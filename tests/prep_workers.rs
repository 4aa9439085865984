//! `prep --worker I/N` + `prep merge` on the real FineWeb parquet files of tests/fixtures: workers run as concurrent
//! processes, and the merge must give the shards (bytes, names) and manifest of a one-box `prep` of the same inputs;
//! with `--shards K`, a u32 tokenizer, a SIGKILLed worker, a missing worker, a split merge, and the worker chosen by
//! Slurm's or Kubernetes' environment. Inputs are kept small (4 files, 659K tokens, 50K-token shards) so this stays
//! cheap; 4 files allow at most 4 workers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokenmill::pipelines::fineweb::{self, PrepOptions};
use tokenmill::pipelines::sources::expand_inputs;
use tokenmill::shards::Manifest;
use tokenmill::tokenizer::TokenizerKind;

#[path = "common/mod.rs"]
mod common;
use common::shard_files as shards;

const SHARD: u64 = 50_000;

/// The vendored parquet files (workers and the one-box run read the same paths, so their manifests' input lists
/// compare equal).
fn input_dir() -> PathBuf {
    common::fineweb_fixture_dir()
}

fn one_box(out: &Path, tokenizer: TokenizerKind, max_shards: Option<usize>) -> Manifest {
    fineweb::prep(&one_box_options(out, tokenizer, max_shards)).unwrap().manifest
}

fn one_box_options(out: &Path, tokenizer: TokenizerKind, max_shards: Option<usize>) -> PrepOptions {
    PrepOptions {
        input: fineweb::Input::Local(expand_inputs(&[input_dir()]).unwrap()),
        text_column: "text".into(),
        out: out.to_path_buf(),
        dataset: "edufineweb".into(),
        tokenizer: tokenizer.into(),
        shard_size: SHARD,
        val_shards: 1,
        max_shards,
        threads: 2,
        progress: false,
        overwrite: false,
        worker: None,
    }
}

/// The one-box GPT-2 dataset, once per test binary.
fn reference() -> &'static (tempfile::TempDir, Manifest) {
    static REF: OnceLock<(tempfile::TempDir, Manifest)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = one_box(dir.path(), TokenizerKind::Gpt2, None);
        assert!(m.complete && m.shards.len() > 8, "enough shards to cut across workers: {}", m.shards.len());
        (dir, m)
    })
}

fn tokenmill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokenmill"));
    // The scheduler variables only where a test sets them.
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "JOB_COMPLETION_INDEX"] {
        c.env_remove(v);
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// `prep fineweb` over the input with `shard` tokens per shard, as the worker `extra` and `env` pick; not waited for.
fn spawn_worker(out: &Path, shard: u64, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = tokenmill();
    c.args(["prep", "fineweb", "--no-progress", "--threads", "1", "--shard-size", &shard.to_string(), "--input"])
        .arg(input_dir())
        .arg("--out")
        .arg(out)
        .args(extra)
        .envs(env.iter().copied());
    c.spawn().unwrap()
}

fn wait_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// All `n` workers at once, as separate processes.
fn run_workers(out: &Path, n: usize, extra: &[&str]) {
    let children: Vec<Child> = (0..n)
        .map(|i| {
            let w = format!("{i}/{n}");
            let mut args = vec!["--worker", w.as_str()];
            args.extend_from_slice(extra);
            spawn_worker(out, SHARD, &args, &[])
        })
        .collect();
    children.into_iter().for_each(wait_ok);
}

/// `prep merge OUT ARGS...`: (success, stderr).
fn merge(out: &Path, args: &[&str]) -> (bool, String) {
    let o = tokenmill().args(["prep", "merge", "--no-progress"]).arg(out).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The merged directory is the one-box dataset: same shard files, and the same manifest but for the provenance.
fn assert_same_dataset(merged: &Path, one: &Path) {
    assert_eq!(shards(merged), shards(one), "shard files differ");
    let mut m = Manifest::load(merged).unwrap();
    assert!(m.merged_from.is_some(), "the merge records its workers");
    m.merged_from = None;
    assert_eq!(m, Manifest::load(one).unwrap());
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn one_three_and_four_workers_merge_to_the_one_box_dataset() {
    let (one, _) = reference();
    for n in [1usize, 3, 4] {
        let out = tempfile::tempdir().unwrap();
        run_workers(out.path(), n, &[]);
        let (ok, err) = merge(out.path(), &[]);
        assert!(ok, "{n} workers: {err}");
        assert_same_dataset(out.path(), one.path());
        // Idempotent: a second merge keeps every shard as it is.
        let before = shards(out.path());
        assert!(merge(out.path(), &[]).0);
        assert_eq!(shards(out.path()), before);
    }
}

#[test]
fn slurm_and_kubernetes_variables_choose_the_worker_and_a_split_merge_joins_them() {
    let (one, _) = reference();
    let out = tempfile::tempdir().unwrap();
    // Worker 1 of 2 from a one-based Slurm array (task 2 of tasks 1-2); worker 0 from a Kubernetes indexed job.
    let slurm = [("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")];
    let slurm = spawn_worker(out.path(), SHARD, &[], &slurm);
    let k8s = spawn_worker(out.path(), SHARD, &["--workers", "2"], &[("JOB_COMPLETION_INDEX", "0")]);
    wait_ok(k8s);
    wait_ok(slurm);
    let names: Vec<String> = entries(&out.path().join("workers"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["00000-of-00002", "00001-of-00002"]);
    // An explicit --worker wins over the environment.
    let flag = spawn_worker(
        &out.path().join("flag"),
        SHARD,
        &["--worker", "0/3", "--shards", "1"],
        &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")],
    );
    wait_ok(flag);
    assert!(out.path().join("flag/workers/00000-of-00003").is_dir());
    // The merge split over two processes at once: each writes every other shard, the last one the manifest.
    let halves: Vec<Child> = (0..2)
        .map(|i| {
            tokenmill()
                .args(["prep", "merge", "--no-progress", "--worker", &format!("{i}/2")])
                .arg(out.path())
                .spawn()
                .unwrap()
        })
        .collect();
    halves.into_iter().for_each(wait_ok);
    if !Manifest::path_in(out.path()).exists() {
        // Both finished before seeing the other's record: any later merge finds every shard in place.
        assert!(merge(out.path(), &[]).0);
    }
    assert_same_dataset(out.path(), one.path());
}

#[test]
fn shards_k_across_workers_then_the_rest() {
    let one_k = tempfile::tempdir().unwrap();
    let m = one_box(one_k.path(), TokenizerKind::Gpt2, Some(3));
    assert!(!m.complete && m.resume.tokens_into_document > 0, "the 3rd shard ends inside a document");
    let out = tempfile::tempdir().unwrap();
    // Worker 0 alone (one file, 174K tokens) holds more than 3 shards' tokens: workers 1 and 2, started after it, do
    // nothing.
    wait_ok(spawn_worker(out.path(), SHARD, &["--worker", "0/3", "--shards", "3"], &[]));
    for i in 1..3 {
        let o = tokenmill()
            .args(["prep", "fineweb", "--no-progress", "--shard-size", &SHARD.to_string(), "--shards", "3", "--input"])
            .arg(input_dir())
            .arg("--out")
            .arg(out.path())
            .args(["--worker", &format!("{i}/3")])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to do"));
        assert!(!out.path().join(format!("workers/0000{i}-of-00003")).exists());
    }
    let (ok, err) = merge(out.path(), &[]);
    assert!(ok, "{err}");
    // The inputs of workers that never ran are unknown to the merge: its manifest has no definition until they have.
    assert_eq!(shards(out.path()), shards(one_k.path()));
    let mut merged = Manifest::load(out.path()).unwrap();
    assert!(merged.definition.is_none());
    (merged.definition, merged.merged_from) = (m.definition.clone(), None);
    assert_eq!(merged, m);
    // Without the limit the workers go on, and the merge continues to the one-box dataset.
    run_workers(out.path(), 3, &[]);
    assert!(merge(out.path(), &[]).0);
    assert_same_dataset(out.path(), reference().0.path());
}

#[test]
fn a_u32_tokenizer_merges_to_the_one_box_dataset() {
    let one = tempfile::tempdir().unwrap();
    one_box(one.path(), TokenizerKind::Cl100kBase, None);
    let out = tempfile::tempdir().unwrap();
    run_workers(out.path(), 2, &["--tokenizer", "cl100k_base"]);
    let (ok, err) = merge(out.path(), &[]);
    assert!(ok, "{err}");
    assert_same_dataset(out.path(), one.path());
    assert_eq!(Manifest::load(out.path()).unwrap().token_width, tokenmill::shards::TokenWidth::U32);
}

#[test]
fn missing_or_killed_workers_are_named_nothing_is_written_and_a_rerun_resumes() {
    // Small shards, so that worker 2 is killed mid-way with parts finished and more to come.
    const SMALL: u64 = 20_000;
    let one = tempfile::tempdir().unwrap();
    let mut o = one_box_options(one.path(), TokenizerKind::Gpt2, None);
    o.shard_size = SMALL;
    fineweb::prep(&o).unwrap();
    let out = tempfile::tempdir().unwrap();
    // Worker 1 of 3 never starts; worker 2 is killed with SIGKILL (no cleanup runs) once it has 3 parts.
    wait_ok(spawn_worker(out.path(), SMALL, &["--worker", "0/3"], &[]));
    let mut killed = spawn_worker(out.path(), SMALL, &["--worker", "2/3"], &[]);
    let dir2 = out.path().join("workers/00002-of-00003");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut parts = 0;
    while Instant::now() < deadline && parts < 3 {
        parts = Manifest::load(&dir2).map(|m| m.shards.len()).unwrap_or(0);
        assert!(killed.try_wait().unwrap().is_none(), "worker 2 finished before it could be killed");
        std::thread::sleep(Duration::from_millis(1));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(parts >= 3);
    let before = entries(out.path());
    let (ok, err) = merge(out.path(), &[]);
    assert!(!ok);
    assert!(err.contains("worker 1/3: not started"), "{err}");
    assert!(err.contains("worker 2/3: unfinished"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(entries(out.path()), before, "the failed merge wrote nothing");
    // Worker 1 runs, worker 2 reruns and resumes; the merge is the one-box dataset.
    wait_ok(spawn_worker(out.path(), SMALL, &["--worker", "1/3"], &[]));
    wait_ok(spawn_worker(out.path(), SMALL, &["--worker", "2/3"], &[]));
    let (ok, err) = merge(out.path(), &[]);
    assert!(ok, "{err}");
    assert_same_dataset(out.path(), one.path());
}

/// Issue 20: workers given different `--input` lists (each reads its range of its own list) were merged silently, the
/// merged corpus skipping files. Each worker records its list's digest; the merge names the one that differs.
#[test]
fn workers_given_different_input_lists_are_not_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, names) in [(&a, ["p", "q", "r", "s"]), (&b, ["p", "q", "x", "y"])] {
        std::fs::create_dir(dir).unwrap();
        for n in names {
            std::fs::write(dir.join(format!("{n}.txt")), format!("document {n}, ").repeat(40)).unwrap();
        }
    }
    let out = tmp.path().join("out");
    for (w, input) in [("0/2", &a), ("1/2", &b)] {
        let o = tokenmill()
            .args(["prep", "corpus", "--no-progress", "--threads", "1", "--shard-size", "1024", "--name", "c"])
            .args(["--worker", w, "--input"])
            .arg(input)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (ok, err) = merge(&out, &[]);
    assert!(!ok && err.contains("another --input list") && err.contains("1/2"), "{err}");
    assert!(!Manifest::path_in(&out).exists(), "nothing merged");
}

/// Issue 20: `--worker 0/99999999999` was accepted (and the merge aborted allocating 36 TB); `0/100000` printed a
/// 7 MB error. Worker counts are bounded (at most one worker per input file), and a merge missing many workers says so
/// in a few lines.
#[test]
fn worker_counts_are_bounded_and_a_merge_missing_thousands_says_so_briefly() {
    let out = tempfile::tempdir().unwrap();
    for (w, says) in [
        ("0/99999999999", "at most 65536 workers"),
        ("0/100000", "at most 65536 workers"),
        ("0/5", "at most 4 workers"),
    ] {
        let o = tokenmill()
            .args(["prep", "fineweb", "--no-progress", "--worker", w, "--input"])
            .arg(input_dir())
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(says) && stderr.len() < 500, "{w}: {stderr}");
    }
    assert!(entries(out.path()).is_empty(), "nothing written");
    std::fs::create_dir_all(out.path().join("workers/00000-of-65536")).unwrap();
    let (ok, err) = merge(out.path(), &[]);
    assert!(
        !ok && err.contains("... and 65526 more") && err.len() < 3000,
        "{} bytes: {}",
        err.len(),
        &err[..err.len().min(3000)]
    );
}
