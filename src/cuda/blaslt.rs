//! cuBLASLt matmuls with epilogues, for the decoder engine, through cudarc's `cublaslt::result` layer (the
//! safe `CudaBlasLT` lacks the aux pointer, DGELU, mixed bf16-in/f32-out and algorithm caching).
//!
//! Conventions are cuBLAS's: column-major, `D (m x n) = op(A) (m x k) op(B) (k x n) [+ C] [epilogue]`. A row-major
//! `(rows, cols)` buffer is a column-major `(cols x rows)` matrix with `ld = cols`, so the engine's row-major
//! `out (N, OC) = inp (N, IC) @ W^T` (W `(OC, IC)` as nn.Linear stores it) is `m = OC, n = N, k = IC`, A = W
//! transposed, B = inp (see `Gemm::linear_forward` and friends, which spell the three products of a linear layer).
//! A and B are always bf16; D is bf16 or f32 (f32 for the residual stream and the weight gradients); accumulation
//! and scaling are f32.
//!
//! Each distinct shape (dims, transposes, leading dims, types, epilogue kind) gets its descriptors and an algorithm
//! once, cached: the heuristic's first, or the one a tuned table names for the shape (`AlgoChoice`, `gemm_table`); per call only the epilogue pointers are set on the cached descriptor
//! (cuBLASLt reads them when `cublasLtMatmul` is called, so updating them for the next call is safe). One 32 MiB
//! workspace, as llm.c. Split-K reductions "in place" in the output are excluded (they may sum in varying order),
//! so every product is deterministic.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::{Error, Result};
use half::bf16;

use super::devptr::DevPtr;
use super::gemm_table::{self, GemmShape, GemmTable, TunedShape, CANDIDATES};

/// Workspace for the split-K and stream-K algorithms (llm.c's size).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Element type of D (and C), or of a bias vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    Bf16,
    F32,
}

/// An element type D (and C) may have: what `DevPtr<T>` a product writes.
pub trait GemmOut {
    const TY: Ty;
}

impl GemmOut for bf16 {
    const TY: Ty = Ty::Bf16;
}

impl GemmOut for f32 {
    const TY: Ty = Ty::F32;
}

/// A bias vector of either type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasPtr {
    Bf16(DevPtr<bf16>),
    F32(DevPtr<f32>),
}

impl BiasPtr {
    fn ty(self) -> Ty {
        match self {
            BiasPtr::Bf16(_) => Ty::Bf16,
            BiasPtr::F32(_) => Ty::F32,
        }
    }

    fn raw(self) -> u64 {
        match self {
            BiasPtr::Bf16(p) => p.raw(),
            BiasPtr::F32(p) => p.raw(),
        }
    }
}

impl Ty {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Ty::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            Ty::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// What happens to `A B (+ C)` before it is stored in D.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    None,
    /// `+ bias[row]` (length m), bf16 or f32.
    Bias {
        bias: BiasPtr,
    },
    /// `gelu(A B + bias)` stored in D, and `A B + bias` stored in `aux` (bf16, `m x n`, ld m) for the backward.
    GeluAuxBias {
        bias: DevPtr<bf16>,
        aux: DevPtr<bf16>,
    },
    /// `(A B) * gelu'(aux)`: the GELU backward fused into the product that computes its input gradient.
    DGelu {
        aux: DevPtr<bf16>,
    },
    /// Also write the sums of op(B) over k (one per column of D, f32) to `grad`: a linear layer's bias gradient
    /// computed by its weight-gradient product, which reads dout anyway. Overwrites `grad`.
    BGradB {
        grad: DevPtr<f32>,
    },
}

impl Epilogue {
    /// The epilogue's name in a gemm table.
    fn name(kind: u8) -> &'static str {
        ["none", "bias_bf16", "bias_f32", "gelu_aux_bias", "dgelu", "bgradb"][kind as usize]
    }

    fn kind(&self) -> u8 {
        match self {
            Epilogue::None => 0,
            Epilogue::Bias { bias: BiasPtr::Bf16(_) } => 1,
            Epilogue::Bias { bias: BiasPtr::F32(_) } => 2,
            Epilogue::GeluAuxBias { .. } => 3,
            Epilogue::DGelu { .. } => 4,
            Epilogue::BGradB { .. } => 5,
        }
    }
}

/// One product `D = op(A) op(B) [+ C]` in cuBLAS terms (column-major, see the module doc); the matrices 256-byte
/// aligned (what the heuristic assumes by default). A and B are bf16; D and C, whose type `d_type` says, are kept
/// as raw addresses and set only through the typed constructors and [`Gemm::writing`].
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    a: DevPtr<bf16>,
    pub lda: usize,
    b: DevPtr<bf16>,
    pub ldb: usize,
    d: u64,
    pub ldd: usize,
    d_type: Ty,
    /// `Some(c)`: add C (D's type and layout; `c == d` accumulates in place). `None`: overwrite D.
    c: Option<u64>,
    pub epilogue: Epilogue,
}

impl Gemm {
    /// `D (m, n; ldd) = op(A) (m, k) op(B) (k, n)`, each operand given as (transposed, matrix, leading dimension);
    /// no C, no epilogue.
    fn product<D: GemmOut>(
        (m, n, k): (usize, usize, usize),
        (trans_a, a, lda): (bool, DevPtr<bf16>, usize),
        (trans_b, b, ldb): (bool, DevPtr<bf16>, usize),
        d: DevPtr<D>,
        ldd: usize,
    ) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            a,
            lda,
            b,
            ldb,
            d: d.raw(),
            ldd,
            d_type: D::TY,
            c: None,
            epilogue: Epilogue::None,
        }
    }

    /// Forward of a linear layer on row-major buffers: `out (N, OC) = inp (N, IC) @ w (OC, IC)^T`, `out` bf16 or
    /// f32.
    pub fn linear_forward<D: GemmOut>(
        inp: DevPtr<bf16>,
        w: DevPtr<bf16>,
        out: DevPtr<D>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Gemm {
        Gemm::product((oc, n, ic), (true, w, ic), (false, inp, ic), out, oc)
    }

    /// Input gradient of a linear layer: `dinp (N, IC) = dout (N, OC) @ w (OC, IC)`.
    pub fn linear_dinput(
        dout: DevPtr<bf16>,
        w: DevPtr<bf16>,
        dinp: DevPtr<bf16>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Gemm {
        Gemm::product((ic, n, oc), (false, w, ic), (false, dout, oc), dinp, ic)
    }

    /// Weight gradient of a linear layer, accumulated in f32: `dw (OC, IC) += dout (N, OC)^T @ inp (N, IC)`.
    pub fn linear_dweight(
        dout: DevPtr<bf16>,
        inp: DevPtr<bf16>,
        dw: DevPtr<f32>,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Gemm {
        Gemm { c: Some(dw.raw()), ..Gemm::product((ic, oc, n), (false, inp, ic), (true, dout, oc), dw, ic) }
    }

    pub fn with_epilogue(mut self, e: Epilogue) -> Gemm {
        self.epilogue = e;
        self
    }

    /// The same product written to `d` instead (D's type is `d`'s; a C, if any, is kept and must match).
    pub fn writing<D: GemmOut>(mut self, d: DevPtr<D>) -> Gemm {
        assert!(self.c.is_none() || D::TY == self.d_type, "cuBLASLt: C must have D's type");
        self.d = d.raw();
        self.d_type = D::TY;
        self
    }

    /// B, the bf16 matrix the product reads on the right (a linear layer's dout in `linear_dweight`).
    pub fn b(&self) -> DevPtr<bf16> {
        self.b
    }

    fn key(&self) -> Key {
        Key {
            dims: [self.m, self.n, self.k, self.lda, self.ldb, self.ldd],
            trans: (self.trans_a, self.trans_b),
            d_type: self.d_type,
            has_c: self.c.is_some(),
            epilogue: self.epilogue.kind(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    dims: [usize; 6],
    trans: (bool, bool),
    d_type: Ty,
    has_c: bool,
    epilogue: u8,
}

impl Key {
    /// The shape as a gemm table names it.
    fn shape(&self) -> GemmShape {
        let [m, n, k, lda, ldb, ldd] = self.dims;
        GemmShape {
            m,
            n,
            k,
            lda,
            ldb,
            ldd,
            trans_a: self.trans.0,
            trans_b: self.trans.1,
            d_f32: self.d_type == Ty::F32,
            accumulate: self.has_c,
            epilogue: Epilogue::name(self.epilogue).to_string(),
        }
    }
}

/// How the algorithm of a shape met for the first time is chosen.
pub enum AlgoChoice {
    /// The heuristic's first.
    Heuristic,
    /// The position a tuning run recorded for the shape (`gemm_table`); the heuristic's first where it has none.
    Table(GemmTable),
    /// Time every candidate on the call's own operands (`reps` runs after one untimed) and keep
    /// `gemm_table::choose`'s pick. Products run many times over, accumulating ones too: only for `bench gemm-tune`,
    /// whose numbers are thrown away.
    Tune { reps: usize },
}

/// Descriptors and the chosen algorithm of one shape (handles: copying one does not copy what it points to).
#[derive(Clone, Copy)]
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// The cuBLASLt handle, the workspace and the per-shape plans of one stream.
pub struct BlasLt {
    handle: sys::cublasLtHandle_t,
    pref: sys::cublasLtMatmulPreference_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    plans: HashMap<Key, Plan>,
    choice: AlgoChoice,
    /// Tuning only: each tuned shape's finding, and how many times each shape was called.
    tuned: Vec<(Key, TunedShape)>,
    calls: HashMap<Key, usize>,
}

fn lt_err(what: &str) -> impl FnOnce(result::CublasError) -> Error + '_ {
    move |e| Error::Msg(format!("cuBLASLt {what}: {e:?}"))
}

unsafe fn set_desc<T>(desc: sys::cublasLtMatmulDesc_t, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    result::set_matmul_desc_attribute(desc, attr, v as *const T as *const c_void, std::mem::size_of::<T>())
        .map_err(lt_err("set matmul attribute"))
}

impl BlasLt {
    /// `cublasLtGetVersion()`: with the GPU's name, what a gemm table is valid for.
    pub fn version() -> usize {
        // SAFETY: a plain query without arguments.
        unsafe { sys::cublasLtGetVersion() }
    }

    pub fn new(stream: Arc<CudaStream>, choice: AlgoChoice) -> Result<BlasLt> {
        let handle = result::create_handle().map_err(lt_err("create handle"))?;
        let pref = result::create_matmul_pref().map_err(lt_err("create preference"))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(Error::wrap)?;
        let workspace_ptr = {
            let (p, _sync) = workspace.device_ptr(&stream);
            p
        };
        // SAFETY: pref is a live descriptor; the values are the attributes' documented types.
        unsafe {
            let ws = WORKSPACE_BYTES as u64;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(lt_err("set workspace preference"))?;
            // No in-place split-K reduction: its partial sums may land in varying order.
            let schemes = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32
                | sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE as u32;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                &schemes as *const u32 as *const c_void,
                4,
            )
            .map_err(lt_err("set reduction preference"))?;
        }
        Ok(BlasLt {
            handle,
            pref,
            stream,
            workspace,
            workspace_ptr,
            plans: HashMap::new(),
            choice,
            tuned: Vec::new(),
            calls: HashMap::new(),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// What a tuning run found so far, with each shape's calls since the engine was built.
    pub fn tuned(&self) -> Vec<TunedShape> {
        let calls = |k: &Key| self.calls.get(k).copied().unwrap_or(0);
        self.tuned.iter().map(|(k, t)| TunedShape { calls: calls(k), ..t.clone() }).collect()
    }

    fn plan(&mut self, g: &Gemm) -> Result<&Plan> {
        let key = g.key();
        if let AlgoChoice::Tune { .. } = self.choice {
            *self.calls.entry(key).or_default() += 1;
        }
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(g)?;
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    /// Up to `CANDIDATES` algorithms for the descriptors, the heuristic's order (the same request every time, so a
    /// position means the same algorithm on the same GPU and library).
    ///
    /// # Safety
    /// The descriptors are live.
    unsafe fn candidates(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        a: sys::cublasLtMatrixLayout_t,
        b: sys::cublasLtMatrixLayout_t,
        d: sys::cublasLtMatrixLayout_t,
    ) -> std::result::Result<Vec<sys::cublasLtMatmulAlgo_t>, result::CublasError> {
        // SAFETY: the results are plain C structs that the call fills in; `count` says how many.
        let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); CANDIDATES];
        let mut count = 0;
        sys::cublasLtMatmulAlgoGetHeuristic(
            self.handle,
            desc,
            a,
            b,
            d,
            d,
            self.pref,
            CANDIDATES as i32,
            found.as_mut_ptr(),
            &mut count,
        )
        .result()?;
        found.truncate(count.max(0) as usize);
        let ok = sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
        let algos: Vec<_> = found.into_iter().filter(|r| r.state == ok).map(|r| r.algo).collect();
        if algos.is_empty() {
            return Err(result::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED));
        }
        Ok(algos)
    }

    /// Microseconds per call of `g` with `algo`: one untimed run, then `reps` between two events.
    ///
    /// # Safety
    /// As `matmul`, and the descriptors are `g`'s.
    unsafe fn time(&self, p: &Plan, g: &Gemm, reps: usize) -> Result<f64> {
        self.launch(p, g)?;
        let ev = |s: &Arc<CudaStream>| s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::wrap);
        let start = ev(&self.stream)?;
        for _ in 0..reps {
            self.launch(p, g)?;
        }
        let end = ev(&self.stream)?;
        let ms = start.elapsed_ms(&end).map_err(Error::wrap)? as f64;
        Ok(ms * 1e3 / reps.max(1) as f64)
    }

    fn make_plan(&mut self, g: &Gemm) -> Result<Plan> {
        let layout = |ty: Ty, rows: usize, cols: usize, ld: usize| {
            result::create_matrix_layout(ty.cuda(), rows as u64, cols as u64, ld as i64).map_err(lt_err("layout"))
        };
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let a = layout(Ty::Bf16, ar, ac, g.lda)?;
        let b = layout(Ty::Bf16, br, bc, g.ldb)?;
        let d = layout(g.d_type, g.m, g.n, g.ldd)?;
        let desc =
            result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .map_err(lt_err("create matmul descriptor"))?;
        use sys::cublasLtEpilogue_t as E;
        use sys::cublasLtMatmulDescAttributes_t as A;
        // SAFETY: desc is live; each value has the attribute's documented type (i32 enums, u64 pointers, i64 ld).
        unsafe {
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &(g.trans_a as i32))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &(g.trans_b as i32))?;
            let epi = match g.epilogue {
                Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
                Epilogue::Bias { .. } => E::CUBLASLT_EPILOGUE_BIAS,
                Epilogue::GeluAuxBias { .. } => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
                Epilogue::DGelu { .. } => E::CUBLASLT_EPILOGUE_DGELU,
                Epilogue::BGradB { .. } => E::CUBLASLT_EPILOGUE_BGRADB,
            };
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &(epi as i32))?;
            match g.epilogue {
                Epilogue::Bias { bias } => {
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(bias.ty().cuda() as i32))?
                }
                Epilogue::GeluAuxBias { .. } => {
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(Ty::Bf16.cuda() as i32))?;
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(g.m as i64))?;
                }
                Epilogue::DGelu { .. } => set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(g.m as i64))?,
                Epilogue::BGradB { .. } => {
                    set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(Ty::F32.cuda() as i32))?
                }
                Epilogue::None => {}
            }
            self.set_pointers(desc, g)?;
            let algos = self.candidates(desc, a, b, d).map_err(|e| {
                Error::Msg(format!(
                    "cuBLASLt has no algorithm for m={} n={} k={} trans=({}, {}) ld=({}, {}, {}) D={:?} C={} \
                     epilogue={:?}: {e:?}",
                    g.m,
                    g.n,
                    g.k,
                    g.trans_a,
                    g.trans_b,
                    g.lda,
                    g.ldb,
                    g.ldd,
                    g.d_type,
                    g.c.is_some(),
                    g.epilogue
                ))
            })?;
            let key = g.key();
            let pick = match &self.choice {
                AlgoChoice::Heuristic => 0,
                AlgoChoice::Table(t) => t.algo(&key.shape()).unwrap_or(0),
                AlgoChoice::Tune { reps } => {
                    let reps = *reps;
                    let mut us = Vec::with_capacity(algos.len());
                    for &algo in &algos {
                        // A candidate that fails to run is never chosen (NaN).
                        us.push(self.time(&Plan { desc, a, b, d, algo }, g, reps).unwrap_or(f64::NAN));
                    }
                    let i = gemm_table::choose(&us);
                    let found = TunedShape {
                        shape: key.shape(),
                        algo: i,
                        offered: algos.len(),
                        calls: 0,
                        default_us: us[0],
                        chosen_us: us[i],
                    };
                    self.tuned.push((key, found));
                    i
                }
            };
            let Some(&algo) = algos.get(pick) else {
                candle_core::bail!(
                    "gemm table: shape {:?} names the heuristic's algorithm {pick}, but it offers {} here",
                    key.shape(),
                    algos.len()
                )
            };
            Ok(Plan { desc, a, b, d, algo })
        }
    }

    /// # Safety
    /// `desc` is live.
    unsafe fn set_pointers(&self, desc: sys::cublasLtMatmulDesc_t, g: &Gemm) -> Result<()> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        match g.epilogue {
            Epilogue::None => {}
            Epilogue::Bias { bias } => set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.raw())?,
            Epilogue::GeluAuxBias { bias, aux } => {
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.raw())?;
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux.raw())?;
            }
            Epilogue::DGelu { aux } => set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux.raw())?,
            Epilogue::BGradB { grad } => set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &grad.raw())?,
        }
        Ok(())
    }

    /// Enqueue `g` on the stream.
    ///
    /// # Safety
    /// Every pointer of `g` addresses device memory of this context large enough for its matrix (and vector) under
    /// the given dims and leading dimensions, and stays valid until the stream has run the product.
    pub unsafe fn matmul(&mut self, g: &Gemm) -> Result<()> {
        // The heuristic assumes 256-byte aligned matrices unless told otherwise (its default preference).
        for (what, p) in [("A", g.a.raw()), ("B", g.b.raw()), ("C", g.c.unwrap_or(g.d)), ("D", g.d)] {
            if p % 256 != 0 {
                candle_core::bail!("cuBLASLt matmul: {what} at {p:#x} is not 256-byte aligned");
            }
        }
        let plan = *self.plan(g)?;
        self.launch(&plan, g)
    }

    /// Set `g`'s pointers on the plan's descriptor and enqueue the product.
    ///
    /// # Safety
    /// As `matmul`; the plan was made for `g`'s shape.
    unsafe fn launch(&self, plan: &Plan, g: &Gemm) -> Result<()> {
        let (handle, ws, ws_len) = (self.handle, self.workspace_ptr, WORKSPACE_BYTES);
        let cu_stream = self.stream.cu_stream() as sys::cudaStream_t;
        let (desc, a_l, b_l, d_l, algo) = (plan.desc, plan.a, plan.b, plan.d, plan.algo);
        self.set_pointers(desc, g)?;
        let alpha = 1f32;
        let beta = if g.c.is_some() { 1f32 } else { 0f32 };
        let c = g.c.unwrap_or(g.d);
        result::matmul(
            handle,
            desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            g.a.raw() as *const c_void,
            a_l,
            g.b.raw() as *const c_void,
            b_l,
            c as *const c_void,
            d_l,
            g.d as *mut c_void,
            d_l,
            &algo,
            ws as *mut c_void,
            ws_len,
            cu_stream,
        )
        .map_err(lt_err("matmul"))
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: every handle below was created by this object and is destroyed once; the stream is synchronised
        // first so no enqueued product still uses the workspace or a descriptor.
        let _ = self.stream.synchronize();
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = result::destroy_matrix_layout(p.a);
                let _ = result::destroy_matrix_layout(p.b);
                let _ = result::destroy_matrix_layout(p.d);
                let _ = result::destroy_matmul_desc(p.desc);
            }
            let _ = result::destroy_matmul_pref(self.pref);
            let _ = result::destroy_handle(self.handle);
        }
        let _ = &self.workspace;
    }
}
