//! `tokenmill bench gemm-tune`: pick cuBLASLt's algorithm per matmul shape by timing, once, on this GPU, and write
//! the choices as a table the decoder engine loads (`[engine] gemm_table`, `cuda::gemm_table`).
//!
//! For each model preset: build the decoder engine at micro-batch (B, T) in bf16, switch its cuBLASLt layer to
//! tuning (`DecoderEngine::tune_gemms`) and run one training micro-step on seeded random tokens: every product the
//! step makes, forward and backward, meets its shape there first, and each of the heuristic's candidates (up to
//! `gemm_table::CANDIDATES`) is timed on that call's own operands with CUDA events (`reps` runs after one untimed).
//! The step's numbers are garbage (products run many times over); only the timings are kept. Shapes shared by
//! several presets are timed once. A table is valid for the shapes it holds (B x T is one of the dimensions), the
//! GPU and the cuBLASLt version it was made on; the engine refuses it elsewhere.

use std::path::Path;

use crate::bench::BenchError;
use crate::cuda::gemm_table::GemmTable;

/// What to tune.
#[derive(Clone, Debug)]
pub struct TuneSpec {
    pub presets: Vec<String>,
    pub batch: usize,
    pub seq_len: usize,
    /// Timed runs per candidate.
    pub reps: usize,
    pub seed: u64,
}

/// Tune every preset of `spec` on `device` (CUDA) and write the table to `out`.
#[cfg(feature = "cuda")]
pub fn tune(spec: &TuneSpec, device: &candle_core::Device, out: &Path) -> Result<GemmTable, BenchError> {
    use crate::bench::runner::BenchModel;
    use crate::cuda::blaslt::BlasLt;
    use crate::cuda::gemm_table::TunedShape;
    use crate::shards::loader::Batch;
    use crate::train::decoder::DecoderEngine;
    use crate::train::optim::AdamWConfig;
    use rand::{Rng, SeedableRng};

    if !device.is_cuda() {
        return Err(BenchError::Invalid("bench gemm-tune times cuBLASLt: it needs --device cuda".into()));
    }
    let (b, t) = (spec.batch, spec.seq_len);
    let stream = device.as_cuda_device()?.cuda_stream();
    let gpu = stream.context().name().map_err(candle_core::Error::wrap)?;
    let mut shapes: Vec<TunedShape> = Vec::new();
    for name in &spec.presets {
        let bench = BenchModel::preset(name)?;
        let cfg = &bench.base;
        let model_cfg = cfg.model.resolve(bench.data_vocab)?;
        let bf16 = crate::train::config::ComputeDtype::Bf16.precision();
        let model = crate::model::build_model(&model_cfg, bf16, device, spec.seed)?;
        let vocab = model_cfg.real_vocab_size as u32;
        // Timed from the heuristic's list whatever a shipped table says (tune_gemms times every candidate anyway).
        let opts = crate::train::config::EngineOptions {
            gemm_table: crate::train::decoder::GemmTableChoice::Heuristic,
            ..cfg.engine.clone()
        };
        let mut engine = DecoderEngine::new(model, device, (b, t), AdamWConfig::from_config(cfg), opts)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
        let ids: Vec<u32> = (0..b * t + 1).map(|_| rng.gen_range(0..vocab)).collect();
        let batch = Batch { x: ids[..b * t].to_vec(), y: ids[1..].to_vec(), batch_size: b, seq_len: t };
        engine.tune_gemms(spec.reps)?;
        engine.begin_step()?;
        engine.micro_step(&batch, 1)?;
        stream.synchronize().map_err(candle_core::Error::wrap)?;
        for found in engine.tuned_gemms() {
            match shapes.iter_mut().find(|s| s.shape == found.shape) {
                Some(s) => s.calls += found.calls,
                None => shapes.push(found),
            }
        }
        eprintln!("tuned {name} at B={b} T={t}: {} shapes so far", shapes.len());
    }
    let table = GemmTable {
        gpu,
        cublaslt: BlasLt::version(),
        tuned_for: format!("{} at B={b} T={t}, {} timed runs per candidate", spec.presets.join(", "), spec.reps),
        shapes,
    };
    table.save(out).map_err(|source| BenchError::Io { path: out.display().to_string(), source })?;
    Ok(table)
}

#[cfg(not(feature = "cuda"))]
pub fn tune(_spec: &TuneSpec, _device: &candle_core::Device, _out: &Path) -> Result<GemmTable, BenchError> {
    Err(BenchError::Invalid("bench gemm-tune times cuBLASLt: it needs the `cuda` build".into()))
}

/// One line per shape (calls per micro-step, the heuristic's first and the chosen algorithm's time) and the total.
pub fn report(table: &GemmTable) -> String {
    let mut s = format!("cuBLASLt algorithms on {} (cuBLASLt {}), {}\n", table.gpu, table.cublaslt, table.tuned_for);
    s.push_str(
        "     m      n      k  tA tB  D    C  epilogue       calls  offered  algo  first us  chosen us   gain\n",
    );
    for t in &table.shapes {
        let sh = &t.shape;
        s.push_str(&format!(
            "{:>6} {:>6} {:>6}  {}  {}  {} {} {:<14} {:>5} {:>8} {:>5} {:>9.1} {:>10.1} {:>5.1}%\n",
            sh.m,
            sh.n,
            sh.k,
            sh.trans_a as u8,
            sh.trans_b as u8,
            if sh.d_f32 { "f32 " } else { "bf16" },
            if sh.accumulate { "+C" } else { "  " },
            sh.epilogue,
            t.calls,
            t.offered,
            t.algo,
            t.default_us,
            t.chosen_us,
            100.0 * (1.0 - t.chosen_us / t.default_us)
        ));
    }
    let (first, chosen) = table.micro_step_us();
    s.push_str(&format!(
        "all products of the tuned micro-steps: {:.3} ms with the heuristic's first, {:.3} ms chosen ({:.1}% less)\n",
        first / 1e3,
        chosen / 1e3,
        100.0 * (1.0 - chosen / first)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::gemm_table::{GemmShape, TunedShape};

    #[test]
    fn the_report_has_a_line_per_shape_and_the_micro_step_total() {
        let shape =
            |m, epilogue: &str| GemmShape { epilogue: epilogue.into(), ..crate::cuda::gemm_table::tests::shape(m) };
        let table = GemmTable {
            gpu: "NVIDIA H100 80GB HBM3".into(),
            cublaslt: 130100,
            tuned_for: "llama-124m at B=64 T=1024".into(),
            shapes: vec![
                TunedShape {
                    shape: shape(2304, "none"),
                    algo: 5,
                    offered: 8,
                    calls: 12,
                    default_us: 322.9,
                    chosen_us: 292.8,
                },
                TunedShape {
                    shape: shape(768, "bias_bf16"),
                    algo: 0,
                    offered: 8,
                    calls: 12,
                    default_us: 100.0,
                    chosen_us: 100.0,
                },
            ],
        };
        let r = report(&table);
        assert!(r.starts_with("cuBLASLt algorithms on NVIDIA H100 80GB HBM3 (cuBLASLt 130100)"), "{r}");
        assert_eq!(r.lines().filter(|l| l.contains("65536")).count(), 2, "{r}");
        assert!(r.contains("bias_bf16") && r.contains("9.3%") && r.contains("0.0%"), "{r}");
        // 12 x 322.9 + 12 x 100 = 5074.8 us; 12 x 292.8 + 12 x 100 = 4713.6 us.
        assert!(r.contains("5.075 ms with the heuristic's first, 4.714 ms chosen (7.1% less)"), "{r}");
    }
}
