//! The decoder engine's architecture as data, and where everything lives in its few big buffers. Plain arithmetic,
//! no CUDA: tested on any machine.
//!
//! `Arch` is what the forward and backward read of a model's row of the architecture table (`model::arch`: norm,
//! positions, MLP; biases are where the row's tensors have them) to pick kernels, so GPT-2, Llama and Qwen2 run the
//! same step. Tensor names come from the row too (`BlockParams::new`, `ModelParams::new`).
//!
//! Parameters (`ParamLayout`): every tensor of `model::param_specs` (checkpoint names and shapes), the >= 2-D ones
//! (weight decay) first, then the 1-D ones, each region in checkpoint order; every tensor starts on a multiple of
//! `ALIGN` elements, so each tensor's address is 256-byte aligned in the bf16 copy and 512-byte aligned in the f32
//! buffers (what cuBLASLt's fastest algorithms want), and the optimizer needs only the boundary `n_decay` to know
//! which elements decay. Padding elements have zero gradient forever and stay zero. The exception is a group the
//! row stores as several tensors (Llama's q/k/v and gate/up projections, Qwen2's q/k/v biases): they are laid end
//! to end without padding, so each group is one row-major `(rows, C)` matrix (or one bias vector) and one matmul
//! computes it (`ArchSpec::followers`).

pub use crate::model::arch::{Mlp, Norm};
use crate::model::arch::{Positions, Stored};
use crate::model::params::ParamSpec;
use crate::model::{param_specs, ModelConfig};

/// Alignment of every tensor and activation, in elements.
pub const ALIGN: usize = 128;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// What the engine's kernels need of a model's row, for one config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arch {
    pub norm: Norm,
    /// The norms' epsilon (`ModelConfig::eps`).
    pub eps: f64,
    /// `Some(theta)`: rotary positions applied to q and k; `None`: a learned position table added to the embedding.
    pub rotary: Option<f64>,
    pub mlp: Mlp,
}

impl Arch {
    pub fn of(cfg: &ModelConfig) -> Arch {
        let row = cfg.arch.spec();
        Arch {
            norm: row.norm,
            eps: cfg.eps(),
            rotary: (row.positions == Positions::Rotary).then(|| cfg.rope_base()),
            mlp: row.mlp,
        }
    }
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
    /// The layout of `cfg`'s parameters, each group the row stores as several tensors end to end.
    pub fn for_model(cfg: &ModelConfig) -> ParamLayout {
        let followers: std::collections::HashSet<String> = cfg.arch.spec().followers(cfg.n_layer).into_iter().collect();
        ParamLayout::new(&param_specs(cfg), |name| followers.contains(name))
    }

    /// Every tensor of `specs` aligned, except those `fused` names, which follow the tensor before them in the list
    /// directly (it must be in the same decay region).
    pub fn new(specs: &[ParamSpec], fused: impl Fn(&str) -> bool) -> ParamLayout {
        let decays = |s: &ParamSpec| s.shape.len() >= 2;
        let mut offsets = vec![0; specs.len()];
        let mut next = 0;
        let mut n_decay = 0;
        for region in [true, false] {
            let mut prev_end: Option<usize> = None;
            for (i, s) in specs.iter().enumerate().filter(|(_, s)| decays(s) == region) {
                let len = s.numel();
                if fused(&s.name) {
                    let end = prev_end.expect("a fused tensor follows another of its region");
                    assert!(i > 0 && decays(&specs[i - 1]) == region, "{} must follow its group", s.name);
                    offsets[i] = end;
                    next = align(end + len);
                    prev_end = Some(end + len);
                } else {
                    offsets[i] = next;
                    prev_end = Some(next + len);
                    next += align(len);
                }
            }
            if region {
                n_decay = next; // aligned: every step above is
            }
        }
        let slots = specs
            .iter()
            .zip(offsets)
            .map(|(s, offset)| Slot {
                name: s.name.clone(),
                shape: s.shape.clone(),
                offset,
                len: s.numel(),
                decay: decays(s),
            })
            .collect();
        ParamLayout { slots, total: next, n_decay }
    }

    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The offset of `name`, which the model's layout always has (a missing name is a bug in the engine).
    pub fn offset(&self, name: &str) -> usize {
        self.get(name).unwrap_or_else(|| panic!("parameter `{name}` missing from the layout")).offset
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

/// One block's parameter offsets, looked up once; `None` where the row has no such tensor (Llama's biases; Qwen2's
/// outside q, k, v).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockParams {
    /// The norm before attention: weight (C), bias (C).
    pub norm1_w: usize,
    pub norm1_b: Option<usize>,
    /// q, k and v projections as one `((NH + 2 KV) HS, C)` matrix (GPT-2's c_attn; Llama's q_proj..v_proj) and
    /// their biases as one `((NH + 2 KV) HS)` vector (GPT-2's, Qwen2's).
    pub qkv_w: usize,
    pub qkv_b: Option<usize>,
    /// Attention output projection (C, C).
    pub proj_w: usize,
    pub proj_b: Option<usize>,
    pub norm2_w: usize,
    pub norm2_b: Option<usize>,
    /// The MLP's input product: `(H, C)` (GPT-2's c_fc) or gate and up as one `(2H, C)` (Llama).
    pub fc_w: usize,
    pub fc_b: Option<usize>,
    /// The MLP's output projection (C, H).
    pub fcproj_w: usize,
    pub fcproj_b: Option<usize>,
}

/// The offsets of a stored layer's first weight and first bias (a group's start).
fn offsets(p: &ParamLayout, s: &Stored) -> (usize, Option<usize>) {
    (p.offset(s.weight()), s.bias().map(|b| p.offset(b)))
}

impl BlockParams {
    /// Layer `l` of `cfg`, by its row's tensor names.
    pub fn new(cfg: &ModelConfig, p: &ParamLayout, l: usize) -> BlockParams {
        let n = cfg.arch.spec().block(l);
        let (norm1_w, norm1_b) = offsets(p, &n.norm1);
        let (qkv_w, qkv_b) = offsets(p, &n.qkv);
        let (proj_w, proj_b) = offsets(p, &n.attn_out);
        let (norm2_w, norm2_b) = offsets(p, &n.norm2);
        let (fc_w, fc_b) = offsets(p, &n.fc);
        let (fcproj_w, fcproj_b) = offsets(p, &n.fc_out);
        BlockParams { norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, fc_w, fc_b, fcproj_w, fcproj_b }
    }
}

/// The parameters outside the blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelParams {
    /// Token embedding (V, C).
    pub wte: usize,
    /// Learned positions (block_size, C), GPT-2 only.
    pub wpe: Option<usize>,
    /// The final norm.
    pub normf_w: usize,
    pub normf_b: Option<usize>,
    /// The lm_head (V, C): `wte` when tied.
    pub lm_head: usize,
}

impl ModelParams {
    pub fn new(cfg: &ModelConfig, p: &ParamLayout) -> ModelParams {
        let n = cfg.arch.spec().top(cfg.tied());
        let wte = p.offset(&n.embedding);
        let (normf_w, normf_b) = offsets(p, &n.final_norm);
        ModelParams {
            wte,
            wpe: n.positions.as_deref().map(|w| p.offset(w)),
            normf_w,
            normf_b,
            lm_head: n.lm_head.as_deref().map_or(wte, |h| p.offset(h)),
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
    /// KV heads (= nh without grouped-query attention).
    pub nkv: usize,
    pub l: usize,
    /// H: the MLP's hidden width.
    pub hidden: usize,
    /// Padded vocabulary (the logits' width).
    pub v: usize,
    /// Rows of the lm_head computed at once (the classifier's chunk): all N, or a multiple of ALIGN rows so every
    /// chunk's slice of the (N, C) buffers stays aligned.
    pub chunk: usize,
    /// Width of the MLP's input product: H (GELU) or 2H (gate and up of SwiGLU).
    pub fc: usize,
}

impl Dims {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, chunk: usize) -> Dims {
        let n = b * t;
        let chunk = if chunk >= n { n } else { (chunk / ALIGN).max(1) * ALIGN };
        let fc = match Arch::of(cfg).mlp {
            Mlp::Gelu => cfg.hidden(),
            Mlp::SwiGlu => 2 * cfg.hidden(),
        };
        Dims {
            b,
            t,
            c: cfg.n_embd,
            nh: cfg.n_head,
            nkv: cfg.kv_heads(),
            l: cfg.n_layer,
            hidden: cfg.hidden(),
            v: cfg.vocab_size,
            chunk: chunk.min(n),
            fc,
        }
    }

    pub fn n(&self) -> usize {
        self.b * self.t
    }

    pub fn hs(&self) -> usize {
        self.c / self.nh
    }

    /// Width of the fused q, k, v row: `(NH + 2 KV) HS` (3C without grouping).
    pub fn qkv(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs()
    }
}

/// Offsets (in elements of each buffer's own type) of one micro-batch's activations. Four buffers: `f32` (residual
/// stream, norm statistics, attention logsumexp, losses), `bf16` (matmul inputs and outputs), and the backward's
/// scratch in each type. Every entry is ALIGN-aligned.
#[derive(Clone, Debug, PartialEq)]
pub struct ActLayout {
    pub f32_total: usize,
    pub bf16_total: usize,
    /// Residual stream entering layer l (l = 0..=L; L is the final one), (N, C) f32.
    pub res: Vec<usize>,
    /// Per layer, f32: the residual after attention (N, C); norm 1 and 2 mean (LayerNorm only), rstd (N); attention
    /// lse (B, NH, T).
    pub res_mid: Vec<usize>,
    pub ln1_mean: Vec<usize>,
    pub ln1_rstd: Vec<usize>,
    pub ln2_mean: Vec<usize>,
    pub ln2_rstd: Vec<usize>,
    pub lse: Vec<usize>,
    /// Final norm statistics, and the per-row losses (N), f32.
    pub lnf_mean: usize,
    pub lnf_rstd: usize,
    pub losses: usize,
    /// Rotary tables (T, HS/2) each, f32 (rotary positions only; 0 otherwise).
    pub rope_cos: usize,
    pub rope_sin: usize,
    /// Per layer, bf16: norm 1 out (N, C), qkv (N, (NH + 2 KV) HS; q and k rotated), attention out (N, C), norm 2 out
    /// (N, C), the MLP's input product (N, fc: pre-GELU, or gate | up) and its activation (N, H: GELU, or
    /// silu(gate) * up).
    pub ln1: Vec<usize>,
    pub qkv: Vec<usize>,
    pub atty: Vec<usize>,
    pub ln2: Vec<usize>,
    pub fch: Vec<usize>,
    pub fch_act: Vec<usize>,
    /// Final norm out (N, C) and one chunk of logits (chunk, V), bf16.
    pub lnf: usize,
    pub logits: usize,
    /// Backward, f32: the residual gradient (N, C), the attention row dot products (B, NH, T), norm and bias
    /// gradient partials.
    pub dres: usize,
    pub att_scratch: usize,
    pub norm_scratch: usize,
    pub bias_scratch: usize,
    /// Backward, bf16: the residual gradient's copy (N, C), a buffer of the widest product input (N, max(fc, qkv):
    /// d pre-activation, then dqkv) and a (N, C) one (dnorm outputs, d attention out).
    pub dres16: usize,
    pub dbig: usize,
    pub dsmall: usize,
}

/// Scratch sizes that depend on kernels (given by the launchers, so this file stays free of CUDA).
#[derive(Clone, Copy, Debug)]
pub struct ScratchSizes {
    pub norm: usize,
    pub bias: usize,
    pub attention: usize,
}

impl ActLayout {
    pub fn new(d: &Dims, arch: &Arch, s: ScratchSizes) -> ActLayout {
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
        let norm_scratch = take_f(s.norm);
        let bias_scratch = take_f(s.bias);
        let half = d.t * d.hs() / 2;
        let (rope_cos, rope_sin) = if arch.rotary.is_some() { (take_f(half), take_f(half)) } else { (0, 0) };
        let mut take_h = |len: usize| {
            let o = h;
            h += align(len);
            o
        };
        let ln1 = (0..l).map(|_| take_h(n * c)).collect();
        let qkv = (0..l).map(|_| take_h(n * d.qkv())).collect();
        let atty = (0..l).map(|_| take_h(n * c)).collect();
        let ln2 = (0..l).map(|_| take_h(n * c)).collect();
        let fch = (0..l).map(|_| take_h(n * d.fc)).collect();
        let fch_act = (0..l).map(|_| take_h(n * d.hidden)).collect();
        let lnf = take_h(n * c);
        let logits = take_h(d.chunk * d.v);
        let dres16 = take_h(n * c);
        let dbig = take_h(n * d.fc.max(d.qkv()));
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
            rope_cos,
            rope_sin,
            ln1,
            qkv,
            atty,
            ln2,
            fch,
            fch_act,
            lnf,
            logits,
            dres,
            att_scratch,
            norm_scratch,
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

/// The rotary tables of positions `0..t` for head size `hs`: `cos[pos * HS/2 + i]`, `sin[...]`, computed in f64 and
/// rounded once to f32 (`model::ops::rotary_cos_sin`, the candle op's tables too).
pub fn rotary_tables(t: usize, hs: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let (cos, sin) = crate::model::ops::rotary_cos_sin(t, hs, theta);
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f32s(cos), f32s(sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_disjoint_aligned(p: &ParamLayout, cfg: &ModelConfig) {
        let mut spans: Vec<(usize, usize)> = p.slots.iter().map(|s| (s.offset, s.offset + s.len)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        let followers = cfg.arch.spec().followers(cfg.n_layer);
        for s in &p.slots {
            if !followers.contains(&s.name) {
                assert_eq!(s.offset % ALIGN, 0, "{} unaligned", s.name);
            }
            assert_eq!(s.decay, s.shape.len() >= 2);
            if s.decay {
                assert!(s.offset + s.len <= p.n_decay, "{} past the decay boundary", s.name);
            } else {
                assert!(s.offset >= p.n_decay, "{} inside the decay region", s.name);
            }
            assert!(s.offset + s.len <= p.total);
        }
        assert_eq!(p.n_decay % ALIGN, 0);
    }

    #[test]
    fn decayed_tensors_come_first_aligned_and_disjoint() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let specs = param_specs(&cfg);
        let p = ParamLayout::for_model(&cfg);
        assert_eq!(p, ParamLayout::new(&specs, |_| false), "GPT-2 fuses nothing");
        assert_eq!(p.slots.len(), specs.len());
        assert_eq!(p.num_parameters(), specs.iter().map(|s| s.numel()).sum::<usize>());
        check_disjoint_aligned(&p, &cfg);
        assert_eq!(p.get("wte.weight").unwrap().offset, 0);
        let (dec, non) = p.decay_summary();
        assert_eq!(dec.0, 2 + 4 * cfg.n_layer);
        assert_eq!(non.0, 8 * cfg.n_layer + 2);
    }

    #[test]
    fn llama_groups_are_one_matrix_each() {
        // GQA with sizes that are not multiples of ALIGN: the fused tensors still follow each other directly.
        let mut cfg = ModelConfig::preset("llama-tiny").unwrap();
        cfg.n_head = 4;
        cfg.n_kv_head = Some(2);
        cfg.n_embd = 72;
        cfg.ffn_hidden = Some(100);
        cfg.tie_word_embeddings = Some(false);
        let p = ParamLayout::for_model(&cfg);
        check_disjoint_aligned(&p, &cfg);
        for l in 0..cfg.n_layer {
            let s = |n: &str| p.get(&format!("layers.{l}.{n}.weight")).unwrap().clone();
            let (q, k, v) = (s("self_attn.q_proj"), s("self_attn.k_proj"), s("self_attn.v_proj"));
            assert_eq!((k.offset, v.offset), (q.offset + q.len, k.offset + k.len));
            assert_eq!((q.len, k.len), (72 * 72, 2 * 18 * 72));
            let (g, u) = (s("mlp.gate_proj"), s("mlp.up_proj"));
            assert_eq!(u.offset, g.offset + g.len);
            let b = BlockParams::new(&cfg, &p, l);
            assert_eq!((b.qkv_w, b.fc_w, b.qkv_b, b.norm1_b), (q.offset, g.offset, None, None));
        }
        let m = ModelParams::new(&cfg, &p);
        assert_eq!((m.wpe, m.normf_b), (None, None));
        assert_eq!(m.lm_head, p.offset("lm_head.weight"));
        assert_ne!(m.lm_head, m.wte);
        let d = Dims::new(&cfg, 2, 8, 1 << 20);
        assert_eq!((d.qkv(), d.fc, d.hidden, d.hs()), ((4 + 4) * 18, 200, 100, 18));
    }

    #[test]
    fn qwen2_qkv_biases_are_one_vector_for_the_bias_epilogue() {
        let mut cfg = ModelConfig::preset("qwen2-tiny").unwrap();
        (cfg.n_head, cfg.n_kv_head, cfg.n_embd) = (4, Some(2), 72);
        let p = ParamLayout::for_model(&cfg);
        check_disjoint_aligned(&p, &cfg);
        let d = Dims::new(&cfg, 2, 8, 1 << 20);
        for l in 0..cfg.n_layer {
            let s = |n: &str| p.get(&format!("layers.{l}.self_attn.{n}_proj.bias")).unwrap().clone();
            let (q, k, v) = (s("q"), s("k"), s("v"));
            assert_eq!((k.offset, v.offset), (q.offset + q.len, k.offset + k.len));
            assert_eq!(q.len + k.len + v.len, d.qkv(), "the epilogue reads one (NH + 2 KV) HS vector");
            assert!(!q.decay);
            let b = BlockParams::new(&cfg, &p, l);
            assert_eq!((b.qkv_b, b.proj_b, b.fc_b, b.fcproj_b, b.norm1_b), (Some(q.offset), None, None, None, None));
        }
        let a = Arch::of(&cfg);
        assert_eq!((a.norm, a.eps, a.rotary, a.mlp), (Norm::RmsNorm, 1e-6, Some(10_000.0), Mlp::SwiGlu));
    }

    #[test]
    fn gpt2_blocks_find_every_tensor() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let p = ParamLayout::for_model(&cfg);
        let b = BlockParams::new(&cfg, &p, 3);
        assert_eq!(b.qkv_w, p.offset("h.3.attn.c_attn.weight"));
        assert_eq!(b.fcproj_b, Some(p.offset("h.3.mlp.c_proj.bias")));
        let m = ModelParams::new(&cfg, &p);
        assert_eq!((m.lm_head, m.wpe), (m.wte, Some(p.offset("wpe.weight"))));
        assert_eq!(Arch::of(&cfg), Arch { norm: Norm::LayerNorm, eps: 1e-5, rotary: None, mlp: Mlp::Gelu });
    }

    #[test]
    fn activations_are_aligned_and_sized() {
        let cfg = ModelConfig::preset("gpt2-124m").unwrap();
        let d = Dims::new(&cfg, 64, 1024, 16384);
        let a = ActLayout::new(&d, &Arch::of(&cfg), ScratchSizes { norm: 1000, bias: 3000, attention: 64 * 12 * 1024 });
        for v in [&a.res, &a.res_mid, &a.ln1, &a.qkv, &a.fch] {
            assert!(v.iter().all(|o| o % ALIGN == 0));
        }
        assert_eq!(a.res.len(), cfg.n_layer + 1);
        // ~22 GiB of activations at the 124M micro-batch, well under the PyTorch reference's 41 GiB peak.
        let gib = a.bytes() as f64 / (1u64 << 30) as f64;
        assert!(gib > 15.0 && gib < 30.0, "{gib} GiB");
        // The Llama twin of the same size holds the same activations, give or take the rotary tables.
        let llama = ModelConfig::preset("llama-124m").unwrap();
        let dl = Dims::new(&llama, 64, 1024, 16384);
        let al =
            ActLayout::new(&dl, &Arch::of(&llama), ScratchSizes { norm: 1000, bias: 3000, attention: 64 * 12 * 1024 });
        assert_eq!(al.bf16_total - a.bf16_total, 64 * 1024 * (4096 - 3072), "dbig holds gate | up");
        assert!(al.rope_cos > 0 && al.rope_sin > al.rope_cos);
    }

    #[test]
    fn rotary_tables_match_the_model_op() {
        let (cos, sin) = rotary_tables(5, 8, 10_000.0);
        assert_eq!(cos.len(), 5 * 4);
        let angle = 3.0f64 * 10_000f64.powf(-2.0 / 8.0);
        assert_eq!((cos[3 * 4 + 1], sin[3 * 4 + 1]), (angle.cos() as f32, angle.sin() as f32));
        assert_eq!((cos[0], sin[0]), (1.0, 0.0));
    }
}
