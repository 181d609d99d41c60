//! Channel pruning: removes the channels that structured pruning zeroed.
//!
//! Every tensor whose channel axis has a known size and whose channels can all be sliced away
//! (it is the output of a product or of a layer that carries channels through) is a *member*.
//! Its channels join classes: layers that work per channel (element-wise ops, residual Adds,
//! pooling, depthwise convolutions, Flatten of `[N, C, 1, 1]`, Concat and Split along the channel
//! axis) put the channels they connect into one class, so the two sides of a residual Add are
//! one class per channel. A class goes as a whole, and only when every place that reads one of
//! its channels lets it go:
//!
//! - a product (Conv with group 1, Gemm, MatMul with constant 2-D weights) reading the channel
//!   either has all-zero weights for it, or the channel is provably constant `k` there and the
//!   product takes `k · Σ W[:, c]` into its bias. A Conv with padding sees zeros at the borders,
//!   so a constant input channel contributes a spatially varying amount: there only `k = 0`
//!   folds, otherwise the channel stays;
//! - nothing else reads it: a network output, an op that mixes channels in another way
//!   (LayerNorm, Reshape, Softmax, grouped convolution, ...) pins its channels.
//!
//! Constants come from producers whose weights for a channel are all zero (the channel is its
//! bias, after the fused activation if any) and are carried through the per-channel layers
//! (`relu(bias)`, `clip`, a depthwise conv of a constant without padding, pooling, ...).
//!
//! Producers lose the removed rows of their weights and bias, readers the removed input columns;
//! what fed only removed computation is left unread, for dead-layer elimination. A tensor never
//! loses all its channels (kernels do not take empty tensors): its first class stays.
//!
//! Weights must be f32 (other dtypes are left alone).

use crate::passes::pattern::{self, float_tensor, fresh_name, live_layers};
use crate::passes::prune::LayerChange;
use crate::{Pass, Rebuilder};
use kiln_ir::{Activation, Attribute, DType, Dim, IrError, Layer, Network, Tensor, TensorId, ValueType};

pub struct PruneChannels;

impl Pass for PruneChannels {
    fn name(&self) -> &'static str {
        "prune-channels"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        Ok(prune_channels(net)?.map(|(n, _)| n))
    }
}

/// The channel axis of a member tensor, its size and the index of its channel 0 among all
/// channels of all members.
#[derive(Clone, Copy, Debug)]
struct Member {
    axis: usize,
    channels: usize,
    base: usize,
}

/// A product's weights, seen from its channel axes.
#[derive(Clone, Debug)]
struct Product<'a> {
    kind: ProductKind,
    /// Weights as stored: Conv `[M, C, k...]`; Gemm `[K, N]` or `[N, K]` (transB); MatMul `[K, N]`.
    w: &'a [f32],
    w_shape: Vec<usize>,
    bias: Option<&'a [f32]>,
    /// Output and input channel counts.
    m: usize,
    c: usize,
    act: Option<Activation>,
    /// Conv: zero padding (a constant input channel then contributes unevenly at the borders).
    padded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ProductKind {
    Conv,
    Gemm { trans_b: bool },
    MatMul,
}

impl Product<'_> {
    /// `W[o, c]` summed over the kernel window.
    fn weight_sum(&self, o: usize, c: usize) -> f64 {
        match self.kind {
            ProductKind::Conv => {
                let k = self.w.len() / (self.m * self.c).max(1);
                self.w[(o * self.c + c) * k..][..k].iter().map(|&v| v as f64).sum()
            }
            ProductKind::Gemm { trans_b: true } => self.w[o * self.c + c] as f64,
            _ => self.w[c * self.m + o] as f64,
        }
    }

    fn out_channel_zero(&self, o: usize) -> bool {
        match self.kind {
            ProductKind::Conv => {
                let k = self.w.len() / self.m.max(1);
                self.w[o * k..][..k].iter().all(|&v| v == 0.0)
            }
            _ => (0..self.c).all(|c| self.weight_sum(o, c) == 0.0),
        }
    }

    fn in_channel_zero(&self, c: usize) -> bool {
        match self.kind {
            ProductKind::Conv => {
                let k = self.w.len() / (self.m * self.c).max(1);
                (0..self.m).all(|o| self.w[(o * self.c + c) * k..][..k].iter().all(|&v| v == 0.0))
            }
            _ => (0..self.m).all(|o| self.weight_sum(o, c) == 0.0),
        }
    }

    /// The value of output channel `o` when its weights are all zero.
    fn zero_channel_value(&self, o: usize) -> f64 {
        let b = self.bias.map_or(0.0, |b| b[if b.len() == 1 { 0 } else { o }] as f64);
        self.act.map_or(b, |a| a.apply_f64(b))
    }

    /// The weights with only output channels `outs` and input channels `ins`.
    fn sliced(&self, outs: &[usize], ins: &[usize]) -> (Vec<usize>, Vec<f32>) {
        match self.kind {
            ProductKind::Conv => {
                let k = self.w.len() / (self.m * self.c).max(1);
                let mut v = Vec::with_capacity(outs.len() * ins.len() * k);
                for &o in outs {
                    for &c in ins {
                        v.extend_from_slice(&self.w[(o * self.c + c) * k..][..k]);
                    }
                }
                let mut shape = self.w_shape.clone();
                shape[0] = outs.len();
                shape[1] = ins.len();
                (shape, v)
            }
            ProductKind::Gemm { trans_b: true } => {
                let v = outs.iter().flat_map(|&o| ins.iter().map(move |&c| self.w[o * self.c + c])).collect();
                (vec![outs.len(), ins.len()], v)
            }
            _ => {
                let v = ins.iter().flat_map(|&c| outs.iter().map(move |&o| self.w[c * self.m + o])).collect();
                (vec![ins.len(), outs.len()], v)
            }
        }
    }
}

/// The static shape of a tensor, `None` when its rank is unknown.
fn shape_of(net: &Network, id: TensorId) -> Option<&[Dim]> {
    match &net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => t.shape.as_deref(),
        _ => None,
    }
}

fn dtype_of(net: &Network, id: TensorId) -> Option<DType> {
    match &net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => Some(t.dtype),
        _ => None,
    }
}

fn known(d: &Dim) -> Option<usize> {
    match d {
        Dim::Known(n) => Some(*n),
        _ => None,
    }
}

fn f32_constant(net: &Network, id: Option<TensorId>) -> Option<&[f32]> {
    let t = net.tensor(id?).constant()?;
    (t.dtype() == DType::F32).then(|| t.as_slice::<f32>().ok()).flatten()
}

/// Attributes of a Conv / Gemm / MatMul that this pass understands (anything else, such as a
/// quantization or layout attribute a later pass adds, makes the layer opaque).
fn plain_attrs(layer: &Layer, allowed: &[&str]) -> bool {
    layer.attrs.iter().all(|(k, _)| {
        allowed.contains(&k.as_str())
            || k == kiln_ir::spec::FUSED_NODES_ATTR
            || k == kiln_ir::activation::ACTIVATION_ATTR
            || k == kiln_ir::activation::ACTIVATION_PARAMS_ATTR
    })
}

const CONV_ATTRS: &[&str] = &["dilations", "group", "kernel_shape", "pads", "strides", "auto_pad"];

/// The product a layer computes, if it is one this pass can slice: Conv with group 1, Gemm
/// (no transA, alpha = beta = 1, C per column or scalar), MatMul with a constant 2-D B.
fn product<'a>(net: &'a Network, layer: &'a Layer) -> Option<Product<'a>> {
    let input = |i: usize| layer.inputs.get(i).copied().flatten();
    if layer.inputs.len() > 3 || dtype_of(net, input(0)?)? != DType::F32 {
        return None;
    }
    let act = Activation::from_attrs(&layer.attrs).ok()?;
    let w_t = net.tensor(input(1)?).constant()?;
    let w = f32_constant(net, input(1))?;
    let bias = match input(2) {
        None => None,
        Some(id) => Some(f32_constant(net, Some(id))?),
    };
    let w_shape = w_t.shape().to_vec();
    let (kind, m, c, padded) = match layer.op.as_str() {
        "Conv" => {
            if !plain_attrs(layer, CONV_ATTRS) || layer.attrs.int("group", 1).ok()? != 1 || w_shape.len() < 3 {
                return None;
            }
            let auto = layer.attrs.string("auto_pad", "NOTSET".into()).ok()?;
            let pads = layer.attrs.ints("pads", Vec::new()).ok()?;
            let padded = !(auto == "VALID" || (auto == "NOTSET" && pads.iter().all(|&p| p == 0)));
            (ProductKind::Conv, w_shape[0], w_shape[1], padded)
        }
        "Gemm" => {
            if !plain_attrs(layer, &["alpha", "beta", "transA", "transB"]) || w_shape.len() != 2 {
                return None;
            }
            let (alpha, beta) = (layer.attrs.float("alpha", 1.0).ok()?, layer.attrs.float("beta", 1.0).ok()?);
            if layer.attrs.int("transA", 0).ok()? != 0 || alpha != 1.0 || (bias.is_some() && beta != 1.0) {
                return None;
            }
            let trans_b = layer.attrs.int("transB", 0).ok()? != 0;
            let (m, c) = if trans_b { (w_shape[0], w_shape[1]) } else { (w_shape[1], w_shape[0]) };
            // C must be per output column (or one value), not per row.
            if let Some(b) = input(2) {
                let s = net.tensor(b).constant()?.shape();
                if !(s.iter().product::<usize>() == 1 || s == [m] || s == [1, m]) {
                    return None;
                }
            }
            (ProductKind::Gemm { trans_b }, m, c, false)
        }
        "MatMul" => {
            if !plain_attrs(layer, &[]) || w_shape.len() != 2 {
                return None;
            }
            (ProductKind::MatMul, w_shape[1], w_shape[0], false)
        }
        _ => return None,
    };
    if let Some(b) = bias {
        if b.len() != m && b.len() != 1 {
            return None;
        }
    }
    Some(Product { kind, w, w_shape, bias, m, c, act, padded })
}

/// A depthwise convolution (group = channels, one filter per channel): it maps channel `c` to
/// channel `c`, so it carries classes through.
struct Depthwise<'a> {
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    channels: usize,
    act: Option<Activation>,
    padded: bool,
}

fn depthwise<'a>(net: &'a Network, layer: &'a Layer) -> Option<Depthwise<'a>> {
    if layer.op != "Conv" || layer.inputs.len() > 3 || !plain_attrs(layer, CONV_ATTRS) {
        return None;
    }
    let input = |i: usize| layer.inputs.get(i).copied().flatten();
    let w_shape = net.tensor(input(1)?).constant()?.shape().to_vec();
    let group = layer.attrs.int("group", 1).ok()? as usize;
    if group <= 1 || w_shape.len() < 3 || w_shape[0] != group || w_shape[1] != 1 {
        return None;
    }
    let bias = match input(2) {
        None => None,
        Some(id) => Some(f32_constant(net, Some(id))?).filter(|b| b.len() == group),
    };
    if input(2).is_some() && bias.is_none() {
        return None;
    }
    let auto = layer.attrs.string("auto_pad", "NOTSET".into()).ok()?;
    let pads = layer.attrs.ints("pads", Vec::new()).ok()?;
    Some(Depthwise {
        w: f32_constant(net, input(1))?,
        bias,
        channels: group,
        act: Activation::from_attrs(&layer.attrs).ok()?,
        padded: !(auto == "VALID" || (auto == "NOTSET" && pads.iter().all(|&p| p == 0))),
    })
}

/// The per-element function of a unary element-wise layer, for carrying constants through it.
fn unary_fn(net: &Network, layer: &Layer) -> Option<Box<dyn Fn(f64) -> f64>> {
    let scalar = |i: usize| -> Option<Option<f64>> {
        match layer.inputs.get(i).copied().flatten() {
            None => Some(None),
            Some(id) => {
                let t = net.tensor(id).constant()?;
                (t.len() == 1).then(|| Some(t.to_f64_vec()[0]))
            }
        }
    };
    let act = |a: Activation| -> Option<Box<dyn Fn(f64) -> f64>> { Some(Box::new(move |x| a.apply_f64(x))) };
    let f = |name: &str, d: f32| layer.attrs.float(name, d).ok();
    match layer.op.as_str() {
        "Relu" => act(Activation::Relu),
        "Sigmoid" => act(Activation::Sigmoid),
        "Tanh" => act(Activation::Tanh),
        "LeakyRelu" => act(Activation::LeakyRelu { alpha: f("alpha", 0.01)? }),
        "HardSigmoid" => act(Activation::HardSigmoid { alpha: f("alpha", 0.2)?, beta: f("beta", 0.5)? }),
        "HardSwish" => act(Activation::HardSwish),
        "Gelu" => match layer.attrs.string("approximate", "none".into()).ok()?.as_str() {
            "none" => act(Activation::GeluErf),
            "tanh" => act(Activation::GeluTanh),
            _ => None,
        },
        "Clip" => {
            let lo = scalar(1)?.or(layer.attrs.float_opt("min").ok()?.map(f64::from)).unwrap_or(f64::NEG_INFINITY);
            let hi = scalar(2)?.or(layer.attrs.float_opt("max").ok()?.map(f64::from)).unwrap_or(f64::INFINITY);
            Some(Box::new(move |x: f64| x.max(lo).min(hi)))
        }
        "Identity" => Some(Box::new(|x| x)),
        "Neg" => Some(Box::new(|x: f64| -x)),
        "Abs" => Some(Box::new(|x: f64| x.abs())),
        _ => None,
    }
}

/// An element-wise binary op on two values.
fn binary_fn(op: &str) -> Option<fn(f64, f64) -> f64> {
    Some(match op {
        "Add" => |a, b| a + b,
        "Sub" => |a, b| a - b,
        "Mul" => |a, b| a * b,
        "Div" => |a, b| a / b,
        "Max" => f64::max,
        "Min" => f64::min,
        _ => return None,
    })
}

/// How a layer connects to the channel classes.
enum Role<'a> {
    /// A product: its input 0 is read through weights, its output channels are its rows.
    Product(Product<'a>),
    /// Maps input channel `c` to output channel `c`, with a per-channel filter.
    Depthwise(Depthwise<'a>),
    /// Element-wise on one member (other inputs scalar constants).
    Unary(Box<dyn Fn(f64) -> f64>),
    /// Element-wise on two members of the same channel axis and count.
    Binary(fn(f64, f64) -> f64),
    /// Element-wise on a member (input `member`) and a constant per channel (or scalar).
    WithConstant { member: usize, f: fn(f64, f64) -> f64, values: Vec<f64>, per_channel: bool },
    /// Pooling or Flatten: output channel `c` is an aggregate of input channel `c`; a constant
    /// channel stays that constant.
    Carry,
    /// Inference BatchNormalization not folded into a conv: `y = s·x + t` per channel; a
    /// channel with scale 0 is the constant `t`.
    Affine { s: Vec<f64>, t: Vec<f64> },
    /// Concat along the channel axis.
    Concat,
    /// Split along the channel axis into these sizes.
    Split(Vec<usize>),
}

/// One layer's role and the channel axis of its output(s).
fn role<'a>(net: &'a Network, layer: &'a Layer, members: &[Option<Member>]) -> Option<(Role<'a>, usize)> {
    let member = |i: usize| layer.inputs.get(i).copied().flatten().and_then(|id| members[id.0]);
    let out = layer.outputs.first().copied().flatten()?;
    let out_shape = shape_of(net, out)?;
    if let Some(p) = product(net, layer) {
        let axis = out_shape.len().checked_sub(1)?;
        let axis = if p.kind == ProductKind::Conv { 1 } else { axis };
        return Some((Role::Product(p), axis));
    }
    if let Some(d) = depthwise(net, layer) {
        let m = member(0)?;
        return (m.axis == 1 && m.channels == d.channels).then_some((Role::Depthwise(d), 1));
    }
    let single = layer.outputs.len() == 1;
    if single {
        if let Some(f) = unary_fn(net, layer) {
            let m = member(0)?;
            return Some((Role::Unary(f), m.axis));
        }
    }
    match layer.op.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" if single && layer.inputs.len() == 2 => {
            let f = binary_fn(&layer.op)?;
            let (a, b) = pattern::two_inputs(layer)?;
            let rank = out_shape.len();
            match (member(0), member(1)) {
                (Some(x), Some(y)) if layer.op != "Div" => {
                    let same = x.axis == y.axis
                        && x.channels == y.channels
                        && shape_of(net, a)?.len() == rank
                        && shape_of(net, b)?.len() == rank;
                    same.then_some((Role::Binary(f), x.axis))
                }
                (Some(x), None) | (None, Some(x)) => {
                    let (mi, cid) = if member(0).is_some() { (0, b) } else { (1, a) };
                    if layer.op == "Div" && mi == 1 {
                        return None;
                    }
                    let ct = net.tensor(cid).constant()?;
                    let cs = ct.shape();
                    if shape_of(net, layer.inputs[mi]?)?.len() != rank || cs.len() > rank {
                        return None;
                    }
                    // Right-aligned: every dim 1 except the channel axis (C or 1).
                    let lead = rank - cs.len();
                    let mut per_channel = false;
                    for (i, &d) in cs.iter().enumerate() {
                        if lead + i == x.axis && d == x.channels && d != 1 {
                            per_channel = true;
                        } else if d != 1 {
                            return None;
                        }
                    }
                    if !ct.dtype().is_float() {
                        return None;
                    }
                    let values = ct.to_f64_vec();
                    // Sub / Div with the constant first: f(const, x).
                    let f: fn(f64, f64) -> f64 = match (layer.op.as_str(), mi) {
                        ("Sub", 1) => |x, c| c - x,
                        _ => f,
                    };
                    Some((Role::WithConstant { member: mi, f, values, per_channel }, x.axis))
                }
                _ => None,
            }
        }
        "BatchNormalization" => {
            let m = member(0)?;
            let training = layer.attrs.int("training_mode", 0).ok()? != 0;
            if m.axis != 1 || training || layer.outputs.iter().skip(1).any(Option::is_some) {
                return None;
            }
            let p: Option<Vec<Vec<f64>>> = (1..5)
                .map(|i| {
                    let t = net.tensor(layer.inputs.get(i).copied().flatten()?).constant()?;
                    (t.dtype() == DType::F32 && t.len() == m.channels).then(|| t.to_f64_vec())
                })
                .collect();
            let p = p?;
            let eps = layer.attrs.float("epsilon", 1e-5).ok()? as f64;
            let s: Vec<f64> = (0..m.channels).map(|c| p[0][c] / (p[3][c] + eps).sqrt()).collect();
            let t: Vec<f64> = (0..m.channels).map(|c| p[1][c] - p[2][c] * s[c]).collect();
            Some((Role::Affine { s, t }, 1))
        }
        "MaxPool" | "GlobalAveragePool" | "GlobalMaxPool" | "AveragePool" if single => {
            let m = member(0)?;
            if m.axis != 1 {
                return None;
            }
            if layer.op == "AveragePool" {
                let pads = layer.attrs.ints("pads", Vec::new()).ok()?;
                let auto = layer.attrs.string("auto_pad", "NOTSET".into()).ok()?;
                let include = layer.attrs.int("count_include_pad", 0).ok()? != 0;
                if include && (pads.iter().any(|&p| p != 0) || !matches!(auto.as_str(), "NOTSET" | "VALID")) {
                    return None;
                }
            }
            Some((Role::Carry, 1))
        }
        "Flatten" if single => {
            let m = member(0)?;
            let in_shape = shape_of(net, layer.inputs[0]?)?;
            let ok = m.axis == 1
                && layer.attrs.int("axis", 1).ok()? == 1
                && in_shape[2..].iter().all(|d| matches!(d, Dim::Known(1)));
            ok.then_some((Role::Carry, 1))
        }
        "Concat" if single => {
            let axis = member(0)?.axis;
            let rank = out_shape.len();
            let a = kiln_ir::spec::normalize_axis(layer.attrs.int("axis", 0).ok()?, rank).ok()?;
            let all = (0..layer.inputs.len()).all(|i| member(i).is_some_and(|m| m.axis == axis));
            (all && a == axis).then_some((Role::Concat, axis))
        }
        "Split" => {
            let m = member(0)?;
            let rank = shape_of(net, layer.inputs[0]?)?.len();
            let a = kiln_ir::spec::normalize_axis(layer.attrs.int("axis", 0).ok()?, rank).ok()?;
            if a != m.axis || layer.outputs.iter().any(Option::is_none) {
                return None;
            }
            let sizes: Option<Vec<usize>> =
                layer.outputs.iter().map(|o| shape_of(net, (*o)?)?.get(a).and_then(known)).collect();
            let sizes = sizes?;
            (sizes.iter().sum::<usize>() == m.channels).then_some((Role::Split(sizes), a))
        }
        _ => None,
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra] = rb;
        }
    }
}

/// The analysis: members, classes, roles, constants.
struct Analysis<'a> {
    members: Vec<Option<Member>>,
    roles: Vec<Option<Role<'a>>>,
    /// Per channel of every member: removed?
    removed: Vec<bool>,
    /// Per channel of every member: its constant value, if provably constant.
    constant: Vec<Option<f64>>,
}

fn analyze(net: &Network) -> Option<Analysis<'_>> {
    let live = live_layers(net);
    let n_tensors = net.tensors().len();
    let mut members: Vec<Option<Member>> = vec![None; n_tensors];
    let mut roles: Vec<Option<Role>> = (0..net.layers().len()).map(|_| None).collect();
    let mut total = 0usize;
    // Members and roles, forward.
    for (li, layer) in net.layers().iter().enumerate() {
        if !live[li] {
            continue;
        }
        let Some((r, axis)) = role(net, layer, &members) else { continue };
        for o in layer.outputs.iter().flatten() {
            let Some(c) = shape_of(net, *o).and_then(|s| s.get(axis)).and_then(known) else { continue };
            members[o.0] = Some(Member { axis, channels: c, base: total });
            total += c;
        }
        if layer.outputs.iter().flatten().all(|o| members[o.0].is_some()) {
            roles[li] = Some(r);
        } else {
            for o in layer.outputs.iter().flatten() {
                members[o.0] = None;
            }
        }
    }
    if total == 0 {
        return None;
    }
    let mut uf = UnionFind((0..total).collect());
    let mut bad = vec![false; total];
    let mut constant: Vec<Option<f64>> = vec![None; total];
    let pin = |bad: &mut Vec<bool>, m: Member| bad[m.base..m.base + m.channels].iter_mut().for_each(|b| *b = true);
    // Links, constants and the readers' verdicts, forward (constants need their inputs first).
    for (li, layer) in net.layers().iter().enumerate() {
        if !live[li] {
            continue;
        }
        let inputs: Vec<Option<Member>> = layer.inputs.iter().map(|i| i.and_then(|id| members[id.0])).collect();
        let Some(r) = &roles[li] else {
            // An opaque reader pins what it reads.
            for m in inputs.iter().flatten() {
                pin(&mut bad, *m);
            }
            for id in &layer.implicit_inputs {
                if let Some(m) = members[id.0] {
                    pin(&mut bad, m);
                }
            }
            continue;
        };
        for id in &layer.implicit_inputs {
            if let Some(m) = members[id.0] {
                pin(&mut bad, m);
            }
        }
        let outs: Vec<Member> = layer.outputs.iter().flatten().map(|o| members[o.0].expect("member")).collect();
        let out = outs[0];
        match r {
            Role::Product(p) => {
                // Other inputs than X (weights) are constants, never members.
                for m in inputs.iter().skip(1).flatten() {
                    pin(&mut bad, *m);
                }
                if out.channels != p.m {
                    pin(&mut bad, out);
                }
                for o in 0..out.channels.min(p.m) {
                    if p.out_channel_zero(o) {
                        constant[out.base + o] = Some(p.zero_channel_value(o)).filter(|v| v.is_finite());
                    }
                }
                if let Some(x) = inputs.first().copied().flatten() {
                    // The product contracts its input's channel axis: dim 1 of a Conv input,
                    // the last dim of a Gemm / MatMul input.
                    let rank = layer.inputs[0].and_then(|id| shape_of(net, id)).map_or(0, |s| s.len());
                    let axis = if p.kind == ProductKind::Conv { 1 } else { rank.saturating_sub(1) };
                    if x.channels != p.c || x.axis != axis {
                        pin(&mut bad, x);
                        continue;
                    }
                    for c in 0..x.channels {
                        let ok = p.in_channel_zero(c) || constant[x.base + c].is_some_and(|k| k == 0.0 || !p.padded);
                        if !ok {
                            bad[x.base + c] = true;
                        }
                    }
                }
            }
            Role::Depthwise(d) => {
                let x = inputs[0].expect("member");
                let k = d.w.len() / d.channels;
                for c in 0..d.channels {
                    uf.union(x.base + c, out.base + c);
                    let w = &d.w[c * k..][..k];
                    let b = d.bias.map_or(0.0, |b| b[c] as f64);
                    let pre = if w.iter().all(|&v| v == 0.0) {
                        Some(b)
                    } else {
                        constant[x.base + c]
                            .filter(|&v| v == 0.0 || !d.padded)
                            .map(|v| v * w.iter().map(|&x| x as f64).sum::<f64>() + b)
                    };
                    constant[out.base + c] = pre.map(|v| d.act.map_or(v, |a| a.apply_f64(v))).filter(|v| v.is_finite());
                }
            }
            Role::Unary(f) => {
                let x = inputs[0].expect("member");
                for c in 0..x.channels {
                    uf.union(x.base + c, out.base + c);
                    constant[out.base + c] = constant[x.base + c].map(f).filter(|v| v.is_finite());
                }
            }
            Role::Binary(f) => {
                let (x, y) = (inputs[0].expect("member"), inputs[1].expect("member"));
                for c in 0..x.channels {
                    uf.union(x.base + c, out.base + c);
                    uf.union(y.base + c, out.base + c);
                    constant[out.base + c] = match (constant[x.base + c], constant[y.base + c]) {
                        (Some(a), Some(b)) => Some(f(a, b)).filter(|v| v.is_finite()),
                        _ => None,
                    };
                }
            }
            Role::WithConstant { member, f, values, per_channel } => {
                let x = inputs[*member].expect("member");
                for c in 0..x.channels {
                    uf.union(x.base + c, out.base + c);
                    let v = values[if *per_channel { c } else { 0 }];
                    constant[out.base + c] = if v == 0.0 && [-1.0, 1.0, 2.0].iter().all(|&a| f(a, 0.0) == 0.0) {
                        // Mul by 0 (activations are taken to be finite, as everywhere here).
                        Some(0.0)
                    } else {
                        constant[x.base + c].map(|a| f(a, v)).filter(|v| v.is_finite())
                    };
                }
            }
            Role::Affine { s, t } => {
                let x = inputs[0].expect("member");
                for c in 0..x.channels {
                    uf.union(x.base + c, out.base + c);
                    constant[out.base + c] = if s[c] == 0.0 {
                        Some(t[c])
                    } else {
                        constant[x.base + c].map(|k| s[c] * k + t[c]).filter(|v| v.is_finite())
                    };
                }
                for m in inputs.iter().skip(1).flatten() {
                    pin(&mut bad, *m);
                }
            }
            Role::Carry => {
                let x = inputs[0].expect("member");
                for c in 0..x.channels {
                    uf.union(x.base + c, out.base + c);
                    constant[out.base + c] = constant[x.base + c];
                }
            }
            Role::Concat => {
                let mut off = 0;
                for x in inputs.iter().flatten() {
                    for c in 0..x.channels {
                        uf.union(x.base + c, out.base + off + c);
                        constant[out.base + off + c] = constant[x.base + c];
                    }
                    off += x.channels;
                }
            }
            Role::Split(_) => {
                let x = inputs[0].expect("member");
                let mut off = 0;
                for o in &outs {
                    for c in 0..o.channels {
                        uf.union(x.base + off + c, o.base + c);
                        constant[o.base + c] = constant[x.base + off + c];
                    }
                    off += o.channels;
                }
                for m in inputs.iter().skip(1).flatten() {
                    pin(&mut bad, *m);
                }
            }
        }
    }
    for id in net.outputs() {
        if let Some(m) = members[id.0] {
            pin(&mut bad, m);
        }
    }
    // A class goes only if no channel of it is held.
    let mut class_bad = vec![false; total];
    for (e, _) in bad.iter().enumerate().filter(|(_, &b)| b) {
        let r = uf.find(e);
        class_bad[r] = true;
    }
    // No tensor loses every channel: keep the class of its first channel, until stable.
    loop {
        let mut changed = false;
        for m in members.iter().flatten() {
            if (0..m.channels).all(|c| !class_bad[uf.find(m.base + c)]) {
                let r = uf.find(m.base);
                class_bad[r] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let removed: Vec<bool> = (0..total).map(|e| !class_bad[uf.find(e)]).collect();
    if !removed.iter().any(|&r| r) {
        return None;
    }
    Some(Analysis { members, roles, removed, constant })
}

/// Remove every removable channel; the layers changed, with their channel counts.
pub(crate) fn prune_channels(net: &Network) -> Result<Option<(Network, Vec<LayerChange>)>, IrError> {
    let Some(a) = analyze(net) else { return Ok(None) };
    let live = live_layers(net);
    let kept = |m: Member| -> Vec<usize> { (0..m.channels).filter(|&c| !a.removed[m.base + c]).collect() };
    let mut changes = Vec::new();
    let mut rb = Rebuilder::new(net)?;
    for (li, layer) in net.layers().iter().enumerate() {
        if !live[li] {
            continue;
        }
        let member_of = |i: usize| layer.inputs.get(i).copied().flatten().and_then(|id| a.members[id.0]);
        let out_member = layer.outputs.first().copied().flatten().and_then(|o| a.members[o.0]);
        match &a.roles[li] {
            Some(Role::Product(p)) => {
                let out = out_member.expect("member");
                let outs = kept(out);
                let (ins, folds): (Vec<usize>, Vec<(usize, f64)>) = match member_of(0) {
                    Some(x) => {
                        let ins = kept(x);
                        let folds = (0..x.channels)
                            .filter(|&c| a.removed[x.base + c] && !p.in_channel_zero(c))
                            .filter_map(|c| a.constant[x.base + c].filter(|&k| k != 0.0).map(|k| (c, k)))
                            .collect();
                        (ins, folds)
                    }
                    None => ((0..p.c).collect(), Vec::new()),
                };
                if outs.len() == p.m && ins.len() == p.c {
                    rb.copy_layer(layer)?;
                    continue;
                }
                let (w_shape, w) = p.sliced(&outs, &ins);
                let mut bias: Option<Vec<f64>> =
                    p.bias.map(|b| outs.iter().map(|&o| b[if b.len() == 1 { 0 } else { o }] as f64).collect());
                if !folds.is_empty() {
                    let b = bias.get_or_insert_with(|| vec![0.0; outs.len()]);
                    for (j, &o) in outs.iter().enumerate() {
                        b[j] += folds.iter().map(|&(c, k)| k * p.weight_sum(o, c)).sum::<f64>();
                    }
                }
                let x = rb.map_inputs(&layer.inputs[..1])?[0];
                let wn = fresh_name(&rb, &format!("{}::pruned_weight", layer.name));
                let w_id = rb.constant_named(&wn, Tensor::from_vec(w_shape, w)?)?;
                let mut inputs = vec![x, Some(w_id)];
                let mut attrs = layer.attrs.clone();
                if let Some(b) = bias {
                    let bn = fresh_name(&rb, &format!("{}::pruned_bias", layer.name));
                    let t = float_tensor(DType::F32, vec![outs.len()], &b).expect("f32");
                    inputs.push(Some(rb.constant_named(&bn, t)?));
                    if matches!(p.kind, ProductKind::Gemm { .. }) {
                        attrs.set("beta", 1.0f32);
                    }
                }
                rb.add_layer(&layer.name, &layer.op, attrs, &inputs, &layer.outputs)?;
                if outs.len() != p.m {
                    changes.push(LayerChange::new(&layer.name, "output channels", p.m, outs.len()));
                }
                if ins.len() != p.c {
                    changes.push(LayerChange::new(&layer.name, "input channels", p.c, ins.len()));
                }
            }
            Some(Role::Depthwise(d)) => {
                let out = out_member.expect("member");
                let outs = kept(out);
                if outs.len() == d.channels {
                    rb.copy_layer(layer)?;
                    continue;
                }
                let shape = net.tensor(layer.inputs[1].expect("W")).constant().expect("const").shape().to_vec();
                let k = d.w.len() / d.channels;
                let w: Vec<f32> = outs.iter().flat_map(|&c| d.w[c * k..][..k].iter().copied()).collect();
                let mut w_shape = shape;
                w_shape[0] = outs.len();
                let x = rb.map_inputs(&layer.inputs[..1])?[0];
                let wn = fresh_name(&rb, &format!("{}::pruned_weight", layer.name));
                let mut inputs = vec![x, Some(rb.constant_named(&wn, Tensor::from_vec(w_shape, w)?)?)];
                if let Some(b) = d.bias {
                    let bn = fresh_name(&rb, &format!("{}::pruned_bias", layer.name));
                    let bv: Vec<f32> = outs.iter().map(|&c| b[c]).collect();
                    inputs.push(Some(rb.constant_named(&bn, Tensor::from_vec(vec![outs.len()], bv)?)?));
                }
                let mut attrs = layer.attrs.clone();
                attrs.set("group", outs.len() as i64);
                rb.add_layer(&layer.name, &layer.op, attrs, &inputs, &layer.outputs)?;
                changes.push(LayerChange::new(&layer.name, "channels (depthwise groups)", d.channels, outs.len()));
            }
            Some(Role::WithConstant { member, per_channel: true, .. }) => {
                let x = member_of(*member).expect("member");
                let ks = kept(x);
                if ks.len() == x.channels {
                    rb.copy_layer(layer)?;
                    continue;
                }
                let ci = 1 - member;
                let ct = net.tensor(layer.inputs[ci].expect("const")).constant().expect("const");
                // The constant is all ones but the channel dim: its values are in channel order.
                let mut shape = ct.shape().to_vec();
                let pos = shape.iter().position(|&d| d == x.channels).expect("channel dim");
                shape[pos] = ks.len();
                let data = ct.data().gather(&ks);
                let cn = fresh_name(&rb, &format!("{}::pruned_constant", layer.name));
                let c_id = rb.constant_named(&cn, Tensor::new(shape, data)?)?;
                let mut inputs = vec![None, None];
                inputs[ci] = Some(c_id);
                inputs[*member] = rb.map_inputs(&layer.inputs[*member..*member + 1])?[0];
                rb.add_layer(&layer.name, &layer.op, layer.attrs.clone(), &inputs, &layer.outputs)?;
            }
            Some(Role::Affine { .. }) => {
                let x = member_of(0).expect("member");
                let ks = kept(x);
                if ks.len() == x.channels {
                    rb.copy_layer(layer)?;
                    continue;
                }
                let mut inputs = rb.map_inputs(&layer.inputs[..1])?;
                for (i, id) in layer.inputs.iter().enumerate().skip(1) {
                    let t = net.tensor(id.expect("parameter")).constant().expect("constant");
                    let name = fresh_name(&rb, &format!("{}::pruned_{i}", layer.name));
                    inputs.push(Some(rb.constant_named(&name, Tensor::new(vec![ks.len()], t.data().gather(&ks))?)?));
                }
                rb.add_layer(&layer.name, &layer.op, layer.attrs.clone(), &inputs, &layer.outputs)?;
                changes.push(LayerChange::new(&layer.name, "channels", x.channels, ks.len()));
            }
            Some(Role::Split(sizes)) => {
                let outs: Vec<Member> =
                    layer.outputs.iter().flatten().map(|o| a.members[o.0].expect("member")).collect();
                let new: Vec<i64> = outs.iter().map(|&m| kept(m).len() as i64).collect();
                if new.iter().zip(sizes).all(|(&n, &s)| n as usize == s) {
                    rb.copy_layer(layer)?;
                    continue;
                }
                let mut inputs = rb.map_inputs(&layer.inputs[..1])?;
                let mut attrs = layer.attrs.clone();
                if layer.inputs.get(1).copied().flatten().is_some() {
                    let sn = fresh_name(&rb, &format!("{}::pruned_split", layer.name));
                    inputs.push(Some(rb.constant_named(&sn, Tensor::from_vec(vec![new.len()], new)?)?));
                } else {
                    attrs.set("split", Attribute::Ints(new));
                    attrs.remove("num_outputs");
                }
                rb.add_layer(&layer.name, &layer.op, attrs, &inputs, &layer.outputs)?;
            }
            _ => rb.copy_layer(layer)?,
        }
    }
    Ok(Some((rb.finish()?, changes)))
}

#[cfg(test)]
mod tests;
