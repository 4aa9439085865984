//! The training step on the GPU against the CPU in f64: the tiny GPT-2 (fused flash attention, HS = 64, and the
//! composed attention, HS = 16) and the Llama-style model, with identical weights, compute the loss and the gradient
//! of every parameter on CUDA in f32 and in bf16 compute (fp32 master weights), through `train::step::micro_step`,
//! the function the trainer and `tokenmill bench` run. The reference is the same model on the CPU in f64, whose
//! gradients tests/model_grad.rs holds against central finite differences; here central finite differences are also
//! taken directly on the CUDA f32 path, at the largest-gradient element of every parameter.
//!
//! Without a CUDA device (CI, this crate built without `--features cuda`) the CUDA tests print
//! "skipped: no CUDA device" and pass; the same comparisons then run CPU f32 / CPU bf16 against CPU f64
//! (`cpu_matches_cpu_f64`, `cpu_finite_differences`), so the shared logic is exercised everywhere. On a GPU machine
//! the binary comes from `scripts/gpu-kernel-check.sh build` (.dist/kernels/gpu_model.gz) and
//! `scripts/gpu-correctness.sh grads` runs it.
//!
//! Metric: relative L2 error per tensor, ||g - g_f64|| / ||g_f64||, over every parameter's gradient (and
//! |loss - loss_f64| / loss_f64). Tolerances per compute dtype, with what the CPU twin measured (2 cores; the GPU
//! bounds leave room for cuBLAS's split-K reductions and the fused kernels' tiled f32 accumulation):
//! - f32: loss 1e-5 relative, every gradient 1e-4 relative L2. Measured on CPU: loss <= 7e-8, gradients <= 1.0e-6
//!   (reduction order only; two orders of magnitude of headroom).
//! - bf16: loss 1e-2 relative, every gradient 5e-2 relative L2. Measured on CPU: loss <= 1e-4, gradients <= 1.5e-2
//!   (attention / MLP biases and weights: matmul inputs rounded to 8 mantissa bits, 2^-9 relative per element,
//!   compounded through 2 layers forward and backward).
//! - finite differences on the f32 path: central, h = 2e-2, at the largest-|g| element of every parameter, minus the
//!   difference quotient's truncation error at that h (measured on the f64 reference: same function, same h);
//!   |fd - truncation - g| <= 2e-3 |g| + 1e-3 max|g|. What remains is the f32 rounding of a ~5-valued loss divided
//!   by 2h: measured on CPU at most 21% of the bound (~3e-5 absolute against gradients of 5e-3 .. 0.15). A backward
//!   that drops or mis-scales a term is off by a sizeable fraction of g. `FD_VERBOSE=1` prints every element.
//!
//! The CLI feature the end-to-end check needs (`tokenmill train --save-init`, the step-0 weights a reference
//! implementation starts from) is tested here too (`save_init_writes_the_fresh_weights`).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use common::cuda_device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::{build_model, model_from_tensors, Architecture, LanguageModel, ModelConfig, Precision};
use tokenmill::train::step::micro_step;

/// Per-dtype bounds (see the module doc for where they come from).
struct Tolerance {
    /// |loss - loss_f64| / loss_f64.
    loss_rel: f64,
    /// ||g - g_f64||_2 / ||g_f64||_2, per parameter tensor.
    grad_rel_l2: f64,
}

fn tolerance(dt: DType) -> Tolerance {
    match dt {
        DType::F32 => Tolerance { loss_rel: 1e-5, grad_rel_l2: 1e-4 },
        DType::BF16 => Tolerance { loss_rel: 1e-2, grad_rel_l2: 5e-2 },
        other => panic!("no tolerance for compute dtype {other:?}"),
    }
}

/// Finite differences on the f32 path: step h, and |fd - truncation - autograd| <= FD_REL |autograd| + FD_ABS max|g|.
const FD_H: f64 = 2e-2;
const FD_REL: f64 = 2e-3;
const FD_ABS: f64 = 1e-3;

/// The models under test: (name, config, batch B, sequence length T). T = 40 is not a multiple of the flash
/// kernel's tiles, so the masked tail tile runs too.
fn cases() -> Vec<(&'static str, ModelConfig, usize, usize)> {
    let cfg = |arch, n_embd, n_head| ModelConfig {
        arch,
        block_size: 48,
        vocab_size: 128,
        real_vocab_size: 120,
        n_layer: 2,
        n_head,
        n_embd,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    };
    vec![
        // HS = 64: CUDA routes attention to the fused FlashAttention kernel (kernels::attention).
        ("gpt2-hs64", cfg(Architecture::Gpt2, 128, 2), 2, 40),
        // HS = 16: the composed attention (mask, softmax, two matmuls) on CUDA.
        ("gpt2-hs16", cfg(Architecture::Gpt2, 32, 2), 2, 40),
        // Llama-style: RMSNorm, rotary, SwiGLU, fused attention (HS = 64).
        ("llama-hs64", cfg(Architecture::Llama, 128, 2), 2, 40),
    ]
}

/// A fixed f64 CPU model for `cfg`: build_model's init, then every parameter perturbed (LayerNorm gains off 1,
/// biases off 0) so no gradient term is accidentally zero. Also returns its weights as name -> f64 CPU tensor.
fn reference_model(cfg: &ModelConfig, seed: u64) -> (Box<dyn LanguageModel>, HashMap<String, Tensor>) {
    let model = build_model(cfg, Precision::F64, &Device::Cpu, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1000);
    let mut weights = HashMap::new();
    for (name, v) in model.parameters() {
        let n = v.elem_count();
        let noise: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0) * 0.05).collect();
        let noise = Tensor::from_vec(noise, v.dims(), &Device::Cpu).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        weights.insert(name, v.as_tensor().copy().unwrap());
    }
    (model, weights)
}

fn tokens(rng: &mut ChaCha8Rng, b: usize, t: usize, vocab: usize) -> Vec<u32> {
    (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Loss and one gradient per parameter (model order), through the trainer's `micro_step` (one micro-step, so the
/// loss is not divided). A parameter without a gradient is a failure: backward stopped somewhere.
fn loss_and_grads(model: &dyn LanguageModel, x: &Tensor, y: &Tensor) -> (f64, Vec<(String, Vec<f64>)>) {
    let params = model.parameters();
    let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let (loss, grads) = micro_step(model, &vars, x, y, 1).unwrap();
    let grads = params
        .iter()
        .zip(grads)
        .map(|((name, _), g)| {
            let g = g.unwrap_or_else(|| panic!("{name}: no gradient (backward stops before it)"));
            (name.clone(), f64s(&g))
        })
        .collect();
    (f64s(&loss)[0], grads)
}

/// f64 loss and gradients of the reference: `LanguageModel::loss` directly (micro_step reports the loss in f32).
fn reference_loss_and_grads(model: &dyn LanguageModel, x: &Tensor, y: &Tensor) -> (f64, Vec<(String, Vec<f64>)>) {
    let loss = model.loss(x, y).unwrap();
    assert_eq!(loss.dtype(), DType::F64);
    let store = loss.backward().unwrap();
    let grads = model
        .parameters()
        .into_iter()
        .map(|(name, v)| {
            let g = store.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no f64 gradient"));
            (name, f64s(g))
        })
        .collect();
    (loss.to_scalar::<f64>().unwrap(), grads)
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ||a - b|| / ||b||.
fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    l2(&diff) / l2(b).max(1e-30)
}

/// What one (model, device, dtype) comparison measured.
struct Report {
    loss_rel: f64,
    worst_grad: (String, f64),
}

/// Build `name`'s model on `device` computing in `dt` from the reference weights, and compare its loss and every
/// gradient with the f64 CPU reference. Panics (naming the tensor) past `tolerance(dt)`; returns what it measured.
fn compare_with_f64(name: &str, cfg: &ModelConfig, b: usize, t: usize, device: &Device, dt: DType) -> Report {
    let (reference, weights) = reference_model(cfg, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (xs, ys) = (tokens(&mut rng, b, t, cfg.real_vocab_size), tokens(&mut rng, b, t, cfg.real_vocab_size));
    let cpu_x = Tensor::from_vec(xs.clone(), (b, t), &Device::Cpu).unwrap();
    let cpu_y = Tensor::from_vec(ys.clone(), (b, t), &Device::Cpu).unwrap();
    let (ref_loss, ref_grads) = reference_loss_and_grads(reference.as_ref(), &cpu_x, &cpu_y);

    let model =
        model_from_tensors(cfg, Precision::with_compute(dt), device, weights, Path::new("reference weights")).unwrap();
    let x = Tensor::from_vec(xs, (b, t), device).unwrap();
    let y = Tensor::from_vec(ys, (b, t), device).unwrap();
    let (loss, grads) = loss_and_grads(model.as_ref(), &x, &y);

    let tol = tolerance(dt);
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    let what = format!("{dev} {name} {dt:?}");
    let loss_rel = (loss - ref_loss).abs() / ref_loss.abs();
    assert!(
        loss_rel <= tol.loss_rel,
        "{what}: loss {loss} vs f64 {ref_loss}: relative error {loss_rel:.2e} > {:.0e}",
        tol.loss_rel
    );
    let mut worst = (String::new(), 0.0f64);
    for ((pname, g), (_, rg)) in grads.iter().zip(&ref_grads) {
        let e = rel_l2(g, rg);
        assert!(e.is_finite(), "{what}: {pname} gradient is not finite");
        assert!(
            e <= tol.grad_rel_l2,
            "{what}: d loss / d {pname}: relative L2 error {e:.2e} > {:.0e} (||g_f64|| = {:.3e})",
            tol.grad_rel_l2,
            l2(rg)
        );
        if e >= worst.1 {
            worst = (pname.clone(), e);
        }
    }
    // One greppable line per comparison: scripts/gpu-correctness.sh puts these in its summary.
    println!(
        "GRADCHECK {what}: loss {loss:.6} (f64 {ref_loss:.6}, rel {loss_rel:.1e} <= {:.0e}); {} gradients, worst rel L2 \
         {:.1e} ({}) <= {:.0e}",
        tol.loss_rel,
        grads.len(),
        worst.1,
        worst.0,
        tol.grad_rel_l2
    );
    Report { loss_rel, worst_grad: worst }
}

/// Central finite differences of the loss on `device` in f32 compute, at the largest-|gradient| element of every
/// parameter, against that path's own autograd gradient. The f64 CPU reference's difference quotient at the same h
/// is printed beside it: their gap is the f32 rounding, the reference's gap to autograd the truncation error.
fn finite_differences(name: &str, cfg: &ModelConfig, b: usize, t: usize, device: &Device) -> usize {
    let (reference, weights) = reference_model(cfg, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (xs, ys) = (tokens(&mut rng, b, t, cfg.real_vocab_size), tokens(&mut rng, b, t, cfg.real_vocab_size));
    let cpu_x = Tensor::from_vec(xs.clone(), (b, t), &Device::Cpu).unwrap();
    let cpu_y = Tensor::from_vec(ys.clone(), (b, t), &Device::Cpu).unwrap();
    let model = model_from_tensors(cfg, Precision::FP32, device, weights, Path::new("reference weights")).unwrap();
    let x = Tensor::from_vec(xs, (b, t), device).unwrap();
    let y = Tensor::from_vec(ys, (b, t), device).unwrap();
    let (_, grads) = loss_and_grads(model.as_ref(), &x, &y);
    let (_, ref_grads) = reference_loss_and_grads(reference.as_ref(), &cpu_x, &cpu_y);
    let g_inf = grads.iter().flat_map(|(_, g)| g.iter()).fold(0f64, |m, v| m.max(v.abs()));

    // Loss of `m` with element `i` of parameter `p` moved by `delta`, then restored.
    let shifted_loss = |m: &dyn LanguageModel, x: &Tensor, y: &Tensor, p: usize, i: usize, delta: f64| -> f64 {
        let (_, var) = &m.parameters()[p];
        let base = var.as_tensor().copy().unwrap();
        let mut v = f64s(&base);
        v[i] += delta;
        let moved = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap().to_dtype(var.dtype()).unwrap();
        var.set(&moved.to_device(var.device()).unwrap()).unwrap();
        let l = f64s(&m.loss(x, y).unwrap())[0];
        var.set(&base).unwrap();
        l
    };
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    let mut checked = 0;
    let mut worst = 0f64;
    for (p, (pname, g)) in grads.iter().enumerate() {
        let i = (0..g.len()).max_by(|&a, &c| g[a].abs().total_cmp(&g[c].abs())).unwrap();
        let fd = (shifted_loss(model.as_ref(), &x, &y, p, i, FD_H) - shifted_loss(model.as_ref(), &x, &y, p, i, -FD_H))
            / (2.0 * FD_H);
        let fd64 = (shifted_loss(reference.as_ref(), &cpu_x, &cpu_y, p, i, FD_H)
            - shifted_loss(reference.as_ref(), &cpu_x, &cpu_y, p, i, -FD_H))
            / (2.0 * FD_H);
        // The central difference's truncation error at this h, measured on the f64 reference (same function, same
        // h), is subtracted: what remains is the f32 path's rounding and any error in its backward.
        let truncation = fd64 - ref_grads[p].1[i];
        let tol = FD_REL * g[i].abs() + FD_ABS * g_inf;
        let err = (fd - truncation - g[i]).abs();
        assert!(
            err <= tol,
            "{dev} {name} f32 {pname}[{i}]: autograd {:.6e} vs central difference {fd:.6e} minus truncation \
             {truncation:.2e} (|diff| {err:.2e} > {tol:.2e}); f64 reference: autograd {:.6e}, difference {fd64:.6e}",
            g[i],
            ref_grads[p].1[i]
        );
        worst = worst.max(err / tol);
        if std::env::var_os("FD_VERBOSE").is_some() {
            eprintln!(
                "{pname}[{i}] g {:.6e} fd {fd:.6e} g64 {:.6e} fd64 {fd64:.6e} tol {tol:.2e}",
                g[i], ref_grads[p].1[i]
            );
        }
        checked += 1;
    }
    println!(
        "FDCHECK {dev} {name} f32: {checked} elements (largest |g| of each parameter), h = {FD_H:.0e}, worst \
         |fd - truncation - autograd| at {:.0}% of its bound",
        worst * 100.0
    );
    checked
}

#[test]
fn cuda_matches_cpu() {
    let Some(dev) = cuda_device() else {
        eprintln!("skipped: no CUDA device (cuda_matches_cpu; cpu_matches_cpu_f64 runs the same comparison on CPU)");
        return;
    };
    for (name, cfg, b, t) in cases() {
        for dt in [DType::F32, DType::BF16] {
            compare_with_f64(name, &cfg, b, t, &dev, dt);
        }
    }
}

#[test]
fn cuda_finite_differences() {
    let Some(dev) = cuda_device() else {
        eprintln!("skipped: no CUDA device (cuda_finite_differences; cpu_finite_differences runs on CPU)");
        return;
    };
    for (name, cfg, b, t) in cases() {
        let n = finite_differences(name, &cfg, b, t, &dev);
        assert_eq!(n, cfg_param_count(&cfg));
    }
}

fn cfg_param_count(cfg: &ModelConfig) -> usize {
    tokenmill::model::param_specs(cfg).len()
}

/// The CPU twin of `cuda_matches_cpu`: f32 and bf16 compute on the CPU against f64 (same code, same bounds), so
/// the comparison is exercised in CI, and the bounds are known to hold where the rounding is the same kind.
#[test]
fn cpu_matches_cpu_f64() {
    for (name, cfg, b, t) in cases() {
        for dt in [DType::F32, DType::BF16] {
            let r = compare_with_f64(name, &cfg, b, t, &Device::Cpu, dt);
            // A comparison that is exactly zero would mean the "f32" model shares the f64 computation.
            assert!(r.loss_rel > 0.0 || r.worst_grad.1 > 0.0, "cpu {name} {dt:?}: identical to f64?");
        }
    }
}

/// The CPU twin of `cuda_finite_differences` (one model: the CPU f32 path is the same code for all three).
#[test]
fn cpu_finite_differences() {
    let (name, cfg, b, t) = cases().into_iter().next().unwrap();
    assert_eq!(finite_differences(name, &cfg, b, t, &Device::Cpu), cfg_param_count(&cfg));
}

/// `tokenmill train --save-init` writes `step_000000` holding exactly the fresh weights of `run.seed`, and saving
/// it changes nothing about the run that follows (same losses as without it).
#[test]
fn save_init_writes_the_fresh_weights() {
    use tokenmill::shards::format::{encode_tokens, ShardHeader, TokenWidth};
    use tokenmill::shards::manifest::{Manifest, ShardEntry};
    use tokenmill::shards::Split;
    use tokenmill::tokenizer::TokenizerKind;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut m = Manifest::new("test", TokenizerKind::Gpt2, 1 << 20);
    for (i, split) in [Split::Val, Split::Train].into_iter().enumerate() {
        let ids = tokens(&mut rng, 1, 4000, 50257);
        let file = format!("test_{}_{i:06}.bin", split.name());
        let mut bytes = ShardHeader::new(TokenWidth::U16, ids.len() as u64).encode().to_vec();
        encode_tokens(&ids, TokenWidth::U16, &mut bytes);
        std::fs::write(data.join(&file), &bytes).unwrap();
        m.shards.push(ShardEntry {
            file,
            split,
            tokens: ids.len() as u64,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        });
    }
    m.complete = true;
    m.save(&data).unwrap();

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-cpu.toml");
    // In the one GPU test binary (tests/gpu/main.rs) carried to a machine without the build tree, the CLI binary
    // this test drives is not there; the test is CPU logic and runs in CI.
    if !Path::new(env!("CARGO_BIN_EXE_tokenmill")).exists() {
        eprintln!("skipped: {} not present (GPU machine)", env!("CARGO_BIN_EXE_tokenmill"));
        return;
    }
    let train = |log: &str, extra: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenmill"))
            .args(["train", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .arg("--log-dir")
            .arg(dir.path().join(log))
            .args(["--max-steps", "3", "--set", "eval.val_every=0", "--set", "eval.sample_every=0"])
            .args(["--set", "data.seq_len=32", "--set", "data.total_batch_tokens=128"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "train {extra:?}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.path().join(log).join("log.txt")).unwrap()
    };
    let with = train("with", &["--save-init"]);
    let without = train("without", &[]);
    assert_eq!(with, without, "--save-init must not change the run");

    let init = dir.path().join("with/checkpoints/step_000000");
    let state = tokenmill::train::checkpoint::load_state(&init).unwrap();
    assert_eq!((state.step, state.optimizer_steps), (0, 0));
    let saved = tokenmill::model::load_checkpoint_model(&init, Precision::FP32, &Device::Cpu).unwrap();
    let fresh = build_model(saved.config(), Precision::FP32, &Device::Cpu, 1337).unwrap();
    for ((name, a), (_, b)) in saved.parameters().iter().zip(fresh.parameters()) {
        assert_eq!(f64s(a.as_tensor()), f64s(b.as_tensor()), "{name}: step_000000 differs from the seed-1337 init");
    }
    assert!(!dir.path().join("without/checkpoints/step_000000").exists());
}
