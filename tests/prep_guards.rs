//! Issue 20, `prep`: what is refused up front (never half-done) and what no longer misleads. A prep writes only inside
//! its `--out`, never reads `--out` as input, has one writer per `--out`, and says one rule for a document without
//! text.

use std::path::Path;
use std::process::Command;

use tokenmill::pipelines::fineweb::{self, Input, PrepOptions};
use tokenmill::pipelines::sources::{SourceFile, SourceKind};
use tokenmill::shards::manifest::DatasetDefinition;
use tokenmill::shards::writer::{ShardWriter, WriterConfig};
use tokenmill::shards::Manifest;
use tokenmill::tokenizer::TokenizerKind;

/// (success, stdout, stderr) of `tokenmill ARGS`.
fn tokenmill(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every entry under `dir`, recursively, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

const POEM: &str = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n";

#[test]
fn out_holding_the_input_a_path_like_name_and_zero_shards_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("corpus");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("poem.txt"), POEM).unwrap();

    // --out equal to --input: a second run would have read its own manifest.json as a corpus.
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&d), "--out", s(&d)]);
    assert!(!ok && err.contains("is inside --out") && err.contains("another --out"), "{err}");
    let (ok, _, err) =
        tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&d.join("poem.txt")), "--out", s(&d)]);
    assert!(!ok && err.contains("is inside --out"), "{err}");
    assert_eq!(tree(&d), ["poem.txt"]);

    // --name becomes shard file names: `../x` wrote outside --out, `a/b` failed cryptically, `` was accepted.
    let out = tmp.path().join("out");
    for name in ["../x", "a/b", ""] {
        let (ok, _, err) =
            tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&d), "--out", s(&out), "--name", name]);
        assert!(!ok && err.contains(&format!("dataset name `{name}`")) && err.contains("plain file name"), "{err}");
        assert!(err.trim_end().lines().last().is_some_and(|l| l.starts_with("error: dataset name")), "one line: {err}");
    }
    assert_eq!(tree(tmp.path()), ["corpus", "corpus/poem.txt"], "nothing written anywhere");

    // --shards 0 exited 0 doing nothing.
    let (ok, _, err) =
        tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&d), "--out", s(&out), "--shards", "0"]);
    assert!(!ok && err.contains("--shards 0 writes nothing"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_second_prep_on_an_out_being_written_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("poem.txt");
    std::fs::write(&input, POEM).unwrap();
    let out = tmp.path().join("out");
    // A prep in flight: its writer holds --out.
    let (writer, _, _) = ShardWriter::open(WriterConfig {
        dir: out.clone(),
        dataset: "poem".into(),
        tokenizer: TokenizerKind::Gpt2.into(),
        shard_size: 1024,
        val_shards: 1,
        max_shards: None,
        definition: DatasetDefinition { inputs: Vec::new(), text_column: "text".into(), val_shards: 1 },
        overwrite: false,
    })
    .unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)];
        args.extend_from_slice(extra);
        let (ok, _, err) = tokenmill(&args);
        assert!(!ok && err.contains("another tokenmill process") && err.contains("pid"), "{extra:?}: {err}");
    }
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest, "the running prep's manifest is intact");
    drop(writer);
    let (ok, _, err) =
        tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out), "--overwrite"]);
    assert!(ok, "{err}");
}

/// A null `text` became a lone-EOT document while `{"text": 5}` was refused. One rule: a document needs a string;
/// null is refused like any other non-string, naming the line (parquet: the row).
#[test]
fn a_null_text_is_refused_like_any_other_non_string_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, line) in [("null.jsonl", r#"{"text": null}"#), ("number.jsonl", r#"{"text": 5}"#)] {
        let path = tmp.path().join(name);
        std::fs::write(&path, format!("{{\"text\": \"a first document\"}}\n{line}\n")).unwrap();
        let opts = PrepOptions {
            input: Input::Local(vec![SourceFile { path: path.clone(), kind: SourceKind::Jsonl }]),
            text_column: "text".into(),
            out: tmp.path().join(format!("out-{name}")),
            dataset: "t".into(),
            tokenizer: TokenizerKind::Gpt2.into(),
            shard_size: 1024,
            val_shards: 0,
            max_shards: None,
            threads: 1,
            progress: false,
            overwrite: false,
            worker: None,
        };
        let err = fineweb::prep(&opts).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}:2")) || err.contains("line 2"), "{name}: {err}");
        assert!(err.contains("not a string") || err.contains("is null"), "{name}: {err}");
        assert!(Manifest::load(&opts.out).unwrap().shards.is_empty(), "{name}: no shard with a lone EOT");
    }
}

/// A self-referencing symlink said "input does not exist"; it says why it cannot be opened.
#[test]
fn an_input_that_cannot_be_followed_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("loop.txt");
    std::os::unix::fs::symlink(&link, &link).unwrap();
    let (ok, _, err) =
        tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&link), "--out", s(&tmp.path().join("o"))]);
    assert!(!ok && err.contains("cannot be opened") && !err.contains("does not exist"), "{err}");
    let (ok, _, err) = tokenmill(&[
        "prep",
        "corpus",
        "--no-progress",
        "--input",
        s(&tmp.path().join("nope.txt")),
        "--out",
        s(&tmp.path().join("o")),
    ]);
    assert!(!ok && err.contains("does not exist"), "a missing input still says so: {err}");
}

/// A 3,000-byte corpus through `prep corpus` gave "train 0 tokens" and the advice to run `prep corpus`, the command
/// just run; `train` then said the same. Both now say the corpus is too small and what works.
#[test]
fn a_corpus_too_small_to_split_gets_advice_that_fits_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("small.txt");
    std::fs::write(&input, POEM.repeat(3000 / POEM.len())).unwrap();
    let out = tmp.path().join("small");
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    let warning = err.lines().find(|l| l.starts_with("warning:")).unwrap_or_else(|| panic!("{err}"));
    assert!(
        warning.contains("too small") && warning.contains("--val-shards 0") && !warning.contains("prep corpus"),
        "{warning}"
    );
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml");
    let (ok, _, err) =
        tokenmill(&["train", "--config", s(&config), "--data", s(&out), "--log-dir", s(&tmp.path().join("log"))]);
    assert!(
        !ok && err.contains("too small") && err.contains("--val-shards 0") && !err.contains("prep corpus"),
        "{err}"
    );
}

// Issue 26: never touch what tokenmill did not write.

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (success, stdout, stderr) of `tokenmill ARGS` run in `cwd`.
fn tokenmill_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).current_dir(cwd).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Data loss 1: prep deleted any file whose name held `.tmp.` in `--out`, and `--out` could be any non-empty folder,
/// even `/` (`--out /nonexistent/..`). A shard directory is tokenmill's only when it made it; only its own temps are
/// removed there. The same through `quickstart --data`.
#[test]
fn prep_never_writes_into_or_cleans_a_folder_it_did_not_make() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("poem.txt");
    std::fs::write(&input, POEM).unwrap();
    let me = tmp.path().join("me");
    std::fs::create_dir(&me).unwrap();
    std::fs::write(me.join("thesis.tmp.docx"), "years of work").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&me)];
        args.extend_from_slice(extra);
        let (ok, _, err) = tokenmill(&args);
        assert!(!ok && err.contains("not a tokenmill shard directory") && err.contains("thesis.tmp.docx"), "{err}");
    }
    assert_eq!(tree(&me), ["thesis.tmp.docx"], "nothing removed, nothing added");
    assert_eq!(std::fs::read(me.join("thesis.tmp.docx")).unwrap(), b"years of work");

    // `/nonexistent/..` is `/`: refused before anything is created.
    let climbing = tmp.path().join("nonexistent/..");
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&climbing)]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    assert_eq!(tree(tmp.path()), ["me", "me/thesis.tmp.docx", "poem.txt"]);

    // In a directory prep made, its own temps of a dead process are removed; anything else with `.tmp.` stays.
    let out = tmp.path().join("out");
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    let dead = {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let (ours, theirs) = (format!("manifest.json.tmp.{dead}"), format!("notes.tmp.{dead}"));
    std::fs::write(out.join(&ours), "x").unwrap();
    std::fs::write(out.join(&theirs), "mine").unwrap();
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    assert!(!out.join(&ours).exists() && out.join(&theirs).is_file());

    // quickstart --data goes through the same prep.
    std::os::unix::fs::symlink(repo().join("data"), tmp.path().join("data")).unwrap();
    let (pipeline, config) = (repo().join("pipelines/tinyshakespeare.toml"), repo().join("configs/tiny-cpu.toml"));
    let (ok, _, err) = tokenmill_in(
        tmp.path(),
        &["quickstart", "--pipeline", s(&pipeline), "--config", s(&config), "--data", s(&me), "--log-dir", "log"],
    );
    assert!(!ok && err.contains("not a tokenmill shard directory"), "{err}");
    assert_eq!(tree(&me), ["thesis.tmp.docx"]);
}

/// Data loss 2: the lock file was followed through a symbolic link and its target truncated (`ln -s ../precious.txt
/// out/.tokenmill-lock`: precious.txt then held a pid). Same for `train --log-dir`. A lock never follows a link, and
/// never truncates a file it did not create.
#[test]
fn a_lock_file_that_is_a_link_is_neither_followed_nor_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("poem.txt");
    std::fs::write(&input, POEM).unwrap();
    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "irreplaceable").unwrap();
    let out = tmp.path().join("out");
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(ok, "{err}");
    let lock = out.join(".tokenmill-lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink("../precious.txt", &lock).unwrap();
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(!ok && err.contains("symbolic link") && err.contains("not a lock file tokenmill made"), "{err}");
    // A hard link to it is refused the same way.
    std::fs::remove_file(&lock).unwrap();
    std::fs::hard_link(&precious, &lock).unwrap();
    let (ok, _, err) = tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&input), "--out", s(&out)]);
    assert!(!ok && err.contains("hard link"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"irreplaceable");

    let log = tmp.path().join("log");
    std::fs::create_dir(&log).unwrap();
    std::os::unix::fs::symlink("../precious.txt", log.join(".tokenmill-lock")).unwrap();
    let data = tmp.path().join("ds");
    let (ok, _, err) = tokenmill(&[
        "prep",
        "corpus",
        "--no-progress",
        "--input",
        s(&repo().join("data/tinyshakespeare.txt")),
        "--out",
        s(&data),
    ]);
    assert!(ok, "{err}");
    let config = repo().join("configs/tiny-cpu.toml");
    let (ok, _, err) = tokenmill(&[
        "train",
        "--quiet",
        "--config",
        s(&config),
        "--data",
        s(&data),
        "--log-dir",
        s(&log),
        "--max-steps",
        "1",
    ]);
    assert!(!ok && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"irreplaceable");
}

/// Hang: `prep corpus --input z.txt` with z.txt a link to /dev/zero read forever. Inputs must be regular files.
#[test]
fn an_input_that_is_not_a_regular_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("z.txt");
    std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
    let (ok, _, err) =
        tokenmill(&["prep", "corpus", "--no-progress", "--input", s(&z), "--out", s(&tmp.path().join("o"))]);
    assert!(!ok && err.contains("not a regular file") && err.contains("character device"), "{err}");
    assert!(!tmp.path().join("o").exists());
}

/// Resources: `--shard-size 1` wrote one file per token and rewrote the whole manifest after each (quadratic). A shard
/// must hold a training row.
#[test]
fn a_shard_size_that_cannot_hold_a_training_row_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("poem.txt");
    std::fs::write(&input, POEM).unwrap();
    let out = tmp.path().join("o");
    for size in ["1", "1023"] {
        let (ok, _, err) = tokenmill(&[
            "prep",
            "corpus",
            "--no-progress",
            "--input",
            s(&input),
            "--out",
            s(&out),
            "--shard-size",
            size,
        ]);
        assert!(!ok && err.contains(&format!("--shard-size {size}")) && err.contains("1024"), "{err}");
    }
    assert!(!out.exists() || tree(&out).iter().all(|n| !n.ends_with(".bin")), "no shard written");
}

/// Misleading: `--val-shards 1000000000` made every shard val, and prep and train said to lower `--shard-size`. The
/// cause named is `--val-shards`.
#[test]
fn an_empty_train_split_caused_by_val_shards_names_val_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    let text = repo().join("data/tinyshakespeare.txt");
    let (ok, _, err) = tokenmill(&[
        "prep",
        "corpus",
        "--no-progress",
        "--input",
        s(&text),
        "--out",
        s(&out),
        "--val-shards",
        "1000000000",
    ]);
    assert!(ok, "{err}");
    let warning = err.lines().find(|l| l.starts_with("warning:")).unwrap_or_else(|| panic!("{err}"));
    assert!(warning.contains("--val-shards 1000000000") && !warning.contains("--shard-size"), "{warning}");
    let config = repo().join("configs/tiny-cpu.toml");
    let (ok, _, err) =
        tokenmill(&["train", "--config", s(&config), "--data", s(&out), "--log-dir", s(&tmp.path().join("log"))]);
    assert!(!ok && err.contains("--val-shards 1000000000") && !err.contains("--shard-size"), "{err}");
}
