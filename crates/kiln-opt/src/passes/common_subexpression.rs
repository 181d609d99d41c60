//! Common-subexpression merging: a layer computing the same op with the same attributes on the
//! same inputs as an earlier layer reuses that layer's outputs.

use crate::{Pass, Rebuilder};
use kiln_ir::{IrError, Layer, Network, TensorId};
use std::collections::HashMap;

pub struct CommonSubexpression;

impl Pass for CommonSubexpression {
    fn name(&self) -> &'static str {
        "common-subexpression-merging"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        // (op, inputs) → earlier layers with that signature; attributes are compared in full.
        let mut seen: HashMap<(&str, &[Option<TensorId>]), Vec<usize>> = HashMap::new();
        let mut twin_of: Vec<Option<usize>> = vec![None; net.layers().len()];
        for (i, layer) in net.layers().iter().enumerate() {
            let candidates = seen.entry((layer.op.as_str(), layer.inputs.as_slice())).or_default();
            twin_of[i] = candidates.iter().copied().find(|&j| same_computation(&net.layers()[j], layer));
            if twin_of[i].is_none() {
                candidates.push(i);
            }
        }
        if twin_of.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (layer, twin) in net.layers().iter().zip(&twin_of) {
            match twin {
                Some(j) => {
                    for (mine, theirs) in layer.outputs.iter().zip(&net.layers()[*j].outputs) {
                        if let (Some(m), Some(t)) = (mine, theirs) {
                            let to = rb.map(*t)?;
                            rb.alias(*m, to);
                        }
                    }
                }
                None => rb.copy_layer(layer)?,
            }
        }
        Ok(Some(rb.finish()?))
    }
}

/// Same op, inputs and attributes, and every output this layer produces the twin produces too.
fn same_computation(twin: &Layer, layer: &Layer) -> bool {
    twin.attrs == layer.attrs
        && twin.implicit_inputs == layer.implicit_inputs
        && twin.outputs.len() >= layer.outputs.len()
        && layer.outputs.iter().zip(&twin.outputs).all(|(m, t)| m.is_none() || t.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use kiln_ir::Attributes;

    #[test]
    fn duplicate_layers_merge_and_different_attributes_do_not() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[4]);
        let a = layer(&mut net, "a", "LeakyRelu", Attributes::new().with("alpha", 0.1f32), &[x]);
        let b = layer(&mut net, "b", "LeakyRelu", Attributes::new().with("alpha", 0.1f32), &[x]);
        let c = layer(&mut net, "c", "LeakyRelu", Attributes::new().with("alpha", 0.2f32), &[x]);
        let s = layer(&mut net, "s", "Add", Attributes::new(), &[a, b]);
        let y = layer(&mut net, "y", "Add", Attributes::new(), &[s, c]);
        net.mark_output(y).unwrap();
        let out = CommonSubexpression.run(&net).unwrap().expect("changed");
        let names: Vec<&str> = out.layers().iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["a", "c", "s", "y"]);
        assert_same_outputs(&net, &out, &[("x", values(&[4], 2.0))]);
    }
}
