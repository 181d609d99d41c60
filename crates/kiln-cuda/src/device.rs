//! Finding the GPU: the driver library is loaded at run time, so kiln builds and runs on
//! machines without CUDA and says why it cannot use one.

use crate::error::{cuda_err, CudaResult};
use cudarc::driver::{sys, CudaContext};
use std::sync::Arc;

/// One opened GPU.
pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub name: String,
    /// Compute capability (9, 0 on an H100).
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: i32,
}

impl Device {
    /// Open GPU `ordinal`, or say why not (no driver library, no device, a failing driver).
    pub fn open(ordinal: usize) -> CudaResult<Device> {
        // SAFETY: only probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver found (libcuda.so could not be loaded)".into());
        }
        let count = CudaContext::device_count().map_err(cuda_err("counting CUDA devices"))?;
        if count <= 0 {
            return Err("the CUDA driver reports no GPU".into());
        }
        if ordinal >= count as usize {
            return Err(format!("GPU {ordinal} does not exist ({count} found)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating the CUDA context"))?;
        let name = ctx.name().map_err(cuda_err("reading the GPU name"))?;
        let compute_capability = ctx.compute_capability().map_err(cuda_err("reading the compute capability"))?;
        let total_memory = ctx.total_mem().map_err(cuda_err("reading the GPU memory size"))?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("reading the multiprocessor count"))?;
        Ok(Device { ctx, name, compute_capability, total_memory, multiprocessors })
    }

    /// Make this device's context current on the calling thread (every CUDA call needs it).
    pub(crate) fn bind(&self) -> CudaResult<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("binding the CUDA context"))
    }

    /// What a plan built here depends on: the GPU model and its architecture.
    pub fn fingerprint(&self) -> String {
        format!("{} sm_{}{}", self.name, self.compute_capability.0, self.compute_capability.1)
    }
}
