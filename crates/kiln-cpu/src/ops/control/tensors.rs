//! Dtype-generic tensor plumbing the control kernels share: concatenating/stacking along an
//! axis, taking a range along an axis, reading scalar arguments.

use kiln_ir::{checked_numel, dispatch, Element, Tensor, TensorData, Value};

/// Concatenate `parts` along `axis`; with `new_axis`, stack them along a new axis inserted at
/// `axis` instead (all parts must then have the same shape). `axis` is already normalized.
pub(super) fn concat(parts: &[&Tensor], axis: usize, new_axis: bool) -> Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let rank = first.rank();
    if axis > rank || (!new_axis && axis == rank) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let mut shape = first.shape().to_vec();
    if new_axis {
        shape.insert(axis, 0);
    } else {
        shape[axis] = 0;
    }
    for (i, p) in parts.iter().enumerate() {
        if p.dtype() != first.dtype() {
            return Err(format!("element {i} has dtype {}, element 0 has {}", p.dtype(), first.dtype()));
        }
        let compatible = p.rank() == rank
            && p.shape().iter().zip(first.shape()).enumerate().all(|(ax, (a, b))| a == b || (!new_axis && ax == axis));
        if !compatible {
            return Err(format!(
                "element {i} has shape {:?}, incompatible with element 0's {:?} {} axis {axis}",
                p.shape(),
                first.shape(),
                if new_axis { "for stacking along new" } else { "for concatenation along" }
            ));
        }
        shape[axis] += if new_axis { 1 } else { p.shape()[axis] };
    }
    let total = checked_numel(&shape).map_err(|e| e.to_string())?;
    // Row-major: every part contributes one contiguous chunk per index of the leading axes.
    let outer: usize = first.shape()[..axis].iter().product();
    let chunks: Vec<usize> = parts.iter().map(|p| p.shape()[axis..].iter().product()).collect();
    let data = dispatch!(first.data(), v => concat_data(v.as_slice(), parts, outer, &chunks, total)?);
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// `len` entries of `t` along `axis` starting at `start`; without `keep_axis` (only for
/// `len == 1`) the axis is dropped.
pub(super) fn slice_axis(t: &Tensor, axis: usize, start: usize, len: usize, keep_axis: bool) -> Result<Tensor, String> {
    let shape = t.shape();
    let dim = *shape.get(axis).ok_or_else(|| format!("axis {axis} is out of range for rank {}", t.rank()))?;
    if start.checked_add(len).is_none_or(|end| end > dim) {
        return Err(format!("range {start}..{} is out of bounds for dimension {dim}", start.saturating_add(len)));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    if keep_axis {
        out_shape[axis] = len;
    } else if len == 1 {
        out_shape.remove(axis);
    } else {
        return Err("only a single entry can be taken without keeping the axis".into());
    }
    let data = dispatch!(t.data(), v => slice_data(v.as_slice(), outer, dim, inner, start, len));
    Tensor::new(out_shape, data).map_err(|e| e.to_string())
}

/// The value of a tensor that must hold exactly one integer element (a position, a count).
pub(super) fn int_scalar(t: &Tensor, what: &str) -> Result<i64, String> {
    if t.len() != 1 {
        return Err(format!("{what} must hold a single element, its shape is {:?}", t.shape()));
    }
    if !t.dtype().is_int() {
        return Err(format!("{what} must be an integer, got {}", t.dtype()));
    }
    Ok(t.to_i64_vec()[0])
}

/// The value of a single-element bool tensor (a condition).
pub(super) fn bool_scalar(v: &Value, what: &str) -> Result<bool, String> {
    let t = v.as_tensor().ok_or_else(|| format!("{what} must be a tensor, got a {}", v.kind_name()))?;
    if t.len() != 1 {
        return Err(format!("{what} must hold a single element, its shape is {:?}", t.shape()));
    }
    match t.data() {
        TensorData::Bool(b) => Ok(b[0]),
        _ => Err(format!("{what} must be bool, got {}", t.dtype())),
    }
}

/// Resolve a possibly negative position against a length, accepting `[-len, len + extra)`
/// (`extra` = 1 where one past the end is allowed, as for insertion).
pub(super) fn resolve_position(pos: i64, len: usize, extra: usize) -> Result<usize, String> {
    let n = len as i64;
    let p = if pos < 0 { pos + n } else { pos };
    if pos < -n || p >= n + extra as i64 {
        let hi = n + extra as i64 - 1;
        return Err(format!("position {pos} is out of range [{}, {hi}] for a sequence of length {len}", -n));
    }
    Ok(p as usize)
}

fn concat_data<T: Element>(
    _witness: &[T],
    parts: &[&Tensor],
    outer: usize,
    chunks: &[usize],
    total: usize,
) -> Result<TensorData, String> {
    let slices: Vec<&[T]> =
        parts.iter().map(|p| p.as_slice::<T>().map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (s, &c) in slices.iter().zip(chunks) {
            out.extend_from_slice(&s[o * c..(o + 1) * c]);
        }
    }
    Ok(T::into_data(out))
}

fn slice_data<T: Element>(v: &[T], outer: usize, dim: usize, inner: usize, start: usize, len: usize) -> TensorData {
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * dim + start) * inner;
        out.extend_from_slice(&v[base..base + len * inner]);
    }
    T::into_data(out)
}
