//! Shape sub-graphs over symbolic dims: exporters compute a Reshape's target from the data's
//! own shape (`Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [12], [64])`).
//! When `batch` and `sequence` stay symbolic, constant folding cannot evaluate `Shape(x)`, but
//! the target is still known *symbolically*: element 0 is "x's dim 0", element 1 "x's dim 1".
//! Reshape's `0` means exactly that (copy the input's dim at this position, when `allowzero`
//! is 0), so the target becomes the constant `[0, 0, 12, 64]` and the whole chain dies.
//!
//! The pass tracks int64 shape values element by element — each a known number, "dim `j` of
//! tensor `t`", or unknown — through Shape, Gather (constant indices), Unsqueeze/Squeeze of
//! scalars, Concat, Slice (constant bounds), Cast to int64, Identity and integer arithmetic on
//! known numbers. Besides rewriting Reshape targets, any such value whose elements are all known
//! numbers becomes a constant, whatever reads it.

use crate::passes::pattern::same_dim;
use crate::{Pass, Rebuilder};
use kiln_ir::{spec, DType, Dim, IrError, Layer, Network, Tensor, TensorId, ValueType};

pub struct FoldShapeSubgraphs;

/// One element of a tracked int64 value.
#[derive(Clone, Debug, PartialEq)]
enum Elem {
    Known(i64),
    /// Dimension `axis` of tensor `tensor` (not known before run time).
    DimOf(TensorId, usize),
    Unknown,
}

/// A tracked int64 value: a scalar (one element) or a 1-D tensor.
#[derive(Clone, Debug, PartialEq)]
struct Sym {
    scalar: bool,
    elems: Vec<Elem>,
}

impl Sym {
    fn known(&self) -> Option<Vec<i64>> {
        self.elems.iter().map(|e| if let Elem::Known(v) = e { Some(*v) } else { None }).collect()
    }

    fn to_tensor(&self) -> Option<Tensor> {
        let v = self.known()?;
        if self.scalar {
            Some(Tensor::scalar(v[0]))
        } else {
            Tensor::from_vec(vec![v.len()], v).ok()
        }
    }
}

/// Longest int64 value the pass tracks (shape vectors are short).
const MAX_ELEMS: usize = 64;

struct Tracker<'a> {
    net: &'a Network,
    vals: Vec<Option<Sym>>,
}

impl<'a> Tracker<'a> {
    /// The tracked value of `id`: computed earlier, or an int64 constant.
    fn get(&self, id: TensorId) -> Option<Sym> {
        if let Some(v) = &self.vals[id.0] {
            return Some(v.clone());
        }
        let t = self.net.tensor(id).constant()?;
        if t.dtype() != DType::I64 || t.rank() > 1 || t.len() > MAX_ELEMS {
            return None;
        }
        Some(Sym { scalar: t.rank() == 0, elems: t.to_i64_vec().into_iter().map(Elem::Known).collect() })
    }

    fn input(&self, layer: &Layer, i: usize) -> Option<Sym> {
        self.get(layer.inputs.get(i).copied().flatten()?)
    }

    fn const_ints(&self, layer: &Layer, i: usize) -> Option<Vec<i64>> {
        let t = self.net.tensor(layer.inputs.get(i).copied().flatten()?).constant()?;
        (t.dtype().is_int() && t.rank() <= 1).then(|| t.to_i64_vec())
    }

    /// The symbolic value of `layer`'s first output, if the pass can track it.
    fn eval(&self, layer: &Layer) -> Option<Sym> {
        let out = layer.outputs.first().copied().flatten()?;
        match &self.net.tensor(out).ty {
            Some(ValueType::Tensor(t)) if t.dtype == DType::I64 => {}
            _ => return None,
        }
        let attrs = &layer.attrs;
        let sym = match layer.op.as_str() {
            "Shape" => {
                let x = layer.inputs.first().copied().flatten()?;
                let Some(ValueType::Tensor(t)) = &self.net.tensor(x).ty else { return None };
                let dims = t.shape.as_ref()?;
                let rank = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clamp(attrs.int("start", 0).ok()?);
                let end = clamp(attrs.int("end", rank).ok()?);
                let elems = (start..end.max(start))
                    .map(|j| match dims[j] {
                        Dim::Known(n) => Elem::Known(n as i64),
                        _ => Elem::DimOf(x, j),
                    })
                    .collect();
                Sym { scalar: false, elems }
            }
            "Gather" => {
                let data = self.input(layer, 0)?;
                let idx_t = self.net.tensor(layer.inputs.get(1).copied().flatten()?).constant()?;
                if data.scalar || !idx_t.dtype().is_int() || idx_t.rank() > 1 {
                    return None;
                }
                spec::normalize_axis(attrs.int("axis", 0).ok()?, 1).ok()?;
                let n = data.elems.len() as i64;
                let elems = idx_t
                    .to_i64_vec()
                    .into_iter()
                    .map(|i| {
                        let i = if i < 0 { i + n } else { i };
                        (0..n).contains(&i).then(|| data.elems[i as usize].clone())
                    })
                    .collect::<Option<Vec<_>>>()?;
                Sym { scalar: idx_t.rank() == 0, elems }
            }
            "Unsqueeze" => {
                let data = self.input(layer, 0)?;
                let axes = self.const_ints(layer, 1)?;
                (data.scalar && (axes == [0] || axes == [-1])).then_some(Sym { scalar: false, elems: data.elems })?
            }
            "Squeeze" => {
                let data = self.input(layer, 0)?;
                let axes_ok = match layer.inputs.get(1).copied().flatten() {
                    None => true,
                    Some(_) => matches!(self.const_ints(layer, 1)?.as_slice(), [0] | [-1]),
                };
                (!data.scalar && data.elems.len() == 1 && axes_ok).then_some(Sym { scalar: true, elems: data.elems })?
            }
            "Concat" => {
                spec::normalize_axis(attrs.int("axis", 0).ok()?, 1).ok()?;
                let mut elems = Vec::new();
                for i in 0..layer.inputs.len() {
                    let part = self.input(layer, i)?;
                    if part.scalar {
                        return None;
                    }
                    elems.extend(part.elems);
                }
                (elems.len() <= MAX_ELEMS).then_some(Sym { scalar: false, elems })?
            }
            "Slice" => {
                let data = self.input(layer, 0)?;
                if data.scalar {
                    return None;
                }
                let one = |i: usize, default: i64| -> Option<i64> {
                    match layer.inputs.get(i).copied().flatten() {
                        None => Some(default),
                        Some(_) => match self.const_ints(layer, i)?.as_slice() {
                            [v] => Some(*v),
                            _ => None,
                        },
                    }
                };
                let (start, end, axis, step) = (one(1, i64::MIN)?, one(2, i64::MIN)?, one(3, 0)?, one(4, 1)?);
                if start == i64::MIN || end == i64::MIN || !(axis == 0 || axis == -1) {
                    return None;
                }
                let (first, step, count) = spec::slice_axis(start, end, step, data.elems.len()).ok()?;
                let elems = (0..count as i64).map(|k| data.elems[(first + k * step) as usize].clone()).collect();
                Sym { scalar: false, elems }
            }
            "Cast" => {
                if attrs.int("to", 0).ok()? != DType::I64.onnx_code() as i64 {
                    return None;
                }
                self.input(layer, 0)?
            }
            "Identity" => self.input(layer, 0)?,
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (self.input(layer, 0)?, self.input(layer, 1)?);
                let n = match (a.elems.len(), b.elems.len()) {
                    (x, y) if x == y => x,
                    (1, y) => y,
                    (x, 1) => x,
                    _ => return None,
                };
                let pick = |s: &Sym, i: usize| s.elems[if s.elems.len() == 1 { 0 } else { i }].clone();
                let elems = (0..n).map(|i| arith(&layer.op, pick(&a, i), pick(&b, i))).collect();
                Sym { scalar: a.scalar && b.scalar, elems }
            }
            _ => return None,
        };
        Some(sym)
    }
}

/// One element of an integer Add/Sub/Mul/Div: exact on known numbers, identities on dims.
fn arith(op: &str, a: Elem, b: Elem) -> Elem {
    use Elem::*;
    match (op, a, b) {
        ("Add", Known(x), Known(y)) => x.checked_add(y).map_or(Unknown, Known),
        ("Sub", Known(x), Known(y)) => x.checked_sub(y).map_or(Unknown, Known),
        ("Mul", Known(x), Known(y)) => x.checked_mul(y).map_or(Unknown, Known),
        // Integer division of non-negative numbers (truncation and flooring agree there).
        ("Div", Known(x), Known(y)) if x >= 0 && y > 0 => Known(x / y),
        ("Add", d @ DimOf(..), Known(0)) | ("Add", Known(0), d @ DimOf(..)) => d,
        ("Sub", d @ DimOf(..), Known(0)) => d,
        ("Mul", d @ DimOf(..), Known(1)) | ("Mul", Known(1), d @ DimOf(..)) => d,
        ("Div", d @ DimOf(..), Known(1)) => d,
        _ => Unknown,
    }
}

impl Pass for FoldShapeSubgraphs {
    fn name(&self) -> &'static str {
        "fold-shape-subgraphs"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let mut tracker = Tracker { net, vals: vec![None; net.tensors().len()] };
        // Per layer: its outputs as a constant, or a Reshape's new constant target.
        let mut folded: Vec<Option<Tensor>> = vec![None; net.layers().len()];
        let mut targets: Vec<Option<Tensor>> = vec![None; net.layers().len()];
        for (i, layer) in net.layers().iter().enumerate() {
            if let Some(sym) = tracker.eval(layer) {
                folded[i] = sym.to_tensor();
                let out = layer.outputs[0].expect("eval checked the output");
                tracker.vals[out.0] = Some(sym);
            } else if layer.op == "Reshape" {
                targets[i] = reshape_target(&tracker, layer);
            }
        }
        if folded.iter().all(Option::is_none) && targets.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            if let Some(value) = folded[i].take() {
                rb.constant(layer.outputs[0].expect("tracked layers have an output"), value)?;
            } else if let Some(target) = targets[i].take() {
                let name = crate::passes::pattern::fresh_name(&rb, &format!("{}::shape", layer.name));
                let target = rb.constant_named(&name, target)?;
                let data = rb.map_inputs(&layer.inputs[..1])?[0];
                rb.add_layer(&layer.name, "Reshape", layer.attrs.clone(), &[data, Some(target)], &layer.outputs)?;
            } else {
                rb.copy_layer(layer)?;
            }
        }
        Ok(Some(rb.finish()?))
    }
}

/// A constant target for `reshape`, if its computed target consists of known numbers and of
/// dims equal to the data's dim at the same position (which become 0: "copy").
fn reshape_target(tracker: &Tracker, reshape: &Layer) -> Option<Tensor> {
    if reshape.attrs.int("allowzero", 0).ok()? != 0 {
        return None;
    }
    let (Some(data), Some(shape)) =
        (reshape.inputs.first().copied().flatten(), reshape.inputs.get(1).copied().flatten())
    else {
        return None;
    };
    if tracker.net.tensor(shape).constant().is_some() {
        return None;
    }
    let sym = tracker.get(shape)?;
    if sym.scalar {
        return None;
    }
    let dims_of = |id: TensorId| match &tracker.net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => t.shape.clone(),
        _ => None,
    };
    let data_dims = dims_of(data);
    let target = sym
        .elems
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Elem::Known(v) => Some(*v),
            Elem::DimOf(t, j) => {
                let same = (*t == data && *j == i)
                    || match (&data_dims, dims_of(*t)) {
                        (Some(dd), Some(td)) => matches!((dd.get(i), td.get(*j)),
                            (Some(a @ Dim::Symbol(_)), Some(b)) if same_dim(a, b)),
                        _ => false,
                    };
                same.then_some(0)
            }
            Elem::Unknown => None,
        })
        .collect::<Option<Vec<i64>>>()?;
    Tensor::from_vec(vec![target.len()], target).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::pattern::testing::*;
    use crate::PassManager;
    use kiln_ir::Attributes;

    fn sym(s: &str) -> Dim {
        Dim::Symbol(s.into())
    }

    fn ints(net: &mut Network, name: &str, v: &[i64]) -> TensorId {
        net.add_constant(name, Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()).unwrap()
    }

    fn add(net: &mut Network, name: &str, op: &str, attrs: Attributes, inputs: &[TensorId]) -> TensorId {
        crate::passes::test_support::layer(net, name, op, attrs, inputs)
    }

    /// `x.size(axis)` as a 1-D tensor, the way the exporter writes it.
    fn dim(net: &mut Network, x: TensorId, axis: i64, tag: &str) -> TensorId {
        let s = add(net, &format!("shape{tag}"), "Shape", Attributes::new(), &[x]);
        let i = net.add_constant(&format!("idx{tag}"), Tensor::scalar(axis)).unwrap();
        let d = add(net, &format!("gather{tag}"), "Gather", Attributes::new().with("axis", 0i64), &[s, i]);
        let a = ints(net, &format!("axes{tag}"), &[0]);
        add(net, &format!("unsq{tag}"), "Unsqueeze", Attributes::new(), &[d, a])
    }

    /// BERT's split_heads: Reshape(x, [x.size(0), x.size(1), 2, 4]) on x: [batch, seq, 8].
    fn split_heads(allowzero: i64) -> Network {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[sym("batch"), sym("seq"), Dim::Known(8)]);
        let d0 = dim(&mut net, x, 0, "0");
        let d1 = dim(&mut net, x, 1, "1");
        let heads = ints(&mut net, "heads", &[2]);
        let hd = ints(&mut net, "hd", &[4]);
        let shape = add(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[d0, d1, heads, hd]);
        let r = add(&mut net, "reshape", "Reshape", Attributes::new().with("allowzero", allowzero), &[x, shape]);
        let y = add(&mut net, "transpose", "Transpose", Attributes::new().with("perm", vec![0i64, 2, 1, 3]), &[r]);
        net.mark_output(y).unwrap();
        net
    }

    #[test]
    fn split_heads_over_symbolic_dims_becomes_a_constant_reshape() {
        let net = split_heads(0);
        let (out, report) = PassManager::simplify().run(net.clone()).unwrap();
        assert_eq!(ops(&out), vec!["Reshape", "Transpose"], "{report:?}");
        let target = out.layers()[0].inputs[1].unwrap();
        assert_eq!(out.tensor(target).constant().unwrap().to_i64_vec(), vec![0, 0, 2, 4]);
        assert_eq!(out.tensor(out.outputs()[0]).ty.as_ref().unwrap().to_string(), "f32[batch, 2, seq, 4]");
        for (b, s) in [(1, 3), (3, 5)] {
            let x = random(&[b, s, 8], 7 + b as u64, 1.0);
            assert_close(&net, &out, &[("x", x)], 0.0);
        }
    }

    #[test]
    fn allowzero_keeps_the_shape_computation() {
        let net = split_heads(1);
        assert!(FoldShapeSubgraphs.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_dim_at_another_position_or_of_another_symbol_is_not_copied() {
        // Reshape(x, [x.size(1), x.size(0), 8]) swaps dims: 0 would mean something else.
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[sym("batch"), sym("seq"), Dim::Known(8)]);
        let d0 = dim(&mut net, x, 0, "0");
        let d1 = dim(&mut net, x, 1, "1");
        let c = ints(&mut net, "c", &[8]);
        let shape = add(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[d1, d0, c]);
        let y = add(&mut net, "reshape", "Reshape", Attributes::new(), &[x, shape]);
        net.mark_output(y).unwrap();
        assert!(FoldShapeSubgraphs.run(&net).unwrap().is_none());

        // The dims of another input with other symbols.
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[sym("batch"), sym("seq"), Dim::Known(8)]);
        let z = sym_input(&mut net, "z", &[sym("n"), sym("m")]);
        let d0 = dim(&mut net, z, 0, "0");
        let rest = ints(&mut net, "rest", &[-1]);
        let shape = add(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[d0, rest]);
        let y = add(&mut net, "reshape", "Reshape", Attributes::new(), &[x, shape]);
        net.mark_output(y).unwrap();
        assert!(FoldShapeSubgraphs.run(&net).unwrap().is_none());
    }

    #[test]
    fn the_same_symbol_of_another_tensor_is_copied() {
        // Reshape(x, [z.size(0), -1]) where z's dim 0 is x's `batch` too.
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[sym("batch"), Dim::Known(2), Dim::Known(3)]);
        let z = sym_input(&mut net, "z", &[sym("batch"), Dim::Known(5)]);
        let d0 = dim(&mut net, z, 0, "0");
        let rest = ints(&mut net, "rest", &[-1]);
        let shape = add(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[d0, rest]);
        let y = add(&mut net, "reshape", "Reshape", Attributes::new(), &[x, shape]);
        net.mark_output(y).unwrap();
        let (out, _) = PassManager::simplify().run(net.clone()).unwrap();
        assert_eq!(ops(&out), vec!["Reshape"]);
        assert_eq!(out.tensor(out.outputs()[0]).ty.as_ref().unwrap().to_string(), "f32[batch, 6]");
        let inputs = [("x", random(&[4, 2, 3], 1, 1.0)), ("z", random(&[4, 5], 2, 1.0))];
        assert_close(&net, &out, &inputs, 0.0);
    }

    #[test]
    fn known_dims_slices_and_arithmetic_fold_to_constants() {
        // Reshape(x, Concat(Shape(x)[0:2], [Shape(x)[2] * Shape(x)[3]])) on x: [batch, seq, 2, 4]
        // → [0, 0, 8]; the Mul of two known dims folds to a constant whoever reads it.
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[sym("batch"), sym("seq"), Dim::Known(2), Dim::Known(4)]);
        let s = add(&mut net, "shape", "Shape", Attributes::new(), &[x]);
        let (st, en) = (ints(&mut net, "st", &[0]), ints(&mut net, "en", &[2]));
        let head = add(&mut net, "slice", "Slice", Attributes::new(), &[s, st, en]);
        let (i2, i3) = (ints(&mut net, "i2", &[2]), ints(&mut net, "i3", &[-1]));
        let g2 = add(&mut net, "g2", "Gather", Attributes::new(), &[s, i2]);
        let g3 = add(&mut net, "g3", "Gather", Attributes::new(), &[s, i3]);
        let prod = add(&mut net, "mul", "Mul", Attributes::new(), &[g2, g3]);
        let cast = add(&mut net, "cast", "Cast", Attributes::new().with("to", 7i64), &[prod]);
        let shape = add(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[head, cast]);
        let y = add(&mut net, "reshape", "Reshape", Attributes::new(), &[x, shape]);
        net.mark_output(y).unwrap();
        net.mark_output(prod).unwrap();
        let (out, report) = PassManager::simplify().run(net.clone()).unwrap();
        assert_eq!(ops(&out), vec!["Reshape"], "{report:?}");
        let target = out.layers()[0].inputs[1].unwrap();
        assert_eq!(out.tensor(target).constant().unwrap().to_i64_vec(), vec![0, 0, 8]);
        assert_eq!(out.tensor(out.outputs()[1]).constant().unwrap().to_i64_vec(), vec![8]);
        assert_close(&net, &out, &[("x", random(&[3, 5, 2, 4], 3, 1.0))], 0.0);
    }

    #[test]
    fn symbolic_dims_used_as_values_stay_computed() {
        // A Slice end that is a symbolic dim (BERT's position ids) cannot become a constant.
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Known(1), sym("seq")]);
        let table = net.add_constant("table", random(&[1, 16], 1, 1.0)).unwrap();
        let d1 = dim(&mut net, x, 1, "1");
        let (st, ax) = (ints(&mut net, "st", &[0]), ints(&mut net, "ax", &[1]));
        let y = add(&mut net, "slice", "Slice", Attributes::new(), &[table, st, d1, ax]);
        net.mark_output(y).unwrap();
        assert!(FoldShapeSubgraphs.run(&net).unwrap().is_none());
    }
}
