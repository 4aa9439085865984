//! Fused LayerNorm over the last dim with its backward: `x (..., C)` (f32, bf16; f64 on CPU), `weight`,
//! `bias (C)` (cast to f32, or f64 for f64 x: the fp32 master weights go in as they are) -> `y (..., C)` in a dtype
//! the caller picks (the compute dtype: the model's residual stream is f32 and the next matmul wants bf16, so the
//! cast is part of the kernel). Statistics in f32 (f64 for f64). Forward saves only mean and rstd (N each) beside
//! x, which autograd keeps anyway; backward returns dx (x's dtype), dweight and dbias (f32; f64 for f64).
//!
//! Why: the composed version (`ops::layer_norm_slow`) is ~10 candle ops in f32 whose autograd keeps ~5 (N, C) f32
//! intermediates per call (~0.6 GB per LayerNorm at 124M, B = 32) plus the f32 output its cast to bf16 holds on to;
//! this keeps 2N floats and returns bf16 directly.
//!
//! dweight/dbias are deterministic on both devices: rows are summed in fixed blocks (`BWD_ROWS` on the CPU; on CUDA
//! `cuda::norm::bwd_rows`, in warp order inside a block), then the block partials in block order.
//! CPU: rayon over row blocks (the twin the tests hold against the composed reference and finite differences).
//! CUDA: the LayerNorm kernels of `src/cuda/norm.cu` (the decoder engine's, instantiated for the op's dtype pairs):
//! one warp per row held in registers, so C must be a multiple of 4 up to 2048 (every GPT-2 width); [`supported`]
//! sends other widths to the composed version.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::real::{float_pair, Elem, Real};

/// Rows per CPU backward task (and per partial sum of dweight/dbias).
const BWD_ROWS: usize = 64;

/// LayerNorm of `x (..., C)` over its last dim, output in `out`, with a fused backward for x, weight and bias.
/// Where [`supported`] says no, an error (`ops::layer_norm_to` routes there to the composed version).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, out: DType) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some(&c) = dims.last() else { candle_core::bail!("layer norm of a scalar") };
    let n = x.elem_count() / c.max(1);
    if n == 0 || c == 0 {
        candle_core::bail!("layer norm over an empty tensor {dims:?}");
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!(
            "layer norm weight {:?} and bias {:?} must be ({c}) for x {dims:?}",
            weight.dims(),
            bias.dims()
        );
    }
    if !supported(x, out) {
        candle_core::bail!(
            "fused layer norm: {:?} -> {out:?} on {:?} is not supported (f32/bf16 pairs, or f64 -> f64 on the CPU)",
            x.dtype(),
            x.device().location()
        );
    }
    let acc = if out == DType::F64 { DType::F64 } else { DType::F32 };
    let op = LayerNormOp { eps, out, stats: Mutex::new(None) };
    let x2 = aligned(&x.reshape((n, c))?)?;
    let w = aligned(&weight.to_dtype(acc)?)?;
    let b = aligned(&bias.to_dtype(acc)?)?;
    x2.apply_op3(&w, &b, op)?.reshape(dims)
}

/// `x` contiguous from a start the CUDA kernels can read in 4-element vectors (a copy where it is not).
fn aligned(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.device().is_cuda() && !x.layout().start_offset().is_multiple_of(4) {
        return x.force_contiguous();
    }
    Ok(x)
}

/// Whether the fused kernel runs `x` -> `out` on x's device: f32 and bf16 in any pair on the CPU (any C) or CUDA (C a
/// multiple of 4 up to 2048: rows in registers), f64 -> f64 on the CPU (the gradient checks). Statistics and weights
/// are f32, or f64 for f64. The one routing rule: `ops::layer_norm_to` takes the fused path exactly where this holds.
pub fn supported(x: &Tensor, out: DType) -> bool {
    let f32_or_bf16 = |d: DType| matches!(d, DType::F32 | DType::BF16);
    let c = x.dims().last().copied().unwrap_or(0);
    match (x.dtype(), out) {
        (DType::F64, DType::F64) => x.device().is_cpu(),
        (dx, o) => f32_or_bf16(dx) && f32_or_bf16(o) && (x.device().is_cpu() || x.device().is_cuda() && cuda_width(c)),
    }
}

/// A row width the CUDA kernels take.
fn cuda_width(c: usize) -> bool {
    c > 0 && c.is_multiple_of(4) && c <= crate::cuda::norm::MAX_C
}

/// One call's op: the forward stores (mean, rstd) here for this call's backward.
struct LayerNormOp {
    eps: f64,
    out: DType,
    stats: Mutex<Option<(Tensor, Tensor)>>, // (N), (N) in the stats dtype
}

/// Forward on CPU: y (N, C) and per-row mean and rstd; the same operation order as `ops::layer_norm_slow`.
fn cpu_fwd_typed<T: Elem<A>, O: Elem<A>, A: Real>(
    x: &[T],
    w: &[A],
    b: &[A],
    c: usize,
    eps: A,
) -> (Vec<O>, Vec<A>, Vec<A>) {
    let n = x.len() / c;
    let mut y = vec![O::from_acc(A::ZERO); n * c];
    let mut mean = vec![A::ZERO; n];
    let mut rstd = vec![A::ZERO; n];
    let cf = A::from_f64(c as f64);
    y.par_chunks_mut(c).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).zip(x.par_chunks(c)).for_each(
        |((yr, (m, r)), xr)| {
            let mu = xr.iter().fold(A::ZERO, |s, v| s + v.to_acc()) / cf;
            let var = xr.iter().fold(A::ZERO, |s, v| {
                let d = v.to_acc() - mu;
                s + d * d
            }) / cf;
            let rs = A::ONE / (var + eps).sqrt();
            for (i, (o, v)) in yr.iter_mut().zip(xr).enumerate() {
                *o = O::from_acc((v.to_acc() - mu) * rs * w[i] + b[i]);
            }
            *m = mu;
            *r = rs;
        },
    );
    (y, mean, rstd)
}

/// Backward on CPU: dx (N, C) in T, and dweight, dbias (C) summed over rows in fixed blocks of `BWD_ROWS`.
fn cpu_bwd_typed<T: Elem<A>, O: Elem<A>, A: Real>(
    x: &[T],
    w: &[A],
    mean: &[A],
    rstd: &[A],
    dy: &[O],
    c: usize,
) -> (Vec<T>, Vec<A>, Vec<A>) {
    let mut dx = vec![T::from_acc(A::ZERO); x.len()];
    let cf = A::from_f64(c as f64);
    let partials: Vec<(Vec<A>, Vec<A>)> = dx
        .par_chunks_mut(BWD_ROWS * c)
        .enumerate()
        .map(|(blk, dxb)| {
            let (mut dw, mut db) = (vec![A::ZERO; c], vec![A::ZERO; c]);
            for (k, dr) in dxb.chunks_mut(c).enumerate() {
                let row = blk * BWD_ROWS + k;
                let (xr, gr) = (&x[row * c..(row + 1) * c], &dy[row * c..(row + 1) * c]);
                let (m, rs) = (mean[row], rstd[row]);
                let (mut sg, mut sgx) = (A::ZERO, A::ZERO);
                for i in 0..c {
                    let xh = (xr[i].to_acc() - m) * rs;
                    let d = gr[i].to_acc();
                    let g = d * w[i];
                    sg = sg + g;
                    sgx = sgx + g * xh;
                    dw[i] = dw[i] + d * xh;
                    db[i] = db[i] + d;
                }
                let (sg, sgx) = (sg / cf, sgx / cf);
                for i in 0..c {
                    let xh = (xr[i].to_acc() - m) * rs;
                    let g = gr[i].to_acc() * w[i];
                    dr[i] = T::from_acc(rs * (g - sg - xh * sgx));
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![A::ZERO; c], vec![A::ZERO; c]);
    for (pw, pb) in &partials {
        for i in 0..c {
            dw[i] = dw[i] + pw[i];
            db[i] = db[i] + pb[i];
        }
    }
    (dx, dw, db)
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("layer norm: {what} must be contiguous"),
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let (y, m, r) = float_pair!("layer norm", (s1.dtype(), self.out), |T, O, A| {
            let (y, m, r) = cpu_fwd_typed::<T, O, A>(
                contiguous(s1.as_slice::<T>()?, l1, "x")?,
                contiguous(s2.as_slice::<A>()?, l2, "weight")?,
                contiguous(s3.as_slice::<A>()?, l3, "bias")?,
                c,
                <A as Real>::from_f64(self.eps),
            );
            (O::to_cpu_storage_owned(y), A::to_cpu_storage_owned(m), A::to_cpu_storage_owned(r))
        });
        self.save_stats(Storage::Cpu(m), Storage::Cpu(r), n);
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c) = l1.shape().dims2()?;
        let start = |l: &Layout, what: &str| -> Result<usize> {
            l.contiguous_offsets()
                .map(|(a, _)| a)
                .ok_or_else(|| candle_core::Error::Msg(format!("layer norm: {what} must be contiguous")))
        };
        let offs = [start(l1, "x")?, start(l2, "weight")?, start(l3, "bias")?];
        let (y, m, r) = cuda::fwd([s1, s2, s3], offs, (n, c), self.out, self.eps as f32)?;
        self.save_stats(Storage::Cuda(m), Storage::Cuda(r), n);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((mean, rstd)) = stats else { candle_core::bail!("layer norm backward before its forward") };
        let dy = aligned(&dy.to_dtype(self.out)?)?;
        let (dx, dw, db) = layer_norm_bwd(x, w, &mean, &rstd, &dy)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl LayerNormOp {
    fn save_stats(&self, mean: Storage, rstd: Storage, n: usize) {
        let t = |s| Tensor::from_storage(s, n, BackpropOp::none(), false);
        // A poisoned lock only means another thread panicked mid-store; the value is still ours to replace.
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some((t(mean), t(rstd)));
    }
}

/// dx (N, C) in x's dtype and dweight, dbias (C) in the stats dtype. All inputs contiguous (as the op made them).
fn layer_norm_bwd(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c) = x.dims2()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (ms, ml) = mean.storage_and_layout();
    let (rs, rl) = rstd.storage_and_layout();
    let (gs, gl) = dy.storage_and_layout();
    let wrap = |s: Storage, shape: Shape| Tensor::from_storage(s, shape, BackpropOp::none(), false);
    match (&*xs, &*ws, &*ms, &*rs, &*gs) {
        (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(ms), Storage::Cpu(rs), Storage::Cpu(gs)) => {
            let (dx, dw, db) = float_pair!("layer norm backward", (xs.dtype(), gs.dtype()), |T, O, A| {
                let (dx, dw, db) = cpu_bwd_typed::<T, O, A>(
                    contiguous(xs.as_slice::<T>()?, xl, "x")?,
                    contiguous(ws.as_slice::<A>()?, wl, "weight")?,
                    contiguous(ms.as_slice::<A>()?, ml, "mean")?,
                    contiguous(rs.as_slice::<A>()?, rl, "rstd")?,
                    contiguous(gs.as_slice::<O>()?, gl, "dy")?,
                    c,
                );
                (T::to_cpu_storage_owned(dx), A::to_cpu_storage_owned(dw), A::to_cpu_storage_owned(db))
            });
            Ok((
                wrap(Storage::Cpu(dx), Shape::from((n, c))),
                wrap(Storage::Cpu(dw), Shape::from(c)),
                wrap(Storage::Cpu(db), Shape::from(c)),
            ))
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(ms), Storage::Cuda(rs), Storage::Cuda(gs)) => {
            let off = |l: &Layout| l.start_offset();
            let (dx, dw, db) = cuda::bwd([xs, ws, ms, rs, gs], [off(xl), off(wl), off(ml), off(rl), off(gl)], (n, c))?;
            Ok((
                wrap(Storage::Cuda(dx), Shape::from((n, c))),
                wrap(Storage::Cuda(dw), Shape::from(c)),
                wrap(Storage::Cuda(db), Shape::from(c)),
            ))
        }
        _ => candle_core::bail!("layer norm backward: x, weight, stats and dy must be on one CPU or CUDA device"),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The op's storages over `crate::cuda::norm::LayerNormOp` (norm.cu's LayerNorm kernels, the engine's template
    //! instantiated for the op's dtype pairs; that launcher owns their grids and names).
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Result};
    use half::bf16;

    use crate::cuda::devptr::DevPtr;
    use crate::cuda::launch::per_device;
    use crate::cuda::norm::{LayerNormOp, LayerNormOpBwd, NormElem};

    fn kernels(dev: &CudaDevice) -> Result<std::sync::Arc<LayerNormOp>> {
        per_device(dev, "norm.cu", LayerNormOp::new)
    }

    /// Calls `$body` with `$T` bound to the element type of dtype `$d` (f32 or bf16: what the kernels take).
    macro_rules! with_elem {
        ($what:expr, $d:expr, |$T:ident| $body:expr) => {
            match $d {
                DType::F32 => {
                    type $T = f32;
                    $body
                }
                DType::BF16 => {
                    type $T = bf16;
                    $body
                }
                d => candle_core::bail!("{} on CUDA takes f32/bf16, got {d:?}", $what),
            }
        };
    }

    /// Calls `$body` with `$X` and `$Y` bound to the element types of `$x` and `$y` (f32 or bf16 each).
    macro_rules! with_pair {
        ($what:expr, ($x:expr, $y:expr), |$X:ident, $Y:ident| $body:expr) => {
            with_elem!($what, $x, |$X| with_elem!($what, $y, |$Y| $body))
        };
    }

    /// `s`: x, weight, bias (f32) with their start offsets; returns y in `out`, mean and rstd (f32).
    pub(super) fn fwd(
        s: [&CudaStorage; 3],
        offs: [usize; 3],
        (n, c): (usize, usize),
        out: DType,
        eps: f32,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        fn go<X: NormElem + CudaDType, Y: NormElem + CudaDType>(
            s: [&CudaStorage; 3],
            offs: [usize; 3],
            (n, c): (usize, usize),
            eps: f32,
        ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
            let dev = s[0].device();
            let stream = dev.cuda_stream();
            let x = s[0].as_cuda_slice::<X>()?.slice(offs[0]..);
            let w = s[1].as_cuda_slice::<f32>()?.slice(offs[1]..);
            let b = s[2].as_cuda_slice::<f32>()?.slice(offs[2]..);
            // SAFETY: the kernel writes every row of y and every mean/rstd entry.
            let (mut y, mut mean, mut rstd) =
                unsafe { (dev.alloc::<Y>(n * c)?, dev.alloc::<f32>(n)?, dev.alloc::<f32>(n)?) };
            {
                let ((xp, _x), (wp, _w), (bp, _b)) =
                    (DevPtr::of(&x, &stream), DevPtr::of(&w, &stream), DevPtr::of(&b, &stream));
                let ((yp, _y), (mp, _m), (rp, _r)) = (
                    DevPtr::of_mut(&mut y, &stream),
                    DevPtr::of_mut(&mut mean, &stream),
                    DevPtr::of_mut(&mut rstd, &stream),
                );
                // SAFETY: x holds n * c elements from a 4-element aligned start (the op's `aligned`), w and b c f32;
                // the outputs were just allocated at the sizes the kernel writes; the device's one stream.
                unsafe { kernels(dev)?.forward(xp, (wp, bp), yp, (mp, rp), (n, c), eps)? };
            }
            let d = || dev.clone();
            Ok((
                CudaStorage::wrap_cuda_slice(y, d()),
                CudaStorage::wrap_cuda_slice(mean, d()),
                CudaStorage::wrap_cuda_slice(rstd, d()),
            ))
        }
        with_pair!("fused layer norm", (s[0].dtype(), out), |X, Y| go::<X, Y>(s, offs, (n, c), eps))
    }

    /// `s`: x, weight, mean, rstd, dy with their start offsets; returns dx (x's dtype), dweight, dbias (f32).
    pub(super) fn bwd(
        s: [&CudaStorage; 5],
        offs: [usize; 5],
        (n, c): (usize, usize),
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        fn go<X: NormElem + CudaDType, Y: NormElem + CudaDType>(
            s: [&CudaStorage; 5],
            offs: [usize; 5],
            (n, c): (usize, usize),
        ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
            let dev = s[0].device();
            let stream = dev.cuda_stream();
            let k = kernels(dev)?;
            let x = s[0].as_cuda_slice::<X>()?.slice(offs[0]..);
            let w = s[1].as_cuda_slice::<f32>()?.slice(offs[1]..);
            let mean = s[2].as_cuda_slice::<f32>()?.slice(offs[2]..);
            let rstd = s[3].as_cuda_slice::<f32>()?.slice(offs[3]..);
            let dy = s[4].as_cuda_slice::<Y>()?.slice(offs[4]..);
            // SAFETY: the backward writes every row of dx, the partials it reduces, and every dw/db entry.
            let (mut dx, mut scratch, mut dw, mut db) = unsafe {
                (
                    dev.alloc::<X>(n * c)?,
                    dev.alloc::<f32>(k.scratch_len(n, c))?,
                    dev.alloc::<f32>(c)?,
                    dev.alloc::<f32>(c)?,
                )
            };
            {
                let ((x, _x), (w, _w), (mean, _m), (rstd, _r), (dy, _g)) = (
                    DevPtr::of(&x, &stream),
                    DevPtr::of(&w, &stream),
                    DevPtr::of(&mean, &stream),
                    DevPtr::of(&rstd, &stream),
                    DevPtr::of(&dy, &stream),
                );
                let ((dx, _dx), (scratch, _s), (dw, _dw), (db, _db)) = (
                    DevPtr::of_mut(&mut dx, &stream),
                    DevPtr::of_mut(&mut scratch, &stream),
                    DevPtr::of_mut(&mut dw, &stream),
                    DevPtr::of_mut(&mut db, &stream),
                );
                let p = LayerNormOpBwd { dy, x, w, mean, rstd, dx, dw, db, scratch };
                // SAFETY: contiguous inputs of n rows of c from 4-element aligned starts (the op's `aligned`), the
                // outputs and scratch just allocated at the launcher's sizes; the device's one stream.
                unsafe { k.backward(p, n, c)? };
            }
            let d = || dev.clone();
            Ok((
                CudaStorage::wrap_cuda_slice(dx, d()),
                CudaStorage::wrap_cuda_slice(dw, d()),
                CudaStorage::wrap_cuda_slice(db, d()),
            ))
        }
        with_pair!("fused layer norm backward", (s[0].dtype(), s[4].dtype()), |X, Y| go::<X, Y>(s, offs, (n, c)))
    }
}
