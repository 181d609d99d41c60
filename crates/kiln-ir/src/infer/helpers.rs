//! Building blocks shared by the inference rules.

use super::Known;
use crate::{DType, Dim, Shape, Tensor, TensorType, ValueType};

impl<'a> Known<'a> {
    /// Input `i` as a tensor type; an error if missing or not a tensor.
    pub fn tensor(&self, i: usize) -> Result<&'a TensorType, String> {
        match self.inputs.get(i).copied().flatten() {
            Some(ValueType::Tensor(t)) => Ok(t),
            Some(other) => Err(format!("input {i} must be a tensor, found {other}")),
            None => Err(format!("required input {i} is missing")),
        }
    }

    /// Input `i` as a tensor type, or `None` when the optional input is omitted.
    pub fn opt_tensor(&self, i: usize) -> Result<Option<&'a TensorType>, String> {
        match self.inputs.get(i).copied().flatten() {
            None => Ok(None),
            Some(ValueType::Tensor(t)) => Ok(Some(t)),
            Some(other) => Err(format!("input {i} must be a tensor, found {other}")),
        }
    }

    pub fn dtype(&self, i: usize) -> Result<DType, String> {
        Ok(self.tensor(i)?.dtype)
    }

    /// The constant value of input `i`, if it is a constant.
    pub fn const_input(&self, i: usize) -> Option<&'a Tensor> {
        self.const_inputs.get(i).copied().flatten()
    }

    pub fn has_input(&self, i: usize) -> bool {
        self.inputs.get(i).copied().flatten().is_some()
    }
}

/// Output type: same dtype, same shape as input 0.
pub fn same_as_input0(k: &Known) -> Result<Vec<ValueType>, String> {
    Ok(vec![ValueType::Tensor(k.tensor(0)?.clone())])
}

/// Multidirectional (numpy) broadcasting of static shapes.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { &a[i + a.len() - n] } else { &Dim::Known(1) };
        let db = if i + b.len() >= n { &b[i + b.len() - n] } else { &Dim::Known(1) };
        out.push(match (da, db) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
            (Dim::Known(x), Dim::Known(y)) if x == y => Dim::Known(*x),
            (Dim::Known(x), Dim::Known(y)) => {
                return Err(format!(
                    "shapes {} and {} cannot be broadcast (dimension {x} vs {y})",
                    crate::format_shape(a),
                    crate::format_shape(b)
                ))
            }
            (Dim::Symbol(x), Dim::Symbol(y)) if x == y => Dim::Symbol(x.clone()),
            (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
            _ => Dim::Unknown,
        });
    }
    Ok(out)
}

/// Broadcast shape of all present tensor inputs (None if any rank is unknown).
pub fn broadcast_inputs(k: &Known, inputs: &[usize]) -> Result<Option<Shape>, String> {
    let mut acc: Shape = Vec::new();
    for &i in inputs {
        match &k.tensor(i)?.shape {
            Some(s) => acc = broadcast_shapes(&acc, s)?,
            None => return Ok(None),
        }
    }
    Ok(Some(acc))
}

pub use crate::spec::normalize_axis;

/// A tensor type with `rank` unknown dims.
pub fn unknown_dims(dtype: DType, rank: usize) -> ValueType {
    ValueType::tensor(dtype, vec![Dim::Unknown; rank])
}

/// A tensor type whose shape is unknown.
pub fn unranked(dtype: DType) -> ValueType {
    ValueType::Tensor(TensorType::unranked(dtype))
}

/// Read a constant 1-D integer tensor (shapes, axes, pads).
pub fn const_ints(t: &Tensor) -> Vec<i64> {
    t.to_i64_vec()
}
