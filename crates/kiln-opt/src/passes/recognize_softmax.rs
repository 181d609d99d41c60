//! Softmax written out becomes one `Softmax(axis)`:
//!
//! ```text
//! e   = Exp(Sub(x, ReduceMax(x, [axis], keepdims=1)))   (or Exp(x): no max subtraction)
//! out = Div(e, ReduceSum(e, [axis], keepdims=1))        (or Mul(e, Reciprocal(...)))
//! ```
//!
//! Without the max subtraction the decomposed form overflows for large inputs where Softmax does
//! not; everywhere else both compute the same function.

use crate::passes::pattern::{self, only_output, Graph, Rewrite};
use crate::Pass;
use kiln_ir::{Attributes, IrError, Network};

pub struct RecognizeSoftmax;

impl Pass for RecognizeSoftmax {
    fn name(&self) -> &'static str {
        "recognize-softmax"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let rewrites = (0..net.layers().len()).filter_map(|i| matched(&g, i)).collect();
        pattern::apply(net, rewrites)
    }
}

fn matched(g: &Graph, root: usize) -> Option<Rewrite> {
    let layer = g.layer(root);
    let mut covered = vec![root];
    let (e, sum) = match layer.op.as_str() {
        "Div" => pattern::two_inputs(layer)?,
        "Mul" => {
            let (a, b) = pattern::two_inputs(layer)?;
            let (e, r) = if g.producer(b, "Reciprocal").is_some() { (a, b) } else { (b, a) };
            let (ri, recip) = g.producer(r, "Reciprocal")?;
            covered.push(ri);
            (e, recip.inputs.first().copied().flatten()?)
        }
        _ => return None,
    };
    let (si, sum_layer) = g.producer(sum, "ReduceSum")?;
    let (ei, exp) = g.producer(e, "Exp")?;
    if sum_layer.inputs.first().copied().flatten()? != e {
        return None;
    }
    covered.extend([si, ei]);
    let z = exp.inputs.first().copied().flatten()?;
    let rank = g.shape(z)?.len();
    let [axis] = pattern::reduce_axes(g, sum_layer, rank)?[..] else { return None };
    // With the max subtraction, Softmax reads x; without, the Exp's input.
    let mut x = z;
    if let Some((di, sub)) = g.producer(z, "Sub") {
        let (a, m) = pattern::two_inputs(sub)?;
        if let Some((mi, max)) = g.producer(m, "ReduceMax") {
            if max.inputs.first().copied().flatten()? == a && pattern::reduce_axes(g, max, rank)? == [axis] {
                covered.extend([di, mi]);
                x = a;
            }
        }
    }
    let out = only_output(layer)?;
    if !g.dtype(x)?.is_float() || !g.sealed(&covered, &[out]) {
        return None;
    }
    let attrs = Attributes::new().with("axis", axis as i64);
    Some(Rewrite::single_op(g.net, covered, root, (layer.name.clone(), "Softmax", attrs), x, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dead_layers::DeadLayerElimination;
    use crate::passes::pattern::testing::*;
    use crate::passes::test_support::layer;
    use kiln_ir::{Dim, Tensor, TensorId};

    fn reduce(net: &mut Network, name: &str, op: &str, x: TensorId, axis: i64) -> TensorId {
        let a = net.add_constant(&format!("{name}_axes"), Tensor::from_vec(vec![1], vec![axis]).unwrap()).unwrap();
        layer(net, name, op, Attributes::new(), &[x, a])
    }

    /// Softmax over `axis` of x: [n, 4, 6]; returns (net, e).
    fn build(with_max: bool, sum_axis: i64, max_axis: i64, reciprocal: bool) -> (Network, TensorId) {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Symbol("n".into()), Dim::Known(4), Dim::Known(6)]);
        let z = if with_max {
            let m = reduce(&mut net, "max", "ReduceMax", x, max_axis);
            layer(&mut net, "sub", "Sub", Attributes::new(), &[x, m])
        } else {
            x
        };
        let e = layer(&mut net, "exp", "Exp", Attributes::new(), &[z]);
        let s = reduce(&mut net, "sum", "ReduceSum", e, sum_axis);
        let y = if reciprocal {
            let r = layer(&mut net, "recip", "Reciprocal", Attributes::new(), &[s]);
            layer(&mut net, "norm", "Mul", Attributes::new(), &[r, e])
        } else {
            layer(&mut net, "norm", "Div", Attributes::new(), &[e, s])
        };
        net.mark_output(y).unwrap();
        (net, e)
    }

    fn check(net: &Network, axis: i64) {
        let out = RecognizeSoftmax.run(net).unwrap().expect("recognized");
        let out = DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
        assert_eq!(ops(&out), vec!["Softmax"]);
        assert_eq!(out.layers()[0].attrs.int("axis", 0).unwrap(), axis);
        assert!(out.layers()[0].attrs.contains(kiln_ir::spec::FUSED_NODES_ATTR));
        for (n, seed) in [(2, 1), (1, 2)] {
            assert_close(net, &out, &[("x", random(&[n, 4, 6], seed, 5.0))], 1e-5);
        }
    }

    #[test]
    fn decomposed_softmax_becomes_softmax() {
        check(&build(true, -1, 2, false).0, 2);
        check(&build(true, 1, 1, true).0, 1);
        check(&build(false, -1, 0, false).0, 2);
    }

    #[test]
    fn mismatched_axes_leave_the_max_outside() {
        // ReduceMax over another axis is still a valid shift: only Exp/ReduceSum/Div fold,
        // and the Softmax reads the shifted tensor.
        let (net, _) = build(true, -1, 1, false);
        let out = RecognizeSoftmax.run(&net).unwrap().expect("recognized");
        let out = DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
        assert_eq!(ops(&out), vec!["ReduceMax", "Sub", "Softmax"]);
        assert_close(&net, &out, &[("x", random(&[2, 4, 6], 3, 5.0))], 1e-5);
    }

    #[test]
    fn a_second_reader_of_exp_blocks_it() {
        let (mut net, e) = build(true, -1, -1, false);
        net.mark_output(e).unwrap();
        assert!(RecognizeSoftmax.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_sum_over_two_axes_is_not_a_softmax() {
        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Known(2), Dim::Known(3)]);
        let e = layer(&mut net, "exp", "Exp", Attributes::new(), &[x]);
        let a = net.add_constant("axes", Tensor::from_vec(vec![2], vec![0i64, 1]).unwrap()).unwrap();
        let s = layer(&mut net, "sum", "ReduceSum", Attributes::new(), &[e, a]);
        let y = layer(&mut net, "norm", "Div", Attributes::new(), &[e, s]);
        net.mark_output(y).unwrap();
        assert!(RecognizeSoftmax.run(&net).unwrap().is_none());
    }
}
