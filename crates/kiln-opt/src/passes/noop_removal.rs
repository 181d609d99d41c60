//! No-op removal: layers whose output equals one of their inputs — Identity, inference
//! Dropout, Cast to the same dtype, Reshape to the same static shape, identity Transposes and
//! Transpose pairs that cancel.

use crate::passes::used_tensors;
use crate::{Pass, Rebuilder};
use kiln_ir::{concrete, Attribute, IrError, Layer, Network, TensorId, TensorSource, ValueType};
use std::collections::HashSet;

pub struct NoopRemoval;

impl Pass for NoopRemoval {
    fn name(&self) -> &'static str {
        "no-op-removal"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let used = used_tensors(net);
        let named: HashSet<TensorId> =
            net.outputs().iter().chain(net.layers().iter().flat_map(|l| &l.implicit_inputs)).copied().collect();
        let passthrough: Vec<Option<TensorId>> =
            net.layers().iter().map(|l| forwarded_input(net, l, &used, &named)).collect();
        if passthrough.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (layer, fwd) in net.layers().iter().zip(&passthrough) {
            match (fwd, layer.outputs.first().copied().flatten()) {
                (Some(src), Some(out)) => {
                    let to = rb.map(*src)?;
                    rb.alias(out, to);
                }
                _ => rb.copy_layer(layer)?,
            }
        }
        Ok(Some(rb.finish()?))
    }
}

/// If `layer` passes one tensor through unchanged, that tensor.
fn forwarded_input(
    net: &Network,
    layer: &Layer,
    used: &HashSet<TensorId>,
    named: &HashSet<TensorId>,
) -> Option<TensorId> {
    let x = layer.inputs.first().copied().flatten()?;
    let out = layer.outputs.first().copied().flatten()?;
    // Only single-output forms: a second output someone reads (Dropout's mask) must be computed.
    // A tensor whose name matters — a network output, or one a subgraph reads by name — stays
    // too: removing its producer would only bring it back as an Identity that keeps the name.
    if layer.outputs.iter().skip(1).flatten().any(|o| used.contains(o)) || named.contains(&out) {
        return None;
    }
    let tensor_type = |id: TensorId| match &net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => Some(t.clone()),
        _ => None,
    };
    match layer.op.as_str() {
        "Identity" => Some(x),
        "Dropout" => {
            let training = match layer.inputs.get(2).copied().flatten() {
                None => false,
                Some(t) => net.tensor(t).constant().map(|c| c.to_f64_vec().iter().any(|&v| v != 0.0)).unwrap_or(true),
            };
            (!training).then_some(x)
        }
        "Cast" | "CastLike" => {
            let (a, b) = (tensor_type(x)?, tensor_type(out)?);
            (a.dtype == b.dtype).then_some(x)
        }
        "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Expand" => {
            let (a, b) = (tensor_type(x)?, tensor_type(out)?);
            let (sa, sb) = (concrete(a.shape.as_ref()?)?, concrete(b.shape.as_ref()?)?);
            (sa == sb).then_some(x)
        }
        "Transpose" => {
            let perm = match layer.attrs.get("perm") {
                Some(Attribute::Ints(p)) => p.clone(),
                _ => return None,
            };
            if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
                return Some(x);
            }
            // Transpose(Transpose(y, p1), p2) with p1 ∘ p2 = identity forwards y.
            let TensorSource::Layer { layer: inner, .. } = net.tensor(x).source else { return None };
            let inner = net.layer(inner);
            if inner.op != "Transpose" {
                return None;
            }
            let Some(Attribute::Ints(p1)) = inner.attrs.get("perm") else { return None };
            let cancels = p1.len() == perm.len()
                && perm.iter().enumerate().all(|(i, &p)| p1.get(p as usize).is_some_and(|&q| q == i as i64));
            cancels.then_some(inner.inputs.first().copied().flatten()).flatten()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dead_layers::DeadLayerElimination;
    use crate::passes::test_support::*;
    use kiln_ir::{Attributes, DType};

    #[test]
    fn identity_cast_and_cancelling_transposes_go() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3, 4]);
        let a = layer(&mut net, "id", "Identity", Attributes::new(), &[x]);
        let b = layer(&mut net, "cast", "Cast", Attributes::new().with("to", DType::F32.onnx_code() as i64), &[a]);
        let c = layer(&mut net, "t1", "Transpose", Attributes::new().with("perm", vec![2i64, 0, 1]), &[b]);
        let d = layer(&mut net, "t2", "Transpose", Attributes::new().with("perm", vec![1i64, 2, 0]), &[c]);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[d]);
        net.mark_output(y).unwrap();
        let once = NoopRemoval.run(&net).unwrap().expect("changed");
        let (out, _) =
            crate::PassManager::new(vec![Box::new(NoopRemoval), Box::new(DeadLayerElimination)]).run(once).unwrap();
        let ops: Vec<&str> = out.layers().iter().map(|l| l.op.as_str()).collect();
        assert_eq!(ops, vec!["Relu"]);
        assert_same_outputs(&net, &out, &[("x", values(&[2, 3, 4], 0.5))]);
    }

    #[test]
    fn a_non_cancelling_transpose_pair_stays() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3, 4]);
        let c = layer(&mut net, "t1", "Transpose", Attributes::new().with("perm", vec![2i64, 0, 1]), &[x]);
        let d = layer(&mut net, "t2", "Transpose", Attributes::new().with("perm", vec![2i64, 0, 1]), &[c]);
        net.mark_output(d).unwrap();
        assert!(NoopRemoval.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_noop_producing_a_network_output_stays() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[3]);
        let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[x]);
        let y = layer(&mut net, "id", "Identity", Attributes::new(), &[r]);
        net.mark_output(y).unwrap();
        assert!(NoopRemoval.run(&net).unwrap().is_none());
    }
}
