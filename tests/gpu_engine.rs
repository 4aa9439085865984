//! The decoder engine (`train::decoder`, run.engine = "cuda") against the autograd engine on the same GPU, from the
//! same initial weights and batches, for GPT-2, for Llama-style models (RMSNorm, rotary, SwiGLU, grouped-query
//! attention, tied and untied heads) and for Qwen2 (the Llama block with q, k, v biases through the qkv matmul's
//! bias epilogue and `bias_grad`; its biases are drawn nonzero here so that a wrong bias shows in the forward):
//! - one micro-step: the loss within 1e-3 relative and every parameter's gradient within 2e-2 relative L2 of the
//!   autograd engine in f32 (TF32 off); the autograd engine in bf16 is measured against the same reference and
//!   printed beside it, for scale (it was 7.8e-3 from f64 on the H100);
//! - determinism: two engines from the same weights run three optimizer steps of two micro-steps with bitwise equal
//!   losses, gradient norms and weights;
//! - resume: an engine rebuilt from another's weights and optimizer state continues it bit for bit, and the
//!   autograd engine resumes the explicit engine's state within bf16 tolerance;
//! - evaluation: `eval_loss` equals the training forward's loss bit for bit.
//!
//! Shapes: a 2-layer GPT-2 with C = 128 (two heads of 64), V = 512, B = 4, T = 100 (not a multiple of any tile), the
//! classifier in chunks of 128 rows (the last one short); a 2-layer Llama with C = 256, 4 query heads on 2 KV heads,
//! H = 200, an untied head, and its Qwen2 twin (norm eps 1e-6); and GPT-2 124M and the Llama-124M preset at B = 2,
//! T = 1024 (the real matmul shapes).
//!
//! Without a CUDA device (CI, or a build without `--features cuda`) the tests print "skipped" and pass. On the GPU
//! machine they run from the GPU test binary (tests/gpu/main.rs; `scripts/gpu-kernel-check.sh`).

#[path = "common/mod.rs"]
mod common;

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use tokenmill::device::set_tf32;
    use tokenmill::model::{build_model, model_from_tensors, Architecture, LanguageModel, ModelConfig, Precision};
    use tokenmill::shards::loader::Batch;
    use tokenmill::train::decoder::{DecoderEngine, EngineOptions};
    use tokenmill::train::engine::{optimizer_step, Autograd, Engine};
    use tokenmill::train::optim::AdamWConfig;
    use tokenmill::train::step::SingleProcess;

    const SEED: u64 = 7;
    const ADAM: AdamWConfig = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };

    fn small() -> ModelConfig {
        ModelConfig {
            arch: Architecture::Gpt2,
            block_size: 128,
            vocab_size: 512,
            real_vocab_size: 500,
            n_layer: 2,
            n_head: 2,
            n_embd: 128,
            n_kv_head: None,
            ffn_hidden: None,
            rope_theta: None,
            tie_word_embeddings: None,
            norm_eps: None,
        }
    }

    /// A small Llama-style model with grouped-query attention (4 query heads on 2 KV heads), an MLP width that is
    /// not a multiple of 64, rotary theta 500000 and an untied head.
    fn small_llama() -> ModelConfig {
        ModelConfig {
            arch: Architecture::Llama,
            n_embd: 256,
            n_head: 4,
            n_kv_head: Some(2),
            ffn_hidden: Some(200),
            rope_theta: Some(500_000.0),
            tie_word_embeddings: Some(false),
            norm_eps: None,
            ..small()
        }
    }

    /// `small_llama` as Qwen2: q, k and v biases, RMSNorm eps 1e-6 (the row's defaults).
    fn small_qwen2() -> ModelConfig {
        ModelConfig { arch: Architecture::Qwen2, ..small_llama() }
    }

    fn options(chunk: usize) -> EngineOptions {
        EngineOptions { classifier_chunk: chunk, ..EngineOptions::default().with_env_overrides().unwrap().0 }
    }

    fn batches(cfg: &ModelConfig, b: usize, t: usize, count: usize, seed: u64) -> Vec<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let ids: Vec<u32> = (0..b * t + 1).map(|_| rng.gen_range(0..cfg.real_vocab_size as u32)).collect();
                Batch { x: ids[..b * t].to_vec(), y: ids[1..].to_vec(), batch_size: b, seq_len: t }
            })
            .collect()
    }

    fn model(cfg: &ModelConfig, dev: &Device, compute: DType) -> Box<dyn LanguageModel> {
        let m = build_model(cfg, Precision::with_compute(compute), dev, SEED).unwrap();
        if cfg.arch == Architecture::Qwen2 {
            // Biases start at zero, which would hide a bias read from the wrong place: draw them, seeded.
            for (i, (_, v)) in m.parameters().into_iter().enumerate().filter(|(_, (n, _))| n.ends_with(".bias")) {
                let mut rng = ChaCha8Rng::seed_from_u64(100 + i as u64);
                let vals: Vec<f32> = (0..v.elem_count()).map(|_| rng.gen_range(-0.5..0.5)).collect();
                v.set(&Tensor::from_vec(vals, v.dims(), dev).unwrap().to_dtype(v.dtype()).unwrap()).unwrap();
            }
        }
        m
    }

    fn engine(cfg: &ModelConfig, dev: &Device, (b, t): (usize, usize), chunk: usize) -> DecoderEngine {
        DecoderEngine::new(model(cfg, dev, DType::BF16), dev, (b, t), ADAM, options(chunk)).unwrap()
    }

    fn host(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
    }

    fn rel_l2(a: &[f32], reference: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(reference).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = reference.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// (loss, named gradients) of one micro-step of the autograd engine in `compute`.
    fn autograd_grads(
        cfg: &ModelConfig,
        dev: &Device,
        compute: DType,
        batch: &Batch,
    ) -> (f32, HashMap<String, Vec<f32>>) {
        let m = model(cfg, dev, compute);
        let names: Vec<String> = m.parameters().into_iter().map(|(n, _)| n).collect();
        let mut e = Autograd::new(m, dev, ADAM).unwrap();
        e.begin_step().unwrap();
        e.micro_step(batch, 1).unwrap();
        let (loss, grads) = e.accumulated(&SingleProcess).unwrap();
        let grads =
            names.into_iter().zip(grads).map(|(n, g)| (n, host(&g.expect("every parameter has a gradient")))).collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    }

    fn one_micro_step_matches(cfg: &ModelConfig, (b, t): (usize, usize), chunk: usize) {
        let Some(dev) = super::common::cuda_device() else { return };
        set_tf32(false);
        let batch = &batches(cfg, b, t, 1, 1)[0];
        let (loss_ref, g_ref) = autograd_grads(cfg, &dev, DType::F32, batch);
        let (loss_bf, g_bf) = autograd_grads(cfg, &dev, DType::BF16, batch);
        let mut e = engine(cfg, &dev, (b, t), chunk);
        let eval = e.eval_loss(batch).unwrap();
        e.begin_step().unwrap();
        e.micro_step(batch, 1).unwrap();
        let grads = e.gradients().unwrap();
        let out = e.finish_step(0.0, 0.0, &SingleProcess).unwrap();
        let rel = |l: f32| ((l - loss_ref) / loss_ref).abs();
        println!(
            "cuda engine {:?} {}x{} L={} C={}: loss {} (autograd f32 {loss_ref}, bf16 {loss_bf}): rel {:.2e} (autograd bf16 {:.2e})",
            cfg.arch,
            b,
            t,
            cfg.n_layer,
            cfg.n_embd,
            out.loss,
            rel(out.loss),
            rel(loss_bf)
        );
        assert_eq!(eval.to_bits(), out.loss.to_bits(), "eval forward {eval} vs training forward {}", out.loss);
        assert!(rel(out.loss) < 1e-3, "loss {} vs {loss_ref}", out.loss);
        // Every gradient's distance from the f32 autograd engine, beside the autograd engine's own in bf16 (the
        // rounding any bf16 implementation pays), largest first; then the bound.
        let mut rows: Vec<(f64, f64, String)> = grads
            .iter()
            .map(|(name, g)| (rel_l2(&host(g), &g_ref[name]), rel_l2(&g_bf[name], &g_ref[name]), name.clone()))
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (r, rb, name) in rows.iter().take(4) {
            println!("  gradient {name}: relative L2 {r:.2e} (autograd bf16 {rb:.2e})");
        }
        let worst_bf = rows.iter().map(|r| r.1).fold(0f64, f64::max);
        println!(
            "  worst gradient relative L2 {:.2e} ({}); autograd bf16's worst {worst_bf:.2e}",
            rows[0].0, rows[0].2
        );
        // The bound: 2e-2, or where bf16 itself lands further from f32 on a tensor (the autograd engine in bf16 does,
        // on Llama-124M's k_proj at T = 1024: 2.2e-2 on the H100), 1.25x what bf16 costs there. A key bias's gradient
        // is a cancellation residue: without rotary positions it is exactly 0 (a bias on every key shifts a query's
        // scores by one constant, which softmax ignores), with them it is what the rotation leaves, so bf16
        // rounding of dK is large beside it: on Qwen2's small case (H100, 2026-12-07) the autograd engine in bf16
        // lands 3.6e-2 from f32 and the cuda engine (cuDNN attention, another rounding order) 5.0e-2; those get 1.5x.
        for (r, rb, name) in &rows {
            let factor = if name.ends_with("k_proj.bias") { 1.5 } else { 1.25 };
            let bound = 2e-2f64.max(factor * rb);
            assert!(
                *r < bound,
                "{name}: gradient relative L2 {r:.3e} from the f32 autograd engine (bound {bound:.2e}; autograd bf16 {rb:.3e})"
            );
        }
    }

    pub fn micro_step_matches_autograd_small() {
        one_micro_step_matches(&small(), (4, 100), 128);
    }

    pub fn micro_step_matches_autograd_small_llama() {
        one_micro_step_matches(&small_llama(), (4, 100), 128);
    }

    pub fn micro_step_matches_autograd_small_qwen2() {
        one_micro_step_matches(&small_qwen2(), (4, 100), 128);
    }

    #[test]
    fn micro_step_matches_autograd_124m() {
        one_micro_step_matches(&ModelConfig::preset("gpt2-124m").unwrap(), (2, 1024), 16384);
    }

    #[test]
    fn micro_step_matches_autograd_llama_124m() {
        one_micro_step_matches(&ModelConfig::preset("llama-124m").unwrap(), (2, 1024), 16384);
    }

    /// Every stage of the forward (each kernel or matmul) against its reference computed in f32 from the engine's own
    /// input to that stage: a wrong kernel shows at its own line instead of as a wrong loss.
    pub fn each_forward_kernel_matches_its_reference() {
        let Some(dev) = super::common::cuda_device() else { return };
        set_tf32(false);
        let cfg = small();
        let (b, t) = (4, 100);
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let m = model(&cfg, &dev, DType::BF16);
        let p: HashMap<String, Tensor> =
            m.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect();
        let mut e = DecoderEngine::new(m, &dev, (b, t), ADAM, options(512)).unwrap();
        let batch = &batches(&cfg, b, t, 1, 3)[0];
        let acts: HashMap<String, Tensor> = e.forward_activations(batch).unwrap().into_iter().collect();
        for (name, t) in e.weights().unwrap() {
            let (got, want) = (host(&t), host(&p[&name]));
            let bad = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                bad.is_none(),
                "engine weight {name}[{}] = {} but the model has {}",
                bad.unwrap(),
                got[bad.unwrap()],
                want[bad.unwrap()]
            );
        }
        let f = |n: &str| acts[n].to_dtype(DType::F32).unwrap();
        // The engine's matmuls read bf16 copies of the weights; its LayerNorms and residual biases the f32 masters.
        let w16 = |n: &str| p[n].to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let w = |n: &str| p[n].clone();
        let linear = |x: &Tensor, wn: &str, bias: Option<Tensor>| {
            let y = x.matmul(&w16(wn).t().unwrap()).unwrap();
            match bias {
                Some(bb) => y.broadcast_add(&bb).unwrap(),
                None => y,
            }
        };
        // The projections' outputs are bf16 (as under autocast) before they join the f32 residual stream.
        let round16 = |x: &Tensor| x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let ln = |x: &Tensor, pre: &str| {
            tokenmill::model::ops::layer_norm_slow(x, &w(&format!("{pre}.weight")), &w(&format!("{pre}.bias")), 1e-5)
                .unwrap()
        };
        let ids = Tensor::from_slice(&batch.x, b * t, &dev).unwrap();
        let pos: Vec<u32> = (0..b * t).map(|i| (i % t) as u32).collect();
        let pos = Tensor::from_slice(&pos, b * t, &dev).unwrap();
        let res0 =
            (w("wte.weight").index_select(&ids, 0).unwrap() + w("wpe.weight").index_select(&pos, 0).unwrap()).unwrap();
        let qkv = f("qkv").reshape((b, t, 3, nh, c / nh)).unwrap();
        let head =
            |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let att = tokenmill::model::attention::causal_attention_slow(&head(0), &head(1), &head(2)).unwrap();
        let att = att.transpose(1, 2).unwrap().contiguous().unwrap().reshape((b * t, c)).unwrap();
        let logits = f("lnf").matmul(&w16("wte.weight").t().unwrap()).unwrap();
        let targets = Tensor::from_slice(&batch.y, b * t, &dev).unwrap();
        let losses = tokenmill::model::ops::token_cross_entropy_slow(&f("logits"), &targets)
            .unwrap()
            .reshape((b * t, 1))
            .unwrap();
        let checks: Vec<(&str, Tensor, f64)> = vec![
            ("res0", res0, 1e-6),
            ("ln1", ln(&f("res0"), "h.0.ln_1"), 1e-2),
            ("qkv", linear(&f("ln1"), "h.0.attn.c_attn.weight", Some(w16("h.0.attn.c_attn.bias"))), 1e-2),
            ("atty", att, 2e-2),
            (
                "res_mid",
                (round16(&linear(&f("atty"), "h.0.attn.c_proj.weight", Some(w16("h.0.attn.c_proj.bias")))) + f("res0"))
                    .unwrap(),
                1e-3,
            ),
            ("ln2", ln(&f("res_mid"), "h.0.ln_2"), 1e-2),
            ("fch", linear(&f("ln2"), "h.0.mlp.c_fc.weight", Some(w16("h.0.mlp.c_fc.bias"))), 1e-2),
            ("fch_act", tokenmill::model::ops::gelu_tanh_slow(&f("fch")).unwrap(), 1e-2),
            (
                "res1",
                (round16(&linear(&f("fch_act"), "h.0.mlp.c_proj.weight", Some(w16("h.0.mlp.c_proj.bias"))))
                    + f("res_mid"))
                .unwrap(),
                1e-3,
            ),
            ("lnf", ln(&f("resL"), "ln_f"), 1e-2),
            ("logits", logits, 1e-2),
            ("losses", losses, 1e-5),
        ];
        let show = |t: &Tensor| host(t).iter().take(6).map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(" ");
        println!("ln1 engine    {}\nln1 reference {}", show(&f("ln1")), show(&checks[1].1));
        println!("res0 row 0    {}", show(&f("res0")));
        let mut bad = Vec::new();
        for (name, reference, tol) in checks {
            let r = rel_l2(&host(&f(name)), &host(&reference));
            println!("stage {name:<9} relative L2 {r:.3e} (bound {tol:.0e})");
            if r.is_nan() || r >= tol {
                bad.push(format!("{name} {r:.3e}"));
            }
        }
        assert!(bad.is_empty(), "stages off their references: {bad:?}");
    }

    /// The Llama path's stages (embedding without positions, RMSNorm, the fused q|k|v product with rotary positions,
    /// grouped-query attention, gate|up and SwiGLU, the untied head) against references in f32 from the engine's own
    /// inputs, as `each_forward_kernel_matches_its_reference` does for GPT-2; for Llama and for Qwen2 (q, k, v
    /// biases added by the product's epilogue, in bf16, before the rotation).
    pub fn each_llama_forward_kernel_matches_its_reference() {
        llama_forward_kernels_match_for(&small_llama());
        llama_forward_kernels_match_for(&small_qwen2());
    }

    fn llama_forward_kernels_match_for(cfg: &ModelConfig) {
        let Some(dev) = super::common::cuda_device() else { return };
        set_tf32(false);
        let cfg = cfg.clone();
        let (b, t) = (4, 100);
        let (c, nh, nkv, hs, hid) = (cfg.n_embd, cfg.n_head, cfg.kv_heads(), cfg.head_size(), cfg.hidden());
        let m = model(&cfg, &dev, DType::BF16);
        let p: HashMap<String, Tensor> =
            m.parameters().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect();
        let mut e = DecoderEngine::new(m, &dev, (b, t), ADAM, options(512)).unwrap();
        let batch = &batches(&cfg, b, t, 1, 3)[0];
        let acts: HashMap<String, Tensor> = e.forward_activations(batch).unwrap().into_iter().collect();
        let f = |n: &str| acts[n].to_dtype(DType::F32).unwrap();
        let w16 = |n: &str| p[n].to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let w = |n: &str| p[n].clone();
        let linear = |x: &Tensor, wn: &str| x.matmul(&w16(wn).t().unwrap()).unwrap();
        let round16 = |x: &Tensor| x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let rms = |x: &Tensor, n: &str| tokenmill::model::ops::rms_norm(x, &w(n), cfg.eps()).unwrap();
        let l0 = |n: &str| format!("layers.0.{n}.weight");
        let ids = Tensor::from_slice(&batch.x, b * t, &dev).unwrap();
        let res0 = w("embed_tokens.weight").index_select(&ids, 0).unwrap();
        // q|k|v before rotation (plus the row's biases, in bf16 as the epilogue reads them), then rotated as the model
        // does (HF's rotate-half layout).
        let qkv_names = cfg.arch.spec().block(0).qkv;
        assert_eq!(qkv_names.biases.len(), if cfg.arch == Architecture::Qwen2 { 3 } else { 0 });
        let part = |i: usize| {
            let y = linear(&f("ln1"), &qkv_names.weights[i]);
            match qkv_names.biases.get(i) {
                Some(bias) => y.broadcast_add(&w16(bias)).unwrap(),
                None => y,
            }
        };
        let q_k_v = Tensor::cat(&[part(0), part(1), part(2)], 1).unwrap();
        let (cos, sin) = tokenmill::model::ops::rotary_tables(t, hs, cfg.rope_base(), DType::F32, &dev).unwrap();
        let heads = |x: &Tensor, off: usize, n: usize| {
            x.narrow(1, off, n * hs)
                .unwrap()
                .reshape((b, t, n, hs))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let flat =
            |x: &Tensor, n: usize| x.transpose(1, 2).unwrap().contiguous().unwrap().reshape((b * t, n * hs)).unwrap();
        let rot = |x: Tensor| tokenmill::model::ops::apply_rotary(&x, &cos, &sin).unwrap();
        let qkv_ref = Tensor::cat(
            &[
                flat(&rot(heads(&q_k_v, 0, nh)), nh),
                flat(&rot(heads(&q_k_v, c, nkv)), nkv),
                q_k_v.narrow(1, c + nkv * hs, nkv * hs).unwrap(),
            ],
            1,
        )
        .unwrap();
        let qkv = f("qkv");
        let rep = |x: Tensor| tokenmill::model::attention::repeat_kv(&x, nh / nkv).unwrap();
        let att = tokenmill::model::attention::causal_attention_slow(
            &heads(&qkv, 0, nh),
            &rep(heads(&qkv, c, nkv)),
            &rep(heads(&qkv, c + nkv * hs, nkv)),
        )
        .unwrap();
        let att = flat(&att, nh);
        let gate_up =
            Tensor::cat(&[linear(&f("ln2"), &l0("mlp.gate_proj")), linear(&f("ln2"), &l0("mlp.up_proj"))], 1).unwrap();
        let fch = f("fch");
        let act = (tokenmill::model::ops::silu(&fch.narrow(1, 0, hid).unwrap()).unwrap()
            * fch.narrow(1, hid, hid).unwrap())
        .unwrap();
        let logits = f("lnf").matmul(&w16("lm_head.weight").t().unwrap()).unwrap();
        let targets = Tensor::from_slice(&batch.y, b * t, &dev).unwrap();
        let losses = tokenmill::model::ops::token_cross_entropy_slow(&f("logits"), &targets)
            .unwrap()
            .reshape((b * t, 1))
            .unwrap();
        let checks: Vec<(&str, Tensor, f64)> = vec![
            ("res0", res0, 0.0),
            ("ln1", rms(&f("res0"), &l0("input_layernorm")), 1e-2),
            ("qkv", qkv_ref, 1e-2),
            ("atty", att, 2e-2),
            ("res_mid", (round16(&linear(&f("atty"), &l0("self_attn.o_proj"))) + f("res0")).unwrap(), 1e-3),
            ("ln2", rms(&f("res_mid"), &l0("post_attention_layernorm")), 1e-2),
            ("fch", gate_up, 1e-2),
            ("fch_act", act, 1e-2),
            ("res1", (round16(&linear(&f("fch_act"), &l0("mlp.down_proj"))) + f("res_mid")).unwrap(), 1e-3),
            ("lnf", rms(&f("resL"), "norm.weight"), 1e-2),
            ("logits", logits, 1e-2),
            ("losses", losses, 1e-5),
        ];
        let mut bad = Vec::new();
        for (name, reference, tol) in checks {
            let r = rel_l2(&host(&f(name)), &host(&reference));
            println!("{:?} stage {name:<9} relative L2 {r:.3e} (bound {tol:.0e})", cfg.arch);
            if r.is_nan() || r > tol {
                bad.push(format!("{name} {r:.3e}"));
            }
        }
        assert!(bad.is_empty(), "{:?} stages off their references: {bad:?}", cfg.arch);
    }

    /// `steps` optimizer steps of 2 micro-steps; (loss, norm) per step.
    fn run(e: &mut dyn Engine, data: &[Batch], steps: std::ops::Range<usize>) -> Vec<(u32, u32)> {
        steps
            .map(|s| {
                let o = optimizer_step::<candle_core::Error>(
                    e,
                    2,
                    &SingleProcess,
                    6e-4 * (s + 1) as f64,
                    1.0,
                    |k| Ok(data[2 * s + k].clone()),
                    |l| candle_core::Error::Msg(format!("loss {l}")),
                )
                .unwrap();
                (o.loss.to_bits(), o.grad_norm.to_bits())
            })
            .collect()
    }

    fn weights(e: &dyn Engine) -> HashMap<String, Tensor> {
        e.model().parameters().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect()
    }

    #[test]
    fn deterministic_and_resumable() {
        deterministic_and_resumable_for(&small());
    }

    #[test]
    fn deterministic_and_resumable_llama() {
        deterministic_and_resumable_for(&small_llama());
    }

    #[test]
    fn deterministic_and_resumable_qwen2() {
        deterministic_and_resumable_for(&small_qwen2());
    }

    fn deterministic_and_resumable_for(cfg: &ModelConfig) {
        let Some(dev) = super::common::cuda_device() else { return };
        let cfg = cfg.clone();
        let data = batches(&cfg, 4, 100, 6, 2);
        let (mut a, mut b) = (engine(&cfg, &dev, (4, 100), 128), engine(&cfg, &dev, (4, 100), 128));
        let (ra, rb) = (run(&mut a, &data, 0..2), run(&mut b, &data, 0..2));
        assert_eq!(ra, rb, "two runs from the same weights");
        let (wa, wb) = (weights(&a), weights(&b));
        for (n, t) in &wa {
            assert_eq!(host(t), host(&wb[n]), "{n} after 2 steps");
        }

        // Rebuild from a's weights and optimizer state, as `--resume` does, and continue both.
        let state: HashMap<String, Tensor> = a.optimizer_state().unwrap().into_iter().collect();
        let restored = model_from_tensors(&cfg, Precision::BF16, &dev, wa.clone(), std::path::Path::new("a")).unwrap();
        let mut c = DecoderEngine::new(restored, &dev, (4, 100), ADAM, options(128)).unwrap();
        c.load_optimizer_state(&state, a.optimizer_steps()).unwrap();
        let (ra3, rc3) = (run(&mut a, &data, 2..3), run(&mut c, &data, 2..3));
        assert_eq!(ra3, rc3, "resumed engine continues bit for bit");

        // The autograd engine resumes the explicit engine's checkpoint (same names and files).
        let restored = model_from_tensors(&cfg, Precision::BF16, &dev, wa, std::path::Path::new("a")).unwrap();
        let mut g = Autograd::new(restored, &dev, ADAM).unwrap();
        g.load_optimizer_state(&state, 2).unwrap();
        let rg3 = run(&mut g, &data, 2..3);
        let (la, lg) = (f32::from_bits(ra3[0].0), f32::from_bits(rg3[0].0));
        println!("{:?} step 3 after resume: cuda engine {la}, autograd (bf16) {lg}", cfg.arch);
        assert!(((la - lg) / la).abs() < 5e-3, "{la} vs {lg}");
    }

    /// The bias gradients on their side stream (`[engine] bias_grad_stream`, the default) and on the main stream:
    /// the same kernels in the same order, so the same bits after steps of accumulation and updates (a missing wait
    /// would read a buffer the main stream already overwrote, or let the optimizer read a bias gradient unfinished).
    #[test]
    fn bias_gradients_on_a_side_stream_change_no_bit() {
        for cfg in [small(), small_qwen2()] {
            let Some(dev) = super::common::cuda_device() else { return };
            let data = batches(&cfg, 4, 100, 6, 3);
            let build = |side: bool| {
                let opts = EngineOptions { bias_grad_stream: side, ..options(128) };
                DecoderEngine::new(model(&cfg, &dev, DType::BF16), &dev, (4, 100), ADAM, opts).unwrap()
            };
            let (mut on, mut off) = (build(true), build(false));
            assert!(on.describe().contains("side stream true") && off.describe().contains("side stream false"));
            assert_eq!(run(&mut on, &data, 0..3), run(&mut off, &data, 0..3), "{:?}: losses and norms", cfg.arch);
            let (won, woff) = (weights(&on), weights(&off));
            for (n, t) in &won {
                assert_eq!(host(t), host(&woff[n]), "{:?}: {n} after 3 steps", cfg.arch);
            }
            println!(
                "{:?}: bias gradients on the side stream = on the main stream, bit for bit over 3 steps",
                cfg.arch
            );
        }
    }

    #[test]
    fn scoring_on_the_engine_matches_the_model_and_leaves_training_alone() {
        scoring_matches_for(&small());
        scoring_matches_for(&small_llama());
        scoring_matches_for(&small_qwen2());
    }

    /// The engine's evaluation forward (`DecoderEngine::token_losses`, another shape than training's) against the
    /// candle model's `token_losses` in bf16 on the same weights; and a run that scores between its steps trains
    /// bit for bit as one that does not.
    fn scoring_matches_for(cfg: &ModelConfig) {
        let Some(dev) = super::common::cuda_device() else { return };
        let cfg = cfg.clone();
        let data = batches(&cfg, 4, 100, 6, 2);
        let (mut a, mut b) = (engine(&cfg, &dev, (4, 100), 128), engine(&cfg, &dev, (4, 100), 128));
        let (ra, rb) = (run(&mut a, &data, 0..1), run(&mut b, &data, 0..1));
        assert_eq!(ra, rb);
        // 6 rows of 64 positions (384 of the engine's 400), some targets ignored as HellaSwag's context positions are.
        let (rows, t) = (6, 64);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let tokens: Vec<u32> = (0..rows * t).map(|_| rng.gen_range(0..cfg.real_vocab_size as u32)).collect();
        let targets: Vec<u32> = (0..rows * t)
            .map(|i| if i % 3 == 0 { u32::MAX } else { rng.gen_range(0..cfg.real_vocab_size as u32) })
            .collect();
        let got = a.token_losses(&tokens, &targets, rows, t).unwrap();
        let idx = Tensor::from_vec(tokens.clone(), (rows, t), &dev).unwrap();
        let tgt = Tensor::from_vec(targets.clone(), (rows, t), &dev).unwrap();
        // The engine's model computes in f32 (its Vars are the masters): a bf16 twin of the same weights.
        let w = weights(&a);
        let twin = model_from_tensors(&cfg, Precision::BF16, &dev, w, std::path::Path::new("a")).unwrap();
        let want = host(&twin.token_losses(&idx, &tgt).unwrap());
        let keep: Vec<usize> = (0..rows * t).filter(|&i| targets[i] != u32::MAX).collect();
        let (g, w): (Vec<f32>, Vec<f32>) = keep.iter().map(|&i| (got[i], want[i])).unzip();
        let r = rel_l2(&g, &w);
        println!("{:?} engine scoring vs the bf16 model: rel L2 {r:.2e} over {} positions", cfg.arch, keep.len());
        assert!(r < 1e-2, "engine scoring off the model: rel L2 {r:.3e}");
        assert_eq!(a.token_losses(&tokens, &targets, rows, t).unwrap(), got, "scoring repeats bit for bit");
        assert!(a.token_losses(&tokens[..2 * 128], &targets[..2 * 128], 2, 128).is_err(), "T past the engine's");
        // Training after scoring is unchanged.
        let (ra2, rb2) = (run(&mut a, &data, 1..2), run(&mut b, &data, 1..2));
        assert_eq!(ra2, rb2, "a step after scoring");
    }
}

/// Each forward stage against its reference, then the small model's micro-step against the autograd engine; named
/// as scripts/gpu-kernel-check.sh expects of the test it runs under compute-sanitizer memcheck.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu() {
    cuda::each_forward_kernel_matches_its_reference();
    cuda::each_llama_forward_kernel_matches_its_reference();
    cuda::micro_step_matches_autograd_small();
    cuda::micro_step_matches_autograd_small_llama();
    cuda::micro_step_matches_autograd_small_qwen2();
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_engine_needs_cuda() {
    println!("skipped: the cuda engine tests need a CUDA build and device");
}
