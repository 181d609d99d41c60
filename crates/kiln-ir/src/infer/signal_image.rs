//! Inference rules for the signal/image family: Resize, GridSample, AffineGrid, RoiAlign,
//! NonMaxSuppression, DFT, STFT, the window generators and MelWeightMatrix (see `infer/mod.rs`).

use super::helpers::{normalize_axis, unknown_dims, unranked};
use super::{InferFn, Known};
use crate::{DType, Dim, Shape, Tensor, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "Resize" => resize,
        "GridSample" => grid_sample,
        "AffineGrid" => affine_grid,
        "RoiAlign" => roi_align,
        "NonMaxSuppression" => non_max_suppression,
        "DFT" => dft,
        "STFT" => stft,
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => window,
        "MelWeightMatrix" => mel_weight_matrix,
        _ => return None,
    })
}

fn resize(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    for (i, name) in [(1, "roi"), (2, "scales")] {
        if let Some(t) = k.opt_tensor(i)? {
            if !t.dtype.is_float() {
                return Err(format!("{name} must be a float tensor, got {}", t.dtype));
            }
        }
    }
    if let Some(t) = k.opt_tensor(3)? {
        if t.dtype != DType::I64 {
            return Err(format!("sizes must be an int64 tensor, got {}", t.dtype));
        }
    }
    let a = k.attrs;
    check_one_of(&a.string("mode", "nearest".into())?, "mode", &["nearest", "linear", "cubic"])?;
    check_one_of(
        &a.string("coordinate_transformation_mode", "half_pixel".into())?,
        "coordinate_transformation_mode",
        &[
            "half_pixel",
            "half_pixel_symmetric",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
            "tf_crop_and_resize",
            "tf_half_pixel_for_nn",
        ],
    )?;
    check_one_of(
        &a.string("nearest_mode", "round_prefer_floor".into())?,
        "nearest_mode",
        &["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"],
    )?;
    let policy = a.string("keep_aspect_ratio_policy", "stretch".into())?;
    check_one_of(&policy, "keep_aspect_ratio_policy", &["stretch", "not_larger", "not_smaller"])?;

    let Some(in_shape) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let rank = in_shape.len();
    let axes: Vec<usize> = match a.ints_opt("axes")? {
        Some(ax) => {
            let mut out = Vec::with_capacity(ax.len());
            for &v in &ax {
                let n = normalize_axis(v, rank)?;
                if out.contains(&n) {
                    return Err(format!("axes {ax:?} repeat axis {v}"));
                }
                out.push(n);
            }
            out
        }
        None => (0..rank).collect(),
    };
    // Constant, non-empty scales/sizes give a static output shape; empty ones are placeholders.
    let konst = |i: usize| k.const_input(i).filter(|t| !t.is_empty());
    let mut out: Shape = in_shape.clone();
    if let Some(s) = konst(3) {
        let sizes = s.to_i64_vec();
        if sizes.len() != axes.len() {
            return Err(format!("sizes has {} values, expected {}", sizes.len(), axes.len()));
        }
        if sizes.iter().any(|&v| v < 0) {
            return Err(format!("sizes {sizes:?} has a negative value"));
        }
        if policy == "stretch" {
            for (i, &d) in axes.iter().enumerate() {
                out[d] = Dim::Known(sizes[i] as usize);
            }
        } else {
            let ins: Option<Vec<usize>> = axes.iter().map(|&d| in_shape[d].known()).collect();
            match ins {
                Some(ins) => {
                    let ratios = ins.iter().zip(&sizes).map(|(&i, &s)| s as f64 / i as f64);
                    let scale = if policy == "not_larger" {
                        ratios.fold(f64::INFINITY, f64::min)
                    } else {
                        ratios.fold(f64::NEG_INFINITY, f64::max)
                    };
                    for (j, &d) in axes.iter().enumerate() {
                        out[d] = Dim::Known((scale * ins[j] as f64 + 0.5).floor() as usize);
                    }
                }
                None => axes.iter().for_each(|&d| out[d] = Dim::Unknown),
            }
        }
    } else if let Some(s) = konst(2) {
        let scales = s.to_f64_vec();
        if scales.len() != axes.len() {
            return Err(format!("scales has {} values, expected {}", scales.len(), axes.len()));
        }
        for (i, &d) in axes.iter().enumerate() {
            if !(scales[i] > 0.0 && scales[i].is_finite()) {
                return Err(format!("scales must be positive, got {}", scales[i]));
            }
            out[d] = match in_shape[d].known() {
                Some(n) => Dim::Known((scales[i] * n as f64).floor() as usize),
                None if scales[i] == 1.0 => in_shape[d].clone(),
                None => Dim::Unknown,
            };
        }
    } else {
        axes.iter().for_each(|&d| out[d] = Dim::Unknown);
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn grid_sample(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let grid = k.tensor(1)?;
    if !grid.dtype.is_float() {
        return Err(format!("grid must be a float tensor, got {}", grid.dtype));
    }
    let a = k.attrs;
    check_one_of(&a.string("mode", "linear".into())?, "mode", &["linear", "nearest", "cubic", "bilinear", "bicubic"])?;
    check_one_of(&a.string("padding_mode", "zeros".into())?, "padding_mode", &["zeros", "border", "reflection"])?;
    let (Some(xs), Some(gs)) = (&x.shape, &grid.shape) else {
        return Ok(vec![unranked(x.dtype)]);
    };
    if xs.len() < 3 || xs.len() != gs.len() {
        return Err(format!("X (rank {}) and grid (rank {}) must have the same rank >= 3", xs.len(), gs.len()));
    }
    if let Some(last) = gs[gs.len() - 1].known() {
        if last != xs.len() - 2 {
            return Err(format!("grid's last dimension must be {} (the spatial rank), got {last}", xs.len() - 2));
        }
    }
    let mut out = vec![pick_known(&xs[0], &gs[0]), xs[1].clone()];
    out.extend(gs[1..gs.len() - 1].iter().cloned());
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn affine_grid(k: &Known) -> Result<Vec<ValueType>, String> {
    let theta = k.tensor(0)?;
    if !theta.dtype.is_float() {
        return Err(format!("theta must be a float tensor, got {}", theta.dtype));
    }
    if k.dtype(1)? != DType::I64 {
        return Err(format!("size must be an int64 tensor, got {}", k.dtype(1)?));
    }
    if let Some(r) = theta.rank() {
        if r != 3 {
            return Err(format!("theta must be 3-D [N, 2, 3] or [N, 3, 4], got rank {r}"));
        }
    }
    let n = theta.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
    if let Some(size) = k.const_input(1) {
        let s = size.to_i64_vec();
        if s.len() != 4 && s.len() != 5 {
            return Err(format!("size must have 4 (2-D) or 5 (3-D) values, got {}", s.len()));
        }
        if s.iter().any(|&v| v < 0) {
            return Err(format!("size {s:?} has a negative value"));
        }
        let mut out = vec![Dim::Known(s[0] as usize)];
        out.extend(s[2..].iter().map(|&v| Dim::Known(v as usize)));
        out.push(Dim::Known(s.len() - 2));
        return Ok(vec![ValueType::tensor(theta.dtype, out)]);
    }
    let size_len = k.tensor(1)?.shape.as_ref().and_then(|s| s.first().and_then(Dim::known));
    Ok(vec![match size_len {
        Some(l @ (4 | 5)) => {
            let mut out = vec![n];
            out.extend(std::iter::repeat_n(Dim::Unknown, l - 2));
            out.push(Dim::Known(l - 2));
            ValueType::tensor(theta.dtype, out)
        }
        _ => unranked(theta.dtype),
    }])
}

fn roi_align(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() || k.dtype(1)? != x.dtype {
        return Err(format!("X and rois must be float tensors of one dtype, got {} and {}", x.dtype, k.dtype(1)?));
    }
    if !k.dtype(2)?.is_int() {
        return Err(format!("batch_indices must be an integer tensor, got {}", k.dtype(2)?));
    }
    let a = k.attrs;
    check_one_of(&a.string("mode", "avg".into())?, "mode", &["avg", "max"])?;
    check_one_of(
        &a.string("coordinate_transformation_mode", "half_pixel".into())?,
        "coordinate_transformation_mode",
        &["half_pixel", "output_half_pixel"],
    )?;
    let (oh, ow) = (a.int("output_height", 1)?, a.int("output_width", 1)?);
    if oh < 1 || ow < 1 {
        return Err(format!("output_height/output_width must be positive, got {oh}x{ow}"));
    }
    if let Some(r) = x.rank() {
        if r != 4 {
            return Err(format!("X must be 4-D [N, C, H, W], got rank {r}"));
        }
    }
    let c = x.shape.as_ref().map(|s| s[1].clone()).unwrap_or(Dim::Unknown);
    if let Some(r) = k.tensor(1)?.rank() {
        if r != 2 {
            return Err(format!("rois must be 2-D [num_rois, 4], got rank {r}"));
        }
    }
    let rois_n = k.tensor(1)?.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
    let idx_n = k.tensor(2)?.shape.as_ref().and_then(|s| s.first().cloned()).unwrap_or(Dim::Unknown);
    let r = pick_known(&rois_n, &idx_n);
    Ok(vec![ValueType::tensor(x.dtype, vec![r, c, Dim::Known(oh as usize), Dim::Known(ow as usize)])])
}

fn non_max_suppression(k: &Known) -> Result<Vec<ValueType>, String> {
    for (i, name) in [(0, "boxes"), (1, "scores")] {
        if !k.dtype(i)?.is_float() {
            return Err(format!("{name} must be a float tensor, got {}", k.dtype(i)?));
        }
    }
    if let (Some(b), Some(s)) = (k.tensor(0)?.rank(), k.tensor(1)?.rank()) {
        if b != 3 || s != 3 {
            return Err(format!("boxes and scores must be 3-D, got ranks {b} and {s}"));
        }
    }
    let cpb = k.attrs.int("center_point_box", 0)?;
    if cpb != 0 && cpb != 1 {
        return Err(format!("center_point_box must be 0 or 1, got {cpb}"));
    }
    Ok(vec![ValueType::tensor(DType::I64, vec![Dim::Unknown, Dim::Known(3)])])
}

fn dft(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("input must be a float tensor, got {}", x.dtype));
    }
    let inverse = k.attrs.int("inverse", 0)? != 0;
    let onesided = k.attrs.int("onesided", 0)? != 0;
    let Some(shape) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let rank = shape.len();
    if rank < 2 {
        return Err(format!("input must have rank >= 2 ([..., signal, 1 or 2]), got {rank}"));
    }
    if let Some(c) = shape[rank - 1].known() {
        if c != 1 && c != 2 {
            return Err(format!("the last dimension must be 1 (real) or 2 (complex), got {c}"));
        }
    }
    let last = Dim::Known(if inverse && onesided { 1 } else { 2 });
    let axis = if k.has_input(2) {
        match k.const_input(2) {
            Some(t) => Some(scalar_value(t, "axis")?),
            None => None,
        }
    } else {
        Some(-2)
    };
    let Some(axis) = axis else {
        let mut out = vec![Dim::Unknown; rank];
        out[rank - 1] = last;
        return Ok(vec![ValueType::tensor(x.dtype, out)]);
    };
    let axis = normalize_axis(axis, rank)?;
    if axis == rank - 1 {
        return Err("axis must not be the last (real/imaginary) dimension".into());
    }
    let length: Option<usize> = if k.has_input(1) {
        match k.const_input(1) {
            Some(t) => {
                let l = scalar_value(t, "dft_length")?;
                if l < 1 {
                    return Err(format!("dft_length must be positive, got {l}"));
                }
                Some(l as usize)
            }
            None => None,
        }
    } else {
        shape[axis].known().map(|n| if inverse && onesided { 2 * n.saturating_sub(1) } else { n })
    };
    let mut out = shape.clone();
    out[axis] = match length {
        Some(l) if onesided && !inverse => Dim::Known(l / 2 + 1),
        Some(l) => Dim::Known(l),
        None if !k.has_input(1) && !onesided => shape[axis].clone(),
        None => Dim::Unknown,
    };
    out[rank - 1] = last;
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn stft(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("signal must be a float tensor, got {}", x.dtype));
    }
    if let Some(w) = k.opt_tensor(2)? {
        if w.dtype != x.dtype {
            return Err(format!("window must have the signal's dtype {}, got {}", x.dtype, w.dtype));
        }
    }
    let onesided = k.attrs.int("onesided", 1)? != 0;
    let batch = match &x.shape {
        Some(s) if s.len() == 3 => s[0].clone(),
        Some(s) => return Err(format!("signal must be 3-D [batch, length, 1 or 2], got rank {}", s.len())),
        None => Dim::Unknown,
    };
    let sig_len = x.shape.as_ref().and_then(|s| s[1].known());
    let step = k.const_input(1).map(|t| scalar_value(t, "frame_step")).transpose()?;
    let frame_len: Option<i64> = if k.has_input(3) {
        k.const_input(3).map(|t| scalar_value(t, "frame_length")).transpose()?
    } else if let Some(w) = k.opt_tensor(2)? {
        w.shape.as_ref().and_then(|s| s.first().and_then(Dim::known)).map(|n| n as i64)
    } else {
        sig_len.map(|n| n as i64)
    };
    if let Some(s) = step {
        if s < 1 {
            return Err(format!("frame_step must be positive, got {s}"));
        }
    }
    let frames = match (sig_len, step, frame_len) {
        (Some(n), Some(s), Some(f)) if f >= 1 && f <= n as i64 => Dim::Known(((n as i64 - f) / s + 1) as usize),
        (Some(n), Some(_), Some(f)) => return Err(format!("frame_length {f} must be in 1..={n} (the signal length)")),
        _ => Dim::Unknown,
    };
    let bins = match frame_len {
        Some(f) if onesided => Dim::Known(f as usize / 2 + 1),
        Some(f) => Dim::Known(f as usize),
        None => Dim::Unknown,
    };
    Ok(vec![ValueType::tensor(x.dtype, vec![batch, frames, bins, Dim::Known(2)])])
}

fn window(k: &Known) -> Result<Vec<ValueType>, String> {
    if !k.dtype(0)?.is_int() {
        return Err(format!("size must be an integer tensor, got {}", k.dtype(0)?));
    }
    let dtype = output_datatype(k)?;
    Ok(vec![match k.const_input(0) {
        Some(t) => {
            let n = scalar_value(t, "size")?;
            if n < 0 {
                return Err(format!("size must not be negative, got {n}"));
            }
            ValueType::tensor(dtype, vec![Dim::Known(n as usize)])
        }
        None => unknown_dims(dtype, 1),
    }])
}

fn mel_weight_matrix(k: &Known) -> Result<Vec<ValueType>, String> {
    for i in 0..3 {
        if !k.dtype(i)?.is_int() {
            return Err(format!("input {i} must be an integer tensor, got {}", k.dtype(i)?));
        }
    }
    for i in 3..5 {
        if !k.dtype(i)?.is_float() {
            return Err(format!("input {i} must be a float tensor, got {}", k.dtype(i)?));
        }
    }
    let dtype = output_datatype(k)?;
    let bins = k.const_input(0).map(|t| scalar_value(t, "num_mel_bins")).transpose()?;
    let len = k.const_input(1).map(|t| scalar_value(t, "dft_length")).transpose()?;
    let dim = |v: Option<i64>| match v {
        Some(v) if v >= 0 => Ok(Dim::Known(v as usize)),
        Some(v) => Err(format!("MelWeightMatrix sizes must not be negative, got {v}")),
        None => Ok(Dim::Unknown),
    };
    Ok(vec![ValueType::tensor(dtype, vec![dim(len.map(|l| l / 2 + 1))?, dim(bins)?])])
}

/// `output_datatype` attribute (default float) as a dtype.
fn output_datatype(k: &Known) -> Result<DType, String> {
    let code = k.attrs.int("output_datatype", 1)?;
    let d = DType::from_onnx_code(code as i32).map_err(|e| format!("output_datatype {code} ({e}) is not supported"))?;
    if d == DType::Bool {
        return Err("output_datatype must be numeric, not bool".into());
    }
    Ok(d)
}

fn scalar_value(t: &Tensor, what: &str) -> Result<i64, String> {
    if t.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", t.shape()));
    }
    Ok(t.to_i64_vec()[0])
}

fn check_one_of(v: &str, name: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(format!("unknown {name} '{v}' (expected one of {})", allowed.join(", ")))
    }
}

/// Of two dims that must agree, the better-known one.
fn pick_known(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Symbol(_), _) => a.clone(),
        _ => b.clone(),
    }
}
