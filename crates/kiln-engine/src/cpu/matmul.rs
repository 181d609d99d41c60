//! The `gemm` tactic for MatMul and Gemm layers with a constant right-hand side (a Linear
//! layer's weight): one packed matrix multiply over all leading dimensions, then the fused
//! epilogue (bias, residual, activation) while the output is in cache. The weight is read in
//! place from the engine's weight memory.

use super::epilogue::{apply, Bias};
use super::io::OutPtr;
use super::io::{f32_input, opt_f32_input, weight_panels, write_f32_output};
use super::packed_gemm::{self, pack_columns, packed_columns_len, Epilogue, Operand};
use super::sgemm::{sgemm, Mat};
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Activation, DType, ValueType};

pub const TACTIC: &str = "gemm";
/// The same product through kiln's own packed multiply, the weight packed into column panels
/// once (at build time where the plan stores it so).
pub const PACKED: &str = "gemm-packed";

/// Whether the packed tactic applies: [`applies`], AVX-512, and a plain product (alpha 1) whose
/// bias, if any, is one value per output column.
pub(crate) fn packed_applies(desc: &LayerDesc) -> bool {
    if !applies(desc) {
        return false;
    }
    let a = &desc.layer.attrs;
    let bias_per_column = match (desc.input_types.get(2), desc.weights.get(1).copied().flatten()) {
        (None | Some(None), _) => true,
        (Some(Some(ValueType::Tensor(t))), Some(w)) => {
            let n = if trans_b(desc).unwrap_or(false) { w.shape[0] } else { w.shape[1] };
            let dims = t.shape.as_deref().and_then(kiln_ir::concrete);
            dims.is_some_and(|d| d.iter().product::<usize>() == n && d.last() == Some(&n))
        }
        _ => false,
    };
    super::microkernel::available() && a.float("alpha", 1.0).is_ok_and(|v| v == 1.0) && bias_per_column
}

/// The weight as column panels: `[k, n]`, or `[n, k]` with transB.
pub(super) fn pack_weight(w: &[f32], shape: &[usize], trans_b: bool) -> Result<Vec<f32>, String> {
    let [r, c] = shape else { return Err(format!("weight of shape {shape:?} is not 2-D")) };
    if w.len() != r * c {
        return Err(format!("weight of {} values for shape {shape:?}", w.len()));
    }
    Ok(if trans_b { pack_columns(Mat::col_major(w, *c), *c, *r) } else { pack_columns(Mat::row_major(w, *c), *r, *c) })
}

/// Whether a Gemm layer multiplies by its weight transposed.
pub(super) fn trans_b(desc: &LayerDesc) -> Result<bool, String> {
    Ok(desc.layer.op == "Gemm" && desc.layer.attrs.int("transB", 0)? != 0)
}

/// Whether the tactic applies: f32, a 2-D constant right-hand side, and (Gemm) a bias the
/// epilogue can broadcast.
pub(crate) fn applies(desc: &LayerDesc) -> bool {
    let l = desc.layer;
    let f32_in = |i: usize| match desc.input_types.get(i) {
        Some(Some(ValueType::Tensor(t))) => t.dtype == DType::F32,
        _ => false,
    };
    let weight_2d = matches!(desc.weights.get(1), Some(Some(w)) if w.dtype == DType::F32 && w.shape.len() == 2);
    match l.op.as_str() {
        "MatMul" => {
            f32_in(0)
                && weight_2d
                && desc.input_types[0].as_ref().and_then(|t| t.as_tensor()?.rank()).is_some_and(|r| r >= 2)
        }
        "Gemm" => f32_in(0) && weight_2d,
        _ => false,
    }
}

pub(crate) struct MatMulKernel {
    gemm: bool,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    activation: Option<Activation>,
    /// [`PACKED`]: the weight packed, unless the plan stores it packed.
    packed: Option<Option<Vec<f32>>>,
}

impl MatMulKernel {
    pub fn new(desc: &LayerDesc, tactic: &str) -> Result<Self, String> {
        let a = &desc.layer.attrs;
        let gemm = desc.layer.op == "Gemm";
        let trans_b = trans_b(desc)?;
        let packed = if tactic == PACKED {
            let w = desc.weights.get(1).copied().flatten().ok_or("gemm-packed needs a constant weight")?;
            let &[r, c] = w.shape else { return Err(format!("weight of shape {:?} is not 2-D", w.shape)) };
            let (k, n) = if trans_b { (c, r) } else { (r, c) };
            if w.packed {
                // A plan is untrusted: its packed bytes must be exactly what packing makes.
                if w.bytes.len() != packed_columns_len(k, n) * 4 {
                    return Err(format!("packed weight of {} bytes for shape {:?}", w.bytes.len(), w.shape));
                }
                Some(None)
            } else {
                let values: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
                Some(Some(pack_weight(values, w.shape, trans_b)?))
            }
        } else {
            None
        };
        Ok(MatMulKernel {
            packed,
            gemm,
            alpha: if gemm { a.float("alpha", 1.0)? } else { 1.0 },
            beta: if gemm { a.float("beta", 1.0)? } else { 1.0 },
            trans_a: gemm && a.int("transA", 0)? != 0,
            trans_b,
            activation: Activation::from_attrs(a)?,
        })
    }
}

impl LayerKernel for MatMulKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (a, a_shape) = f32_input(io, 0)?;
        // gemm-packed: `b` is the weight's column panels (the plan's, or packed when made).
        let (b, b_shape) = match &self.packed {
            Some(owned) => weight_panels(io, 1, owned.as_deref())?,
            None => f32_input(io, 1)?,
        };
        let (bias, residual) = (opt_f32_input(io, 2)?, opt_f32_input(io, 3)?);
        if b_shape.len() != 2 || a_shape.len() < 2 {
            return Err(format!("gemm tactic: operands of rank {} and {}", a_shape.len(), b_shape.len()));
        }
        let (rows, k) = if self.gemm {
            if a_shape.len() != 2 {
                return Err("Gemm needs a 2-D A".into());
            }
            if self.trans_a {
                (a_shape[1], a_shape[0])
            } else {
                (a_shape[0], a_shape[1])
            }
        } else {
            (a_shape[..a_shape.len() - 1].iter().product(), a_shape[a_shape.len() - 1])
        };
        let (kb, n) = if self.trans_b { (b_shape[1], b_shape[0]) } else { (b_shape[0], b_shape[1]) };
        if k != kb {
            return Err(format!("inner dimensions differ: A {a_shape:?}, B {b_shape:?}"));
        }
        let mut out_shape = if self.gemm { vec![rows, n] } else { a_shape.to_vec() };
        if !self.gemm {
            *out_shape.last_mut().expect("rank ≥ 2") = n;
        }
        let bias = match bias {
            None => Bias::None,
            Some((c, s)) => {
                let len = c.len();
                if len == 1 {
                    Bias::Scalar(c[0])
                } else if len == n && s.last() == Some(&n) && s.iter().rev().skip(1).all(|&d| d == 1) {
                    Bias::PerColumn(c)
                } else if self.gemm && len == rows * n && s == [rows, n] {
                    Bias::Full(c)
                } else {
                    return Err(format!("bias of shape {s:?} does not broadcast to [{rows}, {n}] here"));
                }
            }
        };
        if let Some((_, s)) = residual {
            if s != out_shape.as_slice() {
                return Err(format!("residual of shape {s:?}, output {out_shape:?}"));
            }
        }
        // Gemm's beta scales C; alpha scales the product. Fold both into the epilogue inputs.
        let scaled_bias: Option<Vec<f32>> = match (&bias, self.beta) {
            (_, 1.0) => None,
            (Bias::PerColumn(c) | Bias::Full(c), b) => Some(c.iter().map(|x| x * b).collect()),
            _ => None,
        };
        let bias = match (&bias, &scaled_bias) {
            (Bias::PerColumn(_), Some(v)) => Bias::PerColumn(v),
            (Bias::Full(_), Some(v)) => Bias::Full(v),
            (Bias::Scalar(s), _) => Bias::Scalar(s * self.beta),
            _ => bias,
        };
        let a_mat = if self.trans_a { Mat::col_major(a, rows) } else { Mat::row_major(a, k) };
        let b_mat = if self.trans_b { Mat::col_major(b, k) } else { Mat::row_major(b, n) };
        let (alpha, act) = (self.alpha, self.activation);
        let residual = residual.map(|(r, _)| r);
        if self.packed.is_some() {
            if alpha != 1.0 || !matches!(bias, Bias::None | Bias::PerColumn(_)) {
                return Err("gemm-packed: alpha or a bias that is not per column".into());
            }
            let epilogue = Epilogue {
                col_bias: if let Bias::PerColumn(c) = bias { Some(c) } else { None },
                residual,
                activation: act,
                ..Default::default()
            };
            return write_f32_output(io, 0, out_shape, |out| {
                if !super::microkernel::available() {
                    return Err("gemm-packed needs AVX-512".into());
                }
                // SAFETY: AVX-512 checked; `out` holds the rows × n output (its shape above).
                unsafe {
                    packed_gemm::gemm(
                        rows,
                        n,
                        k,
                        &Operand::Matrix(a_mat),
                        &Operand::Packed(b),
                        OutPtr(out.as_mut_ptr()),
                        n,
                        &epilogue,
                        true,
                    )
                }
            });
        }
        write_f32_output(io, 0, out_shape, |out| {
            sgemm(rows, n, k, a_mat, b_mat, out, false)?;
            if alpha != 1.0 {
                out.iter_mut().for_each(|x| *x *= alpha);
            }
            apply(out, n, &bias, residual, act);
            Ok(())
        })
    }
}
