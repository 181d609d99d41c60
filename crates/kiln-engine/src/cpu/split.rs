//! The `split-copy` tactic for Split on f32 tensors: each output's rows copied straight from the
//! input into its arena slot (the reference kernel decodes the input into a value, splits it
//! into new tensors and copies those back: three passes where one does). BERT and ViT split
//! the fused Q/K/V product this way in every layer. Forms it does not cover run the reference
//! kernel this tactic holds.

use super::io::{f32_input, write_f32_output};
use super::reference::ReferenceKernel;
use crate::backend::{Arg, LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{DType, Value, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "split-copy";

/// Outputs at least this large are copied by the whole pool.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// Calls that took the fast path (tests check the fast path ran, not only the fallback).
#[cfg(test)]
pub(crate) static FAST_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Offered for f32 Split whose sizes are constant (or implied): sizes computed at run time
/// cannot be timed (the builder's timing inputs would split into zeros), and the reference
/// kernel alone then needs no timing.
pub(crate) fn applies(desc: &LayerDesc) -> bool {
    let sizes_known = match desc.layer.inputs.get(1) {
        Some(Some(_)) => matches!(desc.weights.get(1), Some(Some(_))),
        _ => true,
    };
    desc.layer.op == "Split"
        && sizes_known
        && matches!(desc.input_types.first(), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32)
}

pub(crate) struct SplitKernel {
    fallback: ReferenceKernel,
    axis: i64,
    /// Sizes from the (pre-opset-13) `split` attribute.
    split_attr: Option<Vec<i64>>,
    num_outputs: Option<i64>,
    outputs: usize,
}

impl SplitKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let a = &desc.layer.attrs;
        Ok(SplitKernel {
            fallback: ReferenceKernel::new(desc.layer)?,
            axis: a.int("axis", 0)?,
            split_attr: a.ints_opt("split")?,
            num_outputs: a.int_opt("num_outputs")?,
            outputs: desc.layer.outputs.len(),
        })
    }

    /// Each output's extent along the axis, or `None` for the reference kernel to judge.
    fn sizes(&self, io: &LayerIo, dim: usize) -> Option<Vec<usize>> {
        let explicit: Option<Vec<i64>> = match io.inputs.get(1) {
            Some(Some(Arg::Bytes { dtype: DType::I64, bytes, .. } | Arg::Weight { dtype: DType::I64, bytes, .. })) => {
                Some(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
            }
            Some(Some(Arg::Value(Value::Tensor(t)))) if t.dtype() == DType::I64 => Some(t.to_i64_vec()),
            Some(Some(_)) => return None,
            _ => self.split_attr.clone(),
        };
        let n = self.outputs;
        let sizes: Vec<usize> = match (explicit, self.num_outputs) {
            (Some(s), _) => s.iter().map(|&v| usize::try_from(v).ok()).collect::<Option<_>>()?,
            (None, Some(k)) => {
                // Opset 18: chunks of ceil(dim / k), the last one smaller.
                let k = usize::try_from(k).ok().filter(|&k| k == n && k > 0)?;
                let chunk = dim.div_ceil(k);
                (0..k).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
            }
            (None, None) => (n > 0 && dim.is_multiple_of(n)).then(|| vec![dim / n; n])?,
        };
        (sizes.len() == n && sizes.iter().sum::<usize>() == dim).then_some(sizes)
    }
}

impl LayerKernel for SplitKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, shape) = f32_input(io, 0)?;
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 { self.axis + rank } else { self.axis };
        if !(0..rank).contains(&axis) {
            return self.fallback.run(io);
        }
        let axis = axis as usize;
        let Some(sizes) = self.sizes(io, shape[axis]) else { return self.fallback.run(io) };
        #[cfg(test)]
        FAST_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner: usize = shape[axis + 1..].iter().product();
        let row = shape[axis] * inner;
        let mut start = 0;
        for (j, &size) in sizes.iter().enumerate() {
            let begin = start;
            start += size;
            if !matches!(io.outputs.get(j), Some(Some(_))) {
                continue;
            }
            let mut out_shape = shape.to_vec();
            out_shape[axis] = size;
            let len = size * inner;
            write_f32_output(io, j, out_shape, |out| {
                if len > 0 {
                    let copy =
                        |(o, dst): (usize, &mut [f32])| dst.copy_from_slice(&x[o * row + begin * inner..][..len]);
                    // A large split (ViT's fused QKV, 1.8 MB per layer) across the pool: one
                    // thread copied at a third of the memory's speed.
                    if out.len() >= PARALLEL_ELEMENTS {
                        out.par_chunks_exact_mut(len).enumerate().for_each(copy);
                    } else {
                        out.chunks_exact_mut(len).enumerate().for_each(copy);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
