//! Values flowing along graph edges: tensors, sequences of tensors, optionals (ONNX's value kinds).

use crate::{format_shape, DType, Dim, Shape, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A run-time value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Tensor(Tensor),
    Sequence(Vec<Tensor>),
    /// `None` is an empty optional; `Some` holds a tensor or a sequence.
    Optional(Option<Box<Value>>),
}

impl Value {
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Tensor(_) => "tensor",
            Value::Sequence(_) => "sequence",
            Value::Optional(_) => "optional",
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}

/// Static type of a tensor: dtype always known, shape possibly partly or wholly unknown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    /// `None`: rank unknown.
    pub shape: Option<Shape>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape: Some(shape) }
    }

    pub fn unranked(dtype: DType) -> Self {
        TensorType { dtype, shape: None }
    }

    pub fn of(t: &Tensor) -> Self {
        TensorType::new(t.dtype(), t.shape().iter().map(|&d| Dim::Known(d)).collect())
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }
}

/// Static type of a graph edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ValueType {
    Tensor(TensorType),
    /// A sequence of tensors of this element type (shapes may differ between elements).
    Sequence(#[serde(deserialize_with = "crate::network::nested")] Box<ValueType>),
    Optional(#[serde(deserialize_with = "crate::network::nested")] Box<ValueType>),
}

impl ValueType {
    pub fn tensor(dtype: DType, shape: Shape) -> Self {
        ValueType::Tensor(TensorType::new(dtype, shape))
    }

    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            ValueType::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The type a value actually has (all dims known).
    pub fn of_value(v: &Value) -> Option<ValueType> {
        match v {
            Value::Tensor(t) => Some(ValueType::Tensor(TensorType::of(t))),
            Value::Sequence(items) => {
                items.first().map(|t| ValueType::Sequence(Box::new(ValueType::Tensor(TensorType::unranked(t.dtype())))))
            }
            Value::Optional(Some(inner)) => ValueType::of_value(inner).map(|t| ValueType::Optional(Box::new(t))),
            Value::Optional(None) => None,
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shape {
            Some(s) => write!(f, "{}{}", self.dtype, format_shape(s)),
            None => write!(f, "{}[*]", self.dtype),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Tensor(t) => t.fmt(f),
            ValueType::Sequence(e) => write!(f, "seq<{e}>"),
            ValueType::Optional(e) => write!(f, "optional<{e}>"),
        }
    }
}
