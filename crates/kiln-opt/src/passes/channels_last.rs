//! Layout: runs of image layers the backend computes faster channels-last (NHWC) are switched
//! to that layout, with a Transpose only where the run meets the NCHW rest of the graph.
//!
//! Conceptually every switched layer gets a Transpose to NHWC before it and one back to NCHW
//! after it, and then each back-and-forth pair between two switched layers cancels. The pass
//! builds the cancelled form directly: walking the layers in order, it keeps for each tensor
//! the NHWC copy that exists (a switched layer's output, or a Transpose made for an earlier
//! reader) and materializes the other layout only for a reader that needs it, once. So a
//! ResNet keeps one Transpose at its input and one after its last pool, however many
//! convolutions lie between.
//!
//! Which layers switch is the backend's choice ([`to_channels_last`]'s `wants`); the pass adds
//! that the op must have a channels-last form (kiln_ir::channels_last), its image input be a
//! known rank-4 tensor, and that the layer touch another switched layer (a lone layer would pay
//! two transposes for nothing).

use crate::Rebuilder;
use kiln_ir::{channels_last, Attributes, IrError, Layer, Network, Tensor, TensorId, TensorSource, ValueType};
use std::collections::{HashMap, HashSet};

/// `net` with the layers `wants` picks (and the pass's own conditions allow) channels-last, or
/// `None` when no layer switches.
pub fn to_channels_last(net: &Network, wants: impl Fn(&Network, &Layer) -> bool) -> Result<Option<Network>, IrError> {
    let candidate: Vec<bool> = net.layers().iter().map(|l| has_nhwc_form(net, l) && wants(net, l)).collect();
    let producer_of = |id: TensorId| match net.tensor(id).source {
        TensorSource::Layer { layer, .. } => Some(layer.0),
        _ => None,
    };
    // Candidates next to another candidate (image input from one, or output read by one).
    let mut switch = vec![false; candidate.len()];
    for (i, layer) in net.layers().iter().enumerate() {
        if !candidate[i] {
            continue;
        }
        let image = layer.inputs[0].expect("checked by has_nhwc_form");
        if let Some(p) = producer_of(image).filter(|&p| candidate[p]) {
            switch[i] = true;
            switch[p] = true;
        }
    }
    if !switch.iter().any(|&s| s) {
        return Ok(None);
    }
    let mut rb = Rebuilder::new(net)?;
    // Source tensor → its NHWC copy in the new network.
    let mut nhwc: HashMap<TensorId, TensorId> = HashMap::new();
    // Outputs of switched layers whose NCHW form does not exist (yet).
    let mut only_nhwc: HashSet<TensorId> = HashSet::new();
    for (i, layer) in net.layers().iter().enumerate() {
        if !switch[i] {
            for &id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
                to_nchw(&mut rb, net, id, &nhwc, &mut only_nhwc)?;
            }
            rb.copy_layer(layer)?;
            continue;
        }
        let images = channels_last::image_inputs(&layer.op).expect("checked by has_nhwc_form");
        let mut inputs = Vec::with_capacity(layer.inputs.len());
        for (k, &input) in layer.inputs.iter().enumerate() {
            inputs.push(match input {
                Some(id) if images.contains(&k) => Some(to_nhwc(&mut rb, net, id, &mut nhwc)?),
                Some(id) => {
                    to_nchw(&mut rb, net, id, &nhwc, &mut only_nhwc)?;
                    Some(rb.map(id)?)
                }
                None => None,
            });
        }
        let out = layer.outputs[0].expect("checked by has_nhwc_form");
        let mut attrs = layer.attrs.clone();
        attrs.set(channels_last::ATTR, 1i64);
        let name = format!("{}::nhwc", net.tensor(out).name);
        let made = rb.add_new_layer(&layer.name, &layer.op, attrs, &inputs, &[name.as_str()])?;
        nhwc.insert(out, made[0].expect("named output"));
        only_nhwc.insert(out);
    }
    for &id in net.outputs() {
        to_nchw(&mut rb, net, id, &nhwc, &mut only_nhwc)?;
    }
    rb.finish().map(Some)
}

/// Whether `layer` has a channels-last form the pass can switch to: an op with one, a single
/// output, a known rank-4 float image, and (for Conv) a constant 4-D weight.
fn has_nhwc_form(net: &Network, layer: &Layer) -> bool {
    let Some(images) = channels_last::image_inputs(&layer.op) else { return false };
    if layer.outputs.len() != 1 || layer.outputs[0].is_none() || !layer.implicit_inputs.is_empty() {
        return false;
    }
    let rank4_float = |id: Option<TensorId>| match id.map(|id| &net.tensor(id).ty) {
        Some(Some(ValueType::Tensor(t))) => t.dtype.is_float() && t.rank() == Some(4),
        _ => false,
    };
    let images_ok = images.iter().all(|&k| match layer.inputs.get(k).copied().flatten() {
        Some(id) => rank4_float(Some(id)),
        None => k != 0,
    });
    let weight_ok = layer.op != "Conv"
        || layer.inputs.get(1).copied().flatten().and_then(|w| net.tensor(w).constant()).is_some_and(|w| w.rank() == 4);
    images_ok && weight_ok && rank4_float(layer.outputs[0]) && !channels_last::is_marked(&layer.attrs)
}

/// The NHWC copy of source tensor `id`, made by a Transpose on first use.
fn to_nhwc(
    rb: &mut Rebuilder,
    net: &Network,
    id: TensorId,
    nhwc: &mut HashMap<TensorId, TensorId>,
) -> Result<TensorId, IrError> {
    if let Some(&t) = nhwc.get(&id) {
        return Ok(t);
    }
    let src = rb.map(id)?;
    let name = &net.tensor(id).name;
    let attrs = Attributes::new().with("perm", channels_last::TO_NHWC.iter().map(|&p| p as i64).collect::<Vec<_>>());
    let made =
        rb.add_new_layer(&format!("{name}::to_nhwc"), "Transpose", attrs, &[Some(src)], &[&format!("{name}::nhwc")])?;
    let t = made[0].expect("named output");
    nhwc.insert(id, t);
    Ok(t)
}

/// Make source tensor `id`'s NCHW form exist (under its own name), by a Transpose from its
/// NHWC copy, if only that copy exists.
fn to_nchw(
    rb: &mut Rebuilder,
    net: &Network,
    id: TensorId,
    nhwc: &HashMap<TensorId, TensorId>,
    only_nhwc: &mut HashSet<TensorId>,
) -> Result<(), IrError> {
    if !only_nhwc.remove(&id) {
        return Ok(());
    }
    let name = &net.tensor(id).name;
    // A 1×1 image (a global pool's output) is laid out the same either way: a Reshape, which
    // the engine runs as a view of its input, instead of a copy.
    let shape = match &net.tensor(id).ty {
        Some(ValueType::Tensor(t)) => t.shape.as_deref().and_then(kiln_ir::concrete),
        _ => None,
    };
    if let Some(shape) = shape.filter(|s| s.len() == 4 && s[2] == 1 && s[3] == 1) {
        let dims = Tensor::from_vec(vec![4], shape.iter().map(|&d| d as i64).collect::<Vec<i64>>())?;
        let dims = rb.constant_named(&format!("{name}::nchw_shape"), dims)?;
        rb.add_layer(
            &format!("{name}::to_nchw"),
            "Reshape",
            Attributes::new(),
            &[Some(nhwc[&id]), Some(dims)],
            &[Some(id)],
        )?;
        return Ok(());
    }
    let attrs = Attributes::new().with("perm", channels_last::TO_NCHW.iter().map(|&p| p as i64).collect::<Vec<_>>());
    rb.add_layer(&format!("{name}::to_nchw"), "Transpose", attrs, &[Some(nhwc[&id])], &[Some(id)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Dim};

    fn conv(net: &mut Network, name: &str, x: TensorId, residual: Option<TensorId>) -> TensorId {
        let w = net.add_constant(&format!("{name}.w"), Tensor::zeros(DType::F32, vec![4, 4, 3, 3]).unwrap()).unwrap();
        let attrs = Attributes::new().with("pads", vec![1i64, 1, 1, 1]);
        net.add_layer(name, "Conv", attrs, &[Some(x), Some(w), None, residual], &[&format!("{name}.y")]).unwrap()[0]
            .unwrap()
    }

    fn image_net() -> Network {
        let mut net = Network::new("n");
        let ty = ValueType::tensor(DType::F32, [1, 4, 8, 8].iter().map(|&d| Dim::Known(d)).collect());
        let x = net.add_input("x", ty).unwrap();
        let a = conv(&mut net, "a", x, None);
        let b = conv(&mut net, "b", a, Some(a));
        let relu = net.add_layer("relu", "Relu", Attributes::new(), &[Some(b)], &["r"]).unwrap()[0].unwrap();
        let c = conv(&mut net, "c", relu, None);
        let pool = net.add_layer("pool", "GlobalAveragePool", Attributes::new(), &[Some(c)], &["p"]).unwrap()[0];
        net.mark_output(b).unwrap();
        net.mark_output(pool.unwrap()).unwrap();
        net
    }

    fn ops(net: &Network) -> Vec<String> {
        net.layers()
            .iter()
            .map(|l| format!("{}{}", l.op, if channels_last::is_marked(&l.attrs) { "*" } else { "" }))
            .collect()
    }

    /// Transposes only where switched layers meet the rest: the input, the NCHW reader (Relu)
    /// and output of `b`; the residual reuses `a`'s NHWC output; names and types stay.
    #[test]
    fn switches_runs_and_transposes_only_at_their_edges() {
        let net = image_net();
        let out = to_channels_last(&net, |_, _| true).unwrap().unwrap();
        assert_eq!(
            ops(&out),
            ["Transpose", "Conv*", "Conv*", "Transpose", "Relu", "Transpose", "Conv*", "GlobalAveragePool*", "Reshape"]
        );
        for name in ["b.y", "p"] {
            let id = out.tensor_by_name(name).unwrap();
            assert!(out.outputs().contains(&id), "{name} is still an output");
        }
        let p = out.tensor(out.tensor_by_name("p").unwrap());
        assert_eq!(p.ty, net.tensor(net.tensor_by_name("p").unwrap()).ty);
        let b_nhwc = out.tensor(out.tensor_by_name("b.y::nhwc").unwrap());
        let want = ValueType::tensor(DType::F32, [1, 8, 8, 4].iter().map(|&d| Dim::Known(d)).collect());
        assert_eq!(b_nhwc.ty, Some(want));
    }

    /// The backend's veto holds, and a candidate with no switched neighbour stays as it is.
    #[test]
    fn lone_or_vetoed_layers_stay() {
        let net = image_net();
        assert!(to_channels_last(&net, |_, _| false).unwrap().is_none());
        let out = to_channels_last(&net, |_, l| l.name != "b" && l.name != "pool").unwrap();
        assert!(out.is_none(), "a and c have no switched neighbour once b and the pool are vetoed");
    }
}
