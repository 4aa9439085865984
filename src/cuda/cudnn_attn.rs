//! Causal attention through cuDNN's SDPA graph (cudnn_attn.cpp, the cuDNN frontend's header-only C++ API over
//! libcudnn 9), for the fused qkv layout (multi-head or grouped-query): the second backend beside
//! [`crate::cuda::flash_attn`], with the same calls, buffers and statistics, so the decoder engine can run either
//! (`[engine] attention = "cudnn"`). Built only with the `cudnn` cargo feature (build.rs compiles the shim and links
//! libcudnn.so.9 and libcudart).
//!
//! # API (as [`crate::cuda::flash_attn::FlashAttn`]'s bf16, head size 64 calls)
//! ```text
//! let att = CudnnAttn::new(&stream)?;                       // a cudnnHandle on `stream`; deterministic backward
//! unsafe { att.forward(AttnFwd { qkv, y, lse }, b, t, heads)? };         // heads: flash_attn::Heads { q: NH, kv: NKV }
//! unsafe { att.backward(AttnBwd { qkv, y, dy, lse, dvec_scratch, dqkv }, b, t, heads)? };   // the scratch is not used
//! att.prepare(b, t, heads)?;                                  // build both graphs now (else on first use)
//! ```
//! Buffers (typed device pointers, C = NH * 64, W = (NH + 2 NKV) * 64, bf16 unless stated): `qkv (B, T, W)`
//! (flash_attn's layout); `y (B, T, C)`; `lse (B, NH, T)` f32, the natural-log logsumexp of the scaled scores per
//! query row (cuDNN's "Stats", the same quantity flash_attn writes); `dy (B, T, C)`; `dqkv (B, T, W)` written
//! whole. cuDNN reads q, k, v and writes dq, dk, dv in place through strides: no copies.
//!
//! Graphs are built once per (B, T, NH, NKV, forward|backward) on first use (tens of milliseconds to seconds: cuDNN
//! may compile kernels at run time) and cached; one device workspace, grown to the largest graph's need, is held
//! by the context (the deterministic backward needs a dP buffer, B * NH * T^2 bf16 at most).
//!
//! Determinism: [`CudnnAttn::new`] asks for the frontend's deterministic SDPA backward
//! (`set_deterministic_algorithm(true)`: on Hopper the dP-workspace kernel, dQ without atomics) and drops engines
//! cuDNN marks NONDETERMINISTIC; [`CudnnAttn::with_determinism`]`(stream, false)` takes cuDNN's default
//! (faster, atomics in dQ). The plan cuDNN chose and why is in [`CudnnAttn::describe`]. Whether two runs give the
//! same bytes is checked on the device by tests/kernels_cudnn_attention.rs, not assumed.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::{Error, Result};
use half::bf16;

use super::flash_attn::{AttnBwd, AttnFwd, Heads};

/// The head size of the GPT-2 calls (`forward` / `backward`), as flash_attn's.
pub const HEAD_SIZE: usize = 64;

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    /// One call's sizes, as cudnn_attn.cpp's `TmAttnShape` (passed by pointer).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Shape {
        pub b: i64,
        pub t: i64,
        pub nh: i64,
        pub nkv: i64,
        pub hs: i64,
    }

    // cudnn_attn.cpp. Every function returns 0 or a status code and fills `msg` (NUL-terminated) on error.
    extern "C" {
        pub fn tm_cudnn_runtime_version() -> i64;
        pub fn tm_cudnn_compiled_version() -> i64;
        pub fn tm_cudnn_frontend_version() -> i64;
        pub fn tm_cudnn_attn_create(
            stream: *mut c_void,
            deterministic: c_int,
            out: *mut *mut c_void,
            msg: *mut c_char,
            msg_len: usize,
        ) -> c_int;
        pub fn tm_cudnn_attn_destroy(ctx: *mut c_void, msg: *mut c_char, msg_len: usize) -> c_int;
        pub fn tm_cudnn_attn_forward(
            ctx: *mut c_void,
            qkv: *const c_void,
            y: *mut c_void,
            stats: *mut f32,
            shape: *const Shape,
            stream: *mut c_void,
            msg: *mut c_char,
            msg_len: usize,
        ) -> c_int;
        pub fn tm_cudnn_attn_backward(
            ctx: *mut c_void,
            qkv: *const c_void,
            y: *const c_void,
            dy: *const c_void,
            stats: *const f32,
            dqkv: *mut c_void,
            shape: *const Shape,
            stream: *mut c_void,
            msg: *mut c_char,
            msg_len: usize,
        ) -> c_int;
        pub fn tm_cudnn_attn_prepare(ctx: *mut c_void, shape: *const Shape, msg: *mut c_char, msg_len: usize) -> c_int;
        pub fn tm_cudnn_attn_describe(ctx: *mut c_void, out: *mut c_char, out_len: usize) -> c_int;
    }
}

/// What the shim's status codes mean (cudnn_attn.cpp).
fn status_name(code: c_int) -> &'static str {
    match code {
        1 => "bad argument",
        2 => "cuDNN error",
        3 => "cuDNN graph error",
        4 => "CUDA error",
        5 => "C++ exception",
        _ => "unknown status",
    }
}

/// Call `f` with a message buffer; a non-zero status becomes an error naming `what` and the shim's message.
fn call(what: impl FnOnce() -> String, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut msg = vec![0 as c_char; 2048];
    let code = f(msg.as_mut_ptr(), msg.len());
    if code == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates what it writes inside the buffer; the buffer starts zeroed, so it is a C
    // string even if the shim wrote nothing.
    let text = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy().into_owned();
    Err(Error::Msg(format!("{}: {} ({code}): {text}", what(), status_name(code))))
}

/// The cuDNN SDPA context for one stream (see the module doc).
pub struct CudnnAttn {
    stream: Arc<CudaStream>,
    ctx: NonNull<c_void>,
    deterministic: bool,
}

// SAFETY: the context is a heap object owned by this value and only touched through its methods; cuDNN handles may
// be used from any thread as long as calls do not overlap, which `&self` methods on a non-Sync type guarantee.
unsafe impl Send for CudnnAttn {}

impl CudnnAttn {
    /// A context on `stream` with the deterministic backward requested.
    pub fn new(stream: &Arc<CudaStream>) -> Result<CudnnAttn> {
        CudnnAttn::with_determinism(stream, true)
    }

    /// A context on `stream`; `deterministic = false` leaves the backward algorithm to cuDNN (benchmarks).
    pub fn with_determinism(stream: &Arc<CudaStream>, deterministic: bool) -> Result<CudnnAttn> {
        bind(stream)?;
        let mut ctx: *mut c_void = std::ptr::null_mut();
        let raw_stream = stream.cu_stream() as *mut c_void;
        // SAFETY: the stream belongs to the context bound above and outlives the handle (we keep an Arc to it);
        // `ctx` is a valid out-pointer; the message buffer is `call`'s.
        call(
            || "creating the cuDNN SDPA context".to_string(),
            |m, n| unsafe { ffi::tm_cudnn_attn_create(raw_stream, deterministic as c_int, &mut ctx, m, n) },
        )?;
        let ctx = NonNull::new(ctx).ok_or_else(|| Error::Msg("cuDNN SDPA: create returned no context".into()))?;
        Ok(CudnnAttn { stream: stream.clone(), ctx, deterministic })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn deterministic(&self) -> bool {
        self.deterministic
    }

    /// f32 elements of scratch the backward needs: none (cuDNN's workspace lives in the context).
    pub fn scratch_len(_b: usize, _t: usize, _nh: usize) -> usize {
        0
    }

    /// (runtime libcudnn, the cudnn.h it was compiled against, cuDNN frontend), e.g. (91900, 91900, 11800).
    pub fn versions() -> (i64, i64, i64) {
        // SAFETY: plain getters without arguments (the runtime one calls cudnnGetVersion, which needs no handle).
        unsafe { (ffi::tm_cudnn_runtime_version(), ffi::tm_cudnn_compiled_version(), ffi::tm_cudnn_frontend_version()) }
    }

    /// Build the forward and backward graphs of (b, t, heads) now instead of on first use.
    pub fn prepare(&self, b: usize, t: usize, heads: Heads) -> Result<()> {
        let shape = check_dims(b, t, heads)?;
        bind(&self.stream)?;
        // SAFETY: the context is live (owned by self); `shape` outlives the call; no device pointers are passed.
        call(
            || format!("cuDNN SDPA: building the graphs for B={b} T={t} {heads:?}"),
            |m, n| unsafe { ffi::tm_cudnn_attn_prepare(self.ctx.as_ptr(), &shape, m, n) },
        )
    }

    /// One line per built graph (shape, cuDNN engine, how it was chosen, workspace), then the workspace held.
    pub fn describe(&self) -> Result<String> {
        let mut out = vec![0 as c_char; 8192];
        // SAFETY: the context is live; the shim writes a NUL-terminated string inside `out`.
        let code = unsafe { ffi::tm_cudnn_attn_describe(self.ctx.as_ptr(), out.as_mut_ptr(), out.len()) };
        // SAFETY: as above (on error the buffer holds the message, also NUL-terminated).
        let text = unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned();
        if code != 0 {
            return Err(Error::Msg(format!("cuDNN SDPA describe: {} ({code}): {text}", status_name(code))));
        }
        Ok(text)
    }

    /// Forward: `y (B, T, C)` and `lse (B, NH, T)` from `qkv (B, T, W)` (module doc).
    ///
    /// # Safety
    /// Each pointer addresses a live device allocation of at least the size the module doc gives for it, in the
    /// context of this object's stream; `y` and `lse` do not overlap `qkv` or each other.
    pub unsafe fn forward(&self, p: AttnFwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let (qkv, y, lse) = (p.qkv.raw(), p.y.raw(), p.lse.raw());
        let ptrs = [("qkv", qkv), ("y", y), ("lse", lse)];
        // SAFETY: the caller vouches for the buffers (this function's contract); `launch` has bound the live context
        // to this stream's CUDA context; the shim only enqueues work on `stream`.
        self.launch("forward", b, t, heads, &ptrs, |ctx, shape, stream, m, n| unsafe {
            ffi::tm_cudnn_attn_forward(ctx, qkv as _, y as _, lse as _, shape, stream, m, n)
        })
    }

    /// Backward: `dqkv (B, T, W)` from `qkv`, the forward's `y` and `lse`, and `dy (B, T, C)`. `dvec_scratch` is
    /// flash_attn's scratch, unused here (any value, null included).
    ///
    /// # Safety
    /// As [`CudnnAttn::forward`]; `lse` holds this backend's forward output for these `qkv`; `dqkv` overlaps none
    /// of the inputs.
    pub unsafe fn backward(&self, p: AttnBwd<bf16>, b: usize, t: usize, heads: Heads) -> Result<()> {
        let (qkv, y, dy, lse, dqkv) = (p.qkv.raw(), p.y.raw(), p.dy.raw(), p.lse.raw(), p.dqkv.raw());
        let ptrs = [("qkv", qkv), ("y", y), ("dy", dy), ("lse", lse), ("dqkv", dqkv)];
        // SAFETY: as in `forward`.
        self.launch("backward", b, t, heads, &ptrs, |ctx, shape, stream, m, n| unsafe {
            let (qkv, y, dy, lse, dqkv) = (qkv as _, y as _, dy as _, lse as _, dqkv as _);
            ffi::tm_cudnn_attn_backward(ctx, qkv, y, dy, lse, dqkv, shape, stream, m, n)
        })
    }

    /// What `forward` and `backward` share: check the shape and the pointers, bind the stream's context, then run
    /// the shim call `f(ctx, shape, stream, msg, msg_len)` (`shape` valid for the call), its errors named "cuDNN SDPA
    /// `pass` ...".
    fn launch(
        &self,
        pass: &str,
        b: usize,
        t: usize,
        heads: Heads,
        ptrs: &[(&str, u64)],
        f: impl FnOnce(*mut c_void, *const ffi::Shape, *mut c_void, *mut c_char, usize) -> c_int,
    ) -> Result<()> {
        let shape = check_dims(b, t, heads)?;
        check_align(ptrs)?;
        bind(&self.stream)?;
        let stream = self.stream.cu_stream() as *mut c_void;
        call(|| format!("cuDNN SDPA {pass} B={b} T={t} {heads:?}"), |m, n| f(self.ctx.as_ptr(), &shape, stream, m, n))
    }
}

impl Drop for CudnnAttn {
    fn drop(&mut self) {
        let _ = bind(&self.stream);
        // SAFETY: the context was created by tm_cudnn_attn_create and is destroyed once, here.
        let r = call(
            || "destroying the cuDNN SDPA context".to_string(),
            |m, n| unsafe { ffi::tm_cudnn_attn_destroy(self.ctx.as_ptr(), m, n) },
        );
        if let Err(e) = r {
            tracing::warn!("{e}");
        }
    }
}

/// Make the stream's CUDA context current on this thread (cuDNN and the CUDA runtime use the current context).
fn bind(stream: &Arc<CudaStream>) -> Result<()> {
    stream.context().bind_to_thread().map_err(|e| Error::Msg(format!("cuDNN SDPA: binding the CUDA context: {e:?}")))
}

/// The shim's shape of a call, checked (head size 64).
fn check_dims(b: usize, t: usize, heads: Heads) -> Result<ffi::Shape> {
    let Heads { q: nh, kv: nkv } = heads;
    if b == 0 || t == 0 || nh == 0 {
        return Err(Error::Msg(format!("cuDNN SDPA over an empty shape: B={b} T={t} NH={nh}")));
    }
    if nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(Error::Msg(format!("cuDNN SDPA: {nkv} key/value heads must divide {nh} query heads")));
    }
    // Element offsets inside cuDNN are 64-bit; keep every extent and the largest buffer (B * T * W) in i64.
    let total = b.checked_mul(t).and_then(|x| x.checked_mul((nh + 2 * nkv) * HEAD_SIZE));
    if total.is_none_or(|x| x > i64::MAX as usize) || t > i32::MAX as usize || nh > i32::MAX as usize {
        return Err(Error::Msg(format!("cuDNN SDPA: B={b} T={t} NH={nh} is too large")));
    }
    Ok(ffi::Shape { b: b as i64, t: t as i64, nh: nh as i64, nkv: nkv as i64, hs: HEAD_SIZE as i64 })
}

/// cuDNN wants 16-byte aligned tensors (the engine's buffers are 256-byte aligned).
fn check_align(ptrs: &[(&str, u64)]) -> Result<()> {
    for &(name, p) in ptrs {
        if p == 0 || p % 16 != 0 {
            return Err(Error::Msg(format!("cuDNN SDPA: {name} = {p:#x} must be a non-null 16-byte aligned pointer")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_pointers_are_checked() {
        assert!(check_dims(1, 1, Heads::mha(1)).is_ok());
        let s = check_dims(2, 8, Heads { q: 32, kv: 8 }).unwrap();
        assert_eq!((s.b, s.t, s.nh, s.nkv, s.hs), (2, 8, 32, 8, 64));
        let e = check_dims(0, 8, Heads::mha(2)).unwrap_err().to_string();
        assert!(e.contains("B=0 T=8 NH=2"), "{e}");
        assert!(check_dims(1, 8, Heads { q: 6, kv: 4 }).is_err());
        assert!(check_dims(usize::MAX / 2, 1 << 12, Heads::mha(64)).is_err());
        assert!(check_align(&[("qkv", 0x1000), ("lse", 0x1010)]).is_ok());
        let e = check_align(&[("lse", 0x1004)]).unwrap_err().to_string();
        assert!(e.contains("lse") && e.contains("16-byte"), "{e}");
        assert_eq!(status_name(3), "cuDNN graph error");
    }
}
