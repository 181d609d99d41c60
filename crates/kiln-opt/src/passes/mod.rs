//! One pass per file, each with its tests beside it.

pub mod channels_last;
pub mod common_subexpression;
pub mod constant_folding;
pub mod dead_layers;
pub mod fold_batch_norm;
pub mod fold_shape_subgraphs;
pub mod fuse_attention;
pub mod fuse_elementwise_chain;
pub mod fuse_epilogue;
pub mod fuse_inverted_bottleneck;
pub mod fuse_parallel_gemms;
pub mod matmul_add_to_gemm;
pub mod noop_removal;
pub(crate) mod pattern;
pub mod prune;
pub mod prune_channels;
pub mod prune_heads;
pub mod prune_values;
pub mod recognize_gelu;
pub mod recognize_layer_norm;
pub mod recognize_softmax;

use kiln_ir::{Layer, Network, Tensor, TensorId, TensorSource};
use std::collections::HashSet;

/// Tensors something reads: a layer (explicitly or through a subgraph) or the caller (outputs).
pub(crate) fn used_tensors(net: &Network) -> HashSet<TensorId> {
    let mut used: HashSet<TensorId> = net.outputs().iter().copied().collect();
    for layer in net.layers() {
        used.extend(layer.inputs.iter().flatten());
        used.extend(&layer.implicit_inputs);
    }
    used
}

/// How many places read each tensor (layers, subgraph captures, network outputs), by tensor index.
pub(crate) fn reader_counts(net: &Network) -> Vec<usize> {
    let mut n = vec![0; net.tensors().len()];
    for layer in net.layers() {
        for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
            n[id.0] += 1;
        }
    }
    for id in net.outputs() {
        n[id.0] += 1;
    }
    n
}

/// The layer index producing `id` and the layer, if a layer produces it.
pub(crate) fn producer(net: &Network, id: TensorId) -> Option<(usize, &Layer)> {
    match net.tensor(id).source {
        TensorSource::Layer { layer, .. } => Some((layer.0, net.layer(layer))),
        _ => None,
    }
}

/// The constant value of input `index` of `layer`, if it is present and constant.
pub(crate) fn constant_input<'a>(net: &'a Network, layer: &Layer, index: usize) -> Option<&'a Tensor> {
    layer.inputs.get(index).copied().flatten().and_then(|id| net.tensor(id).constant())
}

#[cfg(test)]
pub(crate) mod test_support {
    use kiln_ir::{Attributes, DType, Network, Tensor, TensorId, Value, ValueType};
    use std::collections::HashMap;

    pub fn input(net: &mut Network, name: &str, shape: &[usize]) -> TensorId {
        net.add_input(name, ValueType::tensor(DType::F32, kiln_ir::known_shape(shape))).unwrap()
    }

    pub fn layer(net: &mut Network, name: &str, op: &str, attrs: Attributes, inputs: &[TensorId]) -> TensorId {
        let ins: Vec<Option<TensorId>> = inputs.iter().map(|&i| Some(i)).collect();
        net.add_layer(name, op, attrs, &ins, &[&format!("{name}_out")]).unwrap()[0].unwrap()
    }

    pub fn values(shape: &[usize], seed: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()).unwrap()
    }

    /// Run both networks on the same inputs; outputs must be identical, by name.
    pub fn assert_same_outputs(a: &Network, b: &Network, inputs: &[(&str, Tensor)]) {
        let bind = || -> HashMap<String, Value> {
            inputs.iter().map(|(n, t)| (n.to_string(), Value::Tensor(t.clone()))).collect()
        };
        let ra = kiln_cpu::execute_named(a, bind()).unwrap();
        let rb = kiln_cpu::execute_named(b, bind()).unwrap();
        let names = |n: &Network| n.outputs().iter().map(|&id| n.tensor(id).name.clone()).collect::<Vec<_>>();
        assert_eq!(names(a), names(b), "output names");
        assert_eq!(ra, rb);
    }
}
