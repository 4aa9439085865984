//! Issue 20, the run directory: a command writes only inside the place it was given, deletes only what it can prove
//! it made, and one writer owns a directory at a time. The run directory's owner marker (`.tokenmill-run`) and lock
//! (`.tokenmill-lock`) decide what `train`, `quickstart` and `report` may replace; each test reproduces one way a
//! user's data was lost (or a run was silently wrong) and checks it no longer is.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokenmill::shards::manifest::Manifest;
use tokenmill::train::checkpoint;
use tokenmill::train::run_dir::MARKER_FILE;
use tokenmill::train::{Resume, TrainConfig, Trainer, TrainerOptions};

#[path = "common/mod.rs"]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (success, stdout, stderr) of the binary run in `cwd`.
fn tokenmill_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).current_dir(cwd).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tokenmill(args: &[&str]) -> (bool, String, String) {
    tokenmill_in(&repo(), args)
}

/// `train` with the tiny config on the shared tiny Shakespeare shards: 4 x 32 tokens a step, a checkpoint every 2
/// steps, no val or samples; `more` adds flags (`--log-dir`, `--max-steps`, `--resume`, ...).
fn train(more: &[&str]) -> (bool, String, String) {
    let config = repo().join("configs/tiny-cpu.toml");
    let data = common::tiny_shakespeare_shards();
    let mut args = vec!["train", "--quiet", "--config", config.to_str().unwrap(), "--data", data.to_str().unwrap()];
    args.extend([
        "--set",
        "data.micro_batch=4",
        "--set",
        "data.seq_len=32",
        "--set",
        "data.total_batch_tokens=128",
        "--set",
        "eval.val_every=0",
        "--set",
        "eval.sample_every=0",
        "--set",
        "checkpoint.every=2",
    ]);
    args.extend_from_slice(more);
    tokenmill(&args)
}

fn ok(r: (bool, String, String)) -> String {
    assert!(r.0, "expected success:\n{}\n{}", r.1, r.2);
    r.1
}

fn refused(r: (bool, String, String)) -> String {
    assert!(!r.0, "expected a refusal:\n{}\n{}", r.1, r.2);
    r.2
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Item 1: `quickstart --log-dir DIR` deleted DIR whatever it held (`--log-dir .` emptied the current folder). Now a
/// directory that is not a tokenmill run is refused before anything is done, and a previous run there (a quickstart's)
/// is replaced only as far as its marker proves tokenmill wrote it: the user's own files stay.
#[test]
fn quickstart_refuses_a_log_dir_it_did_not_make_and_replaces_only_its_own_run() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    std::os::unix::fs::symlink(repo().join("data"), work.join("data")).unwrap();
    std::fs::write(work.join("thesis.tex"), "years of work").unwrap();
    let (pipeline, config) = (repo().join("pipelines/tinyshakespeare.toml"), repo().join("configs/tiny-cpu.toml"));
    let quickstart = |log_dir: &str| {
        tokenmill_in(
            work,
            &[
                "quickstart",
                "--pipeline",
                s(&pipeline),
                "--config",
                s(&config),
                "--max-steps",
                "1",
                "--log-dir",
                log_dir,
            ],
        )
    };
    let err = refused(quickstart("."));
    assert!(err.contains("not a tokenmill run directory") && err.contains("thesis.tex"), "{err}");
    assert_eq!(read(&work.join("thesis.tex")), b"years of work");
    assert!(!work.join("shards").exists(), "refused before the prep step: {err}");

    // A previous quickstart's run is replaced; a file the user put beside it is not touched.
    let out = ok(quickstart("log"));
    assert!(out.contains("quickstart done"), "{out}");
    let log = work.join("log");
    let first_id = std::fs::read_to_string(log.join(MARKER_FILE)).unwrap();
    std::fs::write(log.join("my-notes.md"), "keep me").unwrap();
    ok(quickstart("log"));
    assert_eq!(read(&log.join("my-notes.md")), b"keep me");
    assert_ne!(std::fs::read_to_string(log.join(MARKER_FILE)).unwrap(), first_id, "a new run took the directory");
    assert_eq!(checkpoint::all(&log.join("checkpoints")).len(), 1, "only the new run's checkpoint");
}

/// Item 3: resuming a copy of a run (`cp -r run1 run1r; train --resume run1r/checkpoints/step_000002`) rewrote
/// run1/log.txt and run1/config.toml: the checkpoint's recorded log directory won over where the checkpoint is. The
/// run directory is the one the checkpoint lies in.
#[test]
fn resuming_a_copy_of_a_run_writes_into_the_copy_not_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let (run1, copy) = (tmp.path().join("run1"), tmp.path().join("run1r"));
    ok(train(&["--log-dir", s(&run1), "--max-steps", "4"]));
    let cp = Command::new("cp").arg("-r").arg(&run1).arg(&copy).status().unwrap();
    assert!(cp.success());
    let before: Vec<Vec<u8>> =
        ["log.txt", "metrics.jsonl", "config.toml"].iter().map(|f| read(&run1.join(f))).collect();
    let ckpt = checkpoint::step_dir(&copy.join("checkpoints"), 2);
    let out = ok(train(&["--resume", s(&ckpt), "--max-steps", "4"]));
    assert!(out.contains("run.log_dir") && out.contains("run1r"), "the applied change is said: {out}");
    let after: Vec<Vec<u8>> = ["log.txt", "metrics.jsonl", "config.toml"].iter().map(|f| read(&run1.join(f))).collect();
    assert!(before == after, "the original run's files are untouched");
    let log = String::from_utf8(read(&copy.join("log.txt"))).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains(" train ")).count(), 4, "{log}");
    let cfg = TrainConfig::from_toml_str(&String::from_utf8(read(&copy.join("config.toml"))).unwrap(), "x").unwrap();
    assert_eq!(cfg.run.log_dir, copy);
}

/// Item 4: a fresh `train` into a finished run's `--log-dir` truncated its log and left the old run's step_000004
/// beside the new run's (so `sample --model DIR` took the old one). Now it is refused, saying how to continue or
/// replace it; `--overwrite` removes only what tokenmill wrote there.
#[test]
fn a_fresh_run_into_a_finished_runs_directory_is_refused_and_overwrite_removes_only_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    ok(train(&["--log-dir", s(&log), "--max-steps", "4"]));
    let log_txt = read(&log.join("log.txt"));
    let err = refused(train(&["--log-dir", s(&log), "--max-steps", "2"]));
    assert!(err.contains("--resume") && err.contains("--overwrite") && err.contains("step_000004"), "{err}");
    assert_eq!(read(&log.join("log.txt")), log_txt, "nothing was written");

    std::fs::write(log.join("paper-figures.svg"), "<svg>mine</svg>").unwrap();
    let out = ok(train(&["--log-dir", s(&log), "--max-steps", "2", "--overwrite"]));
    assert!(out.contains("--overwrite: removed") && out.contains("left paper-figures.svg alone"), "{out}");
    assert_eq!(read(&log.join("paper-figures.svg")), b"<svg>mine</svg>");
    let steps: Vec<usize> = checkpoint::all(&log.join("checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [2], "the old run's checkpoints are gone, the new run's is the latest");

    // A directory that is not a run is never taken, not even with --overwrite.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("data.csv"), "1,2").unwrap();
    let err = refused(train(&["--log-dir", s(&mine), "--max-steps", "2", "--overwrite"]));
    assert!(err.contains("not a tokenmill run directory"), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "nothing was added");
}

/// Item 5: two `train`s on one `--log-dir` at once both reported success. The run directory is locked for the
/// training process's lifetime: a second one is refused at once, naming the holder.
#[test]
fn a_second_train_on_a_locked_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    let o = vec![
        format!("data.dir={:?}", s(common::tiny_shakespeare_shards())),
        format!("run.log_dir={:?}", s(&log)),
        "data.micro_batch=4".into(),
        "data.seq_len=32".into(),
        "data.total_batch_tokens=128".into(),
        "eval.val_every=0".into(),
        "eval.sample_every=0".into(),
    ];
    let cfg = TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap();
    let running = Trainer::new(cfg, TrainerOptions::default()).unwrap();
    for extra in [&[][..], &["--resume"][..], &["--overwrite"][..]] {
        let mut args = vec!["--log-dir", s(&log), "--max-steps", "2"];
        args.extend_from_slice(extra);
        let err = refused(train(&args));
        assert!(
            err.contains("another tokenmill process") && err.contains(&format!("pid {}", std::process::id())),
            "{extra:?}: {err}"
        );
    }
    drop(running);
    ok(train(&["--log-dir", s(&log), "--max-steps", "2"]));
}

/// Item 6: `tokenmill report RUN --out RUN/log.txt` replaced the training log with the SVG. A report replaces only a
/// report it wrote (the signature in the SVG), never a run's file or anyone else's.
#[test]
fn report_replaces_only_a_report_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    ok(train(&["--log-dir", s(&log), "--max-steps", "2"]));
    let log_txt = read(&log.join("log.txt"));
    let err = refused(tokenmill(&["report", s(&log), "--out", s(&log.join("log.txt"))]));
    assert!(err.contains("not a report tokenmill wrote"), "{err}");
    assert_eq!(read(&log.join("log.txt")), log_txt);
    ok(tokenmill(&["report", s(&log)]));
    ok(tokenmill(&["report", s(&log)])); // its own report.svg: replaced
    let theirs = tmp.path().join("figure.svg");
    std::fs::write(&theirs, "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>").unwrap();
    refused(tokenmill(&["report", s(&log), "--out", s(&theirs)]));
    assert_eq!(read(&theirs), b"<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>");
}

/// After a branch resume (from step 2 of a 4-step run), `--resume DIR` picked the abandoned step 4. A resume from an
/// earlier step moves the later checkpoints aside (checkpoints/abandoned/...), so the latest is the live branch's.
#[test]
fn a_branch_resume_moves_the_abandoned_checkpoints_aside_so_the_latest_is_the_live_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    let ckpts = log.join("checkpoints");
    ok(train(&["--log-dir", s(&log), "--max-steps", "4"]));
    let out = ok(train(&["--resume", s(&checkpoint::step_dir(&ckpts, 2)), "--max-steps", "3"]));
    assert!(out.contains("starts a new branch"), "{out}");
    assert_eq!(checkpoint::resolve(&log).unwrap(), checkpoint::step_dir(&ckpts, 3), "the live branch's latest");
    let abandoned: Vec<PathBuf> =
        std::fs::read_dir(ckpts.join("abandoned")).unwrap().map(|b| b.unwrap().path().join("step_000004")).collect();
    assert!(abandoned.len() == 1 && abandoned[0].join(checkpoint::STATE_FILE).is_file(), "moved, not deleted");
    let out = ok(train(&["--resume", s(&log), "--max-steps", "5"]));
    assert!(out.contains(&format!("resumed from {} at step 3", checkpoint::step_dir(&ckpts, 3).display())), "{out}");
}

/// `train --resume step_000004 --max-steps 2` printed "done: 4 steps" with exit 0 and trained nothing. It is refused,
/// saying how to continue.
#[test]
fn resuming_past_max_steps_is_refused_not_reported_done() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    ok(train(&["--log-dir", s(&log), "--max-steps", "4"]));
    let log_txt = read(&log.join("log.txt"));
    for max in ["2", "4"] {
        let err = refused(train(&["--resume", s(&log), "--max-steps", max]));
        assert!(err.contains("nothing to train") && err.contains("at step 4") && err.contains("--max-steps"), "{err}");
    }
    assert_eq!(read(&log.join("log.txt")), log_txt);
    let err = refused(train(&["--resume", s(&log), "--max-steps", "6", "--stop-after", "3"]));
    assert!(err.contains("--stop-after 3") && err.contains("already at step 4"), "{err}");
}

/// Resuming with another preset reported the batch size and a missing HellaSwag file before the model-shape refusal.
/// The checkpoint's refusal comes first, every reason in one message.
#[test]
fn resume_with_another_preset_reports_the_model_shape_first() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    ok(train(&["--log-dir", s(&log), "--max-steps", "2"]));
    let data = common::tiny_shakespeare_shards();
    let err = refused(tokenmill(&[
        "train",
        "--resume",
        s(&log),
        "--config",
        s(&repo().join("configs/gpt2-124m.toml")),
        "--data",
        s(data),
    ]));
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("model n_layer 2 -> 12") && first.contains("start a new run"), "{err}");
    assert!(!err.contains("hellaswag") && !err.contains("too few"), "{err}");
}

/// `train` on a dataset whose prep died (`complete: false`) started without a word. It is refused, naming
/// `--allow-incomplete-data`; a dataset that stopped at its `--shards` count is finished as asked and trains.
#[test]
fn training_on_a_dataset_whose_prep_did_not_finish_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in std::fs::read_dir(common::tiny_shakespeare_shards()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, data.join(p.file_name().unwrap())).unwrap();
    }
    let mut m = Manifest::load(&data).unwrap();
    m.complete = false;
    m.save(&data).unwrap();
    let cfg = |log: &str| {
        let o = vec![
            format!("data.dir={:?}", s(&data)),
            format!("run.log_dir={:?}", s(&tmp.path().join(log))),
            "data.micro_batch=4".into(),
            "data.seq_len=32".into(),
            "data.total_batch_tokens=128".into(),
        ];
        TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap()
    };
    let err = Trainer::new(cfg("a"), TrainerOptions::default()).err().expect("refused").to_string();
    assert!(err.contains("complete: false") && err.contains("--allow-incomplete-data"), "{err}");
    assert!(!tmp.path().join("a").exists(), "refused before the run directory was made");
    let opts = TrainerOptions { allow_incomplete_data: true, ..Default::default() };
    Trainer::new(cfg("b"), opts).unwrap();
    m.shards_limit = Some(m.shards.len());
    m.save(&data).unwrap();
    Trainer::new(cfg("c"), TrainerOptions { resume: Resume::No, ..Default::default() }).unwrap();
}

// Issue 26: never touch what tokenmill did not write; never use state it cannot vouch for.

/// The steps of `log.txt`'s train lines, in order.
fn train_steps(log: &Path) -> Vec<usize> {
    String::from_utf8(read(&log.join("log.txt")))
        .unwrap()
        .lines()
        .filter(|l| l.contains(" train "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

fn steps_in(root: &Path) -> Vec<usize> {
    checkpoint::all(root).into_iter().map(|(s, _)| s).collect()
}

/// Data loss 4: `cp r0/.tokenmill-run proj/` made proj "tokenmill's", and a fresh run replaced the user's config.toml.
/// A marker proves ownership only of the directory it was made in; in that directory, only of the files it lists.
#[test]
fn a_copied_run_marker_does_not_make_a_folder_tokenmills() {
    let tmp = tempfile::tempdir().unwrap();
    let (r0, proj) = (tmp.path().join("r0"), tmp.path().join("proj"));
    ok(train(&["--log-dir", s(&r0), "--max-steps", "2"]));
    std::fs::create_dir(&proj).unwrap();
    std::fs::copy(r0.join(MARKER_FILE), proj.join(MARKER_FILE)).unwrap();
    std::fs::write(proj.join("config.toml"), "title=\"x\"\n").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["--log-dir", s(&proj), "--max-steps", "2"];
        args.extend_from_slice(extra);
        let err = refused(train(&args));
        assert!(err.contains("not a tokenmill run directory") && err.contains("made in another directory"), "{err}");
    }
    assert_eq!(read(&proj.join("config.toml")), b"title=\"x\"\n");
    assert_eq!(std::fs::read_dir(&proj).unwrap().count(), 2, "nothing was added");

    // In a directory a run did make, a file of an owned name its marker does not list is not the run's either: here
    // the marker lists nothing (as if the user had put log.txt, metrics.jsonl and config.toml there), so even
    // --overwrite leaves them.
    let mut marker: serde_json::Value = serde_json::from_slice(&read(&r0.join(MARKER_FILE))).unwrap();
    marker["files"] = serde_json::json!([]);
    std::fs::write(r0.join(MARKER_FILE), marker.to_string()).unwrap();
    std::fs::write(r0.join("config.toml"), "mine").unwrap();
    let err = refused(train(&["--log-dir", s(&r0), "--max-steps", "2", "--overwrite"]));
    assert!(err.contains("config.toml") && err.contains("does not list"), "{err}");
    assert_eq!(read(&r0.join("config.toml")), b"mine");
    assert!(r0.join("log.txt").is_file());
}

/// Data loss 5: resume with `checkpoint.dir` moved plus `--overwrite` deleted the checkpoint being resumed, the run's
/// other checkpoints and its log. A checkpoint of the run in --log-dir continues that run (its log is kept up to the
/// step, new checkpoints go to the new checkpoint.dir), and nothing a run resumes from is ever deleted.
#[test]
fn resume_with_checkpoint_dir_moved_and_overwrite_deletes_nothing_it_resumes_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, ck) = (tmp.path().join("run"), tmp.path().join("ck"));
    ok(train(&["--log-dir", s(&run), "--max-steps", "8"]));
    let step8 = checkpoint::step_dir(&run.join("checkpoints"), 8);
    let moved = format!("checkpoint.dir={:?}", s(&ck));
    let out =
        ok(train(&["--resume", s(&step8), "--log-dir", s(&run), "--set", &moved, "--overwrite", "--max-steps", "10"]));
    assert!(out.contains("resumed from"), "{out}");
    assert_eq!(steps_in(&run.join("checkpoints")), [2, 4, 6, 8], "the run's checkpoints are all kept");
    assert_eq!(steps_in(&ck), [10]);
    assert_eq!(train_steps(&run), (0..10).collect::<Vec<_>>(), "the log continues, steps 0..7 kept");
}

/// Silent wrong result 1: with `checkpoint.dir` inside the run directory (`run/ck`, or `run` itself), `--overwrite`
/// left the old run's checkpoints ("not tokenmill's") and a later `--resume` continued the old run (log steps 0 1 8
/// 9). The marker lists the run's checkpoint directories, and `--overwrite` removes the run's checkpoints there.
#[test]
fn overwrite_removes_the_old_runs_checkpoints_wherever_inside_the_run_directory_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for ck in [run.join("ck"), run.clone()] {
        let _ = std::fs::remove_dir_all(&run);
        let set = format!("checkpoint.dir={:?}", s(&ck));
        ok(train(&["--log-dir", s(&run), "--set", &set, "--max-steps", "8"]));
        ok(train(&["--log-dir", s(&run), "--set", &set, "--max-steps", "2", "--overwrite"]));
        assert_eq!(steps_in(&ck), [2], "{}: only the new run's checkpoint", ck.display());
        ok(train(&["--resume", "--log-dir", s(&run), "--set", &set, "--max-steps", "4"]));
        assert_eq!(train_steps(&run), [0, 1, 2, 3], "{}", ck.display());
    }
}

/// Silent wrong result 2: a checkpoint copied from another run (even of another architecture) into RUN/checkpoints
/// was resumed by `--resume RUN`, the log continuing with the other run's steps. Checkpoints record their run's id.
#[test]
fn a_checkpoint_copied_in_from_another_run_is_not_resumed_as_this_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(train(&["--log-dir", s(&a), "--max-steps", "2"]));
    ok(train(&["--log-dir", s(&b), "--max-steps", "4"]));
    let theirs = checkpoint::step_dir(&b.join("checkpoints"), 4);
    let cp = Command::new("cp").arg("-r").arg(&theirs).arg(a.join("checkpoints")).status().unwrap();
    assert!(cp.success());
    let log_txt = read(&a.join("log.txt"));
    let err = refused(train(&["--resume", s(&a), "--max-steps", "6"]));
    assert!(err.contains("written by run") && err.contains("--log-dir NEW_DIR"), "{err}");
    assert_eq!(read(&a.join("log.txt")), log_txt, "nothing written");
}

/// Misleading 2: a resume given the value already in effect (`--set model.ffn_hidden=256` on a model whose MLP is
/// 4C = 256, left unset) was refused as a shape change "unset -> 256". Resolved values are compared.
#[test]
fn resume_with_the_model_value_in_effect_spelled_out_is_not_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run");
    ok(train(&["--log-dir", s(&log), "--max-steps", "2"]));
    ok(train(&[
        "--resume",
        s(&log),
        "--max-steps",
        "4",
        "--set",
        "model.ffn_hidden=256",
        "--set",
        "model.n_kv_head=2",
    ]));
    let err = refused(train(&["--resume", s(&log), "--max-steps", "6", "--set", "model.n_layer=3"]));
    assert!(err.contains("model n_layer 2 -> 3"), "{err}");
}

/// Misleading 4: a fresh run whose `checkpoint.dir` points at another run's checkpoints said the (empty) log directory
/// "holds a run" and advised `--overwrite`. The message names checkpoint.dir, and nothing there is ever removed.
#[test]
fn a_checkpoint_dir_holding_another_runs_checkpoints_is_named_and_never_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2) = (tmp.path().join("r1"), tmp.path().join("r2"));
    ok(train(&["--log-dir", s(&r1), "--max-steps", "4"]));
    let set = format!("checkpoint.dir={:?}", s(&r1.join("checkpoints")));
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["--log-dir", s(&r2), "--set", &set, "--max-steps", "2"];
        args.extend_from_slice(extra);
        let err = refused(train(&args));
        assert!(err.contains("checkpoint.dir holds 2 checkpoint(s)") && err.contains("step_000004"), "{err}");
        assert!(!err.contains("r2: holds"), "{err}");
    }
    assert_eq!(steps_in(&r1.join("checkpoints")), [2, 4]);
    assert!(!r2.exists(), "refused before the log directory was made");
}

/// Misleading 5: a resume started from another working directory said `base/ds: no such directory`, not that it is
/// the checkpoint's recorded relative `data.dir`, nor to pass `--data`.
#[test]
fn a_resume_from_another_directory_says_the_recorded_data_dir_is_relative() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let data = common::tiny_shakespeare_shards();
    std::os::unix::fs::symlink(data, base.join("ds")).unwrap();
    let config = repo().join("configs/tiny-cpu.toml");
    let args = |more: &[&'static str]| {
        let mut a = vec!["train", "--quiet", "--config", s(&config), "--data", "ds", "--log-dir", "run"];
        a.extend(["--set", "data.micro_batch=4", "--set", "data.seq_len=32", "--set", "data.total_batch_tokens=128"]);
        a.extend(["--set", "eval.val_every=0", "--set", "eval.sample_every=0", "--max-steps", "2"]);
        a.extend_from_slice(more);
        a
    };
    ok(tokenmill_in(&base, &args(&[])));
    let (ok_, _, err) = tokenmill_in(tmp.path(), &["train", "--resume", "base/run", "--max-steps", "4"]);
    assert!(!ok_, "{err}");
    assert!(err.contains("data.dir ds") && err.contains("relative") && err.contains("--data"), "{err}");
}

/// Cosmetic 1 and 3: `--log-dir` on a regular file said "not empty"; quickstart printed the log directory twice in
/// the lock message.
#[test]
fn a_log_dir_that_is_a_file_is_named_so_and_quickstart_names_the_directory_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    let err = refused(train(&["--log-dir", s(&file), "--max-steps", "2"]));
    assert!(err.contains("a file, not a directory") && !err.contains("not empty"), "{err}");
    assert_eq!(read(&file), b"mine");

    let log = tmp.path().join("qs");
    let _held = tokenmill::util::DirLock::exclusive(&log).unwrap();
    let err = refused(tokenmill(&["quickstart", "--log-dir", s(&log), "--max-steps", "1"]));
    assert!(err.contains("another tokenmill process"), "{err}");
    assert_eq!(err.matches(s(&log)).count(), 1, "{err}");
}

/// Misleading 8: `report` printed `hellaswag (max): 0.4000 ... (GPT-2 124M: 0.2955)` for a 10-example run without
/// saying n.
#[test]
fn report_says_how_many_examples_a_hellaswag_score_is_over() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("log.txt"), "0 train 10.9\n5 hella 0.4000\n").unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"kind\":\"hella\",\"step\":5,\"acc\":0.3,\"acc_norm\":0.4,\"n\":10}\n",
    )
    .unwrap();
    let out = ok(tokenmill(&["report", s(&run)]));
    let line = out.lines().find(|l| l.starts_with("hellaswag")).unwrap();
    assert!(line.contains("n=10 of 10042") && line.contains("not comparable"), "{out}");
}

/// Hang: `report` spun forever when a loss series had no finite value (`0 train nan`; also inf, -inf, +-1e308). A
/// value no axis can hold is left out (and said); a log with nothing finite is refused. (A watchdog turns a hang
/// back into a failure.)
#[test]
fn report_of_a_log_without_finite_values_ends() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (log, finite)) in
        [("0 train nan\n", false), ("0 train inf\n1 train -inf\n", false), ("0 train 1e308\n1 train -1e308\n", true)]
            .into_iter()
            .enumerate()
    {
        let run = tmp.path().join(format!("run{i}"));
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("log.txt"), log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["report", s(&run)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(120) {
                child.kill().unwrap();
                panic!("report on {log:?} did not end");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), finite, "{log:?}: {stderr}");
        if !finite {
            assert!(stderr.contains("no finite value to plot"), "{stderr}");
        }
    }
}

/// The lock's rule for every file a run writes (data loss 2's class): a link planted at `log.txt` is never written
/// through, by a fresh run or a resume.
#[test]
fn a_link_planted_at_a_runs_log_is_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "0 train 1.0\nirreplaceable\n").unwrap();
    ok(train(&["--log-dir", s(&run), "--max-steps", "2"]));
    std::fs::remove_file(run.join("log.txt")).unwrap();
    std::os::unix::fs::symlink(&precious, run.join("log.txt")).unwrap();
    let _ = train(&["--log-dir", s(&run), "--max-steps", "2", "--overwrite"]);
    assert_eq!(read(&precious), b"0 train 1.0\nirreplaceable\n");
    if run.join("log.txt").is_symlink() {
        let _ = train(&["--resume", s(&run), "--max-steps", "4"]);
    }
    assert_eq!(read(&precious), b"0 train 1.0\nirreplaceable\n");
}
