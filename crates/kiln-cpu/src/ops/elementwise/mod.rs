//! CPU kernels for the element-wise family: unary math and activations, broadcasting binary
//! and variadic ops, Where/Clip, and the dtype ops (Cast, CastLike, BitCast) plus Identity and
//! inference-mode Dropout.
//!
//! Floats: f32/f64 are computed natively; f16/bf16 are computed in f32 and rounded once.
//! Integers follow numpy/C semantics: wrapping overflow, division truncating toward zero.

mod binary;
mod broadcast;
mod cast;
mod chain;
mod scalar;
mod unary;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    unary::kernel(op).or_else(|| binary::kernel(op)).or_else(|| cast::kernel(op)).or_else(|| chain::kernel(op))
}

#[cfg(test)]
mod tests;
