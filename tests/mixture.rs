//! Weighted mixtures of shard directories (`train --data a:0.7,b:0.3`, `[data] mix`): the interleave takes each
//! source's own batch stream in its share (within 1% over 1,000 steps), alike on every rank; a stopped and resumed run
//! continues it bit for bit; the log says what each source gave and each source's val loss; and the config refuses a
//! weight <= 0 and sources of different tokenizers, naming them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokenmill::pipelines::fineweb;
use tokenmill::shards::loader::{DataLoader, LoaderConfig};
use tokenmill::shards::mixture::MixtureLoader;
use tokenmill::shards::Split;
use tokenmill::tokenizer::{TokenizerKind, TokenizerSource};
use tokenmill::train::log::Event;
use tokenmill::train::{checkpoint, Resume, TrainConfig, Trainer, TrainerOptions};

#[path = "common/mod.rs"]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `inputs` through `prep` with `tokenizer`, 40K-token shards (1 val).
fn prep(out: &Path, inputs: &[PathBuf], tokenizer: TokenizerSource) {
    let input = fineweb::local_input(inputs).unwrap();
    fineweb::prep(&common::prep_options(input, out, "d", tokenizer.load().unwrap(), 40_000)).unwrap();
}

/// Two GPT-2 shard directories, once per test binary: tiny Shakespeare (`a`) and two vendored FineWeb files (`b`).
fn sources() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static DIRS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        prep(&a, &[repo().join("data/tinyshakespeare.txt")], TokenizerKind::Gpt2.into());
        let fw = common::fineweb_fixture_dir();
        prep(&b, &[fw.join("batch_000001.parquet"), fw.join("batch_000010.parquet")], TokenizerKind::Gpt2.into());
        (root, a, b)
    })
}

fn cfg(b: usize, t: usize, rank: usize, world: usize) -> LoaderConfig {
    LoaderConfig { batch_size: b, seq_len: t, rank, world, shuffle_seed: Some(3) }
}

#[test]
fn a_mixture_takes_each_sources_stream_in_its_share_on_every_rank_and_resumes_exactly() {
    let (_, a, b) = sources();
    let mix = [(a.clone(), 0.7), (b.clone(), 0.3)];
    // 1,000 optimizer steps of 4 micro-batches of 2 x 16 tokens on 2 ranks.
    let (steps, accum) = (1000, 4);
    let mut ranks: Vec<MixtureLoader> =
        (0..2).map(|r| MixtureLoader::open(&mix, Split::Train, cfg(2, 16, r, 2), true).unwrap()).collect();
    // Each source's own loader, per rank: the mixture's batches from a source are that source's stream, in order.
    let mut own: Vec<Vec<DataLoader>> = (0..2)
        .map(|r| mix.iter().map(|(d, _)| DataLoader::open(d, Split::Train, cfg(2, 16, r, 2)).unwrap()).collect())
        .collect();
    let mut saved = None;
    let mut after_save = Vec::new();
    for k in 0..steps * accum {
        if k == 1500 {
            saved = Some(ranks[1].state());
        }
        let source = ranks[0].next_source();
        assert_eq!(ranks[1].next_source(), source, "micro-batch {k}: the ranks chose different sources");
        for (r, loader) in ranks.iter_mut().enumerate() {
            let batch = loader.next_batch().unwrap();
            assert_eq!(batch, own[r][source].next_batch().unwrap(), "micro-batch {k}, rank {r}");
            if r == 1 && (1500..2000).contains(&k) {
                after_save.push(batch);
            }
        }
    }
    let tokens = ranks[0].tokens_per_source();
    let total: u64 = tokens.iter().map(|(_, n)| n).sum();
    assert_eq!(total, (steps * accum * 2 * 16 * 2) as u64, "every micro-batch of both ranks counted");
    for ((dir, n), (_, w)) in tokens.iter().zip(&mix) {
        let share = *n as f64 / total as f64;
        assert!((share - w).abs() < 0.01 * w, "{dir}: {share:.4} of the tokens, weight {w}");
    }
    // A loader restored from the state taken at micro-batch 1500 continues with the same batches.
    let mut restored = MixtureLoader::open(&mix, Split::Train, cfg(2, 16, 1, 2), true).unwrap();
    restored.restore(saved.as_ref().unwrap()).unwrap();
    for (i, want) in after_save.iter().enumerate() {
        assert_eq!(&restored.next_batch().unwrap(), want, "micro-batch {} after the restore", 1500 + i);
    }
    // Another mixture (weights, sources) is refused.
    let other = [(a.clone(), 0.5), (b.clone(), 0.5)];
    let mut different = MixtureLoader::open(&other, Split::Train, cfg(2, 16, 1, 2), true).unwrap();
    let err = different.restore(saved.as_ref().unwrap()).unwrap_err().to_string();
    assert!(err.contains("0.7") && err.contains("0.5"), "{err}");
}

fn tiny(log: &Path, mix: &str, extra: &[&str]) -> TrainConfig {
    let mut o = vec![
        format!("data.mix={mix}"),
        format!("run.log_dir={:?}", log.display().to_string()),
        "data.micro_batch=2".into(),
        "data.seq_len=32".into(),
        "data.total_batch_tokens=128".into(),
        "data.shuffle_seed=5".into(),
        "optim.max_steps=8".into(),
        "optim.warmup_steps=2".into(),
        "eval.val_every=4".into(),
        "eval.val_steps=2".into(),
        "eval.sample_every=0".into(),
        "checkpoint.every=0".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap()
}

fn mix_value(a: &Path, b: &Path) -> String {
    format!("{{ {:?} = 0.7, {:?} = 0.3 }}", a.display().to_string(), b.display().to_string())
}

#[test]
fn a_stopped_mixture_run_resumes_bit_for_bit_and_logs_each_source() {
    let (_, a, b) = sources();
    let dir = tempfile::tempdir().unwrap();
    let mix = mix_value(a, b);
    let opts = |resume| TrainerOptions { resume, ..Default::default() };
    let mut straight = Trainer::new(tiny(&dir.path().join("straight"), &mix, &[]), opts(Resume::No)).unwrap();
    straight.run(None).unwrap();
    let split = dir.path().join("split");
    let mut first = Trainer::new(tiny(&split, &mix, &[]), opts(Resume::No)).unwrap();
    first.run(Some(3)).unwrap();
    let mut history = first.history().to_vec();
    drop(first);
    let mut second = Trainer::new(tiny(&split, &mix, &[]), opts(Resume::Latest)).unwrap();
    assert_eq!(second.step(), 3);
    second.run(None).unwrap();
    history.extend_from_slice(second.history());
    assert_eq!(common::without_timings(&history), common::without_timings(straight.history()));
    for f in [checkpoint::MODEL_FILE, checkpoint::OPTIMIZER_FILE] {
        let at = |run: &str| std::fs::read(checkpoint::step_dir(&dir.path().join(run).join("checkpoints"), 8).join(f));
        assert!(at("straight").unwrap() == at("split").unwrap(), "{f} differs between the straight and resumed runs");
    }
    // Each step's tokens per source, and each source's val loss beside the mixture's (their weighted mean).
    let data: Vec<&Event> = history.iter().filter(|e| matches!(e, Event::Data { .. })).collect();
    assert_eq!(data.len(), 8);
    let Event::Data { step: 7, tokens } = data[7] else { panic!("{:?}", data[7]) };
    assert_eq!(tokens.values().sum::<u64>(), 8 * 128);
    assert_eq!(tokens[&a.display().to_string()], 11 * 64, "16 micro-batches: 11 and 5 of them, 0.7 and 0.3");
    let val = |step| history.iter().find(|e| matches!(e, Event::Val { step: s, .. } if *s == step));
    let Some(Event::Val { loss, .. }) = val(4) else { panic!("no val at step 4") };
    let each: Vec<f32> = history
        .iter()
        .filter_map(|e| match e {
            Event::ValSource { step: 4, loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert_eq!(each.len(), 2);
    assert!((0.7 * each[0] + 0.3 * each[1] - loss).abs() < 1e-4, "{each:?} -> {loss}");
    let metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains(r#""kind":"data""#)).count(), 8, "{metrics}");
    // Val at steps 0, 4 and 8 (after the last update), two sources each.
    assert_eq!(metrics.lines().filter(|l| l.contains(r#""kind":"val_source""#)).count(), 6);
    // The checkpoint holds each source's position.
    let state = checkpoint::load_state(&checkpoint::step_dir(&split.join("checkpoints"), 8)).unwrap();
    let json = serde_json::to_value(&state.train_loader).unwrap();
    assert_eq!(json["sources"].as_array().unwrap().len(), 2, "{json}");
}

/// `tokenmill ARGS`: (success, stderr).
fn tokenmill(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).current_dir(repo()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_mixtures_are_one_line_errors_naming_the_field_and_sources() {
    let (_, a, b) = sources();
    let log = tempfile::tempdir().unwrap();
    let train = |data: String| {
        let (a, b) = (log.path().to_str().unwrap(), "configs/tiny-cpu.toml");
        let (ok, err) = tokenmill(&["train", "--quiet", "--config", b, "--log-dir", a, "--data", &data]);
        assert!(!ok);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_string()
    };
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let err = train(format!("{a}:0.7,{b}:0"));
    assert!(err.contains("[data] mix") && err.contains(&format!("`{b}`")) && err.contains("> 0"), "{err}");
    let err = train(format!("{a}:0.7,{b}:-1"));
    assert!(err.contains(&format!("`{b}` is -1")), "{err}");
    let err = train(format!("{a}:0.7,{b}"));
    assert!(err.contains("DIR:WEIGHT"), "{err}");
    // Sources of different tokenizers: both named, with their tokenizers.
    let hf_root = tempfile::tempdir().unwrap();
    let hf = hf_root.path().join("hf");
    prep(
        &hf,
        &[repo().join("data/tinyshakespeare.txt")],
        TokenizerSource::Path(repo().join("tests/fixtures/hf_tokenizers/bpe")),
    );
    let err = train(format!("{a}:0.5,{}:0.5", hf.display()));
    assert!(err.contains(&a) && err.contains(&hf.display().to_string()), "{err}");
    assert!(err.contains("gpt2") && err.contains("tokenizer.json sha256"), "{err}");
    // In a config file too: the field is named.
    let err = TrainConfig::resolve(None, &[format!("data.mix={{ {a:?} = 0.0 }}")]).unwrap_err().to_string();
    assert!(err.contains("[data] mix") && err.contains(&a), "{err}");
    // A mixture on the command line replaces a file's `dir` (and a directory its `mix`).
    let file = hf_root.path().join("c.toml");
    std::fs::write(&file, format!("[data]\ndir = {a:?}\n")).unwrap();
    let c = TrainConfig::resolve(Some(&file), &[format!("data.mix={{ {a:?} = 1.0, {b:?} = 1.0 }}")]).unwrap();
    assert_eq!((c.data.dir, c.data.mix.len()), (None, 2));
    let c = TrainConfig::resolve(Some(&file), &[]).unwrap();
    assert!(c.data.mix.is_empty() && c.data.dir.is_some());
}
