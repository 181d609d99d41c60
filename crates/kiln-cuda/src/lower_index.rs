//! Placement of the gather/scatter, cumulative and loss ops: which of them the GPU runs, and with what.

use kiln_engine::EngineGraph;
use kiln_ir::Layer;

/// A index op the GPU runs (launch_index.rs launches it, kernels/index.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum IndexOp {}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op.
pub(crate) fn lower(_graph: &EngineGraph, _layer: &Layer) -> Option<Result<IndexOp, String>> {
    None
}
