//! CPU kernels for the reduction / normalization family: Reduce*, ArgMax/ArgMin, Softmax and
//! friends, CumSum/CumProd, the normalization layers, the two losses, Einsum and Det.
//!
//! Floating-point kernels are generic over the element type and compute in f64 (reading each
//! element with `to_f64`, rounding once when storing), so f16/bf16 results match the ONNX
//! reference (which computes in the input type or wider) well within tolerance. Integer
//! arithmetic that ONNX defines on integers (ReduceSum, CumSum, ...) accumulates in wrapping
//! i64, which after the final cast equals numpy's modular arithmetic in the narrow type.

mod det;
mod einsum;
mod loss;
mod norm;
mod reduce;
mod softmax;

use crate::KernelFn;
use kiln_ir::{Element, Tensor};

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "ReduceSum" => reduce::reduce_sum,
        "ReduceMean" => reduce::reduce_mean,
        "ReduceMax" => reduce::reduce_max,
        "ReduceMin" => reduce::reduce_min,
        "ReduceProd" => reduce::reduce_prod,
        "ReduceL1" => reduce::reduce_l1,
        "ReduceL2" => reduce::reduce_l2,
        "ReduceLogSum" => reduce::reduce_log_sum,
        "ReduceLogSumExp" => reduce::reduce_log_sum_exp,
        "ReduceSumSquare" => reduce::reduce_sum_square,
        "ArgMax" => reduce::arg_max,
        "ArgMin" => reduce::arg_min,
        "Softmax" => softmax::softmax,
        "LogSoftmax" => softmax::log_softmax,
        "Hardmax" => softmax::hardmax,
        "CumSum" => softmax::cum_sum,
        "CumProd" => softmax::cum_prod,
        "LayerNormalization" => norm::layer_normalization,
        "RMSNormalization" => norm::rms_normalization,
        "BatchNormalization" => norm::batch_normalization,
        "InstanceNormalization" => norm::instance_normalization,
        "GroupNormalization" => norm::group_normalization,
        "LpNormalization" => norm::lp_normalization,
        "MeanVarianceNormalization" => norm::mean_variance_normalization,
        "LRN" => norm::lrn,
        "NegativeLogLikelihoodLoss" => loss::nll_loss,
        "SoftmaxCrossEntropyLoss" => loss::softmax_cross_entropy_loss,
        "Einsum" => einsum::einsum,
        "Det" => det::det,
        _ => return None,
    })
}

pub(crate) use kiln_ir::spec::{COERCE_2D_ATTR, PER_GROUP_SCALE_ATTR};

/// Runs `$body` with `$v` bound to the typed `Vec` of a float tensor's data; other dtypes are
/// an error naming the op.
macro_rules! with_float {
    ($t:expr, $what:expr, $v:ident => $body:expr) => {
        match $t.data() {
            kiln_ir::TensorData::F32($v) => $body,
            kiln_ir::TensorData::F16($v) => $body,
            kiln_ir::TensorData::BF16($v) => $body,
            kiln_ir::TensorData::F64($v) => $body,
            other => Err(format!("{} needs a floating-point tensor, got {}", $what, other.dtype())),
        }
    };
}

/// Like `with_float!` for every numeric (non-bool) dtype; `$v` has an [`Arith`] element type.
macro_rules! with_numeric {
    ($t:expr, $what:expr, $v:ident => $body:expr) => {
        match $t.data() {
            kiln_ir::TensorData::F32($v) => $body,
            kiln_ir::TensorData::F16($v) => $body,
            kiln_ir::TensorData::BF16($v) => $body,
            kiln_ir::TensorData::F64($v) => $body,
            kiln_ir::TensorData::I8($v) => $body,
            kiln_ir::TensorData::U8($v) => $body,
            kiln_ir::TensorData::I16($v) => $body,
            kiln_ir::TensorData::U16($v) => $body,
            kiln_ir::TensorData::I32($v) => $body,
            kiln_ir::TensorData::U32($v) => $body,
            kiln_ir::TensorData::I64($v) => $body,
            kiln_ir::TensorData::U64($v) => $body,
            kiln_ir::TensorData::Bool(_) => Err(format!("{} does not support bool tensors", $what)),
        }
    };
}
pub(crate) use {with_float, with_numeric};

/// Accumulator arithmetic of an element type: f64 for floats; wrapping i64 for integers (exact
/// modulo 2^64, so the final wrapping cast gives numpy's result in the narrow type).
pub(crate) trait Arith: Element {
    type Acc: Copy;
    const ZERO: Self::Acc;
    const ONE: Self::Acc;
    fn load(self) -> Self::Acc;
    fn store(a: Self::Acc) -> Self;
    fn add(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn mul(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn abs(a: Self::Acc) -> Self::Acc;
}

macro_rules! float_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            type Acc = f64;
            const ZERO: f64 = 0.0;
            const ONE: f64 = 1.0;
            fn load(self) -> f64 { self.to_f64() }
            fn store(a: f64) -> Self { <$t as Element>::from_f64(a) }
            fn add(a: f64, b: f64) -> f64 { a + b }
            fn mul(a: f64, b: f64) -> f64 { a * b }
            fn abs(a: f64) -> f64 { a.abs() }
        }
    )*};
}
float_arith!(f32, f64, kiln_ir::f16, kiln_ir::bf16);

macro_rules! int_arith {
    ($signed:expr; $($t:ty),*) => {$(
        impl Arith for $t {
            type Acc = i64;
            const ZERO: i64 = 0;
            const ONE: i64 = 1;
            fn load(self) -> i64 { self as i64 }
            fn store(a: i64) -> Self { a as $t }
            fn add(a: i64, b: i64) -> i64 { a.wrapping_add(b) }
            fn mul(a: i64, b: i64) -> i64 { a.wrapping_mul(b) }
            // Unsigned values above i64::MAX load as negative i64: |x| is x itself.
            fn abs(a: i64) -> i64 { if $signed { a.wrapping_abs() } else { a } }
        }
    )*};
}
int_arith!(true; i8, i16, i32, i64);
int_arith!(false; u8, u16, u32, u64);

/// Split `shape` around `axis` into (outer, n, inner) element counts.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Read a scalar-like (0-D or single-element) integer tensor, e.g. CumSum's `axis`.
pub(crate) fn scalar_int(t: &Tensor, what: &str) -> Result<i64, String> {
    if !t.dtype().is_int() || t.len() != 1 || t.rank() > 1 {
        return Err(format!("{what} must be a single integer, got {} of shape {:?}", t.dtype(), t.shape()));
    }
    Ok(t.to_i64_vec()[0])
}

/// Build a tensor of `T` from f64 values (one rounding per element).
pub(crate) fn store_f64<T: Element>(shape: Vec<usize>, v: &[f64]) -> Result<Tensor, String> {
    crate::util::make(shape, v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>())
}

/// For each element of a tensor of shape `out`, the flat index of the element of `t` that
/// unidirectional broadcasting maps onto it (`t`'s shape must broadcast to `out`).
pub(crate) fn unidirectional_indices(t: &[usize], out: &[usize], what: &str) -> Result<Vec<usize>, String> {
    if t.len() > out.len() || t.iter().rev().zip(out.iter().rev()).any(|(&a, &b)| a != b && a != 1) {
        return Err(format!("{what} of shape {t:?} cannot be broadcast to {out:?}"));
    }
    Ok(crate::util::broadcast_indices(t, out))
}
