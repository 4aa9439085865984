//! GPT-2's forward against a naive reference written here with plain loops (no tensor library), in f64 and f32;
//! the bf16 compute path against the same reference; init, names, parameter counts, causality, errors, and the
//! weight-file round trip.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tokenmill::model::{
    build_model, load_checkpoint_model, load_model_weights, param_specs, save_model_weights, Architecture,
    LanguageModel, ModelConfig, Precision,
};

fn tiny_cfg() -> ModelConfig {
    ModelConfig {
        arch: Architecture::Gpt2,
        block_size: 8,
        vocab_size: 40,
        real_vocab_size: 37,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    }
}

/// Parameters as f64 host vectors, by name.
fn weights(model: &dyn LanguageModel) -> HashMap<String, Vec<f64>> {
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        .collect()
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + 1e-5).sqrt();
    x.iter().zip(g).zip(b).map(|((v, g), b)| (v - mean) * rstd * g + b).collect()
}

/// `w (out, in)` row-major, `x (in)` -> `(out)`.
fn matvec(w: &[f64], bias: Option<&[f64]>, x: &[f64]) -> Vec<f64> {
    let n_in = x.len();
    let n_out = w.len() / n_in;
    (0..n_out)
        .map(|o| {
            w[o * n_in..(o + 1) * n_in].iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + bias.map_or(0.0, |b| b[o])
        })
        .collect()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Naive GPT-2: logits `[b][t][v]` for `ids[b][t]`.
fn naive_gpt2(cfg: &ModelConfig, w: &HashMap<String, Vec<f64>>, ids: &[Vec<u32>]) -> Vec<Vec<Vec<f64>>> {
    let c = cfg.n_embd;
    let nh = cfg.n_head;
    let hs = c / nh;
    let g = |n: &str| w[n].as_slice();
    ids.iter()
        .map(|seq| {
            let t_len = seq.len();
            let mut x: Vec<Vec<f64>> = seq
                .iter()
                .enumerate()
                .map(|(t, &id)| {
                    (0..c).map(|i| g("wte.weight")[id as usize * c + i] + g("wpe.weight")[t * c + i]).collect()
                })
                .collect();
            for l in 0..cfg.n_layer {
                let p = |n: &str| format!("h.{l}.{n}");
                let qkv: Vec<Vec<f64>> = x
                    .iter()
                    .map(|xt| {
                        let h = layer_norm(xt, g(&p("ln_1.weight")), g(&p("ln_1.bias")));
                        matvec(g(&p("attn.c_attn.weight")), Some(g(&p("attn.c_attn.bias"))), &h)
                    })
                    .collect();
                for t in 0..t_len {
                    let mut y = vec![0.0; c];
                    for head in 0..nh {
                        let q = &qkv[t][head * hs..(head + 1) * hs];
                        let scores: Vec<f64> = (0..=t)
                            .map(|s| {
                                let k = &qkv[s][c + head * hs..c + (head + 1) * hs];
                                q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt()
                            })
                            .collect();
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for (s, es) in e.iter().enumerate() {
                            for i in 0..hs {
                                y[head * hs + i] += es / z * qkv[s][2 * c + head * hs + i];
                            }
                        }
                    }
                    let a = matvec(g(&p("attn.c_proj.weight")), Some(g(&p("attn.c_proj.bias"))), &y);
                    x[t].iter_mut().zip(&a).for_each(|(xv, av)| *xv += av);
                }
                for xt in x.iter_mut() {
                    let h = layer_norm(xt, g(&p("ln_2.weight")), g(&p("ln_2.bias")));
                    let f: Vec<f64> = matvec(g(&p("mlp.c_fc.weight")), Some(g(&p("mlp.c_fc.bias"))), &h)
                        .into_iter()
                        .map(gelu)
                        .collect();
                    let m = matvec(g(&p("mlp.c_proj.weight")), Some(g(&p("mlp.c_proj.bias"))), &f);
                    xt.iter_mut().zip(&m).for_each(|(xv, mv)| *xv += mv);
                }
            }
            x.iter()
                .map(|xt| matvec(g("wte.weight"), None, &layer_norm(xt, g("ln_f.weight"), g("ln_f.bias"))))
                .collect()
        })
        .collect()
}

fn ids_tensor(ids: &[Vec<u32>]) -> Tensor {
    let (b, t) = (ids.len(), ids[0].len());
    Tensor::from_vec(ids.concat(), (b, t), &Device::Cpu).unwrap()
}

fn sample_ids(cfg: &ModelConfig, b: usize, t: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..b)
        .map(|i| (0..t).map(|j| ((i * 7 + j * 13) as u32 * 31 + salt) % cfg.real_vocab_size as u32).collect())
        .collect()
}

/// Max |model - naive| over all logits, and the naive logits' max magnitude.
fn compare(model: &dyn LanguageModel, ids: &[Vec<u32>]) -> (f64, f64) {
    let got = model.forward(&ids_tensor(ids)).unwrap().to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
    let want = naive_gpt2(model.config(), &weights(model), ids);
    let mut max_diff: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for (gb, wb) in got.iter().zip(&want) {
        for (gt, wt) in gb.iter().zip(wb) {
            assert_eq!(gt.len(), model.config().vocab_size);
            for (g, w) in gt.iter().zip(wt) {
                max_diff = max_diff.max((g - w).abs());
                scale = scale.max(w.abs());
            }
        }
    }
    eprintln!("max |model - naive| = {max_diff:e} (logit scale {scale:.3})");
    (max_diff, scale)
}

/// Trained-looking weights: fresh init has tiny c_proj outputs and unit LayerNorms, which would let a swapped or
/// missing term hide. Perturb every parameter (biases and gains included) by N(0, 0.1^2)-ish deterministic noise.
fn randomise(model: &dyn LanguageModel) {
    for (k, (_, v)) in model.parameters().into_iter().enumerate() {
        let n = v.elem_count();
        let noise: Vec<f64> = (0..n).map(|i| (((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5) * 0.3).collect();
        let noise = Tensor::from_vec(noise, v.shape(), v.device()).unwrap().to_dtype(v.dtype()).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

#[test]
fn f64_forward_matches_the_naive_reference() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::F64, &Device::Cpu, 7).unwrap();
    randomise(model.as_ref());
    let (diff, scale) = compare(model.as_ref(), &sample_ids(&cfg, 2, 8, 3));
    assert!(scale > 0.5, "logits too small to test anything: {scale}");
    assert!(diff < 1e-10, "f64 max |diff| {diff:e}");
}

#[test]
fn f32_forward_matches_the_naive_reference() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 7).unwrap();
    randomise(model.as_ref());
    let (diff, scale) = compare(model.as_ref(), &sample_ids(&cfg, 3, 5, 11));
    assert!(scale > 0.5, "{scale}");
    assert!(diff < 1e-4, "f32 max |diff| {diff:e}");
}

#[test]
fn loss_is_the_mean_cross_entropy_of_the_reference_logits() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::F64, &Device::Cpu, 1).unwrap();
    randomise(model.as_ref());
    let ids = sample_ids(&cfg, 2, 6, 5);
    let targets = sample_ids(&cfg, 2, 6, 9);
    let logits = naive_gpt2(&cfg, &weights(model.as_ref()), &ids);
    let mut want = 0.0;
    for (lb, tb) in logits.iter().zip(&targets) {
        for (lt, &tgt) in lb.iter().zip(tb) {
            let m = lt.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + lt.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            want += lse - lt[tgt as usize];
        }
    }
    want /= 12.0;
    let loss = model.loss(&ids_tensor(&ids), &ids_tensor(&targets)).unwrap();
    assert_eq!(loss.dims(), &[] as &[usize]);
    let got = loss.to_scalar::<f64>().unwrap();
    assert!((got - want).abs() < 1e-10, "loss {got} vs reference {want}");
}

#[test]
fn bf16_compute_tracks_the_reference_and_keeps_fp32_masters() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::BF16, &Device::Cpu, 7).unwrap();
    randomise(model.as_ref());
    let ids = sample_ids(&cfg, 2, 8, 3);
    let logits = model.forward(&ids_tensor(&ids)).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "forward returns reduce-dtype logits");
    let (diff, scale) = compare(model.as_ref(), &ids);
    // bf16 keeps 8 mantissa bits: ~0.4% per matmul input, a few percent of the logit scale after 2 layers.
    assert!(diff < 0.05 * scale.max(1.0), "bf16 max |diff| {diff} at scale {scale}");
    let loss = model.loss(&ids_tensor(&ids), &ids_tensor(&sample_ids(&cfg, 2, 8, 4))).unwrap();
    assert_eq!(loss.dtype(), DType::F32);
    let grads = loss.backward().unwrap();
    for (name, var) in model.parameters() {
        assert_eq!(var.dtype(), DType::F32, "{name}: master weights stay fp32");
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient through the bf16 path"));
        assert_eq!(g.dtype(), DType::F32, "{name}");
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm.is_finite() && norm > 0.0, "{name}: gradient norm^2 {norm}");
    }
}

#[test]
fn attention_is_causal() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::F64, &Device::Cpu, 3).unwrap();
    randomise(model.as_ref());
    let a = vec![vec![1u32, 2, 3, 4, 5, 6]];
    let mut b = a.clone();
    b[0][4] = 30;
    let la = model.forward(&ids_tensor(&a)).unwrap().to_vec3::<f64>().unwrap();
    let lb = model.forward(&ids_tensor(&b)).unwrap().to_vec3::<f64>().unwrap();
    assert_eq!(la[0][..4], lb[0][..4], "positions before the change must not see it");
    assert_ne!(la[0][4], lb[0][4]);
}

#[test]
fn parameter_names_follow_the_hf_checkpoint() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 0).unwrap();
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 + 12 * cfg.n_layer + 2);
    assert_eq!(
        &names[..6],
        [
            "wte.weight",
            "wpe.weight",
            "h.0.ln_1.weight",
            "h.0.ln_1.bias",
            "h.0.attn.c_attn.weight",
            "h.0.attn.c_attn.bias"
        ]
    );
    assert_eq!(names[names.len() - 2..], ["ln_f.weight", "ln_f.bias"]);
    assert!(!names.iter().any(|n| n.contains("lm_head")), "lm_head is tied to wte: one parameter");
    let shapes: HashMap<String, Vec<usize>> =
        model.parameters().into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect();
    assert_eq!(shapes["h.1.attn.c_attn.weight"], [48, 16], "Linear weights are (out, in)");
    assert_eq!(shapes["h.1.mlp.c_proj.weight"], [16, 64]);
    assert_eq!(shapes["wte.weight"], [40, 16], "padded vocabulary rows");
}

#[test]
fn preset_parameter_counts() {
    let count =
        |name: &str| -> usize { param_specs(&ModelConfig::preset(name).unwrap()).iter().map(|s| s.numel()).sum() };
    // build-nanogpt's 124M with the padded 50304 vocabulary and a tied head.
    assert_eq!(count("gpt2-124m"), 124_475_904);
    assert_eq!(count("gpt2"), 124_475_904);
    // 350M / 774M / 1558M: HF's published sizes (354,823,168 / 774,030,080 / 1,557,611,200 at vocab 50257) plus
    // 47 padded rows of C each.
    assert_eq!(count("gpt2-350m"), 354_823_168 + 47 * 1024);
    assert_eq!(count("gpt2-774m"), 774_030_080 + 47 * 1280);
    assert_eq!(count("gpt2-1558m"), 1_557_611_200 + 47 * 1600);
    let tiny = ModelConfig::preset("tiny").unwrap();
    assert_eq!((tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size, tiny.vocab_size), (2, 2, 64, 64, 50304));
    let model = build_model(&tiny, Precision::FP32, &Device::Cpu, 0).unwrap();
    assert_eq!(model.num_parameters(), count("tiny"));
    assert!(ModelConfig::preset("gpt3").unwrap_err().to_string().contains("gpt2-124m"));
}

fn std_of(t: &Tensor) -> (f64, f64) {
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
}

#[test]
fn init_is_build_nanogpt_and_seeded() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let a = build_model(&cfg, Precision::FP32, &Device::Cpu, 1337).unwrap();
    let p: HashMap<String, Tensor> = a.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let (mean, std) = std_of(&p["wte.weight"]);
    assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 2e-4, "wte N(0, 0.02): {mean} {std}");
    let (_, std) = std_of(&p["wpe.weight"]);
    assert!((std - 0.02).abs() < 1e-3, "wpe {std}");
    let (_, std) = std_of(&p["h.0.attn.c_attn.weight"]);
    assert!((std - 0.02).abs() < 1e-3, "c_attn {std}");
    // Residual projections: 0.02 * (2 * n_layer)^-0.5 = 0.01 for two layers.
    let (_, std) = std_of(&p["h.1.attn.c_proj.weight"]);
    assert!((std - 0.01).abs() < 5e-4, "attn.c_proj {std}");
    let (_, std) = std_of(&p["h.1.mlp.c_proj.weight"]);
    assert!((std - 0.01).abs() < 5e-4, "mlp.c_proj {std}");
    for (n, t) in &p {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if n.ends_with(".bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{n} starts at zero");
        } else if n.contains("ln_") {
            assert!(v.iter().all(|&x| x == 1.0), "{n} starts at one");
        }
    }
    let same = build_model(&cfg, Precision::FP32, &Device::Cpu, 1337).unwrap();
    let other = build_model(&cfg, Precision::FP32, &Device::Cpu, 1338).unwrap();
    for (((n, x), (_, y)), (_, z)) in a.parameters().into_iter().zip(same.parameters()).zip(other.parameters()) {
        let (x, y, z) = (x.flatten_all().unwrap(), y.flatten_all().unwrap(), z.flatten_all().unwrap());
        assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap(), "{n}: same seed, same bits");
        if n.ends_with("weight") && !n.contains("ln_") {
            assert_ne!(x.to_vec1::<f32>().unwrap(), z.to_vec1::<f32>().unwrap(), "{n}: another seed differs");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 0).unwrap();
    let too_long = Tensor::zeros((1, 9), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&too_long).unwrap_err().to_string().contains("block_size"));
    let ids = Tensor::zeros((2, 4), DType::U32, &Device::Cpu).unwrap();
    let wrong_targets = Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(model.loss(&ids, &wrong_targets).unwrap_err().to_string().contains("targets"));
    let floats = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&floats).is_err());
    let bad = ModelConfig { n_embd: 15, ..cfg };
    assert!(build_model(&bad, Precision::FP32, &Device::Cpu, 0).err().unwrap().to_string().contains("n_head"));
}

#[test]
fn sgd_overfits_one_batch() {
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 0).unwrap();
    let ids = ids_tensor(&sample_ids(&cfg, 2, 8, 1));
    let targets = ids_tensor(&sample_ids(&cfg, 2, 8, 2));
    let params = model.parameters();
    let first = model.loss(&ids, &targets).unwrap().to_scalar::<f32>().unwrap();
    assert!((first - (cfg.vocab_size as f32).ln()).abs() < 0.1, "init loss ~ ln(V): {first}");
    let mut last = first;
    for _ in 0..60 {
        let loss = model.loss(&ids, &targets).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        let grads = loss.backward().unwrap();
        for (_, v) in &params {
            let g = grads.get(v.as_tensor()).unwrap();
            v.set(&(v.as_tensor() - (g * 0.5).unwrap()).unwrap()).unwrap();
        }
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn weight_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg();
    let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 5).unwrap();
    randomise(model.as_ref());
    let ids = ids_tensor(&sample_ids(&cfg, 2, 8, 3));
    let want = model.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let file = dir.path().join("weights.safetensors");
    save_model_weights(model.as_ref(), &file).unwrap();
    let back = load_model_weights(&file, Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!(back.config(), &cfg, "the config travels in the file's metadata");
    assert_eq!(back.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);

    // A checkpoint directory whose weights lack our metadata (candle's plain writer) takes the config from
    // state.json's `model` field, as the trainer writes it.
    let ckpt = dir.path().join("step_000010");
    std::fs::create_dir(&ckpt).unwrap();
    let plain: HashMap<String, Tensor> =
        model.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&plain, ckpt.join("model.safetensors")).unwrap();
    let err = load_checkpoint_model(&ckpt, Precision::FP32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("state.json"), "{err}");
    let state = serde_json::json!({ "step": 10, "model": cfg });
    std::fs::write(ckpt.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    let back = load_checkpoint_model(&ckpt, Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!(back.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);

    // Another size is an error naming the file and tensor, never a partial load.
    let other = ModelConfig { n_embd: 8, ..cfg.clone() };
    std::fs::write(ckpt.join("state.json"), serde_json::to_vec(&serde_json::json!({ "model": other })).unwrap())
        .unwrap();
    let err = load_checkpoint_model(&ckpt, Precision::FP32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors") && err.contains("wte.weight") && err.contains("shape"), "{err}");
}

/// Issue 12 item 9: sampling computed (B, T, V) logits for every position (161 GB for 100,000 samples). The head now
/// runs on the last position only, and gives the last row of the full forward (to rounding: the matmul has another
/// shape), for both architectures.
#[test]
fn forward_last_is_the_last_row_of_forward() {
    for arch in [Architecture::Gpt2, Architecture::Llama] {
        let cfg = ModelConfig { arch, ..tiny_cfg() };
        let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 3).unwrap();
        let ids = ids_tensor(&sample_ids(&cfg, 3, 8, 1));
        let full = model.forward(&ids).unwrap(); // (B, T, V)
        let want = full.narrow(1, 7, 1).unwrap().squeeze(1).unwrap().to_vec2::<f32>().unwrap();
        let got = model.forward_last(&ids).unwrap().to_vec2::<f32>().unwrap(); // (B, V)
        let diff = got.iter().flatten().zip(want.iter().flatten()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-6, "{arch:?}: differs by {diff}");
    }
}

/// Issue 12 item 9: generation re-ran the whole context for every token (1000 tokens: 28 s on a 3.3M-parameter
/// model). With the KV cache a prompt then one token at a time gives the full forward's logits at every position.
#[test]
fn kv_cache_gives_the_full_forwards_logits_position_by_position() {
    use tokenmill::model::attention::KvCache;
    for arch in [Architecture::Gpt2, Architecture::Llama] {
        let cfg = ModelConfig { arch, ..tiny_cfg() };
        let model = build_model(&cfg, Precision::FP32, &Device::Cpu, 5).unwrap();
        let ids = sample_ids(&cfg, 2, 8, 3);
        let full = model.forward(&ids_tensor(&ids)).unwrap(); // (B, T, V)
        let mut cache = KvCache::new();
        let mut worst = 0f32;
        // The first 5 tokens at once (a prompt), then one at a time.
        for (from, to) in [(0, 5), (5, 6), (6, 7), (7, 8)] {
            let part: Vec<Vec<u32>> = ids.iter().map(|s| s[from..to].to_vec()).collect();
            let got = model.forward_last_cached(&ids_tensor(&part), &mut cache).unwrap().expect("this model caches");
            let want = full.narrow(1, to - 1, 1).unwrap().squeeze(1).unwrap();
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            worst = worst.max(d);
        }
        assert_eq!(cache.seen(), 8);
        assert!(worst < 1e-5, "{arch:?}: cached logits differ by {worst}");
        // Past the block size the cache refuses (generation then slides the window without it).
        let one = ids_tensor(&[vec![1], vec![2]]);
        assert!(model.forward_last_cached(&one, &mut cache).is_err(), "{arch:?}");
    }
}
