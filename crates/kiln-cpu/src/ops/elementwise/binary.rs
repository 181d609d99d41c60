//! Broadcasting multi-input element-wise ops: arithmetic, comparisons, logical and bitwise ops,
//! the variadic Min/Max/Sum/Mean, Where and Clip.

use super::broadcast::{zip2_tensor, zip3};
use super::cast::{Num, Scalar};
use super::scalar::{Int, Real};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{bf16, f16, DType, Element, Tensor, TensorData, Value};

type Res = Result<Vec<Value>, String>;
type In<'a, 'b> = &'a [Option<&'b Value>];

/// Matches two `TensorData` of the same variant, binding their `Vec`s; `$body` is compiled once
/// per dtype (usually a call to a generic function). Mismatched dtypes evaluate `$err`.
macro_rules! same_dtype {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr, $err:expr) => {
        match ($a, $b) {
            (TensorData::F32($x), TensorData::F32($y)) => $body,
            (TensorData::F16($x), TensorData::F16($y)) => $body,
            (TensorData::BF16($x), TensorData::BF16($y)) => $body,
            (TensorData::F64($x), TensorData::F64($y)) => $body,
            (TensorData::I8($x), TensorData::I8($y)) => $body,
            (TensorData::U8($x), TensorData::U8($y)) => $body,
            (TensorData::I16($x), TensorData::I16($y)) => $body,
            (TensorData::U16($x), TensorData::U16($y)) => $body,
            (TensorData::I32($x), TensorData::I32($y)) => $body,
            (TensorData::U32($x), TensorData::U32($y)) => $body,
            (TensorData::I64($x), TensorData::I64($y)) => $body,
            (TensorData::U64($x), TensorData::U64($y)) => $body,
            (TensorData::Bool($x), TensorData::Bool($y)) => $body,
            #[allow(unreachable_patterns)]
            _ => $err,
        }
    };
}

/// A binary op on numbers: one form for floats (f16/bf16 computed in f32), one for integers.
trait Arith: Sync {
    fn real<T: Real>(&self, a: T, b: T) -> T;
    fn int<T: Int>(&self, a: T, b: T) -> T;
}

/// Defines a stateless [`Arith`] from a float expression and an integer expression.
macro_rules! arith {
    (|$a:ident, $b:ident| $real:expr, $int:expr) => {{
        struct Op;
        impl Arith for Op {
            #[inline(always)]
            fn real<T: Real>(&self, $a: T, $b: T) -> T {
                $real
            }
            #[inline(always)]
            fn int<T: Int>(&self, $a: T, $b: T) -> T {
                $int
            }
        }
        Op
    }};
}

/// A binary op on integers only.
trait IntBinary: Sync {
    fn call<T: Int>(&self, a: T, b: T) -> T;
}

macro_rules! int_fn {
    (|$a:ident, $b:ident| $e:expr) => {{
        struct Op;
        impl IntBinary for Op {
            #[inline(always)]
            fn call<T: Int>(&self, $a: T, $b: T) -> T {
                $e
            }
        }
        Op
    }};
}

struct Shift {
    left: bool,
}

impl IntBinary for Shift {
    #[inline(always)]
    fn call<T: Int>(&self, a: T, b: T) -> T {
        a.shift(b, self.left)
    }
}

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Add" => |_, i| arith_op(i, &arith!(|a, b| a + b, a.wrapping_add(b))),
        "Sub" => |_, i| arith_op(i, &arith!(|a, b| a - b, a.wrapping_sub(b))),
        "Mul" => |_, i| arith_op(i, &arith!(|a, b| a * b, a.wrapping_mul(b))),
        // Integer division truncates toward zero, as in C (and the ONNX reference).
        "Div" => |_, i| arith_op(i, &arith!(|a, b| a / b, a.div_trunc(b))),
        "Mod" => |c, i| match c.attrs.int("fmod", 0)? {
            0 => arith_op(i, &arith!(|a, b| floor_mod(a, b), a.rem_floor(b))),
            // Rust's float `%` is C's fmod.
            1 => arith_op(i, &arith!(|a, b| a % b, a.rem_trunc(b))),
            v => Err(format!("Mod's fmod must be 0 or 1, got {v}")),
        },
        "PRelu" => prelu,
        "Pow" => pow,
        "BitShift" => bitshift,
        "BitwiseAnd" => |_, i| int_only(i, int_fn!(|a, b| a.bitand(b))),
        "BitwiseOr" => |_, i| int_only(i, int_fn!(|a, b| a.bitor(b))),
        "BitwiseXor" => |_, i| int_only(i, int_fn!(|a, b| a.bitxor(b))),
        "And" => |_, i| logical(i, |a, b| a & b),
        "Or" => |_, i| logical(i, |a, b| a | b),
        "Xor" => |_, i| logical(i, |a, b| a ^ b),
        "Equal" => |_, i| compare(i, CmpOp::Eq),
        "Less" => |_, i| compare(i, CmpOp::Lt),
        "LessOrEqual" => |_, i| compare(i, CmpOp::Le),
        "Greater" => |_, i| compare(i, CmpOp::Gt),
        "GreaterOrEqual" => |_, i| compare(i, CmpOp::Ge),
        "Max" => |_, i| variadic(i, Fold::Max),
        "Min" => |_, i| variadic(i, Fold::Min),
        "Sum" => |_, i| variadic(i, Fold::Sum),
        "Mean" => |_, i| variadic(i, Fold::Mean),
        "Where" => where_,
        "Clip" => clip,
        _ => return None,
    })
}

fn arith_op(inputs: In, op: &impl Arith) -> Res {
    Ok(single(arith(tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, op)?))
}

/// Applies `op` with broadcasting to two tensors of the same numeric dtype.
fn arith(a: &Tensor, b: &Tensor, op: &impl Arith) -> Result<Tensor, String> {
    use TensorData as D;
    match (a.data(), b.data()) {
        (D::F32(x), D::F32(y)) => zip2_tensor(a, x, b, y, |p, q| op.real(p, q)),
        (D::F64(x), D::F64(y)) => zip2_tensor(a, x, b, y, |p, q| op.real(p, q)),
        (D::F16(x), D::F16(y)) => {
            zip2_tensor(a, x, b, y, |p: f16, q: f16| f16::from_f32(op.real(p.to_f32(), q.to_f32())))
        }
        (D::BF16(x), D::BF16(y)) => {
            zip2_tensor(a, x, b, y, |p: bf16, q: bf16| bf16::from_f32(op.real(p.to_f32(), q.to_f32())))
        }
        (D::I8(x), D::I8(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::U8(x), D::U8(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::I16(x), D::I16(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::U16(x), D::U16(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::I32(x), D::I32(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::U32(x), D::U32(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::I64(x), D::I64(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        (D::U64(x), D::U64(y)) => zip2_tensor(a, x, b, y, |p, q| op.int(p, q)),
        _ => Err(dtype_error(a, b, "numeric")),
    }
}

fn dtype_error(a: &Tensor, b: &Tensor, what: &str) -> String {
    if a.dtype() == b.dtype() {
        format!("expects {what} tensors, got {}", a.dtype())
    } else {
        format!("inputs must have the same dtype, got {} and {}", a.dtype(), b.dtype())
    }
}

/// Python-style remainder with the divisor's sign, with the ONNX special cases: a zero result
/// takes the divisor's sign; an infinite divisor returns a finite dividend of the same sign
/// and the divisor otherwise; an infinite dividend or zero divisor gives NaN (from fmod).
#[inline(always)]
fn floor_mod<T: Real>(a: T, b: T) -> T {
    let r = a % b;
    if r == T::ZERO {
        T::ZERO.copysign(b)
    } else if (r < T::ZERO) != (b < T::ZERO) && !r.is_nan() {
        r + b
    } else {
        r
    }
}

/// PRelu: `x` where positive, `x * slope` elsewhere; the slope broadcasts to `x`'s shape.
fn prelu(_: &KernelCtx, inputs: In) -> Res {
    let x = tensor_arg(inputs, 0)?;
    let slope = tensor_arg(inputs, 1)?;
    let y = arith(
        x,
        slope,
        &arith!(|a, s| if a > T::ZERO { a } else { a * s }, if a > T::ZERO { a } else { a.wrapping_mul(s) }),
    )?;
    if y.shape() != x.shape() {
        return Err(format!("slope of shape {:?} does not broadcast to X's shape {:?}", slope.shape(), x.shape()));
    }
    Ok(single(y))
}

/// Pow: the result has the base's dtype; the exponent may be any numeric dtype. Float bases
/// are computed in f64 and rounded once; integer bases with integer exponents use exact
/// wrapping integer powers, with float exponents f64 `powf` truncated back (numpy `astype`).
fn pow(_: &KernelCtx, inputs: In) -> Res {
    let a = tensor_arg(inputs, 0)?;
    let b = tensor_arg(inputs, 1)?;
    if b.dtype() == DType::Bool {
        return Err("Pow's exponent must be numeric, got bool".into());
    }
    fn float_base<T: Element>(a: &Tensor, av: &[T], b: &Tensor) -> Result<Tensor, String> {
        kiln_ir::dispatch!(b.data(), e => zip2_tensor(a, av, b, e, |p, q| T::from_f64(p.to_f64().powf(q.to_f64()))))
    }
    fn int_base<T: Int + Scalar>(a: &Tensor, av: &[T], b: &Tensor) -> Result<Tensor, String> {
        if b.dtype().is_float() {
            // Converted back like a C cast (NaN from a negative base gives the minimum value).
            kiln_ir::dispatch!(b.data(), e => zip2_tensor(a, av, b, e, |p, q| T::from_num(Num::F(p.to_f64().powf(q.to_f64())))))
        } else {
            kiln_ir::dispatch!(b.data(), e => zip2_tensor(a, av, b, e, |p, q| p.pow_int(q.to_i64())))
        }
    }
    use TensorData as D;
    let y = match a.data() {
        D::F32(v) => float_base(a, v, b),
        D::F64(v) => float_base(a, v, b),
        D::F16(v) => float_base(a, v, b),
        D::BF16(v) => float_base(a, v, b),
        D::I8(v) => int_base(a, v, b),
        D::U8(v) => int_base(a, v, b),
        D::I16(v) => int_base(a, v, b),
        D::U16(v) => int_base(a, v, b),
        D::I32(v) => int_base(a, v, b),
        D::U32(v) => int_base(a, v, b),
        D::I64(v) => int_base(a, v, b),
        D::U64(v) => int_base(a, v, b),
        D::Bool(_) => Err("Pow's base must be numeric, got bool".into()),
    }?;
    Ok(single(y))
}

fn bitshift(ctx: &KernelCtx, inputs: In) -> Res {
    let left = match ctx.attrs.string_opt("direction")?.as_deref() {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        Some(other) => return Err(format!("BitShift's direction must be LEFT or RIGHT, got '{other}'")),
        None => return Err("BitShift needs the 'direction' attribute".into()),
    };
    int_only(inputs, Shift { left })
}

/// An integer-only binary op (bitwise ops, shifts) on two tensors of the same integer dtype.
fn int_only(inputs: In, f: impl IntBinary) -> Res {
    let a = tensor_arg(inputs, 0)?;
    let b = tensor_arg(inputs, 1)?;
    use TensorData as D;
    let y = match (a.data(), b.data()) {
        (D::I8(x), D::I8(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::U8(x), D::U8(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::I16(x), D::I16(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::U16(x), D::U16(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::I32(x), D::I32(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::U32(x), D::U32(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::I64(x), D::I64(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        (D::U64(x), D::U64(y)) => zip2_tensor(a, x, b, y, |p, q| f.call(p, q)),
        _ => Err(dtype_error(a, b, "integer")),
    }?;
    Ok(single(y))
}

fn logical(inputs: In, f: fn(bool, bool) -> bool) -> Res {
    let a = tensor_arg(inputs, 0)?;
    let b = tensor_arg(inputs, 1)?;
    match (a.data(), b.data()) {
        (TensorData::Bool(x), TensorData::Bool(y)) => Ok(single(zip2_tensor(a, x, b, y, f)?)),
        _ => Err(dtype_error(a, b, "bool")),
    }
}

#[derive(Clone, Copy)]
enum CmpOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

fn compare(inputs: In, op: CmpOp) -> Res {
    let a = tensor_arg(inputs, 0)?;
    let b = tensor_arg(inputs, 1)?;
    // Comparisons are exact in every dtype (f16/bf16 included), so no widening; NaN compares
    // false, as IEEE requires.
    fn go<T: Element>(a: &Tensor, x: &[T], b: &Tensor, y: &[T], op: CmpOp) -> Result<Tensor, String> {
        match op {
            CmpOp::Eq => zip2_tensor(a, x, b, y, |p, q| p == q),
            CmpOp::Lt => zip2_tensor(a, x, b, y, |p, q| p < q),
            CmpOp::Le => zip2_tensor(a, x, b, y, |p, q| p <= q),
            CmpOp::Gt => zip2_tensor(a, x, b, y, |p, q| p > q),
            CmpOp::Ge => zip2_tensor(a, x, b, y, |p, q| p >= q),
        }
    }
    let y = same_dtype!(a.data(), b.data(), |x, y| go(a, x, b, y, op), Err(dtype_error(a, b, "comparable")))?;
    Ok(single(y))
}

#[derive(Clone, Copy, PartialEq)]
enum Fold {
    Max,
    Min,
    Sum,
    Mean,
}

/// Max/Min/Sum/Mean over one or more inputs, broadcast together, folded pairwise left to
/// right as the reference does (for f16/bf16 each partial sum is rounded, as numpy's in-place
/// `+=` in that dtype rounds it); Mean then divides by the input count.
fn variadic(inputs: In, fold: Fold) -> Res {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| tensor_arg(inputs, i)).collect::<Result<_, _>>()?;
    let first = *ts.first().ok_or("needs at least one input")?;
    let dtype = first.dtype();
    if let Some(t) = ts.iter().find(|t| t.dtype() != dtype) {
        return Err(format!("inputs must have the same dtype, got {} and {}", dtype, t.dtype()));
    }
    if matches!(fold, Fold::Sum | Fold::Mean) && !dtype.is_float() {
        return Err(format!("expects floating-point tensors, got {dtype}"));
    }
    if dtype == DType::Bool {
        return Err("expects numeric tensors, got bool".into());
    }
    let mut acc = first.clone();
    for &t in &ts[1..] {
        acc = match fold {
            Fold::Max => same_dtype!(
                acc.data(),
                t.data(),
                |x, y| zip2_tensor(&acc, x, t, y, max_nan),
                Err(dtype_error(&acc, t, "numeric"))
            )?,
            Fold::Min => same_dtype!(
                acc.data(),
                t.data(),
                |x, y| zip2_tensor(&acc, x, t, y, min_nan),
                Err(dtype_error(&acc, t, "numeric"))
            )?,
            Fold::Sum | Fold::Mean => arith(&acc, t, &arith!(|a, b| a + b, a.wrapping_add(b)))?,
        };
    }
    if fold == Fold::Mean {
        acc = super::unary::map_float(&acc, &MeanDiv(ts.len() as f64))?;
    }
    Ok(single(acc))
}

struct MeanDiv(f64);
impl super::unary::FloatFn for MeanDiv {
    fn call<T: Real>(&self, x: T) -> T {
        x / T::c(self.0)
    }
}

/// numpy's `maximum`: NaN in either operand propagates.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(super) fn max_nan<T: PartialOrd + Copy>(a: T, b: T) -> T {
    if a != a || a >= b {
        a
    } else {
        b
    }
}

#[inline(always)]
#[allow(clippy::eq_op)]
pub(super) fn min_nan<T: PartialOrd + Copy>(a: T, b: T) -> T {
    if a != a || a <= b {
        a
    } else {
        b
    }
}

fn where_(_: &KernelCtx, inputs: In) -> Res {
    let c = tensor_arg(inputs, 0)?;
    let x = tensor_arg(inputs, 1)?;
    let y = tensor_arg(inputs, 2)?;
    let cv = c.as_slice::<bool>().map_err(|e| format!("condition: {e}"))?;
    let (shape, data) =
        same_dtype!(
            x.data(),
            y.data(),
            |xv, yv| {
                let (shape, v) =
                    zip3((cv, c.shape()), (xv.as_slice(), x.shape()), (yv.as_slice(), y.shape()), |k, p, q| {
                        if k {
                            p
                        } else {
                            q
                        }
                    })?;
                (shape, Element::into_data(v))
            },
            return Err(dtype_error(x, y, "any"))
        );
    Ok(single(Tensor::new(shape, data).map_err(|e| e.to_string())?))
}

/// Clip to optional scalar bounds. `min > max` gives `max` everywhere (it is Min(max, Max(x,
/// min))); NaN inputs stay NaN.
fn clip(_: &KernelCtx, inputs: In) -> Res {
    let x = tensor_arg(inputs, 0)?;
    let lo = opt_tensor_arg(inputs, 1)?;
    let hi = opt_tensor_arg(inputs, 2)?;
    fn bound<T: Element>(t: Option<&Tensor>, which: &str) -> Result<Option<T>, String> {
        let Some(t) = t else { return Ok(None) };
        let v = t.as_slice::<T>().map_err(|e| format!("Clip's {which}: {e}"))?;
        match v {
            [b] => Ok(Some(*b)),
            _ => Err(format!("Clip's {which} must be a scalar, got shape {:?}", t.shape())),
        }
    }
    fn go<T: Element>(x: &Tensor, v: &[T], lo: Option<&Tensor>, hi: Option<&Tensor>) -> Result<Tensor, String> {
        let (lo, hi) = (bound::<T>(lo, "min")?, bound::<T>(hi, "max")?);
        let data: Vec<T> = v
            .iter()
            .map(|&e| {
                let e = match lo {
                    Some(l) if e < l => l,
                    _ => e,
                };
                match hi {
                    Some(h) if e > h => h,
                    _ => e,
                }
            })
            .collect();
        Tensor::from_vec(x.shape().to_vec(), data).map_err(|e| e.to_string())
    }
    if x.dtype() == DType::Bool {
        return Err("Clip expects a numeric tensor, got bool".into());
    }
    Ok(single(kiln_ir::dispatch!(x.data(), v => go(x, v, lo, hi))?))
}
