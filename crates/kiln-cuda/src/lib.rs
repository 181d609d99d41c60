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
mod compile;
mod device;
mod dnn;
mod error;
mod kernels;
mod launch;
mod lower;
mod memory;
mod program;
mod session;

pub use device::Device;

use kiln_engine::{Backend, DeviceProgram, EngineGraph, LayerDesc, LayerKernel, Tactic, WeightBytes};
use std::sync::Arc;

/// Tactic names recorded per layer: where the layer runs.
pub const GPU_TACTIC: &str = "gpu";
pub const HOST_TACTIC: &str = "cpu-fallback";

/// The CUDA backend on one GPU.
pub struct CudaBackend {
    device: Arc<Device>,
}

impl CudaBackend {
    /// Open GPU `ordinal`; the error says why it cannot be used (no driver, no GPU, ...).
    pub fn new(ordinal: usize) -> Result<CudaBackend, String> {
        Ok(CudaBackend { device: Arc::new(Device::open(ordinal)?) })
    }

    pub fn device_info(&self) -> &Device {
        &self.device
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        self.device.fingerprint()
    }

    fn tactics(&self, _layer: &LayerDesc) -> Vec<Tactic> {
        // Placement is decided on the whole graph (compile); cuDNN measures its algorithms on
        // the first run.
        vec![Tactic::new(GPU_TACTIC)]
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
                lower::Placement::Gpu(_) => {
                    el.tactic = GPU_TACTIC.into();
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
