//! The `layer-norm-rows` tactic for LayerNormalization (f32, scale and bias over the whole
//! normalized shape, only the normalized output wanted): one vectorized pass per row, rows in
//! parallel, written straight into the arena. Other forms (broadcast scale, mean / inv-std
//! outputs) run the reference kernel this tactic holds.

use super::io::{f32_input, opt_f32_input, write_f32_output};
use super::reference::ReferenceKernel;
use super::vecmath::layer_norm_row;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{DType, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "layer-norm-rows";

/// Calls that took the fast path (tests check the fast path ran, not only the fallback).
#[cfg(test)]
pub(crate) static FAST_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn applies(desc: &LayerDesc) -> bool {
    desc.layer.op == "LayerNormalization"
        && matches!(desc.input_types.first(), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32)
        && desc.layer.outputs.iter().skip(1).all(Option::is_none)
}

pub(crate) struct LayerNormKernel {
    fallback: ReferenceKernel,
    axis: i64,
    epsilon: f32,
    /// stash_type other than float32 changes the statistics' precision: reference kernel.
    plain: bool,
}

impl LayerNormKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let a = &desc.layer.attrs;
        Ok(LayerNormKernel {
            fallback: ReferenceKernel::new(desc.layer)?,
            axis: a.int("axis", -1)?,
            epsilon: a.float("epsilon", 1e-5)?,
            plain: a.int("stash_type", 1)? == 1,
        })
    }
}

/// Rows per parallel task: enough work per task to amortize the split.
const MIN_TASK_ELEMENTS: usize = 1 << 14;

impl LayerKernel for LayerNormKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, shape) = f32_input(io, 0)?;
        let (scale, _) = f32_input(io, 1)?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 { self.axis + rank } else { self.axis };
        if !self.plain || !(0..rank).contains(&axis) || io.outputs.iter().skip(1).any(Option::is_some) {
            return self.fallback.run(io);
        }
        let cols: usize = shape[axis as usize..].iter().product();
        if cols == 0 || scale.len() != cols || bias.is_some_and(|b| b.len() != cols) {
            return self.fallback.run(io);
        }
        let eps = self.epsilon;
        #[cfg(test)]
        FAST_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        write_f32_output(io, 0, shape.to_vec(), |out| {
            let rows_per_task = (MIN_TASK_ELEMENTS / cols).max(1);
            out.par_chunks_mut(rows_per_task * cols).zip(x.par_chunks(rows_per_task * cols)).for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                    layer_norm_row(x, o, scale, bias, eps);
                }
            });
            Ok(())
        })
    }
}
