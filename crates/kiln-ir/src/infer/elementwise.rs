//! Inference rules for the element-wise family: unary math and activations, broadcasting
//! binary/variadic ops, Where, Clip, Cast/CastLike/BitCast, Identity and Dropout.
//!
//! Every rule checks the dtypes the ONNX spec allows (inputs that must agree, agree) and the
//! attribute values it constrains; shapes follow numpy broadcasting where it applies.

use super::helpers::{broadcast_inputs, broadcast_shapes, unranked};
use super::{InferFn, Known};
use crate::{DType, TensorType, ValueType};

use DType::*;

const FLOAT: &[DType] = &[F32, F16, BF16, F64];
const INT: &[DType] = &[I8, U8, I16, U16, I32, U32, I64, U64];
const NUMERIC: &[DType] = &[F32, F16, BF16, F64, I8, U8, I16, U16, I32, U32, I64, U64];
const SIGNED: &[DType] = &[F32, F16, BF16, F64, I8, I16, I32, I64];
const BOOL: &[DType] = &[Bool];
const ANY: &[DType] = &DType::ALL;

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Ceil" | "Floor" | "Round" | "Erf" | "Sin" | "Cos" | "Tan" | "Asin"
        | "Acos" | "Atan" | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" | "Tanh" | "Sigmoid" | "Softplus"
        | "Softsign" | "Mish" | "HardSwish" | "LeakyRelu" | "Elu" | "Selu" | "HardSigmoid" | "ThresholdedRelu"
        | "Swish" => |k| unary(k, FLOAT),
        "Celu" => |k| {
            if k.attrs.float("alpha", 1.0)? == 0.0 {
                return Err("Celu's alpha must not be 0".into());
            }
            unary(k, FLOAT)
        },
        "Gelu" => |k| match k.attrs.string("approximate", "none".into())?.as_str() {
            "none" | "tanh" => unary(k, FLOAT),
            other => Err(format!("approximate must be 'none' or 'tanh', got '{other}'")),
        },
        "Abs" | "Sign" | "Shrink" => |k| unary(k, NUMERIC),
        "Neg" | "Relu" => |k| unary(k, SIGNED),
        "Not" => |k| unary(k, BOOL),
        "BitwiseNot" => |k| unary(k, INT),
        "IsNaN" | "IsInf" => |k| {
            let t = typed(k, 0, FLOAT)?;
            Ok(vec![ValueType::Tensor(TensorType { dtype: Bool, shape: t.shape.clone() })])
        },
        "Identity" => |k| match k.inputs.first().copied().flatten() {
            Some(t) => Ok(vec![t.clone()]),
            None => Err("required input 0 is missing".into()),
        },
        "Dropout" => dropout,
        "Add" | "Sub" | "Mul" | "Div" => |k| binary(k, NUMERIC, None),
        "Mod" => |k| match k.attrs.int("fmod", 0)? {
            0 | 1 => binary(k, NUMERIC, None),
            v => Err(format!("fmod must be 0 or 1, got {v}")),
        },
        "BitShift" => |k| match k.attrs.string_opt("direction")?.as_deref() {
            Some("LEFT" | "RIGHT") => binary(k, INT, None),
            Some(other) => Err(format!("direction must be LEFT or RIGHT, got '{other}'")),
            None => Err("required attribute 'direction' is missing".into()),
        },
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => |k| binary(k, INT, None),
        "And" | "Or" | "Xor" => |k| binary(k, BOOL, Some(Bool)),
        "Equal" => |k| binary(k, ANY, Some(Bool)),
        "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => |k| binary(k, NUMERIC, Some(Bool)),
        "Pow" => pow,
        "PRelu" => prelu,
        "Max" | "Min" => |k| variadic(k, NUMERIC),
        "Sum" | "Mean" => |k| variadic(k, FLOAT),
        "Where" => where_,
        "Clip" => clip,
        crate::elementwise_program::KILN_ELEMENTWISE => kiln_elementwise,
        "Cast" => |k| {
            typed(k, 0, ANY)?;
            let to = to_attr(k)?;
            Ok(vec![with_dtype(k.tensor(0)?, to)])
        },
        "CastLike" => |k| {
            typed(k, 0, ANY)?;
            Ok(vec![with_dtype(k.tensor(0)?, k.dtype(1)?)])
        },
        "BitCast" => |k| {
            let from = typed(k, 0, ANY)?.dtype;
            let to = to_attr(k)?;
            if from.size() != to.size() {
                return Err(format!(
                    "BitCast needs types of the same width, got {from} ({} bits) and {to} ({} bits)",
                    from.size() * 8,
                    to.size() * 8
                ));
            }
            Ok(vec![with_dtype(k.tensor(0)?, to)])
        },
        _ => return None,
    })
}

/// Input `i` as a tensor whose dtype is one of `allowed`.
fn typed<'a>(k: &Known<'a>, i: usize, allowed: &[DType]) -> Result<&'a TensorType, String> {
    let t = k.tensor(i)?;
    if !allowed.contains(&t.dtype) {
        return Err(format!(
            "input {i} has dtype {}, which {} does not accept (expects {})",
            t.dtype,
            k.op,
            names(allowed)
        ));
    }
    Ok(t)
}

fn names(dtypes: &[DType]) -> String {
    dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join("/")
}

fn with_dtype(t: &TensorType, dtype: DType) -> ValueType {
    ValueType::Tensor(TensorType { dtype, shape: t.shape.clone() })
}

/// Same dtype and shape as input 0, whose dtype must be in `allowed`.
fn unary(k: &Known, allowed: &[DType]) -> Result<Vec<ValueType>, String> {
    Ok(vec![ValueType::Tensor(typed(k, 0, allowed)?.clone())])
}

/// The broadcast type of the inputs in `idx`: `dtype` if given, else the inputs' common dtype.
fn broadcast_type(k: &Known, idx: &[usize], dtype: DType) -> Result<ValueType, String> {
    Ok(match broadcast_inputs(k, idx)? {
        Some(shape) => ValueType::tensor(dtype, shape),
        None => unranked(dtype),
    })
}

/// Inputs 0 and 1 of one dtype from `allowed`, broadcast; the output has dtype `out` (e.g.
/// bool for comparisons) or the inputs' dtype.
fn binary(k: &Known, allowed: &[DType], out: Option<DType>) -> Result<Vec<ValueType>, String> {
    let a = typed(k, 0, allowed)?.dtype;
    let b = k.dtype(1)?;
    if a != b {
        return Err(format!("inputs must have the same dtype, got {a} and {b}"));
    }
    Ok(vec![broadcast_type(k, &[0, 1], out.unwrap_or(a))?])
}

/// Pow: the base's dtype; the exponent may be any numeric dtype.
fn pow(k: &Known) -> Result<Vec<ValueType>, String> {
    let a = typed(k, 0, &[F32, F16, BF16, F64, I32, I64])?.dtype;
    typed(k, 1, NUMERIC)?;
    Ok(vec![broadcast_type(k, &[0, 1], a)?])
}

/// PRelu: the slope broadcasts to X (unidirectionally); the output is X's type.
fn prelu(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = typed(k, 0, &[F32, F16, BF16, F64, I32, I64, U32, U64])?;
    let s = k.tensor(1)?;
    if s.dtype != x.dtype {
        return Err(format!("slope has dtype {}, X has {}", s.dtype, x.dtype));
    }
    if let (Some(xs), Some(ss)) = (&x.shape, &s.shape) {
        let b = broadcast_shapes(xs, ss)?;
        if b.len() != xs.len() || b.iter().zip(xs).any(|(p, q)| p.known().is_some() && q.known().is_some() && p != q) {
            return Err(format!(
                "slope of shape {} does not broadcast to X's shape {}",
                crate::format_shape(ss),
                crate::format_shape(xs)
            ));
        }
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

/// Max/Min/Sum/Mean: one or more inputs of one dtype, broadcast together.
fn variadic(k: &Known, allowed: &[DType]) -> Result<Vec<ValueType>, String> {
    if k.inputs.is_empty() {
        return Err("needs at least one input".into());
    }
    let dtype = typed(k, 0, allowed)?.dtype;
    for i in 1..k.inputs.len() {
        let d = k.dtype(i)?;
        if d != dtype {
            return Err(format!("inputs must have the same dtype, got {dtype} (input 0) and {d} (input {i})"));
        }
    }
    let idx: Vec<usize> = (0..k.inputs.len()).collect();
    Ok(vec![broadcast_type(k, &idx, dtype)?])
}

fn where_(k: &Known) -> Result<Vec<ValueType>, String> {
    typed(k, 0, BOOL)?;
    let x = k.dtype(1)?;
    let y = k.dtype(2)?;
    if x != y {
        return Err(format!("X and Y must have the same dtype, got {x} and {y}"));
    }
    Ok(vec![broadcast_type(k, &[0, 1, 2], x)?])
}

/// Clip: optional scalar min (input 1) and max (input 2) of X's dtype.
fn clip(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = typed(k, 0, NUMERIC)?;
    for (i, which) in [(1, "min"), (2, "max")] {
        if let Some(t) = k.opt_tensor(i)? {
            if t.dtype != x.dtype {
                return Err(format!("{which} has dtype {}, input has {}", t.dtype, x.dtype));
            }
            if let Some(shape) = &t.shape {
                let n: Option<usize> = shape.iter().map(|d| d.known()).product();
                if n.is_some_and(|n| n != 1) {
                    return Err(format!("{which} must be a scalar, got shape {}", crate::format_shape(shape)));
                }
            }
        }
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

/// KilnElementwise (see `crate::elementwise_program`): a valid program reading every input;
/// inputs of one dtype (f32 or f64), broadcast together.
fn kiln_elementwise(k: &Known) -> Result<Vec<ValueType>, String> {
    crate::elementwise_program::Program::from_attrs(k.attrs, k.inputs.len())?;
    if k.inputs.is_empty() {
        return Err("needs at least one input".into());
    }
    let dtype = typed(k, 0, &[F32, F64])?.dtype;
    for i in 1..k.inputs.len() {
        let d = k.dtype(i)?;
        if d != dtype {
            return Err(format!("inputs must have the same dtype, got {dtype} (input 0) and {d} (input {i})"));
        }
    }
    let idx: Vec<usize> = (0..k.inputs.len()).collect();
    Ok(vec![broadcast_type(k, &idx, dtype)?])
}

/// Dropout at inference: output = input; the optional mask is bool of the same shape.
/// Training mode with a nonzero ratio (random) is refused when the inputs are constants;
/// otherwise the kernel checks at run time.
fn dropout(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = typed(k, 0, FLOAT)?;
    if let Some(r) = k.opt_tensor(1)? {
        if !r.dtype.is_float() {
            return Err(format!("ratio must be a float scalar, got {}", r.dtype));
        }
    }
    if let Some(t) = k.opt_tensor(2)? {
        if t.dtype != Bool {
            return Err(format!("training_mode must be a bool scalar, got {}", t.dtype));
        }
    }
    let ratio = if k.has_input(1) { k.const_input(1).map(|t| t.to_f64_vec()) } else { Some(vec![0.5]) };
    let training = k.const_input(2).map(|t| t.to_f64_vec());
    if let (Some(r), Some(t)) = (ratio, training) {
        if t.first().is_some_and(|&v| v != 0.0) && r.first().is_some_and(|&v| v != 0.0) {
            return Err("training-mode Dropout is not supported".into());
        }
    }
    let mut out = vec![ValueType::Tensor(x.clone())];
    if k.num_outputs > 1 {
        out.push(with_dtype(x, Bool));
    }
    Ok(out)
}

/// The `to` attribute of Cast/BitCast as a kiln dtype.
fn to_attr(k: &Known) -> Result<DType, String> {
    let code = k.attrs.req_int("to")?;
    let code = i32::try_from(code).map_err(|_| format!("'to' = {code} is not a data type"))?;
    DType::from_onnx_code(code).map_err(|name| format!("conversion to {name} is not supported"))
}
