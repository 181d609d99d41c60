//! An engine on the GPU: its kernels loaded from the plan's cubin, its weights uploaded once
//! (fp32 weights in the engine's storage type), and each layer's placement. Shared by every
//! execution context; each context gets a [`CudaSession`](crate::session::CudaSession).

use crate::device::Device;
use crate::error::{cuda_err, device_error, CudaResult};
use crate::kernels::{elementwise, Storage};
use crate::lower::{GpuOp, Placement};
use crate::memory::DeviceBuffer;
use cudarc::driver::{result, sys};
use kiln_engine::{DeviceProgram, DeviceSession, EngineError, EngineGraph, LayerKernel, WeightBytes};
use kiln_ir::{DType, Tensor, TensorData, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// A kernel entry point.
#[derive(Clone, Copy)]
pub(crate) struct Func(pub sys::CUfunction);
// SAFETY: function handles are valid in every thread that binds the context.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

struct Module(sys::CUmodule);
// SAFETY: as above.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: loaded once, unloaded once; CudaProgram's Drop bound the context.
        let _ = unsafe { result::module::unload(self.0) };
    }
}

pub struct CudaProgram {
    pub(crate) device: Arc<Device>,
    pub(crate) graph: EngineGraph,
    pub(crate) placements: Vec<Placement>,
    pub(crate) storage: Storage,
    pub(crate) tf32: bool,
    _modules: (Module, Option<Module>),
    functions: HashMap<String, Func>,
    _weights: DeviceBuffer,
    /// Device address of each weight.
    pub(crate) weight_ptrs: Vec<u64>,
    pub(crate) host_weights: Arc<dyn WeightBytes>,
    pub(crate) weight_values: Vec<OnceLock<Value>>,
    /// Small and integer weights decoded, for run-time shape inference (Reshape targets,
    /// Split sizes).
    pub(crate) small_weights: Vec<Option<Tensor>>,
    pub(crate) host_kernels: Vec<Option<Arc<dyn LayerKernel>>>,
    /// The whole run can be captured once as a CUDA graph: static shapes, every layer on the GPU.
    pub(crate) graph_capturable: bool,
}

impl CudaProgram {
    pub(crate) fn new(
        device: Arc<Device>,
        graph: &EngineGraph,
        weights: &Arc<dyn WeightBytes>,
        host_kernels: &[Option<Arc<dyn LayerKernel>>],
        placements: Vec<Placement>,
    ) -> CudaResult<CudaProgram> {
        if graph.device_code.is_empty() {
            return Err("the plan holds no compiled CUDA kernels (it was built for another backend)".into());
        }
        device.bind()?;
        let storage = Storage::for_precisions(graph.build.precisions());
        let (library, generated) = crate::compile::split_code(&graph.device_code)?;
        let load = |image: &[u8]| -> CudaResult<Module> {
            // The driver reads the image from an aligned copy (a plan's bytes carry no alignment).
            let owned: Vec<u64> = image
                .chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect();
            // SAFETY: the cubin came out of NVRTC for this architecture (the plan's device
            // fingerprint matched); the driver validates the image and reports a bad one.
            let m = unsafe { result::module::load_data(owned.as_ptr().cast()) }
                .map_err(cuda_err("loading the plan's CUDA kernels"))?;
            Ok(Module(m))
        };
        let library = load(library)?;
        let generated = if generated.is_empty() { None } else { Some(load(generated)?) };
        // Every library kernel: those of the storage type, and of the other float types for
        // native f16/bf16 tensors (launch_dtypes.rs: typed_for).
        let mut names: Vec<(String, &Module)> =
            crate::kernels::library_kernel_names().into_iter().map(|n| (n, &library)).collect();
        for (li, p) in placements.iter().enumerate() {
            let name = match p {
                Placement::Gpu(GpuOp::Elementwise { .. }) => {
                    format!("{}_{}", elementwise::kernel_name(li), storage.suffix())
                }
                Placement::Gpu(GpuOp::Typed(_)) => crate::kernels::typed::kernel_name(li),
                _ => continue,
            };
            let m = generated.as_ref().ok_or("the plan lacks its generated CUDA kernels")?;
            names.push((name, m));
        }
        let mut functions = HashMap::new();
        for (name, module) in names {
            let c = std::ffi::CString::new(name.clone()).expect("no NUL");
            // SAFETY: a loaded module and a NUL-terminated name.
            let f = unsafe { result::module::get_function(module.0, c) }
                .map_err(|e| format!("kernel {name} is missing from the plan's CUDA module: {e:?}"))?;
            functions.insert(name, Func(f));
        }

        // Weights: one device buffer, each weight 256-byte aligned, fp32 ones converted.
        let bytes = weights.bytes();
        let mut offsets = Vec::with_capacity(graph.weights.len());
        let mut total = 0usize;
        for w in &graph.weights {
            offsets.push(total);
            let size = if w.dtype == DType::F32 { w.bytes / 4 * storage.dtype().size() } else { w.bytes };
            total += size.div_ceil(256) * 256;
        }
        let mut host = vec![0u8; total];
        for (w, &off) in graph.weights.iter().zip(&offsets) {
            let src = &bytes[w.offset..w.offset + w.bytes];
            convert_into(src, w.dtype, storage, &mut host[off..]);
        }
        let buffer = DeviceBuffer::new(&device, total)?;
        // SAFETY: the buffer has `total` bytes.
        unsafe { result::memcpy_htod_sync(buffer.ptr(), &host) }.map_err(cuda_err("uploading the weights"))?;
        let weight_ptrs = offsets.iter().map(|&o| buffer.ptr() + o as u64).collect();
        let small_weights = graph
            .weights
            .iter()
            .map(|w| {
                let small = w.dtype == DType::I64 || w.dtype == DType::I32 || w.bytes <= 256;
                small.then(|| decode(w.dtype, &w.shape, &bytes[w.offset..w.offset + w.bytes])).flatten()
            })
            .collect();
        let static_shapes = graph.profile.values().all(|r| r.min == r.max);
        let all_gpu = placements.iter().all(|p| !matches!(p, Placement::Host(_)));
        // Tensors sized at run time are allocated between layers: never inside a capture.
        let run_time_sized = graph.tensors.iter().any(|t| matches!(t.storage, kiln_engine::Storage::Heap));
        tracing::info!(
            gpu = placements.iter().filter(|p| matches!(p, Placement::Gpu(_))).count(),
            host = placements.iter().filter(|p| matches!(p, Placement::Host(_))).count(),
            weights = total,
            storage = ?storage,
            "CUDA program ready"
        );
        Ok(CudaProgram {
            device,
            graph: graph.clone(),
            placements,
            storage,
            tf32: graph.build.allow_tf32,
            _modules: (library, generated),
            functions,
            _weights: buffer,
            weight_ptrs,
            host_weights: weights.clone(),
            weight_values: graph.weights.iter().map(|_| OnceLock::new()).collect(),
            small_weights,
            host_kernels: host_kernels.to_vec(),
            graph_capturable: static_shapes && all_gpu && !run_time_sized,
        })
    }

    /// Kernel `name` (typed kernels: `name_<storage>`).
    pub(crate) fn func(&self, name: &str) -> CudaResult<Func> {
        self.functions.get(name).copied().ok_or_else(|| format!("kernel {name} was not loaded"))
    }

    pub(crate) fn typed(&self, name: &str) -> CudaResult<Func> {
        self.func(&format!("{name}_{}", self.storage.suffix()))
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        // The modules and the weight buffer are released in this context.
        let _ = self.device.bind();
    }
}

fn decode(dtype: DType, shape: &[usize], bytes: &[u8]) -> Option<Tensor> {
    Tensor::new(shape.to_vec(), TensorData::from_le_bytes(dtype, bytes).ok()?).ok()
}

/// `src` (little-endian `dtype` elements) into `dst` as the device stores them: fp32 in the
/// storage type, everything else unchanged.
pub(crate) fn convert_into(src: &[u8], dtype: DType, storage: Storage, dst: &mut [u8]) {
    if dtype != DType::F32 || storage == Storage::F32 {
        dst[..src.len()].copy_from_slice(src);
        return;
    }
    for (k, c) in src.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let bits = match storage {
            Storage::F16 => half::f16::from_f32(v).to_bits(),
            Storage::BF16 => half::bf16::from_f32(v).to_bits(),
            Storage::F32 => unreachable!("handled above"),
        };
        dst[2 * k..2 * k + 2].copy_from_slice(&bits.to_le_bytes());
    }
}

/// Device bytes of a tensor in the storage type back to little-endian `dtype` bytes.
pub(crate) fn convert_back(src: &[u8], dtype: DType, storage: Storage) -> Vec<u8> {
    if dtype != DType::F32 || storage == Storage::F32 {
        return src.to_vec();
    }
    let mut out = Vec::with_capacity(src.len() * 2);
    for c in src.chunks_exact(2) {
        let bits = u16::from_le_bytes([c[0], c[1]]);
        let v = match storage {
            Storage::F16 => half::f16::from_bits(bits).to_f32(),
            _ => half::bf16::from_bits(bits).to_f32(),
        };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The program shared by an engine's contexts.
pub(crate) struct SharedProgram(pub Arc<CudaProgram>);

impl DeviceProgram for SharedProgram {
    fn create_session(&self) -> Result<Box<dyn DeviceSession>, EngineError> {
        crate::session::CudaSession::new(self.0.clone())
            .map(|s| Box::new(s) as Box<dyn DeviceSession>)
            .map_err(device_error)
    }

    fn placements(&self) -> Vec<String> {
        self.0.placements.iter().map(Placement::describe).collect()
    }
}
