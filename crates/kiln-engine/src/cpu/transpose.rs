//! The `transpose-tiled` tactic: the Transposes the layout pass puts where an NHWC run meets
//! NCHW layers (`[0, 2, 3, 1]` and `[0, 3, 1, 2]` on f32), as one 2-D transpose per image
//! (channels × pixels ↔ pixels × channels) in 16 × 16 tiles, so both the reads and the writes
//! stay within a few cache lines; the reference kernel gathers element by element through an
//! index table in f64 per element.

use super::io::{f32_input, write_f32_output, OutPtr};
use super::vecmath::multiversion;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::channels_last::{TO_NCHW, TO_NHWC};
use kiln_ir::{DType, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "transpose-tiled";

/// Tile edge: 16 f32 are one cache line.
const TILE: usize = 16;

/// Source columns per task.
const COLUMN_RUN: usize = 1024;

pub(crate) fn applies(desc: &LayerDesc) -> bool {
    desc.layer.op == "Transpose"
        && matches!(desc.input_types.first(), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32)
        && perm(desc).is_some()
}

/// Whether the layer moves channels last (`true`) or first (`false`).
fn perm(desc: &LayerDesc) -> Option<bool> {
    let p: Vec<usize> = desc.layer.attrs.ints("perm", vec![]).ok()?.iter().map(|&v| v as usize).collect();
    match p.as_slice() {
        p if p == TO_NHWC => Some(true),
        p if p == TO_NCHW => Some(false),
        _ => None,
    }
}

pub(crate) struct TransposeKernel {
    to_nhwc: bool,
}

impl TransposeKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let to_nhwc = perm(desc).ok_or("transpose-tiled moves a 4-D tensor's channels last or first")?;
        Ok(TransposeKernel { to_nhwc })
    }
}

impl LayerKernel for TransposeKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, shape) = f32_input(io, 0)?;
        let &[n, a, b, c] = shape else { return Err(format!("transpose-tiled input of shape {shape:?} is not 4-D")) };
        if x.len() < n * a * b * c {
            return Err(format!("input of shape {shape:?} holds only {} elements", x.len()));
        }
        // Per image, a rows × cols matrix becomes cols × rows.
        let (out_shape, rows, cols) =
            if self.to_nhwc { (vec![n, b, c, a], a, b * c) } else { (vec![n, c, a, b], a * b, c) };
        write_f32_output(io, 0, out_shape, |out| {
            let image = rows * cols;
            if image == 0 {
                return Ok(());
            }
            let out_ptr = OutPtr(out.as_mut_ptr());
            // Tasks: a band of TILE source rows × a run of columns (a 3-channel image is one
            // band of 50 176 columns).
            let (row_tiles, col_runs) = (rows.div_ceil(TILE), cols.div_ceil(COLUMN_RUN));
            (0..n * row_tiles * col_runs).into_par_iter().for_each(|task| {
                let (img, band) = (task / (row_tiles * col_runs), task % (row_tiles * col_runs));
                let (r0, j0) = (band / col_runs * TILE, band % col_runs * COLUMN_RUN);
                let src = &x[img * image..][..image];
                let (r1, j1) = ((r0 + TILE).min(rows), (j0 + COLUMN_RUN).min(cols));
                if rows == 3 {
                    // An RGB image's planes interleaved, three at a time with the count known
                    // (the general loop ran 0.08 ms on a 224 × 224 input).
                    // SAFETY: output columns j0..j1 of this image, this task's alone.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out_ptr.at(img * image + j0 * 3), (j1 - j0) * 3) };
                    interleave3([&src[j0..j1], &src[cols + j0..cols + j1], &src[2 * cols + j0..2 * cols + j1]], dst);
                    return;
                }
                for c0 in (j0..j1).step_by(TILE) {
                    for j in c0..(c0 + TILE).min(j1) {
                        for i in r0..r1 {
                            // SAFETY: element (j, i) of this image's cols × rows output; this
                            // task alone covers source rows r0..r1 × columns j0..j1.
                            unsafe { *out_ptr.at(img * image + j * rows + i) = src[i * cols + j] };
                        }
                    }
                }
            });
            Ok(())
        })
    }
}

multiversion! {
    /// `dst[3j + i] = planes[i][j]`.
    fn interleave3(planes: [&[f32]; 3], dst: &mut [f32]) {
        for (((d, &a), &b), &c) in dst.chunks_exact_mut(3).zip(planes[0]).zip(planes[1]).zip(planes[2]) {
            d[0] = a;
            d[1] = b;
            d[2] = c;
        }
    }
}
