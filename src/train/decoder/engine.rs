//! The engine object: kernels, buffers, the parameter mirror, and what the trainer asks of it besides the step
//! (evaluation loss, optimizer state in and out).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::attention::Attention;
use super::buffers::{Buffers, LOSS_ACC};
use super::layout::{rotary_tables, ActLayout, Arch, BlockParams, Dims, ModelParams, Norm, ParamLayout, ScratchSizes};
use super::options::{EngineOptions, GemmTableChoice};
use super::profile::Profiler;
use crate::cuda::activation::Gelu;
use crate::cuda::adamw::AdamWKernels;
use crate::cuda::bias_grad::BiasGrad;
use crate::cuda::blaslt::{AlgoChoice, BlasLt};
use crate::cuda::classifier::Classifier;
use crate::cuda::devptr::DevPtr;
use crate::cuda::encoder::{Encoder, IdGroups};
use crate::cuda::flash_attn::{FlashAttn, Heads};
use crate::cuda::gemm_table::{self, GemmTable, TunedShape};
use crate::cuda::norm::Norm as NormKernels;
use crate::cuda::rope::Rope;
use crate::cuda::swiglu::SwiGlu;
use crate::model::{LanguageModel, ModelConfig};
use crate::shards::loader::Batch;
use crate::train::optim::{AdamWConfig, OptimError};

pub(super) struct Kernels {
    pub blas: BlasLt,
    /// The blocks' norm (LayerNorm or RMSNorm, `Arch::norm`).
    pub norm: NormKernels,
    pub rope: Rope,
    pub swiglu: SwiGlu,
    pub cls: Classifier,
    pub enc: Encoder,
    pub bias: BiasGrad,
    pub gelu: Gelu,
    pub adamw: AdamWKernels,
    pub attn: Attention,
}

pub struct DecoderEngine {
    pub(super) cfg: ModelConfig,
    /// The model's row of the architecture table: what the forward and backward run.
    pub(super) arch: Arch,
    pub(super) dims: Dims,
    pub(super) opts: EngineOptions,
    pub(super) params: ParamLayout,
    pub(super) top: ModelParams,
    pub(super) layers: Vec<BlockParams>,
    pub(super) act: ActLayout,
    pub(super) bufs: Buffers,
    pub(super) k: Kernels,
    pub(super) adam: AdamWConfig,
    /// AdamW updates applied so far.
    pub(super) steps: u64,
    /// Micro-steps accumulated since `begin_step`.
    pub(super) micro_steps: usize,
    /// Id groups of the uploaded training batch (the embedding backward's grid).
    pub(super) n_groups: usize,
    /// Per-kernel CUDA-event timing (`TOKENMILL_ENGINE_PROFILE=1`).
    pub(super) prof: Profiler,
    /// The candle model whose f32 Vars are the master weights (the engine updates them in place), and each
    /// parameter's device address in it, by its offset in the parameter layout.
    pub(super) mirror: Box<dyn LanguageModel>,
    pub(super) masters: Masters,
    /// Where the products' cuBLASLt algorithms come from, in words (`gemm_algorithms`).
    pub(super) gemm_source: String,
}

/// Where each parameter's f32 master weights live: in the candle model's own Vars, so the engine keeps no second
/// copy (4 bytes a parameter: 0.5 GB at 124M, 4.3 GB at 1B) and the model needs no refresh after a step. Looked up
/// by the tensor's offset in the parameter layout, which is how `BlockParams` and `ModelParams` name tensors.
pub(super) struct Masters {
    /// (layout offset, device address, elements), sorted by offset.
    slots: Vec<(usize, DevPtr<f32>, usize)>,
}

impl Masters {
    /// The device address of the master weights of the tensor at layout offset `off` (a tensor's start; anything
    /// else is a bug in the engine).
    pub fn at(&self, off: usize) -> DevPtr<f32> {
        match self.slots.binary_search_by_key(&off, |s| s.0) {
            Ok(i) => self.slots[i].1,
            Err(_) => panic!("no parameter tensor starts at layout offset {off}"),
        }
    }

    /// (layout offset, device address, elements) of every tensor.
    pub fn iter(&self) -> impl Iterator<Item = &(usize, DevPtr<f32>, usize)> {
        self.slots.iter()
    }
}

/// The device address of a contiguous f32 Var's first element.
fn var_ptr(v: &Var, stream: &Arc<CudaStream>) -> Result<DevPtr<f32>> {
    if v.dtype() != DType::F32 {
        candle_core::bail!("cuda engine: master weights must be f32, got {:?}", v.dtype());
    }
    DevPtr::of_tensor(v.as_tensor(), stream)
}

/// The cuBLASLt algorithm choice `choice` resolves to on `stream`'s GPU and this cuBLASLt, and what it is in words
/// (which shipped tables, which file, or the heuristic and why).
fn gemm_algorithms(choice: &GemmTableChoice, stream: &Arc<CudaStream>) -> Result<(AlgoChoice, String)> {
    let gpu = || stream.context().name().map_err(candle_core::Error::wrap);
    let version = BlasLt::version();
    Ok(match choice {
        GemmTableChoice::Heuristic => (AlgoChoice::Heuristic, "cuBLASLt heuristic (gemm_table = \"heuristic\")".into()),
        GemmTableChoice::File(path) => {
            let table = GemmTable::load(path).map_err(candle_core::Error::wrap)?;
            table.check_machine(path, &gpu()?, version).map_err(candle_core::Error::wrap)?;
            let what = format!("gemm table {} ({} shapes)", path.display(), table.shapes.len());
            (AlgoChoice::Table(table), what)
        }
        GemmTableChoice::Auto => {
            let gpu = gpu()?;
            match gemm_table::shipped_for(&gpu, version).map_err(candle_core::Error::wrap)? {
                Some((table, names)) => {
                    let what = format!("shipped gemm tables {} ({} shapes)", names.join(" + "), table.shapes.len());
                    (AlgoChoice::Table(table), what)
                }
                None => (
                    AlgoChoice::Heuristic,
                    format!(
                        "cuBLASLt heuristic: no shipped table was tuned on {gpu} with cuBLASLt {version} (`tokenmill \
                         bench gemm-tune` makes one)"
                    ),
                ),
            }
        }
    })
}

impl DecoderEngine {
    /// An engine for `model` (a decoder of the architecture table on a CUDA device, fp32 master weights) at
    /// micro-batch `(b, t)`. The engine starts from the model's current weights and keeps the model as its mirror.
    pub fn new(
        model: Box<dyn LanguageModel>,
        device: &Device,
        (b, t): (usize, usize),
        adam: AdamWConfig,
        opts: EngineOptions,
    ) -> Result<DecoderEngine> {
        let cfg = model.config().clone();
        if let Some(why) = super::unsupported(&cfg, device.is_cuda(), true) {
            candle_core::bail!("{why}");
        }
        if t == 0 || t > cfg.block_size || b == 0 {
            candle_core::bail!("cuda engine: micro-batch ({b}, {t}) with block size {}", cfg.block_size);
        }
        let stream = device.as_cuda_device()?.cuda_stream();
        let arch = Arch::of(&cfg);
        let dims = Dims::new(&cfg, b, t, opts.classifier_chunk);
        let params = ParamLayout::for_model(&cfg);
        let top = ModelParams::new(&cfg, &params);
        let layers = (0..cfg.n_layer).map(|l| BlockParams::new(&cfg, &params, l)).collect();
        let heads = Heads { q: dims.nh, kv: dims.nkv };
        let (algos, gemm_source) = gemm_algorithms(&opts.gemm_table, &stream)?;
        tracing::info!("cuda engine products: {gemm_source}");
        let k = Kernels {
            blas: BlasLt::new(stream.clone(), algos)?,
            norm: NormKernels::new(&stream, cfg.n_embd, arch.norm == Norm::RmsNorm)?,
            rope: Rope::new(&stream)?,
            swiglu: SwiGlu::new(&stream)?,
            cls: Classifier::new(&stream)?,
            enc: Encoder::new(&stream)?,
            bias: BiasGrad::new(&stream)?,
            gelu: Gelu::new(&stream)?,
            adamw: AdamWKernels::new(&stream)?,
            attn: Attention::new(&stream, opts.attention, (b, t, heads))?,
        };
        let n = dims.n();
        let scratch = ScratchSizes {
            norm: k.norm.scratch_len(n),
            bias: BiasGrad::scratch_len(dims.fc.max(dims.qkv())),
            attention: FlashAttn::scratch_len(b, t, cfg.n_head),
        };
        let act = ActLayout::new(&dims, &arch, scratch);
        let bufs = Buffers::new(&stream, &params, &act, n, cfg.vocab_size)?;
        if let Some(theta) = arch.rotary {
            let (cos, sin) = rotary_tables(t, dims.hs(), theta);
            // SAFETY: the rotary tables' ranges were sized for (T, HS/2) f32 each by the layout.
            unsafe {
                bufs.upload(bufs.act32.at(act.rope_cos), &cos)?;
                bufs.upload(bufs.act32.at(act.rope_sin), &sin)?;
            }
            stream.synchronize().map_err(candle_core::Error::wrap)?;
        }

        let named = model.parameters();
        if named.len() != params.slots.len() {
            candle_core::bail!(
                "cuda engine: the model has {} parameters, the layout {}",
                named.len(),
                params.slots.len()
            );
        }
        let mut masters = Vec::with_capacity(named.len());
        for ((name, var), slot) in named.iter().zip(&params.slots) {
            if name != &slot.name || var.dims() != slot.shape.as_slice() {
                candle_core::bail!(
                    "cuda engine: parameter {name} {:?} does not match the layout's {} {:?}",
                    var.dims(),
                    slot.name,
                    slot.shape
                );
            }
            masters.push((slot.offset, var_ptr(var, &stream)?, slot.len));
        }
        masters.sort_by_key(|m| m.0);
        let mut engine = DecoderEngine {
            cfg,
            arch,
            dims,
            opts,
            params,
            top,
            layers,
            act,
            bufs,
            k,
            adam,
            steps: 0,
            micro_steps: 0,
            n_groups: 0,
            prof: Profiler::new(&stream),
            mirror: model,
            masters: Masters { slots: masters },
            gemm_source,
        };
        engine.cast_weights()?;
        Ok(engine)
    }

    /// The bf16 working copy of the weights from the master weights (the optimizer keeps it current after that).
    fn cast_weights(&mut self) -> Result<()> {
        // SAFETY: each master address holds `len` f32 (a contiguous Var checked in `new`), and the bf16 buffer's range
        // at the tensor's layout offset holds `len` bf16.
        unsafe {
            for &(off, src, len) in self.masters.iter() {
                self.k.adamw.cast_bf16(src, self.bufs.params16.at(off), len)?;
            }
        }
        Ok(())
    }

    pub fn model(&self) -> &dyn LanguageModel {
        &*self.mirror
    }

    /// From now on, time every cuBLASLt candidate of each product shape met for the first time (`reps` runs each)
    /// and keep the fastest. The products run many times over, so the step's numbers are garbage: for
    /// `bench gemm-tune`, which then reads `tuned_gemms`.
    pub fn tune_gemms(&mut self, reps: usize) -> Result<()> {
        let stream = self.k.blas.stream().clone();
        self.k.blas = BlasLt::new(stream, AlgoChoice::Tune { reps })?;
        Ok(())
    }

    /// What `tune_gemms` found, per shape, with its calls since then.
    pub fn tuned_gemms(&self) -> Vec<TunedShape> {
        self.k.blas.tuned()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// The options as they resolved on this GPU and binary: the attention backend that runs (not `auto`) and where
    /// the products' algorithms come from (which shipped tables, which file, or the heuristic).
    pub fn describe(&self) -> String {
        let o = &self.opts;
        format!(
            "attention {:?}, gelu_fusion {}, bias_grad_epilogue {}, classifier_chunk {}, products: {}",
            o.attention.resolved(),
            o.gelu_fusion,
            o.bias_grad_epilogue,
            o.classifier_chunk,
            self.gemm_source
        )
    }

    pub fn micro_batch(&self) -> (usize, usize) {
        (self.dims.b, self.dims.t)
    }

    pub fn decay_summary(&self) -> ((usize, usize), (usize, usize)) {
        self.params.decay_summary()
    }

    /// Device bytes the engine holds (besides its mirror model).
    pub fn bytes(&self) -> usize {
        self.bufs.bytes()
    }

    pub fn optimizer_steps(&self) -> u64 {
        self.steps
    }

    /// Check a host batch has the engine's shape.
    pub(super) fn check_batch(&self, batch: &Batch) -> Result<()> {
        let (b, t) = (self.dims.b, self.dims.t);
        if batch.batch_size != b || batch.seq_len != t || batch.x.len() != b * t || batch.y.len() != b * t {
            candle_core::bail!(
                "cuda engine: a batch of ({}, {}) with {} / {} ids; the engine was sized for ({b}, {t})",
                batch.batch_size,
                batch.seq_len,
                batch.x.len(),
                batch.y.len()
            );
        }
        if let Some((i, &y)) = batch.y.iter().enumerate().find(|(_, &y)| y as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "cuda engine: target id {y} at position {i} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    /// Upload one micro-batch's ids and targets (and, when training, the id groups of its embedding backward).
    pub(super) fn upload_batch(&mut self, batch: &Batch, train: bool) -> Result<()> {
        self.check_batch(batch)?;
        let groups = if train { Some(IdGroups::new(&batch.x, self.cfg.vocab_size)?) } else { None };
        let b = &self.bufs;
        // SAFETY: tokens and targets hold N u32 (checked above); the groups fit their reserved ranges (rows N,
        // starts <= V + 1, ids <= V).
        unsafe {
            b.upload(b.tokens.base, &batch.x)?;
            b.upload(b.targets.base, &batch.y)?;
            if let Some(g) = &groups {
                b.upload(b.groups.base, &g.rows)?;
                b.upload(b.groups.at(b.groups_start), &g.start)?;
                b.upload(b.groups.at(b.groups_id), &g.id)?;
            }
        }
        self.n_groups = groups.map_or(0, |g| g.id.len());
        Ok(())
    }

    /// Mean loss of one batch, no gradients (validation).
    pub fn eval_loss(&mut self, batch: &Batch) -> Result<f32> {
        self.upload_batch(batch, false)?;
        let n = self.dims.n();
        let mut out = [0f32];
        // SAFETY: the forward reads and writes the engine's own buffers; LOSS_ACC is one f32.
        unsafe {
            let acc = self.bufs.scalars.at(LOSS_ACC);
            self.bufs.zero(acc, 1)?;
            self.forward(None)?;
            self.k.cls.sum_into(self.bufs.act32.at(self.act.losses), acc, n, 1.0 / n as f32)?;
            self.bufs.download(&mut out, acc)?;
        }
        Ok(out[0])
    }

    /// The master weights as named tensors (copies of the model's Vars, which the engine updates in place).
    pub fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        self.mirror.parameters().into_iter().map(|(n, v)| Ok((n, v.as_tensor().copy()?))).collect()
    }

    /// The accumulated gradients as named tensors (checkpoint names and shapes): for tests against the autograd
    /// engine.
    pub fn gradients(&self) -> Result<Vec<(String, Tensor)>> {
        self.export(&self.bufs.grads, "")
    }

    /// Copies of the `slot`-shaped ranges of an f32 parameter-layout buffer, named `<param><suffix>`.
    fn export(&self, buf: &super::buffers::Buf<f32>, suffix: &str) -> Result<Vec<(String, Tensor)>> {
        let device = self.mirror_device()?;
        let mut out = Vec::with_capacity(self.params.slots.len());
        for slot in &self.params.slots {
            let t = Tensor::zeros(slot.shape.as_slice(), DType::F32, &device)?;
            // SAFETY: t is a fresh contiguous f32 tensor of the slot's length; the source range is the slot's.
            unsafe { self.bufs.copy(DevPtr::of_tensor(&t, &self.bufs.stream)?, buf.at(slot.offset), slot.len)? };
            out.push((format!("{}{suffix}", slot.name), t));
        }
        Ok(out)
    }

    /// Run the evaluation forward of `batch` and copy out the activations of layer 0, the last residual, the final
    /// norm, the first chunk of logits and the per-row losses, named as in `layout::ActLayout` (`res0`, `ln1`,
    /// `qkv`, `atty`, `res_mid`, `ln2`, `fch`, `fch_act`, `res1`, `resL`, `lnf`, `logits`, `losses`), shaped
    /// (rows, width): the per-kernel device check holds each against its reference computed from the previous one.
    pub fn forward_activations(&mut self, batch: &Batch) -> Result<Vec<(String, Tensor)>> {
        self.upload_batch(batch, false)?;
        // SAFETY: a batch of the engine's shape was uploaded.
        unsafe { self.forward(None)? };
        let device = self.mirror_device()?;
        let (d, a) = (self.dims, &self.act);
        let (n, c) = (d.n(), d.c);
        let f32s = [
            ("res0", a.res[0], c),
            ("res_mid", a.res_mid[0], c),
            ("res1", a.res[1], c),
            ("resL", a.res[d.l], c),
            ("losses", a.losses, 1),
        ];
        let bf16s = [
            ("ln1", a.ln1[0], c),
            ("qkv", a.qkv[0], d.qkv()),
            ("atty", a.atty[0], c),
            ("ln2", a.ln2[0], c),
            ("fch", a.fch[0], d.fc),
            ("fch_act", a.fch_act[0], d.hidden),
            ("lnf", a.lnf, c),
        ];
        let mut out = Vec::new();
        let b = &self.bufs;
        for (name, off, w) in f32s {
            let t = Tensor::zeros((n, w), DType::F32, &device)?;
            // SAFETY: the source range is the activation's (n x w f32); t is fresh and contiguous.
            unsafe { b.copy(DevPtr::of_tensor(&t, &b.stream)?, b.act32.at(off), n * w)? };
            out.push((name.to_string(), t));
        }
        for (name, off, w) in bf16s {
            let t = Tensor::zeros((n, w), DType::BF16, &device)?;
            // SAFETY: as above, n x w bf16.
            unsafe { b.copy(DevPtr::of_tensor(&t, &b.stream)?, b.act16.at(off), n * w)? };
            out.push((name.to_string(), t));
        }
        let rows = d.chunk.min(n);
        let t = Tensor::zeros((rows, d.v), DType::BF16, &device)?;
        // SAFETY: the logits buffer holds chunk x V bf16 (the last chunk's; the test uses one chunk).
        unsafe { b.copy(DevPtr::of_tensor(&t, &b.stream)?, b.act16.at(a.logits), rows * d.v)? };
        out.push(("logits".to_string(), t));
        b.stream.synchronize().map_err(candle_core::Error::wrap)?;
        Ok(out)
    }

    /// AdamW's moments as named tensors (`<param>.m`, `<param>.v`), as `AdamW::state_tensors` names them.
    pub fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        // Interleaved per parameter (m, v), as AdamW::state_tensors orders them.
        let (m, v) = (self.export(&self.bufs.m, ".m")?, self.export(&self.bufs.v, ".v")?);
        Ok(m.into_iter().zip(v).flat_map(|(a, b)| [a, b]).collect())
    }

    /// Restore what `optimizer_state` saved (from either engine's checkpoint) and the update count.
    pub fn load_optimizer_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> std::result::Result<(), OptimError> {
        for slot in &self.params.slots {
            for (suffix, buf) in [("m", &self.bufs.m), ("v", &self.bufs.v)] {
                let key = format!("{}.{suffix}", slot.name);
                let t = tensors.get(&key).ok_or_else(|| OptimError::MissingState(key.clone()))?;
                if t.dims() != slot.shape.as_slice() {
                    return Err(OptimError::StateShape {
                        name: key,
                        got: t.dims().to_vec(),
                        expected: slot.shape.clone(),
                    });
                }
                let t = t.to_dtype(DType::F32)?.to_device(&self.mirror_device()?)?.contiguous()?;
                // SAFETY: t is contiguous f32 of the slot's length; the destination range is the slot's.
                unsafe { self.bufs.copy(buf.at(slot.offset), DevPtr::of_tensor(&t, &self.bufs.stream)?, slot.len)? };
                // The copy is stream-ordered; keep `t` alive until it has run.
                self.bufs.stream.synchronize().map_err(candle_core::Error::wrap)?;
            }
        }
        self.steps = steps;
        Ok(())
    }

    fn mirror_device(&self) -> Result<Device> {
        let (_, v) = self
            .mirror
            .parameters()
            .into_iter()
            .next()
            .ok_or_else(|| candle_core::Error::Msg("no parameters".into()))?;
        Ok(v.device().clone())
    }
}
