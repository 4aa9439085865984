//! Embedding lookup `table (V, C)`, `ids (N)` u32 -> `(N, C)`, whose backward on CUDA is a row-parallel scatter-add
//! (`embedding.cu`) instead of candle's `index_add`, which walks all N ids serially per column (measured the cost
//! in the module doc of embedding.cu). Forward is candle's own `index_select` on the storages.
//!
//! Backward returns `dtable (V, C)` in the table's dtype: on CPU candle's `index_add` (deterministic, the
//! reference); on CUDA, for an f32 table (the models' fp32 master `wte`), the atomic kernel, whose summation order
//! for repeated ids varies between runs (last-bit differences, as PyTorch's default embedding backward on GPU).
//! Other dtypes on CUDA fall back to `index_add`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `table[ids]`: `table (V, C)`, `ids (N)` u32 -> `(N, C)` in the table's dtype, with the backward above.
pub fn embedding_lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (v, _) = table.dims2()?;
    if ids.rank() != 1 || ids.dtype() != DType::U32 {
        candle_core::bail!("embedding: ids must be a 1-D u32 tensor, got {:?} {:?}", ids.dtype(), ids.dims());
    }
    table.apply_op2(&ids.contiguous()?, Lookup { v })
}

/// The gradient of `embedding_lookup` with respect to the table: `dtable[ids[r]] += dy[r]`, (V, C).
pub fn embedding_backward(dy: &Tensor, ids: &Tensor, v: usize) -> Result<Tensor> {
    let (_, c) = dy.dims2()?;
    #[cfg(feature = "cuda")]
    if dy.device().is_cuda() && dy.dtype() == DType::F32 {
        return dy.contiguous()?.apply_op2_no_bwd(&ids.contiguous()?, &cuda::ScatterAdd { v });
    }
    Tensor::zeros((v, c), dy.dtype(), dy.device())?.index_add(ids, dy, 0)
}

struct Lookup {
    v: usize,
}

impl CustomOp2 for Lookup {
    fn name(&self) -> &'static str {
        "embedding-lookup"
    }

    fn cpu_fwd(&self, t: &CpuStorage, tl: &Layout, i: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c) = tl.shape().dims2()?;
        let out = t.index_select(i, tl, il, 0)?;
        Ok((out, Shape::from((il.shape().elem_count(), c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        t: &candle_core::CudaStorage,
        tl: &Layout,
        i: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, c) = tl.shape().dims2()?;
        let out = t.index_select(i, tl, il, 0)?;
        Ok((out, Shape::from((il.shape().elem_count(), c))))
    }

    fn bwd(&self, _table: &Tensor, ids: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(embedding_backward(dy, ids, self.v)?), None))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launcher for embedding.cu.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/embedding.ptx"));
    const MODULE: &str = "tokenmill_embedding";
    /// EMB_THREADS in embedding.cu.
    const THREADS: u32 = 256;
    /// Grid-stride cap over rows: ~16 blocks per SM of an H100.
    const MAX_BLOCKS: usize = 2048;

    /// `(dy (N, C) f32, ids (N) u32)` -> zeroed `(V, C)` f32 with `dtable[ids[r]] += dy[r]`.
    pub(super) struct ScatterAdd {
        pub v: usize,
    }

    impl CustomOp2 for ScatterAdd {
        fn name(&self) -> &'static str {
            "embedding-scatter-add"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("embedding-scatter-add runs on CUDA only (CPU uses index_add)")
        }

        fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout, i: &CudaStorage, il: &Layout) -> Result<(CudaStorage, Shape)> {
            let (n, c) = gl.shape().dims2()?;
            let (Some((gstart, _)), Some((istart, _))) = (gl.contiguous_offsets(), il.contiguous_offsets()) else {
                candle_core::bail!("embedding-scatter-add: dy and ids must be contiguous")
            };
            if g.dtype() != DType::F32 || i.dtype() != DType::U32 {
                candle_core::bail!("embedding-scatter-add: expected f32 dy and u32 ids, got {:?}, {:?}", g.dtype(), i.dtype());
            }
            let dev = g.device();
            let out = dev.alloc_zeros::<f32>(self.v * c)?;
            if n > 0 && c > 0 {
                let dy = g.as_cuda_slice::<f32>()?.slice(gstart..);
                let ids = i.as_cuda_slice::<u32>()?.slice(istart..);
                let func = dev.get_or_load_custom_func("embedding_bwd_f32", MODULE, PTX)?;
                let mut b = func.builder();
                let (n64, c64, v64, stride) = (n as i64, c as i64, self.v as i64, c as i64);
                b.arg(&ids).arg(&dy).arg(&out).arg(&n64).arg(&c64).arg(&v64).arg(&stride);
                let cfg = LaunchConfig {
                    grid_dim: (n.min(MAX_BLOCKS) as u32, 1, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: argument types and order match embedding_bwd_f32; `out` holds V * C f32, every id < V is
                // checked in the kernel before it writes.
                unsafe { b.launch(cfg) }.w()?;
            }
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.v, c))))
        }
    }
}
