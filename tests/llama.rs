//! The Llama-style model (RMSNorm, rotary positions, SwiGLU, no biases, tied or untied head, multi-head or
//! grouped-query attention) behind the same trait: its forward against a naive loop reference, its loss gradient
//! against finite differences (f64), the KV cache with grouped heads, names and sizes, training on one batch, and the
//! weight-file round trip that checkpoints use.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::attention::KvCache;
use tokenmill::model::llama::ffn_hidden;
use tokenmill::model::{
    build_model, load_model_weights, save_model_weights, Architecture, LanguageModel, ModelConfig, Precision,
};

fn cfg() -> ModelConfig {
    ModelConfig {
        arch: Architecture::Llama,
        block_size: 8,
        vocab_size: 24,
        real_vocab_size: 21,
        n_layer: 2,
        n_head: 2,
        n_embd: 12,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    }
}

/// Grouped-query attention (4 query heads on 2 KV heads), an MLP width of its own, theta 500000, an untied head.
fn gqa_cfg() -> ModelConfig {
    ModelConfig {
        n_embd: 16,
        n_head: 4,
        n_kv_head: Some(2),
        ffn_hidden: Some(20),
        rope_theta: Some(500_000.0),
        tie_word_embeddings: Some(false),
        norm_eps: None,
        ..cfg()
    }
}

fn randomise(model: &dyn LanguageModel, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (_, v) in model.parameters() {
        let noise: Vec<f64> = (0..v.elem_count()).map(|_| rng.gen_range(-0.3..0.3)).collect();
        let noise = Tensor::from_vec(noise, v.shape(), v.device()).unwrap().to_dtype(v.dtype()).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

fn tokens(seed: u64, b: usize, t: usize, vocab: usize) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u32> = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

fn weights(model: &dyn LanguageModel) -> HashMap<String, Vec<f64>> {
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        .collect()
}

fn rms(x: &[f64], g: &[f64]) -> Vec<f64> {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + 1e-5).sqrt();
    x.iter().zip(g).map(|(v, g)| v * r * g).collect()
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    (0..w.len() / n).map(|o| w[o * n..(o + 1) * n].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

/// Rotate one head vector at position `pos` (pairs `(i, i + HS/2)`, HF's rotate-half layout).
fn rope(v: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let hs = v.len();
    let half = hs / 2;
    let mut out = vec![0.0; hs];
    for i in 0..half {
        let angle = pos as f64 * theta.powf(-2.0 * i as f64 / hs as f64);
        let (s, c) = angle.sin_cos();
        out[i] = v[i] * c - v[i + half] * s;
        out[i + half] = v[i + half] * c + v[i] * s;
    }
    out
}

/// Naive Llama-style forward for one sequence: logits `[t][v]`. Query head `hd` attends with key/value head
/// `hd / (NH / KV)`.
fn naive_llama(cfg: &ModelConfig, w: &HashMap<String, Vec<f64>>, seq: &[u32]) -> Vec<Vec<f64>> {
    let (c, nh, kv, theta) = (cfg.n_embd, cfg.n_head, cfg.kv_heads(), cfg.rope_base());
    let hs = c / nh;
    let g = |n: &str| w[n].as_slice();
    let mut x: Vec<Vec<f64>> =
        seq.iter().map(|&id| g("embed_tokens.weight")[id as usize * c..(id as usize + 1) * c].to_vec()).collect();
    for l in 0..cfg.n_layer {
        let p = |n: &str| format!("layers.{l}.{n}.weight");
        let hn: Vec<Vec<f64>> = x.iter().map(|xt| rms(xt, g(&p("input_layernorm")))).collect();
        let proj = |name: &str, heads: usize, rotate: bool| -> Vec<Vec<Vec<f64>>> {
            // [t][head][HS]
            hn.iter()
                .enumerate()
                .map(|(t, h)| {
                    let y = matvec(g(&p(name)), h);
                    (0..heads)
                        .map(|hd| {
                            let v = &y[hd * hs..(hd + 1) * hs];
                            if rotate {
                                rope(v, t, theta)
                            } else {
                                v.to_vec()
                            }
                        })
                        .collect()
                })
                .collect()
        };
        let (q, k, v) = (
            proj("self_attn.q_proj", nh, true),
            proj("self_attn.k_proj", kv, true),
            proj("self_attn.v_proj", kv, false),
        );
        for t in 0..seq.len() {
            let mut y = vec![0.0; c];
            for hd in 0..nh {
                let kh = hd / (nh / kv);
                let s: Vec<f64> = (0..=t)
                    .map(|j| q[t][hd].iter().zip(&k[j][kh]).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..hs {
                        y[hd * hs + i] += ej / z * v[j][kh][i];
                    }
                }
            }
            let o = matvec(g(&p("self_attn.o_proj")), &y);
            x[t].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for xt in x.iter_mut() {
            let h = rms(xt, g(&p("post_attention_layernorm")));
            let gate = matvec(g(&p("mlp.gate_proj")), &h);
            let up = matvec(g(&p("mlp.up_proj")), &h);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(a, u)| a / (1.0 + (-a).exp()) * u).collect();
            let m = matvec(g(&p("mlp.down_proj")), &act);
            xt.iter_mut().zip(m).for_each(|(a, b)| *a += b);
        }
    }
    let head = if cfg.tied() { "embed_tokens.weight" } else { "lm_head.weight" };
    x.iter().map(|xt| matvec(g(head), &rms(xt, g("norm.weight")))).collect()
}

fn max_diff_to_naive(model: &dyn LanguageModel, idx: &Tensor) -> (f64, f64) {
    let got = model.forward(idx).unwrap().to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
    let w = weights(model);
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (b, seq) in idx.to_vec2::<u32>().unwrap().iter().enumerate() {
        for (gt, wt) in got[b].iter().zip(naive_llama(model.config(), &w, seq)) {
            for (a, b) in gt.iter().zip(wt) {
                diff = diff.max((a - b).abs());
                scale = scale.max(b.abs());
            }
        }
    }
    (diff, scale)
}

#[test]
fn forward_matches_the_naive_reference() {
    forward_matches_the_naive_reference_for(cfg());
}

#[test]
fn grouped_query_attention_with_an_untied_head_matches_the_naive_reference() {
    forward_matches_the_naive_reference_for(gqa_cfg());
}

fn forward_matches_the_naive_reference_for(c: ModelConfig) {
    let idx = tokens(1, 2, 7, c.real_vocab_size);
    let m64 = build_model(&c, Precision::F64, &Device::Cpu, 4).unwrap();
    randomise(m64.as_ref(), 5);
    let (diff, scale) = max_diff_to_naive(m64.as_ref(), &idx);
    assert!(scale > 0.5, "{scale}");
    assert!(diff < 1e-10, "f64 max |diff| {diff:e}");
    let m32 = build_model(&c, Precision::FP32, &Device::Cpu, 4).unwrap();
    randomise(m32.as_ref(), 5);
    let (diff, _) = max_diff_to_naive(m32.as_ref(), &idx);
    assert!(diff < 1e-4, "f32 max |diff| {diff:e}");
    let mbf = build_model(&c, Precision::BF16, &Device::Cpu, 4).unwrap();
    randomise(mbf.as_ref(), 5);
    let (diff, scale) = max_diff_to_naive(mbf.as_ref(), &idx);
    assert!(diff < 0.05 * scale.max(1.0), "bf16 max |diff| {diff} at scale {scale}");
}

#[test]
fn loss_gradient_matches_finite_differences() {
    loss_gradient_matches_finite_differences_for(cfg());
    loss_gradient_matches_finite_differences_for(gqa_cfg());
}

/// Generation with grouped heads: the cache keeps the KV heads unrepeated, and position by position its logits are
/// the full forward's.
#[test]
fn kv_cache_with_grouped_heads_gives_the_full_forwards_logits() {
    let c = gqa_cfg();
    let model = build_model(&c, Precision::F64, &Device::Cpu, 12).unwrap();
    randomise(model.as_ref(), 13);
    let idx = tokens(14, 2, 6, c.real_vocab_size);
    let full = model.forward(&idx).unwrap().to_vec3::<f64>().unwrap();
    let mut cache = KvCache::new();
    for t in 0..idx.dim(1).unwrap() {
        let step = idx.narrow(1, t, 1).unwrap();
        let last = model.forward_last_cached(&step, &mut cache).unwrap().expect("llama keeps a cache");
        for (row, seq) in last.to_vec2::<f64>().unwrap().iter().zip(&full) {
            let d = row.iter().zip(&seq[t]).map(|(a, w)| (a - w).abs()).fold(0.0, f64::max);
            assert!(d < 1e-10, "position {t}: cached logits differ by {d:e}");
        }
    }
}

fn loss_gradient_matches_finite_differences_for(c: ModelConfig) {
    let model = build_model(&c, Precision::F64, &Device::Cpu, 2).unwrap();
    randomise(model.as_ref(), 3);
    let (idx, targets) = (tokens(6, 2, 6, c.real_vocab_size), tokens(7, 2, 6, c.real_vocab_size));
    let loss = || model.loss(&idx, &targets).unwrap().to_scalar::<f64>().unwrap();
    let grads = model.loss(&idx, &targets).unwrap().backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let eps = 1e-6;
    for (name, var) in model.parameters() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for _ in 0..3 {
            let i = rng.gen_range(0..base.len());
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            assert!((g[i] - fd).abs() <= 1e-8 + 1e-7 * fd.abs(), "{name}[{i}]: autograd {} vs fd {fd}", g[i]);
        }
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
    }
}

#[test]
fn names_shapes_and_no_biases() {
    let c = cfg();
    let model = build_model(&c, Precision::FP32, &Device::Cpu, 0).unwrap();
    let p: Vec<(String, Vec<usize>)> = model.parameters().into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect();
    assert_eq!(p.len(), 1 + 9 * c.n_layer + 1);
    assert_eq!(p[0], ("embed_tokens.weight".to_string(), vec![24, 12]));
    assert_eq!(p[p.len() - 1].0, "norm.weight");
    assert!(p.iter().all(|(n, _)| n.ends_with(".weight")), "no biases anywhere");
    assert!(!p.iter().any(|(n, _)| n.contains("lm_head") || n.contains("wpe")), "tied head, no learned positions");
    let h = ffn_hidden(12);
    let shape = |n: &str| p.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(shape("layers.1.mlp.gate_proj.weight"), [h, 12]);
    assert_eq!(shape("layers.1.mlp.down_proj.weight"), [12, h]);
    assert_eq!(ffn_hidden(768), 2048, "three 2048-wide matrices ~ GPT-2's two 3072-wide ones");
    let preset = ModelConfig::preset("llama-tiny").unwrap();
    assert_eq!(preset.arch, Architecture::Llama);
    let odd = ModelConfig { n_embd: 6, n_head: 2, ..c.clone() };
    assert!(build_model(&odd, Precision::FP32, &Device::Cpu, 0).err().unwrap().to_string().contains("even"));

    // Grouped-query attention and an untied head: k and v are (KV * HS, C), the head is its own tensor, last.
    let g = gqa_cfg();
    let gp: Vec<(String, Vec<usize>)> = build_model(&g, Precision::FP32, &Device::Cpu, 0)
        .unwrap()
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.dims().to_vec()))
        .collect();
    let gshape = |n: &str| gp.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(gshape("layers.0.self_attn.k_proj.weight"), [2 * 4, 16]);
    assert_eq!(gshape("layers.0.mlp.up_proj.weight"), [20, 16]);
    assert_eq!(gp.last().unwrap(), &("lm_head.weight".to_string(), vec![24, 16]));
    let one_b = ModelConfig::preset("llama-1b").unwrap();
    assert_eq!((one_b.kv_heads(), one_b.hidden(), one_b.rope_base(), one_b.tied()), (8, 8192, 500_000.0, true));
    // SmolLM2-135M's shape: its config.json's sizes, and HF's count of its parameters (134,515,008).
    let smol = ModelConfig::preset("llama-smol135m").unwrap();
    assert_eq!((smol.n_layer, smol.n_embd, smol.n_head, smol.kv_heads(), smol.hidden()), (30, 576, 9, 3, 1536));
    assert_eq!(
        (smol.vocab_size, smol.real_vocab_size, smol.rope_base(), smol.eps(), smol.tied()),
        (49_152, 49_152, 100_000.0, 1e-5, true)
    );
    assert_eq!(tokenmill::model::param_specs(&smol).iter().map(|s| s.numel()).sum::<usize>(), 134_515_008);
    let bad = ModelConfig { n_kv_head: Some(3), ..g.clone() };
    assert!(build_model(&bad, Precision::FP32, &Device::Cpu, 0).err().unwrap().to_string().contains("divide"));
    let gpt2_gqa = ModelConfig { arch: Architecture::Gpt2, ..g };
    assert!(build_model(&gpt2_gqa, Precision::FP32, &Device::Cpu, 0).err().unwrap().to_string().contains("gpt2"));
}

#[test]
fn trains_on_one_batch_and_round_trips_its_weights() {
    let c = cfg();
    let model = build_model(&c, Precision::FP32, &Device::Cpu, 11).unwrap();
    let (idx, targets) = (tokens(1, 2, 8, c.real_vocab_size), tokens(2, 2, 8, c.real_vocab_size));
    let first = model.loss(&idx, &targets).unwrap().to_scalar::<f32>().unwrap();
    assert!((first - (c.vocab_size as f32).ln()).abs() < 0.1, "init loss ~ ln(V): {first}");
    let mut last = first;
    for _ in 0..60 {
        let loss = model.loss(&idx, &targets).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        let grads = loss.backward().unwrap();
        for (_, v) in model.parameters() {
            v.set(&(v.as_tensor() - (grads.get(v.as_tensor()).unwrap() * 0.5).unwrap()).unwrap()).unwrap();
        }
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    save_model_weights(model.as_ref(), &file).unwrap();
    let back = load_model_weights(&file, Precision::FP32, &Device::Cpu).unwrap();
    assert_eq!(back.config(), &c);
    let a = model.forward(&idx).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = back.forward(&idx).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}
