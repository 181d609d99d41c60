//! CPU kernels, one file per op family; each family answers for the ops it implements.

mod control;
mod elementwise;
mod movement;
mod nn;
mod reduce_norm;
mod rnn_attention;
mod signal_image;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    elementwise::kernel(op)
        .or_else(|| movement::kernel(op))
        .or_else(|| reduce_norm::kernel(op))
        .or_else(|| nn::kernel(op))
        .or_else(|| signal_image::kernel(op))
        .or_else(|| rnn_attention::kernel(op))
        .or_else(|| control::kernel(op))
}
