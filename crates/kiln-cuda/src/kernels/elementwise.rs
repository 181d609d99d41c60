//! CUDA C generated from a fused element-wise layer: its `KilnElementwise` program (or a single
//! ONNX element-wise op, as a one-instruction program) becomes straight-line code in one
//! kernel, so a chain of N ops reads its inputs once and writes its output once.

use kiln_ir::elementwise_program::{BinaryOp, Instr, Program, UnaryOp};
use std::fmt::Write;

/// Kernel name (without the storage suffix) of layer `layer_index`'s generated kernel.
pub(crate) fn kernel_name(layer_index: usize) -> String {
    format!("ew{layer_index}")
}

/// The program of a single ONNX element-wise layer, where kiln's GPU path has it.
pub(crate) fn single_op_program(op: &str, attrs: &kiln_ir::Attributes, inputs: usize) -> Option<Program> {
    let f = |name: &str, default: f32| attrs.float(name, default).ok().map(|v| v as f64);
    // Variadic Sum/Mean/Max/Min: a chain of binary ops (Mean scaled by 1/n).
    if matches!(op, "Sum" | "Mean" | "Max" | "Min") && inputs >= 1 && !(matches!(op, "Max" | "Min") && inputs == 2) {
        let bin = match op {
            "Max" => BinaryOp::Max,
            "Min" => BinaryOp::Min,
            _ => BinaryOp::Add,
        };
        let mut instrs = vec![Instr::Input(0)];
        for k in 1..inputs {
            instrs.push(Instr::Input(k));
            instrs.push(Instr::Binary(bin));
        }
        if op == "Mean" {
            instrs.push(Instr::Const(inputs as f64));
            instrs.push(Instr::Binary(BinaryOp::Div));
        }
        return Program::new(instrs).ok();
    }
    let instr = match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" if inputs == 2 => Instr::Binary(BinaryOp::parse(op)?),
        _ if inputs != 1 => return None,
        "Gelu" => match attrs.string("approximate", "none".into()).ok()?.as_str() {
            "none" => Instr::Unary(UnaryOp::Gelu),
            "tanh" => Instr::Unary(UnaryOp::GeluTanh),
            _ => return None,
        },
        "LeakyRelu" => Instr::Unary(UnaryOp::LeakyRelu { alpha: f("alpha", 0.01)? }),
        "HardSigmoid" => Instr::Unary(UnaryOp::HardSigmoid { alpha: f("alpha", 0.2)?, beta: f("beta", 0.5)? }),
        "Elu" => Instr::Unary(UnaryOp::Elu { alpha: f("alpha", 1.0)? }),
        "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Erf" | "Neg" | "Abs" | "Reciprocal" | "Softplus"
        | "Softsign" | "Floor" | "Ceil" | "Sin" | "Cos" | "HardSwish" => Instr::Unary(UnaryOp::parse(op, &[]).ok()?),
        _ => return None,
    };
    let mut instrs: Vec<Instr> = (0..inputs).map(Instr::Input).collect();
    instrs.push(instr);
    Program::new(instrs).ok()
}

fn float_literal(v: f64) -> String {
    let v = v as f32;
    if v.is_nan() {
        "__int_as_float(0x7fc00000)".into()
    } else if v == f32::INFINITY {
        "__int_as_float(0x7f800000)".into()
    } else if v == f32::NEG_INFINITY {
        "__int_as_float(0xff800000)".into()
    } else {
        // Exact: the bit pattern, so the constant is the one the CPU uses.
        format!("__int_as_float({:#010x})", v.to_bits())
    }
}

fn unary(op: UnaryOp, x: &str) -> String {
    let l = float_literal;
    match op {
        UnaryOp::Relu => format!("({x} < 0.0f ? 0.0f : {x})"),
        UnaryOp::Sigmoid => format!("(1.0f / (1.0f + expf(-{x})))"),
        UnaryOp::Tanh => format!("tanhf({x})"),
        UnaryOp::Exp => format!("expf({x})"),
        UnaryOp::Log => format!("logf({x})"),
        UnaryOp::Sqrt => format!("sqrtf({x})"),
        UnaryOp::Erf => format!("erff({x})"),
        UnaryOp::Neg => format!("(-{x})"),
        UnaryOp::Abs => format!("fabsf({x})"),
        UnaryOp::Reciprocal => format!("(1.0f / {x})"),
        UnaryOp::Softplus => format!("({x} > 20.0f ? {x} : log1pf(expf({x})))"),
        UnaryOp::Softsign => format!("({x} / (1.0f + fabsf({x})))"),
        UnaryOp::Floor => format!("floorf({x})"),
        UnaryOp::Ceil => format!("ceilf({x})"),
        UnaryOp::Sin => format!("sinf({x})"),
        UnaryOp::Cos => format!("cosf({x})"),
        UnaryOp::HardSwish => format!("({x} * fminf(fmaxf({x} / 6.0f + 0.5f, 0.0f), 1.0f))"),
        UnaryOp::Gelu => format!("(0.5f * {x} * (1.0f + erff({x} * 0.70710678118654752f)))"),
        UnaryOp::GeluTanh => {
            format!("(0.5f * {x} * (1.0f + tanhf(0.7978845608028654f * ({x} + 0.044715f * {x} * {x} * {x}))))")
        }
        UnaryOp::Clip { min, max } => format!("fminf(fmaxf({x}, {}), {})", l(min), l(max)),
        UnaryOp::LeakyRelu { alpha } => format!("({x} >= 0.0f ? {x} : {} * {x})", l(alpha)),
        UnaryOp::HardSigmoid { alpha, beta } => {
            format!("fminf(fmaxf({} * {x} + {}, 0.0f), 1.0f)", l(alpha), l(beta))
        }
        UnaryOp::Elu { alpha } => format!("({x} >= 0.0f ? {x} : {} * expm1f({x}))", l(alpha)),
    }
}

fn binary(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("({a} + {b})"),
        BinaryOp::Sub => format!("({a} - {b})"),
        BinaryOp::Mul => format!("({a} * {b})"),
        BinaryOp::Div => format!("({a} / {b})"),
        BinaryOp::Pow => format!("((float)pow((double){a}, (double){b}))"),
        BinaryOp::Max => format!("nan_max({a}, {b})"),
        BinaryOp::Min => format!("nan_min({a}, {b})"),
    }
}

/// CUDA C for layer `layer_index`'s kernel: `ew<index>_<storage>(y, n, rank, shape, full, a0,
/// t0, a1, t1, ...)`. Bit k of `full` says input k has the output's shape (read at i).
pub(crate) fn generate(layer_index: usize, program: &Program) -> String {
    let name = kernel_name(layer_index);
    let n_in = program.num_inputs;
    let mut params = String::from("void* y, i64 n, int rank, Str8 shape, unsigned full");
    let mut args = String::from("y, n, rank, shape, full");
    for k in 0..n_in {
        let _ = write!(params, ", const void* a{k}, Str8 t{k}");
        let _ = write!(args, ", a{k}, t{k}");
    }
    let mut body = String::new();
    for k in 0..n_in {
        let _ = writeln!(
            body,
            "    float x{k} = S::ld(a{k}, (full >> {k}) & 1u ? i : bcast_offset(i, rank, shape, t{k}));"
        );
    }
    let mut stack: Vec<String> = Vec::new();
    for (step, instr) in program.instrs.iter().enumerate() {
        let expr = match *instr {
            Instr::Input(k) => format!("x{k}"),
            Instr::Const(v) => float_literal(v),
            Instr::Unary(op) => {
                let x = stack.pop().unwrap_or_default();
                unary(op, &x)
            }
            Instr::Binary(op) => {
                let b = stack.pop().unwrap_or_default();
                let a = stack.pop().unwrap_or_default();
                binary(op, &a, &b)
            }
        };
        // Each step gets a name, so an operand used in several places is computed once.
        let _ = writeln!(body, "    float v{step} = {expr};");
        stack.push(format!("v{step}"));
    }
    let result = stack.pop().unwrap_or_else(|| "0.0f".into());
    format!(
        "template <class S>\n__device__ void {name}({params}) {{\n  GRID_STRIDE(i, n) {{\n{body}    S::st(y, i, {result});\n  }}\n}}\nKILN_INSTANTIATE({name}, ({params}), ({args}))\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_straight_line_code_for_a_chain() {
        let p = Program::parse(&[
            "in 0".into(),
            "in 0".into(),
            "in 1".into(),
            "Add".into(),
            "Sigmoid".into(),
            "Mul".into(),
        ])
        .unwrap();
        let src = generate(3, &p);
        assert!(src.contains("__device__ void ew3("));
        assert!(src.contains("KILN_INSTANTIATE(ew3"));
        assert!(src.contains("float v3 = (v1 + v2);"));
        assert!(src.contains("S::st(y, i, v5);"));
    }

    #[test]
    fn constants_keep_their_bits() {
        assert_eq!(float_literal(1.0), "__int_as_float(0x3f800000)");
        assert!(float_literal(f64::NAN).contains("0x7fc00000"));
    }

    #[test]
    fn single_ops_become_programs() {
        let a = kiln_ir::Attributes::new();
        assert_eq!(single_op_program("Add", &a, 2).unwrap().num_inputs, 2);
        assert!(single_op_program("Add", &a, 1).is_none());
        assert!(single_op_program("Where", &a, 3).is_none());
        assert_eq!(single_op_program("Relu", &a, 1).unwrap().instrs.len(), 2);
    }
}
