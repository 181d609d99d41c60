//! KilnElementwise: a fused chain of element-wise ops (program format:
//! `kiln_ir::elementwise_program`). The output is walked in runs along its innermost
//! (coalesced) dimension and each run in blocks of [`BLOCK`] elements; the program runs over a
//! block at a time on a small stack of block buffers that stays in L1, so no intermediate
//! tensor is ever materialised and the per-op loops still vectorize.

use super::binary::{max_nan, min_nan};
use super::scalar::Real;
use super::unary::{clamp01, sigmoid, softplus};
use crate::util::{single, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::elementwise_program::{BinaryOp, Instr, Program, UnaryOp, KILN_ELEMENTWISE};
use kiln_ir::{checked_numel, DType, Tensor, Value};
use rayon::prelude::*;

/// Elements evaluated together by one pass of the program.
const BLOCK: usize = 256;
/// Outputs at least this large are split into chunks computed in parallel.
const PAR_MIN: usize = 1 << 15;
const PAR_CHUNK: usize = 1 << 13;

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    (op == KILN_ELEMENTWISE).then_some(kiln_elementwise as KernelFn)
}

fn kiln_elementwise(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| tensor_arg(inputs, i)).collect::<Result<_, _>>()?;
    let prog = Program::from_attrs(ctx.attrs, ts.len())?;
    let dtype = ts.first().ok_or("KilnElementwise needs at least one input")?.dtype();
    if let Some(t) = ts.iter().find(|t| t.dtype() != dtype) {
        return Err(format!("inputs must have the same dtype, got {dtype} and {}", t.dtype()));
    }
    let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
    let plan = Plan::new(&shapes)?;
    let out = match dtype {
        DType::F32 => eval::<f32>(&prog, &ts, &plan)?,
        DType::F64 => eval::<f64>(&prog, &ts, &plan)?,
        other => return Err(format!("KilnElementwise computes f32 or f64, got {other}")),
    };
    Ok(single(out))
}

/// How N input shapes broadcast to the output: the output's dims with 1s dropped and
/// neighbours that broadcast alike merged, and per such dim each input's element stride (0
/// where it is broadcast).
struct Plan {
    shape: Vec<usize>,
    numel: usize,
    dims: Vec<usize>,
    /// `strides[d][k]`: input k's stride along coalesced dim d.
    strides: Vec<Vec<usize>>,
}

impl Plan {
    fn new(shapes: &[&[usize]]) -> Result<Plan, String> {
        let n = shapes.len();
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let dim_of = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
        let mut shape = vec![1usize; rank];
        for (i, out) in shape.iter_mut().enumerate() {
            for s in shapes {
                let d = dim_of(s, i);
                if d != 1 {
                    if *out != 1 && *out != d {
                        return Err(format!("input shapes {shapes:?} cannot be broadcast together"));
                    }
                    *out = d;
                }
            }
        }
        let numel = checked_numel(&shape).map_err(|e| e.to_string())?;
        let mut dims: Vec<usize> = Vec::new();
        let mut flags: Vec<Vec<bool>> = Vec::new();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let f: Vec<bool> = shapes.iter().map(|s| dim_of(s, i) == 1).collect();
            if flags.last() == Some(&f) {
                *dims.last_mut().expect("dims and flags grow together") *= d;
            } else {
                dims.push(d);
                flags.push(f);
            }
        }
        if dims.is_empty() {
            dims.push(1);
            flags.push(vec![true; n]);
        }
        let mut strides = vec![vec![0usize; n]; dims.len()];
        let mut acc = vec![1usize; n];
        for j in (0..dims.len()).rev() {
            for k in 0..n {
                if !flags[j][k] {
                    strides[j][k] = acc[k];
                    acc[k] *= dims[j];
                }
            }
        }
        Ok(Plan { shape, numel, dims, strides })
    }

    /// Calls `f(offsets, len, inner_strides)` for each run of output elements in `start..end`
    /// (row-major); input k's elements of the run are `offsets[k] + i * inner_strides[k]`,
    /// each inner stride 0 or 1.
    fn for_range(&self, start: usize, end: usize, mut f: impl FnMut(&[usize], usize, &[usize])) {
        let end = end.min(self.numel);
        if start >= end {
            return;
        }
        let last = self.dims.len() - 1;
        let (len, inner) = (self.dims[last], &self.strides[last]);
        let n = inner.len();
        let (mut row, mut col) = (start / len, start % len);
        let mut idx = vec![0usize; last];
        let mut offs = vec![0usize; n];
        for d in (0..last).rev() {
            idx[d] = row % self.dims[d];
            row /= self.dims[d];
            for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                *o += idx[d] * s;
            }
        }
        let mut run = vec![0usize; n];
        let mut pos = start;
        loop {
            let seg = (len - col).min(end - pos);
            for k in 0..n {
                run[k] = offs[k] + col * inner[k];
            }
            f(&run, seg, inner);
            pos += seg;
            if pos >= end {
                return;
            }
            col = 0;
            let mut d = last;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                    *o += s;
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                    *o -= s * self.dims[d];
                }
                idx[d] = 0;
            }
        }
    }
}

/// The program with its constants in the compute type.
#[derive(Clone, Copy)]
enum Op<T> {
    Input(usize),
    Const(T),
    Unary(UnaryOp),
    Binary(BinaryOp),
}

fn eval<T: Real + Send + Sync>(prog: &Program, ts: &[&Tensor], plan: &Plan) -> Result<Tensor, String> {
    let ops: Vec<Op<T>> = prog
        .instrs
        .iter()
        .map(|i| match *i {
            Instr::Input(k) => Op::Input(k),
            Instr::Const(v) => Op::Const(T::c(v)),
            Instr::Unary(u) => Op::Unary(u),
            Instr::Binary(b) => Op::Binary(b),
        })
        .collect();
    let data: Vec<&[T]> = ts.iter().map(|t| t.as_slice::<T>().map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let depth = prog.max_depth;
    let fill = |start: usize, dst: &mut [T]| {
        let mut stack = vec![T::ZERO; depth * BLOCK];
        let mut w = 0;
        plan.for_range(start, start + dst.len(), |offs, len, inner| {
            let mut done = 0;
            while done < len {
                let b = (len - done).min(BLOCK);
                run_block(&ops, &data, offs, inner, done, b, &mut stack);
                dst[w..w + b].copy_from_slice(&stack[..b]);
                w += b;
                done += b;
            }
        });
    };
    let mut out = vec![T::ZERO; plan.numel];
    if plan.numel >= PAR_MIN {
        out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(i, c)| fill(i * PAR_CHUNK, c));
    } else {
        fill(0, &mut out);
    }
    Tensor::from_vec(plan.shape.clone(), out).map_err(|e| e.to_string())
}

/// Run the program over elements `skip..skip + len` of one run; the result is left in the
/// first stack slot.
fn run_block<T: Real>(
    ops: &[Op<T>],
    data: &[&[T]],
    offs: &[usize],
    inner: &[usize],
    skip: usize,
    len: usize,
    stack: &mut [T],
) {
    let mut sp = 0;
    for op in ops {
        match *op {
            Op::Input(k) => {
                let dst = &mut stack[sp * BLOCK..sp * BLOCK + len];
                if inner[k] == 0 {
                    dst.fill(data[k][offs[k]]);
                } else {
                    let o = offs[k] + skip;
                    dst.copy_from_slice(&data[k][o..o + len]);
                }
                sp += 1;
            }
            Op::Const(c) => {
                stack[sp * BLOCK..sp * BLOCK + len].fill(c);
                sp += 1;
            }
            Op::Unary(u) => unary(u, &mut stack[(sp - 1) * BLOCK..(sp - 1) * BLOCK + len]),
            Op::Binary(b) => {
                let (lo, hi) = stack.split_at_mut((sp - 1) * BLOCK);
                binary(b, &mut lo[(sp - 2) * BLOCK..(sp - 2) * BLOCK + len], &hi[..len]);
                sp -= 1;
            }
        }
    }
}

/// The op over a block, computed exactly as the kernel of the ONNX op of that name.
fn unary<T: Real>(op: UnaryOp, xs: &mut [T]) {
    macro_rules! each {
        (|$x:ident| $e:expr) => {
            xs.iter_mut().for_each(|v| {
                let $x = *v;
                *v = $e;
            })
        };
    }
    match op {
        UnaryOp::Relu => each!(|x| if x < T::ZERO { T::ZERO } else { x }),
        UnaryOp::Sigmoid => each!(|x| sigmoid(x)),
        UnaryOp::Tanh => each!(|x| x.tanh()),
        UnaryOp::Exp => each!(|x| x.exp()),
        UnaryOp::Log => each!(|x| x.ln()),
        UnaryOp::Sqrt => each!(|x| x.sqrt()),
        UnaryOp::Erf => each!(|x| x.erf()),
        UnaryOp::Neg => each!(|x| -x),
        UnaryOp::Abs => each!(|x| x.abs()),
        UnaryOp::Reciprocal => each!(|x| T::ONE / x),
        UnaryOp::Softplus => each!(|x| softplus(x)),
        UnaryOp::Softsign => each!(|x| x / (T::ONE + x.abs())),
        UnaryOp::Floor => each!(|x| x.floor()),
        UnaryOp::Ceil => each!(|x| x.ceil()),
        UnaryOp::Sin => each!(|x| x.sin()),
        UnaryOp::Cos => each!(|x| x.cos()),
        UnaryOp::HardSwish => each!(|x| x * clamp01(x * T::c(1.0 / 6.0) + T::c(0.5))),
        UnaryOp::Gelu => {
            let (half, r) = (T::c(0.5), T::c(std::f64::consts::FRAC_1_SQRT_2));
            each!(|x| half * x * (-x * r).erfc())
        }
        UnaryOp::GeluTanh => {
            let (two_k, c) = (T::c(2.0 * 0.797_884_560_802_865_4), T::c(0.044715));
            each!(|x| x * sigmoid(two_k * (x + c * x * x * x)))
        }
        UnaryOp::Clip { min, max } => {
            let (lo, hi) = (T::c(min), T::c(max));
            each!(|x| {
                let x = if x < lo { lo } else { x };
                if x > hi {
                    hi
                } else {
                    x
                }
            })
        }
        UnaryOp::LeakyRelu { alpha } => {
            let a = T::c(alpha);
            each!(|x| if x > T::ZERO { x } else { x * a })
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            let (a, b) = (T::c(alpha), T::c(beta));
            each!(|x| clamp01(a * x + b))
        }
        UnaryOp::Elu { alpha } => {
            let a = T::c(alpha);
            each!(|x| if x > T::ZERO { x } else { a * x.exp_m1() })
        }
    }
}

/// `a = a op b` over a block.
fn binary<T: Real>(op: BinaryOp, a: &mut [T], b: &[T]) {
    let it = a.iter_mut().zip(b);
    match op {
        BinaryOp::Add => it.for_each(|(x, &y)| *x = *x + y),
        BinaryOp::Sub => it.for_each(|(x, &y)| *x = *x - y),
        BinaryOp::Mul => it.for_each(|(x, &y)| *x = *x * y),
        BinaryOp::Div => it.for_each(|(x, &y)| *x = *x / y),
        // As the Pow kernel: evaluated in f64, rounded once.
        BinaryOp::Pow => it.for_each(|(x, &y)| *x = T::from_f64(x.to_f64().powf(y.to_f64()))),
        BinaryOp::Max => it.for_each(|(x, &y)| *x = max_nan(*x, y)),
        BinaryOp::Min => it.for_each(|(x, &y)| *x = min_nan(*x, y)),
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::run_layer;
    use kiln_ir::elementwise_program::{KILN_ELEMENTWISE, PROGRAM_ATTR};
    use kiln_ir::{Attribute, Attributes, Tensor};

    fn attrs(prog: &[&str]) -> Attributes {
        Attributes::new().with(PROGRAM_ATTR, Attribute::Strings(prog.iter().map(|s| s.to_string()).collect()))
    }

    fn t(shape: &[usize], seed: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| ((i as f32 + seed) * 0.913).sin() * 2.0).collect()).unwrap()
    }

    /// The same computation through the one-op kernels.
    fn op(name: &str, a: Attributes, ins: &[Tensor]) -> Tensor {
        let ins: Vec<Option<Tensor>> = ins.iter().cloned().map(Some).collect();
        run_layer(name, a, &ins, 1).unwrap().remove(0)
    }

    #[test]
    fn a_broadcast_chain_matches_the_layers_it_replaces() {
        // y = LeakyRelu(Pow(x + b, 2) * s - 0.5), x [2, 3, 300], b [3, 1], s [300].
        let (x, b, s) = (t(&[2, 3, 300], 0.0), t(&[3, 1], 1.0), t(&[300], 2.0));
        let prog = ["in 0", "in 1", "Add", "const 2.0", "Pow", "in 2", "Mul", "const 0.5", "Sub", "LeakyRelu 0.1"];
        let got = op(KILN_ELEMENTWISE, attrs(&prog), &[x.clone(), b.clone(), s.clone()]);
        let sum = op("Add", Attributes::new(), &[x, b]);
        let sq = op("Pow", Attributes::new(), &[sum, Tensor::scalar(2.0f32)]);
        let sc = op("Mul", Attributes::new(), &[sq, s]);
        let sub = op("Sub", Attributes::new(), &[sc, Tensor::scalar(0.5f32)]);
        let want = op("LeakyRelu", Attributes::new().with("alpha", 0.1f32), &[sub]);
        assert_eq!(got.shape(), [2, 3, 300]);
        assert_eq!(got, want);
    }

    #[test]
    fn every_op_matches_its_kernel() {
        let x = t(&[5, 70], 0.5);
        let unary: Vec<(&str, &str, Attributes)> = vec![
            ("Relu", "Relu", Attributes::new()),
            ("Sigmoid", "Sigmoid", Attributes::new()),
            ("Tanh", "Tanh", Attributes::new()),
            ("Exp", "Exp", Attributes::new()),
            ("Abs", "Abs", Attributes::new()),
            ("Neg", "Neg", Attributes::new()),
            ("Reciprocal", "Reciprocal", Attributes::new()),
            ("Erf", "Erf", Attributes::new()),
            ("Softplus", "Softplus", Attributes::new()),
            ("Softsign", "Softsign", Attributes::new()),
            ("Floor", "Floor", Attributes::new()),
            ("Ceil", "Ceil", Attributes::new()),
            ("Sin", "Sin", Attributes::new()),
            ("Cos", "Cos", Attributes::new()),
            ("HardSwish", "HardSwish", Attributes::new()),
            ("Gelu", "Gelu", Attributes::new()),
            ("GeluTanh", "Gelu", Attributes::new().with("approximate", "tanh")),
            ("LeakyRelu 0.2", "LeakyRelu", Attributes::new().with("alpha", 0.2f32)),
            ("HardSigmoid 0.25 0.375", "HardSigmoid", Attributes::new().with("alpha", 0.25f32).with("beta", 0.375f32)),
            ("Elu 0.5", "Elu", Attributes::new().with("alpha", 0.5f32)),
        ];
        for (instr, name, a) in unary {
            let got = op(KILN_ELEMENTWISE, attrs(&["in 0", instr]), std::slice::from_ref(&x));
            assert_eq!(got, op(name, a, std::slice::from_ref(&x)), "{instr}");
        }
        let pos = op("Abs", Attributes::new(), std::slice::from_ref(&x));
        for (instr, name) in [("Log", "Log"), ("Sqrt", "Sqrt")] {
            let got = op(KILN_ELEMENTWISE, attrs(&["in 0", instr]), std::slice::from_ref(&pos));
            assert_eq!(got, op(name, Attributes::new(), std::slice::from_ref(&pos)), "{instr}");
        }
        let clip = op(KILN_ELEMENTWISE, attrs(&["in 0", "Clip -0.5 inf"]), std::slice::from_ref(&x));
        assert_eq!(clip, op("Clip", Attributes::new(), &[x.clone(), Tensor::scalar(-0.5f32)]));
        let y = t(&[70], 3.0);
        for name in ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"] {
            let base = if name == "Pow" { pos.clone() } else { x.clone() };
            let got = op(KILN_ELEMENTWISE, attrs(&["in 0", "in 1", name]), &[base.clone(), y.clone()]);
            assert_eq!(got, op(name, Attributes::new(), &[base, y.clone()]), "{name}");
        }
    }

    #[test]
    fn f64_inputs_and_scalars() {
        let x = Tensor::from_vec(vec![2, 2], vec![1.0f64, -2.0, 3.0, -4.0]).unwrap();
        let y = op(KILN_ELEMENTWISE, attrs(&["in 0", "const 0.5", "Mul", "Relu"]), &[x]);
        assert_eq!(y.as_slice::<f64>().unwrap(), [0.5, 0.0, 1.5, 0.0]);
        let s = Tensor::from_vec(vec![], vec![2.0f32]).unwrap();
        let y = op(KILN_ELEMENTWISE, attrs(&["in 0", "in 0", "Mul"]), &[s]);
        assert_eq!(y.shape(), [] as [usize; 0]);
        assert_eq!(y.as_slice::<f32>().unwrap(), [4.0]);
    }

    #[test]
    fn bad_programs_and_inputs_are_errors() {
        let x = t(&[4], 0.0);
        let run = |prog: &[&str], ins: &[Tensor]| {
            let ins: Vec<Option<Tensor>> = ins.iter().cloned().map(Some).collect();
            run_layer(KILN_ELEMENTWISE, attrs(prog), &ins, 1)
        };
        assert!(run(&["in 0", "Frobnicate"], std::slice::from_ref(&x)).unwrap_err().contains("unknown"));
        assert!(run(&["in 0", "Add"], std::slice::from_ref(&x)).is_err());
        assert!(run(&["in 0"], &[x.clone(), x.clone()]).unwrap_err().contains("never reads input 1"));
        assert!(run(&["in 0", "in 1", "Add"], &[x.clone(), t(&[3], 1.0)]).is_err());
        let i = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
        assert!(run(&["in 0", "Relu"], &[i]).is_err());
    }
}
