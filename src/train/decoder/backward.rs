//! The decoder's backward pass, kernel by kernel, in the reverse order of `forward.rs`, accumulating every parameter
//! gradient into the f32 `grads` buffer (weight gradients by matmuls with beta = 1, bias gradients by `bias_grad`,
//! the norms' by their own reduction, the embeddings' by grouped sums; no atomics). Bracketed steps run only where
//! the architecture has them.
//!
//! ```text
//! dres = normf backward(dlnf)                          dres (f32) is the running residual gradient, dres16 its copy
//! per layer l, last first:
//!   dWfcproj += dres16^T fch_act;  [dbfcproj += colsum(dres16)]
//!   GELU:   dfch = (dres16 Wfcproj) * gelu'(fch)       matmul, DGELU epilogue                  -> dbig
//!   SwiGLU: dact = dres16 Wfcproj                      matmul, over fch_act (read only by the dW above)
//!           [dg | du] = swiglu backward(dact, fch)                                             -> dbig
//!   dWfc += dfch^T ln2;  [dbfc += colsum(dfch)];  dln2 = dfch Wfc                                 -> dsmall
//!   dres += norm2 backward(dln2)                       now d(res_mid)
//!   dWproj += dres16^T atty;  [dbproj += colsum(dres16)];  datty = dres16 Wproj                   -> dsmall
//!   dqkv = attention backward(datty)                   (GQA: dk, dv summed over each group)     -> dbig
//!   [dq, dk = rope backward(dq, dk)]                   the transposed rotation, in place
//!   dWqkv += dqkv^T ln1;  [dbqkv += colsum(dqkv)];  dln1 = dqkv Wqkv                             -> dsmall
//!   dres += norm1 backward(dln1)                       now d(res[l])
//! dwte += grouped sums of dres;  [dwpe += batch sums of dres]
//! ```

use candle_core::Result;
use half::bf16;

use super::engine::{DecoderEngine, Kernels};
use super::layout::{Mlp, Norm};
use super::profile::Profiler;
use crate::cuda::blaslt::{Epilogue, Gemm};
use crate::cuda::devptr::DevPtr;
use crate::cuda::encoder::DeviceIdGroups;
use crate::cuda::flash_attn::{AttnBwd, Heads};
use crate::cuda::norm::NormBwd;
use crate::cuda::rope::RopeShape;

/// A linear layer's weight gradient (`dw += dout^T inp`, the product `dweight` spells) and, with a bias, its bias
/// gradient (`db += colsum(dout)`): from the product's BGRADB epilogue into `scratch`, then added, or by
/// `bias_grad.cu`.
///
/// # Safety
/// `dweight`'s pointers are valid for its shape; `db` holds OC f32 and `scratch` at least `BiasGrad::scratch_len(OC)`.
/// The profile marks the product (`labels.0`) and a separate bias-gradient kernel (`labels.1`) apart.
unsafe fn dweight_and_bias(
    k: &mut Kernels,
    prof: &mut Profiler,
    labels: (&'static str, &'static str),
    epilogue: bool,
    dweight: Gemm,
    db: Option<DevPtr<f32>>,
    scratch: DevPtr<f32>,
) -> Result<()> {
    let (n, oc, dout): (usize, usize, DevPtr<bf16>) = (dweight.k, dweight.n, dweight.b());
    match db {
        None => {
            k.blas.matmul(&dweight)?;
            prof.mark(labels.0)
        }
        Some(db) if epilogue => {
            k.blas.matmul(&dweight.with_epilogue(Epilogue::BGradB { grad: scratch }))?;
            prof.mark(labels.0)?;
            k.bias.add(scratch, db, oc)?;
            prof.mark(labels.1)
        }
        Some(db) => {
            k.blas.matmul(&dweight)?;
            prof.mark(labels.0)?;
            k.bias.accumulate(dout, db, scratch, n, oc)?;
            prof.mark(labels.1)
        }
    }
}

impl DecoderEngine {
    /// Backward of the micro-batch whose training forward (`forward(Some(..))`) just ran.
    ///
    /// # Safety
    /// The training forward of the uploaded batch ran last on the stream.
    pub(super) unsafe fn backward(&mut self) -> Result<()> {
        let d = self.dims;
        let (n, c) = (d.n(), d.c);
        let arch = self.arch;
        let (a, top) = (&self.act, &self.top);
        let (w32, w16, g) = (&self.masters, &self.bufs.params16, &self.bufs.grads);
        let (f, h) = (&self.bufs.act32, &self.bufs.act16);
        let (dres, dres16, dbig, dsmall) = (f.at(a.dres), h.at(a.dres16), h.at(a.dbig), h.at(a.dsmall));
        let (norm_scratch, bias_scratch) = (f.at(a.norm_scratch), f.at(a.bias_scratch));
        let mean = |off: usize| (arch.norm == Norm::LayerNorm).then(|| f.at(off));
        let grad = |off: Option<usize>| off.map(|o| g.at(o));
        // A norm's backward from dsmall, added into the f32 residual gradient: the norm of input `x` with weight
        // `w`, bias `b` and the statistics its forward saved.
        let norm_bwd = |x: usize, w: usize, b: Option<usize>, mean_off: usize, rstd: usize| NormBwd {
            dy: dsmall,
            x: f.at(x),
            w: w32.at(w),
            mean: mean(mean_off),
            rstd: f.at(rstd),
            dres,
            dres16,
            dw: g.at(w),
            db: grad(b),
            scratch: norm_scratch,
        };
        let heads = Heads { q: d.nh, kv: d.nkv };
        let rope = RopeShape { n, t: d.t, heads: d.nh + d.nkv, hs: d.hs(), ld: d.qkv() };
        let rope_tables = (f.at(a.rope_cos), f.at(a.rope_sin));
        let k = &mut self.k;
        let prof = &mut self.prof;
        let bias_epi = self.opts.bias_grad_epilogue;

        self.bufs.zero(dres, n * c)?;
        prof.mark("zero dres")?;
        k.norm.backward(norm_bwd(a.res[d.l], top.normf_w, top.normf_b, a.lnf_mean, a.lnf_rstd), n)?;
        prof.mark("norm bwd")?;

        for (l, lp) in self.layers.iter().enumerate().rev() {
            // MLP projection: res[l+1] = fch_act Wfcproj^T [+ bfcproj] + res_mid.
            dweight_and_bias(
                k,
                prof,
                ("matmul dW mlp proj", "bias grad mlp proj"),
                bias_epi,
                Gemm::linear_dweight(dres16, h.at(a.fch_act[l]), g.at(lp.fcproj_w), n, d.hidden, c),
                grad(lp.fcproj_b),
                bias_scratch,
            )?;
            let dact = Gemm::linear_dinput(dres16, w16.at(lp.fcproj_w), dbig, n, d.hidden, c);
            match arch.mlp {
                Mlp::Gelu if self.opts.gelu_fusion => {
                    k.blas.matmul(&dact.with_epilogue(Epilogue::DGelu { aux: h.at(a.fch[l]) }))?;
                }
                Mlp::Gelu => {
                    k.blas.matmul(&dact)?;
                    k.gelu.backward(h.at(a.fch[l]), dbig, dbig, n * d.hidden)?;
                }
                Mlp::SwiGlu => {
                    // The activation's gradient overwrites the activation (its only reader, the dW above, has run).
                    k.blas.matmul(&dact.writing(h.at(a.fch_act[l])))?;
                    k.swiglu.backward(h.at(a.fch[l]), h.at(a.fch_act[l]), dbig, n, d.hidden)?;
                }
            }
            prof.mark("matmul dX mlp proj (+activation)")?;
            // MLP input: fch = ln2 Wfc^T [+ bfc].
            dweight_and_bias(
                k,
                prof,
                ("matmul dW fc", "bias grad fc"),
                bias_epi,
                Gemm::linear_dweight(dbig, h.at(a.ln2[l]), g.at(lp.fc_w), n, c, d.fc),
                grad(lp.fc_b),
                bias_scratch,
            )?;
            k.blas.matmul(&Gemm::linear_dinput(dbig, w16.at(lp.fc_w), dsmall, n, c, d.fc))?;
            prof.mark("matmul dX fc")?;
            k.norm.backward(norm_bwd(a.res_mid[l], lp.norm2_w, lp.norm2_b, a.ln2_mean[l], a.ln2_rstd[l]), n)?;
            prof.mark("norm bwd")?;

            // Attention projection: res_mid = atty Wproj^T [+ bproj] + res[l].
            dweight_and_bias(
                k,
                prof,
                ("matmul dW attn proj", "bias grad attn proj"),
                bias_epi,
                Gemm::linear_dweight(dres16, h.at(a.atty[l]), g.at(lp.proj_w), n, c, c),
                grad(lp.proj_b),
                bias_scratch,
            )?;
            k.blas.matmul(&Gemm::linear_dinput(dres16, w16.at(lp.proj_w), dsmall, n, c, c))?;
            prof.mark("matmul dX attn proj")?;
            let att = AttnBwd {
                qkv: h.at(a.qkv[l]),
                y: h.at(a.atty[l]),
                dy: dsmall,
                lse: f.at(a.lse[l]),
                dvec_scratch: f.at(a.att_scratch),
                dqkv: dbig,
            };
            k.attn.backward(att, d.b, d.t, heads)?;
            prof.mark("attention bwd")?;
            if arch.rotary.is_some() {
                k.rope.apply(dbig, rope_tables, rope, true)?;
                prof.mark("rope bwd")?;
            }

            // qkv projection: qkv = ln1 Wqkv^T [+ bqkv].
            dweight_and_bias(
                k,
                prof,
                ("matmul dW qkv", "bias grad qkv"),
                bias_epi,
                Gemm::linear_dweight(dbig, h.at(a.ln1[l]), g.at(lp.qkv_w), n, c, d.qkv()),
                grad(lp.qkv_b),
                bias_scratch,
            )?;
            k.blas.matmul(&Gemm::linear_dinput(dbig, w16.at(lp.qkv_w), dsmall, n, c, d.qkv()))?;
            prof.mark("matmul dX qkv")?;
            k.norm.backward(norm_bwd(a.res[l], lp.norm1_w, lp.norm1_b, a.ln1_mean[l], a.ln1_rstd[l]), n)?;
            prof.mark("norm bwd")?;
        }

        let b = &self.bufs;
        let groups = DeviceIdGroups {
            rows: b.groups.base,
            start: b.groups.at(b.groups_start),
            id: b.groups.at(b.groups_id),
            n_groups: self.n_groups,
        };
        k.enc.backward(groups, dres, g.at(top.wte), grad(top.wpe), (d.b, d.t, c))?;
        prof.mark("encoder bwd")?;
        Ok(())
    }
}
