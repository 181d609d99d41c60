//! Helpers shared by the kernels: argument access, broadcasting, axes, element-wise maps.

use kiln_ir::{strides_of, Element, Tensor, Value};

/// Input `i` as a tensor.
pub fn tensor_arg<'a>(inputs: &[Option<&'a Value>], i: usize) -> Result<&'a Tensor, String> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Tensor(t)) => Ok(t),
        Some(other) => Err(format!("input {i} must be a tensor, got a {}", other.kind_name())),
        None => Err(format!("required input {i} is missing")),
    }
}

/// Input `i` as a tensor, or `None` if the optional input is omitted.
pub fn opt_tensor_arg<'a>(inputs: &[Option<&'a Value>], i: usize) -> Result<Option<&'a Tensor>, String> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Tensor(t)) => Ok(Some(t)),
        Some(other) => Err(format!("input {i} must be a tensor, got a {}", other.kind_name())),
        None => Ok(None),
    }
}

/// Input `i` as a typed slice.
pub fn slice_arg<'a, T: Element>(inputs: &[Option<&'a Value>], i: usize) -> Result<&'a [T], String> {
    tensor_arg(inputs, i)?.as_slice::<T>().map_err(|e| format!("input {i}: {e}"))
}

/// Wrap one tensor as a kernel's output list.
pub fn single(t: Tensor) -> Vec<Value> {
    vec![Value::Tensor(t)]
}

/// Build a tensor, turning a size mismatch into a kernel error message.
pub fn make<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor, String> {
    Tensor::from_vec(shape, data).map_err(|e| e.to_string())
}

pub use kiln_ir::spec::normalize_axis;

/// Element count of a shape computed from data, refused when too large to allocate.
pub fn numel(shape: &[usize]) -> Result<usize, String> {
    kiln_ir::checked_numel(shape).map_err(|e| e.to_string())
}

/// Multidirectional (numpy) broadcasting of concrete shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("shapes {a:?} and {b:?} cannot be broadcast"));
        };
    }
    Ok(out)
}

/// For each element of `out_shape` (row-major), the flat index of the element of a tensor of
/// `in_shape` that broadcasting maps onto it.
pub fn broadcast_indices(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let total: usize = out_shape.iter().product();
    if in_shape == out_shape {
        return (0..total).collect();
    }
    let rank = out_shape.len();
    let pad = rank - in_shape.len();
    let in_strides = strides_of(in_shape);
    // Stride of each output axis in the input (0 where broadcast).
    let strides: Vec<usize> =
        (0..rank).map(|i| if i < pad || in_shape[i - pad] == 1 { 0 } else { in_strides[i - pad] }).collect();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    let mut flat = 0usize;
    for _ in 0..total {
        out.push(flat);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            flat += strides[ax];
            if idx[ax] < out_shape[ax] {
                break;
            }
            flat -= strides[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    out
}

/// Apply `f` element-wise with broadcasting over two typed tensors.
pub fn broadcast_binary<T: Element, U: Element>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(T, T) -> U,
) -> Result<Tensor, String> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.as_slice::<T>().map_err(|e| e.to_string())?;
    let bv = b.as_slice::<T>().map_err(|e| e.to_string())?;
    let data: Vec<U> = if a.shape() == b.shape() {
        av.iter().zip(bv).map(|(&x, &y)| f(x, y)).collect()
    } else {
        let ia = broadcast_indices(a.shape(), &shape);
        let ib = broadcast_indices(b.shape(), &shape);
        ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect()
    };
    make(shape, data)
}

/// Apply `f` element-wise over a typed tensor.
pub fn map_unary<T: Element, U: Element>(a: &Tensor, f: impl Fn(T) -> U) -> Result<Tensor, String> {
    let av = a.as_slice::<T>().map_err(|e| e.to_string())?;
    make(a.shape().to_vec(), av.iter().map(|&x| f(x)).collect())
}
