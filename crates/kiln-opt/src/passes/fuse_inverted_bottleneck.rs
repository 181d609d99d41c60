//! MobileNet's inverted residual block, once the layout pass made its convolutions
//! channels-last, becomes one `KilnInvertedBottleneck` layer (kiln_ir::inverted_bottleneck):
//!
//! ```text
//! Conv 1×1 (expand) → Conv depthwise → Conv 1×1 (project, + residual)
//!   → KilnInvertedBottleneck(x, W_e, B_e, W_d, B_d, W_p, B_p, residual)
//! ```
//!
//! The expand stage is optional (MobileNetV2's first block has none). Every Conv must be
//! channels-last with constant weights; the 1×1 stages stride 1 without padding and one
//! group; the depthwise stage one group per channel (any size, stride, padding, dilation);
//! the intermediate tensors read by the next stage alone. Each stage keeps its own
//! attributes (its fused activation among them), so the fused layer computes the same values.
//!
//! Run by the builder after the layout pass (it matches only channels-last layers, which only
//! a backend that asked for them gets).

use crate::passes::pattern::{fused_attr, Graph, Rewrite};
use crate::Pass;
use kiln_ir::inverted_bottleneck::{set_stage_attrs, Stage, INPUTS, OP, RESIDUAL};
use kiln_ir::{channels_last, Attributes, IrError, Layer, Network, TensorId};

pub struct FuseInvertedBottleneck;

impl Pass for FuseInvertedBottleneck {
    fn name(&self) -> &'static str {
        "fuse-inverted-bottleneck"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let rewrites = (0..net.layers().len()).filter_map(|i| matched(&g, i)).collect();
        crate::passes::pattern::apply(net, rewrites)
    }
}

/// A channels-last Conv with a constant 4-D weight (and bias, if any): the weight's shape.
fn nhwc_conv<'a>(g: &Graph<'a>, layer: &Layer) -> Option<&'a [usize]> {
    if layer.op != "Conv" || !channels_last::is_marked(&layer.attrs) || layer.outputs.len() != 1 {
        return None;
    }
    let w = g.constant(layer.inputs.get(1).copied().flatten()?)?;
    if let Some(b) = layer.inputs.get(2).copied().flatten() {
        g.constant(b)?;
    }
    (w.rank() == 4).then(|| w.shape())
}

/// A 1×1 Conv over the same pixels: stride 1, no padding, one group.
fn pointwise(g: &Graph, layer: &Layer) -> bool {
    let ones = |name: &str| layer.attrs.ints_opt(name).ok().flatten().is_none_or(|v| v.iter().all(|&s| s == 1));
    let zeros = layer.attrs.ints_opt("pads").ok().flatten().is_none_or(|v| v.iter().all(|&p| p == 0));
    let explicit = layer.attrs.string("auto_pad", "NOTSET".into()).is_ok_and(|a| a == "NOTSET" || a == "VALID");
    nhwc_conv(g, layer).is_some_and(|w| w[2] == 1 && w[3] == 1)
        && ones("strides")
        && zeros
        && explicit
        && layer.attrs.int("group", 1).is_ok_and(|v| v == 1)
}

/// A depthwise Conv: one group per channel, one output channel per group, no residual.
fn depthwise(g: &Graph, layer: &Layer) -> bool {
    let Some(w) = nhwc_conv(g, layer) else { return false };
    w[1] == 1 && layer.attrs.int("group", 1).is_ok_and(|v| v >= 1 && v as usize == w[0]) && !has_residual(layer)
}

fn has_residual(layer: &Layer) -> bool {
    layer.inputs.get(3).copied().flatten().is_some()
}

/// `t`'s producer, when `reader` alone reads `t` (and it is no graph output).
fn sole_producer<'a>(g: &Graph<'a>, t: TensorId, reader: usize) -> Option<(usize, &'a Layer)> {
    (g.readers(t) == [reader] && !g.is_output(t)).then(|| g.producer_any(t)).flatten()
}

/// The block whose project stage is layer `p`.
fn matched(g: &Graph, p: usize) -> Option<Rewrite> {
    let project = g.layer(p);
    if !pointwise(g, project) {
        return None;
    }
    let (d, dw) = sole_producer(g, project.inputs[0]?, p)?;
    if !depthwise(g, dw) {
        return None;
    }
    let expand = sole_producer(g, dw.inputs[0]?, d).filter(|(_, e)| pointwise(g, e) && !has_residual(e));
    let mut inputs: Vec<Option<TensorId>> = vec![None; INPUTS];
    let mut attrs = Attributes::new();
    let mut covered = vec![d, p];
    let mut stages = vec![(Stage::Depthwise, dw), (Stage::Project, project)];
    match expand {
        Some((e, layer)) => {
            inputs[0] = layer.inputs[0];
            covered.push(e);
            stages.push((Stage::Expand, layer));
        }
        None => inputs[0] = dw.inputs[0],
    }
    for (stage, layer) in stages {
        let mut conv_attrs = layer.attrs.clone();
        conv_attrs.remove(kiln_ir::spec::FUSED_NODES_ATTR);
        set_stage_attrs(&mut attrs, stage, &conv_attrs);
        inputs[stage.weight_input()] = layer.inputs[1];
        inputs[stage.bias_input()] = layer.inputs.get(2).copied().flatten();
    }
    inputs[RESIDUAL] = project.inputs.get(3).copied().flatten();
    attrs.set(kiln_ir::spec::FUSED_NODES_ATTR, fused_attr(g.net, &covered));
    let (name, out) = (project.name.clone(), project.outputs[0]?);
    Some(Rewrite {
        covered,
        at: p,
        emit: Box::new(move |rb| {
            let inputs = inputs.iter().map(|t| t.map(|t| rb.map(t)).transpose()).collect::<Result<Vec<_>, _>>()?;
            rb.add_layer(&name, OP, attrs, &inputs, &[Some(out)])?;
            Ok(())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::channels_last::to_channels_last;
    use crate::passes::pattern::testing::{assert_close, random};
    use kiln_ir::{Activation, DType, Dim, ValueType};

    fn conv(
        net: &mut Network,
        name: &str,
        x: TensorId,
        w: [usize; 4],
        attrs: Attributes,
        residual: Option<TensorId>,
    ) -> TensorId {
        let seed = name.len() as u64 * 7 + w.iter().sum::<usize>() as u64;
        let wt = net.add_constant(&format!("{name}.w"), random(&w, seed, 0.5)).unwrap();
        let b = net.add_constant(&format!("{name}.b"), random(&[w[0]], seed + 1, 0.5)).unwrap();
        net.add_layer(name, "Conv", attrs, &[Some(x), Some(wt), Some(b), residual], &[&format!("{name}.y")]).unwrap()[0]
            .unwrap()
    }

    fn relu6() -> Attributes {
        let mut a = Attributes::new();
        Activation::Clip { min: 0.0, max: 6.0 }.to_attrs(&mut a);
        a
    }

    /// Two blocks: one without expand (stride 2), one with expand and a residual.
    fn blocks() -> Network {
        let mut net = Network::new("n");
        let ty = ValueType::tensor(DType::F32, [2, 8, 9, 9].iter().map(|&d| Dim::Known(d)).collect());
        let x = net.add_input("x", ty).unwrap();
        let dw_attrs = |s: i64| relu6().with("group", 8i64).with("pads", vec![1i64; 4]).with("strides", vec![s, s]);
        let d1 = conv(&mut net, "d1", x, [8, 1, 3, 3], dw_attrs(2), None);
        let p1 = conv(&mut net, "p1", d1, [8, 8, 1, 1], Attributes::new(), None);
        let e2 = conv(&mut net, "e2", p1, [48, 8, 1, 1], relu6(), None);
        let d2 =
            conv(&mut net, "d2", e2, [48, 1, 3, 3], relu6().with("group", 48i64).with("pads", vec![1i64; 4]), None);
        let p2 = conv(&mut net, "p2", d2, [8, 48, 1, 1], Attributes::new(), Some(p1));
        net.mark_output(p2).unwrap();
        net
    }

    #[test]
    fn fuses_both_blocks_into_layers_that_compute_the_same() {
        let net = blocks();
        let nhwc = to_channels_last(&net, |_, _| true).unwrap().unwrap();
        let fused = FuseInvertedBottleneck.run(&nhwc).unwrap().unwrap();
        let ops: Vec<&str> = fused.layers().iter().map(|l| l.op.as_str()).collect();
        assert_eq!(ops, ["Transpose", OP, OP, "Transpose"]);
        let second = &fused.layers()[2];
        assert!(second.inputs[1].is_some() && second.inputs[RESIDUAL].is_some());
        assert!(fused.layers()[1].inputs[1].is_none(), "the first block has no expand stage");
        assert_close(&net, &fused, &[("x", random(&[2, 8, 9, 9], 3, 1.0))], 1e-5);
    }

    /// An intermediate tensor read elsewhere keeps its block unfused.
    #[test]
    fn a_shared_intermediate_blocks_the_fusion() {
        let mut net = blocks();
        let d2 = net.tensor_by_name("d2.y").unwrap();
        net.mark_output(d2).unwrap();
        let nhwc = to_channels_last(&net, |_, _| true).unwrap().unwrap();
        let fused = FuseInvertedBottleneck.run(&nhwc).unwrap().unwrap();
        assert_eq!(fused.layers().iter().filter(|l| l.op == OP).count(), 1);
        assert_close(&net, &fused, &[("x", random(&[2, 8, 9, 9], 4, 1.0))], 1e-5);
    }
}
