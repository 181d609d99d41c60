//! CUDA C generated for element-wise ONNX ops with their operand types spelled out: every
//! numeric, boolean and float dtype kiln-cpu computes (strings stay there). Each layer gets one
//! kernel computing its expression in the CPU kernel's compute type — f32 for fp32, f16 and bf16
//! tensors (rounded once when stored), f64 for f64, and the integer type itself with wrapping
//! arithmetic — so results match the reference kernels in crates/kiln-cpu/src/ops/elementwise/.
//! fp32 graph tensors are loaded and stored through the engine's storage struct (`F32`, `F16`,
//! `BF16` of library.cu); native f16/bf16 tensors through theirs.

use kiln_ir::{Attributes, DType};
use std::fmt::Write;

/// What a layer's typed kernel computes: the op (ONNX name, or a variant such as
/// `BitShiftLeft`), its numeric attributes in the order `generate` reads them, and the dtypes of
/// its inputs (`None`: an omitted optional input) and output.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TypedOp {
    pub op: String,
    pub params: Vec<f64>,
    pub inputs: Vec<Option<DType>>,
    pub out: DType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Bool,
}

fn kind(d: DType) -> Option<Kind> {
    Some(match d {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Kind::Float,
        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32 | DType::U32 | DType::I64 | DType::U64 => {
            Kind::Int
        }
        DType::Bool => Kind::Bool,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// One-input float functions (the input's float dtype in and out).
const FLOAT_UNARY: &[&str] = &[
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Ceil",
    "Floor",
    "Round",
    "Erf",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Tanh",
    "Sigmoid",
    "Softplus",
    "Softsign",
    "Mish",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "HardSigmoid",
    "ThresholdedRelu",
    "Swish",
    "Gelu",
    "Shrink",
];

/// The typed kernel for ONNX layer `op` over inputs of `inputs` dtypes, or why there is none
/// (`Err`). `Ok(None)`: not an element-wise op this generator knows.
pub(crate) fn plan(op: &str, attrs: &Attributes, inputs: &[Option<DType>]) -> Result<Option<TypedOp>, String> {
    let f = |name: &str, default: f32| attrs.float(name, default).map(|v| v as f64);
    let flag = |name: &str, default: i64| attrs.int(name, default).map(|v| (v != 0) as u8 as f64);
    // Ops whose attributes change the expression get their own names; numeric attributes ride
    // along as parameters.
    let (name, params): (&str, Vec<f64>) = match op {
        "BitShift" => match attrs.string("direction", String::new())?.as_str() {
            "LEFT" => ("BitShiftLeft", vec![]),
            "RIGHT" => ("BitShiftRight", vec![]),
            _ => return Err("BitShift without a direction".into()),
        },
        "Mod" => match attrs.int("fmod", 0)? {
            0 => ("ModFloor", vec![]),
            1 => ("ModTrunc", vec![]),
            _ => return Err("Mod with fmod other than 0 or 1".into()),
        },
        "Gelu" => match attrs.string("approximate", "none".into())?.as_str() {
            "none" => ("Gelu", vec![]),
            "tanh" => ("GeluTanh", vec![]),
            other => return Err(format!("Gelu approximate '{other}'")),
        },
        "LeakyRelu" => (op, vec![f("alpha", 0.01)?]),
        "Elu" | "Celu" | "ThresholdedRelu" | "Swish" => (op, vec![f("alpha", 1.0)?]),
        "Selu" => (op, vec![f("alpha", 1.673_263_2)?, f("gamma", 1.050_701)?]),
        "HardSigmoid" => (op, vec![f("alpha", 0.2)?, f("beta", 0.5)?]),
        "Shrink" => (op, vec![f("bias", 0.0)?, f("lambd", 0.5)?]),
        "IsInf" => (op, vec![flag("detect_negative", 1)?, flag("detect_positive", 1)?]),
        _ => (op, vec![]),
    };
    if name == "Celu" && params[0] == 0.0 {
        return Err("Celu with alpha 0".into());
    }
    let arity = match name {
        _ if FLOAT_UNARY.contains(&name) || name == "GeluTanh" => 1..=1,
        "Abs" | "Neg" | "Sign" | "Relu" | "IsNaN" | "IsInf" | "Not" | "BitwiseNot" => 1..=1,
        "Add" | "Sub" | "Mul" | "Div" | "ModFloor" | "ModTrunc" | "PRelu" | "Pow" | "Equal" | "Less"
        | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "BitwiseAnd" | "BitwiseOr"
        | "BitwiseXor" | "BitShiftLeft" | "BitShiftRight" => 2..=2,
        "Max" | "Min" | "Sum" | "Mean" => 1..=usize::MAX,
        "Where" => 3..=3,
        "Clip" => 1..=3,
        _ => return Ok(None),
    };
    let refuse = |why: &str| Err(format!("{op} {why}"));
    if !arity.contains(&inputs.len()) {
        return refuse("with an unexpected number of inputs");
    }
    if let Some(d) = inputs.iter().flatten().find(|&&d| kind(d).is_none()) {
        return Err(format!("{op} on {d} tensors"));
    }
    let Some(first) = inputs.first().copied().flatten() else { return refuse("without its first input") };
    let k0 = kind(first).ok_or_else(|| format!("{op} on {first} tensors"))?;
    // Every present input of the same dtype as the first (Where: the two branches; Pow: its
    // exponent may be any number).
    let same = |from: usize| inputs.iter().skip(from).flatten().all(|&d| d == first);
    let out = match name {
        _ if FLOAT_UNARY.contains(&name) || name == "GeluTanh" => (k0 == Kind::Float).then_some(first),
        "Abs" | "Neg" | "Sign" | "Relu" => (k0 != Kind::Bool).then_some(first),
        "IsNaN" | "IsInf" => (k0 == Kind::Float).then_some(DType::Bool),
        "Not" => (k0 == Kind::Bool).then_some(DType::Bool),
        "BitwiseNot" => (k0 == Kind::Int).then_some(first),
        "Add" | "Sub" | "Mul" | "Div" | "ModFloor" | "ModTrunc" | "PRelu" | "Max" | "Min" => {
            (k0 != Kind::Bool && same(1)).then_some(first)
        }
        // kiln-cpu sums floats only.
        "Sum" | "Mean" => (k0 == Kind::Float && same(1)).then_some(first),
        "Pow" => {
            let e = inputs[1].and_then(kind);
            (k0 != Kind::Bool && matches!(e, Some(Kind::Float | Kind::Int))).then_some(first)
        }
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => same(1).then_some(DType::Bool),
        "And" | "Or" | "Xor" => (k0 == Kind::Bool && same(1)).then_some(DType::Bool),
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitShiftLeft" | "BitShiftRight" => {
            (k0 == Kind::Int && same(1)).then_some(first)
        }
        "Where" => {
            let (x, y) = (inputs[1], inputs[2]);
            (first == DType::Bool && x.is_some() && x == y).then_some(x).flatten()
        }
        "Clip" => (k0 != Kind::Bool && same(1)).then_some(first),
        _ => None,
    };
    match out {
        Some(out) => Ok(Some(TypedOp { op: name.to_string(), params, inputs: inputs.to_vec(), out })),
        None => Err(format!(
            "{op} on {} tensors",
            inputs.iter().map(|d| d.map_or("none".to_string(), |d| d.to_string())).collect::<Vec<_>>().join("/")
        )),
    }
}

fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => "float",
        DType::F64 => "double",
        DType::I64 => "i64",
        DType::I32 => "int",
        DType::I8 => "signed char",
        DType::U8 => "unsigned char",
        DType::I16 => "short",
        DType::U16 => "unsigned short",
        DType::U32 => "unsigned",
        DType::U64 => "unsigned long long",
        _ => "bool",
    }
}

fn is_signed(d: DType) -> bool {
    matches!(d, DType::I8 | DType::I16 | DType::I32 | DType::I64)
}

/// The unsigned type integer arithmetic on `d` wraps in (C leaves signed overflow undefined).
fn wrap_type(d: DType) -> &'static str {
    if d.size() == 8 {
        "unsigned long long"
    } else {
        "unsigned"
    }
}

/// Float math in the compute type: f32 functions and literals, or f64 ones.
#[derive(Clone, Copy)]
struct Fm {
    double: bool,
}

impl Fm {
    fn ty(self) -> &'static str {
        if self.double {
            "double"
        } else {
            "float"
        }
    }

    /// The C math function `name` for this type (`expf` or `exp`).
    fn f(self, name: &str) -> String {
        if self.double {
            name.to_string()
        } else {
            format!("{name}f")
        }
    }

    /// `v` as an exact literal of this type (the bits the CPU's constant has).
    fn lit(self, v: f64) -> String {
        if self.double {
            format!("__longlong_as_double((long long){:#018x}ULL)", v.to_bits())
        } else {
            format!("__int_as_float({:#010x})", (v as f32).to_bits())
        }
    }
}

/// The kernel's body: named intermediate values, so an operand used twice is computed once and
/// expressions stay small.
struct Body {
    code: String,
    next: usize,
}

impl Body {
    fn bind(&mut self, ty: &str, expr: String) -> String {
        let name = format!("v{}", self.next);
        self.next += 1;
        let _ = writeln!(self.code, "    {ty} {name} = {expr};");
        name
    }
}

fn sigmoid(b: &mut Body, m: Fm, x: String) -> String {
    // Only a non-positive number is exponentiated, so nothing overflows (kiln-cpu's form).
    let x = b.bind(m.ty(), x);
    let (one, exp) = (m.lit(1.0), m.f("exp"));
    format!("({x} >= 0 ? {one} / ({one} + {exp}(-{x})) : {exp}({x}) / ({one} + {exp}({x})))")
}

fn softplus(b: &mut Body, m: Fm, x: &str) -> String {
    let zero = m.lit(0.0);
    let s = format!(
        "(({x} > 0 ? {x} : {zero}) + {log1p}({exp}(-{fabs}({x}))))",
        log1p = m.f("log1p"),
        exp = m.f("exp"),
        fabs = m.f("fabs")
    );
    b.bind(m.ty(), format!("({x} != {x} ? {x} : {s})"))
}

fn clamp01(b: &mut Body, m: Fm, x: String) -> String {
    // NaN passes through, as kiln-cpu's comparisons let it.
    let x = b.bind(m.ty(), x);
    format!("({x} < 0 ? {} : ({x} > 1 ? {} : {x}))", m.lit(0.0), m.lit(1.0))
}

/// `op` of one float input `x` with parameters `p`.
fn float_unary(b: &mut Body, m: Fm, op: &str, x: &str, p: &[f64]) -> String {
    let (zero, one) = (m.lit(0.0), m.lit(1.0));
    let call = |name: &str| format!("{}({x})", m.f(name));
    match op {
        "Sqrt" | "Exp" | "Log" | "Ceil" | "Floor" | "Erf" | "Sin" | "Cos" | "Tan" | "Asin" | "Acos" | "Atan"
        | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" | "Tanh" => call(&op.to_lowercase()),
        // rint rounds halves to even, as numpy's round.
        "Round" => call("rint"),
        "Reciprocal" => format!("({one} / {x})"),
        "Sigmoid" => sigmoid(b, m, x.to_string()),
        "Softplus" => softplus(b, m, x),
        "Softsign" => format!("({x} / ({one} + {}))", call("fabs")),
        "Mish" => {
            let sp = softplus(b, m, x);
            format!("({x} * {}({sp}))", m.f("tanh"))
        }
        "HardSwish" => {
            let c = clamp01(b, m, format!("{x} * {} + {}", m.lit(1.0 / 6.0), m.lit(0.5)));
            format!("({x} * {c})")
        }
        "LeakyRelu" => format!("({x} > 0 ? {x} : {x} * {})", m.lit(p[0])),
        "Elu" => format!("({x} > 0 ? {x} : {} * {})", m.lit(p[0]), call("expm1")),
        "Selu" => format!("({} * ({x} > 0 ? {x} : {} * {}))", m.lit(p[1]), m.lit(p[0]), call("expm1")),
        "Celu" => {
            let a = m.lit(p[0]);
            let neg = b.bind(m.ty(), format!("{a} * {}({x} / {a})", m.f("expm1")));
            format!("({x} != {x} ? {x} : ({x} > 0 ? {x} : {zero}) + ({neg} < 0 ? {neg} : {zero}))")
        }
        "HardSigmoid" => clamp01(b, m, format!("{} * {x} + {}", m.lit(p[0]), m.lit(p[1]))),
        "ThresholdedRelu" => format!("({x} > {} ? {x} : {zero})", m.lit(p[0])),
        "Swish" => {
            let s = sigmoid(b, m, format!("{} * {x}", m.lit(p[0])));
            format!("({x} * {s})")
        }
        // 0.5·x·erfc(−x/√2): no cancellation for large negative x.
        "Gelu" => {
            format!("({} * {x} * {}(-{x} * {}))", m.lit(0.5), m.f("erfc"), m.lit(std::f64::consts::FRAC_1_SQRT_2))
        }
        // x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³).
        "GeluTanh" => {
            let u = format!("{} * ({x} + {} * {x} * {x} * {x})", m.lit(2.0 * 0.797_884_560_802_865_4), m.lit(0.044715));
            let s = sigmoid(b, m, u);
            format!("({x} * {s})")
        }
        "Shrink" => {
            let (bias, lambd) = (m.lit(p[0]), m.lit(p[1]));
            format!("({x} < -{lambd} ? {x} + {bias} : ({x} > {lambd} ? {x} - {bias} : {zero}))")
        }
        _ => zero,
    }
}

/// The C-style conversion of double `v` to integer dtype `d` that kiln-cpu's Cast performs
/// (library.cu's prelude: kiln_f2i32 and friends).
fn double_to_int(v: &str, d: DType) -> String {
    let via = match d {
        DType::U64 => "kiln_f2u64",
        DType::I64 | DType::U32 => "kiln_f2i64",
        _ => "kiln_f2i32",
    };
    format!("({})({via}({v}))", c_type(d))
}

/// Helpers the typed kernels share; guarded, as every typed kernel of an engine carries them
/// into one source.
const HELPERS: &str = r#"#ifndef KILN_TYPED_HELPERS
#define KILN_TYPED_HELPERS
// pow for an integer base and a float exponent, truncated to an integer afterwards: CUDA's pow
// may miss an exact integer result by an ulp (36^0.5 as 5.999...), which truncation would turn
// into 5 where kiln-cpu (glibc's correctly rounded pow) gives 6; such near-integers snap to it.
__device__ double kt_pow_exact(double a, double b) {
  double r = pow(a, b), n = rint(r);
  if (n != r && fabs(r - n) <= 4.0 * fabs(n) * 2.220446049250313e-16) r = n;
  return r;
}
// base^e wrapping in the unsigned type U; a negative e gives the truncated 1 / base^|e|.
template <class T, class U, bool SIGNED>
__device__ T kt_pow_int(T base, long long e) {
  if (e < 0) {
    if (base == (T)1) return (T)1;
    if (SIGNED && base == (T)-1) return (e % 2 == 0) ? (T)1 : base;
    return (T)0;
  }
  U acc = 1, b = (U)base;
  for (unsigned long long k = (unsigned long long)e; k; k >>= 1) {
    if (k & 1) acc *= b;
    b *= b;
  }
  return (T)acc;
}
#endif
"#;

/// Kernel name of layer `li`'s typed kernel.
pub(crate) fn kernel_name(li: usize) -> String {
    format!("tew{li}")
}

/// CUDA C for layer `li`'s kernel `tew<li>(y, n, rank, shape, full, a0, t0, ...)` (one pointer
/// and stride set per present input). `storage`: the struct of library.cu that loads/stores
/// fp32 graph tensors ("F32", "F16", "BF16").
pub(crate) fn generate(li: usize, t: &TypedOp, storage: &str) -> String {
    let name = kernel_name(li);
    let mut params = String::from("void* y, i64 n, int rank, Str8 shape, unsigned full");
    let mut b = Body { code: String::new(), next: 0 };
    // The compute type: the float type of a float op (f64 stays f64), else the input's own.
    let first = t.inputs.first().copied().flatten().unwrap_or(DType::F32);
    let m = Fm { double: first == DType::F64 };
    let mut vars = Vec::new();
    let mut k = 0usize; // index among the present inputs (kernel parameters)
    for (j, d) in t.inputs.iter().enumerate() {
        let Some(d) = *d else {
            vars.push(None);
            continue;
        };
        let _ = write!(params, ", const void* a{k}, Str8 t{k}");
        let off = format!("((full >> {k}) & 1u ? i : bcast_offset(i, rank, shape, t{k}))");
        let load = match d {
            DType::F32 => format!("{storage}::ld(a{k}, {off})"),
            DType::F16 => format!("F16::ld(a{k}, {off})"),
            DType::BF16 => format!("BF16::ld(a{k}, {off})"),
            DType::Bool => format!("(((const unsigned char*)a{k})[{off}] != 0)"),
            other => format!("((const {}*)a{k})[{off}]", c_type(other)),
        };
        let _ = writeln!(b.code, "    {} x{j} = {load};", c_type(d));
        vars.push(Some(format!("x{j}")));
        k += 1;
    }
    let v = |j: usize| vars.get(j).cloned().flatten();
    let x = |j: usize| v(j).unwrap_or_default();
    let p = &t.params;
    let int = kind(first) == Some(Kind::Int);
    let (ty, wide, signed) = (c_type(first), wrap_type(first), is_signed(first));
    // Wrapping integer arithmetic: in the unsigned type, converted back.
    let wrap = |a: &str, o: &str, c: &str| format!("({ty})(({wide}){a} {o} ({wide}){c})");
    let expr = match t.op.as_str() {
        op if FLOAT_UNARY.contains(&op) || op == "GeluTanh" => float_unary(&mut b, m, op, &x(0), p),
        "Abs" if int && signed => format!("({a} < 0 ? ({ty})(0u - ({wide}){a}) : {a})", a = x(0)),
        "Abs" if int => x(0),
        "Abs" => format!("{}({})", m.f("fabs"), x(0)),
        "Neg" if int => format!("({ty})(0u - ({wide}){})", x(0)),
        "Neg" => format!("(-{})", x(0)),
        "Sign" if int && signed => format!("({a} > 0 ? ({ty})1 : ({a} < 0 ? ({ty})-1 : ({ty})0))", a = x(0)),
        "Sign" if int => format!("({a} > 0 ? ({ty})1 : ({ty})0)", a = x(0)),
        // NaN stays NaN (and zero keeps its sign), as kiln-cpu's sign.
        "Sign" => format!("({a} > 0 ? {} : ({a} < 0 ? -{} : {a}))", m.lit(1.0), m.lit(1.0), a = x(0)),
        "Relu" if int && !signed => x(0),
        "Relu" => format!("({a} < 0 ? ({ty})0 : {a})", a = x(0)),
        "IsNaN" => format!("({a} != {a})", a = x(0)),
        "IsInf" => {
            let inf = "__int_as_float(0x7f800000)";
            format!("(({a} == -{inf} && {}) || ({a} == {inf} && {}))", p[0] != 0.0, p[1] != 0.0, a = x(0))
        }
        "Not" => format!("(!{})", x(0)),
        "BitwiseNot" => format!("({ty})(~{})", x(0)),
        "Add" if int => wrap(&x(0), "+", &x(1)),
        "Sub" if int => wrap(&x(0), "-", &x(1)),
        "Mul" if int => wrap(&x(0), "*", &x(1)),
        "Add" => format!("({} + {})", x(0), x(1)),
        "Sub" => format!("({} - {})", x(0), x(1)),
        "Mul" => format!("({} * {})", x(0), x(1)),
        // Integer division truncates; a zero divisor gives 0 (numpy's result, never a trap) and
        // MIN / -1 wraps.
        "Div" if int && signed => format!(
            "({b} == 0 ? ({ty})0 : ({b} == -1 ? ({ty})(0u - ({wide}){a}) : ({ty})({a} / {b})))",
            a = x(0),
            b = x(1)
        ),
        "Div" if int => format!("({b} == 0 ? ({ty})0 : ({ty})({a} / {b}))", a = x(0), b = x(1)),
        "Div" => format!("({} / {})", x(0), x(1)),
        // C's remainder (the dividend's sign); 0 for a zero divisor.
        "ModTrunc" if int => trunc_rem(&x(0), &x(1), ty, signed),
        "ModTrunc" => format!("{}({}, {})", m.f("fmod"), x(0), x(1)),
        // Python's remainder (the divisor's sign).
        "ModFloor" if int => {
            let r = b.bind(ty, trunc_rem(&x(0), &x(1), ty, signed));
            if signed {
                format!("({r} != 0 && (({r} < 0) != ({c} < 0)) ? {} : {r})", wrap(&r, "+", &x(1)), c = x(1))
            } else {
                r
            }
        }
        "ModFloor" => {
            // The ONNX special cases: a zero result takes the divisor's sign; NaN stays NaN.
            let r = b.bind(m.ty(), format!("{}({}, {})", m.f("fmod"), x(0), x(1)));
            format!(
                "({r} == 0 ? {}({}, {c}) : ((({r} < 0) != ({c} < 0)) && {r} == {r} ? {r} + {c} : {r}))",
                m.f("copysign"),
                m.lit(0.0),
                c = x(1)
            )
        }
        "PRelu" if int => format!("({a} > 0 ? {a} : {})", wrap(&x(0), "*", &x(1)), a = x(0)),
        "PRelu" => format!("({a} > 0 ? {a} : {a} * {s})", a = x(0), s = x(1)),
        "Pow" => {
            let e = t.inputs[1].unwrap_or(DType::F32);
            if !int {
                // In f64, rounded once (kiln-cpu's float bases).
                format!("pow((double){}, (double){})", x(0), x(1))
            } else if kind(e) == Some(Kind::Float) {
                double_to_int(&format!("kt_pow_exact((double){}, (double){})", x(0), x(1)), first)
            } else {
                format!("kt_pow_int<{ty}, {wide}, {signed}>({}, (long long){})", x(0), x(1))
            }
        }
        "Max" | "Min" | "Sum" | "Mean" => fold(&mut b, &t.op, &vars, first, m),
        "Equal" => format!("({} == {})", x(0), x(1)),
        "Less" => format!("({} < {})", x(0), x(1)),
        "LessOrEqual" => format!("({} <= {})", x(0), x(1)),
        "Greater" => format!("({} > {})", x(0), x(1)),
        "GreaterOrEqual" => format!("({} >= {})", x(0), x(1)),
        "And" => format!("({} && {})", x(0), x(1)),
        "Or" => format!("({} || {})", x(0), x(1)),
        "Xor" => format!("({} != {})", x(0), x(1)),
        "BitwiseAnd" => format!("({ty})({} & {})", x(0), x(1)),
        "BitwiseOr" => format!("({ty})({} | {})", x(0), x(1)),
        "BitwiseXor" => format!("({ty})({} ^ {})", x(0), x(1)),
        // A shift by a negative amount or the width or more gives 0 (-1 for a right shift of a
        // negative value); right shifts of signed values are arithmetic (kiln-cpu's shift).
        "BitShiftLeft" | "BitShiftRight" => {
            let (a, c) = (x(0), x(1));
            let bits = 8 * first.size();
            let out_of_range = if signed { format!("({c} < 0 || {c} >= {bits})") } else { format!("({c} >= {bits})") };
            let (fill, shifted) = if t.op == "BitShiftLeft" {
                (format!("({ty})0"), format!("({ty})(({wide}){a} << (int){c})"))
            } else if signed {
                (format!("({a} < 0 ? ({ty})-1 : ({ty})0)"), format!("({ty})({a} >> (int){c})"))
            } else {
                (format!("({ty})0"), format!("({ty})({a} >> (int){c})"))
            };
            format!("({out_of_range} ? {fill} : {shifted})")
        }
        "Where" => format!("({} ? {} : {})", x(0), x(1), x(2)),
        "Clip" => {
            let mut e = x(0);
            if let Some(lo) = v(1) {
                e = b.bind(ty, format!("({e} < {lo} ? {lo} : {e})"));
            }
            if let Some(hi) = v(2) {
                e = format!("({e} > {hi} ? {hi} : {e})");
            }
            e
        }
        _ => "0".into(),
    };
    let store = match t.out {
        DType::F32 => format!("{storage}::st(y, i, (float)({expr}));"),
        DType::F16 => format!("F16::st(y, i, (float)({expr}));"),
        DType::BF16 => format!("BF16::st(y, i, (float)({expr}));"),
        DType::Bool => format!("((unsigned char*)y)[i] = ({expr}) ? 1 : 0;"),
        other => format!("(({}*)y)[i] = ({})({expr});", c_type(other), c_type(other)),
    };
    format!(
        "{HELPERS}extern \"C\" __global__ void {name}({params}) {{\n  GRID_STRIDE(i, n) {{\n{}    {store}\n  }}\n}}\n",
        b.code
    )
}

/// C's `%` for integers with the zero-divisor and MIN % -1 cases defined (0, as kiln-cpu).
fn trunc_rem(a: &str, c: &str, ty: &str, signed: bool) -> String {
    if signed {
        format!("(({c} == 0 || {c} == -1) ? ({ty})0 : ({ty})({a} % {c}))")
    } else {
        format!("({c} == 0 ? ({ty})0 : ({ty})({a} % {c}))")
    }
}

/// Variadic Max/Min/Sum/Mean folded left to right as kiln-cpu does: NaN propagates through
/// Max/Min; f16/bf16 partial sums are rounded to their type at each step.
fn fold(b: &mut Body, op: &str, vars: &[Option<String>], d: DType, m: Fm) -> String {
    let float = kind(d) == Some(Kind::Float);
    let ty = if float { m.ty() } else { c_type(d) };
    let round = |e: String| match d {
        DType::F16 => format!("h2f(f2h({e}))"),
        DType::BF16 => format!("b2f(f2b({e}))"),
        _ => e,
    };
    let mut acc = vars.first().cloned().flatten().unwrap_or_default();
    for x in vars.iter().skip(1).flatten() {
        let e = match op {
            "Max" if float => format!("(({acc} != {acc} || {acc} >= {x}) ? {acc} : {x})"),
            "Min" if float => format!("(({acc} != {acc} || {acc} <= {x}) ? {acc} : {x})"),
            "Max" => format!("({acc} >= {x} ? {acc} : {x})"),
            "Min" => format!("({acc} <= {x} ? {acc} : {x})"),
            _ => round(format!("{acc} + {x}")),
        };
        acc = b.bind(ty, e);
    }
    if op == "Mean" {
        acc = format!("({acc} / {})", m.lit(vars.len() as f64));
    }
    acc
}

/// Every op this generator covers over every dtype combination it accepts (with each
/// attribute-selected variant), for compiling them all in a test.
#[cfg(test)]
pub(crate) fn every_op_for_tests() -> Vec<TypedOp> {
    use DType::*;
    let all = [F32, F16, BF16, F64, I8, U8, I16, U16, I32, U32, I64, U64, Bool];
    let unary = FLOAT_UNARY.iter().chain(&["Abs", "Neg", "Sign", "Relu", "IsNaN", "IsInf", "Not", "BitwiseNot"]);
    let binary = [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "PRelu",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "And",
        "Or",
        "Xor",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
        "BitShift",
    ];
    let mut cases: Vec<(&str, Attributes, Vec<Option<DType>>)> = Vec::new();
    for d in all {
        for &op in unary.clone() {
            cases.push((op, Attributes::new(), vec![Some(d)]));
        }
        cases.push(("Gelu", Attributes::new().with("approximate", "tanh"), vec![Some(d)]));
        cases.push(("IsInf", Attributes::new().with("detect_negative", 0i64), vec![Some(d)]));
        for op in binary {
            cases.push((op, Attributes::new(), vec![Some(d); 2]));
        }
        cases.push(("Mod", Attributes::new().with("fmod", 1i64), vec![Some(d); 2]));
        cases.push(("BitShift", Attributes::new().with("direction", "LEFT"), vec![Some(d); 2]));
        cases.push(("BitShift", Attributes::new().with("direction", "RIGHT"), vec![Some(d); 2]));
        for e in [F32, F16, F64, I32, I64, U64] {
            cases.push(("Pow", Attributes::new(), vec![Some(d), Some(e)]));
        }
        for op in ["Max", "Min", "Sum", "Mean"] {
            cases.push((op, Attributes::new(), vec![Some(d)]));
            cases.push((op, Attributes::new(), vec![Some(d); 3]));
        }
        cases.push(("Where", Attributes::new(), vec![Some(Bool), Some(d), Some(d)]));
        cases.push(("Clip", Attributes::new(), vec![Some(d), None, Some(d)]));
        cases.push(("Clip", Attributes::new(), vec![Some(d); 3]));
    }
    cases.into_iter().filter_map(|(op, attrs, inputs)| plan(op, &attrs, &inputs).ok().flatten()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, inputs: &[Option<DType>]) -> TypedOp {
        plan(name, &Attributes::new(), inputs).unwrap().unwrap()
    }

    #[test]
    fn where_reads_a_byte_condition_and_typed_branches() {
        let t = op("Where", &[Some(DType::Bool), Some(DType::I64), Some(DType::I64)]);
        assert_eq!(t.out, DType::I64);
        let src = generate(4, &t, "F32");
        assert!(src.contains("bool x0 = (((const unsigned char*)a0)"));
        assert!(src.contains("((i64*)y)[i] = (i64)((x0 ? x1 : x2));"));
    }

    #[test]
    fn clip_skips_missing_bounds() {
        let t = op("Clip", &[Some(DType::F32), None, Some(DType::F32)]);
        let src = generate(1, &t, "F16");
        assert!(src.contains("F16::ld(a1"));
        assert!(src.contains("(x0 > x2 ? x2 : x0)"));
    }

    #[test]
    fn native_half_tensors_load_and_store_as_themselves_whatever_the_storage() {
        let t = op("Exp", &[Some(DType::F16)]);
        assert_eq!(t.out, DType::F16);
        let src = generate(2, &t, "F32");
        assert!(src.contains("float x0 = F16::ld(a0"));
        assert!(src.contains("F16::st(y, i, (float)(expf(x0)));"));
        let src = generate(2, &op("Exp", &[Some(DType::F64)]), "F32");
        assert!(src.contains("((double*)y)[i] = (double)(exp(x0));"));
    }

    #[test]
    fn integer_arithmetic_wraps_and_never_traps() {
        let src = generate(0, &op("Div", &[Some(DType::I32), Some(DType::I32)]), "F32");
        assert!(src.contains("(x1 == 0 ? (int)0 : (x1 == -1 ? (int)(0u - (unsigned)x0) : (int)(x0 / x1)))"));
        let src = generate(0, &op("Mul", &[Some(DType::I64), Some(DType::I64)]), "F32");
        assert!(src.contains("(i64)((unsigned long long)x0 * (unsigned long long)x1)"));
    }

    #[test]
    fn sums_of_halves_round_each_partial_sum() {
        let src = generate(0, &op("Sum", &[Some(DType::F16), Some(DType::F16), Some(DType::F16)]), "F32");
        assert!(src.contains("float v0 = h2f(f2h(x0 + x1));"));
        assert!(src.contains("float v1 = h2f(f2h(v0 + x2));"));
    }

    #[test]
    fn coverage_is_by_type() {
        let p = |name: &str, d: &[Option<DType>]| plan(name, &Attributes::new(), d);
        assert_eq!(op("Equal", &[Some(DType::F16), Some(DType::F16)]).out, DType::Bool);
        assert_eq!(op("Add", &[Some(DType::U16), Some(DType::U16)]).out, DType::U16);
        assert_eq!(op("Pow", &[Some(DType::I32), Some(DType::F32)]).out, DType::I32);
        assert!(p("And", &[Some(DType::I64), Some(DType::I64)]).is_err());
        assert!(p("Add", &[Some(DType::I64), Some(DType::I32)]).is_err());
        assert!(p("Sum", &[Some(DType::I64), Some(DType::I64)]).is_err());
        assert!(p("Exp", &[Some(DType::I64)]).is_err());
        assert!(p("Conv", &[Some(DType::F32)]).unwrap().is_none());
        let modf = Attributes::new().with("fmod", 1i64);
        assert_eq!(plan("Mod", &modf, &[Some(DType::F32), Some(DType::F32)]).unwrap().unwrap().op, "ModTrunc");
    }
}
