//! Device and pinned host memory, freed when dropped.

use crate::device::Device;
use crate::error::{cuda_err, CudaResult};
use cudarc::driver::{result, sys};
use std::sync::Arc;

/// A device allocation.
pub(crate) struct DeviceBuffer {
    device: Arc<Device>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device pointer is an address in the context's memory, usable from any thread that
// binds the context.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// `bytes` of device memory (at least 256 so that every buffer has an address).
    pub fn new(device: &Arc<Device>, bytes: usize) -> CudaResult<DeviceBuffer> {
        device.bind()?;
        let n = bytes.max(256);
        // SAFETY: the context is bound.
        let ptr =
            unsafe { result::malloc_sync(n) }.map_err(|e| format!("allocating {n} bytes of GPU memory: {e:?}"))?;
        Ok(DeviceBuffer { device: device.clone(), ptr, bytes: n })
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: allocated by malloc_sync in this context and freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory: copies from and to it run at full bus speed and asynchronously.
pub(crate) struct PinnedBuffer {
    device: Arc<Device>,
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: plain host memory owned by this value.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    pub fn new(device: &Arc<Device>, bytes: usize) -> CudaResult<PinnedBuffer> {
        device.bind()?;
        let n = bytes.max(256);
        // SAFETY: the context is bound.
        let ptr = unsafe { result::malloc_host(n, 0) }.map_err(cuda_err("allocating pinned host memory"))?;
        Ok(PinnedBuffer { device: device.clone(), ptr: ptr.cast(), bytes: n })
    }

    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `bytes` bytes allocated by malloc_host, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: allocated by malloc_host and freed once.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}
