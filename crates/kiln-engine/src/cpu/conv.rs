//! Native 2-D convolution tactics (f32, NCHW, constant weights), each followed by the fused
//! epilogue (bias, residual, activation):
//! - `conv-1x1-gemm`: a 1×1 stride-1 unpadded convolution is a plain matrix product of the
//!   weight and the input, no copy;
//! - `conv-im2col-gemm`: patches unrolled into a scratch matrix, then one packed product per
//!   image and group;
//! - `conv-depthwise`: one filter per channel, computed directly (a product per channel would
//!   be a 1-row GEMM).

use super::epilogue::{apply, Bias};
use super::io::{f32_input, opt_f32_input, write_f32_output};
use super::sgemm::{sgemm, Mat};
use crate::backend::{LayerDesc, LayerIo, LayerKernel, Tactic};
use kiln_ir::{Activation, Attributes, DType, ValueType};
use rayon::prelude::*;

pub const ONE_BY_ONE: &str = "conv-1x1-gemm";
pub const IM2COL: &str = "conv-im2col-gemm";
pub const DEPTHWISE: &str = "conv-depthwise";

/// The native tactics that can run this Conv layer, with their scratch needs.
pub(crate) fn tactics(desc: &LayerDesc) -> Vec<Tactic> {
    let Some(geo) = geometry_for(desc) else { return Vec::new() };
    let mut out = Vec::new();
    if geo.is_pointwise() {
        out.push(Tactic::new(ONE_BY_ONE));
    }
    if geo.is_depthwise() {
        out.push(Tactic::new(DEPTHWISE));
    }
    let col_bytes = geo.cin_g * geo.kh * geo.kw * geo.oh * geo.ow * 4;
    out.push(Tactic { name: IM2COL.to_string(), workspace_bytes: col_bytes });
    out
}

/// Geometry at the opt shapes, when the layer is a 2-D f32 convolution with constant weights.
fn geometry_for(desc: &LayerDesc) -> Option<Geometry> {
    if desc.layer.op != "Conv" {
        return None;
    }
    let Some(Some(ValueType::Tensor(x))) = desc.input_types.first() else { return None };
    let w = desc.weights.get(1).copied().flatten()?;
    if x.dtype != DType::F32 || w.dtype != DType::F32 || w.shape.len() != 4 {
        return None;
    }
    let xs = kiln_ir::concrete(x.shape.as_deref()?)?;
    Geometry::new(&desc.layer.attrs, &xs, w.shape).ok()
}

pub(crate) struct ConvKernel {
    tactic: &'static str,
    attrs: Attributes,
    activation: Option<Activation>,
}

impl ConvKernel {
    pub fn new(desc: &LayerDesc, tactic: &'static str) -> Result<Self, String> {
        Ok(ConvKernel {
            tactic,
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
        })
    }
}

impl LayerKernel for ConvKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (w, w_shape) = f32_input(io, 1)?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        let out_shape = vec![g.n, g.cout, g.oh, g.ow];
        if let Some((_, s)) = residual {
            if s != out_shape.as_slice() {
                return Err(format!("residual of shape {s:?}, output {out_shape:?}"));
            }
        }
        if bias.is_some_and(|b| b.len() != g.cout) {
            return Err(format!("bias needs {} values", g.cout));
        }
        let residual = residual.map(|(r, _)| r);
        let (tactic, act) = (self.tactic, self.activation);
        write_f32_output(io, 0, out_shape, |out| match tactic {
            DEPTHWISE if g.is_depthwise() => {
                depthwise(&g, x, w, out);
                epilogue_all(&g, out, bias, residual, act);
                Ok(())
            }
            ONE_BY_ONE if g.is_pointwise() => gemm_conv(&g, x, w, out, bias, residual, act, false),
            IM2COL => gemm_conv(&g, x, w, out, bias, residual, act, true),
            other => Err(format!("tactic {other} does not fit this convolution's shape")),
        })
    }
}

/// Per image and group: (im2col or the input itself) then one product, then the epilogue.
#[allow(clippy::too_many_arguments)]
fn gemm_conv(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
    unroll: bool,
) -> Result<(), String> {
    let (m, k, cols) = (g.cout_g, g.cin_g * g.kh * g.kw, g.oh * g.ow);
    let mut col = if unroll { vec![0f32; k * cols] } else { Vec::new() };
    let in_plane = g.h * g.w;
    for n in 0..g.n {
        for grp in 0..g.group {
            let xg = &x[(n * g.cin + grp * g.cin_g) * in_plane..][..g.cin_g * in_plane];
            let rhs = if unroll {
                im2col(g, xg, &mut col);
                Mat::row_major(&col, cols)
            } else {
                Mat::row_major(xg, cols)
            };
            let lhs = Mat::row_major(&w[grp * m * k..(grp + 1) * m * k], k);
            let at = (n * g.cout + grp * m) * cols;
            let dst = &mut out[at..at + m * cols];
            sgemm(m, cols, k, lhs, rhs, dst, false)?;
            let b = bias.map_or(Bias::None, |b| Bias::PerRow(&b[grp * m..(grp + 1) * m]));
            apply(dst, cols, &b, residual.map(|r| &r[at..at + m * cols]), act);
        }
    }
    Ok(())
}

fn epilogue_all(
    g: &Geometry,
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) {
    let cols = g.oh * g.ow;
    let per_image = g.cout * cols;
    for n in 0..g.n {
        let at = n * per_image;
        let b = bias.map_or(Bias::None, Bias::PerRow);
        apply(&mut out[at..at + per_image], cols, &b, residual.map(|r| &r[at..at + per_image]), act);
    }
}

/// Unroll one image-group's patches: row (c, kh, kw), column (oh, ow); padding reads as 0.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let cols = g.oh * g.ow;
    let rows_per_channel = g.kh * g.kw;
    col.par_chunks_mut(rows_per_channel * cols).enumerate().for_each(|(c, block)| {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                let row = &mut block[(kh * g.kw + kw) * cols..][..cols];
                for oh in 0..g.oh {
                    let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize - g.pad_begin[0] as isize;
                    let dst = &mut row[oh * g.ow..(oh + 1) * g.ow];
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.w..(ih as usize + 1) * g.w];
                    for (ow, d) in dst.iter_mut().enumerate() {
                        let iw = (ow * g.stride[1] + kw * g.dilation[1]) as isize - g.pad_begin[1] as isize;
                        *d = if iw < 0 || iw >= g.w as isize { 0.0 } else { src[iw as usize] };
                    }
                }
            }
        }
    });
}

/// One filter per channel, computed directly; channels in parallel.
fn depthwise(g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    out.par_chunks_mut(out_plane).enumerate().for_each(|(nc, dst)| {
        let c = nc % g.cout;
        let src = &x[nc * in_plane..(nc + 1) * in_plane];
        let filt = &w[c * taps..(c + 1) * taps];
        for oh in 0..g.oh {
            for ow in 0..g.ow {
                let mut acc = 0f32;
                for kh in 0..g.kh {
                    let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize - g.pad_begin[0] as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let row = &src[ih as usize * g.w..][..g.w];
                    for kw in 0..g.kw {
                        let iw = (ow * g.stride[1] + kw * g.dilation[1]) as isize - g.pad_begin[1] as isize;
                        if iw >= 0 && iw < g.w as isize {
                            acc += filt[kh * g.kw + kw] * row[iw as usize];
                        }
                    }
                }
                dst[oh * g.ow + ow] = acc;
            }
        }
    });
}

/// A 2-D convolution's sizes, from ONNX attributes and the input/weight shapes.
#[derive(Clone, Debug)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    group: usize,
    cin_g: usize,
    cout_g: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    pad_begin: [usize; 2],
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(attrs: &Attributes, x: &[usize], w: &[usize]) -> Result<Geometry, String> {
        if x.len() != 4 || w.len() != 4 {
            return Err(format!("native convolution is 2-D: input {x:?}, weight {w:?}"));
        }
        let group = attrs.int("group", 1)?;
        let pair = |name: &str| -> Result<[usize; 2], String> {
            let v = attrs.ints(name, vec![1, 1])?;
            match v.as_slice() {
                [a, b] if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
                _ => Err(format!("{name} {v:?}")),
            }
        };
        let (stride, dilation) = (pair("strides")?, pair("dilations")?);
        if group <= 0 || x[1] % group as usize != 0 || w[0] % group as usize != 0 || w[1] * group as usize != x[1] {
            return Err(format!("group {group} does not divide channels (input {x:?}, weight {w:?})"));
        }
        let group = group as usize;
        let (kh, kw) = (w[2], w[3]);
        let extent = |i: usize, k: usize| dilation[i] * (k - 1) + 1;
        let auto_pad = attrs.string("auto_pad", "NOTSET".to_string())?;
        let mut pads = attrs.ints("pads", vec![0, 0, 0, 0])?;
        if pads.len() != 4 || pads.iter().any(|&p| p < 0) {
            return Err(format!("pads {pads:?}"));
        }
        match auto_pad.as_str() {
            "NOTSET" => {}
            "VALID" => pads = vec![0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                for i in 0..2 {
                    let size = x[2 + i];
                    let out = size.div_ceil(stride[i]);
                    let total = ((out - 1) * stride[i] + extent(i, w[2 + i])).saturating_sub(size) as i64;
                    let (small, big) = (total / 2, total - total / 2);
                    let (b, e) = if auto_pad == "SAME_UPPER" { (small, big) } else { (big, small) };
                    pads[i] = b;
                    pads[i + 2] = e;
                }
            }
            other => return Err(format!("auto_pad {other}")),
        }
        let out_dim = |i: usize| -> Result<usize, String> {
            let padded = x[2 + i] + pads[i] as usize + pads[i + 2] as usize;
            let e = extent(i, w[2 + i]);
            if padded < e {
                return Err("kernel larger than the padded input".into());
            }
            Ok((padded - e) / stride[i] + 1)
        };
        Ok(Geometry {
            n: x[0],
            cin: x[1],
            h: x[2],
            w: x[3],
            cout: w[0],
            group,
            cin_g: w[1],
            cout_g: w[0] / group,
            kh,
            kw,
            stride,
            dilation,
            pad_begin: [pads[0] as usize, pads[1] as usize],
            oh: out_dim(0)?,
            ow: out_dim(1)?,
        })
    }

    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad_begin == [0, 0]
            && self.oh == self.h
            && self.ow == self.w
    }

    fn is_depthwise(&self) -> bool {
        self.group == self.cin && self.cin_g == 1 && self.cout == self.cin
    }
}
