//! Resize (latest opset; Resize-10 and Upsample arrive rewritten by their importers).
//!
//! Follows the ONNX reference (`op_resize.py`) exactly: the interpolation is separable, so each
//! resized axis is processed in turn. For every output position along an axis we compute the
//! source coordinate (`coordinate_transformation_mode`), a window of `n` taps with their weights
//! (nearest / linear / cubic, optionally antialiased), clamp tap indices to the edge, and
//! accumulate in f64. Nearest mode selects exactly one tap, so it is done as a typed gather
//! (exact for every dtype, including i64 and bool).

use super::{cast_f64, tensor_from_f64, Rounding};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, map_data, Element, Tensor, Value};
use rayon::prelude::*;

pub(super) fn resize(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let p = Params::from_ctx(ctx)?;
    let rank = x.rank();
    let in_shape = x.shape().to_vec();

    // Empty `roi`/`scales` tensors mean "not given" (opset 11-12 models pass them as
    // placeholders since those inputs were required then).
    let non_empty =
        |i: usize| -> Result<Option<&Tensor>, String> { Ok(opt_tensor_arg(inputs, i)?.filter(|t| !t.is_empty())) };
    let roi = non_empty(1)?.map(|t| t.to_f64_vec());
    let scales = non_empty(2)?;
    let sizes = non_empty(3)?;

    let axes: Vec<usize> = match &p.axes {
        Some(a) => {
            let mut out = Vec::with_capacity(a.len());
            for &ax in a {
                let n = crate::util::normalize_axis(ax, rank)?;
                if out.contains(&n) {
                    return Err(format!("axes {a:?} repeat axis {ax}"));
                }
                out.push(n);
            }
            out
        }
        None => (0..rank).collect(),
    };

    let plan = plan_axes(&in_shape, &axes, scales, sizes, &p.keep_aspect_ratio_policy)?;
    checked_numel(&plan.out_shape).map_err(|e| e.to_string())?;

    // Full-rank ROI: [starts..., ends...], identity (0..1) on axes that are not listed.
    let roi_full: Option<Vec<f64>> = match roi {
        Some(r) => {
            if r.len() != 2 * axes.len() {
                return Err(format!("roi has {} values, expected {} (2 per resized axis)", r.len(), 2 * axes.len()));
            }
            let mut full = vec![0.0; rank];
            full.extend(std::iter::repeat_n(1.0, rank));
            for (i, &d) in axes.iter().enumerate() {
                full[d] = r[i];
                full[rank + d] = r[axes.len() + i];
            }
            Some(full)
        }
        None => None,
    };
    if p.coord_mode == CoordMode::TfCropAndResize && roi_full.is_none() {
        return Err("coordinate_transformation_mode 'tf_crop_and_resize' needs the roi input".into());
    }

    // The per-axis sampling tables, in processing order; identity axes are skipped.
    let mut steps = Vec::new();
    for &axis in &axes {
        let (in_w, out_w, scale) = (in_shape[axis], plan.out_shape[axis], plan.scales[axis]);
        let axis_roi = roi_full.as_ref().map(|r| (r[axis], r[rank + axis]));
        let trivial_roi = axis_roi.is_none_or(|(a, b)| is_close(a, 0.0) && is_close(b, 1.0));
        if is_close(scale, 1.0) && out_w == in_w && trivial_roi {
            continue;
        }
        if in_w == 0 && out_w > 0 {
            return Err(format!("cannot resize axis {axis} of size 0 to size {out_w}"));
        }
        steps.push((axis, AxisTaps::new(&p, in_w, out_w, scale, axis_roi)?));
    }

    let out = if p.mode == Mode::Nearest {
        let fill = p.extrapolation_value;
        Tensor::new(plan.out_shape.clone(), map_data!(x.data(), v => nearest_passes(v, &in_shape, &steps, fill)))
            .map_err(|e| e.to_string())?
    } else {
        let mut data = x.to_f64_vec();
        let mut shape = in_shape.clone();
        for (axis, taps) in &steps {
            data = interpolate_axis(&data, &shape, *axis, taps, p.extrapolation_value);
            shape[*axis] = taps.out_w;
        }
        tensor_from_f64(x.dtype(), shape, &data, Rounding::HalfEven)?
    };
    Ok(single(out))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
    /// Only in Resize-11/12: `(x + 0.5) / scale`, meant for nearest mode.
    TfHalfPixelForNn,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// The attributes of one Resize layer, validated.
struct Params {
    mode: Mode,
    coord_mode: CoordMode,
    nearest_mode: NearestMode,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation_value: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    keep_aspect_ratio_policy: String,
}

impl Params {
    fn from_ctx(ctx: &KernelCtx) -> Result<Params, String> {
        let a = ctx.attrs;
        let mode = match a.string("mode", "nearest".into())?.as_str() {
            "nearest" => Mode::Nearest,
            "linear" | "bilinear" | "trilinear" => Mode::Linear,
            "cubic" | "bicubic" => Mode::Cubic,
            other => return Err(format!("unknown mode '{other}'")),
        };
        let coord_mode = match a.string("coordinate_transformation_mode", "half_pixel".into())?.as_str() {
            "half_pixel" => CoordMode::HalfPixel,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
            other => return Err(format!("unknown coordinate_transformation_mode '{other}'")),
        };
        let nearest_mode = match a.string("nearest_mode", "round_prefer_floor".into())?.as_str() {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            other => return Err(format!("unknown nearest_mode '{other}'")),
        };
        let keep_aspect_ratio_policy = a.string("keep_aspect_ratio_policy", "stretch".into())?;
        if !matches!(keep_aspect_ratio_policy.as_str(), "stretch" | "not_larger" | "not_smaller") {
            return Err(format!("unknown keep_aspect_ratio_policy '{keep_aspect_ratio_policy}'"));
        }
        Ok(Params {
            mode,
            coord_mode,
            nearest_mode,
            cubic_a: a.float("cubic_coeff_a", -0.75)? as f64,
            exclude_outside: a.int("exclude_outside", 0)? != 0,
            extrapolation_value: a.float("extrapolation_value", 0.0)? as f64,
            antialias: a.int("antialias", 0)? != 0,
            axes: a.ints_opt("axes")?,
            keep_aspect_ratio_policy,
        })
    }
}

/// Output shape and per-axis scale factors (1 on axes not resized).
struct AxisPlan {
    out_shape: Vec<usize>,
    scales: Vec<f64>,
}

fn plan_axes(
    in_shape: &[usize],
    axes: &[usize],
    scales: Option<&Tensor>,
    sizes: Option<&Tensor>,
    policy: &str,
) -> Result<AxisPlan, String> {
    let rank = in_shape.len();
    let mut out_shape = in_shape.to_vec();
    let mut factors = vec![1.0f64; rank];
    match (scales, sizes) {
        (Some(_), Some(_)) => return Err("only one of 'scales' and 'sizes' may be given".into()),
        (None, None) => return Err("one of 'scales' and 'sizes' must be given".into()),
        (Some(s), None) => {
            if !s.dtype().is_float() {
                return Err(format!("scales must be a float tensor, got {}", s.dtype()));
            }
            let s = s.to_f64_vec();
            if s.len() != axes.len() {
                return Err(format!("scales has {} values, expected {}", s.len(), axes.len()));
            }
            for (i, &d) in axes.iter().enumerate() {
                // NaN fails this test too.
                if !(s[i] > 0.0 && s[i].is_finite()) {
                    return Err(format!("scales must be positive and finite, got {}", s[i]));
                }
                factors[d] = s[i];
                // The spec's floor(input * scale); the product is done in f64 like the reference.
                let o = (s[i] * in_shape[d] as f64).floor();
                if o > kiln_ir::MAX_ELEMENTS as f64 {
                    return Err(format!("scale {} makes axis {d} too large", s[i]));
                }
                out_shape[d] = o as usize;
            }
        }
        (None, Some(z)) => {
            if !z.dtype().is_int() {
                return Err(format!("sizes must be an integer tensor, got {}", z.dtype()));
            }
            let z = z.to_i64_vec();
            if z.len() != axes.len() {
                return Err(format!("sizes has {} values, expected {}", z.len(), axes.len()));
            }
            for (i, &d) in axes.iter().enumerate() {
                if z[i] < 0 || z[i] as u64 > kiln_ir::MAX_ELEMENTS as u64 {
                    return Err(format!("sizes value {} is out of range", z[i]));
                }
                out_shape[d] = z[i] as usize;
                factors[d] = z[i] as f64 / in_shape[d] as f64;
            }
            if policy != "stretch" && !axes.is_empty() {
                let it = axes.iter().map(|&d| factors[d]);
                let scale = if policy == "not_larger" {
                    it.fold(f64::INFINITY, f64::min)
                } else {
                    it.fold(f64::NEG_INFINITY, f64::max)
                };
                for &d in axes {
                    factors[d] = scale;
                    // Round half up, as the spec's keep_aspect_ratio_policy text says.
                    let o = (scale * in_shape[d] as f64 + 0.5).floor();
                    if !(0.0..=kiln_ir::MAX_ELEMENTS as f64).contains(&o) {
                        return Err(format!("keep_aspect_ratio_policy gives an invalid size for axis {d}"));
                    }
                    out_shape[d] = o as usize;
                }
            }
        }
    }
    Ok(AxisPlan { out_shape, scales: factors })
}

/// Python's `math.isclose` with its default relative tolerance (used by the reference to skip
/// axes that are not resized).
fn is_close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Sampling table of one axis: for each output position, `n` clamped source indices and their
/// weights, or "extrapolate" (tf_crop_and_resize outside the input).
struct AxisTaps {
    out_w: usize,
    n: usize,
    idx: Vec<usize>,
    weights: Vec<f64>,
    extrapolated: Vec<bool>,
}

impl AxisTaps {
    fn new(p: &Params, in_w: usize, out_w: usize, scale: f64, roi: Option<(f64, f64)>) -> Result<AxisTaps, String> {
        // The float output width the coordinate formulas use (not the rounded one).
        let out_f = scale * in_w as f64;
        let in_f = in_w as f64;
        let mut taps = AxisTaps { out_w, n: 0, idx: Vec::new(), weights: Vec::new(), extrapolated: vec![false; out_w] };
        if p.antialias && p.mode != Mode::Nearest && out_w > 0 {
            // The antialiasing filter widens to ~4/scale taps when downsampling.
            let taps = (4.0 / scale.min(1.0)).ceil() + 4.0;
            if !taps.is_finite() || taps * out_w as f64 > kiln_ir::MAX_ELEMENTS as f64 {
                return Err(format!("scale {scale} needs too many antialiasing taps"));
            }
        }
        let mut coeffs: Vec<f64> = Vec::new();
        for o in 0..out_w {
            let y = o as f64;
            let x = match p.coord_mode {
                CoordMode::AlignCorners => {
                    if out_f == 1.0 {
                        0.0
                    } else {
                        y * (in_f - 1.0) / (out_f - 1.0)
                    }
                }
                CoordMode::Asymmetric => y / scale,
                CoordMode::TfCropAndResize => {
                    let (start, end) = roi.ok_or("tf_crop_and_resize needs roi")?;
                    let x = if out_f == 1.0 {
                        (end - start) * (in_f - 1.0) / 2.0
                    } else {
                        y * (end - start) * (in_f - 1.0) / (out_f - 1.0)
                    };
                    let x = x + start * (in_f - 1.0);
                    if x < 0.0 || x > in_f - 1.0 {
                        taps.extrapolated[o] = true;
                    }
                    x
                }
                CoordMode::PytorchHalfPixel => {
                    if out_f == 1.0 {
                        -0.5
                    } else {
                        (y + 0.5) / scale - 0.5
                    }
                }
                CoordMode::HalfPixel => (y + 0.5) / scale - 0.5,
                CoordMode::HalfPixelSymmetric => {
                    let adjustment = out_w as f64 / out_f;
                    let center = in_f / 2.0;
                    let offset = center * (1.0 - adjustment);
                    offset + (y + 0.5) / scale - 0.5
                }
                CoordMode::TfHalfPixelForNn => (y + 0.5) / scale,
            };
            if !x.is_finite() {
                return Err(format!("source coordinate {x} is not finite (scale {scale})"));
            }
            // The reference prefers the pixel left of x: an integral x gets ratio 1, which
            // shifts the (even-sized) window one step to the left below.
            let x_int = x.floor();
            let ratio = if x == x_int { 1.0 } else { x - x_int };
            coeffs.clear();
            p.coeffs(ratio, scale, &mut coeffs);
            let n = coeffs.len();
            if o == 0 {
                taps.n = n;
                let total = n.checked_mul(out_w).ok_or("resize window too large")?;
                taps.idx.reserve(total);
                taps.weights.reserve(total);
            }
            // The window of n taps nearest to x, ties broken towards smaller indices, found in
            // the reference's edge-padded coordinates.
            let pad = n.div_ceil(2) as f64;
            let xp = x + pad;
            let pp = xp.floor();
            let frac = xp - pp;
            let half = (n / 2) as f64;
            let offset = if n.is_multiple_of(2) {
                if frac == 0.0 {
                    -half
                } else {
                    -half + 1.0
                }
            } else {
                let base = -(((n - 1) / 2) as f64);
                if frac <= 0.5 {
                    base
                } else {
                    base + 1.0
                }
            };
            let start = pp + offset - pad;
            if p.exclude_outside {
                let mut sum = 0.0;
                for (k, c) in coeffs.iter_mut().enumerate() {
                    let i = start + k as f64;
                    if i < 0.0 || i >= in_f {
                        *c = 0.0;
                    }
                    sum += *c;
                }
                let sum = if sum == 0.0 { 1.0 } else { sum };
                coeffs.iter_mut().for_each(|c| *c /= sum);
            }
            let last = in_f - 1.0;
            for (k, &c) in coeffs.iter().enumerate() {
                // Edge padding = clamping the index into the input.
                taps.idx.push((start + k as f64).clamp(0.0, last.max(0.0)) as usize);
                taps.weights.push(c);
            }
        }
        Ok(taps)
    }
}

impl Params {
    /// Interpolation weights for a source position with fractional part `ratio` in (0, 1].
    fn coeffs(&self, ratio: f64, scale: f64, out: &mut Vec<f64>) {
        match self.mode {
            Mode::Nearest => {
                let pick_right = if ratio == 1.0 {
                    true
                } else {
                    match self.nearest_mode {
                        NearestMode::RoundPreferFloor => ratio > 0.5,
                        NearestMode::RoundPreferCeil => ratio >= 0.5,
                        NearestMode::Floor => false,
                        NearestMode::Ceil => true,
                    }
                };
                out.extend_from_slice(if pick_right { &[0.0, 1.0] } else { &[1.0, 0.0] });
            }
            Mode::Linear if self.antialias => {
                // The triangle filter stretched by 1/scale when downsampling.
                let s = scale.min(1.0);
                let start = (-1.0 / s).floor() + 1.0;
                let footprint = (2.0 - 2.0 * start) as usize;
                let mut sum = 0.0;
                for k in 0..footprint {
                    let arg = (start + k as f64 - ratio) * s;
                    let c = (1.0 - arg.abs()).clamp(0.0, 1.0);
                    sum += c;
                    out.push(c);
                }
                out.iter_mut().for_each(|c| *c /= sum);
            }
            Mode::Linear => out.extend_from_slice(&[1.0 - ratio, ratio]),
            Mode::Cubic if self.antialias => {
                let s = scale.min(1.0);
                let i_start = (-2.0 / s).floor() as i64 + 1;
                let i_end = 2 - i_start;
                // Taps beyond the kernel's support are an exact (f64) 0 in the reference,
                // which turns its whole coefficient array into f64; otherwise it stays f32.
                let mut all_f32 = true;
                for i in i_start..i_end {
                    match cubic_kernel_f32(s * (i as f64 - ratio), self.cubic_a as f32) {
                        Some(c) => out.push(c as f64),
                        None => {
                            all_f32 = false;
                            out.push(0.0);
                        }
                    }
                }
                if all_f32 {
                    let sum = out.iter().fold(0.0f32, |acc, &c| acc + c as f32);
                    out.iter_mut().for_each(|c| *c = (*c as f32 / sum) as f64);
                } else {
                    let sum: f64 = out.iter().sum();
                    out.iter_mut().for_each(|c| *c /= sum);
                }
            }
            Mode::Cubic => {
                // The reference evaluates these in float32 (cubic_coeff_a is a float32 attribute
                // and numpy keeps float32 when mixing it with Python floats); doing the same
                // keeps results identical, including near-integer positions where the tiny
                // weights decide what exclude_outside renormalizes.
                let a = self.cubic_a as f32;
                let r = ratio as f32;
                let r1 = (ratio + 1.0) as f32;
                let q = (1.0 - ratio) as f32;
                let q1 = ((1.0 - ratio) + 1.0) as f32;
                out.extend_from_slice(&[
                    (((a * r1 - 5.0 * a) * r1 + 8.0 * a) * r1 - 4.0 * a) as f64,
                    (((a + 2.0) * r - (a + 3.0)) * r * r + 1.0) as f64,
                    (((a + 2.0) * q - (a + 3.0)) * q * q + 1.0) as f64,
                    (((a * q1 - 5.0 * a) * q1 + 8.0 * a) * q1 - 4.0 * a) as f64,
                ]);
            }
        }
    }
}

/// Keys' cubic convolution kernel with parameter `a`, in the reference's mixed precision
/// (distance powers in f64, rounded to f32 when combined with `a`); `None` outside |x| < 2.
fn cubic_kernel_f32(x: f64, a: f32) -> Option<f32> {
    let x = x.abs();
    let x2 = x * x;
    let x3 = x * x2;
    if x <= 1.0 {
        Some((a + 2.0) * x3 as f32 - (a + 3.0) * x2 as f32 + 1.0)
    } else if x < 2.0 {
        Some(a * x3 as f32 - 5.0 * a * x2 as f32 + 8.0 * a * x as f32 - 4.0 * a)
    } else {
        None
    }
}

/// Below this many output elements per pass, threading costs more than it saves.
const PARALLEL_MIN: usize = 1 << 16;

/// Run `f(block index, block)` over consecutive `block`-sized chunks of `out`, in parallel when
/// the pass is large.
fn for_blocks<T: Send>(out: &mut [T], block: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.is_empty() || block == 0 {
        return;
    }
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(block).enumerate().for_each(|(b, chunk)| f(b, chunk));
    } else {
        out.chunks_mut(block).enumerate().for_each(|(b, chunk)| f(b, chunk));
    }
}

/// Nearest mode: per resized axis, copy the one selected source row (the tap with weight 1).
fn nearest_passes<T: Element>(data: &[T], in_shape: &[usize], steps: &[(usize, AxisTaps)], fill: f64) -> Vec<T> {
    let fill: T = cast_f64(fill);
    let mut cur = data.to_vec();
    let mut shape = in_shape.to_vec();
    for (axis, taps) in steps {
        let inner: usize = shape[axis + 1..].iter().product();
        let in_w = shape[*axis];
        let outer: usize = shape[..*axis].iter().product();
        // The selected source index per output position (None: extrapolated).
        let src_of: Vec<Option<usize>> = (0..taps.out_w)
            .map(|o| {
                (!taps.extrapolated[o]).then(|| {
                    let w = &taps.weights[o * taps.n..(o + 1) * taps.n];
                    taps.idx[o * taps.n + w.iter().position(|&c| c == 1.0).unwrap_or(0)]
                })
            })
            .collect();
        let mut out = vec![fill; outer * taps.out_w * inner];
        let src = &cur;
        for_blocks(&mut out, taps.out_w * inner, |b, dst| {
            let block = &src[b * in_w * inner..(b + 1) * in_w * inner];
            for (o, s) in src_of.iter().enumerate() {
                if let Some(s) = s {
                    dst[o * inner..(o + 1) * inner].copy_from_slice(&block[s * inner..(s + 1) * inner]);
                }
            }
        });
        cur = out;
        shape[*axis] = taps.out_w;
    }
    cur
}

/// Linear/cubic: resize one axis of an f64 tensor with the precomputed taps.
fn interpolate_axis(data: &[f64], shape: &[usize], axis: usize, taps: &AxisTaps, fill: f64) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let in_w = shape[axis];
    let mut out = vec![0.0f64; outer * taps.out_w * inner];
    for_blocks(&mut out, taps.out_w * inner, |b, dst_block| {
        let src_block = &data[b * in_w * inner..(b + 1) * in_w * inner];
        for o in 0..taps.out_w {
            let dst = &mut dst_block[o * inner..(o + 1) * inner];
            if taps.extrapolated[o] {
                dst.fill(fill);
                continue;
            }
            for k in 0..taps.n {
                let (src, w) = (taps.idx[o * taps.n + k], taps.weights[o * taps.n + k]);
                let row = &src_block[src * inner..(src + 1) * inner];
                // Inner loop over contiguous elements; a zero weight still multiplies so that
                // NaN/inf propagate as in the reference's dot product.
                for (d, &s) in dst.iter_mut().zip(row) {
                    *d += w * s;
                }
            }
        }
    });
    out
}
