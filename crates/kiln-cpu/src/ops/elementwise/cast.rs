//! Dtype conversion (Cast, CastLike), bit reinterpretation (BitCast), Identity and
//! inference-mode Dropout.

use super::broadcast::par_map;
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{bf16, f16, DType, Element, Tensor, TensorData, Value};

type Res = Result<Vec<Value>, String>;
type In<'a, 'b> = &'a [Option<&'b Value>];

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Cast" => |c, i| {
            let to = dtype_attr(c)?;
            Ok(single(cast(tensor_arg(i, 0)?, to)?))
        },
        "CastLike" => |_, i| {
            let to = tensor_arg(i, 1)?.dtype();
            Ok(single(cast(tensor_arg(i, 0)?, to)?))
        },
        "BitCast" => bitcast,
        "Identity" => |_, i| match i.first().copied().flatten() {
            Some(v) => Ok(vec![v.clone()]),
            None => Err("required input 0 is missing".into()),
        },
        "Dropout" => dropout,
        _ => return None,
    })
}

/// Converts `t` to `to` with numpy `astype` semantics: integers wrap, floats truncate toward
/// zero into integers (out-of-range values as C on x86-64, see [`float_to_i32_c`]), anything
/// nonzero (NaN included) is `true`, and floats round to nearest even into narrower floats.
pub(super) fn cast(t: &Tensor, to: DType) -> Result<Tensor, String> {
    if t.dtype() == to {
        return Ok(t.clone());
    }
    fn go<S: Scalar>(v: &[S], to: DType) -> TensorData {
        fn conv<S: Scalar, D: Scalar>(v: &[S]) -> Vec<D> {
            par_map(v, |x| D::from_num(x.num()))
        }
        match to {
            DType::F32 => TensorData::F32(conv(v)),
            DType::F16 => TensorData::F16(conv(v)),
            DType::BF16 => TensorData::BF16(conv(v)),
            DType::F64 => TensorData::F64(conv(v)),
            DType::I8 => TensorData::I8(conv(v)),
            DType::U8 => TensorData::U8(conv(v)),
            DType::I16 => TensorData::I16(conv(v)),
            DType::U16 => TensorData::U16(conv(v)),
            DType::I32 => TensorData::I32(conv(v)),
            DType::U32 => TensorData::U32(conv(v)),
            DType::I64 => TensorData::I64(conv(v)),
            DType::U64 => TensorData::U64(conv(v)),
            DType::Bool => TensorData::Bool(conv(v)),
        }
    }
    let data = kiln_ir::dispatch!(t.data(), v => go(v, to));
    Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())
}

/// The `to` attribute as a kiln dtype.
fn dtype_attr(ctx: &KernelCtx) -> Result<DType, String> {
    let code = ctx.attrs.req_int("to")?;
    let code = i32::try_from(code).map_err(|_| format!("'to' = {code} is not a data type"))?;
    DType::from_onnx_code(code).map_err(|name| format!("conversion to {name} is not supported"))
}

/// Reinterprets the little-endian bytes of each element as the `to` dtype (same width).
fn bitcast(ctx: &KernelCtx, inputs: In) -> Res {
    let t = tensor_arg(inputs, 0)?;
    let to = dtype_attr(ctx)?;
    if to.size() != t.dtype().size() {
        return Err(format!(
            "BitCast needs types of the same width, got {} ({} bits) and {to} ({} bits)",
            t.dtype(),
            t.dtype().size() * 8,
            to.size() * 8
        ));
    }
    let data = TensorData::from_le_bytes(to, &t.data().to_le_bytes()).map_err(|e| e.to_string())?;
    Ok(single(Tensor::new(t.shape().to_vec(), data).map_err(|e| e.to_string())?))
}

/// Dropout at inference: the output is the input and the mask is all true. Training mode with
/// a nonzero ratio drops at random, which kiln does not do (results would not be
/// reproducible); training mode with ratio 0 is the identity and is fine.
fn dropout(ctx: &KernelCtx, inputs: In) -> Res {
    let x = tensor_arg(inputs, 0)?;
    let ratio = opt_tensor_arg(inputs, 1)?;
    let training = opt_tensor_arg(inputs, 2)?;
    let scalar = |t: &Tensor, what: &str| -> Result<f64, String> {
        match t.to_f64_vec().as_slice() {
            [v] => Ok(*v),
            _ => Err(format!("Dropout's {what} must be a scalar, got shape {:?}", t.shape())),
        }
    };
    let ratio = ratio.map(|r| scalar(r, "ratio")).transpose()?.unwrap_or(0.5);
    if !(0.0..1.0).contains(&ratio) {
        return Err(format!("Dropout's ratio must be in [0, 1), got {ratio}"));
    }
    if let Some(t) = training {
        if scalar(t, "training_mode")? != 0.0 && ratio != 0.0 {
            return Err("training-mode Dropout is not supported".into());
        }
    }
    let mut out = vec![Value::Tensor(x.clone())];
    if ctx.num_outputs > 1 {
        out.push(Value::Tensor(
            Tensor::new(x.shape().to_vec(), TensorData::Bool(vec![true; x.len()])).map_err(|e| e.to_string())?,
        ));
    }
    Ok(out)
}

/// A source value in its widest exact form.
#[derive(Clone, Copy)]
pub(super) enum Num {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
}

/// Conversion through [`Num`]; after inlining, the source variant is a constant per
/// instantiation, so each (source, destination) pair compiles to a straight conversion.
pub(super) trait Scalar: Element {
    fn num(self) -> Num;
    fn from_num(n: Num) -> Self;
}

/// Float → integer conversion as compiled C (and so numpy's `astype` and the ONNX reference)
/// behaves on x86-64: truncate toward zero; NaN and values out of the converting instruction's
/// range give its "integer indefinite" value (the minimum of i32 or i64). 8- and 16-bit targets
/// go through i32, 32-bit unsigned through i64, then wrap to the target width.
#[inline(always)]
fn float_to_i32_c(v: f64) -> i32 {
    if v > -2_147_483_649.0 && v < 2_147_483_648.0 {
        v as i32
    } else {
        i32::MIN
    }
}

#[inline(always)]
fn float_to_i64_c(v: f64) -> i64 {
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v) {
        v as i64
    } else {
        i64::MIN
    }
}

#[inline(always)]
fn float_to_u64_c(v: f64) -> u64 {
    if (9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0).contains(&v) {
        v as u64
    } else {
        float_to_i64_c(v) as u64
    }
}

/// Integer scalars: widened to `Num::$variant` (i64 for signed, u64 for unsigned); floats come
/// back through the C-style conversion `$f` chosen per width.
macro_rules! scalar_int {
    ($variant:ident as $wide:ty: $($t:ty => $f:ident),*) => {$(
        impl Scalar for $t {
            #[inline(always)]
            fn num(self) -> Num {
                Num::$variant(self as $wide)
            }
            #[inline(always)]
            fn from_num(n: Num) -> Self {
                match n {
                    Num::I(v) => v as $t,
                    Num::U(v) => v as $t,
                    Num::F(v) => $f(v) as $t,
                    Num::B(b) => b as $t,
                }
            }
        }
    )*};
}
scalar_int!(I as i64: i8 => float_to_i32_c, i16 => float_to_i32_c, i32 => float_to_i32_c, i64 => float_to_i64_c);
scalar_int!(U as u64: u8 => float_to_i32_c, u16 => float_to_i32_c, u32 => float_to_i64_c, u64 => float_to_u64_c);

macro_rules! scalar_float {
    ($t:ty, $from_f64:expr) => {
        impl Scalar for $t {
            #[inline(always)]
            fn num(self) -> Num {
                Num::F(self.to_f64())
            }
            #[inline(always)]
            fn from_num(n: Num) -> Self {
                let from_f64: fn(f64) -> $t = $from_f64;
                match n {
                    Num::I(v) => from_f64(v as f64),
                    Num::U(v) => from_f64(v as f64),
                    Num::F(v) => from_f64(v),
                    Num::B(b) => from_f64(b as u8 as f64),
                }
            }
        }
    };
}
scalar_float!(f64, |v| v);
scalar_float!(f16, f16::from_f64);
scalar_float!(bf16, bf16::from_f64);

// f32 converts from integers directly (one rounding), not through f64.
impl Scalar for f32 {
    #[inline(always)]
    fn num(self) -> Num {
        Num::F(self as f64)
    }
    #[inline(always)]
    fn from_num(n: Num) -> Self {
        match n {
            Num::I(v) => v as f32,
            Num::U(v) => v as f32,
            Num::F(v) => v as f32,
            Num::B(b) => b as u8 as f32,
        }
    }
}

impl Scalar for bool {
    #[inline(always)]
    fn num(self) -> Num {
        Num::B(self)
    }
    #[inline(always)]
    fn from_num(n: Num) -> Self {
        match n {
            Num::I(v) => v != 0,
            Num::U(v) => v != 0,
            // NaN != 0, so NaN is true (numpy).
            Num::F(v) => v != 0.0,
            Num::B(b) => b,
        }
    }
}
