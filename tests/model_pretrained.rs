//! The Hugging Face GPT-2 loader and exporter against fixtures made outside Rust (scripts/make_hf_fixture.py):
//!
//! - tests/fixtures/hf_gpt2_tiny/: a random tiny GPT2LMHeadModel saved by transformers' `save_pretrained`
//!   (`transformer.`-prefixed keys, no lm_head), with the logits transformers computed;
//! - tests/fixtures/hf_gpt2_tiny/numpy/: the same weights laid out as OpenAI's `gpt2` hub file (bare keys plus the
//!   old `attn.bias` / `attn.masked_bias` buffers), with logits from a naive float64 numpy GPT-2.
//!
//! tokenmill must reproduce both within 1e-4, and an exported folder must load back to the same logits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenmill::model::hf::{export_hf, load_hf, load_hf_gpt2, HF_CONFIG, HF_WEIGHTS};
use tokenmill::model::store::{read_safetensors, write_safetensors};
use tokenmill::model::{build_model, load_model, Architecture, LanguageModel, ModelConfig, Precision};

fn fixture(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_gpt2_tiny").join(sub)
}

/// The fixture's input ids `(B, T)` u32 and reference logits `(B, T, V)` f32.
fn reference(dir: &Path) -> (Tensor, Tensor) {
    let path = dir.join("reference.safetensors");
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/make_hf_fixture.py` (transformers; the GPU machine has it) or \
         `--backend numpy` and commit its output",
        path.display()
    );
    let (t, _) = read_safetensors(&path, &Device::Cpu).unwrap();
    (t["input_ids"].to_dtype(DType::U32).unwrap(), t["logits"].clone())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn check_fixture(dir: &Path, precision: Precision, tol: f64) {
    let (ids, want) = reference(dir);
    let model = load_hf_gpt2(dir, precision, &Device::Cpu).unwrap();
    let got = model.forward(&ids).unwrap();
    let diff = max_abs_diff(&got, &want);
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    eprintln!("{}: max |tokenmill - reference| = {diff:e} (logit scale {scale})", dir.display());
    assert!(scale > 1.0, "reference logits too small to test anything");
    assert!(diff < tol, "{}: max |diff| {diff:e} >= {tol:e}", dir.display());
}

#[test]
fn transformers_fixture_logits_within_1e4() {
    check_fixture(&fixture(""), Precision::FP32, 1e-4);
}

#[test]
fn numpy_fixture_logits_within_1e4() {
    check_fixture(&fixture("numpy"), Precision::FP32, 1e-4);
    // In f64 the only error left is the reference's own f32 rounding.
    check_fixture(&fixture("numpy"), Precision::F64, 1e-5);
}

#[test]
fn both_key_layouts_are_read() {
    let (numpy, _) = read_safetensors(&fixture("numpy").join(HF_WEIGHTS), &Device::Cpu).unwrap();
    assert!(numpy.contains_key("h.0.attn.c_attn.weight") && numpy.contains_key("h.0.attn.bias"));
    let (hf, meta) = read_safetensors(&fixture("").join(HF_WEIGHTS), &Device::Cpu).unwrap();
    assert!(hf.contains_key("transformer.h.0.attn.c_attn.weight"), "{:?}", hf.keys().collect::<Vec<_>>());
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    // Conv1D layout on disk: (in, out) = (C, 3C).
    assert_eq!(hf["transformer.h.0.attn.c_attn.weight"].dims(), &[32, 96]);
}

#[test]
fn load_model_dispatches_hf_folders() {
    let dir = fixture("numpy");
    let (ids, want) = reference(&dir);
    let model = load_model(dir.to_str().unwrap(), Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!(model.config().arch, Architecture::Gpt2);
    assert_eq!((model.config().vocab_size, model.config().real_vocab_size, model.config().block_size), (512, 512, 64));
    assert!(max_abs_diff(&model.forward(&ids).unwrap(), &want) < 1e-4);
    let err = load_model("no-such-model", Precision::FP32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("no-such-model") && err.contains("gpt2"), "{err}");
}

#[test]
fn export_round_trips_through_the_hf_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("numpy");
    let (ids, want) = reference(&src);
    let model = load_hf_gpt2(&src, Precision::FP32, &Device::Cpu).unwrap();
    let out = tmp.path().join("exported");
    export_hf(&model, &out).unwrap();

    let (tensors, meta) = read_safetensors(&out.join(HF_WEIGHTS), &Device::Cpu).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"), "transformers refuses files without it");
    assert!(tensors.keys().all(|k| k.starts_with("transformer.")), "save_pretrained's key layout");
    assert!(!tensors.contains_key("lm_head.weight"), "the head is tied: not stored");
    assert_eq!(tensors.len(), 2 + 12 * 2 + 2);
    assert_eq!(tensors["transformer.h.1.mlp.c_fc.weight"].dims(), &[32, 128], "Conv1D (in, out)");
    // Bit-identical weights after the two transposes.
    let (orig, _) = read_safetensors(&src.join(HF_WEIGHTS), &Device::Cpu).unwrap();
    for (k, t) in &tensors {
        let bare = k.strip_prefix("transformer.").unwrap();
        assert_eq!(max_abs_diff(t, &orig[bare]), 0.0, "{k}");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(HF_CONFIG)).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["architectures"][0], "GPT2LMHeadModel");
    assert_eq!((config["vocab_size"].as_u64(), config["n_positions"].as_u64()), (Some(512), Some(64)));
    assert_eq!(
        (config["n_layer"].as_u64(), config["n_head"].as_u64(), config["n_embd"].as_u64()),
        (Some(2), Some(4), Some(32))
    );
    assert_eq!(config["activation_function"], "gelu_new");

    let back = load_hf_gpt2(&out, Precision::FP32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&back.forward(&ids).unwrap(), &want) < 1e-4);

    // Never into a folder that already holds something.
    let err = export_hf(&model, &out).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn export_crops_the_padded_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        arch: Architecture::Gpt2,
        block_size: 8,
        vocab_size: 64,
        real_vocab_size: 50,
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    };
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 9).unwrap();
    let out = tmp.path().join("hf");
    export_hf(model.as_ref(), &out).unwrap();
    let back = load_hf_gpt2(&out, Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!((back.config().vocab_size, back.config().real_vocab_size), (50, 50));
    let ids = Tensor::from_vec(vec![1u32, 7, 49, 3], (1, 4), &Device::Cpu).unwrap();
    let full = model.forward(&ids).unwrap().narrow(2, 0, 50).unwrap();
    assert_eq!(max_abs_diff(&back.forward(&ids).unwrap(), &full), 0.0);
}

/// A Llama checkpoint as `LlamaForCausalLM`'s folder and back (grouped-query attention, untied head, its own MLP
/// width and rotary base, a padded vocabulary cropped): HF's key names and config fields, the same logits over the
/// real vocabulary. (That transformers loads the folder with the same loss is checked on the GPU machine:
/// scripts/device-run.sh hf-llama.)
#[test]
fn llama_exports_as_llama_for_causal_lm_and_imports_back() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        arch: Architecture::Llama,
        block_size: 8,
        vocab_size: 64,
        real_vocab_size: 50,
        n_layer: 2,
        n_head: 4,
        n_embd: 16,
        n_kv_head: Some(2),
        ffn_hidden: Some(24),
        rope_theta: Some(500_000.0),
        tie_word_embeddings: Some(false),
        norm_eps: None,
    };
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 9).unwrap();
    let out = tmp.path().join("hf-llama");
    export_hf(model.as_ref(), &out).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(HF_CONFIG)).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!((json["num_key_value_heads"].as_u64(), json["intermediate_size"].as_u64()), (Some(2), Some(24)));
    assert_eq!((json["rope_theta"].as_f64(), json["tie_word_embeddings"].as_bool()), (Some(500_000.0), Some(false)));
    let (tensors, _) = tokenmill::model::store::read_safetensors(&out.join(HF_WEIGHTS), &Device::Cpu).unwrap();
    assert_eq!(tensors["model.embed_tokens.weight"].dims(), [50, 16]);
    assert_eq!(tensors["lm_head.weight"].dims(), [50, 16]);
    assert_eq!(tensors["model.layers.1.self_attn.k_proj.weight"].dims(), [8, 16]);
    let back = load_hf(&out, Precision::FP32, &Device::Cpu).unwrap();
    let want = ModelConfig { vocab_size: 50, real_vocab_size: 50, ..cfg };
    assert_eq!(back.config(), &want);
    let ids = Tensor::from_vec(vec![1u32, 7, 49, 3], (1, 4), &Device::Cpu).unwrap();
    let full = model.forward(&ids).unwrap().narrow(2, 0, 50).unwrap();
    assert_eq!(max_abs_diff(&back.forward(&ids).unwrap(), &full), 0.0);
    // A tied one: no lm_head.weight in the folder, and back to the same model.
    let tied =
        build_model(&ModelConfig { tie_word_embeddings: None, ..want.clone() }, Precision::FP32, &Device::Cpu, 3)
            .unwrap();
    let out = tmp.path().join("hf-llama-tied");
    export_hf(tied.as_ref(), &out).unwrap();
    let (tensors, _) = tokenmill::model::store::read_safetensors(&out.join(HF_WEIGHTS), &Device::Cpu).unwrap();
    assert!(!tensors.contains_key("lm_head.weight"));
    let back = load_hf(&out, Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&back.forward(&ids).unwrap(), &tied.forward(&ids).unwrap()), 0.0);
}

/// A copy of the numpy fixture with `edit` applied to its tensors and `config_edit` to its config.json.
fn broken_copy(
    root: &Path,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
    config_edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let src = fixture("numpy");
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    let (mut tensors, _) = read_safetensors(&src.join(HF_WEIGHTS), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let mut list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&dir.join(HF_WEIGHTS), &list, &BTreeMap::new()).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join(HF_CONFIG)).unwrap()).unwrap();
    config_edit(&mut config);
    std::fs::write(dir.join(HF_CONFIG), serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |dir: &Path| load_hf_gpt2(dir, Precision::FP32, &Device::Cpu).err().expect("must fail").to_string();

    let d = broken_copy(tmp.path(), "missing", |t| drop(t.remove("h.1.ln_2.bias")), |_| {});
    let err = load(&d);
    assert!(err.contains("h.1.ln_2.bias") && err.contains("missing") && err.contains("model.safetensors"), "{err}");

    let d = broken_copy(
        tmp.path(),
        "untied",
        |t| {
            let wte = t["wte.weight"].clone();
            t.insert("lm_head.weight".into(), (wte * 2.0).unwrap());
        },
        |_| {},
    );
    assert!(load(&d).contains("untied"), "{}", load(&d));

    // A tied lm_head.weight stored explicitly is fine.
    let d = broken_copy(
        tmp.path(),
        "tied",
        |t| {
            let wte = t["wte.weight"].clone();
            t.insert("lm_head.weight".into(), wte);
        },
        |_| {},
    );
    assert!(load_hf_gpt2(&d, Precision::FP32, &Device::Cpu).is_ok());

    let d = broken_copy(tmp.path(), "relu", |_| {}, |c| c["activation_function"] = "relu".into());
    let err = load(&d);
    assert!(err.contains("relu") && err.contains("config.json"), "{err}");

    let d = broken_copy(tmp.path(), "wider", |_| {}, |c| c["n_embd"] = 64.into());
    let err = load(&d);
    assert!(err.contains("shape") && err.contains("wte.weight"), "{err}");

    let d = broken_copy(
        tmp.path(),
        "extra",
        |t| drop(t.insert("h.0.attn.rotary".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())),
        |_| {},
    );
    assert!(load(&d).contains("h.0.attn.rotary"), "{}", load(&d));
}
