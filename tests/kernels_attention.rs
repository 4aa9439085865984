//! The fused causal attention (`model::kernels::attention`) against the composed reference
//! (`model::attention::causal_attention_slow`), forward and backward: its CPU implementation in f64, f32 and bf16
//! and against central finite differences in f64; its CUDA kernels against the CPU (skipped, with a printed line,
//! when no CUDA device exists). q, k, v are the strided head views GPT-2 passes (split out of one qkv tensor).
//!
//! Tolerances (|fused - reference| <= abs + rel * |reference|):
//! - f64: 1e-12 abs + 1e-10 rel (same math, different summation order).
//! - f32: 2e-5 abs + 1e-4 rel (softmax over <= T scores of O(10) and sums over T rows in f32).
//! - bf16 (CUDA vs CPU twin, both from the same bf16 inputs, f32 accumulation, bf16 outputs): 1% of the largest
//!   entry absolute + 1/64 relative. D = dO . O uses O rounded to bf16 in both, and dS = P (dP - D) cancels, so
//!   the error scales with the largest gradient rather than each entry (seen in the CUDA lab: 0.4%). The same for
//!   the tensor-core kernels, which also round P and dS to bf16 before their products (as FlashAttention-2; lab
//!   emulation: 0.3% of the largest entry at T <= 130), and for f16 (more mantissa than bf16).
//! - tensor cores vs FMA kernels on the GPU (both bf16, GPT-2 shapes): 2% of the largest entry + 1/32 relative.
//! - finite differences (f64, eps 1e-6): 1e-8 + 1e-7 rel, as tests/model_grad.rs.

#[path = "common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::cuda_device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::attention::{causal_attention, causal_attention_slow};
use tokenmill::model::kernels::attention::{
    flash_causal_attention, flash_causal_attention_with, supported, FlashKernel, FLASH_HEAD_SIZE,
};

/// `(q, k, v)` as GPT-2 makes them: views `(B, NH, T, HS)` of one `(B, T, 3 * NH * HS)` variable, plus the variable.
fn qkv(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize), dt: DType, dev: &Device) -> (Var, [Tensor; 3]) {
    qkv_padded(rng, shape, dt, dev, 0)
}

/// [`qkv`] with `pad` extra leading columns in the variable, `(B, T, pad + 3 * NH * HS)`: with an odd `pad` the
/// head views start off 16-byte alignment (the kernels' element-by-element load path).
fn qkv_padded(
    rng: &mut ChaCha8Rng,
    (b, nh, t, hs): (usize, usize, usize, usize),
    dt: DType,
    dev: &Device,
    pad: usize,
) -> (Var, [Tensor; 3]) {
    let c = nh * hs;
    let w = pad + 3 * c;
    let x: Vec<f64> = (0..b * t * w).map(|_| rng.gen_range(-1.0..1.0) * 1.5).collect();
    let var = Var::from_tensor(&Tensor::from_vec(x, (b, t, w), dev).unwrap().to_dtype(dt).unwrap()).unwrap();
    let head = |i: usize| {
        var.as_tensor().narrow(2, pad + i * c, c).unwrap().reshape((b, t, nh, hs)).unwrap().transpose(1, 2).unwrap()
    };
    let heads = [head(0), head(1), head(2)];
    (var, heads)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= abs + rel * w.abs(), "{what}[{i}]: {g} vs reference {w} (|diff| {err:e})");
        worst = worst.max(err);
    }
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    eprintln!("{what}: max |diff| {worst:e} (max |ref| {scale:.3e}) over {} values", got.len());
}

type AttnFn = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// Output and d(sum(out * r))/d(qkv) of `f` on a fresh qkv variable from `seed`.
fn out_and_grad(
    f: AttnFn,
    shape: (usize, usize, usize, usize),
    dt: DType,
    dev: &Device,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    out_and_grad_padded(f, shape, dt, dev, seed, 0)
}

/// [`out_and_grad`] on [`qkv_padded`] views.
fn out_and_grad_padded(
    f: AttnFn,
    shape: (usize, usize, usize, usize),
    dt: DType,
    dev: &Device,
    seed: u64,
    pad: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (var, [q, k, v]) = qkv_padded(&mut rng, shape, dt, dev, pad);
    let out = f(&q, &k, &v).unwrap();
    assert_eq!(out.dims(), q.dims());
    assert_eq!(out.dtype(), dt);
    let r: Vec<f64> = (0..out.elem_count()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let r = Tensor::from_vec(r, out.dims(), dev).unwrap().to_dtype(dt).unwrap();
    let acc = if dt == DType::F64 { DType::F64 } else { DType::F32 };
    let loss = (out.to_dtype(acc).unwrap() * r.to_dtype(acc).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let g = g.get(var.as_tensor()).expect("no gradient reached q, k, v");
    (f64s(&out), f64s(g))
}

fn compare(dt: DType, shape: (usize, usize, usize, usize), seed: u64, abs: f64, rel: f64) {
    let (o, g) = out_and_grad(flash_causal_attention, shape, dt, &Device::Cpu, seed);
    let (ro, rg) = out_and_grad(causal_attention_slow, shape, dt, &Device::Cpu, seed);
    assert_close(&format!("cpu {dt:?} {shape:?} out"), &o, &ro, abs, rel);
    assert_close(&format!("cpu {dt:?} {shape:?} dqkv"), &g, &rg, abs, rel);
}

#[test]
fn cpu_fused_matches_composed_f64() {
    compare(DType::F64, (2, 3, 11, 8), 1, 1e-12, 1e-10);
    compare(DType::F64, (1, 2, 70, 64), 2, 1e-12, 1e-10);
}

#[test]
fn cpu_fused_matches_composed_f32() {
    compare(DType::F32, (2, 2, 37, 64), 3, 2e-5, 1e-4);
}

#[test]
fn finite_differences_f64() {
    const EPS: f64 = 1e-6;
    let shape = (1, 2, 5, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (var, [q, k, v]) = qkv(&mut rng, shape, DType::F64, &Device::Cpu);
    let r: Vec<f64> = (0..q.elem_count()).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let r = Tensor::from_vec(r, q.dims(), &Device::Cpu).unwrap();
    let f = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
        (flash_causal_attention(q, k, v).unwrap() * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let loss = (flash_causal_attention(&q, &k, &v).unwrap() * &r).unwrap().sum_all().unwrap();
    let g = f64s(loss.backward().unwrap().get(var.as_tensor()).unwrap());
    let base = f64s(var.as_tensor());
    let dims = var.dims().to_vec();
    let (_, t, c3) = (dims[0], dims[1], dims[2]);
    let c = c3 / 3;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut p = base.clone();
            p[i] += d;
            let x = Tensor::from_vec(p, dims.as_slice(), &Device::Cpu).unwrap();
            let head =
                |j: usize| x.narrow(2, j * c, c).unwrap().reshape((1, t, 2, 4)).unwrap().transpose(1, 2).unwrap();
            f(&head(0), &head(1), &head(2))
        };
        let fd = (at(EPS) - at(-EPS)) / (2.0 * EPS);
        assert!((g[i] - fd).abs() <= 1e-8 + 1e-7 * fd.abs(), "dqkv[{i}]: {} vs finite difference {fd}", g[i]);
    }
}

#[test]
fn output_is_causal() {
    // Changing the last position's k and v must not change any earlier output row.
    let shape = (1, 2, 9, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (var, [q, k, v]) = qkv(&mut rng, shape, DType::F32, &Device::Cpu);
    let o1 = flash_causal_attention(&q, &k, &v).unwrap();
    let bump = |x: &Tensor| {
        let last = (x.narrow(2, 8, 1).unwrap() + 3.0).unwrap();
        Tensor::cat(&[x.narrow(2, 0, 8).unwrap(), last], 2).unwrap()
    };
    let o2 = flash_causal_attention(&q, &bump(&k), &bump(&v)).unwrap();
    let d = (o1.narrow(2, 0, 8).unwrap() - o2.narrow(2, 0, 8).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    let last = (o1.narrow(2, 8, 1).unwrap() - o2.narrow(2, 8, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert!(last.to_scalar::<f32>().unwrap() > 0.0);
    drop(var);
}

#[test]
fn cpu_routes_to_the_composed_path() {
    // On CPU the models keep the composed path (candle's gemm is faster there); the fused op is opt-in.
    let q = Tensor::zeros((1, 1, 4, FLASH_HEAD_SIZE), DType::F32, &Device::Cpu).unwrap();
    assert!(!supported(q.device(), q.dtype(), FLASH_HEAD_SIZE));
    let (o, _) = out_and_grad(causal_attention, (1, 2, 6, 8), DType::F64, &Device::Cpu, 6);
    let (r, _) = out_and_grad(causal_attention_slow, (1, 2, 6, 8), DType::F64, &Device::Cpu, 6);
    assert_eq!(o, r);
}

#[test]
fn mismatched_inputs_are_errors() {
    let a = Tensor::zeros((1, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((1, 2, 5, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(flash_causal_attention(&a, &a, &b).is_err());
    assert!(flash_causal_attention(&a, &a, &a.to_dtype(DType::F64).unwrap()).is_err());
}

/// The FMA reference kernels whatever the dtype; `flash_causal_attention` takes the tensor cores for bf16/f16.
fn fma_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    flash_causal_attention_with(q, k, v, FlashKernel::FmaReference)
}

/// (kernel label, kernel, dtype, (B, NH, T, HS), abs, rel, pad); abs for f32 only, bf16/f16 take 1% of the
/// largest reference entry.
type Case = (&'static str, AttnFn, DType, (usize, usize, usize, usize), f64, f64, usize);

/// The CUDA kernels against the CPU twin (same inputs, same dtype): the FMA kernels in f32 and bf16, the
/// tensor-core kernels (the default for bf16/f16) in bf16 and f16; T = 1, below, between and at multiples of the
/// 64-row tiles up to 1024; B * NH > 1; the GPT-2 head views (strided q, k, v), 16-byte aligned (vector loads)
/// and not (pad 1: element loads). Also: HS != 64 on CUDA is an error naming the fallback, and
/// `causal_attention` takes the fused path there.
#[test]
fn cuda_matches_cpu() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_matches_cpu: no CUDA device (CPU twins above ran)");
        return;
    };
    let (fused, fma): (AttnFn, AttnFn) = (flash_causal_attention, fma_attention);
    let bf = 1.0 / 64.0;
    let cases: [Case; 13] = [
        ("fma", fma, DType::F32, (2, 3, 100, 64), 2e-5, 1e-4, 0),
        ("fma", fma, DType::F32, (1, 2, 256, 64), 2e-5, 1e-4, 0),
        ("fma", fma, DType::BF16, (2, 2, 97, 64), 0.0, bf, 0),
        ("fma", fma, DType::BF16, (1, 4, 192, 64), 0.0, bf, 1),
        ("tc", fused, DType::BF16, (2, 3, 1, 64), 0.0, bf, 0),
        ("tc", fused, DType::BF16, (2, 2, 17, 64), 0.0, bf, 0),
        ("tc", fused, DType::BF16, (2, 3, 100, 64), 0.0, bf, 0),
        ("tc", fused, DType::BF16, (1, 4, 192, 64), 0.0, bf, 0),
        ("tc", fused, DType::BF16, (2, 2, 100, 64), 0.0, bf, 1),
        ("tc", fused, DType::BF16, (1, 2, 1024, 64), 0.0, bf, 0),
        ("tc", fused, DType::F16, (2, 2, 97, 64), 0.0, bf, 0),
        ("tc", fused, DType::F16, (1, 2, 130, 64), 0.0, bf, 1),
        ("tc", fused, DType::F16, (1, 2, 1024, 64), 0.0, bf, 0),
    ];
    for (i, (label, f, dt, shape, abs, rel, pad)) in cases.into_iter().enumerate() {
        let seed = 10 + i as u64;
        let (co, cg) = out_and_grad_padded(flash_causal_attention, shape, dt, &Device::Cpu, seed, pad);
        let (go, gg) = out_and_grad_padded(f, shape, dt, &dev, seed, pad);
        let scale = |x: &[f64]| x.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let (oabs, gabs) = if dt == DType::F32 { (abs, abs) } else { (0.01 * scale(&co), 0.01 * scale(&cg)) };
        assert_close(&format!("cuda {label} {dt:?} {shape:?} pad {pad} out"), &go, &co, oabs, rel);
        assert_close(&format!("cuda {label} {dt:?} {shape:?} pad {pad} dqkv"), &gg, &cg, gabs, rel);
    }
    // The tensor cores against the FMA kernels on the GPU at a GPT-2 shape.
    let shape = (2, 12, 1024, 64);
    let (fo, fg) = out_and_grad(fma, shape, DType::BF16, &dev, 40);
    let (to, tg) = out_and_grad(fused, shape, DType::BF16, &dev, 40);
    let scale = |x: &[f64]| x.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    assert_close(&format!("cuda tc vs fma BF16 {shape:?} out"), &to, &fo, 0.02 * scale(&fo), 1.0 / 32.0);
    assert_close(&format!("cuda tc vs fma BF16 {shape:?} dqkv"), &tg, &fg, 0.02 * scale(&fg), 1.0 / 32.0);
    // The routing and the refusal.
    let q = Tensor::zeros((1, 1, 8, 64), DType::BF16, &dev).unwrap();
    assert!(supported(q.device(), q.dtype(), 64));
    let q32 = Tensor::zeros((1, 1, 8, 32), DType::BF16, &dev).unwrap();
    let err = flash_causal_attention(&q32, &q32, &q32).unwrap_err().to_string();
    assert!(err.contains("head size 64") && err.contains("causal_attention"), "{err}");
    assert!(causal_attention(&q32, &q32, &q32).is_ok(), "HS = 32 falls back to the composed path");
}

/// `q + k + v`: what the timing harness costs around an attention call (the head views' narrow / reshape /
/// transpose backward into the qkv variable, the f32 loss); its `glue` TIMING lines are the floor of the others.
fn glue(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    (q + k)? + v
}

/// Timings at GPT-2 124M shapes (NH = 12, T = 1024, HS = 64, bf16): the tensor-core (`fused-tc`) and FMA
/// (`fused-fma`) kernels at B = 64 (the training micro-batch) and B = 8, and the composed version at B = 8 (it
/// keeps ~6 (B, NH, T, T) tensors per call). Checks the fused ones against the composed one at B = 8 and the
/// tensor cores against FMA at B = 64; prints `TIMING` lines for scripts/gpu-kernel-check.sh (`glue`: the
/// same harness around `q + k + v`, the part of each line that is not attention).
#[test]
#[ignore = "GPU timing; run by scripts/gpu-kernel-check.sh"]
fn cuda_timing_gpt2_shapes() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_timing_gpt2_shapes: no CUDA device");
        return;
    };
    let (nh, t, hs) = (12, 1024, 64);
    let mut outs = std::collections::HashMap::new();
    let cases: [(&str, AttnFn, usize); 7] = [
        ("fused-tc", flash_causal_attention, 64),
        ("fused-fma", fma_attention, 64),
        ("glue", glue, 64),
        ("fused-tc", flash_causal_attention, 8),
        ("fused-fma", fma_attention, 8),
        ("glue", glue, 8),
        ("composed", causal_attention_slow, 8),
    ];
    for (label, f, b) in cases {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let c = nh * hs;
        let x: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let var = Var::from_tensor(&Tensor::from_vec(x, (b, t, 3 * c), &dev).unwrap().to_dtype(DType::BF16).unwrap())
            .unwrap();
        let head = |i: usize| {
            var.as_tensor().narrow(2, i * c, c).unwrap().reshape((b, t, nh, hs)).unwrap().transpose(1, 2).unwrap()
        };
        let (q, k, v) = (head(0), head(1), head(2));
        let run = |bwd: bool| -> Tensor {
            let o = f(&q, &k, &v).unwrap();
            if bwd {
                let g = o.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
                assert!(g.get(var.as_tensor()).is_some());
            }
            o
        };
        let o = run(true); // warm-up: PTX JIT, allocations
        let time = |bwd: bool| {
            dev.synchronize().unwrap();
            let t0 = std::time::Instant::now();
            const REPS: usize = 5;
            for _ in 0..REPS {
                run(bwd);
            }
            dev.synchronize().unwrap();
            t0.elapsed().as_secs_f64() * 1e3 / REPS as f64
        };
        let (fwd, both) = (time(false), time(true));
        // Causal attention FLOPs, FlashAttention's convention: forward 2 matmuls over half the (T, T) square,
        // backward counted as 2.5x forward.
        let fwd_flop = 4.0 * (b * nh) as f64 * (t * t / 2) as f64 * hs as f64;
        eprintln!(
            "TIMING attention {label:9} B={b:2} NH={nh} T={t} HS={hs} bf16: fwd {fwd:8.2} ms ({:5.1} TFLOP/s)  fwd+bwd {both:8.2} ms ({:5.1} TFLOP/s)",
            fwd_flop / (fwd * 1e-3) / 1e12,
            3.5 * fwd_flop / (both * 1e-3) / 1e12
        );
        outs.insert((label, b), f64s(&o));
    }
    let check = |what: &str, got: (&str, usize), want: (&str, usize)| {
        let (g, w) = (&outs[&got], &outs[&want]);
        let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert_close(what, g, w, 0.02 * scale, 1.0 / 32.0);
    };
    check("timing case: fused-tc vs composed (B=8, bf16)", ("fused-tc", 8), ("composed", 8));
    check("timing case: fused-fma vs composed (B=8, bf16)", ("fused-fma", 8), ("composed", 8));
    check("timing case: fused-tc vs fused-fma (B=64, bf16)", ("fused-tc", 64), ("fused-fma", 64));
}

/// An attention output (B, T, C) and the gradient of its qkv input, flattened to f64.
type OutputAndGrad = (Vec<f64>, Vec<f64>);

/// `flash_causal_attention_qkv` (reads the heads out of one (B, T, 3C) tensor, returns d(qkv) in one piece) and the
/// same attention through three head views: the output in (B, T, C) and the gradient of the qkv variable, for
/// `attn` = the fused op on `qkv` vs `reference` on its head views. Loss: sum(o * w) with fixed random w.
fn qkv_op_vs_views(
    dt: DType,
    (b, nh, t, hs): (usize, usize, usize, usize),
    dev: &Device,
    reference: AttnFn,
) -> (OutputAndGrad, OutputAndGrad) {
    let mut rng = ChaCha8Rng::seed_from_u64(7 + t as u64);
    let c = nh * hs;
    let x: Vec<f64> = (0..b * t * 3 * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let wv: Vec<f64> = (0..b * t * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let var = Var::from_tensor(&Tensor::from_vec(x, (b, t, 3 * c), dev).unwrap().to_dtype(dt).unwrap()).unwrap();
    let w = Tensor::from_vec(wv, (b, t, c), dev).unwrap().to_dtype(DType::F32).unwrap();
    // o: (B, T, C)
    let run = |o: Tensor| {
        let loss = (o.to_dtype(DType::F32).unwrap() * &w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().remove(var.as_tensor()).unwrap();
        (f64s(&o), f64s(&g))
    };
    let fused = tokenmill::model::kernels::flash_causal_attention_qkv(var.as_tensor(), nh).unwrap();
    assert_eq!(fused.dims(), &[b, t, c]);
    let fused = run(fused);
    let head = |i: usize| {
        var.as_tensor().narrow(2, i * c, c).unwrap().reshape((b, t, nh, hs)).unwrap().transpose(1, 2).unwrap()
    };
    let views =
        run(reference(&head(0), &head(1), &head(2)).unwrap().transpose(1, 2).unwrap().reshape((b, t, c)).unwrap());
    (fused, views)
}

#[test]
fn cpu_qkv_op_matches_head_views() {
    for (shape, dt, abs, rel) in [
        ((2, 3, 17, 8), DType::F64, 1e-12, 1e-10),
        ((1, 2, 70, 16), DType::F64, 1e-12, 1e-10),
        ((2, 2, 33, 8), DType::F32, 2e-5, 1e-4),
    ] {
        let ((o, g), (ro, rg)) = qkv_op_vs_views(dt, shape, &Device::Cpu, causal_attention_slow);
        assert_close(&format!("qkv op output {shape:?} {dt:?}"), &o, &ro, abs, rel);
        assert_close(&format!("qkv op d(qkv) {shape:?} {dt:?}"), &g, &rg, abs, rel);
    }
    // Shapes that do not split into heads are errors.
    let bad = Tensor::zeros((1, 4, 10), DType::F32, &Device::Cpu).unwrap();
    assert!(tokenmill::model::kernels::flash_causal_attention_qkv(&bad, 3).is_err());
}

#[test]
fn cuda_qkv_op_matches_head_views() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_qkv_op_matches_head_views: no CUDA device");
        return;
    };
    for (shape, dt) in [((2, 12, 1024, 64), DType::BF16), ((2, 3, 100, 64), DType::BF16), ((1, 2, 97, 64), DType::F32)]
    {
        // The same kernels on the same inputs, only the layouts differ (f32: attention_ref.cu's FMA kernels; bf16:
        // flash_attn.cu over the whole buffer and through the head views' strides): exact.
        let ((o, g), (ro, rg)) = qkv_op_vs_views(dt, shape, &dev, flash_causal_attention);
        assert_close(&format!("cuda qkv op output {shape:?} {dt:?}"), &o, &ro, 0.0, 0.0);
        assert_close(&format!("cuda qkv op d(qkv) {shape:?} {dt:?}"), &g, &rg, 0.0, 0.0);
        // And against the CPU twin of the same op (bf16: the tolerance of cuda_matches_cpu).
        let ((co, cg), _) = qkv_op_vs_views(dt, shape, &Device::Cpu, causal_attention_slow);
        let scale = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let (abs_o, abs_g) = if dt == DType::F32 { (2e-5, 2e-5) } else { (0.01 * scale(&co), 0.01 * scale(&cg)) };
        let rel = if dt == DType::F32 { 1e-4 } else { 1.0 / 64.0 };
        assert_close(&format!("cuda vs cpu qkv op output {shape:?} {dt:?}"), &o, &co, abs_o, rel);
        assert_close(&format!("cuda vs cpu qkv op d(qkv) {shape:?} {dt:?}"), &g, &cg, abs_g, rel);
        println!("cuda qkv op {shape:?} {dt:?}: matches the head-view path and the CPU twin");
    }
}

/// `TIMING` for the qkv op at B = 64 (to set against `fused-tc` + `glue` of `cuda_timing_gpt2_shapes`).
#[test]
#[ignore = "GPU timing; run by scripts/gpu-kernel-check.sh"]
fn cuda_timing_qkv_op() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_timing_qkv_op: no CUDA device");
        return;
    };
    let (b, nh, t, hs) = (64, 12, 1024, 64);
    let c = nh * hs;
    let var = Var::from_tensor(&Tensor::randn(0f32, 1., (b, t, 3 * c), &dev).unwrap().to_dtype(DType::BF16).unwrap())
        .unwrap();
    let run = |bwd: bool| {
        let o = tokenmill::model::kernels::flash_causal_attention_qkv(var.as_tensor(), nh).unwrap();
        if bwd {
            let g = o.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(g.get(var.as_tensor()).is_some());
        }
    };
    run(true);
    let time = |bwd: bool| {
        dev.synchronize().unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            run(bwd);
        }
        dev.synchronize().unwrap();
        t0.elapsed().as_secs_f64() * 1e3 / 5.0
    };
    let (fwd, both) = (time(false), time(true));
    eprintln!("TIMING attention fused-qkv B={b:2} NH={nh} T={t} HS={hs} bf16: fwd {fwd:8.2} ms  fwd+bwd {both:8.2} ms");
}

/// The qkv op's output and d(qkv) for loss sum(y * w), y (B, T, C), on `dev`; inputs from `seed` (same on every
/// device).
fn qkv_op_out_grad(
    dt: DType,
    (b, nh, t, hs): (usize, usize, usize, usize),
    dev: &Device,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = nh * hs;
    let x: Vec<f64> = (0..b * t * 3 * c).map(|_| rng.gen_range(-1.0..1.0) * 1.5).collect();
    let wv: Vec<f64> = (0..b * t * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let var = Var::from_tensor(&Tensor::from_vec(x, (b, t, 3 * c), dev).unwrap().to_dtype(dt).unwrap()).unwrap();
    let w = Tensor::from_vec(wv, (b, t, c), dev).unwrap().to_dtype(DType::F32).unwrap();
    let y = tokenmill::model::kernels::flash_causal_attention_qkv(var.as_tensor(), nh).unwrap();
    assert_eq!(y.dims(), &[b, t, c]);
    let loss = (y.to_dtype(DType::F32).unwrap() * &w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap().remove(var.as_tensor()).unwrap();
    (f64s(&y), f64s(&g))
}

/// crate::cuda::flash_attn through the qkv op against the op's CPU twin, at T = 1, 7, 64, 100, 256, 1000, 1024 and
/// 2048 (below, at and past the 64-row tiles and the 128-row forward blocks), bf16 and f16, B * NH > 1 with partial
/// head groups; and bitwise repeatability: a second run on the GPU gives the same bytes (y and d(qkv)).
/// Tolerance (bf16 and f16): 1% of the largest reference entry + 1/64 relative (module doc).
#[test]
fn cuda_flash_qkv_matches_cpu() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_flash_qkv_matches_cpu: no CUDA device");
        return;
    };
    let scale = |x: &[f64]| x.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let cases = [
        (DType::BF16, (2, 3, 1, 64)),
        (DType::BF16, (2, 3, 7, 64)),
        (DType::BF16, (1, 4, 64, 64)),
        (DType::BF16, (2, 2, 100, 64)),
        (DType::BF16, (1, 3, 256, 64)),
        (DType::BF16, (1, 2, 1000, 64)),
        (DType::BF16, (1, 2, 1024, 64)),
        (DType::BF16, (1, 2, 2048, 64)),
        (DType::F16, (2, 2, 100, 64)),
        (DType::F16, (1, 2, 1024, 64)),
    ];
    for (i, (dt, shape)) in cases.into_iter().enumerate() {
        let seed = 60 + i as u64;
        let (co, cg) = qkv_op_out_grad(dt, shape, &Device::Cpu, seed);
        let (go, gg) = qkv_op_out_grad(dt, shape, &dev, seed);
        assert_close(&format!("cuda flash {dt:?} {shape:?} y"), &go, &co, 0.01 * scale(&co), 1.0 / 64.0);
        assert_close(&format!("cuda flash {dt:?} {shape:?} dqkv"), &gg, &cg, 0.01 * scale(&cg), 1.0 / 64.0);
        let (go2, gg2) = qkv_op_out_grad(dt, shape, &dev, seed);
        let same = go.iter().zip(&go2).all(|(a, b)| a.to_bits() == b.to_bits())
            && gg.iter().zip(&gg2).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "cuda flash {dt:?} {shape:?}: a second run differs (not deterministic)");
        println!("cuda flash {dt:?} {shape:?}: second run bitwise equal");
    }
}

/// The launcher with raw pointers, every compiled launch variant: outputs start as NaN and come out finite
/// (every element written), all variants agree with the default within the tc-vs-tc tolerance, and each repeats
/// bit for bit. Shapes: T = 100 (partial tiles) and 1024 with B * NH = 6 and 36.
#[cfg(feature = "cuda")]
#[test]
fn cuda_flash_api_variants_write_everything() {
    use half::bf16;
    use tokenmill::cuda::devptr::DevPtr;
    use tokenmill::cuda::flash_attn::{AttnBwd, AttnFwd, FlashAttn, Heads, Variant};
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_flash_api_variants_write_everything: no CUDA device");
        return;
    };
    let stream = dev.as_cuda_device().unwrap().cuda_stream();
    for (b, t, nh) in [(2, 100, 3), (3, 1024, 12)] {
        let c = nh * 64;
        let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
        let rand = |n: usize, rng: &mut ChaCha8Rng| -> Vec<bf16> {
            (0..n).map(|_| bf16::from_f32(rng.gen_range(-1.5f32..1.5))).collect()
        };
        let qkv = stream.clone_htod(&rand(b * t * 3 * c, &mut rng)).unwrap();
        let dy = stream.clone_htod(&rand(b * t * c, &mut rng)).unwrap();
        let mut reference: Option<(Vec<f64>, Vec<f64>)> = None;
        for v in Variant::ALL {
            let fa = FlashAttn::with_variant(&stream, v).unwrap();
            let run = || -> (Vec<bf16>, Vec<f32>, Vec<bf16>) {
                let mut y = stream.clone_htod(&vec![bf16::NAN; b * t * c]).unwrap();
                let mut lse = stream.clone_htod(&vec![f32::NAN; b * nh * t]).unwrap();
                let mut scr = stream.clone_htod(&vec![f32::NAN; FlashAttn::scratch_len(b, t, nh)]).unwrap();
                let mut dqkv = stream.clone_htod(&vec![bf16::NAN; b * t * 3 * c]).unwrap();
                {
                    let (q, _a) = DevPtr::of(&qkv, &stream);
                    let (g, _b) = DevPtr::of(&dy, &stream);
                    let (yp, _c) = DevPtr::of_mut(&mut y, &stream);
                    let (lp, _d) = DevPtr::of_mut(&mut lse, &stream);
                    let (sp, _e) = DevPtr::of_mut(&mut scr, &stream);
                    let (dp, _f) = DevPtr::of_mut(&mut dqkv, &stream);
                    let p = AttnBwd { qkv: q, y: yp, dy: g, lse: lp, dvec_scratch: sp, dqkv: dp };
                    unsafe {
                        fa.forward_with(p.fwd(), b, t, Heads::mha(nh), 64).unwrap();
                        fa.backward(p, b, t, Heads::mha(nh)).unwrap();
                    }
                }
                (stream.clone_dtoh(&y).unwrap(), stream.clone_dtoh(&lse).unwrap(), stream.clone_dtoh(&dqkv).unwrap())
            };
            let (y1, l1, d1) = run();
            let (y2, l2, d2) = run();
            let label = format!("variant {} B={b} T={t} NH={nh}", v.label());
            assert!(
                y1.iter().all(|x| x.is_finite()) && l1.iter().all(|x| x.is_finite()),
                "{label}: y/lse not all written"
            );
            assert!(d1.iter().all(|x| x.is_finite()), "{label}: dqkv not all written");
            assert!(y1 == y2 && l1 == l2 && d1 == d2, "{label}: second run differs");
            let yf: Vec<f64> = y1.iter().map(|x| x.to_f64()).collect();
            let df: Vec<f64> = d1.iter().map(|x| x.to_f64()).collect();
            if let Some((ry, rd)) = &reference {
                let scale = |x: &[f64]| x.iter().fold(0.0f64, |m, w| m.max(w.abs()));
                assert_close(&format!("{label} y vs default"), &yf, ry, 0.02 * scale(ry), 1.0 / 32.0);
                assert_close(&format!("{label} dqkv vs default"), &df, rd, 0.02 * scale(rd), 1.0 / 32.0);
            } else {
                reference = Some((yf, df));
            }
            println!("cuda flash api {label}: every element written, second run bitwise equal");
        }
    }
    // The launcher refuses what it has no kernels for.
    let fa = FlashAttn::new(&stream).unwrap();
    // SAFETY: the launcher fails its checks before it launches; these addresses are never dereferenced.
    let (p8, p16) = unsafe { (DevPtr::<bf16>::from_raw(8), DevPtr::<bf16>::from_raw(16)) };
    let lse16 = unsafe { DevPtr::<f32>::from_raw(16) };
    let fwd = |qkv, y| AttnFwd { qkv, y, lse: lse16 };
    let e = unsafe { fa.forward_with(fwd(p16, p16), 1, 8, Heads::mha(1), 128) }.unwrap_err().to_string();
    assert!(e.contains("head size 64"), "{e}");
    let e = unsafe { fa.forward(fwd(p8, p16), 1, 8, Heads::mha(1)) }.unwrap_err().to_string();
    assert!(e.contains("qkv") && e.contains("16-byte"), "{e}");
}

/// A small fwd + bwd through the qkv op (bf16, T = 100 and 130: partial tiles) for compute-sanitizer's memcheck
/// and racecheck (scripts/attn-bench.sh and the device run call it under both tools).
#[test]
fn cuda_flash_sanitizer_case() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_flash_sanitizer_case: no CUDA device");
        return;
    };
    for (shape, seed) in [((2, 3, 100, 64), 90), ((1, 2, 130, 64), 91)] {
        let (y, g) = qkv_op_out_grad(DType::BF16, shape, &dev, seed);
        assert!(y.iter().chain(&g).all(|x| x.is_finite()));
    }
    dev.synchronize().unwrap();
}
