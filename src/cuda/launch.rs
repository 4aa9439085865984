//! The one way tokenmill loads its kernels' PTX (build.rs compiles each `src/cuda/<op>.cu` to `$OUT_DIR/<op>.ptx`,
//! which that op's launcher `src/cuda/<op>.rs` alone embeds) into a CUDA context and launches them, for both callers
//! of the kernel layer:
//! - each launcher loads its file as a [`Module`] into a stream once, naming every kernel it launches, and launches
//!   one way: `module.args(name)` (a [`Launch`]), the kernel's arguments pushed in order (typed device pointers,
//!   `devptr::DevPtr<T>`, and scalars), then [`go`] with the grid;
//! - the engine builds its launchers on its stream; the candle ops keep one per candle device through
//!   [`per_device`] (loaded on first use and kept for the process, as candle keeps its own kernel modules).

use std::any::Any;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{Error, Result};

/// The named kernels of one PTX file, loaded once.
pub struct Module {
    file: &'static str,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    funcs: Vec<(String, CudaFunction)>,
}

/// One launch being built: push the kernel's arguments in order (`PushKernelArg::arg` through `Deref`), then [`go`].
pub struct Launch<'a> {
    args: LaunchArgs<'a>,
    file: &'static str,
    name: &'a str,
}

impl<'a> Deref for Launch<'a> {
    type Target = LaunchArgs<'a>;
    fn deref(&self) -> &LaunchArgs<'a> {
        &self.args
    }
}

impl DerefMut for Launch<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.args
    }
}

impl Module {
    /// Load `ptx` (a build.rs output, `file` names its source for errors) into `stream`'s context and look up
    /// `names`, the kernels this module will launch.
    pub fn load(stream: &Arc<CudaStream>, file: &'static str, ptx: &'static str, names: &[&str]) -> Result<Module> {
        let module = stream
            .context()
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| Error::Msg(format!("loading {file}: {e:?}")))?;
        let mut m = Module { file, stream: stream.clone(), module, funcs: Vec::with_capacity(names.len()) };
        for &n in names {
            let f = m.function(n)?;
            m.funcs.push((n.to_string(), f));
        }
        Ok(m)
    }

    /// This module with kernels `{kernel}_{suffix}` also looked up, for every kernel and suffix (the instantiations of
    /// a kernel per element type, `gelu_fwd_bf16`).
    pub fn with_suffixed(mut self, kernels: &[&str], suffixes: &[&str]) -> Result<Module> {
        for k in kernels {
            for s in suffixes {
                let n = format!("{k}_{s}");
                let f = self.function(&n)?;
                self.funcs.push((n, f));
            }
        }
        Ok(self)
    }

    /// Lets kernel `name` (one named at load) launch with up to `bytes` of dynamic shared memory: past 48 KiB the
    /// driver needs this opt-in (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES).
    pub fn allow_dynamic_smem(&self, name: &str, bytes: usize) -> Result<()> {
        let (_, f) = self.loaded(name)?;
        let bytes = i32::try_from(bytes).map_err(|_| Error::Msg(format!("{}: {name}: {bytes} bytes", self.file)))?;
        f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
            .map_err(|e| Error::Msg(format!("{}: {name}: {bytes} bytes of dynamic shared memory: {e:?}", self.file)))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `name` of this file, looked up now.
    fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module.load_function(name).map_err(|e| Error::Msg(format!("{}: kernel {name}: {e:?}", self.file)))
    }

    /// A launch of kernel `name` (one named at load) on the module's stream; push the arguments in the kernel's
    /// order, then [`go`].
    pub fn args(&self, name: &str) -> Result<Launch<'_>> {
        let (name, f) = self.loaded(name)?;
        Ok(Launch { args: self.stream.launch_builder(f), file: self.file, name })
    }

    /// Kernel `name` as looked up at load (its kept name and function), or an error naming the file and kernel.
    fn loaded(&self, name: &str) -> Result<(&str, &CudaFunction)> {
        self.funcs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, f)| (n.as_str(), f))
            .ok_or_else(|| Error::Msg(format!("{}: kernel {name} was not loaded", self.file)))
    }
}

/// The `T` kept for candle device `dev` under `key`, made by `make` (from the device's stream) on the first call for
/// that device, key and type, and kept for the process: kernels loaded once per device, as candle keeps its own
/// modules.
pub fn per_device<T: Send + Sync + 'static>(
    dev: &CudaDevice,
    key: &'static str,
    make: impl FnOnce(&Arc<CudaStream>) -> Result<T>,
) -> Result<Arc<T>> {
    type Loaded = Vec<(DeviceId, &'static str, Arc<dyn Any + Send + Sync>)>;
    static LOADED: Mutex<Loaded> = Mutex::new(Vec::new());
    // A poisoned lock only means another thread panicked while loading; what is in the list is whole.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let kept = loaded.iter().find(|(id, k, x)| *id == dev.id() && *k == key && x.is::<T>());
    if let Some(x) = kept.and_then(|(_, _, x)| x.clone().downcast::<T>().ok()) {
        return Ok(x);
    }
    let x = Arc::new(make(&dev.cuda_stream())?);
    loaded.push((dev.id(), key, x.clone()));
    Ok(x)
}

/// Enqueue a launch built by [`Module::args`]; an error names the file and kernel.
///
/// # Safety
/// The pushed arguments match the kernel's parameter list in number, order and type, and every pointer addresses
/// device memory the kernel may read or write as its comment in the `.cu` file says, for the grid given.
pub unsafe fn go(mut launch: Launch<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: the caller's contract.
    let r = unsafe { launch.args.launch(cfg) };
    r.map(|_| ()).map_err(|e| Error::Msg(format!("{}: launching {}: {e:?}", launch.file, launch.name)))
}

/// `grid` blocks of `block` threads (1-D or 2-D grid), no dynamic shared memory.
pub fn cfg(grid: (u32, u32), block: (u32, u32)) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block.0, block.1, 1), shared_mem_bytes: 0 }
}

/// Blocks of `per` covering `n` items, as a grid dimension (errors past the 2^31 - 1 limit).
pub fn blocks(n: usize, per: usize) -> Result<u32> {
    let b = n.div_ceil(per);
    u32::try_from(b).ok().filter(|&b| b < (1u32 << 31)).ok_or_else(|| Error::Msg(format!("grid of {b} blocks")))
}

/// `x` as a kernel's `int`, or an error naming `what`.
pub fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::Msg(format!("{what} = {x} does not fit a kernel's int")))
}
