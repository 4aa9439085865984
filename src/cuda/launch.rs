//! The one way tokenmill loads its kernels' PTX (build.rs compiles each `src/cuda/<op>.cu` to `$OUT_DIR/<op>.ptx`)
//! into a CUDA context and looks kernels up, for both callers of the kernel layer:
//! - the engine's thin launchers (norm.rs, classifier.rs, flash_attn.rs, ...) load a [`Module`] into their stream
//!   once, with the kernel names they launch, and pass typed device pointers (`devptr::DevPtr<T>`, a `CUdeviceptr`);
//! - the candle ops (`model::kernels`) take a [`Kernel`] from [`Module::on_device`], which loads each file once per
//!   candle device and keeps it for the process (as candle's own kernel modules are kept), through [`per_device`]
//!   (which also keeps the fused-qkv attention op's `FlashAttn`).

use std::any::Any;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{DType, Error, Result};

/// The named kernels of one PTX file, loaded once.
pub struct Module {
    file: &'static str,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    funcs: Vec<(String, CudaFunction)>,
}

/// One kernel and the stream it launches on (a candle device's).
pub struct Kernel {
    stream: Arc<CudaStream>,
    func: CudaFunction,
}

impl Kernel {
    /// A launch of this kernel; push the arguments in the kernel's order, then launch.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

impl Module {
    /// Load `ptx` (a build.rs output, `file` names its source for errors) into `stream`'s context and look up
    /// `names`.
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

    /// `file`'s module on candle device `dev` (its stream), loaded on the first call for that device and file.
    pub fn on_device(dev: &CudaDevice, file: &'static str, ptx: &'static str) -> Result<Arc<Module>> {
        per_device(dev, file, |stream| Module::load(stream, file, ptx, &[]))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `name` of this file, looked up now (for kernels not named at load).
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module.load_function(name).map_err(|e| Error::Msg(format!("{}: kernel {name}: {e:?}", self.file)))
    }

    /// Kernel `name` with this module's stream, for a candle op's launch.
    pub fn kernel(&self, name: &str) -> Result<Kernel> {
        Ok(Kernel { stream: self.stream.clone(), func: self.function(name)? })
    }

    /// A launch of kernel `name` (one named at load) on the module's stream; push the arguments in the kernel's
    /// order, then `go`.
    pub fn args(&self, name: &str) -> Result<LaunchArgs<'_>> {
        let f = self
            .funcs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::Msg(format!("{}: kernel {name} was not loaded", self.file)))?;
        Ok(self.stream.launch_builder(f))
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

/// Enqueue a launch built by `Module::args`.
///
/// # Safety
/// The pushed arguments match the kernel's parameter list in number, order and type, and every pointer addresses
/// device memory the kernel may read or write as its comment in the `.cu` file says, for the grid given.
pub unsafe fn go(mut args: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    args.launch(cfg).map(|_| ()).map_err(|e| Error::Msg(format!("kernel launch: {e:?}")))
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

/// `ce_fwd_bf16`-style suffix of `dt`, if `op`'s kernels come in it (`supported`); otherwise an error naming `op`
/// (the candle ops' kernels are instantiated per dtype under these suffixes).
pub fn dtype_suffix(dt: DType, op: &str, supported: &[DType]) -> Result<&'static str> {
    let sfx = match dt {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "",
    };
    if sfx.is_empty() || !supported.contains(&dt) {
        candle_core::bail!("{op} on CUDA takes {supported:?}, got {dt:?}");
    }
    Ok(sfx)
}

/// `blocks` blocks of `threads` threads in x, no dynamic shared memory.
pub fn grid_1d(blocks: usize, threads: u32) -> Result<LaunchConfig> {
    let Ok(blocks) = u32::try_from(blocks) else {
        candle_core::bail!("{blocks} blocks exceed a CUDA grid's x dimension")
    };
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}
