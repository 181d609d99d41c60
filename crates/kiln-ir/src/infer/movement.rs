//! Inference rules for the data-movement family (Reshape, Transpose, Slice, Gather, Scatter*,
//! Pad, TopK, Unique, ...). Shapes are exact wherever the inputs' shapes and the values of
//! constant inputs (Reshape targets, Slice bounds, Pad amounts, ...) allow; otherwise the
//! rank is kept where it is still known and the affected dims become `Dim::Unknown`.

use super::helpers::{broadcast_shapes, const_ints, normalize_axis, unknown_dims, unranked};
use super::{InferFn, Known};
use crate::{DType, Dim, Shape, TensorType, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "Reshape" => reshape,
        "Flatten" => flatten,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Transpose" => transpose,
        "Concat" => concat,
        "Split" => split,
        "Slice" => slice,
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "ScatterElements" | "ScatterND" => scatter,
        "TensorScatter" => tensor_scatter,
        "Expand" => expand,
        "Tile" => tile,
        "Pad" => pad,
        "Shape" => shape,
        "Size" => size,
        "ConstantOfShape" => constant_of_shape,
        "Range" => range,
        "Compress" => compress,
        "NonZero" => non_zero,
        "OneHot" => one_hot,
        "Trilu" => trilu,
        "EyeLike" => eye_like,
        "DepthToSpace" => depth_to_space,
        "SpaceToDepth" => space_to_depth,
        "ReverseSequence" => reverse_sequence,
        "Unique" => unique,
        "TopK" => top_k,
        "CenterCropPad" => center_crop_pad,
        _ => return None,
    })
}

// ---- shape-only ops ----

fn reshape(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "shape")?;
    let allowzero = k.attrs.int("allowzero", 0)? != 0;
    let Some(target) = k.const_input(1).map(const_ints) else {
        // The target's length is the output rank.
        return Ok(vec![match k.tensor(1)?.shape.as_deref() {
            Some([Dim::Known(n)]) => unknown_dims(x.dtype, *n),
            _ => unranked(x.dtype),
        }]);
    };
    if target.iter().filter(|&&d| d == -1).count() > 1 {
        return Err("shape may contain at most one -1".into());
    }
    if let Some(&d) = target.iter().find(|&&d| d < -1) {
        return Err(format!("invalid dimension {d} in shape"));
    }
    if allowzero && target.contains(&-1) && target.contains(&0) {
        return Err("shape cannot contain both 0 and -1 when allowzero is set".into());
    }
    let in_shape = x.shape.as_ref();
    let mut out: Shape = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        out.push(match d {
            -1 => Dim::Unknown,
            0 if !allowzero => match in_shape {
                Some(s) => s
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("shape has 0 at index {i}, beyond the input's rank {}", s.len()))?,
                None => Dim::Unknown,
            },
            d => Dim::Known(d as usize),
        });
    }
    // Resolve -1 (and check the element count) when every dim involved is known.
    // Resolve -1 (and check the element count) from the known parts of both shapes, after
    // cancelling symbolic dims that appear on both sides ([N, 3, 4] -> [0, -1] gives [N, 12]).
    let pos = target.iter().position(|&d| d == -1);
    let rest: Vec<Dim> = out.iter().enumerate().filter(|(i, _)| Some(*i) != pos).map(|(_, d)| d.clone()).collect();
    if let (Some((total, in_syms)), Some((known, mut out_syms))) =
        (in_shape.and_then(|s| split_dims(s)), split_dims(&rest))
    {
        in_syms.iter().for_each(|s| {
            if let Some(i) = out_syms.iter().position(|o| o == s) {
                out_syms.swap_remove(i);
            }
        });
        let cancelled =
            in_syms.len() == rest.iter().filter(|d| matches!(d, Dim::Symbol(_))).count() && out_syms.is_empty();
        if cancelled {
            match pos {
                Some(p) => {
                    if known == 0 || total % known != 0 {
                        if in_syms.is_empty() {
                            return Err(format!(
                                "cannot reshape {total} elements to {target:?}: -1 cannot be inferred"
                            ));
                        }
                    } else {
                        out[p] = Dim::Known(total / known);
                    }
                }
                None if known != total && in_syms.is_empty() => {
                    return Err(format!("cannot reshape {total} elements to {target:?} ({known} elements)"));
                }
                None => {}
            }
        }
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn flatten(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let axis = k.attrs.int("axis", 1)?;
    let Some(s) = &x.shape else { return Ok(vec![unknown_dims(x.dtype, 2)]) };
    let r = s.len() as i64;
    if axis < -r || axis > r {
        return Err(format!("axis {axis} is out of range for rank {r}"));
    }
    let a = if axis < 0 { axis + r } else { axis } as usize;
    Ok(vec![ValueType::tensor(x.dtype, vec![product(&s[..a]), product(&s[a..])])])
}

fn squeeze(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    if !k.has_input(1) {
        // Without axes every size-1 dim goes; an unknown dim makes the rank unknown.
        if s.iter().any(|d| d.known().is_none()) {
            return Ok(vec![unranked(x.dtype)]);
        }
        return Ok(vec![ValueType::tensor(x.dtype, s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())]);
    }
    int_input(k, 1, "axes")?;
    let Some(axes) = k.const_input(1).map(const_ints) else {
        return Ok(vec![match k.tensor(1)?.shape.as_deref() {
            Some([Dim::Known(n)]) if *n <= s.len() => unknown_dims(x.dtype, s.len() - n),
            Some([]) => unknown_dims(x.dtype, s.len().saturating_sub(1)),
            _ => unranked(x.dtype),
        }]);
    };
    let axes = normalize_axes(&axes, s.len())?;
    for &a in &axes {
        if let Dim::Known(d) = s[a] {
            if d != 1 {
                return Err(format!("cannot squeeze axis {a} of size {d}"));
            }
        }
    }
    let out = s.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect();
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn unsqueeze(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "axes")?;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let Some(axes) = k.const_input(1).map(const_ints) else {
        return Ok(vec![match k.tensor(1)?.shape.as_deref() {
            Some([Dim::Known(n)]) => unknown_dims(x.dtype, s.len() + n),
            Some([]) => unknown_dims(x.dtype, s.len() + 1),
            _ => unranked(x.dtype),
        }]);
    };
    let rank = s.len() + axes.len();
    let axes = normalize_axes(&axes, rank)?;
    let mut dims = s.iter();
    let out = (0..rank)
        .map(|i| if axes.contains(&i) { Dim::Known(1) } else { dims.next().cloned().unwrap_or(Dim::Known(1)) })
        .collect();
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn shape(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let Some(s) = &x.shape else { return Ok(vec![unknown_dims(DType::I64, 1)]) };
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
    let start = clamp(k.attrs.int("start", 0)?);
    let end = clamp(k.attrs.int("end", r)?);
    Ok(vec![ValueType::tensor(DType::I64, vec![Dim::Known((end - start).max(0) as usize)])])
}

fn size(k: &Known) -> Result<Vec<ValueType>, String> {
    k.tensor(0)?;
    Ok(vec![ValueType::tensor(DType::I64, vec![])])
}

fn constant_of_shape(k: &Known) -> Result<Vec<ValueType>, String> {
    int_input(k, 0, "shape")?;
    let dtype = match k.attrs.tensor_opt("value")? {
        None => DType::F32,
        Some(v) if v.len() == 1 => v.dtype(),
        Some(v) => return Err(format!("attribute 'value' must hold one element, got shape {:?}", v.shape())),
    };
    Ok(vec![shape_from_input(k, 0, dtype)?])
}

fn range(k: &Known) -> Result<Vec<ValueType>, String> {
    let dt = k.dtype(0)?;
    if !(dt.is_float() || dt.is_signed_int()) {
        return Err(format!("Range does not support dtype {dt}"));
    }
    for i in 1..3 {
        if k.dtype(i)? != dt {
            return Err(format!("input {i} has dtype {}, start has {dt}", k.dtype(i)?));
        }
    }
    if dt.is_int() {
        // Exact integer count, as the kernel computes it: ceil((limit - start) / delta).
        let vals: Option<Vec<i128>> =
            (0..3).map(|i| k.const_input(i).and_then(|t| t.to_i64_vec().first().map(|&v| v as i128))).collect();
        let len = match vals.as_deref() {
            Some(&[_, _, 0]) => return Err("delta must not be zero".into()),
            Some(&[s, l, d]) => {
                let span = l - s;
                let n = if span == 0 || (span > 0) != (d > 0) { 0 } else { (span + d - d.signum()) / d };
                usize::try_from(n).map_or(Dim::Unknown, Dim::Known)
            }
            _ => Dim::Unknown,
        };
        return Ok(vec![ValueType::tensor(dt, vec![len])]);
    }
    let vals: Option<Vec<f64>> =
        (0..3).map(|i| k.const_input(i).and_then(|t| t.to_f64_vec().first().copied())).collect();
    let len = match vals.as_deref() {
        Some(&[s, l, d]) if d != 0.0 => {
            let n = ((l - s) / d).ceil().max(0.0);
            if n.is_finite() {
                Dim::Known(n as usize)
            } else {
                Dim::Unknown
            }
        }
        Some(_) => return Err("delta must not be zero".into()),
        None => Dim::Unknown,
    };
    Ok(vec![ValueType::tensor(dt, vec![len])])
}

fn eye_like(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let dtype = match k.attrs.int_opt("dtype")? {
        None => x.dtype,
        Some(code) => DType::from_onnx_code(code as i32).map_err(|n| format!("dtype {n} is not supported"))?,
    };
    match &x.shape {
        Some(s) if s.len() != 2 => Err(format!("input must be 2-D, got rank {}", s.len())),
        Some(s) => Ok(vec![ValueType::tensor(dtype, s.clone())]),
        None => Ok(vec![unknown_dims(dtype, 2)]),
    }
}

// ---- layout ops ----

fn transpose(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let perm = k.attrs.ints_opt("perm")?;
    let Some(s) = &x.shape else {
        return Ok(vec![match perm {
            Some(p) => unknown_dims(x.dtype, p.len()),
            None => unranked(x.dtype),
        }]);
    };
    let perm = match perm {
        None => (0..s.len()).rev().collect(),
        Some(p) if p.len() != s.len() => {
            return Err(format!("perm {p:?} has {} entries for an input of rank {}", p.len(), s.len()))
        }
        Some(p) => normalize_axes(&p, s.len())?,
    };
    Ok(vec![ValueType::tensor(x.dtype, perm.iter().map(|&p| s[p].clone()).collect())])
}

fn concat(k: &Known) -> Result<Vec<ValueType>, String> {
    let n = k.inputs.len();
    if n == 0 {
        return Err("Concat needs at least one input".into());
    }
    let dtype = k.dtype(0)?;
    let axis = k.attrs.req_int("axis")?;
    let mut out: Option<Shape> = None;
    let mut rank = None;
    for i in 0..n {
        let t = k.tensor(i)?;
        if t.dtype != dtype {
            return Err(format!("input {i} has dtype {}, input 0 has {dtype}", t.dtype));
        }
        if let Some(s) = &t.shape {
            if *rank.get_or_insert(s.len()) != s.len() {
                return Err(format!("input {i} has rank {}, expected {}", s.len(), rank.unwrap_or(0)));
            }
        }
    }
    let Some(rank) = rank else { return Ok(vec![unranked(dtype)]) };
    if rank == 0 {
        return Err("Concat inputs must have rank at least 1".into());
    }
    let a = normalize_axis(axis, rank)?;
    let mut sum = Some(0usize);
    for i in 0..n {
        let Some(s) = &k.tensor(i)?.shape else {
            sum = None;
            continue;
        };
        sum = match (sum, &s[a]) {
            (Some(acc), Dim::Known(d)) => Some(acc + d),
            _ => None,
        };
        let acc = out.get_or_insert_with(|| s.clone());
        for (j, d) in s.iter().enumerate() {
            if j != a {
                acc[j] = merge_dim(&acc[j], d).map_err(|e| format!("input {i} on axis {j}: {e}"))?;
            }
        }
    }
    let mut out = out.unwrap_or_else(|| vec![Dim::Unknown; rank]);
    out[a] = sum.map_or(Dim::Unknown, Dim::Known);
    Ok(vec![ValueType::tensor(dtype, out)])
}

fn split(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let n = k.num_outputs;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype); n]) };
    let a = normalize_axis(k.attrs.int("axis", 0)?, s.len())?;
    if s.is_empty() {
        return Err("cannot split a scalar".into());
    }
    let num_outputs = k.attrs.int_opt("num_outputs")?;
    if let Some(m) = num_outputs {
        if m <= 0 || m as usize != n {
            return Err(format!("num_outputs is {m} but the layer has {n} outputs"));
        }
    }
    let sizes: Option<Vec<usize>> = if k.has_input(1) {
        int_input(k, 1, "split")?;
        if num_outputs.is_some() {
            return Err("Split takes either the 'split' input or the 'num_outputs' attribute, not both".into());
        }
        match k.const_input(1).map(const_ints) {
            Some(v) => {
                if v.len() != n {
                    return Err(format!("split has {} entries but the layer has {n} outputs", v.len()));
                }
                if let Some(bad) = v.iter().find(|&&d| d < 0) {
                    return Err(format!("split sizes must be non-negative, got {bad}"));
                }
                let v: Vec<usize> = v.iter().map(|&d| d as usize).collect();
                if let Dim::Known(d) = s[a] {
                    if v.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(d) {
                        return Err(format!("split sizes {v:?} do not sum to the axis dimension {d}"));
                    }
                }
                Some(v)
            }
            None => None,
        }
    } else {
        match s[a] {
            Dim::Known(d) if n > 0 => {
                // Chunks of ceil(d / n), the last ones smaller or empty (as the kernel does).
                let chunk = d.div_ceil(n);
                Some((0..n).map(|i| chunk.min(d.saturating_sub(i * chunk))).collect())
            }
            _ => None,
        }
    };
    Ok((0..n)
        .map(|i| {
            let mut o = s.clone();
            o[a] = sizes.as_ref().map_or(Dim::Unknown, |v| Dim::Known(v[i]));
            ValueType::tensor(x.dtype, o)
        })
        .collect())
}

fn slice(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    for (i, name) in [(1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")] {
        if k.has_input(i) {
            int_input(k, i, name)?;
        }
    }
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let r = s.len();
    let get = |i: usize| -> Option<Vec<i64>> { k.const_input(i).map(const_ints) };
    let (starts, ends) = (get(1), get(2));
    let axes = if k.has_input(3) {
        match get(3) {
            Some(a) => Some(normalize_axes(&a, r)?),
            None => None,
        }
    } else {
        starts.as_ref().or(ends.as_ref()).map(|v| (0..v.len().min(r)).collect())
    };
    let Some(axes) = axes else { return Ok(vec![unknown_dims(x.dtype, r)]) };
    let steps = if k.has_input(4) { get(4) } else { Some(vec![1; axes.len()]) };
    let mut out = s.clone();
    for (j, &a) in axes.iter().enumerate() {
        out[a] = Dim::Unknown;
        let (Some(st), Some(en), Some(sp)) = (&starts, &ends, &steps) else { continue };
        if st.len() != axes.len() || en.len() != axes.len() || sp.len() != axes.len() {
            return Err("starts, ends, axes and steps must have the same length".into());
        }
        out[a] = match &s[a] {
            Dim::Known(d) => Dim::Known(crate::spec::slice_axis(st[j], en[j], sp[j], *d)?.2),
            // The whole axis (0 .. "infinity" by 1) keeps a symbolic dim.
            d if st[j] == 0 && sp[j] == 1 && en[j] >= i32::MAX as i64 => d.clone(),
            _ => Dim::Unknown,
        };
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn expand(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "shape")?;
    let target = shape_from_input(k, 1, x.dtype)?;
    let ValueType::Tensor(TensorType { shape: Some(t), .. }) = &target else { return Ok(vec![unranked(x.dtype)]) };
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    if k.const_input(1).is_none() {
        return Ok(vec![unknown_dims(x.dtype, s.len().max(t.len()))]);
    }
    Ok(vec![ValueType::tensor(x.dtype, broadcast_shapes(s, t)?)])
}

fn tile(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "repeats")?;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let Some(reps) = k.const_input(1).map(const_ints) else { return Ok(vec![unknown_dims(x.dtype, s.len())]) };
    if reps.len() != s.len() {
        return Err(format!("repeats has {} entries for an input of rank {}", reps.len(), s.len()));
    }
    let mut out = Vec::with_capacity(s.len());
    for (d, &r) in s.iter().zip(&reps) {
        if r < 0 {
            return Err(format!("repeats must be non-negative, got {r}"));
        }
        out.push(match d {
            _ if r == 1 => d.clone(),
            _ if r == 0 => Dim::Known(0),
            Dim::Known(n) => n.checked_mul(r as usize).map_or(Dim::Unknown, Dim::Known),
            _ => Dim::Unknown,
        });
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn pad(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "pads")?;
    let mode = k.attrs.string("mode", "constant".into())?;
    if !["constant", "reflect", "edge", "wrap"].contains(&mode.as_str()) {
        return Err(format!("unknown pad mode '{mode}'"));
    }
    if let Some(v) = k.opt_tensor(2)? {
        if v.dtype != x.dtype {
            return Err(format!("constant_value has dtype {}, data has {}", v.dtype, x.dtype));
        }
    }
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let r = s.len();
    let axes = if k.has_input(3) {
        int_input(k, 3, "axes")?;
        match k.const_input(3).map(const_ints) {
            Some(a) => Some(normalize_axes(&a, r)?),
            None => None,
        }
    } else {
        Some((0..r).collect())
    };
    let (Some(axes), Some(pads)) = (axes, k.const_input(1).map(const_ints)) else {
        return Ok(vec![unknown_dims(x.dtype, r)]);
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("pads has {} entries, expected {} (2 per axis)", pads.len(), 2 * axes.len()));
    }
    let mut out = s.clone();
    for (i, &a) in axes.iter().enumerate() {
        let (b, e) = (pads[i], pads[axes.len() + i]);
        out[a] = match &s[a] {
            _ if b == 0 && e == 0 => s[a].clone(),
            Dim::Known(d) => {
                let n = *d as i128 + b as i128 + e as i128;
                if n < 0 {
                    return Err(format!("pads {b} and {e} give axis {a} (size {d}) a negative size"));
                }
                Dim::Known(n as usize)
            }
            _ => Dim::Unknown,
        };
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn center_crop_pad(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "shape")?;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    let axes = match k.attrs.ints_opt("axes")? {
        Some(a) => normalize_axes(&a, s.len())?,
        None => (0..s.len()).collect(),
    };
    let mut out = s.clone();
    match k.const_input(1).map(const_ints) {
        Some(t) => {
            if t.len() != axes.len() {
                return Err(format!("shape has {} entries for {} axes", t.len(), axes.len()));
            }
            for (&a, &d) in axes.iter().zip(&t) {
                if d < 0 {
                    return Err(format!("shape has a negative dimension {d}"));
                }
                out[a] = Dim::Known(d as usize);
            }
        }
        None => axes.iter().for_each(|&a| out[a] = Dim::Unknown),
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

/// DepthToSpace/SpaceToDepth: a 4-D input and a positive blocksize.
fn block_input(k: &Known) -> Result<(DType, Option<Shape>, usize), String> {
    let x = k.tensor(0)?;
    let b = k.attrs.req_int("blocksize")?;
    if b <= 0 {
        return Err(format!("blocksize must be positive, got {b}"));
    }
    let mode = k.attrs.string("mode", "DCR".into())?;
    if mode != "DCR" && mode != "CRD" {
        return Err(format!("unknown mode '{mode}' (expected DCR or CRD)"));
    }
    if let Some(s) = &x.shape {
        if s.len() != 4 {
            return Err(format!("input must be 4-D, got rank {}", s.len()));
        }
    }
    Ok((x.dtype, x.shape.clone(), b as usize))
}

fn depth_to_space(k: &Known) -> Result<Vec<ValueType>, String> {
    let (dt, s, b) = block_input(k)?;
    let Some(s) = s else { return Ok(vec![unknown_dims(dt, 4)]) };
    let bb = b.checked_mul(b).ok_or_else(|| format!("blocksize {b} is too large"))?;
    if let Dim::Known(c) = s[1] {
        if c % bb != 0 {
            return Err(format!("channels {c} are not divisible by blocksize² = {bb}"));
        }
    }
    let c = map_dim(&s[1], |c| Some(c / bb));
    let (h, w) = (map_dim(&s[2], |h| h.checked_mul(b)), map_dim(&s[3], |w| w.checked_mul(b)));
    Ok(vec![ValueType::tensor(dt, vec![s[0].clone(), c, h, w])])
}

fn space_to_depth(k: &Known) -> Result<Vec<ValueType>, String> {
    let (dt, s, b) = block_input(k)?;
    let Some(s) = s else { return Ok(vec![unknown_dims(dt, 4)]) };
    for d in &s[2..] {
        if let Dim::Known(n) = d {
            if n % b != 0 {
                return Err(format!("spatial dim {n} is not divisible by blocksize {b}"));
            }
        }
    }
    let c = map_dim(&s[1], |c| b.checked_mul(b).and_then(|bb| c.checked_mul(bb)));
    Ok(vec![ValueType::tensor(
        dt,
        vec![s[0].clone(), c, map_dim(&s[2], |h| Some(h / b)), map_dim(&s[3], |w| Some(w / b))],
    )])
}

fn trilu(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if let Some(s) = &x.shape {
        if s.len() < 2 {
            return Err(format!("input must have rank at least 2, got rank {}", s.len()));
        }
    }
    if k.has_input(1) {
        int_input(k, 1, "k")?;
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

fn reverse_sequence(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "sequence_lens")?;
    let (b, t) = (k.attrs.int("batch_axis", 1)?, k.attrs.int("time_axis", 0)?);
    if !matches!((b, t), (0, 1) | (1, 0)) {
        return Err(format!("batch_axis {b} and time_axis {t} must be 0 and 1 in some order"));
    }
    if let Some(s) = &x.shape {
        if s.len() < 2 {
            return Err(format!("input must have rank at least 2, got rank {}", s.len()));
        }
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

// ---- index ops ----

fn gather(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let idx = int_input(k, 1, "indices")?;
    let (Some(s), Some(is)) = (&x.shape, &idx.shape) else { return Ok(vec![unranked(x.dtype)]) };
    if s.is_empty() {
        return Err("cannot gather from a scalar".into());
    }
    let a = normalize_axis(k.attrs.int("axis", 0)?, s.len())?;
    let mut out = s[..a].to_vec();
    out.extend(is.iter().cloned());
    out.extend(s[a + 1..].iter().cloned());
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn gather_elements(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let idx = int_input(k, 1, "indices")?;
    if let (Some(s), Some(is)) = (&x.shape, &idx.shape) {
        if s.len() != is.len() || s.is_empty() {
            return Err(format!(
                "indices have rank {}, data has rank {} (must be equal and at least 1)",
                is.len(),
                s.len()
            ));
        }
        normalize_axis(k.attrs.int("axis", 0)?, s.len())?;
    }
    Ok(vec![match &idx.shape {
        Some(is) => ValueType::tensor(x.dtype, is.clone()),
        None => unranked(x.dtype),
    }])
}

fn gather_nd(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let idx = int_input(k, 1, "indices")?;
    let b = k.attrs.int("batch_dims", 0)?;
    if b < 0 {
        return Err(format!("batch_dims must be non-negative, got {b}"));
    }
    let b = b as usize;
    let (Some(s), Some(is)) = (&x.shape, &idx.shape) else { return Ok(vec![unranked(x.dtype)]) };
    if is.is_empty() || b >= is.len() || b >= s.len() {
        return Err(format!("indices rank {} and data rank {} do not fit batch_dims {b}", is.len(), s.len()));
    }
    let mut out = is[..is.len() - 1].to_vec();
    match &is[is.len() - 1] {
        Dim::Known(last) => {
            if b + last > s.len() {
                return Err(format!("index tuples of length {last} exceed data rank {} minus batch_dims {b}", s.len()));
            }
            out.extend(s[b + last..].iter().cloned());
            Ok(vec![ValueType::tensor(x.dtype, out)])
        }
        _ => Ok(vec![unranked(x.dtype)]),
    }
}

fn scatter(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "indices")?;
    if k.dtype(2)? != x.dtype {
        return Err(format!("updates have dtype {}, data has {}", k.dtype(2)?, x.dtype));
    }
    let red = k.attrs.string("reduction", "none".into())?;
    if !["none", "add", "mul", "max", "min"].contains(&red.as_str()) {
        return Err(format!("unknown reduction '{red}'"));
    }
    if k.op == "ScatterElements" {
        if let Some(s) = &x.shape {
            normalize_axis(k.attrs.int("axis", 0)?, s.len())?;
        }
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

fn tensor_scatter(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if k.dtype(1)? != x.dtype {
        return Err(format!("update has dtype {}, past_cache has {}", k.dtype(1)?, x.dtype));
    }
    if k.has_input(2) {
        int_input(k, 2, "write_indices")?;
    }
    let mode = k.attrs.string("mode", "linear".into())?;
    if mode != "linear" && mode != "circular" {
        return Err(format!("unknown mode '{mode}' (expected linear or circular)"));
    }
    if let Some(s) = &x.shape {
        if normalize_axis(k.attrs.int("axis", -2)?, s.len())? == 0 {
            return Err("axis must not be the batch axis 0".into());
        }
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

fn compress(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if k.dtype(1)? != DType::Bool {
        return Err(format!("condition must be bool, got {}", k.dtype(1)?));
    }
    // The kept count is known only for a constant condition.
    let count = k.const_input(1).map(|c| c.to_i64_vec().iter().filter(|&&v| v != 0).count());
    let len = count.map_or(Dim::Unknown, Dim::Known);
    match k.attrs.int_opt("axis")? {
        None => Ok(vec![ValueType::tensor(x.dtype, vec![len])]),
        Some(a) => {
            let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
            let a = normalize_axis(a, s.len())?;
            if s.is_empty() {
                return Err("cannot compress a scalar along an axis".into());
            }
            let mut out = s.clone();
            out[a] = len;
            Ok(vec![ValueType::tensor(x.dtype, out)])
        }
    }
}

fn non_zero(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let rank = x.shape.as_ref().map_or(Dim::Unknown, |s| Dim::Known(s.len().max(1)));
    Ok(vec![ValueType::tensor(DType::I64, vec![rank, Dim::Unknown])])
}

fn one_hot(k: &Known) -> Result<Vec<ValueType>, String> {
    let idx = k.tensor(0)?;
    let dt = k.dtype(2)?;
    if idx.dtype == DType::Bool {
        return Err("indices must be numeric".into());
    }
    let depth = k.const_input(1).and_then(|t| t.to_f64_vec().first().copied());
    if let Some(d) = depth {
        if d.is_nan() || d < 1.0 {
            return Err(format!("depth must be a positive integer, got {d}"));
        }
    }
    let Some(s) = &idx.shape else { return Ok(vec![unranked(dt)]) };
    let r = s.len() as i64;
    let axis = k.attrs.int("axis", -1)?;
    if axis < -r - 1 || axis > r {
        return Err(format!("axis {axis} is out of range for an output of rank {}", r + 1));
    }
    let a = if axis < 0 { axis + r + 1 } else { axis } as usize;
    let mut out = s.clone();
    out.insert(a, depth.map_or(Dim::Unknown, |d| Dim::Known(d as usize)));
    Ok(vec![ValueType::tensor(dt, out)])
}

// ---- order ops ----

fn top_k(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    int_input(k, 1, "K")?;
    let Some(s) = &x.shape else { return Ok(vec![unranked(x.dtype), unranked(DType::I64)]) };
    if s.is_empty() {
        return Err("input must have rank at least 1".into());
    }
    let a = normalize_axis(k.attrs.int("axis", -1)?, s.len())?;
    let mut out = s.clone();
    out[a] = match k.const_input(1).map(const_ints).as_deref() {
        Some(&[kv]) => {
            if kv < 0 || matches!(s[a], Dim::Known(d) if kv as usize > d) {
                return Err(format!("K = {kv} is outside [0, {}] (the size of axis {a})", s[a]));
            }
            Dim::Known(kv as usize)
        }
        Some(_) => return Err("K must hold exactly one value".into()),
        None => Dim::Unknown,
    };
    Ok(vec![ValueType::tensor(x.dtype, out.clone()), ValueType::tensor(DType::I64, out)])
}

fn unique(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if k.num_outputs > 4 {
        return Err(format!("Unique has at most 4 outputs, the layer has {}", k.num_outputs));
    }
    let (y, n_items) = match (k.attrs.int_opt("axis")?, &x.shape) {
        (None, s) => (unknown_dims(x.dtype, 1), s.as_ref().map_or(Dim::Unknown, |s| product(s))),
        (Some(_), None) => (unranked(x.dtype), Dim::Unknown),
        (Some(a), Some(s)) => {
            if s.is_empty() {
                return Err("cannot take unique slices of a scalar".into());
            }
            let a = normalize_axis(a, s.len())?;
            let mut o = s.clone();
            o[a] = Dim::Unknown;
            (ValueType::tensor(x.dtype, o), s[a].clone())
        }
    };
    let idx = unknown_dims(DType::I64, 1);
    Ok(vec![y, idx.clone(), ValueType::tensor(DType::I64, vec![n_items]), idx])
}

// ---- helpers ----

/// Input `i`, which must be an integer tensor.
fn int_input<'a>(k: &Known<'a>, i: usize, what: &str) -> Result<&'a TensorType, String> {
    let t = k.tensor(i)?;
    if !t.dtype.is_int() {
        return Err(format!("{what} must be an integer tensor, got {}", t.dtype));
    }
    Ok(t)
}

/// The output type for a shape given by 1-D input `i`: exact if constant, else of the rank
/// the input's length says.
fn shape_from_input(k: &Known, i: usize, dtype: DType) -> Result<ValueType, String> {
    if let Some(c) = k.const_input(i) {
        if c.rank() > 1 {
            return Err(format!("shape must be 1-D, got shape {:?}", c.shape()));
        }
        let mut out = Vec::with_capacity(c.len());
        for d in const_ints(c) {
            if d < 0 {
                return Err(format!("shape has a negative dimension {d}"));
            }
            out.push(Dim::Known(d as usize));
        }
        return Ok(ValueType::tensor(dtype, out));
    }
    Ok(match k.tensor(i)?.shape.as_deref() {
        Some([Dim::Known(n)]) => unknown_dims(dtype, *n),
        _ => unranked(dtype),
    })
}

/// Product of dims, known only when all are (or when one is a known 0).
fn product(s: &[Dim]) -> Dim {
    if s.contains(&Dim::Known(0)) {
        return Dim::Known(0);
    }
    // A single symbolic dim times ones keeps its name.
    if let [d] = s.iter().filter(|d| **d != Dim::Known(1)).collect::<Vec<_>>().as_slice() {
        return (*d).clone();
    }
    numel(s).map_or(Dim::Unknown, Dim::Known)
}

/// The product of a shape's known dims and its symbolic dims; `None` if any dim is unknown
/// (or the product overflows).
fn split_dims(s: &[Dim]) -> Option<(usize, Vec<&String>)> {
    let mut known = 1usize;
    let mut syms = Vec::new();
    for d in s {
        match d {
            Dim::Known(n) => known = known.checked_mul(*n)?,
            Dim::Symbol(name) => syms.push(name),
            Dim::Unknown => return None,
        }
    }
    Some((known, syms))
}

fn numel(s: &[Dim]) -> Option<usize> {
    s.iter().try_fold(1usize, |a, d| d.known().and_then(|n| a.checked_mul(n)))
}

/// A known dim transformed by `f` (unknown if `f` overflows).
fn map_dim(d: &Dim, f: impl Fn(usize) -> Option<usize>) -> Dim {
    d.known().and_then(f).map_or(Dim::Unknown, Dim::Known)
}

/// Two static dims that must agree: the more specific one, or an error if both are known and differ.
fn merge_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => return Err(format!("dimension {x} vs {y}")),
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Symbol(x), Dim::Symbol(y)) if x == y => a.clone(),
        (Dim::Symbol(_), Dim::Unknown) => a.clone(),
        (Dim::Unknown, Dim::Symbol(_)) => b.clone(),
        _ => Dim::Unknown,
    })
}

/// Normalize axes against `rank`, refusing duplicates.
fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out: Vec<usize> = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = normalize_axis(a, rank)?;
        if rank == 0 || out.contains(&n) {
            return Err(format!("axis {a} is repeated or out of range for rank {rank}"));
        }
        out.push(n);
    }
    Ok(out)
}
