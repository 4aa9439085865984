//! Loading a kernel file's PTX into the engine's CUDA context and launching its kernels with raw device pointers:
//! the few lines every thin launcher beside a `.cu` file (norm.rs, classifier.rs, ...) shares. candle is not
//! involved: the engine owns its buffers and passes addresses (`u64` = `CUdeviceptr`).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, LaunchArgs, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::{Error, Result};

/// The named kernels of one PTX file, loaded once.
pub struct Module {
    stream: Arc<CudaStream>,
    funcs: Vec<(String, CudaFunction)>,
}

impl Module {
    /// Load `ptx` (a build.rs output) into `stream`'s context and look up `names`.
    pub fn load(stream: &Arc<CudaStream>, file: &str, ptx: &'static str, names: &[&str]) -> Result<Module> {
        let module = stream
            .context()
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| Error::Msg(format!("loading {file}: {e:?}")))?;
        let funcs = names
            .iter()
            .map(|&n| {
                let f = module.load_function(n).map_err(|e| Error::Msg(format!("{file}: kernel {n}: {e:?}")))?;
                Ok((n.to_string(), f))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Module { stream: stream.clone(), funcs })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A launch of kernel `name` on the module's stream; push the arguments in the kernel's order, then `go`.
    pub fn args(&self, name: &str) -> Result<LaunchArgs<'_>> {
        let f = self
            .funcs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::Msg(format!("kernel {name} was not loaded")))?;
        Ok(self.stream.launch_builder(f))
    }
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
