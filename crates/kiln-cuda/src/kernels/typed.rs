//! CUDA C generated for element-wise ONNX ops whose types are not the engine's float storage:
//! comparisons and Where, boolean logic, integer and f64 arithmetic, Clip with bound inputs.
//! Each layer gets one kernel computing its C expression with the operand types spelled out,
//! so integers stay exact and booleans are bytes.

use kiln_ir::DType;
use std::fmt::Write;

/// The ops this generator covers, with their input count (min, max).
pub(crate) fn arity(op: &str) -> Option<(usize, usize)> {
    Some(match op {
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Add" | "Sub"
        | "Mul" | "Max" | "Min" => (2, 2),
        "Where" => (3, 3),
        "Not" | "Neg" | "Abs" | "BitwiseNot" => (1, 1),
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitShiftLeft" | "BitShiftRight" | "ModInt" => (2, 2),
        "Clip" => (1, 3),
        _ => return None,
    })
}

/// The output dtype of `op` over inputs of `dtypes` (`None` where the generator does not
/// cover the combination, e.g. integer division or half-precision graphs).
pub(crate) fn output_dtype(op: &str, dtypes: &[Option<DType>]) -> Option<DType> {
    let supported =
        |d: DType| matches!(d, DType::F32 | DType::F64 | DType::I64 | DType::I32 | DType::I8 | DType::U8 | DType::Bool);
    if dtypes.iter().flatten().any(|&d| !supported(d)) {
        return None;
    }
    let first = dtypes.first().copied().flatten()?;
    match op {
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => Some(DType::Bool),
        "And" | "Or" | "Xor" | "Not" => (first == DType::Bool).then_some(DType::Bool),
        "Where" => dtypes.get(1).copied().flatten(),
        // fp32 arithmetic goes through the float programs (elementwise.rs).
        "Add" | "Sub" | "Mul" | "Neg" | "Abs" | "Max" | "Min" => {
            (first != DType::Bool && first != DType::F32).then_some(first)
        }
        "Clip" => (first != DType::Bool).then_some(first),
        // Bit operations and the integer remainder: integers only.
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitwiseNot" | "ModInt" => {
            (!first.is_float() && first != DType::Bool).then_some(first)
        }
        // ONNX defines shifts on unsigned integers; kiln's CPU kernel also shifts signed ones
        // (sign-filling, negative amounts), which stay there.
        "BitShiftLeft" | "BitShiftRight" => {
            matches!(first, DType::U8 | DType::U16 | DType::U32 | DType::U64).then_some(first)
        }
        _ => None,
    }
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I64 => "i64",
        DType::I32 => "int",
        DType::I8 => "signed char",
        DType::U8 | DType::Bool => "unsigned char",
        DType::I16 => "short",
        DType::U16 => "unsigned short",
        DType::U32 => "unsigned",
        DType::U64 => "unsigned long long",
        _ => "float",
    }
}

/// Kernel name of layer `li`'s typed kernel.
pub(crate) fn kernel_name(li: usize) -> String {
    format!("tew{li}")
}

/// `storage`: the struct of library.cu that loads/stores fp32 graph tensors ("F32", "F16",
/// "BF16"). `inputs`: per ONNX input, its dtype (None: omitted, e.g. Clip without a bound).
pub(crate) fn generate(li: usize, op: &str, inputs: &[Option<DType>], out: DType, storage: &str) -> String {
    let name = kernel_name(li);
    let mut params = String::from("void* y, i64 n, int rank, Str8 shape, unsigned full");
    let mut body = String::new();
    let mut vars = Vec::new();
    let mut k = 0usize; // index among the present inputs (kernel parameters)
    for (j, d) in inputs.iter().enumerate() {
        let Some(d) = *d else {
            vars.push(None);
            continue;
        };
        let _ = write!(params, ", const void* a{k}, Str8 t{k}");
        let off = format!("((full >> {k}) & 1u ? i : bcast_offset(i, rank, shape, t{k}))");
        let load = match d {
            DType::F32 => format!("{storage}::ld(a{k}, {off})"),
            DType::Bool => format!("(((const unsigned char*)a{k})[{off}] != 0)"),
            other => format!("((const {}*)a{k})[{off}]", c_type(other)),
        };
        let ty = if d == DType::Bool { "bool" } else { c_type(d) };
        let _ = writeln!(body, "    {ty} x{j} = {load};");
        vars.push(Some(format!("x{j}")));
        k += 1;
    }
    let v = |j: usize| vars.get(j).cloned().flatten();
    let x = |j: usize| v(j).unwrap_or_default();
    let expr = match op {
        "Equal" => format!("({} == {})", x(0), x(1)),
        "Less" => format!("({} < {})", x(0), x(1)),
        "LessOrEqual" => format!("({} <= {})", x(0), x(1)),
        "Greater" => format!("({} > {})", x(0), x(1)),
        "GreaterOrEqual" => format!("({} >= {})", x(0), x(1)),
        "And" => format!("({} && {})", x(0), x(1)),
        "Or" => format!("({} || {})", x(0), x(1)),
        "Xor" => format!("({} != {})", x(0), x(1)),
        "Not" => format!("(!{})", x(0)),
        "Where" => format!("({} ? {} : {})", x(0), x(1), x(2)),
        "Add" => format!("({} + {})", x(0), x(1)),
        "Sub" => format!("({} - {})", x(0), x(1)),
        "Mul" => format!("({} * {})", x(0), x(1)),
        "Max" => format!("({a} != {a} || {b} != {b} ? ({a} + {b}) : ({a} > {b} ? {a} : {b}))", a = x(0), b = x(1)),
        "Min" => format!("({a} != {a} || {b} != {b} ? ({a} + {b}) : ({a} < {b} ? {a} : {b}))", a = x(0), b = x(1)),
        "Neg" => format!("(-{})", x(0)),
        "Abs" => format!("({a} < 0 ? -{a} : {a})", a = x(0)),
        "BitwiseAnd" => format!("({} & {})", x(0), x(1)),
        "BitwiseOr" => format!("({} | {})", x(0), x(1)),
        "BitwiseXor" => format!("({} ^ {})", x(0), x(1)),
        "BitwiseNot" => format!("(~{})", x(0)),
        // Shifts by the width or more give 0 (C leaves them undefined).
        "BitShiftLeft" => format!("({b} >= 8 * sizeof({a}) ? 0 : ({a} << {b}))", a = x(0), b = x(1)),
        "BitShiftRight" => format!("({b} >= 8 * sizeof({a}) ? 0 : ({a} >> {b}))", a = x(0), b = x(1)),
        // Python's remainder (the divisor's sign); 0 for a zero divisor, as the CPU kernel.
        "ModInt" => format!(
            "({b} == 0 ? 0 : ((({a} % {b}) != 0 && ((({a} % {b}) < 0) != ({b} < 0))) ? ({a} % {b}) + {b} : ({a} % {b})))",
            a = x(0),
            b = x(1)
        ),
        "Clip" => {
            let mut e = x(0);
            if let Some(lo) = v(1) {
                e = format!("({e} < {lo} ? {lo} : {e})");
            }
            if let Some(hi) = v(2) {
                e = format!("({e} > {hi} ? {hi} : {e})");
            }
            e
        }
        _ => "0".into(),
    };
    let store = match out {
        DType::F32 => format!("{storage}::st(y, i, (float)({expr}));"),
        DType::Bool => format!("((unsigned char*)y)[i] = ({expr}) ? 1 : 0;"),
        other => format!("(({}*)y)[i] = ({})({expr});", c_type(other), c_type(other)),
    };
    format!("extern \"C\" __global__ void {name}({params}) {{\n  GRID_STRIDE(i, n) {{\n{body}    {store}\n  }}\n}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_reads_a_byte_condition_and_typed_branches() {
        let src = generate(4, "Where", &[Some(DType::Bool), Some(DType::I64), Some(DType::I64)], DType::I64, "F32");
        assert!(src.contains("bool x0 = (((const unsigned char*)a0)"));
        assert!(src.contains("((i64*)y)[i] = (i64)((x0 ? x1 : x2));"));
    }

    #[test]
    fn clip_skips_missing_bounds() {
        let src = generate(1, "Clip", &[Some(DType::F32), None, Some(DType::F32)], DType::F32, "F16");
        assert!(src.contains("F16::ld(a1"));
        assert!(src.contains("(x0 > x2 ? x2 : x0)"));
    }

    #[test]
    fn coverage_is_by_type() {
        assert_eq!(output_dtype("Equal", &[Some(DType::F32), Some(DType::F32)]), Some(DType::Bool));
        assert_eq!(output_dtype("Add", &[Some(DType::F32), Some(DType::F32)]), None);
        assert_eq!(output_dtype("Add", &[Some(DType::I64), Some(DType::I64)]), Some(DType::I64));
        assert_eq!(output_dtype("And", &[Some(DType::I64), Some(DType::I64)]), None);
        assert_eq!(output_dtype("Equal", &[Some(DType::F16), Some(DType::F16)]), None);
    }
}
