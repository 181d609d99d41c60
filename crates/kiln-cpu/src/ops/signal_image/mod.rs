//! CPU kernels for the signal/image family: resampling (Resize, GridSample, AffineGrid),
//! detection post-processing (RoiAlign, NonMaxSuppression) and spectral ops (DFT, STFT, the
//! window generators, MelWeightMatrix). Upsample is rewritten into Resize by its importer.

mod detection;
mod grid;
mod resize;
mod spectral;

use crate::KernelFn;
use kiln_ir::{DType, Element, Tensor, Value};

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Resize" => resize::resize,
        "GridSample" => grid::grid_sample,
        "AffineGrid" => grid::affine_grid,
        "RoiAlign" => detection::roi_align,
        "NonMaxSuppression" => detection::non_max_suppression,
        "DFT" => spectral::dft,
        "STFT" => spectral::stft,
        "HannWindow" => spectral::hann_window,
        "HammingWindow" => spectral::hamming_window,
        "BlackmanWindow" => spectral::blackman_window,
        "MelWeightMatrix" => spectral::mel_weight_matrix,
        _ => return None,
    })
}

/// How f64 results become integers.
#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    /// Round half to even, then saturate (the reference's `saturate_cast`).
    HalfEven,
    /// Truncate toward zero, saturating (numpy `astype`).
    Truncate,
}

/// Convert an f64 result to element type `T` the way the ONNX reference's `saturate_cast` does
/// for integers (round half to even, then clamp); floats round once to the target precision.
fn cast_f64<T: Element>(v: f64) -> T {
    cast_with::<T>(v, Rounding::HalfEven)
}

fn cast_with<T: Element>(v: f64, rounding: Rounding) -> T {
    if T::DTYPE.is_int() && rounding == Rounding::HalfEven {
        // `as` saturates at the type's bounds (and maps NaN to 0).
        T::from_f64(v.round_ties_even())
    } else {
        T::from_f64(v)
    }
}

/// A tensor of dtype `dtype` from f64 values (see [`cast_with`]).
fn tensor_from_f64(dtype: DType, shape: Vec<usize>, data: &[f64], r: Rounding) -> Result<Tensor, String> {
    fn build<T: Element>(shape: Vec<usize>, data: &[f64], r: Rounding) -> Result<Tensor, String> {
        crate::util::make(shape, data.iter().map(|&v| cast_with::<T>(v, r)).collect::<Vec<T>>())
    }
    use half::{bf16, f16};
    match dtype {
        DType::F32 => build::<f32>(shape, data, r),
        DType::F16 => build::<f16>(shape, data, r),
        DType::BF16 => build::<bf16>(shape, data, r),
        DType::F64 => build::<f64>(shape, data, r),
        DType::I8 => build::<i8>(shape, data, r),
        DType::U8 => build::<u8>(shape, data, r),
        DType::I16 => build::<i16>(shape, data, r),
        DType::U16 => build::<u16>(shape, data, r),
        DType::I32 => build::<i32>(shape, data, r),
        DType::U32 => build::<u32>(shape, data, r),
        DType::I64 => build::<i64>(shape, data, r),
        DType::U64 => build::<u64>(shape, data, r),
        DType::Bool => build::<bool>(shape, data, r),
    }
}

/// The single value of a scalar (or one-element) integer input.
fn scalar_i64(inputs: &[Option<&Value>], i: usize, what: &str) -> Result<i64, String> {
    let t = crate::util::tensor_arg(inputs, i)?;
    if t.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", t.shape()));
    }
    if !t.dtype().is_int() {
        return Err(format!("{what} must be an integer tensor, got {}", t.dtype()));
    }
    Ok(t.to_i64_vec()[0])
}

/// The single value of a scalar (or one-element) float input.
fn scalar_f64(inputs: &[Option<&Value>], i: usize, what: &str) -> Result<f64, String> {
    let t = crate::util::tensor_arg(inputs, i)?;
    if t.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", t.shape()));
    }
    Ok(t.to_f64_vec()[0])
}

/// A float tensor input's dtype, or an error naming the op's allowed types.
fn require_float(t: &Tensor, what: &str) -> Result<DType, String> {
    let d = t.dtype();
    if d.is_float() {
        Ok(d)
    } else {
        Err(format!("{what} must be a float tensor, got {d}"))
    }
}
