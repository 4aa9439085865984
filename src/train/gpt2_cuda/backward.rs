//! GPT-2's backward pass, kernel by kernel, in the reverse order of `forward.rs`, accumulating every parameter
//! gradient into the f32 `grads` buffer (weight gradients by matmuls with beta = 1, bias gradients by
//! `bias_grad`, LayerNorm's by its own reduction, the embeddings' by grouped sums; no atomics).
//!
//! ```text
//! dres = LN_f backward(dlnf)                           dres (f32) is the running residual gradient, dres16 its copy
//! per layer l, last first:
//!   dWfcproj += dres16^T fch_gelu;  dbfcproj += colsum(dres16)
//!   dfch = (dres16 Wfcproj) * gelu'(fch)               matmul, DGELU epilogue                  -> dbig
//!   dWfc += dfch^T ln2;  dbfc += colsum(dfch);  dln2 = dfch Wfc                                    -> dsmall
//!   dres += LN2 backward(dln2)                         now d(res_mid)
//!   dWproj += dres16^T atty;  dbproj += colsum(dres16);  datty = dres16 Wproj                      -> dsmall
//!   dqkv = attention backward(datty)                                                           -> dbig
//!   dWqkv += dqkv^T ln1;  dbqkv += colsum(dqkv);  dln1 = dqkv Wqkv                                -> dsmall
//!   dres += LN1 backward(dln1)                         now d(res[l])
//! dwte += grouped sums of dres;  dwpe += batch sums of dres
//! ```

use candle_core::Result;

use super::engine::{Gpt2Cuda, Kernels};
use crate::cuda::blaslt::{Epilogue, Gemm};

/// A linear layer's weight gradient (`dw += dout^T inp`, the product `dweight` spells) and its bias gradient
/// (`db += colsum(dout)`): from the product's BGRADB epilogue into `scratch`, then added, or by `bias_grad.cu`.
///
/// # Safety
/// `dweight`'s pointers are valid for its shape; `db` holds OC f32 and `scratch` at least `BiasGrad::scratch_len(OC)`.
unsafe fn dweight_and_bias(k: &mut Kernels, epilogue: bool, dweight: Gemm, db: u64, scratch: u64) -> Result<()> {
    let (n, oc, dout) = (dweight.k, dweight.n, dweight.b);
    if epilogue {
        k.blas.matmul(&dweight.with_epilogue(Epilogue::BGradB { grad: scratch }))?;
        k.bias.add(scratch, db, oc)
    } else {
        k.blas.matmul(&dweight)?;
        k.bias.accumulate(dout, db, scratch, n, oc)
    }
}

impl Gpt2Cuda {
    /// Backward of the micro-batch whose training forward (`forward(Some(..))`) just ran.
    ///
    /// # Safety
    /// The training forward of the uploaded batch ran last on the stream.
    pub(super) unsafe fn backward(&mut self) -> Result<()> {
        let d = self.dims;
        let (n, c, nh) = (d.n(), d.c, d.nh);
        let (a, p) = (&self.act, &self.params);
        let (w32, w16, g) = (&self.bufs.params, &self.bufs.params16, &self.bufs.grads);
        let (f, h) = (&self.bufs.act32, &self.bufs.act16);
        let (dres, dres16, dbig, dsmall) = (f.at(a.dres), h.at(a.dres16), h.at(a.dbig), h.at(a.dsmall));
        let (ln_scratch, bias_scratch) = (f.at(a.ln_scratch), f.at(a.bias_scratch));
        let k = &mut self.k;
        let prof = &mut self.prof;
        let bias_epi = self.opts.bias_grad_epilogue;

        self.bufs.zero(dres, 4 * n * c)?;
        prof.mark("zero dres")?;
        let (lnf_w, lnf_b) = (p.offset("ln_f.weight"), p.offset("ln_f.bias"));
        k.ln.backward(
            dsmall,
            f.at(a.res[d.l]),
            w32.at(lnf_w),
            f.at(a.lnf_mean),
            f.at(a.lnf_rstd),
            dres,
            dres16,
            g.at(lnf_w),
            g.at(lnf_b),
            ln_scratch,
            n,
        )?;
        prof.mark("layernorm bwd")?;

        for (l, lp) in self.layers.iter().enumerate().rev() {
            // MLP projection: res[l+1] = fch_gelu Wfcproj^T + bfcproj + res_mid.
            dweight_and_bias(
                k,
                bias_epi,
                Gemm::linear_dweight(dres16, h.at(a.fch_gelu[l]), g.at(lp.fcproj_w), n, 4 * c, c),
                g.at(lp.fcproj_b),
                bias_scratch,
            )?;
            prof.mark("matmul dW + db mlp proj")?;
            let dfc = Gemm::linear_dinput(dres16, w16.at(lp.fcproj_w), dbig, n, 4 * c, c);
            if self.opts.gelu_fusion {
                k.blas.matmul(&dfc.with_epilogue(Epilogue::DGelu { aux: h.at(a.fch[l]) }))?;
                prof.mark("matmul dX mlp proj (+dgelu)")?;
            } else {
                k.blas.matmul(&dfc)?;
                k.gelu.backward(h.at(a.fch[l]), dbig, dbig, 4 * n * c)?;
                prof.mark("matmul dX mlp proj (+dgelu)")?;
            }
            // MLP input: fch = ln2 Wfc^T + bfc.
            dweight_and_bias(
                k,
                bias_epi,
                Gemm::linear_dweight(dbig, h.at(a.ln2[l]), g.at(lp.fc_w), n, c, 4 * c),
                g.at(lp.fc_b),
                bias_scratch,
            )?;
            prof.mark("matmul dW + db fc")?;
            k.blas.matmul(&Gemm::linear_dinput(dbig, w16.at(lp.fc_w), dsmall, n, c, 4 * c))?;
            prof.mark("matmul dX fc")?;
            k.ln.backward(
                dsmall,
                f.at(a.res_mid[l]),
                w32.at(lp.ln2_w),
                f.at(a.ln2_mean[l]),
                f.at(a.ln2_rstd[l]),
                dres,
                dres16,
                g.at(lp.ln2_w),
                g.at(lp.ln2_b),
                ln_scratch,
                n,
            )?;
            prof.mark("layernorm bwd")?;

            // Attention projection: res_mid = atty Wproj^T + bproj + res[l].
            dweight_and_bias(
                k,
                bias_epi,
                Gemm::linear_dweight(dres16, h.at(a.atty[l]), g.at(lp.proj_w), n, c, c),
                g.at(lp.proj_b),
                bias_scratch,
            )?;
            prof.mark("matmul dW + db attn proj")?;
            k.blas.matmul(&Gemm::linear_dinput(dres16, w16.at(lp.proj_w), dsmall, n, c, c))?;
            prof.mark("matmul dX attn proj")?;
            k.attn.backward(
                h.at(a.qkv[l]),
                h.at(a.atty[l]),
                dsmall,
                f.at(a.lse[l]),
                f.at(a.att_scratch),
                dbig,
                d.b,
                d.t,
                nh,
            )?;
            prof.mark("attention bwd")?;

            // qkv projection: qkv = ln1 Wqkv^T + bqkv.
            dweight_and_bias(
                k,
                bias_epi,
                Gemm::linear_dweight(dbig, h.at(a.ln1[l]), g.at(lp.qkv_w), n, c, 3 * c),
                g.at(lp.qkv_b),
                bias_scratch,
            )?;
            prof.mark("matmul dW + db qkv")?;
            k.blas.matmul(&Gemm::linear_dinput(dbig, w16.at(lp.qkv_w), dsmall, n, c, 3 * c))?;
            prof.mark("matmul dX qkv")?;
            k.ln.backward(
                dsmall,
                f.at(a.res[l]),
                w32.at(lp.ln1_w),
                f.at(a.ln1_mean[l]),
                f.at(a.ln1_rstd[l]),
                dres,
                dres16,
                g.at(lp.ln1_w),
                g.at(lp.ln1_b),
                ln_scratch,
                n,
            )?;
            prof.mark("layernorm bwd")?;
        }

        let b = &self.bufs;
        let groups = (b.groups.base, b.groups.at(b.groups_start), b.groups.at(b.groups_id), self.n_groups);
        k.enc.backward(groups, dres, g.at(p.offset("wte.weight")), g.at(p.offset("wpe.weight")), d.b, d.t, c)?;
        prof.mark("encoder bwd")?;
        Ok(())
    }
}
