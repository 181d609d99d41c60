//! The `max-pool-rows` tactic for 2-D MaxPool (f32 NCHW, explicit or VALID padding, no Indices
//! output): per output row, each tap is one vectorized max over the output columns whose input
//! lies inside the image (ResNet's 3×3 stride-2 pool ran ~15 ms through the reference kernel's
//! per-tap lists in f64). A channels-last pool takes each output pixel's max over its taps'
//! channel vectors. Other forms run the reference kernel this tactic holds.

use super::conv::{gather_phase, valid_columns};
use super::io::{f32_input, write_f32_output};
use super::reference::ReferenceKernel;
use super::vecmath::multiversion;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Attributes, DType, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "max-pool-rows";

/// Calls that took the fast path (tests check the fast path ran, not only the fallback).
#[cfg(test)]
pub(crate) static FAST_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn applies(desc: &LayerDesc) -> bool {
    desc.layer.op == "MaxPool"
        && matches!(desc.input_types.first(), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32)
        && desc.layer.outputs.iter().skip(1).all(Option::is_none)
}

/// A 2-D window: kernel, stride, dilation, begin/end padding per axis, ceil mode.
#[derive(Clone, Copy)]
struct Window {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad_begin: [usize; 2],
    pad_end: [usize; 2],
    ceil: bool,
}

pub(crate) struct MaxPoolKernel {
    fallback: ReferenceKernel,
    window: Option<Window>,
    /// A channels-last layer (kiln_ir::channels_last): `[N, H, W, C]` in and out.
    channels_last: bool,
}

impl MaxPoolKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        Ok(MaxPoolKernel {
            fallback: ReferenceKernel::new(desc.layer)?,
            window: window(&desc.layer.attrs)?,
            channels_last: kiln_ir::channels_last::is_marked(&desc.layer.attrs),
        })
    }
}

/// The window, when the attributes describe a 2-D pool this tactic runs.
fn window(a: &Attributes) -> Result<Option<Window>, String> {
    let pair = |v: &[i64]| -> Option<[usize; 2]> {
        match v {
            [x, y] if *x > 0 && *y > 0 => Some([*x as usize, *y as usize]),
            _ => None,
        }
    };
    let Some(kernel) = pair(&a.ints("kernel_shape", vec![])?) else { return Ok(None) };
    let (Some(stride), Some(dilation)) =
        (pair(&a.ints("strides", vec![1, 1])?), pair(&a.ints("dilations", vec![1, 1])?))
    else {
        return Ok(None);
    };
    let pads = match a.string("auto_pad", "NOTSET".to_string())?.as_str() {
        "NOTSET" => a.ints("pads", vec![0; 4])?,
        "VALID" => vec![0; 4],
        _ => return Ok(None),
    };
    if pads.len() != 4 || pads.iter().any(|&p| p < 0) || a.int("storage_order", 0)? != 0 {
        return Ok(None);
    }
    let p = |i: usize| pads[i] as usize;
    Ok(Some(Window {
        kernel,
        stride,
        dilation,
        pad_begin: [p(0), p(1)],
        pad_end: [p(2), p(3)],
        ceil: a.int("ceil_mode", 0)? != 0,
    }))
}

impl Window {
    /// ONNX's output size on one axis; `None` when the window does not fit.
    fn output(&self, axis: usize, input: usize) -> Option<usize> {
        let extent = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
        let padded = input + self.pad_begin[axis] + self.pad_end[axis];
        if padded < extent {
            return None;
        }
        let s = self.stride[axis];
        let span = padded - extent;
        let mut out = if self.ceil { span.div_ceil(s) } else { span / s } + 1;
        // With ceil_mode the last window must still start inside the input or the begin padding.
        if self.ceil && (out - 1) * s >= input + self.pad_begin[axis] {
            out -= 1;
        }
        Some(out)
    }
}

impl LayerKernel for MaxPoolKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, shape) = f32_input(io, 0)?;
        let Some(win) = self.window else { return self.fallback.run(io) };
        if shape.len() != 4 || io.outputs.iter().skip(1).any(Option::is_some) {
            return self.fallback.run(io);
        }
        // (images, channels, rows, columns) whatever the layout.
        let (n, c, h, w) = if self.channels_last {
            (shape[0], shape[3], shape[1], shape[2])
        } else {
            (shape[0], shape[1], shape[2], shape[3])
        };
        let (Some(oh), Some(ow)) = (win.output(0, h), win.output(1, w)) else {
            return self.fallback.run(io);
        };
        // A window entirely in the padding has no input to take the max of.
        let empty = |axis: usize, out: usize, input: usize| {
            (0..out).any(|o| {
                let start = (o * win.stride[axis]) as isize - win.pad_begin[axis] as isize;
                (0..win.kernel[axis]).all(|k| {
                    let i = start + (k * win.dilation[axis]) as isize;
                    i < 0 || i >= input as isize
                })
            })
        };
        if empty(0, oh, h) || empty(1, ow, w) {
            return self.fallback.run(io);
        }
        if x.len() < n * c * h * w {
            return Err(format!("input of shape {shape:?} holds only {} elements", x.len()));
        }
        #[cfg(test)]
        FAST_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.channels_last {
            return write_f32_output(io, 0, vec![n, oh, ow, c], |out| {
                if c > 0 && ow > 0 {
                    out.par_chunks_mut(ow * c).enumerate().for_each(|(row, dst)| {
                        let (img, y) = (row / oh, row % oh);
                        max_pool_pixels(&win, &x[img * h * w * c..][..h * w * c], (h, w, c), y, dst);
                    });
                }
                Ok(())
            });
        }
        write_f32_output(io, 0, vec![n, c, oh, ow], |out| {
            let (in_plane, out_plane) = (h * w, oh * ow);
            if out_plane == 0 {
                return Ok(());
            }
            let planes_per_task = (8192 / out_plane).max(1);
            out.par_chunks_mut(out_plane * planes_per_task).enumerate().for_each(|(task, dsts)| {
                for (i, dst) in dsts.chunks_mut(out_plane).enumerate() {
                    let p = task * planes_per_task + i;
                    max_pool_plane(&win, &x[p * in_plane..(p + 1) * in_plane], h, w, dst, ow);
                }
            });
            Ok(())
        })
    }
}

multiversion! {
    /// One plane: each output row starts at −∞ and takes the max of every in-bounds tap. With a
    /// column stride, each input row is first split into its column phases (columns r, r + s,
    /// …), so every tap is a max over a contiguous run (a strided walk stayed scalar: ResNet's
    /// 3×3 stride-2 pool took 1 ms).
    fn max_pool_plane(win: &Window, src: &[f32], h: usize, w: usize, dst: &mut [f32], ow: usize) {
        let s = win.stride[1];
        let half = w.div_ceil(s);
        let mut phases = vec![0f32; if s > 1 { s * half } else { 0 }];
        for (oh, row_out) in dst.chunks_mut(ow).enumerate() {
            row_out.fill(f32::NEG_INFINITY);
            for kh in 0..win.kernel[0] {
                let ih = (oh * win.stride[0] + kh * win.dilation[0]) as isize - win.pad_begin[0] as isize;
                if ih < 0 || ih >= h as isize {
                    continue;
                }
                let row = &src[ih as usize * w..(ih as usize + 1) * w];
                if s > 1 {
                    for r in 0..s.min(w) {
                        gather_phase(&mut phases[r * half..(r + 1) * half], &row[r..], s);
                    }
                }
                for kw in 0..win.kernel[1] {
                    let offset = (kw * win.dilation[1]) as isize - win.pad_begin[1] as isize;
                    let (lo, hi) = valid_columns(offset, win.stride[1], w, ow);
                    if lo >= hi {
                        continue;
                    }
                    let first = ((lo * win.stride[1]) as isize + offset) as usize;
                    let out = &mut row_out[lo..hi];
                    if win.stride[1] == 1 {
                        for (o, &v) in out.iter_mut().zip(&row[first..first + (hi - lo)]) {
                            *o = if v > *o { v } else { *o };
                        }
                    } else {
                        let at = (first % s) * half + first / s;
                        for (o, &v) in out.iter_mut().zip(&phases[at..at + (hi - lo)]) {
                            *o = if v > *o { v } else { *o };
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Output row `y` of a channels-last image (`dims` = rows, columns, channels): each pixel
    /// the max of the channel vectors of its in-bounds taps (contiguous, so it vectorizes
    /// across channels).
    fn max_pool_pixels(win: &Window, image: &[f32], dims: (usize, usize, usize), y: usize, dst: &mut [f32]) {
        let (h, w, c) = dims;
        for (x, out) in dst.chunks_mut(c).enumerate() {
            out.fill(f32::NEG_INFINITY);
            for kh in 0..win.kernel[0] {
                let iy = (y * win.stride[0] + kh * win.dilation[0]) as isize - win.pad_begin[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kw in 0..win.kernel[1] {
                    let ix = (x * win.stride[1] + kw * win.dilation[1]) as isize - win.pad_begin[1] as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let pixel = &image[(iy as usize * w + ix as usize) * c..][..c];
                    for (o, &v) in out.iter_mut().zip(pixel) {
                        *o = if v > *o { v } else { *o };
                    }
                }
            }
        }
    }
}
