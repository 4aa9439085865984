//! LayerNorm and RMSNorm (norm.cu), the one launcher of its kernels for both callers:
//! - the decoder engine ([`Norm`]): f32 residual in, bf16 out, mean (LayerNorm) and rstd kept; the backward adds into
//!   the f32 residual gradient, writes its bf16 copy, and adds the weight (and bias) gradients deterministically. The
//!   norm is chosen at construction, and the bias and mean pointers are `None` for RMSNorm;
//! - the candle LayerNorm op ([`LayerNormOp`], `model::kernels::layer_norm` adapts storages to it): x and y f32 or
//!   bf16 in any pair, dx returned rather than accumulated.
//!
//! This file alone knows the kernels' grids, blocks and names. CPU checks: dev/cuda/check_engine.cpp and check.cpp
//! (the .cu under emulation against a double-precision reference).

/// LN_MAX_C, LN_WARPS, LN_BWD_ROWS, LN_THREADS in norm.cu.
pub const MAX_C: usize = 2048;
const WARPS: usize = 8;
const BWD_ROWS: usize = 256;
/// Blocks of the backward an SM holds at once for rows of `c`: two up to LN_BWD_PRELOAD_MAX_NCH chunks of 128
/// columns (`__launch_bounds__(256, 2)`), one for wider rows (the whole register file: LN_BWD_MIN_BLOCKS in norm.cu).
fn bwd_blocks_per_sm(c: usize) -> usize {
    if c.div_ceil(128) <= 6 {
        2
    } else {
        1
    }
}

/// Rows per block of the backward for `n` rows of `c` on a GPU of `sms` multiprocessors: LN_BWD_ROWS where
/// n / LN_BWD_ROWS blocks give every SM one at least (GPT-2 124M at B = 64: 65,536 rows, 256 blocks on 132 SMs:
/// unchanged from the fixed size, so bitwise the same sums), otherwise just enough rows (a multiple of the block's 8
/// warps) for one full wave. A fixed 256 left Llama-1B's and GPT-2 1558M's B = 8 backward (8,192 rows) 32 blocks for
/// 132 SMs: 0.37 ms per call against a 0.09 ms memory floor (docs/PERF.md).
pub fn bwd_rows(n: usize, c: usize, sms: usize) -> usize {
    let sms = sms.max(1);
    if n.div_ceil(BWD_ROWS) >= sms {
        return BWD_ROWS;
    }
    n.div_ceil(bwd_blocks_per_sm(c) * sms).next_multiple_of(WARPS).clamp(WARPS, BWD_ROWS)
}

/// f32 scratch of a backward over any `n' <= n` rows of width `c` (the per-block dw/db partials): `bwd_rows` gives
/// at most max(n / LN_BWD_ROWS, one wave) blocks.
pub fn bwd_scratch_len(n: usize, c: usize, sms: usize) -> usize {
    2 * n.div_ceil(BWD_ROWS).max(bwd_blocks_per_sm(c) * sms.max(1)) * c
}

#[cfg(feature = "cuda")]
mod kernels {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{sys, CudaStream, DeviceRepr, PushKernelArg};
    use candle_core::Result;
    use half::bf16;

    use super::super::devptr::DevPtr;
    use super::super::launch::{blocks, cfg, go, int, Module};

    use super::{bwd_rows, bwd_scratch_len, MAX_C, WARPS};

    /// LN_THREADS in norm.cu.
    const THREADS: u32 = 256;
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
    /// The multiprocessor count of `stream`'s GPU (the backward's grid is sized to it).
    pub fn multiprocessors(stream: &Arc<CudaStream>) -> Result<usize> {
        let sms = stream
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| candle_core::Error::Msg(format!("multiprocessor count: {e:?}")))?;
        Ok(sms.max(1) as usize)
    }

    /// The reduction of the backward's partials, grid ceil(C / 32) of (32, 8).
    fn reduce_cfg(c: usize) -> Result<candle_core::cuda_backend::cudarc::driver::LaunchConfig> {
        Ok(cfg((blocks(c, 32)?, 1), (32, 8)))
    }

    /// Chunks of 128 columns a row of `c` takes (norm.cu instantiates 1..=16, the `_<nch>` suffix).
    fn chunks(c: usize) -> Result<usize> {
        if c == 0 || !c.is_multiple_of(4) || c > MAX_C {
            candle_core::bail!("norm: C = {c} must be a positive multiple of 4 up to {MAX_C}");
        }
        Ok(c.div_ceil(128))
    }

    /// The kernel names of chunk count `nch` (norm.cu instantiates 1..=16): forward, fused residual + forward, backward.
    fn names(rms: bool, nch: usize) -> [String; 3] {
        let p = if rms { "rms" } else { "ln" };
        [format!("{p}_fwd_engine_{nch}"), format!("{p}_fwd_residual_engine_{nch}"), format!("{p}_bwd_engine_{nch}")]
    }

    /// What a forward writes and reads besides its input: weight `w` and bias `b` (C f32; no bias for RMSNorm), the
    /// output `y` (n, C) bf16, and the per-row `mean` (LayerNorm only) and `rstd` (n f32).
    #[derive(Clone, Copy, Debug)]
    pub struct NormFwd {
        pub w: DevPtr<f32>,
        pub b: Option<DevPtr<f32>>,
        pub y: DevPtr<bf16>,
        pub mean: Option<DevPtr<f32>>,
        pub rstd: DevPtr<f32>,
    }

    /// The buffers of one backward: `dy (n, C) bf16`, the forward's input `x (n, C) f32`, weight `w`, `mean`
    /// (LayerNorm only) and `rstd`; the running residual gradient `dres (n, C) f32` and its bf16 copy `dres16`; the
    /// weight (and, for LayerNorm, bias) gradients `dw`, `db` (C f32); `scratch` (`Norm::scratch_len(n)` f32).
    #[derive(Clone, Copy, Debug)]
    pub struct NormBwd {
        pub dy: DevPtr<bf16>,
        pub x: DevPtr<f32>,
        pub w: DevPtr<f32>,
        pub mean: Option<DevPtr<f32>>,
        pub rstd: DevPtr<f32>,
        pub dres: DevPtr<f32>,
        pub dres16: DevPtr<bf16>,
        pub dw: DevPtr<f32>,
        pub db: Option<DevPtr<f32>>,
        pub scratch: DevPtr<f32>,
    }

    /// A forward kernel's leading arguments: the input row (`x`), or the residual add fused before the norm
    /// (`res (n, C) f32 + delta (n, C) bf16 -> res_out (n, C) f32`, then normalised).
    #[derive(Clone, Copy, Debug)]
    enum Input {
        Plain(DevPtr<f32>),
        Residual(DevPtr<f32>, DevPtr<bf16>, DevPtr<f32>),
    }

    /// The kernels of one norm for one row width C.
    pub struct Norm {
        module: Module,
        c: usize,
        rms: bool,
        sms: usize,
        fwd: String,
        fwd_res: String,
        bwd: String,
        reduce: &'static str,
    }

    impl Norm {
        /// LayerNorm (`rms = false`: mean, rstd, weight and bias) or RMSNorm (`rms = true`: rstd and weight) over rows of
        /// `c` f32.
        pub fn new(stream: &Arc<CudaStream>, c: usize, rms: bool) -> Result<Norm> {
            let [fwd, fwd_res, bwd] = names(rms, chunks(c)?);
            let reduce = if rms { "rms_bwd_reduce_engine" } else { "ln_bwd_reduce_engine" };
            let module = Module::load(stream, "norm.cu", PTX, &[&fwd, &fwd_res, &bwd, reduce])?;
            Ok(Norm { module, c, rms, sms: multiprocessors(stream)?, fwd, fwd_res, bwd, reduce })
        }

        /// The pointers a LayerNorm needs and an RMSNorm must not get (bias, mean), checked against the kind.
        fn check_kind(&self, b: Option<DevPtr<f32>>, mean: Option<DevPtr<f32>>) -> Result<()> {
            if self.rms != (b.is_none() && mean.is_none()) || b.is_some() != mean.is_some() {
                candle_core::bail!(
                    "engine norm: {} takes {} (got bias {b:?}, mean {mean:?})",
                    if self.rms { "RMSNorm" } else { "LayerNorm" },
                    if self.rms { "no bias or mean" } else { "a bias and a mean" }
                );
            }
            Ok(())
        }

        /// f32 scratch the backward needs for up to `n` rows (the per-block dw/db partials).
        pub fn scratch_len(&self, n: usize) -> usize {
            bwd_scratch_len(n, self.c, self.sms)
        }

        /// `y (n, C) bf16 = norm(x (n, C) f32)`, `mean` (LayerNorm), `rstd` (n) f32.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes; `w`, `b` hold C f32.
        pub unsafe fn forward(&self, x: DevPtr<f32>, out: NormFwd, n: usize, eps: f32) -> Result<()> {
            // SAFETY: the caller's contract (`x` is the kernel's one input).
            unsafe { self.launch_forward(&self.fwd, Input::Plain(x), out, n, eps) }
        }

        /// The arguments both forward kernels share, after their inputs: `(w, [b], y, [mean], rstd, n, c, eps)`.
        ///
        /// # Safety
        /// As `forward` / `forward_residual`; `input` gives the kernel's leading pointer arguments.
        unsafe fn launch_forward(&self, kernel: &str, input: Input, out: NormFwd, n: usize, eps: f32) -> Result<()> {
            let NormFwd { w, b, y, mean, rstd } = out;
            self.check_kind(b, mean)?;
            let (n_i, c_i) = (int(n, "norm rows")?, self.c as i32);
            let mut a = self.module.args(kernel)?;
            match &input {
                Input::Plain(x) => {
                    a.arg(x);
                }
                Input::Residual(res, delta, res_out) => {
                    a.arg(res).arg(delta).arg(res_out);
                }
            }
            a.arg(&w);
            let (b, mean) = (b.unwrap_or(DevPtr::NULL), mean.unwrap_or(DevPtr::NULL));
            if !self.rms {
                a.arg(&b);
            }
            a.arg(&y);
            if !self.rms {
                a.arg(&mean);
            }
            a.arg(&rstd).arg(&n_i).arg(&c_i).arg(&eps);
            go(a, cfg((blocks(n, WARPS)?, 1), (THREADS, 1)))
        }

        /// The residual add fused with the norm after it: `res_out = res + delta` (f32 + bf16 -> f32), then
        /// `y = norm(res_out)` as `forward`.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes (`res`, `res_out` n x C f32; `delta`, `y` n x C bf16).
        pub unsafe fn forward_residual(
            &self,
            (res, delta, res_out): (DevPtr<f32>, DevPtr<bf16>, DevPtr<f32>),
            out: NormFwd,
            n: usize,
            eps: f32,
        ) -> Result<()> {
            // SAFETY: the caller's contract.
            unsafe { self.launch_forward(&self.fwd_res, Input::Residual(res, delta, res_out), out, n, eps) }
        }

        /// `dres (n, C) f32 += dnorm/dx`, `dres16 = bf16(dres)`, `dw (C) f32 +=` (and `db` for LayerNorm), from
        /// `dy (n, C) bf16`.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes (`NormBwd`).
        pub unsafe fn backward(&self, p: NormBwd, n: usize) -> Result<()> {
            let NormBwd { dy, x, w, mean, rstd, dres, dres16, dw, db, scratch } = p;
            self.check_kind(db, mean)?;
            let rows = bwd_rows(n, self.c, self.sms);
            let (n_i, c_i, rows_i) = (int(n, "norm rows")?, self.c as i32, rows as i32);
            let nb = blocks(n, rows)?;
            let mut a = self.module.args(&self.bwd)?;
            a.arg(&dy).arg(&x).arg(&w);
            let (db, mean) = (db.unwrap_or(DevPtr::NULL), mean.unwrap_or(DevPtr::NULL));
            if !self.rms {
                a.arg(&mean);
            }
            a.arg(&rstd).arg(&dres).arg(&dres16).arg(&scratch).arg(&n_i).arg(&c_i).arg(&rows_i);
            go(a, cfg((nb, 1), (THREADS, 1)))?;
            let p = nb as i32;
            let mut a = self.module.args(self.reduce)?;
            a.arg(&scratch).arg(&dw);
            if !self.rms {
                a.arg(&db);
            }
            a.arg(&p).arg(&c_i);
            go(a, reduce_cfg(self.c)?)
        }
    }

    /// An element type of the candle op's LayerNorm kernels (x and y: f32 or bf16 in any pair).
    pub trait NormElem: DeviceRepr {
        /// The kernels' name suffix (`ln_fwd_<x>_<y>_<nch>`).
        const SUFFIX: &'static str;
    }

    impl NormElem for f32 {
        const SUFFIX: &'static str = "f32";
    }

    impl NormElem for bf16 {
        const SUFFIX: &'static str = "bf16";
    }

    /// The candle LayerNorm op's kernels on one device: forward `x (n, C) X -> y (n, C) Y` with mean and rstd (n f32),
    /// backward returning `dx (n, C) X` and dweight, dbias (C f32) from `dy (n, C) Y`. Weights and statistics are f32.
    pub struct LayerNormOp {
        module: Module,
        sms: usize,
    }

    /// The candle op's backward: `dy`, the forward's `x`, `w`, `mean`, `rstd`; `dx` written, `dw`/`db` written (not
    /// added), `scratch` (`LayerNormOp::scratch_len(n, c)` f32).
    #[derive(Clone, Copy, Debug)]
    pub struct LayerNormOpBwd<X, Y> {
        pub dy: DevPtr<Y>,
        pub x: DevPtr<X>,
        pub w: DevPtr<f32>,
        pub mean: DevPtr<f32>,
        pub rstd: DevPtr<f32>,
        pub dx: DevPtr<X>,
        pub dw: DevPtr<f32>,
        pub db: DevPtr<f32>,
        pub scratch: DevPtr<f32>,
    }

    impl LayerNormOp {
        pub fn new(stream: &Arc<CudaStream>) -> Result<LayerNormOp> {
            // Every dtype pair's forward and backward at every chunk count (`ln_fwd_<x>_<y>_<nch>`).
            let (f, b) = (f32::SUFFIX, bf16::SUFFIX);
            let pairs = [(f, f), (f, b), (b, f), (b, b)];
            let kernels: Vec<String> =
                pairs.iter().flat_map(|(x, y)| [format!("ln_fwd_{x}_{y}"), format!("ln_bwd_{x}_{y}")]).collect();
            let kernels: Vec<&str> = kernels.iter().map(String::as_str).collect();
            let nchs: Vec<String> = (1..=chunks(MAX_C)?).map(|n| n.to_string()).collect();
            let nchs: Vec<&str> = nchs.iter().map(String::as_str).collect();
            let module = Module::load(stream, "norm.cu", PTX, &["ln_bwd_reduce"])?.with_suffixed(&kernels, &nchs)?;
            Ok(LayerNormOp { module, sms: multiprocessors(stream)? })
        }

        /// f32 scratch of a backward over `n` rows of width `c`.
        pub fn scratch_len(&self, n: usize, c: usize) -> usize {
            bwd_scratch_len(n, c, self.sms)
        }

        /// `y = LayerNorm(x) * w + b` with `mean`, `rstd` (n f32) written.
        ///
        /// # Safety
        /// `x`, `y` hold n * C elements, 4-element aligned; `w`, `b` C f32; `mean`, `rstd` n f32; one stream.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn forward<X: NormElem, Y: NormElem>(
            &self,
            x: DevPtr<X>,
            (w, b): (DevPtr<f32>, DevPtr<f32>),
            y: DevPtr<Y>,
            (mean, rstd): (DevPtr<f32>, DevPtr<f32>),
            (n, c): (usize, usize),
            eps: f32,
        ) -> Result<()> {
            let kernel = format!("ln_fwd_{}_{}_{}", X::SUFFIX, Y::SUFFIX, chunks(c)?);
            let (n_i, c_i) = (int(n, "layer norm rows")?, int(c, "layer norm width")?);
            let mut a = self.module.args(&kernel)?;
            a.arg(&x).arg(&w).arg(&b).arg(&y).arg(&mean).arg(&rstd).arg(&n_i).arg(&c_i).arg(&eps);
            go(a, cfg((blocks(n, WARPS)?, 1), (THREADS, 1)))
        }

        /// `dx`, `dw`, `db` of the forward above, from `dy`.
        ///
        /// # Safety
        /// As [`LayerNormOpBwd`] says, for n rows of C (4-element aligned rows); one stream.
        pub unsafe fn backward<X: NormElem, Y: NormElem>(
            &self,
            p: LayerNormOpBwd<X, Y>,
            n: usize,
            c: usize,
        ) -> Result<()> {
            let LayerNormOpBwd { dy, x, w, mean, rstd, dx, dw, db, scratch } = p;
            let kernel = format!("ln_bwd_{}_{}_{}", X::SUFFIX, Y::SUFFIX, chunks(c)?);
            let rows = bwd_rows(n, c, self.sms);
            let nb = blocks(n, rows)?;
            let (n_i, c_i, rows_i, p_i) =
                (int(n, "layer norm rows")?, int(c, "layer norm width")?, rows as i32, nb as i32);
            let mut a = self.module.args(&kernel)?;
            a.arg(&dy).arg(&x).arg(&w).arg(&mean).arg(&rstd).arg(&dx).arg(&scratch).arg(&n_i).arg(&c_i).arg(&rows_i);
            go(a, cfg((nb, 1), (THREADS, 1)))?;
            let mut a = self.module.args("ln_bwd_reduce")?;
            a.arg(&scratch).arg(&dw).arg(&db).arg(&p_i).arg(&c_i);
            go(a, reduce_cfg(c)?)
        }
    }
}
#[cfg(feature = "cuda")]
pub use kernels::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_rows_fill_the_gpu_and_keep_256_where_it_already_did() {
        // GPT-2 124M, B = 64 on an H100 (132 SMs): the fixed 256 rows, so its sums are unchanged.
        assert_eq!(bwd_rows(65_536, 768, 132), 256);
        // B = 8, 8,192 rows: GPT-2 124M's width two blocks per SM (256 blocks <= 264 resident); Llama-1B's 2048 and
        // GPT-2 1558M's 1600 one block per SM (128 blocks).
        assert_eq!(bwd_rows(8_192, 768, 132), 32);
        assert_eq!(bwd_rows(8_192, 2048, 132), 64);
        assert_eq!(bwd_rows(8_192, 1600, 132), 64);
        // GPT-2 350M, B = 32 (C = 1024, one block per SM): 128 blocks of 256 rows fill 128 of 132 SMs, and fewer
        // rows would only add a second wave.
        assert_eq!(bwd_rows(32_768, 1024, 132), 256);
        for n in [1, 7, 8, 100, 1000, 8_192, 33_000, 65_536, 1 << 20] {
            for c in [64, 768, 1024, 2048] {
                for sms in [1, 66, 132, 144] {
                    let rows = bwd_rows(n, c, sms);
                    assert!(
                        rows.is_multiple_of(WARPS) && (WARPS..=BWD_ROWS).contains(&rows),
                        "n {n} sms {sms}: {rows}"
                    );
                    let len = bwd_scratch_len(n, c, sms);
                    // This batch and every smaller one fit the scratch sized for n.
                    for m in [n, n / 2, n.saturating_sub(1).max(1)] {
                        assert!(2 * m.div_ceil(bwd_rows(m, c, sms)) * c <= len, "scratch: n {n} m {m} c {c} sms {sms}");
                    }
                }
            }
        }
    }
}
