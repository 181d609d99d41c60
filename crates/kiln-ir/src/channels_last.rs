//! Channels-last (NHWC) layers: the same op on tensors whose channel axis comes last.
//!
//! A backend whose kernels run faster on NHWC tensors (the CPU's: every pixel's channels are
//! one contiguous vector, so a convolution is a matrix product with no unrolled copy and
//! depthwise filters and pools vectorize across channels) asks the builder's layout pass to
//! mark a layer with [`ATTR`]. The layer then computes exactly what the ONNX op computes, but
//! its image input and output (and a fused residual) are laid out `[N, H, W, C]`; its weights
//! keep their ONNX layout. Shape inference and kiln-cpu's reference kernels honour the mark by
//! permuting around the ONNX rule, so a marked layer is checked like any other.

use crate::{Attributes, Dim, IrError, Tensor, TensorType, ValueType};

/// Internal attribute (Int 1) on a channels-last layer.
pub const ATTR: &str = "kiln_channels_last";

/// `[N, C, H, W]` → `[N, H, W, C]` as a Transpose `perm`.
pub const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// `[N, H, W, C]` → `[N, C, H, W]`.
pub const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// Whether the layer is marked channels-last.
pub fn is_marked(attrs: &Attributes) -> bool {
    attrs.int(ATTR, 0).is_ok_and(|v| v != 0)
}

/// The inputs of a channels-last `op` that are NHWC images (the rest keep their layout), or
/// `None` when the op has no channels-last form. Output 0 is always the NHWC image.
pub fn image_inputs(op: &str) -> Option<&'static [usize]> {
    match op {
        // X and the fused residual.
        "Conv" => Some(&[0, 3]),
        "MaxPool" | "GlobalAveragePool" => Some(&[0]),
        _ => None,
    }
}

/// A static type with its dims reordered by `perm` (a rank-4 tensor type; others unchanged).
pub fn permute_type(ty: &ValueType, perm: &[usize; 4]) -> ValueType {
    match ty {
        ValueType::Tensor(TensorType { dtype, shape: Some(s) }) if s.len() == 4 => {
            ValueType::tensor(*dtype, perm.iter().map(|&p| s[p].clone()).collect::<Vec<Dim>>())
        }
        other => other.clone(),
    }
}

/// A rank-4 tensor with its axes reordered by `perm` (what a Transpose with `perm` makes).
pub fn permute_tensor(t: &Tensor, perm: &[usize; 4]) -> Result<Tensor, IrError> {
    let s = t.shape();
    if s.len() != 4 {
        return Err(IrError::Invalid(format!("a channels-last image must be 4-D, got shape {s:?}")));
    }
    let strides = t.strides();
    let out_shape: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let mut indices = Vec::with_capacity(t.len());
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                let base = a * strides[perm[0]] + b * strides[perm[1]] + c * strides[perm[2]];
                indices.extend((0..out_shape[3]).map(|d| base + d * strides[perm[3]]));
            }
        }
    }
    Tensor::new(out_shape, t.data().gather(&indices))
}
