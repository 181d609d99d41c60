//! The kernel table: op name → CPU implementation.

use crate::executor::Scope;
use crate::{ops, CpuError};
use kiln_ir::{Attributes, Network, Value};

/// What a kernel sees besides its inputs.
pub struct KernelCtx<'a> {
    pub layer: &'a str,
    pub op: &'a str,
    pub attrs: &'a Attributes,
    /// How many outputs the layer has (some may be unwanted, but all are produced).
    pub num_outputs: usize,
    pub(crate) scope: &'a Scope<'a>,
}

impl KernelCtx<'_> {
    /// Run a subgraph (If branch, Loop/Scan body) with positional inputs; it reads captured
    /// values from this layer's scope.
    pub fn run_subgraph(&self, graph: &Network, inputs: Vec<Value>) -> Result<Vec<Value>, String> {
        crate::executor::run_graph(graph, inputs, Some(self.scope)).map_err(|e| match e {
            CpuError::Layer { layer, op, message } => format!("in subgraph layer '{layer}' ({op}): {message}"),
            other => format!("in subgraph: {other}"),
        })
    }
}

/// A kernel: inputs positionally (`None` = omitted optional input) → all outputs.
pub type KernelFn = fn(&KernelCtx, &[Option<&Value>]) -> Result<Vec<Value>, String>;

/// The CPU kernel for `op`, if there is one.
pub fn kernel(op: &str) -> Option<KernelFn> {
    ops::kernel(op)
}
