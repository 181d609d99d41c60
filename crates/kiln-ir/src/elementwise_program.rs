//! `KilnElementwise`: a chain of element-wise layers fused into one, evaluated per element
//! without materialising the intermediate tensors.
//!
//! The layer's inputs are the chain's external inputs (any number ≥ 1, one float dtype, f32 or
//! f64), broadcast together numpy-style; its output has their broadcast shape and dtype. What
//! it computes is a small stack program in the attribute [`PROGRAM_ATTR`] (Strings), one
//! instruction per entry, in postfix order:
//!
//! | instruction | effect |
//! |---|---|
//! | `in K` | push input K (0-based) |
//! | `const V` | push the scalar V (decimal, `inf`, `-inf`, `NaN`) |
//! | `Add` `Sub` `Mul` `Div` `Pow` `Max` `Min` | pop b, pop a, push `a op b` |
//! | `Relu` `Sigmoid` `Tanh` `Exp` `Log` `Sqrt` `Erf` `Neg` `Abs` `Reciprocal` `Softplus` `Softsign` `Floor` `Ceil` `Sin` `Cos` `HardSwish` `Gelu` `GeluTanh` | replace the top x by `op(x)` |
//! | `Clip MIN MAX` `LeakyRelu ALPHA` `HardSigmoid ALPHA BETA` `Elu ALPHA` | the same, with parameters |
//!
//! Every op computes exactly what kiln's kernel for the ONNX op of that name computes (`Gelu`
//! is Gelu with approximate "none", `GeluTanh` with "tanh"; `Max`/`Min` propagate NaN; `Pow` is
//! evaluated in f64). A program must leave exactly one value on the stack and read every input.
//! For example `x * sigmoid(x + b)` over inputs `[x, b]` is `in 0, in 0, in 1, Add, Sigmoid, Mul`.

use crate::Attributes;

/// Op name of the fused element-wise layer.
pub const KILN_ELEMENTWISE: &str = "KilnElementwise";
/// Attribute holding its program (Strings, one instruction each).
pub const PROGRAM_ATTR: &str = "kiln_program";
/// Longest program accepted (a guard against runaway fusions; real chains are far shorter).
pub const MAX_PROGRAM_LEN: usize = 1024;

/// One-operand ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Erf,
    Neg,
    Abs,
    Reciprocal,
    Softplus,
    Softsign,
    Floor,
    Ceil,
    Sin,
    Cos,
    HardSwish,
    Gelu,
    GeluTanh,
    Clip { min: f64, max: f64 },
    LeakyRelu { alpha: f64 },
    HardSigmoid { alpha: f64, beta: f64 },
    Elu { alpha: f64 },
}

/// Two-operand ops (broadcasting).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Instr {
    Input(usize),
    Const(f64),
    Unary(UnaryOp),
    Binary(BinaryOp),
}

/// A validated program.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub instrs: Vec<Instr>,
    /// 1 + the highest input index read.
    pub num_inputs: usize,
    /// The deepest the stack gets.
    pub max_depth: usize,
}

impl UnaryOp {
    /// The op for an instruction name and its parameters.
    pub fn parse(name: &str, p: &[f64]) -> Result<UnaryOp, String> {
        let want = |n: usize| {
            if p.len() == n {
                Ok(())
            } else {
                Err(format!("'{name}' takes {n} parameters, got {}", p.len()))
            }
        };
        let op = match name {
            "Clip" => {
                want(2)?;
                return Ok(UnaryOp::Clip { min: p[0], max: p[1] });
            }
            "LeakyRelu" => {
                want(1)?;
                return Ok(UnaryOp::LeakyRelu { alpha: p[0] });
            }
            "HardSigmoid" => {
                want(2)?;
                return Ok(UnaryOp::HardSigmoid { alpha: p[0], beta: p[1] });
            }
            "Elu" => {
                want(1)?;
                return Ok(UnaryOp::Elu { alpha: p[0] });
            }
            "Relu" => UnaryOp::Relu,
            "Sigmoid" => UnaryOp::Sigmoid,
            "Tanh" => UnaryOp::Tanh,
            "Exp" => UnaryOp::Exp,
            "Log" => UnaryOp::Log,
            "Sqrt" => UnaryOp::Sqrt,
            "Erf" => UnaryOp::Erf,
            "Neg" => UnaryOp::Neg,
            "Abs" => UnaryOp::Abs,
            "Reciprocal" => UnaryOp::Reciprocal,
            "Softplus" => UnaryOp::Softplus,
            "Softsign" => UnaryOp::Softsign,
            "Floor" => UnaryOp::Floor,
            "Ceil" => UnaryOp::Ceil,
            "Sin" => UnaryOp::Sin,
            "Cos" => UnaryOp::Cos,
            "HardSwish" => UnaryOp::HardSwish,
            "Gelu" => UnaryOp::Gelu,
            "GeluTanh" => UnaryOp::GeluTanh,
            other => return Err(format!("unknown element-wise program op '{other}'")),
        };
        want(0)?;
        Ok(op)
    }

    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Relu => "Relu",
            UnaryOp::Sigmoid => "Sigmoid",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Erf => "Erf",
            UnaryOp::Neg => "Neg",
            UnaryOp::Abs => "Abs",
            UnaryOp::Reciprocal => "Reciprocal",
            UnaryOp::Softplus => "Softplus",
            UnaryOp::Softsign => "Softsign",
            UnaryOp::Floor => "Floor",
            UnaryOp::Ceil => "Ceil",
            UnaryOp::Sin => "Sin",
            UnaryOp::Cos => "Cos",
            UnaryOp::HardSwish => "HardSwish",
            UnaryOp::Gelu => "Gelu",
            UnaryOp::GeluTanh => "GeluTanh",
            UnaryOp::Clip { .. } => "Clip",
            UnaryOp::LeakyRelu { .. } => "LeakyRelu",
            UnaryOp::HardSigmoid { .. } => "HardSigmoid",
            UnaryOp::Elu { .. } => "Elu",
        }
    }

    pub fn params(&self) -> Vec<f64> {
        match *self {
            UnaryOp::Clip { min, max } => vec![min, max],
            UnaryOp::LeakyRelu { alpha } | UnaryOp::Elu { alpha } => vec![alpha],
            UnaryOp::HardSigmoid { alpha, beta } => vec![alpha, beta],
            _ => Vec::new(),
        }
    }
}

impl BinaryOp {
    pub fn parse(name: &str) -> Option<BinaryOp> {
        Some(match name {
            "Add" => BinaryOp::Add,
            "Sub" => BinaryOp::Sub,
            "Mul" => BinaryOp::Mul,
            "Div" => BinaryOp::Div,
            "Pow" => BinaryOp::Pow,
            "Max" => BinaryOp::Max,
            "Min" => BinaryOp::Min,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
        }
    }
}

impl Instr {
    /// The instruction as its program text (numbers written so that they read back exactly).
    pub fn to_text(&self) -> String {
        match self {
            Instr::Input(k) => format!("in {k}"),
            Instr::Const(v) => format!("const {v:?}"),
            Instr::Binary(op) => op.name().to_string(),
            Instr::Unary(op) => {
                let mut s = op.name().to_string();
                for p in op.params() {
                    s.push_str(&format!(" {p:?}"));
                }
                s
            }
        }
    }

    pub fn parse(text: &str) -> Result<Instr, String> {
        let mut words = text.split_whitespace();
        let name = words.next().ok_or("empty element-wise program instruction")?;
        let args: Vec<&str> = words.collect();
        let num = |s: &str| s.parse::<f64>().map_err(|_| format!("'{text}': '{s}' is not a number"));
        match name {
            "in" => match args.as_slice() {
                [k] => Ok(Instr::Input(k.parse().map_err(|_| format!("'{text}': '{k}' is not an input index"))?)),
                _ => Err(format!("'{text}': 'in' takes one input index")),
            },
            "const" => match args.as_slice() {
                [v] => Ok(Instr::Const(num(v)?)),
                _ => Err(format!("'{text}': 'const' takes one value")),
            },
            _ => {
                if let Some(op) = BinaryOp::parse(name) {
                    if !args.is_empty() {
                        return Err(format!("'{text}': '{name}' takes no parameters"));
                    }
                    return Ok(Instr::Binary(op));
                }
                let p = args.iter().map(|s| num(s)).collect::<Result<Vec<_>, _>>()?;
                Ok(Instr::Unary(UnaryOp::parse(name, &p)?))
            }
        }
    }
}

impl Program {
    /// Validate a list of instructions: the stack never underflows and ends with one value.
    pub fn new(instrs: Vec<Instr>) -> Result<Program, String> {
        if instrs.is_empty() || instrs.len() > MAX_PROGRAM_LEN {
            return Err(format!(
                "an element-wise program needs 1 to {MAX_PROGRAM_LEN} instructions, got {}",
                instrs.len()
            ));
        }
        let (mut depth, mut max_depth, mut num_inputs) = (0usize, 0usize, 0usize);
        for (i, ins) in instrs.iter().enumerate() {
            match ins {
                Instr::Input(k) => {
                    num_inputs = num_inputs.max(k + 1);
                    depth += 1;
                }
                Instr::Const(_) => depth += 1,
                Instr::Unary(_) if depth >= 1 => {}
                Instr::Binary(_) if depth >= 2 => depth -= 1,
                _ => return Err(format!("instruction {i} ('{}') finds too few values on the stack", ins.to_text())),
            }
            max_depth = max_depth.max(depth);
        }
        if depth != 1 {
            return Err(format!("an element-wise program must leave one value on the stack, leaves {depth}"));
        }
        Ok(Program { instrs, num_inputs, max_depth })
    }

    pub fn parse(lines: &[String]) -> Result<Program, String> {
        Program::new(lines.iter().map(|l| Instr::parse(l)).collect::<Result<_, _>>()?)
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.instrs.iter().map(Instr::to_text).collect()
    }

    /// The program of a `KilnElementwise` layer with `inputs` inputs, each of which it reads.
    pub fn from_attrs(attrs: &Attributes, inputs: usize) -> Result<Program, String> {
        let lines = attrs.strings_opt(PROGRAM_ATTR)?.ok_or_else(|| format!("attribute '{PROGRAM_ATTR}' is missing"))?;
        let p = Program::parse(&lines)?;
        let mut read = vec![false; inputs];
        for ins in &p.instrs {
            if let Instr::Input(k) = ins {
                *read.get_mut(*k).ok_or_else(|| format!("the program reads input {k} of {inputs}"))? = true;
            }
        }
        if let Some(k) = read.iter().position(|r| !r) {
            return Err(format!("the program never reads input {k}"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_round_trip_through_text() {
        let p = Program::new(vec![
            Instr::Input(0),
            Instr::Input(0),
            Instr::Input(1),
            Instr::Binary(BinaryOp::Add),
            Instr::Const(0.1f32 as f64),
            Instr::Binary(BinaryOp::Pow),
            Instr::Unary(UnaryOp::Clip { min: f64::NEG_INFINITY, max: 6.0 }),
            Instr::Unary(UnaryOp::HardSigmoid { alpha: 0.2f32 as f64, beta: 0.5 }),
            Instr::Binary(BinaryOp::Mul),
            Instr::Unary(UnaryOp::Gelu),
        ])
        .unwrap();
        assert_eq!(p.max_depth, 3);
        assert_eq!(p.num_inputs, 2);
        let text = p.to_strings();
        assert_eq!(text[0], "in 0");
        assert_eq!(text[6], "Clip -inf 6.0");
        let back = Program::parse(&text).unwrap();
        assert_eq!(back, p);
        let attrs = Attributes::new().with(PROGRAM_ATTR, crate::Attribute::Strings(text));
        assert_eq!(Program::from_attrs(&attrs, 2).unwrap(), p);
        assert!(Program::from_attrs(&attrs, 3).unwrap_err().contains("never reads input 2"));
        assert!(Program::from_attrs(&attrs, 1).is_err());
    }

    #[test]
    fn malformed_programs_are_errors() {
        for bad in [
            vec!["in 0", "Frobnicate"],
            vec!["Add"],
            vec!["in 0", "in 1"],
            vec!["in 0", "Clip 1"],
            vec!["in 0", "Relu 3"],
            vec!["in x"],
            vec!["const"],
            vec!["in 0", "const 1", "Add 2"],
            vec![],
        ] {
            let lines: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(Program::parse(&lines).is_err(), "{bad:?}");
        }
        assert!(Program::from_attrs(&Attributes::new(), 1).is_err());
    }
}
