//! The `global-average-pool` tactic for GlobalAveragePool on f32 tensors: each (image,
//! channel)'s mean over its spatial elements, summed in f32 with 16 partial sums that
//! vectorize (the reference kernel copies each plane and sums it in f64: 0.12 ms of
//! MobileNetV2's ~15 ms at batch 1, a millisecond at batch 8). Inputs of rank < 3 run the
//! reference kernel this tactic holds. A channels-last layer averages each image's pixel
//! vectors instead.

use super::io::{f32_input, write_f32_output};
use super::reference::ReferenceKernel;
use super::vecmath::multiversion;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{DType, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "global-average-pool";

/// Input elements one task averages: enough work to amortize a task.
const TASK_ELEMENTS: usize = 1 << 15;

pub(crate) fn applies(desc: &LayerDesc) -> bool {
    desc.layer.op == "GlobalAveragePool"
        && matches!(desc.input_types.first(), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32)
}

pub(crate) struct GlobalAveragePoolKernel {
    fallback: ReferenceKernel,
    /// A channels-last layer (kiln_ir::channels_last): `[N, H, W, C]` → `[N, 1, 1, C]`.
    channels_last: bool,
}

impl GlobalAveragePoolKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        Ok(GlobalAveragePoolKernel {
            fallback: ReferenceKernel::new(desc.layer)?,
            channels_last: kiln_ir::channels_last::is_marked(&desc.layer.attrs),
        })
    }
}

/// The channels-last mean: per image, the pixels' channel vectors summed in f32 (contiguous
/// rows, so the sum vectorizes across channels), then scaled.
fn channels_last_mean(io: &mut LayerIo<'_>, x: &[f32], shape: &[usize]) -> Result<(), String> {
    let &[n, h, w, c] = shape else { return Err(format!("channels-last input of shape {shape:?} is not 4-D")) };
    let pixels = h * w;
    if x.len() < n * pixels * c {
        return Err(format!("input of shape {shape:?} holds only {} elements", x.len()));
    }
    write_f32_output(io, 0, vec![n, 1, 1, c], |out| {
        if c == 0 {
            return Ok(());
        }
        out[..n * c].par_chunks_mut(c).enumerate().for_each(|(img, dst)| {
            sum_rows(&x[img * pixels * c..][..pixels * c], dst);
            for d in dst.iter_mut() {
                *d /= pixels as f32;
            }
        });
        Ok(())
    })
}

multiversion! {
    /// `dst[j] = Σ_i rows[i·len + j]` over the rows of `rows` (`dst.len()` long each).
    fn sum_rows(rows: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        for row in rows.chunks_exact(dst.len()) {
            for (d, v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
    }
}

impl LayerKernel for GlobalAveragePoolKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, shape) = f32_input(io, 0)?;
        if self.channels_last {
            return channels_last_mean(io, x, shape);
        }
        if shape.len() < 3 {
            return self.fallback.run(io);
        }
        let rows = shape[0] * shape[1];
        let plane: usize = shape[2..].iter().product();
        if x.len() < rows * plane {
            return Err(format!("input of shape {shape:?} holds only {} elements", x.len()));
        }
        let mut out_shape = shape.to_vec();
        out_shape[2..].fill(1);
        write_f32_output(io, 0, out_shape, |out| {
            let per_task = (TASK_ELEMENTS / plane.max(1)).max(1);
            out[..rows].par_chunks_mut(per_task).enumerate().for_each(|(task, dst)| {
                for (i, d) in dst.iter_mut().enumerate() {
                    let r = task * per_task + i;
                    *d = mean(&x[r * plane..(r + 1) * plane]);
                }
            });
            Ok(())
        })
    }
}

multiversion! {
    /// The mean of `v` (NaN when empty, as the reference's 0 / 0).
    fn mean(v: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let chunks = v.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        (acc.iter().sum::<f32>() + tail) / v.len() as f32
    }
}
