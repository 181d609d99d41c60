//! LayerNorm written out element by element, as exporters emit it, becomes one
//! `LayerNormalization`:
//!
//! ```text
//! mean = ReduceMean(x, axes)          d = Sub(x, mean)
//! var  = ReduceMean(Pow(d, 2), axes)  (or Mul(d, d))
//! y    = Div(d, Sqrt(Add(var, eps)))  (or Mul(d, Reciprocal(Sqrt(...))))
//! out  = Add(Mul(y, gamma), beta)     (either, both or neither)
//! ```
//!
//! `axes` (kept dims) must be the last k axes of x; they become `axis = -k`. A missing gamma is a
//! scale of ones, a missing beta an absent bias. Gamma and beta may have any shape that
//! broadcasts to x without growing it (the kernel broadcasts them the same way).

use crate::passes::pattern::{self, float_tensor, fused_attr, only_output, Graph, Rewrite};
use crate::Pass;
use kiln_ir::{Attributes, Dim, IrError, Network, TensorId};

pub struct RecognizeLayerNorm;

impl Pass for RecognizeLayerNorm {
    fn name(&self) -> &'static str {
        "recognize-layer-norm"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let rewrites = (0..net.layers().len()).filter_map(|i| matched(&g, i)).collect();
        pattern::apply(net, rewrites)
    }
}

/// A LayerNorm whose normalization (`d / std`) is layer `norm`.
fn matched(g: &Graph, norm: usize) -> Option<Rewrite> {
    let layer = g.layer(norm);
    let mut covered = vec![norm];
    let (d, std) = match layer.op.as_str() {
        "Div" => pattern::two_inputs(layer)?,
        "Mul" => {
            let (a, b) = pattern::two_inputs(layer)?;
            let (d, r) = if g.producer(b, "Reciprocal").is_some() { (a, b) } else { (b, a) };
            let (ri, recip) = g.producer(r, "Reciprocal")?;
            covered.push(ri);
            (d, recip.inputs.first().copied().flatten()?)
        }
        _ => return None,
    };
    let (si, sqrt) = g.producer(std, "Sqrt")?;
    let (ai, add_eps) = g.producer(sqrt.inputs.first().copied().flatten()?, "Add")?;
    let (var, eps, _) = g.with_scalar(add_eps, true)?;
    let (vi, var_mean) = g.producer(var, "ReduceMean")?;
    let (pi, square) = g.producer_any(var_mean.inputs.first().copied().flatten()?)?;
    let squared = match square.op.as_str() {
        "Pow" => {
            let (base, exp, first) = g.with_scalar(square, false)?;
            (exp == 2.0 && !first).then_some(base)?
        }
        "Mul" => {
            let (a, b) = pattern::two_inputs(square)?;
            (a == b).then_some(a)?
        }
        _ => return None,
    };
    if squared != d {
        return None;
    }
    let (di, sub) = g.producer(d, "Sub")?;
    let (x, mean) = pattern::two_inputs(sub)?;
    let (mi, mean_layer) = g.producer(mean, "ReduceMean")?;
    if mean_layer.inputs.first().copied().flatten()? != x {
        return None;
    }
    let dtype = g.dtype(x)?;
    let dims = g.shape(x)?.clone();
    let rank = dims.len();
    let axes = pattern::reduce_axes(g, mean_layer, rank)?;
    if axes.is_empty() || pattern::reduce_axes(g, var_mean, rank)? != axes || !dtype.is_float() {
        return None;
    }
    // The normalized axes are the last k.
    let k = axes.len();
    if axes.iter().enumerate().any(|(i, &a)| a != rank - k + i) {
        return None;
    }
    covered.extend([si, ai, vi, pi, di, mi]);

    // Optional affine tail: Mul by a constant gamma, then Add a constant beta.
    let mut root = only_output(layer)?;
    let affine = |op: &str, root: &mut TensorId, covered: &mut Vec<usize>| -> Option<TensorId> {
        let [r] = g.readers(*root) else { return None };
        let next = g.layer(*r);
        if next.op != op || g.is_output(*root) {
            return None;
        }
        let (a, b) = pattern::two_inputs(next)?;
        let c = if a == *root { b } else { a };
        let t = g.constant(c)?;
        let fits = t.dtype() == dtype
            && t.rank() <= rank
            && t.shape().iter().rev().zip(dims.iter().rev()).all(|(&n, d)| n == 1 || *d == Dim::Known(n));
        if !fits || (a == *root && b == *root) {
            return None;
        }
        covered.push(*r);
        *root = only_output(next)?;
        Some(c)
    };
    let scale = affine("Mul", &mut root, &mut covered);
    let bias = affine("Add", &mut root, &mut covered);
    if !g.sealed(&covered, &[root]) {
        return None;
    }

    let net = g.net;
    let name = net.layers()[*covered.iter().max()?].name.clone();
    let mut attrs = Attributes::new().with("axis", -(k as i64)).with("epsilon", eps as f32);
    attrs.set(kiln_ir::spec::FUSED_NODES_ATTR, fused_attr(net, &covered));
    let at = *covered.iter().max()?;
    Some(Rewrite {
        covered,
        at,
        emit: Box::new(move |rb| {
            let scale = match scale {
                Some(s) => rb.map(s)?,
                None => {
                    let ones = float_tensor(dtype, vec![1], &[1.0]).expect("float dtype");
                    let n = pattern::fresh_name(rb, &format!("{name}::scale"));
                    rb.constant_named(&n, ones)?
                }
            };
            let bias = bias.map(|b| rb.map(b)).transpose()?;
            let x = rb.map(x)?;
            rb.add_layer(&name, "LayerNormalization", attrs, &[Some(x), Some(scale), bias], &[Some(root)])?;
            Ok(())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::pattern::testing::*;
    use crate::passes::test_support::layer;
    use kiln_ir::{spec, Tensor};

    fn scalar(net: &mut Network, name: &str, v: f32) -> TensorId {
        net.add_constant(name, Tensor::scalar(v)).unwrap()
    }

    fn mean(net: &mut Network, name: &str, x: TensorId, axes: &[i64]) -> TensorId {
        let a = net.add_constant(&format!("{name}_axes"), Tensor::from_vec(vec![axes.len()], axes.to_vec()).unwrap());
        layer(net, name, "ReduceMean", Attributes::new(), &[x, a.unwrap()])
    }

    struct Opts {
        axes: Vec<i64>,
        reciprocal: bool,
        mul_square: bool,
        gamma: bool,
        beta: bool,
        eps: f32,
    }

    const BERT: Opts =
        Opts { axes: Vec::new(), reciprocal: false, mul_square: false, gamma: true, beta: true, eps: 1e-12 };

    /// The exporter's LayerNorm over x: [2, 3, 8] (axes default [-1]); returns (net, d).
    fn build(o: &Opts) -> (Network, TensorId) {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Symbol("b".into()), Dim::Known(3), Dim::Known(8)]);
        let axes = if o.axes.is_empty() { vec![-1] } else { o.axes.clone() };
        let m = mean(&mut net, "mean", x, &axes);
        let d = layer(&mut net, "sub", "Sub", Attributes::new(), &[x, m]);
        let sq = if o.mul_square {
            layer(&mut net, "sq", "Mul", Attributes::new(), &[d, d])
        } else {
            let two = scalar(&mut net, "two", 2.0);
            layer(&mut net, "sq", "Pow", Attributes::new(), &[d, two])
        };
        let var = mean(&mut net, "var", sq, &axes);
        let eps = scalar(&mut net, "eps", o.eps);
        let ve = layer(&mut net, "add_eps", "Add", Attributes::new(), &[eps, var]);
        let std = layer(&mut net, "sqrt", "Sqrt", Attributes::new(), &[ve]);
        let mut y = if o.reciprocal {
            let r = layer(&mut net, "recip", "Reciprocal", Attributes::new(), &[std]);
            layer(&mut net, "norm", "Mul", Attributes::new(), &[r, d])
        } else {
            layer(&mut net, "norm", "Div", Attributes::new(), &[d, std])
        };
        let n: usize = if axes.len() == 2 { 24 } else { 8 };
        let pshape: Vec<usize> = if axes.len() == 2 { vec![3, 8] } else { vec![8] };
        if o.gamma {
            let gm = net.add_constant("gamma", random(&pshape, 11, 1.0)).unwrap();
            y = layer(&mut net, "mul_gamma", "Mul", Attributes::new(), &[y, gm]);
        }
        if o.beta {
            let bt = net.add_constant("beta", random(&pshape, 12, 1.0)).unwrap();
            y = layer(&mut net, "add_beta", "Add", Attributes::new(), &[bt, y]);
        }
        assert!(n > 0);
        net.mark_output(y).unwrap();
        (net, d)
    }

    fn check(o: &Opts, axis: i64, inputs_of_ln: usize) {
        let (net, _) = build(o);
        let out = RecognizeLayerNorm.run(&net).unwrap().expect("recognized");
        let (out, _) =
            crate::PassManager::new(vec![Box::new(crate::passes::dead_layers::DeadLayerElimination)]).run(out).unwrap();
        assert_eq!(ops(&out), vec!["LayerNormalization"]);
        let ln = &out.layers()[0];
        assert_eq!(ln.attrs.int("axis", 0).unwrap(), axis);
        assert_eq!(ln.inputs.iter().flatten().count(), inputs_of_ln);
        assert!(spec::fused_nodes(ln).len() >= 7);
        for (b, seed) in [(2, 1), (1, 2)] {
            let x = random(&[b, 3, 8], seed, 3.0);
            assert_close(&net, &out, &[("x", x)], 1e-5);
        }
    }

    #[test]
    fn the_exporters_layer_norm_becomes_one_layer() {
        check(&BERT, -1, 3);
        check(&Opts { eps: 1e-5, ..BERT }, -1, 3);
    }

    #[test]
    fn variants_reciprocal_square_by_mul_two_axes_no_affine() {
        check(&Opts { reciprocal: true, mul_square: true, ..BERT }, -1, 3);
        check(&Opts { axes: vec![-2, -1], ..BERT }, -2, 3);
        check(&Opts { axes: vec![2, 1], ..BERT }, -2, 3);
        check(&Opts { gamma: false, ..BERT }, -1, 3);
        check(&Opts { beta: false, ..BERT }, -1, 2);
        check(&Opts { gamma: false, beta: false, eps: 1e-3, ..BERT }, -1, 2);
    }

    #[test]
    fn axes_that_are_not_the_last_block_nothing() {
        let (net, _) = build(&Opts { axes: vec![1], ..BERT });
        assert!(RecognizeLayerNorm.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_second_reader_of_an_intermediate_blocks_it() {
        let (mut net, d) = build(&BERT);
        net.mark_output(d).unwrap();
        assert!(RecognizeLayerNorm.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_non_constant_gamma_stays_a_mul() {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Known(2), Dim::Known(8)]);
        let gm = sym_input(&mut net, "gamma", &[Dim::Known(8)]);
        let m = mean(&mut net, "mean", x, &[-1]);
        let d = layer(&mut net, "sub", "Sub", Attributes::new(), &[x, m]);
        let two = scalar(&mut net, "two", 2.0);
        let sq = layer(&mut net, "sq", "Pow", Attributes::new(), &[d, two]);
        let var = mean(&mut net, "var", sq, &[-1]);
        let eps = scalar(&mut net, "eps", 1e-5);
        let ve = layer(&mut net, "add_eps", "Add", Attributes::new(), &[var, eps]);
        let std = layer(&mut net, "sqrt", "Sqrt", Attributes::new(), &[ve]);
        let y = layer(&mut net, "norm", "Div", Attributes::new(), &[d, std]);
        let y = layer(&mut net, "mul_gamma", "Mul", Attributes::new(), &[y, gm]);
        net.mark_output(y).unwrap();
        let out = RecognizeLayerNorm.run(&net).unwrap().expect("the core still matches");
        let out = crate::passes::dead_layers::DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
        assert_eq!(ops(&out), vec!["LayerNormalization", "Mul"]);
        let inputs = [("x", random(&[2, 8], 5, 2.0)), ("gamma", random(&[8], 6, 1.0))];
        assert_close(&net, &out, &inputs, 1e-5);
    }

    #[test]
    fn a_wrong_exponent_or_a_different_mean_input_blocks_it() {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Known(2), Dim::Known(8)]);
        let m = mean(&mut net, "mean", x, &[-1]);
        let d = layer(&mut net, "sub", "Sub", Attributes::new(), &[x, m]);
        let three = scalar(&mut net, "three", 3.0);
        let sq = layer(&mut net, "sq", "Pow", Attributes::new(), &[d, three]);
        let var = mean(&mut net, "var", sq, &[-1]);
        let eps = scalar(&mut net, "eps", 1e-5);
        let ve = layer(&mut net, "add_eps", "Add", Attributes::new(), &[var, eps]);
        let std = layer(&mut net, "sqrt", "Sqrt", Attributes::new(), &[ve]);
        let y = layer(&mut net, "norm", "Div", Attributes::new(), &[d, std]);
        net.mark_output(y).unwrap();
        assert!(RecognizeLayerNorm.run(&net).unwrap().is_none());
    }
}
