//! Fused GELU, tanh approximation (GPT-2's `gelu_new`), with its exact backward: one elementwise pass each way, in
//! the input's dtype (f32, bf16, f64) with f32 math (f64 for f64). Saves only its input.
//!
//! Why: the composed version (`ops::gelu_tanh_slow`) is 7 candle ops whose autograd keeps ~5 intermediates of the
//! (B, T, 4C) activation alive for backward (~1.8 GB per layer at 124M, B = 32, bf16) and runs ~12 elementwise
//! kernels forward + backward; this keeps none beyond x and runs one kernel each way.
//!
//! CPU: rayon over chunks (the twin the tests hold against the composed reference and finite differences).
//! CUDA: `src/cuda/activation.cu` (the engine's GELU kernels, templated over the dtype), grid-stride with 16-byte
//! vectors.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::real::{float_elem, Elem, Real};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044715;
/// Elements per rayon task: large enough that scheduling is noise, small enough to split the MLP activation.
const CHUNK: usize = 1 << 14;

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` elementwise, in x's dtype, with a fused backward.
/// Where [`supported`] says no, an error (`ops::gelu_tanh` routes there to the composed version).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !supported(x) {
        candle_core::bail!(
            "fused gelu: {:?} on {:?} is not supported (f32, bf16 or f64)",
            x.dtype(),
            x.device().location()
        );
    }
    x.contiguous()?.apply_op1(GeluTanh)
}

/// Whether the fused kernel runs `x`: f32, bf16 or f64 on the CPU or CUDA. The one routing rule: `ops::gelu_tanh`
/// takes the fused path exactly where this holds.
pub fn supported(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F64) && (x.device().is_cpu() || x.device().is_cuda())
}

/// The forward in the same operation order as the composed reference, so f64 agrees to the last bit or two.
fn val<A: Real>(x: A) -> A {
    let t = ((x * x * x * A::from_f64(COEF) + x) * A::from_f64(SQRT_2_OVER_PI)).tanh();
    (t + A::ONE) * x * A::from_f64(0.5)
}

/// d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
fn grad<A: Real>(x: A) -> A {
    let half = A::from_f64(0.5);
    let x2 = x * x;
    let t = ((x2 * x * A::from_f64(COEF) + x) * A::from_f64(SQRT_2_OVER_PI)).tanh();
    half * (A::ONE + t)
        + half * x * (A::ONE - t * t) * A::from_f64(SQRT_2_OVER_PI) * (A::ONE + A::from_f64(3.0 * COEF) * x2)
}

fn cpu_fwd_typed<T: Elem<A>, A: Real>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::from_acc(A::ZERO); x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, x) in y.iter_mut().zip(x) {
            *y = T::from_acc(val(x.to_acc()));
        }
    });
    y
}

fn cpu_bwd_typed<T: Elem<A>, A: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::from_acc(A::ZERO); x.len()];
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
        for (d, (x, g)) in dx.iter_mut().zip(x.iter().zip(dy)) {
            *d = T::from_acc(g.to_acc() * grad(x.to_acc()));
        }
    });
    dx
}

/// The contiguous range of a layout (the wrapper passes contiguous tensors only).
fn range(l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("gelu: input must be contiguous".into()))
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = range(l)?;
        let out = float_elem!("gelu", s.dtype(), |T, A| {
            T::to_cpu_storage_owned(cpu_fwd_typed::<T, A>(&s.as_slice::<T>()?[a..b]))
        });
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (a, b) = range(l)?;
        Ok((cuda::run(s, a, None, b - a)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gelu_tanh_bwd(x, &dy.to_dtype(x.dtype())?.contiguous()?)?))
    }
}

/// `dx = dy * gelu'(x)` in x's dtype; `x` and `dy` contiguous, one shape and dtype.
fn gelu_tanh_bwd(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (gs, gl) = dy.storage_and_layout();
    let ((xa, xb), (ga, gb)) = (range(xl)?, range(gl)?);
    if xb - xa != gb - ga {
        candle_core::bail!("gelu backward: x has {} elements, dy {}", xb - xa, gb - ga);
    }
    let storage = match (&*xs, &*gs) {
        (Storage::Cpu(xs), Storage::Cpu(gs)) => {
            if xs.dtype() != gs.dtype() {
                candle_core::bail!("gelu backward: x {:?} and dy {:?} must share a dtype", xs.dtype(), gs.dtype());
            }
            Storage::Cpu(float_elem!("gelu backward", xs.dtype(), |T, A| {
                T::to_cpu_storage_owned(cpu_bwd_typed::<T, A>(
                    &xs.as_slice::<T>()?[xa..xb],
                    &gs.as_slice::<T>()?[ga..gb],
                ))
            }))
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(xs), Storage::Cuda(gs)) => Storage::Cuda(cuda::run(xs, xa, Some((gs, ga)), xb - xa)?),
        _ => candle_core::bail!("gelu backward: x and dy must be on one CPU or CUDA device"),
    };
    Ok(Tensor::from_storage(storage, x.shape().clone(), BackpropOp::none(), false))
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The op's storages over `crate::cuda::activation::Gelu` (activation.cu's kernels, the engine's too; that
    //! launcher owns their grid and names).
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, Result};

    use super::super::real::float_elem;
    use crate::cuda::activation::{Gelu, GeluElem};
    use crate::cuda::devptr::DevPtr;
    use crate::cuda::launch::per_device;

    /// Forward (`dy` None: `y = gelu(x)`) or backward (`dx = dy * gelu'(x)`) over `n` elements of `x` from
    /// `xstart` (and of `dy` from its start).
    pub(super) fn run(
        xs: &CudaStorage,
        xstart: usize,
        dy: Option<(&CudaStorage, usize)>,
        n: usize,
    ) -> Result<CudaStorage> {
        fn go<T: CudaDType + GeluElem>(
            xs: &CudaStorage,
            xstart: usize,
            dy: Option<(&CudaStorage, usize)>,
            n: usize,
        ) -> Result<CudaStorage> {
            let dev = xs.device();
            let stream = dev.cuda_stream();
            let k = per_device(dev, "activation.cu", Gelu::new)?;
            let x = xs.as_cuda_slice::<T>()?.slice(xstart..);
            // SAFETY: the kernel writes every one of the n elements.
            let mut out = unsafe { dev.alloc::<T>(n)? };
            {
                let (xp, _x) = DevPtr::of(&x, &stream);
                let (op, _o) = DevPtr::of_mut(&mut out, &stream);
                match dy {
                    // SAFETY: x holds n elements from its start, out was just allocated for n; one stream.
                    None => unsafe { k.forward(xp, op, n)? },
                    Some((gs, gstart)) => {
                        let g = gs.as_cuda_slice::<T>()?.slice(gstart..);
                        let (gp, _g) = DevPtr::of(&g, &stream);
                        // SAFETY: as above, and dy holds n elements from its start.
                        unsafe { k.backward(xp, gp, op, n)? }
                    }
                }
            }
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        if let Some((gs, _)) = dy {
            if gs.dtype() != xs.dtype() {
                candle_core::bail!("gelu backward: dy {:?} and x {:?} differ in dtype", gs.dtype(), xs.dtype());
            }
        }
        float_elem!("gelu on CUDA", xs.dtype(), |T, A| go::<T>(xs, xstart, dy, n))
    }
}
