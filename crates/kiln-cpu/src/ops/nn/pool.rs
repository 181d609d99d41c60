//! Pooling: MaxPool (with indices), AveragePool, LpPool, their global forms, and MaxUnpool.
//!
//! Pools compute in f64 (exact for every supported input type, and at least as precise as the
//! f32 reference for floats), then convert back to the input dtype once.

use super::{next_index, Window};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, dispatch, strides_of, DType, Element, Tensor, Value};
use rayon::prelude::*;

/// MaxPool: window maximum, padding excluded; optional int64 indices of the maxima (flat over
/// the whole input, row-major or, with `storage_order = 1`, column-major within each plane).
pub(super) fn max_pool(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if !(x.dtype().is_float() || matches!(x.dtype(), DType::I8 | DType::U8)) {
        return Err(format!("dtype {} is not supported", x.dtype()));
    }
    let col_major = match ctx.attrs.int("storage_order", 0)? {
        0 => false,
        1 => true,
        v => return Err(format!("storage_order must be 0 or 1, got {v}")),
    };
    let (planes, win) = pool_window(ctx, x)?;
    let xv = x.to_f64_vec();
    let (is, os) = (win.input_size(), win.output_size());
    let nsp = win.input.len();
    let want_idx = ctx.num_outputs > 1;
    let taps = Taps::new(&win);
    let per_plane: Vec<(Vec<f64>, Vec<i64>)> = (0..planes)
        .into_par_iter()
        .map(|p| {
            let xp = &xv[p * is..(p + 1) * is];
            let (mut yp, mut ip) = (vec![0f64; os], vec![0i64; if want_idx { os } else { 0 }]);
            let mut oidx = vec![0usize; nsp];
            for o in 0..os {
                // Strictly greater: the first maximum wins, as in the reference.
                let mut best: Option<(f64, usize)> = None;
                taps.visit(&oidx, |off| {
                    let v = xp[off];
                    let better = match best {
                        None => true,
                        Some((b, _)) => v > b,
                    };
                    if better {
                        best = Some((v, off));
                    }
                });
                // A window entirely in padding (only with pads >= kernel) has no maximum.
                let (v, off) = best.unwrap_or((f64::NEG_INFINITY, 0));
                yp[o] = v;
                if want_idx {
                    let within = if col_major { column_major(off, &win.input) } else { off };
                    ip[o] = (p * is + within) as i64;
                }
                next_index(&mut oidx, &win.output);
            }
            (yp, ip)
        })
        .collect();
    let mut y = Vec::with_capacity(planes * os);
    let mut idx = Vec::with_capacity(if want_idx { planes * os } else { 0 });
    for (yp, ip) in per_plane {
        y.extend(yp);
        idx.extend(ip);
    }
    let shape = out_shape(x.shape(), &win);
    let mut out = vec![Value::Tensor(from_f64(x.dtype(), shape.clone(), y)?)];
    if want_idx {
        out.push(Value::Tensor(Tensor::from_vec(shape, idx).map_err(|e| e.to_string())?));
    }
    Ok(out)
}

/// AveragePool: window mean over the input elements, or over input + explicit padding when
/// `count_include_pad` (positions added by `ceil_mode` beyond the padding never count).
pub(super) fn average_pool(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let include_pad = ctx.attrs.int("count_include_pad", 0)? != 0;
    windowed_reduce(ctx, inputs, move |sum, valid, padded| sum / if include_pad { padded } else { valid } as f64, |v| v)
}

/// LpPool: `(sum |x|^p)^(1/p)` over the window's input elements (padding adds nothing).
pub(super) fn lp_pool(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let p = lp_order(ctx)?;
    windowed_reduce(ctx, inputs, move |sum, _, _| sum.powf(1.0 / p), move |v| v.abs().powf(p))
}

pub(super) fn global_average_pool(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    global(inputs, |v| v.iter().sum::<f64>() / v.len() as f64)
}

pub(super) fn global_max_pool(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    global(inputs, |v| v.iter().copied().fold(f64::NEG_INFINITY, |a, b| if b > a || b.is_nan() { b } else { a }))
}

pub(super) fn global_lp_pool(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let p = lp_order(ctx)?;
    global(inputs, move |v| v.iter().map(|x| x.abs().powf(p)).sum::<f64>().powf(1.0 / p))
}

/// MaxUnpool: scatter X into zeros at the (flat) indices of the natural unpooled shape; with an
/// `output_shape` input that result is placed at the start of a larger zero tensor.
pub(super) fn max_unpool(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, ind) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?);
    let out_shape = opt_tensor_arg(inputs, 2)?;
    if ind.dtype() != DType::I64 || ind.shape() != x.shape() {
        return Err(format!(
            "indices must be int64 of X's shape {:?}, got {} {:?}",
            x.shape(),
            ind.dtype(),
            ind.shape()
        ));
    }
    let kernel = ctx.attrs.req_ints("kernel_shape")?;
    let nsp = kernel.len();
    if nsp == 0 || x.rank() != nsp + 2 {
        return Err(format!("X rank {} does not match kernel_shape {kernel:?}", x.rank()));
    }
    let strides = super::ints_or(ctx.attrs, "strides", nsp, 1)?;
    let pads = super::ints_or(ctx.attrs, "pads", 2 * nsp, 0)?;
    super::check_window_attrs(&strides, &[], &pads)?;
    if kernel.iter().any(|&k| !(1..=super::MAX_WINDOW).contains(&k)) {
        return Err(format!("kernel_shape {kernel:?} must be positive"));
    }
    let mut natural = x.shape()[..2].to_vec();
    for i in 0..nsp {
        let v = (x.shape()[i + 2] as i64 - 1)
            .saturating_mul(strides[i])
            .saturating_add(kernel[i] - pads[i] - pads[i + nsp]);
        if v < 0 {
            return Err(format!("unpooled size {v} along spatial axis {i} is negative"));
        }
        natural.push(v as usize);
    }
    let total = checked_numel(&natural).map_err(|e| e.to_string())?;
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; total];
    for (&i, &v) in ind.as_slice::<i64>().map_err(|e| e.to_string())?.iter().zip(&xv) {
        if i < 0 || i as usize >= total {
            return Err(format!("index {i} is out of range for unpooled shape {natural:?}"));
        }
        y[i as usize] = v;
    }
    let Some(os) = out_shape else { return Ok(single(from_f64(x.dtype(), natural, y)?)) };
    let want = os.to_i64_vec();
    if want.len() != natural.len() || want.iter().zip(&natural).any(|(&w, &n)| w < n as i64) {
        return Err(format!("output_shape {want:?} must have rank {} and be at least {natural:?}", natural.len()));
    }
    let want: Vec<usize> = want.iter().map(|&v| v as usize).collect();
    let mut out = vec![0f64; checked_numel(&want).map_err(|e| e.to_string())?];
    let wstr = strides_of(&want);
    let last = natural.len() - 1;
    let row = natural[last];
    let mut idx = vec![0usize; last];
    if row > 0 && total > 0 {
        for src in y.chunks(row) {
            let dst: usize = idx.iter().zip(&wstr).map(|(i, s)| i * s).sum();
            out[dst..dst + row].copy_from_slice(src);
            next_index(&mut idx, &natural[..last]);
        }
    }
    Ok(single(from_f64(x.dtype(), want, out)?))
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `p` of the Lp pools (a positive integer).
fn lp_order(ctx: &KernelCtx) -> Result<f64, String> {
    match ctx.attrs.int("p", 2)? {
        p if p >= 1 => Ok(p as f64),
        p => Err(format!("p must be >= 1, got {p}")),
    }
}

/// Number of (image, channel) planes and the resolved window of a pool.
fn pool_window(ctx: &KernelCtx, x: &Tensor) -> Result<(usize, Window), String> {
    let kernel = ctx.attrs.req_ints("kernel_shape")?;
    if kernel.is_empty() || kernel.iter().any(|&k| k < 1) {
        return Err(format!("kernel_shape {kernel:?} must be non-empty and positive"));
    }
    if x.rank() != kernel.len() + 2 {
        return Err(format!("input shape {:?} does not match kernel_shape {kernel:?}", x.shape()));
    }
    let kernel: Vec<usize> = kernel.iter().map(|&k| k as usize).collect();
    let ceil = ctx.attrs.int("ceil_mode", 0)? != 0;
    let win = Window::resolve(ctx.attrs, &x.shape()[2..], &kernel, ceil)?;
    checked_numel(&out_shape(x.shape(), &win)).map_err(|e| e.to_string())?;
    Ok((x.shape()[0] * x.shape()[1], win))
}

fn out_shape(x: &[usize], win: &Window) -> Vec<usize> {
    let mut s = x[..2].to_vec();
    s.extend(&win.output);
    s
}

/// Per axis and output position, the input coordinates of the window's in-bounds taps; lets
/// the pools visit exactly the valid taps without per-tap bounds tests.
struct Taps {
    lists: Vec<Vec<Vec<usize>>>,
    strides: Vec<usize>,
}

impl Taps {
    fn new(win: &Window) -> Taps {
        Taps { lists: (0..win.input.len()).map(|a| win.tap_lists(a)).collect(), strides: strides_of(&win.input) }
    }

    /// Call `f(flat row-major offset in the plane)` for each in-bounds tap of output `oidx`.
    fn visit(&self, oidx: &[usize], mut f: impl FnMut(usize)) {
        self.visit_axis(0, 0, oidx, &mut f);
    }

    fn visit_axis<F: FnMut(usize)>(&self, axis: usize, base: usize, oidx: &[usize], f: &mut F) {
        let coords = &self.lists[axis][oidx[axis]];
        if axis + 1 == self.lists.len() {
            for &c in coords {
                f(base + c);
            }
        } else {
            for &c in coords {
                self.visit_axis(axis + 1, base + c * self.strides[axis], oidx, f);
            }
        }
    }
}

/// A row-major offset within `dims` re-expressed column-major (MaxPool `storage_order = 1`).
fn column_major(mut off: usize, dims: &[usize]) -> usize {
    let (mut out, mut scale) = (0, 1);
    let mut coords = vec![0; dims.len()];
    for a in (0..dims.len()).rev() {
        coords[a] = off % dims[a];
        off /= dims[a];
    }
    for (a, &c) in coords.iter().enumerate() {
        out += c * scale;
        scale *= dims[a];
    }
    out
}

/// Sum `map(x)` over each window, then `finish(sum, valid_count, padded_count)`.
fn windowed_reduce(
    ctx: &KernelCtx,
    inputs: &[Option<&Value>],
    finish: impl Fn(f64, usize, usize) -> f64 + Sync,
    map: impl Fn(f64) -> f64 + Sync,
) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if !x.dtype().is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype()));
    }
    let (planes, win) = pool_window(ctx, x)?;
    let xv = x.to_f64_vec();
    let (is, os) = (win.input_size(), win.output_size());
    let nsp = win.input.len();
    let taps = Taps::new(&win);
    // Per axis and output position: taps inside the explicitly padded extent (ceil_mode may
    // push a window past it; those taps never count).
    let padded_taps: Vec<Vec<usize>> = (0..nsp)
        .map(|a| {
            let limit = win.input[a] + win.pad_begin[a] + win.pad_end[a];
            (0..win.output[a])
                .map(|o| (0..win.kernel[a]).filter(|&k| o * win.strides[a] + k * win.dilations[a] < limit).count())
                .collect()
        })
        .collect();
    let mut y = vec![0f64; planes * os];
    y.par_chunks_mut(os.max(1)).enumerate().for_each(|(p, yp)| {
        let xp = &xv[p * is..(p + 1) * is];
        let mut oidx = vec![0usize; nsp];
        for v in yp.iter_mut() {
            let (mut sum, mut valid) = (0.0, 0usize);
            taps.visit(&oidx, |off| {
                sum += map(xp[off]);
                valid += 1;
            });
            let padded: usize = (0..nsp).map(|a| padded_taps[a][oidx[a]]).product();
            *v = finish(sum, valid, padded);
            next_index(&mut oidx, &win.output);
        }
    });
    Ok(single(from_f64(x.dtype(), out_shape(x.shape(), &win), y)?))
}

/// Reduce each (image, channel) plane to one value; output keeps rank with spatial dims of 1.
fn global(inputs: &[Option<&Value>], f: impl Fn(&[f64]) -> f64 + Sync) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if !x.dtype().is_float() || x.rank() < 2 {
        return Err(format!("X must be a float tensor of rank >= 2, got {} {:?}", x.dtype(), x.shape()));
    }
    let planes = x.shape()[0] * x.shape()[1];
    let xv = x.to_f64_vec();
    let is = xv.len().checked_div(planes).unwrap_or(0);
    let y: Vec<f64> = (0..planes).into_par_iter().map(|p| f(&xv[p * is..(p + 1) * is])).collect();
    let mut shape = x.shape()[..2].to_vec();
    shape.resize(x.rank(), 1);
    Ok(single(from_f64(x.dtype(), shape, y)?))
}

/// f64 results back into a tensor of `dtype` (rounding floats once, exact for 8-bit ints).
fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor, String> {
    let data = kiln_ir::TensorData::zeros(dtype, 0);
    fn conv<T: Element>(_: &Vec<T>, v: Vec<f64>) -> kiln_ir::TensorData {
        T::into_data(v.into_iter().map(T::from_f64).collect())
    }
    let data = dispatch!(&data, d => conv(d, v));
    Tensor::new(shape, data).map_err(|e| e.to_string())
}
