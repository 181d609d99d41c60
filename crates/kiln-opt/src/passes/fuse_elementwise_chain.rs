//! Chains of element-wise layers become one `KilnElementwise` layer that computes the whole
//! chain per element (program format: `kiln_ir::elementwise_program`), so the intermediate
//! tensors are never written to memory.
//!
//! A chain is a tree of element-wise layers (unary, and binary with broadcasting) joined by
//! tensors that have exactly one reader and are not network outputs; its leaves — tensors
//! produced elsewhere, inputs, constants — become the fused layer's inputs, except scalar
//! constants that cannot change the output's shape, which go into the program. Only chains of
//! two or more layers are fused, all f32 or all f64. The pass runs after the epilogue fusion,
//! so what that pass folds into a Conv / Gemm / MatMul is already gone; a lone activation stays
//! as it is.

use crate::passes::fuse_epilogue::{reader_layers, tensor_type};
use crate::passes::reader_counts;
use crate::{Pass, Rebuilder};
use kiln_ir::elementwise_program::{BinaryOp, Instr, Program, UnaryOp, KILN_ELEMENTWISE, PROGRAM_ATTR};
use kiln_ir::{spec, Attribute, Attributes, DType, IrError, Layer, Network, TensorId};

pub struct FuseElementwiseChain;

impl Pass for FuseElementwiseChain {
    fn name(&self) -> &'static str {
        "fuse-elementwise-chain"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let counts = reader_counts(net);
        let readers = reader_layers(net);
        let n = net.layers().len();
        let nodes: Vec<Option<Node>> = net.layers().iter().map(|l| node(net, l)).collect();
        // Union the layers joined by a single-reader tensor.
        let mut parent: Vec<usize> = (0..n).collect();
        for (i, nd) in nodes.iter().enumerate() {
            let Some(nd) = nd else { continue };
            for &t in &nd.operands {
                if let Some(p) = inner_producer(net, t, i, &nodes, &counts, &readers) {
                    let (a, b) = (find(&mut parent, p), find(&mut parent, i));
                    parent[a] = b;
                }
            }
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, nd) in nodes.iter().enumerate() {
            if nd.is_some() {
                let r = find(&mut parent, i);
                groups[r].push(i);
            }
        }
        let mut emit: Vec<Option<Fused>> = (0..n).map(|_| None).collect();
        let mut skip = vec![false; n];
        for members in groups.iter().filter(|g| g.len() >= 2) {
            let Some(f) = fuse(net, members, &nodes, &counts, &readers) else { continue };
            for &m in members {
                skip[m] = true;
            }
            let root = f.root;
            emit[root] = Some(f);
        }
        if emit.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            if let Some(f) = emit[i].take() {
                let inputs: Vec<Option<TensorId>> =
                    f.inputs.iter().map(|&t| rb.map(t).map(Some)).collect::<Result<_, _>>()?;
                let mut attrs = Attributes::new();
                attrs.set(PROGRAM_ATTR, Attribute::Strings(f.program.to_strings()));
                let replaced = f.members.iter().map(|&m| &net.layers()[m]);
                attrs.set(spec::FUSED_NODES_ATTR, Attribute::Strings(spec::merged_fused_nodes(replaced)));
                rb.add_layer(&layer.name, KILN_ELEMENTWISE, attrs, &inputs, &[layer.outputs[0]])?;
            } else if !skip[i] {
                rb.copy_layer(layer)?;
            }
        }
        Ok(Some(rb.finish()?))
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// A layer that can be part of a chain: the tensors its instruction reads (in order) and the
/// instruction. Scalar constants it reads as parameters (Clip's bounds) are not operands.
struct Node {
    operands: Vec<TensorId>,
    instr: Instr,
    dtype: DType,
}

fn node(net: &Network, layer: &Layer) -> Option<Node> {
    if layer.outputs.len() != 1 || !layer.implicit_inputs.is_empty() {
        return None;
    }
    let dtype = tensor_type(net, layer.outputs[0]?)?.dtype;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return None;
    }
    let x = layer.inputs.first().copied().flatten()?;
    let same = |id: TensorId| tensor_type(net, id).is_some_and(|t| t.dtype == dtype);
    if !same(x) {
        return None;
    }
    let f = |name: &str, default: f32| layer.attrs.float(name, default).ok().map(|v| v as f64);
    if let Some(op) = BinaryOp::parse(&layer.op) {
        let y = match layer.inputs.as_slice() {
            [_, Some(y)] => *y,
            _ => return None,
        };
        // Two constants: constant folding's business. Pow's exponent may have another dtype
        // only as a scalar constant folded into the program.
        let both_constant = net.tensor(x).constant().is_some() && net.tensor(y).constant().is_some();
        let pow_exponent = op == BinaryOp::Pow && scalar_constant(net, y, x, dtype).is_some();
        if both_constant || !(same(y) || pow_exponent) {
            return None;
        }
        return Some(Node { operands: vec![x, y], instr: Instr::Binary(op), dtype });
    }
    let op = match layer.op.as_str() {
        "Clip" => {
            if layer.inputs.len() > 3 {
                return None;
            }
            let bound = |i: usize, default: f64| match layer.inputs.get(i).copied().flatten() {
                None => Some(default),
                Some(id) => scalar_constant(net, id, x, dtype),
            };
            UnaryOp::Clip { min: bound(1, f64::NEG_INFINITY)?, max: bound(2, f64::INFINITY)? }
        }
        "Gelu" => match layer.attrs.string("approximate", "none".into()).ok()?.as_str() {
            "none" => UnaryOp::Gelu,
            "tanh" => UnaryOp::GeluTanh,
            _ => return None,
        },
        "LeakyRelu" => UnaryOp::LeakyRelu { alpha: f("alpha", 0.01)? },
        "HardSigmoid" => UnaryOp::HardSigmoid { alpha: f("alpha", 0.2)?, beta: f("beta", 0.5)? },
        "Elu" => UnaryOp::Elu { alpha: f("alpha", 1.0)? },
        "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Log" | "Sqrt" | "Erf" | "Neg" | "Abs" | "Reciprocal" | "Softplus"
        | "Softsign" | "Floor" | "Ceil" | "Sin" | "Cos" | "HardSwish" => UnaryOp::parse(&layer.op, &[]).ok()?,
        _ => return None,
    };
    if layer.inputs.len() != 1 && !matches!(op, UnaryOp::Clip { .. }) {
        return None;
    }
    Some(Node { operands: vec![x], instr: Instr::Unary(op), dtype })
}

/// The value of `id` if it is a one-element constant that `dtype` holds exactly and whose rank
/// is at most that of `beside` (the other operand), so that leaving it out of the layer's
/// inputs cannot change the broadcast output shape.
fn scalar_constant(net: &Network, id: TensorId, beside: TensorId, dtype: DType) -> Option<f64> {
    let c = net.tensor(id).constant()?;
    if c.len() != 1 || c.dtype() == DType::Bool || c.rank() > tensor_type(net, beside)?.shape.as_ref()?.len() {
        return None;
    }
    let v = c.to_f64_vec()[0];
    let exact = match dtype {
        DType::F32 => (v as f32) as f64 == v,
        _ => true,
    };
    (exact && !v.is_nan()).then_some(v)
}

/// The chain layer producing operand `t` of layer `reader`, when `t` joins them (one reader,
/// not a network output).
fn inner_producer(
    net: &Network,
    t: TensorId,
    reader: usize,
    nodes: &[Option<Node>],
    counts: &[usize],
    readers: &[Vec<usize>],
) -> Option<usize> {
    let (p, _) = crate::passes::producer(net, t)?;
    let (pn, rn) = (nodes[p].as_ref()?, nodes[reader].as_ref()?);
    (counts[t.0] == 1 && readers[t.0] == [reader] && pn.dtype == rn.dtype).then_some(p)
}

/// One fused chain.
struct Fused {
    root: usize,
    members: Vec<usize>,
    inputs: Vec<TensorId>,
    program: Program,
}

fn fuse(
    net: &Network,
    members: &[usize],
    nodes: &[Option<Node>],
    counts: &[usize],
    readers: &[Vec<usize>],
) -> Option<Fused> {
    // The root: the member whose output leaves the chain (the last one; members are sorted).
    let root = *members.last()?;
    let mut b = Builder { net, nodes, counts, readers, instrs: Vec::new(), inputs: Vec::new(), visited: 0 };
    b.emit(root)?;
    if b.visited != members.len() || b.inputs.is_empty() {
        return None;
    }
    let program = Program::new(b.instrs).ok()?;
    Some(Fused { root, members: members.to_vec(), inputs: b.inputs, program })
}

struct Builder<'a> {
    net: &'a Network,
    nodes: &'a [Option<Node>],
    counts: &'a [usize],
    readers: &'a [Vec<usize>],
    instrs: Vec<Instr>,
    inputs: Vec<TensorId>,
    visited: usize,
}

impl Builder<'_> {
    /// Postfix code for layer `i`: its operands, then its instruction.
    fn emit(&mut self, i: usize) -> Option<()> {
        let nd = self.nodes[i].as_ref()?;
        self.visited += 1;
        if self.instrs.len() > kiln_ir::elementwise_program::MAX_PROGRAM_LEN {
            return None;
        }
        for (pos, &t) in nd.operands.iter().enumerate() {
            if let Some(p) = inner_producer(self.net, t, i, self.nodes, self.counts, self.readers) {
                self.emit(p)?;
                continue;
            }
            let other = nd.operands.get(1 - pos.min(1)).copied().filter(|_| nd.operands.len() == 2);
            if let Some(v) = other.and_then(|o| scalar_constant(self.net, t, o, nd.dtype)) {
                self.instrs.push(Instr::Const(v));
                continue;
            }
            if tensor_type(self.net, t).map(|ty| ty.dtype) != Some(nd.dtype) {
                return None;
            }
            let k = match self.inputs.iter().position(|&x| x == t) {
                Some(k) => k,
                None => {
                    self.inputs.push(t);
                    self.inputs.len() - 1
                }
            };
            self.instrs.push(Instr::Input(k));
        }
        self.instrs.push(nd.instr);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::fuse_epilogue::tests::assert_close;
    use crate::passes::test_support::*;
    use kiln_ir::Tensor;

    fn ops(net: &Network) -> Vec<&str> {
        net.layers().iter().map(|l| l.op.as_str()).collect()
    }

    fn scalar(net: &mut Network, name: &str, v: f32) -> TensorId {
        net.add_constant(name, Tensor::scalar(v)).unwrap()
    }

    #[test]
    fn decomposed_gelu_is_one_layer_with_the_same_outputs() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3, 8]);
        let sqrt2 = scalar(&mut net, "sqrt2", std::f32::consts::SQRT_2);
        let one = scalar(&mut net, "one", 1.0);
        let half = scalar(&mut net, "half", 0.5);
        let d = layer(&mut net, "div", "Div", Attributes::new(), &[x, sqrt2]);
        let e = layer(&mut net, "erf", "Erf", Attributes::new(), &[d]);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[e, one]);
        let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[x, a]);
        let y = layer(&mut net, "mul2", "Mul", Attributes::new(), &[m, half]);
        net.mark_output(y).unwrap();
        let out = FuseElementwiseChain.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec![KILN_ELEMENTWISE]);
        let l = &out.layers()[0];
        assert_eq!(l.name, "mul2");
        assert_eq!(l.inputs.len(), 1, "x once, the scalars inside the program");
        assert_eq!(spec::fused_nodes(l), vec!["div", "erf", "add", "mul", "mul2"]);
        assert_eq!(out.tensor(out.outputs()[0]).name, "mul2_out");
        assert_same_outputs(&net, &out, &[("x", values(&[2, 3, 8], 0.5))]);
    }

    #[test]
    fn broadcast_inputs_and_vector_constants_become_inputs() {
        // y = Clip(Sigmoid((x - m) * s) + b, 0, 1) ^ 2 with x [2, 4, 5], m [4, 1], s [5] const.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 4, 5]);
        let m = input(&mut net, "m", &[4, 1]);
        let s = net.add_constant("s", values(&[5], 3.0)).unwrap();
        let b = input(&mut net, "b", &[1, 1, 5]);
        let sub = layer(&mut net, "sub", "Sub", Attributes::new(), &[x, m]);
        let mul = layer(&mut net, "mul", "Mul", Attributes::new(), &[sub, s]);
        let sig = layer(&mut net, "sig", "Sigmoid", Attributes::new(), &[mul]);
        let add = layer(&mut net, "add", "Add", Attributes::new(), &[sig, b]);
        let (lo, hi) = (scalar(&mut net, "lo", 0.0), scalar(&mut net, "hi", 1.0));
        let clip = layer(&mut net, "clip", "Clip", Attributes::new(), &[add, lo, hi]);
        let two = net.add_constant("two", Tensor::scalar(2i64)).unwrap();
        let y = layer(&mut net, "pow", "Pow", Attributes::new(), &[clip, two]);
        net.mark_output(y).unwrap();
        let out = FuseElementwiseChain.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec![KILN_ELEMENTWISE]);
        assert_eq!(out.layers()[0].inputs.len(), 4);
        let inputs = [("x", values(&[2, 4, 5], 0.5)), ("m", values(&[4, 1], 1.5)), ("b", values(&[1, 1, 5], 2.5))];
        assert_same_outputs(&net, &out, &inputs);
    }

    #[test]
    fn second_readers_outputs_and_lone_layers_split_chains() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[3, 4]);
        let a = layer(&mut net, "exp", "Exp", Attributes::new(), &[x]);
        let b = layer(&mut net, "neg", "Neg", Attributes::new(), &[a]);
        // `b` has two readers: the chain {exp, neg} ends there.
        let c = layer(&mut net, "tanh", "Tanh", Attributes::new(), &[b]);
        let d = layer(&mut net, "abs", "Abs", Attributes::new(), &[b]);
        let e = layer(&mut net, "sum", "Add", Attributes::new(), &[c, d]);
        // `e` is an output: the chain {tanh, abs, sum} ends there; `relu` is alone.
        let f = layer(&mut net, "relu", "Relu", Attributes::new(), &[e]);
        net.mark_output(e).unwrap();
        net.mark_output(f).unwrap();
        let out = FuseElementwiseChain.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec![KILN_ELEMENTWISE, KILN_ELEMENTWISE, "Relu"]);
        assert_eq!(spec::fused_nodes(&out.layers()[1]), vec!["tanh", "abs", "sum"]);
        assert_same_outputs(&net, &out, &[("x", values(&[3, 4], 0.5))]);
        // Nothing left to do.
        assert!(FuseElementwiseChain.run(&out).unwrap().is_none());
    }

    #[test]
    fn integer_chains_and_shape_changing_scalars_stay() {
        let mut net = Network::new("t");
        let x = net.add_input("x", kiln_ir::ValueType::tensor(DType::I64, kiln_ir::known_shape(&[4]))).unwrap();
        let a = layer(&mut net, "neg", "Neg", Attributes::new(), &[x]);
        let y = layer(&mut net, "abs", "Abs", Attributes::new(), &[a]);
        net.mark_output(y).unwrap();
        assert!(FuseElementwiseChain.run(&net).unwrap().is_none());
        // A [1, 1] "scalar" added to a [4] vector makes the output [1, 4]: it must stay an
        // input of the fused layer, and the output keeps its shape.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[4]);
        let c = net.add_constant("c", Tensor::from_vec(vec![1, 1], vec![0.5f32]).unwrap()).unwrap();
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[x, c]);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[a]);
        net.mark_output(y).unwrap();
        let out = FuseElementwiseChain.run(&net).unwrap().expect("changed");
        assert_eq!(out.layers()[0].inputs.len(), 2);
        assert_same_outputs(&net, &out, &[("x", values(&[4], 0.5))]);
    }

    #[test]
    fn the_epilogue_takes_its_part_first() {
        // Conv → Add(bias) → Relu → Mul(2) → Add(1): the bias and Relu go into the Conv, the
        // rest becomes one chain.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 5, 5]);
        let w = net.add_constant("w", values(&[3, 2, 3, 3], 1.0)).unwrap();
        let conv = layer(&mut net, "conv", "Conv", Attributes::new(), &[x, w]);
        let bias = net.add_constant("bias", values(&[3, 1, 1], 2.0)).unwrap();
        let a = layer(&mut net, "bias_add", "Add", Attributes::new(), &[conv, bias]);
        let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[a]);
        let two = scalar(&mut net, "two", 2.0);
        let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[r, two]);
        let one = scalar(&mut net, "one", 1.0);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[m, one]);
        net.mark_output(y).unwrap();
        let (out, _) = crate::PassManager::simplify().run(net.clone()).unwrap();
        assert_eq!(ops(&out), vec!["Conv", KILN_ELEMENTWISE]);
        assert_close(&net, &out, &[("x", values(&[1, 2, 5, 5], 0.5))], 1e-5);
    }
}
