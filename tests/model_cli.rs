//! `tokenmill sample` and `tokenmill export hf` as a user runs them: the real binary on a tiny checkpoint in a temp
//! directory. (`--model gpt2` needs the hub; its loader is the HF-folder path tested in model_pretrained.rs.)

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use tokenmill::model::{build_model, save_model_weights, ModelConfig, Precision};

fn tokenmill(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmill")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny GPT-2 (50304-row vocabulary) saved as a checkpoint directory's model.safetensors.
fn tiny_checkpoint(root: &Path) -> String {
    let dir = root.join("step_000000");
    std::fs::create_dir(&dir).unwrap();
    let model = build_model(&ModelConfig::preset("tiny").unwrap(), Precision::FP32, &Device::Cpu, 1337).unwrap();
    save_model_weights(model.as_ref(), &dir.join("model.safetensors")).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn sample_is_seeded_and_prints_each_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let args = |seed: &'static str| {
        vec![
            "sample",
            "--model",
            &ckpt,
            "--prompt",
            "Hello, I'm a language model,",
            "--num-samples",
            "3",
            "--max-tokens",
            "14",
            "--seed",
            seed,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let run = |seed| {
        let a = args(seed);
        let (ok, out, err) = tokenmill(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{err}");
        out
    };
    let a = run("42");
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len(), 3, "{a}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("sample {i}: Hello, I'm a language model,")), "{l}");
        assert!(l.len() > "sample 0: Hello, I'm a language model,".len(), "{l}");
    }
    assert_eq!(a, run("42"), "same seed, same samples");
    assert_ne!(a, run("7"), "another seed, other samples");

    // More samples than one chunk, longer than the context: bounded memory, a note, every sample printed in order.
    let (ok, out, err) = tokenmill(&["sample", "--model", &ckpt, "--num-samples", "40", "--max-tokens", "70"]);
    assert!(ok, "{err}");
    assert!(err.contains("longer than the model's 64-token context"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 40, "{out}");
    assert!(lines.iter().enumerate().all(|(i, l)| l.starts_with(&format!("sample {i}: "))), "{out}");

    let (ok, _, err) = tokenmill(&["sample", "--model", &ckpt, "--max-tokens", "3"]);
    assert!(!ok && err.contains("--max-tokens"), "{err}");
    let (ok, _, err) = tokenmill(&["sample", "--model", "definitely/not/a/path/x"]);
    assert!(!ok && err.contains("definitely/not/a/path/x"), "{err}");
}

#[test]
fn export_hf_writes_a_folder_sample_can_read() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let out = tmp.path().join("hf");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, err) = tokenmill(&["export", "hf", &ckpt, out_s]);
    assert!(ok, "{err}");
    assert!(stdout.contains("vocab 50257"), "{stdout}");
    assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());
    // GPT-2's tokenizer files, so AutoTokenizer loads the folder (issue 12 item 11).
    let vocab: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("vocab.json")).unwrap()).unwrap();
    assert_eq!((vocab["Ġthe"].as_u64(), vocab.as_object().unwrap().len()), (Some(262), 50257));
    let merges = std::fs::read_to_string(out.join("merges.txt")).unwrap();
    assert!(merges.starts_with("#version: 0.2\nĠ t\nĠ a\n") && merges.lines().count() == 50001);
    assert!(out.join("tokenizer_config.json").is_file());
    // The exported folder (50257 rows) samples like the checkpoint (50304 rows, padded ids never drawn).
    let common = ["--prompt", "Hello", "--num-samples", "2", "--max-tokens", "8", "--seed", "3"];
    let (ok1, from_ckpt, e1) = tokenmill(&[&["sample", "--model", &ckpt][..], &common].concat());
    let (ok2, from_hf, e2) = tokenmill(&[&["sample", "--model", out_s][..], &common].concat());
    assert!(ok1 && ok2, "{e1}{e2}");
    assert_eq!(from_ckpt, from_hf);
    let (ok, _, err) = tokenmill(&["export", "hf", &ckpt, out_s]);
    assert!(!ok && err.contains("not empty"), "{err}");
}

/// Issue 20: an HF folder without its config.json was taken for a tokenmill checkpoint and the error named state.json.
/// It names config.json.
#[test]
fn an_hf_folder_without_config_json_names_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let out = tmp.path().join("hf");
    let (ok, _, err) = tokenmill(&["export", "hf", &ckpt, out.to_str().unwrap()]);
    assert!(ok, "{err}");
    std::fs::remove_file(out.join("config.json")).unwrap();
    let (ok, _, err) = tokenmill(&["sample", "--model", out.to_str().unwrap(), "--max-tokens", "8"]);
    assert!(!ok && err.contains("config.json") && err.contains("an HF GPT-2 folder"), "{err}");
}

/// Issue 26, resources: exports that failed or were killed left full-size `DIR.tmp.PID` folders nothing cleaned. An
/// export builds in a marked staging folder; what a killed one left, the next export to the same folder removes (only
/// a marked folder of a process that is gone: anything else with that name is left alone).
#[test]
fn a_killed_exports_staging_folder_is_removed_by_the_next_export() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path());
    let dead = || {
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let (dead, dead_too) = (dead(), dead());
    let stale = tmp.path().join(format!("hf.tmp.{dead}"));
    std::fs::create_dir_all(stale.join("export.tmp.1")).unwrap();
    std::fs::write(stale.join(".tokenmill-export"), format!("{dead}\n")).unwrap();
    std::fs::write(stale.join("export.tmp.1/model.safetensors"), vec![0u8; 1 << 20]).unwrap();
    let theirs = tmp.path().join(format!("hf.tmp.{dead_too}"));
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    let out = tmp.path().join("hf");
    let (ok, _, err) = tokenmill(&["export", "hf", &ckpt, out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("removed") && !stale.exists(), "{err}");
    assert!(theirs.join("notes.txt").is_file(), "an unmarked folder is not an export's");
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hf.tmp."))
        .collect();
    assert_eq!(left, [theirs.file_name().unwrap().to_string_lossy()], "no staging folder of this export is left");
}

/// Issue 26, silent wrong result 8: `sample --tokenizer gpt2` on a model of another vocabulary printed `<|unk:N|>`
/// garbage with status 0. A tokenizer whose vocabulary is not the model's is refused, naming the one that fits.
#[test]
fn sample_refuses_a_tokenizer_of_another_vocabulary_than_the_models() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { vocab_size: 100_288, real_vocab_size: 100_277, ..ModelConfig::preset("tiny").unwrap() };
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 1337).unwrap();
    let weights = tmp.path().join("cl100k.safetensors");
    save_model_weights(model.as_ref(), &weights).unwrap();
    let w = weights.to_str().unwrap();
    let (ok, _, err) = tokenmill(&["sample", "--model", w, "--tokenizer", "gpt2", "--max-tokens", "16"]);
    assert!(!ok && err.contains("--tokenizer gpt2") && err.contains("cl100k_base"), "{err}");
    let (ok, out, err) = tokenmill(&["sample", "--model", w, "--max-tokens", "16", "--num-samples", "1"]);
    assert!(ok && !out.contains("<|unk"), "{out}{err}");
}
