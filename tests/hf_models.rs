//! Hugging Face Llama-family models through the architecture table, against fixtures transformers made
//! (scripts/make_hf_decoder_fixtures.py, tests/fixtures/hf/): a GQA `LlamaForCausalLM` tied, the same untied and saved
//! sharded, and a `Qwen2ForCausalLM` (q, k, v biases). For each: the logits equal transformers' within 1e-5 relative
//! (CPU, f32), export -> import gives back every tensor bit for bit and the same logits, and `train --init` starts
//! a run from it (the model before the first step is the HF model), records the init, and refuses data of another
//! tokenizer and configs of architectures tokenmill does not compute, naming the file and field.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenmill::model::hf::{export_hf, load_hf, HfFiles, HF_CONFIG, HF_WEIGHTS};
use tokenmill::model::store::read_safetensors;
use tokenmill::model::{Architecture, Precision};
use tokenmill::shards::format::{encode_tokens, ShardHeader, TokenWidth};
use tokenmill::shards::manifest::{Manifest, ShardEntry, Split};
use tokenmill::tokenizer::TokenizerKind;
use tokenmill::train::{Resume, TrainConfig, Trainer, TrainerOptions};

/// The fixtures' vocabulary (all three).
const VOCAB: usize = 256;

/// The GPT-2 fixture of tests/model_pretrained.rs, which `train --init` also starts from.
const GPT2: &str = "hf_gpt2_tiny";

fn fixture(name: &str) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if name == GPT2 {
        fixtures.join(name)
    } else {
        fixtures.join("hf").join(name)
    }
}

/// The fixture's input ids `(B, T)` u32 and transformers' logits `(B, T, V)` f32.
fn reference(name: &str) -> (Tensor, Tensor) {
    let (t, _) = read_safetensors(&fixture(name).join("reference.safetensors"), &Device::Cpu).unwrap();
    (t["input_ids"].to_dtype(DType::U32).unwrap(), t["logits"].clone())
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// max |a - b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap()) / max_abs(b)
}

const FIXTURES: [&str; 3] = ["llama_gqa_tied", "llama_gqa_untied", "qwen2_gqa"];

#[test]
fn logits_equal_transformers_within_1e5() {
    for name in FIXTURES {
        let (ids, want) = reference(name);
        let model = load_hf(&fixture(name), Precision::FP32, &Device::Cpu).unwrap();
        let r = rel_diff(&model.forward(&ids).unwrap(), &want);
        eprintln!("{name}: max |tokenmill - transformers| / max |logit| = {r:.2e} (logit scale {:.2})", max_abs(&want));
        assert!(max_abs(&want) > 1.0, "{name}: reference logits too small to test anything");
        assert!(r < 1e-5, "{name}: {r:e}");
    }
}

#[test]
fn configs_map_to_the_model_table() {
    let cfg = |name: &str| load_hf(&fixture(name), Precision::FP32, &Device::Cpu).unwrap().config().clone();
    let tied = cfg("llama_gqa_tied");
    assert_eq!(
        (tied.arch, tied.n_layer, tied.n_head, tied.kv_heads(), tied.n_embd),
        (Architecture::Llama, 2, 4, 2, 32)
    );
    assert_eq!((tied.hidden(), tied.rope_base(), tied.eps(), tied.tied()), (48, 500_000.0, 1e-5, true));
    assert_eq!((tied.vocab_size, tied.real_vocab_size, tied.block_size), (VOCAB, VOCAB, 64));
    let untied = cfg("llama_gqa_untied");
    assert_eq!((untied.tied(), untied.eps(), untied.norm_eps), (false, 1e-6, Some(1e-6)));
    let qwen = cfg("qwen2_gqa");
    assert_eq!(
        (qwen.arch, qwen.eps(), qwen.norm_eps, qwen.rope_base(), qwen.tied()),
        (Architecture::Qwen2, 1e-6, None, 1e6, true)
    );
    let model = load_hf(&fixture("qwen2_gqa"), Precision::FP32, &Device::Cpu).unwrap();
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n == "layers.1.self_attn.v_proj.bias"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("o_proj.bias") || n.contains("mlp") && n.ends_with(".bias")));
    // The sharded fixture is read through its index.
    let files = HfFiles::in_dir(&fixture("llama_gqa_untied")).unwrap();
    assert_eq!(files.weights.len(), 3, "{files:?}");
}

#[test]
fn export_then_import_gives_back_every_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let (ids, want) = reference(name);
        let model = load_hf(&fixture(name), Precision::FP32, &Device::Cpu).unwrap();
        let out = tmp.path().join(name);
        export_hf(model.as_ref(), &out).unwrap();
        // The folder holds transformers' own names and tensors, bit for bit.
        let original = HfFiles::in_dir(&fixture(name)).unwrap().read_tensors(&Device::Cpu).unwrap();
        let (exported, _) = read_safetensors(&out.join(HF_WEIGHTS), &Device::Cpu).unwrap();
        let mut keys: Vec<&String> = exported.keys().collect();
        keys.sort();
        let mut want_keys: Vec<&String> = original.keys().collect();
        want_keys.sort();
        assert_eq!(keys, want_keys, "{name}");
        for (k, t) in &exported {
            assert_eq!(max_abs(&(t - &original[k]).unwrap()), 0.0, "{name}: {k}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(HF_CONFIG)).unwrap()).unwrap();
        let back = load_hf(&out, Precision::FP32, &Device::Cpu).unwrap();
        assert_eq!(back.config(), model.config(), "{name}: {json}");
        assert_eq!(rel_diff(&back.forward(&ids).unwrap(), &model.forward(&ids).unwrap()), 0.0, "{name}");
        assert!(rel_diff(&back.forward(&ids).unwrap(), &want) < 1e-5);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("qwen2_gqa").join(HF_CONFIG)).unwrap()).unwrap();
    assert_eq!(
        (json["architectures"][0].as_str(), json["model_type"].as_str()),
        (Some("Qwen2ForCausalLM"), Some("qwen2"))
    );
    assert_eq!((json["use_sliding_window"].as_bool(), json["rms_norm_eps"].as_f64()), (Some(false), Some(1e-6)));
}

/// A copy of fixture `name` with `edit` applied to its config.json.
fn edited_copy(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = root.join(format!("{name}-edited"));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.join(HF_CONFIG);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    dir
}

#[test]
fn unsupported_configs_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: [(&str, &str, Edit, &str); 6] = [
        ("llama_gqa_tied", "mistral", Box::new(|c| c["model_type"] = "mistral".into()), "model_type `mistral`"),
        (
            "llama_gqa_tied",
            "classifier",
            Box::new(|c| c["architectures"] = serde_json::json!(["LlamaForSequenceClassification"])),
            "architectures `LlamaForSequenceClassification`",
        ),
        (
            "llama_gqa_tied",
            "class-only",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("model_type");
                c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
            }),
            "architectures `MistralForCausalLM`",
        ),
        ("llama_gqa_tied", "o-bias", Box::new(|c| c["attention_bias"] = true.into()), "attention_bias = true"),
        ("qwen2_gqa", "window", Box::new(|c| c["use_sliding_window"] = true.into()), "use_sliding_window = true"),
        (
            "qwen2_gqa",
            "yarn",
            Box::new(|c| c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})),
            "rope type `yarn`",
        ),
    ];
    for (name, label, edit, says) in cases {
        let dir = edited_copy(&tmp.path().join(label), name, edit);
        let err = load_hf(&dir, Precision::FP32, &Device::Cpu).err().expect("refused").to_string();
        assert!(err.contains("config.json") && err.contains(says) && !err.contains('\n'), "{label}: {err}");
    }
}

/// A shard directory of `VOCAB`-id tokens (the fixtures' vocabulary) as `prep` writes it: val then train.
fn small_vocab_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut m = Manifest::new("tiny", TokenizerKind::Gpt2, 1 << 20);
    m.tokenizer.vocab_size = VOCAB as u32;
    for (i, split) in [Split::Val, Split::Train].into_iter().enumerate() {
        let tokens: Vec<u32> = (0..4096u32).map(|j| (j * 7 + i as u32 * 13 + j / 5) % VOCAB as u32).collect();
        let file = format!("tiny_{}_{i:06}.bin", split.name());
        let mut bytes = ShardHeader::new(TokenWidth::U16, tokens.len() as u64).encode().to_vec();
        encode_tokens(&tokens, TokenWidth::U16, &mut bytes);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        let xxh3 = tokenmill::util::xxh3_hex(&bytes);
        m.shards.push(ShardEntry { file, split, tokens: tokens.len() as u64, xxh3 });
    }
    m.complete = true;
    m.save(dir).unwrap();
}

/// configs/tiny-cpu.toml on `data`, logging to `log`, starting from `init`, with `extra` overrides.
fn init_config(init: &Path, data: &Path, log: &Path, extra: &[&str]) -> TrainConfig {
    let mut o = vec![
        format!("model.init={:?}", init.display().to_string()),
        format!("data.dir={:?}", data.display().to_string()),
        format!("run.log_dir={:?}", log.display().to_string()),
        "data.seq_len=16".into(),
        "data.total_batch_tokens=128".into(),
        "optim.max_steps=4".into(),
        "eval.sample_every=0".into(),
        "eval.val_every=2".into(),
        "checkpoint.every=2".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::resolve(Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml")), &o).unwrap()
}

fn quiet(resume: Resume) -> TrainerOptions {
    TrainerOptions { resume, ..Default::default() }
}

/// A run from each fixture (and the GPT-2 one): its step-0 model is the HF model (same logits), the config names the
/// init and the model, two steps train, a checkpoint resumes without the HF folder, and the exported checkpoint
/// loads back.
#[test]
fn train_init_starts_from_the_hf_weights_and_records_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_vocab_data(&data);
    for name in FIXTURES.into_iter().chain([GPT2]) {
        // A copy, so that the resume below can show it no longer needs the folder.
        let init = edited_copy(&tmp.path().join("init"), name, |_| {});
        let log = tmp.path().join(format!("log-{name}"));
        let cfg = init_config(&init, &data, &log, &[]);
        assert_eq!(cfg.model.init.as_deref(), Some(init.to_str().unwrap()));
        assert_eq!(cfg.model.field("n_embd").and_then(|v| v.as_integer()), Some(32), "filled from config.json");
        let mut trainer = Trainer::new(cfg, quiet(Resume::No)).unwrap();
        let (ids, want) = reference(name);
        assert!(rel_diff(&trainer.model().forward(&ids).unwrap(), &want) < 1e-5, "{name}: step 0 is the HF model");
        let hf_vocab = want.dim(2).unwrap();
        assert_eq!(
            (trainer.model().config().vocab_size, trainer.model().config().real_vocab_size),
            (hf_vocab, hf_vocab)
        );
        trainer.run(Some(2)).unwrap();
        let saved = std::fs::read_to_string(log.join("config.toml")).unwrap();
        assert!(saved.contains(&format!("init = {:?}", init.display().to_string())), "{saved}");
        let ckpt = tokenmill::train::checkpoint::latest(&log.join("checkpoints")).unwrap();
        let run_cfg = trainer.config().clone();
        drop(trainer);

        // The resume starts from the checkpoint: the init folder is not read again.
        std::fs::remove_dir_all(&init).unwrap();
        let cfg = TrainConfig::resolve_over(&run_cfg, "run", None, &[]).unwrap();
        let mut resumed = Trainer::new(cfg, quiet(Resume::From(ckpt.clone()))).unwrap();
        assert_eq!(resumed.step(), 2);
        resumed.run(None).unwrap();

        let out = tmp.path().join(format!("export-{name}"));
        let model = tokenmill::model::load_checkpoint_model(&ckpt, Precision::FP32, &Device::Cpu).unwrap();
        export_hf(model.as_ref(), &out).unwrap();
        let back = load_hf(&out, Precision::FP32, &Device::Cpu).unwrap();
        assert_eq!(back.config(), model.config(), "{name}");
        assert_eq!(rel_diff(&back.forward(&ids).unwrap(), &model.forward(&ids).unwrap()), 0.0);
    }
}

/// Data whose tokenizer has another vocabulary than the init model's tokenizer.json is refused before anything is
/// written, naming both; the same vocabulary trains.
#[test]
fn init_refuses_data_of_another_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_vocab_data(&data);
    let tokenizer = |ids: usize| {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..ids).map(|i| (format!("t{i}"), i.into())).collect();
        serde_json::json!({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": []}).to_string()
    };
    let init = edited_copy(tmp.path(), "llama_gqa_tied", |_| {});
    std::fs::write(init.join("tokenizer.json"), tokenizer(300)).unwrap();
    let log = tmp.path().join("log");
    let err = Trainer::new(init_config(&init, &data, &log, &[]), quiet(Resume::No)).err().expect("refused").to_string();
    assert!(err.contains("manifest.json") && err.contains("tokenizer.json") && err.contains("300 ids"), "{err}");
    assert!(err.contains(&format!("{VOCAB} ids")), "{err}");
    assert!(!log.join("config.toml").exists(), "nothing written");

    std::fs::write(init.join("tokenizer.json"), tokenizer(VOCAB)).unwrap();
    Trainer::new(init_config(&init, &data, &log, &[]), quiet(Resume::No)).unwrap();
}

/// The binary: `train --init` runs and says what it started from; with `--resume` it is refused.
#[test]
fn cli_init_trains_and_refuses_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_vocab_data(&data);
    let log = tmp.path().join("log");
    let run = |extra: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["train", "--quiet", "--config"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml"))
            .arg("--init")
            .arg(fixture("qwen2_gqa"))
            .arg("--data")
            .arg(&data)
            .arg("--log-dir")
            .arg(&log)
            .args(["--max-steps", "2", "--set", "data.seq_len=16", "--set", "data.total_batch_tokens=128"])
            .args(["--set", "eval.sample_every=0"])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[]);
    assert!(ok && out.contains("model: Qwen2 L=2 NH=4 C=32"), "{out}\n{err}");
    let saved = std::fs::read_to_string(log.join("config.toml")).unwrap();
    assert!(saved.contains("init = ") && saved.contains("qwen2_gqa") && saved.contains("arch = \"qwen2\""), "{saved}");
    let (ok, _, err) = run(&["--resume"]);
    assert!(!ok && err.contains("--init") && err.contains("resume"), "{err}");
}
