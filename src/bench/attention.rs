//! `tokenmill bench attention`: the flash-attention kernels (`crate::cuda::flash_attn`) timed alone with CUDA
//! events, at GPT-2 124M attention shapes: the training micro-batch B=64, T=1024, NH=12, HS=64 and T in 256, 512,
//! 2048 at the same 65,536 tokens. Per shape and launch variant: forward, backward (dQ with D, then dK/dV) and
//! each backward kernel alone, the median of `reps` timed runs after `warmup` untimed ones, each run bracketed by
//! its own pair of events; TFLOP/s count the causal half (forward 2*B*NH*T^2*HS, backward 2.5x that), as
//! FlashAttention's papers and PyTorch's benchmarks do. Inputs are random bf16 (never zeros). Compared with
//! PyTorch's SDPA by scripts/attn-bench.sh (reference/attention_sdpa.py).
//!
//! `--backend cudnn|both` (a `--features cudnn` build; `both` is its default) also times cuDNN's SDPA through
//! `crate::cuda::cudnn_attn` on the same buffers with the same events: with the deterministic backward requested
//! (what `[engine] attention = "cudnn"` trains with) and with cuDNN's default backward, so the cost of determinism is
//! measured. Graphs are built before timing; cuDNN has no separate dQ / dK-dV kernels to time (NaN there).
//!
//! On an sm_90 GPU (H100/H200) the native backend also times the Hopper backward kernels (`crate::cuda::flash_bwd_sm90`,
//! wgmma; not yet what training runs: dQ with D, then dK/dV) in each of their launch variants: rows
//! "sm90 bwd wg1|wg1b3|wg2|wg1p", whose forward is the default variant's.

use serde::Serialize;

/// (B, T, NH, HS) of the benchmark: 65,536 tokens each.
pub const SHAPES: [(usize, usize, usize, usize); 4] =
    [(64, 1024, 12, 64), (256, 256, 12, 64), (128, 512, 12, 64), (32, 2048, 12, 64)];

/// Which implementations `tokenmill bench attention` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// tokenmill's flash kernels (`crate::cuda::flash_attn`)
    Native,
    /// cuDNN's SDPA (`crate::cuda::cudnn_attn`; deterministic and default backward)
    Cudnn,
    /// both
    Both,
}

impl Backend {
    /// `both` where the binary has the cuDNN backend, else `native`.
    pub fn default_for_build() -> Backend {
        if cfg!(feature = "cudnn") {
            Backend::Both
        } else {
            Backend::Native
        }
    }
    /// Whether the native kernels are timed.
    pub fn native(self) -> bool {
        self != Backend::Cudnn
    }
    /// Whether cuDNN is timed.
    pub fn cudnn(self) -> bool {
        self != Backend::Native
    }
}

/// The `variant` labels of the cuDNN rows, and the `ATTN` implementation names `machine_lines` gives them.
pub const CUDNN_DETERMINISTIC: &str = "cudnn deterministic bwd";
pub const CUDNN_DEFAULT: &str = "cudnn default bwd";

/// One (shape, variant) row, milliseconds (medians).
#[derive(Clone, Debug, Serialize)]
pub struct AttnTiming {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub hs: usize,
    pub variant: String,
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    pub dq_ms: f64,
    pub dkdv_ms: f64,
}

impl AttnTiming {
    /// Causal forward FLOPs: two (T x T x HS) products over half the square, 2 FLOPs per multiply-add.
    pub fn fwd_flop(&self) -> f64 {
        2.0 * (self.b * self.nh) as f64 * (self.t * self.t) as f64 * self.hs as f64
    }
    pub fn fwd_tflops(&self) -> f64 {
        self.fwd_flop() / (self.fwd_ms * 1e-3) / 1e12
    }
    pub fn bwd_tflops(&self) -> f64 {
        2.5 * self.fwd_flop() / (self.bwd_ms * 1e-3) / 1e12
    }
}

/// The lines `scripts/attn-bench.sh` reads (`ATTN <impl> B T NH HS fwd_ms bwd_ms`), then a readable table.
pub fn report(rows: &[AttnTiming]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:>3} {:>5} {:>3} {:>3}  {:<28} {:>9} {:>7} {:>9} {:>7} {:>8} {:>8}\n",
        "B", "T", "NH", "HS", "variant", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s", "dQ+D ms", "dK/dV ms"
    ));
    for r in rows {
        s.push_str(&format!(
            "{:>3} {:>5} {:>3} {:>3}  {:<28} {:>9.3} {:>7.1} {:>9.3} {:>7.1} {:>8.3} {:>8.3}\n",
            r.b,
            r.t,
            r.nh,
            r.hs,
            r.variant,
            r.fwd_ms,
            r.fwd_tflops(),
            r.bwd_ms,
            r.bwd_tflops(),
            r.dq_ms,
            r.dkdv_ms
        ));
    }
    s
}

/// `ATTN tokenmill ...` lines for the default variant only (the one training runs), and `ATTN tokenmill-cudnn`
/// (deterministic backward) / `ATTN tokenmill-cudnn-nondet` (cuDNN's default backward) for the cuDNN rows.
pub fn machine_lines(rows: &[AttnTiming], default_label: &str) -> String {
    rows.iter()
        .filter_map(|r| {
            let name = match r.variant.as_str() {
                v if v == default_label => "tokenmill",
                CUDNN_DETERMINISTIC => "tokenmill-cudnn",
                CUDNN_DEFAULT => "tokenmill-cudnn-nondet",
                _ => return None,
            };
            Some(format!("ATTN {name} {} {} {} {} {:.4} {:.4}\n", r.b, r.t, r.nh, r.hs, r.fwd_ms, r.bwd_ms))
        })
        .collect()
}

/// The label of the variant `forward` / `backward` launch (the rows `machine_lines` reports).
#[cfg(feature = "cuda")]
pub fn default_label() -> String {
    crate::cuda::flash_attn::Variant::DEFAULT.label()
}
#[cfg(not(feature = "cuda"))]
pub fn default_label() -> String {
    String::new()
}

#[cfg(feature = "cuda")]
pub use gpu::run;

#[cfg(not(feature = "cuda"))]
pub fn run(
    _all_variants: bool,
    _backend: Backend,
    _warmup: usize,
    _reps: usize,
) -> anyhow::Result<(Vec<AttnTiming>, String)> {
    anyhow::bail!("`tokenmill bench attention` times CUDA kernels: build with --features cuda (scripts/build-cuda.sh)")
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;

    use anyhow::Context;
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaSlice, CudaStream};
    use half::bf16;

    use super::{AttnTiming, Backend, SHAPES};
    use crate::cuda::devptr::DevPtr;
    use crate::cuda::flash_attn::{check_dims, AttnBwd, FlashAttn, Heads, Variant};
    use crate::cuda::flash_bwd_sm90::{FlashBwdSm90, Sm90Variant};

    /// Random bf16 in [-1, 1) from a fixed xorshift stream.
    fn random_bf16(n: usize, seed: u64) -> Vec<bf16> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// Median milliseconds of `reps` event-bracketed runs of `f` after `warmup` untimed ones.
    fn time(
        stream: &Arc<CudaStream>,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> candle_core::Result<()>,
    ) -> anyhow::Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        let mut ms = Vec::with_capacity(reps);
        for _ in 0..reps {
            let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            f()?;
            let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            ms.push(a.elapsed_ms(&b)? as f64);
        }
        Ok(median(ms))
    }

    struct Bufs {
        qkv: CudaSlice<bf16>,
        dy: CudaSlice<bf16>,
        y: CudaSlice<bf16>,
        dqkv: CudaSlice<bf16>,
        lse: CudaSlice<f32>,
        scratch: CudaSlice<f32>,
    }

    /// Time every shape with the default variant (or every compiled variant) of the native kernels and/or cuDNN
    /// (`backend`): the rows and the device name.
    pub fn run(
        all_variants: bool,
        backend: Backend,
        warmup: usize,
        reps: usize,
    ) -> anyhow::Result<(Vec<AttnTiming>, String)> {
        let ctx = CudaContext::new(0).context("CUDA device 0")?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device 0".into());
        let stream = ctx.default_stream();
        #[cfg(feature = "cudnn")]
        let cudnn = cudnn_contexts(&stream, backend.cudnn())?;
        #[cfg(not(feature = "cudnn"))]
        if backend.cudnn() {
            anyhow::bail!(
                "bench attention --backend cudnn|both: this binary was built without the `cudnn` feature \
                 (scripts/build-cuda.sh --pypi-toolchain --features cudnn)"
            );
        }
        let mut variants: Vec<Variant> = if all_variants { Variant::ALL.to_vec() } else { vec![Variant::DEFAULT] };
        if !backend.native() {
            variants.clear();
        }
        let kernels =
            variants.iter().map(|&v| FlashAttn::with_variant(&stream, v)).collect::<candle_core::Result<Vec<_>>>()?;
        let sm90 = if !backend.native() {
            Vec::new()
        } else if FlashBwdSm90::supported(&stream)? {
            Sm90Variant::ALL.iter().map(|&v| FlashBwdSm90::new(&stream, v)).collect::<candle_core::Result<Vec<_>>>()?
        } else {
            eprintln!("{name} is not an sm_90 GPU: the sm90 backward (wgmma) rows are skipped");
            Vec::new()
        };
        let mut rows = Vec::new();
        for (si, &(b, t, nh, hs)) in SHAPES.iter().enumerate() {
            let c = nh * hs;
            let mut bufs = Bufs {
                qkv: stream.clone_htod(&random_bf16(b * t * 3 * c, 1 + si as u64))?,
                dy: stream.clone_htod(&random_bf16(b * t * c, 101 + si as u64))?,
                y: stream.alloc_zeros::<bf16>(b * t * c)?,
                dqkv: stream.alloc_zeros::<bf16>(b * t * 3 * c)?,
                lse: stream.alloc_zeros::<f32>(b * nh * t)?,
                scratch: stream.alloc_zeros::<f32>(FlashAttn::scratch_len(b, t, nh))?,
            };
            let d = check_dims(b, t, Heads::mha(nh), hs)?;
            let s = &stream;
            let bf = &mut bufs;
            let (qkv, _a) = DevPtr::of(&bf.qkv, s);
            let (dy, _b) = DevPtr::of(&bf.dy, s);
            let (y, _c) = DevPtr::of_mut(&mut bf.y, s);
            let (dqkv, _d) = DevPtr::of_mut(&mut bf.dqkv, s);
            let (lse, _e) = DevPtr::of_mut(&mut bf.lse, s);
            let (dvec_scratch, _f) = DevPtr::of_mut(&mut bf.scratch, s);
            let p = AttnBwd { qkv, y, dy, lse, dvec_scratch, dqkv };
            let fwd = p.fwd();
            for (fa, v) in kernels.iter().zip(&variants) {
                // SAFETY: every buffer above was allocated at the size the flash_attn API documents for (b, t, nh, hs).
                let fwd_ms = time(s, warmup, reps, || unsafe { fa.forward_with(fwd, b, t, Heads::mha(nh), hs) })?;
                let bwd_ms = time(s, warmup, reps, || unsafe { fa.backward_with(p, b, t, Heads::mha(nh), hs) })?;
                let dq_ms = time(s, warmup, reps, || unsafe { fa.launch_dq(&p, d) })?;
                let dkdv_ms = time(s, warmup, reps, || unsafe { fa.launch_dkdv(&p, d) })?;
                let row = AttnTiming { b, t, nh, hs, variant: v.label(), fwd_ms, bwd_ms, dq_ms, dkdv_ms };
                eprintln!("{}", super::report(std::slice::from_ref(&row)).lines().nth(1).unwrap_or_default());
                rows.push(row);
            }
            // The Hopper kernels (dQ with D, then dK/dV), after the default variant's forward.
            if let Some(fa) = kernels.first() {
                for sm in &sm90 {
                    // SAFETY: as above (the sm90 kernels take flash_attn's buffers).
                    let fwd_ms = time(s, warmup, reps, || unsafe { fa.forward_with(fwd, b, t, Heads::mha(nh), hs) })?;
                    let bwd_ms = time(s, warmup, reps, || unsafe { sm.backward(p, b, t, Heads::mha(nh)) })?;
                    let dq_ms = time(s, warmup, reps, || unsafe { sm.dq(&p, b, t, Heads::mha(nh)) })?;
                    let dkdv_ms = time(s, warmup, reps, || unsafe { sm.dkdv(&p, b, t, Heads::mha(nh)) })?;
                    let variant = sm.variant().label().to_string();
                    let row = AttnTiming { b, t, nh, hs, variant, fwd_ms, bwd_ms, dq_ms, dkdv_ms };
                    eprintln!("{}", super::report(std::slice::from_ref(&row)).lines().nth(1).unwrap_or_default());
                    rows.push(row);
                }
            }
            #[cfg(feature = "cudnn")]
            for (att, label) in &cudnn {
                att.prepare(b, t, Heads::mha(nh))?;
                // SAFETY: the buffers were allocated at the sizes the cudnn_attn API documents for (b, t, nh, 64).
                let fwd_ms = time(s, warmup, reps, || unsafe { att.forward(fwd, b, t, Heads::mha(nh)) })?;
                let bwd_ms = time(s, warmup, reps, || unsafe { att.backward(p, b, t, Heads::mha(nh)) })?;
                let (dq_ms, dkdv_ms) = (f64::NAN, f64::NAN);
                let row = AttnTiming { b, t, nh, hs, variant: label.to_string(), fwd_ms, bwd_ms, dq_ms, dkdv_ms };
                eprintln!("{}", super::report(std::slice::from_ref(&row)).lines().nth(1).unwrap_or_default());
                rows.push(row);
            }
        }
        #[cfg(feature = "cudnn")]
        for (att, label) in &cudnn {
            eprintln!("{label}: {}", att.describe()?.replace('\n', &format!("\n{label}: ")));
        }
        Ok((rows, name))
    }

    /// The cuDNN contexts to time, deterministic backward first (none unless `wanted`).
    #[cfg(feature = "cudnn")]
    fn cudnn_contexts(
        stream: &Arc<CudaStream>,
        wanted: bool,
    ) -> anyhow::Result<Vec<(crate::cuda::cudnn_attn::CudnnAttn, &'static str)>> {
        use crate::cuda::cudnn_attn::CudnnAttn;
        if !wanted {
            return Ok(Vec::new());
        }
        let (rt, compiled, fe) = CudnnAttn::versions();
        eprintln!("cuDNN {rt} at run time (compiled against {compiled}), cuDNN frontend {fe}");
        Ok(vec![
            (CudnnAttn::with_determinism(stream, true)?, super::CUDNN_DETERMINISTIC),
            (CudnnAttn::with_determinism(stream, false)?, super::CUDNN_DEFAULT),
        ])
    }
}
