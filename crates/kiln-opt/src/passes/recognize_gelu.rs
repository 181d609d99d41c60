//! GELU written out element by element becomes one `Gelu`:
//!
//! - exact: `x · 0.5 · (1 + erf(x / √2))` → `Gelu(approximate = "none")`, the argument of Erf
//!   being `Div(x, √2)` or `Mul(x, 1/√2)`;
//! - tanh: `x · 0.5 · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` → `Gelu(approximate = "tanh")`,
//!   with `x³` as `Pow(x, 3)` or products of x.
//!
//! The outer product is matched as a tree of Mul (and Div by a constant) in any nesting and
//! order, so `Mul(Mul(x, 1 + erf), 0.5)`, `Mul(Mul(x, 0.5), 1 + erf)`, `Div(Mul(x, 1 + erf), 2)`
//! all qualify; its constant factors must multiply to 0.5. Constants are compared with a
//! relative tolerance of 1e-6 (exporters write them in f32).

use crate::passes::pattern::{self, close, only_output, Graph, Rewrite};
use crate::Pass;
use kiln_ir::{Attributes, IrError, Network, TensorId};

pub struct RecognizeGelu;

const TOL: f64 = 1e-6;

impl Pass for RecognizeGelu {
    fn name(&self) -> &'static str {
        "recognize-gelu"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let rewrites = (0..net.layers().len()).filter_map(|i| matched(&g, i)).collect();
        pattern::apply(net, rewrites)
    }
}

/// A product flattened through nested Mul / Div-by-constant layers.
#[derive(Default)]
pub(crate) struct Product {
    pub coef: f64,
    /// The non-constant factors.
    pub factors: Vec<TensorId>,
    /// The Mul/Div layers of the tree.
    pub layers: Vec<usize>,
}

/// Flatten the product computed by layer `root` (a Mul, or a Div by a scalar constant). Inner
/// Mul/Div layers are only descended into when `root`'s tree is their sole reader.
pub(crate) fn product(g: &Graph, root: usize) -> Option<Product> {
    fn walk(g: &Graph, index: usize, p: &mut Product) -> Option<()> {
        let layer = g.layer(index);
        let (a, b) = pattern::two_inputs(layer)?;
        let operands: Vec<(TensorId, bool)> = match layer.op.as_str() {
            "Mul" => vec![(a, false), (b, false)],
            "Div" => vec![(a, false), (b, true)],
            _ => return None,
        };
        p.layers.push(index);
        for (t, inverse) in operands {
            if let Some(c) = g.scalar(t, usize::MAX) {
                p.coef *= if inverse { 1.0 / c } else { c };
                continue;
            }
            if inverse {
                return None;
            }
            let inner = g
                .producer_any(t)
                .filter(|(_, l)| l.op == "Mul" || l.op == "Div")
                .filter(|_| g.readers(t) == [index] && !g.is_output(t));
            match inner {
                Some((i, _)) if walk(g, i, p).is_some() => {}
                Some(_) => return None,
                None => p.factors.push(t),
            }
        }
        Some(())
    }
    let mut p = Product { coef: 1.0, ..Default::default() };
    walk(g, root, &mut p)?;
    Some(p)
}

/// If `t` is `Add(1, F(arg))` (either order) with F = `unary`: (F's argument, the layers).
fn one_plus(g: &Graph, t: TensorId, unary: &str) -> Option<(TensorId, Vec<usize>)> {
    let (ai, add) = g.producer(t, "Add")?;
    let (f, one, _) = g.with_scalar(add, true)?;
    if !close(one, 1.0, TOL) {
        return None;
    }
    let (fi, f_layer) = g.producer(f, unary)?;
    Some((f_layer.inputs.first().copied().flatten()?, vec![ai, fi]))
}

/// Layers computing `x / √2` (Div by √2 or Mul by 1/√2).
fn x_over_sqrt2(g: &Graph, u: TensorId, x: TensorId) -> Option<usize> {
    let (ui, l) = g.producer_any(u)?;
    let (v, c, first) = g.with_scalar(l, l.op == "Mul")?;
    let ok = match l.op.as_str() {
        "Div" => !first && close(c, std::f64::consts::SQRT_2, TOL),
        "Mul" => close(c, std::f64::consts::FRAC_1_SQRT_2, TOL),
        _ => false,
    };
    (ok && v == x).then_some(ui)
}

/// Layers computing `√(2/π) · (x + 0.044715 · x³)`.
fn tanh_argument(g: &Graph, v: TensorId, x: TensorId) -> Option<Vec<usize>> {
    let (vi, _) = g.producer(v, "Mul")?;
    let outer = product(g, vi)?;
    let [inner] = outer.factors[..] else { return None };
    if !close(outer.coef, (2.0 / std::f64::consts::PI).sqrt(), TOL) {
        return None;
    }
    let (ii, add) = g.producer(inner, "Add")?;
    let (a, b) = pattern::two_inputs(add)?;
    let cube = if a == x {
        b
    } else if b == x {
        a
    } else {
        return None;
    };
    let (ci, _) = g.producer(cube, "Mul")?;
    let c = product(g, ci)?;
    if !close(c.coef, 0.044715, TOL) {
        return None;
    }
    let mut layers = outer.layers;
    layers.push(ii);
    layers.extend(c.layers);
    // x³ as factors x and Pow(x, n).
    let mut power = 0.0;
    for f in c.factors {
        if f == x {
            power += 1.0;
            continue;
        }
        let (pi, pow) = g.producer(f, "Pow")?;
        let (base, e, first) = g.with_scalar(pow, false)?;
        if base != x || first {
            return None;
        }
        power += e;
        layers.push(pi);
    }
    (power == 3.0).then_some(layers)
}

fn matched(g: &Graph, root: usize) -> Option<Rewrite> {
    let layer = g.layer(root);
    if layer.op != "Mul" && layer.op != "Div" {
        return None;
    }
    let p = product(g, root)?;
    let [f0, f1] = p.factors[..] else { return None };
    if !close(p.coef, 0.5, TOL) {
        return None;
    }
    let (x, approximate, mut covered) = [(f0, f1), (f1, f0)].into_iter().find_map(|(x, other)| {
        if let Some((u, mut layers)) = one_plus(g, other, "Erf") {
            layers.push(x_over_sqrt2(g, u, x)?);
            return Some((x, "none", layers));
        }
        let (v, mut layers) = one_plus(g, other, "Tanh")?;
        layers.extend(tanh_argument(g, v, x)?);
        Some((x, "tanh", layers))
    })?;
    covered.extend(p.layers);
    let out = only_output(layer)?;
    let dtype = g.dtype(x)?;
    // Every factor is x, an element-wise function of x or a one-element constant, so the
    // output has x's shape unless a constant of higher rank broadcast it up.
    let shapes_match = match (g.shape(x), g.shape(out)) {
        (Some(a), Some(b)) => a.len() == b.len(),
        _ => false,
    };
    if !dtype.is_float() || !shapes_match || !g.sealed(&covered, &[out]) {
        return None;
    }
    let attrs = Attributes::new().with("approximate", approximate);
    Some(Rewrite::single_op(g.net, covered, root, (layer.name.clone(), "Gelu", attrs), x, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dead_layers::DeadLayerElimination;
    use crate::passes::pattern::testing::*;
    use crate::passes::test_support::layer;
    use kiln_ir::{Dim, Tensor};

    fn c(net: &mut Network, name: &str, v: f32) -> TensorId {
        net.add_constant(name, Tensor::scalar(v)).unwrap()
    }

    fn new_net() -> (Network, TensorId) {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Symbol("n".into()), Dim::Known(16)]);
        (net, x)
    }

    fn fused(net: &Network) -> Network {
        let out = RecognizeGelu.run(net).unwrap().expect("recognized");
        DeadLayerElimination.run(&out).unwrap().unwrap_or(out)
    }

    fn check(net: &Network, approximate: &str) {
        let out = fused(net);
        assert_eq!(ops(&out), vec!["Gelu"]);
        assert_eq!(out.layers()[0].attrs.string("approximate", String::new()).unwrap(), approximate);
        for (n, seed) in [(3, 1), (1, 2)] {
            assert_close(net, &out, &[("x", random(&[n, 16], seed, 4.0))], 1e-5);
        }
    }

    /// BERT: Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5).
    fn bert_gelu(div: f32) -> (Network, TensorId) {
        let (mut net, x) = new_net();
        let s = c(&mut net, "sqrt2", div);
        let u = layer(&mut net, "div", "Div", Attributes::new(), &[x, s]);
        let e = layer(&mut net, "erf", "Erf", Attributes::new(), &[u]);
        let one = c(&mut net, "one", 1.0);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[e, one]);
        let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[x, a]);
        let half = c(&mut net, "half", 0.5);
        let y = layer(&mut net, "mul_1", "Mul", Attributes::new(), &[m, half]);
        net.mark_output(y).unwrap();
        (net, e)
    }

    #[test]
    fn berts_erf_gelu_becomes_gelu() {
        // The exporter writes √2 as the f32 1.4142135381698608.
        check(&bert_gelu(std::f32::consts::SQRT_2).0, "none");
    }

    #[test]
    fn other_orderings_of_the_erf_form() {
        // Mul(Mul(0.5, x), Add(1, Erf(Mul(x, 1/√2)))).
        let (mut net, x) = new_net();
        let half = c(&mut net, "half", 0.5);
        let hx = layer(&mut net, "hx", "Mul", Attributes::new(), &[half, x]);
        let r = c(&mut net, "r", std::f32::consts::FRAC_1_SQRT_2);
        let u = layer(&mut net, "u", "Mul", Attributes::new(), &[r, x]);
        let e = layer(&mut net, "erf", "Erf", Attributes::new(), &[u]);
        let one = c(&mut net, "one", 1.0);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[one, e]);
        let y = layer(&mut net, "y", "Mul", Attributes::new(), &[a, hx]);
        net.mark_output(y).unwrap();
        check(&net, "none");

        // Div(Mul(x, 1 + erf), 2).
        let (mut net, x) = new_net();
        let s = c(&mut net, "sqrt2", std::f32::consts::SQRT_2);
        let u = layer(&mut net, "u", "Div", Attributes::new(), &[x, s]);
        let e = layer(&mut net, "erf", "Erf", Attributes::new(), &[u]);
        let one = c(&mut net, "one", 1.0);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[e, one]);
        let m = layer(&mut net, "m", "Mul", Attributes::new(), &[x, a]);
        let two = c(&mut net, "two", 2.0);
        let y = layer(&mut net, "y", "Div", Attributes::new(), &[m, two]);
        net.mark_output(y).unwrap();
        check(&net, "none");
    }

    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), x³ as Pow or as x·x·x.
    fn tanh_gelu(pow: bool, k: f32) -> Network {
        let (mut net, x) = new_net();
        let half = c(&mut net, "half", 0.5);
        let hx = layer(&mut net, "hx", "Mul", Attributes::new(), &[x, half]);
        let cube = if pow {
            let three = c(&mut net, "three", 3.0);
            layer(&mut net, "pow", "Pow", Attributes::new(), &[x, three])
        } else {
            let sq = layer(&mut net, "sq", "Mul", Attributes::new(), &[x, x]);
            layer(&mut net, "cube", "Mul", Attributes::new(), &[sq, x])
        };
        let kc = c(&mut net, "k", 0.044715);
        let t = layer(&mut net, "t", "Mul", Attributes::new(), &[kc, cube]);
        let inner = layer(&mut net, "inner", "Add", Attributes::new(), &[x, t]);
        let s = c(&mut net, "s", k);
        let v = layer(&mut net, "v", "Mul", Attributes::new(), &[inner, s]);
        let th = layer(&mut net, "tanh", "Tanh", Attributes::new(), &[v]);
        let one = c(&mut net, "one", 1.0);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[th, one]);
        let y = layer(&mut net, "y", "Mul", Attributes::new(), &[hx, a]);
        net.mark_output(y).unwrap();
        net
    }

    #[test]
    fn the_tanh_form_becomes_gelu_tanh() {
        check(&tanh_gelu(true, 0.797_884_6), "tanh");
        check(&tanh_gelu(false, 0.797_884_6), "tanh");
    }

    #[test]
    fn wrong_constants_block_it() {
        assert!(RecognizeGelu.run(&bert_gelu(1.5).0).unwrap().is_none());
        assert!(RecognizeGelu.run(&bert_gelu(1.4143).0).unwrap().is_none());
        assert!(RecognizeGelu.run(&tanh_gelu(true, 0.8)).unwrap().is_none());
    }

    #[test]
    fn a_second_reader_of_an_intermediate_blocks_it() {
        let (mut net, erf) = bert_gelu(std::f32::consts::SQRT_2);
        net.mark_output(erf).unwrap();
        assert!(RecognizeGelu.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_broadcasting_factor_blocks_it() {
        // Mul(..., 0.5) with 0.5 of shape [1, 1, 1] grows the rank: not a Gelu of x.
        let (mut net, x) = new_net();
        let s = c(&mut net, "sqrt2", std::f32::consts::SQRT_2);
        let u = layer(&mut net, "div", "Div", Attributes::new(), &[x, s]);
        let e = layer(&mut net, "erf", "Erf", Attributes::new(), &[u]);
        let one = c(&mut net, "one", 1.0);
        let a = layer(&mut net, "add", "Add", Attributes::new(), &[e, one]);
        let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[x, a]);
        let half = net.add_constant("half", Tensor::from_vec(vec![1, 1, 1], vec![0.5f32]).unwrap()).unwrap();
        let y = layer(&mut net, "mul_1", "Mul", Attributes::new(), &[m, half]);
        net.mark_output(y).unwrap();
        assert!(RecognizeGelu.run(&net).unwrap().is_none());
    }
}
