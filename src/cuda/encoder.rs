//! The embeddings (encoder.cu), the one launcher of its kernels: the decoder engine's `x = wte[idx] (+ wpe[t])` into
//! the f32 residual stream and its deterministic backward (`dwte +=` grouped sums over the host-built [`IdGroups`],
//! `dwpe +=` batch sums; rotary models pass no position table), and the candle embedding op's backward (the same
//! grouped sum with `=`, [`Encoder::grouped_sum`]). [`IdGroups`] is host code (CPU-tested); the launcher needs CUDA.
//! CPU checks: dev/cuda/check_engine.cpp and check.cpp.

use candle_core::Result;

/// The rows of `ids` grouped by id, for the CUDA backwards of the embeddings (the engine's wte backward and the candle op's, `model::kernels::embedding`): a
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

#[cfg(feature = "cuda")]
mod kernels {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
    use candle_core::Result;

    use super::super::devptr::DevPtr;
    use super::super::launch::{blocks, cfg, go, int, Module};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/encoder.ptx"));
    /// EMB_THREADS in encoder.cu (the grouped sums' block: one thread per column of a 256-column slice).
    const EMB_THREADS: u32 = 256;

    /// A batch's `IdGroups` on the device: `rows` (N u32), `start`, `id`, and how many groups there are.
    #[derive(Clone, Copy, Debug)]
    pub struct DeviceIdGroups {
        pub rows: DevPtr<u32>,
        pub start: DevPtr<u32>,
        pub id: DevPtr<u32>,
        pub n_groups: usize,
    }

    pub struct Encoder {
        module: Module,
    }

    impl Encoder {
        pub fn new(stream: &Arc<CudaStream>) -> Result<Encoder> {
            let names =
                ["encoder_fwd", "encoder_fwd_tokens", "encoder_bwd_wte", "encoder_bwd_wpe", "embedding_bwd_sorted_f32"];
            Ok(Encoder { module: Module::load(stream, "encoder.cu", PTX, &names)? })
        }

        /// `x (B*T, C) = wte[idx] + wpe[t]`, or `wte[idx]` without a position table.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes; ids < V; C a multiple of 4, rows 16-byte aligned.
        pub unsafe fn forward(
            &self,
            idx: DevPtr<u32>,
            wte: DevPtr<f32>,
            wpe: Option<DevPtr<f32>>,
            x: DevPtr<f32>,
            (b, t, c): (usize, usize, usize),
        ) -> Result<()> {
            let n = b * t;
            let (n_i, t_i, c_i) = (int(n, "tokens")?, int(t, "T")?, int(c, "C")?);
            let grid = cfg((blocks(n * c / 4, 256)?, 1), (256, 1));
            let Some(wpe) = wpe else {
                let mut a = self.module.args("encoder_fwd_tokens")?;
                a.arg(&idx).arg(&wte).arg(&x).arg(&n_i).arg(&c_i);
                return go(a, grid);
            };
            let mut a = self.module.args("encoder_fwd")?;
            a.arg(&idx).arg(&wte).arg(&wpe).arg(&x).arg(&n_i).arg(&t_i).arg(&c_i);
            go(a, grid)
        }

        /// `dtable[id] = sum of dy[r] over the rows r of id's group` (row order): the candle op's backward into a
        /// zeroed `dtable (V, C)`, from `dy (N, C)`.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes, the groups those of the ids of dy's rows (ids < V).
        pub unsafe fn grouped_sum(
            &self,
            groups: DeviceIdGroups,
            dy: DevPtr<f32>,
            dtable: DevPtr<f32>,
            c: usize,
        ) -> Result<()> {
            let DeviceIdGroups { rows, start, id, n_groups } = groups;
            if n_groups == 0 {
                return Ok(());
            }
            let g = u32::try_from(n_groups).map_err(|_| candle_core::Error::Msg("too many id groups".into()))?;
            let (c64, stride) = (c as i64, c as i64);
            let mut a = self.module.args("embedding_bwd_sorted_f32")?;
            a.arg(&rows).arg(&start).arg(&id).arg(&dy).arg(&dtable).arg(&c64).arg(&stride);
            go(a, cfg((g, blocks(c, EMB_THREADS as usize)?), (EMB_THREADS, 1)))
        }

        /// `dwte[id] += grouped sums of dx`, `dwpe[t] += sum_b dx[b, t]` (with a position table). `groups` on the
        /// device as `IdGroups` lays them out.
        ///
        /// # Safety
        /// Pointers address device buffers of the stated sizes, the groups those of this batch's ids.
        pub unsafe fn backward(
            &self,
            groups: DeviceIdGroups,
            dx: DevPtr<f32>,
            dwte: DevPtr<f32>,
            dwpe: Option<DevPtr<f32>>,
            (b, t, c): (usize, usize, usize),
        ) -> Result<()> {
            let DeviceIdGroups { rows, start, id, n_groups } = groups;
            let (b_i, t_i, c_i) = (int(b, "B")?, int(t, "T")?, int(c, "C")?);
            if n_groups > 0 {
                let g = u32::try_from(n_groups).map_err(|_| candle_core::Error::Msg("too many id groups".into()))?;
                let mut a = self.module.args("encoder_bwd_wte")?;
                a.arg(&rows).arg(&start).arg(&id).arg(&dx).arg(&dwte).arg(&c_i);
                go(a, cfg((g, blocks(c, EMB_THREADS as usize)?), (EMB_THREADS, 1)))?;
            }
            let Some(dwpe) = dwpe else { return Ok(()) };
            let mut a = self.module.args("encoder_bwd_wpe")?;
            a.arg(&dx).arg(&dwpe).arg(&b_i).arg(&t_i).arg(&c_i);
            go(a, cfg((blocks(t * c, 256)?, 1), (256, 1)))
        }
    }
}
#[cfg(feature = "cuda")]
pub use kernels::*;

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
