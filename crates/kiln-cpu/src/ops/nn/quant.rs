//! Linear quantization: QuantizeLinear, DequantizeLinear (per tensor, per axis, blocked) and
//! DynamicQuantizeLinear.

use super::gemm::int_range;
use super::round_to_dtype;
use crate::util::{make, normalize_axis, opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{bf16, f16, DType, Tensor, Value};

/// QuantizeLinear: `saturate(rint(x / y_scale) + y_zero_point)`; the division is rounded to the
/// scale's precision (or the `precision` attribute's type) before rounding half to even.
pub(super) fn quantize_linear(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, scale, zp) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, opt_tensor_arg(inputs, 2)?);
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::I32) {
        return Err(format!("x dtype {} is not supported", x.dtype()));
    }
    let out = match (zp, ctx.attrs.int("output_dtype", 0)?) {
        (Some(z), 0) => z.dtype(),
        (Some(z), code) if onnx_dtype(code)? != z.dtype() => {
            return Err(format!("output_dtype {} differs from y_zero_point's dtype {}", onnx_dtype(code)?, z.dtype()))
        }
        (Some(z), _) => z.dtype(),
        (None, 0) => DType::U8,
        (None, code) => onnx_dtype(code)?,
    };
    let (lo, hi) = match out {
        DType::I8 | DType::U8 | DType::I16 | DType::U16 => int_range(out)?,
        other => return Err(format!("quantized dtype {other} is not supported")),
    };
    let precision = match ctx.attrs.int("precision", 0)? {
        0 => scale.dtype(),
        code => onnx_dtype(code)?,
    };
    let precision = if precision.is_float() { precision } else { DType::F32 };
    let params = Params::new(ctx, x.shape(), scale, zp)?;
    let (xv, sv) = (x.to_f64_vec(), scale.to_f64_vec());
    let zv = zp.map_or_else(Vec::new, |z| z.to_i64_vec());
    let q: Vec<i64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = params.index(i);
            let r = round_to_dtype(precision, v / sv[j]).round_ties_even() + zv.get(j).map_or(0.0, |&z| z as f64);
            if r.is_nan() {
                0
            } else {
                r.clamp(lo as f64, hi as f64) as i64
            }
        })
        .collect();
    let t = match out {
        DType::I8 => make(x.shape().to_vec(), q.into_iter().map(|v| v as i8).collect()),
        DType::U8 => make(x.shape().to_vec(), q.into_iter().map(|v| v as u8).collect()),
        DType::I16 => make(x.shape().to_vec(), q.into_iter().map(|v| v as i16).collect()),
        _ => make(x.shape().to_vec(), q.into_iter().map(|v| v as u16).collect()),
    }?;
    Ok(vec![Value::Tensor(t)])
}

/// DequantizeLinear: `(x - x_zero_point) * x_scale`, output in `output_dtype` or the scale's.
pub(super) fn dequantize_linear(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, scale, zp) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, opt_tensor_arg(inputs, 2)?);
    if !matches!(x.dtype(), DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32) {
        return Err(format!("x dtype {} is not supported", x.dtype()));
    }
    if let Some(z) = zp {
        if z.dtype() != x.dtype() {
            return Err(format!("x_zero_point must have x's dtype {}, got {}", x.dtype(), z.dtype()));
        }
    }
    if !matches!(scale.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("x_scale must be float, float16 or bfloat16, got {}", scale.dtype()));
    }
    let out = match ctx.attrs.int("output_dtype", 0)? {
        0 => scale.dtype(),
        code => onnx_dtype(code)?,
    };
    let params = Params::new(ctx, x.shape(), scale, zp)?;
    let (xv, sv) = (x.to_i64_vec(), scale.to_f64_vec());
    let zv = zp.map_or_else(Vec::new, |z| z.to_i64_vec());
    // Exact difference, one rounding of the product into the output type.
    let y = xv.iter().enumerate().map(|(i, &v)| {
        let j = params.index(i);
        (v - zv.get(j).copied().unwrap_or(0)) as f64 * sv[j]
    });
    let shape = x.shape().to_vec();
    let t = match out {
        DType::F32 => make(shape, y.map(|v| v as f32).collect()),
        DType::F16 => make(shape, y.map(f16::from_f64).collect()),
        DType::BF16 => make(shape, y.map(bf16::from_f64).collect()),
        other => return Err(format!("output_dtype {other} is not supported (float, float16 or bfloat16)")),
    }?;
    Ok(vec![Value::Tensor(t)])
}

/// DynamicQuantizeLinear: uint8 quantization with scale and zero point chosen from the data's
/// range (which always includes 0), all arithmetic in f32 as the spec writes it.
pub(super) fn dynamic_quantize_linear(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let xv = x.as_slice::<f32>().map_err(|e| format!("x: {e}"))?;
    let maxx = xv.iter().copied().fold(0f32, f32::max);
    let minx = xv.iter().copied().fold(0f32, f32::min);
    let scale = if maxx == minx { 1.0 } else { maxx - minx } / 255f32;
    let zp = (0f32 - minx / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<u8> = xv.iter().map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8).collect();
    Ok(vec![
        Value::Tensor(make(x.shape().to_vec(), y)?),
        Value::Tensor(Tensor::scalar(scale)),
        Value::Tensor(Tensor::scalar(zp as u8)),
    ])
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Maps an element's flat index to its scale / zero-point index.
enum Params {
    PerTensor,
    /// `(index / inner) % len`
    PerAxis {
        inner: usize,
        len: usize,
    },
    /// The axis (length `dim`) is cut into blocks of `block`; the params have `blocks` there.
    Blocked {
        inner: usize,
        dim: usize,
        block: usize,
        blocks: usize,
    },
}

impl Params {
    fn new(ctx: &KernelCtx, x: &[usize], scale: &Tensor, zp: Option<&Tensor>) -> Result<Params, String> {
        if let Some(z) = zp {
            if z.shape() != scale.shape() {
                return Err(format!("zero point shape {:?} differs from scale shape {:?}", z.shape(), scale.shape()));
            }
        }
        let block = ctx.attrs.int("block_size", 0)?;
        if block < 0 {
            return Err(format!("block_size must be >= 0, got {block}"));
        }
        if scale.len() == 1 && (block == 0 || scale.rank() <= 1) {
            return Ok(Params::PerTensor);
        }
        let axis = normalize_axis(ctx.attrs.int("axis", 1)?, x.len())?;
        let inner: usize = x[axis + 1..].iter().product();
        if block == 0 {
            if scale.rank() != 1 || scale.len() != x[axis] {
                return Err(format!(
                    "per-axis scale must be 1-D of length {} (axis {axis} of {x:?}), got {:?}",
                    x[axis],
                    scale.shape()
                ));
            }
            return Ok(Params::PerAxis { inner, len: x[axis] });
        }
        let block = block as usize;
        let blocks = x[axis].div_ceil(block);
        let mut want = x.to_vec();
        want[axis] = blocks;
        if scale.shape() != want.as_slice() {
            return Err(format!("blocked scale must have shape {want:?}, got {:?}", scale.shape()));
        }
        Ok(Params::Blocked { inner, dim: x[axis], block, blocks })
    }

    #[inline]
    fn index(&self, i: usize) -> usize {
        match *self {
            Params::PerTensor => 0,
            Params::PerAxis { inner, len } => (i / inner) % len,
            Params::Blocked { inner, dim, block, blocks } => {
                let (outer, rest) = (i / (dim * inner), i % (dim * inner));
                let (a, r) = (rest / inner, rest % inner);
                (outer * blocks + a / block) * inner + r
            }
        }
    }
}

fn onnx_dtype(code: i64) -> Result<DType, String> {
    let c = i32::try_from(code).map_err(|_| format!("invalid dtype code {code}"))?;
    DType::from_onnx_code(c).map_err(|name| format!("dtype {name} is not supported"))
}
