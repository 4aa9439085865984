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
