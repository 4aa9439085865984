//! The fused softmax cross-entropy (`model::kernels::cross_entropy`) against its composed reference
//! (`ops::token_cross_entropy_slow`), forward and backward, on CPU in f64, f32 and bf16, against central finite
//! differences in f64, and on CUDA against the CPU (skipped, with a printed line, when no CUDA device exists).
//!
//! Tolerances (|fused - reference| <= abs + rel * |reference|):
//! - f64: 1e-12 + 1e-12 rel: both compute the same logsumexp in double.
//! - f32: loss 1e-5 rel (f32 sums of 1e3..5e4 exps), dlogits 2e-6 abs (the backward's logsumexp is recovered as
//!   loss + logit[target], one extra f32 rounding: ~1e-6 absolute on p for logsumexp ~ 10).
//! - bf16 logits: the loss is computed from the same bf16 values in f32, so 1e-5 rel against the f32 reference on
//!   the upcast logits; dlogits are rounded to bf16: 1/128 rel + 1e-6 abs.
//! - finite differences (f64, eps 1e-6): 1e-8 + 1e-7 rel, as tests/model_grad.rs.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::kernels::{softmax_cross_entropy, IGNORE_INDEX};
use tokenmill::model::ops;

fn rand_logits(rng: &mut ChaCha8Rng, n: usize, v: usize, scale: f64) -> Tensor {
    let x: Vec<f64> = (0..n * v).map(|_| rng.gen_range(-1.0..1.0) * scale).collect();
    Tensor::from_vec(x, (n, v), &Device::Cpu).unwrap()
}

fn rand_targets(rng: &mut ChaCha8Rng, n: usize, v: usize) -> Tensor {
    let t: Vec<u32> = (0..n).map(|_| rng.gen_range(0..v as u32)).collect();
    Tensor::from_vec(t, n, &Device::Cpu).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= abs + rel * w.abs(), "{what}[{i}]: {g} vs reference {w} (|diff| {err:e})");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!("{what}: max |diff| {:e} over {} values", worst.0, got.len());
}

/// `sum(per_row_loss * w)` with fixed weights: every row gets its own upstream gradient `w[row]`.
fn weighted(loss: &Tensor, w: &Tensor) -> Tensor {
    (loss * w.to_dtype(loss.dtype()).unwrap()).unwrap().sum_all().unwrap()
}

/// Loss and dlogits of `f` on `logits` (cast to `dt`), with upstream weights `w`.
fn loss_and_grad(
    f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    logits: &Tensor,
    targets: &Tensor,
    w: &Tensor,
    dt: DType,
) -> (Vec<f64>, Vec<f64>) {
    let x = Var::from_tensor(&logits.to_dtype(dt).unwrap()).unwrap();
    let loss = f(x.as_tensor(), targets).unwrap();
    let grads = weighted(&loss, w).backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("no gradient reached the logits");
    assert_eq!(g.dtype(), dt, "dlogits come back in the logits' dtype");
    (f64s(&loss), f64s(g))
}

fn compare_with_composed(dt: DType, n: usize, v: usize, seed: u64, tol: (f64, f64, f64, f64)) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let logits = rand_logits(&mut rng, n, v, 6.0);
    let targets = rand_targets(&mut rng, n, v);
    let w = rand_logits(&mut rng, n, 1, 1.0).squeeze(1).unwrap();
    let (loss, grad) = loss_and_grad(softmax_cross_entropy, &logits, &targets, &w, dt);
    // The reference runs on the same (rounded) values, in the reduce dtype.
    let ref_dt = if dt == DType::F64 { DType::F64 } else { DType::F32 };
    let rounded = logits.to_dtype(dt).unwrap().to_dtype(ref_dt).unwrap();
    let (rloss, rgrad) = loss_and_grad(ops::token_cross_entropy_slow, &rounded, &targets, &w, ref_dt);
    assert_close(&format!("{dt:?} loss"), &loss, &rloss, tol.0, tol.1);
    assert_close(&format!("{dt:?} dlogits"), &grad, &rgrad, tol.2, tol.3);
}

#[test]
fn fused_matches_composed_f64() {
    compare_with_composed(DType::F64, 23, 1003, 1, (1e-12, 1e-12, 1e-12, 1e-12));
}

#[test]
fn fused_matches_composed_f32() {
    compare_with_composed(DType::F32, 31, 5003, 2, (0.0, 1e-5, 2e-6, 0.0));
}

#[test]
fn fused_matches_composed_bf16() {
    compare_with_composed(DType::BF16, 17, 2048, 3, (0.0, 1e-5, 1e-6, 1.0 / 128.0));
}

#[test]
fn value_is_logsumexp_minus_target_logit() {
    let logits = Tensor::new(&[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let got = f64s(&softmax_cross_entropy(&logits, &targets).unwrap());
    let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!((got[0] - (lse0 - 3.0)).abs() < 1e-15, "{}", got[0]);
    assert!((got[1] - 3f64.ln()).abs() < 1e-15, "{}", got[1]);
}

#[test]
fn finite_differences_f64() {
    const EPS: f64 = 1e-6;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (n, v) = (6, 9);
    let base = rand_logits(&mut rng, n, v, 4.0);
    let targets = Tensor::from_vec(vec![0u32, 8, 3, 3, IGNORE_INDEX, 1], n, &Device::Cpu).unwrap();
    let w = rand_logits(&mut rng, n, 1, 1.0).squeeze(1).unwrap();
    let x = Var::from_tensor(&base).unwrap();
    let f = |x: &Tensor| weighted(&softmax_cross_entropy(x, &targets).unwrap(), &w).to_scalar::<f64>().unwrap();
    let loss = weighted(&softmax_cross_entropy(x.as_tensor(), &targets).unwrap(), &w);
    let g = f64s(loss.backward().unwrap().get(x.as_tensor()).unwrap());
    let b = f64s(&base);
    for i in 0..n * v {
        let at = |d: f64| {
            let mut p = b.clone();
            p[i] += d;
            f(&Tensor::from_vec(p, (n, v), &Device::Cpu).unwrap())
        };
        let fd = (at(EPS) - at(-EPS)) / (2.0 * EPS);
        assert!((g[i] - fd).abs() <= 1e-8 + 1e-7 * fd.abs(), "dlogits[{i}]: {} vs finite difference {fd}", g[i]);
    }
    // The ignored row (4) has exactly zero gradient.
    assert!(g[4 * v..5 * v].iter().all(|&d| d == 0.0));
}

#[test]
fn ignored_rows_give_zero_loss_and_gradient() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, v) = (8, 300);
    let logits = rand_logits(&mut rng, n, v, 5.0).to_dtype(DType::F32).unwrap();
    let mut t: Vec<u32> = (0..n).map(|_| rng.gen_range(0..v as u32)).collect();
    for r in [1, 6] {
        t[r] = IGNORE_INDEX;
    }
    let targets = Tensor::from_vec(t.clone(), n, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&logits).unwrap();
    let loss = softmax_cross_entropy(x.as_tensor(), &targets).unwrap();
    let l = f64s(&loss);
    let g = f64s(loss.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap());
    // Kept rows equal the composed loss of those rows alone.
    let keep: Vec<u32> = (0..n as u32).filter(|&r| t[r as usize] != IGNORE_INDEX).collect();
    let keep_t = Tensor::from_vec(keep.clone(), keep.len(), &Device::Cpu).unwrap();
    let kept_targets = targets.index_select(&keep_t, 0).unwrap();
    let want = f64s(&ops::token_cross_entropy_slow(&logits.index_select(&keep_t, 0).unwrap(), &kept_targets).unwrap());
    for (j, &r) in keep.iter().enumerate() {
        assert!((l[r as usize] - want[j]).abs() <= 1e-5 * want[j].abs(), "row {r}");
        // softmax - onehot sums to zero over a kept row.
        let s: f64 = g[r as usize * v..(r as usize + 1) * v].iter().sum();
        assert!(s.abs() < 1e-5, "row {r}: gradient sums to {s}");
    }
    for r in [1usize, 6] {
        assert_eq!(l[r], 0.0, "ignored row {r} has a loss");
        assert!(g[r * v..(r + 1) * v].iter().all(|&d| d == 0.0), "ignored row {r} has a gradient");
    }
}

#[test]
fn target_outside_vocab_is_an_error() {
    let logits = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
    let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let err = softmax_cross_entropy(&logits, &targets).unwrap_err().to_string();
    assert!(err.contains("target id 5") && err.contains("V = 5"), "{err}");
    let bad_shape = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    assert!(softmax_cross_entropy(&logits, &bad_shape).is_err());
}

#[test]
fn strided_logits_and_mean_reduction() {
    // Columns narrowed out of a wider tensor (row stride > V) and the broadcast gradient of a mean.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (n, v) = (9, 130);
    let wide = rand_logits(&mut rng, n, v + 7, 3.0).to_dtype(DType::F32).unwrap();
    let targets = rand_targets(&mut rng, n, v);
    let x = Var::from_tensor(&wide).unwrap();
    let narrow = x.as_tensor().narrow(1, 3, v).unwrap();
    let loss = softmax_cross_entropy(&narrow, &targets).unwrap().mean_all().unwrap();
    let g = f64s(&loss.backward().unwrap().get(x.as_tensor()).unwrap().narrow(1, 3, v).unwrap());
    let y = Var::from_tensor(&wide.narrow(1, 3, v).unwrap().contiguous().unwrap()).unwrap();
    let rloss = ops::cross_entropy_slow(y.as_tensor(), &targets).unwrap();
    let rg = f64s(rloss.backward().unwrap().get(y.as_tensor()).unwrap());
    assert!((loss.to_scalar::<f32>().unwrap() - rloss.to_scalar::<f32>().unwrap()).abs() < 1e-5);
    assert_close("strided dlogits", &g, &rg, 1e-7, 0.0);
}

/// The CUDA kernels against the CPU kernel (f32, f64) and the composed f32 reference (bf16), on the GPT-2 vocab
/// (aligned rows: the 16-byte path) and an odd vocab (unaligned rows: the scalar path).
#[test]
fn cuda_matches_cpu() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_matches_cpu: no CUDA device (CPU twins above ran)");
        return;
    };
    let cases: [(DType, usize, usize, (f64, f64, f64, f64)); 5] = [
        (DType::F32, 64, 50304, (0.0, 1e-5, 2e-6, 0.0)),
        (DType::F32, 33, 1003, (0.0, 1e-5, 2e-6, 0.0)),
        (DType::F64, 16, 1003, (1e-12, 1e-12, 1e-12, 1e-12)),
        (DType::BF16, 64, 50304, (0.0, 1e-5, 1e-6, 1.0 / 128.0)),
        (DType::BF16, 33, 1001, (0.0, 1e-5, 1e-6, 1.0 / 128.0)),
    ];
    for (dt, n, v, tol) in cases {
        let mut rng = ChaCha8Rng::seed_from_u64(7 + v as u64);
        let logits = rand_logits(&mut rng, n, v, 6.0).to_dtype(dt).unwrap();
        let mut t: Vec<u32> = (0..n).map(|_| rng.gen_range(0..v as u32)).collect();
        t[n / 2] = IGNORE_INDEX;
        let targets = Tensor::from_vec(t, n, &Device::Cpu).unwrap();
        let w = rand_logits(&mut rng, n, 1, 1.0).squeeze(1).unwrap();
        let (cl, cg) = loss_and_grad(softmax_cross_entropy, &logits, &targets, &w, dt);
        let (gl, gg) = loss_and_grad(
            softmax_cross_entropy,
            &logits.to_device(&dev).unwrap(),
            &targets.to_device(&dev).unwrap(),
            &w.to_device(&dev).unwrap(),
            dt,
        );
        assert_close(&format!("cuda {dt:?} V={v} loss"), &gl, &cl, tol.0, tol.1);
        // bf16 dlogits may round to neighbouring bf16 values where CPU and GPU exp differ in the last f32 bit:
        // within the 1/128 relative bound.
        assert_close(&format!("cuda {dt:?} V={v} dlogits"), &gg, &cg, tol.2, tol.3);
    }
}

fn cuda_device() -> Option<Device> {
    if !candle_core::utils::cuda_is_available() {
        return None;
    }
    Device::new_cuda(0).ok()
}
