//! The CPU twin of the fused attention: the same algorithm row by row (any HS; f32/bf16/f16 accumulating in f32, f64
//! in f64), forward keeping the row logsumexp, backward recomputing the probabilities from it. The tests hold it
//! against the composed reference (`model::attention::causal_attention_slow`) and finite differences, and the CUDA
//! kernels against it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Result};
use half::{bf16, f16};
use rayon::prelude::*;

use super::super::real::{Elem, Real};
use super::HeadView;

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

/// The CPU forward for q, k, v stored in `s` at `views`: `(o, lse)` storages, by dtype.
pub(super) fn fwd(
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

/// The CPU backward: `(dq, dk, dv)` storages, each contiguous `(B, NH, T, HS)`, from q, k, v in `s` at `views` and the
/// forward's `o`, `dout` and `lse` (contiguous from `starts`), by dtype.
pub(super) fn bwd(
    s: [&CpuStorage; 3],
    views: (HeadView, HeadView, HeadView),
    (os, gs, ls): (&CpuStorage, &CpuStorage, &CpuStorage),
    starts: (usize, usize, usize),
    dims: (usize, usize, usize),
    scale: f64,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    macro_rules! go {
        ($T:ty, $A:ty, $var:ident) => {{
            let (dq, dk, dv) = cpu_bwd_typed::<$T, $A>(
                s[0].as_slice()?,
                s[1].as_slice()?,
                s[2].as_slice()?,
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
    Ok(match s[0].dtype() {
        DType::F32 => go!(f32, f32, F32),
        DType::BF16 => go!(bf16, f32, BF16),
        DType::F16 => go!(f16, f32, F16),
        DType::F64 => go!(f64, f64, F64),
        dt => candle_core::bail!("attention inputs must be float, got {dt:?}"),
    })
}
