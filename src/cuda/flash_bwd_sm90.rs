//! The causal attention backward on Hopper's warpgroup product (flash_bwd_sm90.cu, compiled for sm_90a): a dQ kernel
//! (which also writes D = rowsum(dy * y) into the scratch) and a dK/dV kernel, with the same arguments, layout and
//! inputs as [`super::flash_attn::FlashAttn`]'s two backward kernels, each usable in place of its counterpart. bf16, head size 64,
//! deterministic. Not the engine's default: the attention benchmark times it beside the mma.sync kernels
//! (`bench attention`, rows "sm90 bwd ..."), tests/kernels_wgmma.rs checks it against them on the GPU, the kernel lab
//! on the CPU.
//!
//! ```text
//! let sm90 = FlashBwdSm90::new(&stream, Sm90Variant::Wg1)?;  // errors on a GPU other than compute capability 9.0
//! unsafe { sm90.backward(bwd, b, t, heads)? };                // dQ (and D), then dK/dV: FlashAttn::backward's buffers
//! ```

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use candle_core::{Error, Result};
use half::bf16;

use super::flash_attn::{check_align, check_dims, scale, tile_grid, AttnBwd, AttnLayout, Dims, Heads, HEAD_SIZE};
use super::launch::{go, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_bwd_sm90.ptx"));

/// Blocks per head group, as [`super::flash_attn::Variant::DEFAULT`]'s: the K/V of the heads in flight stay in L2.
const GROUP_BLOCKS: usize = 512;

/// A compiled launch of the kernels: warpgroups (of 64 keys or queries each) per block, and the register cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sm90Variant {
    /// One warpgroup, 64 keys (queries) per block, registers left to the compiler.
    Wg1,
    /// One warpgroup, at least 3 blocks per SM (registers capped at 168).
    Wg1B3,
    /// Two warpgroups, 128 keys (queries) per block (each streamed tile loaded once for both).
    Wg2,
    /// One warpgroup whose loop issues the next tile's S, dP products right behind this tile's last products.
    Wg1Pipe,
    /// Warp-specialised dK/dV and dQ (a producer warpgroup streaming the query, or key/value, tiles through 2 stages
    /// guarded by mbarriers; two consumer warpgroups of 64 keys, or queries, taking turns on the tensor cores; dynamic
    /// shared memory past 48 KiB).
    Ws2,
    /// As `Ws2` with 4 stages.
    Ws4,
}

/// FS_WS_THREADS in flash_bwd_sm90.cu: two consumer warpgroups and the producer warpgroup.
const WS_THREADS: u32 = 384;

impl Sm90Variant {
    pub const ALL: [Sm90Variant; 6] = [
        Sm90Variant::Wg1,
        Sm90Variant::Wg1B3,
        Sm90Variant::Wg2,
        Sm90Variant::Wg1Pipe,
        Sm90Variant::Ws2,
        Sm90Variant::Ws4,
    ];

    /// The kernels' name suffix in flash_bwd_sm90.cu (`flash_dq_sm90_*`, `flash_dkdv_sm90_*`).
    fn suffix(self) -> &'static str {
        match self {
            Sm90Variant::Wg1 => "wg1",
            Sm90Variant::Wg1B3 => "wg1b3",
            Sm90Variant::Wg2 => "wg2",
            Sm90Variant::Wg1Pipe => "wg1p",
            Sm90Variant::Ws2 => "ws2",
            Sm90Variant::Ws4 => "ws4",
        }
    }

    /// Rows (keys for dK/dV, queries for dQ) per block, threads per block and bytes of dynamic shared memory of one
    /// pass.
    fn pass_shape(self, dkdv: bool) -> (usize, u32, usize) {
        match (self, dkdv) {
            (Sm90Variant::Wg2, _) => (128, 256, 0),
            (Sm90Variant::Ws2, true) => (128, WS_THREADS, ws_smem(2)),
            (Sm90Variant::Ws4, true) => (128, WS_THREADS, ws_smem(4)),
            (Sm90Variant::Ws2, false) => (128, WS_THREADS, ws_dq_smem(2)),
            (Sm90Variant::Ws4, false) => (128, WS_THREADS, ws_dq_smem(4)),
            _ => (64, 128, 0),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sm90Variant::Wg1 => "sm90 bwd wg1",
            Sm90Variant::Wg1B3 => "sm90 bwd wg1b3",
            Sm90Variant::Wg2 => "sm90 bwd wg2",
            Sm90Variant::Wg1Pipe => "sm90 bwd wg1p",
            Sm90Variant::Ws2 => "sm90 bwd ws2",
            Sm90Variant::Ws4 => "sm90 bwd ws4",
        }
    }
}

/// fs_ws_smem(stages) in flash_bwd_sm90.cu: the K and V blocks and the stages' Q and dY tiles (bf16), their lse and D
/// (f32), the mbarriers.
fn ws_smem(stages: usize) -> usize {
    2 * 128 * HEAD_SIZE * 2 + stages * 2 * 64 * HEAD_SIZE * 2 + stages * 2 * 64 * 4 + stages * 2 * 8
}

/// fs_dq_ws_smem(stages) in flash_bwd_sm90.cu: the Q and dY blocks, the stages' K and V tiles (bf16), the mbarriers.
fn ws_dq_smem(stages: usize) -> usize {
    2 * 128 * HEAD_SIZE * 2 + stages * 2 * 64 * HEAD_SIZE * 2 + stages * 2 * 8
}

/// The kernels loaded for one stream; launches go on that stream.
pub struct FlashBwdSm90 {
    module: Module,
    variant: Sm90Variant,
    dq: String,
    dkdv: String,
}

impl FlashBwdSm90 {
    /// Whether `stream`'s GPU runs sm_90a code (compute capability 9.0: H100, H200).
    pub fn supported(stream: &Arc<CudaStream>) -> Result<bool> {
        let cc = stream.context().compute_capability().map_err(|e| Error::Msg(format!("flash_bwd_sm90: {e:?}")))?;
        Ok(cc == (9, 0))
    }

    /// Loads the kernels; an error on a GPU whose compute capability is not 9.0 (the PTX is never loaded there).
    pub fn new(stream: &Arc<CudaStream>, variant: Sm90Variant) -> Result<FlashBwdSm90> {
        if !FlashBwdSm90::supported(stream)? {
            candle_core::bail!("flash_bwd_sm90: the kernels need an sm_90 GPU (H100/H200)");
        }
        let sfx = variant.suffix();
        let (dq, dkdv) = (format!("flash_dq_sm90_{sfx}"), format!("flash_dkdv_sm90_{sfx}"));
        let module = Module::load(stream, "flash_bwd_sm90.cu", PTX, &[&dq, &dkdv])?;
        for (kernel, dkdv_pass) in [(&dq, false), (&dkdv, true)] {
            let (_, _, smem) = variant.pass_shape(dkdv_pass);
            if smem > 48 * 1024 {
                module.allow_dynamic_smem(kernel, smem)?;
            }
        }
        Ok(FlashBwdSm90 { module, variant, dq, dkdv })
    }

    pub fn variant(&self) -> Sm90Variant {
        self.variant
    }

    /// The whole backward, in `FlashAttn::backward`'s buffers: dQ (and D into the scratch), then dK/dV.
    ///
    /// # Safety
    /// As [`super::flash_attn::FlashAttn::backward_with`].
    pub unsafe fn backward(&self, p: AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let d = self.check(&p, b, t, heads)?;
        unsafe {
            self.launch(&p, d, false)?;
            self.launch(&p, d, true)
        }
    }

    /// The dQ pass alone (dq of `p.dqkv`, and D into `p.dvec_scratch`).
    ///
    /// # Safety
    /// As [`super::flash_attn::FlashAttn::backward_with`].
    pub unsafe fn dq(&self, p: &AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let d = self.check(p, b, t, heads)?;
        unsafe { self.launch(p, d, false) }
    }

    /// The dK/dV pass alone (dk and dv of `p.dqkv`); `p.dvec_scratch` holds D from a dQ pass (this one's or
    /// `FlashAttn`'s) over the same inputs.
    ///
    /// # Safety
    /// As [`super::flash_attn::FlashAttn::backward_with`], with the scratch written by a dQ pass on these inputs.
    pub unsafe fn dkdv(&self, p: &AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let d = self.check(p, b, t, heads)?;
        unsafe { self.launch(p, d, true) }
    }

    fn check(&self, p: &AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<Dims> {
        let d = check_dims(b, t, heads, HEAD_SIZE)?;
        check_align(&[
            ("qkv", p.qkv.raw(), 16),
            ("y", p.y.raw(), 16),
            ("dy", p.dy.raw(), 16),
            ("dqkv", p.dqkv.raw(), 16),
            ("lse", p.lse.raw(), 4),
            ("dvec_scratch", p.dvec_scratch.raw(), 4),
        ])?;
        Ok(d)
    }

    /// One pass over the fused buffers: dK/dV (`dkdv`) or dQ with D.
    unsafe fn launch(&self, p: &AttnBwd<bf16>, d: Dims, dkdv: bool) -> Result<()> {
        let heads = Heads { q: d.nh, kv: d.nkv };
        let layout = AttnLayout::fused(d.t, heads, HEAD_SIZE);
        let (rows, threads, smem) = self.variant.pass_shape(dkdv);
        // dK/dV: a row of blocks per (batch, key/value head); dQ: per (batch, query head).
        let n_bh = d.b * if dkdv { d.nkv } else { d.nh };
        let cfg = LaunchConfig { shared_mem_bytes: smem as u32, ..tile_grid(n_bh, d.t, rows, threads)? };
        let group = GROUP_BLOCKS.div_ceil(d.t.div_ceil(rows)).clamp(1, n_bh) as i32;
        let (c, kw) = (d.nh * HEAD_SIZE, d.nkv * HEAD_SIZE);
        let (q, k, v) = (p.qkv, p.qkv.offset(c), p.qkv.offset(c + kw));
        let (dq, dk, dv) = (p.dqkv, p.dqkv.offset(c), p.dqkv.offset(c + kw));
        let (nh, nkv, t, sc) = (d.nh as i32, d.nkv as i32, d.t as i32, scale());
        let mut a = self.module.args(if dkdv { &self.dkdv } else { &self.dq })?;
        if dkdv {
            a.arg(&q).arg(&k).arg(&v).arg(&p.dy).arg(&p.lse).arg(&p.dvec_scratch).arg(&dk).arg(&dv);
        } else {
            a.arg(&q).arg(&k).arg(&v).arg(&p.y).arg(&p.dy).arg(&p.lse).arg(&p.dvec_scratch).arg(&dq);
        }
        a.arg(&layout).arg(&nh).arg(&nkv).arg(&t).arg(&sc).arg(&group);
        // SAFETY: flash_dkdv_sm90_*(const bf16* q, k, v, dy, const float* lse, dvec, bf16* dk, dv, Fa2Layout L, int nh,
        // int nkv, int t_len, float scale, int group) and flash_dq_sm90_*(const bf16* q, k, v, y, dy, const float* lse,
        // float* dvec, bf16* dq, Fa2Layout L, ...the same scalars); the caller vouches for the buffers (backward's
        // contract); one row of ceil(T / rows) blocks per (batch, head) of the pass.
        unsafe { go(a, cfg) }
    }
}
