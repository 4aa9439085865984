//! Embedding lookup `table (V, C)`, `ids (N)` u32 -> `(N, C)`, whose backward on CUDA is a grouped, deterministic
//! sum (`embedding_bwd_sorted_f32` in `src/cuda/encoder.cu`, the engine's wte backward with `=` for `+=`, launched by
//! `cuda::encoder::Encoder::grouped_sum`) instead of
//! candle's `index_add`, which walks all N ids serially per column (the cost is in encoder.cu's header). Forward is
//! candle's own `index_select` on the storages.
//!
//! Backward returns `dtable (V, C)` in the table's dtype: on CPU candle's `index_add` (the reference); on CUDA, for
//! an f32 table (the models' fp32 master `wte`), the rows are grouped by id on the host (`IdGroups`) and summed per
//! group in ascending row order, which is the CPU's order: the two agree bit for bit and runs repeat exactly.
//! Other dtypes on CUDA fall back to `index_add`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

pub use crate::cuda::encoder::IdGroups;

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

    fn bwd(
        &self,
        _table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(embedding_backward(dy, ids, self.v)?), None))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The op's storages over `crate::cuda::encoder::Encoder::grouped_sum` (encoder.cu's grouped sum, the engine's
    //! wte backward with `=` for `+=`; that launcher owns its grid).
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape};

    use super::IdGroups;
    use crate::cuda::devptr::DevPtr;
    use crate::cuda::encoder::{DeviceIdGroups, Encoder};
    use crate::cuda::launch::per_device;

    /// `(dy (N, C) f32, ids (N) u32)` -> `(V, C)` f32 with `dtable[id] = sum of dy[r] over ids[r] == id`.
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
            let (Some((gstart, _)), Some((istart, iend))) = (gl.contiguous_offsets(), il.contiguous_offsets()) else {
                candle_core::bail!("embedding-scatter-add: dy and ids must be contiguous")
            };
            if g.dtype() != DType::F32 || i.dtype() != DType::U32 {
                candle_core::bail!(
                    "embedding-scatter-add: expected f32 dy and u32 ids, got {:?}, {:?}",
                    g.dtype(),
                    i.dtype()
                );
            }
            let dev = g.device();
            let stream = dev.cuda_stream();
            let mut out = dev.alloc_zeros::<f32>(self.v * c)?;
            if n == 0 || c == 0 {
                return Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.v, c))));
            }
            // The grouping needs the ids on the host: one 4N-byte copy and a wait for the stream. The embedding's
            // backward is the last of the backward pass, so little queued work is lost to that wait.
            let ids = dev.clone_dtoh(&i.as_cuda_slice::<u32>()?.slice(istart..iend))?;
            let groups = IdGroups::new(&ids, self.v)?;
            let packed: Vec<u32> = [&groups.rows[..], &groups.start[..], &groups.id[..]].concat();
            let packed = dev.clone_htod(&packed)?;
            let n_groups = groups.id.len();
            let dy = g.as_cuda_slice::<f32>()?.slice(gstart..);
            {
                let (base, _p) = DevPtr::<u32>::of(&packed, &stream);
                let groups =
                    DeviceIdGroups { rows: base, start: base.offset(n), id: base.offset(n + n_groups + 1), n_groups };
                let (dy, _g) = DevPtr::of(&dy, &stream);
                let (outp, _o) = DevPtr::of_mut(&mut out, &stream);
                let k = per_device(dev, "encoder.cu", Encoder::new)?;
                // SAFETY: every row index is < N, every group id < V (IdGroups checks); dy holds N * C f32 from its
                // start, `out` V * C f32; one stream.
                unsafe { k.grouped_sum(groups, dy, outp, c)? };
            }
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.v, c))))
        }
    }
}
