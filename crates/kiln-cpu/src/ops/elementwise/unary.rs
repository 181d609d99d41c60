//! One-input element-wise ops: math functions, activations, predicates and bitwise/logical not.

use super::broadcast::par_map;
use super::scalar::{Int, Real};
use crate::util::{single, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{bf16, f16, Element, Tensor, TensorData, Value};

type Res = Result<Vec<Value>, String>;
type In<'a, 'b> = &'a [Option<&'b Value>];

/// A float function generic over the compute type (f32 or f64).
pub(super) trait FloatFn: Sync {
    fn call<T: Real>(&self, x: T) -> T;
}

/// A numeric function: one form for floats, one for integers.
trait NumFn: Sync {
    fn real<T: Real>(&self, x: T) -> T;
    fn int<T: Int>(&self, x: T) -> T;
}

/// Defines a [`FloatFn`] from an expression in `x` (and f64 parameters captured by name,
/// converted to the compute type `T` once per call).
macro_rules! float_fn {
    (|$x:ident $(, $p:ident)*| $body:expr) => {{
        struct Op {
            $($p: f64,)*
        }
        impl FloatFn for Op {
            #[inline(always)]
            #[allow(unused_parens)]
            fn call<T: Real>(&self, $x: T) -> T {
                $(let $p = T::c(self.$p);)*
                $body
            }
        }
        Op { $($p,)* }
    }};
}

macro_rules! num_fn {
    (|$x:ident| $real:expr, |$y:ident| $int:expr) => {{
        struct Op;
        impl NumFn for Op {
            #[inline(always)]
            fn real<T: Real>(&self, $x: T) -> T {
                $real
            }
            #[inline(always)]
            fn int<T: Int>(&self, $y: T) -> T {
                $int
            }
        }
        Op
    }};
}

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Sqrt" => |_, i| float_op(i, float_fn!(|x| x.sqrt())),
        "Reciprocal" => |_, i| float_op(i, float_fn!(|x| T::ONE / x)),
        "Exp" => |_, i| float_op(i, float_fn!(|x| x.exp())),
        "Log" => |_, i| float_op(i, float_fn!(|x| x.ln())),
        "Ceil" => |_, i| float_op(i, float_fn!(|x| x.ceil())),
        "Floor" => |_, i| float_op(i, float_fn!(|x| x.floor())),
        // Halves round to even, as numpy's round.
        "Round" => |_, i| float_op(i, float_fn!(|x| x.round_ties_even())),
        "Erf" => |_, i| float_op(i, float_fn!(|x| x.erf())),
        "Sin" => |_, i| float_op(i, float_fn!(|x| x.sin())),
        "Cos" => |_, i| float_op(i, float_fn!(|x| x.cos())),
        "Tan" => |_, i| float_op(i, float_fn!(|x| x.tan())),
        "Asin" => |_, i| float_op(i, float_fn!(|x| x.asin())),
        "Acos" => |_, i| float_op(i, float_fn!(|x| x.acos())),
        "Atan" => |_, i| float_op(i, float_fn!(|x| x.atan())),
        "Sinh" => |_, i| float_op(i, float_fn!(|x| x.sinh())),
        "Cosh" => |_, i| float_op(i, float_fn!(|x| x.cosh())),
        "Asinh" => |_, i| float_op(i, float_fn!(|x| x.asinh())),
        "Acosh" => |_, i| float_op(i, float_fn!(|x| x.acosh())),
        "Atanh" => |_, i| float_op(i, float_fn!(|x| x.atanh())),
        "Tanh" => |_, i| float_op(i, float_fn!(|x| x.tanh())),
        "Sigmoid" => |_, i| float_op(i, float_fn!(|x| sigmoid(x))),
        // log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|) (numpy's logaddexp(0, x)).
        "Softplus" => |_, i| float_op(i, float_fn!(|x| softplus(x))),
        "Softsign" => |_, i| float_op(i, float_fn!(|x| x / (T::ONE + x.abs()))),
        "Mish" => |_, i| float_op(i, float_fn!(|x| x * softplus(x).tanh())),
        "HardSwish" => |_, i| float_op(i, float_fn!(|x| x * clamp01(x * T::c(1.0 / 6.0) + T::c(0.5)))),
        "LeakyRelu" => |c, i| {
            let alpha = attr_f(c, "alpha", 0.01)?;
            float_op(i, float_fn!(|x, alpha| if x > T::ZERO { x } else { x * alpha }))
        },
        "Elu" => |c, i| {
            let alpha = attr_f(c, "alpha", 1.0)?;
            float_op(i, float_fn!(|x, alpha| if x > T::ZERO { x } else { alpha * x.exp_m1() }))
        },
        "Selu" => |c, i| {
            let alpha = attr_f(c, "alpha", 1.673_263_2)?;
            let gamma = attr_f(c, "gamma", 1.050_701)?;
            float_op(i, float_fn!(|x, alpha, gamma| gamma * if x > T::ZERO { x } else { alpha * x.exp_m1() }))
        },
        "Celu" => |c, i| {
            let alpha = attr_f(c, "alpha", 1.0)?;
            if alpha == 0.0 {
                return Err("Celu's alpha must not be 0".into());
            }
            float_op(
                i,
                float_fn!(|x, alpha| {
                    if x.is_nan() {
                        return x;
                    }
                    let neg = alpha * (x / alpha).exp_m1();
                    (if x > T::ZERO { x } else { T::ZERO }) + (if neg < T::ZERO { neg } else { T::ZERO })
                }),
            )
        },
        "HardSigmoid" => |c, i| {
            let alpha = attr_f(c, "alpha", 0.2)?;
            let beta = attr_f(c, "beta", 0.5)?;
            float_op(i, float_fn!(|x, alpha, beta| clamp01(alpha * x + beta)))
        },
        "ThresholdedRelu" => |c, i| {
            let alpha = attr_f(c, "alpha", 1.0)?;
            float_op(i, float_fn!(|x, alpha| if x > alpha { x } else { T::ZERO }))
        },
        "Swish" => |c, i| {
            let alpha = attr_f(c, "alpha", 1.0)?;
            float_op(i, float_fn!(|x, alpha| x * sigmoid(alpha * x)))
        },
        "Gelu" => |c, i| match c.attrs.string("approximate", "none".into())?.as_str() {
            // 0.5·x·(1 + erf(x/√2)) written as 0.5·x·erfc(−x/√2), which keeps its accuracy for
            // large negative x where 1 + erf cancels.
            "none" => float_op(i, float_fn!(|x| T::c(0.5) * x * (-x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erfc())),
            // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³): same value, no
            // cancellation for large negative x.
            "tanh" => float_op(
                i,
                float_fn!(|x| {
                    let two_k = T::c(2.0 * 0.797_884_560_802_865_4);
                    x * sigmoid(two_k * (x + T::c(0.044715) * x * x * x))
                }),
            ),
            other => Err(format!("Gelu's approximate must be 'none' or 'tanh', got '{other}'")),
        },
        "Abs" => |_, i| num_op(i, num_fn!(|x| x.abs(), |x| x.wrapping_abs())),
        "Neg" => |_, i| num_op(i, num_fn!(|x| -x, |x| x.wrapping_neg())),
        "Sign" => |_, i| num_op(i, num_fn!(|x| sign(x), |x| x.signum())),
        // NaN stays NaN, as numpy's maximum(x, 0).
        "Relu" => |_, i| num_op(i, num_fn!(|x| if x < T::ZERO { T::ZERO } else { x }, |x| x.max(T::ZERO))),
        "IsNaN" => |_, i| predicate(i, |x| x.is_nan()),
        "IsInf" => |c, i| {
            let neg = c.attrs.int("detect_negative", 1)? != 0;
            let pos = c.attrs.int("detect_positive", 1)? != 0;
            predicate(i, move |x| x.is_infinite() && if x > 0.0 { pos } else { neg })
        },
        "Not" => |_, i| {
            let t = tensor_arg(i, 0)?;
            let v = t.as_slice::<bool>().map_err(|e| format!("Not: {e}"))?;
            out(t, TensorData::Bool(v.iter().map(|&b| !b).collect()))
        },
        "BitwiseNot" => bitwise_not,
        "Shrink" => shrink,
        _ => return None,
    })
}

/// Apply `f` to a float tensor; f16/bf16 are computed in f32 and rounded once.
pub(super) fn map_float(t: &Tensor, f: &impl FloatFn) -> Result<Tensor, String> {
    let data = match t.data() {
        TensorData::F32(v) => TensorData::F32(par_map(v, |x| f.call(x))),
        TensorData::F64(v) => TensorData::F64(par_map(v, |x| f.call(x))),
        TensorData::F16(v) => TensorData::F16(par_map(v, |x| f16::from_f32(f.call(x.to_f32())))),
        TensorData::BF16(v) => TensorData::BF16(par_map(v, |x| bf16::from_f32(f.call(x.to_f32())))),
        other => return Err(format!("expects a floating-point tensor, got {}", other.dtype())),
    };
    Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())
}

fn float_op(inputs: In, f: impl FloatFn) -> Res {
    Ok(single(map_float(tensor_arg(inputs, 0)?, &f)?))
}

fn num_op(inputs: In, f: impl NumFn) -> Res {
    let t = tensor_arg(inputs, 0)?;
    fn ints<T: Int>(v: &[T], f: &impl NumFn) -> Vec<T> {
        par_map(v, |x| f.int(x))
    }
    struct AsFloat<'a, F>(&'a F);
    impl<F: NumFn> FloatFn for AsFloat<'_, F> {
        fn call<T: Real>(&self, x: T) -> T {
            self.0.real(x)
        }
    }
    let data = match t.data() {
        TensorData::F32(_) | TensorData::F64(_) | TensorData::F16(_) | TensorData::BF16(_) => {
            return Ok(single(map_float(t, &AsFloat(&f))?))
        }
        TensorData::I8(v) => TensorData::I8(ints(v, &f)),
        TensorData::U8(v) => TensorData::U8(ints(v, &f)),
        TensorData::I16(v) => TensorData::I16(ints(v, &f)),
        TensorData::U16(v) => TensorData::U16(ints(v, &f)),
        TensorData::I32(v) => TensorData::I32(ints(v, &f)),
        TensorData::U32(v) => TensorData::U32(ints(v, &f)),
        TensorData::I64(v) => TensorData::I64(ints(v, &f)),
        TensorData::U64(v) => TensorData::U64(ints(v, &f)),
        TensorData::Bool(_) => return Err("expects a numeric tensor, got bool".into()),
    };
    out(t, data)
}

fn bitwise_not(_: &KernelCtx, inputs: In) -> Res {
    let t = tensor_arg(inputs, 0)?;
    fn go<T: Int>(v: &[T]) -> Vec<T> {
        v.iter().map(|&x| x.bitnot()).collect()
    }
    let data = match t.data() {
        TensorData::I8(v) => TensorData::I8(go(v)),
        TensorData::U8(v) => TensorData::U8(go(v)),
        TensorData::I16(v) => TensorData::I16(go(v)),
        TensorData::U16(v) => TensorData::U16(go(v)),
        TensorData::I32(v) => TensorData::I32(go(v)),
        TensorData::U32(v) => TensorData::U32(go(v)),
        TensorData::I64(v) => TensorData::I64(go(v)),
        TensorData::U64(v) => TensorData::U64(go(v)),
        other => return Err(format!("expects an integer tensor, got {}", other.dtype())),
    };
    out(t, data)
}

/// Float → bool tests (IsNaN, IsInf); every float dtype widens exactly to f64.
fn predicate(inputs: In, f: impl Fn(f64) -> bool) -> Res {
    let t = tensor_arg(inputs, 0)?;
    if !t.dtype().is_float() {
        return Err(format!("expects a floating-point tensor, got {}", t.dtype()));
    }
    fn go<T: Element>(v: &[T], f: impl Fn(f64) -> bool) -> Vec<bool> {
        v.iter().map(|&x| f(x.to_f64())).collect()
    }
    let data = kiln_ir::dispatch!(t.data(), v => go(v, &f));
    out(t, TensorData::Bool(data))
}

/// Shrink on any numeric dtype: computed in f64 (where the float attributes live) and
/// converted back, truncating for integers as the reference's `astype` does.
fn shrink(ctx: &KernelCtx, inputs: In) -> Res {
    let t = tensor_arg(inputs, 0)?;
    let bias = attr_f(ctx, "bias", 0.0)?;
    let lambd = attr_f(ctx, "lambd", 0.5)?;
    if t.dtype() == kiln_ir::DType::Bool {
        return Err("Shrink expects a numeric tensor, got bool".into());
    }
    let f = |x: f64| {
        if x < -lambd {
            x + bias
        } else if x > lambd {
            x - bias
        } else {
            0.0
        }
    };
    let data = kiln_ir::map_data!(t.data(), v => v.iter().map(|&x| Element::from_f64(f(x.to_f64()))).collect());
    out(t, data)
}

fn out(like: &Tensor, data: TensorData) -> Res {
    Ok(single(Tensor::new(like.shape().to_vec(), data).map_err(|e| e.to_string())?))
}

fn attr_f(ctx: &KernelCtx, name: &str, default: f32) -> Result<f64, String> {
    Ok(ctx.attrs.float(name, default)? as f64)
}

#[inline(always)]
pub(super) fn sigmoid<T: Real>(x: T) -> T {
    // Both branches only ever exponentiate a non-positive number, so nothing overflows.
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

#[inline(always)]
pub(super) fn softplus<T: Real>(x: T) -> T {
    if x.is_nan() {
        return x;
    }
    (if x > T::ZERO { x } else { T::ZERO }) + (-x.abs()).exp().ln_1p()
}

#[inline(always)]
pub(super) fn clamp01<T: Real>(x: T) -> T {
    if x < T::ZERO {
        T::ZERO
    } else if x > T::ONE {
        T::ONE
    } else {
        x
    }
}

/// -1, 0 or 1 (NaN stays NaN; unlike `f32::signum`, zero maps to zero).
#[inline(always)]
fn sign<T: Real>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else if x < T::ZERO {
        -T::ONE
    } else {
        x
    }
}
