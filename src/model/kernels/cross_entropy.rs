//! Fused softmax cross-entropy with its backward: `logits (N, V)` (f32, bf16 or f64) and `targets (N)` u32
//! -> per-row loss `(N)` in the reduce dtype (f32; f64 for f64 logits); backward gives
//! `dlogits = (softmax(logits) - onehot(target)) * dloss` in the logits' dtype in one pass.
//!
//! Why: the composed version (`ops::token_cross_entropy_slow`) materialises the shifted logits, their exp and
//! the gradient of each step, so one micro-step of the tiny CPU model made ~17 fresh (N, V) f32 tensors (2.6M minor
//! page faults in 6 steps) and 124M on GPU (N = 65536) would need several 13 GB f32 tensors. Here forward
//! allocates only the (N) losses and backward the one (N, V) gradient; with the head fused in
//! (`linear_cross_entropy`, what the models use) the tiny CPU run takes 0.31M faults and 1.1 s of system time
//! instead of 2.6M and 5.5 s. GPU timings against the composed version: docs/PERF.md.
//!
//! Rows whose target is `IGNORE_INDEX` give 0 loss and 0 gradient (masked losses, e.g. HellaSwag's completion
//! tokens). A target `>= V` is an error on CPU and a NaN loss on CUDA (checking it there would cost a sync).
//!
//! CPU: rayon over rows, f32 accumulation (f64 for f64); the backward recovers each row's logsumexp as
//! `loss + logits[target]` instead of saving it (exact up to one rounding in the accumulator dtype).
//! CUDA: the decoder engine's loss kernel (`src/cuda/classifier.cu` through `crate::cuda::classifier`, one block per
//! row, statistics in the log2 domain), whose backward recomputes the row's statistics instead; the tolerances of
//! both against the references are in tests/kernels_cross_entropy.rs.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::real::{acc_dtype, float_elem, Elem, Real};

/// A target id that contributes zero loss and zero gradient.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Per-row cross-entropy `(N)`: `logsumexp(logits[n]) - logits[n, targets[n]]`, 0 where `targets[n] ==
/// IGNORE_INDEX`. `logits (N, V)` float, `targets (N)` integer ids (u32, or u8/i64 converted). The result is f32
/// (f64 for f64 logits) and records a fused backward.
pub fn softmax_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if n == 0 || v == 0 {
        candle_core::bail!("cross-entropy over empty logits ({n}, {v})");
    }
    if targets.dims() != [n] {
        candle_core::bail!(
            "cross-entropy targets have shape {:?}, expected (N) = ({n}) for logits (N, V) = ({n}, {v})",
            targets.dims()
        );
    }
    if !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F64) {
        candle_core::bail!("cross-entropy logits must be f32, bf16 or f64, got {:?}", logits.dtype());
    }
    let targets = u32_targets(targets)?;
    // The kernels index rows with a stride; columns must be dense.
    let logits = if logits.layout().stride()[1] == 1 || v == 1 { logits.clone() } else { logits.contiguous()? };
    logits.apply_op2(&targets, SoftmaxCrossEntropy)
}

/// Per-row cross-entropy `(N)` of the linear head `logits = x @ w^T`, `x (N, C)`, `w (V, C)` (one float dtype),
/// `targets (N)`: the language-model head and its loss as one autograd node. Forward computes the logits
/// outside the graph and keeps them for backward; backward turns them into `dlogits` with the fused kernel and
/// returns `dx = dlogits @ w` and `dw = dlogits^T @ x` itself, dropping the logits before the two matmuls.
///
/// Why: when the logits are an ordinary graph node, candle's autograd gives their gradient a zero tensor and a sum
/// (`GradStore::or_insert` + `add`), so backward held logits + dlogits + zeros + sum: 4 (N, V) tensors (26 GB in
/// bf16 at B=64, T=1024) where this holds 2, and the tiny CPU model made 4.4 fresh (N, V) tensors per
/// micro-step where this makes 2.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, c) = x.dims2()?;
    let (_, wc) = w.dims2()?;
    if wc != c || w.dtype() != x.dtype() {
        candle_core::bail!(
            "linear cross-entropy: x ({n}, {c}) {:?} and w {:?} {:?} must share C and dtype",
            x.dtype(),
            w.dims(),
            w.dtype()
        );
    }
    let logits = x.detach().matmul(&w.detach().t()?)?; // (N, V), outside the graph
    let targets = u32_targets(targets)?;
    let loss = softmax_cross_entropy(&logits, &targets)?.detach(); // (N)
    let op = LinearCrossEntropy { logits: Mutex::new(Some(logits)), targets, loss };
    x.apply_op2(w, op)
}

/// Forward already computed (`loss`); the op's forward only hands it over, and its `bwd` is the point. An op of x and
/// w alone: the targets get no gradient, so the op keeps them.
struct LinearCrossEntropy {
    logits: Mutex<Option<Tensor>>, // (N, V); taken by the first backward
    targets: Tensor,               // (N) u32
    loss: Tensor,                  // (N)
}

impl LinearCrossEntropy {
    fn shape(&self) -> Shape {
        self.loss.shape().clone()
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let (s, _) = self.loss.storage_and_layout();
        match &*s {
            Storage::Cpu(s) => Ok((s.clone(), self.shape())),
            _ => candle_core::bail!("linear cross-entropy: loss is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let (s, l) = self.loss.storage_and_layout();
        match &*s {
            Storage::Cuda(s) => Ok((s.try_clone(l)?, self.shape())),
            _ => candle_core::bail!("linear cross-entropy: loss is not on the CUDA device"),
        }
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, loss: &Tensor, dloss: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (x.detach(), w.detach());
        let saved = self.logits.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A second backward over the same graph recomputes what the first one consumed.
        let logits = match saved {
            Some(l) => l,
            None => x.matmul(&w.t()?)?,
        };
        let dlogits = softmax_cross_entropy_bwd(&logits, &self.targets, loss, dloss)?; // (N, V)
        drop(logits);
        let dx = dlogits.matmul(&w)?; // (N, V) @ (V, C)
        let dw = dlogits.t()?.matmul(&x)?; // (V, N) @ (N, C)
        Ok((Some(dx), Some(dw)))
    }
}

fn u32_targets(targets: &Tensor) -> Result<Tensor> {
    match targets.dtype() {
        DType::U32 => Ok(targets.clone()),
        DType::U8 | DType::I64 => targets.to_dtype(DType::U32),
        dt => candle_core::bail!("cross-entropy targets must be integer ids (u32), got {dt:?}"),
    }
}

struct SoftmaxCrossEntropy;

/// Where row n of a `(N, V)` layout with dense columns starts: `start + n * row_stride`.
fn row_geometry(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (n, v) = l.shape().dims2()?;
    let st = l.stride();
    if v > 1 && st[1] != 1 {
        candle_core::bail!("cross-entropy logits need dense columns (stride {:?})", st);
    }
    Ok((n, v, l.start_offset(), st[0]))
}

/// Element `n` of a 1-d layout is at `start + n * stride` (stride 0 for a broadcast).
fn vec_geometry(l: &Layout, what: &str) -> Result<(usize, usize)> {
    if l.shape().rank() != 1 {
        candle_core::bail!("cross-entropy {what} must be 1-d, got shape {:?}", l.shape());
    }
    Ok((l.start_offset(), l.stride()[0]))
}

fn read_targets(s: &CpuStorage, l: &Layout, n: usize, v: usize) -> Result<Vec<u32>> {
    let (start, stride) = vec_geometry(l, "targets")?;
    let data = s.as_slice::<u32>()?;
    let t: Vec<u32> = (0..n).map(|i| data[start + i * stride]).collect();
    if let Some(bad) = t.iter().find(|&&t| t != IGNORE_INDEX && t as usize >= v) {
        candle_core::bail!("cross-entropy target id {bad} is outside the vocabulary (V = {v})");
    }
    Ok(t)
}

/// logsumexp of one row, accumulating in `A`.
fn row_lse<T: Elem<A>, A: Real>(row: &[T]) -> A {
    let mut m = A::NEG_INFINITY;
    for x in row {
        m = m.max(x.to_acc());
    }
    if m == A::NEG_INFINITY {
        return m; // every logit is -inf: the row has no probability mass
    }
    let mut s = A::ZERO;
    for x in row {
        s = s + (x.to_acc() - m).exp();
    }
    m + s.ln()
}

fn cpu_fwd_typed<T: Elem<A>, A: Real>(x: &[T], (n, v, start, rs): (usize, usize, usize, usize), t: &[u32]) -> Vec<A> {
    (0..n)
        .into_par_iter()
        .map(|r| {
            let row = &x[start + r * rs..start + r * rs + v];
            match t[r] {
                IGNORE_INDEX => A::ZERO,
                tr => row_lse::<T, A>(row) - row[tr as usize].to_acc(),
            }
        })
        .collect()
}

impl CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = row_geometry(l1)?;
        let t = read_targets(s2, l2, geo.0, geo.1)?;
        let out = float_elem!("cross-entropy", s1.dtype(), |T, A| {
            A::to_cpu_storage_owned(cpu_fwd_typed::<T, A>(s1.as_slice::<T>()?, geo, &t))
        });
        Ok((out, Shape::from(geo.0)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let geo = row_geometry(l1)?;
        let tg = vec_geometry(l2, "targets")?;
        let out = cuda::fwd(s1, geo, s2, tg)?;
        Ok((out, Shape::from(geo.0)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        loss: &Tensor,
        dloss: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_cross_entropy_bwd(logits, targets, loss, dloss)?), None))
    }
}

/// `dlogits (N, V)` in the logits' dtype from the forward's inputs, its per-row `loss (N)` and `dloss (N)`.
pub fn softmax_cross_entropy_bwd(logits: &Tensor, targets: &Tensor, loss: &Tensor, dloss: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let ld = acc_dtype(logits.dtype());
    let loss = loss.to_dtype(ld)?.contiguous()?;
    let dloss = dloss.to_dtype(ld)?;
    let (xs, xl) = logits.storage_and_layout();
    let (ts, tl) = targets.storage_and_layout();
    let (ls, _) = loss.storage_and_layout();
    let (gs, gl) = dloss.storage_and_layout();
    let geo = row_geometry(xl)?;
    let storage = match (&*xs, &*ts, &*ls, &*gs) {
        (Storage::Cpu(xs), Storage::Cpu(ts), Storage::Cpu(ls), Storage::Cpu(gs)) => {
            let t = read_targets(ts, tl, n, v)?;
            let (gstart, gstride) = vec_geometry(gl, "dloss")?;
            Storage::Cpu(float_elem!("cross-entropy backward", xs.dtype(), |T, A| {
                let x = xs.as_slice::<T>()?;
                let dx = cpu_bwd_typed::<T, A>(x, geo, &t, ls.as_slice()?, gs.as_slice()?, gstart, gstride);
                T::to_cpu_storage_owned(dx)
            }))
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(xs), Storage::Cuda(ts), Storage::Cuda(_), Storage::Cuda(gs)) => {
            Storage::Cuda(cuda::bwd(xs, geo, ts, vec_geometry(tl, "targets")?, gs, vec_geometry(gl, "dloss")?)?)
        }
        _ => candle_core::bail!(
            "cross-entropy backward: logits, targets and gradients must be on one CPU or CUDA device"
        ),
    };
    Ok(Tensor::from_storage(storage, (n, v), BackpropOp::none(), false))
}

fn cpu_bwd_typed<T: Elem<A>, A: Real>(
    x: &[T],
    (n, v, start, rs): (usize, usize, usize, usize),
    t: &[u32],
    loss: &[A],
    dloss: &[A],
    gstart: usize,
    gstride: usize,
) -> Vec<T> {
    let mut out = vec![T::from_acc(A::ZERO); n * v];
    out.par_chunks_mut(v.max(1)).enumerate().for_each(|(r, dx)| {
        let tr = t[r];
        if tr == IGNORE_INDEX {
            return; // already zero
        }
        let row = &x[start + r * rs..start + r * rs + v];
        let g = dloss[gstart + r * gstride];
        let lse = loss[r] + row[tr as usize].to_acc();
        for (i, (d, xi)) in dx.iter_mut().zip(row).enumerate() {
            let p = (xi.to_acc() - lse).exp();
            let onehot = if i == tr as usize { A::ONE } else { A::ZERO };
            *d = T::from_acc((p - onehot) * g);
        }
    });
    out
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The op's storages over `crate::cuda::classifier::Classifier` (classifier.cu: the engine's loss kernel,
    //! instantiated for the op's dtypes; that launcher owns its grid and names).
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::CudaStream;
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, Result};

    use super::super::real::float_elem;
    use crate::cuda::classifier::{Classifier, LossElem, LossRows, Strided};
    use crate::cuda::devptr::DevPtr;
    use crate::cuda::launch::per_device;

    fn kernels(dev: &CudaDevice) -> Result<Arc<Classifier>> {
        per_device(dev, "classifier.cu", Classifier::new)
    }

    /// Calls `f` with the device, its stream and the kernels' view of logits `xs` (`n` rows of `v` from `start`,
    /// `rs` apart) and targets `ts` (from `tstart`, `tstride` apart), held readable on the stream while `f` runs.
    fn with_rows<T: CudaDType + LossElem, R>(
        xs: &CudaStorage,
        (n, v, start, rs): (usize, usize, usize, usize),
        ts: &CudaStorage,
        (tstart, tstride): (usize, usize),
        f: impl FnOnce(&CudaDevice, &Arc<CudaStream>, LossRows<T>) -> Result<R>,
    ) -> Result<R> {
        let dev = xs.device();
        let stream = dev.cuda_stream();
        let x = xs.as_cuda_slice::<T>()?.slice(start..);
        let t = ts.as_cuda_slice::<u32>()?.slice(tstart..);
        let ((xp, _x), (tp, _t)) = (DevPtr::of(&x, &stream), DevPtr::of(&t, &stream));
        let rows =
            LossRows { logits: Strided { ptr: xp, stride: rs }, targets: Strided { ptr: tp, stride: tstride }, n, v };
        f(dev, &stream, rows)
    }

    /// Per-row losses (n) in the accumulator dtype of logits `xs` (rows from `start`, `rs` apart) and targets `ts`.
    pub(super) fn fwd(
        xs: &CudaStorage,
        geo: (usize, usize, usize, usize),
        ts: &CudaStorage,
        tg: (usize, usize),
    ) -> Result<CudaStorage> {
        float_elem!("cross-entropy on CUDA", xs.dtype(), |T, A| {
            with_rows::<T, _>(xs, geo, ts, tg, |dev, stream, rows| {
                // SAFETY: the kernel writes every row's loss.
                let mut loss = unsafe { dev.alloc::<A>(rows.n)? };
                {
                    let (lp, _l) = DevPtr::of_mut(&mut loss, stream);
                    // SAFETY: the op's layouts put n rows of v dense columns, rs apart, and n targets tstride apart
                    // in their storages from these starts; loss was just allocated for n; the device's one stream.
                    unsafe { kernels(dev)?.loss(rows, lp)? };
                }
                Ok(CudaStorage::wrap_cuda_slice(loss, dev.clone()))
            })
        })
    }

    /// dlogits (n, v) in the logits' dtype from the logits, targets and the upstream gradient `gs` (`gg`: its start
    /// and stride, 0 when broadcast). The kernel recomputes each row's logsumexp, so the forward's loss is not read.
    pub(super) fn bwd(
        xs: &CudaStorage,
        geo: (usize, usize, usize, usize),
        ts: &CudaStorage,
        tg: (usize, usize),
        gs: &CudaStorage,
        (gstart, gstride): (usize, usize),
    ) -> Result<CudaStorage> {
        float_elem!("cross-entropy backward on CUDA", xs.dtype(), |T, A| {
            let g = gs.as_cuda_slice::<A>()?.slice(gstart..);
            with_rows::<T, _>(xs, geo, ts, tg, |dev, stream, rows| {
                // SAFETY: the kernel writes every element of every row.
                let mut dx = unsafe { dev.alloc::<T>(rows.n * rows.v)? };
                {
                    let (gp, _g) = DevPtr::of(&g, stream);
                    let (dp, _d) = DevPtr::of_mut(&mut dx, stream);
                    // SAFETY: as in `fwd`, and dloss reaches n values gstride apart; dx was just allocated for n * v
                    // and overlaps nothing; the device's one stream.
                    unsafe { kernels(dev)?.dlogits(rows, Strided { ptr: gp, stride: gstride }, dp)? };
                }
                Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
            })
        })
    }
}
