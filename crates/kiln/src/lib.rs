//! kiln: an inference compiler and runtime for ONNX models.
//!
//! Import an ONNX file and run it:
//!
//! ```no_run
//! let model = kiln::load_onnx("examples/cnn.onnx")?;
//! let inputs = std::collections::HashMap::new(); // input name → kiln::Value
//! let outputs = kiln::run(&model.network, inputs)?;
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! Or build a network through the API — here a small CNN — with types and shapes inferred as
//! each layer is added (a bad layer fails at `add_layer`, by name):
//!
//! ```
//! use kiln::{Attributes, DType, Dim, Network, Tensor, Value, ValueType};
//! # fn weights(shape: &[usize], seed: u32) -> Tensor {
//! #     let n: usize = shape.iter().product();
//! #     let v = (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5).collect();
//! #     Tensor::from_vec(shape.to_vec(), v).unwrap()
//! # }
//! let mut net = Network::new("tiny_cnn");
//! let x = net.add_input("image", ValueType::tensor(DType::F32, vec![Dim::Symbol("batch".into()), 3.into(), 8.into(), 8.into()]))?;
//! let w = net.add_constant("conv.weight", weights(&[4, 3, 3, 3], 1))?;
//! let b = net.add_constant("conv.bias", weights(&[4], 2))?;
//! let conv = Attributes::new().with("kernel_shape", vec![3i64, 3]).with("pads", vec![1i64, 1, 1, 1]);
//! let y = net.add_layer("conv", "Conv", conv, &[Some(x), Some(w), Some(b)], &["conv_out"])?[0];
//! let y = net.add_layer("relu", "Relu", Attributes::new(), &[y], &["relu_out"])?[0];
//! let y = net.add_layer("pool", "GlobalAveragePool", Attributes::new(), &[y], &["pooled"])?[0];
//! let y = net.add_layer("flatten", "Flatten", Attributes::new(), &[y], &["features"])?[0];
//! let fc_w = net.add_constant("fc.weight", weights(&[2, 4], 3))?;
//! let logits = net.add_layer("fc", "Gemm", Attributes::new().with("transB", 1i64), &[y, Some(fc_w)], &["logits"])?[0];
//! let logits = logits.unwrap();
//! net.mark_output(logits)?;
//! // Inference already knows the output type: [batch, 2] floats.
//! assert_eq!(net.tensor(logits).ty.as_ref().unwrap().to_string(), "f32[batch, 2]");
//!
//! let image = Tensor::from_vec(vec![1, 3, 8, 8], (0..192).map(|i| (i as f32 * 0.37).sin()).collect())?;
//! let inputs = [("image".to_string(), Value::Tensor(image))].into_iter().collect();
//! let outputs = kiln::run(&net, inputs)?;
//! assert_eq!(outputs[0].1.as_tensor().unwrap().shape(), &[1, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use kiln_cpu as cpu;
pub use kiln_cuda as cuda;
pub use kiln_engine as engine;
pub use kiln_engine::{Builder, BuilderConfig, Engine, ExecutionContext, OptimizationProfile, ShapeRange};
pub use kiln_ir as ir;
pub use kiln_ir::{Attributes, DType, Dim, Network, Tensor, TensorType, Value, ValueType};
pub use kiln_onnx as onnx;
pub use kiln_onnx::Model;
pub use kiln_opt as opt;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Any kiln failure, by stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] kiln_onnx::OnnxError),
    #[error(transparent)]
    Network(#[from] kiln_ir::IrError),
    #[error(transparent)]
    Execution(#[from] kiln_cpu::CpuError),
    #[error(transparent)]
    Optimization(#[from] kiln_opt::OptError),
    #[error(transparent)]
    Engine(#[from] kiln_engine::EngineError),
}

/// Import an ONNX model from a file.
pub fn load_onnx(path: impl AsRef<Path>) -> Result<Model, Error> {
    Ok(kiln_onnx::import_file(path)?)
}

/// Run a network on the CPU with inputs bound by name; outputs come back named, in the
/// network's output order.
pub fn run(network: &Network, inputs: HashMap<String, Value>) -> Result<Vec<(String, Value)>, Error> {
    let values = kiln_cpu::execute_named(network, inputs)?;
    Ok(network.outputs().iter().map(|&id| network.tensor(id).name.clone()).zip(values).collect())
}

/// Build an engine (graph optimization, tactic selection, memory planning) on the default
/// device: the GPU where one is found, else the CPU.
pub fn build(network: &Network, config: &BuilderConfig) -> Result<Engine, Error> {
    build_for(network, config, Device::Auto)
}

/// Build an engine for `device`.
pub fn build_for(network: &Network, config: &BuilderConfig, device: Device) -> Result<Engine, Error> {
    Ok(Builder::new(backend(device)?).build(network, config)?)
}

/// Load a plan file, on the backend it was built for (a CUDA plan needs the GPU it was built on).
pub fn load_plan(path: impl AsRef<Path>) -> Result<Engine, Error> {
    let path = path.as_ref();
    match Engine::load(path, Arc::new(kiln_engine::cpu::CpuBackend)) {
        Err(kiln_engine::EngineError::Plan(kiln_engine::plan::PlanError::WrongBackend { plan, .. }))
            if plan == "cuda" =>
        {
            Ok(Engine::load(path, backend(Device::Cuda)?)?)
        }
        other => Ok(other?),
    }
}

/// Where an engine is built to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The GPU where one can be used, else the CPU (saying once why not the GPU).
    #[default]
    Auto,
    Cpu,
    /// The first CUDA GPU; an error where there is none.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            other => Err(format!("unknown device '{other}' (auto, cpu, cuda)")),
        }
    }
}

/// The backend for `device`.
pub fn backend(device: Device) -> Result<Arc<dyn kiln_engine::Backend>, Error> {
    static NO_GPU: std::sync::Once = std::sync::Once::new();
    let cuda = || kiln_cuda::CudaBackend::new(0).map(|b| Arc::new(b) as Arc<dyn kiln_engine::Backend>);
    match device {
        Device::Cpu => Ok(Arc::new(kiln_engine::cpu::CpuBackend)),
        Device::Cuda => cuda()
            .map_err(|message| Error::Engine(kiln_engine::EngineError::Device { backend: "cuda".into(), message })),
        Device::Auto => Ok(cuda().unwrap_or_else(|why| {
            NO_GPU.call_once(|| tracing::warn!("no usable GPU ({why}); running on the CPU"));
            Arc::new(kiln_engine::cpu::CpuBackend)
        })),
    }
}

/// Simplify a network (constant folding, no-op removal, common-subexpression merging,
/// dead-layer elimination) to a fixpoint; outputs keep their names and values.
pub fn optimize(network: Network) -> Result<(Network, kiln_opt::PassReport), Error> {
    Ok(kiln_opt::optimize(network)?)
}
