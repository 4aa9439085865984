//! The dK/dV pass of the causal attention backward on Hopper's warpgroup product (flash_dkdv_sm90.cu, compiled for
//! sm_90a): the same arguments, layout and inputs as [`FlashAttn`]'s dK/dV kernel, whose place it can take after
//! [`FlashAttn`]'s dQ kernel (which writes D = rowsum(dy * y) into the scratch). bf16, head size 64, deterministic.
//! Not the engine's default: the attention benchmark times it beside the mma.sync kernels (`bench attention`, rows
//! "sm90 dkdv ..."), tests/kernels_wgmma.rs checks it against them on the GPU, the kernel lab on the CPU.
//!
//! ```text
//! let fa = FlashAttn::new(&stream)?;
//! let sm90 = FlashDkdvSm90::new(&stream, Sm90Variant::Wg1)?;  // errors on a GPU other than compute capability 9.0
//! unsafe { sm90.backward(&fa, bwd, b, t, heads)? };           // fa's dQ pass, then this dK/dV pass
//! ```

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, PushKernelArg};
use candle_core::{Error, Result};
use half::bf16;

use super::flash_attn::{
    check_align, check_dims, scale, tile_grid, AttnBwd, AttnLayout, Dims, FlashAttn, Heads, HEAD_SIZE,
};
use super::launch::Module;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_dkdv_sm90.ptx"));

/// Blocks per head group, as [`super::flash_attn::Variant::DEFAULT`]'s: the K/V of the heads in flight stay in L2.
const GROUP_BLOCKS: usize = 512;

/// A compiled launch of the kernel: warpgroups (of 64 keys each) per block, and the register cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sm90Variant {
    /// One warpgroup, 64 keys per block, registers left to the compiler.
    Wg1,
    /// One warpgroup, at least 3 blocks per SM (registers capped at 168).
    Wg1B3,
    /// Two warpgroups, 128 keys per block (each Q / dY tile loaded once for both).
    Wg2,
}

impl Sm90Variant {
    pub const ALL: [Sm90Variant; 3] = [Sm90Variant::Wg1, Sm90Variant::Wg1B3, Sm90Variant::Wg2];

    fn kernel(self) -> &'static str {
        match self {
            Sm90Variant::Wg1 => "flash_dkdv_sm90_wg1",
            Sm90Variant::Wg1B3 => "flash_dkdv_sm90_wg1b3",
            Sm90Variant::Wg2 => "flash_dkdv_sm90_wg2",
        }
    }

    fn warpgroups(self) -> usize {
        match self {
            Sm90Variant::Wg1 | Sm90Variant::Wg1B3 => 1,
            Sm90Variant::Wg2 => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sm90Variant::Wg1 => "sm90 dkdv wg1",
            Sm90Variant::Wg1B3 => "sm90 dkdv wg1b3",
            Sm90Variant::Wg2 => "sm90 dkdv wg2",
        }
    }
}

/// The kernel loaded for one stream; launches go on that stream.
pub struct FlashDkdvSm90 {
    stream: Arc<CudaStream>,
    variant: Sm90Variant,
    func: CudaFunction,
}

impl FlashDkdvSm90 {
    /// Whether `stream`'s GPU runs sm_90a code (compute capability 9.0: H100, H200).
    pub fn supported(stream: &Arc<CudaStream>) -> Result<bool> {
        let cc = stream.context().compute_capability().map_err(|e| Error::Msg(format!("flash_dkdv_sm90: {e:?}")))?;
        Ok(cc == (9, 0))
    }

    /// Loads the kernel; an error on a GPU whose compute capability is not 9.0 (the PTX is never loaded there).
    pub fn new(stream: &Arc<CudaStream>, variant: Sm90Variant) -> Result<FlashDkdvSm90> {
        if !FlashDkdvSm90::supported(stream)? {
            candle_core::bail!("flash_dkdv_sm90: the kernel needs an sm_90 GPU (H100/H200)");
        }
        let module = Module::load(stream, "flash_dkdv_sm90.cu", PTX, &[])?;
        Ok(FlashDkdvSm90 { stream: stream.clone(), variant, func: module.function(variant.kernel())? })
    }

    pub fn variant(&self) -> Sm90Variant {
        self.variant
    }

    /// The whole backward: `fa`'s dQ pass (dq and D into the scratch), then this dK/dV pass.
    ///
    /// # Safety
    /// As [`FlashAttn::backward_with`]; `fa` runs on this object's stream.
    pub unsafe fn backward(&self, fa: &FlashAttn, p: AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let d = check_dims(b, t, heads, HEAD_SIZE)?;
        check_align(&[("qkv", p.qkv.raw(), 16), ("dqkv", p.dqkv.raw(), 16)])?;
        unsafe {
            fa.launch_dq(&p, d)?;
            self.launch(&p, d)
        }
    }

    /// The dK/dV pass alone (dk and dv of `p.dqkv`); `p.dvec_scratch` holds D from a dQ pass over the same inputs.
    ///
    /// # Safety
    /// As [`FlashAttn::backward_with`], with the scratch written by a dQ pass on these inputs.
    pub unsafe fn dkdv(&self, p: &AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let d = check_dims(b, t, heads, HEAD_SIZE)?;
        check_align(&[
            ("qkv", p.qkv.raw(), 16),
            ("dy", p.dy.raw(), 16),
            ("dqkv", p.dqkv.raw(), 16),
            ("lse", p.lse.raw(), 4),
            ("dvec_scratch", p.dvec_scratch.raw(), 4),
        ])?;
        unsafe { self.launch(p, d) }
    }

    pub(crate) unsafe fn launch(&self, p: &AttnBwd<bf16>, d: Dims) -> Result<()> {
        let heads = Heads { q: d.nh, kv: d.nkv };
        let layout = AttnLayout::fused(d.t, heads, HEAD_SIZE);
        let rows = 64 * self.variant.warpgroups();
        let n_bh = d.b * d.nkv;
        let cfg = tile_grid(n_bh, d.t, rows, 128 * self.variant.warpgroups() as u32)?;
        let group = GROUP_BLOCKS.div_ceil(d.t.div_ceil(rows)).clamp(1, n_bh) as i32;
        let (c, kw) = (d.nh * HEAD_SIZE, d.nkv * HEAD_SIZE);
        let (q, k, v) = (p.qkv, p.qkv.offset(c), p.qkv.offset(c + kw));
        let (dk, dv) = (p.dqkv.offset(c), p.dqkv.offset(c + kw));
        let (nh, nkv, t, sc) = (d.nh as i32, d.nkv as i32, d.t as i32, scale());
        let mut a = self.stream.launch_builder(&self.func);
        a.arg(&q).arg(&k).arg(&v).arg(&p.dy).arg(&p.lse).arg(&p.dvec_scratch).arg(&dk).arg(&dv);
        a.arg(&layout).arg(&nh).arg(&nkv).arg(&t).arg(&sc).arg(&group);
        // SAFETY: flash_dkdv_sm90_*(const bf16* q, k, v, dy, const float* lse, dvec, bf16* dk, dv, Fa2Layout L, int nh,
        // int nkv, int t_len, float scale, int group); the caller vouches for the buffers (backward's contract); one
        // row of ceil(T / rows) blocks per (batch, key/value head).
        unsafe { a.launch(cfg) }.map(|_| ()).map_err(|e| Error::Msg(format!("flash attention sm90 dK/dV pass: {e:?}")))
    }
}
