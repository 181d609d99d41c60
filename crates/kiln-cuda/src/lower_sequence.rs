//! Placement of the attention variants, recurrent layers, Einsum and other product-shaped ops: which of them the GPU runs, and with what.

use kiln_engine::EngineGraph;
use kiln_ir::Layer;

/// A sequence op the GPU runs (launch_sequence.rs launches it, kernels/sequence.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum SequenceOp {}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op.
pub(crate) fn lower(_graph: &EngineGraph, _layer: &Layer) -> Option<Result<SequenceOp, String>> {
    None
}
