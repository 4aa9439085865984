//! Gradients against central finite differences in f64: every composed op the models use (LayerNorm, RMSNorm,
//! softmax, GELU(tanh), SiLU, linear, embedding, cross-entropy, causal attention, rotary), then the whole tiny GPT-2
//! loss w.r.t. a sample of elements of every parameter. A missing backward shows up as a missing gradient; a wrong
//! one as a mismatch. Tolerance: |autograd - fd| <= 1e-8 + 1e-7 |fd| (fd error at eps = 1e-6: ~1e-12 truncation,
//! ~1e-10 rounding). That is tight enough to fail candle's built-in `gelu` backward, whose 6-digit constants are off
//! by ~1e-7 relative (seen: 0.82774546 vs 0.82774557 at x = 2.25).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenmill::model::attention::causal_attention;
use tokenmill::model::ops;
use tokenmill::model::{build_model, Architecture, LanguageModel, ModelConfig, Precision};

const EPS: f64 = 1e-6;

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rand_var(rng: &mut ChaCha8Rng, shape: &[usize], scale: f64) -> Var {
    Var::from_tensor(&rand_tensor(rng, shape, scale)).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    assert_eq!(t.dtype(), DType::F64, "gradient checks run in f64");
    t.to_scalar::<f64>().unwrap()
}

/// Check d f / d var against finite differences at `per_var` random elements of each var plus its largest-gradient
/// element. Returns how many elements were checked.
fn check(vars: &[(String, Var)], f: &dyn Fn() -> Tensor, per_var: usize, seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let grads = f().backward().unwrap();
    let mut checked = 0;
    for (name, var) in vars {
        let g = values(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient (backward stops)")));
        let base = values(var.as_tensor());
        let argmax = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let mut idx: Vec<usize> = (0..per_var).map(|_| rng.gen_range(0..g.len())).collect();
        idx.push(argmax);
        for i in idx {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                scalar(&f())
            };
            let fd = (eval(EPS) - eval(-EPS)) / (2.0 * EPS);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let tol = 1e-8 + 1e-7 * fd.abs();
            assert!((g[i] - fd).abs() <= tol, "{name}[{i}]: autograd {} vs finite difference {fd}", g[i]);
            checked += 1;
        }
        assert!(g.iter().any(|&x| x != 0.0), "{name}: gradient is identically zero");
    }
    checked
}

/// `sum(op_output * r)` for a fixed random `r`: every output element gets its own nonzero upstream gradient.
fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = rand_tensor(&mut rng, out.dims(), 1.0).to_dtype(out.dtype()).unwrap();
    (out * r).unwrap().sum_all().unwrap()
}

fn named(vars: &[(&str, &Var)]) -> Vec<(String, Var)> {
    vars.iter().map(|(n, v)| (n.to_string(), (*v).clone())).collect()
}

#[test]
fn layer_norm_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (x, w, b) = (rand_var(&mut rng, &[3, 4, 8], 2.0), rand_var(&mut rng, &[8], 1.0), rand_var(&mut rng, &[8], 1.0));
    let f = || weighted_sum(&ops::layer_norm(&x, &w, &b, ops::LAYER_NORM_EPS).unwrap(), 11);
    check(&named(&[("x", &x), ("weight", &w), ("bias", &b)]), &f, 6, 0);
}

#[test]
fn rms_norm_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (x, w) = (rand_var(&mut rng, &[2, 5, 8], 2.0), rand_var(&mut rng, &[8], 1.0));
    let f = || weighted_sum(&ops::rms_norm(&x, &w, ops::RMS_NORM_EPS).unwrap(), 12);
    check(&named(&[("x", &x), ("weight", &w)]), &f, 6, 0);
}

#[test]
fn softmax_grad_and_value() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = rand_var(&mut rng, &[4, 7], 5.0);
    let f = || weighted_sum(&ops::softmax_last_dim(&x).unwrap(), 13);
    check(&named(&[("x", &x)]), &f, 8, 0);
    let rows = ops::softmax_last_dim(&x).unwrap().sum(1).unwrap();
    assert!(values(&rows).iter().all(|s| (s - 1.0).abs() < 1e-12));
}

#[test]
fn gelu_tanh_grad_and_value() {
    let v: Vec<f64> = (0..41).map(|i| -5.0 + 0.25 * i as f64).collect();
    let x = Var::from_tensor(&Tensor::from_vec(v.clone(), 41, &Device::Cpu).unwrap()).unwrap();
    let f = || weighted_sum(&ops::gelu_tanh(&x).unwrap(), 14);
    check(&named(&[("x", &x)]), &f, 20, 0);
    let got = values(&ops::gelu_tanh(&x).unwrap());
    for (x, y) in v.iter().zip(got) {
        let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        assert!((y - want).abs() < 1e-15, "gelu({x}) = {y}, want {want}");
    }
}

#[test]
fn silu_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = rand_var(&mut rng, &[30], 6.0);
    let f = || weighted_sum(&ops::silu(&x).unwrap(), 15);
    check(&named(&[("x", &x)]), &f, 10, 0);
}

#[test]
fn linear_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (x, w, b) =
        (rand_var(&mut rng, &[2, 3, 6], 1.0), rand_var(&mut rng, &[5, 6], 1.0), rand_var(&mut rng, &[5], 1.0));
    let f = || weighted_sum(&ops::linear(&x, &w, Some(&b)).unwrap(), 16);
    check(&named(&[("x", &x), ("weight", &w), ("bias", &b)]), &f, 6, 0);
    let y = ops::linear(&x, &w, Some(&b)).unwrap();
    assert_eq!(y.dims(), &[2, 3, 5]);
}

#[test]
fn embedding_grad_accumulates_repeated_ids() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let table = rand_var(&mut rng, &[10, 4], 1.0);
    let idx = Tensor::from_vec(vec![1u32, 3, 3, 9, 1, 3], (2, 3), &Device::Cpu).unwrap();
    let f = || weighted_sum(&ops::embedding(&table, &idx).unwrap(), 17);
    check(&named(&[("table", &table)]), &f, 12, 0);
}

#[test]
fn cross_entropy_grad_and_value() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let logits = rand_var(&mut rng, &[6, 9], 4.0);
    let targets = Tensor::from_vec(vec![0u32, 8, 3, 3, 5, 1], 6, &Device::Cpu).unwrap();
    let f = || ops::cross_entropy(&logits, &targets).unwrap();
    check(&named(&[("logits", &logits)]), &f, 10, 0);
    let f = || weighted_sum(&ops::token_cross_entropy(&logits, &targets).unwrap(), 18);
    check(&named(&[("logits", &logits)]), &f, 10, 1);
    // Value: mean(logsumexp - logit[target]).
    let l = logits.as_tensor().to_vec2::<f64>().unwrap();
    let want: f64 = [0usize, 8, 3, 3, 5, 1]
        .iter()
        .zip(&l)
        .map(|(&t, row)| row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[t])
        .sum::<f64>()
        / 6.0;
    assert!((scalar(&f_ce(&logits, &targets)) - want).abs() < 1e-12);
}

fn f_ce(logits: &Var, targets: &Tensor) -> Tensor {
    ops::cross_entropy(logits, targets).unwrap()
}

#[test]
fn causal_attention_grad() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let shape = [2, 2, 5, 4];
    let (q, k, v) = (rand_var(&mut rng, &shape, 1.5), rand_var(&mut rng, &shape, 1.5), rand_var(&mut rng, &shape, 1.0));
    let f = || weighted_sum(&causal_attention(&q, &k, &v).unwrap(), 19);
    check(&named(&[("q", &q), ("k", &k), ("v", &v)]), &f, 10, 0);
}

#[test]
fn rotary_grad_and_norm_preservation() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = rand_var(&mut rng, &[1, 2, 5, 6], 1.0);
    let (cos, sin) = ops::rotary_tables(5, 6, 10_000.0, DType::F64, &Device::Cpu).unwrap();
    let f = || weighted_sum(&ops::apply_rotary(&x, &cos, &sin).unwrap(), 20);
    check(&named(&[("x", &x)]), &f, 10, 0);
    // A rotation: per-position norms are unchanged, and position 0 is the identity.
    let y = ops::apply_rotary(&x, &cos, &sin).unwrap();
    let n = |t: &Tensor| values(&t.sqr().unwrap().sum(3).unwrap());
    for (a, b) in n(&x).iter().zip(n(&y)) {
        assert!((a - b).abs() < 1e-12);
    }
    let p0 = |t: &Tensor| values(&t.narrow(2, 0, 1).unwrap());
    assert_eq!(p0(&x), p0(&y));
}

/// Every parameter perturbed away from its init (LayerNorm gains 1, biases 0, small projections) so no term of the
/// gradient is accidentally zero.
fn randomise(model: &dyn LanguageModel, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (_, v) in model.parameters() {
        let noise = rand_tensor(&mut rng, v.dims(), 0.3);
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

fn tokens(rng: &mut ChaCha8Rng, b: usize, t: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|_| rng.gen_range(0..vocab as u32)).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

#[test]
fn whole_gpt2_loss_grad() {
    let cfg = ModelConfig {
        arch: Architecture::Gpt2,
        block_size: 6,
        vocab_size: 19,
        real_vocab_size: 17,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        n_kv_head: None,
        ffn_hidden: None,
        rope_theta: None,
        tie_word_embeddings: None,
        norm_eps: None,
    };
    let model = build_model(&cfg, Precision::F64, &Device::Cpu, 3).unwrap();
    randomise(model.as_ref(), 30);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let (idx, targets) = (tokens(&mut rng, 2, 5, 17), tokens(&mut rng, 2, 5, 17));
    let f = || model.loss(&idx, &targets).unwrap();
    let params = model.parameters();
    assert_eq!(params.len(), 2 + 12 * 2 + 2);
    let n = check(&params, &f, 3, 32);
    assert_eq!(n, params.len() * 4);
}
