//! kiln: an inference compiler and runtime for ONNX models.
//!
//! ```no_run
//! let model = kiln::load_onnx("examples/cnn.onnx")?;
//! let inputs = std::collections::HashMap::new(); // name → kiln::Value
//! let outputs = kiln::run(&model.network, inputs)?;
//! # Ok::<(), kiln::Error>(())
//! ```

pub use kiln_cpu as cpu;
pub use kiln_ir as ir;
pub use kiln_ir::{Attributes, DType, Dim, Network, Tensor, TensorType, Value, ValueType};
pub use kiln_onnx as onnx;
pub use kiln_onnx::Model;

use std::collections::HashMap;
use std::path::Path;

/// Any kiln failure, by stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] kiln_onnx::OnnxError),
    #[error(transparent)]
    Network(#[from] kiln_ir::IrError),
    #[error(transparent)]
    Execution(#[from] kiln_cpu::CpuError),
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
