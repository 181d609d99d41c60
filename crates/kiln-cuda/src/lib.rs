//! kiln's CUDA backend. The driver, NVRTC, cuBLAS and cuDNN are loaded at run time (cudarc's
//! dynamic loading), so this crate builds everywhere and [`CudaBackend::new`] says why a GPU
//! cannot be used where there is none.
//!
//! At build time the backend places every layer (`lower.rs`: GPU op or CPU fallback), generates
//! CUDA C for the fused element-wise layers, and compiles it with the kernel library for the
//! device's architecture (`compile.rs`); the cubin is stored in the plan. At load time it uploads
//! the weights once and loads the cubin (`program.rs`); each execution context gets a session
//! with its own device arena, stream and CUDA graph (`session.rs`, `launch.rs`).

mod blas;
mod blas_lt;
mod compile;
mod device;
mod dnn;
mod einsum;
mod error;
mod kernels;
mod launch;
mod launch_dtypes;
mod launch_index;
mod launch_sequence;
mod launch_spatial;
mod launch_values;
mod lower;
mod lower_index;
mod lower_sequence;
mod lower_spatial;
mod memory;
mod program;
mod session;
mod tuning;

pub use device::Device;

use kiln_engine::{Backend, DeviceProgram, EngineGraph, LayerDesc, LayerKernel, Tactic, WeightBytes};
use std::sync::Arc;

/// Tactic names recorded per layer: where the layer runs.
pub const GPU_TACTIC: &str = "gpu";
pub const HOST_TACTIC: &str = "cpu-fallback";

/// The CUDA backend on one GPU.
pub struct CudaBackend {
    device: Arc<Device>,
    /// Handles for timing tactics at build time (made on first use).
    tuner: std::sync::Mutex<Option<tuning::Tuner>>,
}

impl CudaBackend {
    /// Open GPU `ordinal`; the error says why it cannot be used (no driver, no GPU, ...).
    pub fn new(ordinal: usize) -> Result<CudaBackend, String> {
        Ok(CudaBackend { device: Arc::new(Device::open(ordinal)?), tuner: std::sync::Mutex::new(None) })
    }

    /// `f` with the tuner (made on first use); `None` where it cannot be made.
    fn with_tuner<T>(&self, f: impl FnOnce(&tuning::Tuner) -> T) -> Option<T> {
        let mut guard = self.tuner.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            match tuning::Tuner::new(self.device.clone()) {
                Ok(t) => *guard = Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot time CUDA tactics; cuDNN will choose at run time");
                    return None;
                }
            }
        }
        guard.as_ref().map(f)
    }

    /// A Conv layer's geometry at the opt shapes, where the GPU runs it.
    fn conv_geometry(layer: &LayerDesc) -> Option<dnn::ConvShape> {
        if layer.layer.op != "Conv" {
            return None;
        }
        let shape = |k: usize| -> Option<Vec<usize>> {
            match layer.input_types.get(k)?.as_ref()? {
                kiln_ir::ValueType::Tensor(t) => kiln_ir::concrete(t.shape.as_deref()?),
                _ => None,
            }
        };
        lower::conv_shape(layer.layer, &shape(0)?, &shape(1)?)
    }

    pub fn device_info(&self) -> &Device {
        &self.device
    }
}

/// Where each layer of `graph` would run on the GPU ("gpu", "elided" or "cpu (<why>)"), decided
/// from the graph alone, without a device: lets a machine without a GPU measure how much of a
/// model (or of the conformance suite) the CUDA backend covers.
pub fn placement_census(graph: &EngineGraph) -> Vec<String> {
    lower::lower_all(graph).iter().map(lower::Placement::describe).collect()
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        self.device.fingerprint()
    }

    fn tactics(&self, layer: &LayerDesc) -> Vec<Tactic> {
        // The default first: placement is decided on the whole graph (compile), and an untimed
        // convolution lets cuDNN search on its first run. Convolutions add their algorithms.
        let mut out = vec![Tactic::new(GPU_TACTIC)];
        if let Some(shape) = Self::conv_geometry(layer) {
            let storage = kernels::Storage::for_precisions(layer.precisions);
            let tf32 = layer.precisions.tf32;
            out.extend(self.with_tuner(|t| t.conv_tactics(storage, tf32, &shape)).unwrap_or_default());
        }
        out
    }

    fn time_tactic(&self, layer: &LayerDesc, tactic: &str) -> Option<Result<f64, String>> {
        let shape = Self::conv_geometry(layer)?;
        if tactic == GPU_TACTIC {
            return Some(Err("the run-time search is not timed".into()));
        }
        let storage = kernels::Storage::for_precisions(layer.precisions);
        self.with_tuner(|t| t.time_conv(storage, layer.precisions.tf32, &shape, tactic))
    }

    fn instantiate(&self, layer: &LayerDesc, _tactic: &str) -> Result<Arc<dyn LayerKernel>, String> {
        // The host form, for the layers the GPU program runs on the CPU.
        Ok(Arc::new(kiln_engine::cpu::ReferenceKernel::new(layer.layer)?))
    }

    fn elides_concat(&self) -> bool {
        // fp16 storage halves every float tensor, so fp32 byte offsets inside a concat's output
        // do not hold; concats run as copies.
        false
    }

    fn compile(&self, graph: &mut EngineGraph) -> Result<Vec<u8>, String> {
        let placements = lower::lower_all(graph);
        let storage = kernels::Storage::for_precisions(graph.build.precisions());
        for (el, p) in graph.layers.iter_mut().zip(&placements) {
            match p {
                lower::Placement::Gpu(op) => {
                    // A convolution keeps the tactic the builder timed; the rest run "gpu".
                    if !matches!(op, lower::GpuOp::Conv { .. }) {
                        el.tactic = GPU_TACTIC.into();
                    }
                    if el.precision == kiln_ir::DType::F32 {
                        el.precision = storage.dtype();
                    }
                }
                lower::Placement::Host(why) => {
                    el.tactic = HOST_TACTIC.into();
                    tracing::info!(layer = %el.layer.name, op = %el.layer.op, reason = %why, "layer runs on the CPU");
                }
                lower::Placement::Elided => {}
            }
        }
        compile::engine_code(&placements, storage, self.device.compute_capability)
    }

    fn prepare(
        &self,
        graph: &EngineGraph,
        weights: &Arc<dyn WeightBytes>,
        host_kernels: &[Option<Arc<dyn LayerKernel>>],
    ) -> Result<Option<Arc<dyn DeviceProgram>>, String> {
        let placements = lower::lower_all(graph);
        let program = program::CudaProgram::new(self.device.clone(), graph, weights, host_kernels, placements)?;
        Ok(Some(Arc::new(program::SharedProgram(Arc::new(program)))))
    }
}
