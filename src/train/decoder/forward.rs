//! The decoder's forward pass, kernel by kernel (the autograd models `gpt2.rs` and `llama.rs` compute the same
//! functions). `norm` is LayerNorm (GPT-2) or RMSNorm (Llama, Qwen2); bracketed steps run only where the
//! architecture has them (`layout::Arch`; a bias where the row's tensors have one: GPT-2 everywhere, Qwen2 on q, k,
//! v):
//!
//! ```text
//! res[0] = wte[idx] [+ wpe]                                         encoder (learned positions: GPT-2)
//! per layer l:
//!   ln1 = norm(res[l])                                             norm (f32 -> bf16)
//!   qkv = ln1 Wqkv^T [+ bqkv]                                      matmul, bias epilogue; Llama: q|k|v in one product
//!   [q, k = rope(q, k)]                                            rotary positions, in place (Llama)
//!   atty = attention(qkv)                                          flash attention / cuDNN (+ lse; GQA heads)
//!   res_mid = res[l] + (atty Wproj^T [+ bproj])                    matmul (bf16), then the residual add
//!   ln2 = norm(res_mid)                                            fused into the norm after it
//!   GELU:   fch = ln2 Wfc^T + bfc, fch_act = gelu(fch)             matmul, GELU_AUX_BIAS epilogue
//!   SwiGLU: fch = ln2 [Wg | Wu]^T, fch_act = silu(g) * u           one matmul for gate and up, then swiglu.cu
//!   res[l+1] = res_mid + (fch_act Wfcproj^T [+ bfcproj])           matmul, residual add fused into the next norm
//! lnf = norm(res[L])
//! per chunk of rows: logits = lnf Whead^T; loss, and (training) dlogits in place;
//!                    dlnf = dlogits Whead, dWhead += dlogits^T lnf    (the head's backward, while the chunk is live)
//! ```
//!
//! The classifier's backward runs here, chunk by chunk, so the (B*T, V) logits never exist whole: the backward pass
//! (`backward.rs`) starts from dlnf.

use candle_core::Result;

use super::engine::DecoderEngine;
use super::layout::{Mlp, Norm};
use crate::cuda::blaslt::{BiasPtr, Epilogue, Gemm};
use crate::cuda::flash_attn::{AttnFwd, Heads};
use crate::cuda::norm::NormFwd;
use crate::cuda::rope::RopeShape;

impl DecoderEngine {
    /// Forward of the uploaded micro-batch; per-row losses in `act.losses`. `dscale: Some(d)` also runs the
    /// classifier's backward with d = d(loss)/d(row loss) and leaves dlnf in `act.dsmall` (training).
    ///
    /// # Safety
    /// A batch of the engine's shape has been uploaded; the buffers are the engine's own.
    pub(super) unsafe fn forward(&mut self, dscale: Option<f32>) -> Result<()> {
        let d = self.dims;
        let (n, c) = (d.n(), d.c);
        let arch = self.arch;
        let eps = arch.eps as f32;
        // The LayerNorm mean (RMSNorm has none) and a bias of the norms and linear layers, where the model has them.
        let mean = |off: usize| (arch.norm == Norm::LayerNorm).then_some(off);
        let (a, top) = (&self.act, &self.top);
        let (w32, w16) = (&self.masters, &self.bufs.params16);
        let (f, h) = (&self.bufs.act32, &self.bufs.act16);
        let bias = |off: Option<usize>, gemm: Gemm| match off {
            Some(o) => gemm.with_epilogue(Epilogue::Bias { bias: BiasPtr::Bf16(w16.at(o)) }),
            None => gemm,
        };
        let heads = Heads { q: d.nh, kv: d.nkv };
        let rope = RopeShape { n, t: d.t, heads: d.nh + d.nkv, hs: d.hs(), ld: d.qkv() };
        let rope_tables = (f.at(a.rope_cos), f.at(a.rope_sin));
        let k = &mut self.k;
        let prof = &mut self.prof;

        k.enc.forward(
            self.bufs.tokens.base,
            w32.at(top.wte),
            top.wpe.map(|o| w32.at(o)),
            f.at(a.res[0]),
            (d.b, d.t, c),
        )?;
        prof.mark("encoder fwd")?;
        let l0 = &self.layers[0];
        let out = NormFwd {
            w: w32.at(l0.norm1_w),
            b: l0.norm1_b.map(|o| w32.at(o)),
            y: h.at(a.ln1[0]),
            mean: mean(a.ln1_mean[0]).map(|o| f.at(o)),
            rstd: f.at(a.ln1_rstd[0]),
        };
        k.norm.forward(f.at(a.res[0]), out, n, eps)?;
        prof.mark("norm fwd")?;
        // Each projection's bf16 output lands in `proj` (the backward's dres16, free during the forward) and the next
        // norm adds it to the residual stream as it normalises.
        let proj = h.at(a.dres16);
        for (l, lp) in self.layers.iter().enumerate() {
            k.blas.matmul(&bias(
                lp.qkv_b,
                Gemm::linear_forward(h.at(a.ln1[l]), w16.at(lp.qkv_w), h.at(a.qkv[l]), n, c, d.qkv()),
            ))?;
            prof.mark("matmul qkv")?;
            if arch.rotary.is_some() {
                k.rope.apply(h.at(a.qkv[l]), rope_tables, rope, false)?;
                prof.mark("rope fwd")?;
            }
            k.attn.forward(
                AttnFwd { qkv: h.at(a.qkv[l]), y: h.at(a.atty[l]), lse: f.at(a.lse[l]) },
                d.b,
                d.t,
                heads,
            )?;
            prof.mark("attention fwd")?;
            k.blas.matmul(&bias(lp.proj_b, Gemm::linear_forward(h.at(a.atty[l]), w16.at(lp.proj_w), proj, n, c, c)))?;
            prof.mark("matmul attn proj")?;
            let out = NormFwd {
                w: w32.at(lp.norm2_w),
                b: lp.norm2_b.map(|o| w32.at(o)),
                y: h.at(a.ln2[l]),
                mean: mean(a.ln2_mean[l]).map(|o| f.at(o)),
                rstd: f.at(a.ln2_rstd[l]),
            };
            k.norm.forward_residual((f.at(a.res[l]), proj, f.at(a.res_mid[l])), out, n, eps)?;
            prof.mark("residual + norm fwd")?;
            let fc = Gemm::linear_forward(h.at(a.ln2[l]), w16.at(lp.fc_w), h.at(a.fch_act[l]), n, c, d.fc);
            match (arch.mlp, lp.fc_b) {
                (Mlp::Gelu, Some(fc_b)) if self.opts.gelu_fusion => {
                    k.blas
                        .matmul(&fc.with_epilogue(Epilogue::GeluAuxBias { bias: w16.at(fc_b), aux: h.at(a.fch[l]) }))?;
                }
                (Mlp::Gelu, fc_b) => {
                    k.blas.matmul(&bias(fc_b, fc.writing(h.at(a.fch[l]))))?;
                    k.gelu.forward(h.at(a.fch[l]), h.at(a.fch_act[l]), n * d.hidden)?;
                }
                (Mlp::SwiGlu, fc_b) => {
                    k.blas.matmul(&bias(fc_b, fc.writing(h.at(a.fch[l]))))?;
                    k.swiglu.forward(h.at(a.fch[l]), h.at(a.fch_act[l]), n, d.hidden)?;
                }
            }
            prof.mark("matmul fc (+activation)")?;
            k.blas.matmul(&bias(
                lp.fcproj_b,
                Gemm::linear_forward(h.at(a.fch_act[l]), w16.at(lp.fcproj_w), proj, n, d.hidden, c),
            ))?;
            prof.mark("matmul mlp proj")?;
            // The next norm: the next layer's first, or the final one after the last layer.
            let (nw, nb, ny, nm, nr) = match self.layers.get(l + 1) {
                Some(next) => (next.norm1_w, next.norm1_b, a.ln1[l + 1], a.ln1_mean[l + 1], a.ln1_rstd[l + 1]),
                None => (top.normf_w, top.normf_b, a.lnf, a.lnf_mean, a.lnf_rstd),
            };
            let out = NormFwd {
                w: w32.at(nw),
                b: nb.map(|o| w32.at(o)),
                y: h.at(ny),
                mean: mean(nm).map(|o| f.at(o)),
                rstd: f.at(nr),
            };
            k.norm.forward_residual((f.at(a.res_mid[l]), proj, f.at(a.res[l + 1])), out, n, eps)?;
            prof.mark("residual + norm fwd")?;
        }

        let (head, dhead) = (w16.at(top.lm_head), self.bufs.grads.at(top.lm_head));
        let mut r0 = 0;
        while r0 < n {
            let rows = d.chunk.min(n - r0);
            let (lnf, logits) = (h.at(a.lnf + r0 * c), h.at(a.logits));
            k.blas.matmul(&Gemm::linear_forward(lnf, head, logits, rows, c, d.v))?;
            prof.mark("matmul lm_head")?;
            let targets = self.bufs.targets.at(r0);
            k.cls.forward_backward(logits, targets, f.at(a.losses + r0), rows, d.v, dscale.unwrap_or(0.0))?;
            prof.mark("classifier")?;
            if dscale.is_some() {
                k.blas.matmul(&Gemm::linear_dinput(logits, head, h.at(a.dsmall + r0 * c), rows, c, d.v))?;
                prof.mark("matmul lm_head dX")?;
                k.blas.matmul(&Gemm::linear_dweight(logits, lnf, dhead, rows, c, d.v))?;
                prof.mark("matmul lm_head dW")?;
            }
            r0 += rows;
        }
        Ok(())
    }
}
