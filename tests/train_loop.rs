//! The trainer end to end on CPU, on real text (tiny Shakespeare, GPT-2 BPE): overfitting one batch, lowering val
//! loss, gradient accumulation == one big batch, bitwise resume, the shipped configs, and the binary's
//! train / resume / report commands.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenmill::shards::format::{encode_tokens, ShardHeader, TokenWidth};
use tokenmill::shards::manifest::{Manifest, ShardEntry};
use tokenmill::shards::Split;
use tokenmill::tokenizer::{Tokenizer, TokenizerKind};
use tokenmill::train::checkpoint;
use tokenmill::train::log::{Event, StepStats};
use tokenmill::train::{Resume, TrainConfig, Trainer, TrainerOptions};

#[path = "common/mod.rs"]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Tiny Shakespeare as GPT-2 tokens (encoded once per test binary).
fn shakespeare_tokens() -> &'static [u32] {
    static TOKENS: OnceLock<Vec<u32>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let text = std::fs::read_to_string(repo().join("data/tinyshakespeare.txt")).expect("data/tinyshakespeare.txt");
        let mut out = Vec::new();
        Tokenizer::gpt2().encode_document_into(&text, &mut out).unwrap();
        out
    })
}

/// A shard directory as `tokenmill prep` writes it: manifest.json plus llm.c shards, `val` first.
fn write_dataset(dir: &Path, splits: &[(Split, &[u32])]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut m = Manifest::new("test", TokenizerKind::Gpt2, 1 << 20);
    for (i, (split, tokens)) in splits.iter().enumerate() {
        let file = format!("test_{}_{i:06}.bin", split.name());
        let mut bytes = ShardHeader::new(TokenWidth::U16, tokens.len() as u64).encode().to_vec();
        encode_tokens(tokens, TokenWidth::U16, &mut bytes);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        m.shards.push(ShardEntry {
            file,
            split: *split,
            tokens: tokens.len() as u64,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        });
    }
    m.complete = true;
    m.save(dir).unwrap();
}

/// Val = the first 16K tokens, train = the rest (~322K).
fn shakespeare_dataset(dir: &Path) {
    let t = shakespeare_tokens();
    write_dataset(dir, &[(Split::Val, &t[..16_384]), (Split::Train, &t[16_384..])]);
}

/// configs/tiny-cpu.toml with the test's data and log dirs and `extra` overrides.
fn tiny_config(data: &Path, log: &Path, extra: &[&str]) -> TrainConfig {
    let mut o = vec![
        format!("data.dir={:?}", data.display().to_string()),
        format!("run.log_dir={:?}", log.display().to_string()),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap()
}

fn quiet(resume: Resume) -> TrainerOptions {
    TrainerOptions { resume, ..Default::default() }
}

fn train_losses(history: &[Event]) -> Vec<(usize, f32)> {
    history.iter().filter_map(|e| if let Event::Train(s) = e { Some((s.step, s.loss)) } else { None }).collect()
}

fn params_f32(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model()
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn overfits_a_single_batch_gpt2_and_llama() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A train shard of exactly one batch (B*T+1 tokens): every step sees the same 4 x 32 tokens.
    let t = shakespeare_tokens();
    write_dataset(&data, &[(Split::Train, &t[1000..1000 + 4 * 32 + 1])]);
    for arch in ["gpt2", "llama"] {
        let cfg = tiny_config(
            &data,
            &dir.path().join(arch),
            &[
                &format!("model.arch=\"{arch}\""),
                "data.micro_batch=4",
                "data.seq_len=32",
                "data.total_batch_tokens=128",
                "optim.max_lr=1e-2",
                "optim.warmup_steps=10",
                "optim.max_steps=70",
                "optim.weight_decay=0.0",
                "eval.val_every=0",
                "eval.sample_every=0",
                "checkpoint.every=0",
            ],
        );
        let mut tr = Trainer::new(cfg, quiet(Resume::No)).unwrap();
        assert_eq!(format!("{:?}", tr.model().config().arch).to_lowercase(), arch);
        tr.run(None).unwrap();
        let losses = train_losses(tr.history());
        let (first, last) = (losses[0].1, losses.last().unwrap().1);
        eprintln!("{arch} single batch: loss {first} -> {last}");
        assert!(first > 10.0, "{arch}: an untrained model starts near ln(50304) = 10.8, got {first}");
        assert!(
            last < 0.1,
            "{arch}: overfitting one batch must drive the loss under 0.1, got {last} after {} steps",
            losses.len()
        );
    }
}

#[test]
fn tiny_model_lowers_val_loss_on_real_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    // 80 steps of 4 x 32 tokens (3% of an epoch of the train split): a CPU step at V = 50304 is costly.
    let cfg = tiny_config(
        &data,
        &dir.path().join("log"),
        &[
            "data.micro_batch=4",
            "data.seq_len=32",
            "data.total_batch_tokens=128",
            "optim.max_steps=80",
            "optim.warmup_steps=8",
            "eval.val_every=20",
            "eval.val_steps=4",
            "eval.sample_every=0",
        ],
    );
    let mut tr = Trainer::new(cfg, quiet(Resume::No)).unwrap();
    let start = tr.val_loss().unwrap();
    tr.run(None).unwrap();
    let end = tr.val_loss().unwrap();
    let logged: Vec<f32> =
        tr.history().iter().filter_map(|e| if let Event::Val { loss, .. } = e { Some(*loss) } else { None }).collect();
    eprintln!("val loss {start} -> {end}; logged {logged:?}");
    assert!((start - 50304f32.ln()).abs() < 0.3, "initial val loss {start} should be near ln(V) = 10.83");
    assert!(end < 7.0, "80 steps should bring val loss from {start} well below 7, got {end}");
    assert_eq!(logged.len(), 5, "val at steps 0, 20, 40, 60 and after the last update, 80");
    assert_eq!(*logged.last().unwrap(), end, "the last val loss is the final weights'");
    assert!(logged.windows(2).all(|w| w[1] < w[0]), "val loss should fall at every evaluation: {logged:?}");
}

#[test]
fn accumulating_micro_steps_equals_one_big_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let common = ["data.seq_len=32", "data.total_batch_tokens=256", "eval.val_every=0", "eval.sample_every=0"];
    let make = |b: &str, log: &str| {
        let mut o = common.to_vec();
        o.push(b);
        Trainer::new(tiny_config(&data, &dir.path().join(log), &o), quiet(Resume::No)).unwrap()
    };
    let mut small = make("data.micro_batch=2", "small"); // 4 micro-steps of 2 x 32
    let mut big = make("data.micro_batch=8", "big"); // 1 micro-step of 8 x 32
    assert_eq!((small.grad_accum_steps(), big.grad_accum_steps()), (4, 1));
    assert_eq!(params_f32(&small), params_f32(&big), "same seed, same initial weights");

    let (loss_s, grads_s) = small.forward_backward().unwrap();
    let (loss_b, grads_b) = big.forward_backward().unwrap();
    let (loss_s, loss_b) = (loss_s.to_scalar::<f32>().unwrap(), loss_b.to_scalar::<f32>().unwrap());
    assert!((loss_s - loss_b).abs() < 1e-5, "mean loss {loss_s} vs {loss_b}");
    let mut worst = 0f32;
    for (gs, gb) in grads_s.iter().zip(&grads_b) {
        let (gs, gb) = (gs.as_ref().unwrap(), gb.as_ref().unwrap());
        let a = gs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = gb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    assert!(worst < 1e-4, "accumulated gradients differ from the big batch's by {worst} (relative to max |g|)");

    // And whole optimizer steps agree (the sign-like first Adam step magnifies rounding only where |g| ~ eps).
    for _ in 0..3 {
        let (s, b) = (small.train_step().unwrap(), big.train_step().unwrap());
        assert!((s.loss - b.loss).abs() < 1e-4, "step {}: loss {} vs {}", s.step, s.loss, b.loss);
        assert!((s.grad_norm - b.grad_norm).abs() < 1e-3 * b.grad_norm, "grad norm {} vs {}", s.grad_norm, b.grad_norm);
    }
    let lr = small.config().optim.max_lr as f32;
    for ((name, a), (_, b)) in params_f32(&small).iter().zip(params_f32(&big).iter()) {
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff < 0.05 * lr, "{name}: weights differ by {diff} after 4 steps (lr {lr})");
    }
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    // Shuffled loading, samples (the RNG) and val evaluations all run, so all of their state must round-trip.
    let extra = |log: &str| -> Vec<String> {
        vec![
            "data.micro_batch=4".into(),
            "data.seq_len=32".into(),
            "data.total_batch_tokens=256".into(),
            "data.shuffle_seed=7".into(),
            "optim.max_steps=12".into(),
            "optim.warmup_steps=4".into(),
            "eval.val_every=4".into(),
            "eval.val_steps=2".into(),
            "eval.sample_every=3".into(),
            "eval.sample_tokens=12".into(),
            "checkpoint.every=0".into(),
            format!("run.log_dir={:?}", dir.path().join(log).display().to_string()),
        ]
    };
    let cfg = |log: &str| {
        let e = extra(log);
        let e: Vec<&str> = e.iter().map(String::as_str).collect();
        tiny_config(&data, &dir.path().join(log), &e)
    };

    let mut straight = Trainer::new(cfg("straight"), quiet(Resume::No)).unwrap();
    straight.run(None).unwrap();

    let mut first = Trainer::new(cfg("split"), quiet(Resume::No)).unwrap();
    first.run(Some(6)).unwrap();
    let mut history = first.history().to_vec();
    drop(first);
    let mut second = Trainer::new(cfg("split"), quiet(Resume::Latest)).unwrap();
    assert_eq!(second.step(), 6);
    second.run(None).unwrap();
    history.extend_from_slice(second.history());

    // Same losses, learning rates, norms, val losses and samples, step for step.
    assert_eq!(common::without_timings(&history), common::without_timings(straight.history()));
    assert!(history.iter().any(|e| matches!(e, Event::Sample { step: 9, .. })));

    // The final checkpoints are byte-identical (weights and AdamW moments), states equal but for the paths.
    let a = checkpoint::step_dir(&dir.path().join("straight/checkpoints"), 12);
    let b = checkpoint::step_dir(&dir.path().join("split/checkpoints"), 12);
    for f in [checkpoint::MODEL_FILE, checkpoint::OPTIMIZER_FILE] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between the straight and the resumed run");
    }
    assert!(checkpoint::step_dir(&dir.path().join("split/checkpoints"), 6).join(checkpoint::STATE_FILE).is_file());
    let (sa, sb) = (checkpoint::load_state(&a).unwrap(), checkpoint::load_state(&b).unwrap());
    assert_eq!(
        (sa.step, sa.optimizer_steps, &sa.train_loader, &sa.rng),
        (sb.step, sb.optimizer_steps, &sb.train_loader, &sb.rng)
    );
    assert_eq!(params_f32(&straight), params_f32(&second));
}

#[test]
fn shipped_configs_resolve() {
    for name in ["gpt2-124m", "gpt2-350m", "tiny-cpu", "llama-tiny-cpu"] {
        let path = repo().join(format!("configs/{name}.toml"));
        let cfg = TrainConfig::resolve(Some(&path), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = cfg.model.resolve(50257).unwrap();
        assert_eq!(m.vocab_size, 50304, "{name}");
        cfg.grad_accum_steps(1).unwrap();
    }
    let c = TrainConfig::resolve(Some(&repo().join("configs/gpt2-124m.toml")), &[]).unwrap();
    assert_eq!(
        c,
        TrainConfig::resolve(None, &["eval.hellaswag_file=\"shards/hellaswag/hellaswag_val.bin\"".into()]).unwrap()
    );
    assert_eq!((c.grad_accum_steps(1).unwrap(), c.optim.warmup_steps, c.optim.max_steps), (8, 715, 19073));
}

#[test]
fn binary_trains_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let log = dir.path().join("log");
    let bin = env!("CARGO_BIN_EXE_tokenmill");
    let train = |more: &[&str]| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["train", "--config"]).arg(repo().join("configs/tiny-cpu.toml"));
        cmd.arg("--data").arg(&data).arg("--log-dir").arg(&log);
        cmd.args([
            "--max-steps",
            "6",
            "--set",
            "eval.val_every=3",
            "--set",
            "eval.val_steps=2",
            "--set",
            "eval.sample_every=0",
        ]);
        cmd.args(more);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "train {more:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let out = train(&["--stop-after", "4"]);
    assert!(out.contains("[optim]") && out.contains("step     3 | loss:"), "{out}");
    let out = train(&["--resume"]);
    assert!(
        out.contains("resumed from") && out.contains("step     5 | loss:") && !out.contains("step     3 |"),
        "{out}"
    );
    assert!(log.join("config.toml").is_file() && log.join("metrics.jsonl").is_file());
    // A change a resume cannot apply fails before anything is printed or recorded as the config.
    let saved = std::fs::read_to_string(log.join("config.toml")).unwrap();
    let out = std::process::Command::new(bin)
        .args(["train", "--resume", "--log-dir"])
        .arg(&log)
        .args(["--set", "model.n_layer=4"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && stderr.contains("model n_layer 2 -> 4"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("n_layer = 4"), "{stdout}");
    assert_eq!(std::fs::read_to_string(log.join("config.toml")).unwrap(), saved);
    let txt = std::fs::read_to_string(log.join("log.txt")).unwrap();
    assert_eq!(txt.lines().filter(|l| l.contains(" train ")).count(), 6, "{txt}");
    assert!(txt.lines().next().unwrap().starts_with("0 val "), "{txt}");

    // Commands that read a checkpoint take the run's log directory: its latest checkpoint (issue 12 item 8).
    let out = std::process::Command::new(bin)
        .args(["sample", "--device", "cpu", "--num-samples", "1", "--max-tokens", "16", "--model"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "sample --model LOG_DIR: {}", String::from_utf8_lossy(&out.stderr));

    let out = std::process::Command::new(bin).arg("report").arg(&log).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(log.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("val loss"), "{}", &svg[..200.min(svg.len())]);
    // Tiny Shakespeare is not FineWeb-Edu: no GPT-2 val-loss baseline (issue 12 item 11), and the empty HellaSwag
    // panel says why.
    assert!(!svg.contains("3.2924") && svg.contains("no HellaSwag evaluations"), "{}", &svg[..200.min(svg.len())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no GPT-2 124M baseline"), "{stdout}");
}

/// Issue 12 item 2: `--resume` with `--set model.n_layer=4` kept the 2-layer model yet recorded `n_layer = 4`, and a
/// resume on other data was accepted silently. A resume now applies a change or refuses it, and records what is in
/// effect.
#[test]
fn resume_applies_or_refuses_each_change_and_records_the_config_in_effect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let log = dir.path().join("log");
    let cfg = |data: &Path, extra: &[&str]| {
        let mut o = vec![
            "data.micro_batch=4",
            "data.seq_len=32",
            "data.total_batch_tokens=128",
            "optim.max_steps=6",
            "eval.val_every=0",
            "eval.sample_every=0",
            "checkpoint.every=0",
        ];
        o.extend_from_slice(extra);
        tiny_config(data, &log, &o)
    };
    let mut first = Trainer::new(cfg(&data, &[]), quiet(Resume::No)).unwrap();
    first.run(Some(3)).unwrap();
    drop(first);

    let refused = |c: TrainConfig| match Trainer::new(c, quiet(Resume::Latest)) {
        Ok(_) => panic!("the resume should have been refused"),
        Err(e) => e.to_string(),
    };
    let err = refused(cfg(&data, &["model.n_layer=4"]));
    assert!(err.contains("model n_layer 2 -> 4") && err.contains("start a new run"), "{err}");
    // Other data (other tokens in the train split): refused, naming both.
    let other = dir.path().join("other");
    let t = shakespeare_tokens();
    write_dataset(&other, &[(Split::Val, &t[..16_384]), (Split::Train, &t[20_000..])]);
    let err = refused(cfg(&other, &[]));
    assert!(err.contains("data: the run trained on") && err.contains("other"), "{err}");
    // The data position and the seed, all reasons in one message.
    let err = refused(cfg(&data, &["data.micro_batch=2", "data.shuffle_seed=5", "run.seed=1"]));
    assert!(
        err.contains("data.micro_batch 4 -> 2")
            && err.contains("data.shuffle_seed unset -> 5")
            && err.contains("run.seed"),
        "{err}"
    );

    // The same data moved elsewhere, with a new schedule: applied, and what is recorded is what runs.
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    for f in std::fs::read_dir(&data).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, moved.join(p.file_name().unwrap())).unwrap();
    }
    let mut second = Trainer::new(cfg(&moved, &["optim.max_lr=1e-3", "optim.warmup_steps=2"]), quiet(Resume::Latest))
        .expect("moved data and a new learning-rate schedule resume");
    assert_eq!(second.step(), 3);
    second.run(None).unwrap();
    let lrs: Vec<f64> =
        second.history().iter().filter_map(|e| if let Event::Train(s) = e { Some(s.lr) } else { None }).collect();
    assert!(lrs.iter().all(|&lr| lr <= 1e-3 && lr > 1e-4), "the new schedule is in effect: {lrs:?}");
    let state = checkpoint::load_state(&checkpoint::step_dir(&log.join("checkpoints"), 6)).unwrap();
    let n_layer = state.config.model.field("n_layer").and_then(|v| v.as_integer());
    assert_eq!((state.config.optim.max_lr, n_layer, state.model.n_layer), (1e-3, Some(2), 2));
    assert_eq!(state.config.data.dir.as_deref(), Some(moved.as_path()));
    let saved = std::fs::read_to_string(log.join("config.toml")).unwrap();
    assert_eq!(TrainConfig::from_toml_str(&saved, "config.toml").unwrap(), state.config);
}

/// Issue 12 item 6: `step_N.tmp.PID` folders of interrupted checkpoint writes stayed forever, and a resumed run
/// appended to log.txt, repeating the steps the stopped run had logged after its checkpoint. Now leftovers are cleaned
/// at start and a resumed log reads exactly like an uninterrupted one.
#[test]
fn resumed_log_reads_like_an_uninterrupted_one_and_stale_checkpoint_temps_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let cfg = |log: &str| {
        tiny_config(
            &data,
            &dir.path().join(log),
            &[
                "data.micro_batch=4",
                "data.seq_len=32",
                "data.total_batch_tokens=128",
                "optim.max_steps=6",
                "eval.val_every=2",
                "eval.val_steps=1",
                "eval.sample_every=0",
                "checkpoint.every=2",
            ],
        )
    };
    Trainer::new(cfg("straight"), quiet(Resume::No)).unwrap().run(None).unwrap();

    // A run that logged step 4 after its step_4 checkpoint, then died; and a checkpoint write cut short.
    Trainer::new(cfg("split"), quiet(Resume::No)).unwrap().run(Some(5)).unwrap();
    let ckpts = dir.path().join("split/checkpoints");
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let stale = ckpts.join(format!("step_000006.tmp.{dead}"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(checkpoint::MODEL_FILE), b"half a file").unwrap();
    let mut resumed = Trainer::new(cfg("split"), quiet(Resume::From(checkpoint::step_dir(&ckpts, 4)))).unwrap();
    assert!(!stale.exists(), "the stale temp folder is removed at start");
    resumed.run(None).unwrap();

    let read = |log: &str, f: &str| std::fs::read_to_string(dir.path().join(log).join(f)).unwrap();
    let txt = read("split", "log.txt");
    assert_eq!(txt, read("straight", "log.txt"), "log.txt of the resumed run");
    assert_eq!(txt.lines().filter(|l| l.contains(" train ")).count(), 6);
    // metrics.jsonl: the same events (timings aside).
    let events = |log: &str| -> Vec<Event> {
        read(log, "metrics.jsonl")
            .lines()
            .map(|l| match serde_json::from_str(l).unwrap() {
                Event::Train(s) => Event::Train(StepStats { ms: 0.0, tokens_per_s: 0.0, ..s }),
                e => e,
            })
            .collect()
    };
    assert_eq!(events("split"), events("straight"));
}

/// `tokenmill train` on the test's data with the tiny config, stdout piped (the run is long: a signal ends it).
fn spawn_train(data: &Path, log: &Path, more: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"));
    cmd.args(["train", "--config"]).arg(repo().join("configs/tiny-cpu.toml"));
    cmd.arg("--data").arg(data).arg("--log-dir").arg(log);
    cmd.args(["--max-steps", "1000", "--set", "eval.val_every=0", "--set", "eval.sample_every=0"]);
    cmd.args(["--set", "checkpoint.every=0"]).args(more);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
}

/// Wait until the child's stdout shows a line starting with `prefix` (its stdout keeps draining in the background),
/// then send it `signals` (`kill` arguments) and wait for it: (exit code, stderr).
fn signal_after(mut child: std::process::Child, prefix: &str, signals: &[&str]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let line = rx.recv_timeout(deadline - std::time::Instant::now()).expect("the run logs its first steps");
        if line.starts_with(prefix) {
            break;
        }
    }
    // One shell sends them all with its builtin `kill`, microseconds apart: a second signal sent by a second process
    // could arrive after the run had already finished its step and written the checkpoint (seen on a loaded CI box).
    let pid = child.id();
    let script: Vec<String> = signals.iter().map(|s| format!("kill {s} {pid}")).collect();
    assert!(std::process::Command::new("sh").args(["-c", &script.join(" && ")]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 12 item 5: SIGTERM (a scheduler's preemption) or Ctrl-C lost every step since the last checkpoint. Now the
/// first signal finishes the step, writes a checkpoint and exits 128 + signal with a line saying how to continue;
/// the resumed run continues from that step. A second signal exits at once.
#[test]
fn sigterm_finishes_the_step_writes_a_checkpoint_and_a_second_signal_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let log = dir.path().join("log");
    let (code, stderr) = signal_after(spawn_train(&data, &log, &[]), "step     1 |", &["-TERM"]);
    assert_eq!(code, Some(128 + 15), "{stderr}");
    let line =
        stderr.lines().find(|l| l.starts_with("stopped by SIGTERM after ")).unwrap_or_else(|| panic!("{stderr}"));
    let ckpt = checkpoint::latest(&log.join("checkpoints")).expect("a checkpoint is written on SIGTERM");
    let state = checkpoint::load_state(&ckpt).unwrap();
    assert!(line.contains(&format!("after {} of 1000 steps", state.step)) && line.contains("--resume"), "{line}");
    let txt = std::fs::read_to_string(log.join("log.txt")).unwrap();
    assert_eq!(txt.lines().count(), state.step, "every finished step is in the checkpoint: {txt}");

    let stop_at = (state.step + 1).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["train", "--resume", "--stop-after", &stop_at])
        .arg("--log-dir")
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("resumed from {}", ckpt.display())), "{stdout}");
    assert_eq!(std::fs::read_to_string(log.join("log.txt")).unwrap().lines().count(), state.step + 1);

    // Two signals: the second exits at once, mid-step, without a checkpoint. They differ because a standard signal
    // sent while the same one is still pending is merged into it; the kernel may deliver them in either order.
    let log2 = dir.path().join("log2");
    let (code, stderr) = signal_after(spawn_train(&data, &log2, &[]), "step     1 |", &["-TERM", "-INT"]);
    assert!(code == Some(128 + 2) || code == Some(128 + 15), "{code:?} {stderr}");
    assert!(!stderr.contains("stopped by"), "{stderr}");
    assert!(checkpoint::all(&log2.join("checkpoints")).is_empty());
}

/// Issue 12 item 10: causes were printed twice ("X: Y: Y") and the resolved config came before errors. Each cause is
/// said once, and `--quiet` hides the config (still saved to config.toml).
#[test]
fn errors_say_each_cause_once_and_quiet_hides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    shakespeare_dataset(&data);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let missing = dir.path().join("missing.toml");
    let (ok, _, stderr) = run(&["train", "--config", missing.to_str().unwrap()]);
    assert!(!ok && stderr.matches("No such file or directory").count() == 1, "{stderr}");
    let (ok, stdout, stderr) = run(&["train", "--data", data.to_str().unwrap(), "--set", "optim.max_lrr=1"]);
    assert!(!ok && stderr.matches("unknown field `max_lrr`").count() == 1, "{stderr}");
    assert!(!stdout.contains("[optim]"), "no config dump before an error: {stdout}");

    let log = dir.path().join("log");
    let config = repo().join("configs/tiny-cpu.toml");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--quiet",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--log-dir",
        log.to_str().unwrap(),
        "--max-steps",
        "1",
        "--set",
        "eval.val_every=0",
        "--set",
        "eval.sample_every=0",
    ]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("[optim]") && stdout.contains("step     0 |"), "{stdout}");
    assert!(std::fs::read_to_string(log.join("config.toml")).unwrap().contains("[optim]"));
}
