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
