//! Placement of the resampling, transposed convolution, pooling and normalization variants: which of them the GPU runs, and with what.

use kiln_engine::EngineGraph;
use kiln_ir::Layer;

/// A spatial op the GPU runs (launch_spatial.rs launches it, kernels/spatial.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum SpatialOp {}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op.
pub(crate) fn lower(_graph: &EngineGraph, _layer: &Layer) -> Option<Result<SpatialOp, String>> {
    None
}
