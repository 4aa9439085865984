//! Causal flash attention (flash_attn.cu: FlashAttention-2 on the tensor cores, bf16 / f16, head size 64, any T,
//! multi-head or grouped-query, deterministic backward), launched with typed device pointers: no candle tensors, no
//! autograd. The kernels read and write every tensor through (batch, head, row) strides, so one set of kernels serves
//! both layouts: the fused qkv projection (the decoder engine, with slices of its own buffers; the candle op
//! `model::kernels::attention::flash_causal_attention_qkv`, a thin adapter) and q, k, v head views `(B, NH, T, HS)`
//! (the candle op `flash_causal_attention` in bf16/f16, through [`FlashAttn::forward_views`] /
//! [`FlashAttn::backward_views`]).
//!
//! # API (stable)
//! ```text
//! let fa = FlashAttn::new(&stream)?;                      // loads the PTX into the stream's context, once
//! let heads = Heads { q: nh, kv: nkv };                   // Heads::mha(nh) without grouping
//! unsafe { fa.forward(AttnFwd { qkv, y, lse }, b, t, heads)? };   // bf16, hs = 64: the decoder engine's calls
//! let scratch = FlashAttn::scratch_len(b, t, nh);         // f32 elements
//! let bwd = AttnBwd { qkv, y, dy, lse, dvec_scratch, dqkv };
//! unsafe { fa.backward(bwd, b, t, heads)? };
//! unsafe { fa.forward_with(AttnFwd { qkv, y, lse }, b, t, heads, hs)? };   // any supported element type / head size
//! unsafe { fa.backward_with(bwd, b, t, heads, hs)? };
//! // Any strides: q, k, v (and dq, dk, dv) as three pointers, every tensor's strides in an `AttnLayout`.
//! unsafe { fa.forward_views(Qkv { q, k, v }, y, lse, &layout, b, t, heads)? };
//! unsafe { fa.backward_views(AttnBwdViews { x, y, dy, lse, dvec_scratch, dx }, &layout, b, t, heads)? };
//! ```
//! Buffers (typed device pointers, `DevPtr<T>` with T = bf16 or f16 (the kernels' `T`, [`AttnElem`]) unless
//! stated; C = nh * hs, KW = nkv * hs; all row-major):
//! - `qkv (B, T, C + 2 KW)`: query head h at columns `h*hs`, key head j at `C + j*hs`, value head j at
//!   `C + KW + j*hs` (GPT-2's c_attn output with KW = C; Llama's q|k|v projections); query head h attends with
//!   key/value head `h / (nh / nkv)`;
//! - `y (B, T, C)`: the output, heads side by side (the output projection's input), written whole by `forward`;
//! - `lse (B, NH, T)` f32: row logsumexp (natural log) of the scaled scores, written by `forward`, read by `backward`;
//! - `dy (B, T, C)`: the gradient of `y`; `dqkv` (qkv's layout): written whole by `backward` (no zeroing needed; it
//!   may not alias `qkv`, `y` or `dy`);
//! - `dvec_scratch`: `scratch_len(b, t, nh)` f32 (D = rowsum(dy * y), written by the dQ kernel and read by the
//!   dK/dV kernel), contents irrelevant on entry.
//!
//! With views, each of q, k, v, y (and dy), dq, dk, dv is `(B, heads, T, hs)` through its own strides
//! ([`AttnLayout`]; the last dim dense), `lse` and the scratch as above; dq, dk, dv are written whole and overlap
//! nothing else.
//!
//! Requirements, checked with an error naming the argument: hs = 64; b, t, nh, nkv > 0 with nkv dividing nh; `qkv`, `y`, `dy`, `dqkv`
//! (with views: every pointer of a head-size tensor and every stride) 16-byte aligned (C is then a multiple of 8, so
//! every row is); `lse` and the scratch 4-byte aligned; grid sizes within CUDA's limits. Launches go on `stream` and return at once; the caller orders them with its other work.
//!
//! Determinism: no atomics anywhere; two runs on the same inputs give the same bytes (dq has its own query-block
//! kernel instead of FlashAttention-2's atomic accumulation).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::{Error, Result};

use super::devptr::DevPtr;
use super::launch::{go, Module};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attn.ptx"));

/// The one head size the kernels are written for (every GPT-2 size uses 64).
pub const HEAD_SIZE: usize = 64;

/// Element type of qkv, y, dy and dqkv (statistics are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bf16,
    F16,
}

/// An element type the kernels are instantiated for: what a `DevPtr<T>` to qkv, y, dy and dqkv may point at.
pub trait AttnElem: Copy {
    const DTYPE: Dtype;
}

impl AttnElem for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

impl AttnElem for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}

/// The buffers of one forward (module doc): `qkv` in, `y` and `lse` out.
#[derive(Clone, Copy, Debug)]
pub struct AttnFwd<T> {
    pub qkv: DevPtr<T>,
    pub y: DevPtr<T>,
    pub lse: DevPtr<f32>,
}

/// The buffers of one backward (module doc): `qkv`, the forward's `y` and `lse`, `dy`, the scratch, and `dqkv`.
#[derive(Clone, Copy, Debug)]
pub struct AttnBwd<T> {
    pub qkv: DevPtr<T>,
    pub y: DevPtr<T>,
    pub dy: DevPtr<T>,
    pub lse: DevPtr<f32>,
    pub dvec_scratch: DevPtr<f32>,
    pub dqkv: DevPtr<T>,
}

/// q, k and v (or their gradients dq, dk, dv): where each starts.
#[derive(Clone, Copy, Debug)]
pub struct Qkv<T> {
    pub q: DevPtr<T>,
    pub k: DevPtr<T>,
    pub v: DevPtr<T>,
}

impl<T> Qkv<T> {
    /// The three parts of a fused projection `(B, T, C + 2 KW)` (module doc).
    pub fn fused(qkv: DevPtr<T>, heads: Heads, hs: usize) -> Qkv<T> {
        let (c, kw) = (heads.q * hs, heads.kv * hs);
        Qkv { q: qkv, k: qkv.offset(c), v: qkv.offset(c + kw) }
    }
}

/// The buffers of one backward through views: the inputs `x`, the forward's `y` and `lse`, `dy` (y's layout), the
/// scratch, and the gradients `dx`.
#[derive(Clone, Copy, Debug)]
pub struct AttnBwdViews<T> {
    pub x: Qkv<T>,
    pub y: DevPtr<T>,
    pub dy: DevPtr<T>,
    pub lse: DevPtr<f32>,
    pub dvec_scratch: DevPtr<f32>,
    pub dx: Qkv<T>,
}

impl<T> AttnBwd<T> {
    /// The buffers of the forward this backward follows.
    pub fn fwd(&self) -> AttnFwd<T> {
        AttnFwd { qkv: self.qkv, y: self.y, lse: self.lse }
    }

    /// The fused buffers as views.
    fn views(&self, heads: Heads, hs: usize) -> AttnBwdViews<T> {
        AttnBwdViews {
            x: Qkv::fused(self.qkv, heads, hs),
            y: self.y,
            dy: self.dy,
            lse: self.lse,
            dvec_scratch: self.dvec_scratch,
            dx: Qkv::fused(self.dqkv, heads, hs),
        }
    }
}

/// Where the heads of one tensor live, in elements: row t of head h of batch b starts at `b * batch + h * head + t *
/// row` (the head-size dim dense). flash_attn.cu's `Fa2Strides`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadStrides {
    pub batch: i64,
    pub head: i64,
    pub row: i64,
}

impl HeadStrides {
    /// A dense `(B, heads, T, hs)` tensor.
    pub fn dense(heads: usize, t: usize, hs: usize) -> HeadStrides {
        HeadStrides { batch: (heads * t * hs) as i64, head: (t * hs) as i64, row: hs as i64 }
    }
}

/// The strides of one call (flash_attn.cu's `Fa2Layout`, passed to the kernels by value): the inputs, the output
/// `y` (and its gradient `dy`), the input gradients.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLayout {
    pub q: HeadStrides,
    pub k: HeadStrides,
    pub v: HeadStrides,
    pub y: HeadStrides,
    pub dq: HeadStrides,
    pub dk: HeadStrides,
    pub dv: HeadStrides,
}

// SAFETY: a #[repr(C)] struct of i64s, laid out as flash_attn.cu's Fa2Layout (seven structs of three int64_t).
unsafe impl DeviceRepr for AttnLayout {}

impl AttnLayout {
    /// The fused projection (module doc): q, k, v and their gradients rows of `C + 2 KW`, y and dy rows of `C`.
    pub fn fused(t: usize, heads: Heads, hs: usize) -> AttnLayout {
        let (c, kw) = (heads.q * hs, heads.kv * hs);
        let ld = (c + 2 * kw) as i64;
        let x = HeadStrides { batch: t as i64 * ld, head: hs as i64, row: ld };
        let y = HeadStrides { batch: (t * c) as i64, head: hs as i64, row: c as i64 };
        AttnLayout { q: x, k: x, v: x, y, dq: x, dk: x, dv: x }
    }

    fn check(&self) -> Result<()> {
        let named = [
            ("q", self.q),
            ("k", self.k),
            ("v", self.v),
            ("y", self.y),
            ("dq", self.dq),
            ("dk", self.dk),
            ("dv", self.dv),
        ];
        for (name, s) in named {
            // 16-byte rows for cp.async and the vector stores: every stride a multiple of 8 two-byte elements.
            if [s.batch, s.head, s.row].iter().any(|&x| x < 0 || x % 8 != 0) {
                return Err(Error::Msg(format!(
                    "flash attention: the strides of {name} ({s:?}) must be non-negative multiples of 8 elements"
                )));
            }
        }
        Ok(())
    }
}

impl Dtype {
    fn suffix(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

/// A launch configuration of the tile kernels (the benchmark times several; [`Variant::DEFAULT`] is what
/// `forward` / `backward` use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Forward: warps per block (4 or 8) and 16-row m-tiles per warp (1, or 2 with 4 warps).
    pub fwd_warps: usize,
    pub fwd_mtiles: usize,
    /// Backward dK/dV and dQ kernels: warps per block (4 or 8), 16 rows each.
    pub bwd_warps: usize,
    /// The `b3` kernels (3 blocks per SM, registers capped at 168) for the 4-warp, 1-m-tile forward and for the
    /// 4-warp dQ and dK/dV kernels.
    pub fwd_b3: bool,
    pub dq_b3: bool,
    pub dkdv_b3: bool,
    /// Blocks per head group: heads are walked in groups of about this many blocks, longest blocks first inside a
    /// group, so that the K/V of the heads in flight stay in L2.
    pub group_blocks: usize,
}

impl Variant {
    /// The fastest launch measured at GPT-2 124M's shape (docs/PERF.md, "Device run 3"): the forward with 32 rows
    /// per warp, dQ capped at 3 blocks per SM (more warps hide its latency, at the cost of a few spilled bytes),
    /// dK/dV left at 2 blocks (capped, it spills more and runs slower).
    pub const DEFAULT: Variant = Variant {
        fwd_warps: 4,
        fwd_mtiles: 2,
        bwd_warps: 4,
        fwd_b3: false,
        dq_b3: true,
        dkdv_b3: false,
        group_blocks: 512,
    };
    /// Every compiled launch variant (flash_attn.cu's FA2_ALL) worth timing, for the benchmark.
    pub const ALL: [Variant; 8] = [
        Variant::DEFAULT,
        Variant { fwd_warps: 8, fwd_mtiles: 1, bwd_warps: 8, dq_b3: false, ..Variant::DEFAULT },
        Variant { fwd_warps: 4, fwd_mtiles: 1, dq_b3: false, ..Variant::DEFAULT },
        Variant { fwd_warps: 4, fwd_mtiles: 1, fwd_b3: true, dkdv_b3: true, ..Variant::DEFAULT },
        Variant { dq_b3: false, ..Variant::DEFAULT },
        Variant { bwd_warps: 8, dq_b3: false, ..Variant::DEFAULT },
        Variant { group_blocks: 128, ..Variant::DEFAULT },
        Variant { group_blocks: 1 << 30, ..Variant::DEFAULT },
    ];

    fn check(&self) -> Result<()> {
        let fwd_ok =
            matches!((self.fwd_warps, self.fwd_mtiles, self.fwd_b3), (4, 1, _) | (4, 2, false) | (8, 1, false));
        let bwd_ok = matches!((self.bwd_warps, self.dq_b3, self.dkdv_b3), (4, _, _) | (8, false, false));
        if !fwd_ok || !bwd_ok || self.group_blocks == 0 {
            return Err(Error::Msg(format!("flash attention: no compiled kernels for {self:?}")));
        }
        Ok(())
    }

    /// Query rows per forward block; key (dK/dV) and query (dQ) rows per backward block.
    fn fwd_rows(&self) -> usize {
        16 * self.fwd_warps * self.fwd_mtiles
    }
    fn bwd_rows(&self) -> usize {
        16 * self.bwd_warps
    }

    /// The kernels' name suffixes (flash_attn.cu's FA2_ALL).
    fn fwd_name(&self) -> String {
        let b3 = if self.fwd_b3 { "b3" } else { "" };
        format!("w{}m{}{b3}", self.fwd_warps, self.fwd_mtiles)
    }
    fn dq_name(&self) -> String {
        format!("w{}{}", self.bwd_warps, if self.dq_b3 { "b3" } else { "" })
    }
    fn dkdv_name(&self) -> String {
        format!("w{}{}", self.bwd_warps, if self.dkdv_b3 { "b3" } else { "" })
    }

    pub fn label(&self) -> String {
        let g = if self.group_blocks >= 1 << 30 { "all".to_string() } else { self.group_blocks.to_string() };
        format!("fwd {} dq {} dkdv {} group {g}", self.fwd_name(), self.dq_name(), self.dkdv_name())
    }
}

/// One dtype's kernel names of one variant.
struct Kernels {
    fwd: String,
    dq: String,
    dkdv: String,
}

/// The flash-attention kernels loaded for one stream (see the module doc); every launch goes on that stream.
pub struct FlashAttn {
    module: Module,
    variant: Variant,
    /// bf16's, then f16's (boxed: the engine keeps this beside cuDNN's attention in one enum).
    names: Box<[Kernels; 2]>,
}

/// Query heads and key/value heads (`kv` divides `q`; equal without grouped-query attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
}

impl Heads {
    /// Multi-head attention: every query head has its own keys and values.
    pub fn mha(nh: usize) -> Heads {
        Heads { q: nh, kv: nh }
    }
}

/// Sizes of one call, checked ([`check_dims`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) nh: usize,
    pub(crate) nkv: usize,
}

impl FlashAttn {
    /// Load flash_attn.ptx into `stream`'s context with the default launch variant; launches go on `stream`.
    pub fn new(stream: &Arc<CudaStream>) -> Result<FlashAttn> {
        FlashAttn::with_variant(stream, Variant::DEFAULT)
    }

    /// Load with a chosen launch variant (benchmarks).
    pub fn with_variant(stream: &Arc<CudaStream>, variant: Variant) -> Result<FlashAttn> {
        variant.check()?;
        let kernels = |dt: Dtype| {
            let s = dt.suffix();
            Kernels {
                fwd: format!("flash_fwd_{s}_{}", variant.fwd_name()),
                dq: format!("flash_dq_{s}_{}", variant.dq_name()),
                dkdv: format!("flash_dkdv_{s}_{}", variant.dkdv_name()),
            }
        };
        let names = Box::new([kernels(Dtype::Bf16), kernels(Dtype::F16)]);
        let all: Vec<&str> = names.iter().flat_map(|k| [&*k.fwd, &*k.dq, &*k.dkdv]).collect();
        let module = Module::load(stream, "flash_attn.cu", PTX, &all)?;
        Ok(FlashAttn { module, variant, names })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        self.module.stream()
    }

    /// f32 elements of the backward's scratch (`D`, one per (b, h, t)).
    pub fn scratch_len(b: usize, t: usize, nh: usize) -> usize {
        b * nh * t
    }

    fn kernels(&self, dtype: Dtype) -> &Kernels {
        match dtype {
            Dtype::Bf16 => &self.names[0],
            Dtype::F16 => &self.names[1],
        }
    }

    /// Forward in bf16 with head size 64 (the decoder engine): [`FlashAttn::forward_with`].
    ///
    /// # Safety
    /// As [`FlashAttn::forward_with`].
    pub unsafe fn forward(&self, p: AttnFwd<half::bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        unsafe { self.forward_with(p, b, t, heads, HEAD_SIZE) }
    }

    /// Backward in bf16 with head size 64 (the decoder engine): [`FlashAttn::backward_with`].
    ///
    /// # Safety
    /// As [`FlashAttn::backward_with`].
    pub unsafe fn backward(&self, p: AttnBwd<half::bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        unsafe { self.backward_with(p, b, t, heads, HEAD_SIZE) }
    }

    /// Forward: `y (B, T, C)` and `lse (B, NH, T)` from `qkv` (module doc).
    ///
    /// # Safety
    /// Each pointer addresses a live device allocation of at least the size the module doc gives for it, in the
    /// context of this object's stream; `y` and `lse` do not overlap `qkv` or each other.
    pub unsafe fn forward_with<T: AttnElem>(
        &self,
        p: AttnFwd<T>,
        b: usize,
        t: usize,
        heads: Heads,
        hs: usize,
    ) -> Result<()> {
        check_dims(b, t, heads, hs)?;
        check_align(&[("qkv", p.qkv.raw(), 16)])?; // named as the caller knows it (then again as q, k, v)
        let x = Qkv::fused(p.qkv, heads, hs);
        unsafe { self.forward_views(x, p.y, p.lse, &AttnLayout::fused(t, heads, hs), b, t, heads) }
    }

    /// Forward through views: `y` and `lse (B, NH, T)` from q, k, v, each where `x` and `layout` say (module doc).
    ///
    /// # Safety
    /// Each pointer addresses a live device allocation holding every element its strides reach for (b, t, heads,
    /// hs = 64), in the context of this object's stream; `y` and `lse` overlap no input or each other.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward_views<T: AttnElem>(
        &self,
        x: Qkv<T>,
        y: DevPtr<T>,
        lse: DevPtr<f32>,
        layout: &AttnLayout,
        b: usize,
        t: usize,
        heads: Heads,
    ) -> Result<()> {
        let d = check_views(&x, layout, (b, t, heads), &[("y", y.raw(), 16), ("lse", lse.raw(), 4)])?;
        unsafe { self.launch_fwd(x, y, lse, layout, d) }
    }

    /// Backward: `dqkv` from `qkv`, the forward's `y` and `lse`, and `dy (B, T, C)` (module doc). Two launches: dQ
    /// (query blocks; it also writes D = rowsum(dy * y) into the scratch), then dK and dV (key blocks of each
    /// key/value head, over the query heads of its group, reading D).
    ///
    /// # Safety
    /// As [`FlashAttn::forward_with`]; `lse` holds the forward's output for these `qkv`; `dvec_scratch` holds
    /// `scratch_len` f32; `dqkv` overlaps none of the inputs.
    pub unsafe fn backward_with<T: AttnElem>(
        &self,
        p: AttnBwd<T>,
        b: usize,
        t: usize,
        heads: Heads,
        hs: usize,
    ) -> Result<()> {
        check_dims(b, t, heads, hs)?;
        check_align(&[("qkv", p.qkv.raw(), 16), ("dqkv", p.dqkv.raw(), 16)])?;
        unsafe { self.backward_views(p.views(heads, hs), &AttnLayout::fused(t, heads, hs), b, t, heads) }
    }

    /// Backward through views: dq, dk, dv (`p.dx`, where `layout` says) from the inputs, the forward's `y` and
    /// `lse`, and `dy` (y's layout); the two launches of [`FlashAttn::backward_with`].
    ///
    /// # Safety
    /// As [`FlashAttn::forward_views`]; `lse` holds the forward's output for these inputs; `dvec_scratch` holds
    /// `scratch_len` f32; the gradients overlap none of the inputs or each other.
    pub unsafe fn backward_views<T: AttnElem>(
        &self,
        p: AttnBwdViews<T>,
        layout: &AttnLayout,
        b: usize,
        t: usize,
        heads: Heads,
    ) -> Result<()> {
        let d = check_views(
            &p.x,
            layout,
            (b, t, heads),
            &[
                ("y", p.y.raw(), 16),
                ("dy", p.dy.raw(), 16),
                ("dq", p.dx.q.raw(), 16),
                ("dk", p.dx.k.raw(), 16),
                ("dv", p.dx.v.raw(), 16),
                ("lse", p.lse.raw(), 4),
                ("dvec_scratch", p.dvec_scratch.raw(), 4),
            ],
        )?;
        unsafe {
            self.launch_dq_views(&p, layout, d)?;
            self.launch_dkdv_views(&p, layout, d)
        }
    }

    /// Heads per group for blocks of `rows` rows at this T, over `heads` (batch x heads) rows of blocks.
    fn group(&self, d: Dims, rows: usize, heads: usize) -> i32 {
        let per_head = d.t.div_ceil(rows);
        (self.variant.group_blocks.div_ceil(per_head)).clamp(1, heads) as i32
    }

    unsafe fn launch_fwd<T: AttnElem>(
        &self,
        x: Qkv<T>,
        y: DevPtr<T>,
        lse: DevPtr<f32>,
        layout: &AttnLayout,
        d: Dims,
    ) -> Result<()> {
        let rows = self.variant.fwd_rows();
        let cfg = tile_grid(d.b * d.nh, d.t, rows, 32 * self.variant.fwd_warps as u32)?;
        let (nh, nkv, t, scale) = (d.nh as i32, d.nkv as i32, d.t as i32, scale());
        let group = self.group(d, rows, d.b * d.nh);
        let mut a = self.module.args(&self.kernels(T::DTYPE).fwd)?;
        a.arg(&x.q).arg(&x.k).arg(&x.v).arg(&y).arg(&lse).arg(layout);
        a.arg(&nh).arg(&nkv).arg(&t).arg(&scale).arg(&group);
        // SAFETY: flash_fwd_*(const T* q, const T* k, const T* v, T* y, float* lse, Fa2Layout L, int nh, int nkv,
        // int t_len, float scale, int group); the caller vouches for the buffers (forward's contract); grid = B *
        // NH * ceil(T / rows) blocks.
        unsafe { go(a, cfg) }
    }

    /// The dQ pass alone over fused buffers (the attention benchmark times it).
    pub(crate) unsafe fn launch_dq<T: AttnElem>(&self, p: &AttnBwd<T>, d: Dims) -> Result<()> {
        let heads = Heads { q: d.nh, kv: d.nkv };
        unsafe { self.launch_dq_views(&p.views(heads, HEAD_SIZE), &AttnLayout::fused(d.t, heads, HEAD_SIZE), d) }
    }

    /// The dK/dV pass alone over fused buffers (the attention benchmark times it).
    pub(crate) unsafe fn launch_dkdv<T: AttnElem>(&self, p: &AttnBwd<T>, d: Dims) -> Result<()> {
        let heads = Heads { q: d.nh, kv: d.nkv };
        unsafe { self.launch_dkdv_views(&p.views(heads, HEAD_SIZE), &AttnLayout::fused(d.t, heads, HEAD_SIZE), d) }
    }

    unsafe fn launch_dq_views<T: AttnElem>(&self, p: &AttnBwdViews<T>, layout: &AttnLayout, d: Dims) -> Result<()> {
        let (cfg, (nh, nkv, t, scale, group)) = self.bwd_launch(d, d.b * d.nh)?;
        let mut a = self.module.args(&self.kernels(T::DTYPE).dq)?;
        a.arg(&p.x.q).arg(&p.x.k).arg(&p.x.v).arg(&p.y).arg(&p.dy).arg(&p.lse).arg(&p.dvec_scratch).arg(&p.dx.q);
        a.arg(layout).arg(&nh).arg(&nkv).arg(&t).arg(&scale).arg(&group);
        // SAFETY: flash_dq_*(const T* q, const T* k, const T* v, const T* y, const T* dy, const float* lse, float*
        // dvec, T* dq, Fa2Layout L, int nh, int nkv, int t_len, float scale, int group), T the pointers' element
        // type; buffers per backward's contract; one row of blocks per (batch, query head).
        unsafe { go(a, cfg) }
    }

    unsafe fn launch_dkdv_views<T: AttnElem>(&self, p: &AttnBwdViews<T>, layout: &AttnLayout, d: Dims) -> Result<()> {
        let (cfg, (nh, nkv, t, scale, group)) = self.bwd_launch(d, d.b * d.nkv)?;
        let mut a = self.module.args(&self.kernels(T::DTYPE).dkdv)?;
        a.arg(&p.x.q).arg(&p.x.k).arg(&p.x.v).arg(&p.dy).arg(&p.lse).arg(&p.dvec_scratch).arg(&p.dx.k).arg(&p.dx.v);
        a.arg(layout).arg(&nh).arg(&nkv).arg(&t).arg(&scale).arg(&group);
        // SAFETY: flash_dkdv_*(const T* q, const T* k, const T* v, const T* dy, const float* lse, const float* dvec,
        // T* dk, T* dv, Fa2Layout L, int nh, int nkv, int t_len, float scale, int group), T the pointers' element
        // type; buffers per backward's contract; one row of blocks per (batch, key/value head).
        unsafe { go(a, cfg) }
    }

    /// The grid of a backward kernel over `heads` rows of blocks and its trailing scalars.
    fn bwd_launch(&self, d: Dims, heads: usize) -> Result<(LaunchConfig, BwdScalars)> {
        let rows = self.variant.bwd_rows();
        let cfg = tile_grid(heads, d.t, rows, 32 * self.variant.bwd_warps as u32)?;
        let group = self.group(d, rows, heads);
        Ok((cfg, (d.nh as i32, d.nkv as i32, d.t as i32, scale(), group)))
    }
}

/// A backward kernel's trailing arguments: int nh, int nkv, int t_len, float scale, int group.
type BwdScalars = (i32, i32, i32, f32, i32);

pub(crate) fn scale() -> f32 {
    1.0 / (HEAD_SIZE as f32).sqrt()
}

pub(crate) fn check_dims(b: usize, t: usize, heads: Heads, hs: usize) -> Result<Dims> {
    let Heads { q: nh, kv: nkv } = heads;
    if hs != HEAD_SIZE {
        return Err(Error::Msg(format!("flash attention supports head size {HEAD_SIZE}, got hs = {hs}")));
    }
    if b == 0 || t == 0 || nh == 0 {
        return Err(Error::Msg(format!("flash attention over an empty shape: b = {b}, t = {t}, nh = {nh}")));
    }
    if nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::Msg(format!("flash attention: {nkv} key/value heads must divide {nh} query heads")));
    }
    // The kernels index with 32-bit ints where a value stays below b * nh * (blocks of a head) or T; element
    // offsets are 64-bit.
    let blocks = b.checked_mul(nh).and_then(|x| x.checked_mul(t.div_ceil(16)));
    if t > i32::MAX as usize || blocks.is_none_or(|x| x >= 1 << 31) {
        return Err(Error::Msg(format!("flash attention: b = {b}, t = {t}, nh = {nh} exceed the grid limits")));
    }
    Ok(Dims { b, t, nh, nkv })
}

/// A call through views: its sizes, its layout's strides, q, k, v and the call's `other` pointers aligned.
fn check_views<T>(
    x: &Qkv<T>,
    layout: &AttnLayout,
    (b, t, heads): (usize, usize, Heads),
    other: &[(&str, u64, u64)],
) -> Result<Dims> {
    let d = check_dims(b, t, heads, HEAD_SIZE)?;
    layout.check()?;
    check_align(&[("q", x.q.raw(), 16), ("k", x.k.raw(), 16), ("v", x.v.raw(), 16)])?;
    check_align(other)?;
    Ok(d)
}

pub(crate) fn check_align(ptrs: &[(&str, u64, u64)]) -> Result<()> {
    for &(name, p, align) in ptrs {
        if p == 0 || p % align != 0 {
            return Err(Error::Msg(format!(
                "flash attention: {name} = {p:#x} must be a non-null {align}-byte aligned pointer"
            )));
        }
    }
    Ok(())
}

/// A 1-D grid of ceil(T / rows) blocks per each of `heads` (batch x heads), `threads` threads each (static shared
/// memory only).
pub(crate) fn tile_grid(heads: usize, t: usize, rows: usize, threads: u32) -> Result<LaunchConfig> {
    let blocks = heads * t.div_ceil(rows);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&n| n < 1 << 31)
        .ok_or_else(|| Error::Msg(format!("flash attention: {blocks} blocks exceed the grid limit")))?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_pointers_are_checked() {
        assert!(check_dims(1, 1, Heads::mha(1), 64).is_ok());
        assert!(check_dims(1, 1, Heads { q: 32, kv: 8 }, 64).is_ok());
        let e = check_dims(1, 1, Heads { q: 12, kv: 5 }, 64).unwrap_err().to_string();
        assert!(e.contains("must divide"), "{e}");
        let e = check_dims(1, 8, Heads::mha(2), 128).unwrap_err().to_string();
        assert!(e.contains("head size 64"), "{e}");
        assert!(check_dims(0, 8, Heads::mha(2), 64).is_err());
        assert!(check_dims(1 << 20, 1 << 12, Heads::mha(64), 64).is_err());
        assert!(check_align(&[("qkv", 0x1000, 16), ("lse", 0x1004, 4)]).is_ok());
        let e = check_align(&[("dy", 0x1008, 16)]).unwrap_err().to_string();
        assert!(e.contains("dy") && e.contains("16-byte"), "{e}");
        assert!(Variant::ALL.iter().all(|v| v.check().is_ok()));
        assert!(Variant { fwd_warps: 8, fwd_mtiles: 2, ..Variant::DEFAULT }.check().is_err());
        assert!(Variant { fwd_b3: true, ..Variant::DEFAULT }.check().is_err());
        assert_eq!(Variant::DEFAULT.label(), "fwd w4m2 dq w4b3 dkdv w4 group 512");
        // GPT-2 124M's fused layout: rows of 3C, heads 64 apart; y rows of C.
        let l = AttnLayout::fused(1024, Heads::mha(12), 64);
        assert_eq!(l.q, HeadStrides { batch: 1024 * 2304, head: 64, row: 2304 });
        assert_eq!((l.k, l.dv), (l.q, l.q));
        assert_eq!(l.y, HeadStrides { batch: 1024 * 768, head: 64, row: 768 });
        assert!(l.check().is_ok());
        let e = AttnLayout { k: HeadStrides { row: 68, ..l.k }, ..l }.check().unwrap_err().to_string();
        assert!(e.contains("strides of k"), "{e}");
        assert_eq!(HeadStrides::dense(4, 10, 64), HeadStrides { batch: 2560, head: 640, row: 64 });
        // The layout goes to the kernels by value as seven structs of three int64_t.
        assert_eq!(std::mem::size_of::<AttnLayout>(), 7 * 3 * 8);
    }
}
