//! GPT-2's forward pass, kernel by kernel (the autograd model's `gpt2.rs` computes the same function):
//!
//! ```text
//! res[0] = wte[idx] + wpe                                           encoder
//! per layer l:
//!   ln1 = LN(res[l])                                               norm (f32 -> bf16)
//!   qkv = ln1 Wqkv^T + bqkv                                        matmul, bias epilogue
//!   atty = attention(qkv)                                          flash attention (+ lse)
//!   res_mid = res[l] + (atty Wproj^T + bproj)                      matmul (bf16, bias), then the residual add
//!   ln2 = LN(res_mid)                                              fused into the LayerNorm after it
//!   fch_gelu = gelu(ln2 Wfc^T + bfc), fch = ln2 Wfc^T + bfc        matmul, GELU_AUX_BIAS epilogue
//!   res[l+1] = res_mid + (fch_gelu Wfcproj^T + bfcproj)            matmul, residual add fused into the next LN
//! lnf = LN(res[L])
//! per chunk of rows: logits = lnf wte^T; loss, and (training) dlogits in place;
//!                    dlnf = dlogits wte, dwte += dlogits^T lnf        (the head's backward, while the chunk is live)
//! ```
//!
//! The classifier's backward runs here, chunk by chunk, so the (B*T, V) logits never exist whole: the backward pass
//! (`backward.rs`) starts from dlnf.

use candle_core::Result;

use super::engine::Gpt2Cuda;
use crate::cuda::blaslt::{Epilogue, Gemm, Ty};
use crate::model::ops::LAYER_NORM_EPS;

impl Gpt2Cuda {
    /// Forward of the uploaded micro-batch; per-row losses in `act.losses`. `dscale: Some(d)` also runs the
    /// classifier's backward with d = d(loss)/d(row loss) and leaves dlnf in `act.dsmall` (training).
    ///
    /// # Safety
    /// A batch of the engine's shape has been uploaded; the buffers are the engine's own.
    pub(super) unsafe fn forward(&mut self, dscale: Option<f32>) -> Result<()> {
        let d = self.dims;
        let (n, c, nh) = (d.n(), d.c, d.nh);
        let eps = LAYER_NORM_EPS as f32;
        let (a, p) = (&self.act, &self.params);
        let (w32, w16) = (&self.bufs.params, &self.bufs.params16);
        let (f, h) = (&self.bufs.act32, &self.bufs.act16);
        let k = &mut self.k;
        let prof = &mut self.prof;

        k.enc.forward(
            self.bufs.tokens.base,
            w32.at(p.offset("wte.weight")),
            w32.at(p.offset("wpe.weight")),
            f.at(a.res[0]),
            d.b,
            d.t,
            c,
        )?;
        prof.mark("encoder fwd")?;
        let l0 = &self.layers[0];
        k.ln.forward(
            f.at(a.res[0]),
            w32.at(l0.ln1_w),
            w32.at(l0.ln1_b),
            h.at(a.ln1[0]),
            f.at(a.ln1_mean[0]),
            f.at(a.ln1_rstd[0]),
            n,
            eps,
        )?;
        prof.mark("layernorm fwd")?;
        // Each projection's bf16 output lands in `proj` (the backward's dres16, free during the forward) and the next
        // LayerNorm adds it to the residual stream as it normalises.
        let proj = h.at(a.dres16);
        let (lnf_w, lnf_b) = (p.offset("ln_f.weight"), p.offset("ln_f.bias"));
        for (l, lp) in self.layers.iter().enumerate() {
            k.blas.matmul(
                &Gemm::linear_forward(h.at(a.ln1[l]), w16.at(lp.qkv_w), h.at(a.qkv[l]), n, c, 3 * c, Ty::Bf16)
                    .with_epilogue(Epilogue::Bias { bias: w16.at(lp.qkv_b), ty: Ty::Bf16 }),
            )?;
            prof.mark("matmul qkv")?;
            k.attn.forward(h.at(a.qkv[l]), h.at(a.atty[l]), f.at(a.lse[l]), d.b, d.t, nh)?;
            prof.mark("attention fwd")?;
            k.blas.matmul(
                &Gemm::linear_forward(h.at(a.atty[l]), w16.at(lp.proj_w), proj, n, c, c, Ty::Bf16)
                    .with_epilogue(Epilogue::Bias { bias: w16.at(lp.proj_b), ty: Ty::Bf16 }),
            )?;
            prof.mark("matmul attn proj")?;
            k.ln.forward_residual(
                (f.at(a.res[l]), proj, f.at(a.res_mid[l])),
                w32.at(lp.ln2_w),
                w32.at(lp.ln2_b),
                h.at(a.ln2[l]),
                f.at(a.ln2_mean[l]),
                f.at(a.ln2_rstd[l]),
                n,
                eps,
            )?;
            prof.mark("residual + layernorm fwd")?;
            let fc = Gemm::linear_forward(h.at(a.ln2[l]), w16.at(lp.fc_w), h.at(a.fch_gelu[l]), n, c, 4 * c, Ty::Bf16);
            if self.opts.gelu_fusion {
                k.blas
                    .matmul(&fc.with_epilogue(Epilogue::GeluAuxBias { bias: w16.at(lp.fc_b), aux: h.at(a.fch[l]) }))?;
            } else {
                let fc = Gemm { d: h.at(a.fch[l]), ..fc };
                k.blas.matmul(&fc.with_epilogue(Epilogue::Bias { bias: w16.at(lp.fc_b), ty: Ty::Bf16 }))?;
                k.gelu.forward(h.at(a.fch[l]), h.at(a.fch_gelu[l]), 4 * n * c)?;
            }
            prof.mark("matmul fc (+gelu)")?;
            k.blas.matmul(
                &Gemm::linear_forward(h.at(a.fch_gelu[l]), w16.at(lp.fcproj_w), proj, n, 4 * c, c, Ty::Bf16)
                    .with_epilogue(Epilogue::Bias { bias: w16.at(lp.fcproj_b), ty: Ty::Bf16 }),
            )?;
            prof.mark("matmul mlp proj")?;
            // The next LayerNorm: the next layer's ln_1, or ln_f after the last layer.
            let (nw, nb, ny, nm, nr) = match self.layers.get(l + 1) {
                Some(next) => (next.ln1_w, next.ln1_b, a.ln1[l + 1], a.ln1_mean[l + 1], a.ln1_rstd[l + 1]),
                None => (lnf_w, lnf_b, a.lnf, a.lnf_mean, a.lnf_rstd),
            };
            k.ln.forward_residual(
                (f.at(a.res_mid[l]), proj, f.at(a.res[l + 1])),
                w32.at(nw),
                w32.at(nb),
                h.at(ny),
                f.at(nm),
                f.at(nr),
                n,
                eps,
            )?;
            prof.mark("residual + layernorm fwd")?;
        }

        let wte = p.offset("wte.weight");
        let mut r0 = 0;
        while r0 < n {
            let rows = d.chunk.min(n - r0);
            let (lnf, logits) = (h.at(a.lnf + r0 * c), h.at(a.logits));
            k.blas.matmul(&Gemm::linear_forward(lnf, w16.at(wte), logits, rows, c, d.v, Ty::Bf16))?;
            prof.mark("matmul lm_head")?;
            let targets = self.bufs.targets.at(r0);
            k.cls.forward_backward(logits, targets, f.at(a.losses + r0), rows, d.v, dscale.unwrap_or(0.0))?;
            prof.mark("classifier")?;
            if dscale.is_some() {
                k.blas.matmul(&Gemm::linear_dinput(logits, w16.at(wte), h.at(a.dsmall + r0 * c), rows, c, d.v))?;
                prof.mark("matmul lm_head dX")?;
                k.blas.matmul(&Gemm::linear_dweight(logits, lnf, self.bufs.grads.at(wte), rows, c, d.v))?;
                prof.mark("matmul lm_head dW")?;
            }
            r0 += rows;
        }
        Ok(())
    }
}
