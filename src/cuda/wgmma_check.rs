//! The launcher of the wgmma check kernels (wgmma_check.cu: C = A B in bf16 -> f32 on Hopper's warpgroup product,
//! compiled for sm_90a): the one place that knows their grid. Not used in training; tests/kernels_wgmma.rs runs it on
//! the GPU against a CPU reference, which validates on the hardware what the kernel lab (dev/cuda/check_wgmma.cpp)
//! checks under emulation (descriptors, swizzle modes, operand majors, A from registers, the accumulator layout).
//!
//! ```text
//! let wg = WgmmaCheck::new(&stream)?;                 // errors on a GPU other than compute capability 9.0
//! unsafe { wg.gemm(Variant::SsKk128, Swizzle::B128, a, b, c, GemmShape { m, n, k }, 0)? };
//! ```
//! Layouts (row-major, by the variant's majors): A K-major `a[m * K + k]`, A M-major `a[k * M + m]`; B K-major
//! `b[n * K + k]` (C = A B^T), B N-major `b[k * N + n]`; C `c[m * N + n]` f32, every element written.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, PushKernelArg};
use candle_core::{Error, Result};
use half::bf16;

use super::devptr::DevPtr;
use super::launch::{cfg, go, int, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/wgmma_check.ptx"));

/// One compiled kernel: where A comes from (shared memory or registers), the operands' majors, and N per warpgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    SsKk64,
    SsKk128,
    SsKk256,
    SsMn64,
    SsMn128,
    RsKn64,
    RsKk128,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::SsKk64,
        Variant::SsKk128,
        Variant::SsKk256,
        Variant::SsMn64,
        Variant::SsMn128,
        Variant::RsKn64,
        Variant::RsKk128,
    ];

    /// The kernel's name in wgmma_check.cu.
    pub fn kernel(self) -> &'static str {
        match self {
            Variant::SsKk64 => "wgc_ss_kk_n64",
            Variant::SsKk128 => "wgc_ss_kk_n128",
            Variant::SsKk256 => "wgc_ss_kk_n256",
            Variant::SsMn64 => "wgc_ss_mn_n64",
            Variant::SsMn128 => "wgc_ss_mn_n128",
            Variant::RsKn64 => "wgc_rs_kn_n64",
            Variant::RsKk128 => "wgc_rs_kk_n128",
        }
    }

    /// Columns of C per warpgroup (the N of its m64nNk16 products).
    pub fn block_n(self) -> usize {
        match self {
            Variant::SsKk64 | Variant::SsMn64 | Variant::RsKn64 => 64,
            Variant::SsKk128 | Variant::SsMn128 | Variant::RsKk128 => 128,
            Variant::SsKk256 => 256,
        }
    }

    /// Whether A is stored M-major (K x M).
    pub fn a_m_major(self) -> bool {
        matches!(self, Variant::SsMn64 | Variant::SsMn128)
    }

    /// Whether B is stored N-major (K x N); otherwise K-major (N x K).
    pub fn b_n_major(self) -> bool {
        matches!(self, Variant::SsMn64 | Variant::SsMn128 | Variant::RsKn64)
    }
}

/// The shared-memory layout of the staged tiles (wgmma.cuh section 3): the descriptors' swizzle mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swizzle {
    None,
    B128,
}

/// C (m x n) = A (m x k) B (k x n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

pub struct WgmmaCheck {
    module: Module,
}

impl WgmmaCheck {
    /// Loads the kernels; an error on a GPU whose compute capability is not 9.0 (the PTX targets sm_90a).
    pub fn new(stream: &Arc<CudaStream>) -> Result<WgmmaCheck> {
        let cc = stream.context().compute_capability().map_err(|e| Error::Msg(format!("wgmma_check: {e:?}")))?;
        if cc != (9, 0) {
            candle_core::bail!(
                "wgmma_check: the kernels need an sm_90 GPU (H100/H200), this one is sm_{}{}",
                cc.0,
                cc.1
            );
        }
        let names: Vec<&str> = Variant::ALL.iter().map(|v| v.kernel()).collect();
        Ok(WgmmaCheck { module: Module::load(stream, "wgmma_check.cu", PTX, &names)? })
    }

    /// C = A B with variant `v`, the staged tiles in `swizzle`'s layout; `b_desc_xor` is XORed into every B
    /// descriptor (0; a check passes a wrong field and expects a wrong C).
    ///
    /// # Safety
    /// `a` holds m * k bf16, `b` k * n bf16, `c` m * n f32, on the stream's device.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        v: Variant,
        swizzle: Swizzle,
        a: DevPtr<bf16>,
        b: DevPtr<bf16>,
        c: DevPtr<f32>,
        s: GemmShape,
        b_desc_xor: u64,
    ) -> Result<()> {
        if s.m == 0 || s.n == 0 || !s.k.is_multiple_of(8) || s.k == 0 {
            candle_core::bail!("wgmma_check: {s:?} needs m, n > 0 and k a positive multiple of 8");
        }
        if (v.a_m_major() && !s.m.is_multiple_of(8)) || (v.b_n_major() && !s.n.is_multiple_of(8)) {
            candle_core::bail!(
                "wgmma_check: {v:?} stores an operand MN-major: {s:?} needs its m (A) / n (B) a multiple of 8"
            );
        }
        if !a.raw().is_multiple_of(16) || !b.raw().is_multiple_of(16) || !c.raw().is_multiple_of(4) {
            candle_core::bail!("wgmma_check: a and b must be 16-byte aligned, c 4-byte aligned");
        }
        let grid_n =
            u32::try_from(s.n.div_ceil(v.block_n())).map_err(|_| Error::Msg(format!("wgmma_check: n = {}", s.n)))?;
        let grid_m = s.m.div_ceil(64);
        if grid_m > 65535 {
            candle_core::bail!("wgmma_check: m = {} needs more than 65535 blocks in y", s.m);
        }
        let (m, n, k) = (int(s.m, "m")?, int(s.n, "n")?, int(s.k, "k")?);
        let sw: i32 = match swizzle {
            Swizzle::None => 0,
            Swizzle::B128 => 1,
        };
        let mut args = self.module.args(v.kernel())?;
        args.arg(&a).arg(&b).arg(&c).arg(&m).arg(&n).arg(&k).arg(&sw).arg(&b_desc_xor);
        go(args, cfg((grid_n, grid_m as u32), (128, 1)))
    }
}
