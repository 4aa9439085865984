//! Fused causal attention (FlashAttention-2 algorithm) with its backward: `q, k, v (B, NH, T, HS)` -> `o (B, NH,
//! T, HS)`, never materialising the `(B, NH, T, T)` scores. Forward keeps O and the per-row logsumexp
//! `L (B, NH, T)` (f32; f64 for f64 inputs) for backward, which recomputes the probabilities tile by tile and
//! returns dQ, dK, dV. At 124M with B=64, T=1024 that is 3 MB of L per layer instead of the composed version's
//! 3.2 GB f32 scores + 3.2 GB probabilities (+ their bf16 copy) per layer.
//!
//! CUDA (`src/cuda/attention.cu`): HS = 64 only (GPT-2), f32/bf16/f16 inputs, f32 accumulation; any (b, h, t) strides
//! with a dense last dim, so GPT-2's head views of the fused qkv projection go in without copies. Two kernel
//! sets: plain FMA (version 1, attention.cu; f32, and bf16/f16 on request) and tensor cores (version 2,
//! attention_tc.cuh: mma.sync m16n8k16, sm_80+; bf16/f16 by default, see [`FlashKernel`]). Their timings against the
//! composed version are in docs/PERF.md (from the TIMING lines of tests/kernels_attention.rs).
//! GPT-2's fused-qkv op ([`flash_causal_attention_qkv`]) runs `crate::cuda::flash_attn` instead for bf16/f16 on
//! CUDA (FlashAttention-2 with cp.async/ldmatrix, no layout copies; timed against PyTorch's SDPA in
//! docs/PERF.md); the kernels above remain for f32, the head-view op and `TOKENMILL_ATTN_FMA=1`.
//! CPU: the same algorithm row by row (any HS, f32/bf16/f16 accumulating in f32, f64 in f64); it is the twin the
//! tests hold against the composed reference (`model::attention::causal_attention_slow`) and finite differences.
//! The models call `model::attention::causal_attention`, which routes here only where the fused path exists
//! (CUDA, HS = 64) and to the composed reference otherwise (CPU training keeps candle's faster gemm-based path).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::real::{Elem, Real};

/// The only head size the CUDA kernels are written for.
pub const FLASH_HEAD_SIZE: usize = 64;

/// Which CUDA kernel set runs a fused attention call (CPU ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// Tensor cores for bf16/f16, FMA for f32. `TOKENMILL_ATTN_FMA=1` in the environment forces FMA everywhere
    /// (a switch for comparing or bisecting, read once per process).
    Auto,
    /// The FMA kernels (version 1) for every dtype.
    Fma,
}

impl FlashKernel {
    /// Whether this call runs the tensor-core kernels.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn tensor_cores(self, dt: DType) -> bool {
        static FORCE_FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let force_fma = *FORCE_FMA.get_or_init(|| std::env::var("TOKENMILL_ATTN_FMA").is_ok_and(|v| v == "1"));
        self == FlashKernel::Auto && !force_fma && matches!(dt, DType::BF16 | DType::F16)
    }
}

/// Whether attention with head size `hs` in `dt` runs fused on `device`: CUDA, HS = 64, f32/bf16/f16. The one rule:
/// both entry points of `model::attention` route by it, and both ops refuse on CUDA what it refuses. (On the CPU the
/// ops run their twin at any HS, for tests; the models keep candle's faster composed path there.)
pub fn supported(device: &Device, dt: DType, hs: usize) -> bool {
    device.is_cuda() && hs == FLASH_HEAD_SIZE && matches!(dt, DType::F32 | DType::BF16 | DType::F16)
}

/// The ops' refusal of what [`supported`] refuses on CUDA.
fn refuse_on_cuda(dt: DType, hs: usize) -> Result<()> {
    candle_core::bail!(
        "fused attention on CUDA supports head size {FLASH_HEAD_SIZE} in f32/bf16/f16, got HS = {hs} in {dt:?}; \
         use model::attention::causal_attention(_qkv), which falls back to the composed path"
    )
}

/// Causal attention `softmax(q k^T / sqrt(HS) + mask) v` for `q, k, v (B, NH, T, HS)` of one dtype, fused
/// (see the module doc); records its own backward. On CUDA, HS must be 64 and the dtype f32/bf16/f16 (an error
/// otherwise: `model::attention::causal_attention` falls back to the composed path there).
pub fn flash_causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    flash_causal_attention_with(q, k, v, FlashKernel::Auto)
}

/// [`flash_causal_attention`] with the CUDA kernel set chosen (for tests and timings: tensor cores vs FMA).
pub fn flash_causal_attention_with(q: &Tensor, k: &Tensor, v: &Tensor, kernel: FlashKernel) -> Result<Tensor> {
    let (b, nh, t, hs) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention q, k, v must share a shape (B, NH, T, HS): {:?}, {:?}, {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!("attention q, k, v must share a dtype: {:?}, {:?}, {:?}", q.dtype(), k.dtype(), v.dtype());
    }
    if b * nh * t * hs == 0 {
        candle_core::bail!("attention over an empty tensor ({b}, {nh}, {t}, {hs})");
    }
    if q.device().is_cuda() && !supported(q.device(), q.dtype(), hs) {
        refuse_on_cuda(q.dtype(), hs)?;
    }
    let dense = |x: &Tensor| -> Result<Tensor> {
        if x.layout().stride()[3] == 1 {
            Ok(x.clone())
        } else {
            x.contiguous()
        }
    };
    let op = FlashAttention { scale: 1.0 / (hs as f64).sqrt(), kernel, lse: Mutex::new(None) };
    dense(q)?.apply_op3(&dense(k)?, &dense(v)?, op)
}

/// One call's op: the forward stores the row logsumexp here for this call's backward (each call builds its own).
struct FlashAttention {
    scale: f64,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: FlashKernel,
    lse: Mutex<Option<Tensor>>, // (B, NH, T)
}

/// Where `(b, h, t, 0)` of a `(B, NH, T, HS)` layout with a dense last dim lives.
#[derive(Clone, Copy, Debug)]
struct HeadView {
    start: usize,
    sb: usize,
    sh: usize,
    st: usize,
    nh: usize,
}

impl HeadView {
    fn new(l: &Layout, what: &str) -> Result<Self> {
        let (_, nh, _, hs) = l.shape().dims4()?;
        let s = l.stride();
        if hs > 1 && s[3] != 1 {
            candle_core::bail!("attention {what} needs a dense last dim (strides {s:?})");
        }
        Ok(HeadView { start: l.start_offset(), sb: s[0], sh: s[1], st: s[2], nh })
    }

    /// Offset of row `t` of head `bh` (= b * NH + h).
    fn row(&self, bh: usize, t: usize) -> usize {
        self.start + (bh / self.nh) * self.sb + (bh % self.nh) * self.sh + t * self.st
    }
}

fn dot<A: Real>(a: &[A], b: &[A]) -> A {
    a.iter().zip(b).fold(A::ZERO, |s, (&x, &y)| s + x * y)
}

fn widen<T: Elem<A>, A: Real>(x: &[T]) -> Vec<A> {
    x.iter().map(|v| v.to_acc()).collect()
}

/// Forward on CPU: `o (B, NH, T, HS)` contiguous and `lse (B, NH, T)`.
fn cpu_fwd_typed<T: Elem<A>, A: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    (qv, kv, vv): (HeadView, HeadView, HeadView),
    (bh_n, t, hs): (usize, usize, usize),
    scale: A,
) -> (Vec<T>, Vec<A>) {
    let mut o = vec![T::from_acc(A::ZERO); bh_n * t * hs];
    let mut lse = vec![A::ZERO; bh_n * t];
    o.par_chunks_mut(hs).zip(lse.par_iter_mut()).enumerate().for_each(|(row, (orow, l))| {
        let (bh, i) = (row / t, row % t);
        let qi: Vec<A> = widen(&q[qv.row(bh, i)..qv.row(bh, i) + hs]);
        let s: Vec<A> = (0..=i).map(|j| dot(&qi, &widen(&k[kv.row(bh, j)..kv.row(bh, j) + hs])) * scale).collect();
        let m = s.iter().fold(A::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = A::ZERO;
        let mut acc = vec![A::ZERO; hs];
        for (j, &sj) in s.iter().enumerate() {
            let p = (sj - m).exp();
            sum = sum + p;
            for (a, x) in acc.iter_mut().zip(&v[vv.row(bh, j)..vv.row(bh, j) + hs]) {
                *a = *a + p * x.to_acc();
            }
        }
        for (out, a) in orow.iter_mut().zip(&acc) {
            *out = T::from_acc(*a / sum);
        }
        *l = m + sum.ln();
    });
    (o, lse)
}

/// Backward on CPU: `(dq, dk, dv)`, each contiguous `(B, NH, T, HS)`. `o`, `dout`: contiguous.
#[allow(clippy::too_many_arguments)]
fn cpu_bwd_typed<T: Elem<A>, A: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    (qv, kv, vv): (HeadView, HeadView, HeadView),
    o: &[T],
    dout: &[T],
    lse: &[A],
    (bh_n, t, hs): (usize, usize, usize),
    scale: A,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let zero = T::from_acc(A::ZERO);
    let (mut dq, mut dk, mut dv) = (vec![zero; bh_n * t * hs], vec![zero; bh_n * t * hs], vec![zero; bh_n * t * hs]);
    let head = t * hs;
    dq.par_chunks_mut(head).zip(dk.par_chunks_mut(head)).zip(dv.par_chunks_mut(head)).enumerate().for_each(
        |(bh, ((dqh, dkh), dvh))| {
            let rows = |x: &[T], view: &HeadView| -> Vec<Vec<A>> {
                (0..t).map(|i| widen(&x[view.row(bh, i)..view.row(bh, i) + hs])).collect()
            };
            let (qs, ks, vs) = (rows(q, &qv), rows(k, &kv), rows(v, &vv));
            let contiguous = |x: &[T]| -> Vec<Vec<A>> {
                (0..t).map(|i| widen(&x[(bh * t + i) * hs..(bh * t + i + 1) * hs])).collect()
            };
            let (os, gs) = (contiguous(o), contiguous(dout));
            let (mut aq, mut ak, mut av) = (vec![A::ZERO; head], vec![A::ZERO; head], vec![A::ZERO; head]);
            for i in 0..t {
                // D_i = dO_i . O_i: the softmax backward's row term, from O as stored (as the CUDA kernel).
                let d_i = dot(&gs[i], &os[i]);
                let l_i = lse[bh * t + i];
                for j in 0..=i {
                    let p = (dot(&qs[i], &ks[j]) * scale - l_i).exp();
                    let ds = p * (dot(&gs[i], &vs[j]) - d_i) * scale;
                    for d in 0..hs {
                        av[j * hs + d] = av[j * hs + d] + p * gs[i][d];
                        aq[i * hs + d] = aq[i * hs + d] + ds * ks[j][d];
                        ak[j * hs + d] = ak[j * hs + d] + ds * qs[i][d];
                    }
                }
            }
            for (out, a) in [(dqh, &aq), (dkh, &ak), (dvh, &av)] {
                for (x, y) in out.iter_mut().zip(a.iter()) {
                    *x = T::from_acc(*y);
                }
            }
        },
    );
    (dq, dk, dv)
}

fn acc_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-causal-attention"
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
        let (b, nh, t, hs) = l1.shape().dims4()?;
        let views = (HeadView::new(l1, "q")?, HeadView::new(l2, "k")?, HeadView::new(l3, "v")?);
        let (o, lse) = cpu_fwd([s1, s2, s3], views, (b * nh, t, hs), self.scale)?;
        self.save_lse(Storage::Cpu(lse), (b, nh, t));
        Ok((o, l1.shape().clone()))
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
        let (b, nh, t, _) = l1.shape().dims4()?;
        let views = (HeadView::new(l1, "q")?, HeadView::new(l2, "k")?, HeadView::new(l3, "v")?);
        let tc = self.kernel.tensor_cores(s1.dtype());
        let (o, lse) = cuda::fwd(s1, s2, s3, views, (b, nh, t), self.scale as f32, tc)?;
        self.save_lse(Storage::Cuda(lse), (b, nh, t));
        Ok((o, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention lse lock poisoned".into()))?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention backward before its forward stored the logsumexp") };
        let (dq, dk, dv) = flash_bwd(q, k, v, o, &dout.contiguous()?, &lse, self.scale, self.kernel)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl FlashAttention {
    fn save_lse(&self, storage: Storage, shape: (usize, usize, usize)) {
        store_lse(&self.lse, storage, shape)
    }
}

/// Keep a forward's logsumexp `(B, NH, T)` for the same op's backward.
fn store_lse(slot: &Mutex<Option<Tensor>>, storage: Storage, shape: (usize, usize, usize)) {
    let t = Tensor::from_storage(storage, shape, BackpropOp::none(), false);
    // A poisoned lock only means another thread panicked mid-store; the value is still ours to replace.
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
}

/// The CPU forward for q, k, v stored in `s` at `views`: `(o, lse)` storages, by dtype.
fn cpu_fwd(
    s: [&CpuStorage; 3],
    views: (HeadView, HeadView, HeadView),
    dims: (usize, usize, usize),
    scale: f64,
) -> Result<(CpuStorage, CpuStorage)> {
    macro_rules! go {
        ($T:ty, $A:ty, $var:ident, $lvar:ident) => {{
            let (o, lse) = cpu_fwd_typed::<$T, $A>(
                s[0].as_slice()?,
                s[1].as_slice()?,
                s[2].as_slice()?,
                views,
                dims,
                <$A>::from_f64(scale),
            );
            (CpuStorage::$var(o), CpuStorage::$lvar(lse))
        }};
    }
    Ok(match s[0].dtype() {
        DType::F32 => go!(f32, f32, F32, F32),
        DType::BF16 => go!(bf16, f32, BF16, F32),
        DType::F16 => go!(f16, f32, F16, F32),
        DType::F64 => go!(f64, f64, F64, F64),
        dt => candle_core::bail!("attention inputs must be float, got {dt:?}"),
    })
}

/// Causal attention straight from GPT-2's fused projection: `qkv (B, T, 3C)` (q, k, v side by side, each
/// C = NH * HS) -> `y (B, T, C)` (the heads side by side, c_proj's input), recording a backward that returns d(qkv)
/// as one `(B, T, 3C)` tensor. Nothing is permuted or copied around the kernels: on CUDA in bf16/f16 this is a thin
/// adapter over [`crate::cuda::flash_attn`] (FlashAttention-2 on the tensor cores, reading the heads out of `qkv`
/// and writing `y` and d(qkv) in place; deterministic). Elsewhere (CPU, f32 on CUDA, or `TOKENMILL_ATTN_FMA=1`)
/// the kernels of [`flash_causal_attention`] run on head views and the result is permuted to the same layout.
pub fn flash_causal_attention_qkv(qkv: &Tensor, n_head: usize) -> Result<Tensor> {
    let (_, _, c3) = qkv.dims3()?;
    if n_head == 0 || c3 % (3 * n_head) != 0 {
        candle_core::bail!("attention qkv: last dim {c3} is not 3 * n_head ({n_head}) * head size");
    }
    let hs = c3 / 3 / n_head;
    if qkv.device().is_cuda() && !supported(qkv.device(), qkv.dtype(), hs) {
        refuse_on_cuda(qkv.dtype(), hs)?;
    }
    let op =
        FlashAttentionQkv { n_head, scale: 1.0 / (hs as f64).sqrt(), kernel: FlashKernel::Auto, lse: Mutex::new(None) };
    qkv.contiguous()?.apply_op1(op)
}

/// (B, NH, T, HS): batch, heads, positions, head size.
type HeadDims = (usize, usize, usize, usize);

/// [`flash_causal_attention_qkv`]'s op; like [`FlashAttention`] it keeps its forward's logsumexp for its backward.
struct FlashAttentionQkv {
    n_head: usize,
    scale: f64,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: FlashKernel,
    lse: Mutex<Option<Tensor>>,
}

impl FlashAttentionQkv {
    /// The q, k, v head views of a contiguous `(B, T, 3C)` layout, and (B, NH, T, HS).
    fn views(&self, l: &Layout) -> Result<([HeadView; 3], HeadDims)> {
        let (b, t, c3) = l.shape().dims3()?;
        if !l.is_contiguous() {
            candle_core::bail!("attention qkv must be contiguous");
        }
        let (c, nh) = (c3 / 3, self.n_head);
        let hs = c / nh;
        let view = |i: usize| HeadView { start: l.start_offset() + i * c, sb: t * c3, sh: hs, st: c3, nh };
        Ok(([view(0), view(1), view(2)], (b, nh, t, hs)))
    }

    /// Whether this call runs crate::cuda::flash_attn (CUDA, bf16/f16, not forced onto the FMA kernels, and not
    /// sent back to the head-view kernels by `TOKENMILL_ATTN_QKV=legacy`, the before/after switch of docs/PERF.md).
    #[cfg(feature = "cuda")]
    fn flash2(&self, dt: DType) -> bool {
        static LEGACY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let legacy = *LEGACY.get_or_init(|| std::env::var("TOKENMILL_ATTN_QKV").is_ok_and(|v| v == "legacy"));
        !legacy && self.kernel.tensor_cores(dt)
    }

    fn save_lse(&self, storage: Storage, shape: (usize, usize, usize)) {
        store_lse(&self.lse, storage, shape)
    }
}

/// `(B, NH, T, HS)` rows -> `(B, T, NH * HS)` on the host.
fn heads_to_rows(o: CpuStorage, (b, nh, t, hs): HeadDims) -> Result<CpuStorage> {
    fn go<X: Copy>(o: &[X], (b, nh, t, hs): HeadDims) -> Vec<X> {
        let mut out = Vec::with_capacity(o.len());
        for bi in 0..b {
            for ti in 0..t {
                for h in 0..nh {
                    let src = ((bi * nh + h) * t + ti) * hs;
                    out.extend_from_slice(&o[src..src + hs]);
                }
            }
        }
        out
    }
    let d = (b, nh, t, hs);
    Ok(match o {
        CpuStorage::F32(v) => CpuStorage::F32(go(&v, d)),
        CpuStorage::F64(v) => CpuStorage::F64(go(&v, d)),
        CpuStorage::BF16(v) => CpuStorage::BF16(go(&v, d)),
        CpuStorage::F16(v) => CpuStorage::F16(go(&v, d)),
        o => candle_core::bail!("attention output must be float, got {:?}", o.dtype()),
    })
}

impl CustomOp1 for FlashAttentionQkv {
    fn name(&self) -> &'static str {
        "flash-causal-attention-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ([q, k, v], (b, nh, t, hs)) = self.views(l)?;
        let (o, lse) = cpu_fwd([s, s, s], (q, k, v), (b * nh, t, hs), self.scale)?;
        self.save_lse(Storage::Cpu(lse), (b, nh, t));
        Ok((heads_to_rows(o, (b, nh, t, hs))?, Shape::from((b, t, nh * hs))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let ([q, k, v], (b, nh, t, hs)) = self.views(l)?;
        let shape = Shape::from((b, t, nh * hs));
        if self.flash2(s.dtype()) {
            let (y, lse) = flash2::fwd(s, l.start_offset(), (b, t, nh, hs))?;
            self.save_lse(Storage::Cuda(lse), (b, nh, t));
            return Ok((y, shape));
        }
        let tc = self.kernel.tensor_cores(s.dtype());
        let (o, lse) = cuda::fwd(s, s, s, (q, k, v), (b, nh, t), self.scale as f32, tc)?;
        self.save_lse(Storage::Cuda(lse), (b, nh, t));
        // (B, NH, T, HS) -> (B, T, NH, HS): one strided copy (f32 and the FMA switch only).
        let heads = Layout::contiguous((b, nh, t, hs)).transpose(1, 2)?;
        let dev = o.device().clone();
        let mut y = match o.dtype() {
            DType::F32 => candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f32>(b * t * nh * hs)? }, dev),
            DType::BF16 => {
                candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<bf16>(b * t * nh * hs)? }, dev)
            }
            _ => candle_core::CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f16>(b * t * nh * hs)? }, dev),
        };
        o.copy_strided_src(&mut y, 0, &heads)?;
        Ok((y, shape))
    }

    fn bwd(&self, qkv: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention lse lock poisoned".into()))?.clone();
        let Some(lse) = lse else { candle_core::bail!("attention backward before its forward stored the logsumexp") };
        let (b, t, c3) = qkv.dims3()?;
        let (nh, hs) = (self.n_head, c3 / 3 / self.n_head);
        #[cfg(feature = "cuda")]
        if qkv.device().is_cuda() && self.flash2(qkv.dtype()) {
            return flash2::bwd(qkv, y, dy, &lse, (b, t, nh, hs)).map(Some);
        }
        // The head views as tensors (no copies: reshape of a contiguous tensor, then views), for flash_bwd.
        let x = qkv.contiguous()?.reshape((b, t, 3, nh, hs))?;
        let part = |i: usize| x.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2); // (B, NH, T, HS)
        let heads = |z: &Tensor| z.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous(); // (B, T, C) -> heads
        let (dq, dk, dv) =
            flash_bwd(&part(0)?, &part(1)?, &part(2)?, &heads(y)?, &heads(dy)?, &lse, self.scale, self.kernel)?;
        // (B, NH, T, HS) x 3 -> (B, T, 3, NH, HS) -> (B, T, 3C): one strided copy each.
        let dqkv = Tensor::stack(&[dq.transpose(1, 2)?, dk.transpose(1, 2)?, dv.transpose(1, 2)?], 2)?;
        Ok(Some(dqkv.reshape((b, t, c3))?))
    }
}

#[cfg(feature = "cuda")]
mod flash2 {
    //! The qkv op over crate::cuda::flash_attn: candle storages in, raw pointers to the launcher, storages out.
    use std::sync::{Arc, Mutex};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, DeviceId};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, DType, Result, Storage, Tensor};
    use half::{bf16, f16};

    use crate::cuda::flash_attn::{Dtype, FlashAttn, Heads};

    /// The kernels loaded once per device.
    fn kernels(dev: &CudaDevice) -> Result<Arc<FlashAttn>> {
        static LOADED: Mutex<Vec<(DeviceId, Arc<FlashAttn>)>> = Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, f)) = loaded.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(f.clone());
        }
        let f = Arc::new(FlashAttn::new(&dev.cuda_stream())?);
        loaded.push((dev.id(), f.clone()));
        Ok(f)
    }

    fn dtype(dt: DType) -> Result<Dtype> {
        match dt {
            DType::BF16 => Ok(Dtype::Bf16),
            DType::F16 => Ok(Dtype::F16),
            dt => candle_core::bail!("flash attention takes bf16 or f16, got {dt:?}"),
        }
    }

    /// `y (B, T, C)` and `lse (B, NH, T)` from the contiguous `qkv` storage starting at element `start`.
    pub(super) fn fwd(
        s: &CudaStorage,
        start: usize,
        (b, t, nh, hs): (usize, usize, usize, usize),
    ) -> Result<(CudaStorage, CudaStorage)> {
        fn go<X: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            start: usize,
            d: (usize, usize, usize, usize),
            dt: Dtype,
        ) -> Result<(CudaStorage, CudaStorage)> {
            let (b, t, nh, hs) = d;
            let dev = s.device();
            let stream = dev.cuda_stream();
            let fa = kernels(dev)?;
            let qkv = s.as_cuda_slice::<X>()?.slice(start..);
            // SAFETY: forward writes every element of y and lse.
            let mut y = unsafe { dev.alloc::<X>(b * t * nh * hs)? };
            let mut lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
            {
                let (qp, _q) = qkv.device_ptr(&stream);
                let (yp, _y) = y.device_ptr_mut(&stream);
                let (lp, _l) = lse.device_ptr_mut(&stream);
                // SAFETY: qkv holds b * t * 3 * nh * hs elements from `start` (the op's contiguous input), y and
                // lse were just allocated at the sizes forward writes; all on the device's one stream.
                unsafe { fa.forward_with(dt, qp, yp, lp, b, t, Heads::mha(nh), hs)? };
            }
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
        }
        let d = (b, t, nh, hs);
        match dtype(s.dtype())? {
            Dtype::Bf16 => go::<bf16>(s, start, d, Dtype::Bf16),
            Dtype::F16 => go::<f16>(s, start, d, Dtype::F16),
        }
    }

    /// d(qkv) `(B, T, 3C)` from qkv, the op's output y, its gradient dy and the forward's lse.
    pub(super) fn bwd(
        qkv: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        lse: &Tensor,
        (b, t, nh, hs): (usize, usize, usize, usize),
    ) -> Result<Tensor> {
        let dt = dtype(qkv.dtype())?;
        let (qkv, y, dy, lse) = (qkv.contiguous()?, y.contiguous()?, dy.contiguous()?, lse.contiguous()?);
        let (qs, ql) = qkv.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = dy.storage_and_layout();
        let (ls, ll) = lse.storage_and_layout();
        let (Storage::Cuda(qs), Storage::Cuda(ys), Storage::Cuda(gs), Storage::Cuda(ls)) = (&*qs, &*ys, &*gs, &*ls)
        else {
            candle_core::bail!("flash attention backward: qkv, y, dy and lse must be on one CUDA device");
        };
        let starts = [ql.start_offset(), yl.start_offset(), gl.start_offset(), ll.start_offset()];
        fn go<X: CudaDType + DeviceRepr>(
            st: [&CudaStorage; 4],
            starts: [usize; 4],
            (b, t, nh, hs): (usize, usize, usize, usize),
            dt: Dtype,
        ) -> Result<CudaStorage> {
            let dev = st[0].device();
            let stream = dev.cuda_stream();
            let fa = kernels(dev)?;
            let qkv = st[0].as_cuda_slice::<X>()?.slice(starts[0]..);
            let y = st[1].as_cuda_slice::<X>()?.slice(starts[1]..);
            let dy = st[2].as_cuda_slice::<X>()?.slice(starts[2]..);
            let lse = st[3].as_cuda_slice::<f32>()?.slice(starts[3]..);
            // SAFETY: backward writes every element of dqkv; the scratch is written before it is read.
            let mut dqkv = unsafe { dev.alloc::<X>(b * t * 3 * nh * hs)? };
            let mut scratch = unsafe { dev.alloc::<f32>(FlashAttn::scratch_len(b, t, nh))? };
            {
                let (qp, _q) = qkv.device_ptr(&stream);
                let (yp, _y) = y.device_ptr(&stream);
                let (gp, _g) = dy.device_ptr(&stream);
                let (lp, _l) = lse.device_ptr(&stream);
                let (sp, _s) = scratch.device_ptr_mut(&stream);
                let (dp, _d) = dqkv.device_ptr_mut(&stream);
                // SAFETY: contiguous inputs of the sizes the API documents (checked by the op's shapes); the
                // outputs were just allocated; one stream.
                unsafe { fa.backward_with(dt, qp, yp, gp, lp, sp, dp, b, t, Heads::mha(nh), hs)? };
            }
            Ok(CudaStorage::wrap_cuda_slice(dqkv, dev.clone()))
        }
        let st = [qs, ys, gs, ls];
        let d = (b, t, nh, hs);
        let out = match dt {
            Dtype::Bf16 => go::<bf16>(st, starts, d, dt)?,
            Dtype::F16 => go::<f16>(st, starts, d, dt)?,
        };
        Ok(Tensor::from_storage(Storage::Cuda(out), (b, t, 3 * nh * hs), BackpropOp::none(), false))
    }
}

/// dQ, dK, dV (each `(B, NH, T, HS)` in the inputs' dtype) from the inputs, the forward's `o` and `lse`, and
/// `dout` (contiguous).
#[allow(clippy::too_many_arguments)]
fn flash_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    scale: f64,
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))] kernel: FlashKernel,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, nh, t, hs) = q.dims4()?;
    let o = o.contiguous()?;
    let lse = lse.to_dtype(acc_dtype(q.dtype()))?.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (os, ol) = o.storage_and_layout();
    let (gs, gl) = dout.storage_and_layout();
    let (ls, ll) = lse.storage_and_layout();
    // Contiguous, but possibly a view starting inside its storage.
    let starts = (ol.start_offset(), gl.start_offset(), ll.start_offset());
    let views = (HeadView::new(ql, "q")?, HeadView::new(kl, "k")?, HeadView::new(vl, "v")?);
    let shape = (b, nh, t, hs);
    let wrap = |s: Storage| Tensor::from_storage(s, shape, BackpropOp::none(), false);
    match (&*qs, &*ks, &*vs, &*os, &*gs, &*ls) {
        (
            Storage::Cpu(qs),
            Storage::Cpu(ks),
            Storage::Cpu(vs),
            Storage::Cpu(os),
            Storage::Cpu(gs),
            Storage::Cpu(ls),
        ) => {
            let dims = (b * nh, t, hs);
            macro_rules! go {
                ($T:ty, $A:ty, $var:ident) => {{
                    let (dq, dk, dv) = cpu_bwd_typed::<$T, $A>(
                        qs.as_slice()?,
                        ks.as_slice()?,
                        vs.as_slice()?,
                        views,
                        &os.as_slice()?[starts.0..],
                        &gs.as_slice()?[starts.1..],
                        &ls.as_slice()?[starts.2..],
                        dims,
                        <$A>::from_f64(scale),
                    );
                    (CpuStorage::$var(dq), CpuStorage::$var(dk), CpuStorage::$var(dv))
                }};
            }
            let (dq, dk, dv) = match qs.dtype() {
                DType::F32 => go!(f32, f32, F32),
                DType::BF16 => go!(bf16, f32, BF16),
                DType::F16 => go!(f16, f32, F16),
                DType::F64 => go!(f64, f64, F64),
                dt => candle_core::bail!("attention inputs must be float, got {dt:?}"),
            };
            Ok((wrap(Storage::Cpu(dq)), wrap(Storage::Cpu(dk)), wrap(Storage::Cpu(dv))))
        }
        #[cfg(feature = "cuda")]
        (
            Storage::Cuda(qs),
            Storage::Cuda(ks),
            Storage::Cuda(vs),
            Storage::Cuda(os),
            Storage::Cuda(gs),
            Storage::Cuda(ls),
        ) => {
            let tc = kernel.tensor_cores(qs.dtype());
            let (dq, dk, dv) = cuda::bwd(qs, ks, vs, views, (os, gs, ls), starts, (b, nh, t), scale as f32, tc)?;
            Ok((wrap(Storage::Cuda(dq)), wrap(Storage::Cuda(dk)), wrap(Storage::Cuda(dv))))
        }
        _ => candle_core::bail!("attention backward: q, k, v, o, dout and lse must be on one CPU or CUDA device"),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launchers for attention.cu. Grids: forward and dQ (ceil(T / 64) query tiles, B * NH), dK/dV (ceil(T / 64)
    //! key tiles, B * NH), D (one thread per row); 128 threads per tile block. The FMA kernels (`fa_*`) and the
    //! tensor-core kernels (`fa_tc_*`, bf16/f16) share this geometry and argument lists; `tc` picks the set.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Result};
    use half::{bf16, f16};

    use super::HeadView;
    use crate::cuda::launch::{dtype_suffix, grid_1d, Module};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    const FILE: &str = "attention.cu";
    /// FA_THREADS, FA_BR (= FA_BKV = TC_ROWS) in attention.cu.
    const THREADS: u32 = 128;
    const TILE: usize = 64;

    fn suffix(dt: DType) -> Result<&'static str> {
        dtype_suffix(dt, "fused attention", &[DType::F32, DType::BF16, DType::F16])
    }

    /// "tc_" for the tensor-core kernels (bf16/f16 only), "" for the FMA ones.
    fn prefix(dt: DType, tc: bool) -> &'static str {
        if tc && matches!(dt, DType::BF16 | DType::F16) {
            "tc_"
        } else {
            ""
        }
    }

    fn tile_grid(bh: usize, t: usize) -> Result<LaunchConfig> {
        if bh > 65535 {
            candle_core::bail!("fused attention: B * NH = {bh} exceeds the grid's 65535 limit");
        }
        Ok(LaunchConfig {
            grid_dim: (t.div_ceil(TILE) as u32, bh as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn strides(v: &[HeadView; 3]) -> [i64; 9] {
        let mut s = [0i64; 9];
        for (i, h) in v.iter().enumerate() {
            s[3 * i] = h.sb as i64;
            s[3 * i + 1] = h.sh as i64;
            s[3 * i + 2] = h.st as i64;
        }
        s
    }

    fn views<'a, T: CudaDType>(s: [&'a CudaStorage; 3], v: &[HeadView; 3]) -> Result<[CudaView<'a, T>; 3]> {
        Ok([
            s[0].as_cuda_slice::<T>()?.slice(v[0].start..),
            s[1].as_cuda_slice::<T>()?.slice(v[1].start..),
            s[2].as_cuda_slice::<T>()?.slice(v[2].start..),
        ])
    }

    pub(super) fn fwd(
        qs: &CudaStorage,
        ks: &CudaStorage,
        vs: &CudaStorage,
        hv: (HeadView, HeadView, HeadView),
        (b, nh, t): (usize, usize, usize),
        scale: f32,
        tc: bool,
    ) -> Result<(CudaStorage, CudaStorage)> {
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            name: &str,
            s: [&CudaStorage; 3],
            hv: [HeadView; 3],
            (b, nh, t): (usize, usize, usize),
            scale: f32,
        ) -> Result<(CudaStorage, CudaStorage)> {
            let [q, k, v] = views::<T>(s, &hv)?;
            let st = strides(&hv);
            // SAFETY: the kernel writes every row < T of every head (o) and every lse entry.
            let o = unsafe { dev.alloc::<T>(b * nh * t * super::FLASH_HEAD_SIZE)? };
            let lse = unsafe { dev.alloc::<f32>(b * nh * t)? };
            let func = Module::on_device(dev, FILE, PTX)?.kernel(name)?;
            let mut a = func.builder();
            let (nh_i, t_i) = (nh as i32, t as i32);
            a.arg(&q).arg(&k).arg(&v).arg(&o).arg(&lse).arg(&nh_i).arg(&t_i);
            for x in &st {
                a.arg(x);
            }
            a.arg(&scale);
            // SAFETY: argument list matches fa_fwd_* / fa_tc_fwd_* in attention.cu.
            unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), CudaStorage::wrap_cuda_slice(lse, dev.clone())))
        }
        let dev = qs.device();
        let name = format!("fa_{}fwd_{}", prefix(qs.dtype(), tc), suffix(qs.dtype())?);
        let s = [qs, ks, vs];
        let hv = [hv.0, hv.1, hv.2];
        match qs.dtype() {
            DType::F32 => go::<f32>(dev, &name, s, hv, (b, nh, t), scale),
            DType::BF16 => go::<bf16>(dev, &name, s, hv, (b, nh, t), scale),
            _ => go::<f16>(dev, &name, s, hv, (b, nh, t), scale),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bwd(
        qs: &CudaStorage,
        ks: &CudaStorage,
        vs: &CudaStorage,
        hv: (HeadView, HeadView, HeadView),
        (os, gs, ls): (&CudaStorage, &CudaStorage, &CudaStorage),
        starts: (usize, usize, usize),
        (b, nh, t): (usize, usize, usize),
        scale: f32,
        tc: bool,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaDType + DeviceRepr>(
            dev: &CudaDevice,
            (pfx, sfx): (&str, &str),
            s: [&CudaStorage; 3],
            hv: [HeadView; 3],
            (os, gs, ls): (&CudaStorage, &CudaStorage, &CudaStorage),
            starts: (usize, usize, usize),
            (b, nh, t): (usize, usize, usize),
            scale: f32,
        ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
            let [q, k, v] = views::<T>(s, &hv)?;
            let st = strides(&hv);
            let o = os.as_cuda_slice::<T>()?.slice(starts.0..);
            let g = gs.as_cuda_slice::<T>()?.slice(starts.1..);
            let lse = ls.as_cuda_slice::<f32>()?.slice(starts.2..);
            let rows = b * nh * t;
            let n = rows * super::FLASH_HEAD_SIZE;
            // SAFETY: each kernel writes every element of its outputs (rows < T of every head).
            let dvec = unsafe { dev.alloc::<f32>(rows)? };
            let (dq, dk, dv) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
            let (nh_i, t_i, rows_i) = (nh as i32, t as i32, rows as i64);

            let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_bwd_dot_{sfx}"))?;
            let mut a = func.builder();
            a.arg(&o).arg(&g).arg(&dvec).arg(&rows_i);
            let cfg = grid_1d(rows.div_ceil(256), 256)?;
            // SAFETY: argument list matches fa_bwd_dot_* in attention.cu.
            unsafe { a.launch(cfg) }.w()?;

            let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_{pfx}bwd_dkdv_{sfx}"))?;
            let mut a = func.builder();
            a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dk).arg(&dv).arg(&nh_i).arg(&t_i);
            for x in &st {
                a.arg(x);
            }
            a.arg(&scale);
            // SAFETY: argument list matches fa_bwd_dkdv_* / fa_tc_bwd_dkdv_* in attention.cu.
            unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

            let func = Module::on_device(dev, FILE, PTX)?.kernel(&format!("fa_{pfx}bwd_dq_{sfx}"))?;
            let mut a = func.builder();
            a.arg(&q).arg(&k).arg(&v).arg(&g).arg(&lse).arg(&dvec).arg(&dq).arg(&nh_i).arg(&t_i);
            for x in &st {
                a.arg(x);
            }
            a.arg(&scale);
            // SAFETY: argument list matches fa_bwd_dq_* / fa_tc_bwd_dq_* in attention.cu.
            unsafe { a.launch(tile_grid(b * nh, t)?) }.w()?;

            let w = |x| CudaStorage::wrap_cuda_slice(x, dev.clone());
            Ok((w(dq), w(dk), w(dv)))
        }
        let dev = qs.device();
        let names = (prefix(qs.dtype(), tc), suffix(qs.dtype())?);
        let s = [qs, ks, vs];
        let hv = [hv.0, hv.1, hv.2];
        let og = (os, gs, ls);
        match qs.dtype() {
            DType::F32 => go::<f32>(dev, names, s, hv, og, starts, (b, nh, t), scale),
            DType::BF16 => go::<bf16>(dev, names, s, hv, og, starts, (b, nh, t), scale),
            _ => go::<f16>(dev, names, s, hv, og, starts, (b, nh, t), scale),
        }
    }
}
