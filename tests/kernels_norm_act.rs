//! The fused LayerNorm (`model::kernels::layer_norm`) and GELU-tanh (`model::kernels::gelu`) against their composed
//! references (`ops::layer_norm_slow`, `ops::gelu_tanh_slow`), forward and backward: the CPU twins in f64, f32 and
//! bf16, against central finite differences in f64, and the CUDA kernels against the CPU twin in f64 (skipped, with
//! a printed line, when no CUDA device exists).
//!
//! Tolerances (|fused - reference| <= abs + rel * |reference|, `abs` a fraction of the largest |reference|, since
//! LayerNorm's dx and dweight are sums whose rounding scales with the row, not with each entry):
//! - f64 CPU twin vs composed: 1e-12 (same math, different summation order).
//! - f32 CPU twin vs composed f32: 1e-5 of max + 1e-5 rel (both f32, C <= 3072 terms per sum).
//! - bf16 outputs (one rounding of an f32 result): 1/128 rel + 4e-3 of max; the composed bf16 GELU rounds after
//!   every op and is only held to 1/16 (printed for comparison).
//! - CUDA vs the f64 twin on the same rounded inputs: LayerNorm f32 results 1e-5 of max + 1e-4 rel (f32 sums in
//!   another order), results rounded to bf16/f16 1/128 rel + 4e-3 of max; GELU f32 1e-6 of max + 1e-5 rel (tanhf
//!   within 2 ulp), bf16 1/128 rel + 1e-4 of max, f64 1e-13 rel. Seen on an H100: LayerNorm f32 dx 2.9e-7,
//!   dweight 1.6e-5 of 89; GELU f32 dx 5.7e-7; bf16 outputs one bf16 rounding (7.8e-3 at |y| ~ 3).
//! - finite differences (f64, eps 1e-6): 1e-8 + 1e-7 rel, as tests/model_grad.rs.

#[path = "common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::cuda_device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::kernels::{gelu_tanh, layer_norm};
use tokenmill::model::ops;

const EPS: f64 = ops::LAYER_NORM_EPS;

fn rand_t(rng: &mut ChaCha8Rng, dims: &[usize], scale: f64, offset: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let x: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale + offset).collect();
    Tensor::from_vec(x, dims, &Device::Cpu).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// Every |got - want| <= abs_frac * max|want| + rel * |want|; prints the largest difference.
fn assert_close(what: &str, got: &[f64], want: &[f64], abs_frac: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let abs = abs_frac * scale;
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= abs + rel * w.abs(), "{what}[{i}]: {g} vs reference {w} (|diff| {err:e}, max |ref| {scale:e})");
        worst = worst.max(err);
    }
    eprintln!("{what}: max |diff| {worst:e} (max |ref| {scale:.3e}) over {} values", got.len());
}

/// Output and the gradients of `sum(out * r)` for every input, as f64 vectors.
struct Run {
    out: Vec<f64>,
    grads: Vec<Vec<f64>>,
}

/// LayerNorm through `f` on x (cast to `xdt`), weight and bias (f32 masters, or f64), upstream `r`.
fn ln_run(
    fused: bool,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    (xdt, out): (DType, DType),
    dev: &Device,
) -> Run {
    let pdt = if xdt == DType::F64 { DType::F64 } else { DType::F32 };
    let on = |t: &Tensor, dt: DType| Var::from_tensor(&t.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap();
    let (xv, wv, bv) = (on(x, xdt), on(w, pdt), on(b, pdt));
    let y = if fused {
        layer_norm(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), EPS, out).unwrap()
    } else {
        ops::layer_norm_slow(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), EPS).unwrap().to_dtype(out).unwrap()
    };
    assert_eq!(y.dtype(), out);
    assert_eq!(y.dims(), x.dims());
    let r = r.to_dtype(out).unwrap().to_device(dev).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |v: &Var, dt: DType| {
        let t = g.get(v.as_tensor()).expect("no gradient");
        assert_eq!(t.dtype(), dt, "gradient dtype");
        f64s(t)
    };
    Run { out: f64s(&y), grads: vec![grad(&xv, xdt), grad(&wv, pdt), grad(&bv, pdt)] }
}

/// Random LayerNorm inputs: rows with a mean offset (the centred variance must not cancel) and scale.
fn ln_inputs(seed: u64, dims: &[usize]) -> (Tensor, Tensor, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = *dims.last().unwrap();
    let x = rand_t(&mut rng, dims, 2.0, 0.7);
    let w = rand_t(&mut rng, &[c], 0.5, 1.0);
    let b = rand_t(&mut rng, &[c], 0.3, 0.0);
    let r = rand_t(&mut rng, dims, 1.0, 0.0);
    (x, w, b, r)
}

/// The tolerance of a result stored in `dt`: `base` for f32/f64, one bf16/f16 rounding otherwise.
fn tol_for(dt: DType, base: (f64, f64)) -> (f64, f64) {
    if matches!(dt, DType::BF16 | DType::F16) {
        (4e-3, 1.0 / 128.0)
    } else {
        base
    }
}

/// y (in `out`) and dx (in x's dtype) get one half-precision rounding's tolerance where stored in bf16/f16;
/// dweight and dbias (f32/f64) get `base`.
fn ln_vs_composed(dims: &[usize], (xdt, out): (DType, DType), seed: u64, base: (f64, f64)) {
    let (x, w, b, r) = ln_inputs(seed, dims);
    let got = ln_run(true, &x, &w, &b, &r, (xdt, out), &Device::Cpu);
    // The reference sees the same rounded inputs and upstream gradient; it computes in f32 (f64 for f64) and its
    // output is rounded to `out` once, like the fused op's.
    let want = ln_run(false, &x, &w, &b, &r, (xdt, out), &Device::Cpu);
    let what = format!("cpu layer-norm {xdt:?}->{out:?} {dims:?}");
    let tols = [tol_for(out, base), tol_for(xdt, base), base, base];
    let names = ["y", "dx", "dweight", "dbias"];
    let (gots, wants) = (
        [&got.out, &got.grads[0], &got.grads[1], &got.grads[2]],
        [&want.out, &want.grads[0], &want.grads[1], &want.grads[2]],
    );
    for i in 0..4 {
        assert_close(&format!("{what} {}", names[i]), gots[i], wants[i], tols[i].0, tols[i].1);
    }
}

#[test]
fn layer_norm_matches_composed_f64() {
    ln_vs_composed(&[3, 5, 37], (DType::F64, DType::F64), 1, (1e-12, 1e-12));
    ln_vs_composed(&[200, 1], (DType::F64, DType::F64), 2, (1e-12, 1e-12)); // C = 1: y = bias, dx = 0
}

#[test]
fn layer_norm_matches_composed_f32() {
    ln_vs_composed(&[2, 70, 768], (DType::F32, DType::F32), 3, (1e-5, 1e-5));
    ln_vs_composed(&[13, 3072], (DType::F32, DType::F32), 4, (1e-5, 1e-5));
}

#[test]
fn layer_norm_half_outputs_match_composed() {
    // The model's case: the f32 residual stream in, the bf16 compute dtype out. dx and the weight gradients stay
    // f32 (dy is the same bf16 tensor on both sides).
    ln_vs_composed(&[3, 50, 768], (DType::F32, DType::BF16), 5, (1e-5, 1e-5));
    ln_vs_composed(&[64, 771], (DType::BF16, DType::BF16), 6, (4e-3, 1.0 / 128.0));
    ln_vs_composed(&[64, 96], (DType::BF16, DType::F32), 7, (1e-5, 1e-5));
}

#[test]
fn layer_norm_strided_input_and_routing() {
    // A transposed (non-contiguous) input, and ops::layer_norm (which routes to the fused op on the CPU) keeps the
    // composed version's output dtype.
    let (x, w, b, _) = ln_inputs(8, &[24, 10]);
    let xt = x.to_dtype(DType::F32).unwrap().t().unwrap(); // (10, 24), strided
    let (w, b) = (w.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    let w24 = Tensor::ones(24, DType::F32, &Device::Cpu).unwrap();
    let b24 = Tensor::zeros(24, DType::F32, &Device::Cpu).unwrap();
    let got = ops::layer_norm(&xt, &w24, &b24, EPS).unwrap();
    let want = ops::layer_norm_slow(&xt.contiguous().unwrap(), &w24, &b24, EPS).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_close("cpu layer-norm strided", &f64s(&got), &f64s(&want), 1e-6, 0.0);
    let bf = ops::layer_norm_to(&x.to_dtype(DType::F32).unwrap(), &w, &b, EPS, DType::BF16).unwrap();
    assert_eq!(bf.dtype(), DType::BF16);
    assert!(layer_norm(&x, &w24, &b24, EPS, DType::F64).is_err(), "weight of the wrong length is refused");
    // f16, which no config selects, has no fused kernel: the op refuses it and ops routes it to the composed version.
    let h = x.to_dtype(DType::F16).unwrap();
    assert!(!tokenmill::model::kernels::layer_norm::supported(&h, DType::F16));
    assert!(layer_norm(&h, &w, &b, EPS, DType::F16).unwrap_err().to_string().contains("not supported"));
    assert_eq!(ops::layer_norm_to(&h, &w, &b, EPS, DType::F16).unwrap().dtype(), DType::F16);
}

/// Central finite differences of `f` with respect to every element of `vars` (f64), against autograd.
fn check_fd(vars: &[(&str, &Var)], f: &dyn Fn() -> Tensor) {
    const H: f64 = 1e-6;
    let grads = f().backward().unwrap();
    for (name, v) in vars {
        let g = f64s(grads.get(v.as_tensor()).expect("no gradient"));
        let base = f64s(v.as_tensor());
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut p = base.clone();
                p[i] += d;
                v.set(&Tensor::from_vec(p, v.dims(), &Device::Cpu).unwrap()).unwrap();
                let y = f().to_scalar::<f64>().unwrap();
                v.set(&Tensor::from_vec(base.clone(), v.dims(), &Device::Cpu).unwrap()).unwrap();
                y
            };
            let fd = (at(H) - at(-H)) / (2.0 * H);
            assert!((g[i] - fd).abs() <= 1e-8 + 1e-7 * fd.abs(), "d{name}[{i}]: {} vs finite difference {fd}", g[i]);
        }
        assert!(g.iter().any(|&x| x != 0.0), "{name}: gradient is identically zero");
    }
}

#[test]
fn layer_norm_finite_differences_f64() {
    let (x, w, b, r) = ln_inputs(9, &[3, 4, 8]);
    let (x, w, b) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    let f = || {
        let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), EPS, DType::F64).unwrap();
        (y * &r).unwrap().sum_all().unwrap()
    };
    check_fd(&[("x", &x), ("weight", &w), ("bias", &b)], &f);
}

/// GELU through the fused op or the composed reference on x (cast to `dt`), upstream `r`: (y, dx).
fn gelu_run(fused: bool, x: &Tensor, r: &Tensor, dt: DType, dev: &Device) -> (Vec<f64>, Vec<f64>) {
    let xv = Var::from_tensor(&x.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap();
    let y = if fused { gelu_tanh(xv.as_tensor()).unwrap() } else { ops::gelu_tanh_slow(xv.as_tensor()).unwrap() };
    assert_eq!(y.dtype(), dt);
    let r = r.to_dtype(dt).unwrap().to_device(dev).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g.get(xv.as_tensor()).expect("no gradient");
    assert_eq!(dx.dtype(), dt);
    (f64s(&y), f64s(dx))
}

fn gelu_inputs(seed: u64, n: usize) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (rand_t(&mut rng, &[n], 6.0, 0.0), rand_t(&mut rng, &[n], 1.0, 0.0))
}

#[test]
fn gelu_matches_composed_f64_and_f32() {
    let (x, r) = gelu_inputs(10, 5000);
    let (y, dx) = gelu_run(true, &x, &r, DType::F64, &Device::Cpu);
    let (ry, rdx) = gelu_run(false, &x, &r, DType::F64, &Device::Cpu);
    assert_close("cpu gelu F64 y", &y, &ry, 1e-15, 1e-15);
    assert_close("cpu gelu F64 dx", &dx, &rdx, 1e-14, 1e-13);
    let (y, dx) = gelu_run(true, &x, &r, DType::F32, &Device::Cpu);
    let (ry, rdx) = gelu_run(false, &x, &r, DType::F32, &Device::Cpu);
    assert_close("cpu gelu F32 y", &y, &ry, 1e-6, 1e-6);
    assert_close("cpu gelu F32 dx", &dx, &rdx, 1e-6, 1e-5);
}

#[test]
fn gelu_bf16_is_one_rounding_of_f64() {
    // bf16: f32 math on the rounded inputs, one rounding at the end; the f64 reference sees the same rounded
    // inputs and upstream gradient. The composed bf16 version (every op rounded) is printed for comparison.
    let (x, r) = gelu_inputs(11, 4099);
    let dt = DType::BF16;
    let xr = x.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap();
    let rr = r.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap();
    let (want_y, want_dx) = gelu_run(true, &xr, &rr, DType::F64, &Device::Cpu);
    let (y, dx) = gelu_run(true, &x, &r, dt, &Device::Cpu);
    assert_close(&format!("cpu gelu {dt:?} y"), &y, &want_y, 1e-4, 1.0 / 128.0);
    assert_close(&format!("cpu gelu {dt:?} dx"), &dx, &want_dx, 1e-4, 1.0 / 128.0);
    let (sy, sdx) = gelu_run(false, &x, &r, dt, &Device::Cpu);
    assert_close(&format!("cpu gelu {dt:?} composed y"), &sy, &want_y, 1e-2, 1.0 / 16.0);
    assert_close(&format!("cpu gelu {dt:?} composed dx"), &sdx, &want_dx, 1e-2, 1.0 / 16.0);
    // f16, which no config selects, has no fused kernel: the op refuses it and ops routes it to the composed version.
    let h = x.to_dtype(DType::F16).unwrap();
    assert!(!tokenmill::model::kernels::gelu::supported(&h));
    assert!(gelu_tanh(&h).unwrap_err().to_string().contains("not supported"));
    assert_eq!(ops::gelu_tanh(&h).unwrap().dtype(), DType::F16);
}

#[test]
fn gelu_finite_differences_f64() {
    let v: Vec<f64> = (0..61).map(|i| -7.5 + 0.25 * i as f64).collect();
    let x = Var::from_tensor(&Tensor::from_vec(v.clone(), 61, &Device::Cpu).unwrap()).unwrap();
    let (_, r) = gelu_inputs(12, 61);
    let f = || (gelu_tanh(x.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap();
    check_fd(&[("x", &x)], &f);
    let got = f64s(&gelu_tanh(x.as_tensor()).unwrap());
    for (x, y) in v.iter().zip(got) {
        let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        assert!((y - want).abs() < 1e-15, "gelu({x}) = {y}, want {want}");
    }
}

/// CUDA forward and every gradient against the CPU twin in f64 on the same rounded inputs: LayerNorm in the
/// model's f32 -> bf16 form, f32 -> f32 and bf16 -> bf16, at GPT-2 widths and odd ones (partial last blocks of the
/// backward, rows that are not 128-column multiples, 1600 and the widest 2048), an unaligned start, and widths the kernels do
/// not take routed to the composed version; GELU in f32, bf16 and f64 with an unaligned start.
#[test]
fn cuda_matches_cpu() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_matches_cpu: no CUDA device (CPU twins above ran)");
        return;
    };
    // (x dtype, out dtype, N, C, (abs_frac, rel) for y, for dx)
    type LnCase = (DType, DType, usize, usize, (f64, f64), (f64, f64));
    let f32_tol = (1e-5, 1e-4);
    let bf_tol = (4e-3, 1.0 / 128.0);
    let cases: [LnCase; 6] = [
        (DType::F32, DType::BF16, 1000, 768, bf_tol, f32_tol),
        // GPT-2 1558M's width: the backward's whole-register-file kernel (one block per SM, `norm::bwd_rows`).
        (DType::F32, DType::BF16, 3000, 1600, bf_tol, f32_tol),
        (DType::F32, DType::F32, 2049, 772, f32_tol, f32_tol),
        (DType::F32, DType::F32, 70, 2048, f32_tol, f32_tol),
        (DType::BF16, DType::BF16, 300, 768, bf_tol, bf_tol),
        (DType::BF16, DType::F32, 65, 36, f32_tol, bf_tol),
    ];
    for (xdt, out, n, c, ytol, dxtol) in cases {
        let (x, w, b, r) = ln_inputs(20 + c as u64, &[n, c]);
        // The f64 reference on exactly the values the GPU sees.
        let round = |t: &Tensor, dt: DType| t.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap();
        let (xr, wr, br, rr) = (round(&x, xdt), round(&w, DType::F32), round(&b, DType::F32), round(&r, out));
        let want = ln_run(true, &xr, &wr, &br, &rr, (DType::F64, DType::F64), &Device::Cpu);
        let got = ln_run(true, &x, &w, &b, &r, (xdt, out), &dev);
        let what = format!("cuda layer-norm {xdt:?}->{out:?} N={n} C={c}");
        assert_close(&format!("{what} y"), &got.out, &want.out, ytol.0, ytol.1);
        assert_close(&format!("{what} dx"), &got.grads[0], &want.grads[0], dxtol.0, dxtol.1);
        assert_close(&format!("{what} dweight"), &got.grads[1], &want.grads[1], f32_tol.0, f32_tol.1);
        assert_close(&format!("{what} dbias"), &got.grads[2], &want.grads[2], f32_tol.0, f32_tol.1);
    }
    // Widths the kernels do not take (rows in registers: C a multiple of 4 up to 2048) are refused by the op and go
    // to the composed version through ops::layer_norm_to.
    for c in [771usize, 3072] {
        let (x, w, b, _) = ln_inputs(40 + c as u64, &[5, c]);
        let on = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
        let (xd, wd, bd) = (on(&x), on(&w), on(&b));
        assert!(!tokenmill::model::kernels::layer_norm::supported(&xd, DType::F32), "C = {c}");
        assert!(layer_norm(&xd, &wd, &bd, EPS, DType::F32).is_err(), "C = {c}");
        let got = ops::layer_norm_to(&xd, &wd, &bd, EPS, DType::F32).unwrap();
        let want = ops::layer_norm_slow(&on(&x).to_device(&Device::Cpu).unwrap(), &w, &b, EPS).unwrap();
        assert_close(&format!("cuda layer-norm routed C={c}"), &f64s(&got), &f64s(&want), 1e-5, 1e-4);
    }
    // A start one element into the buffer: the op copies x to a start the 4-element vector loads can read.
    let (x, w, b, _) = ln_inputs(50, &[8 * 768 + 1]);
    let w = w.narrow(0, 0, 768).unwrap();
    let b = b.narrow(0, 0, 768).unwrap();
    let on = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let xd = on(&x).narrow(0, 1, 8 * 768).unwrap().reshape((8, 768)).unwrap();
    assert_eq!(xd.layout().start_offset(), 1);
    let got = layer_norm(&xd, &on(&w), &on(&b), EPS, DType::F32).unwrap();
    let want = ops::layer_norm_slow(&xd.to_device(&Device::Cpu).unwrap(), &w, &b, EPS).unwrap();
    assert_close("cuda layer-norm unaligned start", &f64s(&got), &f64s(&want), 1e-5, 1e-4);
    // GELU: a narrowed view starting one element in (the kernels' scalar path) and an aligned one (16-byte path).
    let (x, r) = gelu_inputs(30, (1 << 20) + 11);
    for (dt, tol) in [(DType::F32, (1e-6, 1e-5)), (DType::BF16, (1e-4, 1.0 / 128.0)), (DType::F64, (1e-14, 1e-13))] {
        for start in [0usize, 1] {
            let n = (1 << 20) + 3;
            let (xs, rs) = (x.narrow(0, start, n).unwrap(), r.narrow(0, start, n).unwrap());
            let round = |t: &Tensor| t.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap();
            let (want_y, want_dx) = gelu_run(true, &round(&xs), &round(&rs), DType::F64, &Device::Cpu);
            // The unaligned case narrows on the device, so the kernel gets a pointer 1 element into the buffer.
            let xd = Var::from_tensor(&x.to_dtype(dt).unwrap().to_device(&dev).unwrap()).unwrap();
            let y = gelu_tanh(&xd.as_tensor().narrow(0, start, n).unwrap()).unwrap();
            let rd = rs.to_dtype(dt).unwrap().to_device(&dev).unwrap();
            let g = (&y * &rd).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = g.get(xd.as_tensor()).unwrap().narrow(0, start, n).unwrap();
            let what = format!("cuda gelu {dt:?} N={n} start={start}");
            assert_close(&format!("{what} y"), &f64s(&y), &want_y, tol.0, tol.1);
            assert_close(&format!("{what} dx"), &f64s(&dx), &want_dx, tol.0, tol.1);
        }
    }
}

/// Milliseconds per call of `f` (forward only, or forward + backward), 10 reps after a warm-up.
fn time_ms(dev: &Device, f: &dyn Fn(bool)) -> (f64, f64) {
    f(true); // PTX JIT, allocations
    let time = |bwd: bool| {
        dev.synchronize().unwrap();
        let t0 = std::time::Instant::now();
        const REPS: usize = 10;
        for _ in 0..REPS {
            f(bwd);
        }
        dev.synchronize().unwrap();
        t0.elapsed().as_secs_f64() * 1e3 / REPS as f64
    };
    (time(false), time(true))
}

/// Timings at GPT-2 124M shapes, B*T = 32768: LayerNorm (C = 768, the model's f32 residual in, bf16 out) and GELU
/// (C = 3072, bf16), fused vs composed (the composed LayerNorm followed by its cast, as the model used it). Prints
/// `TIMING` lines for scripts/gpu-kernel-check.sh.
#[test]
#[ignore = "GPU timing; run by scripts/gpu-kernel-check.sh"]
fn cuda_timing_norm_act_gpt2_shapes() {
    let Some(dev) = cuda_device() else {
        eprintln!("SKIPPED cuda_timing_norm_act_gpt2_shapes: no CUDA device");
        return;
    };
    let n = 32768;
    let c = 768;
    let x = Var::from_tensor(&Tensor::randn(0.5f32, 1.0, (n, c), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, c, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, c, &dev).unwrap()).unwrap();
    for fused in [true, false] {
        let run = |bwd: bool| {
            let y = if fused {
                layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), EPS, DType::BF16).unwrap()
            } else {
                ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), EPS)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            if bwd {
                let g = y.backward().unwrap();
                assert!(g.get(w.as_tensor()).is_some());
            }
        };
        let (fwd, both) = time_ms(&dev, &run);
        // Minimum traffic: forward reads x (f32) and writes y (bf16); backward reads x, dy (bf16), writes dx (f32).
        let gbs = (n * c * (4 + 2 + 4 + 2 + 4)) as f64 / (both * 1e-3) / 1e9;
        let label = if fused { "fused" } else { "composed" };
        eprintln!(
            "TIMING layer-norm {label:8} N={n} C={c} f32->bf16: fwd {fwd:7.3} ms  bwd {:7.3} ms  fwd+bwd {both:7.3} ms  ({gbs:.0} GB/s of the fused minimum traffic)",
            both - fwd
        );
    }
    drop((x, w, b));
    let c = 3072;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c), &dev).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
    for fused in [true, false] {
        let run = |bwd: bool| {
            let y = if fused { gelu_tanh(x.as_tensor()).unwrap() } else { ops::gelu_tanh_slow(x.as_tensor()).unwrap() };
            if bwd {
                let g = y.backward().unwrap();
                assert!(g.get(x.as_tensor()).is_some());
            }
        };
        let (fwd, both) = time_ms(&dev, &run);
        // Minimum traffic (bf16): forward reads x, writes y; backward reads x and dy, writes dx.
        let gbs = (n * c * 2 * 5) as f64 / (both * 1e-3) / 1e9;
        let label = if fused { "fused" } else { "composed" };
        eprintln!(
            "TIMING gelu       {label:8} N={n} C={c} bf16:     fwd {fwd:7.3} ms  bwd {:7.3} ms  fwd+bwd {both:7.3} ms  ({gbs:.0} GB/s of the fused minimum traffic)",
            both - fwd
        );
    }
}
