//! Epilogue fusion: what follows a Conv / Gemm / MatMul element by element — a bias Add, a
//! residual Add, one activation — is folded into that layer, which then computes
//! `y = act(op(...) + bias + residual)` while its output is still in cache (the fused formats:
//! `kiln_ir::activation`).
//!
//! Walking forward from the product, through tensors with exactly one reader:
//! - `Add(y, c)` / `Add(c, y)` with a constant `c` that is constant along every axis but the
//!   output channel (Conv: axis 1; Gemm / MatMul: the last axis) is a bias; biases are summed
//!   with the layer's own (constant) bias;
//! - `Add(y, r)` with a non-constant `r` of exactly the output's dtype and static shape is the
//!   residual (at most one);
//! - Relu, Clip with constant bounds (Relu6), Sigmoid, SiLU spelled `Mul(y, Sigmoid(y))`, Gelu
//!   (either approximation), HardSwish, HardSigmoid, LeakyRelu or Tanh is the activation; it
//!   ends the pattern, since the fused formula adds everything before activating.
//!
//! Only f32 and f64 layers are fused: the kernels compute in that precision, so the fused layer
//! differs from the unfused ones only in the order of the additions (a bias added before the
//! product instead of after it).

use crate::passes::reader_counts;
use crate::{Pass, Rebuilder};
use kiln_ir::{
    spec, Activation, Attribute, DType, Dim, IrError, Layer, Network, Tensor, TensorId, TensorType, ValueType,
};

pub struct FuseEpilogue;

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        "fuse-epilogue"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let counts = reader_counts(net);
        let readers = reader_layers(net);
        let n = net.layers().len();
        let mut claimed = vec![false; n];
        // Layer index where a fused layer is emitted → its plan.
        let mut emit: Vec<Option<Plan>> = (0..n).map(|_| None).collect();
        for i in 0..n {
            if claimed[i] {
                continue;
            }
            let Some(p) = plan(net, i, &counts, &readers, &claimed) else { continue };
            claimed[i] = true;
            for &c in &p.consumers {
                claimed[c] = true;
            }
            let last = *p.consumers.last().expect("a plan replaces at least one consumer");
            emit[last] = Some(p);
        }
        if emit.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            match emit[i].take() {
                Some(p) => build(&mut rb, net, &p)?,
                None if claimed[i] => {}
                None => rb.copy_layer(layer)?,
            }
        }
        Ok(Some(rb.finish()?))
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Conv,
    Gemm,
    MatMul,
}

/// One fusion: the product layer and what follows it.
struct Plan {
    kind: Kind,
    anchor: usize,
    /// The layers after the anchor that the fused layer replaces, in execution order.
    consumers: Vec<usize>,
    /// Bias vectors (one value per output channel) added after the product.
    biases: Vec<Vec<f64>>,
    residual: Option<TensorId>,
    act: Option<Activation>,
    /// The tensor the fused layer produces (the last replaced layer's output).
    out: TensorId,
}

/// For each tensor, the layers that read it as a positional input (once per occurrence).
pub(crate) fn reader_layers(net: &Network) -> Vec<Vec<usize>> {
    let mut r = vec![Vec::new(); net.tensors().len()];
    for (i, layer) in net.layers().iter().enumerate() {
        for id in layer.inputs.iter().flatten() {
            r[id.0].push(i);
        }
    }
    r
}

/// A tensor's static tensor type.
pub(crate) fn tensor_type(net: &Network, id: TensorId) -> Option<&TensorType> {
    match &net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => Some(t),
        _ => None,
    }
}

/// Do two tensors provably have the same dtype and shape (every dim known or the same symbol)?
pub(crate) fn same_static_type(net: &Network, a: TensorId, b: TensorId) -> bool {
    let (Some(ta), Some(tb)) = (tensor_type(net, a), tensor_type(net, b)) else { return false };
    let (Some(sa), Some(sb)) = (&ta.shape, &tb.shape) else { return false };
    ta.dtype == tb.dtype
        && sa.len() == sb.len()
        && sa.iter().zip(sb).all(|(x, y)| match (x, y) {
            (Dim::Known(p), Dim::Known(q)) => p == q,
            (Dim::Symbol(p), Dim::Symbol(q)) => p == q,
            _ => false,
        })
}

/// The per-channel values of a constant `c` added to an output of rank `out_rank` whose
/// channel axis `axis` has `channels` entries, if `c` is constant along every other axis and
/// does not broadcast the output to a larger shape.
pub(crate) fn bias_vector(c: &Tensor, out_rank: usize, axis: usize, channels: usize) -> Option<Vec<f64>> {
    if c.rank() > out_rank || !c.dtype().is_float() {
        return None;
    }
    let lead = out_rank - c.rank();
    for (i, &d) in c.shape().iter().enumerate() {
        let ok = if lead + i == axis { d == 1 || d == channels } else { d == 1 };
        if !ok {
            return None;
        }
    }
    let v = c.to_f64_vec();
    match v.len() {
        1 => Some(vec![v[0]; channels]),
        n if n == channels => Some(v),
        _ => None,
    }
}

/// The activation a layer reading `input` computes, if it is one the fused layers support.
pub(crate) fn activation_of(net: &Network, layer: &Layer, input: TensorId) -> Option<Activation> {
    if layer.inputs.first().copied().flatten() != Some(input) || layer.outputs.len() != 1 {
        return None;
    }
    let f = |name: &str, default: f32| layer.attrs.float(name, default).ok();
    Some(match layer.op.as_str() {
        "Relu" => Activation::Relu,
        "Sigmoid" => Activation::Sigmoid,
        "Tanh" => Activation::Tanh,
        "HardSwish" => Activation::HardSwish,
        "HardSigmoid" => Activation::HardSigmoid { alpha: f("alpha", 0.2)?, beta: f("beta", 0.5)? },
        "LeakyRelu" => Activation::LeakyRelu { alpha: f("alpha", 0.01)? },
        "Gelu" => match layer.attrs.string("approximate", "none".into()).ok()?.as_str() {
            "none" => Activation::GeluErf,
            "tanh" => Activation::GeluTanh,
            _ => return None,
        },
        "Clip" => {
            let bound = |i: usize, default: f32| -> Option<f32> {
                match layer.inputs.get(i).copied().flatten() {
                    None => Some(default),
                    Some(id) => {
                        let c = net.tensor(id).constant()?;
                        let v = c.to_f64_vec();
                        // The bound must be one scalar that f32 holds exactly.
                        (v.len() == 1 && c.dtype().is_float() && (v[0] as f32) as f64 == v[0] && !v[0].is_nan())
                            .then_some(v[0] as f32)
                    }
                }
            };
            if layer.inputs.len() > 3 {
                return None;
            }
            Activation::Clip { min: bound(1, f32::NEG_INFINITY)?, max: bound(2, f32::INFINITY)? }
        }
        _ => return None,
    })
}

/// `Mul(t, Sigmoid(t))` reading `t` (which has exactly these two readers): (Sigmoid, Mul).
pub(crate) fn silu_of(net: &Network, t: TensorId, counts: &[usize], readers: &[Vec<usize>]) -> Option<(usize, usize)> {
    let r = &readers[t.0];
    if counts[t.0] != 2 || r.len() != 2 || r[0] == r[1] {
        return None;
    }
    let (si, mi) = if net.layers()[r[0]].op == "Sigmoid" { (r[0], r[1]) } else { (r[1], r[0]) };
    let (s, m) = (&net.layers()[si], &net.layers()[mi]);
    if s.op != "Sigmoid" || m.op != "Mul" || s.inputs.len() != 1 || m.inputs.len() != 2 {
        return None;
    }
    if s.outputs.len() != 1 || m.outputs.len() != 1 || m.outputs[0].is_none() {
        return None;
    }
    let s_out = s.outputs[0]?;
    let ins = [m.inputs[0]?, m.inputs[1]?];
    if counts[s_out.0] != 1 || !(ins == [t, s_out] || ins == [s_out, t]) {
        return None;
    }
    Some((si, mi))
}

fn plan(net: &Network, anchor: usize, counts: &[usize], readers: &[Vec<usize>], claimed: &[bool]) -> Option<Plan> {
    let layer = &net.layers()[anchor];
    let kind = match layer.op.as_str() {
        "Conv" => Kind::Conv,
        "Gemm" => Kind::Gemm,
        "MatMul" => Kind::MatMul,
        _ => return None,
    };
    if layer.outputs.len() != 1 || !matches!(Activation::from_attrs(&layer.attrs), Ok(None)) {
        return None;
    }
    let t0 = layer.outputs[0]?;
    let ty = tensor_type(net, t0)?;
    if !matches!(ty.dtype, DType::F32 | DType::F64) {
        return None;
    }
    let rank = ty.shape.as_ref()?.len();
    let axis = match kind {
        Kind::Conv if rank >= 3 => 1,
        Kind::Gemm if rank == 2 => 1,
        Kind::MatMul if rank >= 1 => rank - 1,
        _ => return None,
    };
    if kind == Kind::MatMul {
        // The fused MatMul's bias runs along B's last dim: B must be at least 2-D.
        let b = layer.inputs.get(1).copied().flatten()?;
        if tensor_type(net, b)?.shape.as_ref()?.len() < 2 || layer.inputs.len() > 4 {
            return None;
        }
    }
    let channels = ty.shape.as_ref()?[axis].known();
    // A bias can only be summed into a constant (or absent) one.
    let bias_constant = match layer.inputs.get(2).copied().flatten() {
        None => true,
        Some(id) => net.tensor(id).constant().is_some(),
    };
    let mut p = Plan { kind, anchor, consumers: Vec::new(), biases: Vec::new(), residual: None, act: None, out: t0 };
    let has_residual = layer.inputs.get(3).copied().flatten().is_some();
    let mut cur = t0;
    loop {
        if let Some((s, m)) = silu_of(net, cur, counts, readers) {
            if !claimed[s] && !claimed[m] {
                p.act = Some(Activation::Silu);
                p.consumers.extend([s, m]);
                cur = net.layers()[m].outputs[0]?;
            }
            break;
        }
        if counts[cur.0] != 1 || readers[cur.0].len() != 1 {
            break;
        }
        let ri = readers[cur.0][0];
        let r = &net.layers()[ri];
        if claimed[ri] || r.outputs.len() != 1 {
            break;
        }
        let Some(out) = r.outputs[0] else { break };
        if r.op == "Add" {
            let (Some(a), Some(b)) = (r.inputs.first().copied().flatten(), r.inputs.get(1).copied().flatten()) else {
                break;
            };
            let other = if a == cur { b } else { a };
            if r.inputs.len() != 2 || other == cur {
                break;
            }
            // The Add must not broadcast the output to a larger shape: a bias is 1 along every
            // axis but the (known) channel axis, where it has the channel count; a residual has
            // provably the output's shape.
            if let Some(c) = net.tensor(other).constant() {
                let Some(v) = channels.and_then(|m| bias_vector(c, rank, axis, m)) else { break };
                if !bias_constant || c.dtype() != ty.dtype {
                    break;
                }
                p.biases.push(v);
            } else {
                if has_residual
                    || p.residual.is_some()
                    || !same_static_type(net, other, t0)
                    || !same_static_type(net, out, t0)
                {
                    break;
                }
                p.residual = Some(other);
            }
            p.consumers.push(ri);
            cur = out;
            continue;
        }
        if let Some(act) = activation_of(net, r, cur) {
            p.act = Some(act);
            p.consumers.push(ri);
            cur = out;
        }
        break;
    }
    p.out = cur;
    (!p.consumers.is_empty()).then_some(p)
}

/// Emit the fused layer of `p` (at the position of its last consumer).
fn build(rb: &mut Rebuilder, net: &Network, p: &Plan) -> Result<(), IrError> {
    let layer = &net.layers()[p.anchor];
    let mut inputs = rb.map_inputs(&layer.inputs[..2.min(layer.inputs.len())])?;
    let mut attrs = layer.attrs.clone();
    let old_bias = layer.inputs.get(2).copied().flatten();
    let bias = if p.biases.is_empty() {
        old_bias.map(|id| rb.map(id)).transpose()?
    } else {
        let dtype = tensor_type(net, p.out).map_or(DType::F32, |t| t.dtype);
        let n = p.biases[0].len();
        let sum: Vec<f64> = (0..n).map(|j| p.biases.iter().map(|b| b[j]).sum::<f64>()).collect();
        let old = old_bias.and_then(|id| net.tensor(id).constant());
        let value = match p.kind {
            Kind::Gemm => {
                let (shape, v) = gemm_c(old, layer.attrs.float("beta", 1.0).map_err(|m| invalid(layer, m))?, &sum)
                    .ok_or_else(|| invalid(layer, "C does not broadcast to the output".into()))?;
                attrs.set("beta", 1.0f32);
                to_tensor(dtype, shape, &v)
            }
            _ => {
                let old = old.map(|t| t.to_f64_vec()).unwrap_or_else(|| vec![0.0; n]);
                if old.len() != n {
                    return Err(invalid(layer, format!("bias has {} entries, expected {n}", old.len())));
                }
                to_tensor(dtype, vec![n], &old.iter().zip(&sum).map(|(a, b)| a + b).collect::<Vec<_>>())
            }
        }
        .ok_or_else(|| invalid(layer, format!("cannot build a {dtype} bias")))?;
        let name = unique_name(rb, &format!("{}::fused_bias", layer.name));
        Some(rb.constant_named(&name, value)?)
    };
    let residual = match (p.residual, layer.inputs.get(3).copied().flatten()) {
        (Some(r), _) | (None, Some(r)) => Some(rb.map(r)?),
        (None, None) => None,
    };
    inputs.push(bias);
    if residual.is_some() {
        inputs.push(residual);
    }
    while inputs.len() > 2 && inputs.last() == Some(&None) {
        inputs.pop();
    }
    if let Some(act) = p.act {
        act.to_attrs(&mut attrs);
    }
    let replaced = std::iter::once(layer).chain(p.consumers.iter().map(|&c| &net.layers()[c]));
    attrs.set(spec::FUSED_NODES_ATTR, Attribute::Strings(spec::merged_fused_nodes(replaced)));
    rb.add_layer(&layer.name, &layer.op, attrs, &inputs, &[Some(p.out)])?;
    Ok(())
}

/// Gemm's new C for beta = 1: `beta · C + bias` (bias along the last dim), as (shape, values);
/// C keeps its rows if it has more than one.
pub(crate) fn gemm_c(c: Option<&Tensor>, beta: f32, bias: &[f64]) -> Option<(Vec<usize>, Vec<f64>)> {
    let n = bias.len();
    let beta = beta as f64;
    let Some(c) = c else { return Some((vec![n], bias.to_vec())) };
    let (cm, cn) = match c.shape() {
        [] => (1, 1),
        [x] => (1, *x),
        [x, y] => (*x, *y),
        _ => return None,
    };
    if cn != 1 && cn != n {
        return None;
    }
    let cv = c.to_f64_vec();
    let (rs, cs) = (if cm == 1 { 0 } else { cn }, usize::from(cn != 1));
    // beta == 0 leaves C out (the kernel does too, so NaN/Inf in C do not leak).
    let at = |i: usize, j: usize| if beta == 0.0 { 0.0 } else { beta * cv[i * rs + j * cs] };
    let v = (0..cm).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| at(i, j) + bias[j]).collect();
    Some((if cm == 1 { vec![n] } else { vec![cm, n] }, v))
}

/// An f32/f64 tensor holding `v` (the epilogue fuses only those dtypes).
pub(crate) fn to_tensor(dtype: DType, shape: Vec<usize>, v: &[f64]) -> Option<Tensor> {
    matches!(dtype, DType::F32 | DType::F64).then(|| super::pattern::float_tensor(dtype, shape, v)).flatten()
}

/// `base`, or `base#k`, whichever names no tensor of the source or the copy.
pub(crate) fn unique_name(rb: &Rebuilder, base: &str) -> String {
    let free = |n: &str| rb.src().tensor_by_name(n).is_none() && rb.dst().tensor_by_name(n).is_none();
    if free(base) {
        return base.to_string();
    }
    (1..).map(|k| format!("{base}#{k}")).find(|n| free(n)).expect("some suffix is free")
}

fn invalid(layer: &Layer, message: String) -> IrError {
    IrError::Layer { layer: layer.name.clone(), op: layer.op.clone(), message }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use kiln_ir::{Attributes, Value};
    use kiln_ir::{DType, Dim};
    use std::collections::HashMap;

    /// Run both networks on the same inputs; outputs must agree within `tol` (relative).
    pub(crate) fn assert_close(a: &Network, b: &Network, inputs: &[(&str, Tensor)], tol: f64) {
        let bind = || -> HashMap<String, Value> {
            inputs.iter().map(|(n, t)| (n.to_string(), Value::Tensor(t.clone()))).collect()
        };
        let ra = kiln_cpu::execute_named(a, bind()).unwrap();
        let rb = kiln_cpu::execute_named(b, bind()).unwrap();
        let names = |n: &Network| n.outputs().iter().map(|&id| n.tensor(id).name.clone()).collect::<Vec<_>>();
        assert_eq!(names(a), names(b), "output names");
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(&rb) {
            let (x, y) = (x.as_tensor().unwrap(), y.as_tensor().unwrap());
            assert_eq!(x.shape(), y.shape());
            let (xv, yv) = (x.to_f64_vec(), y.to_f64_vec());
            assert!(xv.iter().any(|&v| v != 0.0), "a test whose output is all zeros cannot fail");
            // Relative to the element, with the tensor's mean magnitude as the floor: a sum that
            // cancels to a small value keeps the rounding of its larger terms.
            let mean = xv.iter().map(|v| v.abs()).sum::<f64>() / xv.len() as f64;
            for (i, (p, q)) in xv.iter().zip(&yv).enumerate() {
                assert!((p - q).abs() <= tol * (p.abs() + mean), "element {i}: {p} vs {q}");
            }
        }
    }

    fn ops(net: &Network) -> Vec<&str> {
        net.layers().iter().map(|l| l.op.as_str()).collect()
    }

    fn constant(net: &mut Network, name: &str, shape: &[usize], seed: f32) -> TensorId {
        net.add_constant(name, values(shape, seed)).unwrap()
    }

    fn scalar(net: &mut Network, name: &str, v: f32) -> TensorId {
        net.add_constant(name, Tensor::scalar(v)).unwrap()
    }

    fn conv(net: &mut Network, name: &str, x: TensorId, c_in: usize, c_out: usize, bias: bool) -> TensorId {
        let w = constant(net, &format!("{name}_w"), &[c_out, c_in, 3, 3], 1.5);
        let mut ins = vec![x, w];
        if bias {
            ins.push(constant(net, &format!("{name}_b"), &[c_out], 2.5));
        }
        layer(net, name, "Conv", Attributes::new().with("pads", vec![1i64, 1, 1, 1]), &ins)
    }

    #[test]
    fn resnet_block_conv_bn_add_relu_is_one_conv() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 3, 6, 6]);
        let c = conv(&mut net, "conv", x, 3, 3, false);
        let p: Vec<TensorId> = ["scale", "beta", "mean"].iter().map(|n| constant(&mut net, n, &[3], 3.0)).collect();
        let var = net.add_constant("var", Tensor::from_vec(vec![3], vec![0.5f32, 1.0, 2.0]).unwrap()).unwrap();
        let bn = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[c, p[0], p[1], p[2], var]);
        let add = layer(&mut net, "add", "Add", Attributes::new(), &[bn, x]);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[add]);
        net.mark_output(y).unwrap();
        let (out, _) = crate::PassManager::simplify().run(net.clone()).unwrap();
        assert_eq!(ops(&out), vec!["Conv"]);
        let l = &out.layers()[0];
        assert_eq!(l.name, "conv");
        assert_eq!(spec::fused_nodes(l), vec!["conv", "bn", "add", "relu"]);
        assert_eq!(Activation::from_attrs(&l.attrs).unwrap(), Some(Activation::Relu));
        assert_eq!(out.tensor(out.outputs()[0]).name, "relu_out");
        assert_close(&net, &out, &[("x", values(&[1, 3, 6, 6], 0.25))], 1e-5);
    }

    #[test]
    fn bias_then_relu6_and_shortcut_without_activation() {
        // MobileNetV2: Conv → Clip(0, 6); Conv → Add(shortcut).
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 4, 5, 5]);
        let c1 = conv(&mut net, "c1", x, 4, 4, true);
        let b = constant(&mut net, "bias", &[1, 4, 1, 1], 4.0);
        let a = layer(&mut net, "addb", "Add", Attributes::new(), &[c1, b]);
        let (lo, hi) = (scalar(&mut net, "lo", 0.0), scalar(&mut net, "hi", 6.0));
        let r6 = layer(&mut net, "clip", "Clip", Attributes::new(), &[a, lo, hi]);
        let c2 = conv(&mut net, "c2", r6, 4, 4, true);
        let y = layer(&mut net, "res", "Add", Attributes::new(), &[x, c2]);
        net.mark_output(y).unwrap();
        let out = FuseEpilogue.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec!["Conv", "Conv"]);
        let l1 = &out.layers()[0];
        assert_eq!(Activation::from_attrs(&l1.attrs).unwrap(), Some(Activation::Clip { min: 0.0, max: 6.0 }));
        assert_eq!(l1.inputs.len(), 3, "biases summed into one input");
        let l2 = &out.layers()[1];
        assert_eq!(l2.inputs.len(), 4);
        assert_eq!(out.tensor(l2.inputs[3].unwrap()).name, "x");
        assert_eq!(Activation::from_attrs(&l2.attrs).unwrap(), None);
        assert_close(&net, &out, &[("x", values(&[2, 4, 5, 5], 0.5))], 1e-5);
    }

    #[test]
    fn bert_matmul_bias_first_then_residual() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3, 8]);
        let w = constant(&mut net, "w", &[8, 8], 1.0);
        let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
        let b = constant(&mut net, "b", &[8], 2.0);
        let biased = layer(&mut net, "bias", "Add", Attributes::new(), &[b, mm]);
        let y = layer(&mut net, "residual", "Add", Attributes::new(), &[biased, x]);
        net.mark_output(y).unwrap();
        let out = FuseEpilogue.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec!["MatMul"]);
        assert_eq!(out.layers()[0].inputs.len(), 4);
        assert_close(&net, &out, &[("x", values(&[2, 3, 8], 0.5))], 1e-5);
    }

    #[test]
    fn matmul_bias_gelu_both_forms_and_silu() {
        for approx in ["none", "tanh", "silu"] {
            let mut net = Network::new("t");
            let x = input(&mut net, "x", &[3, 8]);
            let w = constant(&mut net, "w", &[8, 16], 1.0);
            let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
            let b = constant(&mut net, "b", &[16], 2.0);
            let biased = layer(&mut net, "bias", "Add", Attributes::new(), &[mm, b]);
            let y = if approx == "silu" {
                let s = layer(&mut net, "sig", "Sigmoid", Attributes::new(), &[biased]);
                layer(&mut net, "mul", "Mul", Attributes::new(), &[s, biased])
            } else {
                layer(&mut net, "gelu", "Gelu", Attributes::new().with("approximate", approx), &[biased])
            };
            net.mark_output(y).unwrap();
            let out = FuseEpilogue.run(&net).unwrap().expect("changed");
            assert_eq!(ops(&out), vec!["MatMul"], "{approx}");
            let want = match approx {
                "none" => Activation::GeluErf,
                "tanh" => Activation::GeluTanh,
                _ => Activation::Silu,
            };
            assert_eq!(Activation::from_attrs(&out.layers()[0].attrs).unwrap(), Some(want));
            assert_close(&net, &out, &[("x", values(&[3, 8], 0.5))], 1e-5);
        }
    }

    #[test]
    fn every_activation_fuses_into_a_gemm_with_its_bias_summed() {
        let acts: Vec<(&str, Attributes)> = vec![
            ("Relu", Attributes::new()),
            ("Sigmoid", Attributes::new()),
            ("Tanh", Attributes::new()),
            ("HardSwish", Attributes::new()),
            ("HardSigmoid", Attributes::new().with("alpha", 0.3f32).with("beta", 0.4f32)),
            ("LeakyRelu", Attributes::new().with("alpha", 0.2f32)),
        ];
        for (op, attrs) in acts {
            let mut net = Network::new("t");
            let x = input(&mut net, "x", &[4, 6]);
            let w = constant(&mut net, "w", &[5, 6], 1.0);
            let c = constant(&mut net, "c", &[5], 3.0);
            let g = layer(
                &mut net,
                "gemm",
                "Gemm",
                Attributes::new().with("transB", 1i64).with("beta", 0.5f32).with("alpha", 1.5f32),
                &[x, w, c],
            );
            let b = constant(&mut net, "b", &[1, 5], 2.0);
            let biased = layer(&mut net, "bias", "Add", Attributes::new(), &[g, b]);
            let y = layer(&mut net, "act", op, attrs, &[biased]);
            net.mark_output(y).unwrap();
            let out = FuseEpilogue.run(&net).unwrap().expect("changed");
            assert_eq!(ops(&out), vec!["Gemm"], "{op}");
            assert_eq!(out.layers()[0].attrs.float("beta", 0.0).unwrap(), 1.0);
            assert_close(&net, &out, &[("x", values(&[4, 6], 0.5))], 1e-5);
        }
    }

    #[test]
    fn a_bias_fuses_into_a_product_of_unknown_rows_but_a_residual_needs_a_static_shape() {
        // BERT before its shape subgraphs fold: [?, ?, 768]-like products.
        let mut net = Network::new("t");
        let x = net
            .add_input("x", ValueType::tensor(DType::F32, vec![Dim::Unknown, Dim::Symbol("s".into()), Dim::Known(8)]))
            .unwrap();
        let w = constant(&mut net, "w", &[8, 8], 1.0);
        let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
        let b = constant(&mut net, "b", &[8], 2.0);
        let biased = layer(&mut net, "bias", "Add", Attributes::new(), &[b, mm]);
        let y = layer(&mut net, "residual", "Add", Attributes::new(), &[biased, x]);
        net.mark_output(y).unwrap();
        let out = FuseEpilogue.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec!["MatMul", "Add"]);
        assert_eq!(out.layers()[0].inputs.len(), 3);
        assert_close(&net, &out, &[("x", values(&[2, 3, 8], 0.5))], 1e-5);
    }

    #[test]
    fn a_second_reader_blocks_the_fusion() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let c = conv(&mut net, "conv", x, 2, 2, true);
        let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[c]);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[r, c]);
        net.mark_output(y).unwrap();
        assert!(FuseEpilogue.run(&net).unwrap().is_none());
        // A network output is a reader too.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let c = conv(&mut net, "conv", x, 2, 2, true);
        let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[c]);
        net.mark_output(c).unwrap();
        net.mark_output(r).unwrap();
        assert!(FuseEpilogue.run(&net).unwrap().is_none());
    }

    #[test]
    fn non_constant_bias_and_wrong_axis_are_not_fused() {
        // A non-constant per-channel tensor: not a bias (not constant) nor a residual (shape).
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let b = input(&mut net, "b", &[2, 1, 1]);
        let c = conv(&mut net, "conv", x, 2, 2, true);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[c, b]);
        net.mark_output(y).unwrap();
        assert!(FuseEpilogue.run(&net).unwrap().is_none());
        // A constant along the last (spatial) axis of a Conv output.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let c = conv(&mut net, "conv", x, 2, 2, true);
        let b = constant(&mut net, "b", &[1, 1, 1, 4], 1.0);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[c, b]);
        net.mark_output(y).unwrap();
        assert!(FuseEpilogue.run(&net).unwrap().is_none());
        // A MatMul bias along the rows, and one that broadcasts the output to a larger shape.
        for shape in [vec![3, 1], vec![2, 1, 8]] {
            let mut net = Network::new("t");
            let x = input(&mut net, "x", &[3, 8]);
            let w = constant(&mut net, "w", &[8, 8], 1.0);
            let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
            let b = constant(&mut net, "b", &shape, 2.0);
            let y = layer(&mut net, "add", "Add", Attributes::new(), &[mm, b]);
            net.mark_output(y).unwrap();
            assert!(FuseEpilogue.run(&net).unwrap().is_none(), "{shape:?}");
        }
    }

    #[test]
    fn a_residual_after_the_activation_stays_outside() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let c = conv(&mut net, "conv", x, 2, 2, true);
        let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[c]);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[r, x]);
        net.mark_output(y).unwrap();
        let out = FuseEpilogue.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec!["Conv", "Add"]);
        assert_eq!(out.layers()[0].inputs.len(), 3);
        assert_close(&net, &out, &[("x", values(&[1, 2, 4, 4], 0.5))], 1e-5);
        // Running again changes nothing: the activation ends the epilogue.
        assert!(FuseEpilogue.run(&out).unwrap().is_none());
    }

    #[test]
    fn two_convolutions_into_one_add_fuse_once() {
        // ResNet's downsampling block: Add(conv3, downsample) → Relu.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 4, 4]);
        let a = conv(&mut net, "a", x, 2, 3, true);
        let b = conv(&mut net, "b", x, 2, 3, false);
        let s = layer(&mut net, "add", "Add", Attributes::new(), &[a, b]);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[s]);
        net.mark_output(y).unwrap();
        let out = FuseEpilogue.run(&net).unwrap().expect("changed");
        assert_eq!(ops(&out), vec!["Conv", "Conv"]);
        assert_close(&net, &out, &[("x", values(&[1, 2, 4, 4], 0.5))], 1e-5);
    }
}
