//! GridSample (N-D; nearest / linear / cubic with zeros / border / reflection padding) and
//! AffineGrid, following the ONNX reference (which follows PyTorch's grid_sampler).

use super::{require_float, tensor_from_f64, Rounding};
use crate::util::{single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, DType, Tensor, Value};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

pub(super) fn grid_sample(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let grid = tensor_arg(inputs, 1)?;
    require_float(grid, "grid")?;
    let a = ctx.attrs;
    let mode = match a.string("mode", "linear".into())?.as_str() {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" => Mode::Linear,
        "cubic" | "bicubic" => Mode::Cubic,
        other => return Err(format!("unknown mode '{other}'")),
    };
    let padding = match a.string("padding_mode", "zeros".into())?.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        other => return Err(format!("unknown padding_mode '{other}'")),
    };
    let align_corners = a.int("align_corners", 0)? != 0;

    let xs = x.shape();
    let gs = grid.shape();
    let rank = xs.len();
    if rank < 3 || gs.len() != rank {
        return Err(format!("X {xs:?} and grid {gs:?} must have the same rank >= 3"));
    }
    let r = rank - 2;
    if gs[rank - 1] != r || gs[0] != xs[0] {
        return Err(format!("grid {gs:?} must be [N, out spatial..., {r}] for X {xs:?}"));
    }
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let out_spatial = &gs[1..rank - 1];
    let mut out_shape = vec![n, c];
    out_shape.extend_from_slice(out_spatial);
    let total = checked_numel(&out_shape).map_err(|e| e.to_string())?;
    let points: usize = out_spatial.iter().product();
    let plane: usize = dims.iter().product();

    if total == 0 {
        return Ok(single(Tensor::zeros(x.dtype(), out_shape).map_err(|e| e.to_string())?));
    }
    if plane == 0 {
        return Err(format!("cannot sample from X {xs:?}: a spatial dimension is 0"));
    }
    let data = x.to_f64_vec();
    let coords = denormalized_grid(grid, dims, align_corners);
    // Sampling borders: pixel centres span [-0.5, d - 0.5] (or [0, d - 1] with align_corners).
    let (lo, hi): (Vec<f64>, Vec<f64>) =
        dims.iter().map(|&d| if align_corners { (0.0, d as f64 - 1.0) } else { (-0.5, d as f64 - 0.5) }).unzip();
    let mut strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }

    let mut out = vec![0.0f64; total];
    // Per point: the (flat offset, weight) of every tap that lands inside the input.
    // Two buffers, swapped per dimension, so the loop does not allocate.
    let mut taps: Vec<(usize, f64)> = Vec::new();
    let mut prev: Vec<(usize, f64)> = Vec::new();
    let mut per_dim: Vec<Vec<(Option<usize>, f64)>> = vec![Vec::new(); r];
    for b in 0..n {
        for p in 0..points {
            let g = &coords[(b * points + p) * r..(b * points + p + 1) * r];
            for i in 0..r {
                let d = dims[i];
                let mut v = g[i];
                if mode == Mode::Nearest {
                    // Round half to even, like PyTorch (and numpy's rint).
                    v = v.round_ties_even();
                }
                if (v as f64) < lo[i] || (v as f64) > hi[i] {
                    match padding {
                        Padding::Border => v = v.clamp(0.0, d as f32 - 1.0),
                        Padding::Reflection => v = reflect(v as f64, lo[i], hi[i]) as f32,
                        Padding::Zeros => {}
                    }
                }
                let v = v as f64;
                let taps_i = &mut per_dim[i];
                taps_i.clear();
                match mode {
                    Mode::Nearest => taps_i.push((pixel_index(v.trunc(), d, lo[i], hi[i], padding), 1.0)),
                    Mode::Linear => {
                        let x0 = v.floor();
                        let t = v - x0;
                        taps_i.push((pixel_index(x0, d, lo[i], hi[i], padding), 1.0 - t));
                        taps_i.push((pixel_index(x0 + 1.0, d, lo[i], hi[i], padding), t));
                    }
                    Mode::Cubic => {
                        let x0 = v.floor();
                        for (k, w) in cubic_coeffs(v - x0).into_iter().enumerate() {
                            taps_i.push((pixel_index(x0 + k as f64 - 1.0, d, lo[i], hi[i], padding), w));
                        }
                    }
                }
            }
            // Tensor product of the per-dimension taps; out-of-range taps (zeros padding)
            // contribute nothing.
            taps.clear();
            taps.push((0, 1.0));
            for i in 0..r {
                std::mem::swap(&mut taps, &mut prev);
                taps.clear();
                for &(off, w) in &prev {
                    for &(idx, wi) in &per_dim[i] {
                        if let Some(idx) = idx {
                            taps.push((off + idx * strides[i], w * wi));
                        }
                    }
                }
            }
            for ch in 0..c {
                let src = &data[(b * c + ch) * plane..(b * c + ch + 1) * plane];
                out[(b * c + ch) * points + p] = taps.iter().map(|&(off, w)| w * src[off]).sum();
            }
        }
    }
    // The reference stores into an array of X's dtype, which truncates for integer types.
    Ok(single(tensor_from_f64(x.dtype(), out_shape, &out, Rounding::Truncate)?))
}

/// AffineGrid: the sampling grid of `theta` applied to normalized output coordinates.
pub(super) fn affine_grid(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let theta = tensor_arg(inputs, 0)?;
    let dtype = require_float(theta, "theta")?;
    let size_t = tensor_arg(inputs, 1)?;
    if size_t.dtype() != DType::I64 || size_t.rank() != 1 {
        return Err(format!("size must be a 1-D int64 tensor, got {} {:?}", size_t.dtype(), size_t.shape()));
    }
    let size = size_t.to_i64_vec();
    let align_corners = ctx.attrs.int("align_corners", 0)? != 0;
    let r = match size.len() {
        4 => 2,
        5 => 3,
        l => return Err(format!("size must have 4 (2-D) or 5 (3-D) values, got {l}")),
    };
    if size.iter().any(|&v| v < 0) {
        return Err(format!("size {size:?} has a negative value"));
    }
    let n = size[0] as usize;
    if theta.shape() != [n, r, r + 1] {
        return Err(format!("theta must have shape [{n}, {r}, {}] for size {size:?}, got {:?}", r + 1, theta.shape()));
    }
    let spatial: Vec<usize> = size[2..].iter().map(|&v| v as usize).collect();
    let mut out_shape = vec![n];
    out_shape.extend_from_slice(&spatial);
    out_shape.push(r);
    let total = checked_numel(&out_shape).map_err(|e| e.to_string())?;
    // Normalized coordinates of each position along each spatial dim.
    let base: Vec<Vec<f64>> = spatial
        .iter()
        .map(|&s| {
            (0..s)
                .map(|i| {
                    if align_corners {
                        if s == 1 {
                            -1.0
                        } else {
                            -1.0 + i as f64 * (2.0 / (s as f64 - 1.0))
                        }
                    } else {
                        let step = 2.0 / s as f64;
                        -1.0 + step / 2.0 + i as f64 * step
                    }
                })
                .collect()
        })
        .collect();
    let th = theta.to_f64_vec();
    let points: usize = spatial.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; r];
    // Homogeneous point (x, y[, z], 1): x runs along the last spatial dim.
    let mut hp = vec![1.0f64; r + 1];
    for b in 0..n {
        let t = &th[b * r * (r + 1)..(b + 1) * r * (r + 1)];
        idx.iter_mut().for_each(|v| *v = 0);
        for _ in 0..points {
            for k in 0..r {
                hp[k] = base[r - 1 - k][idx[r - 1 - k]];
            }
            for row in 0..r {
                out.push((0..=r).map(|k| t[row * (r + 1) + k] * hp[k]).sum::<f64>());
            }
            for d in (0..r).rev() {
                idx[d] += 1;
                if idx[d] < spatial[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    Ok(single(tensor_from_f64(dtype, out_shape, &out, Rounding::HalfEven)?))
}

/// Grid coordinates in input pixel units, per point in dimension order (D, H, W): the grid's
/// last axis lists them reversed (x = W first). Like the reference, the result is float32 and
/// float32 grids are denormalized in float32 arithmetic (this decides nearest-mode ties).
fn denormalized_grid(grid: &Tensor, dims: &[usize], align_corners: bool) -> Vec<f32> {
    let r = dims.len();
    let vals = grid.to_f64_vec();
    let f32_math = grid.dtype() != DType::F64;
    let mut out = vec![0.0f32; vals.len()];
    for (p, chunk) in vals.chunks_exact(r).enumerate() {
        for i in 0..r {
            let g = chunk[r - 1 - i];
            let len = dims[i];
            out[p * r + i] = if f32_math {
                let g = g as f32;
                if align_corners {
                    (g + 1.0) / 2.0 * (len as f32 - 1.0)
                } else {
                    ((g + 1.0) * len as f32 - 1.0) / 2.0
                }
            } else if align_corners {
                ((g + 1.0) / 2.0 * (len as f64 - 1.0)) as f32
            } else {
                (((g + 1.0) * len as f64 - 1.0) / 2.0) as f32
            };
        }
    }
    out
}

/// Reflect `x` into [lo, hi] by bouncing off the borders.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if range.is_nan() || range <= 0.0 || !x.is_finite() {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / range).trunc();
        let r = dx - n * range;
        if n % 2.0 == 0.0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / range).trunc();
        let r = dx - n * range;
        if n % 2.0 == 0.0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

/// The input index a tap at integer position `i` reads, or `None` for a zero-padded tap.
fn pixel_index(i: f64, d: usize, lo: f64, hi: f64, padding: Padding) -> Option<usize> {
    if d == 0 || !i.is_finite() {
        return None;
    }
    let last = d as f64 - 1.0;
    match padding {
        Padding::Zeros => (i >= 0.0 && i <= last).then_some(i as usize),
        Padding::Border => Some(i.clamp(0.0, last) as usize),
        Padding::Reflection => Some(reflect(i, lo, hi).trunc().clamp(0.0, last) as usize),
    }
}

/// Cubic convolution weights (a = -0.75) of the taps at -1, 0, 1, 2 for fraction `t`.
fn cubic_coeffs(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let x = t.abs();
    [
        ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A,
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0,
        ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0,
        ((A * (2.0 - x) - 5.0 * A) * (2.0 - x) + 8.0 * A) * (2.0 - x) - 4.0 * A,
    ]
}
