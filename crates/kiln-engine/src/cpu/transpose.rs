//! The `transpose-tiled` tactic: the Transposes the layout pass puts where an NHWC run meets
//! NCHW layers (`[0, 2, 3, 1]` and `[0, 3, 1, 2]` on f32), as one 2-D transpose per image
//! (channels × pixels ↔ pixels × channels) in 16 × 16 tiles, so both the reads and the writes
//! stay within a few cache lines; the reference kernel gathers element by element through an
//! index table in f64 per element.

use super::io::{f32_input, write_f32_output, OutPtr};
use super::vecmath::multiversion;
#[cfg(target_arch = "x86_64")]
use super::vecmath::{level, transpose8, Level};
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
                let dst = OutPtr(out_ptr.at(img * image));
                // Whole 8 × 8 blocks through registers, the ragged edges element by element.
                #[cfg(target_arch = "x86_64")]
                let (r8, j8) = if level() != Level::Portable {
                    let (r8, j8) = (r0 + (r1 - r0) / 8 * 8, j0 + (j1 - j0) / 8 * 8);
                    for i in (r0..r8).step_by(8) {
                        for j in (j0..j8).step_by(8) {
                            // SAFETY: AVX2 checked; rows i..i + 8 × columns j..j + 8 of the
                            // source lie inside it, and their transposed places in this task's
                            // part of the output.
                            unsafe { block8(src.as_ptr().add(i * cols + j), cols, dst.at(j * rows + i), rows) };
                        }
                    }
                    (r8, j8)
                } else {
                    (r0, j0)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let (r8, j8) = (r0, j0);
                for i in r0..r1 {
                    let from = if i < r8 { j8 } else { j0 };
                    for j in from..j1 {
                        // SAFETY: element (j, i) of this image's cols × rows output; this task
                        // alone covers source rows r0..r1 × columns j0..j1.
                        unsafe { *dst.at(j * rows + i) = src[i * cols + j] };
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

/// One 8 × 8 block: 8 source rows `src_stride` apart into 8 destination rows `dst_stride` apart.
///
/// # Safety
/// The CPU must have AVX2; both blocks must lie inside their buffers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: forwarded from the caller.
    unsafe {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(src.add(i * src_stride));
        }
        transpose8(&mut r);
        for (i, v) in r.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * dst_stride), *v);
        }
    }
}
