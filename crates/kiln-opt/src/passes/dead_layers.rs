//! Dead-layer elimination: drop every layer none of whose outputs reaches a network output.

use crate::{Pass, Rebuilder};
use kiln_ir::{IrError, Network};

pub struct DeadLayerElimination;

impl Pass for DeadLayerElimination {
    fn name(&self) -> &'static str {
        "dead-layer-elimination"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let mut live = vec![false; net.tensors().len()];
        for id in net.outputs() {
            live[id.0] = true;
        }
        let mut keep = vec![false; net.layers().len()];
        for (i, layer) in net.layers().iter().enumerate().rev() {
            if layer.outputs.iter().flatten().any(|id| live[id.0]) {
                keep[i] = true;
                for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
                    live[id.0] = true;
                }
            }
        }
        if keep.iter().all(|&k| k) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (layer, _) in net.layers().iter().zip(&keep).filter(|(_, &k)| k) {
            rb.copy_layer(layer)?;
        }
        Ok(Some(rb.finish()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use kiln_ir::Attributes;

    #[test]
    fn removes_the_whole_unused_cone_and_unread_weights() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3]);
        let w = net.add_constant("w", values(&[2, 3], 1.0)).unwrap();
        let dead1 = layer(&mut net, "dead1", "Mul", Attributes::new(), &[x, w]);
        let _dead2 = layer(&mut net, "dead2", "Relu", Attributes::new(), &[dead1]);
        let y = layer(&mut net, "live", "Sigmoid", Attributes::new(), &[x]);
        net.mark_output(y).unwrap();
        let out = DeadLayerElimination.run(&net).unwrap().expect("changed");
        assert_eq!(out.layers().len(), 1);
        assert_eq!(out.layers()[0].name, "live");
        assert!(out.tensor_by_name("w").is_none(), "unread weights are dropped");
        assert_same_outputs(&net, &out, &[("x", values(&[2, 3], 0.0))]);
        assert!(DeadLayerElimination.run(&out).unwrap().is_none(), "a fixpoint");
    }
}
