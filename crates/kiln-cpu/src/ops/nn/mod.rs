//! CPU kernels for the `nn` family: matrix products (`gemm.rs`), convolutions (`conv.rs`),
//! pooling (`pool.rs`) and linear quantization (`quant.rs`). This file holds the kernel table and
//! what they share: the arithmetic types kernels compute in and the window geometry
//! (strides / dilations / pads / auto_pad) of convolutions and pools.

mod conv;
mod gemm;
mod inverted_bottleneck;
mod pool;
mod quant;
#[cfg(test)]
mod tests;

use crate::KernelFn;
use kiln_ir::{bf16, checked_numel, f16, Activation, Attributes, DType, Element, Tensor};
use std::borrow::Cow;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "MatMul" => gemm::matmul,
        "Gemm" => gemm::gemm,
        "MatMulInteger" => gemm::matmul_integer,
        "QLinearMatMul" => gemm::qlinear_matmul,
        "Conv" => conv::conv,
        kiln_ir::inverted_bottleneck::OP => inverted_bottleneck::inverted_bottleneck,
        "ConvInteger" => conv::conv_integer,
        "QLinearConv" => conv::qlinear_conv,
        "ConvTranspose" => conv::conv_transpose,
        "DeformConv" => conv::deform_conv,
        "Col2Im" => conv::col2im,
        "CausalConvWithState" => conv::causal_conv_with_state,
        "MaxPool" => pool::max_pool,
        "AveragePool" => pool::average_pool,
        "LpPool" => pool::lp_pool,
        "GlobalAveragePool" => pool::global_average_pool,
        "GlobalMaxPool" => pool::global_max_pool,
        "GlobalLpPool" => pool::global_lp_pool,
        "MaxUnpool" => pool::max_unpool,
        "QuantizeLinear" => quant::quantize_linear,
        "DequantizeLinear" => quant::dequantize_linear,
        "DynamicQuantizeLinear" => quant::dynamic_quantize_linear,
        _ => return None,
    })
}

/// The type a kernel accumulates in: f32 for f32/f16/bf16 (rounded once at the end), f64 for
/// f64, and wrapping i64 for integers (the low bits of a wrapping i64 product/sum equal those of
/// the narrower type's wrapping arithmetic, so one integer path serves every width).
pub(super) trait Acc: Copy + Default + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    const ZERO: Self;
    /// `self + a * b`.
    fn madd(self, a: Self, b: Self) -> Self;
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn of_f64(v: f64) -> Self;
    fn as_f64(self) -> f64;
    /// A tensor's elements in this type (borrowed when already of it).
    fn load(t: &Tensor) -> Cow<'_, [Self]>;
    /// Round/convert back into a tensor of `dtype`.
    fn store(dtype: DType, shape: Vec<usize>, v: Vec<Self>) -> Result<Tensor, String>;
    /// Apply a fused activation in place (float types; kernels refuse it for integers first).
    fn activate(act: Activation, v: &mut [Self]);
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn madd(self, a: Self, b: Self) -> Self {
        self + a * b
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn of_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn load(t: &Tensor) -> Cow<'_, [Self]> {
        match t.data() {
            kiln_ir::TensorData::F32(v) => Cow::Borrowed(v),
            kiln_ir::TensorData::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            kiln_ir::TensorData::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            d => Cow::Owned(kiln_ir::dispatch!(d, v => v.iter().map(|x| x.to_f64() as f32).collect())),
        }
    }
    fn store(dtype: DType, shape: Vec<usize>, v: Vec<Self>) -> Result<Tensor, String> {
        let t = match dtype {
            DType::F32 => Tensor::from_vec(shape, v),
            DType::F16 => Tensor::from_vec(shape, v.into_iter().map(f16::from_f32).collect::<Vec<_>>()),
            DType::BF16 => Tensor::from_vec(shape, v.into_iter().map(bf16::from_f32).collect::<Vec<_>>()),
            other => return Err(format!("internal: f32 result stored as {other}")),
        };
        t.map_err(|e| e.to_string())
    }
    fn activate(act: Activation, v: &mut [Self]) {
        act.apply_slice_f32(v)
    }
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn madd(self, a: Self, b: Self) -> Self {
        self + a * b
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn of_f64(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn load(t: &Tensor) -> Cow<'_, [Self]> {
        match t.data() {
            kiln_ir::TensorData::F64(v) => Cow::Borrowed(v),
            d => Cow::Owned(kiln_ir::dispatch!(d, v => v.iter().map(|x| x.to_f64()).collect())),
        }
    }
    fn store(dtype: DType, shape: Vec<usize>, v: Vec<Self>) -> Result<Tensor, String> {
        let t = match dtype {
            DType::F64 => Tensor::from_vec(shape, v),
            other => return Err(format!("internal: f64 result stored as {other}")),
        };
        t.map_err(|e| e.to_string())
    }
    fn activate(act: Activation, v: &mut [Self]) {
        act.apply_slice_f64(v)
    }
}

impl Acc for i64 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn madd(self, a: Self, b: Self) -> Self {
        self.wrapping_add(a.wrapping_mul(b))
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    fn of_f64(v: f64) -> Self {
        v as i64
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn load(t: &Tensor) -> Cow<'_, [Self]> {
        match t.data() {
            kiln_ir::TensorData::I64(v) => Cow::Borrowed(v),
            // u64 → i64 reinterprets the bits; wrapping arithmetic keeps the low 64 bits right.
            kiln_ir::TensorData::U64(v) => Cow::Owned(v.iter().map(|&x| x as i64).collect()),
            d => Cow::Owned(kiln_ir::dispatch!(d, v => v.iter().map(|x| x.to_i64()).collect())),
        }
    }
    fn store(dtype: DType, shape: Vec<usize>, v: Vec<Self>) -> Result<Tensor, String> {
        fn conv<T: Element>(shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor, kiln_ir::IrError> {
            Tensor::from_vec(shape, v.into_iter().map(T::from_i64).collect::<Vec<T>>())
        }
        let t = match dtype {
            DType::I64 => Tensor::from_vec(shape, v),
            DType::U64 => Tensor::from_vec(shape, v.into_iter().map(|x| x as u64).collect::<Vec<_>>()),
            DType::I32 => conv::<i32>(shape, v),
            DType::U32 => conv::<u32>(shape, v),
            DType::I16 => conv::<i16>(shape, v),
            DType::U16 => conv::<u16>(shape, v),
            DType::I8 => conv::<i8>(shape, v),
            DType::U8 => conv::<u8>(shape, v),
            other => return Err(format!("internal: integer result stored as {other}")),
        };
        t.map_err(|e| e.to_string())
    }
    fn activate(act: Activation, v: &mut [Self]) {
        // Not reached: the kernels refuse fused activations on integer layers.
        v.iter_mut().for_each(|x| *x = act.apply_f64(*x as f64) as i64)
    }
}

/// What a fused Conv / Gemm / MatMul does to its output rows right after computing them,
/// while they are still in cache: `act(scale · y + beta · addend + residual)`. The output is
/// seen as rows of `n` elements (Conv: one row per image and output channel; Gemm / MatMul: the
/// rows of the product); `row` below is a row's global index.
pub(super) struct Epilogue<'a, T> {
    /// Multiply first (Gemm's alpha), when not 1.
    pub scale: Option<T>,
    /// Add `beta · data[row · row_stride + col · col_stride]` (Gemm's C broadcast to the
    /// output, MatMul's bias with `row_stride` 0).
    pub addend: Option<Addend<'a, T>>,
    /// Add `residual[row · n + col]` (same shape as the output).
    pub residual: Option<&'a [T]>,
    pub act: Option<Activation>,
}

pub(super) struct Addend<'a, T> {
    pub data: &'a [T],
    pub beta: T,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<T: Acc> Epilogue<'_, T> {
    pub fn none() -> Self {
        Epilogue { scale: None, addend: None, residual: None, act: None }
    }

    pub fn is_none(&self) -> bool {
        self.scale.is_none() && self.addend.is_none() && self.residual.is_none() && self.act.is_none()
    }

    /// Apply to `rows` (whole rows of `n` elements), the first of which is row `row0`.
    pub fn apply(&self, row0: usize, rows: &mut [T], n: usize) {
        if self.is_none() || n == 0 {
            return;
        }
        for (r, row) in rows.chunks_exact_mut(n).enumerate() {
            let g = row0 + r;
            if let Some(s) = self.scale {
                row.iter_mut().for_each(|v| *v = v.mul(s));
            }
            if let Some(a) = &self.addend {
                let base = g * a.row_stride;
                if a.col_stride == 0 {
                    let c = a.data[base];
                    row.iter_mut().for_each(|v| *v = v.madd(a.beta, c));
                } else {
                    row.iter_mut().zip(&a.data[base..base + n]).for_each(|(v, &c)| *v = v.madd(a.beta, c));
                }
            }
            if let Some(res) = self.residual {
                row.iter_mut().zip(&res[g * n..(g + 1) * n]).for_each(|(v, &x)| *v = v.add(x));
            }
            if let Some(act) = self.act {
                T::activate(act, row);
            }
        }
    }
}

/// The fused-activation attributes of a layer, refused on integer dtypes.
pub(super) fn activation(attrs: &Attributes, dtype: DType) -> Result<Option<Activation>, String> {
    let act = Activation::from_attrs(attrs)?;
    if act.is_some() && !dtype.is_float() {
        return Err(format!("a fused activation needs a float dtype, got {dtype}"));
    }
    Ok(act)
}

/// A fused residual input: the output's dtype and exactly its shape.
pub(super) fn check_residual(r: Option<&Tensor>, dtype: DType, shape: &[usize]) -> Result<(), String> {
    let Some(r) = r else { return Ok(()) };
    if !dtype.is_float() || r.dtype() != dtype {
        return Err(format!("Residual must have the output's float dtype {dtype}, got {}", r.dtype()));
    }
    if r.shape() != shape {
        return Err(format!("Residual of shape {:?} differs from the output shape {shape:?}", r.shape()));
    }
    Ok(())
}

/// Calls `$f::<Acc>(args)` with the accumulation type for `$dtype`.
macro_rules! with_acc {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            kiln_ir::DType::F32 | kiln_ir::DType::F16 | kiln_ir::DType::BF16 => $f::<f32>($($arg),*),
            kiln_ir::DType::F64 => $f::<f64>($($arg),*),
            kiln_ir::DType::Bool => Err("bool tensors are not supported".to_string()),
            _ => $f::<i64>($($arg),*),
        }
    };
}
pub(super) use with_acc;

/// Allocation-checked zero buffer of `shape`'s element count.
pub(super) fn zeros<T: Acc>(shape: &[usize]) -> Result<Vec<T>, String> {
    let n = checked_numel(shape).map_err(|e| e.to_string())?;
    Ok(vec![T::ZERO; n])
}

/// `x` rounded to the precision of float `dtype` (identity for f64 and non-floats).
pub(super) fn round_to_dtype(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F32 => x as f32 as f64,
        DType::F16 => f16::from_f64(x).to_f64(),
        DType::BF16 => bf16::from_f64(x).to_f64(),
        _ => x,
    }
}

/// An ints attribute of length `n`, or `n` copies of `default` when absent.
pub(super) fn ints_or(attrs: &Attributes, name: &str, n: usize, default: i64) -> Result<Vec<i64>, String> {
    match attrs.ints_opt(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => Ok(v),
        Some(v) => Err(format!("attribute '{name}' has {} entries, expected {n}", v.len())),
    }
}

/// Largest stride, dilation, pad or kernel extent accepted; keeps all window arithmetic far
/// from overflow.
pub(super) const MAX_WINDOW: i64 = 1 << 31;

/// Strides and dilations in `1..=MAX_WINDOW`, pads in `0..=MAX_WINDOW`.
pub(super) fn check_window_attrs(strides: &[i64], dilations: &[i64], pads: &[i64]) -> Result<(), String> {
    if strides.iter().chain(dilations).any(|&v| !(1..=MAX_WINDOW).contains(&v))
        || pads.iter().any(|&p| !(0..=MAX_WINDOW).contains(&p))
    {
        return Err(format!("invalid strides {strides:?}, dilations {dilations:?} or pads {pads:?}"));
    }
    Ok(())
}

/// Geometry of a sliding-window op (Conv, the pools), resolved against concrete input and
/// kernel sizes: per spatial axis the output length and the padding actually applied. Tap `k`
/// of output `o` reads input `o * stride + k * dilation - pad_begin` (outside = padding).
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
}

impl Window {
    /// Resolve `auto_pad` / `pads` / `ceil_mode` as ONNX Conv and the pools define them.
    pub fn resolve(attrs: &Attributes, input: &[usize], kernel: &[usize], ceil: bool) -> Result<Window, String> {
        let nsp = input.len();
        if kernel.len() != nsp {
            return Err(format!("kernel has {} spatial dims but the input has {nsp}", kernel.len()));
        }
        let auto_pad = attrs.string("auto_pad", "NOTSET".into())?;
        let strides = ints_or(attrs, "strides", nsp, 1)?;
        let dilations = ints_or(attrs, "dilations", nsp, 1)?;
        let pads = ints_or(attrs, "pads", 2 * nsp, 0)?;
        check_window_attrs(&strides, &dilations, &pads)?;
        if kernel.iter().any(|&k| k == 0 || k as u64 > MAX_WINDOW as u64) {
            return Err(format!("kernel shape {kernel:?} has a zero or oversized extent"));
        }
        let mut w = Window {
            kernel: kernel.to_vec(),
            strides: strides.iter().map(|&v| v as usize).collect(),
            dilations: dilations.iter().map(|&v| v as usize).collect(),
            pad_begin: vec![0; nsp],
            pad_end: vec![0; nsp],
            input: input.to_vec(),
            output: vec![0; nsp],
        };
        for i in 0..nsp {
            let (n, s) = (input[i] as i64, strides[i]);
            let dk = (kernel[i] as i64 - 1) * dilations[i] + 1;
            let out = match auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let out = (n + s - 1) / s;
                    let total = ((out - 1) * s + dk - n).max(0);
                    let small = total / 2;
                    let (b, e) = if auto_pad == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                    w.pad_begin[i] = b as usize;
                    w.pad_end[i] = e as usize;
                    out
                }
                // ONNX's floor / ceil formulas on signed sizes: a window larger than the
                // (padded) input yields an empty output, only a negative size is an error.
                "VALID" => (n - dk).div_euclid(s) + 1,
                "NOTSET" => {
                    w.pad_begin[i] = pads[i] as usize;
                    w.pad_end[i] = pads[i + nsp] as usize;
                    let span = n + pads[i] + pads[i + nsp] - dk;
                    if ceil {
                        let mut o = -(-span).div_euclid(s) + 1;
                        // The last window must start inside the input or its begin padding.
                        if (o - 1) * s >= n + pads[i] {
                            o -= 1;
                        }
                        o
                    } else {
                        span.div_euclid(s) + 1
                    }
                }
                other => return Err(format!("unknown auto_pad '{other}'")),
            };
            if out < 0 {
                return Err(format!("window of extent {dk} does not fit input length {n} along spatial axis {i}"));
            }
            w.output[i] = out as usize;
        }
        Ok(w)
    }

    pub fn kernel_size(&self) -> usize {
        self.kernel.iter().product()
    }

    pub fn output_size(&self) -> usize {
        self.output.iter().product()
    }

    pub fn input_size(&self) -> usize {
        self.input.iter().product()
    }

    /// For axis `i`: input coordinate of kernel tap `k` at output position `o`, if inside.
    #[inline]
    pub fn coord(&self, i: usize, o: usize, k: usize) -> Option<usize> {
        let c = (o * self.strides[i] + k * self.dilations[i]) as isize - self.pad_begin[i] as isize;
        (c >= 0 && (c as usize) < self.input[i]).then_some(c as usize)
    }

    /// For axis `i`, the input coordinates of each output position's in-bounds taps.
    pub fn tap_lists(&self, i: usize) -> Vec<Vec<usize>> {
        (0..self.output[i]).map(|o| (0..self.kernel[i]).filter_map(|k| self.coord(i, o, k)).collect()).collect()
    }
}

/// The output positions `o` in `[lo, hi)` for which `o * stride + offset` lies in `[0, len)`
/// (clamped to `[0, count)`): lets inner loops run without per-element bounds tests.
#[inline]
pub(super) fn valid_range(count: usize, len: usize, stride: usize, offset: isize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { ((-offset + s - 1) / s) as usize };
    let room = len as isize - offset;
    let hi = if room <= 0 { 0 } else { ((room + s - 1) / s) as usize };
    let hi = hi.min(count);
    (lo.min(hi), hi)
}

/// Advance a row-major multi-index over `dims`; false once it wraps around.
#[inline]
pub(super) fn next_index(idx: &mut [usize], dims: &[usize]) -> bool {
    for ax in (0..dims.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < dims[ax] {
            return true;
        }
        idx[ax] = 0;
    }
    false
}
