//! Launching the attention variants, recurrent layers, Einsum and other product-shaped ops (lower_sequence.rs).

use crate::error::CudaResult;
use crate::lower_sequence::SequenceOp;
use crate::session::CudaSession;

impl CudaSession {
    pub(crate) fn launch_sequence(&mut self, _li: usize, op: &SequenceOp) -> CudaResult<()> {
        match *op {}
    }
}
