//! Static shapes: each dimension a number, a named symbol, or unknown.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Most dimensions a tensor may have, as in TensorRT.
pub const MAX_RANK: usize = 8;

/// One dimension of a static shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    Known(usize),
    /// A named dimension (ONNX `dim_param`), e.g. `batch`.
    Symbol(String),
    /// Not known before run time (data-dependent).
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Known(n)
    }
}

/// A static shape; `None` in [`crate::TensorType`] means even the rank is unknown.
pub type Shape = Vec<Dim>;

/// Shape of known dims from concrete sizes.
pub fn known_shape(dims: &[usize]) -> Shape {
    dims.iter().map(|&d| Dim::Known(d)).collect()
}

/// All dims known? Returns them.
pub fn concrete(shape: &[Dim]) -> Option<Vec<usize>> {
    shape.iter().map(Dim::known).collect()
}

pub fn format_shape(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
