//! `kernels::embedding_lookup`: forward equals candle's `index_select`, backward equals candle's `index_add` exactly,
//! on CPU and on CUDA (the CUDA backward sums each id's rows in the CPU's order), ids repeated many times included,
//! and a second CUDA run repeats the first bit for bit. On a GPU (scripts/gpu-kernel-check.sh) also the timing of the
//! backward against `index_add` at GPT-2 shapes, with uniform and with skewed (one very frequent id) ids.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use common::cuda_device;
use tokenmill::model::kernels::{embedding_backward, embedding_lookup};

/// Seeded ids in 0..v with many repeats (v small relative to n) and random upstream gradients.
fn inputs(n: usize, v: usize, c: usize, device: &Device) -> (Var, Tensor, Tensor) {
    let table = Var::from_tensor(&Tensor::randn(0f32, 1., (v, c), device).unwrap()).unwrap();
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let ids = Tensor::from_vec(ids, n, device).unwrap();
    let w = Tensor::randn(0f32, 1., (n, c), device).unwrap();
    (table, ids, w)
}

/// Gradient of sum(w * table[ids]) with respect to the table: through the fused op and through candle's own ops.
fn grads(table: &Var, ids: &Tensor, w: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let fused = embedding_lookup(table.as_tensor(), ids).unwrap();
    let composed = table.as_tensor().index_select(ids, 0).unwrap();
    let gf = (&fused * w).unwrap().sum_all().unwrap().backward().unwrap().remove(table.as_tensor()).unwrap();
    let gc = (&composed * w).unwrap().sum_all().unwrap().backward().unwrap().remove(table.as_tensor()).unwrap();
    (fused, composed, gf, gc)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn cpu_lookup_and_gradient_equal_candles_ops_exactly() {
    let (table, ids, w) = inputs(1000, 37, 24, &Device::Cpu);
    let (fused, composed, gf, gc) = grads(&table, &ids, &w);
    assert_eq!(fused.dims(), &[1000, 24]);
    assert_eq!(max_abs_diff(&fused, &composed), 0.0);
    assert_eq!(max_abs_diff(&gf, &gc), 0.0);
    // Rows never looked up get exactly zero.
    let (table, ids, w) = inputs(5, 50, 8, &Device::Cpu);
    let (_, _, gf, _) = grads(&table, &ids, &w);
    let used: Vec<u32> = ids.to_vec1().unwrap();
    let rows = gf.to_vec2::<f32>().unwrap();
    for (r, row) in rows.iter().enumerate() {
        if !used.contains(&(r as u32)) {
            assert!(row.iter().all(|&x| x == 0.0), "row {r}");
        }
    }
}

#[test]
fn bad_ids_are_errors() {
    let table = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap();
    assert!(embedding_lookup(&table, &ids).unwrap_err().to_string().contains("1-D u32"));
    let out_of_range = Tensor::new(&[0u32, 9], &Device::Cpu).unwrap();
    assert!(embedding_lookup(&table, &out_of_range).is_err());
}

#[test]
fn cuda_matches_cpu() {
    let Some(dev) = cuda_device() else { return };
    for (n, v, c) in [(1, 3, 5), (1000, 37, 24), (4096, 50304, 768), (8192, 11, 768)] {
        let (table, ids, w) = inputs(n, v, c, &Device::Cpu);
        let (fused_cpu, _, g_cpu, _) = grads(&table, &ids, &w);
        let table_gpu = Var::from_tensor(&table.as_tensor().to_device(&dev).unwrap()).unwrap();
        let (ids_gpu, w_gpu) = (ids.to_device(&dev).unwrap(), w.to_device(&dev).unwrap());
        let (fused_gpu, _, g_gpu, _) = grads(&table_gpu, &ids_gpu, &w_gpu);
        assert_eq!(max_abs_diff(&fused_gpu, &fused_cpu), 0.0, "forward n={n} v={v} c={c}");
        assert_eq!(max_abs_diff(&g_gpu, &g_cpu), 0.0, "backward n={n} v={v} c={c}");
        let (_, _, again, _) = grads(&table_gpu, &ids_gpu, &w_gpu);
        assert_eq!(max_abs_diff(&again, &g_gpu), 0.0, "second run n={n} v={v} c={c}");
    }
}

/// `TIMING` line for scripts/gpu-kernel-check.sh (ignored: run with `--ignored`).
#[test]
#[ignore]
fn cuda_timing() {
    let Some(dev) = cuda_device() else { return };
    let (n, v, c) = (65536, 50304, 768); // GPT-2 124M, B = 64, T = 1024
    let uniform: Vec<u32> = (0..n).map(|i| ((i as u64 * 2654435761) % 50257) as u32).collect();
    // Text-like skew: one id on 5% of the rows (as "," or " the" in FineWeb), the rest uniform.
    let skewed: Vec<u32> = uniform.iter().enumerate().map(|(i, &id)| if i % 20 == 0 { 11 } else { id }).collect();
    let dy = Tensor::randn(0f32, 1., (n, c), &dev).unwrap();
    let time = |f: &dyn Fn() -> Tensor| {
        let _ = f();
        dev.synchronize().unwrap();
        let mut ms = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let _ = f();
            dev.synchronize().unwrap();
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        ms[2]
    };
    for (what, ids) in [("uniform", uniform), ("skewed", skewed)] {
        let ids = Tensor::from_vec(ids, n, &dev).unwrap();
        let ours = time(&|| embedding_backward(&dy, &ids, v).unwrap());
        let candle = time(&|| Tensor::zeros((v, c), DType::F32, &dev).unwrap().index_add(&ids, &dy, 0).unwrap());
        println!(
            "TIMING embedding backward N={n} C={c} V={v} {what} ids: grouped {ours:8.3} ms, candle index_add {candle:8.3} ms"
        );
    }
}
