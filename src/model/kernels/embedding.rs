//! Embedding lookup `table (V, C)`, `ids (N)` u32 -> `(N, C)`, whose backward on CUDA is a grouped, deterministic
//! sum (`embedding_bwd_sorted_f32` in `src/cuda/encoder.cu`, the engine's wte backward with `=` for `+=`) instead of
//! candle's `index_add`, which walks all N ids serially per column (the cost is in encoder.cu's header). Forward is
//! candle's own `index_select` on the storages.
//!
//! Backward returns `dtable (V, C)` in the table's dtype: on CPU candle's `index_add` (the reference); on CUDA, for
//! an f32 table (the models' fp32 master `wte`), the rows are grouped by id on the host (`IdGroups`) and summed per
//! group in ascending row order, which is the CPU's order: the two agree bit for bit and runs repeat exactly.
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

/// The rows of `ids` grouped by id, for the CUDA backwards (this op's and the GPT-2 engine's `cuda::encoder`): a
/// stable counting sort, so every group lists its rows in ascending order. Only ids that occur get a group.
#[derive(Debug, PartialEq)]
pub struct IdGroups {
    /// Row indices, group after group.
    pub rows: Vec<u32>,
    /// `start[g]..start[g + 1]` is group g's range in `rows` (len groups + 1).
    pub start: Vec<u32>,
    /// The id of each group, ascending.
    pub id: Vec<u32>,
}

impl IdGroups {
    /// Group `ids`; an id `>= v` is an error naming its position.
    pub fn new(ids: &[u32], v: usize) -> Result<IdGroups> {
        if ids.len() > u32::MAX as usize {
            candle_core::bail!("embedding backward: {} ids do not fit u32 row indices", ids.len());
        }
        let mut count = vec![0u32; v];
        for (r, &id) in ids.iter().enumerate() {
            let Some(c) = count.get_mut(id as usize) else {
                candle_core::bail!("embedding backward: id {id} at row {r} is out of range for a table of {v} rows")
            };
            *c += 1;
        }
        let (mut start, mut id) = (vec![0u32], Vec::new());
        // `count` becomes each id's next write position in `rows`.
        let mut next = 0u32;
        for (i, c) in count.iter_mut().enumerate() {
            if *c > 0 {
                id.push(i as u32);
                let n = *c;
                *c = next;
                next += n;
                start.push(next);
            }
        }
        let mut rows = vec![0u32; ids.len()];
        for (r, &i) in ids.iter().enumerate() {
            let pos = &mut count[i as usize];
            rows[*pos as usize] = r as u32;
            *pos += 1;
        }
        Ok(IdGroups { rows, start, id })
    }
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
    //! Launcher for embedding_bwd_sorted_f32 in encoder.cu (the grouped sum the engine's wte backward runs too).
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape};

    use super::IdGroups;
    use crate::cuda::launch::{grid_1d, Module};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/encoder.ptx"));
    const FILE: &str = "encoder.cu";
    /// EMB_THREADS in encoder.cu.
    const THREADS: u32 = 256;

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
            let out = dev.alloc_zeros::<f32>(self.v * c)?;
            if n == 0 || c == 0 {
                return Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.v, c))));
            }
            // The grouping needs the ids on the host: one 4N-byte copy and a wait for the stream. The embedding's
            // backward is the last of the backward pass, so little queued work is lost to that wait.
            let ids = dev.clone_dtoh(&i.as_cuda_slice::<u32>()?.slice(istart..iend))?;
            let groups = IdGroups::new(&ids, self.v)?;
            let packed: Vec<u32> = [&groups.rows[..], &groups.start[..], &groups.id[..]].concat();
            let packed = dev.clone_htod(&packed)?;
            let ngroups = groups.id.len();
            let rows = packed.slice(..n);
            let start = packed.slice(n..n + ngroups + 1);
            let id = packed.slice(n + ngroups + 1..);
            let dy = g.as_cuda_slice::<f32>()?.slice(gstart..);
            let func = Module::on_device(dev, FILE, PTX)?.kernel("embedding_bwd_sorted_f32")?;
            let mut b = func.builder();
            let (c64, stride) = (c as i64, c as i64);
            b.arg(&rows).arg(&start).arg(&id).arg(&dy).arg(&out).arg(&c64).arg(&stride);
            let mut cfg = grid_1d(ngroups, THREADS)?;
            // column slices of THREADS
            cfg.grid_dim.1 = c.div_ceil(THREADS as usize) as u32;
            // SAFETY: argument types and order match embedding_bwd_sorted_f32; every row index is < N, every group
            // id < V (IdGroups checks), and `out` holds V * C f32.
            unsafe { b.launch(cfg) }.w()?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.v, c))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdGroups;

    #[test]
    fn groups_are_stable_and_ascending() {
        let g = IdGroups::new(&[3, 1, 3, 0, 1, 3], 5).unwrap();
        assert_eq!(g.id, vec![0, 1, 3]);
        assert_eq!(g.start, vec![0, 1, 3, 6]);
        assert_eq!(g.rows, vec![3, 1, 4, 0, 2, 5]);
        assert_eq!(IdGroups::new(&[], 4).unwrap(), IdGroups { rows: vec![], start: vec![0], id: vec![] });
        let e = IdGroups::new(&[0, 7], 5).unwrap_err().to_string();
        assert!(e.contains("id 7 at row 1"), "{e}");
    }
}
