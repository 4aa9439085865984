use std::time::Instant;
use candle_core::{Device, Tensor, DType};
use tokenmill::model::{build_model, ModelConfig, Architecture, Precision};
use tokenmill::train::optim::{AdamW, AdamWConfig};
use tokenmill::train::step::*;
#[test]
fn profile() {
    let cfg = ModelConfig { arch: Architecture::Gpt2, block_size: 64, vocab_size: 50304, real_vocab_size: 50257, n_layer: 2, n_head: 2, n_embd: 64 };
    let dev = Device::Cpu;
    let m = build_model(&cfg, Precision::FP32, &dev, 1).unwrap();
    let params = m.parameters();
    let vars: Vec<_> = params.iter().map(|p| p.1.clone()).collect();
    let mut opt = AdamW::new(params, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }).unwrap();
    let x = Tensor::arange(0u32, 256, &dev).unwrap().reshape((4, 64)).unwrap();
    let y = Tensor::arange(1u32, 257, &dev).unwrap().reshape((4, 64)).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let l = m.loss(&x, &y).unwrap();
        let _ = l.to_scalar::<f32>();
        let t1 = t.elapsed();
        let (l, mut g) = micro_step(&*m, &vars, &x, &y, 1).unwrap();
        let t2 = t.elapsed();
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        let t3 = t.elapsed();
        opt.step(&g, 1e-3).unwrap();
        let t4 = t.elapsed();
        let logits = m.forward(&x).unwrap(); let _ = logits.dims();
        let t5 = t.elapsed();
        eprintln!("fwd-loss {:?} fwd+bwd {:?} clip {:?} adam {:?} forward-only {:?} {l} {n}", t1, t2-t1, t3-t2, t4-t3, t5-t4);
    }
    let _ = DType::F32;
}
