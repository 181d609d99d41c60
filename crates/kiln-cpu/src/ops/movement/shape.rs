//! Ops that only change or report shapes, or generate tensors from a shape: Reshape, Flatten,
//! Squeeze, Unsqueeze, Shape, Size, ConstantOfShape, Range, EyeLike.

use super::{int_list, numel, one, tensor};
use crate::util::{opt_tensor_arg, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{DType, Element, Tensor, TensorData, Value};

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Reshape" => reshape,
        "Flatten" => flatten,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Shape" => shape,
        "Size" => size,
        "ConstantOfShape" => constant_of_shape,
        "Range" => range,
        "EyeLike" => eye_like,
        _ => return None,
    })
}

/// Same data under a new shape (element counts were checked by the caller's shape rule).
fn with_shape(t: &Tensor, shape: Vec<usize>) -> Result<Vec<Value>, String> {
    Ok(one(tensor(shape, t.data().clone())?))
}

fn reshape(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let target = int_list(tensor_arg(inputs, 1)?, "shape")?;
    let allowzero = ctx.attrs.int("allowzero", 0)? != 0;
    let out = reshape_target(x.shape(), &target, allowzero)?;
    with_shape(x, out)
}

/// Resolve Reshape's target: `0` copies the input dim (unless `allowzero`), one `-1` is inferred.
fn reshape_target(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer_at.is_some() => return Err("shape may contain at most one -1".into()),
            -1 => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => match input.get(i) {
                Some(&n) => out.push(n),
                None => return Err(format!("shape has 0 at index {i}, beyond the input's rank {}", input.len())),
            },
            d if d < 0 => return Err(format!("invalid dimension {d} in shape")),
            d => out.push(d as usize),
        }
    }
    if allowzero && infer_at.is_some() && out.contains(&0) {
        return Err("shape cannot contain both 0 and -1 when allowzero is set".into());
    }
    if let Some(i) = infer_at {
        let known = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape is too large")?;
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {target:?}: -1 cannot be inferred"));
        }
        out[i] = total / known;
    }
    let n = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(total) {
        return Err(format!("cannot reshape {input:?} ({total} elements) to {target:?}"));
    }
    Ok(out)
}

fn flatten(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank() as i64;
    let axis = ctx.attrs.int("axis", 1)?;
    if axis < -r || axis > r {
        return Err(format!("axis {axis} is out of range for rank {r}"));
    }
    let axis = if axis < 0 { axis + r } else { axis } as usize;
    let outer = x.shape()[..axis].iter().product();
    let inner = x.shape()[axis..].iter().product();
    with_shape(x, vec![outer, inner])
}

fn squeeze(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let out: Vec<usize> = match opt_tensor_arg(inputs, 1)? {
        None => x.shape().iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let axes = super::normalize_axes(&int_list(axes, "axes")?, x.rank())?;
            for &a in &axes {
                if x.shape()[a] != 1 {
                    return Err(format!("cannot squeeze axis {a} of size {} (shape {:?})", x.shape()[a], x.shape()));
                }
            }
            x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
        }
    };
    with_shape(x, out)
}

fn unsqueeze(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let axes = int_list(tensor_arg(inputs, 1)?, "axes")?;
    let rank = x.rank() + axes.len();
    let axes = super::normalize_axes(&axes, rank)?;
    let mut dims = x.shape().iter();
    let out = (0..rank).map(|i| if axes.contains(&i) { 1 } else { dims.next().copied().unwrap_or(1) }).collect();
    with_shape(x, out)
}

/// Shape's `start`/`end`: negative counts from the back, then both are clamped to [0, rank].
fn shape(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(ctx.attrs.int("start", 0)?);
    let end = clamp(ctx.attrs.int("end", r)?);
    let dims: Vec<i64> = x.shape()[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Ok(one(tensor(vec![dims.len()], TensorData::I64(dims))?))
}

fn size(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    Ok(one(Tensor::scalar(tensor_arg(inputs, 0)?.len() as i64)))
}

/// A non-negative shape given as a tensor's values.
fn dims_from(t: &Tensor, what: &str) -> Result<Vec<usize>, String> {
    int_list(t, what)?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("{what} has a negative dimension {d}")))
        .collect()
}

fn constant_of_shape(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let dims = dims_from(tensor_arg(inputs, 0)?, "shape")?;
    let n = numel(&dims)?;
    let data = match ctx.attrs.tensor_opt("value")? {
        None => TensorData::F32(vec![0.0; n]),
        Some(v) => {
            if v.len() != 1 {
                return Err(format!("attribute 'value' must hold one element, got shape {:?}", v.shape()));
            }
            kiln_ir::map_data!(v.data(), d => vec![d[0]; n])
        }
    };
    Ok(one(tensor(dims, data)?))
}

fn range(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let start = tensor_arg(inputs, 0)?;
    let limit = tensor_arg(inputs, 1)?;
    let delta = tensor_arg(inputs, 2)?;
    for (t, name) in [(start, "start"), (limit, "limit"), (delta, "delta")] {
        if t.len() != 1 {
            return Err(format!("{name} must be a scalar, got shape {:?}", t.shape()));
        }
        if t.dtype() != start.dtype() {
            return Err(format!("{name} has dtype {}, start has {}", t.dtype(), start.dtype()));
        }
    }
    let data = if start.dtype().is_int() {
        // Exact integer arithmetic: count = ceil((limit - start) / delta), at least 0.
        let (s, l, d) = (start.to_i64_vec()[0] as i128, limit.to_i64_vec()[0] as i128, delta.to_i64_vec()[0] as i128);
        if d == 0 {
            return Err("delta must not be zero".into());
        }
        let span = l - s;
        let n = if (span > 0) != (d > 0) || span == 0 { 0 } else { (span + d - d.signum()) / d };
        let n = count(n as f64)?;
        fn ints<T: Element>(_: &[T], s: i128, d: i128, n: usize) -> TensorData {
            T::into_data((0..n).map(|i| T::from_i64((s + d * i as i128) as i64)).collect())
        }
        kiln_ir::dispatch!(start.data(), v => ints(v, s, d, n))
    } else if start.dtype().is_float() {
        let (s, l, d) = (start.to_f64_vec()[0], limit.to_f64_vec()[0], delta.to_f64_vec()[0]);
        if d == 0.0 || !d.is_finite() || !s.is_finite() || l.is_nan() {
            return Err(format!("invalid range start={s}, limit={l}, delta={d}"));
        }
        let n = count(((l - s) / d).ceil().max(0.0))?;
        fn floats<T: Element>(_: &[T], s: f64, d: f64, n: usize) -> TensorData {
            T::into_data((0..n).map(|i| T::from_f64(s + d * i as f64)).collect())
        }
        kiln_ir::dispatch!(start.data(), v => floats(v, s, d, n))
    } else {
        return Err(format!("Range does not support dtype {}", start.dtype()));
    };
    let n = data.len();
    Ok(one(tensor(vec![n], data)?))
}

/// Range's element count, refused when too large to allocate.
fn count(n: f64) -> Result<usize, String> {
    // Written so that NaN is refused too.
    if n.is_nan() || n > kiln_ir::MAX_ELEMENTS as f64 {
        return Err(format!("Range would produce {n} elements (limit {})", kiln_ir::MAX_ELEMENTS));
    }
    Ok(n as usize)
}

fn eye_like(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if x.rank() != 2 {
        return Err(format!("input must be 2-D, got shape {:?}", x.shape()));
    }
    let dtype = match ctx.attrs.int_opt("dtype")? {
        None => x.dtype(),
        Some(code) => DType::from_onnx_code(code as i32).map_err(|name| format!("dtype {name} is not supported"))?,
    };
    let k = ctx.attrs.int("k", 0)?;
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let mut t = Tensor::zeros(dtype, vec![rows, cols]).map_err(|e| e.to_string())?;
    fn set_diag<T: Element>(v: &mut [T], rows: usize, cols: usize, k: i64) {
        for r in 0..rows {
            let c = r as i64 + k;
            if c >= 0 && (c as usize) < cols {
                v[r * cols + c as usize] = T::from_i64(1);
            }
        }
    }
    kiln_ir::dispatch!(t.data_mut(), v => set_diag(v, rows, cols, k));
    Ok(one(t))
}
