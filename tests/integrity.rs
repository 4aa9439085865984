//! Checksums end to end (issue 12 item 3): a checkpoint records the xxh3 of its tensor files and a resume checks
//! them; the loader checks each shard against the manifest when it first enters it; `tokenmill verify DIR` names
//! exactly what is damaged in a shard directory or a checkpoint; a manifest that names files outside its directory,
//! twice, or with another token width or count is refused by the loader and `verify` alike (issue 20).

use std::path::{Path, PathBuf};
use std::process::Command;

use tokenmill::shards::{DataLoader, LoaderConfig, LoaderError, Manifest, ShardError, Split};
use tokenmill::train::checkpoint;
use tokenmill::train::{Resume, TrainConfig, Trainer, TrainerOptions};

#[path = "common/mod.rs"]
mod common;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny(data: &Path, log: &Path) -> TrainConfig {
    let o: Vec<String> = vec![
        format!("data.dir={:?}", data.display().to_string()),
        format!("run.log_dir={:?}", log.display().to_string()),
        "data.micro_batch=4".into(),
        "data.seq_len=32".into(),
        "data.total_batch_tokens=128".into(),
        "optim.max_steps=4".into(),
        "eval.val_every=0".into(),
        "eval.sample_every=0".into(),
    ];
    TrainConfig::resolve(Some(&repo().join("configs/tiny-cpu.toml")), &o).unwrap()
}

fn options(resume: Resume, verify: bool) -> TrainerOptions {
    TrainerOptions { resume, verify, ..Default::default() }
}

/// `tokenmill verify ARG`: (success, stdout + stderr).
fn verify(arg: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).arg("verify").arg(arg).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Overwrite `len` bytes in the middle of `path` with junk.
fn scribble(path: &Path, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + len].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_checkpoint_file_stops_a_resume_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("log"));
    common::prep_tiny_shakespeare(&data);
    let mut t = Trainer::new(tiny(&data, &log), options(Resume::No, true)).unwrap();
    t.run(Some(2)).unwrap();
    drop(t);
    let ckpt = checkpoint::step_dir(&log.join("checkpoints"), 2);
    let state = checkpoint::load_state(&ckpt).unwrap();
    assert_eq!(state.checksums.len(), 2, "state.json records both tensor files: {:?}", state.checksums);
    let (ok, out) = verify(&log);
    assert!(ok && out.contains("ok       optimizer.safetensors"), "{out}");

    // Junk in the optimizer moments: a resume refuses, naming the file.
    scribble(&ckpt.join(checkpoint::OPTIMIZER_FILE), 4096);
    let err = match Trainer::new(tiny(&data, &log), options(Resume::Latest, true)) {
        Ok(_) => panic!("resumed from a damaged checkpoint"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("optimizer.safetensors") && err.contains("xxh3") && err.contains("damaged"), "{err}");
    assert!(err.contains("train --no-verify"), "a resume may skip the check: {err}");
    let (ok, out) = verify(&ckpt);
    assert!(!ok, "{out}");
    assert!(out.contains("ok       model.safetensors") && out.contains("DAMAGED") && out.contains("1 of 3"), "{out}");
    // Sampling reads only the model file, which is intact; junk in it is named there too.
    let sample = |ckpt: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["sample", "--device", "cpu", "--num-samples", "1", "--max-tokens", "12", "--model"])
            .arg(ckpt)
            .output()
            .unwrap()
    };
    assert!(sample(&ckpt).status.success());
    scribble(&ckpt.join(checkpoint::MODEL_FILE), 64);
    let out = sample(&log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.safetensors") && stderr.contains("damaged"), "{stderr}");
    // Issue 20: sample (like eval and export) has no --no-verify, so it is not suggested there.
    assert!(!stderr.contains("--no-verify") && stderr.contains("earlier checkpoint"), "{stderr}");
    // --no-verify loads it anyway.
    assert!(Trainer::new(tiny(&data, &log), options(Resume::Latest, false)).is_ok());
}

#[test]
fn flipped_bit_in_a_shard_is_caught_when_the_loader_reaches_it_and_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::prep_tiny_shakespeare(&data);
    let m = Manifest::load(&data).unwrap();
    let train: Vec<&str> = m.shards.iter().filter(|s| s.split == Split::Train).map(|s| s.file.as_str()).collect();
    assert_eq!(train.len(), 3);
    let victim = data.join(train[1]);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[5000] ^= 0x04;
    std::fs::write(&victim, bytes).unwrap();

    // The loader opens fine (shard 0 is intact) and stops when it first enters the damaged shard.
    let cfg = LoaderConfig::new(4, 32);
    let mut loader = DataLoader::open(&data, Split::Train, cfg).unwrap();
    let err = (0..10_000).find_map(|_| loader.next_batch().err()).expect("the damaged shard is detected");
    assert!(matches!(err, LoaderError::Shard(ShardError::ChecksumMismatch { .. })), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(train[1]) && msg.contains("manifest says") && msg.contains("tokenmill verify"), "{msg}");
    // Without verification the (still in-vocabulary) flip goes through.
    let mut unchecked = DataLoader::open_with(&data, Split::Train, cfg, false).unwrap();
    assert!((0..10_000).all(|_| unchecked.next_batch().is_ok()));

    std::fs::write(data.join("tinyshakespeare_train_000004.bin.tmp.77"), b"partial").unwrap();
    let (ok, out) = verify(&data);
    assert!(!ok, "{out}");
    let damaged: Vec<&str> = out.lines().filter(|l| l.contains("DAMAGED")).collect();
    assert!(damaged.len() == 1 && damaged[0].contains(train[1]), "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("ok ")).count(), 3, "{out}");
    assert!(out.contains("unlisted tinyshakespeare_train_000004.bin.tmp.77"), "{out}");
    assert!(out.contains("1 of 4 file(s) damaged"), "{out}");
}

/// A copy of the shared tiny Shakespeare shards (1 val + 3 train) to tamper with.
fn dataset_copy(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in std::fs::read_dir(common::tiny_shakespeare_shards()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, data.join(p.file_name().unwrap())).unwrap();
    }
    data
}

/// Issue 20: a manifest naming files outside its dataset (`../x`, an absolute path) was read by the loader and passed
/// `verify`; a shard listed twice trained twice and passed; `token_width: "u32"` over u16 shards went unnoticed; an
/// edited `tokens` was accepted by the loader while `verify` said DAMAGED. The loader and `verify` now agree, and
/// refuse each.
#[test]
fn the_loader_and_verify_refuse_a_manifest_that_does_not_describe_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.bin");
    let tamper = |what: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let data = dataset_copy(&dir.path().join(what));
        let path = data.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut m);
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let loader = match DataLoader::open(&data, Split::Train, LoaderConfig::new(4, 32)) {
            Ok(_) => panic!("{what}: the loader accepted it"),
            Err(e) => e.to_string(),
        };
        let (ok, out) = verify(&data);
        assert!(!ok, "{what}: verify passed:\n{out}");
        (loader, out)
    };
    std::fs::copy(common::tiny_shakespeare_shards().join("tinyshakespeare_train_000001.bin"), &outside).unwrap();
    for (what, bad) in [("relative", "../../outside.bin".to_string()), ("absolute", outside.display().to_string())] {
        let (loader, out) = tamper(what, &|m| m["shards"][1]["file"] = bad.clone().into());
        assert!(loader.contains("not a file name in the dataset's directory") && loader.contains(&bad), "{loader}");
        assert!(out.contains("not a file name in the dataset's directory"), "{out}");
    }
    let (loader, out) = tamper("twice", &|m| {
        let first = m["shards"][1].clone();
        m["shards"].as_array_mut().unwrap().push(first);
    });
    assert!(loader.contains("listed twice") && out.contains("listed twice"), "{loader}\n{out}");
    let (loader, out) = tamper("width", &|m| m["token_width"] = "u32".into());
    assert!(loader.contains("token_width U32") && out.contains("token_width U32"), "{loader}\n{out}");
    let (loader, out) = tamper("tokens", &|m| {
        let t = m["shards"][1]["tokens"].as_u64().unwrap();
        m["shards"][1]["tokens"] = (t - 1).into();
    });
    assert!(loader.contains("the manifest") && loader.contains("tinyshakespeare_train_000001.bin"), "{loader}");
    assert!(out.contains("DAMAGED") && out.contains("tinyshakespeare_train_000001.bin"), "{out}");
}

/// Issue 20 item 2: `prep corpus --overwrite` deleted the files a tampered manifest named outside `--out`. Nothing is
/// deleted through a manifest that names a path outside its directory.
#[test]
fn prep_overwrite_deletes_nothing_a_tampered_manifest_names_outside_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset_copy(dir.path());
    let victim = dir.path().join("victim2");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("important.bin"), "precious").unwrap();
    std::fs::write(dir.path().join("abs.bin"), "precious too").unwrap();
    let path = data.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["shards"][0]["file"] = "../victim2/important.bin".into();
    m["shards"][1]["file"] = dir.path().join("abs.bin").display().to_string().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["prep", "corpus", "--no-progress", "--overwrite", "--name", "tinyshakespeare", "--input"])
        .arg(repo().join("data/tinyshakespeare.txt"))
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("../victim2/important.bin"), "{stderr}");
    assert_eq!(std::fs::read(victim.join("important.bin")).unwrap(), b"precious");
    assert_eq!(std::fs::read(dir.path().join("abs.bin")).unwrap(), b"precious too");
    assert_eq!(listing(&data), before, "nothing in --out was deleted either");
}

// Issue 26: never use state tokenmill cannot vouch for.

/// A 2-step run in `dir/log` on tiny Shakespeare prepared into `dir/data`; returns (data, log).
fn two_steps(dir: &Path) -> (PathBuf, PathBuf) {
    let (data, log) = (dir.join("data"), dir.join("log"));
    common::prep_tiny_shakespeare(&data);
    let mut t = Trainer::new(tiny(&data, &log), options(Resume::No, true)).unwrap();
    t.run(Some(2)).unwrap();
    (data, log)
}

/// Edit `ckpt/state.json` as JSON.
fn edit_state(ckpt: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = ckpt.join(checkpoint::STATE_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn resume_error(data: &Path, log: &Path, resume: Resume) -> String {
    match Trainer::new(tiny(data, log), options(resume, true)) {
        Ok(_) => panic!("resumed from a checkpoint it cannot vouch for"),
        Err(e) => e.to_string(),
    }
}

/// Silent wrong result 3: a manifest whose `tokenizer.vocab_size` is not the named tokenizer's (70000 for GPT-2) passed
/// `verify`, and `train` built a 70016-row model.
#[test]
fn a_manifest_whose_vocab_size_is_not_its_tokenizers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::prep_tiny_shakespeare(&data);
    let path = Manifest::path_in(&data);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["tokenizer"]["vocab_size"] = serde_json::json!(70000);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let (ok, out) = verify(&data);
    assert!(!ok && out.contains("vocab_size 70000") && out.contains("50257"), "{out}");
    let err = resume_error(&data, &dir.path().join("log"), Resume::No);
    assert!(err.contains("vocab_size 70000"), "{err}");
}

/// Silent wrong result 4: `verify` passed a checkpoint whose state.json lost its checksums (with a flipped byte in the
/// weights), and resume loaded it. A version-2 checkpoint always records them: without, it cannot be vouched for.
#[test]
fn a_checkpoint_whose_state_lost_its_checksums_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = two_steps(dir.path());
    let ckpt = checkpoint::step_dir(&log.join("checkpoints"), 2);
    scribble(&ckpt.join(checkpoint::MODEL_FILE), 64);
    edit_state(&ckpt, |v| {
        v.as_object_mut().unwrap().remove("checksums");
    });
    let (ok, out) = verify(&ckpt);
    assert!(!ok && out.contains("records no checksum for model.safetensors"), "{out}");
    let err = resume_error(&data, &log, Resume::Latest);
    assert!(err.contains("records no checksum") && err.contains("--no-verify"), "{err}");
}

/// Silent wrong result 5: `verify RUN` passed when the latest checkpoint folder lost its state.json, and resume and
/// sample silently fell back to an older checkpoint.
#[test]
fn a_latest_checkpoint_that_lost_its_state_is_named_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = two_steps(dir.path());
    let mut t = Trainer::new(tiny(&data, &log), options(Resume::Latest, true)).unwrap();
    t.run(Some(4)).unwrap();
    drop(t);
    let step4 = checkpoint::step_dir(&log.join("checkpoints"), 4);
    std::fs::remove_file(step4.join(checkpoint::STATE_FILE)).unwrap();
    let (ok, out) = verify(&log);
    assert!(!ok && out.contains("step_000004") && out.contains("DAMAGED  no state.json"), "{out}");
    let err = resume_error(&data, &log, Resume::Latest);
    assert!(err.contains("step_000004") && err.contains("step_000002"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill"))
        .args(["sample", "--device", "cpu", "--num-samples", "1", "--max-tokens", "12", "--model"])
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("step_000004"), "{stderr}");
}

/// Silent wrong result 9: an edited `step` in state.json (5 in step_000002) was believed: it moved the checkpoint it
/// had just loaded into `abandoned/`. The step must be the folder's and the optimizer's.
#[test]
fn an_edited_step_in_state_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = two_steps(dir.path());
    let ckpt = checkpoint::step_dir(&log.join("checkpoints"), 2);
    edit_state(&ckpt, |v| v["step"] = serde_json::json!(5));
    let err = resume_error(&data, &log, Resume::From(ckpt.clone()));
    assert!(err.contains("step 5 in a folder named for step 2"), "{err}");
    assert!(ckpt.join(checkpoint::STATE_FILE).is_file(), "nothing was moved");
    edit_state(&ckpt, |v| {
        v["step"] = serde_json::json!(2);
        v["optimizer_steps"] = serde_json::json!(7);
    });
    let (ok, out) = verify(&ckpt);
    assert!(!ok && out.contains("7 optimizer steps"), "{out}");
}
