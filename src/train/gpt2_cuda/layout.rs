//! Where everything lives in the GPT-2 engine's few big buffers: the parameter layout (shared by the f32 master
//! weights, their bf16 working copy, the f32 gradients and AdamW's m and v) and the activation layout of one
//! micro-batch. Plain arithmetic, no CUDA: tested on any machine.
//!
//! Parameters: every tensor of `model::param_specs` (checkpoint names and shapes), the >= 2-D ones (weight decay)
//! first, then the 1-D ones, each region in checkpoint order; every tensor starts on a multiple of `ALIGN` elements,
//! so each tensor's address is 256-byte aligned in the bf16 copy and 512-byte aligned in the f32 buffers (what
//! cuBLASLt's fastest algorithms want), and the optimizer needs only the boundary `n_decay` to know which elements
//! decay. Padding elements have zero gradient forever and stay zero.

use crate::model::params::ParamSpec;
use crate::model::ModelConfig;

/// Alignment of every tensor and activation, in elements.
pub const ALIGN: usize = 128;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// One parameter tensor's place in the flat buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub decay: bool,
}

/// The parameter layout of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// In checkpoint order (`param_specs`' order), whatever their place in the buffer.
    pub slots: Vec<Slot>,
    /// Elements of each flat buffer (with padding).
    pub total: usize,
    /// Elements `[0, n_decay)` get weight decay.
    pub n_decay: usize,
}

impl ParamLayout {
    pub fn new(specs: &[ParamSpec]) -> ParamLayout {
        let decays = |s: &ParamSpec| s.shape.len() >= 2;
        let mut offsets = vec![0; specs.len()];
        let mut next = 0;
        let mut n_decay = 0;
        for region in [true, false] {
            for (i, s) in specs.iter().enumerate().filter(|(_, s)| decays(s) == region) {
                offsets[i] = next;
                next += align(s.shape.iter().product());
            }
            if region {
                n_decay = next; // aligned: every size above is
            }
        }
        let slots = specs
            .iter()
            .zip(offsets)
            .map(|(s, offset)| Slot {
                name: s.name.clone(),
                shape: s.shape.clone(),
                offset,
                len: s.shape.iter().product(),
                decay: decays(s),
            })
            .collect();
        ParamLayout { slots, total: next, n_decay }
    }

    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The offset of `name`, which the GPT-2 layout always has (a missing name is a bug in the engine).
    pub fn offset(&self, name: &str) -> usize {
        self.get(name).unwrap_or_else(|| panic!("GPT-2 parameter `{name}` missing from the layout")).offset
    }

    /// Real (unpadded) parameter count.
    pub fn num_parameters(&self) -> usize {
        self.slots.iter().map(|s| s.len).sum()
    }

    /// ((tensors, elements) with decay, (tensors, elements) without), as AdamW::decay_summary.
    pub fn decay_summary(&self) -> ((usize, usize), (usize, usize)) {
        let mut out = ((0, 0), (0, 0));
        for s in &self.slots {
            let g = if s.decay { &mut out.0 } else { &mut out.1 };
            g.0 += 1;
            g.1 += s.len;
        }
        out
    }
}

/// The per-layer parameter offsets the forward and backward use, looked up once.
#[derive(Clone, Copy, Debug)]
pub struct LayerParams {
    pub ln1_w: usize,
    pub ln1_b: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln2_w: usize,
    pub ln2_b: usize,
    pub fc_w: usize,
    pub fc_b: usize,
    pub fcproj_w: usize,
    pub fcproj_b: usize,
}

impl LayerParams {
    pub fn new(p: &ParamLayout, l: usize) -> LayerParams {
        let o = |n: &str| p.offset(&format!("h.{l}.{n}"));
        LayerParams {
            ln1_w: o("ln_1.weight"),
            ln1_b: o("ln_1.bias"),
            qkv_w: o("attn.c_attn.weight"),
            qkv_b: o("attn.c_attn.bias"),
            proj_w: o("attn.c_proj.weight"),
            proj_b: o("attn.c_proj.bias"),
            ln2_w: o("ln_2.weight"),
            ln2_b: o("ln_2.bias"),
            fc_w: o("mlp.c_fc.weight"),
            fc_b: o("mlp.c_fc.bias"),
            fcproj_w: o("mlp.c_proj.weight"),
            fcproj_b: o("mlp.c_proj.bias"),
        }
    }
}

/// Model and batch dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub l: usize,
    /// Padded vocabulary (the logits' width).
    pub v: usize,
    /// Rows of the lm_head computed at once (the classifier's chunk): all N, or a multiple of ALIGN rows so every
    /// chunk's slice of the (N, C) buffers stays aligned.
    pub chunk: usize,
}

impl Dims {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, chunk: usize) -> Dims {
        let n = b * t;
        let chunk = if chunk >= n { n } else { (chunk / ALIGN).max(1) * ALIGN };
        Dims { b, t, c: cfg.n_embd, nh: cfg.n_head, l: cfg.n_layer, v: cfg.vocab_size, chunk: chunk.min(n) }
    }

    pub fn n(&self) -> usize {
        self.b * self.t
    }
}

/// Offsets (in elements of each buffer's own type) of one micro-batch's activations. Four buffers: `f32` (residual
/// stream, LN statistics, attention logsumexp, losses), `bf16` (matmul inputs and outputs), and the backward's
/// scratch in each type. Every entry is ALIGN-aligned.
#[derive(Clone, Debug, PartialEq)]
pub struct ActLayout {
    pub f32_total: usize,
    pub bf16_total: usize,
    /// Residual stream entering layer l (l = 0..=L; L is the final one), (N, C) f32.
    pub res: Vec<usize>,
    /// Per layer, f32: the residual after attention (N, C); LN1 and LN2 mean, rstd (N); attention lse (B, NH, T).
    pub res_mid: Vec<usize>,
    pub ln1_mean: Vec<usize>,
    pub ln1_rstd: Vec<usize>,
    pub ln2_mean: Vec<usize>,
    pub ln2_rstd: Vec<usize>,
    pub lse: Vec<usize>,
    /// Final LayerNorm statistics, and the per-row losses (N), f32.
    pub lnf_mean: usize,
    pub lnf_rstd: usize,
    pub losses: usize,
    /// Per layer, bf16: LN1 out (N, C), qkv (N, 3C), attention out (N, C), LN2 out (N, C), the MLP's pre-GELU
    /// (N, 4C) and GELU output (N, 4C).
    pub ln1: Vec<usize>,
    pub qkv: Vec<usize>,
    pub atty: Vec<usize>,
    pub ln2: Vec<usize>,
    pub fch: Vec<usize>,
    pub fch_gelu: Vec<usize>,
    /// Final LN out (N, C) and one chunk of logits (chunk, V), bf16.
    pub lnf: usize,
    pub logits: usize,
    /// Backward, f32: the residual gradient (N, C), the attention row dot products (B, NH, T), LayerNorm and bias
    /// gradient partials.
    pub dres: usize,
    pub att_scratch: usize,
    pub ln_scratch: usize,
    pub bias_scratch: usize,
    /// Backward, bf16: the residual gradient's copy (N, C), a (N, 4C) buffer (d pre-GELU, then dqkv) and a (N, C)
    /// one (dLN outputs, d attention out).
    pub dres16: usize,
    pub dbig: usize,
    pub dsmall: usize,
}

/// Scratch sizes that depend on kernels (given by the launchers, so this file stays free of CUDA).
#[derive(Clone, Copy, Debug)]
pub struct ScratchSizes {
    pub ln: usize,
    pub bias: usize,
    pub attention: usize,
}

impl ActLayout {
    pub fn new(d: &Dims, s: ScratchSizes) -> ActLayout {
        let (n, c, l) = (d.n(), d.c, d.l);
        let mut f = 0usize;
        let mut h = 0usize;
        let mut take_f = |len: usize| {
            let o = f;
            f += align(len);
            o
        };
        let res: Vec<usize> = (0..=l).map(|_| take_f(n * c)).collect();
        let res_mid = (0..l).map(|_| take_f(n * c)).collect();
        let ln1_mean = (0..l).map(|_| take_f(n)).collect();
        let ln1_rstd = (0..l).map(|_| take_f(n)).collect();
        let ln2_mean = (0..l).map(|_| take_f(n)).collect();
        let ln2_rstd = (0..l).map(|_| take_f(n)).collect();
        let lse = (0..l).map(|_| take_f(d.b * d.nh * d.t)).collect();
        let lnf_mean = take_f(n);
        let lnf_rstd = take_f(n);
        let losses = take_f(n);
        let dres = take_f(n * c);
        let att_scratch = take_f(s.attention);
        let ln_scratch = take_f(s.ln);
        let bias_scratch = take_f(s.bias);
        let mut take_h = |len: usize| {
            let o = h;
            h += align(len);
            o
        };
        let ln1 = (0..l).map(|_| take_h(n * c)).collect();
        let qkv = (0..l).map(|_| take_h(3 * n * c)).collect();
        let atty = (0..l).map(|_| take_h(n * c)).collect();
        let ln2 = (0..l).map(|_| take_h(n * c)).collect();
        let fch = (0..l).map(|_| take_h(4 * n * c)).collect();
        let fch_gelu = (0..l).map(|_| take_h(4 * n * c)).collect();
        let lnf = take_h(n * c);
        let logits = take_h(d.chunk * d.v);
        let dres16 = take_h(n * c);
        let dbig = take_h(4 * n * c);
        let dsmall = take_h(n * c);
        ActLayout {
            f32_total: f,
            bf16_total: h,
            res,
            res_mid,
            ln1_mean,
            ln1_rstd,
            ln2_mean,
            ln2_rstd,
            lse,
            lnf_mean,
            lnf_rstd,
            losses,
            ln1,
            qkv,
            atty,
            ln2,
            fch,
            fch_gelu,
            lnf,
            logits,
            dres,
            att_scratch,
            ln_scratch,
            bias_scratch,
            dres16,
            dbig,
            dsmall,
        }
    }

    /// Bytes of both activation buffers.
    pub fn bytes(&self) -> usize {
        4 * self.f32_total + 2 * self.bf16_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gpt2::param_specs;

    #[test]
    fn decayed_tensors_come_first_aligned_and_disjoint() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let specs = param_specs(&cfg);
        let p = ParamLayout::new(&specs);
        assert_eq!(p.slots.len(), specs.len());
        assert_eq!(p.num_parameters(), specs.iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>());
        let mut spans: Vec<(usize, usize)> = p.slots.iter().map(|s| (s.offset, s.offset + s.len)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        for s in &p.slots {
            assert_eq!(s.offset % ALIGN, 0, "{} unaligned", s.name);
            assert_eq!(s.decay, s.shape.len() >= 2);
            if s.decay {
                assert!(s.offset + s.len <= p.n_decay, "{} past the decay boundary", s.name);
            } else {
                assert!(s.offset >= p.n_decay, "{} inside the decay region", s.name);
            }
            assert!(s.offset + s.len <= p.total);
        }
        assert_eq!(p.n_decay % ALIGN, 0);
        assert_eq!(p.get("wte.weight").unwrap().offset, 0);
        let (dec, non) = p.decay_summary();
        assert_eq!(dec.0, 2 + 4 * cfg.n_layer);
        assert_eq!(non.0, 8 * cfg.n_layer + 2);
    }

    #[test]
    fn activations_are_aligned_and_sized() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let d = Dims::new(&cfg, 64, 1024, 16384);
        let a = ActLayout::new(&d, ScratchSizes { ln: 1000, bias: 3000, attention: 64 * 12 * 1024 });
        for v in [&a.res, &a.res_mid, &a.ln1, &a.qkv, &a.fch] {
            assert!(v.iter().all(|o| o % ALIGN == 0));
        }
        assert_eq!(a.res.len(), cfg.n_layer + 1);
        // ~22 GiB of activations at the 124M micro-batch, well under the PyTorch reference's 41 GiB peak.
        let gib = a.bytes() as f64 / (1u64 << 30) as f64;
        assert!(gib > 15.0 && gib < 30.0, "{gib} GiB");
    }
}
